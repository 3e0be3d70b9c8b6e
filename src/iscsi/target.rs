//! The iSCSI target's configuration and shared state: options, portal groups, initiator groups,
//! auth groups, target nodes, live sessions. Management code changes it under short locks; a
//! connection reads it only while logging in (never on the I/O path).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::session::Session;
use crate::reactor::budget::Budget;
use crate::reactor::HandlerRef;
use crate::scsi::LunMap;

/// iscsi_set_options / iscsi_get_options (SPDK names and defaults, except the burst sizes which
/// are larger here: fewer R2T round trips).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Options {
    pub node_base: String,
    pub auth_file: String,
    pub nop_timeout: u32,
    pub nop_in_interval: u32,
    pub disable_chap: bool,
    pub require_chap: bool,
    pub mutual_chap: bool,
    pub chap_group: u32,
    pub max_sessions: u32,
    pub max_connections_per_session: u32,
    pub max_queue_depth: u32,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
    pub first_burst_length: u32,
    pub immediate_data: bool,
    pub allow_duplicated_isid: bool,
    pub error_recovery_level: u32,
    pub max_large_datain_per_connection: u32,
    pub max_r2t_per_connection: u32,
    pub pdu_pool_size: u32,
    pub immediate_data_pool_size: u32,
    pub data_out_pool_size: u32,
    /// Palisade: discovery sessions are counted apart from `max_sessions`, so SendTargets
    /// clients cannot take the slots of normal sessions.
    #[serde(default = "defaults::max_discovery_sessions")]
    pub max_discovery_sessions: u32,
    /// Palisade: TCP connections open at once on all portals, logged in or not.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: u32,
    /// Palisade: of those, connections still in login (unauthenticated) at once.
    #[serde(default = "defaults::max_prelogin_connections")]
    pub max_prelogin_connections: u32,
    /// Palisade: seconds a connection may take from accept to the end of login.
    #[serde(default = "defaults::login_timeout")]
    pub login_timeout: u32,
    /// Palisade: MiB of command data (write data being gathered, read data not yet sent) all
    /// iSCSI connections may hold; `data_out_pool_size`, when set, gives it in SPDK's 64 KiB
    /// buffers instead.
    #[serde(default = "defaults::data_buffer_budget_mib")]
    pub data_buffer_budget_mib: u32,
    /// Palisade: MiB of that one connection may hold (a larger single command runs alone).
    #[serde(default = "defaults::data_buffer_per_connection_mib")]
    pub data_buffer_per_connection_mib: u32,
}

impl Options {
    /// The iSCSI data-buffer budget in bytes.
    pub fn data_budget_bytes(&self) -> usize {
        if self.data_out_pool_size > 0 {
            self.data_out_pool_size as usize * (64 << 10)
        } else {
            (self.data_buffer_budget_mib as usize) << 20
        }
    }
}

mod defaults {
    pub fn max_discovery_sessions() -> u32 {
        32
    }
    pub fn max_connections() -> u32 {
        4096
    }
    pub fn max_prelogin_connections() -> u32 {
        2048
    }
    pub fn login_timeout() -> u32 {
        30
    }
    pub fn data_buffer_budget_mib() -> u32 {
        512
    }
    pub fn data_buffer_per_connection_mib() -> u32 {
        64
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            node_base: "iqn.2016-06.io.spdk".into(),
            auth_file: String::new(),
            nop_timeout: 60,
            nop_in_interval: 30,
            disable_chap: false,
            require_chap: false,
            mutual_chap: false,
            chap_group: 0,
            max_sessions: 128,
            max_connections_per_session: 2,
            max_queue_depth: 64,
            default_time2wait: 2,
            default_time2retain: 20,
            first_burst_length: 65536,
            immediate_data: true,
            allow_duplicated_isid: false,
            error_recovery_level: 0,
            max_large_datain_per_connection: 64,
            max_r2t_per_connection: 4,
            pdu_pool_size: 0,
            immediate_data_pool_size: 0,
            data_out_pool_size: 0,
            max_discovery_sessions: defaults::max_discovery_sessions(),
            max_connections: defaults::max_connections(),
            max_prelogin_connections: defaults::max_prelogin_connections(),
            login_timeout: defaults::login_timeout(),
            data_buffer_budget_mib: defaults::data_buffer_budget_mib(),
            data_buffer_per_connection_mib: defaults::data_buffer_per_connection_mib(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Portal {
    pub host: String,
    pub port: String,
}

pub struct PortalGroup {
    pub tag: u32,
    pub portals: Vec<Portal>,
    pub private: bool,
    /// Listener handlers, to close them when the group is deleted.
    pub listeners: Vec<HandlerRef>,
}

#[derive(Clone, Debug, Default)]
pub struct InitiatorGroup {
    pub tag: u32,
    pub initiators: Vec<String>,
    pub netmasks: Vec<String>,
}

impl InitiatorGroup {
    /// SPDK rules: a `!name` / `!mask` entry denies; `ANY` matches everything.
    pub fn allows(&self, name: &str, ip: IpAddr) -> bool {
        let name_hit = |p: &str| p.eq_ignore_ascii_case("ANY") || p.eq_ignore_ascii_case(name);
        if self.initiators.iter().any(|p| p.strip_prefix('!').is_some_and(name_hit)) {
            return false;
        }
        if !self.initiators.iter().any(|p| !p.starts_with('!') && name_hit(p)) {
            return false;
        }
        if self.netmasks.iter().any(|m| m.strip_prefix('!').is_some_and(|m| netmask_match(m, ip))) {
            return false;
        }
        self.netmasks.iter().any(|m| !m.starts_with('!') && netmask_match(m, ip))
    }
}

/// `ANY`, `a.b.c.d`, `a.b.c.d/len`, `[v6]/len`.
pub fn netmask_match(mask: &str, ip: IpAddr) -> bool {
    if mask.eq_ignore_ascii_case("ANY") {
        return true;
    }
    let (addr, len) = match mask.split_once('/') {
        Some((a, l)) => (a, l.parse::<u32>().ok()),
        None => (mask, None),
    };
    let addr = addr.trim_start_matches('[').trim_end_matches(']');
    let Ok(net) = addr.parse::<IpAddr>() else { return false };
    let ip = match (net, ip) {
        (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        _ => ip,
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let len = len.unwrap_or(32).min(32);
            let m = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(n) & m == u32::from(i) & m
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let len = len.unwrap_or(128).min(128);
            let m = if len == 0 { 0 } else { u128::MAX << (128 - len) };
            u128::from(n) & m == u128::from(i) & m
        }
        _ => false,
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Secret {
    pub user: String,
    pub secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub muser: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msecret: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct AuthGroup {
    pub tag: u32,
    pub secrets: Vec<Secret>,
}

/// CHAP policy of a node or of discovery sessions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChapPolicy {
    pub disable: bool,
    pub require: bool,
    pub mutual: bool,
    pub group: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LunSpec {
    pub bdev_name: String,
    pub lun_id: u64,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PgIg {
    pub pg_tag: u32,
    pub ig_tag: u32,
}

pub struct Node {
    pub name: String,
    pub alias: String,
    pub lun_specs: Vec<LunSpec>,
    pub luns: Arc<LunMap>,
    pub pg_ig_maps: Vec<PgIg>,
    pub queue_depth: u32,
    pub chap: ChapPolicy,
    pub header_digest: bool,
    pub data_digest: bool,
    /// Index of the node (relative target port ids derive from it).
    pub index: u16,
}

/// A logged-in connection, for iscsi_get_connections and session reinstatement.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub id: u64,
    pub cid: u16,
    pub tsih: u16,
    pub lcore: u32,
    pub initiator_name: String,
    pub initiator_addr: String,
    pub target_addr: String,
    pub target_node_name: String,
    pub isid: [u8; 6],
    pub handler: HandlerRef,
}

#[derive(Default)]
pub struct State {
    pub opts: Options,
    pub portal_groups: BTreeMap<u32, PortalGroup>,
    pub initiator_groups: BTreeMap<u32, InitiatorGroup>,
    pub auth_groups: BTreeMap<u32, AuthGroup>,
    pub nodes: BTreeMap<String, Arc<Node>>,
    pub next_node_index: u16,
}

/// The whole iSCSI target. One per process (a field of the RPC `App`).
pub struct Target {
    pub state: Mutex<State>,
    pub conns: Mutex<HashMap<u64, ConnInfo>>,
    /// Live sessions by TSIH (MC/S: connections that join one find it here).
    pub sessions: Mutex<HashMap<u16, Arc<Session>>>,
    next_conn: AtomicU64,
    next_tsih: AtomicU16,
    /// Open connections (all, and those still logging in): the budgets of `max_connections`.
    open: AtomicUsize,
    prelogin: AtomicUsize,
    /// Command data all connections hold (see `Options::data_budget_bytes`).
    pub data_budget: Arc<Budget>,
    /// This node's target port groups: the portal group tags are its relative target ports.
    pub port_groups: Arc<crate::cluster::PortGroups>,
}

/// A connection's place in the target's connection budget, given back when it drops.
pub struct ConnSlot {
    target: Arc<Target>,
    in_login: bool,
}

impl ConnSlot {
    /// Login completed: the connection no longer counts against the pre-login budget.
    pub fn logged_in(&mut self) {
        if std::mem::replace(&mut self.in_login, false) {
            self.target.prelogin.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.logged_in();
        self.target.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a new connection was turned away.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("{0} connections open (iscsi_set_options max_connections {0})")]
    Total(usize),
    #[error("{0} connections still logging in (iscsi_set_options max_prelogin_connections {0})")]
    PreLogin(usize),
}

impl Default for Target {
    fn default() -> Self {
        Target {
            state: Mutex::new(State { next_node_index: 1, ..Default::default() }),
            conns: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            next_tsih: AtomicU16::new(1),
            open: AtomicUsize::new(0),
            prelogin: AtomicUsize::new(0),
            data_budget: Budget::new(Options::default().data_budget_bytes()),
            port_groups: crate::cluster::PortGroups::new(),
        }
    }
}

impl Target {
    pub fn new() -> Arc<Target> {
        Arc::new(Target::default())
    }
    /// A target whose ports belong to `groups` (the application's port groups).
    pub fn with_port_groups(groups: Arc<crate::cluster::PortGroups>) -> Arc<Target> {
        Arc::new(Target { port_groups: groups, ..Target::default() })
    }
    /// Publish the portal group tags (relative target port ids) as this node's iSCSI ports;
    /// call after portal groups change.
    pub fn portal_groups_changed(&self) {
        let tags = self.state.lock().unwrap().portal_groups.keys().map(|&t| t as u16).collect();
        self.port_groups.set_local_iscsi_ports(tags);
    }
    pub fn opts(&self) -> Options {
        self.state.lock().unwrap().opts.clone()
    }
    /// Take a place for a just-accepted connection, or say which budget is spent.
    pub fn admit(self: &Arc<Self>) -> Result<ConnSlot, Refused> {
        let (max, max_pre) = {
            let o = &self.state.lock().unwrap().opts;
            (o.max_connections as usize, o.max_prelogin_connections as usize)
        };
        if self.open.fetch_add(1, Ordering::Relaxed) >= max {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return Err(Refused::Total(max));
        }
        if self.prelogin.fetch_add(1, Ordering::Relaxed) >= max_pre {
            self.prelogin.fetch_sub(1, Ordering::Relaxed);
            self.open.fetch_sub(1, Ordering::Relaxed);
            return Err(Refused::PreLogin(max_pre));
        }
        Ok(ConnSlot { target: self.clone(), in_login: true })
    }

    /// Connections open now: (all, still logging in).
    pub fn open_connections(&self) -> (usize, usize) {
        (self.open.load(Ordering::Relaxed), self.prelogin.load(Ordering::Relaxed))
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }
    /// A non-zero TSIH no live session uses, for a new session.
    pub fn next_tsih(&self) -> u16 {
        let live = self.sessions.lock().unwrap();
        loop {
            let t = self.next_tsih.fetch_add(1, Ordering::Relaxed);
            if t != 0 && !live.contains_key(&t) {
                return t;
            }
        }
    }

    pub fn session(&self, tsih: u16) -> Option<Arc<Session>> {
        self.sessions.lock().unwrap().get(&tsih).cloned()
    }
    pub fn add_session(&self, s: Arc<Session>) {
        self.sessions.lock().unwrap().insert(s.tsih, s);
    }
    /// Forget a session whose last connection left (only if it is still this session object).
    pub fn remove_session(&self, s: &Arc<Session>) {
        let mut m = self.sessions.lock().unwrap();
        if m.get(&s.tsih).is_some_and(|x| Arc::ptr_eq(x, s)) {
            m.remove(&s.tsih);
        }
    }

    /// The node and whether `initiator` at `ip` may use it through portal group `pg`.
    pub fn node_for(&self, name: &str) -> Option<Arc<Node>> {
        let st = self.state.lock().unwrap();
        st.nodes.get(name).cloned().or_else(|| {
            // Names are case-insensitive (RFC 3722 normalises to lower case).
            st.nodes.values().find(|n| n.name.eq_ignore_ascii_case(name)).cloned()
        })
    }

    pub fn allowed(&self, node: &Node, pg: u32, initiator: &str, ip: IpAddr) -> bool {
        let st = self.state.lock().unwrap();
        node.pg_ig_maps.iter().any(|m| {
            m.pg_tag == pg && st.initiator_groups.get(&m.ig_tag).is_some_and(|ig| ig.allows(initiator, ip))
        })
    }

    /// SendTargets answer: (TargetName, [TargetAddress]) for every node `initiator` may use.
    /// `only` restricts to one node; wildcard portal hosts become `local`.
    pub fn send_targets(&self, initiator: &str, ip: IpAddr, local: &str, only: Option<&str>) -> Vec<(String, Vec<String>)> {
        let st = self.state.lock().unwrap();
        let mut out = Vec::new();
        for n in st.nodes.values() {
            if only.is_some_and(|o| !o.eq_ignore_ascii_case(&n.name)) {
                continue;
            }
            let mut addrs = Vec::new();
            for m in &n.pg_ig_maps {
                if !st.initiator_groups.get(&m.ig_tag).is_some_and(|ig| ig.allows(initiator, ip)) {
                    continue;
                }
                let Some(pg) = st.portal_groups.get(&m.pg_tag) else { continue };
                if pg.private {
                    continue;
                }
                for p in &pg.portals {
                    let host = match p.host.as_str() {
                        "0.0.0.0" | "[::]" | "::" => local.to_string(),
                        h if h.contains(':') && !h.starts_with('[') => format!("[{h}]"),
                        h => h.to_string(),
                    };
                    let a = format!("{host}:{},{}", p.port, pg.tag);
                    if !addrs.contains(&a) {
                        addrs.push(a);
                    }
                }
            }
            if !addrs.is_empty() {
                out.push((n.name.clone(), addrs));
            }
        }
        out
    }

    /// Secrets of auth group `tag` for CHAP name `user`.
    pub fn secret(&self, group: u32, user: &str) -> Option<Secret> {
        let st = self.state.lock().unwrap();
        let g = if group != 0 { st.auth_groups.get(&group) } else { None };
        g.and_then(|g| g.secrets.iter().find(|s| s.user == user).cloned())
    }

    /// CHAP policy for discovery sessions (iscsi_set_options / iscsi_set_discovery_auth).
    pub fn discovery_chap(&self) -> ChapPolicy {
        let o = &self.state.lock().unwrap().opts;
        ChapPolicy { disable: o.disable_chap, require: o.require_chap, mutual: o.mutual_chap, group: o.chap_group }
    }

    /// Register a logged-in connection; returns the handlers of every connection of a session it
    /// reinstates (same initiator name, ISID and target, another TSIH), which the caller closes.
    pub fn register_conn(&self, info: ConnInfo) -> Vec<HandlerRef> {
        let mut m = self.conns.lock().unwrap();
        let old: Vec<u64> = m
            .values()
            .filter(|c| {
                c.id != info.id
                    && c.tsih != info.tsih
                    && c.isid == info.isid
                    && c.initiator_name.eq_ignore_ascii_case(&info.initiator_name)
                    && c.target_node_name == info.target_node_name
            })
            .map(|c| c.id)
            .collect();
        let mut out = Vec::new();
        for id in old {
            if let Some(c) = m.remove(&id) {
                out.push(c.handler);
            }
        }
        m.insert(info.id, info);
        out
    }
    pub fn unregister_conn(&self, id: u64) {
        self.conns.lock().unwrap().remove(&id);
    }
    /// Logged-in sessions: (normal, discovery); the connections of one session count once.
    pub fn session_count(&self) -> (usize, usize) {
        let m = self.sessions.lock().unwrap();
        let discovery = m.values().filter(|s| s.target_name.is_empty()).count();
        (m.len() - discovery, discovery)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initiator_groups() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "10.1.2.3".parse().unwrap();
        let g = InitiatorGroup { tag: 1, initiators: vec!["ANY".into()], netmasks: vec!["127.0.0.1/32".into()] };
        assert!(g.allows("iqn.x", lo));
        assert!(!g.allows("iqn.x", other));
        let g = InitiatorGroup { tag: 1, initiators: vec!["iqn.a".into()], netmasks: vec!["ANY".into()] };
        assert!(g.allows("IQN.A", other));
        assert!(!g.allows("iqn.b", other));
        let g = InitiatorGroup { tag: 1, initiators: vec!["ANY".into(), "!iqn.bad".into()], netmasks: vec!["10.0.0.0/8".into()] };
        assert!(g.allows("iqn.ok", other));
        assert!(!g.allows("iqn.bad", other));
        assert!(netmask_match("[::1]/128", "::1".parse().unwrap()));
        assert!(netmask_match("127.0.0.0/8", "::ffff:127.0.0.5".parse().unwrap()));
        assert!(!netmask_match("garbage", lo));
    }
}
