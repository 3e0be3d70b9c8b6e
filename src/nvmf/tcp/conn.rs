//! One NVMe/TCP queue pair: a connection living on one reactor for its whole life.
//!
//! Receive: bytes land in a large buffer and every complete PDU in it is handled in one pass (many
//! commands per `read`). Send: responses and read data are appended to one output buffer and
//! written with one `write` per loop iteration in `on_flush`. Commands use preallocated slots
//! (index = R2T transfer tag = bdev tag), data uses pooled [`IoBuf`]s: no heap allocation per
//! command once the connection is warm. A malformed PDU gets a C2HTermReq and closes this
//! connection only.

use std::collections::VecDeque;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use super::outq::OutQueue;
use super::pdu::{self, flags, ty, CommonHeader, DataHeader, Digests, IcReq, IcResp, Layout, PduError};
use crate::bdev::{IoOp, IoRequest};
use crate::nvme::io::{self as nio, Dir, IoKind};
use crate::nvme::reservation as nv;
use crate::nvme::spec::{admin as aop, fctype, io as iop, sc, sgl, Cqe, Sqe, Status};
use crate::nvmf::admin::{self, Outcome};
use crate::nvmf::fabrics;
use crate::nvmf::{Ctrlr, ListenAddr, Namespace, SubType, Target, TransportOpts};
use crate::reactor::budget::ConnBudget;
use crate::reactor::{Core, Handler, HandlerRef, IoBuf, IoEvent};
use crate::volume::{Denied, Initiator};

const RBUF_MIN: usize = 256 << 10;
/// Receive buffer of a new or idle connection: the large one is allocated on the first read
/// that fills this, and given back after `IDLE_SHRINK` without input.
const RBUF_IDLE: usize = 4096;
const IDLE_SHRINK: Duration = Duration::from_secs(2);
/// Unsent output above which the connection stops reading commands (its host is not reading
/// what we send), and below which it starts again.
const TX_HIGH_WATER: usize = 2 << 20;
const TX_LOW_WATER: usize = 512 << 10;
const MAX_AERS: usize = 4;
/// Asynchronous event type "I/O command specific status" (Base 5.2, Figure 146).
const AER_TYPE_IO_SPECIFIC: u32 = 0x6;
/// How long a closing connection may take to drain its termination request.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    AwaitIcReq,
    Ready,
    Closing,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Free,
    /// Waiting for data-buffer budget (in `Conn::parked`): no R2T sent, nothing submitted.
    Parked,
    AwaitH2C,
    Exec,
    /// Answered; the slot is free once its response has reached the socket.
    Sending,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Job {
    Other,
    Read,
    Compare,
}

struct Slot {
    state: SlotState,
    /// Bumped on every use so a stale completion cannot complete a reused slot.
    seq: u16,
    sqe: Sqe,
    /// Host data (writes, compare, DSM ranges, Connect data) or data read for the host.
    buf: Option<IoBuf>,
    /// Compare: what the medium holds.
    buf2: Option<IoBuf>,
    /// Host buffer length from the SGL.
    len: u32,
    /// H2C bytes received so far.
    got: u32,
    pending: u32,
    err: Status,
    job: Job,
    bytes: u32,
    /// Data-buffer bytes this command needs from the connection's budget, and holds now.
    want: u32,
    reserved: u32,
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
        }
    }
}

/// Message to an admin queue pair: an asynchronous event is pending.
pub struct AenKick;

/// Message to a queue pair: a deferred reservation command (or reservation feature) completed
/// (made durable, or PREEMPT AND ABORT drained) on another thread.
struct ResvDone {
    idx: u16,
    seq: u16,
    c: nv::Completion,
}

/// The transport status of a reservation-layer status.
fn nv_status(s: nv::Status) -> Status {
    if s.is_success() {
        Status::SUCCESS
    } else {
        Status { sct: s.sct, sc: s.sc, dnr: true }
    }
}

fn is_resv_opcode(opc: u8) -> bool {
    matches!(opc, nv::OPC_RESERVATION_REGISTER | nv::OPC_RESERVATION_REPORT | nv::OPC_RESERVATION_ACQUIRE | nv::OPC_RESERVATION_RELEASE)
}

/// One counted NVMe/TCP connection (`Target::conns`); dropping it uncounts it.
pub struct Counted(pub(crate) Arc<Target>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.conns.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

pub struct Conn {
    _counted: Counted,
    t: Arc<Target>,
    opts: Arc<TransportOpts>,
    me: HandlerRef,
    sock: TcpStream,
    listen: Arc<ListenAddr>,
    peer: String,
    phase: Phase,
    created: Instant,
    closing_since: Option<Instant>,
    dg: Digests,
    hpda: u8,
    max_plen: usize,
    rbuf: Vec<u8>,
    /// Size of the receive buffer while busy (two of the largest PDUs).
    rsize: usize,
    rstart: usize,
    rend: usize,
    last_rx: Instant,
    /// Stopped reading: too much output is waiting for the host to read it.
    read_blocked: bool,
    out: OutQueue,
    /// Answered slots in `Sending`, with the stream position their response ends at.
    tx_wait: VecDeque<(u64, u16)>,
    slots: Vec<Slot>,
    free: Vec<u16>,
    /// This connection's share of the transport's data-buffer budget.
    budget: ConnBudget,
    /// Slots waiting for budget, oldest first (they get it in that order).
    parked: VecDeque<u16>,
    ctrlr: Option<Arc<Ctrlr>>,
    initiator: Initiator,
    qid: u16,
    sq_entries: u32,
    sqhd: u32,
    sqflow_disabled: bool,
    aers: Vec<u16>,
    ns_cache: Arc<Vec<Arc<Namespace>>>,
    ns_gen: u64,
    scratch: Vec<u8>,
}

impl Conn {
    /// Constructor for `Reactor::add_handler`: registers the socket for this handler.
    pub fn start(
        core: &mut Core,
        me: HandlerRef,
        counted: Counted,
        t: Arc<Target>,
        listen: Arc<ListenAddr>,
        mut sock: TcpStream,
        peer: SocketAddr,
    ) -> Option<Box<dyn Handler>> {
        let opts = t.transport()?;
        if let Err(e) = core.registry().register(&mut sock, me.token(), mio::Interest::READABLE | mio::Interest::WRITABLE) {
            tracing::warn!("cannot register NVMe/TCP connection: {e}");
            return None;
        }
        let icd = opts.admin_icd().max(opts.in_capsule_data_size) as usize;
        let max_plen = (72 + icd).max(24 + opts.maxh2cdata() as usize) + 2 * pdu::DIGEST_LEN + 128;
        let rsize = RBUF_MIN.max(2 * max_plen);
        let budget = ConnBudget::new(t.data_budget.clone(), opts.data_buffer_per_connection());
        tracing::debug!(%peer, reactor = me.reactor, "NVMe/TCP connection");
        Some(Box::new(Conn {
            _counted: counted,
            t,
            opts,
            me,
            sock,
            listen,
            peer: peer.to_string(),
            phase: Phase::AwaitIcReq,
            created: core.now,
            closing_since: None,
            dg: Digests::default(),
            hpda: 0,
            max_plen,
            rbuf: vec![0u8; RBUF_IDLE],
            rsize,
            rstart: 0,
            rend: 0,
            last_rx: core.now,
            read_blocked: false,
            out: OutQueue::default(),
            tx_wait: VecDeque::new(),
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
        }))
    }

    fn begin_close(&mut self, core: &mut Core) {
        if self.phase != Phase::Closing {
            self.phase = Phase::Closing;
            self.closing_since = Some(core.now);
        }
        core.want_flush(self.me);
    }

    /// A fatal transport error: C2HTermReq with the offending header, then close.
    fn fatal(&mut self, core: &mut Core, e: PduError, hdr: &[u8]) {
        tracing::warn!(peer = %self.peer, "NVMe/TCP: {e}; terminating the connection");
        let (fes, fei) = e.fes_fei();
        pdu::encode_term_req(&mut self.out.bytes, ty::C2H_TERM_REQ, fes, fei, hdr);
        self.begin_close(core);
    }

    fn read_socket(&mut self, core: &mut Core) {
        loop {
            if self.phase == Phase::Closing {
                return;
            }
            if self.out.backlog() > TX_HIGH_WATER {
                self.read_blocked = true;
                return;
            }
            if self.rend == self.rbuf.len() && self.rbuf.len() < self.rsize {
                // Busy: the full-size buffer, for many commands per read.
                self.rbuf.resize(self.rsize, 0);
            }
            if self.rend == self.rbuf.len() {
                if self.rstart == 0 {
                    // Cannot happen: the buffer holds two of the largest PDUs we accept.
                    self.fatal(core, PduError::BadPlen(0), &[]);
                    return;
                }
                self.rbuf.copy_within(self.rstart..self.rend, 0);
                self.rend -= self.rstart;
                self.rstart = 0;
            }
            let space = self.rbuf.len() - self.rend;
            match self.sock.read(&mut self.rbuf[self.rend..]) {
                Ok(0) => {
                    core.close(self.me);
                    self.phase = Phase::Closing;
                    return;
                }
                Ok(n) => {
                    self.rend += n;
                    self.last_rx = core.now;
                    self.process(core);
                    // A short read drained the socket: skip the EAGAIN read (new data raises a
                    // new edge-triggered event).
                    if n < space || self.read_blocked {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    core.close(self.me);
                    self.phase = Phase::Closing;
                    return;
                }
            }
        }
    }

    /// Handle every complete PDU in the receive buffer.
    fn process(&mut self, core: &mut Core) {
        let rbuf = std::mem::take(&mut self.rbuf);
        while self.phase != Phase::Closing && self.rend - self.rstart >= pdu::CH_LEN {
            if self.out.backlog() > TX_HIGH_WATER {
                // The rest waits in the buffer (and the socket) until the host reads.
                self.read_blocked = true;
                break;
            }
            let at = self.rstart;
            let Some(ch) = CommonHeader::parse(&rbuf[at..self.rend]) else { break };
            let (dg, max) = match self.phase {
                Phase::AwaitIcReq => (Digests::default(), 128),
                _ => (self.dg, self.max_plen),
            };
            let l = match pdu::frame(ch, dg, max) {
                Ok(l) => l,
                Err(e) => {
                    let end = self.rend.min(at + pdu::MAX_HLEN);
                    self.fatal(core, e, &rbuf[at..end]);
                    break;
                }
            };
            if self.rend - at < l.total {
                break;
            }
            let p = &rbuf[at..at + l.total];
            if let Err(e) = l.check_digests(p) {
                self.fatal(core, e, &p[..l.hlen]);
                break;
            }
            self.rstart += l.total;
            if let Err(e) = self.handle(core, &l, p) {
                self.fatal(core, e, &p[..l.hlen]);
                break;
            }
        }
        if self.rstart == self.rend {
            self.rstart = 0;
            self.rend = 0;
        }
        self.rbuf = rbuf;
        self.unpark(core);
    }

    fn handle(&mut self, core: &mut Core, l: &Layout, p: &[u8]) -> Result<(), PduError> {
        match (self.phase, l.ch.pdu_type) {
            (Phase::AwaitIcReq, ty::ICREQ) => {
                let r = IcReq::decode(p)?;
                self.dg = r.digests;
                self.hpda = r.hpda;
                IcResp { pfv: 0, cpda: 0, digests: r.digests, maxh2cdata: self.opts.maxh2cdata() }.encode(&mut self.out.bytes);
                core.want_flush(self.me);
                self.phase = Phase::Ready;
                Ok(())
            }
            (Phase::AwaitIcReq, _) => Err(PduError::Sequence),
            (_, ty::CAPSULE_CMD) => self.on_capsule(core, l, p),
            (_, ty::H2C_DATA) => self.on_h2c(core, l, p),
            (_, ty::H2C_TERM_REQ) => {
                let t = pdu::TermReq::decode(p)?;
                tracing::info!(peer = %self.peer, fes = t.fes, fei = t.fei, "host terminated the connection");
                core.close(self.me);
                self.phase = Phase::Closing;
                Ok(())
            }
            (_, ty::ICREQ) => Err(PduError::Sequence),
            (_, t) => Err(PduError::BadType(t)),
        }
    }

    fn on_capsule(&mut self, core: &mut Core, l: &Layout, p: &[u8]) -> Result<(), PduError> {
        let sqe = Sqe::from_slice(&p[8..72]).ok_or(PduError::BadPlen(l.ch.plen))?;
        // More commands than the SQ holds: the host broke flow control.
        let idx = self.free.pop().ok_or(PduError::Sequence)? as usize;
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
        }
        let fabrics_cmd = sqe.opcode() == aop::FABRICS;
        let dir = if fabrics_cmd { nio::direction(sqe.fctype()) } else { nio::direction(sqe.opcode()) };
        let g = sqe.sgl();
        let data = l.data(p);
        // No transfer beyond MDTS in either direction (SPDK: Data SGL Length Invalid): every
        // buffer a command sizes is bounded by its SGL, so by this.
        let admin_q = fabrics_cmd || self.qid == 0;
        let limit = if admin_q { self.opts.max_io_size.max(self.opts.admin_icd()) } else { self.opts.max_io_size };
        if g.length > limit && dir != Dir::None {
            self.complete_err(core, idx, Status::generic(sc::SGL_DATA_LENGTH_INVALID));
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
                match g.id {
                    sgl::DATA_BLOCK_OFFSET => {
                        let icd = if admin_q { self.opts.admin_icd() } else { self.opts.in_capsule_data_size.max(if fabrics_cmd { 1024 } else { 0 }) };
                        let off = g.address as usize;
                        let end = off.checked_add(len as usize);
                        if len > icd || end.is_none_or(|e| e > data.len()) {
                            self.complete_err(core, idx, Status::generic(sc::SGL_DATA_LENGTH_INVALID));
                            return Ok(());
                        }
                        // Already here and bounded by the in-capsule size: kept while it waits.
                        let mut b = IoBuf::new(len as usize);
                        b.copy_from_slice(&data[off..off + len as usize]);
                        let s = &mut self.slots[idx];
                        s.buf = Some(b);
                        s.len = len;
                        if self.admit(idx) {
                            self.execute(core, idx);
                        }
                    }
                    sgl::TRANSPORT_DATA_BLOCK => {
                        self.slots[idx].len = len;
                        if self.admit(idx) {
                            self.request_data(core, idx);
                        }
                    }
                    _ => self.complete_err(core, idx, Status::generic(sc::SGL_DESCRIPTOR_TYPE_INVALID)),
                }
            }
            Dir::CtrlToHost => {
                if g.length > 0 && g.id != sgl::TRANSPORT_DATA_BLOCK {
                    self.complete_err(core, idx, Status::generic(sc::SGL_DESCRIPTOR_TYPE_INVALID));
                    return Ok(());
                }
                self.slots[idx].len = g.length;
                if self.admit(idx) {
                    self.execute(core, idx);
                }
            }
            _ => self.execute(core, idx),
        }
        Ok(())
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
    fn unpark(&mut self, core: &mut Core) {
        while let Some(&i) = self.parked.front() {
            let idx = i as usize;
            let want = self.slots[idx].want;
            if self.phase == Phase::Closing || !self.budget.try_reserve(want as usize) {
                return;
            }
            self.parked.pop_front();
            let s = &mut self.slots[idx];
            s.reserved = want;
            s.state = SlotState::Exec;
            let h2c = nio::direction(s.sqe.opcode()) == Dir::HostToCtrl && s.buf.is_none();
            if h2c {
                self.request_data(core, idx);
            } else {
                self.execute(core, idx);
            }
        }
    }

    /// Allocate slot `idx`'s write buffer (its bytes are reserved) and ask the host for the data.
    fn request_data(&mut self, core: &mut Core, idx: usize) {
        let s = &mut self.slots[idx];
        let len = s.len;
        s.buf = Some(IoBuf::new(len as usize));
        s.state = SlotState::AwaitH2C;
        // One R2T for the whole transfer; the host splits it into H2CData PDUs of at most
        // MAXH2CDATA.
        pdu::encode_r2t(&mut self.out.bytes, self.dg, DataHeader { cccid: s.sqe.cid(), ttag: idx as u16, offset: 0, length: len });
        core.want_flush(self.me);
    }

    /// Give slot `idx`'s data bytes back to the budget.
    fn give_back(&mut self, idx: usize) {
        let n = std::mem::take(&mut self.slots[idx].reserved);
        if n > 0 {
            self.budget.release(n as usize);
        }
    }

    fn on_h2c(&mut self, core: &mut Core, l: &Layout, p: &[u8]) -> Result<(), PduError> {
        let h = DataHeader::decode(p)?;
        let data = l.data(p);
        let idx = h.ttag as usize;
        let s = self.slots.get_mut(idx).ok_or(PduError::BadField(10))?;
        if s.state != SlotState::AwaitH2C || s.sqe.cid() != h.cccid {
            return Err(PduError::BadField(10));
        }
        if data.len() != h.length as usize {
            return Err(PduError::BadField(16));
        }
        if h.offset != s.got || h.length > self.opts.maxh2cdata() || s.got + h.length > s.len {
            return Err(PduError::DataOutOfRange);
        }
        let b = s.buf.as_mut().ok_or(PduError::Sequence)?;
        b[h.offset as usize..(h.offset + h.length) as usize].copy_from_slice(data);
        s.got += h.length;
        if s.got == s.len {
            s.state = SlotState::Exec;
            self.execute(core, idx);
        }
        Ok(())
    }

    fn execute(&mut self, core: &mut Core, idx: usize) {
        let sqe = self.slots[idx].sqe;
        if sqe.opcode() == aop::FABRICS {
            return self.fabrics(core, idx, sqe);
        }
        let Some(ctrlr) = self.ctrlr.clone() else {
            return self.complete_err(core, idx, Status::generic(sc::COMMAND_SEQUENCE_ERROR));
        };
        if self.qid == 0 {
            self.admin(core, idx, sqe, &ctrlr)
        } else {
            self.io(core, idx, sqe)
        }
    }

    fn fabrics(&mut self, core: &mut Core, idx: usize, sqe: Sqe) {
        match sqe.fctype() {
            fctype::CONNECT => {
                if self.ctrlr.is_some() {
                    return self.complete_err(core, idx, Status::generic(sc::COMMAND_SEQUENCE_ERROR));
                }
                let data = self.slots[idx].buf.take();
                let r = fabrics::connect(&self.t, &self.opts, &self.listen, &sqe, data.as_deref().unwrap_or(&[]), self.me.reactor, &self.peer);
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
                        tracing::debug!(peer = %self.peer, qid = self.qid, cntlid, "connected");
                        self.respond(core, idx, Status::SUCCESS, cntlid as u32, 0);
                    }
                    Err((st, dw0)) => {
                        tracing::info!(peer = %self.peer, "Connect refused: {st}");
                        self.respond(core, idx, st, dw0, 0)
                    }
                }
            }
            fctype::PROPERTY_GET | fctype::PROPERTY_SET if self.qid != 0 || self.ctrlr.is_none() => {
                self.complete_err(core, idx, Status::generic(sc::COMMAND_SEQUENCE_ERROR))
            }
            fctype::PROPERTY_GET => {
                let c = self.ctrlr.clone().unwrap();
                match fabrics::property_get(&c, &self.opts, &sqe) {
                    Ok(v) => self.respond(core, idx, Status::SUCCESS, v as u32, (v >> 32) as u32),
                    Err(st) => self.complete_err(core, idx, st),
                }
            }
            fctype::PROPERTY_SET => {
                let c = self.ctrlr.clone().unwrap();
                let st = fabrics::property_set(&c, &sqe);
                self.respond(core, idx, st, 0, 0)
            }
            fctype::DISCONNECT => {
                self.respond(core, idx, Status::SUCCESS, 0, 0);
                self.begin_close(core);
            }
            _ => self.complete_err(core, idx, Status::generic(sc::INVALID_OPCODE)),
        }
    }

    fn admin(&mut self, core: &mut Core, idx: usize, sqe: Sqe, c: &Arc<Ctrlr>) {
        if sqe.opcode() == aop::SET_FEATURES && c.sub.subtype == SubType::Nvme {
            let fid = (sqe.cdw(10) & 0xff) as u8;
            let save = sqe.cdw(10) & (1 << 31) != 0;
            if !save && (fid == nv::FEAT_RESERVATION_NOTIFICATION_MASK || fid == nv::FEAT_RESERVATION_PERSISTENCE) {
                c.touch_keepalive();
                return self.resv_set_features(core, idx, sqe, fid);
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
                        let scratch = std::mem::take(&mut self.scratch);
                        self.c2h(sqe.cid(), &scratch[..n], false);
                        self.scratch = scratch;
                    }
                }
                self.respond(core, idx, status, dw0, 0)
            }
            Outcome::Aer => {
                if self.aers.len() >= MAX_AERS {
                    return self.complete_err(core, idx, Status::specific(sc::ASYNC_EVENT_LIMIT_EXCEEDED));
                }
                self.aers.push(sqe.cid());
                self.free_slot(idx);
                self.deliver_aens(core);
            }
            Outcome::Abort => {
                let sqid = sqe.cdw(10) & 0xffff;
                let cid = (sqe.cdw(10) >> 16) as u16;
                // Only parked AERs can be aborted; I/O in flight runs to completion (dw0 bit 0 = 1).
                if sqid == 0 {
                    if let Some(i) = self.aers.iter().position(|&a| a == cid) {
                        self.aers.remove(i);
                        self.send_cqe(core, Cqe { cid, status: Status::generic(sc::ABORT_REQUESTED), ..Default::default() });
                        return self.respond(core, idx, Status::SUCCESS, 0, 0);
                    }
                }
                self.respond(core, idx, Status::SUCCESS, 1, 0)
            }
        }
    }

    /// Complete parked AERs with pending events.
    fn deliver_aens(&mut self, core: &mut Core) {
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
            self.send_cqe(core, Cqe { dw0: ev, cid, ..Default::default() });
        }
    }

    fn lookup_ns(&mut self, nsid: u32) -> Option<Arc<Namespace>> {
        let c = self.ctrlr.as_ref()?;
        let g = c.sub.ns_generation();
        if g != self.ns_gen {
            self.ns_cache = c.sub.namespaces();
            self.ns_gen = g;
        }
        let i = self.ns_cache.binary_search_by_key(&nsid, |n| n.nsid).ok()?;
        Some(self.ns_cache[i].clone())
    }

    fn io(&mut self, core: &mut Core, idx: usize, sqe: Sqe) {
        if self.ctrlr.as_ref().is_some_and(|c| c.sub.subtype == SubType::Discovery) {
            return self.complete_err(core, idx, Status::generic(sc::INVALID_OPCODE));
        }
        if sqe.opcode() == iop::FLUSH && sqe.nsid() == 0xffff_ffff {
            // Flush every namespace.
            let all: Vec<u32> = {
                self.lookup_ns(0);
                self.ns_cache.iter().map(|n| n.nsid).collect()
            };
            for nsid in all {
                if let Some(ns) = self.lookup_ns(nsid) {
                    self.submit(core, idx, &ns, IoOp::Flush, 0, 0, None, false);
                }
            }
            return self.maybe_finish(core, idx);
        }
        let Some(ns) = self.lookup_ns(sqe.nsid()) else {
            return self.complete_err(core, idx, Status::generic(sc::INVALID_NAMESPACE));
        };
        if is_resv_opcode(sqe.opcode()) {
            return self.reservation(core, idx, sqe, &ns);
        }
        let bs = ns.volume.block_size();
        let plan = match nio::plan(&sqe, ns.volume.num_blocks(), bs, self.opts.max_io_size) {
            Ok(p) => p,
            Err(st) => return self.complete_err(core, idx, st),
        };
        let s = &mut self.slots[idx];
        s.bytes = plan.bytes;
        match plan.kind {
            IoKind::Read => {
                if s.len < plan.bytes {
                    return self.complete_err(core, idx, Status::generic(sc::SGL_DATA_LENGTH_INVALID));
                }
                s.job = Job::Read;
                let b = IoBuf::new(plan.bytes as usize);
                self.submit(core, idx, &ns, IoOp::Read, plan.slba, plan.nlb, Some(b), false);
            }
            IoKind::Write | IoKind::Compare => {
                let Some(mut b) = s.buf.take().filter(|b| b.len() >= plan.bytes as usize) else {
                    return self.complete_err(core, idx, Status::generic(sc::SGL_DATA_LENGTH_INVALID));
                };
                b.set_len(plan.bytes as usize);
                if plan.kind == IoKind::Write {
                    self.submit(core, idx, &ns, IoOp::Write, plan.slba, plan.nlb, Some(b), plan.fua);
                } else {
                    s.job = Job::Compare;
                    s.buf = Some(b);
                    let r = IoBuf::new(plan.bytes as usize);
                    self.submit(core, idx, &ns, IoOp::Read, plan.slba, plan.nlb, Some(r), false);
                }
            }
            IoKind::Flush => self.submit(core, idx, &ns, IoOp::Flush, 0, 0, None, false),
            IoKind::WriteZeroes => self.submit(core, idx, &ns, IoOp::WriteZeroes, plan.slba, plan.nlb, None, plan.fua),
            IoKind::Deallocate => {
                let Some(ranges) = s.buf.take().filter(|b| b.len() >= plan.bytes as usize) else {
                    return self.complete_err(core, idx, Status::generic(sc::SGL_DATA_LENGTH_INVALID));
                };
                let n = plan.nlb as usize;
                let nblocks = ns.volume.num_blocks();
                // Check every range first so the command fails whole, never half done.
                for i in 0..n {
                    let (slba, nlb) = nio::dsm_range(&ranges, i).unwrap_or((0, 0));
                    if slba.checked_add(nlb).is_none_or(|e| e > nblocks) {
                        return self.complete_err(core, idx, Status::generic(sc::LBA_OUT_OF_RANGE));
                    }
                }
                for i in 0..n {
                    let (slba, nlb) = nio::dsm_range(&ranges, i).unwrap_or((0, 0));
                    if nlb > 0 {
                        self.submit(core, idx, &ns, IoOp::Unmap, slba, nlb, None, false);
                    }
                }
            }
            IoKind::DsmHint => {
                // Nothing reaches the bdev, but the command is write-class under a reservation.
                if let Err(d) = ns.volume.check(&self.initiator, nv::io_class(sqe.opcode())) {
                    return self.complete_err(core, idx, denied_status(d));
                }
            }
        }
        self.maybe_finish(core, idx);
    }

    /// A `done` callback for the reservation engine that completes slot `idx` by a message to
    /// this queue pair (it runs on the persist thread or another reactor).
    fn resv_waker(&self, idx: usize) -> impl Fn(nv::Completion) + Send + Sync + 'static {
        let reactors = self.t.reactors.clone();
        let me = self.me;
        let seq = self.slots[idx].seq;
        move |c: nv::Completion| {
            let msg = ResvDone { idx: idx as u16, seq, c };
            reactors.send(me.reactor, move |r| {
                r.send_to_handler(me, Box::new(msg));
            });
        }
    }

    /// Reservation Register / Report / Acquire / Release on namespace `ns`.
    fn reservation(&mut self, core: &mut Core, idx: usize, sqe: Sqe, ns: &Arc<Namespace>) {
        let data = self.slots[idx].buf.take();
        let max_out = self.slots[idx].len as usize;
        self.slots[idx].pending = 1;
        let wake = self.resv_waker(idx);
        let r = nv::execute(&ns.volume, &self.initiator, sqe.opcode(), sqe.cdw(10), sqe.cdw(11), data.as_deref().unwrap_or(&[]), max_out, wake);
        if let Some(c) = r {
            self.resv_complete(core, idx, c);
        }
    }

    /// Set Features 82h (notification mask) / 83h (persistence) on the namespace named by NSID,
    /// or on every namespace for NSID 0 or FFFFFFFFh. Completes by message once every volume
    /// has answered (83h is durable first).
    fn resv_set_features(&mut self, core: &mut Core, idx: usize, sqe: Sqe, fid: u8) {
        self.lookup_ns(0);
        let nsid = sqe.nsid();
        let mut targets: Vec<Arc<Namespace>> = Vec::new();
        for n in self.ns_cache.iter() {
            if (nsid == 0 || nsid == 0xffff_ffff || n.nsid == nsid) && !targets.iter().any(|t| Arc::ptr_eq(&t.volume, &n.volume)) {
                targets.push(n.clone());
            }
        }
        if targets.is_empty() {
            return self.complete_err(core, idx, Status::generic(sc::INVALID_NAMESPACE));
        }
        self.slots[idx].pending = 1;
        let wake = Arc::new(self.resv_waker(idx));
        let left = Arc::new(std::sync::Mutex::new((targets.len(), nv::Status::SUCCESS)));
        for n in targets {
            let (left, wake) = (left.clone(), wake.clone());
            let one = move |c: nv::Completion| {
                let mut g = left.lock().unwrap();
                g.0 -= 1;
                if !c.status.is_success() {
                    g.1 = c.status;
                }
                if g.0 == 0 {
                    let status = g.1;
                    drop(g);
                    (*wake)(nv::Completion { status, data: Vec::new() });
                }
            };
            let one = Arc::new(one);
            let deferred = one.clone();
            if let Some(c) = nv::set_features(&n.volume, &self.initiator, fid, sqe.cdw(11), move |c| (*deferred)(c)) {
                (*one)(c);
            }
        }
    }

    /// Finish a reservation command: its data (Report) and its response.
    fn resv_complete(&mut self, core: &mut Core, idx: usize, c: nv::Completion) {
        let s = &mut self.slots[idx];
        s.pending = 0;
        let (cid, len) = (s.sqe.cid(), s.len as usize);
        if c.status.is_success() {
            let n = c.data.len().min(len);
            if n > 0 {
                self.c2h(cid, &c.data[..n], false);
            }
        }
        self.respond(core, idx, nv_status(c.status), 0, 0)
    }

    /// Admin queue: raise the Reservation Log Page Available event (type 6h, info 0h, log 80h)
    /// when the engine holds a notification for this host on any namespace. Masked until the host
    /// reads log page 80h, like the namespace notice. One atomic load per volume when idle.
    fn check_resv_events(&mut self, core: &mut Core, c: &Arc<Ctrlr>) {
        if c.sub.subtype != SubType::Nvme || c.state.lock().unwrap().resv_notice_masked {
            return;
        }
        self.lookup_ns(0);
        if !self.ns_cache.iter().any(|n| nv::notification_pending(&n.volume, &self.initiator)) {
            return;
        }
        {
            let mut st = c.state.lock().unwrap();
            st.resv_notice_masked = true;
            st.pending_events.push(crate::nvme::spec::aer_dw0(AER_TYPE_IO_SPECIFIC, 0, nv::LOG_RESERVATION_NOTIFICATION));
        }
        self.deliver_aens(core);
    }

    #[allow(clippy::too_many_arguments)]
    fn submit(&mut self, core: &mut Core, idx: usize, ns: &Arc<Namespace>, op: IoOp, off: u64, n: u64, buf: Option<IoBuf>, fua: bool) {
        let s = &mut self.slots[idx];
        let tag = idx as u64 | (s.seq as u64) << 16;
        s.pending += 1;
        let req = IoRequest { op, offset_blocks: off, num_blocks: n, buf, fua, owner: self.me, tag };
        if let Err((req, why)) = ns.volume.submit(core, &self.initiator, req) {
            let s = &mut self.slots[idx];
            s.pending -= 1;
            if s.err.is_ok() {
                s.err = denied_status(why);
            }
            drop(req);
        }
    }

    fn maybe_finish(&mut self, core: &mut Core, idx: usize) {
        let s = &self.slots[idx];
        if s.state == SlotState::Exec && s.pending == 0 {
            self.finish(core, idx);
        }
    }

    /// All volume work of a command is done: send data and/or the response, free the slot.
    fn finish(&mut self, core: &mut Core, idx: usize) {
        let s = &mut self.slots[idx];
        let cid = s.sqe.cid();
        let err = s.err;
        match s.job {
            Job::Read if err.is_ok() => {
                let b = s.buf.take().unwrap_or_else(|| IoBuf::new(0));
                // SUCCESS flag: the data PDU doubles as the completion, allowed only when the host
                // turned SQ flow control off (there is no SQ head to report).
                let success = self.opts.c2h_success && self.sqflow_disabled;
                self.c2h_buf(cid, b, success);
                if success {
                    self.hold_until_sent(idx);
                    core.want_flush(self.me);
                    return;
                }
                self.respond(core, idx, Status::SUCCESS, 0, 0)
            }
            Job::Compare if err.is_ok() => {
                let same = match (&s.buf, &s.buf2) {
                    (Some(a), Some(b)) => a[..s.bytes as usize] == b[..s.bytes as usize],
                    _ => false,
                };
                let st = if same { Status::SUCCESS } else { Status::media(sc::COMPARE_FAILURE) };
                self.respond(core, idx, st, 0, 0)
            }
            _ => self.respond(core, idx, err, 0, 0),
        }
    }

    fn c2h(&mut self, cid: u16, data: &[u8], success: bool) {
        let fl = flags::LAST_PDU | if success { flags::SUCCESS } else { 0 };
        let h = DataHeader { cccid: cid, ttag: 0, offset: 0, length: data.len() as u32 };
        pdu::encode_data_header(&mut self.out.bytes, ty::C2H_DATA, self.dg, self.hpda, h, fl);
        self.out.bytes.extend_from_slice(data);
        pdu::put_data_digest(&mut self.out.bytes, self.dg, data);
    }

    /// C2HData whose payload is a pooled buffer: it goes out by reference (writev), not copied.
    fn c2h_buf(&mut self, cid: u16, data: IoBuf, success: bool) {
        let fl = flags::LAST_PDU | if success { flags::SUCCESS } else { 0 };
        let h = DataHeader { cccid: cid, ttag: 0, offset: 0, length: data.len() as u32 };
        pdu::encode_data_header(&mut self.out.bytes, ty::C2H_DATA, self.dg, self.hpda, h, fl);
        let digest = self.dg.data && !data.is_empty();
        let crc = if digest { crc32c::crc32c(&data) } else { 0 };
        self.out.push_buf(data);
        if digest {
            self.out.bytes.extend_from_slice(&crc.to_le_bytes());
        }
    }

    fn complete_err(&mut self, core: &mut Core, idx: usize, st: Status) {
        self.respond(core, idx, st, 0, 0)
    }

    /// Send the CapsuleResp for slot `idx`; the slot is free once it has been written.
    fn respond(&mut self, core: &mut Core, idx: usize, status: Status, dw0: u32, dw1: u32) {
        let cid = self.slots[idx].sqe.cid();
        self.send_cqe(core, Cqe { dw0, dw1, cid, status, ..Default::default() });
        self.hold_until_sent(idx);
    }

    /// Keep slot `idx` busy until everything queued so far has reached the socket: a host that
    /// does not read its completions cannot make us hold more than its queue depth of them.
    fn hold_until_sent(&mut self, idx: usize) {
        let s = &mut self.slots[idx];
        s.state = SlotState::Sending;
        s.buf = None;
        s.buf2 = None;
        // Read data stays in the output queue until written, and so do its bytes; the rest of
        // the command's data is gone now.
        if s.job != Job::Read {
            self.give_back(idx);
        }
        self.tx_wait.push_back((self.out.end(), idx as u16));
    }

    /// Free the slots whose responses the socket has taken.
    fn release_sent(&mut self) {
        let w = self.out.written();
        while let Some(&(end, idx)) = self.tx_wait.front() {
            if end > w {
                break;
            }
            self.tx_wait.pop_front();
            self.free_slot(idx as usize);
        }
    }

    /// Read again once the host has taken enough of our output.
    fn resume_reading(&mut self, core: &mut Core) {
        if self.read_blocked && self.phase != Phase::Closing && self.out.backlog() <= TX_LOW_WATER {
            self.read_blocked = false;
            self.process(core);
            if !self.read_blocked {
                self.read_socket(core);
            }
        }
    }

    /// Idle: give back the large receive buffer (keeping any partial PDU) and the send buffers.
    fn shrink_idle(&mut self) {
        let keep = self.rend - self.rstart;
        let size = keep.max(RBUF_IDLE);
        if self.rbuf.len() > size {
            let mut b = vec![0u8; size];
            b[..keep].copy_from_slice(&self.rbuf[self.rstart..self.rend]);
            self.rbuf = b;
            self.rstart = 0;
            self.rend = keep;
        }
        self.out.shrink();
        if self.scratch.capacity() > 0 {
            self.scratch = Vec::new();
        }
    }

    fn send_cqe(&mut self, core: &mut Core, mut cqe: Cqe) {
        cqe.sqhd = self.sqhd as u16;
        cqe.sqid = self.qid;
        pdu::encode_capsule_resp(&mut self.out.bytes, self.dg, &cqe.encode());
        core.want_flush(self.me);
    }

    fn free_slot(&mut self, idx: usize) {
        self.give_back(idx);
        let s = &mut self.slots[idx];
        s.state = SlotState::Free;
        s.buf = None;
        s.buf2 = None;
        self.free.push(idx as u16);
    }

    fn flush(&mut self, core: &mut Core) {
        let r = self.out.write_to(self.sock.as_raw_fd());
        self.release_sent();
        self.unpark(core);
        match r {
            Ok(true) => {}
            Ok(false) => return self.resume_reading(core), // the writable event resumes the rest
            Err(_) => {
                self.out.clear();
                core.close(self.me);
                return;
            }
        }
        if self.phase == Phase::Closing {
            // Discard unread input first: closing with unread bytes makes the kernel send a reset,
            // which can destroy the termination request before the host reads it.
            let mut sink = [0u8; 4096];
            while matches!(self.sock.read(&mut sink), Ok(n) if n > 0) {}
            let _ = self.sock.shutdown(std::net::Shutdown::Write);
            core.close(self.me);
            return;
        }
        self.resume_reading(core);
    }
}

/// The volume's refusal in NVMe terms (one mapping, in the command set).
fn denied_status(d: Denied) -> Status {
    nv_status(nv::denied_status(d))
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

impl Handler for Conn {
    fn on_ready(&mut self, core: &mut Core, _me: HandlerRef, ev: &mio::event::Event) {
        if ev.is_writable() && self.out.pending() {
            self.flush(core);
        }
        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
            self.read_socket(core);
        }
    }

    fn on_io_complete(&mut self, core: &mut Core, _me: HandlerRef, ev: IoEvent) {
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
            Job::Other => {}
        }
        if s.pending == 0 {
            self.finish(core, idx);
            self.unpark(core);
        }
    }

    fn on_tick(&mut self, core: &mut Core, me: HandlerRef) {
        if let Some(since) = self.closing_since {
            if core.now.duration_since(since) > CLOSE_GRACE {
                core.close(me);
            }
            return;
        }
        if core.now.duration_since(self.last_rx) > IDLE_SHRINK {
            self.shrink_idle();
        }
        let Some(c) = self.ctrlr.clone() else {
            // Connected but no queue (no ICReq, or no Connect) in time: a stranger holding a
            // connection, not a host. Linux and SPDK hosts connect in milliseconds.
            let limit = self.opts.connect_timeout_ms;
            if limit != 0 && core.now.duration_since(self.created) > Duration::from_millis(limit as u64) {
                tracing::info!(peer = %self.peer, phase = ?self.phase, "NVMe/TCP: no Connect within connect_timeout_ms={limit}; closing the connection");
                core.close(me);
            }
            return;
        };
        if c.is_dead() {
            self.begin_close(core);
        } else if self.qid == 0 && c.keepalive_expired(core.now) {
            tracing::warn!(cntlid = c.cntlid, subnqn = %c.sub.nqn, hostnqn = %c.hostnqn, "keep-alive timeout: tearing down the controller");
            c.kill();
            self.begin_close(core);
        } else if self.qid == 0 {
            self.check_resv_events(core, &c);
        }
    }

    fn on_flush(&mut self, core: &mut Core, _me: HandlerRef) {
        self.flush(core);
    }

    fn on_message(&mut self, core: &mut Core, _me: HandlerRef, msg: Box<dyn std::any::Any + Send>) {
        let msg = match msg.downcast::<AenKick>() {
            Ok(_) => return self.deliver_aens(core),
            Err(m) => m,
        };
        if let Ok(d) = msg.downcast::<ResvDone>() {
            let idx = d.idx as usize;
            let live = self.slots.get(idx).is_some_and(|s| s.state == SlotState::Exec && s.seq == d.seq && s.pending == 1);
            if live {
                self.resv_complete(core, idx, d.c);
                self.unpark(core);
            }
        }
    }

    fn on_close(&mut self, core: &mut Core, _me: HandlerRef) {
        let _ = core.registry().deregister(&mut self.sock);
        if let Some(c) = self.ctrlr.take() {
            if self.qid == 0 {
                // The admin queue's end is the controller's end (NVMe-oF 3.3.3, 7.4.1).
                *c.aen_kick.lock().unwrap() = None;
                c.kill();
            } else {
                c.state.lock().unwrap().qpairs.retain(|q| q.qid != self.qid);
            }
        }
    }
}
