//! Aligned I/O buffers drawn from a per-thread pool, so the data path does not allocate per command.
//!
//! A buffer is `Send`: it can be dropped on any thread and then joins that thread's pool. Capacity is
//! rounded up to a power-of-two class (4 KiB minimum) and the memory is 4 KiB aligned, which O_DIRECT
//! needs.
//!
//! A recycled buffer still holds the bytes of whoever used it last (another client's data, or a
//! block of another volume), so nothing uninitialised is ever visible through `Deref`:
//! [`IoBuf::new`] and [`IoBuf::zeroed`] hand out zeros, growing with [`IoBuf::set_len`] zeroes
//! the new bytes, and only [`IoBuf::for_overwrite`] skips the zeroing, for callers that overwrite
//! every byte before anyone reads one (a bdev reads into it, a copy fills it).

use std::alloc::{alloc, alloc_zeroed, dealloc, Layout};
use std::cell::RefCell;
use std::ptr::NonNull;

pub const BUF_ALIGN: usize = 4096;
const MIN_CLASS_SHIFT: u32 = 12; // 4 KiB
const NUM_CLASSES: usize = 12; // 4 KiB .. 8 MiB
/// Buffers kept per class per thread; beyond that a dropped buffer is freed.
const MAX_POOLED_PER_CLASS: usize = 1024;
/// Bytes kept in one thread's pool at most: a burst of large commands does not stay resident.
const MAX_POOLED_BYTES: usize = 64 << 20;
/// Buffers this large are mapped from the kernel and unmapped when freed, so their memory goes
/// back at once instead of staying in the allocator's heap.
const MMAP_MIN: usize = 1 << 20;

pub struct IoBuf {
    ptr: NonNull<u8>,
    cap: usize,
    len: usize,
    /// Bytes `0..init` hold this buffer's own data (zeros or what its owner wrote); beyond is
    /// whatever the pool left there.
    init: usize,
}

// The buffer owns its memory exclusively.
unsafe impl Send for IoBuf {}
unsafe impl Sync for IoBuf {}

#[derive(Default)]
struct Pool {
    classes: [Vec<(NonNull<u8>, usize)>; NUM_CLASSES],
    bytes: usize,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// Free every buffer this thread's pool keeps (a reactor calls it when it has been idle a while,
/// so memory taken by a burst returns to the system). Returns the bytes freed.
pub fn trim_pool() -> usize {
    let taken = POOL.try_with(|p| std::mem::take(&mut *p.borrow_mut())).unwrap_or_default();
    for class in taken.classes {
        for (ptr, cap) in class {
            free_raw(ptr, cap);
        }
    }
    taken.bytes
}

/// Bytes kept in this thread's pool now.
pub fn pooled_bytes() -> usize {
    POOL.try_with(|p| p.borrow().bytes).unwrap_or(0)
}

fn alloc_raw(cap: usize, zero: bool) -> NonNull<u8> {
    if cap >= MMAP_MIN {
        // SAFETY: a fresh private anonymous mapping (zero-filled by the kernel, page aligned).
        let p = unsafe { libc::mmap(std::ptr::null_mut(), cap, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0) };
        if p == libc::MAP_FAILED {
            std::alloc::handle_alloc_error(Layout::from_size_align(cap, BUF_ALIGN).expect("buffer layout"));
        }
        return NonNull::new(p as *mut u8).expect("mmap returned null");
    }
    let layout = Layout::from_size_align(cap, BUF_ALIGN).expect("buffer layout");
    // SAFETY: layout has non-zero size.
    let raw = unsafe { if zero { alloc_zeroed(layout) } else { alloc(layout) } };
    NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout))
}

fn free_raw(ptr: NonNull<u8>, cap: usize) {
    if cap >= MMAP_MIN {
        // SAFETY: mapped by alloc_raw with this length.
        unsafe { libc::munmap(ptr.as_ptr() as *mut libc::c_void, cap) };
    } else {
        // SAFETY: allocated by alloc_raw with this size and alignment.
        unsafe { dealloc(ptr.as_ptr(), Layout::from_size_align_unchecked(cap, BUF_ALIGN)) }
    }
}

fn class_of(cap: usize) -> Option<usize> {
    let c = cap.max(1 << MIN_CLASS_SHIFT).next_power_of_two();
    let idx = (c.trailing_zeros() - MIN_CLASS_SHIFT) as usize;
    (idx < NUM_CLASSES).then_some(idx)
}

impl IoBuf {
    /// A zero-filled buffer of `len` bytes. Safe for any use; on the data path prefer
    /// [`IoBuf::for_overwrite`] where every byte is provably written before it is read.
    pub fn new(len: usize) -> IoBuf {
        IoBuf::zeroed(len)
    }

    /// A zero-filled buffer.
    pub fn zeroed(len: usize) -> IoBuf {
        let (mut b, fresh) = IoBuf::take(len, true);
        if !fresh {
            // SAFETY: ptr is valid for cap >= len bytes and owned by b.
            unsafe { std::ptr::write_bytes(b.ptr.as_ptr(), 0, len) };
        }
        b.init = len;
        b
    }

    /// A buffer of `len` bytes whose contents are left as the pool had them (possibly another
    /// client's data). The caller must overwrite all `len` bytes before anything reads them (a
    /// bdev read into it, a copy that fills it); every call site says why that holds.
    pub fn for_overwrite(len: usize) -> IoBuf {
        let (mut b, _) = IoBuf::take(len, false);
        b.init = len;
        b
    }

    /// A buffer from the pool or a fresh allocation (zeroed by the allocator if `zero`: large
    /// fresh buffers then come as untouched zero pages); true if fresh.
    fn take(len: usize, zero: bool) -> (IoBuf, bool) {
        let class = class_of(len);
        if let Some(idx) = class {
            let hit = POOL
                .try_with(|p| {
                    let mut p = p.borrow_mut();
                    let b = p.classes[idx].pop();
                    if let Some((_, cap)) = b {
                        p.bytes -= cap;
                    }
                    b
                })
                .ok()
                .flatten();
            if let Some((ptr, cap)) = hit {
                return (IoBuf { ptr, cap, len, init: 0 }, false);
            }
        }
        let cap = match class {
            Some(idx) => 1usize << (idx as u32 + MIN_CLASS_SHIFT),
            None => len.div_ceil(BUF_ALIGN) * BUF_ALIGN,
        };
        let cap = cap.max(BUF_ALIGN);
        (IoBuf { ptr: alloc_raw(cap, zero), cap, len, init: 0 }, true)
    }

    pub fn from_slice(data: &[u8]) -> IoBuf {
        // Overwritten at once by the copy.
        let mut b = IoBuf::for_overwrite(data.len());
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
    /// Change the visible length within capacity. Bytes that were never this buffer's own become
    /// zeros (the pool's previous contents never show).
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.cap, "IoBuf::set_len beyond capacity");
        if len > self.init {
            // SAFETY: init < len <= cap, within the allocation owned by self.
            unsafe { std::ptr::write_bytes(self.ptr.as_ptr().add(self.init), 0, len - self.init) };
            self.init = len;
        }
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
                    if p.classes[idx].len() < MAX_POOLED_PER_CLASS && p.bytes + cap <= MAX_POOLED_BYTES {
                        p.classes[idx].push((ptr, cap));
                        p.bytes += cap;
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
        free_raw(ptr, cap);
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
    fn recycled_buffers_do_not_show_previous_content() {
        let mut b = IoBuf::for_overwrite(8192);
        b.fill(0xa5);
        let p = b.as_ptr();
        drop(b);
        let c = IoBuf::new(8192);
        assert_eq!(c.as_ptr(), p, "same pooled memory");
        assert!(c.iter().all(|&x| x == 0), "new() shows a previous owner's bytes");
        drop(c);
        let mut d = IoBuf::for_overwrite(4096);
        d.fill(0x5a);
        let p = d.as_ptr();
        drop(d);
        // Growing a short buffer within its capacity zeroes what it did not own.
        let mut e = IoBuf::for_overwrite(100);
        assert_eq!(e.as_ptr(), p, "same pooled memory");
        e.fill(1);
        e.set_len(4096);
        assert!(e[..100].iter().all(|&x| x == 1));
        assert!(e[100..].iter().all(|&x| x == 0), "set_len exposed recycled bytes");
        e.set_len(10);
        e.set_len(200);
        assert!(e[..100].iter().all(|&x| x == 1) && e[100..200].iter().all(|&x| x == 0), "shrinking then growing keeps own data");
        drop(e);
        let mut f = IoBuf::zeroed(4096);
        f.fill(7);
        drop(f);
        assert!(IoBuf::zeroed(4096).iter().all(|&x| x == 0));
        assert!(IoBuf::from_slice(b"abc").as_slice() == b"abc");
    }

    #[test]
    fn pool_is_bounded_and_trimmed() {
        trim_pool();
        let bufs: Vec<IoBuf> = (0..40).map(|_| IoBuf::for_overwrite(4 << 20)).collect();
        drop(bufs);
        assert!(pooled_bytes() <= MAX_POOLED_BYTES, "{} pooled", pooled_bytes());
        assert!(pooled_bytes() > 0);
        assert!(trim_pool() > 0);
        assert_eq!(pooled_bytes(), 0);
        let b = IoBuf::new(4 << 20);
        assert!(b.iter().all(|&x| x == 0));
    }

    #[test]
    fn huge_and_zero_sized() {
        let b = IoBuf::zeroed(20 << 20);
        assert!(b.iter().all(|&x| x == 0));
        let z = IoBuf::new(0);
        assert!(z.is_empty());
    }
}
