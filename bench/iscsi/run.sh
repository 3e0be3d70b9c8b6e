#!/usr/bin/env bash
# Palisade vs tgt over iSCSI on loopback: same RAM-backed LUN size, same client, same cores.
#
#   bench/iscsi/run.sh                 # 15 s per case, target on core 0, clients on core 1
#   DURATION=3 bench/iscsi/run.sh      # quick check that everything works
#
# Cases: 4 KiB random read QD32 (iscsi-perf), 128 KiB sequential read QD32 (iscsi-perf),
# 4 KiB read and write QD32 (qemu-img bench), and `palisade perf --transport iscsi` 4 KiB
# randread/randwrite when the binary has it. Per case: IOPS, MiB/s, p99 where the client reports
# it, and target CPU seconds per million I/Os (utime+stime of the target process). Prints a ratio
# table and writes it to bench/iscsi/results-<UTC date>.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-15}
TARGET_CORE=${TARGET_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
SIZE_MB=${SIZE_MB:-1024}
PALISADE=${PALISADE:-target/release/palisade}
P_PORT=${P_PORT:-23270}
T_PORT=${T_PORT:-23271}
TGT_CTL=${TGT_CTL:-7}              # tgtd control-socket index (-C), not a port
IQN=iqn.2016-06.io.spdk:bench
TGT_IQN=iqn.2024-01.io.palisade:tgtbench
INITIATOR=iqn.2024-01.io.palisade:bench
SHM=/dev/shm/palisade-bench-tgt.img
WORK=$(mktemp -d)
OUT=bench/iscsi/results-$(date -u +%Y%m%dT%H%M%SZ).txt
HZ=$(getconf CLK_TCK)

for t in iscsi-perf qemu-img tgtd tgtadm taskset; do
  command -v "$t" >/dev/null || { echo "missing $t (run scripts/setup.sh)"; exit 1; }
done
[ -x "$PALISADE" ] || cargo build --release

P_PID=""; T_PID=""
cleanup() {
  if [ -n "$P_PID" ] && kill -0 "$P_PID" 2>/dev/null; then kill -TERM "$P_PID"; wait "$P_PID" 2>/dev/null || true; fi
  if [ -n "$T_PID" ] && kill -0 "$T_PID" 2>/dev/null; then
    # tgtd ignores SIGTERM while it has targets: delete them, then the system (PEERS.md).
    tgtadm -C "$TGT_CTL" --lld iscsi --mode target --op delete --force --tid 1 2>/dev/null || true
    tgtadm -C "$TGT_CTL" --op delete --mode system 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$T_PID" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$T_PID" 2>/dev/null && { echo "tgtd $T_PID still running"; kill -KILL "$T_PID"; }
  fi
  rm -f "$SHM"; rm -rf "$WORK"
}
trap cleanup EXIT

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# ---- targets ----------------------------------------------------------------------------------
start_palisade() {
  local mask; mask=$(printf '0x%x' $((1 << TARGET_CORE)))
  cat > "$WORK/p.json" <<JSON
{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":$((SIZE_MB * 2048)),"block_size":512}}]},
{"subsystem":"iscsi","config":[
{"method":"iscsi_create_portal_group","params":{"tag":1,"portals":[{"host":"127.0.0.1","port":"$P_PORT"}]}},
{"method":"iscsi_create_initiator_group","params":{"tag":1,"initiators":["ANY"],"netmasks":["127.0.0.1/32"]}},
{"method":"iscsi_create_target_node","params":{"name":"$IQN","alias_name":"bench","luns":[{"bdev_name":"Malloc0","lun_id":0}],"pg_ig_maps":[{"pg_tag":1,"ig_tag":1}],"queue_depth":128}}]}]}
JSON
  "$PALISADE" serve -m "$mask" -r "$WORK/p.sock" -c "$WORK/p.json" -L ERROR &
  P_PID=$!
  for _ in $(seq 100); do iscsi-inq "iscsi://127.0.0.1:$P_PORT/$IQN/0" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "palisade did not come up"; exit 1
}

start_tgt() {
  dd if=/dev/zero of="$SHM" bs=1M count="$SIZE_MB" status=none   # written once: no sparse tmpfs
  GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=268435456 \
    taskset -c "$TARGET_CORE" tgtd -f -C "$TGT_CTL" --iscsi portal=127.0.0.1:$T_PORT >"$WORK/tgt.log" 2>&1 &
  T_PID=$!
  for _ in $(seq 50); do tgtadm -C "$TGT_CTL" --op show --mode system >/dev/null 2>&1 && break; sleep 0.1; done
  tgtadm -C "$TGT_CTL" --lld iscsi --mode target --op new --tid 1 --targetname "$TGT_IQN"
  tgtadm -C "$TGT_CTL" --lld iscsi --mode logicalunit --op new --tid 1 --lun 1 --backing-store "$SHM" --bstype rdwr
  tgtadm -C "$TGT_CTL" --lld iscsi --mode target --op bind --tid 1 --initiator-address ALL
}

# ---- cases: each prints "ios bytes p99" -------------------------------------------------------
iscsi_perf() { # url blocks512 random?
  local flags=(-i "$INITIATOR" -m 32 -b "$2" -t "$DURATION"); [ "$3" = 1 ] && flags+=(-r)
  local out; out=$(taskset -c "$CLIENT_CORE" iscsi-perf "${flags[@]}" "$1" 2>&1 | tr '\r' '\n')
  local iops; iops=$(echo "$out" | grep -o 'iops average [0-9]*' | tail -1 | awk '{print $3}')
  echo "$((iops * DURATION)) $((iops * DURATION * $2 * 512)) n/a"
}

qemu_bench() { # url write?
  local count=$((DURATION * 20000)) w=(); [ "$2" = 1 ] && w=(-w)
  local out; out=$(taskset -c "$CLIENT_CORE" qemu-img bench -f raw -t none "${w[@]}" -c "$count" -d 32 -s 4k "$1" 2>&1)
  local secs; secs=$(echo "$out" | grep -o 'completed in [0-9.]*' | awk '{print $3}')
  [ -n "$secs" ] || { echo "qemu-img bench failed: $out" >&2; echo "0 0 n/a"; return; }
  echo "$count $((count * 4096)) n/a $secs"
}

palisade_perf() { # target iqn lun port rw
  "$PALISADE" perf --help 2>/dev/null | grep -q -- '--transport' || { echo "skip"; return; }
  local out; out=$(taskset -c "$CLIENT_CORE" "$PALISADE" perf --transport iscsi --addr 127.0.0.1 --port "$3" --target "$1" \
    --lun "$2" --qd 32 --bs 4k --rw "$4" --time "${DURATION}s" --json 2>/dev/null)
  # The JSON summary: completed I/Os, bytes and p99 latency in microseconds.
  echo "$out" | python3 -c 'import json,sys
try:
    v = json.load(sys.stdin); print(v["ios"], v["ios"] * 4096, "%.0fus" % v["lat_us"]["p99"])
except Exception:
    print(0, 0, "n/a")'
}

declare -A RES
run_case() { # name target pid cmd...
  local name=$1 tgt=$2 pid=$3; shift 3
  local c0; c0=$(cpu_ticks "$pid"); local t0; t0=$(date +%s.%N)
  local r; r=$("$@")
  local c1; c1=$(cpu_ticks "$pid"); local t1; t1=$(date +%s.%N)
  [ "$r" = skip ] && return
  read -r ios bytes p99 secs <<<"$r"
  secs=${secs:-$DURATION}
  local iops mibs cpu
  iops=$(echo "$ios / $secs" | bc -l); mibs=$(echo "$bytes / $secs / 1048576" | bc -l)
  cpu=$(echo "($c1 - $c0) / $HZ" | bc -l)
  local cpm="n/a"; [ "$ios" -gt 0 ] && cpm=$(printf '%.2f' "$(echo "$cpu / ($ios / 1000000)" | bc -l)")
  RES["$name/$tgt"]="$(printf '%.0f %.1f %s %s' "$iops" "$mibs" "$p99" "$cpm")"
  echo "  $name [$tgt]: $(printf '%.0f' "$iops") IOPS, $(printf '%.1f' "$mibs") MiB/s, p99 $p99, target CPU ${cpm} s per 1M I/O" >&2
}

echo "Palisade vs tgt, iSCSI on 127.0.0.1, target core $TARGET_CORE, client core $CLIENT_CORE, ${DURATION}s per case, ${SIZE_MB} MiB RAM LUN" >&2
start_palisade
PU="iscsi://127.0.0.1:$P_PORT/$IQN/0"
run_case "4k randread QD32 (iscsi-perf)" palisade "$P_PID" iscsi_perf "$PU" 8 1
run_case "128k seq read QD32 (iscsi-perf)" palisade "$P_PID" iscsi_perf "$PU" 256 0
run_case "4k read QD32 (qemu-img bench)" palisade "$P_PID" qemu_bench "$PU" 0
run_case "4k write QD32 (qemu-img bench)" palisade "$P_PID" qemu_bench "$PU" 1
run_case "4k randread QD32 (palisade perf)" palisade "$P_PID" palisade_perf "$IQN" 0 "$P_PORT" randread
run_case "4k randwrite QD32 (palisade perf)" palisade "$P_PID" palisade_perf "$IQN" 0 "$P_PORT" randwrite
kill -TERM "$P_PID"; wait "$P_PID" || true; P_PID=""

start_tgt
TU="iscsi://127.0.0.1:$T_PORT/$TGT_IQN/1"
run_case "4k randread QD32 (iscsi-perf)" tgt "$T_PID" iscsi_perf "$TU" 8 1
run_case "128k seq read QD32 (iscsi-perf)" tgt "$T_PID" iscsi_perf "$TU" 256 0
run_case "4k read QD32 (qemu-img bench)" tgt "$T_PID" qemu_bench "$TU" 0
run_case "4k write QD32 (qemu-img bench)" tgt "$T_PID" qemu_bench "$TU" 1
run_case "4k randread QD32 (palisade perf)" tgt "$T_PID" palisade_perf "$TGT_IQN" 1 "$T_PORT" randread
run_case "4k randwrite QD32 (palisade perf)" tgt "$T_PID" palisade_perf "$TGT_IQN" 1 "$T_PORT" randwrite

{
  echo "# iSCSI: Palisade vs tgt — $(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -r), $(nproc) CPUs"
  echo "# command: DURATION=$DURATION TARGET_CORE=$TARGET_CORE CLIENT_CORE=$CLIENT_CORE SIZE_MB=$SIZE_MB bench/iscsi/run.sh"
  printf '| %-36s | %10s | %10s | %8s | %9s | %9s | %8s | %8s | %6s |\n' case "P IOPS" "tgt IOPS" "ratio" "P MiB/s" "tgt MiB/s" "P CPU/M" "tgt CPU/M" "p99 P"
  printf '|%s|\n' "--------------------------------------|------------|------------|----------|-----------|-----------|----------|----------|--------"
  for c in "4k randread QD32 (iscsi-perf)" "128k seq read QD32 (iscsi-perf)" "4k read QD32 (qemu-img bench)" "4k write QD32 (qemu-img bench)" \
           "4k randread QD32 (palisade perf)" "4k randwrite QD32 (palisade perf)"; do
    p=${RES["$c/palisade"]:-}; t=${RES["$c/tgt"]:-}
    [ -z "$p" ] && [ -z "$t" ] && continue
    read -r pi pm pp pc <<<"${p:-0 0 n/a n/a}"; read -r ti tm tp tc <<<"${t:-0 0 n/a n/a}"
    ratio="n/a"; [ "${ti:-0}" -gt 0 ] && ratio=$(printf '%.2fx' "$(echo "$pi / $ti" | bc -l)")
    printf '| %-36s | %10s | %10s | %8s | %9s | %9s | %8s | %8s | %6s |\n' "$c" "$pi" "$ti" "$ratio" "$pm" "$tm" "$pc" "$tc" "$pp"
  done
} | tee "$OUT"
echo "written to $OUT" >&2
