//! reservation_get / reservation_clear, in process (App::dispatch) and through the binary.

mod common;
mod reservation;

use std::sync::Arc;

use palisade::bdev::malloc::MallocBdev;
use palisade::reactor::{PollMode, ReactorSet};
use palisade::rpc::{internal_conn, App};
use palisade::scsi::pr;
use reservation::*;
use serde_json::json;

#[test]
fn get_and_clear_in_process() {
    let set = ReactorSet::start(0x1, PollMode::Adaptive, palisade::bdev::install).unwrap();
    let app = App::new(set.clone(), false, None);
    app.bdevs.add(Arc::new(MallocBdev::new("Malloc0", 64, 512, None).unwrap())).unwrap();
    app.bdevs.add(Arc::new(MallocBdev::new("Malloc1", 64, 512, None).unwrap())).unwrap();
    let v = app.volumes.open("Malloc0", "test").unwrap();
    let (a, b) = (iscsi("iqn.a", "000000000001", 1), nvme(7, "nqn.b"));
    scsi(&v, &a, pr::sa::REGISTER, 0, 0, 0x11, 0).unwrap();
    assert!(nvme_cmd(&v, &b, 0x0d, 0, 0, &keys_le(0, 0x22)).status.is_success());
    scsi(&v, &a, pr::sa::RESERVE, 6, 0x11, 0, 0).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let call = |m: &str, p: serde_json::Value| rt.block_on(app.dispatch(m, Some(p), internal_conn()));
    let got = call("reservation_get", json!({"bdev_name": "Malloc0"})).unwrap();
    assert_eq!(got["generation"], 2);
    assert_eq!(got["reservation"]["scsi_type"], 6);
    assert_eq!(got["reservation"]["key"], "0x0000000000000011");
    assert_eq!(got["registrants"].as_array().unwrap().len(), 2);
    assert_eq!(got["registrants"][0]["initiator_port"], "iqn.a,i,0x000000000001");
    assert_eq!(got["registrants"][0]["holder"], true);
    assert_eq!(got["registrants"][1]["hostnqn"], "nqn.b");
    assert_eq!(call("reservation_get", json!({"bdev_name": "nope"})).unwrap_err().code, -libc::ENODEV);
    assert_eq!(call("reservation_get", json!({"bdev_name": "Malloc1"})).unwrap_err().code, -libc::ENOENT);
    assert_eq!(call("reservation_get", json!({"bdev": "Malloc0"})).unwrap_err().code, palisade::rpc::error::INVALID_PARAMS);
    assert_eq!(call("reservation_clear", json!({"bdev_name": "Malloc0"})).unwrap(), json!(true));
    let got = call("reservation_get", json!({"bdev_name": "Malloc0"})).unwrap();
    assert_eq!(got["registrants"].as_array().unwrap().len(), 0);
    assert!(got["reservation"].is_null());
    assert!(v.check(&iscsi("iqn.z", "000000000009", 1), palisade::reservation::CommandClass::Write).is_ok());
    // The registrants hear about it once.
    let lun = palisade::scsi::Lun::new(0, v.clone());
    assert_eq!(pr::unit_attention(&lun, &iscsi("iqn.a", "000000000001", 1)).map(|s| s.ascq), Some(0x03));
    assert_eq!(palisade::nvme::reservation::notification_log(&v, &b, 1)[8], 3);
    assert_eq!(pr::unit_attention(&lun, &iscsi("iqn.a", "000000000001", 1)), None);
    set.stop();
}

#[test]
fn binary_serves_the_methods_with_a_state_dir() {
    let dir = tempfile::tempdir().unwrap();
    let sd = dir.path().join("state");
    let t = common::Target::start(&["--state-dir", sd.to_str().unwrap()]);
    let e = t.try_rpc("reservation_get", Some(json!({"bdev_name": "Malloc9"}))).unwrap_err();
    assert_eq!(e.0, -(libc::ENODEV as i64), "{e:?}");
    let e = t.try_rpc("reservation_clear", Some(json!({"bdev_name": "Malloc9"}))).unwrap_err();
    assert_eq!(e.0, -(libc::ENODEV as i64), "{e:?}");
}
