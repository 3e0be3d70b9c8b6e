//! JSON-RPC 2.0 errors, with SPDK's codes: the standard ones, -1 for a call in the wrong
//! framework state, and negative errno for operation failures.

use serde_json::{json, Value};

#[derive(Clone, Debug, PartialEq)]
pub struct RpcError {
    pub code: i32,
    pub message: String,
}

pub type RpcResult = Result<Value, RpcError>;

pub const PARSE_ERROR: i32 = -32700;
pub const INVALID_REQUEST: i32 = -32600;
pub const METHOD_NOT_FOUND: i32 = -32601;
pub const INVALID_PARAMS: i32 = -32602;
pub const INTERNAL_ERROR: i32 = -32603;
pub const INVALID_STATE: i32 = -1;

pub fn strerror(errno: i32) -> String {
    // SAFETY: strerror returns a static, NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(libc::strerror(errno.abs())).to_string_lossy().into_owned() }
}

impl RpcError {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        RpcError { code, message: message.into() }
    }
    pub fn parse(detail: impl std::fmt::Display) -> Self {
        Self::new(PARSE_ERROR, format!("Parse error: {detail}"))
    }
    pub fn invalid_request(detail: impl std::fmt::Display) -> Self {
        Self::new(INVALID_REQUEST, format!("Invalid request: {detail}"))
    }
    pub fn method_not_found(method: &str) -> Self {
        Self::new(METHOD_NOT_FOUND, format!("Method not found: {method}"))
    }
    pub fn invalid_params(detail: impl std::fmt::Display) -> Self {
        Self::new(INVALID_PARAMS, format!("Invalid parameters: {detail}"))
    }
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        Self::new(INTERNAL_ERROR, format!("Internal error: {detail}"))
    }
    /// An operation failure as SPDK reports it: code -errno, message strerror(errno), plus detail.
    pub fn errno(errno: i32, detail: impl std::fmt::Display) -> Self {
        let e = errno.abs();
        let d = detail.to_string();
        let msg = if d.is_empty() { strerror(e) } else { format!("{}: {d}", strerror(e)) };
        Self::new(-e, msg)
    }
    pub fn to_json(&self) -> Value {
        json!({"code": self.code, "message": self.message})
    }
}

impl From<crate::bdev::BdevError> for RpcError {
    fn from(e: crate::bdev::BdevError) -> Self {
        RpcError::errno(e.errno(), e)
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)
    }
}
impl std::error::Error for RpcError {}
