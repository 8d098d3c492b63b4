//! The hook runner: pre/post scripts with retries, timeouts that kill the whole process
//! group, bounded output capture and a clean environment (SPEC section 4).

pub mod hold;
pub mod output;

use crate::codes::ErrorCode;
use crate::config::ScriptSpec;
use serde::Serialize;
use std::time::{Duration, Instant};

/// Which half of a hook is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AttemptEnd {
    Exited { code: i32 },
    Signaled { signal: i32 },
    TimedOut,
    SpawnFailed { error: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub number: u32,
    pub end: AttemptEnd,
    pub duration_ms: u64,
}

/// The result of running one script (all its attempts).
#[derive(Debug, Clone, Serialize)]
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
}

impl ScriptResult {
    pub fn succeeded(&self) -> bool {
        self.error.is_none()
    }
}

/// Bytes of each stream kept for the report.
pub const OUTPUT_TAIL_BYTES: usize = 16 * 1024;

/// Run a script to completion: trust check, attempts with retries, all bounded by
/// `limits.timeout`. Never panics on script misbehaviour; every failure has a code.
pub fn run_script(spec: &ScriptSpec, ctx: &RunContext, limits: Limits) -> ScriptResult {
    let _ = (spec, ctx, limits, Instant::now());
    todo!("hooks::run_script")
}
