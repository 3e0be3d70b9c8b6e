//! Aligned I/O buffers drawn from a per-thread pool, so the data path does not allocate per command.
//!
//! A buffer is `Send`: it can be dropped on any thread and then joins that thread's pool. Capacity is
//! rounded up to a power-of-two class (4 KiB minimum) and the memory is 4 KiB aligned, which O_DIRECT
//! needs.

use std::alloc::{alloc, dealloc, Layout};
use std::cell::RefCell;
use std::ptr::NonNull;

pub const BUF_ALIGN: usize = 4096;
const MIN_CLASS_SHIFT: u32 = 12; // 4 KiB
const NUM_CLASSES: usize = 12; // 4 KiB .. 8 MiB
/// Buffers kept per class per thread; beyond that a dropped buffer is freed.
const MAX_POOLED_PER_CLASS: usize = 1024;

pub struct IoBuf {
    ptr: NonNull<u8>,
    cap: usize,
    len: usize,
}

// The buffer owns its memory exclusively.
unsafe impl Send for IoBuf {}
unsafe impl Sync for IoBuf {}

thread_local! {
    static POOL: RefCell<[Vec<(NonNull<u8>, usize)>; NUM_CLASSES]> = RefCell::new(Default::default());
}

fn class_of(cap: usize) -> Option<usize> {
    let c = cap.max(1 << MIN_CLASS_SHIFT).next_power_of_two();
    let idx = (c.trailing_zeros() - MIN_CLASS_SHIFT) as usize;
    (idx < NUM_CLASSES).then_some(idx)
}

impl IoBuf {
    /// A buffer of `len` bytes (contents unspecified: callers fill or overwrite it).
    pub fn new(len: usize) -> IoBuf {
        let class = class_of(len);
        if let Some(idx) = class {
            if let Some((ptr, cap)) = POOL.try_with(|p| p.borrow_mut()[idx].pop()).ok().flatten() {
                return IoBuf { ptr, cap, len };
            }
        }
        let cap = match class {
            Some(idx) => 1usize << (idx as u32 + MIN_CLASS_SHIFT),
            None => len.div_ceil(BUF_ALIGN) * BUF_ALIGN,
        };
        let layout = Layout::from_size_align(cap.max(BUF_ALIGN), BUF_ALIGN).expect("buffer layout");
        // SAFETY: layout has non-zero size.
        let raw = unsafe { alloc(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        IoBuf { ptr, cap: cap.max(BUF_ALIGN), len }
    }

    /// A zero-filled buffer.
    pub fn zeroed(len: usize) -> IoBuf {
        let mut b = IoBuf::new(len);
        b.as_mut_slice().fill(0);
        b
    }

    pub fn from_slice(data: &[u8]) -> IoBuf {
        let mut b = IoBuf::new(data.len());
        b.as_mut_slice().copy_from_slice(data);
        b
    }

    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn capacity(&self) -> usize {
        self.cap
    }
    /// Change the visible length within capacity (contents beyond the old length are unspecified).
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.cap, "IoBuf::set_len beyond capacity");
        self.len = len;
    }
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for cap >= len bytes and owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }
}

impl std::ops::Deref for IoBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}
impl std::ops::DerefMut for IoBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl std::fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IoBuf(len={}, cap={})", self.len, self.cap)
    }
}

impl Drop for IoBuf {
    fn drop(&mut self) {
        let (ptr, cap) = (self.ptr, self.cap);
        if let Some(idx) = class_of(cap).filter(|&i| 1usize << (i as u32 + MIN_CLASS_SHIFT) == cap) {
            let kept = POOL
                .try_with(|p| {
                    let mut p = p.borrow_mut();
                    if p[idx].len() < MAX_POOLED_PER_CLASS {
                        p[idx].push((ptr, cap));
                        true
                    } else {
                        false
                    }
                })
                .unwrap_or(false);
            if kept {
                return;
            }
        }
        // SAFETY: allocated in IoBuf::new with this size and alignment.
        unsafe { dealloc(ptr.as_ptr(), Layout::from_size_align_unchecked(cap, BUF_ALIGN)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_buffers_of_a_class() {
        let b = IoBuf::new(4096);
        let p = b.as_ptr();
        drop(b);
        let c = IoBuf::new(3000);
        assert_eq!(c.as_ptr(), p);
        assert_eq!(c.len(), 3000);
        assert_eq!(c.as_ptr() as usize % BUF_ALIGN, 0);
    }

    #[test]
    fn huge_and_zero_sized() {
        let b = IoBuf::zeroed(20 << 20);
        assert!(b.iter().all(|&x| x == 0));
        let z = IoBuf::new(0);
        assert!(z.is_empty());
    }
}
