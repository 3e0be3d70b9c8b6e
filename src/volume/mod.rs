//! The narrow waist: every protocol's I/O reaches a bdev through a [`Volume`].
//!
//! A volume is one bdev plus the state both protocols must agree on (reservations, the layout
//! guard, added by later layers). Protocol front-ends translate commands into [`IoRequest`]s and
//! call [`Volume::submit`]; the volume decides, once for both protocols, whether the command may
//! run.

pub mod guard_hook;
pub mod identity;
pub mod pr_gate;
pub mod range_lock;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::bdev::{Bdev, BdevError, BdevRegistry, IoRequest};
use crate::cluster::{AccessState, PortGroups};
use crate::reactor::Core;
use crate::reservation::{CommandClass, Reservations};

/// Who sent a command: the I_T nexus (iSCSI) or host (NVMe) as the reservation engine sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Initiator {
    /// iSCSI initiator port (initiator name + ",i,0x" + ISID as 12 lowercase hex digits, the form
    /// READ FULL STATUS reports and REGISTER AND MOVE's TransportID decodes to) and the target
    /// port it came through (target name + ",t,0x" + TPGT) with its relative port identifier.
    Iscsi { initiator_port: String, target_port: String, rel_port_id: u16 },
    /// NVMe host identifier (128-bit, or 64-bit extended) and host NQN.
    Nvme { host_id: [u8; 16], host_nqn: String },
}

/// Why a volume refused a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denied {
    /// LBA range beyond the end of the device.
    OutOfRange,
    /// A persistent reservation held by another nexus forbids it.
    ReservationConflict,
    /// The layout guard refused a write outside the client's grants.
    WriteProtected,
    /// The path is not accessible: this node's target port group is in this (not active) access
    /// state (SPC-4 5.16.2.4 / NVMe ANA); the initiator should use another path.
    PathInaccessible(AccessState),
}

pub struct Volume {
    bdev: Arc<dyn Bdev>,
    /// LBA range locks of read-modify-write commands (COMPARE AND WRITE and kin).
    pub locks: Arc<range_lock::RangeLock>,
    /// The layout guard, when a layout volume lives on this bdev (read lock-free per I/O).
    guard: arc_swap::ArcSwapOption<crate::layout::guard::Guard>,
    /// Whether `guard` holds one: a plain load per I/O instead of the guard's reference-taking
    /// load (set after the guard is stored, cleared before it is removed).
    guarded: AtomicBool,
    /// The persistent-reservation engine shared by every export of this bdev.
    pr: Arc<Reservations>,
    /// Tracks modifying I/O so PREEMPT AND ABORT can wait for what was already admitted.
    gate: Arc<pr_gate::Gate>,
    /// Set when the volume is clustered: I/O is admitted only while the node is writable.
    cluster: std::sync::OnceLock<Arc<crate::cluster::Health>>,
    /// This node's target port groups: media access needs the local group to be active.
    groups: Arc<PortGroups>,
}

/// Where a request goes once every check has passed: the reservation gate's in-flight tracking
/// (so a fence waits for it), then the range lock (a write overlapping a held range waits), then
/// the bdev. The layout guard's interposer hands its rewritten requests here too.
pub struct Downstream<'a> {
    gate: &'a pr_gate::Gate,
    bdev: &'a Arc<dyn Bdev>,
    /// None for the holder of a range lock (its own I/O inside the range).
    locks: Option<&'a Arc<range_lock::RangeLock>>,
}

impl Downstream<'_> {
    pub fn send(&self, core: &mut Core, req: IoRequest) {
        pr_gate::submit(core, self.gate, self.bdev, req, self.locks);
    }
}

impl Volume {
    /// A volume whose reservations live in memory only (tests, tools).
    pub fn new(bdev: Arc<dyn Bdev>) -> Volume {
        Volume::with_state(bdev, None).expect("no state file to read")
    }

    /// A volume whose APTPL/PTPL reservation state lives under `state_dir`.
    pub fn with_state(bdev: Arc<dyn Bdev>, state_dir: Option<&std::path::Path>) -> Result<Volume, BdevError> {
        Volume::open(bdev, state_dir, PortGroups::new())
    }

    /// A volume whose media access follows this node's port group state in `groups`.
    pub fn open(bdev: Arc<dyn Bdev>, state_dir: Option<&std::path::Path>, groups: Arc<PortGroups>) -> Result<Volume, BdevError> {
        let store = state_dir.map(|d| crate::reservation::Store::in_dir(d, &bdev.info().uuid));
        let pr = Reservations::new(store).map_err(|e| BdevError::Invalid(e.to_string()))?;
        let gate = pr_gate::Gate::new();
        let pr = Arc::new(pr);
        pr.set_fence(Arc::new(pr_gate::VolumeFence(gate.clone())));
        Ok(Volume {
            bdev,
            locks: Default::default(),
            guard: Default::default(),
            guarded: AtomicBool::new(false),
            pr,
            gate,
            groups,
            cluster: Default::default(),
        })
    }

    pub fn bdev(&self) -> &Arc<dyn Bdev> {
        &self.bdev
    }
    pub fn name(&self) -> &str {
        &self.bdev.info().name
    }
    pub fn block_size(&self) -> u32 {
        self.bdev.info().block_size
    }
    pub fn num_blocks(&self) -> u64 {
        self.bdev.info().num_blocks
    }
    pub fn uuid(&self) -> uuid::Uuid {
        self.bdev.info().uuid
    }

    /// The target port groups this volume's access follows (shared by every volume of the node).
    pub fn port_groups(&self) -> &Arc<PortGroups> {
        &self.groups
    }

    /// Whether media access is allowed through this node's ports now (one atomic load).
    #[inline]
    pub fn path_access(&self) -> Result<(), Denied> {
        let s = self.groups.local_state();
        if s.is_active() {
            Ok(())
        } else {
            Err(Denied::PathInaccessible(s))
        }
    }

    /// Check `req` for `who` and hand it to the bdev; a refused request is given back with the
    /// reason, so the front-end can answer in its protocol's terms. Checks, in order: path access
    /// (this node's port group state), range, reservation conflict table, layout guard; then
    /// [`Downstream`].
    pub fn submit(&self, core: &mut Core, who: &Initiator, req: IoRequest) -> Result<(), (IoRequest, Denied)> {
        self.checked(core, who, req, Some(&self.locks))
    }

    /// Submit for the holder of a range lock covering `req` (its own read and write bypass the
    /// lock); every other check of [`Volume::submit`] applies.
    pub fn submit_locked(&self, core: &mut Core, who: &Initiator, req: IoRequest) -> Result<(), (IoRequest, Denied)> {
        self.checked(core, who, req, None)
    }

    fn checked(
        &self,
        core: &mut Core,
        who: &Initiator,
        req: IoRequest,
        locks: Option<&Arc<range_lock::RangeLock>>,
    ) -> Result<(), (IoRequest, Denied)> {
        if let Err(d) = self.path_access() {
            return Err((req, d));
        }
        let end = req.offset_blocks.checked_add(req.num_blocks);
        if end.is_none_or(|e| e > self.num_blocks()) {
            return Err((req, Denied::OutOfRange));
        }
        if let Some(h) = self.cluster.get() {
            if !h.writable() {
                return Err((req, Denied::PathInaccessible(AccessState::Unavailable)));
            }
        }
        let snap = self.pr.snapshot();
        if !snap.check(pr_gate::nexus_ref(who), pr_gate::io_class(req.op, who)) {
            return Err((req, Denied::ReservationConflict));
        }
        let down = Downstream { gate: &self.gate, bdev: &self.bdev, locks };
        if self.guarded.load(Ordering::SeqCst) {
            if let Some(g) = &*self.guard.load() {
                return guard_hook::submit(core, &down, g, &snap, who, req);
            }
        }
        down.send(core, req);
        Ok(())
    }

    /// Attach or detach the layout guard (the interposer must be installed on every reactor,
    /// see [`guard_hook::install`]).
    pub fn set_guard(&self, g: Option<Arc<crate::layout::guard::Guard>>) {
        if g.is_some() {
            self.guard.store(g);
            self.guarded.store(true, Ordering::SeqCst);
        } else {
            self.guarded.store(false, Ordering::SeqCst);
            self.guard.store(None);
        }
    }

    /// Whether a completed write may still need a flush to be durable: the bdev has a volatile
    /// cache, or a layout guard records written-since-allocation bits (durable at a flush or FUA
    /// write, see `layout::state::Pending`).
    pub fn volatile_write_cache(&self) -> bool {
        self.bdev.info().write_cache || self.guard.load().as_ref().is_some_and(|g| g.policy() != crate::layout::Policy::Off)
    }

    /// The reservation check for commands that are not block I/O (MODE SELECT, SYNCHRONIZE
    /// CACHE, PR OUT, NVMe admin commands on a namespace...), by conflict-table class.
    #[inline]
    pub fn check(&self, who: &Initiator, class: CommandClass) -> Result<(), Denied> {
        if self.cluster.get().is_some_and(|h| !h.writable()) {
            return Err(Denied::PathInaccessible(AccessState::Unavailable));
        }
        if self.pr.snapshot().check(pr_gate::nexus_ref(who), class) {
            Ok(())
        } else {
            Err(Denied::ReservationConflict)
        }
    }

    /// Run `done` once every modifying I/O submitted through this volume before this call, on any
    /// reactor, has completed: PREEMPT AND ABORT's drain, for task management (a TMF answers only
    /// after the writes it aborted can no longer land). Tasks must be marked aborted first, on
    /// their own reactors, so that they submit nothing more.
    pub fn drain_writes(&self, done: Box<dyn FnOnce() + Send>) {
        use crate::reservation::Fence;
        pr_gate::VolumeFence(self.gate.clone()).drain(done);
    }

    /// Make this volume clustered: reservations move to etcd, and I/O is admitted only while the
    /// node's cluster view is confirmed. Blocks on etcd (management threads only).
    pub fn attach_cluster(&self, c: &Arc<crate::cluster::Cluster>) -> Result<(), BdevError> {
        self.pr.attach_cluster(c.clone(), &self.uuid()).map_err(|e| BdevError::Invalid(e.to_string()))?;
        let _ = self.cluster.set(c.health().clone());
        Ok(())
    }

    pub fn is_clustered(&self) -> bool {
        self.cluster.get().is_some()
    }

    /// The volume's reservation engine (PR commands, unit attentions, management).
    pub fn reservations(&self) -> &Arc<Reservations> {
        &self.pr
    }
}

/// One volume per exported bdev, shared by every LUN and namespace that exports it.
pub struct VolumeRegistry {
    bdevs: Arc<BdevRegistry>,
    map: Mutex<HashMap<String, (Arc<Volume>, usize)>>,
    /// Where reservation state of APTPL/PTPL volumes lives (`<dir>/<bdev uuid>.pr.json`); None
    /// keeps reservations in memory only.
    state_dir: Mutex<Option<PathBuf>>,
    /// Cluster mode: volumes whose bdev UUID is marked clustered in etcd are attached at open.
    cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    /// This node's target port groups, given to every volume.
    groups: Arc<PortGroups>,
}

/// etcd key marking a bdev UUID clustered (`volume_set_cluster`).
fn mark_key(c: &crate::cluster::Cluster, uuid: &uuid::Uuid) -> String {
    c.key(&format!("clustered/{uuid}"))
}

impl VolumeRegistry {
    pub fn new(bdevs: Arc<BdevRegistry>) -> Self {
        VolumeRegistry::with_port_groups(bdevs, PortGroups::new())
    }

    /// A registry whose volumes follow the access state of `groups` (the application's one).
    pub fn with_port_groups(bdevs: Arc<BdevRegistry>, groups: Arc<PortGroups>) -> Self {
        VolumeRegistry { bdevs, map: Mutex::new(HashMap::new()), state_dir: Mutex::new(None), cluster: Default::default(), groups }
    }

    pub fn port_groups(&self) -> &Arc<PortGroups> {
        &self.groups
    }

    /// Join a cluster: open volumes marked clustered attach now, later ones at open, and a mark
    /// set through any node attaches this node's volume of that UUID.
    pub fn set_cluster(self: &Arc<Self>, c: Arc<crate::cluster::Cluster>) {
        if self.cluster.set(c.clone()).is_err() {
            return;
        }
        let me = Arc::downgrade(self);
        let prefix = c.key("clustered/");
        c.watch_prefix(
            &prefix,
            Box::new(move |ch| {
                let Some(me) = me.upgrade() else { return };
                let keys: Vec<String> = match ch {
                    crate::cluster::Change::Reset { kvs, .. } => kvs.iter().filter_map(|kv| kv.key_str().ok().map(str::to_string)).collect(),
                    crate::cluster::Change::Put(kv) => kv.key_str().ok().map(str::to_string).into_iter().collect(),
                    crate::cluster::Change::Delete { .. } => Vec::new(),
                };
                let uuids: Vec<uuid::Uuid> = keys.iter().filter_map(|k| k.rsplit('/').next()?.parse().ok()).collect();
                if uuids.is_empty() {
                    return;
                }
                // Attaching blocks on etcd: not on the cluster runtime.
                std::thread::spawn(move || {
                    for v in me.list() {
                        if uuids.contains(&v.uuid()) && !v.is_clustered() {
                            if let Err(e) = me.attach(&v) {
                                tracing::error!("cluster: volume {} not attached: {e}", v.name());
                            }
                        }
                    }
                });
            }),
        );
    }

    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.cluster.get()
    }

    fn attach(&self, v: &Arc<Volume>) -> Result<(), BdevError> {
        let Some(c) = self.cluster.get() else { return Ok(()) };
        v.attach_cluster(c)?;
        tracing::info!("cluster: volume {} ({}) is clustered", v.name(), v.uuid());
        Ok(())
    }

    /// `volume_set_cluster`: mark the bdev's UUID clustered in etcd (every node attaches its
    /// volume of that UUID) and attach this node's volume now.
    pub fn mark_clustered(&self, v: &Arc<Volume>) -> Result<(), BdevError> {
        let c = self.cluster.get().ok_or_else(|| BdevError::Invalid("not in cluster mode (serve --cluster URL --node-id NAME)".into()))?;
        let t = etcd_client::Txn::new().and_then([etcd_client::TxnOp::put(mark_key(c, &v.uuid()), v.name(), None)]);
        c.etcd.txn(t).map_err(|e| BdevError::Invalid(e.to_string()))?;
        self.attach(v)
    }

    /// Is `uuid` marked clustered in etcd? (Errors count as yes: a node that cannot tell must not
    /// serve the volume as local.)
    fn marked(&self, uuid: &uuid::Uuid) -> Result<bool, BdevError> {
        let Some(c) = self.cluster.get() else { return Ok(false) };
        c.etcd.get(&mark_key(c, uuid)).map(|(v, _)| v.is_some()).map_err(|e| BdevError::Invalid(format!("cluster: cannot tell whether {uuid} is clustered: {e}")))
    }

    /// Set the reservation state directory (before volumes are opened).
    pub fn set_state_dir(&self, dir: Option<PathBuf>) {
        *self.state_dir.lock().unwrap() = dir;
    }
    pub fn state_dir(&self) -> Option<PathBuf> {
        self.state_dir.lock().unwrap().clone()
    }

    /// Every open volume (management).
    pub fn list(&self) -> Vec<Arc<Volume>> {
        self.map.lock().unwrap().values().map(|e| e.0.clone()).collect()
    }

    /// Open the volume of `bdev_name` for `user` (an export), claiming the bdev.
    pub fn open(&self, bdev_name: &str, user: &str) -> Result<Arc<Volume>, BdevError> {
        let bdev = self.bdevs.claim(bdev_name, user)?;
        let name = bdev.info().name.clone();
        let mut m = self.map.lock().unwrap();
        if !m.contains_key(&name) {
            // A corrupt reservation state file refuses the export, naming the file.
            let dir = self.state_dir();
            let uuid = bdev.info().uuid;
            let made = Volume::open(bdev, dir.as_deref(), self.groups.clone()).and_then(|v| {
                let v = Arc::new(v);
                if self.marked(&uuid)? {
                    self.attach(&v)?;
                }
                Ok(v)
            });
            match made {
                Ok(v) => {
                    m.insert(name.clone(), (v, 0));
                }
                Err(e) => {
                    drop(m);
                    self.bdevs.release(bdev_name, user);
                    return Err(e);
                }
            }
        }
        let e = m.get_mut(&name).expect("just inserted");
        e.1 += 1;
        Ok(e.0.clone())
    }

    /// Drop `user`'s claim; the volume goes away with its last user.
    pub fn close(&self, bdev_name: &str, user: &str) {
        self.bdevs.release(bdev_name, user);
        let mut m = self.map.lock().unwrap();
        if let Some(e) = m.get_mut(bdev_name) {
            e.1 -= 1;
            if e.1 == 0 {
                m.remove(bdev_name);
            }
        }
    }

    pub fn get(&self, bdev_name: &str) -> Option<Arc<Volume>> {
        self.map.lock().unwrap().get(bdev_name).map(|e| e.0.clone())
    }
}
