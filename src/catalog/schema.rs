//! The catalog's schema as an ordered list of migrations.
//!
//! `PRAGMA user_version` holds how many migrations a database has had. Opening a database
//! applies the missing ones, in order, in one `BEGIN IMMEDIATE` transaction that also sets
//! the new version, so a crash or a concurrent opener never sees a half-migrated schema.
//! Never edit a migration that has shipped: append a new one.

/// Every migration, oldest first. `MIGRATIONS[i]` takes a database from version `i` to
/// version `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 1: the initial layout. One row per run, with the report's columns the history and
    // the metrics need, the whole report as JSON, and child tables for errors, snapshots,
    // hooks and hook attempts.
    r#"
CREATE TABLE runs (
    id                 INTEGER PRIMARY KEY,
    operation_id       TEXT    NOT NULL UNIQUE,
    started_at         TEXT    NOT NULL,
    started_unix       INTEGER NOT NULL,
    finished_at        TEXT    NOT NULL,
    finished_unix      INTEGER NOT NULL,
    status             TEXT    NOT NULL CHECK (status IN ('succeeded', 'degraded', 'failed')),
    consistency        TEXT    NOT NULL
        CHECK (consistency IN ('none', 'crash', 'file-system', 'application')),
    target_consistency TEXT    NOT NULL
        CHECK (target_consistency IN ('none', 'crash', 'file-system', 'application')),
    frozen_ms          INTEGER,
    pre_ms             INTEGER,
    freeze_ms          INTEGER,
    snapshot_ms        INTEGER,
    thaw_ms            INTEGER,
    post_ms            INTEGER,
    total_ms           INTEGER NOT NULL,
    dry_run            INTEGER NOT NULL DEFAULT 0,
    report_json        TEXT    NOT NULL
);
CREATE TABLE run_errors (
    run_id   INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    severity TEXT    NOT NULL CHECK (severity IN ('error', 'warning')),
    seq      INTEGER NOT NULL,
    code     TEXT    NOT NULL,
    message  TEXT    NOT NULL,
    hook     TEXT,
    PRIMARY KEY (run_id, severity, seq)
);
CREATE TABLE run_snapshots (
    run_id      INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    provider    TEXT    NOT NULL,
    snapshot_id TEXT    NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE run_hooks (
    id          INTEGER PRIMARY KEY,
    run_id      INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    hook        TEXT    NOT NULL,
    phase       TEXT    NOT NULL CHECK (phase IN ('pre', 'post')),
    path        TEXT    NOT NULL,
    error_code  TEXT,
    message     TEXT    NOT NULL,
    duration_ms INTEGER NOT NULL,
    stdout_tail TEXT    NOT NULL,
    stderr_tail TEXT    NOT NULL,
    UNIQUE (run_id, seq)
);
CREATE TABLE hook_attempts (
    hook_id     INTEGER NOT NULL REFERENCES run_hooks(id) ON DELETE CASCADE,
    number      INTEGER NOT NULL,
    end_kind    TEXT    NOT NULL
        CHECK (end_kind IN ('exited', 'signaled', 'timed_out', 'spawn_failed')),
    exit_code   INTEGER,
    signal      INTEGER,
    error       TEXT,
    duration_ms INTEGER NOT NULL,
    PRIMARY KEY (hook_id, number)
);
"#,
    // 2: runs got a kind (a one-shot `quiesce snapshot` or an operation served to a host
    // through `quiesce serve`); rows from version 1 were all one-shot snapshots. Indexes
    // for `history --since`, `quiesce snapshots` (consistency of a snapshot id) and the
    // per-code error totals of the metrics.
    r#"
ALTER TABLE runs ADD COLUMN kind TEXT NOT NULL DEFAULT 'snapshot'
    CHECK (kind IN ('snapshot', 'served'));
CREATE INDEX runs_by_start ON runs(started_unix);
CREATE INDEX snapshots_by_ref ON run_snapshots(provider, snapshot_id);
CREATE INDEX errors_by_code ON run_errors(code);
"#,
    // 3: runs record who asked for them (`cli`, `http`, `guest-agent`, `platform:NAME`,
    // `group:NAME@COORDINATOR`); earlier rows: one-shot snapshots came from the command
    // line, served operations over HTTP.
    r#"
ALTER TABLE runs ADD COLUMN caller TEXT NOT NULL DEFAULT 'cli';
UPDATE runs SET caller = 'http' WHERE kind = 'served';
"#,
    // 4: verifications of snapshots (`quiesce verify`): one row per verification, with its
    // result and the whole verification report as JSON. A snapshot without a row is
    // "not verified"; the newest row is its state.
    r#"
CREATE TABLE verifications (
    id            INTEGER PRIMARY KEY,
    provider      TEXT    NOT NULL,
    snapshot_id   TEXT    NOT NULL,
    started_unix  INTEGER NOT NULL,
    finished_unix INTEGER NOT NULL,
    verified      INTEGER NOT NULL,
    message       TEXT    NOT NULL,
    report_json   TEXT    NOT NULL
);
CREATE INDEX verifications_by_ref ON verifications(provider, snapshot_id);
"#,
    // 5: consistency groups. One row per group operation this machine took part in, with
    // the group's outcome (the weakest member's) and the whole group report as JSON. The
    // member's own run is in `runs` under the same operation id (`history` joins them).
    r#"
CREATE TABLE group_runs (
    group_name    TEXT    NOT NULL,
    operation_id  TEXT    NOT NULL,
    member        TEXT    NOT NULL,
    coordinator   TEXT    NOT NULL,
    status        TEXT    NOT NULL CHECK (status IN ('succeeded', 'degraded', 'failed')),
    consistency   TEXT    NOT NULL
        CHECK (consistency IN ('none', 'crash', 'file-system', 'application')),
    started_unix  INTEGER NOT NULL,
    recorded_unix INTEGER NOT NULL,
    report_json   TEXT    NOT NULL,
    PRIMARY KEY (group_name, operation_id)
);
CREATE INDEX group_runs_by_operation ON group_runs(operation_id);
"#,
    // 6: what retention deleted, counted, so the totals (Prometheus counters) never go down:
    // `status` rows count deleted runs by status, `error` rows their errors by code.
    r#"
CREATE TABLE pruned_totals (
    kind  TEXT    NOT NULL CHECK (kind IN ('status', 'error')),
    key   TEXT    NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (kind, key)
);
"#,
];

/// The schema version this build writes.
pub fn current_version() -> u32 {
    MIGRATIONS.len() as u32
}
