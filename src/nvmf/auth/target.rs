//! The controller's side of a DH-HMAC-CHAP transaction on one queue (Base 2.0 §8.13.5), fed the
//! payloads of AUTH_Send and asked for those of AUTH_Receive. Transport- and queue-agnostic: the
//! queue pair owns one and asks `authenticated()` per command (a plain field).
//!
//! Steps as Linux nvmet runs them: Negotiate (send) → Challenge (receive) → Reply (send) →
//! Success1 or Failure1 (receive) → Success2 (send, bidirectional only). A failure is reported
//! by the next AUTH_Receive as AUTH_Failure1, after which the queue is torn down
//! ([`Step::Dead`]); Linux does the same (nvmet_ctrl_fatal_error).

use std::time::{Duration, Instant};

use super::chap::{ctrl_response, host_response, Transcript};
use super::crypto::{ct_eq, random, DhGroup, DhKey, Digest};
use super::secret::Secret;
use crate::nvme::auth::{msg, reason, sc_c, Challenge, Failure, Message, Negotiate, Reply, Success1};

/// A half-done transaction is abandoned (and the queue closed) after this long without the
/// host's next message (Linux: the controller's DH-HMAC-CHAP timeout).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// What the target accepts, resolved at Connect (keys parsed once per queue).
#[derive(Clone, Debug)]
pub struct TargetKeys {
    pub host: Secret,
    pub ctrl: Option<Secret>,
    pub digests: Vec<Digest>,
    pub groups: Vec<DhGroup>,
    /// Secure channel concatenation (SC_C NEWTLSPSK) is offered on this queue.
    pub offer_concat: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Waiting for AUTH_Negotiate (also after success: re-authentication).
    Negotiate,
    /// AUTH_Receive will return the Challenge.
    Challenge,
    Reply,
    Success1,
    Success2,
    /// AUTH_Receive will return Failure1, then the queue dies.
    Failure1,
    /// The transaction failed: the queue must be closed.
    Dead,
}

/// What a command outcome asks of the queue.
#[derive(Debug, PartialEq, Eq)]
pub enum SendResult {
    Ok,
    /// The command itself is malformed (Invalid Field in Command).
    InvalidField,
    /// The host gave up (AUTH_Failure2): tear the queue down.
    Abort,
}

pub struct TargetAuth {
    keys: TargetKeys,
    hostnqn: String,
    subnqn: String,
    step: Step,
    authenticated: bool,
    deadline: Option<Instant>,
    t_id: u16,
    digest: Digest,
    group: DhGroup,
    sc_c: u8,
    c1: Vec<u8>,
    s1: u32,
    dh: Option<DhKey>,
    skey: Option<Vec<u8>>,
    c2: Option<(Vec<u8>, u32)>,
    /// C2 as the reply carried it (zeros when not bidirectional): the generated PSK uses it.
    reply_c2: Vec<u8>,
    fail_exp: u8,
    /// After a successful SC_C exchange: the session key material the PSK derivation uses.
    pub concat_done: Option<ConcatInfo>,
}

/// What secure channel concatenation needs from a finished transaction.
#[derive(Clone, Debug)]
pub struct ConcatInfo {
    pub digest: Digest,
    pub skey: Vec<u8>,
    pub c1: Vec<u8>,
    pub c2: Vec<u8>,
}

impl TargetAuth {
    pub fn new(keys: TargetKeys, hostnqn: &str, subnqn: &str, now: Instant) -> TargetAuth {
        TargetAuth {
            keys,
            hostnqn: hostnqn.to_string(),
            subnqn: subnqn.to_string(),
            step: Step::Negotiate,
            authenticated: false,
            // The first transaction must start in time too: a connected but silent queue holds
            // a controller slot.
            deadline: Some(now + STEP_TIMEOUT),
            t_id: 0,
            digest: Digest::Sha256,
            group: DhGroup::Null,
            sc_c: 0,
            c1: Vec::new(),
            s1: 0,
            dh: None,
            skey: None,
            c2: None,
            reply_c2: Vec::new(),
            fail_exp: 0,
            concat_done: None,
        }
    }

    pub fn authenticated(&self) -> bool {
        self.authenticated
    }
    pub fn step(&self) -> Step {
        self.step
    }
    /// Digest and DH group of the last transaction.
    pub fn chosen(&self) -> (Digest, DhGroup) {
        (self.digest, self.group)
    }
    pub fn offers_concat(&self) -> bool {
        self.keys.offer_concat
    }
    /// Replace the keys (nvmf_subsystem_set_keys): used from the next transaction on.
    pub fn set_keys(&mut self, keys: TargetKeys) {
        self.keys = keys;
    }
    /// True when a transaction has stalled past its deadline: the queue should be closed.
    pub fn expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now > d)
    }

    fn fail(&mut self, exp: u8, now: Instant) -> SendResult {
        self.step = Step::Failure1;
        self.fail_exp = exp;
        self.deadline = Some(now + STEP_TIMEOUT);
        SendResult::Ok
    }

    /// AUTH_Send payload.
    pub fn on_send(&mut self, data: &[u8], now: Instant) -> SendResult {
        if self.step == Step::Dead {
            return SendResult::Abort;
        }
        let m = match Message::decode(data) {
            Ok(m) => m,
            Err(_) => return self.fail(reason::EXP_INCORRECT_PAYLOAD, now),
        };
        match (self.step, m) {
            // A Negotiate starts a transaction at any quiet point, including re-authentication.
            (Step::Negotiate, Message::Negotiate(n)) => self.negotiate(n, now),
            (Step::Reply, Message::Reply(r)) => self.reply(r, now),
            (Step::Success2, Message::Success2(s)) => {
                if s.t_id != self.t_id {
                    return self.fail(reason::EXP_INCORRECT_PAYLOAD, now);
                }
                self.finish();
                SendResult::Ok
            }
            (_, Message::Failure(f)) if f.id == msg::FAILURE2 => {
                self.step = Step::Dead;
                self.authenticated = false;
                SendResult::Abort
            }
            _ => self.fail(reason::EXP_INCORRECT_PROTOCOL, now),
        }
    }

    fn finish(&mut self) {
        self.authenticated = true;
        self.step = Step::Negotiate;
        self.deadline = None;
        self.dh = None;
    }

    fn negotiate(&mut self, n: Negotiate, now: Instant) -> SendResult {
        self.t_id = n.t_id;
        self.sc_c = n.sc_c;
        self.c2 = None;
        self.skey = None;
        self.concat_done = None;
        if n.sc_c != sc_c::NOSC && (!self.keys.offer_concat || n.sc_c != sc_c::NEWTLSPSK) {
            return self.fail(reason::EXP_CONCAT_MISMATCH, now);
        }
        // The strongest of what both allow: the config lists are the allowed set, the order of
        // the enums is the strength order.
        let Some(d) = n.hashes.iter().filter_map(|&h| Digest::from_id(h).ok()).filter(|d| self.keys.digests.contains(d)).max() else {
            return self.fail(reason::EXP_HASH_UNUSABLE, now);
        };
        let Some(g) = n.dhgroups.iter().filter_map(|&h| DhGroup::from_id(h).ok()).filter(|g| self.keys.groups.contains(g)).max() else {
            return self.fail(reason::EXP_DHGROUP_UNUSABLE, now);
        };
        self.digest = d;
        self.group = g;
        self.dh = match DhKey::generate(g) {
            Ok(k) => k,
            Err(_) => return self.fail(reason::EXP_FAILED, now),
        };
        self.c1 = random(d.len());
        self.s1 = next_seqnum();
        self.step = Step::Challenge;
        self.deadline = Some(now + STEP_TIMEOUT);
        SendResult::Ok
    }

    fn reply(&mut self, r: Reply, now: Instant) -> SendResult {
        // A reply of another transaction (replayed, or stale) names another T_ID or answers
        // another C1: both fail here.
        if r.t_id != self.t_id || r.r1.len() != self.digest.len() {
            return self.fail(reason::EXP_INCORRECT_PAYLOAD, now);
        }
        if let Some(k) = &self.dh {
            match k.shared(&r.dhv) {
                Ok(s) => self.skey = Some(s),
                Err(_) => return self.fail(reason::EXP_INCORRECT_PAYLOAD, now),
            }
        } else if !r.dhv.is_empty() {
            return self.fail(reason::EXP_INCORRECT_PAYLOAD, now);
        }
        let key = match self.keys.host.transformed(&self.hostnqn) {
            Ok(k) => k,
            Err(_) => return self.fail(reason::EXP_FAILED, now),
        };
        let t = Transcript { digest: self.digest, skey: self.skey.as_deref(), challenge: &self.c1, seqnum: self.s1, t_id: self.t_id, sc_c: self.sc_c };
        let ok = host_response(&t, &key, &self.hostnqn, &self.subnqn).is_ok_and(|want| ct_eq(&want, &r.r1));
        if !ok {
            tracing::info!(hostnqn = %self.hostnqn, "DH-HMAC-CHAP: host response mismatch");
            return self.fail(reason::EXP_FAILED, now);
        }
        self.reply_c2 = r.c2.clone();
        if r.cvalid {
            // Bidirectional asked: without a controller key we cannot prove ourselves.
            if self.keys.ctrl.is_none() || r.seqnum == 0 {
                return self.fail(reason::EXP_FAILED, now);
            }
            self.c2 = Some((r.c2, r.seqnum));
        }
        self.step = Step::Success1;
        self.deadline = Some(now + STEP_TIMEOUT);
        SendResult::Ok
    }

    /// AUTH_Receive payload (truncated by the caller to AL).
    pub fn on_receive(&mut self, now: Instant) -> Vec<u8> {
        match self.step {
            Step::Challenge => {
                self.step = Step::Reply;
                self.deadline = Some(now + STEP_TIMEOUT);
                let dhv = self.dh.as_ref().map(|k| k.public.clone()).unwrap_or_default();
                Challenge { t_id: self.t_id, hash_id: self.digest.id(), dhgid: self.group.id(), seqnum: self.s1, c1: self.c1.clone(), dhv }.encode()
            }
            Step::Success1 => {
                let r2 = match &self.c2 {
                    Some((c2, s2)) => {
                        let t = Transcript { digest: self.digest, skey: self.skey.as_deref(), challenge: c2, seqnum: *s2, t_id: self.t_id, sc_c: self.sc_c };
                        let key = self.keys.ctrl.as_ref().map(|k| k.transformed(&self.subnqn));
                        match key {
                            Some(Ok(k)) => ctrl_response(&t, &k, &self.hostnqn, &self.subnqn).ok(),
                            _ => None,
                        }
                    }
                    None => None,
                };
                if self.c2.is_some() && r2.is_none() {
                    self.fail(reason::EXP_FAILED, now);
                    return self.on_receive(now);
                }
                let out = Success1 { t_id: self.t_id, hl: self.digest.len() as u8, rvalid: r2.is_some(), r2: r2.unwrap_or_default() }.encode();
                if self.sc_c != sc_c::NOSC {
                    if let Some(s) = &self.skey {
                        self.concat_done = Some(ConcatInfo { digest: self.digest, skey: s.clone(), c1: self.c1.clone(), c2: self.reply_c2.clone() });
                    }
                }
                if self.c2.is_some() {
                    self.step = Step::Success2;
                    self.deadline = Some(now + STEP_TIMEOUT);
                } else {
                    self.finish();
                }
                out
            }
            Step::Failure1 => {
                self.step = Step::Dead;
                self.authenticated = false;
                Failure { id: msg::FAILURE1, t_id: self.t_id, reason: reason::FAILED, explanation: self.fail_exp }.encode()
            }
            // Nothing to say at this step: the host broke the protocol.
            _ => {
                self.fail(reason::EXP_INCORRECT_PROTOCOL, now);
                self.on_receive(now)
            }
        }
    }
}

/// Sequence numbers: a process-wide counter from a random start, never 0 (Linux
/// `nvme_auth_get_seqnum`).
fn next_seqnum() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQ: AtomicU32 = AtomicU32::new(0);
    loop {
        let cur = SEQ.load(Ordering::Relaxed);
        let next = if cur == 0 { u32::from_le_bytes(random(4).try_into().unwrap()) } else { cur.wrapping_add(1) };
        if next != 0 && SEQ.compare_exchange(cur, next, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            return next;
        }
    }
}
