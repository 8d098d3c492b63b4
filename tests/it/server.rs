//! Host-driven mode through the real socket: `quiesce serve` freezing real loop filesystems.

use crate::support;

use quiesce::server::client::call;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::{LoopFs, Scratch, ServeProcess};

const T: Duration = Duration::from_secs(60);

struct Setup {
    dir: Scratch,
    fs: LoopFs,
    config: PathBuf,
    socket: PathBuf,
}

fn setup(hooks: &str) -> Setup {
    let dir = Scratch::new("serve");
    let fs = LoopFs::new("ext4", 64);
    let socket = dir.join("quiesce.sock");
    let text = format!(
        "[paths]\nstate_dir = {:?}\ncatalog = {:?}\n[freeze]\ninclude = [{:?}]\ntimeout = \"30s\"\n\
         [server]\nsocket = {:?}\ndefault_deadline = \"20s\"\n{hooks}",
        dir.join("state").display().to_string(),
        dir.join("catalog.db").display().to_string(),
        fs.mount_point.display().to_string(),
        socket.display().to_string(),
    );
    let config = dir.file("quiesce.toml", &text, 0o600);
    Setup {
        dir,
        fs,
        config,
        socket,
    }
}

fn prepare(socket: &Path, id: &str, deadline: &str) -> (u16, Value) {
    call(
        socket,
        "POST",
        &format!("/v1/operations/{id}/prepare"),
        Some(&json!({ "deadline": deadline })),
        T,
    )
    .unwrap()
}

fn release(socket: &Path, id: &str) -> (u16, Value) {
    call(
        socket,
        "POST",
        &format!("/v1/operations/{id}/release"),
        None,
        T,
    )
    .unwrap()
}

fn frozen(fs: &LoopFs) -> bool {
    !support::writable_within(&fs.mount_point, Duration::from_millis(300))
}

#[test]
fn prepare_copy_release_gives_a_clean_copy() {
    support::require_root!();
    let s = setup("");
    let _srv = ServeProcess::start(&s.config, &s.socket);
    // Dirty the filesystem so an unfrozen copy would need recovery.
    std::fs::write(s.fs.path("data"), vec![7u8; 4 << 20]).unwrap();
    let (code, answer) = prepare(&s.socket, "op-copy", "20s");
    assert_eq!(code, 200, "{answer:#}");
    assert_eq!(answer["state"], "frozen");
    assert_eq!(answer["frozen"][0], s.fs.mount_point.to_str().unwrap());
    let copy = s.dir.join("copy.img");
    support::sh(
        "cp",
        &[s.fs.image.to_str().unwrap(), copy.to_str().unwrap()],
    );
    let (code, report) = release(&s.socket, "op-copy");
    assert_eq!(code, 200);
    assert_eq!(report["status"], "succeeded", "{report:#}");
    assert_eq!(report["consistency"], "file-system");
    assert!(report["frozen_ms"].as_u64().is_some());
    let out = Command::new("e2fsck")
        .args(["-fn", copy.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "e2fsck: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!frozen(&s.fs));
}

#[test]
fn never_released_is_thawed_at_the_deadline_and_reported_inconsistent() {
    support::require_root!();
    let s = setup("");
    let _srv = ServeProcess::start(&s.config, &s.socket);
    let (_, answer) = prepare(&s.socket, "op-late", "1s");
    assert_eq!(answer["state"], "frozen");
    let start = Instant::now();
    // (`frozen` thaws by hand when its probe hangs: probe only once the deadline passed.)
    std::thread::sleep(Duration::from_millis(1100));
    while frozen(&s.fs) {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "not thawed at the deadline"
        );
    }
    // The watchdog finishes the operation shortly after the deadline.
    let status = loop {
        let (code, status) = call(&s.socket, "GET", "/v1/operations/op-late", None, T).unwrap();
        assert_eq!(code, 200);
        if status["state"] == "expired" {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not finished: {status:#}"
        );
        // Thawed by the guard: whatever the state, nothing is claimed frozen any more.
        assert_eq!(status["frozen"], json!([]), "{status:#}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let report = &status["report"];
    assert_ne!(report["consistency"], "file-system");
    assert_ne!(report["consistency"], "application");
    assert!(report["errors"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["code"] == "FreezeGuardFired"));
    // A late release gets the same final report.
    let (_, late) = release(&s.socket, "op-late");
    assert_eq!(late["operation_id"], "op-late");
    assert_eq!(late["consistency"], report["consistency"]);
}

#[test]
fn duplicates_are_idempotent_and_a_second_operation_is_refused() {
    support::require_root!();
    let marker_dir = Scratch::new("serve-hooks");
    let count = marker_dir.join("pre-count");
    let pre = marker_dir.script(
        "pre.sh",
        &format!("#!/bin/sh\necho x >> {}\n", count.display()),
    );
    let s = setup(&format!(
        "[[hook]]\nname = \"h\"\npre = [{:?}]\ntimeout = \"5s\"\n",
        pre.display().to_string()
    ));
    let _srv = ServeProcess::start(&s.config, &s.socket);
    let (_, a1) = prepare(&s.socket, "op-dup", "20s");
    let (_, a2) = prepare(&s.socket, "op-dup", "20s");
    assert_eq!(a1, a2);
    assert_eq!(std::fs::read_to_string(&count).unwrap().lines().count(), 1);
    let (code, other) = prepare(&s.socket, "op-other", "20s");
    assert_eq!(code, 409);
    assert_eq!(other["errors"][0]["code"], "OperationInProgress");
    assert!(frozen(&s.fs));
    let (_, r1) = release(&s.socket, "op-dup");
    let (_, r2) = release(&s.socket, "op-dup");
    assert_eq!(r1, r2);
    assert_eq!(r1["consistency"], "application", "{r1:#}");
    assert!(!frozen(&s.fs));
    let (code, unknown) = release(&s.socket, "op-never");
    assert_eq!(code, 404);
    assert_eq!(unknown["errors"][0]["code"], "UnknownOperation");
}

#[test]
fn non_root_callers_are_refused() {
    support::require_root!();
    let s = setup("");
    let _srv = ServeProcess::start(&s.config, &s.socket);
    let mode = std::fs::metadata(&s.socket).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o600);
    let as_nobody = |socket: &Path| {
        support::as_nobody(support::quiesce_bin())
            .args(["status", "--id", "x", "--socket", socket.to_str().unwrap()])
            .output()
            .unwrap()
    };
    // Layer 1: the socket's mode keeps others out.
    let out = as_nobody(&s.socket);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ermission denied"));
    // Layer 2: even with the mode opened (and the directories traversable), peer credentials
    // refuse the caller.
    let opened = support::OpenToOthers::new(&s.socket);
    let out = as_nobody(&s.socket);
    drop(opened);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(v["errors"][0]["code"], "Unauthorized", "{v:#} {out:?}");
}

#[test]
fn server_killed_while_frozen_is_thawed_by_the_guard() {
    support::require_root!();
    let s = setup("");
    let mut srv = ServeProcess::start(&s.config, &s.socket);
    let (_, answer) = prepare(&s.socket, "op-kill", "30s");
    assert_eq!(answer["state"], "frozen");
    assert!(frozen(&s.fs));
    srv.signal("KILL");
    srv.wait_exit(Duration::from_secs(5))
        .expect("server exited");
    let start = Instant::now();
    while frozen(&s.fs) {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "guard did not thaw"
        );
    }
}

#[test]
fn sigterm_thaws_and_shuts_down_cleanly() {
    support::require_root!();
    let s = setup("");
    let mut srv = ServeProcess::start(&s.config, &s.socket);
    let (_, answer) = prepare(&s.socket, "op-term", "30s");
    assert_eq!(answer["state"], "frozen");
    srv.signal("TERM");
    let st = srv
        .wait_exit(Duration::from_secs(10))
        .expect("server exited");
    assert!(st.success(), "{st:?}");
    assert!(!frozen(&s.fs));
    assert!(!s.socket.exists(), "socket removed");
}

#[test]
fn health_and_bad_requests() {
    support::require_root!();
    let s = setup("");
    let _srv = ServeProcess::start(&s.config, &s.socket);
    let (code, v) = call(&s.socket, "GET", "/healthz", None, T).unwrap();
    assert_eq!((code, v["status"].as_str()), (200, Some("ok")));
    let (code, v) = call(&s.socket, "POST", "/v1/operations/..%2f/prepare", None, T).unwrap();
    assert_eq!(code, 400);
    assert_eq!(v["errors"][0]["code"], "InvalidRequest");
    let (code, v) = call(
        &s.socket,
        "POST",
        "/v1/operations/a/prepare",
        Some(&json!({"deadline": 5})),
        T,
    )
    .unwrap();
    assert_eq!(code, 400, "{v:#}");
    let (code, _) = call(&s.socket, "GET", "/nope", None, T).unwrap();
    assert_eq!(code, 404);
    // /metrics is Prometheus text; after one served operation it shows it.
    let (_, a) = prepare(&s.socket, "op-metrics", "20s");
    assert_eq!(a["state"], "frozen");
    release(&s.socket, "op-metrics");
    let metrics = raw_get(&s.socket, "/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(metrics.contains("text/plain"), "{metrics}");
    assert!(
        metrics.contains("quiesce_runs_total{status=\"succeeded\"} 1"),
        "{metrics}"
    );
    assert!(!frozen(&s.fs));
}

fn raw_get(socket: &Path, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: q\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn mounts_scope_freezes_exactly_the_named_mount_and_refuses_others() {
    support::require_root!();
    let s = setup("");
    let other = LoopFs::new("ext4", 64);
    let _srv = ServeProcess::start(&s.config, &s.socket);
    let mp = other.mount_point.to_str().unwrap();
    let (code, answer) = call(
        &s.socket,
        "POST",
        "/v1/operations/op-m/prepare",
        Some(&json!({ "scope": { "mounts": [mp] }, "caller": "guest-agent" })),
        T,
    )
    .unwrap();
    assert_eq!(code, 200, "{answer:#}");
    assert_eq!(answer["state"], "frozen");
    assert_eq!(answer["frozen"], json!([mp]));
    assert!(frozen(&other), "the named mount is frozen");
    assert!(!frozen(&s.fs), "the configured plan is not");
    let (_, report) = release(&s.socket, "op-m");
    assert_eq!(report["frozen"], json!([mp]), "{report:#}");
    assert_eq!(report["caller"], "guest-agent");
    assert!(!frozen(&other));

    let sub = other.path("sub");
    std::fs::create_dir_all(&sub).unwrap();
    let (code, refused) = call(
        &s.socket,
        "POST",
        "/v1/operations/op-bad/prepare",
        Some(&json!({ "scope": { "mounts": [sub] } })),
        T,
    )
    .unwrap();
    assert_eq!(code, 500, "{refused:#}");
    assert_eq!(refused["state"], "failed");
    assert_eq!(refused["errors"][0]["code"], "InvalidFreezePlan");
    let msg = refused["errors"][0]["message"].as_str().unwrap();
    assert!(
        msg.contains("requested mount") && msg.contains("not a mount point"),
        "{msg}"
    );
    assert!(!frozen(&other));
}
