#!/usr/bin/env bash
# NVMe/TCP benchmark: Palisade target on core 0 (-m 0x1), `palisade perf` pinned to core 1.
# Cases: 4 KiB randread QD32, 4 KiB randwrite QD32, 128 KiB sequential read QD32.
# Records IOPS, MiB/s, p99 latency, target CPU seconds per million I/Os (from /proc/PID/stat),
# perf's own CPU, and allocations per I/O when the binary was built with the count-alloc feature.
#
# Usage: bench/nvmf/run.sh [seconds per case, default 15]   (env: BIN, PERF_BIN, PORT, OUT, POLL)
# PERF_BIN: the client binary (default BIN), so two targets can be compared with one client.
# Writes a markdown table to $OUT (default bench/nvmf/results-<date>.md) and prints it.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS="${1:-15}"
PORT="${PORT:-$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')}"
POLL="${POLL:-busy}"
NQN=nqn.2016-06.io.spdk:bench
OUT="${OUT:-bench/nvmf/results-$(date -u +%Y%m%dT%H%M%SZ).md}"
if [ -z "${BIN:-}" ]; then
  # The counting allocator shows allocations per I/O; fall back to a plain build if the feature
  # is not there yet.
  if cargo build --release --features count-alloc --bin palisade >/dev/null 2>&1; then
    ALLOC_BUILD=1
  else
    cargo build --release --bin palisade >/dev/null
    ALLOC_BUILD=0
  fi
  BIN=target/release/palisade
else
  ALLOC_BUILD="${ALLOC_BUILD:-0}"
fi
PERF_BIN="${PERF_BIN:-$BIN}"
CORES=$(nproc)
PERF_CPU=1
[ "$CORES" -ge 2 ] || PERF_CPU=0
TMP=$(mktemp -d)
SOCK="$TMP/rpc.sock"
CFG="$TMP/config.json"
cat >"$CFG" <<EOF
{"subsystems":[
 {"subsystem":"bdev","config":[{"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":2097152,"block_size":512}}]},
 {"subsystem":"nvmf","config":[
  {"method":"nvmf_create_transport","params":{"trtype":"TCP","max_queue_depth":128,"in_capsule_data_size":4096,"max_io_size":131072,"io_unit_size":131072}},
  {"method":"nvmf_create_subsystem","params":{"nqn":"$NQN","allow_any_host":true,"serial_number":"BENCH0001"}},
  {"method":"nvmf_subsystem_add_ns","params":{"nqn":"$NQN","namespace":{"bdev_name":"Malloc0"}}},
  {"method":"nvmf_subsystem_add_listener","params":{"nqn":"$NQN","listen_address":{"trtype":"TCP","adrfam":"IPv4","traddr":"127.0.0.1","trsvcid":"$PORT"}}}
 ]}]}
EOF
"$BIN" serve -m 0x1 --poll "$POLL" -r "$SOCK" -c "$CFG" -L ERROR &
TPID=$!
cleanup() { kill "$TPID" 2>/dev/null || true; wait "$TPID" 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
for _ in $(seq 100); do
  "$BIN" rpc -s "$SOCK" nvmf_get_subsystems "$NQN" 2>/dev/null | grep -q "$PORT" && break
  sleep 0.1
done
CLK=$(getconf CLK_TCK)
# utime + stime of the target process, in seconds.
target_cpu() { awk -v clk="$CLK" '{print ($14 + $15) / clk}' "/proc/$TPID/stat"; }
# Sum of any per-reactor allocation counter framework_get_reactors exposes (count-alloc build).
allocs() {
  "$BIN" rpc -s "$SOCK" framework_get_reactors 2>/dev/null | python3 -c '
import json, sys
try:
    v = json.load(sys.stdin)
except Exception:
    print(""); sys.exit()
tot, seen = 0, False
def walk(o):
    global tot, seen
    if isinstance(o, dict):
        for k, x in o.items():
            if "alloc" in k and isinstance(x, (int, float)):
                tot += x; seen = True
            else:
                walk(x)
    elif isinstance(o, list):
        for x in o: walk(x)
walk(v)
print(tot if seen else "")'
}
{
  echo "# NVMe/TCP benchmark $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "Host: $(uname -n), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'). Target: \`palisade serve -m 0x1 --poll $POLL\` (core 0),"
  echo "RAM bdev 1 GiB / 512 B blocks. Client: \`taskset -c $PERF_CPU palisade perf --qd 32 --time ${SECS}s\`, loopback TCP, no digests."
  echo
  echo "| case | IOPS | MiB/s | p99 µs | target CPU s per 1M I/O | perf CPU (cores) | allocs per I/O |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
} >"$OUT"
run_case() {
  local name="$1"; shift
  # Short warm-up so pools and buffers reach steady state before measuring.
  taskset -c "$PERF_CPU" "$PERF_BIN" perf --port "$PORT" --nqn "$NQN" --time 1s "$@" >/dev/null 2>&1 || true
  local c0 a0 c1 a1 json
  c0=$(target_cpu); a0=$(allocs)
  json=$(taskset -c "$PERF_CPU" "$PERF_BIN" perf --port "$PORT" --nqn "$NQN" --time "${SECS}s" --json "$@" 2>/dev/null)
  c1=$(target_cpu); a1=$(allocs)
  python3 - "$name" "$c0" "$c1" "$a0" "$a1" "$json" >>"$OUT" <<'PY'
import json, sys
name, c0, c1, a0, a1, js = sys.argv[1:7]
v = json.loads(js)
ios = max(v["ios"], 1)
cpu_per_m = (float(c1) - float(c0)) / ios * 1e6
alloc = "n/a (no count-alloc)" if a0 == "" or a1 == "" else f"{(float(a1) - float(a0)) / ios:.3f}"
print(f"| {name} | {v['iops']:.0f} | {v['mib_s']:.1f} | {v['lat_us']['p99']:.1f} | {cpu_per_m:.2f} | {v['cpu']['core_fraction']:.2f} | {alloc} |")
PY
}
run_case "4 KiB randread QD32" --rw randread --bs 4k --qd 32
run_case "4 KiB randwrite QD32" --rw randwrite --bs 4k --qd 32
run_case "128 KiB seq read QD32" --rw read --bs 128k --qd 32
echo >>"$OUT"
echo "alloc build: $ALLOC_BUILD" >>"$OUT"
cat "$OUT"
