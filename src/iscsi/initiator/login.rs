//! Initiator side of login: security stage (CHAP with MD5, optionally mutual), then operational
//! negotiation; the target's answers become [`SessionParams`].

use std::time::Duration;

use super::{err, Session};
use crate::iscsi::login::{chap_response, decode_binary, hex};
use crate::iscsi::pdu::{self, at, op, Bhs, F_TRANSIT};

#[derive(Clone, Debug)]
pub struct LoginOptions {
    pub initiator_name: String,
    /// None: a discovery session.
    pub target: Option<String>,
    /// CHAP name and secret the initiator proves.
    pub chap: Option<(String, String)>,
    /// Mutual CHAP: the name and secret the target must prove.
    pub mutual: Option<(String, String)>,
    pub header_digest: bool,
    pub data_digest: bool,
    pub isid: [u8; 6],
    /// Non-zero: add a connection to this session (MC/S), as CID `cid`.
    pub tsih: u16,
    pub cid: u16,
    /// MaxConnections offered by a leading login.
    pub max_connections: u32,
}

impl LoginOptions {
    pub fn new(initiator_name: &str, target: Option<&str>) -> Self {
        let r: u32 = rand::random();
        LoginOptions {
            initiator_name: initiator_name.into(),
            target: target.map(String::from),
            chap: None,
            mutual: None,
            header_digest: false,
            data_digest: false,
            // Random qualifier (type 10b): each connect is a new I_T nexus.
            isid: [0x80, 0x00, (r >> 24) as u8, (r >> 16) as u8, (r >> 8) as u8, r as u8],
            tsih: 0,
            cid: 0,
            max_connections: 1,
        }
    }
}

#[derive(Clone, Debug)]
pub struct SessionParams {
    pub header_digest: bool,
    pub data_digest: bool,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub first_burst: u32,
    pub max_burst: u32,
    /// The target's MaxRecvDataSegmentLength: our largest data segment.
    pub max_send_dsl: u32,
    pub tsih: u16,
    pub target_portal_group_tag: Option<u32>,
    /// MaxConnections the target agreed to (leading login).
    pub max_connections: u32,
}

impl Default for SessionParams {
    fn default() -> Self {
        SessionParams {
            header_digest: false,
            data_digest: false,
            immediate_data: true,
            initial_r2t: true,
            first_burst: 65536,
            max_burst: 262_144,
            max_send_dsl: 8192,
            tsih: 0,
            target_portal_group_tag: None,
            max_connections: 1,
        }
    }
}

const OUR_MRDSL: u32 = 262_144;

/// A login refusal: status class and detail as the target sent them.
pub fn status_error(class: u8, detail: u8) -> std::io::Error {
    let what = match (class, detail) {
        (2, 1) => "authentication failed",
        (2, 2) => "initiator not authorized",
        (2, 3) => "target not found",
        (2, 0) => "initiator error",
        _ => "login refused",
    };
    err(std::io::ErrorKind::PermissionDenied, format!("{what} (status {class:02x}/{detail:02x})"))
}

fn send(s: &mut Session, opts: &LoginOptions, flags: u8, keys: &[(String, String)]) -> std::io::Result<(Bhs, Vec<(String, String)>)> {
    let mut h = Bhs::new(op::LOGIN_REQ, flags);
    h.set_immediate();
    h.0[at::ISID..at::ISID + 6].copy_from_slice(&opts.isid);
    h.set_u16(at::TSIH, opts.tsih);
    h.set_itt(0);
    h.set_u16(20, opts.cid);
    h.set_u32(at::W24, s.cmd_sn());
    h.set_u32(at::W28, s.exp_stat_sn);
    let text = pdu::encode_text(keys);
    // Login PDUs never carry digests.
    pdu::encode(&mut s.tx, &h, &[], &text, false, false);
    s.flush_blocking()?;
    let (r, data) = s.recv_blocking(Duration::from_secs(15))?;
    if r.opcode() != op::LOGIN_RSP {
        return Err(err(std::io::ErrorKind::InvalidData, format!("expected a login response, got opcode {:#x}", r.opcode())));
    }
    let (class, detail) = (r.0[36], r.0[37]);
    if class != 0 {
        return Err(status_error(class, detail));
    }
    s.exp_stat_sn = r.u32_at(at::W24).wrapping_add(1);
    if opts.tsih == 0 {
        s.max_cmd_sn.store(r.u32_at(at::W32), std::sync::atomic::Ordering::Release);
    } else {
        s.raise_max_cmd_sn(r.u32_at(at::W32));
    }
    let pairs = pdu::parse_text(&data).map_err(|e| err(std::io::ErrorKind::InvalidData, e.to_string()))?;
    Ok((r, pairs))
}

fn kv(k: &str, v: impl Into<String>) -> (String, String) {
    (k.to_string(), v.into())
}

fn get<'a>(p: &'a [(String, String)], k: &str) -> Option<&'a str> {
    p.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str())
}

pub fn run(s: &mut Session, opts: &LoginOptions) -> std::io::Result<()> {
    let mut first = vec![kv("InitiatorName", opts.initiator_name.clone())];
    match &opts.target {
        Some(t) => {
            first.push(kv("SessionType", "Normal"));
            first.push(kv("TargetName", t.clone()));
        }
        None => first.push(kv("SessionType", "Discovery")),
    }
    let mut tpgt = None;
    // Security stage (CSG 0 → NSG 1).
    let mut keys = first.clone();
    keys.push(kv("AuthMethod", if opts.chap.is_some() { "CHAP" } else { "None" }));
    let (mut r, mut ans) = send(s, opts, F_TRANSIT | 1, &keys)?;
    tpgt = tpgt.or(get(&ans, "TargetPortalGroupTag").and_then(|v| v.parse().ok()));
    if let Some((user, secret)) = &opts.chap {
        if get(&ans, "AuthMethod") != Some("CHAP") {
            return Err(err(std::io::ErrorKind::PermissionDenied, "target did not agree to CHAP"));
        }
        let (_, a) = send(s, opts, 0, &[kv("CHAP_A", "5")])?;
        let id: u8 = get(&a, "CHAP_I").and_then(|v| v.parse().ok()).ok_or_else(|| err(std::io::ErrorKind::InvalidData, "no CHAP_I"))?;
        let ch = get(&a, "CHAP_C").and_then(decode_binary).ok_or_else(|| err(std::io::ErrorKind::InvalidData, "no CHAP_C"))?;
        let mut k = vec![kv("CHAP_N", user.clone()), kv("CHAP_R", format!("0x{}", hex(&chap_response(id, secret.as_bytes(), &ch))))];
        let my_id: u8 = rand::random();
        let my_ch: [u8; 16] = rand::random();
        if opts.mutual.is_some() {
            k.push(kv("CHAP_I", my_id.to_string()));
            k.push(kv("CHAP_C", format!("0x{}", hex(&my_ch))));
        }
        let (rr, a) = send(s, opts, F_TRANSIT | 1, &k)?;
        if let Some((_, msecret)) = &opts.mutual {
            let got = get(&a, "CHAP_R").and_then(decode_binary).ok_or_else(|| err(std::io::ErrorKind::PermissionDenied, "target sent no mutual CHAP response"))?;
            if got != chap_response(my_id, msecret.as_bytes(), &my_ch) {
                return Err(err(std::io::ErrorKind::PermissionDenied, "target failed mutual CHAP"));
            }
        }
        r = rr;
        ans = a;
    }
    let _ = ans;
    // Wait for the target to agree to leave the security stage.
    let mut guard = 0;
    while r.flags() & F_TRANSIT == 0 {
        guard += 1;
        if guard > 8 {
            return Err(err(std::io::ErrorKind::InvalidData, "target never left the security stage"));
        }
        let (rr, _) = send(s, opts, F_TRANSIT | 1, &[])?;
        r = rr;
    }
    // Operational stage (CSG 1 → NSG 3).
    let dg = |on: bool| if on { "CRC32C" } else { "None" };
    let mut k = vec![
        kv("HeaderDigest", dg(opts.header_digest)),
        kv("DataDigest", dg(opts.data_digest)),
        kv("MaxRecvDataSegmentLength", OUR_MRDSL.to_string()),
    ];
    if opts.tsih == 0 {
        k.extend([kv("DefaultTime2Wait", "0"), kv("DefaultTime2Retain", "0"), kv("ErrorRecoveryLevel", "0")]);
    }
    if opts.target.is_some() && opts.tsih == 0 {
        // Leading-only keys: a connection joining a session has the session's (RFC 7143 §13).
        k.extend([
            kv("MaxConnections", opts.max_connections.max(1).to_string()),
            kv("InitialR2T", "No"),
            kv("ImmediateData", "Yes"),
            kv("MaxBurstLength", "16776192"),
            kv("FirstBurstLength", "262144"),
            kv("MaxOutstandingR2T", "8"),
            kv("DataPDUInOrder", "Yes"),
            kv("DataSequenceInOrder", "Yes"),
        ]);
    }
    let mut p = SessionParams::default();
    let mut flags = F_TRANSIT | (1 << 2) | 3;
    for _ in 0..8 {
        let (rr, a) = send(s, opts, flags, &k)?;
        for (key, v) in &a {
            let n = v.parse::<u32>().ok();
            match key.as_str() {
                "HeaderDigest" => p.header_digest = v == "CRC32C",
                "DataDigest" => p.data_digest = v == "CRC32C",
                "InitialR2T" => p.initial_r2t = v == "Yes",
                "ImmediateData" => p.immediate_data = v == "Yes",
                "MaxRecvDataSegmentLength" => p.max_send_dsl = n.unwrap_or(8192).max(512),
                "MaxBurstLength" => p.max_burst = n.unwrap_or(262_144),
                "FirstBurstLength" => p.first_burst = n.unwrap_or(65536),
                "TargetPortalGroupTag" => tpgt = tpgt.or(n),
                "MaxConnections" => p.max_connections = n.unwrap_or(1),
                _ => {}
            }
        }
        if rr.flags() & F_TRANSIT != 0 && rr.flags() & 3 == 3 {
            p.tsih = rr.u16_at(at::TSIH);
            p.first_burst = p.first_burst.min(p.max_burst);
            p.target_portal_group_tag = tpgt;
            s.params = p;
            return Ok(());
        }
        k.clear();
        flags = F_TRANSIT | (1 << 2) | 3;
    }
    Err(err(std::io::ErrorKind::InvalidData, "login did not complete"))
}
