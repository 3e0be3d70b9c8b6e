//! In-band authentication wire formats (NVMe Base 2.0 §8.13 "NVMe in-band authentication",
//! TP 8006 DH-HMAC-CHAP): the AUTH_Send / AUTH_Receive SQE fields and the DH-HMAC-CHAP
//! messages. Byte layouts follow Linux `include/linux/nvme.h` (the layouts Linux hosts and nvmet
//! put on the wire). Decoders check every length against the buffer and never panic.

/// SECP of AUTH_Send/AUTH_Receive: NVMe in-band authentication (Base 2.0 §5.3.x, Figure 552).
pub const SECP_DHCHAP: u8 = 0xe9;
/// SPSP0 / SPSP1 for DH-HMAC-CHAP.
pub const SPSP0: u8 = 0x01;
pub const SPSP1: u8 = 0x01;

/// Connect response dword 0 AUTHREQ bits (NVMe-oF 1.1 Figure 22): authentication required /
/// secure channel concatenation required.
pub const CONNECT_AUTHREQ_ATR: u32 = 1 << 17;
pub const CONNECT_AUTHREQ_ASCR: u32 = 1 << 18;

/// Status "Authentication Required" (SCT 1h, SC 91h; Base 2.0 Figure 103).
pub const SC_AUTH_REQUIRED: u8 = 0x91;

/// Message types (auth_type) and ids (auth_id), §8.13.5.
pub mod msg {
    pub const COMMON: u8 = 0x00;
    pub const DHCHAP: u8 = 0x01;
    pub const NEGOTIATE: u8 = 0x00;
    pub const CHALLENGE: u8 = 0x01;
    pub const REPLY: u8 = 0x02;
    pub const SUCCESS1: u8 = 0x03;
    pub const SUCCESS2: u8 = 0x04;
    pub const FAILURE2: u8 = 0xf0;
    pub const FAILURE1: u8 = 0xf1;
}

/// Hash identifiers (§8.13.5.2 Figure 201).
pub mod hash {
    pub const SHA256: u8 = 0x01;
    pub const SHA384: u8 = 0x02;
    pub const SHA512: u8 = 0x03;
}

/// DH group identifiers (§8.13.5.2 Figure 202).
pub mod dhgroup {
    pub const NULL: u8 = 0x00;
    pub const FFDHE2048: u8 = 0x01;
    pub const FFDHE3072: u8 = 0x02;
    pub const FFDHE4096: u8 = 0x03;
    pub const FFDHE6144: u8 = 0x04;
    pub const FFDHE8192: u8 = 0x05;
}

/// SC_C, secure channel concatenation (§8.13.5.2).
pub mod sc_c {
    pub const NOSC: u8 = 0x00;
    pub const NEWTLSPSK: u8 = 0x01;
    pub const REPLACETLSPSK: u8 = 0x02;
}

/// Failure reason code and explanations (§8.13.5.7 Figure 206).
pub mod reason {
    pub const FAILED: u8 = 0x01;
    /// Explanations.
    pub const EXP_FAILED: u8 = 0x01;
    pub const EXP_NOT_USABLE: u8 = 0x02;
    pub const EXP_CONCAT_MISMATCH: u8 = 0x03;
    pub const EXP_HASH_UNUSABLE: u8 = 0x04;
    pub const EXP_DHGROUP_UNUSABLE: u8 = 0x05;
    pub const EXP_INCORRECT_PAYLOAD: u8 = 0x06;
    pub const EXP_INCORRECT_PROTOCOL: u8 = 0x07;
}

/// Authentication protocol identifier of the DH-HMAC-CHAP descriptor.
pub const AUTHID_DHCHAP: u8 = 0x01;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthWireError {
    #[error("auth message truncated: need {need} bytes, have {have}")]
    Short { need: usize, have: usize },
    #[error("unexpected auth message type {0:#x}/{1:#x}")]
    Type(u8, u8),
    #[error("invalid field: {0}")]
    Field(&'static str),
}

fn need(b: &[u8], n: usize) -> Result<(), AuthWireError> {
    if b.len() < n {
        Err(AuthWireError::Short { need: n, have: b.len() })
    } else {
        Ok(())
    }
}

fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// AUTH_Send / AUTH_Receive SQE fields (Base 2.0 §5.3 / Figures 98, 100): byte 41 SPSP0, 42 SPSP1,
/// 43 SECP, 44..48 TL (send) or AL (receive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthSqe {
    pub spsp0: u8,
    pub spsp1: u8,
    pub secp: u8,
    pub len: u32,
}

impl AuthSqe {
    pub fn decode(sqe: &[u8; 64]) -> AuthSqe {
        AuthSqe { spsp0: sqe[41], spsp1: sqe[42], secp: sqe[43], len: le32(sqe, 44) }
    }
    pub fn encode(&self, sqe: &mut [u8; 64]) {
        sqe[41] = self.spsp0;
        sqe[42] = self.spsp1;
        sqe[43] = self.secp;
        sqe[44..48].copy_from_slice(&self.len.to_le_bytes());
    }
    pub fn dhchap(len: u32) -> AuthSqe {
        AuthSqe { spsp0: SPSP0, spsp1: SPSP1, secp: SECP_DHCHAP, len }
    }
    pub fn is_dhchap(&self) -> bool {
        self.secp == SECP_DHCHAP && self.spsp0 == SPSP0 && self.spsp1 == SPSP1
    }
}

/// AUTH_Negotiate (§8.13.5.2 Figure 199) with one DH-HMAC-CHAP protocol descriptor
/// (Figure 200: authid, rsvd, HALEN, DHLEN, 30 hash ids, 30 DH group ids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiate {
    pub t_id: u16,
    pub sc_c: u8,
    pub hashes: Vec<u8>,
    pub dhgroups: Vec<u8>,
}

impl Negotiate {
    const DESC: usize = 64;
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; 8 + Self::DESC];
        b[0] = msg::COMMON;
        b[1] = msg::NEGOTIATE;
        b[4..6].copy_from_slice(&self.t_id.to_le_bytes());
        b[6] = self.sc_c;
        b[7] = 1; // NAPD
        let d = &mut b[8..];
        d[0] = AUTHID_DHCHAP;
        let h = self.hashes.len().min(30);
        let g = self.dhgroups.len().min(30);
        d[2] = h as u8;
        d[3] = g as u8;
        d[4..4 + h].copy_from_slice(&self.hashes[..h]);
        d[34..34 + g].copy_from_slice(&self.dhgroups[..g]);
        b
    }
    /// Decode; the first DH-HMAC-CHAP descriptor among NAPD is used (others are other protocols).
    pub fn decode(b: &[u8]) -> Result<Negotiate, AuthWireError> {
        need(b, 8)?;
        if b[0] != msg::COMMON || b[1] != msg::NEGOTIATE {
            return Err(AuthWireError::Type(b[0], b[1]));
        }
        let napd = b[7] as usize;
        if napd == 0 {
            return Err(AuthWireError::Field("napd"));
        }
        need(b, 8 + napd * Self::DESC)?;
        for i in 0..napd {
            let d = &b[8 + i * Self::DESC..8 + (i + 1) * Self::DESC];
            if d[0] != AUTHID_DHCHAP {
                continue;
            }
            let (h, g) = (d[2] as usize, d[3] as usize);
            if h > 30 || g > 30 {
                return Err(AuthWireError::Field("halen/dhlen"));
            }
            return Ok(Negotiate { t_id: le16(b, 4), sc_c: b[6], hashes: d[4..4 + h].to_vec(), dhgroups: d[34..34 + g].to_vec() });
        }
        Err(AuthWireError::Field("no DH-HMAC-CHAP protocol descriptor"))
    }
}

/// DH-HMAC-CHAP_Challenge (§8.13.5.3 Figure 203): 16-byte header, HL bytes of C1, DHVLEN bytes
/// of the controller's DH public value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub t_id: u16,
    pub hash_id: u8,
    pub dhgid: u8,
    pub seqnum: u32,
    pub c1: Vec<u8>,
    pub dhv: Vec<u8>,
}

impl Challenge {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; 16];
        b[0] = msg::DHCHAP;
        b[1] = msg::CHALLENGE;
        b[4..6].copy_from_slice(&self.t_id.to_le_bytes());
        b[6] = self.c1.len() as u8;
        b[8] = self.hash_id;
        b[9] = self.dhgid;
        b[10..12].copy_from_slice(&(self.dhv.len() as u16).to_le_bytes());
        b[12..16].copy_from_slice(&self.seqnum.to_le_bytes());
        b.extend_from_slice(&self.c1);
        b.extend_from_slice(&self.dhv);
        b
    }
    pub fn decode(b: &[u8]) -> Result<Challenge, AuthWireError> {
        need(b, 16)?;
        if b[0] != msg::DHCHAP || b[1] != msg::CHALLENGE {
            return Err(AuthWireError::Type(b[0], b[1]));
        }
        let hl = b[6] as usize;
        let dhvlen = le16(b, 10) as usize;
        need(b, 16 + hl + dhvlen)?;
        Ok(Challenge { t_id: le16(b, 4), hash_id: b[8], dhgid: b[9], seqnum: le32(b, 12), c1: b[16..16 + hl].to_vec(), dhv: b[16 + hl..16 + hl + dhvlen].to_vec() })
    }
}

/// DH-HMAC-CHAP_Reply (§8.13.5.4 Figure 204): header, HL bytes of R1, HL bytes of C2 (valid when
/// CVALID), DHVLEN bytes of the host's DH public value. SEQNUM is S2 (0: not bidirectional).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub t_id: u16,
    pub cvalid: bool,
    pub seqnum: u32,
    pub r1: Vec<u8>,
    pub c2: Vec<u8>,
    pub dhv: Vec<u8>,
}

impl Reply {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; 16];
        b[0] = msg::DHCHAP;
        b[1] = msg::REPLY;
        b[4..6].copy_from_slice(&self.t_id.to_le_bytes());
        b[6] = self.r1.len() as u8;
        b[8] = self.cvalid as u8;
        b[10..12].copy_from_slice(&(self.dhv.len() as u16).to_le_bytes());
        b[12..16].copy_from_slice(&self.seqnum.to_le_bytes());
        b.extend_from_slice(&self.r1);
        let mut c2 = self.c2.clone();
        c2.resize(self.r1.len(), 0);
        b.extend_from_slice(&c2);
        b.extend_from_slice(&self.dhv);
        b
    }
    pub fn decode(b: &[u8]) -> Result<Reply, AuthWireError> {
        need(b, 16)?;
        if b[0] != msg::DHCHAP || b[1] != msg::REPLY {
            return Err(AuthWireError::Type(b[0], b[1]));
        }
        let hl = b[6] as usize;
        let dhvlen = le16(b, 10) as usize;
        need(b, 16 + 2 * hl + dhvlen)?;
        Ok(Reply {
            t_id: le16(b, 4),
            cvalid: b[8] != 0,
            seqnum: le32(b, 12),
            r1: b[16..16 + hl].to_vec(),
            c2: b[16 + hl..16 + 2 * hl].to_vec(),
            dhv: b[16 + 2 * hl..16 + 2 * hl + dhvlen].to_vec(),
        })
    }
}

/// DH-HMAC-CHAP_Success1 (§8.13.5.5 Figure 205): header, HL bytes of R2 (valid when RVALID).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Success1 {
    pub t_id: u16,
    pub hl: u8,
    pub rvalid: bool,
    pub r2: Vec<u8>,
}

impl Success1 {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; 16];
        b[0] = msg::DHCHAP;
        b[1] = msg::SUCCESS1;
        b[4..6].copy_from_slice(&self.t_id.to_le_bytes());
        b[6] = self.hl;
        b[8] = self.rvalid as u8;
        let mut r2 = self.r2.clone();
        r2.resize(self.hl as usize, 0);
        b.extend_from_slice(&r2);
        b
    }
    pub fn decode(b: &[u8]) -> Result<Success1, AuthWireError> {
        need(b, 16)?;
        if b[0] != msg::DHCHAP || b[1] != msg::SUCCESS1 {
            return Err(AuthWireError::Type(b[0], b[1]));
        }
        let hl = b[6];
        need(b, 16 + hl as usize)?;
        Ok(Success1 { t_id: le16(b, 4), hl, rvalid: b[8] != 0, r2: b[16..16 + hl as usize].to_vec() })
    }
}

/// DH-HMAC-CHAP_Success2 (§8.13.5.6): 16 bytes, only the transaction id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Success2 {
    pub t_id: u16,
}

impl Success2 {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; 16];
        b[0] = msg::DHCHAP;
        b[1] = msg::SUCCESS2;
        b[4..6].copy_from_slice(&self.t_id.to_le_bytes());
        b
    }
    pub fn decode(b: &[u8]) -> Result<Success2, AuthWireError> {
        need(b, 16)?;
        if b[0] != msg::DHCHAP || b[1] != msg::SUCCESS2 {
            return Err(AuthWireError::Type(b[0], b[1]));
        }
        Ok(Success2 { t_id: le16(b, 4) })
    }
}

/// AUTH_Failure1 (controller to host) / AUTH_Failure2 (host to controller) (§8.13.5.7
/// Figure 206): common message, 8 bytes (Linux pads to 16 on the wire; both are accepted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// `msg::FAILURE1` or `msg::FAILURE2`.
    pub id: u8,
    pub t_id: u16,
    pub reason: u8,
    pub explanation: u8,
}

impl Failure {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; 16];
        b[0] = msg::COMMON;
        b[1] = self.id;
        b[4..6].copy_from_slice(&self.t_id.to_le_bytes());
        b[6] = self.reason;
        b[7] = self.explanation;
        b
    }
    pub fn decode(b: &[u8]) -> Result<Failure, AuthWireError> {
        need(b, 8)?;
        if b[0] != msg::COMMON || (b[1] != msg::FAILURE1 && b[1] != msg::FAILURE2) {
            return Err(AuthWireError::Type(b[0], b[1]));
        }
        Ok(Failure { id: b[1], t_id: le16(b, 4), reason: b[6], explanation: b[7] })
    }
}

/// Any message, by its type and id (what a receiver that does not know what comes next uses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Negotiate(Negotiate),
    Challenge(Challenge),
    Reply(Reply),
    Success1(Success1),
    Success2(Success2),
    Failure(Failure),
}

impl Message {
    pub fn decode(b: &[u8]) -> Result<Message, AuthWireError> {
        need(b, 2)?;
        Ok(match (b[0], b[1]) {
            (msg::COMMON, msg::NEGOTIATE) => Message::Negotiate(Negotiate::decode(b)?),
            (msg::DHCHAP, msg::CHALLENGE) => Message::Challenge(Challenge::decode(b)?),
            (msg::DHCHAP, msg::REPLY) => Message::Reply(Reply::decode(b)?),
            (msg::DHCHAP, msg::SUCCESS1) => Message::Success1(Success1::decode(b)?),
            (msg::DHCHAP, msg::SUCCESS2) => Message::Success2(Success2::decode(b)?),
            (msg::COMMON, msg::FAILURE1 | msg::FAILURE2) => Message::Failure(Failure::decode(b)?),
            (t, i) => return Err(AuthWireError::Type(t, i)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrips() {
        let n = Negotiate { t_id: 7, sc_c: 0, hashes: vec![1, 2, 3], dhgroups: vec![0, 1, 5] };
        assert_eq!(Negotiate::decode(&n.encode()).unwrap(), n);
        assert_eq!(n.encode().len(), 72);
        let c = Challenge { t_id: 7, hash_id: 1, dhgid: 1, seqnum: 9, c1: vec![3; 32], dhv: vec![4; 256] };
        assert_eq!(Challenge::decode(&c.encode()).unwrap(), c);
        let r = Reply { t_id: 7, cvalid: true, seqnum: 5, r1: vec![1; 48], c2: vec![2; 48], dhv: vec![] };
        assert_eq!(Reply::decode(&r.encode()).unwrap(), r);
        let s = Success1 { t_id: 7, hl: 64, rvalid: true, r2: vec![9; 64] };
        assert_eq!(Success1::decode(&s.encode()).unwrap(), s);
        assert_eq!(Success2::decode(&Success2 { t_id: 3 }.encode()).unwrap().t_id, 3);
        let f = Failure { id: msg::FAILURE1, t_id: 1, reason: reason::FAILED, explanation: reason::EXP_HASH_UNUSABLE };
        assert_eq!(Message::decode(&f.encode()).unwrap(), Message::Failure(f));
    }

    #[test]
    fn strangers_do_not_panic() {
        let c = Challenge { t_id: 7, hash_id: 1, dhgid: 1, seqnum: 9, c1: vec![3; 32], dhv: vec![4; 256] }.encode();
        for n in 0..c.len() {
            assert!(Challenge::decode(&c[..n]).is_err());
        }
        let mut neg = Negotiate { t_id: 0, sc_c: 0, hashes: vec![1], dhgroups: vec![0] }.encode();
        neg[8 + 2] = 200;
        assert!(Negotiate::decode(&neg).is_err());
        for b in [&[][..], &[0u8], &[1, 2], &[0, 0, 0, 0, 0, 0, 0, 255]] {
            let _ = Message::decode(b);
        }
    }
}
