//! Data-buffer budgets: how many bytes of command data (write data being gathered, read data not
//! yet on the wire) a protocol may hold, in all and per connection. A command that cannot get its
//! bytes waits in its connection until earlier ones give theirs back; nothing is allocated for it
//! meanwhile, so a client that never reads its socket, or sends commands it never completes, holds
//! at most its connection's share.
//!
//! The global count is one atomic, but connections take from it in chunks and keep what they gave
//! back as a local credit (as SPDK's per-thread buffer caches do), so a busy connection touches the
//! shared cache line once per chunk, not once per command. A connection with nothing outstanding
//! keeps no credit: thousands of idle connections hold nothing of the budget.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Bytes a connection takes from (or keeps of) the global budget at once.
pub const CHUNK: usize = 256 << 10;

/// A protocol's global budget.
#[derive(Debug)]
pub struct Budget {
    limit: AtomicUsize,
    used: AtomicUsize,
    /// Commands that had to wait for bytes (a counter for the stats call).
    waits: AtomicU64,
    high: AtomicUsize,
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget { limit: AtomicUsize::new(limit), used: AtomicUsize::new(0), waits: AtomicU64::new(0), high: AtomicUsize::new(0) })
    }

    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Bytes taken by connections now (their reservations and their cached credit).
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }

    /// Most bytes ever taken at once.
    pub fn high_water(&self) -> usize {
        self.high.load(Ordering::Relaxed)
    }

    /// Take `n` bytes if they fit. A request larger than the whole budget fits only when nothing
    /// else is taken, so an oversized command still runs, alone.
    fn take(&self, n: usize) -> bool {
        let limit = self.limit();
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            let next = cur + n;
            if next > limit && cur > 0 {
                return false;
            }
            match self.used.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    // Shared by every reactor: no locked write unless the mark actually rises.
                    if next > self.high.load(Ordering::Relaxed) {
                        self.high.fetch_max(next, Ordering::Relaxed);
                    }
                    return true;
                }
                Err(c) => cur = c,
            }
        }
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }
}

/// One connection's share: what its commands hold, within its own limit and the global budget.
#[derive(Debug)]
pub struct ConnBudget {
    global: Arc<Budget>,
    limit: usize,
    held: usize,
    /// Taken from the global budget and not reserved by a command.
    credit: usize,
}

impl ConnBudget {
    pub fn new(global: Arc<Budget>, limit: usize) -> ConnBudget {
        ConnBudget { global, limit, held: 0, credit: 0 }
    }

    /// Bytes this connection's commands hold now.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Reserve `n` bytes for one command. A command larger than the connection's limit is let
    /// through when the connection holds nothing, so every command can eventually run.
    pub fn try_reserve(&mut self, n: usize) -> bool {
        if n == 0 {
            return true;
        }
        if self.held > 0 && self.held + n > self.limit {
            return false;
        }
        if self.credit < n {
            let short = n - self.credit;
            let want = short.max(CHUNK);
            if self.global.take(want) {
                self.credit += want;
            } else if want > short && self.global.take(short) {
                self.credit += short;
            } else {
                return false;
            }
        }
        self.credit -= n;
        self.held += n;
        true
    }

    /// Count one command that has to wait (for the stats call).
    pub fn note_wait(&self) {
        self.global.waits.fetch_add(1, Ordering::Relaxed);
    }

    /// Give back `n` bytes a command held. Credit beyond a chunk returns to the global budget, all
    /// of it once the connection holds nothing.
    pub fn release(&mut self, n: usize) {
        debug_assert!(n <= self.held, "released more than held");
        let n = n.min(self.held);
        self.held -= n;
        self.credit += n;
        let keep = if self.held == 0 { 0 } else { CHUNK };
        if self.credit > keep {
            self.global.give(self.credit - keep);
            self.credit = keep;
        }
    }
}

impl Drop for ConnBudget {
    fn drop(&mut self) {
        self.global.give(self.held + self.credit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_connection_and_global_limits() {
        let g = Budget::new(8 * CHUNK);
        let mut a = ConnBudget::new(g.clone(), 4 * CHUNK);
        let mut b = ConnBudget::new(g.clone(), 6 * CHUNK);
        assert!(a.try_reserve(3 * CHUNK));
        assert!(!a.try_reserve(2 * CHUNK), "per-connection limit");
        assert!(b.try_reserve(5 * CHUNK));
        assert!(!b.try_reserve(CHUNK), "global limit");
        a.release(3 * CHUNK);
        // a holds nothing now: all its credit went back.
        assert_eq!(g.used(), 5 * CHUNK);
        assert!(b.try_reserve(CHUNK / 2));
        drop(a);
        drop(b);
        assert_eq!(g.used(), 0);
        assert!(g.high_water() <= 8 * CHUNK);
    }

    #[test]
    fn an_oversized_command_runs_alone() {
        let g = Budget::new(2 * CHUNK);
        let mut a = ConnBudget::new(g.clone(), CHUNK);
        assert!(a.try_reserve(4 * CHUNK));
        assert!(!a.try_reserve(1));
        let mut b = ConnBudget::new(g.clone(), CHUNK);
        assert!(!b.try_reserve(1), "the global budget is spent while the big one runs");
        a.release(4 * CHUNK);
        drop(a);
        assert!(b.try_reserve(CHUNK));
    }
}
