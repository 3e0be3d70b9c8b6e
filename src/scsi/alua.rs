//! Implicit asymmetric logical unit access (SPC-4 5.16): the commands a target port group in
//! each state serves, the sense of those it refuses, and REPORT TARGET PORT GROUPS (SPC-4 6.37).
//! Each node's ports are one target port group (`cluster::PortGroups`); the relative target port
//! identifiers are the iSCSI portal group tags.

use super::sense::{sense_key, Sense};
use crate::cluster::{AccessState, PortGroup};

/// MAINTENANCE IN service action of REPORT TARGET PORT GROUPS.
pub const SA_REPORT_TARGET_PORT_GROUPS: u8 = 0x0a;
/// IMPLICIT TRANSITION TIME of the extended header, seconds.
pub const IMPLICIT_TRANSITION_SECS: u8 = 10;
/// Supported states of every group (SPC-4 table 307 byte 1): T_SUP, U_SUP, S_SUP, AN_SUP, AO_SUP.
pub const SUPPORTED_STATES: u8 = 0x80 | 0x08 | 0x04 | 0x02 | 0x01;
/// STATUS CODE 02h: altered by implicit ALUA behaviour (SPC-4 table 308).
const STATUS_IMPLICIT: u8 = 0x02;

/// The sense of a command refused in `state`: NOT READY, LOGICAL UNIT NOT ACCESSIBLE, with the
/// state's qualifier (SPC-4 5.16.2.4.4 .. 5.16.2.4.6, Annex D).
pub fn not_accessible(state: AccessState) -> Sense {
    let ascq = match state {
        AccessState::Transitioning => 0x0a,
        AccessState::Standby => 0x0b,
        _ => 0x0c,
    };
    Sense::new(sense_key::NOT_READY, 0x04, ascq)
}

/// Whether the device server serves `cdb` through a port in `state` (SPC-4 5.16.2.4): every
/// command in the active states; in standby INQUIRY, LOG SELECT/SENSE, MODE SELECT/SENSE, REPORT
/// LUNS, RECEIVE DIAGNOSTIC RESULTS, SEND DIAGNOSTIC, REPORT/SET TARGET PORT GROUPS, REQUEST SENSE,
/// PERSISTENT RESERVE IN/OUT and the echo buffer of READ/WRITE BUFFER; in unavailable INQUIRY,
/// REPORT LUNS, REPORT/SET TARGET PORT GROUPS, REQUEST SENSE and the echo buffer; while
/// transitioning INQUIRY, REPORT LUNS, REPORT TARGET PORT GROUPS, REQUEST SENSE and the echo buffer.
pub fn allowed(cdb: &[u8], state: AccessState) -> bool {
    let op = cdb.first().copied().unwrap_or(0);
    let sa = cdb.get(1).copied().unwrap_or(0) & 0x1f;
    let echo = matches!(op, 0x3b | 0x3c) && matches!(sa, 0x0a | 0x0b); // READ/WRITE BUFFER echo modes
    let common = matches!(op, 0x12 | 0xa0 | 0x03) || (op == 0xa3 && sa == SA_REPORT_TARGET_PORT_GROUPS) || echo;
    let stpg = op == 0xa4 && sa == 0x0a;
    match state {
        AccessState::Optimized | AccessState::NonOptimized => true,
        AccessState::Standby => common || stpg || matches!(op, 0x4c | 0x4d | 0x15 | 0x55 | 0x1a | 0x5a | 0x1c | 0x1d | 0x5e | 0x5f),
        AccessState::Unavailable => common || stpg,
        AccessState::Transitioning => common,
    }
}

/// REPORT TARGET PORT GROUPS CDB (SPC-4 6.37, table 305).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtpgCdb {
    /// PARAMETER DATA FORMAT 001b: the extended header.
    pub extended: bool,
    pub alloc: usize,
}

impl RtpgCdb {
    pub fn decode(cdb: &[u8]) -> Result<RtpgCdb, Sense> {
        let extended = match cdb.get(1).copied().unwrap_or(0) >> 5 {
            0 => false,
            1 => true,
            _ => return Err(Sense::invalid_cdb_field(1, Some(7))),
        };
        let alloc = cdb.iter().skip(6).take(4).fold(0usize, |a, &b| (a << 8) | b as usize);
        Ok(RtpgCdb { extended, alloc })
    }
}

/// One target port group descriptor (SPC-4 table 307).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TpgDescriptor {
    pub pref: bool,
    pub state: AccessState,
    pub supported: u8,
    pub id: u16,
    pub status: u8,
    /// Relative target port identifiers of the group's ports.
    pub ports: Vec<u16>,
}

impl TpgDescriptor {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(if self.pref { 0x80 } else { 0 } | (self.state as u8 & 0x0f));
        out.push(self.supported);
        out.extend_from_slice(&self.id.to_be_bytes());
        out.push(0);
        out.push(self.status);
        out.push(0);
        let ports = &self.ports[..self.ports.len().min(255)];
        out.push(ports.len() as u8);
        for p in ports {
            // Target port descriptor (table 309): obsolete, then the relative target port id.
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&p.to_be_bytes());
        }
    }
}

/// REPORT TARGET PORT GROUPS parameter data (SPC-4 6.37, tables 306 and 307).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtpgData {
    pub extended: bool,
    pub groups: Vec<TpgDescriptor>,
}

impl RtpgData {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.groups.len() * 16);
        out.extend_from_slice(&[0; 4]);
        if self.extended {
            // FORMAT TYPE 001b, IMPLICIT TRANSITION TIME.
            out.extend_from_slice(&[0x10, IMPLICIT_TRANSITION_SECS, 0, 0]);
        }
        for g in &self.groups {
            g.encode(&mut out);
        }
        let len = (out.len() - 4) as u32;
        out[0..4].copy_from_slice(&len.to_be_bytes());
        out
    }
}

/// The descriptors of `groups` (the local one first, as `PortGroups::all` gives them); the port a
/// command came through (`own_port`) is listed in the local group even before the transport has
/// published its ports. `local_changed`: the local state was set by the cluster at least once.
pub fn descriptors(groups: &[PortGroup], own_port: Option<u16>, local_changed: bool) -> Vec<TpgDescriptor> {
    groups
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let mut ports = g.iscsi_ports.clone();
            if i == 0 {
                if let Some(p) = own_port.filter(|p| !ports.contains(p)) {
                    ports.push(p);
                    ports.sort_unstable();
                }
            }
            TpgDescriptor {
                pref: false,
                state: g.state,
                supported: SUPPORTED_STATES,
                id: g.id,
                status: if i == 0 && local_changed { STATUS_IMPLICIT } else { 0 },
                ports,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtpg_bytes_by_hand() {
        let groups = vec![
            PortGroup { id: 1, node: String::new(), state: AccessState::Optimized, iscsi_ports: vec![1] },
            PortGroup { id: 2, node: "b".into(), state: AccessState::Unavailable, iscsi_ports: vec![0x101, 0x102] },
        ];
        let d = RtpgData { extended: false, groups: descriptors(&groups, Some(3), false) }.encode();
        #[rustfmt::skip]
        let want = vec![
            0, 0, 0, 32,
            // group 1: AO, T/U/S/AN/AO supported, id 1, no status, 2 ports (1 and 3).
            0x00, 0x8f, 0, 1, 0, 0, 0, 2,
            0, 0, 0, 1,
            0, 0, 0, 3,
            // group 2: unavailable, 2 ports.
            0x03, 0x8f, 0, 2, 0, 0, 0, 2,
            0, 0, 1, 1,
            0, 0, 1, 2,
        ];
        assert_eq!(d, want);
        let e = RtpgData { extended: true, groups: descriptors(&groups[..1], None, true) }.encode();
        assert_eq!(e, vec![0, 0, 0, 16, 0x10, 10, 0, 0, 0x00, 0x8f, 0, 1, 0, 0x02, 0, 1, 0, 0, 0, 1]);
    }

    #[test]
    fn cdb_and_states() {
        let mut c = [0u8; 12];
        c[0] = 0xa3;
        c[1] = 0x0a;
        c[6..10].copy_from_slice(&100u32.to_be_bytes());
        assert_eq!(RtpgCdb::decode(&c).unwrap(), RtpgCdb { extended: false, alloc: 100 });
        c[1] = 0x2a;
        assert!(RtpgCdb::decode(&c).unwrap().extended);
        c[1] = 0x4a;
        let s = RtpgCdb::decode(&c).unwrap_err();
        assert_eq!((s.key, s.asc, s.field), (sense_key::ILLEGAL_REQUEST, 0x24, Some((true, 1, Some(7)))));
        let read = [0x28u8, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        assert!(allowed(&read, AccessState::NonOptimized));
        for s in [AccessState::Standby, AccessState::Unavailable, AccessState::Transitioning] {
            assert!(!allowed(&read, s));
            assert!(!allowed(&[0x00, 0, 0, 0, 0, 0], s), "TEST UNIT READY is not served");
            assert!(allowed(&[0x12, 0, 0, 0, 96, 0], s));
            assert!(allowed(&c[..1].iter().chain(&[0x0a]).copied().collect::<Vec<_>>(), s));
        }
        assert!(allowed(&[0x5e, 0, 0, 0, 0, 0, 0, 0, 0, 0], AccessState::Standby));
        assert!(!allowed(&[0x5e, 0, 0, 0, 0, 0, 0, 0, 0, 0], AccessState::Unavailable));
        assert_eq!(not_accessible(AccessState::Unavailable), Sense::new(2, 4, 0x0c));
        assert_eq!(not_accessible(AccessState::Transitioning), Sense::new(2, 4, 0x0a));
        assert_eq!(not_accessible(AccessState::Standby), Sense::new(2, 4, 0x0b));
    }
}
