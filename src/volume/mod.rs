//! The narrow waist: every protocol's I/O reaches a bdev through a [`Volume`].
//!
//! A volume is one bdev plus the state both protocols must agree on (reservations, the layout
//! guard, added by later layers). Protocol front-ends translate commands into [`IoRequest`]s and
//! call [`Volume::submit`]; the volume decides, once for both protocols, whether the command may
//! run.

pub mod guard_hook;
pub mod identity;
pub mod range_lock;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::bdev::{self, Bdev, BdevError, BdevRegistry, IoRequest};
use crate::reactor::Core;

/// Who sent a command: the I_T nexus (iSCSI) or host (NVMe) as the reservation engine sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Initiator {
    /// iSCSI initiator port (initiator name + ",i,0x" + ISID) and the target port it came through.
    Iscsi { initiator_port: String, target_port: String, rel_port_id: u16 },
    /// NVMe host identifier (128-bit, or 64-bit extended) and host NQN.
    Nvme { host_id: [u8; 16], host_nqn: String },
}

/// Why a volume refused a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denied {
    /// LBA range beyond the end of the device.
    OutOfRange,
    /// A persistent reservation held by another nexus forbids it.
    ReservationConflict,
    /// The layout guard refused a write outside the client's grants.
    WriteProtected,
}

pub struct Volume {
    bdev: Arc<dyn Bdev>,
    /// LBA range locks of read-modify-write commands (COMPARE AND WRITE and kin).
    pub locks: range_lock::RangeLock,
    /// The layout guard, when a layout volume lives on this bdev (read lock-free per I/O).
    guard: arc_swap::ArcSwapOption<crate::layout::guard::Guard>,
}

impl Volume {
    pub fn new(bdev: Arc<dyn Bdev>) -> Volume {
        Volume { bdev, locks: Default::default(), guard: Default::default() }
    }
    pub fn bdev(&self) -> &Arc<dyn Bdev> {
        &self.bdev
    }
    pub fn name(&self) -> &str {
        &self.bdev.info().name
    }
    pub fn block_size(&self) -> u32 {
        self.bdev.info().block_size
    }
    pub fn num_blocks(&self) -> u64 {
        self.bdev.info().num_blocks
    }
    pub fn uuid(&self) -> uuid::Uuid {
        self.bdev.info().uuid
    }

    /// Check `req` for `who` and hand it to the bdev; a refused request is given back with the
    /// reason, so the front-end can answer in its protocol's terms.
    pub fn submit(&self, core: &mut Core, who: &Initiator, req: IoRequest) -> Result<(), (IoRequest, Denied)> {
        let end = req.offset_blocks.checked_add(req.num_blocks);
        if end.is_none_or(|e| e > self.num_blocks()) {
            return Err((req, Denied::OutOfRange));
        }
        if let Some(g) = &*self.guard.load() {
            return guard_hook::submit(core, self.bdev.as_ref(), g, who, req, Some(&self.locks));
        }
        // A write overlapping a held range waits for its release (range_lock.rs).
        if let Some(req) = self.locks.admit(req) {
            bdev::submit(core, self.bdev.as_ref(), req);
        }
        Ok(())
    }

    /// Submit for the holder of a range lock covering `req` (its own read and write bypass the
    /// lock); every other check of [`Volume::submit`] applies.
    pub fn submit_locked(&self, core: &mut Core, who: &Initiator, req: IoRequest) -> Result<(), (IoRequest, Denied)> {
        let end = req.offset_blocks.checked_add(req.num_blocks);
        if end.is_none_or(|e| e > self.num_blocks()) {
            return Err((req, Denied::OutOfRange));
        }
        if let Some(g) = &*self.guard.load() {
            return guard_hook::submit(core, self.bdev.as_ref(), g, who, req, None);
        }
        bdev::submit(core, self.bdev.as_ref(), req);
        Ok(())
    }

    /// Attach or detach the layout guard (the interposer must be installed on every reactor,
    /// see [`guard_hook::install`]).
    pub fn set_guard(&self, g: Option<Arc<crate::layout::guard::Guard>>) {
        self.guard.store(g);
    }
}

/// One volume per exported bdev, shared by every LUN and namespace that exports it.
pub struct VolumeRegistry {
    bdevs: Arc<BdevRegistry>,
    map: Mutex<HashMap<String, (Arc<Volume>, usize)>>,
}

impl VolumeRegistry {
    pub fn new(bdevs: Arc<BdevRegistry>) -> Self {
        VolumeRegistry { bdevs, map: Mutex::new(HashMap::new()) }
    }

    /// Open the volume of `bdev_name` for `user` (an export), claiming the bdev.
    pub fn open(&self, bdev_name: &str, user: &str) -> Result<Arc<Volume>, BdevError> {
        let bdev = self.bdevs.claim(bdev_name, user)?;
        let name = bdev.info().name.clone();
        let mut m = self.map.lock().unwrap();
        let e = m.entry(name).or_insert_with(|| (Arc::new(Volume::new(bdev)), 0));
        e.1 += 1;
        Ok(e.0.clone())
    }

    /// Drop `user`'s claim; the volume goes away with its last user.
    pub fn close(&self, bdev_name: &str, user: &str) {
        self.bdevs.release(bdev_name, user);
        let mut m = self.map.lock().unwrap();
        if let Some(e) = m.get_mut(bdev_name) {
            e.1 -= 1;
            if e.1 == 0 {
                m.remove(bdev_name);
            }
        }
    }

    pub fn get(&self, bdev_name: &str) -> Option<Arc<Volume>> {
        self.map.lock().unwrap().get(bdev_name).map(|e| e.0.clone())
    }
}
