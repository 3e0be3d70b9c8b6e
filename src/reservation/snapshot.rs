//! The immutable view the I/O path checks: built by the engine after every change and published
//! through an `ArcSwap`, so `Volume::submit` reads it with a few loads and no lock.

use super::nexus::{Nexus, NexusRef};
use super::state::PrState;
use super::types::{allowed, allowed_under_spc2, CommandClass, Relation, ResType};

#[derive(Debug, Default)]
pub struct Snapshot {
    /// Publication number (every commit publishes a new one).
    pub seq: u64,
    res: Option<Held>,
    /// Registrations: (fingerprint, index) sorted by fingerprint, exact and ALL_TG_PT forms.
    table: Vec<(u64, u32)>,
    regs: Vec<(Nexus, bool)>,
    /// The key of each registration (same index as `regs`).
    keys: Vec<u64>,
    /// SPC-2 RESERVE(6)/(10) holder.
    spc2: Option<Nexus>,
}

#[derive(Debug)]
struct Held {
    rtype: ResType,
    /// The holder's registration (None for all-registrants types: every registrant holds it).
    holder: Option<(Nexus, bool)>,
}

impl Snapshot {
    pub fn build(seq: u64, s: &PrState, spc2: Option<&Nexus>) -> Snapshot {
        let res = s.reservation.map(|r| Held {
            rtype: r.rtype,
            holder: if r.rtype.all_registrants() {
                None
            } else {
                s.holder().map(|h| (h.nexus.clone(), h.all_tg_pt))
            },
        });
        let regs: Vec<(Nexus, bool)> = s.registrants.iter().map(|g| (g.nexus.clone(), g.all_tg_pt)).collect();
        let mut table: Vec<(u64, u32)> =
            regs.iter().enumerate().map(|(i, (n, all))| (n.as_ref().fingerprint(!all), i as u32)).collect();
        table.sort_unstable();
        let keys = s.registrants.iter().map(|g| g.key).collect();
        Snapshot { seq, res, table, regs, keys, spc2: spc2.cloned() }
    }

    /// Nothing reserved at all: the common case costs one branch.
    #[inline]
    pub fn is_open(&self) -> bool {
        self.res.is_none() && self.spc2.is_none()
    }

    /// May `who` run a command of `class`? (SPC-4 5.13.1 Table 66, SBC-3 Table 13, SPC-2 5.5.1.)
    #[inline]
    pub fn check(&self, who: NexusRef, class: CommandClass) -> bool {
        if self.is_open() {
            return true;
        }
        self.check_slow(who, class)
    }

    fn check_slow(&self, who: NexusRef, class: CommandClass) -> bool {
        if let Some(h) = &self.spc2 {
            if !who.matches(h, false) && !allowed_under_spc2(class) {
                return false;
            }
        }
        let Some(r) = &self.res else { return true };
        if class == CommandClass::Always || class == CommandClass::PrOut {
            return true;
        }
        if let Some((n, all)) = &r.holder {
            if who.matches(n, *all) {
                return true;
            }
        }
        let rel = if self.registered(who) {
            if r.holder.is_none() {
                Relation::Holder
            } else {
                Relation::Registered
            }
        } else {
            Relation::Unregistered
        };
        allowed(class, r.rtype, rel)
    }

    /// The key `who` registered, if any (lock-free, no allocation: the layout guard maps a nexus
    /// to its pNFS client by it).
    #[inline]
    pub fn key_of(&self, who: NexusRef) -> Option<u64> {
        if self.regs.is_empty() {
            return None;
        }
        self.find(who, who.fingerprint(true))
            .or_else(|| if who.has_target_port() { self.find(who, who.fingerprint(false)) } else { None })
            .map(|i| self.keys[i])
    }

    fn find(&self, who: NexusRef, fp: u64) -> Option<usize> {
        let start = self.table.partition_point(|e| e.0 < fp);
        self.table[start..].iter().take_while(|e| e.0 == fp).map(|&(_, i)| i as usize).find(|&i| {
            let (n, all) = &self.regs[i];
            who.matches(n, *all)
        })
    }

    fn registered(&self, who: NexusRef) -> bool {
        // An NVMe nexus has one fingerprint: look it up once.
        self.lookup(who, who.fingerprint(true)) || (who.has_target_port() && self.lookup(who, who.fingerprint(false)))
    }

    fn lookup(&self, who: NexusRef, fp: u64) -> bool {
        let start = self.table.partition_point(|e| e.0 < fp);
        self.table[start..].iter().take_while(|e| e.0 == fp).any(|&(_, i)| {
            let (n, all) = &self.regs[i as usize];
            who.matches(n, *all)
        })
    }
}
