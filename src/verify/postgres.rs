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
use super::server::{self, inside};
use super::{check, map_into_views, Check, View};
use crate::config::PgVerifyConfig;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

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
        .chain(server::PATH.split(':').map(|d| Path::new(d).join(name)))
        .find(|p| p.is_file())
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

/// The data directory inside the views (with its owner), checked to be PostgreSQL's, its
/// `pg_wal` and tablespace links pointed into the views.
fn data_in_views(cfg: &PgVerifyConfig, views: &[View]) -> Result<(PathBuf, u32, u32), String> {
    let (data, uid, gid) = server::data_in_view(&cfg.data, views)?;
    if !data.join("PG_VERSION").is_file() {
        return Err(format!(
            "{} is not a PostgreSQL data directory",
            cfg.data.display()
        ));
    }
    let mut links = vec![data.join("pg_wal")];
    if let Ok(rd) = std::fs::read_dir(data.join("pg_tblspc")) {
        links.extend(rd.flatten().map(|e| e.path()));
    }
    for l in &links {
        fix_link(l, views)?;
    }
    Ok((data, uid, gid))
}

/// The throwaway server: its socket in `run` only, no archiving, no replication, nothing
/// preloaded.
fn server_command(postgres: &Path, data: &Path, run: &Path, port: u32) -> Command {
    let mut cmd = Command::new(postgres);
    cmd.arg("-D")
        .arg(data)
        .arg("-k")
        .arg(run)
        .arg("-p")
        .arg(port.to_string())
        .args(["-c", "listen_addresses=", "-c", "archive_mode=off"])
        .args(["-c", "restore_command=", "-c", "shared_preload_libraries="])
        .args([
            "-c",
            "logging_collector=off",
            "-c",
            "unix_socket_permissions=0700",
        ])
        .args(["-c", "max_wal_senders=0", "-c", "wal_level=minimal"])
        .arg("-c")
        .arg(format!("hba_file={}", run.join("pg_hba.conf").display()));
    cmd
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
    let fail = |name: &str, msg: String| vec![check(name, false, msg, t)];
    let (data, uid, gid) = match data_in_views(cfg, views) {
        Ok(d) => d,
        Err(e) => return fail("postgres layout", e),
    };
    let (Some(postgres), Some(psql)) = (bin("postgres"), bin("psql")) else {
        return fail("postgres start", "postgres or psql is not installed".into());
    };
    let run = match server::run_dir(verify_id, "pg", uid, gid, record) {
        Ok(r) => r,
        Err(e) => return fail("postgres start", e),
    };
    if let Err(e) = server::write_owned(&run.join("pg_hba.conf"), "local all all trust\n", uid, gid)
    {
        return fail("postgres start", e.to_string());
    }
    let _ = std::fs::remove_file(data.join("postmaster.pid"));
    if !data.join("postgresql.conf").exists() {
        let _ = server::write_owned(&data.join("postgresql.conf"), "", uid, gid);
    }
    let port = 40000 + (std::process::id() % 20000);
    let cmd = server_command(&postgres, &data, &run, port);
    let mut child = match server::spawn(cmd, &run, uid, gid, record) {
        Ok(c) => c,
        Err(e) => return fail("postgres start", e),
    };
    let sql = |db: &str, q: &str| -> Result<String, String> {
        let mut c = Command::new(&psql);
        c.env_clear()
            .env("PATH", server::PATH)
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&run)
            .arg("-p")
            .arg(port.to_string())
            .args(["-U", &cfg.user, "-d", db, "-c", q]);
        match server::run_client(c, deadline)? {
            (true, out, _) => Ok(out.trim().to_string()),
            (false, _, err) => Err(err.trim().to_string()),
        }
    };
    let mut checks = Vec::new();
    checks.push(server::start_check(
        "postgres",
        &mut child,
        deadline,
        || sql(&cfg.database, "SELECT 1").is_ok(),
        &run,
        t,
    ));
    if checks.iter().all(|c| c.ok) {
        checks.push(amcheck(&run, port, cfg, &sql, deadline));
    }
    if let Some(q) = cfg.query.as_deref().filter(|_| checks.iter().all(|c| c.ok)) {
        checks.push(query_check(q, &|q| sql(&cfg.database, q)));
    }
    server::stop(&mut child, rustix::process::Signal::QUIT);
    checks
}

/// The configured query must return true.
fn query_check(q: &str, sql: &dyn Fn(&str) -> Result<String, String>) -> Check {
    let t = Instant::now();
    match sql(q) {
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
    }
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
        let mut c = Command::new(pg_amcheck);
        c.env_clear()
            .env("PATH", server::PATH)
            .arg("-h")
            .arg(run)
            .arg("-p")
            .arg(port.to_string())
            .args(["-U", &cfg.user, "--all", "--install-missing"]);
        return match server::run_client(c, deadline) {
            Ok((true, _, _)) => check(
                "pg_amcheck",
                true,
                "no corruption found in any database".into(),
                t,
            ),
            Ok((false, out, err)) => {
                let text = format!("{out}{err}");
                let text: Vec<&str> = text.lines().take(20).collect();
                check("pg_amcheck", false, text.join("\n").trim().to_string(), t)
            }
            Err(e) => check("pg_amcheck", false, e, t),
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
        "no corruption found (verify_heapam, bt_index_check)".into(),
        t,
    )
}
