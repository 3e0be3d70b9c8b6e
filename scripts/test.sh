#!/usr/bin/env bash
# The test suite: installs what the tests need, builds, runs unit, integration, SPDK
# compatibility and compliance tests. Every external peer is required (a missing one fails).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
export PATH="$PWD/.venv/bin:$PATH"
export PALISADE_REQUIRE_PEERS=1
cargo build --all-targets
cargo test --no-fail-fast -- --test-threads=2
# The counting allocator (benchmark builds): the data path makes no allocation per I/O.
cargo test --features count-alloc --lib -- --test-threads=2
