//! SCSI target core (SPC-4 / SBC-3): turns CDBs into volume I/O and answers with status, sense
//! and data. Transport-neutral: the iSCSI front-end gathers a command's Data-Out into one buffer,
//! calls [`ScsiPort::submit`], forwards the I/O completions it receives to
//! [`ScsiPort::on_io_complete`], and drains finished tasks with [`ScsiPort::next_done`].
//!
//! One `ScsiPort` per I_T nexus (an iSCSI session's connection); `Lun`s are shared by all nexuses
//! that see them.

pub mod pr;

use std::collections::VecDeque;
use std::sync::Arc;

use slab::Slab;

use crate::bdev::{IoOp, IoRequest};
use crate::reactor::{Core, HandlerRef, IoBuf, IoEvent};
use crate::volume::{Denied, Initiator, Volume};

/// SAM-5 status codes.
pub mod status {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
    pub const CONDITION_MET: u8 = 0x04;
    pub const BUSY: u8 = 0x08;
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    pub const TASK_SET_FULL: u8 = 0x28;
    pub const TASK_ABORTED: u8 = 0x40;
}

/// SPC-4 sense keys.
pub mod sense_key {
    pub const NO_SENSE: u8 = 0x0;
    pub const RECOVERED_ERROR: u8 = 0x1;
    pub const NOT_READY: u8 = 0x2;
    pub const MEDIUM_ERROR: u8 = 0x3;
    pub const HARDWARE_ERROR: u8 = 0x4;
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    pub const UNIT_ATTENTION: u8 = 0x6;
    pub const DATA_PROTECT: u8 = 0x7;
    pub const ABORTED_COMMAND: u8 = 0xb;
    pub const MISCOMPARE: u8 = 0xe;
}

/// Fixed-format sense data (SPC-4 4.5.3), kept inline so a response does not allocate.
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

pub const INVALID_OPCODE: Sense = Sense::new(sense_key::ILLEGAL_REQUEST, 0x20, 0x00);
pub const LBA_OUT_OF_RANGE: Sense = Sense::new(sense_key::ILLEGAL_REQUEST, 0x21, 0x00);
pub const LUN_NOT_SUPPORTED: Sense = Sense::new(sense_key::ILLEGAL_REQUEST, 0x25, 0x00);
pub const WRITE_PROTECTED: Sense = Sense::new(sense_key::DATA_PROTECT, 0x27, 0x00);
pub const MEDIUM_ERROR_UNRECOVERED: Sense = Sense::new(sense_key::MEDIUM_ERROR, 0x11, 0x00);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataDir {
    None,
    /// Data-In: target to initiator.
    Read,
    /// Data-Out: initiator to target.
    Write,
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskAttr {
    Simple,
    Ordered,
    HeadOfQueue,
    Aca,
}

/// One SCSI command as the transport delivers it, Data-Out already gathered.
#[derive(Debug)]
pub struct ScsiCommand {
    pub cdb: [u8; 32],
    pub cdb_len: u8,
    pub lun: u64,
    /// The transport's task tag (iSCSI Initiator Task Tag); echoed in the response.
    pub task_tag: u32,
    /// Expected data transfer length (EDTL) the initiator announced.
    pub expected_len: u32,
    pub dir: DataDir,
    /// The Data-Out bytes received (len may be below expected_len if the initiator sent less).
    pub data_out: Option<IoBuf>,
    pub attr: TaskAttr,
}

impl ScsiCommand {
    pub fn cdb(&self) -> &[u8] {
        &self.cdb[..self.cdb_len as usize]
    }
}

/// A finished task.
#[derive(Debug)]
pub struct ScsiResponse {
    pub task_tag: u32,
    pub status: u8,
    pub sense: Option<Sense>,
    /// Data-In to send: the first `data_len` bytes of `data_in`. The transport sends at most
    /// expected_len bytes and reports the residual (over- or underflow) itself.
    pub data_in: Option<IoBuf>,
    pub data_len: u32,
}

impl ScsiResponse {
    pub fn good(task_tag: u32) -> Self {
        ScsiResponse { task_tag, status: status::GOOD, sense: None, data_in: None, data_len: 0 }
    }
    pub fn check(task_tag: u32, sense: Sense) -> Self {
        ScsiResponse { task_tag, status: status::CHECK_CONDITION, sense: Some(sense), data_in: None, data_len: 0 }
    }
    pub fn status(task_tag: u32, status: u8) -> Self {
        ScsiResponse { task_tag, status, sense: None, data_in: None, data_len: 0 }
    }
    pub fn data(task_tag: u32, buf: IoBuf, len: u32) -> Self {
        ScsiResponse { task_tag, status: status::GOOD, sense: None, data_in: Some(buf), data_len: len }
    }
}

/// A logical unit: a volume seen through SCSI.
pub struct Lun {
    pub id: u64,
    pub volume: Arc<Volume>,
    /// T10 product and serial strings for INQUIRY and VPD 0x80.
    pub product: String,
    pub serial: String,
}

impl Lun {
    pub fn new(id: u64, volume: Arc<Volume>) -> Lun {
        let serial = crate::volume::identity::hex(&volume.uuid().as_bytes()[..8]);
        Lun { id, volume, product: "Palisade LUN".into(), serial }
    }
}

/// The LUNs a target exposes (REPORT LUNS lists them).
#[derive(Default)]
pub struct LunMap {
    pub luns: Vec<Arc<Lun>>,
}

impl LunMap {
    pub fn get(&self, id: u64) -> Option<&Arc<Lun>> {
        self.luns.iter().find(|l| l.id == id)
    }
}

/// A task waiting for volume I/O.
struct Pending {
    task_tag: u32,
    op: IoOp,
    len: u32,
}

/// Per-nexus executor: runs commands, tracks those waiting for I/O.
pub struct ScsiPort {
    pub initiator: Initiator,
    pub luns: Arc<LunMap>,
    tasks: Slab<Pending>,
    done: VecDeque<ScsiResponse>,
}

impl ScsiPort {
    pub fn new(initiator: Initiator, luns: Arc<LunMap>) -> Self {
        ScsiPort { initiator, luns, tasks: Slab::with_capacity(128), done: VecDeque::with_capacity(128) }
    }

    /// Commands still waiting for I/O.
    pub fn in_flight(&self) -> usize {
        self.tasks.len()
    }

    /// Start a command; its response arrives through `next_done` (at once or after I/O).
    pub fn submit(&mut self, core: &mut Core, me: HandlerRef, cmd: ScsiCommand) {
        let tag = cmd.task_tag;
        let lun = match self.luns.get(cmd.lun) {
            Some(l) => l.clone(),
            None => {
                let op = cmd.cdb[0];
                // INQUIRY and REPORT LUNS work on any LUN number (SPC-4 6.6 / SAM-5).
                if op == 0x12 {
                    return self.done.push_back(inquiry_no_lun(tag, &cmd));
                }
                if op != 0xa0 {
                    return self.done.push_back(ScsiResponse::check(tag, LUN_NOT_SUPPORTED));
                }
                return self.done.push_back(report_luns(tag, &self.luns, &cmd));
            }
        };
        let cdb = cmd.cdb();
        let resp = match cdb[0] {
            0x00 => ScsiResponse::good(tag),                     // TEST UNIT READY
            0x12 => inquiry(tag, &lun, &cmd),                    // INQUIRY
            0x25 => read_capacity10(tag, &lun),                  // READ CAPACITY(10)
            0x9e if cdb[1] & 0x1f == 0x10 => read_capacity16(tag, &lun, &cmd), // READ CAPACITY(16)
            0xa0 => report_luns(tag, &self.luns, &cmd),          // REPORT LUNS
            0x28 | 0x2a | 0x88 | 0x8a => return self.rw(core, me, &lun, cmd),
            _ => ScsiResponse::check(tag, INVALID_OPCODE),
        };
        self.done.push_back(resp);
    }

    fn rw(&mut self, core: &mut Core, me: HandlerRef, lun: &Lun, cmd: ScsiCommand) {
        let cdb_copy = cmd.cdb;
        let cdb = &cdb_copy[..cmd.cdb_len as usize];
        let tag = cmd.task_tag;
        let (lba, blocks, write) = match cdb[0] {
            0x28 | 0x2a => (
                u32::from_be_bytes(cdb[2..6].try_into().unwrap()) as u64,
                u16::from_be_bytes(cdb[7..9].try_into().unwrap()) as u64,
                cdb[0] == 0x2a,
            ),
            _ => (
                u64::from_be_bytes(cdb[2..10].try_into().unwrap()),
                u32::from_be_bytes(cdb[10..14].try_into().unwrap()) as u64,
                cdb[0] == 0x8a,
            ),
        };
        let bs = lun.volume.block_size() as u64;
        if lba.checked_add(blocks).is_none_or(|e| e > lun.volume.num_blocks()) {
            return self.done.push_back(ScsiResponse::check(tag, LBA_OUT_OF_RANGE));
        }
        if blocks == 0 {
            return self.done.push_back(ScsiResponse::good(tag));
        }
        let len = (blocks * bs) as u32;
        let buf = if write {
            match cmd.data_out {
                Some(b) if b.len() >= len as usize => b,
                _ => return self.done.push_back(ScsiResponse::check(tag, Sense::new(sense_key::ILLEGAL_REQUEST, 0x0c, 0x0d))),
            }
        } else {
            IoBuf::new(len as usize)
        };
        let op = if write { IoOp::Write } else { IoOp::Read };
        let slot = self.tasks.insert(Pending { task_tag: tag, op, len });
        let fua = cdb[1] & 0x08 != 0;
        let req = IoRequest { op, offset_blocks: lba, num_blocks: blocks, buf: Some(buf), fua, owner: me, tag: slot as u64 };
        if let Err((_req, why)) = lun.volume.submit(core, &self.initiator, req) {
            self.tasks.remove(slot);
            self.done.push_back(denied(tag, why));
        }
    }

    /// Feed an I/O completion this port's commands were waiting for.
    pub fn on_io_complete(&mut self, _core: &mut Core, _me: HandlerRef, ev: IoEvent) {
        let Some(p) = self.tasks.try_remove(ev.tag as usize) else { return };
        let resp = if ev.status != 0 {
            ScsiResponse::check(p.task_tag, MEDIUM_ERROR_UNRECOVERED)
        } else if p.op == IoOp::Read {
            ScsiResponse::data(p.task_tag, ev.buf.expect("read buffer comes back"), p.len)
        } else {
            ScsiResponse::good(p.task_tag)
        };
        self.done.push_back(resp);
    }

    /// Queue a finished task (commands completed outside this module, e.g. `pr::execute`).
    pub fn push_done(&mut self, resp: ScsiResponse) {
        self.done.push_back(resp);
    }

    /// The next finished task, if any.
    pub fn next_done(&mut self) -> Option<ScsiResponse> {
        self.done.pop_front()
    }
}

fn denied(tag: u32, why: Denied) -> ScsiResponse {
    match why {
        Denied::OutOfRange => ScsiResponse::check(tag, LBA_OUT_OF_RANGE),
        Denied::ReservationConflict => ScsiResponse::status(tag, status::RESERVATION_CONFLICT),
        Denied::WriteProtected => ScsiResponse::check(tag, WRITE_PROTECTED),
    }
}

fn alloc_len(cdb: &[u8], at: std::ops::Range<usize>) -> usize {
    cdb[at].iter().fold(0usize, |a, &b| (a << 8) | b as usize)
}

fn respond_bytes(tag: u32, bytes: &[u8], alloc: usize) -> ScsiResponse {
    let n = bytes.len().min(alloc);
    let mut buf = IoBuf::new(n.max(1));
    buf.set_len(n);
    buf.copy_from_slice(&bytes[..n]);
    ScsiResponse::data(tag, buf, n as u32)
}

fn standard_inquiry(peripheral: u8, product: &str) -> [u8; 36] {
    let mut d = [0u8; 36];
    d[0] = peripheral;
    d[2] = 0x06; // SPC-4
    d[3] = 0x02; // response data format 2
    d[4] = 31;
    d[7] = 0x02; // CMDQUE
    d[8..16].copy_from_slice(b"PALISADE");
    let mut p = [b' '; 16];
    for (i, c) in product.bytes().take(16).enumerate() {
        p[i] = c;
    }
    d[16..32].copy_from_slice(&p);
    d[32..36].copy_from_slice(b"0001");
    d
}

fn inquiry(tag: u32, lun: &Lun, cmd: &ScsiCommand) -> ScsiResponse {
    let cdb = cmd.cdb();
    if cdb[1] & 0x01 != 0 || cdb[2] != 0 {
        return ScsiResponse::check(tag, Sense::invalid_cdb_field(1, Some(0)));
    }
    respond_bytes(tag, &standard_inquiry(0x00, &lun.product), alloc_len(cdb, 3..5))
}

fn inquiry_no_lun(tag: u32, cmd: &ScsiCommand) -> ScsiResponse {
    // Peripheral qualifier 011b: no logical unit here.
    respond_bytes(tag, &standard_inquiry(0x7f, "no LUN"), alloc_len(cmd.cdb(), 3..5))
}

fn read_capacity10(tag: u32, lun: &Lun) -> ScsiResponse {
    let last = lun.volume.num_blocks() - 1;
    let mut d = [0u8; 8];
    d[0..4].copy_from_slice(&(last.min(0xffff_ffff) as u32).to_be_bytes());
    d[4..8].copy_from_slice(&lun.volume.block_size().to_be_bytes());
    respond_bytes(tag, &d, 8)
}

fn read_capacity16(tag: u32, lun: &Lun, cmd: &ScsiCommand) -> ScsiResponse {
    let mut d = [0u8; 32];
    d[0..8].copy_from_slice(&(lun.volume.num_blocks() - 1).to_be_bytes());
    d[8..12].copy_from_slice(&lun.volume.block_size().to_be_bytes());
    respond_bytes(tag, &d, alloc_len(cmd.cdb(), 10..14))
}

fn report_luns(tag: u32, luns: &LunMap, cmd: &ScsiCommand) -> ScsiResponse {
    let mut d = vec![0u8; 8 + 8 * luns.luns.len()];
    d[0..4].copy_from_slice(&((8 * luns.luns.len()) as u32).to_be_bytes());
    for (i, l) in luns.luns.iter().enumerate() {
        d[8 + 8 * i..16 + 8 * i].copy_from_slice(&encode_lun(l.id));
    }
    respond_bytes(tag, &d, alloc_len(cmd.cdb(), 6..10))
}

/// SAM-5 single-level LUN: peripheral addressing below 256, flat space addressing above.
pub fn encode_lun(id: u64) -> [u8; 8] {
    let mut b = [0u8; 8];
    if id < 256 {
        b[1] = id as u8;
    } else {
        b[0] = 0x40 | ((id >> 8) & 0x3f) as u8;
        b[1] = id as u8;
    }
    b
}

/// Inverse of [`encode_lun`] for the 8-byte LUN field of a transport header.
pub fn decode_lun(b: [u8; 8]) -> u64 {
    match b[0] >> 6 {
        0 => b[1] as u64,
        1 => (((b[0] & 0x3f) as u64) << 8) | b[1] as u64,
        _ => u64::MAX,
    }
}
