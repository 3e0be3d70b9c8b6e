//! Written-since-allocation bits of one unwritten extent, in device blocks. Reactors set bits with
//! an atomic OR (no lock on the I/O path); the store reads them at commit. Bits are never cleared:
//! an extent is allocated once and freed as a whole, and a fresh allocation gets a fresh bitmap.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug)]
pub struct Bitmap {
    words: Box<[AtomicU64]>,
    bits: u64,
}

impl Bitmap {
    pub fn new(bits: u64) -> Self {
        let n = bits.div_ceil(64) as usize;
        Bitmap { words: (0..n).map(|_| AtomicU64::new(0)).collect(), bits }
    }
    pub fn bits(&self) -> u64 {
        self.bits
    }
    /// Set bits `[start, start+len)` (clipped to the map).
    pub fn set_range(&self, start: u64, len: u64) {
        let end = (start + len).min(self.bits);
        let mut i = start;
        while i < end {
            let w = i / 64;
            let lo = i % 64;
            let hi = (end - w * 64).min(64);
            let mask = if hi - lo == 64 { u64::MAX } else { ((1u64 << (hi - lo)) - 1) << lo };
            self.words[w as usize].fetch_or(mask, Ordering::Release);
            i = w * 64 + hi;
        }
    }
    pub fn get(&self, i: u64) -> bool {
        i < self.bits && self.words[(i / 64) as usize].load(Ordering::Acquire) & (1 << (i % 64)) != 0
    }
    /// Are all of `[start, start+len)` set?
    pub fn all(&self, start: u64, len: u64) -> bool {
        (start..start + len).all(|i| self.get(i))
    }
    /// Runs of set bits inside `[start, start+len)`, as (first bit, count).
    pub fn runs(&self, start: u64, len: u64) -> Vec<(u64, u64)> {
        let end = (start + len).min(self.bits);
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut i = start;
        while i < end {
            let w = self.words[(i / 64) as usize].load(Ordering::Acquire) >> (i % 64);
            if w == 0 {
                i = (i / 64 + 1) * 64; // rest of this word is clear
                continue;
            }
            if w & 1 != 0 {
                match out.last_mut() {
                    Some(l) if l.0 + l.1 == i => l.1 += 1,
                    _ => out.push((i, 1)),
                }
            }
            i += 1;
        }
        out
    }
    /// Is any of `[start, start+len)` set?
    pub fn any(&self, start: u64, len: u64) -> bool {
        (start..start + len).any(|i| self.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn ranges() {
        let b = Bitmap::new(200);
        b.set_range(60, 70);
        assert!(!b.get(59) && b.get(60) && b.get(129) && !b.get(130));
        assert!(b.all(60, 70) && !b.all(59, 2) && b.any(0, 61) && !b.any(130, 70));
        b.set_range(190, 100);
        assert!(b.get(199) && !b.get(200));
        assert_eq!(b.runs(0, 200), vec![(60, 70), (190, 10)]);
        assert_eq!(b.runs(100, 95), vec![(100, 30), (190, 5)]);
    }
}
