//! SCSI persistent reservations on the wire (SPC-4 6.15 PERSISTENT RESERVE IN, 6.16 PERSISTENT
//! RESERVE OUT, SPC-2 RESERVE/RELEASE): decoders and encoders as pure functions, plus
//! [`execute`], the entry point the SCSI core routes opcodes 5Eh, 5Fh, 16h, 17h, 56h, 57h to.
//!
//! Wiring for the SCSI core and the iSCSI front-end:
//! - `ScsiPort::submit` routes PR IN/OUT and RESERVE/RELEASE (6)/(10) to [`execute`].
//! - Before any other command (except INQUIRY, REPORT LUNS, REQUEST SENSE) it reports
//!   [`unit_attention`] if that returns a sense, and checks non-I/O commands with
//!   `lun.volume.check(&port.initiator, command_class(cdb))` (block I/O is checked by
//!   `Volume::submit`).
//! - A PR OUT that must be persisted or drained completes later: the handler owning the port
//!   receives a [`Deferred`] message and calls [`take_deferred`] from `Handler::on_message`.
//! - On I_T nexus loss and LOGICAL UNIT RESET call `Reservations::nexus_lost` (SPC-2
//!   reservations end there; persistent ones do not).

use std::any::Any;
use std::sync::Arc;

use super::{sense_key, status, Lun, ScsiCommand, ScsiPort, ScsiResponse, Sense};
use crate::reactor::{Core, HandlerRef};
use crate::reservation::{Action, CommandClass, Nexus, PrError, PrEvent, PrState, ResType};
use crate::volume::pr_gate::nexus_ref;
use crate::volume::Denied;

pub const PERSISTENT_RESERVE_IN: u8 = 0x5e;
pub const PERSISTENT_RESERVE_OUT: u8 = 0x5f;
pub const RESERVE6: u8 = 0x16;
pub const RELEASE6: u8 = 0x17;
pub const RESERVE10: u8 = 0x56;
pub const RELEASE10: u8 = 0x57;

/// PR OUT service actions (SPC-4 6.16.2 Table 181).
pub mod sa {
    pub const REGISTER: u8 = 0x00;
    pub const RESERVE: u8 = 0x01;
    pub const RELEASE: u8 = 0x02;
    pub const CLEAR: u8 = 0x03;
    pub const PREEMPT: u8 = 0x04;
    pub const PREEMPT_AND_ABORT: u8 = 0x05;
    pub const REGISTER_AND_IGNORE_EXISTING_KEY: u8 = 0x06;
    pub const REGISTER_AND_MOVE: u8 = 0x07;
    pub const READ_KEYS: u8 = 0x00;
    pub const READ_RESERVATION: u8 = 0x01;
    pub const REPORT_CAPABILITIES: u8 = 0x02;
    pub const READ_FULL_STATUS: u8 = 0x03;
}

/// iSCSI protocol identifier (SPC-4 7.6.1 Table 444).
const PROTO_ISCSI: u8 = 0x5;
/// Hosts of other protocols (NVMe) in READ FULL STATUS: "no specific protocol", with a
/// Palisade-defined body: 16-byte host identifier, then the host NQN, NUL-terminated, padded to 4.
const PROTO_NONE: u8 = 0xf;

pub const INVALID_FIELD_IN_PARAMETER_LIST: (u8, u8) = (0x26, 0x00);
pub const PARAMETER_LIST_LENGTH_ERROR: Sense = Sense::new(sense_key::ILLEGAL_REQUEST, 0x1a, 0x00);
pub const INVALID_RELEASE: Sense = Sense::new(sense_key::ILLEGAL_REQUEST, 0x26, 0x04);
pub const INSUFFICIENT_REGISTRATION_RESOURCES: Sense = Sense::new(sense_key::ILLEGAL_REQUEST, 0x55, 0x04);
pub const INTERNAL_TARGET_FAILURE: Sense = Sense::new(sense_key::HARDWARE_ERROR, 0x44, 0x00);

/// INVALID FIELD IN PARAMETER LIST with the field pointer (C/D = 0).
pub fn invalid_param(byte: u16, bit: Option<u8>) -> Sense {
    Sense { field: Some((false, byte, bit)), ..Sense::new(sense_key::ILLEGAL_REQUEST, 0x26, 0x00) }
}

/// How a failed PR command is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    Conflict,
    Check(Sense),
}

impl Failure {
    pub fn response(self, tag: u32) -> ScsiResponse {
        match self {
            Failure::Conflict => ScsiResponse::status(tag, status::RESERVATION_CONFLICT),
            Failure::Check(s) => ScsiResponse::check(tag, s),
        }
    }
}

/// Map an engine error of PR OUT service action `sa` to SCSI status and sense.
pub fn failure(e: &PrError) -> Failure {
    Failure::Check(match e {
        PrError::Conflict => return Failure::Conflict,
        PrError::InvalidType => Sense::invalid_cdb_field(2, Some(3)),
        PrError::InvalidScope => Sense::invalid_cdb_field(2, Some(7)),
        PrError::ZeroServiceActionKey => invalid_param(8, None),
        PrError::InvalidRelease => INVALID_RELEASE,
        PrError::MoveToSelf | PrError::InvalidTransportId => invalid_param(24, None),
        PrError::UnknownTargetPort(_) => invalid_param(18, None),
        PrError::SpecIPtUnsupported => invalid_param(20, Some(3)),
        PrError::Resources => INSUFFICIENT_REGISTRATION_RESOURCES,
        PrError::Persist(_) => INTERNAL_TARGET_FAILURE,
    })
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

/// Decode a PERSISTENT RESERVE OUT command (CDB + parameter list) into an engine action.
/// Bounds-checked; errors carry SPC-4's sense with field pointers.
pub fn decode_pr_out(cdb: &[u8], data: &[u8]) -> Result<Action, Failure> {
    if cdb.len() < 10 {
        return Err(Failure::Check(Sense::invalid_cdb_field(0, None)));
    }
    let action = cdb[1] & 0x1f;
    if action > sa::REGISTER_AND_MOVE {
        return Err(Failure::Check(Sense::invalid_cdb_field(1, Some(4))));
    }
    let scope = cdb[2] >> 4;
    let rtype = if scope != 0 {
        Err(PrError::InvalidScope)
    } else {
        ResType::from_scsi(cdb[2] & 0x0f).ok_or(PrError::InvalidType)
    };
    let plen = u32::from_be_bytes(cdb[5..9].try_into().expect("4 bytes")) as usize;
    let data = &data[..data.len().min(plen)];
    if action == sa::REGISTER_AND_MOVE {
        return decode_register_and_move(plen, data);
    }
    // SPEC_I_PT is not supported (SIP_C=0): refuse it before the length check, which assumes it.
    if data.len() > 20 && data[20] & 0x08 != 0 {
        return Err(Failure::Check(invalid_param(20, Some(3))));
    }
    if plen != 24 || data.len() < 24 {
        return Err(Failure::Check(PARAMETER_LIST_LENGTH_ERROR));
    }
    let key = be64(&data[0..8]);
    let sa_key = be64(&data[8..16]);
    let all_tg_pt = data[20] & 0x04 != 0;
    let aptpl = Some(data[20] & 0x01 != 0);
    Ok(match action {
        sa::REGISTER | sa::REGISTER_AND_IGNORE_EXISTING_KEY => Action::Register {
            key,
            sa_key,
            ignore_existing: action == sa::REGISTER_AND_IGNORE_EXISTING_KEY,
            all_tg_pt,
            spec_i_pt: false,
            aptpl,
        },
        sa::RESERVE => Action::Reserve { key, rtype: Ok(rtype.map_err(|e| Failure::Check(failure_sense(&e)))?) },
        sa::RELEASE => Action::Release { key, rtype },
        sa::CLEAR => Action::Clear { key },
        _ => Action::Preempt { key, sa_key, rtype, abort: action == sa::PREEMPT_AND_ABORT },
    })
}

fn failure_sense(e: &PrError) -> Sense {
    match failure(e) {
        Failure::Check(s) => s,
        Failure::Conflict => Sense::default(),
    }
}

fn decode_register_and_move(plen: usize, data: &[u8]) -> Result<Action, Failure> {
    if plen < 24 || data.len() < 24 {
        return Err(Failure::Check(PARAMETER_LIST_LENGTH_ERROR));
    }
    let tid_len = u32::from_be_bytes(data[20..24].try_into().expect("4 bytes")) as usize;
    if tid_len < 4 || 24usize.saturating_add(tid_len) > data.len() {
        return Err(Failure::Check(PARAMETER_LIST_LENGTH_ERROR));
    }
    let rel = u16::from_be_bytes([data[18], data[19]]);
    let dest = decode_transport_id(&data[24..24 + tid_len], rel).map_err(|at| Failure::Check(invalid_param(24 + at, None)))?;
    Ok(Action::RegisterAndMove {
        key: be64(&data[0..8]),
        sa_key: be64(&data[8..16]),
        dest,
        unreg: data[17] & 0x02 != 0,
        aptpl: Some(data[17] & 0x01 != 0),
    })
}

/// Decode a TransportID naming an initiator port; the iSCSI target port is left empty for the
/// engine to resolve from `rel_port_id`. Err carries the offending byte offset.
pub fn decode_transport_id(t: &[u8], rel_port_id: u16) -> Result<Nexus, u16> {
    if t.len() < 4 {
        return Err(0);
    }
    let format = t[0] >> 6;
    let proto = t[0] & 0x0f;
    let add = u16::from_be_bytes([t[2], t[3]]) as usize;
    if 4 + add > t.len() {
        return Err(2);
    }
    let body = &t[4..4 + add];
    match (proto, format) {
        (PROTO_ISCSI, 1) => {
            // SPC-4 7.6.4.6: iSCSI name, ",i,0x", ISID in hex, NUL-terminated.
            let end = body.iter().position(|&b| b == 0).ok_or(4u16)?;
            let s = std::str::from_utf8(&body[..end]).map_err(|_| 4u16)?;
            let (name, isid) = split_port(s).ok_or(4u16)?;
            // iSCSI names compare case-insensitively: the same spelling as the login's nexus.
            let name = name.to_ascii_lowercase();
            Ok(Nexus::Iscsi { initiator_port: format!("{name},i,0x{isid}"), target_port: String::new(), rel_port_id })
        }
        (PROTO_NONE, 0) if body.len() > 16 => {
            let host_id: [u8; 16] = body[..16].try_into().expect("16 bytes");
            let nqn = &body[16..];
            let end = nqn.iter().position(|&b| b == 0).ok_or(20u16)?;
            let nqn = std::str::from_utf8(&nqn[..end]).map_err(|_| 20u16)?;
            Ok(Nexus::Nvme { host_id, host_nqn: nqn.to_string() })
        }
        // Format 00b for iSCSI names a device, not a port: it cannot name the destination I_T nexus.
        _ => Err(0),
    }
}

/// Split "name,i,0xISID" (separator case-insensitive, ISID normalised to lowercase hex).
fn split_port(s: &str) -> Option<(&str, String)> {
    let lower = s.to_ascii_lowercase();
    let at = lower.rfind(",i,0x")?;
    let isid = &lower[at + 5..];
    if isid.is_empty() || isid.len() > 12 || !isid.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((&s[..at], format!("{:0>12}", isid)))
}

/// The TransportID of a registrant for READ FULL STATUS (SPC-4 7.6.4.6, format 01b for iSCSI).
pub fn encode_transport_id(n: &Nexus) -> Vec<u8> {
    let (head, mut body) = match n {
        Nexus::Iscsi { initiator_port, .. } => {
            let mut b = initiator_port.as_bytes().to_vec();
            b.push(0);
            (0x40 | PROTO_ISCSI, b)
        }
        Nexus::Nvme { host_id, host_nqn } => {
            let mut b = host_id.to_vec();
            b.extend_from_slice(host_nqn.as_bytes());
            b.push(0);
            (PROTO_NONE, b)
        }
    };
    // ADDITIONAL LENGTH is a multiple of 4 and the whole TransportID at least 24 bytes.
    while body.len() % 4 != 0 || body.len() < 20 {
        body.push(0);
    }
    let mut t = vec![head, 0];
    t.extend_from_slice(&(body.len() as u16).to_be_bytes());
    t.extend_from_slice(&body);
    t
}

/// PR IN READ KEYS (SPC-4 6.15.2).
pub fn read_keys(s: &PrState) -> Vec<u8> {
    read_keys_upto(s, usize::MAX)
}

/// READ KEYS data cut at `limit` bytes (the allocation length): the ADDITIONAL LENGTH still
/// counts every key, but no more is built than is sent.
fn read_keys_upto(s: &PrState, limit: usize) -> Vec<u8> {
    let full = 8 + 8 * s.registrants.len();
    let mut d = Vec::with_capacity(full.min(limit).max(8));
    d.extend_from_slice(&s.generation.to_be_bytes());
    d.extend_from_slice(&((8 * s.registrants.len()) as u32).to_be_bytes());
    for g in &s.registrants {
        if d.len() >= limit {
            break;
        }
        d.extend_from_slice(&g.key.to_be_bytes());
    }
    d.truncate(limit);
    d
}

/// PR IN READ RESERVATION (SPC-4 6.15.3).
pub fn read_reservation(s: &PrState) -> Vec<u8> {
    let mut d = Vec::with_capacity(24);
    d.extend_from_slice(&s.generation.to_be_bytes());
    match s.reservation {
        None => d.extend_from_slice(&0u32.to_be_bytes()),
        Some(r) => {
            d.extend_from_slice(&16u32.to_be_bytes());
            d.extend_from_slice(&s.reservation_key().to_be_bytes());
            d.extend_from_slice(&[0; 5]);
            d.push(r.rtype.scsi_code()); // scope 0 (LU_SCOPE) in the high nibble
            d.extend_from_slice(&[0; 2]);
        }
    }
    d
}

/// PR IN REPORT CAPABILITIES (SPC-4 6.15.4): CRH, ATP_C, PTPL_C, all six types; no SIP_C.
pub fn report_capabilities(aptpl: bool) -> Vec<u8> {
    let mut d = vec![0u8; 8];
    d[1] = 8;
    d[2] = 0x10 | 0x04 | 0x01; // CRH, ATP_C, PTPL_C
    d[3] = 0x80 | if aptpl { 0x01 } else { 0 }; // TMV, ALLOW COMMANDS 000b, PTPL_A
    d[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02; // WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX
    d[5] = 0x01; // EX_AC_AR
    d
}

/// PR IN READ FULL STATUS (SPC-4 6.15.5): one descriptor per registration with its TransportID.
pub fn read_full_status(s: &PrState) -> Vec<u8> {
    read_full_status_upto(s, usize::MAX)
}

/// READ FULL STATUS data cut at `limit` bytes (the allocation length). Up to 4096 registrants
/// with ~250-byte TransportIDs make ~1 MiB: descriptors past the limit are only measured, so
/// an 8-byte allocation length builds 8 bytes.
fn read_full_status_upto(s: &PrState, limit: usize) -> Vec<u8> {
    let mut descs = Vec::new();
    let mut total = 0usize;
    for g in &s.registrants {
        let tid = encode_transport_id(&g.nexus);
        total += 24 + tid.len();
        if 8 + descs.len() >= limit {
            continue;
        }
        let holder = s.is_holder(g);
        descs.extend_from_slice(&g.key.to_be_bytes());
        descs.extend_from_slice(&[0; 4]);
        descs.push(if g.all_tg_pt { 0x02 } else { 0 } | if holder { 0x01 } else { 0 });
        descs.push(match (holder, s.reservation) {
            (true, Some(r)) => r.rtype.scsi_code(),
            _ => 0,
        });
        descs.extend_from_slice(&[0; 4]);
        let rel = match &g.nexus {
            Nexus::Iscsi { rel_port_id, .. } if !g.all_tg_pt => *rel_port_id,
            _ => 0,
        };
        descs.extend_from_slice(&rel.to_be_bytes());
        descs.extend_from_slice(&(tid.len() as u32).to_be_bytes());
        descs.extend_from_slice(&tid);
    }
    let mut d = Vec::with_capacity(8 + descs.len());
    d.extend_from_slice(&s.generation.to_be_bytes());
    d.extend_from_slice(&(total as u32).to_be_bytes());
    d.extend_from_slice(&descs);
    d.truncate(limit);
    d
}

/// Decode a PERSISTENT RESERVE IN CDB and produce its full parameter data (the caller truncates
/// to the allocation length).
pub fn pr_in(cdb: &[u8], s: &PrState) -> Result<Vec<u8>, Failure> {
    pr_in_upto(cdb, s, usize::MAX)
}

/// [`pr_in`] building at most `limit` bytes (the allocation length, already truncated).
pub fn pr_in_upto(cdb: &[u8], s: &PrState, limit: usize) -> Result<Vec<u8>, Failure> {
    if cdb.len() < 10 {
        return Err(Failure::Check(Sense::invalid_cdb_field(0, None)));
    }
    let mut d = match cdb[1] & 0x1f {
        sa::READ_KEYS => read_keys_upto(s, limit),
        sa::READ_RESERVATION => read_reservation(s),
        sa::REPORT_CAPABILITIES => report_capabilities(s.aptpl),
        sa::READ_FULL_STATUS => read_full_status_upto(s, limit),
        _ => return Err(Failure::Check(Sense::invalid_cdb_field(1, Some(4)))),
    };
    d.truncate(limit);
    Ok(d)
}

/// RESERVE(6)/(10), RELEASE(6)/(10) CDB checks: third-party and extent reservations are not
/// supported (SPC-2 7.21, 7.23).
pub fn check_reserve_release_cdb(cdb: &[u8]) -> Result<(), Failure> {
    match cdb.first() {
        Some(&RESERVE6) | Some(&RELEASE6) if cdb.len() >= 6 => {
            if cdb[1] & 0x1f != 0 {
                return Err(Failure::Check(Sense::invalid_cdb_field(1, Some(4))));
            }
        }
        Some(&RESERVE10) | Some(&RELEASE10) if cdb.len() >= 10 => {
            if cdb[1] & 0x13 != 0 {
                return Err(Failure::Check(Sense::invalid_cdb_field(1, Some(4))));
            }
        }
        _ => return Err(Failure::Check(Sense::invalid_cdb_field(0, None))),
    }
    Ok(())
}

/// The unit attention sense of a reservation event (SPC-4 5.13: ASC 2Ah).
pub fn event_sense(e: PrEvent) -> Sense {
    Sense::new(sense_key::UNIT_ATTENTION, 0x2a, e.scsi_ascq())
}

/// A pending reservation unit attention for this nexus, consumed (reported exactly once). Costs
/// one atomic load when nothing is pending.
pub fn unit_attention(lun: &Lun, who: &crate::volume::Initiator) -> Option<Sense> {
    let pr = lun.volume.reservations();
    if !pr.events_pending() {
        return None;
    }
    pr.take_event(nexus_ref(who)).map(event_sense)
}

/// Conflict-table class of a SCSI command (SPC-4 5.13.1 Table 66, SBC-3 Table 13).
pub fn command_class(cdb: &[u8]) -> CommandClass {
    let Some(&op) = cdb.first() else { return CommandClass::StateChange };
    let sa1 = cdb.get(1).map(|b| b & 0x1f).unwrap_or(0);
    match op {
        0x00 | 0x03 | 0x12 | 0xa0 | 0x25 | 0x4d | PERSISTENT_RESERVE_IN | 0x86 | 0x87 => CommandClass::Always,
        RESERVE6 | RELEASE6 | RESERVE10 | RELEASE10 => CommandClass::Always, // own rules (execute)
        0x1e => {
            if cdb.get(4).is_some_and(|b| b & 0x03 != 0) {
                CommandClass::StateChange
            } else {
                CommandClass::Always
            }
        }
        // START STOP UNIT that only starts the unit is allowed; stopping or a power condition
        // change is not (SBC-3 Table 13).
        0x1b => {
            let b4 = cdb.get(4).copied().unwrap_or(0);
            if b4 & 0x01 != 0 && b4 >> 4 == 0 {
                CommandClass::Always
            } else {
                CommandClass::StateChange
            }
        }
        0x37 | 0xb7 => CommandClass::Read, // READ DEFECT DATA: allowed under WE, not EA (SBC-3 Table 13)
        0x9e if sa1 == 0x10 => CommandClass::Always, // READ CAPACITY(16)
        0x9e if sa1 == 0x12 => CommandClass::Read,   // GET LBA STATUS
        0xa3 => match sa1 {
            0x0c | 0x0d | 0x10 => CommandClass::InfoRead, // REPORT SUPPORTED OPCODES / TMFs, MGMT PROTOCOL IN
            _ => CommandClass::Always,                   // REPORT TARGET PGS, ALIASES, PRIORITY, TIMESTAMP...
        },
        0x08 | 0x28 | 0xa8 | 0x88 | 0x2f | 0xaf | 0x8f | 0x34 | 0x90 => CommandClass::Read,
        0x1a | 0x5a | 0x3c | 0x8c | 0x1c | 0xa2 => CommandClass::InfoRead,
        0x0a | 0x2a | 0xaa | 0x8a | 0x2e | 0xae | 0x8e | 0x41 | 0x93 | 0x42 | 0x89 | 0x8b | 0x35 | 0x91 | 0x04
        | 0x3f | 0x9f => CommandClass::Write,
        0x7f => match cdb.get(9) {
            Some(0x09) | Some(0x0a) => CommandClass::Read, // READ(32), VERIFY(32)
            _ => CommandClass::Write,
        },
        PERSISTENT_RESERVE_OUT => CommandClass::PrOut,
        // MODE SELECT, LOG SELECT, WRITE BUFFER, WRITE ATTRIBUTE, SEND DIAGNOSTIC, SECURITY
        // PROTOCOL OUT, MAINTENANCE OUT, EXTENDED COPY and anything unknown: like a write.
        _ => CommandClass::StateChange,
    }
}

/// A PR OUT that completed after persistence or a drain: delivered to the handler owning the
/// port as a message (see [`take_deferred`]).
#[derive(Debug)]
pub struct Deferred(pub ScsiResponse);

/// A PREEMPT AND ABORT has completed (every write of the preempted nexuses drained): delivered to
/// the handler of the port that issued it, just before its [`Deferred`] completion, so that the
/// transport can abort the tasks the preempted nexuses still hold on this volume (SPC-4
/// 5.13.11.4.5; with TAS=1 they end with TASK ABORTED status). Ports that ignore it leave those
/// tasks to finish: anything they submit from now on gets RESERVATION CONFLICT.
pub struct PreemptAbort {
    pub volume: Arc<crate::volume::Volume>,
    /// The removed registrations: (nexus, registered with ALL_TG_PT).
    pub preempted: Vec<(Nexus, bool)>,
}

impl PreemptAbort {
    /// Does this abort concern `who`?
    pub fn concerns(&self, who: &crate::volume::Initiator) -> bool {
        let me = nexus_ref(who);
        self.preempted.iter().any(|(n, all)| me.matches(n, *all))
    }
}

/// Call from `Handler::on_message`: a [`Deferred`] completion goes to the port's done queue
/// (then flush); any other message is handed back.
pub fn take_deferred(port: &mut ScsiPort, msg: Box<dyn Any + Send>) -> Result<(), Box<dyn Any + Send>> {
    let d = msg.downcast::<Deferred>()?;
    port.push_done(d.0);
    Ok(())
}

/// Run a PR IN / PR OUT / RESERVE / RELEASE command for `port` on `lun`; the response is pushed to
/// the port's done queue now or, for a PR OUT that waits for persistence or a drain, delivered
/// later to `me` as a [`Deferred`] message.
pub fn execute(port: &mut ScsiPort, core: &mut Core, me: HandlerRef, lun: &Arc<Lun>, cmd: ScsiCommand) {
    let tag = cmd.task_tag;
    let cdb = cmd.cdb();
    let pr = lun.volume.reservations();
    let who = nexus_ref(&port.initiator);
    let resp = match cdb[0] {
        PERSISTENT_RESERVE_IN => {
            let alloc = super::cdb::alloc_len(&cmd.cdb, 7, 2);
            pr.observe(who);
            match pr.read(|s| pr_in_upto(cdb, s, alloc)) {
                Ok(d) => ScsiResponse::from_bytes(tag, &d),
                Err(f) => f.response(tag),
            }
        }
        PERSISTENT_RESERVE_OUT => {
            // An SPC-2 reservation of another nexus refuses PR OUT (SPC-2 5.5.1).
            if let Err(Denied::ReservationConflict) = lun.volume.check(&port.initiator, CommandClass::PrOut) {
                return port.push_done(Failure::Conflict.response(tag));
            }
            let data = cmd.data_out.as_ref().map(|b| b.as_slice()).unwrap_or(&[]);
            let action = match decode_pr_out(cdb, data) {
                Ok(a) => a,
                Err(f) => return port.push_done(f.response(tag)),
            };
            let set = core.reactors().clone();
            let volume = lun.volume.clone();
            let done: crate::reservation::Done = Box::new(move |r| {
                let abort = match &r {
                    Ok(a) if a.abort && !a.removed.is_empty() => Some(PreemptAbort {
                        volume,
                        preempted: a.removed.iter().map(|g| (g.nexus.clone(), g.all_tg_pt)).collect(),
                    }),
                    _ => None,
                };
                let resp = match r {
                    Ok(_) => ScsiResponse::good(tag),
                    Err(e) => failure(&e).response(tag),
                };
                set.send(me.reactor, move |reactor| {
                    if let Some(a) = abort {
                        reactor.send_to_handler(me, Box::new(a));
                    }
                    reactor.send_to_handler(me, Box::new(Deferred(resp)));
                });
            });
            match pr.execute(who, action, done) {
                Some(Ok(_)) => ScsiResponse::good(tag),
                Some(Err(e)) => failure(&e).response(tag),
                None => return,
            }
        }
        RESERVE6 | RESERVE10 | RELEASE6 | RELEASE10 => match check_reserve_release_cdb(cdb) {
            Err(f) => f.response(tag),
            Ok(()) => {
                let r = if cdb[0] == RESERVE6 || cdb[0] == RESERVE10 { pr.reserve6(who) } else { pr.release6(who) };
                match r {
                    Ok(()) => ScsiResponse::good(tag),
                    Err(e) => failure(&e).response(tag),
                }
            }
        },
        _ => ScsiResponse::check(tag, super::INVALID_OPCODE),
    };
    port.push_done(resp);
}
