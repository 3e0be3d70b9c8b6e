//! NVMe in-band authentication, DH-HMAC-CHAP (NVMe Base 2.0 §8.13, TP 8006): secrets, the
//! hash and Diffie-Hellman primitives, the response formulas, and the two ends of a transaction
//! (the controller's state machine in `target`, the host's in `host`). Byte layouts and formulas
//! follow Linux (`drivers/nvme/common/auth.c`, `drivers/nvme/target/auth.c`,
//! `drivers/nvme/host/auth.c`), which SPDK interoperates with.
//!
//! Crypto comes from OpenSSL (the `openssl` crate, the same dependency the TLS side uses): HMAC
//! and SHA-2, constant-time modular exponentiation on BIGNUMs for FFDHE, CSPRNG bytes and
//! constant-time comparison. One well-audited library instead of a set of RustCrypto crates
//! plus a bignum crate whose `modpow` is not constant time.

pub mod chap;
pub mod crypto;
mod ffdhe;
pub mod host;
pub mod psk;
pub mod secret;
pub mod target;
pub mod worker;

pub use crypto::{DhGroup, Digest};
pub use secret::Secret;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("invalid DH-HMAC-CHAP secret: {0}")]
    Secret(&'static str),
    #[error("crypto: {0}")]
    Crypto(String),
    #[error("invalid DH public value")]
    BadPublic,
    #[error("unknown hash id {0}")]
    Hash(u8),
    #[error("unknown DH group id {0}")]
    Group(u8),
}

impl From<openssl::error::ErrorStack> for AuthError {
    fn from(e: openssl::error::ErrorStack) -> Self {
        AuthError::Crypto(e.to_string())
    }
}
