//! The built-in MariaDB / MySQL verifier: a throwaway `mariadbd` on the view, then
//! `CHECK TABLE` of every base table with automatic repair off, and the user's query.
//!
//! The server starts with `--no-defaults` (the machine's option files name the original's
//! datadir, socket and port), as the data directory's owner, in its own process group, with
//! socket, pid file and temporary files in a private directory, no TCP listener, no grant
//! checks (only the private socket reaches it), `--myisam-recover-options=OFF` and
//! `--aria-recover-options=OFF` (else a damaged MyISAM/Aria table is repaired silently when
//! first opened, and the check says `OK`), the original's binary log name when given
//! (InnoDB recovery asks it which prepared transactions committed), and as many undo
//! tablespaces as the data directory has. Symlinks in the data directory (a redo log or undo
//! tablespaces on another volume, tables with `DATA DIRECTORY`, `.isl` files) that lead into
//! a volume snapshotted in the same run are re-pointed at its view; leading anywhere else,
//! they refuse the verification before anything starts.

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
/// database directories must lead inside the views. One that leads into a volume
/// snapshotted in the same run (a redo log or undo tablespace on a second volume, symlinked
/// from the data directory) is re-pointed at that volume's view, in the view; one that leads
/// anywhere else is live data, and the verification is refused before anything starts.
/// Returns what was re-pointed.
fn resolve_layout(data: &Path, views: &[View]) -> Result<Vec<String>, String> {
    let mut dirs = vec![data.to_path_buf()];
    if let Ok(rd) = std::fs::read_dir(data) {
        dirs.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    let mut moved = Vec::new();
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let isl = p.extension().is_some_and(|x| x == "isl");
            let target = if isl {
                std::fs::read_to_string(&p)
                    .ok()
                    .map(|s| PathBuf::from(s.trim()))
            } else if std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
                std::fs::read_link(&p).ok().map(|t| d.join(t))
            } else {
                None
            };
            let Some(target) = target else { continue };
            let resolved = std::fs::canonicalize(&target).unwrap_or(target.clone());
            if inside(&resolved, views) {
                continue;
            }
            let in_view = super::map_into_views(&target, views)
                .and_then(|m| std::fs::canonicalize(m).ok())
                .filter(|m| inside(m, views));
            let Some(in_view) = in_view else {
                return Err(format!(
                    "{} leads to {}, outside the snapshot: that is live data; refusing to \
                     start a server that would open it",
                    p.display(),
                    resolved.display()
                ));
            };
            repoint(&p, isl, &in_view)?;
            moved.push(format!("{} -> {}", p.display(), in_view.display()));
        }
    }
    Ok(moved)
}

/// Point the view's symlink (or `.isl` file) `p` at `to`, keeping its owner.
fn repoint(p: &Path, isl: bool, to: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let err = |e: std::io::Error| format!("cannot re-point {} into the view: {e}", p.display());
    let md = std::fs::symlink_metadata(p).map_err(err)?;
    std::fs::remove_file(p).map_err(err)?;
    if isl {
        std::fs::write(p, format!("{}\n", to.display())).map_err(err)?;
    } else {
        std::os::unix::fs::symlink(to, p).map_err(err)?;
    }
    std::os::unix::fs::lchown(p, Some(md.uid()), Some(md.gid())).map_err(err)
}

/// How many undo tablespaces (`undo001`, ...) the data directory has: the server must be
/// told, or it re-initialises them.
fn undo_tablespaces(data: &Path) -> usize {
    std::fs::read_dir(data).map_or(0, |rd| {
        rd.flatten()
            .filter(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n.len() == 7 && n.starts_with("undo") && n[4..].bytes().all(|b| b.is_ascii_digit())
            })
            .count()
    })
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
    let layout = match resolve_layout(&data, views) {
        Ok(moved) => moved,
        Err(e) => return fail("mariadb layout", e),
    };
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
    let cmd = server_command(&mariadbd, &data, &run, &sock, cfg.log_bin.as_deref());
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
    if !layout.is_empty() {
        checks.push(check(
            "mariadb layout",
            true,
            format!("re-pointed into the view: {}", layout.join(", ")),
            t,
        ));
    }
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
    if let Some(q) = cfg.query.as_deref().filter(|_| checks.iter().all(|c| c.ok)) {
        checks.push(query_check(q, &sql));
    }
    server::stop(&mut child, rustix::process::Signal::KILL);
    checks
}

/// The configured query must return true (`1`).
fn query_check(q: &str, sql: &dyn Fn(&str) -> Result<String, String>) -> Check {
    let t = Instant::now();
    match sql(q) {
        Ok(v) if v == "1" || v.eq_ignore_ascii_case("true") => {
            check("mariadb query", true, "returned true".into(), t)
        }
        Ok(v) => check("mariadb query", false, format!("returned {v:?}, not 1"), t),
        Err(e) => check("mariadb query", false, e, t),
    }
}

/// The throwaway `mariadbd` on the view's data directory, everything else in `run`.
fn server_command(
    mariadbd: &Path,
    data: &Path,
    run: &Path,
    sock: &Path,
    log_bin: Option<&str>,
) -> Command {
    let mut cmd = Command::new(mariadbd);
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
    let undo = undo_tablespaces(data);
    if undo > 0 {
        cmd.arg(format!("--innodb-undo-tablespaces={undo}"));
    }
    match log_bin {
        Some(name) => cmd.arg(format!("--log-bin={name}")).arg("--server-id=1"),
        None => cmd.arg("--skip-log-bin"),
    };
    cmd
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
