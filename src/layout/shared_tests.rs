//! The shared-store path of the store without etcd: an in-memory log several `LayoutVolume`s
//! ("nodes") append to, with etcd's compare-the-head semantics. Proves the retry loop (an
//! operation beaten by another node is judged again on the new state), that catch-up publishes
//! to the guard, and that recalls and fences made on one node reach the other's subscribers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::error::LayoutError;
use super::journal::{CatchUp, Changes, MetaStore, Peers, Replay};
use super::recall::{Fencer, Notifier, RecallEvent};
use super::state::{Record, State};
use super::*;

#[derive(Default)]
struct Log {
    image: Mutex<Option<State>>,
    txns: Mutex<Vec<Vec<Record>>>,
}

struct NoPeers(Changes);
impl Peers for NoPeers {
    fn changes(&self) -> &Changes {
        &self.0
    }
    fn settle(&self, _seq: u64) -> Result<(), LayoutError> {
        Ok(())
    }
    fn collect_written(&self) -> Result<(), LayoutError> {
        Ok(())
    }
    fn on_collect(&self, _f: Box<dyn Fn() -> bool + Send + Sync>) {}
}

struct Mem {
    log: Arc<Log>,
    seq: usize,
    peers: Arc<NoPeers>,
}

impl MetaStore for Mem {
    fn create(&mut self, st: &State) -> Result<(), LayoutError> {
        *self.log.image.lock().unwrap() = Some(st.clone());
        Ok(())
    }
    fn load(&mut self) -> Result<(State, Replay), LayoutError> {
        let mut st = self.log.image.lock().unwrap().clone().unwrap();
        let t = self.log.txns.lock().unwrap();
        for r in t.iter() {
            st.apply_all(r)?;
        }
        self.seq = t.len();
        Ok((st, Replay::default()))
    }
    fn append(&mut self, txn: &[Record]) -> Result<(), LayoutError> {
        let mut t = self.log.txns.lock().unwrap();
        if t.len() != self.seq {
            return Err(LayoutError::Stale("behind".into()));
        }
        t.push(txn.to_vec());
        self.seq += 1;
        Ok(())
    }
    fn checkpoint(&mut self, _st: &State) -> Result<(), LayoutError> {
        Ok(())
    }
    fn wants_checkpoint(&self) -> bool {
        false
    }
    fn describe(&self) -> String {
        "memory".into()
    }
    fn shared(&self) -> bool {
        true
    }
    fn catch_up(&mut self, _fetch: bool) -> Result<CatchUp, LayoutError> {
        let t = self.log.txns.lock().unwrap();
        let out = t[self.seq..].to_vec();
        self.seq = t.len();
        Ok(CatchUp::Txns(out))
    }
    fn peers(&self) -> Option<Arc<dyn Peers>> {
        Some(self.peers.clone())
    }
    fn head(&self) -> u64 {
        self.seq as u64
    }
}

#[derive(Default)]
struct Heard(Mutex<Vec<RecallEvent>>);
impl Notifier for Heard {
    fn recall(&self, ev: &RecallEvent) {
        self.0.lock().unwrap().push(ev.clone());
    }
}
struct Ok_;
impl Fencer for Ok_ {
    fn fence(&self, _v: &str, _c: &str, _k: u64) -> Result<(), String> {
        Ok(())
    }
}

const BS: u64 = 4096;

fn node(log: &Arc<Log>, exists: bool, heard: &Arc<Heard>) -> LayoutVolume {
    let dev = DataDev { uuid: uuid::Uuid::from_u128(9), block_size: 4096, num_blocks: 256 };
    let opts = Options { name: "lv".into(), block_size: 0, policy: Policy::Enforce, recall_timeout: Duration::from_millis(50) };
    let meta = Mem { log: log.clone(), seq: 0, peers: Arc::new(NoPeers(Changes::default())) };
    LayoutVolume::open(Box::new(meta), exists, &dev, &opts, Hooks { notifier: heard.clone(), fencer: Arc::new(Ok_) }).unwrap()
}

#[test]
fn two_nodes_judge_on_the_committed_state() {
    let log = Arc::new(Log::default());
    let (ha, hb) = (Arc::new(Heard::default()), Arc::new(Heard::default()));
    let a = node(&log, false, &ha);
    let b = node(&log, true, &hb);
    a.client_register("X", 1, vec![]).unwrap();
    a.client_register("Y", 2, vec![]).unwrap();
    a.file_create(&FileId::Num(1)).unwrap();
    // B has not caught up; its create of the same file is judged again on A's state.
    assert!(matches!(b.file_create(&FileId::Num(1)), Err(LayoutError::FileExists(_))));
    // Both hand out layouts on the same free space: never the same blocks.
    b.file_create(&FileId::Num(2)).unwrap();
    let ga = a.layout_get(&FileId::Num(1), "X", 0, 8 * BS, 0, IoMode::Rw).unwrap();
    let gb = b.layout_get(&FileId::Num(2), "Y", 0, 8 * BS, 0, IoMode::Rw).unwrap();
    assert_ne!(ga.grant, gb.grant);
    let (la, lb) = (ga.extents[0].volume_offset / BS, gb.extents[0].volume_offset / BS);
    assert!(la + 8 <= lb || lb + 8 <= la, "blocks handed out twice: {la} {lb}");
    // A follows: its guard knows B's grant.
    a.follow().unwrap();
    assert!(a.guard().touches_pending(lb, 1));
    // A conflicting layout on B recalls A's grant: both nodes' subscribers hear it.
    assert!(matches!(b.layout_get(&FileId::Num(1), "Y", 0, 8 * BS, 0, IoMode::Rw), Err(LayoutError::RecallPending { .. })));
    a.follow().unwrap();
    assert_eq!(hb.0.lock().unwrap().last().unwrap().grant, ga.grant);
    assert_eq!(ha.0.lock().unwrap().last().unwrap().grant, ga.grant);
    // The recall expires; A and B both try to fence X: once.
    std::thread::sleep(Duration::from_millis(80));
    let fa = a.expire_recalls(std::time::Instant::now());
    let fb = b.expire_recalls(std::time::Instant::now());
    assert!(fa.len() + fb.len() >= 1, "somebody fenced X");
    a.follow().unwrap();
    b.follow().unwrap();
    for v in [&a, &b] {
        v.with_state(|s| {
            assert!(s.clients["X"].fenced);
            assert!(!s.grants.contains_key(&ga.grant));
            assert!(s.check().is_empty(), "{:?}", s.check());
        });
    }
    assert_eq!(a.with_state(|s| s.free.free_blocks()), b.with_state(|s| s.free.free_blocks()));
    // A third node opening the log rebuilds the same state.
    let c = node(&log, true, &Arc::new(Heard::default()));
    assert_eq!(c.with_state(|s| s.image().free), a.with_state(|s| s.image().free));
}
