//! The SCSI core end to end on real reactors and a RAM bdev, without a transport: a tiny handler
//! owns a `ScsiPort` per nexus, takes commands by message and reports every response on a channel.
//! Covers what the compliance suite cannot see: COMPARE AND WRITE against writes parked on the
//! range lock, unit attentions across nexuses, task abort, and the data-path semantics.

use std::any::Any;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use palisade::bdev::malloc::MallocBdev;
use palisade::bdev::Bdev;
use palisade::reactor::{Core, Handler, HandlerRef, IoBuf, IoEvent, PollMode, ReactorSet};
use palisade::scsi::{sense_key, status, DataDir, Lun, LunMap, ScsiCommand, ScsiPort, ScsiResponse, TaskAttr};
use palisade::volume::range_lock::Acquired;
use palisade::volume::{Initiator, Volume};

const BS: usize = 512;
const BLOCKS: u64 = 8192;

enum Msg {
    Cmd(ScsiCommand),
    Abort(u32),
    LunReset(u64),
}

/// What the test sees of a response.
#[derive(Debug)]
struct Resp {
    tag: u32,
    status: u8,
    key: u8,
    asc: u8,
    ascq: u8,
    info: Option<u32>,
    data: Vec<u8>,
}

struct PortHandler {
    port: ScsiPort,
    out: mpsc::Sender<Resp>,
}

impl PortHandler {
    fn drain(&mut self) {
        while let Some(r) = self.port.next_done() {
            let _ = self.out.send(to_resp(r));
        }
    }
}

fn to_resp(r: ScsiResponse) -> Resp {
    let s = r.sense.unwrap_or_default();
    let data = r.data_in.map(|b| b[..r.data_len as usize].to_vec()).unwrap_or_default();
    Resp { tag: r.task_tag, status: r.status, key: s.key, asc: s.asc, ascq: s.ascq, info: s.information, data }
}

impl Handler for PortHandler {
    fn on_ready(&mut self, _: &mut Core, _: HandlerRef, _: &mio::event::Event) {}
    fn on_message(&mut self, core: &mut Core, me: HandlerRef, msg: Box<dyn Any + Send>) {
        match *msg.downcast::<Msg>().expect("Msg") {
            Msg::Cmd(c) => self.port.submit(core, me, c),
            Msg::Abort(tag) => {
                self.port.abort_task(tag);
            }
            Msg::LunReset(lun) => {
                self.port.lun_reset(lun);
            }
        }
        self.drain();
    }
    fn on_io_complete(&mut self, core: &mut Core, me: HandlerRef, ev: IoEvent) {
        self.port.on_io_complete(core, me, ev);
        self.drain();
    }
}

struct Nexus {
    set: ReactorSet,
    h: HandlerRef,
    rx: mpsc::Receiver<Resp>,
    next_tag: u32,
}

struct Rig {
    set: ReactorSet,
    volume: Arc<Volume>,
    luns: Arc<LunMap>,
}

impl Rig {
    fn new(reactors: u64) -> Rig {
        let mask = if reactors > 1 && std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) > 1 { 0x3 } else { 0x1 };
        let set = ReactorSet::start(mask, PollMode::Adaptive, palisade::bdev::install).unwrap();
        let bdev: Arc<dyn Bdev> = Arc::new(MallocBdev::new("m0", BLOCKS, BS as u32, None).unwrap());
        let volume = Arc::new(Volume::new(bdev));
        let luns = Arc::new(LunMap { luns: vec![Arc::new(Lun::new(0, volume.clone()))] });
        Rig { set, volume, luns }
    }

    /// A nexus on reactor `reactor` (wrapped to the reactors that exist).
    fn nexus(&self, name: &str, reactor: u32) -> Nexus {
        let (tx, rx) = mpsc::channel();
        let who = Initiator::Iscsi {
            initiator_port: format!("iqn.test:{name},i,0x000000000001"),
            target_port: "iqn.test:target,t,0x0001".into(),
            rel_port_id: 1,
        };
        let port = ScsiPort::new(who, self.luns.clone());
        let id = reactor % self.set.len() as u32;
        let h = self
            .set
            .call(id, move |r| r.add_handler(move |_, _| Some(Box::new(PortHandler { port, out: tx }) as Box<dyn Handler>)))
            .unwrap()
            .unwrap();
        let mut n = Nexus { set: self.set.clone(), h, rx, next_tag: 1 };
        // Consume the power-on unit attention every new nexus starts with.
        let r = n.run(&[0x00], None);
        assert_eq!((r.status, r.key, r.asc), (status::CHECK_CONDITION, sense_key::UNIT_ATTENTION, 0x29));
        n
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.set.stop();
    }
}

impl Nexus {
    fn send(&mut self, cdb: &[u8], data: Option<&[u8]>) -> u32 {
        let mut c = [0u8; 32];
        c[..cdb.len()].copy_from_slice(cdb);
        let tag = self.next_tag;
        self.next_tag += 1;
        let cmd = ScsiCommand {
            cdb: c,
            cdb_len: cdb.len() as u8,
            lun: 0,
            task_tag: tag,
            // Like a transport's EDTL: the core fills no more Data-In than this.
            expected_len: data.map(|d| d.len() as u32).unwrap_or(16 << 20),
            dir: if data.is_some() { DataDir::Write } else { DataDir::Read },
            data_out: data.map(IoBuf::from_slice),
            attr: TaskAttr::Simple,
        };
        self.msg(Msg::Cmd(cmd));
        tag
    }
    fn msg(&self, m: Msg) {
        let h = self.h;
        assert!(self.set.call(h.reactor, move |r| r.send_to_handler(h, Box::new(m))).unwrap());
    }
    fn recv(&self) -> Resp {
        self.rx.recv_timeout(Duration::from_secs(10)).expect("response")
    }
    fn run(&mut self, cdb: &[u8], data: Option<&[u8]>) -> Resp {
        let tag = self.send(cdb, data);
        let r = self.recv();
        assert_eq!(r.tag, tag);
        r
    }
}

fn rw16(op: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn caw(lba: u64, blocks: u8) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x89;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[13] = blocks;
    c
}

fn good(r: &Resp) {
    assert_eq!(r.status, status::GOOD, "{r:?}");
}

#[test]
fn read_write_verify_and_ranges() {
    let rig = Rig::new(1);
    let mut a = rig.nexus("a", 0);
    let pattern: Vec<u8> = (0..4 * BS).map(|i| (i * 7) as u8).collect();
    good(&a.run(&rw16(0x8a, 10, 4), Some(&pattern)));
    let r = a.run(&rw16(0x88, 10, 4), None);
    good(&r);
    assert_eq!(r.data, pattern);
    // READ(6) with transfer length 0 reads 256 blocks.
    let r = a.run(&[0x08, 0, 0, 0, 0, 0], None);
    assert_eq!(r.data.len(), 256 * BS);
    // Beyond the end, and the LBA field overflow.
    let r = a.run(&rw16(0x88, BLOCKS - 1, 2), None);
    assert_eq!((r.key, r.asc), (sense_key::ILLEGAL_REQUEST, 0x21));
    let r = a.run(&rw16(0x88, u64::MAX, 2), None);
    assert_eq!(r.asc, 0x21);
    // RDPROTECT without protection information: field pointer at byte 1.
    let mut c = rw16(0x88, 0, 1);
    c[1] = 0x20;
    assert_eq!(a.run(&c, None).asc, 0x24);
    // Data-Out shorter than the transfer length: nothing written, 0E/03.
    let r = a.run(&rw16(0x8a, 10, 4), Some(&pattern[..BS]));
    assert_eq!((r.key, r.asc, r.ascq), (sense_key::ILLEGAL_REQUEST, 0x0e, 0x03));
    // VERIFY(16) BYTCHK=01b: equal, then a miscompare at byte 700 of the Data-Out.
    let mut v = rw16(0x8f, 10, 4);
    v[1] = 0x02;
    good(&a.run(&v, Some(&pattern)));
    let mut bad = pattern.clone();
    bad[700] ^= 1;
    let r = a.run(&v, Some(&bad));
    assert_eq!((r.key, r.asc, r.info), (sense_key::MISCOMPARE, 0x1d, Some(700)));
}

#[test]
fn compare_and_write_and_miscompare() {
    let rig = Rig::new(1);
    let mut a = rig.nexus("a", 0);
    let old = vec![0x11u8; BS * 2];
    good(&a.run(&rw16(0x8a, 100, 2), Some(&old)));
    let mut buf = old.clone();
    buf.extend(vec![0x22u8; BS * 2]);
    good(&a.run(&caw(100, 2), Some(&buf)));
    assert_eq!(a.run(&rw16(0x88, 100, 2), None).data, vec![0x22u8; BS * 2]);
    // Same command again: the verify half no longer matches at offset 0.
    let r = a.run(&caw(100, 2), Some(&buf));
    assert_eq!((r.key, r.asc, r.info), (sense_key::MISCOMPARE, 0x1d, Some(0)));
    // Wrong Data-Out size and a length above the VPD limit.
    assert_eq!(a.run(&caw(100, 1), Some(&buf)).key, sense_key::ILLEGAL_REQUEST);
    assert_eq!(a.run(&caw(100, 200), Some(&vec![0; 400 * BS])).asc, 0x24);
}

#[test]
fn writes_wait_for_a_held_range() {
    let rig = Rig::new(1);
    let mut a = rig.nexus("a", 0);
    let owner = HandlerRef { reactor: 0, slot: u32::MAX, gen: 0 };
    let vol = rig.volume.clone();
    let id = match rig.set.call(0, move |r| vol.locks.acquire(&mut r.core, 50, 4, owner, 0)).unwrap() {
        Acquired::Now(id) => id,
        x => panic!("{x:?}"),
    };
    // A write to an overlapping range is parked; one to another range goes through.
    let parked = a.send(&rw16(0x8a, 52, 1), Some(&vec![0xaa; BS]));
    good(&a.run(&rw16(0x8a, 60, 1), Some(&vec![0xbb; BS])));
    assert!(a.rx.recv_timeout(Duration::from_millis(200)).is_err(), "the overlapping write must wait");
    // Reads are not held up.
    good(&a.run(&rw16(0x88, 52, 1), None));
    let vol = rig.volume.clone();
    rig.set.call(0, move |r| vol.locks.release(&mut r.core, vol.bdev(), id)).unwrap();
    let r = a.recv();
    assert_eq!(r.tag, parked);
    good(&r);
    assert_eq!(a.run(&rw16(0x88, 52, 1), None).data, vec![0xaa; BS]);
    assert_eq!(rig.volume.locks.active(), 0);

    // A parked write that is aborted never answers, but still lands after the release.
    let vol = rig.volume.clone();
    let id = match rig.set.call(0, move |r| vol.locks.acquire(&mut r.core, 50, 4, owner, 0)).unwrap() {
        Acquired::Now(id) => id,
        x => panic!("{x:?}"),
    };
    let t = a.send(&rw16(0x8a, 50, 1), Some(&vec![0xcc; BS]));
    a.msg(Msg::Abort(t));
    let vol = rig.volume.clone();
    rig.set.call(0, move |r| vol.locks.release(&mut r.core, vol.bdev(), id)).unwrap();
    let r = a.run(&[0x00, 0, 0, 0, 0, 0], None);
    good(&r);
}

#[test]
fn concurrent_compare_and_write_counters_are_exact() {
    // Two nexuses (on two reactors when the machine has them) increment one counter block with
    // read + COMPARE AND WRITE, retrying on miscompare: no increment may be lost.
    let rig = Rig::new(2);
    let a = rig.nexus("a", 0);
    let b = rig.nexus("b", 1);
    let per = 200u32;
    let run = |mut n: Nexus| {
        std::thread::spawn(move || {
            let mut done = 0;
            while done < per {
                let cur = n.run(&rw16(0x88, 7, 1), None).data;
                let v = u32::from_le_bytes(cur[..4].try_into().unwrap());
                let mut buf = cur.clone();
                buf.extend_from_slice(&cur);
                buf[BS..BS + 4].copy_from_slice(&(v + 1).to_le_bytes());
                let r = n.run(&caw(7, 1), Some(&buf));
                if r.status == status::GOOD {
                    done += 1;
                } else {
                    assert_eq!(r.key, sense_key::MISCOMPARE);
                }
            }
            n
        })
    };
    let (ta, tb) = (run(a), run(b));
    let mut a = ta.join().unwrap();
    tb.join().unwrap();
    let cur = a.run(&rw16(0x88, 7, 1), None).data;
    assert_eq!(u32::from_le_bytes(cur[..4].try_into().unwrap()), 2 * per);
}

#[test]
fn unit_attentions_cross_nexus() {
    let rig = Rig::new(1);
    let mut a = rig.nexus("a", 0);
    let mut b = rig.nexus("b", 0);
    // a turns on WCE with MODE SELECT(6): b gets MODE PARAMETERS CHANGED, a does not.
    let ms = a.run(&[0x1a, 0x08, 0x08, 0, 255, 0], None);
    good(&ms);
    let mut list = vec![0u8, 0, 0, 0];
    list.extend_from_slice(&ms.data[4..4 + 20]);
    list[4] &= 0x3f; // PS is reserved in MODE SELECT
    list[6] |= 0x04;
    good(&a.run(&[0x15, 0x10, 0, 0, list.len() as u8, 0], Some(&list)));
    good(&a.run(&[0x00, 0, 0, 0, 0, 0], None));
    // INQUIRY neither reports nor clears it.
    good(&b.run(&[0x12, 0, 0, 0, 36, 0], None));
    let r = b.run(&[0x00, 0, 0, 0, 0, 0], None);
    assert_eq!((r.key, r.asc, r.ascq), (sense_key::UNIT_ATTENTION, 0x2a, 0x01));
    good(&b.run(&[0x00, 0, 0, 0, 0, 0], None));
    let r = b.run(&[0x1a, 0x00, 0x08, 0, 255, 0], None);
    assert_eq!(r.data[4 + 8 + 2] & 0x04, 0x04, "WCE is now set for every nexus");
    // A non-changeable bit (RCD) is refused with the parameter-list field pointer.
    list[6] |= 0x01;
    let r = a.run(&[0x15, 0x10, 0, 0, list.len() as u8, 0], Some(&list));
    assert_eq!((r.key, r.asc), (sense_key::ILLEGAL_REQUEST, 0x26));
    // LUN reset: 29/03 on every nexus, reported by REQUEST SENSE as data.
    a.msg(Msg::LunReset(0));
    let r = a.run(&[0x03, 0, 0, 0, 18, 0], None);
    good(&r);
    assert_eq!((r.data[2], r.data[12], r.data[13]), (sense_key::UNIT_ATTENTION, 0x29, 0x03));
    let r = b.run(&[0x00, 0, 0, 0, 0, 0], None);
    assert_eq!((r.asc, r.ascq), (0x29, 0x03));
    good(&a.run(&[0x00, 0, 0, 0, 0, 0], None));
}

#[test]
fn unmap_write_same_and_provisioning() {
    let rig = Rig::new(1);
    let mut a = rig.nexus("a", 0);
    good(&a.run(&rw16(0x8a, 0, 8), Some(&vec![0xff; 8 * BS])));
    // UNMAP two descriptors; LBPRZ says they read back as zeros.
    let mut list = vec![0u8, 38, 0, 32, 0, 0, 0, 0];
    for (lba, n) in [(0u64, 2u32), (4, 2)] {
        list.extend_from_slice(&lba.to_be_bytes());
        list.extend_from_slice(&n.to_be_bytes());
        list.extend_from_slice(&[0; 4]);
    }
    good(&a.run(&[0x42, 0, 0, 0, 0, 0, 0, 0, list.len() as u8, 0], Some(&list)));
    let d = a.run(&rw16(0x88, 0, 8), None).data;
    assert!(d[..2 * BS].iter().all(|&x| x == 0) && d[2 * BS..4 * BS].iter().all(|&x| x == 0xff));
    assert!(d[4 * BS..6 * BS].iter().all(|&x| x == 0));
    // A descriptor past the end fails the whole command before anything is unmapped.
    let mut bad = list.clone();
    bad[24..32].copy_from_slice(&(BLOCKS - 1).to_be_bytes());
    let r = a.run(&[0x42, 0, 0, 0, 0, 0, 0, 0, bad.len() as u8, 0], Some(&bad));
    assert_eq!(r.asc, 0x21);
    // WRITE SAME(16) of a pattern over more blocks than one chunk buffer holds.
    let mut ws = rw16(0x93, 100, 3000);
    ws[1] = 0;
    good(&a.run(&ws, Some(&vec![0x5a; BS])));
    let d = a.run(&rw16(0x88, 100, 3000), None).data;
    assert!(d.iter().all(|&x| x == 0x5a));
    // WRITE SAME with the wrong Data-Out size is refused.
    assert_eq!(a.run(&ws, Some(&vec![0x5a; 2 * BS])).key, sense_key::ILLEGAL_REQUEST);
    // READ CAPACITY(16): LBPME and LBPRZ; VPD 0xB2 thin provisioned.
    let rc = a.run(&[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0], None).data;
    assert_eq!(u64::from_be_bytes(rc[..8].try_into().unwrap()), BLOCKS - 1);
    assert_eq!(rc[14] & 0xc0, 0xc0);
    let lbp = a.run(&[0x12, 1, 0xb2, 0, 64, 0], None).data;
    assert_eq!(lbp[6] & 7, 2);
}

#[test]
fn unknown_opcodes_and_luns() {
    let rig = Rig::new(1);
    let mut a = rig.nexus("a", 0);
    let r = a.run(&[0xe7, 0, 0, 0, 0, 0], None);
    assert_eq!((r.key, r.asc), (sense_key::ILLEGAL_REQUEST, 0x20));
    // PERSISTENT RESERVE IN / READ KEYS is answered by the reservation engine: no keys yet.
    let r = a.run(&[0x5e, 0, 0, 0, 0, 0, 0, 0, 8, 0], None);
    assert_eq!((r.status, r.key), (0, 0));
    // REPORT SUPPORTED OPERATION CODES lists READ(16) and matches its one-command form.
    let all = a.run(&[0xa3, 0x0c, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0], None).data;
    assert!(all[4..].chunks(8).any(|d| d[0] == 0x88));
    let one = a.run(&[0xa3, 0x0c, 1, 0x88, 0, 0, 0, 0, 1, 0, 0, 0], None).data;
    assert_eq!((one[1] & 7, one[3], one[4]), (3, 16, 0x88));
}

#[test]
fn a_closed_connection_frees_its_ranges() {
    let rig = Rig::new(1);
    let mut a = rig.nexus("a", 0);
    let owner = HandlerRef { reactor: 0, slot: u32::MAX, gen: 0 };
    let vol = rig.volume.clone();
    let id = match rig.set.call(0, move |r| vol.locks.acquire(&mut r.core, 50, 4, owner, 0)).unwrap() {
        Acquired::Now(id) => id,
        x => panic!("{x:?}"),
    };
    // a's COMPARE AND WRITE waits for the range; then a's connection goes away.
    let mut buf = vec![0u8; 2 * BS];
    buf[BS] = 1;
    a.send(&caw(51, 1), Some(&buf));
    assert!(a.rx.recv_timeout(Duration::from_millis(100)).is_err());
    assert_eq!(rig.volume.locks.active(), 2);
    let h = a.h;
    rig.set.call(0, move |r| r.core.close(h)).unwrap();
    rig.set.call(0, |_| ()).unwrap();
    let vol = rig.volume.clone();
    rig.set.call(0, move |r| vol.locks.release(&mut r.core, vol.bdev(), id)).unwrap();
    rig.set.call(0, |_| ()).unwrap();
    // The grant may reach the connection before its removal (same reactor round); then the
    // dropped port releases the range by message. Either way it is released, promptly.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while rig.volume.locks.active() != 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(rig.volume.locks.active(), 0, "no range stays held by a closed connection");
    // And writes to the range go straight through for everyone else.
    let mut b = rig.nexus("b", 0);
    good(&b.run(&rw16(0x8a, 51, 1), Some(&vec![7; BS])));
}
