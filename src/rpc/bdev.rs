//! bdev_* methods (SPDK names and parameters) and the bdev subsystem's saved config.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};

use super::registry::{Call, Registry, Subsystem, RUNTIME};
use super::{ok, App, RpcError, RpcResult};
use crate::bdev::{self, delay::DelayBdev, malloc::MallocBdev, null::NullBdev, uring::UringBdev, Bdev};
use crate::config::Entry;

pub fn register(r: &mut Registry) {
    r.add("bdev_malloc_create", RUNTIME, bdev_malloc_create);
    r.add("bdev_malloc_delete", RUNTIME, |c| delete(c, bdev::malloc::PRODUCT));
    r.add("bdev_null_create", RUNTIME, bdev_null_create);
    r.add("bdev_null_delete", RUNTIME, |c| delete(c, bdev::null::PRODUCT));
    r.add("bdev_uring_create", RUNTIME, bdev_uring_create);
    r.add("bdev_uring_delete", RUNTIME, |c| delete(c, bdev::uring::PRODUCT));
    r.add("bdev_delay_create", RUNTIME, bdev_delay_create);
    r.add("bdev_delay_delete", RUNTIME, bdev_delay_delete);
    r.add("bdev_delay_update_latency", RUNTIME, bdev_delay_update_latency);
    r.add("bdev_get_bdevs", RUNTIME, bdev_get_bdevs);
    r.add("bdev_get_iostat", RUNTIME, bdev_get_iostat);
    r.add_subsystem(Subsystem { name: "bdev", depends_on: &[], config: bdev_config });
}

/// Every bdev's constructor call, a virtual bdev after the bdev it is built on.
fn bdev_config(app: &App) -> Vec<Entry> {
    let mut left = app.bdevs.list();
    let mut done: Vec<String> = Vec::new();
    let mut out = Vec::new();
    while !left.is_empty() {
        let before = left.len();
        left.retain(|b| {
            let ready = b.base_bdev().is_none_or(|base| done.iter().any(|d| d == base) || !app.bdevs.contains(base));
            if ready {
                let (method, params) = b.construct();
                out.push(Entry { method: method.to_string(), params: Some(params) });
                done.push(b.info().name.clone());
            }
            !ready
        });
        if left.len() == before {
            break; // cannot happen (claims make a chain): never loop forever
        }
    }
    out
}

fn parse_uuid(s: &Option<String>) -> Result<Option<uuid::Uuid>, RpcError> {
    s.as_deref()
        .map(|u| uuid::Uuid::parse_str(u).map_err(|_| RpcError::invalid_params(format!("uuid: {u:?} is not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"))))
        .transpose()
}

/// A bdev name as SPDK accepts it: non-empty, printable, no whitespace or '/'.
fn check_name(name: &str) -> Result<(), RpcError> {
    if name.is_empty() || name.len() > 255 || name.chars().any(|c| c.is_whitespace() || c.is_control() || c == '/') {
        return Err(RpcError::invalid_params(format!("name: {name:?} is not a valid bdev name")));
    }
    Ok(())
}

fn unsupported_if<T: PartialEq + Default + std::fmt::Debug>(field: &str, v: &Option<T>) -> Result<(), RpcError> {
    match v {
        Some(x) if *x != T::default() => Err(RpcError::invalid_params(format!("{field}: {x:?} is not supported (only 0)"))),
        _ => Ok(()),
    }
}

/// Pick a free default name such as Malloc0, Malloc1, …
fn default_name(app: &App, prefix: &str) -> String {
    (0..).map(|i| format!("{prefix}{i}")).find(|n| !app.bdevs.contains(n)).expect("a free name")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MallocCreate {
    name: Option<String>,
    num_blocks: u64,
    block_size: u32,
    uuid: Option<String>,
    physical_block_size: Option<u32>,
    optimal_io_boundary: Option<u32>,
    md_size: Option<u32>,
    md_interleave: Option<bool>,
    dif_type: Option<u32>,
    dif_is_head_of_md: Option<bool>,
    dif_pi_format: Option<u32>,
    numa_id: Option<i32>,
}

async fn bdev_malloc_create(c: Call) -> RpcResult {
    let p: MallocCreate = c.params()?;
    unsupported_if("md_size", &p.md_size)?;
    unsupported_if("dif_type", &p.dif_type)?;
    let _ = (p.physical_block_size, p.optimal_io_boundary, p.md_interleave, p.dif_is_head_of_md, p.dif_pi_format, p.numa_id);
    let _g = c.app.mgmt.lock().await;
    let name = p.name.unwrap_or_else(|| default_name(&c.app, "Malloc"));
    check_name(&name)?;
    if c.app.bdevs.contains(&name) {
        return Err(bdev::BdevError::Exists(name).into());
    }
    let uuid = parse_uuid(&p.uuid)?;
    // RAM disks take their pages lazily: refuse what the machine can never hold, warn when
    // they would take more than half of it.
    if let Some(phys) = bdev::malloc::physical_memory() {
        let new = p.num_blocks.saturating_mul(p.block_size as u64);
        let existing: u64 = c
            .app
            .bdevs
            .list()
            .iter()
            .map(|b| b.info())
            .filter(|i| i.product_name == bdev::malloc::PRODUCT)
            .map(|i| i.num_blocks.saturating_mul(i.block_size as u64))
            .fold(0, u64::saturating_add);
        match bdev::malloc::memory_verdict(new, existing, phys) {
            Err(why) => return Err(RpcError::errno(libc::ENOMEM, format!("bdev_malloc_create {name}: {why}"))),
            Ok(Some(warning)) => tracing::warn!(bdev = %name, "bdev_malloc_create: {warning}"),
            Ok(None) => {}
        }
    }
    let b = tokio::task::spawn_blocking(move || MallocBdev::new(&name, p.num_blocks, p.block_size, uuid))
        .await
        .map_err(RpcError::internal)??;
    let name = b.info().name.clone();
    c.app.bdevs.add(Arc::new(b))?;
    Ok(json!(name))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NullCreate {
    name: String,
    num_blocks: u64,
    block_size: u32,
    uuid: Option<String>,
    physical_block_size: Option<u32>,
    md_size: Option<u32>,
    dif_type: Option<u32>,
    dif_is_head_of_md: Option<bool>,
    dif_pi_format: Option<u32>,
    preferred_write_alignment: Option<u32>,
    preferred_write_granularity: Option<u32>,
    optimal_write_size: Option<u32>,
    preferred_unmap_alignment: Option<u32>,
    preferred_unmap_granularity: Option<u32>,
}

async fn bdev_null_create(c: Call) -> RpcResult {
    let p: NullCreate = c.params()?;
    unsupported_if("md_size", &p.md_size)?;
    unsupported_if("dif_type", &p.dif_type)?;
    let _ = (
        p.physical_block_size,
        p.dif_is_head_of_md,
        p.dif_pi_format,
        p.preferred_write_alignment,
        p.preferred_write_granularity,
        p.optimal_write_size,
        p.preferred_unmap_alignment,
        p.preferred_unmap_granularity,
    );
    check_name(&p.name)?;
    let _g = c.app.mgmt.lock().await;
    if c.app.bdevs.contains(&p.name) {
        return Err(bdev::BdevError::Exists(p.name).into());
    }
    let b = NullBdev::new(&p.name, p.num_blocks, p.block_size, parse_uuid(&p.uuid)?)?;
    c.app.bdevs.add(Arc::new(b))?;
    Ok(json!(p.name))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UringCreate {
    name: String,
    filename: String,
    block_size: Option<u32>,
    uuid: Option<String>,
}

async fn bdev_uring_create(c: Call) -> RpcResult {
    let p: UringCreate = c.params()?;
    check_name(&p.name)?;
    let _g = c.app.mgmt.lock().await;
    if c.app.bdevs.contains(&p.name) {
        return Err(bdev::BdevError::Exists(p.name).into());
    }
    let uuid = parse_uuid(&p.uuid)?;
    let (name, filename, bs) = (p.name.clone(), p.filename.clone(), p.block_size);
    let b = tokio::task::spawn_blocking(move || UringBdev::new(&name, &filename, bs, uuid))
        .await
        .map_err(RpcError::internal)??;
    c.app.bdevs.add(Arc::new(b))?;
    Ok(json!(p.name))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DelayCreate {
    base_bdev_name: String,
    name: String,
    uuid: Option<String>,
    avg_read_latency: u64,
    p99_read_latency: u64,
    avg_write_latency: u64,
    p99_write_latency: u64,
}

fn delay_user(name: &str) -> String {
    format!("delay:{name}")
}

/// bdev_delay_create (SPDK's parameters, latencies in microseconds): claims the base bdev
/// exclusively, as SPDK's vbdev does, so nothing else writes under the delay.
async fn bdev_delay_create(c: Call) -> RpcResult {
    let p: DelayCreate = c.params()?;
    check_name(&p.name)?;
    let uuid = parse_uuid(&p.uuid)?;
    let _g = c.app.mgmt.lock().await;
    if c.app.bdevs.contains(&p.name) {
        return Err(bdev::BdevError::Exists(p.name).into());
    }
    let user = delay_user(&p.name);
    let base = c.app.bdevs.claim_exclusive(&p.base_bdev_name, &user)?;
    let lat = bdev::delay::Latencies::new(p.avg_read_latency, p.p99_read_latency, p.avg_write_latency, p.p99_write_latency);
    let made = DelayBdev::new(&p.name, base, uuid, lat).and_then(|d| c.app.bdevs.add(Arc::new(d)));
    if let Err(e) = made {
        c.app.bdevs.release(&p.base_bdev_name, &user);
        return Err(e.into());
    }
    Ok(json!(p.name))
}

async fn bdev_delay_delete(c: Call) -> RpcResult {
    let p: ByName = c.params()?;
    let _g = c.app.mgmt.lock().await;
    let b = c.app.bdevs.remove(&p.name, Some(bdev::delay::PRODUCT))?;
    let id = b.info().id;
    let reactors = c.app.reactors.clone();
    tokio::task::spawn_blocking(move || reactors.call_all(move |_| bdev::close_channel(id)))
        .await
        .map_err(RpcError::internal)?;
    if let Some(base) = b.base_bdev() {
        c.app.bdevs.release(base, &delay_user(&p.name));
    }
    ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DelayUpdate {
    delay_bdev_name: String,
    latency_type: String,
    latency_us: u64,
}

async fn bdev_delay_update_latency(c: Call) -> RpcResult {
    let p: DelayUpdate = c.params()?;
    let Some(t) = bdev::delay::LatencyType::parse(&p.latency_type) else {
        return Err(RpcError::invalid_params("Please specify a valid latency type."));
    };
    if p.latency_us > bdev::delay::MAX_LATENCY_US {
        return Err(RpcError::invalid_params(format!("latency_us: must not exceed {}", bdev::delay::MAX_LATENCY_US)));
    }
    let Some(b) = c.app.bdevs.get(&p.delay_bdev_name) else {
        return Err(RpcError::invalid_params("The requested bdev does not exist."));
    };
    let Some(d) = b.as_any().and_then(|a| a.downcast_ref::<DelayBdev>()) else {
        return Err(RpcError::invalid_request("The requested bdev is not a delay bdev."));
    };
    d.latencies().set(t, p.latency_us);
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ByName {
    name: String,
}

async fn delete(c: Call, product: &'static str) -> RpcResult {
    let p: ByName = c.params()?;
    let _g = c.app.mgmt.lock().await;
    let b = c.app.bdevs.remove(&p.name, Some(product))?;
    let id = b.info().id;
    // Each reactor drops its channel; the bdev's memory goes when the last reference does.
    let reactors = c.app.reactors.clone();
    tokio::task::spawn_blocking(move || reactors.call_all(move |_| bdev::close_channel(id)))
        .await
        .map_err(RpcError::internal)?;
    ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetBdevs {
    name: Option<String>,
    /// Milliseconds. A number, not only an integer: rpc.py's batch mode sends its own float
    /// `-t` timeout (e.g. 30.0) under this key.
    timeout: Option<f64>,
}

async fn bdev_get_bdevs(c: Call) -> RpcResult {
    let p: GetBdevs = c.params()?;
    if p.timeout.is_some_and(|t| !(0.0..=3_600_000.0).contains(&t)) {
        return Err(RpcError::invalid_params("timeout: must be 0 to 3600000 milliseconds"));
    }
    let describe = |b: &Arc<dyn Bdev>| bdev::describe(b.as_ref(), !c.app.bdevs.claims(&b.info().name).is_empty());
    match p.name {
        Some(name) => {
            let deadline = std::time::Instant::now() + std::time::Duration::from_millis(p.timeout.unwrap_or(0.0) as u64);
            loop {
                if let Some(b) = c.app.bdevs.get(&name) {
                    return Ok(json!([describe(&b)]));
                }
                if std::time::Instant::now() >= deadline {
                    return Err(RpcError::errno(libc::ENODEV, format!("bdev {name} not found")));
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
        None => Ok(Value::Array(c.app.bdevs.list().iter().map(describe).collect())),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetIostat {
    name: Option<String>,
    names: Option<Vec<String>>,
    #[serde(default)]
    per_channel: bool,
    reset_mode: Option<String>,
}

async fn bdev_get_iostat(c: Call) -> RpcResult {
    let p: GetIostat = c.params()?;
    if let Some(m) = &p.reset_mode {
        if !["all", "maxmin", "error", "none"].contains(&m.as_str()) {
            return Err(RpcError::invalid_params(format!("reset_mode: {m:?} is not one of all, maxmin, error, none")));
        }
    }
    let mut wanted: Vec<String> = p.names.unwrap_or_default();
    wanted.extend(p.name);
    for n in &wanted {
        if c.app.bdevs.get(n).is_none() {
            return Err(RpcError::errno(libc::ENODEV, format!("bdev {n} not found")));
        }
    }
    let ticks = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    if p.per_channel {
        // SPDK's per-channel form: one bdev, its channels by thread.
        let [name] = wanted.as_slice() else {
            return Err(RpcError::invalid_params("per_channel: needs exactly one bdev name"));
        };
        let b = c.app.bdevs.get(name).expect("checked above");
        let channels: Vec<Value> = b
            .stats()
            .per_channel()
            .into_iter()
            .map(|(tid, s)| {
                let mut v = serde_json::to_value(s).expect("stats serialize");
                v["thread_id"] = json!(tid);
                v
            })
            .collect();
        return Ok(json!({"tick_rate": 1_000_000_000u64, "ticks": ticks, "name": b.info().name, "channels": channels}));
    }
    let bdevs: Vec<Value> = c
        .app
        .bdevs
        .list()
        .iter()
        .filter(|b| wanted.is_empty() || wanted.contains(&b.info().name))
        .map(|b| {
            let mut v = serde_json::to_value(b.stats().sum()).expect("stats serialize");
            v["name"] = json!(b.info().name);
            v
        })
        .collect();
    Ok(json!({"tick_rate": 1_000_000_000u64, "ticks": ticks, "bdevs": bdevs}))
}

/// Decode the params of one of this module's methods alone, without running it (what the
/// fuzz targets and the corpus replay test drive); None: not a method of this module.
pub fn decode_params(method: &str, p: &Option<serde_json::Value>) -> Option<Result<(), RpcError>> {
    use super::registry::decode_params_as as decode;
    Some(match method {
        "bdev_malloc_create" => decode::<MallocCreate>(p).map(drop),
        "bdev_malloc_delete" => decode::<ByName>(p).map(drop),
        "bdev_null_create" => decode::<NullCreate>(p).map(drop),
        "bdev_null_delete" => decode::<ByName>(p).map(drop),
        "bdev_uring_create" => decode::<UringCreate>(p).map(drop),
        "bdev_uring_delete" => decode::<ByName>(p).map(drop),
        "bdev_delay_create" => decode::<DelayCreate>(p).map(drop),
        "bdev_delay_delete" => decode::<ByName>(p).map(drop),
        "bdev_delay_update_latency" => decode::<DelayUpdate>(p).map(drop),
        "bdev_get_bdevs" => decode::<GetBdevs>(p).map(drop),
        "bdev_get_iostat" => decode::<GetIostat>(p).map(drop),
        _ => return None,
    })
}
