//! The run catalog: history with filters, totals, snapshot consistency, schema migration,
//! permissions, and that a SIGKILL in the middle of recording leaves no partial run.

use crate::support;
use crate::support::reports;

use quiesce::catalog::{
    self, render_history_json, render_history_table, Catalog, CatalogError, RunKind,
};
use quiesce::report::{Consistency, Status};
use reports::at;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::Scratch;

const T0: u64 = 1_740_787_200; // 2025-03-01T00:00:00Z

fn three_runs(db: &Path) -> Catalog {
    let mut c = Catalog::open(db).unwrap();
    c.record(&reports::succeeded("op-ok", at(T0)), RunKind::Snapshot)
        .unwrap();
    c.record(
        &reports::degraded("op-degraded", at(T0 + 3600)),
        RunKind::Served,
    )
    .unwrap();
    c.record(
        &reports::failed("op-failed", at(T0 + 7200)),
        RunKind::Snapshot,
    )
    .unwrap();
    c
}

#[test]
fn history_shows_succeeded_degraded_and_failed_with_codes() {
    let s = Scratch::new("catalog-history");
    let c = three_runs(&s.join("catalog.db"));
    let h = c.history(None, None).unwrap();

    let ids: Vec<&str> = h.iter().map(|r| r.operation_id.as_str()).collect();
    assert_eq!(ids, ["op-failed", "op-degraded", "op-ok"], "newest first");

    let (failed, degraded, ok) = (&h[0], &h[1], &h[2]);
    assert_eq!(ok.status, Status::Succeeded);
    assert_eq!(ok.consistency, Consistency::Application);
    assert_eq!(ok.kind, RunKind::Snapshot);
    assert_eq!(ok.frozen_ms, Some(42));
    assert_eq!(ok.total_ms, 1850);
    assert!(ok.error_codes.is_empty());
    assert_eq!(ok.snapshots[0].provider, "btrfs");
    assert_eq!(ok.snapshots[0].id, "/srv/.snapshots/op-ok");
    assert_eq!(ok.started_unix, T0 as i64);

    assert_eq!(degraded.status, Status::Degraded);
    assert_eq!(degraded.consistency, Consistency::FileSystem);
    assert_eq!(degraded.target_consistency, Consistency::Application);
    assert_eq!(degraded.kind, RunKind::Served);
    // Warnings are not errors.
    assert_eq!(degraded.error_codes, ["Pre-ScriptTimeout"]);

    assert_eq!(failed.status, Status::Failed);
    assert_eq!(failed.consistency, Consistency::None);
    assert_eq!(
        failed.error_codes,
        ["SnapshotFailed", "Post-ScriptExecutionFailed"]
    );
    assert!(failed.snapshots.is_empty());

    let table = render_history_table(&h);
    print!("{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4);
    assert!(lines[0].starts_with("STARTED (UTC)"));
    assert!(lines[1].starts_with("2025-03-01T02:00:00Z  op-failed"));
    assert!(lines[1].contains("failed"));
    assert!(lines[1].ends_with("SnapshotFailed, Post-ScriptExecutionFailed"));
    assert!(lines[1].contains(" 5041 "));
    assert!(lines[2].contains("file-system (target application)"));
    assert!(lines[2].contains("served"));
    assert!(lines[2].ends_with("Pre-ScriptTimeout"));
    assert!(lines[3].contains("application"));
    assert!(
        lines[3].ends_with(" -"),
        "no errors shown as -: {}",
        lines[3]
    );
    // Columns line up: every row has the STATUS column at the same offset.
    let col = lines[0].find("STATUS").unwrap();
    for l in &lines[1..] {
        let rest = &l[col..];
        assert!(
            ["succeeded", "degraded", "failed"]
                .iter()
                .any(|s| rest.starts_with(s)),
            "misaligned: {l}"
        );
    }

    let json: serde_json::Value = serde_json::from_str(&render_history_json(&h)).unwrap();
    let arr = json.as_array().unwrap();
    assert_eq!(arr.len(), 3);
    assert_eq!(arr[0]["operation_id"], "op-failed");
    assert_eq!(arr[0]["status"], "failed");
    assert_eq!(arr[1]["consistency"], "file-system");
    assert_eq!(arr[1]["kind"], "served");
    assert_eq!(arr[0]["error_codes"][0], "SnapshotFailed");
    assert_eq!(arr[2]["frozen_ms"], 42);

    // The whole report is kept, exactly as the pipeline serialized it.
    let full: serde_json::Value =
        serde_json::from_str(&c.report_json("op-degraded").unwrap().unwrap()).unwrap();
    assert_eq!(full["hooks"][0]["attempts"][1]["end"]["kind"], "timed_out");
    // A configuration warning carries no code.
    assert!(full["warnings"][0].get("code").is_none(), "{full:#}");
    assert!(full["warnings"][0]["message"]
        .as_str()
        .unwrap()
        .contains("retires"));
    assert_eq!(
        full["hooks"][0]["stderr_tail"]
            .as_str()
            .unwrap()
            .lines()
            .count(),
        2
    );
}

#[test]
fn history_limit_and_since() {
    let s = Scratch::new("catalog-filter");
    let c = three_runs(&s.join("catalog.db"));

    let ids = |v: Vec<catalog::RunSummary>| -> Vec<String> {
        v.into_iter().map(|r| r.operation_id).collect()
    };
    assert_eq!(
        ids(c.history(Some(2), None).unwrap()),
        ["op-failed", "op-degraded"]
    );
    assert_eq!(ids(c.history(Some(0), None).unwrap()), Vec::<String>::new());
    assert_eq!(
        ids(c.history(None, Some(at(T0 + 3600))).unwrap()),
        ["op-failed", "op-degraded"],
        "since is inclusive"
    );
    assert_eq!(
        ids(c.history(None, Some(at(T0 + 3601))).unwrap()),
        ["op-failed"]
    );
    assert_eq!(
        ids(c.history(Some(1), Some(at(T0))).unwrap()),
        ["op-failed"]
    );
    assert!(c.history(None, Some(at(T0 + 7201))).unwrap().is_empty());
}

#[test]
fn totals_duplicates_and_snapshot_consistency() {
    let s = Scratch::new("catalog-totals");
    let mut c = three_runs(&s.join("catalog.db"));
    c.record(
        &reports::degraded("op-degraded-2", at(T0 + 9000)),
        RunKind::Snapshot,
    )
    .unwrap();

    let by_code = c.totals_by_error_code().unwrap();
    assert_eq!(by_code.get("Pre-ScriptTimeout"), Some(&2));
    assert_eq!(by_code.get("SnapshotFailed"), Some(&1));
    assert_eq!(by_code.get("Post-ScriptExecutionFailed"), Some(&1));
    assert_eq!(
        by_code.get("IncorrectConfigFile"),
        None,
        "warnings are not counted"
    );
    assert_eq!(by_code.len(), 3);
    let totals = c.totals().unwrap();
    assert_eq!(totals.runs_by_status["succeeded"], 1);
    assert_eq!(totals.runs_by_status["degraded"], 2);
    assert_eq!(totals.runs_by_status["failed"], 1);

    // The same operation id again: refused, nothing changed.
    let err = c
        .record(
            &reports::succeeded("op-ok", at(T0 + 99_999)),
            RunKind::Snapshot,
        )
        .unwrap_err();
    assert!(
        matches!(err, CatalogError::Duplicate(ref id) if id == "op-ok"),
        "{err}"
    );
    assert_eq!(err.problem().code.as_str(), "CatalogError");
    assert_eq!(c.history(None, None).unwrap().len(), 4);
    assert_eq!(c.totals().unwrap(), totals);

    assert_eq!(
        c.consistency_of_snapshot("btrfs", "/srv/.snapshots/op-ok")
            .unwrap(),
        Some(Consistency::Application)
    );
    assert_eq!(
        c.consistency_of_snapshot("command", "snap-op-degraded")
            .unwrap(),
        Some(Consistency::FileSystem)
    );
    assert_eq!(
        c.consistency_of_snapshot("btrfs", "snap-op-degraded")
            .unwrap(),
        None,
        "provider must match"
    );
    assert_eq!(c.consistency_of_snapshot("btrfs", "nope").unwrap(), None);

    let last = c.last_run().unwrap().unwrap();
    assert_eq!(last.status, Status::Degraded);
    assert_eq!(last.hooks.len(), 2);
    assert!(last.hooks[0].failed && last.hooks[0].attempts == 2);

    // Retention removes a run with everything that hangs off it.
    assert_eq!(c.prune(at(T0 + 1)).unwrap(), 1);
    assert_eq!(c.history(None, None).unwrap().len(), 3);
    assert_eq!(
        c.consistency_of_snapshot("btrfs", "/srv/.snapshots/op-ok")
            .unwrap(),
        None
    );
    drop(c);
    let conn = rusqlite::Connection::open(s.join("catalog.db")).unwrap();
    let orphans: i64 = conn
        .query_row(
            "SELECT (SELECT COUNT(*) FROM run_hooks WHERE run_id NOT IN (SELECT id FROM runs))
                  + (SELECT COUNT(*) FROM hook_attempts WHERE hook_id NOT IN (SELECT id FROM run_hooks))",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(orphans, 0);
}

#[test]
fn open_creates_private_files_with_a_rollback_journal() {
    let s = Scratch::new("catalog-perms");
    let db = s.join("var/lib/quiesce/catalog.db");
    let mut c = Catalog::open(&db).unwrap();
    c.record(&reports::succeeded("op-1", at(T0)), RunKind::Snapshot)
        .unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(db.parent().unwrap()), 0o700);
    assert_eq!(mode(&db), 0o600);
    assert_eq!(c.schema_version().unwrap(), catalog::current_version());
    drop(c);
    assert!(!s.join("var/lib/quiesce/catalog.db-wal").exists());
    assert!(
        !s.join("var/lib/quiesce/catalog.db-journal").exists(),
        "DELETE journal mode removes the journal after commit"
    );
    let conn = rusqlite::Connection::open(&db).unwrap();
    let jm: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(jm, "delete");
    drop(conn);

    // A catalog someone made world-readable is tightened on open.
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    drop(Catalog::open(&db).unwrap());
    assert_eq!(mode(&db), 0o600);

    // Read-only open: nothing missing is created; an existing catalog reads fine.
    let missing = s.join("nowhere/catalog.db");
    assert!(Catalog::open_read_only(&missing).unwrap().is_none());
    assert!(!s.join("nowhere").exists());
    let ro = Catalog::open_read_only(&db).unwrap().unwrap();
    assert_eq!(ro.history(None, None).unwrap()[0].operation_id, "op-1");
}

/// A database made by the first schema version (before runs had a kind and before the
/// indexes) is migrated on open, keeping its runs.
#[test]
fn opening_an_older_schema_migrates_it() {
    let s = Scratch::new("catalog-migrate");
    let db = s.join("catalog.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(catalog::MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO runs (id, operation_id, started_at, started_unix, finished_at,
                 finished_unix, status, consistency, target_consistency, frozen_ms, total_ms,
                 report_json)
             VALUES (7, 'old-op', '2024-12-31T23:00:00Z', 1735686000, '2024-12-31T23:00:02Z',
                 1735686002, 'degraded', 'crash', 'application', NULL, 2000, '{}')",
            [],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO run_errors (run_id, severity, seq, code, message, hook)
             VALUES (7, 'error', 0, 'FreezeNotSupported', 'squashfs', NULL)",
            [],
        )
        .unwrap();
        let has_kind: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM pragma_table_info('runs') WHERE name = 'kind'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(has_kind, 0, "version 1 has no kind column");
    }
    // Read-only opening refuses to read an unmigrated schema.
    assert!(matches!(
        Catalog::open_read_only(&db).unwrap_err(),
        CatalogError::NeedsMigration { found: 1, .. }
    ));

    let mut c = Catalog::open(&db).unwrap();
    assert_eq!(c.schema_version().unwrap(), catalog::current_version());
    assert!(catalog::current_version() >= 2);
    let h = c.history(None, None).unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].operation_id, "old-op");
    assert_eq!(h[0].kind, RunKind::Snapshot, "old rows backfilled");
    assert_eq!(h[0].consistency, Consistency::Crash);
    assert_eq!(h[0].error_codes, ["FreezeNotSupported"]);
    // And new runs go in beside it.
    c.record(&reports::succeeded("new-op", at(T0)), RunKind::Served)
        .unwrap();
    assert_eq!(c.history(None, None).unwrap()[0].kind, RunKind::Served);
    drop(c);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let indexes: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index'
             AND name IN ('runs_by_start', 'snapshots_by_ref', 'errors_by_code')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(indexes, 3);
}

/// Migration 5: a catalog of version 4 gets `group_runs`; a group report recorded beside
/// the member's own run (same operation id) shows in `history` (JSON and a GROUP column
/// only when some run has a group), recording it again replaces it, and prune removes it.
#[test]
fn a_group_report_is_recorded_beside_the_members_run() {
    let s = Scratch::new("catalog-group");
    let db = s.join("catalog.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        for m in &catalog::MIGRATIONS[..4] {
            conn.execute_batch(m).unwrap();
        }
        conn.pragma_update(None, "user_version", 4).unwrap();
    }
    let mut c = Catalog::open(&db).unwrap();
    assert_eq!(c.schema_version().unwrap(), catalog::current_version());
    c.record(&reports::succeeded("alone", at(T0)), RunKind::Served)
        .unwrap();
    let table = render_history_table(&c.history(None, None).unwrap());
    assert!(!table.contains("GROUP"), "no group, no column: {table}");

    c.record(&reports::degraded("grp-op", at(T0 + 60)), RunKind::Served)
        .unwrap();
    let row = |status, json: &str| catalog::GroupRunRow {
        group: "orders".into(),
        operation_id: "grp-op".into(),
        member: "db-1".into(),
        coordinator: "admin-77".into(),
        status,
        consistency: Consistency::FileSystem,
        started_unix: (T0 + 60) as i64,
        report_json: json.into(),
    };
    c.record_group(&row(Status::Failed, "{\"first\":true}"))
        .unwrap();
    // The same operation again (a member restarted) replaces the row.
    c.record_group(&row(Status::Degraded, "{\"members\":[]}"))
        .unwrap();
    assert_eq!(
        c.group_report_json("orders", "grp-op").unwrap().as_deref(),
        Some("{\"members\":[]}")
    );
    assert_eq!(c.group_report_json("other", "grp-op").unwrap(), None);

    let h = c.history(None, None).unwrap();
    assert_eq!(h[0].operation_id, "grp-op");
    let g = h[0].group.as_ref().unwrap();
    assert_eq!(
        (g.group.as_str(), g.status, g.consistency),
        ("orders", Status::Degraded, Consistency::FileSystem)
    );
    assert_eq!(h[1].group, None);
    let json: serde_json::Value = serde_json::from_str(&render_history_json(&h)).unwrap();
    assert_eq!(json[0]["group"]["group"], "orders");
    assert_eq!(json[0]["group"]["status"], "degraded");
    assert!(json[1].get("group").is_none());

    let table = render_history_table(&h);
    print!("{table}");
    let lines: Vec<&str> = table.lines().collect();
    let (group_col, status_col) = (
        lines[0].find("GROUP").unwrap(),
        lines[0].find("STATUS").unwrap(),
    );
    assert!(lines[1][group_col..].starts_with("orders: degraded (file-system)"));
    assert!(lines[2][group_col..].starts_with("- "));
    assert!(lines[1][status_col..].starts_with("degraded"));
    assert!(lines[2][status_col..].starts_with("succeeded"));

    c.prune(std::time::UNIX_EPOCH + Duration::from_secs(T0 + 3600))
        .unwrap();
    assert_eq!(c.group_report_json("orders", "grp-op").unwrap(), None);
}

#[test]
fn a_newer_schema_is_refused_untouched() {
    let s = Scratch::new("catalog-newer");
    let db = s.join("catalog.db");
    drop(Catalog::open(&db).unwrap());
    let future = catalog::current_version() + 1;
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.pragma_update(None, "user_version", future).unwrap();
    }
    let before = std::fs::read(&db).unwrap();
    let err = Catalog::open(&db).unwrap_err();
    assert!(
        matches!(err, CatalogError::TooNew { found, .. } if found == future),
        "{err}"
    );
    assert!(err.to_string().contains("newer"));
    assert_eq!(std::fs::read(&db).unwrap(), before);
}

// ---- crash in the middle of recording ----

const CHILD_ENV: &str = "QUIESCE_TEST_CATALOG_CHILD";
const MARK: &str = "QUIESCE-IN-TRANSACTION";

/// Not a test by itself: the body of the child process of
/// `sigkill_mid_record_leaves_no_partial_run` (runs only with the env var set).
#[test]
#[ignore]
fn subprocess_entry() {
    let Ok(db) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut c = Catalog::open(Path::new(&db)).unwrap();
    let big = big_report("op-crashed");
    c.record_with_hook(&big, RunKind::Snapshot, || {
        use std::io::Write;
        println!("{MARK}");
        std::io::stdout().flush().unwrap();
        std::thread::sleep(Duration::from_secs(600));
    })
    .unwrap();
    panic!("the parent should have killed this process");
}

/// A report big enough (about 10 MB of hook output) that SQLite spills uncommitted pages
/// into the database file before the commit, so the kill really leaves a half-written file
/// behind and the hot journal must be rolled back.
fn big_report(op: &str) -> quiesce::report::Report {
    let mut r = reports::degraded(op, at(T0 + 10_000));
    let template = r.hooks[0].clone();
    r.hooks = (0..320)
        .map(|i| {
            let mut h = template.clone();
            h.hook = format!("h{i}");
            h.stdout_tail = format!("{i:05}").repeat(16 * 1024 / 5);
            h.stderr_tail = format!("e{i:04}").repeat(16 * 1024 / 5);
            h
        })
        .collect();
    r
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sigkill_mid_record_leaves_no_partial_run() {
    let s = Scratch::new("catalog-crash");
    let db = s.join("catalog.db");
    let journal = PathBuf::from(format!("{}-journal", db.display()));
    {
        let mut c = Catalog::open(&db).unwrap();
        c.record(&reports::succeeded("op-a", at(T0)), RunKind::Snapshot)
            .unwrap();
        c.record(&reports::failed("op-b", at(T0 + 60)), RunKind::Snapshot)
            .unwrap();
    }
    let size_before = std::fs::metadata(&db).unwrap().len();
    let committed_before = std::fs::read(&db).unwrap();

    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "catalog::subprocess_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &db)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // Kills the child if an assertion below fails first (it would sleep for 10 minutes).
    let mut child = KillOnDrop(child);
    let child = &mut child.0;
    let started = Instant::now();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        let n = out.read_line(&mut line).unwrap();
        assert!(n > 0, "child ended before reaching the transaction");
        // The harness prints "test subprocess_entry ... " before the test's own output.
        if line.contains(MARK) {
            break;
        }
    }
    eprintln!("child reached the commit point in {:?}", started.elapsed());
    // The child sits inside the transaction: every row written, no commit.
    assert!(
        journal.exists(),
        "hot journal while the transaction is open"
    );
    let size_mid = std::fs::metadata(&db).unwrap().len();
    assert!(
        size_mid > size_before,
        "uncommitted pages were spilled into the database file ({size_before} -> {size_mid})"
    );
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    assert!(journal.exists(), "the journal survives the kill");

    // The next open rolls the hot journal back: exactly the committed runs remain.
    let c = Catalog::open(&db).unwrap();
    let ids: Vec<String> = c
        .history(None, None)
        .unwrap()
        .into_iter()
        .map(|r| r.operation_id)
        .collect();
    assert_eq!(ids, ["op-b", "op-a"]);
    assert!(c.report_json("op-crashed").unwrap().is_none());
    assert_eq!(c.totals_by_error_code().unwrap().len(), 2);
    drop(c);
    assert_eq!(
        std::fs::read(&db).unwrap(),
        committed_before,
        "rollback restored the file byte for byte"
    );
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let ok: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
        let hooks: i64 = conn
            .query_row("SELECT COUNT(*) FROM run_hooks", [], |r| r.get(0))
            .unwrap();
        assert_eq!(hooks, 4, "only the hooks of op-a and op-b");
        let attempts: i64 = conn
            .query_row("SELECT COUNT(*) FROM hook_attempts", [], |r| r.get(0))
            .unwrap();
        assert_eq!(attempts, 4);
    }

    // And recording works again, the same operation included.
    let mut c = Catalog::open(&db).unwrap();
    c.record(&big_report("op-crashed"), RunKind::Snapshot)
        .unwrap();
    let h = c.history(None, None).unwrap();
    assert_eq!(h.len(), 3);
    assert_eq!(h[0].operation_id, "op-crashed");
    assert!(!journal.exists());
}

/// Retention deletes a run with everything recorded about it (the verifications of its
/// snapshots, its group report), keeps the newest run whatever its age, and never lowers
/// the totals the metrics count.
#[test]
fn retention_deletes_old_runs_with_their_rows_and_keeps_the_totals() {
    let s = Scratch::new("catalog-retention");
    let mut c = three_runs(&s.join("catalog.db"));
    let totals = c.totals().unwrap();
    c.record_verification(&catalog::VerificationRow {
        provider: "btrfs".into(),
        snapshot_id: "/srv/.snapshots/op-ok".into(),
        started_unix: (T0 + 10) as i64,
        finished_unix: (T0 + 20) as i64,
        verified: true,
        message: "verified".into(),
        report_json: "{}".into(),
    })
    .unwrap();
    c.record_group(&catalog::GroupRunRow {
        group: "orders".into(),
        operation_id: "op-ok".into(),
        member: "db-1".into(),
        coordinator: "admin-77".into(),
        status: Status::Succeeded,
        consistency: Consistency::Application,
        // Recent: it goes with its run, not by its own age.
        started_unix: (T0 + 7000) as i64,
        report_json: "{}".into(),
    })
    .unwrap();
    let ids = |c: &Catalog| -> Vec<String> {
        c.history(None, None)
            .unwrap()
            .into_iter()
            .map(|r| r.operation_id)
            .collect()
    };

    // keep_runs = 2: the oldest run goes, with its verification and group report.
    let now = at(T0 + 7300);
    assert_eq!(c.apply_retention(2, 400, now).unwrap(), 1);
    assert_eq!(ids(&c), ["op-failed", "op-degraded"]);
    let snapshot = "/srv/.snapshots/op-ok";
    assert_eq!(c.verification_of_snapshot("btrfs", snapshot).unwrap(), None);
    assert_eq!(c.group_report_json("orders", "op-ok").unwrap(), None);
    assert_eq!(c.totals().unwrap(), totals, "the totals never go down");

    // keep_days = 1, a day later: both are older, but the newest run is always kept.
    let later = at(T0 + 7300 + 86_400);
    assert_eq!(c.apply_retention(10, 1, later).unwrap(), 1);
    assert_eq!(ids(&c), ["op-failed"]);
    assert_eq!(c.totals().unwrap(), totals);
    // Within both limits nothing changes.
    assert_eq!(c.apply_retention(10, 400, later).unwrap(), 0);
    assert_eq!(ids(&c), ["op-failed"]);
}

/// `[catalog] keep_runs` through the real binary: after five runs `history` shows the newest
/// two, and the metrics still count all five.
#[test]
fn the_binary_keeps_only_the_newest_runs() {
    let s = Scratch::new("catalog-keep");
    let snap = s.script(
        "snap.sh",
        "#!/bin/sh\necho \"snap-$QUIESCE_OPERATION_ID\"\n",
    );
    let cfg = s.file(
        "quiesce.toml",
        &format!(
            "[paths]\nstate_dir = {:?}\ncatalog = {:?}\nmetrics_file = {:?}\n\
             [freeze]\nenabled = false\n\
             [snapshot]\nprovider = \"command\"\ncommand = [{:?}]\n\
             [catalog]\nkeep_runs = 2\n",
            s.join("state").display().to_string(),
            s.join("catalog.db").display().to_string(),
            s.join("quiesce.prom").display().to_string(),
            snap.display().to_string(),
        ),
        0o600,
    );
    let mut made = Vec::new();
    for _ in 0..5 {
        let run = support::quiesce(&["snapshot", "--json"]).config(&cfg).run();
        assert_eq!(run.code, 0, "{}", run.describe());
        made.push(run.report().operation_id);
    }
    // A --since beyond the epoch means everything (it used to overflow and panic).
    for since in ["1d", "500000000000y"] {
        let history = Command::new(support::quiesce_bin())
            .args(["history", "--json", "--since", since, "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(history.status.success(), "{history:?}");
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&history.stdout).unwrap();
        let shown: Vec<&str> = rows
            .iter()
            .map(|r| r["operation_id"].as_str().unwrap())
            .collect();
        assert_eq!(shown, [made[4].as_str(), made[3].as_str()]);
    }
    let metrics = std::fs::read_to_string(s.join("quiesce.prom")).unwrap();
    assert!(
        metrics.contains("quiesce_runs_total{status=\"succeeded\"} 5"),
        "{metrics}"
    );
}
