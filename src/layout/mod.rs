//! Layout store: allocator, file extent maps, grants, commit, recall, fencing, metadata journal,
//! and the data-path guard (pNFS SCSI/NVMe layouts, RFC 5663 / 8154 / 9561 terms).
//!
//! - [`state`]: the state and the primitive records that change it (the only mutation path);
//! - [`alloc`], [`extent`], [`bitmap`]: free-extent tree and reference counts, extent maps,
//!   written-since-allocation bits;
//! - [`store`]: a layout volume and the operations the metadata server calls;
//! - [`journal`]: the [`journal::MetaStore`] interface and the checksummed file journal
//!   (`metadata_path`; on-disk format in `FORMAT.md`);
//! - [`bdev_journal`]: the same frames on a block device (`metadata_bdev`): two header slots and
//!   two halves, so a checkpoint never overwrites live data; [`metadev`] is the block-device
//!   interface it writes through (a bdev via the reactors, or a file/device for offline fsck);
//! - [`etcd_meta`]: the same state in etcd (`metadata_cluster`), shared by every node exporting
//!   the data device: head-compared appends, checkpoints in 1 MiB pieces, a watch that feeds each
//!   node's follower (see `store` for how operations are re-judged when another node won);
//! - [`recall`]: the [`recall::Notifier`] and [`recall::Fencer`] hooks;
//! - [`guard`]: what the volume layer asks on every I/O;
//! - [`fsck`]: the offline consistency proof.
//!
//! This layer imports nothing above it (no volume, protocol or RPC code): they call into it.
//!
//! # How it is wired (rpc, volume and reservation layers)
//!
//! - **Fencing**: `rpc::layout::ReservationFencer` implements [`recall::Fencer`] with the
//!   reservation engine: an operator PREEMPT AND ABORT of the client's `pr_key` on the data volume
//!   (`Reservations::operator_preempt_abort`), which completes only after the volume's fence has
//!   drained every write submitted before it, on every reactor and both protocols. The store
//!   publishes a guard snapshot with the client fenced *before* calling it, so nothing of the
//!   client can be admitted afterwards and nothing admitted before is still in flight when its
//!   extents are freed. It is the default of `LayoutApp` (`set_fencer` replaces it). Unfencing
//!   needs no engine action: the preempted registrations are gone, the client registers again.
//! - **Data path**: every protocol's I/O passes `Volume::submit`, which consults the guard
//!   (`volume::guard_hook`). A refused write comes back as `Denied::WriteProtected` (SCSI: DATA
//!   PROTECT / WRITE PROTECTED 27/00; NVMe/TCP: Namespace Is Write Protected). Reads needing
//!   zero-fill complete with zeros there.
//! - **Identity**: the hook passes the PR key the nexus registered on the volume
//!   (`reservation::Snapshot::key_of`, lock-free, no allocation) as `Who::key`; the guard matches
//!   it first, then the initiator name (iSCSI, the part of the initiator port before `,i,0x`) and
//!   the host NQN / host ID (NVMe) against the clients' identities.
//!
//! # Known limits
//!
//! - Written-since-allocation bits behave like a volatile write cache: they are journaled
//!   (`pending_written` records) when the initiator flushes (SYNCHRONIZE CACHE, NVMe Flush) or
//!   writes FUA through the volume, and at a clean shutdown; guarded volumes report a volatile
//!   write cache (SCSI caching page WCE=1, NVMe VWC) so initiators do flush; an initiator that
//!   turns WCE off gets every write FUA. Blocks written but neither flushed nor
//!   committed before a crash read as zeros afterwards (never stale) and a commit under
//!   `enforce` leaves them unwritten. While the guard is `off`, commits trust the client.
//! - With [`recall::GuardOnlyFencer`] instead of the reservation fencer, a write already past the
//!   guard when a fence starts can still land in blocks the fence frees.
//! - Metadata on a bdev (`metadata_bdev`) has a fixed size: a checkpoint image that does not fit in
//!   half of it fails with "metadata bdev too small" (operations that need the journal then fail
//!   with ENOSPC; the data already committed stays intact).
//! - Truncating to a size inside a block keeps that block mapped; the store cannot zero its tail
//!   (no data path of its own), so the metadata server must zero it before growing the file again.
//! - Metadata in etcd: one transaction's records must fit in 1 MiB (larger ones fail with an
//!   error saying so); recall deadlines are wall-clock, so nodes' clocks must agree; a node that
//!   reloads a checkpoint written by another node keeps its live written-since-allocation bits
//!   only for unwritten extents that did not change; a transaction whose etcd answer is lost
//!   (timeout) may have been committed although the call failed (the node applies it from the
//!   watch, so its view never diverges from etcd).
//! - A reflink clones a whole file; a partial return in the middle of a grant frees its unwritten
//!   extents there but keeps the grant's range.
#![doc = include_str!("FORMAT.md")]

pub mod alloc;
pub mod bdev_journal;
pub mod bitmap;
pub mod error;
pub mod etcd_meta;
pub mod extent;
pub mod fsck;
pub mod guard;
pub mod journal;
pub mod metadev;
pub mod ranges;
pub mod recall;
pub mod state;
pub mod store;
pub mod types;

pub use error::LayoutError;
pub use store::{DataDev, Hooks, LayoutVolume, Options};
pub use types::{ExtentState, FileId, IoMode, Policy, RecallReason};

#[cfg(test)]
mod bdev_tests;
#[cfg(test)]
mod shared_tests;
#[cfg(test)]
mod tests;
