//! APTPL / PTPL state on disk: one JSON file per volume, written atomically (temp file, fsync,
//! rename, fsync of the directory) before the command that changed it completes, checked on load
//! (format tag, volume UUID, CRC32C of the body) so a corrupt or truncated file is refused, never
//! silently dropped.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::state::PrState;

const FORMAT: &str = "palisade-pr-1";

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("reservation state file {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("reservation state file {0} is corrupt or truncated ({1}); refusing to start with it (move it away to discard the persistent reservations it held)")]
    Corrupt(PathBuf, String),
    #[error("reservation state file {0} belongs to volume {1}, not {2}")]
    WrongVolume(PathBuf, String, String),
}

#[derive(Serialize, Deserialize)]
struct Body {
    format: String,
    volume_uuid: String,
    state: PrState,
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    /// CRC32C of the serialized body.
    crc32c: u32,
    body: serde_json::Value,
}

/// Where a volume's state lives: `<state_dir>/<bdev uuid>.pr.json` unless a file is given
/// (SPDK's `ptpl_file`).
#[derive(Clone, Debug)]
pub struct Store {
    pub path: PathBuf,
    pub volume_uuid: String,
}

impl Store {
    pub fn in_dir(dir: &Path, uuid: &uuid::Uuid) -> Store {
        Store { path: dir.join(format!("{uuid}.pr.json")), volume_uuid: uuid.to_string() }
    }

    /// The persisted state, if the file exists.
    pub fn load(&self) -> Result<Option<PrState>, PersistError> {
        let p = &self.path;
        let bytes = match fs::read(p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(PersistError::Io(p.clone(), e)),
        };
        let env: Envelope = serde_json::from_slice(&bytes).map_err(|e| PersistError::Corrupt(p.clone(), e.to_string()))?;
        let canon = serde_json::to_vec(&env.body).map_err(|e| PersistError::Corrupt(p.clone(), e.to_string()))?;
        if crc32c::crc32c(&canon) != env.crc32c {
            return Err(PersistError::Corrupt(p.clone(), "checksum mismatch".into()));
        }
        let body: Body = serde_json::from_value(env.body).map_err(|e| PersistError::Corrupt(p.clone(), e.to_string()))?;
        if body.format != FORMAT {
            return Err(PersistError::Corrupt(p.clone(), format!("unknown format {:?}", body.format)));
        }
        if body.volume_uuid != self.volume_uuid {
            return Err(PersistError::WrongVolume(p.clone(), body.volume_uuid, self.volume_uuid.clone()));
        }
        validate(&body.state).map_err(|e| PersistError::Corrupt(p.clone(), e))?;
        Ok(Some(body.state))
    }

    /// Replace the file with `state` atomically and durably.
    pub fn save(&self, state: &PrState) -> Result<(), PersistError> {
        let body = serde_json::to_value(Body { format: FORMAT.into(), volume_uuid: self.volume_uuid.clone(), state: state.clone() })
            .map_err(|e| PersistError::Corrupt(self.path.clone(), e.to_string()))?;
        let canon = serde_json::to_vec(&body).map_err(|e| PersistError::Corrupt(self.path.clone(), e.to_string()))?;
        let env = Envelope { crc32c: crc32c::crc32c(&canon), body };
        let bytes = serde_json::to_vec_pretty(&env).map_err(|e| PersistError::Corrupt(self.path.clone(), e.to_string()))?;
        write_atomic(&self.path, &bytes).map_err(|e| PersistError::Io(self.path.clone(), e))
    }

    /// Persistence turned off: the state must not come back after a restart.
    pub fn remove(&self) -> Result<(), PersistError> {
        match fs::remove_file(&self.path) {
            Ok(()) => sync_dir(&self.path).map_err(|e| PersistError::Io(self.path.clone(), e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(PersistError::Io(self.path.clone(), e)),
        }
    }
}

fn validate(s: &PrState) -> Result<(), String> {
    if !s.aptpl {
        return Err("APTPL is off in a persisted state".into());
    }
    if let Some(r) = s.reservation {
        if !s.registrants.iter().any(|g| g.id == r.holder) {
            return Err("reservation holder is not a registrant".into());
        }
    }
    if s.registrants.iter().any(|g| g.key == 0 || g.id >= s.next_id) {
        return Err("invalid registrant".into());
    }
    Ok(())
}

/// Write to `<path>.tmp`, fsync, rename over `path`, fsync the directory: a crash at any point
/// leaves either the old file or the new one (POSIX rename atomicity).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir(path)
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}
