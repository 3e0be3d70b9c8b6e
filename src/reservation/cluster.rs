//! The etcd backend of a clustered volume's reservation engine.
//!
//! The volume's state lives in one etcd key, `<prefix>/volumes/<uuid>/pr`: the [`PrState`] plus
//! the last events (unit attentions / notifications) with a sequence number. A PR OUT action is
//! applied to the state at the revision this node last saw and written back with a transaction
//! that compares that revision; if another node got there first, the node takes the newer state
//! from the failed transaction and applies the action again (so the action is judged against the
//! state it is committed on, as with one engine). Every node's watch installs each new revision
//! into its engine (snapshot for the per-I/O check, events for its nexuses), so the data path
//! stays local and lock-free. An action that changed the state then runs a cluster barrier
//! (`cluster::barrier`): it completes once every live node has installed the new state (so a
//! RESERVE returned to the initiator already conflicts on every node) and, for PREEMPT AND ABORT,
//! drained the victim's writes. An action judged without a write (an error, or nothing to change)
//! is confirmed by a compare-only transaction: it was judged on the newest state.
//!
//! What stays per node: SPC-2 RESERVE(6), the relative-port table of REGISTER AND MOVE (a
//! destination port on another node is not resolved), NVMe notification masks and log counts.
//! The state persists in etcd whatever APTPL says (a clustered logical unit outlives any one node);
//! REPORT CAPABILITIES still reports the APTPL bit as set by the initiators.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;

use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use serde::{Deserialize, Serialize};

use crate::cluster::{Change, Cluster};

use super::nexus::{Nexus, NexusRef};
use super::state::{Action, Applied, PrState};
use super::types::{PrError, PrEvent};
use super::{Done, Event, Reservations};

/// Events kept in the record: a node that misses more than this many while disconnected loses
/// the oldest (as the local queue does past `MAX_EVENTS`).
const KEEP_EVENTS: usize = 256;
/// How long a fence waits for the other nodes before the command fails (the state change stays).
const FENCE_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts at an optimistic transaction before giving up (only under heavy contention).
const RETRIES: usize = 64;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Record {
    state: PrState,
    event_seq: u64,
    events: Vec<RecEvent>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct RecEvent {
    seq: u64,
    nexus: Nexus,
    all_tg_pt: bool,
    event: PrEvent,
}

#[derive(Serialize, Deserialize)]
struct FencePayload {
    rev: i64,
    /// PREEMPT AND ABORT: also drain the writes admitted before (else: only install `rev`).
    #[serde(default = "yes")]
    drain: bool,
}

fn yes() -> bool {
    true
}

/// A clustered engine's link to etcd.
pub struct ClusterPr {
    cluster: Arc<Cluster>,
    key: String,
    topic: String,
    /// etcd revision of the record last installed (0: none yet).
    rev: AtomicI64,
    cache: Mutex<Record>,
    /// Events up to this sequence have been queued locally.
    cursor: Mutex<Option<u64>>,
}

/// One thread runs every clustered volume's PR OUT (etcd round trips, fences); never a reactor.
fn cluster_thread() -> &'static Mutex<mpsc::Sender<Box<dyn FnOnce() + Send>>> {
    static TX: OnceLock<Mutex<mpsc::Sender<Box<dyn FnOnce() + Send>>>> = OnceLock::new();
    TX.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Box<dyn FnOnce() + Send>>();
        std::thread::Builder::new()
            .name("pr-cluster".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job();
                }
            })
            .expect("spawn pr-cluster thread");
        Mutex::new(tx)
    })
}

fn etcd_err(e: crate::cluster::ClusterError) -> PrError {
    PrError::Persist(format!("cluster: {e}"))
}

impl Reservations {
    /// Move this engine's state to etcd (volume marked clustered). The state already in etcd wins;
    /// if there is none, this node's current state seeds it. Blocks on etcd: call from a
    /// management thread.
    pub fn attach_cluster(self: &Arc<Self>, cluster: Arc<Cluster>, volume_uuid: &uuid::Uuid) -> Result<(), PrError> {
        if self.cluster.get().is_some() {
            return Ok(());
        }
        let key = cluster.key(&format!("volumes/{volume_uuid}/pr"));
        let seed = Record { state: self.read(|s| s.clone()), event_seq: 0, events: Vec::new() };
        let bytes = serde_json::to_vec(&seed).expect("record serializes");
        let t = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), bytes, None)]);
        cluster.etcd.txn(t).map_err(etcd_err)?;
        let cp = Arc::new(ClusterPr {
            topic: format!("pr-{volume_uuid}"),
            cluster: cluster.clone(),
            key: key.clone(),
            rev: AtomicI64::new(0),
            cache: Mutex::new(Record::default()),
            cursor: Mutex::new(None),
        });
        // Attached concurrently (the clustered/ watch and a management call on one volume): the
        // first attach's record is the engine's; wait for that one to load.
        let cp = match self.cluster.set(cp.clone()) {
            Ok(()) => cp,
            Err(_) => return self.wait_loaded(self.cluster.get().expect("set").clone()),
        };
        let me = Arc::downgrade(self);
        cluster.watch_prefix(
            &key,
            Box::new(move |c| {
                if let Some(me) = me.upgrade() {
                    me.cluster_change(c);
                }
            }),
        );
        let me = Arc::downgrade(self);
        cluster.on_barrier(
            &cp.topic,
            Arc::new(move |payload: &[u8], ack| {
                let Some(me) = me.upgrade() else { return ack() };
                let p = serde_json::from_slice::<FencePayload>(payload).unwrap_or(FencePayload { rev: i64::MAX, drain: true });
                // Off the cluster runtime: waiting for our watch must not block it.
                std::thread::spawn(move || me.local_fence(p.rev, p.drain, ack));
            }),
        );
        self.wait_loaded(cp)
    }

    /// Serve nothing until this engine holds what etcd holds (the node's health also waits for
    /// the watch; this makes attach itself synchronous for the caller).
    fn wait_loaded(&self, cp: Arc<ClusterPr>) -> Result<(), PrError> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while cp.rev.load(Ordering::Acquire) == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if cp.rev.load(Ordering::Acquire) == 0 {
            return Err(PrError::Persist("cluster: reservation state not loaded from etcd in 10 s".into()));
        }
        Ok(())
    }

    /// Whether this engine's state lives in etcd.
    pub fn is_clustered(&self) -> bool {
        self.cluster.get().is_some()
    }

    /// This node's part of a fence: installed the state at `rev` (nothing of the victim is
    /// admitted any more), then every write admitted before has drained.
    fn local_fence(self: Arc<Self>, rev: i64, drain: bool, ack: crate::cluster::Ack) {
        let Some(cp) = self.cluster.get().cloned() else { return ack() };
        let deadline = std::time::Instant::now() + FENCE_TIMEOUT;
        while cp.rev.load(Ordering::Acquire) < rev {
            if std::time::Instant::now() > deadline {
                tracing::error!("cluster: fence at revision {rev} of {}: state not seen; not acknowledging", cp.key);
                return;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        match self.fence.get().cloned() {
            Some(f) if drain => f.drain(ack),
            _ => ack(),
        }
    }

    /// Watch: install a newer record.
    fn cluster_change(&self, c: Change<'_>) {
        let Some(cp) = self.cluster.get() else { return };
        let (bytes, rev) = match c {
            Change::Reset { kvs, rev } => match kvs.iter().find(|kv| kv.key() == cp.key.as_bytes()) {
                Some(kv) => (kv.value().to_vec(), kv.mod_revision()),
                // Deleted by an operator: an empty state at this revision.
                None => (serde_json::to_vec(&Record::default()).unwrap(), rev),
            },
            Change::Put(kv) if kv.key() == cp.key.as_bytes() => (kv.value().to_vec(), kv.mod_revision()),
            Change::Delete { rev, .. } => (serde_json::to_vec(&Record::default()).unwrap(), rev),
            Change::Put(_) => return,
        };
        match serde_json::from_slice::<Record>(&bytes) {
            Ok(r) => self.install(cp, r, rev),
            Err(e) => tracing::error!("cluster: {} is not a reservation record ({e}); keeping revision {}", cp.key, cp.rev.load(Ordering::Acquire)),
        }
    }

    /// Make `rec` (etcd revision `rev`) this engine's state, queue the events not seen yet, publish.
    fn install(&self, cp: &ClusterPr, rec: Record, rev: i64) {
        let mut g = self.inner.lock().unwrap();
        if rev <= cp.rev.load(Ordering::Acquire) {
            return;
        }
        let mut cursor = cp.cursor.lock().unwrap();
        // The first record installed sets the cursor: older events belong to the past.
        let from = cursor.unwrap_or(rec.event_seq);
        for e in rec.events.iter().filter(|e| e.seq > from) {
            self.push_event(&mut g, Event { nexus: e.nexus.clone(), all_tg_pt: e.all_tg_pt, event: e.event });
        }
        *cursor = Some(from.max(rec.event_seq));
        g.state = rec.state.clone();
        *cp.cache.lock().unwrap() = rec;
        cp.rev.store(rev, Ordering::Release);
        self.publish(&g);
    }

    /// The clustered path of `start`: runs on the pr-cluster thread.
    pub(super) fn run_clustered(self: Arc<Self>, who: Nexus, action: Action, done: Done) {
        let cp = self.cluster.get().cloned().expect("clustered engine");
        let job = self.clone();
        let _ = cluster_thread().lock().unwrap().send(Box::new(move || {
            let r = job.clone().commit_clustered(&cp, who.as_ref(), &action);
            match r {
                // Every change completes only once every live node enforces it (a RESERVE
                // returned to the initiator conflicts on every node), and PREEMPT AND ABORT once
                // every node has also drained the victim's writes.
                Ok((applied, rev)) if applied.abort || applied.changed => {
                    let payload = serde_json::to_vec(&FencePayload { rev, drain: applied.abort }).unwrap();
                    match cp.cluster.barrier(&cp.topic, &payload, FENCE_TIMEOUT) {
                        Ok(()) => done(Ok(applied)),
                        Err(e) => {
                            tracing::error!("cluster: reservation change committed at revision {rev} but not confirmed by every node: {e}");
                            done(Err(etcd_err(e)))
                        }
                    }
                }
                Ok((applied, _)) => done(Ok(applied)),
                Err(e) => done(Err(e)),
            }
            job.next_job();
        }));
    }

    /// Is `rev` still the record's revision? Else the newer record (installed here too).
    fn validate(&self, cp: &ClusterPr, rev: i64) -> Result<Option<(Record, i64)>, PrError> {
        let t = Txn::new()
            .when([Compare::mod_revision(cp.key.clone(), CompareOp::Equal, rev)])
            .or_else([TxnOp::get(cp.key.clone(), None)]);
        let resp = cp.cluster.etcd.txn(t).map_err(etcd_err)?;
        if resp.succeeded() {
            return Ok(None);
        }
        self.newer(cp, &resp).map(Some)
    }

    fn newer(&self, cp: &ClusterPr, resp: &etcd_client::TxnResponse) -> Result<(Record, i64), PrError> {
        let cur = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().map(|kv| (kv.value().to_vec(), kv.mod_revision())),
            _ => None,
        });
        let (v, r) = cur.ok_or_else(|| PrError::Persist(format!("cluster: {} was deleted", cp.key)))?;
        let rec: Record = serde_json::from_slice(&v).map_err(|e| PrError::Persist(format!("cluster: {}: {e}", cp.key)))?;
        self.install(cp, rec.clone(), r);
        Ok((rec, r))
    }

    fn commit_clustered(self: Arc<Self>, cp: &ClusterPr, who: NexusRef, action: &Action) -> Result<(Applied, i64), PrError> {
        if !cp.cluster.health().writable() {
            return Err(etcd_err(crate::cluster::ClusterError::NotServing));
        }
        let (mut base, mut rev) = (cp.cache.lock().unwrap().clone(), cp.rev.load(Ordering::Acquire));
        for _ in 0..RETRIES {
            let mut next = base.state.clone();
            let applied = next.apply(who, action);
            let unchanged = applied.as_ref().is_ok_and(|a| !a.changed && a.events.is_empty() && !a.abort);
            if applied.is_err() || unchanged {
                // Judged without writing: valid only if nobody committed since our copy.
                match self.validate(cp, rev)? {
                    None => return applied.map(|a| (a, rev)),
                    Some((b, r)) => {
                        (base, rev) = (b, r);
                        continue;
                    }
                }
            }
            let applied = applied?;
            let mut rec = Record { state: next, event_seq: base.event_seq, events: base.events.clone() };
            for e in &applied.events {
                rec.event_seq += 1;
                rec.events.push(RecEvent { seq: rec.event_seq, nexus: e.nexus.clone(), all_tg_pt: e.all_tg_pt, event: e.event });
            }
            let drop = rec.events.len().saturating_sub(KEEP_EVENTS);
            rec.events.drain(..drop);
            let bytes = serde_json::to_vec(&rec).expect("record serializes");
            let t = Txn::new()
                .when([Compare::mod_revision(cp.key.clone(), CompareOp::Equal, rev)])
                .and_then([TxnOp::put(cp.key.clone(), bytes, None)])
                .or_else([TxnOp::get(cp.key.clone(), None)]);
            let resp = cp.cluster.etcd.txn(t).map_err(etcd_err)?;
            if resp.succeeded() {
                let new_rev = resp.header().map(|h| h.revision()).unwrap_or(rev + 1);
                self.install(cp, rec, new_rev);
                return Ok((applied, new_rev));
            }
            // Another node committed first: judge the action again on its state.
            (base, rev) = self.newer(cp, &resp)?;
        }
        Err(PrError::Persist("cluster: too much contention on the reservation state".into()))
    }
}
