//! Real databases through the real binary: PostgreSQL and MariaDB servers started by hand on
//! loop filesystems these tests create, under a continuous write load, snapshotted with
//! `quiesce snapshot --json --config X` and the hook scripts shipped in examples/hooks/, and
//! every snapshot restored (its image attached to a new loop device, mounted elsewhere, a
//! second server started on it) and checked.
//!
//! What each test proves:
//! - `postgres_single_volume_checkpoint_hook_10_snapshots_under_pgbench`: with data and WAL
//!   on one volume, the CHECKPOINT pre hook + freeze gives application-consistent copies:
//!   each copy is a clean ext4, PostgreSQL starts on it (short crash recovery), pgbench's
//!   balance invariant holds, and every transaction committed before quiesce started is in it.
//! - `mariadb_held_ftwrl_10_snapshots_under_write_load`: the mariadb-hold hook (FLUSH TABLES
//!   WITH READ LOCK held across the snapshot): every insert acknowledged before the snapshot
//!   started is in each restored copy, without gaps, in InnoDB and in a MyISAM table, which
//!   checks clean (CHECK TABLE, no repair); the binlog position the hook recorded is exactly
//!   the one of the restored data. A control copy taken with the freeze alone has the MyISAM
//!   table "not closed properly": that is what the lock adds to a file-system-consistent copy.
//! - `postgres_two_volumes_held_backup_restores_with_backup_label`: WAL and data on two
//!   volumes, the pg-backup-hold hook; each copy restored with its backup_label and WAL
//!   (pg-restore-prepare) runs "backup recovery" to the end-of-backup record and is
//!   consistent.
//! - `postgres_two_volumes_uncoordinated_copies_need_the_backup_label`: why that hook
//!   matters. Frozen together by quiesce, the two volumes form one point in time and crash
//!   recovery suffices. Copied one after the other (as a provider that snapshots disks one
//!   by one does), with a checkpoint in between, the copy does not start without the hook
//!   ("could not locate a valid checkpoint record"), and does with it.
//! - `*_hold_never_ready_*` and `*_killed_while_holding_*`: broken holds. The READY line
//!   never comes (MariaDB: FTWRL blocked by another session's LOCK TABLES; PostgreSQL:
//!   pg_backup_start's checkpoint blocked by a volume someone else left frozen):
//!   Pre-ScriptTimeout, or for MariaDB the hook's own lock_wait_timeout
//!   (Pre-ScriptExecutionFailed). The hook (MariaDB) or its psql (PostgreSQL) killed while
//!   holding: HoldLost, consistency lowered to file-system. Afterwards the database takes
//!   writes, no FTWRL, backup session or replication slot is left, nothing is frozen.
//!
//! Run: `cargo test --test it databases -- --nocapture` (as root; PostgreSQL 15 and MariaDB
//! installed). The figures (durations, frozen time, recovery) are printed to stderr.
use crate::support;
use crate::support::db;

use db::*;
use quiesce::codes::ErrorCode;
use quiesce::report::{Consistency, Status};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{writable_within, LoopFs, Scratch};

/// Two heavy tests at a time at most (two cores shared with other builders).
static SLOTS: Slots = Slots::new(2);

/// Snapshots taken of each database (each one checked for consistency).
const SNAPSHOTS: usize = 10;

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A `command` snapshot provider: copies each (image, name) into SNAPS/<operation>/name and
/// prints that directory as the snapshot id. `between` runs between two copies (sh code).
fn snapshot_script(
    dir: &Scratch,
    snaps: &Path,
    images: &[(&Path, &str)],
    between: &[String],
) -> PathBuf {
    let mut body = format!(
        "#!/bin/sh\n# Test snapshot provider: copies of the loop images.\nset -eu\n\
         exec 2>>{}\nset -x\n\
         dest={}/\"${{QUIESCE_OPERATION_ID:-$(date +%s%N)}}\"\nmkdir \"$dest\"\n",
        p(&snaps.join("stderr.log")),
        p(snaps)
    );
    for (i, (img, name)) in images.iter().enumerate() {
        if i > 0 {
            if let Some(code) = between.get(i - 1) {
                body.push_str(code);
                body.push('\n');
            }
        }
        body.push_str(&format!(
            "cp --reflink=auto --sparse=always {} \"$dest/{name}\"\n",
            p(img)
        ));
    }
    body.push_str("echo \"$dest\"\n");
    dir.script("snapshot", &body)
}

struct ConfigSpec<'a> {
    private: &'a Scratch,
    freeze: Option<&'a [&'a Path]>,
    snapshot: &'a Path,
    hook_name: &'a str,
    hook: Option<Vec<String>>,
    hold: bool,
    hook_timeout: &'a str,
}

/// Native TOML (README, "Native") in the private scratch dir, mode 0600.
fn write_config(c: &ConfigSpec<'_>, file: &str) -> PathBuf {
    let state = c.private.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let mut t = format!(
        "[paths]\nstate_dir = {}\ncatalog = {}\n\n",
        toml_str(p(&state)),
        toml_str(p(&c.private.join("catalog.db")))
    );
    match c.freeze {
        Some(mounts) => {
            let m: Vec<&str> = mounts.iter().map(|m| p(m)).collect();
            t.push_str(&format!(
                "[freeze]\nenabled = true\ntimeout = \"30s\"\ninclude = {}\n\n",
                toml_list(&m)
            ));
        }
        None => t.push_str("[freeze]\nenabled = false\n\n"),
    }
    t.push_str(&format!(
        "[snapshot]\nprovider = \"command\"\ncommand = {}\ntimeout = \"60s\"\n\n",
        toml_list(&[p(c.snapshot)])
    ));
    if let Some(argv) = &c.hook {
        t.push_str(&format!(
            "[[hook]]\nname = {}\npre = {}\ntimeout = {}\nretries = 0\ncontinue_on_failure = true\nhold = {}\n",
            toml_str(c.hook_name),
            toml_list(argv),
            toml_str(c.hook_timeout),
            c.hold
        ));
    }
    c.private.file(file, &t, 0o600)
}

fn s(x: &Path) -> String {
    x.to_str().unwrap().to_string()
}

/// Seconds, for the figures printed to stderr.
fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// The "redo done ... elapsed: X s" figure of a PostgreSQL log, if any.
fn redo_elapsed(log: &str) -> String {
    log.lines()
        .find(|l| l.contains("redo done at"))
        .and_then(|l| l.split("elapsed: ").nth(1))
        .map(|x| x.trim().to_string())
        .unwrap_or_else(|| "no redo".to_string())
}

/// Wait for the fs at `mnt` to be writable (nothing left frozen) and assert it.
fn assert_not_frozen(mounts: &[&Path]) {
    for m in mounts {
        assert!(
            writable_within(m, Duration::from_secs(5)),
            "{} was left frozen",
            m.display()
        );
    }
}

// =========================================================================================
// PostgreSQL, one volume, CHECKPOINT pre hook
// =========================================================================================

#[test]
fn postgres_single_volume_checkpoint_hook_10_snapshots_under_pgbench() {
    support::require_root!("database servers run as their own users, on loop filesystems");
    let _slot = SLOTS.take();
    let t0 = Instant::now();
    let pg = User::get("postgres");
    let open = OpenDir::new("db-pg1");
    let private = Scratch::new("db-pg1-priv");
    let snaps = private.join("snaps");
    std::fs::create_dir_all(&snaps).unwrap();

    let vol = LoopFs::create(
        "ext4",
        256,
        &private.join("data.img"),
        &open.path().join("vol"),
    );
    let data = vol.path("pgdata");
    pg_initdb(&pg, &data, None);
    let mut server = Postgres::start(
        &pg,
        &data,
        &open.path().join("sock"),
        &open.path().join("pg.log"),
    )
    .unwrap();
    server.create_quiesce_role();
    server.pgbench_init(1);
    let passfile = private.file(
        "pgpass",
        &format!("*:*:*:quiesce:{PG_QUIESCE_PASSWORD}\n"),
        0o600,
    );
    let hook = install_hook(&private, "pg-checkpoint");
    let snap = snapshot_script(&private, &snaps, &[(&vol.image, "data.img")], &[]);
    let config = write_config(
        &ConfigSpec {
            private: &private,
            freeze: Some(&[&vol.mount_point]),
            snapshot: &snap,
            hook_name: "postgres",
            hook: Some(vec![
                s(&hook),
                "--conninfo".into(),
                server.quiesce_conninfo(),
                "--passfile".into(),
                s(&passfile),
            ]),
            hold: false,
            hook_timeout: "30s",
        },
        "quiesce.toml",
    );
    let mut load = server.pgbench_load(2, &open.path().join("pgbench.log"));
    std::thread::sleep(Duration::from_secs(1));
    let setup = t0.elapsed();

    // (snapshot dir, history rows committed before quiesce started, rows after it ended)
    let mut taken = Vec::new();
    let t_snap = Instant::now();
    for i in 0..SNAPSHOTS {
        std::thread::sleep(Duration::from_millis(500));
        let before: i64 = server
            .psql("bench", "SELECT count(*) FROM pgbench_history")
            .parse()
            .unwrap();
        let run = quiesce_snapshot(&config);
        let after: i64 = server
            .psql("bench", "SELECT count(*) FROM pgbench_history")
            .parse()
            .unwrap();
        assert_eq!(run.code, 0, "snapshot {i}: {}", run.describe());
        assert_eq!(
            run.consistency(),
            Consistency::Application,
            "{}",
            run.describe()
        );
        let ids = run.snapshot_ids();
        assert_eq!(ids.len(), 1, "{}", run.describe());
        eprintln!(
            "pg1 snapshot {i}: {} frozen {:?} ms, quiesce {} ms, history {before}..{after}",
            run.operation_id(),
            run.frozen_ms(),
            run.elapsed.as_millis()
        );
        taken.push((PathBuf::from(&ids[0]), before, after));
    }
    let snap_time = t_snap.elapsed();
    assert!(
        load.exited().is_none(),
        "pgbench stopped during the snapshots"
    );
    load.stop();
    server.stop();

    let t_restore = Instant::now();
    let mut last_rows = 0;
    for (i, (dir, before, after)) in taken.iter().enumerate() {
        let image = dir.join("data.img");
        e2fsck_clean(&image).unwrap_or_else(|e| panic!("snapshot {i} is not a clean ext4: {e}"));
        let mnt = Attached::new(&image, &open.path().join(format!("restore{i}")));
        let rdata = mnt.mount_point.join("pgdata");
        let _ = std::fs::remove_file(rdata.join("postmaster.pid"));
        let mut restored = Postgres::start(
            &pg,
            &rdata,
            &open.path().join(format!("rsock{i}")),
            &open.path().join(format!("restore{i}.log")),
        )
        .unwrap_or_else(|e| panic!("snapshot {i} does not start: {e}"));
        let (sum, rows) = restored.pgbench_invariant();
        assert!(
            rows >= *before && rows <= *after,
            "snapshot {i}: {rows} history rows, expected {before}..={after}"
        );
        assert!(rows >= last_rows, "snapshot {i} older than the one before");
        last_rows = rows;
        eprintln!(
            "pg1 restore {i}: invariant holds (sum {sum}, {rows} transactions), redo {}",
            redo_elapsed(&restored.log_text())
        );
        restored.stop();
        drop(mnt);
        let _ = std::fs::remove_dir_all(dir);
    }
    eprintln!(
        "pg1 figures: setup {}, {SNAPSHOTS} snapshots {}, {SNAPSHOTS} restores {}, total {}",
        secs(setup),
        secs(snap_time),
        secs(t_restore.elapsed()),
        secs(t0.elapsed())
    );
    assert!(last_rows > 0);
}

// =========================================================================================
// MariaDB, FLUSH TABLES WITH READ LOCK held across the snapshot
// =========================================================================================

/// A MariaDB server on its own ext4 loop volume, with the hook's account and `w.log`.
/// Fields drop in this order: the server before its volume, the volume before the dirs.
struct MariaSetup {
    server: MariaDb,
    vol: LoopFs,
    my: User,
    open: OpenDir,
    private: Scratch,
    option_file: PathBuf,
    positions: PathBuf,
    hook: PathBuf,
}

fn mariadb_setup(tag: &str) -> MariaSetup {
    let my = User::get("mysql");
    let open = OpenDir::new(tag);
    let private = Scratch::new(&format!("{tag}-priv"));
    let vol = LoopFs::create(
        "ext4",
        384,
        &private.join("data.img"),
        &open.path().join("vol"),
    );
    let datadir = vol.path("mysql");
    mariadb_install(&my, &datadir, &open.path().join("install-tmp"));
    let server = MariaDb::start(
        &my,
        &datadir,
        &open.path().join("run"),
        &open.path().join("mariadb.log"),
    )
    .unwrap();
    server.create_quiesce_user();
    server.sql(
        "CREATE DATABASE w; \
         CREATE TABLE w.log (id BIGINT PRIMARY KEY, at DATETIME(6) NOT NULL, payload VARCHAR(200)) ENGINE=InnoDB; \
         CREATE TABLE w.mlog (id BIGINT PRIMARY KEY) ENGINE=MyISAM; \
         CREATE TABLE w.other (id INT AUTO_INCREMENT PRIMARY KEY) ENGINE=InnoDB",
    );
    let option_file = private.file("mariadb.cnf", &server.quiesce_option_file(), 0o600);
    let positions = private.join("positions");
    std::fs::create_dir_all(&positions).unwrap();
    let hook = install_hook(&private, "mariadb-hold");
    MariaSetup {
        server,
        vol,
        my,
        open,
        private,
        option_file,
        positions,
        hook,
    }
}

impl MariaSetup {
    fn hook_argv(&self, extra: &[&str]) -> Vec<String> {
        let mut v = vec![
            s(&self.hook),
            "--out-dir".into(),
            s(&self.positions),
            "--defaults-extra-file".into(),
            s(&self.option_file),
        ];
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    }

    /// A write that must not wait: fails if blocked (e.g. by a leftover FTWRL) for 5 s.
    fn write_succeeds(&self, table: &str) -> Result<String, String> {
        let sql = if table == "w.log" {
            "SET SESSION lock_wait_timeout = 5; \
             INSERT INTO w.log (id, at) SELECT COALESCE(MAX(id), 0) + 1000000, NOW(6) FROM w.log"
                .to_string()
        } else {
            format!("SET SESSION lock_wait_timeout = 5; INSERT INTO {table} () VALUES ()")
        };
        self.server.try_sql(&sql)
    }

    /// No session of the hook's account left (polls: the server notices a closed
    /// connection asynchronously).
    fn assert_no_hook_session(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = self.server.quiesce_sessions();
            if left.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "hook sessions left: {left:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn read_kv(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// "domain-server-seq" -> seq.
fn gtid_seq(gtid: &str) -> i64 {
    gtid.rsplit('-').next().unwrap().parse().unwrap()
}

#[test]
fn mariadb_held_ftwrl_10_snapshots_under_write_load() {
    support::require_root!("database servers run as their own users, on loop filesystems");
    let _slot = SLOTS.take();
    let t0 = Instant::now();
    let m = mariadb_setup("db-my1");
    let snaps = m.private.join("snaps");
    std::fs::create_dir_all(&snaps).unwrap();
    let snap = snapshot_script(&m.private, &snaps, &[(&m.vol.image, "data.img")], &[]);
    let config = write_config(
        &ConfigSpec {
            private: &m.private,
            freeze: Some(&[&m.vol.mount_point]),
            snapshot: &snap,
            hook_name: "mariadb",
            hook: Some(m.hook_argv(&[])),
            hold: true,
            hook_timeout: "30s",
        },
        "quiesce.toml",
    );
    // The control: the same snapshot with the freeze alone, no hook.
    let config_control = write_config(
        &ConfigSpec {
            private: &m.private,
            freeze: Some(&[&m.vol.mount_point]),
            snapshot: &snap,
            hook_name: "none",
            hook: None,
            hold: false,
            hook_timeout: "30s",
        },
        "control.toml",
    );
    let writer = MariaWriter::start(&m.server);
    let deadline = Instant::now() + Duration::from_secs(30);
    while writer.last_acked() < 20 {
        assert!(Instant::now() < deadline, "the writer does not write");
        std::thread::sleep(Duration::from_millis(50));
    }
    let setup = t0.elapsed();

    // (snapshot dir, last id acked before the snapshot started, last acked after quiesce,
    //  recorded binlog position)
    let mut taken = Vec::new();
    let t_snap = Instant::now();
    for i in 0..SNAPSHOTS {
        std::thread::sleep(Duration::from_millis(500));
        let before = writer.last_acked();
        let run = quiesce_snapshot(&config);
        let after = writer.last_acked();
        assert_eq!(run.code, 0, "snapshot {i}: {}", run.describe());
        assert_eq!(
            run.consistency(),
            Consistency::Application,
            "{}",
            run.describe()
        );
        let acked_before_snapshot = writer.last_acked_before(run.snapshot_start_lower_bound());
        assert!(acked_before_snapshot >= before);
        let pos = read_kv(&m.positions.join(format!("{}.binlog", run.operation_id())));
        assert_eq!(
            pos.get("log_bin").map(String::as_str),
            Some("ON"),
            "{pos:?}"
        );
        eprintln!(
            "my1 snapshot {i}: {} frozen {:?} ms, quiesce {} ms, acked before {before} / before \
             snapshot {acked_before_snapshot} / after {after}, binlog {}:{}",
            run.operation_id(),
            run.frozen_ms(),
            run.elapsed.as_millis(),
            pos["binlog_file"],
            pos["binlog_position"]
        );
        taken.push((
            PathBuf::from(&run.snapshot_ids()[0]),
            acked_before_snapshot,
            after,
            pos,
        ));
    }
    let snap_time = t_snap.elapsed();
    let control = quiesce_snapshot(&config_control);
    assert_eq!(
        control.consistency(),
        Consistency::FileSystem,
        "{}",
        control.describe()
    );
    let control_dir = PathBuf::from(&control.snapshot_ids()[0]);
    let total_acked = writer.finish().expect("the writer failed");
    let mut m = m;
    m.server.stop();
    let (my, open) = (&m.my, &m.open);

    let t_restore = Instant::now();
    let mut gtid_offset = None;
    for (i, (dir, acked_before, acked_after, pos)) in taken.iter().enumerate() {
        let image = dir.join("data.img");
        e2fsck_clean(&image).unwrap_or_else(|e| panic!("snapshot {i} is not a clean ext4: {e}"));
        let mnt = Attached::new(&image, &open.path().join(format!("restore{i}")));
        let rdatadir = mnt.mount_point.join("mysql");
        let mut restored = MariaDb::start(
            my,
            &rdatadir,
            &open.path().join(format!("rrun{i}")),
            &open.path().join(format!("restore{i}.log")),
        )
        .unwrap_or_else(|e| panic!("snapshot {i} does not start: {e}"));
        let row = restored.sql("SELECT COUNT(*), COALESCE(MAX(id), 0) FROM w.log");
        let (count, max) = row.split_once('\t').unwrap();
        let (count, max): (u64, u64) = (count.parse().unwrap(), max.parse().unwrap());
        assert_eq!(
            count, max,
            "snapshot {i}: ids are not 1..={max} without gaps"
        );
        assert!(
            max >= *acked_before,
            "snapshot {i}: insert {acked_before} was acknowledged before the snapshot but is missing (max {max})"
        );
        assert!(
            max <= acked_after + 1,
            "snapshot {i}: {max} rows, more than ever acknowledged"
        );
        // The binlog position recorded under the lock is the end of the binlog in the copy,
        // and its GTID sequence is the data's: one GTID per insert, a constant offset of
        // the setup statements.
        let binlog = rdatadir.join(&pos["binlog_file"]);
        let size = std::fs::metadata(&binlog).unwrap().len();
        let recorded: u64 = pos["binlog_position"].parse().unwrap();
        assert_eq!(
            size,
            recorded,
            "snapshot {i}: {} is {size} bytes, recorded position {recorded}",
            binlog.display()
        );
        // FLUSH TABLES closed the MyISAM table: it checks clean without any repair, and holds
        // the same ids (the lock may fall between the two inserts of the last id).
        let check = restored.sql("CHECK TABLE w.mlog");
        assert!(
            check.lines().all(|l| l.ends_with("status\tOK")),
            "snapshot {i}: MyISAM table not clean: {check}"
        );
        let row = restored.sql("SELECT COUNT(*), COALESCE(MAX(id), 0) FROM w.mlog");
        let (mcount, mmax) = row.split_once('\t').unwrap();
        let (mcount, mmax): (u64, u64) = (mcount.parse().unwrap(), mmax.parse().unwrap());
        assert!(
            mcount == mmax && (mmax == max || mmax + 1 == max),
            "snapshot {i}: MyISAM has {mcount} rows up to {mmax}, InnoDB up to {max}"
        );
        let offset = gtid_seq(&pos["gtid_binlog_pos"]) - (max + mmax) as i64;
        assert_eq!(
            *gtid_offset.get_or_insert(offset),
            offset,
            "snapshot {i}: binlog GTID does not match the data (one GTID per insert)"
        );
        let restored_gtid = restored.sql("SELECT @@GLOBAL.gtid_binlog_pos");
        assert_eq!(
            restored_gtid, pos["gtid_binlog_pos"],
            "snapshot {i}: restored GTID position"
        );
        eprintln!(
            "my1 restore {i}: {max} rows 1..={max}, binlog {}:{recorded} gtid {restored_gtid}",
            pos["binlog_file"]
        );
        restored.stop();
        drop(mnt);
        let _ = std::fs::remove_dir_all(dir);
    }
    // The control copy (freeze, no FTWRL): InnoDB recovers, but the MyISAM table was copied
    // open, in the middle of a stream of writes.
    let image = control_dir.join("data.img");
    e2fsck_clean(&image).unwrap_or_else(|e| panic!("control is not a clean ext4: {e}"));
    let mnt = Attached::new(&image, &open.path().join("restore-control"));
    let mut restored = MariaDb::start(
        my,
        &mnt.mount_point.join("mysql"),
        &open.path().join("rrun-control"),
        &open.path().join("restore-control.log"),
    )
    .unwrap_or_else(|e| panic!("control does not start: {e}"));
    let check = restored.sql("CHECK TABLE w.mlog");
    eprintln!("my1 control (freeze only, no hook): CHECK TABLE w.mlog: {check:?}");
    assert!(
        !check.lines().all(|l| l.ends_with("status\tOK")),
        "the control copy's MyISAM table checks clean too: the test does not show what FTWRL adds"
    );
    restored.stop();
    drop(mnt);
    eprintln!(
        "my1 figures: setup {}, {SNAPSHOTS} snapshots {}, {SNAPSHOTS} restores {}, {total_acked} inserts, total {}",
        secs(setup),
        secs(snap_time),
        secs(t_restore.elapsed()),
        secs(t0.elapsed())
    );
}

// =========================================================================================
// PostgreSQL, WAL and data on two volumes
// =========================================================================================

/// Fields drop in this order: the server before its volumes, the volumes before the dirs.
struct PgTwo {
    server: Postgres,
    walvol: LoopFs,
    datavol: LoopFs,
    pg: User,
    open: OpenDir,
    private: Scratch,
    waldir: PathBuf,
    passfile: PathBuf,
    backups: PathBuf,
    snaps: PathBuf,
}

fn pg_two_volumes(tag: &str) -> PgTwo {
    let pg = User::get("postgres");
    let open = OpenDir::new(tag);
    let private = Scratch::new(&format!("{tag}-priv"));
    let walvol = LoopFs::create(
        "ext4",
        256,
        &private.join("wal.img"),
        &open.path().join("walvol"),
    );
    let datavol = LoopFs::create(
        "ext4",
        256,
        &private.join("data.img"),
        &open.path().join("datavol"),
    );
    let waldir = walvol.path("pg_wal");
    let data = datavol.path("pgdata");
    pg_initdb(&pg, &data, Some(&waldir));
    let server = Postgres::start(
        &pg,
        &data,
        &open.path().join("sock"),
        &open.path().join("pg.log"),
    )
    .unwrap();
    server.create_quiesce_role();
    server.pgbench_init(1);
    let passfile = private.file(
        "pgpass",
        &format!("*:*:*:quiesce:{PG_QUIESCE_PASSWORD}\n"),
        0o600,
    );
    let backups = private.join("backups");
    let snaps = private.join("snaps");
    std::fs::create_dir_all(&backups).unwrap();
    std::fs::create_dir_all(&snaps).unwrap();
    PgTwo {
        server,
        walvol,
        datavol,
        pg,
        open,
        private,
        waldir,
        passfile,
        backups,
        snaps,
    }
}

impl PgTwo {
    fn hold_hook_argv(&self) -> Vec<String> {
        let hook = install_hook(&self.private, "pg-backup-hold");
        vec![
            s(&hook),
            "--out-dir".into(),
            s(&self.backups),
            "--conninfo".into(),
            self.server.quiesce_conninfo(),
            "--passfile".into(),
            s(&self.passfile),
            "--copy-wal-from".into(),
            s(&self.waldir),
        ]
    }

    fn images(&self) -> [(&Path, &'static str); 2] {
        [
            (&self.walvol.image, "wal.img"),
            (&self.datavol.image, "data.img"),
        ]
    }

    fn history(&self) -> i64 {
        self.server
            .psql("bench", "SELECT count(*) FROM pgbench_history")
            .parse()
            .unwrap()
    }
}

/// A restored two-volume copy: both images attached and mounted, pg_wal pointed at the
/// restored WAL volume.
struct RestoredPair {
    _wal: Attached,
    _data: Attached,
    data: PathBuf,
    wal: PathBuf,
}

fn attach_pair(open: &OpenDir, snapdir: &Path, tag: &str) -> RestoredPair {
    for img in ["wal.img", "data.img"] {
        e2fsck_clean(&snapdir.join(img))
            .unwrap_or_else(|e| panic!("{tag}: {img} is not a clean ext4: {e}"));
    }
    let wal = Attached::new(
        &snapdir.join("wal.img"),
        &open.path().join(format!("{tag}-wal")),
    );
    let data = Attached::new(
        &snapdir.join("data.img"),
        &open.path().join(format!("{tag}-data")),
    );
    RestoredPair {
        wal: wal.mount_point.join("pg_wal"),
        data: data.mount_point.join("pgdata"),
        _wal: wal,
        _data: data,
    }
}

fn pg_restore_prepare(data: &Path, backup: &Path, wal: &Path) {
    let tool = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hooks/pg-restore-prepare");
    let (ok, out, err) = run(Command::new(tool)
        .arg("--data")
        .arg(data)
        .arg("--backup")
        .arg(backup)
        .arg("--wal-dir")
        .arg(wal));
    assert!(ok, "pg-restore-prepare failed: {out}\n{err}");
}

/// Plain crash recovery of a restored pair: only the pg_wal symlink is repointed (the copy
/// is mounted elsewhere than the original) and the stale pid file removed.
fn crash_restore_prepare(pair: &RestoredPair) {
    let _ = std::fs::remove_file(pair.data.join("postmaster.pid"));
    let link = pair.data.join("pg_wal");
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&pair.wal, &link).unwrap();
}

#[test]
fn postgres_two_volumes_held_backup_restores_with_backup_label() {
    support::require_root!("database servers run as their own users, on loop filesystems");
    let _slot = SLOTS.take();
    let t0 = Instant::now();
    let env = pg_two_volumes("db-pg2");
    let snap = snapshot_script(&env.private, &env.snaps, &env.images(), &[]);
    let config = write_config(
        &ConfigSpec {
            private: &env.private,
            freeze: Some(&[&env.walvol.mount_point, &env.datavol.mount_point]),
            snapshot: &snap,
            hook_name: "postgres",
            hook: Some(env.hold_hook_argv()),
            hold: true,
            hook_timeout: "30s",
        },
        "quiesce.toml",
    );
    let mut load = env
        .server
        .pgbench_load(2, &env.open.path().join("pgbench.log"));
    std::thread::sleep(Duration::from_secs(1));

    let mut taken = Vec::new();
    for i in 0..3 {
        std::thread::sleep(Duration::from_millis(500));
        let before = env.history();
        let run = quiesce_snapshot(&config);
        assert_eq!(run.code, 0, "snapshot {i}: {}", run.describe());
        assert_eq!(
            run.consistency(),
            Consistency::Application,
            "{}",
            run.describe()
        );
        let backup = env.backups.join(run.operation_id());
        assert!(
            backup.join("backup_label").is_file(),
            "no backup_label in {}",
            backup.display()
        );
        let info = read_kv(&backup.join("info"));
        eprintln!(
            "pg2 snapshot {i}: {} frozen {:?} ms, quiesce {} ms, backup {}..{} ({} WAL files)",
            run.operation_id(),
            run.frozen_ms(),
            run.elapsed.as_millis(),
            info["start_lsn"],
            info["stop_lsn"],
            info["wal_copied"]
        );
        taken.push((PathBuf::from(&run.snapshot_ids()[0]), backup, before));
    }
    assert!(
        load.exited().is_none(),
        "pgbench stopped during the snapshots"
    );
    load.stop();
    let mut env = env;
    env.server.stop();
    let (pg, open) = (&env.pg, &env.open);

    for (i, (dir, backup, before)) in taken.iter().enumerate() {
        let pair = attach_pair(open, dir, &format!("r{i}"));
        pg_restore_prepare(&pair.data, backup, &pair.wal);
        let mut restored = Postgres::start(
            pg,
            &pair.data,
            &open.path().join(format!("rsock{i}")),
            &open.path().join(format!("restore{i}.log")),
        )
        .unwrap_or_else(|e| panic!("restore {i} does not start: {e}"));
        let log = restored.log_text();
        assert!(
            log.contains("starting backup recovery"),
            "restore {i} did not use the backup label:\n{log}"
        );
        assert!(
            log.contains("completed backup recovery"),
            "restore {i} did not reach the backup's end:\n{log}"
        );
        let (sum, rows) = restored.pgbench_invariant();
        assert!(
            rows >= *before,
            "restore {i}: {rows} transactions, {before} were committed before"
        );
        eprintln!("pg2 restore {i}: backup recovery completed, invariant holds (sum {sum}, {rows} transactions)");
        restored.stop();
        drop(pair);
        let _ = std::fs::remove_dir_all(dir);
    }
    eprintln!("pg2 figures: total {}", secs(t0.elapsed()));
}

#[test]
fn postgres_two_volumes_uncoordinated_copies_need_the_backup_label() {
    support::require_root!("database servers run as their own users, on loop filesystems");
    let _slot = SLOTS.take();
    let t0 = Instant::now();
    let env = pg_two_volumes("db-pg3");
    let mut load = env
        .server
        .pgbench_load(2, &env.open.path().join("pgbench.log"));
    std::thread::sleep(Duration::from_secs(1));

    // A. quiesce freezes both volumes together and the copies are made inside that window:
    // one point in time for both, so plain crash recovery is correct without any hook.
    let snap_a = snapshot_script(&env.private, &env.snaps, &env.images(), &[]);
    let config_a = write_config(
        &ConfigSpec {
            private: &env.private,
            freeze: Some(&[&env.walvol.mount_point, &env.datavol.mount_point]),
            snapshot: &snap_a,
            hook_name: "none",
            hook: None,
            hold: false,
            hook_timeout: "30s",
        },
        "a.toml",
    );
    let run_a = quiesce_snapshot(&config_a);
    assert_eq!(
        run_a.consistency(),
        Consistency::FileSystem,
        "{}",
        run_a.describe()
    );

    // B and C. An uncoordinated provider: each volume copied on its own (frozen only around
    // its own copy, as per-disk snapshots are), WAL first, data later. A checkpoint between
    // the two copies stands for the time between per-disk snapshots (checkpoints happen
    // every checkpoint_timeout, or sooner under load): the data copy's pg_control then
    // names a checkpoint that the WAL copy does not contain. quiesce's own freeze is off.
    let fsfreeze = which("fsfreeze").expect("fsfreeze");
    let between = format!(
        "{ff} -u {wal}\n{psql} -X -q -h {sock} -p 5432 -U postgres -d postgres -c CHECKPOINT\n{ff} -f {data}",
        ff = p(&fsfreeze),
        wal = p(&env.walvol.mount_point),
        data = p(&env.datavol.mount_point),
        psql = p(&which("psql").unwrap()),
        sock = p(&env.server.sock),
    );
    let uncoordinated = |name: &str| {
        let body = snapshot_script(
            &env.private,
            &env.snaps,
            &env.images(),
            std::slice::from_ref(&between),
        );
        // Freeze the WAL volume around the first copy and thaw the data volume after the
        // last one, as per-disk snapshots would.
        let text = std::fs::read_to_string(&body).unwrap();
        // Whatever happens, neither volume stays frozen when the script ends.
        let text = text.replacen(
            "set -eu\n",
            &format!(
                "set -eu\ntrap 'rc=$?; set +e; {ff} -u {w} 2>/dev/null; {ff} -u {d} 2>/dev/null; exit $rc' EXIT\n",
                ff = p(&fsfreeze),
                w = p(&env.walvol.mount_point),
                d = p(&env.datavol.mount_point)
            ),
            1,
        );
        let text = text.replacen(
            "cp --reflink",
            &format!(
                "{} -f {}\ncp --reflink",
                p(&fsfreeze),
                p(&env.walvol.mount_point)
            ),
            1,
        );
        let text = text.replace(
            "echo \"$dest\"",
            &format!(
                "{} -u {}\necho \"$dest\"",
                p(&fsfreeze),
                p(&env.datavol.mount_point)
            ),
        );
        env.private.script(name, &text)
    };
    let snap_b = uncoordinated("snapshot-uncoordinated");
    let config_b = write_config(
        &ConfigSpec {
            private: &env.private,
            freeze: None,
            snapshot: &snap_b,
            hook_name: "none",
            hook: None,
            hold: false,
            hook_timeout: "30s",
        },
        "b.toml",
    );
    let run_b = quiesce_snapshot(&config_b);
    assert_eq!(
        run_b.consistency(),
        Consistency::Crash,
        "{}\nscript:\n{}\nsnapshot stderr: {}",
        run_b.describe(),
        std::fs::read_to_string(&snap_b).unwrap_or_default(),
        std::fs::read_to_string(env.snaps.join("stderr.log")).unwrap_or_default()
    );
    assert_not_frozen(&[&env.walvol.mount_point, &env.datavol.mount_point]);

    let config_c = write_config(
        &ConfigSpec {
            private: &env.private,
            freeze: None,
            snapshot: &snap_b,
            hook_name: "postgres",
            hook: Some(env.hold_hook_argv()),
            hold: true,
            hook_timeout: "30s",
        },
        "c.toml",
    );
    let before_c = env.history();
    let run_c = quiesce_snapshot(&config_c);
    assert_eq!(run_c.code, 0, "{}", run_c.describe());
    assert_eq!(
        run_c.consistency(),
        Consistency::Application,
        "{}",
        run_c.describe()
    );
    assert_not_frozen(&[&env.walvol.mount_point, &env.datavol.mount_point]);
    load.stop();
    let backup_c = env.backups.join(run_c.operation_id());
    let mut env = env;
    env.server.stop();
    let (pg, open) = (&env.pg, &env.open);

    // A: crash recovery, invariant holds.
    let dir_a = PathBuf::from(&run_a.snapshot_ids()[0]);
    let pair = attach_pair(open, &dir_a, "a");
    crash_restore_prepare(&pair);
    let mut restored = Postgres::start(
        pg,
        &pair.data,
        &open.path().join("sock-a"),
        &open.path().join("a.log"),
    )
    .unwrap_or_else(|e| panic!("A (frozen together) does not start: {e}"));
    let (sum, rows) = restored.pgbench_invariant();
    eprintln!("pg3 A frozen together, crash recovery: starts, invariant holds (sum {sum}, {rows} transactions)");
    restored.stop();
    drop(pair);

    // B: the same crash recovery refuses to start.
    let dir_b = PathBuf::from(&run_b.snapshot_ids()[0]);
    let pair = attach_pair(open, &dir_b, "b");
    crash_restore_prepare(&pair);
    let err = match Postgres::start(
        pg,
        &pair.data,
        &open.path().join("sock-b"),
        &open.path().join("b.log"),
    ) {
        Ok(mut server) => {
            let inv = server.try_psql("bench", "SELECT 1");
            server.stop();
            panic!("B (uncoordinated, no backup label) started ({inv:?}): the checkpoint between the copies did not separate them");
        }
        Err(e) => e,
    };
    assert!(
        err.contains("could not locate a valid checkpoint record"),
        "B failed for another reason: {err}"
    );
    let panic_line = err
        .lines()
        .find(|l| l.contains("PANIC"))
        .unwrap_or("")
        .to_string();
    eprintln!("pg3 B copied one after the other, no hook: PostgreSQL says: {panic_line}");
    drop(pair);

    // C: the same copies with the held backup: backup recovery, invariant holds.
    let dir_c = PathBuf::from(&run_c.snapshot_ids()[0]);
    let pair = attach_pair(open, &dir_c, "c");
    pg_restore_prepare(&pair.data, &backup_c, &pair.wal);
    let mut restored = Postgres::start(
        pg,
        &pair.data,
        &open.path().join("sock-c"),
        &open.path().join("c.log"),
    )
    .unwrap_or_else(|e| panic!("C (uncoordinated, held backup) does not start: {e}"));
    assert!(
        restored.log_text().contains("completed backup recovery"),
        "{}",
        restored.log_text()
    );
    let (sum, rows) = restored.pgbench_invariant();
    assert!(rows >= before_c);
    eprintln!("pg3 C copied one after the other, pg-backup-hold: backup recovery, invariant holds (sum {sum}, {rows} transactions)");
    restored.stop();
    drop(pair);
    eprintln!("pg3 figures: total {}", secs(t0.elapsed()));
}

// =========================================================================================
// Broken holds
// =========================================================================================

/// A client session holding `LOCK TABLES w.log WRITE` until dropped: FTWRL waits for it.
struct TableLock {
    _proc: Proc,
    _stdin: std::process::ChildStdin,
}

fn lock_table(server: &MariaDb) -> TableLock {
    let mut cmd = server.client();
    cmd.arg("--unbuffered")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut proc = Proc::spawn(
        "lock holder",
        cmd,
        rustix::process::Signal::TERM,
        Duration::from_secs(5),
    );
    let mut stdin = proc.stdin().unwrap();
    stdin
        .write_all(b"LOCK TABLES w.log WRITE;\nSELECT 'locked';\n")
        .unwrap();
    let mut line = String::new();
    BufReader::new(proc.stdout().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");
    TableLock {
        _proc: proc,
        _stdin: stdin,
    }
}

/// A snapshot provider that, before copying, SIGKILLs the processes whose command line
/// contains `mark` (and whose parent's does not, i.e. the top one) or whose name is `comm`
/// and command line contains `mark`; then waits a second so the hook sees it.
fn killing_snapshot_script(
    dir: &Scratch,
    snaps: &Path,
    image: &Path,
    mark: &str,
    comm: Option<&str>,
) -> PathBuf {
    let select = match comm {
        Some(c) => format!("[ \"$(cat /proc/$pid/comm)\" = {c} ]"),
        None => "! tr '\\0' ' ' < /proc/$ppid/cmdline | grep -qF -- \"$mark\"".to_string(),
    };
    let body = format!(
        "#!/bin/bash\nset -u\nmark='{mark}'\nkilled=\"\"\n\
         for d in /proc/[0-9]*; do\n\
           pid=${{d#/proc/}}\n\
           [ \"$pid\" = $$ ] && continue\n\
           tr '\\0' ' ' < $d/cmdline 2>/dev/null | grep -qF -- \"$mark\" || continue\n\
           ppid=$(awk '{{print $4}}' $d/stat 2>/dev/null) || continue\n\
           if {select}; then kill -KILL $pid && killed=\"$killed $pid\"; fi\n\
         done\n\
         [ -n \"$killed\" ] || {{ echo 'nothing to kill' >&2; exit 1; }}\n\
         echo \"killed$killed\" >&2\nsleep 1\n\
         dest={snaps}/\"${{QUIESCE_OPERATION_ID:-$(date +%s%N)}}\"\nmkdir \"$dest\"\n\
         cp --reflink=auto --sparse=always {image} \"$dest/data.img\"\necho \"$dest\"\n",
        mark = mark,
        snaps = p(snaps),
        image = p(image),
    );
    dir.script("snapshot-killing", &body)
}

#[test]
fn mariadb_hold_never_ready_times_out_and_database_stays_writable() {
    support::require_root!("database servers run as their own users, on loop filesystems");
    let _slot = SLOTS.take();
    let t0 = Instant::now();
    let m = mariadb_setup("db-my2");
    let snaps = m.private.join("snaps");
    std::fs::create_dir_all(&snaps).unwrap();
    let snap = snapshot_script(&m.private, &snaps, &[(&m.vol.image, "data.img")], &[]);

    // 1. The hook waits longer than quiesce allows: quiesce's pre timeout ends it
    //    (SIGTERM: the hook kills its own pending FTWRL from a second session).
    let config = write_config(
        &ConfigSpec {
            private: &m.private,
            freeze: Some(&[&m.vol.mount_point]),
            snapshot: &snap,
            hook_name: "mariadb",
            hook: Some(m.hook_argv(&["--lock-wait-timeout", "60"])),
            hold: true,
            hook_timeout: "3s",
        },
        "timeout.toml",
    );
    let lock = lock_table(&m.server);
    let run = quiesce_snapshot(&config);
    assert!(
        run.error_codes().contains(&ErrorCode::PreScriptTimeout),
        "{}",
        run.describe()
    );
    assert_eq!(
        run.consistency(),
        Consistency::FileSystem,
        "{}",
        run.describe()
    );
    assert_not_frozen(&[&m.vol.mount_point]);
    m.assert_no_hook_session();
    // With w.log still locked by the other session, a write elsewhere must go through: no
    // FLUSH TABLES WITH READ LOCK is pending or held.
    m.write_succeeds("w.other")
        .unwrap_or_else(|e| panic!("write blocked after the timeout: {e}"));
    drop(lock);
    m.write_succeeds("w.log")
        .unwrap_or_else(|e| panic!("write blocked: {e}"));
    eprintln!(
        "my2 READY never sent: {:?} after {} ms; database writable, no hook session",
        run.error_codes(),
        run.elapsed.as_millis()
    );

    // 2. Default lock_wait_timeout (from QUIESCE_DEADLINE): the hook gives up by itself
    //    before quiesce's timeout, and says why.
    let config = write_config(
        &ConfigSpec {
            private: &m.private,
            freeze: Some(&[&m.vol.mount_point]),
            snapshot: &snap,
            hook_name: "mariadb",
            hook: Some(m.hook_argv(&[])),
            hold: true,
            hook_timeout: "5s",
        },
        "selftimeout.toml",
    );
    let lock = lock_table(&m.server);
    let run = quiesce_snapshot(&config);
    assert!(
        run.error_codes()
            .contains(&ErrorCode::PreScriptExecutionFailed),
        "{}",
        run.describe()
    );
    assert!(
        run.stdout.contains("Lock wait timeout"),
        "{}",
        run.describe()
    );
    assert_eq!(
        run.consistency(),
        Consistency::FileSystem,
        "{}",
        run.describe()
    );
    assert_not_frozen(&[&m.vol.mount_point]);
    m.assert_no_hook_session();
    m.write_succeeds("w.other")
        .unwrap_or_else(|e| panic!("write blocked: {e}"));
    drop(lock);
    m.write_succeeds("w.log")
        .unwrap_or_else(|e| panic!("write blocked: {e}"));
    eprintln!(
        "my2 hook's own lock_wait_timeout: {:?} after {} ms; database writable",
        run.error_codes(),
        run.elapsed.as_millis()
    );
    eprintln!("my2 figures: total {}", secs(t0.elapsed()));
}

#[test]
fn mariadb_hold_killed_while_holding_is_hold_lost() {
    support::require_root!("database servers run as their own users, on loop filesystems");
    let _slot = SLOTS.take();
    let t0 = Instant::now();
    let m = mariadb_setup("db-my3");
    let snaps = m.private.join("snaps");
    std::fs::create_dir_all(&snaps).unwrap();
    // Kill the hook itself: the top bash process whose arguments name this test's --out-dir
    // (quiesce runs it as `/bin/bash /proc/self/fd/N ARGS`).
    let snap = killing_snapshot_script(&m.private, &snaps, &m.vol.image, p(&m.positions), None);
    let config = write_config(
        &ConfigSpec {
            private: &m.private,
            freeze: Some(&[&m.vol.mount_point]),
            snapshot: &snap,
            hook_name: "mariadb",
            hook: Some(m.hook_argv(&[])),
            hold: true,
            hook_timeout: "30s",
        },
        "quiesce.toml",
    );
    let writer = MariaWriter::start(&m.server);
    std::thread::sleep(Duration::from_secs(1));
    let run = quiesce_snapshot(&config);
    assert!(
        run.error_codes().contains(&ErrorCode::HoldLost),
        "{}",
        run.describe()
    );
    assert_eq!(
        run.consistency(),
        Consistency::FileSystem,
        "{}",
        run.describe()
    );
    assert_eq!(run.status(), Status::Degraded, "{}", run.describe());
    assert_eq!(
        run.snapshot_ids().len(),
        1,
        "the snapshot (which kills the hook) failed: {}",
        run.describe()
    );
    assert_not_frozen(&[&m.vol.mount_point]);
    m.assert_no_hook_session();
    // The writer carries on.
    let acked = writer.last_acked();
    let deadline = Instant::now() + Duration::from_secs(5);
    while writer.last_acked() < acked + 10 {
        assert!(
            Instant::now() < deadline,
            "writes did not resume after the lost hold"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    writer.finish().expect("writer");
    m.write_succeeds("w.log")
        .unwrap_or_else(|e| panic!("write blocked: {e}"));
    eprintln!(
        "my3 hook killed while holding: {:?}, consistency {}; writes resumed",
        run.error_codes(),
        run.consistency().as_str()
    );
    eprintln!("my3 figures: total {}", secs(t0.elapsed()));
}

/// A PostgreSQL server on one ext4 loop volume with the hook's role, pgbench tables, a
/// passfile and the pg-backup-hold hook installed. Fields drop server first.
struct PgOne {
    server: Postgres,
    vol: LoopFs,
    open: OpenDir,
    private: Scratch,
    data: PathBuf,
    snaps: PathBuf,
    backups: PathBuf,
    passfile: PathBuf,
    hook: PathBuf,
}

fn pg_one_volume(tag: &str) -> PgOne {
    let pg = User::get("postgres");
    let open = OpenDir::new(tag);
    let private = Scratch::new(&format!("{tag}-priv"));
    let snaps = private.join("snaps");
    let backups = private.join("backups");
    std::fs::create_dir_all(&snaps).unwrap();
    std::fs::create_dir_all(&backups).unwrap();
    let vol = LoopFs::create(
        "ext4",
        256,
        &private.join("data.img"),
        &open.path().join("vol"),
    );
    let data = vol.path("pgdata");
    pg_initdb(&pg, &data, None);
    let server = Postgres::start(
        &pg,
        &data,
        &open.path().join("sock"),
        &open.path().join("pg.log"),
    )
    .unwrap();
    server.create_quiesce_role();
    server.pgbench_init(1);
    let passfile = private.file(
        "pgpass",
        &format!("*:*:*:quiesce:{PG_QUIESCE_PASSWORD}\n"),
        0o600,
    );
    let hook = install_hook(&private, "pg-backup-hold");
    PgOne {
        server,
        vol,
        open,
        private,
        data,
        snaps,
        backups,
        passfile,
        hook,
    }
}

impl PgOne {
    fn hold_hook_argv(&self) -> Vec<String> {
        vec![
            s(&self.hook),
            "--out-dir".into(),
            s(&self.backups),
            "--conninfo".into(),
            self.server.quiesce_conninfo(),
            "--passfile".into(),
            s(&self.passfile),
            "--copy-wal-from".into(),
            s(&self.data.join("pg_wal")),
        ]
    }

    /// No hook session or replication slot left (polls: the server notices a closed
    /// connection when its backend next looks), then a write and a whole new backup work.
    fn assert_clean_and_writable(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = self.server.psql(
                "postgres",
                "SELECT (SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'quiesce%') \
                      + (SELECT count(*) FROM pg_replication_slots)",
            );
            if left == "0" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "hook session or slot left: {left}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.server.psql(
            "postgres",
            "CREATE TABLE IF NOT EXISTS after_broken_hold (x int); \
             INSERT INTO after_broken_hold VALUES (1)",
        );
        self.server.psql(
            "postgres",
            "SELECT pg_backup_start('after', true); SELECT lsn FROM pg_backup_stop(false)",
        );
    }
}

/// A filesystem frozen by the test itself (as a crashed tool or an operator may leave one),
/// thawed on drop.
struct FrozenByTest<'a>(&'a Path);

impl Drop for FrozenByTest<'_> {
    fn drop(&mut self) {
        support::thaw(self.0);
    }
}

#[test]
fn postgres_hold_never_ready_times_out_and_database_stays_writable() {
    support::require_root!("database servers run as their own users, on loop filesystems");
    let _slot = SLOTS.take();
    let t0 = Instant::now();
    let env = pg_one_volume("db-pg5");
    let snap = snapshot_script(
        &env.private,
        &env.snaps,
        &[(&env.vol.image, "data.img")],
        &[],
    );
    // pg_backup_start waits for an immediate checkpoint; with the data volume frozen (left
    // so by someone else: quiesce's own freeze is off here) the checkpoint cannot finish,
    // so READY never comes and quiesce's pre timeout ends the hook.
    let config = write_config(
        &ConfigSpec {
            private: &env.private,
            freeze: None,
            snapshot: &snap,
            hook_name: "postgres",
            hook: Some(env.hold_hook_argv()),
            hold: true,
            hook_timeout: "3s",
        },
        "quiesce.toml",
    );
    let frozen = FrozenByTest(&env.vol.mount_point);
    support::sh("fsfreeze", &["-f", p(&env.vol.mount_point)]);
    let run = quiesce_snapshot(&config);
    assert!(
        run.error_codes().contains(&ErrorCode::PreScriptTimeout),
        "{}",
        run.describe()
    );
    assert_eq!(run.consistency(), Consistency::Crash, "{}", run.describe());
    // The hook's process group is gone: no psql of this test's server is left.
    let sock = p(&env.server.sock).to_string();
    let leftover: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| {
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            (comm.trim() == "psql" && cmd.contains(&sock)).then_some(cmd)
        })
        .collect();
    assert!(leftover.is_empty(), "psql left running: {leftover:?}");
    drop(frozen);
    assert_not_frozen(&[&env.vol.mount_point]);
    assert!(!env.backups.join(run.operation_id()).exists());
    env.assert_clean_and_writable();

    // The same hook configured as a normal (not held) hook refuses to run: with stdin at
    // /dev/null its backup would end before the snapshot.
    let config = write_config(
        &ConfigSpec {
            private: &env.private,
            freeze: Some(&[&env.vol.mount_point]),
            snapshot: &snap,
            hook_name: "postgres",
            hook: Some(env.hold_hook_argv()),
            hold: false,
            hook_timeout: "10s",
        },
        "not-held.toml",
    );
    let misconfigured = quiesce_snapshot(&config);
    assert!(
        misconfigured
            .error_codes()
            .contains(&ErrorCode::PreScriptExecutionFailed)
            && misconfigured.stdout.contains("hold = true"),
        "{}",
        misconfigured.describe()
    );
    assert_eq!(misconfigured.consistency(), Consistency::FileSystem);
    eprintln!(
        "pg5 hold hook configured without hold: {:?}",
        misconfigured.error_codes()
    );
    eprintln!(
        "pg5 READY never sent (checkpoint blocked): {:?} after {} ms; database writable, no session left",
        run.error_codes(),
        run.elapsed.as_millis()
    );
    eprintln!("pg5 figures: total {}", secs(t0.elapsed()));
}

#[test]
fn postgres_hold_psql_killed_while_holding_is_hold_lost() {
    support::require_root!("database servers run as their own users, on loop filesystems");
    let _slot = SLOTS.take();
    let t0 = Instant::now();
    let mut env = pg_one_volume("db-pg4");
    // Kill the hook's psql (its command line names this test's socket directory).
    let snap = killing_snapshot_script(
        &env.private,
        &env.snaps,
        &env.vol.image,
        p(&env.server.sock),
        Some("psql"),
    );
    let config = write_config(
        &ConfigSpec {
            private: &env.private,
            freeze: Some(&[&env.vol.mount_point]),
            snapshot: &snap,
            hook_name: "postgres",
            hook: Some(env.hold_hook_argv()),
            hold: true,
            hook_timeout: "30s",
        },
        "quiesce.toml",
    );
    let mut load = env
        .server
        .pgbench_load(2, &env.open.path().join("pgbench.log"));
    std::thread::sleep(Duration::from_secs(1));
    let run = quiesce_snapshot(&config);
    assert!(
        run.error_codes().contains(&ErrorCode::HoldLost),
        "{}",
        run.describe()
    );
    assert_eq!(
        run.consistency(),
        Consistency::FileSystem,
        "{}",
        run.describe()
    );
    assert_eq!(run.status(), Status::Degraded, "{}", run.describe());
    assert!(
        run.stdout.contains("HOLD LOST"),
        "the hook did not say why: {}",
        run.describe()
    );
    assert_not_frozen(&[&env.vol.mount_point]);
    assert!(
        !env.backups.join(run.operation_id()).exists(),
        "a backup label was stored although pg_backup_stop never ran"
    );
    // No session, slot or backup left behind; pgbench goes on, writes and a new backup work.
    env.assert_clean_and_writable();
    let before = env
        .server
        .psql("bench", "SELECT count(*) FROM pgbench_history");
    std::thread::sleep(Duration::from_millis(500));
    let after = env
        .server
        .psql("bench", "SELECT count(*) FROM pgbench_history");
    assert_ne!(
        before, after,
        "pgbench makes no progress after the lost hold"
    );
    load.stop();
    env.server.stop();
    eprintln!(
        "pg4 psql killed while holding: {:?}, consistency {}; database writable, no backup left",
        run.error_codes(),
        run.consistency().as_str()
    );
    eprintln!("pg4 figures: total {}", secs(t0.elapsed()));
}
