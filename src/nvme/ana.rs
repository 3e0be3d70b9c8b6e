//! Asymmetric Namespace Access (NVMe Base 2.0 8.1): ANA states, the path-related status codes an
//! I/O command gets on a path that is not accessible, the Identify Controller ANA fields and the
//! ANA log page (LID 0Ch).
//!
//! Palisade's ANA groups: one per namespace, group id = the namespace's ANAGRPID, which defaults
//! to its NSID (SPDK's default; `nvmf_subsystem_add_ns anagrpid` may name another). The same on
//! every node, so a host sees one group per namespace on every path, in the state of that path.

use super::spec::Status;
use crate::cluster::AccessState;

/// ANA state codes (Base 2.0 Figure 220, ANA State field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum AnaState {
    Optimized = 0x01,
    NonOptimized = 0x02,
    Inaccessible = 0x03,
    PersistentLoss = 0x04,
    Change = 0x0F,
}

impl AnaState {
    pub fn from_u8(v: u8) -> Option<AnaState> {
        Some(match v {
            0x01 => AnaState::Optimized,
            0x02 => AnaState::NonOptimized,
            0x03 => AnaState::Inaccessible,
            0x04 => AnaState::PersistentLoss,
            0x0F => AnaState::Change,
            _ => return None,
        })
    }
    /// SPDK's names (nvmf_subsystem_listener_set_ana_state, nvmf_subsystem_get_listeners).
    pub fn name(self) -> &'static str {
        match self {
            AnaState::Optimized => "optimized",
            AnaState::NonOptimized => "non_optimized",
            AnaState::Inaccessible => "inaccessible",
            AnaState::PersistentLoss => "persistent_loss",
            AnaState::Change => "change",
        }
    }
    pub fn from_name(s: &str) -> Option<AnaState> {
        [AnaState::Optimized, AnaState::NonOptimized, AnaState::Inaccessible, AnaState::PersistentLoss, AnaState::Change]
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(s))
    }
    /// I/O commands are processed in the optimized and non-optimized states only (Base 8.1.3).
    pub fn is_accessible(self) -> bool {
        matches!(self, AnaState::Optimized | AnaState::NonOptimized)
    }
    /// The status of an I/O command on a path in this state (Base 2.0 Figure 103, path related
    /// status, SCT 3h), or None when it may run. Not DNR: the host retries on another path.
    pub fn io_status(self) -> Option<Status> {
        let sc = match self {
            AnaState::Optimized | AnaState::NonOptimized => return None,
            AnaState::PersistentLoss => sc::ANA_PERSISTENT_LOSS,
            AnaState::Inaccessible => sc::ANA_INACCESSIBLE,
            AnaState::Change => sc::ANA_TRANSITION,
        };
        Some(Status { sct: sct::PATH, sc, dnr: false })
    }
}

/// A target port group's access state in NVMe terms: standby and unavailable have no ANA
/// counterpart but inaccessible; transitioning is the change state.
impl From<AccessState> for AnaState {
    fn from(s: AccessState) -> AnaState {
        match s {
            AccessState::Optimized => AnaState::Optimized,
            AccessState::NonOptimized => AnaState::NonOptimized,
            AccessState::Standby | AccessState::Unavailable => AnaState::Inaccessible,
            AccessState::Transitioning => AnaState::Change,
        }
    }
}

/// Path related status (Base 2.0 4.6.1.2.4, Figure 105).
pub mod sct {
    pub const PATH: u8 = 0x3;
}
pub mod sc {
    pub const ANA_PERSISTENT_LOSS: u8 = 0x01;
    pub const ANA_INACCESSIBLE: u8 = 0x02;
    pub const ANA_TRANSITION: u8 = 0x03;
}

/// Log page identifier of the ANA log (Base 2.0 5.16.1.13).
pub const LID_ANA: u8 = 0x0c;
/// Get Log Page CDW10 LSP bit 0 for LID 0Ch: Return Groups Only (Base 2.0 Figure 198).
pub const LSP_RGO: u32 = 1 << 8;
/// Asynchronous event information, notice type: ANA change (Base 2.0 Figure 150).
pub const AER_INFO_ANA_CHANGE: u32 = 0x03;
/// Asynchronous Event Configuration / OAES bit 11: ANA change notices (Base 2.0 Figure 275, 5.27.1.7).
pub const AEC_ANA_CHANGE: u32 = 1 << 11;
/// ANATT we report: seconds a host waits for a change state to end.
pub const ANATT_SECS: u8 = 10;
/// ANACAP (Base 2.0 Figure 275, byte 343): optimized, non-optimized, inaccessible, persistent
/// loss and change states reported; ANAGRPID does not change while the namespace is attached.
pub const ANACAP: u8 = 0b0101_1111;
/// CMIC bit 3: ANA reporting (with bits 0 multiple ports and 1 multiple controllers).
pub const CMIC_ANA: u8 = 1 << 3;

/// The ANA fields of Identify Controller (Base 2.0 Figure 275, bytes 342..352 and CMIC, OAES).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdentifyAna {
    /// ANAGRPMAX and NANAGRPID: the highest group id (= the highest namespace id possible).
    pub max_groups: u32,
}

impl IdentifyAna {
    pub fn encode(&self, page: &mut [u8; 4096]) {
        page[76] |= CMIC_ANA;
        let oaes = u32::from_le_bytes(page[92..96].try_into().unwrap()) | AEC_ANA_CHANGE;
        page[92..96].copy_from_slice(&oaes.to_le_bytes());
        page[342] = ANATT_SECS;
        page[343] = ANACAP;
        page[344..348].copy_from_slice(&self.max_groups.to_le_bytes());
        page[348..352].copy_from_slice(&self.max_groups.to_le_bytes());
    }
}

/// Identify Namespace ANAGRPID (NVM Command Set Figure 97, bytes 92..95).
pub fn set_ns_anagrpid(page: &mut [u8; 4096], anagrpid: u32) {
    page[92..96].copy_from_slice(&anagrpid.to_le_bytes());
}

/// One ANA group descriptor (Base 2.0 Figure 220).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnaGroupDesc {
    pub grpid: u32,
    pub change_count: u64,
    pub state: AnaState,
    pub nsids: Vec<u32>,
}

/// The ANA log page (Base 2.0 5.16.1.13, Figure 219): header, then one descriptor per group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnaLog {
    pub change_count: u64,
    pub groups: Vec<AnaGroupDesc>,
}

impl AnaLog {
    /// Encode; with `rgo` (Return Groups Only) the descriptors carry no NSIDs.
    pub fn encode(&self, rgo: bool, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.change_count.to_le_bytes());
        out.extend_from_slice(&(self.groups.len().min(u16::MAX as usize) as u16).to_le_bytes());
        out.extend_from_slice(&[0; 6]);
        for g in self.groups.iter().take(u16::MAX as usize) {
            let n = if rgo { 0 } else { g.nsids.len() };
            out.extend_from_slice(&g.grpid.to_le_bytes());
            out.extend_from_slice(&(n as u32).to_le_bytes());
            out.extend_from_slice(&g.change_count.to_le_bytes());
            out.push(g.state as u8);
            out.extend_from_slice(&[0; 15]);
            for id in &g.nsids[..n] {
                out.extend_from_slice(&id.to_le_bytes());
            }
        }
    }

    /// Decode (hosts, tests); None if the page is cut short.
    pub fn decode(b: &[u8]) -> Option<AnaLog> {
        let le32 = |b: &[u8], at: usize| -> Option<u32> { Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?)) };
        let change_count = u64::from_le_bytes(b.get(0..8)?.try_into().ok()?);
        let n = u16::from_le_bytes(b.get(8..10)?.try_into().ok()?) as usize;
        let mut at = 16;
        let mut groups = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            let grpid = le32(b, at)?;
            let nn = le32(b, at + 4)? as usize;
            let cc = u64::from_le_bytes(b.get(at + 8..at + 16)?.try_into().ok()?);
            let state = AnaState::from_u8(*b.get(at + 16)? & 0x0f)?;
            at += 32;
            let mut nsids = Vec::with_capacity(nn.min(1024));
            for i in 0..nn {
                nsids.push(le32(b, at + 4 * i)?);
            }
            at += 4 * nn;
            groups.push(AnaGroupDesc { grpid, change_count: cc, state, nsids });
        }
        Some(AnaLog { change_count, groups })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Figures 219/220 by hand: 16-byte header, 32-byte descriptor head, 4-byte NSIDs.
    #[test]
    fn ana_log_bytes() {
        let log = AnaLog {
            change_count: 0x0102,
            groups: vec![
                AnaGroupDesc { grpid: 1, change_count: 5, state: AnaState::Optimized, nsids: vec![1] },
                AnaGroupDesc { grpid: 7, change_count: 6, state: AnaState::Inaccessible, nsids: vec![7, 9] },
            ],
        };
        let mut b = Vec::new();
        log.encode(false, &mut b);
        let mut want = vec![0x02, 0x01, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0];
        want.extend_from_slice(&[1, 0, 0, 0, 1, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0x01]);
        want.extend_from_slice(&[0; 15]);
        want.extend_from_slice(&[1, 0, 0, 0]);
        want.extend_from_slice(&[7, 0, 0, 0, 2, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0x03]);
        want.extend_from_slice(&[0; 15]);
        want.extend_from_slice(&[7, 0, 0, 0, 9, 0, 0, 0]);
        assert_eq!(b, want);
        assert_eq!(AnaLog::decode(&b).unwrap(), log);
        // Return Groups Only: no NSIDs, NNSID 0.
        log.encode(true, &mut b);
        assert_eq!(b.len(), 16 + 2 * 32);
        assert_eq!(&b[16 + 4..16 + 8], &[0, 0, 0, 0]);
        assert!(AnaLog::decode(&b[..40]).is_none(), "cut short");
    }

    #[test]
    fn states_and_status() {
        assert_eq!(AnaState::from(AccessState::Unavailable), AnaState::Inaccessible);
        assert_eq!(AnaState::from(AccessState::Transitioning), AnaState::Change);
        assert_eq!(AnaState::Optimized.io_status(), None);
        let s = AnaState::Inaccessible.io_status().unwrap();
        assert_eq!((s.sct, s.sc, s.dnr), (3, 2, false));
        // Status field: SC bits 8:1, SCT 11:9 -> 0x0604 for 03/02.
        assert_eq!(s.raw(), 0x0604);
        assert_eq!(AnaState::Change.io_status().unwrap().sc, 3);
        assert_eq!(AnaState::PersistentLoss.io_status().unwrap().sc, 1);
        assert_eq!(AnaState::from_name("NON_OPTIMIZED"), Some(AnaState::NonOptimized));
        assert_eq!(AnaState::from_name("bogus"), None);
    }

    #[test]
    fn identify_fields() {
        let mut p = [0u8; 4096];
        p[76] = 0b011;
        p[92] = 0x00;
        p[93] = 0x01; // OAES bit 8 already set
        IdentifyAna { max_groups: 32 }.encode(&mut p);
        assert_eq!(p[76], 0b1011);
        assert_eq!(u32::from_le_bytes(p[92..96].try_into().unwrap()), (1 << 8) | (1 << 11));
        assert_eq!((p[342], p[343]), (10, 0x5f));
        assert_eq!(&p[344..352], &[32, 0, 0, 0, 32, 0, 0, 0]);
        set_ns_anagrpid(&mut p, 0x01020304);
        assert_eq!(&p[92..96], &[4, 3, 2, 1]);
    }
}
