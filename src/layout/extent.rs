//! Ordered, non-overlapping segment maps keyed by a start block (file offset → volume LBA).
//!
//! One generic map serves the file extent maps (written data) and a grant's pending (unwritten)
//! extents; a segment knows how to cut itself, so every split keeps the LBA arithmetic in one place.

use std::collections::BTreeMap;

/// A run of blocks that can be cut at a block boundary.
#[allow(clippy::len_without_is_empty)]
pub trait Seg: Clone {
    fn len(&self) -> u64;
    /// The same run without its first `k` blocks.
    fn skip(&self, k: u64) -> Self;
    /// The first `k` blocks of the run.
    fn take(&self, k: u64) -> Self;
}

/// A mapped run: `len` blocks starting at volume block `lba`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Run {
    pub lba: u64,
    pub len: u64,
}

impl Seg for Run {
    fn len(&self) -> u64 {
        self.len
    }
    fn skip(&self, k: u64) -> Self {
        Run { lba: self.lba + k, len: self.len - k }
    }
    fn take(&self, k: u64) -> Self {
        Run { lba: self.lba, len: k }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ExtentMap<T: Seg> {
    map: BTreeMap<u64, T>,
}

impl<T: Seg> Default for ExtentMap<T> {
    fn default() -> Self {
        ExtentMap { map: BTreeMap::new() }
    }
}

impl<T: Seg> ExtentMap<T> {
    pub fn new() -> Self {
        ExtentMap { map: BTreeMap::new() }
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = (u64, &T)> {
        self.map.iter().map(|(k, v)| (*k, v))
    }
    /// Blocks mapped in total.
    pub fn blocks(&self) -> u64 {
        self.map.values().map(|s| s.len()).sum()
    }
    /// One past the last mapped block.
    pub fn end(&self) -> u64 {
        self.map.iter().next_back().map(|(k, v)| k + v.len()).unwrap_or(0)
    }

    /// Split the segment that straddles `at` so `at` becomes a segment boundary.
    fn split_at(&mut self, at: u64) {
        let Some((&k, v)) = self.map.range(..at).next_back() else { return };
        if k + v.len() > at {
            let v = v.clone();
            let head = at - k;
            self.map.insert(k, v.take(head));
            self.map.insert(at, v.skip(head));
        }
    }

    /// Segments overlapping `[start, start+len)`, clipped to it.
    pub fn range(&self, start: u64, len: u64) -> Vec<(u64, T)> {
        let end = start.saturating_add(len);
        let mut out = Vec::new();
        let first = self.map.range(..start).next_back().filter(|(k, v)| *k + v.len() > start).map(|(k, _)| *k);
        let from = first.unwrap_or(start);
        for (&k, v) in self.map.range(from..end) {
            let s = k.max(start);
            let e = (k + v.len()).min(end);
            if s < e {
                out.push((s, v.skip(s - k).take(e - s)));
            }
        }
        out
    }

    /// Is `[start, start+len)` free of segments?
    pub fn is_hole(&self, start: u64, len: u64) -> bool {
        self.range(start, len).is_empty()
    }

    /// Gaps (holes) inside `[start, start+len)` as (start, len).
    pub fn holes(&self, start: u64, len: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut pos = start;
        let end = start.saturating_add(len);
        for (s, v) in self.range(start, len) {
            if s > pos {
                out.push((pos, s - pos));
            }
            pos = s + v.len();
        }
        if pos < end {
            out.push((pos, end - pos));
        }
        out
    }

    /// Insert a segment into a hole; false (and no change) if it would overlap.
    pub fn insert(&mut self, start: u64, seg: T) -> bool {
        if seg.len() == 0 || !self.is_hole(start, seg.len()) {
            return false;
        }
        self.map.insert(start, seg);
        true
    }

    /// Remove everything inside `[start, start+len)`, returning the removed pieces.
    pub fn remove(&mut self, start: u64, len: u64) -> Vec<(u64, T)> {
        let end = start.saturating_add(len);
        self.split_at(start);
        self.split_at(end);
        let keys: Vec<u64> = self.map.range(start..end).map(|(k, _)| *k).collect();
        keys.into_iter().map(|k| (k, self.map.remove(&k).unwrap())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_insert_remove() {
        let mut m = ExtentMap::new();
        assert!(m.insert(10, Run { lba: 100, len: 10 }));
        assert!(!m.insert(15, Run { lba: 0, len: 1 }));
        assert_eq!(m.range(12, 3), vec![(12, Run { lba: 102, len: 3 })]);
        assert_eq!(m.holes(0, 30), vec![(0, 10), (20, 10)]);
        let r = m.remove(12, 3);
        assert_eq!(r, vec![(12, Run { lba: 102, len: 3 })]);
        assert_eq!(m.blocks(), 7);
        assert_eq!(m.range(0, 100), vec![(10, Run { lba: 100, len: 2 }), (15, Run { lba: 105, len: 5 })]);
        assert_eq!(m.end(), 20);
    }
}
