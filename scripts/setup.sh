#!/usr/bin/env bash
# Install what the build and the tests need on a fresh Debian machine (idempotent):
# Debian packages (compiler toolchain, the external peers the tests drive), Rust via rustup if
# cargo is missing, and SPDK's own RPC client (PyPI `spdk`, pinned) in .venv.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PKGS=(build-essential curl ca-certificates python3 python3-venv libiscsi-bin tgt fio qemu-utils qemu-block-extra)
missing=()
for p in "${PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
SUDO=""
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "need root or sudo to install: ${missing[*]}" >&2; exit 1; }
    SUDO="sudo"
  fi
  echo "installing Debian packages: ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
for p in "${PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || { echo "package $p failed to install" >&2; exit 1; }
done
# Debian's tgt package starts a tgtd service on 0.0.0.0:3260 where systemd runs; the tests start
# their own tgtd on their own ports and the default config listens on 127.0.0.1:3260.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet tgt 2>/dev/null; then
  echo "stopping the tgt service (it holds port 3260; tests run their own tgtd)" >&2
  ${SUDO:-} systemctl stop tgt || true
fi
# Rust: the distribution's rustc is too old for the dependencies; use rustup's stable toolchain.
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
if ! command -v cargo >/dev/null 2>&1; then
  echo "installing Rust (rustup, stable, minimal profile)" >&2
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal >/dev/null
  . "$HOME/.cargo/env"
fi
# SPDK's own RPC client, the compatibility oracle for management (spdk/methods.tsv is generated
# from this exact version).
SPDK_VERSION=26.9
VENV="${PALISADE_VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/spdk-rpc" ] || [ "$("$VENV/bin/python" -c 'from spdk import version; print(version.__version__)' 2>/dev/null)" != "$SPDK_VERSION" ]; then
  echo "installing SPDK's RPC client (PyPI spdk==$SPDK_VERSION) into $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "spdk==$SPDK_VERSION"
fi
