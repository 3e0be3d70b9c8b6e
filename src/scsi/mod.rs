//! SCSI target core (SPC-4 / SBC-3): turns CDBs into volume I/O and answers with status, sense
//! and data. Transport-neutral: the iSCSI front-end gathers a command's Data-Out into one buffer,
//! calls [`ScsiPort::submit`], forwards the I/O completions it receives to
//! [`ScsiPort::on_io_complete`], and drains finished tasks with [`ScsiPort::next_done`].
//!
//! One `ScsiPort` per I_T nexus (an iSCSI session's connection); `Lun`s are shared by all nexuses
//! that see them.
//!
//! Modules: `alua` (target port group states, REPORT TARGET PORT GROUPS), `sense` (status, sense data), `cdb` (field decoding), `spc` (primary commands),
//! `sbc` (block commands), `mode` (mode pages), `vpd` (INQUIRY data), `opcodes` (supported
//! command table), `ua` (unit attentions), `task` (in-flight task state), `complete` (the state
//! machines completions advance), `xcopy` (EXTENDED COPY parameter lists and RECEIVE COPY RESULTS
//! pages), `copy` (the EXTENDED COPY engine), `pr` (persistent reservations and RESERVE/RELEASE on
//! the volume's reservation engine).
//!
//! For the transport:
//! - The VPD 0x83 target port designators come from [`Initiator::Iscsi`]'s `target_port` (the
//!   SCSI target port name, `"<target iqn>,t,0x<tpgt as 4 hex digits>"`) and `rel_port_id` (the
//!   relative target port identifier, 1-based): fill them in when creating the port.
//! - Task management: [`ScsiPort::abort_task`], [`ScsiPort::abort_task_set`],
//!   [`ScsiPort::clear_task_set`], [`ScsiPort::lun_reset`] and [`ScsiPort::target_reset`].
//!   Aborted tasks produce no response; their I/O still completes (and its IoEvent must still be
//!   forwarded), because a submitted bdev request cannot be recalled: the transport answers the
//!   TMF only after `Volume::drain_writes` (no aborted write can land after the answer). Tasks
//!   aborted by another nexus ([`ScsiPort::abort_for_other_nexus`]) end with TASK ABORTED.
//! - IoEvents may also arrive for tasks waiting on a range lock (a grant, `buf: None`); forward
//!   every IoEvent, as for block I/O.
//! - Task attributes are accepted and not reordered: commands run in arrival order.
//! - Each new `ScsiPort` starts with a POWER ON unit attention per LUN (SAM-5), as LIO and tgt do.
//! - Reservations: a new `ScsiPort` registers its target port with each LUN's reservation engine
//!   (REGISTER AND MOVE resolves relative port ids through it); call [`ScsiPort::nexus_lost`] when
//!   the I_T nexus ends (logout, connection loss, reinstatement). Deferred PR OUT completions
//!   reach the transport as messages: hand them to `pr::take_deferred` from `on_message`.

pub mod alua;
pub mod cdb;
mod complete;
mod copy;
pub mod mode;
pub mod opcodes;
pub mod pr;
pub mod sbc;
pub mod sense;
mod spc;
mod task;
pub mod ua;
pub mod vpd;
pub mod xcopy;


use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use slab::Slab;

use crate::reactor::{Core, HandlerRef, IoBuf, IoEvent};
use crate::reservation::CommandClass;
use crate::volume::pr_gate::nexus_ref;
use crate::volume::{Denied, Initiator, Volume};

pub use sense::{sense_key, status, Sense};
pub use sense::{INVALID_OPCODE, LBA_OUT_OF_RANGE, LUN_NOT_SUPPORTED, MEDIUM_ERROR_UNRECOVERED, WRITE_PROTECTED};

use task::Task;
use ua::{NexusReported, NexusUa};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataDir {
    None,
    /// Data-In: target to initiator.
    Read,
    /// Data-Out: initiator to target.
    Write,
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskAttr {
    Simple,
    Ordered,
    HeadOfQueue,
    Aca,
}

/// One SCSI command as the transport delivers it, Data-Out already gathered.
#[derive(Debug)]
pub struct ScsiCommand {
    pub cdb: [u8; 32],
    pub cdb_len: u8,
    pub lun: u64,
    /// The transport's task tag (iSCSI Initiator Task Tag); echoed in the response.
    pub task_tag: u32,
    /// Expected data transfer length (EDTL) the initiator announced.
    pub expected_len: u32,
    pub dir: DataDir,
    /// The Data-Out bytes received (len may be below expected_len if the initiator sent less).
    pub data_out: Option<IoBuf>,
    pub attr: TaskAttr,
}

impl ScsiCommand {
    pub fn cdb(&self) -> &[u8] {
        &self.cdb[..(self.cdb_len as usize).min(32)]
    }
}

/// A finished task.
#[derive(Debug)]
pub struct ScsiResponse {
    pub task_tag: u32,
    pub status: u8,
    pub sense: Option<Sense>,
    /// Data-In to send: the first `data_len` bytes of `data_in`. The transport sends at most
    /// expected_len bytes and reports the residual (over- or underflow) itself; `data_in` may
    /// therefore hold fewer than `data_len` bytes (a READ fills only what EDTL lets through).
    pub data_in: Option<IoBuf>,
    pub data_len: u32,
}

impl ScsiResponse {
    pub fn good(task_tag: u32) -> Self {
        ScsiResponse { task_tag, status: status::GOOD, sense: None, data_in: None, data_len: 0 }
    }
    pub fn check(task_tag: u32, sense: Sense) -> Self {
        ScsiResponse { task_tag, status: status::CHECK_CONDITION, sense: Some(sense), data_in: None, data_len: 0 }
    }
    pub fn status(task_tag: u32, status: u8) -> Self {
        ScsiResponse { task_tag, status, sense: None, data_in: None, data_len: 0 }
    }
    pub fn data(task_tag: u32, buf: IoBuf, len: u32) -> Self {
        ScsiResponse { task_tag, status: status::GOOD, sense: None, data_in: Some(buf), data_len: len }
    }
    /// Parameter data built in memory (INQUIRY, MODE SENSE, PR IN...) copied into a pooled buffer.
    pub fn from_bytes(task_tag: u32, bytes: &[u8]) -> Self {
        // Filled by the copy below.
        let mut buf = IoBuf::for_overwrite(bytes.len().max(1));
        buf.set_len(bytes.len());
        buf.copy_from_slice(bytes);
        ScsiResponse::data(task_tag, buf, bytes.len() as u32)
    }
}

/// A logical unit: a volume seen through SCSI, with the state every nexus shares.
pub struct Lun {
    pub id: u64,
    pub volume: Arc<Volume>,
    /// T10 product and serial strings for INQUIRY and VPD 0x80.
    pub product: String,
    pub serial: String,
    /// Current mode page values (MODE SENSE / MODE SELECT).
    pub mode: mode::ModeState,
    /// Events that raise unit attentions on every nexus.
    pub events: ua::LunEvents,
}

impl Lun {
    pub fn new(id: u64, volume: Arc<Volume>) -> Lun {
        let serial = crate::volume::identity::hex(&volume.uuid().as_bytes()[..8]);
        let v = volume.clone();
        Lun {
            id,
            volume,
            product: "Palisade LUN".into(),
            serial,
            mode: mode::ModeState::new(move || v.volatile_write_cache()),
            events: ua::LunEvents::default(),
        }
    }

    fn write_protected(&self) -> bool {
        self.mode.swp.load(Ordering::Relaxed)
    }
}

/// The LUNs a target exposes (REPORT LUNS lists them).
#[derive(Default)]
pub struct LunMap {
    pub luns: Vec<Arc<Lun>>,
}

impl LunMap {
    pub fn get(&self, id: u64) -> Option<&Arc<Lun>> {
        self.luns.iter().find(|l| l.id == id)
    }
    fn index(&self, id: u64) -> Option<usize> {
        self.luns.iter().position(|l| l.id == id)
    }
}

/// Per-nexus executor: runs commands, tracks those waiting for I/O.
pub struct ScsiPort {
    pub initiator: Initiator,
    pub luns: Arc<LunMap>,
    tasks: Slab<Task>,
    done: VecDeque<ScsiResponse>,
    /// Unit attention state per LUN (index into `luns`).
    ua: Vec<NexusUa>,
    /// What the nexus has been told, shared by its ports (iSCSI MC/S), and each LUN's index there.
    reported: Arc<NexusReported>,
    reported_idx: Vec<Option<usize>>,
    /// Per LUN: the reservation snapshot sequence at which no reservation unit attention was
    /// pending for this nexus (so events queued for other nexuses cost no engine lock here).
    pr_seen: Vec<u64>,
    /// Results of finished EXTENDED COPY commands kept for RECEIVE COPY RESULTS (list ids are
    /// per I_T nexus); the oldest are forgotten first.
    copies: VecDeque<CopyRecord>,
    /// Tasks aborted by another nexus' task management, (slot, tag): answered TASK ABORTED once
    /// their I/O has ended (TAS=1), so the initiator may reuse the blocks after the answer.
    abort_reports: Vec<(usize, u32)>,
}

/// A finished copy whose list id asked for its results to be held.
struct CopyRecord {
    lun: usize,
    list_id: u8,
    segments: u16,
    bytes: u64,
}

const MAX_COPY_RECORDS: usize = 16;

impl ScsiPort {
    pub fn new(initiator: Initiator, luns: Arc<LunMap>) -> Self {
        let ua: Vec<NexusUa> = luns.luns.iter().map(|l| NexusUa::new(&l.events, l.volume.num_blocks())).collect();
        let reported = Arc::new(NexusReported::new(luns.luns.iter().map(|l| l.id).zip(ua.iter())));
        let reported_idx = (0..luns.luns.len()).map(Some).collect();
        // The reservation engines learn this target port (REGISTER AND MOVE names it by its
        // relative port identifier).
        for l in &luns.luns {
            l.volume.reservations().observe(nexus_ref(&initiator));
        }
        let pr_seen = vec![0; luns.luns.len()];
        ScsiPort {
            initiator,
            luns,
            tasks: Slab::with_capacity(128),
            done: VecDeque::with_capacity(128),
            ua,
            reported,
            reported_idx,
            pr_seen,
            copies: VecDeque::new(),
            abort_reports: Vec::new(),
        }
    }

    /// I_T nexus loss (logout, connection loss, session reinstatement): SPC-2 reservations of
    /// this nexus end; persistent reservations and registrations stay (SPC-4 5.13.1).
    /// This port is one more connection of an I_T nexus that already exists (iSCSI MC/S): no
    /// power-on unit attention of its own, and every later one once per nexus (`reported` is the
    /// nexus' record, from [`ScsiPort::nexus_reported`] of its first port).
    pub fn join_existing_nexus(&mut self, reported: Arc<NexusReported>) {
        for u in &mut self.ua {
            u.join_existing();
        }
        self.reported_idx = self.luns.luns.iter().map(|l| reported.index(l.id)).collect();
        self.reported = reported;
    }

    /// The nexus-wide record of reported unit attentions, for further ports of this nexus.
    pub fn nexus_reported(&self) -> Arc<NexusReported> {
        self.reported.clone()
    }

    /// Another connection of this nexus reset LUN `lun` (None: every LUN) and reports the unit
    /// attention itself: the nexus gets it once.
    pub fn reset_by_own_nexus(&mut self, lun: Option<u64>) {
        for (i, l) in self.luns.luns.iter().enumerate() {
            if lun.is_none_or(|x| x == l.id) {
                self.ua[i].reset_reported_elsewhere(&l.events);
            }
        }
    }

    pub fn nexus_lost(&self) {
        for l in &self.luns.luns {
            l.volume.reservations().nexus_lost(Some(nexus_ref(&self.initiator)));
        }
    }

    /// The next unit attention of this nexus on LUN `idx`, cleared as it is reported (SAM-5
    /// 5.14): POWER ON / RESET (29h) first, then the reservation events (2Ah: REGISTRATIONS
    /// PREEMPTED, RESERVATIONS PREEMPTED, RESERVATIONS RELEASED) oldest first, then the other
    /// conditions of the SCSI core (capacity, mode parameters changed). Each is reported once.
    fn next_ua(&mut self, idx: usize, lun: &Lun) -> Option<Sense> {
        let shared = self.reported_idx[idx].map(|i| (&*self.reported, i));
        if let Some(s) = self.ua[idx].take_reset(shared) {
            return Some(s);
        }
        let pr = lun.volume.reservations();
        if pr.events_pending() {
            let seq = pr.snapshot().seq;
            if self.pr_seen[idx] != seq {
                // Every event is queued before the snapshot that follows it is published: when
                // nothing is found for us at `seq`, nothing can be until the sequence moves.
                match pr::unit_attention(lun, &self.initiator) {
                    Some(s) => return Some(s),
                    None => self.pr_seen[idx] = seq,
                }
            }
        }
        self.ua[idx].take(shared)
    }

    /// What the transport needs from a command's CDB before its data moves: how its Data-Out
    /// fits the expected length (residual; the CDB cut down on overflow), by its LUN's block
    /// size. A LUN that does not exist leaves the command as it is (`submit` answers it).
    pub fn fit_data_out(&self, lun: u64, cdb: &mut [u8; 32], expected_len: u32) -> cdb::DataOutFit {
        match self.luns.get(lun) {
            Some(l) => cdb::fit_data_out(cdb, expected_len, l.volume.block_size()),
            None => cdb::DataOutFit { resid: None, run: true },
        }
    }

    /// Commands still waiting for I/O.
    pub fn in_flight(&self) -> usize {
        self.tasks.len()
    }

    /// Start a command; its response arrives through `next_done` (at once or after I/O).
    pub fn submit(&mut self, core: &mut Core, me: HandlerRef, cmd: ScsiCommand) {
        let tag = cmd.task_tag;
        let op = cmd.cdb[0];
        let Some(idx) = self.luns.index(cmd.lun) else {
            // INQUIRY, REPORT LUNS and REQUEST SENSE work on any LUN number (SPC-4 6.6, 6.33, 6.39).
            let resp = match op {
                0x12 => spc::inquiry_no_lun(&cmd),
                0xa0 => spc::report_luns(&self.luns, &cmd),
                0x03 => spc::request_sense_no_lun(&cmd),
                _ => Err(LUN_NOT_SUPPORTED),
            };
            return self.push(tag, resp);
        };
        let lun = self.luns.luns[idx].clone();
        // Unit attention (SAM-5 5.14): reported once, before the command runs.
        self.ua[idx].refresh(&lun.events, lun.volume.num_blocks());
        if !ua::exempt(op) {
            if let Some(s) = self.next_ua(idx, &lun) {
                return self.done.push_back(ScsiResponse::check(tag, s));
            }
        }
        // Asymmetric access (SPC-4 5.16.2.4): a port group that is not active serves only the
        // commands its state allows. Media access is refused again by the volume itself.
        let path = lun.volume.port_groups().local_state();
        if !path.is_active() && !alua::allowed(cmd.cdb(), path) {
            return self.done.push_back(ScsiResponse::check(tag, alua::not_accessible(path)));
        }
        // Reservation conflicts (SPC-4 5.13.1 Table 66, SBC-3 Table 13), decided by the volume
        // from the lock-free snapshot. Block I/O is checked again where it is submitted (the
        // fence relies on that check); this one also covers commands that move no data (a zero
        // transfer length, VERIFY without BYTCHK, MODE SENSE/SELECT...). PR OUT and RESERVE /
        // RELEASE apply their own rules in `pr::execute`.
        match pr::command_class(cmd.cdb()) {
            CommandClass::Always | CommandClass::PrOut => {}
            class => {
                if let Err(why) = lun.volume.check(&self.initiator, class) {
                    return self.done.push_back(denied(why).into_response(tag));
                }
            }
        }
        match op {
            // The data path first.
            0x08 | 0x28 | 0xa8 | 0x88 => self.read(core, me, idx, &lun, cmd),
            0x0a | 0x2a | 0xaa | 0x8a => self.write(core, me, idx, &lun, cmd),
            0x2f | 0xaf | 0x8f => self.verify(core, me, idx, &lun, cmd),
            0x2e | 0xae | 0x8e => self.write(core, me, idx, &lun, cmd),
            0x41 | 0x93 => self.write_same(core, me, idx, &lun, cmd),
            0x42 => self.unmap(core, me, idx, &lun, cmd),
            0x89 | 0x8b | 0x9c => self.rmw_start(core, me, idx, &lun, cmd),
            0x35 | 0x91 => self.sync_cache(core, me, idx, &lun, cmd),
            0x34 | 0x90 => {
                let r = sbc::prefetch(&lun, &cmd);
                self.push(tag, r)
            }
            0x83 => self.extended_copy(core, me, idx, cmd),
            0x5e | 0x5f | 0x16 | 0x17 | 0x56 | 0x57 => pr::execute(self, core, me, &lun, cmd),
            _ => {
                let r = self.spc_command(idx, &lun, &cmd);
                self.push(tag, r)
            }
        }
    }

    /// Commands answered at once from LUN state (SPC and the non-I/O SBC ones).
    fn spc_command(&mut self, idx: usize, lun: &Arc<Lun>, cmd: &ScsiCommand) -> Result<Option<Vec<u8>>, Sense> {
        let c = &cmd.cdb;
        match c[0] {
            0x00 => Ok(None), // TEST UNIT READY: a volume is always ready
            0x03 => {
                // Nothing pending: the unit's state, NOT READY while the port group is not active.
                let path = lun.volume.port_groups().local_state();
                let state = (!path.is_active()).then(|| alua::not_accessible(path));
                Ok(Some(spc::request_sense(|| self.next_ua(idx, lun).or(state), cmd)?))
            }
            0x12 => spc::inquiry(lun, &self.initiator, cmd).map(Some),
            0x15 | 0x55 => self.mode_select(idx, lun, cmd).map(|_| None),
            0x1a | 0x5a => spc::mode_sense(lun, cmd).map(Some),
            0x1b => sbc::start_stop(lun, cmd),
            0x1e => sbc::prevent_allow(cmd),
            0x25 => sbc::read_capacity10(lun, cmd).map(Some),
            0x37 | 0xb7 => sbc::read_defect_data(cmd).map(Some),
            0x9e if c[1] & 0x1f == 0x10 => sbc::read_capacity16(lun, cmd).map(Some),
            0x9e if c[1] & 0x1f == 0x12 => sbc::get_lba_status(lun, cmd).map(Some),
            0xa0 => spc::report_luns(&self.luns, cmd),
            0xa3 if c[1] & 0x1f == 0x0c => opcodes::report(c).map(Some),
            0xa3 if c[1] & 0x1f == 0x0d => Ok(Some(opcodes::report_tmf(c))),
            0xa3 if c[1] & 0x1f == alua::SA_REPORT_TARGET_PORT_GROUPS => spc::report_target_port_groups(lun, &self.initiator, cmd).map(Some),
            0x84 => self.receive_copy_results(idx, cmd).map(Some),
            0x9e | 0xa3 => Err(Sense::invalid_cdb_field(1, Some(4))),
            _ => Err(INVALID_OPCODE),
        }
    }

    /// RECEIVE COPY RESULTS (SPC-4 6.18): operating parameters, or the status of a held copy.
    fn receive_copy_results(&mut self, idx: usize, cmd: &ScsiCommand) -> Result<Vec<u8>, Sense> {
        let alloc = cdb::be(&cmd.cdb, 10, 4) as usize;
        let mut d = match cmd.cdb[1] & 0x1f {
            0x03 => xcopy::operating_parameters(),
            0x00 => {
                let id = cmd.cdb[2];
                match self.copies.iter().find(|c| c.lun == idx && c.list_id == id) {
                    Some(c) => xcopy::copy_status(c.segments, c.bytes),
                    None => return Err(Sense::invalid_cdb_field(2, None)),
                }
            }
            _ => return Err(Sense::invalid_cdb_field(1, Some(4))),
        };
        d.truncate(alloc);
        Ok(d)
    }

    fn record_copy(&mut self, lun: usize, list_id: u8, segments: u16, bytes: u64) {
        self.copies.retain(|c| !(c.lun == lun && c.list_id == list_id));
        if self.copies.len() == MAX_COPY_RECORDS {
            self.copies.pop_front();
        }
        self.copies.push_back(CopyRecord { lun, list_id, segments, bytes });
    }

    fn mode_select(&mut self, idx: usize, lun: &Arc<Lun>, cmd: &ScsiCommand) -> Result<(), Sense> {
        let ten = cmd.cdb[0] == 0x55;
        if cmd.cdb[1] & 0x01 != 0 {
            return Err(Sense::invalid_cdb_field(1, Some(0))); // SP: nothing is saveable
        }
        let plen = if ten { cdb::be(&cmd.cdb, 7, 2) } else { cmd.cdb[4] as u64 } as usize;
        if plen == 0 {
            return Ok(());
        }
        let data = cmd.data_out.as_deref().unwrap_or(&[]);
        if data.len() < plen {
            return Err(sense::INVALID_FIELD_IN_IU);
        }
        let change = mode::mode_select(&lun.mode, ten, &data[..plen], lun.volume.block_size())?;
        if mode::apply(&lun.mode, change) {
            // Other nexuses get MODE PARAMETERS CHANGED (SPC-4 6.9); this one does not.
            let before = lun.events.mode.fetch_add(1, Ordering::AcqRel);
            let shared = self.reported_idx[idx].map(|i| (&*self.reported, i));
            self.ua[idx].own_mode_change(before, shared);
        }
        Ok(())
    }

    /// Queue the outcome of a command answered at once.
    fn push(&mut self, tag: u32, r: Result<Option<Vec<u8>>, Sense>) {
        let resp = match r {
            Ok(None) => ScsiResponse::good(tag),
            Ok(Some(bytes)) => ScsiResponse::from_bytes(tag, &bytes),
            Err(s) => ScsiResponse::check(tag, s),
        };
        self.done.push_back(resp);
    }

    /// Feed an I/O completion this port's commands were waiting for.
    pub fn on_io_complete(&mut self, core: &mut Core, me: HandlerRef, ev: IoEvent) {
        let slot = ev.tag as usize;
        self.advance(core, me, ev);
        if !self.abort_reports.is_empty() && !self.tasks.contains(slot) {
            if let Some(i) = self.abort_reports.iter().position(|&(s, _)| s == slot) {
                let (_, tag) = self.abort_reports.swap_remove(i);
                self.done.push_back(ScsiResponse::status(tag, status::TASK_ABORTED));
            }
        }
    }

    /// Queue a finished task (commands completed outside this module, e.g. `pr::execute`).
    pub fn push_done(&mut self, resp: ScsiResponse) {
        self.done.push_back(resp);
    }

    /// The next finished task, if any.
    pub fn next_done(&mut self) -> Option<ScsiResponse> {
        self.done.pop_front()
    }

    // ---- task management (SAM-5 7) ----

    /// ABORT TASK: forget the task with this tag (its I/O, if any, finishes unseen). True if it
    /// was found (in flight or finished but not yet drained).
    pub fn abort_task(&mut self, task_tag: u32) -> bool {
        let before = self.done.len();
        self.done.retain(|r| r.task_tag != task_tag);
        let mut found = self.done.len() != before;
        // Aborted by its own nexus after another one: answered by the TMF, not TASK ABORTED.
        let reported = self.abort_reports.len();
        self.abort_reports.retain(|&(_, tag)| tag != task_tag);
        found |= self.abort_reports.len() != reported;
        for (_, t) in self.tasks.iter_mut() {
            if t.tag == task_tag && !t.aborted {
                t.aborted = true;
                found = true;
            }
        }
        found
    }

    /// ABORT TASK SET for one LUN: every task of this nexus on it ends without a response (the
    /// TMF's answer stands for them; the transport sends it once the volume's writes drained).
    pub fn abort_task_set(&mut self, lun: u64) -> usize {
        let Some(idx) = self.luns.index(lun) else { return 0 };
        let mut n = 0;
        for (_, t) in self.tasks.iter_mut() {
            if t.lun as usize == idx && !t.aborted {
                t.aborted = true;
                n += 1;
            }
        }
        n
    }

    /// CLEAR TASK SET on this nexus' side: its own tasks end silently, as for ABORT TASK SET.
    /// With one task set per LUN (TST=000b) the other nexuses' tasks are cleared too: the
    /// transport reaches their ports and calls [`ScsiPort::abort_for_other_nexus`].
    pub fn clear_task_set(&mut self, lun: u64) -> usize {
        self.abort_task_set(lun)
    }

    /// Another nexus' CLEAR TASK SET, LOGICAL UNIT RESET or target reset reached this nexus'
    /// tasks on `volume`: each is aborted and, as the control mode page says TAS=1, answered
    /// TASK ABORTED once its I/O has ended (SAM-5 5.6, SPC-4 7.5.8). Tasks keep no I/O going
    /// once marked (multi-step commands stop at their next step). Returns how many.
    pub fn abort_for_other_nexus(&mut self, volume: &Arc<Volume>) -> usize {
        let mut n = 0;
        for (slot, t) in self.tasks.iter_mut() {
            let on_volume = self.luns.luns.get(t.lun as usize).is_some_and(|l| Arc::ptr_eq(&l.volume, volume));
            if on_volume && !t.aborted {
                t.aborted = true;
                self.abort_reports.push((slot, t.tag));
                n += 1;
            }
        }
        n
    }

    /// LOGICAL UNIT RESET: abort this nexus' tasks on the LUN, reset its state (mode pages to
    /// default are kept: they are not saved values), and raise 29/03 on every nexus.
    pub fn lun_reset(&mut self, lun: u64) -> bool {
        let Some(idx) = self.luns.index(lun) else { return false };
        self.abort_task_set(lun);
        let l = &self.luns.luns[idx];
        l.events.reset.fetch_add(1, Ordering::AcqRel);
        self.ua[idx].set_reset(&l.events);
        // A logical unit reset releases an SPC-2 RESERVE of any nexus; persistent reservations
        // and registrations are not affected (SPC-4 5.13.1, SAM-5 6.3.3).
        l.volume.reservations().nexus_lost(None);
        true
    }

    /// TARGET WARM/COLD RESET: a LUN reset of every LUN.
    pub fn target_reset(&mut self) {
        let ids: Vec<u64> = self.luns.luns.iter().map(|l| l.id).collect();
        for id in ids {
            self.lun_reset(id);
        }
    }
}

fn denied(why: Denied) -> ScsiResponseKind {
    match why {
        Denied::OutOfRange => ScsiResponseKind::Check(LBA_OUT_OF_RANGE),
        Denied::ReservationConflict => ScsiResponseKind::Status(status::RESERVATION_CONFLICT),
        Denied::WriteProtected => ScsiResponseKind::Check(WRITE_PROTECTED),
        Denied::PathInaccessible(s) => ScsiResponseKind::Check(alua::not_accessible(s)),
    }
}

/// A response without data, for the paths that build one from a volume refusal.
enum ScsiResponseKind {
    Check(Sense),
    Status(u8),
}

impl ScsiResponseKind {
    fn into_response(self, tag: u32) -> ScsiResponse {
        match self {
            ScsiResponseKind::Check(s) => ScsiResponse::check(tag, s),
            ScsiResponseKind::Status(st) => ScsiResponse::status(tag, st),
        }
    }
}

/// SAM-5 single-level LUN: peripheral addressing below 256, flat space addressing above.
pub fn encode_lun(id: u64) -> [u8; 8] {
    let mut b = [0u8; 8];
    if id < 256 {
        b[1] = id as u8;
    } else {
        b[0] = 0x40 | ((id >> 8) & 0x3f) as u8;
        b[1] = id as u8;
    }
    b
}

/// Inverse of [`encode_lun`] for the 8-byte LUN field of a transport header.
pub fn decode_lun(b: [u8; 8]) -> u64 {
    match b[0] >> 6 {
        0 => b[1] as u64,
        1 => (((b[0] & 0x3f) as u64) << 8) | b[1] as u64,
        _ => u64::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lun_encoding_round_trips() {
        for id in [0u64, 1, 255, 256, 0x3fff] {
            assert_eq!(decode_lun(encode_lun(id)), id);
        }
        assert_eq!(encode_lun(300)[0], 0x41);
        assert_eq!(decode_lun([0x80, 0, 0, 0, 0, 0, 0, 0]), u64::MAX);
    }
}
