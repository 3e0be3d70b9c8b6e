//! iSCSI target against the built binary on 127.0.0.1: libiscsi tools, discovery, CHAP, access
//! control, malformed input isolation, data integrity (our initiator and qemu-img), SIGTERM
//! under I/O, and the management methods with save_config round trip.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, require, Target};
use palisade::iscsi::initiator::{LoginOptions, Session};
use palisade::iscsi::pdu::{self, at, op, Bhs};
use serde_json::json;

const IQN: &str = "iqn.2016-06.io.spdk:disk1";

/// A target with Malloc0 (64 MiB, 512 B blocks) exported as LUN 0 of `IQN` on `port`.
fn start(port: u16) -> Target {
    let t = Target::start(&["-m", "0x1"]);
    t.rpc("bdev_malloc_create", json!({"name": "Malloc0", "num_blocks": 131072, "block_size": 512}));
    t.rpc("iscsi_create_portal_group", json!({"tag": 1, "portals": [{"host": "127.0.0.1", "port": port.to_string()}]}));
    t.rpc("iscsi_create_initiator_group", json!({"tag": 1, "initiators": ["ANY"], "netmasks": ["127.0.0.1/32"]}));
    t
}

fn node(t: &Target, extra: serde_json::Value) {
    let mut p = json!({"name": "disk1", "alias_name": "Disk 1", "luns": [{"bdev_name": "Malloc0", "lun_id": 0}],
        "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 1}], "queue_depth": 64});
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    t.rpc("iscsi_create_target_node", p);
}

fn url(port: u16) -> String {
    format!("iscsi://127.0.0.1:{port}/{IQN}/0")
}

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("timeout").arg("60").arg(cmd).args(args).output().expect("run tool");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
}

fn login(port: u16, name: &str) -> std::io::Result<Session> {
    Session::connect("127.0.0.1", port, &LoginOptions::new(name, Some(IQN)), 32)
}

/// One command, retried past unit attentions (a new nexus sees POWER ON / RESET first).
fn cmd(s: &mut Session, lun: u64, cdb: &[u8], w: &[u8], r: usize, t: Duration) -> std::io::Result<(palisade::iscsi::initiator::Completion, Vec<u8>)> {
    for _ in 0..4 {
        let (c, d) = s.command(lun, cdb, w, r, t)?;
        if c.status == 2 && c.sense.get(2).map(|k| k & 0xf) == Some(6) {
            continue;
        }
        return Ok((c, d));
    }
    s.command(lun, cdb, w, r, t)
}

/// Log in, retrying while a just-started target is still applying its config.
fn login_retry(port: u16, name: &str) -> Session {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match login(port, name) {
            Ok(s) => return s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("login failed: {e}"),
        }
    }
}

fn write16(lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x8a;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn read16(lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = write16(lba, blocks);
    c[0] = 0x88;
    c
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Write then read back `blocks` at `lba`; panics on any difference.
fn write_read(s: &mut Session, lba: u64, blocks: u32, seed: u64) {
    let data = pattern(seed, blocks as usize * 512);
    let (c, _) = cmd(s, 0, &write16(lba, blocks), &data, 0, Duration::from_secs(20)).unwrap();
    assert_eq!(c.status, 0, "write failed: {c:?}");
    let (c, back) = cmd(s, 0, &read16(lba, blocks), &[], data.len(), Duration::from_secs(20)).unwrap();
    assert_eq!(c.status, 0, "read failed: {c:?}");
    assert!(back == data, "data read back differs at lba {lba} ({blocks} blocks)");
}

#[test]
fn libiscsi_tools_and_discovery() {
    if !require("iscsi-inq") {
        return;
    }
    let port = free_port();
    let t = start(port);
    node(&t, json!({}));
    let (ok, out) = run("iscsi-inq", &[&url(port)]);
    assert!(ok && out.contains("PALISADE"), "iscsi-inq: {out}");
    let (ok, out) = run("iscsi-readcapacity16", &[&url(port)]);
    assert!(ok && out.contains("Total size:67108864"), "iscsi-readcapacity16: {out}");
    let (ok, out) = run("iscsi-ls", &["-s", &format!("iscsi://127.0.0.1:{port}")]);
    assert!(ok && out.contains(&format!("Target:{IQN} Portal:127.0.0.1:{port},1")), "iscsi-ls: {out}");
    // Our initiator's discovery sees the same.
    let mut d = Session::connect("127.0.0.1", port, &LoginOptions::new("iqn.test:disc", None), 1).unwrap();
    let list = d.send_targets("All").unwrap();
    assert_eq!(list, vec![(IQN.to_string(), vec![format!("127.0.0.1:{port},1")])]);
    assert_eq!(d.send_targets("iqn.nope").unwrap(), vec![]);
    assert_eq!(d.send_targets(IQN).unwrap().len(), 1);
    d.logout().unwrap();
    t.stop();
}

#[test]
fn chap_one_way_and_mutual() {
    let port = free_port();
    let t = start(port);
    t.rpc("iscsi_create_auth_group", json!({"tag": 1, "secrets": [
        {"user": "alice", "secret": "alicesecret1", "muser": "tgt", "msecret": "targetsecret"}]}));
    node(&t, json!({"require_chap": true, "chap_group": 1}));
    let base = LoginOptions::new("iqn.test:chap", Some(IQN));
    // No credentials: refused with authentication failure.
    let e = Session::connect("127.0.0.1", port, &base, 4).err().expect("login without CHAP must fail");
    assert!(e.to_string().contains("02/01"), "{e}");
    // One-way, right secret.
    let mut o = base.clone();
    o.chap = Some(("alice".into(), "alicesecret1".into()));
    let mut s = Session::connect("127.0.0.1", port, &o, 4).unwrap();
    write_read(&mut s, 8, 8, 1);
    s.logout().unwrap();
    // Wrong secret.
    let mut bad = base.clone();
    bad.chap = Some(("alice".into(), "wrong-secret".into()));
    let e = Session::connect("127.0.0.1", port, &bad, 4).err().expect("wrong secret must fail");
    assert!(e.to_string().contains("02/01"), "{e}");
    // Unknown user.
    bad.chap = Some(("mallory".into(), "alicesecret1".into()));
    assert!(Session::connect("127.0.0.1", port, &bad, 4).is_err());
    // Mutual: the target proves its secret.
    let mut m = o.clone();
    m.mutual = Some(("tgt".into(), "targetsecret".into()));
    Session::connect("127.0.0.1", port, &m, 4).unwrap().logout().unwrap();
    m.mutual = Some(("tgt".into(), "not-the-target-secret".into()));
    let e = Session::connect("127.0.0.1", port, &m, 4).err().expect("target with the wrong mutual secret must be refused");
    assert!(e.to_string().contains("mutual"), "{e}");
    // libiscsi with the secret in the URL.
    if require("iscsi-inq") {
        let (ok, out) = run("iscsi-inq", &[&format!("iscsi://alice%alicesecret1@127.0.0.1:{port}/{IQN}/0")]);
        assert!(ok, "iscsi-inq with CHAP: {out}");
        let (ok, _) = run("iscsi-inq", &[&format!("iscsi://alice%bad@127.0.0.1:{port}/{IQN}/0")]);
        assert!(!ok, "iscsi-inq with a wrong CHAP secret must fail");
    }
    t.stop();
}

#[test]
fn mutual_chap_required_by_node() {
    let port = free_port();
    let t = start(port);
    t.rpc("iscsi_create_auth_group", json!({"tag": 2, "secrets": [
        {"user": "bob", "secret": "bobsecret123", "muser": "tgt", "msecret": "targetsecret"}]}));
    node(&t, json!({"require_chap": true, "mutual_chap": true, "chap_group": 2}));
    let mut o = LoginOptions::new("iqn.test:mutual", Some(IQN));
    o.chap = Some(("bob".into(), "bobsecret123".into()));
    // One-way only is not enough when the node requires mutual CHAP.
    assert!(Session::connect("127.0.0.1", port, &o, 4).is_err());
    o.mutual = Some(("tgt".into(), "targetsecret".into()));
    Session::connect("127.0.0.1", port, &o, 4).unwrap().logout().unwrap();
    t.stop();
}

#[test]
fn access_control() {
    let port = free_port();
    let t = start(port);
    t.rpc("iscsi_create_initiator_group", json!({"tag": 2, "initiators": ["iqn.test:allowed"], "netmasks": ["ANY"]}));
    t.rpc("iscsi_create_target_node", json!({"name": "disk1", "alias_name": "", "luns": [{"bdev_name": "Malloc0", "lun_id": 0}],
        "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 2}], "queue_depth": 8}));
    login(port, "iqn.test:allowed").unwrap().logout().unwrap();
    let e = login(port, "iqn.test:intruder").err().expect("initiator outside the group must be refused");
    assert!(e.to_string().contains("02/02"), "{e}");
    let e = Session::connect("127.0.0.1", port, &LoginOptions::new("iqn.test:allowed", Some("iqn.no.such:target")), 4).err().unwrap();
    assert!(e.to_string().contains("02/03"), "{e}");
    // Discovery hides what the initiator may not use.
    let mut d = Session::connect("127.0.0.1", port, &LoginOptions::new("iqn.test:intruder", None), 1).unwrap();
    assert!(d.send_targets("All").unwrap().is_empty());
    t.stop();
}

/// Background I/O on a healthy session while other connections misbehave.
fn background_io(port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut s = login(port, "iqn.test:healthy").unwrap();
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            write_read(&mut s, 1000 + (n as u64 % 64) * 16, 16, n as u64);
            n += 1;
        }
        s.logout().unwrap();
        n
    })
}

fn expect_closed(mut c: TcpStream) {
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match c.read(&mut b) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("connection not closed by the target: {e}"),
        }
        assert!(Instant::now() < deadline, "connection not closed by the target");
    }
}

#[test]
fn malformed_input_ends_only_that_connection() {
    let port = free_port();
    let t = start(port);
    node(&t, json!({}));
    let stop = Arc::new(AtomicBool::new(false));
    let bg = background_io(port, stop.clone());
    std::thread::sleep(Duration::from_millis(200));
    // 1. Garbage before login.
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(&pattern(7, 4096)).unwrap();
    expect_closed(c);
    // 2. A truncated PDU: a header announcing more data than ever comes, then EOF.
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut h = Bhs::new(op::LOGIN_REQ, 0x87);
    h.set_data_len(1000);
    c.write_all(&h.0).unwrap();
    c.write_all(&[b'A'; 100]).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    expect_closed(c);
    // 3. A data segment longer than MaxRecvDataSegmentLength from a logged-in session.
    let mut s = login(port, "iqn.test:bad1").unwrap();
    let mut h = Bhs::new(op::NOP_OUT, 0x80);
    h.set_immediate();
    h.set_data_len((16 << 20) - 1);
    s.raw_write(&h.0).unwrap();
    cmd(&mut s, 0, &[0; 6], &[], 0, Duration::from_secs(10)).expect_err("connection must be gone");
    // 4. A bad header digest.
    let mut o = LoginOptions::new("iqn.test:digest", Some(IQN));
    o.header_digest = true;
    o.data_digest = true;
    let mut s = Session::connect("127.0.0.1", port, &o, 4).unwrap();
    write_read(&mut s, 4000, 8, 9); // digests work when right
    let mut h = Bhs::new(op::NOP_OUT, 0x80);
    h.set_immediate();
    h.set_itt(5);
    h.set_u32(at::W20, pdu::RESERVED_TAG);
    let mut bytes = Vec::new();
    pdu::encode(&mut bytes, &h, &[], &[], true, true);
    bytes[49] ^= 0xff;
    s.raw_write(&bytes).unwrap();
    assert!(cmd(&mut s, 0, &[0; 6], &[], 0, Duration::from_secs(10)).is_err(), "bad digest must end the connection");
    // 5. A bad data digest.
    let mut s = Session::connect("127.0.0.1", port, &o, 4).unwrap();
    let mut bytes = Vec::new();
    pdu::encode(&mut bytes, &h, &[], b"ping", true, true);
    let n = bytes.len();
    bytes[n - 1] ^= 0xff;
    s.raw_write(&bytes).unwrap();
    assert!(cmd(&mut s, 0, &[0; 6], &[], 0, Duration::from_secs(10)).is_err(), "bad data digest must end the connection");
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let done = bg.join().expect("healthy session failed while others misbehaved");
    assert!(done > 0);
    t.stop();
}

#[test]
fn data_integrity_r2t_and_unsolicited() {
    let port = free_port();
    let t = start(port);
    node(&t, json!({}));
    let mut s = login(port, "iqn.test:data").unwrap();
    // Sizes below and above FirstBurstLength (immediate + unsolicited + R2T) and MaxBurstLength.
    for (i, blocks) in [1u32, 8, 127, 128, 129, 1024, 4096, 8192].iter().enumerate() {
        write_read(&mut s, 100 + i as u64 * 9000, *blocks, i as u64);
    }
    // A read longer than the initiator's MaxRecvDataSegmentLength arrives in several Data-In PDUs.
    let (c, d) = cmd(&mut s, 0, &read16(100 + 7 * 9000, 8192), &[], 8192 * 512, Duration::from_secs(20)).unwrap();
    assert_eq!((c.status, d.len()), (0, 8192 * 512));
    // Residuals: EDTL larger than the transfer.
    let (c, d) = cmd(&mut s, 0, &read16(0, 1), &[], 4096, Duration::from_secs(20)).unwrap();
    assert_eq!(c.status, 0);
    assert_eq!(d.len(), 512);
    assert_eq!(c.residual, Some((true, 4096 - 512)));
    // Pipelined commands at queue depth 32.
    let data: Vec<Vec<u8>> = (0..32).map(|i| pattern(100 + i, 4096)).collect();
    for (i, d) in data.iter().enumerate() {
        s.submit(i as u32, 0, &write16(50_000 + i as u64 * 8, 8), d, 0).unwrap();
    }
    let mut n = 0;
    while n < 32 {
        s.poll(Duration::from_secs(10), &mut |c, _| {
            assert_eq!(c.status, 0);
            n += 1;
        })
        .unwrap();
    }
    for (i, d) in data.iter().enumerate() {
        let (_, back) = cmd(&mut s, 0, &read16(50_000 + i as u64 * 8, 8), &[], 4096, Duration::from_secs(10)).unwrap();
        assert!(&back == d);
    }
    s.logout().unwrap();
    t.stop();
}

#[test]
fn qemu_img_round_trip() {
    if !require("qemu-img") {
        return;
    }
    let port = free_port();
    let t = start(port);
    node(&t, json!({}));
    let src = t.path("src.bin");
    let back = t.path("back.bin");
    std::fs::write(&src, pattern(42, 8 << 20)).unwrap();
    let u = url(port);
    let (ok, out) = run("qemu-img", &["convert", "-n", "-f", "raw", "-O", "raw", src.to_str().unwrap(), &u]);
    assert!(ok, "qemu-img convert to iscsi: {out}");
    let (ok, out) = run("qemu-img", &["convert", "-f", "raw", "-O", "raw", &u, back.to_str().unwrap()]);
    assert!(ok, "qemu-img convert from iscsi: {out}");
    let a = std::fs::read(&src).unwrap();
    let b = std::fs::read(&back).unwrap();
    assert!(b.len() >= a.len() && b[..a.len()] == a[..], "qemu-img read back different data");
    // And our initiator sees the same bytes.
    let mut s = login(port, "iqn.test:qemu").unwrap();
    let (_, d) = cmd(&mut s, 0, &read16(0, 64), &[], 64 * 512, Duration::from_secs(10)).unwrap();
    assert!(d[..] == a[..64 * 512]);
    t.stop();
}

#[test]
fn sigterm_during_io_exits_cleanly() {
    let port = free_port();
    let mut t = start(port);
    node(&t, json!({}));
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let io = std::thread::spawn(move || {
        let Ok(mut s) = login(port, "iqn.test:term") else { return };
        let mut i = 0u64;
        while !st.load(Ordering::Relaxed) {
            let d = pattern(i, 64 * 1024);
            if cmd(&mut s, 0, &write16(i % 1000 * 128, 128), &d, 0, Duration::from_secs(5)).is_err() {
                return;
            }
            i += 1;
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let began = Instant::now();
    let status = t.signal_and_wait(libc::SIGTERM, Duration::from_secs(10)).expect("palisade did not exit after SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert!(began.elapsed() < Duration::from_secs(5), "shutdown took {:?}", began.elapsed());
    stop.store(true, Ordering::Relaxed);
    io.join().unwrap();
}

#[test]
fn management_and_save_config_round_trip() {
    let port = free_port();
    let t = start(port);
    t.rpc("bdev_malloc_create", json!({"name": "Malloc1", "num_blocks": 2048, "block_size": 4096}));
    t.rpc("iscsi_create_auth_group", json!({"tag": 3, "secrets": [{"user": "u", "secret": "s3cretsecret"}]}));
    node(&t, json!({"header_digest": false}));
    t.rpc("iscsi_target_node_add_lun", json!({"name": IQN, "bdev_name": "Malloc1", "lun_id": 1}));
    // rpc.py-style command lines.
    let cli = |args: &[&str]| {
        let out = Command::new(common::BIN).args(["rpc", "-s", t.sock_str()]).args(args).output().unwrap();
        assert!(out.status.success(), "palisade rpc {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    cli(&["iscsi_create_initiator_group", "7", "iqn.a,iqn.b", "10.0.0.0/8"]);
    assert!(cli(&["iscsi_get_initiator_groups"]).contains("iqn.b"));
    cli(&["iscsi_delete_initiator_group", "7"]);
    // Errors change nothing.
    assert!(t.try_rpc("iscsi_create_target_node", Some(json!({"name": "disk1", "alias_name": "", "luns": [{"bdev_name": "Malloc0", "lun_id": 0}],
        "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 1}], "queue_depth": 8}))).is_err());
    assert!(t.try_rpc("iscsi_create_target_node", Some(json!({"name": "x", "alias_name": "", "luns": [{"bdev_name": "Malloc0", "lun_id": 0}],
        "pg_ig_maps": [{"pg_tag": 9, "ig_tag": 1}], "queue_depth": 8}))).is_err());
    assert!(t.try_rpc("iscsi_create_portal_group", Some(json!({"tag": 1, "portals": [{"host": "127.0.0.1", "port": "1"}]}))).is_err());
    assert!(t.try_rpc("iscsi_create_initiator_group", Some(json!({"tag": 5, "initiators": ["ANY"], "netmasks": ["ANY"], "bogus": 1}))).is_err());
    assert!(t.try_rpc("iscsi_set_options", Some(json!({"node_base": "iqn.x"}))).is_err(), "iscsi_set_options is a startup-time method");
    let nodes = t.rpc("iscsi_get_target_nodes", json!(null));
    assert_eq!(nodes[0]["name"], IQN);
    let groups = (t.rpc("iscsi_get_portal_groups", json!(null)), t.rpc("iscsi_get_initiator_groups", json!(null)), t.rpc("iscsi_get_auth_groups", json!(null)));
    assert_eq!(nodes[0]["luns"].as_array().unwrap().len(), 2);
    assert_eq!(t.rpc("iscsi_get_portal_groups", json!(null))[0]["portals"][0]["port"], port.to_string());
    assert_eq!(t.rpc("iscsi_get_initiator_groups", json!(null))[0]["netmasks"][0], "127.0.0.1/32");
    assert_eq!(t.rpc("iscsi_get_options", json!(null))["node_base"], "iqn.2016-06.io.spdk");
    let s = login(port, "iqn.test:conn").unwrap();
    let conns = t.rpc("iscsi_get_connections", json!(null));
    assert_eq!(conns[0]["target_node_name"], IQN);
    assert_eq!(conns[0]["initiator_addr"], "127.0.0.1");
    drop(s);
    let cfg = t.rpc("save_config", json!(null));
    let iscsi = cfg["subsystems"].as_array().unwrap().iter().find(|s| s["subsystem"] == "iscsi").unwrap().clone();
    let methods: Vec<&str> = iscsi["config"].as_array().unwrap().iter().map(|e| e["method"].as_str().unwrap()).collect();
    assert_eq!(methods[0], "iscsi_set_options");
    assert_eq!(*methods.last().unwrap(), "iscsi_create_target_node");
    t.stop();
    // The saved config restarts to the same export.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("saved.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let t2 = Target::start(&["-m", "0x1", "-c", path.to_str().unwrap()]);
    let mut s = login_retry(port, "iqn.test:again");
    write_read(&mut s, 0, 8, 5);
    let (c, _) = cmd(&mut s, 1, &read16(0, 1), &[], 4096, Duration::from_secs(10)).unwrap();
    assert_eq!(c.status, 0, "LUN 1 restored");
    s.logout().unwrap();
    assert_eq!(t2.rpc("iscsi_get_target_nodes", json!(null)), nodes);
    let again = (t2.rpc("iscsi_get_portal_groups", json!(null)), t2.rpc("iscsi_get_initiator_groups", json!(null)), t2.rpc("iscsi_get_auth_groups", json!(null)));
    assert_eq!(again, groups);
    t2.stop();
}

#[test]
fn nop_in_pings_idle_connections_and_drops_dead_ones() {
    let port = free_port();
    let t = Target::start(&["-m", "0x1", "--wait-for-rpc"]);
    t.rpc("iscsi_set_options", json!({"nop_in_interval": 1, "nop_timeout": 1}));
    t.rpc("framework_start_init", json!(null));
    t.rpc("bdev_malloc_create", json!({"name": "Malloc0", "num_blocks": 2048, "block_size": 512}));
    t.rpc("iscsi_create_portal_group", json!({"tag": 1, "portals": [{"host": "127.0.0.1", "port": port.to_string()}]}));
    t.rpc("iscsi_create_initiator_group", json!({"tag": 1, "initiators": ["ANY"], "netmasks": ["ANY"]}));
    node(&t, json!({}));
    // A live initiator answers the pings and keeps its session; the target answers its pings.
    let mut live = login(port, "iqn.test:live").unwrap();
    assert_eq!(live.ping(b"are you there", Duration::from_secs(5)).unwrap(), b"are you there");
    // A connection that logs in and then never answers is dropped.
    let dead = login(port, "iqn.test:dead").unwrap();
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        live.poll(Duration::from_millis(100), &mut |_, _| {}).unwrap();
    }
    write_read(&mut live, 0, 1, 3);
    let conns = t.rpc("iscsi_get_connections", json!(null));
    let names: Vec<String> = conns.as_array().unwrap().iter().map(|c| c["initiator_name"].as_str().unwrap().to_string()).collect();
    assert!(names.contains(&"iqn.test:live".to_string()), "{names:?}");
    assert!(!names.contains(&"iqn.test:dead".to_string()), "an unresponsive connection must be dropped: {names:?}");
    drop(dead);
    live.logout().unwrap();
    t.stop();
}

#[test]
fn session_reinstatement_replaces_the_old_session() {
    let port = free_port();
    let t = start(port);
    node(&t, json!({}));
    let o = LoginOptions::new("iqn.test:reinstate", Some(IQN));
    let mut first = Session::connect("127.0.0.1", port, &o, 4).unwrap();
    write_read(&mut first, 0, 1, 1);
    // Same initiator name and ISID: the new login reinstates the session, the old one goes.
    let mut second = Session::connect("127.0.0.1", port, &o, 4).unwrap();
    write_read(&mut second, 0, 1, 2);
    assert!(cmd(&mut first, 0, &read16(0, 1), &[], 512, Duration::from_secs(5)).is_err(), "the old session must be closed");
    let conns = t.rpc("iscsi_get_connections", json!(null));
    assert_eq!(conns.as_array().unwrap().len(), 1, "{conns}");
    second.logout().unwrap();
    t.stop();
}

/// tgtd with one RAM-file LUN, shut down as PEERS.md says (it ignores SIGTERM while it has targets).
struct Tgt {
    child: std::process::Child,
    ctl: String,
    file: std::path::PathBuf,
}

impl Tgt {
    fn start(port: u16, iqn: &str) -> Tgt {
        let ctl = (100 + port % 800).to_string();
        let file = std::path::PathBuf::from(format!("/dev/shm/palisade-test-tgt-{port}.img"));
        std::fs::write(&file, vec![0u8; 16 << 20]).unwrap();
        let child = Command::new("tgtd")
            .args(["-f", "-C", &ctl, "--iscsi", &format!("portal=127.0.0.1:{port}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start tgtd");
        let adm = |args: &[&str]| Command::new("tgtadm").arg("-C").arg(&ctl).args(args).status().map(|s| s.success()).unwrap_or(false);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !adm(&["--op", "show", "--mode", "system"]) {
            assert!(Instant::now() < deadline, "tgtd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let t = Tgt { child, ctl: ctl.clone(), file: file.clone() };
        assert!(adm(&["--lld", "iscsi", "--mode", "target", "--op", "new", "--tid", "1", "--targetname", iqn]));
        assert!(adm(&["--lld", "iscsi", "--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", "1", "--backing-store", file.to_str().unwrap(), "--bstype", "rdwr"]));
        assert!(adm(&["--lld", "iscsi", "--mode", "target", "--op", "bind", "--tid", "1", "--initiator-address", "ALL"]));
        t
    }
}

impl Drop for Tgt {
    fn drop(&mut self) {
        let adm = |args: &[&str]| Command::new("tgtadm").arg("-C").arg(&self.ctl).args(args).status();
        let _ = adm(&["--lld", "iscsi", "--mode", "target", "--op", "delete", "--force", "--tid", "1"]);
        let _ = adm(&["--op", "delete", "--mode", "system"]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_file(&self.file);
    }
}

#[test]
fn initiator_works_against_tgt() {
    if !require("tgtd") {
        return;
    }
    let port = free_port();
    let iqn = "iqn.2024-01.io.palisade:tgt-peer";
    let _tgt = Tgt::start(port, iqn);
    let mut d = Session::connect("127.0.0.1", port, &LoginOptions::new("iqn.test:peer", None), 1).unwrap();
    let list = d.send_targets("All").unwrap();
    assert!(list.iter().any(|(n, _)| n == iqn), "{list:?}");
    // tgt negotiates InitialR2T=Yes, MaxOutstandingR2T=1 and an 8 KiB MaxRecvDataSegmentLength:
    // writes above FirstBurstLength go through R2Ts, reads arrive in many Data-In PDUs.
    let mut s = Session::connect("127.0.0.1", port, &LoginOptions::new("iqn.test:peer", Some(iqn)), 32).unwrap();
    for (i, blocks) in [1u32, 8, 300, 2048].iter().enumerate() {
        let data = pattern(i as u64, *blocks as usize * 512);
        let (c, _) = cmd(&mut s, 1, &write16(i as u64 * 4096, *blocks), &data, 0, Duration::from_secs(20)).unwrap();
        assert_eq!(c.status, 0, "{c:?}");
        let (c, back) = cmd(&mut s, 1, &read16(i as u64 * 4096, *blocks), &[], data.len(), Duration::from_secs(20)).unwrap();
        assert_eq!(c.status, 0);
        assert!(back == data, "tgt returned different data ({blocks} blocks)");
    }
    s.logout().unwrap();
    // The perf queue (READ CAPACITY, depth) works against tgt too.
    let mut q = palisade::cli::perf::iscsi::connect("127.0.0.1", port, iqn, 1, "iqn.test:perf", None, 1, 1, 16, false, false).unwrap();
    assert_eq!(q[0].num_blocks(), (16 << 20) / 512);
    for tag in 0..16u32 {
        q[0].submit(tag, false, tag as u64 * 8, 8, &[]).unwrap();
    }
    let mut n = 0;
    while n < 16 {
        q[0].poll(Duration::from_secs(10), &mut |_, r, d| {
            assert!(r.is_ok() && d.len() == 4096);
            n += 1;
        })
        .unwrap();
    }
}

#[test]
fn discovery_chap() {
    let port = free_port();
    let t = start(port);
    node(&t, json!({}));
    t.rpc("iscsi_create_auth_group", json!({"tag": 9, "secrets": [{"user": "disc", "secret": "discoverysecret"}]}));
    t.rpc("iscsi_set_discovery_auth", json!({"require_chap": true, "chap_group": 9}));
    let mut o = LoginOptions::new("iqn.test:disc-chap", None);
    let e = Session::connect("127.0.0.1", port, &o, 1).err().expect("discovery without CHAP must be refused");
    assert!(e.to_string().contains("02/01"), "{e}");
    o.chap = Some(("disc".into(), "discoverysecret".into()));
    let mut d = Session::connect("127.0.0.1", port, &o, 1).unwrap();
    assert_eq!(d.send_targets("All").unwrap().len(), 1);
    // Normal sessions follow the node's policy, not the discovery one.
    login(port, "iqn.test:plain").unwrap().logout().unwrap();
    t.stop();
}

#[test]
fn deleting_node_and_portal_group_stops_service() {
    let port = free_port();
    let t = start(port);
    node(&t, json!({}));
    let mut s = login(port, "iqn.test:delete").unwrap();
    write_read(&mut s, 0, 1, 1);
    t.rpc("iscsi_delete_target_node", json!({"name": IQN}));
    assert!(cmd(&mut s, 0, &read16(0, 1), &[], 512, Duration::from_secs(5)).is_err(), "sessions of a deleted node must end");
    let e = login(port, "iqn.test:delete").err().expect("deleted node must not accept logins");
    assert!(e.to_string().contains("02/03"), "{e}");
    // The bdev is free again once no node claims it.
    t.rpc("bdev_malloc_delete", json!({"name": "Malloc0"}));
    t.rpc("iscsi_delete_portal_group", json!({"tag": 1}));
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < deadline, "portal still listening after iscsi_delete_portal_group");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(t.try_rpc("iscsi_delete_portal_group", Some(json!({"tag": 1}))).is_err());
    t.stop();
}

#[test]
fn unsupported_pdu_is_rejected_and_the_session_continues() {
    let port = free_port();
    let t = start(port);
    node(&t, json!({}));
    let mut s = login(port, "iqn.test:reject").unwrap();
    write_read(&mut s, 0, 1, 1);
    // SNACK needs ErrorRecoveryLevel > 0: Reject with "command not supported" (0x05).
    let mut h = Bhs::new(op::SNACK, 0x80);
    h.set_itt(pdu::RESERVED_TAG);
    let mut bytes = Vec::new();
    pdu::encode(&mut bytes, &h, &[], &[], false, false);
    s.raw_write(&bytes).unwrap();
    let e = s.poll(Duration::from_secs(5), &mut |_, _| {}).expect_err("a Reject must arrive");
    assert!(e.to_string().contains("reason 0x5"), "{e}");
    write_read(&mut s, 0, 1, 2);
    s.logout().unwrap();
    t.stop();
}
