//! `quiesce guest-agent` against Debian's real qemu-ga 7.2, both run with `-m unix-listen`:
//! the same command sequences to both (answers agree in shape and error class), a command
//! forwarded through quiesce to the real qemu-ga, and a host that freezes and never thaws.
//!
//! Safety: qemu-ga only ever gets `guest-fsfreeze-freeze-list` naming this test's own loop
//! mount (never the plain freeze), and its `guest-fsfreeze-thaw` thaws every frozen
//! filesystem on the machine, so every test talking to it holds [`QGA_LOCK`] and there are
//! only two thaw calls to it. Every process and mount is stopped or removed on drop.

use crate::support;

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{quiesce_bin, writable_within, LoopFs, Scratch};

use crate::QGA_LOCK;

/// A child process killed (SIGKILL: qemu-ga ignores SIGTERM while it thinks it is frozen)
/// and reaped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_socket(sock: &Path, what: &str) {
    let start = Instant::now();
    while UnixStream::connect(sock).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what} did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The real qemu-ga listening on `dir/qga.sock`.
fn start_qemu_ga(dir: &Scratch) -> (Proc, PathBuf) {
    let sock = dir.join("qga.sock");
    let state = dir.join("qga-state");
    std::fs::create_dir_all(&state).unwrap();
    let child = Command::new("qemu-ga")
        .args(["-m", "unix-listen", "-p"])
        .arg(&sock)
        .arg("-t")
        .arg(&state)
        .arg("-l")
        .arg(dir.join("qga.log"))
        .stdin(Stdio::null())
        .spawn()
        .expect("qemu-ga (scripts/install-deps.sh installs qemu-guest-agent)");
    let p = Proc(child);
    wait_for_socket(&sock, "qemu-ga");
    (p, sock)
}

/// A quiesce configuration that freezes nothing by default (the tests name their mounts).
fn config(dir: &Scratch, hooks: &str) -> PathBuf {
    let text = format!(
        "[paths]\nstate_dir = {:?}\ncatalog = {:?}\n[freeze]\ninclude = [{:?}]\ntimeout = \"30s\"\n{hooks}",
        dir.join("state").display().to_string(),
        dir.join("catalog.db").display().to_string(),
        // The plan (plain guest-fsfreeze-freeze) is this test's own loop mount only.
        dir.join("plan-mnt").display().to_string(),
    );
    dir.file("quiesce.toml", &text, 0o600)
}

/// `quiesce guest-agent -m unix-listen` on `dir/quiesce-qga.sock`.
fn start_quiesce(dir: &Scratch, cfg: &Path, extra: &[&str]) -> (Proc, PathBuf) {
    let sock = dir.join("quiesce-qga.sock");
    let child = Command::new(quiesce_bin())
        .arg("guest-agent")
        .arg("--config")
        .arg(cfg)
        .args(["-m", "unix-listen", "-p"])
        .arg(&sock)
        .args(extra)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let p = Proc(child);
    wait_for_socket(&sock, "quiesce guest-agent");
    (p, sock)
}

/// One connection to an agent.
struct Conn(UnixStream);

impl Conn {
    fn new(sock: &Path) -> Conn {
        let s = UnixStream::connect(sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Conn(s)
    }

    /// Send `bytes` and read `lines` answer lines (a leading 0xFF is kept on its line).
    fn send(&mut self, bytes: &[u8], lines: usize) -> Vec<Vec<u8>> {
        self.0.write_all(bytes).unwrap();
        let mut got = Vec::new();
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while got.len() < lines {
            let n = self.0.read(&mut byte).unwrap_or_else(|e| {
                panic!("no answer to {:?}: {e}", String::from_utf8_lossy(bytes))
            });
            assert!(n > 0, "connection closed");
            if byte[0] == b'\n' {
                got.push(std::mem::take(&mut buf));
            } else {
                buf.push(byte[0]);
            }
        }
        got
    }

    /// Send one request and parse its one answer.
    fn call(&mut self, req: &Value) -> Value {
        let line = self.send(format!("{req}\n").as_bytes(), 1).remove(0);
        let json = line.strip_prefix(&[0xFF]).unwrap_or(&line);
        serde_json::from_slice(json).unwrap()
    }
}

/// What must agree between qemu-ga and quiesce: the kind of answer, the return value's type
/// (and an object's keys), the error class, the id.
fn shape(line: &[u8]) -> Value {
    let (delimited, line) = match line.first() {
        Some(0xFF) => (true, &line[1..]),
        _ => (false, line),
    };
    let v: Value = serde_json::from_slice(line)
        .unwrap_or_else(|e| panic!("not JSON: {:?}: {e}", String::from_utf8_lossy(line)));
    let kind = |r: &Value| match r {
        Value::Null => json!("null"),
        Value::Bool(_) => json!("bool"),
        Value::Number(_) => json!("number"),
        Value::String(_) => json!("string"),
        Value::Array(_) => json!("array"),
        Value::Object(m) => json!({ "object": m.keys().collect::<Vec<_>>() }),
    };
    match (&v["return"], &v["error"]) {
        (r, Value::Null) if !r.is_null() || v.get("return").is_some() => {
            json!({ "delimited": delimited, "return": kind(r), "id": v["id"] })
        }
        (_, e) => json!({ "delimited": delimited, "error": e["class"], "id": v["id"] }),
    }
}

/// The sequence sent to both agents, with how many answer lines each step gives.
fn sequence(mnt: &str, not_a_mount: &str) -> Vec<(String, Vec<u8>, usize)> {
    let freeze_list = |paths: &[&str]| {
        // Without `mountpoints` qemu-ga would freeze every filesystem, `/` included.
        assert!(!paths.is_empty() && !paths.contains(&"/"));
        format!(
            "{}\n",
            json!({"execute": "guest-fsfreeze-freeze-list", "arguments": {"mountpoints": paths}})
        )
        .into_bytes()
    };
    let steps: Vec<(&str, Vec<u8>, usize)> = vec![
        ("bad JSON", b"{bad json}\n".to_vec(), 1),
        ("not an object", b"[1,2]\n".to_vec(), 1),
        ("unknown member", b"{\"exec\":\"guest-ping\"}\n".to_vec(), 1),
        (
            "unknown command",
            b"{\"execute\":\"guest-nope\",\"id\":3}\n".to_vec(),
            1,
        ),
        (
            "ping with id",
            b"{\"execute\":\"guest-ping\",\"id\":\"a\"}\n".to_vec(),
            1,
        ),
        (
            "sync",
            b"{\"execute\":\"guest-sync\",\"arguments\":{\"id\":-42}}\n".to_vec(),
            1,
        ),
        (
            "sync wrong type",
            b"{\"execute\":\"guest-sync\",\"arguments\":{\"id\":\"x\"}}\n".to_vec(),
            1,
        ),
        (
            "sync missing id",
            b"{\"execute\":\"guest-sync\"}\n".to_vec(),
            1,
        ),
        (
            "unexpected argument",
            b"{\"execute\":\"guest-ping\",\"arguments\":{\"x\":1}}\n".to_vec(),
            1,
        ),
        (
            "0xFF then sync-delimited",
            b"\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":77}}\n".to_vec(),
            2,
        ),
        (
            "status thawed",
            b"{\"execute\":\"guest-fsfreeze-status\"}\n".to_vec(),
            1,
        ),
        (
            "thaw when thawed",
            b"{\"execute\":\"guest-fsfreeze-thaw\"}\n".to_vec(),
            1,
        ),
        (
            "freeze-list mountpoints not an array",
            b"{\"execute\":\"guest-fsfreeze-freeze-list\",\"arguments\":{\"mountpoints\":\"x\"}}\n"
                .to_vec(),
            1,
        ),
        (
            "freeze-list, only a non-mount path",
            freeze_list(&[not_a_mount]),
            1,
        ),
        (
            "status after freezing nothing",
            b"{\"execute\":\"guest-fsfreeze-status\"}\n".to_vec(),
            1,
        ),
        (
            "freeze-list, mount + non-mount path",
            freeze_list(&[mnt, not_a_mount]),
            1,
        ),
        (
            "status frozen",
            b"{\"execute\":\"guest-fsfreeze-status\"}\n".to_vec(),
            1,
        ),
        ("double freeze", freeze_list(&[mnt]), 1),
        (
            "other command while frozen",
            b"{\"execute\":\"guest-get-osinfo\"}\n".to_vec(),
            1,
        ),
        (
            "ping while frozen",
            b"{\"execute\":\"guest-ping\"}\n".to_vec(),
            1,
        ),
        (
            "thaw",
            b"{\"execute\":\"guest-fsfreeze-thaw\"}\n".to_vec(),
            1,
        ),
        (
            "status thawed again",
            b"{\"execute\":\"guest-fsfreeze-status\"}\n".to_vec(),
            1,
        ),
    ];
    steps
        .into_iter()
        .map(|(n, b, l)| (n.to_string(), b, l))
        .collect()
}

fn run_sequence(
    sock: &Path,
    mnt: &Path,
    not_a_mount: &Path,
) -> Vec<(String, Vec<Value>, Vec<Vec<u8>>)> {
    let mut conn = Conn::new(sock);
    let mut out = Vec::new();
    for (name, bytes, lines) in sequence(mnt.to_str().unwrap(), not_a_mount.to_str().unwrap()) {
        let answers = conn.send(&bytes, lines);
        if name == "status frozen" {
            // Really frozen: a write probe does not finish while the freeze holds.
            let mut probe = support::WriteProbe::start(mnt);
            assert_eq!(
                probe.finished_within(Duration::from_millis(300)),
                None,
                "{name}"
            );
        }
        out.push((name, answers.iter().map(|l| shape(l)).collect(), answers));
    }
    out
}

#[test]
fn answers_agree_with_qemu_ga() {
    support::require_root!();
    let _lock = QGA_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = Scratch::new("qga-parity");
    let fs = LoopFs::new("ext4", 64);
    let not_a_mount = dir.join("not-a-mount");
    std::fs::create_dir_all(&not_a_mount).unwrap();

    let theirs = {
        let (_qga, sock) = start_qemu_ga(&dir);
        run_sequence(&sock, &fs.mount_point, &not_a_mount)
    };
    assert!(writable_within(&fs.mount_point, Duration::from_secs(5)));

    let marks = dir.join("marks");
    let pre = dir.script(
        "pre",
        &format!("#!/bin/sh\necho pre >> {}\n", marks.display()),
    );
    let post = dir.script(
        "post",
        &format!("#!/bin/sh\necho post >> {}\n", marks.display()),
    );
    let cfg = config(
        &dir,
        &format!(
            "[[hook]]\nname = \"marks\"\npre = [{:?}]\npost = [{:?}]\ntimeout = \"5s\"\n",
            pre.display().to_string(),
            post.display().to_string()
        ),
    );
    let ours = {
        let (_agent, sock) = start_quiesce(&dir, &cfg, &[]);
        run_sequence(&sock, &fs.mount_point, &not_a_mount)
    };
    assert!(writable_within(&fs.mount_point, Duration::from_secs(5)));

    for ((name, their_shape, their_raw), (_, our_shape, our_raw)) in theirs.iter().zip(&ours) {
        assert_eq!(
            their_shape,
            our_shape,
            "{name}: qemu-ga said {:?}, quiesce said {:?}",
            their_raw
                .iter()
                .map(|l| String::from_utf8_lossy(l))
                .collect::<Vec<_>>(),
            our_raw
                .iter()
                .map(|l| String::from_utf8_lossy(l))
                .collect::<Vec<_>>()
        );
    }
    // And the values that must be equal, not only alike.
    let ret = |name: &str| -> Value {
        let (_, _, raw) = ours.iter().find(|(n, _, _)| n == name).unwrap();
        let line = raw.last().unwrap();
        let line = line.strip_prefix(&[0xFF]).unwrap_or(line);
        serde_json::from_slice(line).unwrap()
    };
    assert_eq!(ret("sync")["return"], json!(-42));
    assert_eq!(ret("0xFF then sync-delimited")["return"], json!(77));
    assert_eq!(ret("ping with id")["id"], json!("a"));
    assert_eq!(
        ret("unknown command")["error"]["class"],
        json!("CommandNotFound")
    );
    assert_eq!(
        ret("double freeze")["error"]["class"],
        json!("CommandNotFound")
    );
    assert_eq!(ret("bad JSON")["error"]["class"], json!("GenericError"));
    assert_eq!(ret("status frozen")["return"], json!("frozen"));
    assert_eq!(
        ret("status after freezing nothing")["return"],
        json!("thawed")
    );
    assert_eq!(
        ret("freeze-list, only a non-mount path")["return"],
        json!(0)
    );
    assert_eq!(
        ret("freeze-list, mount + non-mount path")["return"],
        json!(1)
    );
    assert_eq!(ret("thaw")["return"], json!(1));
    assert_eq!(ret("thaw when thawed")["return"], json!(0));
    let theirs_ret = |name: &str| -> Value {
        let (_, _, raw) = theirs.iter().find(|(n, _, _)| n == name).unwrap();
        serde_json::from_slice(&raw[0]).unwrap()
    };
    assert_eq!(
        theirs_ret("freeze-list, mount + non-mount path")["return"],
        json!(1)
    );
    // qemu-ga's thaw counts every frozen filesystem it found on the machine (other tests'
    // too, running beside this one); quiesce's counts what it froze.
    assert!(theirs_ret("thaw")["return"].as_u64().unwrap() >= 1);
    // The freeze ran quiesce's hooks, and the pair is in the catalog with its report.
    assert_eq!(
        std::fs::read_to_string(&marks).unwrap(),
        "pre\npost\n",
        "hooks around the freeze"
    );
    let out = Command::new(quiesce_bin())
        .args(["history", "--json", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let history: Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs = history.as_array().unwrap();
    assert_eq!(runs.len(), 1, "one freeze/thaw pair: {history}");
    assert!(runs[0]["operation_id"]
        .as_str()
        .unwrap()
        .starts_with("qga-"));
    assert_eq!(runs[0]["status"], json!("succeeded"), "{history}");
    assert_eq!(runs[0]["caller"], json!("guest-agent"), "{history}");
    assert!(runs[0]["frozen_ms"].as_u64().is_some(), "{history}");
}

#[test]
fn other_commands_are_forwarded_to_a_real_qemu_ga() {
    support::require_root!();
    let _lock = QGA_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = Scratch::new("qga-proxy");
    let (_qga, qga_sock) = start_qemu_ga(&dir);
    let direct = Conn::new(&qga_sock).call(&json!({"execute": "guest-get-osinfo"}));
    assert!(direct["return"]["kernel-release"].is_string(), "{direct}");

    let cfg = config(&dir, "");
    let (_agent, sock) = start_quiesce(&dir, &cfg, &["--forward-to", qga_sock.to_str().unwrap()]);
    let mut conn = Conn::new(&sock);
    let forwarded = conn.call(&json!({"execute": "guest-get-osinfo", "id": 12}));
    let mut want = direct.clone();
    want["id"] = json!(12);
    assert_eq!(forwarded, want);
    let host = conn.call(&json!({"execute": "guest-get-host-name"}));
    assert!(host["return"]["host-name"].is_string(), "{host}");
    // qemu-ga's own argument errors come back unchanged.
    let bad = conn.call(&json!({"execute": "guest-exec", "arguments": {}}));
    assert_eq!(bad["error"]["class"], json!("GenericError"), "{bad}");
    // guest-info lists quiesce's commands and those of the qemu-ga behind it.
    let info = conn.call(&json!({"execute": "guest-info"}));
    let names: Vec<&str> = info["return"]["supported_commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for n in [
        "guest-fsfreeze-freeze-list",
        "guest-exec",
        "guest-network-get-interfaces",
    ] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    assert_eq!(
        names
            .iter()
            .filter(|n| **n == "guest-fsfreeze-thaw")
            .count(),
        1,
        "freeze commands are quiesce's only"
    );
    drop(conn);

    // Without a qemu-ga behind it, the same command is CommandNotFound.
    let dir2 = Scratch::new("qga-noproxy");
    let cfg2 = config(&dir2, "");
    let (_agent2, sock2) = start_quiesce(&dir2, &cfg2, &[]);
    let alone = Conn::new(&sock2).call(&json!({"execute": "guest-get-osinfo"}));
    assert_eq!(alone["error"]["class"], json!("CommandNotFound"), "{alone}");
}

#[test]
fn a_host_that_never_thaws_is_thawed_at_the_deadline() {
    support::require_root!();
    // Not a qemu-ga test, but a qemu-ga thaw from the other tests would end this freeze early.
    let _lock = QGA_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = Scratch::new("qga-deadline");
    let fs = LoopFs::new("ext4", 64);
    let cfg = config(&dir, "");
    let (_agent, sock) = start_quiesce(&dir, &cfg, &["--max-freeze", "2s"]);
    {
        let mut conn = Conn::new(&sock);
        let a = conn.call(&json!({"execute": "guest-sync-delimited", "arguments": {"id": 5}}));
        assert_eq!(a["return"], json!(5));
        let r = conn.call(&json!({
            "execute": "guest-fsfreeze-freeze-list",
            "arguments": {"mountpoints": [fs.mount_point]}
        }));
        assert_eq!(r["return"], json!(1), "{r}");
        let mut probe = support::WriteProbe::start(&fs.mount_point);
        assert_eq!(
            probe.finished_within(Duration::from_millis(300)),
            None,
            "frozen"
        );
        // The host "crashes": the connection closes, no thaw ever comes.
    }
    let start = Instant::now();
    let mut probe = support::WriteProbe::start(&fs.mount_point);
    assert_eq!(
        probe.finished_within(Duration::from_secs(10)),
        Some(true),
        "thawed by the guard"
    );
    let waited = start.elapsed();
    assert!(waited < Duration::from_secs(4), "thawed after {waited:?}");
    // A new host connection sees the agent thawed, and the run is recorded as such.
    std::thread::sleep(Duration::from_millis(800));
    let status = Conn::new(&sock).call(&json!({"execute": "guest-fsfreeze-status"}));
    assert_eq!(status["return"], json!("thawed"));
    let out = Command::new(quiesce_bin())
        .args(["history", "--json", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FreezeGuardFired"), "catalog: {text}");
}
