//! EXTENDED COPY (LID1) and RECEIVE COPY RESULTS (SPC-4 6.4, 6.18; parameter formats from
//! SPC-3 6.3/7.x): block-to-block copies between LUNs of this target, addressed by their VPD 0x83
//! NAA designator (identification descriptor CSCDs), executed by the copy manager as a chain of
//! reads and writes through the volume (so reservations and range locks apply).

use super::sense::{sense_key, Sense, PARAM_LIST_LENGTH_ERROR};
use super::LunMap;
use crate::volume::identity;

pub const MAX_CSCD_DESCRIPTORS: u16 = 2;
pub const MAX_SEGMENT_DESCRIPTORS: u16 = 1;
pub use super::cdb::MAX_DESCRIPTOR_LIST_LENGTH;
/// Largest segment, bytes.
pub const MAX_SEGMENT_LENGTH: u32 = 256 << 20;

const CSCD_IDENTIFICATION: u8 = 0xe4;
const SEG_BLOCK_TO_BLOCK: u8 = 0x02;

/// COPY ABORTED with the given additional sense (SPC-4 6.4.5: errors found while processing).
pub fn copy_aborted(asc: u8, ascq: u8) -> Sense {
    Sense::new(sense_key::COPY_ABORTED, asc, ascq)
}

/// The copy target device is not reachable (no LUN of ours has that designator).
fn unreachable() -> Sense {
    copy_aborted(0x0d, 0x02)
}

/// One block-to-block segment with its CSCDs resolved to LUN indexes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub src: usize,
    pub dst: usize,
    pub src_lba: u64,
    pub dst_lba: u64,
    pub blocks: u64,
}

/// A parsed EXTENDED COPY parameter list.
#[derive(Debug, PartialEq, Eq)]
pub struct CopyList {
    pub list_id: u8,
    /// LIST ID USAGE 00b/01b: keep the results for RECEIVE COPY RESULTS.
    pub keep: bool,
    pub segments: Vec<Segment>,
}

fn be(b: &[u8]) -> u64 {
    b.iter().fold(0, |a, &x| (a << 8) | x as u64)
}

/// Parse and check an EXTENDED COPY(LID1) parameter list (SPC-3 6.3.1) against our LUNs.
pub fn parse(data: &[u8], luns: &LunMap) -> Result<CopyList, Sense> {
    if data.len() < 16 {
        return Err(PARAM_LIST_LENGTH_ERROR);
    }
    let list_id = data[0];
    let usage = (data[1] >> 3) & 0x03;
    let cscd_len = be(&data[2..4]) as usize;
    let seg_len = be(&data[8..12]) as usize;
    let inline_len = be(&data[12..16]) as usize;
    if inline_len != 0 {
        return Err(Sense::invalid_param_field(12, None)); // no inline data supported
    }
    if 16 + cscd_len + seg_len > data.len() || (cscd_len + seg_len) as u32 > MAX_DESCRIPTOR_LIST_LENGTH {
        return Err(PARAM_LIST_LENGTH_ERROR);
    }
    if cscd_len / 32 > MAX_CSCD_DESCRIPTORS as usize {
        return Err(Sense::new(sense_key::ILLEGAL_REQUEST, 0x26, 0x06)); // TOO MANY TARGET DESCRIPTORS
    }
    let segs_raw = &data[16 + cscd_len..16 + cscd_len + seg_len];
    let mut seg_descs = Vec::new();
    let mut at = 0;
    while at + 4 <= segs_raw.len() {
        let len = 4 + be(&segs_raw[at + 2..at + 4]) as usize;
        if at + len > segs_raw.len() {
            return Err(PARAM_LIST_LENGTH_ERROR);
        }
        seg_descs.push((16 + cscd_len + at, &segs_raw[at..at + len]));
        at += len;
    }
    if seg_descs.len() > MAX_SEGMENT_DESCRIPTORS as usize {
        return Err(Sense::new(sense_key::ILLEGAL_REQUEST, 0x26, 0x08)); // TOO MANY SEGMENT DESCRIPTORS
    }
    // CSCD descriptors: identification descriptors naming one of our LUNs.
    let mut cscds = Vec::new();
    for i in 0..cscd_len / 32 {
        let off = 16 + 32 * i;
        let d = &data[off..off + 32];
        if d[0] != CSCD_IDENTIFICATION {
            return Err(Sense::new(sense_key::ILLEGAL_REQUEST, 0x26, 0x07)); // UNSUPPORTED TARGET DESCRIPTOR TYPE CODE
        }
        // LU ID TYPE (bits 7-6) and NUL (bit 5) are obsolete in SPC-4 and ignored; a peripheral
        // type other than a block device names no LUN of ours.
        if d[1] & 0x1f != 0 {
            return Err(unreachable());
        }
        let (code_set, typ, len) = (d[4] & 0x0f, d[5] & 0x0f, d[7] as usize);
        let id = &d[8..8 + len.min(20)];
        let found = luns.luns.iter().position(|l| {
            code_set == 1 && typ == 3 && id == identity::naa_designator(&l.volume.uuid()).as_slice()
        });
        let Some(idx) = found else { return Err(unreachable()) };
        let bl = be(&d[29..32]) as u32;
        if bl != luns.luns[idx].volume.block_size() {
            return Err(Sense::invalid_param_field((off + 29) as u16, None));
        }
        cscds.push(idx);
    }
    let mut segments = Vec::with_capacity(seg_descs.len());
    for (off, d) in seg_descs {
        if d[0] != SEG_BLOCK_TO_BLOCK {
            return Err(Sense::new(sense_key::ILLEGAL_REQUEST, 0x26, 0x09)); // UNSUPPORTED SEGMENT DESCRIPTOR TYPE CODE
        }
        if d.len() != 28 {
            return Err(Sense::invalid_param_field((off + 2) as u16, None));
        }
        if d[1] & 0x02 != 0 {
            return Err(Sense::invalid_param_field((off + 1) as u16, Some(1))); // DC=1 not supported
        }
        let (si, di) = (be(&d[4..6]) as usize, be(&d[6..8]) as usize);
        let (Some(&src), Some(&dst)) = (cscds.get(si), cscds.get(di)) else {
            return Err(unreachable());
        };
        let blocks = be(&d[10..12]);
        let (src_lba, dst_lba) = (be(&d[12..20]), be(&d[20..28]));
        let cap_ok = |idx: usize, lba: u64| super::cdb::in_range(lba, blocks, luns.luns[idx].volume.num_blocks());
        if !cap_ok(src, src_lba) || !cap_ok(dst, dst_lba) {
            // The copy manager found the range outside the device while processing the segment.
            return Err(copy_aborted(0x00, 0x00));
        }
        if blocks * luns.luns[src].volume.block_size() as u64 > MAX_SEGMENT_LENGTH as u64 {
            return Err(Sense::invalid_param_field((off + 10) as u16, None));
        }
        segments.push(Segment { src, dst, src_lba, dst_lba, blocks });
    }
    Ok(CopyList { list_id, keep: usage < 2, segments })
}

/// RECEIVE COPY RESULTS / OPERATING PARAMETERS (SPC-3 6.18.4).
pub fn operating_parameters() -> Vec<u8> {
    let mut d = vec![0u8; 44];
    d[8..10].copy_from_slice(&MAX_CSCD_DESCRIPTORS.to_be_bytes());
    d[10..12].copy_from_slice(&MAX_SEGMENT_DESCRIPTORS.to_be_bytes());
    d[12..16].copy_from_slice(&MAX_DESCRIPTOR_LIST_LENGTH.to_be_bytes());
    d[16..20].copy_from_slice(&MAX_SEGMENT_LENGTH.to_be_bytes());
    // Inline and held data: none. One copy at a time per command (they run to completion).
    d[34..36].copy_from_slice(&1u16.to_be_bytes());
    d[36] = 1;
    d[37] = 9; // data segment granularity 512 bytes (log2)
    d.extend_from_slice(&[SEG_BLOCK_TO_BLOCK, CSCD_IDENTIFICATION]);
    d[43] = 2;
    let avail = (d.len() - 4) as u32;
    d[0..4].copy_from_slice(&avail.to_be_bytes());
    d
}

/// RECEIVE COPY RESULTS / COPY STATUS of a finished copy (SPC-3 6.18.2): completed, good.
pub fn copy_status(segments: u16, bytes: u64) -> Vec<u8> {
    let mut d = vec![0u8; 12];
    d[0..4].copy_from_slice(&8u32.to_be_bytes());
    d[4] = 0x01; // HDD=0, copy manager status: operation completed without errors
    d[5..7].copy_from_slice(&segments.to_be_bytes());
    // Transfer count in KiB units (0x01) so large copies fit.
    d[7] = 0x01;
    d[8..12].copy_from_slice(&((bytes / 1024).min(u32::MAX as u64) as u32).to_be_bytes());
    d
}

/// VPD 0x8F third-party copy page (SPC-4 7.8.17) with its Supported Commands descriptor.
pub fn vpd_third_party_copy() -> Vec<u8> {
    // EXTENDED COPY (LID1 = SA 00h), RECEIVE COPY RESULTS (COPY STATUS 00h, OPERATING PARAMETERS 03h).
    let cmds: [&[u8]; 2] = [&[0x83, 1, 0x00], &[0x84, 2, 0x00, 0x03]];
    let mut list: Vec<u8> = cmds.concat();
    let mut desc = vec![0u8, 0x01, 0, 0, list.len() as u8];
    desc.append(&mut list);
    while desc.len() % 4 != 0 {
        desc.push(0);
    }
    let dlen = (desc.len() - 4) as u16;
    desc[2..4].copy_from_slice(&dlen.to_be_bytes());
    let mut page = vec![0u8, 0x8f];
    page.extend_from_slice(&(desc.len() as u16).to_be_bytes());
    page.extend_from_slice(&desc);
    page
}

/// A copy in progress: which segment, how far, and whether the current chunk is being read or
/// written.
pub(super) struct CopyJob {
    pub list: CopyList,
    /// The LUN the command was addressed to (results are held per LUN and list id).
    pub lun: usize,
    pub seg: usize,
    pub done: u64,
    pub chunk: u64,
    pub writing: bool,
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bdev::malloc::MallocBdev;
    use crate::scsi::Lun;
    use crate::volume::Volume;
    use std::sync::Arc;

    fn luns() -> LunMap {
        let b = Arc::new(MallocBdev::new("x", 4096, 512, None).unwrap());
        LunMap { luns: vec![Arc::new(Lun::new(0, Arc::new(Volume::new(b))))] }
    }

    fn list(l: &LunMap, seg: (u16, u16, u16, u64, u64)) -> Vec<u8> {
        let mut d = vec![0u8; 16];
        d[0] = 7;
        d[3] = 32;
        d[11] = 28;
        let mut c = [0u8; 32];
        c[0] = 0xe4;
        c[4] = 1;
        c[5] = 3;
        c[7] = 16;
        c[8..24].copy_from_slice(&identity::naa_designator(&l.luns[0].volume.uuid()));
        c[30] = 2; // 512
        d.extend_from_slice(&c);
        let mut s = [0u8; 28];
        s[0] = 2;
        s[3] = 24;
        s[4..6].copy_from_slice(&seg.0.to_be_bytes());
        s[6..8].copy_from_slice(&seg.1.to_be_bytes());
        s[10..12].copy_from_slice(&seg.2.to_be_bytes());
        s[12..20].copy_from_slice(&seg.3.to_be_bytes());
        s[20..28].copy_from_slice(&seg.4.to_be_bytes());
        d.extend_from_slice(&s);
        d
    }

    #[test]
    fn parses_a_block_to_block_copy() {
        let l = luns();
        let c = parse(&list(&l, (0, 0, 100, 0, 2048)), &l).unwrap();
        assert_eq!(c.list_id, 7);
        assert!(c.keep);
        assert_eq!(c.segments, vec![Segment { src: 0, dst: 0, src_lba: 0, dst_lba: 2048, blocks: 100 }]);
    }

    #[test]
    fn refuses_bad_lists() {
        let l = luns();
        let good = list(&l, (0, 0, 100, 0, 2048));
        assert_eq!(parse(&good[..16 + 31], &l), Err(PARAM_LIST_LENGTH_ERROR));
        let e = parse(&list(&l, (0, 1, 100, 0, 2048)), &l).unwrap_err();
        assert_eq!((e.key, e.asc, e.ascq), (0x0a, 0x0d, 0x02));
        assert_eq!(parse(&list(&l, (0, 0, 100, 0, 4090)), &l).unwrap_err().key, 0x0a);
        let mut bad = good.clone();
        bad[16] = 0xe0;
        assert_eq!(parse(&bad, &l).unwrap_err().ascq, 0x07);
        let mut bad = good.clone();
        bad[48] = 0x03;
        assert_eq!(parse(&bad, &l).unwrap_err().ascq, 0x09);
        let mut ignored = good.clone();
        ignored[17] = 0xe0; // LU ID TYPE and NUL: obsolete in SPC-4
        assert!(parse(&ignored, &l).is_ok());
        let mut bad = good.clone();
        bad[17] = 0x05; // a CD-ROM
        assert_eq!(parse(&bad, &l).unwrap_err().key, 0x0a);
        let mut bad = good;
        bad[26] ^= 0xff; // designator names no LUN of ours
        assert_eq!(parse(&bad, &l).unwrap_err().asc, 0x0d);
    }

    #[test]
    fn result_pages() {
        let op = operating_parameters();
        assert_eq!(be(&op[0..4]) as usize, op.len() - 4);
        assert_eq!(op[43], 2);
        let v = vpd_third_party_copy();
        assert_eq!(be(&v[2..4]) as usize, v.len() - 4);
        assert_eq!(v.len() % 4, 0);
        assert_eq!(copy_status(1, 4096)[4], 1);
    }
}
