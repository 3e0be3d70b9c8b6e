#!/usr/bin/env bash
# Cost of the reservation check: 4 KiB randwrite QD32 with no reservation vs. with a Write
# Exclusive - Registrants Only reservation held by another host while the writer is a
# registrant, on NVMe/TCP and iSCSI. Target on core 0 (-m 0x1), `palisade perf` on core 1.
# The figure is the median, over adjacent pairs of runs, of (reserved IOPS / open IOPS).
#
# Each pair, per protocol: an open run (reservation_clear, then the randwrite) and a reserved run
# (reservation_clear; a holder, another host / initiator, registers key 0xAA and reserves WE-RO
# with `palisade perf --pr-key --pr-reserve` and 200 ms of reads; the writer registers key 0xBB
# with `--pr-key` and runs the same randwrite), in alternating order.
#
# Usage: bench/reservation/run.sh [seconds per run, default 3] [pairs, default 15]
#   env: BIN (default: a release build), POLL (default busy), OUT (default
#   bench/reservation/results-<UTC date>.md)
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS="${1:-3}"
ROUNDS="${2:-15}"
POLL="${POLL:-busy}"
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
NPORT=$(free_port)
IPORT=$(free_port)
NQN=nqn.2016-06.io.spdk:resvbench
IQN=iqn.2016-06.io.spdk:resvbench
OUT="${OUT:-bench/reservation/results-$(date -u +%Y%m%dT%H%M%SZ).md}"
if [ -z "${BIN:-}" ]; then
  cargo build --release --bin palisade >/dev/null
  BIN=target/release/palisade
fi
PERF_CPU=1
[ "$(nproc)" -ge 2 ] || PERF_CPU=0
TMP=$(mktemp -d)
SOCK="$TMP/rpc.sock"
CFG="$TMP/config.json"
cat >"$CFG" <<EOF
{"subsystems":[
 {"subsystem":"bdev","config":[{"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":2097152,"block_size":512}}]},
 {"subsystem":"nvmf","config":[
  {"method":"nvmf_create_transport","params":{"trtype":"TCP","max_queue_depth":128}},
  {"method":"nvmf_create_subsystem","params":{"nqn":"$NQN","allow_any_host":true,"serial_number":"RESV0001"}},
  {"method":"nvmf_subsystem_add_ns","params":{"nqn":"$NQN","namespace":{"bdev_name":"Malloc0"}}},
  {"method":"nvmf_subsystem_add_listener","params":{"nqn":"$NQN","listen_address":{"trtype":"TCP","adrfam":"IPv4","traddr":"127.0.0.1","trsvcid":"$NPORT"}}}]},
 {"subsystem":"iscsi","config":[
  {"method":"iscsi_create_portal_group","params":{"tag":1,"portals":[{"host":"127.0.0.1","port":"$IPORT"}]}},
  {"method":"iscsi_create_initiator_group","params":{"tag":1,"initiators":["ANY"],"netmasks":["127.0.0.1/32"]}},
  {"method":"iscsi_create_target_node","params":{"name":"$IQN","alias_name":"resv","luns":[{"bdev_name":"Malloc0","lun_id":0}],"pg_ig_maps":[{"pg_tag":1,"ig_tag":1}],"queue_depth":128}}]}]}
EOF
"$BIN" serve -m 0x1 --poll "$POLL" -r "$SOCK" --state-dir "$TMP/state" -c "$CFG" -L ERROR &
TPID=$!
cleanup() { kill "$TPID" 2>/dev/null || true; wait "$TPID" 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
for _ in $(seq 100); do
  "$BIN" rpc -s "$SOCK" nvmf_get_subsystems "$NQN" 2>/dev/null | grep -q "$NPORT" && break
  sleep 0.1
done

perf() { # proto extra-args...
  local proto="$1"; shift
  if [ "$proto" = tcp ]; then
    taskset -c "$PERF_CPU" "$BIN" perf --transport tcp --port "$NPORT" --nqn "$NQN" "$@"
  else
    taskset -c "$PERF_CPU" "$BIN" perf --transport iscsi --port "$IPORT" --target "$IQN" "$@"
  fi
}
who() { # proto role -> host/initiator identity args
  if [ "$1" = tcp ]; then echo "--hostnqn nqn.2014-08.org.nvmexpress:bench-$2"; else echo "--initiator iqn.2026-11.io.palisade:bench-$2"; fi
}
iops() { python3 -c 'import json,sys; print("%.0f" % json.loads(sys.stdin.read())["iops"])'; }
# Reservation type and number of registrants right now (sanity check that the case is real).
resv_state() {
  "$BIN" rpc -s "$SOCK" reservation_get Malloc0 2>/dev/null | python3 -c '
import json, sys
v = json.load(sys.stdin)
r = v.get("reservation") or {}
print("%s/%d" % (r.get("type", "none"), len(v.get("registrants", []))))'
}

run_base() { # proto
  "$BIN" rpc -s "$SOCK" reservation_clear Malloc0 >/dev/null
  perf "$1" $(who "$1" writer) --rw randwrite --bs 4k --qd 32 --time "${SECS}s" --json | iops
}
run_resv() { # proto; prints "iops state"
  "$BIN" rpc -s "$SOCK" reservation_clear Malloc0 >/dev/null
  perf "$1" $(who "$1" holder) --pr-key 0xAA --pr-reserve we-ro --rw randread --qd 1 --time 200ms >/dev/null
  local v
  v=$(perf "$1" $(who "$1" writer) --pr-key 0xBB --rw randwrite --bs 4k --qd 32 --time "${SECS}s" --json | iops)
  echo "$v $(resv_state)"
}

declare -A RES
for proto in tcp iscsi; do
  base=(); resv=(); states=()
  # Warm-up.
  perf "$proto" $(who "$proto" writer) --rw randwrite --bs 4k --qd 32 --time 2s >/dev/null 2>&1 || true
  # Pairs of adjacent runs, the order alternating so drift hits both cases alike. This machine
  # switches between speed modes for seconds at a time (other tenants, vCPU placement), so
  # short adjacent pairs and the median of their ratios are what survive the noise.
  for r in $(seq "$ROUNDS"); do
    if [ $((r % 2)) -eq 1 ]; then
      b=$(run_base "$proto"); read -r v st < <(run_resv "$proto")
    else
      read -r v st < <(run_resv "$proto"); b=$(run_base "$proto")
    fi
    base+=("$b"); resv+=("$v"); states+=("$st")
  done
  RES[$proto]="${base[*]}|${resv[*]}|${states[*]}"
done
"$BIN" rpc -s "$SOCK" reservation_clear Malloc0 >/dev/null

{
  echo "# Reservation check cost $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "Host: $(uname -n), $(nproc) cores. Target: \`palisade serve -m 0x1 --poll $POLL\`, RAM bdev 1 GiB / 512 B blocks."
  echo "Client: \`taskset -c $PERF_CPU palisade perf --rw randwrite --bs 4k --qd 32 --time ${SECS}s\`, $ROUNDS adjacent pairs (order alternating)."
  echo
  echo "| protocol | no reservation IOPS (median) | WE-RO held, writer registered IOPS (median) | median of pair ratios | pair ratios | states during resv runs |"
  echo "| --- | ---: | ---: | ---: | --- | --- |"
  for proto in tcp iscsi; do
    python3 - "$proto" "${RES[$proto]}" <<'PY'
import statistics, sys
proto, s = sys.argv[1:3]
b, r, st = s.split("|")
b = [float(x) for x in b.split()]; r = [float(x) for x in r.split()]
mb, mr = statistics.median(b), statistics.median(r)
ratios = [y / x for x, y in zip(b, r)]
name = "NVMe/TCP" if proto == "tcp" else "iSCSI"
print(f"| {name} | {mb:.0f} | {mr:.0f} | {statistics.median(ratios):.3f} | {' '.join('%.3f' % x for x in ratios)} | {' '.join(sorted(set(st.split())))} |")
PY
  done
} >"$OUT"
cat "$OUT"
