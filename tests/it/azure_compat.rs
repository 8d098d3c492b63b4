//! Azure compatibility through the real binary: every row of the seed's troubleshooting
//! table produced by the situation that causes it, `continueBackupOnFailure` and the
//! single-volume rule, several plugins, and `quiesce check`.
//!
//! Safety: configs made only of Azure files use `fsFreezeEnabled: false` (an Azure config has
//! no include list, so freezing would mean "every eligible filesystem" of this machine).
//! Tests that freeze use a native TOML with an explicit include list of loop filesystems.

use crate::support;

use quiesce::codes::ErrorCode;
use quiesce::hooks::Phase;
use quiesce::report::{Consistency, Status};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::{code_names, LoopFs, Run, Scratch};

/// Where runs of Azure-only configurations keep their state and catalog (Azure files cannot
/// name paths): never the machine's own `/run/quiesce` and `/var/lib/quiesce/catalog.db`.
/// One fixed directory, emptied when the first test of a run needs it: a static is never
/// dropped, so a per-process name would leave one directory behind per run.
fn default_paths() -> &'static Scratch {
    static DIR: std::sync::OnceLock<Scratch> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let path = support::scratch_base().join("azure-defaults");
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
        Scratch { path }
    })
}

fn quiesce(args: &[&str]) -> Run {
    support::quiesce(args)
        .env("QUIESCE_STATE_DIR", default_paths().join("run"))
        .env("QUIESCE_CATALOG", default_paths().join("catalog.db"))
        .run()
}

/// An Azure plugin JSON with the given script paths and settings, mode 0600.
fn plugin_json(dir: &Scratch, name: &str, pre: &Path, post: &Path, extra: &str) -> PathBuf {
    let text = format!(
        r#"{{
    "pluginName" : "ScriptRunner",
    "preScriptLocation" : "{}",
    "postScriptLocation" : "{}",
    "preScriptParams" : ["p1", "p 2"],
    "postScriptParams" : [],
    "preScriptNoOfRetries" : 0,
    "postScriptNoOfRetries" : 0,
    "timeoutInSeconds" : 5,
    "continueBackupOnFailure" : true,
    "fsFreezeEnabled" : false{extra}
}}"#,
        pre.display(),
        post.display()
    );
    // Later keys override earlier ones in `extra`: rebuild with serde to keep it valid JSON.
    let mut v: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
    if !extra.is_empty() {
        let e: serde_json::Map<String, Value> =
            serde_json::from_str(&format!("{{{}}}", extra.trim_start_matches(','))).unwrap();
        v.extend(e);
    }
    dir.file(
        name,
        &serde_json::to_string_pretty(&Value::Object(v)).unwrap(),
        0o600,
    )
}

fn plugin_host(dir: &Scratch, jsons: &[&Path]) -> PathBuf {
    let mut text = format!(
        "[pre_post]\ntimeoutInSeconds = 60\nnumberOfPlugins = {}\n",
        jsons.len()
    );
    for (i, j) in jsons.iter().enumerate() {
        text += &format!(
            "pluginName{i} = ScriptRunner\npluginPath{i} = main/ScriptRunner.py\npluginConfigPath{i} = {}\n",
            j.display()
        );
    }
    dir.file("VMSnapshotPluginHost.conf", &text, 0o600)
}

/// A native config importing Azure plugins, with a command provider and no freezing unless
/// `include` names loop filesystems.
fn native(dir: &Scratch, plugins: &[&Path], include: &[&Path]) -> PathBuf {
    let list = |ps: &[&Path]| {
        ps.iter()
            .map(|p| format!("{:?}", p.display().to_string()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let freeze = if include.is_empty() {
        "enabled = false".to_string()
    } else {
        format!(
            "enabled = true\ntimeout = \"30s\"\ninclude = [{}]",
            list(include)
        )
    };
    let text = format!(
        "azure_plugins = [{}]\n[paths]\nstate_dir = {:?}\ncatalog = {:?}\n[freeze]\n{freeze}\n\
         [snapshot]\nprovider = \"command\"\ncommand = [\"/bin/echo\", \"snap-1\"]\ntimeout = \"20s\"\n",
        list(plugins),
        dir.join("state").display().to_string(),
        dir.join("catalog.db").display().to_string(),
    );
    dir.file("quiesce.toml", &text, 0o600)
}

const OK: &str = "#!/bin/sh\nexit 0\n";
const FAIL: &str = "#!/bin/sh\necho failing >&2\nexit 7\n";
const SLOW: &str = "#!/bin/sh\nsleep 30\n";

/// Configs made only of Azure files share one default state dir ([`default_paths`]), whose lock
/// allows one operation at a time: such runs in this file take turns.
static DEFAULT_STATE_DIR: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn snapshot_json(config: &Path) -> Run {
    let _turn = DEFAULT_STATE_DIR.lock().unwrap_or_else(|e| e.into_inner());
    quiesce(&["snapshot", "--json", "--config", config.to_str().unwrap()])
}

/// Run one Azure plugin (through the plugin host file) with the given pre and post bodies.
fn azure_run(pre: Option<&str>, post: Option<&str>, tweak: impl Fn(&Scratch, &Path, &Path)) -> Run {
    let d = Scratch::new("azure");
    let pre_p = d.join("pre.sh");
    let post_p = d.join("post.sh");
    if let Some(b) = pre {
        d.script("pre.sh", b);
    }
    if let Some(b) = post {
        d.script("post.sh", b);
    }
    tweak(&d, &pre_p, &post_p);
    let json = plugin_json(&d, "VMSnapshotScriptPluginConfig.json", &pre_p, &post_p, "");
    let host = plugin_host(&d, &[&json]);
    snapshot_json(&host)
}

fn assert_code(run: &Run, code: &str) {
    assert!(
        code_names(&run.report()).contains(&code.to_string()),
        "expected {code} in {}",
        run.describe()
    );
}

#[test]
fn pre_script_execution_failed() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let r = azure_run(Some(FAIL), Some(OK), |_, _, _| {});
    assert_code(&r, "Pre-ScriptExecutionFailed");
    let hooks = r.report().hooks;
    assert!(hooks[0].stderr_tail.contains("failing"));
    // The post script of a started pre still runs.
    assert!(hooks.iter().any(|h| h.phase == Phase::Post));
}

#[test]
fn post_script_execution_failed() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let r = azure_run(Some(OK), Some(FAIL), |_, _, _| {});
    assert_code(&r, "Post-ScriptExecutionFailed");
}

#[test]
fn pre_script_not_found() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let r = azure_run(None, Some(OK), |_, _, _| {});
    assert_code(&r, "Pre-ScriptNotFound");
}

#[test]
fn post_script_not_found() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let r = azure_run(Some(OK), None, |_, _, _| {});
    assert_code(&r, "Post-ScriptNotFound");
}

#[test]
fn insufficient_permission_for_pre_script() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let r = azure_run(Some(OK), Some(OK), |_, pre, _| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(pre, std::fs::Permissions::from_mode(0o755)).unwrap();
    });
    assert_code(&r, "InsufficientPermissionforPre-Script");
}

#[test]
fn insufficient_permission_for_post_script() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let r = azure_run(Some(OK), Some(OK), |_, _, post| {
        std::os::unix::fs::chown(post, Some(65534), None).unwrap();
    });
    assert_code(&r, "InsufficientPermissionforPost-Script");
}

#[test]
fn pre_script_timeout() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let d = Scratch::new("azure-timeout");
    let pre = d.script("pre.sh", SLOW);
    let post = d.script("post.sh", OK);
    let json = plugin_json(&d, "p.json", &pre, &post, r#", "timeoutInSeconds": 1"#);
    let started = std::time::Instant::now();
    let r = snapshot_json(&plugin_host(&d, &[&json]));
    assert_code(&r, "Pre-ScriptTimeout");
    assert!(
        started.elapsed().as_secs() < 10,
        "the timeout was not enforced"
    );
}

#[test]
fn post_script_timeout() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let d = Scratch::new("azure-timeout");
    let pre = d.script("pre.sh", OK);
    let post = d.script("post.sh", SLOW);
    let json = plugin_json(&d, "p.json", &pre, &post, r#", "timeoutInSeconds": 1"#);
    let r = snapshot_json(&plugin_host(&d, &[&json]));
    assert_code(&r, "Post-ScriptTimeout");
}

#[test]
fn incorrect_pluginhost_file_broken_and_unsafe() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let d = Scratch::new("azure-host");
    let pre = d.script("pre.sh", OK);
    let json = plugin_json(&d, "p.json", &pre, &pre, "");
    let host = d.file("broken.conf", "[pre_post\nnumberOfPlugins = 1\n", 0o600);
    let r = snapshot_json(&host);
    assert_code(&r, "IncorrectPluginhostFile");
    assert_eq!(r.code, 1);
    assert_eq!(
        r.report().errors[0].location.as_ref().unwrap().line,
        Some(1)
    );

    let unsafe_host = plugin_host(&d, &[&json]);
    use std::os::unix::fs::PermissionsExt;
    // 0644 is how Azure installs it (accepted); writable by others is not.
    std::fs::set_permissions(&unsafe_host, std::fs::Permissions::from_mode(0o666)).unwrap();
    let r = snapshot_json(&unsafe_host);
    assert_code(&r, "IncorrectPluginhostFile");
    assert_eq!(r.report().hooks.len(), 0, "no script may run");
}

#[test]
fn incorrect_json_config_file_broken_and_unsafe() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let d = Scratch::new("azure-json");
    let marker = d.join("ran");
    let pre = d.script(
        "pre.sh",
        &format!("#!/bin/sh\ntouch {}\n", marker.display()),
    );
    let json = plugin_json(&d, "p.json", &pre, &pre, "");
    let text = std::fs::read_to_string(&json).unwrap();
    let broken = d.file(
        "broken.json",
        &text.replace(
            "\"fsFreezeEnabled\": false",
            "\"fsFreezeEnabled\": \"false\"",
        ),
        0o600,
    );
    // Safety: a skipped plugin cannot say `fsFreezeEnabled`; the native wrapper names what
    // to freeze (here: nothing), so this never freezes the machine's own filesystems.
    let r = snapshot_json(&native(&d, &[&broken], &[]));
    assert_code(&r, "IncorrectJSONConfigFile");
    // Skipped, not fatal: the snapshot is still taken, the run is degraded.
    assert_eq!(r.report().status, Status::Degraded, "{}", r.describe());
    assert_eq!(r.report().consistency, Consistency::Crash);
    assert_eq!(r.report().target_consistency, Consistency::Application);
    let err = &r.report().errors[0];
    assert!(err.message.contains("fsFreezeEnabled"));
    let at = err.location.as_ref().unwrap();
    assert!(at.line.unwrap() > 1);
    assert!(at.column.is_some());

    std::os::unix::fs::chown(&json, Some(65534), None).unwrap();
    let r = snapshot_json(&native(&d, &[&json], &[]));
    assert_code(&r, "IncorrectJSONConfigFile");
    assert!(
        !marker.exists(),
        "a script of an unsafe config must never run"
    );
}

#[test]
fn two_plugins_first_fails_second_succeeds_not_masked() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let d = Scratch::new("azure-two");
    let ok_marker = d.join("second-ran");
    let second = d.script(
        "second.sh",
        &format!("#!/bin/sh\necho \"$@\" > {}\n", ok_marker.display()),
    );
    let missing = d.join("missing.sh");
    let one = plugin_json(&d, "one.json", &missing, &second, "");
    let two = plugin_json(&d, "two.json", &second, &second, "");
    let r = snapshot_json(&plugin_host(&d, &[&one, &two]));
    assert_code(&r, "Pre-ScriptNotFound");
    let report = r.report();
    let err = report
        .errors
        .iter()
        .find(|e| e.code == ErrorCode::PreScriptNotFound)
        .unwrap();
    assert_eq!(err.hook.as_deref(), Some("one"));
    assert!(ok_marker.exists(), "the second plugin's pre script ran");
    assert_eq!(r.report().status, Status::Degraded);
    assert_eq!(r.code, 3);
}

#[test]
fn params_are_passed_as_argv_without_a_shell() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let d = Scratch::new("azure-argv");
    let out = d.join("argv");
    let pre = d.script(
        "pre.sh",
        &format!(
            "#!/bin/sh\nfor a in \"$@\"; do echo \"[$a]\"; done > {}\necho \"$QUIESCE_PHASE $PWD\" >> {}\n",
            out.display(),
            out.display()
        ),
    );
    let post = d.script("post.sh", OK);
    let json = plugin_json(&d, "p.json", &pre, &post, "");
    let r = snapshot_json(&plugin_host(&d, &[&json]));
    assert_eq!(r.report().status, Status::Succeeded, "{}", r.describe());
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.starts_with("[p1]\n[p 2]\n"), "{text}");
}

#[test]
fn check_lists_every_problem_and_runs_nothing() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let d = Scratch::new("check");
    let marker = d.join("ran");
    let good = d.script(
        "good.sh",
        &format!("#!/bin/sh\ntouch {}\n", marker.display()),
    );
    let loose = d.file("loose.sh", OK, 0o750);
    let missing = d.join("missing.sh");
    let one = plugin_json(&d, "one.json", &missing, &good, "");
    let two = plugin_json(&d, "two.json", &good, &loose, "");
    let host = plugin_host(&d, &[&one, &two]);
    let out = Command::new(support::quiesce_bin())
        .args(["check", "--json", "--config", host.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let found: Vec<String> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["code"].as_str().unwrap().to_string())
        .collect();
    assert!(
        found.contains(&"Pre-ScriptNotFound".to_string()),
        "{found:?}"
    );
    assert!(
        found.contains(&"InsufficientPermissionforPost-Script".to_string()),
        "{found:?}"
    );
    assert_eq!(found.len(), 2, "{v:#}");
    assert!(!marker.exists(), "check must not run any script");
}

// ---- continueBackupOnFailure and the single-volume rule, with real freezes ----

fn failing_pre_run(continue_on_failure: bool, volumes: usize) -> (Run, Vec<LoopFs>) {
    let d = Scratch::new("continue");
    let fss: Vec<LoopFs> = (0..volumes).map(|_| LoopFs::new("ext4", 64)).collect();
    let pre = d.script("pre.sh", FAIL);
    let post = d.script("post.sh", OK);
    let json = plugin_json(
        &d,
        "p.json",
        &pre,
        &post,
        &format!(r#", "continueBackupOnFailure": {continue_on_failure}, "fsFreezeEnabled": true"#),
    );
    let mounts: Vec<&Path> = fss.iter().map(|f| f.mount_point.as_path()).collect();
    let r = snapshot_json(&native(&d, &[&json], &mounts));
    for fs in &fss {
        assert!(
            support::writable_within(&fs.mount_point, std::time::Duration::from_secs(2)),
            "left frozen"
        );
    }
    (r, fss)
}

#[test]
fn continue_on_failure_true_falls_back_to_file_system() {
    support::require_root!();
    let (r, _fs) = failing_pre_run(true, 2);
    assert_eq!(
        r.report().consistency,
        Consistency::FileSystem,
        "{}",
        r.describe()
    );
    assert_eq!(r.report().status, Status::Degraded);
    assert_eq!(r.code, 3);
    assert_eq!(r.report().snapshots[0].id, "snap-1");
    assert_eq!(r.report().frozen.len(), 2);
}

#[test]
fn continue_on_failure_false_fails_the_job() {
    support::require_root!();
    let (r, _fs) = failing_pre_run(false, 2);
    assert_eq!(
        r.report().consistency,
        Consistency::None,
        "{}",
        r.describe()
    );
    assert_eq!(r.report().status, Status::Failed);
    assert_eq!(r.code, 1);
    assert!(r.report().snapshots.is_empty());
    assert!(r.report().frozen_ms.is_none(), "nothing may be frozen");
}

#[test]
fn continue_on_failure_false_single_volume_takes_crash_snapshot() {
    support::require_root!();
    let (r, _fs) = failing_pre_run(false, 1);
    assert_eq!(
        r.report().consistency,
        Consistency::Crash,
        "{}",
        r.describe()
    );
    assert_eq!(r.report().status, Status::Degraded);
    assert_eq!(r.code, 3);
    assert_eq!(r.report().snapshots[0].id, "snap-1");
}

#[test]
fn all_good_reaches_application_consistency() {
    support::require_root!();
    let d = Scratch::new("appcons");
    let fs = LoopFs::new("xfs", 300);
    let pre = d.script("pre.sh", OK);
    let json = plugin_json(&d, "p.json", &pre, &pre, r#", "fsFreezeEnabled": true"#);
    let r = snapshot_json(&native(&d, &[&json], &[&fs.mount_point]));
    assert_eq!(
        r.report().consistency,
        Consistency::Application,
        "{}",
        r.describe()
    );
    assert_eq!(r.report().status, Status::Succeeded);
    assert_eq!(r.code, 0);
    assert!(r.report().frozen_ms.is_some());
    let t = r.report().timings;
    for (k, v) in [
        ("pre_ms", t.pre_ms),
        ("freeze_ms", t.freeze_ms),
        ("snapshot_ms", t.snapshot_ms),
        ("thaw_ms", t.thaw_ms),
        ("post_ms", t.post_ms),
    ] {
        assert!(v.is_some(), "missing {k}");
    }
    assert!(t.total_ms >= t.freeze_ms.unwrap());
    assert!(support::writable_within(
        &fs.mount_point,
        std::time::Duration::from_secs(2)
    ));
}

#[test]
fn azure_only_runs_keep_to_the_test_paths() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let r = azure_run(Some(OK), Some(OK), |_, _, _| {});
    assert_eq!(r.code, 0, "{}", r.describe());
    assert!(default_paths().join("catalog.db").exists());
}

#[test]
fn relative_config_and_mounts_show_what_snapshot_would_do() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let d = Scratch::new("azure-rel");
    let pre = d.script("pre.sh", OK);
    let json = plugin_json(&d, "p.json", &pre, &pre, "");
    let cfg = native(&d, &[&json], &[]);
    let out = Command::new(support::quiesce_bin())
        .current_dir(&d.path)
        .args(["check", "--json", "--config", "quiesce.toml"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(v["config"], cfg.display().to_string());
    // A missing explicit config fails; a config that does not freeze lists nothing to freeze.
    let r = quiesce(&["mounts", "--config", d.join("nope.toml").to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let out = Command::new(support::quiesce_bin())
        .args(["mounts", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("freezing is disabled"));
}

#[test]
fn config_warnings_carry_no_code_in_check_and_report() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let d = Scratch::new("azure-warn");
    let ok = d.script("ok.sh", OK);
    let json = plugin_json(
        &d,
        "p.json",
        &ok,
        &ok,
        r#", "colour": 1, "timeoutInSeconds": 3600"#,
    );
    let host = plugin_host(&d, &[&json]);
    let arg = host.to_str().unwrap();
    let out = Command::new(support::quiesce_bin())
        .args(["check", "--json", "--config", arg])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let warnings = v["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 2, "{v:#}");
    for w in warnings {
        assert!(w.get("code").is_none(), "a warning carries no code: {w}");
    }
    let out = Command::new(support::quiesce_bin())
        .args(["check", "--config", arg])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("warning")).collect();
    assert_eq!(lines.len(), 2, "{text}");
    for l in lines {
        assert!(!l.contains("IncorrectJSONConfigFile"), "{l}");
    }
    let r = snapshot_json(&host);
    assert_eq!(r.code, 0, "{}", r.describe());
    assert!(r
        .report()
        .warnings
        .iter()
        .any(|w| w.message.contains("1800")));
    // The JSON shape itself: a warning has no `code` key.
    let json: Value = serde_json::from_str(&r.stdout).unwrap();
    for w in json["warnings"].as_array().unwrap() {
        assert!(w.get("code").is_none(), "a warning carries no code: {w}");
    }
    assert!(
        !r.stderr.contains("IncorrectJSONConfigFile"),
        "{}",
        r.stderr
    );
}

#[test]
fn config_in_utf16_or_latin1_gets_an_encoding_hint() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let d = Scratch::new("azure-enc");
    let utf16 = |text: &str, bom: bool| -> Vec<u8> {
        let bom = bom.then_some(0xfeff_u16);
        bom.into_iter()
            .chain(text.encode_utf16())
            .flat_map(u16::to_le_bytes)
            .collect()
    };
    let json = "{ \"pluginName\": \"ScriptRunner\" }\n";
    let host = "[pre_post]\nnumberOfPlugins = 0\n";
    let toml = "[freeze]\nenabled = false\n";
    for (name, bytes, want) in [
        ("a.json", utf16(json, true), "UTF-16"),
        ("b.json", utf16(json, false), "UTF-16"),
        ("VMSnapshotPluginHost.conf", utf16(host, true), "UTF-16"),
        (
            "c.conf",
            b"[pre_post]\n# caf\xe9\nnumberOfPlugins = 0\n".to_vec(),
            "Latin-1",
        ),
        ("q.toml", utf16(toml, false), "UTF-16"),
        ("r.toml", b"# r\xe9sum\xe9\n[freeze]\n".to_vec(), "Latin-1"),
    ] {
        let path = d.file(name, "", 0o600);
        std::fs::write(&path, &bytes).unwrap();
        let out = Command::new(support::quiesce_bin())
            .args(["check", "--json", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let msg = v["problems"][0]["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains(want) && msg.contains("save it as UTF-8"),
            "{name}: {v:#}"
        );
    }
}

#[test]
fn paths_with_control_characters_are_printed_escaped() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let d = Scratch::new("azure-ctl");
    let ok = d.script("ok.sh", OK);
    let evil = d.join("pre\nFAKE error\u{1b}[2J.sh");
    // The JSON escapes the control characters; the path it names holds them.
    let extra = format!(
        r#", "colour": 1, "preScriptLocation": {}"#,
        serde_json::to_string(evil.to_str().unwrap()).unwrap()
    );
    let json = plugin_json(&d, "p\u{1b}[31m\n.json", &ok, &ok, &extra);
    let arg = json.to_str().unwrap();
    let out = Command::new(support::quiesce_bin())
        .args(["check", "--config", arg])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains('\u{1b}'), "{text:?}");
    assert!(!text.contains("\nFAKE"), "{text:?}");
    assert!(text.contains("pre\\nFAKE error\\u{1b}[2J.sh"), "{text}");
    assert!(text.contains("p\\u{1b}[31m\\n.json"), "{text}");
    let out = Command::new(support::quiesce_bin())
        .args(["check", "--json", "--config", arg])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let msg = v["problems"][0]["message"].as_str().unwrap();
    assert!(msg.contains("pre\\nFAKE error\\u{1b}[2J.sh"), "{v:#}");
    let r = snapshot_json(&json);
    assert!(!r.stderr.contains('\u{1b}'), "{:?}", r.stderr);
    assert!(!r.stderr.contains("\nFAKE"), "{:?}", r.stderr);
    // A freeze mount point from the native TOML, in the freeze plan's problems.
    let toml = d.file(
        "ctl.toml",
        "[freeze]\ninclude = [\"/nonexistent\\nFAKE\\u001B[2J\"]\n",
        0o600,
    );
    let out = Command::new(support::quiesce_bin())
        .args(["check", "--config", toml.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("/nonexistent\\nFAKE\\u{1b}[2J"), "{text}");
    assert!(
        !text.contains('\u{1b}') && !text.contains("\nFAKE"),
        "{text:?}"
    );
}

/// `snapshot --dry-run` is `check`: the same output, and nothing runs or is recorded.
#[test]
fn snapshot_dry_run_is_check_and_runs_nothing() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let d = Scratch::new("azure-dry");
    let marker = d.join("ran");
    let pre = d.script(
        "pre.sh",
        &format!("#!/bin/sh\ntouch {:?}\n", marker.display().to_string()),
    );
    let json = plugin_json(&d, "p.json", &pre, &pre, "");
    let cfg = native(&d, &[&json], &[]);
    let arg = cfg.to_str().unwrap();
    let dry = quiesce(&["snapshot", "--dry-run", "--json", "--config", arg]);
    let check = quiesce(&["check", "--json", "--config", arg]);
    assert_eq!(dry.code, check.code, "{}", dry.stderr);
    // `check --json` prints the check's answer, not a run report.
    let dry_json: Value = serde_json::from_str(&dry.stdout).unwrap();
    let check_json: Value = serde_json::from_str(&check.stdout).unwrap();
    assert_eq!(dry_json, check_json);
    assert_eq!(dry_json["ok"], true, "{dry_json:#}");
    assert!(dry.try_report().is_err(), "not a run report");
    assert!(!marker.exists(), "a dry run must not run scripts");
    assert!(!d.join("catalog.db").exists(), "a dry run records nothing");
}
