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
