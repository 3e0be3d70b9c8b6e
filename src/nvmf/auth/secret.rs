//! DHHC-1 secret representation (NVMe Base 2.0 §8.13.5.8 / TP 8006; Linux
//! `nvme_auth_extract_key`): `DHHC-1:<hh>:<base64(key || crc32_le(key))>:` where `hh` names the
//! hash the key is transformed with (00 none, 01 SHA-256, 02 SHA-384, 03 SHA-512) and the key is
//! 32, 48 or 64 bytes.

use super::crypto::{hmac, Digest};
use super::AuthError;
use crate::nvme::keyblob::{self, KeyBlobError};

#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    /// 0 = untransformed, else the hash id of the transform.
    pub transform: u8,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret(DHHC-1:{:02x}, {} bytes)", self.transform, self.key.len())
    }
}

impl Secret {
    pub fn parse(s: &str) -> Result<Secret, AuthError> {
        let s = s.trim();
        let rest = s.strip_prefix("DHHC-1:").ok_or(AuthError::Secret("no DHHC-1: prefix"))?;
        let (hh, b64) = rest.split_once(':').ok_or(AuthError::Secret("no hash field"))?;
        let b64 = b64.strip_suffix(':').unwrap_or(b64);
        let transform = u8::from_str_radix(hh, 16).map_err(|_| AuthError::Secret("hash field is not hex"))?;
        if hh.len() != 2 || transform > 3 {
            return Err(AuthError::Secret("hash field must be 00..03"));
        }
        let key = keyblob::decode(b64, &[32, 48, 64]).map_err(|e| {
            AuthError::Secret(match e {
                KeyBlobError::Base64 => "bad base64",
                KeyBlobError::Length(_) => "key must be 32, 48 or 64 bytes",
                KeyBlobError::Crc => "CRC mismatch",
            })
        })?;
        Ok(Secret { transform, key })
    }

    pub fn encode(&self) -> String {
        format!("DHHC-1:{:02x}:{}:", self.transform, keyblob::encode(&self.key))
    }

    /// The key HMACs are keyed with (Linux `nvme_auth_transform_key`): the secret itself, or
    /// HMAC_hash(secret, nqn || "NVMe-over-Fabrics") when the secret names a transform.
    pub fn transformed(&self, nqn: &str) -> Result<Vec<u8>, AuthError> {
        if self.transform == 0 {
            return Ok(self.key.clone());
        }
        hmac(Digest::from_id(self.transform)?, &self.key, &[nqn.as_bytes(), b"NVMe-over-Fabrics"])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::base64;

    #[test]
    fn roundtrip_and_crc() {
        let s = Secret { transform: 1, key: (0..32).collect() };
        let t = s.encode();
        assert!(t.starts_with("DHHC-1:01:"));
        assert_eq!(Secret::parse(&t).unwrap(), s);
        // A flipped key bit breaks the CRC.
        let mut raw = base64::decode_block(t.trim_start_matches("DHHC-1:01:").trim_end_matches(':')).unwrap();
        raw[0] ^= 1;
        let bad = format!("DHHC-1:01:{}:", base64::encode_block(&raw));
        assert_eq!(Secret::parse(&bad), Err(AuthError::Secret("CRC mismatch")));
        assert!(Secret::parse("DHHC-1:04:AAAA:").is_err());
        assert!(Secret::parse("garbage").is_err());
        for k in [48usize, 64] {
            let s = Secret { transform: 0, key: vec![7; k] };
            assert_eq!(Secret::parse(&s.encode()).unwrap(), s);
        }
    }

    #[test]
    fn transform_is_hmac_of_nqn() {
        let s = Secret { transform: 1, key: vec![0x11; 32] };
        let t = s.transformed("nqn.host").unwrap();
        let want = hmac(Digest::Sha256, &[0x11; 32], &[b"nqn.hostNVMe-over-Fabrics"]).unwrap();
        assert_eq!(t, want);
        assert_eq!(Secret { transform: 0, key: vec![1; 48] }.transformed("x").unwrap(), vec![1; 48]);
    }
}
