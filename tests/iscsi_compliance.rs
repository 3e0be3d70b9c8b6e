//! libiscsi's compliance suite (`iscsi-test-cu`) against the built binary: a RAM LUN behind a
//! target node with two portals (MultipathIO), two initiator names (PR and RESERVE tests),
//! data-destructive tests allowed. Every test named in tests/iscsi-expected-pass.txt must pass;
//! that list only grows. CUnit prints skipped tests as passed, so the per-test lines are parsed:
//! a test that printed `[SKIPPED]` before its result is a skip.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::{free_port, require, Target};
use serde_json::json;

const IQN: &str = "iqn.2016-06.io.spdk:compliance";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Pass,
    Fail,
    Skip,
}

/// Parse iscsi-test-cu output into FAMILY.SUITE.TEST → outcome.
fn parse(family: &str, out: &str) -> BTreeMap<String, Outcome> {
    let mut res = BTreeMap::new();
    let mut suite = String::new();
    // (name, text seen since "Test: name ...")
    let mut cur: Option<(String, String)> = None;
    let finish = |cur: &mut Option<(String, String)>, res: &mut BTreeMap<String, Outcome>| {
        if let Some((name, text)) = cur.take() {
            res.insert(name, outcome(&text));
        }
    };
    for line in out.lines() {
        let t = line.trim_start();
        if let Some(s) = t.strip_prefix("Suite: ") {
            finish(&mut cur, &mut res);
            suite = s.trim().to_string();
        } else if let Some(rest) = t.strip_prefix("Test: ") {
            finish(&mut cur, &mut res);
            let (name, tail) = rest.split_once(" ...").unwrap_or((rest, ""));
            cur = Some((format!("{family}.{suite}.{}", name.trim()), tail.to_string()));
        } else if t.starts_with("Run Summary") {
            finish(&mut cur, &mut res);
        } else if let Some((_, text)) = cur.as_mut() {
            text.push('\n');
            text.push_str(line);
        }
    }
    finish(&mut cur, &mut res);
    res
}

/// The result token is the first `passed` or bare `FAILED` (not `[FAILED]`, which tests print in
/// messages); a `[SKIPPED]` before it makes a pass a skip.
fn outcome(text: &str) -> Outcome {
    let mut first: Option<(usize, Outcome)> = None;
    if let Some(i) = text.find("passed") {
        first = Some((i, Outcome::Pass));
    }
    let mut from = 0;
    while let Some(j) = text[from..].find("FAILED") {
        let i = from + j;
        if i == 0 || text.as_bytes()[i - 1] != b'[' {
            if first.map_or(true, |(k, _)| i < k) {
                first = Some((i, Outcome::Fail));
            }
            break;
        }
        from = i + 6;
    }
    match first {
        None => Outcome::Fail,
        Some((_, Outcome::Fail)) => Outcome::Fail,
        Some((i, _)) if text[..i].contains("[SKIPPED]") => Outcome::Skip,
        Some(_) => Outcome::Pass,
    }
}

fn run_family(family: &str, urls: &[String]) -> BTreeMap<String, Outcome> {
    let out = Command::new("timeout")
        .args(["900", "iscsi-test-cu", "-d", "-t", family, "-i", "iqn.2024-01.io.palisade:initiator1", "-I", "iqn.2024-01.io.palisade:initiator2"])
        .args(urls)
        .output()
        .expect("run iscsi-test-cu");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let res = parse(family, &text);
    assert!(!res.is_empty(), "no test results parsed from iscsi-test-cu -t {family}:\n{text}");
    res
}

#[test]
fn parser_handles_skips_and_interleaved_output() {
    let out = "Suite: S\n  Test: A ...passed    [SKIPPED] teardown noise\n  Test: B ...    [SKIPPED] not implemented\npassed\n  Test: C ...    [FAILED] WRITE10 failed\n    [FAILED] again\npassed\n  Test: D ...FAILED\n    1. x.c:1 - CU_ASSERT\nRun Summary: x\n";
    let r = parse("F", out);
    assert_eq!(r["F.S.A"], Outcome::Pass);
    assert_eq!(r["F.S.B"], Outcome::Skip);
    assert_eq!(r["F.S.C"], Outcome::Pass);
    assert_eq!(r["F.S.D"], Outcome::Fail);
}

#[test]
fn libiscsi_compliance_suite() {
    if !require("iscsi-test-cu") {
        return;
    }
    let (p1, p2) = (free_port(), free_port());
    let t = Target::start(&["-m", "0x1"]);
    t.rpc("bdev_malloc_create", json!({"name": "Malloc0", "num_blocks": 131072, "block_size": 512}));
    t.rpc("iscsi_create_portal_group", json!({"tag": 1, "portals": [
        {"host": "127.0.0.1", "port": p1.to_string()}, {"host": "127.0.0.1", "port": p2.to_string()}]}));
    t.rpc("iscsi_create_initiator_group", json!({"tag": 1, "initiators": ["ANY"], "netmasks": ["127.0.0.1/32"]}));
    t.rpc("iscsi_create_target_node", json!({"name": IQN, "alias_name": "compliance", "luns": [{"bdev_name": "Malloc0", "lun_id": 0}],
        "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 1}], "queue_depth": 64}));
    let urls = vec![format!("iscsi://127.0.0.1:{p1}/{IQN}/0"), format!("iscsi://127.0.0.1:{p2}/{IQN}/0")];
    let mut all = run_family("iSCSI", &urls);
    all.extend(run_family("SCSI", &urls));
    t.stop();

    let expected_text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/iscsi-expected-pass.txt")).unwrap();
    let expected: Vec<&str> = expected_text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let count = |fam: &str, o: Outcome| all.iter().filter(|(k, v)| k.starts_with(fam) && **v == o).count();
    for fam in ["iSCSI.", "SCSI."] {
        eprintln!(
            "{fam} pass {} fail {} skip {}",
            count(fam, Outcome::Pass),
            count(fam, Outcome::Fail),
            count(fam, Outcome::Skip)
        );
    }
    let failed: Vec<_> = all.iter().filter(|(_, v)| **v == Outcome::Fail).map(|(k, _)| k.as_str()).collect();
    eprintln!("failing: {failed:?}");
    let new: Vec<_> = all.iter().filter(|(k, v)| **v == Outcome::Pass && !expected.contains(&k.as_str())).map(|(k, _)| k.as_str()).collect();
    eprintln!("passing but not yet in the expected list: {new:?}");
    let regressions: Vec<String> =
        expected.iter().filter(|n| all.get(**n) != Some(&Outcome::Pass)).map(|n| format!("{n}: {:?}", all.get(*n))).collect();
    assert!(regressions.is_empty(), "expected-pass tests that did not pass: {regressions:#?}");
}
