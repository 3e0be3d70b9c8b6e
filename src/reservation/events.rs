//! Unit attentions (SCSI) and reservation notifications (NVMe) waiting for the nexuses they
//! concern: queued at commit, masked per NVMe host (Feature 82h), taken exactly once.

use std::sync::atomic::Ordering;

use super::nexus::NexusRef;
use super::types::PrEvent;
use super::{Event, Inner, Reservations, MAX_EVENTS};

impl Reservations {
    pub(super) fn push_event(&self, g: &mut Inner, e: Event) {
        if e.nexus.is_nvme() {
            let mask = g.masks.get(&e.nexus).copied().unwrap_or(0);
            if mask & e.event.nvme_mask_bit() != 0 {
                return;
            }
        }
        if g.events.len() >= MAX_EVENTS {
            g.events.pop_front();
        }
        g.events.push_back(e);
        self.pending_events.store(g.events.len(), Ordering::Release);
    }

    /// Any unit attention or notification pending for anyone (one load: front-ends call it before
    /// each command and only then [`Reservations::take_event`]).
    #[inline]
    pub fn events_pending(&self) -> bool {
        self.pending_events.load(Ordering::Acquire) != 0
    }

    /// The oldest pending event for `who`, removed (delivered exactly once).
    pub fn take_event(&self, who: NexusRef) -> Option<PrEvent> {
        let mut g = self.inner.lock().unwrap();
        let i = g.events.iter().position(|e| who.matches(&e.nexus, e.all_tg_pt))?;
        let e = g.events.remove(i)?;
        self.pending_events.store(g.events.len(), Ordering::Release);
        Some(e.event)
    }

    /// Is an event pending for `who` (NVMe: raise the Reservation Log Page Available AEN)?
    pub fn has_event(&self, who: NexusRef) -> bool {
        self.events_pending() && self.inner.lock().unwrap().events.iter().any(|e| who.matches(&e.nexus, e.all_tg_pt))
    }

    /// NVMe: take the next Reservation Notification log entry for `host`: (log page count,
    /// event, entries still available after this one).
    pub fn take_notification(&self, host: NexusRef) -> Option<(u64, PrEvent, usize)> {
        let ev = self.take_event(host)?;
        let mut g = self.inner.lock().unwrap();
        let owned = host.to_owned();
        let c = g.log_counts.entry(owned).or_insert(0);
        // The count wraps past 0xFFFFFFFFFFFFFFFF to 1: 0 means "no entry" (NVMe Base 2.0, Reservation Notification log page).
        *c = if *c == u64::MAX { 1 } else { *c + 1 };
        let count = *c;
        let left = g.events.iter().filter(|e| host.matches(&e.nexus, e.all_tg_pt)).count();
        Some((count, ev, left))
    }

    /// NVMe Set Features Reservation Notification Mask (82h) for `host` (bits 1..3).
    pub fn set_notification_mask(&self, host: NexusRef, mask: u32) {
        let mut g = self.inner.lock().unwrap();
        g.masks.insert(host.to_owned(), mask & 0b1110);
        // Masked types already queued are dropped too: the host asked not to see them.
        let before = g.events.len();
        g.events.retain(|e| !(host.matches(&e.nexus, e.all_tg_pt) && mask & e.event.nvme_mask_bit() != 0));
        if g.events.len() != before {
            self.pending_events.store(g.events.len(), Ordering::Release);
        }
    }

    pub fn notification_mask(&self, host: NexusRef) -> u32 {
        self.inner.lock().unwrap().masks.get(&host.to_owned()).copied().unwrap_or(0)
    }
}
