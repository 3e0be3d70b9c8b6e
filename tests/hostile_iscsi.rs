//! iSCSI tried as an attacker would, against the built binary: login stages named out of order to
//! step around CHAP, duplicate keys, responses longer than a login PDU, discovery sessions that
//! would starve normal logins, connection floods. Each case was a finding; the target must refuse
//! the abuse with the spec's status and keep serving a well-behaved initiator.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::hostile::{hwm_kib, max_stall_us, report, rss_kib, Figures, RawLogin, Resp};
use common::{free_port, Target};
use palisade::iscsi::initiator::{LoginOptions, Session};
use palisade::iscsi::pdu::{self, op, Bhs};
use serde_json::json;

const IQN: &str = "iqn.2016-06.io.spdk:disk1";

fn start(port: u16) -> Target {
    start_with(port, json!({}))
}

/// A target whose iSCSI options (startup-only, as in SPDK) are set before framework_start_init.
fn start_with(port: u16, iscsi_options: serde_json::Value) -> Target {
    let t = Target::start(&["-m", "0x1", "--wait-for-rpc"]);
    t.rpc("iscsi_set_options", iscsi_options);
    t.rpc("framework_start_init", serde_json::Value::Null);
    t.rpc("bdev_malloc_create", json!({"name": "Malloc0", "num_blocks": 16384, "block_size": 512}));
    t.rpc("iscsi_create_portal_group", json!({"tag": 1, "portals": [{"host": "127.0.0.1", "port": port.to_string()}]}));
    t.rpc("iscsi_create_initiator_group", json!({"tag": 1, "initiators": ["ANY"], "netmasks": ["127.0.0.1/32"]}));
    t.rpc("iscsi_create_auth_group", json!({"tag": 1, "secrets": [
        {"user": "alice", "secret": "alicesecret1", "muser": "tgt", "msecret": "targetsecret"}]}));
    t
}

fn node(t: &Target, extra: serde_json::Value) {
    let mut p = json!({"name": "disk1", "alias_name": "", "luns": [{"bdev_name": "Malloc0", "lun_id": 0}],
        "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 1}], "queue_depth": 32});
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    t.rpc("iscsi_create_target_node", p);
}

fn expect_refused(r: &Resp, what: &str) {
    assert!(r.class == 2, "{what}: login must be refused with an initiator error class, got {:02x}/{:02x} flags {:#x}", r.class, r.detail, r.flags);
    assert_eq!(r.tsih, 0, "{what}: no session may be created");
}

const FF: u8 = 0x8f; // T=1, CSG=3, NSG=3
const OP_TO_FF: u8 = 0x87; // T=1, CSG=1, NSG=3
const SEC_TO_OP: u8 = 0x81; // T=1, CSG=0, NSG=1

#[test]
fn chap_cannot_be_stepped_around() {
    let port = free_port();
    let t = start(port);
    node(&t, json!({"require_chap": true, "chap_group": 1}));
    t.rpc("iscsi_create_target_node", json!({"name": "disk2", "alias_name": "", "luns": [{"bdev_name": "Malloc0", "lun_id": 0}],
        "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 1}], "queue_depth": 8, "require_chap": true, "mutual_chap": true, "chap_group": 1}));
    t.rpc("iscsi_set_discovery_auth", json!({"require_chap": true, "chap_group": 1}));
    let names = "InitiatorName=iqn.test:attacker\nTargetName=iqn.2016-06.io.spdk:disk1\n";
    let mutual = "InitiatorName=iqn.test:attacker\nTargetName=iqn.2016-06.io.spdk:disk2\n";
    let disc = "InitiatorName=iqn.test:attacker\nSessionType=Discovery\n";

    // 1. CSG=3 (reserved) in the first PDU: straight to full feature phase.
    for (text, what) in [(names, "require_chap"), (mutual, "mutual_chap"), (disc, "discovery require_chap")] {
        let mut c = RawLogin::connect(port);
        let r = c.step(FF, text);
        expect_refused(&r, what);
        assert_eq!((r.class, r.detail), (2, 0), "{what}: CSG=3 is an initiator error");
        assert!(!c.read_works(), "{what}: READ after a refused login");
    }
    // 2. A CHAP exchange started without transit, then CSG=3.
    let mut c = RawLogin::connect(port);
    let r = c.step(0x00, &format!("{names}AuthMethod=CHAP\n"));
    assert_eq!(r.class, 0);
    expect_refused(&c.step(FF, ""), "CHAP begun, then CSG=3");
    // 3. Skipping the security stage (CSG=1) on nodes that require CHAP, one-way or mutual only.
    for (text, what) in [(names, "require_chap"), (mutual, "mutual_chap"), (disc, "discovery")] {
        let mut c = RawLogin::connect(port);
        expect_refused(&c.step(OP_TO_FF, text), what);
    }
    // 4. CHAP offered, then the operational stage named before any response.
    let mut c = RawLogin::connect(port);
    assert_eq!(c.step(0x00, &format!("{names}AuthMethod=CHAP\n")).class, 0);
    assert_eq!(c.step(0x00, "CHAP_A=5\n").class, 0);
    expect_refused(&c.step(OP_TO_FF, ""), "CHAP challenge unanswered, CSG=1");
    // 5. AuthMethod=None asked where CHAP is required.
    let mut c = RawLogin::connect(port);
    expect_refused(&c.step(SEC_TO_OP, &format!("{mutual}AuthMethod=None\n")), "AuthMethod=None on mutual_chap");

    // The polite initiator with the right secret still gets in and reads back its data.
    let mut o = LoginOptions::new("iqn.test:good", Some(IQN));
    o.chap = Some(("alice".into(), "alicesecret1".into()));
    let mut s = Session::connect("127.0.0.1", port, &o, 4).unwrap();
    let data = vec![0x5a; 4096];
    let mut w = [0u8; 10];
    w[0] = 0x2a;
    w[8] = 8;
    let (c, _) = s.command(0, &w, &data, 0, Duration::from_secs(10)).unwrap();
    let c = if c.status == 2 { s.command(0, &w, &data, 0, Duration::from_secs(10)).unwrap().0 } else { c };
    assert_eq!(c.status, 0);
    let mut rd = w;
    rd[0] = 0x28;
    let (c, back) = s.command(0, &rd, &[], 4096, Duration::from_secs(10)).unwrap();
    assert_eq!(c.status, 0);
    assert_eq!(back, data);
    s.logout().unwrap();
    t.stop();
}

#[test]
fn duplicate_keys_are_an_initiator_error() {
    let port = free_port();
    let t = start(port);
    node(&t, json!({}));
    let names = "InitiatorName=iqn.test:dup\nTargetName=iqn.2016-06.io.spdk:disk1\n";
    // Twice in one PDU.
    let mut c = RawLogin::connect(port);
    let r = c.step(SEC_TO_OP, &format!("{names}AuthMethod=None\nAuthMethod=None\n"));
    expect_refused(&r, "AuthMethod twice");
    assert_eq!((r.class, r.detail), (2, 0));
    let mut c = RawLogin::connect(port);
    assert_eq!(c.step(SEC_TO_OP, &format!("{names}AuthMethod=None\n")).class, 0);
    expect_refused(&c.step(OP_TO_FF, "MaxBurstLength=65536\nMaxBurstLength=262144\n"), "MaxBurstLength twice");
    // Declared again in a later PDU with another value.
    let mut c = RawLogin::connect(port);
    assert_eq!(c.step(SEC_TO_OP, &format!("{names}AuthMethod=None\n")).class, 0);
    assert_eq!(c.step(0x04, "MaxBurstLength=65536\n").class, 0);
    expect_refused(&c.step(OP_TO_FF, "MaxBurstLength=262144\n"), "MaxBurstLength renegotiated");
    // The session's names may be repeated unchanged (libiscsi does), and the login completes.
    let mut c = RawLogin::connect(port);
    assert_eq!(c.step(SEC_TO_OP, &format!("{names}AuthMethod=None\n")).class, 0);
    let r = c.step(OP_TO_FF, &format!("{names}HeaderDigest=None\n"));
    assert_eq!((r.class, r.flags & 0x83), (0, 0x83));
    assert!(c.read_works());
    t.stop();
}

#[test]
fn long_login_response_is_continued() {
    let port = free_port();
    let t = start(port);
    node(&t, json!({}));
    let mut c = RawLogin::connect(port);
    let names = "InitiatorName=iqn.test:long\nTargetName=iqn.2016-06.io.spdk:disk1\nAuthMethod=None\n";
    // 400 private keys the target answers NotUnderstood: about 16 KiB of answer. The request goes
    // in pieces of at most 8 KiB (C bit), as an initiator must send it.
    let keys: String = (0..400).map(|i| format!("X-palisade-test-{i:04}=1\n")).collect();
    let whole = format!("{names}{keys}");
    let bytes = whole.as_bytes();
    let mut at = 0;
    while bytes.len() - at > 8192 {
        let cut = whole[..at + 8192].rfind('\n').unwrap() + 1;
        let r = c.step(0x40, &whole[at..cut]); // C=1, CSG=0
        assert_eq!(r.class, 0);
        at = cut;
    }
    let mut r = c.step(SEC_TO_OP, &whole[at..]);
    let mut text = Vec::new();
    let mut pieces = 0;
    loop {
        assert_eq!(r.class, 0, "login failed");
        assert!(r.text.len() <= 8192, "a login response of {} bytes exceeds the initiator's 8192", r.text.len());
        text.extend_from_slice(&r.text);
        pieces += 1;
        if r.flags & 0x40 == 0 {
            break;
        }
        assert_eq!(r.flags & 0x80, 0, "C and T together");
        r = c.step(0x00, "");
    }
    assert!(pieces >= 2, "the response should have needed several PDUs");
    assert_eq!(r.flags & 0x83, 0x81, "the last piece carries the transit to the operational stage");
    let pairs = pdu::parse_text(&text).unwrap();
    assert_eq!(pairs.iter().filter(|(_, v)| v == "NotUnderstood").count(), 400);
    let r = c.step(OP_TO_FF, "HeaderDigest=None\n");
    assert_eq!((r.class, r.flags & 0x83), (0, 0x83));
    assert!(c.read_works());
    t.stop();
}

#[test]
fn discovery_sessions_do_not_starve_normal_logins() {
    let port = free_port();
    let t = start_with(port, json!({"max_sessions": 4, "max_discovery_sessions": 6}));
    node(&t, json!({}));
    let mut disc = Vec::new();
    for i in 0..6 {
        disc.push(Session::connect("127.0.0.1", port, &LoginOptions::new(&format!("iqn.test:d{i}"), None), 1).unwrap());
    }
    let e = Session::connect("127.0.0.1", port, &LoginOptions::new("iqn.test:d-extra", None), 1).err().expect("discovery cap");
    assert!(e.to_string().contains("03/02"), "{e}");
    // Normal sessions have their own budget.
    let mut normal = Vec::new();
    for i in 0..4 {
        normal.push(Session::connect("127.0.0.1", port, &LoginOptions::new(&format!("iqn.test:n{i}"), Some(IQN)), 4).unwrap());
    }
    let e = Session::connect("127.0.0.1", port, &LoginOptions::new("iqn.test:n-extra", Some(IQN)), 4).err().expect("session cap");
    assert!(e.to_string().contains("03/02"), "{e}");
    for s in disc.drain(..) {
        s.logout().unwrap();
    }
    normal.pop().unwrap().logout().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Session::connect("127.0.0.1", port, &LoginOptions::new("iqn.test:n-again", Some(IQN)), 4) {
            Ok(s) => {
                s.logout().unwrap();
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "a freed session slot was not reused: {e}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    t.stop();
}

/// Wait (up to 10 s) for the target's RSS to come back within 64 MiB of `base`; returns it.
fn settle(t: &Target, base: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = rss_kib(t);
        if now < base + (64 << 10) {
            return now;
        }
        assert!(Instant::now() < deadline, "RSS {now} KiB did not return near its baseline {base} KiB");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether the target closed this connection (without waiting).
fn is_closed(c: &TcpStream) -> bool {
    c.set_nonblocking(true).unwrap();
    let r = match (&*c).read(&mut [0u8; 1]) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    c.set_nonblocking(false).unwrap();
    r
}


#[test]
fn connection_flood_is_capped_and_idle_connections_are_cheap() {
    let port = free_port();
    let t = start_with(port, json!({"max_connections": 400, "max_prelogin_connections": 300, "login_timeout": 3}));
    node(&t, json!({}));
    // A session logged in before the flood keeps working through it.
    let mut good = Session::connect("127.0.0.1", port, &LoginOptions::new("iqn.test:good", Some(IQN)), 4).unwrap();
    let base = rss_kib(&t);
    // 350 connections that never log in: 300 are held (pre-login budget), the rest refused.
    let mut idle = Vec::new();
    for _ in 0..350 {
        idle.push(TcpStream::connect(("127.0.0.1", port)).unwrap());
    }
    // Those past the budget are closed by the target at once.
    std::thread::sleep(Duration::from_millis(500));
    let closed = idle.iter().filter(|c| is_closed(c)).count();
    assert_eq!(closed, 50, "connections past max_prelogin_connections must be closed");
    let with_idle = rss_kib(&t);
    let per_conn = (with_idle.saturating_sub(base) * 1024) / 300;
    assert!(per_conn < 48 * 1024, "an idle connection costs {per_conn} bytes");
    let data = vec![0xa5u8; 512];
    let mut w = [0u8; 10];
    w[0] = 0x2a;
    w[8] = 1;
    let _ = good.command(0, &w, &data, 0, Duration::from_secs(10)).unwrap();
    let (c, _) = good.command(0, &w, &data, 0, Duration::from_secs(10)).unwrap();
    assert_eq!(c.status, 0);
    // The login timer closes the half-open ones; then new connections are accepted again.
    std::thread::sleep(Duration::from_secs(5));
    let mut c = RawLogin::connect(port);
    let r = c.step(SEC_TO_OP, "InitiatorName=iqn.test:late\nTargetName=iqn.2016-06.io.spdk:disk1\nAuthMethod=None\n");
    assert_eq!(r.class, 0, "a connection after the flood timed out must be served");
    assert!(idle.iter().all(is_closed), "idle connections still open after the login timeout");
    let stall = max_stall_us(&t);
    assert!(stall < 100_000, "a reactor loop took {stall} us");
    drop(idle);
    let after = settle(&t, base);
    report("iscsi: 350 connections that never log in (300 held, 50 refused)", &Figures { baseline_kib: base, peak_kib: with_idle, after_kib: after, stall_us: stall });
    good.logout().unwrap();
    t.stop();
}


/// Reads of 32 MiB a client never takes, and writes of 32 MiB whose data never comes: each
/// connection holds at most its share of the data-buffer budget, the rest wait (not fail), and a
/// polite initiator keeps reading back its data meanwhile.
#[test]
fn undrained_reads_and_dataless_writes_are_bounded() {
    let port = free_port();
    let t = start_with(port, json!({"max_queue_depth": 128}));
    t.rpc("bdev_malloc_create", json!({"name": "Big", "num_blocks": 131072, "block_size": 512}));
    t.rpc("iscsi_create_target_node", json!({"name": "big", "alias_name": "", "luns": [{"bdev_name": "Big", "lun_id": 0}],
        "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 1}], "queue_depth": 128}));
    node(&t, json!({}));
    let big = "iqn.2016-06.io.spdk:big";
    let mut good = Session::connect("127.0.0.1", port, &LoginOptions::new("iqn.test:polite", Some(IQN)), 4).unwrap();
    let check = |s: &mut Session, seed: u8| common::hostile::iscsi_write_read(s, seed, 64);
    check(&mut good, 1);
    let base = rss_kib(&t);
    let mut abusers = Vec::new();
    for i in 0..3 {
        let name = format!("iqn.test:reader{i}");
        abusers.push(undrained_target(port, &name, big, 72, 65536, false));
    }
    abusers.push(undrained_target(port, "iqn.test:writer", big, 72, 65536, true));
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut round = 2u8;
    while Instant::now() < deadline {
        check(&mut good, round);
        round = round.wrapping_add(1);
    }
    let peak = hwm_kib(&t);
    assert!(peak < 1 << 20, "target peaked at {peak} KiB with undrained 32 MiB reads (limit 1 GiB)");
    let st = t.rpc("framework_get_reactors", serde_json::Value::Null);
    let b = &st["data_buffers"]["iscsi"];
    assert!(b["waits"].as_u64().unwrap() > 0, "commands should have waited for buffers: {b}");
    assert!(b["high_water"].as_u64().unwrap() <= b["limit"].as_u64().unwrap(), "{b}");
    // This call read (and reset) the reactors' longest loop too.
    let stall = st["reactors"].as_array().unwrap().iter().filter_map(|r| r["max_loop_us"].as_u64()).max().unwrap_or(0).max(max_stall_us(&t));
    assert!(stall < 100_000, "a reactor loop took {stall} us");
    drop(abusers);
    let after = settle(&t, base);
    report("iscsi: 3 sessions x 72 undrained 32 MiB READs + 72 dataless 32 MiB WRITEs", &Figures { baseline_kib: base, peak_kib: peak, after_kib: after, stall_us: stall });
    check(&mut good, 99);
    good.logout().unwrap();
    t.stop();
}

/// A raw session on `target` that sends `n` commands of `blocks` 512-byte blocks and never reads
/// its socket (nor sends write data).
fn undrained_target(port: u16, name: &str, target: &str, n: u32, blocks: u32, write: bool) -> TcpStream {
    let mut c = RawLogin::connect(port);
    let r = c.step(SEC_TO_OP, &format!("InitiatorName={name}\nTargetName={target}\nAuthMethod=None\n"));
    assert_eq!(r.class, 0);
    let r = c.step(OP_TO_FF, "InitialR2T=Yes\nImmediateData=No\n");
    assert_eq!((r.class, r.flags & 0x83), (0, 0x83));
    let mut out = Vec::new();
    for i in 0..n {
        let mut b = Bhs::new(op::SCSI_CMD, pdu::F_FINAL | if write { pdu::F_WRITE } else { pdu::F_READ } | 1);
        b.set_itt(1000 + i);
        b.set_u32(20, blocks * 512);
        b.set_u32(24, 1 + i);
        let mut cdb = [0u8; 16];
        cdb[0] = if write { 0x8a } else { 0x88 };
        cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
        b.0[32..48].copy_from_slice(&cdb);
        pdu::encode(&mut out, &b, &[], &[], false, false);
    }
    c.sock.write_all(&out).unwrap();
    c.sock
}
