//! Helpers shared by the reservation test files.
#![allow(dead_code)]

use std::sync::{mpsc, Arc};
use std::time::Duration;

use palisade::bdev::{malloc::MallocBdev, BdevRegistry};
use palisade::reservation::{Action, Applied, NexusRef, PrError, Reservations};
use palisade::volume::pr_gate::nexus_ref;
use palisade::volume::{Initiator, Volume, VolumeRegistry};

pub fn iscsi(name: &str, isid: &str, tpgt: u16) -> Initiator {
    Initiator::Iscsi {
        initiator_port: format!("{name},i,0x{isid}"),
        target_port: format!("iqn.2026-11.io.palisade:t1,t,0x{tpgt:04x}"),
        rel_port_id: tpgt,
    }
}

pub fn nvme(id: u8, nqn: &str) -> Initiator {
    let mut host_id = [0u8; 16];
    host_id[0] = 0x5a;
    host_id[15] = id;
    Initiator::Nvme { host_id, host_nqn: nqn.to_string() }
}

/// A volume on a fresh RAM bdev, optionally with a reservation state directory.
pub fn volume(state_dir: Option<&std::path::Path>, uuid: Option<uuid::Uuid>) -> (Arc<VolumeRegistry>, Arc<Volume>) {
    let bdevs = Arc::new(BdevRegistry::default());
    bdevs.add(Arc::new(MallocBdev::new("Malloc0", 2048, 512, uuid).unwrap())).unwrap();
    let reg = Arc::new(VolumeRegistry::new(bdevs));
    reg.set_state_dir(state_dir.map(|p| p.to_path_buf()));
    let v = reg.open("Malloc0", "test").unwrap();
    (reg, v)
}

/// Run an action to completion (waiting for a deferred one).
pub fn exec(pr: &Arc<Reservations>, who: NexusRef, a: Action) -> Result<Applied, PrError> {
    let (tx, rx) = mpsc::channel();
    match pr.execute(who, a, Box::new(move |r| {
        let _ = tx.send(r);
    })) {
        Some(r) => r,
        None => rx.recv_timeout(Duration::from_secs(10)).expect("deferred action completes"),
    }
}

pub fn run(v: &Volume, who: &Initiator, a: Action) -> Result<Applied, PrError> {
    exec(v.reservations(), nexus_ref(who), a)
}

/// PR OUT CDB (10 bytes) and its 24-byte parameter list.
pub fn pr_out(sa: u8, scope_type: u8, key: u64, sa_key: u64, flags: u8) -> ([u8; 10], Vec<u8>) {
    let mut cdb = [0u8; 10];
    cdb[0] = 0x5f;
    cdb[1] = sa;
    cdb[2] = scope_type;
    cdb[5..9].copy_from_slice(&24u32.to_be_bytes());
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p[20] = flags;
    (cdb, p)
}

/// Decode and run a SCSI PR OUT.
pub fn scsi(v: &Volume, who: &Initiator, sa: u8, scope_type: u8, key: u64, sa_key: u64, flags: u8) -> Result<(), palisade::scsi::pr::Failure> {
    let (cdb, p) = pr_out(sa, scope_type, key, sa_key, flags);
    let a = palisade::scsi::pr::decode_pr_out(&cdb, &p)?;
    run(v, who, a).map(|_| ()).map_err(|e| palisade::scsi::pr::failure(&e))
}

/// NVMe reservation data: two little-endian keys.
pub fn keys_le(a: u64, b: u64) -> Vec<u8> {
    let mut d = a.to_le_bytes().to_vec();
    d.extend_from_slice(&b.to_le_bytes());
    d
}

/// Run an NVMe reservation command to completion.
pub fn nvme_cmd(v: &Volume, who: &Initiator, opc: u8, cdw10: u32, cdw11: u32, data: &[u8]) -> palisade::nvme::reservation::Completion {
    let (tx, rx) = mpsc::channel();
    match palisade::nvme::reservation::execute(v, who, opc, cdw10, cdw11, data, move |c| {
        let _ = tx.send(c);
    }) {
        Some(c) => c,
        None => rx.recv_timeout(Duration::from_secs(10)).expect("deferred command completes"),
    }
}
