//! Login phase (RFC 7143 §6, §13): security negotiation (CHAP with MD5, one-way and mutual, or
//! AuthMethod=None where the policy allows it) and operational key negotiation. Pure logic: the
//! connection feeds Login Request PDUs and turns each [`Step`] into a Login Response.

use std::net::IpAddr;
use std::sync::Arc;

use md5::{Digest, Md5};

use super::pdu::{parse_text, Bhs, F_CONTINUE, F_TRANSIT};
pub use super::session::Negotiated;
use super::session::Session;
use super::target::{ChapPolicy, Node, Target};

/// Login status classes / details (RFC 7143 §11.13.5).
pub mod status {
    pub const INITIATOR_ERROR: (u8, u8) = (2, 0);
    pub const AUTH_FAILED: (u8, u8) = (2, 1);
    pub const NOT_AUTHORIZED: (u8, u8) = (2, 2);
    pub const NOT_FOUND: (u8, u8) = (2, 3);
    pub const UNSUPPORTED_VERSION: (u8, u8) = (2, 5);
    pub const TOO_MANY_CONNECTIONS: (u8, u8) = (2, 6);
    pub const MISSING_PARAMETER: (u8, u8) = (2, 7);
    pub const SESSION_TYPE_UNSUPPORTED: (u8, u8) = (2, 9);
    pub const SESSION_DOES_NOT_EXIST: (u8, u8) = (2, 10);
    pub const INVALID_DURING_LOGIN: (u8, u8) = (2, 11);
    pub const OUT_OF_RESOURCES: (u8, u8) = (3, 2);
}

/// What we accept per data segment (declared to initiators).
pub const TARGET_MAX_RECV_DSL: u32 = 256 * 1024;
/// Our MaxBurstLength offer.
pub const TARGET_MAX_BURST: u32 = 1024 * 1024;

/// Keys naming the session, which an initiator may repeat unchanged in later login requests.
const IDENTITY_KEYS: [&str; 4] = ["InitiatorName", "InitiatorAlias", "TargetName", "SessionType"];

/// What an initiator accepts per login response data segment: MaxRecvDataSegmentLength is not in
/// force before the full feature phase, so its default (RFC 7143 §13.12) bounds login responses.
pub const LOGIN_MAX_DSL: usize = 8192;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionType {
    Normal,
    Discovery,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Chap {
    NotStarted,
    /// AuthMethod=CHAP agreed, waiting for CHAP_A.
    WaitAlgorithm,
    /// Challenge sent.
    WaitResponse { id: u8, challenge: [u8; 16] },
    Done,
}

/// What to answer to one Login Request.
#[derive(Debug)]
pub enum Step {
    /// Send a response with these keys; `transit` and stages as given.
    Reply { keys: Vec<(String, String)>, transit: bool, csg: u8, nsg: u8 },
    /// Login complete: the final response (T=1, NSG=3) with these keys.
    Finish { keys: Vec<(String, String)>, csg: u8 },
    /// Refuse with this status class/detail.
    Fail((u8, u8)),
}

/// Where the login came in and the target's options that shape negotiation.
pub struct LoginCtx<'a> {
    pub target: &'a Target,
    pub pg_tag: u32,
    pub peer: IpAddr,
}

pub struct Login {
    first: bool,
    stage: u8,
    pub initiator_name: String,
    pub initiator_alias: String,
    pub session_type: SessionType,
    pub target_name: String,
    pub node: Option<Arc<Node>>,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub cid: u16,
    /// A login with a TSIH: the session this connection joins (MC/S).
    pub joining: Option<Arc<Session>>,
    chap: Chap,
    policy: ChapPolicy,
    auth_none: bool,
    pub params: Negotiated,
    /// Text of a login request continued over several PDUs (C bit).
    pending: Vec<u8>,
    /// The CHAP name the initiator authenticated as.
    pub chap_user: Option<String>,
    /// Every key the initiator declared so far in this login, with its value.
    declared: Vec<(String, String)>,
    opts_first_burst: u32,
    opts_immediate: bool,
    opts_max_conns: u32,
    opts_time2wait: u32,
    opts_time2retain: u32,
    opts_max_r2t: u32,
}

impl Default for Login {
    fn default() -> Self {
        Login::new()
    }
}

impl Login {
    pub fn new() -> Login {
        Login {
            first: true,
            stage: 0,
            initiator_name: String::new(),
            initiator_alias: String::new(),
            session_type: SessionType::Normal,
            target_name: String::new(),
            node: None,
            isid: [0; 6],
            tsih: 0,
            cid: 0,
            joining: None,
            chap: Chap::NotStarted,
            policy: ChapPolicy::default(),
            auth_none: false,
            params: Negotiated::defaults(TARGET_MAX_RECV_DSL),
            pending: Vec::new(),
            chap_user: None,
            declared: Vec::new(),
            opts_first_burst: 65536,
            opts_immediate: true,
            opts_max_conns: 1,
            opts_time2wait: 2,
            opts_time2retain: 20,
            opts_max_r2t: 4,
        }
    }

    /// Handle one Login Request PDU.
    pub fn step(&mut self, ctx: &LoginCtx, bhs: &Bhs, data: &[u8]) -> Step {
        let flags = bhs.flags();
        let transit = flags & F_TRANSIT != 0;
        let csg = (flags >> 2) & 3;
        let nsg = flags & 3;
        if bhs.b3() > 0 {
            return Step::Fail(status::UNSUPPORTED_VERSION);
        }
        // CSG 2 is reserved and 3 (full feature) is no stage a request can be in (§11.12.3): a
        // request naming either is malformed, whatever the security state.
        if csg >= 2 {
            return Step::Fail(status::INITIATOR_ERROR);
        }
        if flags & F_CONTINUE != 0 {
            if transit || self.pending.len() + data.len() > 64 * 1024 {
                return Step::Fail(status::INITIATOR_ERROR);
            }
            self.pending.extend_from_slice(data);
            return Step::Reply { keys: Vec::new(), transit: false, csg, nsg: 0 };
        }
        let text = if self.pending.is_empty() {
            data.to_vec()
        } else {
            let mut t = std::mem::take(&mut self.pending);
            t.extend_from_slice(data);
            t
        };
        let Ok(pairs) = parse_text(&text) else { return Step::Fail(status::INITIATOR_ERROR) };
        if transit && (nsg == 2 || nsg < csg) {
            return Step::Fail(status::INITIATOR_ERROR);
        }
        if let Err(st) = self.check_declarations(&pairs) {
            return Step::Fail(st);
        }
        let mut out: Vec<(String, String)> = Vec::new();
        if self.first {
            if let Err(st) = self.first_pdu(ctx, bhs, &pairs, &mut out) {
                return Step::Fail(st);
            }
        } else if csg < self.stage {
            return Step::Fail(status::INITIATOR_ERROR);
        }
        if csg == 1 && self.stage == 0 {
            // Skipping (or leaving) security negotiation: only without CHAP obligations.
            if !self.auth_done() && (self.chap != Chap::NotStarted || self.auth_required()) {
                return Step::Fail(status::AUTH_FAILED);
            }
            if self.chap == Chap::NotStarted {
                self.auth_none = true;
            }
            self.stage = 1;
        }
        for (k, v) in &pairs {
            let r = match k.as_str() {
                "InitiatorName" | "InitiatorAlias" | "TargetName" | "SessionType" => continue,
                "AuthMethod" | "CHAP_A" | "CHAP_N" | "CHAP_R" | "CHAP_I" | "CHAP_C" => {
                    if csg != 0 {
                        return Step::Fail(status::INITIATOR_ERROR);
                    }
                    continue; // handled below, together
                }
                _ => self.operational(k, v),
            };
            if let Some(r) = r {
                out.push((k.clone(), r));
            }
        }
        if csg == 0 {
            if let Err(st) = self.security(ctx, &pairs, &mut out) {
                return Step::Fail(st);
            }
        }
        if !transit {
            return Step::Reply { keys: out, transit: false, csg, nsg: 0 };
        }
        if csg == 0 && !self.auth_done() {
            // Not ready to leave the security stage yet: answer without T.
            if self.chap == Chap::NotStarted && !self.auth_none {
                return Step::Fail(status::AUTH_FAILED);
            }
            return Step::Reply { keys: out, transit: false, csg, nsg: 0 };
        }
        if nsg == 3 {
            // The one gate to full feature phase: whatever stages the initiator named, a session
            // that must authenticate has done so.
            if self.auth_required() && self.chap != Chap::Done {
                return Step::Fail(status::AUTH_FAILED);
            }
            self.finalize();
            return Step::Finish { keys: out, csg };
        }
        self.stage = nsg;
        Step::Reply { keys: out, transit: true, csg, nsg }
    }

    fn auth_done(&self) -> bool {
        self.auth_none || self.chap == Chap::Done
    }

    /// Whether the policy of this login's node (or of discovery) demands CHAP.
    fn auth_required(&self) -> bool {
        self.policy.require || self.policy.mutual
    }

    /// RFC 7143 §6.1: a key is declared once per login. The names that identify the session may be
    /// repeated in later requests (libiscsi sends InitiatorName again with its operational keys),
    /// but only with the same value; anything else declared twice is an initiator error.
    fn check_declarations(&mut self, pairs: &[(String, String)]) -> Result<(), (u8, u8)> {
        for (i, (k, v)) in pairs.iter().enumerate() {
            if pairs[..i].iter().any(|(a, _)| a == k) {
                return Err(status::INITIATOR_ERROR);
            }
            match self.declared.iter().find(|(a, _)| a == k) {
                None => self.declared.push((k.clone(), v.clone())),
                Some((_, old)) if IDENTITY_KEYS.contains(&k.as_str()) && old == v => {}
                Some(_) => return Err(status::INITIATOR_ERROR),
            }
        }
        Ok(())
    }

    fn first_pdu(&mut self, ctx: &LoginCtx, bhs: &Bhs, pairs: &[(String, String)], out: &mut Vec<(String, String)>) -> Result<(), (u8, u8)> {
        self.first = false;
        self.isid.copy_from_slice(&bhs.0[8..14]);
        self.tsih = bhs.u16_at(14);
        self.cid = bhs.u16_at(20);
        let get = |k: &str| pairs.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
        self.initiator_name = get("InitiatorName").ok_or(status::MISSING_PARAMETER)?;
        if self.initiator_name.is_empty() {
            return Err(status::MISSING_PARAMETER);
        }
        self.initiator_alias = get("InitiatorAlias").unwrap_or_default();
        self.session_type = match get("SessionType").as_deref() {
            None | Some("Normal") => SessionType::Normal,
            Some("Discovery") => SessionType::Discovery,
            Some(_) => return Err(status::SESSION_TYPE_UNSUPPORTED),
        };
        let o = ctx.target.opts();
        self.opts_first_burst = o.first_burst_length;
        self.opts_immediate = o.immediate_data;
        self.opts_max_conns = o.max_connections_per_session.max(1);
        self.opts_time2wait = o.default_time2wait;
        self.opts_time2retain = o.default_time2retain;
        self.opts_max_r2t = o.max_r2t_per_connection.max(1);
        let (normal, discovery) = ctx.target.session_count();
        match self.session_type {
            SessionType::Discovery => {
                if discovery >= o.max_discovery_sessions as usize {
                    return Err(status::OUT_OF_RESOURCES);
                }
                self.policy = ctx.target.discovery_chap();
            }
            SessionType::Normal => {
                self.target_name = get("TargetName").ok_or(status::MISSING_PARAMETER)?;
                let node = ctx.target.node_for(&self.target_name).ok_or(status::NOT_FOUND)?;
                if !ctx.target.allowed(&node, ctx.pg_tag, &self.initiator_name, ctx.peer) {
                    return Err(status::NOT_AUTHORIZED);
                }
                if normal >= o.max_sessions as usize && self.tsih == 0 {
                    return Err(status::OUT_OF_RESOURCES);
                }
                self.policy = node.chap;
                if self.policy.group == 0 {
                    self.policy.group = o.chap_group;
                }
                self.target_name = node.name.clone();
                out.push(("TargetPortalGroupTag".into(), ctx.pg_tag.to_string()));
                if !node.alias.is_empty() {
                    out.push(("TargetAlias".into(), node.alias.clone()));
                }
                self.node = Some(node);
            }
        }
        if self.tsih != 0 {
            self.join(ctx)?;
        }
        Ok(())
    }

    /// A login naming a session (TSIH != 0) adds a connection to it (RFC 7143 §6.3.1): the session
    /// must exist with this ISID, initiator and target, and have room (or the CID in use, which
    /// the new connection reinstates). It inherits the session-wide keys.
    fn join(&mut self, ctx: &LoginCtx) -> Result<(), (u8, u8)> {
        let s = ctx.target.session(self.tsih).ok_or(status::SESSION_DOES_NOT_EXIST)?;
        if self.session_type != SessionType::Normal || !s.matches(&self.isid, &self.initiator_name, &self.target_name, ctx.pg_tag) {
            return Err(status::SESSION_DOES_NOT_EXIST);
        }
        let members = s.members();
        if members.len() >= s.params.max_connections.max(1) as usize && !members.iter().any(|m| m.cid == self.cid) {
            return Err(status::TOO_MANY_CONNECTIONS);
        }
        // Session-wide values hold; the connection-only ones are negotiated from their defaults.
        let own = Negotiated::defaults(TARGET_MAX_RECV_DSL);
        self.params = Negotiated { header_digest: own.header_digest, data_digest: own.data_digest, max_xmit_dsl: own.max_xmit_dsl, ..s.params.clone() };
        self.joining = Some(s);
        Ok(())
    }

    fn security(&mut self, ctx: &LoginCtx, pairs: &[(String, String)], out: &mut Vec<(String, String)>) -> Result<(), (u8, u8)> {
        let get = |k: &str| pairs.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str());
        if let Some(methods) = get("AuthMethod") {
            let want_chap = !self.policy.disable;
            let allow_none = !self.policy.require && !self.policy.mutual;
            let pick = methods.split(',').find(|m| (*m == "CHAP" && want_chap) || (*m == "None" && allow_none));
            match pick {
                Some("CHAP") => {
                    self.chap = Chap::WaitAlgorithm;
                    out.push(("AuthMethod".into(), "CHAP".into()));
                }
                Some(_) => {
                    self.auth_none = true;
                    out.push(("AuthMethod".into(), "None".into()));
                }
                None => return Err(status::AUTH_FAILED),
            }
        }
        if let Some(algs) = get("CHAP_A") {
            if self.chap != Chap::WaitAlgorithm {
                return Err(status::INITIATOR_ERROR);
            }
            if !algs.split(',').any(|a| a == "5") {
                return Err(status::AUTH_FAILED);
            }
            let id: u8 = rand::random();
            let challenge: [u8; 16] = rand::random();
            out.push(("CHAP_A".into(), "5".into()));
            out.push(("CHAP_I".into(), id.to_string()));
            out.push(("CHAP_C".into(), format!("0x{}", hex(&challenge))));
            self.chap = Chap::WaitResponse { id, challenge };
        }
        if let (Some(user), Some(resp)) = (get("CHAP_N"), get("CHAP_R")) {
            let Chap::WaitResponse { id, challenge } = self.chap.clone() else { return Err(status::INITIATOR_ERROR) };
            let secret = ctx.target.secret(self.policy.group, user).ok_or(status::AUTH_FAILED)?;
            let got = decode_binary(resp).ok_or(status::AUTH_FAILED)?;
            if got != chap_response(id, secret.secret.as_bytes(), &challenge) {
                return Err(status::AUTH_FAILED);
            }
            match (get("CHAP_I"), get("CHAP_C")) {
                (Some(ti), Some(tc)) => {
                    let tid: u8 = ti.parse().map_err(|_| status::AUTH_FAILED)?;
                    let tch = decode_binary(tc).ok_or(status::AUTH_FAILED)?;
                    // A reflected challenge would let an attacker use us as an oracle.
                    if tch == challenge || tch.is_empty() {
                        return Err(status::AUTH_FAILED);
                    }
                    let (Some(mu), Some(ms)) = (secret.muser.as_deref(), secret.msecret.as_deref()) else {
                        return Err(status::AUTH_FAILED);
                    };
                    out.push(("CHAP_N".into(), mu.to_string()));
                    out.push(("CHAP_R".into(), format!("0x{}", hex(&chap_response(tid, ms.as_bytes(), &tch)))));
                }
                (None, None) if self.policy.mutual => return Err(status::AUTH_FAILED),
                (None, None) => {}
                _ => return Err(status::AUTH_FAILED),
            }
            self.chap_user = Some(user.to_string());
            self.chap = Chap::Done;
        } else if get("CHAP_N").is_some() || get("CHAP_R").is_some() {
            return Err(status::AUTH_FAILED);
        }
        Ok(())
    }

    /// Answer one operational key (None: no answer needed).
    fn operational(&mut self, k: &str, v: &str) -> Option<String> {
        let discovery = self.session_type == SessionType::Discovery;
        let num = |lo: u32, hi: u32| v.parse::<u32>().ok().filter(|n| (lo..=hi).contains(n));
        let boolv = || match v {
            "Yes" => Some(true),
            "No" => Some(false),
            _ => None,
        };
        let yn = |b: bool| if b { "Yes" } else { "No" }.to_string();
        let session_only = matches!(
            k,
            "MaxConnections" | "InitialR2T" | "ImmediateData" | "MaxBurstLength" | "FirstBurstLength" | "MaxOutstandingR2T" | "DataPDUInOrder" | "DataSequenceInOrder"
        );
        if discovery && session_only {
            return Some("Irrelevant".into());
        }
        // Leading-only keys (RFC 7143 §13) are the leading login's to negotiate: in a login that
        // adds a connection they do not change the session, and are answered Irrelevant.
        let leading_only = session_only || matches!(k, "DefaultTime2Wait" | "DefaultTime2Retain" | "ErrorRecoveryLevel");
        if self.joining.is_some() && leading_only {
            return Some("Irrelevant".into());
        }
        let rejected = || Some("Reject".to_string());
        match k {
            "HeaderDigest" | "DataDigest" => {
                let required = self.node.as_ref().is_some_and(|n| if k == "HeaderDigest" { n.header_digest } else { n.data_digest });
                let pick = v.split(',').find(|d| *d == "CRC32C" || (*d == "None" && !required));
                let Some(d) = pick else { return rejected() };
                let on = d == "CRC32C";
                if k == "HeaderDigest" {
                    self.params.header_digest = on;
                } else {
                    self.params.data_digest = on;
                }
                Some(d.to_string())
            }
            "MaxConnections" => match num(1, 65535) {
                Some(n) => {
                    self.params.max_connections = n.min(self.opts_max_conns);
                    Some(self.params.max_connections.to_string())
                }
                None => rejected(),
            },
            "InitialR2T" => match boolv() {
                Some(b) => {
                    self.params.initial_r2t = b; // OR with our "No"
                    Some(yn(b))
                }
                None => rejected(),
            },
            "ImmediateData" => match boolv() {
                Some(b) => {
                    self.params.immediate_data = b && self.opts_immediate;
                    Some(yn(self.params.immediate_data))
                }
                None => rejected(),
            },
            "MaxRecvDataSegmentLength" => match num(512, 16_777_215) {
                Some(n) => {
                    // Declarative: the initiator's value bounds what we send; we declare ours.
                    self.params.max_xmit_dsl = n;
                    Some(self.params.max_recv_dsl.to_string())
                }
                None => rejected(),
            },
            "MaxBurstLength" => match num(512, 16_777_215) {
                Some(n) => {
                    self.params.max_burst = n.min(TARGET_MAX_BURST);
                    self.params.first_burst = self.params.first_burst.min(self.params.max_burst);
                    Some(self.params.max_burst.to_string())
                }
                None => rejected(),
            },
            "FirstBurstLength" => match num(512, 16_777_215) {
                Some(n) => {
                    self.params.first_burst = n.min(self.opts_first_burst.max(512)).min(self.params.max_burst);
                    Some(self.params.first_burst.to_string())
                }
                None => rejected(),
            },
            "DefaultTime2Wait" => match num(0, 3600) {
                Some(n) => {
                    self.params.time2wait = n.max(self.opts_time2wait);
                    Some(self.params.time2wait.to_string())
                }
                None => rejected(),
            },
            "DefaultTime2Retain" => match num(0, 3600) {
                Some(n) => {
                    self.params.time2retain = n.min(self.opts_time2retain);
                    Some(self.params.time2retain.to_string())
                }
                None => rejected(),
            },
            "MaxOutstandingR2T" => match num(1, 65535) {
                Some(n) => {
                    self.params.max_outstanding_r2t = n.min(self.opts_max_r2t);
                    Some(self.params.max_outstanding_r2t.to_string())
                }
                None => rejected(),
            },
            // We deliver and expect data in order; the OR function makes the result Yes.
            "DataPDUInOrder" | "DataSequenceInOrder" => match boolv() {
                Some(_) => Some("Yes".into()),
                None => rejected(),
            },
            "ErrorRecoveryLevel" => match num(0, 2) {
                Some(_) => Some("0".into()),
                None => rejected(),
            },
            // RFC 3720 markers (removed in RFC 7143): we never use them.
            "IFMarker" | "OFMarker" => match boolv() {
                Some(_) => Some("No".into()),
                None => rejected(),
            },
            "IFMarkInt" | "OFMarkInt" => Some("Irrelevant".into()),
            "TargetAlias" | "TargetAddress" | "TargetPortalGroupTag" => rejected(),
            _ => Some("NotUnderstood".into()),
        }
    }

    fn finalize(&mut self) {
        if self.joining.is_some() {
            return; // the session's values, as negotiated by its leading login
        }
        let p = &mut self.params;
        if p.first_burst > p.max_burst {
            p.first_burst = p.max_burst;
        }
        if self.session_type == SessionType::Discovery {
            p.immediate_data = false;
        }
    }
}

/// CHAP response: MD5(id || secret || challenge) (RFC 1994).
pub fn chap_response(id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().to_vec()
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Binary value encodings of RFC 7143 §6.1: `0x` hex or `0b` base64.
pub fn decode_binary(s: &str) -> Option<Vec<u8>> {
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        let h = if h.len() % 2 == 1 { format!("0{h}") } else { h.to_string() };
        return (0..h.len()).step_by(2).map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok()).collect();
    }
    if let Some(b) = s.strip_prefix("0b").or_else(|| s.strip_prefix("0B")) {
        return base64(b);
    }
    None
}

fn base64(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in s {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chap_md5_vector() {
        // RFC 1994: MD5(identifier || secret || challenge); digest computed independently.
        let r = chap_response(1, b"secret", &[0u8; 16]);
        assert_eq!(hex(&r), "7570c653cdf4755ccffcaa80f29268d1");
        assert_eq!(decode_binary(&format!("0x{}", hex(&r))).unwrap(), r);
        assert_eq!(decode_binary("0bAQID").unwrap(), vec![1, 2, 3]);
        assert!(decode_binary("zz").is_none());
        assert!(decode_binary("0xzz").is_none());
    }

    fn login_pdu(flags: u8, text: &str) -> (Bhs, Vec<u8>) {
        let mut b = Bhs::new(super::super::pdu::op::LOGIN_REQ, flags);
        b.0[8] = 0x80;
        (b, text.replace(' ', "\0").into_bytes())
    }

    #[test]
    fn discovery_without_auth_and_operational_rules() {
        let t = Target::default();
        let ctx = LoginCtx { target: &t, pg_tag: 1, peer: "127.0.0.1".parse().unwrap() };
        let mut l = Login::new();
        let (b, d) = login_pdu(0x80 | 0x01, "InitiatorName=iqn.i SessionType=Discovery AuthMethod=None ");
        match l.step(&ctx, &b, &d) {
            Step::Reply { keys, transit: true, nsg: 1, .. } => assert!(keys.contains(&("AuthMethod".into(), "None".into()))),
            s => panic!("{s:?}"),
        }
        let (b, d) = login_pdu(0x80 | 0x04 | 0x03, "HeaderDigest=None,CRC32C MaxRecvDataSegmentLength=65536 ImmediateData=Yes Foo=bar ErrorRecoveryLevel=2 ");
        match l.step(&ctx, &b, &d) {
            Step::Finish { keys, .. } => {
                assert!(keys.contains(&("HeaderDigest".into(), "None".into())));
                assert!(keys.contains(&("ImmediateData".into(), "Irrelevant".into())));
                assert!(keys.contains(&("Foo".into(), "NotUnderstood".into())));
                assert!(keys.contains(&("ErrorRecoveryLevel".into(), "0".into())));
            }
            s => panic!("{s:?}"),
        }
        assert_eq!(l.params.max_xmit_dsl, 65536);
    }

    #[test]
    fn unknown_target_and_missing_name() {
        let t = Target::default();
        let ctx = LoginCtx { target: &t, pg_tag: 1, peer: "127.0.0.1".parse().unwrap() };
        let (b, d) = login_pdu(0x80 | 0x01, "InitiatorName=iqn.i TargetName=iqn.none ");
        assert!(matches!(Login::new().step(&ctx, &b, &d), Step::Fail(status::NOT_FOUND)));
        let (b, d) = login_pdu(0x80 | 0x01, "TargetName=iqn.none ");
        assert!(matches!(Login::new().step(&ctx, &b, &d), Step::Fail(status::MISSING_PARAMETER)));
    }
}
