//! The layout guard on the I/O path of a volume.
//!
//! A volume with a guard asks it about every request: a refused write is handed back as
//! `Denied::WriteProtected`; a read of blocks nobody may see completes with zeros there; a write
//! into unwritten extents is recorded when it completes successfully. Completions that need such
//! work go through one small interposer handler per reactor (installed by [`install`]), which
//! fixes the buffer or records the write and forwards the completion to the real owner. Requests
//! the guard has nothing to say about go straight to the bdev.

use std::cell::RefCell;
use std::sync::Arc;

use crate::bdev::{IoOp, IoRequest};
use crate::layout::guard::{Guard, ReadVerdict, Who, WriteVerdict};
use crate::reactor::{Core, Handler, HandlerRef, IoEvent, Reactor};
use crate::reservation::Snapshot;

use super::{Denied, Downstream, Initiator};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Then {
    /// A read: zero what the reader may not see (its client index, see `Guard::reader`).
    Read(u32),
    /// A write into unwritten extents: record its blocks (and, for FUA, make the record durable
    /// before completing).
    Write { fua: bool },
    /// A flush: make the written-since-allocation bits durable before completing.
    Flush,
}

struct Held {
    owner: HandlerRef,
    tag: u64,
    then: Then,
    lba: u64,
    n: u64,
    guard: Arc<Guard>,
}

thread_local! {
    static INTERPOSER: RefCell<Option<HandlerRef>> = const { RefCell::new(None) };
    static HELD: RefCell<slab::Slab<Held>> = RefCell::new(slab::Slab::with_capacity(256));
}

struct Interposer;

impl Handler for Interposer {
    fn on_ready(&mut self, _: &mut Core, _: HandlerRef, _: &mio::event::Event) {}
    fn on_io_complete(&mut self, core: &mut Core, _me: HandlerRef, mut ev: IoEvent) {
        let Some(h) = HELD.with(|s| s.borrow_mut().try_remove(ev.tag as usize)) else { return };
        let durable = ev.status == 0 && matches!(h.then, Then::Flush | Then::Write { fua: true });
        if ev.status == 0 {
            match h.then {
                Then::Read(reader) => {
                    if let Some(b) = ev.buf.as_mut() {
                        h.guard.zero_fill(reader, h.lba, h.n, b.as_mut_slice());
                    }
                }
                Then::Write { .. } => h.guard.mark_written(h.lba, h.n),
                Then::Flush => {}
            }
        }
        if durable && h.guard.is_dirty() {
            // Complete once the bits are durable: from the store's thread, back on this reactor.
            let (set, id, owner, tag, buf) = (core.reactors().clone(), core.id, h.owner, h.tag, ev.buf);
            h.guard.persist_then(Box::new(move |ok| {
                let status = if ok { 0 } else { -libc::EIO };
                set.send(id, move |r| {
                    r.with_handler(owner, |hd, core, me| hd.on_io_complete(core, me, IoEvent { tag, status, buf }));
                });
            }));
            return;
        }
        core.complete(h.owner, IoEvent { tag: h.tag, status: ev.status, buf: ev.buf });
    }
}

/// Put the interposer on a reactor (idempotent); run on every reactor before a guard is attached.
pub fn install(r: &mut Reactor) {
    if INTERPOSER.with(|i| i.borrow().is_some()) {
        return;
    }
    let h = r.add_handler(|_, _| Some(Box::new(Interposer) as Box<dyn Handler>));
    INTERPOSER.with(|i| *i.borrow_mut() = h);
}

/// Who the guard sees: the PR key the nexus registered on the volume (looked up in the
/// reservation snapshot, lock-free), then the initiator name (iSCSI, without the ISID part) or host
/// NQN and ID as fallback identities.
fn who<'a>(pr: &Snapshot, i: &'a Initiator) -> Who<'a> {
    let key = pr.key_of(super::pr_gate::nexus_ref(i));
    match i {
        Initiator::Iscsi { initiator_port, .. } => {
            let name = initiator_port.split(",i,").next().unwrap_or(initiator_port);
            Who { key, name: Some(name), host_id: None }
        }
        Initiator::Nvme { host_id, host_nqn } => Who { key, name: Some(host_nqn), host_id: Some(host_id) },
    }
}

fn via_interposer(core: &mut Core, down: &Downstream, guard: &Arc<Guard>, mut req: IoRequest, then: Then) {
    let Some(me) = INTERPOSER.with(|i| *i.borrow()) else {
        // Without the interposer the guarantee cannot be kept: fail rather than expose data.
        tracing::error!("layout guard interposer missing on reactor {}", core.id);
        req.complete(core, -libc::EIO);
        return;
    };
    let held = Held { owner: req.owner, tag: req.tag, then, lba: req.offset_blocks, n: req.num_blocks, guard: guard.clone() };
    req.tag = HELD.with(|s| s.borrow_mut().insert(held)) as u64;
    req.owner = me;
    down.send(core, req);
}

/// Submit `req` under `guard`, then on down the volume's path.
pub fn submit(
    core: &mut Core,
    down: &Downstream,
    guard: &Arc<Guard>,
    pr: &Snapshot,
    who_: &Initiator,
    mut req: IoRequest,
) -> Result<(), (IoRequest, Denied)> {
    match req.op {
        IoOp::Read => {
            let reader = if guard.touches_pending(req.offset_blocks, req.num_blocks) {
                guard.reader(&who(pr, who_))
            } else {
                crate::layout::guard::NOBODY
            };
            match guard.check_read(reader, req.offset_blocks, req.num_blocks) {
            ReadVerdict::Data => down.send(core, req),
            ReadVerdict::Zeros => {
                if let Some(b) = req.buf.as_mut() {
                    b.as_mut_slice().fill(0);
                }
                req.complete(core, 0);
            }
            ReadVerdict::Mixed => via_interposer(core, down, guard, req, Then::Read(reader)),
            }
        }
        IoOp::Write | IoOp::WriteZeroes | IoOp::Unmap => match guard.check_write(&who(pr, who_), req.offset_blocks, req.num_blocks) {
            WriteVerdict::Refuse => return Err((req, Denied::WriteProtected)),
            WriteVerdict::Allow => down.send(core, req),
            // Unmapped blocks have no defined content: they stay unwritten (read as zeros).
            WriteVerdict::Track if req.op == IoOp::Unmap => down.send(core, req),
            WriteVerdict::Track => {
                let fua = req.fua;
                via_interposer(core, down, guard, req, Then::Write { fua })
            }
        },
        IoOp::Flush if guard.is_dirty() => via_interposer(core, down, guard, req, Then::Flush),
        IoOp::Flush => down.send(core, req),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The guard on a real reactor with a RAM bdev: I/O goes through `Volume::submit` exactly as
    //! the protocol front-ends will send it.
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;
    use crate::bdev::malloc::MallocBdev;
    use crate::bdev::BdevRegistry;
    use crate::layout::journal::FileJournal;
    use crate::layout::recall::{GuardOnlyFencer, NoNotifier};
    use crate::layout::{DataDev, FileId, Hooks, IoMode, LayoutVolume, Options, Policy};
    use crate::reactor::{IoBuf, PollMode, ReactorSet};
    use crate::volume::{Volume, VolumeRegistry};

    const BS: usize = 4096;

    struct Probe(mpsc::Sender<(i32, Vec<u8>)>);
    impl Handler for Probe {
        fn on_ready(&mut self, _: &mut Core, _: HandlerRef, _: &mio::event::Event) {}
        fn on_io_complete(&mut self, _: &mut Core, _: HandlerRef, ev: IoEvent) {
            let data = ev.buf.map(|b| b.as_slice().to_vec()).unwrap_or_default();
            let _ = self.0.send((ev.status, data));
        }
    }

    struct Rig {
        set: ReactorSet,
        h: HandlerRef,
        rx: mpsc::Receiver<(i32, Vec<u8>)>,
        vol: Arc<Volume>,
    }

    impl Rig {
        /// Submit one I/O from the probe handler; Err(denial) or Ok((status, data)).
        fn io(&self, who: &Initiator, op: IoOp, lba: u64, n: u64, fill: u8) -> Result<(i32, Vec<u8>), Denied> {
            let (vol, who, h) = (self.vol.clone(), who.clone(), self.h);
            let denied = self
                .set
                .call(0, move |r| {
                    let mut out = None;
                    r.with_handler(h, |_, core, me| {
                        let buf = IoBuf::from_slice(&vec![fill; n as usize * BS]);
                        let req = IoRequest { op, offset_blocks: lba, num_blocks: n, buf: Some(buf), fua: false, owner: me, tag: 1 };
                        out = vol.submit(core, &who, req).err().map(|(_, d)| d);
                    });
                    out
                })
                .unwrap();
            if let Some(d) = denied {
                return Err(d);
            }
            Ok(self.rx.recv_timeout(Duration::from_secs(5)).expect("completion"))
        }
    }

    #[test]
    fn guard_on_the_data_path() {
        let set = ReactorSet::start(0x1, PollMode::Adaptive, crate::bdev::install).unwrap();
        let bdevs = Arc::new(BdevRegistry::default());
        bdevs.add(Arc::new(MallocBdev::new("m0", 64, BS as u32, None).unwrap())).unwrap();
        let vols = VolumeRegistry::new(bdevs);
        let vol = vols.open("m0", "test").unwrap();
        let (tx, rx) = mpsc::channel();
        let h = set.call(0, move |r| r.add_handler(move |_, _| Some(Box::new(Probe(tx)) as Box<dyn Handler>))).unwrap().unwrap();
        let rig = Rig { set: set.clone(), h, rx, vol: vol.clone() };
        let a = Initiator::Iscsi { initiator_port: "iqn.2026-01.test:a,i,0x23d000000001".into(), target_port: "t".into(), rel_port_id: 1 };
        let b = Initiator::Nvme { host_id: [9; 16], host_nqn: "nqn.2026-01.test:b".into() };

        // Stale data from a previous life of the device, written before any layout existed.
        assert_eq!(rig.io(&a, IoOp::Write, 0, 64, 0xee).unwrap().0, 0);

        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("meta");
        let opts = Options { name: "lv".into(), block_size: 0, policy: Policy::Enforce, recall_timeout: Duration::from_secs(5) };
        let hooks = Hooks { notifier: Arc::new(NoNotifier), fencer: Arc::new(GuardOnlyFencer) };
        let dev = DataDev { uuid: vol.uuid(), block_size: BS as u32, num_blocks: 64 };
        let lv = LayoutVolume::open(Box::new(FileJournal::new(&p)), false, &dev, &opts, hooks).unwrap();
        set.call_all(install);
        vol.set_guard(Some(lv.guard().clone()));
        lv.client_register("A", 0xa, vec!["iqn.2026-01.test:a".into()]).unwrap();
        lv.client_register("B", 0xb, vec!["nqn.2026-01.test:b".into()]).unwrap();
        lv.file_create(&FileId::Num(1)).unwrap();

        // Free blocks read as zeros to everyone: the stale pattern never shows.
        let (st, data) = rig.io(&b, IoOp::Read, 0, 2, 0x55).unwrap();
        assert_eq!(st, 0);
        assert!(data.iter().all(|&x| x == 0));

        let g = lv.layout_get(&FileId::Num(1), "A", 0, 4 * BS as u64, 0, IoMode::Rw).unwrap();
        let l = g.extents[0].volume_offset / BS as u64;
        // Only A, only inside its grant.
        assert_eq!(rig.io(&b, IoOp::Write, l, 1, 0xb0).unwrap_err(), Denied::WriteProtected);
        assert_eq!(rig.io(&a, IoOp::Write, l + 4, 1, 0xa0).unwrap_err(), Denied::WriteProtected);
        assert_eq!(rig.io(&a, IoOp::Write, l, 1, 0xa1).unwrap().0, 0);
        // Before commit the holder reads back what it wrote, the unwritten block as zeros; anyone
        // else sees zeros for both (the blocks are not part of the file yet).
        let (st, data) = rig.io(&a, IoOp::Read, l, 2, 0x55).unwrap();
        assert_eq!(st, 0);
        assert!(data[..BS].iter().all(|&x| x == 0xa1));
        assert!(data[BS..].iter().all(|&x| x == 0), "unwritten block must read as zeros");
        let (st, data) = rig.io(&b, IoOp::Read, l, 2, 0x55).unwrap();
        assert_eq!(st, 0);
        assert!(data.iter().all(|&x| x == 0), "another client must not see uncommitted data");
        let c = lv.layout_commit(g.grant, &[(0, 4 * BS as u64)], Some(4 * BS as u64)).unwrap();
        assert_eq!((c.committed_bytes, c.unwritten_bytes), (BS as u64, 3 * BS as u64));
        let (_, data) = rig.io(&b, IoOp::Read, l, 2, 0x55).unwrap();
        assert!(data[..BS].iter().all(|&x| x == 0xa1) && data[BS..].iter().all(|&x| x == 0));
        // Committed data stays writable by the holder in place.
        assert_eq!(rig.io(&a, IoOp::Write, l, 1, 0xa2).unwrap().0, 0);
        let counters = lv.guard().counters_json();
        assert_eq!(counters["writes_refused"], 2);
        assert!(counters["reads_zero_filled"].as_u64().unwrap() >= 3);

        // Audit lets B through (counted); off is a plain LUN.
        lv.guard().set_policy(Policy::Audit);
        assert_eq!(rig.io(&b, IoOp::Write, 40, 1, 0xb1).unwrap().0, 0);
        assert_eq!(lv.guard().counters_json()["writes_audited"], 1);
        lv.guard().set_policy(Policy::Enforce);
        // The metadata server's own identity may write anywhere; reads still hide stale data.
        assert_eq!(rig.io(&b, IoOp::Write, 41, 1, 0xb2).unwrap_err(), Denied::WriteProtected);
        lv.guard().set_trusted(vec!["nqn.2026-01.test:b".into()]);
        assert_eq!(rig.io(&b, IoOp::Write, 41, 1, 0xb2).unwrap().0, 0);
        let (_, data) = rig.io(&b, IoOp::Read, 41, 1, 0x55).unwrap();
        assert!(data.iter().all(|&x| x == 0));
        lv.guard().set_trusted(vec![]);

        // A client known only by its PR key: its nexus is mapped to it through the key it
        // registered with the reservation engine (no identity matches).
        let k = Initiator::Nvme { host_id: [7; 16], host_nqn: "nqn.2026-01.test:k".into() };
        lv.client_register("K", 0xc0ffee, vec![]).unwrap();
        lv.file_create(&FileId::Num(2)).unwrap();
        let gk = lv.layout_get(&FileId::Num(2), "K", 0, BS as u64, 0, IoMode::Rw).unwrap();
        let lk = gk.extents[0].volume_offset / BS as u64;
        assert_eq!(rig.io(&k, IoOp::Write, lk, 1, 0xc1).unwrap_err(), Denied::WriteProtected, "unregistered: unknown");
        let reg = crate::reservation::Action::NvmeRegister { nrkey: 0xc0ffee, aptpl: None };
        vol.reservations().execute(crate::volume::pr_gate::nexus_ref(&k), reg, Box::new(|_| {})).unwrap().unwrap();
        assert_eq!(rig.io(&k, IoOp::Write, lk, 1, 0xc1).unwrap().0, 0, "mapped by its registered key");
        assert_eq!(rig.io(&k, IoOp::Write, lk + 1, 1, 0xc1).unwrap_err(), Denied::WriteProtected);

        // Fenced: A's writes stop at once, its unwritten blocks are gone.
        lv.client_fence("A").unwrap();
        assert_eq!(rig.io(&a, IoOp::Write, l, 1, 0xa3).unwrap_err(), Denied::WriteProtected);
        let (_, data) = rig.io(&b, IoOp::Read, l + 1, 1, 0x55).unwrap();
        assert!(data.iter().all(|&x| x == 0));
        vol.set_guard(None);
        set.stop();
    }
}
