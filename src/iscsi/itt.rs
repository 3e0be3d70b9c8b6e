//! Initiator Task Tag -> task slot in O(1). Initiators pick ITTs freely (RFC 7143 §11.2.1.8: unique
//! among the session's active tasks), so they cannot index the slots themselves: an open-addressed
//! table with linear probing, sized once at login to at least twice the slots (a power of two) so
//! it never grows and probes stay short, with backward-shift deletion (no tombstones to pile up
//! across millions of commands).

/// An entry's slot when empty.
const EMPTY: u32 = u32::MAX;

#[derive(Debug, PartialEq, Eq)]
pub enum IttError {
    /// The tag names a task that is still active (a protocol error).
    Duplicate,
    /// 0xffffffff is reserved (RFC 7143 §11.2.1.8), or the table is full.
    Refused,
}

pub struct IttMap {
    /// (itt, slot); slot EMPTY marks a free entry.
    entries: Vec<(u32, u32)>,
    mask: usize,
    len: usize,
}

impl IttMap {
    /// A map for at most `slots` active tasks.
    pub fn with_slots(slots: usize) -> IttMap {
        let n = (slots.max(1) * 2).next_power_of_two();
        IttMap { entries: vec![(0, EMPTY); n], mask: n - 1, len: 0 }
    }

    fn home(&self, itt: u32) -> usize {
        // Fibonacci hashing: sequential tags (what most initiators use) spread over the table.
        (itt.wrapping_mul(0x9e37_79b9) as usize) & self.mask
    }

    pub fn get(&self, itt: u32) -> Option<usize> {
        let mut i = self.home(itt);
        loop {
            let (k, v) = self.entries[i];
            if v == EMPTY {
                return None;
            }
            if k == itt {
                return Some(v as usize);
            }
            i = (i + 1) & self.mask;
        }
    }

    pub fn insert(&mut self, itt: u32, slot: usize) -> Result<(), IttError> {
        // One entry always stays empty so that every probe ends.
        if itt == u32::MAX || slot >= EMPTY as usize || self.len + 1 >= self.entries.len() {
            return Err(IttError::Refused);
        }
        let mut i = self.home(itt);
        loop {
            let (k, v) = self.entries[i];
            if v == EMPTY {
                self.entries[i] = (itt, slot as u32);
                self.len += 1;
                return Ok(());
            }
            if k == itt {
                return Err(IttError::Duplicate);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Forget `itt` if it maps to `slot`.
    pub fn remove(&mut self, itt: u32, slot: usize) {
        let mut i = self.home(itt);
        loop {
            let (k, v) = self.entries[i];
            if v == EMPTY {
                return;
            }
            if k == itt {
                if v as usize != slot {
                    return;
                }
                break;
            }
            i = (i + 1) & self.mask;
        }
        // Backward shift: move later entries of the probe run into the hole when their home
        // position does not lie cyclically in (hole, their position].
        let mut hole = i;
        let mut j = i;
        loop {
            j = (j + 1) & self.mask;
            let (k, v) = self.entries[j];
            if v == EMPTY {
                break;
            }
            let h = self.home(k);
            let stays = if hole <= j { hole < h && h <= j } else { hole < h || h <= j };
            if !stays {
                self.entries[hole] = (k, v);
                hole = j;
            }
        }
        self.entries[hole] = (0, EMPTY);
        self.len -= 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_refused_and_reuse_after_completion() {
        let mut m = IttMap::with_slots(4);
        assert_eq!(m.insert(7, 0), Ok(()));
        assert_eq!(m.insert(7, 1), Err(IttError::Duplicate));
        assert_eq!(m.insert(u32::MAX, 1), Err(IttError::Refused));
        assert_eq!(m.get(7), Some(0));
        // A stale removal (another slot) leaves the active task alone.
        m.remove(7, 3);
        assert_eq!(m.get(7), Some(0));
        m.remove(7, 0);
        assert_eq!(m.get(7), None);
        assert_eq!(m.insert(7, 2), Ok(()));
        assert_eq!(m.get(7), Some(2));
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn collisions_survive_removal_in_any_order() {
        let mut m = IttMap::with_slots(32);
        // Tags that share a home position (multiples of the table size after hashing collide
        // often; brute-force a colliding set).
        let home0 = m.home(1);
        let colliding: Vec<u32> = (1..1_000_000u32).filter(|&t| m.home(t) == home0).take(12).collect();
        assert_eq!(colliding.len(), 12);
        for (s, &t) in colliding.iter().enumerate() {
            m.insert(t, s).unwrap();
        }
        // Neighbours of the run too.
        for s in 0..8u32 {
            m.insert(0x1000 + s, 100 + s as usize).unwrap();
        }
        for (s, &t) in colliding.iter().enumerate().filter(|(s, _)| s % 3 == 1) {
            m.remove(t, s);
        }
        for (s, &t) in colliding.iter().enumerate() {
            assert_eq!(m.get(t), if s % 3 == 1 { None } else { Some(s) }, "tag {t}");
        }
        for s in 0..8u32 {
            assert_eq!(m.get(0x1000 + s), Some(100 + s as usize));
        }
    }

    #[test]
    fn model_check_against_a_hash_map() {
        use std::collections::HashMap;
        let mut m = IttMap::with_slots(64);
        let mut model: HashMap<u32, usize> = HashMap::new();
        let mut x = 0x1234_5678u32;
        for i in 0..200_000usize {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let itt = x % 300; // a small tag space: many collisions and duplicates
            if x & 1 == 0 && model.len() < 64 {
                let r = m.insert(itt, i % 1000);
                match model.get(&itt) {
                    Some(_) => assert_eq!(r, Err(IttError::Duplicate)),
                    None => {
                        assert_eq!(r, Ok(()));
                        model.insert(itt, i % 1000);
                    }
                }
            } else if let Some(&s) = model.get(&itt) {
                m.remove(itt, s);
                model.remove(&itt);
            }
            assert_eq!(m.get(itt), model.get(&itt).copied());
            assert_eq!(m.len(), model.len());
        }
    }
}
