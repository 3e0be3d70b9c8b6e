//! Primary commands answered from LUN state (SPC-4 6.x): REQUEST SENSE, INQUIRY,
//! MODE SENSE, REPORT LUNS, REPORT TARGET PORT GROUPS. Each returns its full parameter data truncated to the allocation
//! length, or the sense data of the failure.

use super::cdb::{alloc_len, be};
use super::sense::{Sense, INVALID_FIELD_IN_CDB, NO_SENSE_DATA};
use super::{alua, mode, vpd, Lun, LunMap, ScsiCommand};
use crate::volume::Initiator;

type Answer = Result<Option<Vec<u8>>, Sense>;

fn truncated(mut v: Vec<u8>, alloc: usize) -> Vec<u8> {
    v.truncate(alloc);
    v
}

/// REQUEST SENSE (SPC-4 6.39): a pending unit attention (cleared by this), else the unit's state.
/// Sense for failed commands travels with their CHECK CONDITION (autosense), so nothing else is
/// kept per nexus.
/// `next_ua` yields the pending unit attention (and clears it); it is called only once the CDB is
/// known to be valid.
pub fn request_sense(next_ua: impl FnOnce() -> Option<Sense>, cmd: &ScsiCommand) -> Result<Vec<u8>, Sense> {
    if cmd.cdb[1] & 0x01 != 0 {
        return Err(Sense::invalid_cdb_field(1, Some(0))); // DESC: fixed format only
    }
    let s = next_ua().unwrap_or(NO_SENSE_DATA);
    Ok(truncated(s.encode().to_vec(), cmd.cdb[4] as usize))
}

/// REQUEST SENSE on a LUN we do not have: LOGICAL UNIT NOT SUPPORTED as sense data (SPC-4 6.39).
pub fn request_sense_no_lun(cmd: &ScsiCommand) -> Answer {
    Ok(Some(truncated(super::LUN_NOT_SUPPORTED.encode().to_vec(), cmd.cdb[4] as usize)))
}

/// INQUIRY (SPC-4 6.6): standard data or a VPD page.
pub fn inquiry(lun: &Lun, who: &Initiator, cmd: &ScsiCommand) -> Result<Vec<u8>, Sense> {
    let c = &cmd.cdb;
    let alloc = alloc_len(c, 3, 2);
    if c[1] & 0x02 != 0 {
        return Err(Sense::invalid_cdb_field(1, Some(1))); // CMDDT is obsolete
    }
    if c[1] & 0x01 == 0 {
        if c[2] != 0 {
            return Err(Sense::invalid_cdb_field(2, None));
        }
        let mut d = vpd::standard(0x00, &lun.product);
        d[5] |= vpd::TPGS_IMPLICIT;
        return Ok(truncated(d.to_vec(), alloc));
    }
    let info = lun.volume.bdev().info();
    let target_port = match who {
        Initiator::Iscsi { target_port, rel_port_id, .. } if !target_port.is_empty() => {
            Some((target_port.as_str(), *rel_port_id))
        }
        _ => None,
    };
    let dev = vpd::DeviceInfo {
        uuid: info.uuid,
        product: &lun.product,
        serial: &lun.serial,
        block_size: info.block_size,
        unmap_zeroes: info.unmap_zeroes,
        target_port,
        port_group: lun.volume.port_groups().local_id(),
    };
    match vpd::vpd_page(c[2], &dev) {
        Some(p) => Ok(truncated(p, alloc)),
        None => Err(Sense::invalid_cdb_field(2, None)),
    }
}

/// REPORT TARGET PORT GROUPS (SPC-4 6.37): this node's group first, then the other nodes'.
pub fn report_target_port_groups(lun: &Lun, who: &Initiator, cmd: &ScsiCommand) -> Result<Vec<u8>, Sense> {
    let req = alua::RtpgCdb::decode(cmd.cdb())?;
    let pg = lun.volume.port_groups();
    let own = match who {
        Initiator::Iscsi { rel_port_id, .. } => Some(*rel_port_id),
        Initiator::Nvme { .. } => None,
    };
    let data = alua::RtpgData { extended: req.extended, groups: alua::descriptors(&pg.all(), own, pg.changes() > 0) };
    Ok(truncated(data.encode(), req.alloc))
}

/// INQUIRY for a LUN that does not exist: peripheral qualifier 011b, type 1Fh (SPC-4 6.6.2).
pub fn inquiry_no_lun(cmd: &ScsiCommand) -> Answer {
    let alloc = alloc_len(&cmd.cdb, 3, 2);
    if cmd.cdb[1] & 0x03 != 0 || cmd.cdb[2] != 0 {
        return Err(INVALID_FIELD_IN_CDB);
    }
    Ok(Some(truncated(vpd::standard(0x7f, "").to_vec(), alloc)))
}

/// MODE SENSE(6)/(10) (SPC-4 6.11, 6.12).
pub fn mode_sense(lun: &Lun, cmd: &ScsiCommand) -> Result<Vec<u8>, Sense> {
    let req = mode::ModeSense::decode(&cmd.cdb);
    let v = mode::mode_sense(&lun.mode, &req, false, lun.volume.num_blocks(), lun.volume.block_size())?;
    Ok(truncated(v, req.alloc))
}

/// REPORT LUNS (SPC-4 6.33). Every SELECT REPORT value we accept lists the same LUNs: there are
/// no well-known or conglomerate LUNs.
pub fn report_luns(luns: &LunMap, cmd: &ScsiCommand) -> Answer {
    let c = &cmd.cdb;
    if c[2] > 0x02 {
        return Err(Sense::invalid_cdb_field(2, None));
    }
    // SPC-4 dropped SPC-3's 16-byte minimum allocation length: short lists are truncated.
    let alloc = be(c, 6, 4) as usize;
    let list: Vec<&std::sync::Arc<Lun>> = if c[2] == 0x01 { Vec::new() } else { luns.luns.iter().collect() };
    let mut d = vec![0u8; 8 + 8 * list.len()];
    d[0..4].copy_from_slice(&((8 * list.len()) as u32).to_be_bytes());
    for (i, l) in list.iter().enumerate() {
        d[8 + 8 * i..16 + 8 * i].copy_from_slice(&super::encode_lun(l.id));
    }
    Ok(Some(truncated(d, alloc)))
}
