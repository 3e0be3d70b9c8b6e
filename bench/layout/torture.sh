#!/bin/sh
# Long crash-torture run: 1,000 SIGKILLs during layout get/commit/return/fence/truncate/reflink
# loops, fsck after each, committed maps checked after each restart (CI runs 50).
# Usage: bench/layout/torture.sh [KILLS] [SEED]
set -e
cd "$(dirname "$0")/../.."
PALISADE_LAYOUT_KILLS="${1:-1000}" PALISADE_LAYOUT_SEED="${2:-$(date +%s)}" \
    cargo test --test layout_crash -- --nocapture
