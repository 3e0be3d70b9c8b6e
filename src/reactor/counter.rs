//! Event counters kept per reactor, summed only when read: a counter bumped on the I/O path by
//! every reactor would bounce one cache line between cores per command.

use std::sync::atomic::{AtomicU64, Ordering};

/// Reactors with a line of their own; ids beyond share lines (still correct, only slower).
const LINES: usize = 64;

#[repr(align(128))]
struct Line(AtomicU64);

pub struct CoreCounter {
    lines: [Line; LINES],
}

impl Default for CoreCounter {
    fn default() -> Self {
        CoreCounter::new()
    }
}

impl CoreCounter {
    pub const fn new() -> CoreCounter {
        #[allow(clippy::declare_interior_mutable_const)]
        const ZERO: Line = Line(AtomicU64::new(0));
        CoreCounter { lines: [ZERO; LINES] }
    }

    /// Add `n` on reactor `core`'s line.
    #[inline]
    pub fn add(&self, core: u32, n: u64) {
        self.lines[core as usize % LINES].0.fetch_add(n, Ordering::Relaxed);
    }

    /// The total over every reactor.
    pub fn sum(&self) -> u64 {
        self.lines.iter().map(|l| l.0.load(Ordering::Relaxed)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_over_cores_and_lines_do_not_share_a_cache_line() {
        let c = CoreCounter::new();
        c.add(0, 2);
        c.add(1, 3);
        c.add(LINES as u32 + 1, 4);
        assert_eq!(c.sum(), 9);
        let a = &c.lines[0] as *const Line as usize;
        let b = &c.lines[1] as *const Line as usize;
        assert!(b - a >= 128);
    }
}
