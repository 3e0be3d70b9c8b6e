//! What the store tells the world: recall notifications and fencing.
//!
//! The store does not know JSON-RPC or the reservation engine; it calls these traits. The RPC
//! layer implements [`Notifier`] (a `layout_recall` notification to subscribed connections) and
//! [`Fencer`] (`rpc::layout::ReservationFencer`: PREEMPT AND ABORT of the client's key on the
//! volume through the reservation engine, returning only when no write of the client can still
//! land).

use serde::Serialize;

use super::types::{FileId, RecallReason};

#[derive(Clone, Debug, Serialize)]
pub struct RecallEvent {
    pub volume: String,
    pub grant: u64,
    pub client: String,
    pub file: FileId,
    pub reason: RecallReason,
}

pub trait Notifier: Send + Sync {
    fn recall(&self, ev: &RecallEvent);
}

/// Cuts a client off the volume's data paths.
pub trait Fencer: Send + Sync {
    /// Called before the client's extents are freed; must return only when none of the client's
    /// writes can still land (PREEMPT AND ABORT semantics). An error aborts the fence.
    fn fence(&self, volume: &str, client: &str, pr_key: u64) -> Result<(), String>;
    /// The client may register again (its key is no longer preempted by us).
    fn unfence(&self, _volume: &str, _client: &str, _pr_key: u64) -> Result<(), String> {
        Ok(())
    }
}

/// Without the reservation engine (tests, tools): the guard alone refuses the fenced client's
/// writes; a write already admitted may still land.
pub struct GuardOnlyFencer;

impl Fencer for GuardOnlyFencer {
    fn fence(&self, volume: &str, client: &str, pr_key: u64) -> Result<(), String> {
        tracing::info!(volume, client, pr_key = format_args!("{pr_key:#x}"), "fenced by the layout guard (no reservation engine wired)");
        Ok(())
    }
}

/// Discards notifications (tests, offline tools).
pub struct NoNotifier;

impl Notifier for NoNotifier {
    fn recall(&self, _ev: &RecallEvent) {}
}
