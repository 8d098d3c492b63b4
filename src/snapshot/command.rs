//! The `command` provider: any external command, run with a timeout while the set is frozen.
//!
//! The command runs with the same process machinery as hooks ([`crate::process`]):
//! argv without a shell, its own process group (killed as a whole at the timeout), cwd `/`,
//! stdin `/dev/null`, and an environment cleared except:
//!
//! | variable | value |
//! |---|---|
//! | `PATH` | [`SAFE_PATH`](crate::process::SAFE_PATH) (a bare command name is looked up there) |
//! | `QUIESCE_OPERATION_ID` | the operation id |
//! | `QUIESCE_FROZEN_MOUNTS` | mount points of the frozen filesystems, `:`-separated |
//! | `QUIESCE_FROZEN_DEVICES` | their sources (e.g. `/dev/loop3`), `:`-separated, same order |
//! | `QUIESCE_FROZEN_COUNT` | how many filesystems are frozen (0 when none) |
//!
//! Every non-empty line of stdout (trimmed) is the id of one snapshot taken. Exit 0 is
//! success; anything else is `SnapshotFailed` with the end of stderr in the message; running
//! past the timeout is `SnapshotTimeout`, and the command's whole process group is killed.
//! Note that cloud CLIs usually find their credentials through `HOME` or their own variables,
//! which are not passed: wrap them in a script that sets what they need.
use super::{Provider, SnapshotContext, SnapshotError};
use crate::process::AttemptEnd;
use crate::process::{deadline_after, Launch};
use crate::report::SnapshotRef;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Default time between SIGTERM and SIGKILL when the command times out.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(2);

/// Stdout kept for parsing snapshot ids; a command printing more fails (its ids would be
/// incomplete).
pub const MAX_ID_OUTPUT: usize = 1024 * 1024;

/// Bytes of stderr quoted in an error message.
const STDERR_IN_MESSAGE: usize = 2048;

pub struct CommandProvider {
    argv: Vec<String>,
    kill_grace: Duration,
}

impl CommandProvider {
    pub fn new(argv: Vec<String>) -> Self {
        CommandProvider {
            argv,
            kill_grace: DEFAULT_KILL_GRACE,
        }
    }

    /// Time between SIGTERM and SIGKILL at the timeout (default [`DEFAULT_KILL_GRACE`]).
    pub fn with_kill_grace(mut self, grace: Duration) -> Self {
        self.kill_grace = grace;
        self
    }

    fn display(&self) -> String {
        self.argv.join(" ")
    }

    /// The command with the environment that tells it what is frozen.
    fn launch(&self, ctx: &SnapshotContext<'_>) -> Launch {
        let mounts = join(
            ctx.frozen
                .iter()
                .map(|t| t.mount_point.to_str().unwrap_or("")),
        );
        let devices = join(ctx.frozen.iter().map(|t| t.source.as_str()));
        Launch::argv(&self.argv)
            .interruptible()
            .env("QUIESCE_OPERATION_ID", ctx.operation_id)
            .env("QUIESCE_FROZEN_MOUNTS", mounts)
            .env("QUIESCE_FROZEN_DEVICES", devices)
            .env("QUIESCE_FROZEN_COUNT", ctx.frozen.len().to_string())
            .capture_stdout(MAX_ID_OUTPUT)
    }
}

fn join<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items.collect::<Vec<_>>().join(":")
}

/// The last `max` bytes of `t` (or a little less, at a character boundary).
fn end_of_text(t: &str, max: usize) -> &str {
    let mut cut = t.len().saturating_sub(max);
    while !t.is_char_boundary(cut) {
        cut += 1;
    }
    &t[cut..]
}

impl Provider for CommandProvider {
    fn name(&self) -> &'static str {
        "command"
    }
    fn must_not_freeze(&self) -> Vec<PathBuf> {
        Vec::new()
    }
    fn take(&mut self, ctx: &SnapshotContext<'_>) -> Result<Vec<SnapshotRef>, SnapshotError> {
        if self.argv.is_empty() || self.argv[0].is_empty() {
            return Err(SnapshotError::EmptyCommand);
        }
        let start = Instant::now();
        let mut p = self
            .launch(ctx)
            .spawn()
            .map_err(|source| SnapshotError::CommandStart {
                command: self.display(),
                source,
            })?;
        tracing::info!(pid = p.pid(), command = %self.display(), frozen = ctx.frozen.len(), "snapshot command started");
        let end = p.run(deadline_after(start, ctx.timeout), self.kill_grace);
        let elapsed = start.elapsed();
        // Quoted once: the command's output goes into log lines and messages.
        let stderr = crate::quote::quote(&p.stderr_tail().to_string_lossy());
        let stderr_tail = end_of_text(stderr.trim(), STDERR_IN_MESSAGE).to_string();
        match end {
            AttemptEnd::Exited { code: 0 } => {}
            AttemptEnd::TimedOut if crate::termination::requested() => {
                return Err(SnapshotError::CommandInterrupted {
                    command: self.display(),
                    stderr: stderr_tail,
                });
            }
            AttemptEnd::TimedOut => {
                tracing::error!(command = %self.display(), stderr = %stderr, "snapshot command timed out");
                return Err(SnapshotError::CommandTimedOut {
                    command: self.display(),
                    timeout: ctx.timeout,
                    stderr: stderr_tail,
                });
            }
            other => {
                tracing::error!(command = %self.display(), end = ?other, stderr = %stderr, "snapshot command failed");
                return Err(SnapshotError::CommandFailed {
                    command: self.display(),
                    end: crate::process::describe_end(&other),
                    stderr: stderr_tail,
                });
            }
        }
        let (out, overflow) = p.captured_stdout();
        if overflow {
            return Err(SnapshotError::TooMuchOutput {
                command: self.display(),
                limit: MAX_ID_OUTPUT,
            });
        }
        let ids: Vec<SnapshotRef> = String::from_utf8_lossy(out)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|id| SnapshotRef {
                provider: "command".to_string(),
                id: id.to_string(),
            })
            .collect();
        if ids.is_empty() {
            tracing::warn!(command = %self.display(), "snapshot command succeeded but printed no snapshot id");
        }
        tracing::info!(command = %self.display(), ms = elapsed.as_millis() as u64, ids = ids.len(), "snapshot command succeeded");
        Ok(ids)
    }
}
