//! The store's state and the journal records that change it.
//!
//! Every change is a list of primitive [`Record`]s applied by [`State::apply`], which checks each
//! record's precondition (a record that does not fit the state is corruption, never silently
//! accepted). The same function runs when a call makes a change and when the journal is replayed,
//! so replay reproduces exactly what was acknowledged. Units are layout blocks.

use std::sync::Arc;

use imbl::OrdMap;
use serde::{Deserialize, Serialize};

use super::alloc::{FreeTree, RefMap};
use super::bitmap::Bitmap;
use super::ranges::insert_merged;
use super::error::LayoutError;
use super::extent::{ExtentMap, Run, Seg};
use super::types::{FileId, IoMode, RecallReason};

/// Identity of a layout volume; stored in the superblock and checked when it is reopened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Superblock {
    pub name: String,
    pub uuid: uuid::Uuid,
    /// Layout block size in bytes (a multiple of the device block size).
    pub block_size: u32,
    /// Device block size in bytes.
    pub dev_block_size: u32,
    /// Volume size in layout blocks.
    pub num_blocks: u64,
    /// UUID of the data bdev (so metadata is never attached to the wrong device).
    pub data_uuid: uuid::Uuid,
}

impl Superblock {
    /// Device blocks per layout block.
    pub fn ratio(&self) -> u64 {
        (self.block_size / self.dev_block_size) as u64
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct File {
    /// Size in bytes.
    pub size: u64,
    /// Written data: file block → volume blocks.
    #[serde(with = "map_serde")]
    pub map: ExtentMap<Run>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Client {
    pub key: u64,
    #[serde(default)]
    pub identities: Vec<String>,
    #[serde(default)]
    pub fenced: bool,
}

/// An unwritten extent held by a grant, with its written-since-allocation bits (device blocks;
/// `bit_off` is where this piece starts in the bitmap of the original allocation). Reactors set
/// the bits as writes complete; they are made durable like a write cache: by `PendingWritten`
/// records journaled at a flush or FUA write through the volume, at commit and at a clean
/// shutdown. After a crash, blocks whose bits were not yet durable read as zeros (never stale).
#[derive(Clone, Debug)]
pub struct Pending {
    pub lba: u64,
    pub len: u64,
    pub bits: Arc<Bitmap>,
    pub bit_off: u64,
    pub ratio: u64,
}

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        self.lba == o.lba && self.len == o.len
    }
}

impl Seg for Pending {
    fn len(&self) -> u64 {
        self.len
    }
    fn skip(&self, k: u64) -> Self {
        Pending { lba: self.lba + k, len: self.len - k, bits: self.bits.clone(), bit_off: self.bit_off + k * self.ratio, ratio: self.ratio }
    }
    fn take(&self, k: u64) -> Self {
        Pending { len: k, ..self.clone() }
    }
}

impl Pending {
    /// Was layout block `i` of this piece (all its device blocks) written since allocation?
    pub fn written(&self, i: u64) -> bool {
        self.bits.all(self.bit_off + i * self.ratio, self.ratio)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GrantHead {
    pub id: u64,
    pub file: FileId,
    pub client: String,
    /// Granted range in file blocks.
    pub off: u64,
    pub len: u64,
    pub iomode: IoMode,
}

#[derive(Clone, Debug)]
pub struct Recall {
    pub reason: RecallReason,
    pub deadline: std::time::Instant,
    /// The deadline as Unix milliseconds when the recall is durable ([`Record::GrantRecall`], a
    /// shared store): every node then expires it at the same wall-clock time. None: volatile.
    pub at_ms: Option<u64>,
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The local instant of a wall-clock deadline (nodes' clocks are assumed in step, as every
/// lease-based system assumes; a deadline in the past is now).
pub fn instant_of_ms(ms: u64) -> std::time::Instant {
    let (now, wall) = (std::time::Instant::now(), now_ms());
    if ms >= wall {
        now + std::time::Duration::from_millis(ms - wall)
    } else {
        now.checked_sub(std::time::Duration::from_millis(wall - ms)).unwrap_or(now)
    }
}

#[derive(Clone, Debug)]
pub struct Grant {
    pub head: GrantHead,
    pub pending: ExtentMap<Pending>,
    /// Volatile: a restart forgets recalls; the conflicting request, retried, recalls again.
    pub recall: Option<Recall>,
}

impl State {
    /// The durable written runs of `g`, clipped to its current unwritten extents (a partial
    /// release may have dropped some).
    pub fn saved_runs(&self, g: &Grant) -> Vec<(u64, u64)> {
        let Some(runs) = self.saved_written.get(&g.head.id) else { return Vec::new() };
        let mut out = Vec::new();
        for (_, p) in g.pending.iter() {
            let (s, e) = (p.lba * p.ratio, (p.lba + p.len) * p.ratio);
            for &(a, b) in runs {
                let (x, y) = (a.max(s), b.min(e));
                if x < y {
                    out.push((x, y - x));
                }
            }
        }
        out.sort_unstable();
        out
    }
}

impl Grant {
    /// Runs of device blocks of its pending extents written since allocation, as (dlba, dlen).
    pub fn written_runs(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        for (_, p) in self.pending.iter() {
            let s = p.lba * p.ratio;
            out.extend(p.bits.runs(p.bit_off, p.len * p.ratio).into_iter().map(|(b, n)| (s + b - p.bit_off, n)));
        }
        out
    }
    pub fn end(&self) -> u64 {
        self.head.off + self.head.len
    }
    pub fn overlaps(&self, off: u64, len: u64) -> bool {
        self.head.off < off.saturating_add(len) && off < self.end()
    }
}

/// One primitive change; a transaction is a list of them, journaled as one frame.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Record {
    FileCreate { file: FileId },
    /// The file's map must be empty (cleared by MapClear records first).
    FileRemove { file: FileId },
    FileSize { file: FileId, size: u64 },
    /// Map written data into a hole; the blocks must be owned already (a grant's pending extent
    /// being committed, or data being reflinked) and gain a reference.
    MapSet { file: FileId, fblk: u64, lba: u64, len: u64 },
    /// Unmap a file range; its blocks lose a reference and go free at zero.
    MapClear { file: FileId, fblk: u64, len: u64 },
    GrantAdd { head: GrantHead },
    /// Narrow a grant's range (partial return).
    GrantRange { grant: u64, off: u64, len: u64 },
    /// The grant must hold no pending extents.
    GrantDrop { grant: u64 },
    /// Take free blocks as an unwritten extent of the grant at file block `fblk`.
    GrantAlloc { grant: u64, fblk: u64, lba: u64, len: u64 },
    /// Drop the grant's pending extents inside the file range (the blocks lose a reference).
    GrantRelease { grant: u64, fblk: u64, len: u64 },
    /// Device blocks `[dlba, dlba+dlen)` of the grant's pending extents were written since
    /// allocation (sets their written-since-allocation bits; idempotent).
    PendingWritten { grant: u64, dlba: u64, dlen: u64 },
    ClientPut { client: String, key: u64, identities: Vec<String> },
    ClientFence { client: String, fenced: bool },
    /// The grant is recalled until `deadline_ms` (Unix ms). Only a shared store (etcd) journals
    /// recalls, so that every node notifies its subscribers and any node may expire the recall;
    /// the local journals keep recalls volatile (a restart forgets them).
    GrantRecall { grant: u64, reason: RecallReason, deadline_ms: u64 },
}

#[derive(Clone, Debug)]
pub struct State {
    pub sb: Superblock,
    // Persistent maps: every operation works on a copy of the state (a failed one changes
    // nothing), and copying these is O(1) however many files there are.
    pub files: OrdMap<FileId, File>,
    pub clients: OrdMap<String, Client>,
    pub grants: OrdMap<u64, Grant>,
    pub next_grant: u64,
    pub free: FreeTree,
    pub refs: RefMap,
    /// Written-since-allocation device blocks that are durable (journaled as `PendingWritten`
    /// records or in the checkpoint), per grant, as merged `[start, end)` ranges. The live
    /// bitmaps may hold more (writes since the last flush); only these go into a checkpoint,
    /// since a block's data is only known durable once the initiator flushed it.
    pub saved_written: OrdMap<u64, Vec<(u64, u64)>>,
}

fn corrupt(s: impl Into<String>) -> LayoutError {
    LayoutError::Corrupt(s.into())
}

impl State {
    pub fn new(sb: Superblock) -> State {
        let free = FreeTree::new(sb.num_blocks);
        State { sb, files: OrdMap::new(), clients: OrdMap::new(), grants: OrdMap::new(), next_grant: 1, free, refs: RefMap::default(), saved_written: OrdMap::new() }
    }

    fn new_pending(&self, lba: u64, len: u64) -> Pending {
        let ratio = self.sb.ratio();
        Pending { lba, len, bits: Arc::new(Bitmap::new(len * ratio)), bit_off: 0, ratio }
    }

    fn take_ref(&mut self, lba: u64, len: u64, from_free: bool) -> Result<(), LayoutError> {
        if lba.checked_add(len).map_or(true, |e| e > self.sb.num_blocks) || len == 0 {
            return Err(corrupt(format!("blocks {lba}+{len} outside the volume")));
        }
        self.refs.incr(lba, len, from_free)?;
        if from_free {
            self.free.take(lba, len)?;
        }
        Ok(())
    }

    fn drop_ref(&mut self, lba: u64, len: u64) -> Result<(), LayoutError> {
        for (s, l) in self.refs.decr(lba, len)? {
            self.free.give(s, l)?;
        }
        Ok(())
    }

    /// Apply one record, checking it fits.
    pub fn apply(&mut self, r: &Record) -> Result<(), LayoutError> {
        match r {
            Record::FileCreate { file } => {
                if self.files.insert(file.clone(), File::default()).is_some() {
                    return Err(corrupt(format!("file {file} created twice")));
                }
            }
            Record::FileRemove { file } => {
                let f = self.files.get(file).ok_or_else(|| corrupt(format!("remove of unknown file {file}")))?;
                if !f.map.is_empty() || self.grants.values().any(|g| &g.head.file == file) {
                    return Err(corrupt(format!("file {file} removed while mapped or granted")));
                }
                self.files.remove(file);
            }
            Record::FileSize { file, size } => {
                self.files.get_mut(file).ok_or_else(|| corrupt(format!("size of unknown file {file}")))?.size = *size;
            }
            Record::MapSet { file, fblk, lba, len } => {
                if !self.files.get(file).is_some_and(|f| f.map.is_hole(*fblk, *len)) {
                    return Err(corrupt(format!("map of file {file} at {fblk}+{len} is not a hole")));
                }
                self.take_ref(*lba, *len, false)?;
                self.files.get_mut(file).unwrap().map.insert(*fblk, Run { lba: *lba, len: *len });
            }
            Record::MapClear { file, fblk, len } => {
                let f = self.files.get_mut(file).ok_or_else(|| corrupt(format!("unmap of unknown file {file}")))?;
                for (_, run) in f.map.remove(*fblk, *len) {
                    self.drop_ref(run.lba, run.len)?;
                }
            }
            Record::GrantAdd { head } => {
                if self.grants.contains_key(&head.id) || !self.files.contains_key(&head.file) || !self.clients.contains_key(&head.client) {
                    return Err(corrupt(format!("grant {} added twice or for unknown file/client", head.id)));
                }
                self.next_grant = self.next_grant.max(head.id + 1);
                self.grants.insert(head.id, Grant { head: head.clone(), pending: ExtentMap::new(), recall: None });
            }
            Record::GrantRange { grant, off, len } => {
                let g = self.grants.get_mut(grant).ok_or_else(|| corrupt(format!("unknown grant {grant}")))?;
                g.head.off = *off;
                g.head.len = *len;
            }
            Record::GrantDrop { grant } => {
                let g = self.grants.get(grant).ok_or_else(|| corrupt(format!("drop of unknown grant {grant}")))?;
                if !g.pending.is_empty() {
                    return Err(corrupt(format!("grant {grant} dropped with pending extents")));
                }
                self.grants.remove(grant);
                self.saved_written.remove(grant);
            }
            Record::GrantAlloc { grant, fblk, lba, len } => {
                if !self.grants.get(grant).is_some_and(|g| g.pending.is_hole(*fblk, *len)) {
                    return Err(corrupt(format!("allocation for unknown grant {grant} or over its pending extents")));
                }
                self.take_ref(*lba, *len, true)?;
                let p = self.new_pending(*lba, *len);
                self.grants.get_mut(grant).unwrap().pending.insert(*fblk, p);
            }
            Record::GrantRelease { grant, fblk, len } => {
                let g = self.grants.get_mut(grant).ok_or_else(|| corrupt(format!("release of unknown grant {grant}")))?;
                for (_, p) in g.pending.remove(*fblk, *len) {
                    self.drop_ref(p.lba, p.len)?;
                }
            }
            Record::PendingWritten { grant, dlba, dlen } => {
                let g = self.grants.get(grant).ok_or_else(|| corrupt(format!("written bits of unknown grant {grant}")))?;
                let mut covered = 0;
                for (_, p) in g.pending.iter() {
                    let (s, e) = (p.lba * p.ratio, (p.lba + p.len) * p.ratio);
                    let (a, b) = ((*dlba).max(s), (dlba + dlen).min(e));
                    if a < b {
                        p.bits.set_range(p.bit_off + a - s, b - a);
                        covered += b - a;
                    }
                }
                if covered != *dlen {
                    return Err(corrupt(format!("grant {grant}: written blocks {dlba}+{dlen} are not all in its unwritten extents")));
                }
                let mut runs = self.saved_written.get(grant).cloned().unwrap_or_default();
                insert_merged(&mut runs, *dlba, dlba + dlen);
                self.saved_written.insert(*grant, runs);
            }
            Record::ClientPut { client, key, identities } => {
                let fenced = self.clients.get(client).is_some_and(|c| c.fenced);
                self.clients.insert(client.clone(), Client { key: *key, identities: identities.clone(), fenced });
            }
            Record::ClientFence { client, fenced } => {
                self.clients.get_mut(client).ok_or_else(|| corrupt(format!("fence of unknown client {client}")))?.fenced = *fenced;
            }
            Record::GrantRecall { grant, reason, deadline_ms } => {
                let g = self.grants.get_mut(grant).ok_or_else(|| corrupt(format!("recall of unknown grant {grant}")))?;
                // The first recall stands (a second request over the same grant does not extend it).
                if g.recall.is_none() {
                    g.recall = Some(Recall { reason: *reason, deadline: instant_of_ms(*deadline_ms), at_ms: Some(*deadline_ms) });
                }
            }
        }
        Ok(())
    }

    /// Take over the live written-since-allocation bits of `old` for every unwritten extent that
    /// is the same in both (a state reloaded from a checkpoint written by another node knows only
    /// the durable bits; the data path keeps marking the bitmaps it was given).
    pub fn adopt_bits(&mut self, old: &State) {
        let ids: Vec<u64> = self.grants.keys().copied().collect();
        for id in ids {
            let Some(og) = old.grants.get(&id) else { continue };
            let g = self.grants.get_mut(&id).expect("listed");
            let mut pending = ExtentMap::new();
            for (fblk, p) in g.pending.iter() {
                let keep = og.pending.range(fblk, p.len).into_iter().find(|(f, q)| *f == fblk && q == p).map(|(_, q)| q);
                let piece = match keep {
                    Some(q) => {
                        // Durable bits of the reloaded state are a subset of the live ones, but
                        // set them anyway: nothing is lost if they are not.
                        for run in p.bits.runs(p.bit_off, p.len * p.ratio) {
                            q.bits.set_range(q.bit_off + run.0 - p.bit_off, run.1);
                        }
                        q
                    }
                    None => p.clone(),
                };
                pending.insert(fblk, piece);
            }
            g.pending = pending;
        }
    }

    pub fn apply_all(&mut self, rs: &[Record]) -> Result<(), LayoutError> {
        rs.iter().try_for_each(|r| self.apply(r))
    }

    pub fn block_size(&self) -> u64 {
        self.sb.block_size as u64
    }

    /// The persistent image (checkpoint): everything but volatile recall timers (durable ones, of
    /// a shared store, are kept), with the durable part of the written-since-allocation bits.
    pub fn image(&self) -> Image {
        Image {
            sb: self.sb.clone(),
            files: self.files.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            clients: self.clients.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            grants: self
                .grants
                .values()
                .map(|g| GrantImage {
                    head: g.head.clone(),
                    pending: g.pending.iter().map(|(f, p)| (f, p.lba, p.len)).collect(),
                    written: self.saved_runs(g),
                    recall: g.recall.as_ref().and_then(|r| Some((r.reason, r.at_ms?))),
                })
                .collect(),
            next_grant: self.next_grant,
            free: self.free.extents().collect(),
        }
    }

    /// Rebuild a state from an image. Reference counts are recomputed from the maps; the stored
    /// free list must agree with them (checked by [`State::check`]).
    pub fn from_image(img: Image) -> Result<State, LayoutError> {
        let mut st = State::new(img.sb);
        let mut owned = RefMap::default();
        // Build references: pending extents are fresh allocations, map entries add references.
        for (id, f) in &img.files {
            st.files.insert(id.clone(), File { size: f.size, map: ExtentMap::new() });
        }
        for (id, c) in img.clients {
            st.clients.insert(id, c);
        }
        for g in &img.grants {
            st.grants.insert(g.head.id, Grant { head: g.head.clone(), pending: ExtentMap::new(), recall: None });
        }
        // First pass: every referenced run gets counted, tolerant of order (refs to shared data).
        let mut all: Vec<(u64, u64)> = Vec::new();
        for (_, f) in &img.files {
            all.extend(f.map.iter().map(|(_, r)| (r.lba, r.len)));
        }
        for g in &img.grants {
            all.extend(g.pending.iter().map(|(_, l, n)| (*l, *n)));
        }
        for (lba, len) in &all {
            if lba.checked_add(*len).map_or(true, |e| e > st.sb.num_blocks) || *len == 0 {
                return Err(corrupt(format!("extent {lba}+{len} outside the volume")));
            }
            let (max, _) = owned.max_count(*lba, *len);
            // Count by adding a fresh run where unowned pieces exist, then +1 on owned pieces.
            let _ = max;
            add_ref_any(&mut owned, *lba, *len);
        }
        st.refs = owned;
        for (id, f) in img.files {
            let dst = st.files.get_mut(&id).unwrap();
            for (fblk, run) in f.map.iter() {
                if !dst.map.insert(fblk, *run) {
                    return Err(corrupt(format!("file {id}: overlapping extents at block {fblk}")));
                }
            }
        }
        for g in img.grants {
            for (fblk, lba, len) in g.pending {
                let p = st.new_pending(lba, len);
                if !st.grants.get_mut(&g.head.id).unwrap().pending.insert(fblk, p) {
                    return Err(corrupt(format!("grant {}: overlapping pending extents", g.head.id)));
                }
            }
            for (dlba, dlen) in g.written {
                st.apply(&Record::PendingWritten { grant: g.head.id, dlba, dlen })?;
            }
            if let Some((reason, deadline_ms)) = g.recall {
                st.apply(&Record::GrantRecall { grant: g.head.id, reason, deadline_ms })?;
            }
        }
        st.free = FreeTree::default();
        for (s, l) in img.free {
            st.free.give(s, l)?;
        }
        st.next_grant = img.next_grant.max(st.grants.keys().next_back().map_or(1, |k| k + 1));
        Ok(st)
    }

    /// Check every invariant; returns the problems found (empty = consistent).
    pub fn check(&self) -> Vec<String> {
        let mut bad = Vec::new();
        let n = self.sb.num_blocks;
        // Recount ownership from scratch: file maps (may share) and pending extents (exclusive).
        let mut count = RefMap::default();
        let mut pending = RefMap::default();
        for (id, f) in &self.files {
            for (fblk, r) in f.map.iter() {
                if r.lba + r.len > n {
                    bad.push(format!("file {id}: extent at block {fblk} maps {}+{} beyond the volume ({n} blocks)", r.lba, r.len));
                    continue;
                }
                add_ref_any(&mut count, r.lba, r.len);
            }
            if f.map.end() * self.block_size() > f.size.div_ceil(self.block_size()) * self.block_size() {
                bad.push(format!("file {id}: data mapped beyond its size {}", f.size));
            }
        }
        for g in self.grants.values() {
            if !self.files.contains_key(&g.head.file) {
                bad.push(format!("grant {} names unknown file {}", g.head.id, g.head.file));
            }
            if !self.clients.contains_key(&g.head.client) {
                bad.push(format!("grant {} names unknown client {}", g.head.id, g.head.client));
            }
            for (fblk, p) in g.pending.iter() {
                if p.lba + p.len > n {
                    bad.push(format!("grant {}: pending extent {}+{} beyond the volume", g.head.id, p.lba, p.len));
                    continue;
                }
                let (c, _) = count.max_count(p.lba, p.len);
                let (pc, _) = pending.max_count(p.lba, p.len);
                if c > 0 || pc > 0 {
                    bad.push(format!(
                        "grant {}: uncommitted blocks {}+{} (file block {fblk}) are owned twice (readable as data or held by another grant)",
                        g.head.id, p.lba, p.len
                    ));
                }
                add_ref_any(&mut pending, p.lba, p.len);
                add_ref_any(&mut count, p.lba, p.len);
            }
        }
        let counted: Vec<_> = count.runs().collect();
        let kept: Vec<_> = self.refs.runs().collect();
        if normalize(&counted) != normalize(&kept) {
            bad.push("reference counts disagree with the file maps and grants".into());
        }
        // free + owned = volume, disjoint.
        let mut cover: Vec<(u64, u64)> = self.free.extents().collect();
        cover.extend(count.runs().map(|(s, l, _)| (s, l)));
        cover.sort();
        let mut pos = 0u64;
        for (s, l) in cover {
            if s < pos {
                bad.push(format!("blocks {s}+{l} are both free and owned"));
            } else if s > pos {
                bad.push(format!("blocks {pos}+{} are neither free nor owned (leaked)", s - pos));
            }
            pos = pos.max(s + l);
        }
        if pos != n {
            bad.push(format!("free + owned covers {pos} blocks, the volume has {n}"));
        }
        bad
    }
}

/// Add one reference to a run whether or not parts of it are owned yet (recounting).
fn add_ref_any(m: &mut RefMap, lba: u64, len: u64) {
    let mut pos = lba;
    let end = lba + len;
    let owned: Vec<(u64, u64)> = m
        .runs()
        .filter(|(s, l, _)| *s < end && s + l > lba)
        .map(|(s, l, _)| (s.max(lba), (s + l).min(end)))
        .collect();
    for (s, e) in owned {
        if s > pos {
            m.incr(pos, s - pos, true).expect("unowned");
        }
        m.incr(s, e - s, false).expect("owned");
        pos = e;
    }
    if pos < end {
        m.incr(pos, end - pos, true).expect("unowned");
    }
}

/// Merge adjacent runs of equal count so two RefMaps compare by content.
fn normalize(v: &[(u64, u64, u32)]) -> Vec<(u64, u64, u32)> {
    let mut out: Vec<(u64, u64, u32)> = Vec::new();
    for &(s, l, c) in v {
        match out.last_mut() {
            Some((ps, pl, pc)) if *ps + *pl == s && *pc == c => *pl += l,
            _ => out.push((s, l, c)),
        }
    }
    out
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GrantImage {
    pub head: GrantHead,
    pub pending: Vec<(u64, u64, u64)>,
    /// Written-since-allocation runs of the pending extents, device blocks (dlba, dlen).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub written: Vec<(u64, u64)>,
    /// A durable recall (shared stores only): reason and deadline in Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recall: Option<(RecallReason, u64)>,
}

/// Serialized state (a checkpoint frame).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Image {
    pub sb: Superblock,
    pub files: Vec<(FileId, File)>,
    pub clients: Vec<(String, Client)>,
    pub grants: Vec<GrantImage>,
    pub next_grant: u64,
    pub free: Vec<(u64, u64)>,
}

mod map_serde {
    use super::*;
    pub fn serialize<S: serde::Serializer>(m: &ExtentMap<Run>, s: S) -> Result<S::Ok, S::Error> {
        let v: Vec<(u64, u64, u64)> = m.iter().map(|(f, r)| (f, r.lba, r.len)).collect();
        v.serialize(s)
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ExtentMap<Run>, D::Error> {
        let v: Vec<(u64, u64, u64)> = Vec::deserialize(d)?;
        let mut m = ExtentMap::new();
        for (f, lba, len) in v {
            if !m.insert(f, Run { lba, len }) {
                return Err(serde::de::Error::custom(format!("overlapping extent at file block {f}")));
            }
        }
        Ok(m)
    }
}
