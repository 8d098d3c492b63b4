//! qemu-ga's own hook path, for real: Debian's `qemu-ga` in unix-listen mode with
//! `-F <root>/etc/qemu/fsfreeze-hook` (Debian's stock hook, copied under a scratch root where
//! `quiesce install --platform qemu-ga --root` put the bridge in `fsfreeze-hook.d/`) runs
//! `quiesce hook pre|post --platform qemu-ga` around its freeze of the test's loop
//! filesystem, driven by `guest-fsfreeze-freeze-list` naming only that filesystem.
//!
//! `guest-fsfreeze-thaw` thaws every filesystem qemu-ga sees frozen, so this binary holds
//! the only such test, behind one mutex, with one thaw call.

use crate::support;

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{LoopFs, Scratch, ServeProcess};

use crate::QGA_LOCK as QGA;

/// A running qemu-ga, killed and reaped on drop.
struct Qga {
    child: Child,
    socket: PathBuf,
}

impl Qga {
    fn start(dir: &Scratch, hook: &Path) -> Qga {
        let socket = dir.join("qga.sock");
        let state = dir.join("qga-state");
        std::fs::create_dir_all(&state).unwrap();
        let child = Command::new("qemu-ga")
            .arg("-m")
            .arg("unix-listen")
            .arg("-p")
            .arg(&socket)
            .arg("-t")
            .arg(&state)
            .arg("-f")
            .arg(dir.join("qga.pid"))
            .arg("-l")
            .arg(dir.join("qga.log"))
            .arg(format!("-F{}", hook.display()))
            .stdin(Stdio::null())
            .spawn()
            .expect("qemu-ga (apt-get install qemu-guest-agent)");
        let start = Instant::now();
        while UnixStream::connect(&socket).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "qemu-ga did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Qga { child, socket }
    }

    fn execute(&self, cmd: Value) -> Value {
        let mut s = UnixStream::connect(&self.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        writeln!(s, "{cmd}").unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or(Value::Null)
    }
}

/// `guest-fsfreeze-freeze-list` for exactly `mounts`. Without `mountpoints` (or with an
/// empty list) qemu-ga freezes every filesystem of the machine: never built here.
fn freeze_list(mounts: &[&Path]) -> Value {
    assert!(
        !mounts.is_empty()
            && mounts
                .iter()
                .all(|m| m.is_absolute() && *m != Path::new("/")),
        "freeze-list must name the test's own mounts"
    );
    serde_json::json!({
        "execute": "guest-fsfreeze-freeze-list",
        "arguments": { "mountpoints": mounts }
    })
}

impl Drop for Qga {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn qemu_ga_freeze_list_runs_the_bridge_and_holds_last_across_its_freeze() {
    support::require_root!();
    let _one = QGA.lock().unwrap_or_else(|e| e.into_inner());
    let dir = Scratch::new("plat-qga-real");
    let fs = LoopFs::new("ext4", 64);
    let socket = dir.join("quiesce.sock");
    let log = dir.join("calls.log");
    let cfg = support::platform::held_hook_config(&dir, &fs, &socket, &log);
    // A root with Debian's stock hook and its (empty) hook directory, and the bridge
    // installed there the way an administrator would.
    let root = Scratch::new("plat-qga-root");
    let stock = std::fs::read_to_string("/etc/qemu/fsfreeze-hook")
        .expect("Debian's stock hook (apt-get install qemu-guest-agent)");
    let hook = root.file("etc/qemu/fsfreeze-hook", &stock, 0o755);
    std::fs::create_dir_all(root.join("etc/qemu/fsfreeze-hook.d")).unwrap();
    let out = Command::new(support::quiesce_bin())
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "install",
            "--platform",
            "qemu-ga",
        ])
        .arg("--root")
        .arg(&root.path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(root
        .join("etc/qemu/fsfreeze-hook.d/quiesce-bridge")
        .exists());
    let _srv = ServeProcess::start(&cfg, &socket);
    let qga = Qga::start(&dir, &hook);

    // Unflushed data: the bridge's syncfs writes it before qemu-ga freezes.
    std::fs::write(fs.path("data"), vec![5u8; 8 << 20]).unwrap();
    let answer = qga.execute(freeze_list(&[&fs.mount_point]));
    assert_eq!(answer["return"], 1, "{answer}");
    // qemu-ga froze it (quiesce only synced), and the hold is still there.
    assert!(!support::writable_within(
        &fs.mount_point,
        Duration::from_millis(300)
    ));
    let status = qga.execute(serde_json::json!({ "execute": "guest-fsfreeze-status" }));
    assert_eq!(status["return"], "frozen", "{status}");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "held\n");

    let thawed = qga.execute(serde_json::json!({ "execute": "guest-fsfreeze-thaw" }));
    // The count is of filesystems qemu-ga itself found frozen (another test's qemu-ga may
    // already have thawed everything): what matters is no error and a writable filesystem.
    assert!(thawed["return"].is_i64(), "{thawed}");
    assert!(support::writable_within(
        &fs.mount_point,
        Duration::from_secs(2)
    ));
    // Post ran: the hold was released after qemu-ga's thaw.
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "held\nreleased\n");

    let out = Command::new(support::quiesce_bin())
        .args(["history", "--json", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let hist: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = hist.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{hist:#}");
    assert!(
        rows[0]["operation_id"]
            .as_str()
            .unwrap()
            .starts_with("qemu-ga-"),
        "{hist:#}"
    );
    assert_eq!(rows[0]["consistency"], "application", "{hist:#}");
}
