//! NVMe-oF management and whole-program behaviour against the built binary: nvmf_* RPC shapes and
//! errors, rpc.py command forms (ours and SPDK's own client), save_config → restart → same
//! exports, `palisade perf` verify runs, and SIGTERM while perf I/O is in flight.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, Target, BIN};
use palisade::nvmf::host::{Controller, HostOpts};
use serde_json::{json, Value};

const NQN: &str = "nqn.2016-06.io.spdk:cnode1";

fn export(t: &Target, port: u16) {
    t.rpc("bdev_malloc_create", json!({"name": "Malloc0", "num_blocks": 65536, "block_size": 512}));
    t.rpc("nvmf_create_transport", json!({"trtype": "TCP", "max_queue_depth": 64}));
    t.rpc("nvmf_create_subsystem", json!({"nqn": NQN, "allow_any_host": true, "serial_number": "SPDK001"}));
    t.rpc("nvmf_subsystem_add_ns", json!({"nqn": NQN, "namespace": {"bdev_name": "Malloc0"}}));
    t.rpc(
        "nvmf_subsystem_add_listener",
        json!({"nqn": NQN, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}}),
    );
}

/// Start with a config document. (Written to our own temp dir: the shared harness's
/// start_with_config drops the directory holding the RPC socket.)
fn start_with(config: &Value, cfg_dir: &tempfile::TempDir) -> Target {
    let path = cfg_dir.path().join("config.json");
    std::fs::write(&path, serde_json::to_vec_pretty(config).unwrap()).unwrap();
    let t = Target::start(&["-c", path.to_str().unwrap(), "-m", "0x1"]);
    // The RPC socket answers while the runtime part of the config is still being applied: wait
    // until the subsystem with its listener exists.
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.try_rpc("nvmf_get_subsystems", Some(json!({"nqn": NQN}))).map(|v| v[0]["listen_addresses"].as_array().map_or(0, |a| a.len())).unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "config was not applied");
        std::thread::sleep(Duration::from_millis(20));
    }
    t
}

fn opts(port: u16, nqn: &str) -> HostOpts {
    HostOpts::new(format!("127.0.0.1:{port}").parse().unwrap(), nqn)
}

#[test]
fn rpc_shapes_and_errors() {
    let t = Target::start(&["-m", "0x1"]);
    let port = free_port();
    // Listener before the transport exists: refused.
    t.rpc("nvmf_create_subsystem", json!({"nqn": "nqn.2016-06.io.spdk:early"}));
    let e = t
        .try_rpc("nvmf_subsystem_add_listener", Some(json!({"nqn": "nqn.2016-06.io.spdk:early", "listen_address": {"trtype": "TCP", "traddr": "127.0.0.1", "trsvcid": "4420"}})))
        .unwrap_err();
    assert_eq!(e.0, -libc::ENODEV as i64, "{e:?}");
    t.rpc("nvmf_delete_subsystem", json!({"nqn": "nqn.2016-06.io.spdk:early"}));
    export(&t, port);
    // Transports.
    let tr = t.rpc("nvmf_get_transports", Value::Null);
    assert_eq!(tr[0]["trtype"], "TCP");
    assert_eq!(tr[0]["max_queue_depth"], 64);
    assert_eq!(tr[0]["in_capsule_data_size"], 4096);
    assert_eq!(t.try_rpc("nvmf_create_transport", Some(json!({"trtype": "TCP"}))).unwrap_err().0, -libc::EEXIST as i64);
    assert_eq!(t.try_rpc("nvmf_create_transport", Some(json!({"trtype": "RDMA"}))).unwrap_err().0, -libc::EINVAL as i64);
    // Subsystems: the discovery subsystem and ours, SPDK's field names.
    let subs = t.rpc("nvmf_get_subsystems", Value::Null);
    let subs = subs.as_array().unwrap();
    assert_eq!(subs.len(), 2);
    let d = subs.iter().find(|s| s["subtype"] == "Discovery").unwrap();
    assert_eq!(d["nqn"], "nqn.2014-08.org.nvmexpress.discovery");
    let s = subs.iter().find(|s| s["nqn"] == NQN).unwrap();
    assert_eq!(s["subtype"], "NVMe");
    assert_eq!(s["serial_number"], "SPDK001");
    assert_eq!(s["allow_any_host"], true);
    assert_eq!(s["listen_addresses"][0], json!({"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}));
    assert_eq!(s["namespaces"][0]["nsid"], 1);
    assert_eq!(s["namespaces"][0]["bdev_name"], "Malloc0");
    assert_eq!(s["namespaces"][0]["nguid"].as_str().unwrap().len(), 32);
    let l = t.rpc("nvmf_subsystem_get_listeners", json!({"nqn": NQN}));
    assert_eq!(l[0]["address"]["trsvcid"], port.to_string());
    // Errors change nothing.
    assert_eq!(t.try_rpc("nvmf_create_subsystem", Some(json!({"nqn": NQN}))).unwrap_err().0, -libc::EEXIST as i64);
    assert_eq!(t.try_rpc("nvmf_create_subsystem", Some(json!({"nqn": "bad name"}))).unwrap_err().0, -32602);
    assert_eq!(t.try_rpc("nvmf_create_subsystem", Some(json!({"nqn": "nqn.x", "bogus": 1}))).unwrap_err().0, -32602);
    assert_eq!(t.try_rpc("nvmf_subsystem_add_ns", Some(json!({"nqn": NQN, "namespace": {"bdev_name": "nope"}}))).unwrap_err().0, -libc::ENODEV as i64);
    assert_eq!(t.try_rpc("nvmf_subsystem_add_ns", Some(json!({"nqn": NQN, "namespace": {"bdev_name": "Malloc0", "nsid": 1}}))).unwrap_err().0, -libc::EEXIST as i64);
    assert_eq!(t.try_rpc("nvmf_subsystem_remove_ns", Some(json!({"nqn": NQN, "nsid": 9}))).unwrap_err().0, -libc::ENODEV as i64);
    assert_eq!(t.try_rpc("nvmf_delete_subsystem", Some(json!({"nqn": "nqn.2016-06.io.spdk:none"}))).unwrap_err().0, -libc::ENODEV as i64);
    let busy_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bp = busy_port.local_addr().unwrap().port();
    let e = t
        .try_rpc("nvmf_subsystem_add_listener", Some(json!({"nqn": NQN, "listen_address": {"trtype": "TCP", "traddr": "127.0.0.1", "trsvcid": bp.to_string()}})))
        .unwrap_err();
    assert_eq!(e.0, -libc::EADDRINUSE as i64, "{e:?}");
    assert_eq!(t.rpc("nvmf_get_subsystems", json!({"nqn": NQN}))[0]["listen_addresses"].as_array().unwrap().len(), 1);
    // SPDK's newest client parameters are accepted.
    t.rpc("nvmf_create_subsystem", json!({"nqn": "nqn.2016-06.io.spdk:cnode2", "ana_reporting": false, "passthrough": false, "enable_nssr": false, "tgt_name": null, "min_cntlid": 1, "max_cntlid": 65519}));
    t.rpc("nvmf_subsystem_add_host", json!({"nqn": "nqn.2016-06.io.spdk:cnode2", "host": "nqn.2014-08.org.nvmexpress:uuid:h1", "psk": null}));
    assert_eq!(t.rpc("nvmf_get_subsystems", json!({"nqn": "nqn.2016-06.io.spdk:cnode2"}))[0]["hosts"][0]["nqn"], "nqn.2014-08.org.nvmexpress:uuid:h1");
    t.rpc("nvmf_subsystem_remove_host", json!({"nqn": "nqn.2016-06.io.spdk:cnode2", "host": "nqn.2014-08.org.nvmexpress:uuid:h1"}));
    t.rpc("nvmf_delete_subsystem", json!({"nqn": "nqn.2016-06.io.spdk:cnode2"}));
    // Removing the listener closes the port and the controllers connected through it; the bdev
    // claim goes with the subsystem.
    let c = Controller::connect(&opts(port, NQN)).unwrap();
    assert_eq!(t.rpc("nvmf_subsystem_get_controllers", json!({"nqn": NQN})).as_array().unwrap().len(), 1);
    t.rpc("nvmf_subsystem_remove_listener", json!({"nqn": NQN, "listen_address": {"trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": port.to_string()}}));
    let deadline = Instant::now() + Duration::from_secs(3);
    while !t.rpc("nvmf_subsystem_get_controllers", json!({"nqn": NQN})).as_array().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "controller survived its listener");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(c);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    t.rpc("nvmf_delete_subsystem", json!({"nqn": NQN}));
    t.rpc("bdev_malloc_delete", json!({"name": "Malloc0"}));
    t.stop();
}

fn rpc_cli(t: &Target, args: &[&str]) -> String {
    let out = Command::new(BIN).args(["rpc", "-s", t.sock_str()]).args(args).output().unwrap();
    assert!(out.status.success(), "palisade rpc {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn rpc_py_command_forms_and_save_config_restart() {
    let t = Target::start(&["-m", "0x1"]);
    let port = free_port().to_string();
    // rpc.py's argument forms through our client.
    rpc_cli(&t, &["bdev_malloc_create", "-b", "Malloc0", "32", "512", "-u", "5a1e5ade-0000-4000-8000-0000000000bb"]);
    rpc_cli(&t, &["nvmf_create_transport", "-t", "TCP", "-u", "16384", "-c", "8192"]);
    rpc_cli(&t, &["nvmf_create_subsystem", NQN, "-s", "SN42", "-d", "Model42", "-m", "8"]);
    rpc_cli(&t, &["nvmf_subsystem_add_ns", NQN, "Malloc0", "-n", "3"]);
    rpc_cli(&t, &["nvmf_subsystem_add_host", NQN, "nqn.2014-08.org.nvmexpress:uuid:allowed"]);
    rpc_cli(&t, &["nvmf_subsystem_add_listener", NQN, "-t", "tcp", "-a", "127.0.0.1", "-s", &port, "-f", "ipv4"]);
    // And through SPDK's own client, when it is installed.
    if common::require("spdk-rpc") {
        let out = Command::new("spdk-rpc").args(["-s", t.sock_str(), "nvmf_get_subsystems"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(v.as_array().unwrap().iter().any(|s| s["nqn"] == NQN));
        let out = Command::new("spdk-rpc").args(["-s", t.sock_str(), "nvmf_subsystem_allow_any_host", NQN, "--no-allow-any-host"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    rpc_cli(&t, &["nvmf_subsystem_allow_any_host", NQN, "--allow-any-host"]);
    let one: Value = serde_json::from_str(&rpc_cli(&t, &["nvmf_get_subsystems", NQN])).unwrap();
    assert_eq!(one[0]["allow_any_host"], true);
    rpc_cli(&t, &["nvmf_subsystem_allow_any_host", NQN, "--no-allow-any-host"]);
    let one: Value = serde_json::from_str(&rpc_cli(&t, &["nvmf_get_subsystems", NQN])).unwrap();
    assert_eq!(one[0]["allow_any_host"], false);
    assert_eq!(one[0]["namespaces"][0]["nsid"], 3);
    let before = t.rpc("nvmf_get_subsystems", json!({"nqn": NQN}));
    let mut o = opts(port.parse().unwrap(), NQN);
    o.hostnqn = "nqn.2014-08.org.nvmexpress:uuid:allowed".into();
    let mut c = Controller::connect(&o).unwrap();
    let nguid = c.namespace(3).unwrap().nguid;
    drop(c);
    let saved = t.rpc("save_config", Value::Null);
    t.stop();
    // Restart from the saved config: same exports, same identifiers.
    let cfg_dir = tempfile::tempdir().unwrap();
    let t2 = start_with(&saved, &cfg_dir);
    let after = t2.rpc("nvmf_get_subsystems", json!({"nqn": NQN}));
    assert_eq!(before, after);
    let tr = t2.rpc("nvmf_get_transports", Value::Null);
    assert_eq!((tr[0]["io_unit_size"].as_u64(), tr[0]["in_capsule_data_size"].as_u64()), (Some(16384), Some(8192)));
    let mut c = Controller::connect(&o).unwrap();
    assert_eq!(c.id.serial, "SN42");
    assert_eq!(c.namespaces().unwrap(), vec![3]);
    assert_eq!(c.namespace(3).unwrap().nguid, nguid);
    assert!(Controller::connect(&opts(port.parse().unwrap(), NQN)).is_err(), "host list restored");
    drop(c);
    t2.stop();
}

fn perf(port: u16, extra: &[&str]) -> (bool, Value, String) {
    let p = port.to_string();
    let out = Command::new(BIN)
        .args(["perf", "--transport", "tcp", "--addr", "127.0.0.1", "--port", &p, "--nqn", NQN, "--json"])
        .args(extra)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.success(), v, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn perf_verify_over_several_queues() {
    let t = Target::start(&["-m", "0x1"]);
    let port = free_port();
    export(&t, port);
    for args in [
        &["--queues", "3", "--qd", "8", "--rw", "randrw", "--mix", "50", "--verify", "--time", "1500ms"][..],
        &["--queues", "2", "--qd", "4", "--rw", "write", "--bs", "64k", "--verify", "--hdgst", "--ddgst", "--time", "1s"][..],
        &["--queues", "1", "--qd", "16", "--rw", "randread", "--verify", "--time", "1s"][..],
    ] {
        let (ok, v, err) = perf(port, args);
        assert!(ok, "perf {args:?} failed: {err}\n{v}");
        assert_eq!(v["errors"], 0, "{v}");
        assert!(v["ios"].as_u64().unwrap() > 100, "{v}");
        assert!(v["lat_us"]["p99"].as_f64().unwrap() > 0.0);
        assert!(err.contains("IOPS"), "progress lines on stderr: {err}");
    }
    // A missing subsystem is a clean error.
    let out = Command::new(BIN).args(["perf", "--port", &port.to_string(), "--nqn", "nqn.2016-06.io.spdk:none", "--time", "1s"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    // The iSCSI transport needs a target name, and says so.
    let out = Command::new(BIN).args(["perf", "--transport", "iscsi", "--time", "1s"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--target"));
    // The iSCSI transport with no target behind the port: a clean error naming it.
    let nobody = free_port().to_string();
    let out = Command::new(BIN).args(["perf", "--transport", "iscsi", "--target", "iqn.x", "--port", &nobody, "--time", "1s"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("iSCSI login"), "{}", String::from_utf8_lossy(&out.stderr));
    t.stop();
}

#[test]
fn sigterm_with_io_in_flight_exits_promptly() {
    let mut t = Target::start(&["-m", "0x1"]);
    let port = free_port();
    export(&t, port);
    let p = port.to_string();
    let mut perf = Command::new(BIN)
        .args(["perf", "--port", &p, "--nqn", NQN, "--queues", "2", "--qd", "32", "--rw", "randrw", "--time", "60s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let t0 = Instant::now();
    let st = t.signal_and_wait(libc::SIGTERM, Duration::from_secs(10)).expect("target exits after SIGTERM");
    assert!(st.success(), "target exit status {st}");
    assert!(t0.elapsed() < Duration::from_secs(5), "shutdown took {:?}", t0.elapsed());
    // The initiator notices the connection is gone instead of hanging.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(st) = perf.try_wait().unwrap() {
            assert!(!st.success(), "perf must report the lost connection");
            break;
        }
        if Instant::now() > deadline {
            let _ = perf.kill();
            panic!("perf hung after the target went away");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn default_config_exports_malloc0() {
    // The embedded default listens on 4420; check its nvmf section without binding that port.
    let cfg: Value = serde_json::from_str(palisade::cli::serve::DEFAULT_CONFIG).unwrap();
    let nvmf = cfg["subsystems"].as_array().unwrap().iter().find(|s| s["subsystem"] == "nvmf").unwrap();
    let calls: Vec<&str> = nvmf["config"].as_array().unwrap().iter().map(|c| c["method"].as_str().unwrap()).collect();
    assert_eq!(calls, ["nvmf_create_transport", "nvmf_create_subsystem", "nvmf_subsystem_add_ns", "nvmf_subsystem_add_listener"]);
    // Run the same config on a free port and connect to it.
    let port = free_port();
    // Its iSCSI portal (3260) moves to a free port too: the test must not depend on fixed ports.
    let text = palisade::cli::serve::DEFAULT_CONFIG
        .replace("\"4420\"", &format!("\"{port}\""))
        .replace("\"3260\"", &format!("\"{}\"", free_port()));
    let cfg_dir = tempfile::tempdir().unwrap();
    let t = start_with(&serde_json::from_str(&text).unwrap(), &cfg_dir);
    let mut c = Controller::connect(&opts(port, NQN)).unwrap();
    let ns = c.namespace(1).unwrap();
    assert_eq!((ns.nsze, ns.block_size), (524288, 512));
    drop(c);
    t.stop();
}
