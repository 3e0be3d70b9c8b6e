//! An NVMe/TCP host (initiator): ICReq, Connect, admin commands, I/O queues, digests.
//!
//! Written for load generation: a non-blocking socket, commands batched into one output buffer
//! and sent with one write per poll, responses parsed from a large receive buffer, per-command
//! data buffers reused (no allocation per I/O once warm). It follows the specification rather than
//! our target: in-capsule data only up to the controller's IOCCSZ, R2T-driven H2CData split at the
//! controller's MAXH2CDATA, HPDA/CPDA honoured, SUCCESS-flagged C2HData accepted.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::nvme::spec::{self, admin, cns, fctype, prop, sgl, Cqe, Sgl, Sqe, Status};
use crate::nvme::auth::{AuthSqe, CONNECT_AUTHREQ_ATR};
use crate::nvmf::auth::host::{HostAuthConfig, HostAuthError, HostTransaction};
use crate::nvmf::fabrics::{build_connect_sqe, ConnectData};
use crate::nvme::tls_psk::{ConfiguredPsk, PskHash, PskIdentity, PskKind};
use crate::reactor::tls::{TlsPsk, TlsStream, TlsSuite};
use crate::nvmf::tcp::pdu::{self, flags, ty, CommonHeader, DataHeader, Digests, IcReq, IcResp};

/// How to reach and identify ourselves to a subsystem.
/// Receive buffer: two of the largest PDUs accepted (a 4 MiB read in one C2HData PDU).
const RBUF: usize = (8 << 20) + 2048;

#[derive(Clone, Debug)]
pub struct HostOpts {
    pub addr: SocketAddr,
    pub subnqn: String,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    pub hdgst: bool,
    pub ddgst: bool,
    /// Keep-alive timeout asked in Connect (admin queue), ms; 0 = none.
    pub kato_ms: u32,
    /// Ask the controller to disable SQ flow control (lets it use the C2HData SUCCESS flag).
    pub disable_sqflow: bool,
    pub timeout: Duration,
    /// DH-HMAC-CHAP: used when a Connect response asks for authentication (every queue).
    pub dhchap: Option<HostAuthConfig>,
    /// Secure channel: TLS 1.3 with this PSK before ICReq (NVMe/TCP §3.6).
    pub tls: Option<HostTls>,
}

/// The TLS PSK a host offers and the identity it offers it under.
#[derive(Clone)]
pub struct HostTls {
    pub identity: String,
    pub key: Vec<u8>,
    pub hash: PskHash,
}

impl std::fmt::Debug for HostTls {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostTls({:?}, {:?})", self.identity, self.hash)
    }
}

impl HostTls {
    /// From a configured PSK (interchange string) for `hostnqn` → `subnqn`: the retained PSK, the
    /// identity of `version` (0: `NVMe0R0h host sub`, 1: with the PSK digest) and its TLS PSK.
    /// `hash` overrides the suite for `00` keys only when it fits the key's length.
    pub fn from_configured(psk: &ConfiguredPsk, hostnqn: &str, subnqn: &str, version: u8, hash: Option<PskHash>) -> std::result::Result<HostTls, String> {
        let own = psk.cipher_hash().ok_or("PSK of unusable length (32 or 48 bytes)")?;
        let hash = hash.unwrap_or(own);
        if hash != own {
            return Err(format!("the PSK is a {own:?} key; it cannot be used with a {hash:?} cipher suite"));
        }
        let retained = psk.retained(hostnqn).map_err(|e| e.to_string())?;
        let id = PskIdentity::build(version, PskKind::Retained, hash, &retained, hostnqn, subnqn).map_err(|e| e.to_string())?;
        let key = id.tls_psk(&retained).map_err(|e| e.to_string())?;
        Ok(HostTls { identity: id.encode(), key, hash })
    }
}

/// The connection: plain TCP, or TLS over it (the stream owns nothing of the socket's fd).
enum HostSock {
    Plain(TcpStream),
    Tls(TcpStream, Box<TlsStream>),
}

impl HostSock {
    /// Encrypted bytes wait for the socket.
    fn pending_out(&self) -> bool {
        matches!(self, HostSock::Tls(_, t) if t.pending())
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            HostSock::Plain(s) | HostSock::Tls(s, _) => s,
        }
    }
}

impl Read for HostSock {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            HostSock::Plain(s) => s.read(b),
            HostSock::Tls(_, t) => t.read(b),
        }
    }
}

impl Write for HostSock {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            HostSock::Plain(s) => s.write(b),
            HostSock::Tls(_, t) => t.write(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl HostOpts {
    pub fn new(addr: SocketAddr, subnqn: &str) -> HostOpts {
        let id = uuid::Uuid::new_v4();
        HostOpts {
            addr,
            subnqn: subnqn.to_string(),
            hostnqn: format!("nqn.2014-08.org.nvmexpress:uuid:{id}"),
            hostid: *id.as_bytes(),
            hdgst: false,
            ddgst: false,
            kato_ms: 0,
            disable_sqflow: true,
            timeout: Duration::from_secs(10),
            dhchap: None,
            tls: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("command failed: {0}")]
    Status(Status),
    #[error("the controller terminated the connection (FES {0:#x}, FEI {1})")]
    Terminated(u16, u32),
    #[error("timed out")]
    Timeout,
    #[error("the controller requires DH-HMAC-CHAP authentication and no secret was given")]
    AuthRequired,
    #[error("DH-HMAC-CHAP: {0}")]
    Auth(#[from] HostAuthError),
}

pub type Result<T> = std::result::Result<T, HostError>;

fn proto(s: impl Into<String>) -> HostError {
    HostError::Protocol(s.into())
}

#[derive(Default)]
struct Req {
    active: bool,
    /// Write data kept for R2T, or the read destination.
    data: Vec<u8>,
    /// Bytes the command moves (either direction).
    len: usize,
    write: bool,
    /// Bytes of read data received.
    got: usize,
}

/// One queue pair (admin when qid is 0).
pub struct Queue {
    sock: HostSock,
    pub qid: u16,
    pub cntlid: u16,
    dg: Digests,
    cpda: u8,
    pub maxh2cdata: u32,
    /// In-capsule data we may send (IOCCSZ - 64, or 8 KiB on the admin queue).
    pub icd: u32,
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    reqs: Vec<Req>,
    timeout: Duration,
    /// Asynchronous event completions (an AER's CQE) seen while waiting for something else.
    pub events: Vec<Cqe>,
    /// CIDs of AERs the caller parked (their completions go to `events`).
    pub aer_cids: Vec<u16>,
}

impl Queue {
    /// Open a TCP connection, exchange ICReq/ICResp and Connect queue `qid` with `sq_entries`
    /// entries (cntlid 0xffff for the admin queue).
    pub fn connect(o: &HostOpts, qid: u16, sq_entries: u16, cntlid: u16) -> Result<Queue> {
        let (mut q, dw0) = Queue::connect_raw(o, qid, sq_entries, cntlid)?;
        if dw0 & CONNECT_AUTHREQ_ATR != 0 {
            let cfg = o.dhchap.as_ref().ok_or(HostError::AuthRequired)?;
            q.authenticate(cfg, &o.hostnqn, &o.subnqn)?;
        }
        Ok(q)
    }

    /// [`Queue::connect`] without acting on the Connect response's AUTHREQ bits (returned as
    /// dword 0): for tests that drive authentication step by step.
    pub fn connect_raw(o: &HostOpts, qid: u16, sq_entries: u16, cntlid: u16) -> Result<(Queue, u32)> {
        let sock = TcpStream::connect_timeout(&o.addr, o.timeout)?;
        sock.set_nodelay(true)?;
        sock.set_read_timeout(Some(o.timeout))?;
        sock.set_write_timeout(Some(o.timeout))?;
        let sock = match &o.tls {
            None => HostSock::Plain(sock),
            Some(t) => {
                // Blocking handshake (the socket has timeouts) before anything NVMe/TCP.
                let psk = TlsPsk { key: t.key.clone(), suite: match t.hash { PskHash::Sha256 => TlsSuite::Aes128GcmSha256, PskHash::Sha384 => TlsSuite::Aes256GcmSha384 } };
                let mut s = TlsStream::client(sock.as_raw_fd(), &t.identity, psk).map_err(|e| proto(e.to_string()))?;
                while !s.handshake().map_err(|e| HostError::Tls(e.to_string()))? {}
                HostSock::Tls(sock, Box::new(s))
            }
        };
        let mut q = Queue {
            sock,
            qid,
            cntlid,
            dg: Digests::default(),
            cpda: 0,
            maxh2cdata: 4096,
            icd: if qid == 0 { 8192 } else { 0 },
            rbuf: vec![0; RBUF],
            rstart: 0,
            rend: 0,
            wbuf: Vec::with_capacity(256 << 10),
            wpos: 0,
            reqs: (0..sq_entries.max(2)).map(|_| Req::default()).collect(),
            timeout: o.timeout,
            events: Vec::new(),
            aer_cids: Vec::new(),
        };
        let mut ic = Vec::new();
        IcReq { pfv: 0, hpda: 0, digests: Digests { header: o.hdgst, data: o.ddgst }, maxr2t: 0 }.encode(&mut ic);
        q.sock.write_all(&ic)?;
        let mut resp = [0u8; 128];
        q.sock.read_exact(&mut resp)?;
        let ch = CommonHeader::parse(&resp).ok_or_else(|| proto("short ICResp"))?;
        if ch.pdu_type == ty::C2H_TERM_REQ {
            let t = pdu::TermReq::decode(&resp).map_err(|e| proto(e.to_string()))?;
            return Err(HostError::Terminated(t.fes, t.fei));
        }
        pdu::frame(ch, Digests::default(), 128).map_err(|e| proto(format!("ICResp: {e}")))?;
        let r = IcResp::decode(&resp).map_err(|e| proto(format!("ICResp: {e}")))?;
        q.dg = r.digests;
        if r.digests.header != o.hdgst || r.digests.data != o.ddgst {
            // The controller may refuse a digest; we go with what it chose.
            tracing::debug!("controller chose digests {:?}", r.digests);
        }
        q.cpda = r.cpda;
        q.maxh2cdata = r.maxh2cdata;
        q.sock.tcp().set_nonblocking(true)?;
        let sqe = build_connect_sqe(0, qid, sq_entries - 1, if qid == 0 { o.kato_ms } else { 0 }, o.disable_sqflow);
        let data = ConnectData { hostid: o.hostid, cntlid, subnqn: o.subnqn.clone(), hostnqn: o.hostnqn.clone() }.encode();
        // Connect data always travels in the capsule (NVMe/TCP 3.3.2).
        let saved = q.icd;
        q.icd = 1024.max(saved);
        let (cqe, _) = q.sync(sqe, Some(&data), 0)?;
        q.icd = saved;
        if !cqe.status.is_ok() {
            return Err(HostError::Status(cqe.status));
        }
        q.cntlid = cqe.dw0 as u16;
        Ok((q, cqe.dw0))
    }

    /// Run one DH-HMAC-CHAP transaction on this queue (after Connect, or again to
    /// re-authenticate). A controller that fails to prove itself (bidirectional) gets
    /// AUTH_Failure2 and the error.
    pub fn authenticate(&mut self, cfg: &HostAuthConfig, hostnqn: &str, subnqn: &str) -> Result<()> {
        static TID: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(1);
        let t_id = TID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut tr = HostTransaction::new(cfg, hostnqn, subnqn, t_id);
        self.auth_send(&tr.negotiate())?;
        let ch = self.auth_recv()?;
        let reply = tr.reply(&ch)?;
        self.auth_send(&reply)?;
        let s1 = self.auth_recv()?;
        match tr.success1(&s1) {
            Ok(Some(s2)) => self.auth_send(&s2),
            Ok(None) => Ok(()),
            Err(e) => {
                if e == HostAuthError::CtrlMismatch {
                    let _ = self.auth_send(&tr.failure2());
                }
                Err(e.into())
            }
        }
    }

    fn auth_sqe(fct: u8, len: usize) -> Sqe {
        let mut s = Sqe::default();
        s.set_opcode(admin::FABRICS);
        s.0[4] = fct;
        AuthSqe::dhchap(len as u32).encode(&mut s.0);
        s
    }

    /// AUTH_Send with `data` as the transfer.
    pub fn auth_send(&mut self, data: &[u8]) -> Result<()> {
        self.cmd(Self::auth_sqe(fctype::AUTH_SEND, data.len()), Some(data), 0).map(drop)
    }

    /// AUTH_Receive of up to the largest message (a Challenge with an 8192-bit DH value).
    pub fn auth_recv(&mut self) -> Result<Vec<u8>> {
        const AL: usize = 16 + 64 + 1024;
        Ok(self.cmd(Self::auth_sqe(fctype::AUTH_RECV, AL), None, AL)?.1)
    }

    pub fn depth(&self) -> usize {
        self.reqs.len()
    }
    pub fn digests(&self) -> Digests {
        self.dg
    }
    pub fn raw_fd(&self) -> i32 {
        self.sock.tcp().as_raw_fd()
    }

    /// Queue command `sqe` with cid `cid`; `out` is data for the controller, `in_len` bytes are
    /// expected back. Nothing is sent until [`Queue::poll`] or [`Queue::flush`].
    pub fn submit(&mut self, cid: u16, mut sqe: Sqe, out: Option<&[u8]>, in_len: usize) -> Result<()> {
        let r = self.reqs.get_mut(cid as usize).ok_or_else(|| proto(format!("cid {cid} beyond queue depth")))?;
        if r.active {
            return Err(proto(format!("cid {cid} is busy")));
        }
        r.active = true;
        r.got = 0;
        sqe.set_cid(cid);
        match out {
            Some(d) if !d.is_empty() => {
                r.write = true;
                r.len = d.len();
                if d.len() <= self.icd as usize {
                    sqe.set_sgl(Sgl { address: 0, length: d.len() as u32, id: sgl::DATA_BLOCK_OFFSET });
                    pdu::encode_capsule_cmd(&mut self.wbuf, self.dg, self.cpda, &sqe.0, d);
                } else {
                    r.data.clear();
                    r.data.extend_from_slice(d);
                    sqe.set_sgl(Sgl { address: 0, length: d.len() as u32, id: sgl::TRANSPORT_DATA_BLOCK });
                    pdu::encode_capsule_cmd(&mut self.wbuf, self.dg, self.cpda, &sqe.0, &[]);
                }
            }
            _ => {
                r.write = false;
                r.len = in_len;
                if r.data.len() < in_len {
                    r.data.resize(in_len, 0);
                }
                sqe.set_sgl(Sgl { address: 0, length: in_len as u32, id: sgl::TRANSPORT_DATA_BLOCK });
                pdu::encode_capsule_cmd(&mut self.wbuf, self.dg, self.cpda, &sqe.0, &[]);
            }
        }
        Ok(())
    }

    /// Write out what is queued, as far as the socket takes it.
    pub fn flush(&mut self) -> Result<()> {
        while self.wpos < self.wbuf.len() {
            match self.sock.write(&self.wbuf[self.wpos..]) {
                Ok(0) => return Err(proto("connection closed")),
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
        self.wbuf.clear();
        self.wpos = 0;
        if let HostSock::Tls(_, t) = &mut self.sock {
            t.push()?;
        }
        Ok(())
    }

    fn wait_fd(&self, timeout: Duration) -> Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.sock.tcp().as_raw_fd(),
            events: libc::POLLIN | if self.wpos < self.wbuf.len() || self.sock.pending_out() { libc::POLLOUT } else { 0 },
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(e.into());
        }
        Ok(n > 0)
    }

    /// Send what is queued, then wait up to `timeout` for completions; `done(cid, cqe, read
    /// data)` is called for each. Returns how many completed.
    pub fn poll(&mut self, timeout: Duration, done: &mut dyn FnMut(u16, Cqe, &[u8])) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        let mut n = 0;
        loop {
            self.flush()?;
            n += self.parse(done)?;
            if n > 0 {
                self.flush()?;
                return Ok(n);
            }
            if self.rend == self.rbuf.len() {
                self.rbuf.copy_within(self.rstart..self.rend, 0);
                self.rend -= self.rstart;
                self.rstart = 0;
            }
            match self.sock.read(&mut self.rbuf[self.rend..]) {
                Ok(0) => return Err(proto("connection closed by the controller")),
                Ok(k) => {
                    self.rend += k;
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(0);
            }
            self.wait_fd(deadline - now)?;
        }
    }

    /// Handle every complete PDU buffered.
    fn parse(&mut self, done: &mut dyn FnMut(u16, Cqe, &[u8])) -> Result<usize> {
        let mut n = 0;
        // A controller may return a command's whole read in one C2HData PDU (Linux nvmet does).
        let max = RBUF / 2;
        while self.rend - self.rstart >= pdu::CH_LEN {
            let at = self.rstart;
            let ch = CommonHeader::parse(&self.rbuf[at..self.rend]).unwrap();
            let l = pdu::frame(ch, self.dg, max).map_err(|e| proto(format!("bad PDU from controller: {e}")))?;
            if self.rend - at < l.total {
                break;
            }
            self.rstart += l.total;
            let p = &self.rbuf[at..at + l.total];
            l.check_digests(p).map_err(|e| proto(format!("{e}")))?;
            match ch.pdu_type {
                ty::CAPSULE_RESP => {
                    let cqe = Cqe::decode(&p[8..24]).ok_or_else(|| proto("short CQE"))?;
                    if let Some(i) = self.aer_cids.iter().position(|&c| c == cqe.cid) {
                        self.aer_cids.remove(i);
                        self.events.push(cqe);
                        // Counts as progress so a waiter on `events` wakes up.
                        n += 1;
                        continue;
                    }
                    let r = self.reqs.get_mut(cqe.cid as usize).filter(|r| r.active).ok_or_else(|| proto(format!("response for idle cid {}", cqe.cid)))?;
                    r.active = false;
                    let data: &[u8] = if r.write { &[] } else { &r.data[..r.got.min(r.len)] };
                    done(cqe.cid, cqe, data);
                    n += 1;
                }
                ty::C2H_DATA => {
                    let h = DataHeader::decode(p).map_err(|e| proto(e.to_string()))?;
                    let d = l.data(p);
                    let r = self.reqs.get_mut(h.cccid as usize).filter(|r| r.active && !r.write).ok_or_else(|| proto(format!("C2HData for idle cid {}", h.cccid)))?;
                    let (o, len) = (h.offset as usize, d.len());
                    if o + len > r.len || len != h.length as usize {
                        return Err(proto("C2HData outside the transfer"));
                    }
                    if ch.flags & flags::SUCCESS != 0 && ch.flags & flags::LAST_PDU != 0 && o == 0 && len == r.len {
                        // The whole read in one PDU that also completes it: hand out the bytes
                        // where they lie in the receive buffer, no copy.
                        r.active = false;
                        done(h.cccid, Cqe { cid: h.cccid, ..Default::default() }, d);
                        n += 1;
                        continue;
                    }
                    r.data[o..o + len].copy_from_slice(d);
                    r.got = r.got.max(o + len);
                    if ch.flags & flags::SUCCESS != 0 {
                        if ch.flags & flags::LAST_PDU == 0 {
                            return Err(proto("SUCCESS without LAST_PDU"));
                        }
                        r.active = false;
                        let cqe = Cqe { cid: h.cccid, ..Default::default() };
                        done(h.cccid, cqe, &r.data[..r.got.min(r.len)]);
                        n += 1;
                    }
                }
                ty::R2T => {
                    let h = DataHeader::decode(p).map_err(|e| proto(e.to_string()))?;
                    let r = self.reqs.get(h.cccid as usize).filter(|r| r.active && r.write).ok_or_else(|| proto(format!("R2T for idle cid {}", h.cccid)))?;
                    let (o, len) = (h.offset as usize, h.length as usize);
                    if o + len > r.len || len == 0 {
                        return Err(proto("R2T outside the transfer"));
                    }
                    let mut off = o;
                    while off < o + len {
                        let chunk = (o + len - off).min(self.maxh2cdata as usize);
                        let last = off + chunk == o + len;
                        let dh = DataHeader { cccid: h.cccid, ttag: h.ttag, offset: off as u32, length: chunk as u32 };
                        pdu::encode_data_header(&mut self.wbuf, ty::H2C_DATA, self.dg, self.cpda, dh, if last { flags::LAST_PDU } else { 0 });
                        let d = &r.data[off..off + chunk];
                        self.wbuf.extend_from_slice(d);
                        pdu::put_data_digest(&mut self.wbuf, self.dg, d);
                        off += chunk;
                    }
                }
                ty::C2H_TERM_REQ => {
                    let t = pdu::TermReq::decode(p).map_err(|e| proto(e.to_string()))?;
                    return Err(HostError::Terminated(t.fes, t.fei));
                }
                other => return Err(proto(format!("unexpected PDU type {other:#x}"))),
            }
        }
        if self.rstart == self.rend {
            self.rstart = 0;
            self.rend = 0;
        }
        Ok(n)
    }

    /// Run one command to completion (management use: Connect, Identify, features).
    pub fn sync(&mut self, sqe: Sqe, out: Option<&[u8]>, in_len: usize) -> Result<(Cqe, Vec<u8>)> {
        let cid = (0..self.reqs.len() as u16).find(|&c| !self.reqs[c as usize].active && !self.aer_cids.contains(&c)).ok_or_else(|| proto("no free command id"))?;
        self.submit(cid, sqe, out, in_len)?;
        let deadline = Instant::now() + self.timeout;
        let mut result = None;
        while result.is_none() {
            let now = Instant::now();
            if now >= deadline {
                return Err(HostError::Timeout);
            }
            self.poll(deadline - now, &mut |c, cqe, d| {
                if c == cid {
                    result = Some((cqe, d.to_vec()));
                }
            })?;
        }
        Ok(result.unwrap())
    }

    /// Like [`Queue::sync`] but a failed status is an error.
    pub fn cmd(&mut self, sqe: Sqe, out: Option<&[u8]>, in_len: usize) -> Result<(Cqe, Vec<u8>)> {
        let (cqe, d) = self.sync(sqe, out, in_len)?;
        if !cqe.status.is_ok() {
            return Err(HostError::Status(cqe.status));
        }
        Ok((cqe, d))
    }

    pub fn identify(&mut self, cns_: u8, nsid: u32) -> Result<Vec<u8>> {
        let mut s = Sqe::default();
        s.set_opcode(admin::IDENTIFY).set_nsid(nsid).set_cdw(10, cns_ as u32);
        Ok(self.cmd(s, None, 4096)?.1)
    }

    pub fn get_log_page(&mut self, lid: u8, len: usize, offset: u64) -> Result<Vec<u8>> {
        let numd = (len / 4 - 1) as u32;
        let mut s = Sqe::default();
        s.set_opcode(admin::GET_LOG_PAGE).set_nsid(0xffff_ffff).set_cdw(10, lid as u32 | (numd & 0xffff) << 16).set_cdw(11, numd >> 16).set_cdw(12, offset as u32).set_cdw(13, (offset >> 32) as u32);
        Ok(self.cmd(s, None, len)?.1)
    }

    pub fn set_features(&mut self, fid: u8, dw11: u32) -> Result<Cqe> {
        let mut s = Sqe::default();
        s.set_opcode(admin::SET_FEATURES).set_cdw(10, fid as u32).set_cdw(11, dw11);
        Ok(self.cmd(s, None, 0)?.0)
    }

    pub fn get_features(&mut self, fid: u8, dw11: u32, in_len: usize) -> Result<(Cqe, Vec<u8>)> {
        let mut s = Sqe::default();
        s.set_opcode(admin::GET_FEATURES).set_cdw(10, fid as u32).set_cdw(11, dw11);
        self.cmd(s, None, in_len)
    }

    pub fn keep_alive(&mut self) -> Result<()> {
        let mut s = Sqe::default();
        s.set_opcode(admin::KEEP_ALIVE);
        self.cmd(s, None, 0).map(|_| ())
    }

    /// Park an Asynchronous Event Request; its completion will appear in `events`.
    pub fn submit_aer(&mut self) -> Result<u16> {
        let cid = (0..self.reqs.len() as u16).rev().find(|&c| !self.reqs[c as usize].active && !self.aer_cids.contains(&c)).ok_or_else(|| proto("no free command id"))?;
        let mut s = Sqe::default();
        s.set_opcode(admin::ASYNC_EVENT_REQUEST).set_cid(cid);
        s.set_sgl(Sgl { address: 0, length: 0, id: sgl::TRANSPORT_DATA_BLOCK });
        pdu::encode_capsule_cmd(&mut self.wbuf, self.dg, self.cpda, &s.0, &[]);
        self.aer_cids.push(cid);
        self.flush()?;
        Ok(cid)
    }

    /// Wait until an asynchronous event arrives (or timeout).
    pub fn wait_event(&mut self, timeout: Duration) -> Result<Option<Cqe>> {
        let deadline = Instant::now() + timeout;
        while self.events.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            self.poll(deadline - now, &mut |_, _, _| {})?;
        }
        Ok(Some(self.events.remove(0)))
    }

    pub fn property_get(&mut self, ofst: u32, eight: bool) -> Result<u64> {
        let mut s = Sqe::default();
        s.set_opcode(admin::FABRICS);
        s.0[4] = fctype::PROPERTY_GET;
        s.0[40] = eight as u8;
        s.set_cdw(11, ofst);
        let (c, _) = self.cmd(s, None, 0)?;
        Ok(c.dw0 as u64 | (c.dw1 as u64) << 32)
    }

    pub fn property_set(&mut self, ofst: u32, value: u32) -> Result<()> {
        let mut s = Sqe::default();
        s.set_opcode(admin::FABRICS);
        s.0[4] = fctype::PROPERTY_SET;
        s.set_cdw(11, ofst);
        s.0[48..52].copy_from_slice(&value.to_le_bytes());
        self.cmd(s, None, 0).map(|_| ())
    }

    /// Send raw bytes (tests use this to inject malformed PDUs).
    pub fn send_raw(&mut self, b: &[u8]) -> Result<()> {
        self.wbuf.extend_from_slice(b);
        self.flush()
    }
}

/// Identify Controller fields a host needs.
#[derive(Clone, Debug)]
pub struct CtrlrIdentity {
    pub serial: String,
    pub model: String,
    pub firmware: String,
    pub subnqn: String,
    pub cntlid: u16,
    pub nn: u32,
    pub mdts: u8,
    pub ioccsz: u32,
    pub cntrltype: u8,
    pub raw: Vec<u8>,
}

impl CtrlrIdentity {
    pub fn parse(b: &[u8]) -> Option<CtrlrIdentity> {
        if b.len() < 4096 {
            return None;
        }
        Some(CtrlrIdentity {
            serial: spec::get_str(&b[4..24]),
            model: spec::get_str(&b[24..64]),
            firmware: spec::get_str(&b[64..72]),
            cntlid: u16::from_le_bytes([b[78], b[79]]),
            mdts: b[77],
            cntrltype: b[111],
            nn: u32::from_le_bytes(b[516..520].try_into().ok()?),
            subnqn: spec::get_str(&b[768..1024]),
            ioccsz: u32::from_le_bytes(b[1792..1796].try_into().ok()?),
            raw: b.to_vec(),
        })
    }
}

/// Identify Namespace fields a host needs.
#[derive(Clone, Debug)]
pub struct NsIdentity {
    pub nsze: u64,
    pub block_size: u32,
    pub nguid: [u8; 16],
    pub eui64: [u8; 8],
}

impl NsIdentity {
    pub fn parse(b: &[u8]) -> Option<NsIdentity> {
        if b.len() < 4096 {
            return None;
        }
        let flbas = (b[26] & 0xf) as usize;
        let lbads = b[128 + flbas * 4 + 2];
        Some(NsIdentity {
            nsze: u64::from_le_bytes(b[0..8].try_into().ok()?),
            block_size: 1u32.checked_shl(lbads as u32).unwrap_or(0),
            nguid: b[104..120].try_into().ok()?,
            eui64: b[120..128].try_into().ok()?,
        })
    }
}

/// A connected controller: the admin queue, enabled, identified.
pub struct Controller {
    pub opts: HostOpts,
    pub admin: Queue,
    pub id: CtrlrIdentity,
}

impl Controller {
    /// Connect the admin queue, enable the controller (CC.EN, wait CSTS.RDY), identify it.
    pub fn connect(opts: &HostOpts) -> Result<Controller> {
        let mut admin = Queue::connect(opts, 0, 32, 0xffff)?;
        let cap = admin.property_get(prop::CAP, true)?;
        let _vs = admin.property_get(prop::VS, false)?;
        // CC: EN, IOSQES 6 (64 B), IOCQES 4 (16 B).
        admin.property_set(prop::CC, 1 | (6 << 16) | (4 << 20))?;
        let to = Duration::from_millis(500 * ((cap >> 24) & 0xff).max(1));
        let deadline = Instant::now() + to;
        loop {
            let csts = admin.property_get(prop::CSTS, false)?;
            if csts & 1 == 1 {
                break;
            }
            if Instant::now() > deadline {
                return Err(proto("controller did not become ready"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let id = CtrlrIdentity::parse(&admin.identify(cns::CONTROLLER, 0)?).ok_or_else(|| proto("short identify"))?;
        Ok(Controller { opts: opts.clone(), admin, id })
    }

    /// Maximum queue entries the controller allows (CAP.MQES + 1).
    pub fn max_entries(&mut self) -> Result<u32> {
        Ok((self.admin.property_get(prop::CAP, true)? & 0xffff) as u32 + 1)
    }

    /// Active namespace ids.
    pub fn namespaces(&mut self) -> Result<Vec<u32>> {
        let b = self.admin.identify(cns::ACTIVE_NS_LIST, 0)?;
        Ok(b.chunks(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).take_while(|&x| x != 0).collect())
    }

    pub fn namespace(&mut self, nsid: u32) -> Result<NsIdentity> {
        NsIdentity::parse(&self.admin.identify(cns::NAMESPACE, nsid)?).ok_or_else(|| proto("short identify"))
    }

    /// Ask for `n` I/O queues; returns how many the controller granted.
    pub fn set_num_queues(&mut self, n: u16) -> Result<u16> {
        let c = self.admin.set_features(spec::fid::NUMBER_OF_QUEUES, (n as u32 - 1) | (n as u32 - 1) << 16)?;
        Ok(((c.dw0 & 0xffff) as u16).min((c.dw0 >> 16) as u16) + 1)
    }

    /// Connect I/O queue `qid`.
    pub fn io_queue(&self, qid: u16, entries: u16) -> Result<Queue> {
        let mut q = Queue::connect(&self.opts, qid, entries, self.id.cntlid)?;
        q.icd = (self.id.ioccsz * 16).saturating_sub(64);
        Ok(q)
    }

    /// Orderly shutdown: CC.SHN normal, then the connection closes.
    pub fn shutdown(mut self) -> Result<()> {
        self.admin.property_set(prop::CC, 1 | (6 << 16) | (4 << 20) | (1 << 14))?;
        Ok(())
    }
}

/// Build an NVM read/write SQE.
pub fn rw_sqe(write: bool, nsid: u32, lba: u64, blocks: u32) -> Sqe {
    let mut s = Sqe::default();
    s.set_opcode(if write { spec::io::WRITE } else { spec::io::READ }).set_nsid(nsid).set_cdw(10, lba as u32).set_cdw(11, (lba >> 32) as u32).set_cdw(12, blocks - 1);
    s
}
