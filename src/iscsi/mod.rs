//! iSCSI target transport (RFC 7143): PDU codec, login and negotiation with CHAP, sessions and
//! connections on reactors, R2T/Data-Out flow, digests, access control; plus an initiator used by
//! `palisade perf` and the tests.

pub mod conn;
pub mod initiator;
pub mod itt;
pub mod listener;
pub mod login;
pub mod pdu;
pub mod session;
pub mod target;
pub mod tasks;
pub mod tmf;

pub use target::Target;
