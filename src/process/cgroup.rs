//! One cgroup v2 per started process tree, so that "the whole tree" really is the whole
//! tree: a descendant that called `setsid` (a daemon) leaves the process group but never its
//! cgroup. The tree is killed with `cgroup.kill` (Linux 5.14+), else by SIGKILL to every
//! member listed in `cgroup.procs`.
//!
//! The cgroup2 hierarchy is found in `/proc/self/mountinfo` (a real server mounts it at
//! `/sys/fs/cgroup`; hybrid layouts at `/sys/fs/cgroup/unified`), and each tree's cgroup is
//! created below quiesce's own (`/proc/self/cgroup`, line `0::PATH`). Where that is not
//! possible (no cgroup2, no permission), [`Cgroup::create`] returns `None` and the process
//! machinery falls back to process groups plus the `/proc` parent chains of the leader.

use rustix::fs::{Mode, OFlags};
use rustix::process::{Pid, Signal};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// A cgroup holding one process tree; removed on drop once empty.
#[derive(Debug)]
pub struct Cgroup {
    dir: PathBuf,
    /// `cgroup.procs`, open for writing: the child writes "0" to it before exec.
    procs: OwnedFd,
}

static BASE: OnceLock<Option<PathBuf>> = OnceLock::new();
static NEXT: AtomicU64 = AtomicU64::new(0);

/// The cgroup2 mount point in mountinfo text (the field after the optional fields' `-`).
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// Our own cgroup2 path from `/proc/self/cgroup` text (`0::/PATH`).
pub fn own_cgroup(text: &str) -> Option<PathBuf> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| PathBuf::from(p.trim().trim_start_matches('/')))
}

fn base() -> Option<&'static Path> {
    BASE.get_or_init(|| {
        let mount = cgroup2_mount(&std::fs::read_to_string("/proc/self/mountinfo").ok()?)?;
        let own = own_cgroup(&std::fs::read_to_string("/proc/self/cgroup").ok()?)?;
        let base = mount.join(own);
        let usable = base.join("cgroup.procs").exists();
        if usable {
            sweep(&base);
        }
        usable.then_some(base)
    })
    .as_deref()
}

impl Cgroup {
    /// A fresh, empty cgroup below quiesce's own, or `None` when cgroup2 is not usable here.
    pub fn create() -> Option<Cgroup> {
        let base = base()?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("quiesce-{}-{n}", std::process::id()));
        std::fs::create_dir(&dir).ok()?;
        match rustix::fs::open(
            dir.join("cgroup.procs"),
            OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(procs) => Some(Cgroup { dir, procs }),
            Err(_) => {
                let _ = std::fs::remove_dir(&dir);
                None
            }
        }
    }

    /// The descriptor the child writes "0" to (moving itself in) before exec.
    pub fn procs_fd(&self) -> &OwnedFd {
        &self.procs
    }

    /// Pids in the cgroup now.
    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Send `sig` to every member; SIGKILL goes through `cgroup.kill` where it exists (no
    /// member can fork away from it).
    pub fn signal(&self, sig: Signal) {
        if sig == Signal::KILL && std::fs::write(self.dir.join("cgroup.kill"), "1").is_ok() {
            return;
        }
        for pid in self.pids() {
            if let Some(pid) = Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, sig);
            }
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Fails while a member is still exiting: then a thread retries for a while. One left
        // behind by an unkillable member is swept by the next start (see `sweep`).
        if std::fs::remove_dir(&self.dir).is_ok() {
            return;
        }
        let dir = self.dir.clone();
        let _ = std::thread::Builder::new()
            .name("cgroup-rmdir".into())
            .spawn(move || {
                for _ in 0..200 {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    if std::fs::remove_dir(&dir).is_ok() || !dir.exists() {
                        return;
                    }
                }
            });
    }
}

/// Remove empty tree cgroups left by quiesce processes that are gone.
fn sweep(base: &Path) {
    let Ok(dir) = std::fs::read_dir(base) else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("quiesce-"))
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_hybrid_and_unified_layouts() {
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
            35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
            41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified =
            "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            cgroup2_mount(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(cgroup2_mount("garbage\n"), None);
        assert_eq!(
            own_cgroup("1:cpu:/\n0::/system.slice/quiesce.service\n"),
            Some(PathBuf::from("system.slice/quiesce.service"))
        );
        assert_eq!(own_cgroup("0::/\n"), Some(PathBuf::from("")));
    }
}
