//! The reservation gate of a volume: the lock-free check of every command against the engine's
//! snapshot, and the fence that makes PREEMPT AND ABORT wait for in-flight writes.
//!
//! Fence mechanism (an RCU-style grace period per reactor): every modifying I/O (write, write
//! zeroes, unmap) submitted through a volume is counted in the submitting reactor's current
//! *epoch* for that volume; its completion passes through a per-reactor proxy handler that
//! decrements the count and forwards the completion to the real owner. To drain, the engine first
//! publishes the new snapshot (victims are refused from then on), then sends every reactor a
//! message that starts a new epoch and answers once every older epoch on that reactor has reached
//! zero. When all reactors have answered, no write submitted before the new snapshot is still in
//! flight: no write of a preempted registrant can reach the bdev after the preempt completes.
//! Reads are not counted: they cannot change what the fenced client left on the volume.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use slab::Slab;

use super::range_lock::{self, RangeLock};
use super::Initiator;
use crate::bdev::{Bdev, IoOp, IoRequest};
use crate::reactor::{Core, Handler, HandlerRef, IoEvent, ReactorSet};
use crate::reservation::{CommandClass, Fence, NexusRef};

/// The reservation view of a volume's initiator (no allocation).
#[inline]
pub fn nexus_ref(who: &Initiator) -> NexusRef<'_> {
    match who {
        Initiator::Iscsi { initiator_port, target_port, rel_port_id } => {
            NexusRef::Iscsi { initiator_port, target_port, rel_port_id: *rel_port_id }
        }
        Initiator::Nvme { host_id, host_nqn } => NexusRef::Nvme { host_id, host_nqn },
    }
}

/// The conflict-table class of a block I/O. SCSI SYNCHRONIZE CACHE is write-class (SBC-3 Table
/// 13); NVMe Flush is in neither the read nor the write command group (NVMe Base 2.0 8.19, reservations), so it
/// is always allowed.
#[inline]
pub fn io_class(op: IoOp, who: &Initiator) -> CommandClass {
    match op {
        IoOp::Read => CommandClass::Read,
        IoOp::Flush if matches!(who, Initiator::Nvme { .. }) => CommandClass::Always,
        IoOp::Write | IoOp::WriteZeroes | IoOp::Unmap | IoOp::Flush => CommandClass::Write,
    }
}

/// Modifying I/O: what the fence must drain.
#[inline]
fn modifies(op: IoOp) -> bool {
    matches!(op, IoOp::Write | IoOp::WriteZeroes | IoOp::Unmap)
}

static NEXT_GATE: AtomicU64 = AtomicU64::new(0);

/// Per-volume part of the fence: which reactors have submitted writes through it.
pub struct Gate {
    id: usize,
    /// Set on a reactor's first tracked write (under the lock, so a concurrent drain either sees
    /// it or that write sees the new snapshot).
    reactors: Mutex<Option<ReactorSet>>,
}

impl Gate {
    pub fn new() -> Arc<Gate> {
        Arc::new(Gate { id: NEXT_GATE.fetch_add(1, Ordering::Relaxed) as usize, reactors: Mutex::new(None) })
    }
}

struct Track {
    owner: HandlerRef,
    tag: u64,
    gate: usize,
    epoch: u64,
}

#[derive(Default)]
struct Epochs {
    current: u64,
    /// (epoch, writes in flight), oldest first; the back is the current epoch.
    counts: VecDeque<(u64, u32)>,
    /// Drain requests: fire once no epoch <= the first field has writes in flight.
    waiters: Vec<(u64, Box<dyn FnOnce()>)>,
    seen: bool,
}

impl Epochs {
    fn oldest_busy(&self) -> Option<u64> {
        self.counts.iter().find(|(_, c)| *c > 0).map(|(e, _)| *e)
    }
    /// Drop drained epochs; hand back the drain requests that are now satisfied.
    fn take_ready(&mut self) -> Vec<(u64, Box<dyn FnOnce()>)> {
        while self.counts.len() > 1 && self.counts[0].1 == 0 {
            self.counts.pop_front();
        }
        if self.waiters.is_empty() {
            return Vec::new();
        }
        let oldest = self.oldest_busy();
        let (ready, wait): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.waiters).into_iter().partition(|(lim, _)| oldest.is_none_or(|o| o > *lim));
        self.waiters = wait;
        ready
    }
}

#[derive(Default)]
struct ReactorGate {
    proxy: Option<HandlerRef>,
    installing: bool,
    /// Writes that arrived before this reactor's proxy existed (submitted when it is created,
    /// within the same reactor iteration).
    parked: Vec<(Arc<dyn Bdev>, Option<Arc<RangeLock>>, IoRequest)>,
    tracks: Slab<Track>,
    gates: Vec<Epochs>,
}

impl ReactorGate {
    fn epochs(&mut self, gate: usize) -> &mut Epochs {
        if self.gates.len() <= gate {
            self.gates.resize_with(gate + 1, Epochs::default);
        }
        let e = &mut self.gates[gate];
        if e.counts.is_empty() {
            e.counts.push_back((e.current, 0));
        }
        e
    }
}

thread_local! {
    static GATE: RefCell<ReactorGate> = RefCell::new(ReactorGate::default());
}

/// What to do with a tracked request once it is counted.
enum Route {
    Submit(IoRequest),
    /// Parked until the proxy exists; `true` if this call must create it.
    Parked(bool),
}

/// Submit a checked request; modifying I/O is tracked for the fence.
pub fn submit(core: &mut Core, gate: &Gate, bdev: &Arc<dyn Bdev>, mut req: IoRequest, locks: Option<&Arc<RangeLock>>) {
    if !modifies(req.op) {
        return range_lock::admit_and_submit(core, bdev, locks, req);
    }
    let route = GATE.with(|g| {
        let mut g = g.borrow_mut();
        let e = g.epochs(gate.id);
        if !e.seen {
            e.seen = true;
            let mut r = gate.reactors.lock().unwrap();
            if r.is_none() {
                *r = Some(core.reactors().clone());
            }
        }
        let epoch = e.current;
        e.counts.back_mut().expect("current epoch").1 += 1;
        let t = g.tracks.insert(Track { owner: req.owner, tag: req.tag, gate: gate.id, epoch });
        req.tag = t as u64;
        match g.proxy {
            Some(p) => {
                req.owner = p;
                Route::Submit(req)
            }
            None => {
                g.parked.push((bdev.clone(), locks.cloned(), req));
                let first = !g.installing;
                g.installing = true;
                Route::Parked(first)
            }
        }
    });
    match route {
        Route::Submit(req) => range_lock::admit_and_submit(core, bdev, locks, req),
        Route::Parked(true) => core.spawn(|core, me| {
            let parked = GATE.with(|g| {
                let mut g = g.borrow_mut();
                g.proxy = Some(me);
                g.installing = false;
                std::mem::take(&mut g.parked)
            });
            for (b, l, mut r) in parked {
                r.owner = me;
                range_lock::admit_and_submit(core, &b, l.as_ref(), r);
            }
            Some(Box::new(Proxy) as Box<dyn Handler>)
        }),
        Route::Parked(false) => {}
    }
}

/// Receives tracked completions on its reactor, settles the epoch count, forwards them.
struct Proxy;

impl Handler for Proxy {
    fn on_ready(&mut self, _: &mut Core, _: HandlerRef, _: &mio::event::Event) {}
    fn on_io_complete(&mut self, core: &mut Core, _me: HandlerRef, ev: IoEvent) {
        let (owner, tag, ready) = GATE.with(|g| {
            let mut g = g.borrow_mut();
            let Some(t) = g.tracks.try_remove(ev.tag as usize) else { return (None, 0, Vec::new()) };
            let e = g.epochs(t.gate);
            if let Some(c) = e.counts.iter_mut().find(|(ep, _)| *ep == t.epoch) {
                c.1 -= 1;
            }
            // Waiters run outside the borrow: they may message other reactors.
            let ready = e.take_ready();
            (Some(t.owner), t.tag, ready)
        });
        for (_, f) in ready {
            f();
        }
        if let Some(owner) = owner {
            core.complete(owner, IoEvent { tag, status: ev.status, buf: ev.buf });
        }
    }
    fn on_close(&mut self, _core: &mut Core, _me: HandlerRef) {
        GATE.with(|g| g.borrow_mut().proxy = None);
    }
}

/// Start a new epoch for `gate` on this reactor; `ack` runs once older writes have drained.
fn start_drain(gate: usize, ack: Box<dyn FnOnce()>) {
    let run_now = GATE.with(|g| {
        let mut g = g.borrow_mut();
        let e = g.epochs(gate);
        let old = e.current;
        e.current += 1;
        e.counts.push_back((e.current, 0));
        while e.counts.len() > 1 && e.counts[0].1 == 0 {
            e.counts.pop_front();
        }
        if e.oldest_busy().is_some_and(|o| o <= old) {
            e.waiters.push((old, ack));
            None
        } else {
            Some(ack)
        }
    });
    if let Some(f) = run_now {
        f();
    }
}

/// The volume's [`Fence`]: drains tracked writes on every reactor that ever submitted one.
pub struct VolumeFence(pub Arc<Gate>);

impl Fence for VolumeFence {
    fn drain(&self, done: Box<dyn FnOnce() + Send>) {
        let set = self.0.reactors.lock().unwrap().clone();
        let Some(set) = set else { return done() };
        let n = set.len();
        let left = Arc::new(AtomicUsize::new(n));
        let done = Arc::new(Mutex::new(Some(done)));
        let ack = {
            let left = left.clone();
            let done = done.clone();
            move || {
                if left.fetch_sub(1, Ordering::AcqRel) == 1 {
                    if let Some(d) = done.lock().unwrap().take() {
                        d();
                    }
                }
            }
        };
        let gate = self.0.id;
        for id in 0..n as u32 {
            let ack2 = ack.clone();
            if !set.send(id, move |_r| start_drain(gate, Box::new(ack2))) {
                ack(); // a stopped reactor has nothing in flight
            }
        }
    }
}

/// Writes this reactor still has in flight through `gate` (tests, diagnostics).
pub fn in_flight_here(gate: &Gate) -> u32 {
    GATE.with(|g| g.borrow().gates.get(gate.id).map(|e| e.counts.iter().map(|c| c.1).sum()).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    fn waiter(fired: &Rc<Cell<u32>>) -> Box<dyn FnOnce()> {
        let f = fired.clone();
        Box::new(move || f.set(f.get() + 1))
    }

    /// Two drains requested while older writes are in flight: each fires only once every write
    /// of the epochs before it has completed, and not before.
    #[test]
    fn epochs_release_waiters_in_order() {
        let fired = Rc::new(Cell::new(0));
        let mut e = Epochs::default();
        e.counts.push_back((0, 2)); // two writes in epoch 0
        e.current = 1;
        e.counts.push_back((1, 1)); // one in epoch 1
        e.waiters.push((0, waiter(&fired))); // first drain: epoch 0
        e.current = 2;
        e.counts.push_back((2, 0));
        e.waiters.push((1, waiter(&fired))); // second drain: epochs 0 and 1
        e.counts[0].1 -= 1;
        assert!(e.take_ready().is_empty());
        e.counts[0].1 -= 1;
        let r = e.take_ready();
        assert_eq!(r.iter().map(|w| w.0).collect::<Vec<_>>(), vec![0]);
        r.into_iter().for_each(|(_, f)| f());
        assert_eq!(fired.get(), 1);
        e.counts[0].1 -= 1; // epoch 1's write
        let r = e.take_ready();
        assert_eq!(r.len(), 1);
        r.into_iter().for_each(|(_, f)| f());
        assert_eq!(fired.get(), 2);
        assert_eq!(e.counts.len(), 1, "drained epochs are dropped");
    }
}
