//! RAM bdev: the embedded default. I/O is a copy and completes in the same reactor iteration.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use super::stats::{ChannelStats, StatsRegistry};
use super::{Bdev, BdevChannel, BdevError, BdevInfo, IoOp, IoRequest};
use crate::reactor::Core;

pub const PRODUCT: &str = "Malloc disk";

/// The RAM of the disk, shared by every reactor's channel.
///
/// Invariant: nothing ever forms a `&[u8]` or `&mut [u8]` over this mapping. Every access is a
/// bulk operation through the raw pointer (`ptr::copy_nonoverlapping`, `ptr::write_bytes`,
/// `madvise`), so no reference with aliasing guarantees exists for concurrent accesses to break,
/// and the target never reads these bytes as anything but data to move. That is what makes
/// `Sync` sound enough: reactors copy in and out like DMA engines into device memory.
///
/// Semantics of concurrent overlapping commands (from different reactors, or unordered on one
/// connection): no atomicity below the whole command and no ordering. A read racing a write may
/// return any byte-by-byte mix of old and new data; two racing writes may leave a block holding
/// parts of each. SCSI allows this for SIMPLE tasks (SAM-5 task attributes: the device server may
/// reorder them; only WRITE ATOMIC promises atomicity, and it runs under the volume's range
/// lock). NVMe leaves unordered commands unordered, but its single-block write atomicity
/// (AWUN/AWUPF 0 = one block) is not provided across reactors by this bdev. Commands an
/// initiator orders (it waits for one before sending the next) see each other's effects: the
/// completion crosses threads through the reactors' message queues, which synchronise.
struct Mem {
    ptr: *mut u8,
    len: usize,
}
// SAFETY: see the invariant above; the mapping lives as long as the last channel.
unsafe impl Send for Mem {}
unsafe impl Sync for Mem {}

impl Mem {
    /// Zero `len` bytes at `off` (in range). Whole pages of a large range are handed back to
    /// the kernel instead of written: they read back as zeros, cost no RSS, and a WRITE SAME or
    /// UNMAP of the whole disk neither faults in its full size nor stalls the reactor writing it.
    ///
    /// # Safety
    /// `off + len <= self.len`.
    unsafe fn zero(&self, off: usize, len: usize) {
        const PAGE: usize = 4096;
        // Below this a plain memset is cheaper than the syscall and TLB shootdown.
        const RELEASE_MIN: usize = 2 << 20;
        let first = off.next_multiple_of(PAGE);
        let last = (off + len) / PAGE * PAGE;
        if last > first && last - first >= RELEASE_MIN {
            // SAFETY: first..last lies within the mapping (caller's range, page aligned inside it).
            let r = unsafe { libc::madvise(self.ptr.add(first).cast(), last - first, libc::MADV_DONTNEED) };
            if r == 0 {
                // SAFETY: the unaligned head and tail, within the caller's range.
                unsafe {
                    std::ptr::write_bytes(self.ptr.add(off), 0, first - off);
                    std::ptr::write_bytes(self.ptr.add(last), 0, off + len - last);
                }
                return;
            }
        }
        // SAFETY: the caller's range.
        unsafe { std::ptr::write_bytes(self.ptr.add(off), 0, len) };
    }
}
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

/// The machine's physical memory in bytes (sysconf), if known.
pub fn physical_memory() -> Option<u64> {
    // SAFETY: sysconf has no preconditions.
    let (pages, page) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
    (pages > 0 && page > 0).then(|| pages as u64 * page as u64)
}

/// How a new RAM disk of `new` bytes, next to RAM disks of `existing` bytes, fits in `phys` bytes
/// of memory: Err (refuse) if it or the total cannot be held at all, Ok(Some(warning)) above
/// half, else Ok(None). The pages arrive lazily, so an oversized disk would otherwise be
/// accepted and fail later, when writes make the target run out of memory.
pub fn memory_verdict(new: u64, existing: u64, phys: u64) -> Result<Option<String>, String> {
    let total = existing.saturating_add(new);
    if new > phys {
        return Err(format!("a RAM disk of {new} bytes is larger than the machine's physical memory ({phys} bytes)"));
    }
    if total > phys {
        return Err(format!(
            "RAM disks would total {total} bytes ({existing} already), more than the machine's physical memory ({phys} bytes)"
        ));
    }
    Ok((total > phys / 2).then(|| {
        format!("RAM disks now total {total} bytes, more than half the machine's physical memory ({phys} bytes)")
    }))
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
                    self.mem.zero(off, len);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_verdicts() {
        let g = 1u64 << 30;
        assert_eq!(memory_verdict(g, 0, 8 * g), Ok(None));
        assert!(memory_verdict(5 * g, 0, 8 * g).unwrap().is_some(), "above half warns");
        assert!(memory_verdict(3 * g, 2 * g, 8 * g).unwrap().is_some(), "the total counts");
        assert!(memory_verdict(9 * g, 0, 8 * g).is_err());
        assert!(memory_verdict(4 * g, 5 * g, 8 * g).is_err());
        assert!(memory_verdict(u64::MAX, u64::MAX, 8 * g).is_err());
        assert!(physical_memory().is_some_and(|m| m > 0));
    }

    #[test]
    fn zeroing_releases_whole_pages_and_keeps_the_edges() {
        let b = MallocBdev::new("z", 4 << 20 >> 9, 512, None).unwrap();
        let m = &b.mem;
        // SAFETY: test-only byte access within the mapping, on one thread.
        unsafe {
            std::ptr::write_bytes(m.ptr, 0xee, m.len);
            m.zero(1000, 3 << 20);
            let all = std::slice::from_raw_parts(m.ptr, m.len);
            assert!(all[..1000].iter().all(|&x| x == 0xee));
            assert!(all[1000..1000 + (3 << 20)].iter().all(|&x| x == 0));
            assert!(all[1000 + (3 << 20)..].iter().all(|&x| x == 0xee));
            m.zero(10, 100);
            assert!(all[10..110].iter().all(|&x| x == 0) && all[9] == 0xee && all[110] == 0xee);
        }
    }
}
