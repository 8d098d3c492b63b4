//! MariaDB with FLUSH TABLES WITH READ LOCK held across the snapshot.
//!
//! `mariadb_held_ftwrl_10_snapshots_under_write_load`: the mariadb-hold hook (FLUSH TABLES
//! WITH READ LOCK held across the snapshot): every insert acknowledged before the snapshot
//! started is in each restored copy, without gaps, in InnoDB and in a MyISAM table, which
//! checks clean (CHECK TABLE, no repair); the binlog position the hook recorded is exactly
//! the one of the restored data. A control copy taken with the freeze alone has the MyISAM
//! table "not closed properly": that is what the lock adds to a file-system-consistent copy.

use super::*;

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
