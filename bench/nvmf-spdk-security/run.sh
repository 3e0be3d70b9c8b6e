#!/usr/bin/env bash
# Interoperability of NVMe/TCP security with SPDK, both ways, in one run:
#   SPDK's initiators against Palisade's target
#     - spdk_nvme_perf -S ssl --psk-path (TLS 1.3 PSK, SHA-256 and SHA-384 keys; a wrong PSK)
#     - bdevperf + bdev_nvme_attach_controller --dhchap-key/--dhchap-ctrlr-key (DH-HMAC-CHAP,
#       bidirectional; a wrong key)                                            [SPDK >= v24.05]
#   Palisade's initiator (palisade perf) against SPDK's nvmf_tgt
#     - --tls --psk --psk-identity-version 0 (SPDK knows only NVMe0R identities), SHA-256 and
#       SHA-384 keys; --dhchap-secret/--dhchap-ctrl-secret                   [DH: SPDK >= v24.05]
# Each case prints PASS or FAIL; the script exits non-zero if any case fails.
#
# Usage: bash bench/nvmf-spdk-security/run.sh SPDK_DIR [seconds per I/O case, default 3]
#   SPDK_DIR: an SPDK tree built by you outside this repository (build/bin/nvmf_tgt,
#             build/bin/spdk_nvme_perf, build/examples/bdevperf, scripts/rpc.py). SPDK before
#             v25.09 on OpenSSL 3.0 (Debian 12) fails every TLS PSK with "Unable to set salt for
#             HKDF!" unless upstream commit 197ff0c9a5 (empty, not NULL, HKDF salt in
#             include/spdk_internal/nvme_tcp.h) is applied to it.
# Env: BIN  Palisade binary (default target/release/palisade)
# No hugepages are needed (SPDK runs with --no-huge).
set -euo pipefail
cd "$(dirname "$0")/../.."
SPDK="${1:?usage: run.sh SPDK_DIR [seconds]}"
SPDK="$(cd "$SPDK" && pwd)"
SECS="${2:-3}"
BIN="${BIN:-target/release/palisade}"
[ -x "$BIN" ] || cargo build --release --bin palisade >/dev/null
TGT="$SPDK/build/bin/nvmf_tgt"; PERF="$SPDK/build/bin/spdk_nvme_perf"; BDEVPERF="$SPDK/build/examples/bdevperf"
SRPC="$SPDK/scripts/rpc.py"; BPY="$SPDK/examples/bdev/bdevperf/bdevperf.py"
for f in "$TGT" "$PERF" "$BDEVPERF" "$SRPC" "$BPY"; do [ -e "$f" ] || { echo "missing $f" >&2; exit 2; }; done
# SPDK's scripts find their package through PYTHONPATH; Palisade is configured with the same
# rpc.py (or spdk-rpc if on PATH), so the two targets get the same calls.
SRPC="env PYTHONPATH=$SPDK/python $SRPC"; BPY="env PYTHONPATH=$SPDK/python $BPY"
# SPDK's keyring (and so --dhchap-key) exists from v24.05; v24.01 takes PSK paths.
HAVE_KEYRING=0; grep -qs keyring_file_add_key "$SPDK"/python/spdk/rpc/*.py && HAVE_KEYRING=1
HAVE_DHCHAP=0; [ -f "$SPDK/lib/nvmf/auth.c" ] && HAVE_DHCHAP=1

TMP=$(mktemp -d); PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
FAILS=0
result() { if [ "$2" = 1 ]; then echo "PASS  $1"; else echo "FAIL  $1"; FAILS=$((FAILS+1)); fi; }
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
key() { # kind(tls|dhchap) hash-id bytes file
  python3 - "$@" <<'PY'
import base64, os, struct, sys, zlib
kind, h, n, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
k = os.urandom(n)
pfx = 'NVMeTLSkey-1' if kind == 'tls' else 'DHHC-1'
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
# No trailing newline: SPDK v24.01's PSK path loader refuses one.
os.write(fd, f"{pfx}:{h:02x}:{base64.b64encode(k + struct.pack('<I', zlib.crc32(k))).decode()}:".encode())
os.close(fd)
PY
}
key tls 1 32 "$TMP/psk256"; key tls 2 48 "$TMP/psk384"; key tls 1 32 "$TMP/pskbad"
key dhchap 0 32 "$TMP/dh_host"; key dhchap 0 48 "$TMP/dh_ctrl"; key dhchap 0 32 "$TMP/dh_bad"
H1=nqn.2016-06.io.spdk:host1; H3=nqn.2016-06.io.spdk:host3; H2=nqn.2016-06.io.spdk:host2
TLSNQN=nqn.2016-06.io.spdk:tls; DHNQN=nqn.2016-06.io.spdk:dhchap

# The same configuration for either target: $1 = rpc command prefix, $2 = PSK by name (1) or path.
configure() {
  local R="$1" byname="$2" pt=$3 pd=$4
  if [ "$byname" = 1 ]; then
    $R keyring_file_add_key psk256 "$TMP/psk256"; $R keyring_file_add_key psk384 "$TMP/psk384"
    $R keyring_file_add_key dh_host "$TMP/dh_host"; $R keyring_file_add_key dh_ctrl "$TMP/dh_ctrl"
    P1=psk256; P3=psk384
  else
    P1="$TMP/psk256"; P3="$TMP/psk384"
  fi
  $R nvmf_create_transport -t TCP >/dev/null
  $R bdev_malloc_create -b M0 64 512 >/dev/null; $R bdev_malloc_create -b M1 64 512 >/dev/null
  $R nvmf_create_subsystem $TLSNQN -s PAL0001 >/dev/null
  $R nvmf_subsystem_add_ns $TLSNQN M0 >/dev/null
  $R nvmf_subsystem_add_listener $TLSNQN -t tcp -f ipv4 -a 127.0.0.1 -s "$pt" --secure-channel >/dev/null
  $R nvmf_subsystem_add_host $TLSNQN $H1 --psk "$P1" >/dev/null
  $R nvmf_subsystem_add_host $TLSNQN $H3 --psk "$P3" >/dev/null
  if [ "$HAVE_DHCHAP" = 1 ]; then
    $R nvmf_create_subsystem $DHNQN -s PAL0002 >/dev/null
    $R nvmf_subsystem_add_ns $DHNQN M1 >/dev/null
    $R nvmf_subsystem_add_listener $DHNQN -t tcp -f ipv4 -a 127.0.0.1 -s "$pd" >/dev/null
    $R nvmf_subsystem_add_host $DHNQN $H2 --dhchap-key dh_host --dhchap-ctrlr-key dh_ctrl >/dev/null
  fi
}
wait_sock() { for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.1; done; return 1; }

echo "# SPDK initiators -> Palisade target ($(git rev-parse --short HEAD)), SPDK $(cd "$SPDK" && git describe --tags 2>/dev/null || echo "$SPDK")"
PS="$TMP/pal.sock"; PT=$(free_port); PD=$(free_port)
"$BIN" serve -m 0x1 -r "$PS" >"$TMP/pal.log" 2>&1 & PIDS+=($!)
wait_sock "$PS"
SPDK_RPC="$(command -v spdk-rpc || echo "$SRPC") -s $PS"
configure "$SPDK_RPC" 1 "$PT" "$PD"
sperf() { # psk-file hostnqn
  "$PERF" --no-huge -s 512 -c 0x2 -q 32 -o 4096 -w randrw -M 50 -t "$SECS" -S ssl --psk-path "$1" \
    -r "trtype:tcp adrfam:IPv4 traddr:127.0.0.1 trsvcid:$PT subnqn:$TLSNQN hostnqn:$2" 2>&1
}
# spdk_nvme_perf exits 0 even when it could not connect: its Total line tells.
out=$(sperf "$TMP/psk256" $H1 || true); { echo "$out" | grep -E "^Total" || true; } | sed 's/^/      /'
result "spdk_nvme_perf TLS (SHA-256 PSK, TLS_AES_128_GCM_SHA256) randrw $SECS s" "$(echo "$out" | grep -q '^Total' && echo 1)"
out=$(sperf "$TMP/psk384" $H3 || true); { echo "$out" | grep -E "^Total" || true; } | sed 's/^/      /'
result "spdk_nvme_perf TLS (SHA-384 PSK, TLS_AES_256_GCM_SHA384) randrw $SECS s" "$(echo "$out" | grep -q '^Total' && echo 1)"
out=$(sperf "$TMP/pskbad" $H1 || true)
result "spdk_nvme_perf with a wrong PSK is refused" "$(echo "$out" | grep -q '^Total' || echo 1)"
out=$("$PERF" --no-huge -s 512 -c 0x2 -q 8 -o 4096 -w read -t 1 -r "trtype:tcp adrfam:IPv4 traddr:127.0.0.1 trsvcid:$PT subnqn:$TLSNQN hostnqn:$H1" 2>&1 || true)
result "spdk_nvme_perf plaintext on the secure listener is refused" "$(echo "$out" | grep -q '^Total' || echo 1)"
if [ "$HAVE_DHCHAP" = 1 ]; then
  bdevperf_dh() { # host-key-file ctrl-key-file
    local BS="$TMP/bp.sock" BR
    "$BDEVPERF" --no-huge -s 512 -m 0x2 --wait-for-rpc -z -r "$BS" -q 32 -o 4096 -w verify -t "$SECS" >"$TMP/bp.log" 2>&1 & local bp=$!
    wait_sock "$BS"; BR="$SRPC -s $BS"
    $BR framework_start_init >/dev/null
    $BR keyring_file_add_key k "$1" >/dev/null; $BR keyring_file_add_key c "$2" >/dev/null
    local ok=0
    if $BR bdev_nvme_attach_controller -b N0 -t tcp -f ipv4 -a 127.0.0.1 -s "$PD" -n $DHNQN -q $H2 --dhchap-key k --dhchap-ctrlr-key c >"$TMP/attach.log" 2>&1; then
      timeout 120 $BPY -s "$BS" -t 60 perform_tests >/dev/null 2>&1 && ok=1
    fi
    kill $bp 2>/dev/null; wait $bp 2>/dev/null || true
    grep -E "N0n1 +:" "$TMP/bp.log" | tail -1 | sed 's/^/      /' || true
    echo $ok
  }
  r=$(bdevperf_dh "$TMP/dh_host" "$TMP/dh_ctrl"); echo "$r" | head -n -1
  result "bdevperf DH-HMAC-CHAP bidirectional (keyring names) verify $SECS s" "$(echo "$r" | tail -1)"
  r=$(bdevperf_dh "$TMP/dh_bad" "$TMP/dh_ctrl")
  result "bdevperf DH-HMAC-CHAP with a wrong host key is refused" "$([ "$(echo "$r" | tail -1)" = 0 ] && echo 1)"
fi
kill "${PIDS[0]}"; wait "${PIDS[0]}" 2>/dev/null || true; PIDS=()

echo "# Palisade's initiator (palisade perf) -> SPDK nvmf_tgt"
SS="$TMP/spdk.sock"; PT=$(free_port); PD=$(free_port)
"$TGT" -m 0x1 --no-huge -s 1024 -r "$SS" >"$TMP/spdk.log" 2>&1 & PIDS+=($!)
wait_sock "$SS"; $SRPC -s "$SS" framework_wait_init >/dev/null
configure "$SRPC -s $SS" "$HAVE_KEYRING" "$PT" "$PD"
pperf() { "$BIN" perf --port "$1" --nqn "$2" --hostnqn "$3" --qd 32 --bs 4k --rw randrw --time "${SECS}s" --verify "${@:4}" 2>&1; }
out=$(pperf "$PT" $TLSNQN $H1 --tls --psk "$TMP/psk256" --psk-identity-version 0 || true); echo "$out" | tail -1 | sed 's/^/      /'
result "palisade perf TLS (SHA-256 PSK) verify $SECS s" "$(echo "$out" | grep -q 'errors 0' && ! echo "$out" | grep -q 'palisade perf:' && echo 1)"
out=$(pperf "$PT" $TLSNQN $H3 --tls --psk "$TMP/psk384" --psk-identity-version 0 || true); echo "$out" | tail -1 | sed 's/^/      /'
result "palisade perf TLS (SHA-384 PSK) verify $SECS s" "$(echo "$out" | grep -q 'errors 0' && ! echo "$out" | grep -q 'palisade perf:' && echo 1)"
if [ "$HAVE_DHCHAP" = 1 ]; then
  out=$(pperf "$PD" $DHNQN $H2 --dhchap-secret "$TMP/dh_host" --dhchap-ctrl-secret "$TMP/dh_ctrl" || true); echo "$out" | tail -1 | sed 's/^/      /'
  result "palisade perf DH-HMAC-CHAP bidirectional verify $SECS s" "$(echo "$out" | grep -q 'errors 0' && ! echo "$out" | grep -q 'palisade perf:' && echo 1)"
  out=$(pperf "$PD" $DHNQN $H2 --dhchap-secret "$TMP/dh_bad" || true)
  result "palisade perf DH-HMAC-CHAP with a wrong key is refused" "$(echo "$out" | grep -q 'palisade perf:.*AUTH_Failure1' && echo 1)"
fi
echo "failures: $FAILS"
[ "$FAILS" = 0 ]
