//! Allocation counting for benchmark builds (cargo feature `count-alloc`).
//!
//! With the feature on, a global allocator wraps the system allocator and counts allocations per
//! thread in a plain thread-local cell (no atomic, no lock). Reactors publish their thread's count
//! in their stats, so `framework_get_reactors` and `palisade bdevperf` can show how many
//! allocations the data path made per I/O after warm-up. Without the feature nothing is counted
//! and [`enabled`] is false.

/// Is allocation counting compiled in?
pub const fn enabled() -> bool {
    cfg!(feature = "count-alloc")
}

/// Allocations (alloc, alloc_zeroed and realloc calls) made so far by the calling thread; always 0
/// without the `count-alloc` feature.
pub fn thread_allocations() -> u64 {
    imp::thread_allocations()
}

#[cfg(feature = "count-alloc")]
mod imp {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        // const-initialised Cell: no lazy init and no destructor, so it is safe to touch from
        // inside the allocator.
        static ALLOCS: Cell<u64> = const { Cell::new(0) };
    }

    fn bump() {
        // try_with: the slot may already be gone while a thread is exiting.
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
    }

    pub fn thread_allocations() -> u64 {
        ALLOCS.try_with(|c| c.get()).unwrap_or(0)
    }

    pub struct CountingAlloc;

    // SAFETY: every call is forwarded to the system allocator unchanged.
    unsafe impl GlobalAlloc for CountingAlloc {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            bump();
            System.alloc(layout)
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            bump();
            System.alloc_zeroed(layout)
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            bump();
            System.realloc(ptr, layout, new_size)
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            System.dealloc(ptr, layout)
        }
    }

    #[global_allocator]
    static GLOBAL: CountingAlloc = CountingAlloc;
}

#[cfg(not(feature = "count-alloc"))]
mod imp {
    pub fn thread_allocations() -> u64 {
        0
    }
}

#[cfg(all(test, feature = "count-alloc"))]
mod tests {
    #[test]
    fn counts_this_thread_only() {
        let before = super::thread_allocations();
        let v: Vec<u64> = Vec::with_capacity(16);
        std::hint::black_box(&v);
        assert!(super::thread_allocations() > before);
        // another thread's allocations land in that thread's counter
        let other = std::thread::spawn(|| {
            let before = super::thread_allocations();
            std::hint::black_box(vec![1u8; 100]);
            super::thread_allocations() - before
        })
        .join()
        .unwrap();
        assert_eq!(other, 1);
    }
}
