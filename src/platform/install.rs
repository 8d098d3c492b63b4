//! `quiesce install --platform gcp|azure|qemu-ga [--root DIR] [--uninstall]`: wire the
//! bridge into the platform's own configuration.
//!
//! - Google: `/etc/google/snapshots/pre.sh` and `post.sh` (mode 0700) calling
//!   `quiesce hook pre|post --platform gcp`, and `[Snapshots] enabled = true` in
//!   `/etc/default/instance_configs.cfg`.
//! - Azure: `/etc/azure/VMSnapshotPluginConfig.json` (0600) naming the bridge scripts
//!   `/etc/azure/quiesce/pre.sh` and `post.sh` (0700). quiesce itself reads that JSON when
//!   `/etc/quiesce/quiesce.toml` is absent, which would make the bridge its own hook; so the
//!   owner's JSON, kept aside, is what quiesce reads: the installer writes a native
//!   configuration naming it in `azure_plugins` (the native file comes first in the lookup).
//! - qemu-ga: with Debian's stock `/etc/qemu/fsfreeze-hook` (it runs the scripts of
//!   `fsfreeze-hook.d/`), the bridge is `fsfreeze-hook.d/quiesce-bridge`; otherwise it is the
//!   hook itself. Either way it maps `freeze` / `thaw` to `hook pre` / `hook post`.
//!
//! Every file replaced is first moved aside to `<file>.quiesce-orig`; a second install
//! changes nothing; `--uninstall` puts the originals back (by rename: same bytes, owner and
//! mode) and removes what it created. `--root` installs under another directory (an image
//! being built, or a test); paths written into the files are those of the machine (without
//! the root). With `--config FILE`, the bridge scripts pass that configuration on.

use std::path::{Path, PathBuf};

use crate::config::platform::{BACKUP_SUFFIX, MARKER};

/// One file the installer owns.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub path: PathBuf,
    pub content: String,
    pub mode: u32,
}

/// The command line a bridge script runs: `exec <bin> [--config FILE] hook <side> --platform P`.
fn bridge_exec(bin: &Path, config: Option<&Path>, side: &str, platform: &str) -> String {
    let config = config
        .map(|c| format!(" --config {}", shell_quote(&c.display().to_string())))
        .unwrap_or_default();
    format!(
        "exec {}{config} hook {side} --platform {platform}",
        shell_quote(&bin.display().to_string())
    )
}

fn marker_line(platform: &str) -> String {
    format!(
        "{MARKER} {platform}`; `quiesce install --platform {platform} --uninstall` restores \
         what was here."
    )
}

/// A bridge script: the marker, then `exec quiesce ... hook <side>` followed by `args`.
fn bridge_script(
    bin: &Path,
    config: Option<&Path>,
    side: &str,
    platform: &str,
    args: &str,
) -> String {
    format!(
        "#!/bin/sh\n{}\n{}{args}\n",
        marker_line(platform),
        bridge_exec(bin, config, side, platform)
    )
}

/// The files installed for Google under `root`, calling `quiesce` at `bin`.
pub fn gcp_files(
    root: &Path,
    bin: &Path,
    config: Option<&Path>,
    existing_cfg: Option<&str>,
) -> Vec<Planned> {
    let script = |side: &str| Planned {
        path: root.join(format!("etc/google/snapshots/{side}.sh")),
        content: bridge_script(bin, config, side, "gcp", ""),
        mode: 0o700,
    };
    vec![
        script("pre"),
        script("post"),
        Planned {
            path: root.join("etc/default/instance_configs.cfg"),
            content: enable_snapshots(existing_cfg.unwrap_or("")),
            mode: 0o644,
        },
    ]
}

/// Azure's plugin configuration, on the machine.
pub const AZURE_PLUGIN_JSON: &str = "etc/azure/VMSnapshotPluginConfig.json";
/// quiesce's native configuration, on the machine.
pub const NATIVE_CONFIG: &str = "etc/quiesce/quiesce.toml";

/// What the installed Azure plugin keeps of the owner's: timeout (at least a minute, the
/// bridge waits for quiesce's pre hooks), `continueBackupOnFailure` and `fsFreezeEnabled`.
#[derive(Debug, Clone, PartialEq)]
pub struct AzureSettings {
    pub timeout_s: u64,
    pub continue_on_failure: bool,
    pub fs_freeze: bool,
}

impl AzureSettings {
    /// From the owner's plugin JSON (None: there was none); what cannot be read keeps the
    /// defaults (quiesce's own check reports the owner's file).
    pub fn from_original(text: Option<&str>) -> AzureSettings {
        let v: serde_json::Value = text
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or_default();
        AzureSettings {
            timeout_s: v["timeoutInSeconds"].as_u64().unwrap_or(0).max(60),
            continue_on_failure: v["continueBackupOnFailure"].as_bool().unwrap_or(true),
            fs_freeze: v["fsFreezeEnabled"].as_bool().unwrap_or(true),
        }
    }
}

/// The files installed for Azure under `root`. `original` says whether the owner had a
/// plugin JSON (kept aside, then imported by quiesce's native configuration); `native` is
/// the existing native configuration, left alone when there is one that is not ours.
pub fn azure_files(
    root: &Path,
    bin: &Path,
    config: Option<&Path>,
    settings: &AzureSettings,
    original: bool,
    native: Option<&str>,
) -> Vec<Planned> {
    let script = |side: &str| Planned {
        path: root.join(format!("etc/azure/quiesce/{side}.sh")),
        content: bridge_script(bin, config, side, "azure", " \"$@\""),
        mode: 0o700,
    };
    let plugin = serde_json::json!({
        "pluginName": "quiesce",
        "preScriptLocation": "/etc/azure/quiesce/pre.sh",
        "postScriptLocation": "/etc/azure/quiesce/post.sh",
        "preScriptParams": [],
        "postScriptParams": [],
        "preScriptNoOfRetries": 0,
        "postScriptNoOfRetries": 0,
        "timeoutInSeconds": settings.timeout_s,
        "continueBackupOnFailure": settings.continue_on_failure,
        "fsFreezeEnabled": settings.fs_freeze,
    });
    let mut files = vec![
        script("pre"),
        script("post"),
        Planned {
            path: root.join(AZURE_PLUGIN_JSON),
            content: format!("{:#}\n", plugin),
            mode: 0o600,
        },
    ];
    let ours = native_for_azure(original);
    if native.is_none_or(|n| n == ours) {
        files.push(Planned {
            path: root.join(NATIVE_CONFIG),
            content: ours,
            mode: 0o600,
        });
    }
    files
}

/// The native configuration written for Azure: the owner's plugin, kept aside, as hooks.
fn native_for_azure(original: bool) -> String {
    let plugins = if original {
        format!("[\"/{AZURE_PLUGIN_JSON}{BACKUP_SUFFIX}\"]")
    } else {
        "[]".to_string()
    };
    format!(
        "{}\n# Azure's plugin configuration now calls quiesce; quiesce reads the owner's plugin\n\
         # from where the installer kept it (docs/platforms/azure.md).\n\
         azure_plugins = {plugins}\n",
        marker_line("azure")
    )
}

/// The qemu-ga hook: its freeze / thaw argument mapped to the bridge's pre / post.
fn qemu_ga_script(bin: &Path, config: Option<&Path>) -> String {
    format!(
        "#!/bin/sh\n{}\ncase \"$1\" in\n  freeze) side=pre ;;\n  thaw) side=post ;;\n  *) exit 0 ;;\n\
         esac\n{}\n",
        marker_line("qemu-ga"),
        bridge_exec(bin, config, "\"$side\"", "qemu-ga")
    )
}

/// Whether a hook is qemu's stock dispatcher (it runs the scripts of `fsfreeze-hook.d/`).
pub fn is_stock_qemu_hook(text: &str) -> bool {
    text.contains("fsfreeze-hook.d") && !text.contains(MARKER)
}

/// The file installed for qemu-ga under `root`: in `fsfreeze-hook.d/` behind the stock hook
/// (`stock`), else the hook itself.
pub fn qemu_ga_files(root: &Path, bin: &Path, config: Option<&Path>, stock: bool) -> Vec<Planned> {
    let path = if stock {
        root.join("etc/qemu/fsfreeze-hook.d/quiesce-bridge")
    } else {
        root.join("etc/qemu/fsfreeze-hook")
    };
    vec![Planned {
        path,
        content: qemu_ga_script(bin, config),
        mode: 0o700,
    }]
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// `text` with `enabled = true` in its `[Snapshots]` section (added when missing); every
/// other line is kept as it was.
pub fn enable_snapshots(text: &str) -> String {
    let mut out = Vec::new();
    let mut in_section = false;
    let mut seen_section = false;
    let mut done = false;
    for line in text.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            if in_section && !done {
                out.push("enabled = true".to_string());
                done = true;
            }
            in_section = name.trim().eq_ignore_ascii_case("snapshots");
            seen_section |= in_section;
        } else if in_section {
            let key = t.split(['=', ':']).next().unwrap_or("").trim();
            if key.eq_ignore_ascii_case("enabled") {
                if !done {
                    out.push("enabled = true".to_string());
                    done = true;
                }
                continue;
            }
        }
        out.push(line.to_string());
    }
    if in_section && !done {
        out.push("enabled = true".to_string());
        done = true;
    }
    if !seen_section && !done {
        if out.last().is_some_and(|l| !l.trim().is_empty()) {
            out.push(String::new());
        }
        out.push("[Snapshots]".to_string());
        out.push("enabled = true".to_string());
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}

fn backup_of(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(BACKUP_SUFFIX);
    PathBuf::from(p)
}

/// Extended attribute marking a directory the installer created, so that `--uninstall`
/// removes it (when empty) and never a directory that was there before.
const CREATED_XATTR: &str = "user.quiesce-install-created";

fn create_dirs(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    for d in missing.into_iter().rev() {
        std::fs::create_dir(d)?;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
        // Without the mark (a filesystem without user attributes) the directory is kept on
        // uninstall: leaving an empty directory is better than removing the owner's.
        let _ = rustix::fs::setxattr(d, CREATED_XATTR, b"1", rustix::fs::XattrFlags::empty());
    }
    Ok(())
}

/// Remove the directories above `file` the installer created, while they are empty.
fn remove_created_dirs(root: &Path, file: &Path) {
    let mut buf = [0u8; 8];
    for d in file.ancestors().skip(1) {
        if d == root || !d.starts_with(root) {
            break;
        }
        if rustix::fs::getxattr(d, CREATED_XATTR, &mut buf[..]).is_err()
            || std::fs::remove_dir(d).is_err()
        {
            break;
        }
    }
}

fn write_file(p: &Planned) -> std::io::Result<()> {
    let dir = p.path.parent().expect("installed files have a directory");
    create_dirs(dir)?;
    crate::files::write_atomic(&p.path, p.content.as_bytes(), p.mode)
}

/// Run `quiesce install`; returns the exit status. `config` is passed on by the bridge
/// scripts (`--config`).
pub fn run(
    platform: super::bridge::Platform,
    root: &Path,
    uninstall: bool,
    config: Option<&Path>,
) -> i32 {
    use super::bridge::Platform;
    let bin = match std::env::current_exe() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("quiesce: cannot find the quiesce binary: {e}");
            return 1;
        }
    };
    let result = match platform {
        Platform::Gcp => gcp(root, &bin, config, uninstall),
        Platform::Azure => azure(root, &bin, config, uninstall),
        Platform::QemuGa => qemu_ga(root, &bin, config, uninstall),
        other => Err(format!(
            "nothing to install on the machine for {}: the platform calls the bridge from its \
             own configuration (see docs/platforms/)",
            other.name()
        )),
    };
    match result {
        Ok(lines) if lines.is_empty() => {
            println!(
                "nothing to do: already {}",
                if uninstall {
                    "uninstalled"
                } else {
                    "installed"
                }
            );
            0
        }
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
            0
        }
        Err(e) => {
            eprintln!("quiesce: {e}");
            1
        }
    }
}

/// The owner's version of `path`: the backup once installed, else the file unless it is
/// what the install writes (`ours`).
fn original_of(path: &Path, ours: Option<&str>) -> Option<String> {
    if let Ok(text) = std::fs::read_to_string(backup_of(path)) {
        return Some(text);
    }
    std::fs::read_to_string(path)
        .ok()
        .filter(|t| Some(t.as_str()) != ours)
}

/// Install Google's scripts (or, with `uninstall`, restore); one line per action taken.
pub fn gcp(
    root: &Path,
    bin: &Path,
    config: Option<&Path>,
    uninstall: bool,
) -> Result<Vec<String>, String> {
    let cfg_path = root.join("etc/default/instance_configs.cfg");
    // The settings are edited from the original (the backup, once installed), so a second
    // install gives the same bytes.
    let original_cfg = original_of(&cfg_path, None);
    apply(
        root,
        &gcp_files(root, bin, config, original_cfg.as_deref()),
        uninstall,
    )
}

/// Install Azure's plugin configuration and bridge scripts (or restore).
pub fn azure(
    root: &Path,
    bin: &Path,
    config: Option<&Path>,
    uninstall: bool,
) -> Result<Vec<String>, String> {
    let plugin = root.join(AZURE_PLUGIN_JSON);
    let native_path = root.join(NATIVE_CONFIG);
    let native = std::fs::read_to_string(&native_path).ok();
    // The plugin JSON the install writes does not depend on the owner's file except through
    // its settings, which are read from the owner's (kept-aside) copy.
    let is_ours = |t: &str| t.contains("\"/etc/azure/quiesce/pre.sh\"");
    let original = std::fs::read_to_string(backup_of(&plugin))
        .ok()
        .or_else(|| {
            std::fs::read_to_string(&plugin)
                .ok()
                .filter(|t| !is_ours(t))
        });
    let settings = AzureSettings::from_original(original.as_deref());
    let files = azure_files(
        root,
        bin,
        config,
        &settings,
        original.is_some(),
        native.as_deref(),
    );
    let mut notes = Vec::new();
    if !uninstall && !files.iter().any(|f| f.path == native_path) {
        // The owner's native configuration comes first and stays as it is; it must not read
        // the installed plugin (the bridge would be its own hook).
        let n = native.unwrap_or_default();
        if n.contains(&format!("/{AZURE_PLUGIN_JSON}\"")) {
            return Err(format!(
                "{} names /{AZURE_PLUGIN_JSON} in azure_plugins; once installed that file calls \
                 quiesce itself. Name /{AZURE_PLUGIN_JSON}{BACKUP_SUFFIX} there instead (where \
                 the installer keeps the original), then install again",
                native_path.display()
            ));
        }
        if original.is_some() {
            notes.push(format!(
                "left {} as it is; to keep running the owner's Azure scripts, add \
                 \"/{AZURE_PLUGIN_JSON}{BACKUP_SUFFIX}\" to its azure_plugins",
                native_path.display()
            ));
        }
    }
    let mut done = apply(root, &files, uninstall)?;
    if !done.is_empty() {
        done.extend(notes);
    }
    Ok(done)
}

/// Install the qemu-ga hook (or restore).
pub fn qemu_ga(
    root: &Path,
    bin: &Path,
    config: Option<&Path>,
    uninstall: bool,
) -> Result<Vec<String>, String> {
    let hook = root.join("etc/qemu/fsfreeze-hook");
    let ours = qemu_ga_script(bin, config);
    let stock = original_of(&hook, Some(&ours)).is_some_and(|t| is_stock_qemu_hook(&t))
        && !backup_of(&hook).exists();
    apply(root, &qemu_ga_files(root, bin, config, stock), uninstall)
}

/// Write `files` (keeping a backup of each replaced one), or with `uninstall` restore the
/// backups and remove what was created; one line per action taken.
fn apply(root: &Path, files: &[Planned], uninstall: bool) -> Result<Vec<String>, String> {
    let mut done = Vec::new();
    let err = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    for f in files {
        let backup = backup_of(&f.path);
        let current = std::fs::read(&f.path).ok();
        if uninstall {
            if backup.exists() {
                std::fs::rename(&backup, &f.path).map_err(|e| err(&f.path, e))?;
                done.push(format!("restored {}", f.path.display()));
            } else if current.as_deref() == Some(f.content.as_bytes()) {
                std::fs::remove_file(&f.path).map_err(|e| err(&f.path, e))?;
                done.push(format!("removed {}", f.path.display()));
                remove_created_dirs(root, &f.path);
            } else if current.is_some() {
                done.push(format!(
                    "left {} alone: it was changed after the install",
                    f.path.display()
                ));
            }
            continue;
        }
        if current.as_deref() == Some(f.content.as_bytes()) {
            continue;
        }
        if current.is_some() && !backup.exists() {
            std::fs::rename(&f.path, &backup).map_err(|e| err(&f.path, e))?;
            done.push(format!("kept {} as {}", f.path.display(), backup.display()));
        }
        write_file(f).map_err(|e| err(&f.path, e))?;
        done.push(format!("wrote {}", f.path.display()));
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_enabled_in_every_shape_of_settings() {
        for (before, after) in [
            ("", "[Snapshots]\nenabled = true\n"),
            (
                "[Accounts]\ngroups = adm\n",
                "[Accounts]\ngroups = adm\n\n[Snapshots]\nenabled = true\n",
            ),
            (
                "[Snapshots]\nenabled = false\ntimeout_in_seconds = 30\n",
                "[Snapshots]\nenabled = true\ntimeout_in_seconds = 30\n",
            ),
            (
                "[snapshots]\ntimeout_in_seconds = 30\n[Other]\nx = 1\n",
                "[snapshots]\ntimeout_in_seconds = 30\nenabled = true\n[Other]\nx = 1\n",
            ),
            (
                "[Snapshots]\nEnabled: no\nenabled = 0\n",
                "[Snapshots]\nenabled = true\n",
            ),
        ] {
            assert_eq!(enable_snapshots(before), after, "{before:?}");
            // Applying it twice changes nothing more.
            assert_eq!(enable_snapshots(after), after, "{after:?}");
        }
    }

    #[test]
    fn scripts_quote_the_binary_path() {
        let files = gcp_files(Path::new("/r"), Path::new("/opt/it's/quiesce"), None, None);
        assert!(files[0]
            .content
            .contains("exec '/opt/it'\\''s/quiesce' hook pre --platform gcp"));
        assert_eq!(files[0].path, Path::new("/r/etc/google/snapshots/pre.sh"));
    }

    #[test]
    fn azure_settings_kept_from_the_owners_plugin() {
        for (text, want) in [
            (None, (60, true, true)),
            (Some("not json"), (60, true, true)),
            (
                Some(r#"{"timeoutInSeconds": 30, "fsFreezeEnabled": false}"#),
                (60, true, false),
            ),
            (
                Some(r#"{"timeoutInSeconds": 300, "continueBackupOnFailure": false}"#),
                (300, false, true),
            ),
        ] {
            let s = AzureSettings::from_original(text);
            assert_eq!(
                (s.timeout_s, s.continue_on_failure, s.fs_freeze),
                want,
                "{text:?}"
            );
        }
    }

    #[test]
    fn azure_native_config_imports_the_kept_plugin_unless_the_owner_has_one() {
        let s = AzureSettings::from_original(None);
        let bin = Path::new("/usr/bin/quiesce");
        let files = azure_files(Path::new("/"), bin, None, &s, true, None);
        let native = files
            .iter()
            .find(|f| f.path.ends_with("quiesce.toml"))
            .unwrap();
        assert!(native
            .content
            .contains("azure_plugins = [\"/etc/azure/VMSnapshotPluginConfig.json.quiesce-orig\"]"));
        assert_eq!(native.mode, 0o600);
        // Ours (a second install) is planned again; the owner's own is left alone.
        let again = azure_files(Path::new("/"), bin, None, &s, true, Some(&native.content));
        assert_eq!(again, files);
        let owners = azure_files(Path::new("/"), bin, None, &s, true, Some("[freeze]\n"));
        assert!(owners.iter().all(|f| !f.path.ends_with("quiesce.toml")));
        let none = azure_files(Path::new("/"), bin, None, &s, false, None);
        assert!(none[3].content.contains("azure_plugins = []\n"));
    }

    #[test]
    fn qemu_ga_bridge_goes_behind_the_stock_hook_or_is_the_hook() {
        let bin = Path::new("/usr/bin/quiesce");
        let cfg = Path::new("/etc/q.toml");
        let behind = qemu_ga_files(Path::new("/r"), bin, Some(cfg), true);
        assert_eq!(
            behind[0].path,
            Path::new("/r/etc/qemu/fsfreeze-hook.d/quiesce-bridge")
        );
        assert!(behind[0].content.contains(
            "exec '/usr/bin/quiesce' --config '/etc/q.toml' hook \"$side\" --platform qemu-ga"
        ));
        let itself = qemu_ga_files(Path::new("/r"), bin, None, false);
        assert_eq!(itself[0].path, Path::new("/r/etc/qemu/fsfreeze-hook"));
        // The bridge never looks like the stock dispatcher, so a second install agrees.
        assert!(!is_stock_qemu_hook(&itself[0].content));
        assert!(is_stock_qemu_hook(
            "FSFREEZE_D=$(dirname -- \"$0\")/fsfreeze-hook.d\n"
        ));
    }
}
