//! Block devices: one trait, per-reactor channels, and the registry.
//!
//! A bdev is shared by every reactor; each reactor opens its own [`BdevChannel`] to it on first use
//! (an io_uring ring, say), so submission and completion take no lock. Completions come back to the
//! submitting handler as a reactor [`IoEvent`] carrying the request's tag and buffer.

pub mod blocking;
pub mod delay;
pub mod malloc;
pub mod null;
pub mod stats;
pub mod uring;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::reactor::{Core, HandlerRef, IoBuf, IoEvent, Poller, Reactor};
pub use stats::{ChannelStats, IoStat};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoOp {
    Read,
    Write,
    Flush,
    WriteZeroes,
    Unmap,
}

/// One block I/O. For reads `buf` is the destination (num_blocks * block_size bytes); for writes
/// the source. The buffer comes back in the completion.
#[derive(Debug)]
pub struct IoRequest {
    pub op: IoOp,
    pub offset_blocks: u64,
    pub num_blocks: u64,
    pub buf: Option<IoBuf>,
    /// Force unit access: the write is on stable storage before it completes.
    pub fua: bool,
    pub owner: HandlerRef,
    pub tag: u64,
}

impl IoRequest {
    pub fn complete(self, core: &mut Core, status: i32) {
        core.complete(self.owner, IoEvent { tag: self.tag, status, buf: self.buf });
    }
}

/// Static facts about a bdev.
#[derive(Clone, Debug)]
pub struct BdevInfo {
    pub id: u32,
    pub name: String,
    pub product_name: &'static str,
    pub block_size: u32,
    pub num_blocks: u64,
    pub uuid: uuid::Uuid,
    /// Unmapped blocks read back as zeros (SBC LBPRZ, NVMe DLFEAT).
    pub unmap_zeroes: bool,
    pub write_cache: bool,
}

pub trait Bdev: Send + Sync + 'static {
    fn info(&self) -> &BdevInfo;
    /// A channel for the calling reactor.
    fn create_channel(&self, core: &mut Core) -> std::io::Result<Box<dyn BdevChannel>>;
    /// The RPC that recreates this bdev, and its parameters (for save_config).
    fn construct(&self) -> (&'static str, Value);
    /// `driver_specific` of bdev_get_bdevs.
    fn driver_specific(&self) -> Value {
        Value::Object(Default::default())
    }
    fn stats(&self) -> &stats::StatsRegistry;
    /// The bdev this one is built on (a virtual bdev such as delay): save_config creates it first.
    fn base_bdev(&self) -> Option<&str> {
        None
    }
    /// The concrete bdev, for management calls specific to one kind (bdev_delay_update_latency).
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
    /// Make completed writes durable (at shutdown; FUA and flush cover the data path).
    fn sync(&self) -> std::io::Result<()> {
        Ok(())
    }
}

pub trait BdevChannel: Send {
    fn submit(&mut self, core: &mut Core, req: IoRequest);
    /// Reap finished I/O into `core.complete`; return how many.
    fn poll(&mut self, core: &mut Core) -> usize;
}

#[derive(Debug, thiserror::Error)]
pub enum BdevError {
    #[error("bdev {0} already exists")]
    Exists(String),
    #[error("a bdev with UUID {0} already exists")]
    UuidExists(String),
    #[error("bdev {0} not found")]
    NotFound(String),
    #[error("bdev {0} is in use by {1}")]
    Busy(String, String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

impl BdevError {
    /// SPDK-style negative errno for JSON-RPC errors.
    pub fn errno(&self) -> i32 {
        match self {
            BdevError::Exists(_) | BdevError::UuidExists(_) => -libc::EEXIST,
            BdevError::NotFound(_) => -libc::ENODEV,
            BdevError::Busy(..) => -libc::EBUSY,
            BdevError::Invalid(_) => -libc::EINVAL,
            BdevError::Io(_, e) => -e.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

static NEXT_ID: AtomicU32 = AtomicU32::new(1);
pub fn next_bdev_id() -> u32 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

struct Entry {
    bdev: Arc<dyn Bdev>,
    claimed_by: Vec<String>,
    /// The only claim is exclusive (a layout volume's metadata): nobody else may claim it.
    exclusive: bool,
}

/// All bdevs by name, with claims by their users (an export, a layout volume).
#[derive(Default)]
pub struct BdevRegistry {
    inner: Mutex<BTreeMap<String, Entry>>,
}

impl BdevRegistry {
    pub fn add(&self, bdev: Arc<dyn Bdev>) -> Result<(), BdevError> {
        let mut m = self.inner.lock().unwrap();
        let name = bdev.info().name.clone();
        if m.contains_key(&name) {
            return Err(BdevError::Exists(name));
        }
        if m.values().any(|e| e.bdev.info().uuid == bdev.info().uuid) {
            return Err(BdevError::UuidExists(bdev.info().uuid.to_string()));
        }
        m.insert(name, Entry { bdev, claimed_by: Vec::new(), exclusive: false });
        Ok(())
    }
    pub fn contains(&self, name: &str) -> bool {
        self.inner.lock().unwrap().contains_key(name)
    }
    pub fn get(&self, name: &str) -> Option<Arc<dyn Bdev>> {
        let m = self.inner.lock().unwrap();
        m.get(name)
            .or_else(|| m.values().find(|e| e.bdev.info().uuid.to_string() == name))
            .map(|e| e.bdev.clone())
    }
    pub fn list(&self) -> Vec<Arc<dyn Bdev>> {
        self.inner.lock().unwrap().values().map(|e| e.bdev.clone()).collect()
    }
    pub fn claims(&self, name: &str) -> Vec<String> {
        self.inner.lock().unwrap().get(name).map(|e| e.claimed_by.clone()).unwrap_or_default()
    }
    /// A shared claim (exports and layout data volumes share a bdev); refused while it is
    /// claimed exclusively.
    pub fn claim(&self, name: &str, by: &str) -> Result<Arc<dyn Bdev>, BdevError> {
        let mut m = self.inner.lock().unwrap();
        let e = m.get_mut(name).ok_or_else(|| BdevError::NotFound(name.to_string()))?;
        if e.exclusive {
            return Err(BdevError::Busy(name.to_string(), e.claimed_by.join(", ")));
        }
        e.claimed_by.push(by.to_string());
        Ok(e.bdev.clone())
    }
    /// The only claim: refused if anyone holds one, and blocks every later claim until released.
    pub fn claim_exclusive(&self, name: &str, by: &str) -> Result<Arc<dyn Bdev>, BdevError> {
        let mut m = self.inner.lock().unwrap();
        let e = m.get_mut(name).ok_or_else(|| BdevError::NotFound(name.to_string()))?;
        if !e.claimed_by.is_empty() {
            return Err(BdevError::Busy(name.to_string(), e.claimed_by.join(", ")));
        }
        e.claimed_by.push(by.to_string());
        e.exclusive = true;
        Ok(e.bdev.clone())
    }
    pub fn release(&self, name: &str, by: &str) {
        if let Some(e) = self.inner.lock().unwrap().get_mut(name) {
            if let Some(i) = e.claimed_by.iter().position(|c| c == by) {
                e.claimed_by.remove(i);
                if e.claimed_by.is_empty() {
                    e.exclusive = false;
                }
            }
        }
    }
    /// Remove an unclaimed bdev of the given product kind (so bdev_null_delete cannot delete RAM).
    pub fn remove(&self, name: &str, product: Option<&str>) -> Result<Arc<dyn Bdev>, BdevError> {
        let mut m = self.inner.lock().unwrap();
        let e = m.get(name).ok_or_else(|| BdevError::NotFound(name.to_string()))?;
        if let Some(p) = product {
            if e.bdev.info().product_name != p {
                return Err(BdevError::NotFound(name.to_string()));
            }
        }
        if let Some(by) = e.claimed_by.first() {
            return Err(BdevError::Busy(name.to_string(), by.clone()));
        }
        Ok(m.remove(name).unwrap().bdev)
    }
}

thread_local! {
    /// This reactor's channels, indexed by bdev id.
    static CHANNELS: RefCell<Vec<Option<Box<dyn BdevChannel>>>> = const { RefCell::new(Vec::new()) };
}

/// Submit `req` to `bdev` on the calling reactor's channel (opened on first use).
pub fn submit(core: &mut Core, bdev: &dyn Bdev, req: IoRequest) {
    let id = bdev.info().id as usize;
    CHANNELS.with(|c| {
        let mut chans = c.borrow_mut();
        if chans.len() <= id {
            chans.resize_with(id + 1, || None);
        }
        if chans[id].is_none() {
            match bdev.create_channel(core) {
                Ok(ch) => chans[id] = Some(ch),
                Err(e) => {
                    tracing::error!(bdev = %bdev.info().name, "cannot open channel: {e}");
                    req.complete(core, -e.raw_os_error().unwrap_or(libc::EIO));
                    return;
                }
            }
        }
        chans[id].as_mut().unwrap().submit(core, req);
    });
}

/// Close this reactor's channel to a bdev (before the bdev is deleted).
pub fn close_channel(id: u32) {
    CHANNELS.with(|c| {
        if let Some(slot) = c.borrow_mut().get_mut(id as usize) {
            *slot = None;
        }
    });
}

/// Polls every channel of the reactor it is installed on.
pub struct ChannelPoller;

impl Poller for ChannelPoller {
    fn poll(&mut self, core: &mut Core) -> usize {
        CHANNELS.with(|c| {
            let mut n = 0;
            for ch in c.borrow_mut().iter_mut().flatten() {
                n += ch.poll(core);
            }
            n
        })
    }
}

/// Install the channel poller on a reactor (at start).
pub fn install(r: &mut Reactor) {
    r.add_poller(Box::new(ChannelPoller));
}

/// Common JSON for bdev_get_bdevs, in SPDK's field names.
pub fn describe(b: &dyn Bdev, claimed: bool) -> Value {
    let i = b.info();
    serde_json::json!({
        "name": i.name,
        "aliases": [],
        "product_name": i.product_name,
        "block_size": i.block_size,
        "num_blocks": i.num_blocks,
        "uuid": i.uuid.to_string(),
        "assigned_rate_limits": {
            "rw_ios_per_sec": 0, "rw_mbytes_per_sec": 0,
            "r_mbytes_per_sec": 0, "w_mbytes_per_sec": 0
        },
        "claimed": claimed,
        "zoned": false,
        "supported_io_types": {
            "read": true, "write": true, "unmap": true, "flush": true, "reset": true,
            "write_zeroes": true, "compare": false, "compare_and_write": false,
            "abort": false, "nvme_admin": false, "nvme_io": false
        },
        "driver_specific": b.driver_specific(),
    })
}
