//! Palisade: a user-space, poll-mode block storage target (iSCSI, NVMe-oF/TCP, persistent
//! reservations, pNFS SCSI layouts), managed by JSON-RPC with SPDK's method names.
//!
//! Layers, top to bottom (a module only imports the ones below it): `cli` → `rpc` → `config` →
//! `iscsi`, `nvmf` → `scsi`, `nvme` → `volume` → `layout`, `reservation`, `bdev` → `reactor`.

pub mod bdev;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod iscsi;
pub mod keyring;
pub mod layout;
pub mod nvme;
pub mod nvmf;
pub mod reactor;
pub mod reservation;
pub mod rpc;
pub mod scsi;
pub mod volume;
