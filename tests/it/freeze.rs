//! The freeze engine on real loop filesystems (ext4, xfs, btrfs) that the tests create:
//! real FIFREEZE/FITHAW, a real guard process, real state files and locks. Every plan
//! names its mount points explicitly (never "all eligible" on this machine).
use crate::support;

use quiesce::codes::ErrorCode;
use quiesce::config::FreezeConfig;
use quiesce::freeze::{self, lock::OpLock, plan, state, FreezeOptions, GuardReason};
use quiesce::report::{Consistency, Status};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::{writable_within, BindMount, LoopFs, Scratch, WriteProbe};

const FROZEN_CHECK: Duration = Duration::from_millis(300);
const THAWED_CHECK: Duration = Duration::from_secs(5);

/// The library's guard is the quiesce binary (its main dispatches `__guard`); the test
/// harness itself cannot be re-executed as one. Held for the whole test.
fn setup() -> std::sync::RwLockReadGuard<'static, ()> {
    support::library_guard()
}

fn cfg(include: &[&Path]) -> FreezeConfig {
    FreezeConfig {
        include: include.iter().map(|p| p.to_path_buf()).collect(),
        ..FreezeConfig::default()
    }
}

fn plan_for(include: &[&Path]) -> plan::Plan {
    plan::plan_system(&cfg(include), &[]).expect("plan")
}

fn opts(state_dir: &Path, timeout: Duration) -> FreezeOptions {
    FreezeOptions {
        operation_id: format!("test-{}", std::process::id()),
        timeout,
        state_dir: state_dir.to_path_buf(),
    }
}

/// Assert `dir` is frozen (a write probe does not finish) and return the probe, which
/// must finish once thawed.
fn assert_frozen(dir: &Path) -> WriteProbe {
    let mut p = WriteProbe::start(dir);
    assert_eq!(
        p.finished_within(FROZEN_CHECK),
        None,
        "{} is writable but should be frozen",
        dir.display()
    );
    p
}

fn assert_thawed(mut probe: WriteProbe, dir: &Path) {
    assert_eq!(
        probe.finished_within(THAWED_CHECK),
        Some(true),
        "write to {} still blocked after thaw",
        dir.display()
    );
    assert!(
        writable_within(dir, THAWED_CHECK),
        "{} not writable",
        dir.display()
    );
}

#[test]
fn freeze_and_thaw_ext4_xfs_btrfs_together() {
    support::require_root!();
    let _guard = setup();
    let a = LoopFs::new("ext4", 64);
    let b = LoopFs::new("xfs", 320);
    let c = LoopFs::new("btrfs", 128);
    let st = Scratch::new("state");
    let p = plan_for(&[&a.mount_point, &b.mount_point, &c.mount_point]);
    assert_eq!(p.targets.len(), 3);
    assert_eq!(p.layers, vec![vec![0, 1, 2]]);
    let types: Vec<&str> = p.targets.iter().map(|t| t.fstype.as_str()).collect();
    assert_eq!(types, vec!["ext4", "xfs", "btrfs"]);

    let lock = OpLock::acquire(&st.path).unwrap();
    let frozen = freeze::freeze(&p, &lock, &opts(&st.path, Duration::from_secs(30))).unwrap();
    assert_eq!(
        frozen.mount_points(),
        vec![
            a.mount_point.clone(),
            b.mount_point.clone(),
            c.mount_point.clone()
        ]
    );
    let probes: Vec<WriteProbe> = [&a, &b, &c]
        .iter()
        .map(|f| assert_frozen(&f.mount_point))
        .collect();
    assert_eq!(frozen.guard_fired(), None);

    let out = frozen.thaw();
    assert!(out.problems.is_empty(), "{:?}", out.problems);
    assert_eq!(out.guard_fired, None);
    assert!(
        out.frozen_ms >= FROZEN_CHECK.as_millis() as u64 * 3,
        "{}",
        out.frozen_ms
    );
    assert!(out.thaw_ms < 1000, "{}", out.thaw_ms);
    for (probe, f) in probes.into_iter().zip([&a, &b, &c]) {
        assert_thawed(probe, &f.mount_point);
    }
    assert!(!state::path(&st.path).exists(), "state file left behind");
}

#[test]
fn state_file_is_written_before_the_freeze_and_removed_after() {
    support::require_root!();
    let _guard = setup();
    let a = LoopFs::new("ext4", 64);
    let st = Scratch::new("state");
    let p = plan_for(&[&a.mount_point]);
    let lock = OpLock::acquire(&st.path).unwrap();
    let frozen = freeze::freeze(&p, &lock, &opts(&st.path, Duration::from_secs(30))).unwrap();
    let probe = assert_frozen(&a.mount_point);
    let s = state::StateFile::read(&st.path)
        .unwrap()
        .expect("state file while frozen");
    assert_eq!(s.operation_id, format!("test-{}", std::process::id()));
    assert_eq!(s.agent_pid, std::process::id());
    assert_eq!(s.guard_pid, Some(frozen.guard_pid()));
    assert_eq!(s.targets.len(), 1);
    assert_eq!(s.targets[0].path(), a.mount_point);
    assert_eq!(
        format!("{}:{}", s.targets[0].major, s.targets[0].minor),
        a.dev_string()
    );
    // The guard process is alive and is the quiesce binary in guard mode.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", frozen.guard_pid())).unwrap();
    assert!(String::from_utf8_lossy(&cmdline).contains("__guard"));
    let out = frozen.thaw();
    assert!(out.problems.is_empty(), "{:?}", out.problems);
    assert_thawed(probe, &a.mount_point);
    assert!(state::StateFile::read(&st.path).unwrap().is_none());
}

#[test]
fn bind_mount_is_frozen_once() {
    support::require_root!();
    let _guard = setup();
    let a = LoopFs::new("ext4", 64);
    std::fs::create_dir_all(a.path("sub")).unwrap();
    let st = Scratch::new("state");
    let bind = BindMount::new(&a.path("sub"), &st.join("bind"));

    let p = plan_for(&[&a.mount_point]);
    assert_eq!(p.targets.len(), 1);
    assert_eq!(p.targets[0].also_mounted_at, vec![bind.target.clone()]);
    let d = p
        .decisions
        .iter()
        .find(|d| d.mount_point == bind.target)
        .unwrap();
    assert!(
        d.freeze && d.reason.contains("same filesystem"),
        "{}",
        d.reason
    );
    // Naming both mount points still gives one target (one FIFREEZE; a second one
    // through the bind would fail with EBUSY).
    let p = plan_for(&[&a.mount_point, &bind.target]);
    assert_eq!(p.targets.len(), 1);
    assert_eq!(p.targets[0].mount_point, a.mount_point);

    let lock = OpLock::acquire(&st.path.join("run")).unwrap();
    let frozen = freeze::freeze(
        &p,
        &lock,
        &opts(&st.path.join("run"), Duration::from_secs(30)),
    )
    .unwrap();
    let probe = assert_frozen(&bind.target);
    let out = frozen.thaw();
    assert!(out.problems.is_empty(), "{:?}", out.problems);
    assert_thawed(probe, &bind.target);
}

#[test]
fn nested_mounts_are_frozen_independently() {
    support::require_root!();
    let _guard = setup();
    let parent = LoopFs::new("ext4", 64);
    let img = Scratch::new("nested-img");
    let child = LoopFs::create("xfs", 320, &img.join("child.img"), &parent.path("child"));
    let st = Scratch::new("state");

    // Freezing the parent alone does not freeze the filesystem mounted inside it.
    let p = plan_for(&[&parent.mount_point]);
    assert_eq!(p.targets.len(), 1);
    let lock = OpLock::acquire(&st.path).unwrap();
    let frozen = freeze::freeze(&p, &lock, &opts(&st.path, Duration::from_secs(30))).unwrap();
    let probe = assert_frozen(&parent.mount_point);
    let mut inner = WriteProbe::start(&child.mount_point);
    assert_eq!(
        inner.finished_within(THAWED_CHECK),
        Some(true),
        "child should stay writable"
    );
    let out = frozen.thaw();
    assert!(out.problems.is_empty(), "{:?}", out.problems);
    assert_thawed(probe, &parent.mount_point);

    // Both named: two targets, one layer, both frozen.
    let p = plan_for(&[&parent.mount_point, &child.mount_point]);
    assert_eq!(p.targets.len(), 2);
    assert_eq!(p.layers, vec![vec![0, 1]]);
    let frozen = freeze::freeze(&p, &lock, &opts(&st.path, Duration::from_secs(30))).unwrap();
    let p1 = assert_frozen(&parent.mount_point);
    let p2 = assert_frozen(&child.mount_point);
    let out = frozen.thaw();
    assert!(out.problems.is_empty(), "{:?}", out.problems);
    assert_thawed(p1, &parent.mount_point);
    assert_thawed(p2, &child.mount_point);
}

#[test]
fn loop_image_on_another_target_freezes_inner_first_without_deadlock() {
    support::require_root!();
    let _guard = setup();
    let outer = LoopFs::new("ext4", 400);
    let mnt = Scratch::new("inner-mnt");
    let inner = LoopFs::create("ext4", 128, &outer.path("inner.img"), &mnt.join("mnt"));
    let st = Scratch::new("state");

    let p = plan_for(&[&outer.mount_point, &inner.mount_point]);
    assert_eq!(p.targets.len(), 2);
    let idx = |mp: &Path| p.targets.iter().position(|t| t.mount_point == mp).unwrap();
    let (o, i) = (idx(&outer.mount_point), idx(&inner.mount_point));
    assert_eq!(
        p.layers,
        vec![vec![i], vec![o]],
        "inner must be frozen first"
    );
    let d = p
        .decisions
        .iter()
        .find(|d| d.mount_point == inner.mount_point)
        .unwrap();
    assert!(d.reason.contains("frozen before it"), "{}", d.reason);

    // Dirty data on the inner filesystem: its freeze must write it back through the
    // outer one, which deadlocks if the outer one is frozen first.
    let data = vec![0x5au8; 1 << 20];
    for k in 0..32 {
        std::fs::write(inner.path(&format!("dirty-{k}")), &data).unwrap();
    }
    let lock = OpLock::acquire(&st.path).unwrap();
    let start = Instant::now();
    let frozen = freeze::freeze(&p, &lock, &opts(&st.path, Duration::from_secs(30))).unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "freeze took {:?}",
        start.elapsed()
    );
    assert_eq!(
        frozen.mount_points(),
        vec![inner.mount_point.clone(), outer.mount_point.clone()]
    );
    // The state file lists the targets in freeze order, so that `recover` (which thaws
    // in reverse) thaws the image's filesystem first: the other way round, its thaw
    // would hang in the kernel behind the still frozen outer filesystem.
    let recorded = state::StateFile::read(&st.path).unwrap().unwrap();
    let recorded: Vec<PathBuf> = recorded.targets.iter().map(|t| t.path()).collect();
    assert_eq!(
        recorded,
        vec![inner.mount_point.clone(), outer.mount_point.clone()]
    );
    let po = assert_frozen(&outer.mount_point);
    let out = frozen.thaw();
    assert!(out.problems.is_empty(), "{:?}", out.problems);
    assert_eq!(out.guard_fired, None);
    assert_thawed(po, &outer.mount_point);
    // Through both: a write+fsync on the inner filesystem goes through the outer one.
    assert!(writable_within(&inner.mount_point, THAWED_CHECK));
    assert_eq!(std::fs::read(inner.path("dirty-31")).unwrap(), data);
}

#[test]
fn already_frozen_filesystem_fails_and_the_other_is_thawed_again() {
    support::require_root!();
    let _guard = setup();
    let a = LoopFs::new("ext4", 64);
    let b = LoopFs::new("ext4", 64);
    let st = Scratch::new("state");
    let p = plan_for(&[&a.mount_point, &b.mount_point]);
    support::sh("fsfreeze", &["-f", b.mount_point.to_str().unwrap()]);

    let lock = OpLock::acquire(&st.path).unwrap();
    let errs = match freeze::freeze(&p, &lock, &opts(&st.path, Duration::from_secs(30))) {
        Ok(_) => panic!("freeze of an already frozen filesystem succeeded"),
        Err(e) => e,
    };
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].code, ErrorCode::FilesystemAlreadyFrozen);
    assert!(
        errs[0].message.contains(b.mount_point.to_str().unwrap()),
        "{}",
        errs[0].message
    );
    // The filesystem we froze in the same call is thawed again...
    assert!(writable_within(&a.mount_point, Duration::from_secs(2)));
    // ...and the one somebody else froze is left as they left it.
    let probe = assert_frozen(&b.mount_point);
    support::sh("fsfreeze", &["-u", b.mount_point.to_str().unwrap()]);
    assert_thawed(probe, &b.mount_point);
    assert!(!state::path(&st.path).exists());
    // The guard is gone (it shared the lock): the lock can be taken again.
    drop(lock);
    let t = Instant::now();
    loop {
        match OpLock::acquire(&st.path) {
            Ok(_) => break,
            Err(e) if t.elapsed() > Duration::from_secs(5) => panic!("lock still held: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

#[test]
fn guard_thaws_at_the_deadline() {
    support::require_root!();
    let _guard = setup();
    let a = LoopFs::new("ext4", 64);
    let st = Scratch::new("state");
    let p = plan_for(&[&a.mount_point]);
    let lock = OpLock::acquire(&st.path).unwrap();
    let frozen = freeze::freeze(&p, &lock, &opts(&st.path, Duration::from_secs(1))).unwrap();
    let mut probe = WriteProbe::start(&a.mount_point);
    assert_eq!(probe.finished_within(Duration::from_millis(500)), None);
    // Nobody calls thaw: the guard does at 1 s.
    assert_eq!(
        probe.finished_within(Duration::from_millis(1500)),
        Some(true)
    );
    std::thread::sleep(Duration::from_millis(500));
    let fired = frozen.guard_fired().expect("guard fired");
    assert_eq!(fired.reason, GuardReason::Deadline);
    assert!(writable_within(&a.mount_point, Duration::from_secs(1)));
    let out = frozen.thaw();
    assert!(out.problems.is_empty(), "{:?}", out.problems);
    assert_eq!(
        out.guard_fired.map(|g| g.reason),
        Some(GuardReason::Deadline)
    );
    assert!(
        (900..1500).contains(&out.frozen_ms),
        "frozen_ms {} should be about the 1 s deadline",
        out.frozen_ms
    );
    assert!(!state::path(&st.path).exists());
}

#[test]
fn guard_thaws_on_its_own_sigterm() {
    support::require_root!();
    let _guard = setup();
    let a = LoopFs::new("ext4", 64);
    let st = Scratch::new("state");
    let p = plan_for(&[&a.mount_point]);
    let lock = OpLock::acquire(&st.path).unwrap();
    let frozen = freeze::freeze(&p, &lock, &opts(&st.path, Duration::from_secs(60))).unwrap();
    let probe = assert_frozen(&a.mount_point);
    support::sh("kill", &["-TERM", &frozen.guard_pid().to_string()]);
    let t = Instant::now();
    while frozen.guard_fired().is_none() && t.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        frozen.guard_fired().map(|g| g.reason),
        Some(GuardReason::Signal)
    );
    assert_thawed(probe, &a.mount_point);
    let out = frozen.thaw();
    assert!(out.problems.is_empty(), "{:?}", out.problems);
    assert_eq!(out.guard_fired.map(|g| g.reason), Some(GuardReason::Signal));
}

#[test]
fn dropping_frozen_without_thaw_still_thaws() {
    support::require_root!();
    let _guard = setup();
    let a = LoopFs::new("ext4", 64);
    let st = Scratch::new("state");
    let p = plan_for(&[&a.mount_point]);
    let lock = OpLock::acquire(&st.path).unwrap();
    let frozen = freeze::freeze(&p, &lock, &opts(&st.path, Duration::from_secs(60))).unwrap();
    let probe = assert_frozen(&a.mount_point);
    drop(frozen);
    assert_thawed(probe, &a.mount_point);
    assert!(!state::path(&st.path).exists());
}

#[test]
fn recover_thaws_what_a_crash_left_frozen() {
    support::require_root!();
    let _guard = setup();
    let a = LoopFs::new("ext4", 64);
    let st = Scratch::new("state");
    let lock = OpLock::acquire(&st.path).unwrap();
    // Nothing to recover.
    assert_eq!(state::recover(&st.path).unwrap(), Vec::<String>::new());

    // A crash: frozen, a state file naming it, no guard.
    let p = plan_for(&[&a.mount_point]);
    support::sh("fsfreeze", &["-f", a.mount_point.to_str().unwrap()]);
    let probe = assert_frozen(&a.mount_point);
    let mut gone = p.targets[0].clone();
    gone.mount_point = PathBuf::from("/nonexistent/quiesce-test");
    gone.minor = 99_999;
    let targets = vec![p.targets[0].clone(), gone];
    state::StateFile::new("crashed-op", None, &targets)
        .write(&st.path)
        .unwrap();

    let thawed = state::recover(&st.path).unwrap();
    assert_eq!(thawed, vec![a.mount_point.display().to_string()]);
    assert_thawed(probe, &a.mount_point);
    assert!(!state::path(&st.path).exists());
    // Again: nothing left.
    assert!(state::recover(&st.path).unwrap().is_empty());

    // A state file naming a filesystem that is not frozen: fine, nothing reported.
    state::StateFile::new("op2", None, &p.targets)
        .write(&st.path)
        .unwrap();
    assert!(state::recover(&st.path).unwrap().is_empty());
    assert!(!state::path(&st.path).exists());

    // A corrupt state file: reported and moved aside, so it does not block later starts.
    std::fs::write(state::path(&st.path), b"{not json").unwrap();
    let e = state::recover(&st.path).unwrap_err();
    assert_eq!(e.code, ErrorCode::StateError);
    assert!(st.path.join("freeze.json.bad").exists());
    assert!(state::recover(&st.path).unwrap().is_empty());
    drop(lock);
}

#[test]
fn second_operation_is_refused_while_the_lock_is_held() {
    let st = Scratch::new("state");
    let dir = st.join("run/quiesce");
    let first = OpLock::acquire(&dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let e = match OpLock::acquire(&dir) {
        Ok(_) => panic!("second acquire succeeded"),
        Err(e) => e,
    };
    assert_eq!(e.code, ErrorCode::OperationInProgress);
    assert!(e.message.contains("lock"), "{}", e.message);
    drop(first);
    let _again = OpLock::acquire(&dir).unwrap();

    // A state directory others can write to is refused.
    let open = st.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = match OpLock::acquire(&open) {
        Ok(_) => panic!("world-writable state dir accepted"),
        Err(e) => e,
    };
    assert_eq!(e.code, ErrorCode::StateError);
}

#[test]
fn include_errors_on_real_mounts() {
    support::require_root!();
    let a = LoopFs::new("ext4", 64);
    std::fs::create_dir_all(a.path("dir")).unwrap();
    let errs = plan::plan_system(&cfg(&[&a.path("dir"), Path::new("/proc")]), &[]).unwrap_err();
    assert_eq!(errs.len(), 2);
    assert!(errs.iter().all(|e| e.code == ErrorCode::InvalidFreezePlan));
    assert!(
        errs[0].message.contains("not a mount point"),
        "{}",
        errs[0].message
    );
    assert!(errs[1].message.contains("pseudo"), "{}", errs[1].message);
    // never_freeze: a path inside the filesystem (not created yet) keeps it out.
    let errs =
        plan::plan_system(&cfg(&[&a.mount_point]), &[a.path("snapshots/not-yet")]).unwrap_err();
    assert!(
        errs[0].message.contains("snapshot provider writes here"),
        "{}",
        errs[0].message
    );
    let p = plan::plan_system(&cfg(&[&a.mount_point]), &[PathBuf::from("/nonexistent/x")]).unwrap();
    assert_eq!(p.targets.len(), 1);
}

#[test]
fn empty_plan_is_refused() {
    let st = Scratch::new("state");
    let lock = OpLock::acquire(&st.path).unwrap();
    let errs = match freeze::freeze(
        &plan::Plan::default(),
        &lock,
        &opts(&st.path, Duration::from_secs(1)),
    ) {
        Ok(_) => panic!("empty plan frozen"),
        Err(e) => e,
    };
    assert_eq!(errs[0].code, ErrorCode::InvalidFreezePlan);
}

/// After the guard fired at its deadline, what is frozen is no longer ours: a freeze made
/// by somebody else afterwards (here `fsfreeze -f`) survives both the guard and the
/// agent's later thaw, and `frozen_ms` is the guard's real thaw, not the agent's.
#[test]
fn a_guard_that_fired_never_thaws_again() {
    support::require_root!();
    let _guard = setup();
    let a = LoopFs::new("ext4", 64);
    let st = Scratch::new("state");
    let p = plan_for(&[&a.mount_point]);
    let lock = OpLock::acquire(&st.path).unwrap();
    let frozen = freeze::freeze(&p, &lock, &opts(&st.path, Duration::from_secs(1))).unwrap();
    let mut probe = WriteProbe::start(&a.mount_point);
    assert_eq!(
        probe.finished_within(Duration::from_millis(2000)),
        Some(true),
        "the guard did not thaw at its deadline"
    );
    support::sh("fsfreeze", &["-f", a.mount_point.to_str().unwrap()]);
    // The guard must not thaw the third party's freeze on its own...
    std::thread::sleep(Duration::from_millis(400));
    let third = assert_frozen(&a.mount_point);
    // ...and neither may the agent's thaw.
    let out = frozen.thaw();
    assert_eq!(
        out.guard_fired.map(|g| g.reason),
        Some(GuardReason::Deadline)
    );
    assert!(
        (900..1500).contains(&out.frozen_ms),
        "frozen_ms {}",
        out.frozen_ms
    );
    std::thread::sleep(Duration::from_millis(200));
    let still = assert_frozen(&a.mount_point);
    support::sh("fsfreeze", &["-u", a.mount_point.to_str().unwrap()]);
    assert_thawed(third, &a.mount_point);
    assert_thawed(still, &a.mount_point);
}

fn guard_signal(frozen: &freeze::Frozen, sig: &str) {
    support::sh(
        "kill",
        &[&format!("-{sig}"), &frozen.guard_pid().to_string()],
    );
}

/// kill -9 of the guard alone: the agent notices (pidfd), thaws by itself and says so
/// with its own code; it never pretends the guard was there.
#[test]
fn a_killed_guard_is_noticed_and_the_agent_thaws() {
    support::require_root!();
    let _guard = setup();
    let a = LoopFs::new("ext4", 64);
    let st = Scratch::new("state");
    let p = plan_for(&[&a.mount_point]);
    let lock = OpLock::acquire(&st.path).unwrap();
    let frozen = freeze::freeze(&p, &lock, &opts(&st.path, Duration::from_secs(30))).unwrap();
    let mut probe = WriteProbe::start(&a.mount_point);
    assert_eq!(probe.finished_within(FROZEN_CHECK), None);
    guard_signal(&frozen, "KILL");
    // Thawed at once by the agent's watch, long before the 30 s deadline.
    assert_eq!(
        probe.finished_within(Duration::from_secs(2)),
        Some(true),
        "still frozen after the guard was killed"
    );
    // A freeze made by somebody else after that is left alone by the later thaw.
    support::sh("fsfreeze", &["-f", a.mount_point.to_str().unwrap()]);
    let out = frozen.thaw();
    assert_eq!(out.guard_fired, None);
    assert_eq!(out.guard_lost.map(|l| l.why), Some(freeze::LostWhy::Died));
    assert!(out.problems.is_empty(), "{:?}", out.problems);
    let third = assert_frozen(&a.mount_point);
    support::sh("fsfreeze", &["-u", a.mount_point.to_str().unwrap()]);
    assert_thawed(third, &a.mount_point);
}

/// SIGSTOP of the guard: it cannot answer, so the agent kills it (it must never wake up
/// later and thaw somebody else's freeze) and thaws by itself.
#[test]
fn a_stopped_guard_is_killed_and_the_agent_thaws() {
    support::require_root!();
    let _guard = setup();
    let a = LoopFs::new("ext4", 64);
    let st = Scratch::new("state");
    let p = plan_for(&[&a.mount_point]);
    let lock = OpLock::acquire(&st.path).unwrap();
    let frozen = freeze::freeze(&p, &lock, &opts(&st.path, Duration::from_secs(1))).unwrap();
    let guard_pid = frozen.guard_pid();
    guard_signal(&frozen, "STOP");
    let start = Instant::now();
    let mut probe = WriteProbe::start(&a.mount_point);
    assert_eq!(probe.finished_within(Duration::from_millis(500)), None);
    // The deadline is enforced by the agent itself: 1 s + its grace, not "never".
    assert_eq!(
        probe.finished_within(Duration::from_secs(3)),
        Some(true),
        "the stopped guard kept the filesystem frozen past the deadline"
    );
    assert!(
        start.elapsed() < Duration::from_millis(2000),
        "{:?}",
        start.elapsed()
    );
    let out = frozen.thaw();
    assert_eq!(out.guard_fired, None);
    assert_eq!(
        out.guard_lost.map(|l| l.why),
        Some(freeze::LostWhy::Unresponsive)
    );
    assert!(writable_within(&a.mount_point, THAWED_CHECK));
    assert!(
        !Path::new(&format!("/proc/{guard_pid}/status")).exists()
            || std::fs::read_to_string(format!("/proc/{guard_pid}/status"))
                .unwrap_or_default()
                .contains("zombie"),
        "the stopped guard was left behind"
    );
    drop(lock);
    // Other tests in this binary spawn processes: a child between its fork and its exec holds
    // a copy of every descriptor (ours too, until exec closes it), and moving it into its
    // cgroup can keep it there for a while on a loaded machine. So "free again" is allowed a
    // moment; a lock still held by the dead guard would stay held.
    let free_by = Instant::now() + Duration::from_secs(2);
    loop {
        match OpLock::acquire(&st.path) {
            Ok(_) => break,
            Err(e) if Instant::now() >= free_by => panic!("the lock is not free again: {e:?}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// A run that finds filesystems a crashed run left frozen thaws them first and says so in
/// its report (and so in the catalog): recovery never goes unrecorded.
#[test]
fn recovery_at_start_is_recorded_in_the_report() {
    support::require_root!();
    let _guard = setup();
    let a = LoopFs::new("ext4", 64);
    let st = Scratch::new("recorded");
    let state_dir = st.join("run");
    std::fs::create_dir_all(&state_dir).unwrap();
    std::fs::set_permissions(
        &state_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    // What a run killed together with its guard leaves behind.
    let p = plan_for(&[&a.mount_point]);
    state::StateFile::new("crashed-run", None, &p.targets)
        .write(&state_dir)
        .unwrap();
    support::sh("fsfreeze", &["-f", a.mount_point.to_str().unwrap()]);
    let config = st.file(
        "quiesce.toml",
        &format!(
            "[paths]\nstate_dir = {:?}\ncatalog = {:?}\n\n[freeze]\ninclude = [{:?}]\n\
             timeout = \"10s\"\n\n[snapshot]\nprovider = \"command\"\n\
             command = [\"/bin/true\"]\ntimeout = \"10s\"\n",
            state_dir,
            st.join("c.db"),
            a.mount_point
        ),
        0o600,
    );
    let run = support::quiesce(&["snapshot", "--json"])
        .config(&config)
        .run();
    let report = run.report();
    assert_eq!(report.status, Status::Succeeded, "{}", run.describe());
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.code == Some(ErrorCode::RecoveredFrozenFilesystems)
                && w.message.contains(a.mount_point.to_str().unwrap())),
        "{}",
        run.describe()
    );
    assert!(writable_within(&a.mount_point, THAWED_CHECK));
}

/// A `quiesce snapshot` configuration freezing `fs` around a `sleep_s` snapshot command,
/// with its own state dir under `st` (and the catalog at `catalog`).
fn instance_config(st: &Scratch, name: &str, fs: &Path, catalog: &Path, sleep_s: u32) -> PathBuf {
    st.file(
        &format!("{name}.toml"),
        &format!(
            "[paths]\nstate_dir = {:?}\ncatalog = {:?}\n\n[freeze]\ninclude = [{fs:?}]\n\
             timeout = \"20s\"\n\n[snapshot]\nprovider = \"command\"\n\
             command = [\"/bin/sleep\", \"{sleep_s}\"]\ntimeout = \"30s\"\n",
            st.join(&format!("{name}-state")),
            catalog,
        ),
        0o600,
    )
}

fn start_instance(config: &Path) -> support::Running {
    support::quiesce(&["snapshot", "--json"])
        .config(config)
        .spawn()
}

/// Wait until the instance with state dir `state_dir` has frozen (its state file exists).
fn wait_frozen(state_dir: &Path) {
    let t = Instant::now();
    while !matches!(state::StateFile::read(state_dir), Ok(Some(_))) {
        assert!(t.elapsed() < Duration::from_secs(10), "never froze");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
}

#[test]
fn two_instances_with_different_state_dirs_never_share_a_filesystem() {
    support::require_root!();
    let fs = LoopFs::new("ext4", 64);
    let other = LoopFs::new("ext4", 64);
    let st = Scratch::new("two-instances");
    let a = instance_config(&st, "a", &fs.mount_point, &st.join("a.db"), 2);
    let b = instance_config(&st, "b", &fs.mount_point, &st.join("b.db"), 0);
    let c = instance_config(&st, "c", &other.mount_point, &st.join("c.db"), 0);
    let first = start_instance(&a);
    wait_frozen(&st.join("a-state"));
    // Same filesystem, another state dir: refused, naming the holder.
    let run = start_instance(&b).wait();
    let refused = run.report();
    assert_eq!(refused.status, Status::Failed, "{}", run.describe());
    let text = &refused
        .errors
        .iter()
        .find(|e| e.code == ErrorCode::OperationInProgress)
        .unwrap_or_else(|| panic!("not OperationInProgress: {}", run.describe()))
        .message;
    assert!(
        text.contains(&format!("quiesce pid {}", first.id())) && text.contains("a-state"),
        "holder not named: {}",
        run.describe()
    );
    // Another filesystem runs in parallel.
    let run = start_instance(&c).wait();
    let parallel = run.report();
    assert_eq!(parallel.status, Status::Succeeded, "{}", run.describe());
    assert_eq!(parallel.consistency, Consistency::FileSystem);
    assert_eq!(first.wait().report().status, Status::Succeeded);
    // Once the first is done, the same filesystem is free again.
    assert_eq!(start_instance(&b).wait().report().status, Status::Succeeded);
}

#[test]
fn a_refused_run_never_touches_its_catalog_on_the_frozen_filesystem() {
    support::require_root!();
    let fs = LoopFs::new("ext4", 64);
    let st = Scratch::new("refused-catalog");
    let a = instance_config(&st, "a", &fs.mount_point, &st.join("a.db"), 4);
    let b = instance_config(&st, "b", &fs.mount_point, &fs.path("b.db"), 0);
    let first = start_instance(&a);
    wait_frozen(&st.join("a-state"));
    let t = Instant::now();
    let mut second = start_instance(&b);
    let mut done = None;
    while t.elapsed() < Duration::from_secs(2) {
        if let Some(s) = second.child.try_wait().unwrap() {
            done = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = t.elapsed();
    assert!(
        done.is_some(),
        "the refused run waited for the frozen filesystem ({took:?})"
    );
    let run = second.wait();
    assert_ne!(run.code, 0);
    assert!(
        support::codes(&run.report()).contains(&ErrorCode::OperationInProgress),
        "{}",
        run.describe()
    );
    assert!(run.stderr.contains("OperationInProgress"));
    assert_eq!(first.wait().report().status, Status::Succeeded);
    assert!(
        !fs.path("b.db").exists(),
        "the refused run created its catalog"
    );
}
