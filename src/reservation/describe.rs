//! The management view of a volume's reservations (reservation_get).

use super::nexus::Nexus;
use super::Reservations;

impl Reservations {
    /// The management view (reservation_get).
    pub fn describe(&self) -> serde_json::Value {
        let g = self.inner.lock().unwrap();
        let s = &g.state;
        let regs: Vec<_> = s
            .registrants
            .iter()
            .map(|r| {
                let mut v = serde_json::json!({
                    "key": format!("0x{:016x}", r.key),
                    "holder": s.is_holder(r),
                    "all_tg_pt": r.all_tg_pt,
                });
                match &r.nexus {
                    Nexus::Iscsi { initiator_port, target_port, rel_port_id } => {
                        v["protocol"] = "iscsi".into();
                        v["initiator_port"] = initiator_port.clone().into();
                        v["target_port"] = target_port.clone().into();
                        v["relative_target_port_id"] = (*rel_port_id).into();
                    }
                    Nexus::Nvme { host_id, host_nqn } => {
                        v["protocol"] = "nvme".into();
                        v["hostnqn"] = host_nqn.clone().into();
                        v["hostid"] = uuid::Uuid::from_bytes(*host_id).hyphenated().to_string().into();
                    }
                }
                v
            })
            .collect();
        let holder = s.holder().map(|h| h.nexus.describe());
        serde_json::json!({
            "generation": s.generation,
            "aptpl": s.aptpl,
            "state_file": self.store.lock().unwrap().as_ref().map(|st| st.path.display().to_string()),
            "reservation": s.reservation.map(|r| serde_json::json!({
                "type": format!("{:?}", r.rtype),
                "scsi_type": r.rtype.scsi_code(),
                "nvme_rtype": r.rtype.nvme_code(),
                "key": format!("0x{:016x}", s.reservation_key()),
                "holder": if r.rtype.all_registrants() { None } else { holder },
                "all_registrants": r.rtype.all_registrants(),
            })),
            "registrants": regs,
            "spc2_reservation_holder": g.spc2.as_ref().map(|n| n.describe()),
        })
    }
}
