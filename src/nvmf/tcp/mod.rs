//! NVMe/TCP transport: the PDU codec (pdu), the listener that accepts connections and spreads them
//! over the reactors (listener), and the connection that frames PDUs for its queue pair (conn).
//! It moves bytes only: commands run in the NVMe-oF core (`nvmf::qpair`).

pub mod conn;
pub mod listener;
pub mod pdu;
pub mod tls;

use std::sync::Arc;

use crate::nvmf::transport::TransportKind;
use crate::nvmf::{ListenAddr, Target};
use crate::reactor::HandlerRef;

/// The TCP transport type.
pub struct Tcp;

impl TransportKind for Tcp {
    fn listen(&self, t: &Arc<Target>, addr: &ListenAddr) -> std::io::Result<HandlerRef> {
        listener::start(t, addr)
    }
}

/// Register NVMe/TCP with the target.
pub fn register(t: &Target) {
    t.register_transport("TCP", Arc::new(Tcp));
}
