//! Framework and introspection methods: rpc_get_methods, spdk_get_version, framework_*,
//! spdk_kill_instance, log levels, save_config.

use serde::Deserialize;
use serde_json::{json, Value};

use super::registry::{Call, Registry, ANY, RUNTIME, STARTUP};
use super::{ok, RpcError, RpcResult};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub fn register(r: &mut Registry) {
    r.add("rpc_get_methods", ANY, rpc_get_methods);
    r.add("spdk_get_version", ANY, spdk_get_version);
    r.add("framework_get_reactors", ANY, framework_get_reactors);
    r.add("framework_get_subsystems", ANY, framework_get_subsystems);
    r.add("framework_get_config", ANY, framework_get_config);
    r.add("framework_start_init", STARTUP, framework_start_init);
    r.add("framework_wait_init", ANY, framework_wait_init);
    r.add("spdk_kill_instance", ANY, spdk_kill_instance);
    r.add("log_set_level", ANY, log_set_level);
    r.add("log_get_level", ANY, log_get_level);
    r.add("log_set_print_level", ANY, log_set_level);
    r.add("log_get_print_level", ANY, log_get_level);
    r.add("save_config", ANY, save_config);
    let _ = RUNTIME;
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetMethods {
    #[serde(default)]
    current: bool,
    #[serde(default)]
    include_aliases: bool,
}

async fn rpc_get_methods(c: Call) -> RpcResult {
    let p: GetMethods = c.params()?;
    let _ = p.include_aliases; // we register no deprecated aliases
    let state = c.app.state();
    let names: Vec<&str> =
        c.app.registry.methods().filter(|m| !p.current || m.states & state != 0).map(|m| m.name).collect();
    Ok(json!(names))
}

async fn spdk_get_version(c: Call) -> RpcResult {
    let _: Empty = c.params()?;
    let mut it = VERSION.split('.').map(|x| x.parse::<u32>().unwrap_or(0));
    let (major, minor, patch) = (it.next().unwrap_or(0), it.next().unwrap_or(0), it.next().unwrap_or(0));
    Ok(json!({
        "version": format!("Palisade v{VERSION}"),
        "fields": {"major": major, "minor": minor, "patch": patch, "suffix": "", "commit": ""}
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

async fn framework_get_reactors(c: Call) -> RpcResult {
    let _: Empty = c.params()?;
    let set = &c.app.reactors;
    let reactors: Vec<Value> = (0..set.len())
        .map(|i| {
            let (busy, idle, tid) = set.stats(i);
            let core = set.cores()[i];
            let mut r = json!({
                "lcore": core,
                "tid": tid,
                "busy": busy,
                "idle": idle,
                "in_interrupt": set.in_interrupt(i),
                // Palisade: the longest loop iteration since the previous call (a stall measure).
                "max_loop_us": set.take_max_loop_ns(i) / 1000,
                "irq_count": 0,
                "sys_stat": 0,
                "usr_stat": 0,
                "lw_threads": [{"name": format!("reactor_{core}"), "id": i + 1, "cpumask": format!("{:x}", 1u64 << core), "elapsed": busy + idle}]
            });
            if let Some(n) = set.allocations(i) {
                r["allocations"] = json!(n); // feature count-alloc only
            }
            r
        })
        .collect();
    Ok(json!({
        "tick_rate": 1_000_000_000u64,
        "pid": std::process::id(),
        "poll_mode": match set.mode() { crate::reactor::PollMode::Busy => "busy", _ => "adaptive" },
        "reactors": reactors,
        // Palisade: command data held against each protocol's data-buffer budget.
        "data_buffers": {
            "iscsi": budget_json(&c.app.iscsi.data_budget),
            "nvmf_tcp": budget_json(&c.app.nvmf.data_budget),
        },
        "connections": {
            "iscsi": {"open": c.app.iscsi.open_connections().0, "in_login": c.app.iscsi.open_connections().1},
        },
        // Palisade: data segments received in place (reactor::rxloop), since start.
        "rx_in_place": {
            "iscsi": rx_json(&crate::iscsi::conn::RX_STATS, None),
            "nvmf_tcp": rx_json(&crate::nvmf::tcp::conn::RX_STATS, Some(&crate::nvmf::tcp::conn::CAPSULES_IN_PLACE)),
        }
    }))
}

fn rx_json(s: &crate::reactor::rxloop::RxStats, capsules: Option<&crate::reactor::counter::CoreCounter>) -> Value {
    let mut v = json!({
        "landings": s.landings.sum(),
        "bytes_in_place": s.in_place.sum(),
        "bytes_copied": s.copied.sum(),
    });
    if let Some(c) = capsules {
        v["capsules"] = json!(c.sum());
    }
    v
}

fn budget_json(b: &crate::reactor::budget::Budget) -> Value {
    json!({"limit": b.limit(), "used": b.used(), "high_water": b.high_water(), "waits": b.waits()})
}

async fn framework_get_subsystems(c: Call) -> RpcResult {
    let _: Empty = c.params()?;
    let subs: Vec<Value> = c
        .app
        .registry
        .subsystems()
        .iter()
        .map(|s| json!({"subsystem": s.name, "depends_on": s.depends_on}))
        .collect();
    Ok(json!(subs))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetConfig {
    name: String,
    #[serde(default)]
    with_batches: bool,
}

async fn framework_get_config(c: Call) -> RpcResult {
    let p: GetConfig = c.params()?;
    let _ = p.with_batches; // entries are never grouped into batches
    let Some(s) = c.app.registry.subsystems().iter().find(|s| s.name == p.name) else {
        return Err(RpcError::errno(libc::ENOENT, format!("subsystem {} not found", p.name)));
    };
    Ok(serde_json::to_value((s.config)(&c.app)).expect("config serializes"))
}

async fn framework_start_init(c: Call) -> RpcResult {
    let _: Empty = c.params()?;
    if !c.app.start_init() {
        return Err(RpcError::new(super::error::INVALID_STATE, "framework_start_init has already been called"));
    }
    ok()
}

async fn framework_wait_init(c: Call) -> RpcResult {
    let _: Empty = c.params()?;
    c.app.wait_init().await;
    ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Kill {
    sig_name: String,
}

async fn spdk_kill_instance(c: Call) -> RpcResult {
    let p: Kill = c.params()?;
    match p.sig_name.as_str() {
        "SIGINT" | "SIGTERM" | "SIGQUIT" => c.app.request_shutdown(),
        "SIGKILL" => {
            // SAFETY: signalling ourselves.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
        "SIGHUP" | "SIGUSR1" => tracing::info!("spdk_kill_instance {}: nothing to do", p.sig_name),
        other => return Err(RpcError::invalid_params(format!("sig_name: unsupported signal {other:?}"))),
    }
    ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Level {
    level: String,
}

pub const LEVELS: [&str; 6] = ["DISABLED", "ERROR", "WARNING", "NOTICE", "INFO", "DEBUG"];

async fn log_set_level(c: Call) -> RpcResult {
    let p: Level = c.params()?;
    let level = p.level.to_ascii_uppercase();
    if !LEVELS.contains(&level.as_str()) {
        return Err(RpcError::invalid_params(format!("level: {:?} is not one of {}", p.level, LEVELS.join(", "))));
    }
    c.app.set_log_level(&level).map_err(RpcError::internal)?;
    ok()
}

async fn log_get_level(c: Call) -> RpcResult {
    let _: Empty = c.params()?;
    Ok(json!(c.app.log_level()))
}

async fn save_config(c: Call) -> RpcResult {
    let _: Empty = c.params()?;
    Ok(serde_json::to_value(c.app.save_config()).expect("config serializes"))
}

/// Decode the params of one of this module's methods alone, without running it (what the
/// fuzz targets and the corpus replay test drive); None: not a method of this module.
pub fn decode_params(method: &str, p: &Option<serde_json::Value>) -> Option<Result<(), RpcError>> {
    use super::registry::decode_params_as as decode;
    Some(match method {
        "rpc_get_methods" => decode::<GetMethods>(p).map(drop),
        "spdk_get_version" => decode::<Empty>(p).map(drop),
        "framework_get_reactors" => decode::<Empty>(p).map(drop),
        "framework_get_subsystems" => decode::<Empty>(p).map(drop),
        "framework_get_config" => decode::<GetConfig>(p).map(drop),
        "framework_start_init" => decode::<Empty>(p).map(drop),
        "framework_wait_init" => decode::<Empty>(p).map(drop),
        "spdk_kill_instance" => decode::<Kill>(p).map(drop),
        "log_set_level" => decode::<Level>(p).map(drop),
        "log_get_level" => decode::<Empty>(p).map(drop),
        "log_set_print_level" => decode::<Level>(p).map(drop),
        "log_get_print_level" => decode::<Empty>(p).map(drop),
        "save_config" => decode::<Empty>(p).map(drop),
        _ => return None,
    })
}
