//! A layout volume: the state, its metadata store, its guard, and the operations the metadata
//! server calls. Every operation runs under the volume's lock on a copy of the state; its records
//! are made durable (one journal transaction, fsynced) before the copy replaces the state and the
//! guard sees the new layout. An operation that fails changes nothing.
//!
//! Call these from a blocking context (the RPC layer uses `spawn_blocking`): they fsync.
//!
//! # Shared stores (metadata in etcd, several nodes)
//!
//! When the metadata store is shared ([`MetaStore::shared`]), other nodes append too. Before an
//! operation the node applies what they appended (its store's watch queued it; a follower thread
//! applies it as it arrives so the guard enforces new grants and fences at once); the operation
//! is judged against that state and its transaction is appended only if nobody appended in
//! between (etcd compares the head). If somebody did, the node catches up and runs the whole
//! operation again on the new state ([`LayoutVolume::op`]): what is committed was always decided
//! on the state it is committed on. Recalls are journaled there ([`Record::GrantRecall`]) so
//! every node notifies its subscribers and any node may expire them; a fence commits the client
//! fenced first, waits until every live node's guard refuses it, and only then preempts its key
//! and frees its extents.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::error::LayoutError;
use super::guard::{Guard, Snapshot};
use super::journal::{CatchUp, MetaStore, Peers, Replay};
use super::recall::{Fencer, Notifier, RecallEvent};
use super::state::{now_ms, GrantHead, Recall, Record, State, Superblock};
use super::types::{ExtentState, FileId, IoMode, LayoutExtent, Policy, RecallReason};

/// The largest range one grant covers; a larger request gets a shorter layout (RFC 5661 lets the
/// server return less than asked, down to `min_length`).
pub const MAX_GRANT_BYTES: u64 = 1 << 30;

/// Attempts at an operation on a shared store before contention is reported (each failed attempt
/// means another node committed something, so the volume as a whole made progress).
const RETRIES: usize = 64;

/// The data device a layout volume lives on.
#[derive(Clone, Debug)]
pub struct DataDev {
    pub uuid: uuid::Uuid,
    pub block_size: u32,
    pub num_blocks: u64,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub name: String,
    /// Layout block size in bytes (0 = the device's).
    pub block_size: u32,
    pub policy: Policy,
    pub recall_timeout: Duration,
}

/// Hooks to the world outside the store.
#[derive(Clone)]
pub struct Hooks {
    pub notifier: Arc<dyn Notifier>,
    pub fencer: Arc<dyn Fencer>,
}

struct Inner {
    st: State,
    meta: Box<dyn MetaStore>,
}

pub struct LayoutVolume {
    pub name: String,
    inner: Mutex<Inner>,
    guard: Arc<Guard>,
    hooks: Hooks,
    recall_timeout: Duration,
    pub replay: Replay,
    /// The cross-node side of a shared store (None: local journal, this node is the only writer).
    peers: Option<Arc<dyn Peers>>,
}

/// A transaction being built: records applied to a private copy as they are added.
struct Tx {
    st: State,
    recs: Vec<Record>,
}

impl Tx {
    fn rec(&mut self, r: Record) -> Result<(), LayoutError> {
        self.st.apply(&r)?;
        self.recs.push(r);
        Ok(())
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct GrantAnswer {
    pub grant: u64,
    pub offset: u64,
    pub length: u64,
    pub iomode: IoMode,
    pub extents: Vec<LayoutExtent>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CommitAnswer {
    pub committed_bytes: u64,
    /// Bytes in the committed ranges that nobody wrote: they stay unwritten (read as zeros).
    pub unwritten_bytes: u64,
    pub size: u64,
}

fn bad(s: impl Into<String>) -> LayoutError {
    LayoutError::Invalid(s.into())
}

impl LayoutVolume {
    /// Open the volume's metadata, or create it when the store is empty.
    pub fn open(
        mut meta: Box<dyn MetaStore>,
        exists: bool,
        dev: &DataDev,
        opts: &Options,
        hooks: Hooks,
    ) -> Result<LayoutVolume, LayoutError> {
        let check = |bs: u32| {
            if bs < dev.block_size || bs % dev.block_size != 0 || !bs.is_power_of_two() {
                return Err(bad(format!("block_size {bs} must be a power of two and a multiple of the device block size {}", dev.block_size)));
            }
            Ok((bs, dev.num_blocks / (bs / dev.block_size) as u64))
        };
        let (st, replay) = if exists {
            let (st, replay) = meta.load()?;
            let sb = &st.sb;
            // Reopening without a block size takes the one the volume was made with.
            let (bs, num_blocks) = check(if opts.block_size == 0 { sb.block_size } else { opts.block_size })?;
            if sb.data_uuid != dev.uuid {
                return Err(bad(format!("metadata {} belongs to data device {}, not {}", meta.describe(), sb.data_uuid, dev.uuid)));
            }
            if sb.block_size != bs || sb.num_blocks != num_blocks || sb.dev_block_size != dev.block_size {
                return Err(bad(format!(
                    "metadata {} describes {} blocks of {} bytes, the device gives {num_blocks} of {bs}",
                    meta.describe(),
                    sb.num_blocks,
                    sb.block_size
                )));
            }
            (st, replay)
        } else {
            let (bs, num_blocks) = check(if opts.block_size == 0 { dev.block_size } else { opts.block_size })?;
            let sb = Superblock {
                name: opts.name.clone(),
                uuid: uuid::Uuid::new_v4(),
                block_size: bs,
                dev_block_size: dev.block_size,
                num_blocks,
                data_uuid: dev.uuid,
            };
            let st = State::new(sb);
            meta.create(&st)?;
            (st, Replay::default())
        };
        let guard = Arc::new(Guard::new(&opts.name, opts.policy, dev.block_size));
        guard.publish(Snapshot::build(&st));
        meta.installed();
        let peers = meta.peers();
        Ok(LayoutVolume {
            name: opts.name.clone(),
            inner: Mutex::new(Inner { st, meta }),
            guard,
            hooks,
            recall_timeout: opts.recall_timeout,
            replay,
            peers,
        })
    }

    /// Whether other nodes share this volume's metadata (etcd).
    pub fn is_shared(&self) -> bool {
        self.peers.is_some()
    }

    /// Run a state-changing operation: `f` judges it against the state and commits through
    /// [`Self::txn`]. On a shared store the node first applies what others appended, and when
    /// another node appended between that and the commit (`Stale`), catches up and runs `f`
    /// again, so the operation is judged against the state it commits on.
    fn op<R>(&self, mut f: impl FnMut(&mut Inner) -> Result<R, LayoutError>) -> Result<R, LayoutError> {
        let mut inner = self.inner.lock().unwrap();
        if self.peers.is_none() {
            return f(&mut inner);
        }
        inner.meta.writable()?;
        self.catch_up(&mut inner, false)?;
        for _ in 0..RETRIES {
            match f(&mut inner) {
                Err(LayoutError::Stale(_)) => self.catch_up(&mut inner, true)?,
                r => return r,
            }
        }
        Err(LayoutError::Stale("too much contention on the layout state; retry".into()))
    }

    /// Apply what other nodes appended (shared stores; nothing to do for a local journal).
    fn catch_up(&self, inner: &mut Inner, fetch: bool) -> Result<(), LayoutError> {
        if self.peers.is_none() {
            return Ok(());
        }
        match inner.meta.catch_up(fetch)? {
            CatchUp::Txns(txns) => {
                for recs in txns {
                    self.install(inner, &recs)?;
                }
            }
            CatchUp::Reload(mut st) => {
                st.adopt_bits(&inner.st);
                let fresh: Vec<RecallEvent> = st
                    .grants
                    .values()
                    .filter(|g| g.recall.is_some() && inner.st.grants.get(&g.head.id).map_or(true, |o| o.recall.is_none()))
                    .map(|g| self.event(g, g.recall.as_ref().unwrap().reason))
                    .collect();
                inner.st = st;
                self.guard.publish(Snapshot::build(&inner.st));
                for ev in &fresh {
                    self.hooks.notifier.recall(ev);
                }
            }
        }
        inner.meta.installed();
        Ok(())
    }

    /// Install a transaction another node committed: the state, the guard (at once: its grants
    /// and fences bind this node's data path too), this node's recall subscribers.
    fn install(&self, inner: &mut Inner, recs: &[Record]) -> Result<(), LayoutError> {
        let mut st = inner.st.clone();
        st.apply_all(recs).map_err(|e| LayoutError::Corrupt(format!("a transaction of another node does not apply here: {e}")))?;
        let events = self.events_of(&inner.st, recs, true);
        let data = Snapshot::data_after(&self.guard.snapshot(), &inner.st, &st, recs);
        inner.st = st;
        self.guard.publish(Snapshot::build_with(&inner.st, data));
        for ev in &events {
            self.hooks.notifier.recall(ev);
        }
        Ok(())
    }

    fn event(&self, g: &super::state::Grant, reason: RecallReason) -> RecallEvent {
        RecallEvent { volume: self.name.clone(), grant: g.head.id, client: g.head.client.clone(), file: g.head.file.clone(), reason }
    }

    /// The recall notifications a committed transaction means on a shared store: its recall
    /// records, and (`fences`: a transaction of another node, whose own notifications happened
    /// there) the grants a fence revoked.
    fn events_of(&self, old: &State, recs: &[Record], fences: bool) -> Vec<RecallEvent> {
        let mut out = Vec::new();
        for r in recs {
            match r {
                Record::GrantRecall { grant, reason, .. } => {
                    if let Some(g) = old.grants.get(grant).filter(|g| g.recall.is_none()) {
                        out.push(self.event(g, *reason));
                    }
                }
                Record::GrantDrop { grant } if fences => {
                    let Some(g) = old.grants.get(grant) else { continue };
                    let fenced = old.clients.get(&g.head.client).is_some_and(|c| c.fenced)
                        || recs.iter().any(|x| matches!(x, Record::ClientFence { client, fenced: true } if *client == g.head.client));
                    if fenced {
                        out.push(self.event(g, RecallReason::Fence));
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// Apply what other nodes appended, as the store's watch reported it (the follower thread).
    pub fn follow(&self) -> Result<(), LayoutError> {
        let mut inner = self.inner.lock().unwrap();
        self.catch_up(&mut inner, false)
    }

    /// Be current with the shared store's head (one round trip): a read after this sees every
    /// transaction acknowledged by any node before it started.
    pub fn sync(&self) -> Result<(), LayoutError> {
        let mut inner = self.inner.lock().unwrap();
        self.catch_up(&mut inner, true)
    }

    /// Apply other nodes' transactions as soon as the store hears of them (shared stores): the
    /// thread ends with the volume.
    pub fn start_follower(self: &Arc<Self>) {
        let Some(peers) = self.peers.clone() else { return };
        let weak = Arc::downgrade(self);
        let name = self.name.clone();
        peers.on_collect(Box::new(move || match weak.upgrade() {
            Some(v) => v.persist_written().map_err(|e| tracing::error!(volume = %name, "saving written-block bits for a commit on another node: {e}")).is_ok(),
            None => true,
        }));
        let weak = Arc::downgrade(self);
        let name = self.name.clone();
        let spawned = std::thread::Builder::new().name(format!("layout-follow-{name}")).spawn(move || {
            let mut seen = 0;
            loop {
                seen = peers.changes().wait(seen, Duration::from_millis(500));
                let Some(v) = weak.upgrade() else { return };
                if let Err(e) = v.follow() {
                    tracing::error!(volume = %name, "applying other nodes' layout transactions: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!(volume = %self.name, "cannot start the follower thread: {e}; other nodes' changes are applied at the next call only");
        }
    }

    pub fn guard(&self) -> &Arc<Guard> {
        &self.guard
    }
    pub fn recall_timeout(&self) -> Duration {
        self.recall_timeout
    }

    /// Read-only access to the state (tests, fsck of a live volume, listings).
    pub fn with_state<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.inner.lock().unwrap().st)
    }

    pub fn superblock(&self) -> Superblock {
        self.with_state(|s| s.sb.clone())
    }

    /// Run `f` as one transaction; durable before the new state becomes visible.
    fn txn<R>(&self, inner: &mut Inner, f: impl FnOnce(&mut Tx) -> Result<R, LayoutError>) -> Result<R, LayoutError> {
        let mut tx = Tx { st: inner.st.clone(), recs: Vec::new() };
        let r = f(&mut tx)?;
        if !tx.recs.is_empty() {
            if let Err(e) = inner.meta.append(&tx.recs) {
                // A bounded journal (metadata_bdev) may be out of room: compact the durable state
                // (`inner.st` is exactly what the journal holds) and try once more. A shared
                // store that moved on is the caller's to catch up with (`op`).
                if matches!(e, LayoutError::Stale(_)) || !inner.meta.wants_checkpoint() {
                    return Err(e);
                }
                inner.meta.checkpoint(&inner.st)?;
                inner.meta.append(&tx.recs)?;
            }
            // Keep recall marks (volatile) of grants that survive the transaction.
            for (id, g) in inner.st.grants.iter() {
                if let (Some(r), Some(ng)) = (&g.recall, tx.st.grants.get_mut(id)) {
                    ng.recall = Some(r.clone());
                }
            }
            let events = if self.peers.is_some() { self.events_of(&inner.st, &tx.recs, false) } else { Vec::new() };
            let data = Snapshot::data_after(&self.guard.snapshot(), &inner.st, &tx.st, &tx.recs);
            inner.st = tx.st;
            self.guard.publish(Snapshot::build_with(&inner.st, data));
            inner.meta.installed();
            for ev in &events {
                self.hooks.notifier.recall(ev);
            }
            if inner.meta.wants_checkpoint() {
                if let Err(e) = inner.meta.checkpoint(&inner.st) {
                    // The journal still holds everything; compaction is retried next time.
                    tracing::warn!(volume = %self.name, "checkpoint failed: {e}");
                }
            }
        }
        Ok(r)
    }

    fn blocks(st: &State, off: u64, len: u64, what: &str) -> Result<(u64, u64), LayoutError> {
        let bs = st.block_size();
        if off % bs != 0 || len % bs != 0 {
            return Err(bad(format!("{what}: offset {off} and length {len} must be multiples of the block size {bs}")));
        }
        Ok((off / bs, len / bs))
    }

    /// Mark `grants` recalled (once), notify, and answer "recall pending, retry". On a shared store
    /// the marks are a transaction (every node notifies when it installs it); if that fails the
    /// failure is the answer (`Stale`: the caller runs the operation again).
    fn recall(&self, inner: &mut Inner, grants: &[u64], reason: RecallReason) -> LayoutError {
        if self.peers.is_some() {
            let deadline_ms = now_ms() + self.recall_timeout.as_millis() as u64;
            let fresh: Vec<u64> = grants.iter().copied().filter(|id| inner.st.grants.get(id).is_some_and(|g| g.recall.is_none())).collect();
            if !fresh.is_empty() {
                if let Err(e) = self.txn(inner, |tx| fresh.iter().try_for_each(|&grant| tx.rec(Record::GrantRecall { grant, reason, deadline_ms }))) {
                    return e;
                }
            }
            let g = &inner.st.grants[&grants[0]];
            let reason = g.recall.as_ref().map_or(reason, |r| r.reason);
            return LayoutError::RecallPending { grant: g.head.id, client: g.head.client.clone(), reason: reason.as_str().into() };
        }
        let st = &mut inner.st;
        let now = Instant::now();
        let mut first = None;
        for id in grants {
            let g = st.grants.get_mut(id).expect("grant exists");
            if first.is_none() {
                first = Some((g.head.id, g.head.client.clone(), g.recall.as_ref().map_or(reason, |r| r.reason)));
            }
            if g.recall.is_none() {
                g.recall = Some(Recall { reason, deadline: now + self.recall_timeout, at_ms: None });
                self.hooks.notifier.recall(&RecallEvent {
                    volume: self.name.clone(),
                    grant: g.head.id,
                    client: g.head.client.clone(),
                    file: g.head.file.clone(),
                    reason,
                });
            }
        }
        let (grant, client, reason) = first.expect("at least one grant");
        LayoutError::RecallPending { grant, client, reason: reason.as_str().into() }
    }

    /// Grants on `file` overlapping file blocks `[off, off+len)` that `keep` does not spare.
    fn grants_over(st: &State, file: &FileId, off: u64, len: u64, keep: impl Fn(&super::state::Grant) -> bool) -> Vec<u64> {
        st.grants.values().filter(|g| &g.head.file == file && g.overlaps(off, len) && !keep(g)).map(|g| g.head.id).collect()
    }

    // ----- files -----

    pub fn file_create(&self, file: &FileId) -> Result<(), LayoutError> {
        self.op(|inner| {
            if inner.st.files.contains_key(file) {
                return Err(LayoutError::FileExists(file.to_string()));
            }
            self.txn(inner, |tx| tx.rec(Record::FileCreate { file: file.clone() }))
        })
    }

    fn file_exists(st: &State, file: &FileId) -> Result<(), LayoutError> {
        st.files.contains_key(file).then_some(()).ok_or_else(|| LayoutError::UnknownFile(file.to_string()))
    }

    pub fn file_remove(&self, file: &FileId) -> Result<(), LayoutError> {
        self.op(|inner| {
            Self::file_exists(&inner.st, file)?;
            let gs = Self::grants_over(&inner.st, file, 0, u64::MAX, |_| false);
            if !gs.is_empty() {
                return Err(self.recall(inner, &gs, RecallReason::Remove));
            }
            self.txn(inner, |tx| {
                tx.rec(Record::MapClear { file: file.clone(), fblk: 0, len: u64::MAX / 2 })?;
                tx.rec(Record::FileRemove { file: file.clone() })
            })
        })
    }

    pub fn file_truncate(&self, file: &FileId, size: u64) -> Result<(), LayoutError> {
        self.op(|inner| {
            Self::file_exists(&inner.st, file)?;
            let bs = inner.st.block_size();
            let keep_blocks = size.div_ceil(bs);
            let cur = inner.st.files[file].size;
            if size < cur {
                let gs = Self::grants_over(&inner.st, file, keep_blocks, u64::MAX / 2, |_| false);
                if !gs.is_empty() {
                    return Err(self.recall(inner, &gs, RecallReason::Truncate));
                }
            }
            self.txn(inner, |tx| {
                if size < cur {
                    tx.rec(Record::MapClear { file: file.clone(), fblk: keep_blocks, len: u64::MAX / 2 })?;
                }
                tx.rec(Record::FileSize { file: file.clone(), size })
            })
        })
    }

    pub fn file_stat(&self, file: &FileId) -> Result<serde_json::Value, LayoutError> {
        let inner = self.inner.lock().unwrap();
        let st = &inner.st;
        let f = st.files.get(file).ok_or_else(|| LayoutError::UnknownFile(file.to_string()))?;
        let bs = st.block_size();
        let shared: u64 = f.map.iter().filter(|(_, r)| st.refs.max_count(r.lba, r.len).0 > 1).map(|(_, r)| r.len).sum();
        let grants: Vec<u64> = st.grants.values().filter(|g| &g.head.file == file).map(|g| g.head.id).collect();
        Ok(serde_json::json!({
            "file": file,
            "size": f.size,
            "allocated_bytes": f.map.blocks() * bs,
            "shared_bytes": shared * bs,
            "extents": f.map.iter().count(),
            "grants": grants,
        }))
    }

    /// The committed map of `[offset, offset+length)` (holes as NONE_DATA, shared data as
    /// READ_DATA) and the grants' unwritten extents there (INVALID_DATA).
    pub fn file_map(&self, file: &FileId, offset: u64, length: u64) -> Result<serde_json::Value, LayoutError> {
        let inner = self.inner.lock().unwrap();
        let st = &inner.st;
        let f = st.files.get(file).ok_or_else(|| LayoutError::UnknownFile(file.to_string()))?;
        let (off, len) = Self::blocks(st, offset, length, "layout_file_map")?;
        let bs = st.block_size();
        let mut out = Vec::new();
        let mut pos = off;
        for (fb, r) in f.map.range(off, len) {
            if fb > pos {
                out.push(LayoutExtent { file_offset: pos * bs, length: (fb - pos) * bs, volume_offset: 0, state: ExtentState::None });
            }
            for (lba, n, count) in st.refs.pieces(r.lba, r.len) {
                out.push(LayoutExtent {
                    file_offset: (fb + lba - r.lba) * bs,
                    length: n * bs,
                    volume_offset: lba * bs,
                    state: if count > 1 { ExtentState::Read } else { ExtentState::ReadWrite },
                });
            }
            pos = fb + r.len;
        }
        if pos < off + len {
            out.push(LayoutExtent { file_offset: pos * bs, length: (off + len - pos) * bs, volume_offset: 0, state: ExtentState::None });
        }
        let mut pending = Vec::new();
        for g in st.grants.values().filter(|g| &g.head.file == file) {
            for (fb, p) in g.pending.range(off, len) {
                pending.push(serde_json::json!({
                    "grant": g.head.id, "file_offset": fb * bs, "length": p.len * bs,
                    "volume_offset": p.lba * bs, "state": ExtentState::Invalid,
                }));
            }
        }
        Ok(serde_json::json!({"file": file, "size": f.size, "extents": out, "pending": pending}))
    }

    /// Clone `source` into `dest` (created if missing, replaced if present) sharing its blocks.
    pub fn file_reflink(&self, source: &FileId, dest: &FileId) -> Result<(), LayoutError> {
        self.op(|inner| {
            Self::file_exists(&inner.st, source)?;
            if source == dest {
                return Err(bad("source and destination are the same file"));
            }
            // Writers of the source would otherwise write shared blocks in place; any grant on the
            // destination sees its map replaced.
            let mut gs = Self::grants_over(&inner.st, source, 0, u64::MAX / 2, |g| g.head.iomode == IoMode::Read);
            gs.extend(Self::grants_over(&inner.st, dest, 0, u64::MAX / 2, |_| false));
            if !gs.is_empty() {
                return Err(self.recall(inner, &gs, RecallReason::Reflink));
            }
            self.txn(inner, |tx| {
                if tx.st.files.contains_key(dest) {
                    tx.rec(Record::MapClear { file: dest.clone(), fblk: 0, len: u64::MAX / 2 })?;
                } else {
                    tx.rec(Record::FileCreate { file: dest.clone() })?;
                }
                let src = tx.st.files[source].clone();
                for (fb, r) in src.map.iter() {
                    tx.rec(Record::MapSet { file: dest.clone(), fblk: fb, lba: r.lba, len: r.len })?;
                }
                tx.rec(Record::FileSize { file: dest.clone(), size: src.size })
            })
        })
    }

    // ----- clients -----

    pub fn client_register(&self, client: &str, key: u64, identities: Vec<String>) -> Result<(), LayoutError> {
        self.op(|inner| {
            if client.is_empty() {
                return Err(bad("client id must not be empty"));
            }
            if key == 0 {
                return Err(bad("pr_key must not be 0 (0 means unregistered)"));
            }
            if let Some(c) = inner.st.clients.get(client) {
                if c.fenced {
                    return Err(LayoutError::ClientFenced(format!("{client} (client_unfence first)")));
                }
            }
            if let Some((other, _)) = inner.st.clients.iter().find(|(id, c)| id.as_str() != client && c.key == key) {
                return Err(bad(format!("pr_key {key:#x} is already registered by client {other}")));
            }
            for ident in &identities {
                if let Some((other, _)) = inner.st.clients.iter().find(|(id, c)| id.as_str() != client && c.identities.contains(ident)) {
                    return Err(bad(format!("identity {ident} already belongs to client {other}")));
                }
            }
            self.txn(inner, |tx| tx.rec(Record::ClientPut { client: client.into(), key, identities: identities.clone() }))
        })
    }

    pub fn client_list(&self) -> serde_json::Value {
        let inner = self.inner.lock().unwrap();
        let st = &inner.st;
        serde_json::Value::Array(
            st.clients
                .iter()
                .map(|(id, c)| {
                    let grants: Vec<u64> = st.grants.values().filter(|g| &g.head.client == id).map(|g| g.head.id).collect();
                    serde_json::json!({"client": id, "pr_key": c.key, "identities": c.identities, "fenced": c.fenced, "grants": grants})
                })
                .collect(),
        )
    }

    /// Fence a client: stop its writes (guard, then the reservation engine through the Fencer),
    /// revoke its grants, free its unwritten extents, notify. Idempotent.
    pub fn client_fence(&self, client: &str) -> Result<Vec<u64>, LayoutError> {
        if let Some(peers) = &self.peers {
            return self.fence_shared(peers, client);
        }
        let mut inner = self.inner.lock().unwrap();
        self.fence_locked(&mut inner, client)
    }

    /// The fence on a shared store, where the guards to stop are every node's. The steps of
    /// [`Self::fence_locked`], each made cluster-wide, and none under the volume lock (a barrier
    /// waits for other nodes' followers, which may be waiting for their own barriers):
    /// 1. commit the client fenced (every node's guard refuses its writes once installed);
    /// 2. a barrier: every live node has installed it;
    /// 3. PREEMPT AND ABORT (cluster-wide on a clustered volume): nothing in flight can land;
    /// 4. revoke its grants and free their unwritten extents.
    ///
    /// Two nodes fencing the same client (an expired recall) both pass; the second finds the
    /// grants gone in step 4 and commits nothing.
    fn fence_shared(&self, peers: &Arc<dyn Peers>, client: &str) -> Result<Vec<u64>, LayoutError> {
        let (key, seq) = self.op(|inner| {
            let c = inner.st.clients.get(client).ok_or_else(|| LayoutError::UnknownClient(client.into()))?.clone();
            if !c.fenced {
                self.txn(inner, |tx| tx.rec(Record::ClientFence { client: client.into(), fenced: true }))?;
            }
            Ok((c.key, inner.meta.head()))
        })?;
        peers.settle(seq)?;
        self.hooks.fencer.fence(&self.name, client, key).map_err(|e| LayoutError::Io(format!("fencing {client} failed: {e}")))?;
        let grants = self.op(|inner| {
            let grants: Vec<(u64, FileId)> =
                inner.st.grants.values().filter(|g| g.head.client == client).map(|g| (g.head.id, g.head.file.clone())).collect();
            self.txn(inner, |tx| {
                for (g, _) in &grants {
                    tx.rec(Record::GrantRelease { grant: *g, fblk: 0, len: u64::MAX / 2 })?;
                    tx.rec(Record::GrantDrop { grant: *g })?;
                }
                Ok(())
            })?;
            Ok(grants)
        })?;
        for (g, file) in &grants {
            self.hooks.notifier.recall(&RecallEvent { volume: self.name.clone(), grant: *g, client: client.into(), file: file.clone(), reason: RecallReason::Fence });
        }
        Ok(grants.into_iter().map(|g| g.0).collect())
    }

    fn fence_locked(&self, inner: &mut Inner, client: &str) -> Result<Vec<u64>, LayoutError> {
        let c = inner.st.clients.get(client).ok_or_else(|| LayoutError::UnknownClient(client.into()))?.clone();
        // 1. The guard refuses the client's writes from now on (a snapshot with it fenced).
        let mut shadow = inner.st.clone();
        shadow.clients.get_mut(client).unwrap().fenced = true;
        self.guard.publish(Snapshot::build(&shadow));
        // 2. PREEMPT AND ABORT (the reservation fencer): nothing of the client in flight can land after this.
        if let Err(e) = self.hooks.fencer.fence(&self.name, client, c.key) {
            self.guard.publish(Snapshot::build(&inner.st));
            return Err(LayoutError::Io(format!("fencing {client} failed: {e}")));
        }
        // 3. Only now may its unwritten blocks go back to free space.
        let grants: Vec<(u64, FileId)> =
            inner.st.grants.values().filter(|g| g.head.client == client).map(|g| (g.head.id, g.head.file.clone())).collect();
        let res = self.txn(inner, |tx| {
            for (g, _) in &grants {
                tx.rec(Record::GrantRelease { grant: *g, fblk: 0, len: u64::MAX / 2 })?;
                tx.rec(Record::GrantDrop { grant: *g })?;
            }
            if !c.fenced {
                tx.rec(Record::ClientFence { client: client.into(), fenced: true })?;
            }
            Ok(())
        });
        // On failure the guard keeps the client cut off although the metadata did not change:
        // it was preempted already.
        res?;
        for (g, file) in &grants {
            self.hooks.notifier.recall(&RecallEvent {
                volume: self.name.clone(),
                grant: *g,
                client: client.into(),
                file: file.clone(),
                reason: RecallReason::Fence,
            });
        }
        Ok(grants.into_iter().map(|g| g.0).collect())
    }

    pub fn client_unfence(&self, client: &str) -> Result<(), LayoutError> {
        self.op(|inner| {
            let c = inner.st.clients.get(client).ok_or_else(|| LayoutError::UnknownClient(client.into()))?.clone();
            if !c.fenced {
                return Ok(());
            }
            self.hooks.fencer.unfence(&self.name, client, c.key).map_err(|e| LayoutError::Io(format!("unfencing {client}: {e}")))?;
            self.txn(inner, |tx| tx.rec(Record::ClientFence { client: client.into(), fenced: false }))
        })
    }

    // ----- grants -----

    #[allow(clippy::too_many_arguments)]
    pub fn layout_get(
        &self,
        file: &FileId,
        client: &str,
        offset: u64,
        length: u64,
        min_length: u64,
        iomode: IoMode,
    ) -> Result<GrantAnswer, LayoutError> {
        self.op(|inner| {
            let st = &inner.st;
            let c = st.clients.get(client).ok_or_else(|| LayoutError::UnknownClient(client.into()))?;
            if c.fenced {
                return Err(LayoutError::ClientFenced(client.into()));
            }
            Self::file_exists(st, file)?;
            let bs = st.block_size();
            // NFS4_UINT64_MAX ("to the end") and other long requests get the largest layout.
            let length = length.min(MAX_GRANT_BYTES.max(bs));
            if offset.checked_add(length).is_none() {
                return Err(bad(format!("offset {offset} + length {length} overflows")));
            }
            if min_length > length {
                return Err(bad(format!("min_length {min_length} exceeds the layout length {length} (at most {MAX_GRANT_BYTES} per layout)")));
            }
            let (off, mut len) = Self::blocks(st, offset, length, "layout_get")?;
            if len == 0 {
                return Err(bad("length must be at least one block"));
            }
            // Same client: an existing grant covering the request is answered again.
            if let Some(g) = st.grants.values().find(|g| {
                g.head.client == client && &g.head.file == file && g.head.off <= off && g.end() >= off + len && (g.head.iomode == IoMode::Rw || iomode == IoMode::Read)
            }) {
                if g.recall.is_none() {
                    let id = g.head.id;
                    return Ok(self.describe(st, id, off, len));
                }
            }
            let conflicts = Self::grants_over(st, file, off, len, |g| (g.head.client == client && g.recall.is_none()) || (g.head.iomode == IoMode::Read && iomode == IoMode::Read));
            if !conflicts.is_empty() {
                return Err(self.recall(inner, &conflicts, RecallReason::Conflict));
            }
            if let Some(g) = Self::grants_over(st, file, off, len, |g| g.head.client != client).first() {
                return Err(LayoutError::Conflict(format!("range overlaps grant {g} of the same client: return it first")));
            }
            // What a rw grant must allocate: holes, and shared data (copy-on-write).
            let mut need: Vec<(u64, u64)> = Vec::new();
            if iomode == IoMode::Rw {
                let f = &st.files[file];
                let mut pos = off;
                for (fb, r) in f.map.range(off, len) {
                    if fb > pos {
                        need.push((pos, fb - pos));
                    }
                    for (lba, n, count) in st.refs.pieces(r.lba, r.len) {
                        if count > 1 {
                            need.push((fb + lba - r.lba, n));
                        }
                    }
                    pos = fb + r.len;
                }
                if pos < off + len {
                    need.push((pos, off + len - pos));
                }
                // Shorten the layout to what free space can back.
                let mut avail = st.free.free_blocks();
                let mut cut = None;
                for (s, l) in need.iter_mut() {
                    if *l > avail {
                        cut = Some(*s + avail);
                        *l = avail;
                    }
                    avail -= *l;
                    if cut.is_some() {
                        break;
                    }
                }
                if let Some(end) = cut {
                    need.retain(|(s, l)| *l > 0 && *s < end);
                    len = end - off;
                    if len * bs < min_length.max(bs) {
                        return Err(LayoutError::NoSpace(format!("{} bytes free, layout needs at least {}", st.free.free_blocks() * bs, min_length.max(bs))));
                    }
                }
            }
            let id = st.next_grant;
            let head = GrantHead { id, file: file.clone(), client: client.into(), off, len, iomode };
            self.txn(inner, |tx| {
                tx.rec(Record::GrantAdd { head })?;
                for (s, l) in need {
                    let mut fb = s;
                    for (lba, n) in tx.st.free.plan(l) {
                        tx.rec(Record::GrantAlloc { grant: id, fblk: fb, lba, len: n })?;
                        fb += n;
                    }
                }
                Ok(())
            })?;
            Ok(self.describe(&inner.st, id, off, len))
        })
    }

    /// The RFC 5663 extent list of grant `id` over file blocks `[off, off+len)`.
    fn describe(&self, st: &State, id: u64, off: u64, len: u64) -> GrantAnswer {
        let g = &st.grants[&id];
        let f = &st.files[&g.head.file];
        let bs = st.block_size();
        let end = off + len;
        let pending = g.pending.range(off, len);
        let mapped = f.map.range(off, len);
        // Cut the range at every piece boundary, then describe each interval.
        let mut cuts: Vec<u64> = vec![off, end];
        for (s, p) in &pending {
            cuts.extend([*s, s + p.len]);
        }
        for (s, r) in &mapped {
            cuts.extend(st.refs.pieces(r.lba, r.len).into_iter().map(|(lba, _, _)| s + lba - r.lba));
            cuts.push(s + r.len);
        }
        cuts.sort_unstable();
        cuts.dedup();
        let mut ex: Vec<LayoutExtent> = Vec::new();
        let mut push = |e: LayoutExtent| {
            if let Some(l) = ex.last_mut() {
                let contiguous = l.state == e.state
                    && l.file_offset + l.length == e.file_offset
                    && (e.state == ExtentState::None || l.volume_offset + l.length == e.volume_offset);
                // Keep a READ_DATA copy-on-write source separate from the INVALID_DATA it backs.
                if contiguous {
                    l.length += e.length;
                    return;
                }
            }
            ex.push(e);
        };
        for w in cuts.windows(2) {
            let (a, b) = (w[0], w[1]);
            let n = (b - a) * bs;
            let p = pending.iter().find(|(s, p)| *s <= a && s + p.len > a).map(|(s, p)| p.lba + a - s);
            let m = mapped.iter().find(|(s, r)| *s <= a && s + r.len > a).map(|(s, r)| (r.lba + a - s, st.refs.max_count(r.lba + a - s, b - a).0 > 1));
            match (p, m) {
                (Some(lba), src) => {
                    push(LayoutExtent { file_offset: a * bs, length: n, volume_offset: lba * bs, state: ExtentState::Invalid });
                    if let Some((slba, _)) = src {
                        push(LayoutExtent { file_offset: a * bs, length: n, volume_offset: slba * bs, state: ExtentState::Read });
                    }
                }
                (None, Some((lba, shared))) => {
                    let state = if g.head.iomode == IoMode::Rw && !shared { ExtentState::ReadWrite } else { ExtentState::Read };
                    push(LayoutExtent { file_offset: a * bs, length: n, volume_offset: lba * bs, state });
                }
                (None, None) => push(LayoutExtent { file_offset: a * bs, length: n, volume_offset: 0, state: ExtentState::None }),
            }
        }
        GrantAnswer { grant: id, offset: g.head.off * bs, length: g.head.len * bs, iomode: g.head.iomode, extents: ex }
    }

    /// Convert the written blocks of `ranges` (bytes) to file data, all in one transaction.
    pub fn layout_commit(&self, grant: u64, ranges: &[(u64, u64)], new_size: Option<u64>) -> Result<CommitAnswer, LayoutError> {
        // On a shared store the client may have written through other nodes, whose data paths
        // alone know which blocks (until a flush journals them): when this node's view leaves
        // blocks of the commit unwritten, have every node journal its bits first.
        if let Some(peers) = &self.peers {
            if self.guard.policy() != Policy::Off && self.commit_sees_unwritten(grant, ranges) {
                peers.collect_written()?;
                self.sync()?;
            }
        }
        self.op(|inner| {
            let st = &inner.st;
            let g = st.grants.get(&grant).ok_or(LayoutError::UnknownGrant(grant))?.clone();
            if st.clients.get(&g.head.client).is_some_and(|c| c.fenced) {
                return Err(LayoutError::ClientFenced(g.head.client.clone()));
            }
            if g.head.iomode != IoMode::Rw {
                return Err(bad(format!("grant {grant} is read-only: nothing to commit")));
            }
            let bs = st.block_size();
            let mut blk = Vec::new();
            for (o, l) in ranges {
                let (o, l) = Self::blocks(st, *o, *l, "layout_commit range")?;
                if o < g.head.off || o + l > g.end() {
                    return Err(LayoutError::RangeNotInGrant(grant, format!("bytes {}+{} outside {}+{}", o * bs, l * bs, g.head.off * bs, g.head.len * bs)));
                }
                blk.push((o, l));
            }
            let trust = self.guard.policy() == Policy::Off;
            let file = g.head.file.clone();
            let cur = st.files.get(&file).map(|f| f.size).unwrap_or(0);
            let (mut done, mut left, mut data_end) = (0u64, 0u64, 0u64);
            let size = self.txn(inner, |tx| {
                for (o, l) in &blk {
                    let pieces = tx.st.grants[&grant].pending.range(*o, *l);
                    for (fb, p) in pieces {
                        // Runs of blocks written since allocation (or all, when nothing is guarded).
                        let mut i = 0;
                        while i < p.len {
                            let w = trust || p.written(i);
                            let mut j = i + 1;
                            while j < p.len && (trust || p.written(j)) == w {
                                j += 1;
                            }
                            if w {
                                let (f0, n) = (fb + i, j - i);
                                // Unmap the copy-on-write source, if any (a hole needs no record).
                                if !tx.st.files.get(&file).is_some_and(|f| f.map.is_hole(f0, n)) {
                                    tx.rec(Record::MapClear { file: file.clone(), fblk: f0, len: n })?;
                                }
                                tx.rec(Record::MapSet { file: file.clone(), fblk: f0, lba: p.lba + i, len: n })?;
                                tx.rec(Record::GrantRelease { grant, fblk: f0, len: n })?;
                                done += n;
                                data_end = data_end.max((f0 + n) * bs);
                            } else {
                                left += j - i;
                            }
                            i = j;
                        }
                    }
                }
                // The client's new size (last byte written + 1) may end inside the last block; the
                // size never drops below the committed data nor below the current size.
                let mut size = cur.max(new_size.unwrap_or(data_end));
                if size.div_ceil(bs) * bs < data_end {
                    size = data_end;
                }
                if size != cur {
                    tx.rec(Record::FileSize { file: file.clone(), size })?;
                }
                Ok(size)
            })?;
            Ok(CommitAnswer { committed_bytes: done * bs, unwritten_bytes: left * bs, size })
        })
    }

    /// Does this node's view hold blocks in `ranges` (bytes) of the grant's unwritten extents that
    /// were not written since allocation?
    fn commit_sees_unwritten(&self, grant: u64, ranges: &[(u64, u64)]) -> bool {
        self.with_state(|st| {
            let Some(g) = st.grants.get(&grant) else { return false };
            let bs = st.block_size();
            ranges.iter().any(|&(o, l)| g.pending.range(o / bs, l.div_ceil(bs)).iter().any(|(_, p)| (0..p.len).any(|i| !p.written(i))))
        })
    }

    /// Give back a grant (or part of it); its uncommitted extents there go back to free space.
    pub fn layout_return(&self, grant: u64, ranges: Option<&[(u64, u64)]>) -> Result<(), LayoutError> {
        self.op(|inner| {
            let st = &inner.st;
            let g = st.grants.get(&grant).ok_or(LayoutError::UnknownGrant(grant))?.clone();
            let mut blk = Vec::new();
            if let Some(rs) = ranges {
                for (o, l) in rs {
                    blk.push(Self::blocks(st, *o, *l, "layout_return range")?);
                }
            }
            self.txn(inner, |tx| {
                let Some(_) = ranges else {
                    tx.rec(Record::GrantRelease { grant, fblk: 0, len: u64::MAX / 2 })?;
                    return tx.rec(Record::GrantDrop { grant });
                };
                for (o, l) in &blk {
                    tx.rec(Record::GrantRelease { grant, fblk: *o, len: *l })?;
                }
                // Narrow the grant when a prefix or suffix was returned; drop it when all was.
                let (mut s, mut e) = (g.head.off, g.end());
                let mut changed = true;
                while changed {
                    changed = false;
                    for (o, l) in &blk {
                        if *o <= s && o + l > s {
                            s = (o + l).min(e);
                            changed = true;
                        }
                        if *o < e && o + l >= e && *o >= s {
                            e = *o;
                            changed = true;
                        }
                    }
                    if s >= e {
                        break;
                    }
                }
                if s >= e {
                    tx.rec(Record::GrantRelease { grant, fblk: 0, len: u64::MAX / 2 })?;
                    tx.rec(Record::GrantDrop { grant })
                } else if (s, e) != (g.head.off, g.end()) {
                    tx.rec(Record::GrantRelease { grant, fblk: 0, len: s })?;
                    tx.rec(Record::GrantRelease { grant, fblk: e, len: u64::MAX / 2 })?;
                    tx.rec(Record::GrantRange { grant, off: s, len: e - s })
                } else {
                    Ok(())
                }
            })
        })
    }

    /// Revoke grants whose recall timed out and fence their clients. Returns the clients fenced.
    pub fn expire_recalls(&self, now: Instant) -> Vec<String> {
        let expired = |st: &State| {
            let mut clients: Vec<String> =
                st.grants.values().filter(|g| g.recall.as_ref().is_some_and(|r| r.deadline <= now)).map(|g| g.head.client.clone()).collect();
            clients.sort();
            clients.dedup();
            clients
        };
        let mut inner = self.inner.lock().unwrap();
        if let Some(peers) = self.peers.clone() {
            // Any node may expire a recall: be current first (another node may have done it), and
            // leave the store alone while it cannot be written.
            if inner.meta.writable().is_err() || self.catch_up(&mut inner, false).is_err() || expired(&inner.st).is_empty() {
                return Vec::new();
            }
            if let Err(e) = self.catch_up(&mut inner, true) {
                tracing::warn!(volume = %self.name, "recall timers: cannot catch up: {e}");
                return Vec::new();
            }
            let clients = expired(&inner.st);
            drop(inner);
            let mut fenced = Vec::new();
            for c in clients {
                match self.fence_shared(&peers, &c) {
                    Ok(_) => {
                        tracing::warn!(volume = %self.name, client = %c, "recall not answered in time: grants revoked, client fenced");
                        fenced.push(c);
                    }
                    Err(e) => tracing::error!(volume = %self.name, client = %c, "fence after recall timeout failed: {e}"),
                }
            }
            return fenced;
        }
        let clients = expired(&inner.st);
        let mut fenced = Vec::new();
        for c in clients {
            match self.fence_locked(&mut inner, &c) {
                Ok(_) => {
                    tracing::warn!(volume = %self.name, client = %c, "recall not answered in time: grants revoked, client fenced");
                    fenced.push(c);
                }
                Err(e) => tracing::error!(volume = %self.name, client = %c, "fence after recall timeout failed: {e}"),
            }
        }
        fenced
    }

    /// Compact the journal now (at clean shutdown, and for tests).
    /// Write a checkpoint (with the written-since-allocation bits made durable so far; a clean
    /// shutdown calls [`LayoutVolume::persist_written`] first, once the data bdev is synced).
    pub fn checkpoint(&self) -> Result<(), LayoutError> {
        let mut inner = self.inner.lock().unwrap();
        // A shared store's checkpoint is of the head: be current (it is skipped if another node
        // appends meanwhile).
        self.catch_up(&mut inner, true)?;
        let Inner { st, meta } = &mut *inner;
        meta.checkpoint(st)
    }

    /// Journal the written-since-allocation bits set since the last time (one transaction of
    /// `PendingWritten` records); returns how many records it wrote.
    pub fn persist_written(&self) -> Result<usize, LayoutError> {
        if !self.guard.take_dirty() {
            return Ok(0);
        }
        let r = self.op(|inner| {
            let st = &inner.st;
            let mut recs = Vec::new();
            for (id, g) in st.grants.iter() {
                let runs = g.written_runs();
                if !runs.is_empty() && st.saved_runs(g) != runs {
                    recs.extend(runs.iter().map(|&(dlba, dlen)| Record::PendingWritten { grant: *id, dlba, dlen }));
                }
            }
            let n = recs.len();
            if n > 0 {
                self.txn(inner, |tx| recs.into_iter().try_for_each(|r| tx.rec(r)))?;
            }
            Ok(n)
        });
        if r.is_err() {
            self.guard.set_dirty();
        }
        r
    }

    /// Serve [`Guard::persist_then`] from a thread of this volume: flushes that arrive together
    /// share one journal transaction. The thread ends with the guard.
    pub fn start_persister(self: &Arc<Self>) {
        let (tx, rx) = std::sync::mpsc::channel::<super::guard::PersistDone>();
        let weak = Arc::downgrade(self);
        let name = self.name.clone();
        let spawned = std::thread::Builder::new().name(format!("layout-flush-{name}")).spawn(move || {
            while let Ok(first) = rx.recv() {
                let batch: Vec<_> = std::iter::once(first).chain(rx.try_iter()).collect();
                let ok = match weak.upgrade() {
                    Some(v) => v.persist_written().map_err(|e| tracing::error!(volume = %name, "saving written-block bits failed: {e}")).is_ok(),
                    None => false,
                };
                for done in batch {
                    done(ok);
                }
            }
        });
        match spawned {
            Ok(_) => self.guard.set_persister(Some(tx)),
            Err(e) => tracing::error!(volume = %self.name, "cannot start the flush thread: {e}; written bits are saved at commit and shutdown only"),
        }
    }

    pub fn check(&self) -> Vec<String> {
        self.with_state(|s| s.check())
    }
}
