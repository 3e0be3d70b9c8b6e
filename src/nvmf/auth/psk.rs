//! Secure channel concatenation (NVMe Base 2.0 §8.13.5.9, TP 8018 §3.6.1.3): the TLS PSK a
//! DH-HMAC-CHAP exchange with SC_C = NEWTLSPSK generates, and its identity, exactly as Linux
//! `nvme_auth_generate_psk`, `nvme_auth_generate_digest` and `nvme_auth_derive_tls_psk` compute
//! them (checked against Linux's KUnit vectors below).

use super::crypto::{hmac, Digest};
use super::AuthError;

/// Generated PSK = HMAC_H(KS, C1 || C2), KS the DH session key.
pub fn generate_psk(d: Digest, skey: &[u8], c1: &[u8], c2: &[u8]) -> Result<Vec<u8>, AuthError> {
    hmac(d, skey, &[c1, c2])
}

/// PSK digest = Base64(HMAC_H(PSK, NQNh || " " || NQNc || " " || "NVMe-over-Fabrics")); SHA-256
/// and SHA-384 only (the TLS cipher suites NVMe/TCP names).
pub fn psk_digest(d: Digest, psk: &[u8], hostnqn: &str, subnqn: &str) -> Result<String, AuthError> {
    if d == Digest::Sha512 {
        return Err(AuthError::Hash(d.id()));
    }
    let m = hmac(d, psk, &[hostnqn.as_bytes(), b" ", subnqn.as_bytes(), b" NVMe-over-Fabrics"])?;
    Ok(openssl::base64::encode_block(&m))
}

/// TLS PSK = HKDF-Expand-Label(HKDF-Extract(0, PSK), "nvme-tls-psk", "<hh> <digest>", L)
/// (RFC 5869 / RFC 8446 §7.1; L = hash length, one HKDF block).
pub fn derive_tls_psk(d: Digest, psk: &[u8], digest: &str) -> Result<Vec<u8>, AuthError> {
    if d == Digest::Sha512 || psk.len() != d.len() {
        return Err(AuthError::Hash(d.id()));
    }
    let prk = hmac(d, &vec![0u8; d.len()], &[psk])?;
    let ctx = format!("{:02} {digest}", d.id());
    let label = b"tls13 nvme-tls-psk";
    let mut info = Vec::with_capacity(4 + label.len() + ctx.len());
    info.extend_from_slice(&(d.len() as u16).to_be_bytes());
    info.push(label.len() as u8);
    info.extend_from_slice(label);
    info.push(ctx.len() as u8);
    info.extend_from_slice(ctx.as_bytes());
    // HKDF-Expand: T(1) = HMAC(PRK, info || 0x01) is all of L.
    hmac(d, &prk, &[&info, &[1]])
}

/// The generated PSK's identity: "NVMe1G<hh> <NQNh> <NQNc> <digest>" (TP 8018; Linux
/// nvme_auth_generate_key / nvmet_auth_insert_psk).
pub fn identity(d: Digest, hostnqn: &str, subnqn: &str, digest: &str) -> String {
    format!("NVMe1G{:02} {hostnqn} {subnqn} {digest}", d.id())
}

/// Everything at once: (identity, TLS PSK) from a finished SC_C transaction.
pub fn tls_psk_for(d: Digest, skey: &[u8], c1: &[u8], c2: &[u8], hostnqn: &str, subnqn: &str) -> Result<(String, Vec<u8>), AuthError> {
    let psk = generate_psk(d, skey, c1, c2)?;
    let dg = psk_digest(d, &psk, hostnqn, subnqn)?;
    let tls = derive_tls_psk(d, &psk, &dg)?;
    Ok((identity(d, hostnqn, subnqn, &dg), tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Linux drivers/nvme/common/tests/auth_kunit.c: skey[i] = 'A' + i, c1[i] = i,
    /// c2[i] = 0xff - i, hostnqn "hostnqn", subsysnqn "subsysnqn".
    fn linux_vector(d: Digest) -> (Vec<u8>, String, Vec<u8>) {
        let n = d.len();
        let skey: Vec<u8> = (0..n).map(|i| b'A' + i as u8).collect();
        let c1: Vec<u8> = (0..n).map(|i| i as u8).collect();
        let c2: Vec<u8> = (0..n).map(|i| 0xff - i as u8).collect();
        let psk = generate_psk(d, &skey, &c1, &c2).unwrap();
        let dg = psk_digest(d, &psk, "hostnqn", "subsysnqn").unwrap();
        let tls = derive_tls_psk(d, &psk, &dg).unwrap();
        (psk, dg, tls)
    }

    #[test]
    fn linux_kunit_sha256() {
        let (psk, dg, tls) = linux_vector(Digest::Sha256);
        assert_eq!(psk[..8], [0x17, 0x33, 0xc5, 0x9f, 0xa7, 0xf4, 0x8f, 0xcf]);
        assert_eq!(dg, "OldoKuTfKddMuyCznAZojkWD7P4D9/AtzDzLimtOxqI=");
        assert_eq!(
            tls,
            [0x3c, 0x17, 0xda, 0x62, 0x84, 0x74, 0xa0, 0x4d, 0x22, 0x47, 0xc4, 0xca, 0xb4, 0x79, 0x68, 0xc9, 0x15, 0x38, 0x81, 0x93, 0xf7, 0xc0, 0x71, 0xbd, 0x94, 0x89, 0xcc, 0x36, 0x66, 0xcd, 0x7c, 0xc8]
        );
    }

    #[test]
    fn linux_kunit_sha384_and_sha512() {
        let (psk, dg, tls) = linux_vector(Digest::Sha384);
        assert_eq!(psk[40..], [0xe4, 0xb1, 0xd7, 0x1d, 0x35, 0x9c, 0xce, 0x39]);
        assert_eq!(dg, "cffMWk8TSS7HOQebjgYEIkrPrjWPV4JE5cdPB8WhEvY4JBW5YynKyv66XscN4A9n");
        assert_eq!(tls[..8], [0x27, 0x74, 0x75, 0x32, 0x33, 0x53, 0x7b, 0x3f]);
        assert_eq!(tls[40..], [0xd2, 0xbe, 0x0a, 0xac, 0x42, 0x3e, 0x75, 0x90]);
        let skey: Vec<u8> = (0..64).map(|i| b'A' + i as u8).collect();
        let c1: Vec<u8> = (0..64).map(|i| i as u8).collect();
        let c2: Vec<u8> = (0..64).map(|i| 0xff - i as u8).collect();
        let psk = generate_psk(Digest::Sha512, &skey, &c1, &c2).unwrap();
        assert_eq!(psk[56..], [0x5c, 0x1a, 0xca, 0xe1, 0x62, 0x33, 0xdd, 0x5b]);
        assert!(psk_digest(Digest::Sha512, &psk, "h", "s").is_err(), "Linux has no SHA-512 PSK digest");
        assert!(identity(Digest::Sha256, "h", "s", "D").starts_with("NVMe1G01 h s D"));
    }
}
