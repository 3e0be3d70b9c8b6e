//! JSON-RPC 2.0 management plane with SPDK's method names, and the application root that every
//! method reaches the layers below through.

pub mod bdev;
pub mod error;
pub mod framework;
pub mod iscsi;
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
    pub registry: Registry,
    state: AtomicU8,
    init_done: tokio::sync::watch::Sender<bool>,
    shutdown: tokio::sync::watch::Sender<bool>,
    shutting_down: AtomicBool,
    log_level: Mutex<String>,
    log_setter: Option<LogSetter>,
    /// Serialises management calls that change state, so each applies whole or not at all.
    pub mgmt: tokio::sync::Mutex<()>,
}

impl App {
    pub fn new(reactors: ReactorSet, wait_for_rpc: bool, log_setter: Option<LogSetter>) -> Arc<App> {
        let bdevs = Arc::new(BdevRegistry::default());
        let mut registry = Registry::default();
        framework::register(&mut registry);
        bdev::register(&mut registry);
        nvmf::register(&mut registry);
        iscsi::register(&mut registry);
        reservation::register(&mut registry);
        let state = if wait_for_rpc { STARTUP } else { RUNTIME };
        Arc::new(App {
            reactors,
            volumes: Arc::new(VolumeRegistry::new(bdevs.clone())),
            bdevs,
            registry,
            state: AtomicU8::new(state),
            init_done: tokio::sync::watch::channel(!wait_for_rpc).0,
            shutdown: tokio::sync::watch::channel(false).0,
            shutting_down: AtomicBool::new(false),
            log_level: Mutex::new("NOTICE".into()),
            log_setter,
            mgmt: tokio::sync::Mutex::new(()),
        })
    }

    pub fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    /// framework_start_init: leave the startup state.
    pub fn start_init(&self) -> bool {
        let ok = self.state.compare_exchange(STARTUP, RUNTIME, Ordering::AcqRel, Ordering::Acquire).is_ok();
        if ok {
            self.init_done.send_replace(true);
        }
        ok
    }

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
        for b in self.bdevs.list() {
            if let Err(e) = b.sync() {
                tracing::error!(bdev = %b.info().name, "sync at shutdown failed: {e}");
            }
        }
    }
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
