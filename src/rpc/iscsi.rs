//! iscsi_* methods (SPDK names, parameters and result shapes) and the iscsi subsystem's saved
//! config: options first, then auth, portal and initiator groups, then target nodes.

use std::sync::Arc;

use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};

use super::registry::{Call, Registry, Subsystem, ANY, RUNTIME, STARTUP};
use super::{ok, App, RpcError, RpcResult};
use crate::config::Entry;
use crate::iscsi::listener;
use crate::iscsi::target::{AuthGroup, ChapPolicy, InitiatorGroup, LunSpec, Node, Options, PgIg, Portal, PortalGroup, Secret};
use crate::scsi::{Lun, LunMap};

pub fn register(r: &mut Registry) {
    r.add("iscsi_set_options", STARTUP, iscsi_set_options);
    r.add("iscsi_get_options", ANY, iscsi_get_options);
    r.add("iscsi_set_discovery_auth", ANY, iscsi_set_discovery_auth);
    r.add("iscsi_create_auth_group", ANY, iscsi_create_auth_group);
    r.add("iscsi_delete_auth_group", ANY, iscsi_delete_auth_group);
    r.add("iscsi_get_auth_groups", ANY, iscsi_get_auth_groups);
    r.add("iscsi_create_portal_group", RUNTIME, iscsi_create_portal_group);
    r.add("iscsi_start_portal_group", RUNTIME, iscsi_start_portal_group);
    r.add("iscsi_delete_portal_group", RUNTIME, iscsi_delete_portal_group);
    r.add("iscsi_get_portal_groups", ANY, iscsi_get_portal_groups);
    r.add("iscsi_create_initiator_group", RUNTIME, iscsi_create_initiator_group);
    r.add("iscsi_delete_initiator_group", RUNTIME, iscsi_delete_initiator_group);
    r.add("iscsi_get_initiator_groups", ANY, iscsi_get_initiator_groups);
    r.add("iscsi_create_target_node", RUNTIME, iscsi_create_target_node);
    r.add("iscsi_target_node_add_lun", RUNTIME, iscsi_target_node_add_lun);
    r.add("iscsi_delete_target_node", RUNTIME, iscsi_delete_target_node);
    r.add("iscsi_get_target_nodes", ANY, iscsi_get_target_nodes);
    r.add("iscsi_get_connections", RUNTIME, iscsi_get_connections);
    r.add_subsystem(Subsystem { name: "iscsi", depends_on: &["bdev"], config: iscsi_config });
}

fn iscsi_config(app: &App) -> Vec<Entry> {
    let st = app.iscsi.state.lock().unwrap();
    let mut out = vec![Entry { method: "iscsi_set_options".into(), params: Some(options_json(&st.opts)) }];
    for g in st.auth_groups.values() {
        out.push(Entry { method: "iscsi_create_auth_group".into(), params: Some(json!({"tag": g.tag, "secrets": g.secrets})) });
    }
    for pg in st.portal_groups.values() {
        out.push(Entry { method: "iscsi_create_portal_group".into(), params: Some(pg_json(pg)) });
    }
    for ig in st.initiator_groups.values() {
        out.push(Entry { method: "iscsi_create_initiator_group".into(), params: Some(ig_json(ig)) });
    }
    for n in st.nodes.values() {
        out.push(Entry { method: "iscsi_create_target_node".into(), params: Some(node_json(n)) });
    }
    out
}

fn options_json(o: &Options) -> Value {
    serde_json::to_value(o).expect("options serialize")
}

fn pg_json(pg: &PortalGroup) -> Value {
    json!({"tag": pg.tag, "private": pg.private, "portals": pg.portals})
}

fn ig_json(ig: &InitiatorGroup) -> Value {
    json!({"tag": ig.tag, "initiators": ig.initiators, "netmasks": ig.netmasks})
}

fn node_json(n: &Node) -> Value {
    json!({
        "name": n.name,
        "alias_name": n.alias,
        "pg_ig_maps": n.pg_ig_maps,
        "luns": n.lun_specs,
        "queue_depth": n.queue_depth,
        "disable_chap": n.chap.disable,
        "require_chap": n.chap.require,
        "mutual_chap": n.chap.mutual,
        "chap_group": n.chap.group,
        "header_digest": n.header_digest,
        "data_digest": n.data_digest,
    })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SetOptions {
    auth_file: Option<String>,
    node_base: Option<String>,
    nop_timeout: Option<u32>,
    nop_in_interval: Option<u32>,
    disable_chap: Option<bool>,
    require_chap: Option<bool>,
    mutual_chap: Option<bool>,
    chap_group: Option<u32>,
    max_sessions: Option<u32>,
    max_queue_depth: Option<u32>,
    max_connections_per_session: Option<u32>,
    default_time2wait: Option<u32>,
    default_time2retain: Option<u32>,
    first_burst_length: Option<u32>,
    immediate_data: Option<bool>,
    error_recovery_level: Option<u32>,
    allow_duplicated_isid: Option<bool>,
    max_large_datain_per_connection: Option<u32>,
    max_r2t_per_connection: Option<u32>,
    pdu_pool_size: Option<u32>,
    immediate_data_pool_size: Option<u32>,
    data_out_pool_size: Option<u32>,
    max_discovery_sessions: Option<u32>,
    max_connections: Option<u32>,
    max_prelogin_connections: Option<u32>,
    login_timeout: Option<u32>,
    data_buffer_budget_mib: Option<u32>,
    data_buffer_per_connection_mib: Option<u32>,
}

async fn iscsi_set_options(c: Call) -> RpcResult {
    let p: SetOptions = c.params()?;
    if p.error_recovery_level.is_some_and(|e| e > 2) {
        return Err(RpcError::invalid_params("error_recovery_level: must be 0..2"));
    }
    if p.first_burst_length.is_some_and(|f| !(512..=16_777_215).contains(&f)) {
        return Err(RpcError::invalid_params("first_burst_length: must be 512..16777215"));
    }
    if p.disable_chap == Some(true) && (p.require_chap == Some(true) || p.mutual_chap == Some(true)) {
        return Err(RpcError::invalid_params("disable_chap cannot be combined with require_chap or mutual_chap"));
    }
    for (name, v) in [("max_connections", p.max_connections), ("max_prelogin_connections", p.max_prelogin_connections), ("login_timeout", p.login_timeout),
        ("data_buffer_budget_mib", p.data_buffer_budget_mib), ("data_buffer_per_connection_mib", p.data_buffer_per_connection_mib)] {
        if v == Some(0) {
            return Err(RpcError::invalid_params(format!("{name}: must be at least 1")));
        }
    }
    let _g = c.app.mgmt.lock().await;
    let mut st = c.app.iscsi.state.lock().unwrap();
    let o = &mut st.opts;
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(v) = p.$f { o.$f = v; } )* };
    }
    set!(auth_file, node_base, nop_timeout, nop_in_interval, disable_chap, require_chap, mutual_chap, chap_group, max_sessions,
        max_queue_depth, max_connections_per_session, default_time2wait, default_time2retain, first_burst_length, immediate_data,
        error_recovery_level, allow_duplicated_isid, max_large_datain_per_connection, max_r2t_per_connection, pdu_pool_size,
        immediate_data_pool_size, data_out_pool_size, max_discovery_sessions, max_connections, max_prelogin_connections, login_timeout,
        data_buffer_budget_mib, data_buffer_per_connection_mib);
    c.app.iscsi.data_budget.set_limit(o.data_budget_bytes());
    // ErrorRecoveryLevel 0 is all this target negotiates; keep what was asked for the record.
    ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

async fn iscsi_get_options(c: Call) -> RpcResult {
    let _: Empty = c.params()?;
    Ok(options_json(&c.app.iscsi.opts()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DiscoveryAuth {
    disable_chap: Option<bool>,
    require_chap: Option<bool>,
    mutual_chap: Option<bool>,
    chap_group: Option<u32>,
}

async fn iscsi_set_discovery_auth(c: Call) -> RpcResult {
    let p: DiscoveryAuth = c.params()?;
    let pol = chap_policy(p.disable_chap, p.require_chap, p.mutual_chap, p.chap_group)?;
    let mut st = c.app.iscsi.state.lock().unwrap();
    st.opts.disable_chap = pol.disable;
    st.opts.require_chap = pol.require;
    st.opts.mutual_chap = pol.mutual;
    st.opts.chap_group = pol.group;
    ok()
}

fn chap_policy(disable: Option<bool>, require: Option<bool>, mutual: Option<bool>, group: Option<u32>) -> Result<ChapPolicy, RpcError> {
    let pol = ChapPolicy {
        disable: disable.unwrap_or(false),
        require: require.unwrap_or(false),
        mutual: mutual.unwrap_or(false),
        group: group.unwrap_or(0),
    };
    if pol.disable && (pol.require || pol.mutual) {
        return Err(RpcError::invalid_params("disable_chap cannot be combined with require_chap or mutual_chap"));
    }
    if pol.mutual && !pol.require {
        return Err(RpcError::invalid_params("mutual_chap requires require_chap"));
    }
    Ok(pol)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthGroupParams {
    tag: u32,
    #[serde(default)]
    secrets: Vec<Secret>,
}

async fn iscsi_create_auth_group(c: Call) -> RpcResult {
    let p: AuthGroupParams = c.params()?;
    if p.tag == 0 {
        return Err(RpcError::invalid_params("tag: must be > 0"));
    }
    for s in &p.secrets {
        if s.muser.is_some() != s.msecret.is_some() {
            return Err(RpcError::invalid_params("secrets: muser and msecret go together"));
        }
    }
    let mut st = c.app.iscsi.state.lock().unwrap();
    if st.auth_groups.contains_key(&p.tag) {
        return Err(RpcError::errno(libc::EEXIST, format!("auth group {} exists", p.tag)));
    }
    st.auth_groups.insert(p.tag, AuthGroup { tag: p.tag, secrets: p.secrets });
    ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TagParam {
    tag: u32,
}

async fn iscsi_delete_auth_group(c: Call) -> RpcResult {
    let p: TagParam = c.params()?;
    let mut st = c.app.iscsi.state.lock().unwrap();
    st.auth_groups.remove(&p.tag).ok_or_else(|| RpcError::errno(libc::ENOENT, format!("auth group {} not found", p.tag)))?;
    ok()
}

async fn iscsi_get_auth_groups(c: Call) -> RpcResult {
    let _: Empty = c.params()?;
    let st = c.app.iscsi.state.lock().unwrap();
    Ok(json!(st.auth_groups.values().map(|g| json!({"tag": g.tag, "secrets": g.secrets})).collect::<Vec<_>>()))
}

/// SPDK's rpc.py sends the port as a string; configs written by hand often use a number.
fn port_any<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!("port: expected a string or number, got {other}"))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PortalParam {
    host: String,
    #[serde(deserialize_with = "port_any")]
    port: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreatePg {
    tag: u32,
    portals: Vec<PortalParam>,
    #[serde(default)]
    private: bool,
    #[serde(default)]
    wait: bool,
}

fn portal_addr(p: &Portal) -> Result<std::net::SocketAddr, RpcError> {
    let host = p.host.trim_start_matches('[').trim_end_matches(']');
    let ip: std::net::IpAddr = host.parse().map_err(|_| RpcError::invalid_params(format!("portals: host {:?} is not a numeric IP address", p.host)))?;
    let port: u16 = p.port.parse().map_err(|_| RpcError::invalid_params(format!("portals: port {:?} is not a TCP port", p.port)))?;
    Ok(std::net::SocketAddr::new(ip, port))
}

/// Bind every portal of a group and start its listeners on reactor 0.
fn start_listeners(app: &Arc<App>, tag: u32, portals: &[Portal]) -> Result<Vec<crate::reactor::HandlerRef>, RpcError> {
    let mut socks = Vec::new();
    for p in portals {
        let addr = portal_addr(p)?;
        let s = listener::bind(addr).map_err(|e| RpcError::errno(e.raw_os_error().unwrap_or(libc::EINVAL), format!("cannot listen on {addr}")))?;
        socks.push(s);
    }
    let mut refs = Vec::new();
    for s in socks {
        let target = app.iscsi.clone();
        let h = listener::start(&app.reactors, 0, s, target, tag).map_err(|e| RpcError::internal(format!("cannot start the portal listener: {e}")))?;
        refs.push(h);
    }
    Ok(refs)
}

fn stop_listeners(app: &App, refs: Vec<crate::reactor::HandlerRef>) {
    for h in refs {
        app.reactors.send(h.reactor, move |r| {
            r.with_handler(h, |_, core, me| core.close(me));
        });
    }
}

async fn iscsi_create_portal_group(c: Call) -> RpcResult {
    let p: CreatePg = c.params()?;
    if p.tag == 0 {
        return Err(RpcError::invalid_params("tag: must be > 0"));
    }
    if p.portals.is_empty() {
        return Err(RpcError::invalid_params("portals: at least one portal is needed"));
    }
    let portals: Vec<Portal> = p.portals.into_iter().map(|x| Portal { host: x.host, port: x.port }).collect();
    for x in &portals {
        portal_addr(x)?;
    }
    let _g = c.app.mgmt.lock().await;
    if c.app.iscsi.state.lock().unwrap().portal_groups.contains_key(&p.tag) {
        return Err(RpcError::errno(libc::EEXIST, format!("portal group {} exists", p.tag)));
    }
    let listeners = if p.wait { Vec::new() } else { start_listeners(&c.app, p.tag, &portals)? };
    c.app.iscsi.state.lock().unwrap().portal_groups.insert(p.tag, PortalGroup { tag: p.tag, portals, private: p.private, listeners });
    super::cluster::publish_ports(&c.app).await;
    c.app.iscsi.portal_groups_changed();
    ok()
}

async fn iscsi_start_portal_group(c: Call) -> RpcResult {
    let p: TagParam = c.params()?;
    let _g = c.app.mgmt.lock().await;
    let portals = {
        let st = c.app.iscsi.state.lock().unwrap();
        let pg = st.portal_groups.get(&p.tag).ok_or_else(|| RpcError::errno(libc::ENOENT, format!("portal group {} not found", p.tag)))?;
        if !pg.listeners.is_empty() {
            return ok();
        }
        pg.portals.clone()
    };
    let l = start_listeners(&c.app, p.tag, &portals)?;
    if let Some(pg) = c.app.iscsi.state.lock().unwrap().portal_groups.get_mut(&p.tag) {
        pg.listeners = l;
    }
    ok()
}

async fn iscsi_delete_portal_group(c: Call) -> RpcResult {
    let p: TagParam = c.params()?;
    let _g = c.app.mgmt.lock().await;
    let pg = c.app.iscsi.state.lock().unwrap().portal_groups.remove(&p.tag);
    let pg = pg.ok_or_else(|| RpcError::errno(libc::ENOENT, format!("portal group {} not found", p.tag)))?;
    stop_listeners(&c.app, pg.listeners);
    super::cluster::publish_ports(&c.app).await;
    c.app.iscsi.portal_groups_changed();
    ok()
}

async fn iscsi_get_portal_groups(c: Call) -> RpcResult {
    let _: Empty = c.params()?;
    let st = c.app.iscsi.state.lock().unwrap();
    Ok(json!(st.portal_groups.values().map(pg_json).collect::<Vec<_>>()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateIg {
    tag: u32,
    initiators: Vec<String>,
    netmasks: Vec<String>,
}

async fn iscsi_create_initiator_group(c: Call) -> RpcResult {
    let p: CreateIg = c.params()?;
    if p.tag == 0 {
        return Err(RpcError::invalid_params("tag: must be > 0"));
    }
    if p.initiators.is_empty() || p.netmasks.is_empty() {
        return Err(RpcError::invalid_params("initiators and netmasks must not be empty"));
    }
    let mut st = c.app.iscsi.state.lock().unwrap();
    if st.initiator_groups.contains_key(&p.tag) {
        return Err(RpcError::errno(libc::EEXIST, format!("initiator group {} exists", p.tag)));
    }
    st.initiator_groups.insert(p.tag, InitiatorGroup { tag: p.tag, initiators: p.initiators, netmasks: p.netmasks });
    ok()
}

async fn iscsi_delete_initiator_group(c: Call) -> RpcResult {
    let p: TagParam = c.params()?;
    let mut st = c.app.iscsi.state.lock().unwrap();
    st.initiator_groups.remove(&p.tag).ok_or_else(|| RpcError::errno(libc::ENOENT, format!("initiator group {} not found", p.tag)))?;
    ok()
}

async fn iscsi_get_initiator_groups(c: Call) -> RpcResult {
    let _: Empty = c.params()?;
    let st = c.app.iscsi.state.lock().unwrap();
    Ok(json!(st.initiator_groups.values().map(ig_json).collect::<Vec<_>>()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateNode {
    name: String,
    alias_name: String,
    luns: Vec<LunSpec>,
    pg_ig_maps: Vec<PgIg>,
    queue_depth: u32,
    disable_chap: Option<bool>,
    require_chap: Option<bool>,
    mutual_chap: Option<bool>,
    chap_group: Option<u32>,
    header_digest: Option<bool>,
    data_digest: Option<bool>,
}

/// SPDK prefixes a short name with node_base (`disk1` → `iqn.2016-06.io.spdk:disk1`).
fn full_name(app: &App, name: &str) -> String {
    let n = name.to_ascii_lowercase();
    if n.starts_with("iqn.") || n.starts_with("eui.") || n.starts_with("naa.") {
        name.to_string()
    } else {
        format!("{}:{name}", app.iscsi.opts().node_base)
    }
}

fn open_luns(app: &App, node: &str, specs: &[LunSpec]) -> Result<LunMap, RpcError> {
    let mut map = LunMap::default();
    for (i, s) in specs.iter().enumerate() {
        match app.volumes.open(&s.bdev_name, &format!("iscsi:{node}:{}", s.lun_id)) {
            Ok(v) => map.luns.push(Arc::new(Lun::new(s.lun_id, v))),
            Err(e) => {
                close_luns(app, node, &specs[..i]);
                return Err(e.into());
            }
        }
    }
    Ok(map)
}

fn close_luns(app: &App, node: &str, specs: &[LunSpec]) {
    for s in specs {
        app.volumes.close(&s.bdev_name, &format!("iscsi:{node}:{}", s.lun_id));
    }
}

async fn iscsi_create_target_node(c: Call) -> RpcResult {
    let p: CreateNode = c.params()?;
    let chap = chap_policy(p.disable_chap, p.require_chap, p.mutual_chap, p.chap_group)?;
    if p.name.is_empty() || p.name.len() > 223 || p.name.chars().any(|ch| ch.is_whitespace()) {
        return Err(RpcError::invalid_params(format!("name: {:?} is not a valid iSCSI name", p.name)));
    }
    if p.luns.is_empty() {
        return Err(RpcError::invalid_params("luns: at least one LUN is needed"));
    }
    if p.queue_depth == 0 {
        return Err(RpcError::invalid_params("queue_depth: must be > 0"));
    }
    let mut ids: Vec<u64> = p.luns.iter().map(|l| l.lun_id).collect();
    ids.sort_unstable();
    if ids.windows(2).any(|w| w[0] == w[1]) || ids.iter().any(|&l| l >= 16384) {
        return Err(RpcError::invalid_params("luns: lun_id values must be unique and below 16384"));
    }
    let _g = c.app.mgmt.lock().await;
    let name = full_name(&c.app, &p.name);
    {
        let st = c.app.iscsi.state.lock().unwrap();
        if st.nodes.contains_key(&name) {
            return Err(RpcError::errno(libc::EEXIST, format!("target node {name} exists")));
        }
        for m in &p.pg_ig_maps {
            if !st.portal_groups.contains_key(&m.pg_tag) {
                return Err(RpcError::errno(libc::ENOENT, format!("portal group {} not found", m.pg_tag)));
            }
            if !st.initiator_groups.contains_key(&m.ig_tag) {
                return Err(RpcError::errno(libc::ENOENT, format!("initiator group {} not found", m.ig_tag)));
            }
        }
        if chap.group != 0 && !st.auth_groups.contains_key(&chap.group) {
            return Err(RpcError::errno(libc::ENOENT, format!("auth group {} not found", chap.group)));
        }
    }
    let luns = open_luns(&c.app, &name, &p.luns)?;
    let max_qd = c.app.iscsi.opts().max_queue_depth;
    let mut st = c.app.iscsi.state.lock().unwrap();
    let index = st.next_node_index;
    st.next_node_index = st.next_node_index.wrapping_add(1);
    st.nodes.insert(
        name.clone(),
        Arc::new(Node {
            name,
            alias: p.alias_name,
            lun_specs: p.luns,
            luns: Arc::new(luns),
            pg_ig_maps: p.pg_ig_maps,
            queue_depth: p.queue_depth.min(max_qd.max(1)),
            chap,
            header_digest: p.header_digest.unwrap_or(false),
            data_digest: p.data_digest.unwrap_or(false),
            index,
        }),
    );
    ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddLun {
    name: String,
    bdev_name: String,
    lun_id: Option<i64>,
}

async fn iscsi_target_node_add_lun(c: Call) -> RpcResult {
    let p: AddLun = c.params()?;
    let _g = c.app.mgmt.lock().await;
    let name = full_name(&c.app, &p.name);
    let node = c.app.iscsi.node_for(&name).ok_or_else(|| RpcError::errno(libc::ENOENT, format!("target node {name} not found")))?;
    let lun_id = match p.lun_id {
        None | Some(-1) => (0..16384u64).find(|i| !node.lun_specs.iter().any(|l| l.lun_id == *i)).unwrap_or(16384),
        Some(i) if (0..16384).contains(&i) => i as u64,
        Some(i) => return Err(RpcError::invalid_params(format!("lun_id: {i} out of range"))),
    };
    if node.lun_specs.iter().any(|l| l.lun_id == lun_id) {
        return Err(RpcError::errno(libc::EEXIST, format!("LUN {lun_id} exists")));
    }
    let spec = LunSpec { bdev_name: p.bdev_name, lun_id };
    let added = open_luns(&c.app, &node.name, std::slice::from_ref(&spec))?;
    let mut luns: Vec<Arc<Lun>> = node.luns.luns.clone();
    luns.extend(added.luns);
    let mut specs = node.lun_specs.clone();
    specs.push(spec);
    // Sessions that are already logged in keep the map they started with; new logins see the LUN.
    let new = Node {
        name: node.name.clone(),
        alias: node.alias.clone(),
        lun_specs: specs,
        luns: Arc::new(LunMap { luns }),
        pg_ig_maps: node.pg_ig_maps.clone(),
        queue_depth: node.queue_depth,
        chap: node.chap,
        header_digest: node.header_digest,
        data_digest: node.data_digest,
        index: node.index,
    };
    c.app.iscsi.state.lock().unwrap().nodes.insert(node.name.clone(), Arc::new(new));
    ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameParam {
    name: String,
}

async fn iscsi_delete_target_node(c: Call) -> RpcResult {
    let p: NameParam = c.params()?;
    let _g = c.app.mgmt.lock().await;
    let name = full_name(&c.app, &p.name);
    let node = c.app.iscsi.state.lock().unwrap().nodes.remove(&name);
    let node = node.ok_or_else(|| RpcError::errno(libc::ENOENT, format!("target node {name} not found")))?;
    // Drop the node's sessions, then its claims on the bdevs.
    let conns: Vec<_> = c.app.iscsi.conns.lock().unwrap().values().filter(|ci| ci.target_node_name == node.name).map(|ci| ci.handler).collect();
    stop_listeners(&c.app, conns);
    close_luns(&c.app, &node.name, &node.lun_specs);
    ok()
}

async fn iscsi_get_target_nodes(c: Call) -> RpcResult {
    let _: Empty = c.params()?;
    let st = c.app.iscsi.state.lock().unwrap();
    Ok(json!(st.nodes.values().map(|n| node_json(n)).collect::<Vec<_>>()))
}

async fn iscsi_get_connections(c: Call) -> RpcResult {
    let _: Empty = c.params()?;
    let m = c.app.iscsi.conns.lock().unwrap();
    let mut v: Vec<_> = m.values().collect();
    v.sort_by_key(|ci| ci.id);
    Ok(json!(v
        .iter()
        .map(|ci| json!({
            "id": ci.id,
            "cid": ci.cid,
            "tsih": ci.tsih,
            "lcore_id": ci.lcore,
            "initiator_addr": ci.initiator_addr,
            "target_addr": ci.target_addr,
            "target_node_name": ci.target_node_name,
            "initiator_name": ci.initiator_name,
        }))
        .collect::<Vec<_>>()))
}

/// Decode the params of one of this module's methods alone, without running it (what the
/// fuzz targets and the corpus replay test drive); None: not a method of this module.
pub fn decode_params(method: &str, p: &Option<serde_json::Value>) -> Option<Result<(), RpcError>> {
    use super::registry::decode_params_as as decode;
    Some(match method {
        "iscsi_set_options" => decode::<SetOptions>(p).map(drop),
        "iscsi_get_options" => decode::<Empty>(p).map(drop),
        "iscsi_set_discovery_auth" => decode::<DiscoveryAuth>(p).map(drop),
        "iscsi_create_auth_group" => decode::<AuthGroupParams>(p).map(drop),
        "iscsi_delete_auth_group" => decode::<TagParam>(p).map(drop),
        "iscsi_get_auth_groups" => decode::<Empty>(p).map(drop),
        "iscsi_create_portal_group" => decode::<CreatePg>(p).map(drop),
        "iscsi_start_portal_group" => decode::<TagParam>(p).map(drop),
        "iscsi_delete_portal_group" => decode::<TagParam>(p).map(drop),
        "iscsi_get_portal_groups" => decode::<Empty>(p).map(drop),
        "iscsi_create_initiator_group" => decode::<CreateIg>(p).map(drop),
        "iscsi_delete_initiator_group" => decode::<TagParam>(p).map(drop),
        "iscsi_get_initiator_groups" => decode::<Empty>(p).map(drop),
        "iscsi_create_target_node" => decode::<CreateNode>(p).map(drop),
        "iscsi_target_node_add_lun" => decode::<AddLun>(p).map(drop),
        "iscsi_delete_target_node" => decode::<NameParam>(p).map(drop),
        "iscsi_get_target_nodes" => decode::<Empty>(p).map(drop),
        "iscsi_get_connections" => decode::<Empty>(p).map(drop),
        _ => return None,
    })
}
