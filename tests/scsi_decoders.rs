//! The SCSI core's decoders of CDBs and parameter lists take whatever an initiator sends: random
//! input must give an answer or a sense, never a panic (project rule: bounds-checked decoders).

use std::sync::Arc;

use palisade::bdev::malloc::MallocBdev;
use palisade::scsi::{cdb, mode, opcodes, sbc, xcopy, Lun, LunMap};
use palisade::volume::Volume;
use proptest::prelude::*;

fn cdb_of(bytes: &[u8]) -> [u8; 32] {
    let mut c = [0u8; 32];
    let n = bytes.len().min(32);
    c[..n].copy_from_slice(&bytes[..n]);
    c
}

fn luns() -> LunMap {
    let b = Arc::new(MallocBdev::new("fuzz", 1024, 512, None).unwrap());
    LunMap { luns: vec![Arc::new(Lun::new(0, Arc::new(Volume::new(b))))] }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn block_cdbs(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
        let c = cdb_of(&bytes);
        if let Ok(b) = cdb::decode_block(&c) {
            // Whatever was decoded, the range check is total.
            let _ = cdb::in_range(b.lba, b.blocks as u64, 1024);
        }
        let _ = opcodes::report(&c);
        let _ = opcodes::report_tmf(&c);
        let st = mode::ModeState::fixed(false);
        let _ = mode::mode_sense(&st, &mode::ModeSense::decode(&c), false, 1024, 512);
    }

    #[test]
    fn parameter_lists(data in proptest::collection::vec(any::<u8>(), 0..600), ten in any::<bool>()) {
        let st = mode::ModeState::fixed(true);
        let _ = mode::mode_select(&st, ten, &data, 512);
        let _ = sbc::parse_unmap(&data, 1024);
        let _ = xcopy::parse(&data, &luns());
    }

    #[test]
    fn xcopy_headers_with_plausible_lengths(cscd in 0u16..200, seg in 0u32..200, tail in proptest::collection::vec(any::<u8>(), 0..300)) {
        // Random descriptors behind a header whose lengths roughly fit exercise the walkers.
        let mut d = vec![0u8; 16];
        d[2..4].copy_from_slice(&cscd.to_be_bytes());
        d[8..12].copy_from_slice(&seg.to_be_bytes());
        d.extend_from_slice(&tail);
        let _ = xcopy::parse(&d, &luns());
    }
}

#[test]
fn mode_select_round_trips_mode_sense() {
    // What MODE SENSE reports as current is accepted back unchanged by MODE SELECT (a common
    // initiator pattern: read, flip a bit, write back).
    let st = mode::ModeState::fixed(false);
    for page in [0x08u8, 0x0a, 0x1c] {
        let req = mode::ModeSense { ten: true, dbd: false, llbaa: false, pc: 0, page, subpage: 0, alloc: 255 };
        let mut d = mode::mode_sense(&st, &req, false, 1024, 512).unwrap();
        d[0] = 0;
        d[1] = 0; // mode data length is reserved in MODE SELECT
        let bd = u16::from_be_bytes([d[6], d[7]]) as usize;
        d[8 + bd] &= 0x3f; // PS is reserved in MODE SELECT
        let change = mode::mode_select(&st, true, &d, 512).expect("current values are accepted");
        assert!(!mode::apply(&st, change), "writing back the current values changes nothing");
    }
}
