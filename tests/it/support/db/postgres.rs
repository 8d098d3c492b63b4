//! PostgreSQL servers: initdb, start as the postgres user on a unix socket of the test,
//! the hook's role, pgbench load and its invariant.

use super::*;

/// The password of the `quiesce` database role in every test server; the hooks read it from
/// a root-only passfile, never from argv or the environment.
pub const PG_QUIESCE_PASSWORD: &str = "quiesce-test-secret";

/// The hook's root-only passfile for the `quiesce` role, `private/pgpass`.
pub fn quiesce_passfile(private: &Scratch) -> PathBuf {
    private.file(
        "pgpass",
        &format!("*:*:*:quiesce:{PG_QUIESCE_PASSWORD}\n"),
        0o600,
    )
}

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
    /// A new server for the hook tests: `data` initdb'd (WAL in `waldir` if given), started
    /// with its socket and log in `open`, with the hook's `quiesce` role.
    pub fn fresh(pg: &User, data: &Path, waldir: Option<&Path>, open: &OpenDir) -> Postgres {
        pg_initdb(pg, data, waldir);
        let server = Postgres::start(
            pg,
            data,
            &open.path().join("sock"),
            &open.path().join("pg.log"),
        )
        .unwrap();
        server.create_quiesce_role();
        server
    }

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
