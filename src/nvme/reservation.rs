//! NVMe reservations on the wire (NVMe Base 2.0 Reservation Register / Acquire / Release /
//! Report, the Reservation Notification log page, Features 82h/83h), mapped onto the
//! protocol-neutral engine in `reservation/`.
//!
//! Interface for the NVMe command dispatch (merge-time wiring):
//! - I/O opcodes 0Dh, 11h, 15h, 0Eh: call [`execute`] with the command's CDW10/CDW11, the
//!   host-to-controller data (16 bytes for Register/Acquire, 8 for Release; none for Report) and
//!   the length of the host's buffer (Report's data never exceeds it). It
//!   returns `Some(Completion)` at once, or `None` and later calls `done` (from another thread:
//!   send the queue pair a message from it) once the change is durable (PTPL) and, for Preempt
//!   and Abort, once every in-flight write of the preempted hosts has drained.
//! - Every other I/O command is checked by `Volume::submit` (block I/O) or
//!   `Volume::check(&who, io_class(opc))`; [`denied_status`] is the NVMe status of a refusal.
//! - Get Log Page 80h: [`notification_log`]. The Reservation Log Page Available AEN (type 6h,
//!   info 0h, log 80h) is due when [`notification_pending`] is true (check after each command or
//!   on tick: one atomic load when nothing is pending).
//! - Get/Set Features 82h (mask) and 83h (PTPL): [`get_features`] / [`set_features`].
//! - Identify Namespace: RESCAP byte 31 = [`RESCAP`]; Identify Controller ONCS |= [`ONCS_RESERVATIONS`].
//!
//! Choices (documented because NVMe leaves room): REPLACE with NRKEY=0 unregisters (what Linux
//! sends, `nvme_pr_register`); CPTPL=11b is accepted and persisted with no configuration;
//! IEKEY is ignored for Acquire/Release (obsolete there); Register of the already-registered key
//! succeeds; a registrant's CNTLID in Reservation Report is FFFFh (registrations belong to hosts,
//! not controllers); iSCSI registrants appear with a zero host identifier.

use std::sync::Arc;

use crate::reservation::{Action, Applied, CommandClass, Nexus, PrError, PrEvent, PrState, ResType};
use crate::volume::pr_gate::nexus_ref;
use crate::volume::{Denied, Initiator, Volume};

pub const OPC_RESERVATION_REGISTER: u8 = 0x0d;
pub const OPC_RESERVATION_REPORT: u8 = 0x0e;
pub const OPC_RESERVATION_ACQUIRE: u8 = 0x11;
pub const OPC_RESERVATION_RELEASE: u8 = 0x15;
pub const LOG_RESERVATION_NOTIFICATION: u8 = 0x80;
pub const FEAT_RESERVATION_NOTIFICATION_MASK: u8 = 0x82;
pub const FEAT_RESERVATION_PERSISTENCE: u8 = 0x83;
/// Identify Namespace RESCAP: IEKEY (bit 7) and all six types (bits 1..6) and PTPL (bit 0).
pub const RESCAP: u8 = 0xff;
/// Identify Controller ONCS bit 5: Reservations.
pub const ONCS_RESERVATIONS: u16 = 1 << 5;

/// NVMe completion status: status code type and status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    pub sct: u8,
    pub sc: u8,
}

impl Status {
    pub const SUCCESS: Status = Status { sct: 0, sc: 0x00 };
    pub const INVALID_OPCODE: Status = Status { sct: 0, sc: 0x01 };
    pub const INVALID_FIELD: Status = Status { sct: 0, sc: 0x02 };
    pub const INTERNAL_ERROR: Status = Status { sct: 0, sc: 0x06 };
    pub const HOST_ID_INCONSISTENT_FORMAT: Status = Status { sct: 0, sc: 0x18 };
    pub const RESERVATION_CONFLICT: Status = Status { sct: 0, sc: 0x83 };
    pub fn is_success(self) -> bool {
        self == Status::SUCCESS
    }
}

/// Result of a reservation command: status and controller-to-host data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    pub status: Status,
    pub data: Vec<u8>,
}

impl Completion {
    fn status(status: Status) -> Completion {
        Completion { status, data: Vec::new() }
    }
}

/// NVMe status of an engine error.
pub fn status_of(e: &PrError) -> Status {
    match e {
        PrError::Conflict => Status::RESERVATION_CONFLICT,
        PrError::Resources | PrError::Persist(_) => Status::INTERNAL_ERROR,
        _ => Status::INVALID_FIELD,
    }
}

/// NVMe status of a volume refusal.
pub fn denied_status(d: Denied) -> Status {
    match d {
        Denied::ReservationConflict => Status::RESERVATION_CONFLICT,
        Denied::OutOfRange => Status { sct: 0, sc: 0x80 }, // LBA Out of Range
        // The layout guard refused a write outside the client's grants: Access Denied (NVMe Base
        // 2.0, Media and Data Integrity Errors, 86h).
        Denied::WriteProtected => Status { sct: 2, sc: 0x86 },
        // This node's port group is not active: the path related status of its ANA state.
        Denied::PathInaccessible(s) => match super::ana::AnaState::from(s).io_status() {
            Some(st) => Status { sct: st.sct, sc: st.sc },
            None => Status::INTERNAL_ERROR,
        },
    }
}

/// Conflict-table class of an NVM command set I/O opcode (NVMe Base 2.0 8.19, "Command
/// Behavior in the Presence of a Reservation").
pub fn io_class(opc: u8) -> CommandClass {
    match opc {
        0x02 | 0x05 | 0x0c => CommandClass::Read,                  // Read, Compare, Verify
        0x01 | 0x04 | 0x08 | 0x09 | 0x19 => CommandClass::Write,   // Write, Write Uncorrectable, Write Zeroes, DSM, Copy
        OPC_RESERVATION_REGISTER | OPC_RESERVATION_ACQUIRE | OPC_RESERVATION_RELEASE => CommandClass::PrOut,
        _ => CommandClass::Always, // Flush, Reservation Report, ...
    }
}

fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

fn cptpl(cdw10: u32) -> Result<Option<bool>, Status> {
    match cdw10 >> 30 {
        0 => Ok(None),
        2 => Ok(Some(false)),
        3 => Ok(Some(true)),
        _ => Err(Status::INVALID_FIELD),
    }
}

/// Reservation Register: CDW10 RREGA (2:0), IEKEY (3), CPTPL (31:30); data CRKEY, NRKEY (LE).
pub fn decode_register(cdw10: u32, data: &[u8]) -> Result<Action, Status> {
    if data.len() < 16 {
        return Err(Status::INVALID_FIELD);
    }
    let crkey = le64(&data[0..8]);
    let nrkey = le64(&data[8..16]);
    let iekey = cdw10 & 0x8 != 0;
    let aptpl = cptpl(cdw10)?;
    match cdw10 & 0x7 {
        0 => Ok(Action::NvmeRegister { nrkey, aptpl }),
        1 => Ok(Action::NvmeUnregister { crkey, iekey, aptpl }),
        2 => Ok(Action::NvmeReplace { crkey, nrkey, iekey, aptpl }),
        _ => Err(Status::INVALID_FIELD),
    }
}

fn rtype(cdw10: u32) -> Result<ResType, PrError> {
    ResType::from_nvme(((cdw10 >> 8) & 0xff) as u8).ok_or(PrError::InvalidType)
}

/// Reservation Acquire: CDW10 RACQA (2:0), IEKEY (3), RTYPE (15:8); data CRKEY, PRKEY (LE).
pub fn decode_acquire(cdw10: u32, data: &[u8]) -> Result<Action, Status> {
    if data.len() < 16 {
        return Err(Status::INVALID_FIELD);
    }
    let key = le64(&data[0..8]);
    let sa_key = le64(&data[8..16]);
    match cdw10 & 0x7 {
        0 => Ok(Action::Reserve { key, rtype: Ok(rtype(cdw10).map_err(|_| Status::INVALID_FIELD)?) }),
        // Preempt with a type the spec ignores (only registrations removed) is accepted: Linux
        // before the 2025 fix sends RTYPE 0 when fencing.
        a @ (1 | 2) => Ok(Action::Preempt { key, sa_key, rtype: rtype(cdw10), abort: a == 2 }),
        _ => Err(Status::INVALID_FIELD),
    }
}

/// Reservation Release: CDW10 RRELA (2:0), IEKEY (3), RTYPE (15:8); data CRKEY (LE).
pub fn decode_release(cdw10: u32, data: &[u8]) -> Result<Action, Status> {
    if data.len() < 8 {
        return Err(Status::INVALID_FIELD);
    }
    let key = le64(&data[0..8]);
    match cdw10 & 0x7 {
        0 => Ok(Action::Release { key, rtype: rtype(cdw10) }),
        1 => Ok(Action::Clear { key }),
        _ => Err(Status::INVALID_FIELD),
    }
}

/// Reservation Report: CDW10 NUMD (0's based dwords), CDW11 EDS (bit 0). `host_id_128`: the
/// controller's hosts use 128-bit host identifiers (always over fabrics), which only the
/// extended data structure can carry (else Host Identifier Inconsistent Format). The data is
/// min(NUMD, `max_len`) long, `max_len` being the host's buffer: a NUMD of FFFFFFFFh costs what
/// that buffer holds, not 16 GiB.
pub fn report(cdw10: u32, cdw11: u32, s: &PrState, host_id_128: bool, max_len: usize) -> Result<Vec<u8>, Status> {
    let len = ((cdw10 as usize) + 1).saturating_mul(4).min(max_len);
    let eds = cdw11 & 1 != 0;
    if !eds && host_id_128 {
        return Err(Status::HOST_ID_INCONSISTENT_FORMAT);
    }
    let (hdr, entry) = if eds { (64, 64) } else { (24, 24) };
    let mut d = vec![0u8; hdr + entry * s.registrants.len()];
    d[0..4].copy_from_slice(&s.generation.to_le_bytes());
    d[4] = s.reservation.map(|r| r.rtype.nvme_code()).unwrap_or(0);
    d[5..7].copy_from_slice(&(s.registrants.len().min(u16::MAX as usize) as u16).to_le_bytes());
    d[9] = s.aptpl as u8; // PTPLS
    for (i, g) in s.registrants.iter().enumerate() {
        let e = &mut d[hdr + i * entry..hdr + (i + 1) * entry];
        e[0..2].copy_from_slice(&0xffffu16.to_le_bytes()); // CNTLID: a host-level registration
        e[2] = s.is_holder(g) as u8; // RCSTS: holds the reservation
        let host_id = match &g.nexus {
            Nexus::Nvme { host_id, .. } => *host_id,
            Nexus::Iscsi { .. } => [0; 16],
        };
        if eds {
            e[8..16].copy_from_slice(&g.key.to_le_bytes());
            e[16..32].copy_from_slice(&host_id);
        } else {
            e[8..16].copy_from_slice(&host_id[..8]);
            e[16..24].copy_from_slice(&g.key.to_le_bytes());
        }
    }
    d.resize(len, 0);
    Ok(d)
}

/// Run a reservation command for host `who` on `volume`. See the module docs for the contract.
/// `max_out` is the host's buffer for controller-to-host data (Report never returns more,
/// whatever NUMD says).
#[allow(clippy::too_many_arguments)]
pub fn execute(
    volume: &Volume,
    who: &Initiator,
    opc: u8,
    cdw10: u32,
    cdw11: u32,
    data: &[u8],
    max_out: usize,
    done: impl FnOnce(Completion) + Send + 'static,
) -> Option<Completion> {
    let pr = volume.reservations();
    let host = nexus_ref(who);
    if opc == OPC_RESERVATION_REPORT {
        return Some(match pr.read(|s| report(cdw10, cdw11, s, true, max_out)) {
            Ok(data) => Completion { status: Status::SUCCESS, data },
            Err(st) => Completion::status(st),
        });
    }
    if volume.check(who, CommandClass::PrOut).is_err() {
        return Some(Completion::status(Status::RESERVATION_CONFLICT)); // SPC-2 RESERVE of an iSCSI nexus
    }
    let action = match opc {
        OPC_RESERVATION_REGISTER => decode_register(cdw10, data),
        OPC_RESERVATION_ACQUIRE => decode_acquire(cdw10, data),
        OPC_RESERVATION_RELEASE => decode_release(cdw10, data),
        _ => Err(Status::INVALID_OPCODE),
    };
    let action = match action {
        Ok(a) => a,
        Err(st) => return Some(Completion::status(st)),
    };
    run(pr, host, action, done)
}

fn to_completion(r: Result<Applied, PrError>) -> Completion {
    match r {
        Ok(_) => Completion::status(Status::SUCCESS),
        Err(e) => Completion::status(status_of(&e)),
    }
}

fn run(
    pr: &Arc<crate::reservation::Reservations>,
    host: crate::reservation::NexusRef,
    action: Action,
    done: impl FnOnce(Completion) + Send + 'static,
) -> Option<Completion> {
    pr.execute(host, action, Box::new(move |r| done(to_completion(r)))).map(to_completion)
}

/// The Reservation Notification log page (80h, 64 bytes) for `who`, consuming one entry; an
/// empty page (type 0) when none is pending. `nsid` is the namespace the front-end exports the
/// volume as.
pub fn notification_log(volume: &Volume, who: &Initiator, nsid: u32) -> [u8; 64] {
    let mut d = [0u8; 64];
    if let Some((count, ev, left)) = volume.reservations().take_notification(nexus_ref(who)) {
        d[0..8].copy_from_slice(&count.to_le_bytes());
        d[8] = ev.nvme_log_type();
        d[9] = left.min(255) as u8;
        d[12..16].copy_from_slice(&nsid.to_le_bytes());
    }
    d
}

/// Should the controller of `who` post the Reservation Log Page Available event?
pub fn notification_pending(volume: &Volume, who: &Initiator) -> bool {
    let pr = volume.reservations();
    pr.events_pending() && pr.has_event(nexus_ref(who))
}

/// Get Features 82h / 83h: the CDW0 value.
pub fn get_features(volume: &Volume, who: &Initiator, fid: u8) -> Result<u32, Status> {
    let pr = volume.reservations();
    match fid {
        FEAT_RESERVATION_NOTIFICATION_MASK => Ok(pr.notification_mask(nexus_ref(who))),
        FEAT_RESERVATION_PERSISTENCE => Ok(pr.read(|s| s.aptpl) as u32),
        _ => Err(Status::INVALID_FIELD),
    }
}

/// Set Features 82h (CDW11 bits 1..3: mask Registration Preempted / Reservation Released /
/// Reservation Preempted) or 83h (CDW11 bit 0: PTPL; durable before completion, so it may
/// complete later through `done` like [`execute`]).
pub fn set_features(
    volume: &Volume,
    who: &Initiator,
    fid: u8,
    cdw11: u32,
    done: impl FnOnce(Completion) + Send + 'static,
) -> Option<Completion> {
    let pr = volume.reservations();
    match fid {
        FEAT_RESERVATION_NOTIFICATION_MASK => {
            pr.set_notification_mask(nexus_ref(who), cdw11);
            Some(Completion::status(Status::SUCCESS))
        }
        FEAT_RESERVATION_PERSISTENCE => run(pr, nexus_ref(who), Action::SetPersist { ptpl: cdw11 & 1 != 0 }, done),
        _ => Some(Completion::status(Status::INVALID_FIELD)),
    }
}

/// The NVMe notification type of an event, for callers formatting their own log pages.
pub fn log_type(e: PrEvent) -> u8 {
    e.nvme_log_type()
}
