//! The metadata store interface and its local implementation: a checksummed journal in a file.
//!
//! The store talks to metadata only through [`MetaStore`] (create, load, append a transaction,
//! checkpoint), so a distributed backend (etcd, as the design's "beyond one machine" asks) is a
//! new implementation of this trait, not a rewrite. The on-disk format is in `FORMAT.md`. The
//! frame and state encoding here is shared with [`super::bdev_journal`] (metadata on a bdev).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use super::error::LayoutError;
use super::state::{Image, Record, State, Superblock};

pub const SB_MAGIC: &[u8; 8] = b"PLSDLAYT";
pub const SB_SIZE: usize = 4096;
pub const FORMAT_VERSION: u32 = 1;
pub const FRAME_MAGIC: u32 = 0x504C_4A52; // "PLJR"
pub const FRAME_HDR: usize = 24;
pub const KIND_CHECKPOINT: u8 = 1;
pub const KIND_TXN: u8 = 2;
/// Compact when the journal has grown past this many bytes since the last checkpoint.
pub const CHECKPOINT_BYTES: u64 = 4 << 20;
/// ... or this many transactions.
pub const CHECKPOINT_TXNS: u64 = 4096;

/// Durable home of one layout volume's metadata.
pub trait MetaStore: Send {
    /// Start a new, empty metadata store holding `st` (fails if one exists).
    fn create(&mut self, st: &State) -> Result<(), LayoutError>;
    /// Load the last durable state (replaying the journal).
    fn load(&mut self) -> Result<(State, Replay), LayoutError>;
    /// Make one transaction durable; all of it is replayed or none of it.
    fn append(&mut self, txn: &[Record]) -> Result<(), LayoutError>;
    /// Replace the journal with a checkpoint of `st` (atomically).
    fn checkpoint(&mut self, st: &State) -> Result<(), LayoutError>;
    /// Has enough been appended that a checkpoint is worth it?
    fn wants_checkpoint(&self) -> bool;
    fn describe(&self) -> String;

    // ----- shared stores (several writers, e.g. etcd); a local journal has one writer -----

    /// Whether other writers append to this store too. Then `append` fails with
    /// [`LayoutError::Stale`] when one of them appended first, the caller brings its state up to
    /// date with [`MetaStore::catch_up`] and judges its operation again; and recalls are journaled
    /// ([`Record::GrantRecall`]) so every writer sees them.
    fn shared(&self) -> bool {
        false
    }
    /// What others appended since this store last loaded, appended or caught up. Without `fetch`,
    /// only what the store already heard (its watch); with it, the store also asks for the head
    /// (an operation that failed with `Stale`, a read that must see every acknowledged write).
    fn catch_up(&mut self, _fetch: bool) -> Result<CatchUp, LayoutError> {
        Ok(CatchUp::Txns(Vec::new()))
    }
    /// The cross-node side of a shared store, used without the volume lock.
    fn peers(&self) -> Option<Arc<dyn Peers>> {
        None
    }
    /// May state changes be made now? (A shared store fails closed while it cannot write.)
    fn writable(&self) -> Result<(), LayoutError> {
        Ok(())
    }
    /// The sequence number of the last transaction this store holds (appended or caught up).
    fn head(&self) -> u64 {
        0
    }
    /// The caller's state (and its guard) now reflects everything up to [`MetaStore::head`]: what
    /// [`Peers::settle`] waits for on every node.
    fn installed(&self) {}
}

/// What a shared store offers outside the volume lock.
pub trait Peers: Send + Sync {
    /// Signalled whenever others appended (so a follower thread applies it at once: the data
    /// path's guard must enforce new grants and fences without waiting for the next call).
    fn changes(&self) -> &Changes;
    /// Return once every live node has installed this store's transactions up to `seq` (a fence
    /// relies on every guard refusing the client before its key is preempted).
    fn settle(&self, seq: u64) -> Result<(), LayoutError>;
    /// Return once every live node has journaled the written-since-allocation bits its data path
    /// set (a commit on one node must know which blocks clients wrote through the others).
    fn collect_written(&self) -> Result<(), LayoutError>;
    /// What this node does when another collects: journal its bits; true when done.
    fn on_collect(&self, f: Box<dyn Fn() -> bool + Send + Sync>);
}

/// What a shared store's [`MetaStore::catch_up`] found.
pub enum CatchUp {
    /// Transactions to apply in order (possibly none).
    Txns(Vec<Vec<Record>>),
    /// The transactions in between were compacted away: the whole state, as of the head.
    Reload(State),
}

/// A wake-up counter: the store's watch bumps it, a follower thread waits on it.
#[derive(Default)]
pub struct Changes {
    count: Mutex<u64>,
    cv: Condvar,
}

impl Changes {
    pub fn notify(&self) {
        *self.count.lock().unwrap() += 1;
        self.cv.notify_all();
    }
    /// Wait until the count differs from `seen` (or `timeout`); returns the count.
    pub fn wait(&self, seen: u64, timeout: std::time::Duration) -> u64 {
        let g = self.count.lock().unwrap();
        let (g, _) = self.cv.wait_timeout_while(g, timeout, |c| *c == seen).unwrap();
        *g
    }
}

/// What replay found.
#[derive(Clone, Debug, Default)]
pub struct Replay {
    pub transactions: u64,
    pub records: u64,
    /// A torn (partially written) last frame was ignored: why and at which offset.
    pub torn_tail: Option<(u64, String)>,
    pub bytes: u64,
}

fn crc(parts: &[&[u8]]) -> u32 {
    parts.iter().fold(0u32, |c, p| crc32c::crc32c_append(c, p))
}

pub fn encode_superblock(sb: &Superblock) -> Vec<u8> {
    let payload = serde_json::to_vec(sb).expect("superblock serializes");
    assert!(payload.len() + 20 <= SB_SIZE, "superblock too large");
    let mut b = Vec::with_capacity(SB_SIZE);
    b.extend_from_slice(SB_MAGIC);
    let ver = FORMAT_VERSION.to_le_bytes();
    let len = (payload.len() as u32).to_le_bytes();
    b.extend_from_slice(&ver);
    b.extend_from_slice(&len);
    b.extend_from_slice(&crc(&[&ver, &len, &payload]).to_le_bytes());
    b.extend_from_slice(&payload);
    b.resize(SB_SIZE, 0);
    b
}

pub fn decode_superblock(b: &[u8]) -> Result<Superblock, LayoutError> {
    if b.len() < SB_SIZE || &b[..8] != SB_MAGIC {
        return Err(LayoutError::Corrupt("no layout superblock (bad magic): not a Palisade layout metadata store".into()));
    }
    let ver = u32::from_le_bytes(b[8..12].try_into().unwrap());
    let len = u32::from_le_bytes(b[12..16].try_into().unwrap()) as usize;
    let sum = u32::from_le_bytes(b[16..20].try_into().unwrap());
    if ver != FORMAT_VERSION {
        return Err(LayoutError::Corrupt(format!("superblock format version {ver}, this build reads {FORMAT_VERSION}")));
    }
    if 20 + len > SB_SIZE || crc(&[&b[8..12], &b[12..16], &b[20..20 + len]]) != sum {
        return Err(LayoutError::Corrupt("superblock checksum mismatch".into()));
    }
    serde_json::from_slice(&b[20..20 + len]).map_err(|e| LayoutError::Corrupt(format!("superblock: {e}")))
}

pub fn encode_frame(kind: u8, seq: u64, payload: &[u8]) -> Vec<u8> {
    encode_frame_salted(kind, seq, payload, &[])
}

/// A frame whose checksum also covers `salt` (bytes not stored in the frame). The file journal
/// uses no salt; the bdev journal salts with the volume UUID and the header generation, so a
/// stale frame left in a reused half by an older generation (or an older format) never validates.
pub fn encode_frame_salted(kind: u8, seq: u64, payload: &[u8], salt: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(FRAME_HDR + payload.len());
    let k = [kind, 0, 0, 0];
    let len = (payload.len() as u32).to_le_bytes();
    let s = seq.to_le_bytes();
    b.extend_from_slice(&FRAME_MAGIC.to_le_bytes());
    b.extend_from_slice(&k);
    b.extend_from_slice(&len);
    b.extend_from_slice(&s);
    b.extend_from_slice(&crc(&[salt, &k, &len, &s, payload]).to_le_bytes());
    b.extend_from_slice(payload);
    b
}

/// The unchecked header of a frame at the start of `h`: (kind, seq, payload length), if the
/// magic is there.
pub fn peek_frame(h: &[u8]) -> Option<(u8, u64, usize)> {
    let h = h.get(..FRAME_HDR)?;
    if u32::from_le_bytes(h[0..4].try_into().unwrap()) != FRAME_MAGIC {
        return None;
    }
    Some((h[4], u64::from_le_bytes(h[12..20].try_into().unwrap()), u32::from_le_bytes(h[8..12].try_into().unwrap()) as usize))
}

/// A frame that validates at `off`: (kind, seq, payload range end).
fn frame_at(b: &[u8], off: usize) -> Option<(u8, u64, usize, usize)> {
    frame_at_salted(b, off, &[])
}

/// A frame (checksummed with `salt`) that validates at `off`: (kind, seq, payload start, end).
pub fn frame_at_salted(b: &[u8], off: usize, salt: &[u8]) -> Option<(u8, u64, usize, usize)> {
    let h = b.get(off..off + FRAME_HDR)?;
    let (_, seq, len) = peek_frame(h)?;
    let sum = u32::from_le_bytes(h[20..24].try_into().unwrap());
    let p = b.get(off + FRAME_HDR..off + FRAME_HDR + len)?;
    (crc(&[salt, &h[4..8], &h[8..12], &h[12..20], p]) == sum).then_some((h[4], seq, off + FRAME_HDR, off + FRAME_HDR + len))
}

/// The payload of a checkpoint frame: the whole state.
pub fn encode_image(st: &State) -> Vec<u8> {
    serde_json::to_vec(&st.image()).expect("image serializes")
}

pub fn decode_image(payload: &[u8]) -> Result<Image, LayoutError> {
    serde_json::from_slice(payload).map_err(|e| LayoutError::Corrupt(format!("checkpoint: {e}")))
}

/// The payload of a transaction frame: its records.
pub fn encode_txn(txn: &[Record]) -> Vec<u8> {
    serde_json::to_vec(txn).expect("records serialize")
}

/// Decode a transaction payload whose checksum matched (`seq` and `off` name it in errors).
pub fn decode_txn(payload: &[u8], seq: u64, off: u64) -> Result<Vec<Record>, LayoutError> {
    serde_json::from_slice(payload).map_err(|e| LayoutError::Corrupt(format!("transaction {seq} at offset {off}: checksum ok but undecodable: {e}")))
}

/// A parsed metadata file.
#[derive(Debug)]
pub struct Parsed {
    pub sb: Superblock,
    pub image: Image,
    pub txns: Vec<Vec<Record>>,
    pub last_seq: u64,
    /// Bytes up to the end of the last good frame.
    pub good_len: u64,
    pub replay: Replay,
}

/// Parse a whole metadata file. A bad frame with nothing valid after it is a torn tail (a crash
/// during an append, never acknowledged) and is ignored; a bad frame followed by a valid later
/// frame is corruption in the middle and is refused.
pub fn parse(b: &[u8]) -> Result<Parsed, LayoutError> {
    parse_mode(b, true)
}

/// `strict == false` treats any damage as the end of the journal (fsck --repair).
pub fn parse_mode(b: &[u8], strict: bool) -> Result<Parsed, LayoutError> {
    let sb = decode_superblock(b)?;
    let mut off = SB_SIZE;
    let Some((kind, seq0, ps, pe)) = frame_at(b, off) else {
        return Err(LayoutError::Corrupt(format!("no valid checkpoint frame at offset {SB_SIZE}")));
    };
    if kind != KIND_CHECKPOINT {
        return Err(LayoutError::Corrupt("first frame is not a checkpoint".into()));
    }
    let image = decode_image(&b[ps..pe])?;
    if image.sb != sb {
        return Err(LayoutError::Corrupt("checkpoint does not match the superblock".into()));
    }
    off = pe;
    let mut last = seq0;
    let mut txns = Vec::new();
    let mut replay = Replay::default();
    while off < b.len() {
        match frame_at(b, off) {
            Some((KIND_TXN, seq, ps, pe)) if seq == last + 1 => {
                let recs = decode_txn(&b[ps..pe], seq, off as u64)?;
                replay.records += recs.len() as u64;
                txns.push(recs);
                last = seq;
                off = pe;
            }
            other => {
                let why = match other {
                    None => "bad magic, short frame or checksum mismatch".to_string(),
                    Some((k, s, _, _)) => format!("unexpected frame kind {k} seq {s} (expected transaction {})", last + 1),
                };
                // Look for any valid later frame: if one exists the damage is not a torn tail.
                let later = (off + 1..b.len().saturating_sub(FRAME_HDR - 1)).find(|&o| frame_at(b, o).is_some_and(|(_, s, _, _)| s > last));
                if let (Some(o), true) = (later, strict) {
                    return Err(LayoutError::Corrupt(format!(
                        "journal damaged at offset {off} ({why}) with valid transactions after it at offset {o}: refusing to replay (run palisade fsck --repair to truncate there, losing later transactions)"
                    )));
                }
                replay.torn_tail = Some((off as u64, why));
                break;
            }
        }
    }
    replay.transactions = txns.len() as u64;
    replay.bytes = b.len() as u64;
    Ok(Parsed { sb, image, txns, last_seq: last, good_len: off as u64, replay })
}

/// Rebuild the state a parsed file describes.
pub fn replay(p: &Parsed) -> Result<State, LayoutError> {
    let mut st = State::from_image(p.image.clone())?;
    for (i, t) in p.txns.iter().enumerate() {
        st.apply_all(t).map_err(|e| LayoutError::Corrupt(format!("replaying transaction {} of {}: {e}", i + 1, p.txns.len())))?;
    }
    Ok(st)
}

/// Replay a parsed journal and check the result (what opening does before it trusts the state).
pub fn load_state(p: &Parsed) -> Result<State, LayoutError> {
    let st = replay(p)?;
    let problems = st.check();
    if !problems.is_empty() {
        return Err(LayoutError::Corrupt(format!("replayed state is inconsistent: {} (run palisade fsck)", problems.join("; "))));
    }
    Ok(st)
}

/// The journal in a local file, appended and fsynced per transaction, compacted by rewriting a
/// checkpoint into a temporary file and renaming it over the old one.
pub struct FileJournal {
    path: PathBuf,
    file: Option<File>,
    seq: u64,
    since_checkpoint: (u64, u64),
    limits: (u64, u64),
    /// `PATH.lock`, flocked while this journal is open: two processes appending to one journal
    /// would corrupt it.
    lock: Option<File>,
}

impl FileJournal {
    pub fn new(path: &Path) -> Self {
        FileJournal { path: path.to_path_buf(), file: None, seq: 0, since_checkpoint: (0, 0), limits: (CHECKPOINT_TXNS, CHECKPOINT_BYTES), lock: None }
    }
    /// Compact after `txns` transactions or `bytes` of journal (tests use small values).
    pub fn with_limits(mut self, txns: u64, bytes: u64) -> Self {
        self.limits = (txns, bytes);
        self
    }
    /// Take the exclusive lock on `PATH.lock` (held until this journal is dropped).
    pub fn lock(&mut self) -> Result<(), LayoutError> {
        if self.lock.is_some() {
            return Ok(());
        }
        let lp = PathBuf::from(format!("{}.lock", self.path.display()));
        let f = OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&lp)
            .map_err(|e| LayoutError::Io(format!("{}: {e}", lp.display())))?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on an open descriptor.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(LayoutError::Invalid(format!("metadata {} is in use by another layout volume or process", self.path.display())));
        }
        self.lock = Some(f);
        Ok(())
    }
    pub fn exists(path: &Path) -> bool {
        std::fs::metadata(path).is_ok_and(|m| m.len() > 0)
    }

    /// Replace the file with a checkpoint of `st` (fsck --repair).
    pub fn checkpoint_fresh(&mut self, st: &State, seq: u64) -> Result<(), LayoutError> {
        self.write_new(st, seq)
    }

    fn write_new(&mut self, st: &State, seq: u64) -> Result<(), LayoutError> {
        let tmp = PathBuf::from(format!("{}.tmp", self.path.display()));
        let mut f = OpenOptions::new().create(true).write(true).truncate(true).open(&tmp)?;
        let mut bytes = encode_superblock(&st.sb);
        bytes.extend_from_slice(&encode_frame(KIND_CHECKPOINT, seq, &encode_image(st)));
        f.write_all(&bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &self.path)?;
        sync_dir(&self.path)?;
        let mut f = OpenOptions::new().read(true).write(true).open(&self.path)?;
        f.seek(SeekFrom::End(0))?;
        self.file = Some(f);
        self.seq = seq;
        self.since_checkpoint = (0, 0);
        Ok(())
    }
}

fn sync_dir(p: &Path) -> std::io::Result<()> {
    let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

impl MetaStore for FileJournal {
    fn create(&mut self, st: &State) -> Result<(), LayoutError> {
        self.lock()?;
        if Self::exists(&self.path) {
            return Err(LayoutError::Invalid(format!("{} already holds metadata", self.path.display())));
        }
        self.write_new(st, 1)
    }

    fn load(&mut self) -> Result<(State, Replay), LayoutError> {
        self.lock()?;
        let mut b = Vec::new();
        File::open(&self.path)?.read_to_end(&mut b)?;
        let p = parse(&b)?;
        let st = load_state(&p)?;
        // Start from a fresh checkpoint: drops a torn tail and bounds the next replay.
        self.write_new(&st, p.last_seq + 1)?;
        Ok((st, p.replay))
    }

    fn append(&mut self, txn: &[Record]) -> Result<(), LayoutError> {
        let f = self.file.as_mut().ok_or_else(|| LayoutError::Io("journal not open".into()))?;
        let frame = encode_frame(KIND_TXN, self.seq + 1, &encode_txn(txn));
        let pos = f.stream_position()?;
        let res = f.write_all(&frame).and_then(|_| f.sync_data());
        if let Err(e) = res {
            // Cut off whatever part of the frame reached the file so the next append follows the
            // last good frame; the transaction was not acknowledged.
            let _ = f.set_len(pos);
            let _ = f.seek(SeekFrom::Start(pos));
            return Err(e.into());
        }
        self.seq += 1;
        self.since_checkpoint.0 += 1;
        self.since_checkpoint.1 += frame.len() as u64;
        Ok(())
    }

    fn checkpoint(&mut self, st: &State) -> Result<(), LayoutError> {
        self.write_new(st, self.seq + 1)
    }

    fn wants_checkpoint(&self) -> bool {
        self.since_checkpoint.0 >= self.limits.0 || self.since_checkpoint.1 >= self.limits.1
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}
