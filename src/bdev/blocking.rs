//! Synchronous block I/O on a bdev for management threads (the layout metadata journal): each
//! call submits one request on a reactor, from a small handler that owns the completion, and
//! waits for it on a channel. Never call it from a reactor thread (it would wait on itself).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use super::{Bdev, IoOp, IoRequest};
use crate::reactor::{current_reactor, Core, Handler, HandlerRef, IoBuf, IoEvent, ReactorSet};

/// Largest single request (bigger reads and writes are split).
const CHUNK_BYTES: u64 = 1 << 20;
/// A request not completed in this time is reported failed.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// Sends every completion it receives to the waiting thread.
struct Waiter(mpsc::Sender<IoEvent>);

impl Handler for Waiter {
    fn on_ready(&mut self, _: &mut Core, _: HandlerRef, _: &mio::event::Event) {}
    fn on_io_complete(&mut self, _: &mut Core, _: HandlerRef, ev: IoEvent) {
        let _ = self.0.send(ev);
    }
}

/// A bdev read and written synchronously through reactor `reactor`.
pub struct BlockingBdev {
    set: ReactorSet,
    bdev: Arc<dyn Bdev>,
    reactor: u32,
    h: HandlerRef,
    rx: mpsc::Receiver<IoEvent>,
    tag: AtomicU64,
}

fn not_on_reactor() -> io::Result<()> {
    if current_reactor().is_some() {
        return Err(io::Error::other("synchronous bdev I/O from a reactor thread"));
    }
    Ok(())
}

impl BlockingBdev {
    /// Install the completion handler on reactor 0.
    pub fn new(set: &ReactorSet, bdev: Arc<dyn Bdev>) -> io::Result<Self> {
        not_on_reactor()?;
        let (tx, rx) = mpsc::channel();
        let h = set
            .call(0, move |r| r.add_handler(move |_, _| Some(Box::new(Waiter(tx)) as Box<dyn Handler>)))
            .flatten()
            .ok_or_else(|| io::Error::other("reactors are stopped"))?;
        Ok(BlockingBdev { set: set.clone(), bdev, reactor: 0, h, rx, tag: AtomicU64::new(1) })
    }

    pub fn bdev(&self) -> &Arc<dyn Bdev> {
        &self.bdev
    }

    /// One request, waited for; returns the buffer (reads).
    fn io(&self, op: IoOp, lba: u64, nblocks: u64, buf: Option<IoBuf>, fua: bool) -> io::Result<Option<IoBuf>> {
        not_on_reactor()?;
        let info = self.bdev.info();
        if lba.checked_add(nblocks).map_or(true, |end| end > info.num_blocks) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bdev {}: blocks {lba}+{nblocks} beyond its {} blocks", info.name, info.num_blocks)));
        }
        let tag = self.tag.fetch_add(1, Ordering::Relaxed);
        let (bdev, h) = (self.bdev.clone(), self.h);
        let submitted = self
            .set
            .call(self.reactor, move |r| {
                r.with_handler(h, move |_, core, me| {
                    let req = IoRequest { op, offset_blocks: lba, num_blocks: nblocks, buf, fua, owner: me, tag };
                    super::submit(core, bdev.as_ref(), req);
                })
            })
            .unwrap_or(false);
        if !submitted {
            return Err(io::Error::other("reactors are stopped"));
        }
        loop {
            let ev = self.rx.recv_timeout(IO_TIMEOUT).map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("bdev {}: {op:?} at block {lba} did not complete", info.name)))?;
            if ev.tag != tag {
                continue; // the late completion of a request that timed out
            }
            if ev.status != 0 {
                return Err(io::Error::from_raw_os_error(-ev.status));
            }
            return Ok(ev.buf);
        }
    }

    fn chunk_blocks(&self) -> u64 {
        (CHUNK_BYTES / self.bdev.info().block_size as u64).max(1)
    }

    pub fn read(&self, lba: u64, nblocks: u64) -> io::Result<Vec<u8>> {
        let bs = self.bdev.info().block_size as u64;
        let mut out = Vec::with_capacity((nblocks * bs) as usize);
        let mut done = 0;
        while done < nblocks {
            let n = (nblocks - done).min(self.chunk_blocks());
            let buf = self.io(IoOp::Read, lba + done, n, Some(IoBuf::new((n * bs) as usize)), false)?;
            out.extend_from_slice(&buf.ok_or_else(|| io::Error::other("read completed without its buffer"))?);
            done += n;
        }
        Ok(out)
    }

    /// Write whole blocks; with `fua` every piece is durable before this returns.
    pub fn write(&self, lba: u64, data: &[u8], fua: bool) -> io::Result<()> {
        let bs = self.bdev.info().block_size as usize;
        if data.len() % bs != 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("write of {} bytes is not whole blocks of {bs}", data.len())));
        }
        for (i, piece) in data.chunks(self.chunk_blocks() as usize * bs).enumerate() {
            let at = lba + (i as u64 * self.chunk_blocks());
            self.io(IoOp::Write, at, (piece.len() / bs) as u64, Some(IoBuf::from_slice(piece)), fua)?;
        }
        Ok(())
    }

    pub fn flush(&self) -> io::Result<()> {
        self.io(IoOp::Flush, 0, 0, None, false).map(|_| ())
    }
}

impl Drop for BlockingBdev {
    fn drop(&mut self) {
        let h = self.h;
        self.set.send(self.reactor, move |r| {
            r.with_handler(h, |_, core, me| core.close(me));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bdev::malloc::MallocBdev;
    use crate::bdev::uring::UringBdev;
    use crate::bdev::{BdevError, BdevRegistry};
    use crate::reactor::PollMode;

    #[test]
    fn read_write_flush_from_a_management_thread() {
        let set = ReactorSet::start(0x1, PollMode::Adaptive, crate::bdev::install).unwrap();
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("u.img");
        std::fs::File::create(&img).unwrap().set_len(4 << 20).unwrap();
        let bdevs: Vec<Arc<dyn Bdev>> = vec![
            Arc::new(MallocBdev::new("m", 16384, 512, None).unwrap()),
            Arc::new(UringBdev::new("u", img.to_str().unwrap(), Some(4096), None).unwrap()),
        ];
        for b in bdevs {
            let bs = b.info().block_size as usize;
            let io = BlockingBdev::new(&set, b.clone()).unwrap();
            // Larger than one request: split and reassembled in order.
            let data: Vec<u8> = (0..(3 << 20) / bs * bs).map(|i| (i / bs) as u8 ^ (i as u8)).collect();
            io.write(3, &data, false).unwrap();
            io.flush().unwrap();
            assert_eq!(io.read(3, (data.len() / bs) as u64).unwrap(), data);
            io.write(0, &vec![7u8; bs], true).unwrap();
            assert!(io.read(0, 1).unwrap().iter().all(|&x| x == 7));
            let e = io.read(b.info().num_blocks, 1).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
            assert!(io.write(0, &[1, 2, 3], false).is_err());
        }
        set.stop();
    }

    #[test]
    fn exclusive_claims() {
        let r = BdevRegistry::default();
        r.add(Arc::new(MallocBdev::new("a", 8, 512, None).unwrap())).unwrap();
        r.claim("a", "export").unwrap();
        assert!(matches!(r.claim_exclusive("a", "meta"), Err(BdevError::Busy(_, by)) if by == "export"));
        r.release("a", "export");
        r.claim_exclusive("a", "meta").unwrap();
        assert!(matches!(r.claim("a", "export"), Err(BdevError::Busy(_, by)) if by == "meta"));
        assert!(r.claim_exclusive("a", "meta2").is_err());
        assert!(r.remove("a", None).is_err());
        r.release("a", "meta");
        r.claim("a", "export").unwrap();
        r.claim("a", "export2").unwrap();
    }
}
