//! NVMe/TCP target against the built binary: identify, I/O paths, digests, status codes, hosts,
//! discovery, keep-alive, malformed PDUs and asynchronous events. Uses the crate's NVMe/TCP host.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, Target};
use palisade::nvme::spec::{self, cns, fid, lid, sc, Sqe, Status};
use palisade::nvmf::host::{rw_sqe, Controller, CtrlrIdentity, HostError, HostOpts, Queue};
use palisade::nvmf::tcp::pdu::{self, ty, Digests, IcReq};
use serde_json::json;

const NQN: &str = "nqn.2016-06.io.spdk:cnode1";
const UUID: &str = "5a1e5ade-0000-4000-8000-0000000000aa";

struct Setup {
    t: Target,
    port: u16,
}

impl Setup {
    fn addr(&self) -> SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().unwrap()
    }
    fn opts(&self) -> HostOpts {
        let mut o = HostOpts::new(self.addr(), NQN);
        o.timeout = Duration::from_secs(10);
        o
    }
}

/// Target with a 64 MiB RAM bdev (512-byte blocks) exported as nsid 1 of NQN.
fn setup(transport: serde_json::Value, allow_any: bool) -> Setup {
    setup_on("0x1", transport, allow_any)
}

/// Two reactors when the machine has two cores: queue pairs of one controller land on different
/// reactors (round robin), which exercises the cross-reactor paths (AEN messages, teardown).
fn two_reactors() -> &'static str {
    if std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) >= 2 {
        "0x3"
    } else {
        "0x1"
    }
}

fn setup_on(mask: &str, transport: serde_json::Value, allow_any: bool) -> Setup {
    let t = Target::start(&["-m", mask]);
    let port = free_port();
    t.rpc("bdev_malloc_create", json!({"name": "Malloc0", "num_blocks": 131072, "block_size": 512, "uuid": UUID}));
    let mut tp = json!({"trtype": "TCP"});
    for (k, v) in transport.as_object().unwrap() {
        tp[k] = v.clone();
    }
    t.rpc("nvmf_create_transport", tp);
    t.rpc("nvmf_create_subsystem", json!({"nqn": NQN, "serial_number": "SN-TEST-1", "model_number": "Palisade Test", "allow_any_host": allow_any}));
    t.rpc("nvmf_subsystem_add_ns", json!({"nqn": NQN, "namespace": {"bdev_name": "Malloc0"}}));
    t.rpc(
        "nvmf_subsystem_add_listener",
        json!({"nqn": NQN, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}}),
    );
    Setup { t, port }
}

fn io_cmd(q: &mut Queue, sqe: Sqe, out: Option<&[u8]>, in_len: usize) -> (Status, Vec<u8>) {
    let (cqe, d) = q.sync(sqe, out, in_len).expect("command transport");
    (cqe.status, d)
}

fn write(q: &mut Queue, lba: u64, data: &[u8]) {
    let (st, _) = io_cmd(q, rw_sqe(true, 1, lba, (data.len() / 512) as u32), Some(data), 0);
    assert!(st.is_ok(), "write at {lba} of {} bytes: {st}", data.len());
}

fn read(q: &mut Queue, lba: u64, len: usize) -> Vec<u8> {
    let (st, d) = io_cmd(q, rw_sqe(false, 1, lba, (len / 512) as u32), None, len);
    assert!(st.is_ok(), "read at {lba}: {st}");
    d
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8).collect()
}

#[test]
fn connect_identify_and_logs() {
    let s = setup(json!({}), true);
    let mut c = Controller::connect(&s.opts()).unwrap();
    let id = &c.id;
    assert_eq!(id.serial, "SN-TEST-1");
    assert_eq!(id.model, "Palisade Test");
    assert_eq!(id.subnqn, NQN);
    assert_eq!(id.cntrltype, 1);
    assert_eq!(id.mdts, 5, "128 KiB max I/O = 2^5 4 KiB pages");
    assert_eq!(id.ioccsz, (64 + 4096) / 16);
    assert!(id.nn >= 1);
    let ctrls = s.t.rpc("nvmf_subsystem_get_controllers", json!({"nqn": NQN}));
    assert_eq!(ctrls[0]["cntlid"], id.cntlid);
    assert_eq!(ctrls[0]["hostnqn"], c.opts.hostnqn.as_str());

    assert_eq!(c.namespaces().unwrap(), vec![1]);
    let ns = c.namespace(1).unwrap();
    assert_eq!((ns.nsze, ns.block_size), (131072, 512));
    let u = uuid::Uuid::parse_str(UUID).unwrap();
    assert_eq!(ns.nguid, palisade::volume::identity::nguid(&u));
    assert_eq!(ns.eui64, palisade::volume::identity::eui64(&u));
    // Namespace identification descriptors: EUI-64, NGUID, UUID.
    let d = c.admin.identify(cns::NS_ID_DESCRIPTORS, 1).unwrap();
    assert_eq!((d[0], d[1]), (1, 8));
    assert_eq!(&d[4..12], &ns.eui64);
    assert_eq!((d[12], d[13]), (2, 16));
    assert_eq!(&d[16..32], &ns.nguid);
    assert_eq!((d[32], d[33]), (3, 16));
    assert_eq!(&d[36..52], u.as_bytes());
    // Inactive namespace: zeros; invalid one: Invalid Namespace.
    assert!(c.admin.identify(cns::NAMESPACE, 7).unwrap().iter().all(|&b| b == 0));
    match c.admin.identify(cns::NAMESPACE, 0) {
        Err(HostError::Status(st)) => assert_eq!(st, Status::generic(sc::INVALID_NAMESPACE)),
        other => panic!("identify nsid 0: {other:?}"),
    }
    // Log pages.
    let smart = c.admin.get_log_page(lid::SMART, 512, 0).unwrap();
    assert_eq!(smart[3], 100, "available spare");
    let fw = c.admin.get_log_page(lid::FIRMWARE_SLOT, 512, 0).unwrap();
    assert_eq!(fw[0], 1);
    let eff = c.admin.get_log_page(lid::COMMANDS_EFFECTS, 4096, 0).unwrap();
    assert_eq!(eff[1024 + 2 * 4] & 1, 1, "Read supported");
    assert_eq!(eff[1024 + 4] & 3, 3, "Write supported, changes LBAs");
    c.admin.get_log_page(lid::ERROR, 64, 0).unwrap();
    match c.admin.get_log_page(0x42, 512, 0) {
        Err(HostError::Status(st)) => assert_eq!(st, Status::specific(sc::INVALID_LOG_PAGE)),
        other => panic!("bad log page: {other:?}"),
    }
    // Features.
    assert_eq!(c.set_num_queues(4).unwrap(), 127);
    c.admin.set_features(fid::KEEP_ALIVE_TIMER, 15000).unwrap();
    assert_eq!(c.admin.get_features(fid::KEEP_ALIVE_TIMER, 0, 0).unwrap().0.dw0, 15000);
    let (_, hid) = c.admin.get_features(fid::HOST_IDENTIFIER, 1, 16).unwrap();
    assert_eq!(hid, c.opts.hostid);
    c.admin.keep_alive().unwrap();
    assert_eq!(c.admin.property_get(spec::prop::VS, false).unwrap(), 0x10400);
    // Unknown admin opcode.
    let mut bad = Sqe::default();
    bad.set_opcode(0xc1);
    assert_eq!(c.admin.sync(bad, None, 0).unwrap().0.status, Status::generic(sc::INVALID_OPCODE));
    // An I/O queue counts in get_controllers, and qpairs lists both queues.
    let _q = c.io_queue(1, 32).unwrap();
    let ctrls = s.t.rpc("nvmf_subsystem_get_controllers", json!({"nqn": NQN}));
    assert_eq!(ctrls[0]["num_io_qpairs"], 1);
    let qp = s.t.rpc("nvmf_subsystem_get_qpairs", json!({"nqn": NQN}));
    assert_eq!(qp.as_array().unwrap().len(), 2);
    // Normal shutdown through CC.SHN: CSTS.SHST reports complete.
    assert_eq!(c.admin.property_get(spec::prop::CSTS, false).unwrap() & 1, 1);
    c.admin.property_set(spec::prop::CC, 1 | (6 << 16) | (4 << 20) | (1 << 14)).unwrap();
    assert_eq!((c.admin.property_get(spec::prop::CSTS, false).unwrap() >> 2) & 3, 2);
    // CAP: MQES from max_queue_depth, NVM command set.
    let cap = c.admin.property_get(spec::prop::CAP, true).unwrap();
    assert_eq!((cap & 0xffff, (cap >> 37) & 1), (127, 1));
    c.shutdown().unwrap();
    s.t.stop();
}

#[test]
fn io_paths_incapsule_r2t_and_digests() {
    // ICD 4 KiB, MAXH2CDATA 8 KiB: 512 B and 4 KiB travel in the capsule, 8 KiB takes one R2T
    // and one H2CData, 64 KiB one R2T answered by eight H2CData PDUs.
    let s = setup(json!({"in_capsule_data_size": 4096, "io_unit_size": 8192}), true);
    // The last case keeps SQ flow control on: reads then complete with a CapsuleResp instead of
    // the C2HData SUCCESS flag.
    for (hd, dd, no_sqflow) in [(false, false, true), (true, true, true), (true, false, true), (false, true, false)] {
        let mut o = s.opts();
        o.hdgst = hd;
        o.ddgst = dd;
        o.disable_sqflow = no_sqflow;
        let c = Controller::connect(&o).unwrap();
        let mut q = c.io_queue(1, 64).unwrap();
        assert_eq!(q.digests(), Digests { header: hd, data: dd });
        assert_eq!(q.maxh2cdata, 8192);
        assert_eq!(q.icd, 4096);
        for (i, len) in [512usize, 4096, 8192, 65536, 131072].into_iter().enumerate() {
            let lba = 1000 + i as u64 * 512;
            let data = pattern(len, i as u8 + hd as u8 * 7 + dd as u8 * 13);
            write(&mut q, lba, &data);
            assert_eq!(read(&mut q, lba, len), data, "len {len} digests {hd}/{dd}");
        }
        // Beyond MDTS (128 KiB): Invalid Field.
        let big = vec![0u8; 262144];
        let (st, _) = io_cmd(&mut q, rw_sqe(true, 1, 0, 512), Some(&big), 0);
        assert!(!st.is_ok());
        c.shutdown().unwrap();
    }
    s.t.stop();
}

#[test]
fn several_queues_write_read_verify() {
    let s = setup_on(two_reactors(), json!({}), true);
    let c = Controller::connect(&s.opts()).unwrap();
    let mut qs: Vec<Queue> = (1..=4).map(|qid| c.io_queue(qid, 32).unwrap()).collect();
    // Pipelined writes on every queue, then read each region back through another queue.
    for (i, q) in qs.iter_mut().enumerate() {
        let bufs: Vec<Vec<u8>> = (0..16).map(|k| pattern(4096, (i * 16 + k) as u8)).collect();
        for (k, b) in bufs.iter().enumerate() {
            q.submit(k as u16, rw_sqe(true, 1, (i * 16 + k) as u64 * 8, 8), Some(b), 0).unwrap();
        }
        let mut done = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while done < 16 && Instant::now() < deadline {
            done += q.poll(Duration::from_millis(100), &mut |_, cqe, _| assert!(cqe.status.is_ok())).unwrap();
        }
        assert_eq!(done, 16);
    }
    for i in 0..4 {
        let q = &mut qs[(i + 1) % 4];
        for k in 0..16 {
            assert_eq!(read(q, (i * 16 + k) as u64 * 8, 4096), pattern(4096, (i * 16 + k) as u8));
        }
    }
    // Queue ids must be unique per controller.
    assert!(c.io_queue(2, 32).is_err());
    drop(qs);
    c.shutdown().unwrap();
    s.t.stop();
}

#[test]
fn zeroes_deallocate_compare_and_status_codes() {
    let s = setup(json!({}), true);
    let c = Controller::connect(&s.opts()).unwrap();
    let mut q = c.io_queue(1, 32).unwrap();
    let data = pattern(8192, 5);
    write(&mut q, 100, &data);
    // Compare: equal, then different.
    let mut cmp = rw_sqe(true, 1, 100, 16);
    cmp.set_opcode(spec::io::COMPARE);
    assert!(io_cmd(&mut q, cmp, Some(&data), 0).0.is_ok());
    let other = pattern(8192, 6);
    assert_eq!(io_cmd(&mut q, cmp, Some(&other), 0).0, Status::media(sc::COMPARE_FAILURE));
    // Write Zeroes.
    let mut wz = Sqe::default();
    wz.set_opcode(spec::io::WRITE_ZEROES).set_nsid(1).set_cdw(10, 100).set_cdw(12, 15);
    assert!(io_cmd(&mut q, wz, None, 0).0.is_ok());
    assert!(read(&mut q, 100, 8192).iter().all(|&b| b == 0));
    // Dataset Management deallocate of two ranges.
    write(&mut q, 200, &data);
    write(&mut q, 400, &data);
    let mut ranges = vec![0u8; 32];
    for (i, lba) in [200u64, 400].iter().enumerate() {
        ranges[i * 16 + 4..i * 16 + 8].copy_from_slice(&16u32.to_le_bytes());
        ranges[i * 16 + 8..i * 16 + 16].copy_from_slice(&lba.to_le_bytes());
    }
    let mut dsm = Sqe::default();
    dsm.set_opcode(spec::io::DATASET_MANAGEMENT).set_nsid(1).set_cdw(10, 1).set_cdw(11, 1 << 2);
    assert!(io_cmd(&mut q, dsm, Some(&ranges), 0).0.is_ok());
    assert!(read(&mut q, 200, 8192).iter().all(|&b| b == 0));
    assert!(read(&mut q, 400, 8192).iter().all(|&b| b == 0));
    // Flush.
    let mut fl = Sqe::default();
    fl.set_opcode(spec::io::FLUSH).set_nsid(1);
    assert!(io_cmd(&mut q, fl, None, 0).0.is_ok());
    // Out of range: the last block plus one.
    let (st, _) = io_cmd(&mut q, rw_sqe(false, 1, 131071, 2), None, 1024);
    assert_eq!(st, Status::generic(sc::LBA_OUT_OF_RANGE));
    let (st, _) = io_cmd(&mut q, rw_sqe(true, 1, 131072, 1), Some(&[0u8; 512]), 0);
    assert_eq!(st, Status::generic(sc::LBA_OUT_OF_RANGE));
    wz.set_cdw(10, 131070).set_cdw(12, 7);
    assert_eq!(io_cmd(&mut q, wz, None, 0).0, Status::generic(sc::LBA_OUT_OF_RANGE));
    // Unknown namespace, unknown opcode.
    let (st, _) = io_cmd(&mut q, rw_sqe(false, 9, 0, 1), None, 512);
    assert_eq!(st, Status::generic(sc::INVALID_NAMESPACE));
    let mut bad = rw_sqe(false, 1, 0, 1);
    bad.set_opcode(0x7e);
    assert_eq!(io_cmd(&mut q, bad, None, 0).0, Status::generic(sc::INVALID_OPCODE));
    // The queue still works after the errors.
    write(&mut q, 8, &data);
    assert_eq!(read(&mut q, 8, 8192), data);
    c.shutdown().unwrap();
    s.t.stop();
}

#[test]
fn unknown_host_refused() {
    let s = setup(json!({}), false);
    let o = s.opts();
    match Controller::connect(&o) {
        Err(HostError::Status(st)) => assert_eq!(st, Status::specific(sc::CONNECT_INVALID_HOST)),
        Err(e) => panic!("expected Connect Invalid Host, got {e}"),
        Ok(_) => panic!("an unknown host was let in"),
    }
    s.t.rpc("nvmf_subsystem_add_host", json!({"nqn": NQN, "host": o.hostnqn}));
    let c = Controller::connect(&o).unwrap();
    // Another host is still refused.
    assert!(Controller::connect(&s.opts()).is_err());
    c.shutdown().unwrap();
    // allow_any_host lets it in.
    s.t.rpc("nvmf_subsystem_allow_any_host", json!({"nqn": NQN, "allow_any_host": true}));
    Controller::connect(&s.opts()).unwrap();
    // A subsystem that does not exist, or does not listen here: Invalid Parameters.
    let mut o2 = s.opts();
    o2.subnqn = "nqn.2016-06.io.spdk:nothere".into();
    match Controller::connect(&o2) {
        Err(HostError::Status(st)) => assert_eq!(st, Status::specific(sc::CONNECT_INVALID_PARAMETERS)),
        other => panic!("{:?}", other.err()),
    }
    s.t.stop();
}

#[test]
fn discovery_log_lists_the_subsystem() {
    let s = setup(json!({}), true);
    let mut o = s.opts();
    o.subnqn = spec::DISCOVERY_NQN.into();
    let mut d = Controller::connect(&o).unwrap();
    assert_eq!(d.id.cntrltype, 2);
    assert_eq!(d.id.subnqn, spec::DISCOVERY_NQN);
    let hdr = d.admin.get_log_page(lid::DISCOVERY, 1024, 0).unwrap();
    let numrec = u64::from_le_bytes(hdr[8..16].try_into().unwrap()) as usize;
    assert!(numrec >= 1);
    let full = d.admin.get_log_page(lid::DISCOVERY, 1024 * (1 + numrec), 0).unwrap();
    let entries: Vec<&[u8]> = (0..numrec).map(|i| &full[1024 * (i + 1)..1024 * (i + 2)]).collect();
    let e = entries.iter().find(|e| spec::get_str(&e[256..512]) == NQN).expect("subsystem in the discovery log");
    assert_eq!(e[0], 3, "TCP");
    assert_eq!(e[1], 1, "IPv4");
    assert_eq!(e[2], 2, "NVM subsystem");
    assert_eq!(spec::get_str(&e[32..64]), s.port.to_string());
    assert_eq!(spec::get_str(&e[512..768]), "127.0.0.1");
    // A host not allowed does not see it.
    s.t.rpc("nvmf_subsystem_allow_any_host", json!({"nqn": NQN, "allow_any_host": false}));
    let hdr = d.admin.get_log_page(lid::DISCOVERY, 1024 * 4, 0).unwrap();
    let n = u64::from_le_bytes(hdr[8..16].try_into().unwrap()) as usize;
    assert!((0..n).all(|i| spec::get_str(&hdr[1024 * (i + 1) + 256..1024 * (i + 1) + 512]) != NQN));
    s.t.stop();
}

#[test]
fn keep_alive_expiry_frees_the_controller() {
    let s = setup_on(two_reactors(), json!({}), true);
    let mut o = s.opts();
    o.kato_ms = 500;
    let mut c = Controller::connect(&o).unwrap();
    let mut q = c.io_queue(1, 8).unwrap();
    // Keep-alives hold it up.
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(200));
        c.admin.keep_alive().unwrap();
    }
    assert_eq!(s.t.rpc("nvmf_subsystem_get_controllers", json!({"nqn": NQN})).as_array().unwrap().len(), 1);
    // Silence: the controller goes away within KATO plus a tick or two.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = s.t.rpc("nvmf_subsystem_get_controllers", json!({"nqn": NQN})).as_array().unwrap().len();
        if n == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "controller still there after keep-alive timeout");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Both queues are closed by the target.
    std::thread::sleep(Duration::from_millis(300));
    assert!(c.admin.keep_alive().is_err());
    assert!(q.sync(rw_sqe(false, 1, 0, 1), None, 512).is_err());
    s.t.stop();
}

/// Raw connection that did ICReq/ICResp.
fn raw_conn(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = Vec::new();
    IcReq { pfv: 0, hpda: 0, digests: Digests { header: true, data: false }, maxr2t: 0 }.encode(&mut b);
    s.write_all(&b).unwrap();
    let mut r = [0u8; 128];
    s.read_exact(&mut r).unwrap();
    assert_eq!(r[0], ty::ICRESP);
    s
}

/// Expect a C2HTermReq with `fes`, then the close.
fn expect_term(mut s: TcpStream, fes: u16) {
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    assert!(all.len() >= 24, "no termination request (got {} bytes)", all.len());
    // The termination request is the last PDU sent.
    let mut off = 0;
    let mut last = None;
    while off + 8 <= all.len() {
        let ch = pdu::CommonHeader::parse(&all[off..]).unwrap();
        last = Some((ch, off));
        off += ch.plen as usize;
    }
    let (ch, o) = last.unwrap();
    assert_eq!(ch.pdu_type, ty::C2H_TERM_REQ);
    let t = pdu::TermReq::decode(&all[o..]).unwrap();
    assert_eq!(t.fes, fes);
}

#[test]
fn malformed_pdus_close_only_that_connection() {
    let s = setup(json!({"in_capsule_data_size": 4096}), true);
    // A second host runs I/O the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let ios = Arc::new(AtomicU64::new(0));
    let o = s.opts();
    let (stop2, ios2) = (stop.clone(), ios.clone());
    let bg = std::thread::spawn(move || {
        let c = Controller::connect(&o).unwrap();
        let mut q = c.io_queue(1, 16).unwrap();
        let data = pattern(4096, 9);
        while !stop2.load(Ordering::Relaxed) {
            let (cqe, _) = q.sync(rw_sqe(true, 1, 64, 8), Some(&data), 0).unwrap();
            assert!(cqe.status.is_ok());
            let (cqe, d) = q.sync(rw_sqe(false, 1, 64, 8), None, 4096).unwrap();
            assert!(cqe.status.is_ok());
            assert_eq!(d, data);
            ios2.fetch_add(2, Ordering::Relaxed);
        }
    });
    let hd = Digests { header: true, data: false };
    // 1. Unknown PDU type.
    let mut c = raw_conn(s.addr());
    c.write_all(&[0x42, 0, 24, 0, 24, 0, 0, 0]).unwrap();
    c.write_all(&[0u8; 16]).unwrap();
    expect_term(c, pdu::fes::INVALID_HEADER_FIELD);
    // 2. Wrong header length for a command capsule.
    let mut c = raw_conn(s.addr());
    c.write_all(&[ty::CAPSULE_CMD, 1, 40, 0, 44, 0, 0, 0]).unwrap();
    c.write_all(&[0u8; 36]).unwrap();
    expect_term(c, pdu::fes::INVALID_HEADER_FIELD);
    // 3. Header digest mismatch.
    let mut c = raw_conn(s.addr());
    let mut b = Vec::new();
    pdu::encode_capsule_cmd(&mut b, hd, 0, &[0u8; 64], &[]);
    let n = b.len();
    b[n - 1] ^= 0xff;
    c.write_all(&b).unwrap();
    expect_term(c, pdu::fes::HEADER_DIGEST_ERROR);
    // 4. H2CData at an offset the R2T did not ask for.
    let mut c = raw_conn(s.addr());
    let connect = palisade::nvmf::fabrics::build_connect_sqe(1, 0, 31, 0, false);
    let cd = palisade::nvmf::fabrics::ConnectData { hostid: [3; 16], cntlid: 0xffff, subnqn: NQN.into(), hostnqn: "nqn.2014-08.org.nvmexpress:uuid:raw".into() }.encode();
    let mut b = Vec::new();
    pdu::encode_capsule_cmd(&mut b, hd, 0, &connect.0, &cd);
    // A Set Features (host to controller data through R2T) on the admin queue.
    let mut sf = Sqe::default();
    sf.set_opcode(spec::admin::SET_FEATURES).set_cid(2).set_cdw(10, fid::HOST_IDENTIFIER as u32);
    sf.set_sgl(spec::Sgl { address: 0, length: 16, id: spec::sgl::TRANSPORT_DATA_BLOCK });
    pdu::encode_capsule_cmd(&mut b, hd, 0, &sf.0, &[]);
    c.write_all(&b).unwrap();
    // Read the Connect response and the R2T.
    let mut got = vec![0u8; 0];
    let deadline = Instant::now() + Duration::from_secs(5);
    let r2t = loop {
        let mut tmp = [0u8; 512];
        let k = c.read(&mut tmp).unwrap();
        assert!(k > 0, "closed early");
        got.extend_from_slice(&tmp[..k]);
        let mut off = 0;
        let mut found = None;
        while off + 8 <= got.len() {
            let ch = pdu::CommonHeader::parse(&got[off..]).unwrap();
            if off + ch.plen as usize > got.len() {
                break;
            }
            if ch.pdu_type == ty::R2T {
                found = Some(pdu::DataHeader::decode(&got[off..]).unwrap());
            }
            off += ch.plen as usize;
        }
        if let Some(f) = found {
            break f;
        }
        assert!(Instant::now() < deadline);
    };
    assert_eq!((r2t.cccid, r2t.offset, r2t.length), (2, 0, 16));
    let mut b = Vec::new();
    let dh = pdu::DataHeader { cccid: 2, ttag: r2t.ttag, offset: 8, length: 16 };
    pdu::encode_data_header(&mut b, ty::H2C_DATA, hd, 0, dh, pdu::flags::LAST_PDU);
    b.extend_from_slice(&[0u8; 16]);
    c.write_all(&b).unwrap();
    expect_term(c, pdu::fes::DATA_OUT_OF_RANGE);
    // 5. A command before ICReq.
    let mut c = TcpStream::connect(s.addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = Vec::new();
    pdu::encode_capsule_cmd(&mut b, Digests::default(), 0, &[0u8; 64], &[]);
    c.write_all(&b).unwrap();
    expect_term(c, pdu::fes::PDU_SEQUENCE_ERROR);

    // The other host kept going throughout, and keeps going.
    let before = ios.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(300));
    assert!(ios.load(Ordering::Relaxed) > before, "the well-behaved host stalled");
    stop.store(true, Ordering::Relaxed);
    bg.join().expect("the well-behaved host saw an error");
    // And new hosts still connect.
    Controller::connect(&s.opts()).unwrap().shutdown().unwrap();
    s.t.stop();
}

#[test]
fn namespace_hot_add_raises_an_aen() {
    let s = setup_on(two_reactors(), json!({}), true);
    s.t.rpc("bdev_malloc_create", json!({"name": "Malloc1", "num_blocks": 2048, "block_size": 4096}));
    let mut c = Controller::connect(&s.opts()).unwrap();
    c.admin.set_features(fid::ASYNC_EVENT_CONFIG, spec::AEC_NS_ATTR).unwrap();
    c.admin.submit_aer().unwrap();
    c.admin.submit_aer().unwrap();
    // Nothing yet.
    assert!(c.admin.wait_event(Duration::from_millis(200)).unwrap().is_none());
    let nsid = s.t.rpc("nvmf_subsystem_add_ns", json!({"nqn": NQN, "namespace": {"bdev_name": "Malloc1", "nsid": 5}}));
    assert_eq!(nsid, 5);
    let ev = c.admin.wait_event(Duration::from_secs(5)).unwrap().expect("an asynchronous event");
    assert_eq!(ev.dw0 & 7, spec::AER_TYPE_NOTICE);
    assert_eq!((ev.dw0 >> 8) & 0xff, spec::AER_INFO_NS_ATTR_CHANGED);
    assert_eq!((ev.dw0 >> 16) & 0xff, lid::CHANGED_NS_LIST as u32);
    let log = c.admin.get_log_page(lid::CHANGED_NS_LIST, 4096, 0).unwrap();
    assert_eq!(u32::from_le_bytes(log[0..4].try_into().unwrap()), 5);
    assert_eq!(c.namespaces().unwrap(), vec![1, 5]);
    let ns = c.namespace(5).unwrap();
    assert_eq!((ns.nsze, ns.block_size), (2048, 4096));
    // Removal raises the next one (re-armed by reading the log).
    s.t.rpc("nvmf_subsystem_remove_ns", json!({"nqn": NQN, "nsid": 5}));
    let t0 = Instant::now();
    let ev = c.admin.wait_event(Duration::from_secs(5)).unwrap().expect("an event for the removal");
    eprintln!("removal event after {:?}", t0.elapsed());
    assert_eq!((ev.dw0 >> 16) & 0xff, lid::CHANGED_NS_LIST as u32);
    assert_eq!(c.namespaces().unwrap(), vec![1]);
    // Abort of a parked AER completes it with Abort Requested.
    let cid = c.admin.submit_aer().unwrap();
    let mut ab = Sqe::default();
    ab.set_opcode(spec::admin::ABORT).set_cdw(10, (cid as u32) << 16);
    let (cqe, _) = c.admin.cmd(ab, None, 0).unwrap();
    assert_eq!(cqe.dw0 & 1, 0, "aborted");
    let ev = c.admin.wait_event(Duration::from_secs(5)).unwrap().expect("aborted AER completes");
    assert_eq!(ev.status, Status::generic(sc::ABORT_REQUESTED));
    let _ = CtrlrIdentity::parse(&c.id.raw).unwrap();
    s.t.stop();
}
