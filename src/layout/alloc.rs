//! Space accounting: the free-extent tree (first-fit allocator) and the reference counts of owned
//! blocks. A block is free exactly when its reference count is zero; a reference is a file map
//! entry (written data, shared by reflinks) or a grant's pending (unwritten) extent.

use std::collections::BTreeMap;

use super::error::LayoutError;

/// Free extents by start block, coalesced (no two touch).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FreeTree {
    free: BTreeMap<u64, u64>,
}

impl FreeTree {
    /// All of `[0, blocks)` free.
    pub fn new(blocks: u64) -> Self {
        let mut free = BTreeMap::new();
        if blocks > 0 {
            free.insert(0, blocks);
        }
        FreeTree { free }
    }
    pub fn free_blocks(&self) -> u64 {
        self.free.values().sum()
    }
    pub fn extents(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.free.iter().map(|(a, b)| (*a, *b))
    }

    /// Pick up to `len` blocks first-fit (may be several extents); does not take them.
    pub fn plan(&self, len: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut want = len;
        // Prefer one extent large enough (contiguous data), else gather first-fit pieces.
        if let Some((&s, _)) = self.free.iter().find(|(_, &l)| l >= len) {
            return vec![(s, len)];
        }
        for (&s, &l) in &self.free {
            if want == 0 {
                break;
            }
            let n = l.min(want);
            out.push((s, n));
            want -= n;
        }
        out
    }

    /// Remove `[start, start+len)` from the free space; it must be wholly free.
    pub fn take(&mut self, start: u64, len: u64) -> Result<(), LayoutError> {
        let Some((&s, &l)) = self.free.range(..=start).next_back() else {
            return Err(LayoutError::Corrupt(format!("blocks {start}+{len} are not free")));
        };
        if s + l < start + len {
            return Err(LayoutError::Corrupt(format!("blocks {start}+{len} are not free")));
        }
        self.free.remove(&s);
        if start > s {
            self.free.insert(s, start - s);
        }
        if s + l > start + len {
            self.free.insert(start + len, s + l - start - len);
        }
        Ok(())
    }

    /// Return `[start, start+len)` to the free space; none of it may be free already.
    pub fn give(&mut self, start: u64, len: u64) -> Result<(), LayoutError> {
        let end = start + len;
        let prev = self.free.range(..end).next_back().map(|(a, b)| (*a, *b));
        if let Some((s, l)) = prev {
            if s + l > start {
                return Err(LayoutError::Corrupt(format!("blocks {start}+{len} freed twice")));
            }
        }
        let (mut ns, mut nl) = (start, len);
        if let Some((s, l)) = prev {
            if s + l == start {
                self.free.remove(&s);
                ns = s;
                nl += l;
            }
        }
        if let Some(l) = self.free.remove(&end) {
            nl += l;
        }
        self.free.insert(ns, nl);
        Ok(())
    }
}

/// Reference counts of owned blocks, as non-overlapping runs with a count ≥ 1. A persistent map:
/// it has a run per allocation, and the state (with it) is copied by every operation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RefMap {
    runs: imbl::OrdMap<u64, (u64, u32)>,
}

impl RefMap {
    fn split_at(&mut self, at: u64) {
        let Some((&s, &(l, c))) = self.runs.range(..at).next_back() else { return };
        if s + l > at {
            self.runs.insert(s, (at - s, c));
            self.runs.insert(at, (s + l - at, c));
        }
    }

    /// Highest count over `[start, start+len)` (0 where unowned) and whether all of it is owned.
    pub fn max_count(&self, start: u64, len: u64) -> (u32, bool) {
        let end = start + len;
        let mut pos = start;
        let mut max = 0;
        let mut all = true;
        let from = self.runs.range(..=start).next_back().map(|(s, _)| *s).unwrap_or(start);
        for (&s, &(l, c)) in self.runs.range(from..end) {
            if s + l <= start {
                continue;
            }
            if s > pos {
                all = false;
            }
            max = max.max(c);
            pos = s + l;
        }
        if pos < end {
            all = false;
        }
        (max, all)
    }

    /// Add one reference to every block of the run. With `from_free` the run must be unowned
    /// (a fresh allocation); otherwise it must be owned already (a new reference to shared data).
    pub fn incr(&mut self, start: u64, len: u64, from_free: bool) -> Result<(), LayoutError> {
        let (max, all) = self.max_count(start, len);
        if from_free && max != 0 {
            return Err(LayoutError::Corrupt(format!("blocks {start}+{len} allocated while owned")));
        }
        if !from_free && !all {
            return Err(LayoutError::Corrupt(format!("blocks {start}+{len} referenced while free")));
        }
        if from_free {
            self.runs.insert(start, (len, 1));
            return Ok(());
        }
        self.split_at(start);
        self.split_at(start + len);
        let keys: Vec<u64> = self.runs.range(start..start + len).map(|(k, _)| *k).collect();
        for k in keys {
            if let Some(v) = self.runs.get_mut(&k) {
                v.1 += 1;
            }
        }
        Ok(())
    }

    /// Drop one reference from every block of the run; returns the runs that became free.
    pub fn decr(&mut self, start: u64, len: u64) -> Result<Vec<(u64, u64)>, LayoutError> {
        if !self.max_count(start, len).1 {
            return Err(LayoutError::Corrupt(format!("blocks {start}+{len} released while free")));
        }
        self.split_at(start);
        self.split_at(start + len);
        let keys: Vec<u64> = self.runs.range(start..start + len).map(|(k, _)| *k).collect();
        let mut freed = Vec::new();
        for k in keys {
            let v = self.runs.get_mut(&k).unwrap();
            v.1 -= 1;
            if v.1 == 0 {
                let l = v.0;
                self.runs.remove(&k);
                match freed.last_mut() {
                    Some((s, fl)) if *s + *fl == k => *fl += l,
                    _ => freed.push((k, l)),
                }
            }
        }
        Ok(freed)
    }

    /// `[start, start+len)` cut where the count changes: (start, len, count), 0 where unowned.
    pub fn pieces(&self, start: u64, len: u64) -> Vec<(u64, u64, u32)> {
        let end = start + len;
        let mut out = Vec::new();
        let mut pos = start;
        let from = self.runs.range(..=start).next_back().map(|(s, _)| *s).unwrap_or(start);
        for (&s, &(l, c)) in self.runs.range(from..end) {
            if s + l <= start {
                continue;
            }
            if s > pos {
                out.push((pos, s - pos, 0));
            }
            let a = s.max(start);
            let b = (s + l).min(end);
            out.push((a, b - a, c));
            pos = b;
        }
        if pos < end {
            out.push((pos, end - pos, 0));
        }
        out
    }

    pub fn runs(&self) -> impl Iterator<Item = (u64, u64, u32)> + '_ {
        self.runs.iter().map(|(s, (l, c))| (*s, *l, *c))
    }
    pub fn owned_blocks(&self) -> u64 {
        self.runs.values().map(|v| v.0).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_give_coalesce() {
        let mut f = FreeTree::new(100);
        f.take(10, 5).unwrap();
        assert!(f.take(12, 1).is_err());
        assert_eq!(f.free_blocks(), 95);
        f.take(0, 10).unwrap();
        f.give(10, 5).unwrap();
        assert!(f.give(12, 1).is_err());
        f.give(0, 10).unwrap();
        assert_eq!(f.extents().collect::<Vec<_>>(), vec![(0, 100)]);
    }

    #[test]
    fn refs() {
        let mut r = RefMap::default();
        r.incr(0, 10, true).unwrap();
        assert!(r.incr(5, 10, true).is_err());
        assert!(r.incr(5, 10, false).is_err());
        r.incr(2, 3, false).unwrap();
        assert_eq!(r.max_count(0, 10), (2, true));
        assert_eq!(r.decr(0, 10).unwrap(), vec![(0, 2), (5, 5)]);
        assert_eq!(r.decr(2, 3).unwrap(), vec![(2, 3)]);
        assert_eq!(r.owned_blocks(), 0);
    }
}
