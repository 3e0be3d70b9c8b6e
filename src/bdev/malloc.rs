//! RAM bdev: the embedded default. I/O is a copy and completes in the same reactor iteration.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use super::stats::{ChannelStats, StatsRegistry};
use super::{Bdev, BdevChannel, BdevError, BdevInfo, IoOp, IoRequest};
use crate::reactor::Core;

pub const PRODUCT: &str = "Malloc disk";

struct Mem {
    ptr: *mut u8,
    len: usize,
}
// Reactors copy in and out of disjoint or overlapping ranges concurrently, like DMA into RAM on a
// real device: overlapping concurrent commands have no defined result in SCSI or NVMe either, and
// ordering between commands that must be ordered is the initiator's (or the volume's) job.
unsafe impl Send for Mem {}
unsafe impl Sync for Mem {}
impl Drop for Mem {
    fn drop(&mut self) {
        // SAFETY: mapped in MallocBdev::new with this length; nothing refers to it any more.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

pub struct MallocBdev {
    info: BdevInfo,
    mem: Arc<Mem>,
    stats: StatsRegistry,
}

impl MallocBdev {
    pub fn new(name: &str, num_blocks: u64, block_size: u32, uuid: Option<uuid::Uuid>) -> Result<Self, BdevError> {
        check_geometry(num_blocks, block_size)?;
        let len = num_blocks
            .checked_mul(block_size as u64)
            .filter(|&l| l <= isize::MAX as u64 / 2)
            .ok_or_else(|| BdevError::Invalid("num_blocks * block_size is too large".into()))? as usize;
        // An anonymous mapping: zeroed pages arrive lazily. Huge pages where the kernel has them
        // (SPDK's malloc bdevs live in hugepage memory too): random 4 KiB I/O over a large RAM
        // disk otherwise spends its time on TLB misses, and how many it takes drifts as
        // khugepaged works, which made the RAM disk a noisy baseline.
        // SAFETY: a fresh private anonymous mapping; the result is checked.
        let ptr = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
        };
        if ptr == libc::MAP_FAILED {
            return Err(BdevError::Io(name.into(), std::io::Error::last_os_error()));
        }
        // SAFETY: advice on the mapping just made; failure (no THP) is harmless.
        unsafe { libc::madvise(ptr, len, libc::MADV_HUGEPAGE) };
        let ptr = ptr.cast::<u8>();
        Ok(MallocBdev {
            info: BdevInfo {
                id: super::next_bdev_id(),
                name: name.to_string(),
                product_name: PRODUCT,
                block_size,
                num_blocks,
                uuid: uuid.unwrap_or_else(uuid::Uuid::new_v4),
                unmap_zeroes: true,
                write_cache: false,
            },
            mem: Arc::new(Mem { ptr, len }),
            stats: StatsRegistry::default(),
        })
    }
}

/// Shared geometry rules of RAM and null bdevs (SPDK accepts 512..=65536, a multiple of 512).
pub fn check_geometry(num_blocks: u64, block_size: u32) -> Result<(), BdevError> {
    if block_size < 512 || block_size > 65536 || block_size % 512 != 0 {
        return Err(BdevError::Invalid(format!(
            "block_size {block_size} is invalid: must be a multiple of 512 between 512 and 65536"
        )));
    }
    if num_blocks == 0 {
        return Err(BdevError::Invalid("num_blocks must be greater than 0".into()));
    }
    Ok(())
}

impl Bdev for MallocBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }
    fn create_channel(&self, _core: &mut Core) -> std::io::Result<Box<dyn BdevChannel>> {
        Ok(Box::new(MallocChannel {
            mem: self.mem.clone(),
            bs: self.info.block_size as u64,
            nblocks: self.info.num_blocks,
            stats: self.stats.new_channel(),
        }))
    }
    fn construct(&self) -> (&'static str, Value) {
        (
            "bdev_malloc_create",
            json!({
                "name": self.info.name,
                "num_blocks": self.info.num_blocks,
                "block_size": self.info.block_size,
                "uuid": self.info.uuid.to_string(),
            }),
        )
    }
    fn stats(&self) -> &StatsRegistry {
        &self.stats
    }
}

struct MallocChannel {
    mem: Arc<Mem>,
    bs: u64,
    nblocks: u64,
    stats: Arc<ChannelStats>,
}

impl BdevChannel for MallocChannel {
    fn submit(&mut self, core: &mut Core, mut req: IoRequest) {
        let start = Instant::now();
        let in_range = req.offset_blocks.checked_add(req.num_blocks).is_some_and(|e| e <= self.nblocks);
        if !in_range {
            return req.complete(core, -libc::EINVAL);
        }
        let off = (req.offset_blocks * self.bs) as usize;
        let len = (req.num_blocks * self.bs) as usize;
        // SAFETY: off + len is within the allocation (checked above); buffers hold >= len bytes.
        let status = unsafe {
            match req.op {
                IoOp::Read => match req.buf.as_mut() {
                    Some(b) if b.len() >= len => {
                        std::ptr::copy_nonoverlapping(self.mem.ptr.add(off), b.as_mut_ptr(), len);
                        0
                    }
                    _ => -libc::EINVAL,
                },
                IoOp::Write => match req.buf.as_ref() {
                    Some(b) if b.len() >= len => {
                        std::ptr::copy_nonoverlapping(b.as_ptr(), self.mem.ptr.add(off), len);
                        0
                    }
                    _ => -libc::EINVAL,
                },
                IoOp::WriteZeroes | IoOp::Unmap => {
                    std::ptr::write_bytes(self.mem.ptr.add(off), 0, len);
                    0
                }
                IoOp::Flush => 0,
            }
        };
        if status == 0 {
            self.stats.record(req.op, len as u64, start.elapsed().as_nanos() as u64);
        }
        req.complete(core, status);
    }
    fn poll(&mut self, _core: &mut Core) -> usize {
        0
    }
}
