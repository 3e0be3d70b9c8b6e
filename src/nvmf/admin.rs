//! Admin commands of a fabrics controller (Base 5): Identify, Get Log Page, Set/Get Features,
//! Keep Alive. Asynchronous Event Requests and Abort need the queue pair's state and are handled
//! by the connection; this module decides everything else. Not on the I/O path.

use std::sync::Arc;

use crate::nvme::ana;
use crate::nvme::reservation as nv;
use crate::nvme::spec::{self, admin, cns, fid, lid, sc, Sqe, Status};
use crate::nvmf::{discovery, Ctrlr, SubType, Target, TransportOpts};

pub const FIRMWARE: &str = "0.1";

/// What the connection should do with an admin command.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Complete with this status and dword 0; if successful, send `out` to the host first.
    Complete { status: Status, dw0: u32 },
    /// An Asynchronous Event Request: the connection parks it.
    Aer,
    /// Abort: the connection looks up the command.
    Abort,
}

fn done(status: Status) -> Outcome {
    Outcome::Complete { status, dw0: 0 }
}

/// Execute admin command `sqe` for controller `c`; data for the host goes to `out`, never more
/// than `max_out` bytes (the host's buffer: sizes a host writes in a command are capped by it).
pub fn execute(t: &Target, opts: &TransportOpts, c: &Arc<Ctrlr>, sqe: &Sqe, data_in: &[u8], max_out: usize, out: &mut Vec<u8>) -> Outcome {
    out.clear();
    c.touch_keepalive();
    let discovery = c.sub.subtype == SubType::Discovery;
    match sqe.opcode() {
        admin::IDENTIFY => identify(opts, c, sqe, out),
        admin::GET_LOG_PAGE => get_log_page(t, c, sqe, max_out, out),
        admin::SET_FEATURES => set_features(c, sqe, data_in),
        admin::GET_FEATURES => get_features(c, sqe, out),
        admin::KEEP_ALIVE => done(Status::SUCCESS),
        admin::ASYNC_EVENT_REQUEST => Outcome::Aer,
        admin::ABORT if !discovery => Outcome::Abort,
        // Queues are created by Connect on fabrics: these PCIe commands are invalid here.
        admin::CREATE_IO_SQ | admin::CREATE_IO_CQ | admin::DELETE_IO_SQ | admin::DELETE_IO_CQ => done(Status::generic(sc::INVALID_OPCODE)),
        _ => done(Status::generic(sc::INVALID_OPCODE)),
    }
}

fn identify(opts: &TransportOpts, c: &Arc<Ctrlr>, sqe: &Sqe, out: &mut Vec<u8>) -> Outcome {
    let cns_ = (sqe.cdw(10) & 0xff) as u8;
    let nsid = sqe.nsid();
    let mut page = [0u8; 4096];
    let namespaces = c.sub.namespaces();
    let max_ns = c.sub.params.max_namespaces;
    let discovery = c.sub.subtype == SubType::Discovery;
    match cns_ {
        cns::CONTROLLER => {
            let info = spec::ControllerInfo {
                serial: &c.sub.params.serial_number,
                model: &c.sub.params.model_number,
                firmware: FIRMWARE,
                cntlid: c.cntlid,
                subnqn: &c.sub.nqn,
                cntrltype: if discovery { 2 } else { 1 },
                mdts: opts.mdts(),
                max_namespaces: if max_ns == 0 { namespaces.iter().map(|n| n.nsid).max().unwrap_or(0).max(1024) } else { max_ns },
                ioccsz_bytes: 64 + opts.in_capsule_data_size,
                max_cmd: opts.max_queue_depth as u16,
                volatile_write_cache: namespaces.iter().any(|n| n.volume.volatile_write_cache()),
                oui: crate::volume::identity::OUI,
            };
            spec::identify_controller(&info, &mut page);
            if !discovery {
                // ONCS: Reservations; CTRATT bit 0: 128-bit host identifiers (always on fabrics).
                let oncs = u16::from_le_bytes([page[520], page[521]]) | nv::ONCS_RESERVATIONS;
                page[520..522].copy_from_slice(&oncs.to_le_bytes());
                page[96] |= 1;
                // ANA reporting, always on (as Linux nvmet): one group per namespace at most.
                ana::IdentifyAna { max_groups: info.max_namespaces }.encode(&mut page);
            }
        }
        cns::NAMESPACE if !discovery => {
            if nsid == 0 || nsid == 0xffff_ffff {
                return done(Status::generic(sc::INVALID_NAMESPACE));
            }
            // An inactive nsid returns zeros (Base 5.17.2.1); an impossible one is an error.
            match namespaces.iter().find(|n| n.nsid == nsid) {
                Some(n) => {
                    let info = spec::NamespaceInfo {
                        num_blocks: n.volume.num_blocks(),
                        block_size: n.volume.block_size(),
                        nguid: n.nguid,
                        eui64: n.eui64,
                        dealloc_zeroes: n.volume.bdev().info().unmap_zeroes,
                    };
                    spec::identify_namespace(&info, &mut page);
                    page[31] = nv::RESCAP;
                    ana::set_ns_anagrpid(&mut page, n.anagrpid);
                }
                None if max_ns != 0 && nsid > max_ns => return done(Status::generic(sc::INVALID_NAMESPACE)),
                None => {}
            }
        }
        cns::ACTIVE_NS_LIST if !discovery => {
            if nsid >= 0xffff_fffe {
                return done(Status::generic(sc::INVALID_NAMESPACE));
            }
            spec::active_ns_list(namespaces.iter().map(|n| n.nsid), nsid, &mut page);
        }
        cns::NS_ID_DESCRIPTORS if !discovery => match namespaces.iter().find(|n| n.nsid == nsid) {
            Some(n) => spec::ns_id_descriptors(&n.eui64, &n.nguid, n.uuid.as_bytes(), &mut page),
            None => return done(Status::generic(sc::INVALID_NAMESPACE)),
        },
        // I/O command set specific structures for the NVM command set (CSI 0): all-zero means
        // no extra limits (NVM Command Set 4.1.5.2 / 4.1.5.3). Linux asks for them on 1.4 hosts.
        cns::CS_NAMESPACE | cns::CS_CONTROLLER if !discovery && (sqe.cdw(11) >> 24) == 0 => {
            if cns_ == cns::CS_NAMESPACE && !namespaces.iter().any(|n| n.nsid == nsid) {
                return done(Status::generic(sc::INVALID_NAMESPACE));
            }
        }
        _ => return done(Status::generic(sc::INVALID_FIELD)),
    }
    out.extend_from_slice(&page);
    done(Status::SUCCESS)
}

fn get_log_page(t: &Target, c: &Arc<Ctrlr>, sqe: &Sqe, max_out: usize, out: &mut Vec<u8>) -> Outcome {
    let cdw10 = sqe.cdw(10);
    let id = (cdw10 & 0xff) as u8;
    let rae = cdw10 & (1 << 15) != 0;
    let numd = ((cdw10 >> 16) as u64 | ((sqe.cdw(11) & 0xffff) as u64) << 16) + 1;
    // NUMD names the transfer; what we build and zero-fill stops at the host's buffer.
    let len = ((numd * 4) as usize).min(max_out);
    let offset = sqe.cdw(12) as u64 | (sqe.cdw(13) as u64) << 32;
    if offset % 4 != 0 || len > (1 << 20) {
        return done(Status::generic(sc::INVALID_FIELD));
    }
    let discovery = c.sub.subtype == SubType::Discovery;
    let mut page = Vec::new();
    match id {
        lid::DISCOVERY if discovery => discovery::log_page(t, &c.hostnqn, &mut page),
        lid::ERROR => page.resize(64, 0),
        lid::SMART if !discovery => {
            page.resize(512, 0);
            spec::smart_log(0, 0, &mut page);
        }
        lid::FIRMWARE_SLOT if !discovery => {
            page.resize(512, 0);
            spec::firmware_log(FIRMWARE, &mut page);
        }
        lid::CHANGED_NS_LIST if !discovery => {
            page.resize(4096, 0);
            let mut st = c.state.lock().unwrap();
            for (i, id) in st.changed_ns.iter().take(1024).enumerate() {
                page[i * 4..i * 4 + 4].copy_from_slice(&id.to_le_bytes());
            }
            // Reading the log clears it and, unless RAE, re-arms namespace notices.
            st.changed_ns.clear();
            if !rae {
                st.ns_notice_masked = false;
            }
        }
        ana::LID_ANA if !discovery => {
            let rgo = cdw10 & ana::LSP_RGO != 0;
            super::ana::log(t.port_groups(), &c.ana, &c.sub.namespaces()).encode(rgo, &mut page);
            // Reading the log acknowledges the ANA change notice unless RAE.
            if !rae {
                c.state.lock().unwrap().ana_notice_masked = false;
            }
        }
        lid::COMMANDS_EFFECTS if !discovery => {
            page.resize(4096, 0);
            spec::commands_effects_log(&mut page);
            for op in [nv::OPC_RESERVATION_REGISTER, nv::OPC_RESERVATION_REPORT, nv::OPC_RESERVATION_ACQUIRE, nv::OPC_RESERVATION_RELEASE] {
                page[1024 + op as usize * 4] = 1; // CSUPP
            }
        }
        nv::LOG_RESERVATION_NOTIFICATION if !discovery => {
            // One entry from the first namespace holding a notification for this host (each
            // volume keeps its own queue); an empty page when none is pending.
            page.resize(64, 0);
            for n in c.sub.namespaces().iter() {
                if nv::notification_pending(&n.volume, &c.initiator) {
                    page.copy_from_slice(&nv::notification_log(&n.volume, &c.initiator, n.nsid));
                    break;
                }
            }
            if !rae {
                c.state.lock().unwrap().resv_notice_masked = false;
            }
        }
        _ => return Outcome::Complete { status: Status::specific(sc::INVALID_LOG_PAGE), dw0: 0 },
    }
    if offset as usize > page.len() {
        return done(Status::generic(sc::INVALID_FIELD));
    }
    let from = &page[offset as usize..];
    let n = from.len().min(len);
    out.extend_from_slice(&from[..n]);
    out.resize(len, 0);
    done(Status::SUCCESS)
}

fn set_features(c: &Arc<Ctrlr>, sqe: &Sqe, _data_in: &[u8]) -> Outcome {
    let f = (sqe.cdw(10) & 0xff) as u8;
    let save = sqe.cdw(10) & (1 << 31) != 0;
    if save {
        return Outcome::Complete { status: Status::specific(sc::FEATURE_NOT_SAVEABLE), dw0: 0 };
    }
    let v = sqe.cdw(11);
    let mut st = c.state.lock().unwrap();
    match f {
        fid::NUMBER_OF_QUEUES => {
            if v & 0xffff == 0xffff || v >> 16 == 0xffff {
                return done(Status::generic(sc::INVALID_FIELD));
            }
            // Fixed by the transport: report what we allow, whatever was asked (Base 5.27.1.5).
            let n = (c.max_io_qpairs.max(1) - 1) as u32;
            st.num_io_queues = c.max_io_qpairs;
            Outcome::Complete { status: Status::SUCCESS, dw0: n | n << 16 }
        }
        fid::ASYNC_EVENT_CONFIG => {
            st.async_event_config = v;
            done(Status::SUCCESS)
        }
        fid::KEEP_ALIVE_TIMER => {
            st.kato_ms = v;
            drop(st);
            c.touch_keepalive();
            done(Status::SUCCESS)
        }
        // The host identifier comes from Connect on fabrics (NVMe-oF 3.3.1.1; Base 5.27.1.25: Set
        // Features is aborted with Command Sequence Error on message-based controllers). It is
        // the controller's reservation identity (`Ctrlr::initiator`).
        fid::HOST_IDENTIFIER => done(Status::generic(sc::COMMAND_SEQUENCE_ERROR)),
        fid::ARBITRATION | fid::POWER_MANAGEMENT | fid::TEMPERATURE_THRESHOLD | fid::ERROR_RECOVERY | fid::VOLATILE_WRITE_CACHE | fid::INTERRUPT_COALESCING | fid::WRITE_ATOMICITY => {
            st.features.insert(f, v);
            done(Status::SUCCESS)
        }
        _ => done(Status::generic(sc::INVALID_FIELD)),
    }
}

fn get_features(c: &Arc<Ctrlr>, sqe: &Sqe, out: &mut Vec<u8>) -> Outcome {
    let f = (sqe.cdw(10) & 0xff) as u8;
    let sel = (sqe.cdw(10) >> 8) & 7;
    if sel == 3 {
        // Supported capabilities: nothing saveable, everything changeable.
        return Outcome::Complete { status: Status::SUCCESS, dw0: 1 << 2 };
    }
    let st = c.state.lock().unwrap();
    let dw0 = match f {
        fid::NUMBER_OF_QUEUES => {
            let n = (c.max_io_qpairs.max(1) - 1) as u32;
            n | n << 16
        }
        fid::ASYNC_EVENT_CONFIG => st.async_event_config,
        fid::KEEP_ALIVE_TIMER => st.kato_ms,
        nv::FEAT_RESERVATION_NOTIFICATION_MASK | nv::FEAT_RESERVATION_PERSISTENCE if c.sub.subtype != SubType::Discovery => {
            drop(st);
            // Namespace-specific: the namespace named, or the first one for 0 / FFFFFFFFh.
            let nsid = sqe.nsid();
            let namespaces = c.sub.namespaces();
            let ns = namespaces.iter().find(|n| n.nsid == nsid || nsid == 0 || nsid == 0xffff_ffff);
            let Some(ns) = ns else { return done(Status::generic(sc::INVALID_NAMESPACE)) };
            match nv::get_features(&ns.volume, &c.initiator, f) {
                Ok(v) => v,
                Err(e) => return done(Status { sct: e.sct, sc: e.sc, dnr: true }),
            }
        }
        fid::HOST_IDENTIFIER => {
            if sqe.cdw(11) & 1 == 0 {
                // Only the 128-bit extended host identifier exists on fabrics.
                return done(Status::generic(sc::INVALID_FIELD));
            }
            out.extend_from_slice(&c.hostid);
            0
        }
        fid::ARBITRATION | fid::POWER_MANAGEMENT | fid::TEMPERATURE_THRESHOLD | fid::ERROR_RECOVERY | fid::VOLATILE_WRITE_CACHE | fid::INTERRUPT_COALESCING | fid::WRITE_ATOMICITY => {
            let default = if f == fid::TEMPERATURE_THRESHOLD { 273 + 70 } else { 0 };
            *st.features.get(&f).unwrap_or(&default)
        }
        _ => return done(Status::generic(sc::INVALID_FIELD)),
    };
    Outcome::Complete { status: Status::SUCCESS, dw0 }
}
