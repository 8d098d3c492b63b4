//! Realistic `Report` values for the catalog and metrics tests: what the pipeline produces
//! for a clean run, a run whose pre hook failed (degraded to file-system consistency), and
//! a run whose snapshot failed.
#![allow(dead_code)]

use quiesce::codes::{ErrorCode, Problem};
use quiesce::hooks::{Attempt, AttemptEnd, Phase, ScriptResult};
use quiesce::report::{Consistency, Report, SnapshotRef, Status, Timings};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn at(unix: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(unix)
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

pub fn script(
    hook: &str,
    phase: Phase,
    error: Option<ErrorCode>,
    attempts: &[(AttemptEnd, u64)],
    stdout: &str,
    stderr: &str,
) -> ScriptResult {
    ScriptResult {
        hook: hook.to_string(),
        phase,
        path: format!("/etc/quiesce/hooks/{hook}-{}.sh", phase.as_str()),
        error,
        message: match error {
            None => "ok".to_string(),
            Some(c) => format!("{c} after {} attempt(s)", attempts.len()),
        },
        attempts: attempts
            .iter()
            .enumerate()
            .map(|(i, (end, ms))| Attempt {
                number: i as u32 + 1,
                end: end.clone(),
                duration_ms: *ms,
            })
            .collect(),
        stdout_tail: stdout.to_string(),
        stderr_tail: stderr.to_string(),
        duration_ms: attempts.iter().map(|(_, ms)| ms).sum(),
        leftovers: Vec::new(),
    }
}

fn base(op: &str, started: SystemTime, total_ms: u64) -> Report {
    Report {
        operation_id: op.to_string(),
        caller: Default::default(),
        started_at: rfc3339(started),
        finished_at: rfc3339(started + Duration::from_millis(total_ms)),
        status: Status::Succeeded,
        consistency: Consistency::Application,
        target_consistency: Consistency::Application,
        errors: Vec::new(),
        warnings: Vec::new(),
        snapshots: Vec::new(),
        timings: Timings {
            total_ms,
            ..Timings::default()
        },
        frozen_ms: None,
        frozen: Vec::new(),
        hooks: Vec::new(),
        verification: None,
    }
}

/// Everything worked: postgres checkpointed, /var/lib/postgresql frozen 42 ms, btrfs
/// snapshot taken.
pub fn succeeded(op: &str, started: SystemTime) -> Report {
    let mut r = base(op, started, 1850);
    r.timings.pre_ms = Some(1200);
    r.timings.freeze_ms = Some(35);
    r.timings.snapshot_ms = Some(9);
    r.timings.thaw_ms = Some(1);
    r.timings.post_ms = Some(600);
    r.frozen_ms = Some(42);
    r.frozen = vec!["/var/lib/postgresql".to_string()];
    r.snapshots = vec![SnapshotRef {
        provider: "btrfs".to_string(),
        id: format!("/srv/.snapshots/{op}"),
    }];
    r.hooks = vec![
        script(
            "postgres",
            Phase::Pre,
            None,
            &[(AttemptEnd::Exited { code: 0 }, 1180)],
            "CHECKPOINT\n",
            "",
        ),
        script(
            "postgres",
            Phase::Post,
            None,
            &[(AttemptEnd::Exited { code: 0 }, 590)],
            "",
            "",
        ),
    ];
    r
}

/// The mysql pre hook failed twice (exit 1, then timed out): the freeze still held around
/// the snapshot, so file-system consistency, degraded.
pub fn degraded(op: &str, started: SystemTime) -> Report {
    let mut r = base(op, started, 31_200);
    r.status = Status::Degraded;
    r.consistency = Consistency::FileSystem;
    r.timings.pre_ms = Some(30_000);
    r.timings.freeze_ms = Some(48);
    r.timings.snapshot_ms = Some(1100);
    r.timings.thaw_ms = Some(1);
    r.timings.post_ms = Some(40);
    r.frozen_ms = Some(1149);
    r.frozen = vec!["/var/lib/mysql".to_string(), "/srv/data".to_string()];
    r.snapshots = vec![SnapshotRef {
        provider: "command".to_string(),
        id: format!("snap-{op}"),
    }];
    r.hooks = vec![
        script(
            "mysql",
            Phase::Pre,
            Some(ErrorCode::PreScriptTimeout),
            &[
                (AttemptEnd::Exited { code: 1 }, 2000),
                (AttemptEnd::TimedOut, 28_000),
            ],
            "flushing tables\n",
            "ERROR 2002 (HY000): Can't connect to local server through socket\n\"/run/mysqld/mysqld.sock\"\n",
        ),
        script(
            "mysql",
            Phase::Post,
            None,
            &[(AttemptEnd::Exited { code: 0 }, 40)],
            "",
            "",
        ),
    ];
    r.errors = vec![Problem::new(
        ErrorCode::PreScriptTimeout,
        "pre script did not finish within 30s (attempt 2 of 2)",
    )
    .with_hook("mysql")];
    r.warnings = vec![quiesce::codes::Warning::new(
        "unknown key `retires` in [hooks.mysql]",
    )];
    r
}

/// The snapshot command failed and a post hook failed too: nothing usable.
pub fn failed(op: &str, started: SystemTime) -> Report {
    let mut r = base(op, started, 5_400);
    r.status = Status::Failed;
    r.consistency = Consistency::None;
    r.timings.pre_ms = Some(300);
    r.timings.freeze_ms = Some(40);
    r.timings.snapshot_ms = Some(5_000);
    r.timings.thaw_ms = Some(1);
    r.timings.post_ms = Some(59);
    r.frozen_ms = Some(5_041);
    r.frozen = vec!["/srv/data".to_string()];
    r.hooks = vec![
        script(
            "app",
            Phase::Pre,
            None,
            &[(AttemptEnd::Exited { code: 0 }, 300)],
            "",
            "",
        ),
        script(
            "app",
            Phase::Post,
            Some(ErrorCode::PostScriptExecutionFailed),
            &[(AttemptEnd::Signaled { signal: 9 }, 59)],
            "",
            "resuming writers\nKilled\n",
        ),
    ];
    r.errors = vec![
        Problem::new(
            ErrorCode::SnapshotFailed,
            "az snapshot create exited 1: (AuthorizationFailed) \"client\" lacks permission",
        ),
        Problem::new(
            ErrorCode::PostScriptExecutionFailed,
            "post script killed by signal 9",
        )
        .with_hook("app"),
    ];
    r
}
