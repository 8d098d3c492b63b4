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

// ---- PostgreSQL ----------------------------------------------------------------------------

/// The password of the `quiesce` database role in every test server; the hooks read it from
/// a root-only passfile, never from argv or the environment.
pub const PG_QUIESCE_PASSWORD: &str = "quiesce-test-secret";

/// `initdb` a data directory (owned by postgres) with trust for local superuser connections
/// and scram-sha-256 for the `quiesce` role, whose rights are created on first start by
/// [`Postgres::create_quiesce_role`].
pub fn pg_initdb(pg: &User, data: &Path, waldir: Option<&Path>) {
    mkdir_owned(data, Some(pg));
    let mut cmd = pg.command(pg_bin("initdb"));
    cmd.arg("-D")
        .arg(data)
        .args(["-E", "UTF8", "--locale=C", "-A", "trust", "-U", "postgres"]);
    if let Some(w) = waldir {
        mkdir_owned(w, Some(pg));
        cmd.arg("--waldir").arg(w);
    }
    let (ok, out, err) = run(&mut cmd);
    assert!(ok, "initdb failed: {out}\n{err}");
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all quiesce scram-sha-256\nlocal all all trust\n",
    )
    .unwrap();
}

/// A running PostgreSQL server.
pub struct Postgres {
    pub data: PathBuf,
    pub sock: PathBuf,
    pub log: PathBuf,
    proc: Proc,
}

impl Postgres {
    /// Start `postgres -D data` as the postgres user, socket in `sock` (created), log to
    /// `log`. Err(log contents) if it does not come up (e.g. recovery refused to start).
    pub fn start(pg: &User, data: &Path, sock: &Path, log: &Path) -> Result<Postgres, String> {
        mkdir_owned(sock, Some(pg));
        let logf = log_file(log, pg);
        let out = std::fs::OpenOptions::new()
            .append(true)
            .open(&logf)
            .unwrap();
        let mut cmd = pg.command(pg_bin("postgres"));
        cmd.arg("-D")
            .arg(data)
            .arg("-k")
            .arg(sock)
            .args([
                "-c",
                "listen_addresses=",
                "-c",
                "port=5432",
                "-c",
                "shared_buffers=32MB",
                "-c",
                "max_wal_size=256MB",
                "-c",
                "logging_collector=off",
                "-c",
                "log_checkpoints=on",
            ])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        let proc = Proc::spawn(
            "postgres",
            cmd,
            rustix::process::Signal::INT,
            Duration::from_secs(30),
        );
        let mut server = Postgres {
            data: data.to_path_buf(),
            sock: sock.to_path_buf(),
            log: logf,
            proc,
        };
        let ready = wait_until("postgres start", Duration::from_secs(90), || {
            if let Some(st) = server.proc.exited() {
                return Err(format!("postgres exited ({st})"));
            }
            Ok(server.try_psql("postgres", "SELECT 1").ok())
        });
        match ready {
            Ok(_) => Ok(server),
            Err(e) => {
                server.proc.stop();
                Err(format!("{e}\n--- log ---\n{}", server.log_text()))
            }
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Run SQL as the superuser (trust over the socket, client runs as root).
    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let (ok, out, err) = run(Command::new("psql")
            .env_clear()
            .env("PATH", PATH)
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.sock)
            .args(["-p", "5432", "-U", "postgres", "-d", db, "-c", sql]));
        if ok {
            Ok(out.trim().to_string())
        } else {
            Err(err)
        }
    }

    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.try_psql(db, sql)
            .unwrap_or_else(|e| panic!("psql {sql}: {e}"))
    }

    /// libpq connection string of the hook's role (no password: that is in the passfile).
    pub fn quiesce_conninfo(&self) -> String {
        format!(
            "host={} port=5432 user=quiesce dbname=postgres connect_timeout=10",
            self.sock.display()
        )
    }

    /// The least-privileged role the shipped hooks need: CHECKPOINT (pg_checkpoint),
    /// pg_backup_start/stop, and REPLICATION for the temporary slot that keeps the WAL.
    pub fn create_quiesce_role(&self) {
        self.psql(
            "postgres",
            &format!(
                "CREATE ROLE quiesce LOGIN REPLICATION PASSWORD '{PG_QUIESCE_PASSWORD}'; \
                 GRANT pg_checkpoint TO quiesce; \
                 GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean) TO quiesce; \
                 GRANT EXECUTE ON FUNCTION pg_backup_stop(boolean) TO quiesce;"
            ),
        );
    }

    /// `pgbench -i` a database `bench` at the given scale.
    pub fn pgbench_init(&self, scale: u32) {
        self.psql("postgres", "CREATE DATABASE bench");
        let (ok, out, err) = run(Command::new("pgbench")
            .env_clear()
            .env("PATH", PATH)
            .arg("-h")
            .arg(&self.sock)
            .args(["-p", "5432", "-U", "postgres", "-i", "-q", "-s"])
            .arg(scale.to_string())
            .arg("bench"));
        assert!(ok, "pgbench -i failed: {out}\n{err}");
    }

    /// Start a continuous TPC-B-like pgbench load (stopped on drop).
    pub fn pgbench_load(&self, clients: u32, log: &Path) -> Proc {
        let logf = std::fs::File::create(log).unwrap();
        let mut cmd = Command::new("pgbench");
        cmd.env_clear()
            .env("PATH", PATH)
            .arg("-h")
            .arg(&self.sock)
            .args(["-p", "5432", "-U", "postgres", "-n", "-T", "3600", "-c"])
            .arg(clients.to_string())
            .arg("-j")
            .arg(clients.to_string())
            .arg("bench")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf);
        Proc::spawn(
            "pgbench",
            cmd,
            rustix::process::Signal::INT,
            Duration::from_secs(10),
        )
    }

    /// pgbench's invariant: the sums of the balances of accounts, tellers and branches and
    /// of the history deltas are equal (every transaction updates all four by the same
    /// delta). Returns (sum, history rows).
    pub fn pgbench_invariant(&self) -> (i64, i64) {
        let row = self.psql(
            "bench",
            "SELECT (SELECT sum(abalance) FROM pgbench_accounts), \
                    (SELECT sum(tbalance) FROM pgbench_tellers), \
                    (SELECT sum(bbalance) FROM pgbench_branches), \
                    (SELECT coalesce(sum(delta), 0) FROM pgbench_history), \
                    (SELECT count(*) FROM pgbench_history)",
        );
        let v: Vec<i64> = row.split('|').map(|s| s.parse().unwrap()).collect();
        assert_eq!(v.len(), 5, "{row}");
        assert!(
            v[0] == v[1] && v[1] == v[2] && v[2] == v[3],
            "pgbench invariant broken: accounts {} tellers {} branches {} history {}",
            v[0],
            v[1],
            v[2],
            v[3]
        );
        (v[0], v[4])
    }

    /// Stop (fast shutdown) and wait. Also done on drop.
    pub fn stop(&mut self) {
        self.proc.stop();
    }
}

// ---- MariaDB -------------------------------------------------------------------------------

pub const MARIADB_QUIESCE_PASSWORD: &str = "quiesce-test-secret";

/// `mariadb-install-db` into `datadir` (owned by mysql; root authenticates by unix socket).
/// Temporary tables go to `tmpdir` (created), not to the machine's shared /tmp.
pub fn mariadb_install(my: &User, datadir: &Path, tmpdir: &Path) {
    mariadb_install_with(my, datadir, tmpdir, &[]);
}

/// [`mariadb_install`] with extra server options (e.g. `--innodb-undo-tablespaces=2`).
pub fn mariadb_install_with(my: &User, datadir: &Path, tmpdir: &Path, extra: &[&str]) {
    mkdir_owned(datadir, Some(my));
    mkdir_owned(tmpdir, Some(my));
    let (ok, out, err) = run(Command::new(need("mariadb-install-db"))
        .env_clear()
        .env("PATH", PATH)
        .env("TMPDIR", tmpdir)
        .arg("--no-defaults")
        .arg(format!("--user={}", my.name))
        .arg(format!("--datadir={}", datadir.display()))
        .arg(format!("--tmpdir={}", tmpdir.display()))
        .args([
            "--auth-root-authentication-method=socket",
            "--skip-test-db",
            "--skip-name-resolve",
        ])
        .args(extra));
    assert!(ok, "mariadb-install-db failed: {out}\n{err}");
}

/// A running MariaDB server.
pub struct MariaDb {
    pub datadir: PathBuf,
    pub sock: PathBuf,
    pub log: PathBuf,
    proc: Proc,
    _running: Running,
}

/// Root's `~/.my.cnf` is read by every mariadb client run as root (the hooks), after its
/// `--defaults-extra-file`, so its `user`, `password` and `socket` win: while a test has
/// one installed ([`RootMyCnf`]), no other test's server may run, or that test's hooks
/// would log in to the wrong server. Counted here: servers running, and whether a test has
/// root's option file to itself.
struct Servers {
    running: usize,
    my_cnf_taken: bool,
}

static SERVERS: Mutex<Servers> = Mutex::new(Servers {
    running: 0,
    my_cnf_taken: false,
});
static SERVERS_CHANGED: Condvar = Condvar::new();

/// One running server, counted in [`SERVERS`] (waits while another test has root's
/// `~/.my.cnf`).
struct Running;

impl Running {
    fn start() -> Running {
        let mut s = SERVERS.lock().unwrap_or_else(|e| e.into_inner());
        while s.my_cnf_taken {
            s = SERVERS_CHANGED.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.running += 1;
        Running
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        SERVERS.lock().unwrap_or_else(|e| e.into_inner()).running -= 1;
        SERVERS_CHANGED.notify_all();
    }
}

/// Root's `~/.my.cnf` with `text`, for a test whose one server is already running: waits
/// until no other test has a server, and keeps others from starting one until drop. An
/// existing file is moved aside and put back on drop.
pub struct RootMyCnf {
    path: PathBuf,
    backup: Option<PathBuf>,
}

impl RootMyCnf {
    pub fn install(text: &str) -> RootMyCnf {
        let mut s = SERVERS.lock().unwrap_or_else(|e| e.into_inner());
        while s.my_cnf_taken || s.running > 1 {
            s = SERVERS_CHANGED.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.my_cnf_taken = true;
        drop(s);
        let path = PathBuf::from("/root/.my.cnf");
        let backup = path.exists().then(|| {
            let b = PathBuf::from("/root/.my.cnf.quiesce-test-backup");
            std::fs::rename(&path, &b).unwrap();
            b
        });
        let cnf = RootMyCnf { path, backup };
        std::fs::write(&cnf.path, text).unwrap();
        std::fs::set_permissions(&cnf.path, std::fs::Permissions::from_mode(0o600)).unwrap();
        cnf
    }
}

impl Drop for RootMyCnf {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(b) = &self.backup {
            let _ = std::fs::rename(b, &self.path);
        }
        SERVERS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .my_cnf_taken = false;
        SERVERS_CHANGED.notify_all();
    }
}

impl MariaDb {
    /// Start `mariadbd` as mysql on `datadir`, socket, pid file and temporary files in
    /// `rundir` (created), error log at `log`, binary log on (`binlog.*` in the datadir),
    /// durable commits.
    pub fn start(my: &User, datadir: &Path, rundir: &Path, log: &Path) -> Result<MariaDb, String> {
        MariaDb::start_with(my, datadir, rundir, log, &[])
    }

    /// [`MariaDb::start`] with extra server options.
    pub fn start_with(
        my: &User,
        datadir: &Path,
        rundir: &Path,
        log: &Path,
        extra: &[&str],
    ) -> Result<MariaDb, String> {
        let running = Running::start();
        mkdir_owned(rundir, Some(my));
        let logf = log_file(log, my);
        let sock = rundir.join("sock");
        let mut cmd = my.command(need("mariadbd"));
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", datadir.display()))
            .arg(format!("--socket={}", sock.display()))
            .arg(format!("--pid-file={}", rundir.join("pid").display()))
            .arg(format!("--tmpdir={}", rundir.display()))
            .arg(format!("--log-error={}", logf.display()))
            .args([
                "--skip-networking",
                "--log-bin=binlog",
                "--server-id=1",
                "--sync-binlog=1",
                "--innodb-flush-log-at-trx-commit=1",
                "--innodb-buffer-pool-size=32M",
                "--skip-name-resolve",
                // No silent repair on open: a MyISAM table left open in a copy must show.
                "--myisam-recover-options=OFF",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let proc = Proc::spawn(
            "mariadbd",
            cmd,
            rustix::process::Signal::TERM,
            Duration::from_secs(60),
        );
        let mut server = MariaDb {
            datadir: datadir.to_path_buf(),
            sock,
            log: logf,
            proc,
            _running: running,
        };
        let ready = wait_until("mariadbd start", Duration::from_secs(90), || {
            if let Some(st) = server.proc.exited() {
                return Err(format!("mariadbd exited ({st})"));
            }
            Ok(server.try_sql("SELECT 1").ok())
        });
        match ready {
            Ok(_) => Ok(server),
            Err(e) => {
                server.proc.stop();
                Err(format!("{e}\n--- log ---\n{}", server.log_text()))
            }
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The client as root (unix_socket authentication), batch mode, no column names.
    pub fn client(&self) -> Command {
        let mut c = Command::new(need("mariadb"));
        c.env_clear()
            .env("PATH", PATH)
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.sock.display()))
            .args(["-u", "root", "--batch", "--skip-column-names"]);
        c
    }

    pub fn try_sql(&self, sql: &str) -> Result<String, String> {
        let (ok, out, err) = run(self.client().arg("-e").arg(sql));
        if ok {
            Ok(out.trim().to_string())
        } else {
            Err(err)
        }
    }

    pub fn sql(&self, sql: &str) -> String {
        self.try_sql(sql)
            .unwrap_or_else(|e| panic!("mariadb {sql}: {e}"))
    }

    /// The hook's account: RELOAD (FTWRL) and BINLOG MONITOR (SHOW MASTER STATUS).
    pub fn create_quiesce_user(&self) {
        self.sql(&format!(
            "CREATE USER quiesce@localhost IDENTIFIED BY '{MARIADB_QUIESCE_PASSWORD}'; \
             GRANT RELOAD, BINLOG MONITOR ON *.* TO quiesce@localhost"
        ));
    }

    /// Contents of a root-only option file for the hook (`--defaults-extra-file`).
    pub fn quiesce_option_file(&self) -> String {
        format!(
            "[client]\nuser=quiesce\npassword={MARIADB_QUIESCE_PASSWORD}\nsocket={}\n",
            self.sock.display()
        )
    }

    /// Connections of the hook's account still open.
    pub fn quiesce_sessions(&self) -> Vec<String> {
        self.sql(
            "SELECT CONCAT(id, ' ', command, ' ', COALESCE(state, ''), ' ', COALESCE(info, '')) \
             FROM information_schema.processlist WHERE user = 'quiesce'",
        )
        .lines()
        .map(str::to_string)
        .collect()
    }

    /// Stop (normal shutdown) and wait. Also done on drop.
    pub fn stop(&mut self) {
        self.proc.stop();
    }
}

/// A writer that inserts ids 1, 2, 3, ... into `w.log` (InnoDB), then the same id into
/// `w.mlog` (MyISAM: not transactional, so only FLUSH TABLES closes it cleanly), autocommit,
/// through one client session, and records when each id was acknowledged (the client prints
/// it only after both INSERTs returned). Stops on drop.
pub struct MariaWriter {
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<(u64, SystemTime)>>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl MariaWriter {
    /// `w.log` and `w.mlog` must exist (see the database tests' setup).
    pub fn start(server: &MariaDb) -> MariaWriter {
        let mut cmd = server.client();
        cmd.arg("--unbuffered")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut proc = Proc::spawn(
            "mariadb writer",
            cmd,
            rustix::process::Signal::TERM,
            Duration::from_secs(5),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let (s, a) = (stop.clone(), acks.clone());
        let thread = std::thread::spawn(move || {
            let mut stdin = proc.stdin().unwrap();
            let mut stdout = BufReader::new(proc.stdout().unwrap());
            let mut id = 0u64;
            let result = loop {
                if s.load(Ordering::SeqCst) {
                    break Ok(());
                }
                id += 1;
                let stmt = format!(
                    "INSERT INTO w.log (id, at, payload) VALUES ({id}, NOW(6), REPEAT('x', 150));\n\
                     INSERT INTO w.mlog (id) VALUES ({id});\nSELECT {id};\n"
                );
                if let Err(e) = stdin.write_all(stmt.as_bytes()) {
                    break Err(format!("writer: {e}"));
                }
                let mut line = String::new();
                match stdout.read_line(&mut line) {
                    Ok(0) => break Err("writer: client exited".to_string()),
                    Err(e) => break Err(format!("writer: {e}")),
                    Ok(_) => {}
                }
                if line.trim() != id.to_string() {
                    break Err(format!("writer: expected ack {id}, got {line:?}"));
                }
                a.lock().unwrap().push((id, SystemTime::now()));
            };
            drop(stdin);
            proc.stop();
            result
        });
        MariaWriter {
            stop,
            acks,
            thread: Some(thread),
        }
    }

    /// Highest id acknowledged so far.
    pub fn last_acked(&self) -> u64 {
        self.acks.lock().unwrap().last().map(|a| a.0).unwrap_or(0)
    }

    /// Highest id acknowledged strictly before `t`.
    pub fn last_acked_before(&self, t: SystemTime) -> u64 {
        let acks = self.acks.lock().unwrap();
        acks.iter()
            .rev()
            .find(|(_, at)| *at < t)
            .map(|a| a.0)
            .unwrap_or(0)
    }

    /// Stop and return the writer's result (an error if the client failed).
    pub fn finish(mut self) -> Result<u64, String> {
        self.stop.store(true, Ordering::SeqCst);
        let r = self.thread.take().unwrap().join().unwrap();
        r.map(|_| self.last_acked())
    }
}

impl Drop for MariaWriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // The thread ends at its next acknowledgement, or when the server goes away (the
        // client then exits); do not wait forever for a server that is stuck.
        if let Some(t) = self.thread.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

// ---- images ---------------------------------------------------------------------------------

/// An image file (a snapshot copy) attached read-write to a fresh loop device and mounted;
/// unmounted and detached on drop. The copy is ours, so recovery may write to it.
pub struct Attached {
    pub device: String,
    pub mount_point: PathBuf,
    image: PathBuf,
}

impl Attached {
    pub fn new(image: &Path, mount_point: &Path) -> Attached {
        let image = std::fs::canonicalize(image).unwrap();
        let device = sh("losetup", &["-f", "--show", image.to_str().unwrap()])
            .trim()
            .to_string();
        let a = Attached {
            device,
            mount_point: mount_point.to_path_buf(),
            image,
        };
        std::fs::create_dir_all(mount_point).unwrap();
        sh("mount", &[&a.device, mount_point.to_str().unwrap()]);
        a
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let mounted = std::fs::read_to_string("/proc/self/mountinfo")
            .map(|s| {
                s.lines()
                    .any(|l| l.split(' ').nth(4) == self.mount_point.to_str())
            })
            .unwrap_or(false);
        if mounted {
            let _ = Command::new("umount").arg(&self.mount_point).status();
        }
        crate::support::detach_loop(&self.device, &self.image);
    }
}

/// `e2fsck -fn` of an ext4 image: Ok if clean (no journal to recover, no errors).
pub fn e2fsck_clean(image: &Path) -> Result<(), String> {
    let (ok, out, err) = run(Command::new("e2fsck").arg("-fn").arg(image));
    if ok {
        Ok(())
    } else {
        Err(format!("{out}\n{err}"))
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
