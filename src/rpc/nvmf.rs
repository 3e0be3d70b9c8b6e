//! nvmf_* methods (SPDK names, parameters and result shapes) and the nvmf subsystem's saved config.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};

use super::registry::{Call, Registry, Subsystem, ANY, RUNTIME};
use super::{ok, App, RpcError, RpcResult};
use crate::config::Entry;
use crate::nvme::ana::AnaState;
use crate::nvme::spec::DISCOVERY_NQN;
use crate::nvmf::{self, ListenAddr, NvmfError, SubType, SubsystemParams, TransportOpts};
use crate::volume::identity::hex;

pub fn register(r: &mut Registry) {
    r.add("nvmf_create_transport", RUNTIME, nvmf_create_transport);
    r.add("nvmf_get_transports", RUNTIME, nvmf_get_transports);
    r.add("nvmf_create_subsystem", RUNTIME, nvmf_create_subsystem);
    r.add("nvmf_delete_subsystem", RUNTIME, nvmf_delete_subsystem);
    r.add("nvmf_subsystem_add_listener", RUNTIME, |c| listener(c, true));
    r.add("nvmf_subsystem_remove_listener", RUNTIME, |c| listener(c, false));
    r.add("nvmf_subsystem_add_ns", RUNTIME, nvmf_subsystem_add_ns);
    r.add("nvmf_subsystem_remove_ns", RUNTIME, nvmf_subsystem_remove_ns);
    r.add("nvmf_subsystem_add_host", RUNTIME, nvmf_subsystem_add_host);
    r.add("nvmf_subsystem_remove_host", RUNTIME, nvmf_subsystem_remove_host);
    r.add("nvmf_subsystem_allow_any_host", RUNTIME, nvmf_subsystem_allow_any_host);
    r.add("nvmf_subsystem_set_keys", RUNTIME, nvmf_subsystem_set_keys);
    r.add("nvmf_set_config", ANY, nvmf_set_config);
    r.add("nvmf_get_subsystems", RUNTIME, nvmf_get_subsystems);
    r.add("nvmf_subsystem_get_controllers", RUNTIME, nvmf_subsystem_get_controllers);
    r.add("nvmf_subsystem_get_qpairs", RUNTIME, nvmf_subsystem_get_qpairs);
    r.add("nvmf_subsystem_get_listeners", RUNTIME, nvmf_subsystem_get_listeners);
    r.add("nvmf_subsystem_listener_set_ana_state", RUNTIME, nvmf_subsystem_listener_set_ana_state);
    r.add_subsystem(Subsystem { name: "nvmf", depends_on: &["bdev"], config: nvmf_config });
}

impl From<NvmfError> for RpcError {
    fn from(e: NvmfError) -> Self {
        RpcError::errno(e.errno(), e)
    }
}

fn check_tgt(t: &Option<String>) -> Result<(), RpcError> {
    match t.as_deref() {
        None | Some("nvmf_tgt") => Ok(()),
        Some(o) => Err(RpcError::errno(libc::ENODEV, format!("target {o:?} not found (only the default target exists)"))),
    }
}

fn sub_of(app: &App, nqn: &str) -> Result<Arc<nvmf::Subsystem>, RpcError> {
    app.nvmf.subsystem(nqn).ok_or_else(|| RpcError::errno(libc::ENODEV, format!("subsystem {nqn} not found")))
}

/// An NQN as the spec allows (NVMe Base 4.5): at most 223 bytes, "nqn." prefix.
fn check_nqn(nqn: &str) -> Result<(), RpcError> {
    if nqn.len() > 223 || !nqn.starts_with("nqn.") || nqn.chars().any(|c| c.is_control()) {
        return Err(RpcError::invalid_params(format!("nqn: {nqn:?} is not a valid NQN")));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTransport {
    trtype: String,
    tgt_name: Option<String>,
    max_queue_depth: Option<u32>,
    max_qpairs_per_ctrlr: Option<u32>,
    max_io_qpairs_per_ctrlr: Option<u32>,
    in_capsule_data_size: Option<u32>,
    max_io_size: Option<u32>,
    io_unit_size: Option<u32>,
    max_aq_depth: Option<u32>,
    num_shared_buffers: Option<u32>,
    buf_cache_size: Option<u32>,
    iobuf_small_cache_size: Option<u32>,
    iobuf_large_cache_size: Option<u32>,
    dif_insert_or_strip: Option<bool>,
    zcopy: Option<bool>,
    c2h_success: Option<bool>,
    sock_priority: Option<u32>,
    abort_timeout_sec: Option<u32>,
    acceptor_backlog: Option<i32>,
    ack_timeout: Option<u32>,
    data_wr_pool_size: Option<u32>,
    // Palisade's own limits (README, "Limits").
    connect_timeout_ms: Option<u32>,
    max_connections: Option<u32>,
    data_buffer_per_connection_mib: Option<u32>,
    // RDMA / VFIO-USER options rpc.py may send: accepted, meaningless for TCP.
    num_cqe: Option<i32>,
    max_srq_depth: Option<i32>,
    no_srq: Option<bool>,
    no_wr_batching: Option<bool>,
    control_msg_num: Option<u32>,
    disable_mappable_bar0: Option<bool>,
    disable_adaptive_irq: Option<bool>,
    disable_shadow_doorbells: Option<bool>,
    acceptor_poll_rate: Option<u32>,
    disable_command_passthru: Option<bool>,
    kas: Option<u32>,
    min_kato: Option<u32>,
    masked_oncs: Option<Vec<String>>,
    masked_fuses: Option<Vec<String>>,
}

async fn nvmf_create_transport(c: Call) -> RpcResult {
    let p: CreateTransport = c.params()?;
    check_tgt(&p.tgt_name)?;
    let _ = (p.iobuf_small_cache_size, p.iobuf_large_cache_size, p.acceptor_backlog, p.num_cqe, p.max_srq_depth, p.no_srq, p.no_wr_batching);
    let _ = (p.control_msg_num, p.disable_mappable_bar0, p.disable_adaptive_irq, p.disable_shadow_doorbells, p.acceptor_poll_rate);
    let _ = (p.disable_command_passthru, p.kas, p.min_kato, &p.masked_oncs, &p.masked_fuses);
    if !p.trtype.eq_ignore_ascii_case("tcp") {
        return Err(RpcError::errno(libc::EINVAL, format!("transport type {} is not supported (only TCP)", p.trtype)));
    }
    let d = TransportOpts::default();
    let opts = TransportOpts {
        trtype: "TCP".into(),
        max_queue_depth: p.max_queue_depth.unwrap_or(d.max_queue_depth),
        max_io_qpairs_per_ctrlr: p.max_io_qpairs_per_ctrlr.or(p.max_qpairs_per_ctrlr.map(|n| n.saturating_sub(1))).unwrap_or(d.max_io_qpairs_per_ctrlr),
        in_capsule_data_size: p.in_capsule_data_size.unwrap_or(d.in_capsule_data_size),
        max_io_size: p.max_io_size.unwrap_or(d.max_io_size),
        io_unit_size: p.io_unit_size.unwrap_or(d.io_unit_size),
        max_aq_depth: p.max_aq_depth.unwrap_or(d.max_aq_depth),
        num_shared_buffers: p.num_shared_buffers.unwrap_or(d.num_shared_buffers),
        buf_cache_size: p.buf_cache_size.unwrap_or(d.buf_cache_size),
        dif_insert_or_strip: p.dif_insert_or_strip.unwrap_or(false),
        zcopy: p.zcopy.unwrap_or(false),
        c2h_success: p.c2h_success.unwrap_or(true),
        sock_priority: p.sock_priority.unwrap_or(0),
        abort_timeout_sec: p.abort_timeout_sec.unwrap_or(d.abort_timeout_sec),
        ack_timeout: p.ack_timeout.unwrap_or(0),
        data_wr_pool_size: p.data_wr_pool_size.unwrap_or(0),
        connect_timeout_ms: p.connect_timeout_ms.unwrap_or(d.connect_timeout_ms),
        max_connections: p.max_connections.unwrap_or(d.max_connections),
        data_buffer_per_connection_mib: p.data_buffer_per_connection_mib.unwrap_or(d.data_buffer_per_connection_mib),
    };
    let _g = c.app.mgmt.lock().await;
    c.app.nvmf.create_transport(opts).map_err(|e| match e {
        NvmfError::Invalid(m) => RpcError::invalid_params(m),
        e => e.into(),
    })?;
    ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetTransports {
    trtype: Option<String>,
    tgt_name: Option<String>,
}

async fn nvmf_get_transports(c: Call) -> RpcResult {
    let p: GetTransports = c.params()?;
    check_tgt(&p.tgt_name)?;
    let t = c.app.nvmf.transport();
    if let Some(tt) = &p.trtype {
        if !tt.eq_ignore_ascii_case("tcp") || t.is_none() {
            return Err(RpcError::errno(libc::EINVAL, format!("transport {tt} not found")));
        }
    }
    Ok(json!(t.map(|o| vec![serde_json::to_value(&*o).unwrap()]).unwrap_or_default()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateSubsystem {
    nqn: String,
    tgt_name: Option<String>,
    serial_number: Option<String>,
    model_number: Option<String>,
    allow_any_host: Option<bool>,
    max_namespaces: Option<u32>,
    ana_reporting: Option<bool>,
    min_cntlid: Option<u16>,
    max_cntlid: Option<u16>,
    dmrsl: Option<u32>,
    wzsl: Option<u32>,
    passthrough: Option<bool>,
    enable_nssr: Option<bool>,
    admin_label: Option<String>,
}

async fn nvmf_create_subsystem(c: Call) -> RpcResult {
    let p: CreateSubsystem = c.params()?;
    check_tgt(&p.tgt_name)?;
    check_nqn(&p.nqn)?;
    let _ = (p.dmrsl, p.wzsl, &p.admin_label);
    if p.passthrough == Some(true) {
        return Err(RpcError::invalid_params("passthrough: NVMe passthrough subsystems are not supported"));
    }
    if p.enable_nssr == Some(true) {
        return Err(RpcError::invalid_params("enable_nssr: NVM subsystem reset is not supported"));
    }
    let sn = p.serial_number.unwrap_or_else(|| "00000000000000000000".into());
    if sn.len() > 20 || !sn.is_ascii() {
        return Err(RpcError::invalid_params(format!("serial_number: {sn:?} must be at most 20 ASCII characters")));
    }
    let mn = p.model_number.unwrap_or_else(|| "Palisade NVMe Controller".into());
    if mn.len() > 40 || !mn.is_ascii() {
        return Err(RpcError::invalid_params(format!("model_number: {mn:?} must be at most 40 ASCII characters")));
    }
    let (lo, hi) = (p.min_cntlid.unwrap_or(1), p.max_cntlid.unwrap_or(0xffef));
    if lo == 0 || hi > 0xffef || lo > hi {
        return Err(RpcError::invalid_params(format!("min_cntlid {lo} / max_cntlid {hi}: need 1 <= min <= max <= 65519")));
    }
    let params = SubsystemParams {
        serial_number: sn,
        model_number: mn,
        max_namespaces: p.max_namespaces.unwrap_or(32),
        min_cntlid: lo,
        max_cntlid: hi,
        ana_reporting: p.ana_reporting.unwrap_or(false),
    };
    let _g = c.app.mgmt.lock().await;
    c.app.nvmf.create_subsystem(nvmf::Subsystem::new(p.nqn, SubType::Nvme, params, p.allow_any_host.unwrap_or(false)))?;
    ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NqnOnly {
    nqn: String,
    tgt_name: Option<String>,
}

async fn nvmf_delete_subsystem(c: Call) -> RpcResult {
    let p: NqnOnly = c.params()?;
    check_tgt(&p.tgt_name)?;
    let _g = c.app.mgmt.lock().await;
    c.app.nvmf.delete_subsystem(&p.nqn)?;
    ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenAddress {
    trtype: String,
    adrfam: Option<String>,
    traddr: String,
    trsvcid: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenerParams {
    nqn: String,
    tgt_name: Option<String>,
    listen_address: ListenAddress,
    secure_channel: Option<bool>,
    ana_state: Option<String>,
    anagrpid: Option<u32>,
    sock_impl: Option<String>,
    numa_id: Option<i32>,
}

fn listen_addr(a: ListenAddress) -> Result<ListenAddr, RpcError> {
    let trsvcid = a.trsvcid.ok_or_else(|| RpcError::invalid_params("listen_address.trsvcid is required for TCP"))?;
    let adrfam = match a.adrfam.as_deref() {
        None => if a.traddr.contains(':') { "IPv6" } else { "IPv4" }.to_string(),
        Some(f) if f.eq_ignore_ascii_case("ipv4") => "IPv4".into(),
        Some(f) if f.eq_ignore_ascii_case("ipv6") => "IPv6".into(),
        Some(f) => return Err(RpcError::invalid_params(format!("listen_address.adrfam: {f:?} is not supported (IPv4, IPv6)"))),
    };
    if !a.trtype.eq_ignore_ascii_case("tcp") {
        return Err(RpcError::invalid_params(format!("listen_address.trtype: {} is not supported (TCP)", a.trtype)));
    }
    Ok(ListenAddr { trtype: "TCP".into(), adrfam, traddr: a.traddr, trsvcid })
}

/// An ANA state by SPDK's name.
fn ana_state(s: &str) -> Result<AnaState, RpcError> {
    AnaState::from_name(s).ok_or_else(|| RpcError::invalid_params(format!("ana_state: {s:?} is not one of optimized, non_optimized, inaccessible, persistent_loss, change")))
}

/// An ANA group id: 1..=max_namespaces (any positive id when the subsystem has no limit).
fn check_anagrpid(s: &nvmf::Subsystem, g: u32) -> Result<(), RpcError> {
    if g == 0 || (s.params.max_namespaces != 0 && g > s.params.max_namespaces) {
        return Err(RpcError::invalid_params(format!("anagrpid: {g} is out of range (1..{})", s.params.max_namespaces)));
    }
    Ok(())
}

async fn listener(c: Call, add: bool) -> RpcResult {
    let p: ListenerParams = c.params()?;
    check_tgt(&p.tgt_name)?;
    let _ = (&p.sock_impl, p.numa_id);
    let ana = p.ana_state.as_deref().map(ana_state).transpose()?;
    let nqn = if p.nqn == "discovery" { DISCOVERY_NQN.to_string() } else { p.nqn };
    let addr = listen_addr(p.listen_address)?;
    let _g = c.app.mgmt.lock().await;
    let s = sub_of(&c.app, &nqn)?;
    let t = c.app.nvmf.clone();
    if add {
        if let Some(g) = p.anagrpid {
            check_anagrpid(&s, g)?;
        }
        if p.secure_channel == Some(true) {
            t.add_secure_listener(&s, addr.clone())?;
        } else {
            t.add_listener(&s, addr.clone())?;
        }
        if let Some(st) = ana {
            // Set before any host can connect through the new listener: no notice to send.
            t.set_ana_state(&s, &addr, p.anagrpid, st)?;
        }
    } else {
        t.remove_listener(&s, &addr)?;
    }
    ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetAnaState {
    nqn: String,
    tgt_name: Option<String>,
    listen_address: ListenAddress,
    ana_state: String,
    anagrpid: Option<u32>,
}

/// nvmf_subsystem_listener_set_ana_state: the state of one ANA group (every group without
/// anagrpid) as the controllers connected through the listener see it; they get an ANA change
/// notice. The node's own inaccessible states (failed closed) still win.
async fn nvmf_subsystem_listener_set_ana_state(c: Call) -> RpcResult {
    let p: SetAnaState = c.params()?;
    check_tgt(&p.tgt_name)?;
    let st = ana_state(&p.ana_state)?;
    let addr = listen_addr(p.listen_address)?;
    let _g = c.app.mgmt.lock().await;
    let s = sub_of(&c.app, &p.nqn)?;
    if s.subtype == SubType::Discovery {
        return Err(RpcError::invalid_params("the discovery subsystem has no ANA groups"));
    }
    if let Some(g) = p.anagrpid {
        check_anagrpid(&s, g)?;
    }
    c.app.nvmf.set_ana_state(&s, &addr, p.anagrpid, st)?;
    ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NsParams {
    bdev_name: String,
    nsid: Option<u32>,
    nguid: Option<String>,
    eui64: Option<String>,
    uuid: Option<String>,
    ptpl_file: Option<String>,
    anagrpid: Option<u32>,
    no_auto_visible: Option<bool>,
    hide_metadata: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddNs {
    nqn: String,
    tgt_name: Option<String>,
    namespace: NsParams,
}

fn parse_hex<const N: usize>(field: &str, s: &str) -> Result<[u8; N], RpcError> {
    let h: String = s.chars().filter(|c| *c != '-').collect();
    let bad = || RpcError::invalid_params(format!("namespace.{field}: {s:?} is not {N} bytes of hex"));
    if h.len() != N * 2 {
        return Err(bad());
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&h[i * 2..i * 2 + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

async fn nvmf_subsystem_add_ns(c: Call) -> RpcResult {
    let p: AddNs = c.params()?;
    check_tgt(&p.tgt_name)?;
    let n = p.namespace;
    let _ = n.hide_metadata;
    if n.ptpl_file.as_deref().is_some_and(str::is_empty) {
        return Err(RpcError::invalid_params("namespace.ptpl_file: empty path"));
    }
    if n.no_auto_visible == Some(true) {
        return Err(RpcError::invalid_params("namespace.no_auto_visible: per-host namespace visibility is not supported"));
    }
    let nguid = n.nguid.as_deref().map(|s| parse_hex::<16>("nguid", s)).transpose()?;
    let eui64 = n.eui64.as_deref().map(|s| parse_hex::<8>("eui64", s)).transpose()?;
    let uuid = n
        .uuid
        .as_deref()
        .map(|u| uuid::Uuid::parse_str(u).map_err(|e| RpcError::invalid_params(format!("namespace.uuid: {u:?}: {e}"))))
        .transpose()?;
    let _g = c.app.mgmt.lock().await;
    let s = sub_of(&c.app, &p.nqn)?;
    if s.subtype == SubType::Discovery {
        return Err(RpcError::invalid_params("the discovery subsystem has no namespaces"));
    }
    if let Some(g) = n.anagrpid {
        check_anagrpid(&s, g)?;
    }
    let nsid = c.app.nvmf.add_ns_in_group(&s, &n.bdev_name, n.nsid, nguid, eui64, uuid, n.anagrpid)?;
    if let Some(path) = n.ptpl_file {
        // SPDK's persist-through-power-loss file: the volume's reservation state lives there
        // (loaded now if the volume holds none yet). A bad file undoes the add.
        let ns = s.namespaces().iter().find(|x| x.nsid == nsid).cloned();
        if let Some(ns) = ns {
            let store = crate::reservation::Store { path: path.clone().into(), volume_uuid: ns.volume.uuid().to_string() };
            if let Err(e) = ns.volume.reservations().set_store(store) {
                let _ = c.app.nvmf.remove_ns(&s, nsid);
                return Err(RpcError::invalid_params(format!("namespace.ptpl_file: {e}")));
            }
        }
    }
    Ok(json!(nsid))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveNs {
    nqn: String,
    nsid: u32,
    tgt_name: Option<String>,
}

async fn nvmf_subsystem_remove_ns(c: Call) -> RpcResult {
    let p: RemoveNs = c.params()?;
    check_tgt(&p.tgt_name)?;
    let _g = c.app.mgmt.lock().await;
    let s = sub_of(&c.app, &p.nqn)?;
    c.app.nvmf.remove_ns(&s, p.nsid)?;
    ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostParams {
    nqn: String,
    host: String,
    tgt_name: Option<String>,
    psk: Option<String>,
    dhchap_key: Option<String>,
    dhchap_ctrlr_key: Option<String>,
    timeout_ms: Option<u64>,
}

/// A key name must be in the keyring when a host is given it (SPDK checks the same); a controller
/// key without a host key means nothing (the host authenticates first).
fn check_keys(app: &App, psk: &Option<String>, key: &Option<String>, ctrlr_key: &Option<String>) -> Result<(), RpcError> {
    for k in [psk, key, ctrlr_key].into_iter().flatten() {
        if app.nvmf.keyring.get(k).is_none() {
            return Err(RpcError::errno(libc::ENOKEY, format!("key {k} is not in the keyring (keyring_file_add_key)")));
        }
    }
    if ctrlr_key.is_some() && key.is_none() {
        return Err(RpcError::invalid_params("dhchap_ctrlr_key needs dhchap_key"));
    }
    Ok(())
}

async fn nvmf_subsystem_add_host(c: Call) -> RpcResult {
    let p: HostParams = c.params()?;
    check_tgt(&p.tgt_name)?;
    check_nqn(&p.host)?;
    let _g = c.app.mgmt.lock().await;
    check_keys(&c.app, &p.psk, &p.dhchap_key, &p.dhchap_ctrlr_key)?;
    let s = sub_of(&c.app, &p.nqn)?;
    let mut h = s.hosts.lock().unwrap();
    if h.iter().any(|e| e.nqn == p.host) {
        return Err(RpcError::errno(libc::EINVAL, format!("host {} is already allowed", p.host)));
    }
    h.push(nvmf::HostEntry { nqn: p.host, psk: p.psk, dhchap_key: p.dhchap_key, dhchap_ctrlr_key: p.dhchap_ctrlr_key });
    drop(h);
    c.app.nvmf.genctr.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    ok()
}

async fn nvmf_subsystem_remove_host(c: Call) -> RpcResult {
    let p: HostParams = c.params()?;
    check_tgt(&p.tgt_name)?;
    let _ = p.timeout_ms;
    let _g = c.app.mgmt.lock().await;
    let s = sub_of(&c.app, &p.nqn)?;
    s.hosts.lock().unwrap().retain(|h| h.nqn != p.host);
    c.app.nvmf.forget_generated_psks(&p.host, &p.nqn);
    // SPDK disconnects the host's controllers when it loses access.
    if !s.allow_any_host.load(std::sync::atomic::Ordering::Acquire) {
        for ctrl in s.ctrlrs.lock().unwrap().iter().filter(|c| c.hostnqn == p.host) {
            ctrl.dead.store(true, std::sync::atomic::Ordering::Release);
        }
    }
    c.app.nvmf.genctr.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetKeys {
    nqn: String,
    host: String,
    tgt_name: Option<String>,
    dhchap_key: Option<String>,
    dhchap_ctrlr_key: Option<String>,
}

/// nvmf_subsystem_set_keys: replace a host's DH-HMAC-CHAP keys (absent: no key). Queues already
/// authenticated stay; the next authentication or re-authentication uses the new keys, as SPDK.
async fn nvmf_subsystem_set_keys(c: Call) -> RpcResult {
    let p: SetKeys = c.params()?;
    check_tgt(&p.tgt_name)?;
    let _g = c.app.mgmt.lock().await;
    check_keys(&c.app, &None, &p.dhchap_key, &p.dhchap_ctrlr_key)?;
    let s = sub_of(&c.app, &p.nqn)?;
    let mut hosts = s.hosts.lock().unwrap();
    let h = hosts
        .iter_mut()
        .find(|h| h.nqn == p.host)
        .ok_or_else(|| RpcError::errno(libc::ENOENT, format!("host {} is not allowed on {}", p.host, p.nqn)))?;
    h.dhchap_key = p.dhchap_key;
    h.dhchap_ctrlr_key = p.dhchap_ctrlr_key;
    drop(hosts);
    // A PSK generated with the old key must not outlive it.
    c.app.nvmf.forget_generated_psks(&p.host, &p.nqn);
    ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetConfig {
    dhchap_digests: Option<Vec<String>>,
    dhchap_dhgroups: Option<Vec<String>>,
    // The rest of SPDK's nvmf_set_config: accepted at the values that mean what Palisade does.
    admin_cmd_passthru: Option<Value>,
    poll_groups_mask: Option<String>,
    discovery_filter: Option<String>,
    discovery_filters: Option<Vec<String>>,
    dup_host_policy: Option<String>,
    acceptor_poll_rate: Option<u32>,
    conn_sched: Option<String>,
}

/// nvmf_set_config: DH-HMAC-CHAP's allowed digests and groups (SPDK's names); they apply to
/// the next authentication.
async fn nvmf_set_config(c: Call) -> RpcResult {
    let p: SetConfig = c.params()?;
    let _ = (&p.poll_groups_mask, p.acceptor_poll_rate, &p.conn_sched);
    if let Some(v) = &p.admin_cmd_passthru {
        if v.as_object().is_some_and(|o| o.values().any(|x| x != &json!(false))) {
            return Err(RpcError::invalid_params("admin_cmd_passthru: NVMe passthrough is not supported"));
        }
    }
    let filters: Vec<&str> = p.discovery_filter.iter().map(String::as_str).chain(p.discovery_filters.iter().flatten().map(String::as_str)).collect();
    if filters.iter().any(|f| *f != "match_any") {
        return Err(RpcError::invalid_params("discovery filters other than match_any are not supported"));
    }
    if p.dup_host_policy.as_deref().is_some_and(|d| d != "allow") {
        return Err(RpcError::invalid_params("dup_host_policy: only allow is supported"));
    }
    let pick = |what: &str, v: &Option<Vec<String>>, known: &[&str]| -> Result<Option<Vec<String>>, RpcError> {
        let Some(v) = v else { return Ok(None) };
        if v.is_empty() {
            return Err(RpcError::invalid_params(format!("dhchap_{what}: empty")));
        }
        for x in v {
            if !known.contains(&x.as_str()) {
                return Err(RpcError::invalid_params(format!("dhchap_{what}: unknown {x} (known: {})", known.join(", "))));
            }
        }
        // Kept in the spec's order, whatever order they came in.
        Ok(Some(known.iter().filter(|k| v.iter().any(|x| x == *k)).map(|k| k.to_string()).collect()))
    };
    let digests = pick("digests", &p.dhchap_digests, &nvmf::AuthConfig::DIGESTS)?;
    let groups = pick("dhgroups", &p.dhchap_dhgroups, &nvmf::AuthConfig::DHGROUPS)?;
    let _g = c.app.mgmt.lock().await;
    let mut cfg = c.app.nvmf.auth_config.lock().unwrap();
    if let Some(d) = digests {
        cfg.digests = d;
    }
    if let Some(g) = groups {
        cfg.dhgroups = g;
    }
    ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowAny {
    nqn: String,
    allow_any_host: bool,
    tgt_name: Option<String>,
}

async fn nvmf_subsystem_allow_any_host(c: Call) -> RpcResult {
    let p: AllowAny = c.params()?;
    check_tgt(&p.tgt_name)?;
    let _g = c.app.mgmt.lock().await;
    let s = sub_of(&c.app, &p.nqn)?;
    s.allow_any_host.store(p.allow_any_host, std::sync::atomic::Ordering::Release);
    c.app.nvmf.genctr.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    ok()
}

fn addr_json(a: &ListenAddr) -> Value {
    json!({"trtype": a.trtype, "adrfam": a.adrfam, "traddr": a.traddr, "trsvcid": a.trsvcid})
}

/// A host entry as SPDK shows and saves it: the key names it has.
fn host_json(h: &nvmf::HostEntry) -> Value {
    let mut v = json!({"nqn": h.nqn});
    for (k, x) in [("psk", &h.psk), ("dhchap_key", &h.dhchap_key), ("dhchap_ctrlr_key", &h.dhchap_ctrlr_key)] {
        if let Some(x) = x {
            v[k] = json!(x);
        }
    }
    v
}

fn describe(s: &nvmf::Subsystem) -> Value {
    let listeners: Vec<Value> = s.listeners.lock().unwrap().iter().map(addr_json).collect();
    let hosts: Vec<Value> = s.hosts.lock().unwrap().iter().map(host_json).collect();
    let mut v = json!({
        "nqn": s.nqn,
        "subtype": if s.subtype == SubType::Discovery { "Discovery" } else { "NVMe" },
        "listen_addresses": listeners,
        "allow_any_host": s.allow_any_host.load(std::sync::atomic::Ordering::Acquire),
        "hosts": hosts,
    });
    if s.subtype == SubType::Nvme {
        let ns: Vec<Value> = s
            .namespaces()
            .iter()
            .map(|n| {
                json!({
                    "nsid": n.nsid,
                    "bdev_name": n.bdev_name,
                    "name": n.bdev_name,
                    "nguid": hex(&n.nguid).to_uppercase(),
                    "eui64": hex(&n.eui64).to_uppercase(),
                    "uuid": n.uuid.to_string(),
                })
            })
            .collect();
        let o = v.as_object_mut().unwrap();
        o.insert("serial_number".into(), json!(s.params.serial_number));
        o.insert("model_number".into(), json!(s.params.model_number));
        o.insert("max_namespaces".into(), json!(s.params.max_namespaces));
        o.insert("min_cntlid".into(), json!(s.params.min_cntlid));
        o.insert("max_cntlid".into(), json!(s.params.max_cntlid));
        o.insert("namespaces".into(), json!(ns));
    }
    v
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetSubsystems {
    nqn: Option<String>,
    tgt_name: Option<String>,
}

async fn nvmf_get_subsystems(c: Call) -> RpcResult {
    let p: GetSubsystems = c.params()?;
    check_tgt(&p.tgt_name)?;
    let subs = match &p.nqn {
        Some(n) => vec![sub_of(&c.app, n)?],
        None => c.app.nvmf.subsystems(),
    };
    Ok(json!(subs.iter().map(|s| describe(s)).collect::<Vec<_>>()))
}

async fn nvmf_subsystem_get_controllers(c: Call) -> RpcResult {
    let p: NqnOnly = c.params()?;
    check_tgt(&p.tgt_name)?;
    let s = sub_of(&c.app, &p.nqn)?;
    let v: Vec<Value> = s
        .ctrlrs
        .lock()
        .unwrap()
        .iter()
        .map(|ct| {
            json!({
                "cntlid": ct.cntlid,
                "hostnqn": ct.hostnqn,
                "hostid": uuid::Uuid::from_bytes(ct.hostid).to_string(),
                "num_io_qpairs": nvmf::fabrics::num_io_qpairs(ct),
            })
        })
        .collect();
    Ok(json!(v))
}

async fn nvmf_subsystem_get_qpairs(c: Call) -> RpcResult {
    let p: NqnOnly = c.params()?;
    check_tgt(&p.tgt_name)?;
    let s = sub_of(&c.app, &p.nqn)?;
    let mut v = Vec::new();
    for ct in s.ctrlrs.lock().unwrap().iter() {
        for q in ct.state.lock().unwrap().qpairs.iter() {
            let mut e = json!({
                "cntlid": ct.cntlid,
                "qid": q.qid,
                "state": "active",
                "thread": format!("reactor_{}", q.reactor),
                "hostnqn": ct.hostnqn,
                "peer_address": {"trtype": "TCP", "traddr": q.peer},
                "listen_address": addr_json(&q.listen),
            });
            if let Some(a) = &q.auth {
                e["auth"] = json!({"state": a.state, "digest": a.digest, "dhgroup": a.dhgroup});
            }
            v.push(e);
        }
    }
    Ok(json!(v))
}

async fn nvmf_subsystem_get_listeners(c: Call) -> RpcResult {
    let p: NqnOnly = c.params()?;
    check_tgt(&p.tgt_name)?;
    let s = sub_of(&c.app, &p.nqn)?;
    // The states hosts see through each listener: one entry per ANA group of the namespaces
    // (and per group a state was set for); "ana_state" is that of groups without their own.
    let local = c.app.port_groups.local_state();
    let grps: Vec<u32> = s.namespaces().iter().map(|n| n.anagrpid).collect();
    let listeners: Vec<ListenAddr> = s.listeners.lock().unwrap().clone();
    let mut v = Vec::new();
    for a in listeners {
        let ana = s.listener_ana(&a).unwrap_or_default();
        let mut g = grps.clone();
        g.extend(ana.configured_groups());
        g.sort_unstable();
        g.dedup();
        let states: Vec<Value> = g.iter().map(|&id| json!({"ana_group": id, "ana_state": ana.effective(local, id).name()})).collect();
        v.push(json!({"address": addr_json(&a), "ana_state": ana.effective(local, 0).name(), "ana_states": states, "secure_channel": s.listener_secure(&a)}));
    }
    Ok(json!(v))
}

/// The calls that recreate the transport, subsystems, namespaces, hosts and listeners.
fn nvmf_config(app: &App) -> Vec<Entry> {
    let mut out = Vec::new();
    let e = |method: &str, params: Value| Entry { method: method.into(), params: Some(params) };
    let auth = app.nvmf.auth_config.lock().unwrap().clone();
    if auth != nvmf::AuthConfig::default() {
        out.push(e("nvmf_set_config", json!({"dhchap_digests": auth.digests, "dhchap_dhgroups": auth.dhgroups})));
    }
    if let Some(t) = app.nvmf.transport() {
        let mut v = serde_json::to_value(&*t).unwrap();
        v.as_object_mut().unwrap().remove("ack_timeout");
        v.as_object_mut().unwrap().remove("data_wr_pool_size");
        out.push(e("nvmf_create_transport", v));
    }
    for s in app.nvmf.subsystems() {
        if s.subtype == SubType::Discovery {
            for a in s.listeners.lock().unwrap().iter() {
                let mut l = json!({"nqn": s.nqn, "listen_address": addr_json(a)});
                if s.listener_secure(a) {
                    l["secure_channel"] = json!(true);
                }
                out.push(e("nvmf_subsystem_add_listener", l));
            }
            continue;
        }
        out.push(e(
            "nvmf_create_subsystem",
            json!({
                "nqn": s.nqn,
                "serial_number": s.params.serial_number,
                "model_number": s.params.model_number,
                "allow_any_host": s.allow_any_host.load(std::sync::atomic::Ordering::Acquire),
                "max_namespaces": s.params.max_namespaces,
                "min_cntlid": s.params.min_cntlid,
                "max_cntlid": s.params.max_cntlid,
                "ana_reporting": s.params.ana_reporting,
            }),
        ));
        for h in s.hosts.lock().unwrap().iter() {
            let mut p = host_json(h);
            p["host"] = p["nqn"].take();
            p["nqn"] = json!(s.nqn);
            out.push(e("nvmf_subsystem_add_host", p));
        }
        for n in s.namespaces().iter() {
            let mut ns = json!({"bdev_name": n.bdev_name, "nsid": n.nsid});
            let o = ns.as_object_mut().unwrap();
            if n.anagrpid != n.nsid {
                o.insert("anagrpid".into(), json!(n.anagrpid));
            }
            // Defaults derive from the bdev UUID; write them only if the user chose them.
            if n.explicit.0 {
                o.insert("nguid".into(), json!(hex(&n.nguid).to_uppercase()));
            }
            if n.explicit.1 {
                o.insert("eui64".into(), json!(hex(&n.eui64).to_uppercase()));
            }
            if n.explicit.2 {
                o.insert("uuid".into(), json!(n.uuid.to_string()));
            }
            // A reservation state file other than the state directory's default came from ptpl_file.
            if let Some(p) = n.volume.reservations().store_path() {
                let default = app.volumes.state_dir().map(|d| crate::reservation::Store::in_dir(&d, &n.volume.uuid()).path);
                if default.as_ref() != Some(&p) {
                    o.insert("ptpl_file".into(), json!(p.to_string_lossy()));
                }
            }
            out.push(e("nvmf_subsystem_add_ns", json!({"nqn": s.nqn, "namespace": ns})));
        }
        for a in s.listeners.lock().unwrap().iter() {
            let mut l = json!({"nqn": s.nqn, "listen_address": addr_json(a)});
            if s.listener_secure(a) {
                l["secure_channel"] = json!(true);
            }
            out.push(e("nvmf_subsystem_add_listener", l));
            // ANA states set on the listener (what follows the node is not configuration).
            if let Some(ana) = s.listener_ana(a) {
                for (grp, st) in ana.settings() {
                    let mut p = json!({"nqn": s.nqn, "listen_address": addr_json(a), "ana_state": st.name()});
                    if let Some(g) = grp {
                        p["anagrpid"] = json!(g);
                    }
                    out.push(e("nvmf_subsystem_listener_set_ana_state", p));
                }
            }
        }
    }
    out
}

/// Decode the params of one of this module's methods alone, without running it (what the
/// fuzz targets and the corpus replay test drive); None: not a method of this module.
pub fn decode_params(method: &str, p: &Option<serde_json::Value>) -> Option<Result<(), RpcError>> {
    use super::registry::decode_params_as as decode;
    Some(match method {
        "nvmf_create_transport" => decode::<CreateTransport>(p).map(drop),
        "nvmf_get_transports" => decode::<GetTransports>(p).map(drop),
        "nvmf_create_subsystem" => decode::<CreateSubsystem>(p).map(drop),
        "nvmf_delete_subsystem" => decode::<NqnOnly>(p).map(drop),
        "nvmf_subsystem_add_listener" => decode::<ListenerParams>(p).map(drop),
        "nvmf_subsystem_remove_listener" => decode::<ListenerParams>(p).map(drop),
        "nvmf_subsystem_add_ns" => decode::<AddNs>(p).map(drop),
        "nvmf_subsystem_remove_ns" => decode::<RemoveNs>(p).map(drop),
        "nvmf_subsystem_add_host" => decode::<HostParams>(p).map(drop),
        "nvmf_subsystem_remove_host" => decode::<HostParams>(p).map(drop),
        "nvmf_subsystem_allow_any_host" => decode::<AllowAny>(p).map(drop),
        "nvmf_subsystem_set_keys" => decode::<SetKeys>(p).map(drop),
        "nvmf_set_config" => decode::<SetConfig>(p).map(drop),
        "nvmf_get_subsystems" => decode::<GetSubsystems>(p).map(drop),
        "nvmf_subsystem_get_controllers" => decode::<NqnOnly>(p).map(drop),
        "nvmf_subsystem_get_qpairs" => decode::<NqnOnly>(p).map(drop),
        "nvmf_subsystem_get_listeners" => decode::<NqnOnly>(p).map(drop),
        "nvmf_subsystem_listener_set_ana_state" => decode::<SetAnaState>(p).map(drop),
        _ => return None,
    })
}
