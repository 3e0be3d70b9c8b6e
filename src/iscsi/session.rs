//! One iSCSI session shared by its connections (MC/S, RFC 7143 §4.3, §6.2): identity, the
//! leading connection's session-wide keys, the session-wide CmdSN state and the connections.
//! Connections stay on the reactor that accepted them; what they share here is an atomic
//! (ExpCmdSN, on the I/O path) and a short lock taken only at login, logout and close.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::reactor::HandlerRef;
use crate::scsi::ua::NexusReported;

/// Parameters in force after login (RFC 7143 §13 names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub header_digest: bool,
    pub data_digest: bool,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    /// What the initiator accepts per PDU (its MaxRecvDataSegmentLength): limits our Data-In.
    pub max_xmit_dsl: u32,
    /// What we declared we accept per PDU.
    pub max_recv_dsl: u32,
    pub max_burst: u32,
    pub first_burst: u32,
    pub max_outstanding_r2t: u32,
    pub time2wait: u32,
    pub time2retain: u32,
    pub max_connections: u32,
}

impl Negotiated {
    /// RFC 7143 defaults, with our declared receive size.
    pub fn defaults(max_recv_dsl: u32) -> Self {
        Negotiated {
            header_digest: false,
            data_digest: false,
            initial_r2t: true,
            immediate_data: true,
            max_xmit_dsl: 8192,
            max_recv_dsl,
            max_burst: 262_144,
            first_burst: 65_536,
            max_outstanding_r2t: 1,
            time2wait: 2,
            time2retain: 20,
            max_connections: 1,
        }
    }
}

/// One connection of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub cid: u16,
    /// The target-wide connection id (`ConnInfo::id`).
    pub conn_id: u64,
    pub handler: HandlerRef,
}

pub struct Session {
    pub tsih: u16,
    pub isid: [u8; 6],
    pub initiator_name: String,
    /// Empty for a discovery session.
    pub target_name: String,
    pub pg_tag: u32,
    /// The leading login's negotiated keys: the LO keys of RFC 7143 §13 hold for every connection.
    pub params: Negotiated,
    /// The CmdSN the session expects next (RFC 7143 §4.2.2.1). Only the connection holding the
    /// command with this CmdSN advances it, so loads and stores suffice (no read-modify-write).
    pub exp_cmd_sn: Arc<AtomicU32>,
    /// Task slots per connection: the CmdSN window (MaxCmdSN - ExpCmdSN + 1) never exceeds it.
    pub queue_depth: u32,
    members: Mutex<Vec<Member>>,
    /// The unit attentions reported to the session's I_T nexus, set by the leading connection:
    /// each reaches the initiator once, not once per connection.
    reported: OnceLock<Arc<NexusReported>>,
}

/// Why a connection cannot join a session.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error("the session has MaxConnections={0} connections")]
    Full(u32),
    #[error("the session has ended")]
    Ended,
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub fn new(tsih: u16, isid: [u8; 6], initiator_name: &str, target_name: &str, pg_tag: u32, params: Negotiated, first_cmd_sn: u32, queue_depth: u32) -> Arc<Session> {
        Arc::new(Session {
            tsih,
            isid,
            initiator_name: initiator_name.to_string(),
            target_name: target_name.to_string(),
            pg_tag,
            params,
            exp_cmd_sn: Arc::new(AtomicU32::new(first_cmd_sn)),
            queue_depth,
            members: Mutex::new(Vec::new()),
            reported: OnceLock::new(),
        })
    }

    /// The nexus' unit attention record: the leading connection's, or `mine` if it is first.
    pub fn nexus_reported(&self, mine: Arc<NexusReported>) -> Arc<NexusReported> {
        self.reported.get_or_init(|| mine).clone()
    }

    pub fn exp_cmd_sn(&self) -> u32 {
        self.exp_cmd_sn.load(Ordering::Acquire)
    }

    /// Whether a login with this identity may join (RFC 7143 §6.3.1: the TSIH names the
    /// session, ISID, InitiatorName and TargetName must be its own, over the same portal group).
    pub fn matches(&self, isid: &[u8; 6], initiator_name: &str, target_name: &str, pg_tag: u32) -> bool {
        &self.isid == isid
            && self.initiator_name.eq_ignore_ascii_case(initiator_name)
            && self.target_name.eq_ignore_ascii_case(target_name)
            && self.pg_tag == pg_tag
    }

    /// Add a connection. A member with the same CID is replaced (connection reinstatement, RFC
    /// 7143 §6.3.4) and returned so the caller closes it. The leading connection joins an empty
    /// session; a session whose members all left has ended and takes nobody.
    pub fn join(&self, m: Member, leading: bool) -> Result<Option<Member>, JoinError> {
        let mut ms = self.members.lock().unwrap();
        if ms.is_empty() && !leading {
            return Err(JoinError::Ended);
        }
        if let Some(i) = ms.iter().position(|x| x.cid == m.cid) {
            let old = std::mem::replace(&mut ms[i], m);
            return Ok(Some(old));
        }
        if ms.len() >= self.params.max_connections.max(1) as usize {
            return Err(JoinError::Full(self.params.max_connections));
        }
        ms.push(m);
        Ok(None)
    }

    /// Remove a connection; true when it was the last one (the session, and its I_T nexus, end).
    pub fn leave(&self, conn_id: u64) -> bool {
        let mut ms = self.members.lock().unwrap();
        ms.retain(|x| x.conn_id != conn_id);
        ms.is_empty()
    }

    pub fn members(&self) -> Vec<Member> {
        self.members.lock().unwrap().clone()
    }

    pub fn len(&self) -> usize {
        self.members.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(cid: u16, id: u64) -> Member {
        Member { cid, conn_id: id, handler: HandlerRef { reactor: 0, slot: id as u32, gen: 0 } }
    }

    #[test]
    fn join_bounds_and_reinstatement() {
        let mut p = Negotiated::defaults(8192);
        p.max_connections = 2;
        let s = Session::new(1, [1; 6], "iqn.i", "iqn.t", 1, p, 5, 64);
        assert_eq!(s.join(member(0, 10), false), Err(JoinError::Ended));
        assert_eq!(s.join(member(0, 10), true), Ok(None));
        assert_eq!(s.join(member(1, 11), false), Ok(None));
        assert_eq!(s.join(member(2, 12), false), Err(JoinError::Full(2)));
        // Same CID: the old connection is handed back to be closed.
        assert_eq!(s.join(member(1, 13), false), Ok(Some(member(1, 11))));
        assert!(!s.leave(10));
        assert!(s.leave(13));
        assert!(s.matches(&[1; 6], "IQN.I", "iqn.t", 1));
        assert!(!s.matches(&[2; 6], "iqn.i", "iqn.t", 1));
        assert_eq!(s.exp_cmd_sn(), 5);
    }
}
