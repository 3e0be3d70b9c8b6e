//! A connection's receive buffer: mapped only while it holds bytes or the connection is busy, so an
//! idle connection costs no receive memory, and given back to the kernel (not to the allocator,
//! whose thresholds would keep it) when released.
//!
//! Bytes arrive at `end`, complete PDUs are consumed from `start`; a partial PDU at the end is
//! moved to the front when the tail is full.

use std::ptr::NonNull;

pub struct RxBuf {
    map: Option<NonNull<u8>>,
    cap: usize,
    start: usize,
    end: usize,
}

// The mapping is owned exclusively by this value.
unsafe impl Send for RxBuf {}

impl Default for RxBuf {
    fn default() -> Self {
        RxBuf::new(0)
    }
}

impl RxBuf {
    /// A buffer of `cap` bytes, not mapped until the first [`RxBuf::spare`].
    pub const fn new(cap: usize) -> RxBuf {
        RxBuf { map: None, cap, start: 0, end: 0 }
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Whether memory is mapped now.
    pub fn is_mapped(&self) -> bool {
        self.map.is_some()
    }

    /// Bytes received and not consumed.
    pub fn data(&self) -> &[u8] {
        match self.map {
            // SAFETY: start <= end <= cap, inside the mapping.
            Some(p) => unsafe { std::slice::from_raw_parts(p.as_ptr().add(self.start), self.end - self.start) },
            None => &[],
        }
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Room to receive into: maps the buffer if needed and moves a partial PDU to the front when
    /// the tail is full. Empty only when unconsumed bytes fill the whole buffer (a PDU larger than
    /// it), or when mapping failed.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.map.is_none() {
            self.map = map(self.cap);
            self.start = 0;
            self.end = 0;
        }
        let Some(p) = self.map else { return &mut [] };
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.cap && self.start > 0 {
            // SAFETY: both ranges lie in the mapping; `copy` allows overlap.
            unsafe { std::ptr::copy(p.as_ptr().add(self.start), p.as_ptr(), self.end - self.start) };
            self.end -= self.start;
            self.start = 0;
        }
        // SAFETY: end <= cap, inside the mapping, and &mut self is exclusive.
        unsafe { std::slice::from_raw_parts_mut(p.as_ptr().add(self.end), self.cap - self.end) }
    }

    /// `n` bytes were written into [`RxBuf::spare`].
    pub fn filled(&mut self, n: usize) {
        assert!(self.end + n <= self.cap, "RxBuf::filled past capacity");
        self.end += n;
    }

    /// `n` bytes at the front were handled.
    pub fn consume(&mut self, n: usize) {
        assert!(self.start + n <= self.end, "RxBuf::consume past the data");
        self.start += n;
    }

    /// Give the memory back if nothing is buffered; true if the buffer is now unmapped.
    pub fn release_if_empty(&mut self) -> bool {
        if self.start != self.end {
            return false;
        }
        if let Some(p) = self.map.take() {
            unmap(p, self.cap);
        }
        self.start = 0;
        self.end = 0;
        true
    }

    /// Change the capacity, keeping buffered bytes (moved to a new mapping if there are any).
    /// False if they do not fit or mapping failed (nothing changes then).
    pub fn set_capacity(&mut self, cap: usize) -> bool {
        if cap == self.cap {
            return true;
        }
        if self.release_if_empty() {
            self.cap = cap;
            return true;
        }
        let len = self.len();
        if len > cap {
            return false;
        }
        let Some(new) = map(cap) else { return false };
        // SAFETY: `len` bytes at `start` of the old mapping, copied to the start of the new one.
        unsafe { std::ptr::copy_nonoverlapping(self.data().as_ptr(), new.as_ptr(), len) };
        if let Some(old) = self.map.replace(new) {
            unmap(old, self.cap);
        }
        self.cap = cap;
        self.start = 0;
        self.end = len;
        true
    }
}

impl Drop for RxBuf {
    fn drop(&mut self) {
        if let Some(p) = self.map.take() {
            unmap(p, self.cap);
        }
    }
}

fn map(cap: usize) -> Option<NonNull<u8>> {
    if cap == 0 {
        return None;
    }
    // SAFETY: a fresh private anonymous mapping; pages cost memory only once touched.
    let p = unsafe {
        libc::mmap(std::ptr::null_mut(), cap, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    NonNull::new(p as *mut u8)
}

fn unmap(p: NonNull<u8>, cap: usize) {
    // SAFETY: `p` came from `map(cap)` and is unmapped once.
    unsafe { libc::munmap(p.as_ptr() as *mut libc::c_void, cap) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lazy_compacting_and_released() {
        let mut b = RxBuf::new(8);
        assert!(!b.is_mapped());
        assert!(b.data().is_empty());
        b.spare()[..6].copy_from_slice(b"abcdef");
        b.filled(6);
        assert!(b.is_mapped());
        b.consume(4);
        assert_eq!(b.data(), b"ef");
        assert!(!b.release_if_empty());
        assert_eq!(b.spare().len(), 2);
        b.spare()[..2].copy_from_slice(b"gh");
        b.filled(2);
        // Tail full: the partial PDU moves to the front.
        assert_eq!(b.spare().len(), 4);
        assert_eq!(b.data(), b"efgh");
        b.consume(4);
        assert!(b.release_if_empty());
        assert!(!b.is_mapped());
        assert!(b.set_capacity(16));
        assert_eq!(b.spare().len(), 16);
        b.filled(3);
        assert!(b.set_capacity(32));
        assert_eq!(b.len(), 3);
        assert_eq!(b.spare().len(), 29);
        assert!(!b.set_capacity(2));
    }
}
