//! Per-connection task slots: preallocated at login, reused for every command (no allocation on
//! the I/O path). A slot tracks one command from its SCSI Command PDU through Data-Out gathering
//! (immediate, unsolicited and R2T-solicited sequences with DataSN and offset checks) to its
//! response. Tasks are found in O(1): by ITT through [`IttMap`], by TTT and by the tag the SCSI
//! core echoes (both carry the slot and its generation).

use std::collections::VecDeque;

use super::itt::{IttError, IttMap};
use crate::reactor::budget::ConnBudget;
use crate::reactor::IoBuf;
use crate::scsi::{DataDir, TaskAttr};

/// Most R2T sequences one task may have open (MaxOutstandingR2T is clamped to this).
pub const MAX_SEQ: usize = 16;

#[derive(Clone, Copy, Default)]
struct Seq {
    open: bool,
    ttt: u32,
    off: u32,
    len: u32,
    got: u32,
    datasn: u32,
}

pub struct Task {
    active: bool,
    gen: u16,
    /// `itt` is in the table's ITT map.
    bound: bool,
    itt: u32,
    pub lun_raw: [u8; 8],
    pub lun: u64,
    pub cdb: [u8; 32],
    pub cdb_len: u8,
    pub attr: TaskAttr,
    pub edtl: u32,
    pub dir: DataDir,
    pub cmd_sn: u32,
    pub data: Option<IoBuf>,
    pub received: u32,
    pub unsol_end: u32,
    pub unsol_open: bool,
    unsol_pos: u32,
    unsol_datasn: u32,
    pub r2t_next: u32,
    pub r2t_sn: u32,
    seqs: [Seq; MAX_SEQ],
    pub submitted: bool,
    /// WRITE residual: (underflow, count) when EDTL and the CDB disagree.
    pub write_resid: Option<(bool, u32)>,
    /// Data-buffer bytes this task holds from the connection's budget.
    reserved: u32,
    /// Waiting for its data buffer: a write keeps only its unsolicited data meanwhile.
    pub parked: bool,
    /// Received ahead of the session's ExpCmdSN (MC/S): not started until its CmdSN is next.
    pub held: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum DataOutError {
    Protocol(&'static str),
}

impl Task {
    fn empty() -> Task {
        Task {
            active: false,
            gen: 0,
            bound: false,
            itt: 0,
            lun_raw: [0; 8],
            lun: 0,
            cdb: [0; 32],
            cdb_len: 0,
            attr: TaskAttr::Simple,
            edtl: 0,
            dir: DataDir::None,
            cmd_sn: 0,
            data: None,
            received: 0,
            unsol_end: 0,
            unsol_open: false,
            unsol_pos: 0,
            unsol_datasn: 0,
            r2t_next: 0,
            r2t_sn: 0,
            seqs: [Seq::default(); MAX_SEQ],
            submitted: false,
            write_resid: None,
            reserved: 0,
            parked: false,
            held: false,
        }
    }

    fn reset(&mut self) {
        let gen = self.gen;
        *self = Task::empty();
        self.gen = gen;
    }

    pub fn itt(&self) -> u32 {
        self.itt
    }

    pub fn outstanding(&self) -> usize {
        self.seqs.iter().filter(|s| s.open).count()
    }

    /// Open an R2T sequence for [off, off+len); returns its Target Transfer Tag.
    pub fn open_seq(&mut self, slot: usize, off: u32, len: u32) -> Option<u32> {
        let ttt = ((self.gen as u32) << 16) | slot as u32;
        let s = self.seqs.iter_mut().find(|s| !s.open)?;
        *s = Seq { open: true, ttt, off, len, got: 0, datasn: 0 };
        Some(ttt)
    }

    /// Take one Data-Out PDU. Ok(true) when it closed a sequence (more R2Ts may go out).
    pub fn data_out(&mut self, ttt: u32, datasn: u32, offset: u32, data: &[u8], fin: bool) -> Result<bool, DataOutError> {
        let done = self.accept(ttt, datasn, offset, data.len() as u32, fin)?;
        self.copy_in(offset, data);
        self.received += data.len() as u32;
        Ok(done)
    }

    /// Check one Data-Out PDU's header against the task's sequences and advance them (DataSN,
    /// offset), before its `n` payload bytes arrive; the caller lands them at `offset` of
    /// [`Task::data`] and then counts them in `received`. Ok(true) when it closes a sequence.
    pub fn accept(&mut self, ttt: u32, datasn: u32, offset: u32, n: u32, fin: bool) -> Result<bool, DataOutError> {
        let end = offset.checked_add(n).ok_or(DataOutError::Protocol("Data-Out offset overflows"))?;
        if end > self.edtl {
            return Err(DataOutError::Protocol("Data-Out beyond the expected data transfer length"));
        }
        if ttt == u32::MAX {
            if !self.unsol_open {
                return Err(DataOutError::Protocol("unsolicited Data-Out not expected"));
            }
            if datasn != self.unsol_datasn {
                return Err(DataOutError::Protocol("unsolicited Data-Out with a wrong DataSN"));
            }
            if offset != self.unsol_pos || end > self.unsol_end {
                return Err(DataOutError::Protocol("unsolicited Data-Out at a wrong offset"));
            }
            self.unsol_datasn += 1;
            self.unsol_pos = end;
            if fin {
                if self.unsol_pos != self.unsol_end {
                    return Err(DataOutError::Protocol("unsolicited burst ended short"));
                }
                self.unsol_open = false;
                return Ok(true);
            }
            return Ok(false);
        }
        let Some(i) = self.seqs.iter().position(|s| s.open && s.ttt == ttt) else {
            return Err(DataOutError::Protocol("Data-Out for an R2T that is not outstanding"));
        };
        let s = self.seqs[i];
        if datasn != s.datasn {
            return Err(DataOutError::Protocol("Data-Out with a wrong DataSN"));
        }
        if offset != s.off + s.got || end > s.off + s.len {
            return Err(DataOutError::Protocol("Data-Out outside its R2T"));
        }
        let s = &mut self.seqs[i];
        s.datasn += 1;
        s.got += n;
        if fin {
            if s.got != s.len {
                return Err(DataOutError::Protocol("R2T sequence ended short"));
            }
            s.open = false;
            return Ok(true);
        }
        Ok(false)
    }

    fn copy_in(&mut self, offset: u32, data: &[u8]) {
        if let Some(b) = self.data.as_mut() {
            let o = offset as usize;
            if let Some(dst) = b.get_mut(o..o + data.len()) {
                dst.copy_from_slice(data);
            }
        }
    }

    pub fn set_unsolicited(&mut self, pos: u32) {
        self.unsol_pos = pos;
    }
}

pub struct TaskTable {
    slots: Vec<Task>,
    free: Vec<usize>,
    gen: u16,
    itts: IttMap,
    /// The connection's data-buffer budget (None: unlimited, for tests and discovery).
    budget: Option<ConnBudget>,
    /// Tasks waiting for budget, in arrival order (they get it in that order).
    parked: VecDeque<usize>,
}

impl TaskTable {
    pub fn new(n: usize) -> TaskTable {
        TaskTable { slots: (0..n).map(|_| Task::empty()).collect(), free: (0..n).rev().collect(), gen: 0, itts: IttMap::with_slots(n), budget: None, parked: VecDeque::with_capacity(n) }
    }

    pub fn with_budget(n: usize, budget: ConnBudget) -> TaskTable {
        TaskTable { budget: Some(budget), ..TaskTable::new(n) }
    }

    /// Give `slot` its `n` data bytes now, or park it behind the tasks already waiting (FIFO, so
    /// a large command is not starved by small ones). True if it may go on.
    pub fn admit(&mut self, slot: usize, n: u32) -> bool {
        if self.parked.is_empty() && self.reserve(slot, n) {
            return true;
        }
        if let Some(b) = self.budget.as_ref() {
            b.note_wait();
        }
        self.slots[slot].parked = true;
        self.parked.push_back(slot);
        false
    }

    fn reserve(&mut self, slot: usize, n: u32) -> bool {
        let ok = self.budget.as_mut().is_none_or(|b| b.try_reserve(n as usize));
        if ok {
            self.slots[slot].reserved = n;
        }
        ok
    }

    /// The oldest parked task, if its bytes are available now (it is then no longer parked).
    pub fn unpark(&mut self) -> Option<usize> {
        let &slot = self.parked.front()?;
        let need = self.slots[slot].edtl;
        if !self.reserve(slot, need) {
            return None;
        }
        self.parked.pop_front();
        self.slots[slot].parked = false;
        Some(slot)
    }

    /// Free a task whose response is queued but not yet written: its bytes are returned to the
    /// caller, to be given back with [`TaskTable::release`] once the output is on the wire.
    pub fn finish(&mut self, slot: usize) -> u32 {
        let n = std::mem::take(&mut self.slots[slot].reserved);
        self.free(slot);
        n
    }

    pub fn release(&mut self, n: usize) {
        if let Some(b) = self.budget.as_mut() {
            b.release(n);
        }
    }

    /// Bytes the connection's tasks and unsent responses hold.
    pub fn held(&self) -> usize {
        self.budget.as_ref().map_or(0, |b| b.held())
    }

    pub fn alloc(&mut self) -> Option<usize> {
        let s = self.free.pop()?;
        self.gen = self.gen.wrapping_add(1);
        if self.gen == 0 || self.gen == 0xffff {
            self.gen = 1;
        }
        let t = &mut self.slots[s];
        t.reset();
        t.active = true;
        t.gen = self.gen;
        Some(s)
    }

    pub fn free(&mut self, slot: usize) {
        let Some(t) = self.slots.get_mut(slot) else { return };
        if !t.active {
            return;
        }
        let (reserved, parked) = (t.reserved, t.parked);
        if t.bound {
            self.itts.remove(t.itt, slot);
        }
        t.reset();
        self.free.push(slot);
        if parked {
            self.parked.retain(|&s| s != slot);
        }
        self.release(reserved as usize);
    }

    pub fn get_mut(&mut self, slot: usize) -> &mut Task {
        &mut self.slots[slot]
    }

    /// Give an allocated slot its initiator task tag; refused if another active task has it.
    pub fn bind(&mut self, slot: usize, itt: u32) -> Result<(), IttError> {
        self.itts.insert(itt, slot)?;
        let t = &mut self.slots[slot];
        t.itt = itt;
        t.bound = true;
        Ok(())
    }

    /// The tag the SCSI core gets for this slot's command and echoes in its response: the slot
    /// and its generation, so the response finds its task directly and a late one (the slot
    /// reused since) finds nothing.
    pub fn handle(&self, slot: usize) -> u32 {
        ((self.slots[slot].gen as u32) << 16) | slot as u32
    }

    pub fn find_unsolicited(&self, itt: u32) -> Option<usize> {
        let slot = self.itts.get(itt)?;
        let t = &self.slots[slot];
        (t.active && !t.submitted && t.unsol_open).then_some(slot)
    }

    pub fn find_ttt(&self, ttt: u32, itt: u32) -> Option<usize> {
        let slot = (ttt & 0xffff) as usize;
        let t = self.slots.get(slot)?;
        (t.active && !t.submitted && t.gen as u32 == ttt >> 16 && t.itt == itt).then_some(slot)
    }

    /// The active task with this tag, submitted or still gathering Data-Out.
    pub fn find(&self, itt: u32) -> Option<usize> {
        self.itts.get(itt).filter(|&s| self.slots[s].active)
    }

    /// Whether `slot` still holds the task `handle` named.
    pub fn is_live(&self, slot: usize, handle: u32) -> bool {
        self.slots.get(slot).is_some_and(|t| t.active && t.gen as u32 == handle >> 16)
    }

    /// `len` bytes at `off` of the data buffer of the task `handle` names, if it is still there
    /// and the range lies in its buffer (a Data-Out payload lands here).
    pub fn buffer_at(&mut self, slot: usize, handle: u32, off: usize, len: usize) -> Option<&mut [u8]> {
        let t = self.slots.get_mut(slot)?;
        if !t.active || t.gen as u32 != handle >> 16 {
            return None;
        }
        t.data.as_mut()?.get_mut(off..off.checked_add(len)?)
    }

    /// The submitted task a SCSI response's tag ([`TaskTable::handle`]) names.
    pub fn find_submitted(&self, handle: u32) -> Option<usize> {
        let slot = (handle & 0xffff) as usize;
        let t = self.slots.get(slot)?;
        (t.active && t.submitted && t.gen as u32 == handle >> 16).then_some(slot)
    }

    pub fn active_slots(&self) -> Vec<usize> {
        (0..self.slots.len()).filter(|&i| self.slots[i].active).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r2t_sequence_checks() {
        let mut tt = TaskTable::new(4);
        let s = tt.alloc().unwrap();
        let t = tt.get_mut(s);
        t.edtl = 8192;
        t.data = Some(IoBuf::zeroed(8192));
        let ttt = t.open_seq(s, 0, 8192).unwrap();
        assert!(tt.find_ttt(ttt, 0).is_some());
        let t = tt.get_mut(s);
        assert_eq!(t.data_out(ttt, 1, 0, &[1; 4096], false), Err(DataOutError::Protocol("Data-Out with a wrong DataSN")));
        assert_eq!(t.data_out(ttt, 0, 0, &[1; 4096], false), Ok(false));
        assert!(t.data_out(ttt, 1, 0, &[1; 4096], true).is_err()); // wrong offset
        assert_eq!(t.data_out(ttt, 1, 4096, &[2; 4096], true), Ok(true));
        assert_eq!(t.received, 8192);
        assert_eq!(t.outstanding(), 0);
        assert!(t.data_out(u32::MAX, 0, 0, &[0; 10], true).is_err()); // no unsolicited phase
        assert!(t.data_out(ttt, 0, 8000, &[0; 1000], true).is_err()); // beyond EDTL
        tt.free(s);
        assert!(tt.find_ttt(ttt, 0).is_none());
    }

    #[test]
    fn lookups_by_itt_and_handle() {
        let mut tt = TaskTable::new(4);
        let a = tt.alloc().unwrap();
        tt.bind(a, 0x10).unwrap();
        let b = tt.alloc().unwrap();
        // A duplicate of an active ITT is refused; the slot stays unbound and frees cleanly.
        assert_eq!(tt.bind(b, 0x10), Err(IttError::Duplicate));
        tt.free(b);
        assert_eq!(tt.find(0x10), Some(a));
        let h = tt.handle(a);
        assert_eq!(tt.find_submitted(h), None, "not submitted yet");
        tt.get_mut(a).submitted = true;
        assert_eq!(tt.find_submitted(h), Some(a));
        tt.free(a);
        assert_eq!(tt.find(0x10), None);
        assert_eq!(tt.find_submitted(h), None);
        // Reuse after completion: same ITT, possibly the same slot, a new generation.
        let c = tt.alloc().unwrap();
        tt.bind(c, 0x10).unwrap();
        tt.get_mut(c).submitted = true;
        assert_eq!(tt.find(0x10), Some(c));
        assert_ne!(tt.handle(c), h);
        assert_eq!(tt.find_submitted(h), None, "a late response of the old task finds nothing");
        // Unsolicited Data-Out finds only a task still gathering it.
        let d = tt.alloc().unwrap();
        tt.bind(d, 0x20).unwrap();
        assert_eq!(tt.find_unsolicited(0x20), None);
        tt.get_mut(d).unsol_open = true;
        assert_eq!(tt.find_unsolicited(0x20), Some(d));
    }
}
