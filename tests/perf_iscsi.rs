//! `palisade perf --transport iscsi` against the built target: verified writes and reads over
//! several sessions, JSON summary, and a refused login reported as a clean error.

mod common;

use std::process::Command;

use common::{free_port, Target, BIN};
use serde_json::{json, Value};

const IQN: &str = "iqn.2016-06.io.palisade:perf";

fn export(port: u16) -> Value {
    json!({"subsystems": [
        {"subsystem": "bdev", "config": [
            {"method": "bdev_malloc_create", "params": {"name": "M0", "num_blocks": 32768, "block_size": 512}}]},
        {"subsystem": "iscsi", "config": [
            {"method": "iscsi_create_portal_group", "params": {"tag": 1, "portals": [{"host": "127.0.0.1", "port": port.to_string()}]}},
            {"method": "iscsi_create_initiator_group", "params": {"tag": 1, "initiators": ["ANY"], "netmasks": ["127.0.0.1/32"]}},
            {"method": "iscsi_create_target_node", "params": {"name": IQN, "alias_name": "perf disk", "luns": [{"bdev_name": "M0", "lun_id": 0}],
                "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 1}], "queue_depth": 64, "disable_chap": true}}]}
    ]})
}

fn perf(port: u16, target: &str, args: &[&str]) -> (Option<i32>, Value, String) {
    let out = Command::new(BIN)
        .args(["perf", "--transport", "iscsi", "--addr", "127.0.0.1", "--port", &port.to_string(), "--target", target, "--json"])
        .args(args)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code(), v, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn perf_over_iscsi_verifies_data() {
    let port = free_port();
    let t = Target::start_with_config(&export(port), &["-m", "0x1"]);
    for args in [
        &["--queues", "2", "--qd", "8", "--rw", "randrw", "--mix", "50", "--verify", "--time", "1500ms"][..],
        &["--queues", "1", "--qd", "4", "--rw", "write", "--bs", "128k", "--verify", "--hdgst", "--ddgst", "--time", "1s"][..],
    ] {
        let (code, v, err) = perf(port, IQN, args);
        assert_eq!(code, Some(0), "perf {args:?} failed: {err}\n{v}");
        assert_eq!(v["errors"], 0, "{v}");
        assert!(v["ios"].as_u64().unwrap() > 50, "{v}");
    }
    // An unknown target is refused at login: a clean error, not a hang.
    let (code, _, err) = perf(port, "iqn.2016-06.io.palisade:nope", &["--time", "1s"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("iSCSI login"), "{err}");
    t.stop();
}
