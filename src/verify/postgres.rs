//! The built-in PostgreSQL verifier: a throwaway server on the view, then `pg_amcheck`
//! (amcheck's heap and B-tree checks of every database) and the user's query.
//!
//! Never touching the original:
//! - the data directory is found in the view, and every symlink PostgreSQL follows
//!   (`pg_wal`, `pg_tblspc/*`) is resolved: inside a view it is kept; into a volume of the
//!   same snapshot run it is re-pointed at that volume's view; anywhere else (the two-volume
//!   layout whose WAL was not snapshotted: the link leads to the *live* WAL) the
//!   verification is refused before anything starts;
//! - the server runs as the data directory's owner, in its own process group, with its
//!   socket in a private directory (mode 0700), no TCP listener, its own port number,
//!   `archive_mode = off`, and a `pg_hba.conf` of its own (trust, on that private socket);
//! - it is stopped (SIGQUIT, then SIGKILL to the group) on every path, and recorded in the
//!   leftovers record before it starts.

use super::leftovers::Leftovers;
use super::{check, map_into_views, Check, View};
use crate::config::PgVerifyConfig;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A PostgreSQL program: the newest `/usr/lib/postgresql/*/bin`, else PATH.
pub fn bin(name: &str) -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let v = e.file_name().to_str()?.parse().ok()?;
                    Some((v, e.path().join("bin").join(name)))
                })
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions
        .into_iter()
        .rev()
        .map(|(_, p)| p)
        .chain(PATH.split(':').map(|d| Path::new(d).join(name)))
        .find(|p| p.is_file())
}

fn inside(p: &Path, views: &[View]) -> bool {
    views
        .iter()
        .any(|v| std::fs::canonicalize(&v.path).is_ok_and(|root| p.starts_with(root)))
}

/// Resolve one symlink of the data directory: keep it (inside a view), re-point it (into a
/// snapshotted volume), or refuse (anywhere else: live data).
fn fix_link(link: &Path, views: &[View]) -> Result<(), String> {
    let Ok(target) = std::fs::read_link(link) else {
        return Ok(()); // not a symlink
    };
    let base = link.parent().unwrap_or(Path::new("/"));
    let absolute = base.join(&target);
    let resolved = std::fs::canonicalize(&absolute).unwrap_or(absolute.clone());
    if inside(&resolved, views) {
        return Ok(());
    }
    match map_into_views(&resolved, views) {
        Some(mapped) if mapped.exists() => {
            std::fs::remove_file(link)
                .and_then(|_| std::os::unix::fs::symlink(&mapped, link))
                .map_err(|e| format!("cannot re-point {}: {e}", link.display()))?;
            Ok(())
        }
        _ => Err(format!(
            "{} leads to {}, outside the snapshot: that is live data (snapshot that volume \
             in the same run); refusing to start a server that would write there",
            link.file_name().unwrap_or_default().to_string_lossy(),
            resolved.display()
        )),
    }
}

/// Every check of the PostgreSQL verifier, in order; stops at the first failure.
pub fn verify(
    cfg: &PgVerifyConfig,
    views: &[View],
    verify_id: &str,
    deadline: Instant,
    record: &mut Leftovers,
) -> Vec<Check> {
    let t = Instant::now();
    let layout = |msg: String| vec![check("postgres layout", false, msg, t)];
    let Some(data) = map_into_views(&cfg.data, views) else {
        return layout(format!(
            "{} is on no snapshotted subvolume of this run",
            cfg.data.display()
        ));
    };
    let data = match std::fs::canonicalize(&data) {
        Ok(d) if inside(&d, views) => d,
        Ok(d) => {
            return layout(format!(
                "{} leads outside the snapshot to {}",
                data.display(),
                d.display()
            ))
        }
        Err(e) => return layout(format!("{}: {e}", data.display())),
    };
    if !data.join("PG_VERSION").is_file() {
        return layout(format!(
            "{} is not a PostgreSQL data directory",
            cfg.data.display()
        ));
    }
    let mut links = vec![data.join("pg_wal")];
    if let Ok(rd) = std::fs::read_dir(data.join("pg_tblspc")) {
        links.extend(rd.flatten().map(|e| e.path()));
    }
    for l in &links {
        if let Err(e) = fix_link(l, views) {
            return layout(e);
        }
    }
    let md = match std::fs::metadata(&data) {
        Ok(m) => m,
        Err(e) => return layout(format!("{}: {e}", data.display())),
    };
    if md.uid() == 0 {
        return layout(format!(
            "{} is owned by root; PostgreSQL never runs as root",
            data.display()
        ));
    }
    let (uid, gid) = (md.uid(), md.gid());
    let (Some(postgres), Some(psql)) = (bin("postgres"), bin("psql")) else {
        return vec![check(
            "postgres start",
            false,
            "postgres or psql is not installed".into(),
            t,
        )];
    };

    // A private run directory for the socket, the log and the hba file.
    let run = std::env::temp_dir().join(format!("quiesce-verify-{verify_id}"));
    record.add_dir(&run);
    let prepared = std::fs::create_dir(&run)
        .and_then(|_| std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)))
        .and_then(|_| std::os::unix::fs::chown(&run, Some(uid), Some(gid)))
        .and_then(|_| std::fs::write(run.join("pg_hba.conf"), "local all all trust\n"))
        .and_then(|_| std::os::unix::fs::chown(run.join("pg_hba.conf"), Some(uid), Some(gid)))
        .and_then(|_| std::fs::File::create(run.join("server.log")))
        .and_then(|_| std::os::unix::fs::chown(run.join("server.log"), Some(uid), Some(gid)));
    if let Err(e) = prepared {
        return vec![check(
            "postgres start",
            false,
            format!("cannot prepare {}: {e}", run.display()),
            t,
        )];
    }
    let _ = std::fs::remove_file(data.join("postmaster.pid"));
    if !data.join("postgresql.conf").exists() {
        let _ = std::fs::write(data.join("postgresql.conf"), "");
        let _ = std::os::unix::fs::chown(data.join("postgresql.conf"), Some(uid), Some(gid));
    }
    let port = 40000 + (std::process::id() % 20000);
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(run.join("server.log"));
    let Ok(log) = log else {
        return vec![check(
            "postgres start",
            false,
            "cannot open the server log".into(),
            t,
        )];
    };
    let mut cmd = Command::new(&postgres);
    cmd.arg("-D")
        .arg(&data)
        .arg("-k")
        .arg(&run)
        .arg("-p")
        .arg(port.to_string())
        .args([
            "-c",
            "listen_addresses=",
            "-c",
            "archive_mode=off",
            "-c",
            "restore_command=",
        ])
        .args([
            "-c",
            "shared_preload_libraries=",
            "-c",
            "logging_collector=off",
        ])
        .args([
            "-c",
            "unix_socket_permissions=0700",
            "-c",
            "max_wal_senders=0",
            "-c",
            "wal_level=minimal",
        ])
        .arg("-c")
        .arg(format!("hba_file={}", run.join("pg_hba.conf").display()))
        .env_clear()
        .env("PATH", PATH)
        .env("LC_ALL", "C")
        .current_dir("/")
        .uid(uid)
        .gid(gid)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(
            log.try_clone()
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
        )
        .stderr(log);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return vec![check(
                "postgres start",
                false,
                format!("cannot start postgres: {e}"),
                t,
            )]
        }
    };
    record.add_group(child.id() as i32);
    let sql = |db: &str, q: &str| -> Result<String, String> {
        let out = Command::new(&psql)
            .env_clear()
            .env("PATH", PATH)
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&run)
            .arg("-p")
            .arg(port.to_string())
            .args(["-U", &cfg.user, "-d", db, "-c", q])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    };
    let log_tail = || {
        let text = std::fs::read_to_string(run.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    };

    let mut checks = Vec::new();
    // Start and recovery: the server accepts connections once crash recovery is done.
    let started = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break Err(format!(
                "postgres exited during recovery ({st}):\n{}",
                log_tail()
            ));
        }
        if sql(&cfg.database, "SELECT 1").is_ok() {
            break Ok(());
        }
        if Instant::now() >= deadline {
            break Err(format!(
                "not ready before the verify timeout:\n{}",
                log_tail()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    match started {
        Ok(()) => checks.push(check(
            "postgres start",
            true,
            "recovered and accepting connections".into(),
            t,
        )),
        Err(e) => checks.push(check("postgres start", false, e, t)),
    }
    if checks.iter().all(|c| c.ok) {
        checks.push(amcheck(&run, port, cfg, &sql, deadline));
    }
    if checks.iter().all(|c| c.ok) {
        if let Some(q) = &cfg.query {
            let t = Instant::now();
            checks.push(match sql(&cfg.database, q) {
                Ok(v) if v == "t" || v == "true" => {
                    check("postgres query", true, "returned true".into(), t)
                }
                Ok(v) => check(
                    "postgres query",
                    false,
                    format!("returned {v:?}, not true"),
                    t,
                ),
                Err(e) => check("postgres query", false, e, t),
            });
        }
    }
    stop(&mut child);
    checks
}

/// `pg_amcheck --all` where installed, else the amcheck functions over every relation of
/// every database.
fn amcheck(
    run: &Path,
    port: u32,
    cfg: &PgVerifyConfig,
    sql: &dyn Fn(&str, &str) -> Result<String, String>,
    deadline: Instant,
) -> Check {
    let t = Instant::now();
    if let Some(pg_amcheck) = bin("pg_amcheck") {
        let child = Command::new(pg_amcheck)
            .env_clear()
            .env("PATH", PATH)
            .arg("-h")
            .arg(run)
            .arg("-p")
            .arg(port.to_string())
            .args(["-U", &cfg.user, "--all", "--install-missing"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => return check("pg_amcheck", false, e.to_string(), t),
        };
        let pgid = child.id() as i32;
        let watchdog_done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = watchdog_done.clone();
        let watchdog = std::thread::spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                if Instant::now() >= deadline {
                    if let Some(p) = rustix::process::Pid::from_raw(pgid) {
                        let _ =
                            rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
                    }
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let out = child.wait_with_output();
        watchdog_done.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = watchdog.join();
        return match out {
            Ok(o) if o.status.success() => check(
                "pg_amcheck",
                true,
                "no corruption found in any database".into(),
                t,
            ),
            Ok(o) => {
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
                let text: String = text.lines().take(20).collect::<Vec<_>>().join("\n");
                check(
                    "pg_amcheck",
                    false,
                    format!("{} ({})", text.trim(), o.status),
                    t,
                )
            }
            Err(e) => check("pg_amcheck", false, e.to_string(), t),
        };
    }
    let dbs = match sql(
        &cfg.database,
        "SELECT datname FROM pg_database WHERE datallowconn",
    ) {
        Ok(d) => d,
        Err(e) => return check("amcheck", false, e, t),
    };
    for db in dbs.lines().map(str::trim).filter(|d| !d.is_empty()) {
        let q = "CREATE EXTENSION IF NOT EXISTS amcheck; \
                 SELECT c.oid::regclass || ' block ' || v.blkno || ': ' || v.msg \
                 FROM pg_class c, verify_heapam(c.oid) v \
                 WHERE c.relkind IN ('r','m','t') AND c.relpersistence <> 't'; \
                 SELECT coalesce(string_agg('', ''), '') FROM (SELECT bt_index_check(c.oid) \
                 FROM pg_class c JOIN pg_am a ON a.oid = c.relam \
                 WHERE c.relkind = 'i' AND a.amname = 'btree' AND c.relpersistence <> 't') x";
        match sql(db, q) {
            Ok(out) if out.trim().is_empty() => {}
            Ok(out) => return check("amcheck", false, format!("database {db}: {out}"), t),
            Err(e) => return check("amcheck", false, format!("database {db}: {e}"), t),
        }
    }
    check(
        "amcheck",
        true,
        "no corruption found (verify_heapam)".into(),
        t,
    )
}

/// Immediate shutdown (SIGQUIT) of the throwaway server, SIGKILL to its group after 10 s.
fn stop(child: &mut std::process::Child) {
    let pgid = rustix::process::Pid::from_raw(child.id() as i32);
    if let Some(p) = pgid {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::QUIT);
    }
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Some(p) = pgid {
        let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
    }
    let _ = child.wait();
}
