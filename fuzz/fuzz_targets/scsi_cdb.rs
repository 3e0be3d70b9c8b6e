//! Fuzz target `scsi_cdb`: the body and its input format are `entries::scsi_cdb` (fuzz/entries.rs), shared
//! with the corpus replay test. Run it as fuzz/README.md says.
#![no_main]

#[path = "../entries.rs"]
mod entries;

libfuzzer_sys::fuzz_target!(|data: &[u8]| entries::scsi_cdb(data));
