//! A layout volume whose metadata lives on a bdev (`metadata_bdev`), against the built binary:
//! file-backed uring bdevs for the metadata and the data, the metadata bdev claimed exclusively,
//! a file written through layout_get + layout_commit, SIGKILL, a restart from the saved config
//! (and once more by re-creating everything over RPC), the file map intact each time, offline
//! fsck of the metadata image, and delete releasing the claim.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Target, BIN};
use serde_json::{json, Value};

const BS: u64 = 4096;
const META_UUID: &str = "5d0c2b7e-4444-4e2f-8a3b-5c6d7e8f9a0b";
const DATA_UUID: &str = "5d0c2b7e-5555-4e2f-8a3b-5c6d7e8f9a0b";

fn err(r: Result<Value, (i64, String)>) -> (i64, String) {
    r.expect_err("call should fail")
}

/// The layout volumes, once a config replay has created them.
fn wait_volumes(t: &Target) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match t.try_rpc("layout_volume_list", Some(json!({}))) {
            Ok(v) if v.as_array().is_some_and(|a| !a.is_empty()) => return v,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            other => panic!("layout volume not restored: {other:?}"),
        }
    }
}

fn create_bdevs(t: &Target, meta: &Path, data: &Path) {
    // 512-byte blocks for the metadata: the journal's 4 KiB blocks span several device blocks.
    t.rpc("bdev_uring_create", json!({"name": "meta0", "filename": meta.to_str().unwrap(), "block_size": 512, "uuid": META_UUID}));
    t.rpc("bdev_uring_create", json!({"name": "data0", "filename": data.to_str().unwrap(), "block_size": 4096, "uuid": DATA_UUID}));
}

fn map(t: &Target, file: u64) -> Value {
    t.rpc("layout_file_map", json!({"volume": "lv", "file": file}))
}

fn fsck(meta: &Path, json_out: bool) -> (i32, String) {
    let mut c = Command::new(BIN);
    c.args(["fsck", "--metadata", meta.to_str().unwrap()]);
    if json_out {
        c.arg("--json");
    }
    let out = c.output().unwrap();
    (out.status.code().unwrap_or(-1), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn metadata_bdev_survives_sigkill_restart_and_fsck() {
    let dir = tempfile::tempdir().unwrap();
    let meta = dir.path().join("meta.img");
    let data = dir.path().join("data.img");
    std::fs::File::create(&meta).unwrap().set_len(4 << 20).unwrap();
    std::fs::File::create(&data).unwrap().set_len(8 << 20).unwrap();

    let mut t = Target::start(&[]);
    create_bdevs(&t, &meta, &data);
    // Parameter errors.
    let e = err(t.try_rpc("layout_volume_create", Some(json!({"name": "lv", "bdev_name": "data0", "metadata_bdev": "data0"}))));
    assert_eq!(e.0, -32602, "{e:?}");
    let e = err(t.try_rpc("layout_volume_create", Some(json!({"name": "lv", "bdev_name": "data0", "metadata_bdev": "meta0", "metadata_path": "/tmp/x"}))));
    assert_eq!(e.0, -32602, "{e:?}");
    let e = err(t.try_rpc("layout_volume_create", Some(json!({"name": "lv", "bdev_name": "data0", "metadata_bdev": "nosuch"}))));
    assert_eq!(e.0, -libc::ENODEV as i64, "{e:?}");
    assert!(e.1.contains("metadata_bdev"), "{e:?}");
    t.rpc("bdev_null_create", json!({"name": "n0", "num_blocks": 1024, "block_size": 512}));
    let e = err(t.try_rpc("layout_volume_create", Some(json!({"name": "lv", "bdev_name": "data0", "metadata_bdev": "n0"}))));
    assert_eq!(e.0, -32602, "{e:?}");
    t.rpc("bdev_null_delete", json!({"name": "n0"}));
    // Not zeroed and not ours: refused, not overwritten (and the claims are released).
    let junk = dir.path().join("junk.img");
    std::fs::write(&junk, vec![0x5a; 1 << 20]).unwrap();
    t.rpc("bdev_uring_create", json!({"name": "junk", "filename": junk.to_str().unwrap()}));
    let e = err(t.try_rpc("layout_volume_create", Some(json!({"name": "lv", "bdev_name": "data0", "metadata_bdev": "junk"}))));
    assert_eq!(e.0, -libc::EINVAL as i64, "{e:?}");
    assert!(e.1.contains("not Palisade layout metadata"), "{e:?}");
    t.rpc("bdev_uring_delete", json!({"name": "junk"}));
    assert!(std::fs::read(&junk).unwrap().iter().all(|&x| x == 0x5a));

    assert_eq!(t.rpc("layout_volume_create", json!({"name": "lv", "bdev_name": "data0", "metadata_bdev": "meta0", "guard": "off"})), json!("lv"));
    let list = t.rpc("layout_volume_list", json!({}));
    assert_eq!(list[0]["metadata_bdev"], "meta0", "{list}");
    assert!(list[0].get("metadata_path").is_none(), "{list}");

    // The metadata bdev belongs to the volume alone: no second layout volume, no other use, no
    // delete while it is in use.
    t.rpc("bdev_malloc_create", json!({"name": "m1", "num_blocks": 64, "block_size": 4096}));
    let e = err(t.try_rpc("layout_volume_create", Some(json!({"name": "lv2", "bdev_name": "m1", "metadata_bdev": "meta0"}))));
    assert_eq!(e.0, -libc::EBUSY as i64, "{e:?}");
    let e = err(t.try_rpc("layout_volume_create", Some(json!({"name": "lv2", "bdev_name": "meta0", "metadata_path": dir.path().join("x.meta").to_str().unwrap()}))));
    assert_eq!(e.0, -libc::EBUSY as i64, "{e:?}");
    assert!(e.1.contains("layout-metadata:lv"), "{e:?}");
    let e = err(t.try_rpc("bdev_uring_delete", Some(json!({"name": "meta0"}))));
    assert_eq!(e.0, -libc::EBUSY as i64, "{e:?}");
    t.rpc("bdev_malloc_delete", json!({"name": "m1"}));

    // A file written through a layout and committed, plus enough changes for a few checkpoints'
    // worth of journal.
    t.rpc("client_register", json!({"volume": "lv", "client": "A", "pr_key": 0xa1, "identities": ["iqn.2026-01.test:a"]}));
    t.rpc("layout_file_create", json!({"volume": "lv", "file": 1}));
    let g = t.rpc("layout_get", json!({"volume": "lv", "file": 1, "client": "A", "offset": 0, "length": 16 * BS, "iomode": "rw"}));
    assert_eq!(g["extents"][0]["state"], "INVALID_DATA", "{g}");
    let c = t.rpc("layout_commit", json!({"grant": g["grant"], "ranges": [{"offset": 0, "length": 8 * BS}], "new_size": 8 * BS}));
    assert_eq!(c["committed_bytes"], 8 * BS, "{c}");
    t.rpc("layout_return", json!({"grant": g["grant"]}));
    for f in 10..40u64 {
        t.rpc("layout_file_create", json!({"volume": "lv", "file": f}));
        t.rpc("layout_file_truncate", json!({"volume": "lv", "file": f, "size": f * 10}));
    }
    let before = map(&t, 1);
    assert_eq!(before["extents"][0]["state"], "READ_WRITE_DATA", "{before}");
    assert_eq!(before["extents"][0]["length"], 8 * BS, "{before}");
    let clients = t.rpc("client_list", json!({"volume": "lv"}));

    let cfg = t.rpc("save_config", Value::Null);
    let layout = cfg["subsystems"].as_array().unwrap().iter().find(|s| s["subsystem"] == "layout").unwrap().clone();
    let params = &layout["config"][0]["params"];
    assert_eq!(params["metadata_bdev"], "meta0", "{layout}");
    assert!(params.get("metadata_path").is_none(), "{layout}");
    let subsystems: Vec<&str> = cfg["subsystems"].as_array().unwrap().iter().map(|s| s["subsystem"].as_str().unwrap()).collect();
    let (bi, li) = (subsystems.iter().position(|s| *s == "bdev").unwrap(), subsystems.iter().position(|s| *s == "layout").unwrap());
    assert!(bi < li, "bdevs must be created before layout volumes: {subsystems:?}");

    // SIGKILL: nothing is flushed or checkpointed at exit.
    t.signal_and_wait(libc::SIGKILL, Duration::from_secs(10)).expect("killed");
    drop(t);

    // Restart from the saved config: the bdevs, then the volume from the metadata on meta0.
    let cfg_path = dir.path().join("config.json");
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let mut t = Target::start(&["-c", cfg_path.to_str().unwrap()]);
    let list = wait_volumes(&t);
    assert_eq!(list[0]["metadata_bdev"], "meta0", "{list}");
    assert_eq!(list[0]["files"], 31, "{list}");
    assert_eq!(map(&t, 1), before);
    assert_eq!(t.rpc("client_list", json!({"volume": "lv"})), clients);
    assert_eq!(t.rpc("layout_file_stat", json!({"volume": "lv", "file": 39}))["size"], 390);
    // More changes after the restart, then another SIGKILL.
    t.rpc("layout_file_create", json!({"volume": "lv", "file": 2}));
    let g = t.rpc("layout_get", json!({"volume": "lv", "file": 2, "client": "A", "offset": 0, "length": 4 * BS, "iomode": "rw"}));
    t.rpc("layout_commit", json!({"grant": g["grant"], "ranges": [{"offset": 0, "length": 4 * BS}], "new_size": 4 * BS}));
    let before2 = map(&t, 2);
    t.signal_and_wait(libc::SIGKILL, Duration::from_secs(10)).expect("killed");
    drop(t);

    // Offline check of the metadata image the bdev was backed by.
    let (code, out) = fsck(&meta, false);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("bdev layout") && out.contains("consistent") && out.contains("files 32"), "{out}");
    let (code, out) = fsck(&meta, true);
    assert_eq!(code, 0, "{out}");
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["summary"]["format"], "bdev", "{j}");
    assert_eq!(j["summary"]["committed_blocks"], 12, "{j}");

    // Restart by hand over RPC: the same bdevs, the same volume, the maps intact.
    let t = Target::start(&[]);
    create_bdevs(&t, &meta, &data);
    t.rpc("layout_volume_create", json!({"name": "lv", "bdev_name": "data0", "metadata_bdev": "meta0"}));
    assert_eq!(map(&t, 1), before);
    assert_eq!(map(&t, 2), before2);
    // Delete releases the claim: the metadata bdev can go.
    t.rpc("layout_volume_delete", json!({"name": "lv"}));
    t.rpc("bdev_uring_delete", json!({"name": "meta0"}));
    t.stop();
    let (code, out) = fsck(&meta, false);
    assert_eq!(code, 0, "{out}");
}
