#!/usr/bin/env bash
# Two Palisade builds as NVMe/TCP targets, side by side in one run: bench/nvmf/run.sh with
# BIN=A and BIN=B alternately (A B, B A, A B, ...), the same client (B's `palisade perf`) for
# both, so drift in the machine's speed hits both alike. Prints the medians per case and the
# ratios B / A (IOPS, target CPU per I/O). For regressions: A = an older commit, B = now.
#
# Usage: bash bench/nvmf/ab.sh BIN_A BIN_B [seconds per case, default 10] [rounds, default 3]
#   env: OUT (default bench/nvmf/ab-<UTC date>.md)
set -euo pipefail
cd "$(dirname "$0")/../.."
A="$(realpath "$1")"; B="$(realpath "$2")"
SECS="${3:-10}"; ROUNDS="${4:-3}"
OUT="${OUT:-bench/nvmf/ab-$(date -u +%Y%m%dT%H%M%SZ).md}"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) -eq 1 ]; then order="A B"; else order="B A"; fi
  for w in $order; do
    bin=$A; [ "$w" = B ] && bin=$B
    BIN="$bin" PERF_BIN="$B" OUT="$TMP/$r-$w.md" bash bench/nvmf/run.sh "$SECS" >/dev/null
    echo "round $r $w done" >&2
  done
done
python3 - "$TMP" "$A" "$B" "$SECS" "$ROUNDS" "$OUT" <<'PY'
import glob, os, statistics, sys, datetime
tmp, a, b, secs, rounds, out = sys.argv[1:7]
rows = {}  # (case, which) -> list of (iops, cpu)
for f in sorted(glob.glob(f"{tmp}/*.md")):
    which = os.path.basename(f)[:-3].split("-")[1]
    for l in open(f):
        c = [x.strip() for x in l.strip().strip("|").split("|")]
        if len(c) == 7 and c[1].replace(".", "").isdigit():
            rows.setdefault((c[0], which), []).append((float(c[1]), float(c[4]), c))
cases = list(dict.fromkeys(k[0] for k in rows))
now = datetime.datetime.now(datetime.timezone.utc)
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
lines = [f"# NVMe/TCP A/B, {now:%Y-%m-%d %H:%M} UTC", "",
         f"{os.cpu_count()} CPUs ({cpu}); load average at the end: {' '.join(open('/proc/loadavg').read().split()[:3])}.",
         f"A = `{a}`, B = `{b}`; `bash bench/nvmf/ab.sh A B {secs} {rounds}` (target `serve -m 0x1 --poll busy`, B's perf on core 1).", "",
         "| case | round IOPS A | round IOPS B | median IOPS A | median IOPS B | B / A | CPU per 1M I/O A | B | B / A |",
         "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
for case in cases:
    ra, rb = rows.get((case, "A"), []), rows.get((case, "B"), [])
    ia, ib = statistics.median(x[0] for x in ra), statistics.median(x[0] for x in rb)
    ca, cb = statistics.median(x[1] for x in ra), statistics.median(x[1] for x in rb)
    lines.append(f"| {case} | {', '.join(f'{x[0]:.0f}' for x in ra)} | {', '.join(f'{x[0]:.0f}' for x in rb)} | {ia:.0f} | {ib:.0f} | {ib/ia:.3f} | {ca:.2f} | {cb:.2f} | {cb/ca:.3f} |")
text = "\n".join(lines) + "\n"
open(out, "w").write(text)
print(text)
PY
echo "written to $OUT" >&2
