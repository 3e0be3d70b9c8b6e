//! The DH-HMAC-CHAP formulas (Base 2.0 §8.13.5.3-5; byte order as Linux
//! `nvmet_auth_host_hash` / `nvmet_auth_ctrl_hash` / `nvme_auth_dhchap_setup_*_response`).

use super::crypto::{digest, hmac, Digest};
use super::AuthError;

/// Ca = HMAC_H(H(g^xy mod p), C) (Linux `nvme_auth_augmented_challenge`); C itself for the
/// NULL group (no session key).
pub fn augmented(d: Digest, skey: Option<&[u8]>, c: &[u8]) -> Result<Vec<u8>, AuthError> {
    match skey {
        None => Ok(c.to_vec()),
        Some(k) => hmac(d, &digest(d, k)?, &[c]),
    }
}

/// What both ends of one direction of the exchange put into the HMAC.
pub struct Transcript<'a> {
    pub digest: Digest,
    pub skey: Option<&'a [u8]>,
    pub challenge: &'a [u8],
    pub seqnum: u32,
    pub t_id: u16,
    pub sc_c: u8,
}

/// R1 = HMAC(Kh', Ca1 || S1 || T_ID || SC_C || "HostHost" || NQNh || 00h || NQNc), with Kh'
/// the host secret transformed by the host NQN.
pub fn host_response(t: &Transcript, host_key: &[u8], hostnqn: &str, subnqn: &str) -> Result<Vec<u8>, AuthError> {
    let ca = augmented(t.digest, t.skey, t.challenge)?;
    hmac(t.digest, host_key, &[&ca, &t.seqnum.to_le_bytes(), &t.t_id.to_le_bytes(), &[t.sc_c], b"HostHost", hostnqn.as_bytes(), &[0], subnqn.as_bytes()])
}

/// R2 = HMAC(Kc', Ca2 || S2 || T_ID || SC_C || "Controller" || NQNc || 00h || NQNh), with Kc'
/// the controller secret transformed by the subsystem NQN.
pub fn ctrl_response(t: &Transcript, ctrl_key: &[u8], hostnqn: &str, subnqn: &str) -> Result<Vec<u8>, AuthError> {
    let ca = augmented(t.digest, t.skey, t.challenge)?;
    hmac(t.digest, ctrl_key, &[&ca, &t.seqnum.to_le_bytes(), &t.t_id.to_le_bytes(), &[t.sc_c], b"Controller", subnqn.as_bytes(), &[0], hostnqn.as_bytes()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_response_by_hand() {
        // The formula spelt out byte by byte, against the function.
        let key = vec![0x42u8; 32];
        let c1 = vec![0xa5u8; 32];
        let mut msg = c1.clone();
        msg.extend_from_slice(&[0x04, 0x03, 0x02, 0x01]); // S1 = 0x01020304 LE
        msg.extend_from_slice(&[0x34, 0x12]); // T_ID = 0x1234 LE
        msg.push(0); // SC_C
        msg.extend_from_slice(b"HostHostnqn.h\0nqn.s");
        let want = hmac(Digest::Sha256, &key, &[&msg]).unwrap();
        let t = Transcript { digest: Digest::Sha256, skey: None, challenge: &c1, seqnum: 0x0102_0304, t_id: 0x1234, sc_c: 0 };
        assert_eq!(host_response(&t, &key, "nqn.h", "nqn.s").unwrap(), want);
        // With a session key the challenge is augmented first.
        let sk = [9u8; 256];
        let t2 = Transcript { skey: Some(&sk), ..t };
        let ca = hmac(Digest::Sha256, &digest(Digest::Sha256, &sk).unwrap(), &[&c1]).unwrap();
        let mut msg2 = ca;
        msg2.extend_from_slice(&msg[32..]);
        assert_eq!(host_response(&t2, &key, "nqn.h", "nqn.s").unwrap(), hmac(Digest::Sha256, &key, &[&msg2]).unwrap());
        assert_ne!(ctrl_response(&t, &key, "nqn.h", "nqn.s").unwrap(), want);
    }
}
