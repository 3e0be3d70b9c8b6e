//! NVMe in-band authentication (DH-HMAC-CHAP, NVMe Base 2.0 §8.13) against the built binary over
//! real sockets: keys in the keyring, host entries with dhchap keys, our host (the `palisade perf`
//! initiator) on the other end. Covers good keys for every digest and several DH groups, wrong
//! and missing keys (nothing of the namespace visible), a replayed reply, bidirectional with a
//! wrong controller key, re-authentication during I/O, and key rotation.

mod common;

use std::time::{Duration, Instant};

use common::{free_port, Target};
use palisade::nvme::auth::{reason, SC_AUTH_REQUIRED};
use palisade::nvmf::auth::host::{HostAuthConfig, HostAuthError, HostTransaction};
use palisade::nvmf::auth::{DhGroup, Digest, Secret};
use palisade::nvmf::host::{rw_sqe, Controller, HostError, HostOpts, Queue};
use serde_json::json;

const NQN: &str = "nqn.2016-06.io.spdk:auth";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:0b9c1a6e-7a44-4bde-9c1e-2f1a1d3a0001";

fn secret(fill: u8, transform: u8) -> Secret {
    let len = match transform {
        2 => 48,
        3 => 64,
        _ => 32,
    };
    Secret { transform, key: (0..len).map(|i| fill.wrapping_add(i as u8)).collect() }
}

/// Put `s` in a 0600 key file and the keyring as `name`.
fn add_key(t: &Target, name: &str, s: &Secret) {
    use std::os::unix::fs::PermissionsExt;
    let p = t.path(&format!("{name}.key"));
    std::fs::write(&p, s.encode()).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    t.rpc("keyring_file_add_key", json!({"name": name, "path": p.to_str().unwrap()}));
}

/// A target exporting a RAM namespace to HOST only, with host key `hk` (and controller key).
fn setup(hk: &Secret, ck: Option<&Secret>) -> (Target, u16) {
    let t = Target::start(&["-m", "0x1"]);
    let port = free_port();
    t.rpc("bdev_malloc_create", json!({"name": "Malloc0", "num_blocks": 8192, "block_size": 512}));
    t.rpc("nvmf_create_transport", json!({"trtype": "TCP"}));
    t.rpc("nvmf_create_subsystem", json!({"nqn": NQN, "serial_number": "AUTH001"}));
    t.rpc("nvmf_subsystem_add_ns", json!({"nqn": NQN, "namespace": {"bdev_name": "Malloc0"}}));
    t.rpc(
        "nvmf_subsystem_add_listener",
        json!({"nqn": NQN, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}}),
    );
    add_key(&t, "key0", hk);
    let mut p = json!({"nqn": NQN, "host": HOST, "dhchap_key": "key0"});
    if let Some(ck) = ck {
        add_key(&t, "ckey0", ck);
        p["dhchap_ctrlr_key"] = json!("ckey0");
    }
    t.rpc("nvmf_subsystem_add_host", p);
    (t, port)
}

fn opts(port: u16, auth: Option<HostAuthConfig>) -> HostOpts {
    let mut o = HostOpts::new(format!("127.0.0.1:{port}").parse().unwrap(), NQN);
    o.hostnqn = HOST.to_string();
    o.dhchap = auth;
    o
}

/// Write a pattern through an I/O queue and read it back.
fn io_works(c: &Controller, seed: u8) {
    let mut q = c.io_queue(1, 16).unwrap();
    let data: Vec<u8> = (0..4096).map(|i| (i as u8).wrapping_mul(seed)).collect();
    q.cmd(rw_sqe(true, 1, 8, 8), Some(&data), 0).unwrap();
    let (_, back) = q.cmd(rw_sqe(false, 1, 8, 8), None, 4096).unwrap();
    assert_eq!(back, data);
}

fn is_auth_required(e: &HostError) -> bool {
    matches!(e, HostError::Status(s) if s.sct == 1 && s.sc == SC_AUTH_REQUIRED)
}

#[test]
fn good_keys_every_digest_several_groups() {
    let hk = secret(1, 1);
    let ck = secret(9, 0);
    let (t, port) = setup(&hk, Some(&ck));
    let mut n = 0u8;
    for d in Digest::ALL {
        for g in [DhGroup::Null, DhGroup::Ffdhe2048, DhGroup::Ffdhe8192] {
            let mut cfg = HostAuthConfig::new(hk.clone(), Some(ck.clone()));
            cfg.digests = vec![d];
            cfg.groups = vec![g];
            let mut c = Controller::connect(&opts(port, Some(cfg))).unwrap_or_else(|e| panic!("{d:?}/{g:?}: {e}"));
            assert_eq!(c.namespaces().unwrap(), vec![1]);
            c.set_num_queues(1).unwrap();
            n += 1;
            io_works(&c, n);
            // Management sees what was negotiated (SPDK's nvmf_subsystem_get_qpairs "auth").
            let qp = t.rpc("nvmf_subsystem_get_qpairs", json!({"nqn": NQN}));
            let mine: Vec<_> = qp.as_array().unwrap().iter().filter(|q| q["cntlid"] == c.id.cntlid).collect();
            assert!(!mine.is_empty());
            for q in mine {
                assert_eq!(q["auth"], json!({"state": "completed", "digest": d.name(), "dhgroup": g.name()}), "{qp}");
            }
            c.shutdown().unwrap();
        }
    }
    drop(t);
}

#[test]
fn wrong_or_missing_key_sees_nothing() {
    let hk = secret(1, 0);
    let (t, port) = setup(&hk, None);
    // No key: the controller says authentication is required; our host stops there.
    assert!(matches!(Controller::connect(&opts(port, None)), Err(HostError::AuthRequired)));
    // Connected but not authenticated: nothing but authentication runs (Identify, Property Get).
    let o = opts(port, None);
    let (mut q, dw0) = Queue::connect_raw(&o, 0, 32, 0xffff).unwrap();
    assert_ne!(dw0 & palisade::nvme::auth::CONNECT_AUTHREQ_ATR, 0, "AUTHREQ.ATR set");
    let e = q.identify(palisade::nvme::spec::cns::ACTIVE_NS_LIST, 0).unwrap_err();
    assert!(is_auth_required(&e), "{e}");
    let e = q.property_get(palisade::nvme::spec::prop::CAP, true).unwrap_err();
    assert!(is_auth_required(&e), "{e}");
    // An I/O queue cannot exist for a controller that was never enabled.
    drop(q);
    // Wrong key: AUTH_Failure1 with reason "authentication failed", then the queue is gone.
    let (mut q, _) = Queue::connect_raw(&o, 0, 32, 0xffff).unwrap();
    let e = q.authenticate(&HostAuthConfig::new(secret(2, 0), None), HOST, NQN).unwrap_err();
    assert!(matches!(e, HostError::Auth(HostAuthError::Refused(reason::FAILED, reason::EXP_FAILED))), "{e}");
    assert!(q.identify(palisade::nvme::spec::cns::ACTIVE_NS_LIST, 0).is_err(), "queue closed after a failure");
    // Through the normal path too.
    let e = Controller::connect(&opts(port, Some(HostAuthConfig::new(secret(2, 0), None)))).err().unwrap();
    assert!(matches!(e, HostError::Auth(HostAuthError::Refused(..))), "{e}");
    // Nothing was left behind: a good host still connects.
    let mut c = Controller::connect(&opts(port, Some(HostAuthConfig::new(hk, None)))).unwrap();
    assert_eq!(c.namespaces().unwrap(), vec![1]);
    drop(t);
}

#[test]
fn replayed_reply_refused() {
    let hk = secret(3, 2);
    let (t, port) = setup(&hk, None);
    let cfg = HostAuthConfig::new(hk.clone(), None);
    let o = opts(port, None);
    let (mut q, _) = Queue::connect_raw(&o, 0, 32, 0xffff).unwrap();
    // One good transaction, step by step, keeping the reply.
    let mut tr = HostTransaction::new(&cfg, HOST, NQN, 77);
    q.auth_send(&tr.negotiate()).unwrap();
    let reply = tr.reply(&q.auth_recv().unwrap()).unwrap();
    q.auth_send(&reply).unwrap();
    assert_eq!(tr.success1(&q.auth_recv().unwrap()).unwrap(), None);
    assert!(q.property_get(palisade::nvme::spec::prop::VS, false).is_ok(), "authenticated");
    // Re-authentication with the old reply replayed against the new challenge: refused.
    q.auth_send(&tr.negotiate()).unwrap();
    let _fresh_challenge = q.auth_recv().unwrap();
    q.auth_send(&reply).unwrap();
    let f = q.auth_recv().unwrap();
    assert_eq!((f[0], f[1], f[6], f[7]), (0x00, 0xf1, reason::FAILED, reason::EXP_FAILED), "AUTH_Failure1");
    assert!(q.property_get(palisade::nvme::spec::prop::VS, false).is_err(), "controller torn down");
    // A reply naming another transaction id is refused as well.
    let (mut q, _) = Queue::connect_raw(&o, 0, 32, 0xffff).unwrap();
    let mut tr = HostTransaction::new(&cfg, HOST, NQN, 78);
    q.auth_send(&tr.negotiate()).unwrap();
    let mut reply = tr.reply(&q.auth_recv().unwrap()).unwrap();
    reply[4] ^= 0xff;
    q.auth_send(&reply).unwrap();
    let f = q.auth_recv().unwrap();
    assert_eq!((f[1], f[7]), (0xf1, reason::EXP_INCORRECT_PAYLOAD));
    drop(t);
}

#[test]
fn bidirectional_wrong_controller_key_detected() {
    let hk = secret(4, 0);
    let ck = secret(5, 3);
    let (t, port) = setup(&hk, Some(&ck));
    let e = Controller::connect(&opts(port, Some(HostAuthConfig::new(hk.clone(), Some(secret(6, 3)))))).err().unwrap();
    assert!(matches!(e, HostError::Auth(HostAuthError::CtrlMismatch)), "{e}");
    let mut c = Controller::connect(&opts(port, Some(HostAuthConfig::new(hk.clone(), Some(ck))))).unwrap();
    assert_eq!(c.namespaces().unwrap(), vec![1]);
    drop(t);
    // Bidirectional asked of a target without a controller key: refused.
    let (t, port) = setup(&hk, None);
    let e = Controller::connect(&opts(port, Some(HostAuthConfig::new(hk, Some(secret(6, 0)))))).err().unwrap();
    assert!(matches!(e, HostError::Auth(HostAuthError::Refused(..))), "{e}");
    drop(t);
}

#[test]
fn reauth_during_io_and_key_rotation() {
    let hk = secret(7, 1);
    let (t, port) = setup(&hk, None);
    let cfg = HostAuthConfig::new(hk.clone(), None);
    let mut c = Controller::connect(&opts(port, Some(cfg.clone()))).unwrap();
    c.set_num_queues(1).unwrap();
    let mut q = c.io_queue(1, 32).unwrap();
    let data = vec![0x5au8; 4096];
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut rounds = 0;
    while Instant::now() < deadline {
        // Writes in flight on the I/O queue while the admin queue re-authenticates.
        for cid in 0..16u16 {
            q.submit(cid, rw_sqe(true, 1, cid as u64 * 8, 8), Some(&data), 0).unwrap();
        }
        q.flush().unwrap();
        c.admin.authenticate(&cfg, HOST, NQN).unwrap();
        let mut done = 0;
        while done < 16 {
            q.poll(Duration::from_secs(5), &mut |_, cqe, _| {
                assert!(cqe.status.is_ok(), "{}", cqe.status);
                done += 1;
            })
            .unwrap();
        }
        // The I/O queue re-authenticates too.
        q.authenticate(&cfg, HOST, NQN).unwrap();
        rounds += 1;
    }
    assert!(rounds > 1);
    // Rotate the key: the next re-authentication with the old key fails and ends the queue.
    let new = secret(8, 1);
    add_key(&t, "key1", &new);
    t.rpc("nvmf_subsystem_set_keys", json!({"nqn": NQN, "host": HOST, "dhchap_key": "key1"}));
    let e = q.authenticate(&cfg, HOST, NQN).unwrap_err();
    assert!(matches!(e, HostError::Auth(HostAuthError::Refused(..))), "{e}");
    assert!(q.cmd(rw_sqe(false, 1, 0, 8), None, 4096).is_err(), "queue ended");
    // A new connection with the old key is refused, with the new key accepted.
    assert!(Controller::connect(&opts(port, Some(cfg))).is_err());
    let mut c2 = Controller::connect(&opts(port, Some(HostAuthConfig::new(new, None)))).unwrap();
    assert_eq!(c2.namespaces().unwrap(), vec![1]);
    drop(t);
}

#[test]
fn perf_with_dhchap_and_reauth() {
    let hk = secret(10, 3);
    let ck = secret(11, 0);
    let (t, port) = setup(&hk, Some(&ck));
    // The host secret from a file, the controller secret inline (both forms nvme-cli accepts).
    let f = t.path("host.secret");
    std::fs::write(&f, format!("{}\n", hk.encode())).unwrap();
    let run = |ctrl: &Secret, extra: &[&str]| {
        std::process::Command::new(common::BIN)
            .args(["perf", "--transport", "tcp", "--addr", "127.0.0.1", "--port", &port.to_string(), "--nqn", NQN, "--hostnqn", HOST])
            .args(["--dhchap-secret", f.to_str().unwrap(), "--dhchap-ctrl-secret", &ctrl.encode()])
            .args(["--qd", "8", "--rw", "randrw", "--verify", "--json"])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&ck, &["--time", "3500ms", "--reauth-every", "1s", "--dhchap-digest", "sha384,sha512", "--dhchap-dhgroup", "ffdhe2048"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["errors"], 0, "{v}");
    assert!(err.matches("re-authenticated").count() >= 2, "{err}");
    // A controller that cannot prove the controller key: perf aborts before any I/O.
    let out = run(&secret(12, 0), &["--time", "1s"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("controller failed to authenticate"), "{}", String::from_utf8_lossy(&out.stderr));
    drop(t);
}

#[test]
fn set_config_limits_digests_and_groups() {
    let hk = secret(13, 0);
    let (t, port) = setup(&hk, None);
    t.rpc("nvmf_set_config", json!({"dhchap_digests": ["sha384"], "dhchap_dhgroups": ["ffdhe3072"]}));
    let offer = |d: Vec<Digest>, g: Vec<DhGroup>| {
        let mut cfg = HostAuthConfig::new(hk.clone(), None);
        cfg.digests = d;
        cfg.groups = g;
        Controller::connect(&opts(port, Some(cfg)))
    };
    // Only what the target allows is chosen, even when the host offers stronger.
    let e = offer(vec![Digest::Sha256, Digest::Sha512], DhGroup::ALL.to_vec()).err().unwrap();
    assert!(matches!(e, HostError::Auth(HostAuthError::Refused(reason::FAILED, reason::EXP_HASH_UNUSABLE))), "{e}");
    let e = offer(Digest::ALL.to_vec(), vec![DhGroup::Null, DhGroup::Ffdhe8192]).err().unwrap();
    assert!(matches!(e, HostError::Auth(HostAuthError::Refused(reason::FAILED, reason::EXP_DHGROUP_UNUSABLE))), "{e}");
    let o = opts(port, None);
    let (mut q, _) = Queue::connect_raw(&o, 0, 32, 0xffff).unwrap();
    let cfg = HostAuthConfig::new(hk.clone(), None);
    let mut tr = HostTransaction::new(&cfg, HOST, NQN, 1);
    q.auth_send(&tr.negotiate()).unwrap();
    tr.reply(&q.auth_recv().unwrap()).unwrap();
    assert_eq!(tr.chosen, Some((Digest::Sha384, DhGroup::Ffdhe3072)));
    drop(t);
}

#[test]
fn half_done_transactions_time_out() {
    let hk = secret(14, 0);
    let (t, port) = setup(&hk, None);
    let o = opts(port, None);
    let cfg = HostAuthConfig::new(hk, None);
    // One queue that never starts authenticating, one that stops after the challenge.
    let (mut silent, _) = Queue::connect_raw(&o, 0, 32, 0xffff).unwrap();
    let (mut stalled, _) = Queue::connect_raw(&o, 0, 32, 0xffff).unwrap();
    let tr = HostTransaction::new(&cfg, HOST, NQN, 1);
    stalled.auth_send(&tr.negotiate()).unwrap();
    let _challenge = stalled.auth_recv().unwrap();
    let start = Instant::now();
    std::thread::sleep(palisade::nvmf::auth::target::STEP_TIMEOUT + Duration::from_millis(1500));
    for q in [&mut silent, &mut stalled] {
        assert!(q.auth_send(&tr.negotiate()).is_err(), "the target closed the queue after {:?}", start.elapsed());
    }
    drop(t);
}
