//! PR OUT and fence latency through real NVMe/TCP connections (driven by bench/cluster/run.sh):
//! `pr_latency --nqn NQN --a PORT --b PORT --iters N`. The metadata-server host holds Exclusive
//! Access - Registrants Only through port A; per iteration a client registers a fresh key through
//! port B (timed: PR OUT latency) and the server preempts-and-aborts it through A (timed: fence
//! latency). With both ports on one non-clustered node this is the local figure; with A and B on
//! two nodes of a clustered volume, the cluster figure. Prints one JSON line of p50/p99 in µs.

use std::net::SocketAddr;
use std::time::Instant;

use hdrhistogram::Histogram;
use palisade::nvme::spec::{Sqe, Status};
use palisade::nvmf::host::{Controller, HostOpts, Queue};

struct Host {
    q: Queue,
    _c: Controller,
}

fn host(port: u16, nqn: &str, tag: u8) -> Host {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut o = HostOpts::new(addr, nqn);
    o.hostnqn = format!("nqn.2014-08.org.nvmexpress:uuid:5a000000-0000-4000-8000-0000000000{tag:02x}");
    o.hostid = [0x5a, 0, 0, 0, 0, 0, 0x40, 0, 0x80, 0, 0, 0, 0, 0, 0, tag];
    let mut c = Controller::connect(&o).expect("connect");
    c.set_num_queues(1).unwrap();
    let q = c.io_queue(1, 32).expect("io queue");
    Host { q, _c: c }
}

impl Host {
    fn cmd(&mut self, opc: u8, cdw10: u32, a: u64, b: u64) -> Status {
        let mut d = a.to_le_bytes().to_vec();
        d.extend_from_slice(&b.to_le_bytes());
        let mut s = Sqe::default();
        s.set_opcode(opc).set_nsid(1).set_cdw(10, cdw10);
        self.q.sync(s, Some(&d), 0).expect("transport").0.status
    }
}

fn arg(args: &[String], name: &str) -> String {
    let i = args.iter().position(|a| a == name).unwrap_or_else(|| panic!("missing {name}"));
    args[i + 1].clone()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let nqn = arg(&args, "--nqn");
    let pa: u16 = arg(&args, "--a").parse().unwrap();
    let pb: u16 = arg(&args, "--b").parse().unwrap();
    let iters: u64 = arg(&args, "--iters").parse().unwrap();
    let mut mds = host(pa, &nqn, 1);
    let mut client = host(pb, &nqn, 2);
    const MDS_KEY: u64 = 0x0100_0000_0000_0000;
    // Register (RREGA 000b, IEKEY so a leftover key does not matter) and EA-RO (NVMe type 4).
    assert!(mds.cmd(0x0d, 1 << 3, 0, MDS_KEY).is_ok(), "mds register");
    let st = mds.cmd(0x11, 4 << 8, MDS_KEY, 0);
    assert!(st.is_ok(), "mds acquire EA-RO: {st}");
    let (mut reg, mut fence) = (Histogram::<u64>::new(3).unwrap(), Histogram::<u64>::new(3).unwrap());
    for i in 0..iters {
        let key = 0x1000 + i;
        let t = Instant::now();
        let st = client.cmd(0x0d, 1 << 3, 0, key);
        reg.record(t.elapsed().as_micros() as u64).unwrap();
        assert!(st.is_ok(), "client register: {st}");
        // Acquire RACQA 010b (preempt and abort), type EA-RO, CRKEY = ours, PRKEY = the victim's.
        let t = Instant::now();
        let st = mds.cmd(0x11, 2 | 4 << 8, MDS_KEY, key);
        fence.record(t.elapsed().as_micros() as u64).unwrap();
        assert!(st.is_ok(), "preempt and abort: {st}");
    }
    // Leave the volume as found.
    let _ = mds.cmd(0x15, 1, MDS_KEY, 0); // Release RRELA 001b: clear
    println!(
        "{{\"iters\": {iters}, \"register_p50_us\": {}, \"register_p99_us\": {}, \"fence_p50_us\": {}, \"fence_p99_us\": {}}}",
        reg.value_at_quantile(0.5),
        reg.value_at_quantile(0.99),
        fence.value_at_quantile(0.5),
        fence.value_at_quantile(0.99)
    );
}
