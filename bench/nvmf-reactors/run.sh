#!/usr/bin/env bash
# Target CPU per million NVMe/TCP I/Os with 1 and 2 reactors: does spreading connections over
# cores cost more per I/O (cross-core cache-line traffic, messages)? The target is restarted for
# every run, alternately as `serve -m 0x1` and `serve -m 0x3` (adaptive polling, so an idle moment
# costs no CPU), with a 1 GiB RAM namespace; the client is `palisade perf --transport tcp --queues
# 2` (two connections, one thread each, QD 32 each, blocking in epoll rather than spinning), so
# with 2 reactors each works one connection. Recorded per run: IOPS, the target's CPU seconds
# per million I/Os (utime+stime of the whole process from /proc/PID/stat over the run) and the
# reactors' busy share.
#
# Usage: bench/nvmf-reactors/run.sh [seconds per run, default 10]
#   env: BIN (default target/release/palisade), ROUNDS (default 3), CASES ("randread:4k
#   randwrite:4k read:128k"), POLL (adaptive), OUT (results file)
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS="${1:-10}"
ROUNDS="${ROUNDS:-3}"
POLL="${POLL:-adaptive}"
CASES="${CASES:-randread:4k randwrite:4k read:128k}"
BIN="${BIN:-target/release/palisade}"
OUT="${OUT:-bench/nvmf-reactors/results-$(date -u +%Y%m%dT%H%M%SZ).md}"
NQN=nqn.2016-06.io.spdk:reactors
TMP=$(mktemp -d)
TPID=""
stop_target() { if [ -n "$TPID" ]; then kill "$TPID" 2>/dev/null || true; wait "$TPID" 2>/dev/null || true; TPID=""; fi; }
trap 'stop_target; rm -rf "$TMP"' EXIT
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
start_target() { # $1 = core mask
  local port; port=$(free_port)
  cat >"$TMP/config.json" <<JSON
{"subsystems":[
 {"subsystem":"bdev","config":[{"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":2097152,"block_size":512}}]},
 {"subsystem":"nvmf","config":[
  {"method":"nvmf_create_transport","params":{"trtype":"TCP","max_queue_depth":128,"in_capsule_data_size":4096,"max_io_size":131072}},
  {"method":"nvmf_create_subsystem","params":{"nqn":"$NQN","allow_any_host":true,"serial_number":"PAL0001"}},
  {"method":"nvmf_subsystem_add_ns","params":{"nqn":"$NQN","namespace":{"bdev_name":"Malloc0"}}},
  {"method":"nvmf_subsystem_add_listener","params":{"nqn":"$NQN","listen_address":{"trtype":"TCP","adrfam":"IPv4","traddr":"127.0.0.1","trsvcid":"$port"}}}
 ]}]}
JSON
  "$BIN" serve -m "$1" --poll "$POLL" -r "$TMP/rpc.sock" -c "$TMP/config.json" -L ERROR &
  TPID=$!
  PORT=$port
  for _ in $(seq 100); do
    "$BIN" rpc -s "$TMP/rpc.sock" nvmf_get_subsystems 2>/dev/null | grep -q "$PORT" && return 0
    sleep 0.1
  done
  echo "target did not come up" >&2; exit 1
}
CLK=$(getconf CLK_TCK)
target_cpu() { awk -v clk="$CLK" '{print ($14 + $15) / clk}' "/proc/$TPID/stat"; }
reactors() { "$BIN" rpc -s "$TMP/rpc.sock" framework_get_reactors; }
perf() { "$BIN" perf --transport tcp --addr 127.0.0.1 --port "$PORT" --nqn "$NQN" --queues 2 --qd 32 "$@"; }
{
  echo "# NVMe/TCP target CPU per 1M I/O, 1 vs 2 reactors — $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "Host: $(uname -n), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'); load before: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo "Target: \`$BIN serve -m 0x1|0x3 --poll $POLL\` ($(git rev-parse --short HEAD 2>/dev/null || echo '?')), 1 GiB RAM namespace."
  echo "Client: \`palisade perf --transport tcp --queues 2 --qd 32 --time ${SECS}s\` (2 connections, QD 32 each); target and client share the host's cores."
  echo
  echo "| round | case | reactors | IOPS | target CPU s per 1M I/O | reactor busy share |"
  echo "| ---: | --- | ---: | ---: | ---: | ---: |"
} >"$OUT"
for round in $(seq "$ROUNDS"); do
  for c in $CASES; do
    rw=${c%%:*}; bs=${c##*:}
    for mask in 0x1 0x3; do
      start_target "$mask"
      perf --rw "$rw" --bs "$bs" --time 2s >/dev/null 2>&1 || true   # warm-up: pools reach size
      r0=$(reactors); c0=$(target_cpu)
      json=$(perf --rw "$rw" --bs "$bs" --time "${SECS}s" --json 2>/dev/null)
      c1=$(target_cpu); r1=$(reactors)
      stop_target
      python3 - "$round" "$rw $bs" "$mask" "$c0" "$c1" "$json" "$r0" "$r1" >>"$OUT" <<'PY'
import json, sys
rnd, case, mask, c0, c1, js, r0, r1 = sys.argv[1:9]
v = json.loads(js)
ios = max(v["ios"], 1)
cpu = (float(c1) - float(c0)) / ios * 1e6
def tot(r):
    r = json.loads(r)
    return sum(x["busy"] for x in r["reactors"]), sum(x["idle"] for x in r["reactors"])
(b0, i0), (b1, i1) = tot(r0), tot(r1)
busy = (b1 - b0) / max((b1 - b0) + (i1 - i0), 1)
n = 2 if mask == "0x3" else 1
print(f"| {rnd} | {case} | {n} | {v['iops']:.0f} | {cpu:.2f} | {busy:.2f} |")
PY
    done
  done
done
python3 - "$OUT" >>"$OUT" <<'PY'
import re, statistics, sys
rows = [l.split("|")[1:-1] for l in open(sys.argv[1]) if re.match(r"\| \d+ \|", l)]
print("\n## Medians over rounds\n")
print("| case | IOPS 1 reactor | IOPS 2 reactors | CPU s/1M I/O, 1 reactor | 2 reactors | ratio 2/1 |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for case in dict.fromkeys(r[1].strip() for r in rows):
    g = lambda n, i: statistics.median(float(r[i]) for r in rows if r[1].strip() == case and r[2].strip() == n)
    print(f"| {case} | {g('1', 3):.0f} | {g('2', 3):.0f} | {g('1', 4):.2f} | {g('2', 4):.2f} | {g('2', 4) / g('1', 4):.3f} |")
PY
cat "$OUT"
