//! The metadata store on a block device (`metadata_bdev`): the file journal's frames and state
//! encoding, laid out so that nothing live is ever overwritten in place.
//!
//! The device is used in 4 KiB blocks. Blocks 0 and 1 are two header slots; the rest is split
//! into two halves. A checkpoint writes the whole state into the half that is not active, flushes,
//! then writes a header with the next generation into the slot `generation % 2` (so a torn header
//! write leaves the other slot, which points at the previous, intact half) and flushes again.
//! Transactions are appended to the active half after its checkpoint, each starting on a fresh
//! block and written with FUA, so a torn append never damages an acknowledged frame. Frames are
//! checksummed with the volume UUID and the header generation as salt and carry their sequence
//! number: what an older use of a half left behind never validates. Format: `FORMAT.md`.

use super::error::LayoutError;
use super::journal::{
    decode_image, decode_txn, encode_frame_salted, encode_image, encode_txn, frame_at_salted, load_state, peek_frame, MetaStore, Parsed, Replay,
    CHECKPOINT_BYTES, CHECKPOINT_TXNS, FRAME_HDR, KIND_CHECKPOINT, KIND_TXN,
};
use super::metadev::MetaDev;
use super::state::{Record, State};

pub const BDEV_MAGIC: &[u8; 8] = b"PLSDLBDV";
pub const BDEV_FORMAT_VERSION: u32 = 1;
/// The unit of the on-device layout, whatever the device's block size.
pub const MBLK: u64 = 4096;
/// Bytes of a header slot covered by its checksum (the rest of the block is zero).
const HDR_LEN: usize = 88;
/// After the last good frame, this many blocks are searched for a valid later frame (damage in the
/// middle of the journal rather than a torn tail).
const SCAN_BLOCKS: u64 = 256;

/// One header slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub generation: u64,
    /// Device size in 4 KiB blocks when it was formatted (the geometry never changes).
    pub total_blocks: u64,
    pub half_blocks: u64,
    /// 0 = half A (blocks 2..2+H), 1 = half B (2+H..2+2H).
    pub active: u8,
    pub ckpt_seq: u64,
    /// Blocks of the checkpoint frame; the journal starts right after it.
    pub ckpt_blocks: u64,
    /// The layout volume's UUID (part of the frame checksum salt).
    pub uuid: [u8; 16],
}

impl Header {
    fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; MBLK as usize];
        b[0..8].copy_from_slice(BDEV_MAGIC);
        b[8..12].copy_from_slice(&BDEV_FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(HDR_LEN as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.generation.to_le_bytes());
        b[24..32].copy_from_slice(&self.total_blocks.to_le_bytes());
        b[32..40].copy_from_slice(&self.half_blocks.to_le_bytes());
        b[40] = self.active;
        b[48..56].copy_from_slice(&self.ckpt_seq.to_le_bytes());
        b[56..64].copy_from_slice(&self.ckpt_blocks.to_le_bytes());
        b[64..80].copy_from_slice(&self.uuid);
        let sum = crc32c::crc32c(&b[8..HDR_LEN - 4]);
        b[HDR_LEN - 4..HDR_LEN].copy_from_slice(&sum.to_le_bytes());
        b
    }

    /// Ok(None) when the slot holds no header magic; Err(why) when it does but is invalid.
    fn decode(b: &[u8]) -> Result<Option<Header>, String> {
        if b.len() < HDR_LEN || &b[0..8] != BDEV_MAGIC {
            return Ok(None);
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        if crc32c::crc32c(&b[8..HDR_LEN - 4]) != u32_at(HDR_LEN - 4) {
            return Err("checksum mismatch (torn or damaged)".into());
        }
        let ver = u32_at(8);
        if ver != BDEV_FORMAT_VERSION {
            return Err(format!("format version {ver}, this build reads {BDEV_FORMAT_VERSION}"));
        }
        if u32_at(12) as usize != HDR_LEN {
            return Err(format!("header length {}, expected {HDR_LEN}", u32_at(12)));
        }
        let h = Header {
            generation: u64_at(16),
            total_blocks: u64_at(24),
            half_blocks: u64_at(32),
            active: b[40],
            ckpt_seq: u64_at(48),
            ckpt_blocks: u64_at(56),
            uuid: b[64..80].try_into().unwrap(),
        };
        if h.active > 1 || h.half_blocks == 0 || 2 + 2 * h.half_blocks > h.total_blocks || h.ckpt_blocks == 0 || h.ckpt_blocks > h.half_blocks {
            return Err(format!("impossible geometry {h:?}"));
        }
        Ok(Some(h))
    }

    fn half_start(&self, half: u8) -> u64 {
        2 + half as u64 * self.half_blocks
    }
    fn salt(&self) -> [u8; 24] {
        salt(&self.uuid, self.generation)
    }
}

fn salt(uuid: &[u8; 16], generation: u64) -> [u8; 24] {
    let mut s = [0u8; 24];
    s[..16].copy_from_slice(uuid);
    s[16..].copy_from_slice(&generation.to_le_bytes());
    s
}

/// Pad a frame to whole blocks with zeros.
fn pad(mut f: Vec<u8>) -> Vec<u8> {
    f.resize(f.len().div_ceil(MBLK as usize) * MBLK as usize, 0);
    f
}

/// What the first two blocks of a device hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// All zeros: a new store may be created.
    Empty,
    /// A header magic in either slot: load it.
    Formatted,
    /// Something else: not ours to overwrite.
    Foreign,
}

/// Does this start of a device or image look like bdev-journal metadata (either header slot)?
pub fn looks_like(b: &[u8]) -> bool {
    b.get(0..8) == Some(BDEV_MAGIC) || b.get(MBLK as usize..MBLK as usize + 8) == Some(BDEV_MAGIC)
}

/// The checksummed journal on a block device.
pub struct BdevJournal {
    dev: Box<dyn MetaDev>,
    /// Device blocks per 4 KiB block.
    per: u64,
    /// Device size in 4 KiB blocks.
    total: u64,
    /// The current header (None until created or loaded).
    cur: Option<Header>,
    /// Next free block in the active half, relative to its start.
    pos: u64,
    seq: u64,
    since_checkpoint: (u64, u64),
    limits: (u64, u64),
    /// The last append found no room: checkpoint before the next.
    full: bool,
}

impl BdevJournal {
    pub fn new(dev: Box<dyn MetaDev>) -> Result<Self, LayoutError> {
        let bs = dev.block_size() as u64;
        if bs == 0 || bs > MBLK || MBLK % bs != 0 {
            return Err(LayoutError::Invalid(format!("metadata device {} has blocks of {bs} bytes: the metadata layout needs a block size dividing 4096", dev.describe())));
        }
        let total = dev.num_blocks() / (MBLK / bs);
        Ok(BdevJournal { per: MBLK / bs, total, dev, cur: None, pos: 0, seq: 0, since_checkpoint: (0, 0), limits: (CHECKPOINT_TXNS, CHECKPOINT_BYTES), full: false })
    }

    /// Compact after `txns` transactions or `bytes` of journal (tests use small values).
    pub fn with_limits(mut self, txns: u64, bytes: u64) -> Self {
        self.limits = (txns, bytes);
        self
    }

    /// The header in use (after create or load).
    pub fn header(&self) -> Option<Header> {
        self.cur
    }

    /// The 4 KiB block the next transaction goes to (absolute, on the device).
    pub fn position(&self) -> Option<u64> {
        self.cur.map(|h| h.half_start(h.active) + self.pos)
    }

    fn io_err(&self, what: &str, e: std::io::Error) -> LayoutError {
        LayoutError::Io(format!("{}: {what}: {e}", self.dev.describe()))
    }

    fn read(&self, blk: u64, n: u64) -> Result<Vec<u8>, LayoutError> {
        self.dev.read(blk * self.per, n * self.per).map_err(|e| self.io_err(&format!("read of blocks {blk}+{n}"), e))
    }

    fn write(&self, blk: u64, data: &[u8], fua: bool) -> Result<(), LayoutError> {
        self.dev.write(blk * self.per, data, fua).map_err(|e| self.io_err(&format!("write at block {blk}"), e))
    }

    fn flush(&self) -> Result<(), LayoutError> {
        self.dev.flush().map_err(|e| self.io_err("flush", e))
    }

    /// What the device holds: nothing, our metadata, or something else.
    pub fn probe(&self) -> Result<Probe, LayoutError> {
        if self.total < 2 {
            return Ok(Probe::Empty); // too small: create says so
        }
        let b = self.read(0, 2)?;
        Ok(if looks_like(&b) {
            Probe::Formatted
        } else if b.iter().all(|&x| x == 0) {
            Probe::Empty
        } else {
            Probe::Foreign
        })
    }

    /// The valid header with the highest generation, and what was wrong with the other slot.
    fn read_headers(&self) -> Result<(Header, Option<String>), LayoutError> {
        let b = self.read(0, 2)?;
        let slots = [Header::decode(&b[..MBLK as usize]), Header::decode(&b[MBLK as usize..])];
        let mut best: Option<Header> = None;
        let mut notes = Vec::new();
        for (i, s) in slots.iter().enumerate() {
            match s {
                Ok(Some(h)) if best.map_or(true, |b| h.generation > b.generation) => best = Some(*h),
                Ok(_) => {}
                Err(why) => notes.push(format!("header slot {i}: {why}")),
            }
        }
        let Some(h) = best else {
            if notes.is_empty() {
                return Err(LayoutError::Corrupt(format!("{}: no layout metadata header (bad magic): not a Palisade layout metadata device", self.dev.describe())));
            }
            return Err(LayoutError::Corrupt(format!("{}: no valid header: {}", self.dev.describe(), notes.join("; "))));
        };
        if h.total_blocks > self.total {
            return Err(LayoutError::Corrupt(format!(
                "{}: the metadata was formatted for {} bytes, the device holds {}",
                self.dev.describe(),
                h.total_blocks * MBLK,
                self.total * MBLK
            )));
        }
        Ok((h, (!notes.is_empty()).then(|| notes.join("; "))))
    }

    /// Read the metadata: header, checkpoint and the journal after it. `strict == false` treats
    /// any damage as the end of the journal (fsck --repair). Positions the journal after the last
    /// good frame.
    pub fn parse(&mut self, strict: bool) -> Result<Parsed, LayoutError> {
        let (h, slot_note) = self.read_headers()?;
        if let Some(n) = &slot_note {
            tracing::warn!(metadata = %self.dev.describe(), "using header generation {}: {n}", h.generation);
        }
        let salt = h.salt();
        let hs = h.half_start(h.active);
        let at = |rel: u64| (hs + rel) * MBLK;
        let ck = self.read(hs, h.ckpt_blocks)?;
        let image = match frame_at_salted(&ck, 0, &salt) {
            Some((KIND_CHECKPOINT, seq, ps, pe)) if seq == h.ckpt_seq && (pe as u64).div_ceil(MBLK) == h.ckpt_blocks => decode_image(&ck[ps..pe])?,
            _ => {
                return Err(LayoutError::Corrupt(format!(
                    "{}: the checkpoint of header generation {} at byte {} does not validate",
                    self.dev.describe(),
                    h.generation,
                    at(0)
                )))
            }
        };
        if image.sb.uuid.as_bytes() != &h.uuid {
            return Err(LayoutError::Corrupt(format!("{}: checkpoint belongs to volume {}, the header to another", self.dev.describe(), image.sb.uuid)));
        }
        let mut off = h.ckpt_blocks;
        let mut last = h.ckpt_seq;
        let mut txns = Vec::new();
        let mut replay = Replay::default();
        while off < h.half_blocks {
            let first = self.read(hs + off, 1)?;
            let Some((KIND_TXN, seq, len)) = peek_frame(&first) else { break };
            if seq != last + 1 {
                break; // a frame of an older use of this half: the end
            }
            // Our next frame's header landed: from here on, damage is a torn append.
            let blocks = (FRAME_HDR + len).div_ceil(MBLK as usize) as u64;
            if off + blocks > h.half_blocks {
                replay.torn_tail = Some((at(off), format!("transaction {seq} would run past the end of the half")));
                break;
            }
            let buf = if blocks == 1 { first } else { self.read(hs + off, blocks)? };
            match frame_at_salted(&buf, 0, &salt) {
                Some((KIND_TXN, s, ps, pe)) if s == seq => {
                    let recs = decode_txn(&buf[ps..pe], seq, at(off))?;
                    replay.records += recs.len() as u64;
                    txns.push(recs);
                    last = seq;
                    off += blocks;
                }
                _ => {
                    replay.torn_tail = Some((at(off), format!("transaction {seq}: checksum mismatch")));
                    break;
                }
            }
        }
        // A valid frame after the stop is damage in the middle, not the end of the journal.
        if let Some(o) = self.later_frame(&h, off, last)? {
            if strict {
                let why = replay.torn_tail.as_ref().map_or("no valid frame".to_string(), |t| t.1.clone());
                return Err(LayoutError::Corrupt(format!(
                    "{}: journal damaged at byte {} ({why}) with valid transactions after it at byte {}: refusing to replay (run palisade fsck --repair to cut it there, losing later transactions)",
                    self.dev.describe(),
                    at(off),
                    at(o)
                )));
            }
            replay.torn_tail.get_or_insert_with(|| (at(off), "damaged frame".into()));
        }
        replay.transactions = txns.len() as u64;
        replay.bytes = off * MBLK;
        self.cur = Some(h);
        self.pos = off;
        self.seq = last;
        self.since_checkpoint = (txns.len() as u64, (off - h.ckpt_blocks) * MBLK);
        self.full = false;
        Ok(Parsed { sb: image.sb.clone(), image, txns, last_seq: last, good_len: at(off), replay })
    }

    /// The first block after `off` (within [`SCAN_BLOCKS`]) where a frame of this generation with
    /// a sequence number above `last` validates.
    fn later_frame(&self, h: &Header, off: u64, last: u64) -> Result<Option<u64>, LayoutError> {
        let hs = h.half_start(h.active);
        let end = h.half_blocks.min(off + 1 + SCAN_BLOCKS);
        if off + 1 >= end {
            return Ok(None);
        }
        let win = self.read(hs + off + 1, end - off - 1)?;
        for (i, blk) in win.chunks(MBLK as usize).enumerate() {
            let o = off + 1 + i as u64;
            let Some((_, seq, len)) = peek_frame(blk) else { continue };
            if seq <= last {
                continue;
            }
            let blocks = (FRAME_HDR + len).div_ceil(MBLK as usize) as u64;
            if o + blocks > h.half_blocks {
                continue;
            }
            let buf = self.read(hs + o, blocks)?;
            if frame_at_salted(&buf, 0, &h.salt()).is_some() {
                return Ok(Some(o));
            }
        }
        Ok(None)
    }

    /// Write a checkpoint of `st` with sequence number `seq` into the inactive half and switch to
    /// it (also fsck --repair).
    pub fn checkpoint_fresh(&mut self, st: &State, seq: u64) -> Result<(), LayoutError> {
        let (generation, half, total, half_blocks) = match &self.cur {
            Some(h) => (h.generation + 1, 1 - h.active, h.total_blocks, h.half_blocks),
            None => (1, 0, self.total, self.total.saturating_sub(2) / 2),
        };
        let uuid = *st.sb.uuid.as_bytes();
        let frame = pad(encode_frame_salted(KIND_CHECKPOINT, seq, &encode_image(st), &salt(&uuid, generation)));
        let blocks = frame.len() as u64 / MBLK;
        // A checkpoint and at least one journal block in each half, plus the two header blocks.
        if blocks + 1 > half_blocks {
            return Err(LayoutError::NoSpace(format!(
                "metadata bdev too small: need {} bytes ({} of checkpoint per half, twice, plus headers and journal room), {} holds {}",
                (2 + 2 * (blocks + 1)) * MBLK,
                blocks * MBLK,
                self.dev.describe(),
                total * MBLK
            )));
        }
        let h = Header { generation, total_blocks: total, half_blocks, active: half, ckpt_seq: seq, ckpt_blocks: blocks, uuid };
        self.write(h.half_start(half), &frame, false)?;
        self.flush()?;
        self.write(generation % 2, &h.encode(), true)?;
        self.flush()?;
        self.cur = Some(h);
        self.pos = blocks;
        self.seq = seq;
        self.since_checkpoint = (0, 0);
        self.full = false;
        Ok(())
    }
}

impl MetaStore for BdevJournal {
    fn create(&mut self, st: &State) -> Result<(), LayoutError> {
        match self.probe()? {
            Probe::Empty => {}
            Probe::Formatted => return Err(LayoutError::Invalid(format!("{} already holds layout metadata", self.dev.describe()))),
            Probe::Foreign => {
                return Err(LayoutError::Invalid(format!(
                    "{} holds data that is not Palisade layout metadata (its first 8 KiB are not zero): not overwriting it",
                    self.dev.describe()
                )))
            }
        }
        self.cur = None;
        self.checkpoint_fresh(st, 1)
    }

    fn load(&mut self) -> Result<(State, Replay), LayoutError> {
        let p = self.parse(true)?;
        let st = load_state(&p)?;
        // Start from a fresh checkpoint in the other half: drops a torn tail, bounds the next replay.
        self.checkpoint_fresh(&st, p.last_seq + 1)?;
        Ok((st, p.replay))
    }

    fn append(&mut self, txn: &[Record]) -> Result<(), LayoutError> {
        let h = self.cur.ok_or_else(|| LayoutError::Io("journal not open".into()))?;
        let frame = pad(encode_frame_salted(KIND_TXN, self.seq + 1, &encode_txn(txn), &h.salt()));
        let blocks = frame.len() as u64 / MBLK;
        if self.pos + blocks > h.half_blocks {
            self.full = true;
            if h.ckpt_blocks + blocks > h.half_blocks {
                return Err(LayoutError::NoSpace(format!(
                    "metadata bdev too small: a transaction of {} bytes does not fit after a checkpoint of {} bytes in a half of {} bytes ({})",
                    blocks * MBLK,
                    h.ckpt_blocks * MBLK,
                    h.half_blocks * MBLK,
                    self.dev.describe()
                )));
            }
            return Err(LayoutError::NoSpace(format!("metadata journal on {} is full until the next checkpoint", self.dev.describe())));
        }
        // A failed write leaves `pos` alone: the next append overwrites whatever part landed.
        self.write(h.half_start(h.active) + self.pos, &frame, true)?;
        self.pos += blocks;
        self.seq += 1;
        self.since_checkpoint.0 += 1;
        self.since_checkpoint.1 += blocks * MBLK;
        Ok(())
    }

    fn checkpoint(&mut self, st: &State) -> Result<(), LayoutError> {
        if self.cur.is_none() {
            return Err(LayoutError::Io("journal not open".into()));
        }
        self.checkpoint_fresh(st, self.seq + 1)
    }

    fn wants_checkpoint(&self) -> bool {
        let Some(h) = &self.cur else { return false };
        let room = h.half_blocks - h.ckpt_blocks;
        let used = self.pos - h.ckpt_blocks;
        self.full || used * 4 >= room * 3 || self.since_checkpoint.0 >= self.limits.0 || self.since_checkpoint.1 >= self.limits.1
    }

    fn describe(&self) -> String {
        self.dev.describe()
    }
}
