//! The poll-mode runtime: one pinned thread per core in the mask.
//!
//! A reactor owns its handlers (connections, queue pairs, listeners) for their whole life and runs
//! them without locks: socket readiness (epoll through `mio`), I/O completions, pollers, a 100 ms
//! tick for timers, and a message queue for cross-reactor and management work. In adaptive mode it
//! busy-polls while work arrives and sleeps in `epoll_wait` after a short idle spell, so it shares a
//! small machine with an initiator; in busy mode it never sleeps.
//!
//! Upper layers plug in through [`Handler`] and [`Poller`]; completions are a plain [`IoEvent`] so
//! this layer knows nothing of block devices.

pub mod alloc;
pub mod budget;
pub mod buf;
pub mod counter;
pub mod listener;
pub mod outq;
pub mod rxbuf;
pub mod rxloop;
pub mod tls;

use std::any::Any;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use buf::IoBuf;
pub use rxbuf::RxBuf;

/// Token used by sources that only need to wake the reactor (eventfds of io_uring rings, the waker).
pub const WAKE_TOKEN: mio::Token = mio::Token(usize::MAX);
const TICK: Duration = Duration::from_millis(100);
/// A reactor idle this long frees the buffers its pool keeps.
const POOL_TRIM_IDLE: Duration = Duration::from_secs(2);
/// How long an adaptive reactor keeps spinning after its last piece of work before it sleeps.
const SPIN_WINDOW: Duration = Duration::from_micros(200);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollMode {
    Adaptive,
    Busy,
}

/// Address of a handler: reactor, slot and generation (a reused slot gets a new generation, so a
/// late completion or message for a closed handler is dropped instead of misdelivered).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HandlerRef {
    pub reactor: u32,
    pub slot: u32,
    pub gen: u32,
}

impl HandlerRef {
    pub fn token(&self) -> mio::Token {
        mio::Token(self.slot as usize)
    }
}

/// Completion of an asynchronous operation a handler started (block I/O, or anything a poller
/// finishes on its behalf). `status` is 0 or a negative errno.
#[derive(Debug)]
pub struct IoEvent {
    pub tag: u64,
    pub status: i32,
    pub buf: Option<IoBuf>,
}

pub trait Handler: Send + 'static {
    /// Socket readiness for this handler's token.
    fn on_ready(&mut self, core: &mut Core, me: HandlerRef, ev: &mio::event::Event);
    /// An operation this handler started has completed.
    fn on_io_complete(&mut self, _core: &mut Core, _me: HandlerRef, _ev: IoEvent) {}
    /// Called about every 100 ms (keep-alive, NOP-In, recall timers).
    fn on_tick(&mut self, _core: &mut Core, _me: HandlerRef) {}
    /// Write out what was queued during this loop iteration (one syscall for many responses).
    fn on_flush(&mut self, _core: &mut Core, _me: HandlerRef) {}
    /// A message addressed to this handler by another layer or reactor.
    fn on_message(&mut self, _core: &mut Core, _me: HandlerRef, _msg: Box<dyn Any + Send>) {}
    /// Called on every loop iteration once the handler asked with [`Core::want_poll`] (a queue
    /// fed through memory rather than a socket); returns how much work it did (0 = idle).
    fn on_poll(&mut self, _core: &mut Core, _me: HandlerRef) -> usize {
        0
    }
    /// The handler is being removed (closed by itself, by a message, or at shutdown).
    fn on_close(&mut self, _core: &mut Core, _me: HandlerRef) {}
}

pub trait Poller: Send + 'static {
    /// Do a bounded amount of work; return how much was done (0 = idle).
    fn poll(&mut self, core: &mut Core) -> usize;
}

pub type Msg = Box<dyn FnOnce(&mut Reactor) + Send>;
type HandlerCtor = Box<dyn FnOnce(&mut Core, HandlerRef) -> Option<Box<dyn Handler>> + Send>;

/// Per-reactor state handlers may use while the reactor calls them.
pub struct Core {
    pub id: u32,
    pub now: Instant,
    pub mode: PollMode,
    registry: mio::Registry,
    completions: VecDeque<(HandlerRef, IoEvent)>,
    flush: Vec<HandlerRef>,
    spawned: Vec<HandlerCtor>,
    closing: Vec<HandlerRef>,
    /// Handlers polled every iteration (`on_poll`), until they are removed.
    polled: Vec<HandlerRef>,
    set: ReactorSet,
}

impl Core {
    pub fn registry(&self) -> &mio::Registry {
        &self.registry
    }
    /// Deliver `ev` to `owner` from this reactor's loop (owner must live on this reactor).
    pub fn complete(&mut self, owner: HandlerRef, ev: IoEvent) {
        self.completions.push_back((owner, ev));
    }
    /// Have `on_poll` called on every loop iteration until [`Core::unpoll`] or the handler ends.
    pub fn want_poll(&mut self, me: HandlerRef) {
        if !self.polled.contains(&me) {
            self.polled.push(me);
        }
    }

    /// Stop calling `on_poll` (a handler with nothing to poll lets an adaptive reactor sleep).
    pub fn unpoll(&mut self, me: HandlerRef) {
        if let Some(i) = self.polled.iter().position(|h| *h == me) {
            self.polled.swap_remove(i);
        }
    }

    /// Ask for `on_flush` at the end of this loop iteration.
    pub fn want_flush(&mut self, me: HandlerRef) {
        if self.flush.last() != Some(&me) {
            self.flush.push(me);
        }
    }
    /// Remove a handler after the current dispatch.
    pub fn close(&mut self, me: HandlerRef) {
        self.closing.push(me);
    }
    /// Add a handler to this reactor after the current dispatch.
    pub fn spawn(
        &mut self,
        ctor: impl FnOnce(&mut Core, HandlerRef) -> Option<Box<dyn Handler>> + Send + 'static,
    ) {
        self.spawned.push(Box::new(ctor));
    }
    pub fn reactors(&self) -> &ReactorSet {
        &self.set
    }
}

struct Slot {
    gen: u32,
    handler: Option<Box<dyn Handler>>,
}

pub struct Reactor {
    pub core: Core,
    slots: Vec<Slot>,
    free: Vec<u32>,
    pollers: Vec<Box<dyn Poller>>,
    poll: mio::Poll,
    rx: mpsc::Receiver<Msg>,
    next_gen: u32,
    /// The other half of the double-buffered flush list.
    flush_spare: Vec<HandlerRef>,
}

impl Reactor {
    pub fn id(&self) -> u32 {
        self.core.id
    }

    /// Create a handler on this reactor; the constructor receives its address (to register a socket).
    pub fn add_handler(
        &mut self,
        ctor: impl FnOnce(&mut Core, HandlerRef) -> Option<Box<dyn Handler>>,
    ) -> Option<HandlerRef> {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(Slot { gen: 0, handler: None });
                (self.slots.len() - 1) as u32
            }
        };
        self.next_gen = self.next_gen.wrapping_add(1);
        let me = HandlerRef { reactor: self.core.id, slot, gen: self.next_gen };
        self.slots[slot as usize].gen = me.gen;
        match ctor(&mut self.core, me) {
            Some(h) => {
                self.slots[slot as usize].handler = Some(h);
                Some(me)
            }
            None => {
                self.slots[slot as usize].gen = 0;
                self.free.push(slot);
                None
            }
        }
    }

    pub fn add_poller(&mut self, p: Box<dyn Poller>) {
        self.pollers.push(p);
    }

    /// Run `f` on a live handler; false if it is gone.
    pub fn with_handler(
        &mut self,
        me: HandlerRef,
        f: impl FnOnce(&mut dyn Handler, &mut Core, HandlerRef),
    ) -> bool {
        let Some(slot) = self.slots.get_mut(me.slot as usize) else { return false };
        if slot.gen != me.gen {
            return false;
        }
        let Some(mut h) = slot.handler.take() else { return false };
        f(h.as_mut(), &mut self.core, me);
        self.put_back(me, h);
        true
    }

    /// Deliver a message to a handler on this reactor.
    pub fn send_to_handler(&mut self, me: HandlerRef, msg: Box<dyn Any + Send>) -> bool {
        self.with_handler(me, |h, core, me| h.on_message(core, me, msg))
    }

    /// Addresses of every live handler (for broadcasts such as "abort this nexus").
    pub fn handlers(&self) -> Vec<HandlerRef> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.handler.is_some())
            .map(|(i, s)| HandlerRef { reactor: self.core.id, slot: i as u32, gen: s.gen })
            .collect()
    }

    fn put_back(&mut self, me: HandlerRef, h: Box<dyn Handler>) {
        let slot = &mut self.slots[me.slot as usize];
        if slot.gen == me.gen && slot.handler.is_none() {
            slot.handler = Some(h);
        }
    }

    fn call(&mut self, slot: usize, f: impl FnOnce(&mut dyn Handler, &mut Core, HandlerRef)) {
        let Some(s) = self.slots.get_mut(slot) else { return };
        let me = HandlerRef { reactor: self.core.id, slot: slot as u32, gen: s.gen };
        let Some(mut h) = s.handler.take() else { return };
        f(h.as_mut(), &mut self.core, me);
        self.put_back(me, h);
    }

    fn remove(&mut self, me: HandlerRef) {
        let Some(slot) = self.slots.get_mut(me.slot as usize) else { return };
        if slot.gen != me.gen {
            return;
        }
        if let Some(mut h) = slot.handler.take() {
            slot.gen = 0;
            h.on_close(&mut self.core, me);
            self.free.push(me.slot);
        }
    }

    /// Deliver the completions queued so far. Those they queue in turn (a RAM bdev completes
    /// inside submit) wait for the next round, so a chain of them (a VERIFY of the whole device,
    /// chunk after chunk) cannot hold the reactor away from its sockets.
    fn dispatch_completions(&mut self) -> usize {
        let queued = self.core.completions.len();
        let mut n = 0;
        while n < queued {
            let Some((owner, ev)) = self.core.completions.pop_front() else { break };
            n += 1;
            if owner.reactor != self.core.id {
                continue;
            }
            let Some(slot) = self.slots.get_mut(owner.slot as usize) else { continue };
            if slot.gen != owner.gen {
                continue; // handler closed: the buffer goes back to the pool
            }
            let Some(mut h) = slot.handler.take() else { continue };
            h.on_io_complete(&mut self.core, owner, ev);
            self.put_back(owner, h);
        }
        n
    }

    fn housekeeping(&mut self) -> usize {
        let mut n = 0;
        while !self.core.closing.is_empty() || !self.core.spawned.is_empty() {
            for me in std::mem::take(&mut self.core.closing) {
                self.remove(me);
                n += 1;
            }
            for ctor in std::mem::take(&mut self.core.spawned) {
                self.add_handler(ctor);
                n += 1;
            }
        }
        n
    }

    fn run_pollers(&mut self) -> usize {
        let mut n = 0;
        for p in self.pollers.iter_mut() {
            n += p.poll(&mut self.core);
        }
        let mut i = 0;
        while i < self.core.polled.len() {
            let me = self.core.polled[i];
            let live = self.slots.get(me.slot as usize).is_some_and(|s| s.gen == me.gen);
            if !live {
                self.core.polled.swap_remove(i);
                continue;
            }
            self.call(me.slot as usize, |h, core, me| n += h.on_poll(core, me));
            // An `unpoll` from on_poll moved another handler into this place.
            if self.core.polled.get(i) == Some(&me) {
                i += 1;
            }
        }
        n
    }

    fn run(mut self, shared: Arc<Shared>) {
        let me = self.core.id as usize;
        let stats = &shared.stats[me];
        stats.tid.store(unsafe { libc::gettid() } as u64, Ordering::Relaxed);
        let mut events = mio::Events::with_capacity(1024);
        let mut last_work = Instant::now();
        let mut last_tick = last_work;
        let mut loop_start = last_work;
        let mut trimmed = false;
        loop {
            if shared.stop.load(Ordering::Acquire) {
                break;
            }
            let mut work = 0usize;
            while let Ok(m) = self.rx.try_recv() {
                m(&mut self);
                work += 1;
            }
            let idle_for = self.core.now.saturating_duration_since(last_work);
            let mut timeout = Some(Duration::ZERO);
            // A memory-fed queue (loop transport) has no fd to wake us: its reactor keeps polling.
            if self.core.mode == PollMode::Adaptive && work == 0 && idle_for > SPIN_WINDOW && self.core.polled.is_empty() {
                shared.sleeping[me].store(true, Ordering::SeqCst);
                match self.rx.try_recv() {
                    Ok(m) => {
                        shared.sleeping[me].store(false, Ordering::SeqCst);
                        m(&mut self);
                        work += 1;
                    }
                    Err(_) => timeout = Some(TICK.saturating_sub(self.core.now - last_tick)),
                }
            }
            if self.poll.poll(&mut events, timeout).is_err() {
                events.clear();
            }
            shared.sleeping[me].store(false, Ordering::SeqCst);
            self.core.now = Instant::now();
            let woke = self.core.now;
            for ev in events.iter() {
                if ev.token() == WAKE_TOKEN {
                    continue;
                }
                work += 1;
                let slot = ev.token().0;
                self.call(slot, |h, core, me| h.on_ready(core, me, ev));
            }
            // Completions can start more I/O that completes at once (RAM bdev): drain to a fixpoint,
            // bounded so a storm of work cannot starve the socket poll.
            for _ in 0..8 {
                let n = self.run_pollers() + self.dispatch_completions() + self.housekeeping();
                work += n;
                if n == 0 {
                    break;
                }
            }
            // Swap in the spare list (keeps both allocations: no allocation per loop iteration).
            let mut flush = std::mem::take(&mut self.flush_spare);
            std::mem::swap(&mut flush, &mut self.core.flush);
            for me_ in flush.drain(..) {
                if let Some(s) = self.slots.get(me_.slot as usize) {
                    if s.gen == me_.gen {
                        self.call(me_.slot as usize, |h, core, me| h.on_flush(core, me));
                    }
                }
            }
            self.flush_spare = flush;
            work += self.housekeeping();
            if self.core.now.duration_since(last_tick) >= TICK {
                last_tick = self.core.now;
                if self.core.now.saturating_duration_since(last_work) >= POOL_TRIM_IDLE {
                    if !trimmed {
                        // Idle: buffers pooled during a burst, and the heap the allocator kept
                        // after connections left, go back to the system (once per idle spell).
                        buf::trim_pool();
                        // SAFETY: malloc_trim only returns free heap pages to the kernel.
                        unsafe { libc::malloc_trim(0) };
                        trimmed = true;
                    }
                } else {
                    trimmed = false;
                }
                for slot in 0..self.slots.len() {
                    self.call(slot, |h, core, me| h.on_tick(core, me));
                }
                work += self.housekeeping();
            }
            let end = Instant::now();
            // The longest stretch spent in handlers without polling: what a stall costs others.
            // A plain load first: the locked read-modify-write only when the maximum grows (the
            // RPC thread resets it with a swap, so it stays a read-modify-write then).
            let stall = end.duration_since(woke).as_nanos() as u64;
            if stall > stats.max_loop_ns.load(Ordering::Relaxed) {
                stats.max_loop_ns.fetch_max(stall, Ordering::Relaxed);
            }
            let spent = end.duration_since(loop_start).as_nanos() as u64;
            loop_start = end;
            if work > 0 {
                last_work = end;
                bump(&stats.busy, spent);
            } else {
                bump(&stats.idle, spent);
                // Nothing to do this round: let anything else runnable on this core go first.
                // The kernel threads that complete our own I/O (ksoftirqd for the device's
                // interrupts, io_uring workers) share the reactor's core; a poller that never
                // yields delays them by a whole scheduler slice and builds millisecond tails.
                // With nothing else runnable this is a cheap syscall and we keep polling.
                std::thread::yield_now();
                // What others ran while we yielded is neither our busy nor our idle time: counted
                // in the next iteration, it made busy time (framework_get_reactors) measure the
                // neighbours whenever work had arrived meanwhile.
                loop_start = Instant::now();
            }
            self.core.now = loop_start;
            if alloc::enabled() {
                stats.allocs.store(alloc::thread_allocations(), Ordering::Relaxed);
            }
        }
        for h in self.handlers() {
            self.remove(h);
        }
        // Run what closing handlers queued (final completions, flushes) one last time.
        self.run_pollers();
        self.dispatch_completions();
    }
}

/// Add to a counter only its reactor writes (others only read it): a load and a store, no locked
/// instruction per loop iteration.
fn bump(a: &AtomicU64, by: u64) {
    a.store(a.load(Ordering::Relaxed).wrapping_add(by), Ordering::Relaxed);
}

#[derive(Default)]
pub struct ReactorStats {
    pub busy: AtomicU64,
    pub idle: AtomicU64,
    pub tid: AtomicU64,
    /// Allocations made by the reactor thread so far (only counted with feature `count-alloc`).
    pub allocs: AtomicU64,
    /// Longest loop iteration (handlers, pollers, flushes; not the sleep) since last read.
    pub max_loop_ns: AtomicU64,
}

struct Shared {
    senders: Vec<mpsc::Sender<Msg>>,
    wakers: Vec<mio::Waker>,
    sleeping: Vec<AtomicBool>,
    stats: Vec<ReactorStats>,
    cores: Vec<usize>,
    stop: AtomicBool,
    next_rr: AtomicUsize,
    threads: Mutex<Vec<JoinHandle<()>>>,
    mode: PollMode,
}

/// Handle to all reactors: send messages, pick a reactor for a new connection, stop them.
#[derive(Clone)]
pub struct ReactorSet {
    shared: Arc<Shared>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReactorError {
    #[error("core mask {0:#x} selects no core")]
    EmptyMask(u64),
    #[error("core {0} in the mask does not exist on this machine ({1} cores online)")]
    NoSuchCore(usize, usize),
    #[error("cannot create reactor: {0}")]
    Io(#[from] std::io::Error),
}

/// Parse an SPDK-style core mask ("0x3", "3", "[0,1]").
pub fn parse_core_mask(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if let Some(list) = t.strip_prefix('[').and_then(|x| x.strip_suffix(']')) {
        let mut m = 0u64;
        for part in list.split(',') {
            let part = part.trim();
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let a: u32 = a.trim().parse().map_err(|_| format!("bad core list {s:?}"))?;
            let b: u32 = b.trim().parse().map_err(|_| format!("bad core list {s:?}"))?;
            if a > b || b >= 64 {
                return Err(format!("bad core list {s:?}"));
            }
            for c in a..=b {
                m |= 1 << c;
            }
        }
        return Ok(m);
    }
    let hex = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")).unwrap_or(t);
    u64::from_str_radix(hex, 16).map_err(|_| format!("bad core mask {s:?}: expected hex like 0x3"))
}

thread_local! {
    static CURRENT: std::cell::Cell<Option<u32>> = const { std::cell::Cell::new(None) };
}

/// The index of the reactor running on the calling thread (None off the reactors).
pub fn current_reactor() -> Option<u32> {
    CURRENT.with(|c| c.get())
}

fn pin_to_core(core: usize) {
    // SAFETY: plain libc calls on a zeroed cpu_set_t.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            tracing::warn!(core, "could not pin reactor thread: {}", std::io::Error::last_os_error());
        }
    }
}

impl ReactorSet {
    /// Start one reactor per core in `mask`; `init` runs first on each reactor (installs pollers).
    pub fn start(
        mask: u64,
        mode: PollMode,
        init: impl Fn(&mut Reactor) + Send + Sync + 'static,
    ) -> Result<ReactorSet, ReactorError> {
        if mask == 0 {
            return Err(ReactorError::EmptyMask(mask));
        }
        let online = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let cores: Vec<usize> = (0..64).filter(|c| mask & (1u64 << c) != 0).collect();
        if let Some(&c) = cores.iter().find(|&&c| c >= online) {
            return Err(ReactorError::NoSuchCore(c, online));
        }
        let mut polls = Vec::new();
        let mut senders = Vec::new();
        let mut wakers = Vec::new();
        let mut rxs = Vec::new();
        for _ in &cores {
            let poll = mio::Poll::new()?;
            wakers.push(mio::Waker::new(poll.registry(), WAKE_TOKEN)?);
            let (tx, rx) = mpsc::channel();
            senders.push(tx);
            rxs.push(rx);
            polls.push(poll);
        }
        let shared = Arc::new(Shared {
            senders,
            wakers,
            sleeping: cores.iter().map(|_| AtomicBool::new(false)).collect(),
            stats: cores.iter().map(|_| ReactorStats::default()).collect(),
            cores: cores.clone(),
            stop: AtomicBool::new(false),
            next_rr: AtomicUsize::new(0),
            threads: Mutex::new(Vec::new()),
            mode,
        });
        let set = ReactorSet { shared: shared.clone() };
        let init = Arc::new(init);
        let mut threads = Vec::new();
        for (i, (poll, rx)) in polls.into_iter().zip(rxs).enumerate() {
            let registry = poll.registry().try_clone()?;
            let core_no = cores[i];
            let set2 = set.clone();
            let shared2 = shared.clone();
            let init = init.clone();
            let t = std::thread::Builder::new().name(format!("reactor_{core_no}")).spawn(move || {
                pin_to_core(core_no);
                CURRENT.with(|c| c.set(Some(i as u32)));
                let mut r = Reactor {
                    core: Core {
                        id: i as u32,
                        now: Instant::now(),
                        mode,
                        registry,
                        completions: VecDeque::with_capacity(1024),
                        flush: Vec::with_capacity(256),
                        spawned: Vec::new(),
                        closing: Vec::new(),
                        polled: Vec::new(),
                        set: set2,
                    },
                    slots: Vec::new(),
                    free: Vec::new(),
                    pollers: Vec::new(),
                    poll,
                    rx,
                    next_gen: 0,
                    flush_spare: Vec::with_capacity(256),
                };
                init(&mut r);
                r.run(shared2);
            })?;
            threads.push(t);
        }
        *shared.threads.lock().unwrap() = threads;
        Ok(set)
    }

    pub fn len(&self) -> usize {
        self.shared.senders.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn mode(&self) -> PollMode {
        self.shared.mode
    }
    /// The CPU core each reactor is pinned to.
    pub fn cores(&self) -> &[usize] {
        &self.shared.cores
    }
    pub fn stats(&self, i: usize) -> (u64, u64, u64) {
        let s = &self.shared.stats[i];
        (s.busy.load(Ordering::Relaxed), s.idle.load(Ordering::Relaxed), s.tid.load(Ordering::Relaxed))
    }
    /// Allocations made by reactor `i`'s thread so far; None unless built with `count-alloc`.
    pub fn allocations(&self, i: usize) -> Option<u64> {
        alloc::enabled().then(|| self.shared.stats[i].allocs.load(Ordering::Relaxed))
    }
    /// Longest loop iteration of reactor `i` since the previous call (nanoseconds).
    pub fn take_max_loop_ns(&self, i: usize) -> u64 {
        self.shared.stats[i].max_loop_ns.swap(0, Ordering::Relaxed)
    }
    pub fn in_interrupt(&self, i: usize) -> bool {
        self.shared.sleeping[i].load(Ordering::Relaxed)
    }

    /// Round-robin choice for a new connection or queue pair.
    pub fn next_reactor(&self) -> u32 {
        (self.shared.next_rr.fetch_add(1, Ordering::Relaxed) % self.len()) as u32
    }

    /// Queue `f` on reactor `id`; false if the reactor has stopped.
    pub fn send(&self, id: u32, f: impl FnOnce(&mut Reactor) + Send + 'static) -> bool {
        let i = id as usize;
        let Some(tx) = self.shared.senders.get(i) else { return false };
        if tx.send(Box::new(f)).is_err() {
            return false;
        }
        if self.shared.sleeping[i].load(Ordering::SeqCst) {
            let _ = self.shared.wakers[i].wake();
        }
        true
    }

    /// Run `f` on reactor `id` and wait for its result (management code only, never a reactor).
    pub fn call<T: Send + 'static>(
        &self,
        id: u32,
        f: impl FnOnce(&mut Reactor) -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        if !self.send(id, move |r| {
            let _ = tx.send(f(r));
        }) {
            return None;
        }
        rx.recv().ok()
    }

    /// Run `f` on every reactor and collect the results in reactor order.
    pub fn call_all<T: Send + 'static>(
        &self,
        f: impl Fn(&mut Reactor) -> T + Send + Sync + Clone + 'static,
    ) -> Vec<T> {
        let rxs: Vec<_> = (0..self.len() as u32)
            .map(|id| {
                let (tx, rx) = mpsc::sync_channel(1);
                let f = f.clone();
                self.send(id, move |r| {
                    let _ = tx.send(f(r));
                });
                rx
            })
            .collect();
        rxs.into_iter().filter_map(|rx| rx.recv().ok()).collect()
    }

    /// Stop every reactor (handlers get `on_close`) and join the threads.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        for w in &self.shared.wakers {
            let _ = w.wake();
        }
        let threads = std::mem::take(&mut *self.shared.threads.lock().unwrap());
        for t in threads {
            let _ = t.join();
        }
    }
    pub fn is_stopped(&self) -> bool {
        self.shared.stop.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    impl Handler for Echo {
        fn on_ready(&mut self, _: &mut Core, _: HandlerRef, _: &mio::event::Event) {}
        fn on_message(&mut self, core: &mut Core, me: HandlerRef, msg: Box<dyn Any + Send>) {
            let v = *msg.downcast::<u64>().unwrap();
            core.complete(me, IoEvent { tag: v, status: 0, buf: None });
        }
        fn on_io_complete(&mut self, _: &mut Core, _: HandlerRef, ev: IoEvent) {
            COUNT.fetch_add(ev.tag as usize, Ordering::SeqCst);
        }
    }
    static COUNT: AtomicUsize = AtomicUsize::new(0);

    #[test]
    fn messages_handlers_and_completions() {
        let set = ReactorSet::start(0x1, PollMode::Adaptive, |_| {}).unwrap();
        let h = set.call(0, |r| r.add_handler(|_, _| Some(Box::new(Echo) as Box<dyn Handler>))).unwrap().unwrap();
        std::thread::sleep(Duration::from_millis(5)); // let it fall asleep: the waker must work
        assert!(set.call(0, move |r| r.send_to_handler(h, Box::new(5u64))).unwrap());
        // The completion is dispatched later in the same loop iteration as the message.
        let deadline = Instant::now() + Duration::from_secs(5);
        while COUNT.load(Ordering::SeqCst) != 5 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(COUNT.load(Ordering::SeqCst), 5);
        let stale = HandlerRef { gen: h.gen + 7, ..h };
        assert!(!set.call(0, move |r| r.send_to_handler(stale, Box::new(1u64))).unwrap());
        assert_eq!(set.call_all(|r| r.id()), vec![0]);
        set.stop();
    }

    #[test]
    fn core_masks() {
        assert_eq!(parse_core_mask("0x3").unwrap(), 3);
        assert_eq!(parse_core_mask("[0,2-3]").unwrap(), 0b1101);
        assert!(parse_core_mask("zz").is_err());
        assert!(matches!(ReactorSet::start(0, PollMode::Busy, |_| {}), Err(ReactorError::EmptyMask(_))));
    }
}
