//! Trust checks through the public API: unsafe scripts are refused with Azure's codes and never
//! run, and what runs is the descriptor that was checked, even if the path is swapped.

use crate::support;

use quiesce::codes::ErrorCode;
use quiesce::config::ScriptSpec;
use quiesce::hooks::{run_script, AttemptEnd, Limits, Phase, RunContext};
use quiesce::process::Launch;
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
    support::require_root!("the trust checks accept only root-owned scripts and configs");
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
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let d = Scratch::new("trust-gwdir");
    std::fs::create_dir(d.join("hooks")).unwrap();
    let (p, marker) = marker_script(&d, "hooks/pre", 0o700);
    std::fs::set_permissions(d.join("hooks"), std::fs::Permissions::from_mode(0o770)).unwrap();
    assert_refused(&p, &marker, "writable by group/others");
}

#[test]
fn setuid_script_is_refused() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let d = Scratch::new("trust-setuid");
    let (p, marker) = marker_script(&d, "pre", 0o4700);
    assert_refused(&p, &marker, "set-uid");
}

#[test]
fn group_readable_script_is_refused() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let d = Scratch::new("trust-gread");
    let (p, marker) = marker_script(&d, "pre", 0o740);
    assert_refused(&p, &marker, "group/others");
}

#[test]
fn non_root_script_is_refused() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
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
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let d = Scratch::new("trust-config");
    let ok = d.file("quiesce.toml", "a = 1\n", 0o600);
    assert!(open_config(&ok).is_ok());
    let bad = d.file("bad.toml", "a = 1\n", 0o644);
    assert!(matches!(
        open_config(&bad),
        Err(TrustError::Insecure { .. })
    ));
}

fn run_trusted(tf: &quiesce::trust::TrustedFile) -> (AttemptEnd, String) {
    let mut p = Launch::trusted(tf, &[]).unwrap().spawn().unwrap();
    let end = p.run(
        Instant::now() + Duration::from_secs(5),
        Duration::from_millis(200),
    );
    (end, p.stdout_tail().to_string_lossy())
}

/// Scripts run by their checked path (`$0` is real). The window between the check and the
/// exec is closed by the walk itself: every directory on the path is root's and not writable
/// by group/others, so another user can neither rename, replace nor remove the file.
#[test]
fn scripts_run_by_their_checked_path_and_only_root_can_swap_them() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    use std::os::unix::process::CommandExt;
    let d = Scratch::new("trust-by-path");
    let path = d.script("pre", "#!/bin/sh\necho \"zero=$0\"\n");
    let tf = open_script(&path).unwrap();
    let (end, out) = run_trusted(&tf);
    assert_eq!(end, AttemptEnd::Exited { code: 0 });
    assert_eq!(out, format!("zero={}\n", path.display()));
    for cmd in [
        format!("mv {0} {0}.x", path.display()),
        format!("rm -f {}", path.display()),
        format!("ln -sf /bin/true {}", path.display()),
    ] {
        let st = std::process::Command::new("/bin/sh")
            .args(["-c", &cmd])
            .uid(65534)
            .gid(65534)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(!st.success(), "{cmd} must be refused to another user");
    }
    assert_eq!(run_trusted(&open_script(&path).unwrap()).1, out);
}
