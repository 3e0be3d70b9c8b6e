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

use crate::bdev::{self, Bdev, IoOp, IoRequest};
use crate::layout::guard::{Guard, ReadVerdict, Who, WriteVerdict};
use crate::reactor::{Core, Handler, HandlerRef, IoEvent, Reactor};

use super::{Denied, Initiator};

struct Held {
    owner: HandlerRef,
    tag: u64,
    read: bool,
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
        if ev.status == 0 {
            if h.read {
                if let Some(b) = ev.buf.as_mut() {
                    h.guard.zero_fill(h.lba, h.n, b.as_mut_slice());
                }
            } else {
                h.guard.mark_written(h.lba, h.n);
            }
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

/// Who the guard sees: the initiator name (iSCSI, without the ISID part) or host NQN and ID.
fn who(i: &Initiator) -> Who<'_> {
    match i {
        Initiator::Iscsi { initiator_port, .. } => {
            let name = initiator_port.split(",i,").next().unwrap_or(initiator_port);
            Who { key: None, name: Some(name), host_id: None }
        }
        Initiator::Nvme { host_id, host_nqn } => Who { key: None, name: Some(host_nqn), host_id: Some(host_id) },
    }
}

fn via_interposer(core: &mut Core, bdev: &dyn Bdev, guard: &Arc<Guard>, mut req: IoRequest, read: bool) {
    let Some(me) = INTERPOSER.with(|i| *i.borrow()) else {
        // Without the interposer the guarantee cannot be kept: fail rather than expose data.
        tracing::error!("layout guard interposer missing on reactor {}", core.id);
        req.complete(core, -libc::EIO);
        return;
    };
    let held = Held { owner: req.owner, tag: req.tag, read, lba: req.offset_blocks, n: req.num_blocks, guard: guard.clone() };
    req.tag = HELD.with(|s| s.borrow_mut().insert(held)) as u64;
    req.owner = me;
    bdev::submit(core, bdev, req);
}

/// Submit `req` under `guard`.
pub fn submit(core: &mut Core, bdev: &dyn Bdev, guard: &Arc<Guard>, who_: &Initiator, mut req: IoRequest) -> Result<(), (IoRequest, Denied)> {
    match req.op {
        IoOp::Read => match guard.check_read(req.offset_blocks, req.num_blocks) {
            ReadVerdict::Data => bdev::submit(core, bdev, req),
            ReadVerdict::Zeros => {
                if let Some(b) = req.buf.as_mut() {
                    b.as_mut_slice().fill(0);
                }
                req.complete(core, 0);
            }
            ReadVerdict::Mixed => via_interposer(core, bdev, guard, req, true),
        },
        IoOp::Write | IoOp::WriteZeroes | IoOp::Unmap => match guard.check_write(&who(who_), req.offset_blocks, req.num_blocks) {
            WriteVerdict::Refuse => return Err((req, Denied::WriteProtected)),
            WriteVerdict::Allow => bdev::submit(core, bdev, req),
            // Unmapped blocks have no defined content: they stay unwritten (read as zeros).
            WriteVerdict::Track if req.op == IoOp::Unmap => bdev::submit(core, bdev, req),
            WriteVerdict::Track => via_interposer(core, bdev, guard, req, false),
        },
        IoOp::Flush => bdev::submit(core, bdev, req),
    }
    Ok(())
}
