//! Subsystems, namespaces, listen addresses and the controllers connected to them.
//!
//! Management (RPC, Connect, teardown) changes these under mutexes; the I/O path only reads the
//! namespace table through an `ArcSwap` snapshot that a queue pair caches until the generation
//! counter moves, so it takes no lock.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;

use super::ana::ListenerAna;
use crate::nvme::spec;
use crate::reactor::HandlerRef;
use crate::volume::{Initiator, Volume};

/// A transport address in SPDK's JSON shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ListenAddr {
    pub trtype: String,
    pub adrfam: String,
    pub traddr: String,
    pub trsvcid: String,
}

impl ListenAddr {
    /// Same address, comparing the transport type case-insensitively (rpc.py sends "tcp" or "TCP").
    pub fn same(&self, o: &ListenAddr) -> bool {
        self.trtype.eq_ignore_ascii_case(&o.trtype) && self.traddr == o.traddr && self.trsvcid == o.trsvcid
    }
}

/// One allowed host and the keyring names of its keys (nvmf_subsystem_add_host,
/// nvmf_subsystem_set_keys). Names, not secrets: they are resolved when a queue connects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostEntry {
    pub nqn: String,
    /// TLS PSK (NVMe/TCP 3.6).
    pub psk: Option<String>,
    /// DH-HMAC-CHAP host key: the host must authenticate (NVMe Base 2.0 8.13).
    pub dhchap_key: Option<String>,
    /// DH-HMAC-CHAP controller key: the controller can authenticate itself to the host.
    pub dhchap_ctrlr_key: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubType {
    Discovery,
    Nvme,
}

/// An exported namespace: a volume plus the identifiers hosts see.
pub struct Namespace {
    pub nsid: u32,
    pub bdev_name: String,
    pub volume: Arc<Volume>,
    pub nguid: [u8; 16],
    pub eui64: [u8; 8],
    pub uuid: uuid::Uuid,
    /// ANA group (Identify Namespace ANAGRPID): the nsid unless chosen (see `nvme::ana`).
    pub anagrpid: u32,
    /// What the RPC was given (save_config writes back only what the user chose).
    pub explicit: (bool, bool, bool),
}

/// Subsystem creation parameters kept for nvmf_get_subsystems and save_config.
#[derive(Clone, Debug)]
pub struct SubsystemParams {
    pub serial_number: String,
    pub model_number: String,
    pub max_namespaces: u32,
    pub min_cntlid: u16,
    pub max_cntlid: u16,
    pub ana_reporting: bool,
}

pub struct Subsystem {
    pub nqn: String,
    pub subtype: SubType,
    pub params: SubsystemParams,
    pub allow_any_host: AtomicBool,
    pub hosts: Mutex<Vec<HostEntry>>,
    pub listeners: Mutex<Vec<ListenAddr>>,
    /// Listeners added with `secure_channel`: hosts connecting through them must use TLS.
    pub secure_listeners: Mutex<Vec<ListenAddr>>,
    /// ANA state per listener (entries follow `listeners`).
    pub listener_ana: Mutex<Vec<(ListenAddr, Arc<ListenerAna>)>>,
    ns: ArcSwap<Vec<Arc<Namespace>>>,
    ns_gen: AtomicU64,
    pub ctrlrs: Mutex<Vec<Arc<Ctrlr>>>,
    next_cntlid: Mutex<u16>,
}

impl Subsystem {
    pub fn new(nqn: String, subtype: SubType, params: SubsystemParams, allow_any_host: bool) -> Subsystem {
        let first = params.min_cntlid;
        Subsystem {
            nqn,
            subtype,
            params,
            allow_any_host: AtomicBool::new(allow_any_host),
            hosts: Mutex::new(Vec::new()),
            listeners: Mutex::new(Vec::new()),
            secure_listeners: Mutex::new(Vec::new()),
            listener_ana: Mutex::new(Vec::new()),
            ns: ArcSwap::from_pointee(Vec::new()),
            ns_gen: AtomicU64::new(0),
            ctrlrs: Mutex::new(Vec::new()),
            next_cntlid: Mutex::new(first),
        }
    }

    /// May `hostnqn` connect (allowed hosts list, or any host)?
    pub fn host_allowed(&self, hostnqn: &str) -> bool {
        self.allow_any_host.load(Ordering::Acquire) || self.hosts.lock().unwrap().iter().any(|h| h.nqn == hostnqn)
    }

    /// The host's entry (its keys), if it is on the allowed list. A host admitted only by
    /// `allow_any_host` has none: no keys, so neither authentication nor a PSK of its own.
    pub fn host_entry(&self, hostnqn: &str) -> Option<HostEntry> {
        self.hosts.lock().unwrap().iter().find(|h| h.nqn == hostnqn).cloned()
    }

    /// Must hosts connecting through `a` use a secure channel (TLS)?
    pub fn listener_secure(&self, a: &ListenAddr) -> bool {
        self.secure_listeners.lock().unwrap().iter().any(|l| l.same(a))
    }

    pub fn listens_on(&self, a: &ListenAddr) -> bool {
        self.listeners.lock().unwrap().iter().any(|l| l.same(a))
    }

    /// The ANA state of listener `a` (None if the subsystem does not listen there).
    pub fn listener_ana(&self, a: &ListenAddr) -> Option<Arc<ListenerAna>> {
        self.listener_ana.lock().unwrap().iter().find(|(l, _)| l.same(a)).map(|(_, s)| s.clone())
    }

    /// Tell the controllers connected through `ana` (every controller if None) that ANA state
    /// changed.
    pub fn ana_changed(&self, ana: Option<&Arc<ListenerAna>>) {
        for c in self.ctrlrs.lock().unwrap().iter() {
            if ana.is_none_or(|a| Arc::ptr_eq(a, &c.ana)) {
                c.ana_changed();
            }
        }
    }

    pub fn namespaces(&self) -> Arc<Vec<Arc<Namespace>>> {
        self.ns.load_full()
    }
    pub fn ns_generation(&self) -> u64 {
        self.ns_gen.load(Ordering::Acquire)
    }

    /// Add a namespace (nsid chosen by the caller, unique); tells connected controllers.
    pub fn add_ns(&self, ns: Arc<Namespace>) {
        let nsid = ns.nsid;
        let mut v = (*self.ns.load_full()).clone();
        v.push(ns);
        v.sort_by_key(|n| n.nsid);
        self.ns.store(Arc::new(v));
        self.ns_gen.fetch_add(1, Ordering::AcqRel);
        self.notify_ns_changed(nsid);
    }

    pub fn remove_ns(&self, nsid: u32) -> Option<Arc<Namespace>> {
        let mut v = (*self.ns.load_full()).clone();
        let i = v.iter().position(|n| n.nsid == nsid)?;
        let ns = v.remove(i);
        self.ns.store(Arc::new(v));
        self.ns_gen.fetch_add(1, Ordering::AcqRel);
        self.notify_ns_changed(nsid);
        Some(ns)
    }

    fn notify_ns_changed(&self, nsid: u32) {
        for c in self.ctrlrs.lock().unwrap().iter() {
            c.ns_changed(nsid);
        }
    }

    /// Lowest free nsid (1-based) within max_namespaces (0 = unlimited).
    pub fn free_nsid(&self) -> Option<u32> {
        let v = self.ns.load();
        let max = if self.params.max_namespaces == 0 { u32::MAX - 1 } else { self.params.max_namespaces };
        (1..=max).find(|id| !v.iter().any(|n| n.nsid == *id))
    }

    /// Allocate a controller id in [min_cntlid, max_cntlid] not in use (dynamic controller model).
    pub fn alloc_cntlid(&self) -> Option<u16> {
        let used: Vec<u16> = self.ctrlrs.lock().unwrap().iter().map(|c| c.cntlid).collect();
        let (lo, hi) = (self.params.min_cntlid, self.params.max_cntlid);
        let mut next = self.next_cntlid.lock().unwrap();
        for _ in lo..=hi {
            let id = *next;
            *next = if id >= hi { lo } else { id + 1 };
            if !used.contains(&id) {
                return Some(id);
            }
        }
        None
    }

    pub fn find_ctrlr(&self, cntlid: u16) -> Option<Arc<Ctrlr>> {
        self.ctrlrs.lock().unwrap().iter().find(|c| c.cntlid == cntlid).cloned()
    }

    /// Remove a controller (admin queue gone, keep-alive expired, subsystem deleted).
    pub fn remove_ctrlr(&self, cntlid: u16) {
        self.ctrlrs.lock().unwrap().retain(|c| c.cntlid != cntlid);
    }
}

/// State of a queue pair, for nvmf_subsystem_get_qpairs.
#[derive(Clone, Debug)]
pub struct QpairInfo {
    pub qid: u16,
    pub reactor: u32,
    pub listen: ListenAddr,
    pub peer: String,
    /// DH-HMAC-CHAP on this queue (nvmf_subsystem_get_qpairs "auth", as SPDK reports it).
    pub auth: Option<QpairAuth>,
}

/// A queue's authentication as management sees it: updated when a transaction ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QpairAuth {
    /// SPDK's names: "await-negotiate" until the first success, then "completed".
    pub state: &'static str,
    pub digest: &'static str,
    pub dhgroup: &'static str,
}

impl QpairAuth {
    pub const AWAIT: QpairAuth = QpairAuth { state: "await-negotiate", digest: "", dhgroup: "" };
    /// Authenticated by its TLS handshake on a PSK an earlier transaction generated.
    pub const BY_GENERATED_PSK: QpairAuth = QpairAuth { state: "completed", digest: "", dhgroup: "" };
}

/// Mutable controller state, touched only from management paths (admin commands, Connect, AEN).
pub struct CtrlrState {
    pub cc: u32,
    pub csts: u32,
    pub kato_ms: u32,
    pub async_event_config: u32,
    pub num_io_queues: u16,
    /// Other features Get Features reports back as they were set.
    pub features: BTreeMap<u8, u32>,
    /// Events waiting for an outstanding AER (CQE dword 0 values).
    pub pending_events: Vec<u32>,
    /// Namespace attribute notices masked until the host reads the changed namespace list.
    pub ns_notice_masked: bool,
    /// Reservation Log Page Available raised and not yet acknowledged by reading log page 80h.
    pub resv_notice_masked: bool,
    /// ANA change notice raised and not yet acknowledged by reading the ANA log page (0Ch).
    pub ana_notice_masked: bool,
    pub changed_ns: Vec<u32>,
    pub qpairs: Vec<QpairInfo>,
}

/// A controller: one host association with a subsystem (admin queue + I/O queues).
pub struct Ctrlr {
    pub cntlid: u16,
    pub sub: Arc<Subsystem>,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    pub initiator: Initiator,
    /// ANA state of the listener this controller was connected through.
    pub ana: Arc<ListenerAna>,
    pub created: Instant,
    /// Where the admin queue pair lives (AEN messages go there).
    pub admin: Mutex<Option<HandlerRef>>,
    pub state: Mutex<CtrlrState>,
    /// Set when the controller is torn down: its I/O queue pairs close on their next tick.
    pub dead: AtomicBool,
    pub max_io_qpairs: u16,
    /// Milliseconds since `created` of the last keep-alive (or command on the admin queue).
    pub last_keepalive_ms: AtomicU64,
    /// Where to deliver "an async event is pending" (set by the transport).
    pub aen_kick: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
}

impl Ctrlr {
    #[allow(clippy::too_many_arguments)]
    pub fn new(cntlid: u16, sub: Arc<Subsystem>, hostnqn: String, hostid: [u8; 16], kato_ms: u32, max_io_qpairs: u16) -> Ctrlr {
        Ctrlr {
            cntlid,
            initiator: Initiator::Nvme { host_id: hostid, host_nqn: hostnqn.clone() },
            sub,
            hostnqn,
            hostid,
            ana: ListenerAna::new(),
            created: Instant::now(),
            admin: Mutex::new(None),
            state: Mutex::new(CtrlrState {
                cc: 0,
                csts: 0,
                kato_ms,
                async_event_config: 0,
                num_io_queues: max_io_qpairs,
                features: BTreeMap::new(),
                pending_events: Vec::new(),
                ns_notice_masked: false,
                resv_notice_masked: false,
                ana_notice_masked: false,
                changed_ns: Vec::new(),
                qpairs: Vec::new(),
            }),
            dead: AtomicBool::new(false),
            max_io_qpairs,
            last_keepalive_ms: AtomicU64::new(0),
            aen_kick: Mutex::new(None),
        }
    }

    /// The controller serves the paths of listener `ana` (set at Connect, before it is shared).
    pub fn on_listener(mut self, ana: Arc<ListenerAna>) -> Ctrlr {
        self.ana = ana;
        self
    }

    /// ANA state changed: raise "Asymmetric Namespace Access Change" if enabled and unmasked
    /// (Base 2.0 5.2, Figure 150; masked until the host reads the ANA log page).
    pub fn ana_changed(&self) {
        use crate::nvme::ana;
        let raise = {
            let mut st = self.state.lock().unwrap();
            if st.async_event_config & ana::AEC_ANA_CHANGE != 0 && !st.ana_notice_masked {
                st.ana_notice_masked = true;
                st.pending_events.push(spec::aer_dw0(spec::AER_TYPE_NOTICE, ana::AER_INFO_ANA_CHANGE, ana::LID_ANA));
                true
            } else {
                false
            }
        };
        if raise {
            if let Some(k) = self.aen_kick.lock().unwrap().as_ref() {
                k();
            }
        }
    }

    pub fn touch_keepalive(&self) {
        self.last_keepalive_ms.store(self.created.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Has the keep-alive timer expired at `now`?
    pub fn keepalive_expired(&self, now: Instant) -> bool {
        let kato = self.state.lock().unwrap().kato_ms as u64;
        if kato == 0 {
            return false;
        }
        let now_ms = now.saturating_duration_since(self.created).as_millis() as u64;
        now_ms.saturating_sub(self.last_keepalive_ms.load(Ordering::Relaxed)) > kato
    }

    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// Tear down: the admin queue pair and every I/O queue pair close.
    pub fn kill(&self) {
        self.dead.store(true, Ordering::Release);
        self.sub.remove_ctrlr(self.cntlid);
    }

    /// Record a namespace change and raise "namespace attribute changed" if enabled and unmasked.
    pub fn ns_changed(&self, nsid: u32) {
        let raise = {
            let mut st = self.state.lock().unwrap();
            if !st.changed_ns.contains(&nsid) {
                if st.changed_ns.len() >= 1024 {
                    // Overflow: the spec's "more than 1024 changed" marker is a single 0xffffffff.
                    st.changed_ns = vec![0xffff_ffff];
                } else if st.changed_ns != [0xffff_ffff] {
                    st.changed_ns.push(nsid);
                }
            }
            if st.async_event_config & spec::AEC_NS_ATTR != 0 && !st.ns_notice_masked {
                st.ns_notice_masked = true;
                st.pending_events.push(spec::aer_dw0(spec::AER_TYPE_NOTICE, spec::AER_INFO_NS_ATTR_CHANGED, spec::lid::CHANGED_NS_LIST));
                true
            } else {
                false
            }
        };
        if raise {
            if let Some(k) = self.aen_kick.lock().unwrap().as_ref() {
                k();
            }
        }
    }
}
