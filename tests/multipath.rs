//! Multipath reporting against the built binary: ALUA over iSCSI (standard INQUIRY TPGS, the VPD
//! 83h target port group designator, REPORT TARGET PORT GROUPS in both header formats) and NVMe
//! ANA over TCP (Identify fields, the ANA log page, nvmf_subsystem_listener_set_ana_state with its
//! change notice and the path status of I/O). The project's own initiators are the clients.

mod common;

use std::time::Duration;

use common::{free_port, Target};
use palisade::iscsi::initiator::{Completion, LoginOptions, Session};
use palisade::nvme::ana::{self, AnaLog, AnaState};
use palisade::nvme::spec::{self, admin, cns, fid, Sqe};
use palisade::nvmf::host::{rw_sqe, Controller, HostOpts, Queue};
use serde_json::json;

const IQN: &str = "iqn.2016-06.io.spdk:disk1";
const NQN: &str = "nqn.2016-06.io.spdk:cnode1";
const T: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- iSCSI / ALUA

fn iscsi_target() -> (Target, u16) {
    let t = Target::start(&["-m", "0x1"]);
    let port = free_port();
    t.rpc("bdev_malloc_create", json!({"name": "Malloc0", "num_blocks": 8192, "block_size": 512}));
    t.rpc("iscsi_create_portal_group", json!({"tag": 1, "portals": [{"host": "127.0.0.1", "port": port.to_string()}]}));
    t.rpc("iscsi_create_initiator_group", json!({"tag": 1, "initiators": ["ANY"], "netmasks": ["127.0.0.1/32"]}));
    t.rpc(
        "iscsi_create_target_node",
        json!({"name": "disk1", "alias_name": "", "luns": [{"bdev_name": "Malloc0", "lun_id": 0}],
            "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 1}], "queue_depth": 32}),
    );
    (t, port)
}

/// One command, retried past unit attentions (a new nexus sees POWER ON first).
fn scsi(s: &mut Session, cdb: &[u8], r: usize) -> (Completion, Vec<u8>) {
    for _ in 0..4 {
        let (c, d) = s.command(0, cdb, &[], r, T).expect("command");
        if c.status == 2 && c.sense.get(2).map(|k| k & 0xf) == Some(6) {
            continue;
        }
        return (c, d);
    }
    panic!("unit attentions do not end");
}

fn sense(c: &Completion) -> (u8, u8, u8) {
    (c.sense.get(2).map(|k| k & 0xf).unwrap_or(0), c.sense.get(12).copied().unwrap_or(0), c.sense.get(13).copied().unwrap_or(0))
}

fn rtpg_cdb(format: u8, sa: u8, alloc: u32) -> [u8; 12] {
    let mut c = [0u8; 12];
    c[0] = 0xa3;
    c[1] = format << 5 | sa;
    c[6..10].copy_from_slice(&alloc.to_be_bytes());
    c
}

/// A decoded target port group descriptor: (state, supported, id, status, ports).
type Tpg = (u8, u8, u16, u8, Vec<u16>);

/// Decode REPORT TARGET PORT GROUPS parameter data (SPC-4 6.37).
fn decode_rtpg(d: &[u8], extended: bool) -> Vec<Tpg> {
    let len = u32::from_be_bytes(d[0..4].try_into().unwrap()) as usize;
    assert_eq!(len + 4, d.len(), "RETURN DATA LENGTH");
    let mut at = 4;
    if extended {
        assert_eq!(d[4] & 0x70, 0x10, "FORMAT TYPE 001b");
        at = 8;
    }
    let mut out = Vec::new();
    while at < d.len() {
        let n = d[at + 7] as usize;
        let ports = (0..n).map(|i| u16::from_be_bytes([d[at + 8 + 4 * i + 2], d[at + 8 + 4 * i + 3]])).collect();
        assert_eq!(d[at] & 0x80, 0, "PREF off");
        out.push((d[at] & 0x0f, d[at + 1], u16::from_be_bytes([d[at + 2], d[at + 3]]), d[at + 5], ports));
        at += 8 + 4 * n;
    }
    assert_eq!(at, d.len());
    out
}

#[test]
fn iscsi_reports_implicit_alua() {
    let (t, port) = iscsi_target();
    let mut s = Session::connect("127.0.0.1", port, &LoginOptions::new("iqn.test:alua", Some(IQN)), 8).unwrap();

    // Standard INQUIRY: TPGS 01b (implicit ALUA).
    let (c, d) = scsi(&mut s, &[0x12, 0, 0, 0, 96, 0], 96);
    assert_eq!(c.status, 0);
    assert_eq!(d[5] & 0x30, 0x10, "TPGS");

    // VPD 83h: relative target port (type 4) = portal group tag 1, target port group (type 5) = 1.
    let (c, d) = scsi(&mut s, &[0x12, 1, 0x83, 1, 0, 0], 256);
    assert_eq!(c.status, 0);
    let mut at = 4;
    let mut found = Vec::new();
    while at + 4 <= d.len() {
        let (assoc, typ, n) = ((d[at + 1] >> 4) & 3, d[at + 1] & 0xf, d[at + 3] as usize);
        if assoc == 1 && (typ == 4 || typ == 5) {
            found.push((typ, u16::from_be_bytes([d[at + 6], d[at + 7]])));
        }
        at += 4 + n;
    }
    assert_eq!(found, vec![(4, 1), (5, 1)]);

    // REPORT TARGET PORT GROUPS, length-only header: one group (local mode), active/optimized,
    // every implicit state supported, the portal group tag as its port.
    let (c, d) = scsi(&mut s, &rtpg_cdb(0, 0x0a, 1024), 1024);
    assert_eq!(c.status, 0, "sense {:?}", sense(&c));
    assert_eq!(decode_rtpg(&d, false), vec![(0, 0x8f, 1, 0, vec![1])]);
    // Extended header: implicit transition time.
    let (_, d) = scsi(&mut s, &rtpg_cdb(1, 0x0a, 1024), 1024);
    assert_eq!(d[5], 10, "IMPLICIT TRANSITION TIME");
    assert_eq!(decode_rtpg(&d, true), vec![(0, 0x8f, 1, 0, vec![1])]);
    // The allocation length cuts the data.
    let (c, d) = scsi(&mut s, &rtpg_cdb(0, 0x0a, 4), 4);
    assert_eq!((c.status, d.len()), (0, 4));
    assert_eq!(u32::from_be_bytes(d[0..4].try_into().unwrap()), 12);
    // A reserved PARAMETER DATA FORMAT and an unknown MAINTENANCE IN service action.
    for cdb in [rtpg_cdb(2, 0x0a, 64), rtpg_cdb(0, 0x1f, 64)] {
        let (c, _) = scsi(&mut s, &cdb, 64);
        assert_eq!((c.status, sense(&c)), (2, (5, 0x24, 0)), "cdb {cdb:02x?}");
    }
    // REPORT SUPPORTED OPERATION CODES knows it (opcode + service action form).
    let mut rsoc = [0u8; 12];
    rsoc[0] = 0xa3;
    rsoc[1] = 0x0c;
    rsoc[2] = 2;
    rsoc[3] = 0xa3;
    rsoc[5] = 0x0a;
    rsoc[6..10].copy_from_slice(&64u32.to_be_bytes());
    let (c, d) = scsi(&mut s, &rsoc, 64);
    assert_eq!(c.status, 0);
    assert_eq!(d[1] & 7, 3, "supported");
    assert_eq!(&d[4..6], &[0xa3, 0xea]);

    s.logout().unwrap();
    t.stop();
}

// ---------------------------------------------------------------- NVMe / ANA

struct Nvme {
    t: Target,
    ports: [u16; 2],
}

fn addr(port: u16) -> serde_json::Value {
    json!({"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()})
}

/// A subsystem with two namespaces (nsid 1 and 2, ANA groups 1 and 2) and two listeners.
fn nvme_target() -> Nvme {
    let t = Target::start(&["-m", "0x1"]);
    t.rpc("bdev_malloc_create", json!({"name": "Malloc0", "num_blocks": 8192, "block_size": 512}));
    t.rpc("bdev_malloc_create", json!({"name": "Malloc1", "num_blocks": 8192, "block_size": 512}));
    t.rpc("nvmf_create_transport", json!({"trtype": "TCP"}));
    t.rpc("nvmf_create_subsystem", json!({"nqn": NQN, "allow_any_host": true, "ana_reporting": true, "max_namespaces": 8}));
    t.rpc("nvmf_subsystem_add_ns", json!({"nqn": NQN, "namespace": {"bdev_name": "Malloc0"}}));
    t.rpc("nvmf_subsystem_add_ns", json!({"nqn": NQN, "namespace": {"bdev_name": "Malloc1"}}));
    let ports = [free_port(), free_port()];
    for p in ports {
        t.rpc("nvmf_subsystem_add_listener", json!({"nqn": NQN, "listen_address": addr(p)}));
    }
    Nvme { t, ports }
}

fn connect(port: u16) -> (Controller, Queue) {
    let mut o = HostOpts::new(format!("127.0.0.1:{port}").parse().unwrap(), NQN);
    o.timeout = T;
    let mut c = Controller::connect(&o).unwrap();
    c.set_num_queues(1).unwrap();
    let q = c.io_queue(1, 16).unwrap();
    (c, q)
}

fn ana_log(c: &mut Controller, rgo: bool) -> AnaLog {
    let len = 4096;
    let mut s = Sqe::default();
    let numd = (len / 4 - 1) as u32;
    s.set_opcode(admin::GET_LOG_PAGE).set_cdw(10, ana::LID_ANA as u32 | if rgo { ana::LSP_RGO } else { 0 } | numd << 16);
    let (_, d) = c.admin.cmd(s, None, len).unwrap();
    AnaLog::decode(&d).expect("ANA log decodes")
}

fn states(log: &AnaLog) -> Vec<(u32, AnaState, Vec<u32>)> {
    log.groups.iter().map(|g| (g.grpid, g.state, g.nsids.clone())).collect()
}

fn read(q: &mut Queue, nsid: u32) -> spec::Status {
    q.sync(rw_sqe(false, nsid, 0, 8), None, 4096).expect("transport").0.status
}

fn set_ana(t: &Target, port: u16, state: &str, grp: Option<u32>) {
    let mut p = json!({"nqn": NQN, "listen_address": addr(port), "ana_state": state});
    if let Some(g) = grp {
        p["anagrpid"] = json!(g);
    }
    t.rpc("nvmf_subsystem_listener_set_ana_state", p);
}

#[test]
fn nvme_identify_and_ana_log() {
    let n = nvme_target();
    let (mut c, _q) = connect(n.ports[0]);
    let id = c.admin.identify(cns::CONTROLLER, 0).unwrap();
    assert_eq!(id[76] & 0b1011, 0b1011, "CMIC: multiple ports, multiple controllers, ANA reporting");
    assert_ne!(u32::from_le_bytes(id[92..96].try_into().unwrap()) & (1 << 11), 0, "OAES: ANA change notices");
    assert_eq!(id[342], ana::ANATT_SECS, "ANATT");
    assert_eq!(id[343], 0x5f, "ANACAP");
    assert_eq!(u32::from_le_bytes(id[344..348].try_into().unwrap()), 8, "ANAGRPMAX");
    assert_eq!(u32::from_le_bytes(id[348..352].try_into().unwrap()), 8, "NANAGRPID");
    for nsid in [1u32, 2] {
        let ns = c.admin.identify(cns::NAMESPACE, nsid).unwrap();
        assert_eq!(u32::from_le_bytes(ns[92..96].try_into().unwrap()), nsid, "ANAGRPID = NSID");
    }
    let log = ana_log(&mut c, false);
    assert_eq!(states(&log), vec![(1, AnaState::Optimized, vec![1]), (2, AnaState::Optimized, vec![2])]);
    // Return Groups Only: the descriptors without NSIDs.
    let rgo = ana_log(&mut c, true);
    assert!(rgo.groups.iter().all(|g| g.nsids.is_empty()));
    // Offset and length: the second descriptor alone (16-byte header + 36-byte first descriptor).
    let d = c.admin.get_log_page(ana::LID_ANA, 36, 52).unwrap();
    assert_eq!(&d[0..8], &[2, 0, 0, 0, 1, 0, 0, 0], "group 2, one NSID");
    assert_eq!(d[16], AnaState::Optimized as u8);
    assert_eq!(&d[32..36], &[2, 0, 0, 0]);
    // Past the end of the page: zeros, not an error; beyond it: invalid field.
    assert_eq!(c.admin.get_log_page(ana::LID_ANA, 8, 88).unwrap(), vec![0; 8]);
    assert!(c.admin.get_log_page(ana::LID_ANA, 8, 4096).is_err());
    n.t.stop();
}

#[test]
fn nvme_listener_ana_state() {
    let n = nvme_target();
    let (mut a, mut qa) = connect(n.ports[0]);
    let (_b, mut qb) = connect(n.ports[1]);
    // The host enables ANA change notices and parks an AER.
    a.admin.set_features(fid::ASYNC_EVENT_CONFIG, ana::AEC_ANA_CHANGE).unwrap();
    a.admin.submit_aer().unwrap();
    let before = ana_log(&mut a, false).change_count;

    set_ana(&n.t, n.ports[0], "inaccessible", None);
    let ev = a.admin.wait_event(T).unwrap().expect("ANA change notice");
    assert_eq!(ev.dw0, spec::aer_dw0(spec::AER_TYPE_NOTICE, ana::AER_INFO_ANA_CHANGE, ana::LID_ANA));
    let log = ana_log(&mut a, false);
    assert!(log.change_count > before);
    assert_eq!(states(&log), vec![(1, AnaState::Inaccessible, vec![1]), (2, AnaState::Inaccessible, vec![2])]);
    // I/O through that listener: path related, asymmetric access inaccessible, retryable.
    let st = read(&mut qa, 1);
    assert_eq!((st.sct, st.sc, st.dnr), (3, 2, false), "{st}");
    let flush = {
        let mut s = Sqe::default();
        s.set_opcode(spec::io::FLUSH).set_nsid(1);
        s
    };
    assert_eq!(qa.sync(flush, None, 0).unwrap().0.status.sc, 2);
    // The other listener's path is untouched.
    assert!(read(&mut qb, 1).is_ok());
    let l = n.t.rpc("nvmf_subsystem_get_listeners", json!({"nqn": NQN}));
    let by_port = |p: u16| l.as_array().unwrap().iter().find(|x| x["address"]["trsvcid"] == p.to_string()).unwrap().clone();
    assert_eq!(by_port(n.ports[0])["ana_states"], json!([{"ana_group": 1, "ana_state": "inaccessible"}, {"ana_group": 2, "ana_state": "inaccessible"}]));
    assert_eq!(by_port(n.ports[1])["ana_state"], "optimized");

    // One group back to non-optimized: its namespace works, the other group stays inaccessible.
    a.admin.submit_aer().unwrap();
    set_ana(&n.t, n.ports[0], "non_optimized", Some(1));
    let ev = a.admin.wait_event(T).unwrap().expect("second notice after the log was read");
    assert_eq!((ev.dw0 >> 8) & 0xff, ana::AER_INFO_ANA_CHANGE);
    assert_eq!(states(&ana_log(&mut a, false)), vec![(1, AnaState::NonOptimized, vec![1]), (2, AnaState::Inaccessible, vec![2])]);
    assert!(read(&mut qa, 1).is_ok());
    assert_eq!(read(&mut qa, 2).sc, 2);

    // The whole listener back to optimized: I/O works again.
    set_ana(&n.t, n.ports[0], "optimized", None);
    assert!(read(&mut qa, 1).is_ok());
    assert!(read(&mut qa, 2).is_ok());
    assert!(ana_log(&mut a, false).groups.iter().all(|g| g.state == AnaState::Optimized));

    // Bad calls change nothing.
    for bad in [
        json!({"nqn": NQN, "listen_address": addr(n.ports[0]), "ana_state": "bogus"}),
        json!({"nqn": NQN, "listen_address": addr(n.ports[0]), "ana_state": "inaccessible", "anagrpid": 0}),
        json!({"nqn": NQN, "listen_address": addr(n.ports[0]), "ana_state": "inaccessible", "anagrpid": 9}),
        json!({"nqn": NQN, "listen_address": addr(free_port()), "ana_state": "inaccessible"}),
    ] {
        assert!(n.t.try_rpc("nvmf_subsystem_listener_set_ana_state", Some(bad.clone())).is_err(), "{bad}");
    }
    assert!(read(&mut qa, 1).is_ok());
    n.t.stop();
}

#[test]
fn nvme_add_listener_with_ana_state_and_save_config() {
    let n = nvme_target();
    let p3 = free_port();
    n.t.rpc("nvmf_subsystem_add_listener", json!({"nqn": NQN, "listen_address": addr(p3), "ana_state": "inaccessible"}));
    let (mut c, mut q) = connect(p3);
    assert_eq!(read(&mut q, 1).sc, 2);
    assert!(ana_log(&mut c, false).groups.iter().all(|g| g.state == AnaState::Inaccessible));
    // save_config keeps the listener's state as the call that set it.
    let cfg = n.t.rpc("save_config", json!(null));
    let s = cfg.to_string();
    assert!(s.contains("nvmf_subsystem_listener_set_ana_state"), "{s}");
    assert!(s.contains("\"ana_state\":\"inaccessible\""));
    n.t.stop();
}
