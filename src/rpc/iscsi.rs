//! iscsi_* methods (SPDK names and parameters) and the iscsi subsystem's saved config.

use super::registry::{Registry, Subsystem};
use super::App;
use crate::config::Entry;

pub fn register(r: &mut Registry) {
    r.add_subsystem(Subsystem { name: "iscsi", depends_on: &["bdev"], config: iscsi_config });
}

fn iscsi_config(_app: &App) -> Vec<Entry> {
    Vec::new()
}
