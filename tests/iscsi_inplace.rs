//! iSCSI writes received in place (issue 12): many outstanding WRITEs whose immediate data,
//! unsolicited Data-Out and R2T-solicited Data-Out arrive interleaved across tasks (each task's
//! own sequences in offset order, as DataSequenceInOrder=Yes asks), sent in odd-sized pieces so payloads straddle socket reads (part
//! copied from the receive buffer, the rest read straight into the task's buffer); then every
//! block is read back. With and without HeaderDigest/DataDigest=CRC32C. Also: an ITT reused while
//! its task is active is refused, and reused after completion works.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::hostile::RawLogin;
use common::{free_port, Target};
use palisade::iscsi::pdu::{self, op, Bhs};
use serde_json::json;

const IQN: &str = "iqn.2016-06.io.spdk:disk1";
const BS: usize = 512;
const TASKS: u32 = 16;
/// Bytes per command: immediate + unsolicited (FirstBurstLength) + two R2T bursts.
const LEN: usize = 192 << 10;

fn start(port: u16) -> Target {
    let t = Target::start(&["-m", "0x1"]);
    t.rpc("bdev_malloc_create", json!({"name": "Malloc0", "num_blocks": 32768, "block_size": BS}));
    t.rpc("iscsi_create_portal_group", json!({"tag": 1, "portals": [{"host": "127.0.0.1", "port": port.to_string()}]}));
    t.rpc("iscsi_create_initiator_group", json!({"tag": 1, "initiators": ["ANY"], "netmasks": ["127.0.0.1/32"]}));
    t.rpc("iscsi_create_target_node", json!({"name": "disk1", "alias_name": "", "luns": [{"bdev_name": "Malloc0", "lun_id": 0}],
        "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 1}], "queue_depth": 32}));
    t
}

/// A small deterministic generator (no external crates).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

struct Client {
    sock: TcpStream,
    hd: bool,
    dd: bool,
    /// The target's MaxRecvDataSegmentLength: our Data-Out PDUs stay within it.
    dsl: usize,
    inbuf: Vec<u8>,
    cmd_sn: u32,
    rng: Rng,
}

/// One PDU from the target: header and data segment.
struct In {
    h: Bhs,
    data: Vec<u8>,
}

fn text_value(text: &[u8], key: &str) -> Option<String> {
    String::from_utf8_lossy(text).split('\0').find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(|v| v.to_string()))
}

impl Client {
    fn login(port: u16, digests: bool, seed: u64) -> Client {
        let mut c = RawLogin::connect(port);
        let r = c.step(0x81, &format!("InitiatorName=iqn.2024-01.test:inplace{seed}\nTargetName={IQN}\nAuthMethod=None\n"));
        assert_eq!(r.class, 0);
        let dig = if digests { "CRC32C" } else { "None" };
        let r = c.step(
            0x87,
            &format!(
                "HeaderDigest={dig}\nDataDigest={dig}\nInitialR2T=No\nImmediateData=Yes\nFirstBurstLength=65536\nMaxBurstLength=65536\nMaxOutstandingR2T=4\nMaxRecvDataSegmentLength=65536\n"
            ),
        );
        assert_eq!((r.class, r.flags & 0x83), (0, 0x83), "login");
        assert_eq!(text_value(&r.text, "HeaderDigest").as_deref(), Some(dig));
        assert_eq!(text_value(&r.text, "DataDigest").as_deref(), Some(dig));
        assert_eq!(text_value(&r.text, "InitialR2T").as_deref(), Some("No"));
        let dsl = text_value(&r.text, "MaxRecvDataSegmentLength").and_then(|v| v.parse().ok()).unwrap_or(8192usize);
        c.sock.set_nodelay(true).unwrap();
        c.sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        Client { sock: c.sock, hd: digests, dd: digests, dsl: dsl.min(65536), inbuf: Vec::new(), cmd_sn: 1, rng: Rng(seed | 1) }
    }

    fn encode(&self, out: &mut Vec<u8>, h: &Bhs, data: &[u8]) {
        pdu::encode(out, h, &[], data, self.hd, self.dd);
    }

    /// Write `bytes` in odd-sized pieces with short pauses, so PDUs straddle the target's reads.
    fn send_ragged(&mut self, bytes: &[u8]) {
        let mut off = 0;
        while off < bytes.len() {
            let n = (1 + self.rng.below(90_000)).min(bytes.len() - off);
            self.sock.write_all(&bytes[off..off + n]).unwrap();
            off += n;
            if self.rng.below(4) == 0 {
                std::thread::sleep(Duration::from_micros(300));
            }
        }
    }

    /// The next PDU, or None after the read timeout.
    fn recv(&mut self) -> Option<In> {
        loop {
            if self.inbuf.len() >= 48 {
                let h = Bhs::from_slice(&self.inbuf).unwrap();
                let dl = h.data_len();
                let hlen = 48 + h.ahs_len() + if self.hd { 4 } else { 0 };
                let total = hlen + pdu::pad4(dl) + if self.dd && dl > 0 { 4 } else { 0 };
                if self.inbuf.len() >= total {
                    if self.hd {
                        let got = u32::from_le_bytes(self.inbuf[hlen - 4..hlen].try_into().unwrap());
                        assert_eq!(got, pdu::digest(&self.inbuf[..hlen - 4]), "target header digest");
                    }
                    let data = self.inbuf[hlen..hlen + dl].to_vec();
                    if self.dd && dl > 0 {
                        let p = hlen + pdu::pad4(dl);
                        let got = u32::from_le_bytes(self.inbuf[p..p + 4].try_into().unwrap());
                        assert_eq!(got, pdu::digest(&self.inbuf[hlen..p]), "target data digest");
                    }
                    self.inbuf.drain(..total);
                    return Some(In { h, data });
                }
            }
            let mut b = [0u8; 65536];
            match self.sock.read(&mut b) {
                Ok(0) => panic!("target closed the connection"),
                Ok(n) => self.inbuf.extend_from_slice(&b[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    fn cmd(&mut self, itt: u32, write: bool, lba: u64, len: usize, imm: &[u8], fin: bool) -> Vec<u8> {
        let mut b = Bhs::new(op::SCSI_CMD, if fin { pdu::F_FINAL } else { 0 } | if write { pdu::F_WRITE } else { pdu::F_READ } | 1);
        b.set_itt(itt);
        b.set_u32(20, len as u32);
        b.set_u32(24, self.cmd_sn);
        self.cmd_sn += 1;
        let mut cdb = [0u8; 16];
        cdb[0] = if write { 0x8a } else { 0x88 };
        cdb[2..10].copy_from_slice(&lba.to_be_bytes());
        cdb[10..14].copy_from_slice(&((len / BS) as u32).to_be_bytes());
        b.0[32..48].copy_from_slice(&cdb);
        let mut out = Vec::new();
        self.encode(&mut out, &b, imm);
        out
    }

    fn data_out(&self, out: &mut Vec<u8>, itt: u32, ttt: u32, datasn: u32, off: usize, data: &[u8], fin: bool) {
        let mut d = Bhs::new(op::DATA_OUT, if fin { pdu::F_FINAL } else { 0 });
        d.set_itt(itt);
        d.set_u32(20, ttt);
        d.set_u32(36, datasn);
        d.set_u32(40, off as u32);
        self.encode(out, &d, data);
    }
}

fn pattern(task: u32, len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i / 7) as u32 ^ (task.wrapping_mul(2654435761)) >> (i % 4 * 8)) as u8).collect()
}

/// A burst of Data-Out PDUs, each within `dsl`, for [off, off+len) of `data`.
fn burst(c: &Client, itt: u32, ttt: u32, data: &[u8], off: usize, len: usize) -> Vec<Vec<u8>> {
    let mut pdus = Vec::new();
    let mut pos = 0;
    let mut sn = 0;
    while pos < len {
        let n = c.dsl.min(len - pos);
        let mut out = Vec::new();
        c.data_out(&mut out, itt, ttt, sn, off + pos, &data[off + pos..off + pos + n], pos + n == len);
        pdus.push(out);
        pos += n;
        sn += 1;
    }
    pdus
}

/// Interleave the PDU lists (each list keeps its order: DataSN within a sequence), round-robin in
/// a shuffled order of lists.
fn interleave(rng: &mut Rng, mut seqs: Vec<Vec<Vec<u8>>>) -> Vec<u8> {
    rng.shuffle(&mut seqs);
    let mut out = Vec::new();
    let mut i = 0;
    while seqs.iter().any(|s| !s.is_empty()) {
        let k = i % seqs.len();
        if !seqs[k].is_empty() {
            out.extend(seqs[k].remove(0));
        }
        i += 1 + rng.below(3);
    }
    out
}

fn run(digests: bool, seed: u64) {
    let port = free_port();
    let t = start(port);
    let mut c = Client::login(port, digests, seed);
    let imm_len = 8192.min(c.dsl);
    let first_burst = 65536;
    let datas: Vec<Vec<u8>> = (0..TASKS).map(|i| pattern(i + seed as u32 * 100, LEN)).collect();
    let itt = |i: u32| 0x5000 + i * 17;
    let lba = |i: u32| (i as u64) * (LEN / BS) as u64;

    // TEST UNIT READY takes the POWER ON unit attention first.
    let mut tur = Bhs::new(op::SCSI_CMD, pdu::F_FINAL | 1);
    tur.set_itt(1);
    tur.set_u32(24, c.cmd_sn);
    c.cmd_sn += 1;
    let mut out = Vec::new();
    c.encode(&mut out, &tur, &[]);
    c.sock.write_all(&out).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.recv().is_none_or(|p| p.h.opcode() != op::SCSI_RSP) {
        assert!(Instant::now() < deadline, "no answer to TEST UNIT READY");
    }

    // Every command with its immediate data, then all unsolicited bursts interleaved.
    let mut out = Vec::new();
    for i in 0..TASKS {
        out.extend(c.cmd(itt(i), true, lba(i), LEN, &datas[i as usize][..imm_len], false));
    }
    let seqs: Vec<Vec<Vec<u8>>> = (0..TASKS).map(|i| burst(&c, itt(i), 0xffff_ffff, &datas[i as usize], imm_len, first_burst - imm_len)).collect();
    // Unsolicited PDUs of one task go in order (one sequence); tasks interleave.
    out.extend(interleave(&mut c.rng, seqs));
    c.send_ragged(&out);

    // R2Ts come as the budget allows; answer what has arrived, out of order across tasks and
    // between sequences of a task.
    let mut done = 0;
    let mut r2ts: Vec<(u32, u32, usize, usize)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while done < TASKS {
        assert!(Instant::now() < deadline, "writes did not complete: {done} of {TASKS}");
        match c.recv() {
            Some(p) if p.h.opcode() == op::R2T => {
                r2ts.push((p.h.itt(), p.h.u32_at(20), p.h.u32_at(40) as usize, p.h.u32_at(44) as usize));
            }
            Some(p) if p.h.opcode() == op::SCSI_RSP => {
                assert_eq!((p.h.b2(), p.h.b3()), (0, 0), "write itt {:#x} failed: sense {:02x?}", p.h.itt(), &p.data);
                done += 1;
            }
            Some(p) => panic!("unexpected PDU {:#x} reason {:#x} about {:02x?}", p.h.opcode(), p.h.b2(), &p.data[..p.data.len().min(48)]),
            None if !r2ts.is_empty() => {
                // DataSequenceInOrder=Yes (the default): a task's sequences go in offset order;
                // tasks interleave freely.
                r2ts.sort_by_key(|&(i, _, off, _)| (i, off));
                let mut seqs: Vec<Vec<Vec<u8>>> = Vec::new();
                let mut last = None;
                for (i, ttt, off, len) in r2ts.drain(..) {
                    let task = (i - 0x5000) / 17;
                    let pdus = burst(&c, i, ttt, &datas[task as usize], off, len);
                    if last == Some(i) {
                        seqs.last_mut().unwrap().extend(pdus);
                    } else {
                        seqs.push(pdus);
                    }
                    last = Some(i);
                }
                let bytes = interleave(&mut c.rng, seqs);
                c.send_ragged(&bytes);
            }
            None => {}
        }
    }

    // An ITT reused after completion is fine; a duplicate of an active one is refused.
    for i in (0..TASKS).rev() {
        let cmd = c.cmd(itt(i), false, lba(i), LEN, &[], true);
        c.sock.write_all(&cmd).unwrap();
        let mut back = vec![0u8; LEN];
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(Instant::now() < deadline, "read {i} timed out");
            let Some(p) = c.recv() else { continue };
            match p.h.opcode() {
                op::DATA_IN => {
                    let off = p.h.u32_at(40) as usize;
                    back[off..off + p.data.len()].copy_from_slice(&p.data);
                    if p.h.flags() & pdu::F_STATUS != 0 {
                        assert_eq!(p.h.b3(), 0);
                        break;
                    }
                }
                op::SCSI_RSP => {
                    assert_eq!(p.h.b3(), 0, "read {i}");
                    break;
                }
                o => panic!("unexpected PDU {o:#x}"),
            }
        }
        assert!(back == datas[i as usize], "task {i}: read back other data (digests {digests})");
    }

    // Duplicate active ITT: a write that waits for its R2T keeps the tag busy.
    let first = c.cmd(0x7777, true, 0, 4096, &[], true);
    let dup = c.cmd(0x7777, true, 8, 4096, &[], true);
    c.sock.write_all(&first).unwrap();
    c.sock.write_all(&dup).unwrap();
    let (mut rejected, mut r2t) = (false, None);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(rejected && r2t.is_some()) {
        assert!(Instant::now() < deadline, "no reject for the duplicate ITT (rejected {rejected})");
        let Some(p) = c.recv() else { continue };
        match p.h.opcode() {
            op::REJECT => rejected = true,
            op::R2T => r2t = Some((p.h.u32_at(20), p.h.u32_at(40) as usize, p.h.u32_at(44) as usize)),
            o => panic!("unexpected PDU {o:#x}"),
        }
    }
    let (ttt, off, len) = r2t.unwrap();
    let mut out = Vec::new();
    c.data_out(&mut out, 0x7777, ttt, 0, off, &vec![0xab; len], true);
    c.sock.write_all(&out).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline);
        if let Some(p) = c.recv() {
            assert_eq!(p.h.opcode(), op::SCSI_RSP);
            assert_eq!(p.h.b3(), 0);
            break;
        }
    }
    drop(c);
    t.stop();
}

#[test]
fn interleaved_writes_land_in_place() {
    run(false, 1);
}

#[test]
fn interleaved_writes_land_in_place_with_digests() {
    run(true, 2);
}
