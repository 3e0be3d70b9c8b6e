//! Shared harness for integration tests: run the built `palisade` binary on a temp socket,
//! call it over JSON-RPC, pick free loopback ports. Area-specific helpers belong in the area's
//! own test files, not here.
#![allow(dead_code)]

pub mod etcd;
pub mod hostile;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_palisade");

pub struct Target {
    pub child: Option<Child>,
    pub sock: PathBuf,
    pub dir: tempfile::TempDir,
}

/// A free TCP port on 127.0.0.1 (bind to 0, read it, release it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Target {
    /// Start `palisade serve` with extra args; waits until the RPC socket answers.
    pub fn start(extra: &[&str]) -> Target {
        Target::start_in(tempfile::tempdir().unwrap(), extra)
    }

    /// Start in a given temp dir (the socket and any files the test puts there live in it).
    fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Target {
        let sock = dir.path().join("rpc.sock");
        let child = Command::new(BIN)
            .arg("serve")
            .arg("-r")
            .arg(&sock)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn palisade");
        let t = Target { child: Some(child), sock, dir };
        t.wait_ready();
        t
    }

    /// Start with a config document written to a temp file (in the target's own temp dir).
    pub fn start_with_config(config: &Value, extra: &[&str]) -> Target {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.json");
        std::fs::write(&cfg, serde_json::to_vec_pretty(config).unwrap()).unwrap();
        let cfg = cfg.to_str().unwrap().to_string();
        let mut args = vec!["-c", cfg.as_str()];
        args.extend_from_slice(extra);
        Target::start_in(dir, &args)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&self.sock).is_ok() {
                if self.try_rpc("spdk_get_version", None).is_ok() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("palisade did not start serving RPC on {}", self.sock.display());
    }

    pub fn sock_str(&self) -> &str {
        self.sock.to_str().unwrap()
    }

    /// Call a method: Ok(result) or Err((code, message)).
    pub fn try_rpc(&self, method: &str, params: Option<Value>) -> Result<Value, (i64, String)> {
        let resp = palisade::cli::rpc_client::call(self.sock_str(), method, params, Duration::from_secs(60))
            .map_err(|e| (0, e))?;
        if let Some(e) = resp.get("error") {
            return Err((e["code"].as_i64().unwrap_or(0), e["message"].as_str().unwrap_or("").to_string()));
        }
        Ok(resp["result"].clone())
    }

    /// Call a method that must succeed.
    pub fn rpc(&self, method: &str, params: Value) -> Value {
        let p = if params.is_null() { None } else { Some(params) };
        self.try_rpc(method, p.clone()).unwrap_or_else(|e| panic!("{method} {p:?} failed: {e:?}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Export `bdev` as namespace 1 of a new subsystem `nqn` (any host) on an NVMe/TCP listener
    /// at 127.0.0.1 and a free port (the TCP transport must exist); returns the port.
    pub fn export_nvmf(&self, nqn: &str, serial: &str, bdev: &str) -> u16 {
        let port = free_port();
        self.rpc("nvmf_create_subsystem", json!({"nqn": nqn, "serial_number": serial, "allow_any_host": true}));
        self.rpc("nvmf_subsystem_add_ns", json!({"nqn": nqn, "namespace": {"bdev_name": bdev}}));
        self.rpc(
            "nvmf_subsystem_add_listener",
            json!({"nqn": nqn, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}}),
        );
        port
    }

    /// Send a signal and wait (bounded) for the exit status.
    pub fn signal_and_wait(&mut self, sig: i32, timeout: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        unsafe { libc::kill(child.id() as i32, sig) };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM and wait; panics unless the target exits 0 within 15 s.
    pub fn stop(mut self) {
        let st = self.signal_and_wait(libc::SIGTERM, Duration::from_secs(15)).expect("palisade did not exit after SIGTERM");
        assert!(st.success(), "palisade exited with {st}");
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Is a command on PATH (the CI setup script installs the external peers)?
pub fn have(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| Path::new(&d).join(cmd).is_file()))
        .unwrap_or(false)
}

/// In CI every external peer must be present: a missing tool is a failure, not a skip.
pub fn require(cmd: &str) -> bool {
    if have(cmd) {
        return true;
    }
    if std::env::var_os("CI").is_some() || std::env::var_os("PALISADE_REQUIRE_PEERS").is_some() {
        panic!("{cmd} is required (run scripts/setup.sh)");
    }
    eprintln!("skipping: {cmd} not installed (run scripts/setup.sh)");
    false
}

/// A raw JSON-RPC connection: write any bytes, read back JSON values; or call methods while
/// collecting notifications (a metadata server's `layout_recall` subscription).
pub struct RawConn {
    pub stream: std::os::unix::net::UnixStream,
    buf: Vec<u8>,
    next_id: u64,
}

impl RawConn {
    pub fn connect(sock: &Path) -> RawConn {
        let stream = std::os::unix::net::UnixStream::connect(sock).expect("connect to RPC socket");
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        RawConn { stream, buf: Vec::new(), next_id: 1000 }
    }

    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        self.stream.write_all(bytes)
    }

    /// A complete JSON value already buffered, if any.
    fn take_value(&mut self) -> Option<Value> {
        let mut it = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
        match it.next() {
            Some(Ok(v)) => {
                let used = it.byte_offset();
                self.buf.drain(..used);
                Some(v)
            }
            Some(Err(e)) if !e.is_eof() => panic!("server sent invalid JSON: {e}"),
            _ => None,
        }
    }

    /// Read the next complete JSON value (None if the server closed the connection first).
    pub fn recv(&mut self) -> Option<Value> {
        use std::io::Read;
        loop {
            if let Some(v) = self.take_value() {
                return Some(v);
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("reading from the RPC socket: {e}"),
            }
        }
    }

    /// The next JSON value (answer or notification) within `timeout`; None on timeout or close.
    pub fn next_within(&mut self, timeout: Duration) -> Option<Value> {
        use std::io::Read;
        let deadline = Instant::now() + timeout;
        self.stream.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let v = loop {
            if let Some(v) = self.take_value() {
                break Some(v);
            }
            if Instant::now() > deadline {
                break None;
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => break None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => {}
            }
        };
        self.stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        v
    }

    /// Call `method`: its answer, and the notifications that arrived before it.
    pub fn call(&mut self, method: &str, params: Value) -> (Value, Vec<Value>) {
        self.next_id += 1;
        let id = self.next_id;
        let req = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.send(&serde_json::to_vec(&req).unwrap()).unwrap();
        let mut notes = Vec::new();
        loop {
            let v = self.next_within(Duration::from_secs(10)).expect("answer");
            if v.get("id") == Some(&serde_json::json!(id)) {
                return (v, notes);
            }
            notes.push(v);
        }
    }

    /// The next `layout_recall` notification with this reason (its params).
    pub fn recall(&mut self, reason: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self.next_within(left).unwrap_or_else(|| panic!("no layout_recall ({reason}) notification"));
            if v["method"] == "layout_recall" && v["params"]["reason"] == reason {
                return v["params"].clone();
            }
        }
    }

    /// Is the connection closed by the server (EOF within `timeout`, no further data)?
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        use std::io::Read;
        self.stream.set_read_timeout(Some(timeout)).unwrap();
        let mut chunk = [0u8; 4096];
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
        false
    }
}

/// Run `palisade serve` expecting it to refuse to start: (exit status, stderr). Panics if it is
/// still running after `timeout`.
pub fn serve_expect_exit(args: &[&str], timeout: Duration) -> (ExitStatus, String) {
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn palisade");
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            return (st, err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("palisade serve {args:?} did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Names of the bdevs a target has.
pub fn bdev_names(t: &Target) -> Vec<String> {
    t.rpc("bdev_get_bdevs", Value::Null)
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect()
}
