//! NVMe reservations over real NVMe/TCP sockets against the built binary: every Register /
//! Acquire / Release action and the Reservation Report (with and without the extended data
//! structure), Reservation Conflict on I/O, the Reservation Notification log page and its AEN
//! (masked by Feature 82h), Feature 83h, Identify RESCAP / ONCS, the Linux pNFS NVMe sequence
//! byte for byte with a restart, conflict spot checks across iSCSI and NVMe, and PREEMPT AND
//! ABORT fencing under QD32 load across protocols (both directions).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, Target};
use palisade::iscsi::initiator::{Completion as ScsiCompletion, LoginOptions, Session};
use palisade::nvme::spec::{self, cns, Sqe, Status};
use palisade::nvmf::host::{rw_sqe, Controller, HostOpts, Queue};
use serde_json::json;

const NQN: &str = "nqn.2016-06.io.spdk:cnode1";
const IQN: &str = "iqn.2016-06.io.spdk:disk1";
const UUID: &str = "5a1e5ade-0000-4000-8000-0000000000bb";
const BLOCKS: u64 = 8192;

const REGISTER: u8 = 0x0d;
const REPORT: u8 = 0x0e;
const ACQUIRE: u8 = 0x11;
const RELEASE: u8 = 0x15;
const CONFLICT: Status = Status { sct: 0, sc: 0x83, dnr: true };

struct Rig {
    t: Target,
    nvme_port: u16,
    iscsi_port: Option<u16>,
}

/// A target with Malloc0 (4 MiB, 512-byte blocks, fixed UUID) as nsid 1 of NQN and, with
/// `iscsi`, as LUN 0 of IQN too (one volume, one reservation state).
fn start(iscsi: bool, extra: &[&str]) -> Rig {
    let mut args = vec!["-m", "0x3"];
    args.extend_from_slice(extra);
    let t = Target::start(&args);
    let nvme_port = free_port();
    t.rpc("bdev_malloc_create", json!({"name": "Malloc0", "num_blocks": BLOCKS, "block_size": 512, "uuid": UUID}));
    export(&t, nvme_port);
    let iscsi_port = iscsi.then(|| {
        let p = free_port();
        t.rpc("iscsi_create_portal_group", json!({"tag": 1, "portals": [{"host": "127.0.0.1", "port": p.to_string()}]}));
        t.rpc("iscsi_create_initiator_group", json!({"tag": 1, "initiators": ["ANY"], "netmasks": ["127.0.0.1/32"]}));
        t.rpc(
            "iscsi_create_target_node",
            json!({"name": "disk1", "alias_name": "", "luns": [{"bdev_name": "Malloc0", "lun_id": 0}],
                   "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 1}], "queue_depth": 64}),
        );
        p
    });
    Rig { t, nvme_port, iscsi_port }
}

fn export(t: &Target, port: u16) {
    t.rpc("nvmf_create_transport", json!({"trtype": "TCP"}));
    t.rpc("nvmf_create_subsystem", json!({"nqn": NQN, "serial_number": "SN-RESV", "model_number": "Palisade", "allow_any_host": true}));
    t.rpc("nvmf_subsystem_add_ns", json!({"nqn": NQN, "namespace": {"bdev_name": "Malloc0", "nsid": 1}}));
    t.rpc(
        "nvmf_subsystem_add_listener",
        json!({"nqn": NQN, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}}),
    );
}

/// An NVMe host: controller (admin queue) plus one I/O queue.
struct Host {
    c: Controller,
    q: Queue,
    hostid: [u8; 16],
}

fn host_opts(port: u16, tag: u8) -> HostOpts {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut o = HostOpts::new(addr, NQN);
    o.hostnqn = format!("nqn.2014-08.org.nvmexpress:uuid:5a000000-0000-4000-8000-0000000000{tag:02x}");
    o.hostid = [0x5a, 0, 0, 0, 0, 0, 0x40, 0, 0x80, 0, 0, 0, 0, 0, 0, tag];
    o
}

impl Host {
    fn connect(port: u16, tag: u8) -> Host {
        Host::connect_with(host_opts(port, tag), 64)
    }
    fn connect_with(o: HostOpts, entries: u16) -> Host {
        let hostid = o.hostid;
        let mut c = Controller::connect(&o).expect("connect");
        c.set_num_queues(1).unwrap();
        let q = c.io_queue(1, entries).expect("io queue");
        Host { c, q, hostid }
    }
    fn cmd(&mut self, opc: u8, cdw10: u32, cdw11: u32, data: Option<&[u8]>, in_len: usize) -> (Status, Vec<u8>) {
        let mut s = Sqe::default();
        s.set_opcode(opc).set_nsid(1).set_cdw(10, cdw10).set_cdw(11, cdw11);
        let (cqe, d) = self.q.sync(s, data, in_len).expect("command transport");
        (cqe.status, d)
    }
    /// Reservation Register: RREGA, IEKEY, CPTPL; CRKEY, NRKEY.
    fn register(&mut self, rrega: u32, iekey: bool, cptpl: u32, crkey: u64, nrkey: u64) -> Status {
        self.cmd(REGISTER, rrega | (iekey as u32) << 3 | cptpl << 30, 0, Some(&keys(crkey, nrkey)), 0).0
    }
    fn acquire(&mut self, racqa: u32, rtype: u32, crkey: u64, prkey: u64) -> Status {
        self.cmd(ACQUIRE, racqa | rtype << 8, 0, Some(&keys(crkey, prkey)), 0).0
    }
    fn release(&mut self, rrela: u32, rtype: u32, crkey: u64) -> Status {
        self.cmd(RELEASE, rrela | rtype << 8, 0, Some(&crkey.to_le_bytes()), 0).0
    }
    fn report(&mut self, eds: bool) -> (Status, Vec<u8>) {
        let len = 4096usize;
        self.cmd(REPORT, (len / 4 - 1) as u32, eds as u32, None, len)
    }
    fn write(&mut self, lba: u64) -> Status {
        let (cqe, _) = self.q.sync(rw_sqe(true, 1, lba, 1), Some(&[0xa5u8; 512]), 0).unwrap();
        cqe.status
    }
    fn read(&mut self, lba: u64) -> Status {
        let (cqe, _) = self.q.sync(rw_sqe(false, 1, lba, 1), None, 512).unwrap();
        cqe.status
    }
    fn read_blocks(&mut self, lba: u64, n: u32) -> Vec<u8> {
        let (cqe, d) = self.q.sync(rw_sqe(false, 1, lba, n), None, n as usize * 512).unwrap();
        assert!(cqe.status.is_ok(), "read {lba}+{n}: {}", cqe.status);
        d
    }
}

fn keys(a: u64, b: u64) -> Vec<u8> {
    let mut d = a.to_le_bytes().to_vec();
    d.extend_from_slice(&b.to_le_bytes());
    d
}

fn ok(st: Status, what: &str) {
    assert!(st.is_ok(), "{what}: {st}");
}

/// Parsed extended Reservation Report: generation, rtype, PTPLS, (cntlid, rcsts, key, hostid).
struct Report {
    gen: u32,
    rtype: u8,
    ptpls: u8,
    regs: Vec<(u16, u8, u64, [u8; 16])>,
}

fn parse_eds(d: &[u8]) -> Report {
    let n = u16::from_le_bytes([d[5], d[6]]) as usize;
    let regs = (0..n)
        .map(|i| {
            let e = &d[64 + i * 64..128 + i * 64];
            (u16::from_le_bytes([e[0], e[1]]), e[2], u64::from_le_bytes(e[8..16].try_into().unwrap()), e[16..32].try_into().unwrap())
        })
        .collect();
    Report { gen: u32::from_le_bytes(d[0..4].try_into().unwrap()), rtype: d[4], ptpls: d[9], regs }
}

fn report(h: &mut Host) -> Report {
    let (st, d) = h.report(true);
    ok(st, "report");
    parse_eds(&d)
}

#[test]
fn identify_advertises_reservations() {
    let r = start(false, &[]);
    let mut h = Host::connect(r.nvme_port, 1);
    let id = h.c.admin.identify(cns::CONTROLLER, 0).unwrap();
    assert_ne!(u16::from_le_bytes([id[520], id[521]]) & (1 << 5), 0, "ONCS: reservations");
    assert_eq!(id[96] & 1, 1, "CTRATT: 128-bit host identifier");
    let ns = h.c.admin.identify(cns::NAMESPACE, 1).unwrap();
    assert_eq!(ns[31], 0xff, "RESCAP: all types, IEKEY, PTPL");
    assert_eq!(ns[30] & 1, 1, "NMIC: shared");
    // The host identifier feature reports the Connect HOSTID (our reservation identity), and
    // cannot be changed on a fabrics controller.
    let (_, hid) = h.c.admin.get_features(spec::fid::HOST_IDENTIFIER, 1, 16).unwrap();
    assert_eq!(hid, h.hostid);
    let mut s = Sqe::default();
    s.set_opcode(spec::admin::SET_FEATURES).set_cdw(10, spec::fid::HOST_IDENTIFIER as u32);
    let (cqe, _) = h.c.admin.sync(s, Some(&[1u8; 16]), 0).unwrap();
    assert_eq!(cqe.status, Status::generic(spec::sc::COMMAND_SEQUENCE_ERROR));
    // Commands Supported and Effects lists the four reservation opcodes.
    let log = h.c.admin.get_log_page(spec::lid::COMMANDS_EFFECTS, 4096, 0).unwrap();
    for op in [REGISTER, REPORT, ACQUIRE, RELEASE] {
        assert_eq!(log[1024 + op as usize * 4] & 1, 1, "CSUPP of {op:#x}");
    }
}

#[test]
fn every_action_and_report_over_the_wire() {
    let r = start(false, &[]);
    let mut a = Host::connect(r.nvme_port, 1);
    let mut b = Host::connect(r.nvme_port, 2);
    let mut c = Host::connect(r.nvme_port, 3);
    let (ka, kb) = (0xaaaa_0000_0000_0001u64, 0xbbbb_0000_0000_0002u64);

    // Empty report; without the extended structure a 128-bit host id cannot be reported.
    let rep = report(&mut a);
    assert_eq!((rep.gen, rep.rtype, rep.regs.len()), (0, 0, 0));
    assert_eq!(a.report(false).0, Status { sct: 0, sc: 0x18, dnr: true }, "Host Identifier Inconsistent Format");

    // Register (RREGA 000b) both hosts; a second host id on another controller of the same
    // host is the same registrant.
    ok(a.register(0, false, 0, 0, ka), "register a");
    ok(b.register(0, false, 0, 0, kb), "register b");
    let mut a2 = Host::connect_with(host_opts(r.nvme_port, 1), 8);
    assert_eq!(a2.register(0, false, 0, 0, 0x1234), CONFLICT, "same host, other key: conflict");
    ok(a2.register(0, false, 0, 0, ka), "re-register the same key");
    let rep = report(&mut a);
    assert_eq!(rep.regs.len(), 2);
    assert_eq!(rep.gen, 2);
    let ra = rep.regs.iter().find(|g| g.2 == ka).expect("a's key");
    assert_eq!((ra.0, ra.1, ra.3), (0xffff, 0, a.hostid));
    assert!(rep.regs.iter().any(|g| g.2 == kb && g.3 == b.hostid));

    // Replace with a wrong current key conflicts; with IEKEY it is ignored.
    assert_eq!(b.register(2, false, 0, 0x9999, kb + 1), CONFLICT);
    ok(b.register(2, true, 0, 0x9999, kb + 1), "replace, IEKEY");
    let kb = kb + 1;
    // Invalid RREGA, invalid CPTPL (01b).
    assert_eq!(b.register(5, false, 0, kb, kb), Status::generic(spec::sc::INVALID_FIELD));
    assert_eq!(b.register(0, false, 1, 0, kb), Status::generic(spec::sc::INVALID_FIELD));

    // Acquire Write Exclusive (RTYPE 1) by a.
    ok(a.acquire(0, 1, ka, 0), "acquire WE");
    assert_eq!(b.acquire(0, 1, kb, 0), CONFLICT, "b cannot acquire");
    assert_eq!(a.acquire(0, 7, ka, 0), Status::generic(spec::sc::INVALID_FIELD), "RTYPE 7");
    let rep = report(&mut b);
    assert_eq!(rep.rtype, 1);
    assert_eq!(rep.regs.iter().find(|g| g.2 == ka).unwrap().1, 1, "a holds it (RCSTS)");
    assert_eq!(rep.regs.iter().find(|g| g.2 == kb).unwrap().1, 0);
    // WE: only the holder writes; everyone reads.
    ok(a.write(1), "holder write");
    ok(a2.write(2), "holder's other controller writes");
    assert_eq!(b.write(1), CONFLICT, "registrant write under WE");
    ok(b.read(1), "registrant read under WE");
    assert_eq!(c.write(1), CONFLICT);
    ok(c.read(1), "unregistered read under WE");

    // Release with the wrong type fails; the right one releases.
    assert_eq!(a.release(0, 3, ka), Status::generic(spec::sc::INVALID_FIELD));
    assert_eq!(b.release(0, 1, kb + 7), CONFLICT, "release with a key not registered");
    ok(a.release(0, 1, ka), "release");
    assert_eq!(report(&mut a).rtype, 0);

    // WE - Registrants Only (3): registrants write, others only read.
    ok(a.acquire(0, 3, ka, 0), "acquire WE-RO");
    ok(b.write(3), "registrant under WE-RO");
    assert_eq!(c.write(3), CONFLICT);
    ok(c.read(3), "unregistered read under WE-RO");
    // EA - Registrants Only (4) after a release: unregistered hosts cannot even read.
    ok(a.release(0, 3, ka), "release WE-RO");
    ok(a.acquire(0, 4, ka, 0), "acquire EA-RO");
    assert_eq!(c.read(3), CONFLICT);
    assert_eq!(c.write(3), CONFLICT);
    ok(b.read(3), "registrant read under EA-RO");
    // Flush is allowed under every reservation.
    let mut f = Sqe::default();
    f.set_opcode(spec::io::FLUSH).set_nsid(1);
    assert!(c.q.sync(f, None, 0).unwrap().0.status.is_ok(), "flush");

    // Preempt (RACQA 001b): b takes the reservation and removes a's registration.
    ok(b.acquire(1, 4, kb, ka), "preempt");
    let rep = report(&mut c);
    assert_eq!(rep.rtype, 4);
    assert_eq!(rep.regs.len(), 1);
    assert_eq!((rep.regs[0].1, rep.regs[0].2), (1, kb));
    assert_eq!(a.write(4), CONFLICT, "preempted host");
    assert_eq!(a.acquire(1, 4, ka, kb), CONFLICT, "a is no longer registered");
    // Preempt and abort (RACQA 010b) of c after it registers.
    ok(c.register(0, false, 0, 0, 0xc), "register c");
    ok(c.write(5), "c registrant");
    ok(b.acquire(2, 4, kb, 0xc), "preempt and abort");
    assert_eq!(c.write(5), CONFLICT);
    assert_eq!(b.acquire(2, 4, kb, 0xc), CONFLICT, "repeated preempt of a removed key");

    // Unregister (RREGA 001b) and Clear (RRELA 001b).
    ok(a.register(0, false, 0, 0, ka), "a again");
    ok(a.register(1, false, 0, ka, 0), "unregister a");
    assert_eq!(report(&mut a).regs.len(), 1);
    ok(a.register(0, false, 0, 0, ka), "a again");
    assert_eq!(a.release(1, 0, 0x77), CONFLICT, "clear with a wrong key");
    ok(a.release(1, 0, ka), "clear");
    let rep = report(&mut a);
    assert_eq!((rep.rtype, rep.regs.len()), (0, 0));
    ok(c.write(6), "no reservation any more");

    // The report honours NUMD: a short buffer gets the header only.
    ok(b.register(0, false, 0, 0, kb), "b again");
    let (st, d) = b.cmd(REPORT, 64 / 4 - 1, 1, None, 64);
    ok(st, "short report");
    assert_eq!(d.len(), 64);
    assert_eq!(u16::from_le_bytes([d[5], d[6]]), 1, "REGCTL counts every registrant");
}

#[test]
fn notification_log_aen_mask_and_persistence_feature() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(false, &["--state-dir", dir.path().to_str().unwrap()]);
    let mut a = Host::connect(r.nvme_port, 1);
    let mut b = Host::connect(r.nvme_port, 2);
    let (ka, kb) = (0xa1u64, 0xb2u64);

    // Feature 82h starts unmasked; 83h off.
    assert_eq!(b.c.admin.get_features(0x82, 0, 0).unwrap().0.dw0, 0);
    assert_eq!(b.c.admin.get_features(0x83, 0, 0).unwrap().0.dw0, 0);
    // Empty log page.
    let log = b.c.admin.get_log_page(0x80, 64, 0).unwrap();
    assert_eq!(log, vec![0u8; 64]);

    b.c.admin.submit_aer().unwrap();
    ok(a.register(0, false, 0, 0, ka), "a");
    ok(b.register(0, false, 0, 0, kb), "b");
    ok(a.acquire(0, 3, ka, 0), "a holds WE-RO");
    assert!(b.c.admin.wait_event(Duration::from_millis(400)).unwrap().is_none(), "nothing for b yet");
    ok(a.acquire(1, 3, ka, kb), "a preempts b");
    let ev = b.c.admin.wait_event(Duration::from_secs(3)).unwrap().expect("AEN for b");
    assert_eq!(ev.dw0, 0x6 | 0x80 << 16, "type I/O command specific, info 0, log 80h");
    let log = b.c.admin.get_log_page(0x80, 64, 0).unwrap();
    assert_eq!(u64::from_le_bytes(log[0..8].try_into().unwrap()), 1, "log page count");
    assert_eq!(log[8], 1, "Registration Preempted");
    assert_eq!(log[9], 0, "no more pages");
    assert_eq!(u32::from_le_bytes(log[12..16].try_into().unwrap()), 1, "nsid");
    assert_eq!(b.c.admin.get_log_page(0x80, 64, 0).unwrap(), vec![0u8; 64], "delivered once");
    // a got nothing.
    assert_eq!(a.c.admin.get_log_page(0x80, 64, 0).unwrap()[8], 0);

    // Masked (bit 1 = Registration Preempted): no AEN, no log entry.
    b.c.admin.set_features(0x82, 1 << 1).unwrap();
    assert_eq!(b.c.admin.get_features(0x82, 0, 0).unwrap().0.dw0, 1 << 1);
    b.c.admin.submit_aer().unwrap();
    ok(b.register(0, false, 0, 0, kb), "b again");
    ok(a.acquire(1, 3, ka, kb), "a preempts b again");
    assert!(b.c.admin.wait_event(Duration::from_millis(500)).unwrap().is_none(), "masked event raised an AEN");
    assert_eq!(b.c.admin.get_log_page(0x80, 64, 0).unwrap()[8], 0, "masked event logged");
    // Unmasked again, a release notification (WE-RO released: registrants are told).
    b.c.admin.set_features(0x82, 0).unwrap();
    ok(b.register(0, false, 0, 0, kb), "b once more");
    ok(a.release(0, 3, ka), "release");
    let ev = b.c.admin.wait_event(Duration::from_secs(3)).unwrap().expect("AEN for the release");
    assert_eq!(ev.dw0 >> 16 & 0xff, 0x80);
    assert_eq!(b.c.admin.get_log_page(0x80, 64, 0).unwrap()[8], 2, "Reservation Released");

    // Feature 83h: CPTPL=11b turns persistence on, Set Features 83h turns it off, Report PTPLS.
    ok(a.register(2, false, 3, ka, ka), "replace, CPTPL=11b");
    assert_eq!(a.c.admin.get_features(0x83, 0, 0).unwrap().0.dw0, 1);
    assert_eq!(report(&mut a).ptpls, 1);
    assert!(std::fs::read_dir(dir.path()).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".pr.json")));
    let mut s = Sqe::default();
    s.set_opcode(spec::admin::SET_FEATURES).set_nsid(1).set_cdw(10, 0x83).set_cdw(11, 0);
    assert!(a.c.admin.sync(s, None, 0).unwrap().0.status.is_ok());
    assert_eq!(a.c.admin.get_features(0x83, 0, 0).unwrap().0.dw0, 0);
    assert_eq!(report(&mut a).ptpls, 0);
    assert!(!std::fs::read_dir(dir.path()).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".pr.json")), "state file removed");
    s.set_cdw(11, 1);
    assert!(a.c.admin.sync(s, None, 0).unwrap().0.status.is_ok());
    assert_eq!(report(&mut a).ptpls, 1);
    // Saving is not supported; an unknown namespace is refused.
    s.set_cdw(10, 0x83 | 1 << 31);
    assert_eq!(a.c.admin.sync(s, None, 0).unwrap().0.status, Status::specific(spec::sc::FEATURE_NOT_SAVEABLE));
    s.set_cdw(10, 0x83).set_nsid(9);
    assert_eq!(a.c.admin.sync(s, None, 0).unwrap().0.status, Status::generic(spec::sc::INVALID_NAMESPACE));
}

const MDS: u8 = 0x10;
const CLIENT: u8 = 0x20;
const MDS_KEY: u64 = 0x0100_0000_0000_0000;
const CLIENT_KEY: u64 = 0x0200_0000_0000_0007;

/// Linux `nvme_pr_register(old, new, flags=PR_FL_IGNORE_KEY)` as knfsd and the pNFS client
/// issue it: RREGA 000b (REPLACE 010b when unregistering: old → 0), IEKEY=1, CPTPL=11b.
fn linux_register(h: &mut Host, old: u64, new: u64) -> Status {
    let rrega = if old != 0 && new == 0 { 2 } else { 0 };
    let cdw10 = rrega | 1 << 3 | 3 << 30;
    assert!(cdw10 == 0xc000_0008 || cdw10 == 0xc000_000a);
    h.cmd(REGISTER, cdw10, 0, Some(&keys(old, new)), 0).0
}

#[test]
fn linux_pnfs_sequence_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_str().unwrap().to_string();
    let r = start(false, &["--state-dir", &state]);
    let mut mds = Host::connect(r.nvme_port, MDS);
    let mut client = Host::connect(r.nvme_port, CLIENT);

    // 1. MDS registers 0x0100000000000000 (RREGA 000b, IEKEY=1, CPTPL=11b).
    ok(linux_register(&mut mds, 0, MDS_KEY), "mds register");
    // 2. MDS acquires RTYPE 4 (EA-RO): cdw10 = 0x0400, data CRKEY, PRKEY 0.
    let (st, _) = mds.cmd(ACQUIRE, 0x0000_0400, 0, Some(&keys(MDS_KEY, 0)), 0);
    ok(st, "mds acquire EA-RO");
    assert_eq!(client.write(10), CONFLICT, "unregistered client under EA-RO");
    assert_eq!(client.read(10), CONFLICT, "EA-RO covers reads");
    // 3. Client registers its key the same way; now it may write.
    ok(linux_register(&mut client, 0, CLIENT_KEY), "client register");
    ok(client.write(10), "registered client write");
    // 4. Client unregisters with REPLACE NRKEY=0.
    ok(linux_register(&mut client, CLIENT_KEY, 0), "client unregister (REPLACE to 0)");
    let rep = report(&mut mds);
    assert_eq!(rep.regs.len(), 1, "client's registration gone");
    assert_eq!((rep.regs[0].2, rep.regs[0].1, rep.rtype, rep.ptpls), (MDS_KEY, 1, 4, 1));
    assert_eq!(client.write(10), CONFLICT);
    // 5. Fence: Acquire RACQA 010b RTYPE 4 (cdw10 0x0402), CRKEY = MDS, PRKEY = client.
    ok(linux_register(&mut client, 0, CLIENT_KEY), "client registers again");
    ok(client.write(11), "client writes again");
    let (st, _) = mds.cmd(ACQUIRE, 0x0000_0402, 0, Some(&keys(MDS_KEY, CLIENT_KEY)), 0);
    ok(st, "fence (preempt and abort, RTYPE 4)");
    assert_eq!(client.write(11), CONFLICT, "fenced client");
    ok(mds.write(11), "metadata server still writes");
    // A repeated preempt of the removed key: Reservation Conflict (Linux counts it as fenced).
    let (st, _) = mds.cmd(ACQUIRE, 0x0000_0402, 0, Some(&keys(MDS_KEY, CLIENT_KEY)), 0);
    assert_eq!(st, CONFLICT);
    // Older kernels fence with RTYPE 0.
    ok(linux_register(&mut client, 0, CLIENT_KEY), "client registers once more");
    let (st, _) = mds.cmd(ACQUIRE, 0x0000_0002, 0, Some(&keys(MDS_KEY, CLIENT_KEY)), 0);
    ok(st, "fence with RTYPE 0");
    assert_eq!(client.write(12), CONFLICT);
    ok(mds.write(12), "mds write");
    let before = report(&mut mds);
    drop((mds, client));

    // Restart with the same state directory: the CPTPL state comes back.
    r.t.stop();
    let port = free_port();
    let t = Target::start(&["-m", "0x1", "--state-dir", &state]);
    t.rpc("bdev_malloc_create", json!({"name": "Malloc0", "num_blocks": BLOCKS, "block_size": 512, "uuid": UUID}));
    export(&t, port);
    let mut mds = Host::connect(port, MDS);
    let mut client = Host::connect(port, CLIENT);
    let after = report(&mut mds);
    assert_eq!((after.gen, after.rtype, after.ptpls), (before.gen, 4, 1));
    assert_eq!(after.regs.iter().map(|g| (g.1, g.2, g.3)).collect::<Vec<_>>(), vec![(1, MDS_KEY, mds.hostid)]);
    assert_eq!(client.write(13), CONFLICT, "still fenced after the restart");
    ok(mds.write(13), "holder writes after the restart");
    let got = t.rpc("reservation_get", json!({"bdev_name": "Malloc0"}));
    assert_eq!((got["aptpl"].as_bool(), got["reservation"]["nvme_rtype"].as_u64()), (Some(true), Some(4)), "{got}");
    t.stop();
}

#[test]
fn ptpl_file_param_places_the_state() {
    let t = Target::start(&["-m", "0x1"]);
    let port = free_port();
    let file = t.path("ns1.ptpl.json");
    t.rpc("bdev_malloc_create", json!({"name": "Malloc0", "num_blocks": BLOCKS, "block_size": 512, "uuid": UUID}));
    t.rpc("nvmf_create_transport", json!({"trtype": "TCP"}));
    t.rpc("nvmf_create_subsystem", json!({"nqn": NQN, "allow_any_host": true}));
    t.rpc("nvmf_subsystem_add_ns", json!({"nqn": NQN, "namespace": {"bdev_name": "Malloc0", "nsid": 1, "ptpl_file": file.to_str().unwrap()}}));
    t.rpc(
        "nvmf_subsystem_add_listener",
        json!({"nqn": NQN, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}}),
    );
    let mut h = Host::connect(port, 1);
    ok(linux_register(&mut h, 0, MDS_KEY), "register, CPTPL=11b");
    assert!(file.exists(), "state written to ptpl_file");
    let cfg = t.rpc("save_config", json!(null)).to_string();
    assert!(cfg.contains("ptpl_file"), "save_config keeps ptpl_file");
    // A corrupt file is refused by name and the namespace is not added.
    std::fs::write(t.path("bad.json"), b"{not json").unwrap();
    t.rpc("bdev_malloc_create", json!({"name": "Malloc1", "num_blocks": BLOCKS, "block_size": 512}));
    let e = t
        .try_rpc("nvmf_subsystem_add_ns", Some(json!({"nqn": NQN, "namespace": {"bdev_name": "Malloc1", "nsid": 2, "ptpl_file": t.path("bad.json").to_str().unwrap()}})))
        .unwrap_err();
    assert!(e.1.contains("bad.json"), "{e:?}");
    assert_eq!(h.c.namespaces().unwrap(), vec![1]);
}

// ---------------------------------------------------------------------------------------------
// iSCSI side.

fn iscsi_login(port: u16, name: &str, depth: usize) -> Session {
    let mut s = Session::connect("127.0.0.1", port, &LoginOptions::new(name, Some(IQN)), depth).expect("iSCSI login");
    // A new nexus sees a unit attention first.
    for _ in 0..4 {
        let (c, _) = s.command(0, &[0; 6], &[], 0, Duration::from_secs(10)).unwrap();
        if c.status == 0 {
            break;
        }
    }
    s
}

/// PERSISTENT RESERVE OUT (10-byte CDB, 24-byte parameter list, keys big-endian).
fn pr_out(s: &mut Session, sa: u8, ty: u8, key: u64, sa_key: u64) -> ScsiCompletion {
    let cdb = [0x5f, sa, ty, 0, 0, 0, 0, 0, 24, 0];
    let mut p = [0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    for _ in 0..4 {
        let c = s.command(0, &cdb, &p, 0, Duration::from_secs(15)).unwrap().0;
        // A unit attention (reservation changes by others) is reported once; retry past it.
        if c.status == 2 && c.sense.get(2).map(|k| k & 0xf) == Some(6) {
            continue;
        }
        return c;
    }
    panic!("unit attentions do not stop");
}

fn scsi_rw(s: &mut Session, write: bool, lba: u64) -> u8 {
    let mut cdb = [0u8; 10];
    cdb[0] = if write { 0x2a } else { 0x28 };
    cdb[2..6].copy_from_slice(&(lba as u32).to_be_bytes());
    cdb[8] = 1;
    let data = [0x3cu8; 512];
    for _ in 0..3 {
        let (c, _) = s.command(0, &cdb, if write { &data } else { &[] }, if write { 0 } else { 512 }, Duration::from_secs(10)).unwrap();
        // Unit attentions (reservation changes) are reported once; retry past them.
        if c.status == 2 && c.sense.get(2).map(|k| k & 0xf) == Some(6) {
            continue;
        }
        return c.status;
    }
    panic!("unit attentions do not stop");
}

const GOOD: u8 = 0;
const RESV_CONFLICT: u8 = 0x18;

#[test]
fn conflict_table_across_protocols() {
    let r = start(true, &[]);
    let ip = r.iscsi_port.unwrap();
    let mut holder = iscsi_login(ip, "iqn.2026-11.test:holder", 4);
    let mut other = iscsi_login(ip, "iqn.2026-11.test:other", 4);
    let mut reg = Host::connect(r.nvme_port, 1);
    let mut unreg = Host::connect(r.nvme_port, 2);

    // iSCSI REGISTER + RESERVE WE-RO (type 5).
    assert_eq!(pr_out(&mut holder, 0x00, 0, 0, 0x11).status, GOOD);
    assert_eq!(pr_out(&mut holder, 0x01, 0x05, 0x11, 0).status, GOOD);
    ok(reg.register(0, false, 0, 0, 0x22), "nvme register");
    // The NVMe report shows the iSCSI holder (zero host id) and type 3.
    let rep = report(&mut reg);
    assert_eq!(rep.rtype, 3);
    assert!(rep.regs.iter().any(|g| g.2 == 0x11 && g.1 == 1 && g.3 == [0; 16]));
    assert_eq!(unreg.write(20), CONFLICT, "WE-RO held on iSCSI blocks an unregistered NVMe write");
    ok(unreg.read(20), "... but not its read");
    ok(reg.write(20), "NVMe registrant writes under WE-RO");
    // EA-RO (type 6): unregistered NVMe host can neither read nor write; registrants can.
    assert_eq!(pr_out(&mut holder, 0x02, 0x05, 0x11, 0).status, GOOD, "release");
    assert_eq!(pr_out(&mut holder, 0x01, 0x06, 0x11, 0).status, GOOD, "reserve EA-RO");
    assert_eq!(unreg.write(21), CONFLICT);
    assert_eq!(unreg.read(21), CONFLICT);
    ok(reg.read(21), "registrant read under EA-RO");
    ok(reg.write(21), "registrant write under EA-RO");
    assert_eq!(pr_out(&mut holder, 0x03, 0, 0x11, 0).status, GOOD, "clear");

    // The reverse: NVMe holds WE-RO (RTYPE 3); an unregistered iSCSI nexus reads but cannot write.
    ok(reg.register(0, false, 0, 0, 0x22), "nvme registers again");
    ok(reg.acquire(0, 3, 0x22, 0), "nvme acquires WE-RO");
    assert_eq!(scsi_rw(&mut other, true, 22), RESV_CONFLICT);
    assert_eq!(scsi_rw(&mut other, false, 22), GOOD);
    assert_eq!(pr_out(&mut other, 0x00, 0, 0, 0x33).status, GOOD, "iSCSI registers");
    assert_eq!(scsi_rw(&mut other, true, 22), GOOD, "iSCSI registrant writes");
    // NVMe EA (RTYPE 2): even the iSCSI registrant is refused reads.
    ok(reg.release(0, 3, 0x22), "release");
    ok(reg.acquire(0, 2, 0x22, 0), "acquire EA");
    assert_eq!(scsi_rw(&mut other, false, 22), RESV_CONFLICT);
    assert_eq!(scsi_rw(&mut other, true, 22), RESV_CONFLICT);
    // The iSCSI registrant preempts the NVMe holder across protocols.
    assert_eq!(pr_out(&mut other, 0x04, 0x05, 0x33, 0x22).status, GOOD, "iSCSI PREEMPT of the NVMe key");
    assert_eq!(reg.write(23), CONFLICT, "preempted NVMe host");
    assert_eq!(report(&mut unreg).rtype, 3, "now WE-RO held by the iSCSI nexus");
}

// ---------------------------------------------------------------------------------------------
// Fencing under load.

const FENCE_BLOCKS: u64 = 256;
const MAGIC: &[u8; 8] = b"PALFENCE";

fn pattern(seq: u64, lba: u64, out: &mut [u8]) {
    out[0..8].copy_from_slice(MAGIC);
    out[8..16].copy_from_slice(&seq.to_le_bytes());
    out[16..24].copy_from_slice(&lba.to_le_bytes());
    out[24..].fill(seq as u8);
}

/// Sequence numbers found on the fence region.
fn seqs(img: &[u8]) -> Vec<u64> {
    img.chunks(512).filter(|b| &b[0..8] == MAGIC).map(|b| u64::from_le_bytes(b[8..16].try_into().unwrap())).collect()
}

struct Victim {
    /// Writes the target acknowledged with success: (seq, when the ack was seen).
    acked: Vec<(u64, Instant)>,
    refused: usize,
}

/// Keep QD32 single-block writes in flight on `q` until a write is refused, then drain.
fn nvme_victim(mut q: Queue, issued: Arc<AtomicU64>, stop: Arc<AtomicBool>) -> Victim {
    let qd = 32u16;
    let mut next = 1u64;
    let mut buf = [0u8; 512];
    let mut inflight = vec![0u64; qd as usize];
    let mut busy = 0;
    let mut acked = Vec::new();
    let mut refused = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stopping = false;
    loop {
        if !stopping {
            for cid in 0..qd {
                if inflight[cid as usize] != 0 {
                    continue;
                }
                let lba = next % FENCE_BLOCKS;
                pattern(next, lba, &mut buf);
                issued.store(next, Ordering::SeqCst);
                q.submit(cid, rw_sqe(true, 1, lba, 1), Some(&buf), 0).unwrap();
                inflight[cid as usize] = next;
                busy += 1;
                next += 1;
            }
        }
        if busy == 0 {
            break;
        }
        q.poll(Duration::from_millis(100), &mut |cid, cqe, _| {
            let seq = std::mem::take(&mut inflight[cid as usize]);
            busy -= 1;
            if cqe.status.is_ok() {
                acked.push((seq, Instant::now()));
            } else {
                refused += 1;
            }
        })
        .unwrap();
        if refused > 0 || stop.load(Ordering::SeqCst) || Instant::now() > deadline {
            stopping = true;
        }
    }
    Victim { acked, refused }
}

fn iscsi_victim(mut s: Session, issued: Arc<AtomicU64>, stop: Arc<AtomicBool>) -> Victim {
    let qd = 32u32;
    let mut next = 1u64;
    let mut buf = [0u8; 512];
    let mut inflight = vec![0u64; qd as usize];
    let mut busy = 0;
    let mut acked = Vec::new();
    let mut refused = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stopping = false;
    loop {
        if !stopping {
            for tag in 0..qd {
                if inflight[tag as usize] != 0 {
                    continue;
                }
                let lba = next % FENCE_BLOCKS;
                pattern(next, lba, &mut buf);
                let mut cdb = [0u8; 10];
                cdb[0] = 0x2a;
                cdb[2..6].copy_from_slice(&(lba as u32).to_be_bytes());
                cdb[8] = 1;
                issued.store(next, Ordering::SeqCst);
                s.submit(tag, 0, &cdb, &buf, 0).unwrap();
                inflight[tag as usize] = next;
                busy += 1;
                next += 1;
            }
        }
        if busy == 0 {
            break;
        }
        s.poll(Duration::from_millis(100), &mut |c, _| {
            let seq = std::mem::take(&mut inflight[c.tag as usize]);
            busy -= 1;
            if c.status == 0 {
                acked.push((seq, Instant::now()));
            } else {
                refused += 1;
            }
        })
        .unwrap();
        if refused > 0 || stop.load(Ordering::SeqCst) || Instant::now() > deadline {
            stopping = true;
        }
    }
    Victim { acked, refused }
}

/// What the fence must guarantee, given the victim's record, the sequence number last issued
/// when the preempt's completion arrived, and the volume read right after and at the end.
fn check_fence(v: &Victim, fence_done: Instant, issued_at_fence: u64, right_after: &[u8], at_end: &[u8]) {
    assert!(v.acked.len() > 32, "the victim made progress before the fence ({} acked)", v.acked.len());
    assert!(v.refused > 0, "the victim's writes are refused after the fence");
    assert_eq!(right_after, at_end, "a victim write landed after the preempt completed");
    let found = seqs(at_end);
    assert!(!found.is_empty());
    if let Some(bad) = found.iter().find(|&&s| s > issued_at_fence) {
        panic!("block with sequence {bad} issued after the fence (last issued before it: {issued_at_fence})");
    }
    for (seq, at) in &v.acked {
        assert!(*seq <= issued_at_fence, "write {seq} issued after the fence was acknowledged ({:?} after it)", at.saturating_duration_since(fence_done));
    }
}

#[test]
fn fence_under_load_nvme_victim_iscsi_preemptor() {
    let r = start(true, &[]);
    let ip = r.iscsi_port.unwrap();
    let mut mds = iscsi_login(ip, "iqn.2026-11.test:mds", 4);
    let mut victim = Host::connect(r.nvme_port, 0x31);
    assert_eq!(pr_out(&mut mds, 0x00, 0, 0, 0x0100_0000_0000_0000).status, GOOD);
    assert_eq!(pr_out(&mut mds, 0x01, 0x05, 0x0100_0000_0000_0000, 0).status, GOOD, "WE-RO");
    ok(victim.register(0, false, 0, 0, 0x77), "victim registers");
    let issued = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let q = std::mem::replace(&mut victim.q, victim.c.io_queue(2, 4).unwrap_or_else(|_| panic!("second queue")));
    let (i2, s2) = (issued.clone(), stop.clone());
    let th = std::thread::spawn(move || nvme_victim(q, i2, s2));
    while issued.load(Ordering::SeqCst) < 2000 {
        assert!(!th.is_finished(), "victim ended early");
        std::thread::sleep(Duration::from_millis(5));
    }
    // PREEMPT AND ABORT (SA 05h) type 5 of the victim's key.
    let c = pr_out(&mut mds, 0x05, 0x05, 0x0100_0000_0000_0000, 0x77);
    let fence_done = Instant::now();
    let issued_at_fence = issued.load(Ordering::SeqCst);
    assert_eq!(c.status, GOOD, "preempt and abort");
    let right_after = read_iscsi(&mut mds);
    stop.store(true, Ordering::SeqCst);
    let v = th.join().unwrap();
    let at_end = read_iscsi(&mut mds);
    check_fence(&v, fence_done, issued_at_fence, &right_after, &at_end);
}

fn read_iscsi(s: &mut Session) -> Vec<u8> {
    let mut cdb = [0u8; 10];
    cdb[0] = 0x28;
    cdb[7..9].copy_from_slice(&(FENCE_BLOCKS as u16).to_be_bytes());
    for _ in 0..3 {
        let (c, d) = s.command(0, &cdb, &[], FENCE_BLOCKS as usize * 512, Duration::from_secs(10)).unwrap();
        if c.status == 0 {
            return d;
        }
    }
    panic!("cannot read the fence region over iSCSI");
}

#[test]
fn fence_under_load_iscsi_victim_nvme_preemptor() {
    let r = start(true, &[]);
    let ip = r.iscsi_port.unwrap();
    let mut mds = Host::connect(r.nvme_port, 0x41);
    let mut vs = iscsi_login(ip, "iqn.2026-11.test:victim", 32);
    ok(mds.register(0, true, 0, 0, MDS_KEY), "mds registers");
    ok(mds.acquire(0, 3, MDS_KEY, 0), "mds holds WE-RO");
    assert_eq!(pr_out(&mut vs, 0x00, 0, 0, 0x88).status, GOOD, "victim registers");
    assert_eq!(scsi_rw(&mut vs, true, 0), GOOD);
    let issued = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (i2, s2) = (issued.clone(), stop.clone());
    let th = std::thread::spawn(move || iscsi_victim(vs, i2, s2));
    while issued.load(Ordering::SeqCst) < 2000 {
        assert!(!th.is_finished(), "victim ended early");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Acquire RACQA 010b (preempt and abort) RTYPE 3 of the iSCSI victim's key.
    let st = mds.acquire(2, 3, MDS_KEY, 0x88);
    let fence_done = Instant::now();
    let issued_at_fence = issued.load(Ordering::SeqCst);
    ok(st, "preempt and abort");
    let right_after = mds.read_blocks(0, FENCE_BLOCKS as u32);
    stop.store(true, Ordering::SeqCst);
    let v = th.join().unwrap();
    let at_end = mds.read_blocks(0, FENCE_BLOCKS as u32);
    check_fence(&v, fence_done, issued_at_fence, &right_after, &at_end);
}
