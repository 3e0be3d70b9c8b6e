//! Nanoseconds per reservation check, the exact call `Volume::submit` makes on every I/O, for
//! the cases of `bench/reservation/run.sh`: an open volume, and WE-RO held by another host while
//! the writer is registered (with 2 and with 300 registrants). Run:
//! `cargo run --release --example reservation_check_cost`.
//! Compare with the time per I/O of a reactor (1 / IOPS of one core) to get the fraction of IOPS
//! the check can cost, without the run-to-run noise of a socket benchmark.

use std::sync::{mpsc, Arc};
use std::time::Instant;

use palisade::bdev::{malloc::MallocBdev, BdevRegistry};
use palisade::reservation::{Action, CommandClass, ResType};
use palisade::volume::pr_gate::nexus_ref;
use palisade::volume::{Initiator, Volume, VolumeRegistry};

fn nvme(id: u16, nqn: &str) -> Initiator {
    let mut host_id = [0x5au8; 16];
    host_id[14..].copy_from_slice(&id.to_be_bytes());
    Initiator::Nvme { host_id, host_nqn: nqn.to_string() }
}

fn run(v: &Volume, who: &Initiator, a: Action) {
    let (tx, rx) = mpsc::channel();
    let now = v.reservations().execute(nexus_ref(who), a, Box::new(move |r| { let _ = tx.send(r.is_ok()); }));
    let ok = match now {
        Some(r) => r.is_ok(),
        None => rx.recv().unwrap(),
    };
    assert!(ok, "reservation action failed");
}

fn register(v: &Volume, who: &Initiator, key: u64) {
    run(v, who, Action::Register { key: 0, sa_key: key, ignore_existing: true, all_tg_pt: false, spec_i_pt: false, aptpl: None });
}

/// Median of 7 timings of `n` checks, in ns per check.
fn time(v: &Volume, who: &Initiator, class: CommandClass) -> f64 {
    let n = 5_000_000u32;
    let mut t: Vec<f64> = (0..7)
        .map(|_| {
            let start = Instant::now();
            let mut ok = 0u32;
            for _ in 0..n {
                ok += v.check(std::hint::black_box(who), class).is_ok() as u32;
            }
            assert_eq!(ok, n, "the writer must be allowed");
            start.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[3]
}

fn main() {
    let bdevs = Arc::new(BdevRegistry::default());
    bdevs.add(Arc::new(MallocBdev::new("Malloc0", 2048, 512, None).unwrap())).unwrap();
    let reg = VolumeRegistry::new(bdevs);
    let v = reg.open("Malloc0", "bench").unwrap();
    let writer = nvme(1, "nqn.2014-08.org.nvmexpress:bench-writer");
    let holder = nvme(2, "nqn.2014-08.org.nvmexpress:bench-holder");

    let open = time(&v, &writer, CommandClass::Write);
    register(&v, &holder, 0xaa);
    register(&v, &writer, 0xbb);
    run(&v, &holder, Action::Reserve { key: 0xaa, rtype: Ok(ResType::WriteExclusiveRegistrantsOnly) });
    let two = time(&v, &writer, CommandClass::Write);
    for i in 3..300u16 {
        register(&v, &nvme(i, &format!("nqn.2014-08.org.nvmexpress:client-{i}")), 0x1000 + i as u64);
    }
    let many = time(&v, &writer, CommandClass::Write);
    println!("| case | ns per check |");
    println!("| --- | ---: |");
    println!("| open volume | {open:.1} |");
    println!("| WE-RO held by another host, writer registered, 2 registrants | {two:.1} |");
    println!("| same, 300 registrants | {many:.1} |");
    println!();
    println!("Extra cost of a held reservation: {:.1} ns per I/O (2 registrants), {:.1} ns (300).", two - open, many - open);
}
