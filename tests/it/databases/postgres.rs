//! PostgreSQL with data and WAL on one volume and the CHECKPOINT pre hook.
//!
//! `postgres_single_volume_checkpoint_hook_10_snapshots_under_pgbench`: with data and WAL
//! on one volume, the CHECKPOINT pre hook + freeze gives application-consistent copies:
//! each copy is a clean ext4, PostgreSQL starts on it (short crash recovery), pgbench's
//! balance invariant holds, and every transaction committed before quiesce started is in it.

use super::*;

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
    let mut server = Postgres::fresh(&pg, &data, None, &open);
    server.pgbench_init(1);
    let passfile = quiesce_passfile(&private);
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
