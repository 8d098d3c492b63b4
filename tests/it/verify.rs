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
//! - `mariadb_on_btrfs_*`: MariaDB under an insert load verified 10/10, control copies and a
//!   truncated InnoDB file caught; its redo log and undo tablespaces on a second volume,
//!   symlinked from the data directory: re-pointed into the view when both volumes are
//!   snapshotted, refused when not, the original byte-for-byte and pid-for-pid the same.
//! - `command_provider_*`: a command provider copying a real loop image (ext4, XFS, btrfs):
//!   copies verified after every snapshot (`e2fsck -fn`, `xfs_repair -n`, `btrfs check
//!   --readonly`, a user verifier on a read-only mount), shown in `history`, the stored
//!   report and serve's `/metrics`; damaged copies caught by name; a user `verify_command`
//!   view torn down after a verify and after kill -9 (by the next `snapshot` and `serve`).
//!
//! Run: `cargo test --test it verify:: -- --nocapture` (as root; PostgreSQL, MariaDB,
//! btrfs-progs, xfsprogs).
use crate::support;
use crate::support::db;

use db::*;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::{LoopFs, Scratch};

/// Two heavy tests at a time at most (two cores shared with other builders).
static SLOTS: Slots = Slots::new(2);

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

fn names(digest: &BTreeMap<String, String>) -> Vec<&String> {
    digest.keys().collect()
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
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd"))
                .ok()
                .as_deref()
                == Some(&want)
        })
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
    support::require_root!("loop filesystems, and database servers run as their own users");
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
    server.psql(
        "postgres",
        "CREATE TABLE t AS SELECT generate_series(1, 1000) AS x",
    );
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
    std::fs::write(
        backup.join("backup_label"),
        "START WAL LOCATION: 0/99000028\n",
    )
    .unwrap();
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
    assert!(
        !ok,
        "the helper wrote through pg_wal into the live WAL: {out}"
    );
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

    // The running server itself may append to its WAL meanwhile (a running-transactions
    // record): compare the files it holds; byte for byte once it is stopped, below.
    assert_eq!(
        names(&tree_digest(&live_wal)),
        names(&wal_before),
        "the live WAL was changed"
    );
    assert_eq!(
        pids_in(&live_data),
        pids_before,
        "the live server's processes changed"
    );
    assert!(!live_data.join("backup_label").exists());
    server.psql("postgres", "SELECT count(*) FROM t");

    // 4. Even with the original stopped, a pg_wal outside the copy's mount is refused.
    drop(server); // its shutdown checkpoint writes to its WAL: take the picture again
    let wal_before = tree_digest(&live_wal);
    let (ok, out) = run_helper(&["--data", p(&copy), "--backup", p(&backup)]);
    eprintln!("original stopped: {out}");
    assert!(!ok && out.contains("outside the restored copy"), "{out}");
    assert_eq!(
        tree_digest(&live_wal),
        wal_before,
        "the live WAL was changed"
    );

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
    assert_eq!(
        tree_digest(&live_wal),
        wal_before,
        "the live WAL was changed"
    );
}

fn sh_ok(cmd: &str, args: &[&str]) {
    let (ok, out, err) = run(Command::new(cmd).args(args));
    assert!(ok, "{cmd} {args:?}: {out}{err}");
}

// =========================================================================================
// quiesce verify: PostgreSQL on btrfs
// =========================================================================================

/// A PostgreSQL whose data directory lives in the btrfs subvolume `pg` (its WAL in the
/// subvolume `wal` when `two_volumes`), snapshots in `snaps`, and a config for it.
struct PgOnBtrfs {
    server: Postgres,
    config: PathBuf,
    snaps: PathBuf,
    data: PathBuf,
    wal: Option<PathBuf>,
    private: Scratch,
    _vol: LoopFs,
    _open: OpenDir,
}

/// A 1 GB btrfs the servers can traverse (mount point 0755), its image in `private`.
fn btrfs_volume(open: &OpenDir, private: &Scratch) -> LoopFs {
    let vol = LoopFs::create(
        "btrfs",
        1024,
        &private.join("btrfs.img"),
        &open.path().join("vol"),
    );
    std::fs::set_permissions(
        &vol.mount_point,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    vol
}

fn pg_on_btrfs(tag: &str, two_volumes: bool, verify_extra: &str) -> PgOnBtrfs {
    let pg = User::get("postgres");
    let open = OpenDir::new(tag);
    let private = Scratch::new(&format!("{tag}-priv"));
    let vol = btrfs_volume(&open, &private);
    let sub = |name: &str| {
        let p = vol.path(name);
        sh_ok("btrfs", &["-q", "subvolume", "create", p.to_str().unwrap()]);
        p
    };
    let pgvol = sub("pg");
    let wal = two_volumes.then(|| sub("wal").join("pg_wal"));
    let snaps = vol.path("snaps");
    std::fs::create_dir(&snaps).unwrap();
    let data = pgvol.join("data");
    pg_initdb(&pg, &data, wal.as_deref());
    let server = Postgres::start(
        &pg,
        &data,
        &open.path().join("sock"),
        &open.path().join("pg.log"),
    )
    .unwrap();
    server.create_quiesce_role();
    let passfile = private.file(
        "pgpass",
        &format!("*:*:*:quiesce:{PG_QUIESCE_PASSWORD}\n"),
        0o600,
    );
    let hook = install_hook(&private, "pg-checkpoint");
    let state = private.join("state");
    let config = private.file(
        "quiesce.toml",
        &format!(
            "[paths]\nstate_dir = {}\ncatalog = {}\nmetrics_file = {}\n\n\
             [freeze]\nenabled = false\n\n\
             [snapshot]\nprovider = \"btrfs\"\nsubvolumes = {}\ndirectory = {}\n\n\
             [[hook]]\nname = \"postgres\"\npre = {}\ntimeout = \"30s\"\n\n\
             [verify]\ntimeout = \"120s\"\n{verify_extra}\n\
             [verify.postgres]\ndata = {}\n",
            toml_str(p(&state)),
            toml_str(p(&private.join("catalog.db"))),
            toml_str(p(&private.join("metrics.prom"))),
            toml_list(&[p(&pgvol)]),
            toml_str(p(&snaps)),
            toml_list(&[
                p(&hook),
                "--conninfo",
                &server.quiesce_conninfo(),
                "--passfile",
                p(&passfile),
            ]),
            toml_str(p(&data)),
        ),
        0o600,
    );
    PgOnBtrfs {
        server,
        config,
        snaps,
        data,
        wal,
        private,
        _vol: vol,
        _open: open,
    }
}

fn quiesce(config: &Path, args: &[&str]) -> (i32, serde_json::Value, String) {
    let out = Command::new(support::quiesce_bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let json = serde_json::from_str(stdout.trim()).unwrap_or(serde_json::Value::Null);
    (
        out.status.code().unwrap_or(-1),
        json,
        format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

/// The pids of the throwaway servers: processes whose cwd (a postgres data directory) is
/// in a view under `snaps` (other tests' servers are not ours).
fn view_servers(snaps: &Path) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|c| {
                c.starts_with(snaps) && c.to_string_lossy().contains(".quiesce-verify-")
            })
        })
        .collect()
}

fn views_in(snaps: &Path) -> Vec<String> {
    std::fs::read_dir(snaps)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(".quiesce-verify-"))
        .collect()
}

#[test]
fn postgres_on_btrfs_every_snapshot_under_pgbench_verifies_and_damage_is_caught() {
    support::require_root!("loop filesystems, and database servers run as their own users");
    let _slot = SLOTS.take();
    let env = pg_on_btrfs("vrfy-pg", false, "");
    // A table nothing writes to: its heap pages are never replaced by WAL replay, so damage
    // to them survives recovery, as on a real disk.
    env.server.psql(
        "postgres",
        "CREATE TABLE keep AS SELECT g AS id, repeat('x', 200) AS pad FROM generate_series(1, 5000) g",
    );
    env.server.pgbench_init(1);
    env.server.psql("postgres", "CHECKPOINT");
    let load = env.server.pgbench_load(2, &env.private.join("pgbench.log"));
    let mut verified = 0;
    let mut last_id = String::new();
    const N: usize = 10;
    for i in 0..N {
        let (code, report, out) = quiesce(&env.config, &["snapshot", "--json"]);
        assert_eq!(code, 0, "{out}");
        assert_eq!(report["consistency"], "application", "{out}");
        let id = report["snapshots"][0]["id"].as_str().unwrap().to_string();
        let (code, v, out) = quiesce(&env.config, &["verify", "--json", &id]);
        eprintln!("snapshot {i}: {} in {} ms", v["status"], v["total_ms"]);
        if code == 0 && v["status"] == "verified" {
            verified += 1;
        } else {
            eprintln!("{out}");
        }
        last_id = id;
    }
    drop(load);
    eprintln!("PostgreSQL under pgbench: {verified}/{N} verified");
    assert_eq!(verified, N);
    assert!(views_in(&env.snaps).is_empty(), "views left behind");
    assert!(
        view_servers(&env.snaps).is_empty(),
        "throwaway servers left running"
    );

    // Listed with the result; the metric of the last verified application snapshot.
    let (code, list, out) = quiesce(&env.config, &["snapshots", "--json"]);
    assert_eq!(code, 0, "{out}");
    let listed = list.as_array().unwrap();
    assert!(
        listed.iter().all(|s| s["verification"] == "verified"),
        "{out}"
    );
    let metrics = std::fs::read_to_string(env.private.join("metrics.prom")).unwrap();
    assert!(
        metrics.contains("quiesce_seconds_since_last_verified_application_snapshot "),
        "{metrics}"
    );

    // Damage: a writable copy of the last snapshot with a corrupted heap page of `keep`,
    // made read-only again under a name of the provider's shape.
    let rel = env
        .server
        .psql("postgres", "SELECT pg_relation_filepath('keep')");
    let damaged = damaged_copy(&env.snaps, &last_id, |dst| {
        use std::io::{Seek, SeekFrom, Write};
        let heap = dst.join("data").join(rel.trim());
        let mut f = std::fs::OpenOptions::new().write(true).open(&heap).unwrap();
        // Line pointers of the first page: normal items whose offset is past the page's end.
        let lp: u32 = 0x7ff0 | (1 << 15) | (100 << 17);
        f.seek(SeekFrom::Start(24)).unwrap();
        for _ in 0..16 {
            f.write_all(&lp.to_le_bytes()).unwrap();
        }
    });
    let (code, v, out) = quiesce(&env.config, &["verify", "--json", &damaged]);
    eprintln!("damaged snapshot: {}", v["status"]);
    assert_eq!(code, 1, "{out}");
    let status = v["status"].as_str().unwrap_or("");
    assert!(
        status.starts_with("verification failed: pg_amcheck"),
        "the damage was not caught by name: {out}"
    );
    let (_, list, _) = quiesce(&env.config, &["snapshots", "--json"]);
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == damaged.as_str())
        .cloned()
        .unwrap();
    assert!(entry["verification"]
        .as_str()
        .unwrap()
        .starts_with("verification failed"));
}

#[test]
fn postgres_on_btrfs_two_volumes_view_into_live_wal_is_refused_and_original_untouched() {
    support::require_root!("loop filesystems, and database servers run as their own users");
    let _slot = SLOTS.take();
    let env = pg_on_btrfs("vrfy-pg2", true, "");
    let wal = env.wal.clone().unwrap();
    env.server.psql(
        "postgres",
        "CREATE TABLE t AS SELECT generate_series(1, 1000) AS x",
    );
    let (code, report, out) = quiesce(&env.config, &["snapshot", "--json"]);
    assert_eq!(code, 0, "{out}");
    let id = report["snapshots"][0]["id"].as_str().unwrap().to_string();
    // The view's pg_wal symlink leads to the live WAL (only the data subvolume is snapshotted).
    env.server.psql("postgres", "CHECKPOINT");
    std::thread::sleep(Duration::from_millis(500));
    let data_before = tree_digest(&env.data);
    let wal_before = tree_digest(&wal);
    let sock_before = tree_digest(&env.server.sock);
    let pids_before = pids_in(&env.data);
    let (code, v, out) = quiesce(&env.config, &["verify", "--json", &id]);
    eprintln!("two volumes, WAL not snapshotted: {}", v["status"]);
    assert_eq!(code, 1, "{out}");
    let status = v["status"].as_str().unwrap_or("");
    assert!(
        status.starts_with("verification failed: postgres layout") && status.contains("pg_wal"),
        "{out}"
    );
    assert_eq!(
        tree_digest(&env.data),
        data_before,
        "the live data directory changed"
    );
    assert_eq!(tree_digest(&wal), wal_before, "the live WAL changed");
    assert_eq!(
        tree_digest(&env.server.sock),
        sock_before,
        "the live socket dir changed"
    );
    assert_eq!(
        pids_in(&env.data),
        pids_before,
        "the live server's processes changed"
    );
    env.server.psql("postgres", "SELECT count(*) FROM t");
    assert!(views_in(&env.snaps).is_empty());
}

#[test]
fn postgres_on_btrfs_kill_9_during_verify_leaves_nothing_after_the_next_start() {
    support::require_root!("loop filesystems, and database servers run as their own users");
    let _slot = SLOTS.take();
    let env = pg_on_btrfs("vrfy-pgk", false, "");
    env.server.pgbench_init(1);
    let (code, report, out) = quiesce(&env.config, &["snapshot", "--json"]);
    assert_eq!(code, 0, "{out}");
    let id = report["snapshots"][0]["id"].as_str().unwrap().to_string();
    let mut child = Command::new(support::quiesce_bin())
        .args(["verify", &id, "--config"])
        .arg(&env.config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once its throwaway server runs.
    let t = std::time::Instant::now();
    while view_servers(&env.snaps).is_empty() && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !view_servers(&env.snaps).is_empty(),
        "the throwaway server never started"
    );
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !views_in(&env.snaps).is_empty(),
        "the view should still exist after kill -9 (servers {:?}, record {:?})",
        view_servers(&env.snaps),
        std::fs::read_to_string(env.private.join("state/verify.json"))
    );
    // The next start cleans.
    let (code, _, out) = quiesce(&env.config, &["recover"]);
    assert_eq!(code, 0, "{out}");
    let t = std::time::Instant::now();
    while !view_servers(&env.snaps).is_empty() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        view_servers(&env.snaps).is_empty(),
        "a throwaway server is still running"
    );
    assert!(
        views_in(&env.snaps).is_empty(),
        "a view is left: {:?}",
        views_in(&env.snaps)
    );
    assert!(!env.private.join("state/verify.json").exists());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(".quiesce-verify-"));
    // And the snapshot still verifies afterwards.
    let (code, v, out) = quiesce(&env.config, &["verify", "--json", &id]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(v["status"], "verified");
}

// =========================================================================================
// quiesce verify: MariaDB on btrfs
// =========================================================================================

/// The damaged snapshot: a writable copy of `id` changed by `damage`, made read-only again
/// under a name of the provider's shape (another operation id).
fn damaged_copy(snaps: &Path, id: &str, damage: impl FnOnce(&Path)) -> String {
    let name = format!("{}x", id.replacen('-', "-d", 1));
    let dst = snaps.join(&name);
    sh_ok(
        "btrfs",
        &["-q", "subvolume", "snapshot", p(&snaps.join(id)), p(&dst)],
    );
    damage(&dst);
    sh_ok("btrfs", &["property", "set", "-ts", p(&dst), "ro", "true"]);
    name
}

fn mariadb_config(
    private: &Scratch,
    subvolumes: &[&str],
    snaps: &Path,
    datadir: &Path,
    hook: Option<Vec<String>>,
    file: &str,
) -> PathBuf {
    let mut t = format!(
        "[paths]\nstate_dir = {}\ncatalog = {}\n\n[freeze]\nenabled = false\n\n\
         [snapshot]\nprovider = \"btrfs\"\nsubvolumes = {}\ndirectory = {}\n\n\
         [verify]\ntimeout = \"120s\"\n\n\
         [verify.mariadb]\ndata = {}\nlog_bin = \"binlog\"\n\n",
        toml_str(p(&private.join("state"))),
        toml_str(p(&private.join("catalog.db"))),
        toml_list(subvolumes),
        toml_str(p(snaps)),
        toml_str(p(datadir)),
    );
    if let Some(argv) = hook {
        t.push_str(&format!(
            "[[hook]]\nname = \"mariadb\"\npre = {}\ntimeout = \"30s\"\nhold = true\n",
            toml_list(&argv)
        ));
    }
    private.file(file, &t, 0o600)
}

#[test]
fn mariadb_on_btrfs_verified_under_load_control_copies_and_damage_caught() {
    support::require_root!("loop filesystems, and database servers run as their own users");
    let _slot = SLOTS.take();
    let my = User::get("mysql");
    let open = OpenDir::new("vrfy-my");
    let private = Scratch::new("vrfy-my-priv");
    let vol = btrfs_volume(&open, &private);
    let myvol = vol.path("my");
    sh_ok("btrfs", &["-q", "subvolume", "create", p(&myvol)]);
    std::fs::set_permissions(&myvol, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let snaps = vol.path("snaps");
    std::fs::create_dir(&snaps).unwrap();
    let datadir = myvol.join("mysql");
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
         CREATE TABLE w.keep ENGINE=InnoDB AS SELECT seq AS id, REPEAT('k', 100) AS pad FROM w.seq_1_to_5000",
    );
    // A clean restart: a checkpoint, after which nothing writes to w.keep, so crash recovery
    // of a copy has nothing in its redo log to rebuild that table's pages from.
    drop(server);
    let server = MariaDb::start(
        &my,
        &datadir,
        &open.path().join("run"),
        &open.path().join("mariadb.log"),
    )
    .unwrap();
    let option_file = private.file("mariadb.cnf", &server.quiesce_option_file(), 0o600);
    let positions = private.join("positions");
    std::fs::create_dir_all(&positions).unwrap();
    let hook = install_hook(&private, "mariadb-hold");
    let argv = vec![
        p(&hook).to_string(),
        "--out-dir".into(),
        p(&positions).to_string(),
        "--defaults-extra-file".into(),
        p(&option_file).to_string(),
    ];
    let vols = [p(&myvol)];
    let config = mariadb_config(&private, &vols, &snaps, &datadir, Some(argv), "q.toml");
    let control = mariadb_config(&private, &vols, &snaps, &datadir, None, "control.toml");

    let writer = MariaWriter::start(&server);
    std::thread::sleep(Duration::from_millis(500));
    const N: usize = 10;
    let mut verified = 0;
    let mut last_id = String::new();
    for i in 0..N {
        let (code, report, out) = quiesce(&config, &["snapshot", "--json"]);
        assert_eq!(code, 0, "{out}");
        assert_eq!(report["consistency"], "application", "{out}");
        let id = report["snapshots"][0]["id"].as_str().unwrap().to_string();
        let (code, v, out) = quiesce(&config, &["verify", "--json", &id]);
        eprintln!(
            "mariadb snapshot {i}: {} in {} ms",
            v["status"], v["total_ms"]
        );
        if code == 0 && v["status"] == "verified" {
            verified += 1;
        } else {
            eprintln!("{out}");
        }
        last_id = id;
    }
    // Control copies: the same snapshots without the hook's lock (crash-consistent).
    let mut caught = 0;
    const CONTROL: usize = 3;
    for i in 0..CONTROL {
        let (code, report, out) = quiesce(&control, &["snapshot", "--json"]);
        assert_eq!(code, 0, "{out}");
        let id = report["snapshots"][0]["id"].as_str().unwrap().to_string();
        let (code, v, _) = quiesce(&control, &["verify", "--json", &id]);
        eprintln!("control copy {i} (no quiesce): {}", v["status"]);
        if code != 0 {
            caught += 1;
        }
    }
    let acked = writer.finish().unwrap();
    eprintln!(
        "MariaDB under write load ({acked} inserts): {verified}/{N} verified; control copies \
         without quiesce caught {caught}/{CONTROL}"
    );
    assert_eq!(verified, N);
    assert!(caught >= 1, "no control copy was caught");

    // Damage: a truncated InnoDB file.
    let damaged = damaged_copy(&snaps, &last_id, |dst| {
        let ibd = dst.join("mysql/w/keep.ibd");
        let f = std::fs::OpenOptions::new().write(true).open(&ibd).unwrap();
        f.set_len(0).unwrap();
    });
    let (code, v, out) = quiesce(&config, &["verify", "--json", &damaged]);
    eprintln!("truncated InnoDB file: {}", v["status"]);
    assert_eq!(code, 1, "{out}");
    let status = v["status"].as_str().unwrap_or("");
    assert!(
        status.starts_with("verification failed: CHECK TABLE")
            || status.starts_with("verification failed: mariadb query")
            || status.starts_with("verification failed: mariadb start"),
        "{out}"
    );
    assert!(views_in(&snaps).is_empty(), "views left behind");
}

// =========================================================================================
// quiesce verify: the command provider (image copies, and the user's own view command)
// =========================================================================================

/// An ext4 loop filesystem with a file in it, a command provider that copies its image while
/// it is frozen (printing the copy's path as the snapshot id), a pre hook (so runs are
/// application-consistent) and the given `[verify]` / `[snapshot]` extras.
struct ImageEnv {
    fs: LoopFs,
    snaps: PathBuf,
    config: PathBuf,
    socket: PathBuf,
    private: Scratch,
}

fn image_env(tag: &str, snapshot_extra: &str, verify_extra: &str) -> ImageEnv {
    image_env_of("ext4", 64, tag, snapshot_extra, verify_extra)
}

fn image_env_of(
    fstype: &str,
    size_mb: u64,
    tag: &str,
    snapshot_extra: &str,
    verify_extra: &str,
) -> ImageEnv {
    let private = Scratch::new(tag);
    let fs = LoopFs::new(fstype, size_mb);
    std::fs::create_dir(fs.path("data")).unwrap();
    std::fs::write(fs.path("data/keep.txt"), "kept\n").unwrap();
    let snaps = private.join("snaps");
    std::fs::create_dir(&snaps).unwrap();
    let copy = private.script(
        "copy-image",
        &format!(
            "#!/bin/sh\nset -e\ndst={}/img-$QUIESCE_OPERATION_ID\n\
             cp --sparse=always {} \"$dst\"\necho \"$dst\"\n",
            p(&snaps),
            p(&fs.image)
        ),
    );
    let pre = private.script("pre", "#!/bin/sh\nexit 0\n");
    let socket = private.join("quiesce.sock");
    let config = private.file(
        "quiesce.toml",
        &format!(
            "[paths]\nstate_dir = {}\ncatalog = {}\nmetrics_file = {}\n\n\
             [server]\nsocket = {}\n\n\
             [freeze]\nenabled = true\ninclude = {}\n\n\
             [snapshot]\nprovider = \"command\"\ncommand = {}\n{snapshot_extra}\n\n\
             [[hook]]\nname = \"app\"\npre = {}\ntimeout = \"10s\"\n\n\
             [verify]\ntimeout = \"60s\"\n{verify_extra}\n",
            toml_str(p(&private.join("state"))),
            toml_str(p(&private.join("catalog.db"))),
            toml_str(p(&private.join("metrics.prom"))),
            toml_str(p(&socket)),
            toml_list(&[p(&fs.mount_point)]),
            toml_list(&[p(&copy)]),
            toml_list(&[p(&pre)]),
        ),
        0o600,
    );
    ImageEnv {
        fs,
        snaps,
        config,
        socket,
        private,
    }
}

/// Loop devices whose backing file is under `dir`.
fn loops_backed_in(dir: &Path) -> Vec<String> {
    let out = support::sh("losetup", &["-l", "-n", "-O", "NAME,BACK-FILE"]);
    out.lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|b| b.starts_with(p(dir)))
        })
        .map(|l| l.to_string())
        .collect()
}

fn verify_mounts() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains("quiesce-verify-"))
        .map(|l| l.to_string())
        .collect()
}

fn http_get(socket: &Path, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: q\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn command_provider_image_copies_are_fsck_verified_after_each_snapshot_and_damage_is_caught() {
    support::require_root!("loop filesystems, and database servers run as their own users");
    let _slot = SLOTS.take();
    let private = Scratch::new("vrfy-img-v");
    let verifier = private.script(
        "check-keep",
        "#!/bin/sh\nset -e\ntest \"$(cat \"$QUIESCE_VERIFY_VIEW/data/keep.txt\")\" = kept\n\
         if touch \"$QUIESCE_VERIFY_VIEW/x\" 2>/dev/null; then echo writable; exit 1; fi\n\
         echo \"keep.txt is intact in a read-only view\"\n",
    );
    let env = image_env(
        "vrfy-img",
        "",
        &format!(
            "after_snapshot = true\nhooks = [{}]\n",
            toml_list(&[p(&verifier)])
        ),
    );
    let mut ops = Vec::new();
    for i in 0..3 {
        std::fs::write(
            env.fs.path(&format!("data/f{i}")),
            vec![b'a' + i as u8; 100_000],
        )
        .unwrap();
        let (code, report, out) = quiesce(&env.config, &["snapshot", "--json"]);
        assert_eq!(code, 0, "{out}");
        assert_eq!(report["consistency"], "application", "{out}");
        let v = &report["verification"];
        eprintln!(
            "image snapshot {i}: {} in {} ms",
            v["status"], v["total_ms"]
        );
        assert_eq!(v["status"], "verified", "{out}");
        let checks = v["checks"].as_array().unwrap();
        let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names[0], "e2fsck", "{out}");
        assert!(names[1].starts_with("verifier "), "{out}");
        assert!(checks.iter().all(|c| c["ok"] == true), "{out}");
        ops.push(report["operation_id"].as_str().unwrap().to_string());
    }
    // Nothing attached or mounted afterwards, and the copies are untouched snapshots.
    assert!(
        loops_backed_in(&env.snaps).is_empty(),
        "{:?}",
        loops_backed_in(&env.snaps)
    );
    assert!(verify_mounts().is_empty(), "{:?}", verify_mounts());

    // History and the catalog's stored report say so.
    let (code, hist, out) = quiesce(&env.config, &["history", "--json"]);
    assert_eq!(code, 0, "{out}");
    let runs = hist.as_array().unwrap();
    assert_eq!(runs.len(), 3, "{out}");
    assert!(
        runs.iter().all(|r| r["verification"] == "verified"),
        "{out}"
    );
    let (_, _, table) = quiesce(&env.config, &["history"]);
    assert!(
        table.lines().next().unwrap().contains("VERIFICATION"),
        "{table}"
    );
    let catalog = quiesce::catalog::Catalog::open_read_only(&env.private.join("catalog.db"))
        .unwrap()
        .unwrap();
    let stored: serde_json::Value =
        serde_json::from_str(&catalog.report_json(&ops[2]).unwrap().unwrap()).unwrap();
    assert_eq!(stored["verification"]["status"], "verified");
    assert_eq!(stored["verification"]["checks"][0]["name"], "e2fsck");
    drop(catalog);

    // The gauge an operator alerts on, in the metrics file and on serve's /metrics.
    let file = std::fs::read_to_string(env.private.join("metrics.prom")).unwrap();
    assert!(
        file.contains("\nquiesce_seconds_since_last_verified_application_snapshot "),
        "{file}"
    );
    let serve = support::ServeProcess::start(&env.config, &env.socket);
    let metrics = http_get(&env.socket, "/metrics");
    drop(serve);
    let age: i64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("quiesce_seconds_since_last_verified_application_snapshot "))
        .unwrap_or_else(|| panic!("no gauge on /metrics: {metrics}"))
        .trim()
        .parse()
        .unwrap();
    assert!((0..600).contains(&age), "{metrics}");

    // Damage: the newest copy's inode of data/keep.txt cleared; e2fsck names it.
    let (_, hist, _) = quiesce(&env.config, &["history", "--json"]);
    let id = hist[0]["snapshots"][0]["id"].as_str().unwrap().to_string();
    sh_ok("debugfs", &["-w", "-R", "clri /data/keep.txt", &id]);
    let (code, v, out) = quiesce(&env.config, &["verify", "--json", &id]);
    eprintln!("damaged image: {}", v["status"]);
    assert_eq!(code, 1, "{out}");
    let status = v["status"].as_str().unwrap_or("");
    assert!(status.starts_with("verification failed: e2fsck: "), "{out}");
    assert!(
        status.contains("keep.txt") || status.contains("inode"),
        "{out}"
    );
    let (_, hist, _) = quiesce(&env.config, &["history", "--json"]);
    assert!(hist[0]["verification"]
        .as_str()
        .unwrap()
        .starts_with("verification failed: e2fsck"));
    assert_eq!(hist[1]["verification"], "verified");
    assert!(loops_backed_in(&env.snaps).is_empty());
    assert!(verify_mounts().is_empty());

    // A database verifier needs a writable view (crash recovery): an image view is refused
    // in plain words, and the image is left as it was.
    let text = std::fs::read_to_string(&env.config).unwrap();
    let with_db = env.private.file(
        "with-db.toml",
        &format!(
            "{text}\n[verify.postgres]\ndata = {}\n",
            toml_str(p(&env.fs.path("data")))
        ),
        0o600,
    );
    let good = hist[1]["snapshots"][0]["id"].as_str().unwrap().to_string();
    let before = std::fs::read(&good).unwrap();
    let (code, v, out) = quiesce(&with_db, &["verify", "--json", &good]);
    assert_eq!(code, 1, "{out}");
    let status = v["status"].as_str().unwrap_or("");
    assert!(
        status.starts_with("verification failed: postgres start: the view of /dev/loop")
            && status.contains("is read-only"),
        "{out}"
    );
    assert!(
        std::fs::read(&good).unwrap() == before,
        "the snapshot image changed"
    );
    assert!(loops_backed_in(&env.snaps).is_empty());
}

/// Is any mount point under `dir` mounted?
fn mounted_under(dir: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(p(dir))))
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = std::time::Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn command_provider_verify_command_view_is_torn_down_also_after_kill_9_at_snapshot_and_serve_start()
{
    support::require_root!("loop filesystems, and database servers run as their own users");
    let _slot = SLOTS.take();
    let work = Scratch::new("vrfy-cmdview-w");
    let views = work.join("views");
    std::fs::create_dir(&views).unwrap();
    let torn = work.join("torn-down.log");
    let hold = work.join("hold");
    let pidfile = work.join("verifier.pid");
    // The user's view: a writable copy of the image, loop-mounted; its teardown unmounts it.
    let make_view = work.script(
        "make-view",
        &format!(
            "#!/bin/sh\nset -e\nimg={v}/$QUIESCE_VERIFY_ID.img\nmnt={v}/$QUIESCE_VERIFY_ID\n\
             test \"$1\" = \"$QUIESCE_SNAPSHOT_ID\"\n\
             cp --sparse=always \"$1\" \"$img\"\nmkdir -p \"$mnt\"\nmount -o loop \"$img\" \"$mnt\"\n\
             echo \"making the view\" >&2\necho \"$mnt\"\n",
            v = p(&views)
        ),
    );
    let teardown = work.script(
        "drop-view",
        &format!(
            "#!/bin/sh\nmnt={v}/$QUIESCE_VERIFY_ID\numount \"$mnt\" 2>/dev/null\n\
             rm -f {v}/$QUIESCE_VERIFY_ID.img\nrmdir \"$mnt\"\n\
             echo \"$QUIESCE_SNAPSHOT_ID $QUIESCE_VERIFY_VIEW\" >> {t}\n",
            v = p(&views),
            t = p(&torn)
        ),
    );
    let verifier = work.script(
        "check",
        &format!(
            "#!/bin/sh\nset -e\necho \"$QUIESCE_VERIFY_VIEWS\" > {pid}.views\necho $$ > {pid}\n\
             if [ -e {hold} ]; then sleep 300; fi\n\
             test \"$(cat \"$QUIESCE_VERIFY_VIEW/data/keep.txt\")\" = kept\n\
             echo scribble > \"$QUIESCE_VERIFY_VIEW/data/scribble\"\necho \"writable view, keep.txt intact\"\n",
            pid = p(&pidfile),
            hold = p(&hold)
        ),
    );
    let env = image_env(
        "vrfy-cmdview",
        &format!(
            "verify_command = {}\nverify_teardown = {}",
            toml_list(&[p(&make_view)]),
            toml_list(&[p(&teardown)])
        ),
        &format!("hooks = [{}]\n", toml_list(&[p(&verifier)])),
    );
    let (code, report, out) = quiesce(&env.config, &["snapshot", "--json"]);
    assert_eq!(code, 0, "{out}");
    let id = report["snapshots"][0]["id"].as_str().unwrap().to_string();
    let image_before = std::fs::read(&id).unwrap();
    let (code, v, out) = quiesce(&env.config, &["verify", "--json", "--latest"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(v["status"], "verified", "{out}");
    assert_eq!(v["provider"], "command");
    // The run froze one filesystem and made one snapshot: the view stands for that mount.
    let seen = std::fs::read_to_string(format!("{}.views", p(&pidfile))).unwrap();
    assert!(
        seen.starts_with(&format!("{}={}/", p(&env.fs.mount_point), p(&views))),
        "{seen}"
    );
    let log = std::fs::read_to_string(&torn).unwrap();
    assert_eq!(log.lines().count(), 1, "{log}");
    assert!(log.starts_with(&format!("{id} {}/", p(&views))), "{log}");
    assert!(!mounted_under(&views), "the view is still mounted");
    assert!(
        std::fs::read(&id).unwrap() == image_before,
        "the snapshot image changed (the view must be a copy)"
    );

    // kill -9 during the verifier, twice: the next `quiesce snapshot`, then the next
    // `quiesce serve`, kill the verifier, run the teardown and remove the record.
    std::fs::write(&hold, "").unwrap();
    for (round, next) in ["snapshot", "serve"].iter().enumerate() {
        let _ = std::fs::remove_file(&pidfile);
        let mut child = Command::new(support::quiesce_bin())
            .args(["verify", &id, "--config"])
            .arg(&env.config)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_for("the verifier", Duration::from_secs(30), || pidfile.exists());
        std::thread::sleep(Duration::from_millis(200));
        let verifier_pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            mounted_under(&views),
            "round {round}: the view should outlive kill -9"
        );
        assert!(Path::new(&format!("/proc/{verifier_pid}")).exists());
        let state = env.private.join("state/verify.json");
        assert!(state.exists());
        let _serve;
        if *next == "snapshot" {
            let (code, _, out) = quiesce(&env.config, &["snapshot", "--json"]);
            assert_eq!(code, 0, "{out}");
        } else {
            _serve = support::ServeProcess::start(&env.config, &env.socket);
        }
        wait_for("the cleanup", Duration::from_secs(20), || {
            !mounted_under(&views) && !state.exists()
        });
        let stat =
            std::fs::read_to_string(format!("/proc/{verifier_pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.contains(") Z "),
            "round {round}: the verifier still runs: {stat}"
        );
        let log = std::fs::read_to_string(&torn).unwrap();
        assert_eq!(log.lines().count(), 2 + round, "{log}");
        eprintln!("kill -9 during verify, cleaned by the next {next}: ok");
    }
    std::fs::remove_file(&hold).unwrap();
    let (code, v, out) = quiesce(&env.config, &["verify", "--json", &id]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(v["status"], "verified");
    assert!(
        std::fs::read_dir(&views).unwrap().next().is_none(),
        "views left"
    );
}

// =========================================================================================
// quiesce verify: MariaDB with its redo log and undo tablespaces on a second volume
// =========================================================================================

/// The digests of `dirs` once none of them changed for 3 s (a quiet server's background
/// flushing and checkpoints done).
fn settled_digests(dirs: &[&Path]) -> Vec<BTreeMap<String, String>> {
    let digest = || dirs.iter().map(|d| tree_digest(d)).collect::<Vec<_>>();
    let mut last = digest();
    let mut stable = 0;
    for _ in 0..240 {
        std::thread::sleep(Duration::from_millis(500));
        let now = digest();
        stable = if now == last { stable + 1 } else { 0 };
        if stable == 6 {
            return now;
        }
        last = now;
    }
    panic!("{dirs:?} never settled");
}

/// Entries that differ between two digests (for a readable failure).
fn changed(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Vec<String> {
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{k}: {:?} -> {:?}", a.get(k), b.get(k)))
        .collect()
}

/// Make the live MariaDB quiet: every dirty page flushed, tables closed.
fn quiet_mariadb(server: &MariaDb) {
    server.sql(
        "SET GLOBAL innodb_max_dirty_pages_pct_lwm = 0; \
         SET GLOBAL innodb_max_dirty_pages_pct = 0; FLUSH TABLES",
    );
    wait_for("no dirty pages", Duration::from_secs(60), || {
        server
            .sql(
                "SELECT variable_value FROM information_schema.global_status \
                  WHERE variable_name = 'INNODB_BUFFER_POOL_PAGES_DIRTY'",
            )
            .trim()
            == "0"
    });
}

#[test]
fn mariadb_on_btrfs_two_volumes_log_symlinks_resolve_into_the_view_or_refuse_and_original_untouched(
) {
    support::require_root!("loop filesystems, and database servers run as their own users");
    let _slot = SLOTS.take();
    let my = User::get("mysql");
    let open = OpenDir::new("vrfy-my2");
    let private = Scratch::new("vrfy-my2-priv");
    let vol = btrfs_volume(&open, &private);
    let myvol = vol.path("my");
    let logvol = vol.path("logs");
    for v in [&myvol, &logvol] {
        sh_ok("btrfs", &["-q", "subvolume", "create", p(v)]);
        std::fs::set_permissions(v, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let snaps = vol.path("snaps");
    std::fs::create_dir(&snaps).unwrap();
    let datadir = myvol.join("mysql");
    let logdir = logvol.join("innodb");
    const UNDO: &str = "--innodb-undo-tablespaces=2";
    mariadb_install_with(&my, &datadir, &open.path().join("install-tmp"), &[UNDO]);
    // The redo log and both undo tablespaces live on the second volume, symlinked (by
    // absolute path) from the data directory.
    mkdir_owned(&logdir, Some(&my));
    for f in ["ib_logfile0", "undo001", "undo002"] {
        // (Another subvolume: a copy, not a rename.)
        std::fs::copy(datadir.join(f), logdir.join(f)).unwrap();
        std::os::unix::fs::chown(logdir.join(f), Some(my.uid), Some(my.gid)).unwrap();
        std::fs::remove_file(datadir.join(f)).unwrap();
        std::os::unix::fs::symlink(logdir.join(f), datadir.join(f)).unwrap();
        std::os::unix::fs::lchown(datadir.join(f), Some(my.uid), Some(my.gid)).unwrap();
    }
    let rundir = open.path().join("run");
    let server =
        MariaDb::start_with(&my, &datadir, &rundir, &open.path().join("m.log"), &[UNDO]).unwrap();
    server.create_quiesce_user();
    server.sql(
        "CREATE DATABASE w; \
         CREATE TABLE w.log (id BIGINT PRIMARY KEY, at DATETIME(6) NOT NULL, payload VARCHAR(200)) ENGINE=InnoDB; \
         CREATE TABLE w.mlog (id BIGINT PRIMARY KEY) ENGINE=MyISAM",
    );
    let option_file = private.file("mariadb.cnf", &server.quiesce_option_file(), 0o600);
    let positions = private.join("positions");
    std::fs::create_dir_all(&positions).unwrap();
    let hook = install_hook(&private, "mariadb-hold");
    let argv = vec![
        p(&hook).to_string(),
        "--out-dir".into(),
        p(&positions).to_string(),
        "--defaults-extra-file".into(),
        p(&option_file).to_string(),
    ];
    let both = mariadb_config(
        &private,
        &[p(&myvol), p(&logvol)],
        &snaps,
        &datadir,
        Some(argv.clone()),
        "both.toml",
    );
    let data_only = mariadb_config(
        &private,
        &[p(&myvol)],
        &snaps,
        &datadir,
        Some(argv),
        "one.toml",
    );

    // Both volumes snapshotted in one run, under write load: the view's symlinks are
    // re-pointed at the log volume's view, and every snapshot verifies.
    let writer = MariaWriter::start(&server);
    std::thread::sleep(Duration::from_millis(500));
    let mut ids = Vec::new();
    for i in 0..3 {
        let (code, report, out) = quiesce(&both, &["snapshot", "--json"]);
        assert_eq!(code, 0, "{out}");
        assert_eq!(report["snapshots"].as_array().unwrap().len(), 2, "{out}");
        let id = report["snapshots"][0]["id"].as_str().unwrap().to_string();
        let (code, v, out) = quiesce(&both, &["verify", "--json", &id]);
        eprintln!(
            "two volumes, both snapshotted, snapshot {i}: {}",
            v["status"]
        );
        assert_eq!(code, 0, "{out}");
        assert_eq!(v["status"], "verified", "{out}");
        let layout = v["checks"][0]["message"].as_str().unwrap_or("");
        assert!(
            v["checks"][0]["name"] == "mariadb layout"
                && layout.contains("ib_logfile0 -> ")
                && layout.contains("undo002 -> ")
                && layout.contains(".quiesce-verify-"),
            "{out}"
        );
        ids.push(id);
    }
    let acked = writer.finish().unwrap();
    eprintln!("{acked} inserts acknowledged during the snapshots");

    // The original, quiet, byte for byte and process for process, around a verification of
    // each kind: re-pointed into the view, and refused (the log volume not snapshotted).
    let (code, report, out) = quiesce(&data_only, &["snapshot", "--json"]);
    assert_eq!(code, 0, "{out}");
    let lone = report["snapshots"][0]["id"].as_str().unwrap().to_string();
    for (config, id, want) in [(&both, &ids[2], "verified"), (&data_only, &lone, "refused")] {
        quiet_mariadb(&server);
        let before = settled_digests(&[&datadir, &logdir]);
        let (data_before, logs_before) = (&before[0], &before[1]);
        let run_before = tree_digest(&rundir);
        let pids_before = pids_in(&datadir);
        assert!(!pids_before.is_empty());
        let (code, v, out) = quiesce(config, &["verify", "--json", id]);
        eprintln!("two volumes ({want}): {}", v["status"]);
        let status = v["status"].as_str().unwrap_or("");
        if want == "verified" {
            assert_eq!(code, 0, "{out}");
            assert_eq!(status, "verified", "{out}");
        } else {
            assert_eq!(code, 1, "{out}");
            assert!(
                status.starts_with("verification failed: mariadb layout")
                    && (status.contains("ib_logfile0") || status.contains("undo00"))
                    && status.contains("outside the snapshot"),
                "{out}"
            );
        }
        let data_after = tree_digest(&datadir);
        assert!(
            &data_after == data_before,
            "the live data directory changed: {:?}",
            changed(data_before, &data_after)
        );
        let logs_after = tree_digest(&logdir);
        assert!(
            &logs_after == logs_before,
            "the live redo/undo volume changed: {:?}",
            changed(logs_before, &logs_after)
        );
        assert_eq!(
            tree_digest(&rundir),
            run_before,
            "the live socket dir changed"
        );
        assert_eq!(
            pids_in(&datadir),
            pids_before,
            "the live server's processes changed"
        );
        for f in ["ib_logfile0", "undo001", "undo002"] {
            assert_eq!(std::fs::read_link(datadir.join(f)).unwrap(), logdir.join(f));
        }
    }
    server.sql("SELECT COUNT(*) FROM w.log");
    assert!(views_in(&snaps).is_empty(), "views left behind");
}

#[test]
fn command_provider_xfs_and_btrfs_image_copies_are_checked_by_their_own_tools() {
    support::require_root!("loop filesystems, and database servers run as their own users");
    let _slot = SLOTS.take();
    let private = Scratch::new("vrfy-img-fs");
    let verifier = private.script(
        "check-keep",
        "#!/bin/sh\nset -e\ntest \"$(cat \"$QUIESCE_VERIFY_VIEW/data/keep.txt\")\" = kept\n",
    );
    let extra = format!(
        "after_snapshot = true\nhooks = [{}]\n",
        toml_list(&[p(&verifier)])
    );
    for (fstype, size, check_name) in [("xfs", 300, "xfs_repair"), ("btrfs", 256, "btrfs check")] {
        let env = image_env_of(fstype, size, &format!("vrfy-img-{fstype}"), "", &extra);
        let mut last = String::new();
        for i in 0..2 {
            std::fs::write(env.fs.path(&format!("data/f{i}")), vec![b'x'; 300_000]).unwrap();
            let (code, report, out) = quiesce(&env.config, &["snapshot", "--json"]);
            assert_eq!(code, 0, "{out}");
            let v = &report["verification"];
            eprintln!(
                "{fstype} image copy {i}: {} ({})",
                v["status"], v["checks"][0]["message"]
            );
            assert_eq!(v["status"], "verified", "{out}");
            assert_eq!(v["checks"][0]["name"], check_name, "{out}");
            last = report["snapshots"][0]["id"].as_str().unwrap().to_string();
        }
        assert!(loops_backed_in(&env.snaps).is_empty());
        assert!(verify_mounts().is_empty());
        if fstype == "xfs" {
            // The inode of data/keep.txt zeroed in the newest copy.
            let ino = std::fs::metadata(env.fs.path("data/keep.txt"))
                .unwrap()
                .ino();
            sh_ok(
                "xfs_db",
                &[
                    "-x",
                    "-c",
                    &format!("inode {ino}"),
                    "-c",
                    "write core.mode 0",
                    &last,
                ],
            );
            let (code, v, out) = quiesce(&env.config, &["verify", "--json", &last]);
            eprintln!("damaged xfs copy: {}", v["status"]);
            assert_eq!(code, 1, "{out}");
            assert!(
                v["status"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("verification failed: xfs_repair: "),
                "{out}"
            );
            assert!(loops_backed_in(&env.snaps).is_empty());
        } else {
            // The newest copy's FS tree leaf overwritten in both of its metadata copies (DUP):
            // its checksum no longer matches.
            let dump = support::sh(
                "btrfs",
                &["inspect-internal", "dump-tree", "-t", "5", &last],
            );
            let leaf: u64 = dump
                .lines()
                .find_map(|l| {
                    let mut w = l.split_whitespace();
                    matches!(w.next(), Some("leaf" | "node")).then(|| w.next()?.parse().ok())?
                })
                .unwrap_or_else(|| panic!("no FS tree root in {dump}"));
            let map = support::sh("btrfs-map-logical", &["-l", &leaf.to_string(), &last]);
            let mut damaged = 0;
            for physical in map.lines().filter_map(|l| {
                l.split_whitespace()
                    .skip_while(|w| *w != "physical")
                    .nth(1)?
                    .parse::<u64>()
                    .ok()
            }) {
                use std::os::unix::fs::FileExt;
                let f = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
                f.write_all_at(b"damaged by the test", physical + 200)
                    .unwrap();
                damaged += 1;
            }
            assert!(damaged >= 1, "{map}");
            let (code, v, out) = quiesce(&env.config, &["verify", "--json", &last]);
            eprintln!("damaged btrfs copy: {}", v["status"]);
            assert_eq!(code, 1, "{out}");
            assert!(
                v["status"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("verification failed: btrfs check: "),
                "{out}"
            );
            assert!(loops_backed_in(&env.snaps).is_empty());
            assert!(verify_mounts().is_empty());
        }
    }
}
