#!/usr/bin/env bash
# The test suite: installs what the tests need, builds, runs unit, integration and compliance tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
export PALISADE_REQUIRE_PEERS=1
cargo build --all-targets
cargo test --no-fail-fast -- --test-threads=2
