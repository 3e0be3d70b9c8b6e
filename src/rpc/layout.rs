//! layout_* and client_* methods: layout volumes, files, grants, commit, return, recall
//! notifications, client registration and fencing. The store runs on blocking threads (it
//! fsyncs); this layer decodes parameters, finds volumes and turns store errors into JSON-RPC
//! errors (code -errno, clear message).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};

use super::registry::{Call, Registry, Subsystem, RUNTIME};
use super::{ok, App, RpcError, RpcResult};
use crate::bdev::blocking::BlockingBdev;
use crate::config::Entry;
use crate::layout::bdev_journal::{BdevJournal, Probe};
use crate::layout::etcd_meta::{EtcdMeta, Keys};
use crate::layout::journal::{FileJournal, MetaStore};
use crate::layout::metadev::MetaDev;
use crate::layout::recall::{Fencer, Notifier, RecallEvent};
use crate::layout::{DataDev, FileId, Hooks, IoMode, LayoutError, LayoutVolume, Options, Policy};
use crate::volume::{identity, Volume};

/// How often recall deadlines are checked.
const RECALL_TICK: Duration = Duration::from_millis(50);
const DEFAULT_RECALL_TIMEOUT_MS: u64 = 30_000;

/// Where a layout volume's metadata lives.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Meta {
    /// `metadata_path`: a file journal.
    Path(String),
    /// `metadata_bdev`: a bdev claimed exclusively by the volume.
    Bdev(String),
    /// `metadata_cluster: true`: in etcd, shared by every node exporting the data bdev.
    Cluster,
}

impl Meta {
    /// The create parameter naming it.
    fn param(&self) -> (&'static str, Value) {
        match self {
            Meta::Path(p) => ("metadata_path", json!(p)),
            Meta::Bdev(b) => ("metadata_bdev", json!(b)),
            Meta::Cluster => ("metadata_cluster", json!(true)),
        }
    }
}

/// The claim a layout volume holds on its metadata bdev.
fn meta_user(volume: &str) -> String {
    format!("layout-metadata:{volume}")
}

/// A bdev as the metadata journal's block device (I/O through reactor 0, from blocking threads).
struct BdevMeta(BlockingBdev);

impl MetaDev for BdevMeta {
    fn block_size(&self) -> u32 {
        self.0.bdev().info().block_size
    }
    fn num_blocks(&self) -> u64 {
        self.0.bdev().info().num_blocks
    }
    fn read(&self, lba: u64, nblocks: u64) -> std::io::Result<Vec<u8>> {
        self.0.read(lba, nblocks)
    }
    fn write(&self, lba: u64, data: &[u8], fua: bool) -> std::io::Result<()> {
        self.0.write(lba, data, fua)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.0.flush()
    }
    fn describe(&self) -> String {
        format!("bdev {}", self.0.bdev().info().name)
    }
}

struct Entry_ {
    vol: Arc<LayoutVolume>,
    volume: Arc<Volume>,
    bdev_name: String,
    meta: Meta,
    recall_timeout_ms: u64,
    block_size: u32,
    mds_identities: Vec<String>,
}

/// Connections subscribed to layout_recall notifications.
#[derive(Default)]
struct Subscribers(Mutex<Vec<tokio::sync::mpsc::UnboundedSender<Value>>>);

impl Notifier for Subscribers {
    fn recall(&self, ev: &RecallEvent) {
        let note = json!({"jsonrpc": "2.0", "method": "layout_recall", "params": ev});
        self.0.lock().unwrap().retain(|tx| tx.send(note.clone()).is_ok());
    }
}

/// The fencer every layout volume calls, looked up at call time so installing the reservation
/// engine's fencer ([`LayoutApp::set_fencer`]) covers volumes created before it.
struct SwitchFencer(Mutex<Arc<dyn Fencer>>);

impl Fencer for SwitchFencer {
    fn fence(&self, volume: &str, client: &str, pr_key: u64) -> Result<(), String> {
        let f = self.0.lock().unwrap().clone();
        f.fence(volume, client, pr_key)
    }
    fn unfence(&self, volume: &str, client: &str, pr_key: u64) -> Result<(), String> {
        let f = self.0.lock().unwrap().clone();
        f.unfence(volume, client, pr_key)
    }
}

/// Fences through the reservation engine: PREEMPT AND ABORT of the client's PR key on the layout
/// volume's data volume, on behalf of the metadata server (the operator form, so the metadata
/// server needs no registration of its own). It returns once the engine's fence has drained every
/// write submitted before: with the guard already refusing the client (the store publishes that
/// first), none of the client's writes can land afterwards, on any path or protocol. Unfencing
/// needs nothing here: the preempted registrations are gone and the client may register again.
#[derive(Default)]
pub struct ReservationFencer {
    /// Layout volume name → its data volume.
    vols: Mutex<BTreeMap<String, std::sync::Weak<Volume>>>,
}

/// How long a fence may wait for in-flight writes before it is reported failed.
const FENCE_DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

impl ReservationFencer {
    fn attach(&self, layout_volume: &str, v: &Arc<Volume>) {
        self.vols.lock().unwrap().insert(layout_volume.to_string(), Arc::downgrade(v));
    }
    fn detach(&self, layout_volume: &str) {
        self.vols.lock().unwrap().remove(layout_volume);
    }
}

impl Fencer for ReservationFencer {
    fn fence(&self, volume: &str, client: &str, pr_key: u64) -> Result<(), String> {
        let v = self.vols.lock().unwrap().get(volume).and_then(|w| w.upgrade());
        let Some(v) = v else {
            return Err(format!("layout volume {volume}: data volume is gone"));
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let now = v.reservations().operator_preempt_abort(
            pr_key,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        let r = match now {
            Some(r) => r,
            None => rx.recv_timeout(FENCE_DRAIN_TIMEOUT).map_err(|_| "reservation engine did not drain in time".to_string())?,
        };
        let applied = r.map_err(|e| e.to_string())?;
        tracing::info!(
            volume,
            client,
            pr_key = format_args!("{pr_key:#x}"),
            registrations = applied.removed.len(),
            "fenced: PREEMPT AND ABORT of the client's key, in-flight writes drained"
        );
        Ok(())
    }
}

/// Layout state of the application (an App field).
pub struct LayoutApp {
    volumes: Mutex<BTreeMap<String, Entry_>>,
    subscribers: Arc<Subscribers>,
    fencer: Arc<SwitchFencer>,
    /// The reservation engine's fencer (installed by default; `set_fencer` may replace it).
    pr_fencer: Arc<ReservationFencer>,
    timer: AtomicBool,
}

impl Default for LayoutApp {
    fn default() -> Self {
        let pr_fencer = Arc::new(ReservationFencer::default());
        LayoutApp {
            volumes: Mutex::default(),
            subscribers: Arc::default(),
            fencer: Arc::new(SwitchFencer(Mutex::new(pr_fencer.clone()))),
            pr_fencer,
            timer: AtomicBool::new(false),
        }
    }
}

impl LayoutApp {
    /// Replace what fences a client's paths (default: [`ReservationFencer`], PREEMPT AND ABORT of
    /// the client's key through the reservation engine; [`crate::layout::recall::GuardOnlyFencer`] leaves it to the guard).
    pub fn set_fencer(&self, f: Arc<dyn Fencer>) {
        *self.fencer.0.lock().unwrap() = f;
    }

    pub fn get(&self, name: &str) -> Option<Arc<LayoutVolume>> {
        self.volumes.lock().unwrap().get(name).map(|e| e.vol.clone())
    }
    /// Every layout volume (shutdown checkpoints them).
    pub fn all(&self) -> Vec<Arc<LayoutVolume>> {
        self.volumes.lock().unwrap().values().map(|e| e.vol.clone()).collect()
    }
}

pub fn register(r: &mut Registry) {
    r.add("layout_volume_create", RUNTIME, layout_volume_create);
    r.add("layout_volume_delete", RUNTIME, layout_volume_delete);
    r.add("layout_volume_list", RUNTIME, layout_volume_list);
    r.add("layout_volume_get_device", RUNTIME, layout_volume_get_device);
    r.add("layout_volume_set_guard", RUNTIME, layout_volume_set_guard);
    r.add("client_register", RUNTIME, client_register);
    r.add("client_fence", RUNTIME, client_fence);
    r.add("client_unfence", RUNTIME, client_unfence);
    r.add("client_list", RUNTIME, client_list);
    r.add("layout_file_create", RUNTIME, layout_file_create);
    r.add("layout_file_remove", RUNTIME, layout_file_remove);
    r.add("layout_file_truncate", RUNTIME, layout_file_truncate);
    r.add("layout_file_stat", RUNTIME, layout_file_stat);
    r.add("layout_file_map", RUNTIME, layout_file_map);
    r.add("layout_file_reflink", RUNTIME, layout_file_reflink);
    r.add("layout_get", RUNTIME, layout_get);
    r.add("layout_commit", RUNTIME, layout_commit);
    r.add("layout_return", RUNTIME, layout_return);
    r.add("layout_recall_subscribe", RUNTIME, layout_recall_subscribe);
    r.add_subsystem(Subsystem { name: "layout", depends_on: &["bdev"], config: layout_config });
}

fn layout_config(app: &App) -> Vec<Entry> {
    app.layout
        .volumes
        .lock()
        .unwrap()
        .iter()
        .map(|(name, e)| {
            let mut params = json!({
                "name": name,
                "bdev_name": e.bdev_name,
                "guard": e.vol.guard().policy(),
                "recall_timeout_ms": e.recall_timeout_ms,
                "block_size": e.block_size,
                "mds_identities": e.mds_identities,
            });
            let (k, v) = e.meta.param();
            params[k] = v;
            Entry { method: "layout_volume_create".into(), params: Some(params) }
        })
        .collect()
}

fn lerr(e: LayoutError) -> RpcError {
    RpcError::errno(e.errno(), e)
}

/// Run store work on a blocking thread (it fsyncs).
async fn blocking<R: Send + 'static>(f: impl FnOnce() -> Result<R, LayoutError> + Send + 'static) -> Result<R, RpcError> {
    tokio::task::spawn_blocking(f).await.map_err(RpcError::internal)?.map_err(lerr)
}

fn volume(c: &Call, name: &str) -> Result<Arc<LayoutVolume>, RpcError> {
    c.app.layout.get(name).ok_or_else(|| RpcError::errno(libc::ENODEV, format!("layout volume {name} not found")))
}

/// Before a read of a volume whose metadata other nodes change (etcd): be current with the head,
/// so the answer includes everything any node acknowledged before. If etcd cannot be reached the
/// read answers from this node's last view (changes fail closed; reads need not).
async fn current(v: &Arc<LayoutVolume>) {
    if !v.is_shared() {
        return;
    }
    let w = v.clone();
    if let Err(e) = blocking(move || w.sync()).await {
        tracing::warn!(volume = %v.name, "reading without catching up with etcd: {}", e.message);
    }
}

/// Revoke timed-out recalls on every volume, forever (one task per process).
fn start_recall_timer(app: &Arc<App>) {
    if app.layout.timer.swap(true, Ordering::AcqRel) {
        return;
    }
    let app = Arc::downgrade(app);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(RECALL_TICK).await;
            let Some(app) = app.upgrade() else { return };
            for v in app.layout.all() {
                let _ = tokio::task::spawn_blocking(move || v.expire_recalls(Instant::now())).await;
            }
        }
    });
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VolumeCreate {
    name: String,
    bdev_name: String,
    metadata_path: Option<String>,
    metadata_bdev: Option<String>,
    /// Keep the metadata in etcd (cluster mode): one layout state for every node exporting the
    /// data bdev; the data bdev's volume is marked clustered so fences cover every node.
    #[serde(default)]
    metadata_cluster: bool,
    #[serde(default)]
    guard: Policy,
    recall_timeout_ms: Option<u64>,
    #[serde(default)]
    block_size: u32,
    /// Initiator names / host NQNs of the metadata server itself: its writes are never refused.
    #[serde(default)]
    mds_identities: Vec<String>,
}

async fn layout_volume_create(c: Call) -> RpcResult {
    let p: VolumeCreate = c.params()?;
    let _g = c.app.mgmt.lock().await;
    if p.name.is_empty() || p.name.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
        return Err(RpcError::invalid_params("name: must be non-empty without whitespace"));
    }
    if c.app.layout.get(&p.name).is_some() {
        return Err(RpcError::errno(libc::EEXIST, format!("layout volume {} already exists", p.name)));
    }
    let meta = match (&p.metadata_path, &p.metadata_bdev) {
        (None, None) if p.metadata_cluster => {
            if c.app.cluster.get().is_none() {
                return Err(RpcError::errno(libc::ENOTCONN, "metadata_cluster: not in cluster mode (serve --cluster URL --node-id NAME, or cluster_connect)"));
            }
            Meta::Cluster
        }
        _ if p.metadata_cluster => return Err(RpcError::invalid_params("exactly one of metadata_path, metadata_bdev and metadata_cluster is required")),
        (Some(path), None) => Meta::Path(PathBuf::from(path).display().to_string()),
        (None, Some(b)) if *b == p.bdev_name => {
            return Err(RpcError::invalid_params(format!("metadata_bdev {b}: the metadata needs a bdev of its own, not the data bdev")))
        }
        (None, Some(b)) if c.app.bdevs.get(b).is_some_and(|bd| bd.info().product_name == crate::bdev::null::PRODUCT) => {
            return Err(RpcError::invalid_params(format!("metadata_bdev {b} is a null bdev: it would keep nothing")))
        }
        (None, Some(b)) => Meta::Bdev(b.clone()),
        _ => return Err(RpcError::invalid_params("exactly one of metadata_path, metadata_bdev and metadata_cluster is required")),
    };
    if let Some(e) = c.app.layout.volumes.lock().unwrap().values().find(|e| e.bdev_name == p.bdev_name || e.meta == meta) {
        return Err(RpcError::errno(libc::EBUSY, format!("bdev or metadata already used by layout volume {}", e.vol.name)));
    }
    // The metadata bdev is claimed exclusively (no export, no other layout volume) before the
    // data bdev is opened, and released on every failure below.
    let meta_bdev = match &meta {
        Meta::Bdev(b) => match c.app.bdevs.claim_exclusive(b, &meta_user(&p.name)) {
            Ok(bd) => Some(bd),
            Err(crate::bdev::BdevError::Busy(n, by)) => {
                return Err(RpcError::errno(libc::EBUSY, format!("metadata_bdev {n} is in use by {by}: a metadata bdev must not be exported or shared")))
            }
            Err(e) => return Err(RpcError::errno(e.errno(), format!("metadata_bdev: {e}"))),
        },
        Meta::Path(_) | Meta::Cluster => None,
    };
    let release_meta = |app: &App| {
        if let Meta::Bdev(b) = &meta {
            app.bdevs.release(b, &meta_user(&p.name));
        }
    };
    let user = format!("layout:{}", p.name);
    let vol = match c.app.volumes.open(&p.bdev_name, &user) {
        Ok(v) => v,
        Err(e) => {
            release_meta(&c.app);
            return Err(e.into());
        }
    };
    let dev = DataDev { uuid: vol.uuid(), block_size: vol.block_size(), num_blocks: vol.num_blocks() };
    let recall_timeout_ms = p.recall_timeout_ms.unwrap_or(DEFAULT_RECALL_TIMEOUT_MS);
    let opts = Options { name: p.name.clone(), block_size: p.block_size, policy: p.guard, recall_timeout: Duration::from_millis(recall_timeout_ms) };
    c.app.layout.pr_fencer.attach(&p.name, &vol);
    let fencer: Arc<dyn Fencer> = c.app.layout.fencer.clone();
    let hooks = Hooks { notifier: c.app.layout.subscribers.clone(), fencer };
    let meta2 = meta.clone();
    let reactors = c.app.reactors.clone();
    let cluster = c.app.cluster.get().cloned();
    let volumes = c.app.volumes.clone();
    let data_vol = vol.clone();
    let opened = blocking(move || {
        if let (Meta::Cluster, Some(cl)) = (&meta2, &cluster) {
            // A client fence is PREEMPT AND ABORT on the data volume: clustered, it stops the
            // client on every node, not only here.
            if !data_vol.is_clustered() {
                volumes.mark_clustered(&data_vol).map_err(|e| LayoutError::Io(format!("marking {} clustered: {e}", data_vol.name())))?;
            }
            let store = EtcdMeta::new(cl.clone(), &dev.uuid);
            let exists = store.exists()?;
            return match LayoutVolume::open(Box::new(store), exists, &dev, &opts, hooks.clone()) {
                // Another node created it between our look and our create: open what it made.
                Err(e) if !exists && EtcdMeta::exists_in(cl, &Keys::new(&cl.cfg.prefix, &dev.uuid)).unwrap_or(false) => {
                    tracing::info!("layout volume {}: {e}; opening it", opts.name);
                    LayoutVolume::open(Box::new(EtcdMeta::new(cl.clone(), &dev.uuid)), true, &dev, &opts, hooks)
                }
                r => r,
            };
        }
        let (store, exists): (Box<dyn MetaStore>, bool) = match (&meta2, meta_bdev) {
            (Meta::Bdev(name), Some(bd)) => {
                let dev = BlockingBdev::new(&reactors, bd).map_err(|e| LayoutError::Io(format!("metadata_bdev {name}: {e}")))?;
                let j = BdevJournal::new(Box::new(BdevMeta(dev)))?;
                // Our header: load it. All zeros: a new store. Anything else: refused by create.
                let exists = j.probe()? == Probe::Formatted;
                (Box::new(j), exists)
            }
            (Meta::Path(path), _) => {
                let path = PathBuf::from(path);
                (Box::new(FileJournal::new(&path)), FileJournal::exists(&path))
            }
            (Meta::Bdev(_), None) => unreachable!("a metadata bdev is claimed above"),
            (Meta::Cluster, _) => unreachable!("opened above"),
        };
        LayoutVolume::open(store, exists, &dev, &opts, hooks)
    })
    .await;
    let lv = match opened {
        Ok(v) => {
            let v = Arc::new(v);
            v.start_persister();
            v.start_follower();
            v
        }
        Err(e) => {
            c.app.layout.pr_fencer.detach(&p.name);
            c.app.volumes.close(&p.bdev_name, &user);
            release_meta(&c.app);
            return Err(e);
        }
    };
    if let Some((off, why)) = &lv.replay.torn_tail {
        tracing::warn!(volume = %p.name, "metadata journal: ignored torn tail at offset {off} ({why})");
    }
    let reactors = c.app.reactors.clone();
    tokio::task::spawn_blocking(move || reactors.call_all(crate::volume::guard_hook::install)).await.map_err(RpcError::internal)?;
    lv.guard().set_trusted(p.mds_identities.clone());
    vol.set_guard(Some(lv.guard().clone()));
    let block_size = lv.superblock().block_size;
    c.app.layout.volumes.lock().unwrap().insert(
        p.name.clone(),
        Entry_ {
            vol: lv,
            volume: vol,
            bdev_name: p.bdev_name,
            meta,
            recall_timeout_ms,
            block_size,
            mds_identities: p.mds_identities,
        },
    );
    start_recall_timer(&c.app);
    Ok(json!(p.name))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Named {
    name: String,
}

async fn layout_volume_delete(c: Call) -> RpcResult {
    let p: Named = c.params()?;
    let _g = c.app.mgmt.lock().await;
    let Some(e) = c.app.layout.volumes.lock().unwrap().remove(&p.name) else {
        return Err(RpcError::errno(libc::ENODEV, format!("layout volume {} not found", p.name)));
    };
    let meta = e.meta.clone();
    e.volume.set_guard(None);
    c.app.layout.pr_fencer.detach(&p.name);
    c.app.volumes.close(&e.bdev_name, &format!("layout:{}", p.name));
    let v = e.vol.clone();
    let r = blocking(move || v.checkpoint()).await;
    // The journal (and its reactor handler) goes with the last reference to the volume; the
    // metadata bdev is free for bdev_*_delete or another layout volume.
    drop(e);
    if let Meta::Bdev(b) = &meta {
        c.app.bdevs.release(b, &meta_user(&p.name));
    }
    r?;
    ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MaybeNamed {
    name: Option<String>,
}

async fn layout_volume_list(c: Call) -> RpcResult {
    let p: MaybeNamed = c.params()?;
    let m = c.app.layout.volumes.lock().unwrap();
    if let Some(n) = &p.name {
        if !m.contains_key(n) {
            return Err(RpcError::errno(libc::ENODEV, format!("layout volume {n} not found")));
        }
    }
    let out: Vec<Value> = m
        .iter()
        .filter(|(n, _)| p.name.as_ref().map_or(true, |x| x == *n))
        .map(|(n, e)| {
            let (sb, files, clients, grants, free) = e.vol.with_state(|s| (s.sb.clone(), s.files.len(), s.clients.len(), s.grants.len(), s.free.free_blocks()));
            let (mk, mv) = e.meta.param();
            json!({
                "name": n, "bdev_name": e.bdev_name, mk: mv, "uuid": sb.uuid,
                "guard": e.vol.guard().policy(), "recall_timeout_ms": e.recall_timeout_ms,
                "block_size": sb.block_size, "num_blocks": sb.num_blocks, "free_blocks": free,
                "files": files, "clients": clients, "grants": grants, "guard_counters": e.vol.guard().counters_json(),
            })
        })
        .collect();
    Ok(json!(out))
}

async fn layout_volume_get_device(c: Call) -> RpcResult {
    let p: Named = c.params()?;
    let m = c.app.layout.volumes.lock().unwrap();
    let e = m.get(&p.name).ok_or_else(|| RpcError::errno(libc::ENODEV, format!("layout volume {} not found", p.name)))?;
    let u = e.volume.uuid();
    Ok(json!({
        "name": p.name,
        "bdev_name": e.bdev_name,
        "uuid": u,
        "naa": identity::hex(&identity::naa_designator(&u)),
        "nguid": identity::hex(&identity::nguid(&u)),
        "eui64": identity::hex(&identity::eui64(&u)),
        "block_size": e.volume.block_size(),
        "num_blocks": e.volume.num_blocks(),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetGuard {
    name: String,
    guard: Policy,
}

async fn layout_volume_set_guard(c: Call) -> RpcResult {
    let p: SetGuard = c.params()?;
    volume(&c, &p.name)?.guard().set_policy(p.guard);
    ok()
}

/// A PR key as a number or a "0x…" string.
#[derive(Deserialize)]
#[serde(untagged)]
enum Key {
    Num(u64),
    Str(String),
}

impl Key {
    fn value(&self) -> Result<u64, RpcError> {
        match self {
            Key::Num(n) => Ok(*n),
            Key::Str(s) => {
                let t = s.trim();
                let r = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
                    Some(h) => u64::from_str_radix(h, 16),
                    None => t.parse(),
                };
                r.map_err(|_| RpcError::invalid_params(format!("pr_key: {s:?} is not a 64-bit key")))
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientRegister {
    volume: String,
    client: String,
    pr_key: Key,
    #[serde(default)]
    identities: Vec<String>,
}

async fn client_register(c: Call) -> RpcResult {
    let p: ClientRegister = c.params()?;
    let key = p.pr_key.value()?;
    let v = volume(&c, &p.volume)?;
    blocking(move || v.client_register(&p.client, key, p.identities)).await?;
    ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientRef {
    volume: String,
    client: String,
}

async fn client_fence(c: Call) -> RpcResult {
    let p: ClientRef = c.params()?;
    let v = volume(&c, &p.volume)?;
    let revoked = blocking(move || v.client_fence(&p.client)).await?;
    Ok(json!({"revoked_grants": revoked}))
}

async fn client_unfence(c: Call) -> RpcResult {
    let p: ClientRef = c.params()?;
    let v = volume(&c, &p.volume)?;
    blocking(move || v.client_unfence(&p.client)).await?;
    ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VolRef {
    volume: String,
}

async fn client_list(c: Call) -> RpcResult {
    let p: VolRef = c.params()?;
    let v = volume(&c, &p.volume)?;
    current(&v).await;
    Ok(v.client_list())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRef {
    volume: String,
    file: FileId,
}

async fn layout_file_create(c: Call) -> RpcResult {
    let p: FileRef = c.params()?;
    let v = volume(&c, &p.volume)?;
    blocking(move || v.file_create(&p.file)).await?;
    ok()
}

async fn layout_file_remove(c: Call) -> RpcResult {
    let p: FileRef = c.params()?;
    let v = volume(&c, &p.volume)?;
    blocking(move || v.file_remove(&p.file)).await?;
    ok()
}

async fn layout_file_stat(c: Call) -> RpcResult {
    let p: FileRef = c.params()?;
    let v = volume(&c, &p.volume)?;
    current(&v).await;
    v.file_stat(&p.file).map_err(lerr)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Truncate {
    volume: String,
    file: FileId,
    size: u64,
}

async fn layout_file_truncate(c: Call) -> RpcResult {
    let p: Truncate = c.params()?;
    let v = volume(&c, &p.volume)?;
    blocking(move || v.file_truncate(&p.file, p.size)).await?;
    ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MapReq {
    volume: String,
    file: FileId,
    #[serde(default)]
    offset: u64,
    length: Option<u64>,
}

async fn layout_file_map(c: Call) -> RpcResult {
    let p: MapReq = c.params()?;
    let v = volume(&c, &p.volume)?;
    current(&v).await;
    let bs = v.superblock().block_size as u64;
    let length = match p.length {
        Some(l) => l,
        None => {
            let size = v.with_state(|s| s.files.get(&p.file).map(|f| f.size)).ok_or_else(|| lerr(LayoutError::UnknownFile(p.file.to_string())))?;
            size.div_ceil(bs) * bs - p.offset.min(size.div_ceil(bs) * bs)
        }
    };
    v.file_map(&p.file, p.offset, length).map_err(lerr)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Reflink {
    volume: String,
    source: FileId,
    destination: FileId,
}

async fn layout_file_reflink(c: Call) -> RpcResult {
    let p: Reflink = c.params()?;
    let v = volume(&c, &p.volume)?;
    blocking(move || v.file_reflink(&p.source, &p.destination)).await?;
    ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LayoutGet {
    volume: String,
    file: FileId,
    client: String,
    offset: u64,
    length: u64,
    #[serde(default)]
    min_length: u64,
    iomode: IoMode,
}

async fn layout_get(c: Call) -> RpcResult {
    let p: LayoutGet = c.params()?;
    let v = volume(&c, &p.volume)?;
    let a = blocking(move || v.layout_get(&p.file, &p.client, p.offset, p.length, p.min_length, p.iomode)).await?;
    let mut out = serde_json::to_value(a).expect("answer serializes");
    // The device every extent lives on, as GETDEVICEINFO names it (same on every path).
    if let Some(e) = c.app.layout.volumes.lock().unwrap().get(&p.volume) {
        let u = e.volume.uuid();
        out["device"] = json!({
            "naa": identity::hex(&identity::naa_designator(&u)),
            "nguid": identity::hex(&identity::nguid(&u)),
            "eui64": identity::hex(&identity::eui64(&u)),
        });
    }
    Ok(out)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Range {
    offset: u64,
    length: u64,
}

/// The volume holding `grant` (grant ids are per volume; `volume` disambiguates).
fn grant_volume(c: &Call, volume_name: &Option<String>, grant: u64) -> Result<Arc<LayoutVolume>, RpcError> {
    if let Some(n) = volume_name {
        return volume(c, n);
    }
    let mut hits: Vec<_> = c.app.layout.all().into_iter().filter(|v| v.with_state(|s| s.grants.contains_key(&grant))).collect();
    if hits.is_empty() {
        // A grant another node made may not have reached this node's view yet.
        for v in c.app.layout.all().into_iter().filter(|v| v.is_shared()) {
            if v.sync().is_ok() && v.with_state(|s| s.grants.contains_key(&grant)) {
                hits.push(v);
            }
        }
    }
    match hits.len() {
        0 => Err(lerr(LayoutError::UnknownGrant(grant))),
        1 => Ok(hits.into_iter().next().unwrap()),
        _ => Err(RpcError::invalid_params(format!("grant {grant} exists on several layout volumes: pass volume"))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Commit {
    volume: Option<String>,
    grant: u64,
    ranges: Vec<Range>,
    new_size: Option<u64>,
}

async fn layout_commit(c: Call) -> RpcResult {
    let p: Commit = c.params()?;
    let v = grant_volume(&c, &p.volume, p.grant)?;
    let ranges: Vec<(u64, u64)> = p.ranges.iter().map(|r| (r.offset, r.length)).collect();
    let a = blocking(move || v.layout_commit(p.grant, &ranges, p.new_size)).await?;
    Ok(serde_json::to_value(a).expect("answer serializes"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Return {
    volume: Option<String>,
    grant: u64,
    ranges: Option<Vec<Range>>,
}

async fn layout_return(c: Call) -> RpcResult {
    let p: Return = c.params()?;
    let v = grant_volume(&c, &p.volume, p.grant)?;
    let ranges: Option<Vec<(u64, u64)>> = p.ranges.map(|rs| rs.iter().map(|r| (r.offset, r.length)).collect());
    blocking(move || v.layout_return(p.grant, ranges.as_deref())).await?;
    ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

async fn layout_recall_subscribe(c: Call) -> RpcResult {
    let _: Empty = c.params()?;
    c.app.layout.subscribers.0.lock().unwrap().push(c.conn.notify.clone());
    ok()
}

/// Decode the params of one of this module's methods alone, without running it (what the
/// fuzz targets and the corpus replay test drive); None: not a method of this module.
pub fn decode_params(method: &str, p: &Option<serde_json::Value>) -> Option<Result<(), RpcError>> {
    use super::registry::decode_params_as as decode;
    Some(match method {
        "layout_volume_create" => decode::<VolumeCreate>(p).map(drop),
        "layout_volume_delete" => decode::<Named>(p).map(drop),
        "layout_volume_list" => decode::<MaybeNamed>(p).map(drop),
        "layout_volume_get_device" => decode::<Named>(p).map(drop),
        "layout_volume_set_guard" => decode::<SetGuard>(p).map(drop),
        "client_register" => decode::<ClientRegister>(p).map(drop),
        "client_fence" => decode::<ClientRef>(p).map(drop),
        "client_unfence" => decode::<ClientRef>(p).map(drop),
        "client_list" => decode::<VolRef>(p).map(drop),
        "layout_file_create" => decode::<FileRef>(p).map(drop),
        "layout_file_remove" => decode::<FileRef>(p).map(drop),
        "layout_file_truncate" => decode::<Truncate>(p).map(drop),
        "layout_file_stat" => decode::<FileRef>(p).map(drop),
        "layout_file_map" => decode::<MapReq>(p).map(drop),
        "layout_file_reflink" => decode::<Reflink>(p).map(drop),
        "layout_get" => decode::<LayoutGet>(p).map(drop),
        "layout_commit" => decode::<Commit>(p).map(drop),
        "layout_return" => decode::<Return>(p).map(drop),
        "layout_recall_subscribe" => decode::<Empty>(p).map(drop),
        _ => return None,
    })
}
