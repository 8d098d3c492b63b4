//! qemu-ga's own freeze window on 4 ext4 loop filesystems with unflushed data, with the
//! bridge as its fsfreeze-hook (pre hooks + syncfs before qemu-ga freezes) and with a hook
//! that does nothing (qemu-ga's FIFREEZE flushes everything inside its window).
//!
//! The window is measured from the end of the hook (the hook writes a timestamp as its last
//! act) to qemu-ga's answer to `guest-fsfreeze-freeze-list`: the time qemu-ga spends
//! freezing, while writers on the first filesystems are already blocked.
//!
//! `cargo bench --bench platform` (root; qemu-ga from Debian's qemu-guest-agent).
//! `QUIESCE_BENCH_ROUNDS` (default 5), `QUIESCE_BENCH_DIRTY_MB` per filesystem (default 64).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(out.status.success(), "{cmd} {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Loop filesystems, thawed, unmounted and detached on drop.
struct Loops(Vec<(String, PathBuf)>);

impl Drop for Loops {
    fn drop(&mut self) {
        for (dev, mnt) in &self.0 {
            let _ = Command::new("fsfreeze").arg("-u").arg(mnt).output();
            let _ = Command::new("umount").arg(mnt).output();
            let _ = Command::new("losetup").args(["-d", dev]).output();
        }
    }
}

struct Qga(Child, PathBuf);

impl Drop for Qga {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Qga {
    fn execute(&self, cmd: serde_json::Value) -> serde_json::Value {
        let mut s = UnixStream::connect(&self.1).unwrap();
        writeln!(s, "{cmd}").unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or(serde_json::Value::Null)
    }
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn wait_for(socket: &Path) {
    let start = Instant::now();
    while UnixStream::connect(socket).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "{socket:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let rounds = env("QUIESCE_BENCH_ROUNDS", 5);
    let dirty_mb = env("QUIESCE_BENCH_DIRTY_MB", 64);
    let base = PathBuf::from("/var/lib/quiesce-tests");
    std::fs::create_dir_all(&base).unwrap();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = base.join(format!("bench-platform-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_quiesce"));

    let mut loops = Loops(Vec::new());
    for i in 0..4 {
        let image = dir.join(format!("fs{i}.img"));
        let f = std::fs::File::create(&image).unwrap();
        f.set_len(((dirty_mb + 64) * 1024 * 1024) as u64).unwrap();
        drop(f);
        let dev = sh("losetup", &["-f", "--show", image.to_str().unwrap()]);
        let mnt = dir.join(format!("mnt{i}"));
        std::fs::create_dir_all(&mnt).unwrap();
        loops.0.push((dev.clone(), mnt.clone()));
        sh("mkfs.ext4", &["-q", "-F", &dev]);
        sh("mount", &[&dev, mnt.to_str().unwrap()]);
    }
    let mounts: Vec<String> = loops
        .0
        .iter()
        .map(|(_, m)| m.display().to_string())
        .collect();
    let socket = dir.join("quiesce.sock");
    let cfg = dir.join("quiesce.toml");
    write(
        &cfg,
        &format!(
            "[paths]\nstate_dir = {:?}\ncatalog = {:?}\n[freeze]\ninclude = {:?}\n\
             timeout = \"60s\"\n[server]\nsocket = {:?}\n",
            dir.join("state").display().to_string(),
            dir.join("catalog.db").display().to_string(),
            mounts,
            socket.display().to_string()
        ),
        0o600,
    );
    let stamp = dir.join("hook-end");
    let bridge = dir.join("bridge-hook");
    write(
        &bridge,
        &format!(
            "#!/bin/sh\ncase \"$1\" in freeze) side=pre ;; thaw) side=post ;; *) exit 0 ;; esac\n\
             {bin:?} --config {cfg:?} hook \"$side\" --platform qemu-ga --deadline 60s \
             >/dev/null\nst=$?\ndate +%s%N > {stamp:?}\nexit $st\n",
            bin = bin.display().to_string(),
            cfg = cfg.display().to_string(),
            stamp = stamp.display().to_string()
        ),
        0o700,
    );
    let plain = dir.join("plain-hook");
    write(
        &plain,
        &format!(
            "#!/bin/sh\ndate +%s%N > {:?}\n",
            stamp.display().to_string()
        ),
        0o700,
    );
    let serve = Serve(
        Command::new(&bin)
            .args(["--config", cfg.to_str().unwrap(), "serve"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(&socket);

    let mut results = Vec::new();
    for (label, hook) in [("plain hook", &plain), ("bridge (syncfs)", &bridge)] {
        let qsock = dir.join("qga.sock");
        let _ = std::fs::remove_file(&qsock);
        std::fs::create_dir_all(dir.join("qga-state")).unwrap();
        let qga = Qga(
            Command::new("qemu-ga")
                .arg("-m")
                .arg("unix-listen")
                .arg("-p")
                .arg(&qsock)
                .arg("-t")
                .arg(dir.join("qga-state"))
                .arg("-f")
                .arg(dir.join("qga.pid"))
                .arg("-l")
                .arg(dir.join("qga.log"))
                .arg(format!("-F{}", hook.display()))
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
            qsock.clone(),
        );
        wait_for(&qsock);
        let mut windows = Vec::new();
        for _ in 0..rounds {
            // Unflushed data on every filesystem.
            for m in &mounts {
                std::fs::write(Path::new(m).join("data"), vec![9u8; dirty_mb << 20]).unwrap();
            }
            // Without `mountpoints` qemu-ga would freeze every filesystem, `/` included.
            assert!(!mounts.is_empty() && mounts.iter().all(|m| Path::new(m) != Path::new("/")));
            let answer = qga.execute(serde_json::json!({
                "execute": "guest-fsfreeze-freeze-list",
                "arguments": { "mountpoints": mounts }
            }));
            let returned = now_ns();
            assert_eq!(answer["return"], 4, "{label}: {answer}");
            let hook_end: u128 = std::fs::read_to_string(&stamp)
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            windows.push((returned.saturating_sub(hook_end)) as f64 / 1e6);
            qga.execute(serde_json::json!({ "execute": "guest-fsfreeze-thaw" }));
        }
        drop(qga);
        results.push((label, median(windows.clone()), windows));
    }
    drop(serve);
    drop(loops);
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "qemu-ga freeze window (hook end -> freeze-list answer), 4 ext4, {dirty_mb} MB \
         unflushed each, {rounds} rounds"
    );
    for (label, med, all) in &results {
        let all: Vec<String> = all.iter().map(|w| format!("{w:.0}")).collect();
        println!("  {label:<16} median {med:>8.1} ms   [{}]", all.join(", "));
    }
    if let [(_, plain, _), (_, bridged, _)] = results.as_slice() {
        println!(
            "  the bridge's pre-flush makes qemu-ga's window {:.1}x shorter",
            plain / bridged.max(0.001)
        );
    }
}
