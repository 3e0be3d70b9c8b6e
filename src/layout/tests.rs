//! Store tests: the metadata-server flow, copy-on-write, recall and fencing, journal replay, and a
//! property test that random operation sequences keep every invariant and survive a reopen.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::journal::{FileJournal, FRAME_HDR, SB_SIZE};
use super::recall::{Fencer, Notifier, RecallEvent};
use super::*;

#[derive(Default)]
struct Log {
    recalls: Mutex<Vec<RecallEvent>>,
    fenced: Mutex<Vec<(String, u64)>>,
}
impl Notifier for Log {
    fn recall(&self, ev: &RecallEvent) {
        self.recalls.lock().unwrap().push(ev.clone());
    }
}
impl Fencer for Log {
    fn fence(&self, _v: &str, client: &str, key: u64) -> Result<(), String> {
        self.fenced.lock().unwrap().push((client.into(), key));
        Ok(())
    }
}

const BS: u64 = 4096;
fn dev() -> DataDev {
    DataDev { uuid: uuid::Uuid::from_u128(7), block_size: 4096, num_blocks: 64 }
}
fn open(path: &Path, policy: Policy, log: &Arc<Log>) -> LayoutVolume {
    let opts = Options { name: "lv0".into(), block_size: 0, policy, recall_timeout: Duration::from_millis(100) };
    let hooks = Hooks { notifier: log.clone(), fencer: log.clone() };
    LayoutVolume::open(Box::new(FileJournal::new(path)), FileJournal::exists(path), &dev(), &opts, hooks).unwrap()
}
fn f(n: u64) -> FileId {
    FileId::Num(n)
}
/// Write blocks through the guard as the data path would (device blocks = layout blocks here).
fn write(v: &LayoutVolume, lba_bytes: u64, len: u64) {
    v.guard().mark_written(lba_bytes / BS, len / BS);
}

fn setup(policy: Policy) -> (tempfile::TempDir, LayoutVolume, Arc<Log>) {
    let d = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::default());
    let v = open(&d.path().join("meta"), policy, &log);
    v.client_register("A", 0xa, vec!["iqn.a".into()]).unwrap();
    v.client_register("B", 0xb, vec!["nqn.b".into()]).unwrap();
    v.file_create(&f(1)).unwrap();
    (d, v, log)
}

#[test]
fn hole_get_commit_return() {
    let (_d, v, _log) = setup(Policy::Enforce);
    let g = v.layout_get(&f(1), "A", 0, 4 * BS, 0, IoMode::Rw).unwrap();
    assert_eq!(g.extents.len(), 1);
    assert_eq!(g.extents[0].state, ExtentState::Invalid);
    assert_eq!(v.with_state(|s| s.free.free_blocks()), 60);
    let vo = g.extents[0].volume_offset;
    // Blocks 0 and 1 written through the target, 2 and 3 not.
    write(&v, vo, 2 * BS);
    let c = v.layout_commit(g.grant, &[(0, 4 * BS)], Some(4 * BS)).unwrap();
    assert_eq!((c.committed_bytes, c.unwritten_bytes, c.size), (2 * BS, 2 * BS, 4 * BS));
    let m = v.file_map(&f(1), 0, 4 * BS).unwrap();
    assert_eq!(m["extents"][0]["state"], "READ_WRITE_DATA");
    assert_eq!(m["extents"][0]["length"], 2 * BS);
    assert_eq!(m["extents"][1]["state"], "NONE_DATA");
    assert_eq!(m["pending"].as_array().unwrap().len(), 1);
    // The unwritten half still reads as zeros; the committed half as data.
    assert_eq!(v.guard().check_read(guard::NOBODY, vo / BS, 2), guard::ReadVerdict::Data);
    assert_eq!(v.guard().check_read(guard::NOBODY, vo / BS + 2, 2), guard::ReadVerdict::Zeros);
    v.layout_return(g.grant, None).unwrap();
    assert_eq!(v.with_state(|s| (s.free.free_blocks(), s.grants.len())), (62, 0));
    assert!(v.check().is_empty());
    // Errors change nothing.
    assert!(matches!(v.layout_commit(g.grant, &[(0, BS)], None), Err(LayoutError::UnknownGrant(_))));
    let g2 = v.layout_get(&f(1), "A", 0, 4 * BS, 0, IoMode::Rw).unwrap();
    assert!(matches!(v.layout_commit(g2.grant, &[(0, 8 * BS)], None), Err(LayoutError::RangeNotInGrant(..))));
    assert!(matches!(v.layout_get(&f(9), "A", 0, BS, 0, IoMode::Rw), Err(LayoutError::UnknownFile(_))));
    assert!(matches!(v.layout_get(&f(1), "A", 1, BS, 0, IoMode::Rw), Err(LayoutError::Invalid(_))));
}

#[test]
fn no_space_and_short_layouts() {
    let (_d, v, _log) = setup(Policy::Off);
    let g = v.layout_get(&f(1), "A", 0, 100 * BS, 0, IoMode::Rw).unwrap();
    assert_eq!(g.length, 64 * BS, "shortened to the free space");
    v.file_create(&f(2)).unwrap();
    let before = v.with_state(|s| s.image().files.len());
    assert!(matches!(v.layout_get(&f(2), "B", 0, BS, BS, IoMode::Rw), Err(LayoutError::NoSpace(_))));
    assert_eq!(v.with_state(|s| (s.grants.len(), s.image().files.len())), (1, before));
}

#[test]
fn reflink_copy_on_write() {
    let (_d, v, _log) = setup(Policy::Enforce);
    let g = v.layout_get(&f(1), "A", 0, 2 * BS, 0, IoMode::Rw).unwrap();
    write(&v, g.extents[0].volume_offset, 2 * BS);
    v.layout_commit(g.grant, &[(0, 2 * BS)], Some(2 * BS)).unwrap();
    // The source's writer must give its layout back before the reflink.
    assert!(matches!(v.file_reflink(&f(1), &f(2)), Err(LayoutError::RecallPending { .. })));
    v.layout_return(g.grant, None).unwrap();
    v.file_reflink(&f(1), &f(2)).unwrap();
    let src_lba = g.extents[0].volume_offset;
    assert_eq!(v.file_map(&f(2), 0, 2 * BS).unwrap()["extents"][0]["state"], "READ_DATA");
    assert_eq!(v.file_map(&f(2), 0, 2 * BS).unwrap()["extents"][0]["volume_offset"], src_lba);
    // Writing the clone: fresh INVALID_DATA with the shared extent as READ_DATA source.
    let g2 = v.layout_get(&f(2), "B", 0, 2 * BS, 0, IoMode::Rw).unwrap();
    let states: Vec<_> = g2.extents.iter().map(|e| e.state).collect();
    assert_eq!(states, vec![ExtentState::Invalid, ExtentState::Read]);
    assert_eq!(g2.extents[1].volume_offset, src_lba);
    // B may not write the shared blocks in place, only its fresh extent.
    let who = guard::Who { name: Some("nqn.b"), ..Default::default() };
    assert_eq!(v.guard().check_write(&who, src_lba / BS, 1), guard::WriteVerdict::Refuse);
    assert_eq!(v.guard().check_write(&who, g2.extents[0].volume_offset / BS, 1), guard::WriteVerdict::Track);
    write(&v, g2.extents[0].volume_offset, BS);
    v.layout_commit(g2.grant, &[(0, 2 * BS)], None).unwrap();
    let m2 = v.file_map(&f(2), 0, 2 * BS).unwrap();
    assert_eq!(m2["extents"][0]["volume_offset"], g2.extents[0].volume_offset);
    assert_eq!(m2["extents"][0]["state"], "READ_WRITE_DATA");
    assert_eq!(m2["extents"][1]["state"], "READ_DATA", "unwritten block keeps the shared source");
    let m1 = v.file_map(&f(1), 0, 2 * BS).unwrap();
    assert_eq!(m1["extents"][0]["volume_offset"], src_lba, "source unchanged");
    assert_eq!(m1["extents"][0]["state"], "READ_WRITE_DATA", "block 0 no longer shared");
    assert_eq!(m1["extents"][1]["state"], "READ_DATA");
    v.layout_return(g2.grant, None).unwrap();
    v.file_remove(&f(1)).unwrap();
    assert_eq!(v.file_map(&f(2), 0, 2 * BS).unwrap()["extents"][1]["state"], "READ_WRITE_DATA");
    assert!(v.check().is_empty());
    assert_eq!(v.with_state(|s| s.free.free_blocks()), 62);
}

#[test]
fn recall_timeout_fences_and_frees() {
    let (_d, v, log) = setup(Policy::Enforce);
    let ga = v.layout_get(&f(1), "A", 0, 4 * BS, 0, IoMode::Rw).unwrap();
    let e = v.layout_get(&f(1), "B", 0, 4 * BS, 0, IoMode::Rw).unwrap_err();
    assert!(matches!(e, LayoutError::RecallPending { grant, .. } if grant == ga.grant), "{e}");
    assert_eq!(log.recalls.lock().unwrap().len(), 1);
    assert_eq!(log.recalls.lock().unwrap()[0].reason, RecallReason::Conflict);
    // A retry before the deadline: still pending, no second notification.
    assert!(matches!(v.layout_get(&f(1), "B", 0, 4 * BS, 0, IoMode::Rw), Err(LayoutError::RecallPending { .. })));
    assert_eq!(log.recalls.lock().unwrap().len(), 1);
    assert!(v.expire_recalls(Instant::now()).is_empty());
    let fenced = v.expire_recalls(Instant::now() + Duration::from_secs(1));
    assert_eq!(fenced, vec!["A".to_string()]);
    assert_eq!(log.fenced.lock().unwrap().as_slice(), &[("A".to_string(), 0xa)]);
    assert_eq!(log.recalls.lock().unwrap().last().unwrap().reason, RecallReason::Fence);
    assert_eq!(v.with_state(|s| s.free.free_blocks()), 64);
    let who = guard::Who { name: Some("iqn.a"), ..Default::default() };
    assert_eq!(v.guard().check_write(&who, ga.extents[0].volume_offset / BS, 1), guard::WriteVerdict::Refuse);
    assert!(matches!(v.layout_get(&f(1), "A", 0, BS, 0, IoMode::Rw), Err(LayoutError::ClientFenced(_))));
    assert!(matches!(v.layout_commit(ga.grant, &[(0, BS)], None), Err(LayoutError::UnknownGrant(_))));
    v.layout_get(&f(1), "B", 0, 4 * BS, 0, IoMode::Rw).unwrap();
    v.client_unfence("A").unwrap();
    v.client_register("A", 0xa, vec![]).unwrap();
    assert!(v.check().is_empty());
}

#[test]
fn replay_torn_tail_and_corruption() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("meta");
    let log = Arc::new(Log::default());
    let img = {
        let v = open(&p, Policy::Off, &log);
        v.client_register("A", 1, vec![]).unwrap();
        v.file_create(&FileId::Name("x".into())).unwrap();
        let g = v.layout_get(&FileId::Name("x".into()), "A", 0, 3 * BS, 0, IoMode::Rw).unwrap();
        v.layout_commit(g.grant, &[(0, BS)], None).unwrap();
        serde_json::to_string(&v.with_state(|s| s.image())).unwrap()
    };
    let v = open(&p, Policy::Off, &log);
    assert_eq!(serde_json::to_string(&v.with_state(|s| s.image())).unwrap(), img);
    v.file_create(&f(5)).unwrap();
    v.file_create(&f(6)).unwrap();
    drop(v);
    // Torn tail: cut the last frame in half.
    let b = std::fs::read(&p).unwrap();
    std::fs::write(&p, &b[..b.len() - 5]).unwrap();
    let r = super::fsck::fsck(&p, None, false).unwrap();
    assert!(r.consistent && r.summary.torn_tail.is_some(), "{r:?}");
    let v = open(&p, Policy::Off, &log);
    assert!(v.with_state(|s| s.files.contains_key(&f(5)) && !s.files.contains_key(&f(6))));
    v.file_create(&f(7)).unwrap();
    v.file_create(&f(8)).unwrap();
    drop(v);
    // Corrupt middle: flip a byte in the first transaction's payload.
    let mut b = std::fs::read(&p).unwrap();
    let ck_len = u32::from_le_bytes(b[SB_SIZE + 8..SB_SIZE + 12].try_into().unwrap()) as usize;
    b[SB_SIZE + FRAME_HDR + ck_len + FRAME_HDR + 2] ^= 0xff;
    std::fs::write(&p, &b).unwrap();
    let opts = Options { name: "lv0".into(), block_size: 0, policy: Policy::Off, recall_timeout: Duration::from_secs(1) };
    let hooks = Hooks { notifier: log.clone(), fencer: log.clone() };
    let e = LayoutVolume::open(Box::new(FileJournal::new(&p)), true, &dev(), &opts, hooks).err().unwrap();
    assert!(e.to_string().contains("refusing to replay"), "{e}");
    assert!(super::fsck::fsck(&p, None, false).is_err());
    let r = super::fsck::fsck(&p, None, true).unwrap();
    assert!(r.consistent && r.repaired, "{r:?}");
    let v = open(&p, Policy::Off, &log);
    assert!(v.with_state(|s| s.files.contains_key(&f(5)) && !s.files.contains_key(&f(8))));
    // Wrong device.
    let other = DataDev { uuid: uuid::Uuid::from_u128(8), ..dev() };
    drop(v);
    let hooks = Hooks { notifier: log.clone(), fencer: log.clone() };
    assert!(LayoutVolume::open(Box::new(FileJournal::new(&p)), true, &other, &opts, hooks).is_err());
}

#[derive(Clone, Debug)]
enum Op {
    Get { file: u64, client: u8, off: u64, len: u64, rw: bool },
    Write { grant_pick: usize, blk: u64, n: u64 },
    Commit { grant_pick: usize, off: u64, len: u64 },
    Return { grant_pick: usize, partial: Option<(u64, u64)> },
    Fence { client: u8 },
    Unfence { client: u8 },
    Truncate { file: u64, size: u64 },
    Reflink { src: u64, dst: u64 },
    Remove { file: u64 },
    Create { file: u64 },
    Expire,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3u64, 0..2u8, 0..16u64, 1..12u64, any::<bool>()).prop_map(|(file, client, off, len, rw)| Op::Get { file, client, off, len, rw }),
        3 => (any::<usize>(), 0..16u64, 1..6u64).prop_map(|(grant_pick, blk, n)| Op::Write { grant_pick, blk, n }),
        3 => (any::<usize>(), 0..16u64, 1..12u64).prop_map(|(grant_pick, off, len)| Op::Commit { grant_pick, off, len }),
        2 => (any::<usize>(), proptest::option::of((0..16u64, 1..8u64))).prop_map(|(grant_pick, partial)| Op::Return { grant_pick, partial }),
        1 => (0..2u8).prop_map(|client| Op::Fence { client }),
        1 => (0..2u8).prop_map(|client| Op::Unfence { client }),
        1 => (0..3u64, 0..20u64).prop_map(|(file, size)| Op::Truncate { file, size }),
        1 => (0..3u64, 0..3u64).prop_map(|(src, dst)| Op::Reflink { src, dst }),
        1 => (0..3u64).prop_map(|file| Op::Remove { file }),
        1 => (0..3u64).prop_map(|file| Op::Create { file }),
        1 => Just(Op::Expire),
    ]
}

fn run_op(v: &LayoutVolume, o: &Op) -> bool {
    let grants: Vec<u64> = v.with_state(|s| s.grants.keys().copied().collect());
    let pick = |i: usize| (!grants.is_empty()).then(|| grants[i % grants.len()]);
    let cl = |c: u8| if c == 0 { "A" } else { "B" };
    let r = match o {
        Op::Get { file, client, off, len, rw } => {
            v.layout_get(&f(*file), cl(*client), off * BS, len * BS, 0, if *rw { IoMode::Rw } else { IoMode::Read }).map(|_| ())
        }
        Op::Write { grant_pick, blk, n } => {
            if let Some(g) = pick(*grant_pick) {
                let lbas: Vec<u64> = v.with_state(|s| s.grants[&g].pending.iter().map(|(_, p)| p.lba).collect());
                if let Some(l) = lbas.get(*blk as usize % lbas.len().max(1)) {
                    v.guard().mark_written(*l, *n);
                }
            }
            Ok(())
        }
        Op::Commit { grant_pick, off, len } => match pick(*grant_pick) {
            Some(g) => v.layout_commit(g, &[(off * BS, len * BS)], Some((off + len) * BS)).map(|_| ()),
            None => Ok(()),
        },
        Op::Return { grant_pick, partial } => match pick(*grant_pick) {
            Some(g) => {
                let r = partial.map(|(o, l)| vec![(o * BS, l * BS)]);
                v.layout_return(g, r.as_deref())
            }
            None => Ok(()),
        },
        Op::Fence { client } => v.client_fence(cl(*client)).map(|_| ()),
        Op::Unfence { client } => v.client_unfence(cl(*client)),
        Op::Truncate { file, size } => v.file_truncate(&f(*file), size * BS / 2),
        Op::Reflink { src, dst } => v.file_reflink(&f(*src), &f(*dst)),
        Op::Remove { file } => v.file_remove(&f(*file)),
        Op::Create { file } => v.file_create(&f(*file)),
        Op::Expire => {
            v.expire_recalls(Instant::now() + Duration::from_secs(10));
            Ok(())
        }
    };
    r.is_ok()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, max_shrink_iters: 200, ..ProptestConfig::default() })]

    /// Any sequence keeps: no block owned twice, free + owned = volume, consistent refcounts; a
    /// failed operation changes nothing; reopening from the journal gives the same state.
    #[test]
    fn invariants_hold_and_replay_matches(ops in proptest::collection::vec(op(), 1..60)) {
        let (d, v, log) = setup(Policy::Enforce);
        for o in &ops {
            let before = v.with_state(|s| serde_json::to_string(&s.image()).unwrap());
            let ok = run_op(&v, o);
            let probs = v.check();
            prop_assert!(probs.is_empty(), "after {:?}: {:?}", o, probs);
            // The guard's incrementally kept data ranges equal a rebuild from the maps.
            let full = v.with_state(guard::Snapshot::data_of);
            let snap = v.guard().snapshot();
            prop_assert_eq!(snap.data_ranges(), &full[..], "after {:?}", o);
            let after = v.with_state(|s| serde_json::to_string(&s.image()).unwrap());
            if !ok {
                prop_assert_eq!(before, after, "failed {:?} changed the state", o);
            }
        }
        // Written bits are durable once saved (a flush does this): journal them, then replay.
        v.persist_written().unwrap();
        let img = v.with_state(|s| serde_json::to_string(&s.image()).unwrap());
        drop(v);
        let v2 = open(&d.path().join("meta"), Policy::Enforce, &log);
        prop_assert_eq!(img, v2.with_state(|s| serde_json::to_string(&s.image()).unwrap()));
        prop_assert!(super::fsck::fsck(&d.path().join("meta"), None, false).unwrap().consistent);
    }

    /// Commit is all or nothing: a commit with one range outside the grant changes nothing.
    #[test]
    fn failed_commit_changes_nothing(n in 1..8u64, extra in 8..16u64) {
        let (_d, v, _log) = setup(Policy::Off);
        let g = v.layout_get(&f(1), "A", 0, n * BS, 0, IoMode::Rw).unwrap();
        let before = v.with_state(|s| serde_json::to_string(&s.image()).unwrap());
        prop_assert!(v.layout_commit(g.grant, &[(0, n * BS), (extra * BS, BS)], None).is_err());
        prop_assert_eq!(before, v.with_state(|s| serde_json::to_string(&s.image()).unwrap()));
    }
}

#[test]
fn periodic_checkpoint_compacts_and_lock_excludes() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("meta");
    let log = Arc::new(Log::default());
    let opts = Options { name: "lv0".into(), block_size: 0, policy: Policy::Off, recall_timeout: Duration::from_secs(1) };
    let hooks = || Hooks { notifier: log.clone(), fencer: log.clone() };
    let v = LayoutVolume::open(Box::new(FileJournal::new(&p).with_limits(8, 1 << 20)), false, &dev(), &opts, hooks()).unwrap();
    // A second opener of the same metadata is refused while the first holds it.
    let e = LayoutVolume::open(Box::new(FileJournal::new(&p)), true, &dev(), &opts, hooks()).err().unwrap();
    assert!(e.to_string().contains("in use"), "{e}");
    v.client_register("A", 1, vec![]).unwrap();
    let mut max = 0;
    for i in 0..40 {
        v.file_create(&f(i)).unwrap();
        max = max.max(std::fs::metadata(&p).unwrap().len());
    }
    let len = std::fs::metadata(&p).unwrap().len();
    // Compaction kept the journal bounded: never more than a checkpoint plus 8 transactions.
    let one_txn = 24 + serde_json::to_vec(&[state::Record::FileCreate { file: f(99) }]).unwrap().len() as u64;
    assert!(max <= len + 9 * one_txn + 4096, "journal grew to {max} (now {len})");
    let img = serde_json::to_string(&v.with_state(|s| s.image())).unwrap();
    drop(v);
    let v = open(&p, Policy::Off, &log);
    assert_eq!(img, serde_json::to_string(&v.with_state(|s| s.image())).unwrap());
}

#[test]
fn layout_blocks_larger_than_device_blocks() {
    // 4 KiB layout blocks on a 512-byte device: a layout block counts as written only when all
    // eight of its device blocks were, so a partial write never exposes the rest of the block.
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("meta");
    let log = Arc::new(Log::default());
    let dev = DataDev { uuid: uuid::Uuid::from_u128(9), block_size: 512, num_blocks: 512 };
    let opts = Options { name: "lv".into(), block_size: 4096, policy: Policy::Enforce, recall_timeout: Duration::from_secs(1) };
    let v = LayoutVolume::open(Box::new(FileJournal::new(&p)), false, &dev, &opts, Hooks { notifier: log.clone(), fencer: log.clone() }).unwrap();
    assert_eq!(v.superblock().num_blocks, 64);
    v.client_register("A", 1, vec![]).unwrap();
    v.file_create(&f(1)).unwrap();
    let g = v.layout_get(&f(1), "A", 0, 2 * BS, 0, IoMode::Rw).unwrap();
    let dl = g.extents[0].volume_offset / 512;
    v.guard().mark_written(dl, 8); // all of layout block 0
    v.guard().mark_written(dl + 8, 4); // half of layout block 1
    assert_eq!(v.guard().check_read(v.guard().reader(&guard::Who { key: Some(1), ..Default::default() }), dl + 8, 8), guard::ReadVerdict::Mixed);
    let c = v.layout_commit(g.grant, &[(0, 2 * BS)], None).unwrap();
    assert_eq!((c.committed_bytes, c.unwritten_bytes), (BS, BS));
    drop(v);
    // Reopened without a block size: the superblock's is used.
    let v = LayoutVolume::open(Box::new(FileJournal::new(&p)), true, &dev, &Options { block_size: 0, ..opts.clone() }, Hooks { notifier: log.clone(), fencer: log.clone() }).unwrap();
    assert_eq!(v.superblock().block_size, 4096);
    drop(v);
    assert!(matches!(
        LayoutVolume::open(Box::new(FileJournal::new(&d.path().join("m2"))), false, &dev, &Options { block_size: 1000, ..opts }, Hooks { notifier: log.clone(), fencer: log.clone() }),
        Err(LayoutError::Invalid(_))
    ));
}

#[test]
fn written_bits_survive_flush_checkpoint_and_reopen() {
    // Written-since-allocation bits are a write cache: made durable by persist_written (a flush),
    // by a checkpoint (clean shutdown), and lost (read as zeros, never stale) only if neither ran.
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("meta");
    let log = Arc::new(Log::default());
    let v = Arc::new(open(&p, Policy::Enforce, &log));
    v.client_register("A", 1, vec![]).unwrap();
    v.file_create(&f(1)).unwrap();
    let g = v.layout_get(&f(1), "A", 0, 8 * BS, 0, IoMode::Rw).unwrap();
    let l = g.extents[0].volume_offset / BS;
    assert_eq!(v.persist_written().unwrap(), 0, "nothing dirty");
    v.guard().mark_written(l, 2);
    v.guard().mark_written(l + 5, 1);
    assert!(v.guard().is_dirty());
    assert_eq!(v.persist_written().unwrap(), 2, "two runs journaled");
    assert!(!v.guard().is_dirty());
    // Only what changed is journaled again.
    v.guard().mark_written(l + 5, 1);
    assert_eq!(v.persist_written().unwrap(), 0);
    v.guard().mark_written(l + 6, 1);
    assert_eq!(v.persist_written().unwrap(), 2, "the grant's runs, rewritten whole");
    // Not saved: lost on a crash (the reopen below replays the journal only).
    v.guard().mark_written(l + 7, 1);
    let runs = |v: &LayoutVolume| v.with_state(|s| s.grants[&g.grant].written_runs());
    let reopen = |v: Arc<LayoutVolume>| {
        drop(v);
        Arc::new(open(&p, Policy::Enforce, &log))
    };
    let v = reopen(v);
    assert_eq!(runs(&v), vec![(l, 2), (l + 5, 2)]);
    // A checkpoint carries only the saved bits (the data of the others was never flushed)...
    v.guard().mark_written(l + 7, 1);
    v.checkpoint().unwrap();
    let v = reopen(v);
    assert_eq!(runs(&v), vec![(l, 2), (l + 5, 2)]);
    // ... a clean shutdown saves them first.
    v.guard().mark_written(l + 7, 1);
    v.persist_written().unwrap();
    v.checkpoint().unwrap();
    let v = reopen(v);
    assert_eq!(runs(&v), vec![(l, 2), (l + 5, 3)]);
    // The commit after the restart converts exactly the blocks written before it.
    let c = v.layout_commit(g.grant, &[(0, 8 * BS)], Some(8 * BS)).unwrap();
    assert_eq!((c.committed_bytes, c.unwritten_bytes), (5 * BS, 3 * BS));
    assert!(v.check().is_empty());

    // persist_then through the flush thread: the callback runs once the bits are durable.
    v.start_persister();
    let g2 = v.layout_get(&f(1), "A", 8 * BS, 4 * BS, 0, IoMode::Rw).unwrap();
    let l2 = g2.extents[0].volume_offset / BS;
    v.guard().mark_written(l2, 4);
    let (tx, rx) = std::sync::mpsc::channel();
    v.guard().persist_then(Box::new(move |ok| tx.send(ok).unwrap()));
    assert!(rx.recv_timeout(Duration::from_secs(5)).unwrap());
    let v = reopen(v);
    assert_eq!(v.with_state(|s| s.grants[&g2.grant].written_runs()), vec![(l2, 4)]);
}
