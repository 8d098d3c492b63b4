//! PostgreSQL with WAL and data on two volumes, and restoring the copies.
//!
//! `postgres_two_volumes_held_backup_restores_with_backup_label`: WAL and data on two
//! volumes, the pg-backup-hold hook; each copy restored with its backup_label and WAL
//! (pg-restore-prepare) runs "backup recovery" to the end-of-backup record and is
//! consistent.
//!
//! `postgres_two_volumes_uncoordinated_copies_need_the_backup_label`: why that hook
//! matters. Frozen together by quiesce, the two volumes form one point in time and crash
//! recovery suffices. Copied one after the other (as a provider that snapshots disks one
//! by one does), with a checkpoint in between, the copy does not start without the hook
//! ("could not locate a valid checkpoint record"), and does with it.

use super::*;

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
    let server = Postgres::fresh(&pg, &data, Some(&waldir), &open);
    server.pgbench_init(1);
    let passfile = quiesce_passfile(&private);
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
