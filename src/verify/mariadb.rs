//! The built-in MariaDB / MySQL verifier: a throwaway `mariadbd` on the view, then
//! `CHECK TABLE` of every base table with automatic repair off, and the user's query.
//!
//! The server starts with `--no-defaults` (the machine's option files name the original's
//! datadir, socket and port), as the data directory's owner, in its own process group, with
//! socket, pid file and temporary files in a private directory, no TCP listener, no grant
//! checks (only the private socket reaches it), `--myisam-recover-options=OFF` and
//! `--aria-recover-options=OFF` (else a damaged MyISAM/Aria table is repaired silently when
//! first opened, and the check says `OK`), and the original's binary log name when given
//! (InnoDB recovery asks it which prepared transactions committed). Symlinks in the data
//! directory (tables with `DATA DIRECTORY`, `.isl` files) leading outside the view refuse
//! the verification before anything starts.

use super::leftovers::Leftovers;
use super::server::{self, inside};
use super::{check, Check, View};
use crate::config::MariaVerifyConfig;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn program(names: &[&str]) -> Option<PathBuf> {
    names.iter().find_map(|n| {
        server::PATH
            .split(':')
            .map(|d| Path::new(d).join(n))
            .find(|p| p.is_file())
    })
}

/// Every symlink and `.isl` file (InnoDB `DATA DIRECTORY`) in the data directory and its
/// database directories must resolve inside the views.
fn check_layout(data: &Path, views: &[View]) -> Result<(), String> {
    let mut dirs = vec![data.to_path_buf()];
    if let Ok(rd) = std::fs::read_dir(data) {
        dirs.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let target = if p.extension().is_some_and(|x| x == "isl") {
                std::fs::read_to_string(&p)
                    .ok()
                    .map(|s| PathBuf::from(s.trim()))
            } else if std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
                Some(p.clone())
            } else {
                None
            };
            let Some(target) = target else { continue };
            let resolved = std::fs::canonicalize(&target).unwrap_or(target.clone());
            if !inside(&resolved, views) {
                return Err(format!(
                    "{} leads to {}, outside the snapshot: that is live data; refusing to \
                     start a server that would open it",
                    p.display(),
                    resolved.display()
                ));
            }
        }
    }
    Ok(())
}

/// Every check of the MariaDB verifier, in order; stops at the first failure.
pub fn verify(
    cfg: &MariaVerifyConfig,
    views: &[View],
    verify_id: &str,
    deadline: Instant,
    record: &mut Leftovers,
) -> Vec<Check> {
    let t = Instant::now();
    let fail = |name: &str, msg: String| vec![check(name, false, msg, t)];
    let (data, uid, gid) = match server::data_in_view(&cfg.data, views) {
        Ok(d) => d,
        Err(e) => return fail("mariadb layout", e),
    };
    if let Err(e) = check_layout(&data, views) {
        return fail("mariadb layout", e);
    }
    let (Some(mariadbd), Some(client)) = (
        program(&["mariadbd", "mysqld"]),
        program(&["mariadb", "mysql"]),
    ) else {
        return fail(
            "mariadb start",
            "mariadbd or its client is not installed".into(),
        );
    };
    let run = match server::run_dir(verify_id, "mariadb", uid, gid, record) {
        Ok(r) => r,
        Err(e) => return fail("mariadb start", e),
    };
    let sock = run.join("sock");
    let mut cmd = Command::new(&mariadbd);
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--socket={}", sock.display()))
        .arg(format!("--pid-file={}", run.join("pid").display()))
        .arg(format!("--tmpdir={}", run.display()))
        .arg(format!("--log-error={}", run.join("server.log").display()))
        .args([
            "--skip-networking",
            "--skip-grant-tables",
            "--skip-slave-start",
            "--myisam-recover-options=OFF",
            "--aria-recover-options=OFF",
            "--innodb-buffer-pool-size=64M",
            "--skip-name-resolve",
        ]);
    match &cfg.log_bin {
        Some(name) => cmd.arg(format!("--log-bin={name}")).arg("--server-id=1"),
        None => cmd.arg("--skip-log-bin"),
    };
    let mut child = match server::spawn(cmd, &run, uid, gid, record) {
        Ok(c) => c,
        Err(e) => return fail("mariadb start", e),
    };
    let sql = |q: &str| -> Result<String, String> {
        let mut c = Command::new(&client);
        c.env_clear()
            .env("PATH", server::PATH)
            .arg("--no-defaults")
            .arg(format!("--socket={}", sock.display()))
            .args(["-u", "root", "--batch", "--skip-column-names", "-e", q]);
        match server::run_client(c, deadline)? {
            (true, out, _) => Ok(out.trim().to_string()),
            (false, _, err) => Err(err.trim().to_string()),
        }
    };
    let mut checks = Vec::new();
    checks.push(server::start_check(
        "mariadb",
        &mut child,
        deadline,
        || sql("SELECT 1").is_ok(),
        &run,
        t,
    ));
    if checks.iter().all(|c| c.ok) {
        checks.push(check_tables(&sql));
    }
    if checks.iter().all(|c| c.ok) {
        if let Some(q) = &cfg.query {
            let t = Instant::now();
            checks.push(match sql(q) {
                Ok(v) if v == "1" || v.eq_ignore_ascii_case("true") => {
                    check("mariadb query", true, "returned true".into(), t)
                }
                Ok(v) => check("mariadb query", false, format!("returned {v:?}, not 1"), t),
                Err(e) => check("mariadb query", false, e, t),
            });
        }
    }
    server::stop(&mut child, rustix::process::Signal::KILL);
    checks
}

/// `CHECK TABLE` of every base table (never `REPAIR`): any error, any warning (a MyISAM
/// table "not closed properly") or a final status other than OK fails it.
fn check_tables(sql: &dyn Fn(&str) -> Result<String, String>) -> Check {
    let t = Instant::now();
    let list = match sql(
        "SELECT CONCAT('`', REPLACE(table_schema, '`', '``'), '`.`', \
         REPLACE(table_name, '`', '``'), '`') FROM information_schema.tables \
         WHERE table_type = 'BASE TABLE' AND table_schema NOT IN \
         ('information_schema', 'performance_schema', 'sys')",
    ) {
        Ok(l) => l,
        Err(e) => return check("CHECK TABLE", false, e, t),
    };
    let tables: Vec<&str> = list.lines().filter(|l| !l.is_empty()).collect();
    let mut bad = Vec::new();
    for chunk in tables.chunks(50) {
        let out = match sql(&format!("CHECK TABLE {}", chunk.join(", "))) {
            Ok(o) => o,
            Err(e) => return check("CHECK TABLE", false, e, t),
        };
        for row in out.lines() {
            let f: Vec<&str> = row.split('\t').collect();
            if f.len() < 4 {
                continue;
            }
            let (table, kind, text) = (f[0], f[2], f[3]);
            let ok = match kind {
                "status" => text == "OK" || text == "Table is already up to date",
                "note" | "info" => true,
                _ => false,
            };
            if !ok {
                bad.push(format!("{table}: {kind}: {text}"));
            }
        }
    }
    if bad.is_empty() {
        check(
            "CHECK TABLE",
            true,
            format!("{} tables checked, all OK", tables.len()),
            t,
        )
    } else {
        check("CHECK TABLE", false, bad.join("\n"), t)
    }
}
