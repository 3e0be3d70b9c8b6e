//! cluster_* methods: join a cluster (also what `serve --cluster URL --node-id NAME` does, and
//! what save_config writes back), its status, and marking a volume clustered. SPDK has no
//! counterpart; these are Palisade's own names.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};

use super::registry::{Call, Registry, Subsystem, ANY, RUNTIME};
use super::{ok, App, RpcError, RpcResult};
use crate::config::Entry;

pub fn register(r: &mut Registry) {
    r.add("cluster_connect", ANY, cluster_connect);
    r.add("cluster_get_status", ANY, cluster_get_status);
    r.add("volume_set_cluster", RUNTIME, volume_set_cluster);
    r.add_subsystem(Subsystem { name: "cluster", depends_on: &[], config: cluster_config });
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Endpoints {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Connect {
    /// etcd client URL(s): "http://127.0.0.1:2379" or a list (or one comma-separated string).
    endpoints: Endpoints,
    node_id: String,
    #[serde(default)]
    lease_ttl: Option<u64>,
    #[serde(default)]
    prefix: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetCluster {
    bdev_name: String,
    #[serde(default = "yes")]
    clustered: bool,
}

fn yes() -> bool {
    true
}

impl Connect {
    fn config(self) -> Result<crate::cluster::Config, RpcError> {
        let eps = match self.endpoints {
            Endpoints::One(s) => s,
            Endpoints::Many(v) => v.join(","),
        };
        let mut cfg = crate::cluster::Config::new(&eps, &self.node_id);
        if let Some(t) = self.lease_ttl {
            if !(2..=600).contains(&t) {
                return Err(RpcError::invalid_params("lease_ttl: 2 to 600 seconds"));
            }
            cfg.lease_ttl = t;
        }
        if let Some(p) = self.prefix {
            if !p.starts_with('/') || p.ends_with('/') {
                return Err(RpcError::invalid_params("prefix: starts with '/' and does not end with one"));
            }
            cfg.prefix = p;
        }
        Ok(cfg)
    }
}

/// Join the cluster (once per process).
pub async fn connect(app: &Arc<App>, cfg: crate::cluster::Config) -> Result<(), RpcError> {
    if let Some(c) = app.cluster.get() {
        if c.cfg.node_id == cfg.node_id && c.cfg.endpoints == cfg.endpoints && c.cfg.prefix == cfg.prefix {
            return Ok(());
        }
        return Err(RpcError::errno(libc::EEXIST, format!("already in a cluster as node {}", c.cfg.node_id)));
    }
    let groups = app.port_groups.clone();
    let c = tokio::task::spawn_blocking(move || crate::cluster::Cluster::connect(cfg, groups))
        .await
        .map_err(|e| RpcError::internal(e.to_string()))?
        .map_err(|e| RpcError::errno(libc::EHOSTUNREACH, e.to_string()))?;
    if app.cluster.set(c.clone()).is_err() {
        c.leave();
        return Err(RpcError::errno(libc::EEXIST, "already in a cluster"));
    }
    app.volumes.set_cluster(c);
    publish_ports(app).await;
    Ok(())
}

/// Tell the other nodes this node's iSCSI relative target port ids (portal group tags), for their
/// REPORT TARGET PORT GROUPS.
pub async fn publish_ports(app: &Arc<App>) {
    let Some(c) = app.cluster.get().cloned() else { return };
    let tags: Vec<u16> = app.iscsi.state.lock().unwrap().portal_groups.keys().map(|t| *t as u16).collect();
    let _ = tokio::task::spawn_blocking(move || c.set_iscsi_ports(tags)).await;
}

async fn cluster_connect(c: Call) -> RpcResult {
    let p: Connect = c.params()?;
    let cfg = p.config()?;
    let _g = c.app.mgmt.lock().await;
    connect(&c.app, cfg).await?;
    ok()
}

async fn cluster_get_status(c: Call) -> RpcResult {
    Ok(match c.app.cluster.get() {
        None => json!({"enabled": false}),
        Some(cl) => {
            let mut s = cl.status();
            s["enabled"] = true.into();
            let vols: Vec<Value> = c
                .app
                .volumes
                .list()
                .iter()
                .map(|v| json!({"bdev_name": v.name(), "uuid": v.uuid().to_string(), "clustered": v.is_clustered()}))
                .collect();
            s["volumes"] = vols.into();
            s
        }
    })
}

async fn volume_set_cluster(c: Call) -> RpcResult {
    let p: SetCluster = c.params()?;
    if !p.clustered {
        return Err(RpcError::invalid_params(
            "clustered: false is not supported (a clustered volume stays clustered; see README, Cluster mode)",
        ));
    }
    let Some(v) = c.app.volumes.get(&p.bdev_name) else {
        return Err(RpcError::errno(libc::ENOENT, format!("bdev {} is not exported by any LUN or namespace", p.bdev_name)));
    };
    let _g = c.app.mgmt.lock().await;
    let vols = c.app.volumes.clone();
    tokio::task::spawn_blocking(move || vols.mark_clustered(&v))
        .await
        .map_err(|e| RpcError::internal(e.to_string()))?
        .map_err(|e| RpcError::errno(libc::EIO, e.to_string()))?;
    ok()
}

fn cluster_config(app: &App) -> Vec<Entry> {
    let Some(c) = app.cluster.get() else { return Vec::new() };
    vec![Entry {
        method: "cluster_connect".into(),
        params: Some(json!({
            "endpoints": c.cfg.endpoints,
            "node_id": c.cfg.node_id,
            "lease_ttl": c.cfg.lease_ttl,
            "prefix": c.cfg.prefix,
        })),
    }]
}

pub fn decode_params(method: &str, p: &Option<Value>) -> Option<Result<(), RpcError>> {
    use super::registry::decode_params_as as decode;
    Some(match method {
        "cluster_connect" => decode::<Connect>(p).map(drop),
        "cluster_get_status" => Ok(()),
        "volume_set_cluster" => decode::<SetCluster>(p).map(drop),
        _ => return None,
    })
}
