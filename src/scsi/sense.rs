//! Status codes, sense keys and fixed-format sense data (SPC-4 4.5.3), plus the additional sense
//! codes this target raises. Kept inline (`Copy`) so a response does not allocate.

/// SAM-5 status codes (SAM-5 5.3).
pub mod status {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
    pub const CONDITION_MET: u8 = 0x04;
    pub const BUSY: u8 = 0x08;
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    pub const TASK_SET_FULL: u8 = 0x28;
    pub const TASK_ABORTED: u8 = 0x40;
}

/// SPC-4 sense keys (SPC-4 table 48).
pub mod sense_key {
    pub const NO_SENSE: u8 = 0x0;
    pub const RECOVERED_ERROR: u8 = 0x1;
    pub const NOT_READY: u8 = 0x2;
    pub const MEDIUM_ERROR: u8 = 0x3;
    pub const HARDWARE_ERROR: u8 = 0x4;
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    pub const UNIT_ATTENTION: u8 = 0x6;
    pub const DATA_PROTECT: u8 = 0x7;
    pub const COPY_ABORTED: u8 = 0xa;
    pub const ABORTED_COMMAND: u8 = 0xb;
    pub const MISCOMPARE: u8 = 0xe;
}

/// Fixed-format sense data (SPC-4 4.5.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
    /// Sense-key specific field pointer: (command_data, byte, bit) for ILLEGAL REQUEST.
    pub field: Option<(bool, u16, Option<u8>)>,
    pub information: Option<u32>,
}

impl Sense {
    pub const fn new(key: u8, asc: u8, ascq: u8) -> Sense {
        Sense { key, asc, ascq, field: None, information: None }
    }
    /// INVALID FIELD IN CDB with the field pointer at `byte` (and `bit`).
    pub fn invalid_cdb_field(byte: u16, bit: Option<u8>) -> Sense {
        Sense { field: Some((true, byte, bit)), ..Sense::new(sense_key::ILLEGAL_REQUEST, 0x24, 0x00) }
    }
    /// INVALID FIELD IN PARAMETER LIST with the field pointer at `byte` (and `bit`).
    pub fn invalid_param_field(byte: u16, bit: Option<u8>) -> Sense {
        Sense { field: Some((false, byte, bit)), ..Sense::new(sense_key::ILLEGAL_REQUEST, 0x26, 0x00) }
    }
    /// MISCOMPARE DURING VERIFY OPERATION with the byte offset of the first difference.
    pub fn miscompare(offset: u32) -> Sense {
        Sense { information: Some(offset), ..Sense::new(sense_key::MISCOMPARE, 0x1d, 0x00) }
    }
    /// Encode as fixed-format sense data (18 bytes).
    pub fn encode(&self) -> [u8; 18] {
        let mut b = [0u8; 18];
        b[0] = 0x70;
        b[2] = self.key & 0x0f;
        if let Some(info) = self.information {
            b[0] |= 0x80;
            b[3..7].copy_from_slice(&info.to_be_bytes());
        }
        b[7] = 10;
        b[12] = self.asc;
        b[13] = self.ascq;
        if let Some((cd, byte, bit)) = self.field {
            b[15] = 0x80 | if cd { 0x40 } else { 0 } | bit.map(|x| 0x08 | (x & 7)).unwrap_or(0);
            b[16..18].copy_from_slice(&byte.to_be_bytes());
        }
        b
    }
}

use sense_key::*;

pub const NO_SENSE_DATA: Sense = Sense::new(NO_SENSE, 0x00, 0x00);
pub const INVALID_OPCODE: Sense = Sense::new(ILLEGAL_REQUEST, 0x20, 0x00);
pub const LBA_OUT_OF_RANGE: Sense = Sense::new(ILLEGAL_REQUEST, 0x21, 0x00);
pub const LUN_NOT_SUPPORTED: Sense = Sense::new(ILLEGAL_REQUEST, 0x25, 0x00);
pub const PARAM_LIST_LENGTH_ERROR: Sense = Sense::new(ILLEGAL_REQUEST, 0x1a, 0x00);
pub const SAVING_PARAMS_UNSUPPORTED: Sense = Sense::new(ILLEGAL_REQUEST, 0x39, 0x00);
pub const INVALID_FIELD_IN_CDB: Sense = Sense::new(ILLEGAL_REQUEST, 0x24, 0x00);
/// LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN UNAVAILABLE STATE (SPC-4 5.16.2.4.5).
pub const TARGET_PORT_UNAVAILABLE: Sense = Sense::new(NOT_READY, 0x04, 0x0C);
pub const WRITE_PROTECTED: Sense = Sense::new(DATA_PROTECT, 0x27, 0x00);
pub const MEDIUM_ERROR_UNRECOVERED: Sense = Sense::new(MEDIUM_ERROR, 0x11, 0x00);
pub const WRITE_ERROR: Sense = Sense::new(MEDIUM_ERROR, 0x0c, 0x00);
/// INVALID FIELD IN COMMAND INFORMATION UNIT (SPC-4 D.2): the Data-Out the transport carried is
/// shorter than the command needs (EDTL below the CDB's transfer length); nothing is written.
pub const INVALID_FIELD_IN_IU: Sense = Sense::new(ILLEGAL_REQUEST, 0x0e, 0x03);
pub const UA_POWER_ON: Sense = Sense::new(UNIT_ATTENTION, 0x29, 0x00);
pub const UA_DEVICE_RESET: Sense = Sense::new(UNIT_ATTENTION, 0x29, 0x03);
pub const UA_MODE_CHANGED: Sense = Sense::new(UNIT_ATTENTION, 0x2a, 0x01);
pub const UA_CAPACITY_CHANGED: Sense = Sense::new(UNIT_ATTENTION, 0x2a, 0x09);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_pointer_layout() {
        // SPC-4 4.5.2.4.2: SKSV, C/D, BPV, bit pointer, then the 16-bit field pointer.
        let s = Sense::invalid_cdb_field(2, Some(5)).encode();
        assert_eq!(s[0], 0x70);
        assert_eq!(s[2], 0x05);
        assert_eq!((s[12], s[13]), (0x24, 0x00));
        assert_eq!(s[15], 0x80 | 0x40 | 0x08 | 5);
        assert_eq!(&s[16..18], &[0, 2]);
        let p = Sense::invalid_param_field(300, None).encode();
        assert_eq!(p[15], 0x80);
        assert_eq!(&p[16..18], &[1, 44]);
    }

    #[test]
    fn miscompare_information() {
        let s = Sense::miscompare(0x1234).encode();
        assert_eq!(s[0], 0xf0, "VALID bit set when INFORMATION is given");
        assert_eq!(s[2], 0x0e);
        assert_eq!(&s[3..7], &[0, 0, 0x12, 0x34]);
        assert_eq!(s[7], 10);
    }
}
