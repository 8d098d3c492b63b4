//! Hook sources read from the platforms' own conventions, so that a machine already set up
//! for a platform works unchanged under `quiesce snapshot` too:
//!
//! - Google's guest agent: `/etc/google/snapshots/pre.sh` and `post.sh`, enabled and timed by
//!   the `[Snapshots]` section of `/etc/default/instance_configs.cfg` (`enabled`, default
//!   false; `timeout_in_seconds`, default 60). The agent layers `<file>.distro`,
//!   `<file>.template` and `<file>` (later wins, names case-insensitive) and runs each script
//!   by path with one argument, the disk list.
//! - qemu-ga's `fsfreeze-hook.d/`: every executable file, in byte order of its name, called
//!   with `freeze` before the freeze and `thaw` after; backup and package-manager leftovers
//!   (`*~`, `*.bak`, `*.dpkg-old`, ...) and dot-files are skipped, as qemu's stock
//!   `fsfreeze-hook` does. The stock script only logs a non-zero exit status and goes on, so
//!   these hooks continue on failure (quiesce still records it and lowers the consistency).
//!
//! They become ordinary hooks (the same trust rules as every other hook) whose `origin` is
//! the convention's directory. `docs/platforms/` describes each platform.

use crate::codes::{ErrorCode, Location, Problem};
use crate::config::{HookConfig, ScriptSpec};
use serde::Deserialize;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Google's defaults.
pub const GOOGLE_SCRIPTS: &str = "/etc/google/snapshots";
pub const GOOGLE_CONFIG: &str = "/etc/default/instance_configs.cfg";
/// The guest agent's default `timeout_in_seconds`.
pub const GOOGLE_DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The line that marks a script as the bridge `quiesce install` put there (its hook sources
/// skip it, or run the user's script it replaced).
pub const MARKER: &str = "# Installed by `quiesce install --platform";

/// Suffix of the copy `quiesce install` keeps of a file it replaced.
pub const BACKUP_SUFFIX: &str = ".quiesce-orig";

/// The `[platforms]` table of the native configuration (`examples/quiesce.toml`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct PlatformSources {
    /// Read Google's snapshot scripts as a hook (default false).
    pub google: bool,
    /// Where Google's scripts live.
    pub google_scripts: PathBuf,
    /// The Google guest agent's settings file.
    pub google_config: PathBuf,
    /// qemu-ga hook directory to read (unset: none).
    pub qemu_ga_hooks: Option<PathBuf>,
    /// Per-script timeout of the qemu-ga hooks ("60s"; qemu-ga itself waits forever).
    pub qemu_ga_timeout: Option<String>,
}

impl Default for PlatformSources {
    fn default() -> Self {
        PlatformSources {
            google: false,
            google_scripts: PathBuf::from(GOOGLE_SCRIPTS),
            google_config: PathBuf::from(GOOGLE_CONFIG),
            qemu_ga_hooks: None,
            qemu_ga_timeout: None,
        }
    }
}

/// Hooks found through the platforms' conventions, plus warnings (what was not used and
/// why) and problems (what makes the configuration unusable).
#[derive(Debug, Default)]
pub struct Found {
    pub hooks: Vec<HookConfig>,
    pub warnings: Vec<Problem>,
    pub problems: Vec<Problem>,
}

fn config_problem(msg: String) -> Problem {
    Problem::new(ErrorCode::IncorrectConfigFile, msg)
}

/// Read every enabled source.
pub fn read(sources: &PlatformSources) -> Found {
    let mut found = Found::default();
    if sources.google {
        google(sources, &mut found);
    }
    if let Some(dir) = &sources.qemu_ga_hooks {
        let timeout = match sources
            .qemu_ga_timeout
            .as_deref()
            .map(humantime::parse_duration)
        {
            None => crate::config::native::DEFAULT_HOOK_TIMEOUT,
            Some(Ok(d)) if !d.is_zero() => d,
            Some(_) => {
                found.problems.push(config_problem(format!(
                    "`platforms.qemu_ga_timeout` must be a duration such as \"60s\", not {:?}",
                    sources.qemu_ga_timeout.as_deref().unwrap_or_default()
                )));
                return found;
            }
        };
        if !dir.is_absolute() {
            found.problems.push(config_problem(format!(
                "`platforms.qemu_ga_hooks` must be an absolute path, not {}",
                dir.display()
            )));
            return found;
        }
        qemu_ga(dir, timeout, &mut found);
    }
    found
}

// ---------------------------------------------------------------------------------------
// Google

/// The `[Snapshots]` settings of the guest agent that matter here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoogleSettings {
    pub enabled: bool,
    pub timeout: Duration,
}

impl Default for GoogleSettings {
    fn default() -> Self {
        GoogleSettings {
            enabled: false,
            timeout: GOOGLE_DEFAULT_TIMEOUT,
        }
    }
}

/// A boolean as the agent's INI library reads it.
fn ini_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "t" | "true" | "y" | "yes" | "on" => Some(true),
        "0" | "f" | "false" | "n" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Apply one layer of the agent's INI text to `settings`. A bad value is a warning naming
/// its line and leaves the previous value.
pub fn apply_google_layer(
    settings: &mut GoogleSettings,
    text: &str,
    file: &Path,
    warnings: &mut Vec<Problem>,
) {
    let mut in_snapshots = false;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_snapshots = section.trim().eq_ignore_ascii_case("snapshots");
            continue;
        }
        if !in_snapshots {
            continue;
        }
        let Some((key, value)) = line.split_once('=').or_else(|| line.split_once(':')) else {
            continue;
        };
        let key = key.trim().to_ascii_lowercase();
        let value = value.trim().trim_matches('"');
        let warn = |msg: String| {
            config_problem(msg).at(Location {
                file: file.to_path_buf(),
                line: Some(i + 1),
                column: None,
            })
        };
        match key.as_str() {
            "enabled" => match ini_bool(value) {
                Some(b) => settings.enabled = b,
                None => warnings.push(warn(format!(
                    "[Snapshots] enabled = {value:?} is not a boolean; ignored"
                ))),
            },
            "timeout_in_seconds" => match value.parse::<u64>() {
                Ok(s) if s > 0 => settings.timeout = Duration::from_secs(s),
                _ => warnings.push(warn(format!(
                    "[Snapshots] timeout_in_seconds = {value:?} is not a positive number of \
                     seconds; ignored"
                ))),
            },
            _ => {}
        }
    }
}

/// The guest agent's settings file is not secret, but it decides whether scripts run: it
/// must be a regular file owned by root and writable only by root.
fn read_platform_file(path: &Path) -> Result<Option<String>, String> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    if !meta.file_type().is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{} must be owned by root and writable only by root (owner uid {}, mode {:04o})",
            path.display(),
            meta.uid(),
            meta.mode() & 0o7777
        ));
    }
    if meta.len() > crate::config::native::MAX_CONFIG_BYTES {
        return Err(format!("{} is too large", path.display()));
    }
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(Some(String::from_utf8_lossy(&text).into_owned()))
}

/// The guest agent's settings, layered as the agent does.
pub fn google_settings(config: &Path, warnings: &mut Vec<Problem>) -> GoogleSettings {
    let mut settings = GoogleSettings::default();
    for suffix in [".distro", ".template", ""] {
        let mut layer = config.as_os_str().to_owned();
        layer.push(suffix);
        let layer = PathBuf::from(layer);
        match read_platform_file(&layer) {
            Ok(Some(text)) => apply_google_layer(&mut settings, &text, &layer, warnings),
            Ok(None) => {}
            Err(msg) => warnings.push(config_problem(format!("{msg}; its settings are ignored"))),
        }
    }
    settings
}

fn google(sources: &PlatformSources, found: &mut Found) {
    let settings = google_settings(&sources.google_config, &mut found.warnings);
    if !settings.enabled {
        found.warnings.push(config_problem(format!(
            "Google snapshot scripts in {} are not used: [Snapshots] enabled is not true in {}",
            sources.google_scripts.display(),
            sources.google_config.display()
        )));
        return;
    }
    // The agent passes the disk list as the only argument; quiesce's own runs know no disk
    // list, so the scripts get the same argument count with an empty list.
    // Where the bridge is installed, the user's own scripts were kept aside: run those (the
    // bridge itself would ask the server for a second operation).
    let script = |name: &str| {
        let mut path = sources.google_scripts.join(name);
        let text = std::fs::read(&path).unwrap_or_default();
        if String::from_utf8_lossy(&text).contains(MARKER) {
            let mut kept = path.into_os_string();
            kept.push(BACKUP_SUFFIX);
            path = PathBuf::from(kept);
        }
        path.exists().then(|| ScriptSpec {
            path,
            args: vec![String::new()],
        })
    };
    let (pre, post) = (script("pre.sh"), script("post.sh"));
    if pre.is_none() && post.is_none() {
        found.warnings.push(config_problem(format!(
            "Google snapshots are enabled but {} has neither pre.sh nor post.sh",
            sources.google_scripts.display()
        )));
        return;
    }
    found.hooks.push(HookConfig {
        name: "google-snapshots".into(),
        pre,
        post,
        timeout: settings.timeout,
        pre_retries: 0,
        post_retries: 0,
        // The agent reports a failed pre script and the snapshot is still taken, without the
        // application's cooperation: fall back, do not abort.
        continue_on_failure: true,
        hold: false,
        origin: sources.google_scripts.clone(),
    });
}

// ---------------------------------------------------------------------------------------
// qemu-ga

/// Names qemu's stock `fsfreeze-hook` skips: editor backups and package-manager leftovers.
/// Dot-files never match its `*` glob either.
pub fn qemu_ga_ignored(name: &str) -> bool {
    const SUFFIXES: [&str; 14] = [
        "~",
        ".bak",
        ".orig",
        ".rpmnew",
        ".rpmorig",
        ".rpmsave",
        ".sample",
        ".dpkg-old",
        ".dpkg-new",
        ".dpkg-tmp",
        ".dpkg-dist",
        ".dpkg-bak",
        ".dpkg-backup",
        ".dpkg-remove",
    ];
    name.starts_with('.') || SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// Whether `path` is the bridge `quiesce install` put there: it calls quiesce itself, so as
/// one of quiesce's own hooks it would ask the server for a second operation.
fn is_bridge(path: &Path) -> bool {
    use std::io::Read;
    let mut head = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(512).read_to_end(&mut head))
        .is_ok_and(|_| String::from_utf8_lossy(&head).contains(MARKER))
}

fn qemu_ga(dir: &Path, timeout: Duration, found: &mut Found) {
    use std::os::unix::fs::PermissionsExt;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        // qemu's script exits 0 when the directory is missing: nothing to run.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            found.problems.push(config_problem(format!(
                "cannot read qemu-ga hook directory {}: {e}",
                dir.display()
            )));
            return;
        }
    };
    let mut names: Vec<Vec<u8>> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().as_bytes().to_vec())
        .collect();
    // The shell's glob in the C locale: byte order.
    names.sort();
    for raw in names {
        let name = String::from_utf8_lossy(&raw).into_owned();
        if qemu_ga_ignored(&name) {
            continue;
        }
        let path = dir.join(OsStr::from_bytes(&raw));
        // `[ -x "$file" ]` follows symlinks; the trust check then refuses the link, as for
        // every other hook, so it shows up as a problem instead of silently running.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() || meta.permissions().mode() & 0o111 == 0 || is_bridge(&path) {
            continue;
        }
        let spec = |arg: &str| {
            Some(ScriptSpec {
                path: path.clone(),
                args: vec![arg.to_string()],
            })
        };
        found.hooks.push(HookConfig {
            name: format!("qemu-ga:{name}"),
            pre: spec("freeze"),
            post: spec("thaw"),
            timeout,
            pre_retries: 0,
            post_retries: 0,
            continue_on_failure: true,
            hold: false,
            origin: dir.to_path_buf(),
        });
    }
}

/// One line per hook: its name and where it came from (for `quiesce check` and `mounts`).
pub fn describe_hooks(hooks: &[HookConfig]) -> Vec<String> {
    hooks
        .iter()
        .map(|h| {
            // Names and paths may hold control characters: printed escaped.
            let q = crate::quote::quote;
            let origin = crate::quote::quote_path(&h.origin);
            format!("{} (from {origin})", q(&h.name))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_ga_skips_what_the_stock_script_skips() {
        for (name, skipped) in [
            ("10-db", false),
            ("db.sh", false),
            ("db.sh~", true),
            ("db.bak", true),
            ("db.orig", true),
            ("db.rpmnew", true),
            ("db.rpmorig", true),
            ("db.rpmsave", true),
            ("db.sample", true),
            ("db.dpkg-old", true),
            ("db.dpkg-new", true),
            ("db.dpkg-tmp", true),
            ("db.dpkg-dist", true),
            ("db.dpkg-bak", true),
            ("db.dpkg-backup", true),
            ("db.dpkg-remove", true),
            (".hidden", true),
            ("bak", false),
            ("db.bak.sh", false),
        ] {
            assert_eq!(qemu_ga_ignored(name), skipped, "{name}");
        }
    }

    #[test]
    fn google_settings_values_and_layers() {
        let f = Path::new("/etc/default/instance_configs.cfg");
        let cases: [(&str, bool, u64, usize); 7] = [
            ("", false, 60, 0),
            ("[Snapshots]\nenabled = true\n", true, 60, 0),
            (
                "[snapshots]\nENABLED = yes\ntimeout_in_seconds = 15\n",
                true,
                15,
                0,
            ),
            ("[Other]\nenabled = true\n", false, 60, 0),
            ("[Snapshots]\nenabled = maybe\n", false, 60, 1),
            ("[Snapshots]\ntimeout_in_seconds = 0\n", false, 60, 1),
            (
                "[Snapshots]\ntimeout_in_seconds = -3\nenabled=1\n",
                true,
                60,
                1,
            ),
        ];
        for (text, enabled, timeout, nwarn) in cases {
            let mut s = GoogleSettings::default();
            let mut w = Vec::new();
            apply_google_layer(&mut s, text, f, &mut w);
            assert_eq!(s.enabled, enabled, "{text:?}");
            assert_eq!(s.timeout, Duration::from_secs(timeout), "{text:?}");
            assert_eq!(w.len(), nwarn, "{text:?}: {w:?}");
        }
        // A later layer wins.
        let mut s = GoogleSettings::default();
        let mut w = Vec::new();
        apply_google_layer(&mut s, "[Snapshots]\nenabled = true\n", f, &mut w);
        apply_google_layer(&mut s, "[Snapshots]\nenabled = false\n", f, &mut w);
        assert!(!s.enabled);
    }

    #[test]
    fn qemu_ga_directory_in_byte_order_with_freeze_and_thaw() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("quiesce-qga-src-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("subdir")).unwrap();
        for (name, mode) in [
            ("b-second", 0o700),
            ("A-first", 0o700),
            ("a-third", 0o700),
            ("not-exec", 0o600),
            ("old.bak", 0o700),
            (".hidden", 0o700),
        ] {
            let p = dir.join(name);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        // The installed bridge is not one of quiesce's own hooks.
        let bridge = &crate::platform::install::qemu_ga_files(
            &dir,
            Path::new("/usr/bin/quiesce"),
            None,
            true,
        )[0];
        let bridge_path = dir.join("quiesce-bridge");
        std::fs::write(&bridge_path, &bridge.content).unwrap();
        std::fs::set_permissions(&bridge_path, std::fs::Permissions::from_mode(0o700)).unwrap();
        let found = read(&PlatformSources {
            qemu_ga_hooks: Some(dir.clone()),
            qemu_ga_timeout: Some("5s".into()),
            ..PlatformSources::default()
        });
        let names: Vec<&str> = found.hooks.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(
            names,
            ["qemu-ga:A-first", "qemu-ga:a-third", "qemu-ga:b-second"]
        );
        let h = &found.hooks[0];
        assert_eq!(h.pre.as_ref().unwrap().args, ["freeze"]);
        assert_eq!(h.post.as_ref().unwrap().args, ["thaw"]);
        assert_eq!(h.timeout, Duration::from_secs(5));
        assert!(h.continue_on_failure);
        assert_eq!(h.origin, dir);
        assert_eq!(
            describe_hooks(&found.hooks[..1]),
            [format!("qemu-ga:A-first (from {})", dir.display())]
        );
        // A missing directory is nothing to run, as in the stock script.
        let mut none = Found::default();
        qemu_ga(&dir.join("missing"), Duration::from_secs(5), &mut none);
        assert!(none.hooks.is_empty() && none.problems.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_settings_are_problems_in_the_users_words() {
        let found = read(&PlatformSources {
            qemu_ga_hooks: Some(PathBuf::from("/etc/qemu/fsfreeze-hook.d")),
            qemu_ga_timeout: Some("soon".into()),
            ..PlatformSources::default()
        });
        assert!(found.problems[0].message.contains("qemu_ga_timeout"));
        let found = read(&PlatformSources {
            qemu_ga_hooks: Some(PathBuf::from("hooks.d")),
            ..PlatformSources::default()
        });
        assert!(found.problems[0].message.contains("absolute"));
    }
}
