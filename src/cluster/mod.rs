//! Cluster mode: several Palisade nodes over one shared device, coordinated through etcd.
//!
//! A node registers under an etcd lease (`node.rs`), keeps its view of the cluster's keys current
//! with prefix watches that re-read everything after any interruption (`watch.rs`), and can run a
//! barrier that every live node acknowledges (`barrier.rs`). Volumes marked clustered keep their
//! reservation state and layout metadata in etcd (the reservation and layout layers build on this
//! one); this layer knows nothing of reservations, layouts, volumes or protocols.
//!
//! # Safety argument: no fenced write lands after a fence returns
//!
//! A fence (PREEMPT AND ABORT, the layout client fence) is an etcd transaction that removes the
//! victim's registration, followed by a barrier. It returns only when every node that was a member
//! when the barrier was written has either
//!
//! 1. acknowledged it — which a node does only after its own watch has delivered the new state
//!    (so its per-I/O snapshot refuses the victim: nothing new is admitted) *and* its local fence
//!    has drained every write admitted before (nothing old is in flight); or
//! 2. lost its lease in etcd (its member key is deleted when the lease expires).
//!
//! Case 2 is safe because a node stops admitting I/O to clustered volumes *before* etcd can expire
//! its lease: etcd counts the TTL from when it received the last keep-alive, which is after the
//! node sent it, and the node serves only until `sent + TTL − margin − TICK` (`node::Timing`).
//! Writes admitted before that point complete within `margin` (TTL/3; the assumption every
//! lease-based fence makes about the device: an admitted I/O does not take longer than that).
//! etcd leader changes only lengthen leases (a new leader renews every lease's TTL), never
//! shorten them, so the argument holds across them; an etcd restart likewise renews leases.
//!
//! A node that joins or restarts cannot admit stale I/O either: a restarting node id waits until
//! its previous incarnation's member key is gone (its lease expired or was revoked) before it
//! registers, and no node admits I/O to clustered volumes until every watch has re-read its
//! prefix after the registration — so its snapshot includes every fence committed before.
//! Members that join after a barrier was written are therefore not waited for: they start from a
//! state that already refuses the victim.
//!
//! While a node cannot confirm its lease or any watch is catching up, `Health::writable` is false
//! and clustered volumes refuse I/O (the node's port group reports Unavailable); `cluster_get_status`
//! says why.

pub mod barrier;
pub mod etcd;
pub mod groups;
pub mod node;
pub mod watch;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use barrier::{Ack, BarrierHandler};
pub use groups::{AccessState, PortGroup, PortGroups};
pub use node::{Health, Timing};
pub use watch::Change;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("etcd unreachable at {0}")]
    Unreachable(String),
    #[error("etcd: {0}")]
    Etcd(String),
    #[error("etcd call timed out")]
    Timeout,
    #[error("cluster: {0}")]
    Config(String),
    #[error("cluster state corrupt: {0}")]
    Corrupt(String),
    #[error("this node is not serving clustered volumes (lease or view not confirmed)")]
    NotServing,
    #[error("fence not acknowledged by live nodes: {0}")]
    BarrierTimeout(String),
}

/// `palisade serve --cluster URL --node-id NAME` (or the JSON config's `cluster` section).
#[derive(Clone, Debug)]
pub struct Config {
    pub endpoints: Vec<String>,
    pub node_id: String,
    /// Lease TTL in seconds (default 6): a node that loses etcd stops serving clustered volumes
    /// within TTL·2/3, and a dead node's fences wait at most TTL.
    pub lease_ttl: u64,
    /// Key prefix (default `/palisade`): several clusters can share one etcd.
    pub prefix: String,
}

impl Config {
    pub fn new(endpoints: &str, node_id: &str) -> Config {
        Config {
            endpoints: endpoints.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
            node_id: node_id.to_string(),
            lease_ttl: 6,
            prefix: "/palisade".into(),
        }
    }
}

pub struct Cluster {
    pub cfg: Config,
    pub etcd: etcd::Etcd,
    pub timing: Timing,
    tpg_id: u16,
    lease: AtomicI64,
    /// Bumped at every registration: watchers must re-read in the new epoch.
    epoch: Arc<AtomicU64>,
    health: Arc<Health>,
    watchers: Mutex<Vec<(String, Arc<watch::Synced>)>>,
    groups: Arc<PortGroups>,
    barrier_handlers: Mutex<HashMap<String, BarrierHandler>>,
    /// iSCSI relative target port ids of this node (published in the member record).
    info: Mutex<Vec<u16>>,
    health_listeners: Mutex<Vec<Box<dyn Fn(bool) + Send + Sync>>>,
    stopping: AtomicBool,
}

fn valid_node_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl Cluster {
    /// Connect, take this node's index and lease, start the liveness loop and the membership and
    /// barrier watches. Returns once registered (the node becomes writable when the watches have
    /// caught up, within a few hundred milliseconds).
    pub fn connect(cfg: Config, groups: Arc<PortGroups>) -> Result<Arc<Cluster>, ClusterError> {
        if !valid_node_id(&cfg.node_id) {
            return Err(ClusterError::Config(format!("node id {:?}: 1-64 of [A-Za-z0-9._-]", cfg.node_id)));
        }
        if cfg.endpoints.is_empty() {
            return Err(ClusterError::Config("no etcd endpoint".into()));
        }
        let etcd = etcd::Etcd::connect(&cfg.endpoints)?;
        let tpg_id = Cluster::allocate_index(&etcd, &cfg.prefix, &cfg.node_id)?;
        groups.set_local_id(tpg_id);
        groups.set_local_state(AccessState::Unavailable);
        let timing = Timing::for_ttl(cfg.lease_ttl);
        let c = Arc::new(Cluster {
            cfg,
            etcd,
            timing,
            tpg_id,
            lease: AtomicI64::new(0),
            epoch: Arc::new(AtomicU64::new(0)),
            health: Arc::new(Health::default()),
            watchers: Mutex::new(Vec::new()),
            groups,
            barrier_handlers: Mutex::new(HashMap::new()),
            info: Mutex::new(Vec::new()),
            health_listeners: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
        });
        c.register()?;
        let me = c.clone();
        c.watch_prefix(&format!("{}/members/", c.cfg.prefix), Box::new(move |ch| me.members_change(ch)));
        let me = c.clone();
        c.watch_prefix(&format!("{}/barrier/", c.cfg.prefix), Box::new(move |ch| me.barrier_change(ch)));
        c.start_liveness();
        Ok(c)
    }

    pub fn node_id(&self) -> &str {
        &self.cfg.node_id
    }
    pub fn tpg_id(&self) -> u16 {
        self.tpg_id
    }
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }
    /// A key under this cluster's prefix.
    pub fn key(&self, rest: &str) -> String {
        format!("{}/{rest}", self.cfg.prefix)
    }

    /// Keep a view of `prefix` current; the node is writable only while it is (see `watch.rs`).
    pub fn watch_prefix(&self, prefix: &str, handler: watch::Handler) {
        let synced = Arc::new(watch::Synced::default());
        self.watchers.lock().unwrap().push((prefix.to_string(), synced.clone()));
        let (client, p, e) = (self.etcd.client(), prefix.to_string(), self.epoch.clone());
        self.etcd.spawn(async move { watch::run(client, p, handler, e, synced).await });
    }

    /// Called with the new writability whenever it changes (on the cluster runtime).
    pub fn on_health(&self, f: Box<dyn Fn(bool) + Send + Sync>) {
        self.health_listeners.lock().unwrap().push(f);
    }

    fn on_health_change(&self, ok: bool) {
        self.groups.set_local_state(if ok { AccessState::Optimized } else { AccessState::Unavailable });
        for f in self.health_listeners.lock().unwrap().iter() {
            f(ok);
        }
    }

    /// This node's iSCSI relative target port ids (portal group tags), for the other nodes'
    /// REPORT TARGET PORT GROUPS.
    pub fn set_iscsi_ports(&self, ports: Vec<u16>) {
        *self.info.lock().unwrap() = ports;
        let lease = self.lease.load(Ordering::Acquire);
        if lease != 0 {
            let key = self.member_key(&self.cfg.node_id);
            let t = etcd_client::Txn::new()
                .when([etcd_client::Compare::lease(key.clone(), etcd_client::CompareOp::Equal, lease)])
                .and_then([etcd_client::TxnOp::put(
                    key,
                    self.member_record(lease),
                    Some(etcd_client::PutOptions::new().with_lease(lease)),
                )]);
            if let Err(e) = self.etcd.txn(t) {
                tracing::warn!("cluster: member record not updated: {e}");
            }
        }
    }

    fn members_change(&self, c: Change<'_>) {
        // Rebuild the whole list from etcd's view: membership changes are rare.
        let _ = c;
        let me_id = self.cfg.node_id.clone();
        let prefix = format!("{}/members/", self.cfg.prefix);
        let mut client = self.etcd.client();
        let groups = self.groups.clone();
        self.etcd.spawn(async move {
            let get = client.get(prefix, Some(etcd_client::GetOptions::new().with_prefix()));
            let Ok(Ok(r)) = tokio::time::timeout(etcd::CALL_TIMEOUT, get).await else { return };
            let mut out = Vec::new();
            for kv in r.kvs() {
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(kv.value()) else { continue };
                let node = v["node"].as_str().unwrap_or("").to_string();
                if node == me_id || node.is_empty() {
                    continue;
                }
                out.push(PortGroup {
                    id: v["tpg_id"].as_u64().unwrap_or(0) as u16,
                    node,
                    state: AccessState::Optimized,
                    iscsi_ports: v["iscsi_ports"].as_array().map(|a| a.iter().filter_map(|p| p.as_u64().map(|p| p as u16)).collect()).unwrap_or_default(),
                });
            }
            out.sort_by_key(|g| g.id);
            groups.set_remote(out);
        });
    }

    /// `cluster_get_status`.
    pub fn status(&self) -> serde_json::Value {
        let remote: Vec<serde_json::Value> = self
            .groups
            .remote()
            .iter()
            .map(|g| serde_json::json!({"node": g.node, "tpg_id": g.id, "iscsi_ports": g.iscsi_ports}))
            .collect();
        let watches: Vec<serde_json::Value> = self
            .watchers
            .lock()
            .unwrap()
            .iter()
            .map(|(p, s)| {
                serde_json::json!({"prefix": p, "synced": s.epoch.load(Ordering::Acquire) == self.epoch.load(Ordering::Acquire),
                    "revision": s.rev.load(Ordering::Acquire)})
            })
            .collect();
        serde_json::json!({
            "node_id": self.cfg.node_id,
            "endpoints": self.cfg.endpoints,
            "prefix": self.cfg.prefix,
            "tpg_id": self.tpg_id,
            "lease_ttl": self.timing.ttl.as_secs(),
            "lease_id": format!("{:x}", self.lease.load(Ordering::Acquire)),
            "health": self.health.describe(),
            "peers": remote,
            "watches": watches,
        })
    }

    /// Clean shutdown: revoke the lease so the other nodes stop waiting for this one at once.
    pub fn leave(&self) {
        self.stopping.store(true, Ordering::Release);
        let lease = self.lease.swap(0, Ordering::AcqRel);
        self.health.revoke();
        if lease != 0 {
            let mut c = self.etcd.client();
            let _ = self.etcd.block(async move { tokio::time::timeout(etcd::CALL_TIMEOUT, c.lease_revoke(lease)).await });
        }
    }
}
