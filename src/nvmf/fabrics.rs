//! Fabrics commands (NVMe over Fabrics 1.1, section 3.3): Connect, Property Get/Set, Disconnect.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::nvme::spec::{fctype, prop, sc, Sqe, Status};
use crate::nvmf::subsystem::QpairInfo;
use crate::nvmf::{Ctrlr, ListenAddr, SubType, Target, TransportOpts};

/// Connect command data (NVMe-oF 3.3.1, Figure 20).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectData {
    pub hostid: [u8; 16],
    pub cntlid: u16,
    pub subnqn: String,
    pub hostnqn: String,
}

impl ConnectData {
    pub fn decode(b: &[u8]) -> Option<ConnectData> {
        if b.len() < 1024 {
            return None;
        }
        Some(ConnectData {
            hostid: b[0..16].try_into().ok()?,
            cntlid: u16::from_le_bytes([b[16], b[17]]),
            subnqn: crate::nvme::spec::get_str(&b[256..512]),
            hostnqn: crate::nvme::spec::get_str(&b[512..768]),
        })
    }
    pub fn encode(&self) -> [u8; 1024] {
        let mut b = [0u8; 1024];
        b[0..16].copy_from_slice(&self.hostid);
        b[16..18].copy_from_slice(&self.cntlid.to_le_bytes());
        let s = self.subnqn.as_bytes();
        b[256..256 + s.len().min(255)].copy_from_slice(&s[..s.len().min(255)]);
        let h = self.hostnqn.as_bytes();
        b[512..512 + h.len().min(255)].copy_from_slice(&h[..h.len().min(255)]);
        b
    }
}

/// Connect SQE fields: record format, queue id, 0's based SQ size, attributes, keep-alive timeout.
pub fn build_connect_sqe(cid: u16, qid: u16, sqsize: u16, kato_ms: u32, disable_sqflow: bool) -> Sqe {
    let mut s = Sqe::default();
    s.set_opcode(crate::nvme::spec::admin::FABRICS).set_cid(cid);
    s.0[4] = fctype::CONNECT;
    s.0[40..42].copy_from_slice(&0u16.to_le_bytes());
    s.0[42..44].copy_from_slice(&qid.to_le_bytes());
    s.0[44..46].copy_from_slice(&sqsize.to_le_bytes());
    s.0[46] = if disable_sqflow { 1 << 2 } else { 0 };
    s.0[48..52].copy_from_slice(&kato_ms.to_le_bytes());
    s.set_sgl(crate::nvme::spec::Sgl { address: 0, length: 1024, id: crate::nvme::spec::sgl::DATA_BLOCK_OFFSET });
    s
}

/// A successful Connect: the controller, queue id, number of SQ entries, SQ flow control off.
pub struct Connected {
    pub ctrlr: Arc<Ctrlr>,
    pub qid: u16,
    pub sq_entries: u32,
    pub sqflow_disabled: bool,
}

/// A failed Connect: status and the Invalid Parameter info of dword 0 (NVMe-oF Figure 22:
/// bytes 1:0 offset, byte 2 bit 0 = in the data rather than the SQE).
pub type ConnectErr = (Status, u32);

fn invalid_param(in_data: bool, offset: u16) -> ConnectErr {
    (Status::specific(sc::CONNECT_INVALID_PARAMETERS), offset as u32 | (in_data as u32) << 16)
}

/// Run a Connect arriving on a connection accepted on `listen`; `tls` holds the host and
/// subsystem NQNs of the connection's TLS PSK identity when it is secured.
#[allow(clippy::too_many_arguments)]
pub fn connect(t: &Target, opts: &TransportOpts, listen: &ListenAddr, sqe: &Sqe, data: &[u8], reactor: u32, peer: &str, tls: Option<&(String, String)>) -> Result<Connected, ConnectErr> {
    let recfmt = u16::from_le_bytes([sqe.0[40], sqe.0[41]]);
    let qid = u16::from_le_bytes([sqe.0[42], sqe.0[43]]);
    let sqsize = u16::from_le_bytes([sqe.0[44], sqe.0[45]]);
    let cattr = sqe.0[46];
    let kato = sqe.cdw(12);
    if recfmt != 0 {
        return Err((Status::specific(sc::CONNECT_INCOMPATIBLE_FORMAT), 0));
    }
    let d = ConnectData::decode(data).ok_or((Status::generic(sc::SGL_DATA_LENGTH_INVALID), 0))?;
    let sub = t.subsystem(&d.subnqn).ok_or_else(|| invalid_param(true, 256))?;
    if sub.subtype == SubType::Nvme && !sub.listens_on(listen) {
        // Only subsystems that listen on this address accept connections through it.
        return Err(invalid_param(true, 256));
    }
    if !sub.host_allowed(&d.hostnqn) {
        return Err((Status::specific(sc::CONNECT_INVALID_HOST), 0));
    }
    match tls {
        // A listener added with secure_channel admits TLS connections only.
        None if sub.listener_secure(listen) => return Err((Status::specific(sc::CONNECT_INVALID_HOST), 0)),
        // The PSK authenticated one host for one subsystem (its identity names both): a Connect
        // naming others is refused (NVMe/TCP §3.6.1.5). Discovery takes any subsystem NQN in
        // the identity, as Linux nvmet does for the well-known discovery NQN.
        Some((h, s)) if *h != d.hostnqn || (*s != d.subnqn && sub.subtype != SubType::Discovery) => {
            tracing::warn!(peer, hostnqn = %d.hostnqn, subnqn = %d.subnqn, "Connect does not match the TLS PSK identity ({h} {s})");
            return Err((Status::specific(sc::CONNECT_INVALID_HOST), 0));
        }
        _ => {}
    }
    let max_entries = if qid == 0 { opts.max_aq_depth } else { opts.max_queue_depth };
    if sqsize == 0 || sqsize as u32 + 1 > max_entries {
        return Err(invalid_param(false, 44));
    }
    let sqflow_disabled = cattr & (1 << 2) != 0;
    if qid == 0 {
        if d.cntlid != 0xffff {
            // Dynamic controller model: the host must ask for any controller.
            return Err(invalid_param(true, 16));
        }
        let cntlid = sub.alloc_cntlid().ok_or((Status::specific(sc::CONNECT_CONTROLLER_BUSY), 0))?;
        let max_io = if sub.subtype == SubType::Discovery { 0 } else { opts.max_io_qpairs_per_ctrlr as u16 };
        let ana = sub.listener_ana(listen).unwrap_or_default();
        let c = Arc::new(Ctrlr::new(cntlid, sub.clone(), d.hostnqn, d.hostid, kato, max_io).on_listener(ana));
        c.touch_keepalive();
        c.state.lock().unwrap().qpairs.push(QpairInfo { qid: 0, reactor, listen: listen.clone(), peer: peer.to_string() });
        sub.ctrlrs.lock().unwrap().push(c.clone());
        return Ok(Connected { ctrlr: c, qid, sq_entries: sqsize as u32 + 1, sqflow_disabled });
    }
    let c = sub.find_ctrlr(d.cntlid).ok_or_else(|| invalid_param(true, 16))?;
    if c.hostnqn != d.hostnqn || c.hostid != d.hostid || c.is_dead() {
        return Err(invalid_param(true, 16));
    }
    let mut st = c.state.lock().unwrap();
    if st.cc & 1 == 0 || st.csts & 1 == 0 {
        // I/O queues may be created only on an enabled controller.
        return Err((Status::generic(sc::COMMAND_SEQUENCE_ERROR), 0));
    }
    if qid > st.num_io_queues || st.qpairs.iter().any(|q| q.qid == qid) {
        return Err(invalid_param(false, 42));
    }
    st.qpairs.push(QpairInfo { qid, reactor, listen: listen.clone(), peer: peer.to_string() });
    drop(st);
    Ok(Connected { ctrlr: c, qid, sq_entries: sqsize as u32 + 1, sqflow_disabled })
}

/// CAP (Base 3.1.4.1): MQES, CQR, timeout, NVM command set, page size 4 KiB.
pub fn cap(opts: &TransportOpts) -> u64 {
    let mqes = (opts.max_queue_depth - 1) as u64;
    mqes | 1 << 16 | 30u64 << 24 | 1 << 37
}

pub const VERSION: u32 = 0x0001_0400;

/// Property Get (NVMe-oF 3.3.2): returns the value, 4 or 8 bytes wide.
pub fn property_get(c: &Ctrlr, opts: &TransportOpts, sqe: &Sqe) -> Result<u64, Status> {
    let size8 = sqe.0[40] & 7 == 1;
    let ofst = sqe.cdw(11);
    let st = c.state.lock().unwrap();
    let v = match (ofst, size8) {
        (prop::CAP, true) => cap(opts),
        (prop::VS, false) => VERSION as u64,
        (prop::CC, false) => st.cc as u64,
        (prop::CSTS, false) => st.csts as u64,
        _ => return Err(Status::generic(sc::INVALID_FIELD)),
    };
    Ok(v)
}

/// Property Set: only CC is writable. EN sets/clears RDY; SHN completes shutdown at once (no
/// volatile state to flush on a RAM or io_uring backend beyond what Flush already does).
pub fn property_set(c: &Ctrlr, sqe: &Sqe) -> Status {
    let size8 = sqe.0[40] & 7 == 1;
    let ofst = sqe.cdw(11);
    let value = u64::from_le_bytes(sqe.0[48..56].try_into().unwrap());
    if ofst != prop::CC || size8 {
        return Status::generic(sc::INVALID_FIELD);
    }
    let v = value as u32;
    let mut st = c.state.lock().unwrap();
    let old = st.cc;
    st.cc = v;
    if v & 1 != 0 && old & 1 == 0 {
        st.csts |= 1;
    } else if v & 1 == 0 && old & 1 != 0 {
        st.csts &= !1;
    }
    let shn = (v >> 14) & 3;
    if shn != 0 {
        st.csts = (st.csts & !(3 << 2)) | (2 << 2); // SHST: shutdown complete
    } else {
        st.csts &= !(3 << 2);
    }
    Status::SUCCESS
}

/// Is this fabrics command type one we know? (Authentication is not supported.)
pub fn known_fctype(t: u8) -> bool {
    matches!(t, fctype::CONNECT | fctype::PROPERTY_GET | fctype::PROPERTY_SET | fctype::DISCONNECT)
}

/// Count this controller's I/O queue pairs (nvmf_subsystem_get_controllers).
pub fn num_io_qpairs(c: &Ctrlr) -> usize {
    let _ = c.dead.load(Ordering::Relaxed);
    c.state.lock().unwrap().qpairs.iter().filter(|q| q.qid != 0).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvmf::{SubType, Subsystem, SubsystemParams};

    #[test]
    fn connect_data_roundtrip() {
        let d = ConnectData { hostid: [7; 16], cntlid: 0xffff, subnqn: "nqn.a".into(), hostnqn: "nqn.b".into() };
        assert_eq!(ConnectData::decode(&d.encode()).unwrap(), d);
        assert!(ConnectData::decode(&[0u8; 100]).is_none());
        let s = build_connect_sqe(3, 2, 31, 500, true);
        assert_eq!((s.cid(), u16::from_le_bytes([s.0[42], s.0[43]]), s.cdw(12), s.0[46]), (3, 2, 500, 4));
    }

    #[test]
    fn properties_enable_and_shutdown() {
        let params = SubsystemParams { serial_number: "s".into(), model_number: "m".into(), max_namespaces: 1, min_cntlid: 1, max_cntlid: 10, ana_reporting: false };
        let sub = Arc::new(Subsystem::new("nqn.x".into(), SubType::Nvme, params, true));
        let c = Ctrlr::new(1, sub, "nqn.h".into(), [0; 16], 0, 4);
        let opts = TransportOpts::default();
        let get = |ofst: u32, eight: bool| {
            let mut s = Sqe::default();
            s.0[40] = eight as u8;
            s.set_cdw(11, ofst);
            property_get(&c, &opts, &s)
        };
        let set = |v: u32| {
            let mut s = Sqe::default();
            s.set_cdw(11, prop::CC);
            s.0[48..52].copy_from_slice(&v.to_le_bytes());
            property_set(&c, &s)
        };
        assert_eq!(get(prop::CAP, true).unwrap() & 0xffff, 127);
        assert!(get(prop::CAP, false).is_err(), "CAP is 8 bytes");
        assert_eq!(get(prop::VS, false).unwrap(), VERSION as u64);
        assert!(set(1).is_ok());
        assert_eq!(get(prop::CSTS, false).unwrap() & 1, 1);
        assert!(set(1 | 1 << 14).is_ok());
        assert_eq!((get(prop::CSTS, false).unwrap() >> 2) & 3, 2);
        assert!(set(0).is_ok());
        assert_eq!(get(prop::CSTS, false).unwrap() & 1, 0);
        let mut bad = Sqe::default();
        bad.set_cdw(11, prop::VS);
        assert!(!property_set(&c, &bad).is_ok(), "VS is read-only");
    }
}
