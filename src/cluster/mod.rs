//! Cluster mode: several Palisade nodes over one shared device, coordinated through etcd.
//!
//! This layer knows nothing of reservations, layouts, volumes or protocols (they import it).
pub mod groups;

pub use groups::{AccessState, PortGroup, PortGroups};
