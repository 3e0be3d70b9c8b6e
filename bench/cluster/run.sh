#!/usr/bin/env bash
# Cluster mode costs, in one run: PR OUT (NVMe Reservation Register) and fence (PREEMPT AND ABORT)
# latency p50/p99 on a local volume vs a clustered volume served by two nodes, and the I/O cost of a
# clustered RAM volume vs a local one on the same node (4 KiB randread/randwrite QD32, median IOPS
# ratio of adjacent pairs).
# A real etcd (Debian etcd-server) is started on loopback; two `palisade serve` nodes share one
# file through `bdev_uring_create` (the shared device); node A also exports a local RAM volume
# and node B nothing else. Local rounds and cluster rounds alternate.
#
# Usage: bench/cluster/run.sh [rounds, default 3] [PR iterations per round, default 500]
#   env: BIN (default target/release/palisade), EX (the cluster_pr_latency example), SECS (I/O
#   run seconds, default 2), PAIRS (I/O pairs per case, default 10), OUT (results file)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS="${1:-3}"
ITERS="${2:-500}"
SECS="${SECS:-2}"
BIN="${BIN:-target/release/palisade}"
EX="${EX:-target/release/examples/cluster_pr_latency}"
OUT="${OUT:-bench/cluster/results-$(date -u +%Y%m%dT%H%M%SZ).md}"
[ -x "$BIN" ] && [ -x "$EX" ] || cargo build --release --bin palisade --example cluster_pr_latency
TMP=$(mktemp -d)
PIDS=()
# Nodes first, etcd last (a node whose etcd goes first logs that it fails closed).
cleanup() { for ((i=${#PIDS[@]}-1; i>=0; i--)); do kill "${PIDS[i]}" 2>/dev/null || true; wait "${PIDS[i]}" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
EC=$(free_port); EP=$(free_port)
etcd --name bench --data-dir "$TMP/etcd" --listen-client-urls "http://127.0.0.1:$EC" --advertise-client-urls "http://127.0.0.1:$EC" \
  --listen-peer-urls "http://127.0.0.1:$EP" --initial-advertise-peer-urls "http://127.0.0.1:$EP" \
  --initial-cluster "bench=http://127.0.0.1:$EP" >"$TMP/etcd.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$EC" endpoint health >/dev/null 2>&1 && break; sleep 0.1; done
truncate -s 1G "$TMP/shared.img"
CNQN=nqn.2016-06.io.spdk:clustered
LNQN=nqn.2016-06.io.spdk:local
rpc() { local s=$1; shift; "$BIN" rpc -s "$TMP/$s.sock" --json "$2" "$1" >/dev/null; }
listen() { # sock nqn port
  rpc "$1" nvmf_subsystem_add_listener "{\"nqn\":\"$2\",\"listen_address\":{\"trtype\":\"TCP\",\"adrfam\":\"IPv4\",\"traddr\":\"127.0.0.1\",\"trsvcid\":\"$3\"}}"
}
node() { # name
  "$BIN" serve -m 0x1 -r "$TMP/$1.sock" --cluster "http://127.0.0.1:$EC" --node-id "$1" -L ERROR &
  PIDS+=($!)
  for _ in $(seq 100); do "$BIN" rpc -s "$TMP/$1.sock" spdk_get_version >/dev/null 2>&1 && break; sleep 0.1; done
  rpc "$1" bdev_uring_create "{\"name\":\"shared\",\"filename\":\"$TMP/shared.img\",\"block_size\":512,\"uuid\":\"5a1e5ade-0000-4000-8000-00000000be0c\"}"
  rpc "$1" nvmf_create_transport '{"trtype":"TCP"}'
  rpc "$1" nvmf_create_subsystem "{\"nqn\":\"$CNQN\",\"allow_any_host\":true,\"serial_number\":\"CL0001\"}"
  rpc "$1" nvmf_subsystem_add_ns "{\"nqn\":\"$CNQN\",\"namespace\":{\"bdev_name\":\"shared\"}}"
}
node a; node b
PA=$(free_port); PB=$(free_port); PL=$(free_port)
listen a "$CNQN" "$PA"; listen b "$CNQN" "$PB"
rpc a bdev_malloc_create '{"name":"local0","num_blocks":2097152,"block_size":512}'
rpc a nvmf_create_subsystem "{\"nqn\":\"$LNQN\",\"allow_any_host\":true,\"serial_number\":\"LO0001\"}"
rpc a nvmf_subsystem_add_ns "{\"nqn\":\"$LNQN\",\"namespace\":{\"bdev_name\":\"local0\"}}"
listen a "$LNQN" "$PL"
rpc a volume_set_cluster '{"bdev_name":"shared"}'
for _ in $(seq 100); do
  "$BIN" rpc -s "$TMP/b.sock" cluster_get_status | python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if s["health"]["writable"] and any(v["clustered"] for v in s["volumes"]) else 1)' && break
  sleep 0.1
done
# The I/O comparison: two RAM volumes on node A (so the target's own cost shows, not a file's),
# one of them marked clustered; short runs in adjacent pairs, order alternating, median of the
# pair ratios (as bench/reservation does: this machine's speed drifts between minutes).
rpc a bdev_malloc_create '{"name":"clus0","num_blocks":2097152,"block_size":512}'
KNQN=nqn.2016-06.io.spdk:clusteredram; PK=$(free_port)
rpc a nvmf_create_subsystem "{\"nqn\":\"$KNQN\",\"allow_any_host\":true,\"serial_number\":\"CL0002\"}"
rpc a nvmf_subsystem_add_ns "{\"nqn\":\"$KNQN\",\"namespace\":{\"bdev_name\":\"clus0\"}}"
listen a "$KNQN" "$PK"
rpc a volume_set_cluster '{"bdev_name":"clus0"}'
PAIRS="${PAIRS:-10}"
perf() { "$BIN" perf --transport tcp --addr 127.0.0.1 --port "$1" --nqn "$2" --qd 32 --bs 4k --rw "$3" --time "${SECS}s" --json 2>/dev/null; }
{
  echo "# Cluster mode: PR OUT / fence latency and I/O cost — $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "Host: $(uname -n), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'); load before: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo "Nodes: 2 × \`$BIN serve -m 0x1 --cluster … --lease-ttl 6\` ($(git rev-parse --short HEAD 2>/dev/null || echo '?')), etcd $(etcd --version | head -1 | awk '{print $3}') on loopback, one shared 1 GiB file (uring)."
  echo "PR: \`$EX --iters $ITERS\` — register a fresh key through B (PR OUT), preempt-and-abort it through A (fence); local = both through node A on a non-clustered RAM volume."
  echo "I/O: \`palisade perf --qd 32 --bs 4k --time ${SECS}s\` on node A: a clustered 1 GiB RAM volume vs a local one on the same node, $PAIRS adjacent pairs per case, order alternating."
  echo
  echo "| round | kind | register p50 µs | p99 µs | fence p50 µs | p99 µs |"
  echo "| ---: | --- | ---: | ---: | ---: | ---: |"
} >"$OUT"
IOROWS=()
for r in $(seq "$ROUNDS"); do
  for kind in local cluster; do
    if [ $kind = local ]; then j=$("$EX" --nqn "$LNQN" --a "$PL" --b "$PL" --iters "$ITERS"); else j=$("$EX" --nqn "$CNQN" --a "$PA" --b "$PB" --iters "$ITERS"); fi
    python3 -c 'import json,sys; v=json.loads(sys.argv[3]); k=["register_p50_us","register_p99_us","fence_p50_us","fence_p99_us"]; print("| %s | %s | " % (sys.argv[1], sys.argv[2]) + " | ".join(str(v[x]) for x in k) + " |")' "$r" "$kind" "$j" >>"$OUT"
  done
done
for rw in randread randwrite; do
  for p in $(seq "$PAIRS"); do
    if [ $((p % 2)) = 1 ]; then l=$(perf "$PL" "$LNQN" $rw); c=$(perf "$PK" "$KNQN" $rw); else c=$(perf "$PK" "$KNQN" $rw); l=$(perf "$PL" "$LNQN" $rw); fi
    IOROWS+=("$(python3 -c 'import json,sys; l=json.loads(sys.argv[3])["iops"]; c=json.loads(sys.argv[4])["iops"]; print("| %s | %s | %.0f | %.0f | %.3f |" % (sys.argv[1], sys.argv[2], l, c, c / l))' "$p" "$rw" "$l" "$c")")
  done
done
{
  echo
  echo "| pair | I/O | local volume IOPS | clustered volume IOPS | ratio clustered/local |"
  echo "| ---: | --- | ---: | ---: | ---: |"
  printf '%s\n' "${IOROWS[@]}"
  echo
  printf '%s\n' "${IOROWS[@]}" | python3 -c '
import sys, statistics
rows = [l.split("|")[1:-1] for l in sys.stdin if l.strip()]
for rw in dict.fromkeys(r[1].strip() for r in rows):
    print("Median ratio clustered/local, %s: %.3f" % (rw, statistics.median(float(r[4]) for r in rows if r[1].strip() == rw)))'
} >>"$OUT"
cat "$OUT"
