//! Hostile NVMe/TCP clients against the built binary (issue 11): command fields that size
//! buffers, hosts that never read, idle and half-open connections, reserved header fields. Each
//! test also checks that a well-behaved host keeps reading back its data.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::Target;
use palisade::nvme::spec::{admin, cns, sc, sgl, Sgl, Sqe, Status};
use palisade::nvmf::host::{rw_sqe, Controller, HostError, HostOpts, Queue};
use palisade::nvmf::tcp::pdu::{self, ty, Digests};
use serde_json::json;

const NQN: &str = "nqn.2016-06.io.spdk:hostile";

struct Setup {
    t: Target,
    port: u16,
}

impl Setup {
    fn addr(&self) -> SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().unwrap()
    }
    fn opts(&self) -> HostOpts {
        HostOpts::new(self.addr(), NQN)
    }
    /// (VmRSS, VmHWM) of the target in KiB.
    fn mem(&self) -> (u64, u64) {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.t.pid())).unwrap();
        let field = |k: &str| s.lines().find(|l| l.starts_with(k)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap();
        (field("VmRSS:"), field("VmHWM:"))
    }
}

/// Target with a 32 MiB RAM bdev as nsid 1 of NQN, any host allowed.
fn setup(transport: serde_json::Value) -> Setup {
    let t = Target::start(&["-m", "0x1"]);
    t.rpc("bdev_malloc_create", json!({"name": "Malloc0", "num_blocks": 65536, "block_size": 512}));
    let mut tp = json!({"trtype": "TCP"});
    for (k, v) in transport.as_object().unwrap() {
        tp[k] = v.clone();
    }
    t.rpc("nvmf_create_transport", tp);
    let port = t.export_nvmf(NQN, "SN-HOSTILE", "Malloc0");
    Setup { t, port }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) ^ (i >> 9) as u8).collect()
}

/// A well-behaved host writes and reads back 64 KiB at `lba` (a fresh connection each time).
fn good_host_round_trip(s: &Setup, lba: u64, seed: u8) {
    let mut c = Controller::connect(&s.opts()).expect("good host connects");
    c.set_num_queues(1).unwrap();
    let mut q = c.io_queue(1, 32).unwrap();
    let data = pattern(65536, seed);
    let (cqe, _) = q.sync(rw_sqe(true, 1, lba, 128), Some(&data), 0).unwrap();
    assert!(cqe.status.is_ok(), "write: {}", cqe.status);
    let (cqe, back) = q.sync(rw_sqe(false, 1, lba, 128), None, data.len()).unwrap();
    assert!(cqe.status.is_ok(), "read: {}", cqe.status);
    assert!(back == data, "good host read back other data");
}

fn status_of(r: Result<(palisade::nvme::spec::Cqe, Vec<u8>), HostError>) -> (Status, Vec<u8>) {
    let (cqe, d) = r.expect("command transport");
    (cqe.status, d)
}

#[test]
fn reservation_report_numd_max_costs_only_the_host_buffer() {
    let s = setup(json!({}));
    let mut c = Controller::connect(&s.opts()).unwrap();
    c.set_num_queues(1).unwrap();
    let mut q = c.io_queue(1, 8).unwrap();
    let (_, hwm0) = s.mem();
    // Register a key so the report has an entry, then report with NUMD = FFFFFFFFh into 4 KiB.
    let mut reg = Sqe::default();
    reg.set_opcode(0x0d).set_nsid(1).set_cdw(10, 0);
    let mut keys = [0u8; 16];
    keys[8..16].copy_from_slice(&0xabcdu64.to_le_bytes());
    let (st, _) = status_of(q.sync(reg, Some(&keys), 0));
    assert!(st.is_ok(), "register: {st}");
    let mut rep = Sqe::default();
    rep.set_opcode(0x0e).set_nsid(1).set_cdw(10, 0xffff_ffff).set_cdw(11, 1);
    let (st, d) = status_of(q.sync(rep, None, 4096));
    assert!(st.is_ok(), "report: {st}");
    assert_eq!(d.len(), 4096);
    assert_eq!(u16::from_le_bytes([d[5], d[6]]), 1, "one registrant");
    assert_eq!(u64::from_le_bytes(d[64 + 8..64 + 16].try_into().unwrap()), 0xabcd, "its key");
    // Get Log Page with the largest NUMD into 4 KiB: sized by the buffer too.
    let mut glp = Sqe::default();
    glp.set_opcode(admin::GET_LOG_PAGE).set_nsid(0xffff_ffff).set_cdw(10, 0xffff_0000 | 0x02).set_cdw(11, 0xffff);
    let (st, d) = status_of(c.admin.sync(glp, None, 4096));
    assert!(st.is_ok(), "log page: {st}");
    assert_eq!(d.len(), 4096);
    // A transfer beyond MDTS (128 KiB) is refused whatever its direction.
    let mut id = Sqe::default();
    id.set_opcode(admin::IDENTIFY).set_cdw(10, cns::CONTROLLER as u32);
    let (st, _) = status_of(c.admin.sync(id, None, 1 << 20));
    assert_eq!(st, Status::generic(sc::SGL_DATA_LENGTH_INVALID));
    let (_, hwm) = s.mem();
    assert!(hwm < hwm0 + 64 * 1024, "target peak RSS grew from {hwm0} to {hwm} KiB");
    good_host_round_trip(&s, 0, 1);
    s.t.stop();
}

fn icreq(addr: SocketAddr) -> TcpStream {
    common::hostile::nvme_icreq(addr)
}

fn raw_admin(addr: SocketAddr, sq_entries: u16) -> TcpStream {
    common::hostile::nvme_raw_admin(addr, NQN, sq_entries)
}

fn identify_capsule(cid: u16) -> Vec<u8> {
    common::hostile::nvme_identify_capsule(cid)
}

#[test]
fn identify_flood_without_reading_is_bounded() {
    let s = setup(json!({}));
    let (rss0, _) = s.mem();
    // Two hostile hosts send Identify for 6 s and never read: one ignores its queue depth, one
    // keeps cycling cids within it. 100 000 answers would be 400 MiB of output.
    let floods: Vec<_> = [false, true]
        .into_iter()
        .map(|respect| {
            let mut sock = raw_admin(s.addr(), 32);
            std::thread::spawn(move || {
                sock.set_nonblocking(true).unwrap();
                let until = Instant::now() + Duration::from_secs(6);
                let mut sent = 0u32;
                let mut pending: Vec<u8> = Vec::new();
                while Instant::now() < until && sent < 100_000 {
                    if pending.is_empty() {
                        let cid = if respect { (sent % 31) as u16 + 1 } else { (sent % 60000) as u16 + 1 };
                        pending = identify_capsule(cid);
                        sent += 1;
                    }
                    match sock.write(&pending) {
                        Ok(n) => {
                            pending.drain(..n);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                        Err(_) => break, // terminated by the target: fine
                    }
                }
                (sent, sock)
            })
        })
        .collect();
    // Meanwhile a well-behaved host keeps working.
    let t0 = Instant::now();
    let mut rounds = 0;
    while t0.elapsed() < Duration::from_secs(5) {
        good_host_round_trip(&s, 1024 + (rounds % 400) * 128, rounds as u8);
        rounds += 1;
    }
    let socks: Vec<_> = floods.into_iter().map(|h| h.join().unwrap()).collect();
    let (rss, hwm) = s.mem();
    eprintln!("identify flood: sent {:?}, target RSS {rss0} -> {rss} KiB, peak {hwm} KiB", socks.iter().map(|x| x.0).collect::<Vec<_>>());
    assert!(hwm < rss0 + 128 * 1024, "target peak RSS {hwm} KiB (baseline {rss0})");
    drop(socks);
    good_host_round_trip(&s, 0, 7);
    settle_and_report(&s, "nvme/tcp: two hosts flooding Identify without reading", rss0, hwm);
    s.t.stop();
}

#[test]
fn connections_that_never_connect_are_closed() {
    // Default connect timeout (10 s): after ICReq, and without even ICReq.
    let s = setup(json!({}));
    let mut half: Vec<TcpStream> = (0..20).map(|_| icreq(s.addr())).collect();
    half.push(TcpStream::connect(s.addr()).unwrap());
    good_host_round_trip(&s, 0, 3);
    let t0 = Instant::now();
    for c in half.iter_mut() {
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut b = [0u8; 64];
        let r = c.read(&mut b);
        assert!(matches!(r, Ok(0)) || r.is_err() && !matches!(r.as_ref().unwrap_err().kind(), std::io::ErrorKind::WouldBlock), "{r:?}");
        assert!(r.is_ok(), "closed, not timed out on our side: {r:?}");
    }
    let el = t0.elapsed();
    assert!(el < Duration::from_secs(16), "closed after {el:?}");
    good_host_round_trip(&s, 128, 4);
    s.t.stop();
}

#[test]
fn pdo_of_a_capsule_without_data_is_reserved() {
    let s = setup(json!({}));
    let mut sock = raw_admin(s.addr(), 8);
    // Identify with PDO = HLEN (72) and no data, as a third-party host library sends it.
    let mut b = identify_capsule(1);
    b[3] = 72;
    sock.write_all(&b).unwrap();
    let mut r = vec![0u8; 24 + 4096 + 24];
    sock.read_exact(&mut r).unwrap();
    assert_eq!(r[0], ty::C2H_DATA, "identify data, not a termination");
    assert_eq!(r[24 + 4096], ty::CAPSULE_RESP);
    // What is really malformed still terminates: a capsule with data and a PDO past its end.
    let mut sqe = Sqe::default();
    sqe.set_opcode(admin::SET_FEATURES).set_cid(2);
    let mut bad = Vec::new();
    pdu::encode_capsule_cmd(&mut bad, Digests::default(), 0, &sqe.0, &[0u8; 16]);
    bad[3] = 200;
    sock.write_all(&bad).unwrap();
    let mut all = Vec::new();
    let _ = sock.read_to_end(&mut all);
    assert!(all.len() >= 8 && all[0] == ty::C2H_TERM_REQ, "termination request: {:?}", &all[..all.len().min(8)]);
    good_host_round_trip(&s, 0, 5);
    s.t.stop();
}

/// Raise our soft fd limit to the hard one (many connections in one test).
fn raise_nofile() -> u64 {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
    }
    r.rlim_cur as u64
}

/// Many idle connections: small per-connection cost, given back when they leave; the
/// connection cap refuses the excess.
fn idle_wave(s: &Setup, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let mut a = raw_admin(s.addr(), 32);
            // One command each, so every connection has used its buffers once.
            a.write_all(&identify_capsule(1 + (i % 30) as u16)).unwrap();
            let mut r = vec![0u8; 24 + 4096 + 24];
            a.read_exact(&mut r).unwrap();
            a
        })
        .collect()
}

#[test]
fn idle_connections_cost_little_and_leave_nothing() {
    let n: usize = std::env::var("HOSTILE_IDLE_CONNS").ok().and_then(|v| v.parse().ok()).unwrap_or(600);
    assert!(raise_nofile() as usize > n + 200, "fd limit too low for {n} connections");
    let s = setup(json!({"max_connections": n + 10}));
    good_host_round_trip(&s, 0, 9);
    let (rss0, _) = s.mem();
    // First wave: opened and closed, so the second one reuses freed memory (the worst case).
    drop(idle_wave(&s, n));
    std::thread::sleep(Duration::from_millis(500));
    let w = idle_wave(&s, n);
    std::thread::sleep(Duration::from_secs(3)); // idle buffers are given back after 2 s
    let (rss1, _) = s.mem();
    let per = (rss1.saturating_sub(rss0)) * 1024 / n as u64;
    eprintln!("{n} idle NVMe/TCP connections: target RSS {rss0} -> {rss1} KiB ({per} bytes per connection)");
    assert!(per < 48 * 1024, "{per} bytes per idle connection");
    // Over the cap: accepted and closed at once.
    let extra: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(s.addr()).unwrap()).collect();
    for mut e in extra {
        e.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 8];
        assert!(matches!(e.read(&mut b), Ok(0) | Err(_)), "refused over the cap");
    }
    drop(w);
    std::thread::sleep(Duration::from_secs(1));
    let (rss2, _) = s.mem();
    eprintln!("after they left: {rss2} KiB");
    assert!(rss2 < rss0 + 64 * 1024, "RSS {rss2} KiB after the clients left (baseline {rss0})");
    good_host_round_trip(&s, 256, 10);
    s.t.stop();
}

/// A well-behaved host with many commands in flight on a queue (back-pressure must not stall it).
#[test]
fn deep_queue_reads_still_complete() {
    let s = setup(json!({}));
    let mut c = Controller::connect(&s.opts()).unwrap();
    c.set_num_queues(1).unwrap();
    let mut q: Queue = c.io_queue(1, 128).unwrap();
    let data = pattern(128 << 10, 2);
    let (cqe, _) = q.sync(rw_sqe(true, 1, 0, 256), Some(&data), 0).unwrap();
    assert!(cqe.status.is_ok());
    for round in 0..20 {
        for cid in 0..127u16 {
            q.submit(cid, rw_sqe(false, 1, 0, 256), None, 128 << 10).unwrap();
        }
        let mut done = 0;
        let t0 = Instant::now();
        while done < 127 {
            assert!(t0.elapsed() < Duration::from_secs(20), "round {round}: {done} of 127 completed");
            done += q
                .poll(Duration::from_secs(1), &mut |_, cqe, d| {
                    assert!(cqe.status.is_ok());
                    assert!(d == &data[..], "read back");
                })
                .unwrap();
        }
    }
    s.t.stop();
}

/// An I/O queue (qid 1, `depth` entries) on which `n` commands of 8 MiB are sent raw and never
/// followed: reads whose data is never read from the socket, or writes whose H2C data never
/// comes. Returns what keeps the connection open.
fn undrained_queue(s: &Setup, depth: u16, n: u16, write: bool, nsid: u32) -> (Controller, Queue) {
    let mut c = Controller::connect(&s.opts()).expect("hostile host connects");
    c.set_num_queues(1).unwrap();
    let mut q = c.io_queue(1, depth).unwrap();
    let mut b = Vec::new();
    for cid in 0..n {
        let mut sqe = rw_sqe(write, nsid, 0, 16384);
        sqe.set_cid(cid).set_sgl(Sgl { address: 0, length: 8 << 20, id: sgl::TRANSPORT_DATA_BLOCK });
        pdu::encode_capsule_cmd(&mut b, Digests::default(), 0, &sqe.0, &[]);
    }
    q.send_raw(&b).unwrap();
    (c, q)
}

/// Hosts that send 8 MiB reads at full queue depth and never read their socket, and one whose
/// write data never comes: each connection holds at most its share of the data-buffer budget
/// (`data_buffer_per_connection_mib`), the transport at most `num_shared_buffers` x
/// `io_unit_size`; the rest wait (not fail) and a well-behaved host keeps reading back its data.
#[test]
fn undrained_reads_and_dataless_writes_are_bounded() {
    // 8 MiB MDTS; 128 MiB of shared buffers (1024 x 128 KiB), 16 MiB per connection (default).
    let s = setup(json!({"max_io_size": 8 << 20, "num_shared_buffers": 1024}));
    // The readers' namespace completes asynchronously (as real disks do), so a whole queue of
    // reads is submitted before the first completes.
    s.t.rpc("bdev_malloc_create", json!({"name": "Malloc1", "num_blocks": 16384, "block_size": 512}));
    s.t.rpc(
        "bdev_delay_create",
        json!({"base_bdev_name": "Malloc1", "name": "Delay1", "avg_read_latency": 1000, "p99_read_latency": 1000,
               "avg_write_latency": 0, "p99_write_latency": 0}),
    );
    s.t.rpc("nvmf_subsystem_add_ns", json!({"nqn": NQN, "namespace": {"bdev_name": "Delay1", "nsid": 2}}));
    good_host_round_trip(&s, 0, 1);
    let (rss0, _) = s.mem();
    // Three readers: 3 x 63 reads of 8 MiB would be 1.5 GiB of read data.
    let mut abusers: Vec<_> = (0..3).map(|_| undrained_queue(&s, 64, 63, false, 2)).collect();
    abusers.push(undrained_queue(&s, 64, 63, true, 1));
    let t0 = Instant::now();
    let mut rounds = 0u64;
    while t0.elapsed() < Duration::from_secs(4) {
        good_host_round_trip(&s, 1024 + (rounds % 400) * 128, rounds as u8);
        rounds += 1;
    }
    let (rss, hwm) = s.mem();
    let st = s.t.rpc("framework_get_reactors", serde_json::Value::Null);
    let b = &st["data_buffers"]["nvmf_tcp"];
    eprintln!("undrained 8 MiB reads + dataless writes: RSS {rss0} -> {rss} KiB, peak {hwm} KiB, good host rounds {rounds}, budget {b}");
    assert!(hwm < 512 * 1024, "target peaked at {hwm} KiB with undrained reads (limit 512 MiB)");
    assert_eq!(b["limit"].as_u64().unwrap(), 1024 * 131072, "{b}");
    assert!(b["waits"].as_u64().unwrap() > 0, "commands should have waited for buffers: {b}");
    assert!(b["high_water"].as_u64().unwrap() <= b["limit"].as_u64().unwrap(), "{b}");
    assert!(rounds > 0);
    drop(abusers);
    // Their connections' bytes all come back.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = s.t.rpc("framework_get_reactors", serde_json::Value::Null);
        let used = st["data_buffers"]["nvmf_tcp"]["used"].as_u64().unwrap();
        if used == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{used} budget bytes still taken after the hosts left");
        std::thread::sleep(Duration::from_millis(100));
    }
    good_host_round_trip(&s, 0, 99);
    settle_and_report(&s, "nvme/tcp: 3 hosts x 63 undrained 8 MiB reads + 63 dataless 8 MiB writes", rss0, hwm);
    s.t.stop();
}

/// Wait for RSS to come back within 64 MiB of `base`, check no reactor stalled, report figures.
fn settle_and_report(s: &Setup, abuse: &str, base: u64, peak: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let (now, _) = s.mem();
        if now < base + 64 * 1024 {
            break now;
        }
        assert!(Instant::now() < deadline, "{abuse}: RSS {now} KiB did not return near its baseline {base} KiB");
        std::thread::sleep(Duration::from_millis(200));
    };
    let stall = common::hostile::max_stall_us(&s.t);
    assert!(stall < 100_000, "{abuse}: a reactor loop took {stall} us");
    common::hostile::report(abuse, &common::hostile::Figures { baseline_kib: base, peak_kib: peak, after_kib: after, stall_us: stall });
}
