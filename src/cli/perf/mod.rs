//! `palisade perf`: the load generator and test initiator. Transports (NVMe/TCP, iSCSI) provide
//! queues that implement [`PerfQueue`]; the driver runs the workload, verifies data and reports.

pub mod iscsi;
pub mod nvmf_loop;
pub mod tcp;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::json;

/// One initiator queue (an NVMe/TCP I/O queue pair, an iSCSI session) as the load generator sees it.
pub trait PerfQueue: Send {
    /// Commands this queue accepts in flight.
    fn depth(&self) -> usize;
    /// Logical block size of the device, bytes.
    fn block_size(&self) -> u32;
    /// Number of logical blocks of the device.
    fn num_blocks(&self) -> u64;
    /// Queue a read (`write` false) or write of `blocks` blocks at `lba`. For writes `data` holds
    /// blocks * block_size bytes. `tag` (< depth) comes back with the completion.
    fn submit(&mut self, tag: u32, write: bool, lba: u64, blocks: u32, data: &[u8]) -> std::io::Result<()>;
    /// Send what was queued, then wait up to `timeout` for completions, calling
    /// `done(tag, result, read_data)` for each (read_data is empty for writes). Returns how many
    /// completed. An Err means the connection is gone.
    fn poll(
        &mut self,
        timeout: Duration,
        done: &mut dyn FnMut(u32, Result<(), String>, &[u8]),
    ) -> std::io::Result<usize>;
    /// Before the run (queue idle): register persistent reservation key `key` for this queue's
    /// nexus (NVMe Register with IEKEY / SCSI REGISTER AND IGNORE EXISTING KEY) and, with
    /// `reserve`, acquire that reservation type.
    fn pr_register(&mut self, key: u64, reserve: Option<PrType>) -> Result<(), String> {
        let _ = (key, reserve);
        Err("this transport cannot register reservation keys".into())
    }
}

/// A reservation type for `--pr-reserve`: (SPC-4 TYPE, NVMe RTYPE).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PrType {
    We,
    Ea,
    WeRo,
    EaRo,
    WeAr,
    EaAr,
}

impl PrType {
    pub fn scsi(self) -> u8 {
        [1, 3, 5, 6, 7, 8][self as usize]
    }
    pub fn nvme(self) -> u8 {
        self as u8 + 1
    }
}

fn parse_key(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    match r {
        Ok(0) => Err("a reservation key must not be 0".into()),
        Ok(k) => Ok(k),
        Err(e) => Err(format!("{s:?}: {e}")),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    Tcp,
    Iscsi,
    /// The NVMe-oF core in this process through the loop transport (no sockets).
    Loop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Rw {
    Randread,
    Randwrite,
    Read,
    Write,
    Randrw,
}

#[derive(Args, Clone, Debug)]
pub struct PerfArgs {
    /// tcp = NVMe/TCP; iscsi = iSCSI; loop = an in-process NVMe-oF target (RAM namespace) reached
    /// without sockets, to measure the core alone.
    #[arg(long, value_enum, default_value = "tcp")]
    pub transport: Transport,
    #[arg(long, default_value = "127.0.0.1")]
    pub addr: String,
    /// Target port (default 4420 for tcp, 3260 for iscsi).
    #[arg(long)]
    pub port: Option<u16>,
    /// Subsystem NQN (tcp).
    #[arg(long)]
    pub nqn: Option<String>,
    /// Namespace id (default: the first active namespace).
    #[arg(long)]
    pub nsid: Option<u32>,
    /// Number of I/O queues (one thread each).
    #[arg(long, default_value_t = 1)]
    pub queues: u16,
    /// Commands in flight per queue.
    #[arg(long, default_value_t = 32)]
    pub qd: u16,
    /// I/O size (4k, 128k, 1m, or bytes).
    #[arg(long, default_value = "4k", value_parser = parse_size)]
    pub bs: u64,
    #[arg(long, value_enum, default_value = "randread")]
    pub rw: Rw,
    /// Percentage of reads for randrw.
    #[arg(long, default_value_t = 70)]
    pub mix: u8,
    /// Run time (10s, 500ms, 2m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub time: Duration,
    /// Write a per-block pattern (LBA + generation) and check every read of a block written in
    /// this run; read-only workloads first write the pattern over (up to 256 MiB of) each
    /// queue's region. Queues get disjoint regions.
    #[arg(long)]
    pub verify: bool,
    /// Header digest (CRC32C) on NVMe/TCP PDUs or iSCSI PDUs.
    #[arg(long)]
    pub hdgst: bool,
    /// Data digest (CRC32C).
    #[arg(long)]
    pub ddgst: bool,
    /// NVMe/TCP secure channel: TLS 1.3 with a pre-shared key (needs --psk).
    #[arg(long, requires = "psk")]
    pub tls: bool,
    /// The configured PSK: an interchange string `NVMeTLSkey-1:xx:…:` or a file holding one.
    #[arg(long)]
    pub psk: Option<String>,
    /// Cipher suite: aes128 (TLS_AES_128_GCM_SHA256) or aes256 (TLS_AES_256_GCM_SHA384); by
    /// default the one the key's hash (or length) calls for.
    #[arg(long, value_parser = ["aes128", "aes256"])]
    pub tls_cipher: Option<String>,
    /// PSK identity version: 0 (`NVMe0R0h host sub`) or 1 (with the PSK digest).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub psk_identity_version: u8,
    /// Host NQN to present (default: a random uuid-based NQN).
    #[arg(long)]
    pub hostnqn: Option<String>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// iSCSI target IQN.
    #[arg(long)]
    pub target: Option<String>,
    /// iSCSI LUN.
    #[arg(long, default_value_t = 0)]
    pub lun: u64,
    /// iSCSI connections per session (MC/S; one thread each): every one of `--queues` sessions
    /// logs in this many connections sharing its CmdSN.
    #[arg(long, default_value_t = 1)]
    pub connections: u16,
    /// NVMe/TCP DH-HMAC-CHAP host secret: a `DHHC-1:…:` string or a file holding one (nvme-cli's
    /// --dhchap-secret).
    #[arg(long = "dhchap-secret")]
    pub dhchap_secret: Option<String>,
    /// Controller secret for bidirectional authentication (nvme-cli's --dhchap-ctrl-secret): the
    /// run aborts if the controller cannot prove it holds it.
    #[arg(long = "dhchap-ctrl-secret", requires = "dhchap_secret")]
    pub dhchap_ctrl_secret: Option<String>,
    /// Digests to offer, comma-separated (sha256,sha384,sha512; default all).
    #[arg(long = "dhchap-digest", value_delimiter = ',')]
    pub dhchap_digest: Vec<String>,
    /// DH groups to offer, comma-separated (null,ffdhe2048,…,ffdhe8192; default all).
    #[arg(long = "dhchap-dhgroup", value_delimiter = ',')]
    pub dhchap_dhgroup: Vec<String>,
    /// Secure channel concatenation (nvme-cli's --concat): authenticate on a plaintext admin
    /// queue asking for a generated TLS PSK, then connect every queue over TLS 1.3 with it.
    #[arg(long, requires = "dhchap_secret", conflicts_with = "tls")]
    pub concat: bool,
    /// Re-authenticate the admin queue this often during the run (e.g. 2s).
    #[arg(long = "reauth-every", value_parser = parse_duration, requires = "dhchap_secret")]
    pub reauth_every: Option<Duration>,
    #[arg(long = "chap-user")]
    pub chap_user: Option<String>,
    #[arg(long = "chap-secret")]
    pub chap_secret: Option<String>,
    /// iSCSI initiator name to log in with.
    #[arg(long)]
    pub initiator: Option<String>,
    /// Register this persistent reservation key (0x hex or decimal) from every queue's nexus
    /// before the run (NVMe: one host, so once in effect; iSCSI: every session).
    #[arg(long = "pr-key", value_parser = parse_key)]
    pub pr_key: Option<u64>,
    /// With --pr-key: the first queue's nexus also acquires this reservation type.
    #[arg(long = "pr-reserve", value_enum, requires = "pr_key")]
    pub pr_reserve: Option<PrType>,
    /// Start of the LBA region to use, bytes (a multiple of --bs), e.g. a layout grant's
    /// volume_offset.
    #[arg(long, default_value = "0", value_parser = parse_offset)]
    pub offset: u64,
    /// Length of the region, bytes (default: to the end of the device).
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// loop: cores of the in-process target's reactors (hex mask or list, as `serve -m`).
    #[arg(long = "target-cores", default_value = "0x1")]
    pub target_cores: String,
    /// loop: size of the in-process target's RAM namespace.
    #[arg(long = "loop-size", default_value = "1g", value_parser = parse_size)]
    pub loop_size: u64,
}

fn parse_offset(s: &str) -> Result<u64, String> {
    if s == "0" {
        return Ok(0);
    }
    parse_size(s)
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let (num, mul) = match t.trim_end_matches(['b', 'i']).chars().last() {
        Some('k') => (&t[..t.find('k').unwrap()], 1u64 << 10),
        Some('m') => (&t[..t.find('m').unwrap()], 1 << 20),
        Some('g') => (&t[..t.find('g').unwrap()], 1 << 30),
        _ => (t.as_str(), 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("bad size {s:?} (try 4k, 128k, 1m)"))?;
    n.checked_mul(mul).filter(|&v| v > 0).ok_or_else(|| format!("bad size {s:?}"))
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let bad = || format!("bad duration {s:?} (try 10s, 500ms, 2m)");
    if let Some(v) = t.strip_suffix("ms") {
        return v.parse::<u64>().map(Duration::from_millis).map_err(|_| bad());
    }
    if let Some(v) = t.strip_suffix('s') {
        return v.parse::<f64>().map(Duration::from_secs_f64).map_err(|_| bad());
    }
    if let Some(v) = t.strip_suffix('m') {
        return v.parse::<f64>().map(|m| Duration::from_secs_f64(m * 60.0)).map_err(|_| bad());
    }
    t.parse::<f64>().map(Duration::from_secs_f64).map_err(|_| bad())
}

/// What a worker reports at the end.
struct WorkerResult {
    hist: Histogram<u64>,
    ios: u64,
    bytes: u64,
    errors: u64,
    verify_failures: u64,
    first_error: Option<String>,
}

/// Live counters the main thread prints each second.
#[derive(Default)]
struct Live {
    ios: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
}

const PATTERN_MAGIC: u32 = 0x5041_4c53; // "PALS"

/// Fill `buf` (blocks of `bs`) with the verify pattern for `lba` onward, generation `gen`.
fn fill_pattern(buf: &mut [u8], bs: usize, lba: u64, gen: u32) {
    for (i, blk) in buf.chunks_mut(bs).enumerate() {
        let l = lba + i as u64;
        for rec in blk.chunks_mut(16) {
            if rec.len() == 16 {
                rec[0..8].copy_from_slice(&l.to_le_bytes());
                rec[8..12].copy_from_slice(&gen.to_le_bytes());
                rec[12..16].copy_from_slice(&PATTERN_MAGIC.to_le_bytes());
            }
        }
    }
}

fn check_pattern(buf: &[u8], bs: usize, lba: u64, gen: u32) -> Result<(), String> {
    let mut want = vec![0u8; bs];
    for (i, blk) in buf.chunks(bs).enumerate() {
        fill_pattern(&mut want, bs, lba + i as u64, gen);
        if blk != &want[..blk.len()] {
            let got_lba = u64::from_le_bytes(blk[0..8].try_into().unwrap());
            let got_gen = u32::from_le_bytes(blk[8..12].try_into().unwrap());
            return Err(format!("LBA {}: expected generation {gen}, found LBA {got_lba} generation {got_gen}", lba + i as u64));
        }
    }
    Ok(())
}

/// The offset generator of both load generators (`perf`, `bdevperf`).
pub(crate) struct Rng(pub(crate) u64);
impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        // xorshift64*: cheap and good enough for offsets.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

struct Workload {
    rw: Rw,
    mix: u8,
    io_bytes: u64,
    verify: bool,
}

#[derive(Clone, Copy, Default)]
struct Inflight {
    unit: u64,
    write: bool,
    gen: u32,
    start: Option<Instant>,
}

/// Run one queue until `stop`; I/O units (of io_bytes) in [first, first + units).
#[allow(clippy::too_many_arguments)]
fn worker(mut q: Box<dyn PerfQueue>, w: Arc<Workload>, first: u64, units: u64, seed: u64, stop: Arc<AtomicBool>, live: Arc<Live>, initial_gen: u32) -> WorkerResult {
    let bs = q.block_size() as usize;
    let blocks = (w.io_bytes as usize / bs) as u32;
    let depth = q.depth().min(units.max(1) as usize);
    let mut res = WorkerResult { hist: Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap(), ios: 0, bytes: 0, errors: 0, verify_failures: 0, first_error: None };
    let mut rng = Rng(seed | 1);
    let mut gens: Vec<u32> = if w.verify { vec![initial_gen; units as usize] } else { Vec::new() };
    let mut busy: Vec<bool> = if w.verify { vec![false; units as usize] } else { Vec::new() };
    let mut bufs: Vec<Vec<u8>> = (0..depth).map(|_| vec![0xa5u8; w.io_bytes as usize]).collect();
    let mut inflight = vec![Inflight::default(); depth];
    let mut seq_next = 0u64;
    let mut outstanding = 0usize;
    let mut free: Vec<u32> = (0..depth as u32).rev().collect();
    let mut gen_counter = 1u32;

    let mut pick = |rng: &mut Rng, busy: &mut Vec<bool>| -> Option<(u64, bool)> {
        let write = match w.rw {
            Rw::Randread | Rw::Read => false,
            Rw::Randwrite | Rw::Write => true,
            Rw::Randrw => (rng.next() % 100) as u8 >= w.mix,
        };
        let sequential = matches!(w.rw, Rw::Read | Rw::Write);
        for _ in 0..64 {
            let u = if sequential {
                let u = seq_next % units;
                seq_next += 1;
                u
            } else {
                rng.next() % units
            };
            if busy.is_empty() {
                return Some((u, write));
            }
            if !busy[u as usize] {
                busy[u as usize] = true;
                return Some((u, write));
            }
        }
        None
    };

    let fail = |res: &mut WorkerResult, msg: String| {
        res.errors += 1;
        live.errors.fetch_add(1, Ordering::Relaxed);
        if res.first_error.is_none() {
            res.first_error = Some(msg);
        }
    };

    loop {
        // Top up the queue unless the run is over (then only drain).
        while !stop.load(Ordering::Relaxed) {
            let Some(&tag) = free.last() else { break };
            let Some((unit, write)) = pick(&mut rng, &mut busy) else { break };
            free.pop();
            let lba = (first + unit) * blocks as u64;
            let mut gen = 0;
            if write && w.verify {
                gen_counter = gen_counter.wrapping_add(1).max(1);
                gen = gen_counter;
                fill_pattern(&mut bufs[tag as usize], bs, lba, gen);
            }
            inflight[tag as usize] = Inflight { unit, write, gen, start: Some(Instant::now()) };
            if let Err(e) = q.submit(tag, write, lba, blocks, &bufs[tag as usize]) {
                fail(&mut res, format!("submit: {e}"));
                return res;
            }
            outstanding += 1;
        }
        if outstanding == 0 {
            break;
        }
        let r = q.poll(Duration::from_millis(100), &mut |tag, result, data| {
            let f = inflight[tag as usize];
            let Some(start) = f.start else { return };
            let lat = start.elapsed().as_nanos() as u64;
            inflight[tag as usize].start = None;
            outstanding -= 1;
            free.push(tag);
            if !busy.is_empty() {
                busy[f.unit as usize] = false;
            }
            match result {
                Ok(()) => {
                    let _ = res.hist.record(lat.max(1));
                    res.ios += 1;
                    res.bytes += w.io_bytes;
                    live.ios.fetch_add(1, Ordering::Relaxed);
                    live.bytes.fetch_add(w.io_bytes, Ordering::Relaxed);
                    if w.verify {
                        if f.write {
                            gens[f.unit as usize] = f.gen;
                        } else if gens[f.unit as usize] != 0 {
                            let lba = (first + f.unit) * blocks as u64;
                            if let Err(m) = check_pattern(data, bs, lba, gens[f.unit as usize]) {
                                res.verify_failures += 1;
                                res.errors += 1;
                                live.errors.fetch_add(1, Ordering::Relaxed);
                                if res.first_error.is_none() {
                                    res.first_error = Some(format!("verify: {m}"));
                                }
                            }
                        }
                    }
                }
                Err(m) => {
                    res.errors += 1;
                    live.errors.fetch_add(1, Ordering::Relaxed);
                    if res.first_error.is_none() {
                        res.first_error = Some(m);
                    }
                }
            }
        });
        if let Err(e) = r {
            fail(&mut res, format!("connection: {e}"));
            return res;
        }
    }
    res
}

fn cpu_times() -> (f64, f64) {
    // SAFETY: getrusage fills a zeroed struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    (t(ru.ru_utime), t(ru.ru_stime))
}

/// Verify mode on a read-only workload: write the pattern over the region first, untimed.
fn prefill(q: &mut dyn PerfQueue, first: u64, units: u64, io_bytes: u64) -> Result<(), String> {
    let bs = q.block_size() as usize;
    let blocks = (io_bytes as usize / bs) as u32;
    let depth = q.depth().min(units as usize).max(1);
    let mut bufs: Vec<Vec<u8>> = (0..depth).map(|_| vec![0u8; io_bytes as usize]).collect();
    let mut next = 0u64;
    let mut outstanding = 0;
    let mut free: Vec<u32> = (0..depth as u32).collect();
    let mut err = None;
    while next < units || outstanding > 0 {
        while next < units {
            let Some(tag) = free.pop() else { break };
            let lba = (first + next) * blocks as u64;
            fill_pattern(&mut bufs[tag as usize], bs, lba, 1);
            q.submit(tag, true, lba, blocks, &bufs[tag as usize]).map_err(|e| e.to_string())?;
            next += 1;
            outstanding += 1;
        }
        q.poll(Duration::from_millis(100), &mut |tag, r, _| {
            outstanding -= 1;
            free.push(tag);
            if let Err(m) = r {
                err.get_or_insert(m);
            }
        })
        .map_err(|e| e.to_string())?;
    }
    if let Some(e) = err {
        return Err(format!("prefill write failed: {e}"));
    }
    Ok(())
}

/// Entry point of `palisade perf`; returns the exit code.
pub fn run(a: PerfArgs) -> i32 {
    match run_inner(&a) {
        Ok(ok) => {
            if ok {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("palisade perf: {e}");
            2
        }
    }
}

fn run_inner(a: &PerfArgs) -> Result<bool, String> {
    if a.queues == 0 || a.qd == 0 {
        return Err("--queues and --qd must be at least 1".into());
    }
    if a.mix > 100 {
        return Err("--mix is a percentage of reads (0..100)".into());
    }
    let mut loop_session = None;
    let (mut session, mut queues) = match a.transport {
        Transport::Tcp => {
            let (s, q) = tcp::open(a)?;
            (Some(s), q)
        }
        Transport::Loop => {
            let (s, q) = nvmf_loop::open(a)?;
            loop_session = Some(s);
            (None, q)
        }
        Transport::Iscsi => {
            let target = a.target.as_deref().ok_or("--transport iscsi needs --target IQN")?;
            let chap = match (&a.chap_user, &a.chap_secret) {
                (Some(u), Some(s)) => Some((u.clone(), s.clone())),
                (None, None) => None,
                _ => return Err("--chap-user and --chap-secret go together".into()),
            };
            let initiator = a.initiator.clone().unwrap_or_else(|| "iqn.2024-01.io.palisade:perf".to_string());
            let q = iscsi::connect(
                &a.addr,
                a.port.unwrap_or(3260),
                target,
                a.lun,
                &initiator,
                chap,
                a.queues as usize,
                a.connections.max(1) as usize,
                a.qd as usize,
                a.hdgst,
                a.ddgst,
            )
            .map_err(|e| format!("iSCSI login to {}:{} {target}: {e}", a.addr, a.port.unwrap_or(3260)))?;
            (None, q)
        }
    };
    if let Some(key) = a.pr_key {
        for (i, q) in queues.iter_mut().enumerate() {
            q.pr_register(key, if i == 0 { a.pr_reserve } else { None }).map_err(|e| format!("queue {}: {e}", i + 1))?;
        }
    }
    let bs = queues[0].block_size() as u64;
    let nblocks = queues[0].num_blocks();
    if a.bs % bs != 0 {
        return Err(format!("--bs {} is not a multiple of the device block size {bs}", a.bs));
    }
    let dev_bytes = nblocks * bs;
    if a.offset % a.bs != 0 || a.offset >= dev_bytes {
        return Err(format!("--offset {} must be a multiple of --bs {} inside the device ({dev_bytes} bytes)", a.offset, a.bs));
    }
    let region = a.size.unwrap_or(dev_bytes - a.offset);
    if a.offset + region > dev_bytes {
        return Err(format!("--offset {} + --size {region} is beyond the device ({dev_bytes} bytes)", a.offset));
    }
    let base_unit = a.offset / a.bs;
    let total_units = region / a.bs;
    if total_units == 0 {
        return Err("the region is smaller than one I/O".into());
    }
    // Verify needs each queue to own its LBAs (no cross-queue races); otherwise share the device.
    let nq = queues.len() as u64;
    let per_q = if a.verify { (total_units / nq).min(16 << 20) } else { total_units };
    if per_q == 0 {
        return Err("the device is too small for that many queues".into());
    }
    let read_only = matches!(a.rw, Rw::Read | Rw::Randread);
    let w = Arc::new(Workload { rw: a.rw, mix: a.mix, io_bytes: a.bs, verify: a.verify });
    let stop = Arc::new(AtomicBool::new(false));
    let live = Arc::new(Live::default());
    let mut prepared = Vec::new();
    for (i, mut q) in queues.into_iter().enumerate() {
        let first = base_unit + if a.verify { i as u64 * per_q } else { 0 };
        let mut units = per_q;
        if a.verify && read_only {
            // Keep the untimed prefill short: at most 256 MiB per queue.
            units = units.min((256 << 20) / a.bs).max(1);
            prefill(q.as_mut(), first, units, a.bs)?;
        }
        prepared.push((q, first, units));
    }
    let (u0, s0) = cpu_times();
    let start = Instant::now();
    let mut handles = Vec::new();
    for (i, (q, first, units)) in prepared.into_iter().enumerate() {
        let (w, stop, live) = (w.clone(), stop.clone(), live.clone());
        let seed = (start.elapsed().as_nanos() as u64) ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i as u64 + 1));
        let gen_seed = if a.verify && read_only { 1 } else { 0 };
        handles.push(std::thread::spawn(move || {
            let mut r = worker(q, w, first, units, seed, stop, live, gen_seed);
            r.hist.auto(true);
            r
        }));
    }
    let mut last = (0u64, 0u64);
    let mut tick = 1u64;
    while start.elapsed() < a.time {
        let next = start + Duration::from_secs(tick);
        let end = start + a.time;
        let wake = next.min(end);
        let now = Instant::now();
        if wake > now {
            std::thread::sleep(wake - now);
        }
        if wake == next {
            let ios = live.ios.load(Ordering::Relaxed);
            let bytes = live.bytes.load(Ordering::Relaxed);
            eprintln!(
                "[{:>4}s] {:>9} IOPS {:>9.1} MiB/s  errors {}",
                tick,
                ios - last.0,
                (bytes - last.1) as f64 / (1 << 20) as f64,
                live.errors.load(Ordering::Relaxed)
            );
            last = (ios, bytes);
            tick += 1;
            if let Some(s) = session.as_mut() {
                s.keep_alive();
                if let Err(e) = s.maybe_reauth() {
                    stop.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        if handles.iter().all(|h| h.is_finished()) {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut results = Vec::new();
    for h in handles {
        results.push(h.join().map_err(|_| "a worker thread panicked".to_string())?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (u1, s1) = cpu_times();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    let (mut ios, mut bytes, mut errors, mut vfail) = (0, 0, 0, 0);
    let mut first_error = None;
    for r in &results {
        let _ = hist.add(&r.hist);
        ios += r.ios;
        bytes += r.bytes;
        errors += r.errors;
        vfail += r.verify_failures;
        if first_error.is_none() {
            first_error = r.first_error.clone();
        }
    }
    if let Some(s) = session.take() {
        let _ = s.ctrlr.shutdown();
    }
    let target_busy_s = loop_session.as_ref().map(|s| s.target_busy_ns() as f64 / 1e9);
    if let Some(s) = loop_session.take() {
        s.stop();
    }
    let iops = ios as f64 / elapsed;
    let mibs = bytes as f64 / (1 << 20) as f64 / elapsed;
    let us = |v: u64| v as f64 / 1000.0;
    let (cpu_user, cpu_sys) = (u1 - u0, s1 - s0);
    if a.json {
        let v = json!({
            "transport": format!("{:?}", a.transport).to_lowercase(),
            "rw": format!("{:?}", a.rw).to_lowercase(),
            "bs": a.bs, "qd": a.qd, "queues": a.queues, "connections": a.connections,
            "elapsed_s": elapsed,
            "ios": ios,
            "iops": iops,
            "mib_s": mibs,
            "lat_us": {
                "avg": hist.mean() / 1000.0,
                "p50": us(hist.value_at_quantile(0.5)),
                "p99": us(hist.value_at_quantile(0.99)),
                "p99_9": us(hist.value_at_quantile(0.999)),
                "max": us(hist.max()),
            },
            "errors": errors,
            "verify_failures": vfail,
            "first_error": first_error,
            "cpu": {"user_s": cpu_user, "sys_s": cpu_sys, "core_fraction": (cpu_user + cpu_sys) / elapsed},
            "target": target_busy_s.map(|b| json!({
                "busy_s": b,
                "busy_ns_per_io": if ios > 0 { b * 1e9 / ios as f64 } else { 0.0 },
                "iops_per_core": if b > 0.0 { ios as f64 / b } else { 0.0 },
            })),
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap());
    } else {
        println!(
            "{:?} bs={} qd={} queues={} {:.1}s: {:.0} IOPS, {:.1} MiB/s, latency us avg {:.1} p50 {:.1} p99 {:.1} p99.9 {:.1}, errors {} (verify {}), cpu user {:.2}s sys {:.2}s ({:.0}% of a core)",
            a.rw,
            a.bs,
            a.qd,
            a.queues,
            elapsed,
            iops,
            mibs,
            hist.mean() / 1000.0,
            us(hist.value_at_quantile(0.5)),
            us(hist.value_at_quantile(0.99)),
            us(hist.value_at_quantile(0.999)),
            errors,
            vfail,
            cpu_user,
            cpu_sys,
            100.0 * (cpu_user + cpu_sys) / elapsed
        );
        if let Some(b) = target_busy_s.filter(|_| ios > 0) {
            println!("target reactors busy {b:.2}s: {:.0} ns per I/O, {:.0} IOPS per busy core", b * 1e9 / ios as f64, ios as f64 / b.max(1e-9));
        }
        if let Some(e) = &first_error {
            println!("first error: {e}");
        }
    }
    Ok(errors == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert_eq!(parse_size("128K").unwrap(), 131072);
        assert_eq!(parse_size("1m").unwrap(), 1 << 20);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert!(parse_size("x").is_err());
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
    }

    #[test]
    fn pattern_roundtrip() {
        let mut b = vec![0u8; 8192];
        fill_pattern(&mut b, 4096, 10, 3);
        assert!(check_pattern(&b, 4096, 10, 3).is_ok());
        assert!(check_pattern(&b, 4096, 10, 4).is_err());
        assert!(check_pattern(&b, 4096, 11, 3).is_err());
    }
}
