//! The discovery log page (NVMe-oF 5.3): every subsystem the host may connect to, once per listen
//! address, plus the discovery subsystem itself on each listen address.

use crate::nvme::spec::{self, DiscoveryEntry};
use crate::nvmf::{SubType, Target};

/// Build the log for `hostnqn` into `out`.
pub fn log_page(t: &Target, hostnqn: &str, out: &mut Vec<u8>) {
    let subs = t.subsystems();
    let mut rows: Vec<(u8, String, crate::nvmf::ListenAddr, bool)> = Vec::new();
    for s in subs.iter().filter(|s| s.subtype == SubType::Nvme && s.host_allowed(hostnqn)) {
        for l in s.listeners.lock().unwrap().iter() {
            rows.push((2, s.nqn.clone(), l.clone(), s.listener_secure(l)));
        }
    }
    for l in t.listen_addrs() {
        let secure = t.plaintext_refused(&l);
        rows.push((3, spec::DISCOVERY_NQN.to_string(), l, secure));
    }
    let ports: Vec<_> = t.listen_addrs();
    let entries: Vec<DiscoveryEntry> = rows
        .iter()
        .map(|(st, nqn, l, secure)| DiscoveryEntry {
            subtype: *st,
            portid: ports.iter().position(|p| p.same(l)).map(|i| i as u16 + 1).unwrap_or(0),
            trsvcid: &l.trsvcid,
            subnqn: nqn,
            traddr: &l.traddr,
            adrfam: if l.adrfam.eq_ignore_ascii_case("ipv6") { 2 } else { 1 },
            secure: *secure,
        })
        .collect();
    spec::discovery_log(t.genctr.load(std::sync::atomic::Ordering::Acquire), &entries, out);
}
