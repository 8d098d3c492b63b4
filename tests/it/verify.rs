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
    require_root();
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
    require_root();
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
    require_root();
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
    myvol: &Path,
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
        toml_list(&[p(myvol)]),
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
    require_root();
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
    let config = mariadb_config(&private, &myvol, &snaps, &datadir, Some(argv), "q.toml");
    let control = mariadb_config(&private, &myvol, &snaps, &datadir, None, "control.toml");

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
