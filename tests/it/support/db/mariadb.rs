//! MariaDB servers: install, start as the mysql user on a unix socket of the test, the
//! hook's account, root's `~/.my.cnf` while a test needs it, and a writer under load.

use super::*;

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
    /// A new server for the hook tests: installed in `datadir`, started with its socket,
    /// temporary files and log in `open`, with the hook's `quiesce` account.
    pub fn fresh(my: &User, datadir: &Path, open: &OpenDir) -> MariaDb {
        mariadb_install(my, datadir, &open.path().join("install-tmp"));
        let server = MariaDb::start(
            my,
            datadir,
            &open.path().join("run"),
            &open.path().join("mariadb.log"),
        )
        .unwrap();
        server.create_quiesce_user();
        server
    }

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
