//! Target port groups: each node's ports form one group, reported to hosts as SCSI ALUA target
//! port groups (SPC-4 5.16) and NVMe ANA state (NVMe Base 8.20). In local mode there is one group
//! (id 1) holding every port of this process; in cluster mode the membership in etcd fills in one
//! group per live node, and this node's group turns Unavailable while it fails closed.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

/// Asymmetric access state of a port group (SPC-4 table 180 codes; NVMe ANA states map 1:1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum AccessState {
    Optimized = 0x0,
    NonOptimized = 0x1,
    Standby = 0x2,
    Unavailable = 0x3,
    Transitioning = 0xF,
}

impl AccessState {
    pub fn from_u8(v: u8) -> Option<AccessState> {
        Some(match v {
            0x0 => AccessState::Optimized,
            0x1 => AccessState::NonOptimized,
            0x2 => AccessState::Standby,
            0x3 => AccessState::Unavailable,
            0xF => AccessState::Transitioning,
            _ => return None,
        })
    }
}

/// One node's ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortGroup {
    /// Target port group id (SCSI) = the node's index in the cluster (1 in local mode).
    pub id: u16,
    pub node: String,
    pub state: AccessState,
    /// iSCSI relative target port identifiers (portal group tags) of the node's ports.
    pub iscsi_ports: Vec<u16>,
}

/// The groups as this node sees them; read lock-free by the command sets.
pub struct PortGroups {
    local_id: std::sync::atomic::AtomicU16,
    local_state: AtomicU8,
    remote: ArcSwap<Vec<PortGroup>>,
}

impl Default for PortGroups {
    fn default() -> Self {
        PortGroups {
            local_id: std::sync::atomic::AtomicU16::new(1),
            local_state: AtomicU8::new(AccessState::Optimized as u8),
            remote: ArcSwap::from_pointee(Vec::new()),
        }
    }
}

impl PortGroups {
    pub fn new() -> Arc<PortGroups> {
        Arc::new(PortGroups::default())
    }
    /// This node's group id.
    pub fn local_id(&self) -> u16 {
        self.local_id.load(Ordering::Relaxed)
    }
    pub fn set_local_id(&self, id: u16) {
        self.local_id.store(id, Ordering::Relaxed)
    }
    /// This node's access state (Unavailable while failed closed).
    pub fn local_state(&self) -> AccessState {
        AccessState::from_u8(self.local_state.load(Ordering::Acquire)).unwrap_or(AccessState::Unavailable)
    }
    pub fn set_local_state(&self, s: AccessState) {
        self.local_state.store(s as u8, Ordering::Release)
    }
    /// The other nodes' groups (cluster mode; empty in local mode).
    pub fn remote(&self) -> Arc<Vec<PortGroup>> {
        self.remote.load_full()
    }
    pub fn set_remote(&self, groups: Vec<PortGroup>) {
        self.remote.store(Arc::new(groups))
    }
}
