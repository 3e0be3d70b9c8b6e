//! The compatibility proof: SPDK's own client, `spdk-rpc` from PyPI, unchanged, drives every
//! foundation method of Palisade, and `spdk-rpc save_config` / `load_config` round-trip.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::{bdev_names, Target};
use serde_json::{json, Value};

fn spdk(t: &Target, args: &[&str]) -> Output {
    spdk_stdin(t, args, None)
}

fn spdk_stdin(t: &Target, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new("spdk-rpc")
        .arg("-s")
        .arg(&t.sock)
        .arg("-t")
        .arg("30")
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run spdk-rpc");
    if let Some(data) = stdin {
        child.stdin.take().unwrap().write_all(data).unwrap();
    }
    child.wait_with_output().unwrap()
}

/// Run spdk-rpc, require success, parse its output as JSON (Null when it printed nothing).
fn ok(t: &Target, args: &[&str]) -> Value {
    let o = spdk(t, args);
    assert!(
        o.status.success(),
        "spdk-rpc {args:?} failed\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let out = String::from_utf8(o.stdout).unwrap();
    if out.trim().is_empty() {
        return Value::Null;
    }
    serde_json::from_str(&out).unwrap_or_else(|_| Value::String(out.trim().to_string()))
}

/// Run spdk-rpc expecting a JSON-RPC error: exit 1 and the error object printed.
fn fails(t: &Target, args: &[&str], code: i64, message: &str) {
    let o = spdk(t, args);
    let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(1), "spdk-rpc {args:?}: {all}");
    assert!(all.contains(&format!("\"code\": {code}")), "spdk-rpc {args:?}: {all}");
    assert!(all.contains(&format!("\"message\": {}", serde_json::to_string(message).unwrap())), "spdk-rpc {args:?}: {all}");
}

#[test]
fn spdk_rpc_drives_the_bdev_methods() {
    if !common::require("spdk-rpc") {
        return;
    }
    let t = Target::start(&[]);
    assert_eq!(ok(&t, &["bdev_malloc_create", "-b", "Malloc0", "-u", "6f1c2b4a-1d2e-4f00-9a00-000000000001", "64", "512"]), json!("Malloc0"));
    assert_eq!(ok(&t, &["bdev_malloc_create", "32", "4096"]), json!("Malloc1"));
    let b = ok(&t, &["bdev_get_bdevs", "-b", "Malloc0"]);
    assert_eq!(b[0]["num_blocks"], 131072);
    assert_eq!(b[0]["block_size"], 512);
    assert_eq!(b[0]["uuid"], "6f1c2b4a-1d2e-4f00-9a00-000000000001");
    assert_eq!(ok(&t, &["bdev_get_bdevs", "-b", "Malloc1"])[0]["num_blocks"], 8192);
    fails(&t, &["bdev_malloc_create", "-b", "Malloc0", "64", "512"], -17, "File exists: bdev Malloc0 already exists");
    fails(&t, &["bdev_get_bdevs", "-b", "Nope"], -19, "No such device: bdev Nope not found");
    fails(&t, &["bdev_malloc_create", "-b", "Md", "-m", "8", "1", "512"], -32602, "Invalid parameters: md_size: 8 is not supported (only 0)");
    assert_eq!(bdev_names(&t), ["Malloc0", "Malloc1"]);

    assert_eq!(ok(&t, &["bdev_null_create", "Null0", "16", "512"]), json!("Null0"));
    assert_eq!(ok(&t, &["bdev_get_bdevs", "-b", "Null0"])[0]["product_name"], "Null disk");
    fails(&t, &["bdev_null_create", "Null0", "16", "512"], -17, "File exists: bdev Null0 already exists");

    let file = t.path("u.img");
    std::fs::write(&file, vec![0u8; 2 << 20]).unwrap();
    let f = file.to_str().unwrap();
    assert_eq!(ok(&t, &["bdev_uring_create", f, "Uring0", "4096"]), json!("Uring0"));
    let u = ok(&t, &["bdev_get_bdevs", "-b", "Uring0"]);
    assert_eq!((u[0]["block_size"].as_u64(), u[0]["num_blocks"].as_u64()), (Some(4096), Some(512)));
    assert_eq!(ok(&t, &["bdev_uring_create", f, "Uring1"]), json!("Uring1"));
    let missing = t.path("missing");
    fails(
        &t,
        &["bdev_uring_create", missing.to_str().unwrap(), "Uring2"],
        -2,
        &format!("No such file or directory: cannot open {}: No such file or directory (os error 2)", missing.display()),
    );

    let st = ok(&t, &["bdev_get_iostat"]);
    assert_eq!(st["bdevs"].as_array().unwrap().len(), 5);
    let st = ok(&t, &["bdev_get_iostat", "--names", "Null0"]);
    assert_eq!(st["bdevs"][0]["name"], "Null0");
    assert_eq!(st["bdevs"][0]["num_read_ops"], 0);
    let pc = ok(&t, &["bdev_get_iostat", "-c", "--names", "Null0"]);
    assert_eq!((pc["name"].clone(), pc["channels"].clone()), (json!("Null0"), json!([])), "{pc}");
    assert_eq!(ok(&t, &["bdev_get_bdevs"]).as_array().unwrap().len(), 5);

    ok(&t, &["bdev_malloc_delete", "Malloc1"]);
    ok(&t, &["bdev_null_delete", "Null0"]);
    ok(&t, &["bdev_uring_delete", "Uring1"]);
    fails(&t, &["bdev_uring_delete", "Uring1"], -19, "No such device: bdev Uring1 not found");
    fails(&t, &["bdev_malloc_delete", "Uring0"], -19, "No such device: bdev Uring0 not found");
    assert_eq!(bdev_names(&t), ["Malloc0", "Uring0"]);
    t.stop();
}

#[test]
fn spdk_rpc_drives_the_delay_bdev() {
    if !common::require("spdk-rpc") {
        return;
    }
    let t = Target::start(&[]);
    ok(&t, &["bdev_malloc_create", "-b", "Malloc0", "1", "512"]);
    let d = ["bdev_delay_create", "-b", "Malloc0", "-d", "Delay0", "-r", "10", "-t", "50", "-w", "30", "-n", "90"];
    assert_eq!(ok(&t, &d), json!("Delay0"));
    fails(&t, &d, -17, "File exists: bdev Delay0 already exists");
    fails(
        &t,
        &["bdev_delay_create", "-b", "Malloc0", "-d", "Delay1", "-r", "10", "-t", "50", "-w", "30", "-n", "90"],
        -16,
        "Device or resource busy: bdev Malloc0 is in use by delay:Delay0",
    );
    let b = ok(&t, &["bdev_get_bdevs", "-b", "Delay0"]);
    assert_eq!(b[0]["product_name"], "delay");
    assert_eq!(b[0]["driver_specific"]["delay"]["p99_write_latency"], 90);
    assert_eq!(ok(&t, &["bdev_delay_update_latency", "Delay0", "avg_write", "40"]), json!(true));
    fails(&t, &["bdev_delay_update_latency", "Malloc0", "avg_write", "40"], -32600, "Invalid request: The requested bdev is not a delay bdev.");
    assert_eq!(ok(&t, &["bdev_get_bdevs", "-b", "Delay0"])[0]["driver_specific"]["delay"]["avg_write_latency"], 40);
    ok(&t, &["bdev_delay_delete", "Delay0"]);
    ok(&t, &["bdev_malloc_delete", "Malloc0"]);
    t.stop();
}

#[test]
fn spdk_rpc_drives_the_framework_methods() {
    if !common::require("spdk-rpc") {
        return;
    }
    let t = Target::start(&["--wait-for-rpc", "-m", "0x3"]);
    let current = ok(&t, &["rpc_get_methods", "--current"]);
    assert!(current.as_array().unwrap().contains(&json!("framework_start_init")));
    assert!(!current.as_array().unwrap().contains(&json!("bdev_malloc_create")));
    let all = ok(&t, &["rpc_get_methods"]);
    assert!(all.as_array().unwrap().contains(&json!("bdev_malloc_create")));
    fails(&t, &["bdev_malloc_create", "8", "512"], -1, "Method may only be called after framework is initialized using framework_start_init RPC.");
    ok(&t, &["framework_start_init"]);
    ok(&t, &["framework_wait_init"]);
    fails(&t, &["framework_start_init"], -1, "Method may only be called before framework initialization");

    let v = ok(&t, &["spdk_get_version"]);
    assert!(v["version"].as_str().unwrap().starts_with("Palisade v"));
    let r = ok(&t, &["framework_get_reactors"]);
    assert_eq!(r["reactors"].as_array().unwrap().len(), 2);
    let subs = ok(&t, &["framework_get_subsystems"]);
    assert!(subs.as_array().unwrap().iter().any(|s| s["subsystem"] == "bdev"));
    ok(&t, &["bdev_malloc_create", "-b", "M", "1", "512"]);
    let cfg = ok(&t, &["framework_get_config", "bdev"]);
    assert_eq!(cfg[0]["method"], "bdev_malloc_create");
    assert_eq!(cfg[0]["params"]["name"], "M");

    ok(&t, &["log_set_level", "INFO"]);
    assert_eq!(ok(&t, &["log_get_level"]), json!("INFO"));
    ok(&t, &["log_set_print_level", "WARNING"]);
    assert_eq!(ok(&t, &["log_get_print_level"]), json!("WARNING"));
    // (rpc.py itself rejects an unknown level before sending; the server-side check is in tests/rpc_methods.rs)

    // rpc.py's script mode (many commands, one process) and batch mode (-b: one JSON-RPC batch)
    let o = spdk_stdin(&t, &[], Some(b"bdev_null_create S0 1 512\nbdev_null_create S1 1 512\n"));
    assert!(o.status.success(), "{o:?}");
    let o = spdk_stdin(&t, &["-b"], Some(b"bdev_null_create B0 1 512\nbdev_null_create B1 1 512\nbdev_get_bdevs -b B0\n"));
    assert!(o.status.success(), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("\"B0\"") && out.contains("\"B1\""), "{out}");
    let o = spdk_stdin(&t, &["-b"], Some(b"bdev_null_create B2 1 512\nbdev_null_create B0 1 512\n"));
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("File exists"), "{o:?}");
    assert_eq!(bdev_names(&t), ["B0", "B1", "B2", "M", "S0", "S1"]);

    // spdk_kill_instance: clean exit 0
    let mut t = t;
    ok(&t, &["spdk_kill_instance", "SIGTERM"]);
    let mut child = t.child.take().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(std::time::Instant::now() < deadline, "no exit after spdk_kill_instance");
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert!(st.success(), "{st}");
}

fn populated(t: &Target) {
    let file = t.path("disk.img");
    std::fs::write(&file, vec![0u8; 1 << 20]).unwrap();
    ok(t, &["bdev_malloc_create", "-b", "Malloc0", "8", "512"]);
    ok(t, &["bdev_malloc_create", "-b", "Malloc1", "4", "4096"]);
    ok(t, &["bdev_null_create", "Null0", "64", "512"]);
    ok(t, &["bdev_uring_create", file.to_str().unwrap(), "Uring0", "512"]);
}

fn save(t: &Target) -> Value {
    let saved = ok(t, &["save_config"]);
    assert!(saved["subsystems"].is_array(), "{saved}");
    saved
}

#[test]
fn spdk_save_config_then_load_config() {
    if !common::require("spdk-rpc") {
        return;
    }
    let a = Target::start(&[]);
    populated(&a);
    let saved = save(&a);
    // the client-composed document equals the server's own save_config
    assert_eq!(saved, a.rpc("save_config", Value::Null));
    let text = serde_json::to_vec_pretty(&saved).unwrap();

    // restart with --wait-for-rpc, load_config drives startup, framework_start_init, runtime
    let b = Target::start(&["--wait-for-rpc"]);
    let o = spdk_stdin(&b, &["load_config"], Some(&text));
    assert!(o.status.success(), "load_config failed: {o:?}");
    assert_eq!(save(&b), saved);
    assert_eq!(bdev_names(&b), ["Malloc0", "Malloc1", "Null0", "Uring0"]);
    assert_eq!(a.rpc("bdev_get_bdevs", Value::Null), b.rpc("bdev_get_bdevs", Value::Null));

    // and into an already initialised target
    let c = Target::start(&[]);
    let o = spdk_stdin(&c, &["load_config"], Some(&text));
    assert!(o.status.success(), "load_config failed: {o:?}");
    assert_eq!(save(&c), saved);

    // the saved file also works as `palisade serve -c`
    let d = Target::start_with_config(&saved, &[]);
    assert_eq!(save(&d), saved);

    // a config with an unknown method is refused by load_config before anything is created
    let mut bad = saved.clone();
    bad["subsystems"][0]["config"].as_array_mut().unwrap().push(json!({"method": "bdev_frob", "params": {}}));
    let e = Target::start(&[]);
    let o = spdk_stdin(&e, &["load_config"], Some(&serde_json::to_vec(&bad).unwrap()));
    assert!(!o.status.success());
    assert!(bdev_names(&e).is_empty());
    for t in [a, b, c, d, e] {
        t.stop();
    }
}
