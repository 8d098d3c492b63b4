//! The native TOML configuration (`/etc/quiesce/quiesce.toml`).
//!
//! The annotated example in `examples/quiesce.toml` documents every key and its default.
//! Types are strict (`"false"` is not a boolean, `30` is not a duration: durations are
//! strings like `"30s"`); unknown keys are warnings, not errors.

pub use super::read::MAX_CONFIG_BYTES;
use super::read::{char_boundary, in_words, line_col, read_trusted};
use super::{
    azure, BtrfsConfig, CatalogConfig, Config, ConfigErrors, FreezeConfig, HookConfig, LogConfig,
    LogFormat, MariaVerifyConfig, Paths, PgVerifyConfig, ProviderConfig, ScriptSpec, ServerConfig,
    SnapshotConfig, VerifyConfig,
};
use crate::codes::{ErrorCode, Location, Problem, Warning};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

const CODE: ErrorCode = ErrorCode::IncorrectConfigFile;

/// A duration written as a string (`"30s"`, `"5m"`, `"7d"`).
#[derive(Debug, Clone, Copy)]
struct Dur(Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a duration string such as \"30s\", \"5m\" or \"7d\"")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Dur, E> {
                // Refused beyond a century: time arithmetic at run time must never overflow.
                const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
                match humantime::parse_duration(s) {
                    Ok(d) if d <= CENTURY => Ok(Dur(d)),
                    Ok(_) => Err(E::custom(format!(
                        "duration {s:?} is longer than 100 years; nothing here can wait that long"
                    ))),
                    Err(e) => Err(E::custom(format!("invalid duration {s:?}: {e}"))),
                }
            }
        }
        d.deserialize_str(V)
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawFile {
    azure_plugins: Vec<PathBuf>,
    paths: RawPaths,
    log: RawLog,
    freeze: RawFreeze,
    snapshot: RawSnapshot,
    #[serde(rename = "hook")]
    hooks: Vec<RawHook>,
    server: RawServer,
    verify: RawVerify,
    group: Option<crate::group::RawGroup>,
    platforms: crate::config::platform::PlatformSources,
    catalog: RawCatalog,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawCatalog {
    keep_runs: Option<u64>,
    keep_days: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawVerify {
    after_snapshot: Option<bool>,
    timeout: Option<Dur>,
    postgres: Option<RawPgVerify>,
    mariadb: Option<RawMariaVerify>,
    hooks: Vec<Vec<String>>,
}

#[derive(Deserialize)]
struct RawMariaVerify {
    data: PathBuf,
    log_bin: Option<String>,
    query: Option<String>,
}

#[derive(Deserialize)]
struct RawPgVerify {
    data: PathBuf,
    user: Option<String>,
    query: Option<String>,
    database: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawPaths {
    state_dir: Option<PathBuf>,
    catalog: Option<PathBuf>,
    metrics_file: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawLog {
    file: Option<PathBuf>,
    format: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawFreeze {
    enabled: Option<bool>,
    timeout: Option<Dur>,
    include: Vec<PathBuf>,
    exclude: Vec<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawSnapshot {
    provider: Option<String>,
    command: Option<Vec<String>>,
    timeout: Option<Dur>,
    subvolumes: Option<Vec<PathBuf>>,
    directory: Option<PathBuf>,
    keep_last: Option<u32>,
    max_age: Option<Dur>,
    verify_command: Option<Vec<String>>,
    verify_teardown: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct RawHook {
    name: String,
    pre: Option<Vec<String>>,
    post: Option<Vec<String>>,
    timeout: Option<Dur>,
    retries: Option<u32>,
    pre_retries: Option<u32>,
    post_retries: Option<u32>,
    continue_on_failure: Option<bool>,
    hold: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawServer {
    socket: Option<PathBuf>,
    allowed_uids: Vec<u32>,
    tcp_listen: Option<String>,
    token_file: Option<PathBuf>,
    default_deadline: Option<Dur>,
}

/// Default per-script timeout of a native hook.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(60);

/// A message for a TOML syntax error the parser did not describe. The usual cause is a
/// control character (TOML allows none but tab, not even in a comment), so name the first
/// one on the line of the error; otherwise say what is at `offset`.
fn describe_syntax_error(text: &str, offset: Option<usize>) -> String {
    let offset = char_boundary(text, offset.unwrap_or(text.len()));
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line = text.get(start..end).unwrap_or("");
    if let Some(c) = line
        .chars()
        .find(|c| c.is_control() && *c != '\t' && *c != '\r')
    {
        return format!(
            "invalid TOML: control character U+{:04X} is not allowed (not even in a comment)",
            c as u32
        );
    }
    match text.get(offset..).and_then(|t| t.chars().next()) {
        Some(c) => format!("invalid TOML: unexpected {c:?}"),
        None => "invalid TOML: unexpected end of file".to_string(),
    }
}

/// Location of the first `key =` assignment in TOML text (for warnings about unknown keys).
fn find_key(text: &str, key: &str) -> Option<(usize, usize)> {
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix(key) {
            if rest.trim_start().starts_with('=') {
                return Some((i + 1, line.len() - t.len() + 1));
            }
        }
    }
    None
}

/// Location of the key at `path` (`freeze.enabeld`, `hook.0.colour`, as serde reports it):
/// the assignment inside its own table, not the first place the name appears in the file.
fn find_key_path(text: &str, path: &str) -> Option<(usize, usize)> {
    let mut table = String::new();
    let mut arrays: std::collections::HashMap<String, usize> = Default::default();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_string();
            let n = arrays.entry(name.clone()).or_insert(0);
            table = format!("{name}.{n}");
            *n += 1;
            continue;
        }
        if let Some(name) = t.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = name.trim().to_string();
            continue;
        }
        let Some((key, _)) = t.split_once('=') else {
            continue;
        };
        let key = key.trim().trim_matches('"');
        let full = if table.is_empty() {
            key.to_string()
        } else {
            format!("{table}.{key}")
        };
        if full == path {
            return Some((i + 1, line.len() - line.trim_start().len() + 1));
        }
    }
    None
}

/// Load and validate a native configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = read_trusted(path, CODE).map_err(|p| ConfigErrors(vec![p]))?;
    parse(path, &text)
}

/// Parse native TOML text (already read and trusted) into the model.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
    let (raw, ignored) = deserialize(path, text)?;
    let mut cfg = Config::defaults(path);
    let mut found = Findings {
        path,
        text,
        problems: Vec::new(),
    };
    cfg.warnings
        .extend(unknown_key_warnings(path, text, ignored));
    cfg.paths = paths(raw.paths);
    cfg.log = log(raw.log, &mut found);
    cfg.freeze = freeze(raw.freeze, &mut found);
    cfg.snapshot = snapshot(raw.snapshot, &mut found);
    cfg.server = server(raw.server, &mut found);
    cfg.verify = verify(raw.verify, &mut found);
    cfg.catalog = catalog(raw.catalog, &mut found);
    if let Some(g) = raw.group {
        match g.into_config() {
            Ok(g) => cfg.group = Some(g),
            Err(m) => found.push(m, "group"),
        }
    }
    for h in raw.hooks {
        let hook = hook(h, &mut found);
        cfg.hooks.push(hook);
    }
    add_azure_plugins(&mut cfg, &raw.azure_plugins);
    add_platform_hooks(&mut cfg, &raw.platforms, &mut found.problems);
    super::dedupe_hook_names(&mut cfg.hooks);
    if found.problems.is_empty() {
        Ok(cfg)
    } else {
        Err(ConfigErrors(found.problems))
    }
}

/// The problems found while building the model, each located at its key.
struct Findings<'a> {
    path: &'a Path,
    text: &'a str,
    problems: Vec<Problem>,
}

impl Findings<'_> {
    /// A problem located at the first assignment of `key`.
    fn problem(&self, msg: String, key: &str) -> Problem {
        let (l, c) = find_key(self.text, key).map_or((None, None), |(l, c)| (Some(l), Some(c)));
        Problem::new(CODE, msg).at(location(self.path, l, c))
    }

    fn push(&mut self, msg: String, key: &str) {
        let p = self.problem(msg, key);
        self.problems.push(p);
    }
}

fn location(path: &Path, line: Option<usize>, column: Option<usize>) -> Location {
    Location {
        file: path.to_path_buf(),
        line,
        column,
    }
}

/// The raw file and the keys nobody asked for; a TOML or type error is the only problem.
fn deserialize(path: &Path, text: &str) -> Result<(RawFile, Vec<String>), ConfigErrors> {
    let mut ignored = Vec::new();
    let de = toml::Deserializer::new(text);
    let raw: RawFile = match serde_path_to_error::deserialize(serde_ignored::Deserializer::new(
        de,
        &mut |p: serde_ignored::Path| ignored.push(p.to_string()),
    )) {
        Ok(r) => r,
        Err(e) => {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let (line, col) = inner
                .span()
                .map(|s| line_col(text, s.start))
                .map_or((None, None), |(l, c)| (Some(l), Some(c)));
            let msg = in_words(inner.message().trim(), "a table");
            // toml leaves the message empty for some syntax errors (a control character in a
            // comment, found by fuzzing): never report a problem without saying what it is.
            let msg = if msg.is_empty() {
                describe_syntax_error(text, inner.span().map(|s| s.start))
            } else {
                msg
            };
            let msg = if key.is_empty() || key == "." {
                msg
            } else {
                format!("`{key}`: {msg}")
            };
            return Err(ConfigErrors(vec![
                Problem::new(CODE, msg).at(location(path, line, col))
            ]));
        }
    };
    Ok((raw, ignored))
}

/// One warning per unknown key, located at its assignment.
fn unknown_key_warnings(path: &Path, text: &str, ignored: Vec<String>) -> Vec<Warning> {
    ignored
        .into_iter()
        .map(|key| {
            let leaf = key.rsplit('.').next().unwrap_or(&key).to_string();
            let (l, c) = find_key_path(text, &key)
                .or_else(|| find_key(text, &leaf))
                .map_or((None, None), |(l, c)| (Some(l), Some(c)));
            Warning::new(format!("unknown key `{key}` ignored")).at(location(path, l, c))
        })
        .collect()
}

fn paths(raw: RawPaths) -> Paths {
    let defaults = Paths::default();
    Paths {
        state_dir: raw.state_dir.unwrap_or(defaults.state_dir),
        catalog: raw.catalog.unwrap_or(defaults.catalog),
        metrics_file: raw.metrics_file,
    }
}

fn log(raw: RawLog, found: &mut Findings<'_>) -> LogConfig {
    LogConfig {
        file: raw.file,
        format: match raw.format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                found.push(
                    format!("`log.format` must be \"text\" or \"json\", not {other:?}"),
                    "format",
                );
                LogFormat::Text
            }
        },
    }
}

fn freeze(raw: RawFreeze, found: &mut Findings<'_>) -> FreezeConfig {
    let fd = FreezeConfig::default();
    let freeze = FreezeConfig {
        enabled: raw.enabled.unwrap_or(fd.enabled),
        timeout: raw.timeout.map_or(fd.timeout, |d| d.0),
        include: raw.include,
        exclude: raw.exclude,
    };
    for p in freeze.include.iter().chain(&freeze.exclude) {
        if !p.is_absolute() {
            found.push(
                format!(
                    "freeze mount point {} must be an absolute path",
                    crate::quote::quote_path(p)
                ),
                if freeze.include.contains(p) {
                    "include"
                } else {
                    "exclude"
                },
            );
        }
    }
    if freeze.timeout.is_zero() {
        found.push("`freeze.timeout` must be more than 0".into(), "timeout");
    }
    freeze
}

fn snapshot(s: RawSnapshot, found: &mut Findings<'_>) -> SnapshotConfig {
    let provider = match s.provider.as_deref().unwrap_or("none") {
        "none" => ProviderConfig::None,
        "command" => match s.command {
            Some(argv) if !argv.is_empty() && !argv[0].is_empty() => {
                ProviderConfig::Command { argv }
            }
            _ => {
                found.push(
                    "provider \"command\" needs `snapshot.command`, a non-empty argv list".into(),
                    "provider",
                );
                ProviderConfig::None
            }
        },
        "btrfs" => match (s.subvolumes, s.directory) {
            (Some(subvolumes), Some(directory)) if !subvolumes.is_empty() => {
                ProviderConfig::Btrfs(BtrfsConfig {
                    subvolumes,
                    directory,
                    keep_last: s.keep_last,
                    max_age: s.max_age.map(|d| d.0),
                })
            }
            _ => {
                found.push(
                    "provider \"btrfs\" needs `snapshot.subvolumes` (non-empty) and \
                     `snapshot.directory`"
                        .into(),
                    "provider",
                );
                ProviderConfig::None
            }
        },
        other => {
            found.push(
                format!(
                    "unknown snapshot provider {other:?} (use \"command\", \"btrfs\" or \"none\")"
                ),
                "provider",
            );
            ProviderConfig::None
        }
    };
    for (key, argv) in [
        ("verify_command", &s.verify_command),
        ("verify_teardown", &s.verify_teardown),
    ] {
        if argv
            .as_ref()
            .is_some_and(|a| a.first().is_none_or(|c| c.is_empty()))
        {
            found.push(
                format!("`snapshot.{key}` must be a non-empty argv list"),
                key,
            );
        } else if argv.is_some() && !matches!(provider, ProviderConfig::Command { .. }) {
            found.push(
                format!("`snapshot.{key}` is for the \"command\" provider only"),
                key,
            );
        }
    }
    if s.verify_teardown.is_some() && s.verify_command.is_none() {
        found.push(
            "`snapshot.verify_teardown` needs `snapshot.verify_command` (it removes the view \
             that command made)"
                .into(),
            "verify_teardown",
        );
    }
    SnapshotConfig {
        provider,
        timeout: s.timeout.map_or(SnapshotConfig::default().timeout, |d| d.0),
        verify_command: s.verify_command,
        verify_teardown: s.verify_teardown,
    }
}

fn catalog(raw: RawCatalog, found: &mut Findings<'_>) -> CatalogConfig {
    let keep_runs = raw.keep_runs.unwrap_or(CatalogConfig::DEFAULT_KEEP_RUNS);
    let keep_days = raw.keep_days.unwrap_or(CatalogConfig::DEFAULT_KEEP_DAYS);
    if keep_runs == 0 {
        found.push(
            "`catalog.keep_runs` must be at least 1 (the run just recorded is always kept)".into(),
            "keep_runs",
        );
    }
    if !(1..=CatalogConfig::MAX_KEEP_DAYS).contains(&keep_days) {
        found.push(
            format!(
                "`catalog.keep_days` must be between 1 and {} (a century), not {keep_days}",
                CatalogConfig::MAX_KEEP_DAYS
            ),
            "keep_days",
        );
    }
    CatalogConfig {
        keep_runs,
        keep_days,
    }
}

fn server(raw: RawServer, found: &mut Findings<'_>) -> ServerConfig {
    let svd = ServerConfig::default();
    let server = ServerConfig {
        socket: raw.socket.unwrap_or(svd.socket),
        allowed_uids: raw.allowed_uids,
        tcp_listen: raw.tcp_listen,
        token_file: raw.token_file,
        default_deadline: raw.default_deadline.map_or(svd.default_deadline, |d| d.0),
    };
    if server.tcp_listen.is_some() && server.token_file.is_none() {
        found.push(
            "`server.tcp_listen` requires `server.token_file`".into(),
            "tcp_listen",
        );
    }
    server
}

fn verify(raw: RawVerify, found: &mut Findings<'_>) -> VerifyConfig {
    let vd = VerifyConfig::default();
    let mut verify = VerifyConfig {
        after_snapshot: raw.after_snapshot.unwrap_or(vd.after_snapshot),
        timeout: raw.timeout.map_or(vd.timeout, |d| d.0),
        postgres: raw.postgres.map(|p| PgVerifyConfig {
            data: p.data,
            user: p.user.unwrap_or_else(|| "postgres".into()),
            query: p.query,
            database: p.database.unwrap_or_else(|| "postgres".into()),
        }),
        mariadb: raw.mariadb.map(|m| MariaVerifyConfig {
            data: m.data,
            log_bin: m.log_bin,
            query: m.query,
        }),
        hooks: Vec::new(),
    };
    if verify.timeout.is_zero() {
        found.push("`verify.timeout` must be more than 0".into(), "timeout");
    }
    let data_dirs = [
        ("postgres", verify.postgres.as_ref().map(|p| &p.data)),
        ("mariadb", verify.mariadb.as_ref().map(|m| &m.data)),
    ];
    for (which, data) in data_dirs {
        if data.is_some_and(|d| !d.is_absolute()) {
            found.push(
                format!(
                    "`verify.{which}.data` must be the absolute path of the live data directory"
                ),
                "data",
            );
        }
    }
    for argv in raw.hooks {
        match argv.split_first() {
            Some((first, rest)) if !first.is_empty() => verify.hooks.push(ScriptSpec {
                path: PathBuf::from(first),
                args: rest.to_vec(),
            }),
            _ => found.push(
                "`verify.hooks` entries must be non-empty argv lists".into(),
                "hooks",
            ),
        }
    }
    verify
}

/// One `[[hook]]`, with every problem it has.
fn hook(h: RawHook, found: &mut Findings<'_>) -> HookConfig {
    let name = h.name.clone();
    let refuse = |found: &mut Findings<'_>, msg: String, key: &str| {
        let p = found.problem(msg, key).with_hook(&name);
        found.problems.push(p);
    };
    let spec = |argv: Option<Vec<String>>, which: &str, found: &mut Findings<'_>| {
        let argv = argv?;
        if argv.is_empty() || argv[0].is_empty() {
            refuse(found, format!("hook `{name}`: `{which}` is empty"), which);
            return None;
        }
        Some(ScriptSpec {
            path: PathBuf::from(&argv[0]),
            args: argv[1..].to_vec(),
        })
    };
    let pre = spec(h.pre, "pre", found);
    let post = spec(h.post, "post", found);
    let hold = h.hold.unwrap_or(false);
    if h.name.trim().is_empty() {
        found.push("a hook has an empty `name`".into(), "name");
    }
    if hold && pre.is_none() {
        refuse(
            found,
            format!("hook `{name}`: hold mode needs a `pre` command"),
            "hold",
        );
    }
    if hold && post.is_some() {
        refuse(
            found,
            format!(
                "hook `{name}`: a held hook has no separate `post`; its exit status is the post \
                 result"
            ),
            "hold",
        );
    }
    let timeout = h.timeout.map_or(DEFAULT_HOOK_TIMEOUT, |d| d.0);
    if timeout.is_zero() {
        refuse(
            found,
            format!("hook `{name}`: timeout must be more than 0"),
            "timeout",
        );
    }
    HookConfig {
        name: h.name,
        pre,
        post,
        timeout,
        pre_retries: h.pre_retries.or(h.retries).unwrap_or(0),
        post_retries: h.post_retries.or(h.retries).unwrap_or(0),
        continue_on_failure: h.continue_on_failure.unwrap_or(true),
        hold,
        origin: found.path.to_path_buf(),
    }
}

/// The hooks of `azure_plugins`; an unreadable plugin is skipped, not fatal (the backup still
/// happens).
fn add_azure_plugins(cfg: &mut Config, plugins: &[PathBuf]) {
    for plugin in plugins {
        match azure::load_plugin_json(plugin) {
            Ok(p) => {
                if !p.fs_freeze_enabled {
                    cfg.freeze.enabled = false;
                }
                cfg.warnings.extend(p.warnings);
                cfg.hooks.push(p.hook);
            }
            Err(mut e) => cfg.skipped.append(&mut e),
        }
    }
}

/// The hooks of the platforms' own hook directories.
fn add_platform_hooks(
    cfg: &mut Config,
    platforms: &crate::config::platform::PlatformSources,
    problems: &mut Vec<Problem>,
) {
    let found = crate::config::platform::read(platforms);
    cfg.hooks.extend(found.hooks);
    // Configuration warnings carry no code (codes name errors).
    cfg.warnings
        .extend(found.warnings.into_iter().map(|p| Warning {
            code: None,
            ..p.into()
        }));
    problems.extend(found.problems);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Config, ConfigErrors> {
        parse(Path::new("/etc/quiesce/quiesce.toml"), text)
    }

    #[test]
    fn full_example_parses() {
        let cfg = p(include_str!("../../examples/quiesce.toml")).unwrap();
        assert_eq!(cfg.freeze.timeout, Duration::from_secs(60));
        assert_eq!(cfg.hooks.len(), 1);
        assert_eq!(cfg.hooks[0].name, "postgres");
        assert_eq!(cfg.hooks[0].pre.as_ref().unwrap().args, vec!["--fast"]);
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    }

    #[test]
    fn string_false_is_not_a_boolean() {
        let e = p("[freeze]\nenabled = \"false\"\n").unwrap_err();
        let pr = &e.0[0];
        assert_eq!(pr.code, ErrorCode::IncorrectConfigFile);
        let loc = pr.location.as_ref().unwrap();
        assert_eq!((loc.line, loc.column), (Some(2), Some(11)));
        assert!(pr.message.contains("freeze.enabled"), "{}", pr.message);
    }

    #[test]
    fn absurd_durations_are_refused() {
        let e = p("[freeze]\ntimeout = \"500000000000 years\"\n").unwrap_err();
        assert!(e.0[0].message.contains("100 years"), "{}", e.0[0].message);
    }

    #[test]
    fn durations_must_be_strings() {
        let e = p("[freeze]\ntimeout = 30\n").unwrap_err();
        assert!(e.0[0].message.contains("duration"), "{}", e.0[0].message);
        let e = p("[freeze]\ntimeout = \"soon\"\n").unwrap_err();
        assert!(
            e.0[0].message.contains("invalid duration"),
            "{}",
            e.0[0].message
        );
    }

    #[test]
    fn unknown_keys_warn() {
        let cfg = p("colour = 1\n[freeze]\nenabeld = true\n").unwrap();
        assert_eq!(cfg.warnings.len(), 2);
        assert!(cfg.warnings[1].message.contains("freeze.enabeld"));
        assert_eq!(cfg.warnings[1].location.as_ref().unwrap().line, Some(3));
        assert!(
            cfg.warnings.iter().all(|w| w.code.is_none()),
            "{:?}",
            cfg.warnings
        );
    }

    #[test]
    fn unknown_key_warning_points_at_the_key_itself() {
        // `colour` is a key of the second hook and of [freeze]: each warning points at its own.
        let text = "[log]\nformat = \"text\"\n[[hook]]\nname = \"a\"\n[[hook]]\nname = \"b\"\n\
                    colour = 1\n[freeze]\ntimeout = \"5s\"\ncolour = 2\n";
        let cfg = p(text).unwrap();
        let at = |k: &str| {
            cfg.warnings
                .iter()
                .find(|w| w.message.contains(k))
                .and_then(|w| w.location.as_ref()?.line)
        };
        assert_eq!(at("`hook.1.colour`"), Some(7), "{:?}", cfg.warnings);
        assert_eq!(at("`freeze.colour`"), Some(10), "{:?}", cfg.warnings);
    }

    #[test]
    fn several_problems_are_all_reported() {
        let e = p(concat!(
            "[snapshot]\nprovider = \"zfs\"\n",
            "[[hook]]\nname = \"a\"\nhold = true\n",
            "[[hook]]\nname = \"b\"\npre = []\n",
        ))
        .unwrap_err();
        assert_eq!(e.0.len(), 3, "{e}");
    }

    #[test]
    fn syntax_errors_always_say_what_is_wrong() {
        // Found by fuzz/fuzz_targets/native_toml.rs: toml gives no message for these.
        for (text, line, want) in [
            ("# a\0b\n", 1, "U+0000"),
            ("[freeze]\n# x\u{1}\nenabled = true\n", 2, "U+0001"),
            ("a = [\n# \u{7f}\n]\n", 2, "U+007F"),
        ] {
            let e = p(text).unwrap_err();
            let pr = &e.0[0];
            assert_eq!(pr.code, ErrorCode::IncorrectConfigFile);
            assert!(pr.message.contains(want), "{text:?}: {:?}", pr.message);
            assert_eq!(pr.location.as_ref().unwrap().line, Some(line), "{text:?}");
        }
    }

    #[test]
    fn wrong_types_are_refused_in_the_users_words() {
        for (text, want) in [
            (
                "[freeze]\nenabled = 1\n",
                "must be true or false, found the number 1",
            ),
            ("freeze = 1\n", "must be a table, found the number 1"),
            (
                "[freeze]\ninclude = \"/a\"\n",
                "must be a list, found the string",
            ),
            ("[freeze]\ninclude = [1]\n", "must be a path (a string)"),
            (
                "[[hook]]\npre = [\"/x\"]\n",
                "the required key `name` is missing",
            ),
            ("[hook]\nname = \"a\"\n", "must be a list, found a table"),
            (
                "[[hook]]\nname = \"a\"\nretries = -1\n",
                "from 0 to 4294967295",
            ),
            (
                "[[hook]]\nname = \"a\"\nretries = 1.5\n",
                "found the number 1.5",
            ),
            (
                "[[hook]]\nname = \"a\"\nretries = \"2\"\n",
                "found the string \"2\"",
            ),
            ("[snapshot]\nkeep_last = 99999999999\n", "whole number"),
            ("[server]\nallowed_uids = [-1]\n", "whole number"),
            ("azure_plugins = \"/a\"\n", "must be a list"),
            ("[paths]\nstate_dir = 5\n", "must be a path"),
            (
                "[snapshot]\ncommand = [1]\n",
                "must be a string, found the number 1",
            ),
        ] {
            let e = p(text).unwrap_err();
            let msg = &e.0[0].message;
            assert!(msg.contains(want), "{text:?}: {msg}");
            for bad in crate::config::read::NOT_USERS_WORDS {
                assert!(!msg.contains(bad), "{text:?}: {msg}");
            }
        }
    }

    #[test]
    fn command_provider_view_commands_are_checked() {
        let cmd = "[snapshot]\nprovider = \"command\"\ncommand = [\"/s\"]\n";
        let cfg = p(&format!(
            "{cmd}verify_command = [\"/v\", \"-x\"]\nverify_teardown = [\"/t\"]\n"
        ))
        .unwrap();
        assert_eq!(
            cfg.snapshot.verify_command,
            Some(vec!["/v".to_string(), "-x".to_string()])
        );
        assert_eq!(cfg.snapshot.verify_teardown, Some(vec!["/t".to_string()]));
        for (text, want) in [
            (
                format!("{cmd}verify_command = []\n"),
                "`snapshot.verify_command` must be a non-empty argv list",
            ),
            (
                format!("{cmd}verify_teardown = [\"/t\"]\n"),
                "`snapshot.verify_teardown` needs `snapshot.verify_command`",
            ),
            (
                "[snapshot]\nprovider = \"btrfs\"\nsubvolumes = [\"/a\"]\ndirectory = \"/b\"\n\
                 verify_command = [\"/v\"]\n"
                    .to_string(),
                "is for the \"command\" provider only",
            ),
        ] {
            let e = p(&text).unwrap_err();
            assert!(
                e.0.iter().any(|m| m.message.contains(want)),
                "{text:?}: {e}"
            );
        }
    }

    #[test]
    fn tcp_listener_requires_a_token_file() {
        let e = p("[server]\ntcp_listen = \"127.0.0.1:7450\"\n").unwrap_err();
        assert_eq!(e.0[0].code, ErrorCode::IncorrectConfigFile);
        assert!(e.0[0].message.contains("token_file"), "{e}");
        let cfg =
            p("[server]\ntcp_listen = \"127.0.0.1:7450\"\ntoken_file = \"/etc/quiesce/token\"\n")
                .unwrap();
        assert_eq!(cfg.server.tcp_listen.as_deref(), Some("127.0.0.1:7450"));
    }

    #[test]
    fn retries_default_and_override() {
        let cfg =
            p("[[hook]]\nname = \"a\"\npre = [\"/x\"]\nretries = 2\npost_retries = 0\n").unwrap();
        assert_eq!(
            (cfg.hooks[0].pre_retries, cfg.hooks[0].post_retries),
            (2, 0)
        );
        assert!(cfg.hooks[0].continue_on_failure);
    }

    #[test]
    fn catalog_retention_defaults_and_errors_in_words() {
        let cfg = p("").unwrap();
        assert_eq!(cfg.catalog, CatalogConfig::default());
        assert_eq!(
            (cfg.catalog.keep_runs, cfg.catalog.keep_days),
            (10_000, 400)
        );
        let cfg = p("[catalog]\nkeep_runs = 50\nkeep_days = 7\n").unwrap();
        assert_eq!((cfg.catalog.keep_runs, cfg.catalog.keep_days), (50, 7));
        let cases = [
            (
                "[catalog]\nkeep_runs = 0\n",
                "`catalog.keep_runs` must be at least 1",
            ),
            (
                "[catalog]\nkeep_days = 0\n",
                "`catalog.keep_days` must be between 1 and 36500",
            ),
            ("[catalog]\nkeep_days = 99999\n", "not 99999"),
            ("[catalog]\nkeep_runs = \"10\"\n", "catalog.keep_runs"),
            ("[catalog]\nkeep_runs = -1\n", "catalog.keep_runs"),
        ];
        for (text, want) in cases {
            let e = p(text).unwrap_err();
            let message = &e.0[0].message;
            assert!(message.contains(want), "{text:?}: {message}");
            assert!(!message.contains("u64"), "{text:?}: {message}");
            assert_eq!(
                e.0[0].location.as_ref().and_then(|l| l.line),
                Some(2),
                "{text:?}"
            );
        }
    }
}
