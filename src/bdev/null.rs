//! Null bdev: discards writes, reads zeros. For benchmarks of everything but the media.

use std::time::Instant;

use serde_json::{json, Value};

use super::stats::{ChannelStats, StatsRegistry};
use super::{Bdev, BdevChannel, BdevError, BdevInfo, IoOp, IoRequest};
use crate::reactor::Core;
use std::sync::Arc;

pub const PRODUCT: &str = "Null disk";

pub struct NullBdev {
    info: BdevInfo,
    stats: StatsRegistry,
}

impl NullBdev {
    pub fn new(name: &str, num_blocks: u64, block_size: u32, uuid: Option<uuid::Uuid>) -> Result<Self, BdevError> {
        super::malloc::check_geometry(num_blocks, block_size)?;
        Ok(NullBdev {
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
            stats: StatsRegistry::default(),
        })
    }
}

impl Bdev for NullBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }
    fn create_channel(&self, _core: &mut Core) -> std::io::Result<Box<dyn BdevChannel>> {
        Ok(Box::new(NullChannel { nblocks: self.info.num_blocks, bs: self.info.block_size as u64, stats: self.stats.new_channel() }))
    }
    fn construct(&self) -> (&'static str, Value) {
        (
            "bdev_null_create",
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

struct NullChannel {
    nblocks: u64,
    bs: u64,
    stats: Arc<ChannelStats>,
}

impl BdevChannel for NullChannel {
    fn submit(&mut self, core: &mut Core, mut req: IoRequest) {
        let start = Instant::now();
        if !req.offset_blocks.checked_add(req.num_blocks).is_some_and(|e| e <= self.nblocks) {
            return req.complete(core, -libc::EINVAL);
        }
        let len = req.num_blocks * self.bs;
        if req.op == IoOp::Read {
            if let Some(b) = req.buf.as_mut() {
                let n = (len as usize).min(b.len());
                b[..n].fill(0);
            }
        }
        self.stats.record(req.op, len, start.elapsed().as_nanos() as u64);
        req.complete(core, 0);
    }
    fn poll(&mut self, _core: &mut Core) -> usize {
        0
    }
}
