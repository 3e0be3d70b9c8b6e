//! One connection's socket read loop, shared by the iSCSI and NVMe/TCP front-ends.
//!
//! Bytes arrive in the connection's [`RxBuf`] and the protocol frames and handles every complete
//! PDU there ([`RxProto::frame`]). A PDU whose data segment mostly has not arrived yet can be
//! *landed* instead: the protocol hands back its header and a [`Landing`], and the payload goes
//! straight into the command's pooled buffer ([`RxProto::landing_buf`]) — what one read already
//! pulled in with the header is copied once, the rest is read in place — followed by padding and
//! data digest. Each read is one `readv` of [landing slice, receive buffer spare], so the end of
//! a payload and the next header arrive in one call; after a large payload the next read takes
//! only a header (a peek), so the next payload lands in place too. Reading stops while the peer
//! does not take our output ([`RxProto::tx_blocked`]).
//!
//! No allocation and no lock here: the landing state is a few words, the counters are relaxed
//! atomics bumped once per landed segment.

use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use super::counter::CoreCounter;
use super::{Core, RxBuf};

pub const DIGEST_LEN: usize = 4;

/// Per-protocol receive counters for `framework_get_reactors`, kept per reactor.
#[derive(Default)]
pub struct RxStats {
    /// Data segments landed in a command's buffer.
    pub landings: CoreCounter,
    /// Payload bytes read from the socket straight into a command's buffer.
    pub in_place: CoreCounter,
    /// Payload bytes of landed segments copied from the receive buffer (came with a header).
    pub copied: CoreCounter,
}

impl RxStats {
    pub const fn new() -> RxStats {
        RxStats { landings: CoreCounter::new(), in_place: CoreCounter::new(), copied: CoreCounter::new() }
    }
}

static NO_STATS: RxStats = RxStats::new();

/// A data segment being received in place: `len` payload bytes, then `pad` padding bytes (covered
/// by the data digest, as iSCSI pads to 4 bytes), then the digest if there is one.
#[derive(Clone, Copy, Debug)]
pub struct Landing<K> {
    pub key: K,
    pub len: usize,
    pad: usize,
    digest: bool,
    got: usize,
    tgot: usize,
    tail: [u8; 8],
    crc: u32,
    in_place: usize,
}

impl<K> Landing<K> {
    /// `pad` is at most 3 (anything larger is cut: the trailer buffer is 8 bytes).
    pub fn new(key: K, len: usize, pad: usize, digest: bool) -> Landing<K> {
        Landing { key, len, pad: pad.min(3), digest, got: 0, tgot: 0, tail: [0; 8], crc: 0, in_place: 0 }
    }
    fn trailer(&self) -> usize {
        self.pad + if self.digest { DIGEST_LEN } else { 0 }
    }
}

/// What the protocol made of the bytes at the front of the receive buffer.
#[derive(Debug)]
pub enum Step<K> {
    /// A whole PDU of this many bytes, handled.
    Done(usize),
    /// A header (and padding before the data) of this many bytes, handled; its data lands next.
    Land(usize, Landing<K>),
    /// Not a whole PDU yet: read more.
    More,
    /// Stop handling input (the connection is ending).
    Stop,
}

/// The protocol side of a connection, called back by [`RxLoop`].
pub trait RxProto {
    type Key: Copy;
    /// Frame the PDU at the front of `buf` (non-empty) and handle it if it is whole.
    fn frame(&mut self, core: &mut Core, buf: &[u8]) -> Step<Self::Key>;
    /// Where bytes `off..off + len` of landing `key`'s payload go (exactly `len` bytes); None
    /// drops them (a refused or aborted command).
    fn landing_buf(&mut self, key: Self::Key, off: usize, len: usize) -> Option<&mut [u8]>;
    /// Landing `key` is complete (payload, padding, digest); `digest_ok` is false on a data
    /// digest mismatch, which the protocol reports its own way.
    fn landed(&mut self, core: &mut Core, key: Self::Key, len: usize, digest_ok: bool);
    /// The connection is ending: read and handle nothing more.
    fn closing(&self) -> bool;
    /// Too much output waits for the peer: stop reading until [`RxLoop::run`] is called again.
    fn tx_blocked(&self) -> bool;
    /// Receive buffer size wanted now (grown before the next read if larger).
    fn rx_capacity(&self) -> usize;
    /// Bytes a header peek takes after the rest of a landed PDU (the longest header worth
    /// reading alone, digest included).
    fn peek_len(&self) -> usize;
    /// Bytes arrived at `now`.
    fn received(&mut self, now: Instant);
    /// End of stream or a socket error: the peer is gone.
    fn gone(&mut self, core: &mut Core, err: Option<io::Error>);
    /// No room to read into: a PDU larger than the receive buffer (`mapped`), or the buffer could
    /// not be mapped.
    fn no_room(&mut self, core: &mut Core, mapped: bool);
    /// A pass over the received bytes ended.
    fn processed(&mut self, _core: &mut Core) {}
}

pub struct RxLoop<K> {
    rx: RxBuf,
    landing: Option<Landing<K>>,
    /// The next read is a header peek.
    peek: bool,
    read_blocked: bool,
    /// Payloads at least this long make the next read a peek.
    peek_after: usize,
    stats: &'static RxStats,
}

impl<K> Default for RxLoop<K> {
    /// An empty stand-in (no memory), for taking the loop out of its connection while it runs.
    fn default() -> Self {
        RxLoop { rx: RxBuf::new(0), landing: None, peek: false, read_blocked: false, peek_after: usize::MAX, stats: &NO_STATS }
    }
}

impl<K: Copy> RxLoop<K> {
    pub fn new(cap: usize, peek_after: usize, stats: &'static RxStats) -> RxLoop<K> {
        RxLoop { rx: RxBuf::new(cap), landing: None, peek: false, read_blocked: false, peek_after, stats }
    }

    /// Reading stopped under output backpressure.
    pub fn read_blocked(&self) -> bool {
        self.read_blocked
    }

    /// A data segment is being landed.
    pub fn landing(&self) -> bool {
        self.landing.is_some()
    }

    /// The key of the data segment being landed, if one is (not during [`RxLoop::run`], which
    /// holds the state it works on).
    pub fn landing_key(&self) -> Option<K> {
        self.landing.as_ref().map(|l| l.key)
    }

    pub fn rx(&mut self) -> &mut RxBuf {
        &mut self.rx
    }

    /// Unmap the receive buffer if the connection has been quiet for `after` (not while a
    /// partial PDU or a landing is pending).
    pub fn release_idle(&mut self, now: Instant, last_rx: Instant, after: Duration) {
        if self.landing.is_none() && now.duration_since(last_rx) > after {
            self.rx.release_if_empty();
        }
    }

    /// Handle what is buffered, then read `fd` and handle what arrives until the socket is drained,
    /// the connection ends or its output backs up. With `to_end`, read until the socket says it
    /// is empty (or ended): when the readiness event already reported the peer's end of stream, or
    /// when no event will come for what arrived while reading was stopped. Otherwise a short read
    /// ends the pass: anything arriving later raises a new edge-triggered event.
    pub fn run<P: RxProto<Key = K>>(&mut self, core: &mut Core, fd: RawFd, p: &mut P, to_end: bool) {
        self.run_on(core, &mut PlainFd(fd), p, to_end)
    }

    /// [`RxLoop::run`] on any byte source (a plain socket, or TLS over one).
    pub fn run_on<S: RxSource, P: RxProto<Key = K>>(&mut self, core: &mut Core, src: &mut S, p: &mut P, to_end: bool) {
        if self.read_blocked {
            // Input left in the buffer when reading stopped goes first.
            self.read_blocked = false;
            self.process(core, p);
        }
        loop {
            if p.closing() || self.read_blocked {
                return;
            }
            if p.tx_blocked() {
                self.read_blocked = true;
                return;
            }
            let cap = p.rx_capacity();
            if self.rx.capacity() < cap && !self.rx.set_capacity(cap) {
                return p.no_room(core, false);
            }
            let peek_len = p.peek_len();
            let spare = self.rx.spare();
            if spare.is_empty() {
                let mapped = self.rx.is_mapped();
                return p.no_room(core, mapped);
            }
            // While a large payload lands, and after one, read only up to the next header: the next
            // large payload is likely another, and it lands in place too rather than being copied.
            let large = self.peek || self.landing.as_ref().is_some_and(|l| l.len >= self.peek_after);
            let (direct, trailer_left, digest) = match self.landing.as_ref() {
                Some(l) if l.got < l.len => {
                    let d = p.landing_buf(l.key, l.got, l.len - l.got).unwrap_or(&mut []);
                    (d, l.trailer(), l.digest)
                }
                Some(l) => (&mut [][..], l.trailer() - l.tgot, false),
                None => (&mut [][..], 0, false),
            };
            let dlen = direct.len();
            let room = if large { spare.len().min(trailer_left + peek_len) } else { spare.len() };
            let space = dlen + room;
            match src.read2(direct, &mut spare[..room]) {
                Ok(0) => return p.gone(core, None),
                Ok(n) => {
                    let landed = n.min(dlen);
                    if landed > 0 {
                        let l = self.landing.as_mut().expect("landing slice");
                        if digest {
                            l.crc = crc32c::crc32c_append(l.crc, &direct[..landed]);
                        }
                        l.got += landed;
                        l.in_place += landed;
                    }
                    self.peek = false;
                    self.rx.filled(n - landed);
                    p.received(core.now);
                    self.process(core, p);
                    // A short read drained the socket: skip the EAGAIN read. Not so for a source
                    // that buffers (TLS returns a record at a time and may hold more).
                    if n < space && !to_end && !S::BUFFERS {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return p.gone(core, Some(e)),
            }
        }
    }

    /// Handle every complete PDU in the receive buffer and feed a landing from it.
    pub fn process<P: RxProto<Key = K>>(&mut self, core: &mut Core, p: &mut P) {
        while !p.closing() {
            if self.landing.is_some() {
                if !self.land_from(core, p) {
                    break;
                }
                continue;
            }
            if self.rx.is_empty() {
                break;
            }
            if p.tx_blocked() {
                // The rest waits in the buffer (and the socket) until the peer reads.
                self.read_blocked = true;
                break;
            }
            match p.frame(core, self.rx.data()) {
                Step::Done(n) => self.rx.consume(n.min(self.rx.len())),
                Step::Land(n, l) => {
                    self.rx.consume(n.min(self.rx.len()));
                    self.landing = Some(l);
                }
                Step::More | Step::Stop => break,
            }
        }
        p.processed(core);
    }

    /// Land what the receive buffer holds of the current segment. True when the whole PDU
    /// (payload, padding, digest) is in and was handed to the protocol.
    fn land_from<P: RxProto<Key = K>>(&mut self, core: &mut Core, p: &mut P) -> bool {
        let Some(l) = self.landing.as_mut() else { return true };
        if l.got < l.len {
            let n = (l.len - l.got).min(self.rx.len());
            let bytes = &self.rx.data()[..n];
            if let Some(b) = p.landing_buf(l.key, l.got, n) {
                // Only this part is copied: one read pulled it in with the header.
                let k = b.len().min(n);
                b[..k].copy_from_slice(&bytes[..k]);
            }
            if l.digest {
                l.crc = crc32c::crc32c_append(l.crc, bytes);
            }
            l.got += n;
            self.rx.consume(n);
        }
        let trailer = l.trailer();
        if l.got == l.len && l.tgot < trailer {
            let n = (trailer - l.tgot).min(self.rx.len());
            l.tail[l.tgot..l.tgot + n].copy_from_slice(&self.rx.data()[..n]);
            l.tgot += n;
            self.rx.consume(n);
        }
        if l.got < l.len || l.tgot < trailer {
            return false;
        }
        let l = self.landing.take().expect("checked");
        // After a large payload, expect another: read its header alone so its payload lands in place.
        self.peek = l.len >= self.peek_after;
        let ok = !l.digest || {
            let crc = crc32c::crc32c_append(l.crc, &l.tail[..l.pad]);
            let got = u32::from_le_bytes([l.tail[l.pad], l.tail[l.pad + 1], l.tail[l.pad + 2], l.tail[l.pad + 3]]);
            crc == got
        };
        self.stats.landings.add(core.id, 1);
        self.stats.in_place.add(core.id, l.in_place as u64);
        self.stats.copied.add(core.id, (l.len - l.in_place) as u64);
        p.landed(core, l.key, l.len, ok);
        true
    }
}

/// Where a connection's bytes come from: one `readv`-like call filling `a` then `b`.
pub trait RxSource {
    /// The source holds bytes of its own (decrypted, or read ahead from the socket) that raise no
    /// socket event: the loop reads until it says WouldBlock.
    const BUFFERS: bool;
    /// Fill `a` then `b` (either may be empty); Ok(0) is the end of the stream.
    fn read2(&mut self, a: &mut [u8], b: &mut [u8]) -> io::Result<usize>;
}

/// A plain socket: one `readv` per call, as before any abstraction.
pub struct PlainFd(pub RawFd);

impl RxSource for PlainFd {
    const BUFFERS: bool = false;
    #[inline]
    fn read2(&mut self, a: &mut [u8], b: &mut [u8]) -> io::Result<usize> {
        readv(self.0, a, b)
    }
}

/// One `readv` into `a` then `b` (either may be empty).
fn readv(fd: RawFd, a: &mut [u8], b: &mut [u8]) -> io::Result<usize> {
    let iov = [
        libc::iovec { iov_base: a.as_mut_ptr().cast(), iov_len: a.len() },
        libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() },
    ];
    let iov = if a.is_empty() { &iov[1..] } else { &iov[..] };
    // SAFETY: both iovecs describe live, exclusively borrowed slices.
    let r = unsafe { libc::readv(fd, iov.as_ptr(), iov.len() as libc::c_int) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reactor::{PollMode, ReactorSet};
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn landing_trailer_sizes() {
        let l = Landing::new(0u8, 10, 2, true);
        assert_eq!(l.trailer(), 6);
        let l = Landing::new(0u8, 10, 9, false);
        assert_eq!(l.trailer(), 3);
    }

    /// A toy protocol: a 4-byte header [kind, pad, len lo, len hi]; kind 0 is a whole PDU of
    /// `len` bytes taken from the buffer, kind 1 lands `len` bytes, `pad` padding and a digest.
    #[derive(Default)]
    struct Toy {
        dest: Vec<u8>,
        whole: Vec<Vec<u8>>,
        landed: Vec<(usize, bool)>,
        eof: bool,
    }

    impl RxProto for Toy {
        type Key = u8;
        fn frame(&mut self, _: &mut Core, buf: &[u8]) -> Step<u8> {
            if buf.len() < 4 {
                return Step::More;
            }
            let len = u16::from_le_bytes([buf[2], buf[3]]) as usize;
            match buf[0] {
                0 if buf.len() >= 4 + len => {
                    self.whole.push(buf[4..4 + len].to_vec());
                    Step::Done(4 + len)
                }
                0 => Step::More,
                _ => Step::Land(4, Landing::new(7, len, buf[1] as usize, true)),
            }
        }
        fn landing_buf(&mut self, key: u8, off: usize, len: usize) -> Option<&mut [u8]> {
            assert_eq!(key, 7);
            self.dest.get_mut(off..off + len)
        }
        fn landed(&mut self, _: &mut Core, _: u8, len: usize, ok: bool) {
            self.landed.push((len, ok));
        }
        fn closing(&self) -> bool {
            false
        }
        fn tx_blocked(&self) -> bool {
            false
        }
        fn rx_capacity(&self) -> usize {
            64 << 10
        }
        fn peek_len(&self) -> usize {
            4
        }
        fn received(&mut self, _: Instant) {}
        fn gone(&mut self, _: &mut Core, _: Option<io::Error>) {
            self.eof = true;
        }
        fn no_room(&mut self, _: &mut Core, _: bool) {
            panic!("no room");
        }
    }

    fn landed_pdu(data: &[u8], pad: usize, good: bool) -> Vec<u8> {
        let mut b = vec![1, pad as u8];
        b.extend_from_slice(&(data.len() as u16).to_le_bytes());
        b.extend_from_slice(data);
        b.resize(b.len() + pad, 0);
        let crc = crc32c::crc32c(&b[4..]) ^ if good { 0 } else { 1 };
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    #[test]
    fn payload_lands_in_place_across_reads_with_digest_and_next_header() {
        let set = ReactorSet::start(0x1, PollMode::Adaptive, |_| {}).unwrap();
        let r = set.call(0, |r| {
            static STATS: RxStats = RxStats::new();
            let (mut peer, sock) = UnixStream::pair().unwrap();
            sock.set_nonblocking(true).unwrap();
            let mut rl: RxLoop<u8> = RxLoop::new(64 << 10, 8192, &STATS);
            let mut toy = Toy { dest: vec![0; 40001], ..Toy::default() };
            let data: Vec<u8> = (0..40001u32).map(|i| (i * 7 + i / 300) as u8).collect();
            let mut stream = landed_pdu(&data, 3, true);
            stream.extend_from_slice(&landed_pdu(&data[..9000], 0, false));
            stream.extend_from_slice(&[0, 0, 2, 0, b'h', b'i']);
            // Header and 100 bytes, then the payload in pieces, the padding and digest split, a
            // second payload with a bad digest, a whole PDU.
            let mut at = 0;
            for cut in [104, 20000, 40004, 40006, 40010, 40012, stream.len()] {
                peer.write_all(&stream[at..cut]).unwrap();
                at = cut;
                rl.run(&mut r.core, sock.as_raw_fd(), &mut toy, false);
            }
            let ok = toy.dest == data && toy.landed == vec![(40001, true), (9000, false)] && toy.whole == vec![b"hi".to_vec()];
            let copied = STATS.copied.sum();
            let in_place = STATS.in_place.sum();
            drop(peer);
            rl.run(&mut r.core, sock.as_raw_fd(), &mut toy, false);
            (ok, copied, in_place, toy.eof, rl.landing())
        });
        set.stop();
        let (ok, copied, in_place, eof, landing) = r.unwrap();
        assert!(ok, "data, landings or whole PDUs differ");
        // What came with the header was copied; the rest, and all of the second payload (its
        // header read alone after a large payload), was read in place.
        assert_eq!(copied, 100);
        assert_eq!(in_place, 40001 - 100 + 9000);
        assert!(eof && !landing);
    }
}
