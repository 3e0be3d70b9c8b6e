//! The JSON-RPC socket server, framed as SPDK's rpc.py speaks it: a stream of JSON values with no
//! length prefix, many requests per connection answered in order, batches as arrays, and
//! notifications pushed to subscribed connections between responses.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::error::RpcError;
use super::{App, Conn};

/// The largest request (or unfinished prefix of one) a connection may buffer.
pub const MAX_REQUEST_BYTES: usize = 8 << 20;

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("RPC socket {0} is in use by a running process (is another palisade or SPDK app running?)")]
    InUse(PathBuf),
    #[error("cannot listen on RPC socket {0}: {1}")]
    Bind(PathBuf, std::io::Error),
    #[error("cannot listen on {0}: {1}")]
    BindTcp(String, std::io::Error),
}

/// Hold the socket path: refuse a live one, remove a stale one. The returned lock file stays
/// locked (flock) for the life of the process.
pub fn claim_socket_path(path: &Path) -> Result<std::fs::File, ServeError> {
    let lock_path = PathBuf::from(format!("{}.lock", path.display()));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&lock_path)
        .map_err(|e| ServeError::Bind(lock_path.clone(), e))?;
    use std::os::fd::AsRawFd;
    // SAFETY: flock on an open descriptor.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(ServeError::InUse(path.to_path_buf()));
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ServeError::InUse(path.to_path_buf()));
        }
        let _ = std::fs::remove_file(path);
    }
    Ok(lock)
}

pub async fn serve_unix(app: Arc<App>, listener: tokio::net::UnixListener) {
    accept_loop(app, || async { listener.accept().await.map(|(s, _)| s) }).await
}

pub async fn serve_tcp(app: Arc<App>, listener: tokio::net::TcpListener) {
    accept_loop(app, || async { listener.accept().await.map(|(s, _)| s) }).await
}

/// Accept connections for ever, serving each on its own task; a failed accept (out of
/// descriptors, say) is retried after a pause instead of ending the server.
async fn accept_loop<S, F, Fut>(app: Arc<App>, mut accept: F)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<S>>,
{
    loop {
        match accept().await {
            Ok(s) => {
                let app = app.clone();
                tokio::spawn(async move {
                    let (r, w) = tokio::io::split(s);
                    serve_conn(app, r, w).await;
                });
            }
            Err(e) => {
                tracing::warn!("RPC accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

fn error_response(id: Value, e: &RpcError) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": e.to_json()})
}

/// Handle one decoded request object; None for notifications (no id).
async fn handle_one(app: &Arc<App>, conn: &Arc<Conn>, req: Value) -> Option<Value> {
    let Value::Object(mut obj) = req else {
        return Some(error_response(Value::Null, &RpcError::invalid_request("not a JSON object")));
    };
    let has_id = obj.contains_key("id");
    let id = obj.remove("id").unwrap_or(Value::Null);
    if !matches!(id, Value::Null | Value::String(_) | Value::Number(_)) {
        return Some(error_response(Value::Null, &RpcError::invalid_request("id must be a string, number or null")));
    }
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Some(error_response(id, &RpcError::invalid_request("jsonrpc must be \"2.0\"")));
    }
    let Some(method) = obj.get("method").and_then(Value::as_str).map(str::to_string) else {
        return Some(error_response(id, &RpcError::invalid_request("method must be a string")));
    };
    let params = obj.remove("params");
    if let Some(p) = &params {
        if !matches!(p, Value::Object(_) | Value::Array(_) | Value::Null) {
            return Some(error_response(id, &RpcError::invalid_request("params must be an object or an array")));
        }
    }
    let res = app.dispatch(&method, params, conn.clone()).await;
    if !has_id {
        return None;
    }
    Some(match res {
        Ok(v) => json!({"jsonrpc": "2.0", "id": id, "result": v}),
        Err(e) => error_response(id, &e),
    })
}

async fn handle_value(app: &Arc<App>, conn: &Arc<Conn>, v: Value) -> Option<Value> {
    match v {
        Value::Array(items) => {
            if items.is_empty() {
                return Some(error_response(Value::Null, &RpcError::invalid_request("empty batch")));
            }
            let mut out = Vec::new();
            for it in items {
                if let Some(r) = handle_one(app, conn, it).await {
                    out.push(r);
                }
            }
            (!out.is_empty()).then_some(Value::Array(out))
        }
        other => handle_one(app, conn, other).await,
    }
}

async fn send<W: AsyncWrite + Unpin>(w: &mut W, v: &Value) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(v).expect("json serializes");
    bytes.push(b'\n');
    w.write_all(&bytes).await
}

/// Serve one connection until it closes or sends something that cannot be parsed.
pub async fn serve_conn<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(app: Arc<App>, mut r: R, mut w: W) {
    let (tx, mut notes) = tokio::sync::mpsc::unbounded_channel();
    let conn = Arc::new(Conn { id: NEXT_CONN.fetch_add(1, Ordering::Relaxed), notify: tx });
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 64 * 1024];
    // Whether the buffer may now hold a complete value. Re-parsing the whole buffered prefix on
    // every read would make a slowly dripped large request quadratic, so after a parse that
    // stopped at an incomplete value we parse again only when new bytes could complete one.
    let mut may_complete = false;
    loop {
        // Answer every complete value already buffered, in order.
        let mut consumed = 0;
        let mut fatal: Option<RpcError> = None;
        let mut values = Vec::new();
        if may_complete {
            let mut it = serde_json::Deserializer::from_slice(&buf).into_iter::<Value>();
            loop {
                match it.next() {
                    Some(Ok(v)) => {
                        consumed = it.byte_offset();
                        values.push(v);
                    }
                    Some(Err(e)) if e.is_eof() => break,
                    Some(Err(e)) => {
                        fatal = Some(RpcError::parse(e));
                        break;
                    }
                    None => {
                        consumed = buf.len();
                        break;
                    }
                }
            }
        }
        buf.drain(..consumed);
        for v in values {
            if let Some(resp) = handle_value(&app, &conn, v).await {
                if send(&mut w, &resp).await.is_err() {
                    return;
                }
            }
        }
        if let Some(e) = fatal {
            // The stream cannot be resynchronised after garbage: answer and close.
            let _ = send(&mut w, &error_response(Value::Null, &e)).await;
            let _ = w.shutdown().await;
            return;
        }
        if buf.len() > MAX_REQUEST_BYTES {
            let e = RpcError::invalid_request(format!("request exceeds {MAX_REQUEST_BYTES} bytes"));
            let _ = send(&mut w, &error_response(Value::Null, &e)).await;
            let _ = w.shutdown().await;
            return;
        }
        tokio::select! {
            n = r.read(&mut chunk) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    // A value can only end at a closing bracket, a quote or a delimiter; a new
                    // value's first bytes are parsed at once so garbage is refused early.
                    may_complete = buf.is_empty()
                        || chunk[..n].iter().any(|b| matches!(b, b'}' | b']' | b'"' | b' ' | b'\n' | b'\r' | b'\t' | b','));
                    buf.extend_from_slice(&chunk[..n]);
                }
            },
            Some(note) = notes.recv() => {
                may_complete = false;
                if send(&mut w, &note).await.is_err() {
                    return;
                }
            }
        }
    }
}
