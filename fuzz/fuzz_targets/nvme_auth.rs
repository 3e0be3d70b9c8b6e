//! Fuzz target `nvme_auth`: the body and its input format are `entries::nvme_auth` (fuzz/entries.rs),
//! shared with the corpus replay test. Run it as fuzz/README.md says.
#![no_main]

#[path = "../entries.rs"]
mod entries;

libfuzzer_sys::fuzz_target!(|data: &[u8]| entries::nvme_auth(data));
