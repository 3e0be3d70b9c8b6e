//! NVMe/TCP secure channel (NVMe/TCP Transport Specification §3.6, TP 8011): which PSK a TLS
//! client's identity names, and what a listener refuses. The TLS itself is
//! [`crate::reactor::tls`]; the key formats and derivations are [`crate::nvme::tls_psk`].
//!
//! A PSK identity `NVMe<v>R0<h> <hostnqn> <subnqn>[ <digest>]` is accepted when the subsystem
//! exists, listens on this address and allows the host, and the host entry names a PSK in the
//! keyring (`nvmf_subsystem_add_host --psk NAME`) whose hash fits `<h>`; version 0 and version 1
//! identities are both accepted, as Linux nvmet does. `NVMe1G0<h> …` identities (secure channel
//! concatenation) are looked up in `Target::generated_psks`, which holds their TLS PSKs. Anything
//! else gets no PSK, and with no certificate to fall back on the handshake fails.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::nvme::tls_psk::{ConfiguredPsk, PskHash, PskIdentity, PskKind};
use crate::nvmf::{ListenAddr, Target};
use crate::reactor::tls::{PskLookup, TlsPsk, TlsSuite};

/// The first byte of a TLS record carrying a handshake message (ClientHello).
pub const TLS_HANDSHAKE: u8 = 0x16;

pub fn suite(h: PskHash) -> TlsSuite {
    match h {
        PskHash::Sha256 => TlsSuite::Aes128GcmSha256,
        PskHash::Sha384 => TlsSuite::Aes256GcmSha384,
    }
}

/// The target's PSKs as one listener sees them.
pub struct TargetPsks {
    pub t: Arc<Target>,
    pub listen: Arc<ListenAddr>,
}

impl TargetPsks {
    fn input_psk(&self, id: &PskIdentity, raw: &str) -> Option<Vec<u8>> {
        let sub = self.t.subsystem(&id.subnqn)?;
        if !sub.listens_on(&self.listen) || !sub.host_allowed(&id.hostnqn) {
            return None;
        }
        match id.kind {
            PskKind::Retained => {
                let name = sub.host_entry(&id.hostnqn)?.psk?;
                let key = self.t.keyring.get(&name)?;
                let c = ConfiguredPsk::parse(&key.secret).map_err(|e| tracing::warn!("PSK key {name}: {e}")).ok()?;
                if c.cipher_hash()? != id.hash {
                    return None;
                }
                let retained = c.retained(&id.hostnqn).ok()?;
                id.tls_psk(&retained).ok()
            }
            PskKind::Generated => self.t.generated_psks.lock().unwrap().get(raw).filter(|k| k.len() == id.hash.len()).cloned(),
        }
    }
}

impl PskLookup for TargetPsks {
    fn find(&self, identity: &[u8]) -> Option<TlsPsk> {
        let id = PskIdentity::parse(identity).ok()?;
        let raw = std::str::from_utf8(identity).ok()?;
        let key = self.input_psk(&id, raw);
        if key.is_none() {
            refused(&format!("TLS PSK identity {raw:?} matches no allowed host PSK"));
        }
        Some(TlsPsk { key: key?, suite: suite(id.hash) })
    }
}

/// Log a refused connection at most once a second (a stranger may try many): the first of each
/// second is logged with how many were left unlogged before it.
pub fn refused(what: &str) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    static QUIET: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let last = LAST.load(Ordering::Relaxed);
    if now != last && LAST.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
        let n = QUIET.swap(0, Ordering::Relaxed);
        tracing::warn!(suppressed = n, "NVMe/TCP secure channel: {what}");
    } else {
        QUIET.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvme::tls_psk::PskIdentity;
    use crate::nvmf::{HostEntry, SubType, Subsystem, SubsystemParams};
    use crate::reactor::{PollMode, ReactorSet};

    const SUB: &str = "nqn.2016-06.io.spdk:g1";
    const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:0000000a-0000-0000-0000-000000000001";

    fn addr(port: &str) -> ListenAddr {
        ListenAddr { trtype: "TCP".into(), adrfam: "IPv4".into(), traddr: "127.0.0.1".into(), trsvcid: port.into() }
    }

    /// Generated PSKs (secure channel concatenation) are found by their identity, for allowed
    /// hosts on subsystems listening here only; retained identities without a host PSK are not.
    #[test]
    fn generated_psks_are_looked_up_by_identity() {
        let set = ReactorSet::start(0x1, PollMode::Adaptive, |_| {}).unwrap();
        let vols = Arc::new(crate::volume::VolumeRegistry::new(Arc::new(crate::bdev::BdevRegistry::default())));
        let t = Target::new(set.clone(), vols);
        let params = SubsystemParams { serial_number: "G1".into(), model_number: "M".into(), max_namespaces: 8, min_cntlid: 1, max_cntlid: 0xffef, ana_reporting: false };
        let s = t.create_subsystem(Subsystem::new(SUB.into(), SubType::Nvme, params, false)).unwrap();
        s.listeners.lock().unwrap().push(addr("4420"));
        s.hosts.lock().unwrap().push(HostEntry { nqn: HOST.into(), psk: None, dhchap_key: None, dhchap_ctrlr_key: None });
        let gen = vec![9u8; 48];
        let id = PskIdentity::build(1, PskKind::Generated, PskHash::Sha384, &gen, HOST, SUB).unwrap().encode();
        assert!(id.starts_with("NVMe1G02 "));
        let tls = vec![7u8; 48];
        t.generated_psks.lock().unwrap().insert(id.clone(), tls.clone());
        let here = TargetPsks { t: t.clone(), listen: Arc::new(addr("4420")) };
        let found = here.find(id.as_bytes()).expect("generated PSK found");
        assert_eq!((found.key, found.suite), (tls, TlsSuite::Aes256GcmSha384));
        // Another address the subsystem does not listen on; a retained identity (the host has no PSK).
        let elsewhere = TargetPsks { t: t.clone(), listen: Arc::new(addr("4421")) };
        assert!(elsewhere.find(id.as_bytes()).is_none());
        let retained = PskIdentity::build(0, PskKind::Retained, PskHash::Sha384, &gen, HOST, SUB).unwrap().encode();
        assert!(here.find(retained.as_bytes()).is_none());
        // The host removed from the subsystem: its generated PSK no longer opens it.
        s.hosts.lock().unwrap().clear();
        assert!(here.find(id.as_bytes()).is_none());
        set.stop();
    }
}
