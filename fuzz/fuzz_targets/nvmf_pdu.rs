//! Fuzz the NVMe/TCP PDU decoder: framing, digests and every typed decoder must never panic.
//! Run with `cargo +nightly fuzz run nvmf_pdu` from the repository root.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade::nvme::spec::{Cqe, Sqe};
use palisade::nvmf::tcp::pdu::{frame, CommonHeader, DataHeader, Digests, IcReq, IcResp, TermReq};

fuzz_target!(|data: &[u8]| {
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
});
