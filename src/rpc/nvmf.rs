//! nvmf_* methods (SPDK names and parameters) and the nvmf subsystem's saved config.

use super::registry::{Registry, Subsystem};
use super::App;
use crate::config::Entry;

pub fn register(r: &mut Registry) {
    r.add_subsystem(Subsystem { name: "nvmf", depends_on: &["bdev"], config: nvmf_config });
}

fn nvmf_config(_app: &App) -> Vec<Entry> {
    Vec::new()
}
