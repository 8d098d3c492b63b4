//! The platforms' own hook conventions read as quiesce hooks, through the real binary:
//! qemu-ga's `fsfreeze-hook.d` (order, skipped names, `freeze`/`thaw`, a failing script
//! does not stop the others) and Google's snapshot scripts with the guest agent's settings
//! (enabled, timeout, one disk-list argument), around a real freeze of a loop filesystem.

use crate::support;

use quiesce::codes::ErrorCode;
use quiesce::report::Consistency;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::{LoopFs, Scratch};

fn quiesce(args: &[&str]) -> (i32, String) {
    let out = Command::new(support::quiesce_bin())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn q(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// A hook script appending `<name> <args...>` to `log`.
fn logging_script(dir: &Scratch, rel: &str, log: &Path, extra: &str) -> std::path::PathBuf {
    let name = Path::new(rel).file_name().unwrap().to_str().unwrap();
    dir.script(
        rel,
        &format!("#!/bin/sh\necho \"{name} $# $*\" >> {}\n{extra}\n", q(log)),
    )
}

fn base_config(dir: &Scratch, fs: &LoopFs, log: &Path, platforms: &str) -> std::path::PathBuf {
    let snap = dir.script(
        "snap.sh",
        &format!("#!/bin/sh\necho snapshot >> {}\n", q(log)),
    );
    dir.file(
        "quiesce.toml",
        &format!(
            "[paths]\nstate_dir = {}\ncatalog = {}\n[freeze]\ninclude = [{}]\ntimeout = \"30s\"\n\
             [snapshot]\nprovider = \"command\"\ncommand = [{}]\n[platforms]\n{platforms}\n",
            q(&dir.join("state")),
            q(&dir.join("catalog.db")),
            q(&fs.mount_point),
            q(&snap)
        ),
        0o600,
    )
}

#[test]
fn qemu_ga_hook_directory_runs_like_the_stock_fsfreeze_hook() {
    support::require_root!();
    let dir = Scratch::new("plat-qga");
    let fs = LoopFs::new("ext4", 64);
    let log = dir.join("calls.log");
    let hooks = dir.join("fsfreeze-hook.d");
    logging_script(&dir, "fsfreeze-hook.d/20-b", &log, "");
    logging_script(&dir, "fsfreeze-hook.d/10-a", &log, "");
    logging_script(&dir, "fsfreeze-hook.d/30-fails", &log, "exit 7");
    logging_script(&dir, "fsfreeze-hook.d/15-old.dpkg-old", &log, "");
    logging_script(&dir, "fsfreeze-hook.d/16-edit~", &log, "");
    dir.file("fsfreeze-hook.d/17-not-executable", "#!/bin/sh\n", 0o600);
    let cfg = base_config(
        &dir,
        &fs,
        &log,
        &format!("qemu_ga_hooks = {}\nqemu_ga_timeout = \"10s\"", q(&hooks)),
    );
    let cfg = cfg.to_str().unwrap();

    let (code, out) = quiesce(&["check", "--config", cfg]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("hook qemu-ga:10-a (from {})", hooks.display())),
        "{out}"
    );
    assert!(!out.contains("dpkg-old") && !out.contains("edit~"), "{out}");

    let run = support::quiesce(&["snapshot", "--json", "--config", cfg]).run();
    let report = run.report();
    // The failing script is recorded and lowers the consistency, but does not stop the
    // others or the snapshot (the stock script ignores its status): degraded, exit 3.
    assert_eq!(run.code, 3, "{}", run.describe());
    assert_eq!(
        report.consistency,
        Consistency::FileSystem,
        "{}",
        run.describe()
    );
    assert_eq!(report.frozen, [fs.mount_point.to_str().unwrap()]);
    let calls = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = calls.lines().collect();
    assert_eq!(
        lines,
        [
            "10-a 1 freeze",
            "20-b 1 freeze",
            "30-fails 1 freeze",
            "snapshot",
            "30-fails 1 thaw",
            "20-b 1 thaw",
            "10-a 1 thaw",
        ],
        "{calls}"
    );
    let (_, hist) = quiesce(&["history", "--json", "--config", cfg]);
    let hist: Value = serde_json::from_str(&hist).unwrap();
    assert_eq!(hist.as_array().unwrap().len(), 1, "{hist:#}");
    assert_eq!(hist[0]["operation_id"], report.operation_id.as_str());
}

#[test]
fn google_snapshot_scripts_follow_the_guest_agent_settings() {
    support::require_root!();
    let dir = Scratch::new("plat-gcp");
    let fs = LoopFs::new("ext4", 64);
    let log = dir.join("calls.log");
    logging_script(&dir, "google/pre.sh", &log, "sleep 30");
    logging_script(&dir, "google/post.sh", &log, "");
    // The agent's settings file is root's and world-readable, as Google installs it.
    let settings = dir.file(
        "instance_configs.cfg",
        "[Snapshots]\nenabled = false\ntimeout_in_seconds = 2\n",
        0o644,
    );
    let platforms = format!(
        "google = true\ngoogle_scripts = {}\ngoogle_config = {}",
        q(&dir.join("google")),
        q(&settings)
    );
    let cfg = base_config(&dir, &fs, &log, &platforms);
    let cfg = cfg.to_str().unwrap();

    // Disabled in the agent's settings: not a hook, and check says why.
    let (code, out) = quiesce(&["check", "--config", cfg]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("enabled is not true"), "{out}");
    assert!(!out.contains("hook google-snapshots"), "{out}");

    // Enabled by a later layer (the file itself over its .template), with the 2 s timeout.
    std::fs::write(
        dir.join("instance_configs.cfg.template"),
        "[Snapshots]\nenabled = false\n",
    )
    .unwrap();
    std::fs::write(
        &settings,
        "[Snapshots]\nenabled = true\ntimeout_in_seconds = 2\n",
    )
    .unwrap();
    let (code, out) = quiesce(&["check", "--config", cfg]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "hook google-snapshots (from {})",
            dir.join("google").display()
        )),
        "{out}"
    );

    let t = Instant::now();
    let run = support::quiesce(&["snapshot", "--json", "--config", cfg]).run();
    let report = run.report();
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "pre.sh was not killed"
    );
    assert_eq!(run.code, 3, "{}", run.describe());
    assert_eq!(
        report.errors[0].code,
        ErrorCode::PreScriptTimeout,
        "{}",
        run.describe()
    );
    assert_eq!(
        report.consistency,
        Consistency::FileSystem,
        "{}",
        run.describe()
    );
    // One argument, the (empty) disk list, as the agent passes it; post always runs.
    let calls = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = calls.lines().collect();
    assert_eq!(lines, ["pre.sh 1 ", "snapshot", "post.sh 1 "], "{calls}");
}

/// Run a script the way Google's guest agent does: by path, one argument (the disk list),
/// killed after `timeout`; the exit status is what the agent reads.
fn run_like_google_agent(script: &Path, timeout: Duration) -> i32 {
    let mut child = Command::new(script)
        .arg("persistent-disk-0,persistent-disk-1")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st.code().unwrap_or(-1);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return 124;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn google_agent_runs_the_bridge_and_the_hold_lasts_until_post() {
    support::require_root!();
    let dir = Scratch::new("plat-gcp-bridge");
    let fs = LoopFs::new("ext4", 64);
    let socket = dir.join("quiesce.sock");
    let log = dir.join("calls.log");
    let cfg = support::platform::held_hook_config(&dir, &fs, &socket, &log);
    let bridge = |side: &str| {
        format!(
            "#!/bin/sh\nexec {} --config {} hook {side} --platform gcp --deadline 20s\n",
            q(&support::quiesce_bin()),
            q(&cfg)
        )
    };
    let pre = dir.script("google/pre.sh", &bridge("pre"));
    let post = dir.script("google/post.sh", &bridge("post"));
    let _srv = support::ServeProcess::start(&cfg, &socket);

    for round in 1..=2 {
        assert_eq!(run_like_google_agent(&pre, Duration::from_secs(60)), 0);
        // Between pre and post: the filesystem is frozen and the hold is still there.
        assert!(
            !support::writable_within(&fs.mount_point, Duration::from_millis(300)),
            "not frozen after pre.sh"
        );
        let calls = std::fs::read_to_string(&log).unwrap();
        assert!(calls.ends_with("held\n"), "round {round}: {calls}");
        assert_eq!(run_like_google_agent(&post, Duration::from_secs(60)), 0);
        assert!(support::writable_within(
            &fs.mount_point,
            Duration::from_secs(2)
        ));
        let calls = std::fs::read_to_string(&log).unwrap();
        assert!(
            calls.ends_with("held\nreleased\n"),
            "round {round}: {calls}"
        );
    }
    // A post without a pre is an error the agent sees.
    assert_eq!(run_like_google_agent(&post, Duration::from_secs(60)), 1);
    // One operation per snapshot, application-consistent, recorded by the server.
    let (_, hist) = quiesce(&["history", "--json", "--config", cfg.to_str().unwrap()]);
    let hist: Value = serde_json::from_str(&hist).unwrap();
    let rows = hist.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{hist:#}");
    for row in rows {
        assert!(
            row["operation_id"].as_str().unwrap().starts_with("gcp-"),
            "{row}"
        );
        assert_eq!(row["consistency"], "application", "{row}");
    }
}

/// Every file under `root`: path, bytes, mode and owner.
fn tree(root: &Path) -> Vec<(String, Vec<u8>, u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let bytes = if m.is_file() {
                std::fs::read(&p).unwrap()
            } else {
                Vec::new()
            };
            if m.is_dir() {
                stack.push(p.clone());
            }
            out.push((p.display().to_string(), bytes, m.mode(), m.uid()));
        }
    }
    out.sort();
    out
}

#[test]
fn gcp_install_and_uninstall_leave_the_platform_files_as_they_were() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let root = Scratch::new("plat-install");
    let r = root.path.to_str().unwrap();
    let run =
        |args: &[&str]| quiesce(&[&["install", "--platform", "gcp", "--root", r], args].concat());
    // A machine with nothing of Google's, and one already set up by its owner.
    for set_up in [false, true] {
        if set_up {
            root.file(
                "etc/google/snapshots/pre.sh",
                "#!/bin/bash\necho owner's pre\n",
                0o755,
            );
            root.file(
                "etc/default/instance_configs.cfg",
                "[Accounts]\ngroups = adm\n\n[Snapshots]\nenabled = false\ntimeout_in_seconds = 30\n",
                0o644,
            );
        }
        let before = tree(&root.path);
        let (code, out) = run(&[]);
        assert_eq!(code, 0, "{out}");
        let pre = root.join("etc/google/snapshots/pre.sh");
        let text = std::fs::read_to_string(&pre).unwrap();
        assert!(text.contains("hook pre --platform gcp"), "{text}");
        let cfg = std::fs::read_to_string(root.join("etc/default/instance_configs.cfg")).unwrap();
        assert!(cfg.contains("enabled = true"), "{cfg}");
        if set_up {
            assert!(cfg.contains("timeout_in_seconds = 30") && cfg.contains("groups = adm"));
            assert_eq!(
                std::fs::read_to_string(root.join("etc/google/snapshots/pre.sh.quiesce-orig"))
                    .unwrap(),
                "#!/bin/bash\necho owner's pre\n"
            );
        }
        // With the bridge installed, the owner's scripts kept aside are what the Google
        // source reads (the bridge itself would ask the server for a second operation).
        let cfg = root.file(
            "quiesce.toml",
            &format!(
                "[platforms]\ngoogle = true\ngoogle_scripts = {}\ngoogle_config = {}\n",
                q(&root.join("etc/google/snapshots")),
                q(&root.join("etc/default/instance_configs.cfg"))
            ),
            0o600,
        );
        let (_, out) = quiesce(&["check", "--config", cfg.to_str().unwrap()]);
        std::fs::remove_file(&cfg).unwrap();
        if set_up {
            // The owner's 0755 script is refused by the trust rules, by its kept-aside name.
            assert!(out.contains("pre.sh.quiesce-orig"), "{out}");
        } else {
            assert!(out.contains("neither pre.sh nor post.sh"), "{out}");
        }
        // Installing again changes nothing.
        let installed = tree(&root.path);
        let (code, out) = run(&[]);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("nothing to do"), "{out}");
        assert_eq!(tree(&root.path), installed);
        let (code, out) = run(&["--uninstall"]);
        assert_eq!(code, 0, "{out}");
        assert_eq!(tree(&root.path), before, "{out}");
    }
}

/// Run a script the way Azure's VMSnapshot extension does: `sh <script> <params...>`,
/// killed after `timeout`.
fn run_like_azure_extension(script: &Path, params: &[&str], timeout: Duration) -> i32 {
    let mut child = Command::new("sh")
        .arg(script)
        .args(params)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st.code().unwrap_or(-1);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return -1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn azure_extension_runs_the_bridge_which_only_syncs_because_azure_freezes() {
    support::require_root!();
    let dir = Scratch::new("plat-azure-bridge");
    let fs = LoopFs::new("ext4", 64);
    let socket = dir.join("quiesce.sock");
    let log = dir.join("calls.log");
    let cfg = support::platform::held_hook_config(&dir, &fs, &socket, &log);
    // Non-executable, as Azure's scripts may be: the extension runs them with sh.
    let bridge = |side: &str| {
        dir.file(
            &format!("azure/{side}.sh"),
            &format!(
                "exec {} --config {} hook {side} --platform azure \"$@\"\n",
                q(&support::quiesce_bin()),
                q(&cfg)
            ),
            0o600,
        )
    };
    let (pre, post) = (bridge("pre"), bridge("post"));
    let _srv = support::ServeProcess::start(&cfg, &socket);

    assert_eq!(
        run_like_azure_extension(&pre, &["--deadline", "20s"], Duration::from_secs(30)),
        0
    );
    // Azure freezes on its own: quiesce only synced, the hold is there.
    assert!(support::writable_within(
        &fs.mount_point,
        Duration::from_secs(2)
    ));
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "held\n");
    assert_eq!(
        run_like_azure_extension(&post, &[], Duration::from_secs(30)),
        0
    );
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "held\nreleased\n");
    let (_, hist) = quiesce(&["history", "--json", "--config", cfg.to_str().unwrap()]);
    let hist: Value = serde_json::from_str(&hist).unwrap();
    let rows = hist.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{hist:#}");
    assert!(
        rows[0]["operation_id"]
            .as_str()
            .unwrap()
            .starts_with("azure-"),
        "{hist:#}"
    );
    assert_eq!(rows[0]["consistency"], "application", "{hist:#}");
}

#[test]
fn azure_install_round_trips_and_the_installed_bridge_runs_the_owners_plugin() {
    support::require_root!();
    let root = Scratch::new("plat-azure-install");
    let dir = Scratch::new("plat-azure-install-cfg");
    let fs = LoopFs::new("ext4", 64);
    let socket = dir.join("quiesce.sock");
    let log = dir.join("calls.log");
    let kept = root.join("etc/azure/VMSnapshotPluginConfig.json.quiesce-orig");
    // The test's own server configuration: its loop filesystem, and the owner's plugin where
    // the installer keeps it (the installed native configuration says the same, on the
    // machine's paths).
    let cfg = dir.file(
        "quiesce.toml",
        &format!(
            "azure_plugins = [{}]\n[paths]\nstate_dir = {}\ncatalog = {}\n[freeze]\n\
             include = [{}]\ntimeout = \"30s\"\n[server]\nsocket = {}\n",
            q(&kept),
            q(&dir.join("state")),
            q(&dir.join("catalog.db")),
            q(&fs.mount_point),
            q(&socket)
        ),
        0o600,
    );
    let (r, c) = (root.path.to_str().unwrap(), cfg.to_str().unwrap());
    let run = |args: &[&str]| {
        quiesce(
            &[
                &["--config", c, "install", "--platform", "azure", "--root", r],
                args,
            ]
            .concat(),
        )
    };
    let mode = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    };
    // A machine without Azure's extension, and one its owner set up.
    for set_up in [false, true] {
        if set_up {
            let pre = logging_script(&root, "etc/azure/owner-pre.sh", &log, "");
            let post = logging_script(&root, "etc/azure/owner-post.sh", &log, "");
            root.file(
                "etc/azure/VMSnapshotPluginConfig.json",
                &format!(
                    "{{\"pluginName\": \"owner\", \"preScriptLocation\": {}, \
                     \"postScriptLocation\": {}, \"preScriptParams\": [\"db1\"], \
                     \"timeoutInSeconds\": 90, \"continueBackupOnFailure\": false, \
                     \"fsFreezeEnabled\": true}}\n",
                    q(&pre),
                    q(&post)
                ),
                0o600,
            );
        }
        let before = tree(&root.path);
        let (code, out) = run(&[]);
        assert_eq!(code, 0, "{out}");
        let plugin = root.join("etc/azure/VMSnapshotPluginConfig.json");
        let json: Value = serde_json::from_str(&std::fs::read_to_string(&plugin).unwrap()).unwrap();
        assert_eq!(
            json["preScriptLocation"], "/etc/azure/quiesce/pre.sh",
            "{json}"
        );
        assert_eq!(json["fsFreezeEnabled"], true, "{json}");
        // The owner's settings are kept (a timeout of at least a minute).
        assert_eq!(
            json["timeoutInSeconds"],
            if set_up { 90 } else { 60 },
            "{json}"
        );
        assert_eq!(json["continueBackupOnFailure"], !set_up, "{json}");
        assert_eq!(mode(&plugin), 0o600);
        let pre = root.join("etc/azure/quiesce/pre.sh");
        let post = root.join("etc/azure/quiesce/post.sh");
        assert_eq!((mode(&pre), mode(&post)), (0o700, 0o700));
        assert!(std::fs::read_to_string(&pre)
            .unwrap()
            .contains("hook pre --platform azure \"$@\""));
        // quiesce's own lookup finds the native file first, which imports the owner's plugin
        // from where it was kept, never the installed one.
        let native = std::fs::read_to_string(root.join("etc/quiesce/quiesce.toml")).unwrap();
        let want = if set_up {
            "azure_plugins = [\"/etc/azure/VMSnapshotPluginConfig.json.quiesce-orig\"]"
        } else {
            "azure_plugins = []"
        };
        assert!(native.contains(want), "{native}");
        assert_eq!(kept.exists(), set_up);
        let installed = tree(&root.path);
        let (code, out) = run(&[]);
        assert_eq!((code, out.contains("nothing to do")), (0, true), "{out}");
        assert_eq!(tree(&root.path), installed);

        if set_up {
            // Azure's extension runs the installed bridge: `sh <script> <params>`, timed out.
            let _srv = support::ServeProcess::start(&cfg, &socket);
            let t = Duration::from_secs(60);
            assert_eq!(run_like_azure_extension(&pre, &["--deadline", "20s"], t), 0);
            assert_eq!(
                std::fs::read_to_string(&log).unwrap(),
                "owner-pre.sh 1 db1\n"
            );
            // Azure freezes on its own: quiesce only synced.
            assert!(support::writable_within(
                &fs.mount_point,
                Duration::from_secs(2)
            ));
            assert_eq!(run_like_azure_extension(&post, &[], t), 0);
            assert_eq!(
                std::fs::read_to_string(&log).unwrap(),
                "owner-pre.sh 1 db1\nowner-post.sh 0 \n"
            );
            let (_, hist) = quiesce(&["history", "--json", "--config", c]);
            let hist: Value = serde_json::from_str(&hist).unwrap();
            let rows = hist.as_array().unwrap();
            assert_eq!(rows.len(), 1, "{hist:#}");
            let id = rows[0]["operation_id"].as_str().unwrap();
            assert!(id.starts_with("azure-"), "{hist:#}");
            assert_eq!(rows[0]["consistency"], "application", "{hist:#}");
        }

        let (code, out) = run(&["--uninstall"]);
        assert_eq!(code, 0, "{out}");
        assert_eq!(tree(&root.path), before, "{out}");
    }
}

#[test]
fn qemu_ga_install_round_trips_behind_the_stock_hook_or_as_the_hook() {
    let root = Scratch::new("plat-qga-install");
    let r = root.path.to_str().unwrap();
    let run = |args: &[&str]| {
        quiesce(&[&["install", "--platform", "qemu-ga", "--root", r], args].concat())
    };
    let stock = std::fs::read_to_string("/etc/qemu/fsfreeze-hook")
        .expect("Debian's stock hook (apt-get install qemu-guest-agent)");
    let hook = root.join("etc/qemu/fsfreeze-hook");
    let bridge_d = root.join("etc/qemu/fsfreeze-hook.d/quiesce-bridge");
    // Nothing of qemu's; Debian's stock hook with its empty directory (kept on uninstall);
    // an owner's own hook (kept aside and restored).
    for setup in ["empty", "stock", "owner"] {
        match setup {
            "stock" => {
                root.file("etc/qemu/fsfreeze-hook", &stock, 0o755);
                std::fs::create_dir_all(root.join("etc/qemu/fsfreeze-hook.d")).unwrap();
            }
            "owner" => {
                std::fs::remove_dir(root.join("etc/qemu/fsfreeze-hook.d")).unwrap();
                root.file(
                    "etc/qemu/fsfreeze-hook",
                    "#!/bin/sh\nlogger \"owner's hook $1\"\n",
                    0o750,
                );
            }
            _ => {}
        }
        let before = tree(&root.path);
        let (code, out) = run(&[]);
        assert_eq!(code, 0, "{out}");
        let installed_at = if setup == "stock" { &bridge_d } else { &hook };
        let text = std::fs::read_to_string(installed_at).unwrap();
        assert!(
            text.contains("hook \"$side\" --platform qemu-ga"),
            "{setup}: {text}"
        );
        if setup == "stock" {
            assert_eq!(std::fs::read_to_string(&hook).unwrap(), stock);
        }
        assert_eq!(
            root.join("etc/qemu/fsfreeze-hook.quiesce-orig").exists(),
            setup == "owner"
        );
        let installed = tree(&root.path);
        let (code, out) = run(&[]);
        assert_eq!(
            (code, out.contains("nothing to do")),
            (0, true),
            "{setup}: {out}"
        );
        assert_eq!(tree(&root.path), installed, "{setup}");
        let (code, out) = run(&["--uninstall"]);
        assert_eq!(code, 0, "{out}");
        assert_eq!(tree(&root.path), before, "{setup}: {out}");
    }
}
