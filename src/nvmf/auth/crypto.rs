//! Hash, HMAC and finite-field Diffie-Hellman for DH-HMAC-CHAP (Base 2.0 §8.13.5.1), on OpenSSL.

use openssl::bn::{BigNum, BigNumContext};
use openssl::hash::{hash, MessageDigest};
use openssl::pkey::PKey;
use openssl::sign::Signer;

use super::AuthError;
use crate::nvme::auth::{dhgroup, hash as hid};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Digest {
    Sha256,
    Sha384,
    Sha512,
}

impl Digest {
    pub const ALL: [Digest; 3] = [Digest::Sha256, Digest::Sha384, Digest::Sha512];
    pub fn from_id(id: u8) -> Result<Digest, AuthError> {
        match id {
            hid::SHA256 => Ok(Digest::Sha256),
            hid::SHA384 => Ok(Digest::Sha384),
            hid::SHA512 => Ok(Digest::Sha512),
            _ => Err(AuthError::Hash(id)),
        }
    }
    pub fn id(self) -> u8 {
        match self {
            Digest::Sha256 => hid::SHA256,
            Digest::Sha384 => hid::SHA384,
            Digest::Sha512 => hid::SHA512,
        }
    }
    /// SPDK's name (nvmf_set_config dhchap_digests).
    pub fn name(self) -> &'static str {
        match self {
            Digest::Sha256 => "sha256",
            Digest::Sha384 => "sha384",
            Digest::Sha512 => "sha512",
        }
    }
    pub fn from_name(n: &str) -> Option<Digest> {
        Digest::ALL.into_iter().find(|d| d.name() == n)
    }
    /// Digest size in bytes (never empty, so no `is_empty`).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(self) -> usize {
        match self {
            Digest::Sha256 => 32,
            Digest::Sha384 => 48,
            Digest::Sha512 => 64,
        }
    }
    fn md(self) -> MessageDigest {
        match self {
            Digest::Sha256 => MessageDigest::sha256(),
            Digest::Sha384 => MessageDigest::sha384(),
            Digest::Sha512 => MessageDigest::sha512(),
        }
    }
}

/// HMAC over the concatenation of `parts`.
pub fn hmac(d: Digest, key: &[u8], parts: &[&[u8]]) -> Result<Vec<u8>, AuthError> {
    let k = PKey::hmac(key)?;
    let mut s = Signer::new(d.md(), &k)?;
    for p in parts {
        s.update(p)?;
    }
    Ok(s.sign_to_vec()?)
}

pub fn digest(d: Digest, data: &[u8]) -> Result<Vec<u8>, AuthError> {
    Ok(hash(d.md(), data)?.to_vec())
}

pub fn random(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    openssl::rand::rand_bytes(&mut b).expect("OpenSSL CSPRNG");
    b
}

/// Constant-time equality (lengths are public).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && openssl::memcmp::eq(a, b)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DhGroup {
    Null,
    Ffdhe2048,
    Ffdhe3072,
    Ffdhe4096,
    Ffdhe6144,
    Ffdhe8192,
}

impl DhGroup {
    pub const ALL: [DhGroup; 6] = [DhGroup::Null, DhGroup::Ffdhe2048, DhGroup::Ffdhe3072, DhGroup::Ffdhe4096, DhGroup::Ffdhe6144, DhGroup::Ffdhe8192];
    pub fn from_id(id: u8) -> Result<DhGroup, AuthError> {
        DhGroup::ALL.into_iter().find(|g| g.id() == id).ok_or(AuthError::Group(id))
    }
    pub fn id(self) -> u8 {
        match self {
            DhGroup::Null => dhgroup::NULL,
            DhGroup::Ffdhe2048 => dhgroup::FFDHE2048,
            DhGroup::Ffdhe3072 => dhgroup::FFDHE3072,
            DhGroup::Ffdhe4096 => dhgroup::FFDHE4096,
            DhGroup::Ffdhe6144 => dhgroup::FFDHE6144,
            DhGroup::Ffdhe8192 => dhgroup::FFDHE8192,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DhGroup::Null => "null",
            DhGroup::Ffdhe2048 => "ffdhe2048",
            DhGroup::Ffdhe3072 => "ffdhe3072",
            DhGroup::Ffdhe4096 => "ffdhe4096",
            DhGroup::Ffdhe6144 => "ffdhe6144",
            DhGroup::Ffdhe8192 => "ffdhe8192",
        }
    }
    pub fn from_name(n: &str) -> Option<DhGroup> {
        DhGroup::ALL.into_iter().find(|g| g.name() == n)
    }
    fn prime_hex(self) -> Option<&'static str> {
        use super::ffdhe::*;
        Some(match self {
            DhGroup::Null => return None,
            DhGroup::Ffdhe2048 => FFDHE2048,
            DhGroup::Ffdhe3072 => FFDHE3072,
            DhGroup::Ffdhe4096 => FFDHE4096,
            DhGroup::Ffdhe6144 => FFDHE6144,
            DhGroup::Ffdhe8192 => FFDHE8192,
        })
    }
    /// Bytes of a public value and of the shared secret (the prime's size; 0 for NULL).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(self) -> usize {
        self.prime_hex().map_or(0, |h| h.len() / 2)
    }
}

/// One side's ephemeral DH key pair.
pub struct DhKey {
    group: DhGroup,
    p: BigNum,
    x: BigNum,
    /// g^x mod p, big-endian, padded to the prime's length.
    pub public: Vec<u8>,
}

impl DhKey {
    /// None for the NULL group (no exchange).
    pub fn generate(group: DhGroup) -> Result<Option<DhKey>, AuthError> {
        let Some(h) = group.prime_hex() else { return Ok(None) };
        let p = BigNum::from_hex_str(h)?;
        // A 512-bit exponent: above twice the security strength of every group (RFC 7919 §5.2).
        let mut x = BigNum::from_slice(&random(64))?;
        x.set_const_time();
        let g = BigNum::from_u32(2)?;
        let mut ctx = BigNumContext::new()?;
        let mut y = BigNum::new()?;
        y.mod_exp(&g, &x, &p, &mut ctx)?;
        let public = y.to_vec_padded(group.len() as i32)?;
        Ok(Some(DhKey { group, p, x, public }))
    }

    /// The shared secret g^xy mod p from the peer's public value, padded to the prime's length.
    /// Values outside 2..p-2 are refused (RFC 7919 §5.1: they leak or fix the secret).
    pub fn shared(&self, peer: &[u8]) -> Result<Vec<u8>, AuthError> {
        if peer.len() != self.group.len() {
            return Err(AuthError::BadPublic);
        }
        let y = BigNum::from_slice(peer)?;
        let mut pm1 = BigNum::new()?;
        pm1.checked_sub(&self.p, BigNum::from_u32(1)?.as_ref())?;
        if y <= BigNum::from_u32(1)? || y >= pm1 {
            return Err(AuthError::BadPublic);
        }
        let mut ctx = BigNumContext::new()?;
        let mut z = BigNum::new()?;
        z.mod_exp(&y, &self.x, &self.p, &mut ctx)?;
        Ok(z.to_vec_padded(self.group.len() as i32)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_rfc4231_case2() {
        let m = hmac(Digest::Sha256, b"Jefe", &[b"what do ya want ", b"for nothing?"]).unwrap();
        assert_eq!(openssl::bn::BigNum::from_slice(&m).unwrap().to_hex_str().unwrap().to_lowercase(), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn dh_agrees_and_refuses_bad_values() {
        for g in [DhGroup::Ffdhe2048, DhGroup::Ffdhe3072] {
            let a = DhKey::generate(g).unwrap().unwrap();
            let b = DhKey::generate(g).unwrap().unwrap();
            assert_eq!(a.public.len(), g.len());
            assert_eq!(a.shared(&b.public).unwrap(), b.shared(&a.public).unwrap());
            let mut one = vec![0u8; g.len()];
            *one.last_mut().unwrap() = 1;
            assert_eq!(a.shared(&one), Err(AuthError::BadPublic));
            assert_eq!(a.shared(&[1, 2, 3]), Err(AuthError::BadPublic));
        }
        assert!(DhKey::generate(DhGroup::Null).unwrap().is_none());
    }
}
