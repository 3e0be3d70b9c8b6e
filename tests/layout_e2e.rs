//! The layout story end to end, over real sockets against the built binary: this test plays the
//! pNFS metadata server over JSON-RPC and two clients on one layout volume whose bdev (a file) is
//! exported on both protocols — client A through iSCSI (Palisade's initiator), client B through
//! NVMe/TCP (Palisade's host). A is known to the layout store only by its PR key, which it
//! registers over iSCSI: the guard maps its nexus to the client through the reservation engine.
//!
//! A writes into INVALID_DATA extents and reads its data back while B sees zeros; stale data
//! never shows; A commits and B reads A's data; A's
//! write outside its grants is refused with DATA PROTECT; B's conflicting layout recalls A's
//! grant, A keeps writing sequence-numbered blocks and never returns it, the recall timer fences A
//! (PREEMPT AND ABORT of its key through the reservation engine) and nothing A wrote lands after
//! the fence notification; B gets its layout; a reflinked clone is written copy-on-write through
//! NVMe and the source is unchanged; SIGKILL, fsck, restart: the committed data and maps are intact.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, RawConn, Target, BIN};
use palisade::iscsi::initiator::{Completion, LoginOptions, Session};
use palisade::nvmf::host::{rw_sqe, Controller, HostOpts, Queue};
use serde_json::{json, Value};

const BS: u64 = 4096;
const BLOCKS: u64 = 1024;
const UUID: &str = "3b9a4c1e-e2e0-4e2f-8a3b-5c6d7e8f9a0b";
const IQN: &str = "iqn.2016-06.io.spdk:disk1";
const NQN: &str = "nqn.2016-06.io.spdk:layout";
const A_NAME: &str = "iqn.2026-01.test:client-a";
const B_NQN: &str = "nqn.2026-01.test:client-b";
const KEY_A: u64 = 0xa1a1;
const MAGIC: u64 = 0x5041_4c49_5341_4445; // "PALISADE"
const STALE: u8 = 0xee;

fn cdb10(op: u8, lba: u64, n: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = op;
    c[2..6].copy_from_slice(&(lba as u32).to_be_bytes());
    c[7..9].copy_from_slice(&n.to_be_bytes());
    c
}

fn pr_out_register(sa_key: u64) -> ([u8; 10], Vec<u8>) {
    let mut cdb = [0u8; 10];
    cdb[0] = 0x5f;
    cdb[1] = 0x06; // REGISTER AND IGNORE EXISTING KEY
    cdb[5..9].copy_from_slice(&24u32.to_be_bytes());
    let mut p = vec![0u8; 24];
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p[20] = 1; // APTPL, as Linux sends it
    (cdb, p)
}

/// A command to completion, retried over unit attentions (the first command after login gets one).
fn iscsi_cmd(s: &mut Session, cdb: &[u8], data: &[u8]) -> Completion {
    for _ in 0..4 {
        let c = s.command(0, cdb, data, 0, Duration::from_secs(10)).unwrap().0;
        if !(c.status == 2 && c.sense.get(2).map(|k| k & 0xf) == Some(6)) {
            return c;
        }
    }
    panic!("unit attentions do not stop");
}

fn is_data_protect(c: &Completion) -> bool {
    c.status == 2 && c.sense.get(2).map(|k| k & 0xf) == Some(7) && c.sense.get(12) == Some(&0x27)
}

fn iscsi_write(s: &mut Session, lba: u64, data: &[u8]) -> Completion {
    iscsi_cmd(s, &cdb10(0x2a, lba, (data.len() as u64 / BS) as u16), data)
}

fn nvme_read(q: &mut Queue, lba: u64, n: u32) -> Vec<u8> {
    let (cqe, d) = q.sync(rw_sqe(false, 1, lba, n), None, n as usize * BS as usize).unwrap();
    assert!(cqe.status.is_ok(), "NVMe read at {lba}: {:?}", cqe.status);
    d
}

fn nvme_write(q: &mut Queue, lba: u64, data: &[u8]) -> bool {
    let (cqe, _) = q.sync(rw_sqe(true, 1, lba, (data.len() as u64 / BS) as u32), Some(data), 0).unwrap();
    cqe.status.is_ok()
}

/// A block of A's pattern: magic, sequence number, filler.
fn stamped(seq: u64) -> Vec<u8> {
    let mut b = vec![0xa7u8; BS as usize];
    b[0..8].copy_from_slice(&MAGIC.to_le_bytes());
    b[8..16].copy_from_slice(&seq.to_le_bytes());
    b
}

fn read_file(f: &std::fs::File, lba: u64, n: u64) -> Vec<u8> {
    let mut b = vec![0u8; (n * BS) as usize];
    f.read_exact_at(&mut b, lba * BS).unwrap();
    b
}

fn setup(t: &Target, data: &str, meta: &str, iscsi_port: u16, nvme_port: u16) {
    t.rpc("bdev_uring_create", json!({"name": "d0", "filename": data, "block_size": BS, "uuid": UUID}));
    t.rpc("iscsi_create_portal_group", json!({"tag": 1, "portals": [{"host": "127.0.0.1", "port": iscsi_port.to_string()}]}));
    t.rpc("iscsi_create_initiator_group", json!({"tag": 1, "initiators": ["ANY"], "netmasks": ["127.0.0.1/32"]}));
    t.rpc(
        "iscsi_create_target_node",
        json!({"name": "disk1", "alias_name": "Layout", "luns": [{"bdev_name": "d0", "lun_id": 0}],
               "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 1}], "queue_depth": 64}),
    );
    t.rpc("nvmf_create_transport", json!({"trtype": "TCP"}));
    t.rpc("nvmf_create_subsystem", json!({"nqn": NQN, "serial_number": "SN-LAYOUT", "allow_any_host": true}));
    t.rpc("nvmf_subsystem_add_ns", json!({"nqn": NQN, "namespace": {"bdev_name": "d0"}}));
    t.rpc(
        "nvmf_subsystem_add_listener",
        json!({"nqn": NQN, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": nvme_port.to_string()}}),
    );
    let r = t.rpc(
        "layout_volume_create",
        json!({"name": "lv0", "bdev_name": "d0", "metadata_path": meta, "guard": "enforce", "recall_timeout_ms": 600}),
    );
    assert_eq!(r, json!("lv0"));
}

#[test]
fn layout_story_iscsi_and_nvme_clients() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let data_path = dir.path().join("data.img");
    let meta_path = dir.path().join("lv0.meta");
    // The device's previous life: every block holds stale data nobody may ever see.
    std::fs::write(&data_path, vec![STALE; (BLOCKS * BS) as usize]).unwrap();
    let (data_s, meta_s) = (data_path.to_str().unwrap(), meta_path.to_str().unwrap());
    let dev = std::fs::File::open(&data_path).unwrap();

    let mut t = Target::start(&["-m", "0x1"]);
    let (iscsi_port, nvme_port) = (free_port(), free_port());
    setup(&t, data_s, meta_s, iscsi_port, nvme_port);
    let mut mds = RawConn::connect(&t.sock);
    assert_eq!(mds.call("layout_recall_subscribe", json!({})).0["result"], json!(true));

    // A has no identity: only the PR key it registers maps its nexus to it. B is known by NQN.
    t.rpc("client_register", json!({"volume": "lv0", "client": "A", "pr_key": KEY_A}));
    t.rpc("client_register", json!({"volume": "lv0", "client": "B", "pr_key": 0xb2b2, "identities": [B_NQN]}));
    t.rpc("layout_file_create", json!({"volume": "lv0", "file": 1}));

    let mut a = Session::connect("127.0.0.1", iscsi_port, &LoginOptions::new(A_NAME, Some(IQN)), 8).unwrap();
    let (cdb, p) = pr_out_register(KEY_A);
    assert_eq!(iscsi_cmd(&mut a, &cdb, &p).status, 0, "A registers its key");
    // A guarded volume has volatile state (which blocks were written) that a flush makes
    // durable: the caching page reports WCE=1 so initiators flush (NVMe: VWC).
    let (c, ms) = a.command(0, &[0x1a, 0x08, 0x08, 0, 0xff, 0], &[], 0xff, Duration::from_secs(10)).unwrap();
    assert_eq!(c.status, 0);
    assert_eq!(ms[4], 0x08, "caching page");
    assert_eq!(ms[4 + 2] & 0x04, 0x04, "WCE on a guarded volume");
    let mut ho = HostOpts::new(format!("127.0.0.1:{nvme_port}").parse::<SocketAddr>().unwrap(), NQN);
    ho.hostnqn = B_NQN.into();
    let bc = Controller::connect(&ho).unwrap();
    let mut b = bc.io_queue(1, 32).unwrap();

    // 1. A's rw layout over a hole: INVALID_DATA. A writes two of its four blocks via iSCSI.
    let g1 = t.rpc("layout_get", json!({"volume": "lv0", "file": 1, "client": "A", "offset": 0, "length": 4 * BS, "iomode": "rw"}));
    assert_eq!(g1["extents"][0]["state"], "INVALID_DATA");
    let l = g1["extents"][0]["volume_offset"].as_u64().unwrap() / BS;
    let a_data = vec![0xa1u8; 2 * BS as usize];
    assert_eq!(iscsi_write(&mut a, l, &a_data).status, 0, "A writes inside its grant");
    // A reads back what it wrote (the blocks it has not written as zeros, never stale).
    let (c, r) = a.command(0, &cdb10(0x28, l, 4), &[], 4 * BS as usize, Duration::from_secs(10)).unwrap();
    assert_eq!(c.status, 0);
    assert_eq!(&r[..2 * BS as usize], &a_data[..], "the grant holder reads its uncommitted data");
    assert!(r[2 * BS as usize..].iter().all(|&x| x == 0), "unwritten INVALID_DATA must read as zeros");
    // B (NVMe) reads the same LBAs: all zeros, uncommitted data is not part of the file yet.
    let r = nvme_read(&mut b, l, 4);
    assert!(r.iter().all(|&x| x == 0), "B must see zeros for A's uncommitted blocks");
    // B may not write into A's grant.
    assert!(!nvme_write(&mut b, l, &vec![0xb0u8; BS as usize]), "B's write into A's grant must be refused");

    // 2. A commits the whole range: only what it wrote becomes data; B reads A's data.
    let c = t.rpc("layout_commit", json!({"grant": g1["grant"], "ranges": [{"offset": 0, "length": 4 * BS}], "new_size": 4 * BS}));
    assert_eq!(c["committed_bytes"], 2 * BS);
    let r = nvme_read(&mut b, l, 4);
    assert_eq!(&r[..2 * BS as usize], &a_data[..]);
    assert!(r[2 * BS as usize..].iter().all(|&x| x == 0));
    t.rpc("layout_return", json!({"grant": g1["grant"]}));

    // 3. Outside its grants A is refused with DATA PROTECT / WRITE PROTECTED, on its own data too.
    for lba in [l, BLOCKS - 1] {
        let c = iscsi_write(&mut a, lba, &vec![0xa2u8; BS as usize]);
        assert!(is_data_protect(&c), "A's write outside its grant at {lba}: {c:?}");
    }

    // 4. A holds a rw layout on [4, 8) blocks and keeps writing sequence-numbered blocks into it.
    let g2 = t.rpc("layout_get", json!({"volume": "lv0", "file": 1, "client": "A", "offset": 4 * BS, "length": 4 * BS, "iomode": "rw"}));
    let g2_id = g2["grant"].as_u64().unwrap();
    let l2 = g2["extents"][0]["volume_offset"].as_u64().unwrap() / BS;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // (seq, GOOD?, submission time) of every write; depth 8, one tag per slot.
            let mut done: Vec<(u64, bool, Instant)> = Vec::new();
            let mut inflight: [Option<(u64, Instant)>; 8] = [None; 8];
            let mut seq = 0u64;
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let stopping = stop.load(Ordering::Acquire) || Instant::now() > deadline;
                if !stopping {
                    for tag in 0..8u32 {
                        if inflight[tag as usize].is_none() {
                            seq += 1;
                            let lba = l2 + seq % 4;
                            a.submit(tag, 0, &cdb10(0x2a, lba, 1), &stamped(seq), 0).unwrap();
                            inflight[tag as usize] = Some((seq, Instant::now()));
                        }
                    }
                } else if inflight.iter().all(Option::is_none) {
                    return (done, a);
                }
                a.poll(Duration::from_millis(20), &mut |c, _| {
                    if let Some((s, at)) = inflight[c.tag as usize].take() {
                        done.push((s, c.status == 0, at));
                    }
                })
                .unwrap();
            }
        })
    };
    std::thread::sleep(Duration::from_millis(100));

    // 5. B asks a conflicting rw layout: recall pending; A's grant is recalled (notification).
    let e = t.try_rpc("layout_get", Some(json!({"volume": "lv0", "file": 1, "client": "B", "offset": 4 * BS, "length": 4 * BS, "iomode": "rw"})));
    let (code, msg) = e.expect_err("conflicting layout must wait for the recall");
    assert_eq!(code, -libc::EAGAIN as i64, "{msg}");
    let note = mds.recall("conflict", Duration::from_secs(5));
    assert_eq!(note["grant"], g2_id);
    assert_eq!(note["client"], "A");
    let keys = t.rpc("reservation_get", json!({"bdev_name": "d0"}));
    assert!(keys.to_string().contains(&format!("0x{KEY_A:016x}")), "A registered: {keys}");
    // A never returns it: the timer fences A. Snapshot A's blocks as the fence notification arrives.
    let note = mds.recall("fence", Duration::from_secs(10));
    let fenced_at = Instant::now();
    assert_eq!(note["grant"], g2_id);
    let at_fence = read_file(&dev, l2, 4);
    std::thread::sleep(Duration::from_millis(400));
    stop.store(true, Ordering::Release);
    let (done, mut a) = writer.join().unwrap();
    let after = read_file(&dev, l2, 4);
    assert_eq!(at_fence, after, "a write of the fenced client landed after the fence notification");
    let good: std::collections::HashSet<u64> = done.iter().filter(|d| d.1).map(|d| d.0).collect();
    assert!(!good.is_empty(), "A's writes went through before the fence");
    assert!(done.iter().any(|d| !d.1 && d.2 > fenced_at), "A kept writing after the fence and was refused");
    assert!(done.iter().filter(|d| d.1).all(|d| d.2 <= fenced_at), "a write of A submitted after the fence succeeded");
    for blk in after.chunks(BS as usize) {
        if blk[0..8] == MAGIC.to_le_bytes() {
            let s = u64::from_le_bytes(blk[8..16].try_into().unwrap());
            assert!(good.contains(&s), "block with seq {s} on disk, but that write was not acknowledged");
        }
    }
    // The reservation engine preempted A's key; the store shows A fenced with no grants.
    let keys = t.rpc("reservation_get", json!({"bdev_name": "d0"}));
    assert!(!keys.to_string().contains(&format!("0x{KEY_A:016x}")), "A's key must be preempted: {keys}");
    let clients = t.rpc("client_list", json!({"volume": "lv0"}));
    assert_eq!(clients[0]["client"], "A");
    assert_eq!(clients[0]["fenced"], true);

    // 6. B's grant is given.
    let deadline = Instant::now() + Duration::from_secs(10);
    let gb = loop {
        match t.try_rpc("layout_get", Some(json!({"volume": "lv0", "file": 1, "client": "B", "offset": 4 * BS, "length": 4 * BS, "iomode": "rw"}))) {
            Ok(v) => break v,
            Err((c, _)) if c == -libc::EAGAIN as i64 && Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("B's layout_get: {e:?}"),
        }
    };
    t.rpc("layout_return", json!({"grant": gb["grant"]}));

    // 7. Unfenced, A may register its key again (the preempt removed it).
    t.rpc("client_unfence", json!({"volume": "lv0", "client": "A"}));
    let (cdb, p) = pr_out_register(KEY_A);
    assert_eq!(iscsi_cmd(&mut a, &cdb, &p).status, 0, "A registers again");

    // 8. Reflink file 1; B writes the clone copy-on-write through NVMe; the source is unchanged.
    t.rpc("layout_file_reflink", json!({"volume": "lv0", "source": 1, "destination": "clone"}));
    let gc = t.rpc("layout_get", json!({"volume": "lv0", "file": "clone", "client": "B", "offset": 0, "length": BS, "iomode": "rw"}));
    assert_eq!(gc["extents"][0]["state"], "INVALID_DATA");
    assert_eq!(gc["extents"][1]["state"], "READ_DATA");
    assert_eq!(gc["extents"][1]["volume_offset"].as_u64().unwrap(), l * BS);
    let lc = gc["extents"][0]["volume_offset"].as_u64().unwrap() / BS;
    assert_ne!(lc, l);
    assert!(!nvme_write(&mut b, l, &vec![0xb1u8; BS as usize]), "the shared source block is read-only");
    assert!(nvme_write(&mut b, lc, &vec![0xb1u8; BS as usize]));
    t.rpc("layout_commit", json!({"grant": gc["grant"], "ranges": [{"offset": 0, "length": BS}]}));
    t.rpc("layout_return", json!({"grant": gc["grant"]}));
    assert!(nvme_read(&mut b, lc, 1).iter().all(|&x| x == 0xb1));
    assert_eq!(nvme_read(&mut b, l, 2), a_data, "source unchanged");
    let maps: Vec<Value> = [json!(1), json!("clone")].iter().map(|f| t.rpc("layout_file_map", json!({"volume": "lv0", "file": f}))).collect();
    assert_eq!(maps[1]["extents"][0]["volume_offset"].as_u64().unwrap(), lc * BS);
    assert_eq!(maps[0]["extents"][0]["volume_offset"].as_u64().unwrap(), l * BS);
    // B writes two blocks of a new uncommitted grant and flushes: the flush makes the target's
    // record of which blocks were written durable, so the commit after the crash keeps them.
    let gf = t.rpc("layout_get", json!({"volume": "lv0", "file": "clone", "client": "B", "offset": 4 * BS, "length": 4 * BS, "iomode": "rw"}));
    assert_eq!(gf["extents"][0]["state"], "INVALID_DATA");
    let lf = gf["extents"][0]["volume_offset"].as_u64().unwrap() / BS;
    assert!(nvme_write(&mut b, lf, &vec![0xf1u8; 2 * BS as usize]));
    let mut flush = palisade::nvme::spec::Sqe::default();
    flush.set_opcode(0x00).set_nsid(1);
    assert!(b.sync(flush, None, 0).unwrap().0.status.is_ok(), "NVMe Flush");
    drop(a);
    drop(b);
    drop(bc);

    // 9. SIGKILL, offline fsck, restart: maps and committed data intact.
    t.signal_and_wait(libc::SIGKILL, Duration::from_secs(10)).expect("target killed");
    let out = std::process::Command::new(BIN).args(["fsck", "--metadata", meta_s]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("consistent"), "fsck after SIGKILL: {text}");
    let t = Target::start(&["-m", "0x1"]);
    setup(&t, data_s, meta_s, free_port(), free_port());
    let maps2: Vec<Value> = [json!(1), json!("clone")].iter().map(|f| t.rpc("layout_file_map", json!({"volume": "lv0", "file": f}))).collect();
    assert_eq!(maps, maps2);
    assert_eq!(read_file(&dev, l, 2), a_data);
    assert!(read_file(&dev, lc, 1).iter().all(|&x| x == 0xb1));
    let c = t.rpc("layout_commit", json!({"grant": gf["grant"], "ranges": [{"offset": 4 * BS, "length": 4 * BS}], "new_size": 8 * BS}));
    assert_eq!((c["committed_bytes"].as_u64(), c["unwritten_bytes"].as_u64()), (Some(2 * BS), Some(2 * BS)), "flushed writes survive the crash: {c}");
    assert!(read_file(&dev, lf, 2).iter().all(|&x| x == 0xf1));
    t.stop();
    assert!(started.elapsed() < Duration::from_secs(60), "story took {:?}", started.elapsed());
}
