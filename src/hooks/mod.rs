//! The hook runner: pre/post scripts with retries, timeouts that kill the whole process
//! group, bounded output capture and a clean environment.
//!
//! Each attempt:
//! - trust check ([`crate::trust::open_script`]); a missing script is `*-ScriptNotFound`, an
//!   unsafe one `InsufficientPermissionfor*-Script`, and nothing runs;
//! - argv as configured, never through a shell ([`process::Launch::trusted`]);
//! - run by its checked path (`$0` is the real path), a script without `#!` under
//!   `/bin/sh`, a `#!` script under its trust-checked interpreter (no execute bit needed);
//! - environment cleared, then `PATH` ([`process::SAFE_PATH`]), `HOME`, `USER`, `LOGNAME`,
//!   `SHELL` (password database), `LANG` (inherited or `C.UTF-8`), `QUIESCE_PHASE` (`pre` /
//!   `post`), `QUIESCE_OPERATION_ID`, `QUIESCE_HOOK`, `QUIESCE_ATTEMPT` (1-based),
//!   `QUIESCE_DEADLINE` (unix seconds, covering all attempts) and `QUIESCE_SCRIPT` (the
//!   configured path); cwd `/`; stdin `/dev/null`;
//! - its own process group; output drained continuously into tails of
//!   [`OUTPUT_TAIL_BYTES`]; at the deadline SIGTERM to the group, SIGKILL after
//!   `kill_grace`, reaped; leftovers of a normal exit are terminated too (see [`process`]).
//!
//! Retries really re-run the script (`retries = N` means up to N+1 attempts), all inside one
//! `timeout`. A timeout ends the script at once (no retry after it). The result's tails are
//! those of the last attempt; every attempt's tails are logged when it fails.

pub mod hold;

pub(crate) use crate::process::describe_end;
pub use crate::process::{AttemptEnd, OUTPUT_TAIL_BYTES};

use crate::codes::ErrorCode;
use crate::config::ScriptSpec;
use crate::process;
use crate::trust::{TrustError, TrustedFile};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Which half of a hook is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Pre,
    Post,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pre => "pre",
            Phase::Post => "post",
        }
    }
    pub fn not_found(self) -> ErrorCode {
        match self {
            Phase::Pre => ErrorCode::PreScriptNotFound,
            Phase::Post => ErrorCode::PostScriptNotFound,
        }
    }
    pub fn insufficient_permission(self) -> ErrorCode {
        match self {
            Phase::Pre => ErrorCode::InsufficientPermissionForPreScript,
            Phase::Post => ErrorCode::InsufficientPermissionForPostScript,
        }
    }
    pub fn failed(self) -> ErrorCode {
        match self {
            Phase::Pre => ErrorCode::PreScriptExecutionFailed,
            Phase::Post => ErrorCode::PostScriptExecutionFailed,
        }
    }
    pub fn timeout(self) -> ErrorCode {
        match self {
            Phase::Pre => ErrorCode::PreScriptTimeout,
            Phase::Post => ErrorCode::PostScriptTimeout,
        }
    }
}

/// What a script run is told about its context (exported as `QUIESCE_*` variables).
#[derive(Debug, Clone)]
pub struct RunContext {
    pub operation_id: String,
    pub hook: String,
    pub phase: Phase,
    /// Wall-clock deadline of the whole script (all attempts), exported as
    /// `QUIESCE_DEADLINE` in seconds since the epoch.
    pub deadline_unix: u64,
}

/// How long and how often.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Covers every attempt.
    pub timeout: Duration,
    /// Retries after a failure; 0 = one attempt.
    pub retries: u32,
    /// Time between SIGTERM and SIGKILL to the process group on timeout.
    pub kill_grace: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    pub number: u32,
    pub end: AttemptEnd,
    pub duration_ms: u64,
}

/// The result of running one script (all its attempts).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScriptResult {
    pub hook: String,
    pub phase: Phase,
    pub path: String,
    /// None when the script succeeded.
    pub error: Option<ErrorCode>,
    pub message: String,
    pub attempts: Vec<Attempt>,
    /// Last bytes of stdout (lossy UTF-8).
    pub stdout_tail: String,
    /// Last bytes of stderr (lossy UTF-8).
    pub stderr_tail: String,
    pub duration_ms: u64,
    /// Pre script: pids of its background processes still running when it exited, kept
    /// alive until the hook's post script has run. Post script: the pids of those that were
    /// still alive after it, and were then terminated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leftovers: Vec<i32>,
}

impl ScriptResult {
    pub fn succeeded(&self) -> bool {
        self.error.is_none()
    }
}

/// Least time left before the deadline for a retry to be started.
pub const MIN_RETRY_TIME: Duration = Duration::from_millis(100);

/// Run a script to completion: trust check, attempts with retries, all bounded by
/// `limits.timeout`. Never panics on script misbehaviour; every failure has a code.
pub fn run_script(spec: &ScriptSpec, ctx: &RunContext, limits: Limits) -> ScriptResult {
    let (result, kept) = run_attempts(spec, ctx, limits, false);
    drop(kept);
    result
}

/// Like [`run_script`], for a pre script whose background processes (a session holding a
/// lock) must outlive it: what is left of its process group after its last attempt exited
/// keeps running and is returned, to be ended with [`end_leftovers`] once the hook's post
/// script has run. Leftovers of an earlier failed attempt, and of a timed-out one, are
/// terminated as usual.
pub fn run_pre_keeping(
    spec: &ScriptSpec,
    ctx: &RunContext,
    limits: Limits,
) -> (ScriptResult, Option<process::KeptGroup>) {
    run_attempts(spec, ctx, limits, true)
}

/// Terminate a pre script's kept leftovers after its post script (`post`, when one ran),
/// recording in `post` which were still alive. Returns those pids.
pub fn end_leftovers(
    kept: process::KeptGroup,
    kill_grace: Duration,
    post: Option<&mut ScriptResult>,
) -> Vec<i32> {
    let pids = kept.end(kill_grace);
    if !pids.is_empty() {
        tracing::info!(pids = ?pids, "terminated what the pre script left running, after its post script");
    }
    if let Some(r) = post {
        r.leftovers = pids.clone();
    }
    pids
}

fn run_attempts(
    spec: &ScriptSpec,
    ctx: &RunContext,
    limits: Limits,
    keep: bool,
) -> (ScriptResult, Option<process::KeptGroup>) {
    let mut kept: Option<process::KeptGroup> = None;
    let start = Instant::now();
    let run = Attempts {
        spec,
        ctx,
        limits,
        keep,
        deadline: process::deadline_after(start, limits.timeout),
        deadline_unix: export_deadline(ctx, limits.timeout),
        max_attempts: limits.retries.saturating_add(1),
    };
    let mut result = ScriptResult::empty(spec, ctx);
    for number in 1..=run.max_attempts {
        let file = match open_checked(spec, ctx.phase) {
            Ok(f) => f,
            Err((code, message)) => {
                tracing::error!(hook = %ctx.hook, phase = ctx.phase.as_str(), code = %code, "{message}");
                result.error = Some(code);
                result.message = message;
                result.duration_ms = ms(start.elapsed());
                return (result, kept);
            }
        };
        let attempt_start = Instant::now();
        let (end, out, err) = run.one(&file, number, &mut kept);
        drop(file);
        let duration = attempt_start.elapsed();
        record_attempt(&mut result, ctx, number, &end, duration, out, err);
        if run.is_final(&mut result, &end, number) {
            break;
        }
    }
    result.duration_ms = ms(start.elapsed());
    if let Some(k) = &kept {
        result.leftovers = k.pids.clone();
        tracing::info!(
            hook = %ctx.hook, pids = ?k.pids,
            "the pre script left processes running; they are kept until its post script ran"
        );
    }
    (result, kept)
}

/// The attempts of one script, all inside one deadline.
struct Attempts<'a> {
    spec: &'a ScriptSpec,
    ctx: &'a RunContext,
    limits: Limits,
    /// Keep what the last attempt leaves running (a pre script's session).
    keep: bool,
    deadline: Instant,
    deadline_unix: u64,
    max_attempts: u32,
}

impl Attempts<'_> {
    /// Start attempt `number` and run it to its end (or the deadline): how it ended and its
    /// output tails. What an earlier attempt left in `kept` is ended first; what this one
    /// leaves (when keeping) replaces it.
    fn one(
        &self,
        file: &TrustedFile,
        number: u32,
        kept: &mut Option<process::KeptGroup>,
    ) -> (AttemptEnd, String, String) {
        let (spec, ctx) = (self.spec, self.ctx);
        let launch = script_launch(file, spec, ctx, number, self.deadline_unix);
        match launch.and_then(|l| l.spawn()) {
            Ok(mut p) => {
                if let Some(k) = kept.take() {
                    k.end(self.limits.kill_grace);
                }
                if self.keep {
                    p.keep_leftovers();
                }
                tracing::info!(
                    hook = %ctx.hook, phase = ctx.phase.as_str(), attempt = number,
                    of = self.max_attempts, pid = p.pid(), path = %crate::quote::quote_path(&spec.path),
                    "hook attempt started"
                );
                let end = p.run(self.deadline, self.limits.kill_grace);
                *kept = p.take_kept();
                (
                    end,
                    p.stdout_tail().to_string_lossy(),
                    p.stderr_tail().to_string_lossy(),
                )
            }
            Err(e) => (
                AttemptEnd::SpawnFailed {
                    error: format!(
                        "cannot execute {}: {e}",
                        crate::quote::quote_path(&spec.path)
                    ),
                },
                String::new(),
                String::new(),
            ),
        }
    }

    /// Whether attempt `number`, which ended with `end`, is the last one; if so, the result's
    /// error and message say how the script ended.
    ///
    /// No retry is started without time left for it to run: a script that keeps failing
    /// until its time runs out is a failure with its last exit status, and a timeout is
    /// reported only when an attempt was actually cut by the deadline.
    fn is_final(&self, result: &mut ScriptResult, end: &AttemptEnd, number: u32) -> bool {
        // Quoted only for the message of the attempt that ends the script.
        let path = || crate::quote::quote_path(&self.spec.path);
        let max = self.max_attempts;
        let last = number == max
            || self.deadline.saturating_duration_since(Instant::now()) < MIN_RETRY_TIME;
        match end {
            AttemptEnd::Exited { code: 0 } => {
                result.message = format!("{} succeeded on attempt {number} of {max}", path());
            }
            AttemptEnd::TimedOut => {
                result.error = Some(self.ctx.phase.timeout());
                result.message = format!(
                    "{} did not finish within {} (attempt {number} of {max} was killed \
                     with its process group)",
                    path(),
                    humantime::format_duration(self.limits.timeout)
                );
            }
            other if last => {
                result.error = Some(self.ctx.phase.failed());
                result.message = format!(
                    "{} failed after {number} attempt(s): {}{}",
                    path(),
                    describe_end(other),
                    stderr_hint(&result.stderr_tail)
                );
            }
            _ => return false,
        }
        true
    }
}

impl ScriptResult {
    /// A result with no attempts yet.
    pub(crate) fn empty(spec: &ScriptSpec, ctx: &RunContext) -> ScriptResult {
        ScriptResult {
            hook: ctx.hook.clone(),
            phase: ctx.phase,
            path: spec.path.display().to_string(),
            error: None,
            message: String::new(),
            attempts: Vec::new(),
            stdout_tail: String::new(),
            stderr_tail: String::new(),
            duration_ms: 0,
            leftovers: Vec::new(),
        }
    }
}

/// Check a hook's pre and post scripts (existence, trust, `#!` interpreter) before anything
/// runs. Returns the first problem and the phase it belongs to: a hook whose post script is
/// unusable must not run its pre (nothing could resume the application afterwards).
pub fn validate(hook: &crate::config::HookConfig) -> Option<(Phase, ErrorCode, String)> {
    [(Phase::Pre, &hook.pre), (Phase::Post, &hook.post)]
        .into_iter()
        .find_map(|(phase, spec)| {
            let spec = spec.as_ref()?;
            open_checked(spec, phase)
                .err()
                .map(|(code, message)| (phase, code, message))
        })
}

/// Trust-check `spec.path`, mapping refusals to the phase's codes.
pub(crate) fn open_checked(
    spec: &ScriptSpec,
    phase: Phase,
) -> Result<TrustedFile, (ErrorCode, String)> {
    crate::trust::open_script(&spec.path).map_err(|e| match &e {
        TrustError::NotFound { .. } => (phase.not_found(), e.to_string()),
        TrustError::Insecure { .. } => (phase.insufficient_permission(), e.to_string()),
    })
}

/// The launch of one attempt: the checked descriptor, argv, and the `QUIESCE_*` environment.
pub(crate) fn script_launch(
    file: &TrustedFile,
    spec: &ScriptSpec,
    ctx: &RunContext,
    attempt: u32,
    deadline_unix: u64,
) -> std::io::Result<process::Launch> {
    let launch = process::Launch::trusted(file, &spec.args)?;
    let launch = match ctx.phase {
        Phase::Pre => launch.interruptible(),
        Phase::Post => launch,
    };
    let launch = user_environment()
        .into_iter()
        .fold(launch, |l, (k, v)| l.env(k, v));
    Ok(launch
        .env("QUIESCE_PHASE", ctx.phase.as_str())
        .env("QUIESCE_OPERATION_ID", &ctx.operation_id)
        .env("QUIESCE_HOOK", &ctx.hook)
        .env("QUIESCE_ATTEMPT", attempt.to_string())
        .env("QUIESCE_DEADLINE", deadline_unix.to_string()))
}

/// The login-like part of a hook's environment, as Azure's agent passes it: `HOME`, `USER`,
/// `LOGNAME` and `SHELL` of the running user from the password database (root: `/root`,
/// `root`, its shell), and `LANG` inherited from quiesce or `C.UTF-8`. `PATH` is
/// [`process::SAFE_PATH`]; the `QUIESCE_*` variables are added by [`script_launch`].
pub fn user_environment() -> Vec<(&'static str, String)> {
    let uid = rustix::process::getuid().as_raw();
    let entry = std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|text| passwd_entry(&text, uid));
    let (name, home, shell) = entry.unwrap_or_else(|| {
        if uid == 0 {
            ("root".into(), "/root".into(), "/bin/sh".into())
        } else {
            (uid.to_string(), "/".into(), "/bin/sh".into())
        }
    });
    let lang = std::env::var("LANG")
        .ok()
        .filter(|l| !l.is_empty() && !l.contains(['\n', '\0']))
        .unwrap_or_else(|| "C.UTF-8".into());
    vec![
        ("HOME", home),
        ("USER", name.clone()),
        ("LOGNAME", name),
        ("SHELL", shell),
        ("LANG", lang),
    ]
}

/// Name, home and shell of `uid` in `/etc/passwd` text.
fn passwd_entry(text: &str, uid: u32) -> Option<(String, String, String)> {
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 7 && f[2].parse() == Ok(uid))
            .then(|| (f[0].to_string(), f[5].to_string(), f[6].to_string()))
    })
}

/// `ctx.deadline_unix`, or now + `timeout` (rounded up) when the caller left it at 0.
pub(crate) fn export_deadline(ctx: &RunContext, timeout: Duration) -> u64 {
    if ctx.deadline_unix != 0 {
        return ctx.deadline_unix;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    deadline_unix(now, timeout)
}

/// `QUIESCE_DEADLINE` for a script started `now` (since the epoch) with `timeout`: whole
/// seconds, rounded up, saturating.
pub fn deadline_unix(now: Duration, timeout: Duration) -> u64 {
    now.saturating_add(timeout).as_secs().saturating_add(1)
}

/// Log one attempt and add it to `result` (its output tails become the result's).
pub(crate) fn record_attempt(
    result: &mut ScriptResult,
    ctx: &RunContext,
    number: u32,
    end: &AttemptEnd,
    duration: Duration,
    out: String,
    err: String,
) {
    log_attempt(ctx, number, end, duration, &out, &err);
    result.attempts.push(Attempt {
        number,
        end: end.clone(),
        duration_ms: ms(duration),
    });
    result.stdout_tail = out;
    result.stderr_tail = err;
}

pub(crate) fn log_attempt(
    ctx: &RunContext,
    number: u32,
    end: &AttemptEnd,
    duration: Duration,
    stdout: &str,
    stderr: &str,
) {
    let ok = matches!(end, AttemptEnd::Exited { code: 0 });
    if ok {
        tracing::info!(
            hook = %ctx.hook, phase = ctx.phase.as_str(), attempt = number,
            duration_ms = ms(duration), "hook attempt succeeded"
        );
    } else {
        // The tails are logged escaped (`?`): hook output is data, and a newline or a
        // terminal escape in it must not forge log lines or rewrite the operator's terminal.
        tracing::warn!(
            hook = %ctx.hook, phase = ctx.phase.as_str(), attempt = number,
            duration_ms = ms(duration), end = %describe_end(end),
            stdout_tail = %crate::quote::quote(stdout), stderr_tail = %crate::quote::quote(stderr),
            "hook attempt failed"
        );
    }
}

/// "; stderr: <last non-empty line>" (at most 300 bytes), or nothing.
pub(crate) fn stderr_hint(stderr: &str) -> String {
    match stderr.lines().rev().map(str::trim).find(|l| !l.is_empty()) {
        Some(line) => {
            let mut cut = line.len().min(300);
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            // Escaped: the hint ends up in messages printed to terminals and logs, and a
            // control character (a terminal escape, a carriage return) must not act there.
            let shown = crate::quote::quote(&line[..cut]);
            format!("; stderr: {shown}")
        }
        None => String::new(),
    }
}

pub(crate) use crate::time::ms;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_lookup() {
        let text = "root:x:0:0:root:/root:/bin/bash\nbob:x:1000:1000::/home/bob:/bin/zsh\n";
        assert_eq!(
            passwd_entry(text, 1000),
            Some(("bob".into(), "/home/bob".into(), "/bin/zsh".into()))
        );
        assert_eq!(passwd_entry(text, 0).unwrap().1, "/root");
        assert_eq!(passwd_entry(text, 7), None);
        assert_eq!(passwd_entry("broken:line\n", 0), None);
    }
}
