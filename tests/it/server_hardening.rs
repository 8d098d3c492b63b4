//! `quiesce serve` as an operator and an attacker find it: one server per socket, recovery
//! at start, SIGTERM during a prepare, connection slots per caller, HTTP edge cases, and
//! the host commands' exit codes and configuration.

use crate::support;

use quiesce::server::client::call;
use serde_json::{json, Value};
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{LoopFs, Scratch, ServeProcess};

const T: Duration = Duration::from_secs(60);

struct Setup {
    dir: Scratch,
    fs: LoopFs,
    config: PathBuf,
    socket: PathBuf,
}

fn q(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

fn setup(extra: &str) -> Setup {
    let dir = Scratch::new("serve-hard");
    let fs = LoopFs::new("ext4", 64);
    let socket = dir.join("quiesce.sock");
    let text = format!(
        "[paths]\nstate_dir = {}\ncatalog = {}\n[freeze]\ninclude = [{}]\ntimeout = \"30s\"\n\
         [server]\nsocket = {}\ndefault_deadline = \"20s\"\n{extra}",
        q(&dir.join("state")),
        q(&dir.join("catalog.db")),
        q(&fs.mount_point),
        q(&socket),
    );
    let config = dir.file("quiesce.toml", &text, 0o600);
    Setup {
        dir,
        fs,
        config,
        socket,
    }
}

fn quiesce(args: &[&str]) -> std::process::Output {
    Command::new(support::quiesce_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn healthy(socket: &Path) -> bool {
    matches!(
        call(socket, "GET", "/healthz", None, Duration::from_secs(2)),
        Ok((200, _))
    )
}

#[test]
fn a_second_server_for_the_same_socket_refuses_to_start() {
    support::require_root!();
    let s = setup("");
    let mut first = ServeProcess::start(&s.config, &s.socket);
    let (code, answer) = call(&s.socket, "POST", "/v1/operations/op-1/prepare", None, T).unwrap();
    assert_eq!(
        (code, answer["state"].as_str()),
        (200, Some("frozen")),
        "{answer:#}"
    );
    let out = quiesce(&["serve", "--config", s.config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already listening"), "{err}");
    // The first server still owns its socket and its operation.
    let (code, report) = call(&s.socket, "POST", "/v1/operations/op-1/release", None, T).unwrap();
    assert_eq!(code, 200, "{report:#}");
    assert_eq!(report["status"], "succeeded", "{report:#}");
    first.signal("TERM");
    first.wait_exit(Duration::from_secs(10)).expect("exited");
    assert!(!s.socket.exists());
}

#[test]
fn stopping_an_old_server_never_removes_a_newer_ones_socket() {
    support::require_root!();
    let s = setup("");
    let mut first = ServeProcess::start(&s.config, &s.socket);
    // Somebody replaces the socket file (a newer server elsewhere, by hand): the first
    // server must leave the new file alone when it stops.
    std::fs::remove_file(&s.socket).unwrap();
    let other = std::os::unix::net::UnixListener::bind(&s.socket).unwrap();
    first.signal("TERM");
    first.wait_exit(Duration::from_secs(10)).expect("exited");
    assert!(s.socket.exists(), "the newer socket was removed");
    drop(other);
}

#[test]
fn serve_recovers_at_start_what_a_killed_server_left_frozen() {
    support::require_root!();
    let s = setup("");
    let mut first = ServeProcess::start(&s.config, &s.socket);
    let (_, answer) = call(&s.socket, "POST", "/v1/operations/op-k/prepare", None, T).unwrap();
    assert_eq!(answer["state"], "frozen", "{answer:#}");
    // Stop the server (it would notice its guard's death and thaw at once), kill -9 the
    // guard (so nobody thaws), then the server.
    first.signal("STOP");
    let guards = support::sh("pgrep", &["-P", &first.pid().to_string()]);
    for pid in guards.split_whitespace() {
        support::sh("kill", &["-KILL", pid]);
    }
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(5)).expect("killed");
    // Still frozen: nobody is left to thaw it (a probe that never thaws anything).
    let mut probe = support::WriteProbe::start(&s.fs.mount_point);
    assert_eq!(
        probe.finished_within(Duration::from_millis(300)),
        None,
        "the filesystem must still be frozen before the restart"
    );
    let _second = ServeProcess::start(&s.config, &s.socket);
    assert!(
        support::writable_within(&s.fs.mount_point, Duration::from_secs(3)),
        "a restarted serve left the filesystem frozen"
    );
    assert!(healthy(&s.socket));
    // The recovery is recorded: the next operation's report (and so its catalog row) says
    // what was thawed at start.
    let (_, answer) = call(&s.socket, "POST", "/v1/operations/op-n/prepare", None, T).unwrap();
    assert_eq!(answer["state"], "frozen", "{answer:#}");
    let (_, report) = call(&s.socket, "POST", "/v1/operations/op-n/release", None, T).unwrap();
    let recorded = report["warnings"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|w| w["code"] == "RecoveredFrozenFilesystems")
        .unwrap_or_else(|| panic!("recovery not recorded: {report:#}"));
    let mount = s.fs.mount_point.display().to_string();
    assert!(
        recorded["message"].as_str().unwrap().contains(&mount),
        "{recorded}"
    );
}

#[test]
fn sigterm_during_a_pre_hook_stops_it_thaws_runs_post_hooks_and_records() {
    support::require_root!();
    let dir = Scratch::new("serve-term-hooks");
    let started = dir.join("pre-started");
    let post_ran = dir.join("post-ran");
    let pre = dir.script(
        "pre.sh",
        &format!("#!/bin/sh\ntouch {}\nexec sleep 60\n", started.display()),
    );
    let post = dir.script(
        "post.sh",
        &format!("#!/bin/sh\ntouch {}\n", post_ran.display()),
    );
    let s = setup(&format!(
        "[[hook]]\nname = \"slow\"\npre = [{}]\npost = [{}]\ntimeout = \"90s\"\n",
        q(&pre),
        q(&post)
    ));
    let mut srv = ServeProcess::start(&s.config, &s.socket);
    let socket = s.socket.clone();
    let caller =
        std::thread::spawn(move || call(&socket, "POST", "/v1/operations/op-t/prepare", None, T));
    let start = Instant::now();
    while !started.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "pre hook never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    srv.signal("TERM");
    let st = srv
        .wait_exit(Duration::from_secs(15))
        .expect("serve exited");
    assert!(st.success(), "{st:?}");
    assert!(post_ran.exists(), "post hooks did not run");
    let _ = caller.join();
    assert!(support::writable_within(
        &s.fs.mount_point,
        Duration::from_secs(2)
    ));
    let orphans = Command::new("pgrep")
        .args(["-f", &pre.display().to_string()])
        .output()
        .unwrap();
    assert!(orphans.stdout.is_empty(), "the pre hook lives on");
    let catalog = quiesce::catalog::Catalog::open_read_only(&s.dir.join("catalog.db"))
        .unwrap()
        .expect("the run was recorded");
    let runs = catalog.history(None, None).unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert!(
        runs[0].error_codes.iter().any(|c| c == "Interrupted"),
        "{:?}",
        runs[0]
    );
}

#[test]
fn refused_callers_cannot_take_the_slots_of_allowed_ones() {
    support::require_root!();
    let s = setup("");
    let _srv = ServeProcess::start(&s.config, &s.socket);
    // Let uid 65534 reach the socket (it stays refused by peer credentials).
    let opened = support::OpenToOthers::new(&s.socket);
    let script = format!(
        "import socket, sys, time\nss = []\nfor _ in range(40):\n    c = socket.socket(socket.AF_UNIX)\n    c.connect({:?})\n    ss.append(c)\nprint('open', flush=True)\ntime.sleep(30)\n",
        s.socket.display().to_string()
    );
    let mut holder = support::as_nobody("/usr/bin/python3")
        .arg("-c")
        .arg(&script)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    drop(opened);
    assert_eq!(line.trim(), "open");
    let t = Instant::now();
    let answered = healthy(&s.socket);
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(
        answered,
        "root was locked out by another user's idle connections"
    );
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn an_oversized_body_gets_413_not_a_reset() {
    support::require_root!();
    let s = setup("");
    let _srv = ServeProcess::start(&s.config, &s.socket);
    let mut c = std::os::unix::net::UnixStream::connect(&s.socket).unwrap();
    let body = vec![b'x'; 1 << 20];
    write!(
        c,
        "POST /v1/operations/a/prepare HTTP/1.1\r\nHost: q\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    c.write_all(&body).expect("the whole body is taken");
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
}

#[test]
fn prepare_exits_non_zero_with_the_code_when_the_freeze_failed() {
    support::require_root!();
    let s = setup("");
    let _srv = ServeProcess::start(&s.config, &s.socket);
    support::sh("fsfreeze", &["-f", s.fs.mount_point.to_str().unwrap()]);
    let out = quiesce(&[
        "prepare",
        "--id",
        "op-f",
        "--socket",
        s.socket.to_str().unwrap(),
    ]);
    support::thaw(&s.fs.mount_point);
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_ne!(out.status.code(), Some(0), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("FilesystemAlreadyFrozen"),
        "{out:?}"
    );
    assert_eq!(answer["frozen"], json!([]), "{answer:#}");
    let out = quiesce(&[
        "release",
        "--id",
        "op-f",
        "--socket",
        s.socket.to_str().unwrap(),
    ]);
    assert_ne!(
        out.status.code(),
        Some(0),
        "a crash-consistent release is degraded"
    );
}

#[test]
fn a_finished_operation_is_not_prepared_again() {
    support::require_root!();
    let s = setup("");
    let _srv = ServeProcess::start(&s.config, &s.socket);
    let sock = s.socket.to_str().unwrap();
    let out = quiesce(&["prepare", "--id", "op-r", "--socket", sock]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = quiesce(&["release", "--id", "op-r", "--socket", sock]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = quiesce(&["prepare", "--id", "op-r", "--socket", sock]);
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["state"], "released", "{answer:#}");
    assert_eq!(answer["frozen"], json!([]));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(support::writable_within(
        &s.fs.mount_point,
        Duration::from_secs(2)
    ));
}

#[test]
fn an_explicit_config_that_does_not_load_is_a_failure() {
    let dir = Scratch::new("bad-config");
    let broken = dir.file("broken.toml", "[freeze\n", 0o600);
    let missing = dir.join("missing.toml");
    for config in [&broken, &missing] {
        let c = config.to_str().unwrap();
        for args in [
            vec!["recover", "--config", c],
            vec!["status", "--id", "x", "--config", c],
            vec!["release", "--id", "x", "--config", c],
            vec!["prepare", "--id", "x", "--config", c],
            // These fell back to the default configuration (exit 0) before.
            vec!["history", "--config", c],
            vec!["snapshots", "--config", c],
            vec!["mounts", "--config", c],
            vec!["hook", "pre", "--platform", "gcp", "--config", c],
            vec!["migrate-catalog", "--config", c],
        ] {
            let out = quiesce(&args);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("IncorrectConfigFile"), "{args:?}: {err}");
            assert!(
                !err.contains("cannot connect"),
                "{args:?} carried on: {err}"
            );
        }
    }
}

#[test]
fn check_refuses_a_read_only_state_dir_and_warns_of_tcp_on_all_interfaces() {
    support::require_root!();
    let dir = Scratch::new("check-env");
    let ro = LoopFs::new("ext4", 64);
    std::fs::create_dir_all(ro.path("state")).unwrap();
    support::sh(
        "mount",
        &["-o", "remount,ro", ro.mount_point.to_str().unwrap()],
    );
    let token = dir.file("token", "0123456789abcdef0123", 0o600);
    let config = dir.file(
        "quiesce.toml",
        &format!(
            "[paths]\nstate_dir = {}\ncatalog = {}\n[freeze]\nenabled = false\n\
             [server]\nsocket = {}\ntcp_listen = \"0.0.0.0:7459\"\ntoken_file = {}\n",
            q(&ro.path("state")),
            q(&dir.join("catalog.db")),
            q(&dir.join("q.sock")),
            q(&token),
        ),
        0o600,
    );
    let out = quiesce(&["check", "--config", config.to_str().unwrap()]);
    support::sh(
        "mount",
        &["-o", "remount,rw", ro.mount_point.to_str().unwrap()],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("read-only filesystem"), "{text}");
    assert!(text.contains("all interfaces"), "{text}");
}
