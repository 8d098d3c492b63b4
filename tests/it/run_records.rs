//! What an operator sees after the fact, through the real binary: logs written from inside
//! the frozen window onto the frozen filesystem itself, the catalog's history across
//! succeeded, degraded and failed runs, and a run killed with SIGKILL leaving no partial row.

use crate::support;

use quiesce::report::Consistency;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{LoopFs, Scratch};

/// `history` and `snapshots` print catalog rows (not run reports), read as JSON.
fn quiesce_json(args: &[&str]) -> (i32, Value) {
    let out = Command::new(support::quiesce_bin())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
    )
}

/// `quiesce snapshot --json --config CONFIG`, its report typed.
fn snapshot(config: &Path) -> support::Run {
    support::quiesce(&["snapshot", "--json"])
        .config(config)
        .run()
}

fn q(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

#[test]
fn log_and_state_on_the_frozen_filesystem() {
    support::require_root!();
    let dir = Scratch::new("frozen-log");
    let fs = LoopFs::new("ext4", 64);
    let log = fs.path("quiesce.log");
    // Log file, state dir and catalog all live on the filesystem being frozen.
    let snap = dir.script("snap.sh", "#!/bin/sh\necho snap-frozen-log\n");
    let cfg = dir.file(
        "quiesce.toml",
        &format!(
            "[paths]\nstate_dir = {}\ncatalog = {}\n[log]\nfile = {}\n[freeze]\ninclude = [{}]\n\
             timeout = \"20s\"\n[snapshot]\nprovider = \"command\"\ncommand = [{}]\n",
            q(&fs.path("state")),
            q(&fs.path("catalog.db")),
            q(&log),
            q(&fs.mount_point),
            q(&snap)
        ),
        0o600,
    );
    let run = snapshot(&cfg);
    assert_eq!(run.code, 0, "{}", run.describe());
    let report = run.report();
    assert_eq!(report.consistency, Consistency::FileSystem);
    assert_eq!(report.frozen, [fs.mount_point.to_str().unwrap()]);
    let text = std::fs::read_to_string(&log).unwrap();
    // Lines logged inside the frozen window made it to the file, after the thaw, in order.
    let started = text
        .find("snapshot command started")
        .unwrap_or_else(|| panic!("no in-window line in:\n{text}"));
    let finished = text
        .find("snapshot command succeeded")
        .unwrap_or_else(|| panic!("no end line in:\n{text}"));
    assert!(started < finished, "{text}");
    assert!(
        !fs.path("state/freeze.json").exists(),
        "state file removed after thaw"
    );
    assert!(support::writable_within(
        &fs.mount_point,
        Duration::from_secs(2)
    ));
    // The catalog on the same filesystem recorded the run after the thaw.
    let (_, hist) = quiesce_json(&["history", "--json", "--config", cfg.to_str().unwrap()]);
    assert_eq!(hist[0]["operation_id"], report.operation_id.as_str());
}

#[test]
fn history_across_outcomes_and_a_killed_run() {
    support::require_root!();
    let dir = Scratch::new("history");
    let fs = LoopFs::new("ext4", 64);
    let ok = dir.script("ok.sh", "#!/bin/sh\nexit 0\n");
    let fail = dir.script("fail.sh", "#!/bin/sh\nexit 4\n");
    let slow_snap = dir.script("slow.sh", "#!/bin/sh\nsleep 5\necho slow\n");
    let snap = dir.script("snap.sh", "#!/bin/sh\necho snap-id\n");
    let catalog = dir.join("catalog.db");
    let write_cfg = |name: &str, pre: &Path, snap: &Path, cont: bool| {
        dir.file(
            name,
            &format!(
                "[paths]\nstate_dir = {}\ncatalog = {}\n[freeze]\ninclude = [{}]\n\
                 [snapshot]\nprovider = \"command\"\ncommand = [{}]\n\
                 [[hook]]\nname = \"app\"\npre = [{}]\npost = [{}]\ncontinue_on_failure = {cont}\n",
                q(&dir.join("state")),
                q(&catalog),
                q(&fs.mount_point),
                q(snap),
                q(pre),
                q(&ok)
            ),
            0o600,
        )
    };
    let good = write_cfg("good.toml", &ok, &snap, true);
    let degraded = write_cfg("degraded.toml", &fail, &snap, true);
    let failed = write_cfg("failed.toml", &fail, &snap, false);
    // Two filesystems would be needed for "failed" with continue=false (single-volume rule
    // gives crash); use a second loop filesystem in that config.
    let fs2 = LoopFs::new("ext4", 64);
    let text = std::fs::read_to_string(&failed).unwrap().replace(
        &format!("include = [{}]", q(&fs.mount_point)),
        &format!(
            "include = [{}, {}]",
            q(&fs.mount_point),
            q(&fs2.mount_point)
        ),
    );
    std::fs::write(&failed, text).unwrap();
    let slow = write_cfg("slow.toml", &ok, &slow_snap, true);

    let mut ids = Vec::new();
    for (cfg, want) in [(&good, 0), (&degraded, 3), (&failed, 1)] {
        let run = snapshot(cfg);
        assert_eq!(run.code, want, "{}", run.describe());
        ids.push(run.report().operation_id);
    }

    // A run killed with SIGKILL inside the frozen window: no row, nothing frozen.
    let mut child = Command::new(support::quiesce_bin())
        .args(["snapshot", "--json", "--config", slow.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !dir.join("state/freeze.json").exists() {
        assert!(start.elapsed() < Duration::from_secs(10), "never froze");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(support::writable_within(
        &fs.mount_point,
        Duration::from_secs(3)
    ));

    // The next run records normally (and recovers the state the killed run left).
    let run = snapshot(&good);
    assert_eq!(run.code, 0, "{}", run.describe());
    ids.push(run.report().operation_id);

    let (code, hist) = quiesce_json(&["history", "--json", "--config", good.to_str().unwrap()]);
    assert_eq!(code, 0);
    let rows = hist.as_array().unwrap();
    assert_eq!(rows.len(), 4, "exactly the four completed runs: {hist:#}");
    let got: Vec<&str> = rows
        .iter()
        .map(|r| r["operation_id"].as_str().unwrap())
        .collect();
    let mut want: Vec<&str> = ids.iter().map(String::as_str).collect();
    want.reverse();
    assert_eq!(got, want, "newest first");
    let statuses: Vec<&str> = rows.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["succeeded", "failed", "degraded", "succeeded"]);
    let text = serde_json::to_string(&hist).unwrap();
    assert!(text.contains("Pre-ScriptExecutionFailed"), "{text}");
    // --limit, and the readable table.
    let (_, one) = quiesce_json(&[
        "history",
        "--json",
        "--limit",
        "1",
        "--config",
        good.to_str().unwrap(),
    ]);
    assert_eq!(one.as_array().unwrap().len(), 1);
    let table = Command::new(support::quiesce_bin())
        .args(["history", "--config", good.to_str().unwrap()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("degraded") && table.contains("failed"),
        "{table}"
    );
}

#[test]
fn snapshots_lists_btrfs_snapshots_with_their_consistency_and_retention() {
    support::require_root!();
    let dir = Scratch::new("snapshots-cli");
    let btrfs = LoopFs::new("btrfs", 300);
    let other = LoopFs::new("ext4", 64);
    support::sh(
        "btrfs",
        &[
            "-q",
            "subvolume",
            "create",
            btrfs.path("data").to_str().unwrap(),
        ],
    );
    support::sh(
        "btrfs",
        &[
            "-q",
            "subvolume",
            "create",
            btrfs.path("snaps").to_str().unwrap(),
        ],
    );
    std::fs::write(btrfs.path("data/file"), b"hello").unwrap();
    let cfg = dir.file(
        "quiesce.toml",
        &format!(
            "[paths]\nstate_dir = {}\ncatalog = {}\n[freeze]\ninclude = [{}]\n\
             [snapshot]\nprovider = \"btrfs\"\nsubvolumes = [{}]\ndirectory = {}\nkeep_last = 2\n",
            q(&dir.join("state")),
            q(&dir.join("catalog.db")),
            q(&other.mount_point),
            q(&btrfs.path("data")),
            q(&btrfs.path("snaps")),
        ),
        0o600,
    );
    let mut ids = Vec::new();
    for _ in 0..3 {
        let run = snapshot(&cfg);
        assert_eq!(run.code, 0, "{}", run.describe());
        let r = run.report();
        // The btrfs being snapshotted is never frozen; the other filesystem is.
        assert_eq!(r.frozen, [other.mount_point.to_str().unwrap()]);
        assert_eq!(r.consistency, Consistency::FileSystem);
        ids.push(r.snapshots[0].id.clone());
        std::thread::sleep(Duration::from_millis(1100));
    }
    let (code, list) = quiesce_json(&["snapshots", "--json", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0);
    let listed: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [ids[1].as_str(), ids[2].as_str()], "keep_last = 2");
    for s in list.as_array().unwrap() {
        assert_eq!(s["consistency"], "file-system", "{s:#}");
        assert_eq!(s["provider"], "btrfs");
    }
    let snap = btrfs.path("snaps").join(&ids[2]).join("file");
    assert_eq!(std::fs::read(&snap).unwrap(), b"hello");
    assert!(
        std::fs::write(&snap, b"x").is_err(),
        "snapshots are read-only"
    );
}

/// The `command` provider cannot see its snapshots (they are wherever its command put
/// them): `quiesce snapshots` lists what the catalog recorded of it, newest first, with
/// each run's consistency, and says where the list comes from.
#[test]
fn snapshots_lists_command_provider_snapshots_from_the_catalog() {
    let dir = Scratch::new("command-snapshots");
    let script = dir.file(
        "take.sh",
        "#!/bin/sh\necho \"img-$QUIESCE_OPERATION_ID-a\"\necho \"img-$QUIESCE_OPERATION_ID-b\"\n",
        0o700,
    );
    let cfg = dir.file(
        "quiesce.toml",
        &format!(
            "[paths]\nstate_dir = {}\ncatalog = {}\n[freeze]\nenabled = false\n\
             [snapshot]\nprovider = \"command\"\ncommand = [{}]\n",
            q(&dir.join("state")),
            q(&dir.join("catalog.db")),
            q(&script),
        ),
        0o600,
    );
    let c = cfg.to_str().unwrap();
    let (code, list) = quiesce_json(&["snapshots", "--json", "--config", c]);
    assert_eq!((code, list), (0, Value::Array(Vec::new())), "nothing yet");
    let mut runs = Vec::new();
    for _ in 0..2 {
        let run = snapshot(&cfg);
        assert_eq!(run.code, 0, "{}", run.describe());
        runs.push(run.report());
        std::thread::sleep(Duration::from_millis(1100));
    }
    let (code, list) = quiesce_json(&["snapshots", "--json", "--config", c]);
    assert_eq!(code, 0);
    let listed: Vec<(&str, &str, &str)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert_eq!(
                (&s["provider"], &s["from_catalog"]),
                (&"command".into(), &true.into())
            );
            (
                s["id"].as_str().unwrap(),
                s["operation_id"].as_str().unwrap(),
                s["consistency"].as_str().unwrap(),
            )
        })
        .collect();
    let want: Vec<(String, &str, &str)> = runs
        .iter()
        .rev()
        .flat_map(|r| {
            r.snapshots.iter().map(move |s| {
                (
                    s.id.clone(),
                    r.operation_id.as_str(),
                    r.consistency.as_str(),
                )
            })
        })
        .collect();
    assert_eq!(want.len(), 4, "two ids per run");
    let want: Vec<(&str, &str, &str)> = want.iter().map(|(i, o, c)| (i.as_str(), *o, *c)).collect();
    assert_eq!(
        listed, want,
        "newest run first, ids in the order the command printed"
    );
    let human = support::quiesce(&["snapshots"]).config(&cfg).run();
    assert_eq!(human.code, 0, "{}", human.describe());
    assert!(
        human.stdout.contains("as recorded in the catalog")
            && human.stdout.contains(&runs[1].snapshots[0].id),
        "{}",
        human.stdout
    );
}
