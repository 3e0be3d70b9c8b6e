//! NVMe wire structures (NVM Express Base Specification 2.0, NVMe over Fabrics 1.1): submission
//! and completion queue entries, status codes, opcodes, and byte-exact builders for the Identify
//! and log page structures. Depends on nothing; every accessor is bounds-safe by construction
//! (fixed-size arrays).

/// A 64-byte submission queue entry (Base 4.2).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Sqe(pub [u8; 64]);

impl std::fmt::Debug for Sqe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sqe(opc={:#x} cid={} nsid={} cdw10={:#x})", self.opcode(), self.cid(), self.nsid(), self.cdw(10))
    }
}

impl Default for Sqe {
    fn default() -> Self {
        Sqe([0; 64])
    }
}

impl Sqe {
    pub fn from_slice(b: &[u8]) -> Option<Sqe> {
        Some(Sqe(b.get(..64)?.try_into().ok()?))
    }
    pub fn opcode(&self) -> u8 {
        self.0[0]
    }
    /// FUSE (bits 1:0) and PSDT (bits 7:6) byte.
    pub fn flags(&self) -> u8 {
        self.0[1]
    }
    pub fn cid(&self) -> u16 {
        u16::from_le_bytes([self.0[2], self.0[3]])
    }
    pub fn nsid(&self) -> u32 {
        self.dw(4)
    }
    /// Command dword `n` (0..=15).
    pub fn cdw(&self, n: usize) -> u32 {
        self.dw(n * 4)
    }
    fn dw(&self, at: usize) -> u32 {
        u32::from_le_bytes([self.0[at], self.0[at + 1], self.0[at + 2], self.0[at + 3]])
    }
    /// SGL descriptor 1 (bytes 24..40): address, length, identifier (type << 4 | subtype).
    pub fn sgl(&self) -> Sgl {
        Sgl {
            address: u64::from_le_bytes(self.0[24..32].try_into().unwrap()),
            length: self.dw(32),
            id: self.0[39],
        }
    }
    /// Fabrics command type (byte 4 of a fabrics command, opcode 0x7f).
    pub fn fctype(&self) -> u8 {
        self.0[4]
    }
    pub fn set_opcode(&mut self, v: u8) -> &mut Self {
        self.0[0] = v;
        self
    }
    pub fn set_cid(&mut self, v: u16) -> &mut Self {
        self.0[2..4].copy_from_slice(&v.to_le_bytes());
        self
    }
    pub fn set_nsid(&mut self, v: u32) -> &mut Self {
        self.0[4..8].copy_from_slice(&v.to_le_bytes());
        self
    }
    pub fn set_cdw(&mut self, n: usize, v: u32) -> &mut Self {
        self.0[n * 4..n * 4 + 4].copy_from_slice(&v.to_le_bytes());
        self
    }
    /// Set SGL descriptor 1 and PSDT = SGL (the only form NVMe over Fabrics uses).
    pub fn set_sgl(&mut self, s: Sgl) -> &mut Self {
        self.0[1] = (self.0[1] & 0x3f) | 0x40;
        self.0[24..32].copy_from_slice(&s.address.to_le_bytes());
        self.0[32..36].copy_from_slice(&s.length.to_le_bytes());
        self.0[36..39].fill(0);
        self.0[39] = s.id;
        self
    }
    pub fn set_bytes(&mut self, at: usize, b: &[u8]) -> &mut Self {
        self.0[at..at + b.len()].copy_from_slice(b);
        self
    }
}

/// An SGL descriptor as NVMe/TCP uses it (Base 4.3.2; TCP transport 3.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sgl {
    pub address: u64,
    pub length: u32,
    pub id: u8,
}

/// SGL identifiers (descriptor type << 4 | subtype).
pub mod sgl {
    /// Data Block, subtype Offset: in-capsule data at `address` bytes into the capsule's data.
    pub const DATA_BLOCK_OFFSET: u8 = 0x01;
    /// Transport SGL Data Block, transport-specific subtype: data moved by C2HData/R2T+H2CData.
    pub const TRANSPORT_DATA_BLOCK: u8 = 0x5a;
}

/// Completion queue entry (Base 4.6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cqe {
    pub dw0: u32,
    pub dw1: u32,
    pub sqhd: u16,
    pub sqid: u16,
    pub cid: u16,
    pub status: Status,
}

impl Cqe {
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&self.dw0.to_le_bytes());
        b[4..8].copy_from_slice(&self.dw1.to_le_bytes());
        b[8..10].copy_from_slice(&self.sqhd.to_le_bytes());
        b[10..12].copy_from_slice(&self.sqid.to_le_bytes());
        b[12..14].copy_from_slice(&self.cid.to_le_bytes());
        // Status field: bit 0 is the phase tag (unused on fabrics), SC bits 8:1, SCT 11:9, DNR 15.
        b[14..16].copy_from_slice(&self.status.raw().to_le_bytes());
        b
    }
    pub fn decode(b: &[u8]) -> Option<Cqe> {
        let b: &[u8; 16] = b.get(..16)?.try_into().ok()?;
        let st = u16::from_le_bytes([b[14], b[15]]);
        Some(Cqe {
            dw0: u32::from_le_bytes(b[0..4].try_into().ok()?),
            dw1: u32::from_le_bytes(b[4..8].try_into().ok()?),
            sqhd: u16::from_le_bytes([b[8], b[9]]),
            sqid: u16::from_le_bytes([b[10], b[11]]),
            cid: u16::from_le_bytes([b[12], b[13]]),
            status: Status::from_raw(st),
        })
    }
}

/// Status code type + status code (Base 4.6.1.2); `dnr` = do not retry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub sct: u8,
    pub sc: u8,
    pub dnr: bool,
}

impl Status {
    pub const SUCCESS: Status = Status { sct: 0, sc: 0, dnr: false };
    pub const fn generic(sc: u8) -> Status {
        Status { sct: sct::GENERIC, sc, dnr: true }
    }
    pub const fn specific(sc: u8) -> Status {
        Status { sct: sct::COMMAND_SPECIFIC, sc, dnr: true }
    }
    pub const fn media(sc: u8) -> Status {
        Status { sct: sct::MEDIA, sc, dnr: true }
    }
    pub fn is_ok(&self) -> bool {
        self.sct == 0 && self.sc == 0
    }
    pub fn raw(&self) -> u16 {
        ((self.sc as u16) << 1) | ((self.sct as u16 & 7) << 9) | ((self.dnr as u16) << 15)
    }
    pub fn from_raw(v: u16) -> Status {
        Status { sc: (v >> 1) as u8, sct: ((v >> 9) & 7) as u8, dnr: v & 0x8000 != 0 }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sct {:#x} sc {:#x}{}", self.sct, self.sc, if self.dnr { " dnr" } else { "" })
    }
}

pub mod sct {
    pub const GENERIC: u8 = 0;
    pub const COMMAND_SPECIFIC: u8 = 1;
    pub const MEDIA: u8 = 2;
}

/// Generic command status codes (Base 4.6.1.2.1, Figure 102).
pub mod sc {
    pub const SUCCESS: u8 = 0x00;
    pub const INVALID_OPCODE: u8 = 0x01;
    pub const INVALID_FIELD: u8 = 0x02;
    pub const CID_CONFLICT: u8 = 0x03;
    pub const DATA_TRANSFER_ERROR: u8 = 0x04;
    pub const INTERNAL_ERROR: u8 = 0x06;
    pub const ABORT_REQUESTED: u8 = 0x07;
    pub const INVALID_NAMESPACE: u8 = 0x0b;
    pub const COMMAND_SEQUENCE_ERROR: u8 = 0x0c;
    pub const SGL_DATA_LENGTH_INVALID: u8 = 0x0f;
    pub const SGL_DESCRIPTOR_TYPE_INVALID: u8 = 0x11;
    pub const NAMESPACE_WRITE_PROTECTED: u8 = 0x20;
    pub const LBA_OUT_OF_RANGE: u8 = 0x80;
    pub const CAPACITY_EXCEEDED: u8 = 0x81;
    pub const NAMESPACE_NOT_READY: u8 = 0x82;
    pub const RESERVATION_CONFLICT: u8 = 0x83;
    // Command specific (SCT 1)
    pub const INVALID_QUEUE_IDENTIFIER: u8 = 0x01;
    pub const ABORT_LIMIT_EXCEEDED: u8 = 0x03;
    pub const ASYNC_EVENT_LIMIT_EXCEEDED: u8 = 0x05;
    pub const INVALID_LOG_PAGE: u8 = 0x09;
    pub const FEATURE_NOT_SAVEABLE: u8 = 0x0d;
    pub const FEATURE_NOT_CHANGEABLE: u8 = 0x0e;
    /// Fabrics Connect (NVMe-oF 3.3.1, Figure 21).
    pub const CONNECT_INCOMPATIBLE_FORMAT: u8 = 0x80;
    pub const CONNECT_CONTROLLER_BUSY: u8 = 0x81;
    pub const CONNECT_INVALID_PARAMETERS: u8 = 0x82;
    pub const CONNECT_INVALID_HOST: u8 = 0x84;
    // Media and data integrity errors (SCT 2)
    pub const COMPARE_FAILURE: u8 = 0x85;
}

/// Admin opcodes (Base 5, Figure 139).
pub mod admin {
    pub const DELETE_IO_SQ: u8 = 0x00;
    pub const CREATE_IO_SQ: u8 = 0x01;
    pub const GET_LOG_PAGE: u8 = 0x02;
    pub const DELETE_IO_CQ: u8 = 0x04;
    pub const CREATE_IO_CQ: u8 = 0x05;
    pub const IDENTIFY: u8 = 0x06;
    pub const ABORT: u8 = 0x08;
    pub const SET_FEATURES: u8 = 0x09;
    pub const GET_FEATURES: u8 = 0x0a;
    pub const ASYNC_EVENT_REQUEST: u8 = 0x0c;
    pub const KEEP_ALIVE: u8 = 0x18;
    pub const FABRICS: u8 = 0x7f;
}

/// NVM command set I/O opcodes (NVM Command Set 3).
pub mod io {
    pub const FLUSH: u8 = 0x00;
    pub const WRITE: u8 = 0x01;
    pub const READ: u8 = 0x02;
    pub const COMPARE: u8 = 0x05;
    pub const WRITE_ZEROES: u8 = 0x08;
    pub const DATASET_MANAGEMENT: u8 = 0x09;
}

/// Fabrics command types (NVMe-oF 3.3, Figure 11).
pub mod fctype {
    pub const PROPERTY_SET: u8 = 0x00;
    pub const CONNECT: u8 = 0x01;
    pub const PROPERTY_GET: u8 = 0x04;
    pub const AUTH_SEND: u8 = 0x05;
    pub const AUTH_RECV: u8 = 0x06;
    pub const DISCONNECT: u8 = 0x08;
}

/// Controller properties (Base 3.1.4 register offsets).
pub mod prop {
    pub const CAP: u32 = 0x00;
    pub const VS: u32 = 0x08;
    pub const CC: u32 = 0x14;
    pub const CSTS: u32 = 0x1c;
    pub const NSSR: u32 = 0x20;
}

/// Identify CNS values (Base 5.17.2).
pub mod cns {
    pub const NAMESPACE: u8 = 0x00;
    pub const CONTROLLER: u8 = 0x01;
    pub const ACTIVE_NS_LIST: u8 = 0x02;
    pub const NS_ID_DESCRIPTORS: u8 = 0x03;
    pub const CS_NAMESPACE: u8 = 0x05;
    pub const CS_CONTROLLER: u8 = 0x06;
}

/// Log page identifiers (Base 5.16.1).
pub mod lid {
    pub const ERROR: u8 = 0x01;
    pub const SMART: u8 = 0x02;
    pub const FIRMWARE_SLOT: u8 = 0x03;
    pub const CHANGED_NS_LIST: u8 = 0x04;
    pub const COMMANDS_EFFECTS: u8 = 0x05;
    pub const DISCOVERY: u8 = 0x70;
}

/// Feature identifiers (Base 5.27.1).
pub mod fid {
    pub const ARBITRATION: u8 = 0x01;
    pub const POWER_MANAGEMENT: u8 = 0x02;
    pub const TEMPERATURE_THRESHOLD: u8 = 0x04;
    pub const ERROR_RECOVERY: u8 = 0x05;
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    pub const INTERRUPT_COALESCING: u8 = 0x08;
    pub const WRITE_ATOMICITY: u8 = 0x0a;
    pub const ASYNC_EVENT_CONFIG: u8 = 0x0b;
    pub const KEEP_ALIVE_TIMER: u8 = 0x0f;
    pub const HOST_IDENTIFIER: u8 = 0x81;
}

/// Asynchronous event: notice type, namespace attribute changed (Base 5.2, Figure 146/150).
pub const AER_TYPE_NOTICE: u32 = 0x2;
pub const AER_INFO_NS_ATTR_CHANGED: u32 = 0x0;
/// Async Event Configuration bit enabling namespace attribute notices.
pub const AEC_NS_ATTR: u32 = 1 << 8;

/// Completion dword 0 of an AER for `event_type`, `info`, and the log page to read.
pub fn aer_dw0(event_type: u32, info: u32, log_page: u8) -> u32 {
    (event_type & 7) | (info & 0xff) << 8 | (log_page as u32) << 16
}

pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

fn put_str(buf: &mut [u8], at: usize, len: usize, s: &str, pad: u8) {
    let f = &mut buf[at..at + len];
    f.fill(pad);
    let n = s.len().min(len);
    f[..n].copy_from_slice(&s.as_bytes()[..n]);
}
fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Controller facts that the Identify Controller structure reports.
#[derive(Clone, Debug)]
pub struct ControllerInfo<'a> {
    pub serial: &'a str,
    pub model: &'a str,
    pub firmware: &'a str,
    pub cntlid: u16,
    pub subnqn: &'a str,
    /// 1 = I/O controller, 2 = discovery controller.
    pub cntrltype: u8,
    /// MDTS as a power of two of 4 KiB pages (0 = no limit).
    pub mdts: u8,
    pub max_namespaces: u32,
    pub ioccsz_bytes: u32,
    pub max_cmd: u16,
    pub volatile_write_cache: bool,
    pub oui: u32,
}

/// Identify Controller data structure (Base 5.17.2.1, Figure 275; NVMe-oF 4.2 fabrics fields).
pub fn identify_controller(c: &ControllerInfo, out: &mut [u8; 4096]) {
    out.fill(0);
    put16(out, 0, 0x1b36); // PCI vendor id field (no PCI on fabrics; a fixed value Linux shows)
    put16(out, 2, 0x1b36);
    put_str(out, 4, 20, c.serial, b' ');
    put_str(out, 24, 40, c.model, b' ');
    put_str(out, 64, 8, c.firmware, b' ');
    out[72] = 6; // RAB
    out[73] = c.oui as u8;
    out[74] = (c.oui >> 8) as u8;
    out[75] = (c.oui >> 16) as u8;
    out[76] = 0b011; // CMIC: multiple ports, multiple controllers
    out[77] = c.mdts;
    put16(out, 78, c.cntlid);
    put32(out, 80, 0x0001_0400); // VER 1.4
    put32(out, 92, if c.cntrltype == 1 { 1 << 8 } else { 1 << 31 }); // OAES: NS attribute / discovery log change
    out[111] = c.cntrltype;
    put16(out, 256, 0); // OACS: no optional admin commands
    out[258] = 3; // ACL: 4 concurrent aborts (0's based)
    out[259] = 3; // AERL: 4 outstanding AERs (0's based)
    out[260] = 0b11; // FRMW: 1 slot, slot 1 read-only
    out[261] = 0b0110; // LPA: commands supported and effects, extended data for Get Log Page
    out[262] = 0; // ELPE: 1 error log entry
    put16(out, 320, 1); // KAS: keep-alive granularity 100 ms
    out[512] = 0x66; // SQES
    out[513] = 0x44; // CQES
    put16(out, 514, c.max_cmd);
    put32(out, 516, c.max_namespaces);
    if c.cntrltype == 1 {
        put16(out, 520, 0b1101); // ONCS: compare, dataset management, write zeroes
    }
    out[525] = c.volatile_write_cache as u8;
    put32(out, 536, 1 | (1 << 20)); // SGLS: SGLs supported, offset addressing for in-capsule data
    // MNAN = NN, as SPDK and Linux nvmet report: SPDK's host sizes its ANA log buffer from MNAN
    // (0 makes it refuse the controller once a namespace is attached).
    if c.cntrltype == 1 {
        put32(out, 540, c.max_namespaces);
    }
    put_str(out, 768, 256, c.subnqn, 0);
    put32(out, 1792, c.ioccsz_bytes / 16); // IOCCSZ
    put32(out, 1796, 1); // IORCSZ: 16-byte responses
    put16(out, 1800, 0); // ICDOFF
    out[1802] = 0; // FCATT: dynamic controller model
    out[1803] = 1; // MSDBD
    put16(out, 2048, 0); // PSD0 max power: 0 (not reported)
}

/// Namespace facts for Identify Namespace.
#[derive(Clone, Copy, Debug)]
pub struct NamespaceInfo {
    pub num_blocks: u64,
    pub block_size: u32,
    pub nguid: [u8; 16],
    pub eui64: [u8; 8],
    /// Deallocated blocks read back as zeros.
    pub dealloc_zeroes: bool,
}

/// Identify Namespace (NVM Command Set 4.1.5.1, Figure 97).
pub fn identify_namespace(n: &NamespaceInfo, out: &mut [u8; 4096]) {
    out.fill(0);
    put64(out, 0, n.num_blocks); // NSZE
    put64(out, 8, n.num_blocks); // NCAP
    put64(out, 16, n.num_blocks); // NUSE
    out[24] = 0; // NSFEAT
    out[25] = 0; // NLBAF: one format
    out[26] = 0; // FLBAS: format 0
    out[30] = 1; // NMIC: may be shared
    out[33] = if n.dealloc_zeroes { 0b1001 } else { 0 }; // DLFEAT: deallocated reads zeros; WZ dealloc
    out[104..120].copy_from_slice(&n.nguid);
    out[120..128].copy_from_slice(&n.eui64);
    // LBA format 0: no metadata, LBADS = log2(block size), best relative performance.
    out[130] = n.block_size.trailing_zeros() as u8;
}

/// Namespace Identification Descriptor list (Base 5.17.2.3, Figure 278): EUI-64, NGUID, UUID.
pub fn ns_id_descriptors(eui64: &[u8; 8], nguid: &[u8; 16], uuid: &[u8; 16], out: &mut [u8; 4096]) {
    out.fill(0);
    let mut at = 0;
    for (t, v) in [(1u8, &eui64[..]), (2, &nguid[..]), (3, &uuid[..])] {
        out[at] = t;
        out[at + 1] = v.len() as u8;
        out[at + 4..at + 4 + v.len()].copy_from_slice(v);
        at += 4 + v.len();
    }
}

/// Active namespace id list after `after` (Base 5.17.2.2): up to 1024 ids in increasing order.
pub fn active_ns_list(ids: impl Iterator<Item = u32>, after: u32, out: &mut [u8; 4096]) {
    out.fill(0);
    for (i, id) in ids.filter(|&id| id > after).take(1024).enumerate() {
        put32(out, i * 4, id);
    }
}

/// Firmware Slot Information log (Base 5.16.1.4): slot 1 active.
pub fn firmware_log(fr: &str, out: &mut [u8]) {
    out.fill(0);
    if out.len() >= 16 {
        out[0] = 1;
        put_str(out, 8, 8, fr, b' ');
    }
}

/// SMART / Health log (Base 5.16.1.3): no warnings, room temperature, full spare.
pub fn smart_log(host_reads: u64, host_writes: u64, out: &mut [u8]) {
    out.fill(0);
    if out.len() < 512 {
        return;
    }
    put16(out, 1, 273 + 25); // composite temperature, Kelvin
    out[3] = 100; // available spare
    out[4] = 10; // spare threshold
    put64(out, 48, host_reads); // host read commands (low 64 bits of the 128-bit counter)
    put64(out, 64, host_writes);
}

/// Commands Supported and Effects log (Base 5.16.1.6): CSUPP for what we implement, LBCC for
/// commands that change the medium.
pub fn commands_effects_log(out: &mut [u8]) {
    out.fill(0);
    if out.len() < 4096 {
        return;
    }
    for op in [admin::GET_LOG_PAGE, admin::IDENTIFY, admin::ABORT, admin::SET_FEATURES, admin::GET_FEATURES, admin::ASYNC_EVENT_REQUEST, admin::KEEP_ALIVE] {
        put32(out, op as usize * 4, 1);
    }
    for (op, lbcc) in [(io::FLUSH, true), (io::WRITE, true), (io::READ, false), (io::COMPARE, false), (io::WRITE_ZEROES, true), (io::DATASET_MANAGEMENT, true)] {
        put32(out, 1024 + op as usize * 4, 1 | (lbcc as u32) << 1);
    }
}

/// One entry of the discovery log page (NVMe-oF 5.3, Figure 38).
#[derive(Clone, Debug)]
pub struct DiscoveryEntry<'a> {
    /// 2 = NVM subsystem, 3 = current discovery subsystem.
    pub subtype: u8,
    pub portid: u16,
    pub trsvcid: &'a str,
    pub subnqn: &'a str,
    pub traddr: &'a str,
    /// 1 = IPv4, 2 = IPv6.
    pub adrfam: u8,
    /// The port requires a TLS 1.3 secure channel for this entry's subsystem.
    pub secure: bool,
}

/// The whole discovery log: 1 KiB header (generation counter, record count) then 1 KiB records.
pub fn discovery_log(genctr: u64, entries: &[DiscoveryEntry], out: &mut Vec<u8>) {
    out.clear();
    out.resize(1024 * (1 + entries.len()), 0);
    put64(out, 0, genctr);
    put64(out, 8, entries.len() as u64);
    put16(out, 16, 0); // RECFMT
    for (i, e) in entries.iter().enumerate() {
        let b = &mut out[1024 * (i + 1)..1024 * (i + 2)];
        b[0] = 3; // TRTYPE: TCP
        b[1] = e.adrfam;
        b[2] = e.subtype;
        // TREQ bits 1:0 (NVMe-oF Discovery Log Page Entry): 01b secure channel required,
        // 10b not required.
        b[3] = if e.secure { 0b01 } else { 0b10 };
        put16(b, 4, e.portid);
        put16(b, 6, 0xffff); // CNTLID: dynamic
        put16(b, 8, 32); // ASQSZ
        put_str(b, 32, 32, e.trsvcid, b' ');
        put_str(b, 256, 256, e.subnqn, 0);
        put_str(b, 512, 256, e.traddr, b' ');
        // TSAS for TCP, SECTYPE (NVMe/TCP §3.6.3, TP 8011): 02h TLS 1.3, 00h no security.
        b[768] = if e.secure { 2 } else { 0 };
    }
}

/// Read a NUL- or space-padded ASCII field.
pub fn get_str(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_roundtrip() {
        let s = Status::generic(sc::LBA_OUT_OF_RANGE);
        assert_eq!(Status::from_raw(s.raw()), s);
        let c = Cqe { dw0: 1, dw1: 2, sqhd: 3, sqid: 4, cid: 5, status: Status::specific(sc::CONNECT_INVALID_HOST) };
        assert_eq!(Cqe::decode(&c.encode()).unwrap(), c);
    }

    #[test]
    fn identify_fields() {
        let mut b = [0u8; 4096];
        identify_controller(
            &ControllerInfo {
                serial: "SN1",
                model: "Palisade",
                firmware: "0.1",
                cntlid: 7,
                subnqn: "nqn.x",
                cntrltype: 1,
                mdts: 5,
                max_namespaces: 32,
                ioccsz_bytes: 64 + 8192,
                max_cmd: 128,
                volatile_write_cache: false,
                oui: 0x001405,
            },
            &mut b,
        );
        assert_eq!(&b[4..8], b"SN1 ");
        assert_eq!(u16::from_le_bytes([b[78], b[79]]), 7);
        assert_eq!(get_str(&b[768..1024]), "nqn.x");
        assert_eq!(u32::from_le_bytes(b[1792..1796].try_into().unwrap()), (64 + 8192) / 16);
        let mut s = Sqe::default();
        s.set_opcode(2).set_cid(9).set_nsid(1).set_cdw(10, 0x1234).set_sgl(Sgl { address: 0, length: 4096, id: sgl::TRANSPORT_DATA_BLOCK });
        assert_eq!((s.opcode(), s.cid(), s.nsid(), s.cdw(10)), (2, 9, 1, 0x1234));
        assert_eq!(s.sgl().length, 4096);
        assert_eq!(s.flags() >> 6, 1);
    }
}
