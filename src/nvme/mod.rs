//! NVMe command set: wire structures (spec), and the NVM I/O command decoding that turns a command
//! into volume I/O (io), Asymmetric Namespace Access (ana). Knows nothing of the transport (nvmf/ sits above).

pub mod ana;
pub mod keyblob;
pub mod auth;
pub mod io;
pub mod spec;
pub mod tls_psk;
pub mod reservation;
