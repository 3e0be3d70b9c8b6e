//! Fuzz target `iscsi_header`: the body and its input format are `entries::iscsi_header` (fuzz/entries.rs), shared
//! with the corpus replay test. Run it as fuzz/README.md says.
#![no_main]

#[path = "../entries.rs"]
mod entries;

libfuzzer_sys::fuzz_target!(|data: &[u8]| entries::iscsi_header(data));
