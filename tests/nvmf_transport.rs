//! The NVMe-oF core behind its transport boundary, from outside: the loop transport (no sockets)
//! driven by `palisade perf`, and NVMe/TCP H2C data received in place into the command's buffer
//! (large writes with and without digests read back intact; a payload whose data digest is wrong
//! is refused with a C2HTermReq even when it was read in place).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::{free_port, Target};
use palisade::nvme::spec::{io, sgl, Sgl, Sqe};
use palisade::nvmf::fabrics::{build_connect_sqe, ConnectData};
use palisade::nvmf::host::{Controller, HostOpts};
use palisade::nvmf::tcp::pdu::{self as tcp, flags, ty, DataHeader, Digests, IcReq};
use serde_json::{json, Value};

const NQN: &str = "nqn.2016-06.io.spdk:transport";

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_palisade")
}

fn perf(args: &[&str]) -> Value {
    let out = Command::new(bin()).arg("perf").args(args).arg("--json").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "perf {args:?} failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("perf --json output: {e}: {stdout}"))
}

fn assert_clean(v: &Value, what: &str) {
    assert_eq!(v["errors"], 0, "{what}: {v}");
    assert_eq!(v["verify_failures"], 0, "{what}: {v}");
    assert!(v["ios"].as_u64().unwrap() > 100, "{what}: too few I/Os: {v}");
}

#[test]
fn loop_transport_runs_verified_io_without_sockets() {
    for bs in ["4k", "128k"] {
        let v = perf(&["--transport", "loop", "--rw", "randrw", "--bs", bs, "--qd", "16", "--time", "2s", "--verify", "--loop-size", "64m"]);
        assert_clean(&v, &format!("loop randrw {bs}"));
        let t = &v["target"];
        assert!(t["busy_s"].as_f64().unwrap() > 0.0, "the core's cost is measured: {v}");
    }
    // Two queues on two reactors of one controller.
    let v = perf(&["--transport", "loop", "--target-cores", "0x3", "--queues", "2", "--rw", "randwrite", "--bs", "8k", "--qd", "8", "--time", "2s", "--verify", "--loop-size", "64m"]);
    assert_clean(&v, "loop, two queues");
}

fn setup() -> (Target, u16) {
    let t = Target::start(&["-m", "0x1"]);
    let port = free_port();
    t.rpc("bdev_malloc_create", json!({"name": "Malloc0", "num_blocks": 131072, "block_size": 512}));
    t.rpc("nvmf_create_transport", json!({"trtype": "TCP", "max_io_size": 1048576, "io_unit_size": 131072, "in_capsule_data_size": 4096}));
    t.rpc("nvmf_create_subsystem", json!({"nqn": NQN, "serial_number": "SN-TRANSPORT", "allow_any_host": true}));
    t.rpc("nvmf_subsystem_add_ns", json!({"nqn": NQN, "namespace": {"bdev_name": "Malloc0"}}));
    t.rpc(
        "nvmf_subsystem_add_listener",
        json!({"nqn": NQN, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}}),
    );
    (t, port)
}

#[test]
fn large_writes_are_received_in_place_and_read_back() {
    let (_t, port) = setup();
    let p = port.to_string();
    // 128 KiB is one H2CData PDU, 1 MiB is eight (MAXH2CDATA 128 KiB): most of each payload is
    // read straight into the command's buffer. --verify checks every block read back.
    for (bs, digests) in [("128k", false), ("1m", false), ("128k", true), ("1m", true)] {
        let mut args = vec!["--port", &p, "--nqn", NQN, "--rw", "randrw", "--bs", bs, "--qd", "8", "--time", "2s", "--verify"];
        if digests {
            args.extend(["--hdgst", "--ddgst"]);
        }
        let v = perf(&args);
        assert_clean(&v, &format!("tcp randrw {bs} digests={digests}"));
    }
}

fn read_pdu(s: &mut TcpStream) -> Vec<u8> {
    let mut ch = [0u8; 8];
    s.read_exact(&mut ch).unwrap();
    let plen = u32::from_le_bytes(ch[4..8].try_into().unwrap()) as usize;
    let mut p = ch.to_vec();
    p.resize(plen, 0);
    s.read_exact(&mut p[8..]).unwrap();
    p
}

/// An I/O queue with data digests whose Write of `len` bytes got its R2T; returns the socket and
/// the R2T's transfer tag.
fn io_queue_with_r2t(port: u16, len: u32) -> (Controller, TcpStream, u16) {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let o = HostOpts::new(addr, NQN);
    let mut c = Controller::connect(&o).unwrap();
    c.set_num_queues(1).unwrap();
    let dg = Digests { header: false, data: true };
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = Vec::new();
    IcReq { pfv: 0, hpda: 0, digests: dg, maxr2t: 0 }.encode(&mut b);
    s.write_all(&b).unwrap();
    assert_eq!(read_pdu(&mut s)[0], ty::ICRESP);
    let data = ConnectData { hostid: o.hostid, cntlid: c.id.cntlid, subnqn: NQN.into(), hostnqn: o.hostnqn.clone() }.encode();
    let mut b = Vec::new();
    tcp::encode_capsule_cmd(&mut b, dg, 0, &build_connect_sqe(0, 1, 15, 0, false).0, &data);
    s.write_all(&b).unwrap();
    let r = read_pdu(&mut s);
    assert_eq!(r[0], ty::CAPSULE_RESP);
    assert_eq!(u16::from_le_bytes([r[8 + 14], r[8 + 15]]) >> 1, 0, "I/O queue Connect succeeded");
    let mut sqe = Sqe::default();
    sqe.set_opcode(io::WRITE).set_cid(7).set_nsid(1).set_cdw(10, 0).set_cdw(12, len / 512 - 1);
    sqe.set_sgl(Sgl { address: 0, length: len, id: sgl::TRANSPORT_DATA_BLOCK });
    let mut b = Vec::new();
    tcp::encode_capsule_cmd(&mut b, dg, 0, &sqe.0, &[]);
    s.write_all(&b).unwrap();
    let r = read_pdu(&mut s);
    assert_eq!(r[0], ty::R2T, "a Write without in-capsule data gets an R2T");
    let ttag = u16::from_le_bytes([r[10], r[11]]);
    (c, s, ttag)
}

/// Send H2CData for the whole transfer in two pieces (header plus a little data, then the rest
/// after a pause, so the target reads the rest in place), with data digest `crc`.
fn send_h2c_split(s: &mut TcpStream, ttag: u16, data: &[u8], crc: u32) {
    let dg = Digests { header: false, data: true };
    let mut b = Vec::new();
    tcp::encode_data_header(&mut b, ty::H2C_DATA, dg, 0, DataHeader { cccid: 7, ttag, offset: 0, length: data.len() as u32 }, flags::LAST_PDU);
    let head = b.len();
    b.extend_from_slice(data);
    b.extend_from_slice(&crc.to_le_bytes());
    s.write_all(&b[..head + 512]).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    s.write_all(&b[head + 512..]).unwrap();
}

#[test]
fn in_place_payload_checks_its_data_digest() {
    let (_t, port) = setup();
    let len = 65536u32;
    let data: Vec<u8> = (0..len as usize).map(|i| (i * 7 + 3) as u8).collect();

    // A correct digest: the write completes, and the data is there.
    let (mut c, mut s, ttag) = io_queue_with_r2t(port, len);
    send_h2c_split(&mut s, ttag, &data, crc32c::crc32c(&data));
    let r = read_pdu(&mut s);
    assert_eq!(r[0], ty::CAPSULE_RESP);
    assert_eq!(u16::from_le_bytes([r[8 + 14], r[8 + 15]]) >> 1, 0, "write with a good digest succeeds");
    let mut q = c.io_queue(2, 4).unwrap_or_else(|_| {
        c.set_num_queues(2).unwrap();
        c.io_queue(2, 4).unwrap()
    });
    let mut rd = Sqe::default();
    rd.set_opcode(io::READ).set_nsid(1).set_cdw(10, 0).set_cdw(12, len / 512 - 1);
    let (cqe, back) = q.sync(rd, None, len as usize).unwrap();
    assert!(cqe.status.is_ok());
    assert!(back == data, "data written in place reads back");
    drop(s);

    // A wrong digest: C2HTermReq (data digest error), and the connection closes.
    let (_c2, mut s, ttag) = io_queue_with_r2t(port, len);
    send_h2c_split(&mut s, ttag, &data, crc32c::crc32c(&data) ^ 1);
    let r = read_pdu(&mut s);
    assert_eq!(r[0], ty::C2H_TERM_REQ, "a bad data digest ends the connection");
    let mut rest = [0u8; 16];
    assert!(matches!(s.read(&mut rest), Ok(0) | Err(_)), "and the connection is closed");
}
