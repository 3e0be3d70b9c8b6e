//! keyring_* methods (SPDK's keyring_file module): named key files for NVMe-oF hosts' DH-HMAC-CHAP
//! keys and TLS PSKs. save_config writes names and paths (the files stay where they are).

use serde::Deserialize;
use serde_json::{json, Value};

use super::registry::{Call, Registry, Subsystem, ANY};
use super::{ok, App, RpcError, RpcResult};
use crate::config::Entry;
use crate::keyring::KeyringError;

pub fn register(r: &mut Registry) {
    r.add("keyring_file_add_key", ANY, keyring_file_add_key);
    r.add("keyring_file_remove_key", ANY, keyring_file_remove_key);
    r.add("keyring_get_keys", ANY, keyring_get_keys);
    r.add_subsystem(Subsystem { name: "keyring", depends_on: &[], config: keyring_config });
}

impl From<KeyringError> for RpcError {
    fn from(e: KeyringError) -> Self {
        RpcError::errno(e.errno(), e)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddKey {
    name: String,
    path: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameOnly {
    name: String,
}

async fn keyring_file_add_key(c: Call) -> RpcResult {
    let p: AddKey = c.params()?;
    if p.name.is_empty() {
        return Err(RpcError::invalid_params("name must not be empty"));
    }
    let _g = c.app.mgmt.lock().await;
    c.app.nvmf.keyring.add_file(&p.name, &p.path)?;
    ok()
}

async fn keyring_file_remove_key(c: Call) -> RpcResult {
    let p: NameOnly = c.params()?;
    let _g = c.app.mgmt.lock().await;
    // A key a host entry still names would leave that host unable to connect: refuse, as the
    // keys in use are what an operator is most likely to remove by mistake.
    for s in c.app.nvmf.subsystems() {
        for h in s.hosts.lock().unwrap().iter() {
            if [&h.psk, &h.dhchap_key, &h.dhchap_ctrlr_key].iter().any(|k| k.as_deref() == Some(p.name.as_str())) {
                return Err(KeyringError::InUse(p.name, format!("host {} of {}", h.nqn, s.nqn)).into());
            }
        }
    }
    c.app.nvmf.keyring.remove(&p.name)?;
    ok()
}

async fn keyring_get_keys(c: Call) -> RpcResult {
    let keys: Vec<Value> = c
        .app
        .nvmf
        .keyring
        .keys()
        .iter()
        .map(|k| json!({"name": k.name, "module": "keyring_file", "removed": false, "probed": false, "refcnt": 1, "path": k.path.to_string_lossy()}))
        .collect();
    Ok(json!(keys))
}

fn keyring_config(app: &App) -> Vec<Entry> {
    app.nvmf
        .keyring
        .keys()
        .iter()
        .map(|k| Entry { method: "keyring_file_add_key".into(), params: Some(json!({"name": k.name, "path": k.path.to_string_lossy()})) })
        .collect()
}

pub fn decode_params(method: &str, p: &Option<Value>) -> Option<Result<(), RpcError>> {
    use super::registry::decode_params_as as decode;
    Some(match method {
        "keyring_file_add_key" => decode::<AddKey>(p).map(drop),
        "keyring_file_remove_key" => decode::<NameOnly>(p).map(drop),
        "keyring_get_keys" => Ok(()),
        _ => return None,
    })
}
