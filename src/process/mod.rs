//! Process supervision shared by the hook runner, hold mode and the `command` snapshot provider:
//! spawn in a fresh process group with a clean environment, drain stdout/stderr continuously
//! into bounded tails, wait with a deadline, kill the whole tree, reap.
//!
//! One poll loop watches both output pipes and a pidfd of the child, so output never backs up
//! (a script writing gigabytes neither blocks nor grows memory: only the last
//! [`OUTPUT_TAIL_BYTES`] of each stream are kept) and the exit is
//! seen the moment it happens.
//!
//! **Process groups.** Every [`Process`] is the leader of its own process group; signals for
//! "the tree" go to the whole group. Group signals are sent only while the leader is unreaped
//! (an unreaped leader, even a zombie, keeps the group id from being reused) or while
//! leftovers of the reaped leader still keep the id allocated (see [`Process::finish`]), so a
//! group signal never reaches an unrelated process.
//!
//! **Leftovers after a normal exit** (see [`Process::finish`]): when the leader exits, any
//! member of its process group still alive (a background `cmd &` the script forgot) is
//! terminated: SIGTERM, then SIGKILL after the grace period, verified by pid. Nothing a hook
//! started survives it, and a post script never runs beside leftovers of its pre script.
//! Output those leftovers write before dying still lands in the tails. A process that left
//! the group on purpose (`setsid`, i.e. a real daemon) is not ours to kill (so a script that
//! starts a daemon must return only once it has detached, as `pg_ctl -w start` or
//! `systemctl start` do; a plain `cmd &` is a leftover); if such a daemon holds the
//! output pipes, quiesce reads what is there for [`LINGER`] and then closes its read ends
//! (the daemon gets `EPIPE`/`SIGPIPE` on its next write) instead of waiting for an EOF that
//! may never come.
//!
//! Survival of a process in uninterruptible sleep (a writer to a frozen filesystem) cannot be
//! prevented by any signal; quiesce waits [`KILL_WAIT`] for it, reports its pid, and hands
//! the leader to a reaper thread so no zombie is left once it can die.
//!
//! By concern: `spawn` starts a child ([`Launch`]); `capture` drains its output; `wait`
//! waits with a deadline; `terminate` ends the tree and its leftovers; `tree` finds the
//! tree's members in `/proc`; [`cgroup`] gives each tree its own cgroup v2.

mod capture;
pub mod cgroup;
mod spawn;
mod terminate;
mod tree;
mod wait;

pub use capture::Tail;
pub use spawn::{Launch, StdinMode};
pub use terminate::{KeptGroup, Leftovers};
pub use tree::{descendants, live_group_members, stat_state_pgrp};
pub use wait::{exit_of, LineWait};

use cgroup::Cgroup;
use rustix::process::{Pid, Signal};
use serde::{Deserialize, Serialize};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The only `PATH` children get.
pub const SAFE_PATH: &str = crate::trust::HOOK_PATH;

/// How long output pipes are still read after the process group is gone, when something
/// outside the group (a daemon that called `setsid`) keeps them open.
pub const LINGER: Duration = Duration::from_millis(50);

/// How long to wait for SIGKILLed processes to disappear before reporting them as unkillable.
pub const KILL_WAIT: Duration = Duration::from_secs(2);

/// Bytes of each stream kept for the report.
pub const OUTPUT_TAIL_BYTES: usize = 16 * 1024;

/// `start + d`, saturating far in the future instead of panicking on overflow (a configured
/// timeout may be absurdly large).
pub fn deadline_after(start: Instant, d: Duration) -> Instant {
    start
        .checked_add(d)
        .unwrap_or_else(|| start + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AttemptEnd {
    Exited { code: i32 },
    Signaled { signal: i32 },
    TimedOut,
    SpawnFailed { error: String },
}

/// "exited with code 3", "killed by signal 9", ...
pub(crate) fn describe_end(end: &AttemptEnd) -> String {
    match end {
        AttemptEnd::Exited { code } => format!("exited with code {code}"),
        AttemptEnd::Signaled { signal } => format!("killed by signal {signal}"),
        AttemptEnd::TimedOut => "timed out".to_string(),
        AttemptEnd::SpawnFailed { error } => error.clone(),
    }
}

/// A running (or exited, not yet reaped) child in its own process group.
#[derive(Debug)]
pub struct Process {
    pid: Pid,
    pidfd: OwnedFd,
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    stdout_tail: Tail,
    stderr_tail: Tail,
    capture: Vec<u8>,
    capture_limit: usize,
    capture_overflow: bool,
    watch: Option<Vec<u8>>,
    /// Waits end early once SIGTERM/SIGINT was received (see [`Launch::interruptible`]).
    interruptible: bool,
    line: Vec<u8>,
    line_overlong: bool,
    line_seen: bool,
    exit: Option<AttemptEnd>,
    reaped: bool,
    /// Leave leftovers of a normal exit running (see [`Process::keep_leftovers`]).
    keep: bool,
    /// What [`Process::run`] kept running (take it with [`Process::take_kept`]).
    kept: Option<KeptGroup>,
    /// Set while leftovers of an exited, reaped leader are being terminated: their presence
    /// keeps the group id allocated, so group signals stay safe (see `finish`).
    group_outlives_leader: bool,
    /// The group was already sent SIGKILL and waited for: a leader that survived that is
    /// in uninterruptible sleep, and a second round would only wait again.
    killed: bool,
    started: Instant,
    buf: Vec<u8>,
    /// The tree's own cgroup, when cgroup2 is usable.
    cgroup: Option<Arc<Cgroup>>,
    /// Without a cgroup: descendants seen by parent chain when the tree was signalled,
    /// remembered because they lose that chain once their parent dies.
    tracked: std::cell::RefCell<Vec<i32>>,
}

impl Process {
    /// After a normal exit, leave what is left of the group running and hand it over in
    /// [`Leftovers::kept`] instead of terminating it. A timed-out or killed script's tree is
    /// still terminated.
    pub fn keep_leftovers(&mut self) {
        self.keep = true;
    }

    /// The leftovers [`Process::run`] kept running, if any.
    pub fn take_kept(&mut self) -> Option<KeptGroup> {
        self.kept.take()
    }

    /// Pid of the leader, which is also the process group id.
    pub fn pid(&self) -> i32 {
        self.pid.as_raw_nonzero().get()
    }

    /// When the process was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn stdout_tail(&self) -> &Tail {
        &self.stdout_tail
    }

    pub fn stderr_tail(&self) -> &Tail {
        &self.stderr_tail
    }

    /// The first bytes of stdout kept by [`Launch::capture_stdout`], and whether more came.
    pub fn captured_stdout(&self) -> (&[u8], bool) {
        (&self.capture, self.capture_overflow)
    }

    /// The leader's exit, if already seen by the poll loop.
    pub fn exit(&self) -> Option<&AttemptEnd> {
        self.exit.as_ref()
    }

    /// Take the write end of stdin (hold mode keeps it outside the process object).
    pub fn take_stdin(&mut self) -> Option<OwnedFd> {
        self.stdin.take()
    }

    /// A duplicate of the pidfd, for non-blocking exit checks from elsewhere ([`exit_of`]).
    pub fn pidfd_dup(&self) -> std::io::Result<OwnedFd> {
        Ok(rustix::io::fcntl_dupfd_cloexec(&self.pidfd, 3)?)
    }
}

impl Drop for Process {
    /// A process object dropped without [`Process::finish`] (a caller bailed out or panicked)
    /// still takes its whole group down: SIGKILL, then reap (in the background if needed).
    fn drop(&mut self) {
        if !self.reaped {
            self.signal_group(Signal::KILL);
            let end = Instant::now() + Duration::from_millis(100);
            while self.exit.is_none() && Instant::now() < end {
                self.poll_once(Some(Duration::from_millis(10)), None);
            }
            self.reap();
        }
    }
}
