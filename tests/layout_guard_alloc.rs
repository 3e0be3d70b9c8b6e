//! The guard's per-I/O work (write check, read check, zero-fill, written-bit recording) does not
//! allocate: counted with a global allocator in this test binary (its only test).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use palisade::layout::guard::{ReadVerdict, Who, WriteVerdict};
use palisade::layout::journal::FileJournal;
use palisade::layout::recall::{GuardOnlyFencer, NoNotifier};
use palisade::layout::{DataDev, FileId, Hooks, IoMode, LayoutVolume, Options, Policy};

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        System.realloc(p, l, n)
    }
}

#[global_allocator]
static A: Counting = Counting;

#[test]
fn guard_hot_path_does_not_allocate() {
    let d = tempfile::tempdir().unwrap();
    let dev = DataDev { uuid: uuid::Uuid::from_u128(3), block_size: 4096, num_blocks: 1024 };
    let opts = Options { name: "lv".into(), block_size: 0, policy: Policy::Enforce, recall_timeout: Duration::from_secs(5) };
    let hooks = Hooks { notifier: Arc::new(NoNotifier), fencer: Arc::new(GuardOnlyFencer) };
    let v = LayoutVolume::open(Box::new(FileJournal::new(&d.path().join("m"))), false, &dev, &opts, hooks).unwrap();
    v.client_register("A", 0xa, vec!["iqn.2026-01.test:a".into()]).unwrap();
    for i in 0..16 {
        v.file_create(&FileId::Num(i)).unwrap();
        let g = v.layout_get(&FileId::Num(i), "A", 0, 32 * 4096, 0, IoMode::Rw).unwrap();
        if i % 2 == 0 {
            v.guard().mark_written(g.extents[0].volume_offset / 4096, 16);
            v.layout_commit(g.grant, &[(0, 16 * 4096)], None).unwrap();
        }
    }
    let g = v.guard().clone();
    let who = Who { name: Some("iqn.2026-01.test:a"), ..Default::default() };
    let stranger = Who { name: Some("iqn.2026-01.test:z"), ..Default::default() };
    let mut buf = vec![0x55u8; 32 * 4096];
    // Warm up (first ArcSwap loads on this thread may set up its debt list).
    for _ in 0..4 {
        let _ = g.check_write(&who, 0, 8);
        let _ = g.check_read(g.reader(&who), 0, 32);
    }
    let before = ALLOCS.load(Ordering::Relaxed);
    let mut seen = (0, 0, 0);
    for i in 0..10_000u64 {
        let lba = (i * 7) % 1000;
        match g.check_write(if i % 3 == 0 { &stranger } else { &who }, lba, 8) {
            WriteVerdict::Track => {
                g.mark_written(lba, 1);
                seen.0 += 1
            }
            WriteVerdict::Refuse => seen.1 += 1,
            WriteVerdict::Allow => {}
        }
        let reader = g.reader(if i % 2 == 0 { &stranger } else { &who });
        if g.check_read(reader, lba, 32.min(1024 - lba)) == ReadVerdict::Mixed {
            seen.2 += 1;
            g.zero_fill(reader, lba, 32.min(1024 - lba), &mut buf);
        }
    }
    let after = ALLOCS.load(Ordering::Relaxed);
    assert!(seen.0 > 0 && seen.1 > 0 && seen.2 > 0, "all paths exercised: {seen:?}");
    assert_eq!(after - before, 0, "guard allocated {} times in 10,000 I/Os", after - before);
}
