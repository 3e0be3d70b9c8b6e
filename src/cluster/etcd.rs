//! The etcd connection: a small runtime of its own (off the reactors) and blocking helpers for
//! the management and persist threads that call it.

use std::future::Future;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, DeleteOptions, GetOptions, KeyValue, Txn, TxnResponse};

use super::ClusterError;

/// Every etcd call is bounded: a node that cannot reach etcd must find out, not hang.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Etcd {
    rt: tokio::runtime::Runtime,
    client: Client,
}

fn err(e: etcd_client::Error) -> ClusterError {
    ClusterError::Etcd(e.to_string())
}

impl Etcd {
    pub fn connect(endpoints: &[String]) -> Result<Etcd, ClusterError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("cluster")
            .enable_all()
            .build()
            .map_err(|e| ClusterError::Etcd(format!("cluster runtime: {e}")))?;
        let opts = ConnectOptions::new()
            .with_connect_timeout(CALL_TIMEOUT)
            .with_timeout(CALL_TIMEOUT)
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2));
        let eps = endpoints.to_vec();
        let client = rt
            .block_on(async move { tokio::time::timeout(CALL_TIMEOUT, Client::connect(eps, Some(opts))).await })
            .map_err(|_| ClusterError::Unreachable(endpoints.join(",")))?
            .map_err(err)?;
        Ok(Etcd { rt, client })
    }

    /// A client handle (cheap clone) for tasks on the cluster runtime.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    pub fn spawn<F: Future<Output = ()> + Send + 'static>(&self, f: F) {
        self.rt.spawn(f);
    }

    /// Run `f` on the cluster runtime and wait (never call from the cluster runtime itself).
    pub fn block<T: Send + 'static, F: Future<Output = T> + Send + 'static>(&self, f: F) -> T {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv().expect("cluster runtime stopped")
    }

    fn call<T: Send + 'static, F>(&self, f: impl FnOnce(Client) -> F) -> Result<T, ClusterError>
    where
        F: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let fut = f(self.client.clone());
        self.block(async move { tokio::time::timeout(CALL_TIMEOUT, fut).await })
            .map_err(|_| ClusterError::Timeout)?
            .map_err(err)
    }

    /// One key: (value, mod revision), and the store's revision.
    pub fn get(&self, key: &str) -> Result<(Option<(Vec<u8>, i64)>, i64), ClusterError> {
        let key = key.to_string();
        let r = self.call(|mut c| async move { c.get(key, None).await })?;
        let rev = r.header().map(|h| h.revision()).unwrap_or(0);
        Ok((r.kvs().first().map(|kv| (kv.value().to_vec(), kv.mod_revision())), rev))
    }

    /// Every key under `prefix`, and the store's revision.
    pub fn get_prefix(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), ClusterError> {
        let key = prefix.to_string();
        let mut r = self.call(|mut c| async move { c.get(key, Some(GetOptions::new().with_prefix())).await })?;
        let rev = r.header().map(|h| h.revision()).unwrap_or(0);
        Ok((r.take_kvs(), rev))
    }

    pub fn txn(&self, t: Txn) -> Result<TxnResponse, ClusterError> {
        self.call(|mut c| async move { c.txn(t).await })
    }

    pub fn delete_prefix(&self, prefix: &str) -> Result<(), ClusterError> {
        let key = prefix.to_string();
        self.call(|mut c| async move { c.delete(key, Some(DeleteOptions::new().with_prefix())).await })?;
        Ok(())
    }
}
