//! What both built-in database verifiers need: the data directory found in the view (and
//! refused when it leads outside), a private run directory owned by the database's user,
//! the throwaway server's start as that user in its own process group, waiting for it, and
//! its stop.

use super::leftovers::Leftovers;
use super::{map_into_views, View};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Is `p` (resolved) inside one of the views?
pub fn inside(p: &Path, views: &[View]) -> bool {
    views
        .iter()
        .any(|v| std::fs::canonicalize(&v.path).is_ok_and(|root| p.starts_with(root)))
}

/// The live data directory `original` inside the views, resolved, with its owner. Refused
/// when it is on no snapshotted volume, leads outside the views, or is owned by root.
pub fn data_in_view(original: &Path, views: &[View]) -> Result<(PathBuf, u32, u32), String> {
    let mapped = map_into_views(original, views).ok_or_else(|| {
        format!(
            "{} is on no snapshotted subvolume of this run",
            original.display()
        )
    })?;
    let data = std::fs::canonicalize(&mapped).map_err(|e| format!("{}: {e}", mapped.display()))?;
    if !inside(&data, views) {
        return Err(format!(
            "{} leads outside the snapshot to {}",
            mapped.display(),
            data.display()
        ));
    }
    let md = std::fs::metadata(&data).map_err(|e| format!("{}: {e}", data.display()))?;
    if md.uid() == 0 {
        return Err(format!(
            "{} is owned by root; the database never runs as root",
            data.display()
        ));
    }
    Ok((data, md.uid(), md.gid()))
}

/// A private directory (mode 0700, owned by the database's user) for the socket, pid file
/// and log of the throwaway server; recorded before it is made.
pub fn run_dir(
    verify_id: &str,
    tag: &str,
    uid: u32,
    gid: u32,
    record: &mut Leftovers,
) -> Result<PathBuf, String> {
    let run = std::env::temp_dir().join(format!("quiesce-verify-{verify_id}-{tag}"));
    record.add_dir(&run);
    std::fs::create_dir(&run)
        .and_then(|_| std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)))
        .and_then(|_| std::os::unix::fs::chown(&run, Some(uid), Some(gid)))
        .and_then(|_| write_owned(&run.join("server.log"), "", uid, gid))
        .map_err(|e| format!("cannot prepare {}: {e}", run.display()))?;
    Ok(run)
}

/// Write a file and give it to uid:gid.
pub fn write_owned(p: &Path, text: &str, uid: u32, gid: u32) -> std::io::Result<()> {
    std::fs::write(p, text)?;
    std::os::unix::fs::chown(p, Some(uid), Some(gid))
}

/// Start the server as uid:gid in its own process group, output to `run/server.log`;
/// recorded in the leftovers before anything else happens.
pub fn spawn(
    mut cmd: Command,
    run: &Path,
    uid: u32,
    gid: u32,
    record: &mut Leftovers,
) -> Result<Child, String> {
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(run.join("server.log"))
        .map_err(|e| format!("cannot open the server log: {e}"))?;
    let out = log
        .try_clone()
        .map_err(|e| format!("cannot open the server log: {e}"))?;
    cmd.env_clear()
        .env("PATH", PATH)
        .env("LC_ALL", "C")
        .current_dir("/")
        .uid(uid)
        .gid(gid)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(log);
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the server: {e}"))?;
    record.add_group(child.id() as i32);
    Ok(child)
}

/// The last lines of the server's log (for the failure message).
pub fn log_tail(run: &Path, log: &str) -> String {
    let text = std::fs::read_to_string(run.join(log)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

/// Wait until `ready` succeeds (crash recovery done), the server exits, or the deadline.
pub fn wait_ready(
    child: &mut Child,
    deadline: Instant,
    mut ready: impl FnMut() -> bool,
    tail: impl Fn() -> String,
) -> Result<(), String> {
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Err(format!(
                "the server exited during recovery ({st}):\n{}",
                tail()
            ));
        }
        if ready() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("not ready before the verify timeout:\n{}", tail()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// [`wait_ready`] as the verify's first check, named `NAME start`: the server recovered and
/// accepts connections, or why not (with its log tail from `run/server.log`).
pub fn start_check(
    name: &str,
    child: &mut Child,
    deadline: Instant,
    ready: impl FnMut() -> bool,
    run: &Path,
    since: Instant,
) -> super::Check {
    let label = format!("{name} start");
    match wait_ready(child, deadline, ready, || log_tail(run, "server.log")) {
        Ok(()) => super::check(
            &label,
            true,
            "recovered and accepting connections".into(),
            since,
        ),
        Err(e) => super::check(&label, false, e, since),
    }
}

/// Stop the throwaway server: `first` to the leader, SIGKILL to its group after 10 s (and
/// always, for anything left in the group), then reap it.
pub fn stop(child: &mut Child, first: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32);
    if let Some(p) = pid {
        let _ = rustix::process::kill_process(p, first);
    }
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Some(p) = pid {
        let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
    }
    let _ = child.wait();
}

/// Run a client command to completion, killing its process group at the deadline.
/// Returns (success, stdout + stderr).
pub fn run_client(mut cmd: Command, deadline: Instant) -> Result<(bool, String, String), String> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| e.to_string())?;
    let pgid = child.id() as i32;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = done.clone();
    let watchdog = std::thread::spawn(move || {
        while !flag.load(std::sync::atomic::Ordering::SeqCst) {
            if Instant::now() >= deadline {
                if let Some(p) = rustix::process::Pid::from_raw(pgid) {
                    let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let out = child.wait_with_output();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = watchdog.join();
    let o = out.map_err(|e| e.to_string())?;
    Ok((
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        format!("{}", String::from_utf8_lossy(&o.stderr)) + &status_note(&o.status),
    ))
}

fn status_note(st: &std::process::ExitStatus) -> String {
    if st.success() {
        String::new()
    } else {
        format!(" ({st})")
    }
}
