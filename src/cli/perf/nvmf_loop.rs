//! `palisade perf --transport loop`: the NVMe-oF core in this process, reached through the loop
//! transport (no sockets). The target (a RAM namespace on reactors of `--target-cores`) is built
//! with the same management calls an operator would send; the workers are the perf threads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{PerfArgs, PerfQueue};
use crate::nvme::spec;
use crate::nvmf::host::rw_sqe;
use crate::nvmf::r#loop::{listen_addr, LoopController, LoopQueue};
use crate::reactor::{parse_core_mask, IoBuf, PollMode, ReactorSet};
use crate::rpc::App;

const NQN: &str = "nqn.2016-06.io.palisade:loop";

/// The in-process target and the admin queue, alive for the run.
pub struct LoopSession {
    app: Arc<App>,
    _ctrlr: LoopController,
    busy0: Vec<u64>,
}

impl LoopSession {
    /// Nanoseconds the target's reactors spent working since the queues opened.
    pub fn target_busy_ns(&self) -> u64 {
        (0..self.app.reactors.len()).map(|i| self.app.reactors.stats(i).0).sum::<u64>() - self.busy0.iter().sum::<u64>()
    }

    pub fn stop(self) {
        drop(self._ctrlr);
        self.app.stop();
    }
}

struct LoopPerfQueue {
    q: LoopQueue,
    nsid: u32,
    bs: u32,
    nblocks: u64,
    /// Host memory per tag: lent with the command, returned with its completion.
    bufs: Vec<Option<IoBuf>>,
    io_bytes: usize,
    depth: usize,
}

impl PerfQueue for LoopPerfQueue {
    fn depth(&self) -> usize {
        self.depth
    }
    fn block_size(&self) -> u32 {
        self.bs
    }
    fn num_blocks(&self) -> u64 {
        self.nblocks
    }
    fn submit(&mut self, tag: u32, write: bool, lba: u64, blocks: u32, data: &[u8]) -> std::io::Result<()> {
        let len = blocks as usize * self.bs as usize;
        let mut sqe = rw_sqe(write, self.nsid, lba, blocks);
        sqe.set_cid(tag as u16).set_sgl(spec::Sgl { address: 0, length: len as u32, id: spec::sgl::TRANSPORT_DATA_BLOCK });
        let mut b = match self.bufs.get_mut(tag as usize).and_then(Option::take) {
            Some(b) if b.capacity() >= len => b,
            // Filled below (write) or by the target's read before anyone reads it.
            _ => IoBuf::for_overwrite(len.max(self.io_bytes)),
        };
        b.set_len(len);
        if write {
            b.copy_from_slice(&data[..len]);
        }
        self.q.submit(sqe, Some(b)).map_err(|_| std::io::Error::other("the loop queue is full or closed"))
    }
    fn poll(&mut self, timeout: Duration, done: &mut dyn FnMut(u32, Result<(), String>, &[u8])) -> std::io::Result<usize> {
        let end = Instant::now() + timeout;
        loop {
            let bufs = &mut self.bufs;
            let n = self.q.poll(&mut |cqe, buf| {
                let tag = cqe.cid as usize;
                let r = if cqe.status.is_ok() { Ok(()) } else { Err(format!("NVMe status {}", cqe.status)) };
                done(tag as u32, r, buf.as_deref().unwrap_or(&[]));
                if let (Some(slot), Some(b)) = (bufs.get_mut(tag), buf) {
                    *slot = Some(b);
                }
            });
            if n > 0 {
                return Ok(n);
            }
            if self.q.is_closed() {
                return Err(std::io::Error::other("the target closed the loop queue"));
            }
            if Instant::now() >= end {
                return Ok(0);
            }
            std::hint::spin_loop();
        }
    }
}

fn call(rt: &tokio::runtime::Runtime, app: &Arc<App>, method: &str, params: Value) -> Result<Value, String> {
    rt.block_on(app.dispatch(method, Some(params), crate::rpc::internal_conn())).map_err(|e| format!("{method}: {}", e.message))
}

/// Export bdev `bdev` of `app` as namespace 1 of a subsystem that listens on the loop transport
/// (management calls as an operator sends them) and connect a controller to it.
pub fn export(app: &Arc<App>, bdev: &str, qd: usize, max_io: u64, hostnqn: &str) -> Result<LoopController, String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let max_io = max_io.max(131072);
    call(&rt, app, "nvmf_create_transport", json!({"trtype": "TCP", "max_queue_depth": (qd as u32 + 1).max(128), "max_io_size": max_io, "io_unit_size": max_io.min(131072)}))?;
    call(&rt, app, "nvmf_create_subsystem", json!({"nqn": NQN, "allow_any_host": true, "serial_number": "LOOP0001"}))?;
    call(&rt, app, "nvmf_subsystem_add_ns", json!({"nqn": NQN, "namespace": {"bdev_name": bdev}}))?;
    let sub = app.nvmf.subsystem(NQN).ok_or("the subsystem vanished")?;
    app.nvmf.add_listener(&sub, listen_addr()).map_err(|e| e.to_string())?;
    LoopController::connect(&app.nvmf, NQN, hostnqn, 0).map_err(|e| format!("loop connect: {e}"))
}

/// Start the in-process target and open `a.queues` loop queues of depth `a.qd`.
pub fn open(a: &PerfArgs) -> Result<(LoopSession, Vec<Box<dyn PerfQueue>>), String> {
    let mask = parse_core_mask(&a.target_cores)?;
    let reactors = ReactorSet::start(mask, PollMode::Busy, crate::bdev::install).map_err(|e| format!("reactors: {e}"))?;
    let app = App::new(reactors, false, None);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let bs = 512u64;
    call(&rt, &app, "bdev_malloc_create", json!({"name": "Loop0", "num_blocks": a.loop_size / bs, "block_size": bs}))?;
    let hostnqn = a.hostnqn.clone().unwrap_or_else(|| format!("nqn.2014-08.org.nvmexpress:uuid:{}", uuid::Uuid::new_v4()));
    let ctrlr = export(&app, "Loop0", a.qd as usize, a.bs, &hostnqn)?;
    let nr = app.reactors.len() as u32;
    let nsid = a.nsid.unwrap_or(1);
    let (nblocks, bsz) = ctrlr.namespace(nsid).map_err(|e| format!("identify: {e}"))?;
    let mut qs: Vec<Box<dyn PerfQueue>> = Vec::new();
    for qid in 1..=a.queues {
        let q = ctrlr.io_queue(qid, a.qd as usize + 1, (qid as u32 - 1) % nr).map_err(|e| format!("loop I/O queue {qid}: {e}"))?;
        let depth = a.qd as usize;
        qs.push(Box::new(LoopPerfQueue { q, nsid, bs: bsz, nblocks, bufs: (0..depth).map(|_| None).collect(), io_bytes: a.bs as usize, depth }));
    }
    let busy0 = (0..app.reactors.len()).map(|i| app.reactors.stats(i).0).collect();
    Ok((LoopSession { app, _ctrlr: ctrlr, busy0 }, qs))
}
