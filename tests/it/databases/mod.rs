//! Real databases through the real binary: PostgreSQL and MariaDB servers started by hand on
//! loop filesystems these tests create, under a continuous write load, snapshotted with
//! `quiesce snapshot --json --config X` and the hook scripts shipped in examples/hooks/, and
//! every snapshot restored (its image attached to a new loop device, mounted elsewhere, a
//! second server started on it) and checked.
//!
//! A module per concern: `postgres` (one volume, CHECKPOINT hook), `mariadb` (FTWRL held),
//! `postgres_two_volumes` (WAL apart, backup_label restores), `holds` (holds that never
//! become ready or are killed while holding). What each test proves is said in its module.
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

mod holds;
mod mariadb;
mod postgres;
mod postgres_two_volumes;

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

// ---- a MariaDB server with the hook installed (mariadb, holds) ----

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
    let server = MariaDb::fresh(&my, &datadir, &open);
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
