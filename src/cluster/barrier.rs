//! Cluster barriers: "every live node has done X". A requester writes a request key; every node's
//! handler for the topic runs (the requester's own included) and writes an ack under the request.
//! The barrier completes when every node that was a member when the request was written has acked
//! or has lost its lease (and so, by the lease rule in `node.rs`, has stopped admitting I/O and
//! drained it).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{PutOptions, Txn, TxnOp};

use super::watch::Change;
use super::{Cluster, ClusterError};

/// A topic's handler: do the local part with `payload`, then call the ack (from any thread).
pub type BarrierHandler = Arc<dyn Fn(&[u8], Ack) + Send + Sync>;
pub type Ack = Box<dyn FnOnce() + Send>;

static NEXT: AtomicU64 = AtomicU64::new(1);

impl Cluster {
    /// Run `handler` for every barrier of `topic` (register before the first barrier can come:
    /// at volume attach).
    pub fn on_barrier(&self, topic: &str, handler: BarrierHandler) {
        self.barrier_handlers.lock().unwrap().insert(topic.to_string(), handler);
    }

    /// Wait until every live node has run its `topic` handler on `payload` (blocking: call from a
    /// management or persist thread, never from a reactor or the cluster runtime).
    pub fn barrier(&self, topic: &str, payload: &[u8], timeout: Duration) -> Result<(), ClusterError> {
        let lease = self.lease.load(Ordering::Acquire);
        if lease == 0 || !self.health.writable() {
            return Err(ClusterError::NotServing);
        }
        let id = format!("{}-{}-{}", self.cfg.node_id, std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let req = format!("{}/barrier/{topic}/{id}", self.cfg.prefix);
        let acks = format!("{req}/ack/");
        self.etcd.txn(Txn::new().and_then([TxnOp::put(req.clone(), payload.to_vec(), Some(PutOptions::new().with_lease(lease)))]))?;
        let r = self.wait_acks(&acks, timeout);
        if let Err(e) = self.etcd.delete_prefix(&req) {
            tracing::warn!("cluster: barrier {req} left behind: {e}");
        }
        r
    }

    fn wait_acks(&self, acks: &str, timeout: Duration) -> Result<(), ClusterError> {
        let (members, _) = Cluster::read_members(&self.etcd, &self.cfg.prefix)?;
        let deadline = Instant::now() + timeout;
        let mut nap = Duration::from_micros(500);
        loop {
            let (done, _) = self.etcd.get_prefix(acks)?;
            let acked: HashSet<String> =
                done.iter().filter_map(|kv| kv.key_str().ok().map(|k| k.rsplit('/').next().unwrap_or("").to_string())).collect();
            let (now, _) = Cluster::read_members(&self.etcd, &self.cfg.prefix)?;
            let pending: Vec<&str> = members
                .iter()
                .filter(|(n, l)| !acked.contains(n) && now.iter().any(|(m, ml)| m == n && ml == l))
                .map(|(n, _)| n.as_str())
                .collect();
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::BarrierTimeout(pending.join(",")));
            }
            std::thread::sleep(nap);
            // Acks come within a few etcd commits: keep asking often (two reads on loopback).
            nap = (nap * 2).min(Duration::from_millis(2));
        }
    }

    /// Consumer of the `barrier/` watch: dispatch requests this node has not acked.
    pub(crate) fn barrier_change(self: &Arc<Self>, c: Change<'_>) {
        let base = format!("{}/barrier/", self.cfg.prefix);
        let me = &self.cfg.node_id;
        match c {
            Change::Reset { kvs, .. } => {
                let mut reqs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
                let mut mine: HashSet<String> = HashSet::new();
                for kv in kvs {
                    let Ok(k) = kv.key_str() else { continue };
                    let Some(rest) = k.strip_prefix(&base) else { continue };
                    match rest.split_once("/ack/") {
                        Some((r, node)) if node == me => {
                            mine.insert(r.to_string());
                        }
                        Some(_) => {}
                        None => {
                            reqs.insert(rest.to_string(), kv.value().to_vec());
                        }
                    }
                }
                for (r, v) in reqs {
                    if !mine.contains(&r) {
                        self.dispatch(&r, &v);
                    }
                }
            }
            Change::Put(kv) => {
                let Ok(k) = kv.key_str() else { return };
                let Some(rest) = k.strip_prefix(&base) else { return };
                if !rest.contains("/ack/") && kv.version() == 1 {
                    self.dispatch(rest, kv.value());
                }
            }
            Change::Delete { .. } => {}
        }
    }

    fn dispatch(self: &Arc<Self>, req: &str, payload: &[u8]) {
        let Some((topic, _)) = req.split_once('/') else { return };
        let handler = self.barrier_handlers.lock().unwrap().get(topic).cloned();
        let me = self.clone();
        let key = format!("{}/barrier/{req}/ack/{}", self.cfg.prefix, self.cfg.node_id);
        let ack: Ack = Box::new(move || me.ack(key));
        match handler {
            Some(h) => h(payload, ack),
            // Nothing of this topic here (no such volume): nothing to drain.
            None => ack(),
        }
    }

    fn ack(self: &Arc<Self>, key: String) {
        let lease = self.lease.load(Ordering::Acquire);
        if lease == 0 {
            return; // not a member: the requester stops waiting for us when our lease is gone
        }
        let mut c = self.etcd.client();
        self.etcd.spawn(async move {
            let put = c.put(key.clone(), "", Some(PutOptions::new().with_lease(lease)));
            match tokio::time::timeout(super::etcd::CALL_TIMEOUT, put).await {
                Ok(Ok(_)) => {}
                _ => tracing::warn!("cluster: could not ack {key}"),
            }
        });
    }
}
