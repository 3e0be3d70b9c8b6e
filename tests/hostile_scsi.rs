//! Hostile SCSI clients over a real iSCSI socket (issue 11, item 2 SCSI side, item 8): CDB fields
//! that could size a buffer or a fill beyond what the answer needs or what the initiator declared
//! (EDTL). Each abuse checks the target's peak RSS (VmHWM) and that the answer is still right,
//! while a well-behaved client keeps writing and reading back its own blocks.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, Target};
use palisade::iscsi::initiator::{Completion, LoginOptions, Session};
use serde_json::json;

const IQN: &str = "iqn.2016-06.io.spdk:hostile";
const T: Duration = Duration::from_secs(30);
const GOOD: u8 = 0x00;
const CHECK_CONDITION: u8 = 0x02;
/// Peak RSS an abuse may add over the baseline.
const RSS_SLACK_KIB: u64 = 64 << 10;

/// A target exporting Malloc0 (`blocks` × `bs`) as LUN 0 of `IQN` on `port`.
fn start(port: u16, blocks: u64, bs: u32) -> Target {
    let t = Target::start(&["-m", "0x1"]);
    t.rpc("bdev_malloc_create", json!({"name": "Malloc0", "num_blocks": blocks, "block_size": bs}));
    t.rpc("iscsi_create_portal_group", json!({"tag": 1, "portals": [{"host": "127.0.0.1", "port": port.to_string()}]}));
    t.rpc("iscsi_create_initiator_group", json!({"tag": 1, "initiators": ["ANY"], "netmasks": ["127.0.0.1/32"]}));
    t.rpc(
        "iscsi_create_target_node",
        json!({"name": IQN, "alias_name": "hostile", "luns": [{"bdev_name": "Malloc0", "lun_id": 0}],
            "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 1}], "queue_depth": 64}),
    );
    t
}

/// Log in (retrying while the target applies its config) and consume the POWER ON attention.
fn login(port: u16, name: &str) -> Session {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut s = loop {
        match Session::connect("127.0.0.1", port, &LoginOptions::new(name, Some(IQN)), 8) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("login as {name} failed: {e}"),
        }
    };
    for _ in 0..8 {
        let (c, _) = s.command(0, &[0u8; 6], &[], 0, T).unwrap();
        if c.status == GOOD {
            return s;
        }
    }
    panic!("unit attentions never cleared");
}

/// (key, asc, ascq) of a CHECK CONDITION (fixed format sense).
fn sense_of(c: &Completion) -> (u8, u8, u8) {
    let s = &c.sense;
    (s.get(2).map(|k| k & 0x0f).unwrap_or(0), s.get(12).copied().unwrap_or(0), s.get(13).copied().unwrap_or(0))
}

/// The INFORMATION field of fixed format sense.
fn sense_info(c: &Completion) -> u32 {
    u32::from_be_bytes(c.sense[3..7].try_into().unwrap())
}

/// (VmHWM, VmRSS) of a process, KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// The peak RSS must not have grown by more than the slack since `base`.
fn assert_peak_within(t: &Target, base: u64, what: &str) {
    let (hwm, rss) = rss_kib(t.pid());
    eprintln!("{what}: VmHWM {} MiB (baseline {} MiB), VmRSS {} MiB", hwm >> 10, base >> 10, rss >> 10);
    assert!(hwm <= base + RSS_SLACK_KIB, "{what}: peak RSS grew from {} MiB to {} MiB", base >> 10, hwm >> 10);
    let stall = common::hostile::max_stall_us(t);
    assert!(stall < 100_000, "{what}: a reactor loop took {stall} us");
    common::hostile::report(&format!("scsi: {what}"), &common::hostile::Figures { baseline_kib: base, peak_kib: hwm, after_kib: rss, stall_us: stall });
}

fn rw16(op: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x as u8) | 1 // never zero: a zeroed block is told apart from data
        })
        .collect()
}

fn write(s: &mut Session, lba: u64, data: &[u8], bs: usize) {
    let (c, _) = s.command(0, &rw16(0x8a, lba, (data.len() / bs) as u32), data, 0, T).unwrap();
    assert_eq!(c.status, GOOD, "write at {lba}: {c:?}");
}

fn read(s: &mut Session, lba: u64, blocks: u32, bs: usize) -> Vec<u8> {
    let (c, d) = s.command(0, &rw16(0x88, lba, blocks), &[], blocks as usize * bs, T).unwrap();
    assert_eq!(c.status, GOOD, "read at {lba}: {c:?}");
    d
}

/// A well-behaved client writing and reading back its own blocks (at `lba..lba+8`) until
/// stopped; returns the number of verified round trips.
struct Bystander {
    stop: Arc<AtomicBool>,
    th: std::thread::JoinHandle<u32>,
}

impl Bystander {
    fn start(port: u16, lba: u64, bs: usize) -> Bystander {
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let mut s = login(port, "iqn.2026-01.io.palisade:bystander");
        let th = std::thread::spawn(move || {
            let mut n = 0u32;
            while !st.load(Ordering::Relaxed) || n == 0 {
                let data = pattern(n as u64 + 7, 8 * bs);
                write(&mut s, lba, &data, bs);
                assert!(read(&mut s, lba, 8, bs) == data, "bystander read back different data");
                n += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            n
        });
        Bystander { stop, th }
    }
    fn finish(self) -> u32 {
        self.stop.store(true, Ordering::Relaxed);
        let n = self.th.join().expect("bystander failed");
        assert!(n > 0);
        n
    }
}

/// VERIFY(16) moves no Data-In, yet each read the whole range into one buffer: 65536 blocks of
/// 4 KiB held 256 MiB for one command. The range is now read in chunks, and miscompares are
/// still found at the right offset.
#[test]
fn verify_of_the_maximum_range_does_not_buffer_it() {
    let port = free_port();
    const BS: usize = 4096;
    let t = start(port, 65536, BS as u32);
    let mut s = login(port, "iqn.2026-01.io.palisade:hostile");
    let by = Bystander::start(port, 100, BS);
    let marked = pattern(1, BS);
    write(&mut s, 40_000, &marked, BS);
    let (base, _) = rss_kib(t.pid());

    // BYTCHK=0: a medium verification of every block, nothing compared.
    for _ in 0..4 {
        let (c, _) = s.command(0, &rw16(0x8f, 0, 65536), &[], 0, T).unwrap();
        assert_eq!(c.status, GOOD, "{c:?}");
    }
    // BYTCHK=11b: one zero block compared against every block; the first difference is in the
    // block written above (the bystander's blocks 100..108 come first: start past them).
    let mut cdb = rw16(0x8f, 1000, 64536);
    cdb[1] = 0x06;
    let (c, _) = s.command(0, &cdb, &[0u8; BS], 0, T).unwrap();
    assert_eq!((c.status, sense_of(&c).0), (CHECK_CONDITION, 0x0e), "MISCOMPARE expected: {c:?}");
    let first = marked.iter().position(|&x| x != 0).unwrap();
    assert_eq!(sense_info(&c) as usize, (40_000 - 1000) * BS + first, "miscompare offset");
    // BYTCHK=01b over two chunks' worth with the right data: GOOD; one byte off: MISCOMPARE.
    let mut want = vec![0u8; 512 * BS];
    want[(40_000 - 39_700) * BS..(40_000 - 39_700 + 1) * BS].copy_from_slice(&marked);
    let mut cdb = rw16(0x8f, 39_700, 512);
    cdb[1] = 0x02;
    let (c, _) = s.command(0, &cdb, &want, 0, T).unwrap();
    assert_eq!(c.status, GOOD, "{c:?}");
    want[(40_000 - 39_700) * BS + 9] ^= 0xff;
    let (c, _) = s.command(0, &cdb, &want, 0, T).unwrap();
    assert_eq!(sense_of(&c).0, 0x0e, "{c:?}");
    assert_eq!(sense_info(&c) as usize, (40_000 - 39_700) * BS + 9);

    assert_peak_within(&t, base, "VERIFY(16) of 65536 x 4 KiB blocks");
    assert!(read(&mut s, 40_000, 1, BS) == marked);
    eprintln!("bystander round trips: {}", by.finish());
}

/// READ(16) whose CDB asks for 256 MiB while the initiator declared 4 KiB (EDTL): the target sent
/// 4 KiB and reported the overflow, but read (and held) the whole 256 MiB to do so.
#[test]
fn read_larger_than_edtl_reads_only_what_is_sent() {
    let port = free_port();
    const BS: usize = 4096;
    let t = start(port, 65536, BS as u32);
    let mut s = login(port, "iqn.2026-01.io.palisade:hostile");
    let by = Bystander::start(port, 100, BS);
    let first = pattern(2, 2 * BS);
    write(&mut s, 0, &first, BS);
    let (base, _) = rss_kib(t.pid());

    for _ in 0..4 {
        // EDTL 4096 (one block) for 65536 blocks.
        let (c, d) = s.command(0, &rw16(0x88, 0, 65536), &[], BS, T).unwrap();
        assert_eq!(c.status, GOOD, "{c:?}");
        assert!(d == first[..BS], "the first block comes back");
        assert_eq!(c.residual, Some((false, (65536 * BS - BS) as u32)), "overflow residual");
        // EDTL 6000: two blocks read, 6000 bytes sent.
        let (c, d) = s.command(0, &rw16(0x88, 0, 65536), &[], 6000, T).unwrap();
        assert_eq!(c.status, GOOD, "{c:?}");
        assert!(d == first[..6000]);
        assert_eq!(c.residual, Some((false, (65536 * BS - 6000) as u32)));
        // EDTL 0: nothing read, nothing sent, everything overflow.
        let (c, d) = s.command(0, &rw16(0x88, 0, 65536), &[], 0, T).unwrap();
        assert_eq!(c.status, GOOD, "{c:?}");
        assert!(d.is_empty());
        assert_eq!(c.residual, Some((false, (65536 * BS) as u32)));
    }
    // The range is still checked whole.
    let (c, _) = s.command(0, &rw16(0x88, 1, 65536), &[], BS, T).unwrap();
    assert_eq!((c.status, sense_of(&c)), (CHECK_CONDITION, (0x05, 0x21, 0x00)), "{c:?}");

    assert_peak_within(&t, base, "READ(16) of 256 MiB with a 4 KiB EDTL");
    assert!(read(&mut s, 0, 2, BS) == first);
    eprintln!("bystander round trips: {}", by.finish());
}

/// WRITE SAME(16) with NDOB (or zeros, or UNMAP) over the whole device, and UNMAP of the whole
/// device: the RAM disk wrote zeros over every page, faulting the device's full size into
/// memory (and holding the reactor for it). Whole pages are now given back instead.
#[test]
fn zeroing_the_whole_device_does_not_fault_it_in() {
    let port = free_port();
    const BS: usize = 4096;
    const BLOCKS: u64 = 131_072; // 512 MiB
    let t = start(port, BLOCKS, BS as u32);
    let mut s = login(port, "iqn.2026-01.io.palisade:hostile");
    let marks: Vec<(u64, Vec<u8>)> = [0u64, 1, 777, 65_535, 65_536, BLOCKS - 1].iter().map(|&l| (l, pattern(l + 3, BS))).collect();
    let put = |s: &mut Session| {
        for (l, d) in &marks {
            write(s, *l, d, BS);
        }
    };
    let all_zero = |s: &mut Session, what: &str| {
        for (l, _) in &marks {
            assert!(read(s, *l, 1, BS).iter().all(|&x| x == 0), "{what}: block {l} not zeroed");
        }
    };
    put(&mut s);
    let (base, _) = rss_kib(t.pid());

    // WRITE SAME(16), NDOB=1, NUMBER OF LOGICAL BLOCKS 0 = to the last LBA.
    let mut ndob = rw16(0x93, 0, 0);
    ndob[1] = 0x01;
    let (c, _) = s.command(0, &ndob, &[], 0, T).unwrap();
    assert_eq!(c.status, GOOD, "{c:?}");
    all_zero(&mut s, "WRITE SAME NDOB");
    // WRITE SAME(16) of a zero block, then with UNMAP, each over the whole device.
    for flags in [0x00u8, 0x08] {
        put(&mut s);
        let mut ws = rw16(0x93, 0, BLOCKS as u32);
        ws[1] = flags;
        let (c, _) = s.command(0, &ws, &[0u8; BS], 0, T).unwrap();
        assert_eq!(c.status, GOOD, "{c:?}");
        all_zero(&mut s, "WRITE SAME zero");
    }
    // UNMAP: one descriptor for the whole device.
    put(&mut s);
    let mut list = vec![0u8; 24];
    list[0..2].copy_from_slice(&22u16.to_be_bytes());
    list[2..4].copy_from_slice(&16u16.to_be_bytes());
    list[16..20].copy_from_slice(&(BLOCKS as u32).to_be_bytes());
    let (c, _) = s.command(0, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &list, 0, T).unwrap();
    assert_eq!(c.status, GOOD, "{c:?}");
    all_zero(&mut s, "UNMAP");
    assert_peak_within(&t, base, "zeroing a 512 MiB RAM disk whole");

    // A patterned WRITE SAME still writes its pattern, and data written afterwards reads back.
    let pat = pattern(9, BS);
    let mut ws = rw16(0x93, 5000, 300);
    ws[1] = 0;
    let (c, _) = s.command(0, &ws, &pat, 0, T).unwrap();
    assert_eq!(c.status, GOOD, "{c:?}");
    let back = read(&mut s, 5000, 300, BS);
    assert!(back.chunks(BS).all(|b| b == pat.as_slice()));
    put(&mut s);
    for (l, d) in &marks {
        assert!(&read(&mut s, *l, 1, BS) == d);
    }
}

/// Commands answered from memory, each with the largest allocation length its CDB can carry and a
/// small EDTL: answers are built at their real size (then cut to the allocation length and EDTL)
/// and come back right.
#[test]
fn allocation_lengths_size_nothing() {
    let port = free_port();
    let t = start(port, 131_072, 512);
    let mut s = login(port, "iqn.2026-01.io.palisade:hostile");
    let by = Bystander::start(port, 1000, 512);
    let (base, _) = rss_kib(t.pid());
    let m32 = [0xff; 4];
    // (name, CDB, EDTL, check of the answer)
    type Check = fn(&[u8]) -> bool;
    let mut cases: Vec<(&str, Vec<u8>, usize, Check)> = vec![
        ("INQUIRY", vec![0x12, 0, 0, 0xff, 0xff, 0], 96, |d| d.len() == 96 && &d[8..16] == b"PALISADE"),
        ("REPORT LUNS", [&[0xa0, 0, 0, 0, 0, 0][..], &m32, &[0, 0]].concat(), 512, |d| d.len() == 16 && d[3] == 8),
        ("READ CAPACITY(16)", [&[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0][..], &m32, &[0, 0]].concat(), 32, |d| {
            d.len() == 32 && u64::from_be_bytes(d[0..8].try_into().unwrap()) == 131_071
        }),
        ("GET LBA STATUS", [&[0x9e, 0x12, 0, 0, 0, 0, 0, 0, 0, 0][..], &m32, &[0, 0]].concat(), 24, |d| d.len() == 24 && d[3] == 20),
        ("REPORT SUPPORTED OPCODES", [&[0xa3, 0x0c, 0x80, 0, 0, 0][..], &m32, &[0, 0]].concat(), 64, |d| {
            d.len() == 64 && u32::from_be_bytes(d[0..4].try_into().unwrap()) > 60
        }),
        ("MODE SENSE(10)", vec![0x5a, 0, 0x3f, 0, 0, 0, 0, 0xff, 0xff, 0], 512, |d| d.len() > 8 && u16::from_be_bytes([d[0], d[1]]) as usize == d.len() - 2),
        ("MODE SENSE(6)", vec![0x1a, 0, 0x3f, 0, 0xff, 0], 255, |d| d.len() > 4 && d[0] as usize == d.len() - 1),
        ("REQUEST SENSE", vec![0x03, 0, 0, 0, 0xff, 0], 252, |d| d.len() == 18 && d[0] == 0x70),
        ("RECEIVE COPY RESULTS", [&[0x84, 0x03, 0, 0, 0, 0, 0, 0, 0, 0][..], &m32, &[0, 0]].concat(), 8, |d| d.len() == 8),
        ("PR IN READ KEYS", vec![0x5e, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0], 512, |d| d.len() == 8),
        ("PR IN READ FULL STATUS", vec![0x5e, 3, 0, 0, 0, 0, 0, 0xff, 0xff, 0], 512, |d| d.len() == 8),
        ("READ DEFECT DATA(12)", [&[0xb7, 0x0d, 0, 0, 0, 0][..], &m32, &[0, 0]].concat(), 8, |d| d.len() == 8),
    ];
    for page in [0x00u8, 0x80, 0x83, 0x8f, 0xb0, 0xb1, 0xb2] {
        cases.push(("INQUIRY VPD", vec![0x12, 1, page, 0xff, 0xff, 0], 4096, |d| d.len() >= 4 && u16::from_be_bytes([d[2], d[3]]) as usize == d.len() - 4));
    }
    for _ in 0..50 {
        for (name, cdb, edtl, check) in &cases {
            let (c, d) = s.command(0, cdb, &[], *edtl, T).unwrap();
            assert_eq!(c.status, GOOD, "{name}: {c:?}");
            assert!(check(&d), "{name}: unexpected answer {:02x?}", &d[..d.len().min(64)]);
        }
    }
    assert_peak_within(&t, base, "maximum allocation lengths");
    eprintln!("bystander round trips: {}", by.finish());
}

/// PR IN with a short allocation length: the ADDITIONAL LENGTH still counts every registration
/// (the answer is cut, not the count), and the full answer matches.
#[test]
fn persistent_reserve_in_cut_at_the_allocation_length() {
    let port = free_port();
    let _t = start(port, 8192, 512);
    let mut sessions: Vec<Session> = (0..3).map(|i| login(port, &format!("iqn.2026-01.io.palisade:reg{i}"))).collect();
    for (i, s) in sessions.iter_mut().enumerate() {
        let mut data = [0u8; 24];
        data[8..16].copy_from_slice(&(0x1000 + i as u64).to_be_bytes());
        let (c, _) = s.command(0, &[0x5f, 0, 0, 0, 0, 0, 0, 0, 24, 0], &data, 0, T).unwrap();
        assert_eq!(c.status, GOOD, "register: {c:?}");
    }
    let s = &mut sessions[0];
    let prin = |s: &mut Session, sa: u8, alloc: u16| {
        let a = alloc.to_be_bytes();
        let (c, d) = s.command(0, &[0x5e, sa, 0, 0, 0, 0, 0, a[0], a[1], 0], &[], alloc as usize, T).unwrap();
        assert_eq!(c.status, GOOD, "{c:?}");
        d
    };
    let full = prin(s, 3, 4096);
    let descs = u32::from_be_bytes(full[4..8].try_into().unwrap()) as usize;
    assert_eq!(full.len(), 8 + descs);
    let mut keys = Vec::new();
    let mut at = 8;
    while at < full.len() {
        keys.push(u64::from_be_bytes(full[at..at + 8].try_into().unwrap()));
        at += 24 + u32::from_be_bytes(full[at + 20..at + 24].try_into().unwrap()) as usize;
    }
    keys.sort();
    assert_eq!(keys, vec![0x1000, 0x1001, 0x1002]);
    for alloc in [8u16, 9, 30, 60] {
        let d = prin(s, 3, alloc);
        assert_eq!(d.as_slice(), &full[..alloc as usize], "READ FULL STATUS cut at {alloc}");
    }
    let keys_full = prin(s, 0, 512);
    assert_eq!(keys_full.len(), 8 + 24);
    assert_eq!(u32::from_be_bytes(keys_full[4..8].try_into().unwrap()), 24);
    for alloc in [8u16, 12, 16, 20] {
        assert_eq!(prin(s, 0, alloc).as_slice(), &keys_full[..alloc as usize], "READ KEYS cut at {alloc}");
    }
}

/// bdev_malloc_create refuses RAM disks the machine cannot hold: alone, or together with the
/// RAM disks it already has (each is mapped lazily, so the mapping itself succeeds).
#[test]
fn malloc_create_refuses_more_than_physical_memory() {
    let t = Target::start(&["-m", "0x1"]);
    let phys = palisade::bdev::malloc::physical_memory().expect("physical memory");
    let blocks_for = |bytes: u64| bytes / 4096;
    let err = t
        .try_rpc("bdev_malloc_create", Some(json!({"name": "Huge", "num_blocks": blocks_for(phys) + 1024, "block_size": 4096})))
        .expect_err("larger than physical memory");
    assert_eq!(err.0, -libc::ENOMEM as i64, "{err:?}");
    assert!(err.1.contains("physical memory"), "{err:?}");
    // 60 % of memory: accepted (with a warning in the log); a second one would overcommit.
    let sixty = blocks_for(phys / 10 * 6);
    t.rpc("bdev_malloc_create", json!({"name": "Big0", "num_blocks": sixty, "block_size": 4096}));
    let err = t
        .try_rpc("bdev_malloc_create", Some(json!({"name": "Big1", "num_blocks": sixty, "block_size": 4096})))
        .expect_err("two RAM disks above physical memory");
    assert_eq!(err.0, -libc::ENOMEM as i64, "{err:?}");
    assert!(err.1.contains("total"), "{err:?}");
    let names = common::bdev_names(&t);
    assert!(names.contains(&"Big0".to_string()) && !names.contains(&"Big1".to_string()), "{names:?}");
    t.rpc("bdev_malloc_delete", json!({"name": "Big0"}));
    // Once it is gone, the room is back.
    t.rpc("bdev_malloc_create", json!({"name": "Big1", "num_blocks": sixty, "block_size": 4096}));
    t.rpc("bdev_malloc_create", json!({"name": "Small", "num_blocks": 1024, "block_size": 512}));
}

/// EXTENDED COPY whose PARAMETER LIST LENGTH (4 GiB) exceeds both the Data-Out sent and the
/// longest list the copy manager takes: PARAMETER LIST LENGTH ERROR, and the LUN still copies.
#[test]
fn extended_copy_parameter_list_longer_than_any_we_take() {
    let port = free_port();
    let t = start(port, 8192, 512);
    let mut s = login(port, "iqn.2026-01.io.palisade:hostile");
    let (base, _) = rss_kib(t.pid());
    let mut cdb = [0u8; 16];
    cdb[0] = 0x83;
    cdb[10..14].copy_from_slice(&u32::MAX.to_be_bytes());
    for _ in 0..20 {
        let (c, _) = s.command(0, &cdb, &[0u8; 64], 0, T).unwrap();
        assert_eq!((c.status, sense_of(&c)), (CHECK_CONDITION, (0x05, 0x1a, 0x00)), "{c:?}");
    }
    assert_peak_within(&t, base, "EXTENDED COPY with a 4 GiB parameter list length");
    let data = pattern(5, 512);
    write(&mut s, 10, &data, 512);
    assert!(read(&mut s, 10, 1, 512) == data);
}
