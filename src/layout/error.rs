//! Typed errors of the layout store; each maps to an errno so JSON-RPC answers in SPDK's style.

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("no space: {0}")]
    NoSpace(String),
    #[error("unknown file {0}")]
    UnknownFile(String),
    #[error("file {0} already exists")]
    FileExists(String),
    #[error("unknown client {0}")]
    UnknownClient(String),
    #[error("unknown grant {0}")]
    UnknownGrant(u64),
    #[error("range not in grant {0}: {1}")]
    RangeNotInGrant(u64, String),
    #[error("recall pending, retry: grant {grant} of client {client} is being recalled ({reason})")]
    RecallPending { grant: u64, client: String, reason: String },
    #[error("client {0} is fenced")]
    ClientFenced(String),
    #[error("{0}")]
    Conflict(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("metadata I/O error: {0}")]
    Io(String),
    #[error("metadata is corrupt: {0}")]
    Corrupt(String),
    /// A shared store (etcd) moved on since this node last looked: another node appended first.
    /// The store catches up and judges the operation again; callers see this only when contention
    /// outlasts the retries.
    #[error("metadata changed concurrently: {0}")]
    Stale(String),
    /// A shared store cannot be written from this node now (etcd unreachable, lease or view not
    /// confirmed): state changes fail closed.
    #[error("metadata store unavailable: {0}")]
    Unavailable(String),
}

impl LayoutError {
    /// Positive errno for the RPC layer.
    pub fn errno(&self) -> i32 {
        match self {
            LayoutError::NoSpace(_) => libc::ENOSPC,
            LayoutError::UnknownFile(_) | LayoutError::UnknownClient(_) | LayoutError::UnknownGrant(_) => libc::ENOENT,
            LayoutError::FileExists(_) => libc::EEXIST,
            LayoutError::RangeNotInGrant(..) => libc::ERANGE,
            LayoutError::RecallPending { .. } => libc::EAGAIN,
            LayoutError::ClientFenced(_) => libc::EACCES,
            LayoutError::Conflict(_) => libc::EBUSY,
            LayoutError::Invalid(_) => libc::EINVAL,
            LayoutError::Io(_) => libc::EIO,
            LayoutError::Corrupt(_) => libc::EUCLEAN,
            LayoutError::Stale(_) => libc::EAGAIN,
            LayoutError::Unavailable(_) => libc::ENOTCONN,
        }
    }
}

impl From<std::io::Error> for LayoutError {
    fn from(e: std::io::Error) -> Self {
        LayoutError::Io(e.to_string())
    }
}
