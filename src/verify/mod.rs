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

use crate::catalog::{Catalog, VerificationRow};
use crate::config::{BtrfsConfig, Config, ProviderConfig};
use crate::hooks::{self, Phase, RunContext};
use crate::snapshot::btrfs::{self as btrfs_provider, BtrfsProvider};
use crate::snapshot::Provider;
use leftovers::Leftovers;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Which snapshot to verify.
#[derive(Debug, Clone)]
pub enum Which {
    Id(String),
    Latest,
}

/// One check and how it ended.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub message: String,
    pub duration_ms: u64,
}

/// The result of one `quiesce verify`, printed with `--json` and stored in the catalog.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub verify_id: String,
    pub provider: String,
    /// Every snapshot of the verified run.
    pub snapshots: Vec<String>,
    pub started_at: String,
    pub finished_at: String,
    pub total_ms: u64,
    /// `true` only when every check passed.
    pub verified: bool,
    /// `verified` or `verification failed: CHECK: WHY`.
    pub status: String,
    pub checks: Vec<Check>,
}

impl VerifyReport {
    pub fn human(&self) -> String {
        let mut s = format!(
            "verify {} ({} {}): {}\n",
            self.verify_id,
            self.provider,
            self.snapshots.join(", "),
            self.status
        );
        for c in &self.checks {
            s.push_str(&format!(
                "  {} {} ({} ms): {}\n",
                if c.ok { "ok  " } else { "FAIL" },
                c.name,
                c.duration_ms,
                c.message
            ));
        }
        s
    }
}

/// An error before anything could be verified (nothing is recorded).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct VerifyError(pub String);

/// A view: the original location of a snapshotted volume and where its writable copy is.
#[derive(Debug, Clone)]
pub struct View {
    pub original: PathBuf,
    pub path: PathBuf,
}

/// `original` seen through the views: the same place inside the view of the volume that
/// holds it (the longest original prefix wins).
pub fn map_into_views(original: &Path, views: &[View]) -> Option<PathBuf> {
    views
        .iter()
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
    let ProviderConfig::Btrfs(bcfg) = &cfg.snapshot.provider else {
        return Err(VerifyError(
            "quiesce verify needs the btrfs snapshot provider here (snapshot.provider = \
             \"btrfs\")"
                .into(),
        ));
    };
    let set = snapshot_set(bcfg, &which)?;
    let started = SystemTime::now();
    let t0 = Instant::now();
    let deadline = t0 + cfg.verify.timeout;
    let verify_id = format!(
        "{}-{}",
        crate::pipeline::opid::compact_utc(started).unwrap_or_default(),
        std::process::id()
    );
    let mut record = Leftovers::new(&cfg.paths.state_dir);
    let mut checks = Vec::new();
    let mut views = Vec::new();
    for (i, (id, original)) in set.iter().enumerate() {
        let name = format!(".quiesce-verify-{verify_id}-{i}");
        let path = bcfg.directory.join(&name);
        record.add_subvolume(&path);
        let t = Instant::now();
        match btrfs_provider::create_writable_snapshot(
            &bcfg.directory.join(id),
            &bcfg.directory,
            &name,
        ) {
            Ok(()) => views.push(View {
                original: original.clone(),
                path,
            }),
            Err(e) => checks.push(check("view", false, e, t)),
        }
    }
    if checks.is_empty() {
        if let Some(pg) = &cfg.verify.postgres {
            checks.extend(postgres::verify(
                pg,
                &views,
                &verify_id,
                deadline,
                &mut record,
            ));
        }
        if let Some(my) = &cfg.verify.mariadb {
            checks.extend(mariadb::verify(
                my,
                &views,
                &verify_id,
                deadline,
                &mut record,
            ));
        }
        for spec in &cfg.verify.hooks {
            checks.push(user_verifier(spec, &views, &verify_id, deadline));
        }
        if checks.is_empty() {
            checks.push(Check {
                name: "view".into(),
                ok: true,
                message: "the writable view was made; no verifier is configured".into(),
                duration_ms: 0,
            });
        }
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
        provider: "btrfs".into(),
        snapshots: set.iter().map(|(id, _)| id.clone()).collect(),
        started_at: crate::pipeline::rfc3339(started),
        finished_at: crate::pipeline::rfc3339(finished),
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

fn first_line(s: &str) -> &str {
    s.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

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
        let totals = catalog.totals().unwrap_or_default();
        let last = catalog.last_run().ok().flatten();
        let mut text = crate::metrics::render_last_run(last.as_ref(), &totals);
        text.push_str(&metrics_text(&catalog));
        crate::metrics::write_textfile(path, &text).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Prometheus lines: when the newest verified application-consistent snapshot was taken,
/// and how long ago (the number to alert on).
pub fn metrics_text(catalog: &Catalog) -> String {
    let mut s = String::from(
        "# HELP quiesce_last_verified_application_snapshot_timestamp_seconds When the newest \
         application-consistent snapshot that verified was taken.\n\
         # TYPE quiesce_last_verified_application_snapshot_timestamp_seconds gauge\n",
    );
    let Ok(Some(t)) = catalog.last_verified_application_unix() else {
        return s;
    };
    s.push_str(&format!(
        "quiesce_last_verified_application_snapshot_timestamp_seconds {t}\n"
    ));
    s.push_str(
        "# HELP quiesce_seconds_since_last_verified_application_snapshot Age of the newest \
         application-consistent snapshot that verified.\n\
         # TYPE quiesce_seconds_since_last_verified_application_snapshot gauge\n",
    );
    s.push_str(&format!(
        "quiesce_seconds_since_last_verified_application_snapshot {}\n",
        (unix(SystemTime::now()) - t).max(0)
    ));
    s
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

/// The snapshots of one run: (snapshot id, original subvolume path), for `which`.
fn snapshot_set(cfg: &BtrfsConfig, which: &Which) -> Result<Vec<(String, PathBuf)>, VerifyError> {
    let provider = BtrfsProvider::new(cfg.clone());
    let list = provider.list().map_err(|e| VerifyError(e.to_string()))?;
    let chosen = match which {
        Which::Latest => list.last(),
        Which::Id(id) => list.iter().find(|s| &s.id == id),
    }
    .ok_or_else(|| {
        VerifyError(match which {
            Which::Latest => format!("no snapshot in {}", cfg.directory.display()),
            Which::Id(id) => format!("no snapshot {id:?} in {}", cfg.directory.display()),
        })
    })?;
    let op = chosen.operation_id.clone();
    let mut set = Vec::new();
    for s in list.iter().filter(|s| s.operation_id == op) {
        let label = btrfs_provider::parse_name(&s.id)
            .map(|n| n.label)
            .unwrap_or_default();
        let original = cfg
            .subvolumes
            .iter()
            .find(|p| btrfs_provider::label(p) == label)
            .cloned()
            .ok_or_else(|| {
                VerifyError(format!(
                    "snapshot {} belongs to no configured subvolume (label {label:?})",
                    s.id
                ))
            })?;
        set.push((s.id.clone(), original));
    }
    Ok(set)
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
            },
            View {
                original: "/srv/pg/wal".into(),
                path: "/snaps/.v-1".into(),
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
