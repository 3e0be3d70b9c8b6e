#!/usr/bin/env bash
# layout_get + layout_commit + layout_return per second, metadata in etcd vs the local file
# journal, in one run (issue 13). Needs etcd and etcdctl (scripts/setup.sh installs them).
# Usage: bench/layout-etcd/run.sh [seconds per case, default 5]   (env: BIN, DIR = work directory)
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS="${1:-5}"
if [ -z "${BIN:-}" ]; then
  cargo build --release --bin palisade >/dev/null
  BIN=target/release/palisade
fi
command -v etcd >/dev/null || { echo "etcd not installed (scripts/setup.sh)" >&2; exit 1; }
python3 bench/layout-etcd/bench.py --bin "$BIN" --seconds "$SECS" ${DIR:+--dir "$DIR"}
