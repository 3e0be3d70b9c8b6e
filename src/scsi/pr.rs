//! PERSISTENT RESERVE IN/OUT (SPC-4 6.13, 6.14) and RESERVE(6)/RELEASE(6) (SPC-2 7.21, 7.17).
//!
//! PLACEHOLDER, not an implementation: the reservation engine is built in another branch and this
//! function is replaced when it is merged. Until then the opcodes are reported as unsupported, so
//! initiators and the compliance suite skip reservation tests instead of failing them.

use std::sync::Arc;

use super::sense::INVALID_OPCODE;
use super::{Lun, ScsiCommand, ScsiPort, ScsiResponse};
use crate::reactor::{Core, HandlerRef};

/// Execute a reservation command (0x5e, 0x5f, 0x16, 0x17) for `port`'s nexus on `lun`.
pub fn execute(port: &mut ScsiPort, _core: &mut Core, _me: HandlerRef, _lun: &Arc<Lun>, cmd: ScsiCommand) {
    port.push_response(ScsiResponse::check(cmd.task_tag, INVALID_OPCODE));
}
