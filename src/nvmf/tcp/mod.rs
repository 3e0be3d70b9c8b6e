//! NVMe/TCP transport: the PDU codec (pdu), the listener that accepts connections and spreads them
//! over the reactors (listener), and the queue pair connection state machine (conn).

pub mod conn;
pub mod listener;
pub mod outq;
pub mod pdu;
