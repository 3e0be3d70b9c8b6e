//! The Linux pNFS SCSI-layout sequence (knfsd metadata server + Linux client, RFC 8154 / RFC 9561)
//! replayed byte for byte: SCSI through `scsi::pr::execute` on a reactor (APTPL=1, so every
//! command completes through the persistence path), NVMe through `nvme::reservation::execute`;
//! then the fenced client's write gets RESERVATION CONFLICT from the volume and the metadata
//! server's does not.

mod reservation;

use palisade::bdev::IoOp;
use palisade::nvme::reservation as nv;
use palisade::reactor::{PollMode, ReactorSet};
use palisade::scsi::status;
use palisade::volume::Denied;
use reservation::rig::{Host, Port};
use reservation::*;

const MDS_KEY: [u8; 8] = [0x01, 0, 0, 0, 0, 0, 0, 0]; // 0x0100000000000000, big-endian on SCSI
const CLIENT_KEY: [u8; 8] = [0x02, 0, 0, 0, 0, 0, 0, 0x07];

/// PR OUT as Linux's sd_pr_out_command builds it: 10-byte CDB, 24-byte parameter list.
fn sd_pr_out(sa: u8, ty: u8, key: [u8; 8], sa_key: [u8; 8], flags: u8) -> ([u8; 10], [u8; 24]) {
    let cdb = [0x5f, sa, ty, 0, 0, 0, 0, 0, 24, 0];
    let mut p = [0u8; 24];
    p[0..8].copy_from_slice(&key);
    p[8..16].copy_from_slice(&sa_key);
    p[20] = flags;
    (cdb, p)
}

fn write10(lba: u8) -> [u8; 10] {
    [0x2a, 0, 0, 0, 0, lba, 0, 0, 1, 0]
}

#[test]
fn linux_pnfs_sequence_over_scsi() {
    let dir = tempfile::tempdir().unwrap();
    let (_reg, v) = volume(Some(dir.path()), None);
    let set = ReactorSet::start(0x1, PollMode::Adaptive, palisade::bdev::install).unwrap();
    let mut mds = Port::new(&set, 0, iscsi("iqn.2026-11.test:mds", "400001370000", 1), v.clone());
    let mut client = Port::new(&set, 0, iscsi("iqn.2026-11.test:client", "400001370001", 1), v.clone());
    let block = vec![0x5au8; 512];
    let zero = [0u8; 8];
    let ok = |r: palisade::scsi::ScsiResponse| assert_eq!((r.status, r.sense), (status::GOOD, None));

    // 1. MDS: REGISTER AND IGNORE EXISTING KEY, APTPL=1.
    let (c, p) = sd_pr_out(0x06, 0, zero, MDS_KEY, 0x01);
    ok(mds.cmd(&c, Some(&p), 24));
    // 2. MDS: RESERVE type 6 (Exclusive Access - Registrants Only).
    let (c, p) = sd_pr_out(0x01, 0x06, MDS_KEY, zero, 0);
    ok(mds.cmd(&c, Some(&p), 24));
    // Before registering, the client can neither read nor write (EA-RO on reads and writes).
    assert_eq!(client.cmd(&write10(1), Some(&block), 512).status, status::RESERVATION_CONFLICT);
    assert_eq!(client.cmd(&[0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0], None, 512).status, status::RESERVATION_CONFLICT);
    // 3. Client: REGISTER AND IGNORE EXISTING KEY, APTPL=1; now it may write.
    let (c, p) = sd_pr_out(0x06, 0, zero, CLIENT_KEY, 0x01);
    ok(client.cmd(&c, Some(&p), 24));
    ok(client.cmd(&write10(1), Some(&block), 512));
    // READ RESERVATION shows the MDS key and type 6.
    let r = mds.cmd(&[0x5e, 0x01, 0, 0, 0, 0, 0, 0, 24, 0], None, 24);
    let d = &r.data_in.as_ref().unwrap()[..r.data_len as usize];
    assert_eq!(&d[8..16], &MDS_KEY);
    assert_eq!(d[21], 0x06);
    // 5. Fence: PREEMPT AND ABORT type 6 of the client's key.
    let (c, p) = sd_pr_out(0x05, 0x06, MDS_KEY, CLIENT_KEY, 0);
    ok(mds.cmd(&c, Some(&p), 24));
    // The preempted client's next command reports REGISTRATIONS PREEMPTED once (a unit attention
    // comes before anything else, SPC-4 5.14.11.2.1); after that its writes are refused.
    let first = client.cmd(&write10(2), Some(&block), 512);
    let ua = first.sense.expect("unit attention");
    assert_eq!((first.status, ua.key, ua.asc, ua.ascq), (status::CHECK_CONDITION, 0x6, 0x2a, 0x05));
    assert_eq!(client.cmd(&write10(2), Some(&block), 512).status, status::RESERVATION_CONFLICT);
    ok(mds.cmd(&write10(2), Some(&block), 512));
    // A repeated fence of the removed key (older kernels: type 0): RESERVATION CONFLICT.
    let (c, p) = sd_pr_out(0x05, 0x00, MDS_KEY, CLIENT_KEY, 0);
    assert_eq!(mds.cmd(&c, Some(&p), 24).status, status::RESERVATION_CONFLICT);
    // Client registers again, then unregisters: REGISTER old key -> SA key 0, APTPL=1.
    let (c, p) = sd_pr_out(0x06, 0, zero, CLIENT_KEY, 0x01);
    ok(client.cmd(&c, Some(&p), 24));
    // Type-0 fence from older kernels of a non-holder key: accepted.
    let (c, p) = sd_pr_out(0x05, 0x00, MDS_KEY, CLIENT_KEY, 0);
    ok(mds.cmd(&c, Some(&p), 24));
    let (c, p) = sd_pr_out(0x06, 0, zero, CLIENT_KEY, 0x01);
    ok(client.cmd(&c, Some(&p), 24));
    let (c, p) = sd_pr_out(0x00, 0, CLIENT_KEY, zero, 0x01);
    ok(client.cmd(&c, Some(&p), 24));
    let keys = mds.cmd(&[0x5e, 0x00, 0, 0, 0, 0, 0, 0, 64, 0], None, 64);
    let d = &keys.data_in.as_ref().unwrap()[..keys.data_len as usize];
    assert_eq!(u32::from_be_bytes(d[4..8].try_into().unwrap()), 8, "only the MDS key is left");
    assert_eq!(&d[8..16], &MDS_KEY);
    // Everything was persisted with APTPL.
    let st = palisade::reservation::Store::in_dir(dir.path(), &v.uuid()).load().unwrap().unwrap();
    assert_eq!(st.registrants.len(), 1);
    set.stop();
}

#[test]
fn linux_pnfs_sequence_over_nvme() {
    let dir = tempfile::tempdir().unwrap();
    let (_reg, v) = volume(Some(dir.path()), None);
    let set = ReactorSet::start(0x1, PollMode::Adaptive, palisade::bdev::install).unwrap();
    let mds_id = nvme(1, "nqn.2014-08.org.nvmexpress:uuid:mds");
    let client_id = nvme(2, "nqn.2014-08.org.nvmexpress:uuid:client");
    let mut mds = Host::new(&set, 0, mds_id.clone(), v.clone());
    let mut client = Host::new(&set, 0, client_id.clone(), v.clone());
    let mds_key = 0x0100000000000000u64.to_le_bytes();
    let client_key = 0x0200000000000007u64.to_le_bytes();
    let data = |a: [u8; 8], b: [u8; 8]| [a, b].concat();
    let zero = [0u8; 8];
    let ok = |c: nv::Completion| assert_eq!(c.status, nv::Status::SUCCESS);

    // 1. MDS: Register RREGA 000b, IEKEY=1, CPTPL=11b.
    ok(nvme_cmd(&v, &mds_id, 0x0d, 0xc000_0008, 0, &data(zero, mds_key)));
    // 2. MDS: Acquire RACQA 000b, RTYPE 4 (EA - Registrants Only).
    ok(nvme_cmd(&v, &mds_id, 0x11, 0x0000_0400, 0, &data(mds_key, zero)));
    assert_eq!(client.io(IoOp::Write, 1), Err(Denied::ReservationConflict));
    assert_eq!(client.io(IoOp::Read, 1), Err(Denied::ReservationConflict));
    // 3. Client: Register, IEKEY=1, CPTPL=11b.
    ok(nvme_cmd(&v, &client_id, 0x0d, 0xc000_0008, 0, &data(zero, client_key)));
    assert_eq!(client.io(IoOp::Write, 1), Ok(0));
    // Reservation Report (extended) shows both, the MDS holding.
    let rep = nvme_cmd(&v, &mds_id, 0x0e, 64 * 3 / 4 - 1, 1, &[]);
    ok(rep.clone());
    assert_eq!(rep.data[4], 4);
    assert_eq!(rep.data[9], 1, "PTPLS");
    // 5. Fence: Acquire RACQA 010b (preempt and abort), RTYPE 4.
    ok(nvme_cmd(&v, &mds_id, 0x11, 0x0000_0402, 0, &data(mds_key, client_key)));
    assert_eq!(client.io(IoOp::Write, 2), Err(Denied::ReservationConflict));
    assert_eq!(nv::denied_status(Denied::ReservationConflict), nv::Status::RESERVATION_CONFLICT);
    assert_eq!(mds.io(IoOp::Write, 2), Ok(0));
    assert_eq!(nv::notification_log(&v, &client_id, 1)[8], 1, "Registration Preempted");
    // Repeated fence (type 0 as older kernels send it): Reservation Conflict.
    assert_eq!(nvme_cmd(&v, &mds_id, 0x11, 0x0000_0002, 0, &data(mds_key, client_key)).status, nv::Status::RESERVATION_CONFLICT);
    // 4. Client re-registers and unregisters with REPLACE (RREGA 010b) to NRKEY 0.
    ok(nvme_cmd(&v, &client_id, 0x0d, 0xc000_0008, 0, &data(zero, client_key)));
    ok(nvme_cmd(&v, &client_id, 0x0d, 0xc000_0002, 0, &data(client_key, zero)));
    assert_eq!(v.reservations().read(|s| s.registrants.len()), 1);
    // Type-0 fence of a registered non-holder key is accepted.
    ok(nvme_cmd(&v, &client_id, 0x0d, 0xc000_0008, 0, &data(zero, client_key)));
    ok(nvme_cmd(&v, &mds_id, 0x11, 0x0000_0002, 0, &data(mds_key, client_key)));
    assert_eq!(client.io(IoOp::Write, 3), Err(Denied::ReservationConflict));
    assert!(palisade::reservation::Store::in_dir(dir.path(), &v.uuid()).load().unwrap().unwrap().aptpl);
    set.stop();
}

/// One reservation state for both protocols: an iSCSI metadata server fences an NVMe client.
#[test]
fn cross_protocol_fence() {
    let (_reg, v) = volume(None, None);
    let set = ReactorSet::start(0x1, PollMode::Adaptive, palisade::bdev::install).unwrap();
    let mut mds = Port::new(&set, 0, iscsi("iqn.2026-11.test:mds", "400001370000", 1), v.clone());
    let cid = nvme(2, "nqn.client");
    let mut client = Host::new(&set, 0, cid.clone(), v.clone());
    let zero = [0u8; 8];
    let (c, p) = sd_pr_out(0x06, 0, zero, MDS_KEY, 0x01);
    assert_eq!(mds.cmd(&c, Some(&p), 24).status, status::GOOD);
    let (c, p) = sd_pr_out(0x01, 0x06, MDS_KEY, zero, 0);
    assert_eq!(mds.cmd(&c, Some(&p), 24).status, status::GOOD);
    assert_eq!(nvme_cmd(&v, &cid, 0x0d, 0xc000_0008, 0, &[zero, CLIENT_KEY].concat()).status, nv::Status::SUCCESS);
    assert_eq!(client.io(IoOp::Write, 4), Ok(0));
    // The NVMe client's key (little-endian on NVMe) is the SCSI key 0x0700000000000002.
    let ck = u64::from_le_bytes(CLIENT_KEY).to_be_bytes();
    let (c, p) = sd_pr_out(0x05, 0x06, MDS_KEY, ck, 0);
    assert_eq!(mds.cmd(&c, Some(&p), 24).status, status::GOOD);
    assert_eq!(client.io(IoOp::Write, 4), Err(Denied::ReservationConflict));
    set.stop();
}
