//! Pipeline rules through the real binary that the other files do not cover.

use crate::support;

use quiesce::codes::ErrorCode;
use quiesce::report::{Consistency, Status};
use std::time::Duration;
use support::{LoopFs, Scratch};

fn q(p: &std::path::Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// A snapshot that outlives the freeze guard's deadline still completes, but a held hook
/// (think: a database lock) is released at that deadline, not when the snapshot ends; and the
/// report does not claim a consistency that did not hold.
#[test]
fn a_hold_never_outlives_the_freeze_deadline() {
    support::require_root!();
    let dir = Scratch::new("hold-deadline");
    let fs = LoopFs::new("ext4", 64);
    let released = dir.join("released");
    let snapshot_end = dir.join("snapshot-end");
    let hold = dir.script(
        "hold.sh",
        &format!(
            "#!/bin/sh\necho READY\nwhile read -r _; do :; done\ndate +%s.%N > {}\n",
            released.display()
        ),
    );
    let slow = dir.script(
        "slow-snapshot.sh",
        &format!(
            "#!/bin/sh\nsleep 4\ndate +%s.%N > {}\necho late-snap\n",
            snapshot_end.display()
        ),
    );
    let cfg = dir.file(
        "quiesce.toml",
        &format!(
            "[paths]\nstate_dir = {}\ncatalog = {}\n[freeze]\ninclude = [{}]\ntimeout = \"1500ms\"\n\
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
    let run = support::quiesce(&["snapshot", "--json"]).config(&cfg).run();
    let report = run.report();
    let time = |p: &std::path::Path| -> f64 {
        std::fs::read_to_string(p)
            .unwrap_or_else(|e| panic!("{}: {e}: {}", p.display(), run.describe()))
            .trim()
            .parse()
            .unwrap()
    };
    let (released_at, snapshot_done_at) = (time(&released), time(&snapshot_end));
    assert!(
        released_at + 1.5 < snapshot_done_at,
        "released at {released_at}, snapshot done at {snapshot_done_at}"
    );
    let codes = support::codes(&report);
    assert!(
        codes.contains(&ErrorCode::FreezeGuardFired),
        "{}",
        run.describe()
    );
    assert!(
        !codes.contains(&ErrorCode::HoldLost),
        "released on purpose, not lost: {}",
        run.describe()
    );
    assert_eq!(report.snapshots[0].id, "late-snap");
    assert_eq!(report.consistency, Consistency::Crash);
    assert_eq!(report.status, Status::Degraded);
    assert_eq!(run.code, 3);
    assert!(support::writable_within(
        &fs.mount_point,
        Duration::from_secs(2)
    ));
}
