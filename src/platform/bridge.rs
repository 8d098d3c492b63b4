//! The bridge a platform runs as its pre/post script: `quiesce hook pre|post --platform P`.
//!
//! Pre asks the running `quiesce serve` to prepare an operation (pre hooks, holds kept
//! alive by the server, caller recorded as the platform) and remembers its id in the state
//! directory; post releases it (thaw, post hooks, report, catalog). Both are the server's
//! ordinary prepare / release, so the operation is recorded like any other. If post never
//! comes, the server's guard thaws at the deadline and the operation is recorded as such.
//!
//! Where the platform does not freeze the filesystems itself (Google's guest flush on Linux,
//! AWS's pre/post scripts, Kubernetes backup tools' exec hooks) the server freezes its plan;
//! where it does (qemu-ga, Azure's extension) the server only runs `syncfs` on the plan's
//! filesystems, so that the platform's own freeze has little left to flush. `docs/platforms/` describes each platform.

use crate::api::{Caller, FreezeScope, OpState};
use crate::report::Status;
use crate::server::client::Client;
use std::path::{Path, PathBuf};

/// A platform whose pre/post script can be the bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Platform {
    /// Google's guest agent (`/etc/google/snapshots/pre.sh`, `post.sh`).
    Gcp,
    /// AWS Data Lifecycle Manager pre/post scripts through a Systems Manager document.
    Aws,
    /// Pod exec hooks of Kubernetes backup tools (Velero, Kanister).
    Kubernetes,
    /// qemu-ga's `fsfreeze-hook` (`freeze` / `thaw`); qemu-ga freezes itself.
    QemuGa,
    /// Azure Backup's VMSnapshot plugin scripts; the extension freezes itself.
    Azure,
}

impl Platform {
    pub fn name(self) -> &'static str {
        match self {
            Platform::Gcp => "gcp",
            Platform::Aws => "aws",
            Platform::Kubernetes => "kubernetes",
            Platform::QemuGa => "qemu-ga",
            Platform::Azure => "azure",
        }
    }
}

/// Which side of the snapshot the platform is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Side {
    Pre,
    Post,
}

/// Exit status for the platform: 0 is success, anything else is a script error for
/// Google's agent, AWS's document, Kubernetes exec hooks, qemu-ga's hook and Azure's runner.
const EXIT_OK: i32 = 0;
const EXIT_FAILED: i32 = 1;

impl Platform {
    /// What the server freezes: the plan, unless the platform freezes itself (then only a
    /// syncfs, so the platform's own freeze is short).
    pub fn scope(self) -> FreezeScope {
        match self {
            Platform::Gcp | Platform::Aws | Platform::Kubernetes => FreezeScope::Plan,
            Platform::QemuGa | Platform::Azure => FreezeScope::SyncOnly,
        }
    }
}

/// Where pre leaves the operation id for post (the state directory is on tmpfs).
pub fn id_file(state_dir: &Path, platform: Platform) -> PathBuf {
    state_dir.join(format!("platform-{}.operation", platform.name()))
}

/// The exit status a prepare answer means for the platform.
pub fn pre_exit(state: OpState) -> i32 {
    match state {
        OpState::Frozen | OpState::Prepared => EXIT_OK,
        _ => EXIT_FAILED,
    }
}

/// The exit status a release report means for the platform: a snapshot at a lower
/// consistency (degraded) is still a snapshot; the history says which consistency.
pub fn post_exit(status: Status) -> i32 {
    match status {
        Status::Succeeded | Status::Degraded => EXIT_OK,
        Status::Failed => EXIT_FAILED,
    }
}

/// Run one side of the bridge; returns the exit status for the platform.
pub fn run(
    cfg: &crate::config::Config,
    platform: Platform,
    side: Side,
    deadline: Option<&str>,
    socket: Option<&Path>,
) -> i32 {
    let client = Client::new(socket.unwrap_or(&cfg.server.socket));
    let id_path = id_file(&cfg.paths.state_dir, platform);
    let result = match side {
        Side::Pre => {
            let deadline = match deadline.map(humantime::parse_duration).transpose() {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("quiesce: invalid --deadline: {e}");
                    return EXIT_FAILED;
                }
            };
            let id = format!("{}-{}", platform.name(), crate::pipeline::opid::generate());
            if let Err(e) = write_id(&id_path, &id) {
                eprintln!(
                    "quiesce: cannot record the operation id in {}: {e}",
                    id_path.display()
                );
                return EXIT_FAILED;
            }
            let caller = Caller::Platform(platform.name().to_string());
            client
                .prepare(&id, deadline, &platform.scope(), &caller)
                .map(|answer| {
                    print_json(&answer);
                    pre_exit(answer.state)
                })
        }
        Side::Post => {
            let id = match std::fs::read_to_string(&id_path) {
                Ok(id) => id.trim().to_string(),
                Err(e) => {
                    eprintln!(
                        "quiesce: no operation was prepared for {} ({}: {e})",
                        platform.name(),
                        id_path.display()
                    );
                    return EXIT_FAILED;
                }
            };
            let _ = std::fs::remove_file(&id_path);
            client.release(&id).map(|report| {
                print_json(&report);
                post_exit(report.status)
            })
        }
    };
    result.unwrap_or_else(|e| {
        eprintln!("quiesce: {e} (is `quiesce serve` running?)");
        EXIT_FAILED
    })
}

fn print_json<T: serde::Serialize>(v: &T) {
    if let Ok(text) = serde_json::to_string(v) {
        println!("{text}");
    }
}

fn write_id(path: &Path, id: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    writeln!(f, "{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_for_the_platform() {
        for (state, want) in [
            (OpState::Frozen, 0),
            (OpState::Prepared, 0),
            (OpState::Failed, 1),
            (OpState::Expired, 1),
            (OpState::Released, 1),
        ] {
            assert_eq!(pre_exit(state), want, "{state:?}");
        }
        for (status, want) in [
            (Status::Succeeded, 0),
            (Status::Degraded, 0),
            (Status::Failed, 1),
        ] {
            assert_eq!(post_exit(status), want, "{status:?}");
        }
    }

    #[test]
    fn platforms_that_freeze_themselves_get_a_syncfs_only() {
        for (p, scope) in [
            (Platform::Gcp, FreezeScope::Plan),
            (Platform::Aws, FreezeScope::Plan),
            (Platform::Kubernetes, FreezeScope::Plan),
            (Platform::QemuGa, FreezeScope::SyncOnly),
            (Platform::Azure, FreezeScope::SyncOnly),
        ] {
            assert_eq!(p.scope(), scope, "{}", p.name());
        }
    }
}
