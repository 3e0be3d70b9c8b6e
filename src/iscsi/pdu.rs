//! iSCSI wire format (RFC 7143 §11): the 48-byte Basic Header Segment of every opcode, AHS,
//! data segments with padding, CRC32C header and data digests, and text key=value segments.
//!
//! Depends on nothing else in the crate so it can be tested and fuzzed alone. Every decoder takes
//! bytes from strangers: all reads are bounds-checked and nothing here panics on input.

pub const BHS_LEN: usize = 48;
pub const DIGEST_LEN: usize = 4;
/// The largest data segment we ever accept (24-bit DataSegmentLength allows 16 MiB).
pub const MAX_DATA_SEGMENT: usize = 16 << 20;
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// Opcodes (byte 0, low 6 bits).
pub mod op {
    pub const NOP_OUT: u8 = 0x00;
    pub const SCSI_CMD: u8 = 0x01;
    pub const TMF_REQ: u8 = 0x02;
    pub const LOGIN_REQ: u8 = 0x03;
    pub const TEXT_REQ: u8 = 0x04;
    pub const DATA_OUT: u8 = 0x05;
    pub const LOGOUT_REQ: u8 = 0x06;
    pub const SNACK: u8 = 0x10;
    pub const NOP_IN: u8 = 0x20;
    pub const SCSI_RSP: u8 = 0x21;
    pub const TMF_RSP: u8 = 0x22;
    pub const LOGIN_RSP: u8 = 0x23;
    pub const TEXT_RSP: u8 = 0x24;
    pub const DATA_IN: u8 = 0x25;
    pub const LOGOUT_RSP: u8 = 0x26;
    pub const R2T: u8 = 0x31;
    pub const ASYNC: u8 = 0x32;
    pub const REJECT: u8 = 0x3f;
}

/// Reject reasons (RFC 7143 §11.17.1).
pub mod reject {
    pub const DATA_DIGEST: u8 = 0x02;
    pub const SNACK_REJECT: u8 = 0x03;
    pub const PROTOCOL_ERROR: u8 = 0x04;
    pub const CMD_NOT_SUPPORTED: u8 = 0x05;
    pub const IMMEDIATE_REJECT: u8 = 0x06;
    pub const TASK_IN_PROGRESS: u8 = 0x07;
    pub const INVALID_PDU_FIELD: u8 = 0x09;
    pub const OUT_OF_RESOURCES: u8 = 0x0a;
    pub const WAITING_FOR_LOGOUT: u8 = 0x0c;
}

/// Flag bits of byte 1 shared by several opcodes.
pub const F_FINAL: u8 = 0x80;
pub const F_IMMEDIATE: u8 = 0x40; // byte 0
/// SCSI Command: read / write.
pub const F_READ: u8 = 0x40;
pub const F_WRITE: u8 = 0x20;
/// Login: transit, continue.
pub const F_TRANSIT: u8 = 0x80;
pub const F_CONTINUE: u8 = 0x40;
/// SCSI Response / Data-In residual flags.
pub const F_OVERFLOW: u8 = 0x04;
pub const F_UNDERFLOW: u8 = 0x02;
/// Data-In: status present, acknowledge.
pub const F_STATUS: u8 = 0x01;

/// Basic Header Segment: a plain 48-byte array with typed accessors (no parse step, no copy).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Bhs(pub [u8; BHS_LEN]);

impl Default for Bhs {
    fn default() -> Self {
        Bhs([0; BHS_LEN])
    }
}

impl std::fmt::Debug for Bhs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bhs(op={:#04x} flags={:#04x} itt={:#x} dlen={})", self.opcode(), self.flags(), self.itt(), self.data_len())
    }
}

impl Bhs {
    pub fn new(opcode: u8, flags: u8) -> Bhs {
        let mut b = Bhs::default();
        b.0[0] = opcode & 0x3f;
        b.0[1] = flags;
        b
    }
    pub fn from_slice(s: &[u8]) -> Option<Bhs> {
        Some(Bhs(s.get(..BHS_LEN)?.try_into().ok()?))
    }
    pub fn opcode(&self) -> u8 {
        self.0[0] & 0x3f
    }
    pub fn immediate(&self) -> bool {
        self.0[0] & F_IMMEDIATE != 0
    }
    pub fn set_immediate(&mut self) {
        self.0[0] |= F_IMMEDIATE;
    }
    pub fn flags(&self) -> u8 {
        self.0[1]
    }
    pub fn final_bit(&self) -> bool {
        self.0[1] & F_FINAL != 0
    }
    pub fn b2(&self) -> u8 {
        self.0[2]
    }
    pub fn b3(&self) -> u8 {
        self.0[3]
    }
    pub fn set_b2(&mut self, v: u8) {
        self.0[2] = v;
    }
    pub fn set_b3(&mut self, v: u8) {
        self.0[3] = v;
    }
    /// TotalAHSLength in bytes.
    pub fn ahs_len(&self) -> usize {
        self.0[4] as usize * 4
    }
    pub fn data_len(&self) -> usize {
        (self.0[5] as usize) << 16 | (self.0[6] as usize) << 8 | self.0[7] as usize
    }
    pub fn set_data_len(&mut self, n: usize) {
        self.0[5] = (n >> 16) as u8;
        self.0[6] = (n >> 8) as u8;
        self.0[7] = n as u8;
    }
    pub fn lun_raw(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[8..16]);
        b
    }
    pub fn set_lun_raw(&mut self, l: [u8; 8]) {
        self.0[8..16].copy_from_slice(&l);
    }
    pub fn u16_at(&self, off: usize) -> u16 {
        u16::from_be_bytes([self.0[off], self.0[off + 1]])
    }
    pub fn set_u16(&mut self, off: usize, v: u16) {
        self.0[off..off + 2].copy_from_slice(&v.to_be_bytes());
    }
    /// Big-endian word at `off` (callers use the named accessors or the `at` offsets below).
    pub fn u32_at(&self, off: usize) -> u32 {
        u32::from_be_bytes([self.0[off], self.0[off + 1], self.0[off + 2], self.0[off + 3]])
    }
    pub fn set_u32(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_be_bytes());
    }
    pub fn itt(&self) -> u32 {
        self.u32_at(at::ITT)
    }
    pub fn set_itt(&mut self, v: u32) {
        self.set_u32(at::ITT, v)
    }
}

/// Byte offsets of BHS fields (the same offset carries different fields per opcode).
pub mod at {
    pub const ITT: usize = 16;
    /// Target Transfer Tag (NOP, Data-Out/In, R2T, Text), EDTL (SCSI Command), RTT (TMF), CID (Login/Logout, 2 bytes).
    pub const W20: usize = 20;
    /// CmdSN (requests) / StatSN (responses).
    pub const W24: usize = 24;
    /// ExpStatSN (requests) / ExpCmdSN (responses).
    pub const W28: usize = 28;
    /// MaxCmdSN (responses), RefCmdSN (TMF), CDB start (SCSI Command).
    pub const W32: usize = 32;
    /// DataSN / R2TSN / ExpDataSN, status class+detail (Login response).
    pub const W36: usize = 36;
    /// Buffer offset, BidiReadResidual.
    pub const W40: usize = 40;
    /// Residual count, desired data transfer length (R2T).
    pub const W44: usize = 44;
    pub const CDB: usize = 32;
    pub const ISID: usize = 8;
    pub const TSIH: usize = 14;
}

pub fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

/// iSCSI digest: CRC32C, sent least significant byte first (as Linux and libiscsi do).
pub fn digest(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PduError {
    #[error("header digest mismatch")]
    HeaderDigest,
    #[error("data digest mismatch")]
    DataDigest,
    #[error("data segment of {0} bytes exceeds the limit of {1}")]
    TooLong(usize, usize),
}

/// Where the parts of one complete PDU lie in a receive buffer.
#[derive(Clone, Copy, Debug)]
pub struct Frame {
    pub bhs: Bhs,
    /// AHS byte range.
    pub ahs: (usize, usize),
    /// Data segment byte range (without padding).
    pub data: (usize, usize),
    /// Total bytes this PDU occupies, digests and padding included.
    pub total: usize,
}

/// Try to frame one PDU at the start of `buf`. Ok(None): need more bytes. A data digest error
/// is reported only after the whole PDU arrived (so the caller may Reject it and skip `total`):
/// it comes back as `Err((DataDigest, Some(frame)))`.
pub fn parse_frame(
    buf: &[u8],
    hdgst: bool,
    ddgst: bool,
    max_data: usize,
) -> Result<Option<Frame>, (PduError, Option<Frame>)> {
    let Some(bhs) = Bhs::from_slice(buf) else { return Ok(None) };
    let ahs_len = bhs.ahs_len();
    let dlen = bhs.data_len();
    if dlen > max_data {
        return Err((PduError::TooLong(dlen, max_data), None));
    }
    let hdr_end = BHS_LEN + ahs_len;
    let data_start = hdr_end + if hdgst { DIGEST_LEN } else { 0 };
    if hdgst && buf.len() >= data_start {
        let got = u32::from_le_bytes(buf[hdr_end..data_start].try_into().unwrap_or([0; 4]));
        if got != digest(&buf[..hdr_end]) {
            return Err((PduError::HeaderDigest, None));
        }
    }
    let padded = pad4(dlen);
    let total = data_start + padded + if ddgst && dlen > 0 { DIGEST_LEN } else { 0 };
    if buf.len() < total {
        return Ok(None);
    }
    let frame = Frame { bhs, ahs: (BHS_LEN, hdr_end), data: (data_start, data_start + dlen), total };
    if ddgst && dlen > 0 {
        let d = data_start + padded;
        let got = u32::from_le_bytes(buf[d..d + 4].try_into().unwrap_or([0; 4]));
        if got != digest(&buf[data_start..d]) {
            return Err((PduError::DataDigest, Some(frame)));
        }
    }
    Ok(Some(frame))
}

/// Where one PDU's header lies at the start of `buf` and what follows it, before its data segment
/// has arrived (the receive path lands Data-Out payloads straight in the task's buffer).
#[derive(Clone, Copy, Debug)]
pub struct Header {
    pub bhs: Bhs,
    /// AHS byte range.
    pub ahs: (usize, usize),
    /// Where the data segment starts (after the header digest).
    pub data_start: usize,
    pub data_len: usize,
    /// Padding plus data digest bytes after the data segment.
    pub trailer: usize,
}

/// Frame one PDU's header (BHS, AHS, header digest checked). Ok(None): need more bytes.
pub fn parse_header(buf: &[u8], hdgst: bool, ddgst: bool, max_data: usize) -> Result<Option<Header>, PduError> {
    let Some(bhs) = Bhs::from_slice(buf) else { return Ok(None) };
    let dlen = bhs.data_len();
    if dlen > max_data {
        return Err(PduError::TooLong(dlen, max_data));
    }
    let hdr_end = BHS_LEN + bhs.ahs_len();
    let data_start = hdr_end + if hdgst { DIGEST_LEN } else { 0 };
    if buf.len() < data_start {
        return Ok(None);
    }
    if hdgst {
        let got = u32::from_le_bytes(buf[hdr_end..data_start].try_into().unwrap_or([0; 4]));
        if got != digest(&buf[..hdr_end]) {
            return Err(PduError::HeaderDigest);
        }
    }
    let trailer = pad4(dlen) - dlen + if ddgst && dlen > 0 { DIGEST_LEN } else { 0 };
    Ok(Some(Header { bhs, ahs: (BHS_LEN, hdr_end), data_start, data_len: dlen, trailer }))
}

/// Append one PDU (header, optional AHS already inside `ahs`, data, padding, digests) to `out`.
pub fn encode(out: &mut Vec<u8>, bhs: &Bhs, ahs: &[u8], data: &[u8], hdgst: bool, ddgst: bool) {
    let mut h = *bhs;
    h.0[4] = (ahs.len() / 4) as u8;
    h.set_data_len(data.len());
    let start = out.len();
    out.extend_from_slice(&h.0);
    out.extend_from_slice(ahs);
    if hdgst {
        let d = digest(&out[start..]);
        out.extend_from_slice(&d.to_le_bytes());
    }
    if !data.is_empty() {
        let ds = out.len();
        out.extend_from_slice(data);
        out.resize(ds + pad4(data.len()), 0);
        if ddgst {
            let d = digest(&out[ds..]);
            out.extend_from_slice(&d.to_le_bytes());
        }
    }
}

/// Append only the header (BHS, AHS, header digest) of a PDU whose `dlen`-byte data segment the
/// caller queues separately (zero-copy Data-In); see [`data_trailer`] for what follows the data.
pub fn encode_header(out: &mut Vec<u8>, bhs: &Bhs, dlen: usize, hdgst: bool) {
    let mut h = *bhs;
    h.0[4] = 0;
    h.set_data_len(dlen);
    let start = out.len();
    out.extend_from_slice(&h.0);
    if hdgst {
        let d = digest(&out[start..]);
        out.extend_from_slice(&d.to_le_bytes());
    }
}

/// Padding and (optional) data digest that follow a data segment sent from its own buffer.
pub fn data_trailer(out: &mut Vec<u8>, data: &[u8], ddgst: bool) {
    let pad = pad4(data.len()) - data.len();
    out.extend_from_slice(&[0u8; 3][..pad]);
    if ddgst && !data.is_empty() {
        let d = crc32c::crc32c_append(crc32c::crc32c(data), &[0u8; 3][..pad]);
        out.extend_from_slice(&d.to_le_bytes());
    }
}

/// Parse a text data segment: NUL-terminated `key=value` pairs (a missing final NUL is tolerated).
pub fn parse_text(data: &[u8]) -> Result<Vec<(String, String)>, TextError> {
    let mut out = Vec::new();
    for item in data.split(|&b| b == 0) {
        if item.is_empty() {
            continue;
        }
        let s = std::str::from_utf8(item).map_err(|_| TextError::NotUtf8)?;
        let (k, v) = s.split_once('=').ok_or_else(|| TextError::NoEquals(s.chars().take(64).collect()))?;
        if k.is_empty() || k.len() > 63 {
            return Err(TextError::BadKey(k.chars().take(64).collect()));
        }
        if v.len() > 8192 {
            return Err(TextError::ValueTooLong(k.to_string()));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TextError {
    #[error("text segment is not UTF-8")]
    NotUtf8,
    #[error("text item {0:?} has no '='")]
    NoEquals(String),
    #[error("bad text key {0:?}")]
    BadKey(String),
    #[error("value of {0} too long")]
    ValueTooLong(String),
}

/// Encode `key=value\0` pairs.
pub fn encode_text(pairs: &[(String, String)]) -> Vec<u8> {
    let mut v = Vec::new();
    for (k, val) in pairs {
        v.extend_from_slice(k.as_bytes());
        v.push(b'=');
        v.extend_from_slice(val.as_bytes());
        v.push(0);
    }
    v
}

/// Serial number arithmetic (RFC 1982, 32 bits): a < b.
pub fn sn_lt(a: u32, b: u32) -> bool {
    a != b && (b.wrapping_sub(a) as i32) > 0
}
pub fn sn_le(a: u32, b: u32) -> bool {
    a == b || sn_lt(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_with_digests_and_padding() {
        let mut b = Bhs::new(op::SCSI_RSP, F_FINAL);
        b.set_itt(7);
        let mut out = Vec::new();
        encode(&mut out, &b, &[], b"hello", true, true);
        assert_eq!(out.len(), 48 + 4 + 8 + 4);
        let f = parse_frame(&out, true, true, 1 << 20).unwrap().unwrap();
        assert_eq!(f.total, out.len());
        assert_eq!(&out[f.data.0..f.data.1], b"hello");
        assert_eq!(f.bhs.itt(), 7);
        // partial input: need more
        assert!(parse_frame(&out[..50], true, true, 1 << 20).unwrap().is_none());
        assert!(parse_frame(&out[..10], true, true, 1 << 20).unwrap().is_none());
        // corrupt header digest
        let mut bad = out.clone();
        bad[3] ^= 1;
        assert_eq!(parse_frame(&bad, true, true, 1 << 20).unwrap_err().0, PduError::HeaderDigest);
        let mut bad = out.clone();
        bad[53] ^= 1;
        let e = parse_frame(&bad, true, true, 1 << 20).unwrap_err();
        assert_eq!(e.0, PduError::DataDigest);
        assert_eq!(e.1.unwrap().total, out.len());
        assert!(matches!(parse_frame(&out, false, false, 2), Err((PduError::TooLong(5, 2), None))));
    }

    #[test]
    fn header_alone_frames_before_its_data() {
        let mut b = Bhs::new(op::DATA_OUT, F_FINAL);
        b.set_itt(9);
        let mut out = Vec::new();
        encode(&mut out, &b, &[], b"hello", true, true);
        // The header and its digest are enough; the data segment has not arrived.
        let h = parse_header(&out[..52], true, true, 1 << 20).unwrap().unwrap();
        assert_eq!((h.data_start, h.data_len, h.trailer, h.bhs.itt()), (52, 5, 3 + 4, 9));
        assert_eq!(h.data_start + h.data_len + h.trailer, out.len());
        assert!(parse_header(&out[..51], true, true, 1 << 20).unwrap().is_none());
        let h = parse_header(&out[..48], false, false, 1 << 20).unwrap().unwrap();
        assert_eq!((h.data_start, h.trailer), (48, 3));
        let mut bad = out.clone();
        bad[20] ^= 1;
        assert_eq!(parse_header(&bad, true, true, 1 << 20).unwrap_err(), PduError::HeaderDigest);
        assert_eq!(parse_header(&out, true, true, 4).unwrap_err(), PduError::TooLong(5, 4));
        // No data: no padding and no data digest.
        let mut out = Vec::new();
        encode(&mut out, &b, &[], &[], false, true);
        assert_eq!(parse_header(&out, false, true, 1 << 20).unwrap().unwrap().trailer, 0);
    }

    #[test]
    fn split_encoding_matches_encode() {
        for (len, hd, dd) in [(5usize, true, true), (8, false, true), (4097, true, false), (0, true, true)] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let b = Bhs::new(op::DATA_IN, F_FINAL);
            let mut whole = Vec::new();
            encode(&mut whole, &b, &[], &data, hd, dd);
            let mut split = Vec::new();
            encode_header(&mut split, &b, data.len(), hd);
            split.extend_from_slice(&data);
            data_trailer(&mut split, &data, dd);
            assert_eq!(whole, split, "len {len}");
        }
    }

    #[test]
    fn crc32c_matches_rfc_vector() {
        // RFC 3720 B.4: 32 bytes of zeros.
        assert_eq!(digest(&[0u8; 32]), 0x8a91_36aa);
    }

    #[test]
    fn text_keys() {
        let t = encode_text(&[("A".into(), "1".into()), ("B".into(), "x=y".into())]);
        assert_eq!(parse_text(&t).unwrap(), vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]);
        assert!(parse_text(b"novalue\0").is_err());
        assert!(parse_text(&[0xff, b'=', 0]).is_err());
        assert_eq!(parse_text(b"K=v").unwrap().len(), 1);
    }

    #[test]
    fn serial_numbers() {
        assert!(sn_lt(1, 2));
        assert!(sn_lt(0xffff_fffe, 3));
        assert!(!sn_lt(3, 0xffff_fffe));
        assert!(sn_le(5, 5));
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x1234_5678u32;
        for _ in 0..2000 {
            let n = (seed % 200) as usize;
            let v: Vec<u8> = (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (seed >> 16) as u8
                })
                .collect();
            let _ = parse_frame(&v, seed & 1 == 0, seed & 2 == 0, 1 << 16);
            let _ = parse_text(&v);
        }
    }
}
