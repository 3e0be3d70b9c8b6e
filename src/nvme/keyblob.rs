//! The key body both NVMe key interchange formats share: `base64(key || CRC-32(key) little-endian)`,
//! in DHHC-1 secrets (Base 2.0 §8.13.5.8) and NVMeTLSkey-1 PSKs (NVMe/TCP §3.6.1.2). CRC-32 is
//! IEEE 802.3 as zlib computes it.

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyBlobError {
    #[error("bad base64")]
    Base64,
    /// The decoded length (key and CRC) is not one the format allows.
    #[error("{0} bytes decoded")]
    Length(usize),
    #[error("CRC-32 mismatch")]
    Crc,
}

/// Decode the body; the key must be one of `key_lens` bytes long.
pub fn decode(b64: &str, key_lens: &[usize]) -> Result<Vec<u8>, KeyBlobError> {
    let raw = openssl::base64::decode_block(b64).map_err(|_| KeyBlobError::Base64)?;
    if !key_lens.iter().any(|&n| n + 4 == raw.len()) {
        return Err(KeyBlobError::Length(raw.len()));
    }
    let (key, crc) = raw.split_at(raw.len() - 4);
    if crc32fast::hash(key).to_le_bytes() != crc {
        return Err(KeyBlobError::Crc);
    }
    Ok(key.to_vec())
}

pub fn encode(key: &[u8]) -> String {
    let mut raw = key.to_vec();
    raw.extend_from_slice(&crc32fast::hash(key).to_le_bytes());
    openssl::base64::encode_block(&raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926); // the CRC-32 check value
        let key = [7u8; 32];
        let b = encode(&key);
        assert_eq!(decode(&b, &[32, 48]).unwrap(), key);
        assert_eq!(decode(&b, &[48]), Err(KeyBlobError::Length(36)));
        assert_eq!(decode("!!", &[32]), Err(KeyBlobError::Base64));
        let mut raw = openssl::base64::decode_block(&b).unwrap();
        raw[0] ^= 1;
        assert_eq!(decode(&openssl::base64::encode_block(&raw), &[32]), Err(KeyBlobError::Crc));
    }
}
