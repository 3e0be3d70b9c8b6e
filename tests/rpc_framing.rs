//! JSON-RPC framing as rpc.py speaks it: streams of values, split writes, batches, notifications,
//! garbage and oversized input cut off while other connections keep working.

mod common;

use std::time::{Duration, Instant};

use common::{bdev_names, RawConn, Target};
use serde_json::{json, Value};

fn req(id: u64, method: &str, params: Value) -> Vec<u8> {
    let mut r = json!({"jsonrpc": "2.0", "id": id, "method": method});
    if !params.is_null() {
        r["params"] = params;
    }
    serde_json::to_vec(&r).unwrap()
}

#[test]
fn two_requests_in_one_write_answered_in_order() {
    let t = Target::start(&[]);
    let mut c = RawConn::connect(&t.sock);
    let mut bytes = req(1, "bdev_malloc_create", json!({"name": "A", "num_blocks": 8, "block_size": 512}));
    bytes.extend(req(2, "bdev_get_bdevs", Value::Null));
    bytes.extend(b"\n");
    bytes.extend(req(3, "spdk_get_version", Value::Null));
    c.send(&bytes).unwrap();
    let r1 = c.recv().unwrap();
    let r2 = c.recv().unwrap();
    let r3 = c.recv().unwrap();
    assert_eq!((r1["id"].clone(), r1["result"].clone()), (json!(1), json!("A")));
    assert_eq!(r2["id"], 2);
    assert_eq!(r2["result"][0]["name"], "A");
    assert_eq!(r3["id"], 3);
    assert_eq!(r1["jsonrpc"], "2.0");
    t.stop();
}

#[test]
fn one_request_split_byte_by_byte() {
    let t = Target::start(&[]);
    let mut c = RawConn::connect(&t.sock);
    let bytes = req(7, "bdev_malloc_create", json!({"name": "Split", "num_blocks": 8, "block_size": 512}));
    for b in &bytes {
        c.send(std::slice::from_ref(b)).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    let r = c.recv().unwrap();
    assert_eq!(r, json!({"jsonrpc": "2.0", "id": 7, "result": "Split"}));
    // the connection stays usable
    c.send(&req(8, "bdev_get_bdevs", Value::Null)).unwrap();
    assert_eq!(c.recv().unwrap()["result"][0]["name"], "Split");
    t.stop();
}

#[test]
fn batches_and_notifications() {
    let t = Target::start(&[]);
    let mut c = RawConn::connect(&t.sock);
    // a notification (no id) runs but gets no answer
    c.send(br#"{"jsonrpc":"2.0","method":"bdev_malloc_create","params":{"name":"Quiet","num_blocks":8,"block_size":512}}"#).unwrap();
    c.send(&req(1, "bdev_get_bdevs", Value::Null)).unwrap();
    let r = c.recv().unwrap();
    assert_eq!(r["id"], 1, "the notification was answered: {r}");
    assert_eq!(r["result"][0]["name"], "Quiet");
    // a failing notification is silent too
    c.send(br#"{"jsonrpc":"2.0","method":"no_such_method"}"#).unwrap();
    c.send(&req(2, "spdk_get_version", Value::Null)).unwrap();
    assert_eq!(c.recv().unwrap()["id"], 2);

    // a batch: answers in order, notifications left out, errors in place
    let batch = json!([
        {"jsonrpc": "2.0", "id": "a", "method": "bdev_null_create", "params": {"name": "N", "num_blocks": 8, "block_size": 512}},
        {"jsonrpc": "2.0", "method": "spdk_get_version"},
        {"jsonrpc": "2.0", "id": "b", "method": "no_such_method"},
        {"jsonrpc": "2.0", "id": "c", "method": "bdev_null_create", "params": {"name": "N", "num_blocks": 8, "block_size": 512}},
        {"jsonrpc": "1.0", "id": "d", "method": "spdk_get_version"},
        5
    ]);
    c.send(&serde_json::to_vec(&batch).unwrap()).unwrap();
    let r = c.recv().unwrap();
    let arr = r.as_array().expect("a batch gets an array");
    assert_eq!(arr.len(), 5, "{r}");
    assert_eq!(arr[0], json!({"jsonrpc": "2.0", "id": "a", "result": "N"}));
    assert_eq!(arr[1]["id"], "b");
    assert_eq!(arr[1]["error"]["code"], -32601);
    assert_eq!(arr[2]["error"], json!({"code": -17, "message": "File exists: bdev N already exists"}));
    assert_eq!(arr[3]["error"]["code"], -32600);
    assert_eq!(arr[4]["error"]["code"], -32600);
    assert_eq!(arr[4]["id"], Value::Null);
    // a batch of notifications only gets no answer at all
    c.send(br#"[{"jsonrpc":"2.0","method":"spdk_get_version"}]"#).unwrap();
    c.send(&req(3, "spdk_get_version", Value::Null)).unwrap();
    assert_eq!(c.recv().unwrap()["id"], 3);
    // an empty batch is an invalid request
    c.send(b"[]").unwrap();
    let r = c.recv().unwrap();
    assert_eq!(r["error"]["code"], -32600);
    assert_eq!(r["error"]["message"], "Invalid request: empty batch");
    assert_eq!(bdev_names(&t), ["N", "Quiet"]);
    t.stop();
}

#[test]
fn invalid_requests() {
    let t = Target::start(&[]);
    let mut c = RawConn::connect(&t.sock);
    for (bytes, code, msg) in [
        (&br#"{"jsonrpc":"2.0","id":1}"#[..], -32600, "Invalid request: method must be a string"),
        (br#"{"id":1,"method":"spdk_get_version"}"#, -32600, "Invalid request: jsonrpc must be \"2.0\""),
        (br#"{"jsonrpc":"2.0","id":1,"method":"spdk_get_version","params":7}"#, -32600, "Invalid request: params must be an object or an array"),
        (br#"{"jsonrpc":"2.0","id":[1],"method":"spdk_get_version"}"#, -32600, "Invalid request: id must be a string, number or null"),
        (br#""hello""#, -32600, "Invalid request: not a JSON object"),
        (br#"{"jsonrpc":"2.0","id":1,"method":"nope"}"#, -32601, "Method not found: nope"),
    ] {
        c.send(bytes).unwrap();
        let r = c.recv().unwrap();
        assert_eq!(r["error"]["code"], code, "{}: {r}", String::from_utf8_lossy(bytes));
        assert_eq!(r["error"]["message"], msg);
    }
    t.stop();
}

#[test]
fn bad_json_is_a_parse_error_and_closes() {
    let t = Target::start(&[]);
    let mut c = RawConn::connect(&t.sock);
    c.send(br#"{"jsonrpc":"2.0","id":1,"method":"bdev_malloc_create","params":{"name":"X",}}"#).unwrap();
    let r = c.recv().unwrap();
    assert_eq!(r["error"]["code"], -32700, "{r}");
    assert!(r["error"]["message"].as_str().unwrap().starts_with("Parse error: "), "{r}");
    assert_eq!(r["id"], Value::Null);
    assert!(c.closed_within(Duration::from_secs(5)));
    assert!(bdev_names(&t).is_empty());
    t.stop();
}

/// Write `total` bytes from `gen` on a new connection while another connection keeps working;
/// return the answer the flood got (if any).
fn flood(t: &Target, total: usize, first: &[u8], fill: u8) -> Option<Value> {
    let mut c = RawConn::connect(&t.sock);
    let mut w = c.stream.try_clone().unwrap();
    let first = first.to_vec();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let _ = w.write_all(&first);
        let chunk = vec![fill; 64 * 1024];
        let mut sent = first.len();
        while sent < total {
            if w.write_all(&chunk).is_err() {
                return sent; // the server cut us off
            }
            sent += chunk.len();
        }
        sent
    });
    // meanwhile another client is served
    let t0 = Instant::now();
    let v = t.rpc("spdk_get_version", Value::Null);
    assert!(v["version"].is_string());
    assert!(t0.elapsed() < Duration::from_secs(10));
    let answer = c.recv();
    let _ = c.stream.shutdown(std::net::Shutdown::Both);
    writer.join().unwrap();
    answer
}

#[test]
fn ten_mib_of_garbage() {
    let t = Target::start(&[]);
    // binary garbage: a parse error at once, then the connection is closed
    let mut garbage = vec![0u8; 10 << 20];
    let mut x = 0x1234_5678_9abc_def1u64;
    for b in garbage.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    garbage[0] = b'#';
    let r = flood(&t, garbage.len(), &garbage[..1 << 20], 0xff).expect("an error answer");
    assert_eq!(r["error"]["code"], -32700, "{r}");
    // and the target still serves everyone
    t.rpc("bdev_malloc_create", json!({"name": "After", "num_blocks": 8, "block_size": 512}));
    assert_eq!(bdev_names(&t), ["After"]);
    t.stop();
}

#[test]
fn never_ending_request_is_cut_off() {
    let t = Target::start(&[]);
    // a request whose string never ends: buffered up to the cap, then refused and closed
    let start = br#"{"jsonrpc":"2.0","id":1,"method":"bdev_malloc_create","params":{"name":""#;
    let r = flood(&t, 12 << 20, start, b'a').expect("an error answer");
    assert_eq!(r["error"]["code"], -32600, "{r}");
    assert_eq!(r["error"]["message"], format!("Invalid request: request exceeds {} bytes", 8 << 20));
    // an endless array nesting is refused too (recursion limit), not buffered
    let r = flood(&t, 1 << 20, b"", b'[').expect("an error answer");
    assert_eq!(r["error"]["code"], -32700, "{r}");
    assert!(bdev_names(&t).is_empty());
    t.stop();
}

#[test]
fn many_connections_at_once() {
    let t = Target::start(&[]);
    let sock = t.sock.clone();
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                let mut c = RawConn::connect(&sock);
                for j in 0..20u64 {
                    c.send(&req(j, "bdev_get_bdevs", Value::Null)).unwrap();
                    assert_eq!(c.recv().unwrap()["id"], j, "conn {i}");
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    t.stop();
}

#[test]
fn tcp_listener_on_loopback() {
    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}");
    let t = Target::start(&["--rpc-listen", &addr]);
    let r = palisade::cli::rpc_client::call(&addr, "spdk_get_version", None, Duration::from_secs(10)).unwrap();
    assert!(r["result"]["version"].is_string(), "{r}");
    t.stop();
    // non-loopback addresses are refused
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let (st, err) = common::serve_expect_exit(&["-r", sock.to_str().unwrap(), "--rpc-listen", "0.0.0.0:5999"], Duration::from_secs(20));
    assert!(!st.success());
    assert!(err.contains("only loopback addresses are allowed"), "{err}");
}

#[test]
fn large_request_in_small_pieces_is_not_quadratic() {
    let t = Target::start(&[]);
    let mut c = RawConn::connect(&t.sock);
    let pad = "a".repeat(4 << 20);
    let body = serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": 9, "method": "spdk_get_version", "params": {"pad": pad}})).unwrap();
    let t0 = Instant::now();
    for piece in body.chunks(512) {
        c.send(piece).unwrap();
    }
    let r = c.recv().unwrap();
    assert_eq!(r["id"], 9);
    assert_eq!(r["error"]["code"], -32602, "{r}");
    assert!(t0.elapsed() < Duration::from_secs(20), "took {:?}", t0.elapsed());
    t.stop();
}
