//! Block commands (SBC-3): READ/WRITE 6/10/12/16, VERIFY, WRITE AND VERIFY, WRITE SAME, UNMAP,
//! COMPARE AND WRITE, ORWRITE, WRITE ATOMIC, SYNCHRONIZE CACHE, PRE-FETCH, READ CAPACITY, GET LBA
//! STATUS, START STOP UNIT, PREVENT ALLOW MEDIUM REMOVAL.
//!
//! READ and WRITE allocate nothing but the pooled data buffer and a slab slot.

use std::sync::Arc;

use super::cdb::{be, decode_block, in_range, BlockCdb};
use super::sense::{Sense, INVALID_FIELD_IN_IU, LBA_OUT_OF_RANGE, PARAM_LIST_LENGTH_ERROR, WRITE_PROTECTED};
use super::task::{Kind, Rmw, RmwOp, Stage, Task};
use super::vpd::limits;
use super::{denied, Lun, ScsiCommand, ScsiPort, ScsiResponse};
use crate::bdev::{IoOp, IoRequest};
use crate::reactor::{Core, HandlerRef, IoBuf};
use crate::volume::range_lock::Acquired;

/// Commands that walk a range larger than their data transfer (VERIFY, WRITE SAME with a
/// pattern) do it in steps of this many bytes through one buffer.
const CHUNK_BYTES: u64 = 1 << 20;

/// Blocks of one such step (at least one).
fn chunk_blocks(bs: usize) -> u64 {
    (CHUNK_BYTES / bs as u64).max(1)
}

/// Byte of the TRANSFER LENGTH field (for the field pointer).
fn len_byte(op: u8) -> u16 {
    match op >> 5 {
        0 => 4,
        1 | 2 => 7,
        5 => 6,
        _ => 10,
    }
}

/// Checks shared by every block command: no protection information, LBA range, transfer size.
fn check_block(lun: &Lun, op: u8, b: &BlockCdb) -> Result<(), Sense> {
    if b.protect() != 0 && op >> 5 != 0 {
        // We format without protection information (SBC-3 4.22): any *PROTECT field is invalid.
        return Err(Sense::invalid_cdb_field(1, Some(7)));
    }
    if !in_range(b.lba, b.blocks as u64, lun.volume.num_blocks()) {
        return Err(LBA_OUT_OF_RANGE);
    }
    if b.blocks > limits::max_transfer_blocks(lun.volume.block_size()) {
        return Err(Sense::invalid_cdb_field(len_byte(op), None));
    }
    Ok(())
}

/// Whether a write must reach stable storage before status: FUA, or the volume caches writes
/// (or a layout guard's written-block records) while the initiator turned write caching off.
fn needs_fua(lun: &Lun, fua: bool) -> bool {
    fua || {
        let v = lun.volume.volatile_write_cache();
        v && !lun.mode.wce_given(v)
    }
}

impl ScsiPort {
    /// Park `kind` in the slab and submit `req` tagged with its slot.
    fn start_io(&mut self, core: &mut Core, idx: usize, lun: &Lun, tag: u32, kind: Kind, mut req: IoRequest) {
        let slot = self.tasks.insert(Task { tag, lun: idx as u32, aborted: false, kind });
        req.tag = slot as u64;
        if let Err((_, why)) = lun.volume.submit(core, &self.initiator, req) {
            self.tasks.remove(slot);
            self.done.push_back(denied(why).into_response(tag));
        }
    }

    fn fail(&mut self, tag: u32, s: Sense) {
        self.done.push_back(ScsiResponse::check(tag, s));
    }

    /// READ(6/10/12/16) (SBC-3 5.8-5.11).
    pub(super) fn read(&mut self, core: &mut Core, me: HandlerRef, idx: usize, lun: &Arc<Lun>, cmd: ScsiCommand) {
        let tag = cmd.task_tag;
        let b = match decode_block(&cmd.cdb).and_then(|b| check_block(lun, cmd.cdb[0], &b).map(|_| b)) {
            Ok(b) => b,
            Err(s) => return self.fail(tag, s),
        };
        if b.blocks == 0 {
            return self.done.push_back(ScsiResponse::good(tag));
        }
        let bs = lun.volume.block_size();
        let len = b.blocks * bs;
        // Read only the blocks the initiator will take: the transport sends at most EDTL bytes
        // and reports the rest as overflow (RFC 7143 11.4.5.1), so a CDB asking for more than
        // EDTL must not size the buffer (the range was checked whole above).
        let blocks = len.min(cmd.expected_len).div_ceil(bs);
        if blocks == 0 {
            return self.done.push_back(ScsiResponse { data_len: len, ..ScsiResponse::good(tag) });
        }
        let req = IoRequest {
            op: IoOp::Read,
            offset_blocks: b.lba,
            num_blocks: blocks as u64,
            // The bdev overwrites all of it; on an error it is dropped unsent.
            buf: Some(IoBuf::for_overwrite((blocks * bs) as usize)),
            fua: false,
            owner: me,
            tag: 0,
        };
        self.start_io(core, idx, lun, tag, Kind::Read { len }, req);
    }

    /// WRITE(6/10/12/16) and WRITE AND VERIFY(10/12/16) (SBC-3 5.32-5.39). The verification of
    /// WRITE AND VERIFY is the write reaching the medium (FUA): what we wrote is the Data-Out.
    pub(super) fn write(&mut self, core: &mut Core, me: HandlerRef, idx: usize, lun: &Arc<Lun>, cmd: ScsiCommand) {
        let tag = cmd.task_tag;
        let op = cmd.cdb[0];
        let verify = matches!(op, 0x2e | 0xae | 0x8e);
        let b = match decode_block(&cmd.cdb).and_then(|b| check_block(lun, op, &b).map(|_| b)) {
            Ok(b) => b,
            Err(s) => return self.fail(tag, s),
        };
        if verify && (b.flags >> 1) & 0x03 > 1 {
            return self.fail(tag, Sense::invalid_cdb_field(1, Some(2))); // BYTCHK 10b/11b
        }
        if b.blocks == 0 {
            return self.done.push_back(ScsiResponse::good(tag));
        }
        if lun.write_protected() {
            return self.fail(tag, WRITE_PROTECTED);
        }
        let len = (b.blocks * lun.volume.block_size()) as usize;
        let buf = match cmd.data_out {
            Some(d) if d.len() >= len => d,
            _ => return self.fail(tag, INVALID_FIELD_IN_IU),
        };
        let fua = verify || needs_fua(lun, b.fua());
        let req = IoRequest { op: IoOp::Write, offset_blocks: b.lba, num_blocks: b.blocks as u64, buf: Some(buf), fua, owner: me, tag: 0 };
        self.start_io(core, idx, lun, tag, Kind::Single { write: true }, req);
    }

    /// VERIFY(10/12/16) (SBC-3 5.29-5.31; BYTCHK as in SBC-4 5.33): 00b reads the blocks,
    /// 01b compares them with the Data-Out, 11b compares each with one block of Data-Out.
    pub(super) fn verify(&mut self, core: &mut Core, me: HandlerRef, idx: usize, lun: &Arc<Lun>, cmd: ScsiCommand) {
        let tag = cmd.task_tag;
        let b = match decode_block(&cmd.cdb).and_then(|b| check_block(lun, cmd.cdb[0], &b).map(|_| b)) {
            Ok(b) => b,
            Err(s) => return self.fail(tag, s),
        };
        let bytchk = (b.flags >> 1) & 0x03;
        if bytchk == 2 {
            return self.fail(tag, Sense::invalid_cdb_field(1, Some(2)));
        }
        if b.blocks == 0 {
            return self.done.push_back(ScsiResponse::good(tag));
        }
        let bs = lun.volume.block_size() as usize;
        let len = b.blocks as usize * bs;
        let data = match bytchk {
            0 => None,
            _ => {
                let need = if bytchk == 1 { len } else { bs };
                match cmd.data_out {
                    Some(mut d) if d.len() >= need => {
                        d.set_len(need);
                        Some(d)
                    }
                    _ => return self.fail(tag, INVALID_FIELD_IN_IU),
                }
            }
        };
        // The medium is read in chunks through one buffer: VERIFY moves no Data-In, so nothing
        // the initiator declared bounds a whole-range buffer (a 65536-block VERIFY would hold
        // up to 256 MiB for a command that transfers at most one block).
        let chunk = (b.blocks as u64).min(chunk_blocks(bs));
        let kind = Kind::Verify { data, repeat: bytchk == 3, start: b.lba, next: b.lba, end: b.lba + b.blocks as u64, chunk };
        // The bdev overwrites it; it is only compared, never sent.
        let buf = IoBuf::for_overwrite(chunk as usize * bs);
        let req = IoRequest { op: IoOp::Read, offset_blocks: b.lba, num_blocks: chunk, buf: Some(buf), fua: false, owner: me, tag: 0 };
        self.start_io(core, idx, lun, tag, kind, req);
    }

    /// WRITE SAME(10/16) (SBC-3 5.40, 5.41; NDOB from SBC-4). UNMAP=1 unmaps the range when the
    /// bdev reads unmapped blocks as zeros (we advertise LBPWS/LBPWS10); zero data (or NDOB)
    /// becomes one WriteZeroes; any other pattern is written in chunks from one buffer.
    pub(super) fn write_same(&mut self, core: &mut Core, me: HandlerRef, idx: usize, lun: &Arc<Lun>, cmd: ScsiCommand) {
        let tag = cmd.task_tag;
        let op = cmd.cdb[0];
        let mut b = match decode_block(&cmd.cdb) {
            Ok(b) => b,
            Err(s) => return self.fail(tag, s),
        };
        let cap = lun.volume.num_blocks();
        if b.protect() != 0 {
            return self.fail(tag, Sense::invalid_cdb_field(1, Some(7)));
        }
        if b.flags & 0x10 != 0 {
            return self.fail(tag, Sense::invalid_cdb_field(1, Some(4))); // ANCHOR: ANC_SUP=0
        }
        let ndob = op == 0x93 && b.flags & 0x01 != 0;
        let unmap = b.flags & 0x08 != 0;
        if b.lba > cap {
            return self.fail(tag, LBA_OUT_OF_RANGE);
        }
        // NUMBER OF LOGICAL BLOCKS 0 means "to the last LBA" (WSNZ=0 in VPD 0xB0).
        let n = if b.blocks == 0 { cap - b.lba } else { b.blocks as u64 };
        if !in_range(b.lba, n, cap) {
            return self.fail(tag, LBA_OUT_OF_RANGE);
        }
        if n > limits::MAX_WRITE_SAME_BLOCKS {
            return self.fail(tag, Sense::invalid_cdb_field(len_byte(op), None));
        }
        let bs = lun.volume.block_size() as usize;
        let data = cmd.data_out.filter(|d| !d.is_empty());
        let ok = match &data {
            None => ndob,
            Some(d) => !ndob && d.len() == bs,
        };
        if !ok {
            return self.fail(tag, INVALID_FIELD_IN_IU);
        }
        if lun.write_protected() {
            return self.fail(tag, WRITE_PROTECTED);
        }
        if n == 0 {
            return self.done.push_back(ScsiResponse::good(tag));
        }
        b.blocks = 0;
        let zero = data.as_ref().is_none_or(|d| d.iter().all(|&x| x == 0));
        let fua = needs_fua(lun, false);
        let single = |op| IoRequest { op, offset_blocks: b.lba, num_blocks: n, buf: None, fua, owner: me, tag: 0 };
        // Unmapping is only a valid way to "write" the pattern when unmapped blocks read back
        // as zeros (LBPRZ); libiscsi checks for zeros after WRITE SAME with UNMAP and any data.
        let unmap = unmap && lun.volume.bdev().info().unmap_zeroes;
        if unmap || zero {
            let req = single(if unmap { IoOp::Unmap } else { IoOp::WriteZeroes });
            return self.start_io(core, idx, lun, tag, Kind::Single { write: true }, req);
        }
        let pattern = data.unwrap_or_else(|| IoBuf::zeroed(bs));
        let chunk = n.min(chunk_blocks(bs));
        // Every byte is written by the pattern copy below.
        let mut buf = IoBuf::for_overwrite(chunk as usize * bs);
        for blk in buf.chunks_mut(bs) {
            blk.copy_from_slice(&pattern[..bs]);
        }
        let req = IoRequest { op: IoOp::Write, offset_blocks: b.lba, num_blocks: chunk, buf: Some(buf), fua, owner: me, tag: 0 };
        let kind = Kind::WriteSame { next: b.lba + chunk, end: b.lba + n, chunk, fua };
        self.start_io(core, idx, lun, tag, kind, req);
    }

    /// UNMAP (SBC-3 5.28): validate the whole parameter list, then unmap every descriptor.
    pub(super) fn unmap(&mut self, core: &mut Core, me: HandlerRef, idx: usize, lun: &Arc<Lun>, cmd: ScsiCommand) {
        let tag = cmd.task_tag;
        if cmd.cdb[1] & 0x01 != 0 {
            return self.fail(tag, Sense::invalid_cdb_field(1, Some(0))); // ANCHOR
        }
        let plen = be(&cmd.cdb, 7, 2) as usize;
        if plen == 0 {
            return self.done.push_back(ScsiResponse::good(tag));
        }
        if plen < 8 {
            return self.fail(tag, PARAM_LIST_LENGTH_ERROR);
        }
        let data = match &cmd.data_out {
            Some(d) if d.len() >= plen => &d[..plen],
            _ => return self.fail(tag, INVALID_FIELD_IN_IU),
        };
        let ranges = match parse_unmap(data, lun.volume.num_blocks()) {
            Ok(r) => r,
            Err(s) => return self.fail(tag, s),
        };
        if lun.write_protected() {
            return self.fail(tag, WRITE_PROTECTED);
        }
        let n = ranges.iter().filter(|r| r.1 > 0).count() as u32;
        if n == 0 {
            return self.done.push_back(ScsiResponse::good(tag));
        }
        let slot = self.tasks.insert(Task { tag, lun: idx as u32, aborted: false, kind: Kind::Multi { outstanding: n, error: None } });
        for (lba, count) in ranges.into_iter().filter(|r| r.1 > 0) {
            let req = IoRequest { op: IoOp::Unmap, offset_blocks: lba, num_blocks: count, buf: None, fua: false, owner: me, tag: slot as u64 };
            if let Err((_, why)) = lun.volume.submit(core, &self.initiator, req) {
                // Count it as completed with the refusal; the last completion answers.
                let ev = crate::reactor::IoEvent { tag: slot as u64, status: -libc::EPERM, buf: None };
                if let Some(Task { kind: Kind::Multi { error, .. }, .. }) = self.tasks.get_mut(slot) {
                    if error.is_none() {
                        *error = Some(match denied(why) {
                            super::ScsiResponseKind::Check(s) => s,
                            super::ScsiResponseKind::Status(_) => super::sense::WRITE_ERROR,
                        });
                    }
                }
                self.advance(core, me, ev);
            }
        }
    }

    /// COMPARE AND WRITE (SBC-3 5.2), ORWRITE(16) (SBC-3 5.10), WRITE ATOMIC(16) (SBC-4 5.48):
    /// take the range lock, then read-modify-write (or just write) under it.
    pub(super) fn rmw_start(&mut self, core: &mut Core, me: HandlerRef, idx: usize, lun: &Arc<Lun>, cmd: ScsiCommand) {
        let tag = cmd.task_tag;
        let op = cmd.cdb[0];
        let b = match decode_block(&cmd.cdb).and_then(|b| check_block(lun, op, &b).map(|_| b)) {
            Ok(b) => b,
            Err(s) => return self.fail(tag, s),
        };
        let (rmw, max, max_byte) = match op {
            0x89 => (RmwOp::CompareAndWrite, limits::MAX_CAW_BLOCKS, 13),
            0x8b => (RmwOp::OrWrite, u32::MAX, 10),
            _ => (RmwOp::WriteAtomic, limits::MAX_ATOMIC_BLOCKS.min(limits::max_transfer_blocks(lun.volume.block_size())), 12),
        };
        if b.blocks > max {
            return self.fail(tag, Sense::invalid_cdb_field(max_byte, None));
        }
        let len = (b.blocks * lun.volume.block_size()) as usize;
        let data = cmd.data_out.filter(|d| !d.is_empty());
        if b.blocks == 0 {
            // Nothing to do; but a CAW carrying data for zero blocks has a bad NUMBER OF LOGICAL
            // BLOCKS (it is what a 256-block request looks like in the one-byte field).
            return match data {
                Some(_) if rmw == RmwOp::CompareAndWrite => self.fail(tag, Sense::invalid_cdb_field(13, None)),
                _ => self.done.push_back(ScsiResponse::good(tag)),
            };
        }
        let need = if rmw == RmwOp::CompareAndWrite { 2 * len } else { len };
        let data = match data {
            // COMPARE AND WRITE needs exactly verify + write data (SBC-3 5.2).
            Some(d) if d.len() == need || (rmw != RmwOp::CompareAndWrite && d.len() >= need) => d,
            _ => return self.fail(tag, INVALID_FIELD_IN_IU),
        };
        if lun.write_protected() {
            return self.fail(tag, WRITE_PROTECTED);
        }
        let fua = needs_fua(lun, b.fua());
        let entry = self.tasks.vacant_entry();
        let slot = entry.key();
        let acq = lun.volume.locks.acquire(core, b.lba, b.blocks as u64, me, slot as u64);
        let lock = match acq {
            Acquired::Now(id) | Acquired::Later(id) => id,
        };
        let r = Rmw { op: rmw, stage: Stage::Locking, lock, lba: b.lba, blocks: b.blocks as u64, data: Some(data), fua, reactors: core.reactors().clone() };
        entry.insert(Task { tag, lun: idx as u32, aborted: false, kind: Kind::Rmw(r) });
        if matches!(acq, Acquired::Now(_)) {
            self.rmw_io(core, me, slot);
        }
    }

    /// SYNCHRONIZE CACHE(10/16) (SBC-3 5.22, 5.23): a flush of the range (0 blocks = to the end).
    pub(super) fn sync_cache(&mut self, core: &mut Core, me: HandlerRef, idx: usize, lun: &Arc<Lun>, cmd: ScsiCommand) {
        let tag = cmd.task_tag;
        let b = match decode_block(&cmd.cdb) {
            Ok(b) => b,
            Err(s) => return self.fail(tag, s),
        };
        let cap = lun.volume.num_blocks();
        let n = if b.blocks == 0 { cap.saturating_sub(b.lba) } else { b.blocks as u64 };
        if b.lba > cap || !in_range(b.lba, n, cap) {
            return self.fail(tag, LBA_OUT_OF_RANGE);
        }
        let req = IoRequest { op: IoOp::Flush, offset_blocks: b.lba, num_blocks: n, buf: None, fua: false, owner: me, tag: 0 };
        self.start_io(core, idx, lun, tag, Kind::Single { write: true }, req);
    }
}

/// Parse an UNMAP parameter list (SBC-3 5.28.2) into (lba, count) ranges, checking every
/// descriptor against the capacity and the VPD 0xB0 limits before anything is unmapped.
pub fn parse_unmap(data: &[u8], capacity: u64) -> Result<Vec<(u64, u64)>, Sense> {
    if data.len() < 8 {
        return Err(PARAM_LIST_LENGTH_ERROR);
    }
    let bdl = u16::from_be_bytes([data[2], data[3]]) as usize;
    // A length that is not a multiple of 16 drops the partial descriptor (SBC-3 5.28.2).
    let avail = bdl.min(data.len() - 8) / 16;
    if avail > limits::MAX_UNMAP_DESCRIPTORS as usize {
        return Err(Sense::invalid_param_field(2, None));
    }
    let mut out = Vec::with_capacity(avail);
    for i in 0..avail {
        let d = &data[8 + 16 * i..24 + 16 * i];
        let lba = u64::from_be_bytes(d[0..8].try_into().unwrap_or([0; 8]));
        let count = u32::from_be_bytes(d[8..12].try_into().unwrap_or([0; 4])) as u64;
        if count > limits::MAX_UNMAP_BLOCKS as u64 {
            return Err(Sense::invalid_param_field((8 + 16 * i + 8) as u16, None));
        }
        if !in_range(lba, count, capacity) {
            return Err(LBA_OUT_OF_RANGE);
        }
        out.push((lba, count));
    }
    Ok(out)
}

type Answer = Result<Option<Vec<u8>>, Sense>;

/// PRE-FETCH(10/16) (SBC-3 5.6, 5.7): the volume has no cache to load; GOOD after range checks.
pub fn prefetch(lun: &Lun, cmd: &ScsiCommand) -> Answer {
    let b = decode_block(&cmd.cdb)?;
    if !in_range(b.lba, b.blocks as u64, lun.volume.num_blocks()) {
        return Err(LBA_OUT_OF_RANGE);
    }
    Ok(None)
}

/// START STOP UNIT (SBC-3 5.25). A volume has no medium to load or eject and no power states
/// to enter: the command is accepted and changes nothing, so media access keeps working (what
/// initiators expect from a non-removable virtual disk).
pub fn start_stop(_lun: &Lun, cmd: &ScsiCommand) -> Answer {
    if cmd.cdb[3] & 0xf0 != 0 {
        return Err(Sense::invalid_cdb_field(3, Some(7)));
    }
    Ok(None)
}

/// PREVENT ALLOW MEDIUM REMOVAL (SBC-3 5.5): only 00b/01b are defined; nothing is removable.
pub fn prevent_allow(cmd: &ScsiCommand) -> Answer {
    if cmd.cdb[4] & 0x03 > 1 {
        return Err(Sense::invalid_cdb_field(4, Some(1)));
    }
    Ok(None)
}

/// READ DEFECT DATA(10)/(12) (SBC-3 5.12, 5.13): a volume has no grown or primary defects, so
/// both lists are reported valid and empty, in the format asked for.
pub fn read_defect_data(cmd: &ScsiCommand) -> Result<Vec<u8>, Sense> {
    let c = &cmd.cdb;
    let (flags, alloc) = if c[0] == 0x37 { (c[2], be(c, 7, 2)) } else { (c[1], be(c, 6, 4)) };
    let format = flags & 0x07;
    // PLISTV/GLISTV echo what was requested (bits 4 and 3), with the format.
    let b1 = (flags & 0x18) | format;
    let mut d = if c[0] == 0x37 { vec![0, b1, 0, 0] } else { vec![0, b1, 0, 0, 0, 0, 0, 0] };
    d.truncate(alloc as usize);
    Ok(d)
}

/// READ CAPACITY(10) (SBC-3 5.15).
pub fn read_capacity10(lun: &Lun, cmd: &ScsiCommand) -> Result<Vec<u8>, Sense> {
    if cmd.cdb[8] & 0x01 == 0 && be(&cmd.cdb, 2, 4) != 0 {
        return Err(Sense::invalid_cdb_field(2, None)); // LBA without PMI
    }
    let last = lun.volume.num_blocks() - 1;
    let mut d = vec![0u8; 8];
    d[0..4].copy_from_slice(&(last.min(0xffff_ffff) as u32).to_be_bytes());
    d[4..8].copy_from_slice(&lun.volume.block_size().to_be_bytes());
    Ok(d)
}

/// READ CAPACITY(16) (SBC-3 5.16): thin provisioned (LBPME), LBPRZ per bdev, no protection.
pub fn read_capacity16(lun: &Lun, cmd: &ScsiCommand) -> Result<Vec<u8>, Sense> {
    let info = lun.volume.bdev().info();
    let mut d = vec![0u8; 32];
    d[0..8].copy_from_slice(&(info.num_blocks - 1).to_be_bytes());
    d[8..12].copy_from_slice(&info.block_size.to_be_bytes());
    d[13] = limits::LBPPBE;
    d[14] = 0x80 | if info.unmap_zeroes { 0x40 } else { 0 };
    d.truncate(be(&cmd.cdb, 10, 4) as usize);
    Ok(d)
}

/// GET LBA STATUS (SBC-3 5.4): one descriptor from the requested LBA to the end. Every block is
/// reported mapped: the bdevs do not track deallocation, and "mapped" is always a correct answer
/// for a block that reads back its data (SBC-3 4.7.2: a thin-provisioned device may report any
/// LBA as mapped).
pub fn get_lba_status(lun: &Lun, cmd: &ScsiCommand) -> Result<Vec<u8>, Sense> {
    let lba = be(&cmd.cdb, 2, 8);
    let alloc = be(&cmd.cdb, 10, 4) as usize;
    let cap = lun.volume.num_blocks();
    if lba >= cap {
        return Err(LBA_OUT_OF_RANGE);
    }
    let mut d = vec![0u8; 24];
    d[0..4].copy_from_slice(&20u32.to_be_bytes());
    d[8..16].copy_from_slice(&lba.to_be_bytes());
    d[16..20].copy_from_slice(&((cap - lba).min(u32::MAX as u64) as u32).to_be_bytes());
    d[20] = 0; // provisioning status: mapped
    d.truncate(alloc);
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(descs: &[(u64, u32)]) -> Vec<u8> {
        let mut v = vec![0u8; 8];
        for (lba, n) in descs {
            v.extend_from_slice(&lba.to_be_bytes());
            v.extend_from_slice(&n.to_be_bytes());
            v.extend_from_slice(&[0; 4]);
        }
        let bdl = (v.len() - 8) as u16;
        v[0..2].copy_from_slice(&(bdl + 6).to_be_bytes());
        v[2..4].copy_from_slice(&bdl.to_be_bytes());
        v
    }

    #[test]
    fn unmap_list_checks() {
        assert_eq!(parse_unmap(&list(&[(0, 8), (100, 0)]), 1000).unwrap(), vec![(0, 8), (100, 0)]);
        assert_eq!(parse_unmap(&list(&[(999, 2)]), 1000), Err(LBA_OUT_OF_RANGE));
        assert_eq!(parse_unmap(&list(&[(u64::MAX, 2)]), 1000), Err(LBA_OUT_OF_RANGE));
        assert_eq!(parse_unmap(&[0; 4], 1000), Err(PARAM_LIST_LENGTH_ERROR));
        let e = parse_unmap(&list(&[(0, limits::MAX_UNMAP_BLOCKS + 1)]), u64::MAX).unwrap_err();
        assert_eq!(e.field, Some((false, 16, None)));
        // A block descriptor data length of 20 keeps one whole descriptor.
        let mut l = list(&[(1, 1), (2, 2)]);
        l[2..4].copy_from_slice(&20u16.to_be_bytes());
        assert_eq!(parse_unmap(&l, 1000).unwrap(), vec![(1, 1)]);
        let many: Vec<(u64, u32)> = (0..=limits::MAX_UNMAP_DESCRIPTORS as u64).map(|i| (i, 1)).collect();
        assert!(parse_unmap(&list(&many), 1 << 20).is_err());
    }
}
