#!/usr/bin/env python3
"""layout_get + layout_commit (+ layout_return) throughput with the journal on a file.

Starts `palisade serve` on a private socket, creates a RAM bdev and a layout volume whose metadata
journal is a file in --dir (default: a temp dir; point it at the disk you want to measure), then
runs for --seconds per mode over one persistent JSON-RPC connection:

  single: one file; each iteration gets a rw layout over the next hole, commits it, returns it
  many:   a new file per iteration (file create + get + commit + return)

Every call that changes metadata is fsynced before it answers, so this measures the journal.
Prints grants per second for each mode. Usage:
  bench/layout/grants.py [--bin target/release/palisade] [--seconds 5] [--dir /path] [--guard off]
                         [--prefill N]   (N files made first: rates must not depend on it)
"""
import argparse, json, os, socket, subprocess, sys, tempfile, time


class Rpc:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(path)
        self.buf = b""
        self.id = 0
        self.dec = json.JSONDecoder()

    def call(self, method, **params):
        self.id += 1
        self.s.sendall(json.dumps({"jsonrpc": "2.0", "id": self.id, "method": method, "params": params}).encode())
        while True:
            text = self.buf.decode(errors="replace").lstrip()
            if text:
                try:
                    v, n = self.dec.raw_decode(text)
                    self.buf = text[n:].encode()
                    if v.get("id") != self.id:
                        continue  # a notification
                    if "error" in v:
                        raise RuntimeError(f"{method}: {v['error']}")
                    return v["result"]
                except json.JSONDecodeError:
                    pass
            chunk = self.s.recv(1 << 16)
            if not chunk:
                raise RuntimeError("connection closed")
            self.buf += chunk


def connect_when_up(sock):
    """Wait for a just-started `palisade serve` to create its socket, then connect."""
    for _ in range(200):
        if os.path.exists(sock):
            break
        time.sleep(0.05)
    time.sleep(0.1)
    return Rpc(sock)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(os.path.dirname(__file__), "../../target/release/palisade"))
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--dir", default=None)
    # guard "off": commits convert what the client reports (no data path writes in this bench).
    ap.add_argument("--guard", default="off")
    ap.add_argument("--grant-kib", type=int, default=64)
    # Files (one committed extent each) made before measuring: the rates must not fall with it.
    ap.add_argument("--prefill", type=int, default=0)
    ap.add_argument("--volume-gib", type=int, default=4, help="RAM data bdev size (grants use it up)")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="palisade-layout-bench-", dir=a.dir)
    sock = os.path.join(work, "rpc.sock")
    meta = os.path.join(work, "lv.meta")
    proc = subprocess.Popen([a.bin, "serve", "-r", sock], stdout=subprocess.DEVNULL)
    try:
        r = connect_when_up(sock)
        bs = 4096
        r.call("bdev_malloc_create", name="m0", num_blocks=(a.volume_gib << 30) // bs, block_size=bs)
        r.call("layout_volume_create", name="lv", bdev_name="m0", metadata_path=meta, guard=a.guard)
        r.call("client_register", volume="lv", client="bench", pr_key=1)
        glen = a.grant_kib * 1024
        t0 = time.monotonic()
        for i in range(a.prefill):
            f = f"pre{i}"
            r.call("layout_file_create", volume="lv", file=f)
            g = r.call("layout_get", volume="lv", file=f, client="bench", offset=0, length=bs, iomode="rw")
            r.call("layout_commit", grant=g["grant"], ranges=[{"offset": 0, "length": bs}], new_size=bs)
            r.call("layout_return", grant=g["grant"])
        if a.prefill:
            print(f"prefill: {a.prefill} files with one committed block each in {time.monotonic() - t0:.1f} s")
        results = {}
        for mode in ("single", "many"):
            n = 0
            off = 0
            if mode == "single":
                r.call("layout_file_create", volume="lv", file="single")
            t0 = time.monotonic()
            while time.monotonic() - t0 < a.seconds:
                if mode == "single":
                    f, o = "single", off
                    off += glen
                else:
                    f, o = f"f{n}", 0
                    r.call("layout_file_create", volume="lv", file=f)
                g = r.call("layout_get", volume="lv", file=f, client="bench", offset=o, length=glen, iomode="rw")
                r.call("layout_commit", grant=g["grant"], ranges=[{"offset": o, "length": glen}], new_size=o + glen)
                r.call("layout_return", grant=g["grant"])
                n += 1
            dt = time.monotonic() - t0
            results[mode] = (n, dt)
            print(f"{mode:6s}: {n} grants in {dt:.2f} s = {n / dt:.0f} grants/s (get+commit+return, {a.grant_kib} KiB each, guard {a.guard})")
        print(f"journal file: {meta} ({os.path.getsize(meta)} bytes at the end)")
        # The floor to compare with: the same directory's rate of small appends each made durable
        # (write + fsync), what one journal transaction costs at least.
        probe = os.path.join(work, "fsync.probe")
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        k, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < min(a.seconds, 3):
            os.write(fd, b"x" * 128)
            os.fsync(fd)
            k += 1
        dt = time.monotonic() - t0
        os.close(fd)
        print(f"fsync floor: {k / dt:.0f} durable 128-byte appends/s in the same directory")
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    sys.exit(main())
