//! SPDK's JSON configuration format: `{"subsystems":[{"subsystem":…,"config":[{"method":…,"params":…}]}]}`.
//!
//! Pure data: parsing, validation of shape, and rendering. Applying an entry means calling the RPC
//! of that name, which the layer above does.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
}

/// A config element: one call, or a batch of calls (SPDK writes these with `with_batches`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Element {
    Call(Entry),
    Batch(Vec<Entry>),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubsystemConfig {
    pub subsystem: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub config: Vec<Element>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub subsystems: Vec<SubsystemConfig>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Element>, D::Error> {
    Ok(Option::<Vec<Element>>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {err}")]
    Read { path: String, err: std::io::Error },
    #[error("config {path} is not valid SPDK JSON config: {err}")]
    Parse { path: String, err: String },
}

/// A located entry: subsystem name, index within it, and the call.
#[derive(Clone, Debug)]
pub struct Located<'a> {
    pub subsystem: &'a str,
    pub index: usize,
    pub entry: &'a Entry,
}

impl Located<'_> {
    /// How an error names the entry: `subsystem bdev, entry #2 (bdev_malloc_create)`.
    pub fn describe(&self) -> String {
        format!("subsystem {}, entry #{} ({})", self.subsystem, self.index, self.entry.method)
    }
}

impl Config {
    pub fn parse(text: &str, path: &str) -> Result<Config, ConfigError> {
        let mut de = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(&mut de)
            .map_err(|e| ConfigError::Parse { path: path.to_string(), err: format!("at {}: {}", e.path(), e.inner()) })
    }

    pub fn load(path: &str) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read { path: path.to_string(), err })?;
        Config::parse(&text, path)
    }

    /// Every call in file order, batches flattened.
    pub fn entries(&self) -> Vec<Located<'_>> {
        let mut out = Vec::new();
        for s in &self.subsystems {
            let mut i = 0;
            for el in &s.config {
                match el {
                    Element::Call(e) => {
                        out.push(Located { subsystem: &s.subsystem, index: i, entry: e });
                        i += 1;
                    }
                    Element::Batch(b) => {
                        for e in b {
                            out.push(Located { subsystem: &s.subsystem, index: i, entry: e });
                            i += 1;
                        }
                    }
                }
            }
        }
        out
    }

    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).expect("config serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_spdk_format_with_batches_and_nulls() {
        let c = Config::parse(
            r#"{"subsystems":[{"subsystem":"accel","config":null},
               {"subsystem":"bdev","config":[{"method":"bdev_malloc_create","params":{"name":"M","num_blocks":8,"block_size":512}},
               [{"method":"bdev_null_create","params":{"name":"N","num_blocks":8,"block_size":512}}]]}]}"#,
            "x",
        )
        .unwrap();
        let e = c.entries();
        assert_eq!(e.len(), 2);
        assert_eq!(e[1].describe(), "subsystem bdev, entry #1 (bdev_null_create)");
    }

    #[test]
    fn errors_name_the_place() {
        let err = Config::parse(r#"{"subsystems":[{"subsystem":"bdev","config":[{"params":{}}]}]}"#, "f.json").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("f.json") && msg.contains("subsystems[0].config[0]"), "{msg}");
    }
}
