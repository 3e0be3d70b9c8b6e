//! Fuzz target `iscsi_login`: the body and its input format are `entries::iscsi_login` (fuzz/entries.rs), shared
//! with the corpus replay test. Run it as fuzz/README.md says.
#![no_main]

#[path = "../entries.rs"]
mod entries;

libfuzzer_sys::fuzz_target!(|data: &[u8]| entries::iscsi_login(data));
