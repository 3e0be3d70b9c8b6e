//! The loop transport (Linux nvmet's loop.c): a host in the same process hands commands to a
//! queue pair through two single-producer rings, with no socket and no copy. Host memory goes
//! with the command as a pooled buffer (the write data, or where a read lands) and comes back
//! with the completion. It proves the transport boundary and measures the core's own cost.
//!
//! The target side is a handler polled by its reactor; the host side ([`LoopQueue`]) is used by
//! one thread (`palisade perf --transport loop`).

use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::fabrics::{build_connect_sqe, ConnectData};
use super::qpair::QPair;
use super::transport::{CmdData, Transport, TransportKind};
use super::{ListenAddr, Target};
use crate::nvme::spec::{self, Cqe, Sqe};
use crate::reactor::{Core, Handler, HandlerRef, IoBuf, IoEvent};

/// The `trtype` of loop listeners.
pub const TRTYPE: &str = "LOOP";

/// A bounded single-producer single-consumer ring (lock-free: one atomic store per side).
pub struct Ring<T> {
    slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
    mask: usize,
    head: Padded,
    tail: Padded,
}

#[repr(align(64))]
struct Padded(AtomicUsize);

// SAFETY: a slot is written only by the producer before it publishes `tail`, and read only by
// the consumer before it publishes `head`; T moves between the two threads.
unsafe impl<T: Send> Sync for Ring<T> {}
unsafe impl<T: Send> Send for Ring<T> {}

impl<T> Ring<T> {
    pub fn new(cap: usize) -> Ring<T> {
        let n = cap.next_power_of_two().max(2);
        Ring { slots: (0..n).map(|_| UnsafeCell::new(MaybeUninit::uninit())).collect(), mask: n - 1, head: Padded(AtomicUsize::new(0)), tail: Padded(AtomicUsize::new(0)) }
    }
    /// Producer side only.
    pub fn push(&self, v: T) -> Result<(), T> {
        let t = self.tail.0.load(Ordering::Relaxed);
        if t.wrapping_sub(self.head.0.load(Ordering::Acquire)) > self.mask {
            return Err(v);
        }
        // SAFETY: slot t is free (the consumer has moved past it) and only we write it.
        unsafe { (*self.slots[t & self.mask].get()).write(v) };
        self.tail.0.store(t.wrapping_add(1), Ordering::Release);
        Ok(())
    }
    /// Consumer side only.
    pub fn pop(&self) -> Option<T> {
        let h = self.head.0.load(Ordering::Relaxed);
        if h == self.tail.0.load(Ordering::Acquire) {
            return None;
        }
        // SAFETY: slot h was published by the producer and only we read it.
        let v = unsafe { (*self.slots[h & self.mask].get()).assume_init_read() };
        self.head.0.store(h.wrapping_add(1), Ordering::Release);
        Some(v)
    }
    pub fn is_empty(&self) -> bool {
        self.head.0.load(Ordering::Acquire) == self.tail.0.load(Ordering::Acquire)
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        while self.pop().is_some() {}
    }
}

/// What the two sides share.
struct Shared {
    sq: Ring<(Sqe, Option<IoBuf>)>,
    cq: Ring<(Cqe, Option<IoBuf>)>,
    /// The host is gone, or the target closed the queue.
    closed: AtomicBool,
}

/// Loop listeners need no socket: the "listener" is a handler that only exists to be closed.
pub struct LoopKind;

struct NoListener;
impl Handler for NoListener {
    fn on_ready(&mut self, _: &mut Core, _: HandlerRef, _: &mio::event::Event) {}
}

impl TransportKind for LoopKind {
    fn listen(&self, t: &Arc<Target>, _addr: &ListenAddr) -> std::io::Result<HandlerRef> {
        let r = t.reactors.next_reactor();
        t.reactors
            .call(r, |reactor| reactor.add_handler(|_, _| Some(Box::new(NoListener) as Box<dyn Handler>)))
            .flatten()
            .ok_or_else(|| std::io::Error::other("reactor refused the loop listener"))
    }
}

/// The loop address subsystems listen on to accept loop hosts.
pub fn listen_addr() -> ListenAddr {
    ListenAddr { trtype: TRTYPE.into(), adrfam: String::new(), traddr: String::new(), trsvcid: String::new() }
}

/// Register the loop transport with the target.
pub fn register(t: &Target) {
    t.register_transport(TRTYPE, Arc::new(LoopKind));
}

/// The target side's send half: completions and data go into the completion ring.
struct LoopTx {
    sh: Arc<Shared>,
    /// Host memory to return with the next completion.
    data: Option<IoBuf>,
    sent: u64,
    closing: bool,
}

impl Transport for LoopTx {
    fn request_data(&mut self, _core: &mut Core, _cid: u16, _ttag: u16, _len: u32) {
        // A loop host always sends its data with the command; the core never asks.
    }
    fn send_data(&mut self, _core: &mut Core, _cid: u16, data: &[u8]) {
        let mut b = IoBuf::for_overwrite(data.len());
        b.copy_from_slice(data);
        self.data = Some(b);
    }
    fn send_data_buf(&mut self, _core: &mut Core, _cid: u16, data: IoBuf, _completes: bool) {
        self.data = Some(data);
    }
    fn recycle(&mut self, buf: IoBuf) {
        if self.data.is_none() {
            self.data = Some(buf);
        }
    }
    fn send_cqe(&mut self, _core: &mut Core, cqe: &Cqe) {
        // The ring holds a queue's depth plus room for AERs: a full ring is a host that stopped
        // polling, and its answers are dropped with it.
        let _ = self.sh.cq.push((*cqe, self.data.take()));
        self.sent += 1;
    }
    fn data_completes(&self) -> bool {
        false
    }
    fn queued(&self) -> u64 {
        self.sent
    }
    fn taken(&self) -> u64 {
        self.sent
    }
    fn close(&mut self, _core: &mut Core) {
        self.closing = true;
    }
}

/// The target side of one loop queue pair.
struct LoopConn {
    sh: Arc<Shared>,
    tx: LoopTx,
    q: QPair,
}

impl LoopConn {
    fn drain_sq(&mut self, core: &mut Core) -> usize {
        let mut n = 0;
        while let Some((sqe, buf)) = self.sh.sq.pop() {
            n += 1;
            let data = match buf {
                Some(b) => CmdData::Buf(b),
                None => CmdData::None,
            };
            if self.q.on_capsule(core, &mut self.tx, sqe, data).is_err() {
                // More commands than the queue holds: the host broke flow control.
                self.tx.closing = true;
                break;
            }
        }
        if n > 0 {
            self.q.on_sent(core, &mut self.tx);
        }
        n
    }
}

impl Handler for LoopConn {
    fn on_ready(&mut self, _: &mut Core, _: HandlerRef, _: &mio::event::Event) {}
    fn on_poll(&mut self, core: &mut Core, me: HandlerRef) -> usize {
        if self.tx.closing || self.sh.closed.load(Ordering::Acquire) {
            core.close(me);
            return 0;
        }
        self.drain_sq(core)
    }
    fn on_io_complete(&mut self, core: &mut Core, _: HandlerRef, ev: IoEvent) {
        self.q.on_io_complete(core, &mut self.tx, ev);
        self.q.on_sent(core, &mut self.tx);
    }
    fn on_tick(&mut self, core: &mut Core, me: HandlerRef) {
        if !self.q.on_tick(core, &mut self.tx) {
            core.close(me);
        }
    }
    fn on_message(&mut self, core: &mut Core, _: HandlerRef, msg: Box<dyn std::any::Any + Send>) {
        self.q.on_message(core, &mut self.tx, msg);
        self.q.on_sent(core, &mut self.tx);
    }
    fn on_close(&mut self, _: &mut Core, _: HandlerRef) {
        self.sh.closed.store(true, Ordering::Release);
        self.q.on_close();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("the target has no NVMe-oF transport (nvmf_create_transport first)")]
    NoTransport,
    #[error("reactor {0} refused the queue pair")]
    Reactor(u32),
    #[error("{0} failed: NVMe status {1}")]
    Status(&'static str, spec::Status),
    #[error("no answer from the target within {0:?}")]
    Timeout(Duration),
    #[error("the queue pair is closed")]
    Closed,
    #[error("namespace {0} does not exist")]
    NoNamespace(u32),
}

/// The host side of one loop queue pair, used by one thread.
pub struct LoopQueue {
    sh: Arc<Shared>,
    t: Arc<Target>,
    reactor: u32,
    depth: usize,
}

impl LoopQueue {
    /// Open a queue pair of `depth` entries on `reactor` (admin queue if `qid` is 0).
    fn open(t: &Arc<Target>, reactor: u32, depth: usize) -> Result<LoopQueue, LoopError> {
        let opts = t.transport().ok_or(LoopError::NoTransport)?;
        // Room for every command's completion plus AERs and the odd extra answer.
        let sh = Arc::new(Shared { sq: Ring::new(depth + 1), cq: Ring::new(2 * depth + 8), closed: AtomicBool::new(false) });
        let (sh2, t2) = (sh.clone(), t.clone());
        let ok = t
            .reactors
            .call(reactor, move |r| {
                r.add_handler(move |core, me| {
                    let q = QPair::new(t2, opts, me, Arc::new(listen_addr()), format!("loop:{}", me.slot), core.now);
                    core.want_poll(me);
                    Some(Box::new(LoopConn { sh: sh2.clone(), tx: LoopTx { sh: sh2, data: None, sent: 0, closing: false }, q }) as Box<dyn Handler>)
                })
            })
            .flatten()
            .is_some();
        if !ok {
            return Err(LoopError::Reactor(reactor));
        }
        Ok(LoopQueue { sh, t: t.clone(), reactor, depth })
    }

    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Queue a command; `buf` is the host memory for its data (written data, or where a read
    /// lands). Gives both back if the ring is full.
    pub fn submit(&self, sqe: Sqe, buf: Option<IoBuf>) -> Result<(), (Sqe, Option<IoBuf>)> {
        if self.sh.closed.load(Ordering::Relaxed) {
            return Err((sqe, buf));
        }
        self.sh.sq.push((sqe, buf))?;
        // A sleeping reactor (adaptive polling) is woken; a busy one finds the command itself.
        if self.t.reactors.in_interrupt(self.reactor as usize) {
            self.t.reactors.send(self.reactor, |_| {});
        }
        Ok(())
    }

    /// Take every completion that is ready.
    pub fn poll(&self, f: &mut dyn FnMut(Cqe, Option<IoBuf>)) -> usize {
        let mut n = 0;
        while let Some((c, b)) = self.pop() {
            f(c, b);
            n += 1;
        }
        n
    }

    /// One completion, if ready.
    pub fn pop(&self) -> Option<(Cqe, Option<IoBuf>)> {
        self.sh.cq.pop()
    }

    pub fn is_closed(&self) -> bool {
        self.sh.closed.load(Ordering::Acquire)
    }

    /// One command, waiting for its completion (setup commands only).
    pub fn sync(&self, sqe: Sqe, buf: Option<IoBuf>, timeout: Duration) -> Result<(Cqe, Option<IoBuf>), LoopError> {
        let cid = sqe.cid();
        self.submit(sqe, buf).map_err(|_| LoopError::Closed)?;
        let end = Instant::now() + timeout;
        loop {
            if let Some((c, b)) = self.sh.cq.pop() {
                if c.cid == cid {
                    return Ok((c, b));
                }
                continue;
            }
            if self.is_closed() {
                return Err(LoopError::Closed);
            }
            if Instant::now() > end {
                return Err(LoopError::Timeout(timeout));
            }
            std::thread::yield_now();
        }
    }
}

impl Drop for LoopQueue {
    fn drop(&mut self) {
        self.sh.closed.store(true, Ordering::Release);
        if self.t.reactors.in_interrupt(self.reactor as usize) {
            self.t.reactors.send(self.reactor, |_| {});
        }
    }
}

const SETUP_TIMEOUT: Duration = Duration::from_secs(5);

/// A controller reached through the loop transport: its admin queue and what the host learned.
pub struct LoopController {
    pub admin: LoopQueue,
    pub cntlid: u16,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    pub subnqn: String,
}

fn check(what: &'static str, c: &Cqe) -> Result<(), LoopError> {
    if c.status.is_ok() {
        Ok(())
    } else {
        Err(LoopError::Status(what, c.status))
    }
}

fn connect_buf(d: &ConnectData) -> IoBuf {
    let mut b = IoBuf::for_overwrite(1024);
    b.copy_from_slice(&d.encode());
    b
}

impl LoopController {
    /// Connect to `subnqn` as `hostnqn` (admin queue on `reactor`) and enable the controller.
    pub fn connect(t: &Arc<Target>, subnqn: &str, hostnqn: &str, reactor: u32) -> Result<LoopController, LoopError> {
        let admin = LoopQueue::open(t, reactor, 32)?;
        let hostid = *uuid::Uuid::new_v4().as_bytes();
        let d = ConnectData { hostid, cntlid: 0xffff, subnqn: subnqn.into(), hostnqn: hostnqn.into() };
        let (c, _) = admin.sync(build_connect_sqe(0, 0, 31, 0, false), Some(connect_buf(&d)), SETUP_TIMEOUT)?;
        check("Connect", &c)?;
        let cntlid = c.dw0 as u16;
        // Property Set CC: EN=1, IOSQES 6, IOCQES 4 (Base 3.1.5).
        let mut s = Sqe::default();
        s.set_opcode(spec::admin::FABRICS).set_cid(1);
        s.0[4] = spec::fctype::PROPERTY_SET;
        s.0[40] = 0; // ATTRIB: 4 bytes
        s.0[44..48].copy_from_slice(&spec::prop::CC.to_le_bytes());
        s.0[48..56].copy_from_slice(&(1u64 | 6 << 16 | 4 << 20).to_le_bytes());
        let (c, _) = admin.sync(s, None, SETUP_TIMEOUT)?;
        check("Property Set CC", &c)?;
        Ok(LoopController { admin, cntlid, hostnqn: hostnqn.into(), hostid, subnqn: subnqn.into() })
    }

    /// Namespace `nsid`'s size in blocks and block size (Identify Namespace).
    pub fn namespace(&self, nsid: u32) -> Result<(u64, u32), LoopError> {
        let mut s = Sqe::default();
        s.set_opcode(spec::admin::IDENTIFY).set_cid(2).set_nsid(nsid).set_cdw(10, spec::cns::NAMESPACE as u32);
        s.set_sgl(spec::Sgl { address: 0, length: 4096, id: spec::sgl::TRANSPORT_DATA_BLOCK });
        let (c, b) = self.admin.sync(s, None, SETUP_TIMEOUT)?;
        check("Identify Namespace", &c)?;
        let b = b.ok_or(LoopError::NoNamespace(nsid))?;
        let nsze = u64::from_le_bytes(b[0..8].try_into().unwrap());
        if nsze == 0 {
            return Err(LoopError::NoNamespace(nsid));
        }
        let flbas = (b[26] & 0xf) as usize;
        let lbads = b[128 + flbas * 4 + 2];
        Ok((nsze, 1u32 << lbads))
    }

    /// Open I/O queue `qid` of `depth` entries on `reactor`.
    pub fn io_queue(&self, qid: u16, depth: usize, reactor: u32) -> Result<LoopQueue, LoopError> {
        let q = LoopQueue::open(&self.t(), reactor, depth)?;
        let d = ConnectData { hostid: self.hostid, cntlid: self.cntlid, subnqn: self.subnqn.clone(), hostnqn: self.hostnqn.clone() };
        let (c, _) = q.sync(build_connect_sqe(0, qid, (depth - 1) as u16, 0, false), Some(connect_buf(&d)), SETUP_TIMEOUT)?;
        check("Connect (I/O queue)", &c)?;
        Ok(q)
    }

    fn t(&self) -> Arc<Target> {
        self.admin.t.clone()
    }
}
