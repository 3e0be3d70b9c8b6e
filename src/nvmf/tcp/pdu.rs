//! NVMe/TCP PDU wire format (NVMe/TCP Transport Specification 1.0, section 3.6).
//!
//! Depends on nothing but `crc32c`, so it can be fuzzed alone. Decoding is two steps: [`frame`]
//! looks at the 8-byte common header and says how long the PDU is (or why it is malformed); once
//! that many bytes are buffered, [`Layout`] tells where the PDU-specific header, data and digests
//! are, and the typed decoders read the specific headers. Every access is bounds-checked; nothing
//! here panics on input bytes. Encoders append to a `Vec<u8>` that the caller reuses, so they do
//! not allocate once the vector has grown.

/// Common header length (CH).
pub const CH_LEN: usize = 8;
/// Digest length (CRC32C, little endian).
pub const DIGEST_LEN: usize = 4;
/// Largest header we accept (ICReq/ICResp are the longest at 128).
pub const MAX_HLEN: usize = 128;

/// PDU types (3.6.1).
pub mod ty {
    pub const ICREQ: u8 = 0x00;
    pub const ICRESP: u8 = 0x01;
    pub const H2C_TERM_REQ: u8 = 0x02;
    pub const C2H_TERM_REQ: u8 = 0x03;
    pub const CAPSULE_CMD: u8 = 0x04;
    pub const CAPSULE_RESP: u8 = 0x05;
    pub const H2C_DATA: u8 = 0x06;
    pub const C2H_DATA: u8 = 0x07;
    pub const R2T: u8 = 0x09;
}

/// Common header flags (3.6.2.1 and per-PDU).
pub mod flags {
    pub const HDGSTF: u8 = 0x01;
    pub const DDGSTF: u8 = 0x02;
    /// H2CData/C2HData: last PDU of this transfer.
    pub const LAST_PDU: u8 = 0x04;
    /// C2HData: the command completed successfully, no CapsuleResp follows.
    pub const SUCCESS: u8 = 0x08;
}

/// Fatal Error Status of a termination request (3.6.2.4 / 3.6.2.5).
pub mod fes {
    pub const INVALID_HEADER_FIELD: u16 = 0x01;
    pub const PDU_SEQUENCE_ERROR: u16 = 0x02;
    pub const HEADER_DIGEST_ERROR: u16 = 0x03;
    pub const DATA_OUT_OF_RANGE: u16 = 0x04;
    pub const R2T_LIMIT_EXCEEDED: u16 = 0x05;
    pub const UNSUPPORTED_PARAMETER: u16 = 0x06;
}

/// Header lengths fixed by the spec for each PDU type.
pub fn expected_hlen(pdu_type: u8) -> Option<usize> {
    Some(match pdu_type {
        ty::ICREQ | ty::ICRESP => 128,
        ty::H2C_TERM_REQ | ty::C2H_TERM_REQ => 24,
        ty::CAPSULE_CMD => 72,
        ty::CAPSULE_RESP | ty::H2C_DATA | ty::C2H_DATA | ty::R2T => 24,
        _ => return None,
    })
}

/// Why a PDU could not be accepted: maps to the termination request's FES and FEI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PduError {
    #[error("unknown or unexpected PDU type {0:#x}")]
    BadType(u8),
    #[error("bad header length {hlen} for PDU type {pdu_type:#x}")]
    BadHlen { pdu_type: u8, hlen: u8 },
    #[error("bad PDU length {0}")]
    BadPlen(u32),
    #[error("bad PDU data offset {0}")]
    BadPdo(u8),
    #[error("digest flags {0:#x} do not match the negotiated digests")]
    BadDigestFlags(u8),
    #[error("header digest mismatch")]
    HeaderDigest,
    #[error("data digest mismatch")]
    DataDigest,
    #[error("PDU field at byte {0} is invalid")]
    BadField(u32),
    #[error("data offset/length outside the transfer")]
    DataOutOfRange,
    #[error("PDU not allowed in this state")]
    Sequence,
    #[error("unsupported parameter at byte {0}")]
    Unsupported(u32),
}

impl PduError {
    /// (FES, FEI) for the termination request. FEI is the byte offset of the bad header field.
    pub fn fes_fei(&self) -> (u16, u32) {
        match *self {
            PduError::BadType(_) => (fes::INVALID_HEADER_FIELD, 0),
            PduError::BadHlen { .. } => (fes::INVALID_HEADER_FIELD, 2),
            PduError::BadPdo(_) => (fes::INVALID_HEADER_FIELD, 3),
            PduError::BadPlen(_) => (fes::INVALID_HEADER_FIELD, 4),
            PduError::BadDigestFlags(_) => (fes::INVALID_HEADER_FIELD, 1),
            PduError::HeaderDigest => (fes::HEADER_DIGEST_ERROR, 0),
            // A data digest error is not fatal in the spec (the command fails with a transient
            // transport error) but we treat a corrupt stream as fatal: simpler and safe.
            PduError::DataDigest => (fes::HEADER_DIGEST_ERROR, 0),
            PduError::BadField(off) => (fes::INVALID_HEADER_FIELD, off),
            PduError::DataOutOfRange => (fes::DATA_OUT_OF_RANGE, 0),
            PduError::Sequence => (fes::PDU_SEQUENCE_ERROR, 0),
            PduError::Unsupported(off) => (fes::UNSUPPORTED_PARAMETER, off),
        }
    }
}

/// The common header (3.6.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommonHeader {
    pub pdu_type: u8,
    pub flags: u8,
    pub hlen: u8,
    pub pdo: u8,
    pub plen: u32,
}

impl CommonHeader {
    pub fn parse(b: &[u8]) -> Option<CommonHeader> {
        let b: &[u8; 8] = b.get(..CH_LEN)?.try_into().ok()?;
        Some(CommonHeader {
            pdu_type: b[0],
            flags: b[1],
            hlen: b[2],
            pdo: b[3],
            plen: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        })
    }
}

/// Digests negotiated by ICReq/ICResp.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

/// Where the parts of a framed PDU are, as offsets from its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub ch: CommonHeader,
    pub hlen: usize,
    pub has_hdgst: bool,
    pub data_off: usize,
    pub data_len: usize,
    pub has_ddgst: bool,
    pub total: usize,
}

/// Validate a common header against the spec and the negotiated digests, and compute the PDU's
/// layout. `max_plen` bounds what we are willing to buffer. Called as soon as 8 bytes are in.
pub fn frame(ch: CommonHeader, dg: Digests, max_plen: usize) -> Result<Layout, PduError> {
    let want = expected_hlen(ch.pdu_type).ok_or(PduError::BadType(ch.pdu_type))?;
    if ch.hlen as usize != want {
        return Err(PduError::BadHlen { pdu_type: ch.pdu_type, hlen: ch.hlen });
    }
    let hlen = want;
    let plen = ch.plen as usize;
    if plen < hlen || plen > max_plen {
        return Err(PduError::BadPlen(ch.plen));
    }
    // Digests never cover ICReq/ICResp and termination requests (3.6.2.1).
    let digest_ok = !matches!(ch.pdu_type, ty::ICREQ | ty::ICRESP | ty::H2C_TERM_REQ | ty::C2H_TERM_REQ);
    let has_hdgst = digest_ok && dg.header;
    if digest_ok && ((ch.flags & flags::HDGSTF != 0) != dg.header) {
        return Err(PduError::BadDigestFlags(ch.flags));
    }
    if !digest_ok && ch.flags & (flags::HDGSTF | flags::DDGSTF) != 0 {
        return Err(PduError::BadDigestFlags(ch.flags));
    }
    let hend = hlen + if has_hdgst { DIGEST_LEN } else { 0 };
    if plen < hend {
        return Err(PduError::BadPlen(ch.plen));
    }
    if matches!(ch.pdu_type, ty::ICREQ | ty::ICRESP) && plen != 128 {
        return Err(PduError::BadPlen(ch.plen));
    }
    let carries_data = matches!(ch.pdu_type, ty::CAPSULE_CMD | ty::H2C_DATA | ty::C2H_DATA);
    if plen == hend {
        // No data: no data digest flag. PDO is reserved here (NVMe/TCP 3.6.2.1): some hosts
        // set it to HLEN, SPDK and Linux ignore it, and so do we.
        if ch.flags & flags::DDGSTF != 0 {
            return Err(PduError::BadDigestFlags(ch.flags));
        }
        return Ok(Layout { ch, hlen, has_hdgst, data_off: hend, data_len: 0, has_ddgst: false, total: plen });
    }
    if matches!(ch.pdu_type, ty::H2C_TERM_REQ | ty::C2H_TERM_REQ) {
        // Data is the offending PDU header, right after ours.
        return Ok(Layout { ch, hlen, has_hdgst: false, data_off: hlen, data_len: plen - hlen, has_ddgst: false, total: plen });
    }
    if !carries_data {
        return Err(PduError::BadPlen(ch.plen));
    }
    let has_ddgst = dg.data;
    if (ch.flags & flags::DDGSTF != 0) != dg.data {
        return Err(PduError::BadDigestFlags(ch.flags));
    }
    let pdo = ch.pdo as usize;
    if pdo < hend || pdo > plen {
        return Err(PduError::BadPdo(ch.pdo));
    }
    let tail = if has_ddgst { DIGEST_LEN } else { 0 };
    if plen < pdo + tail || plen - pdo - tail == 0 {
        return Err(PduError::BadPlen(ch.plen));
    }
    Ok(Layout { ch, hlen, has_hdgst, data_off: pdo, data_len: plen - pdo - tail, has_ddgst, total: plen })
}

impl Layout {
    /// Check the digests of a complete PDU (`pdu` holds exactly `total` bytes or more).
    pub fn check_digests(&self, pdu: &[u8]) -> Result<(), PduError> {
        if pdu.len() < self.total {
            return Err(PduError::BadPlen(self.ch.plen));
        }
        if self.has_hdgst {
            let got = le32(pdu, self.hlen).ok_or(PduError::HeaderDigest)?;
            if crc32c::crc32c(&pdu[..self.hlen]) != got {
                return Err(PduError::HeaderDigest);
            }
        }
        if self.has_ddgst {
            let data = &pdu[self.data_off..self.data_off + self.data_len];
            let got = le32(pdu, self.data_off + self.data_len).ok_or(PduError::DataDigest)?;
            if crc32c::crc32c(data) != got {
                return Err(PduError::DataDigest);
            }
        }
        Ok(())
    }
    /// The header's digest only (for PDUs whose data is consumed separately).
    pub fn check_header_digest(&self, pdu: &[u8]) -> Result<(), PduError> {
        if self.has_hdgst {
            let got = le32(pdu, self.hlen).ok_or(PduError::HeaderDigest)?;
            let h = pdu.get(..self.hlen).ok_or(PduError::HeaderDigest)?;
            if crc32c::crc32c(h) != got {
                return Err(PduError::HeaderDigest);
            }
        }
        Ok(())
    }
    pub fn data<'a>(&self, pdu: &'a [u8]) -> &'a [u8] {
        pdu.get(self.data_off..self.data_off + self.data_len).unwrap_or(&[])
    }
}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// ICReq (3.6.2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcReq {
    pub pfv: u16,
    /// Host PDU data alignment, in dwords minus one.
    pub hpda: u8,
    pub digests: Digests,
    /// Maximum outstanding R2Ts per command, 0's based.
    pub maxr2t: u32,
}

/// ICResp (3.6.2.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcResp {
    pub pfv: u16,
    /// Controller PDU data alignment.
    pub cpda: u8,
    pub digests: Digests,
    /// Largest H2CData payload the controller accepts, bytes.
    pub maxh2cdata: u32,
}

fn dgst_byte(d: Digests) -> u8 {
    (d.header as u8) | (d.data as u8) << 1
}
fn dgst_of(b: u8) -> Digests {
    Digests { header: b & 1 != 0, data: b & 2 != 0 }
}

impl IcReq {
    pub fn decode(pdu: &[u8]) -> Result<IcReq, PduError> {
        let ch = CommonHeader::parse(pdu).ok_or(PduError::BadPlen(0))?;
        if ch.pdu_type != ty::ICREQ {
            return Err(PduError::BadType(ch.pdu_type));
        }
        let pfv = le16(pdu, 8).ok_or(PduError::BadPlen(ch.plen))?;
        let hpda = *pdu.get(10).ok_or(PduError::BadPlen(ch.plen))?;
        let dg = *pdu.get(11).ok_or(PduError::BadPlen(ch.plen))?;
        let maxr2t = le32(pdu, 12).ok_or(PduError::BadPlen(ch.plen))?;
        if pfv != 0 {
            return Err(PduError::Unsupported(8));
        }
        if hpda > 31 {
            return Err(PduError::BadField(10));
        }
        Ok(IcReq { pfv, hpda, digests: dgst_of(dg), maxr2t })
    }
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut b = [0u8; 128];
        b[0] = ty::ICREQ;
        b[2] = 128;
        b[4..8].copy_from_slice(&128u32.to_le_bytes());
        b[8..10].copy_from_slice(&self.pfv.to_le_bytes());
        b[10] = self.hpda;
        b[11] = dgst_byte(self.digests);
        b[12..16].copy_from_slice(&self.maxr2t.to_le_bytes());
        out.extend_from_slice(&b);
    }
}

impl IcResp {
    pub fn decode(pdu: &[u8]) -> Result<IcResp, PduError> {
        let ch = CommonHeader::parse(pdu).ok_or(PduError::BadPlen(0))?;
        if ch.pdu_type != ty::ICRESP {
            return Err(PduError::BadType(ch.pdu_type));
        }
        let pfv = le16(pdu, 8).ok_or(PduError::BadPlen(ch.plen))?;
        let cpda = *pdu.get(10).ok_or(PduError::BadPlen(ch.plen))?;
        let dg = *pdu.get(11).ok_or(PduError::BadPlen(ch.plen))?;
        let maxh2cdata = le32(pdu, 12).ok_or(PduError::BadPlen(ch.plen))?;
        if pfv != 0 {
            return Err(PduError::Unsupported(8));
        }
        if cpda > 31 {
            return Err(PduError::BadField(10));
        }
        // The spec requires at least 4 KiB (3.6.2.3).
        if maxh2cdata < 4096 || maxh2cdata % 4 != 0 {
            return Err(PduError::BadField(12));
        }
        Ok(IcResp { pfv, cpda, digests: dgst_of(dg), maxh2cdata })
    }
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut b = [0u8; 128];
        b[0] = ty::ICRESP;
        b[2] = 128;
        b[4..8].copy_from_slice(&128u32.to_le_bytes());
        b[8..10].copy_from_slice(&self.pfv.to_le_bytes());
        b[10] = self.cpda;
        b[11] = dgst_byte(self.digests);
        b[12..16].copy_from_slice(&self.maxh2cdata.to_le_bytes());
        out.extend_from_slice(&b);
    }
}

/// The PDU-specific header shared by H2CData, C2HData (3.6.2.8, 3.6.2.9) and R2T (3.6.2.10):
/// command id, transfer tag, offset and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataHeader {
    pub cccid: u16,
    pub ttag: u16,
    pub offset: u32,
    pub length: u32,
}

impl DataHeader {
    pub fn decode(pdu: &[u8]) -> Result<DataHeader, PduError> {
        Ok(DataHeader {
            cccid: le16(pdu, 8).ok_or(PduError::BadField(8))?,
            ttag: le16(pdu, 10).ok_or(PduError::BadField(10))?,
            offset: le32(pdu, 12).ok_or(PduError::BadField(12))?,
            length: le32(pdu, 16).ok_or(PduError::BadField(16))?,
        })
    }
}

/// Append a common header plus a PDU-specific header; returns where the header started so the
/// caller can add the header digest with [`finish_header`].
fn put_ch(out: &mut Vec<u8>, pdu_type: u8, fl: u8, hlen: u8, pdo: u8, plen: u32) -> usize {
    let start = out.len();
    out.extend_from_slice(&[pdu_type, fl, hlen, pdo]);
    out.extend_from_slice(&plen.to_le_bytes());
    start
}

/// The 8-byte common header (3.6.1).
fn ch_bytes(pdu_type: u8, fl: u8, hlen: u8, pdo: u8, plen: u32) -> [u8; 8] {
    let l = plen.to_le_bytes();
    [pdu_type, fl, hlen, pdo, l[0], l[1], l[2], l[3]]
}

/// Append a complete PDU header and its digest if negotiated.
fn put_header(out: &mut Vec<u8>, hdr: &[u8], hdgst: bool) {
    out.extend_from_slice(hdr);
    if hdgst {
        out.extend_from_slice(&crc32c::crc32c(hdr).to_le_bytes());
    }
}

fn finish_header(out: &mut Vec<u8>, start: usize, hdgst: bool) {
    if hdgst {
        let crc = crc32c::crc32c(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
    }
}

/// Lengths for a data-carrying PDU: (flags digest bits, pdo, plen, padding after the header).
/// `pda` is the receiver's PDU data alignment (HPDA/CPDA: data starts at a multiple of
/// (pda + 1) * 4 bytes from the PDU start).
fn data_geometry(hlen: usize, dg: Digests, data_len: usize, pda: u8) -> (u8, u8, u32, usize) {
    let h = hlen + if dg.header { DIGEST_LEN } else { 0 };
    let mut fl = if dg.header { flags::HDGSTF } else { 0 };
    if data_len == 0 {
        return (fl, 0, h as u32, 0);
    }
    if dg.data {
        fl |= flags::DDGSTF;
    }
    let align = (pda as usize + 1) * 4;
    let pdo = if pda == 0 { h } else { h.div_ceil(align) * align };
    let plen = pdo + data_len + if dg.data { DIGEST_LEN } else { 0 };
    (fl, pdo as u8, plen as u32, pdo - h)
}

/// Append the data digest of `data` if negotiated.
pub fn put_data_digest(out: &mut Vec<u8>, dg: Digests, data: &[u8]) {
    if dg.data && !data.is_empty() {
        out.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
    }
}

/// CapsuleCmd (3.6.2.6): the SQE plus in-capsule data.
pub fn encode_capsule_cmd(out: &mut Vec<u8>, dg: Digests, cpda: u8, sqe: &[u8; 64], data: &[u8]) {
    let (fl, pdo, plen, pad) = data_geometry(72, dg, data.len(), cpda);
    let s = put_ch(out, ty::CAPSULE_CMD, fl, 72, pdo, plen);
    out.extend_from_slice(sqe);
    finish_header(out, s, dg.header);
    out.resize(out.len() + pad, 0);
    out.extend_from_slice(data);
    put_data_digest(out, dg, data);
}

/// CapsuleResp (3.6.2.7): the CQE.
pub fn encode_capsule_resp(out: &mut Vec<u8>, dg: Digests, cqe: &[u8; 16]) {
    let h = if dg.header { flags::HDGSTF } else { 0 };
    // Built whole and appended once: one per command on the completion path.
    let mut p = [0u8; 24];
    p[..8].copy_from_slice(&ch_bytes(ty::CAPSULE_RESP, h, 24, 0, 24 + if dg.header { 4 } else { 0 }));
    p[8..].copy_from_slice(cqe);
    put_header(out, &p, dg.header);
}

/// Header of a C2HData or H2CData PDU whose `len` data bytes the caller appends next, followed by
/// [`put_data_digest`]. `extra_flags` carries LAST_PDU / SUCCESS.
pub fn encode_data_header(out: &mut Vec<u8>, pdu_type: u8, dg: Digests, pda: u8, h: DataHeader, extra_flags: u8) {
    let (fl, pdo, plen, pad) = data_geometry(24, dg, h.length as usize, pda);
    // Built whole and appended once: one per read on the completion path.
    let mut p = [0u8; 24];
    p[..8].copy_from_slice(&ch_bytes(pdu_type, fl | extra_flags, 24, pdo, plen));
    p[8..10].copy_from_slice(&h.cccid.to_le_bytes());
    p[10..12].copy_from_slice(&h.ttag.to_le_bytes());
    p[12..16].copy_from_slice(&h.offset.to_le_bytes());
    p[16..20].copy_from_slice(&h.length.to_le_bytes());
    put_header(out, &p, dg.header);
    if pad > 0 {
        out.resize(out.len() + pad, 0);
    }
}

/// R2T (3.6.2.10).
pub fn encode_r2t(out: &mut Vec<u8>, dg: Digests, h: DataHeader) {
    let fl = if dg.header { flags::HDGSTF } else { 0 };
    let s = put_ch(out, ty::R2T, fl, 24, 0, 24 + if dg.header { 4 } else { 0 });
    out.extend_from_slice(&h.cccid.to_le_bytes());
    out.extend_from_slice(&h.ttag.to_le_bytes());
    out.extend_from_slice(&h.offset.to_le_bytes());
    out.extend_from_slice(&h.length.to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    finish_header(out, s, dg.header);
}

/// H2CTermReq / C2HTermReq (3.6.2.4, 3.6.2.5): FES, FEI and up to `max_data` bytes of the
/// offending PDU header (152 - 24 = 128 for C2H, same for H2C).
pub fn encode_term_req(out: &mut Vec<u8>, pdu_type: u8, fes_: u16, fei: u32, offending: &[u8]) {
    let data = &offending[..offending.len().min(128)];
    put_ch(out, pdu_type, 0, 24, 0, (24 + data.len()) as u32);
    out.extend_from_slice(&fes_.to_le_bytes());
    out.extend_from_slice(&fei.to_le_bytes());
    out.extend_from_slice(&[0u8; 10]);
    out.extend_from_slice(data);
}

/// A decoded termination request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TermReq {
    pub fes: u16,
    pub fei: u32,
}

impl TermReq {
    pub fn decode(pdu: &[u8]) -> Result<TermReq, PduError> {
        Ok(TermReq { fes: le16(pdu, 8).ok_or(PduError::BadField(8))?, fei: le32(pdu, 10).ok_or(PduError::BadField(10))? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: Digests = Digests { header: true, data: true };

    fn layout_of(buf: &[u8], dg: Digests) -> Result<Layout, PduError> {
        frame(CommonHeader::parse(buf).unwrap(), dg, 1 << 20)
    }

    #[test]
    fn icreq_roundtrip() {
        let mut v = Vec::new();
        let r = IcReq { pfv: 0, hpda: 0, digests: BOTH, maxr2t: 3 };
        r.encode(&mut v);
        assert_eq!(v.len(), 128);
        let l = layout_of(&v, Digests::default()).unwrap();
        assert_eq!(l.total, 128);
        assert_eq!(IcReq::decode(&v).unwrap(), r);
        let mut bad = v.clone();
        bad[8] = 1;
        assert_eq!(IcReq::decode(&bad), Err(PduError::Unsupported(8)));
        let mut v2 = Vec::new();
        IcResp { pfv: 0, cpda: 0, digests: BOTH, maxh2cdata: 131072 }.encode(&mut v2);
        assert_eq!(IcResp::decode(&v2).unwrap().maxh2cdata, 131072);
    }

    #[test]
    fn capsule_with_digests() {
        let sqe = [7u8; 64];
        let data = [9u8; 100];
        let mut v = Vec::new();
        encode_capsule_cmd(&mut v, BOTH, 0, &sqe, &data);
        let l = layout_of(&v, BOTH).unwrap();
        assert_eq!((l.data_off, l.data_len, l.total), (76, 100, v.len()));
        l.check_digests(&v).unwrap();
        assert_eq!(l.data(&v), &data[..]);
        let mut bad = v.clone();
        bad[80] ^= 1;
        assert_eq!(l.check_digests(&bad), Err(PduError::DataDigest));
        bad = v.clone();
        bad[20] ^= 1;
        assert_eq!(l.check_digests(&bad), Err(PduError::HeaderDigest));
        // Digest flags that disagree with the negotiation are a header error.
        assert!(matches!(layout_of(&v, Digests::default()), Err(PduError::BadDigestFlags(_))));
    }

    #[test]
    fn data_pdus_and_resp() {
        let mut v = Vec::new();
        let h = DataHeader { cccid: 5, ttag: 6, offset: 4096, length: 8 };
        encode_data_header(&mut v, ty::C2H_DATA, Digests::default(), 0, h, flags::LAST_PDU | flags::SUCCESS);
        v.extend_from_slice(&[1; 8]);
        let l = layout_of(&v, Digests::default()).unwrap();
        assert_eq!(l.data_len, 8);
        assert_eq!(DataHeader::decode(&v).unwrap(), h);
        // With both digests and a data alignment (HPDA 3: data at a multiple of 16 bytes).
        let mut v = vec![0xee; 3];
        encode_data_header(&mut v, ty::C2H_DATA, BOTH, 3, h, flags::LAST_PDU);
        let data = [7u8; 8];
        v.extend_from_slice(&data);
        put_data_digest(&mut v, BOTH, &data);
        let p = &v[3..];
        let l = layout_of(p, BOTH).unwrap();
        assert_eq!((l.data_off, l.data_len, l.total), (32, 8, 44));
        l.check_digests(p).unwrap();
        assert_eq!(l.data(p), &data);
        assert_eq!(DataHeader::decode(p).unwrap(), h);
        let mut r = Vec::new();
        encode_capsule_resp(&mut r, BOTH, &[0; 16]);
        let l = layout_of(&r, BOTH).unwrap();
        assert_eq!(l.total, 28);
        l.check_digests(&r).unwrap();
        let mut t = Vec::new();
        encode_term_req(&mut t, ty::C2H_TERM_REQ, fes::INVALID_HEADER_FIELD, 2, &r[..24]);
        let l = layout_of(&t, BOTH).unwrap();
        assert_eq!(l.data_len, 24);
        assert_eq!(TermReq::decode(&t).unwrap(), TermReq { fes: 1, fei: 2 });
    }

    #[test]
    fn rejects_malformed_headers() {
        let ch = |t, f, h, p, l| CommonHeader { pdu_type: t, flags: f, hlen: h, pdo: p, plen: l };
        let dg = Digests::default();
        assert_eq!(frame(ch(0x42, 0, 24, 0, 24), dg, 1 << 20), Err(PduError::BadType(0x42)));
        assert!(matches!(frame(ch(ty::CAPSULE_CMD, 0, 24, 0, 72), dg, 1 << 20), Err(PduError::BadHlen { .. })));
        assert_eq!(frame(ch(ty::CAPSULE_CMD, 0, 72, 0, 10), dg, 1 << 20), Err(PduError::BadPlen(10)));
        assert_eq!(frame(ch(ty::CAPSULE_CMD, 0, 72, 0, 1 << 30), dg, 1 << 20), Err(PduError::BadPlen(1 << 30)));
        assert_eq!(frame(ch(ty::CAPSULE_CMD, 0, 72, 10, 100), dg, 1 << 20), Err(PduError::BadPdo(10)));
        assert_eq!(frame(ch(ty::CAPSULE_CMD, 0, 72, 200, 100), dg, 1 << 20), Err(PduError::BadPdo(200)));
        // PDO of a PDU without data is reserved: whatever it holds, the PDU frames.
        for pdo in [0, 72, 255] {
            let l = frame(ch(ty::CAPSULE_CMD, 0, 72, pdo, 72), dg, 1 << 20).unwrap();
            assert_eq!((l.data_len, l.total), (0, 72));
        }
        assert_eq!(frame(ch(ty::ICREQ, 0, 128, 0, 129), dg, 1 << 20), Err(PduError::BadPlen(129)));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), h: bool, d: bool) {
            let dg = Digests { header: h, data: d };
            if let Some(ch) = CommonHeader::parse(&bytes) {
                if let Ok(l) = frame(ch, dg, 1 << 16) {
                    let _ = l.check_digests(&bytes);
                    let _ = l.check_header_digest(&bytes);
                    let _ = l.data(&bytes);
                }
            }
            let _ = IcReq::decode(&bytes);
            let _ = IcResp::decode(&bytes);
            let _ = DataHeader::decode(&bytes);
            let _ = TermReq::decode(&bytes);
        }
    }
}
