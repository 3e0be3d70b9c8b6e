#!/usr/bin/env bash
# The NVMe-oF core's own cost, no sockets: the loop transport.
#  1. bdevperf on one reactor (core 0): the same RAM bdev driven directly, then through the
#     NVMe-oF core (--nvmf-loop: the workload and the loop queue pair share the reactor). The
#     difference per I/O is what the core (capsule handling, admission, completion) costs.
#  2. palisade perf --transport loop: target reactor on core 0, the host thread on core 1;
#     the target's busy time per I/O and IOPS per busy core.
# Alternates the two bdevperf variants for `rounds` rounds. Writes bench/nvmf-loop/results-<date>.md.
#
# Usage: bench/nvmf-loop/run.sh [seconds per case, default 10] [rounds, default 3]   (env: BIN, OUT)
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS="${1:-10}"
ROUNDS="${2:-3}"
BIN="${BIN:-target/release/palisade}"
[ -x "$BIN" ] || cargo build --release --bin palisade >/dev/null
OUT="${OUT:-bench/nvmf-loop/results-$(date -u +%Y%m%dT%H%M%SZ).md}"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
field() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); v=d
for k in sys.argv[2].split("."): v=v[k]
print(v)' "$1" "$2"; }

{
echo "# NVMe-oF core through the loop transport — $(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -r), $(nproc) CPUs"
echo "# command: bench/nvmf-loop/run.sh $SECS $ROUNDS (BIN=$BIN)"
echo
echo "## bdevperf, one reactor on core 0, RAM bdev 1 GiB, QD32: direct vs through the NVMe-oF core"
echo
echo "| case | round | bdev IOPS | via NVMe-oF loop IOPS | ratio | core cost ns/I/O | allocs/I/O (loop) |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
} | tee "$OUT"
for c in "randread 4096" "randwrite 4096" "read 131072"; do
  set -- $c
  for r in $(seq "$ROUNDS"); do
    taskset -c 0 "$BIN" bdevperf --malloc 1024 -q 32 -o "$2" -w "$1" -t "$SECS" -m 0x1 --poll busy --json >"$TMP/d.json"
    taskset -c 0 "$BIN" bdevperf --malloc 1024 -q 32 -o "$2" -w "$1" -t "$SECS" -m 0x1 --poll busy --nvmf-loop --json >"$TMP/l.json"
    python3 - "$TMP/d.json" "$TMP/l.json" "$1 $(( $2 / 1024 )) KiB" "$r" <<'PY' | tee -a "$OUT"
import json, sys
d = json.load(open(sys.argv[1])); l = json.load(open(sys.argv[2]))
cost = 1e9 / l["iops"] - 1e9 / d["iops"]
a = l.get("allocations_per_io")
print(f"| {sys.argv[3]} | {sys.argv[4]} | {d['iops']:.0f} | {l['iops']:.0f} | {l['iops']/d['iops']:.3f} | {cost:.0f} | {'n/a' if a is None else f'{a:.3f}'} |")
PY
  done
done
{
echo
echo "## palisade perf --transport loop: target reactor on core 0, host thread on core 1, QD32"
echo
echo "| case | IOPS | MiB/s | p99 µs | target busy ns/I/O | IOPS per busy target core |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
} | tee -a "$OUT"
for c in "randread 4k" "randwrite 4k" "read 128k"; do
  set -- $c
  taskset -c 1 "$BIN" perf --transport loop --target-cores 0x1 --rw "$1" --bs "$2" --qd 32 --time "${SECS}s" --json >"$TMP/p.json" 2>/dev/null
  python3 - "$TMP/p.json" "$1 $2" <<'PY' | tee -a "$OUT"
import json, sys
p = json.load(open(sys.argv[1])); t = p["target"]
print(f"| {sys.argv[2]} | {p['iops']:.0f} | {p['mib_s']:.1f} | {p['lat_us']['p99']:.1f} | {t['busy_ns_per_io']:.0f} | {t['iops_per_core']:.0f} |")
PY
done
echo "results: $OUT"
