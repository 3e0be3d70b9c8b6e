//! What the hostile-client tests measure of the target process: resident memory, its peak, and
//! the longest reactor loop (a stall). With `PALISADE_HOSTILE_REPORT=FILE` each test appends one
//! JSON line of its figures, which `bench/hostile/run.sh` turns into the table in bench/README.md.

use std::io::Write;

use serde_json::{json, Value};

use super::Target;

fn status_kib(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap()
}

/// Resident memory now (KiB).
pub fn rss_kib(t: &Target) -> u64 {
    status_kib(t.pid(), "VmRSS:")
}

/// Peak resident memory since the target started (KiB).
pub fn hwm_kib(t: &Target) -> u64 {
    status_kib(t.pid(), "VmHWM:")
}

/// Longest loop iteration of any reactor since the previous call (microseconds).
pub fn max_stall_us(t: &Target) -> u64 {
    let st = t.rpc("framework_get_reactors", Value::Null);
    st["reactors"].as_array().unwrap().iter().filter_map(|r| r["max_loop_us"].as_u64()).max().unwrap_or(0)
}

/// Figures of one abuse: RSS before, at peak and after the abusers left, and the worst stall.
pub struct Figures {
    pub baseline_kib: u64,
    pub peak_kib: u64,
    pub after_kib: u64,
    pub stall_us: u64,
}

/// Append the figures to `$PALISADE_HOSTILE_REPORT` (if set) and print them.
pub fn report(abuse: &str, f: &Figures) {
    let line = json!({"abuse": abuse, "baseline_kib": f.baseline_kib, "peak_kib": f.peak_kib, "after_kib": f.after_kib, "stall_us": f.stall_us});
    eprintln!("hostile: {line}");
    if let Ok(path) = std::env::var("PALISADE_HOSTILE_REPORT") {
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
        writeln!(file, "{line}").unwrap();
    }
}
