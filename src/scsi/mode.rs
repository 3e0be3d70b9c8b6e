//! Mode parameters (SPC-4 7.5, SBC-3 6.4): the caching, control and informational exceptions
//! pages, MODE SENSE(6/10) data and MODE SELECT(6/10) parameter lists.
//!
//! The current values live in atomics on the LUN, shared by every nexus; WCE (caching page) and
//! SWP (control page) are changeable. Saved values are not implemented (nothing is persisted), so
//! PC=11b and SP=1 are refused as SPC-4 requires.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use super::sense::{Sense, PARAM_LIST_LENGTH_ERROR, SAVING_PARAMS_UNSUPPORTED};

pub const PAGE_CACHING: u8 = 0x08;
pub const PAGE_CONTROL: u8 = 0x0a;
pub const PAGE_INFO_EXCEPTIONS: u8 = 0x1c;
pub const PAGE_ALL: u8 = 0x3f;

/// Current mode values of a LUN.
pub struct ModeState {
    /// Caching page WCE as MODE SELECT left it: `WCE_DEFAULT` follows the volume (which may gain
    /// a volatile state after the LUN exists, e.g. a layout guard's written-block records), else
    /// `WCE_ON` / `WCE_OFF`.
    wce: AtomicU8,
    /// Control page SWP: software write protect.
    pub swp: AtomicBool,
    /// Whether the volume behind the LUN has volatile state a flush makes durable (the default
    /// WCE).
    volatile: Box<dyn Fn() -> bool + Send + Sync>,
}

const WCE_DEFAULT: u8 = 0;
const WCE_ON: u8 = 1;
const WCE_OFF: u8 = 2;

impl std::fmt::Debug for ModeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModeState").field("wce", &self.wce()).field("swp", &self.swp).finish()
    }
}

impl ModeState {
    pub fn new(volatile: impl Fn() -> bool + Send + Sync + 'static) -> ModeState {
        ModeState { wce: AtomicU8::new(WCE_DEFAULT), swp: AtomicBool::new(false), volatile: Box::new(volatile) }
    }
    /// A LUN whose volume's caching never changes (tests).
    pub fn fixed(write_cache: bool) -> ModeState {
        ModeState::new(move || write_cache)
    }
    /// Does the volume hold volatile state a flush makes durable?
    pub fn volatile(&self) -> bool {
        (self.volatile)()
    }
    /// Current WCE, given [`ModeState::volatile`] (callers on the I/O path already have it).
    pub fn wce_given(&self, volatile: bool) -> bool {
        match self.wce.load(Ordering::Relaxed) {
            WCE_ON => true,
            WCE_OFF => false,
            _ => volatile,
        }
    }
    /// Current WCE.
    pub fn wce(&self) -> bool {
        self.wce_given(self.volatile())
    }
    /// Set WCE (MODE SELECT); true if the current value changed.
    pub fn set_wce(&self, on: bool) -> bool {
        let before = self.wce();
        self.wce.store(if on { WCE_ON } else { WCE_OFF }, Ordering::Release);
        before != on
    }
}

/// Page control field of MODE SENSE (SPC-4 6.11.1, table 162).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageControl {
    Current,
    Changeable,
    Default,
}

/// Encode one page (code, subpage 0) for the given page control; None if we do not have it.
pub fn encode_page(st: &ModeState, page: u8, pc: PageControl, out: &mut Vec<u8>) -> bool {
    let (wce, swp) = match pc {
        PageControl::Current => (st.wce(), st.swp.load(Ordering::Relaxed)),
        PageControl::Changeable => (true, true),
        PageControl::Default => (st.volatile(), false),
    };
    match page {
        // Caching mode page (SBC-3 6.4.5): 20 bytes; only WCE (byte 2 bit 2) is meaningful.
        PAGE_CACHING => {
            let mut p = [0u8; 20];
            p[0] = PAGE_CACHING;
            p[1] = 0x12;
            if wce {
                p[2] |= 0x04;
            }
            out.extend_from_slice(&p);
        }
        // Control mode page (SPC-4 7.5.8): 12 bytes. TST=000b (one task set), QERR=00b,
        // D_SENSE=0 (fixed format sense), TAS=1 (aborted tasks of other nexuses are reported),
        // SWP at byte 4 bit 3, busy timeout unlimited.
        PAGE_CONTROL => {
            let mut p = [0u8; 12];
            p[0] = PAGE_CONTROL;
            p[1] = 0x0a;
            if pc != PageControl::Changeable {
                p[5] = 0x40; // TAS
                p[8..10].copy_from_slice(&0xffffu16.to_be_bytes());
            }
            if swp {
                p[4] |= 0x08;
            }
            out.extend_from_slice(&p);
        }
        // Informational exceptions control page (SPC-4 7.5.14): 12 bytes, DEXCPT=1 (no reporting).
        PAGE_INFO_EXCEPTIONS => {
            let mut p = [0u8; 12];
            p[0] = PAGE_INFO_EXCEPTIONS;
            p[1] = 0x0a;
            if pc != PageControl::Changeable {
                p[2] = 0x08;
            }
            out.extend_from_slice(&p);
        }
        _ => return false,
    }
    true
}

/// The MODE SENSE request (SPC-4 6.11 / 6.12).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModeSense {
    pub ten: bool,
    pub dbd: bool,
    pub llbaa: bool,
    pub pc: u8,
    pub page: u8,
    pub subpage: u8,
    pub alloc: usize,
}

impl ModeSense {
    pub fn decode(cdb: &[u8; 32]) -> ModeSense {
        let ten = cdb[0] == 0x5a;
        ModeSense {
            ten,
            dbd: cdb[1] & 0x08 != 0,
            llbaa: ten && cdb[1] & 0x10 != 0,
            pc: cdb[2] >> 6,
            page: cdb[2] & 0x3f,
            subpage: cdb[3],
            alloc: if ten { u16::from_be_bytes([cdb[7], cdb[8]]) as usize } else { cdb[4] as usize },
        }
    }
}

/// Build MODE SENSE data: header, block descriptor, pages (SPC-4 7.5.4-7.5.6).
pub fn mode_sense(
    st: &ModeState,
    req: &ModeSense,
    write_protected: bool,
    num_blocks: u64,
    block_size: u32,
) -> Result<Vec<u8>, Sense> {
    let pc = match req.pc {
        0 => PageControl::Current,
        1 => PageControl::Changeable,
        2 => PageControl::Default,
        _ => return Err(SAVING_PARAMS_UNSUPPORTED),
    };
    // Only subpage 0 exists, and 0xff ("all subpages") for the all-pages request.
    if req.subpage != 0 && !(req.page == PAGE_ALL && req.subpage == 0xff) {
        return Err(Sense::invalid_cdb_field(3, None));
    }
    let mut pages = Vec::with_capacity(64);
    if req.page == PAGE_ALL {
        for p in [PAGE_CACHING, PAGE_CONTROL, PAGE_INFO_EXCEPTIONS] {
            encode_page(st, p, pc, &mut pages);
        }
    } else if !encode_page(st, req.page, pc, &mut pages) {
        return Err(Sense::invalid_cdb_field(2, Some(5)));
    }
    let wp = write_protected || st.swp.load(Ordering::Relaxed);
    // Device-specific parameter (SBC-3 6.4.2): WP bit 7, DPOFUA bit 4.
    let dsp = if wp { 0x80 } else { 0 } | 0x10;
    let mut bd = Vec::with_capacity(16);
    if !req.dbd {
        if req.llbaa {
            bd.extend_from_slice(&num_blocks.to_be_bytes());
            bd.extend_from_slice(&[0; 4]);
            bd.extend_from_slice(&block_size.to_be_bytes());
        } else {
            bd.extend_from_slice(&(num_blocks.min(0xffff_ffff) as u32).to_be_bytes());
            bd.push(0);
            bd.extend_from_slice(&block_size.to_be_bytes()[1..]);
        }
    }
    let mut out = Vec::with_capacity(8 + bd.len() + pages.len());
    if req.ten {
        let len = (6 + bd.len() + pages.len()) as u16;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&[0, dsp, if req.llbaa && !req.dbd { 1 } else { 0 }, 0]);
        out.extend_from_slice(&(bd.len() as u16).to_be_bytes());
    } else {
        out.extend_from_slice(&[(3 + bd.len() + pages.len()) as u8, 0, dsp, bd.len() as u8]);
    }
    out.extend_from_slice(&bd);
    out.extend_from_slice(&pages);
    Ok(out)
}

/// What a MODE SELECT changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModeChange {
    pub wce: Option<bool>,
    pub swp: Option<bool>,
}

/// Parse and validate a MODE SELECT parameter list (SPC-4 6.9/6.10, 7.5): every field must equal
/// the current value unless it is changeable. Nothing is applied on error.
pub fn mode_select(st: &ModeState, ten: bool, data: &[u8], block_size: u32) -> Result<ModeChange, Sense> {
    let hdr = if ten { 8 } else { 4 };
    if data.len() < hdr {
        return Err(PARAM_LIST_LENGTH_ERROR);
    }
    let bdl = if ten { u16::from_be_bytes([data[6], data[7]]) as usize } else { data[3] as usize };
    let pages_at = hdr + bdl;
    if pages_at > data.len() {
        return Err(PARAM_LIST_LENGTH_ERROR);
    }
    // A block descriptor may only repeat our block length (we cannot reformat).
    if bdl >= 8 {
        let long = ten && data[4] & 1 != 0;
        let bl = if long && bdl >= 16 {
            u32::from_be_bytes([data[hdr + 12], data[hdr + 13], data[hdr + 14], data[hdr + 15]])
        } else {
            u32::from_be_bytes([0, data[hdr + 5], data[hdr + 6], data[hdr + 7]])
        };
        if bl != 0 && bl != block_size {
            return Err(Sense::invalid_param_field((hdr + 5) as u16, None));
        }
    }
    let mut change = ModeChange::default();
    let mut at = pages_at;
    while at < data.len() {
        if data.len() - at < 2 {
            return Err(PARAM_LIST_LENGTH_ERROR);
        }
        let code = data[at] & 0x3f;
        if data[at] & 0x40 != 0 {
            return Err(Sense::invalid_param_field(at as u16, Some(6))); // no subpages
        }
        let plen = data[at + 1] as usize + 2;
        if at + plen > data.len() {
            return Err(PARAM_LIST_LENGTH_ERROR);
        }
        let page = &data[at..at + plen];
        let mut cur = Vec::with_capacity(20);
        let mut mask = Vec::with_capacity(20);
        if !encode_page(st, code, PageControl::Current, &mut cur) {
            return Err(Sense::invalid_param_field(at as u16, None));
        }
        encode_page(st, code, PageControl::Changeable, &mut mask);
        if plen != cur.len() {
            return Err(Sense::invalid_param_field((at + 1) as u16, None));
        }
        // Byte 0 carries PS (ignored on select); compare the rest outside the changeable bits.
        for i in 2..plen {
            if (page[i] ^ cur[i]) & !mask[i] != 0 {
                return Err(Sense::invalid_param_field((at + i) as u16, None));
            }
        }
        match code {
            PAGE_CACHING => change.wce = Some(page[2] & 0x04 != 0),
            PAGE_CONTROL => change.swp = Some(page[4] & 0x08 != 0),
            _ => {}
        }
        at += plen;
    }
    Ok(change)
}

/// Apply a validated change; true if any current value differs afterwards.
pub fn apply(st: &ModeState, c: ModeChange) -> bool {
    let mut changed = false;
    if let Some(w) = c.wce {
        changed |= st.set_wce(w);
    }
    if let Some(s) = c.swp {
        changed |= st.swp.swap(s, Ordering::AcqRel) != s;
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(ten: bool, page: u8, pc: u8, dbd: bool) -> ModeSense {
        ModeSense { ten, dbd, llbaa: false, pc, page, subpage: 0, alloc: 255 }
    }

    #[test]
    fn sense6_all_pages_lengths() {
        let st = ModeState::fixed(false);
        let d = mode_sense(&st, &req(false, PAGE_ALL, 0, false), false, 1000, 512).unwrap();
        assert_eq!(d[0] as usize, d.len() - 1);
        assert_eq!(d[3], 8);
        assert_eq!(&d[4..8], &1000u32.to_be_bytes());
        assert_eq!(&d[9..12], &[0, 2, 0]);
        assert_eq!(d[2] & 0x10, 0x10, "DPOFUA");
        assert_eq!(d[12], PAGE_CACHING);
        assert_eq!(d.len(), 4 + 8 + 20 + 12 + 12);
    }

    #[test]
    fn sense10_long_lba_and_saved() {
        let st = ModeState::fixed(true);
        let mut r = req(true, PAGE_CACHING, 0, false);
        r.llbaa = true;
        let d = mode_sense(&st, &r, false, 1 << 40, 4096).unwrap();
        assert_eq!(u16::from_be_bytes([d[0], d[1]]) as usize, d.len() - 2);
        assert_eq!(d[4] & 1, 1);
        assert_eq!(u16::from_be_bytes([d[6], d[7]]), 16);
        assert_eq!(&d[8..16], &(1u64 << 40).to_be_bytes());
        assert_eq!(d[24 + 2] & 0x04, 0x04, "WCE current");
        assert_eq!(mode_sense(&st, &req(true, PAGE_CACHING, 3, true), false, 1, 512), Err(SAVING_PARAMS_UNSUPPORTED));
        assert!(mode_sense(&st, &req(false, 0x19, 0, true), false, 1, 512).is_err());
    }

    #[test]
    fn select_changes_only_changeable_bits() {
        let st = ModeState::fixed(false);
        let mut list = vec![0u8, 0, 0, 0];
        encode_page(&st, PAGE_CACHING, PageControl::Current, &mut list);
        list[4 + 2] |= 0x04;
        let c = mode_select(&st, false, &list, 512).unwrap();
        assert_eq!(c.wce, Some(true));
        assert!(apply(&st, c));
        assert!(!apply(&st, c));
        // RCD (bit 0) is not changeable: refused with the field pointer at that byte.
        list[4 + 2] |= 0x01;
        let e = mode_select(&st, false, &list, 512).unwrap_err();
        assert_eq!((e.asc, e.field), (0x26, Some((false, 6, None))));
        // Truncated page.
        assert_eq!(mode_select(&st, false, &list[..10], 512), Err(PARAM_LIST_LENGTH_ERROR));
    }
}
