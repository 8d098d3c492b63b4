//! Why a provider failed, typed until the report: [`SnapshotError::code`] and its message
//! become a [`Problem`] once, where the run records it.
use crate::codes::{ErrorCode, Problem};
use rustix::io::Errno;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    // The `command` provider.
    #[error("snapshot command is empty")]
    EmptyCommand,
    #[error("cannot start `{command}`: {source}")]
    CommandStart {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` was stopped: quiesce received SIGTERM/SIGINT{}", stderr_suffix(.stderr))]
    CommandInterrupted { command: String, stderr: String },
    #[error(
        "`{command}` did not finish within {} (killed with its process group){}",
        humantime::format_duration(*.timeout),
        stderr_suffix(.stderr)
    )]
    CommandTimedOut {
        command: String,
        timeout: Duration,
        stderr: String,
    },
    /// `end` says how it ended (`exited with code 3`, `was killed by signal 9`).
    #[error("`{command}` {end}{}", stderr_suffix(.stderr))]
    CommandFailed {
        command: String,
        end: String,
        stderr: String,
    },
    #[error(
        "`{command}` wrote more than {limit} bytes on stdout; it must print one snapshot id per line"
    )]
    TooMuchOutput { command: String, limit: usize },

    // The `btrfs` provider.
    #[error("the clock is outside 1970..9999; cannot name a snapshot")]
    ClockOutOfRange,
    #[error("btrfs provider: no subvolumes configured")]
    NoSubvolumes,
    #[error("subvolume {} is listed twice", .path.display())]
    ListedTwice { path: PathBuf },
    #[error("cannot name the snapshot of {}: {reason}", .path.display())]
    Unnameable { path: PathBuf, reason: String },
    #[error(
        "subvolumes {} and {} would get the same snapshot name {name} in {} (same base name); \
         use a separate directory for one of them",
        .first.display(), .second.display(), .directory.display()
    )]
    SameName {
        first: PathBuf,
        second: PathBuf,
        name: String,
        directory: PathBuf,
    },
    #[error("{what} {} {}", .path.display(), open_reason(*.errno))]
    Open {
        what: &'static str,
        path: PathBuf,
        #[source]
        errno: Errno,
    },
    #[error("cannot statfs {what} {}: {}", .path.display(), errno_text(*.errno))]
    Statfs {
        what: &'static str,
        path: PathBuf,
        #[source]
        errno: Errno,
    },
    #[error(
        "{what} {} is not on btrfs (it is on {found}); the btrfs provider needs btrfs subvolumes \
         and a snapshot directory on the same btrfs",
        .path.display()
    )]
    NotBtrfs {
        what: &'static str,
        path: PathBuf,
        found: String,
    },
    #[error("cannot stat subvolume {}: {}", .path.display(), errno_text(*.errno))]
    Stat {
        path: PathBuf,
        #[source]
        errno: Errno,
    },
    #[error(
        "{} is not a btrfs subvolume (inode {inode}, a subvolume root is inode {root}); only \
         whole subvolumes can be snapshotted: make it one with `btrfs subvolume create`, or \
         configure the subvolume that contains it",
        .path.display()
    )]
    NotSubvolume {
        path: PathBuf,
        inode: u64,
        root: u64,
    },
    #[error("cannot read the btrfs filesystem id of {}: {}", .path.display(), errno_text(*.errno))]
    FilesystemId {
        path: PathBuf,
        #[source]
        errno: Errno,
    },
    #[error(
        "subvolume {} is on another btrfs than the snapshot directory {}; a btrfs snapshot can \
         only be created on the filesystem of its subvolume",
        .subvolume.display(), .directory.display()
    )]
    OtherFilesystem {
        subvolume: PathBuf,
        directory: PathBuf,
    },
    #[error(
        "the btrfs holding {} is frozen (mounted at {}); a snapshot of a frozen btrfs blocks \
         until it is thawed, so none was attempted: exclude it from freezing",
        .directory.display(), .mount_point.display()
    )]
    DirectoryFrozen {
        directory: PathBuf,
        mount_point: PathBuf,
    },
    #[error("btrfs snapshots took longer than {timeout:?}; {} not snapshotted", .next.display())]
    TookTooLong { timeout: Duration, next: PathBuf },
    #[error(
        "btrfs snapshot of {} as {} failed: {}",
        .subvolume.display(), .snapshot.display(), create_reason(*.errno, .snapshot)
    )]
    Create {
        subvolume: PathBuf,
        snapshot: PathBuf,
        #[source]
        errno: Errno,
    },
    #[error("cannot read snapshot directory {}: {source}", .directory.display())]
    ReadDirectory {
        directory: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "retention could not remove {} snapshot(s) in {} ({}); removed {removed:?}",
        .failures.len(), .directory.display(), .failures.join("; ")
    )]
    Retention {
        directory: PathBuf,
        failures: Vec<String>,
        removed: Vec<String>,
    },
    /// A run failed after making some snapshots; `left` are the ones it could not remove.
    #[error("{cause}; {}", abandoned(*.made, .left))]
    Abandoned {
        #[source]
        cause: Box<SnapshotError>,
        made: usize,
        left: Vec<String>,
    },
}

impl SnapshotError {
    /// The public error code of this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            SnapshotError::CommandInterrupted { .. } => ErrorCode::Interrupted,
            SnapshotError::CommandTimedOut { .. } | SnapshotError::TookTooLong { .. } => {
                ErrorCode::SnapshotTimeout
            }
            SnapshotError::Abandoned { cause, .. } => cause.code(),
            _ => ErrorCode::SnapshotFailed,
        }
    }

    /// The report's form: the public code and the message.
    pub fn to_problem(&self) -> Problem {
        Problem::new(self.code(), self.to_string())
    }
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("; stderr: {stderr}")
    }
}

/// An errno as text, e.g. "Read-only file system (os error 30)".
pub(crate) fn errno_text(e: Errno) -> String {
    std::io::Error::from(e).to_string()
}

fn open_reason(e: Errno) -> String {
    match e {
        Errno::NOENT => "does not exist".to_string(),
        Errno::NOTDIR => "is not a directory".to_string(),
        other => format!("cannot be opened: {}", errno_text(other)),
    }
}

fn create_reason(e: Errno, snapshot: &std::path::Path) -> String {
    let dir = snapshot.parent().unwrap_or(snapshot);
    match e {
        Errno::EXIST => format!("{} already exists", snapshot.display()),
        Errno::PERM | Errno::ACCESS => "permission denied (creating btrfs snapshots needs root \
                                        or write access to the directory)"
            .into(),
        Errno::ROFS => format!("{} is on a read-only mount", dir.display()),
        Errno::XDEV => "the subvolume and the directory are on different btrfs filesystems".into(),
        Errno::NOSPC => "the btrfs is out of space".into(),
        other => errno_text(other),
    }
}

fn abandoned(made: usize, left: &[String]) -> String {
    if left.is_empty() {
        format!("removed the {made} snapshot(s) this run had made")
    } else {
        format!(
            "could not remove the snapshot(s) this run had made: {}",
            left.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_variant_and_an_abandoned_run_keeps_its_cause() {
        let timed_out = SnapshotError::TookTooLong {
            timeout: Duration::from_secs(1),
            next: "/b".into(),
        };
        let cases = [
            (SnapshotError::EmptyCommand, ErrorCode::SnapshotFailed),
            (
                SnapshotError::CommandInterrupted {
                    command: "x".into(),
                    stderr: String::new(),
                },
                ErrorCode::Interrupted,
            ),
            (
                SnapshotError::CommandTimedOut {
                    command: "x".into(),
                    timeout: Duration::from_secs(2),
                    stderr: "late".into(),
                },
                ErrorCode::SnapshotTimeout,
            ),
            (
                SnapshotError::Abandoned {
                    cause: Box::new(timed_out),
                    made: 1,
                    left: vec![],
                },
                ErrorCode::SnapshotTimeout,
            ),
            (SnapshotError::NoSubvolumes, ErrorCode::SnapshotFailed),
        ];
        for (e, code) in cases {
            assert_eq!(e.code(), code, "{e}");
            assert_eq!(e.to_problem().code, code);
            assert_eq!(e.to_problem().message, e.to_string());
        }
    }

    #[test]
    fn messages_read_as_before() {
        let e = SnapshotError::CommandTimedOut {
            command: "snap".into(),
            timeout: Duration::from_secs(2),
            stderr: "late".into(),
        };
        assert_eq!(
            e.to_string(),
            "`snap` did not finish within 2s (killed with its process group); stderr: late"
        );
        let e = SnapshotError::Abandoned {
            cause: Box::new(SnapshotError::Create {
                subvolume: "/data".into(),
                snapshot: "/snaps/x".into(),
                errno: Errno::ROFS,
            }),
            made: 2,
            left: vec![],
        };
        assert_eq!(
            e.to_string(),
            "btrfs snapshot of /data as /snaps/x failed: /snaps is on a read-only mount; removed \
             the 2 snapshot(s) this run had made"
        );
        let e = SnapshotError::Open {
            what: "subvolume",
            path: "/nope".into(),
            errno: Errno::NOENT,
        };
        assert_eq!(e.to_string(), "subvolume /nope does not exist");
        assert!(std::error::Error::source(&e).is_some());
    }
}
