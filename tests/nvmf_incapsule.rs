//! NVMe/TCP writes whose in-capsule data lands in place (issue 12): against the built binary, a
//! raw I/O queue sends 16-32 KiB write capsules slowly, in pieces, with header and data digests
//! on and off, so the target takes the header, hands the command to the queue pair and reads the
//! rest of the data straight into its buffer across many reads; the data reads back intact and
//! `framework_get_reactors` counts the landed capsules. A wrong data digest on such a write ends
//! that connection with a C2HTermReq while other connections keep working.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::Target;
use palisade::nvme::spec::{sgl, Sgl};
use palisade::nvmf::fabrics::{build_connect_sqe, ConnectData};
use palisade::nvmf::host::{rw_sqe, Controller, HostOpts};
use palisade::nvmf::tcp::pdu::{self, fes, ty, Digests, IcReq};
use serde_json::{json, Value};

const NQN: &str = "nqn.2016-06.io.spdk:incapsule";
const ICD: usize = 32768;

struct Setup {
    t: Target,
    port: u16,
}

impl Setup {
    fn addr(&self) -> SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().unwrap()
    }
    fn opts(&self, hd: bool, dd: bool) -> HostOpts {
        let mut o = HostOpts::new(self.addr(), NQN);
        o.hdgst = hd;
        o.ddgst = dd;
        o.timeout = Duration::from_secs(10);
        o
    }
    fn rx_counters(&self) -> Value {
        self.t.rpc("framework_get_reactors", json!({}))["rx_in_place"]["nvmf_tcp"].clone()
    }
}

fn setup() -> Setup {
    let t = Target::start(&["-m", "0x1"]);
    t.rpc("bdev_malloc_create", json!({"name": "Malloc0", "num_blocks": 65536, "block_size": 512}));
    t.rpc("nvmf_create_transport", json!({"trtype": "TCP", "in_capsule_data_size": ICD}));
    let port = t.export_nvmf(NQN, "SN-ICD", "Malloc0");
    Setup { t, port }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed) ^ (i >> 8) as u8).collect()
}

/// One whole PDU from `s` (common header first, then the rest `plen` says), or None at EOF.
fn read_pdu(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut b = vec![0u8; 8];
    s.read_exact(&mut b).ok()?;
    let plen = u32::from_le_bytes(b[4..8].try_into().unwrap()) as usize;
    assert!((8..1 << 20).contains(&plen), "plen {plen}");
    b.resize(plen, 0);
    s.read_exact(&mut b[8..]).ok()?;
    Some(b)
}

/// (cid, status code field) of a CapsuleResp.
fn cqe_of(p: &[u8]) -> (u16, u16) {
    assert_eq!(p[0], ty::CAPSULE_RESP, "expected a capsule response, got type {:#x}", p[0]);
    (u16::from_le_bytes([p[8 + 12], p[8 + 13]]), u16::from_le_bytes([p[8 + 14], p[8 + 15]]) >> 1)
}

/// A raw I/O queue 1 of controller `cntlid` with the given digests (ICReq, Connect done).
fn raw_io_queue(s: &Setup, o: &HostOpts, cntlid: u16) -> (TcpStream, Digests) {
    let mut sock = TcpStream::connect(s.addr()).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    sock.set_nodelay(true).unwrap();
    let dg = Digests { header: o.hdgst, data: o.ddgst };
    let mut b = Vec::new();
    IcReq { pfv: 0, hpda: 0, digests: dg, maxr2t: 0 }.encode(&mut b);
    sock.write_all(&b).unwrap();
    let r = read_pdu(&mut sock).expect("ICResp");
    assert_eq!(r[0], ty::ICRESP);
    let sqe = build_connect_sqe(0, 1, 31, 0, false);
    let data = ConnectData { hostid: o.hostid, cntlid, subnqn: NQN.into(), hostnqn: o.hostnqn.clone() }.encode();
    let mut b = Vec::new();
    pdu::encode_capsule_cmd(&mut b, dg, 0, &sqe.0, &data);
    sock.write_all(&b).unwrap();
    let r = read_pdu(&mut sock).expect("Connect response");
    assert_eq!(cqe_of(&r).1, 0, "I/O queue Connect succeeded");
    (sock, dg)
}

/// A write capsule of `data` at `lba`, the data in the capsule.
fn write_capsule(dg: Digests, cid: u16, lba: u64, data: &[u8]) -> Vec<u8> {
    let mut sqe = rw_sqe(true, 1, lba, (data.len() / 512) as u32);
    sqe.set_cid(cid);
    sqe.set_sgl(Sgl { address: 0, length: data.len() as u32, id: sgl::DATA_BLOCK_OFFSET });
    let mut b = Vec::new();
    pdu::encode_capsule_cmd(&mut b, dg, 0, &sqe.0, data);
    b
}

/// Send `b` in pieces with pauses, so the target reads it in many reads: the header with a
/// little data, then uneven chunks, the last ones splitting the digest.
fn send_slowly(sock: &mut TcpStream, b: &[u8]) {
    let mut at = 0;
    let mut cuts = vec![8191usize, 1, 5000, 777, 4096, 2999, 100];
    while at < b.len() {
        let n = if b.len() - at <= 6 { 2 } else { cuts.pop().map_or(3000, |c| c.min(b.len() - at - 6).max(1)) };
        let n = n.min(b.len() - at);
        sock.write_all(&b[at..at + n]).unwrap();
        at += n;
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn slow_in_capsule_writes_land_in_place_with_and_without_digests() {
    let s = setup();
    let before = s.rx_counters();
    let mut sent = 0u64;
    for (i, (hd, dd)) in [(false, false), (true, true), (true, false), (false, true)].into_iter().enumerate() {
        let o = s.opts(hd, dd);
        let mut c = Controller::connect(&o).expect("controller");
        assert!(c.id.ioccsz as usize * 16 >= 64 + ICD, "IOCCSZ offers {} bytes", c.id.ioccsz * 16);
        c.set_num_queues(2).unwrap();
        let (mut sock, dg) = raw_io_queue(&s, &o, c.id.cntlid);
        let mut q = c.io_queue(2, 8).unwrap();
        for (k, len) in [16384usize, ICD, 20480].into_iter().enumerate() {
            let lba = (i * 256 + k * 64) as u64;
            let data = pattern(len, (i * 3 + k) as u8);
            send_slowly(&mut sock, &write_capsule(dg, 7 + k as u16, lba, &data));
            sent += 1;
            let r = read_pdu(&mut sock).expect("write response");
            assert_eq!(r.len(), 24 + if hd { 4 } else { 0 });
            assert_eq!(cqe_of(&r), (7 + k as u16, 0), "write of {len} bytes (hd {hd}, dd {dd})");
            // Read back on a queue of the crate's own host.
            let (cqe, back) = q.sync(rw_sqe(false, 1, lba, (len / 512) as u32), None, len).unwrap();
            assert!(cqe.status.is_ok(), "read: {}", cqe.status);
            assert!(back == data, "read back other data ({len} bytes, hd {hd}, dd {dd})");
        }
    }
    let after = s.rx_counters();
    let n = |v: &Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("counter {k} missing in {v}"));
    assert_eq!(n(&after, "capsules") - n(&before, "capsules"), sent, "every slow capsule landed in place: {after}");
    // Most of each payload came straight from the socket, not through the receive buffer.
    let direct = n(&after, "bytes_in_place") - n(&before, "bytes_in_place");
    let copied = n(&after, "bytes_copied") - n(&before, "bytes_copied");
    assert!(direct > 4 * copied && direct > 0, "in place {direct}, copied {copied}");
    s.t.stop();
}

#[test]
fn bad_data_digest_on_in_capsule_write_terminates_only_that_connection() {
    let s = setup();
    let o = s.opts(true, true);
    let c = Controller::connect(&o).expect("controller");
    let (mut sock, dg) = raw_io_queue(&s, &o, c.id.cntlid);
    let data = pattern(ICD, 9);
    let mut b = write_capsule(dg, 3, 0, &data);
    let last = b.len() - 1;
    b[last] ^= 0x5a;
    send_slowly(&mut sock, &b);
    let r = read_pdu(&mut sock).expect("a termination request");
    assert_eq!(r[0], ty::C2H_TERM_REQ, "type {:#x}", r[0]);
    // The FES SPDK's target sends for a data digest error (NVMe/TCP has no code of its own).
    assert_eq!(u16::from_le_bytes([r[8], r[9]]), fes::HEADER_DIGEST_ERROR);
    let mut rest = [0u8; 64];
    assert!(matches!(sock.read(&mut rest), Ok(0) | Err(_)), "connection closed after the termination request");
    // Nothing was written, and other hosts are served.
    let o2 = s.opts(false, false);
    let mut c2 = Controller::connect(&o2).expect("another host connects");
    c2.set_num_queues(1).unwrap();
    let mut q = c2.io_queue(1, 8).unwrap();
    let (cqe, back) = q.sync(rw_sqe(false, 1, 0, (ICD / 512) as u32), None, ICD).unwrap();
    assert!(cqe.status.is_ok());
    assert!(back != data, "the corrupted write did not reach the medium");
    let good = pattern(ICD, 10);
    let (cqe, _) = q.sync(rw_sqe(true, 1, 0, (ICD / 512) as u32), Some(&good), 0).unwrap();
    assert!(cqe.status.is_ok(), "in-capsule write from the crate's host: {}", cqe.status);
    let (_, back) = q.sync(rw_sqe(false, 1, 0, (ICD / 512) as u32), None, ICD).unwrap();
    assert!(back == good);
    s.t.stop();
}

#[test]
fn perf_sends_large_in_capsule_writes_the_target_offers() {
    let s = setup();
    let before = s.rx_counters()["capsules"].as_u64().unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["perf", "--transport", "tcp", "--addr", "127.0.0.1", "--port", &s.port.to_string(), "--nqn", NQN, "--json"])
        .args(["--qd", "32", "--rw", "write", "--bs", "32k", "--verify", "--hdgst", "--ddgst", "--time", "1500ms"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(out.status.code(), Some(0), "perf failed: {}\n{v}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(v["errors"], 0, "{v}");
    let ios = v["ios"].as_u64().unwrap();
    assert!(ios > 50, "{v}");
    // 32 KiB writes fit what the target offers (IOCCSZ): perf sends them in the capsule, and
    // the target lands those whose data had not all arrived with the header.
    let landed = s.rx_counters()["capsules"].as_u64().unwrap() - before;
    eprintln!("perf: {ios} I/Os, {landed} in-capsule writes landed in place");
    assert!(landed > 0, "no perf write was landed in place");
    s.t.stop();
}
