//! SPDK-format config: load at start, save_config round trip, bad configs refused naming the entry.

mod common;

use std::time::Duration;

use common::{bdev_names, serve_expect_exit, Target};
use serde_json::{json, Value};

fn save(t: &Target) -> Value {
    t.rpc("save_config", Value::Null)
}

#[test]
fn save_restart_save_is_identical() {
    let t = Target::start(&[]);
    let file = t.path("u.img");
    std::fs::write(&file, vec![0u8; 1 << 20]).unwrap();
    t.rpc("bdev_malloc_create", json!({"name": "M0", "num_blocks": 256, "block_size": 512}));
    t.rpc("bdev_malloc_create", json!({"name": "M1", "num_blocks": 16, "block_size": 4096, "uuid": "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"}));
    t.rpc("bdev_null_create", json!({"name": "N0", "num_blocks": 100, "block_size": 512}));
    t.rpc("bdev_uring_create", json!({"name": "U0", "filename": file.to_str().unwrap(), "block_size": 512}));
    let first = save(&t);
    // every bdev is in the document, with its UUID pinned so a restart recreates it identically
    let bdev_cfg = first["subsystems"].as_array().unwrap().iter().find(|s| s["subsystem"] == "bdev").unwrap()["config"].clone();
    assert_eq!(bdev_cfg.as_array().unwrap().len(), 4, "{bdev_cfg}");
    assert!(bdev_cfg.as_array().unwrap().iter().all(|e| e["params"]["uuid"].is_string()));

    let t2 = Target::start_with_config(&first, &[]);
    assert_eq!(bdev_names(&t2), ["M0", "M1", "N0", "U0"]);
    let second = save(&t2);
    assert_eq!(first, second, "save → restart → save differs");
    // the bdevs themselves match, not just the document
    assert_eq!(t.rpc("bdev_get_bdevs", Value::Null), t2.rpc("bdev_get_bdevs", Value::Null));
    t2.stop();
    t.stop();
}

#[test]
fn config_with_wait_for_rpc_applies_after_start_init() {
    let cfg = json!({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_malloc_create", "params": {"name": "Late", "num_blocks": 64, "block_size": 512}}
    ]}]});
    let t = Target::start_with_config(&cfg, &["--wait-for-rpc"]);
    assert_eq!(t.try_rpc("bdev_get_bdevs", None).unwrap_err().0, -1);
    t.rpc("framework_start_init", Value::Null);
    t.rpc("framework_wait_init", Value::Null);
    // the runtime pass runs right after init
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while bdev_names(&t).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(bdev_names(&t), ["Late"]);
    t.stop();
}

#[test]
fn embedded_default_config() {
    let t = Target::start(&["-c", "default"]);
    let b = &t.rpc("bdev_get_bdevs", Value::Null)[0];
    assert_eq!(b["name"], "Malloc0");
    assert_eq!(b["num_blocks"].as_u64().unwrap() * b["block_size"].as_u64().unwrap(), 256 << 20);
    let saved = save(&t);
    // The default exports listen on fixed ports: restart means stop, then start from the save.
    t.stop();
    let t2 = Target::start_with_config(&saved, &[]);
    assert_eq!(save(&t2), saved);
    t2.stop();
}

#[test]
fn spdk_style_config_with_foreign_subsystems_and_batches() {
    // What an SPDK app writes: empty subsystems we do not have, null configs, a batch element.
    let cfg = json!({"subsystems": [
        {"subsystem": "bdev", "config": [
            [{"method": "bdev_malloc_create", "params": {"name": "B0", "num_blocks": 8, "block_size": 512}},
             {"method": "bdev_null_create", "params": {"name": "B1", "num_blocks": 8, "block_size": 512}}]
        ]},
        {"subsystem": "scheduler", "config": null}
    ]});
    let t = Target::start_with_config(&cfg, &[]);
    assert_eq!(bdev_names(&t), ["B0", "B1"]);
    t.stop();
}

fn refused(cfg: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.json");
    std::fs::write(&path, cfg).unwrap();
    let sock = dir.path().join("s.sock");
    let (st, err) = serve_expect_exit(&["-r", sock.to_str().unwrap(), "-c", path.to_str().unwrap()], Duration::from_secs(20));
    assert!(!st.success(), "bad config accepted: {cfg}");
    assert!(err.contains(path.to_str().unwrap()), "the error does not name the file: {err}");
    err
}

#[test]
fn bad_configs_are_refused_naming_the_entry() {
    let err = refused(
        r#"{"subsystems":[{"subsystem":"bdev","config":[
            {"method":"bdev_malloc_create","params":{"name":"A","num_blocks":8,"block_size":512}},
            {"method":"bdev_malloc_create","params":{"name":"B","num_blocks":"x","block_size":512}}]}]}"#,
    );
    assert!(err.contains("subsystem bdev, entry #1 (bdev_malloc_create)"), "{err}");
    assert!(err.contains("num_blocks: invalid type"), "{err}");

    let err = refused(
        r#"{"subsystems":[{"subsystem":"bdev","config":[
            {"method":"bdev_malloc_create","params":{"name":"A","num_blocks":8,"block_size":512}},
            {"method":"bdev_malloc_create","params":{"name":"A","num_blocks":8,"block_size":512}}]}]}"#,
    );
    assert!(err.contains("subsystem bdev, entry #1 (bdev_malloc_create): File exists"), "{err}");

    let err = refused(r#"{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_frobnicate","params":{}}]}]}"#);
    assert!(err.contains("subsystem bdev, entry #0 (bdev_frobnicate): unknown method"), "{err}");

    let err = refused(r#"{"subsystems":[{"subsystem":"bdev","config":[{"params":{}}]}]}"#);
    assert!(err.contains("subsystems[0].config[0]"), "{err}");

    let err = refused("{\"subsystems\": [");
    assert!(err.contains("is not valid SPDK JSON config"), "{err}");

    // a runtime entry that fails under --wait-for-rpc stops the target after framework_start_init
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.json");
    std::fs::write(&cfg, r#"{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_uring_create","params":{"name":"U","filename":"/nonexistent/x"}}]}]}"#).unwrap();
    let mut t = Target::start(&["--wait-for-rpc", "-c", cfg.to_str().unwrap()]);
    let _ = t.try_rpc("framework_start_init", None);
    let mut child = t.child.take().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(std::time::Instant::now() < deadline, "target kept running with a failed config entry");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!st.success());
}
