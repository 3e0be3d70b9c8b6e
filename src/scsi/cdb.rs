//! CDB field decoding (SBC-3 5.x / SPC-4 6.x). Decoders read a fixed 32-byte array, so no index
//! can go out of bounds whatever the transport delivered; a bad field comes back as the sense data
//! with its field pointer.

use super::sense::{Sense, INVALID_FIELD_IN_CDB};

/// Big-endian integer of up to 8 bytes at `at..at+n` (bounds are the 32-byte array's).

/// Longest EXTENDED COPY descriptor list we accept (SPC-4 6.4, reported in RECEIVE COPY
/// OPERATING PARAMETERS): sizes the parameter data of the CDB, so it lives with the CDB rules.
pub const MAX_DESCRIPTOR_LIST_LENGTH: u32 = 1024;
pub fn be(cdb: &[u8; 32], at: usize, n: usize) -> u64 {
    cdb.iter().skip(at).take(n).fold(0u64, |a, &b| (a << 8) | b as u64)
}

/// The CDB length of an opcode by its group code (SPC-4 4.2.5.1); 0 for vendor/reserved groups.
pub fn cdb_len(opcode: u8) -> usize {
    match opcode >> 5 {
        0 => 6,
        1 | 2 => 10,
        4 => 16,
        5 => 12,
        _ => 0,
    }
}

/// The block-addressed fields shared by READ, WRITE, VERIFY, WRITE AND VERIFY, ORWRITE, PRE-FETCH,
/// SYNCHRONIZE CACHE, WRITE SAME, WRITE ATOMIC and COMPARE AND WRITE.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockCdb {
    pub lba: u64,
    pub blocks: u32,
    /// Byte 1 (RDPROTECT/WRPROTECT, DPO, FUA, BYTCHK, UNMAP, NDOB ... depending on the opcode).
    pub flags: u8,
}

impl BlockCdb {
    pub fn fua(&self) -> bool {
        self.flags & 0x08 != 0
    }
    /// RDPROTECT / WRPROTECT / VRPROTECT / ORPROTECT (bits 7..5).
    pub fn protect(&self) -> u8 {
        self.flags >> 5
    }
}

/// Decode the LBA and transfer length of a block command (SBC-3 tables for each opcode).
pub fn decode_block(cdb: &[u8; 32]) -> Result<BlockCdb, Sense> {
    let flags = cdb[1];
    let (lba, blocks) = match cdb[0] {
        // READ(6)/WRITE(6) (SBC-3 5.8, 5.39): 21-bit LBA, 0 blocks means 256.
        0x08 | 0x0a => {
            let lba = be(cdb, 1, 3) & 0x1f_ffff;
            let n = cdb[4] as u32;
            return Ok(BlockCdb { lba, blocks: if n == 0 { 256 } else { n }, flags: 0 });
        }
        // 10-byte: LBA 2..6, length 7..9.
        0x28 | 0x2a | 0x2e | 0x2f | 0x34 | 0x35 | 0x41 => (be(cdb, 2, 4), be(cdb, 7, 2) as u32),
        // 12-byte: LBA 2..6, length 6..10.
        0xa8 | 0xaa | 0xae | 0xaf => (be(cdb, 2, 4), be(cdb, 6, 4) as u32),
        // COMPARE AND WRITE (SBC-3 5.2): LBA 2..10, NUMBER OF LOGICAL BLOCKS in byte 13.
        0x89 => (be(cdb, 2, 8), cdb[13] as u32),
        // WRITE ATOMIC(16) (SBC-4 5.48): LBA 2..10, length 12..14.
        0x9c => (be(cdb, 2, 8), be(cdb, 12, 2) as u32),
        // 16-byte: LBA 2..10, length 10..14.
        0x88 | 0x8a | 0x8b | 0x8e | 0x8f | 0x90 | 0x91 | 0x93 => (be(cdb, 2, 8), be(cdb, 10, 4) as u32),
        _ => return Err(INVALID_FIELD_IN_CDB),
    };
    Ok(BlockCdb { lba, blocks, flags })
}

/// Allocation length of a data-in command at `at..at+n`.
pub fn alloc_len(cdb: &[u8; 32], at: usize, n: usize) -> usize {
    be(cdb, at, n) as usize
}

/// The most Data-Out bytes a command can use, from its CDB alone (`block_size` of its LUN): a
/// transport need not buffer more even when the initiator's EDTL is larger. Some(0) for commands
/// without Data-Out; None for opcodes this core does not know (keep EDTL). Parameter lists are
/// bounded by their length field; the EXTENDED COPY list by the largest one we accept.
pub fn data_out_len(cdb: &[u8; 32], block_size: u32) -> Option<u64> {
    let bs = block_size as u64;
    let blocks = || decode_block(cdb).map(|b| b.blocks as u64).unwrap_or(0);
    Some(match cdb[0] {
        // WRITE, WRITE AND VERIFY, ORWRITE(16), WRITE ATOMIC(16).
        0x0a | 0x2a | 0xaa | 0x8a | 0x2e | 0xae | 0x8e | 0x8b | 0x9c => blocks() * bs,
        // COMPARE AND WRITE: verify data then write data (SBC-3 5.2).
        0x89 => 2 * blocks() * bs,
        // WRITE SAME(10/16): one block, none with NDOB (SBC-4 5.50).
        0x41 => bs,
        0x93 => if cdb[1] & 0x01 != 0 { 0 } else { bs },
        // VERIFY(10/12/16): BYTCHK 01b the range, 11b one block (SBC-4 5.33).
        0x2f | 0xaf | 0x8f => match (cdb[1] >> 1) & 0x03 {
            1 => blocks() * bs,
            3 => bs,
            _ => 0,
        },
        // UNMAP, MODE SELECT(10): 2-byte PARAMETER LIST LENGTH at 7; MODE SELECT(6): byte 4.
        0x42 | 0x55 => be(cdb, 7, 2),
        0x15 => cdb[4] as u64,
        // PERSISTENT RESERVE OUT: 4-byte PARAMETER LIST LENGTH at 5 (SPC-4 6.16.1).
        0x5f => be(cdb, 5, 4),
        // EXTENDED COPY(LID1): header plus the longest descriptor list we take.
        0x83 => be(cdb, 10, 4).min(16 + MAX_DESCRIPTOR_LIST_LENGTH as u64),
        // Commands this core answers without Data-Out.
        0x00 | 0x03 | 0x12 | 0x1a | 0x5a | 0x1b | 0x1e | 0x25 | 0x37 | 0xb7 | 0x9e | 0xa0 | 0xa3 | 0x84 | 0x5e
        | 0x08 | 0x28 | 0xa8 | 0x88 | 0x34 | 0x90 | 0x35 | 0x91 | 0x16 | 0x17 | 0x56 | 0x57 => 0,
        _ => return None,
    })
}

/// A transfer residual against the length the transport announced (SAM-5 5.4.3; iSCSI carries it
/// as the U/O flags and Residual Count, RFC 7143 §11.4.5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Residual {
    /// The command uses fewer bytes than announced.
    Under(u32),
    /// The command asks for more bytes than announced.
    Over(u32),
}

/// How a command's Data-Out fits the expected data transfer length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataOutFit {
    pub resid: Option<Residual>,
    /// False: not one whole block is covered, nothing is written; answer GOOD with the residual.
    pub run: bool,
}

/// For WRITE and WRITE AND VERIFY, compare the CDB's transfer length with EDTL and give the
/// residual. When EDTL is shorter than the CDB asks for (overflow), only the whole blocks EDTL
/// covers are written: the CDB is cut down to them, so no block beyond what the initiator meant to
/// send is touched. Other commands are left as they are (their parameter lists carry lengths).
pub fn fit_data_out(cdb: &mut [u8; 32], edtl: u32, block_size: u32) -> DataOutFit {
    let keep = DataOutFit { resid: None, run: true };
    if !matches!(cdb[0], 0x0a | 0x2a | 0xaa | 0x8a | 0x2e | 0xae | 0x8e) || block_size == 0 {
        return keep;
    }
    let Ok(b) = decode_block(cdb) else { return keep };
    let bs = block_size as u64;
    let needed = b.blocks as u64 * bs;
    let edtl64 = edtl as u64;
    if needed == edtl64 {
        return keep;
    }
    if needed < edtl64 {
        return DataOutFit { resid: Some(Residual::Under(edtl - needed as u32)), run: true };
    }
    let resid = Some(Residual::Over((needed - edtl64).min(u32::MAX as u64) as u32));
    let blocks = (edtl64 / bs) as u32;
    if blocks == 0 {
        return DataOutFit { resid, run: false };
    }
    match cdb[0] {
        0x0a => cdb[4] = blocks as u8,
        0x2a | 0x2e => cdb[7..9].copy_from_slice(&(blocks as u16).to_be_bytes()),
        0xaa | 0xae => cdb[6..10].copy_from_slice(&blocks.to_be_bytes()),
        _ => cdb[10..14].copy_from_slice(&blocks.to_be_bytes()),
    }
    DataOutFit { resid, run: true }
}

/// Check an LBA range against the capacity (SBC-3 4.5: LOGICAL BLOCK ADDRESS OUT OF RANGE).
pub fn in_range(lba: u64, blocks: u64, capacity: u64) -> bool {
    lba.checked_add(blocks).is_some_and(|e| e <= capacity)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cdb(bytes: &[u8]) -> [u8; 32] {
        let mut c = [0u8; 32];
        c[..bytes.len()].copy_from_slice(bytes);
        c
    }

    #[test]
    fn six_byte_zero_means_256() {
        let c = cdb(&[0x08, 0xff, 0x12, 0x34, 0x00, 0]);
        let d = decode_block(&c).unwrap();
        assert_eq!(d.lba, 0x1f1234);
        assert_eq!(d.blocks, 256);
    }

    #[test]
    fn ten_twelve_sixteen() {
        let c = cdb(&[0x2a, 0x08, 0, 0, 0x10, 0x00, 0, 0x00, 0x08, 0]);
        let d = decode_block(&c).unwrap();
        assert_eq!((d.lba, d.blocks, d.fua()), (0x1000, 8, true));
        let c = cdb(&[0xa8, 0x10, 0, 0, 0, 5, 0, 1, 0, 0, 0, 0]);
        let d = decode_block(&c).unwrap();
        assert_eq!((d.lba, d.blocks), (5, 0x10000));
        let mut c = [0u8; 32];
        c[0] = 0x88;
        c[1] = 0x60;
        c[2..10].copy_from_slice(&0x1_0000_0000u64.to_be_bytes());
        c[10..14].copy_from_slice(&7u32.to_be_bytes());
        let d = decode_block(&c).unwrap();
        assert_eq!((d.lba, d.blocks, d.protect()), (0x1_0000_0000, 7, 3));
    }

    #[test]
    fn compare_and_write_and_atomic() {
        let mut c = [0u8; 32];
        c[0] = 0x89;
        c[9] = 3;
        c[13] = 2;
        assert_eq!(decode_block(&c).unwrap().blocks, 2);
        c[0] = 0x9c;
        c[12] = 1;
        c[13] = 0;
        let d = decode_block(&c).unwrap();
        assert_eq!((d.lba, d.blocks), (3, 256));
    }

    #[test]
    fn data_out_lengths() {
        let c = cdb(&[0x2a, 0, 0, 0, 0, 0, 0, 0, 8, 0]);
        assert_eq!(data_out_len(&c, 512), Some(4096));
        let mut c = [0u8; 32];
        c[0] = 0x89;
        c[13] = 2;
        assert_eq!(data_out_len(&c, 4096), Some(16384));
        c[0] = 0x93;
        c[1] = 0x01;
        assert_eq!(data_out_len(&c, 512), Some(0), "NDOB");
        c[1] = 0;
        assert_eq!(data_out_len(&c, 512), Some(512));
        let v = cdb(&[0x2f, 0x06, 0, 0, 0, 0, 0, 0xff, 0xff, 0]);
        assert_eq!(data_out_len(&v, 512), Some(512), "BYTCHK=11b");
        let v = cdb(&[0x2f, 0x00, 0, 0, 0, 0, 0, 0xff, 0xff, 0]);
        assert_eq!(data_out_len(&v, 512), Some(0));
        assert_eq!(data_out_len(&cdb(&[0x42, 0, 0, 0, 0, 0, 0, 0x01, 0x00, 0]), 512), Some(256));
        let mut x = [0u8; 32];
        x[0] = 0x83;
        x[10..14].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(data_out_len(&x, 512), Some(1040));
        assert_eq!(data_out_len(&cdb(&[0x88]), 512), Some(0));
        assert_eq!(data_out_len(&cdb(&[0xc0]), 512), None);
    }

    #[test]
    fn data_out_fit_against_edtl() {
        let mut c = cdb(&[0x2a, 0, 0, 0, 0, 0, 0, 0, 8, 0]);
        assert_eq!(fit_data_out(&mut c, 4096, 512), DataOutFit { resid: None, run: true });
        assert_eq!(fit_data_out(&mut c, 8192, 512), DataOutFit { resid: Some(Residual::Under(4096)), run: true });
        // Overflow: cut down to the whole blocks EDTL covers.
        assert_eq!(fit_data_out(&mut c, 1536, 512), DataOutFit { resid: Some(Residual::Over(2560)), run: true });
        assert_eq!(decode_block(&c).unwrap().blocks, 3);
        let mut c = cdb(&[0x8a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0]);
        assert_eq!(fit_data_out(&mut c, 100, 512), DataOutFit { resid: Some(Residual::Over(924)), run: false });
        // Parameter-list commands are not cut.
        let mut u = cdb(&[0x42, 0, 0, 0, 0, 0, 0, 0x01, 0x00, 0]);
        assert_eq!(fit_data_out(&mut u, 10, 512), DataOutFit { resid: None, run: true });
    }

    #[test]
    fn group_lengths_and_ranges() {
        assert_eq!(cdb_len(0x12), 6);
        assert_eq!(cdb_len(0x28), 10);
        assert_eq!(cdb_len(0x5e), 10);
        assert_eq!(cdb_len(0xa0), 12);
        assert_eq!(cdb_len(0x88), 16);
        assert_eq!(cdb_len(0xc0), 0);
        assert!(in_range(0, 10, 10));
        assert!(!in_range(1, 10, 10));
        assert!(!in_range(u64::MAX, 2, 10));
        assert!(decode_block(&cdb(&[0x12])).is_err());
    }
}
