//! `palisade perf`: the load generator and test initiator. Transports (NVMe/TCP, iSCSI) provide
//! queues that implement [`PerfQueue`]; the driver runs the workload, verifies data and reports.

pub mod iscsi;

use std::time::Duration;

/// One initiator queue (an NVMe/TCP I/O queue pair, an iSCSI session) as the load generator sees it.
pub trait PerfQueue: Send {
    /// Commands this queue accepts in flight.
    fn depth(&self) -> usize;
    /// Logical block size of the device, bytes.
    fn block_size(&self) -> u32;
    /// Number of logical blocks of the device.
    fn num_blocks(&self) -> u64;
    /// Queue a read (`write` false) or write of `blocks` blocks at `lba`. For writes `data` holds
    /// blocks * block_size bytes. `tag` (< depth) comes back with the completion.
    fn submit(&mut self, tag: u32, write: bool, lba: u64, blocks: u32, data: &[u8]) -> std::io::Result<()>;
    /// Send what was queued, then wait up to `timeout` for completions, calling
    /// `done(tag, result, read_data)` for each (read_data is empty for writes). Returns how many
    /// completed. An Err means the connection is gone.
    fn poll(
        &mut self,
        timeout: Duration,
        done: &mut dyn FnMut(u32, Result<(), String>, &[u8]),
    ) -> std::io::Result<usize>;
}
