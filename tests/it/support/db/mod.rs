//! Real PostgreSQL and MariaDB servers for the database tests, started by hand as their
//! unprivileged users, on directories the tests create, listening only on unix sockets in
//! those directories.
//!
//! Every server, load generator and attached image is owned by a guard that stops it (by its
//! pid), unmounts or detaches it on drop, also during a panic, so a failing test leaves no
//! server running and no loop device behind.
#![allow(dead_code)]

use crate::support::{sh, Run, Scratch};
use quiesce::codes::ErrorCode;
use quiesce::report::{Consistency, Report, Status};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

mod mariadb;
mod postgres;
mod restore;

#[allow(unused_imports)]
pub use mariadb::*;
#[allow(unused_imports)]
pub use postgres::*;
#[allow(unused_imports)]
pub use restore::*;

/// PATH given to servers and clients (quiesce gives hooks a clean PATH of its own).
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

// ---- users, binaries, directories ------------------------------------------------------

/// An unprivileged system user the servers run as.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl User {
    pub fn get(name: &str) -> User {
        let uid = sh("id", &["-u", name]).trim().parse().unwrap();
        let gid = sh("id", &["-g", name]).trim().parse().unwrap();
        User {
            name: name.to_string(),
            uid,
            gid,
        }
    }

    /// chown a path (not recursive).
    pub fn own(&self, p: &Path) {
        std::os::unix::fs::chown(p, Some(self.uid), Some(self.gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
    }

    /// A command run as this user (setgid/setuid in the child; supplementary groups are
    /// dropped by std when the uid changes), with a minimal environment and cwd `/`.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.uid(self.uid)
            .gid(self.gid)
            .env_clear()
            .env("PATH", PATH)
            .env("LC_ALL", "C")
            .env("HOME", "/")
            .current_dir("/");
        c
    }
}

/// A PostgreSQL server binary: the newest /usr/lib/postgresql/*/bin, else PATH.
pub fn pg_bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    versions.sort_by_key(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0)
    });
    for v in versions.iter().rev() {
        let p = v.join("bin").join(name);
        if p.is_file() {
            return p;
        }
    }
    which(name).unwrap_or_else(|| {
        panic!("{name} not found: install PostgreSQL (apt-get install postgresql-15)")
    })
}

/// A program on PATH, or None.
pub fn which(name: &str) -> Option<PathBuf> {
    PATH.split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn need(name: &str) -> PathBuf {
    which(name).unwrap_or_else(|| {
        panic!("{name} not found: install it (scripts/install-deps.sh installs MariaDB)")
    })
}

/// A scratch directory the unprivileged servers can traverse: root-owned, mode 0755 (still
/// not writable by group/others, so nothing in it weakens quiesce's trust checks).
pub struct OpenDir {
    pub scratch: Scratch,
}

impl OpenDir {
    pub fn new(tag: &str) -> OpenDir {
        let scratch = Scratch::new(tag);
        std::fs::set_permissions(&scratch.path, std::fs::Permissions::from_mode(0o755)).unwrap();
        OpenDir { scratch }
    }

    pub fn path(&self) -> &Path {
        &self.scratch.path
    }

    /// Create a directory (and parents), mode 0755 unless it is owned by `owner` (then 0700).
    pub fn dir(&self, rel: &str, owner: Option<&User>) -> PathBuf {
        mkdir_owned(&self.scratch.path.join(rel), owner)
    }
}

/// Create a directory owned by `owner` (mode 0700), or by root with mode 0755.
pub fn mkdir_owned(p: &Path, owner: Option<&User>) -> PathBuf {
    std::fs::create_dir_all(p).unwrap();
    match owner {
        Some(u) => {
            u.own(p);
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        None => std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap(),
    }
    p.to_path_buf()
}

/// A file the given user may write (server logs live outside the frozen volumes).
pub fn log_file(p: &Path, owner: &User) -> PathBuf {
    std::fs::write(p, b"").unwrap();
    owner.own(p);
    p.to_path_buf()
}

/// Copy a shipped hook script from examples/hooks into `dir` (root-owned, 0700), as an
/// operator installs it.
pub fn install_hook(dir: &Scratch, name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/hooks")
        .join(name);
    let body = std::fs::read_to_string(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    dir.script(&format!("hooks/{name}"), &body)
}

// ---- processes ---------------------------------------------------------------------------

/// A long-running child (server or load generator) stopped by pid on drop: `stop_signal`,
/// then SIGKILL if it has not exited within `grace`.
pub struct Proc {
    pub what: String,
    child: Option<Child>,
    stop_signal: rustix::process::Signal,
    grace: Duration,
}

impl Proc {
    pub fn spawn(
        what: &str,
        mut cmd: Command,
        stop_signal: rustix::process::Signal,
        grace: Duration,
    ) -> Proc {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        Proc {
            what: what.to_string(),
            child: Some(child),
            stop_signal,
            grace,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Has it exited? (Reaps it if so.)
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn stdin(&mut self) -> Option<ChildStdin> {
        self.child.as_mut().and_then(|c| c.stdin.take())
    }

    pub fn stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.as_mut().and_then(|c| c.stdout.take())
    }

    /// Stop it now; returns its exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
            let _ = rustix::process::kill_process(pid, self.stop_signal);
        }
        let deadline = Instant::now() + self.grace;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{}: not stopped after {:?}, SIGKILL", self.what, self.grace);
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Run a command and return (success, stdout, stderr).
pub fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<Option<T>, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match probe()? {
            Some(v) => return Ok(v),
            None if Instant::now() > deadline => return Err(format!("{what}: timed out")),
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

// ---- quiesce ----------------------------------------------------------------------------------

/// One `quiesce snapshot --json` run and its report, typed.
pub struct QuiesceRun {
    pub run: Run,
    pub report: Report,
}

impl std::ops::Deref for QuiesceRun {
    type Target = Run;
    fn deref(&self) -> &Run {
        &self.run
    }
}

impl QuiesceRun {
    pub fn consistency(&self) -> Consistency {
        self.report.consistency
    }
    pub fn status(&self) -> Status {
        self.report.status
    }
    pub fn operation_id(&self) -> String {
        self.report.operation_id.clone()
    }
    pub fn error_codes(&self) -> Vec<ErrorCode> {
        crate::support::codes(&self.report)
    }
    pub fn snapshot_ids(&self) -> Vec<String> {
        self.report.snapshots.iter().map(|s| s.id.clone()).collect()
    }
    pub fn frozen_ms(&self) -> Option<u64> {
        self.report.frozen_ms
    }
    /// A lower bound of the moment the snapshot started: the report's start plus the pre
    /// and freeze phases (each rounded down), and never before quiesce was spawned.
    pub fn snapshot_start_lower_bound(&self) -> SystemTime {
        let t = &self.report.timings;
        let phases = Duration::from_millis(t.pre_ms.unwrap_or(0) + t.freeze_ms.unwrap_or(0));
        match humantime::parse_rfc3339_weak(&self.report.started_at) {
            Ok(s) => (s + phases).max(self.run.spawned_at),
            Err(_) => self.run.spawned_at,
        }
    }
}

/// `quiesce snapshot --json --config CONFIG`.
pub fn quiesce_snapshot(config: &Path) -> QuiesceRun {
    let run = crate::support::quiesce(&["snapshot", "--json"])
        .config(config)
        .run();
    let report = run.report();
    QuiesceRun { run, report }
}

/// TOML string literal.
pub fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// TOML array of strings.
pub fn toml_list<S: AsRef<str>>(items: &[S]) -> String {
    let v: Vec<String> = items.iter().map(|s| toml_str(s.as_ref())).collect();
    format!("[{}]", v.join(", "))
}

// ---- pacing ----------------------------------------------------------------------------------

/// At most `n` heavy database tests at a time: the machine has two cores shared with other
/// builders, and the timeouts under test must not be missed because of overload.
pub struct Slots {
    n: Mutex<usize>,
    cv: Condvar,
}

pub struct Slot<'a>(&'a Slots);

impl Slots {
    pub const fn new(n: usize) -> Slots {
        Slots {
            n: Mutex::new(n),
            cv: Condvar::new(),
        }
    }
    pub fn take(&self) -> Slot<'_> {
        let mut n = self.n.lock().unwrap_or_else(|e| e.into_inner());
        while *n == 0 {
            n = self.cv.wait(n).unwrap_or_else(|e| e.into_inner());
        }
        *n -= 1;
        Slot(self)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        *self.0.n.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.0.cv.notify_one();
    }
}
