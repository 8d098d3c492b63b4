//! Pipeline rules through the real binary that the other files do not cover.

mod support;

use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};
use support::{LoopFs, Scratch};

fn q(p: &std::path::Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// A snapshot that outlives the freeze guard's deadline is cut at that deadline, and a held
/// hook (think: a database lock) is released then, not when the provider's own, longer
/// timeout would end.
#[test]
fn a_hold_never_outlives_the_freeze_deadline() {
    let dir = Scratch::new("hold-deadline");
    let fs = LoopFs::new("ext4", 64);
    let released = dir.join("released");
    let hold = dir.script(
        "hold.sh",
        &format!(
            "#!/bin/sh\necho READY\nwhile read -r _; do :; done\ndate +%s.%N > {}\n",
            released.display()
        ),
    );
    let slow = dir.script("slow-snapshot.sh", "#!/bin/sh\nsleep 60\n");
    let cfg = dir.file(
        "quiesce.toml",
        &format!(
            "[paths]\nstate_dir = {}\ncatalog = {}\n[freeze]\ninclude = [{}]\ntimeout = \"2s\"\n\
             [snapshot]\nprovider = \"command\"\ncommand = [{}]\ntimeout = \"120s\"\n\
             [[hook]]\nname = \"db\"\npre = [{}]\nhold = true\ntimeout = \"10s\"\n",
            q(&dir.join("state")),
            q(&dir.join("catalog.db")),
            q(&fs.mount_point),
            q(&slow),
            q(&hold)
        ),
        0o600,
    );
    let start = Instant::now();
    let out = Command::new(support::quiesce_bin())
        .args(["snapshot", "--json", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let took = start.elapsed();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(took < Duration::from_secs(15), "took {took:?}: {report:#}");
    assert!(released.exists(), "the held hook was released");
    let codes: Vec<&str> = report["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["code"].as_str().unwrap())
        .collect();
    assert!(codes.contains(&"SnapshotTimeout"), "{report:#}");
    assert_eq!(report["consistency"], "none");
    assert_eq!(report["status"], "failed");
    assert_eq!(out.status.code(), Some(1));
    assert!(support::writable_within(
        &fs.mount_point,
        Duration::from_secs(2)
    ));
}
