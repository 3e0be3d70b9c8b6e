#!/usr/bin/env bash
# Install what the build and the tests need on a fresh Debian machine (idempotent).
set -euo pipefail
PKGS=(libiscsi-bin tgt fio qemu-utils qemu-block-extra python3-venv)
missing=()
for p in "${PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust (https://rustup.rs) first" >&2
  exit 1
fi
# SPDK's own RPC client, the compatibility oracle for management.
VENV="${PALISADE_VENV:-$(cd "$(dirname "$0")/.." && pwd)/.venv}"
if [ ! -x "$VENV/bin/spdk-rpc" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q spdk
fi
