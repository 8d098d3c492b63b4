//! Waiting with a deadline: for the exit, for a watched line, or for the whole run.
use super::{AttemptEnd, Process};
use rustix::io::Errno;
use rustix::process::{WaitId, WaitIdOptions, WaitIdStatus};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

/// Outcome of [`Process::wait_for_line`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineWait {
    /// The watched line was printed; the process is running.
    Seen,
    /// The process exited first (not reaped yet; call [`Process::finish`]).
    Exited(AttemptEnd),
    /// The deadline passed; nothing was done to the process.
    Deadline,
}

impl Process {
    /// True when this process may be cut short and quiesce was asked to terminate.
    pub(super) fn interrupted(&self) -> bool {
        self.interruptible && crate::termination::requested()
    }

    /// How long one poll may sleep: interruptible waits wake at least every 100 ms, so a
    /// signal that lands just before `poll` is still noticed promptly.
    pub(super) fn poll_budget(&self, left: Duration) -> Duration {
        if self.interruptible {
            left.min(Duration::from_millis(100))
        } else {
            left
        }
    }

    /// Drain output until the leader exits or `deadline` passes. Returns its exit (the
    /// process is not reaped: call [`finish`](Self::finish)) or `None` at the deadline.
    pub fn wait_exit(&mut self, deadline: Instant) -> Option<AttemptEnd> {
        loop {
            if let Some(e) = &self.exit {
                return Some(e.clone());
            }
            let now = Instant::now();
            if now >= deadline || self.interrupted() {
                return None;
            }
            self.poll_once(Some(self.poll_budget(deadline - now)), None);
        }
    }

    /// Drain output until the line given to [`Launch::watch_line`](super::Launch::watch_line) appears on stdout, the
    /// leader exits, or `deadline` passes.
    pub fn wait_for_line(&mut self, deadline: Instant) -> LineWait {
        loop {
            if self.line_seen {
                return LineWait::Seen;
            }
            if let Some(e) = &self.exit {
                return LineWait::Exited(e.clone());
            }
            let now = Instant::now();
            if now >= deadline || self.interrupted() {
                return LineWait::Deadline;
            }
            self.poll_once(Some(self.poll_budget(deadline - now)), None);
        }
    }

    /// Run to completion: wait until `deadline`, and if the process is still running then,
    /// terminate the tree ([`terminate`](Self::terminate)) and report [`AttemptEnd::TimedOut`].
    /// Always finishes (leftovers killed, leader reaped).
    pub fn run(&mut self, deadline: Instant, kill_grace: Duration) -> AttemptEnd {
        let end = match self.wait_exit(deadline) {
            Some(end) => end,
            None => {
                self.terminate(kill_grace);
                AttemptEnd::TimedOut
            }
        };
        let left = self.finish(kill_grace);
        self.kept = left.kept;
        if !left.terminated.is_empty() || left.pipes_abandoned {
            tracing::warn!(
                pid = self.pid(),
                terminated = ?left.terminated,
                unkillable = ?left.unkillable,
                pipes_abandoned = left.pipes_abandoned,
                "process left work behind after its exit; cleaned up"
            );
        }
        end
    }

    /// Reap the leader: at once if it exited, else in a background thread (it may sit in
    /// uninterruptible sleep; blocking here would stall the agent).
    pub(super) fn reap(&mut self) {
        if self.reaped {
            return;
        }
        self.reaped = true;
        if self.exit.is_none() {
            if let Ok(Some(st)) = rustix::process::waitid(
                WaitId::PidFd(self.pidfd.as_fd()),
                WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
            ) {
                self.exit = Some(end_of(&st));
                return;
            }
            let Ok(fd) = self.pidfd_dup() else { return };
            let pid = self.pid();
            tracing::warn!(pid, "leader not dead yet; reaping it in the background");
            let _ = std::thread::Builder::new()
                .name(format!("reap-{pid}"))
                .spawn(move || {
                    let _ =
                        rustix::process::waitid(WaitId::PidFd(fd.as_fd()), WaitIdOptions::EXITED);
                });
            return;
        }
        while let Err(Errno::INTR) =
            rustix::process::waitid(WaitId::PidFd(self.pidfd.as_fd()), WaitIdOptions::EXITED)
        {
        }
    }
}

/// Non-blocking: how the process behind `pidfd` ended, or `None` while it runs. Does not
/// reap. A pidfd whose process was already reaped reports `SpawnFailed` with the error.
pub fn exit_of(pidfd: BorrowedFd<'_>) -> Option<AttemptEnd> {
    match rustix::process::waitid(
        WaitId::PidFd(pidfd),
        WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT,
    ) {
        Ok(Some(st)) => Some(end_of(&st)),
        Ok(None) => None,
        Err(e) => Some(AttemptEnd::SpawnFailed {
            error: format!("no longer waitable: {e}"),
        }),
    }
}

pub(super) fn end_of(st: &WaitIdStatus) -> AttemptEnd {
    if let Some(code) = st.exit_status() {
        AttemptEnd::Exited { code }
    } else if let Some(signal) = st.terminating_signal() {
        AttemptEnd::Signaled { signal }
    } else {
        AttemptEnd::Exited { code: -1 }
    }
}
