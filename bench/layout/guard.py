#!/usr/bin/env python3
"""Data-path cost of the layout guard: 4 KiB randwrite QD32 inside a granted range, guard
`enforce` vs `off`, over NVMe/TCP and iSCSI, with `palisade perf` as the grant's client.

Starts `palisade serve` (core 0) on a private socket with a RAM bdev exported as an NVMe namespace
and an iSCSI LUN, creates a layout volume on it (journal in a temp dir), registers one client whose
identities are perf's host NQN and initiator name, gets a rw layout of --grant bytes over a hole
and runs `palisade perf --offset <grant volume_offset> --size <grant>` (pinned to core 1 when
there are two) for --seconds per case. The cases run as --rounds adjacent pairs, the order
alternating: this 2-core VM drifts between speed modes for seconds at a time, so the figure is the
median of the per-pair ratios (enforce / off). Prints a markdown table (IOPS, p99, ratio).

Usage: bench/layout/guard.py [--bin target/release/palisade] [--seconds 3] [--rounds 10] [--grant 256m]
"""
import argparse, json, os, socket, statistics, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(__file__))
from grants import connect_when_up  # noqa: E402

NQN = "nqn.2016-06.io.spdk:layoutbench"
IQN_NODE = "layoutbench"
IQN = "iqn.2016-06.io.spdk:" + IQN_NODE
HOSTNQN = "nqn.2026-01.bench:perf-client"
INITIATOR = "iqn.2026-01.bench:perf-client"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def size(s):
    m = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    return int(s[:-1]) * m[s[-1].lower()] if s[-1].lower() in m else int(s)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(os.path.dirname(__file__), "../../target/release/palisade"))
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--grant", default="256m")
    ap.add_argument("--rounds", type=int, default=10)
    a = ap.parse_args()
    if not os.path.exists(a.bin):
        sys.exit(f"{a.bin} not found: cargo build --release (or pass --bin)")
    grant = size(a.grant)
    bs = 4096
    two = (os.cpu_count() or 1) >= 2
    tmp = tempfile.mkdtemp(prefix="palisade-guard-bench-")
    sock = os.path.join(tmp, "rpc.sock")
    proc = subprocess.Popen([a.bin, "serve", "-r", sock, "-m", "0x1", "--poll", "busy", "-L", "ERROR"], stdout=subprocess.DEVNULL)
    try:
        r = connect_when_up(sock)
        nport, iport = free_port(), free_port()
        r.call("bdev_malloc_create", name="m0", num_blocks=(grant * 2) // bs, block_size=bs)
        r.call("nvmf_create_transport", trtype="TCP")
        r.call("nvmf_create_subsystem", nqn=NQN, allow_any_host=True, serial_number="LAYOUTBENCH")
        r.call("nvmf_subsystem_add_ns", nqn=NQN, namespace={"bdev_name": "m0"})
        r.call("nvmf_subsystem_add_listener", nqn=NQN,
               listen_address={"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": str(nport)})
        r.call("iscsi_create_portal_group", tag=1, portals=[{"host": "127.0.0.1", "port": str(iport)}])
        r.call("iscsi_create_initiator_group", tag=1, initiators=["ANY"], netmasks=["127.0.0.1/32"])
        r.call("iscsi_create_target_node", name=IQN_NODE, alias_name="layout bench",
               luns=[{"bdev_name": "m0", "lun_id": 0}], pg_ig_maps=[{"pg_tag": 1, "ig_tag": 1}], queue_depth=128)
        r.call("layout_volume_create", name="lv", bdev_name="m0", metadata_path=os.path.join(tmp, "lv.meta"),
               guard="enforce", recall_timeout_ms=600000)
        r.call("client_register", volume="lv", client="perf", pr_key=0xbe, identities=[HOSTNQN, INITIATOR])
        r.call("layout_file_create", volume="lv", file=1)
        g = r.call("layout_get", volume="lv", file=1, client="perf", offset=0, length=grant, iomode="rw")
        ext = g["extents"]
        if len(ext) != 1 or ext[0]["state"] != "INVALID_DATA":
            sys.exit(f"expected one INVALID_DATA extent, got {ext}")
        off = ext[0]["volume_offset"]

        def perf(transport, guard):
            r.call("layout_volume_set_guard", name="lv", guard=guard)
            cmd = [a.bin, "perf", "--transport", transport, "--rw", "randwrite", "--bs", "4k", "--qd", "32",
                   "--time", f"{int(a.seconds * 1000)}ms", "--offset", str(off), "--size", str(grant), "--json"]
            if transport == "tcp":
                cmd += ["--port", str(nport), "--nqn", NQN, "--hostnqn", HOSTNQN]
            else:
                cmd += ["--port", str(iport), "--target", IQN, "--initiator", INITIATOR]
            if two:
                cmd = ["taskset", "-c", "1"] + cmd
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=a.seconds + 60)
            if out.returncode != 0:
                sys.exit(f"perf failed: {' '.join(cmd)}\n{out.stdout}\n{out.stderr}")
            v = json.loads(out.stdout)
            if v["errors"]:
                sys.exit(f"perf saw {v['errors']} errors under guard {guard} ({transport}): {v.get('first_error')}")
            return v

        rows = []
        for transport in ("tcp", "iscsi"):
            perf(transport, "off")  # warm-up: fault in the RAM disk, settle the connection path
            res = {"enforce": [], "off": []}
            for i in range(a.rounds):
                for guard in (("enforce", "off") if i % 2 == 0 else ("off", "enforce")):
                    res[guard].append(perf(transport, guard))
            ratios = [e["iops"] / o["iops"] for e, o in zip(res["enforce"], res["off"])]
            rows.append((transport, res, ratios))
        counters = r.call("layout_volume_list")
        print(f"| protocol | guard off IOPS (median) | guard enforce IOPS (median) | p99 µs off / enforce (median) | median pair ratio enforce/off | pair ratios |")
        print("|---|---:|---:|---:|---:|---|")
        for t, res, ratios in rows:
            med = lambda g, f: statistics.median(f(v) for v in res[g])
            name = "NVMe/TCP" if t == "tcp" else "iSCSI"
            print(f"| {name} | {med('off', lambda v: v['iops']):.0f} | {med('enforce', lambda v: v['iops']):.0f} | "
                  f"{med('off', lambda v: v['lat_us']['p99']):.0f} / {med('enforce', lambda v: v['lat_us']['p99']):.0f} | "
                  f"{statistics.median(ratios):.3f} | {' '.join('%.3f' % x for x in ratios)} |")
        print(f"\n{a.rounds} pairs of {a.seconds:g} s runs, 4 KiB randwrite QD32, grant {grant >> 20} MiB, target -m 0x1 --poll busy, "
              f"perf {'pinned to core 1' if two else 'unpinned'}; binary {a.bin}")
        print("guard counters:", json.dumps([v.get("guard_counters", v.get("guard")) for v in counters]))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
