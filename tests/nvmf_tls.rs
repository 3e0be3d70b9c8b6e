//! NVMe/TCP secure channel (TLS 1.3 with PSKs, NVMe/TCP §3.6) against the built binary, over real
//! sockets: verified reads and writes through TLS with both cipher suites (SHA-256 and SHA-384
//! keys, identity versions 0 and 1, digests on, 128 KiB transfers), refusals (plaintext on a
//! secure listener, a wrong PSK, an identity of a host not allowed, a Connect naming another host
//! than the PSK identity), a plain listener still serving plaintext, the discovery log's
//! TREQ/TSAS, and `palisade perf --tls --verify`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::{free_port, Target, BIN};
use palisade::nvme::tls_psk::{ConfiguredPsk, PskHash};
use palisade::nvmf::host::{rw_sqe, Controller, HostError, HostOpts, HostTls};
use serde_json::json;

const NQN: &str = "nqn.2016-06.io.spdk:tls1";
const PLAIN_NQN: &str = "nqn.2016-06.io.spdk:plain1";
const H1: &str = "nqn.2014-08.org.nvmexpress:uuid:11111111-1111-1111-1111-111111111111";
const H2: &str = "nqn.2014-08.org.nvmexpress:uuid:22222222-2222-2222-2222-222222222222";
const H3: &str = "nqn.2014-08.org.nvmexpress:uuid:33333333-3333-3333-3333-333333333333";

fn key(hash: Option<PskHash>, len: usize, seed: u8) -> ConfiguredPsk {
    ConfiguredPsk { hash, key: (0..len).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect() }
}

struct Setup {
    t: Target,
    port: u16,
    plain_port: u16,
    k1: ConfiguredPsk,
    k2: ConfiguredPsk,
}

/// A secure listener for NQN (hosts H1 with a SHA-256 key, H2 with a SHA-384 key), and a plain
/// listener for PLAIN_NQN (any host).
fn setup() -> Setup {
    let t = Target::start(&["-m", "0x1"]);
    let k1 = key(Some(PskHash::Sha256), 32, 1);
    let k2 = key(Some(PskHash::Sha384), 48, 2);
    for (name, k) in [("key1", &k1), ("key2", &k2)] {
        let p = t.path(name);
        std::fs::write(&p, k.encode()).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        t.rpc("keyring_file_add_key", json!({"name": name, "path": p.to_str().unwrap()}));
    }
    t.rpc("bdev_malloc_create", json!({"name": "M0", "num_blocks": 65536, "block_size": 512}));
    t.rpc("bdev_malloc_create", json!({"name": "M1", "num_blocks": 8192, "block_size": 512}));
    t.rpc("nvmf_create_transport", json!({"trtype": "TCP", "max_io_size": 131072}));
    t.rpc("nvmf_create_subsystem", json!({"nqn": NQN, "serial_number": "TLS0001"}));
    t.rpc("nvmf_subsystem_add_ns", json!({"nqn": NQN, "namespace": {"bdev_name": "M0"}}));
    t.rpc("nvmf_subsystem_add_host", json!({"nqn": NQN, "host": H1, "psk": "key1"}));
    t.rpc("nvmf_subsystem_add_host", json!({"nqn": NQN, "host": H2, "psk": "key2"}));
    let port = free_port();
    t.rpc(
        "nvmf_subsystem_add_listener",
        json!({"nqn": NQN, "secure_channel": true, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}}),
    );
    let plain_port = t.export_nvmf(PLAIN_NQN, "PLAIN01", "M1");
    Setup { t, port, plain_port, k1, k2 }
}

fn opts(port: u16, nqn: &str, host: &str) -> HostOpts {
    let mut o = HostOpts::new(format!("127.0.0.1:{port}").parse().unwrap(), nqn);
    o.hostnqn = host.to_string();
    o.timeout = std::time::Duration::from_secs(5);
    o
}

fn tls_opts(port: u16, host: &str, k: &ConfiguredPsk, version: u8) -> HostOpts {
    let mut o = opts(port, NQN, host);
    o.tls = Some(HostTls::from_configured(k, host, NQN, version, None).unwrap());
    o
}

/// Write then read back 4 KiB and 128 KiB at `lba` through one I/O queue.
fn write_read(o: &HostOpts, lba: u64, seed: u8) {
    let mut c = Controller::connect(o).expect("connect");
    c.set_num_queues(1).unwrap();
    let mut q = c.io_queue(1, 32).expect("I/O queue");
    for bytes in [4096usize, 128 << 10] {
        let data: Vec<u8> = (0..bytes).map(|i| (i as u32).wrapping_mul(2654435761).rotate_left(seed as u32) as u8 ^ seed).collect();
        let blocks = (bytes / 512) as u32;
        let (cqe, _) = q.sync(rw_sqe(true, 1, lba, blocks), Some(&data), 0).unwrap();
        assert!(cqe.status.is_ok(), "write {bytes}: {}", cqe.status);
        let (cqe, got) = q.sync(rw_sqe(false, 1, lba, blocks), None, bytes).unwrap();
        assert!(cqe.status.is_ok(), "read {bytes}: {}", cqe.status);
        assert!(got == data, "read back {bytes} bytes differ");
    }
    c.shutdown().unwrap();
}

/// The connection must fail in the TLS handshake (`tls`) or be dropped before ICResp.
fn refused(r: Result<Controller, HostError>, what: &str, tls: bool) {
    match r {
        Ok(_) => panic!("{what}: connected"),
        Err(e @ HostError::Tls(_)) if tls => eprintln!("{what}: refused as expected: {e}"),
        Err(e @ (HostError::Io(_) | HostError::Protocol(_))) if !tls => eprintln!("{what}: refused as expected: {e}"),
        Err(e) => panic!("{what}: refused the wrong way: {e}"),
    }
}

#[test]
fn tls_data_path_both_suites_digests_and_refusals() {
    let s = setup();
    // SHA-256 key, identity version 1, digests on.
    let mut o = tls_opts(s.port, H1, &s.k1, 1);
    o.hdgst = true;
    o.ddgst = true;
    write_read(&o, 0, 3);
    // SHA-384 key (TLS_AES_256_GCM_SHA384), identity version 0, digests on.
    let mut o = tls_opts(s.port, H2, &s.k2, 0);
    o.hdgst = true;
    o.ddgst = true;
    write_read(&o, 1024, 5);
    // No digests, version 0 with the SHA-256 key.
    write_read(&tls_opts(s.port, H1, &s.k1, 0), 2048, 7);

    // Plaintext on the secure listener: the connection is closed before ICResp.
    refused(Controller::connect(&opts(s.port, NQN, H1)), "plaintext on a secure listener", false);
    // A wrong PSK (H1 with a key that is not its own): the handshake fails.
    let wrong = key(Some(PskHash::Sha256), 32, 9);
    refused(Controller::connect(&tls_opts(s.port, H1, &wrong, 1)), "wrong PSK (identity v1: digest mismatch)", true);
    // Version 0 carries no digest: the PSK binder fails.
    refused(Controller::connect(&tls_opts(s.port, H1, &wrong, 0)), "wrong PSK (identity v0: binder)", true);
    // A host not on the subsystem's list, whatever its key.
    refused(Controller::connect(&tls_opts(s.port, H3, &s.k1, 1)), "identity of a host not allowed", true);
    // A PSK identity for H1 (its right key) but a Connect naming H2: refused by Connect.
    let mut o = opts(s.port, NQN, H2);
    o.tls = Some(HostTls::from_configured(&s.k1, H1, NQN, 1, None).unwrap());
    match Controller::connect(&o) {
        Err(HostError::Status(st)) => eprintln!("Connect for another host than the PSK identity: {st}"),
        Err(e) => panic!("expected a Connect status, got {e}"),
        Ok(_) => panic!("Connect naming another host than the PSK identity was accepted"),
    }
    // A cipher suite that does not fit the key is refused by the host before connecting.
    assert!(HostTls::from_configured(&s.k1, H1, NQN, 1, Some(PskHash::Sha384)).is_err());

    // The plain listener still serves plaintext.
    write_read(&opts(s.plain_port, PLAIN_NQN, H3), 0, 11);

    // Discovery through the plain port lists the secure listener with TREQ "required" and
    // TSAS SECTYPE TLS 1.3, the plain one as "not required".
    let mut d = Controller::connect(&opts(s.plain_port, "nqn.2014-08.org.nvmexpress.discovery", H1)).unwrap();
    let log = d.admin.get_log_page(0x70, 4096, 0).unwrap();
    let n = u64::from_le_bytes(log[8..16].try_into().unwrap()) as usize;
    let mut seen = 0;
    for i in 0..n.min(3) {
        let e = &log[1024 * (i + 1)..1024 * (i + 2)];
        let svc = String::from_utf8_lossy(&e[32..64]).trim().to_string();
        if e[2] == 2 && svc == s.port.to_string() {
            assert_eq!((e[3] & 3, e[768]), (0b01, 2), "secure listener entry");
            seen += 1;
        }
        if e[2] == 2 && svc == s.plain_port.to_string() {
            assert_eq!((e[3] & 3, e[768]), (0b10, 0), "plain listener entry");
        }
    }
    assert_eq!(seen, 1, "the secure listener is in the discovery log");
    s.t.stop();
}

#[test]
fn perf_tls_verify_both_ciphers() {
    let s = setup();
    let dir = tempfile::tempdir().unwrap();
    let kf = dir.path().join("k2");
    std::fs::write(&kf, s.k2.encode()).unwrap();
    for (host, psk, extra) in [
        (H1, s.k1.encode(), vec!["--tls-cipher", "aes128", "--psk-identity-version", "0"]),
        (H2, kf.to_str().unwrap().to_string(), vec!["--hdgst", "--ddgst"]),
    ] {
        let port = s.port.to_string();
        let out = Command::new(BIN)
            .args(["perf", "--transport", "tcp", "--addr", "127.0.0.1", "--port", &port, "--nqn", NQN, "--hostnqn", host])
            .args(["--tls", "--psk", &psk, "--rw", "randrw", "--bs", "128k", "--qd", "8", "--time", "1s", "--verify"])
            .args(&extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "perf --tls as {host} failed: {err}");
    }
    // Without --tls the secure listener refuses perf.
    let out = Command::new(BIN)
        .args(["perf", "--transport", "tcp", "--addr", "127.0.0.1", "--port", &s.port.to_string(), "--nqn", NQN, "--hostnqn", H1, "--time", "1s"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "plaintext perf on a secure listener succeeded");
    s.t.stop();
}
