//! Hold mode (README, "Hold mode"): one process kept alive across the snapshot.
//!
//! The hook signals "quiesced" by printing a line `READY` on stdout within its pre timeout.
//! After the snapshot and thaw quiesce releases it: stdin is closed, then SIGTERM to its
//! process group after a grace period, then SIGKILL. Its exit status is the post result.
//!
//! # Contract for hook authors
//!
//! A held hook is one executable (the hook's `pre` script; trust-checked and started exactly
//! like any script, with `QUIESCE_PHASE=pre` and `QUIESCE_HOLD=1`), used for quiescing that
//! only lasts as long as a session does (MySQL `FLUSH TABLES WITH READ LOCK`, PostgreSQL
//! `pg_backup_start` ... `pg_backup_stop`):
//!
//! 1. Quiesce the application, then print one line that is exactly `READY` (a trailing `\r`
//!    is tolerated) on stdout, within the hook's timeout. Other output before and after is
//!    fine and is kept in the report's tails. Exiting before `READY` is a failed pre
//!    (`Pre-ScriptExecutionFailed`, retried if `retries` allows); no `READY` within the
//!    timeout is `Pre-ScriptTimeout` and the process group is killed.
//! 2. Keep the session open and wait, reading stdin. Do not exit: exiting before the release
//!    loses the hold (`HoldLost`), and the snapshot is not application-consistent.
//! 3. Release when stdin reaches EOF: undo the quiescing and exit 0. quiesce closes stdin
//!    after the snapshot and thaw; **if the agent dies, the pipe closes too**, so the hook
//!    releases on its own. The release work may take the post `timeout` less two
//!    `kill_grace` periods; then SIGTERM arrives (treat it as "release now" as well), and
//!    SIGKILL after another `kill_grace`.
//!    When the agent died, nobody reads the hook's stdout/stderr any more: a write to them
//!    then raises SIGPIPE, so after `READY` log to a file (or ignore SIGPIPE) rather than to
//!    stdout if the release work must finish in that case.
//! 4. The exit status is the post result: 0 is success, anything else (including death by
//!    SIGTERM without a handler, or SIGKILL) is `Post-ScriptExecutionFailed`; a release that
//!    runs past the post `timeout` is `Post-ScriptTimeout`.
//!
//! A minimal shell hook:
//!
//! ```sh
//! #!/bin/sh
//! trap 'release; exit 0' TERM
//! quiesce_app && echo READY || exit 1
//! cat >/dev/null        # returns at EOF: quiesce released us (or died)
//! release
//! ```
//!
//! While held, a thread drains the hook's stdout/stderr, so it never blocks on a full pipe.

use super::{
    describe_end, export_deadline, log_attempt, ms, open_checked, script_launch, stderr_hint,
    Attempt, AttemptEnd, Limits, RunContext, ScriptResult,
};
use crate::codes::ErrorCode;
use crate::config::ScriptSpec;
use crate::process::{self, LineWait, Process, StdinMode};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The line a held hook prints once quiesced.
pub const READY_LINE: &str = "READY";

/// A hook holding its quiesced state. Release it with [`Held::release`] after the thaw.
/// Dropping it without release closes stdin and kills the process group.
#[derive(Debug)]
pub struct Held {
    pid: i32,
    pidfd: OwnedFd,
    /// Write end of the hook's stdin; closing it is the release signal. Shared with
    /// [`ReleaseTrigger`]s so the release can start early from another thread.
    stdin: ReleaseTrigger,
    /// Dropping this wakes the drain thread, which then hands the process back.
    wake: Option<OwnedFd>,
    drain: Option<JoinHandle<Process>>,
    pre: ScriptResult,
    ready_at: Instant,
}

/// Starts the release of a held hook from anywhere: closes the write end of its stdin (the
/// release signal). Used to end a hold at the freeze guard's deadline while the snapshot
/// provider is still running, so a hold never outlives the freeze.
#[derive(Clone, Debug)]
pub struct ReleaseTrigger(Arc<Mutex<Option<OwnedFd>>>);

impl ReleaseTrigger {
    /// Close the hook's stdin (idempotent). Returns true if this call closed it.
    pub fn pull(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .is_some()
    }
}

/// Start a held hook and wait (within `limits.timeout`, retries included) for its `READY`.
// The result is returned once per hook, never in a hot path; the pipeline reports the
// ScriptResult as is.
#[allow(clippy::result_large_err)]
pub fn start_held(
    spec: &ScriptSpec,
    ctx: &RunContext,
    limits: Limits,
) -> Result<Held, ScriptResult> {
    let start = Instant::now();
    let run = HoldAttempts {
        spec,
        ctx,
        limits,
        start,
        deadline: process::deadline_after(start, limits.timeout),
        max_attempts: limits.retries.saturating_add(1),
    };
    let deadline_unix = export_deadline(ctx, limits.timeout);
    let mut result = ScriptResult::empty(spec, ctx);
    for number in 1..=run.max_attempts {
        let file = match open_checked(spec, ctx.phase) {
            Ok(f) => f,
            Err((code, message)) => return run.fail(result, code, message),
        };
        let attempt_start = Instant::now();
        let spawned = script_launch(&file, spec, ctx, number, deadline_unix).and_then(|l| {
            l.stdin(StdinMode::Pipe)
                .env("QUIESCE_HOLD", "1")
                .watch_line(READY_LINE)
                .spawn()
        });
        drop(file);
        let step = match spawned {
            Ok(p) => run.wait_ready(p, &mut result, number, attempt_start),
            Err(e) => run.spawn_failed(&e, &mut result, number, attempt_start),
        };
        match step {
            Step::Ready(p) => return hold(*p, result),
            Step::Failed(code, message) => return run.fail(result, code, message),
            Step::Retry => {}
        }
    }
    unreachable!("the last attempt always returns")
}

/// What one attempt of a held hook came to.
enum Step {
    /// It printed READY and is holding.
    Ready(Box<Process>),
    /// The hook failed: its code and message.
    Failed(ErrorCode, String),
    /// This attempt failed; another one may be started.
    Retry,
}

/// The attempts of one held hook, all inside one deadline.
struct HoldAttempts<'a> {
    spec: &'a ScriptSpec,
    ctx: &'a RunContext,
    limits: Limits,
    start: Instant,
    deadline: Instant,
    max_attempts: u32,
}

impl HoldAttempts<'_> {
    #[allow(clippy::result_large_err)]
    fn fail(
        &self,
        mut result: ScriptResult,
        code: ErrorCode,
        message: String,
    ) -> Result<Held, ScriptResult> {
        let ctx = self.ctx;
        tracing::error!(hook = %ctx.hook, phase = ctx.phase.as_str(), code = %code, "{message}");
        result.error = Some(code);
        result.message = message;
        result.duration_ms = ms(self.start.elapsed());
        Err(result)
    }

    fn path(&self) -> String {
        crate::quote::quote_path(&self.spec.path)
    }

    /// No more attempts: this was the last, or the deadline passed.
    fn exhausted(&self, number: u32) -> bool {
        number == self.max_attempts || Instant::now() >= self.deadline
    }

    fn spawn_failed(
        &self,
        e: &std::io::Error,
        result: &mut ScriptResult,
        number: u32,
        attempt_start: Instant,
    ) -> Step {
        let end = AttemptEnd::SpawnFailed {
            error: format!("cannot execute {}: {e}", self.path()),
        };
        record(
            result,
            self.ctx,
            number,
            &end,
            attempt_start.elapsed(),
            None,
        );
        if !self.exhausted(number) {
            return Step::Retry;
        }
        let msg = format!("held hook {}: {}", self.path(), describe_end(&end));
        Step::Failed(self.ctx.phase.failed(), msg)
    }

    /// Wait for READY, the exit, or the deadline.
    fn wait_ready(
        &self,
        mut p: Process,
        result: &mut ScriptResult,
        number: u32,
        attempt_start: Instant,
    ) -> Step {
        let (ctx, limits) = (self.ctx, self.limits);
        tracing::info!(
            hook = %ctx.hook, attempt = number, of = self.max_attempts, pid = p.pid(),
            path = %self.path(), "held hook started; waiting for READY"
        );
        match p.wait_for_line(self.deadline) {
            LineWait::Seen => {
                let attempt = Attempt {
                    number,
                    end: AttemptEnd::Exited { code: 0 },
                    duration_ms: ms(attempt_start.elapsed()),
                };
                result.attempts.push(attempt);
                result.message = format!(
                    "{} is holding (READY after {} ms, attempt {number} of {})",
                    self.path(),
                    ms(attempt_start.elapsed()),
                    self.max_attempts
                );
                result.stdout_tail = p.stdout_tail().to_string_lossy();
                result.stderr_tail = p.stderr_tail().to_string_lossy();
                result.duration_ms = ms(self.start.elapsed());
                tracing::info!(hook = %ctx.hook, pid = p.pid(), "held hook is READY");
                Step::Ready(Box::new(p))
            }
            LineWait::Exited(end) => {
                p.finish(limits.kill_grace);
                record(result, ctx, number, &end, attempt_start.elapsed(), Some(&p));
                if !self.exhausted(number) {
                    return Step::Retry;
                }
                let msg = format!(
                    "held hook {} {} before printing READY{}",
                    self.path(),
                    describe_end(&end),
                    stderr_hint(&result.stderr_tail)
                );
                Step::Failed(ctx.phase.failed(), msg)
            }
            LineWait::Deadline => {
                p.terminate(limits.kill_grace);
                p.finish(limits.kill_grace);
                let end = AttemptEnd::TimedOut;
                record(result, ctx, number, &end, attempt_start.elapsed(), Some(&p));
                let msg = format!(
                    "held hook {} did not print READY within {} (killed with its process group)",
                    self.path(),
                    humantime::format_duration(limits.timeout)
                );
                Step::Failed(ctx.phase.timeout(), msg)
            }
        }
    }
}

/// After stdin EOF: wait for the released hook to exit, escalating to SIGTERM and then
/// SIGKILL, all within `limits.timeout` from `start`. Returns how it ended (`TimedOut` when
/// it ignored EOF and SIGTERM for all that time) and what ended it.
fn wait_released(p: &mut Process, limits: Limits, start: Instant) -> (AttemptEnd, &'static str) {
    let deadline = process::deadline_after(start, limits.timeout);
    let stage = |d: Duration| process::deadline_after(Instant::now(), d).min(deadline);
    let mut how = "after stdin EOF";
    // The hook's own release work (e.g. pg_backup_stop waiting for WAL archiving) may use
    // the post timeout, less what SIGTERM and SIGKILL need after it.
    let eof_wait = eof_wait(limits.timeout, limits.kill_grace);
    let mut end = p.wait_exit(stage(eof_wait));
    if end.is_none() {
        how = "after SIGTERM";
        p.signal_group(rustix::process::Signal::TERM);
        end = p.wait_exit(stage(limits.kill_grace));
    }
    let mut timed_out = false;
    if end.is_none() {
        // Ignored EOF and SIGTERM for as long as it was given.
        how = "after SIGKILL";
        timed_out = Instant::now() >= deadline;
        p.signal_group(rustix::process::Signal::KILL);
        end = p.wait_exit(Instant::now() + process::KILL_WAIT);
    }
    let end = end.unwrap_or(AttemptEnd::TimedOut);
    (if timed_out { AttemptEnd::TimedOut } else { end }, how)
}

fn record(
    result: &mut ScriptResult,
    ctx: &RunContext,
    number: u32,
    end: &AttemptEnd,
    duration: Duration,
    p: Option<&Process>,
) {
    let (out, err) = p
        .map(|p| {
            (
                p.stdout_tail().to_string_lossy(),
                p.stderr_tail().to_string_lossy(),
            )
        })
        .unwrap_or_default();
    super::record_attempt(result, ctx, number, end, duration, out, err);
}

/// Move the READY process into its drain thread.
#[allow(clippy::result_large_err)]
fn hold(mut p: Process, pre: ScriptResult) -> Result<Held, ScriptResult> {
    let pid = p.pid();
    let setup = (|| -> std::io::Result<_> {
        let pidfd = p.pidfd_dup()?;
        let (wake_r, wake_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        Ok((pidfd, wake_r, wake_w))
    })();
    let (pidfd, wake_r, wake_w) = match setup {
        Ok(x) => x,
        Err(e) => {
            let mut pre = pre;
            p.terminate(Duration::from_millis(100));
            p.finish(Duration::from_millis(100));
            pre.error = Some(pre.phase.failed());
            pre.message = format!("cannot hold {}: {e}", pre.path);
            return Err(pre);
        }
    };
    let stdin = p.take_stdin();
    let hook = pre.hook.clone();
    let drain = std::thread::Builder::new()
        .name(format!("hold-{pid}"))
        .spawn(move || {
            let mut p = p;
            // Returns only when woken (release or drop); the exit, if any, is recorded.
            p.drain_until(wake_r.as_fd());
            if let Some(end) = p.exit() {
                tracing::warn!(hook = %hook, pid, end = %describe_end(end), "held hook had exited before release");
            }
            p
        });
    let drain = match drain {
        Ok(h) => h,
        Err(e) => {
            // The closure (and the process in it) was dropped: its Drop killed the group.
            let mut pre = pre;
            pre.error = Some(pre.phase.failed());
            pre.message = format!("cannot start the drain thread for {}: {e}", pre.path);
            return Err(pre);
        }
    };
    Ok(Held {
        pid,
        pidfd,
        stdin: ReleaseTrigger(Arc::new(Mutex::new(stdin))),
        wake: Some(wake_w),
        drain: Some(drain),
        pre,
        ready_at: Instant::now(),
    })
}

impl Held {
    /// Pid (and process group id) of the held hook.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The pre result: success, attempts, output until READY.
    pub fn pre_result(&self) -> &ScriptResult {
        &self.pre
    }

    /// How long the hook has been holding.
    pub fn held_for(&self) -> Duration {
        self.ready_at.elapsed()
    }

    /// A handle that starts this hook's release from another thread.
    pub fn release_trigger(&self) -> ReleaseTrigger {
        self.stdin.clone()
    }

    /// Non-blocking: `Some(reason)` when the held process already exited or was killed,
    /// i.e. the hold is lost and the snapshot is not application-consistent.
    pub fn lost(&self) -> Option<String> {
        process::exit_of(self.pidfd.as_fd()).map(|end| {
            format!(
                "held hook {} (pid {}) {} while holding",
                self.pre.path,
                self.pid,
                describe_end(&end)
            )
        })
    }

    /// Release the hook (after the snapshot and thaw): close its stdin, wait up to
    /// `limits.timeout` less two `limits.kill_grace` (at least one grace) for it to exit, then
    /// SIGTERM to its group and another grace, then
    /// SIGKILL; all within `limits.timeout`. Exit 0 is success, anything else
    /// `Post-ScriptExecutionFailed`, running past `limits.timeout` `Post-ScriptTimeout`.
    /// `ctx` is the post context (hook name, phase `Post`) the result is reported under.
    pub fn release(mut self, ctx: &RunContext, limits: Limits) -> ScriptResult {
        let start = Instant::now();
        let mut result = ScriptResult {
            hook: ctx.hook.clone(),
            phase: ctx.phase,
            path: self.pre.path.clone(),
            error: None,
            message: String::new(),
            attempts: Vec::new(),
            stdout_tail: String::new(),
            stderr_tail: String::new(),
            duration_ms: 0,
            leftovers: Vec::new(),
        };
        let was_lost = self.lost();
        // EOF on stdin: the release signal.
        self.stdin.pull();
        let mut p = self.take_process();
        tracing::info!(hook = %ctx.hook, pid = self.pid, held_ms = ms(self.held_for()), "releasing held hook");
        let (end, how) = wait_released(&mut p, limits, start);
        let left = p.finish(limits.kill_grace);
        let duration = start.elapsed();
        result.stdout_tail = p.stdout_tail().to_string_lossy();
        result.stderr_tail = p.stderr_tail().to_string_lossy();
        log_attempt(
            ctx,
            1,
            &end,
            duration,
            &result.stdout_tail,
            &result.stderr_tail,
        );
        result.attempts.push(Attempt {
            number: 1,
            end: end.clone(),
            duration_ms: ms(duration),
        });
        let lost_note = was_lost
            .map(|r| format!(" (hold was lost before release: {r})"))
            .unwrap_or_default();
        let left_note = if left.terminated.is_empty() {
            String::new()
        } else {
            format!("; terminated leftover processes {:?}", left.terminated)
        };
        match &end {
            AttemptEnd::Exited { code: 0 } => {
                result.message = format!(
                    "held hook {} released {how}{lost_note}{left_note}",
                    self.pre.path
                );
            }
            AttemptEnd::TimedOut => {
                result.error = Some(ctx.phase.timeout());
                result.message = format!(
                    "held hook {} did not finish its release within {} and was killed{lost_note}",
                    self.pre.path,
                    humantime::format_duration(limits.timeout)
                );
            }
            other => {
                result.error = Some(ctx.phase.failed());
                result.message = format!(
                    "held hook {} {} {how}{lost_note}{left_note}{}",
                    self.pre.path,
                    describe_end(other),
                    stderr_hint(&result.stderr_tail)
                );
            }
        }
        result.duration_ms = ms(duration);
        result
    }

    /// Stop the drain thread and take the process back.
    fn take_process(&mut self) -> Process {
        self.wake = None;
        let handle = self
            .drain
            .take()
            .expect("drain thread is present until release");
        match handle.join() {
            Ok(p) => p,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.drain.is_some() {
            self.stdin.pull();
            // Dropping the process kills its group and reaps it.
            drop(self.take_process());
        }
    }
}

/// How long a released hook may take after stdin EOF: its timeout less the two graces that
/// SIGTERM and SIGKILL need after it, at least one grace. Saturating.
pub fn eof_wait(timeout: Duration, kill_grace: Duration) -> Duration {
    timeout
        .saturating_sub(kill_grace.saturating_mul(2))
        .max(kill_grace)
}
