//! A prefix watch that survives etcd restarts, leader changes and compaction: each (re)start
//! reads the whole prefix (a `Reset`) and then streams changes from the revision after it, so the
//! consumer's view is always "the prefix at some revision, plus every change since". A watcher is
//! *synced* while its stream is live and began after the node's current registration epoch; the
//! node is writable only while every watcher is synced (see `node.rs`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, KeyValue, WatchOptions};

/// What a consumer is told.
pub enum Change<'a> {
    /// The whole prefix as of `rev` (after a start, a reconnect or a compaction).
    Reset { kvs: &'a [KeyValue], rev: i64 },
    Put(&'a KeyValue),
    /// `rev`: the revision of the deletion.
    Delete { key: &'a [u8], rev: i64 },
}

pub type Handler = Box<dyn FnMut(Change<'_>) + Send>;

/// Sync bookkeeping shared with the node's health.
#[derive(Default)]
pub struct Synced {
    /// Registration epoch this watcher last reset in (0: not streaming).
    pub epoch: AtomicU64,
    /// Highest revision delivered.
    pub rev: AtomicU64,
}

const RETRY: Duration = Duration::from_millis(200);

/// Run the watch loop on the cluster runtime until the runtime stops.
pub async fn run(client: Client, prefix: String, mut handler: Handler, epoch: Arc<AtomicU64>, synced: Arc<Synced>) {
    loop {
        let want = epoch.load(Ordering::Acquire);
        if let Err(e) = once(client.clone(), &prefix, &mut handler, &epoch, want, &synced).await {
            tracing::debug!("cluster watch {prefix}: {e}; restarting");
        }
        synced.epoch.store(0, Ordering::Release);
        tokio::time::sleep(RETRY).await;
    }
}

async fn once(
    mut client: Client,
    prefix: &str,
    handler: &mut Handler,
    epoch: &AtomicU64,
    want: u64,
    synced: &Synced,
) -> Result<(), String> {
    let timeout = super::etcd::CALL_TIMEOUT;
    let mut r = tokio::time::timeout(timeout, client.get(prefix, Some(GetOptions::new().with_prefix())))
        .await
        .map_err(|_| "get timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let rev = r.header().map(|h| h.revision()).unwrap_or(0);
    let kvs = r.take_kvs();
    handler(Change::Reset { kvs: &kvs, rev });
    synced.rev.store(rev as u64, Ordering::Release);
    let mut stream = tokio::time::timeout(
        timeout,
        client.watch(prefix, Some(WatchOptions::new().with_prefix().with_start_revision(rev + 1))),
    )
    .await
    .map_err(|_| "watch timed out".to_string())?
    .map_err(|e| e.to_string())?;
    synced.epoch.store(want, Ordering::Release);
    loop {
        if epoch.load(Ordering::Acquire) != want {
            return Err("registration changed".into());
        }
        let msg = match tokio::time::timeout(RETRY, stream.message()).await {
            Err(_) => continue,
            Ok(m) => m.map_err(|e| e.to_string())?,
        };
        let Some(resp) = msg else { return Err("stream ended".into()) };
        if resp.canceled() {
            return Err(format!("watch canceled (compacted at {})", resp.compact_revision()));
        }
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            match ev.event_type() {
                EventType::Put => handler(Change::Put(kv)),
                EventType::Delete => handler(Change::Delete { key: kv.key(), rev: kv.mod_revision() }),
            }
            synced.rev.fetch_max(kv.mod_revision() as u64, Ordering::AcqRel);
        }
        if let Some(h) = resp.header() {
            synced.rev.fetch_max(h.revision() as u64, Ordering::AcqRel);
        }
    }
}
