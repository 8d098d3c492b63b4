//! One operation at a time: an flock under the state directory, and one per filesystem.
//!
//! The lock is an `flock` on `state_dir/lock`. The freeze guard inherits the locked
//! descriptor, so the lock stays held until the guard has exited: a new operation cannot
//! start (and `quiesce recover` cannot run) while an old guard may still thaw.
//!
//! Two quiesce instances with different state directories must not freeze the same
//! filesystem either: right after planning, an operation that freezes also takes an `flock`
//! per target filesystem on `/run/lock/quiesce/MAJOR:MINOR` (machine-wide, named by the
//! device), writes who holds it into the file, and hands those descriptors to its guard too.
use crate::codes::{ErrorCode, Problem};
use rustix::fs::FlockOperation;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Held for the whole operation (and by the guard while it lives).
pub struct OpLock {
    pub file: std::fs::File,
    /// The per-filesystem locks taken by [`OpLock::lock_filesystems`].
    pub filesystems: Vec<std::fs::File>,
}

/// The machine-wide directory of the per-filesystem locks.
pub const FS_LOCK_DIR: &str = "/run/lock/quiesce";

/// The lock file's name under the state directory.
pub const LOCK_FILE: &str = "lock";

impl OpLock {
    /// Take the lock without waiting; `OperationInProgress` if somebody holds it.
    pub fn acquire(state_dir: &Path) -> Result<OpLock, Problem> {
        ensure_state_dir(state_dir)?;
        let path = state_dir.join(LOCK_FILE);
        let file = open_lock_file(&path)?;
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(OpLock {
                file,
                filesystems: Vec::new(),
            }),
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let holder = match super::state::StateFile::read(state_dir) {
                    Ok(Some(s)) => format!(
                        " (operation {} of quiesce pid {}, guard pid {})",
                        s.operation_id,
                        s.agent_pid,
                        s.guard_pid.map_or("-".to_string(), |p| p.to_string())
                    ),
                    _ => String::new(),
                };
                Err(Problem::new(
                    ErrorCode::OperationInProgress,
                    format!(
                        "another quiesce operation holds {}{holder}; only one runs at a time",
                        path.display()
                    ),
                ))
            }
            Err(e) => Err(Problem::new(
                ErrorCode::StateError,
                format!("cannot lock {}: {e}", path.display()),
            )),
        }
    }
}

impl OpLock {
    /// Take the lock of every filesystem in `devices` (`(major, minor)`) without waiting,
    /// in the machine-wide `lock_dir`, and write `holder` into each. `OperationInProgress`
    /// naming the holder if another operation holds one of them (none is kept then).
    pub fn lock_filesystems(
        &mut self,
        lock_dir: &Path,
        devices: &[(u32, u32)],
        holder: &str,
    ) -> Result<(), Problem> {
        ensure_state_dir(lock_dir)?;
        let mut devices = devices.to_vec();
        devices.sort_unstable();
        devices.dedup();
        let mut taken = Vec::with_capacity(devices.len());
        for (major, minor) in devices {
            let path = lock_dir.join(format!("{major}:{minor}"));
            let mut file = open_lock_file(&path)?;
            match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {
                    let written = file
                        .set_len(0)
                        .and_then(|()| file.rewind())
                        .and_then(|()| file.write_all(holder.as_bytes()));
                    if let Err(e) = written {
                        tracing::warn!(error = %e, path = %path.display(), "cannot name the lock holder");
                    }
                    taken.push(file);
                }
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    let mut who = String::new();
                    let _ = file.read_to_string(&mut who);
                    let who = match who.trim() {
                        "" => String::new(),
                        w => format!(" (held by {w})"),
                    };
                    return Err(Problem::new(
                        ErrorCode::OperationInProgress,
                        format!(
                            "another quiesce operation is working on filesystem {major}:{minor}{who}; \
                             only one operation per filesystem runs at a time"
                        ),
                    ));
                }
                Err(e) => {
                    return Err(Problem::new(
                        ErrorCode::StateError,
                        format!("cannot lock {}: {e}", path.display()),
                    ))
                }
            }
        }
        self.filesystems.extend(taken);
        Ok(())
    }
}

/// Open (creating, mode 0600, never through a symlink) a lock file.
fn open_lock_file(path: &Path) -> Result<std::fs::File, Problem> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(|e| {
            Problem::new(
                ErrorCode::StateError,
                format!("cannot open the lock file {}: {e}", path.display()),
            )
        })
}

/// Create the state directory (mode 0700) if missing, and refuse one that others could
/// write to: the lock and the state file that `recover` trusts live there.
pub fn ensure_state_dir(state_dir: &Path) -> Result<(), Problem> {
    let err = |msg: String| Problem::new(ErrorCode::StateError, msg);
    if std::fs::symlink_metadata(state_dir).is_err() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(|e| err(format!("cannot create {}: {e}", state_dir.display())))?;
    }
    let md = std::fs::symlink_metadata(state_dir)
        .map_err(|e| err(format!("cannot inspect {}: {e}", state_dir.display())))?;
    if !md.file_type().is_dir() {
        return Err(err(format!(
            "{} is not a directory (a symlink or file is refused)",
            state_dir.display()
        )));
    }
    let euid = rustix::process::geteuid().as_raw();
    if md.uid() != euid {
        return Err(err(format!(
            "{} is owned by uid {}, not by uid {euid}",
            state_dir.display(),
            md.uid()
        )));
    }
    if md.mode() & 0o022 != 0 {
        return Err(err(format!(
            "{} is writable by group or others (mode {:o}); it must be 0700",
            state_dir.display(),
            md.mode() & 0o7777
        )));
    }
    Ok(())
}
