//! The `palisade` command: `serve` (the daemon), `rpc` (JSON-RPC client in rpc.py's style).

pub mod bdevperf;
pub mod fsck;
pub mod perf;
pub mod rpc_client;
pub mod rpc_specs;
pub mod serve;

use clap::{Parser, Subcommand};

pub const DEFAULT_SOCKET: &str = "/var/tmp/palisade.sock";

#[derive(Parser)]
#[command(name = "palisade", version, about = "Palisade block storage target: iSCSI, NVMe-oF/TCP, persistent reservations, pNFS layouts")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the target.
    Serve(serve::ServeArgs),
    /// Call a JSON-RPC method of a running target (rpc.py usage).
    Rpc(rpc_client::RpcArgs),
    /// Measure the reactor + bdev path: one reactor, one bdev, a workload at a queue depth.
    Bdevperf(bdevperf::BdevperfArgs),
    /// Load generator and test initiator (NVMe/TCP; iSCSI later).
    Perf(perf::PerfArgs),
    /// Check a layout volume's metadata offline (exit 0 only when consistent).
    Fsck(fsck::FsckArgs),
}

/// Entry point; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve(a) => serve::run(a),
        Cmd::Rpc(a) => rpc_client::run(a),
        Cmd::Bdevperf(a) => bdevperf::run(a),
        Cmd::Perf(a) => perf::run(a),
        Cmd::Fsck(a) => fsck::run(a),
    }
}
