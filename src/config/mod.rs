//! Configuration: the native TOML file and Azure's plugin files, read into one model.
//!
//! Lookup order when no `--config` is given (see README, "Configuration"):
//! `/etc/quiesce/quiesce.toml`, `/etc/azure/VMSnapshotPluginHost.conf`,
//! `/etc/azure/VMSnapshotScriptPluginConfig.json`, `/etc/azure/VMSnapshotPluginConfig.json`.

pub mod azure;
pub mod native;
pub mod platform;
pub mod read;

use crate::codes::{Problem, Warning};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default locations, in lookup order.
pub const DEFAULT_NATIVE: &str = "/etc/quiesce/quiesce.toml";
pub const DEFAULT_PLUGIN_HOST: &str = "/etc/azure/VMSnapshotPluginHost.conf";
pub const DEFAULT_SCRIPT_PLUGIN_JSON: &str = "/etc/azure/VMSnapshotScriptPluginConfig.json";
pub const DEFAULT_PLUGIN_JSON: &str = "/etc/azure/VMSnapshotPluginConfig.json";

/// The whole configuration, whichever files it came from.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file the configuration was read from (the first one, for Azure chains).
    pub source: PathBuf,
    pub paths: Paths,
    pub freeze: FreezeConfig,
    pub snapshot: SnapshotConfig,
    pub hooks: Vec<HookConfig>,
    pub server: ServerConfig,
    pub log: LogConfig,
    /// `[verify]`: proving that snapshots restore (see `quiesce verify`).
    pub verify: VerifyConfig,
    /// `[group]`: this machine is a member of a consistency group (`docs/groups.md`).
    pub group: Option<crate::group::GroupConfig>,
    /// `[catalog]`: how much history the catalog keeps.
    pub catalog: CatalogConfig,
    /// Non-fatal findings (unknown keys, ...), shown by `quiesce check` and logged.
    pub warnings: Vec<Warning>,
    /// Azure plugins that could not be loaded or trusted, with their codes. Their scripts do
    /// not run; a run still takes its snapshot, at most file-system consistent (as for a
    /// failed pre script with `continueBackupOnFailure: true`), and `quiesce check` reports
    /// them as errors.
    pub skipped: Vec<Problem>,
}

/// `[catalog]`: retention of the run history. After every recorded run, runs beyond the
/// newest `keep_runs`, and runs that started more than `keep_days` days ago, are deleted with
/// everything recorded about them (errors, snapshots, hooks, verifications of their
/// snapshots, group reports). The newest run is always kept, and the totals the metrics
/// count never go down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatalogConfig {
    pub keep_runs: u64,
    pub keep_days: u64,
}

impl CatalogConfig {
    /// Default `keep_runs`: years of hourly runs, a few tens of megabytes.
    pub const DEFAULT_KEEP_RUNS: u64 = 10_000;
    /// Default `keep_days`: more than a year, so a yearly comparison still has its data.
    pub const DEFAULT_KEEP_DAYS: u64 = 400;
    /// Largest `keep_days` (a century, like every other duration in the configuration).
    pub const MAX_KEEP_DAYS: u64 = 36_500;
}

impl Default for CatalogConfig {
    fn default() -> Self {
        CatalogConfig {
            keep_runs: Self::DEFAULT_KEEP_RUNS,
            keep_days: Self::DEFAULT_KEEP_DAYS,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Paths {
    /// Lock and guard state. Must be on tmpfs in production.
    pub state_dir: PathBuf,
    /// SQLite catalog of runs.
    pub catalog: PathBuf,
    /// node_exporter textfile-collector file written after each run; none by default.
    pub metrics_file: Option<PathBuf>,
}

/// Environment variables that move the *default* state directory and catalog (a value in
/// the configuration file always wins). Azure files cannot name paths, so this is how the
/// test suite (and an unusual installation) keeps runs of Azure-only configurations away
/// from the machine's own `/run/quiesce` and `/var/lib/quiesce/catalog.db`. Only root sets
/// root's environment, so this opens nothing to other users.
pub const ENV_STATE_DIR: &str = "QUIESCE_STATE_DIR";
/// See [`ENV_STATE_DIR`].
pub const ENV_CATALOG: &str = "QUIESCE_CATALOG";

fn env_path(key: &str, default: &str) -> PathBuf {
    std::env::var_os(key)
        .filter(|v| !v.is_empty() && Path::new(v).is_absolute())
        .map_or_else(|| PathBuf::from(default), PathBuf::from)
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            state_dir: env_path(ENV_STATE_DIR, "/run/quiesce"),
            catalog: env_path(ENV_CATALOG, "/var/lib/quiesce/catalog.db"),
            metrics_file: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// Log file written in addition to stderr (buffered while frozen); none by default.
    pub file: Option<PathBuf>,
    /// `"text"` (default) or `"json"` lines.
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            file: None,
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FreezeConfig {
    /// `fsFreezeEnabled`.
    pub enabled: bool,
    /// Guard deadline: the longest time anything stays frozen.
    pub timeout: Duration,
    /// Mount points to freeze; empty means every eligible filesystem.
    pub include: Vec<PathBuf>,
    /// Mount points never frozen.
    pub exclude: Vec<PathBuf>,
}

impl Default for FreezeConfig {
    fn default() -> Self {
        FreezeConfig {
            enabled: true,
            timeout: Duration::from_secs(60),
            include: Vec::new(),
            exclude: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotConfig {
    pub provider: ProviderConfig,
    /// How long the provider may take.
    pub timeout: Duration,
    /// Command provider: the user's command that makes a view of one snapshot for
    /// `quiesce verify` (gets the snapshot id, prints where the view is), when configured.
    pub verify_command: Option<Vec<String>>,
    /// Command provider: the command that removes such a view again.
    pub verify_teardown: Option<Vec<String>>,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            provider: ProviderConfig::None,
            timeout: Duration::from_secs(120),
            verify_command: None,
            verify_teardown: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProviderConfig {
    /// No snapshot is taken by quiesce (host-driven, or a dry exercise).
    None,
    /// An external command, argv without a shell.
    Command { argv: Vec<String> },
    /// Read-only btrfs subvolume snapshots through the kernel ioctl.
    Btrfs(BtrfsConfig),
}

#[derive(Debug, Clone, PartialEq)]
pub struct BtrfsConfig {
    /// Subvolumes to snapshot (paths of subvolume roots).
    pub subvolumes: Vec<PathBuf>,
    /// Directory (on the same btrfs) where snapshots are created.
    pub directory: PathBuf,
    /// Keep at most this many runs' snapshots.
    pub keep_last: Option<u32>,
    /// Remove snapshots older than this.
    pub max_age: Option<Duration>,
}

/// A script and its arguments, passed as argv (never through a shell).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptSpec {
    pub path: PathBuf,
    pub args: Vec<String>,
}

/// One hook: a pre script and a post script (either may be absent), or one held process.
#[derive(Debug, Clone, PartialEq)]
pub struct HookConfig {
    pub name: String,
    pub pre: Option<ScriptSpec>,
    pub post: Option<ScriptSpec>,
    /// Per script, covering all its attempts.
    pub timeout: Duration,
    /// Retries after a failure of the pre script; 0 = one attempt.
    pub pre_retries: u32,
    /// Retries after a failure of the post script; 0 = one attempt.
    pub post_retries: u32,
    /// `continueBackupOnFailure`.
    pub continue_on_failure: bool,
    /// Hold mode (README, "Hold mode"): `pre` runs as one process across the snapshot.
    pub hold: bool,
    /// Where this hook was defined.
    pub origin: PathBuf,
}

/// `[verify]`: what `quiesce verify` checks on a disposable view of a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyConfig {
    /// Verify every snapshot right after `quiesce snapshot` made it.
    pub after_snapshot: bool,
    /// The longest a whole verification may take; the view and servers are torn down then.
    pub timeout: Duration,
    /// The built-in PostgreSQL verifier, when configured.
    pub postgres: Option<PgVerifyConfig>,
    /// The built-in MariaDB / MySQL verifier, when configured.
    pub mariadb: Option<MariaVerifyConfig>,
    /// User verifiers: trusted scripts run with `QUIESCE_VERIFY_VIEW` set.
    pub hooks: Vec<ScriptSpec>,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        VerifyConfig {
            after_snapshot: false,
            timeout: Duration::from_secs(30 * 60),
            postgres: None,
            mariadb: None,
            hooks: Vec::new(),
        }
    }
}

/// `[verify.postgres]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PgVerifyConfig {
    /// The live data directory, as configured on this machine; found in the view.
    pub data: PathBuf,
    /// The superuser role to connect as (`postgres`).
    pub user: String,
    /// A query that must return `t` (true) on the restored copy, e.g. an invariant.
    pub query: Option<String>,
    /// The database the query runs in.
    pub database: String,
}

/// `[verify.mariadb]`.
#[derive(Debug, Clone, PartialEq)]
pub struct MariaVerifyConfig {
    /// The live data directory (`datadir`); found in the view.
    pub data: PathBuf,
    /// The original's `log-bin` name, when the binary log is on.
    pub log_bin: Option<String>,
    /// A query that must return 1 (true) on the restored copy.
    pub query: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Unix socket of `quiesce serve` (mode 0600).
    pub socket: PathBuf,
    /// Extra uids allowed on the unix socket besides root.
    pub allowed_uids: Vec<u32>,
    /// Optional TCP listener (loopback unless configured otherwise); requires `token_file`.
    pub tcp_listen: Option<String>,
    /// Root-only file holding the bearer token for TCP callers.
    pub token_file: Option<PathBuf>,
    /// Deadline used when a prepare request names none.
    pub default_deadline: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            socket: env_path(ENV_STATE_DIR, "/run/quiesce").join("quiesce.sock"),
            allowed_uids: Vec::new(),
            tcp_listen: None,
            token_file: None,
            default_deadline: Duration::from_secs(60),
        }
    }
}

impl Config {
    /// A configuration with every default and no hooks.
    pub fn defaults(source: &Path) -> Config {
        Config {
            source: source.to_path_buf(),
            paths: Paths::default(),
            freeze: FreezeConfig::default(),
            snapshot: SnapshotConfig::default(),
            verify: VerifyConfig::default(),
            hooks: Vec::new(),
            server: ServerConfig::default(),
            log: LogConfig::default(),
            group: None,
            catalog: CatalogConfig::default(),
            warnings: Vec::new(),
            skipped: Vec::new(),
        }
    }
}

/// Which format a configuration file is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Native,
    PluginHost,
    PluginJson,
}

impl Format {
    /// Guess the format from the file name: `.toml`, `.json`, anything else is the INI host file.
    pub fn of(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => Format::Native,
            Some("json") => Format::PluginJson,
            _ => Format::PluginHost,
        }
    }
}

/// Everything wrong with a configuration; never empty.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<Problem>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Find the configuration file: `explicit` if given, else the first default that exists.
pub fn locate(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    [
        DEFAULT_NATIVE,
        DEFAULT_PLUGIN_HOST,
        DEFAULT_SCRIPT_PLUGIN_JSON,
        DEFAULT_PLUGIN_JSON,
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// Load the configuration from `explicit` or the default locations.
///
/// Every problem found is returned, not just the first, so `quiesce check` can list them all.
pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigErrors> {
    let Some(path) = locate(explicit) else {
        return Err(ConfigErrors(vec![Problem::new(
            crate::codes::ErrorCode::IncorrectConfigFile,
            format!(
                "no configuration found (looked for {DEFAULT_NATIVE}, {DEFAULT_PLUGIN_HOST}, \
                 {DEFAULT_SCRIPT_PLUGIN_JSON}, {DEFAULT_PLUGIN_JSON}); name one with --config"
            ),
        )]));
    };
    match Format::of(&path) {
        Format::Native => native::load(&path),
        Format::PluginHost => azure::load_plugin_host(&path),
        Format::PluginJson => azure::load_plugin_json_config(&path),
    }
}

/// Make hook names unique by suffixing `-2`, `-3`, ... (several Azure plugins share a stem).
pub(crate) fn dedupe_hook_names(hooks: &mut [HookConfig]) {
    let mut seen = std::collections::HashSet::new();
    for h in hooks.iter_mut() {
        let base = h.name.clone();
        let mut n = 1;
        while !seen.insert(h.name.clone()) {
            n += 1;
            h.name = format!("{base}-{n}");
        }
    }
}
