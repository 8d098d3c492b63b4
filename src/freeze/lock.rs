//! One operation at a time: an flock under the state directory.
use crate::codes::Problem;
use std::path::Path;

/// Held for the whole operation (and by the guard while it lives).
pub struct OpLock {
    pub file: std::fs::File,
}

impl OpLock {
    /// Take the lock without waiting; `OperationInProgress` if somebody holds it.
    pub fn acquire(state_dir: &Path) -> Result<OpLock, Problem> {
        let _ = state_dir;
        todo!()
    }
}
