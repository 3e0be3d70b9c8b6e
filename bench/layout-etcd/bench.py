#!/usr/bin/env python3
"""layout_get + layout_commit + layout_return per second: metadata in etcd vs the local file journal,
in one run on the same machine.

Cases (each --seconds long, one JSON-RPC connection per node, one file, each iteration gets a rw
layout over the next hole, commits it and returns it; guard off, so no data path is involved):

  file:        one node, metadata_path (journal fsynced per transaction)
  etcd:        one node, metadata_cluster (one etcd transaction per state change)
  etcd-2nodes: two nodes on one layout state, iterations alternating between them (every call
               first catches up with what the other node appended)

etcd is started here (temp data dir, random loopback ports), so its fsync cost is the same disk's.
Usage: bench.py [--bin target/release/palisade] [--seconds 5] [--dir /path]
"""
import argparse, json, os, shutil, socket, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../layout"))
from grants import Rpc, connect_when_up  # noqa: E402

BS = 4096
UUID = "5e1f0a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start_etcd(work):
    cp, pp = free_port(), free_port()
    c, p = f"http://127.0.0.1:{cp}", f"http://127.0.0.1:{pp}"
    proc = subprocess.Popen(
        ["etcd", "--name", "bench", "--data-dir", os.path.join(work, "etcd"), "--listen-client-urls", c,
         "--advertise-client-urls", c, "--listen-peer-urls", p, "--initial-advertise-peer-urls", p,
         "--initial-cluster", f"bench={p}"],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "etcd.log"), "w"))
    for _ in range(200):
        if subprocess.run(["etcdctl", "--endpoints", c, "--dial-timeout=1s", "endpoint", "health"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0:
            return proc, c
        time.sleep(0.1)
    raise RuntimeError("etcd did not start")


def start_node(binary, work, name, cluster=None):
    sock = os.path.join(work, f"{name}.sock")
    args = [binary, "serve", "-m", "0x1", "-r", sock]
    if cluster:
        args += ["--cluster", cluster, "--node-id", name]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    r = connect_when_up(sock)
    for _ in range(200):
        try:
            s = r.call("cluster_get_status")
            if not cluster or s.get("health", {}).get("writable"):
                return proc, r
        except RuntimeError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"node {name} not writable")


def volume(r, meta):
    r.call("bdev_malloc_create", name="m0", num_blocks=(1 << 30) // BS, block_size=BS, uuid=UUID)
    r.call("layout_volume_create", name="lv", bdev_name="m0", guard="off", **meta)


def run(rpcs, seconds, tag):
    rpcs[0].call("client_register", volume="lv", client="bench", pr_key=1)
    rpcs[0].call("layout_file_create", volume="lv", file=tag)
    n, off = 0, 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        r = rpcs[n % len(rpcs)]
        g = r.call("layout_get", volume="lv", file=tag, client="bench", offset=off, length=16 * BS, iomode="rw")
        r.call("layout_commit", volume="lv", grant=g["grant"], ranges=[{"offset": off, "length": 16 * BS}])
        r.call("layout_return", volume="lv", grant=g["grant"])
        off += 16 * BS
        n += 1
    return n / seconds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(os.path.dirname(__file__), "../../target/release/palisade"))
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="palisade-layout-etcd-", dir=a.dir)
    procs = []
    try:
        p, r = start_node(a.bin, work, "file")
        procs.append(p)
        volume(r, {"metadata_path": os.path.join(work, "lv.meta")})
        file_rate = run([r], a.seconds, 1)
        p.terminate(); p.wait()
        ep, url = start_etcd(work)
        procs.append(ep)
        p1, r1 = start_node(a.bin, work, "n1", url)
        procs.append(p1)
        volume(r1, {"metadata_cluster": True})
        etcd_rate = run([r1], a.seconds, 2)
        p2, r2 = start_node(a.bin, work, "n2", url)
        procs.append(p2)
        volume(r2, {"metadata_cluster": True})
        two_rate = run([r1, r2], a.seconds, 3)
        print(f"layout_get+commit+return per second ({a.seconds:g} s each, 64 KiB layouts, guard off):")
        print(f"  file journal (metadata_path):        {file_rate:8.0f}")
        print(f"  etcd (metadata_cluster), 1 node:     {etcd_rate:8.0f}   ({etcd_rate / file_rate:.2f}x file)")
        print(f"  etcd, 2 nodes alternating:           {two_rate:8.0f}   ({two_rate / file_rate:.2f}x file)")
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
