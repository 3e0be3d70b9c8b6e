//! Shared harness for integration tests: run the built `palisade` binary on a temp socket,
//! call it over JSON-RPC, pick free loopback ports. Area-specific helpers belong in the area's
//! own test files, not here.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

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
        let dir = tempfile::tempdir().unwrap();
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

    /// Start with a config document written to a temp file.
    pub fn start_with_config(config: &Value, extra: &[&str]) -> Target {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.json");
        std::fs::write(&cfg, serde_json::to_vec_pretty(config).unwrap()).unwrap();
        let cfg = cfg.to_str().unwrap().to_string();
        let mut args = vec!["-c", cfg.as_str()];
        args.extend_from_slice(extra);
        let mut t = Target::start(&args);
        // keep the config dir alive as long as the target
        std::mem::swap(&mut t.dir, &mut tempfile::tempdir().unwrap());
        let _ = dir.keep();
        t
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
