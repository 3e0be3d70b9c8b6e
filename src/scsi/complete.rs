//! Completion state machines of in-flight tasks: each volume I/O completion (the IoEvent tag is
//! the task's slot in the port) advances its task to its next I/O or to its response.

use super::sense::{Sense, MEDIUM_ERROR_UNRECOVERED, WRITE_ERROR};
use super::task::{first_difference, Kind, RmwOp, Stage};
use super::{ScsiPort, ScsiResponse, ScsiResponseKind};
use crate::bdev::{IoOp, IoRequest};
use crate::reactor::{Core, HandlerRef, IoBuf, IoEvent};

impl ScsiPort {
    pub(super) fn advance(&mut self, core: &mut Core, me: HandlerRef, ev: IoEvent) {
        let slot = ev.tag as usize;
        let Some(t) = self.tasks.get_mut(slot) else { return };
        match &mut t.kind {
            Kind::Read { len } => {
                let len = *len;
                let t = self.tasks.remove(slot);
                if t.aborted {
                    return;
                }
                let resp = match ev.buf {
                    Some(buf) if ev.status == 0 => ScsiResponse::data(t.tag, buf, len),
                    _ => ScsiResponse::check(t.tag, MEDIUM_ERROR_UNRECOVERED),
                };
                self.done.push_back(resp);
            }
            Kind::Single { write } => {
                let write = *write;
                let t = self.tasks.remove(slot);
                if !t.aborted {
                    self.done.push_back(io_result(t.tag, ev.status, write));
                }
            }
            Kind::Verify { .. } => self.verify_advance(core, me, slot, ev),
            Kind::Multi { outstanding, error } => {
                *outstanding -= 1;
                if ev.status != 0 && error.is_none() {
                    *error = Some(WRITE_ERROR);
                }
                if *outstanding == 0 {
                    let t = self.tasks.remove(slot);
                    let Kind::Multi { error, .. } = t.kind else { unreachable!() };
                    if !t.aborted {
                        self.done.push_back(match error {
                            Some(s) => ScsiResponse::check(t.tag, s),
                            None => ScsiResponse::good(t.tag),
                        });
                    }
                }
            }
            Kind::WriteSame { next, end, chunk, fua } => {
                if ev.status != 0 || t.aborted || *next >= *end || ev.buf.is_none() {
                    let t = self.tasks.remove(slot);
                    if !t.aborted {
                        self.done.push_back(io_result(t.tag, ev.status, true));
                    }
                    return;
                }
                let n = (*end - *next).min(*chunk);
                let lba = *next;
                *next += n;
                let fua = *fua;
                let (tag, lun) = (t.tag, t.lun as usize);
                let req = IoRequest { op: IoOp::Write, offset_blocks: lba, num_blocks: n, buf: ev.buf, fua, owner: me, tag: slot as u64 };
                let vol = self.luns.luns[lun].volume.clone();
                if let Err((_, why)) = vol.submit(core, &self.initiator, req) {
                    self.tasks.remove(slot);
                    self.done.push_back(super::denied(why).into_response(tag));
                }
            }
            Kind::Rmw(_) => self.rmw_advance(core, me, slot, ev),
            Kind::Copy(_) => self.copy_advance(core, me, slot, ev),
        }
    }

    /// A chunk of a VERIFY was read: compare it, then read the next one or answer.
    fn verify_advance(&mut self, core: &mut Core, me: HandlerRef, slot: usize, ev: IoEvent) {
        let Some(t) = self.tasks.get_mut(slot) else { return };
        let Kind::Verify { data, repeat, start, next, end, chunk } = &mut t.kind else { return };
        let vol = self.luns.luns[t.lun as usize].volume.clone();
        let bs = vol.block_size() as usize;
        let n = (*end - *next).min(*chunk);
        let verdict = match ev.buf.as_deref() {
            _ if t.aborted => Some(None),
            Some(read) if ev.status == 0 && read.len() >= n as usize * bs => {
                let read = &read[..n as usize * bs];
                let base = (*next - *start) as usize * bs;
                let diff = match data {
                    None => None,
                    Some(d) if *repeat => read.chunks(bs).enumerate().find_map(|(i, blk)| first_difference(blk, d).map(|o| i * bs + o)),
                    Some(d) => first_difference(read, &d[base..base + read.len()]),
                };
                match diff {
                    Some(off) => Some(Some(ScsiResponse::check(t.tag, Sense::miscompare((base + off) as u32)))),
                    None if *next + n >= *end => Some(Some(ScsiResponse::good(t.tag))),
                    None => None,
                }
            }
            _ => Some(Some(ScsiResponse::check(t.tag, MEDIUM_ERROR_UNRECOVERED))),
        };
        if let Some(resp) = verdict {
            self.tasks.remove(slot);
            if let Some(r) = resp {
                self.done.push_back(r);
            }
            return;
        }
        *next += n;
        let lba = *next;
        let n = (*end - lba).min(*chunk);
        let tag = t.tag;
        let mut buf = ev.buf.expect("checked above");
        buf.set_len(n as usize * bs);
        let req = IoRequest { op: IoOp::Read, offset_blocks: lba, num_blocks: n, buf: Some(buf), fua: false, owner: me, tag: slot as u64 };
        if let Err((_, why)) = vol.submit(core, &self.initiator, req) {
            self.tasks.remove(slot);
            self.done.push_back(super::denied(why).into_response(tag));
        }
    }

    /// The read-modify-write state machine: Locking -> Reading -> (compare / merge) -> Writing.
    fn rmw_advance(&mut self, core: &mut Core, me: HandlerRef, slot: usize, ev: IoEvent) {
        let Some(t) = self.tasks.get_mut(slot) else { return };
        let Kind::Rmw(r) = &mut t.kind else { return };
        let lun = self.luns.luns[t.lun as usize].clone();
        let vol = &lun.volume;
        let bs = vol.block_size() as usize;
        let len = r.blocks as usize * bs;
        // Finish the task: release the range, answer GOOD (None) or the given failure.
        let fail = |port: &mut ScsiPort, core: &mut Core, slot: usize, resp: Option<ScsiResponseKind>| {
            let t = port.tasks.remove(slot);
            if let Kind::Rmw(r) = &t.kind {
                vol.locks.release(core, vol.bdev(), r.lock);
            }
            if !t.aborted {
                port.done.push_back(match resp {
                    Some(k) => k.into_response(t.tag),
                    None => ScsiResponse::good(t.tag),
                });
            }
        };
        if t.aborted && r.stage != Stage::Writing {
            return fail(self, core, slot, None);
        }
        match r.stage {
            Stage::Locking => {
                // The range is ours now.
                self.rmw_io(core, me, slot);
            }
            Stage::Reading => {
                let Some(mut cur) = ev.buf.filter(|_| ev.status == 0) else {
                    return fail(self, core, slot, Some(ScsiResponseKind::Check(MEDIUM_ERROR_UNRECOVERED)));
                };
                let data = r.data.as_ref().map(|d| d.as_slice()).unwrap_or(&[]);
                match r.op {
                    RmwOp::CompareAndWrite => {
                        if let Some(off) = first_difference(&cur[..len], &data[..len]) {
                            return fail(self, core, slot, Some(ScsiResponseKind::Check(Sense::miscompare(off as u32))));
                        }
                        cur[..len].copy_from_slice(&data[len..2 * len]);
                    }
                    RmwOp::OrWrite => {
                        for (c, d) in cur[..len].iter_mut().zip(&data[..len]) {
                            *c |= *d;
                        }
                    }
                    RmwOp::WriteAtomic => unreachable!("atomic writes do not read"),
                }
                r.stage = Stage::Writing;
                let req = IoRequest { op: IoOp::Write, offset_blocks: r.lba, num_blocks: r.blocks, buf: Some(cur), fua: r.fua, owner: me, tag: slot as u64 };
                if let Err((_, why)) = vol.submit_locked(core, &self.initiator, req) {
                    fail(self, core, slot, Some(super::denied(why)));
                }
            }
            Stage::Writing => {
                let status = ev.status;
                let t = self.tasks.remove(slot);
                if let Kind::Rmw(r) = &t.kind {
                    vol.locks.release(core, vol.bdev(), r.lock);
                }
                if !t.aborted {
                    self.done.push_back(io_result(t.tag, status, true));
                }
            }
        }
    }

    /// Issue the first I/O of a read-modify-write once its range is held.
    pub(super) fn rmw_io(&mut self, core: &mut Core, me: HandlerRef, slot: usize) {
        let Some(t) = self.tasks.get_mut(slot) else { return };
        let Kind::Rmw(r) = &mut t.kind else { return };
        let vol = self.luns.luns[t.lun as usize].volume.clone();
        let bs = vol.block_size() as usize;
        let req = if r.op == RmwOp::WriteAtomic {
            r.stage = Stage::Writing;
            IoRequest { op: IoOp::Write, offset_blocks: r.lba, num_blocks: r.blocks, buf: r.data.take(), fua: r.fua, owner: me, tag: slot as u64 }
        } else {
            r.stage = Stage::Reading;
            // The bdev overwrites all of it before it is compared or merged.
            let buf = IoBuf::for_overwrite(r.blocks as usize * bs);
            IoRequest { op: IoOp::Read, offset_blocks: r.lba, num_blocks: r.blocks, buf: Some(buf), fua: false, owner: me, tag: slot as u64 }
        };
        if let Err((_, why)) = vol.submit_locked(core, &self.initiator, req) {
            let t = self.tasks.remove(slot);
            if let Kind::Rmw(r) = &t.kind {
                vol.locks.release(core, vol.bdev(), r.lock);
            }
            if !t.aborted {
                self.done.push_back(super::denied(why).into_response(t.tag));
            }
        }
    }
}

impl Drop for ScsiPort {
    /// A connection closed with read-modify-write commands in flight: their completions will
    /// never reach this port, so free their ranges now or every later write to them would park
    /// forever.
    fn drop(&mut self) {
        for (_, t) in self.tasks.iter() {
            if let Kind::Rmw(r) = &t.kind {
                if let Some(l) = self.luns.luns.get(t.lun as usize) {
                    l.volume.locks.release_detached(&r.reactors, l.volume.bdev(), r.lock);
                }
            }
        }
    }
}

fn io_result(tag: u32, status: i32, write: bool) -> ScsiResponse {
    if status == 0 {
        ScsiResponse::good(tag)
    } else if write {
        ScsiResponse::check(tag, WRITE_ERROR)
    } else {
        ScsiResponse::check(tag, MEDIUM_ERROR_UNRECOVERED)
    }
}

