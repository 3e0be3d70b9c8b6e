//! The data-path guard: per layout volume, decides for each I/O whether a write may land and which
//! blocks of a read must come back as zeros, and records blocks written into unwritten extents.
//!
//! The store publishes an immutable [`Snapshot`] of the volume's layout (device LBAs) after every
//! change; reactors read it through `ArcSwap::load`, which takes no lock and does not allocate.
//! Written-since-allocation bits are set with an atomic OR on the shared bitmaps, so the I/O path
//! takes no lock either. Everything here is in device blocks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;

use super::bitmap::Bitmap;
use super::ranges::{insert_merged, merge, remove_range};
use super::state::{Record, State};
use super::types::{IoMode, Policy};

/// Who issued an I/O, as far as the guard can tell: the PR key its nexus registered (from the
/// reservation engine's snapshot), its initiator name (iSCSI) or host NQN (NVMe), its NVMe host
/// identifier. Matched in that order.
#[derive(Clone, Copy, Debug, Default)]
pub struct Who<'a> {
    pub key: Option<u64>,
    pub name: Option<&'a str>,
    pub host_id: Option<&'a [u8; 16]>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteVerdict {
    /// Let it through; nothing to record.
    Allow,
    /// Let it through and, when it succeeds, record its blocks as written (it touches unwritten
    /// extents).
    Track,
    /// Refuse (outside the client's read/write grants, or client unknown or fenced).
    Refuse,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadVerdict {
    /// Every block holds data the reader may see.
    Data,
    /// No block does: answer zeros without touching the device.
    Zeros,
    /// Some do: read, then zero the others.
    Mixed,
}

/// Unwritten blocks of a grant, device blocks `[start, end)`: a set bit marks a block its holder
/// (client `owner`) has written since allocation; only the holder may read those back before
/// commit.
#[derive(Debug)]
struct Pend {
    start: u64,
    end: u64,
    bits: Arc<Bitmap>,
    bit_off: u64,
    owner: u32,
}

#[derive(Debug, Default)]
struct ClientView {
    fenced: bool,
    /// Sorted, merged device ranges the client may write.
    rw: Vec<(u64, u64)>,
}

/// The layout as the data path sees it.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Device ranges holding file data, sorted and merged; shared between snapshots until a
    /// change to the file maps (most changes only touch grants).
    data: Arc<Vec<(u64, u64)>>,
    /// Grants' unwritten extents, sorted; never overlap `data`.
    pending: Vec<Pend>,
    by_name: HashMap<String, u32>,
    by_key: HashMap<u64, u32>,
    by_host_id: HashMap<[u8; 16], u32>,
    clients: Vec<ClientView>,
}

/// An NVMe host identifier written as a UUID or 32 hex digits.
fn parse_host_id(s: &str) -> Option<[u8; 16]> {
    uuid::Uuid::parse_str(s).ok().map(|u| *u.as_bytes())
}

impl Snapshot {
    /// The data ranges of every file map (device blocks, merged).
    pub fn data_of(st: &State) -> Arc<Vec<(u64, u64)>> {
        let r = st.sb.ratio();
        let mut data = Vec::new();
        for f in st.files.values() {
            data.extend(f.map.iter().map(|(_, run)| (run.lba * r, (run.lba + run.len) * r)));
        }
        Arc::new(merge(data))
    }

    /// The data ranges after a transaction's `recs` (applied to `old`, giving `st`), from those
    /// of `prev`: shared when no map changed; otherwise only the device ranges the records
    /// mapped or unmapped are re-derived (a block is data while some file maps it: referenced
    /// and not a grant's unwritten block), so the cost does not grow with the number of files.
    pub fn data_after(prev: &Snapshot, old: &State, st: &State, recs: &[Record]) -> Arc<Vec<(u64, u64)>> {
        let mut cand: Vec<(u64, u64)> = Vec::new();
        for rec in recs {
            match rec {
                Record::MapSet { lba, len, .. } => cand.push((*lba, lba + len)),
                Record::MapClear { file, fblk, len } => {
                    if let Some(f) = old.files.get(file) {
                        cand.extend(f.map.range(*fblk, *len).into_iter().map(|(_, run)| (run.lba, run.lba + run.len)));
                    }
                }
                _ => {}
            }
        }
        if cand.is_empty() {
            return prev.data.clone();
        }
        let r = st.sb.ratio();
        let pending = merge(st.grants.values().flat_map(|g| g.pending.iter().map(|(_, p)| (p.lba, p.lba + p.len))).collect());
        let mut v = Vec::with_capacity(prev.data.len() + cand.len());
        v.extend_from_slice(&prev.data);
        for (s, e) in merge(cand) {
            remove_range(&mut v, s * r, e * r);
            for (a, n, count) in st.refs.pieces(s, e - s) {
                if count == 0 {
                    continue;
                }
                // Referenced: data, except where a grant holds it unwritten.
                let mut pos = a;
                let end = a + n;
                for &(ps, pe) in &pending[pending.partition_point(|p| p.1 <= a)..] {
                    if ps >= end {
                        break;
                    }
                    if ps > pos {
                        insert_merged(&mut v, pos * r, ps * r);
                    }
                    pos = pos.max(pe);
                }
                if pos < end {
                    insert_merged(&mut v, pos * r, end * r);
                }
            }
        }
        Arc::new(v)
    }

    /// The data ranges this snapshot holds (tests compare them with a full rebuild).
    pub fn data_ranges(&self) -> &[(u64, u64)] {
        &self.data
    }

    /// Everything from the state (opening a volume).
    pub fn build(st: &State) -> Snapshot {
        Snapshot::build_with(st, Snapshot::data_of(st))
    }

    pub fn build_with(st: &State, data: Arc<Vec<(u64, u64)>>) -> Snapshot {
        let r = st.sb.ratio();
        let index: HashMap<&str, u32> = st.clients.keys().enumerate().map(|(i, id)| (id.as_str(), i as u32)).collect();
        let mut pending = Vec::new();
        for g in st.grants.values() {
            let owner = index.get(g.head.client.as_str()).copied().unwrap_or(u32::MAX);
            for (_, p) in g.pending.iter() {
                pending.push(Pend { start: p.lba * r, end: (p.lba + p.len) * r, bits: p.bits.clone(), bit_off: p.bit_off, owner });
            }
        }
        pending.sort_unstable_by_key(|s| s.start);
        let mut snap = Snapshot { data, pending, ..Default::default() };
        for (i, (id, c)) in st.clients.iter().enumerate() {
            let i = i as u32;
            snap.by_key.insert(c.key, i);
            for ident in &c.identities {
                snap.by_name.insert(ident.clone(), i);
                if let Some(h) = parse_host_id(ident) {
                    snap.by_host_id.insert(h, i);
                }
            }
            let mut rw = Vec::new();
            if !c.fenced {
                for g in st.grants.values().filter(|g| &g.head.client == id && g.head.iomode == IoMode::Rw) {
                    rw.extend(g.pending.iter().map(|(_, p)| (p.lba * r, (p.lba + p.len) * r)));
                    if let Some(f) = st.files.get(&g.head.file) {
                        for (_, run) in f.map.range(g.head.off, g.head.len) {
                            // Shared blocks are never written in place (copy-on-write).
                            for (lba, n, count) in st.refs.pieces(run.lba, run.len) {
                                if count == 1 {
                                    rw.push((lba * r, (lba + n) * r));
                                }
                            }
                        }
                    }
                }
            }
            snap.clients.push(ClientView { fenced: c.fenced, rw: merge(rw) });
        }
        snap
    }

    fn client_index(&self, who: &Who) -> Option<u32> {
        who.key
            .and_then(|k| self.by_key.get(&k))
            .or_else(|| who.name.and_then(|n| self.by_name.get(n)))
            .or_else(|| who.host_id.and_then(|h| self.by_host_id.get(h)))
            .copied()
    }

    fn client(&self, who: &Who) -> Option<&ClientView> {
        self.clients.get(self.client_index(who)? as usize)
    }

    /// Index of the first unwritten extent ending after `lba`.
    fn first_pending(&self, lba: u64) -> usize {
        self.pending.partition_point(|s| s.end <= lba)
    }

    fn pending_in(&self, lba: u64, end: u64) -> impl Iterator<Item = &Pend> {
        self.pending[self.first_pending(lba)..].iter().take_while(move |s| s.start < end)
    }

    fn touches_pending(&self, lba: u64, end: u64) -> bool {
        self.pending_in(lba, end).next().is_some()
    }

    /// Walk `[lba, end)` calling `f(start, end, readable)` for each piece, in order, as `reader`
    /// (a client index, or `NOBODY`) may see it. Data and unwritten extents never overlap, so
    /// the two sorted lists are merged on the fly.
    fn walk(&self, reader: u32, lba: u64, end: u64, mut f: impl FnMut(u64, u64, bool)) {
        let mut pos = lba;
        let mut di = self.data.partition_point(|d| d.1 <= lba);
        let mut pi = self.first_pending(lba);
        loop {
            let d = self.data.get(di).filter(|d| d.0 < end);
            let p = self.pending.get(pi).filter(|p| p.start < end);
            let (start, stop, pend) = match (d, p) {
                (Some(d), Some(p)) if d.0 <= p.start => (d.0, d.1, None),
                (_, Some(p)) => (p.start, p.end, Some(p)),
                (Some(d), None) => (d.0, d.1, None),
                (None, None) => break,
            };
            if start > pos {
                f(pos, start, false);
                pos = start;
            }
            let e = stop.min(end);
            match pend {
                None => {
                    f(pos, e, true);
                    di += 1;
                }
                // Someone else's uncommitted blocks are not part of any file yet: zeros.
                Some(s) if s.owner != reader => {
                    f(pos, e, false);
                    pi += 1;
                }
                Some(s) => {
                    let mut a = pos;
                    while a < e {
                        let set = s.bits.get(s.bit_off + a - s.start);
                        let mut b = a + 1;
                        while b < e && s.bits.get(s.bit_off + b - s.start) == set {
                            b += 1;
                        }
                        f(a, b, set);
                        a = b;
                    }
                    pi += 1;
                }
            }
            pos = e;
        }
        if pos < end {
            f(pos, end, false);
        }
    }
}

/// The reader index of an I/O whose nexus maps to no client (matches no grant's owner).
pub const NOBODY: u32 = u32::MAX - 1;
#[derive(Debug, Default, Serialize)]
pub struct Counters {
    pub writes_refused: AtomicU64,
    pub writes_audited: AtomicU64,
    pub writes_tracked: AtomicU64,
    pub reads_zero_filled: AtomicU64,
    pub reads_audited: AtomicU64,
}

#[derive(Debug)]
pub struct Guard {
    pub volume: String,
    policy: AtomicU8,
    snap: ArcSwap<Snapshot>,
    pub counters: Counters,
    pub block_size: u32,
    /// Identities of the metadata server: its writes are allowed anywhere (reads still zero-fill).
    trusted: ArcSwap<Vec<String>>,
    /// Bits were set since the store last made them durable.
    dirty: AtomicBool,
    /// The store's thread that makes written bits durable (see [`Guard::persist_then`]).
    persister: arc_swap::ArcSwapOption<Sender<PersistDone>>,
}

/// Called once the written-since-allocation bits set so far are durable (`true`) or could not be
/// made so (`false`).
pub type PersistDone = Box<dyn FnOnce(bool) + Send>;

impl Guard {
    pub fn new(volume: &str, policy: Policy, block_size: u32) -> Guard {
        Guard { volume: volume.to_string(), policy: AtomicU8::new(policy as u8), snap: ArcSwap::from_pointee(Snapshot::default()), counters: Counters::default(), block_size, trusted: ArcSwap::from_pointee(Vec::new()), dirty: AtomicBool::new(false), persister: Default::default() }
    }
    pub fn policy(&self) -> Policy {
        match self.policy.load(Ordering::Relaxed) {
            0 => Policy::Enforce,
            1 => Policy::Audit,
            _ => Policy::Off,
        }
    }
    pub fn set_policy(&self, p: Policy) {
        self.policy.store(p as u8, Ordering::Relaxed);
    }
    pub fn set_trusted(&self, ids: Vec<String>) {
        self.trusted.store(Arc::new(ids));
    }

    fn is_trusted(&self, who: &Who) -> bool {
        who.name.is_some_and(|n| self.trusted.load().iter().any(|t| t == n))
    }

    /// The layout the data path sees now (management side: a base for the next one).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snap.load_full()
    }

    /// Install a new layout (management side).
    pub fn publish(&self, snap: Snapshot) {
        self.snap.store(Arc::new(snap));
    }

    /// May `who` write device blocks `[lba, lba+n)`?
    pub fn check_write(&self, who: &Who, lba: u64, n: u64) -> WriteVerdict {
        let policy = self.policy();
        if policy == Policy::Off {
            return WriteVerdict::Allow;
        }
        let snap = self.snap.load();
        let end = lba.saturating_add(n);
        let ok = snap.client(who).is_some_and(|c| {
            !c.fenced && {
                let i = c.rw.partition_point(|r| r.1 <= lba);
                c.rw.get(i).is_some_and(|r| r.0 <= lba && r.1 >= end)
            }
        });
        if !ok && !self.is_trusted(who) {
            if policy == Policy::Enforce {
                self.counters.writes_refused.fetch_add(1, Ordering::Relaxed);
                return WriteVerdict::Refuse;
            }
            let k = self.counters.writes_audited.fetch_add(1, Ordering::Relaxed) + 1;
            // Log the 1st, 2nd, 4th, 8th... so a misbehaving client cannot flood the log.
            if k.is_power_of_two() {
                tracing::warn!(volume = %self.volume, lba, n, count = k, "audit: write outside the client's rw grants");
            }
        }
        if snap.touches_pending(lba, end) {
            WriteVerdict::Track
        } else {
            WriteVerdict::Allow
        }
    }

    /// The reader identity `check_read` and `zero_fill` take: the client index of `who` in the
    /// current layout (`NOBODY` when it maps to none). A layout change between calls only ever
    /// hides more (a stale index misses the reader's pending blocks), never exposes.
    pub fn reader(&self, who: &Who) -> u32 {
        self.snap.load().client_index(who).unwrap_or(NOBODY)
    }

    /// Does `[lba, lba+n)` touch a grant's unwritten blocks? Only then does a read's outcome
    /// depend on who reads (the hook skips identifying the reader otherwise).
    pub fn touches_pending(&self, lba: u64, n: u64) -> bool {
        self.policy() != Policy::Off && self.snap.load().touches_pending(lba, lba.saturating_add(n))
    }

    /// Which blocks of a read of `[lba, lba+n)` by `reader` (see [`Guard::reader`]) hold data it
    /// may see?
    pub fn check_read(&self, reader: u32, lba: u64, n: u64) -> ReadVerdict {
        let policy = self.policy();
        if policy == Policy::Off {
            return ReadVerdict::Data;
        }
        let snap = self.snap.load();
        let (mut data, mut zero) = (false, false);
        snap.walk(reader, lba, lba.saturating_add(n), |_, _, readable| if readable { data = true } else { zero = true });
        let v = match (data, zero) {
            (_, false) => ReadVerdict::Data,
            (false, true) => ReadVerdict::Zeros,
            (true, true) => ReadVerdict::Mixed,
        };
        if v != ReadVerdict::Data && policy == Policy::Audit {
            let k = self.counters.reads_audited.fetch_add(1, Ordering::Relaxed) + 1;
            if k.is_power_of_two() {
                tracing::warn!(volume = %self.volume, lba, n, count = k, "audit: read of blocks never written since allocation");
            }
            return ReadVerdict::Data;
        }
        if v != ReadVerdict::Data {
            self.counters.reads_zero_filled.fetch_add(1, Ordering::Relaxed);
        }
        v
    }

    /// Zero the blocks of a completed read that nobody may see (buf holds `[lba, lba+n)`).
    pub fn zero_fill(&self, reader: u32, lba: u64, n: u64, buf: &mut [u8]) {
        if self.policy() != Policy::Enforce {
            return;
        }
        let bs = self.block_size as usize;
        let snap = self.snap.load();
        snap.walk(reader, lba, lba.saturating_add(n), |s, e, readable| {
            if !readable {
                let a = ((s - lba) as usize * bs).min(buf.len());
                let b = ((e - lba) as usize * bs).min(buf.len());
                buf[a..b].fill(0);
            }
        });
    }

    /// Have bits been set since they were last made durable?
    pub fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::Acquire)
    }
    /// Claim the dirty state (the store is about to save every bit set so far).
    pub fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::AcqRel)
    }
    /// Saving failed: the bits stay dirty.
    pub fn set_dirty(&self) {
        self.dirty.store(true, Ordering::Release);
    }
    pub fn set_persister(&self, tx: Option<Sender<PersistDone>>) {
        self.persister.store(tx.map(Arc::new));
    }
    /// Make the bits set so far durable, then call `done` (from the store's thread, or at once
    /// when nothing is dirty or no store listens). The volume does this for a flush or FUA write:
    /// like a write cache, the bits are durable when the initiator asked for durability.
    pub fn persist_then(&self, done: PersistDone) {
        if !self.is_dirty() {
            return done(true);
        }
        match &*self.persister.load() {
            Some(tx) => {
                if let Err(e) = tx.send(done) {
                    (e.0)(false);
                }
            }
            None => done(true),
        }
    }

    /// Record a completed write of `[lba, lba+n)` in the written-since-allocation bits.
    pub fn mark_written(&self, lba: u64, n: u64) {
        let snap = self.snap.load();
        let end = lba.saturating_add(n);
        for s in snap.pending_in(lba, end) {
            let a = lba.max(s.start);
            let b = end.min(s.end);
            s.bits.set_range(s.bit_off + a - s.start, b - a);
        }
        if !self.dirty.load(Ordering::Relaxed) {
            self.dirty.store(true, Ordering::Release);
        }
        self.counters.writes_tracked.fetch_add(1, Ordering::Relaxed);
    }

    pub fn counters_json(&self) -> serde_json::Value {
        let c = &self.counters;
        serde_json::json!({
            "writes_refused": c.writes_refused.load(Ordering::Relaxed),
            "writes_audited": c.writes_audited.load(Ordering::Relaxed),
            "writes_tracked": c.writes_tracked.load(Ordering::Relaxed),
            "reads_zero_filled": c.reads_zero_filled.load(Ordering::Relaxed),
            "reads_audited": c.reads_audited.load(Ordering::Relaxed),
        })
    }
}

