//! `palisade bdevperf`: SPDK's bdevperf for our stack. In one process it starts one reactor,
//! creates a bdev (malloc, null, or uring over a file), and drives a workload at a fixed queue depth
//! from a reactor [`Handler`] through the real bdev channel API (`bdev::submit` →
//! `on_io_complete`), so it measures the reactor + bdev path the protocols use.
//!
//! `--verify` writes a per-block pattern (magic, generation, LBA, then bytes derived from both)
//! and checks every block it reads: the header must name the block's own LBA, the body must match
//! the header, and — for blocks this run wrote — the generation must be the last one written.
//! Blocks that are entirely zero count as never written (unless this run wrote them).

use std::any::Any;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::json;

use crate::bdev::{self, Bdev, IoOp, IoRequest};
use crate::reactor::{alloc, parse_core_mask, Core, Handler, HandlerRef, IoBuf, IoEvent, PollMode, ReactorSet};
use super::perf::Rng;
use crate::nvme::spec;
use crate::nvmf::host::rw_sqe;
use crate::nvmf::r#loop::LoopQueue;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    Randread,
    Randwrite,
    Read,
    Write,
    Randrw,
    Rw,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Poll {
    Adaptive,
    Busy,
}

#[derive(Args, Clone)]
pub struct BdevperfArgs {
    /// RAM bdev of this many MiB.
    #[arg(long, value_name = "MIB", conflicts_with_all = ["null", "uring"])]
    malloc: Option<u64>,
    /// Null bdev (discards writes, reads zeros) of this many MiB.
    #[arg(long, value_name = "MIB", conflicts_with = "uring")]
    null: Option<u64>,
    /// uring bdev over this file or block device.
    #[arg(long, value_name = "FILE")]
    uring: Option<String>,
    /// Block size of the bdev (malloc/null default 512; uring default: the device's).
    #[arg(long = "bdev-block-size", value_name = "BYTES")]
    bdev_block_size: Option<u32>,
    /// Queue depth.
    #[arg(short = 'q', long = "queue-depth", default_value_t = 32)]
    queue_depth: usize,
    /// I/O size in bytes (a multiple of the block size).
    #[arg(short = 'o', long = "io-size", default_value_t = 4096)]
    io_size: usize,
    /// Workload.
    #[arg(short = 'w', long = "workload", value_enum, default_value = "randread")]
    workload: Workload,
    /// Read percentage for randrw/rw.
    #[arg(short = 'M', long = "rwmixread", default_value_t = 50)]
    rwmixread: u32,
    /// Measured run time in seconds.
    #[arg(short = 't', long = "time", default_value_t = 5.0)]
    time: f64,
    /// Warm-up before measuring, seconds (I/O runs but is not counted).
    #[arg(long = "warmup", default_value_t = 0.5)]
    warmup: f64,
    /// Write a per-block pattern (LBA + generation) and check it on every read.
    #[arg(long)]
    verify: bool,
    /// Core mask (one reactor: the lowest core of the mask).
    #[arg(short = 'm', long = "cpumask", default_value = "0x1")]
    cpumask: String,
    /// Poll mode of the reactor.
    #[arg(long, value_enum, default_value = "busy")]
    poll: Poll,
    /// Seed for the random offsets.
    #[arg(long, default_value_t = 0x5eed)]
    seed: u64,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// Go through the NVMe-oF core: the bdev is namespace 1 of an in-process subsystem, reached
    /// through the loop transport on the same reactor (measures the core's cost per I/O).
    #[arg(long = "nvmf-loop")]
    nvmf_loop: bool,
}

/// Bytes of the pattern header: magic, generation, LBA.
pub const HEADER: usize = 16;
pub const MAGIC: u32 = 0x5041_4c53; // "PALS"

/// Fill one block with the verify pattern for (lba, gen).
pub fn fill_block(block: &mut [u8], lba: u64, gen: u32) {
    block[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    block[4..8].copy_from_slice(&gen.to_le_bytes());
    block[8..16].copy_from_slice(&lba.to_le_bytes());
    let mut x = lba.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (gen as u64).wrapping_mul(0xc2b2_ae3d_27d4_eb4f) | 1;
    for chunk in block[HEADER..].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// What a block read back holds.
#[derive(Debug, PartialEq, Eq)]
pub enum BlockCheck {
    /// All zeros: never written.
    Zero,
    /// A valid pattern block for this LBA, written with this generation.
    Pattern(u32),
    /// Anything else.
    Bad,
}

/// Check one block against the pattern for `lba` (no allocation).
pub fn check_block(block: &[u8], lba: u64) -> BlockCheck {
    if block.iter().all(|&b| b == 0) {
        return BlockCheck::Zero;
    }
    let magic = u32::from_le_bytes(block[0..4].try_into().unwrap());
    let gen = u32::from_le_bytes(block[4..8].try_into().unwrap());
    let blba = u64::from_le_bytes(block[8..16].try_into().unwrap());
    if magic != MAGIC || blba != lba {
        return BlockCheck::Bad;
    }
    let mut x = lba.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (gen as u64).wrapping_mul(0xc2b2_ae3d_27d4_eb4f) | 1;
    for chunk in block[HEADER..].chunks(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if chunk != &x.to_le_bytes()[..chunk.len()] {
            return BlockCheck::Bad;
        }
    }
    BlockCheck::Pattern(gen)
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Report {
    pub bdev: String,
    /// uring only: the file is opened with O_DIRECT.
    pub direct_io: Option<bool>,
    pub workload: String,
    pub queue_depth: usize,
    pub io_size: usize,
    pub seconds: f64,
    pub ios: u64,
    pub reads: u64,
    pub writes: u64,
    pub iops: f64,
    pub mib_per_sec: f64,
    pub lat_avg_us: f64,
    pub lat_p50_us: f64,
    pub lat_p99_us: f64,
    pub lat_p999_us: f64,
    pub lat_max_us: f64,
    pub errors: u64,
    pub verify: bool,
    pub verified_blocks: u64,
    pub unwritten_blocks: u64,
    pub mismatches: u64,
    pub first_mismatch: Option<String>,
    /// Allocations per measured I/O on the reactor thread (feature `count-alloc` only).
    pub allocations_per_io: Option<f64>,
}

struct Slot {
    buf: Option<IoBuf>,
    start: Instant,
    unit: u64,
    write: bool,
}

struct Perf {
    bdev: Arc<dyn Bdev>,
    /// `--nvmf-loop`: commands go to this loop queue instead of the bdev.
    lq: Option<LoopQueue>,
    workload: Workload,
    rwmixread: u32,
    verify: bool,
    bs: usize,
    blocks_per_io: u64,
    units: u64,
    slots: Vec<Slot>,
    /// generation last written per unit (0 = not written by this run)
    gens: Vec<u32>,
    /// unit has an I/O in flight (verify mode keeps I/Os to one unit apart)
    busy: Vec<bool>,
    seq: u64,
    rng: Rng,
    measure_from: Instant,
    end: Instant,
    run: Duration,
    measuring: bool,
    stopping: bool,
    inflight: usize,
    hist: Histogram<u64>,
    rep: Report,
    alloc_start: u64,
    done: Option<mpsc::Sender<Report>>,
}

impl Perf {
    fn pick(&mut self) -> (u64, bool) {
        let write = match self.workload {
            Workload::Randread | Workload::Read => false,
            Workload::Randwrite | Workload::Write => true,
            Workload::Randrw | Workload::Rw => (self.rng.next() % 100) as u32 >= self.rwmixread,
        };
        let sequential = matches!(self.workload, Workload::Read | Workload::Write | Workload::Rw);
        for _ in 0..64 {
            let unit = if sequential {
                let u = self.seq % self.units;
                self.seq += 1;
                u
            } else {
                self.rng.next() % self.units
            };
            if !self.verify || !self.busy[unit as usize] {
                return (unit, write);
            }
        }
        // Everything we tried is busy (tiny device, deep queue): read-only retry is still safe
        // only if nothing is in flight there, so wait for a completion instead.
        (u64::MAX, write)
    }

    fn submit_one(&mut self, core: &mut Core, me: HandlerRef, slot: usize) {
        let (unit, write) = self.pick();
        if unit == u64::MAX {
            return; // the slot idles until the next completion frees a unit
        }
        let mut buf = self.slots[slot].buf.take().expect("slot buffer");
        if write && self.verify {
            let g = self.gens[unit as usize].wrapping_add(1).max(1);
            self.gens[unit as usize] = g;
            let lba0 = unit * self.blocks_per_io;
            for (i, blk) in buf.as_mut_slice().chunks_mut(self.bs).enumerate() {
                fill_block(blk, lba0 + i as u64, g);
            }
        }
        if self.verify {
            self.busy[unit as usize] = true;
        }
        let s = &mut self.slots[slot];
        s.unit = unit;
        s.write = write;
        s.start = Instant::now();
        self.inflight += 1;
        if let Some(q) = &self.lq {
            let lba = unit * self.blocks_per_io;
            let mut sqe = rw_sqe(write, 1, lba, self.blocks_per_io as u32);
            let len = buf.len() as u32;
            sqe.set_cid(slot as u16).set_sgl(spec::Sgl { address: 0, length: len, id: spec::sgl::TRANSPORT_DATA_BLOCK });
            if q.submit(sqe, Some(buf)).is_err() {
                // The queue closed under us: count the slot as failed and let the run end.
                self.inflight -= 1;
                self.rep.errors += 1;
                self.stopping = true;
            }
            return;
        }
        let req = IoRequest {
            op: if write { IoOp::Write } else { IoOp::Read },
            offset_blocks: unit * self.blocks_per_io,
            num_blocks: self.blocks_per_io,
            buf: Some(buf),
            fua: false,
            owner: me,
            tag: slot as u64,
        };
        bdev::submit(core, self.bdev.as_ref(), req);
    }

    fn check(&mut self, slot: usize) {
        let s = &self.slots[slot];
        let buf = s.buf.as_ref().expect("buffer back");
        let lba0 = s.unit * self.blocks_per_io;
        let want = self.gens[s.unit as usize];
        for (i, blk) in buf.as_slice().chunks(self.bs).enumerate() {
            let lba = lba0 + i as u64;
            let res = check_block(blk, lba);
            let ok = match (&res, want) {
                (BlockCheck::Zero, 0) => {
                    self.rep.unwritten_blocks += 1;
                    true
                }
                (BlockCheck::Pattern(_), 0) => true,
                (BlockCheck::Pattern(g), w) => *g == w,
                _ => false,
            };
            if ok {
                self.rep.verified_blocks += 1;
            } else {
                self.rep.mismatches += 1;
                if self.rep.first_mismatch.is_none() {
                    self.rep.first_mismatch = Some(format!("LBA {lba}: read {res:?}, expected generation {want}"));
                }
            }
        }
    }

    fn finish(&mut self) {
        let Some(tx) = self.done.take() else { return };
        let secs = self.end.saturating_duration_since(self.measure_from).as_secs_f64().max(1e-9);
        let r = &mut self.rep;
        r.seconds = secs;
        r.iops = r.ios as f64 / secs;
        r.mib_per_sec = r.iops * r.io_size as f64 / (1024.0 * 1024.0);
        let us = |ns: u64| ns as f64 / 1000.0;
        if !self.hist.is_empty() {
            r.lat_avg_us = self.hist.mean() / 1000.0;
            r.lat_p50_us = us(self.hist.value_at_quantile(0.5));
            r.lat_p99_us = us(self.hist.value_at_quantile(0.99));
            r.lat_p999_us = us(self.hist.value_at_quantile(0.999));
            r.lat_max_us = us(self.hist.max());
        }
        if alloc::enabled() && r.ios > 0 {
            r.allocations_per_io = Some((alloc::thread_allocations() - self.alloc_start) as f64 / r.ios as f64);
        }
        let _ = tx.send(r.clone());
    }
}

struct Start;

impl Handler for Perf {
    fn on_ready(&mut self, _: &mut Core, _: HandlerRef, _: &mio::event::Event) {}

    fn on_poll(&mut self, core: &mut Core, me: HandlerRef) -> usize {
        let mut n = 0;
        while let Some((cqe, buf)) = self.lq.as_ref().and_then(LoopQueue::pop) {
            n += 1;
            let status = if cqe.status.is_ok() { 0 } else { -libc::EIO };
            self.on_io_complete(core, me, IoEvent { tag: cqe.cid as u64, status, buf });
        }
        n
    }

    fn on_message(&mut self, core: &mut Core, me: HandlerRef, msg: Box<dyn Any + Send>) {
        if msg.downcast::<Start>().is_ok() {
            if self.lq.is_some() {
                core.want_poll(me);
            }
            for slot in 0..self.slots.len() {
                self.submit_one(core, me, slot);
            }
        }
    }

    fn on_io_complete(&mut self, core: &mut Core, me: HandlerRef, ev: IoEvent) {
        let slot = ev.tag as usize;
        let now = Instant::now();
        self.inflight -= 1;
        self.slots[slot].buf = ev.buf;
        let (unit, write) = (self.slots[slot].unit, self.slots[slot].write);
        if !self.measuring && now >= self.measure_from {
            self.measuring = true;
            self.measure_from = now;
            self.end = now + self.run;
            self.alloc_start = alloc::thread_allocations();
        }
        if ev.status != 0 {
            self.rep.errors += 1;
            if self.rep.first_mismatch.is_none() {
                self.rep.first_mismatch = Some(format!("I/O error {} at unit {unit}", ev.status));
            }
        } else {
            if self.verify && !write {
                self.check(slot);
            }
            if self.measuring {
                let lat = now.duration_since(self.slots[slot].start).as_nanos() as u64;
                self.hist.saturating_record(lat.max(1));
                self.rep.ios += 1;
                if write {
                    self.rep.writes += 1;
                } else {
                    self.rep.reads += 1;
                }
            }
        }
        if self.verify {
            self.busy[unit as usize] = false;
        }
        if self.measuring && now >= self.end {
            self.stopping = true;
        }
        if !self.stopping {
            self.submit_one(core, me, slot);
            // Slots that idled because every unit they tried was busy get another chance.
            if self.verify && self.inflight < self.slots.len() {
                for s in 0..self.slots.len() {
                    if self.slots[s].buf.is_some() && s != slot && self.inflight < self.slots.len() {
                        self.submit_one(core, me, s);
                    }
                }
            }
        }
        if self.stopping && self.inflight == 0 {
            self.end = now.min(self.end.max(self.measure_from));
            self.finish();
        }
    }
}

fn fail(msg: impl std::fmt::Display) -> i32 {
    eprintln!("palisade bdevperf: {msg}");
    2
}

/// Run a workload; returns the report or an error message.
pub fn run_bench(a: &BdevperfArgs) -> Result<Report, String> {
    let mask = parse_core_mask(&a.cpumask)?;
    if mask == 0 {
        return Err("core mask selects no core".into());
    }
    let mask = 1u64 << mask.trailing_zeros();
    if a.queue_depth == 0 || a.queue_depth > 4096 {
        return Err("queue depth must be 1..=4096".into());
    }
    if a.rwmixread > 100 {
        return Err("rwmixread must be 0..=100".into());
    }
    let mut direct_io = None;
    let bdev: Arc<dyn Bdev> = match (a.malloc, a.null, &a.uring) {
        (Some(mb), None, None) => {
            let bs = a.bdev_block_size.unwrap_or(512);
            Arc::new(bdev::malloc::MallocBdev::new("Malloc0", mb * 1024 * 1024 / bs as u64, bs, None).map_err(|e| e.to_string())?)
        }
        (None, Some(mb), None) => {
            let bs = a.bdev_block_size.unwrap_or(512);
            Arc::new(bdev::null::NullBdev::new("Null0", mb * 1024 * 1024 / bs as u64, bs, None).map_err(|e| e.to_string())?)
        }
        (None, None, Some(f)) => {
            let u = bdev::uring::UringBdev::new("Uring0", f, a.bdev_block_size, None).map_err(|e| e.to_string())?;
            direct_io = Some(u.is_direct());
            Arc::new(u)
        }
        _ => return Err("choose exactly one bdev: --malloc MIB, --null MIB or --uring FILE".into()),
    };
    let info = bdev.info().clone();
    let bs = info.block_size as usize;
    if a.io_size == 0 || a.io_size % bs != 0 {
        return Err(format!("io size {} is not a multiple of the block size {bs}", a.io_size));
    }
    let blocks_per_io = (a.io_size / bs) as u64;
    let units = info.num_blocks / blocks_per_io;
    if units == 0 {
        return Err(format!("the bdev ({} blocks) is smaller than one I/O", info.num_blocks));
    }
    let mode = match a.poll {
        Poll::Adaptive => PollMode::Adaptive,
        Poll::Busy => PollMode::Busy,
    };
    let set = ReactorSet::start(mask, mode, bdev::install).map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel();
    let warm = Duration::from_secs_f64(a.warmup.max(0.0));
    let run = Duration::from_secs_f64(a.time.max(0.001));
    // --nvmf-loop: the NVMe-oF core between this workload and the bdev, on the same reactor.
    let mut _app = None;
    let mut _ctrlr = None;
    let mut lq = None;
    if a.nvmf_loop {
        let app = crate::rpc::App::new(set.clone(), false, None);
        app.bdevs.add(bdev.clone()).map_err(|e| e.to_string())?;
        let c = crate::cli::perf::nvmf_loop::export(&app, &info.name, a.queue_depth, a.io_size as u64, "nqn.2014-08.io.palisade:bdevperf")?;
        lq = Some(c.io_queue(1, a.queue_depth + 1, 0).map_err(|e| format!("loop I/O queue: {e}"))?);
        _ctrlr = Some(c);
        _app = Some(app);
    }
    let a2 = a.clone();
    let bdev2 = bdev.clone();
    let h = set
        .call(0, move |r| {
            r.add_handler(move |_, _| {
                let now = Instant::now();
                let slots = (0..a2.queue_depth)
                    .map(|_| Slot { buf: Some(IoBuf::zeroed(a2.io_size)), start: now, unit: 0, write: false })
                    .collect();
                let verify = a2.verify;
                Some(Box::new(Perf {
                    bdev: bdev2,
                    lq,
                    workload: a2.workload,
                    rwmixread: a2.rwmixread,
                    verify,
                    bs,
                    blocks_per_io,
                    units,
                    slots,
                    gens: if verify { vec![0; units as usize] } else { Vec::new() },
                    busy: if verify { vec![false; units as usize] } else { Vec::new() },
                    seq: 0,
                    rng: Rng(a2.seed | 1),
                    measure_from: now + warm,
                    end: now + warm + run,
                    run,
                    measuring: false,
                    stopping: false,
                    inflight: 0,
                    hist: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds"),
                    rep: Report {
                        bdev: format!("{} ({})", info.name, info.product_name),
                        direct_io,
                        workload: format!("{:?}", a2.workload).to_lowercase(),
                        queue_depth: a2.queue_depth,
                        io_size: a2.io_size,
                        verify,
                        ..Default::default()
                    },
                    alloc_start: 0,
                    done: Some(tx),
                }) as Box<dyn Handler>)
            })
        })
        .flatten()
        .ok_or("cannot start the workload on the reactor")?;
    set.send(0, move |r| {
        r.send_to_handler(h, Box::new(Start));
    });
    let limit = warm + run + Duration::from_secs(30);
    let res = rx.recv_timeout(limit).map_err(|_| "the workload did not finish (I/O hung?)".to_string());
    set.stop();
    if let Err(e) = bdev.sync() {
        return Err(format!("sync failed: {e}"));
    }
    res
}

pub fn run(a: BdevperfArgs) -> i32 {
    let r = match run_bench(&a) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&json!(r)).expect("json"));
    } else {
        println!(
            "{:<24} {:>9} {:>4} {:>6} {:>12} {:>10} {:>9} {:>9} {:>9} {:>9}",
            "bdev", "workload", "qd", "size", "IOPS", "MiB/s", "avg us", "p50 us", "p99 us", "p99.9 us"
        );
        println!(
            "{:<24} {:>9} {:>4} {:>6} {:>12.0} {:>10.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            r.bdev, r.workload, r.queue_depth, r.io_size, r.iops, r.mib_per_sec, r.lat_avg_us, r.lat_p50_us, r.lat_p99_us, r.lat_p999_us
        );
        if r.verify {
            println!("verify: {} blocks checked, {} never written, {} mismatches", r.verified_blocks, r.unwritten_blocks, r.mismatches);
        }
        if let Some(n) = r.allocations_per_io {
            println!("allocations per I/O on the reactor: {n:.4}");
        }
        if let Some(m) = &r.first_mismatch {
            println!("first problem: {m}");
        }
    }
    if r.errors > 0 || r.mismatches > 0 {
        eprintln!("palisade bdevperf: {} I/O errors, {} verify mismatches", r.errors, r.mismatches);
        return 1;
    }
    if r.ios == 0 {
        eprintln!("palisade bdevperf: no I/O completed in the measured window");
        return 1;
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_round_trip() {
        let mut b = vec![0u8; 512];
        assert_eq!(check_block(&b, 7), BlockCheck::Zero);
        fill_block(&mut b, 7, 3);
        assert_eq!(check_block(&b, 7), BlockCheck::Pattern(3));
        assert_eq!(check_block(&b, 8), BlockCheck::Bad);
        b[300] ^= 1;
        assert_eq!(check_block(&b, 7), BlockCheck::Bad);
    }

    fn args(extra: &[&str]) -> BdevperfArgs {
        #[derive(clap::Parser)]
        struct W {
            #[command(flatten)]
            a: BdevperfArgs,
        }
        let mut v = vec!["x"];
        v.extend_from_slice(extra);
        <W as clap::Parser>::parse_from(v).a
    }

    #[test]
    fn malloc_randrw_verify() {
        let r = run_bench(&args(&["--malloc", "4", "-q", "16", "-w", "randrw", "-t", "0.3", "--warmup", "0.05", "--verify", "--poll", "adaptive"])).unwrap();
        assert!(r.ios > 100, "{r:?}");
        assert!(r.reads > 0 && r.writes > 0, "{r:?}");
        assert_eq!((r.errors, r.mismatches), (0, 0), "{r:?}");
        assert!(r.verified_blocks > 0);
    }

    /// Through the NVMe-oF core and the loop transport: the same data comes back.
    #[test]
    fn nvmf_loop_randrw_verify() {
        let r = run_bench(&args(&["--malloc", "4", "--nvmf-loop", "-q", "16", "-o", "8192", "-w", "randrw", "-t", "0.3", "--warmup", "0.05", "--verify"])).unwrap();
        assert!(r.ios > 100, "{r:?}");
        assert!(r.reads > 0 && r.writes > 0, "{r:?}");
        assert_eq!((r.errors, r.mismatches), (0, 0), "{r:?}");
        assert!(r.verified_blocks > 0);
    }

    /// The data path allocates nothing per I/O after warm-up (malloc and uring, reads and writes;
    /// and through the NVMe-oF core, whose loop queue shares the workload's reactor).
    #[cfg(feature = "count-alloc")]
    #[test]
    fn zero_allocations_per_io() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("d.img");
        std::fs::write(&f, vec![0u8; 4 << 20]).unwrap();
        let f = f.to_str().unwrap().to_string();
        for w in ["randread", "randwrite"] {
            for bdev in [vec!["--malloc", "4"], vec!["--uring", f.as_str()], vec!["--malloc", "4", "--nvmf-loop"]] {
                let mut a = bdev.clone();
                a.extend(["-w", w, "-t", "0.3", "--warmup", "0.2", "--poll", "adaptive"]);
                let r = run_bench(&args(&a)).unwrap();
                assert!(r.ios > 100, "{r:?}");
                assert_eq!(r.allocations_per_io, Some(0.0), "{a:?}: {r:?}");
            }
        }
    }
}
