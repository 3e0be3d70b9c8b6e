//! Persistent reservations over real iSCSI sessions against the built binary: the Linux pNFS
//! SCSI-layout sequence byte for byte (metadata server and client are two initiator names), a
//! re-login with a new ISID being a new nexus, APTPL across a restart (and its absence), and
//! PREEMPT AND ABORT fencing a client that keeps QD32 writes in flight.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, Target};
use palisade::iscsi::initiator::{Completion, LoginOptions, Session};
use serde_json::json;

const IQN: &str = "iqn.2016-06.io.spdk:pnfs";
const MDS: &str = "iqn.2026-01.org.linux:mds";
const CLIENT: &str = "iqn.2026-01.org.linux:client";
/// NFSD_MDS_PR_KEY (fs/nfsd/blocklayout.c).
const MDS_KEY: u64 = 0x0100_0000_0000_0000;
const CLIENT_KEY: u64 = 0x0000_0000_0000_0042;
const T: Duration = Duration::from_secs(10);

const GOOD: u8 = 0x00;
const CHECK_CONDITION: u8 = 0x02;
const RESERVATION_CONFLICT: u8 = 0x18;
const TASK_ABORTED: u8 = 0x40;

/// A target exporting Malloc0 (`blocks` × 512 B, fixed uuid) as LUN 0 of `IQN` on `port`, with
/// its reservation state in `state_dir`.
fn start(port: u16, state_dir: &std::path::Path, blocks: u64, mask: &str) -> Target {
    let t = Target::start(&["-m", mask, "--state-dir", state_dir.to_str().unwrap()]);
    t.rpc(
        "bdev_malloc_create",
        json!({"name": "Malloc0", "num_blocks": blocks, "block_size": 512, "uuid": "6a1f3c2e-4b5d-4e6f-8a7b-9c0d1e2f3a4b"}),
    );
    t.rpc("iscsi_create_portal_group", json!({"tag": 1, "portals": [{"host": "127.0.0.1", "port": port.to_string()}]}));
    t.rpc("iscsi_create_initiator_group", json!({"tag": 1, "initiators": ["ANY"], "netmasks": ["127.0.0.1/32"]}));
    t.rpc(
        "iscsi_create_target_node",
        json!({"name": IQN, "alias_name": "pnfs", "luns": [{"bdev_name": "Malloc0", "lun_id": 0}],
            "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 1}], "queue_depth": 64}),
    );
    t
}

fn login_isid(port: u16, name: &str, isid: Option<[u8; 6]>, depth: usize) -> Session {
    let mut o = LoginOptions::new(name, Some(IQN));
    if let Some(i) = isid {
        o.isid = i;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match Session::connect("127.0.0.1", port, &o, depth) {
            Ok(s) => return s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("login as {name} failed: {e}"),
        }
    }
}

/// A fresh session whose POWER ON unit attention has been consumed (TEST UNIT READY). The
/// metadata server and the client keep one ISID across logins, as open-iscsi does per iface, so
/// that a re-login after a restart is the same I_T nexus.
fn login(port: u16, name: &str) -> Session {
    let isid = match name {
        MDS => Some([0x80, 0, 0, 0, 0, 1]),
        CLIENT => Some([0x80, 0, 0, 0, 0, 2]),
        _ => None,
    };
    let mut s = login_isid(port, name, isid, 32);
    clear_ua(&mut s);
    s
}

fn clear_ua(s: &mut Session) {
    for _ in 0..8 {
        let (c, _) = s.command(0, &[0u8; 6], &[], 0, T).unwrap();
        if c.status == GOOD {
            return;
        }
    }
    panic!("unit attentions never cleared");
}

fn sense_of(c: &Completion) -> (u8, u8, u8) {
    let s = &c.sense;
    (s.get(2).map(|k| k & 0x0f).unwrap_or(0), s.get(12).copied().unwrap_or(0), s.get(13).copied().unwrap_or(0))
}

/// PERSISTENT RESERVE OUT exactly as Linux `sd_pr_out_command` builds it: a 10-byte CDB with
/// the service action, the type (scope 0) and a 24-byte parameter list; byte 20 carries APTPL.
fn prout(s: &mut Session, sa: u8, rtype: u8, key: u64, sa_key: u64, aptpl: bool) -> Completion {
    let cdb = [0x5f, sa, rtype, 0, 0, 0, 0, 0, 24, 0];
    let mut data = [0u8; 24];
    data[0..8].copy_from_slice(&key.to_be_bytes());
    data[8..16].copy_from_slice(&sa_key.to_be_bytes());
    data[20] = if aptpl { 0x01 } else { 0 };
    s.command(0, &cdb, &data, 0, T).unwrap().0
}

fn read_keys(s: &mut Session) -> Vec<u64> {
    let (c, d) = s.command(0, &[0x5e, 0x00, 0, 0, 0, 0, 0, 0x10, 0x00, 0], &[], 4096, T).unwrap();
    assert_eq!(c.status, GOOD, "READ KEYS: {c:?}");
    let n = u32::from_be_bytes(d[4..8].try_into().unwrap()) as usize / 8;
    (0..n).map(|i| u64::from_be_bytes(d[8 + 8 * i..16 + 8 * i].try_into().unwrap())).collect()
}

/// READ RESERVATION: (key, type) of the reservation, if any.
fn read_reservation(s: &mut Session) -> Option<(u64, u8)> {
    let (c, d) = s.command(0, &[0x5e, 0x01, 0, 0, 0, 0, 0, 0x00, 0x40, 0], &[], 64, T).unwrap();
    assert_eq!(c.status, GOOD, "READ RESERVATION: {c:?}");
    if u32::from_be_bytes(d[4..8].try_into().unwrap()) == 0 {
        return None;
    }
    Some((u64::from_be_bytes(d[8..16].try_into().unwrap()), d[21] & 0x0f))
}

fn rw16(op: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn write(s: &mut Session, lba: u64, fill: u8) -> Completion {
    s.command(0, &rw16(0x8a, lba, 1), &[fill; 512], 0, T).unwrap().0
}

const REGISTER: u8 = 0x00;
const RESERVE: u8 = 0x01;
const PREEMPT_AND_ABORT: u8 = 0x05;
const REGISTER_AND_IGNORE: u8 = 0x06;
const EA_RO: u8 = 0x06;

/// The metadata server registers and reserves as knfsd does (nfsd4_block_get_device_info_scsi).
fn mds_setup(mds: &mut Session) {
    let c = prout(mds, REGISTER_AND_IGNORE, 0, 0, MDS_KEY, true);
    assert_eq!(c.status, GOOD, "MDS REGISTER AND IGNORE EXISTING KEY, APTPL=1: {c:?}");
    let c = prout(mds, RESERVE, EA_RO, MDS_KEY, 0, false);
    assert_eq!(c.status, GOOD, "MDS RESERVE type 6h: {c:?}");
    assert_eq!(read_reservation(mds), Some((MDS_KEY, EA_RO)));
}

#[test]
fn linux_pnfs_sequence_fences_the_client() {
    let port = free_port();
    let state = tempfile::tempdir().unwrap();
    let t = start(port, state.path(), 65536, "0x1");
    let mut mds = login(port, MDS);
    let mut client = login(port, CLIENT);
    mds_setup(&mut mds);

    // Exclusive Access - Registrants Only: an unregistered client may neither write nor read.
    assert_eq!(write(&mut client, 100, 0xcc).status, RESERVATION_CONFLICT);
    let (c, _) = client.command(0, &rw16(0x88, 100, 1), &[], 512, T).unwrap();
    assert_eq!(c.status, RESERVATION_CONFLICT, "read by a non-registrant under EA-RO");

    // The client registers (bl_register_scsi), may write, and unregisters (bl_unregister_scsi).
    assert_eq!(prout(&mut client, REGISTER_AND_IGNORE, 0, 0, CLIENT_KEY, true).status, GOOD);
    assert_eq!(write(&mut client, 100, 0xcc).status, GOOD);
    assert_eq!(prout(&mut client, REGISTER, 0, CLIENT_KEY, 0, true).status, GOOD, "unregister: REGISTER old key -> 0, APTPL=1");
    assert_eq!(read_keys(&mut mds), vec![MDS_KEY]);
    assert_eq!(write(&mut client, 100, 0xcc).status, RESERVATION_CONFLICT);

    // A new ISID of the same initiator name is another I_T nexus: not registered.
    assert_eq!(prout(&mut client, REGISTER_AND_IGNORE, 0, 0, CLIENT_KEY, true).status, GOOD);
    let mut other_path = login_isid(port, CLIENT, Some([0x80, 0, 0, 0, 0x4e, 0x21]), 4);
    clear_ua(&mut other_path);
    assert_eq!(write(&mut other_path, 101, 0xdd).status, RESERVATION_CONFLICT, "new ISID must not inherit the registration");
    assert_eq!(write(&mut client, 101, 0xcc).status, GOOD);

    // Fence: PREEMPT AND ABORT of the client's key, type 6h (current kernels).
    let c = prout(&mut mds, PREEMPT_AND_ABORT, EA_RO, MDS_KEY, CLIENT_KEY, false);
    assert_eq!(c.status, GOOD, "PREEMPT AND ABORT type 6h: {c:?}");
    assert_eq!(read_keys(&mut mds), vec![MDS_KEY]);
    assert_eq!(read_reservation(&mut mds), Some((MDS_KEY, EA_RO)));
    // The fenced client hears REGISTRATIONS PREEMPTED once (SPC-4 5.13.11.4.4), then its writes
    // get RESERVATION CONFLICT; the metadata server's do not.
    let c = write(&mut client, 102, 0xcc);
    assert_eq!((c.status, sense_of(&c)), (CHECK_CONDITION, (0x6, 0x2a, 0x05)), "first command after the fence: {c:?}");
    let c = write(&mut client, 102, 0xcc);
    assert_eq!(c.status, RESERVATION_CONFLICT, "fenced client's write: {c:?}");
    assert_eq!(write(&mut mds, 102, 0x11).status, GOOD, "metadata server's write");
    // The metadata server itself got no unit attention from its own preempt.
    assert_eq!(mds.command(0, &[0u8; 6], &[], 0, T).unwrap().0.status, GOOD);

    // A repeated fence of a key already gone answers RESERVATION CONFLICT (Linux: fenced).
    let c = prout(&mut mds, PREEMPT_AND_ABORT, EA_RO, MDS_KEY, CLIENT_KEY, false);
    assert_eq!(c.status, RESERVATION_CONFLICT, "repeated preempt: {c:?}");

    // Older kernels fence with type 0: accepted, since the preempted key is not the holder's
    // (SPC-4 5.13.11.4.4: TYPE is ignored).
    assert_eq!(prout(&mut client, REGISTER_AND_IGNORE, 0, 0, CLIENT_KEY, true).status, GOOD);
    assert_eq!(write(&mut client, 103, 0xcc).status, GOOD);
    let c = prout(&mut mds, PREEMPT_AND_ABORT, 0, MDS_KEY, CLIENT_KEY, false);
    assert_eq!(c.status, GOOD, "PREEMPT AND ABORT type 0: {c:?}");
    let c = write(&mut client, 104, 0xcc);
    assert_eq!(sense_of(&c), (0x6, 0x2a, 0x05), "UA after the type-0 fence: {c:?}");
    assert_eq!(write(&mut client, 104, 0xcc).status, RESERVATION_CONFLICT);
    assert_eq!(write(&mut mds, 104, 0x11).status, GOOD);
    assert_eq!(read_reservation(&mut mds), Some((MDS_KEY, EA_RO)), "the reservation is untouched");

    // The reservation is visible to management, keyed by bdev.
    let r = t.rpc("reservation_get", json!({"bdev_name": "Malloc0"}));
    let text = r.to_string();
    assert!(text.contains("0x0100000000000000") && !text.contains("0x0000000000000042"), "reservation_get: {r}");
    other_path.logout().unwrap();
    client.logout().unwrap();
    mds.logout().unwrap();
    t.stop();
}

#[test]
fn aptpl_state_survives_a_restart_and_its_absence_does_not() {
    let port = free_port();
    let state = tempfile::tempdir().unwrap();
    {
        let t = start(port, state.path(), 65536, "0x1");
        let mut mds = login(port, MDS);
        mds_setup(&mut mds);
        let mut client = login(port, CLIENT);
        assert_eq!(prout(&mut client, REGISTER_AND_IGNORE, 0, 0, CLIENT_KEY, true).status, GOOD);
        client.logout().unwrap();
        mds.logout().unwrap();
        t.stop();
    }
    {
        let t = start(port, state.path(), 65536, "0x1");
        let mut mds = login(port, MDS);
        let mut keys = read_keys(&mut mds);
        keys.sort();
        assert_eq!(keys, vec![CLIENT_KEY, MDS_KEY], "APTPL=1 registrations reloaded");
        assert_eq!(read_reservation(&mut mds), Some((MDS_KEY, EA_RO)), "APTPL=1 reservation reloaded");
        // Same initiator port and target port: still the holder, writes pass; others conflict.
        assert_eq!(write(&mut mds, 7, 0x22).status, GOOD);
        let mut stranger = login(port, "iqn.2026-01.org.example:stranger");
        assert_eq!(write(&mut stranger, 7, 0x33).status, RESERVATION_CONFLICT);
        stranger.logout().unwrap();
        // Turn APTPL off (re-register with APTPL=0): the next restart starts empty.
        assert_eq!(prout(&mut mds, REGISTER_AND_IGNORE, 0, 0, MDS_KEY, false).status, GOOD);
        mds.logout().unwrap();
        t.stop();
    }
    let t = start(port, state.path(), 65536, "0x1");
    let mut mds = login(port, MDS);
    assert_eq!(read_keys(&mut mds), Vec::<u64>::new(), "without APTPL a restart clears the state");
    assert_eq!(read_reservation(&mut mds), None);
    mds.logout().unwrap();
    t.stop();
}

/// One block of the victim's pattern: magic, sequence number, LBA.
const MAGIC: &[u8; 8] = b"PALFENCE";

fn victim_block(seq: u64) -> [u8; 512] {
    let mut b = [0x5au8; 512];
    b[0..8].copy_from_slice(MAGIC);
    b[8..16].copy_from_slice(&seq.to_le_bytes());
    b[16..24].copy_from_slice(&seq.to_le_bytes());
    b
}

#[test]
fn preempt_and_abort_fences_a_client_under_qd32_load() {
    // Sequence number n goes to block n % BLOCKS (later writes overwrite earlier ones, which
    // cannot hide a late write: every write after the fence must be refused).
    const BLOCKS: u64 = 1 << 18;
    let port = free_port();
    let state = tempfile::tempdir().unwrap();
    let t = start(port, state.path(), BLOCKS, "0x3");
    let mut mds = login(port, MDS);
    mds_setup(&mut mds);
    let mut victim = login(port, CLIENT);
    assert_eq!(prout(&mut victim, REGISTER_AND_IGNORE, 0, 0, CLIENT_KEY, true).status, GOOD);

    let issued = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let test_start = Instant::now();
    let load = {
        let (issued, stop) = (issued.clone(), stop.clone());
        std::thread::spawn(move || {
            let depth = victim.depth();
            let mut free: Vec<u32> = (0..depth as u32).collect();
            let (mut good, mut conflict, mut ua, mut aborted, mut other) = (0u64, 0u64, 0u64, 0u64, 0u64);
            let hard_stop = Instant::now() + Duration::from_secs(8);
            loop {
                let stopping = stop.load(Ordering::Acquire) || Instant::now() > hard_stop;
                if !stopping {
                    while let Some(tag) = free.pop() {
                        // Counted before it is sent: a sequence number >= the count read after the
                        // preempt completed was issued after the fence.
                        let seq = issued.fetch_add(1, Ordering::AcqRel);
                        victim.submit(tag, 0, &rw16(0x8a, seq % BLOCKS, 1), &victim_block(seq), 0).unwrap();
                    }
                } else if free.len() == depth || Instant::now() > hard_stop + Duration::from_secs(5) {
                    break;
                }
                victim
                    .poll(Duration::from_millis(100), &mut |c, _| {
                        match c.status {
                            GOOD => good += 1,
                            RESERVATION_CONFLICT => conflict += 1,
                            CHECK_CONDITION if sense_of(&c) == (0x6, 0x2a, 0x05) => ua += 1,
                            // A task of ours the preempt aborted (TAS=1).
                            TASK_ABORTED => aborted += 1,
                            _ => other += 1,
                        }
                        free.push(c.tag);
                    })
                    .unwrap();
            }
            (good, conflict, ua, aborted, other)
        })
    };

    // Let the victim reach full speed, then fence it.
    std::thread::sleep(Duration::from_millis(300));
    let ramp = Instant::now() + Duration::from_secs(3);
    while issued.load(Ordering::Acquire) < 20_000 && Instant::now() < ramp {
        std::thread::sleep(Duration::from_millis(10));
    }
    let before = issued.load(Ordering::Acquire);
    let c = prout(&mut mds, PREEMPT_AND_ABORT, EA_RO, MDS_KEY, CLIENT_KEY, false);
    let fence_done = issued.load(Ordering::Acquire);
    assert_eq!(c.status, GOOD, "PREEMPT AND ABORT: {c:?}");
    // The victim keeps submitting after the fence: all of those must be refused.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Release);
    let (good, conflict, ua, aborted, other) = load.join().unwrap();
    let total = issued.load(Ordering::Acquire);
    eprintln!(
        "victim: {good} good, {conflict} conflict, {ua} unit attention, {aborted} aborted, {other} other; issued {total}, {before} before the fence, {fence_done} when it completed"
    );
    assert!(before > 1000, "the victim was not under load before the fence ({before} writes)");
    assert!(total > fence_done + 32, "the victim did not keep writing after the fence");
    assert_eq!(ua, 1, "REGISTRATIONS PREEMPTED is reported exactly once");
    assert!(conflict > 0 && other == 0, "after the fence the victim gets RESERVATION CONFLICT (or TASK ABORTED) only");
    assert!(aborted <= 32, "only tasks outstanding at the fence can be aborted ({aborted})");
    assert!(good >= before.saturating_sub(32), "writes before the fence succeeded ({good} of {before})");

    // Read back everything the victim may have written: no block may carry a sequence number
    // issued after the preempt completed.
    let chunk = 2048u64;
    let mut landed = 0u64;
    let mut lba = 0;
    let end = total.min(BLOCKS);
    while lba < end {
        let n = chunk.min(end - lba);
        let (c, d) = mds.command(0, &rw16(0x88, lba, n as u32), &[], (n * 512) as usize, T).unwrap();
        assert_eq!(c.status, GOOD, "read back at {lba}: {c:?}");
        for (i, b) in d.chunks(512).enumerate() {
            if &b[0..8] != MAGIC {
                continue;
            }
            let seq = u64::from_le_bytes(b[8..16].try_into().unwrap());
            assert_eq!(seq % BLOCKS, lba + i as u64, "block {} carries sequence {seq}", lba + i as u64);
            assert!(seq < fence_done, "write #{seq} landed although it was issued after the fence completed (at #{fence_done})");
            landed += 1;
        }
        lba += n;
    }
    assert!(landed >= before.min(BLOCKS).saturating_sub(32), "the victim's pre-fence writes are on the volume ({landed})");
    assert!(test_start.elapsed() < Duration::from_secs(10), "bounded in time: {:?}", test_start.elapsed());
    mds.logout().unwrap();
    t.stop();
}

/// A task of the preempted nexus that is still waiting for its Data-Out when PREEMPT AND ABORT
/// completes is aborted: it ends with TASK ABORTED (the control mode page has TAS=1), none of its
/// data reaches the volume, and the victim then hears REGISTRATIONS PREEMPTED once.
#[test]
fn preempt_and_abort_aborts_a_write_waiting_for_data_out() {
    let port = free_port();
    let state = tempfile::tempdir().unwrap();
    let t = start(port, state.path(), 65536, "0x3");
    let mut mds = login(port, MDS);
    mds_setup(&mut mds);
    let mut victim = login(port, CLIENT);
    assert_eq!(prout(&mut victim, REGISTER_AND_IGNORE, 0, 0, CLIENT_KEY, true).status, GOOD);

    // 1 MiB: beyond FirstBurstLength, so the target asks for the rest with R2T. The command and
    // its first burst are sent, and the R2T is left unanswered.
    let blocks = 2048u32;
    let data = vec![0xa5u8; blocks as usize * 512];
    victim.submit(0, 0, &rw16(0x8a, 4096, blocks), &data, 0).unwrap();
    victim.raw_write(&[]).unwrap();
    std::thread::sleep(Duration::from_millis(200));

    let c = prout(&mut mds, PREEMPT_AND_ABORT, EA_RO, MDS_KEY, CLIENT_KEY, false);
    assert_eq!(c.status, GOOD, "PREEMPT AND ABORT: {c:?}");

    let mut done = None;
    let deadline = Instant::now() + T;
    while done.is_none() && Instant::now() < deadline {
        victim.poll(Duration::from_millis(100), &mut |c, _| done = Some(c)).unwrap();
    }
    let c = done.expect("the aborted write was never answered");
    assert_eq!(c.status, TASK_ABORTED, "write waiting for Data-Out at the fence: {c:?}");
    let (c, d) = mds.command(0, &rw16(0x88, 4096, blocks), &[], data.len(), T).unwrap();
    assert_eq!(c.status, GOOD);
    assert!(d.iter().all(|&b| b == 0), "data of the aborted write reached the volume");
    let c = write(&mut victim, 10, 0xcc);
    assert_eq!(sense_of(&c), (0x6, 0x2a, 0x05), "then REGISTRATIONS PREEMPTED: {c:?}");
    assert_eq!(write(&mut victim, 10, 0xcc).status, RESERVATION_CONFLICT);
    victim.logout().unwrap();
    mds.logout().unwrap();
    t.stop();
}

/// REGISTER AND MOVE over iSCSI: the holder moves the reservation to another initiator port named
/// by an iSCSI TransportID (format 01b, in another letter case) and the relative target port id
/// its login made known.
#[test]
fn register_and_move_to_a_logged_in_initiator_port() {
    let port = free_port();
    let state = tempfile::tempdir().unwrap();
    let t = start(port, state.path(), 65536, "0x1");
    let mut mds = login(port, MDS);
    mds_setup(&mut mds);
    let mut client = login(port, CLIENT);
    assert_eq!(write(&mut client, 5, 0xcc).status, RESERVATION_CONFLICT);

    let mut tid = format!("{},i,0x800000000002", CLIENT.to_ascii_uppercase()).into_bytes();
    tid.push(0);
    while tid.len() % 4 != 0 {
        tid.push(0);
    }
    let mut p = Vec::new();
    p.extend_from_slice(&MDS_KEY.to_be_bytes());
    p.extend_from_slice(&CLIENT_KEY.to_be_bytes());
    p.extend_from_slice(&[0, 0x02]); // reserved, UNREG=1 APTPL=0
    p.extend_from_slice(&1u16.to_be_bytes()); // relative target port identifier: portal group 1
    p.extend_from_slice(&(4 + tid.len() as u32).to_be_bytes());
    p.extend_from_slice(&[0x45, 0]); // format 01b, iSCSI
    p.extend_from_slice(&(tid.len() as u16).to_be_bytes());
    p.extend_from_slice(&tid);
    let len = (p.len() as u32).to_be_bytes();
    let cdb = [0x5f, 0x07, EA_RO, 0, 0, len[0], len[1], len[2], len[3], 0];
    let (c, _) = mds.command(0, &cdb, &p, 0, T).unwrap();
    assert_eq!(c.status, GOOD, "REGISTER AND MOVE: {c:?}");
    assert_eq!(read_reservation(&mut client), Some((CLIENT_KEY, EA_RO)), "the client holds it now");
    assert_eq!(read_keys(&mut client), vec![CLIENT_KEY], "UNREG=1 dropped the mover's registration");
    assert_eq!(write(&mut client, 5, 0xcc).status, GOOD);
    assert_eq!(write(&mut mds, 5, 0x11).status, RESERVATION_CONFLICT);
    client.logout().unwrap();
    mds.logout().unwrap();
    t.stop();
}
