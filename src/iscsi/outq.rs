//! A connection's output queue: PDU headers and small payloads are encoded into one reused byte
//! buffer, while large Data-In payloads stay in their I/O buffers and are spliced in at their
//! place with `writev` — the read data is never copied on its way to the socket.

use std::io::{IoSlice, Write};

use crate::reactor::IoBuf;

/// Payloads at least this long go out from their own buffer instead of being copied.
pub const ZERO_COPY_MIN: usize = 2048;
const IOV: usize = 64;

#[derive(Clone, Copy)]
struct Mark {
    /// Offset in `tx` before which this data goes.
    at: usize,
    buf: usize,
    off: usize,
    len: usize,
}

#[derive(Default)]
pub struct OutQueue {
    pub tx: Vec<u8>,
    bufs: Vec<IoBuf>,
    marks: Vec<Mark>,
    tx_pos: usize,
    mark_idx: usize,
    mark_off: usize,
    queued: usize,
    written: usize,
}

impl OutQueue {
    pub fn with_capacity(n: usize) -> Self {
        OutQueue { tx: Vec::with_capacity(n), bufs: Vec::with_capacity(64), marks: Vec::with_capacity(256), ..Default::default() }
    }

    /// Keep `b` alive until written; returns its handle for [`OutQueue::splice`].
    pub fn keep(&mut self, b: IoBuf) -> usize {
        self.bufs.push(b);
        self.bufs.len() - 1
    }

    /// Queue `len` bytes of kept buffer `buf` from `off`, at the current end of the stream.
    pub fn splice(&mut self, buf: usize, off: usize, len: usize) {
        if len > 0 {
            self.marks.push(Mark { at: self.tx.len(), buf, off, len });
            self.queued += len;
        }
    }

    pub fn kept(&self, buf: usize) -> &[u8] {
        &self.bufs[buf]
    }

    /// Bytes queued and not yet written.
    pub fn backlog(&self) -> usize {
        self.tx.len() + self.queued - self.written
    }

    pub fn pending(&self) -> bool {
        self.tx_pos < self.tx.len() || self.mark_idx < self.marks.len()
    }

    pub fn clear(&mut self) {
        self.tx.clear();
        self.bufs.clear();
        self.marks.clear();
        self.tx_pos = 0;
        self.mark_idx = 0;
        self.mark_off = 0;
        self.queued = 0;
        self.written = 0;
    }

    /// Write as much as the socket takes. Ok(true): everything went out (the queue is reset).
    pub fn write_to(&mut self, w: &mut impl Write) -> std::io::Result<bool> {
        loop {
            if !self.pending() {
                self.clear();
                return Ok(true);
            }
            let mut iov = [IoSlice::new(&[]); IOV];
            let mut n = 0;
            let (mut pos, mut mi, mut moff) = (self.tx_pos, self.mark_idx, self.mark_off);
            while n < IOV {
                if mi < self.marks.len() && pos == self.marks[mi].at {
                    let m = self.marks[mi];
                    iov[n] = IoSlice::new(&self.bufs[m.buf][m.off + moff..m.off + m.len]);
                    n += 1;
                    mi += 1;
                    moff = 0;
                    continue;
                }
                let limit = if mi < self.marks.len() { self.marks[mi].at } else { self.tx.len() };
                if pos >= limit {
                    break;
                }
                iov[n] = IoSlice::new(&self.tx[pos..limit]);
                n += 1;
                pos = limit;
            }
            match w.write_vectored(&iov[..n]) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(k) => self.advance(k),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn advance(&mut self, mut k: usize) {
        self.written += k;
        while k > 0 {
            if self.mark_idx < self.marks.len() && self.tx_pos == self.marks[self.mark_idx].at {
                let m = self.marks[self.mark_idx];
                let take = k.min(m.len - self.mark_off);
                self.mark_off += take;
                k -= take;
                if self.mark_off == m.len {
                    self.mark_idx += 1;
                    self.mark_off = 0;
                }
            } else {
                let limit = if self.mark_idx < self.marks.len() { self.marks[self.mark_idx].at } else { self.tx.len() };
                let take = k.min(limit - self.tx_pos);
                self.tx_pos += take;
                k -= take;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `step` bytes per call.
    struct Trickle {
        got: Vec<u8>,
        step: usize,
    }
    impl Write for Trickle {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let n = b.len().min(self.step);
            self.got.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn splices_in_order_across_partial_writes() {
        for step in [1usize, 3, 7, 100, 1 << 20] {
            let mut q = OutQueue::with_capacity(16);
            let b = q.keep(IoBuf::from_slice(b"0123456789"));
            q.tx.extend_from_slice(b"<h1>");
            q.splice(b, 2, 5);
            q.tx.extend_from_slice(b"<p>");
            q.splice(b, 0, 3);
            q.splice(b, 9, 1);
            q.tx.extend_from_slice(b"<end>");
            assert_eq!(q.backlog(), 4 + 5 + 3 + 3 + 1 + 5);
            let mut w = Trickle { got: Vec::new(), step };
            assert!(q.write_to(&mut w).unwrap());
            assert_eq!(w.got, b"<h1>23456<p>0129<end>");
            assert!(!q.pending());
            assert_eq!(q.backlog(), 0);
        }
    }
}
