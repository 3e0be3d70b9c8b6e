//! Sets of blocks as sorted, merged, half-open ranges `[start, end)`: the guard's data ranges and
//! the durable written-block runs of grants.

/// Sort and merge (touching ranges join).
pub fn merge(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            Some(l) if l.1 >= s => l.1 = l.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// Take `[s, e)` out of sorted, merged ranges.
pub fn remove_range(v: &mut Vec<(u64, u64)>, s: u64, e: u64) {
    let i = v.partition_point(|r| r.1 <= s);
    let j = v.partition_point(|r| r.0 < e);
    if i >= j {
        return;
    }
    let (first, last) = (v[i], v[j - 1]);
    let mut keep = [(0, 0); 2];
    let mut k = 0;
    if first.0 < s {
        keep[k] = (first.0, s);
        k += 1;
    }
    if last.1 > e {
        keep[k] = (e, last.1);
        k += 1;
    }
    v.splice(i..j, keep[..k].iter().copied());
}

/// Add `[s, e)` to sorted, merged ranges, keeping them so (a copy, no sort).
pub fn insert_merged(v: &mut Vec<(u64, u64)>, s: u64, e: u64) {
    // First range that ends at or after s (could touch or overlap), last that starts at or before e.
    let i = v.partition_point(|r| r.1 < s);
    let j = v.partition_point(|r| r.0 <= e);
    if i == j {
        v.insert(i, (s, e));
    } else {
        let merged = (v[i].0.min(s), v[j - 1].1.max(e));
        v.splice(i..j, std::iter::once(merged));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_merged_keeps_ranges_merged() {
        let mut v = vec![(10, 20), (30, 40)];
        insert_merged(&mut v, 0, 5);
        insert_merged(&mut v, 20, 25);
        insert_merged(&mut v, 50, 60);
        assert_eq!(v, vec![(0, 5), (10, 25), (30, 40), (50, 60)]);
        insert_merged(&mut v, 5, 50);
        assert_eq!(v, vec![(0, 60)]);
        assert_eq!(v, merge(vec![(0, 5), (10, 25), (30, 40), (50, 60), (5, 50)]));
        remove_range(&mut v, 10, 20);
        assert_eq!(v, vec![(0, 10), (20, 60)]);
        remove_range(&mut v, 5, 25);
        remove_range(&mut v, 100, 200);
        assert_eq!(v, vec![(0, 5), (25, 60)]);
        remove_range(&mut v, 0, 60);
        assert!(v.is_empty());
    }
}
