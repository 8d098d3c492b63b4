//! Shared test support: loop-backed filesystems that clean up after themselves, scratch
//! directories that pass the trust checks, and a harmless "is it frozen?" probe.
//!
//! Every guard here thaws, unmounts and detaches on drop, including during a panic, so a
//! failing test never leaves a frozen filesystem, a mount or a loop device behind.
#![allow(dead_code)]

pub mod db;
pub mod etcd;
pub mod platform;
pub mod reports;
pub mod run;

#[allow(unused_imports)]
pub use run::{code_names, codes, quiesce, Quiesce, Run, Running};

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Does this process run as root? Most tests need it (see [`require_root`]).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Ends the calling test early when it does not run as root, saying so on stderr past the
/// harness's output capture (so a plain `cargo test` shows it): loop devices, FIFREEZE,
/// root-owned scripts (the trust checks refuse any other owner) and servers run as other
/// users all need root. `require_root!()` names the common reason; `require_root!("...")`
/// another.
#[allow(unused_macros)]
macro_rules! require_root {
    () => {
        $crate::support::require_root!("loop devices and FIFREEZE")
    };
    ($why:literal) => {
        if !$crate::support::is_root() {
            $crate::support::skipped(concat!("needs root (", $why, ")"));
            return;
        }
    };
}
#[allow(unused_imports)]
pub(crate) use require_root;

/// Say on stderr, uncaptured, that the current test is skipped and why.
pub fn skipped(why: &str) {
    use std::io::Write;
    // The harness names each test's thread after the test; a binary with its own `main`
    // (harness = false) is named after itself.
    let name = match std::thread::current().name() {
        Some(n) if n != "main" => n.to_string(),
        _ => std::env::args()
            .next()
            .and_then(|a| Some(Path::new(&a).file_name()?.to_string_lossy().into_owned()))
            // cargo's `chaos-0123abcd…` is the test `chaos`.
            .map(|n| match n.rsplit_once('-') {
                Some((stem, hash)) if hash.bytes().all(|b| b.is_ascii_hexdigit()) => stem.into(),
                _ => n,
            })
            .unwrap_or_else(|| "this test".to_string()),
    };
    let _ = writeln!(std::io::stderr(), "{name}: skipped: {why}");
}

/// Run a command, panicking with its output if it fails.
pub fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh directory under [`scratch_base`], owned by root, mode 0700, removed on drop.
/// Its parents are root-owned and not group/other writable, so scripts in it pass the trust
/// checks.
pub struct Scratch {
    pub path: PathBuf,
}

/// Where scratch directories live: `/var/lib/quiesce-tests` (or `$QUIESCE_TEST_SCRATCH`),
/// root-owned 0755. Not under the checkout: a checkout below a world-writable directory
/// (a clone in /tmp) would make every script fail the trust checks, as it should. An
/// ordinary user (who runs only the tests that need no root) gets `quiesce-tests` in cargo's
/// temporary directory of the build.
pub fn scratch_base() -> PathBuf {
    let base = std::env::var_os("QUIESCE_TEST_SCRATCH")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            if is_root() {
                PathBuf::from("/var/lib/quiesce-tests")
            } else {
                PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("quiesce-tests")
            }
        });
    std::fs::create_dir_all(&base).unwrap();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
    base
}

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let base = scratch_base();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = base.join(format!("{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
        Scratch { path }
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.path.join(p)
    }

    /// Write a file with the given mode.
    pub fn file(&self, name: &str, content: &str, mode: u32) -> PathBuf {
        let p = self.path.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    /// Write an executable script (mode 0700).
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        self.file(name, body, 0o700)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Thaw a mount point, ignoring "not frozen".
pub fn thaw(mount_point: &Path) {
    let _ = Command::new("fsfreeze")
        .arg("-u")
        .arg(mount_point)
        .stderr(Stdio::null())
        .status();
}

/// A filesystem of the given type on a fresh loop device, mounted under a scratch dir.
/// On drop: thaw, unmount, detach, remove the image.
pub struct LoopFs {
    pub image: PathBuf,
    pub device: String,
    pub mount_point: PathBuf,
    pub fstype: String,
    _dir: Option<Scratch>,
}

impl LoopFs {
    /// Create `size_mb` MiB of `fstype` ("ext4", "xfs", "btrfs") with its image in a new
    /// scratch directory.
    pub fn new(fstype: &str, size_mb: u64) -> LoopFs {
        let dir = Scratch::new(&format!("loop-{fstype}"));
        let image = dir.join("image");
        let mnt = dir.join("mnt");
        let mut fs = LoopFs::create(fstype, size_mb, &image, &mnt);
        fs._dir = Some(dir);
        fs
    }

    /// Create the image at `image` (which may live on another test filesystem) and mount it
    /// at `mount_point`.
    pub fn create(fstype: &str, size_mb: u64, image: &Path, mount_point: &Path) -> LoopFs {
        let f = std::fs::File::create(image).unwrap();
        f.set_len(size_mb * 1024 * 1024).unwrap();
        drop(f);
        let device = sh("losetup", &["-f", "--show", image.to_str().unwrap()])
            .trim()
            .to_string();
        // From here on, Drop cleans up even if mkfs or mount fails.
        let fs = LoopFs {
            image: image.to_path_buf(),
            device: device.clone(),
            mount_point: mount_point.to_path_buf(),
            fstype: fstype.to_string(),
            _dir: None,
        };
        match fstype {
            "ext4" => sh("mkfs.ext4", &["-q", "-F", &device]),
            "xfs" => sh("mkfs.xfs", &["-q", "-f", &device]),
            "btrfs" => sh("mkfs.btrfs", &["-q", "-f", &device]),
            other => panic!("unsupported fstype {other}"),
        };
        std::fs::create_dir_all(mount_point).unwrap();
        sh("mount", &[&device, mount_point.to_str().unwrap()]);
        fs
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mount_point.join(rel)
    }

    /// `major:minor` of the mounted filesystem as mountinfo shows it.
    pub fn dev_string(&self) -> String {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mp = self.mount_point.to_str().unwrap();
        for line in info.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            if f.len() > 4 && f[4] == mp {
                return f[2].to_string();
            }
        }
        panic!("{mp} not in mountinfo");
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        thaw(&self.mount_point);
        let mounted = std::fs::read_to_string("/proc/self/mountinfo")
            .map(|s| {
                s.lines()
                    .any(|l| l.split(' ').nth(4) == Some(self.mount_point.to_str().unwrap_or("")))
            })
            .unwrap_or(false);
        if mounted {
            // A process of the test may still be letting go of a file: retry while busy.
            for _ in 0..50 {
                let ok = Command::new("umount")
                    .arg(&self.mount_point)
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if ok {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        detach_loop(&self.device, &self.image);
        let _ = std::fs::remove_file(&self.image);
    }
}

/// Detach `device` if it is still backed by `image`: retried while busy (a moment after
/// umount), and never again once detached, because the number may already belong to
/// another test.
pub fn detach_loop(device: &str, image: &Path) {
    let name = device.trim_start_matches("/dev/");
    let ours = || {
        std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file"))
            .map(|f| f.trim().trim_end_matches(" (deleted)") == image.to_str().unwrap_or(""))
            .unwrap_or(false)
    };
    for _ in 0..50 {
        if !ours() {
            break;
        }
        let detached = Command::new("losetup")
            .args(["-d", device])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if detached {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A bind mount, unmounted on drop.
pub struct BindMount {
    pub target: PathBuf,
}

impl BindMount {
    pub fn new(source: &Path, target: &Path) -> BindMount {
        std::fs::create_dir_all(target).unwrap();
        sh(
            "mount",
            &["--bind", source.to_str().unwrap(), target.to_str().unwrap()],
        );
        BindMount {
            target: target.to_path_buf(),
        }
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg(&self.target)
            .stderr(Stdio::null())
            .status();
    }
}

/// Is the filesystem at `mount_point` writable right now? Writes and fsyncs a file from a
/// child process with a deadline. If the write hangs (frozen), the filesystem is thawed by
/// hand so the probe never wedges the test, and `false` is returned.
pub fn writable_within(mount_point: &Path, deadline: Duration) -> bool {
    let probe = mount_point.join(format!(".probe-{}", std::process::id()));
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("echo probe > \"$1\" && sync \"$1\" && rm -f \"$1\"")
        .arg("probe")
        .arg(&probe)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st.success();
        }
        if start.elapsed() > deadline {
            thaw(mount_point);
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Path of the quiesce binary under test.
pub fn quiesce_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_quiesce"))
}

/// The library's guard program (`freeze::guard::set_program`) is one setting for the whole
/// process, and tests of several areas freeze in-process at once in this binary.
static GUARD_PROGRAM: RwLock<()> = RwLock::new(());

/// For a test that freezes in-process through the library: the guard is the quiesce binary
/// (the test harness cannot be re-executed as one). Hold the returned guard for the whole
/// test: no other test swaps the program meanwhile.
pub fn library_guard() -> RwLockReadGuard<'static, ()> {
    let held = GUARD_PROGRAM.read().unwrap_or_else(|e| e.into_inner());
    quiesce::freeze::guard::set_program(quiesce_bin());
    held
}

/// Another guard program (a test of a broken guard) until drop, while no other test of this
/// process freezes in-process; the quiesce binary is put back on drop.
pub struct OtherGuardProgram(#[allow(dead_code)] RwLockWriteGuard<'static, ()>);

impl OtherGuardProgram {
    pub fn set(program: &Path) -> OtherGuardProgram {
        let held = GUARD_PROGRAM.write().unwrap_or_else(|e| e.into_inner());
        quiesce::freeze::guard::set_program(program.to_path_buf());
        OtherGuardProgram(held)
    }
}

impl Drop for OtherGuardProgram {
    fn drop(&mut self) {
        quiesce::freeze::guard::set_program(quiesce_bin());
    }
}

/// A write+fsync probe that, unlike [`writable_within`], never thaws anything: it shows
/// that a filesystem is frozen (the probe does not finish) without disturbing the freeze
/// under test. A probe stuck on a frozen filesystem finishes once somebody thaws it (the
/// code under test, or a LoopFs guard on drop); it is reaped in the background then.
pub struct WriteProbe {
    child: Option<std::process::Child>,
    done: Option<bool>,
}

impl WriteProbe {
    /// Start writing and fsyncing a small file in `dir`.
    pub fn start(dir: &Path) -> WriteProbe {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let probe = dir.join(format!(".wprobe-{}-{n}", std::process::id()));
        let child = Command::new("sh")
            .arg("-c")
            .arg("echo probe > \"$1\" && sync \"$1\" && rm -f \"$1\"")
            .arg("probe")
            .arg(&probe)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        WriteProbe {
            child: Some(child),
            done: None,
        }
    }

    /// `Some(success)` if the probe finished within `deadline`, `None` if it is still
    /// blocked (the filesystem is frozen).
    pub fn finished_within(&mut self, deadline: Duration) -> Option<bool> {
        let start = Instant::now();
        loop {
            let Some(child) = self.child.as_mut() else {
                return self.done;
            };
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                self.done = Some(st.success());
                return self.done;
            }
            if start.elapsed() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for WriteProbe {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            std::thread::spawn(move || {
                let _ = child.wait();
            });
        }
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `program` run as uid/gid 65534 (nobody) with no supplementary groups.
pub fn as_nobody(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(program);
    cmd
}

/// A socket every user can reach until drop: mode 0666, and its directories up to the scratch
/// base traversable by others (their modes are put back on drop). Only the server's peer
/// credential check can refuse a caller then.
pub struct OpenToOthers {
    dirs: Vec<(PathBuf, u32)>,
}

impl OpenToOthers {
    pub fn new(socket: &Path) -> OpenToOthers {
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666)).unwrap();
        let mut dirs = Vec::new();
        let mut p = socket.parent().unwrap().to_path_buf();
        while p.starts_with(scratch_base()) {
            let m = std::fs::metadata(&p).unwrap().permissions().mode();
            dirs.push((p.clone(), m));
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m | 0o001)).unwrap();
            p = p.parent().unwrap().to_path_buf();
        }
        OpenToOthers { dirs }
    }
}

impl Drop for OpenToOthers {
    fn drop(&mut self) {
        for (p, m) in &self.dirs {
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(*m));
        }
    }
}

/// A `quiesce serve` process, stopped (SIGTERM, then SIGKILL) and reaped on drop.
pub struct ServeProcess {
    pub child: std::process::Child,
    pub socket: PathBuf,
}

impl ServeProcess {
    /// Start `quiesce serve --config <config>` and wait until `socket` accepts connections.
    pub fn start(config: &Path, socket: &Path) -> ServeProcess {
        let child = Command::new(quiesce_bin())
            .args(["serve", "--config", config.to_str().unwrap()])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start quiesce serve");
        let server = ServeProcess {
            child,
            socket: socket.to_path_buf(),
        };
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "quiesce serve did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        server
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Send a signal to the server.
    pub fn signal(&self, sig: &str) {
        sh("kill", &[&format!("-{sig}"), &self.pid().to_string()]);
    }

    /// Wait for the server to exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.pid().to_string()])
                .status();
            if self.wait_exit(Duration::from_secs(5)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// Put `mb` MB of unflushed data on every filesystem (overwriting `dirty.bin`, so the images
/// do not grow), in parallel, without fsync. For the freeze benches.
pub fn dirty_all(mounts: &[PathBuf], mb: usize) {
    use std::io::Write;
    std::thread::scope(|s| {
        for m in mounts {
            s.spawn(move || {
                let chunk = vec![0xa5u8; 1 << 20];
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(false)
                    .open(m.join("dirty.bin"))
                    .unwrap();
                for _ in 0..mb {
                    f.write_all(&chunk).unwrap();
                }
            });
        }
    });
}

/// Let the system flush and quiet down between bench measurements.
pub fn settle() {
    sh("sync", &[]);
    std::thread::sleep(Duration::from_millis(500));
}

/// The median of `v` (0 when empty).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
