//! Reservation commands and features on a queue pair (Linux nvmet's pr.c): the engine in
//! `nvme::reservation` decides; this completes them, possibly later by message when the change
//! had to be made durable or a PREEMPT AND ABORT drained I/O on other reactors.

use std::sync::Arc;

use super::io_cmd::nv_status;
use super::qpair::{QPair, SlotState};
use super::transport::Transport;
use super::{Ctrlr, Namespace, SubType};
use crate::nvme::reservation as nv;
use crate::nvme::spec::{sc, Sqe, Status};
use crate::reactor::Core;

/// Asynchronous event type "I/O command specific status" (Base 5.2, Figure 146).
const AER_TYPE_IO_SPECIFIC: u32 = 0x6;

/// Message to a queue pair: a deferred reservation command (or reservation feature) completed.
pub(super) struct ResvDone {
    idx: u16,
    seq: u16,
    c: nv::Completion,
}

impl QPair {
    /// A `done` callback for the reservation engine that completes slot `idx` by a message to
    /// this queue pair (it runs on the persist thread or another reactor).
    fn resv_waker(&self, idx: usize) -> impl Fn(nv::Completion) + Send + Sync + 'static {
        let reactors = self.t.reactors.clone();
        let me = self.me;
        let seq = self.slots[idx].seq;
        move |c: nv::Completion| {
            let msg = ResvDone { idx: idx as u16, seq, c };
            reactors.send(me.reactor, move |r| {
                r.send_to_handler(me, Box::new(msg));
            });
        }
    }

    /// Reservation Register / Report / Acquire / Release on namespace `ns_cache[ni]`.
    pub(super) fn reservation<T: Transport>(&mut self, core: &mut Core, tx: &mut T, idx: usize, sqe: Sqe, ni: usize) {
        let data = self.slots[idx].buf.take();
        let max_out = self.slots[idx].len as usize;
        self.slots[idx].pending = 1;
        let wake = self.resv_waker(idx);
        let vol = &self.ns_cache[ni].volume;
        let r = nv::execute(vol, &self.initiator, sqe.opcode(), sqe.cdw(10), sqe.cdw(11), data.as_deref().unwrap_or(&[]), max_out, wake);
        if let Some(c) = r {
            self.resv_complete(core, tx, idx, c);
        }
    }

    /// Set Features 82h (notification mask) / 83h (persistence) on the namespace named by NSID,
    /// or on every namespace for NSID 0 or FFFFFFFFh. Completes by message once every volume
    /// has answered (83h is durable first).
    pub(super) fn resv_set_features<T: Transport>(&mut self, core: &mut Core, tx: &mut T, idx: usize, sqe: Sqe, fid: u8) {
        self.refresh_ns();
        let nsid = sqe.nsid();
        let mut targets: Vec<Arc<Namespace>> = Vec::new();
        for n in self.ns_cache.iter() {
            if (nsid == 0 || nsid == 0xffff_ffff || n.nsid == nsid) && !targets.iter().any(|t| Arc::ptr_eq(&t.volume, &n.volume)) {
                targets.push(n.clone());
            }
        }
        if targets.is_empty() {
            return self.respond(core, tx, idx, Status::generic(sc::INVALID_NAMESPACE), 0, 0);
        }
        self.slots[idx].pending = 1;
        let wake = Arc::new(self.resv_waker(idx));
        let left = Arc::new(std::sync::Mutex::new((targets.len(), nv::Status::SUCCESS)));
        for n in targets {
            let (left, wake) = (left.clone(), wake.clone());
            let one = move |c: nv::Completion| {
                let mut g = left.lock().unwrap();
                g.0 -= 1;
                if !c.status.is_success() {
                    g.1 = c.status;
                }
                if g.0 == 0 {
                    let status = g.1;
                    drop(g);
                    (*wake)(nv::Completion { status, data: Vec::new() });
                }
            };
            let one = Arc::new(one);
            let deferred = one.clone();
            if let Some(c) = nv::set_features(&n.volume, &self.initiator, fid, sqe.cdw(11), move |c| (*deferred)(c)) {
                (*one)(c);
            }
        }
    }

    /// Finish a reservation command: its data (Report) and its response.
    fn resv_complete<T: Transport>(&mut self, core: &mut Core, tx: &mut T, idx: usize, c: nv::Completion) {
        let s = &mut self.slots[idx];
        s.pending = 0;
        let (cid, len) = (s.sqe.cid(), s.len as usize);
        if c.status.is_success() {
            let n = c.data.len().min(len);
            if n > 0 {
                tx.send_data(core, cid, &c.data[..n]);
            }
        }
        self.respond(core, tx, idx, nv_status(c.status), 0, 0)
    }

    pub(super) fn on_resv_done<T: Transport>(&mut self, core: &mut Core, tx: &mut T, d: ResvDone) {
        let idx = d.idx as usize;
        let live = self.slots.get(idx).is_some_and(|s| s.state == SlotState::Exec && s.seq == d.seq && s.pending == 1);
        if live {
            self.resv_complete(core, tx, idx, d.c);
            self.unpark(core, tx);
        }
    }

    /// Admin queue: raise the Reservation Log Page Available event (type 6h, info 0h, log 80h)
    /// when the engine holds a notification for this host on any namespace. Masked until the host
    /// reads log page 80h, like the namespace notice. One atomic load per volume when idle.
    pub(super) fn check_resv_events<T: Transport>(&mut self, core: &mut Core, tx: &mut T, c: &Arc<Ctrlr>) {
        if c.sub.subtype != SubType::Nvme || c.state.lock().unwrap().resv_notice_masked {
            return;
        }
        self.refresh_ns();
        if !self.ns_cache.iter().any(|n| nv::notification_pending(&n.volume, &self.initiator)) {
            return;
        }
        {
            let mut st = c.state.lock().unwrap();
            st.resv_notice_masked = true;
            st.pending_events.push(crate::nvme::spec::aer_dw0(AER_TYPE_IO_SPECIFIC, 0, nv::LOG_RESERVATION_NOTIFICATION));
        }
        self.deliver_aens(core, tx);
    }
}
