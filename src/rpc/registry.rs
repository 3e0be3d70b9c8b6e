//! The method table and the subsystem list (what save_config walks).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::{RpcError, RpcResult};
use super::App;
use crate::config::Entry;

/// States a method may be called in (SPDK_RPC_STARTUP / SPDK_RPC_RUNTIME).
pub const STARTUP: u8 = 1;
pub const RUNTIME: u8 = 2;
pub const ANY: u8 = STARTUP | RUNTIME;

/// The connection a call arrived on: notifications (layout_recall) go back through it.
pub struct Conn {
    pub id: u64,
    pub notify: tokio::sync::mpsc::UnboundedSender<Value>,
}

pub struct Call {
    pub app: Arc<App>,
    pub params: Option<Value>,
    pub conn: Arc<Conn>,
}

impl Call {
    /// Decode the params into `T`; errors name the field and what was wrong with it.
    pub fn params<T: DeserializeOwned>(&self) -> Result<T, RpcError> {
        decode_params_as(&self.params)
    }
}

/// Decode a call's params into `T`; errors name the field and what was wrong with it.
pub fn decode_params_as<T: DeserializeOwned>(params: &Option<Value>) -> Result<T, RpcError> {
    let v = match params {
        None | Some(Value::Null) => Value::Object(Default::default()),
        // SPDK decodes params as an object only; serde would accept a struct as a sequence.
        Some(Value::Array(_)) => return Err(RpcError::invalid_params("params must be an object, not an array")),
        Some(v) => v.clone(),
    };
    serde_path_to_error::deserialize::<_, T>(v).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            RpcError::invalid_params(e.inner())
        } else {
            RpcError::invalid_params(format!("{path}: {}", e.inner()))
        }
    })
}

pub type RpcFuture = Pin<Box<dyn Future<Output = RpcResult> + Send>>;
pub type HandlerFn = Box<dyn Fn(Call) -> RpcFuture + Send + Sync>;

pub struct Method {
    pub name: &'static str,
    pub states: u8,
    pub handler: HandlerFn,
}

pub struct Subsystem {
    pub name: &'static str,
    pub depends_on: &'static [&'static str],
    pub config: fn(&App) -> Vec<Entry>,
}

#[derive(Default)]
pub struct Registry {
    methods: BTreeMap<&'static str, Method>,
    subsystems: Vec<Subsystem>,
}

impl Registry {
    /// Add a method; `f` is an async fn taking the call.
    pub fn add<F, Fut>(&mut self, name: &'static str, states: u8, f: F)
    where
        F: Fn(Call) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = RpcResult> + Send + 'static,
    {
        let prev = self.methods.insert(name, Method { name, states, handler: Box::new(move |c| Box::pin(f(c))) });
        assert!(prev.is_none(), "method {name} registered twice");
    }
    pub fn add_subsystem(&mut self, s: Subsystem) {
        self.subsystems.push(s);
    }
    pub fn get(&self, name: &str) -> Option<&Method> {
        self.methods.get(name)
    }
    pub fn methods(&self) -> impl Iterator<Item = &Method> {
        self.methods.values()
    }
    pub fn subsystems(&self) -> &[Subsystem] {
        &self.subsystems
    }
}
