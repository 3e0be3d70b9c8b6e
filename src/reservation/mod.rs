//! Persistent reservations: one engine per volume, shared by SCSI and NVMe.
