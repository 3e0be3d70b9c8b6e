//! Delay bdev (SPDK's `bdev_delay`): a virtual bdev over a base bdev that holds every read and
//! write for a configured latency, average or (for about 1 in 100 I/Os) p99, in microseconds.
//!
//! One difference from SPDK, on purpose: SPDK submits to the base at once and holds the
//! *completion*; here the request is held *before* it reaches the base, then completes when the
//! base completes. The host sees the same latency, but a write reaches the medium only at the end
//! of it, like a slow device, which is what tests of ordering (task management, fencing) need:
//! with a write that lands at once, an abort answered too early cannot be told from a correct one.
//!
//! Each channel keeps its own channel to the base bdev and four FIFO queues (as SPDK does: a
//! latency change affects only later I/O, so each queue stays in deadline order); the reactor
//! polls it like any channel, and an adaptive reactor that sleeps is woken by a timerfd armed for
//! the earliest deadline. Queues reuse their capacity: no allocation per I/O.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::stats::{ChannelStats, StatsRegistry};
use super::{Bdev, BdevChannel, BdevError, BdevInfo, IoOp, IoRequest};
use crate::reactor::{Core, PollMode, WAKE_TOKEN};

/// SPDK's product name for delay bdevs.
pub const PRODUCT: &str = "delay";
/// Longest latency accepted (one hour): a deadline must stay representable.
pub const MAX_LATENCY_US: u64 = 3_600_000_000;

/// The four latencies of `bdev_delay_update_latency`'s `latency_type`, in SPDK's spelling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LatencyType {
    AvgRead,
    P99Read,
    AvgWrite,
    P99Write,
}

impl LatencyType {
    pub fn parse(s: &str) -> Option<LatencyType> {
        Some(match s {
            "avg_read" => LatencyType::AvgRead,
            "p99_read" => LatencyType::P99Read,
            "avg_write" => LatencyType::AvgWrite,
            "p99_write" => LatencyType::P99Write,
            _ => return None,
        })
    }
}

/// Latencies in microseconds; changed at run time by `bdev_delay_update_latency` (each I/O reads
/// the current value when it arrives).
#[derive(Debug, Default)]
pub struct Latencies([AtomicU64; 4]);

impl Latencies {
    pub fn new(avg_read: u64, p99_read: u64, avg_write: u64, p99_write: u64) -> Latencies {
        Latencies([avg_read.into(), p99_read.into(), avg_write.into(), p99_write.into()])
    }
    pub fn get(&self, t: LatencyType) -> u64 {
        self.0[t as usize].load(Ordering::Relaxed)
    }
    pub fn set(&self, t: LatencyType, us: u64) {
        self.0[t as usize].store(us, Ordering::Relaxed);
    }
}

pub struct DelayBdev {
    info: BdevInfo,
    base: Arc<dyn Bdev>,
    lat: Arc<Latencies>,
    stats: StatsRegistry,
}

impl DelayBdev {
    /// A delay bdev over `base` (the caller holds the base's exclusive claim). SPDK refuses a p99
    /// latency below the average.
    pub fn new(name: &str, base: Arc<dyn Bdev>, uuid: Option<uuid::Uuid>, lat: Latencies) -> Result<DelayBdev, BdevError> {
        use LatencyType::*;
        if [AvgRead, P99Read, AvgWrite, P99Write].iter().any(|&t| lat.get(t) > MAX_LATENCY_US) {
            return Err(BdevError::Invalid(format!("latencies must not exceed {MAX_LATENCY_US} microseconds")));
        }
        if lat.get(P99Read) < lat.get(AvgRead) || lat.get(P99Write) < lat.get(AvgWrite) {
            return Err(BdevError::Invalid("p99 latency must not be less than the average latency".into()));
        }
        let b = base.info();
        Ok(DelayBdev {
            info: BdevInfo {
                id: super::next_bdev_id(),
                name: name.to_string(),
                product_name: PRODUCT,
                block_size: b.block_size,
                num_blocks: b.num_blocks,
                uuid: uuid.unwrap_or_else(uuid::Uuid::new_v4),
                unmap_zeroes: b.unmap_zeroes,
                write_cache: b.write_cache,
            },
            base,
            lat: Arc::new(lat),
            stats: StatsRegistry::default(),
        })
    }

    pub fn base(&self) -> &Arc<dyn Bdev> {
        &self.base
    }
    pub fn latencies(&self) -> &Latencies {
        &self.lat
    }

    fn conf(&self) -> Value {
        use LatencyType::*;
        json!({
            "name": self.info.name,
            "base_bdev_name": self.base.info().name,
            "uuid": self.info.uuid.to_string(),
            "avg_read_latency": self.lat.get(AvgRead),
            "p99_read_latency": self.lat.get(P99Read),
            "avg_write_latency": self.lat.get(AvgWrite),
            "p99_write_latency": self.lat.get(P99Write),
        })
    }
}

impl Bdev for DelayBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }
    fn create_channel(&self, core: &mut Core) -> std::io::Result<Box<dyn BdevChannel>> {
        let base = self.base.create_channel(core)?;
        // A busy reactor polls us on every loop; an adaptive one may sleep and needs a wake-up.
        let timer = if core.mode == PollMode::Busy { None } else { Some(Timer::new(core)?) };
        let seed = (self.info.id as u64) << 32 | core.id as u64;
        Ok(Box::new(DelayChannel {
            base,
            lat: self.lat.clone(),
            queues: Default::default(),
            timer,
            rng: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            bs: self.info.block_size as u64,
            stats: self.stats.new_channel(),
        }))
    }
    fn construct(&self) -> (&'static str, Value) {
        ("bdev_delay_create", self.conf())
    }
    fn driver_specific(&self) -> Value {
        json!({ "delay": self.conf() })
    }
    fn stats(&self) -> &StatsRegistry {
        &self.stats
    }
    fn base_bdev(&self) -> Option<&str> {
        Some(&self.base.info().name)
    }
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
    fn sync(&self) -> std::io::Result<()> {
        self.base.sync()
    }
}

/// A timerfd on the reactor's wake token: its expiry only ends the reactor's sleep.
struct Timer {
    fd: OwnedFd,
    /// The deadline it is armed for, if any.
    armed: Option<Instant>,
}

impl Timer {
    fn new(core: &mut Core) -> std::io::Result<Timer> {
        // SAFETY: timerfd_create returns a new descriptor or -1.
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        core.registry().register(&mut mio::unix::SourceFd(&fd.as_raw_fd()), WAKE_TOKEN, mio::Interest::READABLE)?;
        Ok(Timer { fd, armed: None })
    }

    /// Arm for `at` unless already armed for an earlier, still future deadline.
    fn arm(&mut self, now: Instant, at: Instant) {
        if self.armed.is_some_and(|a| a > now && a <= at) {
            return;
        }
        let d = at.saturating_duration_since(now).max(Duration::from_micros(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec { tv_sec: d.as_secs() as libc::time_t, tv_nsec: d.subsec_nanos() as libc::c_long },
        };
        // SAFETY: a valid timerfd and itimerspec; failure only costs a later wake-up (the tick).
        unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        self.armed = Some(at);
    }

    /// Consume an expiry (so the descriptor is not readable forever).
    fn expired(&mut self, now: Instant) {
        if self.armed.is_some_and(|a| a <= now) {
            let mut n = 0u64;
            // SAFETY: reads 8 bytes into a u64 from a non-blocking timerfd.
            unsafe { libc::read(self.fd.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
            self.armed = None;
        }
    }
}

struct DelayChannel {
    base: Box<dyn BdevChannel>,
    lat: Arc<Latencies>,
    /// Held requests with their release time, one FIFO per latency type.
    queues: [VecDeque<(Instant, Instant, IoRequest)>; 4],
    timer: Option<Timer>,
    rng: u64,
    bs: u64,
    stats: Arc<ChannelStats>,
}

impl DelayChannel {
    /// xorshift64: one in a hundred I/Os gets the p99 latency (SPDK's rule).
    fn p99(&mut self) -> bool {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x % 100 == 0
    }

    fn earliest(&self) -> Option<Instant> {
        self.queues.iter().filter_map(|q| q.front().map(|e| e.0)).min()
    }
}

impl BdevChannel for DelayChannel {
    fn submit(&mut self, core: &mut Core, req: IoRequest) {
        let p99 = self.p99();
        let kind = match (req.op, p99) {
            (IoOp::Read, false) => LatencyType::AvgRead,
            (IoOp::Read, true) => LatencyType::P99Read,
            (IoOp::Write, false) => LatencyType::AvgWrite,
            (IoOp::Write, true) => LatencyType::P99Write,
            // SPDK delays only reads and writes.
            _ => return self.base.submit(core, req),
        };
        let us = self.lat.get(kind).min(MAX_LATENCY_US);
        let q = &mut self.queues[kind as usize];
        if us == 0 && q.is_empty() {
            self.stats.record(req.op, req.num_blocks * self.bs, 0);
            return self.base.submit(core, req);
        }
        let now = Instant::now();
        let at = now + Duration::from_micros(us);
        q.push_back((at, now, req));
        if let Some(t) = self.timer.as_mut() {
            t.arm(now, at);
        }
    }

    fn poll(&mut self, core: &mut Core) -> usize {
        let mut n = 0;
        if self.queues.iter().any(|q| !q.is_empty()) {
            let now = Instant::now();
            for i in 0..self.queues.len() {
                while self.queues[i].front().is_some_and(|e| e.0 <= now) {
                    let (_, held_since, req) = self.queues[i].pop_front().expect("front checked");
                    self.stats.record(req.op, req.num_blocks * self.bs, now.duration_since(held_since).as_nanos() as u64);
                    self.base.submit(core, req);
                    n += 1;
                }
            }
            let next = self.earliest();
            if let Some(t) = self.timer.as_mut() {
                t.expired(now);
                if let Some(at) = next {
                    t.arm(now, at);
                }
            }
        }
        n + self.base.poll(core)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bdev::malloc::MallocBdev;
    use crate::reactor::{Handler, HandlerRef, IoBuf, IoEvent, ReactorSet};
    use std::sync::Mutex;

    #[test]
    fn latency_types_and_p99_rule() {
        assert_eq!(LatencyType::parse("p99_write"), Some(LatencyType::P99Write));
        assert_eq!(LatencyType::parse("avg"), None);
        let base: Arc<dyn Bdev> = Arc::new(MallocBdev::new("m", 64, 512, None).unwrap());
        assert!(DelayBdev::new("d", base.clone(), None, Latencies::new(10, 5, 0, 0)).is_err());
        let d = DelayBdev::new("d", base, None, Latencies::new(10, 50, 30, 90)).unwrap();
        assert_eq!(d.info().num_blocks, 64);
        let (m, p) = d.construct();
        assert_eq!(m, "bdev_delay_create");
        assert_eq!(p["base_bdev_name"], "m");
        assert_eq!(p["p99_write_latency"], 90);
        d.latencies().set(LatencyType::AvgWrite, 7);
        assert_eq!(d.driver_specific()["delay"]["avg_write_latency"], 7);
        assert_eq!(d.base_bdev(), Some("m"));
    }

    /// Records when each completion arrives.
    struct Sink(Arc<Mutex<Vec<(u64, Instant, i32, u8)>>>);
    impl Handler for Sink {
        fn on_ready(&mut self, _: &mut Core, _: HandlerRef, _: &mio::event::Event) {}
        fn on_io_complete(&mut self, _: &mut Core, _: HandlerRef, ev: IoEvent) {
            let first = ev.buf.as_ref().and_then(|b| b.first().copied()).unwrap_or(0);
            self.0.lock().unwrap().push((ev.tag, Instant::now(), ev.status, first));
        }
    }

    /// On an adaptive (sleeping) reactor: a write reaches the base only after its latency, the
    /// completion comes after it, and a read issued after it sees the data; the timerfd wakes the
    /// reactor (completion well before the 100 ms tick would).
    #[test]
    fn writes_land_after_the_latency_without_blocking() {
        let set = ReactorSet::start(0x1, PollMode::Adaptive, crate::bdev::install).unwrap();
        let malloc = Arc::new(MallocBdev::new("m", 64, 512, None).unwrap());
        let base: Arc<dyn Bdev> = malloc.clone();
        let d: Arc<dyn Bdev> = Arc::new(DelayBdev::new("d", base.clone(), None, Latencies::new(0, 0, 30_000, 30_000)).unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        let h = set.call(0, move |r| r.add_handler(|_, _| Some(Box::new(Sink(log2)) as Box<dyn Handler>))).unwrap().unwrap();
        let start = Instant::now();
        let d2 = d.clone();
        set.call(0, move |r| {
            let mut buf = IoBuf::new(512);
            buf.fill(0xab);
            let req = IoRequest { op: IoOp::Write, offset_blocks: 3, num_blocks: 1, buf: Some(buf), fua: false, owner: h, tag: 1 };
            crate::bdev::submit(&mut r.core, d2.as_ref(), req);
        });
        // Held: a read of the base straight away still sees zeros.
        let b2 = base.clone();
        set.call(0, move |r| {
            let req = IoRequest { op: IoOp::Read, offset_blocks: 3, num_blocks: 1, buf: Some(IoBuf::new(512)), fua: false, owner: h, tag: 2 };
            crate::bdev::submit(&mut r.core, b2.as_ref(), req);
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while log.lock().unwrap().len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let got = log.lock().unwrap().clone();
        assert_eq!(got.len(), 2, "both completions arrive");
        assert_eq!((got[0].0, got[0].3), (2, 0), "the base read completes first and sees no data yet");
        assert_eq!(got[1].0, 1);
        assert_eq!(got[1].2, 0);
        let waited = got[1].1.duration_since(start);
        assert!(waited >= Duration::from_millis(30), "completed after {waited:?}");
        assert!(waited < Duration::from_millis(90), "the timer woke the reactor: {waited:?}");
        let m2 = malloc.clone();
        // The write is on the base now.
        set.call(0, move |r| {
            let req = IoRequest { op: IoOp::Read, offset_blocks: 3, num_blocks: 1, buf: Some(IoBuf::new(512)), fua: false, owner: h, tag: 3 };
            crate::bdev::submit(&mut r.core, m2.as_ref(), req);
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while log.lock().unwrap().len() < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(log.lock().unwrap()[2].3, 0xab);
        set.stop();
    }
}
