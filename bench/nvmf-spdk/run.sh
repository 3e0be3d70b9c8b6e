#!/usr/bin/env bash
# Side by side: Palisade's NVMe/TCP target against SPDK's nvmf_tgt, both driven by SPDK's own
# spdk_nvme_perf, alternating Palisade, SPDK, Palisade, SPDK, ... in one run. Target on core 0,
# client on core 1, loopback TCP, a 1 GiB RAM namespace (512 B blocks) on both sides, the same
# JSON config for both. Cases: 4 KiB randread QD32, 4 KiB randwrite QD32, 128 KiB seq read QD32.
#
# Usage: bash bench/nvmf-spdk/run.sh SPDK_DIR [seconds per case, default 15] [rounds, default 3]
#   SPDK_DIR: an SPDK (v24.01 or newer) tree built by you outside this repository; the script
#             uses SPDK_DIR/build/bin/nvmf_tgt, SPDK_DIR/build/bin/spdk_nvme_perf and
#             SPDK_DIR/scripts/rpc.py.
# Env: BIN       Palisade binary (default target/release/palisade, built with cargo --release)
#      REACTORS  1 (default: palisade -m 0x1) or 2 (palisade -m 0x3; the client then shares
#                core 1 with Palisade's second reactor; SPDK stays on -m 0x1)
#      QPAIRS    I/O queue pairs the client opens (spdk_nvme_perf -P; default 1). With 2, each of
#                Palisade's 2 reactors gets one (connections go round robin), so both work.
#      POLL      Palisade poll mode, busy (default) or adaptive
#      HUGE      auto (default: use hugepages, reserving them if needed and possible, else fall
#                back to --no-huge) or no (always --no-huge)
#      NICE      run both targets and the client under `nice -n NICE` (e.g. -10 on a busy machine,
#                as root; unset: no change)
#      OUT       results file (default bench/nvmf-spdk/results-<UTC date>.md)
# Writes a markdown table to $OUT and prints it.
set -euo pipefail
cd "$(dirname "$0")/../.."

SPDK="${1:?usage: run.sh SPDK_DIR [seconds] [rounds]}"
SPDK="$(cd "$SPDK" && pwd)"
SECS="${2:-15}"
ROUNDS="${3:-3}"
REACTORS="${REACTORS:-1}"
QPAIRS="${QPAIRS:-1}"
POLL="${POLL:-busy}"
HUGE="${HUGE:-auto}"
PRE=()
[ -z "${NICE:-}" ] || PRE=(nice -n "$NICE")
WARM=2
NQN=nqn.2016-06.io.spdk:bench
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT="${OUT:-bench/nvmf-spdk/results-$STAMP.md}"
[ "$SECS" -ge 5 ] || { echo "seconds per case must be >= 5" >&2; exit 2; }

TGT="$SPDK/build/bin/nvmf_tgt"
PERF="$SPDK/build/bin/spdk_nvme_perf"
[ -x "$PERF" ] || PERF="$SPDK/build/examples/perf"
RPC="${RPC:-$SPDK/scripts/rpc.py}"
for f in "$TGT" "$PERF" "$RPC"; do
  [ -e "$f" ] || { echo "missing $f (build SPDK in $SPDK first, see bench/nvmf-spdk/README.md)" >&2; exit 2; }
done
if [ -z "${BIN:-}" ]; then
  cargo build --release --bin palisade >/dev/null
  BIN=target/release/palisade
fi
case "$REACTORS" in
  1) PMASK=0x1; PCORES=0 ;;
  2) PMASK=0x3; PCORES=0,1 ;;
  *) echo "REACTORS must be 1 or 2" >&2; exit 2 ;;
esac

TMP=$(mktemp -d)
TPID=""
CPID=""
HUGE_SET_FROM=""
HUGE_MOUNTED=""
cleanup() {
  set +e
  for p in $CPID $TPID; do
    kill "$p" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null
    wait "$p" 2>/dev/null
    # DPDK names its hugepage files and runtime dir after the pid unless -i is given.
    rm -rf /dev/hugepages/spdk_pid"$p"* /var/run/dpdk/spdk_pid"$p" 2>/dev/null
  done
  TPID=""; CPID=""
}
on_exit() {
  cleanup
  [ -n "$HUGE_MOUNTED" ] && umount /dev/hugepages 2>/dev/null
  [ -n "$HUGE_SET_FROM" ] && echo "$HUGE_SET_FROM" >/proc/sys/vm/nr_hugepages 2>/dev/null
  rm -rf "$TMP"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# Hugepages: nvmf_tgt needs its 1 GiB RAM bdev plus buffers from DPDK memory; perf needs little.
NEED_PAGES=1536 # 2 MiB pages: 3 GiB between the two SPDK processes
huge_free() { awk '/HugePages_Free/ {print $2}' /proc/meminfo; }
NOHUGE=1
if [ "$HUGE" = auto ]; then
  if ! grep -q hugetlbfs /proc/mounts; then
    mkdir -p /dev/hugepages && mount -t hugetlbfs nodev /dev/hugepages 2>/dev/null && HUGE_MOUNTED=1
  fi
  if grep -q hugetlbfs /proc/mounts; then
    free=$(huge_free)
    if [ "$free" -lt "$NEED_PAGES" ]; then
      total=$(cat /proc/sys/vm/nr_hugepages)
      if echo $((total + NEED_PAGES - free)) >/proc/sys/vm/nr_hugepages 2>/dev/null; then
        HUGE_SET_FROM=$total
      fi
    fi
    [ "$(huge_free)" -ge "$NEED_PAGES" ] && NOHUGE=0
  fi
fi
if [ "$NOHUGE" = 1 ]; then
  TGT_MEM=(--no-huge -s 2048)
  PERF_MEM=(--no-huge -s 1024)
  MEMNOTE="no hugepages: nvmf_tgt --no-huge -s 2048, spdk_nvme_perf --no-huge -s 1024"
else
  TGT_MEM=()
  PERF_MEM=()
  MEMNOTE="hugepages: $(huge_free) free 2 MiB pages of $(cat /proc/sys/vm/nr_hugepages) at start, hugetlbfs on $(awk '$3=="hugetlbfs" {print $2; exit}' /proc/mounts)"
fi

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
write_config() { # $1 = port: the same config for both targets (SPDK's JSON config format)
  cat <<EOF
{"subsystems":[
 {"subsystem":"bdev","config":[{"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":2097152,"block_size":512}}]},
 {"subsystem":"nvmf","config":[
  {"method":"nvmf_create_transport","params":{"trtype":"TCP","max_queue_depth":128,"in_capsule_data_size":4096,"max_io_size":131072,"io_unit_size":131072}},
  {"method":"nvmf_create_subsystem","params":{"nqn":"$NQN","allow_any_host":true,"serial_number":"BENCH0001"}},
  {"method":"nvmf_subsystem_add_ns","params":{"nqn":"$NQN","namespace":{"nsid":1,"bdev_name":"Malloc0"}}},
  {"method":"nvmf_subsystem_add_listener","params":{"nqn":"$NQN","listen_address":{"trtype":"TCP","adrfam":"IPv4","traddr":"127.0.0.1","trsvcid":"$1"}}}
 ]}]}
EOF
}

PORT=""
start_target() { # $1 = palisade | spdk
  PORT=$(free_port)
  local sock="$TMP/$1.sock" cfg="$TMP/$1.json" log="$TMP/$1.log"
  rm -f "$sock"
  write_config "$PORT" >"$cfg"
  if [ "$1" = palisade ]; then
    "${PRE[@]}" taskset -c "$PCORES" "$BIN" serve -m "$PMASK" --poll "$POLL" -r "$sock" -c "$cfg" -L ERROR >"$log" 2>&1 &
    TPID=$!
    for _ in $(seq 200); do
      "$BIN" rpc -s "$sock" nvmf_get_subsystems 2>/dev/null | grep -q "$PORT" && return 0
      kill -0 "$TPID" 2>/dev/null || break
      sleep 0.1
    done
  else
    "${PRE[@]}" taskset -c 0 "$TGT" -m 0x1 "${TGT_MEM[@]}" -r "$sock" --json "$cfg" >"$log" 2>&1 &
    TPID=$!
    for _ in $(seq 300); do
      python3 "$RPC" -s "$sock" -t 1 nvmf_get_subsystems 2>/dev/null | grep -q "$PORT" && return 0
      kill -0 "$TPID" 2>/dev/null || break
      sleep 0.1
    done
  fi
  echo "$1 target did not come up; its log:" >&2
  tail -30 "$log" >&2
  exit 1
}

CLK=$(getconf CLK_TCK)
target_cpu() { awk -v clk="$CLK" '{printf "%.2f\n", ($14 + $15) / clk}' "/proc/$TPID/stat"; }
now() { date +%s.%N; }
TARGET="" # palisade | spdk: which RPC client asks for busy time
# Per reactor "busy idle cpu" in seconds, space-separated, reactors separated by commas: busy and
# idle are framework_get_reactors' counters (loop iterations that found work / found none, wall
# time; the same counters in both targets), cpu the reactor thread's utime+stime. See measure().
target_busy() {
  local sock="$TMP/$TARGET.sock"
  if [ "$TARGET" = palisade ]; then
    "$BIN" rpc -s "$sock" framework_get_reactors
  else
    python3 "$RPC" -s "$sock" -t 5 framework_get_reactors
  fi | python3 -c '
import json, os, sys
d = json.load(sys.stdin)
pid, hz, clk = '"$TPID"', d["tick_rate"], os.sysconf("SC_CLK_TCK")
def cpu(tid):
    try:
        f = open(f"/proc/{pid}/task/{tid}/stat").read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / clk
    except OSError:
        return 0.0
# Reactor threads: Palisade reports its tids; SPDK names them reactor_<lcore>.
names = {}
for t in os.listdir(f"/proc/{pid}/task"):
    try:
        names[open(f"/proc/{pid}/task/{t}/comm").read().strip()] = t
    except OSError:
        pass
out = []
for r in d["reactors"]:
    tid = r.get("tid") or names.get("reactor_%d" % r["lcore"], 0)
    out.append("%.6f %.6f %.4f" % (r["busy"] / hz, r["idle"] / hz, cpu(tid)))
print(",".join(out))'
}

PERF_LOG="$TMP/perf.log"
perf_start() { # $1 = seconds, rest = perf workload args
  local secs="$1"; shift
  "${PRE[@]}" taskset -c 1 "$PERF" -c 0x2 "${PERF_MEM[@]}" -P "$QPAIRS" "$@" -t "$secs" \
    -r "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:$PORT subnqn:$NQN" >"$PERF_LOG" 2>&1 &
  CPID=$!
}
perf_wait() { # $1 = seconds the run was given
  if ! timeout $(($1 + 60)) tail --pid="$CPID" -f /dev/null; then
    echo "spdk_nvme_perf did not finish; its log:" >&2; tail -30 "$PERF_LOG" >&2; exit 1
  fi
  local rc=0
  wait "$CPID" || rc=$?
  rm -rf /var/run/dpdk/spdk_pid"$CPID" /dev/hugepages/spdk_pid"$CPID"* 2>/dev/null || true
  CPID=""
  if [ "$rc" != 0 ] || ! grep -q '^Total' "$PERF_LOG"; then
    echo "spdk_nvme_perf failed (rc $rc):" >&2; tail -30 "$PERF_LOG" >&2; exit 1
  fi
}
# Warm-up: connect, fill pools and caches; nothing recorded.
warm_up() { perf_start "$WARM" "$@"; perf_wait "$WARM"; }
# One measured run; sets RESULT to "IOPS MiB/s avg_us cores work" where cores is the target's CPU
# (utime+stime) and work its reactors' CPU spent on work per second, both over a window inside the run
# (from WARM s after perf started to 1 s before its -t ends), so perf's start-up and teardown, while
# a busy poller burns CPU for nothing, do not count.
measure() { # $1 = seconds, rest = perf workload args
  local secs="$1" c0 t0 c1 t1 b0 b1
  perf_start "$@"
  sleep "$WARM"; b0=$(target_busy); c0=$(target_cpu); t0=$(now)
  sleep $((secs - WARM - 1)); c1=$(target_cpu); t1=$(now); b1=$(target_busy)
  perf_wait "$secs"
  RESULT=$(python3 - "$PERF_LOG" "$c0" "$c1" "$t0" "$t1" "$b0" "$b1" <<'PY'
import sys
log, c0, c1, t0, t1, b0, b1 = sys.argv[1:8]
line = next(l for l in open(log) if l.startswith("Total"))
f = line.split(":", 1)[1].split()
cores = (float(c1) - float(c0)) / (float(t1) - float(t0))
# Work of each reactor: its thread's CPU time times the share of its loop time spent in
# iterations that found work. Busy time alone is wall time and also counts the moments another
# process held the core in the middle of a busy iteration; CPU time alone counts the spinning of
# a busy poller. Preemption stretches busy and idle iterations alike, so the share survives it.
work = 0.0
for r0, r1 in zip(b0.split(","), b1.split(",")):
    bu0, id0, cp0 = map(float, r0.split())
    bu1, id1, cp1 = map(float, r1.split())
    loop = (bu1 - bu0) + (id1 - id0)
    if loop > 0:
        work += (cp1 - cp0) * (bu1 - bu0) / loop
busy = work / (float(t1) - float(t0))
print(f[0], f[1], f[2], f"{cores:.3f}", f"{busy:.3f}")
PY
)
}

CASES=("4 KiB randread QD32|-q 32 -o 4096 -w randread"
       "4 KiB randwrite QD32|-q 32 -o 4096 -w randwrite"
       "128 KiB seq read QD32|-q 32 -o 131072 -w read")
LOAD0=$(cut -d' ' -f1 /proc/loadavg)
RES="$TMP/results.tsv" # round target case iops mibs avg cores busy
: >"$RES"
for r in $(seq "$ROUNDS"); do
  for t in palisade spdk; do
    TARGET=$t
    start_target "$t"
    for i in "${!CASES[@]}"; do
      IFS='|' read -r name args <<<"${CASES[$i]}"
      # shellcheck disable=SC2086
      warm_up $args
      # shellcheck disable=SC2086
      measure "$SECS" $args
      echo "round $r $t: $name: IOPS MiB/s avg_us cores = $RESULT" >&2
      printf '%s\t%s\t%s\t%s\n' "$r" "$t" "$i" "$RESULT" >>"$RES"
    done
    cleanup
  done
done

# SPDK's version from its tree (the snapshot may have no git metadata).
SPDK_VER=$(python3 - "$SPDK/include/spdk/version.h" <<'PY' 2>/dev/null || echo unknown
import re, sys
t = open(sys.argv[1]).read()
g = lambda k: re.search(r"#define SPDK_VERSION_" + k + r"\s+(\S+)", t).group(1)
patch = "" if g("PATCH") == "0" else "." + g("PATCH")
print("v%s.%02d%s%s" % (g("MAJOR"), int(g("MINOR")), patch, g("SUFFIX").strip('"')))
PY
)
PAL_REV="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
python3 - "$RES" "$OUT" "$STAMP" "$SECS" "$ROUNDS" "$REACTORS" "$PMASK" "$POLL" "$SPDK_VER" "$PAL_REV" "$MEMNOTE" "$BIN" "$SPDK" "$LOAD0" "${NICE:-}" "$QPAIRS" <<'PY'
import statistics, subprocess, sys
res, out, stamp, secs, rounds, reactors, pmask, poll, spdkv, rev, memnote, binp, spdkdir, load0, nice, qpairs = sys.argv[1:17]
cases = ["4 KiB randread QD32", "4 KiB randwrite QD32", "128 KiB seq read QD32"]
d = {}
for line in open(res):
    r, t, i, iops, mibs, avg, cores, busy = line.split()
    d[(int(r), t, int(i))] = dict(iops=float(iops), mibs=float(mibs), avg=float(avg), cores=float(cores), busy=float(busy))
R = sorted({k[0] for k in d})
def cpu_per_m(x):  # target CPU seconds per million I/Os
    return x["cores"] / x["iops"] * 1e6
def busy_per_m(x):  # target reactors' work CPU seconds per million I/Os
    return x["busy"] / x["iops"] * 1e6
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-"], capture_output=True, text=True).stdout.strip()
L = []
L.append(f"# Palisade vs SPDK nvmf_tgt, both driven by spdk_nvme_perf, {stamp}")
L.append("")
L.append(f"Host: {subprocess.getoutput('uname -n')}, {subprocess.getoutput('nproc')} cores, {cpu}; load average {load0} at the start, {open('/proc/loadavg').read().split()[0]} at the end")
L.append("(a busy poller below 1.00 target cores was preempted by other processes on its core).")
L.append(f"Palisade (tree `{rev}`, binary `{binp}`): `palisade serve -m {pmask} --poll {poll}`"
         + (" (2 reactors: core 1 is shared by Palisade's second reactor and the client)" if reactors == "2" else "") + ".")
L.append(f"SPDK {spdkv} (`{spdkdir}`): `nvmf_tgt -m 0x1`. Both: 1 GiB RAM bdev, 512 B blocks, NVMe/TCP on 127.0.0.1, no digests, same JSON config.")
if nice:
    L.append(f"Targets and client under `nice -n {nice}`.")
L.append(f"Client: `taskset -c 1 spdk_nvme_perf -c 0x2 -P {qpairs} -q 32 -o SIZE -w RW -t {secs}` on core 1; {memnote}.")
L.append(f"{rounds} rounds, each Palisade then SPDK, each target started fresh; every case has a 2 s warm-up run first.")
L.append("Target CPU: utime+stime of the target process over a window inside the measured run, as cores busy;")
L.append("CPU s per 1M I/O = cores / IOPS × 10^6 (a busy poller uses one core per reactor whatever the load).")
L.append("Work s per 1M I/O: per reactor, its thread's CPU time × the share of its loop time spent in iterations")
L.append("that found work (framework_get_reactors busy / (busy + idle)), summed over reactors, over the same")
L.append("window, per million I/Os: the CPU the work took, not the spinning of an idle poller.")
L.append("")
L.append("## Summary (medians over rounds; ratio = median of the per-round Palisade/SPDK IOPS ratios)")
L.append("")
L.append("| case | Palisade IOPS | Palisade MiB/s | SPDK IOPS | SPDK MiB/s | ratio P/S | per-round ratios | Palisade CPU s/1M I/O | SPDK CPU s/1M I/O | Palisade work s/1M I/O | SPDK work s/1M I/O |")
L.append("| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
for i, name in enumerate(cases):
    P = [d[(r, "palisade", i)] for r in R if (r, "palisade", i) in d]
    S = [d[(r, "spdk", i)] for r in R if (r, "spdk", i) in d]
    ratios = [d[(r, "palisade", i)]["iops"] / d[(r, "spdk", i)]["iops"] for r in R
              if (r, "palisade", i) in d and (r, "spdk", i) in d]
    med = lambda xs: statistics.median(xs) if xs else float("nan")
    L.append(f"| {name} | {med([x['iops'] for x in P]):.0f} | {med([x['mibs'] for x in P]):.1f} | "
             f"{med([x['iops'] for x in S]):.0f} | {med([x['mibs'] for x in S]):.1f} | "
             f"**{med(ratios):.3f}** | {', '.join(f'{x:.3f}' for x in ratios)} | "
             f"{med([cpu_per_m(x) for x in P]):.2f} | {med([cpu_per_m(x) for x in S]):.2f} | "
             f"{med([busy_per_m(x) for x in P]):.2f} | {med([busy_per_m(x) for x in S]):.2f} |")
L.append("")
L.append("## Every run")
L.append("")
L.append("| round | case | target | IOPS | MiB/s | avg µs | target cores | CPU s/1M I/O | work cores | work s/1M I/O | ratio P/S |")
L.append("| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for r in R:
    for i, name in enumerate(cases):
        for t in ("palisade", "spdk"):
            x = d.get((r, t, i))
            if not x:
                continue
            ratio = ""
            if t == "spdk" and (r, "palisade", i) in d:
                ratio = f"{d[(r, 'palisade', i)]['iops'] / x['iops']:.3f}"
            L.append(f"| {r} | {name} | {t} | {x['iops']:.0f} | {x['mibs']:.1f} | {x['avg']:.1f} | {x['cores']:.2f} | {cpu_per_m(x):.2f} | {x['busy']:.2f} | {busy_per_m(x):.2f} | {ratio} |")
open(out, "w").write("\n".join(L) + "\n")
PY
cat "$OUT"
