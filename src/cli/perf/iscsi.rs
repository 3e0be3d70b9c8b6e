//! `palisade perf --transport iscsi`: one iSCSI session per queue (with `--connections` N, N
//! connections per session, each a perf queue of its own), through the initiator in
//! `crate::iscsi::initiator`.

use std::time::Duration;

use super::{PerfQueue, PrType};
use crate::iscsi::initiator::{LoginOptions, Session};

struct IscsiQueue {
    s: Session,
    lun: u64,
    block_size: u32,
    num_blocks: u64,
    cdb: [u8; 16],
}

/// Connect `queues` sessions of `conns` connections of depth `qd` each to `target` LUN `lun`.
#[allow(clippy::too_many_arguments)]
pub fn connect(
    addr: &str,
    port: u16,
    target: &str,
    lun: u64,
    initiator_name: &str,
    chap: Option<(String, String)>,
    queues: usize,
    conns: usize,
    qd: usize,
    hdgst: bool,
    ddgst: bool,
) -> std::io::Result<Vec<Box<dyn PerfQueue>>> {
    let mut out: Vec<Box<dyn PerfQueue>> = Vec::new();
    for _ in 0..queues.max(1) {
        let mut o = LoginOptions::new(initiator_name, Some(target));
        o.chap = chap.clone();
        o.header_digest = hdgst;
        o.data_digest = ddgst;
        let sessions = if conns > 1 { Session::connect_mcs(addr, port, &o, qd.max(1), conns)? } else { vec![Session::connect(addr, port, &o, qd.max(1))?] };
        if sessions.len() < conns {
            return Err(std::io::Error::other(format!("the target allows {} connections per session", sessions.len())));
        }
        for mut s in sessions {
            // READ CAPACITY(16), retried once past a unit attention.
            let mut cap = None;
            for _ in 0..3 {
                let (c, d) = s.command(lun, &[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0], &[], 32, Duration::from_secs(10))?;
                if c.status == 0 && d.len() >= 12 {
                    cap = Some((u64::from_be_bytes(d[0..8].try_into().unwrap()) + 1, u32::from_be_bytes(d[8..12].try_into().unwrap())));
                    break;
                }
            }
            let (num_blocks, block_size) =
                cap.ok_or_else(|| std::io::Error::other(format!("READ CAPACITY(16) of LUN {lun} failed")))?;
            out.push(Box::new(IscsiQueue { s, lun, block_size, num_blocks, cdb: [0; 16] }));
        }
    }
    Ok(out)
}

impl PerfQueue for IscsiQueue {
    fn depth(&self) -> usize {
        self.s.depth()
    }
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn num_blocks(&self) -> u64 {
        self.num_blocks
    }
    fn submit(&mut self, tag: u32, write: bool, lba: u64, blocks: u32, data: &[u8]) -> std::io::Result<()> {
        self.cdb = [0; 16];
        self.cdb[0] = if write { 0x8a } else { 0x88 };
        self.cdb[2..10].copy_from_slice(&lba.to_be_bytes());
        self.cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
        let len = blocks as usize * self.block_size as usize;
        let cdb = self.cdb;
        if write {
            self.s.submit(tag, self.lun, &cdb, &data[..len.min(data.len())], 0)
        } else {
            self.s.submit(tag, self.lun, &cdb, &[], len)
        }
    }
    fn poll(&mut self, timeout: Duration, done: &mut dyn FnMut(u32, Result<(), String>, &[u8])) -> std::io::Result<usize> {
        self.s.poll(timeout, &mut |c, data| {
            let r = if c.status == 0 {
                Ok(())
            } else {
                Err(format!("SCSI status {:#04x} sense {}", c.status, crate::iscsi::login::hex(&c.sense)))
            };
            done(c.tag, r, data)
        })
    }
    fn pr_register(&mut self, key: u64, reserve: Option<PrType>) -> Result<(), String> {
        let mut run = |sa: u8, ty: u8, k: u64, sa_key: u64| -> Result<(), String> {
            let cdb = [0x5f, sa, ty, 0, 0, 0, 0, 0, 24, 0];
            let mut p = [0u8; 24];
            p[0..8].copy_from_slice(&k.to_be_bytes());
            p[8..16].copy_from_slice(&sa_key.to_be_bytes());
            // Retried past unit attentions.
            for _ in 0..4 {
                let (c, _) = self.s.command(self.lun, &cdb, &p, 0, Duration::from_secs(15)).map_err(|e| e.to_string())?;
                if c.status == 0 {
                    return Ok(());
                }
                if !(c.status == 2 && c.sense.get(2).map(|k| k & 0xf) == Some(6)) {
                    return Err(format!("PERSISTENT RESERVE OUT {sa:#04x}: SCSI status {:#04x}", c.status));
                }
            }
            Err("unit attentions do not stop".into())
        };
        run(0x06, 0, 0, key)?; // REGISTER AND IGNORE EXISTING KEY
        if let Some(t) = reserve {
            run(0x01, t.scsi(), key, 0)?; // RESERVE
        }
        Ok(())
    }
}
