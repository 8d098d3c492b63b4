//! What a verification must undo, written to `state_dir/verify.json` before it is made:
//! btrfs views (subvolumes), throwaway servers (process groups, with their start times so a
//! reused pid is never killed), mounts of image views, loop devices (with their backing
//! file, so a reused loop device is never detached), the user's view teardown commands and
//! private run directories. [`clean`] undoes what a killed verification left behind; it runs
//! under the operation lock at the start of every operation (`quiesce snapshot`, a served
//! prepare), of `quiesce serve`, `quiesce verify` and `quiesce recover`.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The record file's name under the state directory.
pub const FILE: &str = "verify.json";

/// Environment variables given to a command, in order.
type Env = Vec<(String, String)>;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    subvolumes: Vec<PathBuf>,
    /// (process group leader pid, its start time in clock ticks since boot)
    groups: Vec<(i32, u64)>,
    dirs: Vec<PathBuf>,
    /// (mount point, device): unmounted only while that device is mounted there.
    #[serde(default)]
    mounts: Vec<(PathBuf, String)>,
    /// (loop device, backing file): detached only while it still backs that file.
    #[serde(default)]
    loops: Vec<(String, PathBuf)>,
    /// (argv, environment): the user's teardown of a view the `verify` command made.
    #[serde(default)]
    teardowns: Vec<(Vec<String>, Env)>,
}

/// The live record of one verification.
pub struct Leftovers {
    path: PathBuf,
    rec: Record,
}

impl Leftovers {
    pub fn new(state_dir: &Path) -> Leftovers {
        let l = Leftovers {
            path: state_dir.join(FILE),
            rec: Record::default(),
        };
        l.save();
        l
    }

    fn save(&self) {
        let text = serde_json::to_vec(&self.rec).unwrap_or_default();
        if let Err(e) = crate::files::write_atomic(&self.path, &text, 0o600) {
            tracing::error!(error = %e, path = %self.path.display(), "cannot write the verify record");
        }
    }

    pub fn add_subvolume(&mut self, p: &Path) {
        self.rec.subvolumes.push(p.to_path_buf());
        self.save();
    }

    pub fn add_group(&mut self, pid: i32) {
        self.rec.groups.push((pid, start_time(pid).unwrap_or(0)));
        self.save();
    }

    pub fn add_dir(&mut self, p: &Path) {
        self.rec.dirs.push(p.to_path_buf());
        self.save();
    }

    pub fn add_mount(&mut self, mount_point: &Path, device: &str) {
        self.rec
            .mounts
            .push((mount_point.to_path_buf(), device.to_string()));
        self.save();
    }

    pub fn add_loop(&mut self, device: &str, backing: &Path) {
        self.rec
            .loops
            .push((device.to_string(), backing.to_path_buf()));
        self.save();
    }

    pub fn add_teardown(&mut self, argv: &[String], env: Vec<(String, String)>) {
        self.rec.teardowns.push((argv.to_vec(), env));
        self.save();
    }

    /// The environment of the last recorded teardown, once the view it removes is known.
    pub fn set_last_teardown_env(&mut self, env: Vec<(String, String)>) {
        if let Some(last) = self.rec.teardowns.last_mut() {
            last.1 = env;
            self.save();
        }
    }

    /// Undo everything recorded and remove the record.
    pub fn clean_all(&mut self) {
        undo(&self.rec);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Undo what a killed verification left (if anything) and remove its record. The caller
/// holds the operation lock, so the verification that wrote it is gone.
pub fn clean(state_dir: &Path) -> Vec<String> {
    let path = state_dir.join(FILE);
    let Ok(text) = std::fs::read(&path) else {
        return Vec::new();
    };
    let rec: Record = serde_json::from_slice(&text).unwrap_or_default();
    let done = undo(&rec);
    let _ = std::fs::remove_file(&path);
    for d in &done {
        tracing::warn!("cleaned after an interrupted verification: {d}");
    }
    done
}

fn undo(rec: &Record) -> Vec<String> {
    let mut done = Vec::new();
    for &(pid, start) in &rec.groups {
        if pid > 0 && start_time(pid) == Some(start) {
            if let Some(p) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
            }
            for _ in 0..100 {
                if start_time(pid) != Some(start) || is_zombie(pid) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            done.push(format!("killed server process group {pid}"));
        }
    }
    for (mp, dev) in rec.mounts.iter().rev() {
        if is_mounted(mp, dev) {
            match quiet("umount", &[mp.as_os_str()]) {
                Ok(()) => done.push(format!("unmounted view {}", mp.display())),
                Err(e) => tracing::error!("cannot unmount {}: {e}", mp.display()),
            }
        }
    }
    for (dev, backing) in rec.loops.iter().rev() {
        if backs(dev, backing) {
            match quiet("losetup", &["-d".as_ref(), dev.as_ref()]) {
                Ok(()) => done.push(format!("detached {dev} ({})", backing.display())),
                Err(e) => tracing::error!("cannot detach {dev}: {e}"),
            }
        }
    }
    for (argv, env) in rec.teardowns.iter().rev() {
        match teardown(argv, env) {
            Ok(()) => done.push(format!("ran the view teardown `{}`", argv.join(" "))),
            Err(e) => tracing::error!("view teardown `{}`: {e}", argv.join(" ")),
        }
    }
    for s in &rec.subvolumes {
        let (Some(dir), Some(name)) = (s.parent(), s.file_name().and_then(|n| n.to_str())) else {
            continue;
        };
        if std::fs::symlink_metadata(s).is_ok() {
            match crate::snapshot::btrfs::delete_subvolume(dir, name) {
                Ok(()) => done.push(format!("deleted view {}", s.display())),
                Err(e) => tracing::error!("{e}"),
            }
        }
    }
    for d in &rec.dirs {
        if is_mount_point(d) {
            tracing::error!("{} is still a mount point; left in place", d.display());
            continue;
        }
        if std::fs::remove_dir_all(d).is_ok() {
            done.push(format!("removed {}", d.display()));
        }
    }
    done
}

/// Run a system tool quietly; its stderr in the error.
pub fn quiet(program: &str, args: &[&std::ffi::OsStr]) -> Result<(), String> {
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Is `device` mounted at `mount_point` (in this mount namespace)?
fn is_mounted(mount_point: &Path, device: &str) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let mp = mount_point.to_string_lossy();
    info.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let source = f.iter().position(|x| *x == "-").and_then(|i| f.get(i + 2));
        f.get(4).is_some_and(|m| *m == mp) && source.is_some_and(|s| *s == device)
    })
}

fn is_mount_point(dir: &Path) -> bool {
    let mp = dir.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .is_ok_and(|info| info.lines().any(|l| l.split(' ').nth(4) == Some(&*mp)))
}

/// Does the loop device `device` still have `backing` as its backing file?
pub fn backs(device: &str, backing: &Path) -> bool {
    let Some(name) = Path::new(device).file_name() else {
        return false;
    };
    let sys = Path::new("/sys/block").join(name).join("loop/backing_file");
    std::fs::read_to_string(sys).is_ok_and(|b| {
        let canon = std::fs::canonicalize(backing).unwrap_or(backing.to_path_buf());
        Path::new(b.trim()) == canon
    })
}

/// The user's teardown command, with the environment it was given when the view was made
/// (hook process rules: argv, own process group, killed after two minutes).
pub fn teardown(argv: &[String], env: &[(String, String)]) -> Result<(), String> {
    use crate::process::Launch;
    let mut launch = Launch::argv(argv);
    for (k, v) in env {
        launch = launch.env(k, v);
    }
    let mut p = launch.spawn().map_err(|e| format!("cannot run it: {e}"))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    match p.run(deadline, std::time::Duration::from_secs(2)) {
        crate::process::AttemptEnd::Exited { code: 0 } => Ok(()),
        other => Err(format!(
            "{}: {}",
            crate::process::describe_end(&other),
            p.stderr_tail().to_string_lossy().trim()
        )),
    }
}

/// Field 22 of /proc/PID/stat (start time), parsed after the command name's `)`.
pub fn start_time(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 2..].starts_with('Z')))
        .unwrap_or(true)
}
