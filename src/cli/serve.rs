//! `palisade serve`: start reactors, load the config, serve JSON-RPC, stop cleanly on a signal.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use tracing_subscriber::{prelude::*, reload, EnvFilter};

use crate::config::Config;
use crate::reactor::{parse_core_mask, PollMode, ReactorSet};
use crate::rpc::{self, App};

/// The embedded default configuration (`-c default`).
pub const DEFAULT_CONFIG: &str = include_str!("../../configs/default.json");

#[derive(Clone, Copy, ValueEnum)]
pub enum Poll {
    Adaptive,
    Busy,
}

#[derive(Args)]
pub struct ServeArgs {
    /// SPDK-format JSON config to load at start ("default" = the embedded default config).
    #[arg(short = 'c', long = "config")]
    config: Option<String>,
    /// JSON-RPC unix socket.
    #[arg(short = 'r', long = "rpc-socket", default_value = super::DEFAULT_SOCKET)]
    rpc_socket: PathBuf,
    /// Core mask: one pinned reactor per core (hex, e.g. 0x3, or a list like [0,1]).
    #[arg(short = 'm', long = "cpumask", default_value = "0x1")]
    cpumask: String,
    /// adaptive: busy-poll while there is work, sleep when idle; busy: never sleep.
    #[arg(long, value_enum, default_value = "adaptive")]
    poll: Poll,
    /// Also serve JSON-RPC on this loopback TCP address (e.g. 127.0.0.1:5260).
    #[arg(long = "rpc-listen")]
    rpc_listen: Option<String>,
    /// Wait for framework_start_init before applying runtime configuration.
    #[arg(long = "wait-for-rpc")]
    wait_for_rpc: bool,
    /// Directory for state that must survive a restart (persistent reservations with APTPL/PTPL:
    /// `<dir>/<bdev uuid>.pr.json`). Default: `<rpc-socket>.state` next to the RPC socket, so
    /// every instance (and every test) has its own.
    #[arg(long = "state-dir")]
    state_dir: Option<PathBuf>,
    /// Cluster mode: etcd client URL(s), comma-separated (e.g. http://127.0.0.1:2379). Needs
    /// --node-id. Volumes marked clustered (`volume_set_cluster`) keep their reservations in etcd.
    #[arg(long = "cluster", requires = "node_id")]
    cluster: Option<String>,
    /// This node's name in the cluster (unique; a restarted node keeps its name).
    #[arg(long = "node-id", requires = "cluster")]
    node_id: Option<String>,
    /// Cluster lease TTL in seconds: a node cut off from etcd stops serving clustered volumes
    /// within 2/3 of it.
    #[arg(long = "lease-ttl", default_value_t = 6)]
    lease_ttl: u64,
    /// Log level: ERROR, WARNING, NOTICE, INFO, DEBUG.
    #[arg(short = 'L', long = "log-level", default_value = "NOTICE")]
    log_level: String,
}

fn filter_for(level: &str) -> Result<EnvFilter, String> {
    let f = match level.to_ascii_uppercase().as_str() {
        "DISABLED" => "off",
        "ERROR" => "error",
        "WARNING" | "WARN" => "warn",
        "NOTICE" | "INFO" => "info",
        "DEBUG" => "debug",
        other => return Err(format!("unknown log level {other:?}")),
    };
    Ok(EnvFilter::new(f))
}

fn init_logging(level: &str) -> Result<rpc::LogSetter, String> {
    let (layer, handle) = reload::Layer::new(filter_for(level)?);
    let _ = tracing_subscriber::registry()
        .with(layer)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .try_init();
    Ok(Box::new(move |lvl: &str| {
        let f = filter_for(lvl)?;
        handle.reload(f).map_err(|e| e.to_string())
    }))
}

/// The reservation state directory: `--state-dir`, else `<rpc-socket>.state`.
pub fn state_dir(a: &ServeArgs) -> PathBuf {
    a.state_dir.clone().unwrap_or_else(|| {
        let mut p = a.rpc_socket.clone().into_os_string();
        p.push(".state");
        PathBuf::from(p)
    })
}

fn fail(msg: impl std::fmt::Display) -> i32 {
    eprintln!("palisade: {msg}");
    1
}

pub fn run(a: ServeArgs) -> i32 {
    let setter = match init_logging(&a.log_level) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let config = match a.config.as_deref() {
        None => None,
        Some("default") => Some(Config::parse(DEFAULT_CONFIG, "default").map(|c| (c, "default".to_string()))),
        Some(p) => Some(Config::load(p).map(|c| (c, p.to_string()))),
    };
    let config = match config.transpose() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let mask = match parse_core_mask(&a.cpumask) {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    let tcp_addr = match a.rpc_listen.as_deref().map(str::parse::<std::net::SocketAddr>).transpose() {
        Ok(Some(addr)) if !addr.ip().is_loopback() => {
            return fail(format!("--rpc-listen {addr}: only loopback addresses are allowed (the RPC has no authentication)"))
        }
        Ok(x) => x,
        Err(e) => return fail(format!("--rpc-listen: {e}")),
    };
    let _lock = match rpc::server::claim_socket_path(&a.rpc_socket) {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    let mode = match a.poll {
        Poll::Adaptive => PollMode::Adaptive,
        Poll::Busy => PollMode::Busy,
    };
    let reactors = match ReactorSet::start(mask, mode, crate::bdev::install) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let app = App::new(reactors, true, Some(setter));
    app.volumes.set_state_dir(Some(state_dir(&a)));
    let _ = app.set_log_level(&a.log_level.to_ascii_uppercase());
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name("mgmt").enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start management runtime: {e}")),
    };
    let code = rt.block_on(serve(app.clone(), a, config, tcp_addr));
    app.stop();
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

/// Apply every entry whose method may run in the app's current state; return the rest.
async fn apply_pass<'a>(
    app: &Arc<App>,
    entries: Vec<crate::config::Located<'a>>,
    path: &str,
) -> Result<Vec<crate::config::Located<'a>>, String> {
    let mut rest = Vec::new();
    for e in entries {
        let Some(m) = app.registry.get(&e.entry.method) else {
            return Err(format!("config {path}: {}: unknown method", e.describe()));
        };
        if m.states & app.state() == 0 {
            rest.push(e);
            continue;
        }
        if let Err(err) = app.dispatch(&e.entry.method, e.entry.params.clone(), rpc::internal_conn()).await {
            return Err(format!("config {path}: {}: {}", e.describe(), err.message));
        }
    }
    Ok(rest)
}

/// The entries of `cfg` that run after framework_start_init.
fn runtime_entries<'a>(app: &App, cfg: &'a Config) -> Vec<crate::config::Located<'a>> {
    cfg.entries()
        .into_iter()
        .filter(|e| app.registry.get(&e.entry.method).is_some_and(|m| m.states & crate::rpc::STARTUP == 0))
        .collect()
}

async fn serve(app: Arc<App>, a: ServeArgs, config: Option<(Config, String)>, tcp: Option<std::net::SocketAddr>) -> i32 {
    // Catch SIGTERM/SIGINT before anyone can learn the socket is up (a signal that arrives
    // between the first answered RPC and the handler would otherwise kill us with status 15).
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => return fail(format!("cannot handle SIGTERM: {e}")),
    };
    let mut int = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()) {
        Ok(s) => s,
        Err(e) => return fail(format!("cannot handle SIGINT: {e}")),
    };
    if let (Some(eps), Some(node)) = (&a.cluster, &a.node_id) {
        let mut cfg = crate::cluster::Config::new(eps, node);
        cfg.lease_ttl = a.lease_ttl;
        if let Err(e) = rpc::cluster::connect(&app, cfg).await {
            return fail(e.message);
        }
    }
    // Startup-state entries first (as SPDK's loader does), then init, then the rest.
    if let Some((cfg, path)) = &config {
        if let Err(e) = apply_pass(&app, cfg.entries(), path).await {
            return fail(e);
        }
    }
    let listener = match tokio::net::UnixListener::bind(&a.rpc_socket) {
        Ok(l) => l,
        Err(e) => return fail(rpc::server::ServeError::Bind(a.rpc_socket.clone(), e)),
    };
    let tcp_listener = match tcp {
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => Some(l),
            Err(e) => return fail(rpc::server::ServeError::BindTcp(addr.to_string(), e)),
        },
        None => None,
    };
    if !a.wait_for_rpc {
        // Without --wait-for-rpc the whole config is applied before the first RPC is accepted.
        app.start_init();
        if let Some((cfg, path)) = &config {
            let rest = runtime_entries(&app, cfg);
            if let Err(e) = apply_pass(&app, rest, path).await {
                return fail(e);
            }
        }
    }
    let exit_code = Arc::new(std::sync::atomic::AtomicI32::new(0));
    let server = tokio::spawn(rpc::server::serve_unix(app.clone(), listener));
    let tcp_server = tcp_listener.map(|l| tokio::spawn(rpc::server::serve_tcp(app.clone(), l)));
    if let (true, Some((cfg, path))) = (a.wait_for_rpc, config) {
        // The runtime entries run after framework_start_init; framework_wait_init returns once
        // they are applied. A failed entry stops the target.
        app.hold_init();
        let (app2, code) = (app.clone(), exit_code.clone());
        tokio::spawn(async move {
            app2.wait_started().await;
            let rest = runtime_entries(&app2, &cfg);
            let res = apply_pass(&app2, rest, &path).await;
            app2.release_init();
            if let Err(e) = res {
                code.store(fail(e), std::sync::atomic::Ordering::SeqCst);
                app2.request_shutdown();
            }
        });
    }
    tracing::info!(socket = %a.rpc_socket.display(), reactors = app.reactors.len(), "palisade serving");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        _ = app.wait_shutdown() => tracing::info!("shutdown requested over RPC"),
    }
    app.request_shutdown();
    server.abort();
    if let Some(t) = tcp_server {
        t.abort();
    }
    let _ = std::fs::remove_file(&a.rpc_socket);
    exit_code.load(std::sync::atomic::Ordering::SeqCst)
}
