//! The host's side of a DH-HMAC-CHAP transaction (Base 2.0 §8.13.5; as Linux
//! `drivers/nvme/host/auth.c` runs it), transport-agnostic: it makes the payloads the host sends
//! with AUTH_Send and checks those AUTH_Receive returns.

use super::chap::{ctrl_response, host_response, Transcript};
use super::crypto::{ct_eq, random, DhGroup, DhKey, Digest};
use super::secret::Secret;
use crate::nvme::auth::{msg, reason, AuthWireError, Challenge, Failure, Message, Negotiate, Reply};

/// What the host offers and proves with.
#[derive(Clone, Debug)]
pub struct HostAuthConfig {
    pub secret: Secret,
    /// Present: ask the controller to authenticate itself (bidirectional) and check it.
    pub ctrl_secret: Option<Secret>,
    pub digests: Vec<Digest>,
    pub groups: Vec<DhGroup>,
    /// Secure channel concatenation on the admin queue: a TLS PSK generated from the exchange
    /// ([`HostTransaction::generated_psk`]) for the TLS connections that follow.
    pub concat: bool,
}

impl HostAuthConfig {
    pub fn new(secret: Secret, ctrl_secret: Option<Secret>) -> HostAuthConfig {
        HostAuthConfig { secret, ctrl_secret, digests: Digest::ALL.to_vec(), groups: DhGroup::ALL.to_vec(), concat: false }
    }
    /// SC_C for a transaction on queue `qid`, as Linux asks it: concatenation on the admin queue
    /// only, a new PSK in plaintext, a replacement over TLS on a generated PSK.
    pub fn sc_c(&self, qid: u16, tls_generated: bool) -> u8 {
        use crate::nvme::auth::sc_c;
        match (self.concat && qid == 0, tls_generated) {
            (false, _) => sc_c::NOSC,
            (true, false) => sc_c::NEWTLSPSK,
            (true, true) => sc_c::REPLACETLSPSK,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostAuthError {
    #[error("malformed message: {0}")]
    Wire(#[from] AuthWireError),
    #[error("controller refused authentication (AUTH_Failure1 reason {0:#x}, explanation {1:#x})")]
    Refused(u8, u8),
    #[error("controller chose what we did not offer or broke the protocol: {0}")]
    Protocol(&'static str),
    #[error("controller failed to authenticate itself (bidirectional response mismatch)")]
    CtrlMismatch,
    #[error("{0}")]
    Crypto(#[from] super::AuthError),
}

/// One transaction in flight.
pub struct HostTransaction<'a> {
    cfg: &'a HostAuthConfig,
    hostnqn: &'a str,
    subnqn: &'a str,
    t_id: u16,
    sc_c: u8,
    digest: Digest,
    skey: Option<Vec<u8>>,
    c2: Option<(Vec<u8>, u32)>,
    c1: Vec<u8>,
    sent_c2: Vec<u8>,
    /// Chosen (digest, group), known after the challenge.
    pub chosen: Option<(Digest, DhGroup)>,
}

impl<'a> HostTransaction<'a> {
    /// `sc_c`: [`HostAuthConfig::sc_c`] (NOSC unless concatenating).
    pub fn new(cfg: &'a HostAuthConfig, hostnqn: &'a str, subnqn: &'a str, t_id: u16, sc_c: u8) -> HostTransaction<'a> {
        HostTransaction { cfg, hostnqn, subnqn, t_id, sc_c, digest: Digest::Sha256, skey: None, c2: None, c1: Vec::new(), sent_c2: Vec::new(), chosen: None }
    }

    /// A generated PSK needs a DH session key and a hash naming a TLS suite: with SC_C set, the
    /// NULL group and SHA-512 are not offered.
    fn offered(&self) -> (Vec<Digest>, Vec<DhGroup>) {
        let sc = self.sc_c != crate::nvme::auth::sc_c::NOSC;
        let d = self.cfg.digests.iter().copied().filter(|d| !(sc && *d == Digest::Sha512)).collect();
        let g = self.cfg.groups.iter().copied().filter(|g| !(sc && *g == DhGroup::Null)).collect();
        (d, g)
    }

    pub fn negotiate(&self) -> Vec<u8> {
        let (d, g) = self.offered();
        Negotiate { t_id: self.t_id, sc_c: self.sc_c, hashes: d.iter().map(|d| d.id()).collect(), dhgroups: g.iter().map(|g| g.id()).collect() }.encode()
    }

    fn challenge(b: &[u8]) -> Result<Challenge, HostAuthError> {
        match Message::decode(b)? {
            Message::Challenge(c) => Ok(c),
            Message::Failure(f) => Err(HostAuthError::Refused(f.reason, f.explanation)),
            _ => Err(HostAuthError::Protocol("expected a challenge")),
        }
    }

    /// The Reply to the controller's Challenge (or the controller's Failure1 as an error).
    pub fn reply(&mut self, challenge: &[u8]) -> Result<Vec<u8>, HostAuthError> {
        let c = Self::challenge(challenge)?;
        let d = Digest::from_id(c.hash_id).map_err(|_| HostAuthError::Protocol("unknown hash"))?;
        let g = DhGroup::from_id(c.dhgid).map_err(|_| HostAuthError::Protocol("unknown DH group"))?;
        let (ds, gs) = self.offered();
        if c.t_id != self.t_id || !ds.contains(&d) || !gs.contains(&g) || c.c1.len() != d.len() {
            return Err(HostAuthError::Protocol("challenge does not match the negotiation"));
        }
        self.digest = d;
        self.chosen = Some((d, g));
        let mut dhv = Vec::new();
        if let Some(k) = DhKey::generate(g)? {
            self.skey = Some(k.shared(&c.dhv)?);
            dhv = k.public.clone();
        } else if !c.dhv.is_empty() {
            return Err(HostAuthError::Protocol("DH value with the NULL group"));
        }
        let t = Transcript { digest: d, skey: self.skey.as_deref(), challenge: &c.c1, seqnum: c.seqnum, t_id: self.t_id, sc_c: self.sc_c };
        self.c1 = c.c1.clone();
        let key = self.cfg.secret.transformed(self.hostnqn)?;
        let r1 = host_response(&t, &key, self.hostnqn, self.subnqn)?;
        let (cvalid, c2, s2) = if self.cfg.ctrl_secret.is_some() {
            let c2 = random(d.len());
            let s2 = loop {
                let s = u32::from_le_bytes(random(4).try_into().unwrap());
                if s != 0 {
                    break s;
                }
            };
            self.c2 = Some((c2.clone(), s2));
            (true, c2, s2)
        } else {
            (false, vec![0; d.len()], 0)
        };
        self.sent_c2 = c2.clone();
        Ok(Reply { t_id: self.t_id, cvalid, seqnum: s2, r1, c2, dhv }.encode())
    }

    /// Check Success1. Ok(Some(success2)) when bidirectional (send it), Ok(None) when done.
    /// On a controller-response mismatch the error is returned and the caller sends
    /// [`HostTransaction::failure2`].
    pub fn success1(&self, b: &[u8]) -> Result<Option<Vec<u8>>, HostAuthError> {
        let s = match Message::decode(b)? {
            Message::Success1(s) => s,
            Message::Failure(f) => return Err(HostAuthError::Refused(f.reason, f.explanation)),
            _ => return Err(HostAuthError::Protocol("expected success1")),
        };
        if s.t_id != self.t_id {
            return Err(HostAuthError::Protocol("success1 for another transaction"));
        }
        let Some((c2, s2)) = &self.c2 else { return Ok(None) };
        if !s.rvalid {
            return Err(HostAuthError::CtrlMismatch);
        }
        let t = Transcript { digest: self.digest, skey: self.skey.as_deref(), challenge: c2, seqnum: *s2, t_id: self.t_id, sc_c: self.sc_c };
        let key = self.cfg.ctrl_secret.as_ref().unwrap().transformed(self.subnqn)?;
        let want = ctrl_response(&t, &key, self.hostnqn, self.subnqn)?;
        if !ct_eq(&want, &s.r2) {
            return Err(HostAuthError::CtrlMismatch);
        }
        Ok(Some(crate::nvme::auth::Success2 { t_id: self.t_id }.encode()))
    }

    /// After a successful SC_C transaction: (PSK identity, TLS PSK) as the controller derives
    /// them. None without a DH session key (the NULL group cannot generate one).
    pub fn generated_psk(&self) -> Option<Result<(String, Vec<u8>), super::AuthError>> {
        let skey = self.skey.as_ref()?;
        Some(super::psk::tls_psk_for(self.digest, skey, &self.c1, &self.sent_c2, self.hostnqn, self.subnqn))
    }

    pub fn failure2(&self) -> Vec<u8> {
        Failure { id: msg::FAILURE2, t_id: self.t_id, reason: reason::FAILED, explanation: reason::EXP_FAILED }.encode()
    }
}

#[cfg(test)]
mod tests {
    use super::super::target::{Concat, SendResult, Step, TargetAuth, TargetKeys};
    use super::*;
    use std::time::Instant;

    fn keys(host: &Secret, ctrl: Option<&Secret>) -> TargetKeys {
        TargetKeys { host: host.clone(), ctrl: ctrl.cloned(), digests: Digest::ALL.to_vec(), groups: DhGroup::ALL.to_vec(), concat: Concat::Off }
    }

    /// Run one transaction between a host and a target; Ok(()) when both agree.
    fn run(cfg: &HostAuthConfig, tk: TargetKeys, t_id: u16) -> Result<TargetAuth, HostAuthError> {
        let now = Instant::now();
        let mut t = TargetAuth::new(tk, "nqn.h", "nqn.s", now);
        let mut h = HostTransaction::new(cfg, "nqn.h", "nqn.s", t_id, 0);
        assert_eq!(t.on_send(&h.negotiate(), now), SendResult::Ok);
        let reply = h.reply(&t.on_receive(now))?;
        assert_eq!(t.on_send(&reply, now), SendResult::Ok);
        let s1 = t.on_receive(now);
        match h.success1(&s1) {
            Ok(Some(s2)) => assert_eq!(t.on_send(&s2, now), SendResult::Ok),
            Ok(None) => {}
            Err(e) => return Err(e),
        }
        assert!(t.authenticated());
        Ok(t)
    }

    #[test]
    fn every_digest_and_group_agrees() {
        let hk = Secret { transform: 1, key: random(32) };
        let ck = Secret { transform: 0, key: random(48) };
        for d in Digest::ALL {
            for g in DhGroup::ALL {
                // The 6144/8192 groups are slow in debug builds: one digest suffices for them.
                if g > DhGroup::Ffdhe4096 && d != Digest::Sha512 {
                    continue;
                }
                let mut cfg = HostAuthConfig::new(hk.clone(), Some(ck.clone()));
                cfg.digests = vec![d];
                cfg.groups = vec![g];
                run(&cfg, keys(&hk, Some(&ck)), 3).unwrap_or_else(|e| panic!("{d:?} {g:?}: {e}"));
            }
        }
    }

    #[test]
    fn wrong_keys_fail_both_ways() {
        let hk = Secret { transform: 0, key: random(32) };
        let other = Secret { transform: 0, key: random(32) };
        let cfg = HostAuthConfig::new(other.clone(), None);
        assert!(matches!(run(&cfg, keys(&hk, None), 1), Err(HostAuthError::Refused(reason::FAILED, reason::EXP_FAILED))));
        // Bidirectional with the wrong controller key: the host detects it.
        let cfg = HostAuthConfig::new(hk.clone(), Some(other.clone()));
        assert_eq!(run(&cfg, keys(&hk, Some(&hk)), 1).err(), Some(HostAuthError::CtrlMismatch));
        // Bidirectional asked but the target has no controller key: refused.
        assert!(matches!(run(&cfg, keys(&hk, None), 1), Err(HostAuthError::Refused(..))));
    }

    #[test]
    fn replayed_reply_is_refused() {
        let hk = Secret { transform: 0, key: random(32) };
        let cfg = HostAuthConfig::new(hk.clone(), None);
        let now = Instant::now();
        let mut t = TargetAuth::new(keys(&hk, None), "nqn.h", "nqn.s", now);
        let mut h = HostTransaction::new(&cfg, "nqn.h", "nqn.s", 5, cfg.sc_c(0, false));
        t.on_send(&h.negotiate(), now);
        let reply = h.reply(&t.on_receive(now)).unwrap();
        t.on_send(&reply, now);
        t.on_receive(now);
        assert!(t.authenticated());
        // Re-authentication: a new challenge; the old reply does not answer it.
        t.on_send(&h.negotiate(), now);
        t.on_receive(now);
        t.on_send(&reply, now);
        assert_eq!(t.step(), Step::Failure1);
        let f = t.on_receive(now);
        assert_eq!(Message::decode(&f).unwrap(), Message::Failure(Failure { id: msg::FAILURE1, t_id: 5, reason: 1, explanation: 1 }));
        assert!(!t.authenticated());
        assert_eq!(t.step(), Step::Dead);
    }

    #[test]
    fn secure_channel_concatenation_agrees_or_is_refused() {
        use crate::nvme::auth::sc_c;
        let hk = Secret { transform: 0, key: random(32) };
        let mut cfg = HostAuthConfig::new(hk.clone(), None);
        cfg.concat = true;
        // SHA-512 and the NULL group cannot generate a TLS PSK: neither is offered or chosen.
        cfg.digests = vec![Digest::Sha256, Digest::Sha384, Digest::Sha512];
        cfg.groups = vec![DhGroup::Null, DhGroup::Ffdhe2048];
        let now = Instant::now();
        let mut tk = keys(&hk, None);
        tk.concat = Concat::Offer;
        let mut t = TargetAuth::new(tk, "nqn.h", "nqn.s", now);
        let mut h = HostTransaction::new(&cfg, "nqn.h", "nqn.s", 2, cfg.sc_c(0, false));
        t.on_send(&h.negotiate(), now);
        let r = h.reply(&t.on_receive(now)).unwrap();
        assert_eq!(h.chosen, Some((Digest::Sha384, DhGroup::Ffdhe2048)));
        t.on_send(&r, now);
        assert_eq!(h.success1(&t.on_receive(now)).unwrap(), None);
        let c = t.concat_done.clone().expect("concat info");
        let target_side = crate::nvmf::auth::psk::tls_psk_for(c.digest, &c.skey, &c.c1, &c.c2, "nqn.h", "nqn.s").unwrap();
        let host_side = h.generated_psk().unwrap().unwrap();
        assert_eq!(target_side, host_side);
        assert!(host_side.0.starts_with("NVMe1G02 nqn.h nqn.s "));
        // What each queue kind allows; anything else fails with the concatenation mismatch.
        let cases = [
            (Concat::Off, sc_c::NEWTLSPSK, false),
            (Concat::Off, sc_c::NOSC, true),
            (Concat::Require, sc_c::NOSC, false),
            (Concat::Require, sc_c::NEWTLSPSK, true),
            (Concat::Replace, sc_c::NEWTLSPSK, false),
            (Concat::Replace, sc_c::REPLACETLSPSK, true),
            (Concat::Offer, sc_c::REPLACETLSPSK, false),
            (Concat::Offer, 7, false),
        ];
        for (concat, sc, ok) in cases {
            let mut tk = keys(&hk, None);
            tk.concat = concat;
            let mut t = TargetAuth::new(tk, "nqn.h", "nqn.s", now);
            t.on_send(&Negotiate { t_id: 3, sc_c: sc, hashes: vec![1], dhgroups: vec![1] }.encode(), now);
            let out = t.on_receive(now);
            match Message::decode(&out).unwrap() {
                Message::Challenge(_) => assert!(ok, "{concat:?} accepted SC_C {sc}"),
                Message::Failure(f) => {
                    assert!(!ok, "{concat:?} refused SC_C {sc}");
                    assert_eq!(f.explanation, reason::EXP_CONCAT_MISMATCH);
                }
                _ => panic!("unexpected answer"),
            }
        }
        // With SC_C set, a host offering only SHA-512 finds no usable hash.
        let mut tk = keys(&hk, None);
        tk.concat = Concat::Offer;
        let mut t = TargetAuth::new(tk, "nqn.h", "nqn.s", now);
        t.on_send(&Negotiate { t_id: 4, sc_c: sc_c::NEWTLSPSK, hashes: vec![3], dhgroups: vec![1] }.encode(), now);
        assert_eq!(Failure::decode(&t.on_receive(now)).unwrap().explanation, reason::EXP_HASH_UNUSABLE);
    }

    /// Offloaded DH work: AUTH_Send answers Pending until the result comes back; a result for a
    /// step the queue has left (the host broke the protocol meanwhile) changes nothing.
    #[test]
    fn offloaded_dh_work_and_stale_results() {
        let hk = Secret { transform: 0, key: random(32) };
        let mut cfg = HostAuthConfig::new(hk.clone(), None);
        cfg.groups = vec![DhGroup::Ffdhe2048];
        let now = Instant::now();
        let mut t = TargetAuth::new(keys(&hk, None), "nqn.h", "nqn.s", now).offload();
        let mut h = HostTransaction::new(&cfg, "nqn.h", "nqn.s", 5, 0);
        assert_eq!(t.on_send(&h.negotiate(), now), SendResult::Pending);
        assert_eq!(t.step(), Step::Computing);
        let w = t.take_work().expect("work");
        assert!(t.take_work().is_none());
        assert_eq!(t.finish_work(w.run(), now), SendResult::Ok);
        let r = h.reply(&t.on_receive(now)).unwrap();
        assert_eq!(t.on_send(&r, now), SendResult::Pending);
        let w = t.take_work().unwrap();
        assert_eq!(t.finish_work(w.run(), now), SendResult::Ok);
        assert_eq!(h.success1(&t.on_receive(now)).unwrap(), None);
        assert!(t.authenticated());
        // Re-authentication, and a second AUTH_Send while the first one's work is out.
        let mut h = HostTransaction::new(&cfg, "nqn.h", "nqn.s", 6, 0);
        assert_eq!(t.on_send(&h.negotiate(), now), SendResult::Pending);
        let w = t.take_work().unwrap();
        t.on_send(&h.negotiate(), now);
        assert_eq!(t.step(), Step::Failure1);
        assert_eq!(t.finish_work(w.run(), now), SendResult::Ok);
        assert_eq!(t.step(), Step::Failure1, "a stale result does not revive the transaction");
        assert!(h.reply(&t.on_receive(now)).is_err());
        assert_eq!(t.step(), Step::Dead);
    }

    #[test]
    fn strongest_common_choice_and_timeouts() {
        let hk = Secret { transform: 0, key: random(32) };
        let mut cfg = HostAuthConfig::new(hk.clone(), None);
        cfg.groups = vec![DhGroup::Null, DhGroup::Ffdhe2048];
        let mut tk = keys(&hk, None);
        tk.digests = vec![Digest::Sha256, Digest::Sha384];
        let now = Instant::now();
        let mut t = TargetAuth::new(tk, "nqn.h", "nqn.s", now);
        let mut h = HostTransaction::new(&cfg, "nqn.h", "nqn.s", 1, cfg.sc_c(0, false));
        t.on_send(&h.negotiate(), now);
        let _ = h.reply(&t.on_receive(now)).unwrap();
        assert_eq!(h.chosen, Some((Digest::Sha384, DhGroup::Ffdhe2048)));
        assert!(t.expired(now + super::super::target::STEP_TIMEOUT + std::time::Duration::from_secs(1)));
        // Nothing offered that the target allows: Failure1 with the hash explanation.
        let mut t = TargetAuth::new(keys(&hk, None), "nqn.h", "nqn.s", now);
        t.on_send(&Negotiate { t_id: 1, sc_c: 0, hashes: vec![9], dhgroups: vec![0] }.encode(), now);
        let f = Failure::decode(&t.on_receive(now)).unwrap();
        assert_eq!(f.explanation, reason::EXP_HASH_UNUSABLE);
        // Garbage never panics and fails the transaction.
        let mut t = TargetAuth::new(keys(&hk, None), "nqn.h", "nqn.s", now);
        t.on_send(&[1, 2, 3], now);
        assert_eq!(t.step(), Step::Failure1);
    }
}
