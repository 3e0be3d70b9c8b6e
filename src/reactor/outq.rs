//! A connection's send side, shared by the iSCSI and NVMe/TCP front-ends: PDU headers, responses
//! and small payloads are encoded into one reused byte buffer, while read data stays in its pooled
//! [`IoBuf`] and is spliced in at its place (whole, or a range per PDU), so a loop iteration's
//! output leaves in one `writev` without copying the data again. Positions in the stream only
//! grow, so a caller can hold a command until the socket has taken its response.

use std::io::{IoSlice, Write};

use super::IoBuf;

/// iovecs per `writev` (well under IOV_MAX).
const IOV: usize = 64;

#[derive(Clone, Copy)]
struct Mark {
    /// Offset in `bytes` before which this data goes.
    at: usize,
    buf: usize,
    off: usize,
    len: usize,
}

#[derive(Default)]
pub struct OutQueue {
    /// The stream's bytes other than spliced data.
    pub bytes: Vec<u8>,
    bufs: Vec<IoBuf>,
    marks: Vec<Mark>,
    pos: usize,
    mark_idx: usize,
    mark_off: usize,
    /// Spliced bytes queued.
    queued: usize,
    /// Bytes of the current contents written.
    written: usize,
    /// Bytes written before the current contents.
    flushed: u64,
}

impl OutQueue {
    pub fn with_capacity(n: usize) -> Self {
        OutQueue { bytes: Vec::with_capacity(n), bufs: Vec::with_capacity(64), marks: Vec::with_capacity(256), ..Default::default() }
    }

    /// Keep `b` alive until written; returns its handle for [`OutQueue::splice`].
    pub fn keep(&mut self, b: IoBuf) -> usize {
        self.bufs.push(b);
        self.bufs.len() - 1
    }

    /// Queue `len` bytes of kept buffer `buf` from `off`, at the current end of the stream.
    pub fn splice(&mut self, buf: usize, off: usize, len: usize) {
        if len > 0 {
            self.marks.push(Mark { at: self.bytes.len(), buf, off, len });
            self.queued += len;
        }
    }

    /// Queue a whole buffer at the current end of the stream.
    pub fn push_buf(&mut self, b: IoBuf) {
        let len = b.len();
        if len > 0 {
            let h = self.keep(b);
            self.splice(h, 0, len);
        }
    }

    pub fn kept(&self, buf: usize) -> &[u8] {
        &self.bufs[buf]
    }

    fn total(&self) -> usize {
        self.bytes.len() + self.queued
    }

    /// Stream position just after everything queued so far.
    pub fn end(&self) -> u64 {
        self.flushed + self.total() as u64
    }

    /// Stream position up to which everything has reached the socket.
    pub fn written(&self) -> u64 {
        self.flushed + self.written as u64
    }

    /// Bytes queued and not yet written.
    pub fn backlog(&self) -> usize {
        self.total() - self.written
    }

    /// Something is still waiting to be written.
    pub fn pending(&self) -> bool {
        self.pos < self.bytes.len() || self.mark_idx < self.marks.len()
    }

    /// Drop everything queued (the connection is gone); positions stay where they were written.
    pub fn clear(&mut self) {
        self.flushed += self.written as u64;
        self.bytes.clear();
        self.bufs.clear();
        self.marks.clear();
        self.pos = 0;
        self.mark_idx = 0;
        self.mark_off = 0;
        self.queued = 0;
        self.written = 0;
    }

    /// Give the buffers' memory back when nothing is queued (an idle connection).
    pub fn shrink(&mut self) {
        if !self.pending() {
            self.clear();
            self.bytes = Vec::new();
            self.bufs = Vec::new();
            self.marks = Vec::new();
        }
    }

    /// Write as much as the socket takes. Ok(true): everything went out (the queue is reset);
    /// Ok(false): the socket is full and data is left.
    pub fn write_to(&mut self, w: &mut impl Write) -> std::io::Result<bool> {
        loop {
            if !self.pending() {
                self.clear();
                return Ok(true);
            }
            let mut iov = [IoSlice::new(&[]); IOV];
            let mut n = 0;
            let (mut pos, mut mi, mut moff) = (self.pos, self.mark_idx, self.mark_off);
            while n < IOV {
                if mi < self.marks.len() && pos == self.marks[mi].at {
                    let m = self.marks[mi];
                    iov[n] = IoSlice::new(&self.bufs[m.buf][m.off + moff..m.off + m.len]);
                    n += 1;
                    mi += 1;
                    moff = 0;
                    continue;
                }
                let limit = if mi < self.marks.len() { self.marks[mi].at } else { self.bytes.len() };
                if pos >= limit {
                    break;
                }
                iov[n] = IoSlice::new(&self.bytes[pos..limit]);
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
            if self.mark_idx < self.marks.len() && self.pos == self.marks[self.mark_idx].at {
                let m = self.marks[self.mark_idx];
                let take = k.min(m.len - self.mark_off);
                self.mark_off += take;
                k -= take;
                if self.mark_off == m.len {
                    self.mark_idx += 1;
                    self.mark_off = 0;
                }
            } else {
                let limit = if self.mark_idx < self.marks.len() { self.marks[self.mark_idx].at } else { self.bytes.len() };
                let take = k.min(limit - self.pos);
                self.pos += take;
                k -= take;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

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
            q.bytes.extend_from_slice(b"<h1>");
            q.splice(b, 2, 5);
            q.bytes.extend_from_slice(b"<p>");
            q.splice(b, 0, 3);
            q.splice(b, 9, 1);
            q.bytes.extend_from_slice(b"<end>");
            assert_eq!(q.backlog(), 4 + 5 + 3 + 3 + 1 + 5);
            let mut w = Trickle { got: Vec::new(), step };
            assert!(q.write_to(&mut w).unwrap());
            assert_eq!(w.got, b"<h1>23456<p>0129<end>");
            assert!(!q.pending());
            assert_eq!(q.backlog(), 0);
            assert_eq!(q.written(), 21);
        }
    }

    #[test]
    fn positions_grow_across_flushes_and_partial_socket_writes() {
        let (mut a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        let mut q = OutQueue::with_capacity(64);
        let mut want = Vec::new();
        let mut marks = Vec::new();
        for i in 0..600u32 {
            q.bytes.extend_from_slice(&i.to_le_bytes());
            want.extend_from_slice(&i.to_le_bytes());
            let data: Vec<u8> = (0..1000).map(|k| (k as u32 * 7 + i) as u8).collect();
            q.push_buf(IoBuf::from_slice(&data));
            want.extend_from_slice(&data);
            marks.push(q.end());
            assert_eq!(q.end(), want.len() as u64);
        }
        let mut got = Vec::new();
        let mut tmp = vec![0u8; 65536];
        for _ in 0..100_000 {
            if q.write_to(&mut a).unwrap() {
                break;
            }
            assert!(q.written() <= q.end());
            while let Ok(k) = b.read(&mut tmp) {
                got.extend_from_slice(&tmp[..k]);
            }
        }
        assert!(!q.pending());
        assert_eq!(q.written(), want.len() as u64);
        // More after a complete flush continues the same stream positions.
        q.bytes.extend_from_slice(b"end");
        want.extend_from_slice(b"end");
        assert_eq!(q.end(), want.len() as u64);
        assert!(q.write_to(&mut a).unwrap());
        assert_eq!(q.written(), want.len() as u64);
        b.set_nonblocking(false).unwrap();
        drop(a);
        b.read_to_end(&mut got).unwrap();
        assert_eq!(got, want);
    }
}
