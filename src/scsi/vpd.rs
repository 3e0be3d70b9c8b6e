//! Standard INQUIRY data (SPC-4 6.6.2) and the vital product data pages (SPC-4 7.8, SBC-3 6.5):
//! 0x00 supported pages, 0x80 unit serial number, 0x83 device identification, 0x8F third-party
//! copy, 0xB0 block limits,
//! 0xB1 block device characteristics, 0xB2 logical block provisioning.

use crate::volume::identity;

pub const VENDOR: &[u8; 8] = b"PALISADE";
pub const REVISION: &[u8; 4] = b"0001";

/// Limits we advertise in VPD 0xB0 and enforce in the block commands.
pub mod limits {
    /// Largest transfer: 65536 blocks (what initiators and the compliance suite expect a disk to
    /// take in one command), at most 256 MiB. Buffers above 8 MiB are not pooled, which is fine
    /// for such rare commands.
    pub fn max_transfer_blocks(block_size: u32) -> u32 {
        (65536u64).min((256u64 << 20) / block_size.max(1) as u64) as u32
    }
    /// Logical blocks per physical block exponent (READ CAPACITY(16)): one. (A 4 KiB physical
    /// block would suit the bdevs, but libiscsi's GetLBAStatus.UnmapSingle expects answers
    /// aligned to physical blocks, which SBC-3 5.4 forbids.)
    pub const LBPPBE: u8 = 0;
    /// COMPARE AND WRITE: MAXIMUM COMPARE AND WRITE LENGTH (blocks).
    pub const MAX_CAW_BLOCKS: u32 = 128;
    /// UNMAP: MAXIMUM UNMAP LBA COUNT and BLOCK DESCRIPTOR COUNT.
    pub const MAX_UNMAP_BLOCKS: u32 = 1 << 20;
    pub const MAX_UNMAP_DESCRIPTORS: u32 = 256;
    /// MAXIMUM WRITE SAME LENGTH.
    pub const MAX_WRITE_SAME_BLOCKS: u64 = 1 << 22;
    /// WRITE ATOMIC(16): MAXIMUM ATOMIC TRANSFER LENGTH (blocks); the write holds a range lock,
    /// whose cost does not depend on the length.
    pub const MAX_ATOMIC_BLOCKS: u32 = 4096;
}

/// What INQUIRY needs to know about the device and the port it is asked through.
pub struct DeviceInfo<'a> {
    pub uuid: uuid::Uuid,
    pub product: &'a str,
    pub serial: &'a str,
    pub block_size: u32,
    pub unmap_zeroes: bool,
    /// SCSI target port name ("iqn...,t,0x0001") and relative target port id, if the nexus is
    /// an iSCSI one.
    pub target_port: Option<(&'a str, u16)>,
    /// Target port group of the port (this node's group).
    pub port_group: u16,
}

fn padded<const N: usize>(s: &str) -> [u8; N] {
    let mut p = [b' '; N];
    for (i, c) in s.bytes().filter(|c| c.is_ascii_graphic() || *c == b' ').take(N).enumerate() {
        p[i] = c;
    }
    p
}

/// TPGS field of standard INQUIRY byte 5 (SPC-4 table 140): 01b, implicit ALUA only.
pub const TPGS_IMPLICIT: u8 = 0x10;

/// Standard INQUIRY data, 96 bytes with version descriptors (SPC-4 6.6.2, table 140).
pub fn standard(peripheral: u8, product: &str) -> [u8; 96] {
    let mut d = [0u8; 96];
    d[0] = peripheral;
    d[2] = 0x06; // SPC-4
    d[3] = 0x10 | 0x02; // HISUP, response data format 2
    d[4] = 91;
    d[7] = 0x02; // CMDQUE
    d[8..16].copy_from_slice(VENDOR);
    d[16..32].copy_from_slice(&padded::<16>(product));
    d[32..36].copy_from_slice(REVISION);
    // Version descriptors (SPC-4 table 144): SAM-5, SPC-4, SBC-3, iSCSI (RFC 7143: 0x0960).
    for (i, v) in [0x00a0u16, 0x0460, 0x04c0, 0x0960].iter().enumerate() {
        d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    d
}

pub const SUPPORTED_PAGES: [u8; 7] = [0x00, 0x80, 0x83, 0x8f, 0xb0, 0xb1, 0xb2];

fn page(code: u8, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + body.len());
    v.extend_from_slice(&[0, code]);
    v.extend_from_slice(&(body.len() as u16).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// One designation descriptor (SPC-4 7.8.6.1).
fn designator(out: &mut Vec<u8>, proto_piv: Option<u8>, code_set: u8, assoc: u8, typ: u8, id: &[u8]) {
    let (proto, piv) = match proto_piv {
        Some(p) => (p << 4, 0x80),
        None => (0, 0),
    };
    out.push(proto | code_set);
    out.push(piv | (assoc << 4) | typ);
    out.push(0);
    out.push(id.len() as u8);
    out.extend_from_slice(id);
}

/// SCSI name string: null-terminated, padded with nulls to a multiple of 4 (SPC-4 7.8.6.11).
fn name_string(s: &str) -> Vec<u8> {
    let mut v: Vec<u8> = s.bytes().take(250).collect();
    v.push(0);
    while v.len() % 4 != 0 {
        v.push(0);
    }
    v
}

const PROTO_ISCSI: u8 = 0x5;

/// Target port group designator body (SPC-4 table 470): reserved, then the group id.
fn tpg_id(id: u16) -> [u8; 4] {
    let b = id.to_be_bytes();
    [0, 0, b[0], b[1]]
}

/// The VPD page `code`, or None if we do not have it.
pub fn vpd_page(code: u8, dev: &DeviceInfo) -> Option<Vec<u8>> {
    Some(match code {
        0x00 => page(0x00, &SUPPORTED_PAGES),
        0x80 => page(0x80, dev.serial.as_bytes()),
        0x83 => {
            let mut b = Vec::with_capacity(128);
            // NAA IEEE Registered Extended, identical to the NVMe NGUID of the same bdev.
            designator(&mut b, None, 1, 0, 3, &identity::naa_designator(&dev.uuid));
            // T10 vendor id: vendor, then the volume UUID (unique and stable).
            let mut t10 = VENDOR.to_vec();
            t10.extend_from_slice(identity::hex(dev.uuid.as_bytes()).as_bytes());
            designator(&mut b, None, 2, 0, 1, &t10);
            if let Some((port, rel)) = dev.target_port {
                // Relative target port (type 4) and target port name (SCSI name string, type 8).
                designator(&mut b, Some(PROTO_ISCSI), 1, 1, 4, &[0, 0, (rel >> 8) as u8, rel as u8]);
                // Target port group (type 5, SPC-4 7.8.6.7).
                designator(&mut b, Some(PROTO_ISCSI), 1, 1, 5, &tpg_id(dev.port_group));
                designator(&mut b, Some(PROTO_ISCSI), 3, 1, 8, &name_string(port));
                // Target device name: the port name without its ",t,0x..." suffix.
                let device = port.split(",t,").next().unwrap_or(port);
                designator(&mut b, Some(PROTO_ISCSI), 3, 2, 8, &name_string(device));
            } else {
                designator(&mut b, None, 1, 1, 5, &tpg_id(dev.port_group));
            }
            page(0x83, &b)
        }
        0x8f => super::xcopy::vpd_third_party_copy(),
        0xb0 => {
            use limits::*;
            let mut b = [0u8; 0x3c];
            b[1] = MAX_CAW_BLOCKS.min(255) as u8;
            b[2..4].copy_from_slice(&1u16.to_be_bytes()); // optimal transfer length granularity
            let max_xfer = max_transfer_blocks(dev.block_size);
            let granularity = 1u32 << LBPPBE;
            b[4..8].copy_from_slice(&max_xfer.to_be_bytes());
            b[8..12].copy_from_slice(&max_xfer.min(256).to_be_bytes()); // optimal transfer length
            b[12..16].copy_from_slice(&max_xfer.to_be_bytes()); // max prefetch length
            b[16..20].copy_from_slice(&MAX_UNMAP_BLOCKS.to_be_bytes());
            b[20..24].copy_from_slice(&MAX_UNMAP_DESCRIPTORS.to_be_bytes());
            b[24..28].copy_from_slice(&granularity.to_be_bytes()); // optimal unmap granularity
            b[32..40].copy_from_slice(&MAX_WRITE_SAME_BLOCKS.to_be_bytes());
            b[40..44].copy_from_slice(&MAX_ATOMIC_BLOCKS.min(max_xfer).to_be_bytes()); // max atomic transfer length
            b[44..48].copy_from_slice(&1u32.to_be_bytes()); // atomic alignment
            b[48..52].copy_from_slice(&1u32.to_be_bytes()); // atomic transfer length granularity
            page(0xb0, &b)
        }
        0xb1 => {
            let mut b = [0u8; 0x3c];
            b[0..2].copy_from_slice(&1u16.to_be_bytes()); // non-rotating medium
            page(0xb1, &b)
        }
        0xb2 => {
            // Thin provisioned (SBC-3 6.5.4): LBPU, LBPWS, LBPWS10; LBPRZ if unmapped blocks read
            // as zeros; provisioning type 010b.
            let lbprz = if dev.unmap_zeroes { 0x04 } else { 0 };
            page(0xb2, &[0, 0x80 | 0x40 | 0x20 | lbprz, 0x02, 0])
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> DeviceInfo<'static> {
        DeviceInfo {
            uuid: uuid::Uuid::parse_str("6b6e0a1c-3f2d-4b1a-9e8f-0123456789ab").unwrap(),
            product: "Palisade LUN",
            serial: "6b6e0a1c3f2d4b1a",
            block_size: 512,
            unmap_zeroes: true,
            target_port: Some(("iqn.2026-01.io.palisade:t1,t,0x0001", 1)),
            port_group: 7,
        }
    }

    #[test]
    fn standard_inquiry_fields() {
        let d = standard(0, "Palisade LUN");
        assert_eq!(d[4] as usize, d.len() - 5);
        assert_eq!(&d[8..16], b"PALISADE");
        assert_eq!(&d[16..32], b"Palisade LUN    ");
        assert_eq!(&d[62..64], &[0x04, 0xc0], "SBC-3 descriptor");
    }

    #[test]
    fn device_identification_naa_matches_nguid() {
        let d = dev();
        let p = vpd_page(0x83, &d).unwrap();
        assert_eq!(u16::from_be_bytes([p[2], p[3]]) as usize, p.len() - 4);
        // First descriptor: binary, LUN association, NAA, 16 bytes.
        assert_eq!(&p[4..8], &[0x01, 0x03, 0, 16]);
        assert_eq!(&p[8..24], &identity::nguid(&d.uuid));
        // Walk every descriptor: lengths chain up exactly.
        let mut at = 4;
        let mut types = Vec::new();
        while at < p.len() {
            types.push((p[at + 1] >> 4 & 3, p[at + 1] & 0xf));
            at += 4 + p[at + 3] as usize;
        }
        assert_eq!(at, p.len());
        assert_eq!(types, vec![(0, 3), (0, 1), (1, 4), (1, 5), (1, 8), (2, 8)]);
        // Target port group designator: iSCSI, binary, PIV, target port association, type 5.
        let at = p.windows(4).position(|w| w == [0x51, 0x95, 0, 4]).expect("type 5 designator");
        assert_eq!(&p[at + 4..at + 8], &[0, 0, 0, 7]);
    }

    #[test]
    fn block_limits_and_provisioning() {
        let p = vpd_page(0xb0, &dev()).unwrap();
        assert_eq!(p.len(), 64);
        assert_eq!(u32::from_be_bytes(p[24..28].try_into().unwrap()), limits::MAX_UNMAP_DESCRIPTORS);
        let p = vpd_page(0xb2, &dev()).unwrap();
        assert_eq!(p[5] & 0xe4, 0xe4);
        assert_eq!(p[6] & 7, 2);
        assert!(vpd_page(0x86, &dev()).is_none());
    }
}
