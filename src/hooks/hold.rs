//! Hold mode (SPEC section 4): one process kept alive across the snapshot.
//!
//! The hook signals "quiesced" by printing a line `READY` on stdout within its pre timeout.
//! After the snapshot and thaw quiesce releases it: stdin is closed, then SIGTERM to its
//! process group after a grace period, then SIGKILL. Its exit status is the post result.
use super::{Limits, RunContext, ScriptResult};
use crate::config::ScriptSpec;

/// A hook process holding its application quiesced.
pub struct Held {
    _p: (),
}

/// Start a held hook and wait for `READY`.
pub fn start_held(
    spec: &ScriptSpec,
    ctx: &RunContext,
    limits: Limits,
) -> Result<Held, ScriptResult> {
    let _ = (spec, ctx, limits);
    todo!()
}

impl Held {
    /// Some(reason) if the process already exited or was killed.
    pub fn lost(&self) -> Option<String> {
        todo!()
    }
    /// Release: close stdin, SIGTERM after a grace, SIGKILL; exit status is the post result.
    pub fn release(self, ctx: &RunContext, limits: Limits) -> ScriptResult {
        let _ = (ctx, limits);
        todo!()
    }
}
