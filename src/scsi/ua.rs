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

/// What has been reported to one I_T nexus that several ports serve (the connections of an
/// iSCSI MC/S session), per LUN id: the newest reset and mode-change counts and the capacity
/// reported, so each event reaches the nexus once, through whichever port looks first. Touched
/// only when a unit attention is about to be reported.
#[derive(Debug, Default)]
pub struct NexusReported {
    luns: Vec<(u64, [AtomicU64; 3])>,
}

const R_RESET: usize = 0;
const R_MODE: usize = 1;
const R_CAPACITY: usize = 2;

impl NexusReported {
    /// Built by the nexus' first port from its own view (`(lun id, view)` pairs).
    pub fn new<'a>(luns: impl Iterator<Item = (u64, &'a NexusUa)>) -> NexusReported {
        NexusReported {
            luns: luns
                .map(|(id, u)| (id, [AtomicU64::new(u.seen_reset), AtomicU64::new(u.seen_mode), AtomicU64::new(u.seen_capacity)]))
                .collect(),
        }
    }

    /// Index of LUN `id` here (a LUN added after the nexus began is not shared: None).
    pub fn index(&self, id: u64) -> Option<usize> {
        self.luns.iter().position(|(l, _)| *l == id)
    }

    /// Whether this nexus still has to hear of event `value` of `kind` on LUN `i`; claims it.
    fn claim(&self, i: usize, kind: usize, value: u64) -> bool {
        let a = &self.luns[i].1[kind];
        if kind == R_CAPACITY {
            a.swap(value, Ordering::AcqRel) != value
        } else {
            a.fetch_max(value, Ordering::AcqRel) < value
        }
    }
}

/// A port's link to the nexus-wide record: the record and this LUN's index in it.
pub type Shared<'a> = Option<(&'a NexusReported, usize)>;

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

    /// This nexus changed the mode pages itself: it gets no UA for its own change (nor do the
    /// other ports of the nexus).
    pub fn own_mode_change(&mut self, before: u64, shared: Shared) {
        if self.seen_mode == before {
            self.seen_mode = before + 1;
        }
        if let Some((r, i)) = shared {
            r.claim(i, R_MODE, before + 1);
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

    /// Report (and clear) the highest-priority pending condition; with `shared`, skip (and
    /// clear) one another port of the nexus reported already.
    pub fn take(&mut self, shared: Shared) -> Option<Sense> {
        self.take_bit(!0, shared)
    }

    /// Report (and clear) a pending 29h condition (POWER ON, RESET): these come before every
    /// other unit attention, the reservation ones included (SAM-5 5.14).
    pub fn take_reset(&mut self, shared: Shared) -> Option<Sense> {
        self.take_bit(POWER_ON | RESET, shared)
    }

    fn take_bit(&mut self, mask: u8, shared: Shared) -> Option<Sense> {
        while self.pending & mask != 0 {
            let p = self.pending & mask;
            let bit = p & p.wrapping_neg();
            self.pending &= !bit;
            let fresh = match (bit, shared) {
                (RESET, Some((r, i))) => r.claim(i, R_RESET, self.seen_reset),
                (MODE, Some((r, i))) => r.claim(i, R_MODE, self.seen_mode),
                (CAPACITY, Some((r, i))) => r.claim(i, R_CAPACITY, self.seen_capacity),
                _ => true,
            };
            if fresh {
                return Some(match bit {
                    POWER_ON => UA_POWER_ON,
                    RESET => UA_DEVICE_RESET,
                    CAPACITY => UA_CAPACITY_CHANGED,
                    _ => UA_MODE_CHANGED,
                });
            }
        }
        None
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
        assert_eq!(a.take(None), Some(UA_POWER_ON));
        assert_eq!(a.take(None), None);
        // b changes a mode page: a sees it, b does not.
        let before = ev.mode.fetch_add(1, Ordering::AcqRel);
        b.own_mode_change(before, None);
        a.refresh(&ev, 100);
        b.refresh(&ev, 100);
        assert_eq!(a.take(None), Some(UA_MODE_CHANGED));
        assert_eq!(b.take(None), Some(UA_POWER_ON));
        assert_eq!(b.take(None), None);
        // capacity and reset: reset first.
        ev.reset.fetch_add(1, Ordering::AcqRel);
        a.refresh(&ev, 200);
        assert_eq!(a.take(None), Some(UA_DEVICE_RESET));
        assert_eq!(a.take(None), Some(UA_CAPACITY_CHANGED));
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
        assert_eq!(a.take(None), Some(UA_DEVICE_RESET));
        assert_eq!(a.take(None), None);
    }

    #[test]
    fn ports_of_one_nexus_report_each_event_once() {
        let ev = LunEvents::default();
        let mut a = NexusUa::new(&ev, 100);
        let rep = NexusReported::new([(7u64, &a)].into_iter());
        let mut b = NexusUa::new(&ev, 100);
        b.join_existing();
        let sh = Some((&rep, rep.index(7).unwrap()));
        assert_eq!(a.take(sh), Some(UA_POWER_ON));
        assert_eq!(b.take(sh), None);
        // Another nexus resets the LUN and grows it: the first port to look reports both.
        ev.reset.fetch_add(1, Ordering::AcqRel);
        a.refresh(&ev, 200);
        b.refresh(&ev, 200);
        assert_eq!(b.take_reset(sh), Some(UA_DEVICE_RESET));
        assert_eq!(a.take_reset(sh), None);
        assert_eq!(a.take(sh), Some(UA_CAPACITY_CHANGED));
        assert_eq!(b.take(sh), None);
        // A mode change by this nexus, through port a: no port of the nexus hears of it.
        let before = ev.mode.fetch_add(1, Ordering::AcqRel);
        a.own_mode_change(before, sh);
        a.refresh(&ev, 200);
        b.refresh(&ev, 200);
        assert_eq!((a.take(sh), b.take(sh)), (None, None));
        // A mode change by another nexus: once.
        ev.mode.fetch_add(1, Ordering::AcqRel);
        a.refresh(&ev, 200);
        b.refresh(&ev, 200);
        assert_eq!(a.take(sh), Some(UA_MODE_CHANGED));
        assert_eq!(b.take(sh), None);
        assert!(!a.is_pending() && !b.is_pending());
    }
}
