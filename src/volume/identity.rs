//! Device identity derived from the bdev UUID, identical on every path and protocol: the SCSI VPD
//! 0x83 NAA designator and the NVMe NGUID are the same 16 bytes, so a pNFS metadata server can name
//! the device once (RFC 8154 device address / RFC 9561) whichever protocol a client uses.

/// IEEE company id used in our NAA IEEE Registered Extended designators (the one Linux LIO uses
/// for software targets; the vendor-specific part comes from the volume UUID).
pub const OUI: u32 = 0x001405;

/// NAA type 6 (IEEE Registered Extended), 16 bytes: 4-bit NAA, 24-bit OUI, 100 bits from the UUID.
pub fn naa_designator(uuid: &uuid::Uuid) -> [u8; 16] {
    let u = uuid.as_bytes();
    let mut d = [0u8; 16];
    d[0] = 0x60 | ((OUI >> 20) & 0x0f) as u8;
    d[1] = (OUI >> 12) as u8;
    d[2] = (OUI >> 4) as u8;
    d[3] = ((OUI & 0x0f) as u8) << 4 | (u[0] & 0x0f);
    d[4..16].copy_from_slice(&u[4..16]);
    d
}

/// NVMe Namespace Globally Unique Identifier: the NAA designator's bytes.
pub fn nguid(uuid: &uuid::Uuid) -> [u8; 16] {
    naa_designator(uuid)
}

/// IEEE EUI-64: the OUI followed by 40 bits of the UUID.
pub fn eui64(uuid: &uuid::Uuid) -> [u8; 8] {
    let u = uuid.as_bytes();
    let mut e = [0u8; 8];
    e[0] = (OUI >> 16) as u8;
    e[1] = (OUI >> 8) as u8;
    e[2] = OUI as u8;
    e[3..8].copy_from_slice(&u[11..16]);
    e
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn stable_and_shared() {
        let u = uuid::Uuid::parse_str("6b6e0a1c-3f2d-4b1a-9e8f-0123456789ab").unwrap();
        let naa = naa_designator(&u);
        assert_eq!(naa[0] >> 4, 6);
        assert_eq!(naa, nguid(&u));
        assert_eq!(hex(&naa), "6001405b3f2d4b1a9e8f0123456789ab");
        assert_eq!(&eui64(&u)[..3], &[0x00, 0x14, 0x05]);
    }
}
