//! NVMe/TCP queues for `palisade perf`, on the host library in `nvmf::host`.

use std::net::ToSocketAddrs;
use std::time::{Duration, Instant};

use super::{PerfArgs, PerfQueue, PrType};
use crate::nvme::tls_psk::{ConfiguredPsk, PskHash};
use crate::nvmf::auth::host::HostAuthConfig;
use crate::nvmf::auth::{DhGroup, Digest, Secret};
use crate::nvmf::host::{rw_sqe, Controller, HostOpts, HostTls, Queue};

pub struct TcpQueue {
    q: Queue,
    nsid: u32,
    bs: u32,
    nblocks: u64,
    depth: usize,
}

impl PerfQueue for TcpQueue {
    fn depth(&self) -> usize {
        self.depth
    }
    fn block_size(&self) -> u32 {
        self.bs
    }
    fn num_blocks(&self) -> u64 {
        self.nblocks
    }
    fn submit(&mut self, tag: u32, write: bool, lba: u64, blocks: u32, data: &[u8]) -> std::io::Result<()> {
        let sqe = rw_sqe(write, self.nsid, lba, blocks);
        let len = blocks as usize * self.bs as usize;
        self.q
            .submit(tag as u16, sqe, if write { Some(&data[..len]) } else { None }, if write { 0 } else { len })
            .map_err(std::io::Error::other)
    }
    fn poll(&mut self, timeout: Duration, done: &mut dyn FnMut(u32, Result<(), String>, &[u8])) -> std::io::Result<usize> {
        self.q
            .poll(timeout, &mut |cid, cqe, data| {
                let r = if cqe.status.is_ok() { Ok(()) } else { Err(format!("NVMe status {}", cqe.status)) };
                done(cid as u32, r, data)
            })
            .map_err(std::io::Error::other)
    }
    fn pr_register(&mut self, key: u64, reserve: Option<PrType>) -> Result<(), String> {
        let cmd = |q: &mut Queue, opc: u8, cdw10: u32, a: u64, b: u64| -> Result<(), String> {
            let mut s = crate::nvme::spec::Sqe::default();
            s.set_opcode(opc).set_nsid(self.nsid).set_cdw(10, cdw10);
            let mut d = a.to_le_bytes().to_vec();
            d.extend_from_slice(&b.to_le_bytes());
            let (cqe, _) = q.sync(s, Some(&d), 0).map_err(|e| e.to_string())?;
            if cqe.status.is_ok() {
                Ok(())
            } else {
                Err(format!("reservation command {opc:#04x}: NVMe status {}", cqe.status))
            }
        };
        // Register (RREGA 000b) with IEKEY.
        cmd(&mut self.q, 0x0d, 1 << 3, 0, key)?;
        if let Some(t) = reserve {
            cmd(&mut self.q, 0x11, (t.nvme() as u32) << 8, key, 0)?;
        }
        Ok(())
    }
}

/// The TLS PSK for `--tls`: `--psk` is an interchange string or a file holding one.
fn host_tls(a: &PerfArgs, hostnqn: &str, subnqn: &str) -> Result<HostTls, String> {
    let p = a.psk.as_deref().ok_or("--tls needs --psk")?;
    let text = if p.starts_with("NVMeTLSkey-1:") { p.to_string() } else { std::fs::read_to_string(p).map_err(|e| format!("--psk {p}: {e}"))? };
    let psk = ConfiguredPsk::parse(&text).map_err(|e| format!("--psk: {e}"))?;
    let hash = a.tls_cipher.as_deref().map(|c| if c == "aes256" { PskHash::Sha384 } else { PskHash::Sha256 });
    HostTls::from_configured(&psk, hostnqn, subnqn, a.psk_identity_version, hash)
}

/// The admin queue stays connected for the run (keep-alives go through it).
pub struct Session {
    pub ctrlr: Controller,
    pub nsid: u32,
    /// `--reauth-every`: interval and when the admin queue last authenticated.
    pub reauth: Option<(Duration, Instant)>,
}

impl Session {
    /// Re-authenticate the admin queue when `--reauth-every` says it is time (I/O keeps running
    /// on the I/O queues meanwhile).
    pub fn maybe_reauth(&mut self) -> Result<(), String> {
        let Some((every, last)) = self.reauth else { return Ok(()) };
        if last.elapsed() < every {
            return Ok(());
        }
        self.ctrlr.reauthenticate().map_err(|e| format!("re-authentication: {e}"))?;
        match &self.ctrlr.opts.tls {
            Some(t) if t.generated => eprintln!("re-authenticated (DH-HMAC-CHAP); TLS PSK replaced: {}", t.identity),
            _ => eprintln!("re-authenticated (DH-HMAC-CHAP)"),
        }
        self.reauth = Some((every, Instant::now()));
        Ok(())
    }

    pub fn keep_alive(&mut self) {
        let _ = self.ctrlr.admin.keep_alive();
    }
}

/// Connect, identify, and open `args.queues` I/O queues of depth `args.qd`.
pub fn open(a: &PerfArgs) -> Result<(Session, Vec<Box<dyn PerfQueue>>), String> {
    let nqn = a.nqn.clone().ok_or("--nqn is required for --transport tcp")?;
    let port = a.port.unwrap_or(4420);
    let addr = (a.addr.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("{}:{port}: {e}", a.addr))?
        .next()
        .ok_or_else(|| format!("{}:{port}: no address", a.addr))?;
    let mut o = HostOpts::new(addr, &nqn);
    if let Some(h) = &a.hostnqn {
        o.hostnqn = h.clone();
    }
    if a.tls {
        o.tls = Some(host_tls(a, &o.hostnqn, &nqn)?);
    }
    o.hdgst = a.hdgst;
    o.ddgst = a.ddgst;
    o.kato_ms = 30_000;
    o.dhchap = dhchap_config(a)?;
    let mut c = Controller::connect(&o).map_err(|e| format!("connect to {addr} {nqn}: {e}"))?;
    if let Some(t) = c.opts.tls.as_ref().filter(|t| t.generated) {
        eprintln!("secure channel concatenation: TLS on generated PSK {}", t.identity);
    }
    let nsid = match a.nsid {
        Some(n) => n,
        None => *c.namespaces().map_err(|e| format!("identify: {e}"))?.first().ok_or("the subsystem has no namespace")?,
    };
    let ns = c.namespace(nsid).map_err(|e| format!("identify namespace {nsid}: {e}"))?;
    if ns.nsze == 0 || ns.block_size == 0 {
        return Err(format!("namespace {nsid} is not active"));
    }
    let granted = c.set_num_queues(a.queues).map_err(|e| format!("set number of queues: {e}"))?;
    if granted < a.queues {
        return Err(format!("the controller grants {granted} I/O queues, {} asked", a.queues));
    }
    let mqes = c.max_entries().map_err(|e| format!("CAP: {e}"))?;
    let entries = (a.qd as u32 + 1).min(mqes).min(65535) as u16;
    let depth = (entries as usize - 1).max(1);
    let mut qs: Vec<Box<dyn PerfQueue>> = Vec::new();
    for qid in 1..=a.queues {
        let q = c.io_queue(qid, entries).map_err(|e| format!("connect I/O queue {qid}: {e}"))?;
        qs.push(Box::new(TcpQueue { q, nsid, bs: ns.block_size, nblocks: ns.nsze, depth }));
    }
    Ok((Session { ctrlr: c, nsid, reauth: a.reauth_every.map(|d| (d, Instant::now())) }, qs))
}

/// A DHHC-1 secret given inline or as a file holding it.
fn load_secret(v: &str) -> Result<Secret, String> {
    let text = if v.trim_start().starts_with("DHHC-1:") { v.to_string() } else { std::fs::read_to_string(v).map_err(|e| format!("{v}: {e}"))? };
    // Never echo an inline secret into an error message.
    let what = if text == v { "--dhchap-secret value" } else { v };
    Secret::parse(&text).map_err(|e| format!("{what}: {e}"))
}

/// --dhchap-* flags → what the host offers and proves with (None: no authentication).
fn dhchap_config(a: &PerfArgs) -> Result<Option<HostAuthConfig>, String> {
    let Some(s) = &a.dhchap_secret else { return Ok(None) };
    let mut cfg = HostAuthConfig::new(load_secret(s)?, a.dhchap_ctrl_secret.as_deref().map(load_secret).transpose()?);
    if !a.dhchap_digest.is_empty() {
        cfg.digests = a.dhchap_digest.iter().map(|n| Digest::from_name(n).ok_or_else(|| format!("unknown digest {n}"))).collect::<Result<_, _>>()?;
    }
    if !a.dhchap_dhgroup.is_empty() {
        cfg.groups = a.dhchap_dhgroup.iter().map(|n| DhGroup::from_name(n).ok_or_else(|| format!("unknown DH group {n}"))).collect::<Result<_, _>>()?;
    }
    cfg.concat = a.concat;
    Ok(Some(cfg))
}
