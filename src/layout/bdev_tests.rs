//! The bdev journal on a file-backed device: create, append, reload, checkpoint flips, torn
//! frames and headers, stale frames of older generations, damage in the middle, and devices too
//! small or not ours.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::bdev_journal::{BdevJournal, Probe, MBLK};
use super::journal::{encode_frame_salted, encode_txn, MetaStore, KIND_TXN};
use super::metadev::{FileMetaDev, MetaDev};
use super::recall::{GuardOnlyFencer, NoNotifier};
use super::state::{Record, State, Superblock};
use super::*;

const BS: u64 = 4096;

fn image(size: u64) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("meta.img");
    std::fs::File::create(&p).unwrap().set_len(size).unwrap();
    (d, p)
}

fn journal(p: &Path) -> BdevJournal {
    BdevJournal::new(Box::new(FileMetaDev::open(p, true).unwrap())).unwrap()
}

fn dev() -> DataDev {
    DataDev { uuid: uuid::Uuid::from_u128(9), block_size: 4096, num_blocks: 256 }
}

fn open_vol(j: BdevJournal) -> Result<LayoutVolume, LayoutError> {
    let exists = j.probe()? == Probe::Formatted;
    let opts = Options { name: "lv".into(), block_size: 0, policy: Policy::Off, recall_timeout: Duration::from_secs(5) };
    LayoutVolume::open(Box::new(j), exists, &dev(), &opts, Hooks { notifier: Arc::new(NoNotifier), fencer: Arc::new(GuardOnlyFencer) })
}

fn sb() -> Superblock {
    Superblock { name: "lv".into(), uuid: uuid::Uuid::from_u128(0x1234), block_size: 4096, dev_block_size: 4096, num_blocks: 256, data_uuid: uuid::Uuid::from_u128(9) }
}

fn img(st: &State) -> serde_json::Value {
    serde_json::to_value(st.image()).unwrap()
}

fn f(n: u64) -> FileId {
    FileId::Num(n)
}

/// Apply and append one transaction.
fn txn(j: &mut BdevJournal, st: &mut State, t: Vec<Record>) {
    st.apply_all(&t).unwrap();
    j.append(&t).unwrap();
}

fn poke(p: &Path, off: u64, data: &[u8]) {
    std::fs::OpenOptions::new().write(true).open(p).unwrap().write_all_at(data, off).unwrap();
}

#[test]
fn create_append_reload_through_the_store() {
    let (_d, p) = image(1 << 20);
    let v = open_vol(journal(&p)).unwrap();
    v.client_register("A", 0xa, vec!["iqn.a".into()]).unwrap();
    v.file_create(&f(1)).unwrap();
    let g = v.layout_get(&f(1), "A", 0, 4 * BS, 0, IoMode::Rw).unwrap();
    v.layout_commit(g.grant, &[(0, 4 * BS)], Some(4 * BS)).unwrap();
    let before = v.with_state(img);
    let map = v.file_map(&f(1), 0, 4 * BS).unwrap();
    drop(v);
    let gen0 = {
        let mut j = journal(&p);
        j.parse(true).unwrap();
        j.header().unwrap().generation
    };
    let v = open_vol(journal(&p)).unwrap();
    assert_eq!(v.replay.transactions, 4);
    assert!(v.replay.torn_tail.is_none());
    assert_eq!(v.with_state(img), before);
    assert_eq!(v.file_map(&f(1), 0, 4 * BS).unwrap(), map);
    assert_eq!(map["extents"][0]["state"], "READ_WRITE_DATA", "{map}");
    drop(v);
    // Opening wrote a fresh checkpoint into the other half under the next generation.
    let mut j = journal(&p);
    let parsed = j.parse(true).unwrap();
    assert_eq!(parsed.txns.len(), 0);
    assert_eq!(j.header().unwrap().generation, gen0 + 1);
    assert_eq!(super::journal::load_state(&parsed).map(|s| img(&s)).unwrap(), before);
}

#[test]
fn checkpoints_flip_halves_and_reload() {
    let (_d, p) = image(1 << 20);
    let v = open_vol(journal(&p).with_limits(3, 1 << 30)).unwrap();
    v.client_register("A", 0xa, vec![]).unwrap();
    let mut halves = Vec::new();
    for i in 0..20 {
        v.file_create(&f(i)).unwrap();
        v.file_truncate(&f(i), i * 100).unwrap();
        if i % 5 == 0 {
            let mut j = journal(&p);
            j.parse(true).unwrap();
            halves.push(j.header().unwrap().active);
        }
    }
    let before = v.with_state(img);
    drop(v);
    assert!(halves.contains(&0) && halves.contains(&1), "checkpoints must use both halves: {halves:?}");
    let mut j = journal(&p);
    let parsed = j.parse(true).unwrap();
    assert!(j.header().unwrap().generation >= 10, "{:?}", j.header());
    assert!(parsed.txns.len() < 3);
    let v = open_vol(journal(&p)).unwrap();
    assert_eq!(v.with_state(img), before);
}

#[test]
fn full_journal_checkpoints_and_retries() {
    // Two headers and halves of 4 blocks: a checkpoint block and three journal blocks each.
    let (_d, p) = image(10 * MBLK);
    let mut j = journal(&p);
    let mut st = State::new(sb());
    j.create(&st).unwrap();
    txn(&mut j, &mut st, vec![Record::FileCreate { file: f(1) }]);
    txn(&mut j, &mut st, vec![Record::FileCreate { file: f(2) }]);
    assert!(!j.wants_checkpoint());
    // Two blocks do not fit in the one left.
    let big = vec![Record::FileCreate { file: FileId::Name("x".repeat(5000)) }];
    let e = j.append(&big).unwrap_err();
    assert!(matches!(e, LayoutError::NoSpace(_)), "{e}");
    assert!(j.wants_checkpoint());
    j.checkpoint(&st).unwrap();
    txn(&mut j, &mut st, big);
    // A transaction larger than a half's journal room can never fit.
    let huge = vec![Record::FileCreate { file: FileId::Name("y".repeat(13000)) }];
    let e = j.append(&huge).unwrap_err();
    assert!(e.to_string().contains("metadata bdev too small"), "{e}");
    let (st2, _) = journal(&p).load().unwrap();
    assert_eq!(img(&st2), img(&st));

    // Through the store: many operations on the tiny device all succeed (checkpoints make room).
    let (_d2, p2) = image(10 * MBLK);
    let v = open_vol(journal(&p2)).unwrap();
    v.client_register("A", 0xa, vec![]).unwrap();
    v.file_create(&f(7)).unwrap();
    // Two journal blocks used of three: the next, two-block transaction finds no room, and the
    // store checkpoints and retries it.
    v.file_create(&FileId::Name("x".repeat(5000))).unwrap();
    for i in 0..40 {
        v.file_create(&f(i % 4 + 100 * (i / 4))).unwrap();
    }
    let before = v.with_state(img);
    drop(v);
    assert_eq!(open_vol(journal(&p2)).unwrap().with_state(img), before);
}

#[test]
fn torn_last_frame_is_ignored() {
    let (_d, p) = image(1 << 20);
    let mut j = journal(&p);
    let mut st = State::new(sb());
    j.create(&st).unwrap();
    txn(&mut j, &mut st, vec![Record::FileCreate { file: f(1) }]);
    let before = img(&st);
    // A two-block transaction of which only the first block reached the device.
    let at = j.position().unwrap();
    txn(&mut j, &mut st, vec![Record::FileCreate { file: FileId::Name("z".repeat(6000)) }]);
    drop(j);
    poke(&p, (at + 1) * MBLK, &vec![0u8; MBLK as usize]);
    let (st2, rep) = journal(&p).load().unwrap();
    assert_eq!(img(&st2), before);
    assert_eq!(rep.transactions, 1);
    let (off, why) = rep.torn_tail.expect("torn tail reported");
    assert_eq!(off, at * MBLK);
    assert!(why.contains("checksum"), "{why}");
    // The load checkpointed: the torn frame is gone for good.
    let (st3, rep) = journal(&p).load().unwrap();
    assert!(rep.torn_tail.is_none());
    assert_eq!(img(&st3), before);
}

#[test]
fn torn_header_slot_falls_back_to_the_other() {
    let (_d, p) = image(1 << 20);
    let mut j = journal(&p);
    let mut st = State::new(sb());
    j.create(&st).unwrap(); // generation 1 in slot 1, half A
    txn(&mut j, &mut st, vec![Record::FileCreate { file: f(1) }]);
    txn(&mut j, &mut st, vec![Record::FileCreate { file: f(2) }]);
    // A checkpoint whose header write (generation 2, slot 0) tore.
    j.checkpoint(&st).unwrap();
    assert_eq!(j.header().unwrap().generation, 2);
    drop(j);
    poke(&p, 20, &[0xff; 8]);
    let mut j = journal(&p);
    let parsed = j.parse(true).unwrap();
    assert_eq!(j.header().unwrap().generation, 1);
    assert_eq!(parsed.txns.len(), 2, "the transactions of generation 1 are replayed from half A");
    let (st2, _) = journal(&p).load().unwrap();
    assert_eq!(img(&st2), img(&st));
    // Both slots damaged: refused, saying why.
    poke(&p, MBLK + 20, &[0xff; 8]);
    poke(&p, 20, &[0xff; 8]);
    let e = journal(&p).load().unwrap_err().to_string();
    assert!(e.contains("no valid header") && e.contains("checksum mismatch"), "{e}");
}

#[test]
fn stale_frames_of_older_generations_are_not_replayed() {
    let (_d, p) = image(1 << 20);
    let mut j = journal(&p);
    let mut st = State::new(sb());
    j.create(&st).unwrap();
    for i in 0..6 {
        txn(&mut j, &mut st, vec![Record::FileCreate { file: f(i) }]);
    }
    let g1 = j.header().unwrap();
    j.checkpoint(&st).unwrap(); // → half B
    txn(&mut j, &mut st, vec![Record::FileCreate { file: f(50) }]);
    j.checkpoint(&st).unwrap(); // → half A again; generation 1's frames 2..7 are still after it
    let h = j.header().unwrap();
    assert_eq!((h.active, h.generation), (0, 3));
    assert_eq!(h.ckpt_blocks, g1.ckpt_blocks);
    let expect = img(&st);
    // A frame with exactly the sequence number replay expects next, from generation 1.
    let at = j.position().unwrap();
    let old_salt: Vec<u8> = g1.uuid.iter().copied().chain(g1.generation.to_le_bytes()).collect();
    let stale = encode_frame_salted(KIND_TXN, h.ckpt_seq + 1, &encode_txn(&[Record::FileCreate { file: f(99) }]), &old_salt);
    drop(j);
    let mut j = journal(&p);
    let parsed = j.parse(true).unwrap();
    assert_eq!(parsed.txns.len(), 0);
    assert!(parsed.replay.torn_tail.is_none(), "frames of generation 1 (other sequence numbers) just end the journal");
    poke(&p, at * MBLK, &stale);
    let (st2, rep) = journal(&p).load().unwrap();
    assert_eq!(img(&st2), expect, "the stale frame must not be replayed");
    assert!(!st2.files.contains_key(&f(99)));
    assert!(rep.torn_tail.is_some());
}

#[test]
fn damage_in_the_middle_is_refused() {
    let (_d, p) = image(1 << 20);
    let mut j = journal(&p);
    let mut st = State::new(sb());
    j.create(&st).unwrap();
    let at = j.position().unwrap();
    for i in 0..3 {
        txn(&mut j, &mut st, vec![Record::FileCreate { file: f(i) }]);
    }
    drop(j);
    poke(&p, at * MBLK + 40, b"#");
    let e = journal(&p).load().unwrap_err().to_string();
    assert!(e.contains("refusing to replay"), "{e}");
    // The lenient parse (fsck --repair) stops at the damage.
    let mut j = journal(&p);
    let parsed = j.parse(false).unwrap();
    assert_eq!(parsed.txns.len(), 0);
    assert!(parsed.replay.torn_tail.is_some());
    let st0 = super::journal::load_state(&parsed).unwrap();
    j.checkpoint_fresh(&st0, parsed.last_seq + 1).unwrap();
    let (st1, _) = journal(&p).load().unwrap();
    assert!(st1.files.is_empty());
}

#[test]
fn too_small_foreign_and_odd_devices_are_refused() {
    for size in [3 * MBLK, 4 * MBLK, 5 * MBLK] {
        let (_d, p) = image(size);
        let e = open_vol(journal(&p)).err().unwrap();
        assert!(matches!(e, LayoutError::NoSpace(_)), "{e}");
        assert!(e.to_string().contains("metadata bdev too small: need"), "{e}");
    }
    let (_d, p) = image(1 << 20);
    poke(&p, 600, b"some file system");
    let j = journal(&p);
    assert_eq!(j.probe().unwrap(), Probe::Foreign);
    let e = open_vol(j).err().unwrap().to_string();
    assert!(e.contains("not Palisade layout metadata"), "{e}");

    struct Big;
    impl MetaDev for Big {
        fn block_size(&self) -> u32 {
            8192
        }
        fn num_blocks(&self) -> u64 {
            100
        }
        fn read(&self, _: u64, _: u64) -> std::io::Result<Vec<u8>> {
            unreachable!()
        }
        fn write(&self, _: u64, _: &[u8], _: bool) -> std::io::Result<()> {
            unreachable!()
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn describe(&self) -> String {
            "big".into()
        }
    }
    let e = BdevJournal::new(Box::new(Big)).err().unwrap().to_string();
    assert!(e.contains("dividing 4096"), "{e}");
}
