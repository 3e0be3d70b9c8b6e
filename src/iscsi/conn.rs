//! One iSCSI connection on a reactor: login, then the full feature phase — SCSI commands through
//! [`ScsiPort`], Data-Out gathering with immediate, unsolicited and R2T-solicited data, Data-In
//! with status in the last PDU, CmdSN window, NOP pings, task management, Text (SendTargets),
//! Logout, Reject. A session may have several connections on several reactors (MC/S, see
//! [`super::session`]): they share ExpCmdSN, and a command received ahead of it waits in its task
//! slot until the connections holding the commands before it have started them.
//!
//! The I/O path does not allocate per command: task slots are preallocated, data buffers come from
//! the IoBuf pool, the receive and transmit buffers are reused, and all output of one loop
//! iteration goes out in one write from `on_flush`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::Interest;

use super::login::{self, Login, LoginCtx, Negotiated, SessionType, Step};
use crate::reactor::outq::OutQueue;
use super::pdu::{self, at, op, reject, Bhs, F_FINAL, F_OVERFLOW, F_READ, F_STATUS, F_UNDERFLOW, F_WRITE, RESERVED_TAG};
use super::session::{JoinError, Member, Session};
use super::target::{ConnInfo, ConnSlot, Target};
use super::tasks::{DataOutError, Task, TaskTable};
use super::tmf;
use crate::reactor::budget::ConnBudget;
use crate::reactor::rxloop::{self, Landing, RxLoop, RxProto, RxStats};
use crate::reactor::{Core, Handler, HandlerRef, IoBuf, IoEvent};
use crate::scsi::cdb::Residual;
use crate::scsi::{decode_lun, status, DataDir, ScsiCommand, ScsiPort, ScsiResponse, TaskAttr};
use crate::reservation::Nexus;
use crate::scsi::pr::PreemptAbort;
use crate::volume::{Initiator, Volume};

/// Close a connection, whatever reactor it is on.
fn close_conn(core: &Core, h: HandlerRef) {
    core.reactors().send(h.reactor, move |r| {
        r.with_handler(h, |_, core, h| core.close(h));
    });
}

/// A PREEMPT AND ABORT of another connection that may concern this one (see
/// `Conn::abort_preempted`).
struct VictimAbort(Arc<PreemptAbort>);

/// Data-In payloads at least this long go out from their own buffer instead of being copied.
const ZERO_COPY_MIN: usize = 2048;
/// Receive buffer: several maximal PDUs, so one recv can carry many small ones.
const RX_CAP: usize = 1 << 20;
/// Receive buffer while logging in: login PDUs are at most 8 KiB of text plus a header
/// (continued text is gathered in the login state, within its own limit).
const LOGIN_RX_CAP: usize = 32 << 10;
/// A connection with nothing buffered for this long gives its receive buffer back.
const RX_IDLE_RELEASE: Duration = Duration::from_secs(2);
/// Stop reading new requests while this much output waits for the socket (back-pressure).
const TX_HIGH_WATER: usize = 8 << 20;
/// Task management functions one connection may have waiting for their drain; more are answered
/// FUNCTION REJECTED (immediate PDUs are outside the CmdSN window, so nothing else bounds them).
const MAX_PENDING_TMF: u32 = 8;
/// Largest EDTL we buffer for a write (bigger commands get CHECK CONDITION).
const MAX_WRITE_EDTL: u32 = 32 << 20;

/// After a large payload landed in the task's buffer, the next read takes only the rest of its PDU
/// and the next basic header into the receive buffer, so that the next large payload is read in
/// place too rather than pulled whole into the receive buffer and copied. Payloads at least this
/// long make the next read such a peek.
const PEEK_AFTER: usize = 16 << 10;

/// iSCSI receive counters (`framework_get_reactors`).
pub static RX_STATS: RxStats = RxStats::new();

/// Where the data segment of a SCSI Command (immediate data) or Data-Out PDU whose header was
/// handled lands: at `off` of the task's buffer, as it arrives (`reactor::rxloop`: from the
/// receive buffer for what one read already pulled in, straight from the socket for the rest).
#[derive(Clone, Copy)]
struct Dest {
    slot: usize,
    /// The slot's handle when the header was taken: a task freed meanwhile (aborted) gets nothing.
    handle: u32,
    off: usize,
    after: After,
}

#[derive(Clone, Copy)]
enum After {
    /// Immediate data of a write command.
    Command,
    /// A Data-Out PDU; whether it closed a sequence.
    DataOut { seq_done: bool },
}

/// A request received ahead of the session's ExpCmdSN (MC/S, RFC 7143 §3.2.2.1): it runs when
/// the commands before it, on any connection of the session, have.
#[derive(Clone, Copy)]
struct Held {
    cmd_sn: u32,
    /// The task slot and its handle; `NO_SLOT`: nothing to start (a request already answered, or
    /// a command refused), only the CmdSN to step over.
    slot: usize,
    handle: u32,
}

const NO_SLOT: usize = usize::MAX;

/// Where a non-immediate request stands in the session's CmdSN order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Order {
    /// It is the next one: run it, then advance ExpCmdSN.
    Now,
    /// Ahead of ExpCmdSN (another connection has the commands before it): wait.
    Later,
    /// Outside the window: silently ignored (RFC 7143 §4.2.2.1).
    Drop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Login,
    FullFeature,
    /// Logout answered: close once the output is written.
    Closing,
}

pub struct Conn {
    target: Arc<Target>,
    sock: TcpStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    pg_tag: u32,
    id: u64,
    phase: Phase,
    login: Option<Box<Login>>,
    session_type: SessionType,
    params: Negotiated,
    port: Option<ScsiPort>,
    target_name: String,
    initiator_name: String,
    /// Receive buffer and in-place landing of data segments (None: dropped).
    rxl: RxLoop<Option<Dest>>,
    out: OutQueue,
    stat_sn: u32,
    /// The session's ExpCmdSN (its own until login completes, then shared by the session's
    /// connections).
    exp: Arc<AtomicU32>,
    queue_depth: u32,
    /// The session (after login).
    session: Option<Arc<Session>>,
    cid: u16,
    /// Requests received ahead of ExpCmdSN, oldest first (capacity reserved at login).
    held: VecDeque<Held>,
    held_cap: usize,
    /// `on_poll` is on (the reactor polls us while we may hold requests).
    polled: bool,
    /// The CmdSN of a command that ran in order but whose immediate data is still arriving:
    /// ExpCmdSN moves past it once the data is in (so the next command cannot overtake it).
    owed: Option<u32>,
    /// One past the last CmdSN this connection took in order: its responses acknowledge it
    /// although the session's ExpCmdSN moves only once the command has started.
    acked: u32,
    tasks: TaskTable,
    /// Scratch for one header being built (so responses do not allocate).
    sense_buf: [u8; 20],
    last_rx: Instant,
    started: Instant,
    nop_interval: Duration,
    nop_timeout: Duration,
    ping: Option<(u32, Instant)>,
    next_ping_ttt: u32,
    /// A Text response too long for one PDU: what is left, and the TTT that asks for it.
    text_rest: Option<(u32, Vec<u8>)>,
    /// A login response too long for one PDU: the text left and what to do after its last piece.
    login_rest: Option<(Vec<u8>, Step)>,
    login_timeout: Duration,
    /// Data-buffer bytes of responses queued but not yet written (given back once they are).
    unsent_budget: usize,
    registered: bool,
    /// This connection's place in the target's connection budget.
    slot: ConnSlot,
    /// Task management functions waiting for a drain (bounded: each holds a few allocations
    /// and messages every connection of the target).
    tmf_pending: u32,
}

fn hd_dd(p: &Negotiated) -> (bool, bool) {
    (p.header_digest, p.data_digest)
}

impl Conn {
    pub fn handler(
        mut sock: TcpStream,
        peer: SocketAddr,
        target: Arc<Target>,
        slot: ConnSlot,
        pg_tag: u32,
        core: &mut Core,
        me: HandlerRef,
    ) -> Option<Box<dyn Handler>> {
        if let Err(e) = core.registry().register(&mut sock, me.token(), Interest::READABLE | Interest::WRITABLE) {
            tracing::warn!("iscsi: cannot register connection from {peer}: {e}");
            return None;
        }
        let opts = target.opts();
        let id = target.next_conn_id();
        let local = sock.local_addr().ok();
        Some(Box::new(Conn {
            target,
            sock,
            peer,
            local,
            pg_tag,
            id,
            phase: Phase::Login,
            login: Some(Box::new(Login::new())),
            session_type: SessionType::Normal,
            params: Negotiated::defaults(login::TARGET_MAX_RECV_DSL),
            port: None,
            target_name: String::new(),
            initiator_name: String::new(),
            rxl: RxLoop::new(LOGIN_RX_CAP, PEEK_AFTER, &RX_STATS),
            out: OutQueue::with_capacity(512 * 1024),
            stat_sn: 1,
            exp: Arc::new(AtomicU32::new(0)),
            queue_depth: 64,
            session: None,
            cid: 0,
            held: VecDeque::new(),
            held_cap: 0,
            polled: false,
            owed: None,
            acked: 0,
            tasks: TaskTable::new(0),
            sense_buf: [0; 20],
            last_rx: core.now,
            started: core.now,
            nop_interval: Duration::from_secs(opts.nop_in_interval.max(1) as u64),
            nop_timeout: Duration::from_secs(opts.nop_timeout.max(1) as u64),
            ping: None,
            next_ping_ttt: 1,
            text_rest: None,
            login_rest: None,
            login_timeout: Duration::from_secs(opts.login_timeout.max(1) as u64),
            unsent_budget: 0,
            registered: false,
            slot,
            tmf_pending: 0,
        }))
    }

    /// ExpCmdSN as this connection reports it.
    fn exp_cmd_sn(&self) -> u32 {
        let exp = self.exp.load(Ordering::Acquire);
        // Ahead by one only while this connection runs the command with CmdSN `exp`.
        if self.acked == exp.wrapping_add(1) {
            self.acked
        } else {
            exp
        }
    }

    /// Fill the sequence-number words every target response carries. MaxCmdSN: every connection
    /// of a session has `queue_depth` + 8 task slots, so a window of `queue_depth` CmdSNs cannot
    /// overflow any of them.
    fn seal(&mut self, h: &mut Bhs, stat: bool) {
        if stat {
            h.set_u32(at::W24, self.stat_sn);
            self.stat_sn = self.stat_sn.wrapping_add(1);
        }
        let exp = self.exp_cmd_sn();
        h.set_u32(at::W28, exp);
        h.set_u32(at::W32, exp.wrapping_add(self.queue_depth).wrapping_sub(1));
    }

    fn send(&mut self, h: &Bhs, data: &[u8]) {
        let (hd, dd) = hd_dd(&self.params);
        pdu::encode(&mut self.out.bytes, h, &[], data, hd, dd);
    }

    fn fatal(&mut self, core: &mut Core, me: HandlerRef, why: &str) {
        tracing::info!(conn = self.id, peer = %self.peer, "iscsi: dropping connection: {why}");
        self.phase = Phase::Closing;
        self.out.clear();
        core.close(me);
    }

    fn reject(&mut self, bad: &Bhs, reason: u8) {
        let mut h = Bhs::new(op::REJECT, F_FINAL);
        h.set_b2(reason);
        h.set_itt(RESERVED_TAG);
        self.seal(&mut h, true);
        let hdr = bad.0;
        self.send(&h, &hdr);
    }

    // ---- receive path ------------------------------------------------------------------------

    /// `to_end`: see [`RxLoop::run`].
    fn read_and_process(&mut self, core: &mut Core, me: HandlerRef, to_end: bool) {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.sock);
        let mut rl = std::mem::take(&mut self.rxl);
        rl.run(core, fd, &mut Rx { c: self, me }, to_end);
        self.rxl = rl;
    }

    fn dispatch(&mut self, core: &mut Core, me: HandlerRef, h: &Bhs, _ahs: &[u8], data: &[u8]) {
        if self.phase == Phase::Login {
            if h.opcode() != op::LOGIN_REQ {
                return self.fatal(core, me, "non-login PDU before login completed");
            }
            return self.on_login(core, me, h, data);
        }
        self.settle_owed(core, me);
        match h.opcode() {
            // SCSI Command and Data-Out are taken header first by `process`.
            op::NOP_OUT => self.on_nop_out(core, me, h, data),
            op::TMF_REQ => self.on_tmf(core, me, h),
            op::TEXT_REQ => self.on_text(core, me, h, data),
            op::LOGOUT_REQ => self.on_logout(core, me, h),
            op::LOGIN_REQ => self.reject(h, reject::PROTOCOL_ERROR),
            op::SNACK => self.reject(h, reject::CMD_NOT_SUPPORTED),
            _ => self.reject(h, reject::CMD_NOT_SUPPORTED),
        }
    }

    /// A task's data segment is in its buffer: count it and move the task on; a command's
    /// immediate data completes its command, so ExpCmdSN may move past it.
    fn data_landed(&mut self, core: &mut Core, me: HandlerRef, d: Dest, n: u32) {
        self.task_data_landed(core, me, d, n);
        if matches!(d.after, After::Command) {
            self.settle_owed(core, me);
        }
    }

    fn task_data_landed(&mut self, core: &mut Core, me: HandlerRef, d: Dest, n: u32) {
        let slot = d.slot;
        let t = self.tasks.get_mut(slot);
        t.received += n;
        if t.parked || t.held {
            return; // `unpark` or `run_held` sends its R2Ts or submits it
        }
        match d.after {
            After::Command => {
                if t.received < t.edtl {
                    self.send_r2ts(slot);
                    return;
                }
                self.submit(core, me, slot);
            }
            After::DataOut { seq_done } => {
                let complete = t.received >= t.edtl && !t.unsol_open && t.outstanding() == 0;
                if seq_done {
                    self.send_r2ts(slot);
                }
                if complete {
                    self.submit(core, me, slot);
                }
            }
        }
    }

    /// Where a request stands in the session's CmdSN order (immediate ones run at once). A
    /// request ahead of ExpCmdSN gets an entry in `held` (with no task: the caller fills it in).
    fn order(&mut self, core: &mut Core, me: HandlerRef, h: &Bhs) -> Order {
        if h.immediate() {
            return Order::Now;
        }
        let sn = h.u32_at(at::W24);
        let exp = self.exp_cmd_sn();
        if pdu::sn_lt(sn, exp) || pdu::sn_lt(exp.wrapping_add(self.queue_depth).wrapping_sub(1), sn) {
            // Outside the window: RFC 7143 §4.2.2.1 says silently ignore.
            tracing::debug!(conn = self.id, sn, exp, "iscsi: CmdSN outside the window, ignored");
            return Order::Drop;
        }
        if sn == exp {
            return Order::Now;
        }
        if self.held.len() >= self.held_cap {
            tracing::debug!(conn = self.id, sn, exp, "iscsi: too many requests ahead of ExpCmdSN, ignored");
            return Order::Drop;
        }
        self.held.push_back(Held { cmd_sn: sn, slot: NO_SLOT, handle: 0 });
        if !self.polled {
            // Another connection of the session moves ExpCmdSN: look for it every loop iteration.
            self.polled = true;
            core.want_poll(me);
        }
        Order::Later
    }

    /// CmdSN check for a non-immediate request other than a SCSI command: true if it may run.
    /// One ahead of ExpCmdSN runs now too (it touches no task), its CmdSN is stepped over in turn.
    fn accept_cmd_sn(&mut self, core: &mut Core, me: HandlerRef, h: &Bhs) -> bool {
        match self.order(core, me, h) {
            Order::Drop => false,
            Order::Later => true,
            Order::Now => {
                if !h.immediate() {
                    self.advance(core, me, h.u32_at(at::W24));
                }
                true
            }
        }
    }

    /// The request with CmdSN `sn` has run: the session expects the next one, which may be ours.
    fn advance(&mut self, core: &mut Core, me: HandlerRef, sn: u32) {
        self.exp.store(sn.wrapping_add(1), Ordering::Release);
        if !self.held.is_empty() {
            self.run_held(core, me);
        }
    }

    fn settle_owed(&mut self, core: &mut Core, me: HandlerRef) {
        if let Some(sn) = self.owed.take() {
            self.advance(core, me, sn);
        }
    }

    /// Start held requests whose turn has come; returns how many.
    fn run_held(&mut self, core: &mut Core, me: HandlerRef) -> usize {
        let mut n = 0;
        while self.owed.is_none() {
            let exp = self.exp_cmd_sn();
            let Some(i) = self.held.iter().position(|e| e.cmd_sn == exp) else {
                // A request behind ExpCmdSN repeated a CmdSN another one had: it never runs.
                while let Some(i) = self.held.iter().position(|e| pdu::sn_lt(e.cmd_sn, exp)) {
                    let e = self.held.remove(i).expect("found");
                    if e.slot != NO_SLOT && self.tasks.is_live(e.slot, e.handle) {
                        self.tasks.free(e.slot);
                    }
                }
                break;
            };
            let e = self.held.remove(i).expect("found");
            n += 1;
            if e.slot != NO_SLOT && self.tasks.is_live(e.slot, e.handle) {
                self.tasks.get_mut(e.slot).held = false;
                let landing = self.rxl.landing_key().flatten().is_some_and(|d| d.slot == e.slot && d.handle == e.handle && matches!(d.after, After::Command));
                if landing {
                    // Its immediate data is still arriving: `data_landed` starts it and moves on.
                    self.owed = Some(exp);
                    break;
                }
                self.acked = exp.wrapping_add(1);
                self.start_held(core, me, e.slot);
            }
            self.exp.store(exp.wrapping_add(1), Ordering::Release);
        }
        if n > 0 {
            core.want_flush(me);
        }
        n
    }

    /// A held command's turn came: what `on_scsi_cmd` would have done had it been next.
    fn start_held(&mut self, core: &mut Core, me: HandlerRef, slot: usize) {
        let t = self.tasks.get_mut(slot);
        if t.parked {
            return; // `unpark` starts it once its buffer is there
        }
        if matches!(t.dir, DataDir::Write | DataDir::Both) && t.edtl > 0 {
            if t.received < t.edtl || t.unsol_open {
                self.send_r2ts(slot);
                return;
            }
            if t.outstanding() > 0 {
                return;
            }
        }
        self.submit(core, me, slot);
    }

    // ---- login ------------------------------------------------------------------------------

    fn on_login(&mut self, core: &mut Core, me: HandlerRef, h: &Bhs, data: &[u8]) {
        let Some(mut lg) = self.login.take() else { return };
        let (step, text) = match self.login_rest.take() {
            // The initiator asks for the rest of a continued response with empty requests.
            Some(_) if !data.is_empty() || h.flags() & pdu::F_CONTINUE != 0 => (Step::Fail(login::status::INITIATOR_ERROR), Vec::new()),
            Some((text, step)) => (step, text),
            None => {
                let ctx = LoginCtx { target: &self.target, pg_tag: self.pg_tag, peer: self.peer.ip() };
                let mut step = lg.step(&ctx, h, data);
                let text = match &mut step {
                    Step::Reply { keys, .. } | Step::Finish { keys, .. } => pdu::encode_text(&std::mem::take(keys)),
                    Step::Fail(_) => Vec::new(),
                };
                (step, text)
            }
        };
        let mut r = Bhs::new(op::LOGIN_RSP, 0);
        r.0[8..14].copy_from_slice(&h.0[8..14]);
        r.set_itt(h.itt());
        match &lg.joining {
            // A connection joining a session shares its CmdSN state (RFC 7143 §3.2.2.1).
            Some(s) => {
                if !Arc::ptr_eq(&self.exp, &s.exp_cmd_sn) {
                    self.exp = s.exp_cmd_sn.clone();
                }
            }
            // The leading login request's CmdSN is the first one of the session.
            None => self.exp.store(h.u32_at(at::W24), Ordering::Release),
        }
        self.acked = self.exp.load(Ordering::Acquire);
        if !matches!(step, Step::Fail(_)) && text.len() > login::LOGIN_MAX_DSL {
            // Longer than the initiator takes in one PDU: this piece with C=1 and T=0 (RFC 7143
            // §11.13.2); each empty request gets the next, the last one carries the real flags.
            let csg = match &step {
                Step::Reply { csg, .. } | Step::Finish { csg, .. } => *csg,
                Step::Fail(_) => 0,
            };
            r.0[1] = pdu::F_CONTINUE | (csg << 2);
            self.login_reply(&mut r, &text[..login::LOGIN_MAX_DSL]);
            self.login_rest = Some((text[login::LOGIN_MAX_DSL..].to_vec(), step));
            self.login = Some(lg);
            return;
        }
        // The session a completed login creates or joins (joining may still be refused).
        let mut step = step;
        let mut joined = None;
        if let Step::Finish { .. } = step {
            match self.enter_session(core, me, &lg) {
                Ok(s) => joined = Some(s),
                Err(st) => step = Step::Fail(st),
            }
        }
        match step {
            Step::Fail((class, detail)) => {
                tracing::info!(conn = self.id, peer = %self.peer, initiator = %lg.initiator_name, class, detail, "iscsi: login refused");
                let exp = self.exp_cmd_sn();
                r.set_u32(at::W24, self.stat_sn);
                r.set_u32(at::W28, exp);
                r.set_u32(at::W32, exp);
                r.0[36] = class;
                r.0[37] = detail;
                pdu::encode(&mut self.out.bytes, &r, &[], &[], false, false);
                self.phase = Phase::Closing;
                core.want_flush(me);
            }
            Step::Reply { transit, csg, nsg, .. } => {
                r.0[1] = if transit { pdu::F_TRANSIT } else { 0 } | (csg << 2) | nsg;
                self.login_reply(&mut r, &text);
                self.login = Some(lg);
            }
            Step::Finish { csg, .. } => {
                let session = joined.expect("entered");
                let tsih = session.tsih;
                r.0[1] = pdu::F_TRANSIT | (csg << 2) | 3;
                r.set_u16(at::TSIH, tsih);
                self.login_reply(&mut r, &text);
                self.slot.logged_in();
                // Digests apply from the first PDU after the final login response.
                self.params = lg.params.clone();
                self.session_type = lg.session_type;
                self.initiator_name = lg.initiator_name.clone();
                self.target_name = lg.target_name.clone();
                self.phase = Phase::FullFeature;
                if let Some(node) = &lg.node {
                    self.queue_depth = node.queue_depth.clamp(1, 4096);
                    let isid = login::hex(&lg.isid);
                    let initiator = Initiator::Iscsi {
                        // iSCSI names compare case-insensitively (RFC 7143 4.2.7.2): one spelling.
                        initiator_port: format!("{},i,0x{isid}", lg.initiator_name.to_ascii_lowercase()),
                        target_port: format!("{},t,0x{:04x}", node.name, self.pg_tag),
                        rel_port_id: self.pg_tag as u16,
                    };
                    let mut port = ScsiPort::new(initiator, node.luns.clone());
                    let reported = session.nexus_reported(port.nexus_reported());
                    if lg.joining.is_some() {
                        port.join_existing_nexus(reported);
                    }
                    self.port = Some(port);
                } else {
                    self.queue_depth = 8;
                }
                let slots = self.queue_depth as usize + 8;
                self.held_cap = slots;
                self.held = VecDeque::with_capacity(slots);
                self.cid = lg.cid;
                self.session = Some(session);
                self.tasks = if self.port.is_some() {
                    let per_conn = (self.target.opts().data_buffer_per_connection_mib as usize) << 20;
                    TaskTable::with_budget(slots, ConnBudget::new(self.target.data_budget.clone(), per_conn))
                } else {
                    TaskTable::new(slots)
                };
                let info = ConnInfo {
                    id: self.id,
                    cid: lg.cid,
                    tsih,
                    lcore: core.id,
                    initiator_name: lg.initiator_name.clone(),
                    initiator_addr: self.peer.ip().to_string(),
                    target_addr: self.local.map(|a| a.ip().to_string()).unwrap_or_default(),
                    target_node_name: lg.target_name.clone(),
                    isid: lg.isid,
                    handler: me,
                };
                // Session reinstatement: an older session of the same I_T nexus goes away.
                for old in self.target.register_conn(info) {
                    core.reactors().send(old.reactor, move |r| {
                        r.with_handler(old, |_, core, h| core.close(h));
                    });
                }
                self.registered = true;
            }
        }
    }

    /// The last login step succeeded: create the session (leading login) or join the one named
    /// by the TSIH; a connection this one reinstates (same CID) is closed.
    fn enter_session(&mut self, core: &mut Core, me: HandlerRef, lg: &Login) -> Result<Arc<Session>, (u8, u8)> {
        let member = Member { cid: lg.cid, conn_id: self.id, handler: me };
        let (s, leading) = match &lg.joining {
            Some(s) => (s.clone(), false),
            None => {
                let qd = lg.node.as_ref().map_or(8, |n| n.queue_depth.clamp(1, 4096));
                let tsih = self.target.next_tsih();
                let s = Session::new(tsih, lg.isid, &lg.initiator_name, &lg.target_name, self.pg_tag, lg.params.clone(), self.exp_cmd_sn(), qd);
                self.exp = s.exp_cmd_sn.clone();
                self.target.add_session(s.clone());
                (s, true)
            }
        };
        match s.join(member, leading) {
            Ok(None) => Ok(s),
            Ok(Some(old)) => {
                // Connection reinstatement (RFC 7143 §6.3.4): the old connection with this CID ends.
                tracing::info!(conn = self.id, cid = lg.cid, "iscsi: connection reinstated");
                core.reactors().send(old.handler.reactor, move |r| {
                    r.with_handler(old.handler, |_, core, h| core.close(h));
                });
                Ok(s)
            }
            Err(JoinError::Full(_)) => Err(login::status::TOO_MANY_CONNECTIONS),
            Err(JoinError::Ended) => Err(login::status::SESSION_DOES_NOT_EXIST),
        }
    }

    fn login_reply(&mut self, r: &mut Bhs, text: &[u8]) {
        r.set_u32(at::W24, self.stat_sn);
        self.stat_sn = self.stat_sn.wrapping_add(1);
        let exp = self.exp_cmd_sn();
        r.set_u32(at::W28, exp);
        r.set_u32(at::W32, exp.wrapping_add(self.queue_depth.max(1)).wrapping_sub(1));
        pdu::encode(&mut self.out.bytes, r, &[], text, false, false);
    }

    // ---- SCSI commands ----------------------------------------------------------------------

    /// A SCSI Command PDU's header; its `dlen` bytes of immediate data follow. Returns where they
    /// land (None: dropped, the command was answered or refused).
    fn on_scsi_cmd(&mut self, core: &mut Core, me: HandlerRef, h: &Bhs, ahs: &[u8], dlen: usize) -> Option<Dest> {
        self.settle_owed(core, me);
        if self.session_type == SessionType::Discovery {
            self.reject(h, reject::PROTOCOL_ERROR);
            return None;
        }
        let order = self.order(core, me, h);
        if order == Order::Drop {
            return None;
        }
        if order == Order::Now && !h.immediate() {
            self.acked = h.u32_at(at::W24).wrapping_add(1);
        }
        let dest = self.scsi_cmd(core, me, h, ahs, dlen, order == Order::Later);
        if order == Order::Now && !h.immediate() {
            match dest {
                // In order once its immediate data is in.
                Some(Dest { after: After::Command, .. }) => self.owed = Some(h.u32_at(at::W24)),
                _ => self.advance(core, me, h.u32_at(at::W24)),
            }
        }
        dest
    }

    /// Take a SCSI command; `held`: it waits for its CmdSN's turn (a slot in `held` is its).
    fn scsi_cmd(&mut self, core: &mut Core, me: HandlerRef, h: &Bhs, ahs: &[u8], dlen: usize, held: bool) -> Option<Dest> {
        let flags = h.flags();
        let itt = h.itt();
        let edtl = h.u32_at(at::W20);
        let dir = match (flags & F_READ != 0, flags & F_WRITE != 0) {
            (false, false) => DataDir::None,
            (true, false) => DataDir::Read,
            (false, true) => DataDir::Write,
            (true, true) => DataDir::Both,
        };
        let attr = match flags & 7 {
            0 | 1 => TaskAttr::Simple,
            2 => TaskAttr::Ordered,
            3 => TaskAttr::HeadOfQueue,
            _ => TaskAttr::Aca,
        };
        let mut cdb = [0u8; 32];
        cdb[..16].copy_from_slice(&h.0[at::CDB..at::CDB + 16]);
        let mut cdb_len = 16u8;
        // Extended CDB AHS (type 1): AHSLength counts a reserved byte plus the extra CDB bytes.
        if ahs.len() >= 4 && ahs[2] == 1 {
            let alen = u16::from_be_bytes([ahs[0], ahs[1]]) as usize;
            let extra = alen.saturating_sub(1).min(16).min(ahs.len().saturating_sub(4));
            cdb[16..16 + extra].copy_from_slice(&ahs[4..4 + extra]);
            cdb_len += extra as u8;
        }
        let writes = matches!(dir, DataDir::Write | DataDir::Both);
        if dlen > 0 && (!writes || !self.params.immediate_data || dlen as u32 > edtl.min(self.params.first_burst)) {
            self.reject(h, reject::PROTOCOL_ERROR);
            return None;
        }
        let lun_raw = h.lun_raw();
        tracing::trace!(conn = self.id, itt, edtl, flags, imm = dlen, cdb0 = cdb[0], "iscsi: SCSI command");
        let Some(slot) = self.tasks.alloc() else {
            let r = ScsiResponse::status(itt, status::TASK_SET_FULL);
            self.send_scsi_response(&r, edtl, 0, 0, lun_raw);
            return None;
        };
        if self.tasks.bind(slot, itt).is_err() {
            // An active task has this tag (RFC 7143 §11.2.1.8: unique in the session), or it is
            // the reserved one.
            self.tasks.free(slot);
            self.reject(h, reject::PROTOCOL_ERROR);
            return None;
        }
        let t = self.tasks.get_mut(slot);
        t.lun_raw = lun_raw;
        t.lun = decode_lun(lun_raw);
        t.cdb = cdb;
        t.cdb_len = cdb_len;
        t.attr = attr;
        t.edtl = edtl;
        t.dir = dir;
        t.cmd_sn = h.u32_at(at::W24);
        t.held = held;
        if held {
            let handle = self.tasks.handle(slot);
            if let Some(e) = self.held.back_mut() {
                (e.slot, e.handle) = (slot, handle);
            }
        }
        if writes && edtl > 0 {
            if edtl > MAX_WRITE_EDTL {
                self.tasks.free(slot);
                let r = ScsiResponse::check(itt, crate::scsi::Sense::new(crate::scsi::sense_key::ILLEGAL_REQUEST, 0x55, 0x00));
                self.send_scsi_response(&r, edtl, 0, 0, lun_raw);
                return None;
            }
            let imm = dlen as u32;
            // Unsolicited Data-Out follows (up to FirstBurstLength) when F is clear.
            let unsol_end = if flags & F_FINAL == 0 && !self.params.initial_r2t { edtl.min(self.params.first_burst) } else { imm };
            // Without budget the write waits; meanwhile only its unsolicited data, which the
            // negotiated FirstBurstLength bounds, is kept.
            let admitted = self.tasks.admit(slot, edtl);
            // Every byte is written before use: Data-Out offsets are checked to tile [0, EDTL) exactly.
            let buf = IoBuf::for_overwrite(if admitted { edtl } else { unsol_end } as usize);
            let handle = self.tasks.handle(slot);
            let t = self.tasks.get_mut(slot);
            t.data = Some(buf);
            // The immediate data is counted once it has landed (`data_landed`).
            t.received = 0;
            t.unsol_end = unsol_end;
            t.unsol_open = unsol_end > imm;
            t.set_unsolicited(imm);
            t.r2t_next = unsol_end;
            if imm > 0 {
                return Some(Dest { slot, handle, off: 0, after: After::Command });
            }
            if !admitted || held {
                return None;
            }
            if t.received < edtl {
                self.send_r2ts(slot);
                return None;
            }
        } else if matches!(dir, DataDir::Read) && edtl > 0 && !self.tasks.admit(slot, edtl) {
            return None; // waits for the bytes its read data will hold until sent
        }
        if !held {
            self.submit(core, me, slot);
        }
        None
    }

    /// Start parked tasks, oldest first, while the budget lets them.
    fn unpark(&mut self, core: &mut Core, me: HandlerRef) {
        while let Some(slot) = self.tasks.unpark() {
            let t = self.tasks.get_mut(slot);
            let held = t.held;
            if matches!(t.dir, DataDir::Write | DataDir::Both) {
                // Move the unsolicited data gathered so far into the full-size buffer.
                let mut buf = IoBuf::for_overwrite(t.edtl as usize);
                if let Some(staged) = t.data.take() {
                    let n = staged.len().min(buf.len());
                    buf[..n].copy_from_slice(&staged[..n]);
                }
                t.data = Some(buf);
                if held {
                    continue; // `run_held` starts it in its turn
                }
                if t.received < t.edtl || t.unsol_open {
                    self.send_r2ts(slot);
                    core.want_flush(me);
                    continue;
                }
            }
            if !held {
                self.submit(core, me, slot);
            }
        }
    }

    fn send_r2ts(&mut self, slot: usize) {
        let max_out = self.params.max_outstanding_r2t;
        let burst = self.params.max_burst;
        loop {
            let t = self.tasks.get_mut(slot);
            if t.r2t_next >= t.edtl || t.outstanding() >= max_out as usize {
                return;
            }
            let off = t.r2t_next;
            let len = burst.min(t.edtl - off);
            let Some(ttt) = t.open_seq(slot, off, len) else { return };
            t.r2t_next += len;
            let r2t_sn = t.r2t_sn;
            t.r2t_sn += 1;
            let (itt, lun_raw) = (t.itt(), t.lun_raw);
            let mut h = Bhs::new(op::R2T, F_FINAL);
            h.set_lun_raw(lun_raw);
            h.set_itt(itt);
            h.set_u32(at::W20, ttt);
            h.set_u32(at::W24, self.stat_sn);
            self.seal(&mut h, false);
            h.set_u32(at::W36, r2t_sn);
            h.set_u32(at::W40, off);
            h.set_u32(at::W44, len);
            self.send(&h, &[]);
        }
    }

    /// A Data-Out PDU's header: checked against its task's sequences before its `dlen` bytes
    /// arrive; returns where they land (None: dropped).
    fn on_data_out(&mut self, core: &mut Core, me: HandlerRef, h: &Bhs, dlen: usize) -> Option<Dest> {
        self.settle_owed(core, me);
        let ttt = h.u32_at(at::W20);
        let itt = h.itt();
        let slot = if ttt == RESERVED_TAG { self.tasks.find_unsolicited(itt) } else { self.tasks.find_ttt(ttt, itt) };
        tracing::trace!(conn = self.id, itt, ttt, datasn = h.u32_at(at::W36), offset = h.u32_at(at::W40), len = dlen, fin = h.final_bit(), found = slot.is_some(), "iscsi: Data-Out");
        // Data for a task we no longer have (aborted, or refused) is dropped.
        let slot = slot?;
        let handle = self.tasks.handle(slot);
        let offset = h.u32_at(at::W40);
        let t = self.tasks.get_mut(slot);
        match t.accept(ttt, h.u32_at(at::W36), offset, dlen as u32, h.final_bit()) {
            Ok(seq_done) => Some(Dest { slot, handle, off: offset as usize, after: After::DataOut { seq_done } }),
            Err(DataOutError::Protocol(why)) => {
                // Reject the PDU and keep the connection: the command stays incomplete until the
                // initiator aborts it or logs out (dropping the connection would let initiators
                // silently retry on a new one, hiding the error).
                tracing::info!(conn = self.id, itt, "iscsi: Data-Out rejected: {why}");
                // The initiator fails the command on the Reject; forget it here too.
                self.tasks.free(slot);
                self.reject(h, reject::PROTOCOL_ERROR);
                None
            }
        }
    }

    fn submit(&mut self, core: &mut Core, me: HandlerRef, slot: usize) {
        if !self.fit_write(slot) {
            let t = self.tasks.get_mut(slot);
            let (itt, res) = (t.itt(), t.write_resid);
            self.tasks.free(slot);
            self.send_scsi_response_resid(&ScsiResponse::good(itt), 0, res);
            core.want_flush(me);
            return;
        }
        let handle = self.tasks.handle(slot);
        let t = self.tasks.get_mut(slot);
        t.submitted = true;
        let cmd = ScsiCommand {
            cdb: t.cdb,
            cdb_len: t.cdb_len,
            lun: t.lun,
            task_tag: handle,
            expected_len: t.edtl,
            dir: t.dir,
            data_out: t.data.take(),
            attr: t.attr,
        };
        let Some(port) = self.port.as_mut() else { return };
        port.submit(core, me, cmd);
        self.drain(core, me);
    }

    /// The SCSI core decides what the CDB means for the Data-Out gathered (residual against
    /// EDTL, overflow cut to whole blocks). False when nothing is left to write (the caller
    /// answers GOOD with the residual at once).
    fn fit_write(&mut self, slot: usize) -> bool {
        let Some(port) = self.port.as_ref() else { return true };
        let t = self.tasks.get_mut(slot);
        let fit = port.fit_data_out(t.lun, &mut t.cdb, t.edtl);
        t.write_resid = fit.resid.map(|r| match r {
            Residual::Under(n) => (true, n),
            Residual::Over(n) => (false, n),
        });
        fit.run
    }

    /// Send every finished task's response.
    fn drain(&mut self, core: &mut Core, me: HandlerRef) {
        let mut any = false;
        while let Some(mut r) = self.port.as_mut().and_then(|p| p.next_done()) {
            any = true;
            // The SCSI core echoes the slot's handle: the task, directly (none if it was aborted).
            let Some(slot) = self.tasks.find_submitted(r.task_tag) else { continue };
            let t = self.tasks.get_mut(slot);
            r.task_tag = t.itt();
            let (edtl, dir, lun_raw, r2ts, wres) = (t.edtl, t.dir, t.lun_raw, t.r2t_sn, t.write_resid);
            if matches!(dir, DataDir::Read | DataDir::Both) {
                // Its read data stays in the output queue until written: so do its bytes.
                self.unsent_budget += self.tasks.finish(slot) as usize;
            } else {
                self.tasks.free(slot);
            }
            if let Some(res) = wres {
                self.send_scsi_response_resid(&r, r2ts, Some(res));
                continue;
            }
            self.respond(r, edtl, dir, lun_raw, r2ts);
        }
        if any {
            self.unpark(core, me);
            core.want_flush(me);
        }
    }

    fn respond(&mut self, mut r: ScsiResponse, edtl: u32, dir: DataDir, lun_raw: [u8; 8], r2ts: u32) {
        let reads = matches!(dir, DataDir::Read | DataDir::Both);
        let produced = r.data_len;
        let (flag, resid) = if reads || produced > 0 {
            if produced > edtl {
                (F_OVERFLOW, produced - edtl)
            } else if produced < edtl && reads {
                (F_UNDERFLOW, edtl - produced)
            } else {
                (0, 0)
            }
        } else {
            (0, 0)
        };
        let send_len = produced.min(edtl) as usize;
        let good = (r.status == status::GOOD || r.status == status::CONDITION_MET) && r.sense.is_none();
        let mut datasn = 0u32;
        if reads && send_len > 0 {
            if let Some(buf) = r.data_in.take() {
                let send_len = send_len.min(buf.len());
                let kept = self.out.keep(buf);
                let chunk = (self.params.max_xmit_dsl as usize).max(512);
                let mut off = 0usize;
                let burst = (self.params.max_burst as usize).max(512);
                while off < send_len {
                    // A Data-In sequence (ended by F) carries at most MaxBurstLength bytes.
                    let burst_end = (off / burst + 1) * burst;
                    let n = chunk.min(send_len - off).min(burst_end - off);
                    let last = off + n == send_len;
                    let mut h = Bhs::new(op::DATA_IN, 0);
                    h.set_lun_raw(lun_raw);
                    h.set_itt(r.task_tag);
                    h.set_u32(at::W20, RESERVED_TAG);
                    let with_status = last && good;
                    if last || off + n == burst_end {
                        h.0[1] |= F_FINAL;
                    }
                    if with_status {
                        h.0[1] |= F_STATUS | flag;
                        h.set_b3(r.status);
                        h.set_u32(at::W44, resid);
                    }
                    self.seal(&mut h, with_status);
                    h.set_u32(at::W36, datasn);
                    h.set_u32(at::W40, off as u32);
                    datasn += 1;
                    let (hd, dd) = hd_dd(&self.params);
                    if n >= ZERO_COPY_MIN {
                        // Large payloads go to the socket from the read buffer itself.
                        pdu::encode_header(&mut self.out.bytes, &h, n, hd);
                        self.out.splice(kept, off, n);
                        let q = &mut self.out;
                        let mut tail = std::mem::take(&mut q.bytes);
                        pdu::data_trailer(&mut tail, &q.kept(kept)[off..off + n], dd);
                        q.bytes = tail;
                    } else {
                        let q = &mut self.out;
                        let mut tx = std::mem::take(&mut q.bytes);
                        pdu::encode(&mut tx, &h, &[], &q.kept(kept)[off..off + n], hd, dd);
                        q.bytes = tx;
                    }
                    off += n;
                }
                if good {
                    return;
                }
            }
        }
        self.send_scsi_response(&r, edtl, datasn + r2ts, if reads { resid } else { 0 }, lun_raw);
        let _ = flag;
    }

    fn send_scsi_response(&mut self, r: &ScsiResponse, edtl: u32, exp_data_sn: u32, resid_hint: u32, _lun: [u8; 8]) {
        let produced = r.data_len;
        let resid = if produced > edtl {
            Some((false, produced - edtl))
        } else if resid_hint > 0 {
            Some((true, resid_hint))
        } else {
            None
        };
        self.send_scsi_response_resid(r, exp_data_sn, resid);
    }

    /// SCSI Response with an explicit residual (underflow = true).
    fn send_scsi_response_resid(&mut self, r: &ScsiResponse, exp_data_sn: u32, resid: Option<(bool, u32)>) {
        let mut h = Bhs::new(op::SCSI_RSP, F_FINAL);
        h.set_b3(r.status);
        h.set_itt(r.task_tag);
        match resid {
            Some((true, n)) => {
                h.0[1] |= F_UNDERFLOW;
                h.set_u32(at::W44, n);
            }
            Some((false, n)) => {
                h.0[1] |= F_OVERFLOW;
                h.set_u32(at::W44, n);
            }
            None => {}
        }
        self.seal(&mut h, true);
        h.set_u32(at::W36, exp_data_sn);
        let mut n = 0;
        if let Some(s) = r.sense {
            let enc = s.encode();
            self.sense_buf[0..2].copy_from_slice(&(enc.len() as u16).to_be_bytes());
            self.sense_buf[2..2 + enc.len()].copy_from_slice(&enc);
            n = 2 + enc.len();
        }
        let sb = self.sense_buf;
        self.send(&h, &sb[..n]);
    }

    // ---- NOP, TMF, Text, Logout -------------------------------------------------------------

    fn on_nop_out(&mut self, core: &mut Core, me: HandlerRef, h: &Bhs, data: &[u8]) {
        let itt = h.itt();
        if itt == RESERVED_TAG {
            // The answer to our ping.
            if self.ping.is_some_and(|(t, _)| t == h.u32_at(at::W20)) {
                self.ping = None;
            }
            return;
        }
        if !self.accept_cmd_sn(core, me, h) {
            return;
        }
        let mut r = Bhs::new(op::NOP_IN, F_FINAL);
        r.set_lun_raw(h.lun_raw());
        r.set_itt(itt);
        r.set_u32(at::W20, RESERVED_TAG);
        self.seal(&mut r, true);
        let n = data.len().min(self.params.max_xmit_dsl as usize);
        self.send(&r, &data[..n]);
    }

    /// Task management (RFC 7143 §11.5, SAM-5 7). The response is sent only after every write
    /// the function aborted has completed (see `tmf`): an initiator may reuse the blocks, or
    /// another path may write them, as soon as it has the answer. CLEAR TASK SET (TST=000b: one
    /// task set per LUN), LOGICAL UNIT RESET and the target resets act on every nexus.
    fn on_tmf(&mut self, core: &mut Core, me: HandlerRef, h: &Bhs) {
        if !self.accept_cmd_sn(core, me, h) {
            return;
        }
        let function = h.flags() & 0x7f;
        if self.tmf_pending >= MAX_PENDING_TMF {
            tracing::debug!(conn = self.id, "iscsi: too many task management functions waiting, rejected");
            return self.answer_tmf(core, me, tmf::Answer { itt: h.itt(), response: 255, function });
        }
        let lun = decode_lun(h.lun_raw());
        let rtt = h.u32_at(at::W20);
        let volume_of = |p: &ScsiPort, lun: u64| p.luns.get(lun).map(|l| l.volume.clone());
        // Task management is rare: the session's member list is read here, not kept.
        let (tsih, siblings): (u16, Vec<HandlerRef>) = match self.session.as_ref() {
            Some(s) => (s.tsih, s.members().iter().map(|m| m.handler).collect()),
            None => (0, Vec::new()),
        };
        let has_lun = self.port.as_ref().is_some_and(|p| p.luns.get(lun).is_some());
        let (response, drain): (u8, Vec<Arc<Volume>>) = match function {
            // ABORT TASK: a task that already completed is reported as not existing, which is
            // what initiators expect when the response crossed the request.
            1 => {
                let found = self.tasks.find(rtt);
                let task_lun = found.map(|s| self.tasks.get_mut(s).lun).unwrap_or(lun);
                let mut in_scsi = false;
                if let Some(s) = found {
                    let handle = self.tasks.handle(s);
                    in_scsi = self.tasks.get_mut(s).submitted && self.port.as_mut().is_some_and(|p| p.abort_task(handle));
                    self.tasks.free(s);
                }
                match (in_scsi, found.is_some()) {
                    (false, false) => (1, Vec::new()),
                    // Only gathering Data-Out: nothing of it reached the volume.
                    (false, true) => (0, Vec::new()),
                    (true, _) => (0, self.port.as_ref().and_then(|p| volume_of(p, task_lun)).into_iter().collect()),
                }
            }
            2 | 4 | 5 if !has_lun => (2, Vec::new()),
            2 | 4 | 5 => {
                let p = self.port.as_mut().expect("has_lun");
                let vol = volume_of(p, lun).expect("has_lun");
                match function {
                    2 => {
                        p.abort_task_set(lun);
                    }
                    4 => {
                        p.clear_task_set(lun);
                    }
                    _ => {
                        p.lun_reset(lun);
                        let own = p.luns.get(lun).expect("has_lun").clone();
                        tmf::raise_reset(&self.target, &vol, &own);
                    }
                }
                self.abort_where(|t| t.lun == lun);
                let vols = vec![vol];
                tmf::abort_in_session(core, me, &siblings, Some(lun), function == 5);
                if function != 2 {
                    tmf::abort_other_nexuses(core, &self.target, me, tsih, &vols);
                }
                (0, vols)
            }
            3 => (5, Vec::new()), // CLEAR ACA: no ACA support
            // TARGET WARM / COLD RESET: a logical unit reset of every LUN.
            6 | 7 => {
                let mut vols = Vec::new();
                if let Some(p) = self.port.as_mut() {
                    p.target_reset();
                    for l in p.luns.luns.iter() {
                        tmf::raise_reset(&self.target, &l.volume, l);
                        vols.push(l.volume.clone());
                    }
                }
                self.abort_where(|_| true);
                let vols = tmf::distinct(vols);
                tmf::abort_in_session(core, me, &siblings, None, true);
                tmf::abort_other_nexuses(core, &self.target, me, tsih, &vols);
                (0, vols)
            }
            8 => (4, Vec::new()), // TASK REASSIGN needs ErrorRecoveryLevel 2
            _ => (255, Vec::new()),
        };
        let answer = tmf::Answer { itt: h.itt(), response, function };
        if drain.is_empty() {
            self.answer_tmf(core, me, answer);
        } else {
            self.tmf_pending += 1;
            tmf::answer_after_drain(core, me, drain, answer);
        }
    }

    fn answer_tmf(&mut self, core: &mut Core, me: HandlerRef, a: tmf::Answer) {
        if self.phase != Phase::FullFeature {
            return;
        }
        let mut r = Bhs::new(op::TMF_RSP, F_FINAL);
        r.set_b2(a.response);
        r.set_itt(a.itt);
        self.seal(&mut r, true);
        self.send(&r, &[]);
        if a.function == 7 && a.response == 0 {
            // TARGET COLD RESET drops the connection after the response (RFC 7143 §11.5.1).
            self.phase = Phase::Closing;
        }
        core.want_flush(me);
    }

    /// Another nexus cleared the task set or reset a logical unit we use: our tasks there are
    /// aborted. Those still gathering Data-Out have nothing in flight and are answered TASK
    /// ABORTED now; submitted ones are answered by the SCSI layer when their I/O ends (TAS=1).
    fn abort_for_other(&mut self, core: &mut Core, me: HandlerRef, volumes: &[Arc<Volume>]) {
        let Some(p) = self.port.as_mut() else { return };
        let luns: Vec<u64> = p.luns.luns.iter().filter(|l| volumes.iter().any(|v| Arc::ptr_eq(v, &l.volume))).map(|l| l.id).collect();
        if luns.is_empty() {
            return;
        }
        let mut n = 0;
        for v in volumes {
            n += p.abort_for_other_nexus(v);
        }
        let mut waiting = Vec::new();
        for slot in self.tasks.active_slots() {
            let t = self.tasks.get_mut(slot);
            if !t.submitted && luns.contains(&t.lun) {
                waiting.push((t.itt(), t.r2t_sn));
                self.tasks.free(slot);
            }
        }
        for &(itt, r2ts) in &waiting {
            self.send_scsi_response_resid(&ScsiResponse::status(itt, status::TASK_ABORTED), r2ts, None);
        }
        if n + waiting.len() > 0 {
            tracing::info!(conn = self.id, tasks = n + waiting.len(), "iscsi: tasks aborted by another nexus' task management");
            core.want_flush(me);
        }
    }

    /// Another connection of this session aborted the task set of `lun` (None: of every LUN):
    /// our tasks there end too, without a response (the same nexus asked).
    fn abort_in_session(&mut self, lun: Option<u64>, reset: bool) {
        let Some(p) = self.port.as_mut() else { return };
        if reset {
            p.reset_by_own_nexus(lun);
        }
        let mut n = 0;
        for slot in self.tasks.active_slots() {
            let handle = self.tasks.handle(slot);
            let t = self.tasks.get_mut(slot);
            if lun.is_none_or(|l| l == t.lun) {
                if t.submitted {
                    p.abort_task(handle);
                }
                self.tasks.free(slot);
                n += 1;
            }
        }
        if n > 0 {
            tracing::info!(conn = self.id, tasks = n, "iscsi: tasks aborted by task management on another connection of the session");
        }
    }

    /// Free this connection's task slots that match (after the SCSI layer was told: aborted
    /// tasks produce no response there). Returns how many.
    fn abort_where(&mut self, pred: impl Fn(&Task) -> bool) -> usize {
        let mut n = 0;
        for slot in self.tasks.active_slots() {
            if pred(self.tasks.get_mut(slot)) {
                self.tasks.free(slot);
                n += 1;
            }
        }
        n
    }

    fn on_text(&mut self, core: &mut Core, me: HandlerRef, h: &Bhs, data: &[u8]) {
        if !self.accept_cmd_sn(core, me, h) {
            return;
        }
        let ttt = h.u32_at(at::W20);
        let body = if ttt != RESERVED_TAG {
            match self.text_rest.take() {
                Some((t, rest)) if t == ttt => rest,
                _ => return self.reject(h, reject::INVALID_PDU_FIELD),
            }
        } else {
            self.text_rest = None;
            let Ok(pairs) = pdu::parse_text(data) else { return self.reject(h, reject::PROTOCOL_ERROR) };
            let mut out: Vec<(String, String)> = Vec::new();
            for (k, v) in pairs {
                if k == "SendTargets" {
                    let only = match v.as_str() {
                        "All" if self.session_type == SessionType::Discovery => None,
                        "All" => Some(self.target_name.clone()),
                        "" => Some(self.target_name.clone()),
                        name => Some(name.to_string()),
                    };
                    let local = self.local.map(|a| match a {
                        SocketAddr::V4(v) => v.ip().to_string(),
                        SocketAddr::V6(v) => format!("[{}]", v.ip()),
                    });
                    let list = self.target.send_targets(&self.initiator_name, self.peer.ip(), &local.unwrap_or_default(), only.as_deref());
                    for (name, addrs) in list {
                        out.push(("TargetName".into(), name));
                        for a in addrs {
                            out.push(("TargetAddress".into(), a));
                        }
                    }
                } else {
                    out.push((k, "NotUnderstood".into()));
                }
            }
            pdu::encode_text(&out)
        };
        let max = self.params.max_xmit_dsl as usize;
        let mut r = Bhs::new(op::TEXT_RSP, 0);
        r.set_itt(h.itt());
        let chunk = if body.len() > max {
            let ttt = self.next_ping_ttt | 0x8000_0000;
            self.next_ping_ttt = self.next_ping_ttt.wrapping_add(1) & 0x7fff_ffff;
            r.0[1] = 0x40; // C: more follows
            r.set_u32(at::W20, ttt);
            self.text_rest = Some((ttt, body[max..].to_vec()));
            &body[..max]
        } else {
            r.0[1] = F_FINAL;
            r.set_u32(at::W20, RESERVED_TAG);
            &body[..]
        };
        let chunk = chunk.to_vec();
        self.seal(&mut r, true);
        self.send(&r, &chunk);
    }

    fn on_logout(&mut self, core: &mut Core, me: HandlerRef, h: &Bhs) {
        if !self.accept_cmd_sn(core, me, h) {
            return;
        }
        let reason = h.flags() & 0x7f;
        let cid = h.u16_at(20);
        let members = self.session.as_ref().map(|s| s.members()).unwrap_or_default();
        let response = match reason {
            0 => 0,
            1 if cid == self.cid => 0,
            // Another connection of the session, closed from here (RFC 7143 §11.14.1).
            1 => match members.iter().find(|m| m.cid == cid) {
                Some(m) => {
                    close_conn(core, m.handler);
                    return self.logout_response(core, me, h, 0, false);
                }
                None => return self.logout_response(core, me, h, 1, false), // CID not found
            },
            2 => 2, // connection recovery needs ErrorRecoveryLevel 2
            _ => return self.reject(h, reject::PROTOCOL_ERROR),
        };
        if reason == 0 {
            // Close the session: every connection of it.
            for m in members.iter().filter(|m| m.handler != me) {
                close_conn(core, m.handler);
            }
        }
        if let Some(p) = self.port.as_mut() {
            for slot in self.tasks.active_slots() {
                if self.tasks.get_mut(slot).submitted {
                    p.abort_task(self.tasks.handle(slot));
                }
            }
        }
        self.abort_where(|_| true);
        self.logout_response(core, me, h, response, response == 0);
    }

    fn logout_response(&mut self, core: &mut Core, me: HandlerRef, h: &Bhs, response: u8, close: bool) {
        let mut r = Bhs::new(op::LOGOUT_RSP, F_FINAL);
        r.set_b2(response);
        r.set_itt(h.itt());
        self.seal(&mut r, true);
        self.send(&r, &[]);
        if close {
            self.phase = Phase::Closing;
        }
        core.want_flush(me);
    }

    /// Our PREEMPT AND ABORT completed: tell every connection of a preempted initiator port
    /// (each checks its own target port and LUNs).
    fn forward_abort(&mut self, core: &mut Core, a: PreemptAbort) {
        let ports: Vec<&str> = a
            .preempted
            .iter()
            .filter_map(|(n, _)| match n {
                Nexus::Iscsi { initiator_port, .. } => Some(initiator_port.as_str()),
                Nexus::Nvme { .. } => None,
            })
            .collect();
        let victims: Vec<HandlerRef> = self
            .target
            .conns
            .lock()
            .unwrap()
            .values()
            .filter(|c| {
                let port = format!("{},i,0x{}", c.initiator_name, login::hex(&c.isid));
                ports.iter().any(|p| p.eq_ignore_ascii_case(&port))
            })
            .map(|c| c.handler)
            .collect();
        if victims.is_empty() {
            return;
        }
        let a = Arc::new(a);
        for h in victims {
            let a = a.clone();
            core.reactors().send(h.reactor, move |r| {
                r.send_to_handler(h, Box::new(VictimAbort(a)));
            });
        }
    }

    /// Another nexus' PREEMPT AND ABORT removed our registration: every task we still hold on a
    /// LUN of that volume is aborted and, as the control mode page says TAS=1, answered with
    /// TASK ABORTED (SPC-4 5.13.11.4.5, SAM-5 5.6). The preempt completed only after our writes
    /// drained, so what is left are tasks waiting for Data-Out, reads, and commands that were
    /// refused anyway; a late I/O completion of an aborted task is dropped.
    fn abort_preempted(&mut self, core: &mut Core, me: HandlerRef, a: &PreemptAbort) {
        let Some(p) = self.port.as_mut() else { return };
        if !a.concerns(&p.initiator) {
            return;
        }
        let luns: Vec<u64> = p.luns.luns.iter().filter(|l| Arc::ptr_eq(&l.volume, &a.volume)).map(|l| l.id).collect();
        if luns.is_empty() {
            return;
        }
        let mut aborted = Vec::new();
        for slot in self.tasks.active_slots() {
            let handle = self.tasks.handle(slot);
            let t = self.tasks.get_mut(slot);
            if luns.contains(&t.lun) {
                let handle = t.submitted.then_some(handle);
                aborted.push((t.itt(), t.r2t_sn, handle));
                self.tasks.free(slot);
            }
        }
        for &(itt, r2ts, handle) in &aborted {
            if let (Some(p), Some(handle)) = (self.port.as_mut(), handle) {
                p.abort_task(handle);
            }
            self.send_scsi_response_resid(&ScsiResponse::status(itt, status::TASK_ABORTED), r2ts, None);
        }
        if !aborted.is_empty() {
            tracing::info!(conn = self.id, tasks = aborted.len(), "iscsi: tasks aborted by PREEMPT AND ABORT");
            core.want_flush(me);
        }
    }

    fn write_out(&mut self, core: &mut Core, me: HandlerRef) {
        match self.out.write_to(&mut self.sock) {
            Ok(false) => return, // the socket is full: a writable event brings us back
            Ok(true) => {}
            Err(e) => return self.fatal(core, me, &format!("write: {e}")),
        }
        if self.unsent_budget > 0 {
            self.tasks.release(std::mem::take(&mut self.unsent_budget));
            self.unpark(core, me);
        }
        if self.phase == Phase::Closing {
            core.close(me);
        } else if self.rxl.read_blocked() {
            self.read_and_process(core, me, true);
        }
    }
}

impl Handler for Conn {
    fn on_ready(&mut self, core: &mut Core, me: HandlerRef, ev: &mio::event::Event) {
        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
            self.read_and_process(core, me, ev.is_read_closed() || ev.is_error());
        }
        if ev.is_writable() && self.out.pending() {
            core.want_flush(me);
        }
    }

    fn on_io_complete(&mut self, core: &mut Core, me: HandlerRef, ev: IoEvent) {
        if let Some(p) = self.port.as_mut() {
            p.on_io_complete(core, me, ev);
        }
        self.drain(core, me);
    }

    fn on_flush(&mut self, core: &mut Core, me: HandlerRef) {
        self.write_out(core, me);
    }

    /// A PR OUT that waited for persistence or a fence drain has finished; or a PREEMPT AND
    /// ABORT (ours, or another nexus' that preempted us) has completed.
    fn on_message(&mut self, core: &mut Core, me: HandlerRef, msg: Box<dyn std::any::Any + Send>) {
        let Some(p) = self.port.as_mut() else { return };
        let msg = match crate::scsi::pr::take_deferred(p, msg) {
            Ok(()) => return self.drain(core, me),
            Err(m) => m,
        };
        let msg = match msg.downcast::<PreemptAbort>() {
            Ok(a) => return self.forward_abort(core, *a),
            Err(m) => m,
        };
        let msg = match msg.downcast::<tmf::Answer>() {
            Ok(a) => {
                self.tmf_pending = self.tmf_pending.saturating_sub(1);
                return self.answer_tmf(core, me, *a);
            }
            Err(m) => m,
        };
        let msg = match msg.downcast::<tmf::OtherNexusAbort>() {
            Ok(a) => return self.abort_for_other(core, me, &a.0),
            Err(m) => m,
        };
        let msg = match msg.downcast::<tmf::SessionAbort>() {
            Ok(a) => return self.abort_in_session(a.lun, a.reset),
            Err(m) => m,
        };
        if let Ok(v) = msg.downcast::<VictimAbort>() {
            self.abort_preempted(core, me, &v.0);
        }
    }

    /// Requests held for their CmdSN: start those whose turn another connection brought.
    fn on_poll(&mut self, core: &mut Core, me: HandlerRef) -> usize {
        if self.phase != Phase::FullFeature {
            return 0;
        }
        let n = if self.held.is_empty() { 0 } else { self.run_held(core, me) };
        if self.held.is_empty() {
            // Nothing waits for its CmdSN: let an adaptive reactor sleep again.
            self.polled = false;
            core.unpoll(me);
        }
        n
    }

    fn on_tick(&mut self, core: &mut Core, me: HandlerRef) {
        if !self.rxl.landing() && self.phase == Phase::FullFeature {
            // A command whose immediate data never completed (its task was aborted meanwhile).
            self.settle_owed(core, me);
        }
        match self.phase {
            Phase::Login if core.now.duration_since(self.started) > self.login_timeout => {
                self.fatal(core, me, "login timed out")
            }
            Phase::FullFeature => {
                if core.now.duration_since(self.last_rx) > RX_IDLE_RELEASE {
                    self.rxl.rx().release_if_empty();
                }
                if let Some((_, sent)) = self.ping {
                    if core.now.duration_since(sent) > self.nop_timeout {
                        self.fatal(core, me, "no answer to NOP-In");
                    }
                } else if core.now.duration_since(self.last_rx) > self.nop_interval {
                    // Ping an idle connection; a dead peer is dropped after nop_timeout.
                    let ttt = self.next_ping_ttt & 0x7fff_ffff;
                    self.next_ping_ttt = self.next_ping_ttt.wrapping_add(1);
                    let mut r = Bhs::new(op::NOP_IN, F_FINAL);
                    r.set_itt(RESERVED_TAG);
                    r.set_u32(at::W20, ttt);
                    r.set_u32(at::W24, self.stat_sn);
                    self.seal(&mut r, false);
                    self.send(&r, &[]);
                    self.ping = Some((ttt, core.now));
                    self.last_rx = core.now;
                    core.want_flush(me);
                }
            }
            _ => {}
        }
    }

    fn on_close(&mut self, core: &mut Core, _me: HandlerRef) {
        let _ = core.registry().deregister(&mut self.sock);
        // Logout, connection loss or reinstatement: when the session's last connection goes, the
        // session, and so the I_T nexus, ends (an SPC-2 RESERVE of this nexus is released;
        // persistent reservations stay). At ErrorRecoveryLevel 0 the other connections go on;
        // the tasks of this one end with it.
        let last = match self.session.as_ref() {
            Some(s) => {
                let last = s.leave(self.id);
                if last {
                    self.target.remove_session(s);
                }
                last
            }
            None => true,
        };
        if !self.held.is_empty() {
            tracing::info!(conn = self.id, held = self.held.len(), "iscsi: connection closed with commands waiting for their CmdSN");
        }
        if let (true, Some(p)) = (last, self.port.as_ref()) {
            p.nexus_lost();
        }
        if self.registered {
            self.target.unregister_conn(self.id);
        }
    }
}

/// The connection as the shared read loop sees it.
struct Rx<'a> {
    c: &'a mut Conn,
    me: HandlerRef,
}

impl RxProto for Rx<'_> {
    type Key = Option<Dest>;

    fn frame(&mut self, core: &mut Core, buf: &[u8]) -> rxloop::Step<Option<Dest>> {
        let (c, me) = (&mut *self.c, self.me);
        let (hd, dd) = hd_dd(&c.params);
        let max = c.params.max_recv_dsl as usize;
        if c.phase == Phase::FullFeature && buf.len() >= pdu::BHS_LEN && matches!(buf[0] & 0x3f, op::SCSI_CMD | op::DATA_OUT) {
            // Header first; the data segment is landed in place after it.
            let hdr = match pdu::parse_header(buf, hd, dd, max) {
                Ok(Some(h)) => h,
                Ok(None) => return rxloop::Step::More,
                Err(e) => {
                    c.fatal(core, me, &e.to_string());
                    return rxloop::Step::Stop;
                }
            };
            let ahs = &buf[hdr.ahs.0..hdr.ahs.1];
            let dest = if hdr.bhs.opcode() == op::SCSI_CMD {
                c.on_scsi_cmd(core, me, &hdr.bhs, ahs, hdr.data_len)
            } else {
                c.on_data_out(core, me, &hdr.bhs, hdr.data_len)
            };
            let pad = pdu::pad4(hdr.data_len) - hdr.data_len;
            return rxloop::Step::Land(hdr.data_start, Landing::new(dest, hdr.data_len, pad, dd && hdr.data_len > 0));
        }
        let frame = match pdu::parse_frame(buf, hd, dd, max) {
            Ok(Some(f)) => f,
            Ok(None) => return rxloop::Step::More,
            Err((e, _)) => {
                c.fatal(core, me, &e.to_string());
                return rxloop::Step::Stop;
            }
        };
        let data = &buf[frame.data.0..frame.data.1];
        let ahs = &buf[frame.ahs.0..frame.ahs.1];
        c.dispatch(core, me, &frame.bhs, ahs, data);
        rxloop::Step::Done(frame.total)
    }

    fn landing_buf(&mut self, key: Option<Dest>, off: usize, len: usize) -> Option<&mut [u8]> {
        let d = key?;
        self.c.tasks.buffer_at(d.slot, d.handle, d.off + off, len)
    }

    fn landed(&mut self, core: &mut Core, key: Option<Dest>, len: usize, digest_ok: bool) {
        if !digest_ok {
            return self.c.fatal(core, self.me, "data digest mismatch");
        }
        if let Some(d) = key {
            if self.c.tasks.find_submitted(d.handle).is_none() && self.c.tasks.is_live(d.slot, d.handle) {
                self.c.data_landed(core, self.me, d, len as u32);
            }
        }
    }

    fn closing(&self) -> bool {
        self.c.phase == Phase::Closing
    }

    fn tx_blocked(&self) -> bool {
        self.c.out.backlog() > TX_HIGH_WATER
    }

    fn rx_capacity(&self) -> usize {
        if self.c.phase == Phase::FullFeature { RX_CAP } else { LOGIN_RX_CAP }
    }

    fn peek_len(&self) -> usize {
        pdu::BHS_LEN + if self.c.params.header_digest { 4 } else { 0 }
    }

    fn received(&mut self, now: Instant) {
        self.c.last_rx = now;
    }

    fn gone(&mut self, core: &mut Core, err: Option<std::io::Error>) {
        match err {
            None => self.c.fatal(core, self.me, "peer closed"),
            Some(e) => self.c.fatal(core, self.me, &format!("read: {e}")),
        }
    }

    fn no_room(&mut self, core: &mut Core, mapped: bool) {
        let why = if mapped { "PDU larger than the receive buffer" } else { "cannot map a receive buffer" };
        self.c.fatal(core, self.me, why);
    }

    fn processed(&mut self, core: &mut Core) {
        if self.c.out.pending() {
            core.want_flush(self.me);
        }
    }
}
