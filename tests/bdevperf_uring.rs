//! `palisade bdevperf` on a uring bdev over a temp file: random writes, then random reads with
//! every block verified, and the written pattern visible in the file through std::fs.

mod common;

use std::process::Command;

use palisade::cli::bdevperf::{check_block, BlockCheck};
use serde_json::Value;

fn bdevperf(args: &[&str]) -> Value {
    let o = Command::new(common::BIN).arg("bdevperf").args(args).arg("--json").output().expect("run bdevperf");
    assert!(o.status.success(), "bdevperf {args:?} failed: {}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("bdevperf --json output")
}

#[test]
fn uring_random_writes_then_verified_reads_visible_in_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("disk.img");
    let f = file.to_str().unwrap();
    std::fs::write(&file, vec![0u8; 8 << 20]).unwrap();
    let common_args = ["--uring", f, "--bdev-block-size", "512", "-q", "32", "-o", "4096", "--verify", "--poll", "adaptive", "--warmup", "0", "-t", "1"];

    let mut a = common_args.to_vec();
    a.extend(["-w", "randwrite"]);
    let w = bdevperf(&a);
    assert!(w["writes"].as_u64().unwrap() > 500, "{w}");
    assert_eq!((w["errors"].as_u64(), w["mismatches"].as_u64()), (Some(0), Some(0)));

    // a second process reads what the first wrote: every block is a valid pattern or never written
    let mut a = common_args.to_vec();
    a.extend(["-w", "randread"]);
    let r = bdevperf(&a);
    assert!(r["reads"].as_u64().unwrap() > 500, "{r}");
    assert_eq!((r["errors"].as_u64(), r["mismatches"].as_u64()), (Some(0), Some(0)), "{r}");
    let verified = r["verified_blocks"].as_u64().unwrap();
    let unwritten = r["unwritten_blocks"].as_u64().unwrap();
    assert!(verified > unwritten, "reads found mostly unwritten blocks: {r}");

    // mixed load in one process: reads must see exactly the generation last written
    let mut a = common_args.to_vec();
    a.extend(["-w", "randrw", "-M", "50"]);
    let m = bdevperf(&a);
    assert!(m["reads"].as_u64().unwrap() > 100 && m["writes"].as_u64().unwrap() > 100, "{m}");
    assert_eq!(m["mismatches"].as_u64(), Some(0), "{m}");

    // the data is in the file
    let data = std::fs::read(&file).unwrap();
    let (mut pattern, mut zero) = (0u64, 0u64);
    for (lba, blk) in data.chunks(512).enumerate() {
        match check_block(blk, lba as u64) {
            BlockCheck::Pattern(_) => pattern += 1,
            BlockCheck::Zero => zero += 1,
            BlockCheck::Bad => panic!("block {lba} of the file holds neither zeros nor its pattern"),
        }
    }
    // hundreds of random 4 KiB writes landed: at least 100 distinct units hold their pattern
    assert!(pattern >= 800, "{pattern} pattern blocks, {zero} zero blocks");
}

#[test]
fn sequential_write_covers_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("seq.img");
    std::fs::write(&file, vec![0u8; 1 << 20]).unwrap();
    let f = file.to_str().unwrap();
    let w = bdevperf(&["--uring", f, "-q", "4", "-o", "65536", "-w", "write", "--verify", "--warmup", "0", "-t", "0.5", "--poll", "adaptive"]);
    assert!(w["writes"].as_u64().unwrap() >= 16, "{w}");
    let data = std::fs::read(&file).unwrap();
    let bs = 512;
    for (lba, blk) in data.chunks(bs).enumerate() {
        assert!(matches!(check_block(blk, lba as u64), BlockCheck::Pattern(_)), "block {lba} not written");
    }
}

#[test]
fn bad_arguments() {
    let o = Command::new(common::BIN).args(["bdevperf", "--malloc", "1", "-o", "1000", "-t", "0.1"]).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a multiple of the block size"), "{o:?}");
    let o = Command::new(common::BIN).args(["bdevperf", "-t", "0.1"]).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("choose exactly one bdev"), "{o:?}");
}
