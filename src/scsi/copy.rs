//! The EXTENDED COPY engine: runs a parsed copy list (`xcopy`) as a chain of chunk reads and
//! writes through the volumes, one task in the port.

use super::sense::{Sense, PARAM_LIST_LENGTH_ERROR};
use super::task::{Kind, Task};
use super::xcopy::{copy_aborted, parse, CopyJob, MAX_DESCRIPTOR_LIST_LENGTH};
use super::{ScsiCommand, ScsiPort, ScsiResponse};
use crate::bdev::{IoOp, IoRequest};
use crate::reactor::{Core, HandlerRef, IoBuf, IoEvent};

/// Chunk of one read/write step, bytes.
const CHUNK_BYTES: u64 = 1 << 20;

impl ScsiPort {
    /// EXTENDED COPY(LID1) (SPC-4 6.4): parse everything first, then copy segment by segment.
    pub(super) fn extended_copy(&mut self, core: &mut Core, me: HandlerRef, idx: usize, cmd: ScsiCommand) {
        let tag = cmd.task_tag;
        if cmd.cdb[1] & 0x1f != 0 {
            return self.push(tag, Err(Sense::invalid_cdb_field(1, Some(4)))); // LID4 not supported
        }
        let plen = super::cdb::be(&cmd.cdb, 10, 4) as usize;
        if plen == 0 {
            return self.push(tag, Ok(None));
        }
        // No list we accept is longer (no inline data): refuse before looking for the data
        // (SPC-4 6.4: PARAMETER LIST LENGTH ERROR).
        if plen > 16 + MAX_DESCRIPTOR_LIST_LENGTH as usize {
            return self.push(tag, Err(PARAM_LIST_LENGTH_ERROR));
        }
        let data = match &cmd.data_out {
            Some(d) if d.len() >= plen => &d[..plen],
            _ => return self.push(tag, Err(super::sense::INVALID_FIELD_IN_IU)),
        };
        let list = match parse(data, &self.luns) {
            Ok(l) => l,
            Err(s) => return self.push(tag, Err(s)),
        };
        if list.segments.iter().any(|s| self.luns.luns[s.dst].write_protected()) {
            return self.push(tag, Err(super::sense::WRITE_PROTECTED));
        }
        let job = CopyJob { list, lun: idx, seg: 0, done: 0, chunk: 0, writing: false, bytes: 0 };
        let slot = self.tasks.insert(Task { tag, lun: idx as u32, aborted: false, kind: Kind::Copy(Box::new(job)) });
        self.copy_next(core, me, slot, None);
    }

    /// Read the next chunk, or finish when every segment is copied.
    fn copy_next(&mut self, core: &mut Core, me: HandlerRef, slot: usize, buf: Option<IoBuf>) {
        let Some(Task { kind: Kind::Copy(job), .. }) = self.tasks.get_mut(slot) else { return };
        while job.seg < job.list.segments.len() && job.done >= job.list.segments[job.seg].blocks {
            job.seg += 1;
            job.done = 0;
        }
        let Some(seg) = job.list.segments.get(job.seg).cloned() else {
            let t = self.tasks.remove(slot);
            let Kind::Copy(job) = t.kind else { return };
            if job.list.keep {
                self.record_copy(job.lun, job.list.list_id, job.list.segments.len() as u16, job.bytes);
            }
            if !t.aborted {
                self.done.push_back(ScsiResponse::good(t.tag));
            }
            return;
        };
        let vol = self.luns.luns[seg.src].volume.clone();
        let bs = vol.block_size() as u64;
        job.chunk = (seg.blocks - job.done).min((CHUNK_BYTES / bs).max(1));
        job.writing = false;
        let len = (job.chunk * bs) as usize;
        let buf = match buf {
            Some(mut b) if b.capacity() >= len => {
                b.set_len(len);
                b
            }
            // The source read overwrites all of it before it is written anywhere.
            _ => IoBuf::for_overwrite(len),
        };
        let req = IoRequest { op: IoOp::Read, offset_blocks: seg.src_lba + job.done, num_blocks: job.chunk, buf: Some(buf), fua: false, owner: me, tag: slot as u64 };
        if let Err((_, why)) = vol.submit(core, &self.initiator, req) {
            let t = self.tasks.remove(slot);
            if !t.aborted {
                self.done.push_back(super::denied(why).into_response(t.tag));
            }
        }
    }

    /// A chunk read or write of a copy completed.
    pub(super) fn copy_advance(&mut self, core: &mut Core, me: HandlerRef, slot: usize, ev: IoEvent) {
        let Some(t) = self.tasks.get_mut(slot) else { return };
        let Kind::Copy(job) = &mut t.kind else { return };
        if ev.status != 0 || t.aborted {
            let t = self.tasks.remove(slot);
            if !t.aborted {
                // The copy manager lost a read or write to the medium (SPC-4 6.4.5).
                self.done.push_back(ScsiResponse::check(t.tag, copy_aborted(0x11, 0x00)));
            }
            return;
        }
        let seg = job.list.segments[job.seg].clone();
        if job.writing {
            job.done += job.chunk;
            job.bytes += job.chunk * self.luns.luns[seg.dst].volume.block_size() as u64;
            return self.copy_next(core, me, slot, ev.buf);
        }
        job.writing = true;
        let vol = self.luns.luns[seg.dst].volume.clone();
        let volatile = vol.volatile_write_cache();
        let fua = volatile && !self.luns.luns[seg.dst].mode.wce_given(volatile);
        let req = IoRequest { op: IoOp::Write, offset_blocks: seg.dst_lba + job.done, num_blocks: job.chunk, buf: ev.buf, fua, owner: me, tag: slot as u64 };
        if let Err((_, why)) = vol.submit(core, &self.initiator, req) {
            let t = self.tasks.remove(slot);
            if !t.aborted {
                self.done.push_back(super::denied(why).into_response(t.tag));
            }
        }
    }
}

