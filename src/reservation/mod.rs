//! Persistent reservations: one engine per volume, shared by SCSI and NVMe.
//!
//! [`Reservations`] is the per-volume engine handle. Front-ends decode their wire format into an
//! [`Action`] (see `scsi::pr`, `nvme::reservation`) and call [`Reservations::execute`]; reads
//! (PR IN, Reservation Report) use [`Reservations::read`]. Every change is applied to a copy of
//! the state, made durable first when APTPL/PTPL is on (off the reactor, on the `pr-persist`
//! thread), then committed and published as an immutable [`Snapshot`] that the volume checks on
//! every I/O without a lock. PREEMPT AND ABORT additionally waits for the volume's [`Fence`] to
//! drain in-flight writes on every reactor before it completes. Actions are serialised: while one
//! is being persisted or drained, later ones queue behind it.
//!
//! This module knows nothing of volumes, SCSI or NVMe (they import it).

pub mod cluster;
mod describe;
mod events;
pub mod nexus;
pub mod persist;
mod spc2;
pub mod snapshot;
pub mod state;
pub mod types;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;

pub use nexus::{Nexus, NexusRef};
pub use persist::{PersistError, Store};
pub use snapshot::Snapshot;
pub use state::{Action, Applied, Aptpl, PrState, Registrant, Reservation};
pub use types::{allowed, CommandClass, PrError, PrEvent, Relation, ResType};

/// Pending unit attentions / notifications kept per volume; the oldest go first beyond this
/// (an initiator that never comes back must not grow memory without bound).
const MAX_EVENTS: usize = 8192;

/// Completion callback of a deferred action (called on the persist thread or a reactor thread;
/// front-ends send themselves a message from it).
pub type Done = Box<dyn FnOnce(Result<Applied, PrError>) + Send>;

/// Drains in-flight writes on every reactor (implemented by the volume layer). `done` runs once
/// no write submitted before `drain` was called is still in flight anywhere.
pub trait Fence: Send + Sync {
    fn drain(&self, done: Box<dyn FnOnce() + Send>);
}

struct Event {
    nexus: Nexus,
    all_tg_pt: bool,
    event: PrEvent,
}

struct Job {
    who: Nexus,
    action: Action,
    done: Done,
}

struct Inner {
    state: PrState,
    /// An action is being persisted or drained; others queue.
    busy: bool,
    queue: VecDeque<Job>,
    events: VecDeque<Event>,
    spc2: Option<Nexus>,
    /// iSCSI target ports seen, by relative target port identifier (REGISTER AND MOVE names the
    /// destination's port by it).
    ports: BTreeMap<u16, String>,
    /// NVMe Reservation Notification Mask per host (Feature 82h), and log page counts.
    masks: HashMap<Nexus, u32>,
    log_counts: HashMap<Nexus, u64>,
    /// A state file exists on disk (APTPL was on at the last write).
    on_disk: bool,
}

pub struct Reservations {
    inner: Mutex<Inner>,
    snap: ArcSwap<Snapshot>,
    seq: AtomicU64,
    pending_events: AtomicUsize,
    store: Mutex<Option<Store>>,
    fence: OnceLock<Arc<dyn Fence>>,
    /// Set when the volume is clustered: the state lives in etcd (`cluster.rs`).
    cluster: OnceLock<Arc<cluster::ClusterPr>>,
}

/// One background thread for every volume's fsyncs: the reactors never block on the disk.
fn persist_thread() -> &'static Mutex<mpsc::Sender<Box<dyn FnOnce() + Send>>> {
    static TX: OnceLock<Mutex<mpsc::Sender<Box<dyn FnOnce() + Send>>>> = OnceLock::new();
    TX.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Box<dyn FnOnce() + Send>>();
        std::thread::Builder::new()
            .name("pr-persist".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job();
                }
            })
            .expect("spawn pr-persist thread");
        Mutex::new(tx)
    })
}

fn background(f: impl FnOnce() + Send + 'static) {
    let _ = persist_thread().lock().unwrap().send(Box::new(f));
}

impl Reservations {
    /// A volume's engine; with a store, the persisted state is loaded (a corrupt file is an error
    /// naming it).
    pub fn new(store: Option<Store>) -> Result<Reservations, PersistError> {
        let loaded = match &store {
            Some(s) => s.load()?,
            None => None,
        };
        let on_disk = loaded.is_some();
        let state = loaded.unwrap_or_default();
        let snap = Snapshot::build(1, &state, None);
        Ok(Reservations {
            inner: Mutex::new(Inner {
                state,
                busy: false,
                queue: VecDeque::new(),
                events: VecDeque::new(),
                spc2: None,
                ports: BTreeMap::new(),
                masks: HashMap::new(),
                log_counts: HashMap::new(),
                on_disk,
            }),
            snap: ArcSwap::from_pointee(snap),
            seq: AtomicU64::new(1),
            pending_events: AtomicUsize::new(0),
            store: Mutex::new(store),
            fence: OnceLock::new(),
            cluster: OnceLock::new(),
        })
    }

    /// Install the volume's drain mechanism (once).
    pub fn set_fence(&self, f: Arc<dyn Fence>) {
        let _ = self.fence.set(f);
    }

    /// Use another state file (SPDK's `ptpl_file`): loads it if this engine holds no state yet.
    pub fn set_store(&self, store: Store) -> Result<(), PersistError> {
        let loaded = store.load()?;
        let mut g = self.inner.lock().unwrap();
        if let Some(s) = loaded {
            if g.state.registrants.is_empty() {
                g.state = s;
                g.on_disk = true;
                self.publish(&g);
            }
        }
        *self.store.lock().unwrap() = Some(store);
        Ok(())
    }

    pub fn store_path(&self) -> Option<std::path::PathBuf> {
        self.store.lock().unwrap().as_ref().map(|s| s.path.clone())
    }

    /// The current snapshot (lock-free).
    #[inline]
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snap.load()
    }

    /// Run `f` on the committed state (PR IN, Reservation Report, management).
    pub fn read<T>(&self, f: impl FnOnce(&PrState) -> T) -> T {
        f(&self.inner.lock().unwrap().state)
    }

    /// Remember the target port `who` came through (for REGISTER AND MOVE).
    pub fn observe(&self, who: NexusRef) {
        if let NexusRef::Iscsi { target_port, rel_port_id, .. } = who {
            let mut g = self.inner.lock().unwrap();
            if g.ports.get(&rel_port_id).map(String::as_str) != Some(target_port) {
                g.ports.insert(rel_port_id, target_port.to_string());
            }
        }
    }

    /// The target port name of a relative target port identifier, if seen.
    pub fn target_port(&self, rel_port_id: u16) -> Option<String> {
        self.inner.lock().unwrap().ports.get(&rel_port_id).cloned()
    }

    /// Apply `action` for `who`. Returns the result at once when nothing must be persisted or
    /// drained; otherwise `None`, and `done` is called when the action has completed (durable,
    /// published and, for PREEMPT AND ABORT, drained).
    pub fn execute(self: &Arc<Self>, who: NexusRef, action: Action, done: Done) -> Option<Result<Applied, PrError>> {
        self.observe(who);
        let mut g = self.inner.lock().unwrap();
        if g.busy {
            g.queue.push_back(Job { who: who.to_owned(), action, done });
            return None;
        }
        match self.start(g, who, action, done) {
            Started::Now(r, _) => Some(r),
            Started::Deferred => None,
        }
    }

    /// Operator override (reservation_clear RPC): drop every registration and the reservation;
    /// every registrant gets RESERVATIONS PREEMPTED (durable first when APTPL is on).
    pub fn operator_clear(self: &Arc<Self>, done: Done) -> Option<Result<Applied, PrError>> {
        // The action names no nexus; a placeholder NVMe identity matches no registrant.
        let nobody = Nexus::Nvme { host_id: [0; 16], host_nqn: String::new() };
        self.execute(nobody.as_ref(), Action::OperatorClear, done)
    }

    /// Fence a key (layout store's client fence): remove every registration holding `sa_key`
    /// (RESERVATIONS PREEMPTED... as PREEMPT AND ABORT would) and complete only after the volume's
    /// in-flight writes submitted before have drained, whether or not the key was registered.
    pub fn operator_preempt_abort(self: &Arc<Self>, sa_key: u64, done: Done) -> Option<Result<Applied, PrError>> {
        let nobody = Nexus::Nvme { host_id: [0; 16], host_nqn: String::new() };
        self.execute(nobody.as_ref(), Action::OperatorPreemptAbort { sa_key }, done)
    }

    fn start(self: &Arc<Self>, mut g: std::sync::MutexGuard<'_, Inner>, who: NexusRef, action: Action, done: Done) -> Started {
        let action = match self.resolve(&g, who, action.clone()) {
            Ok(a) => a,
            Err(e) => {
                // Key and holder checks come first (SPC-4 5.13.8): try the move with the port
                // unresolved, which cannot match anyone, to see if it would conflict anyway.
                let e = match g.state.clone().apply(who, &action) {
                    Err(PrError::Conflict) => PrError::Conflict,
                    _ => e,
                };
                return Started::Now(Err(e), done);
            }
        };
        if self.cluster.get().is_some() {
            g.busy = true;
            drop(g);
            self.clone().run_clustered(who.to_owned(), action, done);
            return Started::Deferred;
        }
        let mut next = g.state.clone();
        let applied = match next.apply(who, &action) {
            Ok(a) => a,
            Err(e) => return Started::Now(Err(e), done),
        };
        let has_store = self.store.lock().unwrap().is_some();
        let persist = has_store && applied.changed && (next.aptpl || g.on_disk);
        let drain = applied.abort && self.fence.get().is_some();
        if !persist && !drain {
            self.commit(&mut g, next, &applied);
            return Started::Now(Ok(applied), done);
        }
        g.busy = true;
        drop(g);
        let me = self.clone();
        background(move || me.finish_slow(next, applied, persist, done));
        Started::Deferred
    }

    /// REGISTER AND MOVE names the destination's target port by relative port id.
    fn resolve(&self, g: &Inner, who: NexusRef, action: Action) -> Result<Action, PrError> {
        match action {
            Action::RegisterAndMove { key, sa_key, dest: Nexus::Iscsi { initiator_port, target_port, rel_port_id }, unreg, aptpl }
                if target_port.is_empty() =>
            {
                let tp = match who {
                    NexusRef::Iscsi { target_port, rel_port_id: r, .. } if r == rel_port_id => target_port.to_string(),
                    _ => g.ports.get(&rel_port_id).cloned().ok_or(PrError::UnknownTargetPort(rel_port_id))?,
                };
                Ok(Action::RegisterAndMove {
                    key,
                    sa_key,
                    dest: Nexus::Iscsi { initiator_port, target_port: tp, rel_port_id },
                    unreg,
                    aptpl,
                })
            }
            a => Ok(a),
        }
    }

    /// On the persist thread: make `next` durable, commit it, drain if needed, complete.
    fn finish_slow(self: Arc<Self>, next: PrState, applied: Applied, persist: bool, done: Done) {
        if persist {
            let store = self.store.lock().unwrap().clone();
            let r = match &store {
                Some(s) if next.aptpl => s.save(&next),
                Some(s) => s.remove(),
                None => Ok(()),
            };
            if let Err(e) = r {
                tracing::error!("{e}");
                done(Err(PrError::Persist(e.to_string())));
                return self.next_job();
            }
        }
        {
            let mut g = self.inner.lock().unwrap();
            if persist {
                g.on_disk = next.aptpl;
            }
            self.commit(&mut g, next, &applied);
        }
        if applied.abort {
            if let Some(f) = self.fence.get().cloned() {
                let me = self.clone();
                f.drain(Box::new(move || {
                    done(Ok(applied));
                    me.next_job();
                }));
                return;
            }
        }
        done(Ok(applied));
        self.next_job()
    }

    /// The running action has completed: start the queued ones.
    fn next_job(self: &Arc<Self>) {
        loop {
            let mut g = self.inner.lock().unwrap();
            let Some(job) = g.queue.pop_front() else {
                g.busy = false;
                return;
            };
            g.busy = false;
            let Job { who, action, done } = job;
            match self.start(g, who.as_ref(), action, done) {
                // A queued job's caller already got `None`: its result goes through `done`.
                Started::Now(r, done) => done(r),
                Started::Deferred => return, // finish_slow continues the queue
            }
        }
    }

    fn commit(&self, g: &mut Inner, next: PrState, applied: &Applied) {
        g.state = next;
        for e in &applied.events {
            self.push_event(g, Event { nexus: e.nexus.clone(), all_tg_pt: e.all_tg_pt, event: e.event });
        }
        // RESERVE(6) is incompatible with any registration (SPC-4 5.13.3): a new registration
        // does not drop an SPC-2 reservation, it only makes further RESERVE(6)s conflict.
        self.publish(g);
    }

    fn publish(&self, g: &Inner) {
        let seq = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
        self.snap.store(Arc::new(Snapshot::build(seq, &g.state, g.spc2.as_ref())));
    }
}

enum Started {
    Now(Result<Applied, PrError>, Done),
    Deferred,
}
