//! One NVMe/TCP connection: PDU framing and bytes only; the queue pair it carries
//! ([`QPair`]) executes the commands. It lives on one reactor for its whole life.
//!
//! Receive: bytes land in a large buffer and every complete PDU in it is handled in one pass (many
//! commands per `read`). H2CData payloads go straight into the command's pooled buffer once
//! their header is in: only what one `read` already pulled in with the header is copied, the rest
//! is read in place. Send: responses and read data are appended to one output queue and written
//! with one `writev` per loop iteration in `on_flush`; read data goes out from its own buffer. A
//! malformed PDU gets a C2HTermReq and closes this connection only.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use crate::reactor::outq::OutQueue;
use super::pdu::{self, flags, ty, CommonHeader, DataHeader, Digests, IcReq, IcResp, Layout, PduError};
use crate::nvme::spec::{Cqe, Sqe};
use crate::nvmf::qpair::QPair;
use crate::nvmf::transport::{CmdData, QpError, Transport};
use crate::nvmf::{ListenAddr, Target};
use crate::reactor::{Core, Handler, HandlerRef, IoBuf, IoEvent, RxBuf};

const RBUF_MIN: usize = 256 << 10;
const IDLE_SHRINK: Duration = Duration::from_secs(2);
/// Unsent output above which the connection stops reading commands (its host is not reading
/// what we send), and below which it starts again.
const TX_HIGH_WATER: usize = 2 << 20;
const TX_LOW_WATER: usize = 512 << 10;
/// How long a closing connection may take to drain its termination request.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// An H2CData payload with at least this much still to come is read in place.
const DIRECT_MIN: usize = 8192;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    AwaitIcReq,
    Ready,
}

/// One counted NVMe/TCP connection (`Target::conns`); dropping it uncounts it.
pub struct Counted(pub(crate) Arc<Target>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.conns.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// The send half: what the queue pair hands over, as PDUs in the output queue.
struct TcpTx {
    out: OutQueue,
    me: HandlerRef,
    dg: Digests,
    hpda: u8,
    c2h_success: bool,
    closing_since: Option<Instant>,
}

impl TcpTx {
    fn closing(&self) -> bool {
        self.closing_since.is_some()
    }
    fn begin_close(&mut self, core: &mut Core) {
        if self.closing_since.is_none() {
            self.closing_since = Some(core.now);
        }
        core.want_flush(self.me);
    }
}

impl Transport for TcpTx {
    fn request_data(&mut self, core: &mut Core, cid: u16, ttag: u16, len: u32) {
        // One R2T for the whole transfer; the host splits it into H2CData PDUs of at most
        // MAXH2CDATA.
        pdu::encode_r2t(&mut self.out.bytes, self.dg, DataHeader { cccid: cid, ttag, offset: 0, length: len });
        core.want_flush(self.me);
    }
    fn send_data(&mut self, core: &mut Core, cid: u16, data: &[u8]) {
        let h = DataHeader { cccid: cid, ttag: 0, offset: 0, length: data.len() as u32 };
        pdu::encode_data_header(&mut self.out.bytes, ty::C2H_DATA, self.dg, self.hpda, h, flags::LAST_PDU);
        self.out.bytes.extend_from_slice(data);
        pdu::put_data_digest(&mut self.out.bytes, self.dg, data);
        core.want_flush(self.me);
    }
    fn send_data_buf(&mut self, core: &mut Core, cid: u16, data: IoBuf, completes: bool) {
        let fl = flags::LAST_PDU | if completes { flags::SUCCESS } else { 0 };
        let h = DataHeader { cccid: cid, ttag: 0, offset: 0, length: data.len() as u32 };
        pdu::encode_data_header(&mut self.out.bytes, ty::C2H_DATA, self.dg, self.hpda, h, fl);
        let digest = self.dg.data && !data.is_empty();
        let crc = if digest { crc32c::crc32c(&data) } else { 0 };
        self.out.push_buf(data);
        if digest {
            self.out.bytes.extend_from_slice(&crc.to_le_bytes());
        }
        core.want_flush(self.me);
    }
    fn send_cqe(&mut self, core: &mut Core, cqe: &Cqe) {
        pdu::encode_capsule_resp(&mut self.out.bytes, self.dg, &cqe.encode());
        core.want_flush(self.me);
    }
    fn data_completes(&self) -> bool {
        self.c2h_success
    }
    fn queued(&self) -> u64 {
        self.out.end()
    }
    fn taken(&self) -> u64 {
        self.out.written()
    }
    fn close(&mut self, core: &mut Core) {
        self.begin_close(core);
    }
}

/// An H2CData payload being read in place: `at..end` of the command's buffer still to come,
/// then the data digest.
struct Direct {
    ttag: u16,
    len: u32,
    at: usize,
    end: usize,
    crc: Option<u32>,
    tail: [u8; pdu::DIGEST_LEN],
    tail_got: usize,
}

fn qp_err(e: QpError) -> PduError {
    match e {
        QpError::SqOverflow => PduError::Sequence,
        QpError::BadTag => PduError::BadField(10),
        QpError::OutOfRange => PduError::DataOutOfRange,
    }
}

pub struct Conn {
    _counted: Counted,
    sock: TcpStream,
    tx: TcpTx,
    q: QPair,
    phase: Phase,
    max_plen: usize,
    /// Receive buffer (two of the largest PDUs), mapped only while the connection is busy.
    rx: RxBuf,
    direct: Option<Direct>,
    last_rx: Instant,
    /// Stopped reading: too much output is waiting for the host to read it.
    read_blocked: bool,
}

impl Conn {
    /// Constructor for `Reactor::add_handler`: registers the socket for this handler.
    pub fn start(
        core: &mut Core,
        me: HandlerRef,
        counted: Counted,
        t: Arc<Target>,
        listen: Arc<ListenAddr>,
        mut sock: TcpStream,
        peer: SocketAddr,
    ) -> Option<Box<dyn Handler>> {
        let opts = t.transport()?;
        if let Err(e) = core.registry().register(&mut sock, me.token(), mio::Interest::READABLE | mio::Interest::WRITABLE) {
            tracing::warn!("cannot register NVMe/TCP connection: {e}");
            return None;
        }
        let icd = opts.admin_icd().max(opts.in_capsule_data_size) as usize;
        let max_plen = (72 + icd).max(24 + opts.maxh2cdata() as usize) + 2 * pdu::DIGEST_LEN + 128;
        let rsize = RBUF_MIN.max(2 * max_plen);
        tracing::debug!(%peer, reactor = me.reactor, "NVMe/TCP connection");
        let c2h_success = opts.c2h_success;
        Some(Box::new(Conn {
            _counted: counted,
            sock,
            tx: TcpTx { out: OutQueue::default(), me, dg: Digests::default(), hpda: 0, c2h_success, closing_since: None },
            q: QPair::new(t, opts, me, listen, peer.to_string(), core.now),
            phase: Phase::AwaitIcReq,
            max_plen,
            rx: RxBuf::new(rsize),
            direct: None,
            last_rx: core.now,
            read_blocked: false,
        }))
    }

    fn begin_close(&mut self, core: &mut Core) {
        self.q.set_closing();
        self.tx.begin_close(core);
    }

    /// The host is gone (EOF, reset, termination request): close now.
    fn gone(&mut self, core: &mut Core) {
        self.q.set_closing();
        if self.tx.closing_since.is_none() {
            self.tx.closing_since = Some(core.now);
        }
        core.close(self.tx.me);
    }

    /// A fatal transport error: C2HTermReq with the offending header, then close.
    fn fatal(&mut self, core: &mut Core, e: PduError, hdr: &[u8]) {
        tracing::warn!(peer = %self.q.peer(), "NVMe/TCP: {e}; terminating the connection");
        let (fes, fei) = e.fes_fei();
        pdu::encode_term_req(&mut self.tx.out.bytes, ty::C2H_TERM_REQ, fes, fei, hdr);
        self.begin_close(core);
    }

    fn read_socket(&mut self, core: &mut Core) {
        loop {
            if self.tx.closing() {
                return;
            }
            if self.direct.is_some() {
                match self.read_direct(core) {
                    Some(true) => continue,
                    Some(false) => return,
                    None => return,
                }
            }
            if self.tx.out.backlog() > TX_HIGH_WATER {
                self.read_blocked = true;
                return;
            }
            let spare = self.rx.spare();
            if spare.is_empty() {
                // Cannot happen (the buffer holds two of the largest PDUs we accept) unless the
                // mapping failed: end this connection, not the target.
                self.fatal(core, PduError::BadPlen(0), &[]);
                return;
            }
            let space = spare.len();
            match self.sock.read(spare) {
                Ok(0) => return self.gone(core),
                Ok(n) => {
                    self.rx.filled(n);
                    self.last_rx = core.now;
                    self.process(core);
                    // A short read drained the socket: skip the EAGAIN read (new data raises a
                    // new edge-triggered event).
                    if (n < space && self.direct.is_none()) || self.read_blocked {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return self.gone(core),
            }
        }
    }

    /// Read the rest of an in-place payload (then its digest) from the socket. Some(true): done,
    /// go on with the next PDU; Some(false): the socket is drained; None: the connection ended.
    fn read_direct(&mut self, core: &mut Core) -> Option<bool> {
        loop {
            let d = self.direct.as_mut()?;
            let r = if d.at < d.end {
                let Some(b) = self.q.data_buf(d.ttag) else {
                    self.fatal(core, PduError::Sequence, &[]);
                    return None;
                };
                let dst = &mut b[d.at..d.end];
                match self.sock.read(dst) {
                    Ok(n) if n > 0 => {
                        if let Some(c) = d.crc.as_mut() {
                            *c = crc32c::crc32c_append(*c, &dst[..n]);
                        }
                        d.at += n;
                        Ok(n)
                    }
                    r => r,
                }
            } else {
                let want = if d.crc.is_some() { pdu::DIGEST_LEN } else { 0 };
                if d.tail_got < want {
                    match self.sock.read(&mut d.tail[d.tail_got..want]) {
                        Ok(n) if n > 0 => {
                            d.tail_got += n;
                            Ok(n)
                        }
                        r => r,
                    }
                } else {
                    Ok(1)
                }
            };
            match r {
                Ok(0) => {
                    self.gone(core);
                    return None;
                }
                Ok(_) => {
                    self.last_rx = core.now;
                    if self.direct_complete(core) {
                        return if self.tx.closing() { None } else { Some(true) };
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Some(false),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.gone(core);
                    return None;
                }
            }
        }
    }

    /// If the in-place payload and its digest are all in, check the digest and hand the data to
    /// the queue pair. True if the transfer is over (done or failed).
    fn direct_complete(&mut self, core: &mut Core) -> bool {
        let Some(d) = self.direct.as_ref() else { return true };
        let want = if d.crc.is_some() { pdu::DIGEST_LEN } else { 0 };
        if d.at < d.end || d.tail_got < want {
            return false;
        }
        let d = self.direct.take().unwrap();
        if let Some(c) = d.crc {
            if u32::from_le_bytes(d.tail) != c {
                self.fatal(core, PduError::DataDigest, &[]);
                return true;
            }
        }
        self.q.data_done(core, &mut self.tx, d.ttag, d.len);
        true
    }

    /// Handle every complete PDU in the receive buffer; start an in-place receive for an H2CData
    /// PDU whose header is in but whose payload mostly is not.
    fn process(&mut self, core: &mut Core) {
        let mut rx = std::mem::take(&mut self.rx);
        while !self.tx.closing() && self.direct.is_none() && rx.len() >= pdu::CH_LEN {
            if self.tx.out.backlog() > TX_HIGH_WATER {
                // The rest waits in the buffer (and the socket) until the host reads.
                self.read_blocked = true;
                break;
            }
            let buf = rx.data();
            let Some(ch) = CommonHeader::parse(buf) else { break };
            let (dg, max) = match self.phase {
                Phase::AwaitIcReq => (Digests::default(), 128),
                _ => (self.tx.dg, self.max_plen),
            };
            let l = match pdu::frame(ch, dg, max) {
                Ok(l) => l,
                Err(e) => {
                    self.fatal(core, e, &buf[..buf.len().min(pdu::MAX_HLEN)]);
                    break;
                }
            };
            let have = buf.len();
            if have < l.total {
                let in_place = self.phase == Phase::Ready
                    && l.ch.pdu_type == ty::H2C_DATA
                    && have >= l.data_off
                    && l.total - have >= DIRECT_MIN;
                if in_place {
                    if let Err(e) = self.begin_direct(&l, buf) {
                        self.fatal(core, e, &buf[..l.hlen]);
                        break;
                    }
                    rx.consume(have);
                    self.direct_complete(core);
                }
                break;
            }
            let p = &buf[..l.total];
            if let Err(e) = l.check_digests(p) {
                self.fatal(core, e, &p[..l.hlen]);
                break;
            }
            let r = self.handle(core, &l, p);
            if let Err(e) = r {
                self.fatal(core, e, &p[..l.hlen]);
                break;
            }
            rx.consume(l.total);
        }
        self.rx = rx;
        self.q.unpark(core, &mut self.tx);
    }

    fn handle(&mut self, core: &mut Core, l: &Layout, p: &[u8]) -> Result<(), PduError> {
        match (self.phase, l.ch.pdu_type) {
            (Phase::AwaitIcReq, ty::ICREQ) => {
                let r = IcReq::decode(p)?;
                self.tx.dg = r.digests;
                self.tx.hpda = r.hpda;
                IcResp { pfv: 0, cpda: 0, digests: r.digests, maxh2cdata: self.q.opts().maxh2cdata() }.encode(&mut self.tx.out.bytes);
                core.want_flush(self.tx.me);
                self.phase = Phase::Ready;
                Ok(())
            }
            (Phase::AwaitIcReq, _) => Err(PduError::Sequence),
            (_, ty::CAPSULE_CMD) => {
                let sqe = Sqe::from_slice(&p[8..72]).ok_or(PduError::BadPlen(l.ch.plen))?;
                let data = l.data(p);
                let data = if data.is_empty() { CmdData::None } else { CmdData::Slice(data) };
                self.q.on_capsule(core, &mut self.tx, sqe, data).map_err(qp_err)
            }
            (_, ty::H2C_DATA) => {
                let h = self.h2c_header(l, p)?;
                let dst = self.q.data_dest(h.ttag, h.cccid, h.offset, h.length).map_err(qp_err)?;
                dst.copy_from_slice(l.data(p));
                self.q.data_done(core, &mut self.tx, h.ttag, h.length);
                Ok(())
            }
            (_, ty::H2C_TERM_REQ) => {
                let t = pdu::TermReq::decode(p)?;
                tracing::info!(peer = %self.q.peer(), fes = t.fes, fei = t.fei, "host terminated the connection");
                self.gone(core);
                Ok(())
            }
            (_, ty::ICREQ) => Err(PduError::Sequence),
            (_, t) => Err(PduError::BadType(t)),
        }
    }

    /// Decode and check an H2CData header against the PDU's framing.
    fn h2c_header(&self, l: &Layout, p: &[u8]) -> Result<DataHeader, PduError> {
        let h = DataHeader::decode(p)?;
        if l.data_len != h.length as usize {
            return Err(PduError::BadField(16));
        }
        if h.length > self.q.opts().maxh2cdata() {
            return Err(PduError::DataOutOfRange);
        }
        Ok(h)
    }

    /// Start receiving H2CData payload in place: `p` holds its header (digest checked here) and
    /// the first bytes of its data, copied now; the rest is read into the command's buffer.
    fn begin_direct(&mut self, l: &Layout, p: &[u8]) -> Result<(), PduError> {
        l.check_header_digest(p)?;
        let h = self.h2c_header(l, p)?;
        let dst = self.q.data_dest(h.ttag, h.cccid, h.offset, h.length).map_err(qp_err)?;
        let present = &p[l.data_off..];
        let k = present.len().min(dst.len());
        dst[..k].copy_from_slice(&present[..k]);
        let crc = l.has_ddgst.then(|| crc32c::crc32c(&dst[..k]));
        let mut d = Direct { ttag: h.ttag, len: h.length, at: h.offset as usize + k, end: (h.offset + h.length) as usize, crc, tail: [0; 4], tail_got: 0 };
        // Part of the digest may have come in the same read.
        let extra = &present[k..];
        d.tail_got = extra.len().min(pdu::DIGEST_LEN);
        d.tail[..d.tail_got].copy_from_slice(&extra[..d.tail_got]);
        self.direct = Some(d);
        Ok(())
    }

    /// Read again once the host has taken enough of our output.
    fn resume_reading(&mut self, core: &mut Core) {
        if self.read_blocked && !self.tx.closing() && self.tx.out.backlog() <= TX_LOW_WATER {
            self.read_blocked = false;
            self.process(core);
            if !self.read_blocked {
                self.read_socket(core);
            }
        }
    }

    /// Idle: give back the receive buffer (unless it holds a partial PDU) and the send buffers.
    fn shrink_idle(&mut self) {
        self.rx.release_if_empty();
        self.tx.out.shrink();
        self.q.shrink_idle();
    }

    fn flush(&mut self, core: &mut Core) {
        let r = self.tx.out.write_to(&mut self.sock);
        self.q.on_sent(core, &mut self.tx);
        match r {
            Ok(true) => {}
            Ok(false) => return self.resume_reading(core), // the writable event resumes the rest
            Err(_) => {
                self.tx.out.clear();
                core.close(self.tx.me);
                return;
            }
        }
        if self.tx.closing() {
            // Discard unread input first: closing with unread bytes makes the kernel send a reset,
            // which can destroy the termination request before the host reads it.
            let mut sink = [0u8; 4096];
            while matches!(self.sock.read(&mut sink), Ok(n) if n > 0) {}
            let _ = self.sock.shutdown(std::net::Shutdown::Write);
            core.close(self.tx.me);
            return;
        }
        self.resume_reading(core);
    }
}

impl Handler for Conn {
    fn on_ready(&mut self, core: &mut Core, _me: HandlerRef, ev: &mio::event::Event) {
        if ev.is_writable() && self.tx.out.pending() {
            self.flush(core);
        }
        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
            self.read_socket(core);
        }
    }

    fn on_io_complete(&mut self, core: &mut Core, _me: HandlerRef, ev: IoEvent) {
        self.q.on_io_complete(core, &mut self.tx, ev);
    }

    fn on_tick(&mut self, core: &mut Core, me: HandlerRef) {
        if let Some(since) = self.tx.closing_since {
            if core.now.duration_since(since) > CLOSE_GRACE {
                core.close(me);
            }
            return;
        }
        if core.now.duration_since(self.last_rx) > IDLE_SHRINK && self.direct.is_none() {
            self.shrink_idle();
        }
        if !self.q.on_tick(core, &mut self.tx) {
            core.close(me);
        }
    }

    fn on_flush(&mut self, core: &mut Core, _me: HandlerRef) {
        self.flush(core);
    }

    fn on_message(&mut self, core: &mut Core, _me: HandlerRef, msg: Box<dyn std::any::Any + Send>) {
        self.q.on_message(core, &mut self.tx, msg);
    }

    fn on_close(&mut self, core: &mut Core, _me: HandlerRef) {
        let _ = core.registry().deregister(&mut self.sock);
        self.q.on_close();
    }
}
