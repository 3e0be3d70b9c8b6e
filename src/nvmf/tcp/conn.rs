//! One NVMe/TCP connection: PDU framing and bytes only; the queue pair it carries
//! ([`QPair`]) executes the commands. It lives on one reactor for its whole life.
//!
//! Receive: bytes land in a large buffer and every complete PDU in it is handled in one pass (many
//! commands per `read`). H2CData payloads go straight into the command's pooled buffer once
//! their header is in: only what one `read` already pulled in with the header is copied, the rest
//! is read in place. Send: responses and read data are appended to one output queue and written
//! with one `writev` per loop iteration in `on_flush`; read data goes out from its own buffer. A
//! malformed PDU gets a C2HTermReq and closes this connection only.
//!
//! Secure channel (§3.6): the first byte tells a TLS ClientHello (0x16) from a plaintext ICReq
//! (0x00). A TLS connection completes its handshake on the reactor without blocking (bounded by
//! [`HANDSHAKE_TIMEOUT`]), then the same loops run over [`TlsStream`]: it decrypts into the same
//! receive buffer and landing slices, and encrypts the output queue's iovecs. Plaintext
//! connections read and write the socket exactly as before (the byte source is a type parameter).

use std::io::Read;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use crate::reactor::outq::OutQueue;
use super::pdu::{self, flags, ty, CommonHeader, DataHeader, Digests, IcReq, IcResp, Layout, PduError};
use crate::nvme::spec::{sgl, Cqe, Sqe};
use crate::nvmf::qpair::QPair;
use crate::nvmf::transport::{CmdData, QpError, Transport};
use crate::nvmf::{ListenAddr, Target};
use crate::reactor::counter::CoreCounter;
use crate::reactor::rxloop::{Landing, RxLoop, RxProto, RxStats, Step};
use crate::reactor::tls::TlsStream;
use crate::reactor::{Core, Handler, HandlerRef, IoBuf, IoEvent};
use super::tls as sec;

const RBUF_MIN: usize = 256 << 10;
const IDLE_SHRINK: Duration = Duration::from_secs(2);
/// Unsent output above which the connection stops reading commands (its host is not reading
/// what we send), and below which it starts again.
const TX_HIGH_WATER: usize = 2 << 20;
const TX_LOW_WATER: usize = 512 << 10;
/// How long a closing connection may take to drain its termination request.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// An H2CData payload or in-capsule data with at least this much still to come is read in place;
/// after a landed payload this long, the next read is a header peek.
const DIRECT_MIN: usize = 8192;
/// From accept to the end of the TLS handshake (or the first plaintext byte).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Nothing received yet: TLS or plaintext?
    Sniff,
    /// TLS handshake under way.
    Handshake,
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

/// What a landed payload belongs to: transfer `ttag`'s buffer from byte `base` (H2CData: its
/// offset; in-capsule data: 0), or nothing (the command was answered already: bytes dropped).
#[derive(Clone, Copy, Debug)]
pub struct Land {
    ttag: Option<u16>,
    base: usize,
}

/// NVMe/TCP receive counters (`framework_get_reactors`).
pub static RX_STATS: RxStats = RxStats::new();
/// Command capsules whose in-capsule data was landed in the command's buffer.
pub static CAPSULES_IN_PLACE: CoreCounter = CoreCounter::new();

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
    /// Receive buffer (two of the largest PDUs, mapped only while the connection is busy) and
    /// in-place landing of H2CData and in-capsule data.
    rxl: RxLoop<Land>,
    rsize: usize,
    last_rx: Instant,
    t: Arc<Target>,
    listen: Arc<ListenAddr>,
    accepted: Instant,
    /// The TLS session of a secured connection.
    tls: Option<Box<TlsStream>>,
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
            q: QPair::new(t.clone(), opts, me, listen.clone(), peer.to_string(), core.now),
            phase: Phase::Sniff,
            max_plen,
            rxl: RxLoop::new(rsize, DIRECT_MIN, &RX_STATS),
            rsize,
            last_rx: core.now,
            t,
            listen,
            accepted: core.now,
            tls: None,
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

    /// `to_end`: see [`RxLoop::run`].
    fn read_socket(&mut self, core: &mut Core, to_end: bool) {
        match self.phase {
            Phase::Sniff => return self.sniff(core),
            Phase::Handshake => return self.drive_handshake(core),
            _ => {}
        }
        let mut rl = std::mem::take(&mut self.rxl);
        match self.tls.take() {
            Some(mut tls) => {
                rl.run_on(core, &mut *tls, self, to_end);
                self.tls = Some(tls);
            }
            None => rl.run(core, self.sock.as_raw_fd(), self, to_end),
        }
        self.rxl = rl;
    }

    /// Peek at the first byte: a ClientHello starts a TLS handshake, anything else is plaintext
    /// NVMe/TCP (refused where every subsystem on this address requires TLS).
    fn sniff(&mut self, core: &mut Core) {
        let mut b = [0u8; 1];
        // SAFETY: one byte into a live local buffer; MSG_PEEK leaves it for the real reader.
        let r = unsafe { libc::recv(self.sock.as_raw_fd(), b.as_mut_ptr().cast(), 1, libc::MSG_PEEK) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::Interrupted {
                self.gone(core);
            }
            return;
        }
        if r == 0 {
            return self.gone(core);
        }
        if b[0] == sec::TLS_HANDSHAKE {
            let lookup = Arc::new(sec::TargetPsks { t: self.t.clone(), listen: self.listen.clone() });
            match TlsStream::server(self.sock.as_raw_fd(), lookup) {
                Ok(s) => {
                    self.tls = Some(Box::new(s));
                    self.phase = Phase::Handshake;
                    self.drive_handshake(core);
                }
                Err(e) => {
                    tracing::warn!(peer = %self.q.peer(), "TLS: {e}");
                    self.gone(core);
                }
            }
            return;
        }
        if !self.t.plaintext_admissible(&self.listen) {
            sec::refused(&format!("plaintext connection from {} refused on secure listener {:?}", self.q.peer(), self.listen));
            return self.gone(core);
        }
        self.phase = Phase::AwaitIcReq;
        self.read_socket(core, false);
    }

    fn drive_handshake(&mut self, core: &mut Core) {
        let Some(tls) = self.tls.as_mut() else { return };
        match tls.handshake() {
            Ok(false) => {}
            Ok(true) => {
                let id = tls.psk_identity().and_then(|i| crate::nvme::tls_psk::PskIdentity::parse(i).ok());
                let Some(id) = id else {
                    tracing::warn!(peer = %self.q.peer(), "TLS handshake ended without a PSK identity");
                    return self.gone(core);
                };
                tracing::debug!(peer = %self.q.peer(), cipher = tls.cipher().unwrap_or("?"), "TLS secure channel for {} {}", id.hostnqn, id.subnqn);
                let generated = id.kind == crate::nvme::tls_psk::PskKind::Generated;
                self.q.set_tls_peer(crate::nvmf::fabrics::TlsPeer { hostnqn: id.hostnqn, subnqn: id.subnqn, generated });
                self.phase = Phase::AwaitIcReq;
                // The ICReq may have come with the handshake's last flight.
                self.read_socket(core, true);
            }
            Err(e) => {
                sec::refused(&format!("TLS handshake with {} failed: {e}", self.q.peer()));
                self.gone(core);
            }
        }
    }

    /// Start landing an H2CData payload in place: `p` holds its header and the first bytes of its
    /// data; the loop copies those and reads the rest into the command's buffer.
    fn begin_h2c(&mut self, l: &Layout, p: &[u8]) -> Result<Landing<Land>, PduError> {
        l.check_header_digest(p)?;
        let h = self.h2c_header(l, p)?;
        self.q.data_dest(h.ttag, h.cccid, h.offset, h.length).map_err(qp_err)?;
        let key = Land { ttag: Some(h.ttag), base: h.offset as usize };
        Ok(Landing::new(key, h.length as usize, 0, l.has_ddgst))
    }

    /// Start landing a command capsule's in-capsule data in place, when its SGL names exactly that
    /// data (offset 0, whole length); otherwise None: the capsule waits whole in the buffer.
    fn begin_capsule(&mut self, core: &mut Core, l: &Layout, p: &[u8]) -> Result<Option<Landing<Land>>, PduError> {
        l.check_header_digest(p)?;
        let sqe = Sqe::from_slice(&p[8..72]).ok_or(PduError::BadPlen(l.ch.plen))?;
        let g = sqe.sgl();
        if g.id != sgl::DATA_BLOCK_OFFSET || g.address != 0 || g.length as usize != l.data_len {
            return Ok(None);
        }
        self.q.on_capsule(core, &mut self.tx, sqe, CmdData::Later(g.length)).map_err(qp_err)?;
        let ttag = self.q.take_landing();
        if ttag.is_some() {
            CAPSULES_IN_PLACE.add(core.id, 1);
        }
        Ok(Some(Landing::new(Land { ttag, base: 0 }, l.data_len, 0, l.has_ddgst)))
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

    /// Read again once the host has taken enough of our output.
    fn resume_reading(&mut self, core: &mut Core) {
        if self.rxl.read_blocked() && !self.tx.closing() && self.tx.out.backlog() <= TX_LOW_WATER {
            self.read_socket(core, true);
        }
    }

    /// Idle: give back the receive buffer (unless it holds a partial PDU) and the send buffers.
    fn shrink_idle(&mut self, now: Instant) {
        self.rxl.release_idle(now, self.last_rx, IDLE_SHRINK);
        self.tx.out.shrink();
        self.q.shrink_idle();
    }

    fn flush(&mut self, core: &mut Core) {
        if matches!(self.phase, Phase::Sniff | Phase::Handshake) {
            // Handshake records are OpenSSL's; a handshake waiting to write resumes here.
            if self.phase == Phase::Handshake {
                self.drive_handshake(core);
            }
            return;
        }
        let r = match self.tls.as_mut() {
            // Everything taken may still sit encrypted in the stream until the socket takes it.
            Some(tls) => self.tx.out.write_to(&mut **tls).and_then(|all| if all { tls.push() } else { Ok(false) }),
            None => self.tx.out.write_to(&mut self.sock),
        };
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
            match self.tls.as_mut() {
                Some(tls) => {
                    while matches!(tls.read(&mut sink), Ok(n) if n > 0) {}
                    tls.shutdown();
                }
                None => while matches!(self.sock.read(&mut sink), Ok(n) if n > 0) {},
            }
            let _ = self.sock.shutdown(std::net::Shutdown::Write);
            core.close(self.tx.me);
            return;
        }
        self.resume_reading(core);
    }
}

impl Handler for Conn {
    fn on_ready(&mut self, core: &mut Core, _me: HandlerRef, ev: &mio::event::Event) {
        if matches!(self.phase, Phase::Sniff | Phase::Handshake) {
            return self.read_socket(core, true);
        }
        if ev.is_writable() && (self.tx.out.pending() || self.tls.as_ref().is_some_and(|t| t.pending())) {
            self.flush(core);
        }
        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
            self.read_socket(core, ev.is_read_closed() || ev.is_error());
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
        if matches!(self.phase, Phase::Sniff | Phase::Handshake) && core.now.duration_since(self.accepted) > HANDSHAKE_TIMEOUT {
            sec::refused(&format!("{}: no ICReq or TLS handshake within {HANDSHAKE_TIMEOUT:?}", self.q.peer()));
            core.close(me);
            return;
        }
        if core.now.duration_since(self.last_rx) > IDLE_SHRINK && !self.rxl.landing() {
            self.shrink_idle(core.now);
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

impl RxProto for Conn {
    type Key = Land;

    fn frame(&mut self, core: &mut Core, buf: &[u8]) -> Step<Land> {
        let Some(ch) = CommonHeader::parse(buf) else { return Step::More };
        let (dg, max) = match self.phase {
            Phase::Sniff | Phase::Handshake | Phase::AwaitIcReq => (Digests::default(), 128),
            _ => (self.tx.dg, self.max_plen),
        };
        let l = match pdu::frame(ch, dg, max) {
            Ok(l) => l,
            Err(e) => {
                self.fatal(core, e, &buf[..buf.len().min(pdu::MAX_HLEN)]);
                return Step::Stop;
            }
        };
        let have = buf.len();
        if have < l.total {
            // Header (and padding) in, most of the data still to come: land it in place.
            if self.phase == Phase::Ready && have >= l.data_off && l.total - have >= DIRECT_MIN {
                let r = match l.ch.pdu_type {
                    ty::H2C_DATA => self.begin_h2c(&l, buf).map(Some),
                    ty::CAPSULE_CMD => self.begin_capsule(core, &l, buf),
                    _ => Ok(None),
                };
                match r {
                    Ok(Some(land)) => return Step::Land(l.data_off, land),
                    Ok(None) => {}
                    Err(e) => {
                        self.fatal(core, e, &buf[..l.hlen]);
                        return Step::Stop;
                    }
                }
            }
            return Step::More;
        }
        let p = &buf[..l.total];
        let r = l.check_digests(p).and_then(|_| self.handle(core, &l, p));
        if let Err(e) = r {
            self.fatal(core, e, &p[..l.hlen]);
            return Step::Stop;
        }
        Step::Done(l.total)
    }

    fn landing_buf(&mut self, key: Land, off: usize, len: usize) -> Option<&mut [u8]> {
        let b = self.q.data_buf(key.ttag?)?;
        b.get_mut(key.base.checked_add(off)?..key.base.checked_add(off)?.checked_add(len)?)
    }

    fn landed(&mut self, core: &mut Core, key: Land, len: usize, digest_ok: bool) {
        if !digest_ok {
            return self.fatal(core, PduError::DataDigest, &[]);
        }
        let Some(ttag) = key.ttag else { return };
        // A command aborted or answered meanwhile takes nothing more.
        if self.q.data_buf(ttag).is_none() {
            return;
        }
        self.q.data_done(core, &mut self.tx, ttag, len as u32);
    }

    fn closing(&self) -> bool {
        self.tx.closing()
    }

    fn tx_blocked(&self) -> bool {
        self.tx.out.backlog() > TX_HIGH_WATER
    }

    fn rx_capacity(&self) -> usize {
        self.rsize
    }

    fn peek_len(&self) -> usize {
        // The longest header worth reading alone: a command capsule (CH + SQE) and its digest.
        72 + if self.tx.dg.header { pdu::DIGEST_LEN } else { 0 }
    }

    fn received(&mut self, now: Instant) {
        self.last_rx = now;
    }

    fn gone(&mut self, core: &mut Core, _err: Option<std::io::Error>) {
        Conn::gone(self, core);
    }

    fn no_room(&mut self, core: &mut Core, _mapped: bool) {
        // Cannot happen (the buffer holds two of the largest PDUs we accept) unless the mapping
        // failed: end this connection, not the target.
        self.fatal(core, PduError::BadPlen(0), &[]);
    }

    fn processed(&mut self, core: &mut Core) {
        self.q.unpark(core, &mut self.tx);
    }
}
