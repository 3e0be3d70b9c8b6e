//! Cluster mode, reservations: `palisade serve` nodes with a real etcd on 127.0.0.1, sharing one
//! `uring` bdev file (the shared device), the volume marked clustered. Conflicts across nodes on
//! both protocols, READ FULL STATUS through every node, the Linux pNFS fence (PREEMPT AND ABORT
//! on node A while the client writes at QD32 through node B), fail-closed when etcd is gone for
//! longer than the lease, and kill -9 of a node.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::{free_port, Target};
use palisade::iscsi::initiator::{Completion, LoginOptions, Session};
use palisade::nvme::spec::{Sqe, Status};
use palisade::nvmf::host::{rw_sqe, Controller, HostOpts, Queue};
use serde_json::{json, Value};

const NQN: &str = "nqn.2016-06.io.spdk:cluster1";
const IQN: &str = "iqn.2016-06.io.spdk:disk1";
const UUID: &str = "5a1e5ade-0000-4000-8000-00000000c105";
const MDS: &str = "iqn.2026-01.org.linux:mds";
const CLIENT: &str = "iqn.2026-01.org.linux:client";
const MDS_KEY: u64 = 0x0100_0000_0000_0000;
const CLIENT_KEY: u64 = 0x42;
const T: Duration = Duration::from_secs(10);

const GOOD: u8 = 0x00;
const CHECK_CONDITION: u8 = 0x02;
const RESERVATION_CONFLICT: u8 = 0x18;
const TASK_ABORTED: u8 = 0x40;

/// One node: a palisade process exporting the shared file as nsid 1 of NQN over NVMe/TCP and as
/// LUN 0 of IQN over iSCSI through portal group `pg_tag` (= its relative target port id).
struct Node {
    t: Target,
    nvme: u16,
    iscsi: u16,
}

fn start_node(etcd: &Etcd, name: &str, data: &std::path::Path, pg_tag: u16) -> Node {
    let t = Target::start(&["-m", "0x1", "--cluster", &etcd.url(), "--node-id", name, "--lease-ttl", "3"]);
    t.rpc("bdev_uring_create", json!({"name": "shared", "filename": data.to_str().unwrap(), "block_size": 512, "uuid": UUID}));
    t.rpc("nvmf_create_transport", json!({"trtype": "TCP"}));
    let nvme = t.export_nvmf(NQN, "SN-CLUSTER", "shared");
    let iscsi = free_port();
    t.rpc("iscsi_create_portal_group", json!({"tag": pg_tag, "portals": [{"host": "127.0.0.1", "port": iscsi.to_string()}]}));
    t.rpc("iscsi_create_initiator_group", json!({"tag": 1, "initiators": ["ANY"], "netmasks": ["127.0.0.1/32"]}));
    t.rpc(
        "iscsi_create_target_node",
        json!({"name": IQN, "alias_name": "", "luns": [{"bdev_name": "shared", "lun_id": 0}],
               "pg_ig_maps": [{"pg_tag": pg_tag, "ig_tag": 1}], "queue_depth": 64}),
    );
    Node { t, nvme, iscsi }
}

fn shared_file(dir: &tempfile::TempDir, blocks: u64) -> std::path::PathBuf {
    let p = dir.path().join("shared.img");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(blocks * 512).unwrap();
    p
}

fn status(n: &Node) -> Value {
    n.t.rpc("cluster_get_status", Value::Null)
}

/// Wait until the node serves the shared volume as clustered.
fn wait_clustered(n: &Node) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = status(n);
        let clustered = s["volumes"].as_array().is_some_and(|v| v.iter().any(|v| v["uuid"] == UUID && v["clustered"] == true));
        if clustered && s["health"]["writable"] == true {
            return;
        }
        assert!(Instant::now() < deadline, "node never served the volume clustered: {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Two nodes (and the etcd) with the volume clustered.
fn two_nodes(blocks: u64) -> (Etcd, tempfile::TempDir, Node, Node) {
    let etcd = Etcd::start().expect("etcd");
    let dir = tempfile::tempdir().unwrap();
    let data = shared_file(&dir, blocks);
    let a = start_node(&etcd, "node-a", &data, 1);
    let b = start_node(&etcd, "node-b", &data, 2);
    a.t.rpc("volume_set_cluster", json!({"bdev_name": "shared"}));
    wait_clustered(&a);
    wait_clustered(&b);
    (etcd, dir, a, b)
}

// ---- iSCSI helpers (as a Linux initiator sends them) ----

fn login(port: u16, name: &str, isid: u8, depth: usize) -> Session {
    let mut o = LoginOptions::new(name, Some(IQN));
    o.isid = [0x80, 0, 0, 0, 0, isid];
    let mut s = Session::connect("127.0.0.1", port, &o, depth).unwrap_or_else(|e| panic!("login {name}: {e}"));
    for _ in 0..8 {
        let (c, _) = s.command(0, &[0u8; 6], &[], 0, T).unwrap();
        if c.status == GOOD {
            return s;
        }
    }
    panic!("unit attentions never cleared");
}

fn sense_of(c: &Completion) -> (u8, u8, u8) {
    let s = &c.sense;
    (s.get(2).map(|k| k & 0x0f).unwrap_or(0), s.get(12).copied().unwrap_or(0), s.get(13).copied().unwrap_or(0))
}

fn prout(s: &mut Session, sa: u8, rtype: u8, key: u64, sa_key: u64, aptpl: bool) -> Completion {
    let cdb = [0x5f, sa, rtype, 0, 0, 0, 0, 0, 24, 0];
    let mut data = [0u8; 24];
    data[0..8].copy_from_slice(&key.to_be_bytes());
    data[8..16].copy_from_slice(&sa_key.to_be_bytes());
    data[20] = if aptpl { 0x01 } else { 0 };
    s.command(0, &cdb, &data, 0, T).unwrap().0
}

fn rw16(op: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn iscsi_write(s: &mut Session, lba: u64, fill: u8) -> Completion {
    s.command(0, &rw16(0x8a, lba, 1), &[fill; 512], 0, T).unwrap().0
}

/// READ FULL STATUS: (key, holder, relative target port id, TransportID name).
fn read_full_status(s: &mut Session) -> Vec<(u64, bool, u16, String)> {
    let (c, d) = s.command(0, &[0x5e, 0x03, 0, 0, 0, 0, 0, 0x10, 0x00, 0], &[], 4096, T).unwrap();
    assert_eq!(c.status, GOOD, "READ FULL STATUS: {c:?}");
    let len = u32::from_be_bytes(d[4..8].try_into().unwrap()) as usize;
    let mut out = Vec::new();
    let mut off = 8;
    while off + 24 <= 8 + len {
        let e = &d[off..];
        let key = u64::from_be_bytes(e[0..8].try_into().unwrap());
        let holder = e[12] & 1 != 0;
        let rel = u16::from_be_bytes([e[18], e[19]]);
        let tid_len = u32::from_be_bytes(e[20..24].try_into().unwrap()) as usize;
        let tid = &e[24..24 + tid_len];
        let name = String::from_utf8_lossy(&tid[4..]).trim_end_matches('\0').to_string();
        out.push((key, holder, rel, name));
        off += 24 + tid_len;
    }
    out
}

const RESERVE: u8 = 0x01;
const PREEMPT_AND_ABORT: u8 = 0x05;
const REGISTER_AND_IGNORE: u8 = 0x06;
const WE: u8 = 0x01;
const EA_RO: u8 = 0x06;

// ---- NVMe helpers ----

struct Host {
    q: Queue,
    _c: Controller,
}

fn nvme_host(port: u16, tag: u8) -> Host {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut o = HostOpts::new(addr, NQN);
    o.hostnqn = format!("nqn.2014-08.org.nvmexpress:uuid:5a000000-0000-4000-8000-0000000000{tag:02x}");
    o.hostid = [0x5a, 0, 0, 0, 0, 0, 0x40, 0, 0x80, 0, 0, 0, 0, 0, 0, tag];
    let mut c = Controller::connect(&o).expect("connect");
    c.set_num_queues(1).unwrap();
    let q = c.io_queue(1, 64).expect("io queue");
    Host { q, _c: c }
}

impl Host {
    fn cmd(&mut self, opc: u8, cdw10: u32, data: &[u8]) -> Status {
        let mut s = Sqe::default();
        s.set_opcode(opc).set_nsid(1).set_cdw(10, cdw10);
        self.q.sync(s, Some(data), 0).expect("command transport").0.status
    }
    fn register(&mut self, nrkey: u64) -> Status {
        let mut d = 0u64.to_le_bytes().to_vec();
        d.extend_from_slice(&nrkey.to_le_bytes());
        self.cmd(REGISTER_NVME, 1 << 3, &d)
    }
    fn acquire(&mut self, rtype: u32, crkey: u64) -> Status {
        let mut d = crkey.to_le_bytes().to_vec();
        d.extend_from_slice(&0u64.to_le_bytes());
        self.cmd(ACQUIRE_NVME, rtype << 8, &d)
    }
    fn write(&mut self, lba: u64) -> Status {
        self.q.sync(rw_sqe(true, 1, lba, 1), Some(&[0xa5u8; 512]), 0).unwrap().0.status
    }
    fn read(&mut self, lba: u64) -> Status {
        self.q.sync(rw_sqe(false, 1, lba, 1), None, 512).unwrap().0.status
    }
}

const REGISTER_NVME: u8 = 0x0d;
const ACQUIRE_NVME: u8 = 0x11;
const NVME_CONFLICT: Status = Status { sct: 0, sc: 0x83, dnr: true };
/// Asymmetric Access Inaccessible (path related).
const NVME_INACCESSIBLE_SCT: u8 = 3;

#[test]
fn reservations_conflict_across_nodes_on_both_protocols() {
    let (_etcd, _dir, a, b) = two_nodes(16384);
    // An NVMe host takes Write Exclusive through node A.
    let mut ha = nvme_host(a.nvme, 1);
    assert!(ha.register(0xa1).is_ok());
    assert!(ha.acquire(1, 0xa1).is_ok(), "acquire WE");
    assert!(ha.write(10).is_ok(), "the holder writes through A");
    // Through node B: another NVMe host and an iSCSI initiator conflict on writes, read fine.
    let mut hb = nvme_host(b.nvme, 2);
    assert_eq!(hb.write(10), NVME_CONFLICT, "NVMe write through B conflicts with A's reservation");
    assert!(hb.read(10).is_ok(), "reads are allowed under Write Exclusive");
    let mut sb = login(b.iscsi, CLIENT, 2, 8);
    assert_eq!(iscsi_write(&mut sb, 11, 1).status, RESERVATION_CONFLICT, "iSCSI write through B conflicts");
    // An iSCSI registration through B; READ FULL STATUS through either node lists both
    // registrants, the iSCSI one with B's relative target port id.
    assert_eq!(prout(&mut sb, REGISTER_AND_IGNORE, 0, 0, CLIENT_KEY, false).status, GOOD);
    let mut sa = login(a.iscsi, MDS, 1, 8);
    for s in [&mut sa, &mut sb] {
        let full = read_full_status(s);
        assert_eq!(full.len(), 2, "{full:?}");
        assert!(full.iter().any(|(k, holder, _, _)| *k == 0xa1 && *holder), "{full:?}");
        assert!(full.iter().any(|(k, holder, rel, name)| *k == CLIENT_KEY && !holder && *rel == 2 && name.starts_with(CLIENT)), "{full:?}");
    }
    // A reservation through B (iSCSI) conflicts with A's holder.
    assert_eq!(prout(&mut sb, RESERVE, WE, CLIENT_KEY, 0, false).status, RESERVATION_CONFLICT);
    // One logical unit through every node: identical NGUID / EUI-64 and VPD 83h designators.
    let ida = ha._c.admin.identify(palisade::nvme::spec::cns::NAMESPACE, 1).unwrap();
    let idb = hb._c.admin.identify(palisade::nvme::spec::cns::NAMESPACE, 1).unwrap();
    assert_eq!(ida[104..128], idb[104..128], "NGUID and EUI-64 differ between nodes");
    assert_ne!(ida[104..120], [0u8; 16]);
    let naa = |s: &mut Session| {
        let (c, d) = s.command(0, &[0x12, 0x01, 0x83, 0x01, 0x00, 0], &[], 256, T).unwrap();
        assert_eq!(c.status, GOOD);
        // The logical unit's designators (association 0), not the target port's.
        let mut out = Vec::new();
        let mut off = 4;
        while off + 4 <= d.len() {
            let len = d[off + 3] as usize;
            if (d[off + 1] >> 4) & 3 == 0 {
                out.extend_from_slice(&d[off..(off + 4 + len).min(d.len())]);
            }
            off += 4 + len;
        }
        out
    };
    let (da, db) = (naa(&mut sa), naa(&mut sb));
    assert!(!da.is_empty());
    assert_eq!(da, db, "logical unit designators differ between nodes");
}

/// The Linux pNFS SCSI sequence across nodes: the metadata server registers (APTPL) and takes
/// Exclusive Access - Registrants Only through node A; the client registers through node B and
/// writes at QD32 through B; the MDS fences it with PREEMPT AND ABORT on A. No write issued
/// after the fence returned may land, and the client hears REGISTRATIONS PREEMPTED once.
#[test]
fn pnfs_fence_on_node_a_stops_writes_through_node_b() {
    const BLOCKS: u64 = 1 << 16;
    let (_etcd, _dir, a, b) = two_nodes(BLOCKS);
    let mut mds = login(a.iscsi, MDS, 1, 8);
    assert_eq!(prout(&mut mds, REGISTER_AND_IGNORE, 0, 0, MDS_KEY, true).status, GOOD);
    assert_eq!(prout(&mut mds, RESERVE, EA_RO, MDS_KEY, 0, false).status, GOOD);
    let mut victim = login(b.iscsi, CLIENT, 2, 32);
    assert_eq!(prout(&mut victim, REGISTER_AND_IGNORE, 0, 0, CLIENT_KEY, true).status, GOOD);

    let issued = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (issued, stop) = (issued.clone(), stop.clone());
        std::thread::spawn(move || {
            let depth = victim.depth();
            let mut free: Vec<u32> = (0..depth as u32).collect();
            let (mut good, mut conflict, mut ua, mut aborted, mut other) = (0u64, 0u64, 0u64, 0u64, 0u64);
            let hard_stop = Instant::now() + Duration::from_secs(15);
            loop {
                let stopping = stop.load(Ordering::Acquire) || Instant::now() > hard_stop;
                if !stopping {
                    while let Some(tag) = free.pop() {
                        let seq = issued.fetch_add(1, Ordering::AcqRel);
                        victim.submit(tag, 0, &rw16(0x8a, seq % BLOCKS, 1), &victim_block(seq), 0).unwrap();
                    }
                } else if free.len() == depth || Instant::now() > hard_stop + Duration::from_secs(5) {
                    break;
                }
                victim
                    .poll(Duration::from_millis(100), &mut |c, _| {
                        match c.status {
                            GOOD => good += 1,
                            RESERVATION_CONFLICT => conflict += 1,
                            CHECK_CONDITION if sense_of(&c) == (0x6, 0x2a, 0x05) => ua += 1,
                            TASK_ABORTED => aborted += 1,
                            _ => other += 1,
                        }
                        free.push(c.tag);
                    })
                    .unwrap();
            }
            (good, conflict, ua, aborted, other)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let ramp = Instant::now() + Duration::from_secs(3);
    while issued.load(Ordering::Acquire) < 10_000 && Instant::now() < ramp {
        std::thread::sleep(Duration::from_millis(10));
    }
    let before = issued.load(Ordering::Acquire);
    let t0 = Instant::now();
    let c = prout(&mut mds, PREEMPT_AND_ABORT, EA_RO, MDS_KEY, CLIENT_KEY, false);
    let fence_done = issued.load(Ordering::Acquire);
    let fence_time = t0.elapsed();
    assert_eq!(c.status, GOOD, "PREEMPT AND ABORT: {c:?}");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Release);
    let (good, conflict, ua, aborted, other) = load.join().unwrap();
    let total = issued.load(Ordering::Acquire);
    eprintln!(
        "victim on B: {good} good, {conflict} conflict, {ua} UA, {aborted} aborted, {other} other; issued {total}, {before} before the fence, {fence_done} when it completed ({fence_time:?})"
    );
    assert!(before > 500, "the victim was not under load before the fence ({before} writes)");
    assert!(total > fence_done + 32, "the victim did not keep writing after the fence");
    assert_eq!(ua, 1, "REGISTRATIONS PREEMPTED is reported exactly once");
    assert!(conflict > 0 && other == 0, "after the fence the victim gets RESERVATION CONFLICT only ({other} other)");
    assert!(good >= before.saturating_sub(32), "writes before the fence succeeded ({good} of {before})");
    // Read back through A: no block carries a sequence number issued after the fence returned.
    let end = total.min(BLOCKS);
    let mut lba = 0;
    let mut landed = 0;
    while lba < end {
        let n = 2048u64.min(end - lba);
        let (c, d) = mds.command(0, &rw16(0x88, lba, n as u32), &[], (n * 512) as usize, T).unwrap();
        assert_eq!(c.status, GOOD);
        for (i, blk) in d.chunks(512).enumerate() {
            if &blk[0..8] != MAGIC {
                continue;
            }
            let seq = u64::from_le_bytes(blk[8..16].try_into().unwrap());
            assert_eq!(seq % BLOCKS, lba + i as u64);
            assert!(seq < fence_done, "write #{seq} landed although issued after the fence completed (#{fence_done})");
            landed += 1;
        }
        lba += n;
    }
    assert!(landed > 0, "the victim's pre-fence writes are on the device");
}

const MAGIC: &[u8; 8] = b"VICTIM!!";

fn victim_block(seq: u64) -> [u8; 512] {
    let mut b = [0x5au8; 512];
    b[0..8].copy_from_slice(MAGIC);
    b[8..16].copy_from_slice(&seq.to_le_bytes());
    b
}

/// etcd stopped for longer than the lease: every node refuses I/O on the clustered volume (NVMe
/// Asymmetric Access Inaccessible, SCSI NOT READY 04/0C) and says why in cluster_get_status;
/// with etcd back, the nodes serve again and the reservation state is intact.
#[test]
fn nodes_fail_closed_without_etcd_and_resume() {
    let (mut etcd, _dir, a, b) = two_nodes(16384);
    let mut ha = nvme_host(a.nvme, 1);
    assert!(ha.register(0xa1).is_ok());
    assert!(ha.acquire(1, 0xa1).is_ok());
    let mut hb = nvme_host(b.nvme, 2);
    let mut sb = login(b.iscsi, CLIENT, 2, 8);
    etcd.stop();
    // Lease TTL 3 s: the nodes stop serving within 2 s; wait past the TTL.
    std::thread::sleep(Duration::from_millis(3500));
    for n in [&a, &b] {
        let s = status(n);
        assert_eq!(s["health"]["writable"], false, "{s}");
        assert!(!s["health"]["reason"].as_str().unwrap_or("").is_empty(), "{s}");
    }
    let st = ha.write(1);
    assert_eq!(st.sct, NVME_INACCESSIBLE_SCT, "holder's write on a node without etcd: {st}");
    assert_eq!(st.sc, 0x02);
    let c = iscsi_write(&mut sb, 1, 7);
    assert_eq!((c.status, sense_of(&c)), (CHECK_CONDITION, (0x2, 0x04, 0x0c)), "{c:?}");
    assert_eq!(hb.read(1).sct, NVME_INACCESSIBLE_SCT, "reads too: the node's view may be stale");
    etcd.start_again();
    wait_clustered(&a);
    wait_clustered(&b);
    assert!(ha.write(1).is_ok(), "the holder writes again after etcd is back");
    assert_eq!(hb.write(1), NVME_CONFLICT, "and the reservation still holds on B");
}

/// kill -9 of a node in the middle of PR traffic: the other node's fences wait at most the lease,
/// the restarted node (same node id) waits for its old lease and then serves the state in etcd.
#[test]
fn a_killed_node_comes_back_with_the_cluster_state() {
    let etcd = Etcd::start().expect("etcd");
    let dir = tempfile::tempdir().unwrap();
    let data = shared_file(&dir, 16384);
    let a = start_node(&etcd, "node-a", &data, 1);
    let mut b = start_node(&etcd, "node-b", &data, 2);
    a.t.rpc("volume_set_cluster", json!({"bdev_name": "shared"}));
    wait_clustered(&a);
    wait_clustered(&b);
    let mut mds = login(a.iscsi, MDS, 1, 8);
    assert_eq!(prout(&mut mds, REGISTER_AND_IGNORE, 0, 0, MDS_KEY, true).status, GOOD);
    assert_eq!(prout(&mut mds, RESERVE, EA_RO, MDS_KEY, 0, false).status, GOOD);
    let mut client = login(b.iscsi, CLIENT, 2, 8);
    assert_eq!(prout(&mut client, REGISTER_AND_IGNORE, 0, 0, CLIENT_KEY, true).status, GOOD);
    b.t.signal_and_wait(libc::SIGKILL, Duration::from_secs(5)).expect("killed");
    // The fence on A completes without B (its lease expires within the TTL).
    let t0 = Instant::now();
    assert_eq!(prout(&mut mds, PREEMPT_AND_ABORT, EA_RO, MDS_KEY, CLIENT_KEY, false).status, GOOD);
    assert!(t0.elapsed() < Duration::from_secs(8), "fence waited {:?} for a dead node", t0.elapsed());
    // B again, same node id: it serves the state etcd holds (the client is no longer registered).
    drop(b);
    let b = start_node(&etcd, "node-b", &data, 2);
    wait_clustered(&b);
    let mut client = login(b.iscsi, CLIENT, 2, 8);
    assert_eq!(iscsi_write(&mut client, 5, 1).status, RESERVATION_CONFLICT, "the fenced client stays fenced on the restarted node");
    let full = read_full_status(&mut client);
    assert_eq!(full.len(), 1, "{full:?}");
    assert_eq!(full[0].0, MDS_KEY);
    let _ = a;
}

/// REPORT TARGET PORT GROUPS: (group id, state, relative target port ids) per descriptor.
fn rtpg(s: &mut Session) -> Vec<(u16, u8, Vec<u16>)> {
    let (c, d) = s.command(0, &[0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0], &[], 4096, T).unwrap();
    assert_eq!(c.status, GOOD, "RTPG: {c:?}");
    let len = u32::from_be_bytes(d[0..4].try_into().unwrap()) as usize;
    let mut out = Vec::new();
    let mut off = 4;
    while off + 8 <= 4 + len {
        let e = &d[off..];
        let n = e[7] as usize;
        let ports = (0..n).map(|i| u16::from_be_bytes([e[8 + 4 * i + 2], e[8 + 4 * i + 3]])).collect();
        out.push((u16::from_be_bytes([e[2], e[3]]), e[0] & 0x0f, ports));
        off += 8 + 4 * n;
    }
    out
}

/// Each node's ports are one target port group: REPORT TARGET PORT GROUPS through either node
/// lists both groups with their relative port ids; a node cut off from etcd reports its own
/// group Unavailable (and the NVMe ANA log page says inaccessible), then Active/Optimized again.
#[test]
fn each_node_is_a_target_port_group() {
    let (mut etcd, _dir, a, b) = two_nodes(16384);
    let ga = status(&a)["tpg_id"].as_u64().unwrap() as u16;
    let gb = status(&b)["tpg_id"].as_u64().unwrap() as u16;
    assert_ne!(ga, gb);
    let mut sa = login(a.iscsi, MDS, 1, 8);
    let mut sb = login(b.iscsi, CLIENT, 2, 8);
    let want = |first: u16| {
        let mut v = vec![(ga, 0u8, vec![1u16]), (gb, 0u8, vec![2u16])];
        v.sort_by_key(|g| g.0 != first);
        v
    };
    // Membership reaches the other node through its watch.
    let deadline = Instant::now() + Duration::from_secs(10);
    while rtpg(&mut sa).len() < 2 || rtpg(&mut sb).len() < 2 {
        assert!(Instant::now() < deadline, "groups never listed: {:?} / {:?}", rtpg(&mut sa), rtpg(&mut sb));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(rtpg(&mut sa), want(ga), "through node A, its own group first");
    assert_eq!(rtpg(&mut sb), want(gb), "through node B");
    let mut hb = nvme_host(b.nvme, 2);
    let ana = |h: &mut Host| {
        let log = h._c.admin.get_log_page(0x0c, 4096, 0).unwrap();
        // The first descriptor (at 16): ANAGRPID, NNSID, change count, then its state at 16.
        assert_eq!(u32::from_le_bytes(log[20..24].try_into().unwrap()), 1, "one namespace in the group");
        log[16 + 16] & 0x0f
    };
    assert_eq!(ana(&mut hb), 0x01, "ANA optimized");
    etcd.stop();
    std::thread::sleep(Duration::from_millis(3500));
    let own = rtpg(&mut sb).into_iter().find(|g| g.0 == gb).unwrap();
    assert_eq!(own.1, 0x03, "a node without etcd reports its group Unavailable");
    assert_eq!(ana(&mut hb), 0x03, "ANA inaccessible");
    etcd.start_again();
    wait_clustered(&b);
    assert_eq!(rtpg(&mut sb).into_iter().find(|g| g.0 == gb).unwrap().1, 0x00);
    assert_eq!(ana(&mut hb), 0x01);
}

/// A PR OUT through one node right after a change through the other is judged on the newest
/// state (no stale view): a client registers through B, and at once the holder preempts it
/// through A; RESERVE through A conflicts on B as soon as it has returned.
#[test]
fn pr_out_is_judged_on_the_newest_state_across_nodes() {
    let (_etcd, _dir, a, b) = two_nodes(16384);
    let mut mds = nvme_host(a.nvme, 1);
    let mut client = nvme_host(b.nvme, 2);
    assert!(mds.register(MDS_KEY).is_ok());
    assert!(mds.acquire(4, MDS_KEY).is_ok(), "EA-RO through A");
    for i in 0..30u64 {
        let key = 0x1000 + i;
        assert!(client.register(key).is_ok(), "register #{i} through B");
        // Acquire RACQA 010b, type 4, CRKEY = holder's, PRKEY = the client's key just registered.
        let mut d = MDS_KEY.to_le_bytes().to_vec();
        d.extend_from_slice(&key.to_le_bytes());
        let st = mds.cmd(ACQUIRE_NVME, 2 | 4 << 8, &d);
        assert!(st.is_ok(), "preempt and abort #{i} through A right after B's register: {st}");
        assert_eq!(client.write(3), NVME_CONFLICT, "#{i}: the preempted client is refused on B at once");
    }
}

/// save_config writes the cluster membership (`cluster_connect`) first, so a node restarted
/// from its saved config joins the cluster before it opens its volumes; the volume comes back
/// clustered (the mark lives in etcd).
#[test]
fn a_node_restarted_from_its_saved_config_rejoins() {
    let (etcd, dir, a, b) = two_nodes(16384);
    let cfg = b.t.rpc("save_config", Value::Null);
    let subs = cfg["subsystems"].as_array().unwrap();
    let cl = subs.iter().position(|s| s["subsystem"] == "cluster").expect("cluster subsystem saved");
    let bdev = subs.iter().position(|s| s["subsystem"] == "bdev").unwrap();
    assert!(cl < bdev, "cluster is joined before bdevs are made");
    let entry = &subs[cl]["config"][0];
    assert_eq!(entry["method"], "cluster_connect");
    assert_eq!(entry["params"]["node_id"], "node-b");
    assert_eq!(entry["params"]["endpoints"][0], etcd.url());
    b.t.stop();
    let t = Target::start_with_config(&cfg, &["-m", "0x1"]);
    let b = Node { t, nvme: b.nvme, iscsi: b.iscsi };
    wait_clustered(&b);
    let _ = (a, dir);
}

/// Reservation notifications reach hosts on every node: a host registered through B whose key is
/// preempted through A finds Registration Preempted in its Reservation Notification log (80h).
#[test]
fn notifications_reach_hosts_on_the_other_node() {
    let (_etcd, _dir, a, b) = two_nodes(16384);
    let mut mds = nvme_host(a.nvme, 1);
    let mut client = nvme_host(b.nvme, 2);
    assert!(mds.register(MDS_KEY).is_ok());
    assert!(mds.acquire(4, MDS_KEY).is_ok());
    assert!(client.register(CLIENT_KEY).is_ok());
    let mut d = MDS_KEY.to_le_bytes().to_vec();
    d.extend_from_slice(&CLIENT_KEY.to_le_bytes());
    assert!(mds.cmd(ACQUIRE_NVME, 2 | 4 << 8, &d).is_ok(), "preempt and abort through A");
    let log = client._c.admin.get_log_page(0x80, 64, 0).unwrap();
    let count = u64::from_le_bytes(log[0..8].try_into().unwrap());
    assert_ne!(count, 0, "a notification for the host on B: {log:?}");
    assert_eq!(log[8], 1, "Registration Preempted");
    assert_eq!(u32::from_le_bytes(log[12..16].try_into().unwrap()), 1, "namespace 1");
}
