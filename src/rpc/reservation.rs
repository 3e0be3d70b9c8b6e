//! reservation_* methods: inspect a volume's persistent reservations and clear them (operator's
//! override). SPDK has no counterpart (its nvmf reservation state is only reachable through
//! `ptpl_file`), so these are Palisade's own names.

use serde::Deserialize;

use super::registry::{Call, Registry, RUNTIME};
use super::{ok, RpcError, RpcResult};

pub fn register(r: &mut Registry) {
    r.add("reservation_get", RUNTIME, reservation_get);
    r.add("reservation_clear", RUNTIME, reservation_clear);
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BdevName {
    bdev_name: String,
}

fn volume(c: &Call, name: &str) -> Result<std::sync::Arc<crate::volume::Volume>, RpcError> {
    if let Some(v) = c.app.volumes.get(name) {
        return Ok(v);
    }
    if c.app.bdevs.get(name).is_none() {
        return Err(RpcError::errno(libc::ENODEV, format!("bdev {name} not found")));
    }
    Err(RpcError::errno(libc::ENOENT, format!("bdev {name} is not exported by any LUN or namespace")))
}

/// `{"bdev_name"}` → generation, APTPL, reservation (type, key, holder) and registrants (key,
/// identity, holder flag).
async fn reservation_get(c: Call) -> RpcResult {
    let p: BdevName = c.params()?;
    let v = volume(&c, &p.bdev_name)?;
    let mut out = v.reservations().describe();
    out["bdev_name"] = v.name().into();
    out["uuid"] = v.uuid().to_string().into();
    Ok(out)
}

/// `{"bdev_name"}`: remove every registration, the persistent reservation and any SPC-2
/// reservation, as a CLEAR would (registrants get RESERVATIONS PREEMPTED); durable when APTPL.
async fn reservation_clear(c: Call) -> RpcResult {
    let p: BdevName = c.params()?;
    let v = volume(&c, &p.bdev_name)?;
    let _g = c.app.mgmt.lock().await;
    let pr = v.reservations();
    pr.nexus_lost(None);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let r = match pr.operator_clear(Box::new(move |r| {
        let _ = tx.send(r);
    })) {
        Some(r) => r,
        None => rx.await.map_err(|_| RpcError::internal("reservation engine dropped the request"))?,
    };
    r.map_err(|e| RpcError::errno(libc::EIO, e))?;
    ok()
}

/// Decode the params of one of this module's methods alone, without running it (what the
/// fuzz targets and the corpus replay test drive); None: not a method of this module.
pub fn decode_params(method: &str, p: &Option<serde_json::Value>) -> Option<Result<(), RpcError>> {
    use super::registry::decode_params_as as decode;
    Some(match method {
        "reservation_get" => decode::<BdevName>(p).map(drop),
        "reservation_clear" => decode::<BdevName>(p).map(drop),
        _ => return None,
    })
}
