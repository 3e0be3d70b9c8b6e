//! APTPL / PTPL persistence: restart with and without it, refusal of corrupt files, atomic
//! replacement under SIGKILL, and "durable before the command completes".

mod reservation;

use std::sync::{mpsc, Arc};
use std::time::Duration;

use palisade::nvme::reservation as nv;
use palisade::reservation::{Action, PrError, PrState, Registrant, Reservations, Store};
use palisade::scsi::pr::{self, Failure};
use palisade::volume::pr_gate::nexus_ref;
use reservation::*;

const APTPL: u8 = 0x01;

fn uuid() -> uuid::Uuid {
    uuid::Uuid::parse_str("0b7a2c1e-3d4f-4a5b-8c9d-0e1f2a3b4c5d").unwrap()
}

#[test]
fn restart_with_aptpl_reloads_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (iscsi("iqn.a", "000000000001", 1), nvme(2, "nqn.b"));
    {
        let (_r, v) = volume(Some(dir.path()), Some(uuid()));
        scsi(&v, &a, pr::sa::REGISTER_AND_IGNORE_EXISTING_KEY, 0, 0, 0x0100000000000000, APTPL).unwrap();
        scsi(&v, &a, pr::sa::RESERVE, 6, 0x0100000000000000, 0, 0).unwrap();
        let c = nvme_cmd(&v, &b, nv::OPC_RESERVATION_REGISTER, 0xc000_0008, 0, &keys_le(0, 0x77));
        assert!(c.status.is_success());
        assert!(dir.path().join(format!("{}.pr.json", uuid())).exists());
    }
    let (_r, v) = volume(Some(dir.path()), Some(uuid()));
    v.reservations().read(|s| {
        assert!(s.aptpl);
        assert_eq!(s.generation, 2);
        assert_eq!(s.registrants.len(), 2);
        assert_eq!(s.holder().unwrap().key, 0x0100000000000000);
    });
    // The reloaded reservation is enforced at once.
    assert!(v.check(&iscsi("iqn.x", "000000000009", 1), palisade::reservation::CommandClass::Read).is_err());
    assert!(v.check(&b, palisade::reservation::CommandClass::Write).is_ok());
    assert_eq!(nv::get_features(&v, &b, nv::FEAT_RESERVATION_PERSISTENCE), Ok(1));
}

#[test]
fn restart_without_aptpl_clears_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let a = iscsi("iqn.a", "000000000001", 1);
    {
        let (_r, v) = volume(Some(dir.path()), Some(uuid()));
        scsi(&v, &a, pr::sa::REGISTER, 0, 0, 5, 0).unwrap();
        scsi(&v, &a, pr::sa::RESERVE, 1, 5, 0, 0).unwrap();
    }
    assert_eq!(std::fs::read_dir(dir.path()).map(|d| d.count()).unwrap_or(0), 0);
    let (_r, v) = volume(Some(dir.path()), Some(uuid()));
    assert!(v.reservations().read(|s| s.registrants.is_empty() && s.reservation.is_none()));
}

#[test]
fn turning_aptpl_off_removes_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let a = iscsi("iqn.a", "000000000001", 1);
    let file = dir.path().join(format!("{}.pr.json", uuid()));
    {
        let (_r, v) = volume(Some(dir.path()), Some(uuid()));
        scsi(&v, &a, pr::sa::REGISTER, 0, 0, 5, APTPL).unwrap();
        assert!(file.exists());
        scsi(&v, &a, pr::sa::REGISTER, 0, 5, 6, 0).unwrap();
        assert!(!file.exists());
        // NVMe Set Features PTPL turns it back on without a registration command.
        let b = nvme(1, "nqn.b");
        let (tx, rx) = mpsc::channel();
        let c = nv::set_features(&v, &b, nv::FEAT_RESERVATION_PERSISTENCE, 1, move |c| tx.send(c).unwrap())
            .unwrap_or_else(|| rx.recv_timeout(Duration::from_secs(5)).unwrap());
        assert!(c.status.is_success());
        assert!(file.exists());
    }
    let (_r, v) = volume(Some(dir.path()), Some(uuid()));
    assert_eq!(v.reservations().read(|s| s.registrants[0].key), 6);
}

#[test]
fn corrupt_or_truncated_state_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("{}.pr.json", uuid()));
    {
        let (_r, v) = volume(Some(dir.path()), Some(uuid()));
        scsi(&v, &iscsi("iqn.a", "000000000001", 1), pr::sa::REGISTER, 0, 0, 0x1234, APTPL).unwrap();
    }
    let good = std::fs::read(&file).unwrap();
    let bad_variants: Vec<Vec<u8>> = vec![
        good[..good.len() / 2].to_vec(),                                  // truncated
        Vec::new(),                                                       // empty
        String::from_utf8(good.clone()).unwrap().replacen("4660", "4661", 1).into_bytes(), // bit flip in the key (0x1234)
        b"not json at all".to_vec(),
    ];
    for bad in bad_variants {
        std::fs::write(&file, &bad).unwrap();
        let bdevs = Arc::new(palisade::bdev::BdevRegistry::default());
        bdevs.add(Arc::new(palisade::bdev::malloc::MallocBdev::new("Malloc0", 64, 512, Some(uuid())).unwrap())).unwrap();
        let reg = palisade::volume::VolumeRegistry::new(bdevs.clone());
        reg.set_state_dir(Some(dir.path().to_path_buf()));
        let err = reg.open("Malloc0", "test").err().expect("refused").to_string();
        assert!(err.contains(file.to_str().unwrap()), "{err}");
        assert!(bdevs.claims("Malloc0").is_empty(), "a refused open releases its claim");
    }
    // Another volume's file is refused too.
    let other = dir.path().join("other.pr.json");
    std::fs::write(&other, &good).unwrap();
    let st = Store { path: other, volume_uuid: uuid::Uuid::nil().to_string() };
    assert!(st.load().unwrap_err().to_string().contains("belongs to volume"));
}

#[test]
fn state_is_durable_before_completion_and_unchanged_when_the_write_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (_r, v) = volume(Some(dir.path()), Some(uuid()));
    let a = iscsi("iqn.a", "000000000001", 1);
    let file = dir.path().join(format!("{}.pr.json", uuid()));
    let (cdb, p) = pr_out(pr::sa::REGISTER, 0, 0, 9, APTPL);
    let act = pr::decode_pr_out(&cdb, &p).unwrap();
    let (tx, rx) = mpsc::channel();
    let f2 = file.clone();
    let r = v.reservations().execute(nexus_ref(&a), act, Box::new(move |r| {
        // At completion the new state is on disk already.
        let on_disk = Store { path: f2, volume_uuid: uuid().to_string() }.load().unwrap().unwrap();
        tx.send((r, on_disk.generation)).unwrap();
    }));
    assert!(r.is_none(), "APTPL changes complete after the write");
    let (r, g) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(r.is_ok());
    assert_eq!(g, 1);
    // Make the directory unwritable for the rename target: a directory where the file goes.
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();
    std::fs::write(file.join("x"), b"x").unwrap();
    assert_eq!(scsi(&v, &a, pr::sa::REGISTER, 0, 9, 10, APTPL), Err(Failure::Check(pr::INTERNAL_TARGET_FAILURE)));
    v.reservations().read(|s| {
        assert_eq!(s.registrants[0].key, 9, "a change that could not be persisted is not applied");
        assert_eq!(s.generation, 1);
    });
    let e = run(&v, &a, Action::Register { key: 9, sa_key: 10, ignore_existing: false, all_tg_pt: false, spec_i_pt: false, aptpl: Some(true) });
    assert!(matches!(e, Err(PrError::Persist(_))));
    // Later commands still run (the queue is not stuck).
    std::fs::remove_dir_all(&file).unwrap();
    scsi(&v, &a, pr::sa::REGISTER, 0, 9, 10, APTPL).unwrap();
}

fn sample_state(gen: u32) -> PrState {
    let registrants = (0..50)
        .map(|i| Registrant {
            id: i,
            nexus: palisade::reservation::Nexus::Iscsi {
                initiator_port: format!("iqn.2026-11.test:client-{i},i,0x{:012x}", gen as u64 * 100 + i),
                target_port: "iqn.t,t,0x1".into(),
                rel_port_id: 1,
            },
            key: gen as u64 + 1,
            all_tg_pt: false,
        })
        .collect();
    PrState { generation: gen, registrants, reservation: None, aptpl: true, next_id: 50 }
}

/// Child side of the SIGKILL test: rewrite the state forever with increasing generations.
#[test]
fn pr_state_writer_child() {
    let Ok(dir) = std::env::var("PALISADE_PR_WRITER_DIR") else { return };
    let st = Store::in_dir(std::path::Path::new(&dir), &uuid());
    let mut g = st.load().unwrap().map(|s| s.generation).unwrap_or(0);
    loop {
        g += 1;
        st.save(&sample_state(g)).unwrap();
    }
}

#[test]
fn sigkill_during_writes_leaves_old_or_new_state() {
    let dir = tempfile::tempdir().unwrap();
    let st = Store::in_dir(dir.path(), &uuid());
    let mut last = 0u32;
    let exe = std::env::current_exe().unwrap();
    for i in 0..12u64 {
        let mut child = std::process::Command::new(&exe)
            .args(["--exact", "pr_state_writer_child", "--nocapture", "--test-threads=1"])
            .env("PALISADE_PR_WRITER_DIR", dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(30 + (i * 7919) % 40));
        unsafe {
            libc::kill(child.id() as i32, libc::SIGKILL);
        }
        child.wait().unwrap();
        match st.load() {
            Ok(Some(s)) => {
                assert!(s.generation >= last, "state went back from {last} to {}", s.generation);
                assert_eq!(s, sample_state(s.generation), "a torn state loaded");
                last = s.generation;
            }
            Ok(None) => assert_eq!(last, 0, "state vanished"),
            Err(e) => panic!("after SIGKILL #{i}: {e}"),
        }
    }
    assert!(last > 0, "the child never completed a write");
}

#[test]
fn ptpl_file_override_loads_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ns1.ptpl");
    let st = Store { path: path.clone(), volume_uuid: uuid().to_string() };
    st.save(&sample_state(3)).unwrap();
    let r = Arc::new(Reservations::new(None).unwrap());
    r.set_store(st).unwrap();
    assert_eq!(r.read(|s| s.generation), 3);
    assert_eq!(r.store_path(), Some(path));
}
