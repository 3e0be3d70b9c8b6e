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

pub mod nexus;
pub mod persist;
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

    fn push_event(&self, g: &mut Inner, e: Event) {
        if e.nexus.is_nvme() {
            let mask = g.masks.get(&e.nexus).copied().unwrap_or(0);
            if mask & e.event.nvme_mask_bit() != 0 {
                return;
            }
        }
        if g.events.len() >= MAX_EVENTS {
            g.events.pop_front();
        }
        g.events.push_back(e);
        self.pending_events.store(g.events.len(), Ordering::Release);
    }

    /// Any unit attention or notification pending for anyone (one load: front-ends call it before
    /// each command and only then [`Reservations::take_event`]).
    #[inline]
    pub fn events_pending(&self) -> bool {
        self.pending_events.load(Ordering::Acquire) != 0
    }

    /// The oldest pending event for `who`, removed (delivered exactly once).
    pub fn take_event(&self, who: NexusRef) -> Option<PrEvent> {
        let mut g = self.inner.lock().unwrap();
        let i = g.events.iter().position(|e| who.matches(&e.nexus, e.all_tg_pt))?;
        let e = g.events.remove(i)?;
        self.pending_events.store(g.events.len(), Ordering::Release);
        Some(e.event)
    }

    /// Is an event pending for `who` (NVMe: raise the Reservation Log Page Available AEN)?
    pub fn has_event(&self, who: NexusRef) -> bool {
        self.events_pending() && self.inner.lock().unwrap().events.iter().any(|e| who.matches(&e.nexus, e.all_tg_pt))
    }

    /// NVMe: take the next Reservation Notification log entry for `host`: (log page count,
    /// event, entries still available after this one).
    pub fn take_notification(&self, host: NexusRef) -> Option<(u64, PrEvent, usize)> {
        let ev = self.take_event(host)?;
        let mut g = self.inner.lock().unwrap();
        let owned = host.to_owned();
        let c = g.log_counts.entry(owned).or_insert(0);
        // The count wraps past 0xFFFFFFFFFFFFFFFF to 1: 0 means "no entry" (NVMe Base 2.0, Reservation Notification log page).
        *c = if *c == u64::MAX { 1 } else { *c + 1 };
        let count = *c;
        let left = g.events.iter().filter(|e| host.matches(&e.nexus, e.all_tg_pt)).count();
        Some((count, ev, left))
    }

    /// NVMe Set Features Reservation Notification Mask (82h) for `host` (bits 1..3).
    pub fn set_notification_mask(&self, host: NexusRef, mask: u32) {
        let mut g = self.inner.lock().unwrap();
        g.masks.insert(host.to_owned(), mask & 0b1110);
        // Masked types already queued are dropped too: the host asked not to see them.
        let before = g.events.len();
        g.events.retain(|e| !(host.matches(&e.nexus, e.all_tg_pt) && mask & e.event.nvme_mask_bit() != 0));
        if g.events.len() != before {
            self.pending_events.store(g.events.len(), Ordering::Release);
        }
    }

    pub fn notification_mask(&self, host: NexusRef) -> u32 {
        self.inner.lock().unwrap().masks.get(&host.to_owned()).copied().unwrap_or(0)
    }

    /// RESERVE(6)/(10) (SPC-2 5.5.1 with SPC-4 5.13.3 and CRH=1).
    pub fn reserve6(&self, who: NexusRef) -> Result<(), PrError> {
        let mut g = self.inner.lock().unwrap();
        if !g.state.registrants.is_empty() || g.state.reservation.is_some() {
            // CRH=1: the holder (or a registrant of a RO/AR reservation) gets GOOD, no effect.
            return match g.state.relation(who) {
                Relation::Holder => Ok(()),
                Relation::Registered if g.state.reservation.is_some_and(|r| r.rtype.registrants_have_access()) => Ok(()),
                _ => Err(PrError::Conflict),
            };
        }
        match &g.spc2 {
            Some(h) if !who.matches(h, false) => Err(PrError::Conflict),
            Some(_) => Ok(()),
            None => {
                g.spc2 = Some(who.to_owned());
                self.publish(&g);
                Ok(())
            }
        }
    }

    /// RELEASE(6)/(10): the holder releases; anyone else gets GOOD with no effect (SPC-2 5.5.1).
    pub fn release6(&self, who: NexusRef) -> Result<(), PrError> {
        let mut g = self.inner.lock().unwrap();
        if !g.state.registrants.is_empty() || g.state.reservation.is_some() {
            return match g.state.relation(who) {
                Relation::Holder => Ok(()),
                Relation::Registered if g.state.reservation.is_some_and(|r| r.rtype.registrants_have_access()) => Ok(()),
                _ => Err(PrError::Conflict),
            };
        }
        if g.spc2.as_ref().is_some_and(|h| who.matches(h, false)) {
            g.spc2 = None;
            self.publish(&g);
        }
        Ok(())
    }

    /// I_T nexus loss or logical unit reset: an SPC-2 reservation of that nexus (or any, for a
    /// reset) goes away; persistent reservations stay (SPC-4 5.13.1).
    pub fn nexus_lost(&self, who: Option<NexusRef>) {
        let mut g = self.inner.lock().unwrap();
        let drop = match (&g.spc2, who) {
            (Some(h), Some(w)) => w.matches(h, false),
            (Some(_), None) => true,
            _ => false,
        };
        if drop {
            g.spc2 = None;
            self.publish(&g);
        }
    }

    /// The management view (reservation_get).
    pub fn describe(&self) -> serde_json::Value {
        let g = self.inner.lock().unwrap();
        let s = &g.state;
        let regs: Vec<_> = s
            .registrants
            .iter()
            .map(|r| {
                let mut v = serde_json::json!({
                    "key": format!("0x{:016x}", r.key),
                    "holder": s.is_holder(r),
                    "all_tg_pt": r.all_tg_pt,
                });
                match &r.nexus {
                    Nexus::Iscsi { initiator_port, target_port, rel_port_id } => {
                        v["protocol"] = "iscsi".into();
                        v["initiator_port"] = initiator_port.clone().into();
                        v["target_port"] = target_port.clone().into();
                        v["relative_target_port_id"] = (*rel_port_id).into();
                    }
                    Nexus::Nvme { host_id, host_nqn } => {
                        v["protocol"] = "nvme".into();
                        v["hostnqn"] = host_nqn.clone().into();
                        v["hostid"] = uuid::Uuid::from_bytes(*host_id).hyphenated().to_string().into();
                    }
                }
                v
            })
            .collect();
        let holder = s.holder().map(|h| h.nexus.describe());
        serde_json::json!({
            "generation": s.generation,
            "aptpl": s.aptpl,
            "state_file": self.store.lock().unwrap().as_ref().map(|st| st.path.display().to_string()),
            "reservation": s.reservation.map(|r| serde_json::json!({
                "type": format!("{:?}", r.rtype),
                "scsi_type": r.rtype.scsi_code(),
                "nvme_rtype": r.rtype.nvme_code(),
                "key": format!("0x{:016x}", s.reservation_key()),
                "holder": if r.rtype.all_registrants() { None } else { holder },
                "all_registrants": r.rtype.all_registrants(),
            })),
            "registrants": regs,
            "spc2_reservation_holder": g.spc2.as_ref().map(|n| n.describe()),
        })
    }
}

enum Started {
    Now(Result<Applied, PrError>, Done),
    Deferred,
}
