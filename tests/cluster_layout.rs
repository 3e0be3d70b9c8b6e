//! A layout volume whose metadata lives in etcd (`metadata_cluster`), served by two `palisade
//! serve` processes over one shared uring data file: one layout state, any node serves layout_*
//! calls, every node's guard enforces the grants, recalls reach subscribers on every node, racing
//! allocations never overlap, a node killed during a stream of commits loses nothing acknowledged,
//! and operations resume after etcd restarts. Needs `etcd` (scripts/setup.sh); skipped outside CI
//! when it is missing.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::{RawConn, Target, BIN};
use palisade::nvmf::host::{rw_sqe, Controller, HostOpts, Queue};
use serde_json::{json, Value};

const BS: u64 = 4096;
const BLOCKS: u64 = 2048;
const UUID: &str = "7c1d2e3f-4a5b-4c6d-8e7f-90a1b2c3d4e5";
const NQN: &str = "nqn.2016-06.io.spdk:clayout";
const C1_NQN: &str = "nqn.2026-01.test:cluster-client-1";
const STALE: u8 = 0xee;

fn node(etcd: &Etcd, id: &str) -> Target {
    let url = etcd.url();
    let t = Target::start(&["-m", "0x1", "--cluster", &url, "--node-id", id, "--lease-ttl", "2"]);
    wait_writable(&t);
    t
}

/// Until the node serves clustered volumes (registered, watches caught up).
fn wait_writable(t: &Target) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = t.rpc("cluster_get_status", json!(null));
        if s["health"]["writable"] == json!(true) {
            return;
        }
        assert!(Instant::now() < deadline, "node not writable: {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The data bdev, an NVMe/TCP export of it, and the layout volume (created by the first node,
/// opened by the others). Returns the NVMe/TCP port.
fn setup(t: &Target, data: &str, guard: &str) -> u16 {
    t.rpc("bdev_uring_create", json!({"name": "d0", "filename": data, "block_size": BS, "uuid": UUID}));
    t.rpc("nvmf_create_transport", json!({"trtype": "TCP"}));
    let port = t.export_nvmf(NQN, "SN-CLAYOUT", "d0");
    // A node may briefly fail closed (its lease or a watch catching up on a loaded machine).
    let r = rpc_retry(
        t,
        "layout_volume_create",
        json!({"name": "lv0", "bdev_name": "d0", "metadata_cluster": true, "guard": guard, "recall_timeout_ms": 30000}),
        Duration::from_secs(20),
    );
    assert_eq!(r, json!("lv0"));
    port
}

fn nvme(port: u16, hostnqn: &str) -> (Controller, Queue) {
    let mut ho = HostOpts::new(format!("127.0.0.1:{port}").parse::<SocketAddr>().unwrap(), NQN);
    ho.hostnqn = hostnqn.into();
    let c = Controller::connect(&ho).unwrap();
    let q = c.io_queue(1, 32).unwrap();
    (c, q)
}

fn nvme_write(q: &mut Queue, lba: u64, data: &[u8]) -> bool {
    let (cqe, _) = q.sync(rw_sqe(true, 1, lba, (data.len() as u64 / BS) as u32), Some(data), 0).unwrap();
    cqe.status.is_ok()
}

fn nvme_read(q: &mut Queue, lba: u64, n: u32) -> Vec<u8> {
    let (cqe, d) = q.sync(rw_sqe(false, 1, lba, n), None, n as usize * BS as usize).unwrap();
    assert!(cqe.status.is_ok(), "NVMe read at {lba}: {:?}", cqe.status);
    d
}

fn fsck_cluster(etcd: &Etcd) -> String {
    let out = std::process::Command::new(BIN).args(["fsck", "--cluster", &etcd.url(), "--bdev-uuid", UUID]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("consistent"), "fsck of the etcd state: {text}");
    text
}

/// Retry a call that may meet a transient cluster condition (a node catching up, etcd back).
fn rpc_retry(t: &Target, method: &str, params: Value, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        match t.try_rpc(method, Some(params.clone())) {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("{method} {params}: {e:?}"),
        }
    }
}

fn extents(g: &Value) -> Vec<(u64, u64)> {
    g["extents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["state"] == "INVALID_DATA")
        .map(|e| (e["volume_offset"].as_u64().unwrap() / BS, e["length"].as_u64().unwrap() / BS))
        .collect()
}

#[test]
fn two_nodes_one_layout_state() {
    let Some(etcd) = Etcd::start() else { return };
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let data_path = dir.path().join("data.img");
    std::fs::write(&data_path, vec![STALE; (BLOCKS * BS) as usize]).unwrap();
    let data = data_path.to_str().unwrap();

    let a = node(&etcd, "a");
    let b = node(&etcd, "b");
    let port_a = setup(&a, data, "enforce");
    let port_b = setup(&b, data, "enforce");
    // The data volume became clustered: a client fence covers both nodes.
    let st = b.rpc("cluster_get_status", json!(null));
    assert!(st["volumes"].as_array().unwrap().iter().any(|v| v["uuid"] == UUID && v["clustered"] == true), "{st}");

    // Subscribers on A hear recalls decided on B.
    let mut mds_a = RawConn::connect(&a.sock);
    assert_eq!(mds_a.call("layout_recall_subscribe", json!({})).0["result"], json!(true));

    // 1. layout_get through A; the client writes through B's NVMe/TCP path.
    a.rpc("client_register", json!({"volume": "lv0", "client": "C1", "pr_key": 0xc1, "identities": [C1_NQN]}));
    a.rpc("layout_file_create", json!({"volume": "lv0", "file": 1}));
    a.rpc("layout_file_create", json!({"volume": "lv0", "file": 2}));
    let g = a.rpc("layout_get", json!({"volume": "lv0", "file": 1, "client": "C1", "offset": 0, "length": 4 * BS, "iomode": "rw"}));
    let gid = g["grant"].as_u64().unwrap();
    assert_eq!(g["extents"][0]["state"], "INVALID_DATA");
    let l = g["extents"][0]["volume_offset"].as_u64().unwrap() / BS;
    // B's view (a read syncs with etcd) shows A's grant.
    let map_b = b.rpc("layout_file_map", json!({"volume": "lv0", "file": 1, "offset": 0, "length": 4 * BS}));
    assert_eq!(map_b["pending"][0]["grant"], gid, "B sees A's grant: {map_b}");
    let (_c1, mut q) = nvme(port_b, C1_NQN);
    let payload = vec![0xc1u8; 2 * BS as usize];
    assert!(nvme_write(&mut q, l, &payload), "the grant holder's write through B into its grant");
    let outside = if l >= 8 { 0 } else { BLOCKS - 1 };
    assert!(!nvme_write(&mut q, outside, &vec![0xc2u8; BS as usize]), "B's guard refuses a write outside the grant");
    // Unwritten blocks of the grant read as zeros through B, never stale.
    let r = nvme_read(&mut q, l, 4);
    assert_eq!(&r[..2 * BS as usize], &payload[..]);
    assert!(r[2 * BS as usize..].iter().all(|&x| x == 0), "unwritten INVALID_DATA reads as zeros");

    // The same client writes a third block through A (no flush): only A's data path knows.
    let (_c1a, mut qa) = nvme(port_a, C1_NQN);
    assert!(nvme_write(&mut qa, l + 2, &vec![0xc1u8; BS as usize]), "the grant holder's write through A");

    // 2. Commit through B (which first has every node journal the blocks written through it);
    // the map is the same on both nodes.
    let c = b.rpc("layout_commit", json!({"volume": "lv0", "grant": gid, "ranges": [{"offset": 0, "length": 4 * BS}], "new_size": 4 * BS}));
    assert_eq!((c["committed_bytes"].as_u64(), c["unwritten_bytes"].as_u64()), (Some(3 * BS), Some(BS)), "{c}");
    let ma = a.rpc("layout_file_map", json!({"volume": "lv0", "file": 1}));
    let mb = b.rpc("layout_file_map", json!({"volume": "lv0", "file": 1}));
    assert_eq!(ma, mb);
    assert_eq!(ma["extents"][0]["state"], "READ_WRITE_DATA");
    assert_eq!(ma["extents"][0]["volume_offset"].as_u64().unwrap(), l * BS);

    // 3. A conflicting layout on B recalls A's... C1's grant: the subscriber on A is told.
    b.rpc("client_register", json!({"volume": "lv0", "client": "C3", "pr_key": 0xc3}));
    let e = b.try_rpc("layout_get", Some(json!({"volume": "lv0", "file": 1, "client": "C3", "offset": 0, "length": 4 * BS, "iomode": "rw"})));
    assert_eq!(e.expect_err("conflict waits for the recall").0, -libc::EAGAIN as i64);
    let note = mds_a.recall("conflict", Duration::from_secs(5));
    assert_eq!(note["grant"], gid);
    a.rpc("layout_return", json!({"volume": "lv0", "grant": gid}));
    let g3 = rpc_retry(&b, "layout_get", json!({"volume": "lv0", "file": 1, "client": "C3", "offset": 0, "length": 4 * BS, "iomode": "rw"}), Duration::from_secs(5));
    b.rpc("layout_return", json!({"volume": "lv0", "grant": g3["grant"]}));

    // 4. Both nodes hand out layouts from the same free space at once: never the same blocks.
    a.rpc("client_register", json!({"volume": "lv0", "client": "RA", "pr_key": 0xa0}));
    b.rpc("client_register", json!({"volume": "lv0", "client": "RB", "pr_key": 0xb0}));
    for f in 100..140 {
        a.rpc("layout_file_create", json!({"volume": "lv0", "file": f}));
    }
    let race = |t: &Target, client: &'static str, files: std::ops::Range<u64>| {
        let sock = t.sock_str().to_string();
        std::thread::spawn(move || {
            let mut got = Vec::new();
            for f in files {
                let p = json!({"volume": "lv0", "file": f, "client": client, "offset": 0, "length": 8 * BS, "iomode": "rw"});
                let r = palisade::cli::rpc_client::call(&sock, "layout_get", Some(p), Duration::from_secs(30)).unwrap();
                assert!(r.get("error").is_none(), "{client} layout_get: {r}");
                got.extend(extents(&r["result"]));
            }
            got
        })
    };
    let ta = race(&a, "RA", 100..120);
    let tb = race(&b, "RB", 120..140);
    let mut all = ta.join().unwrap();
    all.extend(tb.join().unwrap());
    assert_eq!(all.iter().map(|e| e.1).sum::<u64>(), 40 * 8, "every layout got its blocks");
    all.sort();
    for w in all.windows(2) {
        assert!(w[0].0 + w[0].1 <= w[1].0, "blocks handed out twice: {:?} and {:?}", w[0], w[1]);
    }
    // Each node's view follows the other's allocations through its etcd watch: they agree once
    // the watches have delivered (a loaded machine can take a moment).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let la = a.rpc("layout_volume_list", json!({"name": "lv0"}));
        let lb = b.rpc("layout_volume_list", json!({"name": "lv0"}));
        if la[0]["free_blocks"] == lb[0]["free_blocks"] {
            break;
        }
        assert!(Instant::now() < deadline, "one free space: {la} {lb}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // 5. A fence through B stops the client on A too: its grant is revoked (A's subscriber is
    // told), its writes through A are refused.
    let g5 = a.rpc("layout_get", json!({"volume": "lv0", "file": 2, "client": "C1", "offset": 0, "length": 2 * BS, "iomode": "rw"}));
    let l5 = extents(&g5)[0].0;
    assert!(nvme_write(&mut qa, l5, &vec![0xc5u8; BS as usize]), "inside the new grant, through A");
    let f = b.rpc("client_fence", json!({"volume": "lv0", "client": "C1"}));
    assert_eq!(f["revoked_grants"], json!([g5["grant"]]), "{f}");
    let note = mds_a.recall("fence", Duration::from_secs(5));
    assert_eq!(note["grant"], g5["grant"]);
    assert!(!nvme_write(&mut qa, l5, &vec![0xc6u8; BS as usize]), "a fenced client's write through A");
    let cl = a.rpc("client_list", json!({"volume": "lv0"}));
    assert!(cl.as_array().unwrap().iter().any(|c| c["client"] == "C1" && c["fenced"] == true), "{cl}");
    fsck_cluster(&etcd);
    // save_config records where the metadata lives.
    let cfg = b.rpc("save_config", json!(null)).to_string();
    assert!(cfg.contains("\"metadata_cluster\":true"), "{cfg}");
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
}

#[test]
fn node_killed_and_etcd_restarted_during_commits() {
    let Some(mut etcd) = Etcd::start() else { return };
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let data_path = dir.path().join("data.img");
    std::fs::write(&data_path, vec![0u8; (BLOCKS * BS) as usize]).unwrap();
    let data = data_path.to_str().unwrap().to_string();

    let mut a = node(&etcd, "a");
    let b = node(&etcd, "b");
    // guard off: commits trust the client, so the stream needs no data path.
    setup(&a, &data, "off");
    setup(&b, &data, "off");
    a.rpc("client_register", json!({"volume": "lv0", "client": "W", "pr_key": 0x77}));
    a.rpc("layout_file_create", json!({"volume": "lv0", "file": 7}));

    // A stream of get+commit+return alternating between the nodes; A is SIGKILLed at some point
    // of it (possibly in the middle of a call), the stream goes on through B.
    let mut acked: Vec<(u64, u64)> = Vec::new(); // (file block, volume block)
    let (sock_a, sock_b) = (a.sock_str().to_string(), b.sock_str().to_string());
    let call = |sock: &str, m: &str, p: Value| palisade::cli::rpc_client::call(sock, m, Some(p), Duration::from_secs(30));
    let pid_a = a.pid() as i32;
    let mut killer = None;
    let mut a_alive = true;
    for i in 0..120u64 {
        if i == 60 {
            killer = Some(std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(7));
                unsafe { libc::kill(pid_a, libc::SIGKILL) };
            }));
        }
        let sock = if a_alive && i % 2 == 0 { sock_a.clone() } else { sock_b.clone() };
        let step = || -> Result<(u64, u64), String> {
            let g = call(&sock, "layout_get", json!({"volume": "lv0", "file": 7, "client": "W", "offset": i * BS, "length": BS, "iomode": "rw"}))?;
            let gid = g["result"]["grant"].as_u64().ok_or_else(|| format!("layout_get {i}: {g}"))?;
            let lba = g["result"]["extents"][0]["volume_offset"].as_u64().unwrap() / BS;
            let c = call(&sock, "layout_commit", json!({"volume": "lv0", "grant": gid, "ranges": [{"offset": i * BS, "length": BS}], "new_size": (i + 1) * BS}))?;
            if c["result"]["committed_bytes"] != BS {
                return Err(format!("commit {i}: {c}"));
            }
            let _ = call(&sock, "layout_return", json!({"volume": "lv0", "grant": gid}));
            Ok((gid, lba))
        };
        match step() {
            Ok((_, lba)) => acked.push((i, lba)),
            Err(e) if sock == sock_a && i >= 60 => {
                eprintln!("node a gone at {i}: {e}");
                a_alive = false;
            }
            Err(e) => panic!("stream through {sock}: {e}"),
        }
    }
    killer.unwrap().join().unwrap();
    assert!(a.signal_and_wait(0, Duration::from_secs(5)).is_some(), "node a was killed");
    assert!(acked.len() >= 100, "commits acknowledged: {}", acked.len());

    // Restart A (same node id: it waits for its old lease to expire) and open the same state.
    let a = node(&etcd, "a");
    setup(&a, &data, "off");
    let check = |t: &Target| {
        let m = t.rpc("layout_file_map", json!({"volume": "lv0", "file": 7, "offset": 0, "length": 120 * BS}));
        let ex = m["extents"].as_array().unwrap();
        for (fb, lba) in &acked {
            let e = ex
                .iter()
                .find(|e| e["file_offset"].as_u64().unwrap() <= fb * BS && fb * BS < e["file_offset"].as_u64().unwrap() + e["length"].as_u64().unwrap())
                .unwrap_or_else(|| panic!("file block {fb} missing: {m}"));
            assert_eq!(e["state"], "READ_WRITE_DATA", "file block {fb}: {e}");
            assert_eq!(e["volume_offset"].as_u64().unwrap() + fb * BS - e["file_offset"].as_u64().unwrap(), lba * BS, "file block {fb}");
        }
        m
    };
    assert_eq!(check(&a), check(&b));
    fsck_cluster(&etcd);

    // etcd goes away: changes fail closed; it comes back: operations resume on both nodes.
    etcd.stop();
    let e = (1000..1100u64)
        .find_map(|f| b.try_rpc("layout_file_create", Some(json!({"volume": "lv0", "file": f}))).err())
        .expect("layout changes must fail while etcd is down");
    assert!([-libc::ENOTCONN as i64, -libc::EIO as i64].contains(&e.0), "fail closed with ENOTCONN/EIO: {e:?}");
    etcd.start_again();
    rpc_retry(&b, "layout_file_create", json!({"volume": "lv0", "file": 9}), Duration::from_secs(30));
    let g = rpc_retry(&a, "layout_get", json!({"volume": "lv0", "file": 9, "client": "W", "offset": 0, "length": BS, "iomode": "rw"}), Duration::from_secs(30));
    let c = b.rpc("layout_commit", json!({"volume": "lv0", "grant": g["grant"], "ranges": [{"offset": 0, "length": BS}], "new_size": BS}));
    assert_eq!(c["committed_bytes"], BS);
    b.rpc("layout_return", json!({"volume": "lv0", "grant": g["grant"]}));
    assert_eq!(check(&a), check(&b));
    fsck_cluster(&etcd);
    assert!(started.elapsed() < Duration::from_secs(120), "took {:?}", started.elapsed());
}
