//! Reservation engine and wire encodings: the conflict table, every PR OUT action, PR IN and
//! Reservation Report contents, unit attentions and notifications.

mod reservation;

use palisade::nvme::reservation as nv;
use palisade::reservation::{Action, CommandClass, PrError, PrEvent, ResType};
use palisade::scsi::pr::{self, Failure};
use palisade::scsi::{sense_key, Lun};
use palisade::volume::pr_gate::nexus_ref;
use palisade::volume::{Denied, Initiator};
use reservation::*;

const WE: u8 = 1;
const EA: u8 = 3;
const WERO: u8 = 5;
const EARO: u8 = 6;
const WEAR: u8 = 7;
const EAAR: u8 = 8;

/// SPC-4 5.13.1 Table 66 / SBC-3 Table 13, written out independently of the implementation:
/// per SCSI type, per class (Read, InfoRead, Write, StateChange, Always, PrOut), "HRU" =
/// allowed for the holder, a registered non-holder, an unregistered nexus.
const TABLE: &[(u8, [&str; 6])] = &[
    (WE, ["YYY", "YYY", "YNN", "YNN", "YYY", "YYY"]),
    (EA, ["YNN", "YNN", "YNN", "YNN", "YYY", "YYY"]),
    (WERO, ["YYY", "YYY", "YYN", "YYN", "YYY", "YYY"]),
    (EARO, ["YYN", "YYN", "YYN", "YYN", "YYY", "YYY"]),
    // All registrants: a registered nexus is a holder.
    (WEAR, ["YYY", "YYY", "YYN", "YYN", "YYY", "YYY"]),
    (EAAR, ["YYN", "YYN", "YYN", "YYN", "YYY", "YYY"]),
];
const CLASSES: [CommandClass; 6] = [
    CommandClass::Read,
    CommandClass::InfoRead,
    CommandClass::Write,
    CommandClass::StateChange,
    CommandClass::Always,
    CommandClass::PrOut,
];

fn expected(t: u8, class: usize, rel: usize) -> bool {
    let row = TABLE.iter().find(|r| r.0 == t).unwrap();
    row.1[class].as_bytes()[rel] == b'Y'
}

#[test]
fn conflict_table_engine() {
    for &(t, _) in TABLE {
        let (_r, v) = volume(None, None);
        let (h, g, u) = (iscsi("iqn.h", "000000000001", 1), nvme(2, "nqn.r"), iscsi("iqn.u", "000000000003", 1));
        let rt = ResType::from_scsi(t).unwrap();
        run(&v, &h, Action::Register { key: 1, sa_key: 0xa, ignore_existing: true, all_tg_pt: false, spec_i_pt: false, aptpl: Some(false) }).unwrap();
        run(&v, &g, Action::NvmeRegister { nrkey: 0xb, aptpl: None }).unwrap();
        run(&v, &h, Action::Reserve { key: 0xa, rtype: Ok(rt) }).unwrap();
        let snap = v.reservations().snapshot();
        for (ci, &class) in CLASSES.iter().enumerate() {
            for (ri, who) in [&h, &g, &u].into_iter().enumerate() {
                assert_eq!(
                    snap.check(nexus_ref(who), class),
                    expected(t, ci, ri),
                    "type {t} class {class:?} relation {ri}"
                );
            }
        }
        // And the table function itself agrees.
        for (ci, &class) in CLASSES.iter().enumerate() {
            for (ri, rel) in [palisade::reservation::Relation::Holder, palisade::reservation::Relation::Registered, palisade::reservation::Relation::Unregistered].into_iter().enumerate() {
                let rel = if rt.all_registrants() && ri == 1 { palisade::reservation::Relation::Holder } else { rel };
                assert_eq!(palisade::reservation::allowed(class, rt, rel), expected(t, ci, ri), "allowed({class:?},{rt:?},{rel:?})");
            }
        }
    }
}

/// The same table through both encodings: the reservation is set up with SCSI PR OUT bytes by an
/// iSCSI holder or NVMe Acquire by an NVMe holder; commands are classified from SCSI CDBs and NVMe
/// opcodes and checked by the volume.
#[test]
fn conflict_table_through_both_protocols() {
    let scsi_cdbs: [(usize, [u8; 10]); 6] = [
        (0, [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0]), // READ(10)
        (1, [0x1a, 0, 0x3f, 0, 0xff, 0, 0, 0, 0, 0]), // MODE SENSE(6)
        (2, [0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0]), // WRITE(10)
        (3, [0x15, 0x10, 0, 0, 0x18, 0, 0, 0, 0, 0]), // MODE SELECT(6)
        (4, [0x12, 0, 0, 0, 0x24, 0, 0, 0, 0, 0]), // INQUIRY
        (5, [0x5f, 0, 0, 0, 0, 0, 0, 0, 24, 0]), // PR OUT
    ];
    let nvme_ops: [(usize, u8); 4] = [(0, 0x02), (2, 0x01), (4, nv::OPC_RESERVATION_REPORT), (5, nv::OPC_RESERVATION_REGISTER)];
    for &(t, _) in TABLE {
        for holder_is_nvme in [false, true] {
            let (_r, v) = volume(None, None);
            let (h, g, u) = if holder_is_nvme {
                (nvme(1, "nqn.h"), iscsi("iqn.r", "000000000002", 1), nvme(3, "nqn.u"))
            } else {
                (iscsi("iqn.h", "000000000001", 1), nvme(2, "nqn.r"), iscsi("iqn.u", "000000000003", 2))
            };
            let rt = ResType::from_scsi(t).unwrap();
            for (who, key) in [(&h, 0xa), (&g, 0xb)] {
                match who {
                    Initiator::Iscsi { .. } => scsi(&v, who, pr::sa::REGISTER, 0, 0, key, 0).unwrap(),
                    Initiator::Nvme { .. } => {
                        let c = nvme_cmd(&v, who, nv::OPC_RESERVATION_REGISTER, 0, 0, &keys_le(0, key));
                        assert!(c.status.is_success());
                    }
                }
            }
            if holder_is_nvme {
                let c = nvme_cmd(&v, &h, nv::OPC_RESERVATION_ACQUIRE, (rt.nvme_code() as u32) << 8, 0, &keys_le(0xa, 0));
                assert!(c.status.is_success(), "acquire {c:?}");
            } else {
                scsi(&v, &h, pr::sa::RESERVE, t, 0xa, 0, 0).unwrap();
            }
            for (ri, who) in [&h, &g, &u].into_iter().enumerate() {
                match who {
                    Initiator::Iscsi { .. } => {
                        for (ci, cdb) in &scsi_cdbs {
                            let got = v.check(who, pr::command_class(cdb)).is_ok();
                            assert_eq!(got, expected(t, *ci, ri), "scsi type {t} op {:#x} rel {ri}", cdb[0]);
                        }
                    }
                    Initiator::Nvme { .. } => {
                        for (ci, opc) in nvme_ops {
                            let got = v.check(who, nv::io_class(opc)).is_ok();
                            assert_eq!(got, expected(t, ci, ri), "nvme type {t} opc {opc:#x} rel {ri}");
                            if ci == 2 {
                                let want = if expected(t, ci, ri) { Ok(()) } else { Err(Denied::ReservationConflict) };
                                assert_eq!(v.check(who, nv::io_class(opc)), want);
                                if want.is_err() {
                                    assert_eq!(nv::denied_status(Denied::ReservationConflict), nv::Status::RESERVATION_CONFLICT);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn gen(v: &palisade::volume::Volume) -> u32 {
    v.reservations().read(|s| s.generation)
}

#[test]
fn register_rules_and_generation() {
    let (_r, v) = volume(None, None);
    let a = iscsi("iqn.a", "000000000001", 1);
    // Unregistered REGISTER with a non-zero key: conflict; with SA key 0: no-op, generation kept.
    assert_eq!(scsi(&v, &a, pr::sa::REGISTER, 0, 5, 6, 0), Err(Failure::Conflict));
    scsi(&v, &a, pr::sa::REGISTER, 0, 0, 0, 0).unwrap();
    assert_eq!(gen(&v), 0);
    scsi(&v, &a, pr::sa::REGISTER, 0, 0, 6, 0).unwrap();
    assert_eq!(gen(&v), 1);
    // Registered: wrong key conflicts, right key changes it; RIEK ignores the key.
    assert_eq!(scsi(&v, &a, pr::sa::REGISTER, 0, 7, 8, 0), Err(Failure::Conflict));
    scsi(&v, &a, pr::sa::REGISTER, 0, 6, 8, 0).unwrap();
    scsi(&v, &a, pr::sa::REGISTER_AND_IGNORE_EXISTING_KEY, 0, 0x999, 9, 0).unwrap();
    assert_eq!(v.reservations().read(|s| s.registrants[0].key), 9);
    assert_eq!(gen(&v), 3);
    // Unregister.
    scsi(&v, &a, pr::sa::REGISTER, 0, 9, 0, 0).unwrap();
    assert_eq!(v.reservations().read(|s| s.registrants.len()), 0);
    assert_eq!(gen(&v), 4);
    // A re-login with a new ISID is another nexus.
    scsi(&v, &a, pr::sa::REGISTER, 0, 0, 1, 0).unwrap();
    let a2 = iscsi("iqn.a", "000000000002", 1);
    assert_eq!(scsi(&v, &a2, pr::sa::RESERVE, WE, 1, 0, 0), Err(Failure::Conflict));
    scsi(&v, &a2, pr::sa::REGISTER, 0, 0, 2, 0).unwrap();
    assert_eq!(v.reservations().read(|s| s.registrants.len()), 2);
}

#[test]
fn unregistering_the_holder() {
    for (t, released, ua) in [(WE, true, false), (WERO, true, true), (EAAR, false, false)] {
        let (_r, v) = volume(None, None);
        let lun = Lun::new(0, v.clone());
        let (a, b) = (iscsi("iqn.a", "000000000001", 1), iscsi("iqn.b", "000000000002", 1));
        scsi(&v, &a, pr::sa::REGISTER, 0, 0, 1, 0).unwrap();
        scsi(&v, &b, pr::sa::REGISTER, 0, 0, 2, 0).unwrap();
        scsi(&v, &a, pr::sa::RESERVE, t, 1, 0, 0).unwrap();
        scsi(&v, &a, pr::sa::REGISTER, 0, 1, 0, 0).unwrap();
        assert_eq!(v.reservations().read(|s| s.reservation.is_none()), released, "type {t}");
        let got = pr::unit_attention(&lun, &b);
        assert_eq!(got.is_some(), ua, "type {t}");
        if ua {
            assert_eq!((got.unwrap().asc, got.unwrap().ascq), (0x2a, 0x04));
        }
        assert_eq!(pr::unit_attention(&lun, &b), None);
        assert_eq!(pr::unit_attention(&lun, &a), None);
    }
}

#[test]
fn reserve_and_release_rules() {
    let (_r, v) = volume(None, None);
    let lun = Lun::new(0, v.clone());
    let (a, b) = (iscsi("iqn.a", "000000000001", 1), nvme(2, "nqn.b"));
    scsi(&v, &a, pr::sa::REGISTER, 0, 0, 1, 0).unwrap();
    run(&v, &b, Action::NvmeRegister { nrkey: 2, aptpl: None }).unwrap();
    let g0 = gen(&v);
    // Unregistered or wrong key: conflict. Bad type / scope: INVALID FIELD IN CDB.
    assert_eq!(scsi(&v, &a, pr::sa::RESERVE, WERO, 9, 0, 0), Err(Failure::Conflict));
    let Err(Failure::Check(s)) = scsi(&v, &a, pr::sa::RESERVE, 2, 1, 0, 0) else { panic!("type 2") };
    assert_eq!((s.key, s.asc, s.field), (sense_key::ILLEGAL_REQUEST, 0x24, Some((true, 2, Some(3)))));
    let Err(Failure::Check(s)) = scsi(&v, &a, pr::sa::RESERVE, 0x10 | WE, 1, 0, 0) else { panic!("scope") };
    assert_eq!(s.field, Some((true, 2, Some(7))));
    scsi(&v, &a, pr::sa::RESERVE, WERO, 1, 0, 0).unwrap();
    scsi(&v, &a, pr::sa::RESERVE, WERO, 1, 0, 0).unwrap(); // same holder, same type: GOOD
    assert_eq!(scsi(&v, &a, pr::sa::RESERVE, EA, 1, 0, 0), Err(Failure::Conflict));
    let acq = nvme_cmd(&v, &b, nv::OPC_RESERVATION_ACQUIRE, 3 << 8, 0, &keys_le(2, 0));
    assert_eq!(acq.status, nv::Status::RESERVATION_CONFLICT);
    assert_eq!(gen(&v), g0, "RESERVE does not bump the generation");
    // Release by a registered non-holder: GOOD, no effect.
    let rel = nvme_cmd(&v, &b, nv::OPC_RESERVATION_RELEASE, 3 << 8, 0, &2u64.to_le_bytes());
    assert!(rel.status.is_success());
    assert!(v.reservations().read(|s| s.reservation.is_some()));
    // Release by the holder with the wrong type: INVALID RELEASE OF PERSISTENT RESERVATION.
    let Err(Failure::Check(s)) = scsi(&v, &a, pr::sa::RELEASE, WE, 1, 0, 0) else { panic!() };
    assert_eq!((s.asc, s.ascq), (0x26, 0x04));
    scsi(&v, &a, pr::sa::RELEASE, WERO, 1, 0, 0).unwrap();
    assert!(v.reservations().read(|s| s.reservation.is_none()));
    // Registrants-only release: RESERVATIONS RELEASED to the other registrant (NVMe: log type 2).
    let log = nv::notification_log(&v, &b, 7);
    assert_eq!(log[8], 2);
    assert_eq!(u32::from_le_bytes(log[12..16].try_into().unwrap()), 7);
    assert_eq!(u64::from_le_bytes(log[0..8].try_into().unwrap()), 1);
    assert_eq!(nv::notification_log(&v, &b, 7)[8], 0, "delivered exactly once");
    assert_eq!(pr::unit_attention(&lun, &a), None, "not to the releasing nexus");
    // Release with no reservation: GOOD.
    scsi(&v, &a, pr::sa::RELEASE, WERO, 1, 0, 0).unwrap();
}

#[test]
fn clear_preempts_everyone_else() {
    let (_r, v) = volume(None, None);
    let lun = Lun::new(0, v.clone());
    let (a, b, c) = (iscsi("iqn.a", "000000000001", 1), iscsi("iqn.b", "000000000002", 1), nvme(3, "nqn.c"));
    scsi(&v, &a, pr::sa::REGISTER, 0, 0, 1, 0).unwrap();
    scsi(&v, &b, pr::sa::REGISTER, 0, 0, 2, 0).unwrap();
    run(&v, &c, Action::NvmeRegister { nrkey: 3, aptpl: None }).unwrap();
    scsi(&v, &a, pr::sa::RESERVE, EA, 1, 0, 0).unwrap();
    assert_eq!(scsi(&v, &b, pr::sa::CLEAR, 0, 9, 0, 0), Err(Failure::Conflict));
    let g0 = gen(&v);
    scsi(&v, &b, pr::sa::CLEAR, 0, 2, 0, 0).unwrap();
    assert_eq!(gen(&v), g0 + 1);
    assert!(v.reservations().read(|s| s.registrants.is_empty() && s.reservation.is_none()));
    let ua = pr::unit_attention(&lun, &a).unwrap();
    assert_eq!((ua.key, ua.asc, ua.ascq), (sense_key::UNIT_ATTENTION, 0x2a, 0x03));
    assert_eq!(pr::unit_attention(&lun, &a), None);
    assert_eq!(pr::unit_attention(&lun, &b), None);
    assert_eq!(nv::notification_log(&v, &c, 1)[8], 3); // Reservation Preempted
}

#[test]
fn preempt_rules() {
    let (_r, v) = volume(None, None);
    let lun = Lun::new(0, v.clone());
    let (a, b, c) = (iscsi("iqn.a", "000000000001", 1), iscsi("iqn.b", "000000000002", 1), iscsi("iqn.c", "000000000003", 1));
    for (who, k) in [(&a, 1), (&b, 2), (&c, 3)] {
        scsi(&v, who, pr::sa::REGISTER, 0, 0, k, 0).unwrap();
    }
    scsi(&v, &a, pr::sa::RESERVE, WE, 1, 0, 0).unwrap();
    // Zero SA key without an all-registrants reservation: INVALID FIELD IN PARAMETER LIST.
    let Err(Failure::Check(s)) = scsi(&v, &b, pr::sa::PREEMPT, WE, 2, 0, 0) else { panic!() };
    assert_eq!((s.asc, s.field), (0x26, Some((false, 8, None))));
    // Preempting the holder needs a valid type.
    let Err(Failure::Check(s)) = scsi(&v, &b, pr::sa::PREEMPT_AND_ABORT, 0, 2, 1, 0) else { panic!() };
    assert_eq!((s.asc, s.field), (0x24, Some((true, 2, Some(3)))));
    // Removing a non-holder's registration: the type is ignored (type 0 accepted).
    scsi(&v, &b, pr::sa::PREEMPT_AND_ABORT, 0, 2, 3, 0).unwrap();
    assert_eq!(pr::unit_attention(&lun, &c).map(|s| s.ascq), Some(0x05));
    assert_eq!(pr::unit_attention(&lun, &c), None);
    assert!(v.reservations().read(|s| s.holder().unwrap().key == 1));
    // A repeated preempt of the removed key: RESERVATION CONFLICT (Linux counts it as fenced).
    assert_eq!(scsi(&v, &b, pr::sa::PREEMPT_AND_ABORT, 0, 2, 3, 0), Err(Failure::Conflict));
    // Preempt the holder with a new type: holder loses its registration, type changes.
    let g0 = gen(&v);
    scsi(&v, &b, pr::sa::PREEMPT, EARO, 2, 1, 0).unwrap();
    assert_eq!(gen(&v), g0 + 1);
    v.reservations().read(|s| {
        assert_eq!(s.holder().unwrap().key, 2);
        assert_eq!(s.reservation.unwrap().rtype, ResType::ExclusiveAccessRegistrantsOnly);
        assert_eq!(s.registrants.len(), 1);
    });
    assert_eq!(pr::unit_attention(&lun, &a).map(|s| s.ascq), Some(0x05));
    // All-registrants with SA key 0: everyone else goes, the preemptor holds the new type.
    for (who, k) in [(&a, 1), (&c, 3)] {
        scsi(&v, who, pr::sa::REGISTER, 0, 0, k, 0).unwrap();
    }
    scsi(&v, &b, pr::sa::PREEMPT, EAAR, 2, 2, 0).unwrap(); // preempt own key: change type to EA-AR
    assert_eq!(pr::unit_attention(&lun, &a).map(|s| s.ascq), Some(0x04), "type changed: RESERVATIONS RELEASED");
    assert_eq!(pr::unit_attention(&lun, &c).map(|s| s.ascq), Some(0x04));
    scsi(&v, &c, pr::sa::PREEMPT, WE, 3, 0, 0).unwrap();
    v.reservations().read(|s| {
        assert_eq!(s.registrants.len(), 1);
        assert_eq!(s.holder().unwrap().key, 3);
        assert_eq!(s.reservation.unwrap().rtype, ResType::WriteExclusive);
    });
    assert_eq!(pr::unit_attention(&lun, &a).map(|s| s.ascq), Some(0x05));
    assert_eq!(pr::unit_attention(&lun, &b).map(|s| s.ascq), Some(0x05));
}

fn move_params(key: u64, sa_key: u64, unreg: bool, rel: u16, port: &str) -> ([u8; 10], Vec<u8>) {
    let mut tid_body = port.as_bytes().to_vec();
    tid_body.push(0);
    while tid_body.len() % 4 != 0 {
        tid_body.push(0);
    }
    let mut tid = vec![0x45, 0];
    tid.extend_from_slice(&(tid_body.len() as u16).to_be_bytes());
    tid.extend_from_slice(&tid_body);
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p[17] = if unreg { 0x02 } else { 0 };
    p[18..20].copy_from_slice(&rel.to_be_bytes());
    p[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
    p.extend_from_slice(&tid);
    let mut cdb = [0u8; 10];
    cdb[0] = 0x5f;
    cdb[1] = pr::sa::REGISTER_AND_MOVE;
    cdb[5..9].copy_from_slice(&(p.len() as u32).to_be_bytes());
    (cdb, p)
}

#[test]
fn register_and_move() {
    let (_r, v) = volume(None, None);
    let (a, b) = (iscsi("iqn.a", "000000000001", 1), iscsi("iqn.b", "00000000000b", 2));
    scsi(&v, &a, pr::sa::REGISTER, 0, 0, 1, 0).unwrap();
    // Not holding a reservation: conflict.
    let (cdb, p) = move_params(1, 0x22, false, 2, "iqn.b,i,0x00000000000B");
    let act = pr::decode_pr_out(&cdb, &p).unwrap();
    assert_eq!(run(&v, &a, act.clone()), Err(PrError::Conflict));
    scsi(&v, &a, pr::sa::RESERVE, WE, 1, 0, 0).unwrap();
    // Target port 2 was never seen: INVALID FIELD IN PARAMETER LIST at the port identifier.
    assert_eq!(run(&v, &a, act.clone()), Err(PrError::UnknownTargetPort(2)));
    v.reservations().observe(nexus_ref(&b));
    // Move to itself: invalid.
    let (cdb2, p2) = move_params(1, 0x22, false, 1, "iqn.a,i,0x000000000001");
    assert_eq!(run(&v, &a, pr::decode_pr_out(&cdb2, &p2).unwrap()), Err(PrError::MoveToSelf));
    let g0 = gen(&v);
    run(&v, &a, act).unwrap();
    assert_eq!(gen(&v), g0 + 1);
    v.reservations().read(|s| {
        let h = s.holder().unwrap();
        assert_eq!(h.key, 0x22);
        assert_eq!(h.nexus, palisade::reservation::Nexus::Iscsi {
            initiator_port: "iqn.b,i,0x00000000000b".into(),
            target_port: "iqn.2026-11.io.palisade:t1,t,0x0002".into(),
            rel_port_id: 2
        });
        assert_eq!(s.registrants.len(), 2);
    });
    assert!(v.check(&b, CommandClass::Write).is_ok());
    assert!(v.check(&a, CommandClass::Write).is_err());
    // UNREG: move back and drop the source registration.
    let (cdb3, p3) = move_params(0x22, 0x33, true, 1, "iqn.a,i,0x000000000001");
    run(&v, &b, pr::decode_pr_out(&cdb3, &p3).unwrap()).unwrap();
    v.reservations().read(|s| {
        assert_eq!(s.registrants.len(), 1);
        assert_eq!(s.holder().unwrap().key, 0x33);
    });
    // TransportID format 00b cannot name a port.
    let (cdb4, mut p4) = move_params(0x33, 0x44, false, 2, "iqn.b,i,0x00000000000b");
    p4[24] = 0x05;
    let Err(Failure::Check(s)) = pr::decode_pr_out(&cdb4, &p4) else { panic!() };
    assert_eq!(s.asc, 0x26);
    // All-registrants reservations cannot be moved.
    scsi(&v, &a, pr::sa::PREEMPT, WEAR, 0x33, 0x33, 0).unwrap();
    let (cdb5, p5) = move_params(0x33, 0x44, false, 2, "iqn.b,i,0x00000000000b");
    assert_eq!(run(&v, &a, pr::decode_pr_out(&cdb5, &p5).unwrap()), Err(PrError::Conflict));
}

#[test]
fn pr_in_contents() {
    let (_r, v) = volume(None, None);
    let a = iscsi("iqn.1994-05.com.example:a", "400001370000", 1);
    let b = nvme(2, "nqn.2014-08.org.nvmexpress:uuid:b");
    let c = iscsi("iqn.c", "000000000003", 1);
    scsi(&v, &a, pr::sa::REGISTER, 0, 0, 0x1111, 0).unwrap();
    run(&v, &b, Action::NvmeRegister { nrkey: 0x2222, aptpl: None }).unwrap();
    scsi(&v, &c, pr::sa::REGISTER_AND_IGNORE_EXISTING_KEY, 0, 0, 0x3333, 0x04).unwrap(); // ALL_TG_PT
    scsi(&v, &a, pr::sa::RESERVE, WERO, 0x1111, 0, 0).unwrap();
    let s = v.reservations().read(|s| s.clone());
    let cdb = |sa: u8| [0x5e, sa, 0, 0, 0, 0, 0, 0x10, 0, 0];
    let keys = pr::pr_in(&cdb(0), &s).unwrap();
    let mut want = 3u32.to_be_bytes().to_vec();
    want.extend_from_slice(&24u32.to_be_bytes());
    for k in [0x1111u64, 0x2222, 0x3333] {
        want.extend_from_slice(&k.to_be_bytes());
    }
    assert_eq!(keys, want);
    let res = pr::pr_in(&cdb(1), &s).unwrap();
    let mut want = 3u32.to_be_bytes().to_vec();
    want.extend_from_slice(&16u32.to_be_bytes());
    want.extend_from_slice(&0x1111u64.to_be_bytes());
    want.extend_from_slice(&[0, 0, 0, 0, 0, WERO, 0, 0]);
    assert_eq!(res, want);
    assert_eq!(pr::pr_in(&cdb(2), &s).unwrap(), vec![0, 8, 0x15, 0x80, 0xea, 0x01, 0, 0]);
    let full = pr::pr_in(&cdb(3), &s).unwrap();
    assert_eq!(&full[0..4], &3u32.to_be_bytes());
    assert_eq!(u32::from_be_bytes(full[4..8].try_into().unwrap()) as usize, full.len() - 8);
    // First descriptor: iSCSI holder, TransportID format 01b with the ISID.
    let d = &full[8..];
    assert_eq!(&d[0..8], &0x1111u64.to_be_bytes());
    assert_eq!(d[12], 0x01); // R_HOLDER
    assert_eq!(d[13], WERO);
    assert_eq!(&d[18..20], &1u16.to_be_bytes());
    let tl = u32::from_be_bytes(d[20..24].try_into().unwrap()) as usize;
    let tid = &d[24..24 + tl];
    assert_eq!(tid[0], 0x45);
    let name = b"iqn.1994-05.com.example:a,i,0x400001370000\0";
    assert_eq!(u16::from_be_bytes([tid[2], tid[3]]) as usize, tl - 4);
    assert_eq!(&tid[4..4 + name.len()], name);
    assert_eq!(tl % 4, 0);
    // Second: NVMe host, third: ALL_TG_PT with relative port 0.
    let d2 = &d[24 + tl..];
    assert_eq!(&d2[0..8], &0x2222u64.to_be_bytes());
    assert_eq!(d2[12], 0);
    let tl2 = u32::from_be_bytes(d2[20..24].try_into().unwrap()) as usize;
    assert_eq!(d2[24] & 0x0f, 0x0f);
    assert_eq!(&d2[28..44], match &b { Initiator::Nvme { host_id, .. } => &host_id[..], _ => unreachable!() });
    let d3 = &d2[24 + tl2..];
    assert_eq!(d3[12], 0x02);
    assert_eq!(&d3[18..20], &[0, 0]);
    // Unknown service action: INVALID FIELD IN CDB at byte 1.
    let Err(Failure::Check(e)) = pr::pr_in(&cdb(4), &s) else { panic!() };
    assert_eq!(e.field, Some((true, 1, Some(4))));
    // READ FULL STATUS descriptors round-trip through the TransportID decoder.
    let back = pr::decode_transport_id(tid, 1).unwrap();
    assert!(matches!(back, palisade::reservation::Nexus::Iscsi { ref initiator_port, .. } if initiator_port == "iqn.1994-05.com.example:a,i,0x400001370000"));
}

#[test]
fn all_tg_pt_covers_every_target_port() {
    let (_r, v) = volume(None, None);
    let a1 = iscsi("iqn.a", "000000000001", 1);
    let a2 = iscsi("iqn.a", "000000000001", 2);
    let b = iscsi("iqn.b", "000000000002", 1);
    scsi(&v, &a1, pr::sa::REGISTER, 0, 0, 1, 0x04).unwrap();
    scsi(&v, &b, pr::sa::REGISTER, 0, 0, 2, 0).unwrap();
    scsi(&v, &a2, pr::sa::RESERVE, EA, 1, 0, 0).unwrap(); // registered through port 2 as well
    assert!(v.check(&a1, CommandClass::Read).is_ok());
    assert!(v.check(&a2, CommandClass::Write).is_ok());
    assert!(v.check(&b, CommandClass::Read).is_err());
    // Registering the same port with ALL_TG_PT from another port while registered: conflict.
    assert_eq!(scsi(&v, &b, pr::sa::REGISTER, 0, 2, 2, 0x04), Ok(()), "already registered: ALL_TG_PT ignored");
    let c1 = iscsi("iqn.c", "000000000003", 1);
    let c2 = iscsi("iqn.c", "000000000003", 2);
    scsi(&v, &c1, pr::sa::REGISTER, 0, 0, 3, 0).unwrap();
    assert_eq!(scsi(&v, &c2, pr::sa::REGISTER, 0, 0, 3, 0x04), Err(Failure::Conflict));
}

#[test]
fn pr_out_decoding_errors() {
    let (cdb, p) = pr_out(0x08, 0, 0, 1, 0);
    let Err(Failure::Check(s)) = pr::decode_pr_out(&cdb, &p) else { panic!() };
    assert_eq!(s.field, Some((true, 1, Some(4))));
    let (mut cdb, p) = pr_out(0, 0, 0, 1, 0);
    cdb[8] = 23;
    assert_eq!(pr::decode_pr_out(&cdb, &p), Err(Failure::Check(pr::PARAMETER_LIST_LENGTH_ERROR)));
    let (cdb, p) = pr_out(0, 0, 0, 1, 0);
    assert_eq!(pr::decode_pr_out(&cdb, &p[..20]), Err(Failure::Check(pr::PARAMETER_LIST_LENGTH_ERROR)));
    let (cdb, p) = pr_out(0, 0, 0, 1, 0x08);
    let Err(Failure::Check(s)) = pr::decode_pr_out(&cdb, &p) else { panic!() };
    assert_eq!((s.asc, s.field), (0x26, Some((false, 20, Some(3)))));
    assert!(pr::decode_pr_out(&[0x5f, 0], &p).is_err());
    // REGISTER AND MOVE whose TransportID length runs past the list.
    let (cdb, mut p) = move_params(1, 2, false, 1, "iqn.x,i,0x1");
    p[23] = 200;
    assert_eq!(pr::decode_pr_out(&cdb, &p), Err(Failure::Check(pr::PARAMETER_LIST_LENGTH_ERROR)));
    // RESERVE(6) with the extent / third-party bits.
    assert!(pr::check_reserve_release_cdb(&[0x16, 0x01, 0, 0, 0, 0]).is_err());
    assert!(pr::check_reserve_release_cdb(&[0x16, 0, 0, 0, 0, 0]).is_ok());
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;
    proptest! {
        #[test]
        fn decoders_never_panic(cdb in proptest::collection::vec(any::<u8>(), 0..16), data in proptest::collection::vec(any::<u8>(), 0..96), d10 in any::<u32>(), d11 in any::<u32>()) {
            let _ = pr::decode_pr_out(&cdb, &data);
            let _ = pr::decode_transport_id(&data, 1);
            let _ = pr::command_class(&cdb);
            let _ = pr::check_reserve_release_cdb(&cdb);
            let _ = nv::decode_register(d10, &data);
            let _ = nv::decode_acquire(d10, &data);
            let _ = nv::decode_release(d10, &data);
            let _ = nv::report(d10 & 0xfff, d11, &Default::default(), d11 & 2 != 0, 4096);
        }
    }
}

#[test]
fn spc2_reserve_release_interplay() {
    let (_r, v) = volume(None, None);
    let (a, b) = (iscsi("iqn.a", "000000000001", 1), iscsi("iqn.b", "000000000002", 1));
    let pr = v.reservations();
    pr.reserve6(nexus_ref(&a)).unwrap();
    pr.reserve6(nexus_ref(&a)).unwrap();
    assert_eq!(pr.reserve6(nexus_ref(&b)), Err(PrError::Conflict));
    pr.release6(nexus_ref(&b)).unwrap(); // no-op
    assert!(v.check(&a, pr::command_class(&[0x1a, 0, 0x3f, 0, 0xff, 0])).is_ok());
    assert_eq!(v.check(&b, pr::command_class(&[0x1a, 0, 0x3f, 0, 0xff, 0])), Err(Denied::ReservationConflict));
    assert!(v.check(&b, CommandClass::Always).is_ok());
    assert_eq!(v.check(&b, CommandClass::PrOut), Err(Denied::ReservationConflict));
    assert_eq!(nvme_cmd(&v, &nvme(1, "nqn.x"), nv::OPC_RESERVATION_REGISTER, 0, 0, &keys_le(0, 1)).status, nv::Status::RESERVATION_CONFLICT);
    pr.release6(nexus_ref(&a)).unwrap();
    pr.reserve6(nexus_ref(&b)).unwrap();
    pr.nexus_lost(Some(nexus_ref(&b)));
    assert!(v.check(&a, CommandClass::Write).is_ok());
    // Registrations make RESERVE(6)/RELEASE(6) conflict, except for the holder (CRH=1).
    scsi(&v, &a, pr::sa::REGISTER, 0, 0, 1, 0).unwrap();
    assert_eq!(pr.reserve6(nexus_ref(&b)), Err(PrError::Conflict));
    assert_eq!(pr.reserve6(nexus_ref(&a)), Err(PrError::Conflict));
    scsi(&v, &a, pr::sa::RESERVE, WE, 1, 0, 0).unwrap();
    pr.reserve6(nexus_ref(&a)).unwrap();
    pr.release6(nexus_ref(&a)).unwrap();
    assert!(pr.read(|s| s.reservation.is_some()), "RELEASE(6) leaves the persistent reservation");
    assert_eq!(pr.release6(nexus_ref(&b)), Err(PrError::Conflict));
}

#[test]
fn hundreds_of_registrants() {
    let (_r, v) = volume(None, None);
    let mut who = Vec::new();
    for i in 0..600u32 {
        let w = if i % 2 == 0 { iscsi(&format!("iqn.client{i}"), &format!("{i:012x}"), 1 + (i % 4) as u16) } else { nvme((i % 250) as u8, &format!("nqn.client{i}")) };
        match &w {
            Initiator::Iscsi { .. } => scsi(&v, &w, pr::sa::REGISTER_AND_IGNORE_EXISTING_KEY, 0, 0, 0x1000 + i as u64, 0x01).unwrap(),
            Initiator::Nvme { .. } => assert!(nvme_cmd(&v, &w, nv::OPC_RESERVATION_REGISTER, 0x8, 0, &keys_le(0, 0x1000 + i as u64)).status.is_success()),
        }
        who.push(w);
    }
    scsi(&v, &who[0], pr::sa::RESERVE, EARO, 0x1000, 0, 0).unwrap();
    let keys = v.reservations().read(|s| pr::read_keys(s));
    assert_eq!(u32::from_be_bytes(keys[4..8].try_into().unwrap()), 600 * 8);
    for w in &who {
        assert!(v.check(w, CommandClass::Write).is_ok());
    }
    assert!(v.check(&iscsi("iqn.client0", "999999999999", 1), CommandClass::Read).is_err());
}

#[test]
fn nvme_register_semantics() {
    let (_r, v) = volume(None, None);
    let h = nvme(1, "nqn.h");
    let reg = |cdw10: u32, cr: u64, nr: u64| nvme_cmd(&v, &h, nv::OPC_RESERVATION_REGISTER, cdw10, 0, &keys_le(cr, nr)).status;
    assert_eq!(reg(0, 0, 0), nv::Status::INVALID_FIELD, "register key 0");
    assert_eq!(reg(0, 0, 5), nv::Status::SUCCESS);
    assert_eq!(reg(0, 0, 5), nv::Status::SUCCESS, "same key again");
    assert_eq!(reg(0, 0, 6), nv::Status::RESERVATION_CONFLICT);
    assert_eq!(reg(2, 4, 6), nv::Status::RESERVATION_CONFLICT, "replace with wrong key");
    assert_eq!(reg(2 | 8, 4, 6), nv::Status::SUCCESS, "replace with IEKEY");
    assert_eq!(reg(1 << 30, 0, 6), nv::Status::INVALID_FIELD, "CPTPL 01b");
    assert_eq!(reg(1, 5, 0), nv::Status::RESERVATION_CONFLICT, "unregister wrong key");
    assert_eq!(reg(2, 6, 0), nv::Status::SUCCESS, "replace to 0 unregisters");
    assert!(v.reservations().read(|s| s.registrants.is_empty()));
    assert_eq!(reg(1, 6, 0), nv::Status::RESERVATION_CONFLICT, "unregister when not registered");
    assert_eq!(reg(7, 0, 1), nv::Status::INVALID_FIELD);
    assert_eq!(nvme_cmd(&v, &h, nv::OPC_RESERVATION_ACQUIRE, 3, 0, &keys_le(0, 0)).status, nv::Status::INVALID_FIELD);
}

#[test]
fn nvme_report_structures() {
    let (_r, v) = volume(None, None);
    let (a, b) = (nvme(1, "nqn.a"), iscsi("iqn.b", "000000000002", 1));
    assert!(nvme_cmd(&v, &a, nv::OPC_RESERVATION_REGISTER, 0, 0, &keys_le(0, 0xaa)).status.is_success());
    scsi(&v, &b, pr::sa::REGISTER, 0, 0, 0xbb, 0).unwrap();
    assert!(nvme_cmd(&v, &a, nv::OPC_RESERVATION_ACQUIRE, 6 << 8, 0, &keys_le(0xaa, 0)).status.is_success()); // EA-AR
    // Extended (EDS=1): 64-byte header and entries with 128-bit host ids.
    let rep = nvme_cmd(&v, &a, nv::OPC_RESERVATION_REPORT, (64 * 3 / 4) - 1, 1, &[]);
    assert!(rep.status.is_success());
    let d = rep.data;
    assert_eq!(d.len(), 192);
    assert_eq!(u32::from_le_bytes(d[0..4].try_into().unwrap()), 2);
    assert_eq!(d[4], 6);
    assert_eq!(u16::from_le_bytes([d[5], d[6]]), 2);
    assert_eq!(d[9], 0);
    let e = &d[64..128];
    assert_eq!(&e[0..2], &[0xff, 0xff]);
    assert_eq!(e[2], 1, "all registrants hold it");
    assert_eq!(u64::from_le_bytes(e[8..16].try_into().unwrap()), 0xaa);
    assert_eq!(e[16], 0x5a);
    assert_eq!(e[31], 1);
    let e2 = &d[128..192];
    assert_eq!(u64::from_le_bytes(e2[8..16].try_into().unwrap()), 0xbb);
    assert_eq!(&e2[16..32], &[0; 16], "iSCSI registrants have no host id");
    // Truncated by NUMD: header only.
    assert_eq!(nvme_cmd(&v, &a, nv::OPC_RESERVATION_REPORT, 15, 1, &[]).data.len(), 64);
    // Standard structure: refused for 128-bit host ids, encoded otherwise.
    assert_eq!(nvme_cmd(&v, &a, nv::OPC_RESERVATION_REPORT, 100, 0, &[]).status, nv::Status::HOST_ID_INCONSISTENT_FORMAT);
    let s = v.reservations().read(|s| s.clone());
    let std = nv::report(17, 0, &s, false, 4096).unwrap();
    assert_eq!(std.len(), 72);
    assert_eq!(u16::from_le_bytes([std[5], std[6]]), 2);
    assert_eq!(std[24 + 8], 0x5a);
    assert_eq!(u64::from_le_bytes(std[24 + 16..24 + 24].try_into().unwrap()), 0xaa);
    assert_eq!(u64::from_le_bytes(std[48 + 16..48 + 24].try_into().unwrap()), 0xbb);
}

#[test]
fn nvme_notifications_masked_and_once() {
    let (_r, v) = volume(None, None);
    let (a, b, c) = (nvme(1, "nqn.a"), nvme(2, "nqn.b"), nvme(3, "nqn.c"));
    for (h, k) in [(&a, 1u64), (&b, 2), (&c, 3)] {
        assert!(nvme_cmd(&v, h, nv::OPC_RESERVATION_REGISTER, 0, 0, &keys_le(0, k)).status.is_success());
    }
    // c masks Registration Preempted (bit 1).
    assert!(nv::set_features(&v, &c, nv::FEAT_RESERVATION_NOTIFICATION_MASK, 0b10, |_| {}).unwrap().status.is_success());
    assert_eq!(nv::get_features(&v, &c, nv::FEAT_RESERVATION_NOTIFICATION_MASK), Ok(0b10));
    assert!(nvme_cmd(&v, &a, nv::OPC_RESERVATION_ACQUIRE, 2 | (1 << 8), 0, &keys_le(1, 2)).status.is_success());
    assert!(nvme_cmd(&v, &a, nv::OPC_RESERVATION_ACQUIRE, 2 | (1 << 8), 0, &keys_le(1, 3)).status.is_success());
    assert!(nv::notification_pending(&v, &b));
    assert!(!nv::notification_pending(&v, &c));
    assert!(!nv::notification_pending(&v, &a));
    let log = nv::notification_log(&v, &b, 1);
    assert_eq!((log[8], log[9]), (1, 0));
    assert!(!nv::notification_pending(&v, &b));
    assert_eq!(nv::notification_log(&v, &b, 1), [0u8; 64]);
    assert_eq!(nv::notification_log(&v, &c, 1), [0u8; 64]);
    assert_eq!(PrEvent::RegistrationPreempted.nvme_log_type(), 1);
}
