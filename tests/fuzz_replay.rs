//! Replays every committed fuzz corpus file (fuzz/corpus/<target>/*) through the same entry
//! points as the cargo-fuzz targets (fuzz/entries.rs), on stable Rust, as part of `cargo test`.
//! The campaign itself runs with cargo-fuzz (see fuzz/README.md); CI only replays.

#[path = "../fuzz/entries.rs"]
mod entries;

use std::path::{Path, PathBuf};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target)
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect()).unwrap_or_default();
    v.sort();
    v
}

#[test]
fn replay_corpora() {
    let mut total = 0;
    for (name, f) in entries::TARGETS {
        let inputs = files(&corpus_dir(name));
        assert!(!inputs.is_empty(), "no corpus for fuzz target {name}");
        for p in &inputs {
            let data = std::fs::read(p).unwrap();
            let r = std::panic::catch_unwind(|| f(&data));
            assert!(r.is_ok(), "fuzz target {name} panics on {}", p.display());
        }
        total += inputs.len();
    }
    eprintln!("replayed {total} corpus files");
}

/// Every registered JSON-RPC method has its params decoder (a new method must be added to its
/// module's `decode_params`, or the fuzz target would not reach it).
#[test]
fn every_rpc_method_decodes_params() {
    for m in entries::rpc_methods() {
        assert!(palisade::rpc::decode_params(m, &None).is_some(), "no params decoder for {m}");
    }
    assert!(palisade::rpc::decode_params("no_such_method", &None).is_none());
}

// ---- seeds ----------------------------------------------------------------------------------
// `cargo test --test fuzz_replay -- --ignored --test-threads=1` writes seeds into
// fuzz/seeds/<target>/ (then `cargo fuzz cmin` merges them into fuzz/corpus/, see
// fuzz/README.md). `record_seeds` records the client side of real sessions against the built
// binary through a loopback proxy; `generate_seeds` adds hand-made inputs built with the crate's
// own encoders for what no session sends.

mod common;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade::iscsi::initiator::{LoginOptions, Session};
use palisade::iscsi::pdu::{self, op, Bhs};
use palisade::nvme::spec::Sqe;
use palisade::nvmf::host::{rw_sqe, Controller, HostOpts};
use serde_json::{json, Value};

fn seed(target: &str, data: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    let mut h = DefaultHasher::new();
    data.hash(&mut h);
    std::fs::write(dir.join(format!("{:016x}", h.finish())), data).unwrap();
}

/// A loopback TCP proxy that records what clients send to `upstream`, one buffer per connection.
struct Recorder {
    port: u16,
    conns: Arc<Mutex<Vec<Arc<Mutex<Vec<u8>>>>>>,
}

impl Recorder {
    fn start(upstream: u16) -> Recorder {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let conns: Arc<Mutex<Vec<Arc<Mutex<Vec<u8>>>>>> = Default::default();
        let c2 = conns.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(client) = s else { return };
                let server = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
                let rec = Arc::new(Mutex::new(Vec::new()));
                c2.lock().unwrap().push(rec.clone());
                let pipe = |mut from: TcpStream, mut to: TcpStream, rec: Option<Arc<Mutex<Vec<u8>>>>| {
                    std::thread::spawn(move || {
                        let mut b = vec![0u8; 65536];
                        loop {
                            match from.read(&mut b) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if let Some(r) = &rec {
                                        r.lock().unwrap().extend_from_slice(&b[..n]);
                                    }
                                    if to.write_all(&b[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                };
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap(), Some(rec));
                pipe(server, client, None);
            }
        });
        Recorder { port, conns }
    }
    fn take(&self) -> Vec<Vec<u8>> {
        std::thread::sleep(Duration::from_millis(300));
        self.conns.lock().unwrap().drain(..).map(|c| c.lock().unwrap().clone()).collect()
    }
}

/// RPC calls made while recording are seeds of rpc_params too.
fn rpc(t: &common::Target, method: &str, params: Value) -> Value {
    seed("rpc_params", &serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})).unwrap());
    t.try_rpc(method, Some(params)).unwrap_or_else(|e| panic!("{method}: {e:?}"))
}

/// Split one recorded iSCSI client stream into seeds for iscsi_pdu, iscsi_login and scsi_cdb.
fn iscsi_stream_seeds(s: &[u8], digests: (bool, bool), disc_policy: u8) {
    let flags = digests.0 as u8 | (digests.1 as u8) << 1;
    let mut login = vec![disc_policy];
    let mut rest = s;
    let mut in_login = true;
    let mut ff = vec![flags];
    while !rest.is_empty() {
        let (hd, dd) = if in_login { (false, false) } else { digests };
        let Ok(Some(f)) = pdu::parse_frame(rest, hd, dd, 1 << 24) else { break };
        let (bhs, data) = (f.bhs, &rest[f.data.0..f.data.1]);
        if in_login && bhs.opcode() == op::LOGIN_REQ {
            // The recorded CHAP_R answers a challenge the fuzz run will not send again.
            let text = String::from_utf8_lossy(data).to_string();
            let text: String = text.split('\0').map(|kv| if kv.starts_with("CHAP_R=") { "CHAP_R=compute".to_string() } else { kv.to_string() }).collect::<Vec<_>>().join("\0");
            pdu::encode(&mut login, &bhs, &[], text.as_bytes(), false, false);
            seed("iscsi_pdu", &[&[0u8][..], &rest[..f.total]].concat());
        } else {
            in_login = false;
            if ff.len() < 256 * 1024 {
                ff.extend_from_slice(&rest[..f.total]);
            }
            seed("iscsi_pdu", &[&[flags][..], &rest[..f.total]].concat());
            if bhs.opcode() == op::SCSI_CMD {
                let cdb = &bhs.0[32..48];
                let n = match palisade::scsi::cdb::cdb_len(cdb[0]) {
                    0 => 16,
                    n => n,
                };
                seed("scsi_cdb", &[&[n as u8][..], &cdb[..n], data].concat());
            }
        }
        rest = &rest[f.total..];
    }
    seed("iscsi_login", &login);
    if ff.len() > 1 {
        seed("iscsi_pdu", &ff);
    }
}

/// Split one recorded NVMe/TCP host stream into seeds for nvmf_pdu and nvme_cmd.
fn nvmf_stream_seeds(s: &[u8], digests: (bool, bool)) {
    let mut rest = s;
    let mut first = true;
    while rest.len() >= 8 {
        let plen = u32::from_le_bytes(rest[4..8].try_into().unwrap()) as usize;
        if plen < 8 || plen > rest.len() {
            break;
        }
        let p = &rest[..plen];
        let (hd, dd) = if first { (false, false) } else { digests };
        first = false;
        seed("nvmf_pdu", &[&[hd as u8 | (dd as u8) << 1][..], p].concat());
        if p[0] == 0x04 && p.len() >= 72 {
            let pdo = p[3] as usize;
            let end = if dd && pdo > 0 { plen.saturating_sub(4) } else { plen };
            let data = if pdo > 0 && pdo <= end { &p[pdo..end] } else { &[][..] };
            seed("nvme_cmd", &[&p[8..72], data].concat());
        }
        rest = &rest[plen..];
    }
}

fn scsi_session(s: &mut Session) {
    let t = Duration::from_secs(10);
    let blk = vec![0xa5u8; 512];
    let mut c = |cdb: &[u8], w: &[u8], r: usize| s.command(0, cdb, w, r, t).map(|x| x.1).unwrap_or_default();
    c(&[0x00, 0, 0, 0, 0, 0], &[], 0);
    c(&[0x00, 0, 0, 0, 0, 0], &[], 0);
    c(&[0x12, 0, 0, 0, 96, 0], &[], 96);
    let vpd83 = c(&[0x12, 1, 0x83, 0, 255, 0], &[], 255);
    for p in [0x00u8, 0x80, 0xb0, 0xb1, 0xb2, 0x8f] {
        c(&[0x12, 1, p, 0, 255, 0], &[], 255);
    }
    c(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8);
    c(&[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0], &[], 32);
    c(&[0x9e, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 24, 0, 0], &[], 24);
    c(&[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[], 256);
    c(&[0xa3, 0x0c, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0], &[], 4096);
    c(&[0xa3, 0x0d, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0], &[], 16);
    let ms = c(&[0x1a, 0, 0x3f, 0, 255, 0], &[], 255);
    c(&[0x5a, 0x08, 0x08, 0, 0, 0, 0, 1, 0, 0], &[], 256);
    if ms.len() > 4 {
        // MODE SELECT(6) of what MODE SENSE returned (mode data length zeroed, PS bits cleared).
        let mut p = ms.clone();
        p[0] = 0;
        c(&[0x15, 0x10, 0, 0, p.len() as u8, 0], &p, 0);
    }
    c(&[0x2a, 0, 0, 0, 0, 8, 0, 0, 1, 0], &blk, 0);
    c(&[0x28, 0, 0, 0, 0, 8, 0, 0, 1, 0], &[], 512);
    c(&[0x8a, 0x08, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 1, 0, 0], &blk, 0);
    c(&[0x88, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 1, 0, 0], &[], 512);
    c(&[0x0a, 0, 0, 24, 1, 0], &blk, 0);
    c(&[0x08, 0, 0, 24, 1, 0], &[], 512);
    c(&[0x93, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0, 0, 8, 0, 0], &blk, 0);
    c(&[0x41, 0x08, 0, 0, 0, 40, 0, 0, 8, 0], &blk, 0);
    c(&[0x89, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0], &[blk.clone(), blk.clone()].concat(), 0);
    c(&[0x2f, 0x02, 0, 0, 0, 8, 0, 0, 1, 0], &blk, 0);
    c(&[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0);
    let mut unmap = vec![0, 38, 0, 32, 0, 0, 0, 0];
    for (lba, n) in [(64u64, 8u32), (128, 16)] {
        unmap.extend_from_slice(&lba.to_be_bytes());
        unmap.extend_from_slice(&n.to_be_bytes());
        unmap.extend_from_slice(&[0; 4]);
    }
    c(&[0x42, 0, 0, 0, 0, 0, 0, 0, unmap.len() as u8, 0], &unmap, 0);
    // Persistent reservations: REGISTER, RESERVE, READ KEYS / FULL STATUS, RELEASE, CLEAR.
    let pr_out = |sa: u8, ty: u8, key: u64, sakey: u64, flags: u8| {
        let mut p = vec![0u8; 24];
        p[0..8].copy_from_slice(&key.to_be_bytes());
        p[8..16].copy_from_slice(&sakey.to_be_bytes());
        p[20] = flags;
        (vec![0x5f, sa, ty, 0, 0, 0, 0, 0, 24, 0], p)
    };
    for (sa, ty, key, sakey, flags) in [(0u8, 0u8, 0u64, 0xabcu64, 1u8), (1, 0x03, 0xabc, 0, 0), (2, 0x03, 0xabc, 0, 0), (6, 0, 0, 0xabd, 0), (1, 0x05, 0xabd, 0, 0), (4, 0x05, 0xabd, 0xabd, 0), (3, 0, 0xabd, 0, 0)] {
        let (cdb, p) = pr_out(sa, ty, key, sakey, flags);
        c(&cdb, &p, 0);
    }
    for sa in 0..4u8 {
        c(&[0x5e, sa, 0, 0, 0, 0, 0, 1, 0, 0], &[], 256);
    }
    c(&[0x16, 0, 0, 0, 0, 0], &[], 0);
    c(&[0x17, 0, 0, 0, 0, 0], &[], 0);
    // EXTENDED COPY(LID1) within the LUN, naming it by its NAA designator (VPD 0x83).
    if let Some(naa) = naa_designator(&vpd83) {
        let mut cscd = vec![0xe4, 0, 0, 0, 0x01, 0x03, 0, naa.len() as u8];
        cscd.extend_from_slice(&naa);
        cscd.resize(28, 0);
        cscd.extend_from_slice(&[0, 0, 0x02, 0x00]); // disk block length 512
        let mut seg = vec![0x02, 0, 0, 0x18, 0, 0, 0, 0, 0, 0, 0, 8];
        seg.extend_from_slice(&8u64.to_be_bytes());
        seg.extend_from_slice(&200u64.to_be_bytes());
        let mut l = vec![7, 0];
        l.extend_from_slice(&(cscd.len() as u16).to_be_bytes());
        l.extend_from_slice(&[0; 4]);
        l.extend_from_slice(&(seg.len() as u32).to_be_bytes());
        l.extend_from_slice(&[0; 4]);
        l.extend_from_slice(&cscd);
        l.extend_from_slice(&seg);
        c(&[0x83, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, l.len() as u8, 0, 0], &l, 0);
        c(&[0x84, 0x00, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[], 256);
    }
    c(&[0x84, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[], 256);
    c(&[0x37, 0, 0x18, 0, 0, 0, 0, 0, 4, 0], &[], 4);
    c(&[0x1b, 0, 0, 0, 1, 0], &[], 0);
    c(&[0x1e, 0, 0, 0, 0, 0], &[], 0);
    c(&[0x03, 0, 0, 0, 18, 0], &[], 18);
}

/// The first NAA designator (logical unit association) of a VPD 0x83 page.
fn naa_designator(p: &[u8]) -> Option<Vec<u8>> {
    let mut i = 4;
    while i + 4 <= p.len() {
        let len = p[i + 3] as usize;
        let d = p.get(i + 4..i + 4 + len)?;
        if p[i + 1] & 0x3f == 0x03 {
            return Some(d.to_vec());
        }
        i += 4 + len;
    }
    None
}

#[test]
#[ignore = "writes fuzz/seeds/ from real sessions; run by hand (fuzz/README.md)"]
fn record_seeds() {
    let t = common::Target::start(&["-m", "0x1"]);
    let (iport, nport) = (common::free_port(), common::free_port());
    rpc(&t, "bdev_malloc_create", json!({"name": "Malloc0", "num_blocks": 8192, "block_size": 512}));
    rpc(&t, "iscsi_create_portal_group", json!({"tag": 1, "portals": [{"host": "127.0.0.1", "port": iport.to_string()}]}));
    rpc(&t, "iscsi_create_initiator_group", json!({"tag": 1, "initiators": ["ANY"], "netmasks": ["127.0.0.1/32"]}));
    rpc(&t, "iscsi_create_auth_group", json!({"tag": 1, "secrets": [{"user": entries::CHAP_USER, "secret": entries::CHAP_SECRET, "muser": entries::CHAP_MUSER, "msecret": entries::CHAP_MSECRET}]}));
    for (name, chap) in [("open", json!({})), ("chap", json!({"require_chap": true, "chap_group": 1})), ("mutual", json!({"require_chap": true, "mutual_chap": true, "chap_group": 1}))] {
        let mut p = json!({"name": name, "alias_name": name, "luns": [{"bdev_name": "Malloc0", "lun_id": 0}], "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 1}], "queue_depth": 32});
        for (k, v) in chap.as_object().unwrap() {
            p[k] = v.clone();
        }
        rpc(&t, "iscsi_create_target_node", p);
    }
    rpc(&t, "nvmf_create_transport", json!({"trtype": "TCP", "in_capsule_data_size": 8192}));
    rpc(&t, "nvmf_create_subsystem", json!({"nqn": "nqn.2016-06.io.spdk:cnode1", "serial_number": "SN1", "allow_any_host": true}));
    rpc(&t, "nvmf_subsystem_add_ns", json!({"nqn": "nqn.2016-06.io.spdk:cnode1", "namespace": {"bdev_name": "Malloc0"}}));
    rpc(&t, "nvmf_subsystem_add_listener", json!({"nqn": "nqn.2016-06.io.spdk:cnode1", "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": nport.to_string()}}));
    for m in ["bdev_get_bdevs", "iscsi_get_target_nodes", "nvmf_get_subsystems", "save_config", "rpc_get_methods", "iscsi_get_options"] {
        rpc(&t, m, json!({}));
    }
    for s in ["bdev", "iscsi", "nvmf"] {
        rpc(&t, "framework_get_config", json!({"name": s}));
    }

    // iSCSI: each login variant, then a session of commands with and without digests.
    let rec = Recorder::start(iport);
    let iqn = |n: &str| format!("{}{n}", entries::NODE_PREFIX);
    let variants: Vec<(&str, Option<String>, bool, bool, (bool, bool))> = vec![
        ("iqn.fuzz:plain", Some(iqn("open")), false, false, (false, false)),
        ("iqn.fuzz:digests", Some(iqn("open")), false, false, (true, true)),
        ("iqn.fuzz:chap", Some(iqn("chap")), true, false, (false, false)),
        ("iqn.fuzz:mutual", Some(iqn("mutual")), true, true, (true, false)),
        ("iqn.fuzz:disc", None, false, false, (false, false)),
    ];
    for (ini, target, chap, mutual, dg) in &variants {
        let mut o = LoginOptions::new(ini, target.as_deref());
        if *chap {
            o.chap = Some((entries::CHAP_USER.into(), entries::CHAP_SECRET.into()));
        }
        if *mutual {
            o.mutual = Some((entries::CHAP_MUSER.into(), entries::CHAP_MSECRET.into()));
        }
        (o.header_digest, o.data_digest) = *dg;
        let mut s = Session::connect("127.0.0.1", rec.port, &o, 8).expect("login");
        if target.is_none() {
            let _ = s.send_targets("All");
        } else {
            let _ = s.ping(b"fuzz", Duration::from_secs(5));
            if !*chap || *mutual {
                scsi_session(&mut s);
            }
        }
        let _ = s.logout();
        for stream in rec.take() {
            iscsi_stream_seeds(&stream, *dg, if target.is_none() { 0 } else { 1 });
        }
    }

    // NVMe/TCP: admin and I/O commands, reservations, features, logs; with and without digests.
    let nrec = Recorder::start(nport);
    for dg in [(false, false), (true, true)] {
        let mut o = HostOpts::new(format!("127.0.0.1:{}", nrec.port).parse().unwrap(), "nqn.2016-06.io.spdk:cnode1");
        (o.hdgst, o.ddgst) = dg;
        o.timeout = Duration::from_secs(10);
        let mut c = Controller::connect(&o).expect("nvme connect");
        let _ = c.namespaces();
        let _ = c.namespace(1);
        let _ = c.set_num_queues(1);
        let _ = c.admin.get_log_page(0x02, 512, 0);
        let _ = c.admin.get_log_page(0x80, 64, 0);
        let _ = c.admin.set_features(0x82, 0);
        let _ = c.admin.get_features(0x83, 0, 0);
        let _ = c.admin.set_features(0x83, 1);
        let _ = c.admin.keep_alive();
        let mut q = c.io_queue(1, 16).expect("io queue");
        let data = vec![0x5au8; 4096];
        let _ = q.sync(rw_sqe(true, 1, 0, 8), Some(&data), 0);
        let _ = q.sync(rw_sqe(false, 1, 0, 8), None, 4096);
        let mut s = rw_sqe(false, 1, 0, 8);
        s.set_opcode(0x05); // compare
        let _ = q.sync(s, Some(&data), 0);
        let mut s = rw_sqe(false, 1, 64, 8);
        s.set_opcode(0x08); // write zeroes
        let _ = q.sync(s, None, 0);
        let mut s = Sqe::default();
        s.set_opcode(0x00).set_nsid(1); // flush
        let _ = q.sync(s, None, 0);
        let mut ranges = vec![0u8; 32];
        ranges[4..8].copy_from_slice(&8u32.to_le_bytes());
        ranges[8..16].copy_from_slice(&128u64.to_le_bytes());
        ranges[20..24].copy_from_slice(&16u32.to_le_bytes());
        ranges[24..32].copy_from_slice(&256u64.to_le_bytes());
        let mut s = Sqe::default();
        s.set_opcode(0x09).set_nsid(1).set_cdw(10, 1).set_cdw(11, 4);
        let _ = q.sync(s, Some(&ranges), 0);
        let key = |a: u64, b: u64| [a.to_le_bytes(), b.to_le_bytes()].concat();
        for (opc, cdw10, d) in [(0x0du8, 3u32 << 30, key(0, 0x1111)), (0x11, 1 << 8, key(0x1111, 0)), (0x11, (3 << 8) | 1, key(0x1111, 0x2222)), (0x15, 1 << 8, key(0x1111, 0)), (0x0d, 2, key(0x1111, 0x3333)), (0x15, 1, key(0x3333, 0))] {
            let mut s = Sqe::default();
            s.set_opcode(opc).set_nsid(1).set_cdw(10, cdw10);
            let _ = q.sync(s, Some(&d), 0);
            let mut r = Sqe::default();
            r.set_opcode(0x0e).set_nsid(1).set_cdw(10, 1023).set_cdw(11, 1);
            let _ = q.sync(r, None, 4096);
        }
        drop(q);
        let _ = c.shutdown();
        for stream in nrec.take() {
            nvmf_stream_seeds(&stream, dg);
        }
    }
    // Discovery controller: its log page.
    let mut o = HostOpts::new(format!("127.0.0.1:{}", nrec.port).parse().unwrap(), "nqn.2014-08.org.nvmexpress.discovery");
    o.timeout = Duration::from_secs(10);
    if let Ok(mut c) = Controller::connect(&o) {
        let _ = c.admin.get_log_page(0x70, 4096, 0);
    }
    for stream in nrec.take() {
        nvmf_stream_seeds(&stream, (false, false));
    }
    // The running config as a config file.
    if let Ok(cfg) = t.try_rpc("save_config", None) {
        seed("rpc_params", &serde_json::to_vec(&cfg).unwrap());
    }
    t.stop();
}

#[test]
#[ignore = "writes fuzz/seeds/; run by hand (fuzz/README.md)"]
fn generate_seeds() {
    // rpc_params: every method with empty params and with a wrong-typed field; shipped configs.
    for (i, m) in entries::rpc_methods().iter().enumerate() {
        seed("rpc_params", &serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": i, "method": m, "params": {}})).unwrap());
        seed("rpc_params", &serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": i, "method": m, "params": {"name": 1, "nqn": [], "tag": "x"}})).unwrap());
        seed("rpc_params", &[&[(i % 0x20) as u8][..], b"{\"name\":\"x\",\"tag\":1,\"nqn\":\"nqn.a\"}"].concat());
    }
    for dir in ["configs"] {
        for p in files(&Path::new(env!("CARGO_MANIFEST_DIR")).join(dir)) {
            seed("rpc_params", &std::fs::read(p).unwrap());
        }
    }
    // iscsi_login: hand-made negotiations (stages, continuation, every operational key).
    let login = |flags: u8, text: &str| {
        let mut b = Bhs::new(op::LOGIN_REQ, flags);
        b.0[8] = 0x80;
        b.set_immediate();
        let mut out = Vec::new();
        pdu::encode(&mut out, &b, &[], text.replace(' ', "\0").as_bytes(), false, false);
        out
    };
    let ini = "InitiatorName=iqn.fuzz:hand";
    let tgt = |n: &str| format!("TargetName={}{n}", entries::NODE_PREFIX);
    let ops = "HeaderDigest=CRC32C,None DataDigest=None MaxRecvDataSegmentLength=65536 MaxBurstLength=262144 FirstBurstLength=65536 InitialR2T=No ImmediateData=Yes MaxConnections=1 MaxOutstandingR2T=1 DefaultTime2Wait=2 DefaultTime2Retain=0 DataPDUInOrder=Yes DataSequenceInOrder=Yes ErrorRecoveryLevel=0 IFMarker=No OFMarker=No OFMarkInt=1 X-com.fuzz=1 ";
    let chap_open = |n: &str| [login(0x81, &format!("{ini} {} SessionType=Normal AuthMethod=CHAP,None ", tgt(n))), login(0x00, "CHAP_A=5 ")].concat();
    let chap_done = [login(0x81, &format!("CHAP_N={} CHAP_R=compute ", entries::CHAP_USER)), login(0x87, ops)].concat();
    let mutual_done = [login(0x81, &format!("CHAP_N={} CHAP_R=compute CHAP_I=7 CHAP_C=0x0102030405060708090a0b0c0d0e0f10 ", entries::CHAP_USER)), login(0x87, ops)].concat();
    for (sel, s) in [
        (0u8, [login(0x81, &format!("{ini} {} AuthMethod=None ", tgt("open"))), login(0x87, ops)].concat()),
        (0, login(0x87, &format!("{ini} {} {ops}", tgt("open")))),
        // Straight to the operational stage of a node that requires CHAP: refused (02/01).
        (1, login(0x87, &format!("{ini} {} {ops}", tgt("chap")))),
        (2, login(0x85, &format!("{ini} SessionType=Discovery {ops}"))),
        (0, [login(0x81, &format!("{ini} SessionType=Discovery AuthMethod=None ")), login(0x87, "MaxRecvDataSegmentLength=8192 ")].concat()),
        (1, [chap_open("chap"), chap_done.clone()].concat()),
        (2, [chap_open("mutual"), mutual_done.clone()].concat()),
        (1, [login(0x81, &format!("{ini} SessionType=Discovery AuthMethod=CHAP ")), login(0x00, "CHAP_A=5 "), chap_done.clone()].concat()),
        (0, [login(0x40, &format!("{ini} {}", tgt("open"))), login(0x81, " AuthMethod=None "), login(0x87, ops)].concat()),
        (0, [login(0x81, &format!("{ini} {} AuthMethod=None ", tgt("nochap"))), login(0x84, ops), login(0x87, "")].concat()),
    ] {
        seed("iscsi_login", &[&[sel][..], &s].concat());
        seed("iscsi_pdu", &[&[0u8][..], &s].concat());
    }
    // scsi_cdb: parameter lists no session sends (REGISTER AND MOVE with a TransportID, SPEC_I_PT).
    let tid = |name: &str| {
        let mut b = format!("{name},i,0x800000000001").into_bytes();
        b.push(0);
        while b.len() % 4 != 0 {
            b.push(0);
        }
        let mut t = vec![0x45, 0];
        t.extend_from_slice(&(b.len() as u16).to_be_bytes());
        t.extend_from_slice(&b);
        t
    };
    let mut mv = vec![0u8; 24];
    mv[0..8].copy_from_slice(&0xabcu64.to_be_bytes());
    mv[8..16].copy_from_slice(&0xdefu64.to_be_bytes());
    mv[18..20].copy_from_slice(&1u16.to_be_bytes());
    let t1 = tid("iqn.fuzz:other");
    mv[20..24].copy_from_slice(&(t1.len() as u32).to_be_bytes());
    mv.extend_from_slice(&t1);
    seed("scsi_cdb", &[&[10u8, 0x5f, 0x07, 0x03, 0, 0, 0, 0, 0, mv.len() as u8, 0][..], &mv].concat());
    let mut sp = vec![0u8; 24];
    sp[8..16].copy_from_slice(&0x77u64.to_be_bytes());
    sp[20] = 0x08; // SPEC_I_PT
    let mut tids = tid("iqn.fuzz:a");
    tids.extend_from_slice(&tid("iqn.fuzz:b"));
    sp.extend_from_slice(&(tids.len() as u32).to_be_bytes());
    sp.extend_from_slice(&tids);
    seed("scsi_cdb", &[&[10u8, 0x5f, 0x00, 0, 0, 0, 0, 0, 0, sp.len() as u8, 0][..], &sp].concat());
    let mut nv = vec![0x00, 0, 0, 0];
    nv[2..4].copy_from_slice(&(16 + 15u16).to_be_bytes());
    nv.extend_from_slice(&[7u8; 16]);
    nv.extend_from_slice(b"nqn.fuzz.host\0\0");
    seed("scsi_cdb", &[&[0u8][..], &nv].concat());
    // nvme_cmd: Connect data, Set Features of the reservation features, a large NUMD.
    let cd = palisade::nvmf::fabrics::ConnectData { hostid: [1; 16], cntlid: 0xffff, subnqn: "nqn.2016-06.io.spdk:cnode1".into(), hostnqn: "nqn.2014-08.org.nvmexpress:uuid:fuzz".into() };
    let sqe = palisade::nvmf::fabrics::build_connect_sqe(1, 0, 31, 0, true);
    seed("nvme_cmd", &[&sqe.0[..], &cd.encode()[..]].concat());
    for (opc, fid, v) in [(0x09u8, 0x82u32, 0x0eu32), (0x09, 0x83, 1), (0x0a, 0x82, 0), (0x0a, 0x83, 0)] {
        let mut s = Sqe::default();
        s.set_opcode(opc).set_cdw(10, fid).set_cdw(11, v);
        seed("nvme_cmd", &s.0);
    }
    nvme_auth_seeds();
}

/// nvme_auth: a host's side of transactions (every message it sends, with the receives
/// between), a failure, and each message alone.
fn nvme_auth_seeds() {
    use palisade::nvme::auth::{msg, Failure, Negotiate, Success2};
    use palisade::nvmf::auth::host::{HostAuthConfig, HostTransaction};
    use palisade::nvmf::auth::{DhGroup, Secret};
    use palisade::nvmf::auth::target::{Concat, TargetAuth, TargetKeys};
    let rec = |op: u8, b: &[u8]| [&[op, b.len() as u8, (b.len() >> 8) as u8][..], b].concat();
    let key = Secret { transform: 0, key: vec![0x11; 32] };
    for (flags, group) in [(0u8, DhGroup::Null), (1, DhGroup::Ffdhe2048), (3, DhGroup::Null)] {
        let mut cfg = HostAuthConfig::new(key.clone(), (flags & 2 != 0).then(|| Secret { transform: 0, key: vec![0x22; 32] }));
        cfg.groups = vec![group];
        let keys = TargetKeys { host: key.clone(), ctrl: cfg.ctrl_secret.clone(), digests: cfg.digests.clone(), groups: vec![group], concat: Concat::Off };
        let now = std::time::Instant::now();
        let mut t = TargetAuth::new(keys, "nqn.fuzz.host", "nqn.fuzz.sub", now);
        let mut h = HostTransaction::new(&cfg, "nqn.fuzz.host", "nqn.fuzz.sub", 1, 0);
        let neg = h.negotiate();
        t.on_send(&neg, now);
        let reply = h.reply(&t.on_receive(now)).unwrap();
        let mut input = vec![flags];
        input.extend(rec(0, &neg));
        input.extend(rec(1, &[]));
        input.extend(rec(0, &reply));
        input.extend(rec(1, &[]));
        input.extend(rec(0, &Success2 { t_id: 1 }.encode()));
        seed("nvme_auth", &input);
        seed("nvme_auth", &[&[flags][..], &rec(0, &reply)].concat());
    }
    let f = Failure { id: msg::FAILURE2, t_id: 1, reason: 1, explanation: 1 }.encode();
    let n = Negotiate { t_id: 9, sc_c: 1, hashes: vec![1, 2, 3, 9], dhgroups: vec![0, 1, 2, 3, 4, 5, 7] }.encode();
    seed("nvme_auth", &[&[0u8][..], &rec(0, &n), &rec(1, &[]), &rec(0, &f), &rec(1, &[])].concat());
}

/// Inputs the fuzz targets' invariants caught on code that had issue 11 findings 1 (CHAP bypass)
/// and 2 (Reservation Report sized by NUMD), kept in fuzz/findings/<target>-<what>: they must
/// not reproduce again.
#[test]
fn findings_fixed() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/findings");
    let mut failed = Vec::new();
    for p in files(&dir) {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        let (_, f) = entries::TARGETS.iter().find(|(t, _)| name.split('-').next() == Some(*t)).expect("finding named after its target");
        let data = std::fs::read(&p).unwrap();
        if std::panic::catch_unwind(|| f(&data)).is_err() {
            failed.push(name);
        }
    }
    assert!(failed.is_empty(), "findings still reproduce: {failed:?}");
}
