//! Broken holds, MariaDB and PostgreSQL.
//!
//! `*_hold_never_ready_*` and `*_killed_while_holding_*`: broken holds. The READY line
//! never comes (MariaDB: FTWRL blocked by another session's LOCK TABLES; PostgreSQL:
//! pg_backup_start's checkpoint blocked by a volume someone else left frozen):
//! Pre-ScriptTimeout, or for MariaDB the hook's own lock_wait_timeout
//! (Pre-ScriptExecutionFailed). The hook (MariaDB) or its psql (PostgreSQL) killed while
//! holding: HoldLost, consistency lowered to file-system. Afterwards the database takes
//! writes, no FTWRL, backup session or replication slot is left, nothing is frozen.

use super::*;

/// A client session holding `LOCK TABLES w.log WRITE` until dropped: FTWRL waits for it.
struct TableLock {
    _proc: Proc,
    _stdin: std::process::ChildStdin,
}

fn lock_table(server: &MariaDb) -> TableLock {
    let mut cmd = server.client();
    cmd.arg("--unbuffered")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut proc = Proc::spawn(
        "lock holder",
        cmd,
        rustix::process::Signal::TERM,
        Duration::from_secs(5),
    );
    let mut stdin = proc.stdin().unwrap();
    stdin
        .write_all(b"LOCK TABLES w.log WRITE;\nSELECT 'locked';\n")
        .unwrap();
    let mut line = String::new();
    BufReader::new(proc.stdout().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");
    TableLock {
        _proc: proc,
        _stdin: stdin,
    }
}

/// A snapshot provider that, before copying, SIGKILLs the processes whose command line
/// contains `mark` (and whose parent's does not, i.e. the top one) or whose name is `comm`
/// and command line contains `mark`; then waits a second so the hook sees it.
fn killing_snapshot_script(
    dir: &Scratch,
    snaps: &Path,
    image: &Path,
    mark: &str,
    comm: Option<&str>,
) -> PathBuf {
    let select = match comm {
        Some(c) => format!("[ \"$(cat /proc/$pid/comm)\" = {c} ]"),
        None => "! tr '\\0' ' ' < /proc/$ppid/cmdline | grep -qF -- \"$mark\"".to_string(),
    };
    let body = format!(
        "#!/bin/bash\nset -u\nmark='{mark}'\nkilled=\"\"\n\
         for d in /proc/[0-9]*; do\n\
           pid=${{d#/proc/}}\n\
           [ \"$pid\" = $$ ] && continue\n\
           tr '\\0' ' ' < $d/cmdline 2>/dev/null | grep -qF -- \"$mark\" || continue\n\
           ppid=$(awk '{{print $4}}' $d/stat 2>/dev/null) || continue\n\
           if {select}; then kill -KILL $pid && killed=\"$killed $pid\"; fi\n\
         done\n\
         [ -n \"$killed\" ] || {{ echo 'nothing to kill' >&2; exit 1; }}\n\
         echo \"killed$killed\" >&2\nsleep 1\n\
         dest={snaps}/\"${{QUIESCE_OPERATION_ID:-$(date +%s%N)}}\"\nmkdir \"$dest\"\n\
         cp --reflink=auto --sparse=always {image} \"$dest/data.img\"\necho \"$dest\"\n",
        mark = mark,
        snaps = p(snaps),
        image = p(image),
    );
    dir.script("snapshot-killing", &body)
}

#[test]
fn mariadb_hold_never_ready_times_out_and_database_stays_writable() {
    support::require_root!("database servers run as their own users, on loop filesystems");
    let _slot = SLOTS.take();
    let t0 = Instant::now();
    let m = mariadb_setup("db-my2");
    let snaps = m.private.join("snaps");
    std::fs::create_dir_all(&snaps).unwrap();
    let snap = snapshot_script(&m.private, &snaps, &[(&m.vol.image, "data.img")], &[]);

    // 1. The hook waits longer than quiesce allows: quiesce's pre timeout ends it
    //    (SIGTERM: the hook kills its own pending FTWRL from a second session).
    let config = write_config(
        &ConfigSpec {
            private: &m.private,
            freeze: Some(&[&m.vol.mount_point]),
            snapshot: &snap,
            hook_name: "mariadb",
            hook: Some(m.hook_argv(&["--lock-wait-timeout", "60"])),
            hold: true,
            hook_timeout: "3s",
        },
        "timeout.toml",
    );
    let lock = lock_table(&m.server);
    let run = quiesce_snapshot(&config);
    assert!(
        run.error_codes().contains(&ErrorCode::PreScriptTimeout),
        "{}",
        run.describe()
    );
    assert_eq!(
        run.consistency(),
        Consistency::FileSystem,
        "{}",
        run.describe()
    );
    assert_not_frozen(&[&m.vol.mount_point]);
    m.assert_no_hook_session();
    // With w.log still locked by the other session, a write elsewhere must go through: no
    // FLUSH TABLES WITH READ LOCK is pending or held.
    m.write_succeeds("w.other")
        .unwrap_or_else(|e| panic!("write blocked after the timeout: {e}"));
    drop(lock);
    m.write_succeeds("w.log")
        .unwrap_or_else(|e| panic!("write blocked: {e}"));
    eprintln!(
        "my2 READY never sent: {:?} after {} ms; database writable, no hook session",
        run.error_codes(),
        run.elapsed.as_millis()
    );

    // 2. Default lock_wait_timeout (from QUIESCE_DEADLINE): the hook gives up by itself
    //    before quiesce's timeout, and says why.
    let config = write_config(
        &ConfigSpec {
            private: &m.private,
            freeze: Some(&[&m.vol.mount_point]),
            snapshot: &snap,
            hook_name: "mariadb",
            hook: Some(m.hook_argv(&[])),
            hold: true,
            hook_timeout: "5s",
        },
        "selftimeout.toml",
    );
    let lock = lock_table(&m.server);
    let run = quiesce_snapshot(&config);
    assert!(
        run.error_codes()
            .contains(&ErrorCode::PreScriptExecutionFailed),
        "{}",
        run.describe()
    );
    assert!(
        run.stdout.contains("Lock wait timeout"),
        "{}",
        run.describe()
    );
    assert_eq!(
        run.consistency(),
        Consistency::FileSystem,
        "{}",
        run.describe()
    );
    assert_not_frozen(&[&m.vol.mount_point]);
    m.assert_no_hook_session();
    m.write_succeeds("w.other")
        .unwrap_or_else(|e| panic!("write blocked: {e}"));
    drop(lock);
    m.write_succeeds("w.log")
        .unwrap_or_else(|e| panic!("write blocked: {e}"));
    eprintln!(
        "my2 hook's own lock_wait_timeout: {:?} after {} ms; database writable",
        run.error_codes(),
        run.elapsed.as_millis()
    );
    eprintln!("my2 figures: total {}", secs(t0.elapsed()));
}

#[test]
fn mariadb_hold_killed_while_holding_is_hold_lost() {
    support::require_root!("database servers run as their own users, on loop filesystems");
    let _slot = SLOTS.take();
    let t0 = Instant::now();
    let m = mariadb_setup("db-my3");
    let snaps = m.private.join("snaps");
    std::fs::create_dir_all(&snaps).unwrap();
    // Kill the hook itself: the top bash process whose arguments name this test's --out-dir
    // (quiesce runs it as `/bin/bash /proc/self/fd/N ARGS`).
    let snap = killing_snapshot_script(&m.private, &snaps, &m.vol.image, p(&m.positions), None);
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
    let writer = MariaWriter::start(&m.server);
    std::thread::sleep(Duration::from_secs(1));
    let run = quiesce_snapshot(&config);
    assert!(
        run.error_codes().contains(&ErrorCode::HoldLost),
        "{}",
        run.describe()
    );
    assert_eq!(
        run.consistency(),
        Consistency::FileSystem,
        "{}",
        run.describe()
    );
    assert_eq!(run.status(), Status::Degraded, "{}", run.describe());
    assert_eq!(
        run.snapshot_ids().len(),
        1,
        "the snapshot (which kills the hook) failed: {}",
        run.describe()
    );
    assert_not_frozen(&[&m.vol.mount_point]);
    m.assert_no_hook_session();
    // The writer carries on.
    let acked = writer.last_acked();
    let deadline = Instant::now() + Duration::from_secs(5);
    while writer.last_acked() < acked + 10 {
        assert!(
            Instant::now() < deadline,
            "writes did not resume after the lost hold"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    writer.finish().expect("writer");
    m.write_succeeds("w.log")
        .unwrap_or_else(|e| panic!("write blocked: {e}"));
    eprintln!(
        "my3 hook killed while holding: {:?}, consistency {}; writes resumed",
        run.error_codes(),
        run.consistency().as_str()
    );
    eprintln!("my3 figures: total {}", secs(t0.elapsed()));
}

/// A PostgreSQL server on one ext4 loop volume with the hook's role, pgbench tables, a
/// passfile and the pg-backup-hold hook installed. Fields drop server first.
struct PgOne {
    server: Postgres,
    vol: LoopFs,
    open: OpenDir,
    private: Scratch,
    data: PathBuf,
    snaps: PathBuf,
    backups: PathBuf,
    passfile: PathBuf,
    hook: PathBuf,
}

fn pg_one_volume(tag: &str) -> PgOne {
    let pg = User::get("postgres");
    let open = OpenDir::new(tag);
    let private = Scratch::new(&format!("{tag}-priv"));
    let snaps = private.join("snaps");
    let backups = private.join("backups");
    std::fs::create_dir_all(&snaps).unwrap();
    std::fs::create_dir_all(&backups).unwrap();
    let vol = LoopFs::create(
        "ext4",
        256,
        &private.join("data.img"),
        &open.path().join("vol"),
    );
    let data = vol.path("pgdata");
    let server = Postgres::fresh(&pg, &data, None, &open);
    server.pgbench_init(1);
    let passfile = quiesce_passfile(&private);
    let hook = install_hook(&private, "pg-backup-hold");
    PgOne {
        server,
        vol,
        open,
        private,
        data,
        snaps,
        backups,
        passfile,
        hook,
    }
}

impl PgOne {
    fn hold_hook_argv(&self) -> Vec<String> {
        vec![
            s(&self.hook),
            "--out-dir".into(),
            s(&self.backups),
            "--conninfo".into(),
            self.server.quiesce_conninfo(),
            "--passfile".into(),
            s(&self.passfile),
            "--copy-wal-from".into(),
            s(&self.data.join("pg_wal")),
        ]
    }

    /// No hook session or replication slot left (polls: the server notices a closed
    /// connection when its backend next looks), then a write and a whole new backup work.
    fn assert_clean_and_writable(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = self.server.psql(
                "postgres",
                "SELECT (SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'quiesce%') \
                      + (SELECT count(*) FROM pg_replication_slots)",
            );
            if left == "0" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "hook session or slot left: {left}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.server.psql(
            "postgres",
            "CREATE TABLE IF NOT EXISTS after_broken_hold (x int); \
             INSERT INTO after_broken_hold VALUES (1)",
        );
        self.server.psql(
            "postgres",
            "SELECT pg_backup_start('after', true); SELECT lsn FROM pg_backup_stop(false)",
        );
    }
}

/// A filesystem frozen by the test itself (as a crashed tool or an operator may leave one),
/// thawed on drop.
struct FrozenByTest<'a>(&'a Path);

impl Drop for FrozenByTest<'_> {
    fn drop(&mut self) {
        support::thaw(self.0);
    }
}

#[test]
fn postgres_hold_never_ready_times_out_and_database_stays_writable() {
    support::require_root!("database servers run as their own users, on loop filesystems");
    let _slot = SLOTS.take();
    let t0 = Instant::now();
    let env = pg_one_volume("db-pg5");
    let snap = snapshot_script(
        &env.private,
        &env.snaps,
        &[(&env.vol.image, "data.img")],
        &[],
    );
    // pg_backup_start waits for an immediate checkpoint; with the data volume frozen (left
    // so by someone else: quiesce's own freeze is off here) the checkpoint cannot finish,
    // so READY never comes and quiesce's pre timeout ends the hook.
    let config = write_config(
        &ConfigSpec {
            private: &env.private,
            freeze: None,
            snapshot: &snap,
            hook_name: "postgres",
            hook: Some(env.hold_hook_argv()),
            hold: true,
            hook_timeout: "3s",
        },
        "quiesce.toml",
    );
    let frozen = FrozenByTest(&env.vol.mount_point);
    support::sh("fsfreeze", &["-f", p(&env.vol.mount_point)]);
    let run = quiesce_snapshot(&config);
    assert!(
        run.error_codes().contains(&ErrorCode::PreScriptTimeout),
        "{}",
        run.describe()
    );
    assert_eq!(run.consistency(), Consistency::Crash, "{}", run.describe());
    // The hook's process group is gone: no psql of this test's server is left.
    let sock = p(&env.server.sock).to_string();
    let leftover: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| {
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            (comm.trim() == "psql" && cmd.contains(&sock)).then_some(cmd)
        })
        .collect();
    assert!(leftover.is_empty(), "psql left running: {leftover:?}");
    drop(frozen);
    assert_not_frozen(&[&env.vol.mount_point]);
    assert!(!env.backups.join(run.operation_id()).exists());
    env.assert_clean_and_writable();

    // The same hook configured as a normal (not held) hook refuses to run: with stdin at
    // /dev/null its backup would end before the snapshot.
    let config = write_config(
        &ConfigSpec {
            private: &env.private,
            freeze: Some(&[&env.vol.mount_point]),
            snapshot: &snap,
            hook_name: "postgres",
            hook: Some(env.hold_hook_argv()),
            hold: false,
            hook_timeout: "10s",
        },
        "not-held.toml",
    );
    let misconfigured = quiesce_snapshot(&config);
    assert!(
        misconfigured
            .error_codes()
            .contains(&ErrorCode::PreScriptExecutionFailed)
            && misconfigured.stdout.contains("hold = true"),
        "{}",
        misconfigured.describe()
    );
    assert_eq!(misconfigured.consistency(), Consistency::FileSystem);
    eprintln!(
        "pg5 hold hook configured without hold: {:?}",
        misconfigured.error_codes()
    );
    eprintln!(
        "pg5 READY never sent (checkpoint blocked): {:?} after {} ms; database writable, no session left",
        run.error_codes(),
        run.elapsed.as_millis()
    );
    eprintln!("pg5 figures: total {}", secs(t0.elapsed()));
}

#[test]
fn postgres_hold_psql_killed_while_holding_is_hold_lost() {
    support::require_root!("database servers run as their own users, on loop filesystems");
    let _slot = SLOTS.take();
    let t0 = Instant::now();
    let mut env = pg_one_volume("db-pg4");
    // Kill the hook's psql (its command line names this test's socket directory).
    let snap = killing_snapshot_script(
        &env.private,
        &env.snaps,
        &env.vol.image,
        p(&env.server.sock),
        Some("psql"),
    );
    let config = write_config(
        &ConfigSpec {
            private: &env.private,
            freeze: Some(&[&env.vol.mount_point]),
            snapshot: &snap,
            hook_name: "postgres",
            hook: Some(env.hold_hook_argv()),
            hold: true,
            hook_timeout: "30s",
        },
        "quiesce.toml",
    );
    let mut load = env
        .server
        .pgbench_load(2, &env.open.path().join("pgbench.log"));
    std::thread::sleep(Duration::from_secs(1));
    let run = quiesce_snapshot(&config);
    assert!(
        run.error_codes().contains(&ErrorCode::HoldLost),
        "{}",
        run.describe()
    );
    assert_eq!(
        run.consistency(),
        Consistency::FileSystem,
        "{}",
        run.describe()
    );
    assert_eq!(run.status(), Status::Degraded, "{}", run.describe());
    assert!(
        run.stdout.contains("HOLD LOST"),
        "the hook did not say why: {}",
        run.describe()
    );
    assert_not_frozen(&[&env.vol.mount_point]);
    assert!(
        !env.backups.join(run.operation_id()).exists(),
        "a backup label was stored although pg_backup_stop never ran"
    );
    // No session, slot or backup left behind; pgbench goes on, writes and a new backup work.
    env.assert_clean_and_writable();
    let before = env
        .server
        .psql("bench", "SELECT count(*) FROM pgbench_history");
    std::thread::sleep(Duration::from_millis(500));
    let after = env
        .server
        .psql("bench", "SELECT count(*) FROM pgbench_history");
    assert_ne!(
        before, after,
        "pgbench makes no progress after the lost hold"
    );
    load.stop();
    env.server.stop();
    eprintln!(
        "pg4 psql killed while holding: {:?}, consistency {}; database writable, no backup left",
        run.error_codes(),
        run.consistency().as_str()
    );
    eprintln!("pg4 figures: total {}", secs(t0.elapsed()));
}
