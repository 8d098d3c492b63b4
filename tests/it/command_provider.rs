//! The `command` snapshot provider with real processes: ids from stdout, the environment it
//! gets (including a real loop-mounted ext4 described as frozen, not actually frozen),
//! failures with stderr, and timeouts that kill its whole tree.

use crate::support;

use quiesce::codes::ErrorCode;
use quiesce::freeze::plan::Target;
use quiesce::snapshot::command::CommandProvider;
use quiesce::snapshot::{Provider, SnapshotContext, SnapshotError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::{LoopFs, Scratch};

fn ctx<'a>(frozen: &'a [Target], timeout_ms: u64) -> SnapshotContext<'a> {
    SnapshotContext {
        operation_id: "op-cmd-7",
        frozen,
        timeout: Duration::from_millis(timeout_ms),
    }
}

fn argv(script: &Path, args: &[&str]) -> Vec<String> {
    std::iter::once(script.display().to_string())
        .chain(args.iter().map(|s| s.to_string()))
        .collect()
}

fn alive(pid: i32) -> bool {
    quiesce::process::stat_state_pgrp(pid)
        .map(|(st, _)| st != 'Z' && st != 'X')
        .unwrap_or(false)
}

#[test]
fn stdout_lines_are_snapshot_ids() {
    let d = Scratch::new("cmd-ids");
    let s = d.script(
        "snap",
        "#!/bin/sh\necho '  snap-0001  '\necho\necho '   '\necho \"snap-$1\"\necho progress >&2\n",
    );
    let mut p = CommandProvider::new(argv(&s, &["two words"]));
    assert_eq!(p.name(), "command");
    let ids = p.take(&ctx(&[], 5000)).unwrap();
    let ids: Vec<(&str, &str)> = ids
        .iter()
        .map(|r| (r.provider.as_str(), r.id.as_str()))
        .collect();
    assert_eq!(
        ids,
        vec![("command", "snap-0001"), ("command", "snap-two words")]
    );
}

#[test]
fn bare_command_name_is_found_in_the_clean_path() {
    let mut p = CommandProvider::new(vec!["echo".into(), "id-from-echo".into()]);
    let ids = p.take(&ctx(&[], 5000)).unwrap();
    assert_eq!(ids.len(), 1);
    assert_eq!(ids[0].id, "id-from-echo");
}

fn env_of(out: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_to_string(out)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("PWD=") && !l.starts_with("SHLVL=") && !l.starts_with("_="))
        .map(String::from)
        .collect();
    v.sort();
    v
}

#[test]
fn environment_with_nothing_frozen() {
    let d = Scratch::new("cmd-env0");
    let out = d.join("env");
    let s = d.script(
        "snap",
        "#!/bin/sh\nenv > \"$1\"\npwd >> \"$1.cwd\"\nreadlink /proc/$$/fd/0 >> \"$1.cwd\"\necho id\n",
    );
    CommandProvider::new(argv(&s, &[out.to_str().unwrap()]))
        .take(&ctx(&[], 5000))
        .unwrap();
    assert_eq!(
        env_of(&out),
        vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "QUIESCE_FROZEN_COUNT=0",
            "QUIESCE_FROZEN_DEVICES=",
            "QUIESCE_FROZEN_MOUNTS=",
            "QUIESCE_OPERATION_ID=op-cmd-7",
        ]
    );
    assert_eq!(
        std::fs::read_to_string(d.join("env.cwd")).unwrap(),
        "/\n/dev/null\n"
    );
}

#[test]
fn environment_names_the_frozen_set() {
    support::require_root!();
    // A real ext4 on a loop device, described to the provider; it is not frozen here.
    let fs = LoopFs::new("ext4", 32);
    let (major, minor) = {
        let s = fs.dev_string();
        let (a, b) = s.split_once(':').unwrap();
        (a.parse().unwrap(), b.parse().unwrap())
    };
    let t = Target {
        mount_point: fs.mount_point.clone(),
        also_mounted_at: vec![],
        major,
        minor,
        fstype: "ext4".into(),
        source: fs.device.clone(),
    };
    let second = Target {
        mount_point: PathBuf::from("/srv/data"),
        source: "/dev/loop99".into(),
        ..t.clone()
    };
    let frozen = vec![t, second];
    let d = Scratch::new("cmd-env1");
    let out = d.join("env");
    let s = d.script(
        "snap",
        "#!/bin/sh\nenv > \"$1\"\n# the command may read the frozen fs\nls \"${QUIESCE_FROZEN_MOUNTS%%:*}\" >/dev/null || exit 9\necho \"snap-of-$QUIESCE_FROZEN_COUNT\"\n",
    );
    let ids = CommandProvider::new(argv(&s, &[out.to_str().unwrap()]))
        .take(&ctx(&frozen, 5000))
        .unwrap();
    assert_eq!(ids[0].id, "snap-of-2");
    let env = env_of(&out);
    assert!(env.contains(&format!(
        "QUIESCE_FROZEN_MOUNTS={}:/srv/data",
        fs.mount_point.display()
    )));
    assert!(env.contains(&format!("QUIESCE_FROZEN_DEVICES={}:/dev/loop99", fs.device)));
    assert!(env.contains(&"QUIESCE_FROZEN_COUNT=2".to_string()));
}

#[test]
fn non_zero_exit_is_snapshot_failed_with_stderr() {
    let d = Scratch::new("cmd-fail");
    let s = d.script(
        "snap",
        "#!/bin/sh\necho partial-id\necho 'ERROR: quota exceeded for snapshots' >&2\nexit 3\n",
    );
    let e = CommandProvider::new(argv(&s, &[]))
        .take(&ctx(&[], 5000))
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::SnapshotFailed);
    let SnapshotError::CommandFailed { end, stderr, .. } = &e else {
        panic!("{e:?}");
    };
    assert_eq!(end, "exited with code 3");
    assert!(stderr.contains("quota exceeded"), "{stderr}");
    assert!(
        e.to_string().contains("; stderr: ERROR: quota exceeded"),
        "{e}"
    );
}

#[test]
fn missing_command_is_snapshot_failed() {
    let e = CommandProvider::new(vec!["/nonexistent/take-snapshot".into()])
        .take(&ctx(&[], 5000))
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::SnapshotFailed);
    assert!(matches!(e, SnapshotError::CommandStart { .. }), "{e:?}");
    assert!(e.to_string().contains("cannot start"), "{e}");
    let e = CommandProvider::new(vec![])
        .take(&ctx(&[], 5000))
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::SnapshotFailed);
    assert!(matches!(e, SnapshotError::EmptyCommand), "{e:?}");
}

#[test]
fn timeout_is_snapshot_timeout_and_the_tree_is_killed() {
    let d = Scratch::new("cmd-timeout");
    d.script(
        "child.sh",
        "trap '' TERM\necho $$ > \"$1/child\"\nexec sleep 1000\n",
    );
    let s = d.script(
        "snap",
        "#!/bin/sh\necho $$ > \"$1/leader\"\n/bin/sh \"$1/child.sh\" \"$1\" &\nsleep 1000\n",
    );
    let started = Instant::now();
    let e = CommandProvider::new(argv(&s, &[d.path.to_str().unwrap()]))
        .with_kill_grace(Duration::from_millis(200))
        .take(&ctx(&[], 600))
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::SnapshotTimeout, "{e:?}");
    assert!(matches!(e, SnapshotError::CommandTimedOut { .. }), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    for f in ["leader", "child"] {
        let pid: i32 = std::fs::read_to_string(d.join(f))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(!alive(pid), "{f} {pid} survived");
    }
}

#[test]
fn too_much_stdout_fails_instead_of_truncating_ids() {
    let d = Scratch::new("cmd-flood");
    let s = d.script("snap", "#!/bin/sh\nyes snapshot-id | head -c 3000000\n");
    let e = CommandProvider::new(argv(&s, &[]))
        .take(&ctx(&[], 10_000))
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::SnapshotFailed);
    assert!(matches!(e, SnapshotError::TooMuchOutput { .. }), "{e:?}");
    assert!(e.to_string().contains("one snapshot id per line"), "{e}");
}

/// A command stuck writing to a frozen filesystem cannot be killed until the thaw: after
/// the timeout it is terminated once (SIGTERM, grace, SIGKILL, KILL_WAIT), not twice, so
/// the freeze is not held longer than that.
#[test]
fn a_command_stuck_on_a_frozen_filesystem_is_terminated_once() {
    support::require_root!();
    let fs = LoopFs::new("ext4", 64);
    support::sh("fsfreeze", &["-f", fs.mount_point.to_str().unwrap()]);
    let target = fs.path("stuck");
    let started = Instant::now();
    let e = CommandProvider::new(vec![
        "/bin/sh".into(),
        "-c".into(),
        "echo x > \"$0\"".into(),
        target.display().to_string(),
    ])
    .with_kill_grace(Duration::from_millis(200))
    .take(&ctx(&[], 500))
    .unwrap_err();
    let took = started.elapsed();
    support::thaw(&fs.mount_point);
    assert_eq!(e.code(), ErrorCode::SnapshotTimeout, "{e:?}");
    assert!(matches!(e, SnapshotError::CommandTimedOut { .. }), "{e:?}");
    // 0.5 s timeout + 0.2 s grace + KILL_WAIT (2 s), plus slack; twice that took ~5 s.
    assert!(took < Duration::from_millis(3900), "took {took:?}");
}

/// The command's stderr is quoted like hook output (one function): a newline cannot start
/// a forged log line, a terminal escape reaches nobody's terminal.
#[test]
fn stderr_in_the_message_is_quoted_like_hook_output() {
    let d = Scratch::new("cmd-forge");
    let s = d.script(
        "snap",
        "#!/bin/sh\nprintf 'bad\\nINFO snapshot succeeded\\033[2J\\n' >&2\nexit 3\n",
    );
    let e = CommandProvider::new(argv(&s, &[]))
        .take(&ctx(&[], 5000))
        .unwrap_err();
    let message = e.to_string();
    assert!(!message.contains('\n'), "{message:?}");
    assert!(!message.contains('\u{1b}'), "{message:?}");
    assert!(
        message.contains("bad\\nINFO snapshot succeeded\\u{1b}[2J"),
        "{message:?}"
    );
}
