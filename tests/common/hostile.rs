//! What the hostile-client tests measure of the target process: resident memory, its peak, and
//! the longest reactor loop (a stall). With `PALISADE_HOSTILE_REPORT=FILE` each test appends one
//! JSON line of its figures, which `bench/hostile/run.sh` turns into the table in bench/README.md.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use palisade::iscsi::pdu::{self, op, Bhs};
use palisade::nvme::spec::{admin, cns, sgl, Sgl, Sqe};
use palisade::nvmf::fabrics::{build_connect_sqe, ConnectData};
use palisade::nvmf::host::HostOpts;
use palisade::nvmf::tcp::pdu::{self as tcp, ty, Digests, IcReq};
use serde_json::{json, Value};

use super::Target;

fn status_kib(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap()
}

/// Resident memory now (KiB).
pub fn rss_kib(t: &Target) -> u64 {
    status_kib(t.pid(), "VmRSS:")
}

/// Peak resident memory since the target started (KiB).
pub fn hwm_kib(t: &Target) -> u64 {
    status_kib(t.pid(), "VmHWM:")
}

/// Longest loop iteration of any reactor since the previous call (microseconds).
pub fn max_stall_us(t: &Target) -> u64 {
    let st = t.rpc("framework_get_reactors", Value::Null);
    st["reactors"].as_array().unwrap().iter().filter_map(|r| r["max_loop_us"].as_u64()).max().unwrap_or(0)
}

/// Figures of one abuse: RSS before, at peak and after the abusers left, and the worst stall.
pub struct Figures {
    pub baseline_kib: u64,
    pub peak_kib: u64,
    pub after_kib: u64,
    pub stall_us: u64,
}

/// Append the figures to `$PALISADE_HOSTILE_REPORT` (if set) and print them.
pub fn report(abuse: &str, f: &Figures) {
    let line = json!({"abuse": abuse, "baseline_kib": f.baseline_kib, "peak_kib": f.peak_kib, "after_kib": f.after_kib, "stall_us": f.stall_us});
    eprintln!("hostile: {line}");
    if let Ok(path) = std::env::var("PALISADE_HOSTILE_REPORT") {
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
        writeln!(file, "{line}").unwrap();
    }
}

/// A login conversation driven PDU by PDU, with whatever flags the test names.
pub struct RawLogin {
    pub sock: TcpStream,
    pub cmd_sn: u32,
}

/// One Login Response: (flags, status class, detail, TSIH, text).
pub struct Resp {
    pub flags: u8,
    pub class: u8,
    pub detail: u8,
    pub tsih: u16,
    pub text: Vec<u8>,
}

impl RawLogin {
    pub fn connect(port: u16) -> RawLogin {
        let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        RawLogin { sock, cmd_sn: 1 }
    }

    pub fn send(&mut self, flags: u8, text: &str) {
        let mut b = Bhs::new(op::LOGIN_REQ, flags);
        b.set_immediate();
        b.0[8..14].copy_from_slice(&[0x80, 0, 0, 0x12, 0x34, 0x56]); // ISID (random format)
        b.set_itt(7);
        b.set_u32(24, self.cmd_sn);
        let data = text.replace('\n', "\0").into_bytes();
        let mut out = Vec::new();
        pdu::encode(&mut out, &b, &[], &data, false, false);
        self.sock.write_all(&out).unwrap();
    }

    pub fn recv(&mut self) -> Option<Resp> {
        let mut h = [0u8; 48];
        self.sock.read_exact(&mut h).ok()?;
        let b = Bhs::from_slice(&h).unwrap();
        assert_eq!(b.opcode(), op::LOGIN_RSP, "expected a login response");
        let mut text = vec![0u8; pdu::pad4(b.data_len())];
        self.sock.read_exact(&mut text).ok()?;
        text.truncate(b.data_len());
        Some(Resp { flags: b.flags(), class: h[36], detail: h[37], tsih: b.u16_at(14), text })
    }

    pub fn step(&mut self, flags: u8, text: &str) -> Resp {
        self.send(flags, text);
        self.recv().expect("login response")
    }

    /// After a successful login: a READ(10) of one block on LUN 0, answered with data?
    pub fn read_works(&mut self) -> bool {
        let mut b = Bhs::new(op::SCSI_CMD, pdu::F_FINAL | pdu::F_READ | 1);
        b.set_itt(100);
        b.set_u32(20, 512);
        b.set_u32(24, self.cmd_sn);
        b.set_u32(28, 2);
        let mut cdb = [0u8; 16];
        cdb[0] = 0x28;
        cdb[8] = 1;
        b.0[32..48].copy_from_slice(&cdb);
        let mut out = Vec::new();
        pdu::encode(&mut out, &b, &[], &[], false, false);
        if self.sock.write_all(&out).is_err() {
            return false;
        }
        let mut h = [0u8; 48];
        self.sock.read_exact(&mut h).is_ok() && (h[0] & 0x3f == op::DATA_IN || h[0] & 0x3f == op::SCSI_RSP)
    }
}


/// NVMe/TCP: a raw connection that did ICReq/ICResp (no digests).
pub fn nvme_icreq(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = Vec::new();
    IcReq { pfv: 0, hpda: 0, digests: Digests::default(), maxr2t: 0 }.encode(&mut b);
    s.write_all(&b).unwrap();
    let mut r = [0u8; 128];
    s.read_exact(&mut r).unwrap();
    assert_eq!(r[0], ty::ICRESP);
    s
}

/// NVMe/TCP: a raw admin queue (ICReq, then Connect to `nqn` with cid 0), the response read.
pub fn nvme_raw_admin(addr: SocketAddr, nqn: &str, sq_entries: u16) -> TcpStream {
    let mut s = nvme_icreq(addr);
    let o = HostOpts::new(addr, nqn);
    let sqe = build_connect_sqe(0, 0, sq_entries - 1, 0, true);
    let data = ConnectData { hostid: o.hostid, cntlid: 0xffff, subnqn: nqn.into(), hostnqn: o.hostnqn.clone() }.encode();
    let mut b = Vec::new();
    tcp::encode_capsule_cmd(&mut b, Digests::default(), 0, &sqe.0, &data);
    s.write_all(&b).unwrap();
    let mut r = [0u8; 24];
    s.read_exact(&mut r).unwrap();
    assert_eq!(r[0], ty::CAPSULE_RESP);
    assert_eq!(u16::from_le_bytes([r[8 + 14], r[8 + 15]]) >> 1, 0, "Connect succeeded");
    s
}

/// NVMe: an Identify Controller capsule (4 KiB of data back).
pub fn nvme_identify_capsule(cid: u16) -> Vec<u8> {
    let mut sqe = Sqe::default();
    sqe.set_opcode(admin::IDENTIFY).set_cid(cid).set_cdw(10, cns::CONTROLLER as u32);
    sqe.set_sgl(Sgl { address: 0, length: 4096, id: sgl::TRANSPORT_DATA_BLOCK });
    let mut b = Vec::new();
    tcp::encode_capsule_cmd(&mut b, Digests::default(), 0, &sqe.0, &[]);
    b
}

/// iSCSI: WRITE(10) `kib` KiB of `seed` at LBA `seed` on LUN 0 and read it back (past one
/// unit attention), as a polite initiator beside the abusers does.
pub fn iscsi_write_read(s: &mut palisade::iscsi::initiator::Session, seed: u8, kib: usize) {
    let data = vec![seed; kib << 10];
    let mut w = [0u8; 10];
    w[0] = 0x2a;
    w[5] = seed;
    w[7..9].copy_from_slice(&((kib * 2) as u16).to_be_bytes());
    let (c, _) = s.command(0, &w, &data, 0, Duration::from_secs(20)).unwrap();
    let c = if c.status == 2 { s.command(0, &w, &data, 0, Duration::from_secs(20)).unwrap().0 } else { c };
    assert_eq!(c.status, 0);
    let mut r = w;
    r[0] = 0x28;
    let (c, back) = s.command(0, &r, &[], data.len(), Duration::from_secs(20)).unwrap();
    assert_eq!(c.status, 0);
    assert!(back == data, "polite initiator read back other data");
}
