//! NVM command set I/O commands: decode an SQE into what to do on the volume, with the spec's
//! status codes for bad ranges and fields (NVM Command Set Specification 3.2, 3.3).

use super::spec::{io, sc, Sqe, Status};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoKind {
    Read,
    Write,
    Compare,
    Flush,
    WriteZeroes,
    /// Dataset Management with the Deallocate attribute: ranges follow as host data.
    Deallocate,
    /// Dataset Management without Deallocate: advisory only, nothing to do.
    DsmHint,
}

/// A decoded I/O command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoPlan {
    pub kind: IoKind,
    pub slba: u64,
    pub nlb: u64,
    /// Bytes moved between host and controller.
    pub bytes: u32,
    pub fua: bool,
}

/// Direction of a command's data by its opcode (Base 4.1, opcode bits 1:0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    None,
    HostToCtrl,
    CtrlToHost,
}

pub fn direction(bits: u8) -> Dir {
    match bits & 3 {
        1 => Dir::HostToCtrl,
        2 => Dir::CtrlToHost,
        // 3 is bidirectional: no NVMe/TCP command we support uses it.
        _ => Dir::None,
    }
}

/// Decode an I/O command for a namespace of `ns_blocks` blocks of `block_size` bytes. `max_bytes`
/// is the largest transfer (MDTS) the controller advertises.
pub fn plan(sqe: &Sqe, ns_blocks: u64, block_size: u32, max_bytes: u32) -> Result<IoPlan, Status> {
    let slba = sqe.cdw(10) as u64 | (sqe.cdw(11) as u64) << 32;
    let nlb = (sqe.cdw(12) & 0xffff) as u64 + 1;
    let fua = sqe.cdw(12) & (1 << 30) != 0;
    let range_ok = slba.checked_add(nlb).is_some_and(|e| e <= ns_blocks);
    let kind = match sqe.opcode() {
        io::READ => IoKind::Read,
        io::WRITE => IoKind::Write,
        io::COMPARE => IoKind::Compare,
        io::WRITE_ZEROES => IoKind::WriteZeroes,
        io::FLUSH => return Ok(IoPlan { kind: IoKind::Flush, slba: 0, nlb: 0, bytes: 0, fua: false }),
        io::DATASET_MANAGEMENT => {
            let nr = (sqe.cdw(10) & 0xff) + 1;
            let kind = if sqe.cdw(11) & (1 << 2) != 0 { IoKind::Deallocate } else { IoKind::DsmHint };
            return Ok(IoPlan { kind, slba: 0, nlb: nr as u64, bytes: nr * 16, fua: false });
        }
        _ => return Err(Status::generic(sc::INVALID_OPCODE)),
    };
    if !range_ok {
        return Err(Status::generic(sc::LBA_OUT_OF_RANGE));
    }
    let bytes = match kind {
        IoKind::WriteZeroes => 0,
        _ => {
            let b = nlb * block_size as u64;
            if b > max_bytes as u64 {
                return Err(Status::generic(sc::INVALID_FIELD));
            }
            b as u32
        }
    };
    Ok(IoPlan { kind, slba, nlb, bytes, fua })
}

/// One Dataset Management range (NVM 3.2.3, Figure 40): starting LBA and length in blocks.
pub fn dsm_range(data: &[u8], i: usize) -> Option<(u64, u64)> {
    let r = data.get(i * 16..i * 16 + 16)?;
    let nlb = u32::from_le_bytes(r[4..8].try_into().ok()?) as u64;
    let slba = u64::from_le_bytes(r[8..16].try_into().ok()?);
    Some((slba, nlb))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(op: u8, slba: u64, nlb: u32) -> Sqe {
        let mut s = Sqe::default();
        s.set_opcode(op).set_cdw(10, slba as u32).set_cdw(11, (slba >> 32) as u32).set_cdw(12, nlb - 1);
        s
    }

    #[test]
    fn ranges_and_limits() {
        let p = plan(&rw(io::READ, 10, 8), 100, 512, 131072).unwrap();
        assert_eq!((p.kind, p.slba, p.nlb, p.bytes), (IoKind::Read, 10, 8, 4096));
        assert_eq!(plan(&rw(io::WRITE, 96, 8), 100, 512, 131072), Err(Status::generic(sc::LBA_OUT_OF_RANGE)));
        assert_eq!(plan(&rw(io::WRITE, u64::MAX, 8), 100, 512, 131072), Err(Status::generic(sc::LBA_OUT_OF_RANGE)));
        assert_eq!(plan(&rw(io::READ, 0, 512), 10000, 512, 131072), Err(Status::generic(sc::INVALID_FIELD)));
        assert_eq!(plan(&rw(0x42, 0, 1), 100, 512, 131072), Err(Status::generic(sc::INVALID_OPCODE)));
        let mut d = rw(io::DATASET_MANAGEMENT, 1, 1);
        d.set_cdw(11, 4);
        assert_eq!(plan(&d, 100, 512, 131072).unwrap().kind, IoKind::Deallocate);
        let mut r = [0u8; 16];
        r[4..8].copy_from_slice(&5u32.to_le_bytes());
        r[8..16].copy_from_slice(&7u64.to_le_bytes());
        assert_eq!(dsm_range(&r, 0), Some((7, 5)));
        assert_eq!(dsm_range(&r, 1), None);
    }
}
