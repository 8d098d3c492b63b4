//! What a verification must undo, written to `state_dir/verify.json` before it is made:
//! btrfs views (subvolumes), throwaway servers (process groups, with their start times so a
//! reused pid is never killed) and private run directories. [`clean`] undoes what a killed
//! verification left behind; it runs under the operation lock at the start of every
//! `quiesce verify` and `quiesce recover`.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The record file's name under the state directory.
pub const FILE: &str = "verify.json";

#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    subvolumes: Vec<PathBuf>,
    /// (process group leader pid, its start time in clock ticks since boot)
    groups: Vec<(i32, u64)>,
    dirs: Vec<PathBuf>,
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
        if std::fs::remove_dir_all(d).is_ok() {
            done.push(format!("removed {}", d.display()));
        }
    }
    done
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
