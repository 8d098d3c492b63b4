//! `quiesce verify`: prove that a snapshot restores, on a disposable view of it.
//!
//! A verification
//! 1. takes the operation lock (never while a freeze is in progress) and cleans what a
//!    killed verification left behind ([`leftovers`]);
//! 2. lowers its own CPU and I/O priority (nice 10, idle I/O class), inherited by every
//!    server and check it starts;
//! 3. makes a writable view of every snapshot of the run (btrfs: a writable snapshot of each
//!    read-only snapshot, beside it in the snapshot directory);
//! 4. runs the verifiers on the views: the built-in PostgreSQL verifier ([`postgres`]) and the
//!    user's verifier scripts (trusted like hooks, given `QUIESCE_VERIFY_VIEW`);
//! 5. tears everything down, on every path, and records the result in the catalog:
//!    `verified`, `verification failed: CHECK: WHY`; a snapshot without a record is
//!    `not verified`.
//!
//! Everything that must be undone is written to `state_dir/verify.json` *before* it is made,
//! so a verification killed with SIGKILL is cleaned by the next `quiesce verify` or
//! `quiesce recover`.

pub mod leftovers;
pub mod mariadb;
pub mod postgres;
pub mod server;
pub mod view;

use crate::catalog::{Catalog, VerificationRow};
use crate::config::Config;
use crate::hooks::{self, Phase, RunContext};
pub use crate::report::{Verification as VerifyReport, VerifyCheck as Check};
use leftovers::Leftovers;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};
pub use view::View;

/// Which snapshot to verify.
#[derive(Debug, Clone)]
pub enum Which {
    Id(String),
    Latest,
}

/// An error before anything could be verified (nothing is recorded).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct VerifyError(pub String);

/// `original` seen through the views: the same place inside the view of the volume that
/// holds it (the longest original prefix wins).
pub fn map_into_views(original: &Path, views: &[View]) -> Option<PathBuf> {
    views
        .iter()
        .filter(|v| v.original.is_absolute())
        .filter_map(|v| {
            original
                .strip_prefix(&v.original)
                .ok()
                .map(|rest| (v.original.components().count(), v.path.join(rest)))
        })
        .max_by_key(|(n, _)| *n)
        .map(|(_, p)| p)
}

/// Verify a snapshot (all the snapshots of its run) and record the result.
pub fn run(cfg: &Config, which: Which) -> Result<VerifyReport, VerifyError> {
    let lock = acquire_lock(&cfg.paths.state_dir, Duration::from_secs(30))?;
    leftovers::clean(&cfg.paths.state_dir);
    lower_priority();
    let started = SystemTime::now();
    let t0 = Instant::now();
    let deadline = t0 + cfg.verify.timeout;
    let verify_id = format!(
        "{}-{}",
        crate::time::compact_utc(started).unwrap_or_default(),
        std::process::id()
    );
    let mut record = Leftovers::new(&cfg.paths.state_dir);
    let v = &cfg.verify;
    let needs_files = v.postgres.is_some() || v.mariadb.is_some() || !v.hooks.is_empty();
    let made = view::make(cfg, &which, &verify_id, needs_files, &mut record);
    let view::Views {
        provider,
        snapshots,
        views,
        mut checks,
    } = match made {
        Ok(m) => m,
        Err(e) => {
            record.clean_all();
            return Err(e);
        }
    };
    if checks.iter().all(|c| c.ok) {
        checks.extend(run_verifiers(
            cfg,
            &views,
            &verify_id,
            deadline,
            &mut record,
        ));
    }
    if checks.is_empty() {
        checks.push(Check {
            name: "view".into(),
            ok: true,
            message: "the view was made; no verifier is configured".into(),
            duration_ms: 0,
        });
    }
    record.clean_all();
    drop(lock);

    let failed: Vec<&Check> = checks.iter().filter(|c| !c.ok).collect();
    let status = match failed.first() {
        None => "verified".to_string(),
        Some(c) => format!(
            "verification failed: {}: {}",
            c.name,
            first_line(&c.message)
        ),
    };
    let finished = SystemTime::now();
    let report = VerifyReport {
        verify_id,
        provider,
        snapshots,
        started_at: crate::time::rfc3339(started),
        finished_at: crate::time::rfc3339(finished),
        total_ms: t0.elapsed().as_millis() as u64,
        verified: failed.is_empty(),
        status,
        checks,
    };
    if let Err(e) = record_report(cfg, &report, started, finished) {
        tracing::error!(error = %e, "cannot record the verification");
    }
    Ok(report)
}

/// `[verify] after_snapshot`: verify the run that just made `report`'s snapshots, put the
/// verification into the report, and store that report in the catalog in place of the one
/// recorded before. A verification that cannot start is recorded as a failed one.
pub fn after_snapshot(cfg: &Config, report: &mut crate::report::Report) {
    let Some(first) = report.snapshots.first() else {
        return;
    };
    let verification = match run(cfg, Which::Id(first.id.clone())) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "cannot verify the snapshot");
            let now = crate::time::rfc3339(SystemTime::now());
            VerifyReport {
                verify_id: report.operation_id.clone(),
                provider: first.provider.clone(),
                snapshots: report.snapshots.iter().map(|s| s.id.clone()).collect(),
                started_at: now.clone(),
                finished_at: now,
                total_ms: 0,
                verified: false,
                status: format!("verification failed: start: {e}"),
                checks: vec![Check {
                    name: "start".into(),
                    ok: false,
                    message: e.to_string(),
                    duration_ms: 0,
                }],
            }
        }
    };
    report.verification = Some(verification);
    let stored = Catalog::open(&cfg.paths.catalog)
        .map_err(|e| e.to_string())
        .and_then(|c| c.replace_report(report).map_err(|e| e.to_string()));
    if let Err(e) = stored {
        tracing::error!(error = %e, "cannot store the verification in the run's report");
    }
}

/// The database verifiers and the user's verifiers, on views every one of them can use.
fn run_verifiers(
    cfg: &Config,
    views: &[View],
    verify_id: &str,
    deadline: Instant,
    record: &mut Leftovers,
) -> Vec<Check> {
    let mut checks = Vec::new();
    let read_only = views.iter().find(|v| !v.writable);
    for (name, configured) in [
        ("postgres start", cfg.verify.postgres.is_some()),
        ("mariadb start", cfg.verify.mariadb.is_some()),
    ] {
        if let Some(v) = read_only.filter(|_| configured) {
            checks.push(Check {
                name: name.into(),
                ok: false,
                message: format!(
                    "the view of {} is read-only; a database verifier runs crash recovery \
                     and needs a writable view (a `snapshot.verify_command` that mounts one)",
                    v.device.as_deref().unwrap_or(&v.path.to_string_lossy())
                ),
                duration_ms: 0,
            });
        }
    }
    if !checks.is_empty() {
        return checks;
    }
    if let Some(pg) = &cfg.verify.postgres {
        checks.extend(postgres::verify(pg, views, verify_id, deadline, record));
    }
    if let Some(my) = &cfg.verify.mariadb {
        checks.extend(mariadb::verify(my, views, verify_id, deadline, record));
    }
    for spec in &cfg.verify.hooks {
        checks.push(user_verifier(spec, views, verify_id, deadline, record));
    }
    checks
}

fn first_line(s: &str) -> &str {
    s.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
}

use crate::time::unix_secs as unix;

fn record_report(
    cfg: &Config,
    report: &VerifyReport,
    started: SystemTime,
    finished: SystemTime,
) -> Result<(), String> {
    let mut catalog = Catalog::open(&cfg.paths.catalog).map_err(|e| e.to_string())?;
    let json = serde_json::to_string(report).unwrap_or_default();
    for id in &report.snapshots {
        catalog
            .record_verification(&VerificationRow {
                provider: report.provider.clone(),
                snapshot_id: id.clone(),
                started_unix: unix(started),
                finished_unix: unix(finished),
                verified: report.verified,
                message: report.status.clone(),
                report_json: json.clone(),
            })
            .map_err(|e| e.to_string())?;
    }
    if let Some(path) = &cfg.paths.metrics_file {
        let text = catalog.metrics_text();
        crate::metrics::write_textfile(path, &text).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// `verified`, `verification failed: …` or `not verified`, for listings.
pub fn verification_text(catalog: Option<&Catalog>, provider: &str, id: &str) -> String {
    match catalog.map(|c| c.verification_of_snapshot(provider, id)) {
        Some(Ok(Some((_, message)))) => message,
        _ => "not verified".into(),
    }
}

/// The operation lock, waiting up to `wait` for a running operation (a snapshot's guard)
/// to finish: a verification never runs while anything is frozen.
fn acquire_lock(
    state_dir: &Path,
    wait: Duration,
) -> Result<crate::freeze::lock::OpLock, VerifyError> {
    let until = Instant::now() + wait;
    loop {
        match crate::freeze::lock::OpLock::acquire(state_dir) {
            Ok(l) => return Ok(l),
            Err(p)
                if p.code == crate::codes::ErrorCode::OperationInProgress
                    && Instant::now() < until =>
            {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(p) => return Err(VerifyError(p.to_string())),
        }
    }
}

/// nice 10 and the idle I/O class for this process and everything it starts.
fn lower_priority() {
    let _ = rustix::process::setpriority_process(None, 10);
    let pid = std::process::id().to_string();
    let ok = std::process::Command::new("ionice")
        .args(["-c", "3", "-p", &pid])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        tracing::warn!("ionice is not available: verifying at normal I/O priority");
    }
}

pub(crate) fn check(name: &str, ok: bool, message: String, since: Instant) -> Check {
    Check {
        name: name.into(),
        ok,
        message,
        duration_ms: since.elapsed().as_millis() as u64,
    }
}

/// A user verifier: a trusted script (the hook runner's checks and launch), given the view.
fn user_verifier(
    spec: &crate::config::ScriptSpec,
    views: &[View],
    verify_id: &str,
    deadline: Instant,
    record: &mut Leftovers,
) -> Check {
    let t = Instant::now();
    let name = format!("verifier {}", spec.path.display());
    let file = match crate::trust::open_script(&spec.path) {
        Ok(f) => f,
        Err(e) => return check(&name, false, e.to_string(), t),
    };
    let ctx = RunContext {
        operation_id: verify_id.into(),
        hook: "verify".into(),
        phase: Phase::Post,
        deadline_unix: 0,
    };
    let timeout = deadline.saturating_duration_since(Instant::now());
    let deadline_unix = hooks::export_deadline(&ctx, timeout);
    let joined: Vec<String> = views
        .iter()
        .map(|v| format!("{}={}", v.original.display(), v.path.display()))
        .collect();
    let launch = hooks::script_launch(&file, spec, &ctx, 1, deadline_unix).map(|l| {
        l.env(
            "QUIESCE_VERIFY_VIEW",
            views.first().map(|v| v.path.clone()).unwrap_or_default(),
        )
        .env("QUIESCE_VERIFY_VIEWS", joined.join(":"))
    });
    let mut process = match launch.and_then(|l| l.spawn()) {
        Ok(p) => p,
        Err(e) => return check(&name, false, format!("cannot run it: {e}"), t),
    };
    // Its process group is killed by the next start if quiesce is killed meanwhile (it
    // keeps the view busy).
    record.add_group(process.pid());
    let end = process.run(deadline, Duration::from_secs(5));
    let err = process.stderr_tail().to_string_lossy();
    let out = process.stdout_tail().to_string_lossy();
    drop(file);
    match end {
        hooks::AttemptEnd::Exited { code: 0 } => check(&name, true, first_line(&out).into(), t),
        other => check(
            &name,
            false,
            format!(
                "{other:?}: {}",
                first_line(if err.is_empty() { &out } else { &err })
            ),
            t,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_into_the_view_of_the_volume_that_holds_them() {
        let views = [
            View {
                original: "/srv/pg".into(),
                path: "/snaps/.v-0".into(),
                ..View::default()
            },
            View {
                original: "/srv/pg/wal".into(),
                path: "/snaps/.v-1".into(),
                ..View::default()
            },
            // A view whose original is unknown stands for nothing.
            View {
                path: "/snaps/.v-2".into(),
                ..View::default()
            },
        ];
        let table: &[(&str, Option<&str>)] = &[
            ("/srv/pg/data", Some("/snaps/.v-0/data")),
            ("/srv/pg/wal/pg_wal", Some("/snaps/.v-1/pg_wal")),
            ("/srv/pg", Some("/snaps/.v-0")),
            ("/srv/pgx/data", None),
            ("/var/lib/postgresql", None),
        ];
        for (original, want) in table {
            assert_eq!(
                map_into_views(Path::new(original), &views),
                want.map(PathBuf::from),
                "{original}"
            );
        }
    }
}
