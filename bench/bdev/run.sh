#!/usr/bin/env bash
# bench/bdev: 4 KiB random read and write IOPS at QD32 on one reactor, Palisade's bdev path
# (`palisade bdevperf`) on malloc and on uring over a file, side by side with
# `fio --ioengine=io_uring --direct=1` on the same file. Prints a Markdown table.
#
#   bash bench/bdev/run.sh            # 10 s per run
#   TIME=5 SIZE_MB=1024 FILE=/var/tmp/palisade-bench.img CORE=0 bash bench/bdev/run.sh
#
# The file must live on a real file system (O_DIRECT); tmpfs refuses O_DIRECT.
set -euo pipefail
cd "$(dirname "$0")/../.."
TIME="${TIME:-10}"
SIZE_MB="${SIZE_MB:-1024}"
FILE="${FILE:-/var/tmp/palisade-bench.img}"
CORE="${CORE:-0}"
QD="${QD:-32}"
BS="${BS:-4096}"
REPS="${REPS:-1}"   # runs per cell, alternating Palisade and fio; the table shows medians

command -v fio >/dev/null || { echo "fio is not installed (bash scripts/setup.sh)" >&2; exit 1; }
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
echo "building palisade (release, count-alloc)..." >&2
cargo build --release --features count-alloc --quiet
BIN=target/release/palisade

# A fully written file: never-written ranges are cheaper to read and would flatter either side.
if [ ! -f "$FILE" ] || [ "$(stat -c %s "$FILE")" -ne $((SIZE_MB * 1024 * 1024)) ]; then
  echo "writing $SIZE_MB MiB test file $FILE..." >&2
  dd if=/dev/zero of="$FILE" bs=1M count="$SIZE_MB" oflag=direct status=none
fi

ours() { # bdev-args... workload -> "iops allocs_per_io p99_us"
  local w="${@: -1}"
  set -- "${@:1:$(($# - 1))}"
  "$BIN" bdevperf "$@" -m "$((1 << CORE))" --poll busy -q "$QD" -o "$BS" -w "$w" -t "$TIME" --warmup 1 --json |
    python3 -c 'import json,sys; r=json.load(sys.stdin); a=r.get("allocations_per_io"); print("%.0f %s %.0f" % (r["iops"], "-" if a is None else "%.3f" % a, r["lat_p99_us"]))'
}

fio_run() { # workload -> "iops p99_us"
  fio --name=bench --filename="$FILE" --ioengine=io_uring --direct=1 --rw="$1" --bs="$BS" \
      --iodepth="$QD" --numjobs=1 --time_based --runtime="$TIME" --ramp_time=1 \
      --cpus_allowed="$CORE" --group_reporting --output-format=json 2>/dev/null |
    python3 -c 'import json,sys
j=json.load(sys.stdin)["jobs"][0]; k="read" if j["read"]["io_bytes"] else "write"
print("%.0f %.0f" % (j[k]["iops"], j[k]["clat_ns"]["percentile"].get("99.000000", 0) / 1000))'
}

direct=$("$BIN" bdevperf --uring "$FILE" -q 1 -t 0.2 --warmup 0 --json | python3 -c 'import json,sys; print("O_DIRECT" if json.load(sys.stdin)["direct_io"] else "buffered (no O_DIRECT)")')
echo "| workload | bdev | Palisade IOPS | fio IOPS | ratio | Palisade p99 us | fio p99 us | allocs/IO |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
median() { python3 -c 'import sys; v=sorted(sys.argv[1:], key=float); print(v[(len(v)-1)//2])' "$@"; }
for w in randread randwrite; do
  mi=(); ma=(); mp=(); ui=(); ua=(); up=(); fi=(); fp=()
  for _ in $(seq "$REPS"); do
    read -r a b c < <(ours --malloc "$SIZE_MB" --bdev-block-size 512 "$w"); mi+=("$a"); ma=("$b"); mp+=("$c")
    read -r a b c < <(ours --uring "$FILE" "$w"); ui+=("$a"); ua=("$b"); up+=("$c")
    read -r a b < <(fio_run "$w"); fi+=("$a"); fp+=("$b")
  done
  m_iops=$(median "${mi[@]}"); u_iops=$(median "${ui[@]}"); f_iops=$(median "${fi[@]}")
  ratio=$(python3 -c "print('%.2f' % ($u_iops / max($f_iops, 1)))")
  echo "| $w 4k QD$QD | malloc | $m_iops | - | - | $(median "${mp[@]}") | - | ${ma[0]} |"
  echo "| $w 4k QD$QD | uring (file) | $u_iops | $f_iops | $ratio | $(median "${up[@]}") | $(median "${fp[@]}") | ${ua[0]} |"
done
echo
echo "time per run ${TIME}s x $REPS (medians), one reactor on core $CORE (busy poll), fio pinned to core $CORE; file $FILE ($SIZE_MB MiB, Palisade $direct, $(df -T "$(dirname "$FILE")" | awk 'NR==2{print $2}')); $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(date -u '+%Y-%m-%d %H:%M UTC')"
