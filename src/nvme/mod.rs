//! NVMe command set: admin and I/O commands, identify/log/feature structures.
pub mod reservation;
