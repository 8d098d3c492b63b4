//! The catalog: every run, recorded in an embedded SQLite database, read
//! back by `quiesce history`, `quiesce snapshots` (the consistency a snapshot was taken at)
//! and the metrics (totals per status and per error code).
//!
//! Design decisions:
//! - **Rollback journal (`journal_mode=DELETE`), not WAL.** In WAL mode every *reader*
//!   writes to the `-shm` wal-index through a shared memory mapping. A write fault on a
//!   page of a frozen filesystem blocks uninterruptibly until the thaw, so in WAL mode even
//!   `quiesce serve` answering a read (status, snapshot consistency) during a host-driven
//!   freeze of the catalog's filesystem could hang. With a rollback journal a reader only
//!   takes fcntl locks and reads. The cost (a writer blocks readers for the few
//!   milliseconds of a commit) is irrelevant at one run per snapshot.
//! - `synchronous=FULL`: a recorded run survives a power cut right after it was recorded.
//! - **One transaction per run.** [`Catalog::record`] writes the run, its errors, warnings,
//!   snapshots, hooks and hook attempts in a single `BEGIN IMMEDIATE` transaction, so a
//!   crash (even SIGKILL) in the middle leaves no partial row: SQLite rolls the hot
//!   journal back on the next open. The pipeline records only after the last thaw.
//! - **Versioned schema**: `PRAGMA user_version` and the ordered list of migrations in
//!   [`MIGRATIONS`], applied in one transaction on open. A database newer than this build
//!   is refused rather than written to.
//! - Permissions: the parent directory is created 0700 and the file 0600 (it holds hook
//!   output, which may contain secrets); an existing file readable by group or others is
//!   tightened to 0600. SQLite gives its journal the database file's mode.

mod render;
pub mod retention;
mod schema;

pub use render::{render_history_json, render_history_table};
pub use schema::{current_version, MIGRATIONS};

use crate::codes::{ErrorCode, Problem};
use crate::hooks::AttemptEnd;
use crate::metrics::{HookMetric, LastRun};
use crate::report::{Consistency, Report, SnapshotRef, Status};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a writer waits for another process's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything that can go wrong with the catalog. Reported as [`ErrorCode::CatalogError`]
/// (see [`CatalogError::problem`]).
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("catalog {}: {context}: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        context: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "catalog {} has schema version {found}, newer than version {supported} that this \
         quiesce knows; refusing to use it (upgrade quiesce)",
        path.display()
    )]
    TooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error(
        "catalog {} has schema version {found}, older than {supported}; it is migrated the \
         next time it is opened for writing (any recorded run)",
        path.display()
    )]
    NeedsMigration {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("operation {0} is already recorded in the catalog")]
    Duplicate(String),
    #[error("catalog: the report could not be encoded: {0}")]
    Encode(#[from] serde_json::Error),
}

impl CatalogError {
    /// The error as a reportable problem with the `CatalogError` code.
    pub fn problem(&self) -> Problem {
        Problem::new(ErrorCode::CatalogError, self.to_string())
    }
}

/// How a run came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunKind {
    /// `quiesce snapshot` (one shot, from the command line or a timer).
    Snapshot,
    /// A prepare/release operation driven by a host through `quiesce serve`.
    Served,
}

impl RunKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Snapshot => "snapshot",
            RunKind::Served => "served",
        }
    }
    pub fn parse(s: &str) -> Option<RunKind> {
        match s {
            "snapshot" => Some(RunKind::Snapshot),
            "served" => Some(RunKind::Served),
            _ => None,
        }
    }
}

/// Parse a status as the catalog and reports spell it.
pub fn parse_status(s: &str) -> Option<Status> {
    match s {
        "succeeded" => Some(Status::Succeeded),
        "degraded" => Some(Status::Degraded),
        "failed" => Some(Status::Failed),
        _ => None,
    }
}

/// One line of `quiesce history`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSummary {
    pub operation_id: String,
    pub kind: RunKind,
    /// Who asked for the run ([`crate::report::Caller::label`]).
    pub caller: String,
    /// RFC 3339 as in the report.
    pub started_at: String,
    pub finished_at: String,
    /// `started_at` in seconds since the epoch (what `--since` compares with).
    pub started_unix: i64,
    pub status: Status,
    pub consistency: Consistency,
    pub target_consistency: Consistency,
    pub frozen_ms: Option<u64>,
    pub total_ms: u64,
    /// Codes of the run's errors (not warnings), in report order, repeats kept.
    pub error_codes: Vec<String>,
    pub snapshots: Vec<SnapshotRef>,
    /// The newest verification of the run's snapshots (`verified`, `verification failed: …`
    /// or `not verified`); absent for a run that made no snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification: Option<String>,
    /// The consistency group operation this run was part of (same operation id), when
    /// this machine recorded its group report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupRunSummary>,
}

/// A group operation's outcome as one member's catalog holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupRunSummary {
    pub group: String,
    /// The group's status and consistency: the weakest member's.
    pub status: Status,
    pub consistency: Consistency,
}

/// One group operation's report, to record in a member's catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupRunRow {
    pub group: String,
    pub operation_id: String,
    /// This machine's name in the group.
    pub member: String,
    pub coordinator: String,
    pub status: Status,
    pub consistency: Consistency,
    pub started_unix: i64,
    /// The whole group report as JSON.
    pub report_json: String,
}

pub use crate::metrics::Totals;

/// A snapshot as the catalog recorded it (for providers that cannot list their own).
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedSnapshot {
    pub id: String,
    /// When the run that made it started (seconds since the epoch).
    pub started_unix: i64,
    pub operation_id: String,
    pub consistency: Option<Consistency>,
}

/// One verification of a snapshot, as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct VerificationRow {
    pub provider: String,
    pub snapshot_id: String,
    pub started_unix: i64,
    pub finished_unix: i64,
    pub verified: bool,
    pub message: String,
    pub report_json: String,
}

/// The `runs` row of `report`; its row id.
fn insert_run(
    tx: &Connection,
    path: &Path,
    report: &Report,
    kind: RunKind,
) -> Result<i64, CatalogError> {
    let sql = |context| sql_error(path, context);
    let json = serde_json::to_string(report)?;
    let started_unix = unix_of(&report.started_at).unwrap_or_else(now_unix);
    let finished_unix = unix_of(&report.finished_at).unwrap_or(started_unix);
    let t = &report.timings;
    let inserted = tx.execute(
        "INSERT INTO runs (operation_id, kind, started_at, started_unix, finished_at,
             finished_unix, status, consistency, target_consistency, frozen_ms, pre_ms,
             freeze_ms, snapshot_ms, thaw_ms, post_ms, total_ms, report_json, caller)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
             ?17, ?18)",
        params![
            report.operation_id,
            kind.as_str(),
            report.started_at,
            started_unix,
            report.finished_at,
            finished_unix,
            report.status.as_str(),
            report.consistency.as_str(),
            report.target_consistency.as_str(),
            report.frozen_ms.map(to_i64),
            t.pre_ms.map(to_i64),
            t.freeze_ms.map(to_i64),
            t.snapshot_ms.map(to_i64),
            t.thaw_ms.map(to_i64),
            t.post_ms.map(to_i64),
            to_i64(t.total_ms),
            // The `dry_run` column stays (old catalogs have it); new rows take its default,
            // 0: no run is a dry run (`snapshot --dry-run` is `check`, which records nothing).
            json,
            report.caller.label(),
        ],
    );
    match inserted {
        Ok(_) => {}
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE =>
        {
            return Err(CatalogError::Duplicate(report.operation_id.clone()));
        }
        Err(e) => return Err(sql("insert run")(e)),
    }
    Ok(tx.last_insert_rowid())
}

/// The errors and warnings of a run, each numbered within its severity.
fn insert_problems(
    tx: &Connection,
    path: &Path,
    run_id: i64,
    report: &Report,
) -> Result<(), CatalogError> {
    let sql = |context| sql_error(path, context);
    let mut problem = tx
        .prepare(
            "INSERT INTO run_errors (run_id, severity, seq, code, message, hook)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .map_err(sql("prepare errors"))?;
    // Configuration warnings carry no code: stored as an empty one.
    let errors = report
        .errors
        .iter()
        .map(|p| ("error", p.code.as_str(), &p.message, &p.hook));
    let warnings = report.warnings.iter().map(|w| {
        let code = w.code.map_or("", |c| c.as_str());
        ("warning", code, &w.message, &w.hook)
    });
    let mut seqs = [0i64; 2];
    for (severity, code, message, hook) in errors.chain(warnings) {
        let seq = &mut seqs[usize::from(severity == "warning")];
        problem
            .execute(params![run_id, severity, *seq, code, message, hook])
            .map_err(sql("insert error"))?;
        *seq += 1;
    }
    Ok(())
}

/// The snapshots a run made, in order.
fn insert_snapshots(
    tx: &Connection,
    path: &Path,
    run_id: i64,
    report: &Report,
) -> Result<(), CatalogError> {
    let sql = |context| sql_error(path, context);
    let mut snap = tx
        .prepare(
            "INSERT INTO run_snapshots (run_id, seq, provider, snapshot_id)
             VALUES (?1, ?2, ?3, ?4)",
        )
        .map_err(sql("prepare snapshots"))?;
    for (seq, s) in report.snapshots.iter().enumerate() {
        snap.execute(params![run_id, seq as i64, s.provider, s.id])
            .map_err(sql("insert snapshot"))?;
    }
    Ok(())
}

/// The hook results of a run and every attempt of each.
fn insert_hooks(
    tx: &Connection,
    path: &Path,
    run_id: i64,
    report: &Report,
) -> Result<(), CatalogError> {
    let sql = |context| sql_error(path, context);
    let mut hook = tx
        .prepare(
            "INSERT INTO run_hooks (run_id, seq, hook, phase, path, error_code, message,
                 duration_ms, stdout_tail, stderr_tail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .map_err(sql("prepare hooks"))?;
    let mut attempt = tx
        .prepare(
            "INSERT INTO hook_attempts (hook_id, number, end_kind, exit_code, signal,
                 error, duration_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .map_err(sql("prepare attempts"))?;
    for (seq, h) in report.hooks.iter().enumerate() {
        hook.execute(params![
            run_id,
            seq as i64,
            h.hook,
            h.phase.as_str(),
            h.path,
            h.error.map(|c| c.as_str()),
            h.message,
            to_i64(h.duration_ms),
            h.stdout_tail,
            h.stderr_tail,
        ])
        .map_err(sql("insert hook"))?;
        let hook_id = tx.last_insert_rowid();
        for a in &h.attempts {
            let (end_kind, exit_code, signal, error) = match &a.end {
                AttemptEnd::Exited { code } => ("exited", Some(*code), None, None),
                AttemptEnd::Signaled { signal } => ("signaled", None, Some(*signal), None),
                AttemptEnd::TimedOut => ("timed_out", None, None, None),
                AttemptEnd::SpawnFailed { error } => {
                    ("spawn_failed", None, None, Some(error.as_str()))
                }
            };
            attempt
                .execute(params![
                    hook_id,
                    a.number,
                    end_kind,
                    exit_code,
                    signal,
                    error,
                    to_i64(a.duration_ms)
                ])
                .map_err(sql("insert hook attempt"))?;
        }
    }
    Ok(())
}

/// Maps a SQLite error to a [`CatalogError`] naming the file and what was being done.
fn sql_error<'a>(
    path: &'a Path,
    context: &'static str,
) -> impl Fn(rusqlite::Error) -> CatalogError + 'a {
    move |source| CatalogError::Sqlite {
        path: path.to_path_buf(),
        context,
        source,
    }
}

/// An open catalog database.
pub struct Catalog {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").field("path", &self.path).finish()
    }
}

impl Catalog {
    /// Open (creating it if needed) the catalog for reading and writing, and migrate its
    /// schema to the current version.
    ///
    /// Creates the parent directory (mode 0700) when missing and the file with mode 0600.
    /// This writes to the catalog's filesystem: never call it while anything is frozen
    /// (use [`Catalog::open_read_only`] for reads during a freeze).
    pub fn open(path: &Path) -> Result<Catalog, CatalogError> {
        let io_err = |source| CatalogError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !parent.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)
                    .map_err(io_err)?;
            }
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let meta = std::fs::metadata(path).map_err(io_err)?;
                if meta.permissions().mode() & 0o077 != 0 {
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                        .map_err(io_err)?;
                }
            }
            Err(e) => return Err(io_err(e)),
        }

        let sql = |context| sql_error(path, context);
        // No SQLITE_OPEN_CREATE: the file was created above with the right mode.
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql("open"))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(sql("busy_timeout"))?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=DELETE", [], |r| r.get(0))
            .map_err(sql("journal_mode"))?;
        if !mode.eq_ignore_ascii_case("delete") {
            return Err(CatalogError::Sqlite {
                path: path.to_path_buf(),
                context: "journal_mode",
                source: rusqlite::Error::InvalidParameterName(format!(
                    "journal mode stayed {mode}"
                )),
            });
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql("synchronous"))?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(sql("foreign_keys"))?;
        let mut catalog = Catalog {
            conn,
            path: path.to_path_buf(),
        };
        catalog.migrate()?;
        Ok(catalog)
    }

    /// Open an existing catalog for reading only: creates nothing, writes nothing, and so
    /// is safe while filesystems are frozen. `Ok(None)` when no catalog exists yet (nothing
    /// was ever recorded). A catalog at an older schema version is refused with
    /// [`CatalogError::NeedsMigration`] (reading it would need the migration's write).
    pub fn open_read_only(path: &Path) -> Result<Option<Catalog>, CatalogError> {
        if !path.exists() {
            return Ok(None);
        }
        let sql = |context| sql_error(path, context);
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql("open read-only"))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(sql("busy_timeout"))?;
        let found: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sql("read schema version"))?;
        let supported = current_version();
        if found == 0 {
            // Created but never migrated (a crash between create and migrate): empty.
            return Ok(None);
        }
        if found > supported {
            return Err(CatalogError::TooNew {
                path: path.to_path_buf(),
                found,
                supported,
            });
        }
        if found < supported {
            return Err(CatalogError::NeedsMigration {
                path: path.to_path_buf(),
                found,
                supported,
            });
        }
        Ok(Some(Catalog {
            conn,
            path: path.to_path_buf(),
        }))
    }

    /// Where this catalog lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version of the open database (`PRAGMA user_version`).
    pub fn schema_version(&self) -> Result<u32, CatalogError> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(self.sql("read schema version"))
    }

    fn sql(&self, context: &'static str) -> impl Fn(rusqlite::Error) -> CatalogError + '_ {
        sql_error(&self.path, context)
    }

    /// Apply the missing migrations in one immediate transaction.
    fn migrate(&mut self) -> Result<(), CatalogError> {
        let supported = current_version();
        let found = self.schema_version()?;
        if found == supported {
            return Ok(());
        }
        // A copy: the transaction below borrows `self` mutably.
        let path = self.path.clone();
        let sql = |context| sql_error(&path, context);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql("begin migration"))?;
        // Re-read under the write lock: another process may have migrated meanwhile.
        let found: u32 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sql("read schema version"))?;
        if found > supported {
            return Err(CatalogError::TooNew {
                path: path.clone(),
                found,
                supported,
            });
        }
        for migration in &MIGRATIONS[found as usize..] {
            tx.execute_batch(migration).map_err(sql("migrate schema"))?;
        }
        tx.pragma_update(None, "user_version", supported)
            .map_err(sql("set schema version"))?;
        tx.commit().map_err(sql("commit migration"))?;
        Ok(())
    }

    /// Record one finished run (all of it, or nothing).
    ///
    /// Call only after the last thaw. An operation id that is already recorded is refused
    /// with [`CatalogError::Duplicate`] and changes nothing (a host that releases twice
    /// gets one row).
    pub fn record(&mut self, report: &Report, kind: RunKind) -> Result<(), CatalogError> {
        self.record_with_hook(report, kind, || {})
    }

    /// [`Catalog::record`], calling `before_commit` after every row was written and before
    /// the commit. Exists so a test can kill the process in the middle of the transaction
    /// (the closure signals the parent, then sleeps) and prove nothing partial survives.
    #[doc(hidden)]
    pub fn record_with_hook(
        &mut self,
        report: &Report,
        kind: RunKind,
        before_commit: impl FnOnce(),
    ) -> Result<(), CatalogError> {
        let path = self.path.clone();
        let sql = |context| sql_error(&path, context);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql("begin"))?;
        let run_id = insert_run(&tx, &path, report, kind)?;
        insert_problems(&tx, &path, run_id, report)?;
        insert_snapshots(&tx, &path, run_id, report)?;
        insert_hooks(&tx, &path, run_id, report)?;
        before_commit();
        tx.commit().map_err(sql("commit run"))?;
        Ok(())
    }

    /// Recorded runs, newest first: at most `limit`, and only those started at or after
    /// `since` when given.
    pub fn history(
        &self,
        limit: Option<usize>,
        since: Option<SystemTime>,
    ) -> Result<Vec<RunSummary>, CatalogError> {
        let rows = self.history_rows(limit, since)?;
        self.with_details(rows)
    }

    /// The `runs` rows of [`Catalog::history`] with their row ids, details still empty.
    fn history_rows(
        &self,
        limit: Option<usize>,
        since: Option<SystemTime>,
    ) -> Result<Vec<(i64, RunSummary)>, CatalogError> {
        let since_unix = since.map(system_time_unix);
        let limit = limit.map(|l| l.min(i64::MAX as usize) as i64).unwrap_or(-1);
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, operation_id, kind, started_at, started_unix, finished_at, status,
                     consistency, target_consistency, frozen_ms, total_ms, caller
                 FROM runs
                 WHERE ?1 IS NULL OR started_unix >= ?1
                 ORDER BY started_unix DESC, id DESC
                 LIMIT ?2",
            )
            .map_err(self.sql("prepare history"))?;
        let rows = stmt
            .query_map(params![since_unix, limit], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    RunSummary {
                        operation_id: r.get(1)?,
                        kind: RunKind::parse(&r.get::<_, String>(2)?).unwrap_or(RunKind::Snapshot),
                        started_at: r.get(3)?,
                        started_unix: r.get(4)?,
                        finished_at: r.get(5)?,
                        status: parse_status(&r.get::<_, String>(6)?).unwrap_or(Status::Failed),
                        consistency: Consistency::parse(&r.get::<_, String>(7)?)
                            .unwrap_or(Consistency::None),
                        target_consistency: Consistency::parse(&r.get::<_, String>(8)?)
                            .unwrap_or(Consistency::None),
                        frozen_ms: r.get::<_, Option<i64>>(9)?.map(to_u64),
                        total_ms: to_u64(r.get(10)?),
                        caller: r.get(11)?,
                        error_codes: Vec::new(),
                        snapshots: Vec::new(),
                        verification: None,
                        group: None,
                    },
                ))
            })
            .map_err(self.sql("query history"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.sql("read history"))?;
        Ok(rows)
    }

    /// Fill in each run's error codes, snapshots, verification and group outcome.
    fn with_details(&self, rows: Vec<(i64, RunSummary)>) -> Result<Vec<RunSummary>, CatalogError> {
        let mut codes = self
            .conn
            .prepare(
                "SELECT code FROM run_errors WHERE run_id = ?1 AND severity = 'error' ORDER BY seq",
            )
            .map_err(self.sql("prepare history errors"))?;
        let mut snaps = self
            .conn
            .prepare(
                "SELECT provider, snapshot_id FROM run_snapshots WHERE run_id = ?1 ORDER BY seq",
            )
            .map_err(self.sql("prepare history snapshots"))?;
        let mut verif = self
            .conn
            .prepare(
                "SELECT v.message FROM verifications v JOIN run_snapshots s
                     ON v.provider = s.provider AND v.snapshot_id = s.snapshot_id
                 WHERE s.run_id = ?1 ORDER BY v.id DESC LIMIT 1",
            )
            .map_err(self.sql("prepare history verification"))?;
        let mut groups = self
            .conn
            .prepare(
                "SELECT group_name, status, consistency FROM group_runs
                 WHERE operation_id = ?1 ORDER BY recorded_unix DESC LIMIT 1",
            )
            .map_err(self.sql("prepare history groups"))?;
        let mut out = Vec::with_capacity(rows.len());
        for (id, mut summary) in rows {
            summary.error_codes = codes
                .query_map([id], |r| r.get(0))
                .and_then(|rows| rows.collect())
                .map_err(self.sql("read history errors"))?;
            summary.snapshots = snaps
                .query_map([id], |r| {
                    Ok(SnapshotRef {
                        provider: r.get(0)?,
                        id: r.get(1)?,
                    })
                })
                .and_then(|rows| rows.collect())
                .map_err(self.sql("read history snapshots"))?;
            if !summary.snapshots.is_empty() {
                let found: Option<String> = verif
                    .query_row([id], |r| r.get(0))
                    .optional()
                    .map_err(self.sql("read history verification"))?;
                summary.verification = Some(found.unwrap_or_else(|| "not verified".into()));
            }
            summary.group = groups
                .query_row([&summary.operation_id], |r| {
                    Ok(GroupRunSummary {
                        group: r.get(0)?,
                        status: parse_status(&r.get::<_, String>(1)?).unwrap_or(Status::Failed),
                        consistency: Consistency::parse(&r.get::<_, String>(2)?)
                            .unwrap_or(Consistency::None),
                    })
                })
                .optional()
                .map_err(self.sql("read history groups"))?;
            out.push(summary);
        }
        Ok(out)
    }

    /// The consistency of the run that made this snapshot (the latest one if several
    /// claim it), or `None` when the catalog does not know it.
    pub fn consistency_of_snapshot(
        &self,
        provider: &str,
        id: &str,
    ) -> Result<Option<Consistency>, CatalogError> {
        let found: Option<String> = self
            .conn
            .query_row(
                "SELECT r.consistency FROM run_snapshots s JOIN runs r ON r.id = s.run_id
                 WHERE s.provider = ?1 AND s.snapshot_id = ?2
                 ORDER BY r.started_unix DESC, r.id DESC LIMIT 1",
                params![provider, id],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sql("query snapshot consistency"))?;
        Ok(found.as_deref().and_then(Consistency::parse))
    }

    /// Every snapshot of `provider` that a recorded run made, newest first (a snapshot id
    /// claimed by several runs is listed once, with the newest of them).
    pub fn recorded_snapshots(
        &self,
        provider: &str,
    ) -> Result<Vec<RecordedSnapshot>, CatalogError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT s.snapshot_id, r.started_unix, r.operation_id, r.consistency
                 FROM run_snapshots s JOIN runs r ON r.id = s.run_id
                 WHERE s.provider = ?1
                 ORDER BY r.started_unix DESC, r.id DESC, s.seq",
            )
            .map_err(self.sql("list recorded snapshots"))?;
        let rows = stmt
            .query_map([provider], |r| {
                Ok(RecordedSnapshot {
                    id: r.get(0)?,
                    started_unix: r.get(1)?,
                    operation_id: r.get(2)?,
                    consistency: Consistency::parse(&r.get::<_, String>(3)?),
                })
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(self.sql("list recorded snapshots"))?;
        let mut seen = std::collections::HashSet::new();
        Ok(rows
            .into_iter()
            .filter(|r| seen.insert(r.id.clone()))
            .collect())
    }

    /// The operation id of the run that made snapshot `id` of `provider` (the newest one if
    /// several claim it), or of the newest run with a snapshot of `provider` when `id` is
    /// `None`.
    pub fn run_of_snapshot(
        &self,
        provider: &str,
        id: Option<&str>,
    ) -> Result<Option<String>, CatalogError> {
        self.conn
            .query_row(
                "SELECT r.operation_id FROM run_snapshots s JOIN runs r ON r.id = s.run_id
                 WHERE s.provider = ?1 AND (?2 IS NULL OR s.snapshot_id = ?2)
                 ORDER BY r.started_unix DESC, r.id DESC LIMIT 1",
                params![provider, id],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sql("query the run of a snapshot"))
    }

    /// Record one verification of a snapshot (`quiesce verify`).
    pub fn record_verification(&mut self, v: &VerificationRow) -> Result<(), CatalogError> {
        self.conn
            .execute(
                "INSERT INTO verifications (provider, snapshot_id, started_unix, finished_unix,
                     verified, message, report_json) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    v.provider,
                    v.snapshot_id,
                    v.started_unix,
                    v.finished_unix,
                    v.verified,
                    v.message,
                    v.report_json
                ],
            )
            .map_err(self.sql("record verification"))?;
        Ok(())
    }

    /// The newest verification of a snapshot: (verified, message); `None`: not verified.
    pub fn verification_of_snapshot(
        &self,
        provider: &str,
        id: &str,
    ) -> Result<Option<(bool, String)>, CatalogError> {
        self.conn
            .query_row(
                "SELECT verified, message FROM verifications
                 WHERE provider = ?1 AND snapshot_id = ?2 ORDER BY id DESC LIMIT 1",
                params![provider, id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(self.sql("query verification"))
    }

    /// When the newest application-consistent snapshot that verified was taken (the start
    /// of its run, seconds since the epoch).
    pub fn last_verified_application_unix(&self) -> Result<Option<i64>, CatalogError> {
        self.conn
            .query_row(
                "SELECT MAX(r.started_unix) FROM runs r
                 JOIN run_snapshots s ON s.run_id = r.id
                 JOIN verifications v ON v.provider = s.provider AND v.snapshot_id = s.snapshot_id
                 WHERE r.consistency = 'application' AND v.verified = 1
                   AND v.id = (SELECT MAX(id) FROM verifications w
                               WHERE w.provider = s.provider AND w.snapshot_id = s.snapshot_id)",
                [],
                |r| r.get(0),
            )
            .map_err(self.sql("query last verified snapshot"))
    }

    /// How many errors (not warnings) of each code all recorded runs reported.
    pub fn totals_by_error_code(&self) -> Result<BTreeMap<String, u64>, CatalogError> {
        self.count_groups(
            "SELECT code, SUM(n) FROM (
                 SELECT code, COUNT(*) AS n FROM run_errors WHERE severity = 'error' GROUP BY code
                 UNION ALL SELECT key, count FROM pruned_totals WHERE kind = 'error'
             ) GROUP BY code",
        )
    }

    /// How many runs ended with each status; every status is present (zero if none).
    pub fn runs_by_status(&self) -> Result<BTreeMap<String, u64>, CatalogError> {
        let mut m = self.count_groups(
            "SELECT status, SUM(n) FROM (
                 SELECT status, COUNT(*) AS n FROM runs GROUP BY status
                 UNION ALL SELECT key, count FROM pruned_totals WHERE kind = 'status'
             ) GROUP BY status",
        )?;
        for s in [Status::Succeeded, Status::Degraded, Status::Failed] {
            m.entry(s.as_str().to_string()).or_insert(0);
        }
        Ok(m)
    }

    /// Both totals, for [`crate::metrics::render`].
    pub fn totals(&self) -> Result<Totals, CatalogError> {
        Ok(Totals {
            runs_by_status: self.runs_by_status()?,
            errors_by_code: self.totals_by_error_code()?,
        })
    }

    /// Every metric the catalog knows, as Prometheus text: the last run, the totals and the
    /// verification gauges.
    pub fn metrics_text(&self) -> String {
        let last = self.last_run().ok().flatten();
        let totals = self.totals().unwrap_or_default();
        let mut text = crate::metrics::render_last_run(last.as_ref(), &totals);
        text.push_str(&self.verified_metrics_text());
        text
    }

    /// The verification gauges alone, as Prometheus text.
    pub fn verified_metrics_text(&self) -> String {
        let now = crate::time::unix_secs(SystemTime::now());
        let verified = self.last_verified_application_unix().ok().flatten();
        crate::metrics::render_verified(verified, now)
    }

    fn count_groups(&self, query: &str) -> Result<BTreeMap<String, u64>, CatalogError> {
        let mut stmt = self
            .conn
            .prepare(query)
            .map_err(self.sql("prepare totals"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, to_u64(r.get(1)?))))
            .map_err(self.sql("query totals"))?;
        rows.collect::<Result<BTreeMap<_, _>, _>>()
            .map_err(self.sql("read totals"))
    }

    /// The most recently recorded run, in the shape the metrics need. Lets `quiesce serve`
    /// expose the last run of a `quiesce snapshot` that another process made.
    pub fn last_run(&self) -> Result<Option<LastRun>, CatalogError> {
        let row = self
            .conn
            .query_row(
                "SELECT id, status, consistency, target_consistency, frozen_ms, total_ms,
                     finished_unix
                 FROM runs ORDER BY id DESC LIMIT 1",
                [],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, Option<i64>>(4)?,
                        r.get::<_, i64>(5)?,
                        r.get::<_, i64>(6)?,
                    ))
                },
            )
            .optional()
            .map_err(self.sql("query last run"))?;
        let Some((id, status, consistency, target, frozen_ms, total_ms, finished_unix)) = row
        else {
            return Ok(None);
        };
        let mut stmt = self
            .conn
            .prepare(
                "SELECT h.hook, h.phase, h.duration_ms, h.error_code IS NOT NULL,
                     (SELECT COUNT(*) FROM hook_attempts a WHERE a.hook_id = h.id)
                 FROM run_hooks h WHERE h.run_id = ?1 ORDER BY h.seq",
            )
            .map_err(self.sql("prepare last run hooks"))?;
        let hooks = stmt
            .query_map([id], |r| {
                Ok(HookMetric {
                    hook: r.get(0)?,
                    phase: r.get(1)?,
                    duration_ms: to_u64(r.get(2)?),
                    failed: r.get(3)?,
                    attempts: to_u64(r.get(4)?) as u32,
                })
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(self.sql("read last run hooks"))?;
        Ok(Some(LastRun {
            status: parse_status(&status).unwrap_or(Status::Failed),
            consistency: Consistency::parse(&consistency).unwrap_or(Consistency::None),
            target_consistency: Consistency::parse(&target).unwrap_or(Consistency::None),
            frozen_ms: frozen_ms.map(to_u64),
            total_ms: to_u64(total_ms),
            finished_unix: Some(finished_unix),
            hooks,
            recorded: true,
        }))
    }

    /// Record a consistency group's report (this machine was one of its members). Recording
    /// the same group operation again replaces the row (the report is the same).
    pub fn record_group(&mut self, row: &GroupRunRow) -> Result<(), CatalogError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO group_runs (group_name, operation_id, member,
                     coordinator, status, consistency, started_unix, recorded_unix,
                     report_json)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    row.group,
                    row.operation_id,
                    row.member,
                    row.coordinator,
                    row.status.as_str(),
                    row.consistency.as_str(),
                    row.started_unix,
                    now_unix(),
                    row.report_json,
                ],
            )
            .map_err(self.sql("insert group run"))?;
        Ok(())
    }

    /// The group report of `operation_id` in `group` as recorded on this machine.
    pub fn group_report_json(
        &self,
        group: &str,
        operation_id: &str,
    ) -> Result<Option<String>, CatalogError> {
        self.conn
            .query_row(
                "SELECT report_json FROM group_runs WHERE group_name = ?1 AND operation_id = ?2",
                [group, operation_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sql("query group report"))
    }

    /// The full JSON report of one run, exactly as recorded.
    pub fn report_json(&self, operation_id: &str) -> Result<Option<String>, CatalogError> {
        self.conn
            .query_row(
                "SELECT report_json FROM runs WHERE operation_id = ?1",
                [operation_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sql("query report"))
    }

    /// Store `report` as the recorded JSON of its run (already recorded), e.g. once the
    /// verification that ran after the snapshot is part of it. Only the JSON changes.
    pub fn replace_report(&self, report: &Report) -> Result<(), CatalogError> {
        let json = serde_json::to_string(report)?;
        self.conn
            .execute(
                "UPDATE runs SET report_json = ?2 WHERE operation_id = ?1",
                params![report.operation_id, json],
            )
            .map_err(self.sql("replace report"))?;
        Ok(())
    }

    /// Apply the configured retention after a run was recorded (see [`retention::select`]
    /// for the rule): delete the runs beyond the newest `keep_runs` and those older than
    /// `keep_days`, with everything recorded about them. Returns how many runs went.
    pub fn apply_retention(
        &mut self,
        keep_runs: u64,
        keep_days: u64,
        now: SystemTime,
    ) -> Result<usize, CatalogError> {
        let now_unix = system_time_unix(now);
        let max_age = i64::try_from(keep_days.saturating_mul(86_400)).unwrap_or(i64::MAX);
        self.delete_runs(now_unix.saturating_sub(max_age), |runs| {
            retention::select(runs, keep_runs, keep_days, now_unix)
        })
    }

    /// Delete the runs started before `before` with everything recorded about them, in one
    /// transaction. Returns how many runs were deleted.
    pub fn prune(&mut self, before: SystemTime) -> Result<usize, CatalogError> {
        let cutoff = system_time_unix(before);
        self.delete_runs(cutoff, |runs| {
            runs.iter()
                .filter(|r| r.started_unix < cutoff)
                .map(|r| r.id)
                .collect()
        })
    }

    /// In one transaction: let `choose` pick, from every run (newest first), the ones to
    /// delete; delete them with their errors, snapshots, hooks, the verifications of their
    /// snapshots and their group reports; add what they counted to `pruned_totals`; and
    /// delete group reports that started before `group_cutoff`.
    fn delete_runs(
        &mut self,
        group_cutoff: i64,
        choose: impl FnOnce(&[retention::RunAge]) -> Vec<i64>,
    ) -> Result<usize, CatalogError> {
        // A copy: the transaction below borrows `self` mutably.
        let path = self.path.clone();
        let sql = |context| sql_error(&path, context);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql("begin prune"))?;
        let runs = run_ages(&tx).map_err(sql("list runs"))?;
        let doomed = choose(&runs);
        // Usually nothing goes: then no statement is prepared for it (preparing is most of
        // the cost, and this runs after every run).
        if !doomed.is_empty() {
            let counted = delete_each(&tx, &doomed).map_err(sql("prune"))?;
            add_pruned_totals(&tx, &counted).map_err(sql("count pruned runs"))?;
        }
        tx.execute(
            "DELETE FROM group_runs WHERE started_unix < ?1",
            [group_cutoff],
        )
        .map_err(sql("prune group runs"))?;
        tx.commit().map_err(sql("commit prune"))?;
        if !doomed.is_empty() {
            tracing::info!(runs = doomed.len(), "catalog retention deleted old runs");
        }
        Ok(doomed.len())
    }
}

/// Every run's id and start, newest first (the order `history` shows).
fn run_ages(tx: &Connection) -> rusqlite::Result<Vec<retention::RunAge>> {
    let mut stmt =
        tx.prepare("SELECT id, started_unix FROM runs ORDER BY started_unix DESC, id DESC")?;
    let rows = stmt.query_map([], |r| {
        Ok(retention::RunAge {
            id: r.get(0)?,
            started_unix: r.get(1)?,
        })
    })?;
    rows.collect()
}

/// What deleted runs counted: (kind, key) -> how many (`status`/`error`, as in
/// `pruned_totals`).
type Counted = BTreeMap<(&'static str, String), u64>;

/// Delete the runs `ids` and what hangs off them; returns what they counted.
fn delete_each(tx: &Connection, ids: &[i64]) -> rusqlite::Result<Counted> {
    let mut counted = Counted::new();
    let mut status = tx.prepare("SELECT status FROM runs WHERE id = ?1")?;
    let mut codes =
        tx.prepare("SELECT code FROM run_errors WHERE run_id = ?1 AND severity = 'error'")?;
    let mut verifications = tx.prepare(
        "DELETE FROM verifications WHERE EXISTS (SELECT 1 FROM run_snapshots s
             WHERE s.run_id = ?1 AND s.provider = verifications.provider
               AND s.snapshot_id = verifications.snapshot_id)",
    )?;
    let mut groups = tx.prepare(
        "DELETE FROM group_runs WHERE operation_id = (SELECT operation_id FROM runs WHERE id = ?1)",
    )?;
    // Errors, snapshots, hooks and their attempts go by ON DELETE CASCADE.
    let mut run = tx.prepare("DELETE FROM runs WHERE id = ?1")?;
    for id in ids {
        let s: String = status.query_row([id], |r| r.get(0))?;
        *counted.entry(("status", s)).or_default() += 1;
        for code in codes.query_map([id], |r| r.get::<_, String>(0))? {
            *counted.entry(("error", code?)).or_default() += 1;
        }
        verifications.execute([id])?;
        groups.execute([id])?;
        run.execute([id])?;
    }
    Ok(counted)
}

fn add_pruned_totals(tx: &Connection, counted: &Counted) -> rusqlite::Result<()> {
    let mut add = tx.prepare(
        "INSERT INTO pruned_totals (kind, key, count) VALUES (?1, ?2, ?3)
         ON CONFLICT (kind, key) DO UPDATE SET count = count + excluded.count",
    )?;
    for ((kind, key), n) in counted {
        add.execute(params![kind, key, to_i64(*n)])?;
    }
    Ok(())
}

fn unix_of(rfc3339: &str) -> Option<i64> {
    humantime::parse_rfc3339_weak(rfc3339)
        .ok()
        .map(system_time_unix)
}

fn system_time_unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs().min(i64::MAX as u64) as i64,
        Err(e) => -(e.duration().as_secs().min(i64::MAX as u64) as i64),
    }
}

fn now_unix() -> i64 {
    system_time_unix(SystemTime::now())
}

fn to_i64(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

fn to_u64(v: i64) -> u64 {
    v.max(0) as u64
}
