//! The state file under the state directory, and `quiesce recover`.
use crate::codes::Problem;
use std::path::Path;

/// Thaw whatever a crashed run left frozen, as recorded in the state file. Returns the
/// mount points thawed. Call with the operation lock held.
pub fn recover(state_dir: &Path) -> Result<Vec<String>, Problem> {
    let _ = state_dir;
    todo!()
}
