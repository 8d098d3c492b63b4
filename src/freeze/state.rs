//! The state file under the state directory, and `quiesce recover`.
//!
//! The state file is written (atomically, fsynced) before the first `FIFREEZE` and removed
//! after the last `FITHAW`. If it exists when quiesce starts, a run died while it may have
//! had filesystems frozen and no guard survived to thaw them: [`recover`] thaws what it
//! lists. It is JSON so that an operator can read it too.
use super::ioctl;
use super::mountinfo;
use super::plan::Target;
use crate::codes::{ErrorCode, Problem};
use std::path::{Path, PathBuf};

/// The state file's name under the state directory.
pub const STATE_FILE: &str = "freeze.json";

/// One filesystem that may be frozen.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StateTarget {
    /// Mount point, escaped like mountinfo (`\040` for a space, ...) so any path survives.
    pub mount_point: String,
    pub major: u32,
    pub minor: u32,
    pub fstype: String,
}

impl StateTarget {
    pub fn from_target(t: &Target) -> StateTarget {
        StateTarget {
            mount_point: mountinfo::escape(&t.mount_point),
            major: t.major,
            minor: t.minor,
            fstype: t.fstype.clone(),
        }
    }

    /// The decoded mount point.
    pub fn path(&self) -> PathBuf {
        use std::os::unix::ffi::OsStringExt;
        PathBuf::from(std::ffi::OsString::from_vec(mountinfo::unescape(
            &self.mount_point,
        )))
    }
}

/// What a running freeze records for `recover`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StateFile {
    pub version: u32,
    pub operation_id: String,
    pub agent_pid: u32,
    pub guard_pid: Option<u32>,
    /// Seconds since the epoch when the file was written.
    pub created_unix: i64,
    /// In freeze order.
    pub targets: Vec<StateTarget>,
}

/// Where the state file lives.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(STATE_FILE)
}

fn state_err(msg: String) -> Problem {
    Problem::new(ErrorCode::StateError, msg)
}

impl StateFile {
    pub fn new(operation_id: &str, guard_pid: Option<u32>, targets: &[Target]) -> StateFile {
        StateFile {
            version: 1,
            operation_id: operation_id.to_string(),
            agent_pid: std::process::id(),
            guard_pid,
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
            targets: targets.iter().map(StateTarget::from_target).collect(),
        }
    }

    /// Write atomically: a temporary file, fsync, rename over the old one, fsync the
    /// directory. A crash leaves either the old file or the new one, never half of one.
    pub fn write(&self, state_dir: &Path) -> Result<(), Problem> {
        let fin = path(state_dir);
        let mut json = serde_json::to_vec_pretty(self)
            .map_err(|e| state_err(format!("cannot encode the state file: {e}")))?;
        json.push(b'\n');
        crate::files::write_atomic(&fin, &json, 0o600).map_err(|e| {
            state_err(format!(
                "cannot write the state file {}: {e}",
                fin.display()
            ))
        })
    }

    /// Read the state file; `None` if there is none.
    pub fn read(state_dir: &Path) -> Result<Option<StateFile>, Problem> {
        let p = path(state_dir);
        let text = match std::fs::read(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(state_err(format!("cannot read {}: {e}", p.display()))),
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| state_err(format!("{} is not a valid state file: {e}", p.display())))
    }
}

/// Remove the state file (after the last thaw). A missing file is fine.
pub fn remove(state_dir: &Path) -> Result<(), Problem> {
    let p = path(state_dir);
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(state_err(format!("cannot remove {}: {e}", p.display()))),
    }
}

/// Thaw whatever a crashed run left frozen, as recorded in the state file. Returns the
/// mount points thawed. Call with the operation lock held.
///
/// Each listed filesystem is reopened by its mount point, and only if that mount point
/// still holds the same `major:minor`; one that is no longer mounted is skipped with a
/// warning (it cannot be thawed without a mount). `EINVAL` (not frozen) is fine. The file
/// is removed unless a thaw failed (then it is kept for another try). A state file that cannot be
/// decoded is moved aside (`freeze.json.bad`) and reported, so it cannot block every
/// later start.
pub fn recover(state_dir: &Path) -> Result<Vec<String>, Problem> {
    let state = match StateFile::read(state_dir) {
        Ok(None) => return Ok(Vec::new()),
        Ok(Some(s)) => s,
        Err(e) => {
            let p = path(state_dir);
            if p.exists() {
                let bad = state_dir.join(format!("{STATE_FILE}.bad"));
                let _ = std::fs::rename(&p, &bad);
                return Err(state_err(format!(
                    "{}; moved to {} (check `fsfreeze -u` by hand on the filesystems it may name)",
                    e.message,
                    bad.display()
                )));
            }
            return Err(e);
        }
    };
    let mounts = mountinfo::read_self()
        .map_err(|e| state_err(format!("cannot list mounted filesystems: {e}")))?;
    let mut thawed = Vec::new();
    let mut failed = Vec::new();
    let mut missing = Vec::new();
    // Thaw in reverse freeze order (loop images' filesystems first).
    for t in state.targets.iter().rev() {
        let mp = t.path();
        let mounted = mounts
            .iter()
            .any(|m| m.mount_point == mp && m.major == t.major && m.minor == t.minor);
        if !mounted {
            missing.push(mp.display().to_string());
            continue;
        }
        let fd = match super::open_target_dir(&mp, t.major, t.minor, &t.fstype) {
            Ok(fd) => fd,
            Err(e) => {
                failed.push(e.to_string());
                continue;
            }
        };
        match ioctl::thaw(&fd) {
            Ok(ioctl::Thawed::Thawed) => thawed.push(mp.display().to_string()),
            Ok(ioctl::Thawed::WasNotFrozen) => {}
            Err(e) => failed.push(format!("{}: FITHAW: {e}", mp.display())),
        }
    }
    if !failed.is_empty() {
        return Err(Problem::new(
            ErrorCode::ThawFailed,
            format!(
                "recovery of operation {} could not thaw {} (state file kept for another try)",
                state.operation_id,
                failed.join("; ")
            ),
        ));
    }
    if !missing.is_empty() {
        tracing::warn!(
            operation_id = %state.operation_id,
            "recover: no longer mounted, skipped (if one was unmounted while frozen, mount \
             it again and run `fsfreeze -u` on it): {}",
            missing.join(", ")
        );
    }
    remove(state_dir)?;
    thawed.reverse();
    Ok(thawed)
}
