//! The supported-command table behind REPORT SUPPORTED OPERATION CODES (SPC-4 6.35) and REPORT
//! SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-4 6.36). One row per command, with its CDB usage data
//! (bits the target looks at) and a timeout, so the answer cannot drift from the dispatcher: the
//! dispatcher tests assert every row is executed.

use super::sense::Sense;

/// One supported command.
pub struct OpInfo {
    pub opcode: u8,
    /// Service action, for opcodes that have them.
    pub sa: Option<u16>,
    /// CDB usage data: byte 0 is the opcode, then the bits the device server uses.
    pub usage: &'static [u8],
    /// Nominal and recommended command timeouts, seconds (SPC-4 6.35.4).
    pub timeout: u32,
}

const F: u8 = 0xff;

macro_rules! op {
    ($op:expr, $sa:expr, [$($u:expr),*]) => {
        OpInfo { opcode: $op, sa: $sa, usage: &[$op, $($u),*], timeout: 30 }
    };
}

/// Every command this device server implements.
pub static OPS: &[OpInfo] = &[
    op!(0x00, None, [0, 0, 0, 0, 0]),                           // TEST UNIT READY
    op!(0x03, None, [0x01, 0, 0, F, 0]),                        // REQUEST SENSE
    op!(0x08, None, [0x1f, F, F, F, 0]),                        // READ(6)
    op!(0x0a, None, [0x1f, F, F, F, 0]),                        // WRITE(6)
    op!(0x12, None, [0x01, F, F, F, 0]),                        // INQUIRY
    op!(0x15, None, [0x11, 0, 0, F, 0]),                        // MODE SELECT(6)
    op!(0x16, None, [0, 0, 0, 0, 0]),                           // RESERVE(6)
    op!(0x17, None, [0, 0, 0, 0, 0]),                           // RELEASE(6)
    op!(0x1a, None, [0x08, F, F, F, 0]),                        // MODE SENSE(6)
    op!(0x1b, None, [0x01, 0, 0x0f, 0xf7, 0]),                  // START STOP UNIT
    op!(0x1e, None, [0, 0, 0, 0x03, 0]),                        // PREVENT ALLOW MEDIUM REMOVAL
    op!(0x25, None, [0, 0, 0, 0, 0, 0, 0, 0, 0]),               // READ CAPACITY(10)
    op!(0x28, None, [0x18, F, F, F, F, 0x1f, F, F, 0]),         // READ(10)
    op!(0x2a, None, [0x18, F, F, F, F, 0x1f, F, F, 0]),         // WRITE(10)
    op!(0x2e, None, [0x12, F, F, F, F, 0x1f, F, F, 0]),         // WRITE AND VERIFY(10)
    op!(0x2f, None, [0x16, F, F, F, F, 0x1f, F, F, 0]),         // VERIFY(10)
    op!(0x34, None, [0x02, F, F, F, F, 0x1f, F, F, 0]),         // PRE-FETCH(10)
    op!(0x35, None, [0x02, F, F, F, F, 0x1f, F, F, 0]),         // SYNCHRONIZE CACHE(10)
    op!(0x37, None, [0, 0x1f, 0, 0, 0, 0, F, F, 0]),            // READ DEFECT DATA(10)
    op!(0x41, None, [0x08, F, F, F, F, 0x1f, F, F, 0]),         // WRITE SAME(10)
    op!(0x42, None, [0, 0, 0, 0, 0, 0x1f, F, F, 0]),            // UNMAP
    op!(0x55, None, [0x11, 0, 0, 0, 0, 0, F, F, 0]),            // MODE SELECT(10)
    op!(0x5a, None, [0x18, F, F, 0, 0, 0, F, F, 0]),            // MODE SENSE(10)
    op!(0x83, Some(0x00), [0x00, 0, 0, 0, 0, 0, 0, 0, 0, F, F, F, F, 0, 0]), // EXTENDED COPY(LID1)
    op!(0x84, Some(0x00), [0x00, F, 0, 0, 0, 0, 0, 0, 0, F, F, F, F, 0, 0]), // RECEIVE COPY RESULTS: COPY STATUS
    op!(0x84, Some(0x03), [0x03, 0, 0, 0, 0, 0, 0, 0, 0, F, F, F, F, 0, 0]), // ... OPERATING PARAMETERS
    op!(0x88, None, [0x18, F, F, F, F, F, F, F, F, F, F, F, F, 0x1f, 0]), // READ(16)
    op!(0x89, None, [0x18, F, F, F, F, F, F, F, F, 0, 0, 0, F, 0x1f, 0]), // COMPARE AND WRITE
    op!(0x8a, None, [0x18, F, F, F, F, F, F, F, F, F, F, F, F, 0x1f, 0]), // WRITE(16)
    op!(0x8b, None, [0x18, F, F, F, F, F, F, F, F, F, F, F, F, 0x1f, 0]), // ORWRITE(16)
    op!(0x8e, None, [0x12, F, F, F, F, F, F, F, F, F, F, F, F, 0x1f, 0]), // WRITE AND VERIFY(16)
    op!(0x8f, None, [0x16, F, F, F, F, F, F, F, F, F, F, F, F, 0x1f, 0]), // VERIFY(16)
    op!(0x90, None, [0x02, F, F, F, F, F, F, F, F, F, F, F, F, 0x1f, 0]), // PRE-FETCH(16)
    op!(0x91, None, [0x02, F, F, F, F, F, F, F, F, F, F, F, F, 0x1f, 0]), // SYNCHRONIZE CACHE(16)
    op!(0x93, None, [0x09, F, F, F, F, F, F, F, F, F, F, F, F, 0x1f, 0]), // WRITE SAME(16)
    op!(0x9c, None, [0x18, F, F, F, F, F, F, F, F, 0, 0, F, F, 0x1f, 0]), // WRITE ATOMIC(16)
    op!(0x9e, Some(0x10), [0x10, F, F, F, F, F, F, F, F, F, F, F, F, 0, 0]), // READ CAPACITY(16)
    op!(0x9e, Some(0x12), [0x12, F, F, F, F, F, F, F, F, F, F, F, F, 0, 0]), // GET LBA STATUS
    op!(0xa0, None, [0, F, 0, 0, 0, F, F, F, F, 0, 0]),         // REPORT LUNS
    op!(0xa3, Some(0x0a), [0xea, 0, 0, 0, 0, F, F, F, F, 0, 0]),    // REPORT TARGET PORT GROUPS
    op!(0xa3, Some(0x0c), [0x0c, 0x87, F, F, F, F, F, F, F, 0, 0]), // REPORT SUPPORTED OPCODES
    op!(0xa3, Some(0x0d), [0x0d, 0x80, 0, 0, 0, F, F, F, F, 0, 0]), // REPORT SUPPORTED TMFs
    op!(0x56, None, [0, 0, 0, 0, 0, 0, 0, 0, 0]),               // RESERVE(10)
    op!(0x57, None, [0, 0, 0, 0, 0, 0, 0, 0, 0]),               // RELEASE(10)
    op!(0x5e, Some(0x00), [0x00, 0, 0, 0, 0, 0, F, F, 0]),      // PERSISTENT RESERVE IN: READ KEYS
    op!(0x5e, Some(0x01), [0x01, 0, 0, 0, 0, 0, F, F, 0]),      // READ RESERVATION
    op!(0x5e, Some(0x02), [0x02, 0, 0, 0, 0, 0, F, F, 0]),      // REPORT CAPABILITIES
    op!(0x5e, Some(0x03), [0x03, 0, 0, 0, 0, 0, F, F, 0]),      // READ FULL STATUS
    op!(0x5f, Some(0x00), [0x00, F, 0, 0, F, F, F, F, 0]),      // PERSISTENT RESERVE OUT: REGISTER
    op!(0x5f, Some(0x01), [0x01, F, 0, 0, F, F, F, F, 0]),      // RESERVE
    op!(0x5f, Some(0x02), [0x02, F, 0, 0, F, F, F, F, 0]),      // RELEASE
    op!(0x5f, Some(0x03), [0x03, F, 0, 0, F, F, F, F, 0]),      // CLEAR
    op!(0x5f, Some(0x04), [0x04, F, 0, 0, F, F, F, F, 0]),      // PREEMPT
    op!(0x5f, Some(0x05), [0x05, F, 0, 0, F, F, F, F, 0]),      // PREEMPT AND ABORT
    op!(0x5f, Some(0x06), [0x06, F, 0, 0, F, F, F, F, 0]),      // REGISTER AND IGNORE EXISTING KEY
    op!(0x5f, Some(0x07), [0x07, F, 0, 0, F, F, F, F, 0]),      // REGISTER AND MOVE
    op!(0xa8, None, [0x18, F, F, F, F, F, F, F, F, 0x1f, 0]),   // READ(12)
    op!(0xaa, None, [0x18, F, F, F, F, F, F, F, F, 0x1f, 0]),   // WRITE(12)
    op!(0xae, None, [0x12, F, F, F, F, F, F, F, F, 0x1f, 0]),   // WRITE AND VERIFY(12)
    op!(0xaf, None, [0x16, F, F, F, F, F, F, F, F, 0x1f, 0]),   // VERIFY(12)
    op!(0xb7, None, [0x1f, 0, 0, 0, 0, F, F, F, F, 0, 0]),      // READ DEFECT DATA(12)
];

/// Whether an opcode has service actions in our table.
fn has_sa(opcode: u8) -> bool {
    OPS.iter().any(|o| o.opcode == opcode && o.sa.is_some())
}

fn timeouts(o: &OpInfo, out: &mut Vec<u8>) {
    // Command timeouts descriptor (SPC-4 6.35.4): length 0x0a, then nominal and recommended.
    out.extend_from_slice(&[0x00, 0x0a, 0, 0]);
    out.extend_from_slice(&o.timeout.to_be_bytes());
    out.extend_from_slice(&o.timeout.to_be_bytes());
}

/// REPORT SUPPORTED OPERATION CODES parameter data (SPC-4 6.35.2 / 6.35.3).
pub fn report(cdb: &[u8; 32]) -> Result<Vec<u8>, Sense> {
    let rctd = cdb[2] & 0x80 != 0;
    let options = cdb[2] & 0x07;
    let req_op = cdb[3];
    let req_sa = u16::from_be_bytes([cdb[4], cdb[5]]);
    let mut out = Vec::with_capacity(512);
    match options {
        0 => {
            out.extend_from_slice(&[0; 4]);
            for o in OPS {
                let sa = o.sa.unwrap_or(0).to_be_bytes();
                let flags = if rctd { 0x02 } else { 0 } | if o.sa.is_some() { 0x01 } else { 0 };
                out.extend_from_slice(&[o.opcode, 0, sa[0], sa[1], 0, flags]);
                out.extend_from_slice(&(o.usage.len() as u16).to_be_bytes());
                if rctd {
                    timeouts(o, &mut out);
                }
            }
            let len = (out.len() - 4) as u32;
            out[0..4].copy_from_slice(&len.to_be_bytes());
        }
        1..=3 => {
            let found = match options {
                // 001b: the opcode alone; invalid if it has service actions.
                1 => {
                    if has_sa(req_op) {
                        return Err(Sense::invalid_cdb_field(2, Some(0)));
                    }
                    OPS.iter().find(|o| o.opcode == req_op)
                }
                // 010b: opcode and service action; invalid if it has none.
                2 => {
                    if !has_sa(req_op) && OPS.iter().any(|o| o.opcode == req_op) {
                        return Err(Sense::invalid_cdb_field(2, Some(0)));
                    }
                    OPS.iter().find(|o| o.opcode == req_op && o.sa == Some(req_sa))
                }
                // 011b: either form.
                _ => OPS.iter().find(|o| o.opcode == req_op && o.sa.is_none_or(|s| s == req_sa)),
            };
            match found {
                Some(o) => {
                    out.extend_from_slice(&[0, if rctd { 0x80 } else { 0 } | 0x03]);
                    out.extend_from_slice(&(o.usage.len() as u16).to_be_bytes());
                    // Byte 1 of the usage data already carries the service action (0x9e, 0xa3).
                    out.extend_from_slice(o.usage);
                    if rctd {
                        timeouts(o, &mut out);
                    }
                }
                // SUPPORT 001b: not supported; no CDB usage data.
                None => out.extend_from_slice(&[0, 0x01, 0, 0]),
            }
        }
        _ => return Err(Sense::invalid_cdb_field(2, Some(2))),
    }
    Ok(out)
}

/// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS data (SPC-4 6.36): ABORT TASK, ABORT TASK SET,
/// CLEAR TASK SET, LOGICAL UNIT RESET, I_T NEXUS RESET (via logout), and QUERY TASK not.
pub fn report_tmf(cdb: &[u8; 32]) -> Vec<u8> {
    let repd = cdb[2] & 0x80 != 0;
    // byte 0: ATS bit7, ATSS bit6, CACAS bit5, CTSS bit4, LURS bit3, QTS bit2, TRS bit1, WAKES bit0.
    let b0 = 0x80 | 0x40 | 0x10 | 0x08 | 0x02;
    if repd {
        let mut d = vec![0u8; 16];
        d[0] = b0;
        d[3] = 0x0c; // additional data length
        d
    } else {
        vec![b0, 0, 0, 0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cdb(opts: u8, op: u8, sa: u16) -> [u8; 32] {
        let mut c = [0u8; 32];
        c[0] = 0xa3;
        c[1] = 0x0c;
        c[2] = opts;
        c[3] = op;
        c[4..6].copy_from_slice(&sa.to_be_bytes());
        c
    }

    #[test]
    fn usage_data_matches_cdb_lengths() {
        for o in OPS {
            assert_eq!(o.usage[0], o.opcode);
            assert_eq!(o.usage.len(), super::super::cdb::cdb_len(o.opcode), "opcode {:#x}", o.opcode);
        }
    }

    #[test]
    fn all_commands_with_and_without_timeouts() {
        let d = report(&cdb(0, 0, 0)).unwrap();
        assert_eq!(u32::from_be_bytes(d[0..4].try_into().unwrap()) as usize, OPS.len() * 8);
        let d = report(&cdb(0x80, 0, 0)).unwrap();
        assert_eq!(d.len(), 4 + OPS.len() * 20);
        assert_eq!(d[4 + 5] & 0x02, 0x02, "CTDP");
        assert_eq!(&d[4 + 8..4 + 10], &[0, 0x0a]);
    }

    #[test]
    fn one_command_forms() {
        let d = report(&cdb(1, 0x28, 0)).unwrap();
        assert_eq!(d[1] & 7, 3);
        assert_eq!(u16::from_be_bytes([d[2], d[3]]), 10);
        assert_eq!(d[4], 0x28);
        assert!(report(&cdb(1, 0x9e, 0x10)).is_err(), "has service actions");
        assert!(report(&cdb(2, 0x28, 0)).is_err(), "has none");
        let d = report(&cdb(2, 0x9e, 0x12)).unwrap();
        assert_eq!((d[4], d[5]), (0x9e, 0x12));
        assert_eq!(report(&cdb(1, 0xe7, 0)).unwrap(), vec![0, 1, 0, 0]);
        assert!(report(&cdb(5, 0, 0)).is_err());
    }
}
