//! Identifiers and small value types shared by the store, the journal and the RPC layer.

use serde::{Deserialize, Serialize};

/// A file id chosen by the metadata server: a number or a string.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FileId {
    Num(u64),
    Name(String),
}

impl std::fmt::Display for FileId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileId::Num(n) => write!(f, "{n}"),
            FileId::Name(s) => write!(f, "{s:?}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoMode {
    Read,
    Rw,
}

/// RFC 5663 extent states as a layout answer carries them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExtentState {
    #[serde(rename = "READ_WRITE_DATA")]
    ReadWrite,
    #[serde(rename = "READ_DATA")]
    Read,
    #[serde(rename = "INVALID_DATA")]
    Invalid,
    #[serde(rename = "NONE_DATA")]
    None,
}

/// One extent of a layout or map answer, in bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayoutExtent {
    pub file_offset: u64,
    pub length: u64,
    pub volume_offset: u64,
    pub state: ExtentState,
}

/// Why a grant is recalled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecallReason {
    Conflict,
    Truncate,
    Remove,
    Reflink,
    Fence,
}

impl RecallReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            RecallReason::Conflict => "conflict",
            RecallReason::Truncate => "truncate",
            RecallReason::Remove => "remove",
            RecallReason::Reflink => "reflink",
            RecallReason::Fence => "fence",
        }
    }
}

/// Guard policy of a layout volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    #[default]
    Enforce,
    Audit,
    Off,
}
