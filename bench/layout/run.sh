#!/usr/bin/env bash
# All layout benchmarks with one command: release build, guard enforce vs off (both protocols),
# grants per second (single file and many files, journal on a file in $DIR).
# Usage: bench/layout/run.sh [seconds per case, default 10]   (env: BIN, DIR = journal directory)
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS="${1:-10}"
if [ -z "${BIN:-}" ]; then
  cargo build --release --bin palisade >/dev/null
  BIN=target/release/palisade
fi
echo "## Guard cost: 4 KiB randwrite QD32 inside a grant"
python3 bench/layout/guard.py --bin "$BIN" --seconds "$SECS" 2>/dev/null
echo
echo "## layout_get + layout_commit + layout_return throughput (journal on a file)"
python3 bench/layout/grants.py --bin "$BIN" --seconds "$SECS" ${DIR:+--dir "$DIR"} 2>/dev/null
