//! Hostile DH-HMAC-CHAP: strangers who name an allowed host (one with a key) and make the target
//! do the most expensive exponentiations there are, over and over: Negotiate FFDHE-8192 (the
//! target generates its key), then a Reply with a made-up DH value and response (the target
//! computes the shared secret before it can tell the response is wrong). That work runs on the
//! authentication thread: the reactor must keep serving, and a host with the key still gets in
//! and does I/O meanwhile.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::hostile::{hwm_kib, max_stall_us, report, rss_kib, Figures};
use common::{free_port, Target};
use palisade::nvme::auth::{Negotiate, Reply};
use palisade::nvmf::auth::host::HostAuthConfig;
use palisade::nvmf::auth::{DhGroup, Digest, Secret};
use palisade::nvmf::host::{rw_sqe, Controller, HostOpts, Queue};
use serde_json::json;

const NQN: &str = "nqn.2016-06.io.spdk:hostile-auth";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:0b9c1a6e-7a44-4bde-9c1e-2f1a1d3a0a17";

#[test]
fn ffdhe8192_flood_does_not_stall_the_reactor() {
    use std::os::unix::fs::PermissionsExt;
    let t = Target::start(&["-m", "0x1"]);
    let port = free_port();
    t.rpc("bdev_malloc_create", json!({"name": "Malloc0", "num_blocks": 8192, "block_size": 512}));
    t.rpc("nvmf_create_transport", json!({"trtype": "TCP"}));
    t.rpc("nvmf_create_subsystem", json!({"nqn": NQN, "serial_number": "AUTHFLOOD"}));
    t.rpc("nvmf_subsystem_add_ns", json!({"nqn": NQN, "namespace": {"bdev_name": "Malloc0"}}));
    t.rpc("nvmf_subsystem_add_listener", json!({"nqn": NQN, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}}));
    let hk = Secret { transform: 0, key: (0..32).map(|i| 0x40 ^ i as u8).collect() };
    let p = t.path("host.key");
    std::fs::write(&p, hk.encode()).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    t.rpc("keyring_file_add_key", json!({"name": "k", "path": p.to_str().unwrap()}));
    t.rpc("nvmf_subsystem_add_host", json!({"nqn": NQN, "host": HOST, "dhchap_key": "k"}));
    let mut o = HostOpts::new(format!("127.0.0.1:{port}").parse().unwrap(), NQN);
    o.hostnqn = HOST.into();
    let baseline = rss_kib(&t);
    max_stall_us(&t); // start the stall window now

    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU32::new(0));
    let attackers: Vec<_> = (0..8u16)
        .map(|i| {
            let (o, stop, rounds) = (o.clone(), stop.clone(), rounds.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok((mut q, _)) = Queue::connect_raw(&o, 0, 32, 0xffff) else { continue };
                    let neg = Negotiate { t_id: i, sc_c: 0, hashes: vec![Digest::Sha512.id()], dhgroups: vec![DhGroup::Ffdhe8192.id()] };
                    if q.auth_send(&neg.encode()).is_err() || q.auth_recv().is_err() {
                        continue;
                    }
                    // Any value in 2..p-2 makes the target exponentiate: 0x55.. is one.
                    let reply = Reply { t_id: i, cvalid: false, seqnum: 0, r1: vec![0xaa; 64], c2: vec![0; 64], dhv: vec![0x55; 1024] };
                    let _ = q.auth_send(&reply.encode());
                    let _ = q.auth_recv(); // AUTH_Failure1
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Meanwhile a host with the key connects and does I/O (it waits its turn for the DH work,
    // not for the reactor).
    let start = Instant::now();
    let mut ios = 0u32;
    let mut c = Controller::connect(&{
        let mut g = o.clone();
        g.dhchap = Some(HostAuthConfig::new(hk.clone(), None));
        g.timeout = Duration::from_secs(30);
        g
    })
    .expect("the keyed host authenticates during the flood");
    c.set_num_queues(1).unwrap();
    let mut io = c.io_queue(1, 16).unwrap();
    let data = vec![0x3cu8; 4096];
    while start.elapsed() < Duration::from_secs(4) {
        io.cmd(rw_sqe(true, 1, 0, 8), Some(&data), 0).unwrap();
        let (_, back) = io.cmd(rw_sqe(false, 1, 0, 8), None, 4096).unwrap();
        assert_eq!(back, data);
        ios += 2;
    }
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        a.join().unwrap();
    }
    let stall = max_stall_us(&t);
    let n = rounds.load(Ordering::Relaxed);
    eprintln!("{n} FFDHE-8192 rounds refused (2 exponentiations each), {ios} I/Os of the keyed host, worst reactor loop {stall} us");
    report("auth-ffdhe8192-flood", &Figures { baseline_kib: baseline, peak_kib: hwm_kib(&t), after_kib: rss_kib(&t), stall_us: stall });
    assert!(n >= 8, "the flood ran ({n} rounds)");
    // One FFDHE-8192 exponentiation takes ~10 ms here: on the reactor, a loop would carry
    // several of them.
    assert!(stall < 20_000, "reactor loop of {stall} us during the flood");
    drop(t);
}
