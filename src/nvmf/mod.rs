//! NVMe-oF: the TCP transport (tcp/), fabrics commands (fabrics), admin command handling (admin),
//! subsystems and controllers (subsystem), discovery (discovery), and an NVMe/TCP host (host/)
//! used by `palisade perf` and the tests.

pub mod admin;
pub mod ana;
pub mod auth;
pub mod discovery;
pub mod fabrics;
pub mod host;
mod io_cmd;
pub mod r#loop;
pub mod qpair;
mod resv_cmd;
pub mod subsystem;
pub mod tcp;
pub mod transport;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use crate::bdev::BdevError;
use crate::reactor::budget::Budget;
use crate::reactor::{HandlerRef, ReactorSet};
use crate::volume::VolumeRegistry;
pub use subsystem::{Ctrlr, HostEntry, ListenAddr, Namespace, SubType, Subsystem, SubsystemParams};

/// TCP transport options, SPDK's names and defaults (nvmf_create_transport / nvmf_get_transports).
#[derive(Clone, Debug, serde::Serialize)]
pub struct TransportOpts {
    pub trtype: String,
    pub max_queue_depth: u32,
    pub max_io_qpairs_per_ctrlr: u32,
    pub in_capsule_data_size: u32,
    pub max_io_size: u32,
    pub io_unit_size: u32,
    pub max_aq_depth: u32,
    pub num_shared_buffers: u32,
    pub buf_cache_size: u32,
    pub dif_insert_or_strip: bool,
    pub zcopy: bool,
    pub c2h_success: bool,
    pub sock_priority: u32,
    pub abort_timeout_sec: u32,
    pub ack_timeout: u32,
    pub data_wr_pool_size: u32,
    /// Palisade's own (no SPDK counterpart): a new connection must complete ICReq and Fabrics
    /// Connect within this many milliseconds or it is closed; 0 disables the timer.
    #[serde(skip_serializing_if = "is_default_connect_timeout")]
    pub connect_timeout_ms: u32,
    /// Palisade's own: NVMe/TCP connections open at once, over all listeners; more are
    /// accepted and closed at once, with a log line.
    #[serde(skip_serializing_if = "is_default_max_connections")]
    pub max_connections: u32,
    /// Palisade's own: MiB of command data (write data being gathered, read data not yet on the
    /// wire) one connection may hold; its further commands wait. The whole transport holds at
    /// most `num_shared_buffers` x `io_unit_size` (SPDK's shared buffer pool). `buf_cache_size`
    /// is accepted for SPDK compatibility: a connection's cache of that pool is a fixed 1 MiB
    /// chunk (`reactor::budget::CHUNK`).
    #[serde(skip_serializing_if = "is_default_data_buffer_per_connection")]
    pub data_buffer_per_connection_mib: u32,
}

pub const DEFAULT_CONNECT_TIMEOUT_MS: u32 = 10_000;
pub const DEFAULT_MAX_CONNECTIONS: u32 = 4096;
/// A full queue (128) of maximal (128 KiB) I/O.
pub const DEFAULT_DATA_BUFFER_PER_CONNECTION_MIB: u32 = 16;

fn is_default_connect_timeout(v: &u32) -> bool {
    *v == DEFAULT_CONNECT_TIMEOUT_MS
}
fn is_default_max_connections(v: &u32) -> bool {
    *v == DEFAULT_MAX_CONNECTIONS
}
fn is_default_data_buffer_per_connection(v: &u32) -> bool {
    *v == DEFAULT_DATA_BUFFER_PER_CONNECTION_MIB
}

impl Default for TransportOpts {
    fn default() -> Self {
        TransportOpts {
            trtype: "TCP".into(),
            max_queue_depth: 128,
            max_io_qpairs_per_ctrlr: 127,
            in_capsule_data_size: 4096,
            max_io_size: 131072,
            io_unit_size: 131072,
            max_aq_depth: 128,
            num_shared_buffers: 511,
            buf_cache_size: 4294967295,
            dif_insert_or_strip: false,
            zcopy: false,
            c2h_success: true,
            sock_priority: 0,
            abort_timeout_sec: 1,
            ack_timeout: 0,
            data_wr_pool_size: 0,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            data_buffer_per_connection_mib: DEFAULT_DATA_BUFFER_PER_CONNECTION_MIB,
        }
    }
}

impl TransportOpts {
    /// MAXH2CDATA we announce: the I/O unit size, within the spec's 4 KiB minimum and 128 KiB.
    pub fn maxh2cdata(&self) -> u32 {
        (self.io_unit_size.clamp(4096, 131072) / 4) * 4
    }
    /// In-capsule data accepted on the admin queue (Connect carries 1 KiB; Linux expects 8 KiB).
    pub fn admin_icd(&self) -> u32 {
        self.in_capsule_data_size.max(8192)
    }
    /// MDTS as Identify reports it: log2 of max_io_size in 4 KiB pages.
    pub fn mdts(&self) -> u8 {
        let pages = (self.max_io_size / 4096).max(1);
        (31 - pages.leading_zeros()) as u8
    }
    /// The transport's data-buffer budget in bytes (SPDK's shared pool: buffers x unit size).
    pub fn data_budget_bytes(&self) -> usize {
        self.num_shared_buffers as usize * self.io_unit_size as usize
    }
    pub fn data_buffer_per_connection(&self) -> usize {
        (self.data_buffer_per_connection_mib as usize) << 20
    }
    pub fn validate(&self) -> Result<(), String> {
        if self.num_shared_buffers == 0 {
            return Err("num_shared_buffers must be at least 1".into());
        }
        if self.data_buffer_per_connection_mib == 0 || self.data_buffer_per_connection_mib > (1 << 20) {
            return Err(format!("data_buffer_per_connection_mib {} must be 1..1048576", self.data_buffer_per_connection_mib));
        }
        if self.max_queue_depth < 2 || self.max_queue_depth > 65535 {
            return Err(format!("max_queue_depth {} must be 2..65535", self.max_queue_depth));
        }
        if self.max_aq_depth < 2 || self.max_aq_depth > 4096 {
            return Err(format!("max_aq_depth {} must be 2..4096", self.max_aq_depth));
        }
        if self.max_io_qpairs_per_ctrlr == 0 || self.max_io_qpairs_per_ctrlr > 65534 {
            return Err(format!("max_io_qpairs_per_ctrlr {} must be 1..65534", self.max_io_qpairs_per_ctrlr));
        }
        if self.max_io_size < 4096 || self.max_io_size > (8 << 20) || !self.max_io_size.is_power_of_two() {
            return Err(format!("max_io_size {} must be a power of two between 4096 and 8 MiB", self.max_io_size));
        }
        if self.in_capsule_data_size % 16 != 0 || self.in_capsule_data_size > 131072 {
            return Err(format!("in_capsule_data_size {} must be a multiple of 16, at most 131072", self.in_capsule_data_size));
        }
        if self.max_connections == 0 {
            return Err("max_connections must be at least 1".into());
        }
        if self.io_unit_size < 512 || self.io_unit_size > self.max_io_size.max(131072) {
            return Err(format!("io_unit_size {} is out of range", self.io_unit_size));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NvmfError {
    #[error("transport {0} already exists")]
    TransportExists(String),
    #[error("transport {0} does not exist")]
    NoTransport(String),
    #[error("subsystem {0} already exists")]
    SubsystemExists(String),
    #[error("subsystem {0} not found")]
    NoSubsystem(String),
    #[error("{0}")]
    Invalid(String),
    #[error("namespace {0} already exists")]
    NsExists(u32),
    #[error("namespace {0} not found")]
    NoNs(u32),
    #[error("listener {0}:{1} already exists")]
    ListenerExists(String, String),
    #[error("listener {0}:{1} not found")]
    NoListener(String, String),
    #[error("cannot listen on {0}: {1}")]
    Listen(String, std::io::Error),
    #[error(transparent)]
    Bdev(#[from] BdevError),
}

impl NvmfError {
    pub fn errno(&self) -> i32 {
        match self {
            NvmfError::TransportExists(_) | NvmfError::SubsystemExists(_) | NvmfError::NsExists(_) | NvmfError::ListenerExists(..) => libc::EEXIST,
            NvmfError::NoTransport(_) | NvmfError::NoSubsystem(_) | NvmfError::NoNs(_) | NvmfError::NoListener(..) => libc::ENODEV,
            NvmfError::Invalid(_) => libc::EINVAL,
            NvmfError::Listen(_, e) => e.raw_os_error().unwrap_or(libc::EIO),
            NvmfError::Bdev(e) => -e.errno(),
        }
    }
}

struct ListenerEntry {
    addr: ListenAddr,
    handler: HandlerRef,
}

/// The NVMe-oF target: the TCP transport, its listeners and the subsystems.
pub struct Target {
    pub reactors: ReactorSet,
    pub volumes: Arc<VolumeRegistry>,
    transport: RwLock<Option<Arc<TransportOpts>>>,
    subsystems: RwLock<BTreeMap<String, Arc<Subsystem>>>,
    listeners: Mutex<Vec<ListenerEntry>>,
    /// Discovery log generation counter: bumped whenever what discovery reports changes.
    pub genctr: std::sync::atomic::AtomicU64,
    /// NVMe/TCP connections open now (bounded by `TransportOpts::max_connections`).
    pub conns: std::sync::atomic::AtomicUsize,
    /// Command data all NVMe/TCP connections hold (`TransportOpts::data_budget_bytes`).
    pub data_budget: Arc<Budget>,
    /// Transport types listeners can be opened for, by `trtype` (registered by the wiring
    /// above, so the core depends on no transport).
    kinds: RwLock<Vec<(String, Arc<dyn transport::TransportKind>)>>,
    /// Named secrets (keyring_file_add_key): DH-HMAC-CHAP keys and TLS PSKs of hosts.
    pub keyring: Arc<crate::keyring::Keyring>,
    /// Digests and DH groups DH-HMAC-CHAP may negotiate (nvmf_set_config).
    pub auth_config: Mutex<AuthConfig>,
    /// TLS PSKs generated by secure channel concatenation (a DH-HMAC-CHAP exchange with
    /// SC_C = NEWTLSPSK), by PSK identity ("NVMe1G0x ..."), for the TLS handshake that follows.
    pub generated_psks: Mutex<std::collections::HashMap<String, Vec<u8>>>,
}

/// What DH-HMAC-CHAP may negotiate, by SPDK's names, strongest choice last in neither list:
/// the negotiation picks the strongest the host offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthConfig {
    /// "sha256", "sha384", "sha512".
    pub digests: Vec<String>,
    /// "null", "ffdhe2048", "ffdhe3072", "ffdhe4096", "ffdhe6144", "ffdhe8192".
    pub dhgroups: Vec<String>,
}

impl AuthConfig {
    pub const DIGESTS: [&'static str; 3] = ["sha256", "sha384", "sha512"];
    pub const DHGROUPS: [&'static str; 6] = ["null", "ffdhe2048", "ffdhe3072", "ffdhe4096", "ffdhe6144", "ffdhe8192"];
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            digests: Self::DIGESTS.iter().map(|s| s.to_string()).collect(),
            dhgroups: Self::DHGROUPS.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl Target {
    pub fn new(reactors: ReactorSet, volumes: Arc<VolumeRegistry>) -> Arc<Target> {
        let t = Target {
            reactors,
            volumes,
            transport: RwLock::new(None),
            subsystems: RwLock::new(BTreeMap::new()),
            listeners: Mutex::new(Vec::new()),
            genctr: std::sync::atomic::AtomicU64::new(0),
            conns: std::sync::atomic::AtomicUsize::new(0),
            data_budget: Budget::new(TransportOpts::default().data_budget_bytes()),
            kinds: RwLock::new(Vec::new()),
            keyring: crate::keyring::Keyring::new(),
            auth_config: Mutex::new(AuthConfig::default()),
            generated_psks: Mutex::new(std::collections::HashMap::new()),
        };
        let disc = Subsystem::new(
            spec_discovery_nqn(),
            SubType::Discovery,
            SubsystemParams {
                serial_number: String::new(),
                model_number: String::new(),
                max_namespaces: 0,
                min_cntlid: 1,
                max_cntlid: 0xffef,
                ana_reporting: false,
            },
            true,
        );
        t.subsystems.write().unwrap().insert(disc.nqn.clone(), Arc::new(disc));
        let t = Arc::new(t);
        // A change of this node's port group state is an ANA change on every controller.
        let weak = Arc::downgrade(&t);
        t.port_groups().watch(Box::new(move |_| {
            if let Some(t) = weak.upgrade() {
                for s in t.subsystems() {
                    s.ana_changed(None);
                }
            }
        }));
        t
    }

    fn bump(&self) {
        self.genctr.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Make `trtype` listenable (TCP, loop).
    pub fn register_transport(&self, trtype: &str, kind: Arc<dyn transport::TransportKind>) {
        let mut k = self.kinds.write().unwrap();
        k.retain(|(t, _)| !t.eq_ignore_ascii_case(trtype));
        k.push((trtype.to_string(), kind));
    }

    fn kind(&self, trtype: &str) -> Option<Arc<dyn transport::TransportKind>> {
        self.kinds.read().unwrap().iter().find(|(t, _)| t.eq_ignore_ascii_case(trtype)).map(|(_, k)| k.clone())
    }

    pub fn transport(&self) -> Option<Arc<TransportOpts>> {
        self.transport.read().unwrap().clone()
    }

    pub fn create_transport(&self, opts: TransportOpts) -> Result<(), NvmfError> {
        let mut t = self.transport.write().unwrap();
        if t.is_some() {
            return Err(NvmfError::TransportExists(opts.trtype));
        }
        opts.validate().map_err(NvmfError::Invalid)?;
        self.data_budget.set_limit(opts.data_budget_bytes());
        *t = Some(Arc::new(opts));
        Ok(())
    }

    pub fn subsystem(&self, nqn: &str) -> Option<Arc<Subsystem>> {
        self.subsystems.read().unwrap().get(nqn).cloned()
    }
    pub fn subsystems(&self) -> Vec<Arc<Subsystem>> {
        self.subsystems.read().unwrap().values().cloned().collect()
    }

    pub fn create_subsystem(&self, s: Subsystem) -> Result<Arc<Subsystem>, NvmfError> {
        let mut m = self.subsystems.write().unwrap();
        if m.contains_key(&s.nqn) {
            return Err(NvmfError::SubsystemExists(s.nqn));
        }
        let s = Arc::new(s);
        m.insert(s.nqn.clone(), s.clone());
        drop(m);
        self.bump();
        Ok(s)
    }

    /// Delete a subsystem: controllers torn down, namespaces released, listeners dropped.
    pub fn delete_subsystem(&self, nqn: &str) -> Result<(), NvmfError> {
        let s = {
            let mut m = self.subsystems.write().unwrap();
            match m.get(nqn) {
                Some(s) if s.subtype == SubType::Discovery => {
                    return Err(NvmfError::Invalid("the discovery subsystem cannot be deleted".into()))
                }
                Some(_) => m.remove(nqn).unwrap(),
                None => return Err(NvmfError::NoSubsystem(nqn.into())),
            }
        };
        for c in s.ctrlrs.lock().unwrap().drain(..) {
            c.dead.store(true, std::sync::atomic::Ordering::Release);
        }
        for ns in s.namespaces().iter() {
            s.remove_ns(ns.nsid);
            self.volumes.close(&ns.bdev_name, &owner(&s.nqn));
        }
        let addrs: Vec<ListenAddr> = s.listeners.lock().unwrap().drain(..).collect();
        for a in addrs {
            self.release_listener(&a);
        }
        self.bump();
        Ok(())
    }

    pub fn add_ns(&self, s: &Arc<Subsystem>, bdev_name: &str, nsid: Option<u32>, nguid: Option<[u8; 16]>, eui64: Option<[u8; 8]>, uuid: Option<uuid::Uuid>) -> Result<u32, NvmfError> {
        self.add_ns_in_group(s, bdev_name, nsid, nguid, eui64, uuid, None)
    }

    /// [`Target::add_ns`] with the namespace's ANA group chosen (None: its nsid).
    #[allow(clippy::too_many_arguments)]
    pub fn add_ns_in_group(&self, s: &Arc<Subsystem>, bdev_name: &str, nsid: Option<u32>, nguid: Option<[u8; 16]>, eui64: Option<[u8; 8]>, uuid: Option<uuid::Uuid>, anagrpid: Option<u32>) -> Result<u32, NvmfError> {
        if anagrpid == Some(0) || anagrpid.is_some_and(|g| s.params.max_namespaces != 0 && g > s.params.max_namespaces) {
            return Err(NvmfError::Invalid(format!("anagrpid {} is out of range (1..max_namespaces)", anagrpid.unwrap_or(0))));
        }
        let nsid = match nsid {
            Some(0) | None => s.free_nsid().ok_or_else(|| NvmfError::Invalid("no free namespace id".into()))?,
            Some(id) => {
                if id == u32::MAX || (s.params.max_namespaces != 0 && id > s.params.max_namespaces) {
                    return Err(NvmfError::Invalid(format!("nsid {id} is out of range (max_namespaces {})", s.params.max_namespaces)));
                }
                if s.namespaces().iter().any(|n| n.nsid == id) {
                    return Err(NvmfError::NsExists(id));
                }
                id
            }
        };
        let volume = self.volumes.open(bdev_name, &owner(&s.nqn))?;
        let u = volume.uuid();
        let ns = Namespace {
            nsid,
            bdev_name: volume.name().to_string(),
            nguid: nguid.unwrap_or_else(|| crate::volume::identity::nguid(&u)),
            eui64: eui64.unwrap_or_else(|| crate::volume::identity::eui64(&u)),
            uuid: uuid.unwrap_or(u),
            anagrpid: anagrpid.unwrap_or(nsid),
            explicit: (nguid.is_some(), eui64.is_some(), uuid.is_some()),
            volume,
        };
        s.add_ns(Arc::new(ns));
        Ok(nsid)
    }

    pub fn remove_ns(&self, s: &Arc<Subsystem>, nsid: u32) -> Result<(), NvmfError> {
        let ns = s.remove_ns(nsid).ok_or(NvmfError::NoNs(nsid))?;
        self.volumes.close(&ns.bdev_name, &owner(&s.nqn));
        Ok(())
    }

    /// Add a listen address to a subsystem whose hosts must use a secure channel (TLS) there.
    /// The socket itself serves TLS and plaintext hosts alike (the first byte tells them apart),
    /// so subsystems that do not require TLS can share the port; Connect enforces the choice.
    pub fn add_secure_listener(self: &Arc<Self>, s: &Arc<Subsystem>, addr: ListenAddr) -> Result<(), NvmfError> {
        self.add_listener(s, addr.clone())?;
        s.secure_listeners.lock().unwrap().push(addr);
        self.bump();
        Ok(())
    }

    /// Plaintext NVMe/TCP is refused on an address where every NVM subsystem listening requires
    /// a secure channel (a subsystem that does not may share the port; Connect then refuses
    /// plaintext to the others).
    pub fn plaintext_refused(&self, addr: &ListenAddr) -> bool {
        let subs: Vec<_> = self.subsystems().into_iter().filter(|s| s.subtype == SubType::Nvme && s.listens_on(addr)).collect();
        !subs.is_empty() && subs.iter().all(|s| s.listener_secure(addr))
    }

    /// A plaintext connection may go on to Connect on `addr`: some subsystem there takes
    /// plaintext, or one has a host with a DH-HMAC-CHAP key, whose plaintext admin queue may
    /// generate the TLS PSK it reconnects with (secure channel concatenation; Connect decides).
    pub fn plaintext_admissible(&self, addr: &ListenAddr) -> bool {
        !self.plaintext_refused(addr)
            || self.subsystems().iter().any(|s| s.subtype == SubType::Nvme && s.listens_on(addr) && s.hosts.lock().unwrap().iter().any(|h| h.dhchap_key.is_some()))
    }

    /// Drop the TLS PSKs secure channel concatenation generated for `hostnqn` on `subnqn` (a
    /// newer one replaces them, or the host lost its key or its access). Connections already
    /// made with them stay up, as with any PSK.
    pub fn forget_generated_psks(&self, hostnqn: &str, subnqn: &str) {
        self.generated_psks.lock().unwrap().retain(|id, _| {
            let mut f = id.split(' ').skip(1);
            !(f.next() == Some(hostnqn) && f.next() == Some(subnqn))
        });
    }

    /// Add a listen address to a subsystem, opening the socket on first use.
    pub fn add_listener(self: &Arc<Self>, s: &Arc<Subsystem>, addr: ListenAddr) -> Result<(), NvmfError> {
        if self.transport().is_none() {
            return Err(NvmfError::NoTransport(addr.trtype.clone()));
        }
        if s.listens_on(&addr) {
            return Err(NvmfError::ListenerExists(addr.traddr, addr.trsvcid));
        }
        let mut ls = self.listeners.lock().unwrap();
        if !ls.iter().any(|l| l.addr.same(&addr)) {
            let unsupported = || std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("transport {} is not supported", addr.trtype));
            let h = self
                .kind(&addr.trtype)
                .ok_or_else(unsupported)
                .and_then(|k| k.listen(self, &addr))
                .map_err(|e| NvmfError::Listen(format!("{}:{}", addr.traddr, addr.trsvcid), e))?;
            ls.push(ListenerEntry { addr: addr.clone(), handler: h });
        }
        drop(ls);
        s.listener_ana.lock().unwrap().push((addr.clone(), ana::ListenerAna::new()));
        s.listeners.lock().unwrap().push(addr);
        self.bump();
        Ok(())
    }

    /// Set the ANA state of listener `addr` of `s` for group `grp` (every group if None); the
    /// controllers connected through it get an ANA change notice.
    pub fn set_ana_state(&self, s: &Arc<Subsystem>, addr: &ListenAddr, grp: Option<u32>, st: crate::nvme::ana::AnaState) -> Result<(), NvmfError> {
        let ana = s.listener_ana(addr).ok_or_else(|| NvmfError::NoListener(addr.traddr.clone(), addr.trsvcid.clone()))?;
        ana.set(grp, st);
        s.ana_changed(Some(&ana));
        Ok(())
    }

    /// This node's target port groups (shared with the volumes and the iSCSI target).
    pub fn port_groups(&self) -> &Arc<crate::cluster::PortGroups> {
        self.volumes.port_groups()
    }

    pub fn remove_listener(&self, s: &Arc<Subsystem>, addr: &ListenAddr) -> Result<(), NvmfError> {
        {
            let mut l = s.listeners.lock().unwrap();
            let i = l.iter().position(|x| x.same(addr)).ok_or_else(|| NvmfError::NoListener(addr.traddr.clone(), addr.trsvcid.clone()))?;
            l.remove(i);
            s.listener_ana.lock().unwrap().retain(|(a, _)| !a.same(addr));
            s.secure_listeners.lock().unwrap().retain(|a| !a.same(addr));
        }
        // As SPDK does, hosts connected through the removed address lose those controllers.
        for c in s.ctrlrs.lock().unwrap().iter() {
            if c.state.lock().unwrap().qpairs.iter().any(|q| q.listen.same(addr)) {
                c.dead.store(true, std::sync::atomic::Ordering::Release);
            }
        }
        self.release_listener(addr);
        self.bump();
        Ok(())
    }

    /// Close the socket when no subsystem listens on the address any more.
    fn release_listener(&self, addr: &ListenAddr) {
        let in_use = self.subsystems.read().unwrap().values().any(|s| s.listens_on(addr));
        if in_use {
            return;
        }
        let mut ls = self.listeners.lock().unwrap();
        if let Some(i) = ls.iter().position(|l| l.addr.same(addr)) {
            let h = ls.remove(i).handler;
            self.reactors.send(h.reactor, move |r| {
                r.with_handler(h, |_, core, me| core.close(me));
            });
        }
    }

    /// Every listen address (for discovery).
    pub fn listen_addrs(&self) -> Vec<ListenAddr> {
        self.listeners.lock().unwrap().iter().map(|l| l.addr.clone()).collect()
    }
}

/// Claim name of a subsystem on its bdevs (shows in bdev claims).
pub fn owner(nqn: &str) -> String {
    format!("nvmf:{nqn}")
}

fn spec_discovery_nqn() -> String {
    crate::nvme::spec::DISCOVERY_NQN.to_string()
}
