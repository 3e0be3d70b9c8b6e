#!/usr/bin/env bash
# Hostile clients against the release binary: every abuse test of tests/hostile_*.rs, each
# measuring the target's RSS (baseline, peak, after the abusers leave) and its longest reactor
# loop (stall). Prints a markdown table and writes it to bench/hostile/results-<UTC date>.md.
#
#   bash bench/hostile/run.sh                 # release build (thin LTO: long to build)
#   PROFILE=dev bash bench/hostile/run.sh     # the tests' own build (opt-level 1): same RSS bars
#
# The bars (issue 11): peak RSS under 512 MiB (1 GiB for the 32 MiB-read case), back within
# 64 MiB of the baseline after the clients leave, no stall over 100 ms; 4,000 idle connections
# under 200 MiB.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=bench/hostile/results-$(date -u +%Y%m%dT%H%M%SZ).md
REPORT=$(mktemp)
trap 'rm -f "$REPORT"' EXIT
tests=()
for f in tests/hostile_*.rs; do tests+=(--test "$(basename "$f" .rs)"); done
PROFILE=${PROFILE:-release}
PALISADE_HOSTILE_REPORT="$REPORT" cargo test --profile "$PROFILE" "${tests[@]}" -- --test-threads=1 >&2
PROFILE="$PROFILE" python3 - "$REPORT" "$OUT" <<'PY'
import json, sys, platform, datetime, os
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
cpu = next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), '?')
head = [f"# Hostile clients, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"{os.cpu_count()} CPUs ({cpu}); `PROFILE={os.environ.get('PROFILE', 'release')} bash bench/hostile/run.sh`", "",
        "| abuse | baseline MiB | peak MiB | after MiB | worst stall ms |", "| --- | ---: | ---: | ---: | ---: |"]
body = [f"| {r['abuse']} | {r['baseline_kib']/1024:.0f} | {r['peak_kib']/1024:.0f} | {r['after_kib']/1024:.0f} | {r['stall_us']/1000:.1f} |" for r in rows]
text = "\n".join(head + body) + "\n"
open(sys.argv[2], 'w').write(text)
print(text)
PY
echo "written to $OUT" >&2
