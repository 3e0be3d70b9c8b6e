//! Unit attention conditions (SAM-5 5.14, SPC-4 5.14 / 6.x "unit attention"): established per
//! I_T nexus, reported once, in priority order, by the first command that is not INQUIRY, REPORT
//! LUNS or REQUEST SENSE (REQUEST SENSE returns and clears it).
//!
//! Events that concern every nexus (a LUN reset, mode parameters changed) are counted in
//! [`LunEvents`], shared by all ports on every reactor; each port keeps the counts it has seen per
//! LUN and turns a difference into a pending condition. No lock, and one relaxed load per counter
//! on the command path.

use std::sync::atomic::{AtomicU64, Ordering};

use super::sense::{Sense, UA_CAPACITY_CHANGED, UA_DEVICE_RESET, UA_MODE_CHANGED, UA_POWER_ON};

/// Per-LUN event counters, shared by every nexus.
#[derive(Debug, Default)]
pub struct LunEvents {
    /// LOGICAL UNIT RESET / target reset (29/03 to every nexus).
    pub reset: AtomicU64,
    /// MODE SELECT changed a page (2A/01 to every other nexus).
    pub mode: AtomicU64,
}

/// Pending conditions of one nexus for one LUN, highest priority first.
const POWER_ON: u8 = 1 << 0;
const RESET: u8 = 1 << 1;
const CAPACITY: u8 = 1 << 2;
const MODE: u8 = 1 << 3;

/// One nexus' view of one LUN.
#[derive(Debug, Clone)]
pub struct NexusUa {
    pending: u8,
    seen_reset: u64,
    seen_mode: u64,
    seen_capacity: u64,
}

impl NexusUa {
    /// A new nexus starts with POWER ON, RESET, OR BUS DEVICE RESET OCCURRED (SAM-5 6.3.1).
    pub fn new(ev: &LunEvents, capacity: u64) -> NexusUa {
        NexusUa {
            pending: POWER_ON,
            seen_reset: ev.reset.load(Ordering::Acquire),
            seen_mode: ev.mode.load(Ordering::Acquire),
            seen_capacity: capacity,
        }
    }

    /// Another connection of an existing I_T nexus (iSCSI MC/S): the nexus saw its power-on
    /// condition already, through the connection that created it.
    pub fn join_existing(&mut self) {
        self.pending &= !POWER_ON;
    }

    /// Fold in shared events that happened since the last look.
    pub fn refresh(&mut self, ev: &LunEvents, capacity: u64) {
        let r = ev.reset.load(Ordering::Acquire);
        if r != self.seen_reset {
            self.seen_reset = r;
            self.pending |= RESET;
        }
        let m = ev.mode.load(Ordering::Acquire);
        if m != self.seen_mode {
            self.seen_mode = m;
            self.pending |= MODE;
        }
        if capacity != self.seen_capacity {
            self.seen_capacity = capacity;
            self.pending |= CAPACITY;
        }
    }

    /// This nexus changed the mode pages itself: it gets no UA for its own change.
    pub fn own_mode_change(&mut self, before: u64) {
        if self.seen_mode == before {
            self.seen_mode = before + 1;
        }
    }

    /// A reset clears every older condition and leaves the reset one (SAM-5 5.14).
    pub fn set_reset(&mut self, ev: &LunEvents) {
        self.pending = RESET;
        self.seen_reset = ev.reset.load(Ordering::Acquire);
    }

    /// The reset was reported on another connection of this nexus (iSCSI MC/S): not again here.
    pub fn reset_reported_elsewhere(&mut self, ev: &LunEvents) {
        self.seen_reset = ev.reset.load(Ordering::Acquire);
        self.pending &= !RESET;
    }

    pub fn is_pending(&self) -> bool {
        self.pending != 0
    }

    /// Report (and clear) the highest-priority pending condition.
    pub fn take(&mut self) -> Option<Sense> {
        if self.pending == 0 {
            return None;
        }
        self.take_bit()
    }

    /// Report (and clear) a pending 29h condition (POWER ON, RESET): these come before every
    /// other unit attention, the reservation ones included (SAM-5 5.14).
    pub fn take_reset(&mut self) -> Option<Sense> {
        if self.pending & (POWER_ON | RESET) == 0 {
            return None;
        }
        self.take_bit()
    }

    fn take_bit(&mut self) -> Option<Sense> {
        let bit = self.pending & self.pending.wrapping_neg();
        self.pending &= !bit;
        Some(match bit {
            POWER_ON => UA_POWER_ON,
            RESET => UA_DEVICE_RESET,
            CAPACITY => UA_CAPACITY_CHANGED,
            _ => UA_MODE_CHANGED,
        })
    }

}

/// Commands that neither report nor clear a unit attention (SAM-5 5.14: INQUIRY, REPORT LUNS;
/// REQUEST SENSE reports it as its data instead of as CHECK CONDITION).
pub fn exempt(opcode: u8) -> bool {
    matches!(opcode, 0x12 | 0xa0 | 0x03)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_nexus_in_priority_order() {
        let ev = LunEvents::default();
        let mut a = NexusUa::new(&ev, 100);
        let mut b = NexusUa::new(&ev, 100);
        assert_eq!(a.take(), Some(UA_POWER_ON));
        assert_eq!(a.take(), None);
        // b changes a mode page: a sees it, b does not.
        let before = ev.mode.fetch_add(1, Ordering::AcqRel);
        b.own_mode_change(before);
        a.refresh(&ev, 100);
        b.refresh(&ev, 100);
        assert_eq!(a.take(), Some(UA_MODE_CHANGED));
        assert_eq!(b.take(), Some(UA_POWER_ON));
        assert_eq!(b.take(), None);
        // capacity and reset: reset first.
        ev.reset.fetch_add(1, Ordering::AcqRel);
        a.refresh(&ev, 200);
        assert_eq!(a.take(), Some(UA_DEVICE_RESET));
        assert_eq!(a.take(), Some(UA_CAPACITY_CHANGED));
        assert!(!a.is_pending());
    }

    #[test]
    fn reset_supersedes_older_conditions() {
        let ev = LunEvents::default();
        let mut a = NexusUa::new(&ev, 1);
        ev.mode.fetch_add(1, Ordering::AcqRel);
        a.refresh(&ev, 1);
        ev.reset.fetch_add(1, Ordering::AcqRel);
        a.set_reset(&ev);
        a.refresh(&ev, 1);
        assert_eq!(a.take(), Some(UA_DEVICE_RESET));
        assert_eq!(a.take(), None);
    }
}
