//! NVM command set I/O on a queue pair (Linux nvmet's io-cmd-bdev.c): plan the command with
//! `nvme::io`, submit it to the namespace's volume, which decides access (reservations, layout
//! guard) for every protocol alike.

use super::qpair::{Job, QPair};
use super::transport::Transport;
use super::SubType;
use crate::bdev::{IoOp, IoRequest};
use crate::nvme::ana::AnaState;
use crate::nvme::io::{self as nio, IoKind};
use crate::nvme::reservation as nv;
use crate::nvme::spec::{io as iop, sc, Sqe, Status};
use crate::reactor::{Core, IoBuf};
use crate::volume::Denied;

/// The volume's refusal in NVMe terms (one mapping, in the command set).
pub(super) fn denied_status(d: Denied) -> Status {
    match d {
        // Path errors are retried on another path: no DNR.
        Denied::PathInaccessible(s) => AnaState::from(s).io_status().unwrap_or(Status::generic(sc::INTERNAL_ERROR)),
        d => nv_status(nv::denied_status(d)),
    }
}

/// The transport status of a reservation-layer status.
pub(super) fn nv_status(s: nv::Status) -> Status {
    if s.is_success() {
        Status::SUCCESS
    } else {
        Status { sct: s.sct, sc: s.sc, dnr: true }
    }
}

fn is_resv_opcode(opc: u8) -> bool {
    matches!(opc, nv::OPC_RESERVATION_REGISTER | nv::OPC_RESERVATION_REPORT | nv::OPC_RESERVATION_ACQUIRE | nv::OPC_RESERVATION_RELEASE)
}

impl QPair {
    pub(super) fn io<T: Transport>(&mut self, core: &mut Core, tx: &mut T, idx: usize, sqe: Sqe) {
        if self.ctrlr.as_ref().is_some_and(|c| c.sub.subtype == SubType::Discovery) {
            return self.respond(core, tx, idx, Status::generic(sc::INVALID_OPCODE), 0, 0);
        }
        if sqe.opcode() == iop::FLUSH && sqe.nsid() == 0xffff_ffff {
            // Flush every namespace.
            self.refresh_ns();
            if let Some(st) = self.path_status_any() {
                return self.respond(core, tx, idx, st, 0, 0);
            }
            for i in 0..self.ns_cache.len() {
                self.submit(core, idx, i, IoOp::Flush, 0, 0, None, false);
            }
            return self.maybe_finish(core, tx, idx);
        }
        let Some(ni) = self.ns_index(sqe.nsid()) else {
            return self.respond(core, tx, idx, Status::generic(sc::INVALID_NAMESPACE), 0, 0);
        };
        // ANA (Base 2.0 8.1.3): no I/O command runs on an inaccessible path.
        if let Some(st) = self.ctrlr.as_ref().and_then(|c| super::ana::io_status(c, &self.ns_cache[ni])) {
            return self.respond(core, tx, idx, st, 0, 0);
        }
        if is_resv_opcode(sqe.opcode()) {
            return self.reservation(core, tx, idx, sqe, ni);
        }
        let (bs, nblocks) = {
            let v = &self.ns_cache[ni].volume;
            (v.block_size(), v.num_blocks())
        };
        let plan = match nio::plan(&sqe, nblocks, bs, self.opts.max_io_size) {
            Ok(p) => p,
            Err(st) => return self.respond(core, tx, idx, st, 0, 0),
        };
        let s = &mut self.slots[idx];
        s.bytes = plan.bytes;
        match plan.kind {
            IoKind::Read => {
                if s.len < plan.bytes {
                    return self.respond(core, tx, idx, Status::generic(sc::SGL_DATA_LENGTH_INVALID), 0, 0);
                }
                s.job = Job::Read;
                // Host memory the transport lent (loop), else a pooled buffer; the volume's read
                // fills all of it before anyone reads it.
                let b = match s.buf.take() {
                    Some(mut b) if b.len() >= plan.bytes as usize => {
                        b.set_len(plan.bytes as usize);
                        b
                    }
                    _ => IoBuf::for_overwrite(plan.bytes as usize),
                };
                self.submit(core, idx, ni, IoOp::Read, plan.slba, plan.nlb, Some(b), false);
            }
            IoKind::Write | IoKind::Compare => {
                let Some(mut b) = s.buf.take().filter(|b| b.len() >= plan.bytes as usize) else {
                    return self.respond(core, tx, idx, Status::generic(sc::SGL_DATA_LENGTH_INVALID), 0, 0);
                };
                b.set_len(plan.bytes as usize);
                if plan.kind == IoKind::Write {
                    self.submit(core, idx, ni, IoOp::Write, plan.slba, plan.nlb, Some(b), plan.fua);
                } else {
                    s.job = Job::Compare;
                    s.buf = Some(b);
                    // Filled by the volume's read before the comparison reads it.
                    let r = IoBuf::for_overwrite(plan.bytes as usize);
                    self.submit(core, idx, ni, IoOp::Read, plan.slba, plan.nlb, Some(r), false);
                }
            }
            IoKind::Flush => self.submit(core, idx, ni, IoOp::Flush, 0, 0, None, false),
            IoKind::WriteZeroes => self.submit(core, idx, ni, IoOp::WriteZeroes, plan.slba, plan.nlb, None, plan.fua),
            IoKind::Deallocate => {
                let Some(ranges) = s.buf.take().filter(|b| b.len() >= plan.bytes as usize) else {
                    return self.respond(core, tx, idx, Status::generic(sc::SGL_DATA_LENGTH_INVALID), 0, 0);
                };
                let n = plan.nlb as usize;
                // Check every range first so the command fails whole, never half done.
                for i in 0..n {
                    let (slba, nlb) = nio::dsm_range(&ranges, i).unwrap_or((0, 0));
                    if slba.checked_add(nlb).is_none_or(|e| e > nblocks) {
                        return self.respond(core, tx, idx, Status::generic(sc::LBA_OUT_OF_RANGE), 0, 0);
                    }
                }
                for i in 0..n {
                    let (slba, nlb) = nio::dsm_range(&ranges, i).unwrap_or((0, 0));
                    if nlb > 0 {
                        self.submit(core, idx, ni, IoOp::Unmap, slba, nlb, None, false);
                    }
                }
            }
            IoKind::DsmHint => {
                // Nothing reaches the bdev, but the command is write-class under a reservation.
                if let Err(d) = self.ns_cache[ni].volume.check(&self.initiator, nv::io_class(sqe.opcode())) {
                    return self.respond(core, tx, idx, denied_status(d), 0, 0);
                }
            }
        }
        self.maybe_finish(core, tx, idx);
    }

    /// The path status of the first namespace this controller cannot reach now, if any.
    fn path_status_any(&self) -> Option<Status> {
        let c = self.ctrlr.as_ref()?;
        self.ns_cache.iter().find_map(|n| super::ana::io_status(c, n))
    }

    /// Submit one volume operation for slot `idx` on namespace `ns_cache[ni]`. The namespace is
    /// borrowed from the queue's list, the tag carries the slot and its generation.
    #[allow(clippy::too_many_arguments)]
    fn submit(&mut self, core: &mut Core, idx: usize, ni: usize, op: IoOp, off: u64, n: u64, buf: Option<IoBuf>, fua: bool) {
        let s = &mut self.slots[idx];
        let tag = idx as u64 | (s.seq as u64) << 16;
        s.pending += 1;
        let req = IoRequest { op, offset_blocks: off, num_blocks: n, buf, fua, owner: self.me, tag };
        let vol = &self.ns_cache[ni].volume;
        if let Err((req, why)) = vol.submit(core, &self.initiator, req) {
            let s = &mut self.slots[idx];
            s.pending -= 1;
            if s.err.is_ok() {
                s.err = denied_status(why);
            }
            drop(req);
        }
    }
}
