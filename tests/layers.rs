//! The dependency picture of DESIGN.md, checked on the source: every `crate::` path and every
//! `super::` path a module names is resolved to the module it points at, and
//! - no layer imports one above it (cli → rpc/config → iscsi, nvmf → scsi, nvme → volume →
//!   layout, reservation → bdev → cluster → reactor);
//! - the NVMe-oF core (`nvmf/` without its transports) names no transport: `nvmf/tcp` and
//!   `nvmf/loop` → `nvmf` core → `nvme/` → `volume/`; transports do not name each other;
//! - wire formats (`iscsi/pdu.rs`, `nvmf/tcp/pdu.rs`, `nvme/spec.rs`) depend on nothing above
//!   them;
//! - the modules of `scsi/` and of the NVMe-oF core import each other without cycles.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rank(top: &str) -> Option<u32> {
    Some(match top {
        "cli" | "main" => 9,
        "rpc" | "config" => 8,
        "iscsi" | "nvmf" => 7,
        "scsi" | "nvme" => 6,
        "volume" => 5,
        "layout" | "reservation" => 4,
        "bdev" => 3,
        "cluster" => 2,
        "reactor" | "keyring" => 1,
        _ => return None,
    })
}

/// Module path of a source file: src/nvmf/tcp/conn.rs → ["nvmf", "tcp", "conn"].
fn module_of(src: &Path, f: &Path) -> Vec<String> {
    let rel = f.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string()).collect();
    if parts.last().is_some_and(|l| l == "mod") {
        parts.pop();
    }
    parts
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Code without comments and string literals (so prose naming a module does not count).
fn code_only(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// Paths named by `crate::a::b` and `super::a` (resolved against `me`), as module paths.
fn references(code: &str, me: &[String], is_mod_rs: bool) -> BTreeSet<Vec<String>> {
    let mut refs = BTreeSet::new();
    let words: Vec<&str> = code.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':' || c == '#')).filter(|w| !w.is_empty()).collect();
    for w in words {
        let segs: Vec<&str> = w.split("::").collect();
        let (mut base, rest): (Vec<String>, &[&str]) = match segs.first() {
            Some(&"crate") => (Vec::new(), &segs[1..]),
            Some(&"super") => {
                // super:: from a mod.rs is the parent of the directory's module.
                let mut b = me.to_vec();
                if !is_mod_rs || !b.is_empty() {
                    b.pop();
                }
                let mut r = &segs[1..];
                while r.first() == Some(&"super") {
                    b.pop();
                    r = &r[1..];
                }
                (b, r)
            }
            _ => continue,
        };
        for s in rest.iter().take(2) {
            if s.is_empty() || s.chars().next().unwrap().is_uppercase() || *s == "self" || s.starts_with('{') {
                break;
            }
            base.push(s.trim_start_matches("r#").to_string());
        }
        if !base.is_empty() {
            refs.insert(base);
        }
    }
    refs
}

fn is_nvmf_core(m: &[String]) -> bool {
    m.first().is_some_and(|t| t == "nvmf") && !matches!(m.get(1).map(String::as_str), Some("tcp" | "loop" | "host"))
}

fn has_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(n: &str, e: &BTreeMap<String, BTreeSet<String>>, state: &mut BTreeMap<String, u8>, stack: &mut Vec<String>) -> bool {
        match state.get(n) {
            Some(1) => {
                stack.push(n.to_string());
                return true;
            }
            Some(2) => return false,
            _ => {}
        }
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in e.get(n).into_iter().flatten() {
            if visit(m, e, state, stack) {
                return true;
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        false
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        let mut stack = Vec::new();
        if visit(n, edges, &mut state, &mut stack) {
            return Some(stack);
        }
    }
    None
}

#[test]
fn dependencies_point_down_and_transports_stay_outside_the_core() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut bad = Vec::new();
    let mut scsi_edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut nvmf_edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &all {
        let me = module_of(&src, f);
        if me.is_empty() || me[0] == "lib" {
            continue;
        }
        let is_mod_rs = f.file_name().is_some_and(|n| n == "mod.rs");
        let code = code_only(&std::fs::read_to_string(f).unwrap());
        // Test modules may reach anywhere.
        let code = match code.find("#[cfg(test)]") {
            Some(i) => code[..i].to_string(),
            None => code,
        };
        let Some(my_rank) = rank(&me[0]) else { continue };
        let name = me.join("/");
        for r in references(&code, &me, is_mod_rs) {
            let Some(their_rank) = rank(&r[0]) else { continue };
            if their_rank > my_rank {
                bad.push(format!("{name} imports {} (a layer above it)", r.join("::")));
            }
            if is_nvmf_core(&me) && r[0] == "nvmf" && matches!(r.get(1).map(String::as_str), Some("tcp" | "loop" | "host")) {
                bad.push(format!("NVMe-oF core module {name} names transport {}", r.join("::")));
            }
            if me.first().map(String::as_str) == Some("nvmf") && me.get(1).is_some_and(|t| t == "tcp") && r.get(1).is_some_and(|t| t == "loop") {
                bad.push(format!("{name} (tcp) names the loop transport"));
            }
            if me.first().map(String::as_str) == Some("nvmf") && me.get(1).is_some_and(|t| t == "loop") && r.get(1).is_some_and(|t| t == "tcp") {
                bad.push(format!("{name} (loop) names the tcp transport"));
            }
            let wire = matches!(name.as_str(), "iscsi/pdu" | "nvmf/tcp/pdu" | "nvme/spec");
            if wire && r.join("/") != name && !(r.len() >= 2 && r[0] == "reactor") {
                bad.push(format!("wire format {name} depends on {}", r.join("::")));
            }
            if me[0] == "scsi" && r[0] == "scsi" && me.len() > 1 && r.len() > 1 && me[1] != r[1] {
                scsi_edges.entry(me[1].clone()).or_default().insert(r[1].clone());
            }
            if is_nvmf_core(&me) && is_nvmf_core(&r) && me.len() > 1 && r.len() > 1 && me[1] != r[1] {
                nvmf_edges.entry(me[1].clone()).or_default().insert(r[1].clone());
            }
        }
    }
    if let Some(c) = has_cycle(&scsi_edges) {
        bad.push(format!("import cycle in scsi/: {}", c.join(" → ")));
    }
    // The core's qpair and its command modules extend one type across files (impl QPair):
    // they may name each other; every other cycle is a design error.
    for m in ["qpair", "io_cmd", "resv_cmd"] {
        nvmf_edges.remove(m);
    }
    if let Some(c) = has_cycle(&nvmf_edges) {
        bad.push(format!("import cycle in the NVMe-oF core: {}", c.join(" → ")));
    }
    assert!(bad.is_empty(), "dependency rules broken:\n{}", bad.join("\n"));
}
