//! 4,000 idle connections (2,000 iSCSI sessions logged in, 2,000 NVMe/TCP admin queues connected,
//! each having run one command) against one target: what they cost, and that it is given back
//! when they leave. The bar (issue 11): under 200 MiB for the 4,000, back within 64 MiB of the
//! baseline afterwards, a polite client served all along.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::hostile::{max_stall_us, nvme_identify_capsule, nvme_raw_admin, report, rss_kib, Figures, RawLogin};
use common::{free_port, Target};
use palisade::iscsi::initiator::{LoginOptions, Session};
use serde_json::json;

const IQN: &str = "iqn.2016-06.io.spdk:idle";
const NQN: &str = "nqn.2016-06.io.spdk:idle";
const EACH: usize = 2000;

fn raise_nofile(want: u64) {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
    }
    assert!(r.rlim_cur >= want, "open-file limit {} is below the {want} this test needs", r.rlim_cur);
}

fn polite_round_trip(s: &mut Session, seed: u8) {
    common::hostile::iscsi_write_read(s, seed, 4);
}

#[test]
fn four_thousand_idle_connections_are_cheap() {
    raise_nofile(2 * EACH as u64 + 500);
    let iport = free_port();
    let nport = free_port();
    let t = Target::start(&["-m", "0x1", "--wait-for-rpc"]);
    t.rpc("iscsi_set_options", json!({"max_sessions": EACH + 10}));
    t.rpc("framework_start_init", serde_json::Value::Null);
    t.rpc("bdev_malloc_create", json!({"name": "Malloc0", "num_blocks": 65536, "block_size": 512}));
    t.rpc("iscsi_create_portal_group", json!({"tag": 1, "portals": [{"host": "127.0.0.1", "port": iport.to_string()}]}));
    t.rpc("iscsi_create_initiator_group", json!({"tag": 1, "initiators": ["ANY"], "netmasks": ["127.0.0.1/32"]}));
    t.rpc("iscsi_create_target_node", json!({"name": IQN, "alias_name": "", "luns": [{"bdev_name": "Malloc0", "lun_id": 0}],
        "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 1}], "queue_depth": 32}));
    t.rpc("nvmf_create_transport", json!({"trtype": "TCP"}));
    t.rpc("nvmf_create_subsystem", json!({"nqn": NQN, "serial_number": "SN-IDLE", "allow_any_host": true}));
    t.rpc("nvmf_subsystem_add_ns", json!({"nqn": NQN, "namespace": {"bdev_name": "Malloc0"}}));
    t.rpc("nvmf_subsystem_add_listener", json!({"nqn": NQN, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": nport.to_string()}}));
    let naddr: SocketAddr = format!("127.0.0.1:{nport}").parse().unwrap();
    let mut polite = Session::connect("127.0.0.1", iport, &LoginOptions::new("iqn.test:polite", Some(IQN)), 4).unwrap();
    polite_round_trip(&mut polite, 1);
    std::thread::sleep(Duration::from_secs(3)); // let the warm-up buffers go idle
    let base = rss_kib(&t);
    let started = Instant::now();
    let mut iscsi = Vec::with_capacity(EACH);
    let mut nvme = Vec::with_capacity(EACH);
    for i in 0..EACH {
        let mut c = RawLogin::connect(iport);
        let r = c.step(0x81, &format!("InitiatorName=iqn.test:idle{i}\nTargetName={IQN}\nAuthMethod=None\n"));
        assert_eq!(r.class, 0, "login {i}");
        let r = c.step(0x87, "HeaderDigest=None\n");
        assert_eq!(r.class, 0, "login {i}");
        assert!(c.read_works(), "session {i} answers a READ");
        iscsi.push(c);
        let mut a = nvme_raw_admin(naddr, NQN, 32);
        a.write_all(&nvme_identify_capsule(1)).unwrap();
        let mut r = vec![0u8; 24 + 4096 + 24];
        a.read_exact(&mut r).unwrap();
        nvme.push(a);
        if i % 500 == 499 {
            polite_round_trip(&mut polite, (i / 500) as u8 + 2);
        }
    }
    eprintln!("opened {} connections in {:?}", 2 * EACH, started.elapsed());
    std::thread::sleep(Duration::from_secs(3)); // idle: receive buffers are given back after 2 s
    let held = rss_kib(&t);
    let cost = held.saturating_sub(base);
    eprintln!("{} idle connections: RSS {base} -> {held} KiB ({} bytes each)", 2 * EACH, cost * 1024 / (2 * EACH) as u64);
    assert!(cost < 200 << 10, "{} idle connections cost {cost} KiB", 2 * EACH);
    polite_round_trip(&mut polite, 20);
    let stall = max_stall_us(&t);
    drop(iscsi);
    drop(nvme);
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let now = rss_kib(&t);
        if now < base + (64 << 10) {
            break now;
        }
        assert!(Instant::now() < deadline, "RSS {now} KiB after the clients left (baseline {base})");
        std::thread::sleep(Duration::from_millis(200));
    };
    polite_round_trip(&mut polite, 21);
    assert!(stall < 100_000, "a reactor loop took {stall} us");
    report("4,000 idle connections (2,000 iSCSI sessions + 2,000 NVMe/TCP admin queues)", &Figures { baseline_kib: base, peak_kib: held, after_kib: after, stall_us: stall });
    polite.logout().unwrap();
    t.stop();
}
