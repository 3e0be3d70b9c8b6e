//! Every foundation method over the socket: happy path, bad input with the exact error code and
//! message, and proof that a failed call changed nothing.

mod common;

use common::{bdev_names, Target};
use serde_json::{json, Value};

fn err(t: &Target, method: &str, params: Value) -> (i64, String) {
    let p = if params.is_null() { None } else { Some(params.clone()) };
    match t.try_rpc(method, p) {
        Ok(v) => panic!("{method} {params} should fail, returned {v}"),
        Err(e) => e,
    }
}

/// Run a failing call and check code, message and that the bdev list did not change.
fn fails_unchanged(t: &Target, method: &str, params: Value, code: i64, message: &str) {
    let before = t.rpc("bdev_get_bdevs", Value::Null);
    let (c, m) = err(t, method, params.clone());
    assert_eq!((c, m.as_str()), (code, message), "{method} {params}");
    assert_eq!(t.rpc("bdev_get_bdevs", Value::Null), before, "{method} {params} changed the bdevs");
}

#[test]
fn bdev_malloc_lifecycle_and_errors() {
    let t = Target::start(&[]);
    assert!(bdev_names(&t).is_empty());
    let name = t.rpc(
        "bdev_malloc_create",
        json!({"name": "Malloc0", "num_blocks": 2048, "block_size": 512, "uuid": "0b8a5c39-8b8e-4d5e-9a11-000000000001"}),
    );
    assert_eq!(name, json!("Malloc0"));
    let b = &t.rpc("bdev_get_bdevs", json!({"name": "Malloc0"}))[0];
    assert_eq!(b["name"], "Malloc0");
    assert_eq!(b["product_name"], "Malloc disk");
    assert_eq!(b["block_size"], 512);
    assert_eq!(b["num_blocks"], 2048);
    assert_eq!(b["uuid"], "0b8a5c39-8b8e-4d5e-9a11-000000000001");
    assert_eq!(b["claimed"], false);
    assert_eq!(b["supported_io_types"]["read"], true);
    // lookup by UUID works as in SPDK
    assert_eq!(t.rpc("bdev_get_bdevs", json!({"name": "0b8a5c39-8b8e-4d5e-9a11-000000000001"}))[0]["name"], "Malloc0");
    // default name
    assert_eq!(t.rpc("bdev_malloc_create", json!({"num_blocks": 16, "block_size": 4096})), json!("Malloc1"));

    fails_unchanged(&t, "bdev_malloc_create", json!({"name": "Malloc0", "num_blocks": 16, "block_size": 512}), -17, "File exists: bdev Malloc0 already exists");
    fails_unchanged(&t, "bdev_malloc_create", json!({"name": "X", "block_size": 512}), -32602, "Invalid parameters: missing field `num_blocks`");
    fails_unchanged(
        &t,
        "bdev_malloc_create",
        json!({"name": "X", "num_blocks": "many", "block_size": 512}),
        -32602,
        "Invalid parameters: num_blocks: invalid type: string \"many\", expected u64",
    );
    fails_unchanged(
        &t,
        "bdev_malloc_create",
        json!({"name": "X", "num_blocks": 16, "block_size": 512, "colour": "red"}),
        -32602,
        "Invalid parameters: colour: unknown field `colour`, expected one of `name`, `num_blocks`, `block_size`, `uuid`, `physical_block_size`, `optimal_io_boundary`, `md_size`, `md_interleave`, `dif_type`, `dif_is_head_of_md`, `dif_pi_format`, `numa_id`",
    );
    fails_unchanged(&t, "bdev_malloc_create", json!({"name": "X", "num_blocks": 16, "block_size": 512, "uuid": "nope"}), -32602, "Invalid parameters: uuid: \"nope\" is not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)");
    fails_unchanged(&t, "bdev_malloc_create", json!({"name": "a b", "num_blocks": 16, "block_size": 512}), -32602, "Invalid parameters: name: \"a b\" is not a valid bdev name");
    // the same UUID twice is a duplicate too
    fails_unchanged(
        &t,
        "bdev_malloc_create",
        json!({"name": "Other", "num_blocks": 16, "block_size": 512, "uuid": "0b8a5c39-8b8e-4d5e-9a11-000000000001"}),
        -17,
        "File exists: a bdev with UUID 0b8a5c39-8b8e-4d5e-9a11-000000000001 already exists",
    );
    let (c, m) = err(&t, "bdev_malloc_create", json!({"name": "Bad", "num_blocks": 16, "block_size": 1000}));
    assert_eq!(c, -22, "{m}");
    assert!(m.starts_with("Invalid argument"), "{m}");
    assert_eq!(bdev_names(&t), ["Malloc0", "Malloc1"]);

    fails_unchanged(&t, "bdev_malloc_delete", json!({"name": "Nope"}), -19, "No such device: bdev Nope not found");
    fails_unchanged(&t, "bdev_malloc_delete", json!({}), -32602, "Invalid parameters: missing field `name`");
    fails_unchanged(&t, "bdev_malloc_delete", json!({"name": 5}), -32602, "Invalid parameters: name: invalid type: integer `5`, expected a string");
    // a malloc bdev cannot be deleted as a null bdev
    fails_unchanged(&t, "bdev_null_delete", json!({"name": "Malloc0"}), -19, "No such device: bdev Malloc0 not found");
    assert_eq!(t.rpc("bdev_malloc_delete", json!({"name": "Malloc0"})), json!(true));
    assert_eq!(bdev_names(&t), ["Malloc1"]);
    fails_unchanged(&t, "bdev_get_bdevs", json!({"name": "Malloc0"}), -19, "No such device: bdev Malloc0 not found");
    t.stop();
}

#[test]
fn bdev_null_and_uring() {
    let t = Target::start(&[]);
    assert_eq!(t.rpc("bdev_null_create", json!({"name": "Null0", "num_blocks": 1024, "block_size": 4096})), json!("Null0"));
    assert_eq!(t.rpc("bdev_get_bdevs", json!({"name": "Null0"}))[0]["product_name"], "Null disk");
    fails_unchanged(&t, "bdev_null_create", json!({"name": "Null0", "num_blocks": 1, "block_size": 512}), -17, "File exists: bdev Null0 already exists");
    fails_unchanged(&t, "bdev_null_create", json!({"num_blocks": 1, "block_size": 512}), -32602, "Invalid parameters: missing field `name`");
    fails_unchanged(&t, "bdev_null_create", json!({"name": "N", "num_blocks": 1, "block_size": 512, "md_size": 8}), -32602, "Invalid parameters: md_size: 8 is not supported (only 0)");

    let file = t.path("disk.img");
    std::fs::write(&file, vec![0u8; 4 << 20]).unwrap();
    let f = file.to_str().unwrap();
    assert_eq!(t.rpc("bdev_uring_create", json!({"name": "U0", "filename": f, "block_size": 4096})), json!("U0"));
    let b = &t.rpc("bdev_get_bdevs", json!({"name": "U0"}))[0];
    assert_eq!(b["product_name"], "URING bdev");
    assert_eq!(b["block_size"], 4096);
    assert_eq!(b["num_blocks"], 1024);
    assert_eq!(b["driver_specific"]["uring"]["filename"], f);
    fails_unchanged(&t, "bdev_uring_create", json!({"name": "U0", "filename": f}), -17, "File exists: bdev U0 already exists");
    let missing = t.path("missing.img");
    let msg = format!("No such file or directory: cannot open {}: No such file or directory (os error 2)", missing.display());
    fails_unchanged(&t, "bdev_uring_create", json!({"name": "U1", "filename": missing.to_str().unwrap()}), -2, &msg);
    fails_unchanged(&t, "bdev_uring_create", json!({"name": "U1", "filename": f, "block_size": 3000}), -22, &format!("Invalid argument: block_size 3000 is invalid for {f}: a power of two from 512 to 65536"));
    fails_unchanged(&t, "bdev_uring_create", json!({"name": "U1"}), -32602, "Invalid parameters: missing field `filename`");
    fails_unchanged(&t, "bdev_uring_delete", json!({"name": "Null0"}), -19, "No such device: bdev Null0 not found");
    assert_eq!(t.rpc("bdev_uring_delete", json!({"name": "U0"})), json!(true));
    assert_eq!(t.rpc("bdev_null_delete", json!({"name": "Null0"})), json!(true));
    fails_unchanged(&t, "bdev_null_delete", json!({"name": "Null0"}), -19, "No such device: bdev Null0 not found");
    assert!(bdev_names(&t).is_empty());
    t.stop();
}

#[test]
fn bdev_get_iostat_shape_and_filters() {
    let t = Target::start(&[]);
    t.rpc("bdev_malloc_create", json!({"name": "A", "num_blocks": 64, "block_size": 512}));
    t.rpc("bdev_null_create", json!({"name": "B", "num_blocks": 64, "block_size": 512}));
    let all = t.rpc("bdev_get_iostat", Value::Null);
    assert_eq!(all["tick_rate"], 1_000_000_000u64);
    assert!(all["ticks"].as_u64().unwrap() > 0);
    let names: Vec<_> = all["bdevs"].as_array().unwrap().iter().map(|b| b["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["A", "B"]);
    for field in ["bytes_read", "num_read_ops", "bytes_written", "num_write_ops", "bytes_unmapped", "num_unmap_ops", "read_latency_ticks", "write_latency_ticks", "unmap_latency_ticks"] {
        assert_eq!(all["bdevs"][0][field], 0, "{field}");
    }
    let one = t.rpc("bdev_get_iostat", json!({"name": "B"}));
    assert_eq!(one["bdevs"].as_array().unwrap().len(), 1);
    assert_eq!(one["bdevs"][0]["name"], "B");
    let two = t.rpc("bdev_get_iostat", json!({"names": ["A", "B"]}));
    assert_eq!(two["bdevs"].as_array().unwrap().len(), 2);
    assert_eq!(err(&t, "bdev_get_iostat", json!({"name": "C"})), (-19, "No such device: bdev C not found".into()));
    // SPDK's per-channel form (no I/O has run, so no channel is open yet)
    let pc = t.rpc("bdev_get_iostat", json!({"name": "A", "per_channel": true}));
    assert_eq!((pc["name"].clone(), pc["channels"].clone()), (json!("A"), json!([])), "{pc}");
    assert_eq!(
        err(&t, "bdev_get_iostat", json!({"per_channel": true})),
        (-32602, "Invalid parameters: per_channel: needs exactly one bdev name".into())
    );
    assert_eq!(
        err(&t, "bdev_get_iostat", json!({"reset_mode": "sometimes"})),
        (-32602, "Invalid parameters: reset_mode: \"sometimes\" is not one of all, maxmin, error, none".into())
    );
    t.stop();
}

#[test]
fn framework_methods() {
    let t = Target::start(&["-m", "0x3"]);
    let v = t.rpc("spdk_get_version", Value::Null);
    assert_eq!(v["version"], format!("Palisade v{}", env!("CARGO_PKG_VERSION")));
    assert!(v["fields"]["major"].is_u64());
    assert_eq!(err(&t, "spdk_get_version", json!({"x": 1})).0, -32602);

    let methods = t.rpc("rpc_get_methods", Value::Null);
    let methods: Vec<&str> = methods.as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    for m in [
        "rpc_get_methods", "spdk_get_version", "framework_get_reactors", "framework_get_subsystems", "framework_get_config",
        "framework_start_init", "framework_wait_init", "spdk_kill_instance", "bdev_malloc_create", "bdev_malloc_delete",
        "bdev_null_create", "bdev_null_delete", "bdev_uring_create", "bdev_uring_delete", "bdev_get_bdevs", "bdev_get_iostat",
        "log_set_level", "log_get_level", "save_config",
    ] {
        assert!(methods.contains(&m), "rpc_get_methods lacks {m}");
    }
    // after init, current methods exclude the startup-only ones
    let current = t.rpc("rpc_get_methods", json!({"current": true}));
    let current: Vec<&str> = current.as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    assert!(!current.contains(&"framework_start_init"));
    assert!(current.contains(&"bdev_malloc_create"));
    assert_eq!(err(&t, "rpc_get_methods", json!({"current": "yes"})).0, -32602);

    let subs = t.rpc("framework_get_subsystems", Value::Null);
    assert!(subs.as_array().unwrap().iter().any(|s| s["subsystem"] == "bdev"), "{subs}");
    t.rpc("bdev_malloc_create", json!({"name": "M", "num_blocks": 64, "block_size": 512, "uuid": "11111111-2222-4333-8444-555555555555"}));
    let cfg = t.rpc("framework_get_config", json!({"name": "bdev"}));
    assert_eq!(
        cfg,
        json!([{"method": "bdev_malloc_create", "params": {"name": "M", "num_blocks": 64, "block_size": 512, "uuid": "11111111-2222-4333-8444-555555555555"}}])
    );
    assert_eq!(err(&t, "framework_get_config", json!({"name": "nosuch"})), (-2, "No such file or directory: subsystem nosuch not found".into()));
    assert_eq!(err(&t, "framework_get_config", Value::Null), (-32602, "Invalid parameters: missing field `name`".into()));
    assert_eq!(t.rpc("framework_wait_init", Value::Null), json!(true));
    assert_eq!(
        err(&t, "framework_start_init", Value::Null),
        (-1, "Method may only be called before framework initialization".into())
    );
    let saved = t.rpc("save_config", Value::Null);
    let bdev_sub = saved["subsystems"].as_array().unwrap().iter().find(|s| s["subsystem"] == "bdev").unwrap();
    assert_eq!(bdev_sub["config"], cfg);

    // reactors: one per core of the mask, busy/idle ticks advancing
    let r1 = t.rpc("framework_get_reactors", Value::Null);
    assert_eq!(r1["tick_rate"], 1_000_000_000u64);
    assert_eq!(r1["poll_mode"], "adaptive");
    let rs = r1["reactors"].as_array().unwrap();
    assert_eq!(rs.len(), 2);
    assert_eq!((rs[0]["lcore"].as_u64(), rs[1]["lcore"].as_u64()), (Some(0), Some(1)));
    assert!(rs.iter().all(|r| r["tid"].as_u64().unwrap() > 0));
    std::thread::sleep(std::time::Duration::from_millis(300));
    let r2 = t.rpc("framework_get_reactors", Value::Null);
    for i in 0..2 {
        let total = |r: &Value| r["reactors"][i]["busy"].as_u64().unwrap() + r["reactors"][i]["idle"].as_u64().unwrap();
        assert!(total(&r2) > total(&r1), "reactor {i} ticks did not advance: {r1} {r2}");
        // an idle adaptive reactor sleeps: idle time dominates
        assert!(r2["reactors"][i]["idle"].as_u64() > r2["reactors"][i]["busy"].as_u64(), "{r2}");
    }
    assert_eq!(r2["reactors"][0].get("allocations").is_some(), cfg!(feature = "count-alloc"));
    t.stop();
}

#[test]
fn log_levels() {
    let t = Target::start(&[]);
    assert_eq!(t.rpc("log_get_level", Value::Null), json!("NOTICE"));
    assert_eq!(t.rpc("log_set_level", json!({"level": "debug"})), json!(true));
    assert_eq!(t.rpc("log_get_level", Value::Null), json!("DEBUG"));
    assert_eq!(t.rpc("log_set_print_level", json!({"level": "ERROR"})), json!(true));
    assert_eq!(t.rpc("log_get_print_level", Value::Null), json!("ERROR"));
    assert_eq!(
        err(&t, "log_set_level", json!({"level": "LOUD"})),
        (-32602, "Invalid parameters: level: \"LOUD\" is not one of DISABLED, ERROR, WARNING, NOTICE, INFO, DEBUG".into())
    );
    assert_eq!(err(&t, "log_set_level", Value::Null), (-32602, "Invalid parameters: missing field `level`".into()));
    assert_eq!(t.rpc("log_get_level", Value::Null), json!("ERROR"), "a failed call changed the level");
    t.stop();
}

#[test]
fn wait_for_rpc_states() {
    let t = Target::start(&["--wait-for-rpc"]);
    let current = t.rpc("rpc_get_methods", json!({"current": true}));
    let current: Vec<&str> = current.as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    assert!(current.contains(&"framework_start_init"), "{current:?}");
    assert!(current.contains(&"rpc_get_methods"));
    assert!(!current.contains(&"bdev_malloc_create"), "{current:?}");
    assert!(!current.contains(&"bdev_get_bdevs"));
    let all = t.rpc("rpc_get_methods", Value::Null);
    assert!(all.as_array().unwrap().contains(&json!("bdev_malloc_create")));
    assert_eq!(
        err(&t, "bdev_malloc_create", json!({"name": "M", "num_blocks": 8, "block_size": 512})),
        (-1, "Method may only be called after framework is initialized using framework_start_init RPC.".into())
    );
    assert_eq!(err(&t, "bdev_get_bdevs", Value::Null).0, -1);

    // framework_wait_init blocks until framework_start_init
    let sock = t.sock.clone();
    let waiter = std::thread::spawn(move || {
        palisade::cli::rpc_client::call(sock.to_str().unwrap(), "framework_wait_init", None, std::time::Duration::from_secs(20)).unwrap()
    });
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(!waiter.is_finished(), "framework_wait_init returned before init");
    assert_eq!(t.rpc("framework_start_init", Value::Null), json!(true));
    assert_eq!(waiter.join().unwrap()["result"], json!(true));
    assert_eq!(
        err(&t, "framework_start_init", Value::Null),
        (-1, "Method may only be called before framework initialization".into())
    );
    let current = t.rpc("rpc_get_methods", json!({"current": true}));
    assert!(current.as_array().unwrap().contains(&json!("bdev_malloc_create")));
    assert!(!current.as_array().unwrap().contains(&json!("framework_start_init")));
    t.rpc("bdev_malloc_create", json!({"name": "M", "num_blocks": 8, "block_size": 512}));
    assert_eq!(bdev_names(&t), ["M"]);
    t.stop();
}

#[test]
fn unknown_method_and_bad_params_shape() {
    let t = Target::start(&[]);
    assert_eq!(err(&t, "no_such_method", Value::Null), (-32601, "Method not found: no_such_method".into()));
    // params as an array where an object is expected
    assert_eq!(
        err(&t, "bdev_malloc_create", json!(["M", 8, 512])),
        (-32602, "Invalid parameters: params must be an object, not an array".into())
    );
    assert!(bdev_names(&t).is_empty());
    t.stop();
}

#[test]
fn palisade_rpc_cli() {
    let t = Target::start(&[]);
    let run = |args: &[&str]| {
        std::process::Command::new(common::BIN).arg("rpc").arg("-s").arg(&t.sock).args(args).output().unwrap()
    };
    let o = run(&["bdev_malloc_create", "-b", "Malloc0", "64", "512"]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "\"Malloc0\"");
    let o = run(&["bdev_get_bdevs", "-b", "Malloc0"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["num_blocks"], 131072);
    let o = run(&["--json", r#"{"name":"N0","num_blocks":8,"block_size":512}"#, "bdev_null_create"]);
    assert!(o.status.success(), "{o:?}");
    // a JSON-RPC error: message on stderr, exit non-zero
    let o = run(&["bdev_malloc_create", "-b", "Malloc0", "64", "512"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&o.stderr).trim(), "error -17: File exists: bdev Malloc0 already exists");
    let o = run(&["bdev_malloc_delete"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("missing argument name"), "{o:?}");
    let o = run(&["nonexistent_method"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("-32601"));
    assert_eq!(bdev_names(&t), ["Malloc0", "N0"]);
    t.stop();
}
