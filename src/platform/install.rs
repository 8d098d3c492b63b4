//! `quiesce install --platform gcp [--root DIR] [--uninstall]`: wire the bridge into the
//! platform's own configuration.
//!
//! For Google: `/etc/google/snapshots/pre.sh` and `post.sh` (mode 0700) calling
//! `quiesce hook pre|post --platform gcp`, and `[Snapshots] enabled = true` in
//! `/etc/default/instance_configs.cfg`. Every file replaced is first moved aside to
//! `<file>.quiesce-orig`; a second install changes nothing; `--uninstall` puts the originals
//! back (by rename: same bytes, owner and mode) and removes what it created. `--root` installs
//! under another directory (an image being built, or a test).

use std::path::{Path, PathBuf};

/// The line that marks a script as the installed bridge.
pub const MARKER: &str = "# Installed by `quiesce install --platform";

/// Suffix of the copy kept of a replaced file.
pub const BACKUP_SUFFIX: &str = ".quiesce-orig";

/// One file the installer owns.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub path: PathBuf,
    pub content: String,
    pub mode: u32,
}

/// The files installed for Google under `root`, calling `quiesce` at `bin`.
pub fn gcp_files(root: &Path, bin: &Path, existing_cfg: Option<&str>) -> Vec<Planned> {
    let script = |side: &str| Planned {
        path: root.join(format!("etc/google/snapshots/{side}.sh")),
        content: format!(
            "#!/bin/sh\n# Installed by `quiesce install --platform gcp`; \
             `quiesce install --platform gcp --uninstall` restores what was here.\n\
             exec {} hook {side} --platform gcp\n",
            shell_quote(&bin.display().to_string())
        ),
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

fn write_file(p: &Planned) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = p.path.parent().expect("installed files have a directory");
    if !dir.exists() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    }
    let tmp = dir.join(format!(".quiesce-install-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(p.mode)
        .open(&tmp)?;
    f.write_all(p.content.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &p.path)
}

/// Run `quiesce install`; returns the exit status.
pub fn run(platform: super::bridge::Platform, root: &Path, uninstall: bool) -> i32 {
    let result = match platform {
        super::bridge::Platform::Gcp => std::env::current_exe()
            .map_err(|e| format!("cannot find the quiesce binary: {e}"))
            .and_then(|bin| gcp(root, &bin, uninstall)),
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

/// Install (or, with `uninstall`, restore); returns one line per action taken.
pub fn gcp(root: &Path, bin: &Path, uninstall: bool) -> Result<Vec<String>, String> {
    let cfg_path = root.join("etc/default/instance_configs.cfg");
    // The settings are edited from the original (the backup, once installed), so a second
    // install gives the same bytes.
    let original_cfg = [backup_of(&cfg_path), cfg_path.clone()]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok());
    let files = gcp_files(root, bin, original_cfg.as_deref());
    let mut done = Vec::new();
    let err = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    for f in &files {
        let backup = backup_of(&f.path);
        let current = std::fs::read(&f.path).ok();
        if uninstall {
            if backup.exists() {
                std::fs::rename(&backup, &f.path).map_err(|e| err(&f.path, e))?;
                done.push(format!("restored {}", f.path.display()));
            } else if current.as_deref() == Some(f.content.as_bytes()) {
                std::fs::remove_file(&f.path).map_err(|e| err(&f.path, e))?;
                done.push(format!("removed {}", f.path.display()));
                // Created by the install: remove its directories too while they are empty.
                let mut dir = f.path.parent();
                while let Some(d) = dir.filter(|d| *d != root && d.starts_with(root)) {
                    if std::fs::remove_dir(d).is_err() {
                        break;
                    }
                    dir = d.parent();
                }
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
        let files = gcp_files(Path::new("/r"), Path::new("/opt/it's/quiesce"), None);
        assert!(files[0]
            .content
            .contains("exec '/opt/it'\\''s/quiesce' hook pre --platform gcp"));
        assert_eq!(files[0].path, Path::new("/r/etc/google/snapshots/pre.sh"));
    }
}
