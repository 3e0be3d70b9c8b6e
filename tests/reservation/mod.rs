//! Helpers shared by the reservation test files.
#![allow(dead_code)]

use std::sync::{mpsc, Arc};
use std::time::Duration;

use palisade::bdev::{malloc::MallocBdev, BdevRegistry};
use palisade::reservation::{Action, Applied, NexusRef, PrError, Reservations};
use palisade::volume::pr_gate::nexus_ref;
use palisade::volume::{Initiator, Volume, VolumeRegistry};

pub fn iscsi(name: &str, isid: &str, tpgt: u16) -> Initiator {
    Initiator::Iscsi {
        initiator_port: format!("{name},i,0x{isid}"),
        target_port: format!("iqn.2026-11.io.palisade:t1,t,0x{tpgt:04x}"),
        rel_port_id: tpgt,
    }
}

pub fn nvme(id: u8, nqn: &str) -> Initiator {
    let mut host_id = [0u8; 16];
    host_id[0] = 0x5a;
    host_id[15] = id;
    Initiator::Nvme { host_id, host_nqn: nqn.to_string() }
}

/// A volume on a fresh RAM bdev, optionally with a reservation state directory.
pub fn volume(state_dir: Option<&std::path::Path>, uuid: Option<uuid::Uuid>) -> (Arc<VolumeRegistry>, Arc<Volume>) {
    let bdevs = Arc::new(BdevRegistry::default());
    bdevs.add(Arc::new(MallocBdev::new("Malloc0", 2048, 512, uuid).unwrap())).unwrap();
    let reg = Arc::new(VolumeRegistry::new(bdevs));
    reg.set_state_dir(state_dir.map(|p| p.to_path_buf()));
    let v = reg.open("Malloc0", "test").unwrap();
    (reg, v)
}

/// Run an action to completion (waiting for a deferred one).
pub fn exec(pr: &Arc<Reservations>, who: NexusRef, a: Action) -> Result<Applied, PrError> {
    let (tx, rx) = mpsc::channel();
    match pr.execute(who, a, Box::new(move |r| {
        let _ = tx.send(r);
    })) {
        Some(r) => r,
        None => rx.recv_timeout(Duration::from_secs(10)).expect("deferred action completes"),
    }
}

pub fn run(v: &Volume, who: &Initiator, a: Action) -> Result<Applied, PrError> {
    exec(v.reservations(), nexus_ref(who), a)
}

/// PR OUT CDB (10 bytes) and its 24-byte parameter list.
pub fn pr_out(sa: u8, scope_type: u8, key: u64, sa_key: u64, flags: u8) -> ([u8; 10], Vec<u8>) {
    let mut cdb = [0u8; 10];
    cdb[0] = 0x5f;
    cdb[1] = sa;
    cdb[2] = scope_type;
    cdb[5..9].copy_from_slice(&24u32.to_be_bytes());
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p[20] = flags;
    (cdb, p)
}

/// Decode and run a SCSI PR OUT.
pub fn scsi(v: &Volume, who: &Initiator, sa: u8, scope_type: u8, key: u64, sa_key: u64, flags: u8) -> Result<(), palisade::scsi::pr::Failure> {
    let (cdb, p) = pr_out(sa, scope_type, key, sa_key, flags);
    let a = palisade::scsi::pr::decode_pr_out(&cdb, &p)?;
    run(v, who, a).map(|_| ()).map_err(|e| palisade::scsi::pr::failure(&e))
}

/// NVMe reservation data: two little-endian keys.
pub fn keys_le(a: u64, b: u64) -> Vec<u8> {
    let mut d = a.to_le_bytes().to_vec();
    d.extend_from_slice(&b.to_le_bytes());
    d
}

/// Run an NVMe reservation command to completion.
pub fn nvme_cmd(v: &Volume, who: &Initiator, opc: u8, cdw10: u32, cdw11: u32, data: &[u8]) -> palisade::nvme::reservation::Completion {
    let (tx, rx) = mpsc::channel();
    match palisade::nvme::reservation::execute(v, who, opc, cdw10, cdw11, data, 4096, move |c| {
        let _ = tx.send(c);
    }) {
        Some(c) => c,
        None => rx.recv_timeout(Duration::from_secs(10)).expect("deferred command completes"),
    }
}

pub mod rig {
    //! A reactor with test handlers: a SCSI port (routing PR opcodes to `scsi::pr::execute`, as
    //! the SCSI core will) and a raw volume I/O submitter for NVMe hosts.
    use std::any::Any;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use palisade::bdev::{IoOp, IoRequest};
    use palisade::reactor::{Core, Handler, HandlerRef, IoBuf, IoEvent, ReactorSet};
    use palisade::scsi::{pr, DataDir, Lun, LunMap, ScsiCommand, ScsiPort, ScsiResponse, TaskAttr};
    use palisade::volume::{Denied, Initiator, Volume};

    type PortJob = Box<dyn FnOnce(&mut ScsiPort, &mut Core, HandlerRef) + Send>;

    struct PortH {
        port: ScsiPort,
        out: Arc<Mutex<Vec<ScsiResponse>>>,
    }
    impl PortH {
        fn drain(&mut self) {
            while let Some(r) = self.port.next_done() {
                self.out.lock().unwrap().push(r);
            }
        }
    }
    impl Handler for PortH {
        fn on_ready(&mut self, _: &mut Core, _: HandlerRef, _: &mio::event::Event) {}
        fn on_message(&mut self, core: &mut Core, me: HandlerRef, msg: Box<dyn Any + Send>) {
            match pr::take_deferred(&mut self.port, msg) {
                Ok(()) => {}
                Err(m) => {
                    if let Ok(job) = m.downcast::<PortJob>() {
                        (job)(&mut self.port, core, me);
                    }
                }
            }
            self.drain();
        }
        fn on_io_complete(&mut self, core: &mut Core, me: HandlerRef, ev: IoEvent) {
            self.port.on_io_complete(core, me, ev);
            self.drain();
        }
    }

    /// A SCSI I_T nexus on a reactor.
    pub struct Port {
        set: ReactorSet,
        h: HandlerRef,
        lun: Arc<Lun>,
        out: Arc<Mutex<Vec<ScsiResponse>>>,
        next_tag: u32,
    }

    impl Port {
        pub fn new(set: &ReactorSet, reactor: u32, who: Initiator, volume: Arc<Volume>) -> Port {
            let lun = Arc::new(Lun::new(0, volume));
            let luns = Arc::new(LunMap { luns: vec![lun.clone()] });
            let out = Arc::new(Mutex::new(Vec::new()));
            let o2 = out.clone();
            let h = set
                .call(reactor, move |r| {
                    r.add_handler(move |_, _| Some(Box::new(PortH { port: ScsiPort::new(who, luns), out: o2 }) as Box<dyn Handler>))
                })
                .unwrap()
                .unwrap();
            let mut p = Port { set: set.clone(), h, lun, out, next_tag: 1 };
            // A new nexus first sees the POWER ON unit attention (SAM-5 5.14): take it with TEST
            // UNIT READY so each step of a test sees only its own outcome.
            let tur = p.cmd(&[0u8; 6], None, 0);
            assert!(tur.status == 0 || tur.sense.is_some_and(|s| s.key == 0x6), "{tur:?}");
            p
        }

        /// Run one command and wait for its response.
        pub fn cmd(&mut self, cdb: &[u8], data_out: Option<&[u8]>, expected_len: u32) -> ScsiResponse {
            let tag = self.next_tag;
            self.next_tag += 1;
            let mut c = [0u8; 32];
            c[..cdb.len()].copy_from_slice(cdb);
            let cmd = ScsiCommand {
                cdb: c,
                cdb_len: cdb.len() as u8,
                lun: 0,
                task_tag: tag,
                expected_len,
                dir: if data_out.is_some() { DataDir::Write } else { DataDir::Read },
                data_out: data_out.map(IoBuf::from_slice),
                attr: TaskAttr::Simple,
            };
            let lun = self.lun.clone();
            let job: PortJob = Box::new(move |port, core, me| match cmd.cdb[0] {
                0x5e | 0x5f | 0x16 | 0x17 | 0x56 | 0x57 => pr::execute(port, core, me, &lun, cmd),
                _ => port.submit(core, me, cmd),
            });
            let h = self.h;
            assert!(self.set.send(h.reactor, move |r| {
                r.send_to_handler(h, Box::new(job));
            }));
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                {
                    let mut out = self.out.lock().unwrap();
                    if let Some(i) = out.iter().position(|r| r.task_tag == tag) {
                        return out.remove(i);
                    }
                }
                assert!(Instant::now() < deadline, "no response to tag {tag}");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    struct IoH {
        volume: Arc<Volume>,
        who: Initiator,
        out: Arc<Mutex<Vec<(u64, Result<i32, Denied>)>>>,
    }
    type IoJob = (IoOp, u64, u64);
    impl Handler for IoH {
        fn on_ready(&mut self, _: &mut Core, _: HandlerRef, _: &mio::event::Event) {}
        fn on_message(&mut self, core: &mut Core, me: HandlerRef, msg: Box<dyn Any + Send>) {
            let Ok(job) = msg.downcast::<IoJob>() else { return };
            let (op, lba, tag) = *job;
            let bs = self.volume.block_size() as usize;
            let req = IoRequest { op, offset_blocks: lba, num_blocks: 1, buf: Some(IoBuf::new(bs)), fua: false, owner: me, tag };
            if let Err((_, d)) = self.volume.submit(core, &self.who, req) {
                self.out.lock().unwrap().push((tag, Err(d)));
            }
        }
        fn on_io_complete(&mut self, _: &mut Core, _: HandlerRef, ev: IoEvent) {
            self.out.lock().unwrap().push((ev.tag, Ok(ev.status)));
        }
    }

    /// Raw block I/O of one host through `Volume::submit` (what the NVMe front-end will do).
    pub struct Host {
        set: ReactorSet,
        h: HandlerRef,
        out: Arc<Mutex<Vec<(u64, Result<i32, Denied>)>>>,
        next: u64,
    }

    impl Host {
        pub fn new(set: &ReactorSet, reactor: u32, who: Initiator, volume: Arc<Volume>) -> Host {
            let out = Arc::new(Mutex::new(Vec::new()));
            let o2 = out.clone();
            let h = set
                .call(reactor, move |r| r.add_handler(move |_, _| Some(Box::new(IoH { volume, who, out: o2 }) as Box<dyn Handler>)))
                .unwrap()
                .unwrap();
            Host { set: set.clone(), h, out, next: 1 }
        }
        pub fn io(&mut self, op: IoOp, lba: u64) -> Result<i32, Denied> {
            let tag = self.next;
            self.next += 1;
            let h = self.h;
            self.set.send(h.reactor, move |r| {
                r.send_to_handler(h, Box::new((op, lba, tag) as IoJob));
            });
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                {
                    let mut out = self.out.lock().unwrap();
                    if let Some(i) = out.iter().position(|r| r.0 == tag) {
                        return out.remove(i).1;
                    }
                }
                assert!(Instant::now() < deadline, "no completion for I/O {tag}");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}
