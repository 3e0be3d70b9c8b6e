//! `palisade fsck` as a command: exit 0 on consistent metadata (a torn tail is fine), non-zero on
//! damage in the middle of the journal, and 0 again after `--repair`.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::BIN;
use palisade::layout::journal::{FileJournal, FRAME_HDR, SB_SIZE};
use palisade::layout::recall::{GuardOnlyFencer, NoNotifier};
use palisade::layout::{DataDev, FileId, Hooks, IoMode, LayoutVolume, Options, Policy};

fn fsck(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).arg("fsck").args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn fsck_command_exit_codes_and_repair() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("lv.meta");
    let ps = p.to_str().unwrap();
    {
        let dev = DataDev { uuid: uuid::Uuid::from_u128(1), block_size: 4096, num_blocks: 128 };
        let opts = Options { name: "lv".into(), block_size: 0, policy: Policy::Off, recall_timeout: Duration::from_secs(1) };
        let hooks = Hooks { notifier: Arc::new(NoNotifier), fencer: Arc::new(GuardOnlyFencer) };
        let v = LayoutVolume::open(Box::new(FileJournal::new(&p)), false, &dev, &opts, hooks).unwrap();
        v.client_register("A", 1, vec![]).unwrap();
        for i in 0..4 {
            v.file_create(&FileId::Num(i)).unwrap();
            let g = v.layout_get(&FileId::Num(i), "A", 0, 16384, 0, IoMode::Rw).unwrap();
            v.layout_commit(g.grant, &[(0, 8192)], None).unwrap();
        }
    }
    let (code, out) = fsck(&["--metadata", ps]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("files 4") && out.contains("grants 4") && out.contains("consistent"), "{out}");
    let (code, out) = fsck(&["--metadata", ps, "--json"]);
    assert_eq!(code, 0);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["summary"]["committed_blocks"], 8);
    assert_eq!(j["summary"]["uncommitted_blocks"], 8);
    // A data device smaller than the volume is reported.
    let small = d.path().join("small.img");
    std::fs::write(&small, vec![0u8; 4096]).unwrap();
    let (code, out) = fsck(&["--metadata", ps, "--bdev", small.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("PROBLEM"), "{out}");
    // Damage in the middle: refused (exit 2), repaired by truncation (exit 0).
    let mut b = std::fs::read(&p).unwrap();
    let ck = u32::from_le_bytes(b[SB_SIZE + 8..SB_SIZE + 12].try_into().unwrap()) as usize;
    b[SB_SIZE + FRAME_HDR + ck + FRAME_HDR + 1] ^= 0x40;
    std::fs::write(&p, &b).unwrap();
    let (code, out) = fsck(&["--metadata", ps]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("refusing to replay"), "{out}");
    let (code, out) = fsck(&["--metadata", ps, "--repair"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("repaired"), "{out}");
    let (code, out) = fsck(&["--metadata", ps]);
    assert_eq!(code, 0, "{out}");
    // Not metadata at all.
    std::fs::write(&p, b"hello").unwrap();
    assert_eq!(fsck(&["--metadata", ps]).0, 2);
}

/// The same on the metadata_bdev layout (an image file as the device): detected by its header,
/// damage in the middle refused, repaired into the other half.
#[test]
fn fsck_of_a_metadata_bdev_image() {
    use palisade::layout::bdev_journal::{BdevJournal, MBLK};
    use palisade::layout::metadev::FileMetaDev;
    use std::os::unix::fs::FileExt;

    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("meta.img");
    let ps = p.to_str().unwrap();
    std::fs::File::create(&p).unwrap().set_len(1 << 20).unwrap();
    let journal = || BdevJournal::new(Box::new(FileMetaDev::open(&p, true).unwrap())).unwrap();
    {
        let dev = DataDev { uuid: uuid::Uuid::from_u128(1), block_size: 4096, num_blocks: 128 };
        let opts = Options { name: "lv".into(), block_size: 0, policy: Policy::Off, recall_timeout: Duration::from_secs(1) };
        let hooks = Hooks { notifier: Arc::new(NoNotifier), fencer: Arc::new(GuardOnlyFencer) };
        let v = LayoutVolume::open(Box::new(journal()), false, &dev, &opts, hooks).unwrap();
        v.client_register("A", 1, vec![]).unwrap();
        for i in 0..4 {
            v.file_create(&FileId::Num(i)).unwrap();
            let g = v.layout_get(&FileId::Num(i), "A", 0, 16384, 0, IoMode::Rw).unwrap();
            v.layout_commit(g.grant, &[(0, 8192)], None).unwrap();
        }
    }
    let (code, out) = fsck(&["--metadata", ps]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("bdev layout") && out.contains("files 4") && out.contains("grants 4") && out.contains("consistent"), "{out}");
    // Damage the first transaction (right after the checkpoint in the active half).
    let mut j = journal();
    j.parse(true).unwrap();
    let h = j.header().unwrap();
    drop(j);
    let at = (2 + h.active as u64 * h.half_blocks + h.ckpt_blocks) * MBLK;
    std::fs::OpenOptions::new().write(true).open(&p).unwrap().write_all_at(b"#", at + 30).unwrap();
    let (code, out) = fsck(&["--metadata", ps]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("refusing to replay"), "{out}");
    let (code, out) = fsck(&["--metadata", ps, "--repair"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("repaired"), "{out}");
    let (code, out) = fsck(&["--metadata", ps]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("files 0"), "everything after the damage is gone: {out}");
}
