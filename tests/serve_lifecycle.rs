//! `palisade serve` start and stop: socket ownership, stale sockets, signals, spdk_kill_instance.

mod common;

use std::time::{Duration, Instant};

use common::{serve_expect_exit, Target};
use serde_json::{json, Value};

#[test]
fn socket_held_by_a_live_palisade_is_refused() {
    let t = Target::start(&[]);
    let (st, err) = serve_expect_exit(&["-r", t.sock_str()], Duration::from_secs(20));
    assert!(!st.success(), "second instance started: {err}");
    assert!(err.contains("is in use by a running process"), "{err}");
    // the first one is untouched
    assert!(t.rpc("spdk_get_version", Value::Null)["version"].is_string());
    t.stop();
}

#[test]
fn socket_held_by_another_process_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("other.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let (st, err) = serve_expect_exit(&["-r", sock.to_str().unwrap()], Duration::from_secs(20));
    assert!(!st.success());
    assert!(err.contains("is in use by a running process"), "{err}");
    assert!(sock.exists(), "the live socket was removed");
}

#[test]
fn stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("rpc.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap()); // leaves a dead socket file
    assert!(sock.exists());
    let mut child = std::process::Command::new(common::BIN)
        .args(["serve", "-r", sock.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut ok = false;
    while Instant::now() < deadline {
        if let Ok(r) = palisade::cli::rpc_client::call(sock.to_str().unwrap(), "spdk_get_version", None, Duration::from_secs(5)) {
            ok = r["result"]["version"].is_string();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = child.wait().unwrap();
    assert!(ok, "palisade did not serve on the stale socket path");
    assert!(st.success());
    assert!(!sock.exists(), "socket not removed at exit");
}

fn exits_zero_quickly(sig: i32) {
    let mut t = Target::start(&["-m", "0x3"]);
    t.rpc("bdev_malloc_create", json!({"name": "M", "num_blocks": 2048, "block_size": 512}));
    let sock = t.sock.clone();
    let t0 = Instant::now();
    let st = t.signal_and_wait(sig, Duration::from_secs(10)).expect("no exit after the signal");
    assert!(st.success(), "exit status {st}");
    assert!(t0.elapsed() < Duration::from_secs(5), "slow exit: {:?}", t0.elapsed());
    assert!(!sock.exists(), "socket left behind");
}

#[test]
fn sigterm_exits_zero() {
    exits_zero_quickly(libc::SIGTERM);
}

#[test]
fn sigint_exits_zero() {
    exits_zero_quickly(libc::SIGINT);
}

#[test]
fn sigterm_under_busy_poll_and_open_connections() {
    let mut t = Target::start(&["--poll", "busy"]);
    assert_eq!(t.rpc("framework_get_reactors", Value::Null)["poll_mode"], "busy");
    // a client in the middle of a request must not hold the exit up
    let mut c = common::RawConn::connect(&t.sock);
    c.send(br#"{"jsonrpc":"2.0","id":1,"method":"spdk_get_ver"#).unwrap();
    let st = t.signal_and_wait(libc::SIGTERM, Duration::from_secs(10)).expect("no exit");
    assert!(st.success());
}

#[test]
fn spdk_kill_instance_sigterm() {
    let mut t = Target::start(&[]);
    assert_eq!(
        t.try_rpc("spdk_kill_instance", Some(json!({"sig_name": "SIGFOO"}))),
        Err((-32602, "Invalid parameters: sig_name: unsupported signal \"SIGFOO\"".into()))
    );
    assert_eq!(t.try_rpc("spdk_kill_instance", None).unwrap_err().0, -32602);
    assert_eq!(t.rpc("spdk_kill_instance", json!({"sig_name": "SIGTERM"})), json!(true));
    let mut child = t.child.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success(), "{st}");
            break;
        }
        assert!(Instant::now() < deadline, "no exit after spdk_kill_instance");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn bad_command_lines_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let s = sock.to_str().unwrap();
    let (st, err) = serve_expect_exit(&["-r", s, "-m", "zz"], Duration::from_secs(20));
    assert!(!st.success());
    assert!(err.contains("bad core mask"), "{err}");
    let (st, err) = serve_expect_exit(&["-r", s, "-m", "0x8000000000000000"], Duration::from_secs(20));
    assert!(!st.success());
    assert!(err.contains("does not exist on this machine"), "{err}");
    let (st, err) = serve_expect_exit(&["-r", s, "-c", dir.path().join("none.json").to_str().unwrap()], Duration::from_secs(20));
    assert!(!st.success());
    assert!(err.contains("cannot read config"), "{err}");
}

#[test]
fn sigterm_right_after_the_socket_answers() {
    // The signal handler must be in place before the first RPC is answered.
    for _ in 0..5 {
        Target::start(&["-c", "default"]).stop();
    }
}
