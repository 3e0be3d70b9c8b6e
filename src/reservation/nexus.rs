//! Who a registrant is: an iSCSI I_T nexus (initiator port + target port) or an NVMe host
//! (host identifier + host NQN). Owned [`Nexus`] in the engine, borrowed [`NexusRef`] on the I/O
//! path (built from the volume's `Initiator` without allocating).

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Nexus {
    /// `initiator_port` is the SCSI initiator port name: iSCSI name + ",i,0x" + ISID (RFC 7143
    /// 4.2.7.1), so a re-login with a new ISID is a new nexus. `target_port` is the target port
    /// name (target name + ",t,0x" + TPGT); `rel_port_id` its relative target port identifier.
    Iscsi { initiator_port: String, target_port: String, rel_port_id: u16 },
    /// NVMe host: Host Identifier (NVMe Base 5.27.1.25) and host NQN.
    Nvme { host_id: [u8; 16], host_nqn: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NexusRef<'a> {
    Iscsi { initiator_port: &'a str, target_port: &'a str, rel_port_id: u16 },
    Nvme { host_id: &'a [u8; 16], host_nqn: &'a str },
}

impl Nexus {
    pub fn as_ref(&self) -> NexusRef<'_> {
        match self {
            Nexus::Iscsi { initiator_port, target_port, rel_port_id } => {
                NexusRef::Iscsi { initiator_port, target_port, rel_port_id: *rel_port_id }
            }
            Nexus::Nvme { host_id, host_nqn } => NexusRef::Nvme { host_id, host_nqn },
        }
    }
    pub fn is_nvme(&self) -> bool {
        matches!(self, Nexus::Nvme { .. })
    }
    /// Human-readable form for logs and the management RPC.
    pub fn describe(&self) -> String {
        match self {
            Nexus::Iscsi { initiator_port, target_port, .. } => format!("{initiator_port} -> {target_port}"),
            Nexus::Nvme { host_id, host_nqn } => {
                format!("{host_nqn} (hostid {})", uuid::Uuid::from_bytes(*host_id).hyphenated())
            }
        }
    }
}

impl<'a> NexusRef<'a> {
    pub fn to_owned(self) -> Nexus {
        match self {
            NexusRef::Iscsi { initiator_port, target_port, rel_port_id } => Nexus::Iscsi {
                initiator_port: initiator_port.to_string(),
                target_port: target_port.to_string(),
                rel_port_id,
            },
            NexusRef::Nvme { host_id, host_nqn } => Nexus::Nvme { host_id: *host_id, host_nqn: host_nqn.to_string() },
        }
    }

    /// Is this nexus covered by a registration of `reg` made with `all_tg_pt`? ALL_TG_PT
    /// registers the initiator port through every target port (SPC-4 5.13.7), so only the
    /// initiator side must match.
    pub fn matches(self, reg: &Nexus, all_tg_pt: bool) -> bool {
        match (self, reg) {
            (
                NexusRef::Iscsi { initiator_port, target_port, .. },
                Nexus::Iscsi { initiator_port: ri, target_port: rt, .. },
            ) => initiator_port == ri && (all_tg_pt || target_port == rt),
            (NexusRef::Nvme { host_id, host_nqn }, Nexus::Nvme { host_id: rh, host_nqn: rn }) => {
                host_id == rh && host_nqn == rn
            }
            _ => false,
        }
    }

    /// Whether the exact and the wildcard fingerprints differ (only iSCSI nexuses name a port).
    pub fn has_target_port(self) -> bool {
        matches!(self, NexusRef::Iscsi { .. })
    }

    /// 64-bit FNV-style fingerprint (a word at a time) for the snapshot's sorted lookup table
    /// (`exact` = with the target port; the wildcard form covers ALL_TG_PT registrations). Matches
    /// are always confirmed by [`NexusRef::matches`], so a collision costs a compare, never a
    /// wrong answer.
    pub fn fingerprint(self, exact: bool) -> u64 {
        let mut h = Fnv::new();
        match self {
            NexusRef::Iscsi { initiator_port, target_port, .. } => {
                h.byte(b'I');
                h.bytes(initiator_port.as_bytes());
                if exact {
                    h.byte(0);
                    h.bytes(target_port.as_bytes());
                }
            }
            NexusRef::Nvme { host_id, host_nqn } => {
                h.byte(b'N');
                h.bytes(host_id);
                h.bytes(host_nqn.as_bytes());
            }
        }
        h.0
    }
}

struct Fnv(u64);
impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    #[inline]
    fn byte(&mut self, b: u8) {
        self.0 = (self.0 ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    /// Eight bytes per multiply: the check runs on every I/O of a reserved volume, and a
    /// byte-wise chain over an NVMe host NQN costs a noticeable share of a 4 KiB I/O.
    #[inline]
    fn bytes(&mut self, bs: &[u8]) {
        let mut chunks = bs.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            self.0 = (self.0 ^ w).wrapping_mul(0x0100_0000_01b3);
            self.0 ^= self.0 >> 29;
        }
        for &b in chunks.remainder() {
            self.byte(b);
        }
        self.byte(bs.len() as u8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iscsi(i: &str, t: &str) -> Nexus {
        Nexus::Iscsi { initiator_port: i.into(), target_port: t.into(), rel_port_id: 1 }
    }

    #[test]
    fn all_tg_pt_matches_every_target_port() {
        let reg = iscsi("iqn.a,i,0x1", "iqn.t,t,0x1");
        let other_port = iscsi("iqn.a,i,0x1", "iqn.t,t,0x2");
        assert!(!other_port.as_ref().matches(&reg, false));
        assert!(other_port.as_ref().matches(&reg, true));
        // A new ISID is a new initiator port.
        assert!(!iscsi("iqn.a,i,0x2", "iqn.t,t,0x1").as_ref().matches(&reg, true));
        let nv = Nexus::Nvme { host_id: [1; 16], host_nqn: "nqn.h".into() };
        assert!(!nv.as_ref().matches(&reg, true));
        assert!(nv.as_ref().matches(&nv, false));
        assert_ne!(reg.as_ref().fingerprint(true), other_port.as_ref().fingerprint(true));
        assert_eq!(reg.as_ref().fingerprint(false), other_port.as_ref().fingerprint(false));
    }
}
