//! The send side of a connection: PDU headers, responses and small data go into one byte buffer;
//! read data stays in its pooled [`IoBuf`] and is spliced in by position, so a whole loop
//! iteration's output leaves in one `writev` without copying the data again.

use std::collections::VecDeque;
use std::os::fd::RawFd;

use crate::reactor::IoBuf;

/// iovecs per writev call (well under IOV_MAX).
const IOV_BATCH: usize = 256;

#[derive(Default)]
pub struct OutQueue {
    /// Bytes of the stream that are not data buffers.
    pub bytes: Vec<u8>,
    /// Data buffers, each inserted at an offset of `bytes` (non-decreasing).
    bufs: VecDeque<(usize, IoBuf)>,
    /// Sum of the lengths in `bufs`.
    buf_bytes: usize,
    /// How much of the logical stream has been written.
    sent: usize,
    /// Bytes written before the current contents (a stream position that only grows).
    flushed: u64,
}

impl OutQueue {
    pub fn with_capacity(n: usize) -> OutQueue {
        OutQueue { bytes: Vec::with_capacity(n), ..Default::default() }
    }

    /// Stream position just after everything queued so far.
    pub fn end(&self) -> u64 {
        self.flushed + self.total() as u64
    }

    /// Stream position up to which everything has reached the socket.
    pub fn written(&self) -> u64 {
        self.flushed + self.sent as u64
    }

    /// Bytes queued and not yet written.
    pub fn backlog(&self) -> usize {
        self.total() - self.sent
    }

    /// Give the buffers' memory back when nothing is queued (an idle connection).
    pub fn shrink(&mut self) {
        if !self.pending() {
            self.bytes = Vec::new();
            self.bufs = VecDeque::new();
        }
    }

    /// Append a data buffer at the current end of the stream.
    pub fn push_buf(&mut self, b: IoBuf) {
        if !b.is_empty() {
            self.buf_bytes += b.len();
            self.bufs.push_back((self.bytes.len(), b));
        }
    }

    pub fn total(&self) -> usize {
        self.bytes.len() + self.buf_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.sent == 0 && self.bytes.is_empty() && self.bufs.is_empty()
    }

    /// Something is still waiting to be written.
    pub fn pending(&self) -> bool {
        !self.bytes.is_empty() || !self.bufs.is_empty()
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.bufs.clear();
        self.buf_bytes = 0;
        self.sent = 0;
    }

    /// Everything went out: empty the queue, keeping the stream position.
    fn done(&mut self) {
        self.flushed += self.total() as u64;
        self.clear();
    }

    /// Write as much as the socket takes. Ok(true) when everything went out (the queue is then
    /// empty), Ok(false) on EAGAIN with data left.
    pub fn write_to(&mut self, fd: RawFd) -> std::io::Result<bool> {
        loop {
            // Build the iovecs of the unsent part of the stream.
            let mut iov: [libc::iovec; IOV_BATCH] = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; IOV_BATCH];
            let mut n = 0;
            let mut pos = 0usize; // logical position
            let mut at = 0usize; // position in `bytes`
            let mut push = |base: *const u8, len: usize, pos: &mut usize, n: &mut usize| {
                let skip = self.sent.saturating_sub(*pos).min(len);
                if len > skip && *n < IOV_BATCH {
                    // SAFETY: pointer within a live buffer of at least `len` bytes.
                    iov[*n] = libc::iovec { iov_base: unsafe { base.add(skip) } as *mut libc::c_void, iov_len: len - skip };
                    *n += 1;
                }
                *pos += len;
            };
            for (off, b) in self.bufs.iter() {
                push(self.bytes[at..].as_ptr(), off - at, &mut pos, &mut n);
                at = *off;
                push(b.as_ptr(), b.len(), &mut pos, &mut n);
                if n == IOV_BATCH {
                    break;
                }
            }
            if n < IOV_BATCH {
                push(self.bytes[at..].as_ptr(), self.bytes.len() - at, &mut pos, &mut n);
            }
            if n == 0 {
                self.done();
                return Ok(true);
            }
            // SAFETY: n valid iovecs pointing into buffers we own for the duration of the call.
            let r = unsafe { libc::writev(fd, iov.as_ptr(), n as i32) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                match e.kind() {
                    std::io::ErrorKind::WouldBlock => return Ok(false),
                    std::io::ErrorKind::Interrupted => continue,
                    _ => return Err(e),
                }
            }
            if r == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::WriteZero));
            }
            self.sent += r as usize;
            if self.sent >= self.total() {
                self.done();
                return Ok(true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;

    #[test]
    fn interleaves_bytes_and_buffers_across_partial_writes() {
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut q = OutQueue::with_capacity(64);
        let mut want = Vec::new();
        for i in 0..600u32 {
            q.bytes.extend_from_slice(&i.to_le_bytes());
            want.extend_from_slice(&i.to_le_bytes());
            let data: Vec<u8> = (0..1000).map(|k| (k as u32 * 7 + i) as u8).collect();
            q.push_buf(IoBuf::from_slice(&data));
            want.extend_from_slice(&data);
        }
        q.bytes.extend_from_slice(b"end");
        want.extend_from_slice(b"end");
        let mut got = Vec::new();
        let mut tmp = vec![0u8; 65536];
        b.set_nonblocking(true).unwrap();
        for _ in 0..100_000 {
            if q.write_to(a.as_raw_fd()).unwrap() {
                break;
            }
            while let Ok(k) = b.read(&mut tmp) {
                got.extend_from_slice(&tmp[..k]);
            }
        }
        assert!(!q.pending());
        assert_eq!(q.written(), want.len() as u64);
        assert_eq!(q.end(), want.len() as u64);
        b.set_nonblocking(false).unwrap();
        drop(a);
        b.read_to_end(&mut got).unwrap();
        assert_eq!(got, want);
    }
}
