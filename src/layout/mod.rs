//! Layout store: allocator, file extent maps, grants, commit, recall, fencing, metadata journal,
//! and the data-path guard (pNFS SCSI/NVMe layouts, RFC 5663 / 8154 / 9561 terms).
//!
//! - [`state`]: the state and the primitive records that change it (the only mutation path);
//! - [`alloc`], [`extent`], [`bitmap`]: free-extent tree and reference counts, extent maps,
//!   written-since-allocation bits;
//! - [`store`]: a layout volume and the operations the metadata server calls;
//! - [`journal`]: the [`journal::MetaStore`] interface and the checksummed file journal
//!   (on-disk format in `FORMAT.md`);
//! - [`recall`]: the [`recall::Notifier`] and [`recall::Fencer`] hooks;
//! - [`guard`]: what the volume layer asks on every I/O;
//! - [`fsck`]: the offline consistency proof.
//!
//! This layer imports nothing above it (no volume, protocol or RPC code): they call into it.
//!
//! # Wiring after the front-ends and the reservation engine are merged
//!
//! - **Fencing**: implement [`recall::Fencer`] with the reservation engine (PREEMPT AND ABORT of
//!   `pr_key` on the volume, returning when no write of that key can still land) and install it
//!   once with `app.layout.set_fencer(Arc::new(..))` (`rpc::layout::LayoutApp`); volumes created
//!   before that pick it up too. Until then the guard alone refuses a fenced client's writes.
//! - **Data path**: nothing to do in the front-ends: every protocol's I/O already passes
//!   `Volume::submit`, which consults the guard (`volume::guard_hook`). A refused write comes
//!   back as `Denied::WriteProtected` (SCSI: DATA PROTECT / WRITE PROTECTED; NVMe: Access
//!   Denied). Reads needing zero-fill complete with zeros there; nothing else changes.
//! - **Identity**: the hook maps an iSCSI nexus by initiator name (the part of the initiator port
//!   before `,i,0x`) and an NVMe host by host NQN or host ID (a client identity written as a UUID)
//!   to a client. To map by registered PR key instead, pass `Who { key: Some(k), .. }` from the
//!   reservation engine's registration of the nexus (see `guard_hook::who`).
//!
//! # Known limits
//!
//! - Written-since-allocation bits live in memory: after a restart (or while the guard is `off`,
//!   when commits trust the client) blocks written before are not known, so they read as zeros
//!   and a commit under `enforce` leaves them unwritten.
//! - Without a [`recall::Fencer`] wired, a write already past the guard when a fence starts can
//!   still land in blocks the fence frees; PREEMPT AND ABORT closes that window.
//! - Metadata on a bdev (`metadata_bdev`) is not implemented; only a file journal is.
//! - Truncating to a size inside a block keeps that block mapped; the store cannot zero its tail
//!   (no data path of its own), so the metadata server must zero it before growing the file again.
//! - A reflink clones a whole file; a partial return in the middle of a grant frees its unwritten
//!   extents there but keeps the grant's range.
#![doc = include_str!("FORMAT.md")]

pub mod alloc;
pub mod bitmap;
pub mod error;
pub mod extent;
pub mod fsck;
pub mod guard;
pub mod journal;
pub mod recall;
pub mod state;
pub mod store;
pub mod types;

pub use error::LayoutError;
pub use store::{DataDev, Hooks, LayoutVolume, Options};
pub use types::{ExtentState, FileId, IoMode, Policy, RecallReason};

#[cfg(test)]
mod tests;
