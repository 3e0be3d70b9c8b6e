//! The node's own target port group state (what the cluster layer sets when a node fails closed)
//! reaches both protocols: the application is built in this process (the same `rpc::App` the
//! daemon runs, with real iSCSI and NVMe/TCP listeners), the project's initiators connect over
//! TCP, and the test flips `App::port_groups` the way the cluster layer will.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::free_port;
use palisade::cluster::{AccessState, PortGroup};
use palisade::iscsi::initiator::{Completion, LoginOptions, Session};
use palisade::nvme::ana::{self, AnaLog, AnaState};
use palisade::nvme::spec::{self, fid};
use palisade::nvmf::host::{rw_sqe, Controller, HostOpts, Queue};
use palisade::reactor::{PollMode, ReactorSet};
use palisade::rpc::App;
use serde_json::{json, Value};

const IQN: &str = "iqn.2016-06.io.spdk:disk1";
const NQN: &str = "nqn.2016-06.io.spdk:cnode1";
const T: Duration = Duration::from_secs(10);

fn call(rt: &tokio::runtime::Runtime, app: &Arc<App>, method: &str, params: Value) -> Value {
    rt.block_on(app.dispatch(method, Some(params), palisade::rpc::internal_conn())).unwrap_or_else(|e| panic!("{method}: {}", e.message))
}

fn scsi(s: &mut Session, cdb: &[u8], w: &[u8], r: usize) -> (Completion, Vec<u8>) {
    for _ in 0..4 {
        let (c, d) = s.command(0, cdb, w, r, T).expect("command");
        if c.status == 2 && c.sense.get(2).map(|k| k & 0xf) == Some(6) {
            continue;
        }
        return (c, d);
    }
    panic!("unit attentions do not end");
}

fn sense(c: &Completion) -> (u8, u8, u8, u8) {
    (c.status, c.sense.get(2).map(|k| k & 0xf).unwrap_or(0), c.sense.get(12).copied().unwrap_or(0), c.sense.get(13).copied().unwrap_or(0))
}

const READ10: [u8; 10] = [0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0];
const WRITE10: [u8; 10] = [0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0];
const TUR: [u8; 6] = [0, 0, 0, 0, 0, 0];

fn rtpg(s: &mut Session) -> Vec<(u8, u16, Vec<u16>)> {
    let mut c = [0u8; 12];
    c[0] = 0xa3;
    c[1] = 0x0a;
    c[6..10].copy_from_slice(&1024u32.to_be_bytes());
    let (r, d) = scsi(s, &c, &[], 1024);
    assert_eq!(r.status, 0, "RTPG {:?}", sense(&r));
    let mut out = Vec::new();
    let mut at = 4;
    while at < d.len() {
        let n = d[at + 7] as usize;
        let ports = (0..n).map(|i| u16::from_be_bytes([d[at + 10 + 4 * i], d[at + 11 + 4 * i]])).collect();
        out.push((d[at] & 0xf, u16::from_be_bytes([d[at + 2], d[at + 3]]), ports));
        at += 8 + 4 * n;
    }
    out
}

fn nvme_read(q: &mut Queue) -> spec::Status {
    q.sync(rw_sqe(false, 1, 0, 8), None, 4096).expect("transport").0.status
}

fn ana_states(c: &mut Controller) -> Vec<AnaState> {
    let d = c.admin.get_log_page(ana::LID_ANA, 4096, 0).unwrap();
    AnaLog::decode(&d).unwrap().groups.iter().map(|g| g.state).collect()
}

#[test]
fn local_port_group_state_refuses_both_protocols() {
    let reactors = ReactorSet::start(0x1, PollMode::Adaptive, palisade::bdev::install).unwrap();
    let app = App::new(reactors, false, None);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (ip, np) = (free_port(), free_port());
    call(&rt, &app, "bdev_malloc_create", json!({"name": "Malloc0", "num_blocks": 8192, "block_size": 512}));
    call(&rt, &app, "iscsi_create_portal_group", json!({"tag": 3, "portals": [{"host": "127.0.0.1", "port": ip.to_string()}]}));
    call(&rt, &app, "iscsi_create_initiator_group", json!({"tag": 1, "initiators": ["ANY"], "netmasks": ["127.0.0.1/32"]}));
    call(
        &rt,
        &app,
        "iscsi_create_target_node",
        json!({"name": "disk1", "alias_name": "", "luns": [{"bdev_name": "Malloc0", "lun_id": 0}], "pg_ig_maps": [{"pg_tag": 3, "ig_tag": 1}], "queue_depth": 32}),
    );
    call(&rt, &app, "nvmf_create_transport", json!({"trtype": "TCP"}));
    call(&rt, &app, "nvmf_create_subsystem", json!({"nqn": NQN, "allow_any_host": true}));
    call(&rt, &app, "nvmf_subsystem_add_ns", json!({"nqn": NQN, "namespace": {"bdev_name": "Malloc0"}}));
    call(&rt, &app, "nvmf_subsystem_add_listener", json!({"nqn": NQN, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": np.to_string()}}));
    assert_eq!(*app.port_groups.local_iscsi_ports(), vec![3], "portal group tags are the local ports");

    let mut s = Session::connect("127.0.0.1", ip, &LoginOptions::new("iqn.test:local", Some(IQN)), 8).unwrap();
    let mut o = HostOpts::new(format!("127.0.0.1:{np}").parse().unwrap(), NQN);
    o.timeout = T;
    let mut c = Controller::connect(&o).unwrap();
    c.set_num_queues(1).unwrap();
    let mut q = c.io_queue(1, 16).unwrap();
    c.admin.set_features(fid::ASYNC_EVENT_CONFIG, ana::AEC_ANA_CHANGE).unwrap();
    c.admin.submit_aer().unwrap();
    assert_eq!(scsi(&mut s, &READ10, &[], 4096).0.status, 0);
    assert!(nvme_read(&mut q).is_ok());

    // Another node's group appears (the cluster layer fills these in).
    app.port_groups.set_remote(vec![PortGroup { id: 2, node: "node-b".into(), state: AccessState::Optimized, iscsi_ports: vec![0x103] }]);
    assert_eq!(rtpg(&mut s), vec![(0, 1, vec![3]), (0, 2, vec![0x103])]);

    // The node fails closed.
    app.port_groups.set_local_state(AccessState::Unavailable);
    // SCSI: media access and TEST UNIT READY get NOT READY / LOGICAL UNIT NOT ACCESSIBLE,
    // TARGET PORT IN UNAVAILABLE STATE; INQUIRY and RTPG still answer, RTPG shows the state.
    assert_eq!(sense(&scsi(&mut s, &READ10, &[], 4096).0), (2, 2, 0x04, 0x0c));
    assert_eq!(sense(&scsi(&mut s, &WRITE10, &[0u8; 512], 0).0), (2, 2, 0x04, 0x0c));
    assert_eq!(sense(&scsi(&mut s, &TUR, &[], 0).0), (2, 2, 0x04, 0x0c));
    assert_eq!(scsi(&mut s, &[0x12, 0, 0, 0, 96, 0], &[], 96).0.status, 0);
    let (r, d) = scsi(&mut s, &[0x03, 0, 0, 0, 18, 0], &[], 18);
    assert_eq!((r.status, d[2] & 0xf, d[12], d[13]), (0, 2, 0x04, 0x0c), "REQUEST SENSE reports the state");
    assert_eq!(rtpg(&mut s), vec![(3, 1, vec![3]), (0, 2, vec![0x103])]);
    // NVMe: I/O gets path related 02h, the ANA log shows inaccessible, the host was told.
    let st = nvme_read(&mut q);
    assert_eq!((st.sct, st.sc, st.dnr), (3, 2, false), "{st}");
    let ev = c.admin.wait_event(T).unwrap().expect("ANA change notice");
    assert_eq!(ev.dw0, spec::aer_dw0(spec::AER_TYPE_NOTICE, ana::AER_INFO_ANA_CHANGE, ana::LID_ANA));
    assert_eq!(ana_states(&mut c), vec![AnaState::Inaccessible]);
    // A listener set to optimized does not override the failed-closed node.
    call(&rt, &app, "nvmf_subsystem_listener_set_ana_state", json!({"nqn": NQN, "ana_state": "optimized",
        "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": np.to_string()}}));
    assert_eq!(nvme_read(&mut q).sc, 2);

    // Transitioning: 04/0A and ANA change (03h).
    app.port_groups.set_local_state(AccessState::Transitioning);
    assert_eq!(sense(&scsi(&mut s, &READ10, &[], 4096).0), (2, 2, 0x04, 0x0a));
    assert_eq!(nvme_read(&mut q).sc, 3);
    // Standby: 04/0B; MODE SENSE is still served.
    app.port_groups.set_local_state(AccessState::Standby);
    assert_eq!(sense(&scsi(&mut s, &READ10, &[], 4096).0), (2, 2, 0x04, 0x0b));
    assert_eq!(scsi(&mut s, &[0x1a, 0, 0x3f, 0, 255, 0], &[], 255).0.status, 0);

    // Back to optimized: both work again.
    app.port_groups.set_local_state(AccessState::Optimized);
    assert_eq!(scsi(&mut s, &READ10, &[], 4096).0.status, 0);
    assert!(nvme_read(&mut q).is_ok());
    assert_eq!(ana_states(&mut c), vec![AnaState::Optimized]);

    s.logout().unwrap();
    drop(q);
    drop(c);
    app.stop();
}
