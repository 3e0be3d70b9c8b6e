//! Layout metadata in etcd (`metadata_cluster`): one layout state for every node that exports the
//! data device, as the design's "beyond one machine" asks.
//!
//! Keys, under `<cluster prefix>/layout/<data bdev uuid>/`:
//!
//! | key | value |
//! | --- | --- |
//! | `head` | sequence number of the last transaction (decimal) |
//! | `txn/<seq, 20 digits>` | one transaction: its records ([`encode_txn`]) |
//! | `ckpt` | the checkpoint in use: `{"seq", "chunks", "bytes", "crc"}` (crc32c of the image) |
//! | `chunk/<ckpt seq, 20 digits>/<i, 6 digits>` | the checkpoint image ([`encode_image`]) in 1 MiB pieces |
//!
//! The state is the image at `ckpt.seq` plus transactions `ckpt.seq+1 ..= head`. An append is one
//! etcd transaction: if `head`'s mod revision is still the one this node last saw, put the record
//! and the new head; otherwise nothing happens and the caller catches up and judges its operation
//! again ([`LayoutError::Stale`]). A checkpoint writes the image's pieces first (each its own
//! request: etcd refuses requests over 1.5 MiB by default, so one transaction cannot carry a large
//! image), then in one transaction that compares `head` and `ckpt` switches `ckpt` to it and deletes
//! the transactions it covers and older images' pieces. Pieces of a checkpoint that lost the race
//! are left behind until the next checkpoint deletes everything below it. Reads that span several
//! keys are pinned to one etcd revision, so a concurrent checkpoint cannot tear them.
//!
//! Every node watches `txn/`; records arriving there are queued ([`Inbox`]) and a follower thread
//! of the volume applies them (the watch callback runs on the cluster runtime and must not block).
//! A gap in the queue (records compacted by a checkpoint while the watch was down) or a watch
//! restart makes the next catch-up read from etcd: the records after this node's head, or the
//! whole state when the checkpoint has passed it.
//!
//! Limits: a single transaction's records must fit in 1 MiB (an error says so; operations make
//! far smaller ones); reads are bounded by the gRPC message limit (4 MiB), which the 1 MiB pieces
//! and paged transaction reads respect.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, DeleteOptions, GetOptions, GetResponse, SortOrder, SortTarget, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use super::error::LayoutError;
use super::journal::{decode_image, decode_txn, encode_image, encode_txn, CatchUp, Changes, MetaStore, Peers, Replay};
use super::state::{Record, State};
use crate::cluster::etcd::{Etcd, CALL_TIMEOUT};
use crate::cluster::{Change, Cluster, ClusterError};

/// Bytes per request we write: below etcd's default `--max-request-bytes` (1.5 MiB) with room
/// for keys and framing.
pub const CHUNK: usize = 1 << 20;
/// Checkpoint after this many transactions ...
const CHECKPOINT_TXNS: u64 = 1024;
/// ... or this many bytes of transactions (this node's appends) since the last one.
const CHECKPOINT_BYTES: u64 = 1 << 20;
/// Transactions read per request when catching up (bounded answer size).
const PAGE: i64 = 256;
/// How long a node waits for its own follower to install a fence before not acknowledging it.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);

fn cerr(e: ClusterError) -> LayoutError {
    match e {
        ClusterError::NotServing => LayoutError::Unavailable(e.to_string()),
        e => LayoutError::Io(format!("etcd: {e}")),
    }
}

/// The keys of one layout volume.
#[derive(Clone, Debug)]
pub struct Keys {
    base: String,
}

impl Keys {
    /// `prefix`: the cluster's key prefix (`/palisade`).
    pub fn new(prefix: &str, data_uuid: &uuid::Uuid) -> Keys {
        Keys { base: format!("{prefix}/layout/{data_uuid}/") }
    }
    pub fn base(&self) -> &str {
        &self.base
    }
    fn head(&self) -> String {
        format!("{}head", self.base)
    }
    fn ckpt(&self) -> String {
        format!("{}ckpt", self.base)
    }
    fn chunk(&self, seq: u64, i: usize) -> String {
        format!("{}chunk/{seq:020}/{i:06}", self.base)
    }
    fn txn(&self, seq: u64) -> String {
        format!("{}txn/{seq:020}", self.base)
    }
    fn txn_prefix(&self) -> String {
        format!("{}txn/", self.base)
    }
    /// One past every `txn/` key ('0' follows '/').
    fn txn_end(&self) -> String {
        format!("{}txn0", self.base)
    }
    fn seq_of(&self, key: &[u8]) -> Option<u64> {
        std::str::from_utf8(key).ok()?.strip_prefix(self.txn_prefix().as_str())?.parse().ok()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct CkptMeta {
    seq: u64,
    chunks: usize,
    bytes: usize,
    crc: u32,
}

/// What a read from etcd found: the head and, when asked or needed, the checkpoint image, then
/// the transactions after the image (or after the reader's head).
struct Fetched {
    head: u64,
    head_rev: i64,
    ckpt: CkptMeta,
    ckpt_rev: i64,
    image: Option<Vec<u8>>,
    txns: Vec<(u64, Vec<Record>, i64)>,
}

/// One bounded etcd get (blocking: never call it on the cluster runtime or a reactor).
fn get(etcd: &Etcd, key: String, opts: Option<GetOptions>) -> Result<GetResponse, LayoutError> {
    let mut c = etcd.client();
    etcd.block(async move { tokio::time::timeout(CALL_TIMEOUT, c.get(key, opts)).await })
        .map_err(|_| LayoutError::Io("etcd: call timed out".into()))?
        .map_err(|e| LayoutError::Io(format!("etcd: {e}")))
}

fn at(rev: i64) -> GetOptions {
    GetOptions::new().with_revision(rev)
}

/// Read the state's keys at one revision. `after`: the reader's head (None: load from scratch);
/// the image is read when loading or when the checkpoint has passed the reader.
fn read(etcd: &Etcd, keys: &Keys, after: Option<u64>) -> Result<Option<Fetched>, LayoutError> {
    let r = get(etcd, keys.head(), None)?;
    let Some(kv) = r.kvs().first() else { return Ok(None) };
    let rev = r.header().map(|h| h.revision()).unwrap_or(0);
    let head: u64 = std::str::from_utf8(kv.value()).ok().and_then(|s| s.parse().ok()).ok_or_else(|| LayoutError::Corrupt(format!("{}: not a number", keys.head())))?;
    let head_rev = kv.mod_revision();
    let r = get(etcd, keys.ckpt(), Some(at(rev)))?;
    let kv = r.kvs().first().ok_or_else(|| LayoutError::Corrupt(format!("{} missing", keys.ckpt())))?;
    let ckpt: CkptMeta = serde_json::from_slice(kv.value()).map_err(|e| LayoutError::Corrupt(format!("{}: {e}", keys.ckpt())))?;
    let ckpt_rev = kv.mod_revision();
    if ckpt.seq > head {
        return Err(LayoutError::Corrupt(format!("checkpoint at {} is past the head {head}", ckpt.seq)));
    }
    let image = match after {
        Some(s) if s >= ckpt.seq => None,
        _ => {
            let mut img = Vec::with_capacity(ckpt.bytes);
            for i in 0..ckpt.chunks {
                let r = get(etcd, keys.chunk(ckpt.seq, i), Some(at(rev)))?;
                let kv = r.kvs().first().ok_or_else(|| LayoutError::Corrupt(format!("{} missing", keys.chunk(ckpt.seq, i))))?;
                img.extend_from_slice(kv.value());
            }
            if img.len() != ckpt.bytes || crc32c::crc32c(&img) != ckpt.crc {
                return Err(LayoutError::Corrupt(format!("checkpoint image at {}: length or checksum mismatch", ckpt.seq)));
            }
            Some(img)
        }
    };
    let from = if image.is_some() { ckpt.seq } else { after.unwrap_or(ckpt.seq) };
    let mut txns = Vec::new();
    let mut next = from + 1;
    while next <= head {
        let opts = at(rev).with_range(keys.txn_end()).with_limit(PAGE).with_sort(SortTarget::Key, SortOrder::Ascend);
        let r = get(etcd, keys.txn(next), Some(opts))?;
        if r.kvs().is_empty() {
            break;
        }
        for kv in r.kvs() {
            let seq = keys.seq_of(kv.key()).ok_or_else(|| LayoutError::Corrupt(format!("stray key {:?}", kv.key_str())))?;
            if seq != next {
                return Err(LayoutError::Corrupt(format!("transaction {next} missing (found {seq})")));
            }
            txns.push((seq, decode_txn(kv.value(), seq, 0)?, kv.mod_revision()));
            next += 1;
        }
    }
    if next != head + 1 {
        return Err(LayoutError::Corrupt(format!("transactions {next}..={head} missing")));
    }
    Ok(Some(Fetched { head, head_rev, ckpt, ckpt_rev, image, txns }))
}

/// Build the state a fetch from scratch describes; with `strict`, also check it.
fn state_of(f: &Fetched, strict: bool) -> Result<(State, Replay), LayoutError> {
    let img = f.image.as_ref().expect("a load reads the image");
    let mut st = State::from_image(decode_image(img)?)?;
    let mut replay = Replay { bytes: img.len() as u64, ..Default::default() };
    for (seq, recs, _) in &f.txns {
        st.apply_all(recs).map_err(|e| LayoutError::Corrupt(format!("replaying transaction {seq}: {e}")))?;
        replay.transactions += 1;
        replay.records += recs.len() as u64;
    }
    if strict {
        let problems = st.check();
        if !problems.is_empty() {
            return Err(LayoutError::Corrupt(format!("state in etcd is inconsistent: {}", problems.join("; "))));
        }
    }
    Ok((st, replay))
}

/// Load a volume's state without joining the cluster (`palisade fsck --cluster`): the state
/// (unchecked: the caller checks) and what was replayed. None: no state for this device.
pub fn load_offline(endpoints: &[String], prefix: &str, data_uuid: &uuid::Uuid) -> Result<Option<(State, Replay, u64)>, LayoutError> {
    let etcd = Etcd::connect(endpoints).map_err(cerr)?;
    let keys = Keys::new(prefix, data_uuid);
    let Some(f) = read(&etcd, &keys, None)? else { return Ok(None) };
    let (st, replay) = state_of(&f, false)?;
    Ok(Some((st, replay, f.head)))
}

/// Records the watch delivered, not yet applied.
#[derive(Default)]
struct Inbox {
    recs: Mutex<BTreeMap<u64, (Vec<u8>, i64)>>,
    /// The watch restarted (or a fence waits on us): the next catch-up asks etcd for the head.
    fetch: AtomicBool,
    /// The watch has read the prefix once.
    started: AtomicBool,
}

/// The part shared with the watch, the barrier handler and the follower thread.
pub struct EtcdPeers {
    cluster: Arc<Cluster>,
    keys: Keys,
    topic: String,
    /// Barrier topic of [`Peers::collect_written`].
    collect_topic: String,
    collect: Mutex<Option<Arc<dyn Fn() -> bool + Send + Sync>>>,
    inbox: Inbox,
    changes: Changes,
    /// The head this node's state and guard reflect.
    installed: AtomicU64,
}

impl EtcdPeers {
    fn on_watch(&self, c: Change<'_>) {
        match c {
            Change::Reset { kvs, .. } => {
                let mut m = self.inbox.recs.lock().unwrap();
                for kv in kvs {
                    if let Some(seq) = self.keys.seq_of(kv.key()) {
                        m.insert(seq, (kv.value().to_vec(), kv.mod_revision()));
                    }
                }
                // Something may have been appended and compacted while the watch was down.
                self.inbox.fetch.store(true, Ordering::Release);
                self.inbox.started.store(true, Ordering::Release);
            }
            Change::Put(kv) => {
                if let Some(seq) = self.keys.seq_of(kv.key()) {
                    self.inbox.recs.lock().unwrap().insert(seq, (kv.value().to_vec(), kv.mod_revision()));
                }
            }
            // Deletions are checkpoints compacting what every current node applied already.
            Change::Delete { .. } => return,
        }
        self.changes.notify();
    }

    /// Barrier handler: acknowledge once this node installed `seq` (off the cluster runtime).
    fn on_settle(self: Arc<Self>, seq: u64, ack: crate::cluster::Ack) {
        if self.installed.load(Ordering::Acquire) >= seq {
            return ack();
        }
        self.inbox.fetch.store(true, Ordering::Release);
        self.changes.notify();
        std::thread::spawn(move || {
            let deadline = Instant::now() + SETTLE_TIMEOUT;
            while self.installed.load(Ordering::Acquire) < seq {
                if Instant::now() > deadline {
                    tracing::error!("layout {}: transaction {seq} not installed in time; not acknowledging the fence", self.keys.base);
                    return;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            ack();
        });
    }
}

impl Peers for EtcdPeers {
    fn changes(&self) -> &Changes {
        &self.changes
    }
    fn settle(&self, seq: u64) -> Result<(), LayoutError> {
        let payload = seq.to_string().into_bytes();
        self.cluster.barrier(&self.topic, &payload, SETTLE_TIMEOUT).map_err(cerr)
    }
    fn collect_written(&self) -> Result<(), LayoutError> {
        self.cluster.barrier(&self.collect_topic, b"", SETTLE_TIMEOUT).map_err(cerr)
    }
    fn on_collect(&self, f: Box<dyn Fn() -> bool + Send + Sync>) {
        *self.collect.lock().unwrap() = Some(Arc::from(f));
    }
}

/// The etcd [`MetaStore`] of one layout volume on this node.
pub struct EtcdMeta {
    peers: Arc<EtcdPeers>,
    keys: Keys,
    seq: u64,
    /// Mod revision of `head` at `seq` (what an append compares).
    head_rev: i64,
    ckpt_seq: u64,
    ckpt_rev: i64,
    since_bytes: u64,
}

impl EtcdMeta {
    /// The store of the layout volume on data device `data_uuid`: starts the watch on its
    /// transactions and the fence barrier's handler. Blocking calls follow; call from a
    /// management thread.
    pub fn new(cluster: Arc<Cluster>, data_uuid: &uuid::Uuid) -> EtcdMeta {
        let keys = Keys::new(&cluster.cfg.prefix, data_uuid);
        let peers = Arc::new(EtcdPeers {
            cluster: cluster.clone(),
            keys: keys.clone(),
            topic: format!("layout-{data_uuid}"),
            collect_topic: format!("layout-written-{data_uuid}"),
            collect: Mutex::new(None),
            inbox: Inbox::default(),
            changes: Changes::default(),
            installed: AtomicU64::new(0),
        });
        let w: Weak<EtcdPeers> = Arc::downgrade(&peers);
        cluster.watch_prefix(
            &keys.txn_prefix(),
            Box::new(move |c| {
                if let Some(p) = w.upgrade() {
                    p.on_watch(c);
                }
            }),
        );
        let w: Weak<EtcdPeers> = Arc::downgrade(&peers);
        cluster.on_barrier(
            &peers.topic,
            Arc::new(move |payload: &[u8], ack| {
                let seq = std::str::from_utf8(payload).ok().and_then(|s| s.parse().ok()).unwrap_or(u64::MAX);
                match w.upgrade() {
                    Some(p) => p.on_settle(seq, ack),
                    // Not serving this volume any more: nothing of it to stop here.
                    None => ack(),
                }
            }),
        );
        let w: Weak<EtcdPeers> = Arc::downgrade(&peers);
        cluster.on_barrier(
            &peers.collect_topic,
            Arc::new(move |_: &[u8], ack| {
                let f = w.upgrade().and_then(|p| p.collect.lock().unwrap().clone());
                let Some(f) = f else { return ack() };
                // Journaling blocks on etcd: never on the cluster runtime.
                std::thread::spawn(move || {
                    if f() {
                        ack();
                    }
                });
            }),
        );
        // A new watch makes the node unwritable until it has read its prefix: wait for that (the
        // first create or append would fail closed otherwise). Bounded: past it, calls fail
        // closed with the reason.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(peers.inbox.started.load(Ordering::Acquire) && cluster.health().writable()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        EtcdMeta { peers, keys, seq: 0, head_rev: 0, ckpt_seq: 0, ckpt_rev: 0, since_bytes: 0 }
    }

    /// Is there a layout state for this device in etcd?
    pub fn exists(&self) -> Result<bool, LayoutError> {
        Self::exists_in(&self.peers.cluster, &self.keys)
    }

    /// The same, without a store (no watch started).
    pub fn exists_in(cluster: &Cluster, keys: &Keys) -> Result<bool, LayoutError> {
        Ok(!get(&cluster.etcd, keys.head(), None)?.kvs().is_empty())
    }

    fn etcd(&self) -> &Etcd {
        &self.peers.cluster.etcd
    }

    fn txn(&self, t: Txn) -> Result<etcd_client::TxnResponse, LayoutError> {
        self.etcd().txn(t).map_err(cerr)
    }

    /// Write the image of `st` (at `seq`) in pieces; returns its `ckpt` record and the puts of the
    /// pieces that did not go out on their own (a small image rides in the switching transaction).
    fn write_image(&self, st: &State, seq: u64) -> Result<(CkptMeta, Vec<TxnOp>), LayoutError> {
        let img = encode_image(st);
        let pieces: Vec<&[u8]> = img.chunks(CHUNK).collect();
        let meta = CkptMeta { seq, chunks: pieces.len(), bytes: img.len(), crc: crc32c::crc32c(&img) };
        if pieces.len() == 1 && img.len() <= CHUNK / 2 {
            return Ok((meta, vec![TxnOp::put(self.keys.chunk(seq, 0), pieces[0].to_vec(), None)]));
        }
        for (i, p) in pieces.iter().enumerate() {
            self.txn(Txn::new().and_then([TxnOp::put(self.keys.chunk(seq, i), p.to_vec(), None)]))?;
        }
        Ok((meta, Vec::new()))
    }

    fn adopt(&mut self, f: &Fetched) {
        self.seq = f.head;
        self.head_rev = f.head_rev;
        self.ckpt_seq = f.ckpt.seq;
        self.ckpt_rev = f.ckpt_rev;
    }
}

impl MetaStore for EtcdMeta {
    fn create(&mut self, st: &State) -> Result<(), LayoutError> {
        self.writable()?;
        let (meta, mut ops) = self.write_image(st, 0)?;
        ops.push(TxnOp::put(self.keys.ckpt(), serde_json::to_vec(&meta).expect("ckpt serializes"), None));
        ops.push(TxnOp::put(self.keys.head(), "0", None));
        let r = self.txn(Txn::new().when([Compare::create_revision(self.keys.head(), CompareOp::Equal, 0)]).and_then(ops))?;
        if !r.succeeded() {
            return Err(LayoutError::Invalid(format!("{} already holds a layout state (created by another node meanwhile): open it", self.describe())));
        }
        let rev = r.header().map(|h| h.revision()).unwrap_or(0);
        (self.seq, self.head_rev, self.ckpt_seq, self.ckpt_rev) = (0, rev, 0, rev);
        Ok(())
    }

    fn load(&mut self) -> Result<(State, Replay), LayoutError> {
        let f = read(self.etcd(), &self.keys, None)?.ok_or_else(|| LayoutError::Invalid(format!("no layout state at {}", self.describe())))?;
        let (st, replay) = state_of(&f, true)?;
        self.adopt(&f);
        Ok((st, replay))
    }

    fn append(&mut self, txn: &[Record]) -> Result<(), LayoutError> {
        self.writable()?;
        let payload = encode_txn(txn);
        if payload.len() > CHUNK {
            return Err(LayoutError::Invalid(format!(
                "transaction of {} bytes exceeds what one etcd request carries ({CHUNK}): split the operation",
                payload.len()
            )));
        }
        let n = payload.len() as u64;
        let next = self.seq + 1;
        let t = Txn::new()
            .when([Compare::mod_revision(self.keys.head(), CompareOp::Equal, self.head_rev)])
            .and_then([TxnOp::put(self.keys.txn(next), payload, None), TxnOp::put(self.keys.head(), next.to_string(), None)]);
        let r = self.txn(t)?;
        if !r.succeeded() {
            return Err(LayoutError::Stale(format!("another node appended to {} first", self.describe())));
        }
        self.seq = next;
        self.head_rev = r.header().map(|h| h.revision()).unwrap_or(self.head_rev);
        self.since_bytes += n;
        Ok(())
    }

    fn checkpoint(&mut self, st: &State) -> Result<(), LayoutError> {
        // Another node may have checkpointed at this head already.
        let r = get(self.etcd(), self.keys.ckpt(), None)?;
        if let Some(kv) = r.kvs().first() {
            if let Ok(m) = serde_json::from_slice::<CkptMeta>(kv.value()) {
                (self.ckpt_seq, self.ckpt_rev) = (m.seq, kv.mod_revision());
            }
        }
        if self.ckpt_seq >= self.seq {
            self.since_bytes = 0;
            return Ok(());
        }
        let seq = self.seq;
        let (meta, mut ops) = self.write_image(st, seq)?;
        ops.push(TxnOp::put(self.keys.ckpt(), serde_json::to_vec(&meta).expect("ckpt serializes"), None));
        ops.push(TxnOp::delete(self.keys.txn_prefix(), Some(DeleteOptions::new().with_range(self.keys.txn(seq + 1)))));
        ops.push(TxnOp::delete(format!("{}chunk/", self.keys.base), Some(DeleteOptions::new().with_range(format!("{}chunk/{seq:020}", self.keys.base)))));
        let t = Txn::new()
            .when([
                Compare::mod_revision(self.keys.head(), CompareOp::Equal, self.head_rev),
                Compare::mod_revision(self.keys.ckpt(), CompareOp::Equal, self.ckpt_rev),
            ])
            .and_then(ops);
        let r = self.txn(t)?;
        if r.succeeded() {
            self.ckpt_seq = seq;
            self.ckpt_rev = r.header().map(|h| h.revision()).unwrap_or(0);
            self.since_bytes = 0;
        } else {
            // Another node appended or checkpointed meanwhile: a later checkpoint will do.
            tracing::debug!("layout {}: checkpoint at {seq} overtaken", self.keys.base);
        }
        Ok(())
    }

    fn wants_checkpoint(&self) -> bool {
        self.seq.saturating_sub(self.ckpt_seq) >= CHECKPOINT_TXNS || self.since_bytes >= CHECKPOINT_BYTES
    }

    fn describe(&self) -> String {
        format!("etcd {}", self.keys.base)
    }

    fn shared(&self) -> bool {
        true
    }

    fn catch_up(&mut self, fetch: bool) -> Result<CatchUp, LayoutError> {
        let fetch = self.peers.inbox.fetch.swap(false, Ordering::AcqRel) || fetch;
        let mut out = Vec::new();
        let gap = {
            let mut m = self.peers.inbox.recs.lock().unwrap();
            let mine = self.seq;
            m.retain(|s, _| *s > mine);
            while let Some((bytes, rev)) = m.remove(&(self.seq + 1)) {
                out.push(decode_txn(&bytes, self.seq + 1, 0)?);
                self.seq += 1;
                // The head was put by the same etcd transaction as this record.
                self.head_rev = rev;
            }
            !m.is_empty()
        };
        if !(fetch || gap) {
            return Ok(CatchUp::Txns(out));
        }
        let f = match read(self.etcd(), &self.keys, Some(self.seq)) {
            Ok(Some(f)) => f,
            Ok(None) => return Err(LayoutError::Corrupt(format!("{}: the layout state was deleted from etcd", self.describe()))),
            Err(e) => {
                // Try again next time; what was applied from the queue stands.
                self.peers.inbox.fetch.store(true, Ordering::Release);
                if out.is_empty() {
                    return Err(e);
                }
                tracing::warn!("layout {}: catching up from etcd: {e}", self.keys.base);
                return Ok(CatchUp::Txns(out));
            }
        };
        if f.image.is_some() {
            let (st, _) = state_of(&f, true)?;
            self.adopt(&f);
            return Ok(CatchUp::Reload(st));
        }
        self.adopt(&f);
        out.extend(f.txns.into_iter().map(|(_, recs, _)| recs));
        Ok(CatchUp::Txns(out))
    }

    fn peers(&self) -> Option<Arc<dyn Peers>> {
        Some(self.peers.clone())
    }

    fn writable(&self) -> Result<(), LayoutError> {
        let h = self.peers.cluster.health();
        if h.writable() {
            return Ok(());
        }
        let why = h.describe()["reason"].as_str().unwrap_or("").to_string();
        Err(LayoutError::Unavailable(format!("this node cannot change the layout state in etcd now ({why}); retry or use another node")))
    }

    fn head(&self) -> u64 {
        self.seq
    }

    fn installed(&self) {
        self.peers.installed.fetch_max(self.seq, Ordering::AcqRel);
    }
}
