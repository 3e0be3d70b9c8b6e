//! ANA state of subsystem listeners (SPDK's `nvmf_subsystem_listener_set_ana_state`): one state
//! per listener × ANA group, shown to the controllers connected through that listener. A state
//! never set follows this node's target port group; the node's own inaccessible states (failed
//! closed, transitioning) always win over what was set. Read lock-free on the I/O path.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::{Ctrlr, Namespace};
use crate::cluster::{AccessState, PortGroups};
use crate::nvme::ana::{AnaGroupDesc, AnaLog, AnaState};

/// `all` value meaning "no state set: follow the node".
const FOLLOW: u8 = 0;

/// The ANA states of one listener of one subsystem.
#[derive(Default)]
pub struct ListenerAna {
    /// State of every group without its own (FOLLOW or an `AnaState` code).
    all: AtomicU8,
    /// Whether `groups` holds anything (a plain load per I/O when it does not).
    per_group: AtomicBool,
    /// States set for one group (anagrpid given), by group id.
    groups: ArcSwap<Vec<(u32, AnaState)>>,
    /// Bumped on every change (part of the ANA log change count).
    changes: AtomicU64,
}

impl ListenerAna {
    pub fn new() -> Arc<ListenerAna> {
        Arc::new(ListenerAna::default())
    }

    /// Set the state of group `grp`, or of every group (None: per-group states are dropped).
    pub fn set(&self, grp: Option<u32>, st: AnaState) {
        match grp {
            None => {
                self.all.store(st as u8, Ordering::Release);
                self.per_group.store(false, Ordering::Release);
                self.groups.store(Arc::new(Vec::new()));
            }
            Some(g) => {
                let mut v: Vec<(u32, AnaState)> = self.groups.load().iter().filter(|e| e.0 != g).copied().collect();
                v.push((g, st));
                v.sort_unstable_by_key(|e| e.0);
                self.groups.store(Arc::new(v));
                self.per_group.store(true, Ordering::Release);
            }
        }
        self.changes.fetch_add(1, Ordering::AcqRel);
    }

    /// The state set for group `grp`, if any.
    #[inline]
    pub fn configured(&self, grp: u32) -> Option<AnaState> {
        if self.per_group.load(Ordering::Acquire) {
            if let Some(&(_, s)) = self.groups.load().iter().find(|e| e.0 == grp) {
                return Some(s);
            }
        }
        AnaState::from_u8(self.all.load(Ordering::Acquire))
    }

    /// What a host sees of group `grp` through this listener while the node is in `local`.
    #[inline]
    pub fn effective(&self, local: AccessState, grp: u32) -> AnaState {
        let node = AnaState::from(local);
        if !node.is_accessible() {
            return node;
        }
        self.configured(grp).unwrap_or(node)
    }

    /// Groups a state was set for one by one.
    pub fn configured_groups(&self) -> Vec<u32> {
        self.groups.load().iter().map(|e| e.0).collect()
    }

    /// What was set, as the calls that set it: (None = every group, state), then per group.
    pub fn settings(&self) -> Vec<(Option<u32>, AnaState)> {
        let mut v: Vec<(Option<u32>, AnaState)> = AnaState::from_u8(self.all.load(Ordering::Acquire)).map(|s| (None, s)).into_iter().collect();
        v.extend(self.groups.load().iter().map(|&(g, s)| (Some(g), s)));
        v
    }

    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    pub fn is_following(&self) -> bool {
        self.all.load(Ordering::Acquire) == FOLLOW && !self.per_group.load(Ordering::Acquire)
    }
}

/// The ANA log page a controller connected through `ana` sees: one descriptor per ANA group of
/// the subsystem's namespaces, in group order.
pub fn log(groups: &PortGroups, ana: &ListenerAna, namespaces: &[Arc<Namespace>]) -> AnaLog {
    let local = groups.local_state();
    let change_count = groups.changes() + ana.changes();
    let mut ids: Vec<u32> = namespaces.iter().map(|n| n.anagrpid).collect();
    ids.sort_unstable();
    ids.dedup();
    let groups = ids
        .into_iter()
        .map(|g| AnaGroupDesc {
            grpid: g,
            change_count,
            state: ana.effective(local, g),
            nsids: namespaces.iter().filter(|n| n.anagrpid == g).map(|n| n.nsid).collect(),
        })
        .collect();
    AnaLog { change_count, groups }
}

/// The I/O status of namespace `ns` through controller `c` (None: the path is accessible).
#[inline]
pub fn io_status(c: &Ctrlr, ns: &Namespace) -> Option<crate::nvme::spec::Status> {
    c.ana.effective(ns.volume.port_groups().local_state(), ns.anagrpid).io_status()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_state_wins_and_groups_override() {
        let a = ListenerAna::new();
        assert!(a.is_following());
        assert_eq!(a.effective(AccessState::Optimized, 1), AnaState::Optimized);
        assert_eq!(a.effective(AccessState::NonOptimized, 1), AnaState::NonOptimized);
        a.set(None, AnaState::Inaccessible);
        assert_eq!(a.effective(AccessState::Optimized, 1), AnaState::Inaccessible);
        a.set(Some(2), AnaState::NonOptimized);
        assert_eq!(a.effective(AccessState::Optimized, 2), AnaState::NonOptimized);
        assert_eq!(a.effective(AccessState::Optimized, 1), AnaState::Inaccessible);
        // Failed closed: inaccessible whatever was set.
        a.set(None, AnaState::Optimized);
        assert_eq!(a.effective(AccessState::Unavailable, 2), AnaState::Inaccessible);
        assert_eq!(a.effective(AccessState::Transitioning, 2), AnaState::Change);
        assert_eq!(a.configured(2), Some(AnaState::Optimized), "a whole-listener set drops per-group states");
        assert_eq!(a.changes(), 3);
    }
}
