//! iSCSI sessions of several connections (MC/S, RFC 7143 §6.2) against the built target on two
//! reactors: one session over both reactors, CmdSN order across connections, logout of one
//! connection or of the session, the MaxConnections bound and logins naming no session, and
//! `palisade perf --connections`.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{free_port, Target, BIN};
use palisade::iscsi::initiator::{Completion, LoginOptions, Session};
use serde_json::{json, Value};

const IQN: &str = "iqn.2016-06.io.palisade:mcs";
const INITIATOR: &str = "iqn.2024-01.io.palisade:mcs-test";

fn export(port: u16, max_conns: u32) -> Value {
    json!({"subsystems": [
        {"subsystem": "bdev", "config": [
            {"method": "bdev_malloc_create", "params": {"name": "M0", "num_blocks": 32768, "block_size": 512}}]},
        {"subsystem": "iscsi", "config": [
            {"method": "iscsi_set_options", "params": {"max_connections_per_session": max_conns}},
            {"method": "iscsi_create_portal_group", "params": {"tag": 1, "portals": [{"host": "127.0.0.1", "port": port.to_string()}]}},
            {"method": "iscsi_create_initiator_group", "params": {"tag": 1, "initiators": ["ANY"], "netmasks": ["127.0.0.1/32"]}},
            {"method": "iscsi_create_target_node", "params": {"name": IQN, "alias_name": "mcs disk", "luns": [{"bdev_name": "M0", "lun_id": 0}],
                "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 1}], "queue_depth": 64, "disable_chap": true}}]}
    ]})
}

fn start(max_conns: u32) -> (Target, u16) {
    let port = free_port();
    let t = Target::start_with_config(&export(port, max_conns), &["-m", "0x3"]);
    (t, port)
}

fn opts() -> LoginOptions {
    LoginOptions::new(INITIATOR, Some(IQN))
}

const T: Duration = Duration::from_secs(10);

fn write10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0x2a, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn read10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = write10(lba, blocks);
    c[0] = 0x28;
    c
}

/// A command that must succeed, retried past unit attentions (the first command of a session).
fn ok(s: &mut Session, cdb: &[u8], write: &[u8], read_len: usize) -> Vec<u8> {
    for _ in 0..3 {
        let (c, d) = s.command(0, cdb, write, read_len, T).unwrap();
        if c.status == 0 {
            return d;
        }
        assert!(c.status == 2 && c.sense.get(2).map(|k| k & 0xf) == Some(6), "{c:?}");
    }
    panic!("unit attentions do not stop");
}

/// Completions of `s` within `wait`.
fn completions(s: &mut Session, wait: Duration) -> Vec<Completion> {
    let mut out = Vec::new();
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        s.poll(Duration::from_millis(20), &mut |c, _| out.push(c)).unwrap();
    }
    out
}

fn login_error(r: std::io::Result<Session>) -> String {
    match r {
        Ok(_) => panic!("login accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn one_session_two_connections_on_two_reactors() {
    let (t, port) = start(2);
    let o = opts();
    let mut conns = Session::connect_mcs("127.0.0.1", port, &o, 8, 2).unwrap();
    assert_eq!(conns.len(), 2);
    assert_eq!(conns[0].params.max_connections, 2);
    let v = t.rpc("iscsi_get_connections", Value::Null);
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 2, "{v}");
    assert_eq!(list[0]["tsih"], list[1]["tsih"], "{v}");
    assert_eq!(list[0]["tsih"].as_u64().unwrap(), conns[0].params.tsih as u64);
    assert_ne!(list[0]["lcore_id"], list[1]["lcore_id"], "both connections on one reactor: {v}");
    assert_ne!(list[0]["cid"], list[1]["cid"], "{v}");

    // One logical unit seen through both: written on one, read on the other.
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    ok(&mut conns[1], &write10(100, 8), &data, 0);
    assert_eq!(ok(&mut conns[0], &read10(100, 8), &[], 4096), data);

    // Closing connection 1 from connection 0 (reason 1 with its CID) leaves connection 0 working.
    let mut b = conns.pop().unwrap();
    let mut a = conns.pop().unwrap();
    assert_eq!(a.logout_request(1, 1).unwrap(), 0);
    let deadline = Instant::now() + T;
    while t.rpc("iscsi_get_connections", Value::Null).as_array().unwrap().len() != 1 {
        assert!(Instant::now() < deadline, "connection 1 still listed");
        std::thread::sleep(Duration::from_millis(20));
    }
    // (An immediate request: a command would take a CmdSN of the session that never arrives.)
    assert!(b.logout_request(0, 0).is_err(), "connection 1 still answers");
    assert_eq!(ok(&mut a, &read10(100, 8), &[], 4096), data);
    // An unknown CID: "CID not found" (1); recovery removal at ErrorRecoveryLevel 0: 2.
    assert_eq!(a.logout_request(1, 7).unwrap(), 1);
    assert_eq!(a.logout_request(2, 1).unwrap(), 2);
    // A new connection can join again with the freed CID.
    let mut c = a.add_connection("127.0.0.1", port, &o, 8, 1).unwrap();
    assert_eq!(ok(&mut c, &read10(100, 8), &[], 4096), data);
    drop(b);

    // Logout reason 0 on one connection ends the whole session.
    a.logout().unwrap();
    let deadline = Instant::now() + T;
    while !t.rpc("iscsi_get_connections", Value::Null).as_array().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the session's other connection outlived the logout");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(c.logout_request(0, 0).is_err(), "connection 1 outlived the session");
    t.stop();
}

#[test]
fn commands_run_in_cmdsn_order_across_connections() {
    let (t, port) = start(2);
    let mut conns = Session::connect_mcs("127.0.0.1", port, &opts(), 8, 2).unwrap();
    let mut b = conns.pop().unwrap();
    let mut a = conns.pop().unwrap();
    // The first write a reactor sends to a volume waits for its write-tracking proxy to be set
    // up (see volume::pr_gate); one each beforehand, so what is compared below is submit order.
    ok(&mut a, &write10(0, 1), &[1; 512], 0);
    ok(&mut b, &write10(1, 1), &[2; 512], 0);
    // Small writes go as immediate data; large ones need R2Ts (FirstBurstLength 64 KiB).
    for (round, blocks) in [(1u8, 8u16), (2, 512)] {
        let len = blocks as usize * 512;
        let first = vec![0x10 + round; len];
        let second = vec![0x20 + round; len];
        let lba = 1000 * round as u32;
        // CmdSN N is taken on A but not sent; N+1 goes out on B first.
        a.submit(1, 0, &write10(lba, blocks), &first, 0).unwrap();
        b.submit(1, 0, &write10(lba, blocks), &second, 0).unwrap();
        let early = completions(&mut b, Duration::from_millis(300));
        assert!(early.is_empty(), "CmdSN N+1 ran before CmdSN N arrived: {early:?}");
        let got_a = completions(&mut a, Duration::from_millis(300));
        assert_eq!(got_a.len(), 1, "{got_a:?}");
        assert_eq!(got_a[0].status, 0);
        let got_b = completions(&mut b, Duration::from_millis(300));
        assert_eq!(got_b.len(), 1, "{got_b:?}");
        assert_eq!(got_b[0].status, 0);
        // The later CmdSN wrote last.
        let now = ok(&mut a, &read10(lba, blocks), &[], len);
        assert!(now == second, "round {round}: the earlier CmdSN's data won ({:#x}, {} bytes)", now[0], now.len());
    }
    t.stop();
}

#[test]
fn task_management_reaches_every_connection_of_the_session() {
    let (t, port) = start(3);
    let mut conns = Session::connect_mcs("127.0.0.1", port, &opts(), 8, 3).unwrap();
    assert_eq!(conns.len(), 3);
    let mut c = conns.pop().unwrap();
    let mut b = conns.pop().unwrap();
    let mut a = conns.pop().unwrap();
    for (i, s) in [&mut a, &mut b, &mut c].into_iter().enumerate() {
        ok(s, &write10(i as u32, 1), &[i as u8; 512], 0);
    }
    // ABORT TASK SET, then LOGICAL UNIT RESET, from C while B holds a write waiting for A's
    // earlier CmdSN: B's write is one of the session's tasks on the LUN and must not run.
    for (round, function) in [(1u8, 2u8), (2, 5)] {
        let lba = 2000 + round as u32;
        let mine = vec![0x30 + round; 512];
        a.submit(1, 0, &write10(lba, 1), &mine, 0).unwrap();
        b.submit(round as u32, 0, &write10(lba, 1), &[0x40 + round; 512], 0).unwrap();
        assert!(completions(&mut b, Duration::from_millis(200)).is_empty());
        let r = c.task_management(function, 0, None, T, &mut |_, _| {}).unwrap();
        assert_eq!(r, 0, "function {function}");
        // A is the requester's nexus: the reset's unit attention is reported once, on C.
        let got = completions(&mut a, Duration::from_millis(300));
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].status, 0, "round {round}: {got:?}");
        // The aborted command is not answered (same nexus: no TASK ABORTED status) and did not run.
        let late = completions(&mut b, Duration::from_millis(300));
        assert!(late.is_empty(), "round {round}: the aborted write was answered: {late:?}");
        assert_eq!(ok(&mut c, &read10(lba, 1), &[], 512), mine, "round {round}: the aborted write ran");
        // Its CmdSN was stepped over: every connection goes on.
        ok(&mut b, &read10(lba, 1), &[], 512);
        ok(&mut a, &read10(lba, 1), &[], 512);
    }
    t.stop();
}

/// Sense key and ASC of a CHECK CONDITION completion, None for GOOD.
fn check(c: &Completion) -> Option<(u8, u8)> {
    (c.status == 2).then(|| (c.sense.get(2).map_or(0, |k| k & 0xf), c.sense.get(12).copied().unwrap_or(0)))
}

#[test]
fn a_unit_attention_reaches_the_session_once_not_once_per_connection() {
    let (t, port) = start(2);
    let mut conns = Session::connect_mcs("127.0.0.1", port, &opts(), 8, 2).unwrap();
    let mut b = conns.pop().unwrap();
    let mut a = conns.pop().unwrap();
    // The power-on condition of the new nexus: reported once, whichever connection asks first.
    let first = [a.command(0, &read10(0, 1), &[], 512, T).unwrap().0, b.command(0, &read10(0, 1), &[], 512, T).unwrap().0];
    assert_eq!(first.iter().filter(|c| check(c) == Some((6, 0x29))).count(), 1, "{first:?}");
    // Another nexus (its own session) resets the LUN: 29/03 is this nexus' once, on one connection.
    let mut o = opts();
    o.isid = [0x80, 0, 0, 0, 0x99, 1];
    let mut other = Session::connect("127.0.0.1", port, &o, 8).unwrap();
    ok(&mut other, &read10(0, 1), &[], 512);
    assert_eq!(other.task_management(5, 0, None, T, &mut |_, _| {}).unwrap(), 0);
    let mut seen = Vec::new();
    for i in 0..4 {
        let s = if i % 2 == 0 { &mut b } else { &mut a };
        seen.push(check(&s.command(0, &read10(0, 1), &[], 512, T).unwrap().0));
    }
    assert_eq!(seen, vec![Some((6, 0x29)), None, None, None], "unit attentions seen by B, A, B, A");
    t.stop();
}

#[test]
fn connection_limit_and_unknown_sessions_are_refused() {
    let (t, port) = start(2);
    // Asking for 4 connections gets max_connections_per_session = 2.
    let mut o = opts();
    o.max_connections = 4;
    let a = Session::connect("127.0.0.1", port, &o, 8).unwrap();
    assert_eq!(a.params.max_connections, 2);
    let b = a.add_connection("127.0.0.1", port, &o, 8, 1).unwrap();
    let e = login_error(a.add_connection("127.0.0.1", port, &o, 8, 2));
    assert!(e.contains("02/06"), "{e}");
    // Another ISID with this TSIH, or a TSIH no session has: SESSION DOES NOT EXIST.
    let mut other = opts();
    other.isid[5] ^= 0xff;
    let e = login_error(a.add_connection("127.0.0.1", port, &other, 8, 3));
    assert!(e.contains("02/0a"), "{e}");
    let mut stray = o.clone();
    stray.tsih = a.params.tsih.wrapping_add(100);
    stray.cid = 5;
    let e = login_error(Session::connect("127.0.0.1", port, &stray, 8));
    assert!(e.contains("02/0a"), "{e}");
    assert_eq!(t.rpc("iscsi_get_connections", Value::Null).as_array().unwrap().len(), 2);
    // A login with a CID in use reinstates that connection (RFC 7143 §6.3.4): the old one ends.
    let mut old = b;
    let mut again = a.add_connection("127.0.0.1", port, &o, 8, 1).unwrap();
    ok(&mut again, &read10(0, 1), &[], 512);
    assert!(old.logout_request(0, 0).is_err(), "the reinstated connection still answers");
    let v = t.rpc("iscsi_get_connections", Value::Null);
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
    t.stop();

    // With max_connections_per_session 1 a second connection is refused.
    let (t, port) = start(1);
    let mut o = opts();
    o.max_connections = 2;
    let a = Session::connect("127.0.0.1", port, &o, 8).unwrap();
    assert_eq!(a.params.max_connections, 1);
    let e = login_error(a.add_connection("127.0.0.1", port, &o, 8, 1));
    assert!(e.contains("02/06"), "{e}");
    t.stop();
}

fn perf(port: u16, args: &[&str]) -> (Option<i32>, Value, String) {
    let out = Command::new(BIN)
        .args(["perf", "--transport", "iscsi", "--addr", "127.0.0.1", "--port", &port.to_string(), "--target", IQN, "--json"])
        .args(args)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code(), v, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn perf_verifies_over_a_two_connection_session() {
    let (t, port) = start(2);
    for args in [
        &["--connections", "2", "--qd", "16", "--rw", "randrw", "--mix", "50", "--verify", "--time", "2s"][..],
        &["--connections", "2", "--queues", "2", "--qd", "8", "--rw", "write", "--bs", "128k", "--verify", "--time", "1s"][..],
    ] {
        let (code, v, err) = perf(port, args);
        assert_eq!(code, Some(0), "perf {args:?} failed: {err}\n{v}");
        assert_eq!(v["errors"], 0, "{v}");
        assert!(v["ios"].as_u64().unwrap() > 100, "{v}");
    }
    // More connections than the target allows: a clean error.
    let (code, _, err) = perf(port, &["--connections", "3", "--time", "1s"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("2 connections per session"), "{err}");
    t.stop();
}

/// With the counting allocator built in, the target's reactors allocate nothing per I/O of a
/// two-connection session once logged in (the logins and the perf setup are all that counts).
#[cfg(feature = "count-alloc")]
#[test]
fn mcs_io_path_does_not_allocate() {
    let (t, port) = start(2);
    let allocs = |t: &Target| -> u64 {
        let v = t.rpc("framework_get_reactors", Value::Null);
        v["reactors"].as_array().unwrap().iter().map(|r| r["allocations"].as_u64().expect("count-alloc build")).sum()
    };
    // Warm-up: pools and buffers reach their steady size.
    let (code, _, err) = perf(port, &["--connections", "2", "--qd", "32", "--rw", "randrw", "--time", "1s"]);
    assert_eq!(code, Some(0), "{err}");
    let before = allocs(&t);
    let (code, v, err) = perf(port, &["--connections", "2", "--qd", "32", "--rw", "randrw", "--time", "2s"]);
    assert_eq!(code, Some(0), "{err}");
    let after = allocs(&t);
    let ios = v["ios"].as_u64().unwrap();
    assert!(ios > 10_000, "{v}");
    // Two logins and their setup commands allocate a few hundred times; one per I/O would be ios.
    let per_io = (after - before) as f64 / ios as f64;
    eprintln!("MC/S session: {} target allocations for {ios} I/Os ({per_io:.5} per I/O)", after - before);
    assert!(per_io < 0.01, "{} allocations for {ios} I/Os", after - before);
    t.stop();
}
