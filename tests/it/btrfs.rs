//! The btrfs provider on a real loop btrfs: read-only snapshots under a live writer,
//! several subvolumes in one run, retention on disk with injected time, and clear errors.

use crate::support;

use quiesce::codes::ErrorCode;
use quiesce::config::BtrfsConfig;
use quiesce::freeze::plan::Target;
use quiesce::report::SnapshotRef;
use quiesce::snapshot::btrfs::{parse_name, BtrfsProvider};
use quiesce::snapshot::{Provider, SnapshotContext, SnapshotError};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::{sh, LoopFs, Scratch};

const DAY: u64 = 86_400;
/// 2026-11-26T21:30:00Z: the injected "now" for retention tests.
const T: u64 = 1_795_728_600;
const EROFS: i32 = 30;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn subvolume(fs: &LoopFs, rel: &str) -> PathBuf {
    let p = fs.path(rel);
    sh("btrfs", &["-q", "subvolume", "create", p.to_str().unwrap()]);
    p
}

fn config(subvolumes: &[&Path], directory: &Path) -> BtrfsConfig {
    BtrfsConfig {
        subvolumes: subvolumes.iter().map(|p| p.to_path_buf()).collect(),
        directory: directory.to_path_buf(),
        keep_last: None,
        max_age: None,
    }
}

fn ctx(op: &str) -> SnapshotContext<'_> {
    SnapshotContext {
        operation_id: op,
        frozen: &[],
        timeout: Duration::from_secs(60),
    }
}

/// Names in a directory, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn is_readonly_subvolume(p: &Path) -> bool {
    sh(
        "btrfs",
        &["property", "get", "-ts", p.to_str().unwrap(), "ro"],
    )
    .trim()
        == "ro=true"
}

fn expect_failed(r: Result<Vec<SnapshotRef>, SnapshotError>, needles: &[&str]) -> String {
    let e = r.expect_err("take should fail");
    assert_eq!(e.code(), ErrorCode::SnapshotFailed, "{e}");
    let message = e.to_string();
    for n in needles {
        assert!(message.contains(n), "{n:?} not in {message:?}");
    }
    message
}

// ---------------------------------------------------------------- snapshot under writes

const REC: usize = 512;

/// Record `n`: a header with its number and a checksum, filler derived from `n`.
fn record(n: u64) -> Vec<u8> {
    let mut r = format!(
        "rec {n:010} sum {:016x} ",
        n.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    )
    .into_bytes();
    let fill = b'a' + (n % 26) as u8;
    r.resize(REC - 1, fill);
    r.push(b'\n');
    r
}

#[test]
fn snapshot_under_writes_is_readonly_and_holds_every_committed_record() {
    support::require_root!();
    let fs = LoopFs::new("btrfs", 300);
    let data = subvolume(&fs, "data");
    let snaps = fs.path("snaps");
    std::fs::create_dir(&snaps).unwrap();
    let log = data.join("log");

    // The application: append numbered records, fsync each, then publish the count.
    let committed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (committed, stop, log) = (committed.clone(), stop.clone(), log.clone());
        std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&log)
                .unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                f.write_all(&record(n)).unwrap();
                f.sync_data().unwrap();
                n += 1;
                committed.store(n, Ordering::SeqCst);
            }
            n
        })
    };
    let t0 = Instant::now();
    while committed.load(Ordering::SeqCst) < 200 {
        assert!(t0.elapsed() < Duration::from_secs(60), "writer too slow");
        std::thread::sleep(Duration::from_millis(5));
    }

    // Five snapshots while it writes, each with the count committed before the call
    // began and the count committed when it returned.
    let mut p = BtrfsProvider::new(config(&[&data], &snaps));
    let mut taken = Vec::new();
    for i in 0..5u64 {
        let before = committed.load(Ordering::SeqCst);
        let refs = p
            .take(&ctx(&format!("20261126T2130{i:02}Z-1a2b3c4d")))
            .unwrap();
        let after = committed.load(Ordering::SeqCst);
        assert_eq!(refs.len(), 1);
        taken.push((refs[0].clone(), before, after));
        while committed.load(Ordering::SeqCst) < after + 50 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    stop.store(true, Ordering::SeqCst);
    let total = writer.join().unwrap();
    let live = std::fs::read(&log).unwrap();
    assert_eq!(live.len(), total as usize * REC);

    for (i, (r, before, after)) in taken.iter().enumerate() {
        assert_eq!(r.provider, "btrfs");
        let parsed = parse_name(&r.id).unwrap();
        assert_eq!(parsed.label, "data");
        assert_eq!(
            parsed.operation_id,
            format!("20261126T2130{i:02}Z-1a2b3c4d")
        );
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((now - parsed.created_unix).abs() < 120);
        let snap = snaps.join(&r.id);
        assert_eq!(p.snapshot_path(&r.id), snap);

        // Read-only, both by the kernel's flag and in practice.
        assert!(is_readonly_subvolume(&snap));
        let e = std::fs::File::create(snap.join("new")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(EROFS), "{e}");
        let e = std::fs::OpenOptions::new()
            .append(true)
            .open(snap.join("log"))
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(EROFS), "{e}");

        // Content: a byte prefix of what was written, holding every record committed
        // before the snapshot call began, and nothing not yet written when it returned.
        let copy = std::fs::read(snap.join("log")).unwrap();
        assert!(
            live.starts_with(&copy),
            "snapshot {i} is not a prefix of the live file"
        );
        let full = (copy.len() / REC) as u64;
        assert!(
            full >= *before,
            "snapshot {i} has {full} records, {before} were committed before it"
        );
        assert!(
            full <= after + 1,
            "snapshot {i} has {full} records, only {after} committed when it returned"
        );
        for (n, chunk) in copy.chunks_exact(REC).enumerate() {
            assert_eq!(
                chunk,
                record(n as u64).as_slice(),
                "snapshot {i}: record {n} torn"
            );
        }
        eprintln!(
            "snapshot {i}: committed before take {before}, in snapshot {full} (+{} bytes), \
             committed when take returned {after}",
            copy.len() % REC
        );
    }
    assert_eq!(p.list().unwrap().len(), 5);
}

// ---------------------------------------------------------------- several subvolumes

#[test]
fn several_subvolumes_in_one_take() {
    support::require_root!();
    let fs = LoopFs::new("btrfs", 300);
    let a = subvolume(&fs, "a");
    let b = subvolume(&fs, "b");
    let c = subvolume(&fs, "c");
    for (dir, text) in [(&a, "alpha"), (&b, "bravo"), (&c, "charlie")] {
        std::fs::write(dir.join("f"), text).unwrap();
    }
    // The common layout: the snapshot directory inside one of the snapshotted subvolumes.
    let snaps = a.join(".snapshots");
    std::fs::create_dir(&snaps).unwrap();
    let mut p = BtrfsProvider::new(config(&[&a, &b, &c], &snaps));
    assert!(p.must_not_freeze().contains(&snaps));
    assert!(p.must_not_freeze().contains(&b));
    assert!(p.check().is_empty());

    let refs = p.take_at(&ctx("op-multi"), at(T)).unwrap();
    assert_eq!(refs.len(), 3);
    let want = [
        "a@20261126T213000Z@op-multi",
        "b@20261126T213000Z@op-multi",
        "c@20261126T213000Z@op-multi",
    ];
    assert_eq!(refs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), want);
    for (id, text) in want.iter().zip(["alpha", "bravo", "charlie"]) {
        let snap = snaps.join(id);
        assert!(is_readonly_subvolume(&snap), "{id}");
        assert_eq!(std::fs::read_to_string(snap.join("f")).unwrap(), text);
    }
    // Each snapshot is its own subvolume: writes to the sources do not reach them.
    std::fs::write(b.join("f"), "changed").unwrap();
    assert_eq!(
        std::fs::read_to_string(snaps.join(want[1]).join("f")).unwrap(),
        "bravo"
    );

    let list = p.list().unwrap();
    assert_eq!(list.len(), 3);
    for (info, id) in list.iter().zip(want) {
        assert_eq!(info.provider, "btrfs");
        assert_eq!(info.id, id);
        assert_eq!(info.location.as_deref(), Some(snaps.join(id).as_path()));
        assert_eq!(info.created_unix, Some(T as i64));
        assert_eq!(info.operation_id.as_deref(), Some("op-multi"));
        assert_eq!(info.consistency, None);
    }
}

// ---------------------------------------------------------------- retention on disk

/// Subvolumes a and b, a snapshot directory, and runs made at the given ages (days before
/// T), named op<i>. Plus foreign entries that retention must never touch.
fn retention_fixture(fs: &LoopFs, ages_days: &[f64]) -> (PathBuf, PathBuf, PathBuf) {
    let a = subvolume(fs, "a");
    let b = subvolume(fs, "b");
    let snaps = fs.path("snaps");
    std::fs::create_dir(&snaps).unwrap();
    let mut p = BtrfsProvider::new(config(&[&a, &b], &snaps));
    for (i, days) in ages_days.iter().enumerate() {
        let t = T - (days * DAY as f64) as u64;
        p.take_at(&ctx(&format!("op{i}")), at(t)).unwrap();
    }
    // Foreign: a plain directory named like ours, a subvolume with another name, a file.
    std::fs::create_dir(snaps.join("a@20200101T000000Z@plain-dir")).unwrap();
    sh(
        "btrfs",
        &[
            "-q",
            "subvolume",
            "snapshot",
            "-r",
            a.to_str().unwrap(),
            snaps.join("manual-backup").to_str().unwrap(),
        ],
    );
    std::fs::write(snaps.join("README"), "not a snapshot").unwrap();
    (a, b, snaps)
}

fn provider(
    a: &Path,
    b: &Path,
    snaps: &Path,
    keep_last: Option<u32>,
    max_age_days: Option<u64>,
) -> BtrfsProvider {
    let mut cfg = config(&[a, b], snaps);
    cfg.keep_last = keep_last;
    cfg.max_age = max_age_days.map(|d| Duration::from_secs(d * DAY));
    BtrfsProvider::new(cfg)
}

fn ops_on_disk(snaps: &Path) -> Vec<String> {
    let mut ops: Vec<String> = entries(snaps)
        .iter()
        .filter_map(|n| parse_name(n))
        .map(|p| p.operation_id)
        .filter(|op| op != "plain-dir")
        .collect();
    ops.sort();
    ops.dedup();
    ops
}

const FOREIGN: [&str; 3] = ["README", "a@20200101T000000Z@plain-dir", "manual-backup"];

fn assert_foreign_untouched(snaps: &Path) {
    let names = entries(snaps);
    for f in FOREIGN {
        assert!(names.iter().any(|n| n == f), "{f} was removed");
    }
}

#[test]
fn retention_keep_last_on_disk() {
    support::require_root!();
    let fs = LoopFs::new("btrfs", 300);
    // op0 10 days old ... op3 1 day old.
    let (a, b, snaps) = retention_fixture(&fs, &[10.0, 6.0, 3.0, 1.0]);
    // A hand-made snapshot in our naming scheme is ours (tolerant parser), the oldest run.
    sh(
        "btrfs",
        &[
            "-q",
            "subvolume",
            "snapshot",
            "-r",
            a.to_str().unwrap(),
            snaps.join("a@20251126T000000Z@handmade").to_str().unwrap(),
        ],
    );
    let mut p = provider(&a, &b, &snaps, Some(3), None);
    let listed: Vec<String> = p.list().unwrap().into_iter().map(|i| i.id).collect();
    assert_eq!(listed.len(), 9, "{listed:?}"); // 4 runs x 2 + handmade; foreign ignored
    assert_eq!(listed[0], "a@20251126T000000Z@handmade", "oldest first");

    let just_made = p.take_at(&ctx("op-now"), at(T)).unwrap();
    let mut removed = p.prune_at(at(T), &just_made).unwrap();
    removed.sort();
    assert_eq!(
        removed,
        [
            "a@20251126T000000Z@handmade",
            "a@20261116T213000Z@op0",
            "a@20261120T213000Z@op1",
            "b@20261116T213000Z@op0",
            "b@20261120T213000Z@op1",
        ]
    );
    assert_eq!(ops_on_disk(&snaps), ["op-now", "op2", "op3"]);
    assert_foreign_untouched(&snaps);
    // Idempotent: nothing more to remove.
    assert!(p.prune_at(at(T), &just_made).unwrap().is_empty());
}

#[test]
fn retention_max_age_on_disk() {
    support::require_root!();
    let fs = LoopFs::new("btrfs", 300);
    let (a, b, snaps) = retention_fixture(&fs, &[10.0, 6.0, 3.0, 1.0]);
    let mut p = provider(&a, &b, &snaps, None, Some(5));
    let just_made = p.take_at(&ctx("op-now"), at(T)).unwrap();
    let removed = p.prune_at(at(T), &just_made).unwrap();
    assert_eq!(removed.len(), 4, "{removed:?}");
    assert_eq!(ops_on_disk(&snaps), ["op-now", "op2", "op3"]);
    // A day later with the same policy, op2 (now 4 days) stays, nothing else is due.
    assert!(p.prune_at(at(T + DAY), &[]).unwrap().is_empty());
    // Three days later op2 is 6 days old and goes; op3 (4 days) and op-now (3) stay.
    let removed = p.prune_at(at(T + 3 * DAY), &[]).unwrap();
    assert_eq!(removed.len(), 2, "{removed:?}");
    assert_eq!(ops_on_disk(&snaps), ["op-now", "op3"]);
    assert_foreign_untouched(&snaps);
}

#[test]
fn retention_both_rules_never_remove_the_current_run() {
    support::require_root!();
    let fs = LoopFs::new("btrfs", 300);
    // op0 3 days, op1 0.8 day, op2 0.5 day old.
    let (a, b, snaps) = retention_fixture(&fs, &[3.0, 0.8, 0.5]);
    // The current run's clock is 5 days behind: it is the oldest run on disk.
    let mut p = provider(&a, &b, &snaps, Some(3), Some(1));
    let just_made = p.take_at(&ctx("op-now"), at(T - 5 * DAY)).unwrap();
    // keep_last 3 keeps op2, op1, op0 (op-now is 4th but protected); max_age 1d removes op0.
    let removed = p.prune_at(at(T), &just_made).unwrap();
    assert_eq!(removed.len(), 2, "{removed:?}");
    assert!(removed.iter().all(|id| id.ends_with("@op0")));
    assert_eq!(ops_on_disk(&snaps), ["op-now", "op1", "op2"]);
    // keep_last 1 and max_age 1d: keep_last alone removes op1; op-now survives both rules.
    let p1 = provider(&a, &b, &snaps, Some(1), Some(1));
    let removed = p1.prune_at(at(T), &just_made).unwrap();
    assert_eq!(removed.len(), 2, "{removed:?}");
    assert!(removed.iter().all(|id| id.ends_with("@op1")));
    assert_eq!(ops_on_disk(&snaps), ["op-now", "op2"]);
    for r in &just_made {
        assert!(is_readonly_subvolume(&snaps.join(&r.id)));
    }
    // Without protection the stale current run goes too.
    let removed = p1.prune_at(at(T), &[]).unwrap();
    assert_eq!(removed.len(), 2, "{removed:?}");
    assert_eq!(ops_on_disk(&snaps), ["op2"]);
    assert_foreign_untouched(&snaps);
    // No rule: prune removes nothing.
    assert!(provider(&a, &b, &snaps, None, None)
        .prune_at(at(T + 999 * DAY), &[])
        .unwrap()
        .is_empty());
}

// ---------------------------------------------------------------- errors

#[test]
fn clear_errors_and_nothing_left_behind() {
    support::require_root!();
    let fs = LoopFs::new("btrfs", 300);
    let a = subvolume(&fs, "a");
    let snaps = fs.path("snaps");
    std::fs::create_dir(&snaps).unwrap();
    let plain = fs.path("plain");
    std::fs::create_dir(&plain).unwrap();

    // Directory on another filesystem (the scratch dir is on the root fs, not btrfs).
    let elsewhere = Scratch::new("btrfs-notbtrfs");
    let mut p = BtrfsProvider::new(config(&[&a], &elsewhere.path));
    let m = expect_failed(
        p.take(&ctx("op")),
        &["snapshot directory", "is not on btrfs"],
    );
    eprintln!("{m}");
    let problems = p.check();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].to_string(), m);
    assert!(entries(&elsewhere.path).is_empty());

    // A plain directory on the btrfs is not a subvolume.
    let mut p = BtrfsProvider::new(config(&[&a, &plain], &snaps));
    let m = expect_failed(
        p.take(&ctx("op")),
        &["plain", "is not a btrfs subvolume", "inode"],
    );
    eprintln!("{m}");
    assert!(
        entries(&snaps).is_empty(),
        "nothing made when a check fails"
    );

    // A subvolume that does not exist; a subvolume that is a file.
    let mut p = BtrfsProvider::new(config(&[&fs.path("missing")], &snaps));
    expect_failed(p.take(&ctx("op")), &["missing", "does not exist"]);
    std::fs::write(fs.path("file"), "x").unwrap();
    let mut p = BtrfsProvider::new(config(&[&fs.path("file")], &snaps));
    expect_failed(p.take(&ctx("op")), &["is not a directory"]);
    // A subvolume on a filesystem that is not btrfs.
    let mut p = BtrfsProvider::new(config(&[&elsewhere.path], &snaps));
    expect_failed(p.take(&ctx("op")), &["subvolume", "is not on btrfs"]);

    // A subvolume on another btrfs than the directory.
    let other = LoopFs::new("btrfs", 300);
    let x = subvolume(&other, "x");
    let mut p = BtrfsProvider::new(config(&[&a, &x], &snaps));
    let m = expect_failed(p.take(&ctx("op")), &["another btrfs"]);
    eprintln!("{m}");

    // Two subvolumes with the same base name.
    let a2 = subvolume(&fs, "plain/a");
    let mut p = BtrfsProvider::new(config(&[&a, &a2], &snaps));
    expect_failed(p.take(&ctx("op")), &["same snapshot name"]);
    let mut p = BtrfsProvider::new(config(&[&a, &a], &snaps));
    expect_failed(p.take(&ctx("op")), &["listed twice"]);
    let mut p = BtrfsProvider::new(config(&[], &snaps));
    expect_failed(p.take(&ctx("op")), &["no subvolumes"]);
    assert!(entries(&snaps).is_empty());

    // check() reports every problem at once, and makes nothing.
    let missing = fs.path("missing");
    let p = BtrfsProvider::new(config(&[&a, &plain, &missing, &a], &elsewhere.path));
    let problems = p.check();
    let text: Vec<String> = problems.iter().map(|e| e.to_string()).collect();
    assert_eq!(problems.len(), 4, "{text:#?}");
    assert!(problems
        .iter()
        .all(|e| e.code() == ErrorCode::SnapshotFailed));
    assert!(
        matches!(
            &problems[..],
            [
                SnapshotError::ListedTwice { .. },
                SnapshotError::NotBtrfs { .. },
                SnapshotError::NotSubvolume { .. },
                SnapshotError::Open { .. },
            ]
        ),
        "{problems:#?}"
    );
    assert!(text[0].contains("listed twice"), "{text:#?}");
    assert!(text[1].contains("is not on btrfs"), "{text:#?}");
    assert!(text[2].contains("is not a btrfs subvolume"), "{text:#?}");
    assert!(text[3].contains("does not exist"), "{text:#?}");
    assert!(BtrfsProvider::new(config(&[&a], &snaps)).check().is_empty());
    assert!(entries(&snaps).is_empty());

    // The second snapshot fails (its name exists): the first is removed again.
    let b = subvolume(&fs, "b");
    let mut p = BtrfsProvider::new(config(&[&a, &b], &snaps));
    let first = p.take_at(&ctx("dup"), at(T)).unwrap();
    sh(
        "btrfs",
        &[
            "-q",
            "subvolume",
            "delete",
            snaps.join(&first[0].id).to_str().unwrap(),
        ],
    );
    let m = expect_failed(
        p.take_at(&ctx("dup"), at(T)),
        &["already exists", "removed the 1 snapshot(s)"],
    );
    eprintln!("{m}");
    assert_eq!(entries(&snaps), [first[1].id.clone()]);

    // Past the deadline after the first snapshot: SnapshotTimeout, and the first is removed.
    let zero = SnapshotContext {
        operation_id: "late",
        frozen: &[],
        timeout: Duration::ZERO,
    };
    let e = p.take(&zero).unwrap_err();
    assert_eq!(e.code(), ErrorCode::SnapshotTimeout, "{e}");
    let SnapshotError::Abandoned { cause, made, left } = &e else {
        panic!("not abandoned: {e:?}");
    };
    assert!(matches!(**cause, SnapshotError::TookTooLong { .. }), "{e}");
    assert_eq!((*made, left.len()), (1, 0), "{e}");
    assert!(e.to_string().contains("not snapshotted"), "{e}");
    assert!(e.to_string().contains("removed the 1 snapshot(s)"), "{e}");
    assert_eq!(entries(&snaps), [first[1].id.clone()]);
}

#[test]
fn refuses_to_snapshot_a_frozen_btrfs() {
    support::require_root!();
    let fs = LoopFs::new("btrfs", 300);
    let a = subvolume(&fs, "a");
    let snaps = fs.path("snaps");
    std::fs::create_dir(&snaps).unwrap();
    let target = Target {
        mount_point: fs.mount_point.clone(),
        also_mounted_at: vec![],
        major: 0,
        minor: 0,
        fstype: "btrfs".into(),
        source: fs.device.clone(),
    };
    sh("fsfreeze", &["-f", fs.mount_point.to_str().unwrap()]);
    // If the check failed, the ioctl would block until thaw: a watchdog bounds that.
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (done, mp) = (done.clone(), fs.mount_point.clone());
        std::thread::spawn(move || {
            let t = Instant::now();
            while !done.load(Ordering::SeqCst) && t.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(20));
            }
            support::thaw(&mp);
        })
    };
    let mut p = BtrfsProvider::new(config(&[&a], &snaps));
    let frozen = [target];
    let c = SnapshotContext {
        operation_id: "op",
        frozen: &frozen,
        timeout: Duration::from_secs(60),
    };
    let t = Instant::now();
    let r = p.take(&c);
    let elapsed = t.elapsed();
    done.store(true, Ordering::SeqCst);
    watchdog.join().unwrap();
    let m = expect_failed(r, &["is frozen", "exclude it from freezing"]);
    eprintln!("{m}");
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert!(entries(&snaps).is_empty());
    // Thawed, the same provider works.
    assert!(p.take(&ctx("op")).is_ok());
}
