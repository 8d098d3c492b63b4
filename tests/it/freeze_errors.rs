//! Failure paths of freeze() on real filesystems: a guard that cannot start, and a
//! filesystem without freeze support. One test function, because it switches the
//! process-wide guard program (`support::OtherGuardProgram`).
use crate::support;

use quiesce::codes::ErrorCode;
use quiesce::config::FreezeConfig;
use quiesce::freeze::{self, lock::OpLock, mountinfo, plan, state, FreezeOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use support::{writable_within, LoopFs, Scratch};

fn opts(state_dir: &Path) -> FreezeOptions {
    FreezeOptions {
        operation_id: "errors".into(),
        timeout: Duration::from_secs(30),
        state_dir: state_dir.to_path_buf(),
    }
}

/// A tmpfs this test mounts (and unmounts on drop, thawing first just in case).
struct OwnTmpfs {
    mnt: PathBuf,
}

impl OwnTmpfs {
    fn new(mnt: PathBuf) -> OwnTmpfs {
        std::fs::create_dir_all(&mnt).unwrap();
        support::sh(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                "size=1m",
                "quiesce-test",
                mnt.to_str().unwrap(),
            ],
        );
        OwnTmpfs { mnt }
    }
}

impl Drop for OwnTmpfs {
    fn drop(&mut self) {
        support::thaw(&self.mnt);
        let _ = Command::new("umount")
            .arg(&self.mnt)
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn freeze_failure_paths() {
    support::require_root!();
    let a = LoopFs::new("ext4", 64);
    let st = Scratch::new("errors-state");
    let p = plan::plan_system(
        &FreezeConfig {
            include: vec![a.mount_point.clone()],
            ..FreezeConfig::default()
        },
        &[],
    )
    .unwrap();

    // 1. A guard program that is not a guard: nothing is frozen, the cause is named.
    let lock = OpLock::acquire(&st.path).unwrap();
    let errs = {
        let _not_a_guard = support::OtherGuardProgram::set(Path::new("/bin/true"));
        match freeze::freeze(&p, &lock, &opts(&st.path)) {
            Ok(_) => panic!("froze without a guard"),
            Err(e) => e,
        }
    };
    assert_eq!(errs[0].code, ErrorCode::FreezeFailed);
    assert!(
        errs[0].message.contains("run_if_requested"),
        "{}",
        errs[0].message
    );
    assert!(writable_within(&a.mount_point, Duration::from_secs(2)));
    assert!(!state::path(&st.path).exists());

    // 2. A filesystem without freeze support (a tmpfs of our own, forced into a plan the
    //    planner would refuse): FreezeNotSupported, and the ext4 frozen alongside it is
    //    thawed again.
    let _guard = support::library_guard();
    let t = OwnTmpfs::new(st.join("tmpfs"));
    let m = mountinfo::read_self()
        .unwrap()
        .into_iter()
        .find(|m| m.mount_point == t.mnt)
        .unwrap();
    let refused = plan::plan_system(
        &FreezeConfig {
            include: vec![t.mnt.clone()],
            ..FreezeConfig::default()
        },
        &[],
    )
    .unwrap_err();
    assert!(
        refused[0].message.contains("pseudo filesystem (tmpfs)"),
        "{}",
        refused[0].message
    );
    let mut forced = p.clone();
    forced.targets.push(plan::Target {
        mount_point: t.mnt.clone(),
        also_mounted_at: vec![],
        major: m.major,
        minor: m.minor,
        fstype: m.fstype.clone(),
        source: m.source.clone(),
    });
    forced.layers = vec![vec![0, 1]];
    let errs = match freeze::freeze(&forced, &lock, &opts(&st.path)) {
        Ok(_) => panic!("froze a tmpfs"),
        Err(e) => e,
    };
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].code, ErrorCode::FreezeNotSupported);
    assert!(errs[0].message.contains(t.mnt.to_str().unwrap()));
    assert!(writable_within(&a.mount_point, Duration::from_secs(2)));
    assert!(!state::path(&st.path).exists());

    // 3. A plan whose mount point now holds another filesystem (mounted over it since
    //    planning) is refused before anything is frozen.
    let mut stale = p.clone();
    stale.targets[0].minor += 1000;
    let errs = match freeze::freeze(&stale, &lock, &opts(&st.path)) {
        Ok(_) => panic!("froze a stale plan"),
        Err(e) => e,
    };
    assert_eq!(errs[0].code, ErrorCode::FreezeFailed);
    assert!(
        errs[0].message.contains("no longer holds"),
        "{}",
        errs[0].message
    );

    // And the normal path still works after all that.
    let frozen = freeze::freeze(&p, &lock, &opts(&st.path)).unwrap();
    let out = frozen.thaw();
    assert!(out.problems.is_empty(), "{:?}", out.problems);
    drop(t);
}
