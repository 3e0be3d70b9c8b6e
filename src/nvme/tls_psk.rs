//! NVMe/TCP TLS pre-shared keys: the PSK interchange format, the retained PSK, PSK identities and
//! the TLS PSK derived from them (NVMe/TCP Transport Specification §3.6.1.2–3.6.1.5, TP 8011 and
//! TP 8018). Pure functions on bytes and strings, so the target's PSK lookup and the initiator
//! derive the same keys.
//!
//! Facts taken from the two reference implementations (read, not copied):
//! - interchange: `NVMeTLSkey-1:xx:<base64(key || crc32(key) little-endian)>:`, `xx` = `00` (the
//!   configured PSK is the retained PSK, used as is), `01` (SHA-256) or `02` (SHA-384); keys are
//!   32 or 48 bytes (Linux `nvme_tls_psk_*`, SPDK `nvme_tcp_parse_interchange_psk`);
//! - retained PSK = HKDF-Expand-Label(HKDF-Extract(0, configured), "HostNQN", hostnqn, L) with the
//!   interchange hash, L its output size (SPDK `nvme_tcp_derive_retained_psk`);
//! - identity version 0: `NVMe0R0h <hostnqn> <subnqn>`, TLS PSK =
//!   HKDF-Expand-Label(HKDF-Extract(0, retained), "nvme-tls-psk", identity, L) (SPDK
//!   `nvme_tcp_derive_tls_psk`, nvme-cli);
//! - identity version 1: `NVMe1R0h <hostnqn> <subnqn> <digest>` (`R`etained or `G`enerated PSK),
//!   digest = base64(HMAC_h(PSK, hostnqn " " subnqn " NVMe-over-Fabrics")), TLS PSK context =
//!   `"0h <digest>"` (Linux `nvme_auth_generate_digest`, `nvme_auth_derive_tls_psk`).
//!
//! `h` is the hash of the cipher suite: 1 = SHA-256 (TLS_AES_128_GCM_SHA256), 2 = SHA-384
//! (TLS_AES_256_GCM_SHA384).

use super::keyblob::KeyBlobError;
use openssl::md::Md;
use openssl::pkey::PKey;
use openssl::pkey_ctx::PkeyCtx;
use openssl::sign::Signer;

/// The hash of a PSK and of the cipher suite it is used with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PskHash {
    Sha256,
    Sha384,
}

impl PskHash {
    /// Hash identifier as PSK identities and interchange strings write it (01, 02).
    pub fn id(self) -> u8 {
        match self {
            PskHash::Sha256 => 1,
            PskHash::Sha384 => 2,
        }
    }
    pub fn from_id(id: u8) -> Option<PskHash> {
        match id {
            1 => Some(PskHash::Sha256),
            2 => Some(PskHash::Sha384),
            _ => None,
        }
    }
    pub fn len(self) -> usize {
        match self {
            PskHash::Sha256 => 32,
            PskHash::Sha384 => 48,
        }
    }
    /// The hash of the cipher suite a key of `len` bytes fits (interchange `00` keys).
    pub fn for_len(len: usize) -> Option<PskHash> {
        match len {
            32 => Some(PskHash::Sha256),
            48 => Some(PskHash::Sha384),
            _ => None,
        }
    }
    fn md(self) -> &'static openssl::md::MdRef {
        match self {
            PskHash::Sha256 => Md::sha256(),
            PskHash::Sha384 => Md::sha384(),
        }
    }
    fn message_digest(self) -> openssl::hash::MessageDigest {
        match self {
            PskHash::Sha256 => openssl::hash::MessageDigest::sha256(),
            PskHash::Sha384 => openssl::hash::MessageDigest::sha384(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PskError {
    #[error("not a PSK interchange string (NVMeTLSkey-1:xx:<base64>:)")]
    Format,
    #[error("PSK interchange hash {0:02} unknown (00, 01 or 02)")]
    Hash(u8),
    #[error("PSK interchange key: bad base64")]
    Base64,
    #[error("PSK interchange key: {0} bytes (32 or 48 plus a 4-byte CRC)")]
    Length(usize),
    #[error("PSK interchange key: CRC-32 mismatch")]
    Crc,
    #[error("PSK identity: not an NVMe/TCP PSK identity")]
    Identity,
    #[error("key derivation failed: {0}")]
    Crypto(String),
}

impl From<openssl::error::ErrorStack> for PskError {
    fn from(e: openssl::error::ErrorStack) -> Self {
        PskError::Crypto(e.to_string())
    }
}

/// A configured PSK parsed from its interchange string.
#[derive(Clone, PartialEq, Eq)]
pub struct ConfiguredPsk {
    /// The interchange hash: None for `00` (the key is the retained PSK as is).
    pub hash: Option<PskHash>,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for ConfiguredPsk {
    // Never print the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConfiguredPsk({:?}, {} bytes)", self.hash, self.key.len())
    }
}

impl ConfiguredPsk {
    /// Parse `NVMeTLSkey-1:xx:<base64>:` (the trailing colon optional, as Linux accepts it).
    pub fn parse(s: &str) -> Result<ConfiguredPsk, PskError> {
        let rest = s.trim().strip_prefix("NVMeTLSkey-1:").ok_or(PskError::Format)?;
        let (hh, b64) = rest.split_once(':').ok_or(PskError::Format)?;
        if hh.len() != 2 || !hh.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PskError::Format);
        }
        let h: u8 = hh.parse().map_err(|_| PskError::Format)?;
        let hash = match h {
            0 => None,
            1 | 2 => PskHash::from_id(h),
            _ => return Err(PskError::Hash(h)),
        };
        let b64 = b64.strip_suffix(':').unwrap_or(b64);
        if b64.is_empty() || b64.contains(':') {
            return Err(PskError::Format);
        }
        let key = super::keyblob::decode(b64, &[32, 48]).map_err(|e| match e {
            KeyBlobError::Base64 => PskError::Base64,
            KeyBlobError::Length(n) => PskError::Length(n),
            KeyBlobError::Crc => PskError::Crc,
        })?;
        Ok(ConfiguredPsk { hash, key })
    }

    /// The interchange string of this key.
    pub fn encode(&self) -> String {
        format!("NVMeTLSkey-1:{:02}:{}:", self.hash.map_or(0, |h| h.id()), super::keyblob::encode(&self.key))
    }

    /// The cipher suite hash this key is used with: the interchange hash, else by key length.
    pub fn cipher_hash(&self) -> Option<PskHash> {
        self.hash.or_else(|| PskHash::for_len(self.key.len()))
    }

    /// The retained PSK for `hostnqn` (§3.6.1.3): the key itself for `00`, else
    /// HKDF-Expand-Label(HKDF-Extract(0, key), "HostNQN", hostnqn, L).
    pub fn retained(&self, hostnqn: &str) -> Result<Vec<u8>, PskError> {
        match self.hash {
            None => Ok(self.key.clone()),
            Some(h) => hkdf_label(h, &self.key, "HostNQN", hostnqn.as_bytes(), h.len()),
        }
    }
}

/// HKDF-Extract(salt = 0, ikm) then HKDF-Expand-Label(PRK, label, context, len) (RFC 5869,
/// RFC 8446 §7.1: HkdfLabel = u16 length, "tls13 " + label, context).
pub fn hkdf_label(h: PskHash, ikm: &[u8], label: &str, context: &[u8], len: usize) -> Result<Vec<u8>, PskError> {
    let full = format!("tls13 {label}");
    if full.len() > 255 || context.len() > 255 {
        return Err(PskError::Identity);
    }
    let mut info = Vec::with_capacity(4 + full.len() + context.len());
    info.extend_from_slice(&(len as u16).to_be_bytes());
    info.push(full.len() as u8);
    info.extend_from_slice(full.as_bytes());
    info.push(context.len() as u8);
    info.extend_from_slice(context);
    hkdf(h, ikm, &[], &info, len)
}

/// Plain HKDF (extract then expand); an empty salt means HashLen zero bytes (RFC 5869 §2.2).
pub fn hkdf(h: PskHash, ikm: &[u8], salt: &[u8], info: &[u8], len: usize) -> Result<Vec<u8>, PskError> {
    let mut ctx = PkeyCtx::new_id(openssl::pkey::Id::HKDF)?;
    ctx.derive_init()?;
    ctx.set_hkdf_md(h.md())?;
    ctx.set_hkdf_key(ikm)?;
    ctx.set_hkdf_salt(salt)?;
    ctx.add_hkdf_info(info)?;
    let mut out = vec![0u8; len];
    let n = ctx.derive(Some(&mut out))?;
    out.truncate(n);
    Ok(out)
}

fn hmac(h: PskHash, key: &[u8], parts: &[&[u8]]) -> Result<Vec<u8>, PskError> {
    let k = PKey::hmac(key)?;
    let mut s = Signer::new(h.message_digest(), &k)?;
    for p in parts {
        s.update(p)?;
    }
    Ok(s.sign_to_vec()?)
}

/// The PSK digest of identity version 1: base64(HMAC(psk, hostnqn " " subnqn " NVMe-over-Fabrics")).
pub fn psk_digest(h: PskHash, psk: &[u8], hostnqn: &str, subnqn: &str) -> Result<String, PskError> {
    let mac = hmac(h, psk, &[hostnqn.as_bytes(), b" ", subnqn.as_bytes(), b" NVMe-over-Fabrics"])?;
    Ok(openssl::base64::encode_block(&mac))
}

/// Where the PSK of an identity comes from (`R` or `G` in the identity).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PskKind {
    /// Retained PSK from a configured one (`nvmf_subsystem_add_host … psk`).
    Retained,
    /// Generated by DH-HMAC-CHAP for secure channel concatenation.
    Generated,
}

/// A parsed PSK identity (§3.6.1.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PskIdentity {
    /// 0 (no digest) or 1 (with digest).
    pub version: u8,
    pub kind: PskKind,
    pub hash: PskHash,
    pub hostnqn: String,
    pub subnqn: String,
    /// Version 1 only.
    pub digest: Option<String>,
}

impl PskIdentity {
    /// Parse `NVMe<v><R|G>0<h> <hostnqn> <subnqn>[ <digest>]`. NQNs contain no spaces.
    pub fn parse(id: &[u8]) -> Result<PskIdentity, PskError> {
        let s = std::str::from_utf8(id).map_err(|_| PskError::Identity)?;
        let mut it = s.split(' ');
        let head = it.next().ok_or(PskError::Identity)?.as_bytes();
        if head.len() != 8 || &head[..4] != b"NVMe" || head[6] != b'0' {
            return Err(PskError::Identity);
        }
        let version = match head[4] {
            b'0' => 0,
            b'1' => 1,
            _ => return Err(PskError::Identity),
        };
        let kind = match head[5] {
            b'R' => PskKind::Retained,
            b'G' => PskKind::Generated,
            _ => return Err(PskError::Identity),
        };
        let hash = PskHash::from_id(head[7].wrapping_sub(b'0')).ok_or(PskError::Identity)?;
        let hostnqn = it.next().filter(|s| !s.is_empty()).ok_or(PskError::Identity)?.to_string();
        let subnqn = it.next().filter(|s| !s.is_empty()).ok_or(PskError::Identity)?.to_string();
        let digest = match version {
            0 => None,
            _ => Some(it.next().filter(|s| !s.is_empty()).ok_or(PskError::Identity)?.to_string()),
        };
        if it.next().is_some() || (version == 0 && kind == PskKind::Generated) {
            return Err(PskError::Identity);
        }
        Ok(PskIdentity { version, kind, hash, hostnqn, subnqn, digest })
    }

    /// The identity for `psk` (a retained or generated PSK): version 0 has no digest.
    pub fn build(version: u8, kind: PskKind, hash: PskHash, psk: &[u8], hostnqn: &str, subnqn: &str) -> Result<PskIdentity, PskError> {
        let digest = match version {
            0 => None,
            1 => Some(psk_digest(hash, psk, hostnqn, subnqn)?),
            _ => return Err(PskError::Identity),
        };
        Ok(PskIdentity { version, kind, hash, hostnqn: hostnqn.into(), subnqn: subnqn.into(), digest })
    }

    pub fn encode(&self) -> String {
        let k = match self.kind {
            PskKind::Retained => 'R',
            PskKind::Generated => 'G',
        };
        let mut s = format!("NVMe{}{k}0{} {} {}", self.version, self.hash.id(), self.hostnqn, self.subnqn);
        if let Some(d) = &self.digest {
            s.push(' ');
            s.push_str(d);
        }
        s
    }

    /// The TLS PSK from the input PSK (retained or generated) this identity names, after checking
    /// a version-1 digest against it (a wrong key fails here rather than in the handshake).
    pub fn tls_psk(&self, input: &[u8]) -> Result<Vec<u8>, PskError> {
        let ctx = match &self.digest {
            None => self.encode(),
            Some(d) => {
                let want = psk_digest(self.hash, input, &self.hostnqn, &self.subnqn)?;
                if want.len() != d.len() || !openssl::memcmp::eq(want.as_bytes(), d.as_bytes()) {
                    return Err(PskError::Identity);
                }
                format!("{:02} {d}", self.hash.id())
            }
        };
        hkdf_label(self.hash, input, "nvme-tls-psk", ctx.as_bytes(), self.hash.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn hkdf_rfc5869_case1() {
        let okm = hkdf(
            PskHash::Sha256,
            &hex("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b"),
            &hex("000102030405060708090a0b0c"),
            &hex("f0f1f2f3f4f5f6f7f8f9"),
            42,
        )
        .unwrap();
        assert_eq!(okm, hex("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"));
    }

    #[test]
    fn hkdf_rfc5869_case3_zero_salt() {
        // Case 3: empty salt and info, as the NVMe derivations use an empty (zero) salt.
        let okm = hkdf(PskHash::Sha256, &hex("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b"), &[], &[], 42).unwrap();
        assert_eq!(okm, hex("8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"));
    }

    #[test]
    fn interchange_spdk_example_parses_and_round_trips() {
        // The key SPDK's unit tests configure (test/unit/lib/nvmf/tcp.c): a valid CRC.
        let s = "NVMeTLSkey-1:01:VRLbtnN9AQb2WXW3c9+wEf/DRLz0QuLdbYvEhwtdWwNf9LrZ:";
        let k = ConfiguredPsk::parse(s).unwrap();
        assert_eq!(k.hash, Some(PskHash::Sha256));
        assert_eq!(k.key.len(), 32);
        assert_eq!(k.encode(), s);
        // A flipped character breaks the CRC; hash 03 is unknown; wrong prefix.
        assert_eq!(ConfiguredPsk::parse(&s.replace("VRLb", "VRLc")), Err(PskError::Crc));
        assert_eq!(ConfiguredPsk::parse(&s.replace(":01:", ":03:")), Err(PskError::Hash(3)));
        assert_eq!(ConfiguredPsk::parse(&s.replace("NVMeTLSkey-1", "DHHC-1")), Err(PskError::Format));
    }

    #[test]
    fn identities_parse_and_encode() {
        let v0 = "NVMe0R01 nqn.2016-06.io.spdk:host1 nqn.2016-06.io.spdk:cnode1";
        let id = PskIdentity::parse(v0.as_bytes()).unwrap();
        assert_eq!((id.version, id.kind, id.hash), (0, PskKind::Retained, PskHash::Sha256));
        assert_eq!(id.encode(), v0);
        let k = vec![7u8; 48];
        let id1 = PskIdentity::build(1, PskKind::Generated, PskHash::Sha384, &k, "nqn.h", "nqn.s").unwrap();
        assert_eq!(id1.digest.as_ref().unwrap().len(), 64);
        assert_eq!(PskIdentity::parse(id1.encode().as_bytes()).unwrap(), id1);
        assert!(PskIdentity::parse(b"NVMe0R03 a b").is_err());
        assert!(PskIdentity::parse(b"NVMe1R01 a b").is_err(), "version 1 needs a digest");
        assert!(PskIdentity::parse(b"NVMe0R01 a b c").is_err());
    }

    #[test]
    fn derivation_follows_the_label_construction() {
        // Independent recomputation of HKDF-Expand-Label from HMAC (RFC 5869 steps written out):
        // PRK = HMAC(zeros, retained); T(1) = HMAC(PRK, info || 0x01).
        let k = ConfiguredPsk::parse("NVMeTLSkey-1:01:VRLbtnN9AQb2WXW3c9+wEf/DRLz0QuLdbYvEhwtdWwNf9LrZ:").unwrap();
        let host = "nqn.2016-06.io.spdk:host1";
        let retained = k.retained(host).unwrap();
        let prk = hmac(PskHash::Sha256, &[0u8; 32], &[&k.key]).unwrap();
        let mut info = vec![0, 32, 13];
        info.extend_from_slice(b"tls13 HostNQN");
        info.push(host.len() as u8);
        info.extend_from_slice(host.as_bytes());
        info.push(1);
        assert_eq!(retained, hmac(PskHash::Sha256, &prk, &[&info]).unwrap());
        let id = PskIdentity::build(0, PskKind::Retained, PskHash::Sha256, &retained, host, "nqn.2016-06.io.spdk:cnode1").unwrap();
        let t1 = id.tls_psk(&retained).unwrap();
        let id1 = PskIdentity::build(1, PskKind::Retained, PskHash::Sha256, &retained, host, "nqn.2016-06.io.spdk:cnode1").unwrap();
        let t2 = id1.tls_psk(&retained).unwrap();
        assert_eq!((t1.len(), t2.len()), (32, 32));
        assert_ne!(t1, t2);
        // A version-1 identity whose digest does not match the key is refused.
        assert_eq!(id1.tls_psk(&[1u8; 32]), Err(PskError::Identity));
        // 00 keys are their own retained PSK.
        let z = ConfiguredPsk { hash: None, key: vec![3; 48] };
        assert_eq!(z.retained(host).unwrap(), vec![3; 48]);
        assert_eq!(z.cipher_hash(), Some(PskHash::Sha384));
    }
}
