//! Offline check of a layout volume's metadata (`palisade fsck`): replays the journal exactly as
//! start-up does and proves the invariants — every committed extent inside the volume and owned,
//! no block owned twice (an uncommitted block is never also file data), free + owned = volume —
//! and, with the data device, that every extent lies on it. `--repair` truncates a damaged
//! journal at the damage and rewrites a checkpoint with the free space recomputed.
//!
//! The metadata is a file journal (`metadata_path`) or the device or image file behind a
//! `metadata_bdev`; the format is told by the header magic.

use std::path::Path;

use serde::Serialize;

use super::alloc::FreeTree;
use super::bdev_journal::{self, BdevJournal};
use super::error::LayoutError;
use super::journal::{self, FileJournal, MetaStore};
use super::metadev::FileMetaDev;
use super::state::State;

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub volume: String,
    pub block_size: u32,
    pub num_blocks: u64,
    pub files: usize,
    pub clients: usize,
    pub fenced_clients: usize,
    pub grants: usize,
    pub committed_blocks: u64,
    pub shared_blocks: u64,
    pub uncommitted_blocks: u64,
    pub free_blocks: u64,
    pub transactions_replayed: u64,
    pub torn_tail: Option<String>,
    /// `file` (metadata_path), `bdev` (the metadata_bdev layout) or `etcd` (metadata_cluster).
    pub format: &'static str,
    /// Bdev layout: the header generation in use and its half (`A` or `B`).
    pub bdev_header: Option<(u64, char)>,
    /// etcd: the sequence number of the last transaction.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_head: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub consistent: bool,
    pub problems: Vec<String>,
    pub repaired: bool,
    pub summary: Summary,
}

fn summarize(st: &State) -> Summary {
    let committed: u64 = st.refs.runs().filter(|r| r.2 >= 1).map(|r| r.1).sum::<u64>();
    let pending: u64 = st.grants.values().map(|g| g.pending.blocks()).sum();
    Summary {
        volume: st.sb.name.clone(),
        block_size: st.sb.block_size,
        num_blocks: st.sb.num_blocks,
        files: st.files.len(),
        clients: st.clients.len(),
        fenced_clients: st.clients.values().filter(|c| c.fenced).count(),
        grants: st.grants.len(),
        committed_blocks: committed - pending,
        shared_blocks: st.refs.runs().filter(|r| r.2 > 1).map(|r| r.1).sum(),
        uncommitted_blocks: pending,
        free_blocks: st.free.free_blocks(),
        ..Default::default()
    }
}

/// Is the metadata at `path` in the bdev layout (either header slot carries its magic)?
fn is_bdev_layout(path: &Path) -> Result<bool, LayoutError> {
    use std::io::Read;
    let mut head = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(2 * bdev_journal::MBLK).read_to_end(&mut head))
        .map_err(|e| LayoutError::Io(format!("{}: {e}", path.display())))?;
    Ok(bdev_journal::looks_like(&head))
}

/// Check the metadata at `path` (and the data device file, if given); repair if asked.
pub fn fsck(path: &Path, bdev: Option<&Path>, repair: bool) -> Result<Report, LayoutError> {
    let mut problems = Vec::new();
    let mut on_bdev = None;
    let parsed = if is_bdev_layout(path)? {
        let dev = FileMetaDev::open(path, repair).map_err(|e| LayoutError::Io(format!("{}: {e}", path.display())))?;
        let mut j = BdevJournal::new(Box::new(dev))?;
        let parsed = match j.parse(true) {
            Ok(p) => p,
            Err(e) if repair => {
                problems.push(format!("{e}"));
                j.parse(false)?
            }
            Err(e) => return Err(e),
        };
        on_bdev = Some(j);
        parsed
    } else {
        let bytes = std::fs::read(path).map_err(|e| LayoutError::Io(format!("{}: {e}", path.display())))?;
        match journal::parse(&bytes) {
            Ok(p) => p,
            Err(e) if repair => {
                problems.push(format!("{e}"));
                journal::parse_mode(&bytes, false)?
            }
            Err(e) => return Err(e),
        }
    };
    let bdev_header = on_bdev.as_ref().and_then(|j| j.header()).map(|h| (h.generation, if h.active == 0 { 'A' } else { 'B' }));
    let torn = parsed.replay.torn_tail.as_ref().map(|(o, why)| format!("ignored torn tail at offset {o}: {why}"));
    let mut st = match journal::replay(&parsed) {
        Ok(st) => st,
        Err(e) if repair => {
            // Replay what applies cleanly, stop at the first transaction that does not.
            problems.push(format!("{e}"));
            let mut st = State::from_image(parsed.image.clone())?;
            for t in &parsed.txns {
                let mut next = st.clone();
                if next.apply_all(t).is_err() {
                    break;
                }
                st = next;
            }
            st
        }
        Err(e) => return Err(e),
    };
    problems.extend(st.check());
    if let Some(dev) = bdev {
        match std::fs::metadata(dev) {
            Err(e) => problems.push(format!("data device {}: {e}", dev.display())),
            Ok(m) => {
                let size = if m.len() > 0 { m.len() } else { block_dev_size(dev).unwrap_or(0) };
                let need = st.sb.num_blocks * st.sb.block_size as u64;
                if size < need {
                    problems.push(format!("data device {} holds {size} bytes, the volume needs {need}", dev.display()));
                }
            }
        }
    }
    let mut repaired = false;
    if repair && !problems.is_empty() {
        // Free space is whatever no map or grant references.
        let mut free = FreeTree::default();
        let mut pos = 0;
        for (s, l, _) in st.refs.runs().collect::<Vec<_>>() {
            if s > pos {
                free.give(pos, s - pos)?;
            }
            pos = s + l;
        }
        if pos < st.sb.num_blocks {
            free.give(pos, st.sb.num_blocks - pos)?;
        }
        st.free = free;
        match on_bdev.as_mut() {
            // Into the other half under the next generation: the damaged half is left behind.
            Some(j) => j.checkpoint_fresh(&st, parsed.last_seq + 1)?,
            None => {
                let mut j = FileJournal::new(path);
                j.lock()?;
                j.checkpoint_fresh(&st, parsed.last_seq + 1)?;
            }
        }
        repaired = true;
        problems = st.check();
    }
    let mut summary = summarize(&st);
    summary.transactions_replayed = parsed.replay.transactions;
    summary.torn_tail = torn;
    summary.format = if on_bdev.is_some() { "bdev" } else { "file" };
    summary.bdev_header = bdev_header;
    Ok(Report { consistent: problems.is_empty(), problems, repaired, summary })
}

/// Check a `metadata_cluster` volume's state in etcd (`palisade fsck --cluster`): the same
/// replay and invariants as for a journal, read at one etcd revision (nodes may keep running).
pub fn fsck_etcd(endpoints: &[String], prefix: &str, data_uuid: &uuid::Uuid) -> Result<Report, LayoutError> {
    let Some((st, replay, head)) = super::etcd_meta::load_offline(endpoints, prefix, data_uuid)? else {
        return Err(LayoutError::Invalid(format!("no layout state for data device {data_uuid} under {prefix}/layout/")));
    };
    let problems = st.check();
    let mut summary = summarize(&st);
    summary.transactions_replayed = replay.transactions;
    summary.format = "etcd";
    summary.etcd_head = Some(head);
    Ok(Report { consistent: problems.is_empty(), problems, repaired: false, summary })
}

fn block_dev_size(p: &Path) -> Option<u64> {
    use std::io::{Seek, SeekFrom};
    std::fs::File::open(p).ok()?.seek(SeekFrom::End(0)).ok()
}

#[allow(dead_code)]
fn _assert_store_is_object_safe(_: &dyn MetaStore) {}
