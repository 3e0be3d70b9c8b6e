//! Task management drains (SAM-5 7, RFC 7143 §11.5) against the built binary, over real sockets,
//! with a delay bdev (300 ms write latency, data landing at the end of it) on a RAM bdev: a TMF
//! answers only after every write it aborted has completed or been aborted, LOGICAL UNIT RESET
//! and CLEAR TASK SET reach every nexus (TASK ABORTED with TAS=1, 29/03 after a reset), and no
//! aborted write lands after the answer. "Lands after" is checked by reading the blocks right
//! after the answer and again once the latency has passed: they must not change in between.
//! Also the delay bdev's management methods and its save_config round trip.

mod common;

use std::time::{Duration, Instant};

use common::{free_port, Target};
use palisade::iscsi::initiator::{Completion, LoginOptions, Session};
use serde_json::{json, Value};

const IQN: &str = "iqn.2016-06.io.spdk:disk1";
const BS: usize = 512;
const LATENCY: Duration = Duration::from_millis(300);
const TASK_ABORTED: u8 = 0x40;

/// Two reactors when the machine has them (sessions then live on different reactors).
fn mask() -> &'static str {
    if std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) > 1 {
        "0x3"
    } else {
        "0x1"
    }
}

/// Malloc0 under Delay0 (writes held LATENCY, reads not held), exported as LUN 0 of `IQN`.
fn start(port: u16) -> Target {
    let t = Target::start(&["-m", mask()]);
    t.rpc("bdev_malloc_create", json!({"name": "Malloc0", "num_blocks": 8192, "block_size": BS}));
    let us = LATENCY.as_micros() as u64;
    t.rpc(
        "bdev_delay_create",
        json!({"base_bdev_name": "Malloc0", "name": "Delay0", "avg_read_latency": 0, "p99_read_latency": 0,
               "avg_write_latency": us, "p99_write_latency": us}),
    );
    t.rpc("iscsi_create_portal_group", json!({"tag": 1, "portals": [{"host": "127.0.0.1", "port": port.to_string()}]}));
    t.rpc("iscsi_create_initiator_group", json!({"tag": 1, "initiators": ["ANY"], "netmasks": ["127.0.0.1/32"]}));
    t.rpc(
        "iscsi_create_target_node",
        json!({"name": "disk1", "alias_name": "Disk 1", "luns": [{"bdev_name": "Delay0", "lun_id": 0}],
               "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 1}], "queue_depth": 64}),
    );
    t
}

fn login(port: u16, name: &str) -> Session {
    let mut s = Session::connect("127.0.0.1", port, &LoginOptions::new(name, Some(IQN)), 32).expect("login");
    // A new nexus starts with POWER ON: consume it.
    let (c, _) = s.command(0, &[0; 6], &[], 0, Duration::from_secs(10)).unwrap();
    assert_eq!(c.status, 2, "power-on unit attention expected: {c:?}");
    s
}

fn rw16(op: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn is_ua(c: &Completion) -> bool {
    c.status == 2 && c.sense.get(2).map(|k| k & 0xf) == Some(6)
}

/// Read `blocks` at `lba`, retried past unit attentions.
fn read(s: &mut Session, lba: u64, blocks: u32) -> Vec<u8> {
    for _ in 0..4 {
        let (c, d) = s.command(0, &rw16(0x88, lba, blocks), &[], blocks as usize * BS, Duration::from_secs(10)).unwrap();
        if is_ua(&c) {
            continue;
        }
        assert_eq!(c.status, 0, "read failed: {c:?}");
        return d;
    }
    panic!("read kept failing with unit attentions");
}

/// A well-behaved client keeps writing and reading back its data.
fn write_read(s: &mut Session, lba: u64, blocks: u32, byte: u8) {
    let data = vec![byte; blocks as usize * BS];
    for _ in 0..4 {
        let (c, _) = s.command(0, &rw16(0x8a, lba, blocks), &data, 0, Duration::from_secs(10)).unwrap();
        if is_ua(&c) {
            continue;
        }
        assert_eq!(c.status, 0, "write failed: {c:?}");
        break;
    }
    assert!(read(s, lba, blocks) == data, "data read back differs at lba {lba}");
}

/// Queue writes of `byte + i` to `n` runs of 8 blocks from `lba`, on tags 0..n, and let them
/// reach the target (where the delay bdev holds them).
fn writes_in_flight(s: &mut Session, lba: u64, n: u32, byte: u8) {
    for i in 0..n {
        s.submit(i, 0, &rw16(0x8a, lba + 8 * i as u64, 8), &vec![byte + i as u8; 8 * BS], 0).unwrap();
    }
    s.poll(Duration::from_millis(50), &mut |c, _| panic!("a held write completed early: {c:?}")).unwrap();
}

/// Wait for `n` completions.
fn completions(s: &mut Session, n: usize) -> Vec<Completion> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.len() < n && Instant::now() < deadline {
        s.poll(Duration::from_millis(100), &mut |c, _| out.push(c)).unwrap();
    }
    out
}

/// The blocks read right after a TMF answer must not change once the held writes' latency has
/// passed: nothing the TMF aborted may land after it answered.
fn assert_stable(s: &mut Session, lba: u64, blocks: u32, right_after: &[u8], what: &str) {
    std::thread::sleep(LATENCY + Duration::from_millis(200));
    let later = read(s, lba, blocks);
    let changed = right_after.chunks(BS).zip(later.chunks(BS)).filter(|(a, b)| a != b).count();
    assert_eq!(changed, 0, "{changed} blocks changed after the {what} response: an aborted write landed after it");
}

#[test]
fn abort_task_answers_after_the_aborted_write_drained() {
    let port = free_port();
    let t = start(port);
    let mut a = login(port, "iqn.2026-01.test:a");
    writes_in_flight(&mut a, 100, 1, 0xa1);
    let sent = Instant::now();
    let r = a.task_management(1, 0, Some(0), Duration::from_secs(10), &mut |c, _| panic!("the aborted task answered: {c:?}")).unwrap();
    assert_eq!(r, 0, "FUNCTION COMPLETE");
    let waited = sent.elapsed();
    let right_after = read(&mut a, 100, 8);
    assert_stable(&mut a, 100, 8, &right_after, "ABORT TASK");
    assert!(waited + Duration::from_millis(100) >= LATENCY, "answered after {waited:?}, before the write could have drained");
    // An unknown task is reported as such, at once.
    let r = a.task_management(1, 0, Some(5), Duration::from_secs(10), &mut |_, _| {}).unwrap();
    assert_eq!(r, 1, "TASK DOES NOT EXIST");
    write_read(&mut a, 100, 8, 0xb2);
    t.stop();
}

#[test]
fn abort_task_set_drains_only_the_requesting_nexus() {
    let port = free_port();
    let t = start(port);
    let mut a = login(port, "iqn.2026-01.test:a");
    let mut b = login(port, "iqn.2026-01.test:b");
    writes_in_flight(&mut b, 400, 1, 0xb0);
    writes_in_flight(&mut a, 300, 4, 0xa0);
    let r = a.task_management(2, 0, None, Duration::from_secs(10), &mut |c, _| panic!("an aborted task answered: {c:?}")).unwrap();
    assert_eq!(r, 0);
    let right_after = read(&mut a, 300, 32);
    // The other nexus' write is not aborted (ABORT TASK SET is per I_T nexus).
    let c = completions(&mut b, 1);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].status, 0, "the other nexus' write completes normally");
    assert_eq!(read(&mut b, 400, 8), vec![0xb0; 8 * BS]);
    assert_stable(&mut a, 300, 32, &right_after, "ABORT TASK SET");
    write_read(&mut a, 300, 8, 0xa9);
    t.stop();
}

#[test]
fn lun_reset_from_another_session_aborts_and_drains_every_nexus() {
    let port = free_port();
    let t = start(port);
    let mut a = login(port, "iqn.2026-01.test:a");
    let mut b = login(port, "iqn.2026-01.test:b");
    writes_in_flight(&mut a, 200, 4, 0xc0);
    let r = b.task_management(5, 0, None, Duration::from_secs(10), &mut |c, _| panic!("B had no task: {c:?}")).unwrap();
    assert_eq!(r, 0, "FUNCTION COMPLETE");
    let right_after = read(&mut b, 200, 32);
    // A's writes were aborted by another nexus: TASK ABORTED (the control mode page says TAS=1).
    let c = completions(&mut a, 4);
    assert_eq!(c.len(), 4, "every aborted task of the other nexus is answered");
    assert!(c.iter().all(|c| c.status == TASK_ABORTED), "TASK ABORTED expected: {c:?}");
    assert_stable(&mut b, 200, 32, &right_after, "LOGICAL UNIT RESET");
    // Both nexuses see BUS DEVICE RESET FUNCTION OCCURRED once.
    let (c, _) = a.command(0, &[0; 6], &[], 0, Duration::from_secs(10)).unwrap();
    assert!(is_ua(&c) && c.sense.get(12..14) == Some(&[0x29, 0x03][..]), "29/03 expected: {c:?}");
    write_read(&mut a, 200, 8, 0xd1);
    write_read(&mut b, 208, 8, 0xd2);
    t.stop();
}

#[test]
fn clear_task_set_from_another_session_aborts_its_tasks() {
    let port = free_port();
    let t = start(port);
    let mut a = login(port, "iqn.2026-01.test:a");
    let mut b = login(port, "iqn.2026-01.test:b");
    writes_in_flight(&mut a, 500, 2, 0xe0);
    writes_in_flight(&mut b, 600, 1, 0xf0);
    let r = b.task_management(4, 0, None, Duration::from_secs(10), &mut |c, _| panic!("B's own task is aborted silently: {c:?}")).unwrap();
    assert_eq!(r, 0);
    let right_after = read(&mut b, 500, 16);
    let c = completions(&mut a, 2);
    assert_eq!(c.len(), 2);
    assert!(c.iter().all(|c| c.status == TASK_ABORTED), "TASK ABORTED expected: {c:?}");
    assert_stable(&mut b, 500, 16, &right_after, "CLEAR TASK SET");
    // No unit attention for a clear with TAS=1: A's next command just runs.
    let (c, _) = a.command(0, &[0; 6], &[], 0, Duration::from_secs(10)).unwrap();
    assert_eq!(c.status, 0, "{c:?}");
    write_read(&mut a, 500, 8, 0xe9);
    t.stop();
}

/// A client that floods task management functions while a drain is pending: at most 8 wait per
/// connection, the rest are answered FUNCTION REJECTED at once; all are answered.
#[test]
fn pending_task_management_is_bounded() {
    use palisade::iscsi::pdu::{self, at, op, Bhs, F_FINAL};
    let port = free_port();
    let t = start(port);
    let mut a = login(port, "iqn.2026-01.test:a");
    writes_in_flight(&mut a, 700, 1, 0x70);
    let mut burst = Vec::new();
    for i in 0..12u32 {
        let mut h = Bhs::new(op::TMF_REQ, F_FINAL | 2); // ABORT TASK SET
        h.set_immediate();
        h.set_itt(0x5000_0000 + i);
        h.set_u32(at::W20, pdu::RESERVED_TAG);
        pdu::encode(&mut burst, &h, &[], &[], false, false);
    }
    a.raw_write(&burst).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < 12 && Instant::now() < deadline {
        a.poll(Duration::from_millis(50), &mut |_, _| {}).unwrap();
        got.extend(a.take_tmf_responses());
    }
    assert_eq!(got.len(), 12, "every TMF is answered: {got:?}");
    assert_eq!(got.iter().filter(|r| r.1 == 255).count(), 4, "beyond 8 waiting, FUNCTION REJECTED: {got:?}");
    assert_eq!(got.iter().filter(|r| r.1 == 0).count(), 8);
    // The rejected ones were answered before the drained ones.
    assert!(got[..4].iter().all(|r| r.1 == 255), "{got:?}");
    let mut b = login(port, "iqn.2026-01.test:b");
    write_read(&mut b, 700, 8, 0x71);
    t.stop();
}

#[test]
fn bdev_delay_management_and_save_config() {
    let t = Target::start(&["-m", "0x1"]);
    t.rpc("bdev_malloc_create", json!({"name": "Malloc0", "num_blocks": 256, "block_size": 512}));
    let create = |name: &str, base: &str, avg_w: u64, p99_w: u64| {
        t.try_rpc(
            "bdev_delay_create",
            Some(json!({"base_bdev_name": base, "name": name, "avg_read_latency": 10, "p99_read_latency": 50,
                        "avg_write_latency": avg_w, "p99_write_latency": p99_w})),
        )
    };
    assert_eq!(create("Delay0", "Malloc0", 90, 30).unwrap_err().0, -(libc::EINVAL as i64), "p99 below the average");
    assert_eq!(create("Delay0", "Nope", 30, 90).unwrap_err().0, -(libc::ENODEV as i64));
    assert_eq!(create("Delay0", "Malloc0", 30, 90).unwrap(), json!("Delay0"));
    assert_eq!(create("Delay0", "Malloc0", 30, 90).unwrap_err().0, -(libc::EEXIST as i64));
    // The base is claimed exclusively: no second delay on it, no delete under it.
    assert_eq!(create("Delay1", "Malloc0", 30, 90).unwrap_err().0, -(libc::EBUSY as i64));
    assert_eq!(t.try_rpc("bdev_malloc_delete", Some(json!({"name": "Malloc0"}))).unwrap_err().0, -(libc::EBUSY as i64));
    let d = t.rpc("bdev_get_bdevs", json!({"name": "Delay0"}))[0].clone();
    assert_eq!(d["product_name"], "delay");
    assert_eq!(d["num_blocks"], 256);
    assert_eq!(d["driver_specific"]["delay"]["base_bdev_name"], "Malloc0");
    assert_eq!(t.rpc("bdev_get_bdevs", json!({"name": "Malloc0"}))[0]["claimed"], true);

    let upd = |name: &str, ty: &str, us: u64| {
        t.try_rpc("bdev_delay_update_latency", Some(json!({"delay_bdev_name": name, "latency_type": ty, "latency_us": us})))
    };
    assert_eq!(upd("Delay0", "p99_write", 500).unwrap(), json!(true));
    assert_eq!(upd("Delay0", "sideways", 5).unwrap_err().0, -32602);
    assert_eq!(upd("Malloc0", "avg_read", 5).unwrap_err().0, -32600, "not a delay bdev");
    assert_eq!(upd("Nope", "avg_read", 5).unwrap_err().0, -32602);
    assert_eq!(t.rpc("bdev_get_bdevs", json!({"name": "Delay0"}))[0]["driver_specific"]["delay"]["p99_write_latency"], 500);
    // rpc.py's command line through `palisade rpc`.
    let cli = |args: &[&str]| {
        let o = std::process::Command::new(common::BIN).arg("rpc").arg("-s").arg(t.sock_str()).args(args).output().unwrap();
        assert!(o.status.success(), "palisade rpc {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    cli(&["bdev_delay_update_latency", "Delay0", "avg_read", "20"]);
    cli(&["bdev_delay_update_latency", "Delay0", "avg_read", "10"]);
    cli(&["bdev_malloc_create", "-b", "Malloc9", "1", "512"]);
    cli(&["bdev_delay_create", "-b", "Malloc9", "-d", "Delay9", "-r", "1", "-t", "2", "-w", "3", "-n", "4"]);
    assert_eq!(t.rpc("bdev_get_bdevs", json!({"name": "Delay9"}))[0]["driver_specific"]["delay"]["p99_write_latency"], 4);
    cli(&["bdev_delay_delete", "Delay9"]);
    cli(&["bdev_malloc_delete", "Malloc9"]);

    // save_config creates the base first (Delay0 sorts before Malloc0) and a restart restores it.
    let cfg = t.rpc("save_config", Value::Null);
    let uuid = d["uuid"].clone();
    t.stop();
    let t2 = Target::start_with_config(&cfg, &["-m", "0x1"]);
    let d2 = t2.rpc("bdev_get_bdevs", json!({"name": "Delay0"}))[0].clone();
    assert_eq!(d2["uuid"], uuid);
    let conf = &d2["driver_specific"]["delay"];
    assert_eq!((conf["avg_read_latency"].as_u64(), conf["p99_read_latency"].as_u64()), (Some(10), Some(50)));
    assert_eq!((conf["avg_write_latency"].as_u64(), conf["p99_write_latency"].as_u64()), (Some(30), Some(500)));
    assert_eq!(t2.try_rpc("bdev_delay_delete", Some(json!({"name": "Malloc0"}))).unwrap_err().0, -(libc::ENODEV as i64), "not a delay bdev");
    t2.rpc("bdev_delay_delete", json!({"name": "Delay0"}));
    t2.rpc("bdev_malloc_delete", json!({"name": "Malloc0"}));
    t2.stop();
}
