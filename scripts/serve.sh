#!/usr/bin/env bash
# Install what is needed, build, and start the target on the embedded default configuration
# (configs/default.json: a 256 MiB RAM bdev). Extra arguments go to `palisade serve`, e.g.
#   bash scripts/serve.sh -r /tmp/palisade.sock -m 0x3
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo build --release
exec target/release/palisade serve -c default "$@"
