//! JSON-RPC 2.0 management plane with SPDK's method names, and the application root that every
//! method reaches the layers below through.

pub mod bdev;
pub mod cluster;
pub mod error;
pub mod framework;
pub mod iscsi;
pub mod keyring;
pub mod layout;
pub mod nvmf;
pub mod registry;
pub mod reservation;
pub mod server;

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::bdev::BdevRegistry;
use crate::reactor::ReactorSet;
use crate::volume::VolumeRegistry;
pub use error::{RpcError, RpcResult};
pub use registry::{Call, Conn, Registry, ANY, RUNTIME, STARTUP};

/// Sets the log level at run time (log_set_level); installed by the binary's logging setup.
pub type LogSetter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Everything a management call can reach.
pub struct App {
    pub reactors: ReactorSet,
    pub bdevs: Arc<BdevRegistry>,
    pub volumes: Arc<VolumeRegistry>,
    /// This node's target port groups (ALUA / ANA): the volumes, the iSCSI and the NVMe-oF
    /// targets share it; the cluster layer sets the local state and the other nodes' groups.
    pub port_groups: Arc<crate::cluster::PortGroups>,
    /// The NVMe-oF target (transport, subsystems, listeners).
    pub nvmf: Arc<crate::nvmf::Target>,
    /// iSCSI target state: options, groups, nodes, sessions.
    pub iscsi: Arc<crate::iscsi::Target>,
    pub registry: Registry,
    state: AtomicU8,
    init_done: tokio::sync::watch::Sender<bool>,
    /// framework_start_init was called (state is RUNTIME), config may still be loading.
    started: tokio::sync::watch::Sender<bool>,
    /// Set while a config's runtime entries are pending: init is done only once they are applied.
    hold_init: AtomicBool,
    shutdown: tokio::sync::watch::Sender<bool>,
    shutting_down: AtomicBool,
    log_level: Mutex<String>,
    log_setter: Option<LogSetter>,
    /// Serialises management calls that change state, so each applies whole or not at all.
    pub mgmt: tokio::sync::Mutex<()>,
    /// Layout volumes, recall subscribers and the fencer.
    pub layout: layout::LayoutApp,
    /// Cluster mode (`serve --cluster`, `cluster_connect`): set once.
    pub cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
}

impl App {
    pub fn new(reactors: ReactorSet, wait_for_rpc: bool, log_setter: Option<LogSetter>) -> Arc<App> {
        let bdevs = Arc::new(BdevRegistry::default());
        let mut registry = Registry::default();
        framework::register(&mut registry);
        // Before bdev and the exports: a config joins the cluster before volumes open.
        cluster::register(&mut registry);
        // Before nvmf: hosts name keys.
        keyring::register(&mut registry);
        bdev::register(&mut registry);
        nvmf::register(&mut registry);
        iscsi::register(&mut registry);
        layout::register(&mut registry);
        reservation::register(&mut registry);
        let state = if wait_for_rpc { STARTUP } else { RUNTIME };
        let port_groups = crate::cluster::PortGroups::new();
        let volumes = Arc::new(VolumeRegistry::with_port_groups(bdevs.clone(), port_groups.clone()));
        let nvmf = crate::nvmf::Target::new(reactors.clone(), volumes.clone());
        crate::nvmf::tcp::register(&nvmf);
        crate::nvmf::r#loop::register(&nvmf);
        Arc::new(App {
            reactors,
            nvmf,
            volumes,
            bdevs,
            iscsi: crate::iscsi::Target::with_port_groups(port_groups.clone()),
            port_groups,
            registry,
            state: AtomicU8::new(state),
            init_done: tokio::sync::watch::channel(!wait_for_rpc).0,
            started: tokio::sync::watch::channel(!wait_for_rpc).0,
            hold_init: AtomicBool::new(false),
            shutdown: tokio::sync::watch::channel(false).0,
            shutting_down: AtomicBool::new(false),
            log_level: Mutex::new("NOTICE".into()),
            log_setter,
            mgmt: tokio::sync::Mutex::new(()),
            layout: Default::default(),
            cluster: Default::default(),
        })
    }

    pub fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    /// framework_start_init: leave the startup state.
    pub fn start_init(&self) -> bool {
        let ok = self.state.compare_exchange(STARTUP, RUNTIME, Ordering::AcqRel, Ordering::Acquire).is_ok();
        if ok {
            self.started.send_replace(true);
            if !self.hold_init.load(Ordering::Acquire) {
                self.init_done.send_replace(true);
            }
        }
        ok
    }

    /// Keep framework_wait_init waiting after framework_start_init until [`App::release_init`]
    /// (used while a config's runtime entries are applied).
    pub fn hold_init(&self) {
        self.hold_init.store(true, Ordering::Release);
    }

    /// The held initialisation is complete.
    pub fn release_init(&self) {
        self.hold_init.store(false, Ordering::Release);
        if self.state() == RUNTIME {
            self.init_done.send_replace(true);
        }
    }

    /// Wait until framework_start_init has been called (the state is RUNTIME).
    pub async fn wait_started(&self) {
        let mut rx = self.started.subscribe();
        let _ = rx.wait_for(|v| *v).await;
    }

    /// Wait until initialisation, including the start-up config, is complete.
    pub async fn wait_init(&self) {
        let mut rx = self.init_done.subscribe();
        let _ = rx.wait_for(|v| *v).await;
    }

    /// Ask the process to shut down cleanly (signal or spdk_kill_instance).
    pub fn request_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.shutdown.send_replace(true);
    }
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }
    pub async fn wait_shutdown(&self) {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|v| *v).await;
    }

    pub fn log_level(&self) -> String {
        self.log_level.lock().unwrap().clone()
    }
    pub fn set_log_level(&self, level: &str) -> Result<(), String> {
        if let Some(f) = &self.log_setter {
            f(level)?;
        }
        *self.log_level.lock().unwrap() = level.to_string();
        Ok(())
    }

    /// Dispatch one decoded call by name (used by the socket server and config loading).
    pub async fn dispatch(self: &Arc<Self>, method: &str, params: Option<Value>, conn: Arc<Conn>) -> RpcResult {
        let Some(m) = self.registry.get(method) else {
            return Err(RpcError::method_not_found(method));
        };
        let state = self.state();
        if m.states & state == 0 {
            return Err(if state == STARTUP {
                RpcError::new(error::INVALID_STATE, "Method may only be called after framework is initialized using framework_start_init RPC.")
            } else {
                RpcError::new(error::INVALID_STATE, "Method may only be called before framework initialization")
            });
        }
        (m.handler)(Call { app: self.clone(), params, conn }).await
    }

    /// The running configuration in SPDK's format (what save_config returns).
    pub fn save_config(&self) -> crate::config::Config {
        let subsystems = self
            .registry
            .subsystems()
            .iter()
            .map(|s| crate::config::SubsystemConfig {
                subsystem: s.name.to_string(),
                config: (s.config)(self).into_iter().map(crate::config::Element::Call).collect(),
            })
            .collect();
        crate::config::Config { subsystems }
    }

    /// Stop the data plane: reactors close every connection and channel, then state is synced.
    pub fn stop(&self) {
        self.reactors.stop();
        // No I/O is admitted or in flight any more: the other nodes need not wait for us.
        if let Some(c) = self.cluster.get() {
            c.leave();
        }
        for b in self.bdevs.list() {
            if let Err(e) = b.sync() {
                tracing::error!(bdev = %b.info().name, "sync at shutdown failed: {e}");
            }
        }
        // No write completes any more and the data is synced: the layout volumes'
        // written-since-allocation bits are final and true; save them, then checkpoint.
        for v in self.layout.all() {
            if let Err(e) = v.persist_written().and_then(|_| v.checkpoint()) {
                tracing::error!(volume = %v.name, "saving layout metadata at shutdown failed: {e}");
            }
        }
    }
}

/// Decode `method`'s params as its handler would, without running it (fuzzing and the corpus
/// replay test); None: no such method.
pub fn decode_params(method: &str, params: &Option<Value>) -> Option<Result<(), RpcError>> {
    bdev::decode_params(method, params)
        .or_else(|| framework::decode_params(method, params))
        .or_else(|| iscsi::decode_params(method, params))
        .or_else(|| layout::decode_params(method, params))
        .or_else(|| nvmf::decode_params(method, params))
        .or_else(|| reservation::decode_params(method, params))
        .or_else(|| cluster::decode_params(method, params))
        .or_else(|| keyring::decode_params(method, params))
}

/// A connection for calls that come from inside the process (config loading).
pub fn internal_conn() -> Arc<Conn> {
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    Arc::new(Conn { id: 0, notify: tx })
}

/// `true` as SPDK returns it from methods with no result.
pub fn ok() -> RpcResult {
    Ok(json!(true))
}
