//! The fuzz targets' bodies, one function per target. Shared by the cargo-fuzz binaries in
//! `fuzz/fuzz_targets/` and by the corpus replay test (`tests/fuzz_replay.rs`), so CI runs every
//! committed corpus file through exactly what the campaign ran.
//!
//! Rules for every entry: it must not panic on any input (decoders never panic), and where the
//! code has a property worth more than "no panic" the entry asserts it (a failed assertion is a
//! finding, like a crash). Each entry documents its input format; seeds are written in it by
//! `tests/fuzz_replay.rs` (`generate_seeds`, `record_seeds`).

#![allow(dead_code)]

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use serde_json::Value;

use palisade::iscsi::login::{chap_response, decode_binary, hex, Login, LoginCtx, SessionType, Step};
use palisade::iscsi::pdu::{self, op, parse_frame, parse_header, parse_text, BHS_LEN};
use palisade::iscsi::target::{AuthGroup, ChapPolicy, InitiatorGroup, Node, PgIg, Secret};
use palisade::nvme::spec::{Cqe, Sqe};

/// The targets, by name (the fuzz binary names and the corpus directory names).
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("nvmf_pdu", nvmf_pdu),
    ("iscsi_pdu", iscsi_pdu),
    ("iscsi_header", iscsi_header),
    ("iscsi_login", iscsi_login),
    ("scsi_cdb", scsi_cdb),
    ("nvme_cmd", nvme_cmd),
    ("rpc_params", rpc_params),
    ("nvme_auth", nvme_auth),
];

/// Findings already reported and being fixed, named in `PALISADE_FUZZ_KNOWN` (comma-separated),
/// are stepped around instead of asserted, so a campaign on code that still has them explores
/// past them: `chap-bypass` (issue 11 finding 1), `report-numd` (issue 11 finding 2). The replay
/// test never sets it.
pub fn known(name: &str) -> bool {
    static K: OnceLock<Vec<String>> = OnceLock::new();
    K.get_or_init(|| std::env::var("PALISADE_FUZZ_KNOWN").map(|v| v.split(',').map(str::to_string).collect()).unwrap_or_default())
        .iter()
        .any(|k| k == name)
}

// ---- NVMe/TCP PDUs ------------------------------------------------------------------------

/// Input: byte 0 bit 0 = header digest, bit 1 = data digest; then one PDU as received.
pub fn nvmf_pdu(data: &[u8]) {
    use palisade::nvmf::tcp::pdu::{frame, CommonHeader, DataHeader, Digests, IcReq, IcResp, TermReq};
    let dg = Digests { header: data.first().is_some_and(|b| b & 1 != 0), data: data.first().is_some_and(|b| b & 2 != 0) };
    let data = data.get(1..).unwrap_or(&[]);
    if let Some(ch) = CommonHeader::parse(data) {
        if let Ok(l) = frame(ch, dg, 1 << 20) {
            let _ = l.check_digests(data);
            let _ = l.data(data);
            if data.len() >= 72 {
                let _ = Sqe::from_slice(&data[8..72]);
            }
        }
    }
    let _ = IcReq::decode(data);
    let _ = IcResp::decode(data);
    let _ = DataHeader::decode(data);
    let _ = TermReq::decode(data);
    let _ = Cqe::decode(data);
    let _ = palisade::nvmf::fabrics::ConnectData::decode(data);
}

// ---- iSCSI PDU framing --------------------------------------------------------------------

/// Input: byte 0 bit 0 = HeaderDigest, bit 1 = DataDigest; then a byte stream of PDUs as a
/// connection receives them. Frames every PDU in turn, checks the frame lies inside the buffer,
/// decodes text segments and re-encodes each PDU to check the codec round-trips.
pub fn iscsi_pdu(data: &[u8]) {
    let hd = data.first().is_some_and(|b| b & 1 != 0);
    let dd = data.first().is_some_and(|b| b & 2 != 0);
    let mut buf = data.get(1..).unwrap_or(&[]);
    for _ in 0..64 {
        let f = match parse_frame(buf, hd, dd, 1 << 20) {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err((_, Some(f))) => f, // data digest error: the connection skips the PDU
            Err((_, None)) => break,
        };
        assert!(f.total <= buf.len() && f.total >= BHS_LEN, "frame outside the buffer");
        assert!(f.ahs.0 <= f.ahs.1 && f.ahs.1 <= f.data.0 && f.data.0 <= f.data.1 && f.data.1 <= f.total);
        let (ahs, seg) = (&buf[f.ahs.0..f.ahs.1], &buf[f.data.0..f.data.1]);
        let b = f.bhs;
        let _ = (b.opcode(), b.immediate(), b.final_bit(), b.itt(), b.u32_at(pdu::at::W24));
        let _ = palisade::scsi::decode_lun(b.lun_raw());
        if matches!(b.opcode(), op::LOGIN_REQ | op::TEXT_REQ) {
            let _ = parse_text(seg);
        }
        // What we decoded encodes back to the same frame (the target's encoder is the same code).
        let mut out = Vec::new();
        pdu::encode(&mut out, &b, ahs, seg, hd, dd);
        let g = parse_frame(&out, hd, dd, 1 << 20).ok().flatten().expect("re-encoded PDU frames");
        assert_eq!(&out[g.data.0..g.data.1], seg);
        assert_eq!(&out[g.ahs.0..g.ahs.1], ahs);
        buf = &buf[f.total..];
    }
}

/// Input: as `iscsi_pdu` (byte 0: digest flags; a stream of PDUs). Drives the header-first
/// framing the read loop uses for SCSI Command and Data-Out (`parse_header`, the data segment then
/// lands in the task's buffer) on every PDU of the stream and on every prefix cut of it:
/// asserts the header it returns lies inside the buffer, and that it agrees with `parse_frame`
/// on the same bytes (same BHS, AHS, data range and total once the whole PDU is present; both
/// waiting, or both refusing, when it is not).
pub fn iscsi_header(data: &[u8]) {
    let hd = data.first().is_some_and(|b| b & 1 != 0);
    let dd = data.first().is_some_and(|b| b & 2 != 0);
    let max = if data.first().is_some_and(|b| b & 4 != 0) { 8192 } else { 1 << 20 };
    let mut buf = data.get(1..).unwrap_or(&[]);
    for _ in 0..64 {
        // A partial PDU, as a read may leave it (the cut comes from the stream's own bytes).
        let cut = buf.get(BHS_LEN).map_or(buf.len(), |&c| (BHS_LEN / 2 + c as usize * 4).min(buf.len()));
        header_agrees(&buf[..cut], hd, dd, max);
        let Some(total) = header_agrees(buf, hd, dd, max) else { break };
        if total == 0 || total > buf.len() {
            break;
        }
        buf = &buf[total..];
    }
}

/// Check `parse_header` against `parse_frame` on `buf`; the PDU's total length if it is whole.
fn header_agrees(buf: &[u8], hd: bool, dd: bool, max: usize) -> Option<usize> {
    let h = parse_header(buf, hd, dd, max);
    let f = parse_frame(buf, hd, dd, max);
    let h = match h {
        Err(_) => {
            assert!(f.is_err(), "parse_header refuses what parse_frame accepts");
            return None;
        }
        Ok(None) => {
            assert!(matches!(f, Ok(None)), "parse_header waits where parse_frame does not");
            return None;
        }
        Ok(Some(h)) => h,
    };
    assert!(h.ahs.0 == BHS_LEN && h.ahs.0 <= h.ahs.1 && h.ahs.1 <= h.data_start, "header parts out of order");
    assert!(h.data_start <= buf.len(), "header outside the buffer");
    assert_eq!(h.data_start, h.ahs.1 + if hd { 4 } else { 0 });
    assert!(h.data_len <= max && h.trailer <= 7, "segment beyond the limits");
    let pad = pdu::pad4(h.data_len) - h.data_len;
    assert_eq!(h.trailer, pad + if dd && h.data_len > 0 { 4 } else { 0 });
    let total = h.data_start + h.data_len + h.trailer;
    match f {
        Ok(Some(g)) | Err((pdu::PduError::DataDigest, Some(g))) => {
            assert!(buf.len() >= total, "parse_frame framed a PDU that is not all here");
            assert!(g.bhs == h.bhs && g.ahs == h.ahs, "header framing disagrees");
            assert_eq!((g.data, g.total), ((h.data_start, h.data_start + h.data_len), total));
            Some(total)
        }
        Ok(None) => {
            assert!(buf.len() < total, "parse_frame waits for a PDU that is all here");
            None
        }
        Err((e, _)) => panic!("parse_frame refuses ({e}) a header parse_header accepts"),
    }
}

// ---- iSCSI login ----------------------------------------------------------------------------

pub const CHAP_USER: &str = "fuzzuser";
pub const CHAP_SECRET: &str = "fuzz-secret-1234";
pub const CHAP_MUSER: &str = "fuzztarget";
pub const CHAP_MSECRET: &str = "fuzz-msecret-5678";
pub const NODE_PREFIX: &str = "iqn.2016-06.io.spdk:";
/// Nodes of the login target and their CHAP policies.
pub const NODES: &[(&str, ChapPolicy)] = &[
    ("open", ChapPolicy { disable: false, require: false, mutual: false, group: 0 }),
    ("nochap", ChapPolicy { disable: true, require: false, mutual: false, group: 0 }),
    ("chap", ChapPolicy { disable: false, require: true, mutual: false, group: 1 }),
    ("mutual", ChapPolicy { disable: false, require: true, mutual: true, group: 1 }),
    ("mutualonly", ChapPolicy { disable: false, require: false, mutual: true, group: 1 }),
];

/// Three targets alike but for discovery: open, CHAP required, mutual CHAP required.
fn login_targets() -> &'static [palisade::iscsi::Target; 3] {
    static T: OnceLock<[palisade::iscsi::Target; 3]> = OnceLock::new();
    T.get_or_init(|| {
        let make = |require: bool, mutual: bool| {
            let t = palisade::iscsi::Target::default();
            {
                let mut st = t.state.lock().unwrap();
                st.opts.require_chap = require;
                st.opts.mutual_chap = mutual;
                st.opts.chap_group = 1;
                st.initiator_groups.insert(1, InitiatorGroup { tag: 1, initiators: vec!["ANY".into()], netmasks: vec!["ANY".into()] });
                let secret = Secret {
                    user: CHAP_USER.into(),
                    secret: CHAP_SECRET.into(),
                    muser: Some(CHAP_MUSER.into()),
                    msecret: Some(CHAP_MSECRET.into()),
                };
                st.auth_groups.insert(1, AuthGroup { tag: 1, secrets: vec![secret] });
                for (i, (name, chap)) in NODES.iter().enumerate() {
                    let node = Node {
                        name: format!("{NODE_PREFIX}{name}"),
                        alias: String::new(),
                        lun_specs: Vec::new(),
                        luns: Arc::new(Default::default()),
                        pg_ig_maps: vec![PgIg { pg_tag: 1, ig_tag: 1 }],
                        queue_depth: 32,
                        chap: *chap,
                        header_digest: i == 0,
                        data_digest: false,
                        index: i as u16 + 1,
                    };
                    st.nodes.insert(node.name.clone(), Arc::new(node));
                }
            }
            t
        };
        [make(false, false), make(true, false), make(true, true)]
    })
}

/// The policy a finished login had to satisfy.
fn required_policy(t: &palisade::iscsi::Target, l: &Login) -> ChapPolicy {
    match (l.session_type, &l.node) {
        (SessionType::Normal, Some(n)) => n.chap,
        _ => t.discovery_chap(),
    }
}

/// Input: byte 0 picks the discovery policy (mod 3: none, CHAP, mutual CHAP); then a stream of
/// Login Request PDUs (no digests) as the connection receives them. A value `CHAP_R=compute` is
/// replaced by the correct response to the target's last challenge (the fuzzer cannot guess MD5),
/// so the negotiation after a successful CHAP exchange is reachable.
///
/// Asserts the security invariant: a login that requires CHAP (the node's or discovery's
/// `require`/`mutual`) never finishes without a verified CHAP response, and with mutual CHAP never
/// without the target having answered the initiator's challenge correctly.
pub fn iscsi_login(data: &[u8]) {
    let Some((&sel, mut buf)) = data.split_first() else { return };
    let t = &login_targets()[sel as usize % 3];
    let ctx = LoginCtx { target: t, pg_tag: 1, peer: IpAddr::from([127, 0, 0, 1]) };
    let mut l = Login::new();
    let mut challenge: Option<(u8, Vec<u8>)> = None;
    let mut mutual_ok = false;
    for _ in 0..32 {
        let f = match parse_frame(buf, false, false, 1 << 20) {
            Ok(Some(f)) => f,
            _ => return,
        };
        let (bhs, seg) = (f.bhs, &buf[f.data.0..f.data.1]);
        buf = &buf[f.total..];
        if bhs.opcode() != op::LOGIN_REQ {
            return; // the connection closes on any other PDU before login completes
        }
        let seg = substitute_chap_r(seg, challenge.as_ref());
        let ours = initiator_challenge(&seg);
        let (keys, finished) = match l.step(&ctx, &bhs, &seg) {
            Step::Fail(_) => return,
            Step::Reply { keys, .. } => (keys, false),
            Step::Finish { keys, .. } => (keys, true),
        };
        let get = |k: &str| keys.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str());
        if let (Some(i), Some(c)) = (get("CHAP_I"), get("CHAP_C")) {
            challenge = Some((i.parse().expect("target sends a numeric CHAP_I"), decode_binary(c).expect("target's CHAP_C decodes")));
        }
        if let Some(r) = get("CHAP_R") {
            let (id, ch) = ours.clone().expect("target sent CHAP_R without an initiator challenge");
            assert_eq!(decode_binary(r), Some(chap_response(id, CHAP_MSECRET.as_bytes(), &ch)), "wrong mutual CHAP response");
            mutual_ok = true;
        }
        if finished {
            let p = required_policy(t, &l);
            if (p.require || p.mutual) && !known("chap-bypass") {
                assert!(
                    l.chap_user.is_some(),
                    "CHAP BYPASS: login finished without CHAP on a {:?} session requiring it (target {:?}, policy {p:?})",
                    l.session_type,
                    l.target_name
                );
            }
            if p.mutual && !known("chap-bypass") {
                assert!(mutual_ok, "mutual CHAP required but the target never proved itself");
            }
            return;
        }
    }
}

/// Replace `CHAP_R=compute` with the right answer to `challenge` for the fuzz user's secret.
fn substitute_chap_r(seg: &[u8], challenge: Option<&(u8, Vec<u8>)>) -> Vec<u8> {
    const MARK: &[u8] = b"CHAP_R=compute";
    let Some(at) = seg.windows(MARK.len()).position(|w| w == MARK) else { return seg.to_vec() };
    let Some((id, ch)) = challenge else { return seg.to_vec() };
    let mut out = seg[..at].to_vec();
    out.extend_from_slice(format!("CHAP_R=0x{}", hex(&chap_response(*id, CHAP_SECRET.as_bytes(), ch))).as_bytes());
    out.extend_from_slice(&seg[at + MARK.len()..]);
    out
}

/// The initiator's own CHAP_I/CHAP_C in a request (mutual CHAP), as the target would read them.
fn initiator_challenge(seg: &[u8]) -> Option<(u8, Vec<u8>)> {
    let pairs = parse_text(seg).ok()?;
    let get = |k: &str| pairs.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
    Some((get("CHAP_I")?.parse().ok()?, decode_binary(&get("CHAP_C")?)?))
}

// ---- SCSI CDBs and parameter lists ----------------------------------------------------------

struct ScsiFixture {
    lun: Arc<palisade::scsi::Lun>,
    luns: palisade::scsi::LunMap,
}

fn scsi_fixture() -> &'static ScsiFixture {
    static F: OnceLock<ScsiFixture> = OnceLock::new();
    F.get_or_init(|| {
        let bdev = palisade::bdev::malloc::MallocBdev::new("fuzz0", 2048, 512, None).expect("malloc bdev");
        let vol = Arc::new(palisade::volume::Volume::new(Arc::new(bdev)));
        let lun = Arc::new(palisade::scsi::Lun::new(0, vol));
        ScsiFixture { lun: lun.clone(), luns: palisade::scsi::LunMap { luns: vec![lun] } }
    })
}

/// Input: byte 0 = CDB length (mod 33), then the CDB, then the parameter list (Data-Out). Runs
/// the CDB through every decoder that accepts it and the parameter list through the decoder of
/// its command (PR OUT, UNMAP, MODE SELECT(6/10), EXTENDED COPY; TransportIDs), plus the
/// answers built from CDB fields alone (truncated to the allocation length).
pub fn scsi_cdb(data: &[u8]) {
    use palisade::scsi::{cdb, mode, opcodes, pr, sbc, xcopy, DataDir, ScsiCommand, TaskAttr};
    let Some((&n, rest)) = data.split_first() else { return };
    let n = (n as usize % 33).min(rest.len());
    let (raw, param) = rest.split_at(n);
    let mut c = [0u8; 32];
    c[..n].copy_from_slice(raw);
    let fx = scsi_fixture();
    let lun = &fx.lun;
    let cap = lun.volume.num_blocks();

    let _ = cdb::cdb_len(c[0]);
    let _ = pr::command_class(raw);
    if let Ok(b) = cdb::decode_block(&c) {
        let _ = (b.fua(), b.protect(), cdb::in_range(b.lba, b.blocks as u64, cap));
    }
    let cmd = ScsiCommand {
        cdb: c,
        cdb_len: n as u8,
        lun: 0,
        task_tag: 1,
        expected_len: param.len() as u32,
        dir: DataDir::Write,
        data_out: None,
        attr: TaskAttr::Simple,
    };
    let _ = sbc::prefetch(lun, &cmd);
    let _ = sbc::start_stop(lun, &cmd);
    let _ = sbc::prevent_allow(&cmd);
    let alloc_ok = |d: &[u8], alloc: usize| assert!(d.len() <= alloc.max(32), "answer longer than the allocation length");
    if let Ok(d) = sbc::read_defect_data(&cmd) {
        alloc_ok(&d, if c[0] == 0x37 { cdb::alloc_len(&c, 7, 2) } else { cdb::alloc_len(&c, 6, 4) });
    }
    let _ = sbc::read_capacity10(lun, &cmd);
    if let Ok(d) = sbc::read_capacity16(lun, &cmd) {
        alloc_ok(&d, cdb::alloc_len(&c, 10, 4));
    }
    if let Ok(d) = sbc::get_lba_status(lun, &cmd) {
        alloc_ok(&d, cdb::alloc_len(&c, 10, 4));
    }
    let _ = opcodes::report(&c);
    let _ = opcodes::report_tmf(&c);
    let ms = mode::ModeSense::decode(&c);
    let _ = mode::mode_sense(&lun.mode, &ms, false, cap, 512);
    let _ = pr::check_reserve_release_cdb(raw);
    let _ = pr::pr_in(raw, &Default::default());

    match c[0] {
        // PERSISTENT RESERVE OUT: decode, then run the action on a fresh engine.
        0x5f => {
            if let Ok(action) = pr::decode_pr_out(raw, param) {
                let vol = palisade::volume::Volume::new(lun.volume.bdev().clone());
                let who = palisade::volume::Initiator::Iscsi {
                    initiator_port: "iqn.fuzz,i,0x000000000001".into(),
                    target_port: format!("{NODE_PREFIX}open,t,0x0001"),
                    rel_port_id: 1,
                };
                let _ = vol.reservations().execute(palisade::volume::pr_gate::nexus_ref(&who), action, Box::new(|_| {}));
                let _ = vol.reservations().read(|s| (pr::read_keys(s), pr::read_full_status(s)));
            }
        }
        0x42 => {
            let _ = sbc::parse_unmap(param, cap);
        }
        0x15 | 0x55 => {
            let st = mode::ModeState::fixed(true);
            if let Ok(ch) = mode::mode_select(&st, c[0] == 0x55, param, 512) {
                let _ = mode::apply(&st, ch);
            }
        }
        0x83 => {
            let _ = xcopy::parse(param, &fx.luns);
        }
        _ => {
            // Anything else: the parameter list as a TransportID (PR OUT REGISTER AND MOVE and
            // SPEC_I_PT carry them) and as the other lists, so every decoder sees every input.
            let _ = pr::decode_transport_id(param, 1);
            let _ = sbc::parse_unmap(param, cap);
            let _ = xcopy::parse(param, &fx.luns);
            let _ = mode::mode_select(&mode::ModeState::fixed(false), c[0] & 1 == 1, param, 512);
        }
    }
}

// ---- NVMe commands --------------------------------------------------------------------------

/// Input: a 64-byte submission queue entry (zero-padded if shorter) followed by the command's
/// host-to-controller data, as an NVMe/TCP command capsule carries them. Decodes it as an I/O
/// command (ranges, MDTS, Dataset Management ranges), as a reservation command (Register,
/// Acquire, Release run on a fresh engine; Report) and as Fabrics Connect data.
///
/// Asserts: nothing the decoders return is larger than the transfer the host asked for
/// (SGL length, capped by MDTS) — issue 11 finding 2 (Reservation Report sized by NUMD).
pub fn nvme_cmd(data: &[u8]) {
    use palisade::nvme::io::{direction, dsm_range, plan, IoKind};
    use palisade::nvme::reservation as r;
    const MDTS: u32 = 128 * 1024;
    let mut s = [0u8; 64];
    let n = data.len().min(64);
    s[..n].copy_from_slice(&data[..n]);
    let payload = &data[n..];
    let sqe = Sqe(s);
    let (opc, cdw10, cdw11) = (sqe.opcode(), sqe.cdw(10), sqe.cdw(11));
    let sgl = sqe.sgl();
    let _ = (sqe.flags(), sqe.cid(), sqe.nsid(), sqe.fctype(), direction(opc), r::io_class(opc));
    if let Ok(p) = plan(&sqe, 2048, 512, MDTS) {
        assert!(p.bytes <= MDTS.max(256 * 16), "plan moves more than MDTS");
        if matches!(p.kind, IoKind::Deallocate | IoKind::DsmHint) {
            for i in 0..p.nlb as usize {
                if dsm_range(payload, i).is_none() {
                    break;
                }
            }
        }
    }
    let fx = scsi_fixture();
    let who = palisade::volume::Initiator::Nvme { host_id: [7; 16], host_nqn: "nqn.2014-08.org.nvmexpress:uuid:fuzz".into() };
    match opc {
        r::OPC_RESERVATION_REPORT if known("report-numd") && (cdw10 as u64 + 1) * 4 > MDTS as u64 => {}
        r::OPC_RESERVATION_REPORT => {
            // Issue 11 finding 2: the report was built at (NUMD+1)*4 bytes (up to 16 GiB) before
            // the transport truncated it to the SGL length. Nothing may be built past MDTS.
            // As the transport: an SGL beyond MDTS is refused before, else it is the host's buffer.
            let host_buf = if sgl.length > MDTS { return } else { sgl.length as usize };
            let c = r::execute(&fx.lun.volume, &who, opc, cdw10, cdw11, payload, host_buf, |_| {});
            if let Some(c) = c {
                assert!(c.data.len() as u64 <= (sgl.length as u64).max(MDTS as u64), "Reservation Report built {} bytes", c.data.len());
            }
        }
        r::OPC_RESERVATION_REGISTER | r::OPC_RESERVATION_ACQUIRE | r::OPC_RESERVATION_RELEASE => {
            let vol = palisade::volume::Volume::new(fx.lun.volume.bdev().clone());
            let _ = r::execute(&vol, &who, opc, cdw10, cdw11, payload, 4096, |_| {});
            let _ = r::execute(&vol, &who, r::OPC_RESERVATION_REPORT, 63, 1, &[], 4096, |_| {});
        }
        _ => {
            let _ = r::decode_register(cdw10, payload);
            let _ = r::decode_acquire(cdw10, payload);
            let _ = r::decode_release(cdw10, payload);
        }
    }
    // Set/Get Features of the reservation feature ids (the rest are handled by the controller).
    if opc == palisade::nvme::spec::admin::SET_FEATURES || opc == palisade::nvme::spec::admin::GET_FEATURES {
        let vol = palisade::volume::Volume::new(fx.lun.volume.bdev().clone());
        let fid = (cdw10 & 0xff) as u8;
        if opc == palisade::nvme::spec::admin::SET_FEATURES {
            let _ = r::set_features(&vol, &who, fid, cdw11, |_| {});
        }
        let _ = r::get_features(&vol, &who, fid);
    }
    if let Some(c) = palisade::nvmf::fabrics::ConnectData::decode(payload) {
        assert_eq!(palisade::nvmf::fabrics::ConnectData::decode(&c.encode()).map(|d| d.cntlid), Some(c.cntlid));
    }
}

// ---- JSON-RPC params ------------------------------------------------------------------------

/// Every method name the server registers.
pub fn rpc_methods() -> &'static [String] {
    static M: OnceLock<Vec<String>> = OnceLock::new();
    M.get_or_init(|| {
        let mut r = palisade::rpc::Registry::default();
        palisade::rpc::framework::register(&mut r);
        palisade::rpc::bdev::register(&mut r);
        palisade::rpc::nvmf::register(&mut r);
        palisade::rpc::iscsi::register(&mut r);
        palisade::rpc::layout::register(&mut r);
        palisade::rpc::reservation::register(&mut r);
        r.methods().map(|m| m.name.to_string()).collect()
    })
}

/// Input: JSON. A request object (`{"method": ..., "params": ...}`, or a batch of them) has its
/// params decoded as its method's handler would; a config (`{"subsystems": [...]}`, SPDK's
/// format) is parsed and every call in it decoded the same way. Any other JSON value is decoded
/// as the params of every method, and a leading byte below 0x20 picks one method for the rest.
pub fn rpc_params(data: &[u8]) {
    let methods = rpc_methods();
    if let Some((&b, rest)) = data.split_first() {
        if b < 0x20 {
            if let Ok(v) = serde_json::from_slice::<Value>(rest) {
                let m = &methods[b as usize % methods.len()];
                let _ = palisade::rpc::decode_params(m, &Some(v));
            }
            return;
        }
    }
    let Ok(v) = serde_json::from_slice::<Value>(data) else { return };
    let one = |v: &Value| -> bool {
        let Some(m) = v.get("method").and_then(Value::as_str) else { return false };
        let known = palisade::rpc::decode_params(m, &v.get("params").cloned()).is_some();
        assert_eq!(known, methods.iter().any(|x| x == m), "decode_params and the registry disagree on {m}");
        true
    };
    match &v {
        Value::Array(items) => {
            for it in items {
                one(it);
            }
        }
        Value::Object(o) if o.contains_key("subsystems") => {
            if let Ok(cfg) = serde_json::from_value::<palisade::config::Config>(v.clone()) {
                use palisade::config::Element;
                let entries = cfg.subsystems.iter().flat_map(|s| &s.config).flat_map(|e| match e {
                    Element::Call(c) => std::slice::from_ref(c),
                    Element::Batch(b) => b.as_slice(),
                });
                for e in entries {
                    let _ = palisade::rpc::decode_params(&e.method, &e.params);
                }
            }
        }
        _ => {
            if !one(&v) {
                for m in methods {
                    let _ = palisade::rpc::decode_params(m, &Some(v.clone()));
                }
            }
        }
    }
}

// ---- NVMe in-band authentication (DH-HMAC-CHAP) ------------------------------------------------

/// Input: byte 0 = flags (bit 0: the target also allows ffdhe2048; bit 1: a controller key;
/// bits 2-3: the queue's secure channel concatenation: off, offer, require, replace; bit 4: DH
/// work offloaded, its result handed back by the next record whose op has bit 1 set);
/// then records of `[op, len_lo, len_hi, bytes...]`: op bit 0 set = an AUTH_Receive, clear = an
/// AUTH_Send of `bytes`. Every record's bytes also go through every message decoder and the
/// TLS PSK identity parser.
///
/// Asserts: decoded messages re-encode to something that decodes to the same message; a
/// stranger (who does not know the key) never gets the queue authenticated; after AUTH_Failure1
/// the queue is dead and stays dead.
pub fn nvme_auth(data: &[u8]) {
    use palisade::nvme::auth::{Challenge, Failure, Message, Negotiate, Reply, Success1, Success2};
    use palisade::nvmf::auth::target::{Concat, SendResult, Step, TargetAuth, TargetKeys};
    use palisade::nvmf::auth::{DhGroup, Digest, Secret};
    let Some((&flags, mut rest)) = data.split_first() else { return };
    let mut groups = vec![DhGroup::Null];
    if flags & 1 != 0 {
        groups.push(DhGroup::Ffdhe2048);
    }
    let concat = [Concat::Off, Concat::Offer, Concat::Require, Concat::Replace][(flags >> 2 & 3) as usize];
    let key = |b: u8| Secret { transform: 0, key: vec![b; 32] };
    let keys = TargetKeys { host: key(0x11), ctrl: (flags & 2 != 0).then(|| key(0x22)), digests: Digest::ALL.to_vec(), groups, concat };
    let now = std::time::Instant::now();
    let mut t = TargetAuth::new(keys, "nqn.fuzz.host", "nqn.fuzz.sub", now);
    if flags & 0x10 != 0 {
        t = t.offload();
    }
    // Offloaded work comes back when a record says so: records before it break into the
    // computing step.
    let mut work = None;
    let mut dead = false;
    while rest.len() >= 3 {
        let op = rest[0];
        let n = (u16::from_le_bytes([rest[1], rest[2]]) as usize).min(rest.len() - 3);
        let b = &rest[3..3 + n];
        rest = &rest[3 + n..];
        // A TLS PSK identity is a stranger's bytes too (the ClientHello's): what parses is exactly
        // what it encodes to.
        if let Ok(id) = palisade::nvme::tls_psk::PskIdentity::parse(b) {
            assert_eq!(id.encode().as_bytes(), b, "PSK identity round trip");
        }
        if let Ok(m) = Message::decode(b) {
            let again = match &m {
                Message::Negotiate(x) => Negotiate::decode(&x.encode()).map(Message::Negotiate),
                Message::Challenge(x) => Challenge::decode(&x.encode()).map(Message::Challenge),
                Message::Reply(x) => Reply::decode(&x.encode()).map(Message::Reply),
                Message::Success1(x) => Success1::decode(&x.encode()).map(Message::Success1),
                Message::Success2(x) => Success2::decode(&x.encode()).map(Message::Success2),
                Message::Failure(x) => Failure::decode(&x.encode()).map(Message::Failure),
            };
            // Fields beyond 255 bytes are not representable (HL is one byte): a decoded message
            // always is, so it must survive the round trip.
            assert_eq!(again.as_ref(), Ok(&m), "auth message round trip");
        }
        if op & 1 != 0 {
            let _ = t.on_receive(now);
        } else {
            match t.on_send(b, now) {
                SendResult::Abort => dead = true,
                SendResult::Pending => work = work.or(t.take_work()),
                _ => {}
            }
        }
        if op & 2 != 0 {
            if let Some(w) = work.take() {
                let _ = t.finish_work(w.run(), now);
            }
        }
        if t.step() == Step::Dead {
            dead = true;
        }
        assert!(!t.authenticated(), "a stranger authenticated");
        assert!(!dead || t.step() == Step::Dead, "a dead queue came back");
    }
}
