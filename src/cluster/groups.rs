//! Target port groups: each node's ports form one group, reported to hosts as SCSI ALUA target
//! port groups (SPC-4 5.16) and NVMe ANA state (NVMe Base 8.20). In local mode there is one group
//! (id 1) holding every port of this process; in cluster mode the membership in etcd fills in one
//! group per live node, and this node's group turns Unavailable while it fails closed.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

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
    /// Whether media access (reads, writes) is allowed in this state (SPC-4 5.16.2.4: only the
    /// active states serve every command).
    pub fn is_active(self) -> bool {
        matches!(self, AccessState::Optimized | AccessState::NonOptimized)
    }
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

/// Called with the new local state whenever it changes (NVMe raises ANA change notices).
pub type StateWatcher = Box<dyn Fn(AccessState) + Send + Sync>;

/// The groups as this node sees them; read lock-free by the command sets.
pub struct PortGroups {
    local_id: std::sync::atomic::AtomicU16,
    local_state: AtomicU8,
    /// Bumped on every change of the local state (the NVMe ANA log's change count).
    changes: AtomicU64,
    /// The iSCSI relative target port identifiers (portal group tags) of this process.
    local_iscsi_ports: ArcSwap<Vec<u16>>,
    remote: ArcSwap<Vec<PortGroup>>,
    watchers: Mutex<Vec<StateWatcher>>,
}

impl Default for PortGroups {
    fn default() -> Self {
        PortGroups {
            local_id: std::sync::atomic::AtomicU16::new(1),
            local_state: AtomicU8::new(AccessState::Optimized as u8),
            changes: AtomicU64::new(0),
            local_iscsi_ports: ArcSwap::from_pointee(Vec::new()),
            remote: ArcSwap::from_pointee(Vec::new()),
            watchers: Mutex::new(Vec::new()),
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
    /// Set this node's access state; watchers hear of a change (not of a repeated value).
    pub fn set_local_state(&self, s: AccessState) {
        let old = self.local_state.swap(s as u8, Ordering::AcqRel);
        if old != s as u8 {
            self.changes.fetch_add(1, Ordering::AcqRel);
            for w in self.watchers.lock().unwrap().iter() {
                w(s);
            }
        }
    }
    /// How many times the local state has changed.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }
    /// Run `w` on every later change of the local state (from the thread that sets it).
    pub fn watch(&self, w: StateWatcher) {
        self.watchers.lock().unwrap().push(w);
    }
    /// This process's iSCSI relative target port identifiers (portal group tags).
    pub fn local_iscsi_ports(&self) -> Arc<Vec<u16>> {
        self.local_iscsi_ports.load_full()
    }
    pub fn set_local_iscsi_ports(&self, mut ports: Vec<u16>) {
        ports.sort_unstable();
        ports.dedup();
        self.local_iscsi_ports.store(Arc::new(ports))
    }
    /// Every group, the local one first (with `local_iscsi_ports`), then the remote ones.
    pub fn all(&self) -> Vec<PortGroup> {
        let id = self.local_id();
        let mut v = vec![PortGroup {
            id,
            node: String::new(),
            state: self.local_state(),
            iscsi_ports: (*self.local_iscsi_ports()).clone(),
        }];
        v.extend(self.remote().iter().filter(|g| g.id != id).cloned());
        v
    }
    /// The other nodes' groups (cluster mode; empty in local mode).
    pub fn remote(&self) -> Arc<Vec<PortGroup>> {
        self.remote.load_full()
    }
    pub fn set_remote(&self, groups: Vec<PortGroup>) {
        self.remote.store(Arc::new(groups))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn local_state_changes_are_counted_and_watched() {
        let g = PortGroups::new();
        let seen = Arc::new(AtomicUsize::new(0));
        let s2 = seen.clone();
        g.watch(Box::new(move |_| {
            s2.fetch_add(1, Ordering::SeqCst);
        }));
        g.set_local_state(AccessState::Optimized); // no change
        assert_eq!((g.changes(), seen.load(Ordering::SeqCst)), (0, 0));
        g.set_local_state(AccessState::Unavailable);
        assert_eq!(g.local_state(), AccessState::Unavailable);
        assert_eq!((g.changes(), seen.load(Ordering::SeqCst)), (1, 1));
        assert!(!g.local_state().is_active());
        g.set_local_iscsi_ports(vec![3, 1, 3]);
        g.set_remote(vec![PortGroup { id: 2, node: "b".into(), state: AccessState::Optimized, iscsi_ports: vec![9] }]);
        let all = g.all();
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].id, all[0].state, all[0].iscsi_ports.clone()), (1, AccessState::Unavailable, vec![1, 3]));
        assert_eq!(all[1].id, 2);
    }
}
