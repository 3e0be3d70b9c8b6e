#!/usr/bin/env bash
# Install what the build and the tests need on a fresh Debian machine (idempotent):
# Debian packages (compiler toolchain, the external peers the tests drive), Rust via rustup if
# cargo is missing, and SPDK's own RPC client (PyPI `spdk`, pinned) in .venv.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# pkg-config, libssl-dev: the openssl crate (NVMe/TCP TLS 1.3 PSK) links Debian's libssl.
# protobuf-compiler: the etcd-client crate generates its gRPC code at build time; etcd-server: the
# real etcd the cluster tests start on 127.0.0.1; etcd-client: etcdctl, to inspect what they left.
PKGS=(build-essential pkg-config libssl-dev curl ca-certificates python3 python3-venv libiscsi-bin tgt fio protobuf-compiler etcd-server etcd-client)
# qemu-utils and qemu-block-extra must be one version (the latter depends on the former with `=`).
# An image may ship qemu-utils from a suite its apt sources do not list (bookworm-backports), so a
# plain install of qemu-block-extra fails; they are handled as a pair below.
QEMU_PAIR=(qemu-utils qemu-block-extra)
installed_version() { dpkg-query -W -f='${Status} ${Version}\n' "$1" 2>/dev/null | awk '$3=="installed"{print $4}'; }
missing=()
for p in "${PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
qemu_ok() {
  local u b
  u="$(installed_version qemu-utils)"; b="$(installed_version qemu-block-extra)"
  [ -n "$u" ] && [ "$u" = "$b" ]
}
SUDO=""
if [ ${#missing[@]} -gt 0 ] || ! qemu_ok; then
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "need root or sudo to install packages" >&2; exit 1; }
    SUDO="sudo"
  fi
  $SUDO apt-get update -qq
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}" >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! qemu_ok; then
  # One version apt offers for both packages: the installed qemu-utils' own if qemu-block-extra
  # exists at it, else the newest version offered for both (which may be a downgrade).
  have="$(installed_version qemu-utils)"
  offered_b="$(apt-cache madison qemu-block-extra | awk -F'|' '{gsub(/ /,"",$2); print $2}')"
  offered_u="$(apt-cache madison qemu-utils | awk -F'|' '{gsub(/ /,"",$2); print $2}')"
  pick=""
  if [ -n "$have" ] && grep -qxF "$have" <<<"$offered_b"; then
    pick="$have"
  else
    while read -r v; do
      [ -n "$v" ] && grep -qxF "$v" <<<"$offered_u" && { pick="$v"; break; }
    done <<<"$offered_b"
  fi
  [ -n "$pick" ] || { echo "no version of qemu-block-extra is offered together with qemu-utils" >&2; exit 1; }
  echo "installing qemu-utils and qemu-block-extra at one version: $pick (installed qemu-utils: ${have:-none})" >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --allow-downgrades \
    "qemu-utils=$pick" "qemu-block-extra=$pick" >/dev/null
fi
for p in "${PKGS[@]}" "${QEMU_PAIR[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || { echo "package $p failed to install" >&2; exit 1; }
done
qemu_ok || { echo "qemu-utils and qemu-block-extra are at different versions" >&2; exit 1; }
# Debian's etcd-server package starts an etcd service on 127.0.0.1:2379 where systemd runs; the
# cluster tests start their own etcd on random ports.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
  echo "stopping the etcd service (tests run their own etcd)" >&2
  $SUDO systemctl stop etcd || true
fi
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
