#!/usr/bin/env bash
# iSCSI MC/S: IOPS of one session with 2 connections vs 1. Target `palisade serve -m 0x3 --poll
# busy` (two reactors: the two connections of a session land on both), RAM bdev; client
# `palisade perf --transport iscsi --connections 1|2 --qd 32 --bs 4k --rw randread` (QD 32 per
# connection), alternating 1 and 2 connections for 3 rounds. Records IOPS, p99 and target CPU
# seconds per million I/Os (utime+stime of the target from /proc/PID/stat).
#
# Usage: bench/iscsi-mcs/run.sh [seconds per run, default 10]   (env: BIN, PORT, OUT, POLL, ROUNDS)
# Writes a markdown table to $OUT (default bench/iscsi-mcs/results-<date>.md) and prints it.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS="${1:-10}"
ROUNDS="${ROUNDS:-3}"
PORT="${PORT:-$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')}"
POLL="${POLL:-busy}"
IQN=iqn.2016-06.io.spdk:mcs-bench
OUT="${OUT:-bench/iscsi-mcs/results-$(date -u +%Y%m%dT%H%M%SZ).md}"
if [ -z "${BIN:-}" ]; then
  cargo build --release --bin palisade >/dev/null
  BIN=target/release/palisade
fi
TMP=$(mktemp -d)
SOCK="$TMP/rpc.sock"
CFG="$TMP/config.json"
cat >"$CFG" <<JSON
{"subsystems":[
 {"subsystem":"bdev","config":[{"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":2097152,"block_size":512}}]},
 {"subsystem":"iscsi","config":[
  {"method":"iscsi_set_options","params":{"max_connections_per_session":2}},
  {"method":"iscsi_create_portal_group","params":{"tag":1,"portals":[{"host":"127.0.0.1","port":"$PORT"}]}},
  {"method":"iscsi_create_initiator_group","params":{"tag":1,"initiators":["ANY"],"netmasks":["127.0.0.1/32"]}},
  {"method":"iscsi_create_target_node","params":{"name":"$IQN","alias_name":"mcs","luns":[{"bdev_name":"Malloc0","lun_id":0}],
   "pg_ig_maps":[{"pg_tag":1,"ig_tag":1}],"queue_depth":128,"disable_chap":true}}
 ]}]}
JSON
"$BIN" serve -m 0x3 --poll "$POLL" -r "$SOCK" -c "$CFG" -L ERROR &
TPID=$!
cleanup() { kill "$TPID" 2>/dev/null || true; wait "$TPID" 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
for _ in $(seq 100); do
  "$BIN" rpc -s "$SOCK" iscsi_get_target_nodes 2>/dev/null | grep -q "$IQN" && break
  sleep 0.1
done
CLK=$(getconf CLK_TCK)
target_cpu() { awk -v clk="$CLK" '{print ($14 + $15) / clk}' "/proc/$TPID/stat"; }
perf() { "$BIN" perf --transport iscsi --addr 127.0.0.1 --port "$PORT" --target "$IQN" --rw randread --bs 4k --qd 32 "$@"; }
{
  echo "# iSCSI MC/S benchmark $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "Host: $(uname -n), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')."
  echo "Target: \`palisade serve -m 0x3 --poll $POLL\`, RAM bdev 1 GiB / 512 B blocks, node queue_depth 128."
  echo "Client: \`palisade perf --transport iscsi --connections N --qd 32 --bs 4k --rw randread --time ${SECS}s\`"
  echo "(one session; one thread per connection, QD 32 each), loopback TCP, no digests; client and target share the host's cores."
  echo
  echo "| round | connections | IOPS | p99 µs | target CPU s per 1M I/O | perf CPU (cores) |"
  echo "| ---: | ---: | ---: | ---: | ---: | ---: |"
} >"$OUT"
# Warm-up: pools and buffers reach their steady size.
perf --connections 2 --time 2s >/dev/null 2>&1 || true
for round in $(seq "$ROUNDS"); do
  for n in 1 2; do
    c0=$(target_cpu)
    json=$(perf --connections "$n" --time "${SECS}s" --json 2>/dev/null)
    c1=$(target_cpu)
    python3 - "$round" "$n" "$c0" "$c1" "$json" >>"$OUT" <<'PY'
import json, sys
rnd, n, c0, c1, js = sys.argv[1:6]
v = json.loads(js)
ios = max(v["ios"], 1)
cpu_per_m = (float(c1) - float(c0)) / ios * 1e6
print(f"| {rnd} | {n} | {v['iops']:.0f} | {v['lat_us']['p99']:.1f} | {cpu_per_m:.2f} | {v['cpu']['core_fraction']:.2f} |")
PY
  done
done
cat "$OUT"
