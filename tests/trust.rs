//! Trust checks through the public API: unsafe scripts are refused with Azure's codes and never
//! run, and what runs is the descriptor that was checked, even if the path is swapped.

mod support;

use quiesce::codes::ErrorCode;
use quiesce::config::ScriptSpec;
use quiesce::hooks::process::Launch;
use quiesce::hooks::{run_script, AttemptEnd, Limits, Phase, RunContext};
use quiesce::trust::{open_config, open_script, TrustError};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};
use support::Scratch;

fn run(path: &Path, phase: Phase) -> quiesce::hooks::ScriptResult {
    let ctx = RunContext {
        operation_id: "op-trust".into(),
        hook: "h".into(),
        phase,
        deadline_unix: 0,
    };
    let limits = Limits {
        timeout: Duration::from_secs(5),
        retries: 0,
        kill_grace: Duration::from_millis(200),
    };
    run_script(
        &ScriptSpec {
            path: path.to_path_buf(),
            args: vec![],
        },
        &ctx,
        limits,
    )
}

/// A script that leaves a marker if it ever runs.
fn marker_script(d: &Scratch, name: &str, mode: u32) -> (std::path::PathBuf, std::path::PathBuf) {
    let marker = d.join(&format!("{name}.ran"));
    let p = d.file(
        name,
        &format!("#!/bin/sh\ntouch {}\n", marker.display()),
        mode,
    );
    (p, marker)
}

fn assert_refused(path: &Path, marker: &Path, reason_part: &str) {
    for (phase, code) in [
        (Phase::Pre, ErrorCode::InsufficientPermissionForPreScript),
        (Phase::Post, ErrorCode::InsufficientPermissionForPostScript),
    ] {
        let r = run(path, phase);
        assert_eq!(r.error, Some(code), "{}: {r:?}", path.display());
        assert!(r.attempts.is_empty(), "nothing was started");
        assert!(r.message.contains(reason_part), "{}", r.message);
        assert_eq!(
            code.as_str(),
            match phase {
                Phase::Pre => "InsufficientPermissionforPre-Script",
                Phase::Post => "InsufficientPermissionforPost-Script",
            }
        );
    }
    assert!(!marker.exists(), "{} ran", path.display());
}

#[test]
fn symlinked_script_is_refused() {
    let d = Scratch::new("trust-symlink");
    let (real, marker) = marker_script(&d, "real", 0o700);
    let link = d.join("link");
    symlink(&real, &link).unwrap();
    assert_refused(&link, &marker, "symbolic link");
    // The real path is fine.
    assert!(run(&real, Phase::Pre).succeeded());
    assert!(marker.exists());
}

#[test]
fn script_in_group_writable_directory_is_refused() {
    let d = Scratch::new("trust-gwdir");
    std::fs::create_dir(d.join("hooks")).unwrap();
    let (p, marker) = marker_script(&d, "hooks/pre", 0o700);
    std::fs::set_permissions(d.join("hooks"), std::fs::Permissions::from_mode(0o770)).unwrap();
    assert_refused(&p, &marker, "writable by group/others");
}

#[test]
fn setuid_script_is_refused() {
    let d = Scratch::new("trust-setuid");
    let (p, marker) = marker_script(&d, "pre", 0o4700);
    assert_refused(&p, &marker, "set-uid");
}

#[test]
fn group_readable_script_is_refused() {
    let d = Scratch::new("trust-gread");
    let (p, marker) = marker_script(&d, "pre", 0o740);
    assert_refused(&p, &marker, "group/others");
}

#[test]
fn non_root_script_is_refused() {
    let d = Scratch::new("trust-owner");
    let (p, marker) = marker_script(&d, "pre", 0o700);
    std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
    assert_refused(&p, &marker, "uid 65534");
}

#[test]
fn script_in_tmp_is_refused() {
    let p = std::env::temp_dir().join(format!("quiesce-trust-it-{}", std::process::id()));
    let marker = p.with_extension("ran");
    std::fs::write(&p, format!("#!/bin/sh\ntouch {}\n", marker.display())).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
    let r = run(&p, Phase::Pre);
    let _ = std::fs::remove_file(&p);
    assert_eq!(r.error, Some(ErrorCode::InsufficientPermissionForPreScript));
    assert!(r.message.contains("/tmp is writable"), "{}", r.message);
    assert!(!marker.exists());
}

#[test]
fn directory_as_script_is_not_found() {
    let d = Scratch::new("trust-dir");
    std::fs::create_dir(d.join("sub")).unwrap();
    let r = run(&d.join("sub"), Phase::Post);
    assert_eq!(r.error, Some(ErrorCode::PostScriptNotFound));
}

#[test]
fn unsafe_config_is_refused() {
    let d = Scratch::new("trust-config");
    let ok = d.file("quiesce.toml", "a = 1\n", 0o600);
    assert!(open_config(&ok).is_ok());
    let bad = d.file("bad.toml", "a = 1\n", 0o644);
    assert!(matches!(
        open_config(&bad),
        Err(TrustError::Insecure { .. })
    ));
}

/// Rename a different script over `path` (atomic replace, as an attacker with write access
/// to the directory would).
fn swap(d: &Scratch, path: &Path, body: &str) {
    let tmp = d.file("impostor.tmp", body, 0o700);
    std::fs::rename(&tmp, path).unwrap();
}

fn run_trusted(tf: &quiesce::trust::TrustedFile) -> (AttemptEnd, String) {
    let mut p = Launch::trusted(tf, &[]).unwrap().spawn().unwrap();
    let end = p.run(
        Instant::now() + Duration::from_secs(5),
        Duration::from_millis(200),
    );
    (end, p.stdout_tail().to_string_lossy())
}

#[test]
fn swapped_file_is_never_executed_shebang() {
    let d = Scratch::new("trust-swap");
    let path = d.script("pre", "#!/bin/sh\necho original\n");
    let tf = open_script(&path).unwrap();
    assert!(tf.shebang);
    swap(&d, &path, "#!/bin/sh\necho impostor\n");
    // The path now names the impostor...
    assert!(std::fs::read_to_string(&path).unwrap().contains("impostor"));
    // ... but the checked descriptor is what runs.
    let (end, out) = run_trusted(&tf);
    assert_eq!(end, AttemptEnd::Exited { code: 0 });
    assert_eq!(out, "original\n");
    // A fresh check sees (and would run) the new file: the swap was real.
    let (_, out) = run_trusted(&open_script(&path).unwrap());
    assert_eq!(out, "impostor\n");
}

#[test]
fn swapped_file_is_never_executed_without_shebang() {
    let d = Scratch::new("trust-swap-sh");
    let path = d.script("pre", "echo original-sh\n");
    let tf = open_script(&path).unwrap();
    assert!(!tf.shebang && !tf.elf);
    swap(&d, &path, "echo impostor-sh\n");
    let (end, out) = run_trusted(&tf);
    assert_eq!(end, AttemptEnd::Exited { code: 0 });
    assert_eq!(out, "original-sh\n");
}

#[test]
fn swapped_file_is_never_executed_elf() {
    let d = Scratch::new("trust-swap-elf");
    let path = d.join("pre");
    std::fs::copy("/bin/echo", &path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
    let tf = open_script(&path).unwrap();
    assert!(tf.elf);
    swap(&d, &path, "#!/bin/sh\necho impostor\n");
    let mut p = Launch::trusted(&tf, &["from-the-checked-elf".to_string()])
        .unwrap()
        .spawn()
        .unwrap();
    let end = p.run(
        Instant::now() + Duration::from_secs(5),
        Duration::from_millis(200),
    );
    assert_eq!(end, AttemptEnd::Exited { code: 0 });
    assert_eq!(p.stdout_tail().to_string_lossy(), "from-the-checked-elf\n");
}

#[test]
fn a_script_deleted_after_the_check_still_runs_from_its_descriptor() {
    let d = Scratch::new("trust-unlink");
    let path = d.script("pre", "#!/bin/sh\necho still-me\n");
    let tf = open_script(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let (end, out) = run_trusted(&tf);
    assert_eq!(end, AttemptEnd::Exited { code: 0 });
    assert_eq!(out, "still-me\n");
}
