//! iSCSI initiator: login (CHAP one-way and mutual), SendTargets discovery, SCSI commands with
//! immediate / unsolicited data and R2T handling, Data-In with status, NOP-In answers. Used by
//! `palisade perf --transport iscsi` and by the tests; it also works against tgt.
//!
//! Efficient enough for benchmarks: a non-blocking socket, requests batched into one write per
//! poll, a large receive buffer parsed for many PDUs per read, and per-tag buffers reused.

pub mod login;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::pdu::{self, at, op, Bhs, F_FINAL, F_READ, F_STATUS, F_WRITE, RESERVED_TAG};
pub use login::{LoginOptions, SessionParams};

const RX_CAP: usize = 4 << 20;

fn err(kind: std::io::ErrorKind, msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(kind, msg.into())
}

/// A finished command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub tag: u32,
    pub status: u8,
    pub sense: Vec<u8>,
    /// Bytes of Data-In received.
    pub data_len: usize,
    /// Residual count and whether it is an underflow (true) or overflow (false).
    pub residual: Option<(bool, u32)>,
}

#[derive(Default)]
struct Slot {
    busy: bool,
    itt: u32,
    lun: u64,
    cmd_sn: u32,
    write_data: Vec<u8>,
    read_data: Vec<u8>,
    got: usize,
}

pub struct Session {
    sock: TcpStream,
    pub params: SessionParams,
    rx: Vec<u8>,
    rx_start: usize,
    rx_end: usize,
    tx: Vec<u8>,
    /// The session's next CmdSN, shared by its connections (MC/S: one thread per connection);
    /// ExpStatSN is per connection.
    cmd_sn: Arc<AtomicU32>,
    exp_stat_sn: u32,
    /// The session's MaxCmdSN as last heard on any of its connections (a connection with nothing
    /// in flight hears nothing, yet must see the window the others moved).
    max_cmd_sn: Arc<AtomicU32>,
    seq: u32,
    slots: Vec<Slot>,
    /// Commands waiting for the CmdSN window: (tag, header) with data kept in the slot.
    waiting: std::collections::VecDeque<(u32, Bhs)>,
    /// ITT and echoed data of the last NOP-In answering our NOP-Out.
    pong: Option<(u32, Vec<u8>)>,
    /// ITT and response of Task Management Function Responses not yet claimed.
    tmf: Vec<(u32, u8)>,
}

impl Session {
    /// Connect and log in (discovery session when `opts.target` is None).
    pub fn connect(addr: &str, port: u16, opts: &LoginOptions, depth: usize) -> std::io::Result<Session> {
        Session::connect_with(addr, port, opts, depth, Arc::new(AtomicU32::new(1)), Arc::new(AtomicU32::new(1)))
    }

    /// One session of `n` connections (MC/S, RFC 7143 §6.2): the leading login offers
    /// MaxConnections=`n`, the others join with its TSIH as CIDs 1.. and share its CmdSN counter.
    /// Fewer connections than asked when the target agreed to fewer.
    pub fn connect_mcs(addr: &str, port: u16, opts: &LoginOptions, depth: usize, n: usize) -> std::io::Result<Vec<Session>> {
        let mut o = opts.clone();
        o.max_connections = n.max(1) as u32;
        let lead = Session::connect(addr, port, &o, depth)?;
        let n = n.min(lead.params.max_connections.max(1) as usize);
        let mut out = vec![lead];
        for cid in 1..n {
            let c = out[0].add_connection(addr, port, &o, depth, cid as u16)?;
            out.push(c);
        }
        Ok(out)
    }

    /// Log in another connection of this session with CID `cid` (the ISID, initiator and target
    /// of `opts` must be this session's; its TSIH is filled in).
    pub fn add_connection(&self, addr: &str, port: u16, opts: &LoginOptions, depth: usize, cid: u16) -> std::io::Result<Session> {
        let mut o = opts.clone();
        o.tsih = self.params.tsih;
        o.cid = cid;
        let mut c = Session::connect_with(addr, port, &o, depth, self.cmd_sn.clone(), self.max_cmd_sn.clone())?;
        // The session-wide values are the leading login's; digests and sizes are the connection's.
        let lead = &self.params;
        c.params.initial_r2t = lead.initial_r2t;
        c.params.immediate_data = lead.immediate_data;
        c.params.first_burst = lead.first_burst;
        c.params.max_burst = lead.max_burst;
        c.params.max_connections = lead.max_connections;
        Ok(c)
    }

    fn connect_with(
        addr: &str,
        port: u16,
        opts: &LoginOptions,
        depth: usize,
        cmd_sn: Arc<AtomicU32>,
        max_cmd_sn: Arc<AtomicU32>,
    ) -> std::io::Result<Session> {
        let sock = TcpStream::connect((addr, port))?;
        sock.set_nodelay(true)?;
        let mut s = Session {
            sock,
            params: SessionParams::default(),
            rx: vec![0; RX_CAP],
            rx_start: 0,
            rx_end: 0,
            tx: Vec::with_capacity(1 << 20),
            cmd_sn,
            exp_stat_sn: 0,
            max_cmd_sn,
            seq: 0,
            slots: (0..depth.max(1)).map(|_| Slot::default()).collect(),
            waiting: Default::default(),
            pong: None,
            tmf: Vec::new(),
        };
        s.sock.set_read_timeout(Some(Duration::from_secs(15)))?;
        login::run(&mut s, opts)?;
        s.sock.set_read_timeout(None)?;
        s.sock.set_nonblocking(true)?;
        Ok(s)
    }

    pub fn depth(&self) -> usize {
        self.slots.len()
    }

    /// Move the session's MaxCmdSN forward to `max` (never back: responses on several
    /// connections arrive in any order).
    fn raise_max_cmd_sn(&self, max: u32) {
        let mut cur = self.max_cmd_sn.load(Ordering::Acquire);
        while pdu::sn_lt(cur, max) {
            match self.max_cmd_sn.compare_exchange_weak(cur, max, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(now) => cur = now,
            }
        }
    }

    /// The session's next CmdSN (not taken).
    pub fn cmd_sn(&self) -> u32 {
        self.cmd_sn.load(Ordering::Acquire)
    }

    /// Take the next CmdSN if the window this connection last heard of allows it.
    fn take_cmd_sn(&self) -> Option<u32> {
        let mut cur = self.cmd_sn.load(Ordering::Acquire);
        loop {
            if pdu::sn_lt(self.max_cmd_sn.load(Ordering::Acquire), cur) {
                return None;
            }
            match self.cmd_sn.compare_exchange_weak(cur, cur.wrapping_add(1), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(cur),
                Err(now) => cur = now,
            }
        }
    }

    // --- low-level PDU I/O shared with login -------------------------------------------------

    fn queue_pdu(&mut self, h: &Bhs, data: &[u8]) {
        pdu::encode(&mut self.tx, h, &[], data, self.params.header_digest, self.params.data_digest);
    }

    fn flush_blocking(&mut self) -> std::io::Result<()> {
        let mut pos = 0;
        while pos < self.tx.len() {
            match self.sock.write(&self.tx[pos..]) {
                Ok(0) => return Err(err(std::io::ErrorKind::BrokenPipe, "connection closed")),
                Ok(n) => pos += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => wait_fd(&self.sock, false, Duration::from_millis(100))?,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.tx.clear();
        Ok(())
    }

    /// Next complete PDU already in the buffer: (header, data copied out).
    fn next_pdu(&mut self) -> std::io::Result<Option<(Bhs, std::ops::Range<usize>)>> {
        let buf = &self.rx[self.rx_start..self.rx_end];
        match pdu::parse_frame(buf, self.params.header_digest, self.params.data_digest, RX_CAP / 2) {
            Ok(Some(f)) => {
                let base = self.rx_start;
                self.rx_start += f.total;
                Ok(Some((f.bhs, base + f.data.0..base + f.data.1)))
            }
            Ok(None) => Ok(None),
            Err((e, _)) => Err(err(std::io::ErrorKind::InvalidData, e.to_string())),
        }
    }

    /// Read what the socket has (non-blocking after login). Ok(false) if nothing was there.
    fn fill(&mut self) -> std::io::Result<bool> {
        if self.rx_start == self.rx_end {
            self.rx_start = 0;
            self.rx_end = 0;
        } else if self.rx_end > RX_CAP / 2 {
            self.rx.copy_within(self.rx_start..self.rx_end, 0);
            self.rx_end -= self.rx_start;
            self.rx_start = 0;
        }
        match self.sock.read(&mut self.rx[self.rx_end..]) {
            Ok(0) => Err(err(std::io::ErrorKind::UnexpectedEof, "target closed the connection")),
            Ok(n) => {
                self.rx_end += n;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::Interrupted => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Blocking receive of one PDU (login and discovery only).
    fn recv_blocking(&mut self, timeout: Duration) -> std::io::Result<(Bhs, Vec<u8>)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((h, r)) = self.next_pdu()? {
                return Ok((h, self.rx[r].to_vec()));
            }
            if Instant::now() > deadline {
                return Err(err(std::io::ErrorKind::TimedOut, "no answer from the target"));
            }
            if !self.fill()? {
                wait_fd(&self.sock, true, Duration::from_millis(50))?;
            }
        }
    }

    fn note_sn(&mut self, h: &Bhs, has_stat: bool) {
        if has_stat {
            self.exp_stat_sn = h.u32_at(at::W24).wrapping_add(1);
        }
        let max = h.u32_at(at::W32);
        let exp = h.u32_at(at::W28);
        if pdu::sn_le(exp.wrapping_sub(1), max) {
            self.raise_max_cmd_sn(max);
        }
    }

    // --- discovery ---------------------------------------------------------------------------

    /// Text SendTargets=All (or a name): [(TargetName, [TargetAddress])].
    pub fn send_targets(&mut self, what: &str) -> std::io::Result<Vec<(String, Vec<String>)>> {
        let mut h = Bhs::new(op::TEXT_REQ, F_FINAL);
        h.set_immediate();
        h.set_itt(0x1000);
        h.set_u32(at::W20, RESERVED_TAG);
        h.set_u32(at::W24, self.cmd_sn());
        h.set_u32(at::W28, self.exp_stat_sn);
        let text = pdu::encode_text(&[("SendTargets".into(), what.into())]);
        self.queue_pdu(&h, &text);
        self.flush_blocking()?;
        let mut all = Vec::new();
        loop {
            let (r, data) = self.recv_blocking(Duration::from_secs(10))?;
            if r.opcode() != op::TEXT_RSP {
                return Err(err(std::io::ErrorKind::InvalidData, format!("unexpected PDU {:#x}", r.opcode())));
            }
            self.note_sn(&r, true);
            all.extend_from_slice(&data);
            if r.final_bit() {
                break;
            }
            // Continue: an empty request with the target's transfer tag.
            let mut h = Bhs::new(op::TEXT_REQ, F_FINAL);
            h.set_immediate();
            h.set_itt(0x1000);
            h.set_u32(at::W20, r.u32_at(at::W20));
            h.set_u32(at::W24, self.cmd_sn());
            h.set_u32(at::W28, self.exp_stat_sn);
            self.queue_pdu(&h, &[]);
            self.flush_blocking()?;
        }
        let pairs = pdu::parse_text(&all).map_err(|e| err(std::io::ErrorKind::InvalidData, e.to_string()))?;
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for (k, v) in pairs {
            match k.as_str() {
                "TargetName" => out.push((v, Vec::new())),
                "TargetAddress" => {
                    if let Some(last) = out.last_mut() {
                        last.1.push(v);
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }

    // --- commands ----------------------------------------------------------------------------

    /// Queue a SCSI command on `tag` (< depth). `write` data is copied (R2T may ask for it);
    /// `read_len` bytes of Data-In are expected.
    pub fn submit(&mut self, tag: u32, lun: u64, cdb: &[u8], write: &[u8], read_len: usize) -> std::io::Result<()> {
        let p = self.params.clone();
        let slot = self.slots.get_mut(tag as usize).ok_or_else(|| err(std::io::ErrorKind::InvalidInput, "tag beyond depth"))?;
        if slot.busy {
            return Err(err(std::io::ErrorKind::InvalidInput, "tag in use"));
        }
        self.seq = self.seq.wrapping_add(1);
        let itt = (self.seq << 12) | (tag & 0xfff);
        slot.busy = true;
        slot.lun = lun;
        slot.itt = if itt == RESERVED_TAG { itt & 0xfff } else { itt };
        slot.got = 0;
        slot.write_data.clear();
        slot.write_data.extend_from_slice(write);
        if slot.read_data.len() < read_len {
            slot.read_data.resize(read_len, 0);
        }
        let mut flags = 0u8;
        if read_len > 0 {
            flags |= F_READ;
        }
        if !write.is_empty() {
            flags |= F_WRITE;
        }
        let mut h = Bhs::new(op::SCSI_CMD, flags | 1); // SIMPLE
        h.set_lun_raw(crate::scsi::encode_lun(lun));
        h.set_itt(slot.itt);
        h.set_u32(at::W20, (write.len() + read_len) as u32);
        let n = cdb.len().min(16);
        h.0[at::CDB..at::CDB + n].copy_from_slice(&cdb[..n]);
        let _ = p;
        self.waiting.push_back((tag, h));
        self.send_waiting();
        Ok(())
    }

    /// Send queued commands the CmdSN window allows, with immediate and unsolicited data.
    fn send_waiting(&mut self) {
        while let Some((tag, mut h)) = self.waiting.pop_front() {
            let Some(sn) = self.take_cmd_sn() else {
                self.waiting.push_front((tag, h));
                return;
            };
            h.set_u32(at::W24, sn);
            h.set_u32(at::W28, self.exp_stat_sn);
            self.slots[tag as usize].cmd_sn = sn;
            let p = &self.params;
            let slot = &self.slots[tag as usize];
            let total = slot.write_data.len();
            let first = (p.first_burst as usize).min(total);
            let imm = if p.immediate_data { first.min(p.max_send_dsl as usize) } else { 0 };
            let unsolicited = !p.initial_r2t && imm < first;
            if !unsolicited {
                h.0[1] |= F_FINAL;
            }
            let (hd, dd, mx) = (p.header_digest, p.data_digest, p.max_send_dsl as usize);
            pdu::encode(&mut self.tx, &h, &[], &slot.write_data[..imm], hd, dd);
            if unsolicited {
                let itt = slot.itt;
                let lun = h.lun_raw();
                let mut off = imm;
                let mut sn = 0;
                while off < first {
                    let len = mx.min(first - off);
                    let mut d = Bhs::new(op::DATA_OUT, if off + len == first { F_FINAL } else { 0 });
                    d.set_lun_raw(lun);
                    d.set_itt(itt);
                    d.set_u32(at::W20, RESERVED_TAG);
                    d.set_u32(at::W28, self.exp_stat_sn);
                    d.set_u32(at::W36, sn);
                    d.set_u32(at::W40, off as u32);
                    pdu::encode(&mut self.tx, &d, &[], &self.slots[tag as usize].write_data[off..off + len], hd, dd);
                    off += len;
                    sn += 1;
                }
            }
        }
    }

    fn slot_of(&self, itt: u32) -> Option<usize> {
        let s = (itt & 0xfff) as usize;
        self.slots.get(s).filter(|x| x.busy && x.itt == itt).map(|_| s)
    }

    /// Write queued requests, then wait up to `timeout` for completions; `done` gets each one
    /// with the Data-In bytes.
    pub fn poll(&mut self, timeout: Duration, done: &mut dyn FnMut(Completion, &[u8])) -> std::io::Result<usize> {
        let deadline = Instant::now() + timeout;
        let mut n = 0;
        loop {
            self.write_some()?;
            let mut progressed = false;
            while self.fill()? {
                progressed = true;
                n += self.process(done)?;
                if self.rx_end < RX_CAP / 2 {
                    break;
                }
            }
            n += self.process(done)?;
            if n > 0 && self.tx.is_empty() {
                self.write_some()?;
                return Ok(n);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(n);
            }
            if !progressed {
                wait_fd_rw(&self.sock, !self.tx.is_empty(), deadline - now)?;
            }
        }
    }

    fn write_some(&mut self) -> std::io::Result<()> {
        let mut pos = 0;
        while pos < self.tx.len() {
            match self.sock.write(&self.tx[pos..]) {
                Ok(0) => return Err(err(std::io::ErrorKind::BrokenPipe, "connection closed")),
                Ok(k) => pos += k,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.tx.drain(..pos);
        Ok(())
    }

    fn process(&mut self, done: &mut dyn FnMut(Completion, &[u8])) -> std::io::Result<usize> {
        let mut n = 0;
        while let Some((h, range)) = self.next_pdu()? {
            match h.opcode() {
                op::DATA_IN => {
                    let status_here = h.flags() & F_STATUS != 0;
                    self.note_sn(&h, status_here);
                    let Some(s) = self.slot_of(h.itt()) else { continue };
                    let off = h.u32_at(at::W40) as usize;
                    let len = range.len();
                    let slot = &mut self.slots[s];
                    if off + len <= slot.read_data.len() {
                        slot.read_data[off..off + len].copy_from_slice(&self.rx[range]);
                        slot.got = slot.got.max(off + len);
                    }
                    if status_here {
                        let c = Completion { tag: s as u32, status: h.b3(), sense: Vec::new(), data_len: slot.got, residual: residual(&h) };
                        slot.busy = false;
                        let got = slot.got;
                        done(c, &self.slots[s].read_data[..got]);
                        n += 1;
                    }
                }
                op::SCSI_RSP => {
                    self.note_sn(&h, true);
                    let Some(s) = self.slot_of(h.itt()) else { continue };
                    let d = &self.rx[range];
                    let sense = if d.len() >= 2 {
                        let sl = u16::from_be_bytes([d[0], d[1]]) as usize;
                        d[2..(2 + sl).min(d.len())].to_vec()
                    } else {
                        Vec::new()
                    };
                    let slot = &mut self.slots[s];
                    slot.busy = false;
                    let got = slot.got;
                    let c = Completion { tag: s as u32, status: h.b3(), sense, data_len: got, residual: residual(&h) };
                    done(c, &self.slots[s].read_data[..got]);
                    n += 1;
                }
                op::R2T => {
                    self.note_sn(&h, false);
                    let Some(s) = self.slot_of(h.itt()) else { continue };
                    let (off, len, ttt) = (h.u32_at(at::W40) as usize, h.u32_at(at::W44) as usize, h.u32_at(at::W20));
                    let p = &self.params;
                    let (hd, dd, mx) = (p.header_digest, p.data_digest, p.max_send_dsl as usize);
                    let end = (off + len).min(self.slots[s].write_data.len());
                    let mut o = off;
                    let mut sn = 0;
                    while o < end {
                        let l = mx.min(end - o);
                        let mut d = Bhs::new(op::DATA_OUT, if o + l == end { F_FINAL } else { 0 });
                        d.set_lun_raw(h.lun_raw());
                        d.set_itt(h.itt());
                        d.set_u32(at::W20, ttt);
                        d.set_u32(at::W28, self.exp_stat_sn);
                        d.set_u32(at::W36, sn);
                        d.set_u32(at::W40, o as u32);
                        pdu::encode(&mut self.tx, &d, &[], &self.slots[s].write_data[o..o + l], hd, dd);
                        o += l;
                        sn += 1;
                    }
                }
                op::NOP_IN => {
                    self.note_sn(&h, h.itt() != RESERVED_TAG);
                    if h.itt() != RESERVED_TAG {
                        self.pong = Some((h.itt(), self.rx[range.clone()].to_vec()));
                    }
                    let ttt = h.u32_at(at::W20);
                    if ttt != RESERVED_TAG {
                        // The target pings: answer with its tag.
                        let mut r = Bhs::new(op::NOP_OUT, F_FINAL);
                        r.set_immediate();
                        r.set_lun_raw(h.lun_raw());
                        r.set_itt(RESERVED_TAG);
                        r.set_u32(at::W20, ttt);
                        r.set_u32(at::W24, self.cmd_sn());
                        r.set_u32(at::W28, self.exp_stat_sn);
                        self.queue_pdu(&r, &[]);
                    }
                }
                op::TMF_RSP => {
                    self.note_sn(&h, true);
                    self.tmf.push((h.itt(), h.b2()));
                }
                op::REJECT => return Err(err(std::io::ErrorKind::InvalidData, format!("target rejected a PDU (reason {:#x})", h.b2()))),
                op::ASYNC => {
                    self.note_sn(&h, true);
                    if h.b2() == 1 || h.b2() == 2 || h.b2() == 3 {
                        return Err(err(std::io::ErrorKind::ConnectionAborted, "target asked to log out"));
                    }
                }
                op::LOGOUT_RSP => return Err(err(std::io::ErrorKind::ConnectionAborted, "logged out")),
                other => return Err(err(std::io::ErrorKind::InvalidData, format!("unexpected PDU {other:#x}"))),
            }
        }
        self.send_waiting();
        Ok(n)
    }

    /// Run one command to completion (tag 0): (completion, Data-In).
    pub fn command(&mut self, lun: u64, cdb: &[u8], write: &[u8], read_len: usize, timeout: Duration) -> std::io::Result<(Completion, Vec<u8>)> {
        self.submit(0, lun, cdb, write, read_len)?;
        let deadline = Instant::now() + timeout;
        let mut out = None;
        while out.is_none() {
            let now = Instant::now();
            if now >= deadline {
                return Err(err(std::io::ErrorKind::TimedOut, "command timed out"));
            }
            self.poll(deadline - now, &mut |c, d| out = Some((c, d.to_vec())))?;
        }
        Ok(out.unwrap())
    }

    /// NOP-Out ping with `data`; returns the data the target echoed.
    pub fn ping(&mut self, data: &[u8], timeout: Duration) -> std::io::Result<Vec<u8>> {
        let itt = 0x3000_0000 | (self.seq & 0xfff);
        self.seq = self.seq.wrapping_add(1);
        let mut h = Bhs::new(op::NOP_OUT, F_FINAL);
        h.set_itt(itt);
        h.set_u32(at::W20, RESERVED_TAG);
        // A NOP-Out that wants an answer takes a CmdSN like a command.
        h.set_u32(at::W24, self.cmd_sn.fetch_add(1, Ordering::AcqRel));
        h.set_u32(at::W28, self.exp_stat_sn);
        self.queue_pdu(&h, data);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((i, d)) = self.pong.take() {
                if i == itt {
                    return Ok(d);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(err(std::io::ErrorKind::TimedOut, "no NOP-In"));
            }
            self.poll((deadline - now).min(Duration::from_millis(50)), &mut |_, _| {})?;
        }
    }

    /// Send a Task Management Function Request (RFC 7143 §11.5) as an immediate PDU and wait for
    /// its response, handing the completions that arrive meanwhile to `done`. `ref_tag` names the
    /// task of ABORT TASK (function 1). On FUNCTION COMPLETE the aborted tasks' tags are free
    /// again (the target answers nothing for them). Returns the response code.
    pub fn task_management(
        &mut self,
        function: u8,
        lun: u64,
        ref_tag: Option<u32>,
        timeout: Duration,
        done: &mut dyn FnMut(Completion, &[u8]),
    ) -> std::io::Result<u8> {
        let itt = 0x4000_0000 | (self.seq & 0xfff);
        self.seq = self.seq.wrapping_add(1);
        let mut h = Bhs::new(op::TMF_REQ, F_FINAL | (function & 0x7f));
        h.set_immediate();
        h.set_lun_raw(crate::scsi::encode_lun(lun));
        h.set_itt(itt);
        let (rtt, ref_sn) = match ref_tag.and_then(|t| self.slots.get(t as usize)) {
            Some(s) => (s.itt, s.cmd_sn),
            None => (RESERVED_TAG, self.cmd_sn()),
        };
        h.set_u32(at::W20, rtt);
        h.set_u32(at::W24, self.cmd_sn());
        h.set_u32(at::W28, self.exp_stat_sn);
        h.set_u32(at::W32, ref_sn);
        self.queue_pdu(&h, &[]);
        let deadline = Instant::now() + timeout;
        let response = loop {
            if let Some(i) = self.tmf.iter().position(|&(t, _)| t == itt) {
                break self.tmf.remove(i).1;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(err(std::io::ErrorKind::TimedOut, "no Task Management Function Response"));
            }
            self.poll((deadline - now).min(Duration::from_millis(50)), done)?;
        };
        if response == 0 {
            for (i, s) in self.slots.iter_mut().enumerate() {
                let hit = match function {
                    1 => ref_tag == Some(i as u32),
                    2 | 4 | 5 => s.lun == lun,
                    6 | 7 => true,
                    _ => false,
                };
                if s.busy && hit {
                    s.busy = false;
                }
            }
        }
        Ok(response)
    }

    /// Task Management Function Responses received for requests sent with `raw_write`: (ITT,
    /// response), oldest first.
    pub fn take_tmf_responses(&mut self) -> Vec<(u32, u8)> {
        std::mem::take(&mut self.tmf)
    }

    /// Logout (close the session) and wait for the answer.
    pub fn logout(mut self) -> std::io::Result<()> {
        match self.logout_request(0, 0)? {
            0 => Ok(()),
            r => Err(err(std::io::ErrorKind::Other, format!("logout response {r}"))),
        }
    }

    /// Logout with `reason` (0 close the session, 1 close the connection `cid`, 2 remove it for
    /// recovery, RFC 7143 §11.14.1) and wait for the answer; returns its response code.
    pub fn logout_request(&mut self, reason: u8, cid: u16) -> std::io::Result<u8> {
        let mut h = Bhs::new(op::LOGOUT_REQ, F_FINAL | (reason & 0x7f));
        h.set_immediate();
        h.set_itt(0x2000);
        h.set_u16(20, cid);
        h.set_u32(at::W24, self.cmd_sn());
        h.set_u32(at::W28, self.exp_stat_sn);
        self.queue_pdu(&h, &[]);
        self.sock.set_nonblocking(false)?;
        self.flush_blocking()?;
        self.sock.set_nonblocking(true)?;
        loop {
            let (r, _) = self.recv_blocking(Duration::from_secs(10))?;
            if r.opcode() == op::LOGOUT_RSP {
                self.note_sn(&r, true);
                return Ok(r.b2());
            }
        }
    }

    /// Raw access for tests: write bytes as they are.
    pub fn raw_write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.tx.extend_from_slice(bytes);
        self.sock.set_nonblocking(false)?;
        let r = self.flush_blocking();
        self.sock.set_nonblocking(true)?;
        r
    }
}

fn residual(h: &Bhs) -> Option<(bool, u32)> {
    let f = h.flags();
    if f & pdu::F_UNDERFLOW != 0 {
        Some((true, h.u32_at(at::W44)))
    } else if f & pdu::F_OVERFLOW != 0 {
        Some((false, h.u32_at(at::W44)))
    } else {
        None
    }
}

fn wait_fd(s: &TcpStream, read: bool, timeout: Duration) -> std::io::Result<()> {
    let mut p = libc::pollfd { fd: s.as_raw_fd(), events: if read { libc::POLLIN } else { libc::POLLOUT }, revents: 0 };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, timeout.as_millis().min(i32::MAX as u128) as i32) };
    Ok(())
}

fn wait_fd_rw(s: &TcpStream, want_write: bool, timeout: Duration) -> std::io::Result<()> {
    let ev = libc::POLLIN | if want_write { libc::POLLOUT } else { 0 };
    let mut p = libc::pollfd { fd: s.as_raw_fd(), events: ev, revents: 0 };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, timeout.as_millis().clamp(1, i32::MAX as u128) as i32) };
    Ok(())
}
