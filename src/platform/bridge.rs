//! The bridge a platform runs as its pre/post script: `quiesce hook pre|post --platform P`.
//!
//! Pre asks the running `quiesce serve` to prepare an operation (pre hooks, holds kept
//! alive by the server, syncfs + freeze of the plan) and remembers its id in the state
//! directory; post releases it (thaw, post hooks, report, catalog). Both are the server's
//! ordinary prepare / release, so the operation is recorded like any other. If post never
//! comes, the server's guard thaws at the deadline and the operation is recorded as such.
//!
//! Only platforms that do not freeze the filesystems themselves are bridged here (Google's
//! guest flush on Linux, AWS's pre/post scripts, Kubernetes backup tools' exec hooks): there
//! quiesce's own freeze is what makes the snapshot file-system consistent. `docs/platforms/` describes each platform.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// A platform whose pre/post script can be the bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Platform {
    /// Google's guest agent (`/etc/google/snapshots/pre.sh`, `post.sh`).
    Gcp,
    /// AWS Data Lifecycle Manager pre/post scripts through a Systems Manager document.
    Aws,
    /// Pod exec hooks of Kubernetes backup tools (Velero, Kanister).
    Kubernetes,
}

impl Platform {
    pub fn name(self) -> &'static str {
        match self {
            Platform::Gcp => "gcp",
            Platform::Aws => "aws",
            Platform::Kubernetes => "kubernetes",
        }
    }
}

/// Which side of the snapshot the platform is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Side {
    Pre,
    Post,
}

/// Exit status for the platform: 0 is success, anything else is a script error for both
/// Google's agent and AWS's document.
const EXIT_OK: i32 = 0;
const EXIT_FAILED: i32 = 1;

/// Where pre leaves the operation id for post (the state directory is on tmpfs).
pub fn id_file(state_dir: &Path, platform: Platform) -> PathBuf {
    state_dir.join(format!("platform-{}.operation", platform.name()))
}

/// The exit status a prepare answer means for the platform.
pub fn pre_exit(http_status: u16, answer: &serde_json::Value) -> i32 {
    match (http_status, answer["state"].as_str()) {
        (200, Some("frozen" | "prepared")) => EXIT_OK,
        _ => EXIT_FAILED,
    }
}

/// The exit status a release answer means for the platform: a snapshot at a lower
/// consistency (degraded) is still a snapshot; the history says which consistency.
pub fn post_exit(http_status: u16, report: &serde_json::Value) -> i32 {
    match (http_status, report["status"].as_str()) {
        (200, Some("succeeded" | "degraded")) => EXIT_OK,
        _ => EXIT_FAILED,
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
    let socket = socket.unwrap_or(&cfg.server.socket);
    let id_path = id_file(&cfg.paths.state_dir, platform);
    match side {
        Side::Pre => {
            let id = format!("{}-{}", platform.name(), crate::pipeline::opid::generate());
            if let Err(e) = write_id(&id_path, &id) {
                eprintln!(
                    "quiesce: cannot record the operation id in {}: {e}",
                    id_path.display()
                );
                return EXIT_FAILED;
            }
            let body = deadline.map(|d| serde_json::json!({ "deadline": d }));
            let path = format!("/v1/operations/{id}/prepare");
            call(socket, &path, body.as_ref(), pre_exit)
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
            call(
                socket,
                &format!("/v1/operations/{id}/release"),
                None,
                post_exit,
            )
        }
    }
}

/// POST to the server, print its answer, and map it to the platform's exit status.
fn call(
    socket: &Path,
    path: &str,
    body: Option<&serde_json::Value>,
    exit: fn(u16, &serde_json::Value) -> i32,
) -> i32 {
    let timeout = Duration::from_secs(3600);
    match crate::server::client::call(socket, "POST", path, body, timeout) {
        Ok((status, answer)) => {
            println!("{answer}");
            exit(status, &answer)
        }
        Err(e) => {
            eprintln!("quiesce: {e} (is `quiesce serve` running?)");
            EXIT_FAILED
        }
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
    use serde_json::json;

    #[test]
    fn exit_statuses_for_the_platform() {
        for (status, state, want) in [
            (200, "frozen", 0),
            (200, "prepared", 0),
            (200, "failed", 1),
            (409, "failed", 1),
            (500, "frozen", 1),
        ] {
            assert_eq!(
                pre_exit(status, &json!({ "state": state })),
                want,
                "{state}"
            );
        }
        for (status, report, want) in [
            (200, "succeeded", 0),
            (200, "degraded", 0),
            (200, "failed", 1),
            (404, "succeeded", 1),
        ] {
            assert_eq!(
                post_exit(status, &json!({ "status": report })),
                want,
                "{report}"
            );
        }
        assert_eq!(post_exit(200, &json!(null)), 1);
    }
}
