//! One NVMe-oF queue pair as the core sees it: command slots, data admission against the
//! budget, fabrics and admin dispatch, and completion. It sees capsules and data buffers, never
//! sockets: the transport frames commands in and implements [`Transport`] for what goes out.
//! Slots are preallocated at Connect (index = transfer tag = bdev tag), data uses pooled
//! [`IoBuf`]s: no heap allocation per command once the queue is warm.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::admin::{self, Outcome};
use super::fabrics;
use super::transport::{CmdData, QpError, Transport};
use super::{Ctrlr, ListenAddr, Namespace, SubType, Target, TransportOpts};
use super::auth::target::{DhDone, SendResult, Step, TargetAuth};
use crate::nvme::auth::{AuthSqe, CONNECT_AUTHREQ_ASCR, CONNECT_AUTHREQ_ATR, SC_AUTH_REQUIRED};
use crate::nvme::io::{self as nio, Dir};
use crate::nvme::reservation as nv;
use crate::nvme::spec::{admin as aop, fctype, io as iop, sc, sgl, Cqe, Sqe, Status};
use crate::reactor::budget::ConnBudget;
use crate::reactor::{Core, HandlerRef, IoBuf, IoEvent};
use crate::volume::Initiator;

const MAX_AERS: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SlotState {
    Free,
    /// Waiting for data-buffer budget (in `QPair::parked`): no data requested, nothing submitted.
    Parked,
    AwaitData,
    Exec,
    /// Answered; the slot is free once its response has been taken by the transport.
    Sending,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Job {
    Other,
    Read,
    Compare,
}

pub(super) struct Slot {
    pub(super) state: SlotState,
    /// Bumped on every use so a stale completion cannot complete a reused slot.
    pub(super) seq: u16,
    pub(super) sqe: Sqe,
    /// Host data (writes, compare, DSM ranges, Connect data) or data read for the host.
    pub(super) buf: Option<IoBuf>,
    /// Compare: what the medium holds.
    pub(super) buf2: Option<IoBuf>,
    /// Host buffer length from the SGL.
    pub(super) len: u32,
    /// Host data received so far.
    pub(super) got: u32,
    pub(super) pending: u32,
    pub(super) err: Status,
    pub(super) job: Job,
    pub(super) bytes: u32,
    /// Data-buffer bytes this command needs from the connection's budget, and holds now.
    want: u32,
    reserved: u32,
    /// In-capsule data landing after the capsule: admitted to the budget once it is all in.
    admit_on_data: bool,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            state: SlotState::Free,
            seq: 0,
            sqe: Sqe::default(),
            buf: None,
            buf2: None,
            len: 0,
            got: 0,
            pending: 0,
            err: Status::SUCCESS,
            job: Job::Other,
            bytes: 0,
            want: 0,
            reserved: 0,
            admit_on_data: false,
        }
    }
}

/// Message to an admin queue pair: an asynchronous event is pending.
pub struct AenKick;

/// Message to a queue pair: the DH work of the AUTH_Send in slot `idx` is done.
struct AuthWorkDone {
    idx: u16,
    seq: u16,
    done: DhDone,
}

/// The queue pair's view of one connection, shared by every transport.
pub struct QPair {
    pub(super) t: Arc<Target>,
    pub(super) opts: Arc<TransportOpts>,
    pub(super) me: HandlerRef,
    listen: Arc<ListenAddr>,
    pub(super) peer: String,
    created: Instant,
    closing: bool,
    /// Answered slots in `Sending`, with the transport position their response ends at.
    tx_wait: VecDeque<(u64, u16)>,
    pub(super) slots: Vec<Slot>,
    free: Vec<u16>,
    /// This connection's share of the transport's data-buffer budget.
    budget: ConnBudget,
    /// Slots waiting for budget, oldest first (they get it in that order).
    parked: VecDeque<u16>,
    pub(super) ctrlr: Option<Arc<Ctrlr>>,
    pub(super) initiator: Initiator,
    pub(super) qid: u16,
    sq_entries: u32,
    sqhd: u32,
    sqflow_disabled: bool,
    aers: Vec<u16>,
    /// The subsystem's namespaces as of `ns_gen`: one reference per queue, borrowed per command.
    pub(super) ns_cache: Arc<Vec<Arc<Namespace>>>,
    ns_gen: u64,
    scratch: Vec<u8>,
    /// The slot the last [`CmdData::Later`] capsule's data lands in.
    landing: Option<u16>,
    /// DH-HMAC-CHAP state when the host entry has a key (built at Connect, off the data path).
    auth: Option<Box<TargetAuth>>,
    /// Commands other than Connect/AUTH_Send/AUTH_Receive/Disconnect may run: the one check the
    /// data path pays (a plain field, no lock).
    auth_ok: bool,
    /// Host and subsystem NQNs of the TLS PSK identity this connection was secured with.
    tls_peer: Option<fabrics::TlsPeer>,
}

impl QPair {
    pub fn new(t: Arc<Target>, opts: Arc<TransportOpts>, me: HandlerRef, listen: Arc<ListenAddr>, peer: String, now: Instant) -> QPair {
        let budget = ConnBudget::new(t.data_budget.clone(), opts.data_buffer_per_connection());
        QPair {
            t,
            opts,
            me,
            listen,
            peer,
            tls_peer: None,
            created: now,
            closing: false,
            tx_wait: VecDeque::new(),
            // Enough for Connect; the rest once the depth is known.
            slots: (0..2).map(|_| Slot::new()).collect(),
            free: vec![1, 0],
            budget,
            parked: VecDeque::new(),
            ctrlr: None,
            initiator: Initiator::Nvme { host_id: [0; 16], host_nqn: String::new() },
            qid: 0,
            sq_entries: 1,
            sqhd: 0,
            sqflow_disabled: false,
            aers: Vec::with_capacity(MAX_AERS),
            ns_cache: Arc::new(Vec::new()),
            ns_gen: u64::MAX,
            scratch: Vec::new(),
            landing: None,
            auth: None,
            auth_ok: true,
        }
    }

    pub fn opts(&self) -> &Arc<TransportOpts> {
        &self.opts
    }

    /// The connection completed a TLS handshake with a PSK identity naming these NQNs: Connect
    /// must name the same (NVMe/TCP §3.6.1.5).
    pub fn set_tls_peer(&mut self, p: fabrics::TlsPeer) {
        self.tls_peer = Some(p);
    }

    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// The connection is ending: start nothing new.
    pub fn set_closing(&mut self) {
        self.closing = true;
    }

    /// Most data one command may carry on this queue (MDTS; the admin queue also takes the
    /// in-capsule Connect and admin data).
    fn data_limit(&self, admin_q: bool) -> u32 {
        if admin_q {
            self.opts.max_io_size.max(self.opts.admin_icd())
        } else {
            self.opts.max_io_size
        }
    }

    /// A command capsule arrived with `data` (in-capsule bytes, or a buffer the transport
    /// already filled). Errors are the transport's to report (the host broke flow control).
    pub fn on_capsule<T: Transport>(&mut self, core: &mut Core, tx: &mut T, sqe: Sqe, data: CmdData<'_>) -> Result<(), QpError> {
        self.landing = None;
        // More commands than the SQ holds: the host broke flow control.
        let idx = self.free.pop().ok_or(QpError::SqOverflow)? as usize;
        self.sqhd = (self.sqhd + 1) % self.sq_entries.max(1);
        {
            let s = &mut self.slots[idx];
            s.state = SlotState::Exec;
            s.seq = s.seq.wrapping_add(1);
            s.sqe = sqe;
            s.len = 0;
            s.got = 0;
            s.pending = 0;
            s.err = Status::SUCCESS;
            s.job = Job::Other;
            s.bytes = 0;
            s.want = 0;
            s.reserved = 0;
            s.admit_on_data = false;
        }
        let fabrics_cmd = sqe.opcode() == aop::FABRICS;
        let dir = if fabrics_cmd { nio::direction(sqe.fctype()) } else { nio::direction(sqe.opcode()) };
        let g = sqe.sgl();
        // No transfer beyond MDTS in either direction (SPDK: Data SGL Length Invalid): every
        // buffer a command sizes is bounded by its SGL, so by this.
        let admin_q = fabrics_cmd || self.qid == 0;
        if g.length > self.data_limit(admin_q) && dir != Dir::None {
            self.respond(core, tx, idx, Status::generic(sc::SGL_DATA_LENGTH_INVALID), 0, 0);
            return Ok(());
        }
        // I/O data is budgeted (the admin queue's is small and bounded by its depth): Compare
        // holds the host's data and what the medium holds.
        if !admin_q && dir != Dir::None {
            self.slots[idx].want = if sqe.opcode() == iop::COMPARE { g.length.saturating_mul(2) } else { g.length };
        }
        match dir {
            Dir::HostToCtrl if g.length > 0 => {
                let len = g.length;
                self.slots[idx].len = len;
                match (g.id, data) {
                    (sgl::DATA_BLOCK_OFFSET, data) => {
                        let icd = if admin_q { self.opts.admin_icd() } else { self.opts.in_capsule_data_size.max(if fabrics_cmd { 1024 } else { 0 }) };
                        let off = g.address as usize;
                        let b = match data {
                            CmdData::Slice(d) if len <= icd && off.checked_add(len as usize).is_some_and(|e| e <= d.len()) => {
                                // Already here and bounded by the in-capsule size: kept while it waits.
                                let mut b = IoBuf::for_overwrite(len as usize);
                                b.copy_from_slice(&d[off..off + len as usize]);
                                Some(b)
                            }
                            CmdData::Buf(b) if len <= icd && off == 0 && b.len() >= len as usize => Some(b),
                            CmdData::Later(n) if len <= icd && off == 0 && n == len => {
                                // The bytes are on the wire already and must be taken off it, so
                                // the buffer is allocated before budget admission (bounded, like a
                                // copied slice, by the in-capsule size and the queue depth).
                                let s = &mut self.slots[idx];
                                s.buf = Some(IoBuf::for_overwrite(len as usize));
                                s.state = SlotState::AwaitData;
                                s.admit_on_data = true;
                                self.landing = Some(idx as u16);
                                return Ok(());
                            }
                            _ => None,
                        };
                        let Some(b) = b else {
                            self.respond(core, tx, idx, Status::generic(sc::SGL_DATA_LENGTH_INVALID), 0, 0);
                            return Ok(());
                        };
                        self.slots[idx].buf = Some(b);
                        if self.admit(idx) {
                            self.execute(core, tx, idx);
                        }
                    }
                    (sgl::TRANSPORT_DATA_BLOCK, CmdData::Buf(b)) if b.len() >= len as usize => {
                        // The transport holds the host's data already (loop): nothing to request.
                        self.slots[idx].buf = Some(b);
                        if self.admit(idx) {
                            self.execute(core, tx, idx);
                        }
                    }
                    // Bytes in a capsule whose SGL names the transport are not this command's
                    // data: ask for it, as before the split.
                    (sgl::TRANSPORT_DATA_BLOCK, CmdData::None | CmdData::Slice(_)) => {
                        if self.admit(idx) {
                            self.request_data(core, tx, idx);
                        }
                    }
                    _ => self.respond(core, tx, idx, Status::generic(sc::SGL_DESCRIPTOR_TYPE_INVALID), 0, 0),
                }
            }
            Dir::CtrlToHost => {
                if g.length > 0 && g.id != sgl::TRANSPORT_DATA_BLOCK {
                    self.respond(core, tx, idx, Status::generic(sc::SGL_DESCRIPTOR_TYPE_INVALID), 0, 0);
                    return Ok(());
                }
                self.slots[idx].len = g.length;
                if let CmdData::Buf(b) = data {
                    // Host memory to read into (loop): the read lands there.
                    self.slots[idx].buf = Some(b);
                }
                if self.admit(idx) {
                    self.execute(core, tx, idx);
                }
            }
            _ => self.execute(core, tx, idx),
        }
        Ok(())
    }

    /// After [`QPair::on_capsule`] with [`CmdData::Later`]: the transfer tag the in-capsule data
    /// lands under (with `data_buf` / `data_done`), or None if the command was answered already
    /// (its data is to be dropped).
    pub fn take_landing(&mut self) -> Option<u16> {
        self.landing.take()
    }

    /// Where the host's data for transfer tag `ttag` (command `cid`), bytes `off..off + len`,
    /// goes: the command's own pooled buffer, so the transport receives it in place.
    pub fn data_dest(&mut self, ttag: u16, cid: u16, off: u32, len: u32) -> Result<&mut [u8], QpError> {
        let s = self.slots.get_mut(ttag as usize).ok_or(QpError::BadTag)?;
        if s.state != SlotState::AwaitData || s.sqe.cid() != cid {
            return Err(QpError::BadTag);
        }
        if off != s.got || s.got.checked_add(len).is_none_or(|e| e > s.len) {
            return Err(QpError::OutOfRange);
        }
        let b = s.buf.as_mut().ok_or(QpError::BadTag)?;
        Ok(&mut b[off as usize..(off + len) as usize])
    }

    /// The whole buffer of a transfer still awaiting data (for a transport that reads the rest of
    /// a payload in place after [`QPair::data_dest`] checked its range).
    pub fn data_buf(&mut self, ttag: u16) -> Option<&mut [u8]> {
        let s = self.slots.get_mut(ttag as usize)?;
        if s.state != SlotState::AwaitData {
            return None;
        }
        s.buf.as_deref_mut()
    }

    /// `len` more bytes of transfer `ttag` have landed (see [`QPair::data_dest`]).
    pub fn data_done<T: Transport>(&mut self, core: &mut Core, tx: &mut T, ttag: u16, len: u32) {
        let idx = ttag as usize;
        let s = &mut self.slots[idx];
        s.got += len;
        if s.got == s.len {
            s.state = SlotState::Exec;
            if std::mem::take(&mut s.admit_on_data) && !self.admit(idx) {
                return; // parked with its data: `unpark` executes it
            }
            self.execute(core, tx, idx);
        }
    }

    /// Reserve slot `idx`'s data bytes, or park it behind the slots already waiting (FIFO, so a
    /// large command is not starved by small ones). True if it may go on now.
    fn admit(&mut self, idx: usize) -> bool {
        let want = self.slots[idx].want;
        if want == 0 || (self.parked.is_empty() && self.budget.try_reserve(want as usize)) {
            self.slots[idx].reserved = want;
            return true;
        }
        self.budget.note_wait();
        self.slots[idx].state = SlotState::Parked;
        self.parked.push_back(idx as u16);
        false
    }

    /// Start parked slots, oldest first, while the budget lets them.
    pub fn unpark<T: Transport>(&mut self, core: &mut Core, tx: &mut T) {
        while let Some(&i) = self.parked.front() {
            let idx = i as usize;
            let want = self.slots[idx].want;
            if self.closing || !self.budget.try_reserve(want as usize) {
                return;
            }
            self.parked.pop_front();
            let s = &mut self.slots[idx];
            s.reserved = want;
            s.state = SlotState::Exec;
            let h2c = nio::direction(s.sqe.opcode()) == Dir::HostToCtrl && s.buf.is_none();
            if h2c {
                self.request_data(core, tx, idx);
            } else {
                self.execute(core, tx, idx);
            }
        }
    }

    /// Allocate slot `idx`'s write buffer (its bytes are reserved) and ask the host for the data.
    fn request_data<T: Transport>(&mut self, core: &mut Core, tx: &mut T, idx: usize) {
        let s = &mut self.slots[idx];
        let len = s.len;
        s.buf = Some(IoBuf::for_overwrite(len as usize));
        s.state = SlotState::AwaitData;
        tx.request_data(core, s.sqe.cid(), idx as u16, len);
    }

    /// Give slot `idx`'s data bytes back to the budget.
    fn give_back(&mut self, idx: usize) {
        let n = std::mem::take(&mut self.slots[idx].reserved);
        if n > 0 {
            self.budget.release(n as usize);
        }
    }

    fn execute<T: Transport>(&mut self, core: &mut Core, tx: &mut T, idx: usize) {
        let sqe = self.slots[idx].sqe;
        if sqe.opcode() == aop::FABRICS {
            return self.fabrics(core, tx, idx, sqe);
        }
        if self.ctrlr.is_none() {
            return self.respond(core, tx, idx, Status::generic(sc::COMMAND_SEQUENCE_ERROR), 0, 0);
        }
        if !self.auth_ok {
            return self.respond(core, tx, idx, Status::specific(SC_AUTH_REQUIRED), 0, 0);
        }
        if self.qid == 0 {
            self.admin(core, tx, idx, sqe)
        } else {
            self.io(core, tx, idx, sqe)
        }
    }

    fn fabrics<T: Transport>(&mut self, core: &mut Core, tx: &mut T, idx: usize, sqe: Sqe) {
        match sqe.fctype() {
            fctype::CONNECT => {
                if self.ctrlr.is_some() {
                    return self.respond(core, tx, idx, Status::generic(sc::COMMAND_SEQUENCE_ERROR), 0, 0);
                }
                let data = self.slots[idx].buf.take();
                let r = fabrics::connect(&self.t, &self.opts, &self.listen, &sqe, data.as_deref().unwrap_or(&[]), self.me.reactor, &self.peer, self.tls_peer.as_ref());
                match r {
                    Ok(c) => {
                        self.qid = c.qid;
                        self.sq_entries = c.sq_entries;
                        self.sqhd = 1 % c.sq_entries;
                        self.sqflow_disabled = c.sqflow_disabled;
                        self.initiator = c.ctrlr.initiator.clone();
                        let cntlid = c.ctrlr.cntlid;
                        if c.qid == 0 {
                            *c.ctrlr.admin.lock().unwrap() = Some(self.me);
                            let reactors = self.t.reactors.clone();
                            let me = self.me;
                            *c.ctrlr.aen_kick.lock().unwrap() = Some(Box::new(move || {
                                reactors.send(me.reactor, move |r| {
                                    r.send_to_handler(me, Box::new(AenKick));
                                });
                            }));
                        }
                        self.ctrlr = Some(c.ctrlr);
                        // Preallocate one slot per SQ entry now that the depth is known.
                        let n = c.sq_entries as usize;
                        if self.slots.len() < n {
                            let old = self.slots.len();
                            self.slots.resize_with(n, Slot::new);
                            self.free.extend((old as u16..n as u16).rev());
                        }
                        self.parked.reserve(n);
                        self.tx_wait.reserve(n);
                        tracing::debug!(peer = %self.peer, qid = self.qid, cntlid, "connected");
                        let mut dw0 = cntlid as u32;
                        if let Some(keys) = c.auth {
                            let ctrlr = self.ctrlr.as_ref().unwrap();
                            if c.authenticated {
                                self.auth = Some(Box::new(TargetAuth::already_authenticated(keys, &ctrlr.hostnqn, &ctrlr.sub.nqn, core.now).offload()));
                            } else {
                                self.auth = Some(Box::new(TargetAuth::new(keys, &ctrlr.hostnqn, &ctrlr.sub.nqn, core.now).offload()));
                                self.auth_ok = false;
                                dw0 |= CONNECT_AUTHREQ_ATR;
                                if c.ascr {
                                    dw0 |= CONNECT_AUTHREQ_ASCR;
                                }
                            }
                        }
                        self.respond(core, tx, idx, Status::SUCCESS, dw0, 0);
                    }
                    Err((st, dw0)) => {
                        tracing::info!(peer = %self.peer, "Connect refused: {st}");
                        self.respond(core, tx, idx, st, dw0, 0)
                    }
                }
            }
            fctype::PROPERTY_GET | fctype::PROPERTY_SET if self.qid != 0 || self.ctrlr.is_none() => {
                self.respond(core, tx, idx, Status::generic(sc::COMMAND_SEQUENCE_ERROR), 0, 0)
            }
            fctype::PROPERTY_GET | fctype::PROPERTY_SET if !self.auth_ok => self.respond(core, tx, idx, Status::specific(SC_AUTH_REQUIRED), 0, 0),
            fctype::AUTH_SEND | fctype::AUTH_RECV => self.auth_cmd(core, tx, idx, sqe),
            fctype::PROPERTY_GET => {
                let r = fabrics::property_get(self.ctrlr.as_ref().unwrap(), &self.opts, &sqe);
                match r {
                    Ok(v) => self.respond(core, tx, idx, Status::SUCCESS, v as u32, (v >> 32) as u32),
                    Err(st) => self.respond(core, tx, idx, st, 0, 0),
                }
            }
            fctype::PROPERTY_SET => {
                let st = fabrics::property_set(self.ctrlr.as_ref().unwrap(), &sqe);
                self.respond(core, tx, idx, st, 0, 0)
            }
            fctype::DISCONNECT => {
                self.respond(core, tx, idx, Status::SUCCESS, 0, 0);
                self.closing = true;
                tx.close(core);
            }
            _ => self.respond(core, tx, idx, Status::generic(sc::INVALID_OPCODE), 0, 0),
        }
    }

    fn admin<T: Transport>(&mut self, core: &mut Core, tx: &mut T, idx: usize, sqe: Sqe) {
        let Some(c) = self.ctrlr.as_ref() else { return };
        if sqe.opcode() == aop::SET_FEATURES && c.sub.subtype == SubType::Nvme {
            let fid = (sqe.cdw(10) & 0xff) as u8;
            let save = sqe.cdw(10) & (1 << 31) != 0;
            if !save && (fid == nv::FEAT_RESERVATION_NOTIFICATION_MASK || fid == nv::FEAT_RESERVATION_PERSISTENCE) {
                c.touch_keepalive();
                return self.resv_set_features(core, tx, idx, sqe, fid);
            }
        }
        let buf = self.slots[idx].buf.take();
        let max_out = self.slots[idx].len as usize;
        let out = admin::execute(&self.t, &self.opts, c, &sqe, buf.as_deref().unwrap_or(&[]), max_out, &mut self.scratch);
        drop(buf);
        match out {
            Outcome::Complete { status, dw0 } => {
                if status.is_ok() && !self.scratch.is_empty() {
                    let n = self.scratch.len().min(self.slots[idx].len as usize);
                    if n > 0 {
                        tx.send_data(core, sqe.cid(), &self.scratch[..n]);
                    }
                }
                self.respond(core, tx, idx, status, dw0, 0)
            }
            Outcome::Aer => {
                if self.aers.len() >= MAX_AERS {
                    return self.respond(core, tx, idx, Status::specific(sc::ASYNC_EVENT_LIMIT_EXCEEDED), 0, 0);
                }
                self.aers.push(sqe.cid());
                self.free_slot(idx);
                self.deliver_aens(core, tx);
            }
            Outcome::Abort => {
                let sqid = sqe.cdw(10) & 0xffff;
                let cid = (sqe.cdw(10) >> 16) as u16;
                // Only parked AERs can be aborted; I/O in flight runs to completion (dw0 bit 0 = 1).
                if sqid == 0 {
                    if let Some(i) = self.aers.iter().position(|&a| a == cid) {
                        self.aers.remove(i);
                        self.send_cqe(core, tx, Cqe { cid, status: Status::generic(sc::ABORT_REQUESTED), ..Default::default() });
                        return self.respond(core, tx, idx, Status::SUCCESS, 0, 0);
                    }
                }
                self.respond(core, tx, idx, Status::SUCCESS, 1, 0)
            }
        }
    }

    /// AUTH_Send / AUTH_Receive (Base 2.0 §8.13): feed the queue's DH-HMAC-CHAP state machine.
    fn auth_cmd<T: Transport>(&mut self, core: &mut Core, tx: &mut T, idx: usize, sqe: Sqe) {
        let a = AuthSqe::decode(&sqe.0);
        if self.ctrlr.is_none() {
            return self.respond(core, tx, idx, Status::generic(sc::COMMAND_SEQUENCE_ERROR), 0, 0);
        }
        if !a.is_dhchap() {
            return self.respond(core, tx, idx, Status::generic(sc::INVALID_FIELD), 0, 0);
        }
        if self.auth.is_none() {
            // No key for this host: nothing to authenticate (Linux answers the same way).
            return self.respond(core, tx, idx, Status::generic(sc::COMMAND_SEQUENCE_ERROR), 0, 0);
        }
        let now = core.now;
        if sqe.fctype() == fctype::AUTH_SEND {
            let buf = self.slots[idx].buf.take();
            let data = buf.as_deref().unwrap_or(&[]);
            if a.len as usize != data.len() {
                return self.respond(core, tx, idx, Status::generic(sc::INVALID_FIELD), 0, 0);
            }
            // A Negotiate starts a transaction: keys changed by nvmf_subsystem_set_keys apply now.
            if data.len() >= 2 && data[..2] == [0, 0] {
                let c = self.ctrlr.as_ref().unwrap();
                let concat = self.auth.as_ref().unwrap().concat();
                if let Ok(Some(k)) = fabrics::auth_keys(&self.t, &c.sub, &c.hostnqn, concat) {
                    self.auth.as_mut().unwrap().set_keys(k);
                }
            }
            let r = self.auth.as_mut().unwrap().on_send(data, now);
            drop(buf);
            return self.auth_send_done(core, tx, idx, r);
        } else {
            let auth = self.auth.as_mut().unwrap();
            let out = auth.on_receive(now);
            let dead = auth.step() == Step::Dead;
            let n = out.len().min(a.len as usize).min(self.slots[idx].len as usize);
            if n > 0 {
                tx.send_data(core, sqe.cid(), &out[..n]);
            }
            self.respond(core, tx, idx, Status::SUCCESS, 0, 0);
            if dead {
                self.auth_failed(core, tx);
            } else if let Some(ci) = self.auth.as_mut().unwrap().concat_done.take() {
                self.store_generated_psk(ci);
            }
        }
        self.sync_auth();
    }

    /// Complete an AUTH_Send, or hand its DH work to the authentication thread: the command
    /// completes when the result comes back ([`AuthWorkDone`]).
    fn auth_send_done<T: Transport>(&mut self, core: &mut Core, tx: &mut T, idx: usize, r: SendResult) {
        match r {
            SendResult::Ok => self.respond(core, tx, idx, Status::SUCCESS, 0, 0),
            SendResult::InvalidField => self.respond(core, tx, idx, Status::generic(sc::INVALID_FIELD), 0, 0),
            SendResult::Abort => {
                self.respond(core, tx, idx, Status::SUCCESS, 0, 0);
                self.auth_failed(core, tx);
            }
            SendResult::Pending => {
                let Some(work) = self.auth.as_mut().and_then(|a| a.take_work()) else {
                    return self.respond(core, tx, idx, Status::generic(sc::INTERNAL_ERROR), 0, 0);
                };
                let reactors = self.t.reactors.clone();
                let me = self.me;
                let seq = self.slots[idx].seq;
                super::auth::worker::submit(move || {
                    let msg = AuthWorkDone { idx: idx as u16, seq, done: work.run() };
                    reactors.send(me.reactor, move |r| {
                        r.send_to_handler(me, Box::new(msg));
                    });
                });
                return;
            }
        }
        self.sync_auth();
    }

    /// The authentication thread finished the DH work of the AUTH_Send in slot `idx`.
    fn on_auth_work<T: Transport>(&mut self, core: &mut Core, tx: &mut T, d: AuthWorkDone) {
        let idx = d.idx as usize;
        if self.closing || self.slots.get(idx).is_none_or(|s| s.seq != d.seq) {
            return;
        }
        let Some(a) = self.auth.as_mut() else { return };
        let r = a.finish_work(d.done, core.now);
        self.auth_send_done(core, tx, idx, r);
    }

    /// The queue's view of its transaction: commands run once it is authenticated.
    fn sync_auth(&mut self) {
        if let Some(a) = self.auth.as_ref() {
            self.auth_ok = a.authenticated();
        }
        if self.auth_ok {
            self.note_auth_done();
        }
    }

    /// Record the finished transaction where nvmf_subsystem_get_qpairs reports it (management
    /// state, once per transaction).
    fn note_auth_done(&mut self) {
        let (Some(c), Some(a)) = (self.ctrlr.as_ref(), self.auth.as_ref()) else { return };
        if a.step() != Step::Negotiate {
            return; // still mid-transaction (a re-authentication)
        }
        let (d, g) = a.chosen();
        let info = super::subsystem::QpairAuth { state: "completed", digest: d.name(), dhgroup: g.name() };
        if let Some(q) = c.state.lock().unwrap().qpairs.iter_mut().find(|q| q.qid == self.qid) {
            q.auth = Some(info);
        }
    }

    /// Secure channel concatenation succeeded: derive the TLS PSK (as Linux does) and leave it,
    /// by identity, for the TLS handshakes of the host's next connections. It replaces the
    /// host's earlier one for this subsystem (connections made with that one stay up).
    fn store_generated_psk(&mut self, ci: super::auth::target::ConcatInfo) {
        let Some(c) = self.ctrlr.as_ref() else { return };
        match super::auth::psk::tls_psk_for(ci.digest, &ci.skey, &ci.c1, &ci.c2, &c.hostnqn, &c.sub.nqn) {
            Ok((identity, psk)) => {
                tracing::info!(%identity, "generated TLS PSK (secure channel concatenation)");
                self.t.forget_generated_psks(&c.hostnqn, &c.sub.nqn);
                self.t.generated_psks.lock().unwrap().insert(identity, psk);
            }
            Err(e) => tracing::warn!(hostnqn = %c.hostnqn, "secure channel concatenation: {e}"),
        }
    }

    /// A failed (re-)authentication ends the queue; on the admin queue, the controller
    /// (Linux nvmet_ctrl_fatal_error; SPDK disconnects the qpair).
    fn auth_failed<T: Transport>(&mut self, core: &mut Core, tx: &mut T) {
        self.auth_ok = false;
        if let Some(c) = self.ctrlr.as_ref() {
            tracing::info!(hostnqn = %c.hostnqn, qid = self.qid, "DH-HMAC-CHAP authentication failed: disconnecting");
            if self.qid == 0 {
                c.kill();
            }
        }
        self.closing = true;
        tx.close(core);
    }

    /// Complete parked AERs with pending events.
    pub(super) fn deliver_aens<T: Transport>(&mut self, core: &mut Core, tx: &mut T) {
        let Some(c) = self.ctrlr.clone() else { return };
        while !self.aers.is_empty() {
            let ev = {
                let mut st = c.state.lock().unwrap();
                if st.pending_events.is_empty() {
                    return;
                }
                st.pending_events.remove(0)
            };
            let cid = self.aers.remove(0);
            self.send_cqe(core, tx, Cqe { dw0: ev, cid, ..Default::default() });
        }
    }

    /// Refresh the namespace list if the subsystem changed it (one atomic load per command).
    pub(super) fn refresh_ns(&mut self) {
        let Some(c) = self.ctrlr.as_ref() else { return };
        let g = c.sub.ns_generation();
        if g != self.ns_gen {
            self.ns_cache = c.sub.namespaces();
            self.ns_gen = g;
        }
    }

    /// Index of namespace `nsid` in `ns_cache` (borrowed by index: no reference count traffic).
    pub(super) fn ns_index(&mut self, nsid: u32) -> Option<usize> {
        self.refresh_ns();
        self.ns_cache.binary_search_by_key(&nsid, |n| n.nsid).ok()
    }

    pub(super) fn maybe_finish<T: Transport>(&mut self, core: &mut Core, tx: &mut T, idx: usize) {
        let s = &self.slots[idx];
        if s.state == SlotState::Exec && s.pending == 0 {
            self.finish(core, tx, idx);
        }
    }

    /// All volume work of a command is done: send data and/or the response, free the slot.
    fn finish<T: Transport>(&mut self, core: &mut Core, tx: &mut T, idx: usize) {
        let s = &mut self.slots[idx];
        let cid = s.sqe.cid();
        let err = s.err;
        match s.job {
            Job::Read if err.is_ok() => {
                let mut b = s.buf.take().unwrap_or_else(|| IoBuf::new(0));
                b.set_len(s.bytes as usize);
                // The data transfer doubles as the completion only when the host turned SQ flow
                // control off (there is no SQ head to report).
                let completes = tx.data_completes() && self.sqflow_disabled;
                tx.send_data_buf(core, cid, b, completes);
                if completes {
                    self.hold_until_sent(tx, idx);
                    return;
                }
                self.respond(core, tx, idx, Status::SUCCESS, 0, 0)
            }
            Job::Compare if err.is_ok() => {
                let same = match (&s.buf, &s.buf2) {
                    (Some(a), Some(b)) => a[..s.bytes as usize] == b[..s.bytes as usize],
                    _ => false,
                };
                let st = if same { Status::SUCCESS } else { Status::media(sc::COMPARE_FAILURE) };
                self.respond(core, tx, idx, st, 0, 0)
            }
            _ => self.respond(core, tx, idx, err, 0, 0),
        }
    }

    /// Send the completion for slot `idx`; the slot is free once the host has taken it.
    pub(super) fn respond<T: Transport>(&mut self, core: &mut Core, tx: &mut T, idx: usize, status: Status, dw0: u32, dw1: u32) {
        let s = &mut self.slots[idx];
        let cid = s.sqe.cid();
        if let Some(b) = s.buf.take() {
            tx.recycle(b);
        }
        self.send_cqe(core, tx, Cqe { dw0, dw1, cid, status, ..Default::default() });
        self.hold_until_sent(tx, idx);
    }

    /// Keep slot `idx` busy until everything queued so far has been taken by the host.
    fn hold_until_sent<T: Transport>(&mut self, tx: &mut T, idx: usize) {
        let s = &mut self.slots[idx];
        s.state = SlotState::Sending;
        s.buf = None;
        s.buf2 = None;
        // Read data stays queued until taken, and so do its bytes; the rest is gone now.
        if s.job != Job::Read {
            self.give_back(idx);
        }
        self.tx_wait.push_back((tx.queued(), idx as u16));
    }

    /// Free the slots whose responses the host has taken; start parked commands.
    pub fn on_sent<T: Transport>(&mut self, core: &mut Core, tx: &mut T) {
        let w = tx.taken();
        while let Some(&(end, idx)) = self.tx_wait.front() {
            if end > w {
                break;
            }
            self.tx_wait.pop_front();
            self.free_slot(idx as usize);
        }
        self.unpark(core, tx);
    }

    fn send_cqe<T: Transport>(&mut self, core: &mut Core, tx: &mut T, mut cqe: Cqe) {
        cqe.sqhd = self.sqhd as u16;
        cqe.sqid = self.qid;
        tx.send_cqe(core, &cqe);
    }

    fn free_slot(&mut self, idx: usize) {
        self.give_back(idx);
        let s = &mut self.slots[idx];
        s.state = SlotState::Free;
        s.buf = None;
        s.buf2 = None;
        self.free.push(idx as u16);
    }

    /// Idle: give back the scratch buffer of admin answers.
    pub fn shrink_idle(&mut self) {
        if self.scratch.capacity() > 0 {
            self.scratch = Vec::new();
        }
    }

    /// A volume operation of slot `ev.tag` finished.
    pub fn on_io_complete<T: Transport>(&mut self, core: &mut Core, tx: &mut T, ev: IoEvent) {
        let idx = (ev.tag & 0xffff) as usize;
        let seq = (ev.tag >> 16) as u16;
        let Some(s) = self.slots.get_mut(idx) else { return };
        if s.state != SlotState::Exec || s.seq != seq || s.pending == 0 {
            return;
        }
        s.pending -= 1;
        if ev.status != 0 && s.err.is_ok() {
            s.err = errno_status(ev.status, s.job != Job::Other);
        }
        match s.job {
            Job::Read => s.buf = ev.buf,
            Job::Compare => s.buf2 = ev.buf,
            // A write's buffer comes back too: it may be host memory to return (loop).
            Job::Other => {
                if ev.buf.is_some() {
                    s.buf = ev.buf;
                }
            }
        }
        if s.pending == 0 {
            self.finish(core, tx, idx);
            self.unpark(core, tx);
        }
    }

    /// A message for this queue: an AEN kick or a deferred reservation completion.
    pub fn on_message<T: Transport>(&mut self, core: &mut Core, tx: &mut T, msg: Box<dyn std::any::Any + Send>) {
        let msg = match msg.downcast::<AenKick>() {
            Ok(_) => return self.deliver_aens(core, tx),
            Err(m) => m,
        };
        let msg = match msg.downcast::<super::resv_cmd::ResvDone>() {
            Ok(d) => return self.on_resv_done(core, tx, *d),
            Err(m) => m,
        };
        if let Ok(d) = msg.downcast::<AuthWorkDone>() {
            self.on_auth_work(core, tx, *d);
        }
    }

    /// About every 100 ms: Connect deadline, keep-alive, reservation notices. False when the
    /// connection should end now (a stranger that never connected).
    pub fn on_tick<T: Transport>(&mut self, core: &mut Core, tx: &mut T) -> bool {
        let Some(c) = self.ctrlr.clone() else {
            // Connected but no queue in time: a stranger holding a connection, not a host.
            // Linux and SPDK hosts connect in milliseconds.
            let limit = self.opts.connect_timeout_ms;
            if limit != 0 && core.now.duration_since(self.created) > Duration::from_millis(limit as u64) {
                tracing::info!(peer = %self.peer, "NVMe-oF: no Connect within connect_timeout_ms={limit}; closing the connection");
                return false;
            }
            return true;
        };
        if c.is_dead() {
            self.closing = true;
            tx.close(core);
        } else if self.auth.as_ref().is_some_and(|a| a.expired(core.now)) {
            tracing::info!(hostnqn = %c.hostnqn, qid = self.qid, "DH-HMAC-CHAP transaction timed out");
            self.auth_failed(core, tx);
        } else if self.qid == 0 && c.keepalive_expired(core.now) {
            tracing::warn!(cntlid = c.cntlid, subnqn = %c.sub.nqn, hostnqn = %c.hostnqn, "keep-alive timeout: tearing down the controller");
            c.kill();
            self.closing = true;
            tx.close(core);
        } else if self.qid == 0 {
            self.check_resv_events(core, tx, &c);
        }
        true
    }

    /// The connection is gone: the admin queue's end is the controller's end (NVMe-oF 3.3.3,
    /// 7.4.1); an I/O queue leaves its controller.
    pub fn on_close(&mut self) {
        self.closing = true;
        if let Some(c) = self.ctrlr.take() {
            if self.qid == 0 {
                *c.aen_kick.lock().unwrap() = None;
                c.kill();
            } else {
                c.state.lock().unwrap().qpairs.retain(|q| q.qid != self.qid);
            }
        }
    }
}

/// Map a bdev errno to an NVMe status: no space → capacity exceeded; otherwise a media error
/// (write fault 0x80 / unrecovered read error 0x81).
fn errno_status(errno: i32, read: bool) -> Status {
    match -errno {
        libc::ENOSPC => Status::generic(sc::CAPACITY_EXCEEDED),
        libc::EINVAL => Status::generic(sc::INVALID_FIELD),
        _ => Status::media(if read { 0x81 } else { 0x80 }),
    }
}
