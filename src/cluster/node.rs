//! This node's membership: a lease, the member key under it, the keep-alive loop, and the health
//! that says whether the node may serve clustered volumes (see the safety argument in `mod.rs`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};

use super::{Cluster, ClusterError};

/// Whether this node may admit I/O to clustered volumes. One atomic load on the data path.
pub struct Health {
    writable: AtomicBool,
    inner: Mutex<HealthInner>,
}

struct HealthInner {
    /// The node must stop admitting I/O by this instant unless a keep-alive extends it.
    deadline: Option<Instant>,
    reason: String,
    since: Instant,
    transitions: u64,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            writable: AtomicBool::new(false),
            inner: Mutex::new(HealthInner { deadline: None, reason: "not registered yet".into(), since: Instant::now(), transitions: 0 }),
        }
    }
}

impl Health {
    #[inline]
    pub fn writable(&self) -> bool {
        self.writable.load(Ordering::Acquire)
    }
    pub(crate) fn extend(&self, until: Instant) {
        let mut g = self.inner.lock().unwrap();
        if g.deadline.is_none_or(|d| d < until) {
            g.deadline = Some(until);
        }
    }
    pub(crate) fn revoke(&self) {
        self.inner.lock().unwrap().deadline = None;
        self.set(false, "lease lost".into());
    }
    fn deadline(&self) -> Option<Instant> {
        self.inner.lock().unwrap().deadline
    }
    /// Returns true when the state changed.
    fn set(&self, ok: bool, reason: String) -> bool {
        let mut g = self.inner.lock().unwrap();
        let was = self.writable.swap(ok, Ordering::AcqRel);
        if was != ok {
            g.since = Instant::now();
            g.transitions += 1;
            g.reason = reason;
            true
        } else {
            if !ok {
                g.reason = reason;
            }
            false
        }
    }
    pub fn describe(&self) -> serde_json::Value {
        let g = self.inner.lock().unwrap();
        let w = self.writable();
        serde_json::json!({
            "writable": w,
            "reason": if w { "" } else { g.reason.as_str() },
            "for_ms": g.since.elapsed().as_millis() as u64,
            "transitions": g.transitions,
            "lease_left_ms": g.deadline.map(|d| d.saturating_duration_since(Instant::now()).as_millis() as u64),
        })
    }
}

/// How often health is re-evaluated: the node stops admitting I/O at most this late after its
/// deadline, so the deadline keeps this much in hand (see `Timing`).
pub const TICK: Duration = Duration::from_millis(50);

/// Lease arithmetic: etcd expires the lease no earlier than `ttl` after it received the last
/// keep-alive, which is after we sent it; we stop admitting I/O `margin` before that, and
/// `margin` is the bound we assume on an admitted write's completion.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub ttl: Duration,
    pub margin: Duration,
    pub interval: Duration,
}

impl Timing {
    pub fn for_ttl(ttl_secs: u64) -> Timing {
        let ttl = Duration::from_secs(ttl_secs.max(2));
        Timing { ttl, margin: ttl / 3, interval: (ttl / 6).max(Duration::from_millis(250)) }
    }
    /// Until when a keep-alive sent at `sent` (and answered with a live lease) lets us serve.
    pub fn serve_until(&self, sent: Instant) -> Instant {
        sent + self.ttl - self.margin - TICK
    }
}

impl Cluster {
    pub(crate) fn member_key(&self, node: &str) -> String {
        format!("{}/members/{node}", self.cfg.prefix)
    }

    /// Take a lease and the member key. A previous incarnation of this node id must be gone
    /// first (its lease expired or revoked): its writes could still be in flight until then.
    pub(crate) fn register(&self) -> Result<(), ClusterError> {
        let key = self.member_key(&self.cfg.node_id);
        let deadline = Instant::now() + self.timing.ttl + Duration::from_secs(2);
        loop {
            let (cur, _) = self.etcd.get(&key)?;
            match cur {
                None => break,
                Some(_) if Instant::now() > deadline => {
                    return Err(ClusterError::Config(format!("node id {} is registered by a live process", self.cfg.node_id)))
                }
                Some(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
        let ttl = self.timing.ttl.as_secs() as i64;
        let sent = Instant::now();
        let mut c = self.etcd.client();
        let lease = self
            .etcd
            .block(async move { tokio::time::timeout(super::etcd::CALL_TIMEOUT, c.lease_grant(ttl, None)).await })
            .map_err(|_| ClusterError::Timeout)?
            .map_err(|e| ClusterError::Etcd(e.to_string()))?
            .id();
        let record = self.member_record(lease);
        let t = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), record, Some(PutOptions::new().with_lease(lease)))]);
        if !self.etcd.txn(t)?.succeeded() {
            return Err(ClusterError::Config(format!("node id {} registered concurrently by another process", self.cfg.node_id)));
        }
        self.lease.store(lease, Ordering::Release);
        self.health.extend(self.timing.serve_until(sent));
        // Watchers must read everything again before this registration may serve.
        self.epoch.fetch_add(1, Ordering::AcqRel);
        tracing::info!("cluster: node {} registered (lease {lease:x}, group {})", self.cfg.node_id, self.tpg_id);
        Ok(())
    }

    pub(crate) fn member_record(&self, lease: i64) -> String {
        let info = self.info.lock().unwrap().clone();
        serde_json::json!({"node": self.cfg.node_id, "tpg_id": self.tpg_id, "lease": lease, "iscsi_ports": info}).to_string()
    }

    /// The stable small integer of this node id (target port group id, ANA group of its ports):
    /// allocated once in etcd, kept across restarts.
    pub(crate) fn allocate_index(etcd: &super::etcd::Etcd, prefix: &str, node: &str) -> Result<u16, ClusterError> {
        let mine = format!("{prefix}/node-index/by-name/{node}");
        for _ in 0..64 {
            let (cur, _) = etcd.get(&mine)?;
            if let Some((v, _)) = cur {
                return std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| ClusterError::Corrupt(format!("{mine}: not a number")));
            }
            let (taken, _) = etcd.get_prefix(&format!("{prefix}/node-index/by-id/"))?;
            let max = taken
                .iter()
                .filter_map(|kv| kv.key_str().ok()?.rsplit('/').next()?.parse::<u16>().ok())
                .max()
                .unwrap_or(0);
            let id = max.checked_add(1).ok_or_else(|| ClusterError::Config("no node index left".into()))?;
            let by_id = format!("{prefix}/node-index/by-id/{id}");
            let t = Txn::new()
                .when([
                    Compare::create_revision(mine.clone(), CompareOp::Equal, 0),
                    Compare::create_revision(by_id.clone(), CompareOp::Equal, 0),
                ])
                .and_then([TxnOp::put(mine.clone(), id.to_string(), None), TxnOp::put(by_id, node, None)]);
            if etcd.txn(t)?.succeeded() {
                return Ok(id);
            }
        }
        Err(ClusterError::Config("could not allocate a node index".into()))
    }

    /// Keep-alive loop and health ticker (on the cluster runtime).
    pub(crate) fn start_liveness(self: &Arc<Self>) {
        let me = self.clone();
        self.etcd.spawn(async move { me.keepalive_loop().await });
        let me = self.clone();
        self.etcd.spawn(async move {
            loop {
                tokio::time::sleep(TICK).await;
                me.evaluate();
            }
        });
    }

    async fn keepalive_loop(self: Arc<Self>) {
        let mut lease_of_stream = 0i64;
        let mut keeper = None;
        loop {
            tokio::time::sleep(self.timing.interval).await;
            if self.stopping.load(Ordering::Acquire) {
                return;
            }
            let lease = self.lease.load(Ordering::Acquire);
            if lease == 0 {
                // Lost: register again (off the runtime: register blocks on etcd calls).
                let me = self.clone();
                let r = tokio::task::spawn_blocking(move || me.register()).await;
                if let Ok(Err(e)) = r {
                    tracing::warn!("cluster: re-registration failed: {e}");
                }
                continue;
            }
            if lease != lease_of_stream {
                keeper = None;
            }
            if keeper.is_none() {
                let mut c = self.etcd.client();
                match tokio::time::timeout(super::etcd::CALL_TIMEOUT, c.lease_keep_alive(lease)).await {
                    Ok(Ok(k)) => {
                        keeper = Some(k);
                        lease_of_stream = lease;
                    }
                    _ => continue,
                }
            }
            let (k, s) = keeper.as_mut().unwrap();
            let sent = Instant::now();
            let ok = async {
                k.keep_alive().await.ok()?;
                s.message().await.ok()?
            };
            match tokio::time::timeout(self.timing.interval.max(Duration::from_millis(500)), ok).await {
                Ok(Some(r)) if r.ttl() > 0 => self.health.extend(self.timing.serve_until(sent)),
                Ok(Some(_)) => {
                    tracing::error!("cluster: lease {lease:x} expired in etcd; refusing I/O on clustered volumes until re-registered");
                    self.lease.store(0, Ordering::Release);
                    self.health.revoke();
                    self.on_health_change(false);
                    keeper = None;
                }
                _ => keeper = None,
            }
        }
    }

    /// Writable = lease deadline ahead, and every watcher has read everything since registration.
    pub(crate) fn evaluate(&self) {
        let now = Instant::now();
        let epoch = self.epoch.load(Ordering::Acquire);
        let (ok, reason) = match self.health.deadline() {
            _ if self.lease.load(Ordering::Acquire) == 0 => (false, "not registered".to_string()),
            None => (false, "no lease".to_string()),
            Some(d) if now >= d => (false, "lease not confirmed by etcd in time".to_string()),
            Some(_) => match self.watchers.lock().unwrap().iter().find(|(_, s)| s.epoch.load(Ordering::Acquire) != epoch) {
                Some((p, _)) => (false, format!("catching up on {p}")),
                None => (true, String::new()),
            },
        };
        if self.health.set(ok, reason.clone()) {
            if ok {
                tracing::info!("cluster: node {} serving clustered volumes", self.cfg.node_id);
            } else {
                tracing::error!("cluster: node {} fails closed on clustered volumes: {reason}", self.cfg.node_id);
            }
            self.on_health_change(ok);
        }
    }

    /// Members as the membership watch last saw them.
    pub(crate) fn read_members(etcd: &super::etcd::Etcd, prefix: &str) -> Result<(Vec<(String, i64)>, i64), ClusterError> {
        let (kvs, rev) = etcd.get_prefix(&format!("{prefix}/members/"))?;
        Ok((kvs.iter().filter_map(|kv| Some((kv.key_str().ok()?.rsplit('/').next()?.to_string(), kv.lease()))).collect(), rev))
    }
}
