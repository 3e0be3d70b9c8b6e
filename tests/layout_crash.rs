//! Crash torture: SIGKILL the target at random points while a metadata client loops over
//! get/commit/return/fence/unfence/truncate/reflink/create/remove; after each kill `palisade fsck`
//! must find the metadata consistent, and after a restart every acknowledged commit must still be
//! mapped (unless an acknowledged truncate/remove dropped it). 50 kills by default;
//! `PALISADE_LAYOUT_KILLS=1000` for the long run (bench/layout/torture.sh). The same torture runs
//! with the metadata on a bdev (`metadata_bdev`, a uring bdev over an image file that fsck then
//! checks), 20 kills by default.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Target, BIN};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const BS: u64 = 4096;
const UUID: &str = "7c1f0e2a-3333-4e2f-8a3b-5c6d7e8f9a0b";
const FILES: u64 = 4;

/// What the client knows for certain about each file: committed block ranges acknowledged and
/// not since dropped. A file touched by a call that got no answer is uncertain until recreated.
#[derive(Default, Debug)]
struct Model {
    facts: BTreeMap<u64, Vec<(u64, u64)>>,
    uncertain: BTreeMap<u64, bool>,
}

/// Start the target with the layout volume; `on_bdev`: `meta` is the image file of a uring
/// metadata bdev rather than a metadata file.
fn start(meta: &str, on_bdev: bool) -> Target {
    let t = Target::start(&[]);
    t.rpc("bdev_malloc_create", json!({"name": "m0", "num_blocks": 512, "block_size": 4096, "uuid": UUID}));
    let mut p = json!({"name": "lv", "bdev_name": "m0", "guard": "off", "recall_timeout_ms": 200});
    if on_bdev {
        t.rpc("bdev_uring_create", json!({"name": "meta0", "filename": meta}));
        p["metadata_bdev"] = json!("meta0");
    } else {
        p["metadata_path"] = json!(meta);
    }
    t.rpc("layout_volume_create", p);
    t
}

fn mapped(t: &Target, file: u64) -> Option<Vec<(u64, u64)>> {
    let m = t.try_rpc("layout_file_map", Some(json!({"volume": "lv", "file": file}))).ok()?;
    Some(
        m["extents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["state"] != "NONE_DATA")
            .map(|e| (e["file_offset"].as_u64().unwrap() / BS, e["length"].as_u64().unwrap() / BS))
            .collect(),
    )
}

fn covered(map: &[(u64, u64)], (o, l): (u64, u64)) -> bool {
    (o..o + l).all(|b| map.iter().any(|(s, n)| b >= *s && b < s + n))
}

#[test]
fn sigkill_torture_fsck_and_committed_maps_survive() {
    torture(false, 50);
}

#[test]
fn sigkill_torture_with_metadata_on_a_bdev() {
    torture(true, 20);
}

fn torture(on_bdev: bool, default_kills: usize) {
    let kills: usize = std::env::var("PALISADE_LAYOUT_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(default_kills);
    let seed: u64 = std::env::var("PALISADE_LAYOUT_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5eed);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let meta = dir.path().join(if on_bdev { "lv-meta.img" } else { "lv.meta" });
    if on_bdev {
        std::fs::File::create(&meta).unwrap().set_len(1 << 20).unwrap();
    }
    let meta_s = meta.to_str().unwrap().to_string();
    let mut model = Model::default();
    let started = Instant::now();
    for round in 0..kills {
        let mut t = start(&meta_s, on_bdev);
        // Every acknowledged fact must have survived the previous kill.
        for (f, ranges) in &model.facts {
            if model.uncertain.get(f).copied().unwrap_or(false) {
                continue;
            }
            let m = mapped(&t, *f).unwrap_or_else(|| panic!("round {round}: file {f} lost"));
            for r in ranges {
                assert!(covered(&m, *r), "round {round}: committed blocks {r:?} of file {f} lost: map {m:?}");
            }
        }
        if round == 0 {
            for c in ["A", "B", "C"] {
                let key = c.as_bytes()[0] as u64;
                t.rpc("client_register", json!({"volume": "lv", "client": c, "pr_key": key}));
            }
        }
        for f in 0..FILES {
            if t.try_rpc("layout_file_create", Some(json!({"volume": "lv", "file": f}))).is_ok() {
                model.facts.insert(f, Vec::new());
                model.uncertain.insert(f, false);
            }
        }
        // Kill at a random point of the loop below.
        let pid = t.pid() as i32;
        let delay = Duration::from_millis(rng.gen_range(10..300));
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            // SAFETY: signalling the child this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        });
        let mut grants: Vec<(u64, u64, u64)> = Vec::new(); // grant, file, length (blocks)
        loop {
            let f = rng.gen_range(0..FILES);
            let client = ["A", "B", "C"][rng.gen_range(0..3)];
            let (method, params, effect): (&str, Value, u8) = match rng.gen_range(0..10) {
                0..=2 => {
                    let off = rng.gen_range(0..16u64);
                    let len = rng.gen_range(1..8u64);
                    ("layout_get", json!({"volume": "lv", "file": f, "client": client, "offset": off * BS, "length": len * BS, "iomode": "rw"}), 0)
                }
                3..=5 if !grants.is_empty() => {
                    let (g, _, _) = grants[rng.gen_range(0..grants.len())];
                    ("layout_commit", json!({"grant": g}), 1)
                }
                6 if !grants.is_empty() => {
                    let i = rng.gen_range(0..grants.len());
                    ("layout_return", json!({"grant": grants[i].0}), 2)
                }
                7 => ("layout_file_truncate", json!({"volume": "lv", "file": f, "size": rng.gen_range(0..12u64) * BS}), 3),
                8 => {
                    let d = (f + 1) % FILES;
                    ("layout_file_reflink", json!({"volume": "lv", "source": f, "destination": d}), 4)
                }
                _ => {
                    if rng.gen_bool(0.5) {
                        ("client_fence", json!({"volume": "lv", "client": client}), 5)
                    } else {
                        ("client_unfence", json!({"volume": "lv", "client": client}), 5)
                    }
                }
            };
            // layout_commit needs the grant's range: ask for its map first.
            let params = if effect == 1 {
                let g = params["grant"].as_u64().unwrap();
                let (_, file, _) = *grants.iter().find(|x| x.0 == g).unwrap();
                let stat = match t.try_rpc("layout_file_map", Some(json!({"volume": "lv", "file": file, "offset": 0, "length": 32 * BS}))) {
                    Ok(s) => s,
                    Err((0, _)) => break,
                    Err(_) => continue,
                };
                let pend: Vec<Value> = stat["pending"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|p| p["grant"] == g)
                    .map(|p| json!({"offset": p["file_offset"], "length": p["length"]}))
                    .collect();
                if pend.is_empty() {
                    continue;
                }
                json!({"grant": g, "ranges": pend})
            } else {
                params
            };
            match t.try_rpc(method, Some(params.clone())) {
                Ok(v) => match effect {
                    0 => grants.push((v["grant"].as_u64().unwrap(), f, v["length"].as_u64().unwrap() / BS)),
                    1 => {
                        let g = params["grant"].as_u64().unwrap();
                        let file = grants.iter().find(|x| x.0 == g).unwrap().1;
                        for r in params["ranges"].as_array().unwrap() {
                            let o = r["offset"].as_u64().unwrap() / BS;
                            let l = r["length"].as_u64().unwrap() / BS;
                            model.facts.entry(file).or_default().push((o, l));
                        }
                    }
                    2 => grants.retain(|x| x.0 != params["grant"].as_u64().unwrap()),
                    3 => {
                        let keep = params["size"].as_u64().unwrap().div_ceil(BS);
                        for r in model.facts.entry(f).or_default().iter_mut() {
                            if r.0 + r.1 > keep {
                                r.1 = keep.saturating_sub(r.0);
                            }
                        }
                        model.facts.get_mut(&f).unwrap().retain(|r| r.1 > 0);
                    }
                    4 => {
                        let d = (f + 1) % FILES;
                        let src = model.facts.get(&f).cloned().unwrap_or_default();
                        model.facts.insert(d, src);
                        let u = model.uncertain.get(&f).copied().unwrap_or(false);
                        model.uncertain.insert(d, u);
                    }
                    _ => {
                        if method == "client_fence" {
                            let revoked: Vec<u64> = v["revoked_grants"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
                            grants.retain(|x| !revoked.contains(&x.0));
                        }
                    }
                },
                Err((0, _)) => {
                    // No answer: the target died during the call. Its effect may or may not be
                    // durable; files it could have changed become uncertain.
                    match effect {
                        3 => {
                            model.uncertain.insert(f, true);
                        }
                        4 => {
                            model.uncertain.insert((f + 1) % FILES, true);
                        }
                        _ => {}
                    }
                    break;
                }
                Err(_) => {
                    // Refused (recall pending, fenced, no space, unknown grant after a fence...):
                    // forget grants the target no longer has.
                    if effect == 1 || effect == 2 {
                        let g = params["grant"].as_u64().unwrap();
                        if t.try_rpc("layout_return", Some(json!({"grant": g}))).is_err() {
                            grants.retain(|x| x.0 != g);
                        }
                    }
                }
            }
        }
        killer.join().unwrap();
        let _ = t.signal_and_wait(libc::SIGKILL, Duration::from_secs(10));
        let out = std::process::Command::new(BIN).args(["fsck", "--metadata", &meta_s]).output().unwrap();
        assert!(
            out.status.success(),
            "round {round}: fsck after SIGKILL failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Final restart: the facts hold once more, and the state is consistent online too.
    let t = start(&meta_s, on_bdev);
    for (f, ranges) in &model.facts {
        if model.uncertain.get(f).copied().unwrap_or(false) {
            continue;
        }
        let m = mapped(&t, *f).expect("file survives");
        for r in ranges {
            assert!(covered(&m, *r), "final: committed blocks {r:?} of file {f} lost: {m:?}");
        }
    }
    let committed: usize = model.facts.values().map(|v| v.len()).sum();
    eprintln!("{kills} kills in {:?}; {committed} committed ranges checked", started.elapsed());
    t.stop();
}
