//! `palisade rpc`: a JSON-RPC client with rpc.py's command lines (see `rpc_specs`), or raw
//! params with `--json`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use clap::Args;
use serde_json::{json, Map, Value};

use super::rpc_specs::SPECS;

#[derive(Args)]
#[command(trailing_var_arg = true)]
pub struct RpcArgs {
    /// JSON-RPC unix socket of the target (or a loopback host:port).
    #[arg(short = 's', long = "server", default_value = super::DEFAULT_SOCKET)]
    server: String,
    /// Params as a raw JSON object, instead of rpc.py-style arguments.
    #[arg(long = "json")]
    json: Option<String>,
    /// Seconds to wait for the answer.
    #[arg(short = 't', long = "timeout", default_value_t = 60.0)]
    timeout: f64,
    /// Method name, then its arguments as rpc.py takes them.
    #[arg(required = true, allow_hyphen_values = true)]
    words: Vec<String>,
}

#[derive(Debug)]
struct Spec {
    short: Option<String>,
    long: Option<String>,
    key: String,
    ty: String,
    positional: bool,
    optional: bool,
}

fn parse_spec(s: &str) -> Vec<Spec> {
    s.split_whitespace()
        .map(|tok| {
            if tok.starts_with('-') {
                let (flags, rest) = tok.split_once('=').expect("option spec has =");
                let (key, ty) = rest.split_once(':').expect("option spec has :");
                let mut short = None;
                let mut long = None;
                for f in flags.split('/') {
                    if f.starts_with("--") {
                        long = Some(f.to_string());
                    } else {
                        short = Some(f.to_string());
                    }
                }
                Spec { short, long, key: key.into(), ty: ty.into(), positional: false, optional: true }
            } else {
                let (key, ty) = tok.split_once(':').expect("positional spec has :");
                let optional = ty.ends_with('?');
                Spec { short: None, long: None, key: key.into(), ty: ty.trim_end_matches('?').into(), positional: true, optional }
            }
        })
        .collect()
}

fn convert(ty: &str, key: &str, raw: &str) -> Result<Value, String> {
    let bad = |what: &str| format!("argument {key}: {raw:?} is not {what}");
    Ok(match ty {
        "str" => json!(raw),
        "int" => json!(raw.parse::<i64>().map_err(|_| bad("an integer"))?),
        "float" | "mb" => json!(raw.parse::<f64>().map_err(|_| bad("a number"))?),
        "bool" => json!(raw.parse::<bool>().map_err(|_| bad("true or false"))?),
        "list" => json!(raw.split(',').map(str::trim).filter(|s| !s.is_empty()).collect::<Vec<_>>()),
        "json" => serde_json::from_str(raw).map_err(|e| format!("argument {key}: bad JSON: {e}"))?,
        other => return Err(format!("internal: unknown spec type {other}")),
    })
}

/// Turn rpc.py-style words into params for `method`.
pub fn build_params(method: &str, words: &[String]) -> Result<Option<Value>, String> {
    let Some((_, spec)) = SPECS.iter().find(|(m, _)| *m == method) else {
        if words.is_empty() {
            return Ok(None);
        }
        return Err(format!("no command-line form is known for {method}: pass its params with --json '{{...}}'"));
    };
    let specs = parse_spec(spec);
    let mut params = Map::new();
    let mut positionals = specs.iter().filter(|s| s.positional);
    let mut i = 0;
    while i < words.len() {
        let w = &words[i];
        if w.starts_with('-') && w.len() > 1 && w.parse::<f64>().is_err() {
            let (flag, inline) = match w.split_once('=') {
                Some((f, v)) => (f, Some(v.to_string())),
                None => (w.as_str(), None),
            };
            let s = specs
                .iter()
                .find(|s| !s.positional && (s.short.as_deref() == Some(flag) || s.long.as_deref() == Some(flag)))
                .ok_or_else(|| format!("{method}: unknown option {flag}"))?;
            if s.ty == "flag" || s.ty == "noflag" {
                params.insert(s.key.clone(), json!(s.ty == "flag"));
            } else {
                let v = match inline {
                    Some(v) => v,
                    None => {
                        i += 1;
                        words.get(i).cloned().ok_or_else(|| format!("{method}: option {flag} needs a value"))?
                    }
                };
                params.insert(s.key.clone(), convert(&s.ty, &s.key, &v)?);
            }
        } else {
            let s = positionals.next().ok_or_else(|| format!("{method}: unexpected argument {w:?}"))?;
            params.insert(s.key.clone(), convert(&s.ty, &s.key, w)?);
        }
        i += 1;
    }
    if let Some(missing) = positionals.find(|s| !s.optional) {
        return Err(format!("{method}: missing argument {}", missing.key));
    }
    // rpc.py's size arguments: total_size in MiB becomes num_blocks.
    if let Some(mb) = params.remove("total_size") {
        let bs = params.get("block_size").and_then(Value::as_u64).ok_or("block_size is required with total_size")?;
        let bytes = mb.as_f64().unwrap_or(0.0) * 1024.0 * 1024.0;
        params.insert("num_blocks".into(), json!((bytes as u64) / bs.max(1)));
    }
    // Dotted keys group arguments into an object, as rpc.py's group_as does
    // (listen_address.traddr, namespace.bdev_name).
    let dotted: Vec<String> = params.keys().filter(|k| k.contains('.')).cloned().collect();
    for k in dotted {
        let v = params.remove(&k).unwrap();
        let (outer, inner) = k.split_once('.').unwrap();
        let o = params.entry(outer.to_string()).or_insert_with(|| json!({}));
        if let Some(m) = o.as_object_mut() {
            m.insert(inner.to_string(), v);
        }
    }
    Ok(Some(Value::Object(params)))
}

enum Stream {
    Unix(UnixStream),
    Tcp(std::net::TcpStream),
}
impl Stream {
    fn io(&mut self) -> (&mut dyn Read, ()) {
        match self {
            Stream::Unix(s) => (s, ()),
            Stream::Tcp(s) => (s, ()),
        }
    }
}

/// Send one call and wait for its answer.
pub fn call(server: &str, method: &str, params: Option<Value>, timeout: Duration) -> Result<Value, String> {
    let mut stream = if server.contains('/') || !server.contains(':') {
        let s = UnixStream::connect(server).map_err(|e| format!("cannot connect to {server}: {e} (is palisade serve running?)"))?;
        s.set_read_timeout(Some(timeout)).ok();
        Stream::Unix(s)
    } else {
        let s = std::net::TcpStream::connect(server).map_err(|e| format!("cannot connect to {server}: {e}"))?;
        s.set_read_timeout(Some(timeout)).ok();
        Stream::Tcp(s)
    };
    let mut req = json!({"jsonrpc": "2.0", "method": method, "id": 1});
    if let Some(p) = params {
        req["params"] = p;
    }
    let bytes = serde_json::to_vec(&req).expect("json");
    match &mut stream {
        Stream::Unix(s) => s.write_all(&bytes),
        Stream::Tcp(s) => s.write_all(&bytes),
    }
    .map_err(|e| format!("send failed: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        let n = stream.io().0.read(&mut chunk).map_err(|e| format!("no answer: {e}"))?;
        if n == 0 {
            return Err("connection closed before an answer".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut it = serde_json::Deserializer::from_slice(&buf).into_iter::<Value>();
        match it.next() {
            Some(Ok(v)) => return Ok(v),
            Some(Err(e)) if e.is_eof() => continue,
            Some(Err(e)) => return Err(format!("bad answer: {e}")),
            None => continue,
        }
    }
}

pub fn run(a: RpcArgs) -> i32 {
    let method = a.words[0].clone();
    let params = match &a.json {
        Some(j) => match serde_json::from_str::<Value>(j) {
            Ok(v) => Some(v),
            Err(e) => {
                eprintln!("--json: not valid JSON: {e}");
                return 2;
            }
        },
        None => match build_params(&method, &a.words[1..]) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{e}");
                return 2;
            }
        },
    };
    match call(&a.server, &method, params, Duration::from_secs_f64(a.timeout)) {
        Ok(resp) => {
            if let Some(err) = resp.get("error") {
                let code = err.get("code").and_then(Value::as_i64).unwrap_or(0);
                let msg = err.get("message").and_then(Value::as_str).unwrap_or("");
                eprintln!("error {code}: {msg}");
                return 1;
            }
            let result = resp.get("result").cloned().unwrap_or(Value::Null);
            println!("{}", serde_json::to_string_pretty(&result).expect("json"));
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_py_forms() {
        let w = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        let p = build_params("bdev_malloc_create", &w("-b Malloc0 64 512")).unwrap().unwrap();
        assert_eq!(p, json!({"name": "Malloc0", "num_blocks": 131072, "block_size": 512}));
        let p = build_params("bdev_uring_create", &w("/tmp/f U0")).unwrap().unwrap();
        assert_eq!(p, json!({"filename": "/tmp/f", "name": "U0"}));
        assert!(build_params("bdev_malloc_create", &w("-b M")).is_err());
        assert!(build_params("bdev_malloc_delete", &w("a b")).is_err());
        let p = build_params("rpc_get_methods", &w("--current")).unwrap().unwrap();
        assert_eq!(p, json!({"current": true}));
        for (m, s) in SPECS {
            let _ = (m, parse_spec(s));
        }
    }
}
