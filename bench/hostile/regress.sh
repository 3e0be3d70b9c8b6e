#!/usr/bin/env bash
# Did hardening cost speed? Two builds side by side in one run: both targets up at once on core 0
# (adaptive polling, so the idle one sleeps), `palisade perf` (of the AFTER build) on core 1,
# 4 KiB randread and randwrite QD32 on NVMe/TCP and iSCSI, adjacent pairs in alternating order.
# The figure per case is the median of the per-pair ratios AFTER/BEFORE.
#
# Usage: bench/hostile/regress.sh BEFORE_BIN AFTER_BIN [seconds per run, default 3] [pairs, default 9]
#   e.g. git worktree add /tmp/before <commit> && (cd /tmp/before && cargo build --release)
#        bash bench/hostile/regress.sh /tmp/before/target/release/palisade target/release/palisade
set -euo pipefail
cd "$(dirname "$0")/../.."
BEFORE="$1"; AFTER="$2"; SECS="${3:-3}"; PAIRS="${4:-9}"
OUT="${OUT:-bench/hostile/regress-$(date -u +%Y%m%dT%H%M%SZ).md}"
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
PERF_CPU=1; [ "$(nproc)" -ge 2 ] || PERF_CPU=0
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
declare -A NPORT IPORT SOCK
NQN=nqn.2016-06.io.spdk:regress
IQN=iqn.2016-06.io.spdk:regress
for which in before after; do
  bin=$BEFORE; [ "$which" = after ] && bin=$AFTER
  NPORT[$which]=$(free_port); IPORT[$which]=$(free_port); SOCK[$which]="$TMP/$which.sock"
  cat >"$TMP/$which.json" <<JSON
{"subsystems":[
 {"subsystem":"bdev","config":[{"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":2097152,"block_size":512}}]},
 {"subsystem":"nvmf","config":[
  {"method":"nvmf_create_transport","params":{"trtype":"TCP","max_queue_depth":128}},
  {"method":"nvmf_create_subsystem","params":{"nqn":"$NQN","allow_any_host":true,"serial_number":"REGR0001"}},
  {"method":"nvmf_subsystem_add_ns","params":{"nqn":"$NQN","namespace":{"bdev_name":"Malloc0"}}},
  {"method":"nvmf_subsystem_add_listener","params":{"nqn":"$NQN","listen_address":{"trtype":"TCP","adrfam":"IPv4","traddr":"127.0.0.1","trsvcid":"${NPORT[$which]}"}}}]},
 {"subsystem":"iscsi","config":[
  {"method":"iscsi_create_portal_group","params":{"tag":1,"portals":[{"host":"127.0.0.1","port":"${IPORT[$which]}"}]}},
  {"method":"iscsi_create_initiator_group","params":{"tag":1,"initiators":["ANY"],"netmasks":["127.0.0.1/32"]}},
  {"method":"iscsi_create_target_node","params":{"name":"$IQN","alias_name":"regress","luns":[{"bdev_name":"Malloc0","lun_id":0}],"pg_ig_maps":[{"pg_tag":1,"ig_tag":1}],"queue_depth":128}}]}]}
JSON
  "$bin" serve -m 0x1 -r "${SOCK[$which]}" --state-dir "$TMP/$which-state" -c "$TMP/$which.json" -L ERROR &
  PIDS+=($!)
  for _ in $(seq 100); do
    "$bin" rpc -s "${SOCK[$which]}" nvmf_get_subsystems "$NQN" 2>/dev/null | grep -q "${NPORT[$which]}" && break
    sleep 0.1
  done
done
iops() { python3 -c 'import json,sys; print("%.0f" % json.loads(sys.stdin.read())["iops"])'; }
run() { # which proto rw
  if [ "$2" = tcp ]; then
    taskset -c "$PERF_CPU" "$AFTER" perf --transport tcp --port "${NPORT[$1]}" --nqn "$NQN" --rw "$3" --bs 4k --qd 32 --time "${SECS}s" --json | iops
  else
    taskset -c "$PERF_CPU" "$AFTER" perf --transport iscsi --port "${IPORT[$1]}" --target "$IQN" --rw "$3" --bs 4k --qd 32 --time "${SECS}s" --json | iops
  fi
}
{
  echo "# Before/after, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "Host: $(uname -n), $(nproc) cores. Targets: \`palisade serve -m 0x1\` (adaptive), RAM bdev 1 GiB. Client: \`palisade perf --bs 4k --qd 32 --time ${SECS}s\` on core $PERF_CPU; $PAIRS adjacent pairs, order alternating."
  echo "BEFORE: \`$BEFORE\`; AFTER: \`$AFTER\`."
  echo
  echo "| case | before IOPS (median) | after IOPS (median) | median of pair ratios after/before | pair ratios |"
  echo "| --- | ---: | ---: | ---: | --- |"
} >"$OUT"
for proto in tcp iscsi; do
  for rw in randread randwrite; do
    run before "$proto" "$rw" >/dev/null; run after "$proto" "$rw" >/dev/null  # warm-up
    b=(); a=()
    for i in $(seq "$PAIRS"); do
      if [ $((i % 2)) -eq 1 ]; then x=$(run before "$proto" "$rw"); y=$(run after "$proto" "$rw")
      else y=$(run after "$proto" "$rw"); x=$(run before "$proto" "$rw"); fi
      b+=("$x"); a+=("$y")
    done
    python3 - "$proto $rw" "${b[*]}" "${a[*]}" >>"$OUT" <<'PY'
import statistics, sys
name, b, a = sys.argv[1], [float(x) for x in sys.argv[2].split()], [float(x) for x in sys.argv[3].split()]
r = [y / x for x, y in zip(b, a)]
name = name.replace("tcp", "NVMe/TCP").replace("iscsi", "iSCSI")
print(f"| {name} | {statistics.median(b):.0f} | {statistics.median(a):.0f} | {statistics.median(r):.3f} | {' '.join('%.3f' % x for x in r)} |")
PY
  done
done
cat "$OUT"
