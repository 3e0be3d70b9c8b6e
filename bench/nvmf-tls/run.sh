#!/usr/bin/env bash
# NVMe/TCP with TLS 1.3 (PSK) against plaintext, in one run: one target (`serve -m 0x1`, core 0)
# exports two 1 GiB RAM namespaces, one through a plain listener and one through a
# secure_channel listener (host PSK from the keyring, TLS_AES_128_GCM_SHA256 or, with
# CIPHER=aes256, TLS_AES_256_GCM_SHA384); `palisade perf` runs pinned to core 1. Each round runs
# every case plaintext and TLS back to back, the order alternating between rounds, so drift in
# the machine's speed hits both alike. Cases: 4 KiB randread QD32, 128 KiB read QD8.
# Recorded per run: IOPS, MiB/s, p99, target CPU seconds per million I/Os (/proc/PID/stat).
# The medians' ratios TLS/plain are printed at the end.
#
# Usage: bench/nvmf-tls/run.sh [seconds per run, default 10]
#   env: BIN (default: a release build), ROUNDS (3), POLL (busy), CIPHER (aes128), OUT
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS="${1:-10}"
ROUNDS="${ROUNDS:-3}"
POLL="${POLL:-busy}"
CIPHER="${CIPHER:-aes128}"
CASES="${CASES:-randread:4k:32 read:128k:8}"
OUT="${OUT:-bench/nvmf-tls/results-$(date -u +%Y%m%dT%H%M%SZ).md}"
if [ -z "${BIN:-}" ]; then
  cargo build --release --bin palisade >/dev/null
  BIN=target/release/palisade
fi
PERF_CPU=1
[ "$(nproc)" -ge 2 ] || PERF_CPU=0
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
PLAIN_PORT=$(free_port)
TLS_PORT=$(free_port)
PLAIN_NQN=nqn.2016-06.io.spdk:bench-plain
TLS_NQN=nqn.2016-06.io.spdk:bench-tls
HOSTNQN=nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-0000000b3e4c
TMP=$(mktemp -d)
SOCK="$TMP/rpc.sock"
# A fixed bench key (not a secret): 01 = SHA-256 (32 bytes), 02 = SHA-384 (48 bytes).
if [ "$CIPHER" = aes256 ]; then HH=02; KLEN=48; else HH=01; KLEN=32; fi
python3 - "$HH" "$KLEN" >"$TMP/psk" <<'PY'
import base64, binascii, struct, sys
hh, n = sys.argv[1], int(sys.argv[2])
k = bytes((i * 37 + 11) & 0xff for i in range(n))
print(f"NVMeTLSkey-1:{hh}:" + base64.b64encode(k + struct.pack("<I", binascii.crc32(k))).decode() + ":")
PY
chmod 600 "$TMP/psk"
cat >"$TMP/config.json" <<EOF
{"subsystems":[
 {"subsystem":"keyring","config":[{"method":"keyring_file_add_key","params":{"name":"benchpsk","path":"$TMP/psk"}}]},
 {"subsystem":"bdev","config":[
  {"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":2097152,"block_size":512}},
  {"method":"bdev_malloc_create","params":{"name":"Malloc1","num_blocks":2097152,"block_size":512}}]},
 {"subsystem":"nvmf","config":[
  {"method":"nvmf_create_transport","params":{"trtype":"TCP","max_queue_depth":128,"in_capsule_data_size":4096,"max_io_size":131072,"io_unit_size":131072}},
  {"method":"nvmf_create_subsystem","params":{"nqn":"$PLAIN_NQN","allow_any_host":true,"serial_number":"BENCHPLAIN"}},
  {"method":"nvmf_subsystem_add_ns","params":{"nqn":"$PLAIN_NQN","namespace":{"bdev_name":"Malloc0"}}},
  {"method":"nvmf_subsystem_add_listener","params":{"nqn":"$PLAIN_NQN","listen_address":{"trtype":"TCP","adrfam":"IPv4","traddr":"127.0.0.1","trsvcid":"$PLAIN_PORT"}}},
  {"method":"nvmf_create_subsystem","params":{"nqn":"$TLS_NQN","allow_any_host":false,"serial_number":"BENCHTLS"}},
  {"method":"nvmf_subsystem_add_ns","params":{"nqn":"$TLS_NQN","namespace":{"bdev_name":"Malloc1"}}},
  {"method":"nvmf_subsystem_add_host","params":{"nqn":"$TLS_NQN","host":"$HOSTNQN","psk":"benchpsk"}},
  {"method":"nvmf_subsystem_add_listener","params":{"nqn":"$TLS_NQN","secure_channel":true,"listen_address":{"trtype":"TCP","adrfam":"IPv4","traddr":"127.0.0.1","trsvcid":"$TLS_PORT"}}}
 ]}]}
EOF
"$BIN" serve -m 0x1 --poll "$POLL" -r "$SOCK" -c "$TMP/config.json" -L ERROR &
TPID=$!
cleanup() { kill "$TPID" 2>/dev/null || true; wait "$TPID" 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
for _ in $(seq 100); do
  "$BIN" rpc -s "$SOCK" nvmf_get_subsystems 2>/dev/null | grep -q "$TLS_PORT" && break
  sleep 0.1
done
CLK=$(getconf CLK_TCK)
target_cpu() { awk -v clk="$CLK" '{print ($14 + $15) / clk}' "/proc/$TPID/stat"; }
perf() { # $1 = plain|tls, then perf args
  local mode=$1; shift
  if [ "$mode" = tls ]; then
    taskset -c "$PERF_CPU" "$BIN" perf --transport tcp --addr 127.0.0.1 --port "$TLS_PORT" --nqn "$TLS_NQN" --hostnqn "$HOSTNQN" \
      --tls --psk "$TMP/psk" --tls-cipher "$CIPHER" "$@"
  else
    taskset -c "$PERF_CPU" "$BIN" perf --transport tcp --addr 127.0.0.1 --port "$PLAIN_PORT" --nqn "$PLAIN_NQN" --hostnqn "$HOSTNQN" "$@"
  fi
}
{
  echo "# NVMe/TCP TLS 1.3 (PSK, $CIPHER) vs plaintext — $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "Host: $(uname -n), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'); load before: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo "Target: \`$BIN serve -m 0x1 --poll $POLL\` ($(git rev-parse --short HEAD 2>/dev/null || echo '?')), two 1 GiB RAM namespaces (plain and secure_channel listeners)."
  echo "Client: \`taskset -c $PERF_CPU palisade perf --transport tcp [--tls --psk FILE --tls-cipher $CIPHER] --time ${SECS}s\`, loopback, no digests, alternating order per round."
  echo
  echo "| round | case | mode | IOPS | MiB/s | p99 us | target CPU s per 1M I/O |"
  echo "| ---: | --- | --- | ---: | ---: | ---: | ---: |"
} >"$OUT"
for round in $(seq "$ROUNDS"); do
  if [ $((round % 2)) -eq 1 ]; then ORDER="plain tls"; else ORDER="tls plain"; fi
  for c in $CASES; do
    IFS=: read -r rw bs qd <<<"$c"
    for mode in $ORDER; do
      perf "$mode" --rw "$rw" --bs "$bs" --qd "$qd" --time 1s >/dev/null 2>&1 || true   # warm-up
      c0=$(target_cpu)
      json=$(perf "$mode" --rw "$rw" --bs "$bs" --qd "$qd" --time "${SECS}s" --json 2>/dev/null)
      c1=$(target_cpu)
      python3 - "$round" "$rw $bs QD$qd" "$mode" "$c0" "$c1" "$json" >>"$OUT" <<'PY'
import json, sys
rnd, case, mode, c0, c1, js = sys.argv[1:7]
v = json.loads(js)
assert v["errors"] == 0, v
cpu = (float(c1) - float(c0)) / max(v["ios"], 1) * 1e6
print(f"| {rnd} | {case} | {mode} | {v['iops']:.0f} | {v['mib_s']:.1f} | {v['lat_us']['p99']:.0f} | {cpu:.2f} |")
PY
    done
  done
done
python3 - "$OUT" >>"$OUT" <<'PY'
import re, statistics, sys
rows = [[x.strip() for x in l.split("|")[1:-1]] for l in open(sys.argv[1]) if re.match(r"\| \d+ \|", l)]
print("\n## Medians over rounds, ratio TLS / plain\n")
print("| case | IOPS plain | IOPS TLS | IOPS ratio | MiB/s ratio | CPU/IO plain | CPU/IO TLS | CPU ratio |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for case in dict.fromkeys(r[1] for r in rows):
    g = lambda m, i: statistics.median(float(r[i]) for r in rows if r[1] == case and r[2] == m)
    print(f"| {case} | {g('plain', 3):.0f} | {g('tls', 3):.0f} | {g('tls', 3) / g('plain', 3):.3f} | {g('tls', 4) / g('plain', 4):.3f} "
          f"| {g('plain', 6):.2f} | {g('tls', 6):.2f} | {g('tls', 6) / g('plain', 6):.3f} |")
PY
cat "$OUT"
