//! The metadata-server flow over JSON-RPC against the built binary: volumes, clients, grants over
//! holes, commit, return, a conflicting layout recalled (notification seen), the recall timer
//! revoking and fencing, reflink and copy-on-write layouts, errors, save_config, restart with the
//! same metadata, and fsck.

mod common;

use std::time::{Duration, Instant};

use common::{RawConn, Target, BIN};
use serde_json::{json, Value};

const BS: u64 = 4096;
const UUID: &str = "3b9a4c1e-1111-4e2f-8a3b-5c6d7e8f9a0b";
const UUID2: &str = "3b9a4c1e-2222-4e2f-8a3b-5c6d7e8f9a0b";

fn err(r: Result<Value, (i64, String)>) -> (i64, String) {
    r.expect_err("call should fail")
}

fn start_volume(t: &Target, meta: &str, guard: &str) {
    t.rpc("bdev_malloc_create", json!({"name": "m0", "num_blocks": 256, "block_size": 4096, "uuid": UUID}));
    let r = t.rpc(
        "layout_volume_create",
        json!({"name": "lv0", "bdev_name": "m0", "metadata_path": meta, "guard": guard, "recall_timeout_ms": 300}),
    );
    assert_eq!(r, json!("lv0"));
}

#[test]
fn metadata_server_flow_recall_fence_reflink_restart() {
    let t = Target::start(&[]);
    let meta_dir = tempfile::tempdir().unwrap();
    let meta = meta_dir.path().join("lv0.meta");
    let meta_s = meta.to_str().unwrap();
    start_volume(&t, meta_s, "off");
    let mut sub = RawConn::connect(&t.sock);
    assert_eq!(sub.call("layout_recall_subscribe", json!({})).0["result"], json!(true));

    t.rpc("client_register", json!({"volume": "lv0", "client": "A", "pr_key": "0xa", "identities": ["iqn.2026-01.test:a"]}));
    t.rpc("client_register", json!({"volume": "lv0", "client": "B", "pr_key": 11, "identities": ["nqn.2026-01.test:b"]}));
    t.rpc("layout_file_create", json!({"volume": "lv0", "file": 1}));

    // A rw layout over a hole: INVALID_DATA.
    let g = t.rpc("layout_get", json!({"volume": "lv0", "file": 1, "client": "A", "offset": 0, "length": 4 * BS, "iomode": "rw"}));
    let grant = g["grant"].as_u64().unwrap();
    assert_eq!(g["extents"].as_array().unwrap().len(), 1);
    assert_eq!(g["extents"][0]["state"], "INVALID_DATA");
    assert_eq!(g["extents"][0]["length"], 4 * BS);
    // Commit (guard off: the target trusts the client's report) → READ_WRITE_DATA.
    let c = t.rpc("layout_commit", json!({"grant": grant, "ranges": [{"offset": 0, "length": 4 * BS}], "new_size": 4 * BS - 100}));
    assert_eq!(c["committed_bytes"], 4 * BS);
    let m = t.rpc("layout_file_map", json!({"volume": "lv0", "file": 1}));
    assert_eq!(m["extents"][0]["state"], "READ_WRITE_DATA");
    assert_eq!(m["size"], 4 * BS - 100);
    let data_lba = m["extents"][0]["volume_offset"].as_u64().unwrap();
    t.rpc("layout_return", json!({"grant": grant}));
    assert_eq!(t.rpc("layout_file_stat", json!({"volume": "lv0", "file": 1}))["grants"], json!([]));

    // A holds a rw layout; B's conflicting request recalls it.
    let ga = t.rpc("layout_get", json!({"volume": "lv0", "file": 1, "client": "A", "offset": 0, "length": 8 * BS, "iomode": "rw"}));
    let ga_id = ga["grant"].as_u64().unwrap();
    assert_eq!(ga["extents"][0]["state"], "READ_WRITE_DATA");
    assert_eq!(ga["extents"][1]["state"], "INVALID_DATA");
    let (code, msg) = err(t.try_rpc("layout_get", Some(json!({"volume": "lv0", "file": 1, "client": "B", "offset": 0, "length": 4 * BS, "iomode": "rw"}))));
    assert_eq!(code, -libc::EAGAIN as i64);
    assert!(msg.contains("recall pending, retry"), "{msg}");
    let note = sub.next_within(Duration::from_secs(5)).expect("layout_recall notification");
    assert_eq!(note["method"], "layout_recall");
    assert_eq!(note["params"], json!({"volume": "lv0", "grant": ga_id, "client": "A", "file": 1, "reason": "conflict"}));
    // A never returns it: the timer revokes and fences A, then B's layout is given.
    let deadline = Instant::now() + Duration::from_secs(10);
    let gb = loop {
        match t.try_rpc("layout_get", Some(json!({"volume": "lv0", "file": 1, "client": "B", "offset": 0, "length": 4 * BS, "iomode": "rw"}))) {
            Ok(v) => break v,
            Err((c, _)) if c == -libc::EAGAIN as i64 && Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("B's layout_get: {e:?}"),
        }
    };
    let note = sub.next_within(Duration::from_secs(5)).expect("fence notification");
    assert_eq!(note["params"]["reason"], "fence");
    assert_eq!(note["params"]["grant"], ga_id);
    let clients = t.rpc("client_list", json!({"volume": "lv0"}));
    assert_eq!(clients[0]["client"], "A");
    assert_eq!(clients[0]["fenced"], true);
    assert_eq!(clients[0]["grants"], json!([]));
    let (code, msg) = err(t.try_rpc("layout_get", Some(json!({"volume": "lv0", "file": 1, "client": "A", "offset": 0, "length": BS, "iomode": "read"}))));
    assert_eq!(code, -libc::EACCES as i64, "{msg}");
    assert!(msg.contains("fenced"));
    let (code, _) = err(t.try_rpc("client_register", Some(json!({"volume": "lv0", "client": "A", "pr_key": 10}))));
    assert_eq!(code, -libc::EACCES as i64);

    // Reflink: B's grant on the source is recalled first; after the return the clone shares data.
    let (code, _) = err(t.try_rpc("layout_file_reflink", Some(json!({"volume": "lv0", "source": 1, "destination": "clone"}))));
    assert_eq!(code, -libc::EAGAIN as i64);
    let note = sub.next_within(Duration::from_secs(5)).expect("reflink recall");
    assert_eq!(note["params"]["reason"], "reflink");
    t.rpc("layout_return", json!({"grant": gb["grant"]}));
    t.rpc("layout_file_reflink", json!({"volume": "lv0", "source": 1, "destination": "clone"}));
    let mc = t.rpc("layout_file_map", json!({"volume": "lv0", "file": "clone"}));
    assert_eq!(mc["extents"][0]["state"], "READ_DATA");
    assert_eq!(mc["extents"][0]["volume_offset"], data_lba);
    // Copy-on-write layout on the clone: fresh INVALID_DATA backed by the shared READ_DATA.
    let gc = t.rpc("layout_get", json!({"volume": "lv0", "file": "clone", "client": "B", "offset": 0, "length": BS, "iomode": "rw"}));
    assert_eq!(gc["extents"][0]["state"], "INVALID_DATA");
    assert_eq!(gc["extents"][1]["state"], "READ_DATA");
    assert_eq!(gc["extents"][1]["volume_offset"], data_lba);
    let new_lba = gc["extents"][0]["volume_offset"].clone();
    t.rpc("layout_commit", json!({"grant": gc["grant"], "ranges": [{"offset": 0, "length": BS}]}));
    let mc = t.rpc("layout_file_map", json!({"volume": "lv0", "file": "clone"}));
    assert_eq!(mc["extents"][0]["volume_offset"], new_lba);
    assert_eq!(mc["extents"][0]["state"], "READ_WRITE_DATA");
    let m1 = t.rpc("layout_file_map", json!({"volume": "lv0", "file": 1}));
    assert_eq!(m1["extents"][0]["volume_offset"], data_lba, "source unchanged");

    // Errors: clear, and nothing changes.
    let before = t.rpc("layout_volume_list", json!({}));
    let e = err(t.try_rpc("layout_get", Some(json!({"volume": "lv0", "file": 99, "client": "B", "offset": 0, "length": BS, "iomode": "rw"}))));
    assert_eq!(e.0, -libc::ENOENT as i64);
    assert!(e.1.contains("unknown file"), "{}", e.1);
    t.rpc("layout_file_create", json!({"volume": "lv0", "file": 2}));
    let e = err(t.try_rpc("layout_get", Some(json!({"volume": "lv0", "file": 2, "client": "B", "offset": 0, "length": 1 << 30, "min_length": 1 << 29, "iomode": "rw"}))));
    assert_eq!(e.0, -libc::ENOSPC as i64, "{}", e.1);
    let e = err(t.try_rpc("layout_commit", Some(json!({"grant": gc["grant"], "ranges": [{"offset": 0, "length": 64 * BS}]}))));
    assert_eq!(e.0, -libc::ERANGE as i64, "{}", e.1);
    let e = err(t.try_rpc("layout_get", Some(json!({"volume": "nope", "file": 1, "client": "B", "offset": 0, "length": BS, "iomode": "rw"}))));
    assert_eq!(e.0, -libc::ENODEV as i64);
    let e = err(t.try_rpc("layout_get", Some(json!({"volume": "lv0", "file": 1, "client": "B", "offset": 0, "length": BS, "iomode": "rw", "bogus": 1}))));
    assert_eq!(e.0, -32602);
    let e = err(t.try_rpc("layout_get", Some(json!({"volume": "lv0", "file": 1, "client": "B", "offset": 7, "length": BS, "iomode": "rw"}))));
    assert_eq!(e.0, -libc::EINVAL as i64);
    let mut after = t.rpc("layout_volume_list", json!({}));
    after[0]["files"] = before[0]["files"].clone().as_u64().map(|n| n + 1).into(); // file 2 was created
    assert_eq!(before[0]["free_blocks"], after[0]["free_blocks"]);
    assert_eq!(before[0]["grants"], after[0]["grants"]);

    // Device identity for GETDEVICEINFO, and save_config.
    let dv = t.rpc("layout_volume_get_device", json!({"name": "lv0"}));
    assert_eq!(dv["naa"].as_str().unwrap().len(), 32);
    assert_eq!(dv["naa"], dv["nguid"]);
    let cfg = t.rpc("save_config", Value::Null);
    let layout = cfg["subsystems"].as_array().unwrap().iter().find(|s| s["subsystem"] == "layout").unwrap().clone();
    assert_eq!(layout["config"][0]["method"], "layout_volume_create");
    assert_eq!(layout["config"][0]["params"]["metadata_path"], meta_s);

    let maps: Vec<Value> = ["1", "\"clone\""]
        .iter()
        .map(|f| t.rpc("layout_file_map", json!({"volume": "lv0", "file": serde_json::from_str::<Value>(f).unwrap()})))
        .collect();
    let clients = t.rpc("client_list", json!({"volume": "lv0"}));
    t.stop();

    // Offline check, then a restart with the same metadata: everything is still there.
    let out = std::process::Command::new(BIN).args(["fsck", "--metadata", meta_s]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "fsck failed: {text}");
    assert!(text.contains("consistent"), "{text}");

    // The saved config recreates the bdev and reopens the layout volume from its journal.
    // (Written here rather than with Target::start_with_config, whose temp-dir swap removes the
    // socket directory of the target it starts.)
    let cfg_path = meta_dir.path().join("config.json");
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let t = Target::start(&["-c", cfg_path.to_str().unwrap()]);
    // The RPC socket answers before the config's runtime entries are applied: wait for them.
    let deadline = Instant::now() + Duration::from_secs(15);
    let list = loop {
        let l = t.try_rpc("layout_volume_list", Some(json!({})));
        match l {
            Ok(v) if v.as_array().is_some_and(|a| !a.is_empty()) => break v,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            other => panic!("layout volume not restored from the saved config: {other:?}"),
        }
    };
    assert_eq!(list[0]["guard"], "off");
    t.rpc("layout_volume_set_guard", json!({"name": "lv0", "guard": "enforce"}));
    let maps2: Vec<Value> = ["1", "\"clone\""]
        .iter()
        .map(|f| t.rpc("layout_file_map", json!({"volume": "lv0", "file": serde_json::from_str::<Value>(f).unwrap()})))
        .collect();
    assert_eq!(maps, maps2);
    assert_eq!(clients, t.rpc("client_list", json!({"volume": "lv0"})));
    // Under enforce, a commit of blocks nobody wrote through the target keeps them unwritten.
    let g = t.rpc("layout_get", json!({"volume": "lv0", "file": 2, "client": "B", "offset": 0, "length": 2 * BS, "iomode": "rw"}));
    let c = t.rpc("layout_commit", json!({"grant": g["grant"], "ranges": [{"offset": 0, "length": 2 * BS}], "new_size": 2 * BS}));
    assert_eq!(c["committed_bytes"], 0);
    assert_eq!(c["unwritten_bytes"], 2 * BS);
    assert_eq!(t.rpc("layout_file_map", json!({"volume": "lv0", "file": 2}))["extents"][0]["state"], "NONE_DATA");
    // Volumes on a second bdev with a clashing metadata path are refused; delete works.
    t.rpc("bdev_malloc_create", json!({"name": "m1", "num_blocks": 64, "block_size": 4096, "uuid": UUID2}));
    let e = err(t.try_rpc("layout_volume_create", Some(json!({"name": "lv1", "bdev_name": "m1", "metadata_path": meta_s}))));
    assert_eq!(e.0, -libc::EBUSY as i64);
    t.rpc("layout_volume_delete", json!({"name": "lv0"}));
    assert_eq!(t.rpc("layout_volume_list", json!({})), json!([]));
    t.stop();
}
