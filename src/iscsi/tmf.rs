//! Task management that reaches beyond one connection (SAM-5 7, RFC 7143 §11.5.1): a TMF is
//! answered only once no command it aborted can still change the medium, and the functions that
//! act on the logical unit (CLEAR TASK SET with TST=000b, LOGICAL UNIT RESET, target resets)
//! reach every nexus on it, whatever reactor its connection lives on.
//!
//! Mechanism, shared with PREEMPT AND ABORT: the requesting connection first messages every other
//! connection with a LUN on the affected volumes ([`OtherNexusAbort`]: they mark their tasks
//! aborted, so nothing more is submitted for them), then asks each volume to drain its writes
//! (`Volume::drain_writes`, the reservation fence's per-reactor epochs). A reactor runs its
//! messages in the order one sender queued them, so on every reactor the abort is applied before
//! the drain's epoch starts: every aborted write is in an older epoch, and the drain's end means
//! all of them have completed. Then the requester gets [`Answer`] and sends the response.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::target::Target;
use crate::reactor::{Core, HandlerRef};
use crate::volume::Volume;

/// A TMF response held until the drain ends (delivered to the requesting connection).
pub struct Answer {
    pub itt: u32,
    pub response: u8,
    pub function: u8,
}

/// To another connection: abort your tasks on LUNs of these volumes (another nexus cleared the
/// task set or reset the logical unit).
pub struct OtherNexusAbort(pub Arc<[Arc<Volume>]>);

/// To another connection of the requester's own session (MC/S: the same I_T nexus): ABORT TASK
/// SET, CLEAR TASK SET, LOGICAL UNIT RESET or a target reset aborted your tasks on this LUN (None:
/// on every LUN); they end without a response, as the requester's own do.
pub struct SessionAbort {
    pub lun: Option<u64>,
    /// A reset (LOGICAL UNIT RESET, target reset): its unit attention is the requester's to report.
    pub reset: bool,
}

/// Message the session's other connections `siblings` (see [`SessionAbort`]). Call before
/// [`answer_after_drain`] on the same reactor, like [`abort_other_nexuses`].
pub fn abort_in_session(core: &mut Core, me: HandlerRef, siblings: &[HandlerRef], lun: Option<u64>, reset: bool) {
    for &h in siblings.iter().filter(|h| **h != me) {
        core.reactors().send(h.reactor, move |r| {
            r.send_to_handler(h, Box::new(SessionAbort { lun, reset }));
        });
    }
}

/// Each volume once (several LUNs may export one volume).
pub fn distinct(mut v: Vec<Arc<Volume>>) -> Vec<Arc<Volume>> {
    let mut out: Vec<Arc<Volume>> = Vec::with_capacity(v.len());
    for x in v.drain(..) {
        if !out.iter().any(|o| Arc::ptr_eq(o, &x)) {
            out.push(x);
        }
    }
    out
}

/// Message every logged-in connection of another session than `tsih` (the requester's) to abort
/// its tasks on `volumes`. Call before [`answer_after_drain`] on the same reactor (the ordering
/// the drain relies on).
pub fn abort_other_nexuses(core: &mut Core, target: &Target, me: HandlerRef, tsih: u16, volumes: &[Arc<Volume>]) {
    let others: Vec<HandlerRef> =
        target.conns.lock().unwrap().values().filter(|c| c.tsih != tsih).map(|c| c.handler).filter(|h| *h != me).collect();
    if others.is_empty() {
        return;
    }
    let vols: Arc<[Arc<Volume>]> = volumes.into();
    for h in others {
        let v = vols.clone();
        core.reactors().send(h.reactor, move |r| {
            r.send_to_handler(h, Box::new(OtherNexusAbort(v)));
        });
    }
}

/// LOGICAL UNIT RESET: BUS DEVICE RESET FUNCTION OCCURRED (29/03) for every nexus of the logical
/// unit, through every target node that exports its volume (the requester's own LUN object is
/// counted by `ScsiPort::lun_reset`).
pub fn raise_reset(target: &Target, volume: &Arc<Volume>, own: &Arc<crate::scsi::Lun>) {
    let st = target.state.lock().unwrap();
    for node in st.nodes.values() {
        for l in &node.luns.luns {
            if Arc::ptr_eq(&l.volume, volume) && !Arc::ptr_eq(l, own) {
                l.events.reset.fetch_add(1, Ordering::AcqRel);
            }
        }
    }
}

/// Deliver `answer` to `me` once every write submitted to `volumes` before now has completed.
pub fn answer_after_drain(core: &Core, me: HandlerRef, volumes: Vec<Arc<Volume>>, answer: Answer) {
    let set = core.reactors().clone();
    let deliver = move |a: Answer| {
        set.send(me.reactor, move |r| {
            r.send_to_handler(me, Box::new(a));
        });
    };
    if volumes.is_empty() {
        return deliver(answer);
    }
    let left = Arc::new(AtomicUsize::new(volumes.len()));
    let pending = Arc::new(std::sync::Mutex::new(Some((answer, deliver))));
    for v in &volumes {
        let (left, pending) = (left.clone(), pending.clone());
        v.drain_writes(Box::new(move || {
            if left.fetch_sub(1, Ordering::AcqRel) == 1 {
                if let Some((a, d)) = pending.lock().unwrap().take() {
                    d(a);
                }
            }
        }));
    }
}
