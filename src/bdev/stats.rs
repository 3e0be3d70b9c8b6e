//! Per-channel I/O statistics: written only by the owning reactor (plain atomic stores, no lock),
//! summed by the management plane for bdev_get_iostat.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::IoOp;

#[derive(Default)]
pub struct ChannelStats {
    /// The reactor's lightweight-thread id (reactor index + 1, as framework_get_reactors shows).
    pub thread_id: u64,
    bytes_read: AtomicU64,
    num_read_ops: AtomicU64,
    bytes_written: AtomicU64,
    num_write_ops: AtomicU64,
    bytes_unmapped: AtomicU64,
    num_unmap_ops: AtomicU64,
    bytes_copied: AtomicU64,
    read_latency_ticks: AtomicU64,
    write_latency_ticks: AtomicU64,
    unmap_latency_ticks: AtomicU64,
    max_read_latency_ticks: AtomicU64,
    max_write_latency_ticks: AtomicU64,
}

fn bump(a: &AtomicU64, by: u64) {
    // Single writer: a load and a store, no locked instruction.
    a.store(a.load(Ordering::Relaxed).wrapping_add(by), Ordering::Relaxed);
}
fn max(a: &AtomicU64, v: u64) {
    if v > a.load(Ordering::Relaxed) {
        a.store(v, Ordering::Relaxed);
    }
}

impl ChannelStats {
    /// Record one finished I/O; latency in nanoseconds (our tick rate is 1 GHz).
    pub fn record(&self, op: IoOp, bytes: u64, latency_ns: u64) {
        match op {
            IoOp::Read => {
                bump(&self.bytes_read, bytes);
                bump(&self.num_read_ops, 1);
                bump(&self.read_latency_ticks, latency_ns);
                max(&self.max_read_latency_ticks, latency_ns);
            }
            IoOp::Write | IoOp::WriteZeroes => {
                bump(&self.bytes_written, bytes);
                bump(&self.num_write_ops, 1);
                bump(&self.write_latency_ticks, latency_ns);
                max(&self.max_write_latency_ticks, latency_ns);
            }
            IoOp::Unmap => {
                bump(&self.bytes_unmapped, bytes);
                bump(&self.num_unmap_ops, 1);
                bump(&self.unmap_latency_ticks, latency_ns);
            }
            IoOp::Flush => {}
        }
    }
}

/// Summed statistics of a bdev.
#[derive(Default, Debug, Clone, serde::Serialize)]
pub struct IoStat {
    pub bytes_read: u64,
    pub num_read_ops: u64,
    pub bytes_written: u64,
    pub num_write_ops: u64,
    pub bytes_unmapped: u64,
    pub num_unmap_ops: u64,
    pub bytes_copied: u64,
    pub num_copy_ops: u64,
    pub read_latency_ticks: u64,
    pub max_read_latency_ticks: u64,
    pub min_read_latency_ticks: u64,
    pub write_latency_ticks: u64,
    pub max_write_latency_ticks: u64,
    pub min_write_latency_ticks: u64,
    pub unmap_latency_ticks: u64,
    pub max_unmap_latency_ticks: u64,
    pub min_unmap_latency_ticks: u64,
    pub copy_latency_ticks: u64,
    pub max_copy_latency_ticks: u64,
    pub min_copy_latency_ticks: u64,
    pub io_error: serde_json::Value,
}

/// The channels of one bdev, so their counters can be summed.
#[derive(Default)]
pub struct StatsRegistry {
    channels: Mutex<Vec<Arc<ChannelStats>>>,
}

impl StatsRegistry {
    /// Stats of a new channel, owned by the calling reactor.
    pub fn new_channel(&self) -> Arc<ChannelStats> {
        let thread_id = crate::reactor::current_reactor().map(|r| r as u64 + 1).unwrap_or(0);
        let s = Arc::new(ChannelStats { thread_id, ..Default::default() });
        self.channels.lock().unwrap().push(s.clone());
        s
    }
    pub fn sum(&self) -> IoStat {
        let mut t = IoStat { io_error: serde_json::json!({}), ..Default::default() };
        for c in self.channels.lock().unwrap().iter() {
            t.add(c);
        }
        t
    }

    /// Per-channel statistics: (thread id, stats), in channel creation order.
    pub fn per_channel(&self) -> Vec<(u64, IoStat)> {
        self.channels
            .lock()
            .unwrap()
            .iter()
            .map(|c| {
                let mut t = IoStat { io_error: serde_json::json!({}), ..Default::default() };
                t.add(c);
                (c.thread_id, t)
            })
            .collect()
    }
}

impl IoStat {
    fn add(&mut self, c: &ChannelStats) {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let t = self;
        t.bytes_read += g(&c.bytes_read);
        t.num_read_ops += g(&c.num_read_ops);
        t.bytes_written += g(&c.bytes_written);
        t.num_write_ops += g(&c.num_write_ops);
        t.bytes_unmapped += g(&c.bytes_unmapped);
        t.num_unmap_ops += g(&c.num_unmap_ops);
        t.bytes_copied += g(&c.bytes_copied);
        t.read_latency_ticks += g(&c.read_latency_ticks);
        t.write_latency_ticks += g(&c.write_latency_ticks);
        t.unmap_latency_ticks += g(&c.unmap_latency_ticks);
        t.max_read_latency_ticks = t.max_read_latency_ticks.max(g(&c.max_read_latency_ticks));
        t.max_write_latency_ticks = t.max_write_latency_ticks.max(g(&c.max_write_latency_ticks));
    }
}
