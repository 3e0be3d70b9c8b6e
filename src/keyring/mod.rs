//! The keyring: named secrets loaded from files, as SPDK's `keyring_file` module keeps them
//! (`keyring_file_add_key NAME PATH`). NVMe-oF hosts refer to keys by name (DH-HMAC-CHAP host and
//! controller keys, TLS PSKs), so a key file can be replaced and re-added without touching the
//! subsystem configuration, and save_config writes names and paths, never secrets.
//!
//! Like SPDK, a key file must be a regular file readable by its owner only (mode 0600 or stricter):
//! a secret that any local user can read is not a secret, and SPDK refuses it for that reason.
//! The file is read once when the key is added; its contents, trimmed of surrounding whitespace,
//! are the key's text (a `DHHC-1:…:` or `NVMeTLSkey-1:…:` string; the users parse it).
//!
//! iSCSI CHAP secrets are not here: SPDK keeps them in `iscsi_create_auth_group` secrets, not in
//! the keyring, and Palisade follows its RPCs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Key files above this size are not key files (the largest NVMe key string is under 200 bytes).
const MAX_KEY_FILE: u64 = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("key {0} already exists")]
    Exists(String),
    #[error("key {0} not found")]
    NotFound(String),
    #[error("key {name}: key path must be absolute: {path}")]
    RelativePath { name: String, path: String },
    #[error("key {name}: {path}: {err}")]
    Io { name: String, path: String, err: std::io::Error },
    #[error("key {name}: {path}: invalid permissions {mode:o} (group or others may access it; use 0600)")]
    Permissions { name: String, path: String, mode: u32 },
    #[error("key {name}: {path}: not a regular file of at most {MAX_KEY_FILE} bytes")]
    NotAKeyFile { name: String, path: String },
    #[error("key {name}: {path}: empty")]
    Empty { name: String, path: String },
    #[error("key {0} is in use by {1}")]
    InUse(String, String),
}

impl KeyringError {
    pub fn errno(&self) -> i32 {
        match self {
            KeyringError::Exists(_) => libc::EEXIST,
            KeyringError::NotFound(_) => libc::ENOENT,
            KeyringError::Io { err, .. } => err.raw_os_error().unwrap_or(libc::EIO),
            KeyringError::Permissions { .. } => libc::EPERM,
            KeyringError::InUse(..) => libc::EBUSY,
            _ => libc::EINVAL,
        }
    }
}

/// One named key.
#[derive(Debug)]
pub struct Key {
    pub name: String,
    pub path: PathBuf,
    /// The file's contents, trimmed.
    pub secret: String,
}

#[derive(Default)]
pub struct Keyring {
    keys: RwLock<BTreeMap<String, Arc<Key>>>,
}

impl Keyring {
    pub fn new() -> Arc<Keyring> {
        Arc::new(Keyring::default())
    }

    /// keyring_file_add_key: read `path` and keep it as `name`.
    pub fn add_file(&self, name: &str, path: &str) -> Result<Arc<Key>, KeyringError> {
        use std::os::unix::fs::PermissionsExt;
        let (n, p) = (name.to_string(), path.to_string());
        if !Path::new(path).is_absolute() {
            return Err(KeyringError::RelativePath { name: n, path: p });
        }
        if self.keys.read().unwrap().contains_key(name) {
            return Err(KeyringError::Exists(n));
        }
        let io = |err| KeyringError::Io { name: n.clone(), path: p.clone(), err };
        let md = std::fs::metadata(path).map_err(io)?;
        if !md.is_file() || md.len() > MAX_KEY_FILE {
            return Err(KeyringError::NotAKeyFile { name: n, path: p });
        }
        let mode = md.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyringError::Permissions { name: n, path: p, mode });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let secret = text.trim().to_string();
        if secret.is_empty() {
            return Err(KeyringError::Empty { name: n, path: p });
        }
        let key = Arc::new(Key { name: n.clone(), path: PathBuf::from(path), secret });
        let mut keys = self.keys.write().unwrap();
        if keys.contains_key(name) {
            return Err(KeyringError::Exists(n));
        }
        keys.insert(n, key.clone());
        Ok(key)
    }

    /// keyring_file_remove_key. Users that resolved the key before keep their copy (as SPDK's
    /// references do); new lookups fail.
    pub fn remove(&self, name: &str) -> Result<(), KeyringError> {
        self.keys.write().unwrap().remove(name).map(drop).ok_or_else(|| KeyringError::NotFound(name.to_string()))
    }

    pub fn get(&self, name: &str) -> Option<Arc<Key>> {
        self.keys.read().unwrap().get(name).cloned()
    }

    /// Every key, by name.
    pub fn keys(&self) -> Vec<Arc<Key>> {
        self.keys.read().unwrap().values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> String {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p.to_string_lossy().into_owned()
    }

    #[test]
    fn add_get_remove_and_refusals() {
        let d = tempfile::tempdir().unwrap();
        let k = Keyring::new();
        let good = write(d.path(), "k0", "  DHHC-1:00:abc:\n", 0o600);
        assert_eq!(k.add_file("key0", &good).unwrap().secret, "DHHC-1:00:abc:");
        assert!(matches!(k.add_file("key0", &good), Err(KeyringError::Exists(_))));
        let open = write(d.path(), "k1", "x", 0o644);
        assert!(matches!(k.add_file("key1", &open), Err(KeyringError::Permissions { .. })));
        assert!(matches!(k.add_file("key1", "rel/path"), Err(KeyringError::RelativePath { .. })));
        let empty = write(d.path(), "k2", "\n", 0o600);
        assert!(matches!(k.add_file("key2", &empty), Err(KeyringError::Empty { .. })));
        assert!(matches!(k.add_file("key3", d.path().to_str().unwrap()), Err(KeyringError::NotAKeyFile { .. })));
        assert_eq!(k.keys().len(), 1);
        k.remove("key0").unwrap();
        assert!(k.get("key0").is_none());
        assert!(matches!(k.remove("key0"), Err(KeyringError::NotFound(_))));
    }
}
