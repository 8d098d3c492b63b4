//! The command line. `main` only calls [`main`] here.

use crate::api::{Caller, FreezeScope, OpState};
use crate::codes::Problem;
use crate::config::{self, Config};
use crate::hooks::Phase;
use crate::pipeline::{self, RunOptions};
use crate::report::{Report, Status};
use crate::server::client::{Client, ClientError};
use clap::{Parser, Subcommand};
use serde::Serialize;
use std::path::PathBuf;

pub use crate::codes::EXIT_USAGE;

#[derive(Parser, Debug)]
#[command(
    name = "quiesce",
    version = crate::generate::VERSION,
    about = "Application-consistent snapshots for Linux",
    long_about = "quiesce runs your pre-scripts to quiesce applications, freezes the \
filesystems (a guard process guarantees the thaw), has a snapshot taken, thaws, runs the \
post-scripts, and reports exactly which consistency it reached.\n\n\
Configuration: --config FILE, else the first of /etc/quiesce/quiesce.toml, \
/etc/azure/VMSnapshotPluginHost.conf, /etc/azure/VMSnapshotScriptPluginConfig.json, \
/etc/azure/VMSnapshotPluginConfig.json. Azure Backup's files work unchanged.\n\n\
Exit codes: 0 succeeded, 3 degraded (a snapshot exists at a lower consistency), 1 failed, \
2 invalid invocation."
)]
pub struct Cli {
    /// Configuration file (.toml native, .json Azure plugin config, else Azure plugin host INI).
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// More log detail on stderr (-v debug, -vv trace); QUIESCE_LOG overrides.
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the whole flow once: pre hooks, freeze, snapshot, thaw, post hooks.
    Snapshot {
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
        /// The same as `quiesce check` (with `--json`, `check --json`): validate the config,
        /// script trust and the freeze plan, and run nothing. No report, no catalog row.
        #[arg(long)]
        dry_run: bool,
    },
    /// Validate the configuration, the trust of every script and the freeze plan; run nothing.
    Check {
        #[arg(long)]
        json: bool,
    },
    /// Show every mount and whether it would be frozen, and why.
    Mounts {
        #[arg(long)]
        json: bool,
    },
    /// List the snapshots the configured provider can see, with their consistency.
    Snapshots {
        #[arg(long)]
        json: bool,
    },
    /// Show past runs from the catalog.
    History {
        #[arg(long)]
        json: bool,
        /// Show at most N runs (newest first).
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Only runs that started within this long ago ("1h", "7d").
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
    },
    /// Thaw whatever a crashed run left frozen (also done at the start of every run).
    Recover {
        #[arg(long)]
        json: bool,
    },
    /// Serve the host-driven two-phase API (prepare / release) on a unix socket.
    Serve,
    /// Prove that a snapshot restores: a disposable view of it (btrfs, the command provider's
    /// `verify_command`, or an image file), a filesystem check, throwaway database servers and
    /// your verifiers on it (see `[verify]`); the result is recorded in the catalog.
    Verify {
        /// The snapshot id (as `quiesce snapshots` lists it).
        #[arg(required_unless_present = "latest", conflicts_with = "latest")]
        snapshot: Option<String>,
        /// Verify the newest snapshot.
        #[arg(long)]
        latest: bool,
        #[arg(long)]
        json: bool,
    },
    /// Be the QEMU guest agent: answer the hypervisor's fsfreeze commands on the
    /// virtio-serial port, forward the rest to qemu-ga (docs/guest-agent.md).
    GuestAgent(crate::qga::GuestAgentArgs),
    /// Host side: ask a running `quiesce serve` to run the pre hooks and freeze.
    Prepare {
        /// Operation id (letters, digits, '-', '_', '.'); the same id makes a repeat idempotent.
        #[arg(long)]
        id: String,
        /// The guard thaws at this deadline if release never comes ("30s").
        #[arg(long)]
        deadline: Option<String>,
        /// Socket of the server (default: server.socket of the configuration).
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Host side: thaw and run the post hooks; prints the final report.
    Release {
        #[arg(long)]
        id: String,
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Consistency groups: one cut across many machines, coordinated through etcd.
    #[command(subcommand)]
    Group(crate::group::cli::GroupCommand),
    /// Run as a platform's pre/post snapshot script (docs/platforms/): pre prepares an
    /// operation on the running `quiesce serve`, post releases it.
    Hook {
        #[arg(value_enum)]
        side: crate::platform::bridge::Side,
        #[arg(long, value_enum)]
        platform: crate::platform::bridge::Platform,
        /// The guard thaws at this deadline if post never comes ("60s").
        #[arg(long)]
        deadline: Option<String>,
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Wire the bridge into a platform's configuration (docs/platforms/); --uninstall
    /// restores what was there.
    Install {
        #[arg(long, value_enum)]
        platform: crate::platform::bridge::Platform,
        /// Install under this directory instead of / (an image being built, a test).
        #[arg(long, default_value = "/")]
        root: PathBuf,
        #[arg(long)]
        uninstall: bool,
    },
    /// Host side: the state of an operation.
    Status {
        #[arg(long)]
        id: String,
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Bring the catalog to this version's schema (run by the package on upgrade).
    #[command(hide = true)]
    MigrateCatalog,
    /// Write man pages or shell completions into DIR (used to build the packages).
    #[command(hide = true)]
    Generate {
        what: crate::generate::Artefact,
        dir: PathBuf,
    },
}

/// Parse the command line, run, and return the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    run(cli)
}

fn print_json<T: Serialize>(v: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("reports always serialize")
    );
}

fn print_problems(problems: &[Problem]) {
    for p in problems {
        eprintln!("quiesce: {p}");
    }
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> i32 {
    // Only the commands that freeze trade the default "die on SIGTERM" for "tell the guard to
    // thaw now, then finish cleanly" (a second signal still exits at once).
    if matches!(
        cli.command,
        Command::Snapshot { dry_run: false, .. } | Command::Serve | Command::GuestAgent(_)
    ) {
        let _ = crate::freeze::install_signal_handlers();
    }
    // A relative --config is taken relative to the current directory, once, here.
    let cli = Cli {
        config: cli.config.map(|p| std::path::absolute(&p).unwrap_or(p)),
        ..cli
    };
    match cli.command {
        Command::Snapshot { json, dry_run } => {
            if dry_run {
                check(cli.config, json)
            } else {
                snapshot(cli.config, cli.verbose, json)
            }
        }
        Command::Check { json } => check(cli.config, json),
        Command::Mounts { json } => mounts(cli.config, json),
        Command::Recover { json } => recover(cli.config, json),
        Command::Serve => with_agent_config(cli.config, cli.verbose, crate::server::serve),
        Command::GuestAgent(args) => {
            with_agent_config(cli.config, cli.verbose, |cfg| crate::qga::run(cfg, args))
        }
        Command::Prepare {
            id,
            deadline,
            socket,
        } => prepare(cli.config, socket, &id, deadline.as_deref()),
        Command::Release { id, socket } => host_call(cli.config, socket, |c| {
            let report = c.release(&id)?;
            print_json(&report);
            Ok(report.status.exit_code())
        }),
        Command::Status { id, socket } => host_call(cli.config, socket, |c| {
            print_json(&c.status(&id)?);
            Ok(0)
        }),
        Command::Hook {
            side,
            platform,
            deadline,
            socket,
        } => match load_strict(cli.config) {
            Some(cfg) => crate::platform::bridge::run(
                &cfg,
                platform,
                side,
                deadline.as_deref(),
                socket.as_deref(),
            ),
            None => 1,
        },
        Command::Install {
            platform,
            root,
            uninstall,
        } => crate::platform::install::run(platform, &root, uninstall, cli.config.as_deref()),
        Command::History { json, limit, since } => history(cli.config, json, limit, since),
        Command::Snapshots { json } => snapshots(cli.config, json),
        Command::Generate { what, dir } => {
            crate::generate::run(<Cli as clap::CommandFactory>::command(), what, &dir)
        }
        Command::MigrateCatalog => match load_strict(cli.config) {
            Some(cfg) => crate::generate::migrate_catalog(&cfg),
            None => 1,
        },
        Command::Verify {
            snapshot,
            latest: _,
            json,
        } => verify(cli.config, snapshot, json, cli.verbose),
        Command::Group(cmd) => crate::group::cli::run(cli.config, cmd),
    }
}

/// `quiesce snapshot`: one whole run, recorded, then the optional verification.
fn snapshot(config_path: Option<PathBuf>, verbose: u8, json: bool) -> i32 {
    let cfg = match config::load(config_path.as_deref()) {
        Ok(cfg) => cfg,
        Err(errs) => {
            init_logging(&config::LogConfig::default(), verbose);
            let report = config_failure_report(&errs.0);
            tracing::error!(errors = %errs, "configuration refused; nothing was run");
            emit(&report, json);
            return report.status.exit_code();
        }
    };
    // The locks come before the log file and the catalog are opened: a run refused
    // by the lock reports on stderr only (those files may be on a frozen filesystem).
    let begun = pipeline::begin_snapshot(&cfg, &RunOptions::default());
    if let Err(report) = &begun {
        if pipeline::refused_by_lock(report) {
            init_logging(&config::LogConfig::default(), verbose);
            print_problems(&report.errors);
            emit(report, json);
            return report.status.exit_code();
        }
    }
    init_logging(&cfg.log, verbose);
    let mut report = match begun {
        Ok(op) => pipeline::run_begun(op),
        Err(report) => *report,
    };
    pipeline::finish(&cfg, &mut report, crate::catalog::RunKind::Snapshot);
    if cfg.verify.after_snapshot && !report.snapshots.is_empty() {
        crate::verify::after_snapshot(&cfg, &mut report);
    }
    emit(&report, json);
    if let Some(v) = report.verification.as_ref().filter(|_| !json) {
        print!("{}", v.human());
    }
    report.status.exit_code()
}

/// Load the configuration and start logging for a long-running agent, then run it.
fn with_agent_config(path: Option<PathBuf>, verbose: u8, run: impl FnOnce(Config) -> i32) -> i32 {
    let cfg = match config::load(path.as_deref()) {
        Ok(cfg) => cfg,
        Err(errs) => {
            print_problems(&errs.0);
            return 1;
        }
    };
    init_logging(&cfg.log, verbose);
    run(cfg)
}

fn emit(report: &Report, json: bool) {
    if json {
        print_json(report);
    } else {
        print!("{}", report.human());
    }
}

/// The report of a run whose configuration could not be loaded.
fn config_failure_report(problems: &[Problem]) -> Report {
    let cfg = Config::defaults(std::path::Path::new(""));
    pipeline::bare_report(
        &cfg,
        &pipeline::opid::generate(),
        std::time::Instant::now(),
        std::time::SystemTime::now(),
        problems.to_vec(),
        false,
    )
}

#[derive(Serialize)]
struct CheckOutput {
    ok: bool,
    config: Option<PathBuf>,
    problems: Vec<Problem>,
    warnings: Vec<crate::codes::Warning>,
    freeze: Vec<String>,
    /// Every hook and where it came from.
    hooks: Vec<String>,
}

/// Everything `check` finds wrong with the configuration, the scripts and the freeze plan.
pub fn check_config(cfg: &Config) -> (Vec<Problem>, Vec<String>) {
    let mut problems = cfg.skipped.clone();
    for hook in &cfg.hooks {
        for (phase, spec) in [(Phase::Pre, &hook.pre), (Phase::Post, &hook.post)] {
            let Some(spec) = spec else { continue };
            if let Err(e) = crate::trust::open_script(&spec.path) {
                let code = match e {
                    crate::trust::TrustError::NotFound { .. } => phase.not_found(),
                    crate::trust::TrustError::Insecure { .. } => phase.insufficient_permission(),
                };
                problems.push(Problem::new(code, e.to_string()).with_hook(hook.name.clone()));
            }
        }
    }
    let provider = crate::snapshot::from_config(&cfg.snapshot);
    problems.extend(
        provider
            .check()
            .iter()
            .map(crate::snapshot::SnapshotError::to_problem),
    );
    let mut freeze = Vec::new();
    if cfg.freeze.enabled {
        match crate::freeze::plan::plan_system(&cfg.freeze, &provider.must_not_freeze()) {
            Ok(plan) => {
                freeze = plan
                    .targets
                    .iter()
                    .map(|t| crate::quote::quote_path(&t.mount_point))
                    .collect()
            }
            Err(mut p) => problems.append(&mut p),
        }
    }
    (problems, freeze)
}

/// What `check` finds about where the configuration would run: a state directory on a
/// read-only filesystem (a problem: no run could lock or record its freeze), a TCP
/// listener on all interfaces and freeze lists while freezing is disabled (warnings).
pub fn check_environment(cfg: &Config) -> (Vec<Problem>, Vec<crate::codes::Warning>) {
    use crate::codes::ErrorCode;
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    // The directory itself, or the nearest existing parent (it is created on first use).
    let existing = cfg.paths.state_dir.ancestors().find(|p| p.exists());
    if let Some(st) = existing.and_then(|p| rustix::fs::statvfs(p).ok()) {
        if st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY) {
            problems.push(Problem::new(
                ErrorCode::StateError,
                format!(
                    "paths.state_dir {} is on a read-only filesystem: no run could take \
                     its lock or record what it froze",
                    cfg.paths.state_dir.display()
                ),
            ));
        }
    }
    if let Some(listen) = &cfg.server.tcp_listen {
        let everywhere = listen
            .parse::<std::net::SocketAddr>()
            .is_ok_and(|a| a.ip().is_unspecified());
        if everywhere {
            warnings.push(crate::codes::Warning::new(format!(
                "server.tcp_listen {listen} listens on all interfaces: every host that \
                     can reach this machine can try the token; prefer 127.0.0.1"
            )));
        }
    }
    warnings.extend(freeze_warnings(&cfg.freeze));
    (problems, warnings)
}

/// A freeze list that has no effect because freezing is disabled: the admin most likely
/// meant to freeze those filesystems (e.g. uncommented `include` in the shipped config but
/// not `enabled = true`).
pub fn freeze_warnings(freeze: &config::FreezeConfig) -> Vec<crate::codes::Warning> {
    if freeze.enabled {
        return Vec::new();
    }
    let list = |paths: &[PathBuf]| {
        paths
            .iter()
            .map(|p| crate::quote::quote_path(p))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut warnings = Vec::new();
    if !freeze.include.is_empty() {
        warnings.push(crate::codes::Warning::new(format!(
            "freeze.include names {} but freezing is disabled (freeze.enabled = false): \
             nothing is frozen; set enabled = true to freeze them",
            list(&freeze.include)
        )));
    }
    if !freeze.exclude.is_empty() {
        warnings.push(crate::codes::Warning::new(format!(
            "freeze.exclude names {} but freezing is disabled (freeze.enabled = false): \
             the list has no effect",
            list(&freeze.exclude)
        )));
    }
    warnings
}

fn check(config_path: Option<PathBuf>, json: bool) -> i32 {
    let located = config::locate(config_path.as_deref());
    let (problems, warnings, freeze, hooks) = match config::load(config_path.as_deref()) {
        Ok(cfg) => {
            let (mut problems, freeze) = check_config(&cfg);
            let (more, mut warnings) = check_environment(&cfg);
            problems.extend(more);
            warnings.splice(0..0, cfg.warnings.iter().cloned());
            let hooks = crate::config::platform::describe_hooks(&cfg.hooks);
            (problems, warnings, freeze, hooks)
        }
        Err(errs) => (errs.0, Vec::new(), Vec::new(), Vec::new()),
    };
    let out = CheckOutput {
        ok: problems.is_empty(),
        config: located,
        problems,
        warnings,
        freeze,
        hooks,
    };
    if json {
        print_json(&out);
    } else {
        if let Some(c) = &out.config {
            println!("config: {}", crate::quote::quote_path(c));
        }
        for p in &out.problems {
            println!("error {p}");
        }
        for w in &out.warnings {
            println!("warning {w}");
        }
        if !out.freeze.is_empty() {
            println!("would freeze: {}", out.freeze.join(", "));
        }
        for h in &out.hooks {
            println!("hook {h}");
        }
        println!(
            "{}",
            if out.ok {
                "check passed".to_string()
            } else {
                format!("check failed: {} problem(s)", out.problems.len())
            }
        );
    }
    if out.ok {
        0
    } else {
        Status::Failed.exit_code()
    }
}

fn mounts(config_path: Option<PathBuf>, json: bool) -> i32 {
    // With an explicit configuration, show exactly what `snapshot` would do with it, or fail
    // like `check` (never fall back to the default plan).
    let Some(cfg) = load_strict(config_path) else {
        return 1;
    };
    if !cfg.freeze.enabled {
        if json {
            println!("[]");
        } else {
            println!("freezing is disabled (freeze.enabled / fsFreezeEnabled): nothing is frozen");
        }
        return 0;
    }
    let provider = crate::snapshot::from_config(&cfg.snapshot);
    match crate::freeze::plan::plan_system(&cfg.freeze, &provider.must_not_freeze()) {
        Ok(plan) => {
            if json {
                print_json(&plan.decisions);
            } else {
                print!("{}", crate::freeze::plan::render_table(&plan));
                for h in crate::config::platform::describe_hooks(&cfg.hooks) {
                    println!("hook {h}");
                }
            }
            0
        }
        Err(problems) => {
            print_problems(&problems);
            1
        }
    }
}

fn recover(config_path: Option<PathBuf>, json: bool) -> i32 {
    let Some(cfg) = load_strict(config_path) else {
        return 1;
    };
    let result = crate::freeze::lock::OpLock::acquire(&cfg.paths.state_dir)
        .and_then(|_lock| pipeline::recover_leftovers(&cfg.paths.state_dir));
    match result {
        Ok(thawed) => {
            if json {
                print_json(&serde_json::json!({ "thawed": thawed }));
            } else if thawed.is_empty() {
                println!("nothing was left frozen");
            } else {
                println!("thawed: {}", thawed.join(", "));
            }
            0
        }
        Err(p) => {
            if json {
                print_json(&serde_json::json!({ "error": p }));
            } else {
                print_problems(&[p]);
            }
            1
        }
    }
}

/// The configuration of a command: the explicit `--config` must load (None: it did not,
/// the problems are printed); without `--config`, the first found or the defaults.
fn load_strict(config_path: Option<PathBuf>) -> Option<Config> {
    match config::load(config_path.as_deref()) {
        Ok(cfg) => Some(cfg),
        Err(errs) if config_path.is_some() => {
            print_problems(&errs.0);
            None
        }
        Err(_) => Some(Config::defaults(std::path::Path::new(""))),
    }
}

/// Run `f` against the server at `socket` (default: `server.socket` of the configuration);
/// its exit code, or 1 after printing why the call failed.
fn host_call(
    config_path: Option<PathBuf>,
    socket: Option<PathBuf>,
    f: impl FnOnce(&Client) -> Result<i32, ClientError>,
) -> i32 {
    let socket = match socket {
        Some(s) => s,
        None => match load_strict(config_path) {
            Some(cfg) => cfg.server.socket,
            None => return 1,
        },
    };
    match f(&Client::new(socket)) {
        Ok(code) => code,
        Err(ClientError::Refused { problems, .. }) => {
            print_json(&serde_json::json!({ "errors": problems }));
            print_problems(&problems);
            1
        }
        Err(e) => {
            eprintln!("quiesce: {e}");
            1
        }
    }
}

/// `quiesce prepare`: 0 once prepared cleanly; 3 when prepared with errors (the freeze
/// failed: the snapshot would be crash-consistent); 1 when the prepare failed or the
/// operation is already finished. The codes are printed on stderr.
fn prepare(
    config_path: Option<PathBuf>,
    socket: Option<PathBuf>,
    id: &str,
    deadline: Option<&str>,
) -> i32 {
    let deadline = match deadline.map(humantime::parse_duration).transpose() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("quiesce: invalid --deadline: {e}");
            return EXIT_USAGE;
        }
    };
    host_call(config_path, socket, |c| {
        let answer = c.prepare(id, deadline, &FreezeScope::Plan, &Caller::Cli)?;
        print_json(&answer);
        print_problems(&answer.errors);
        Ok(match answer.state {
            OpState::Frozen | OpState::Prepared if answer.errors.is_empty() => 0,
            OpState::Frozen | OpState::Prepared => Status::Degraded.exit_code(),
            state => {
                if !state.is_finished() || answer.errors.is_empty() {
                    eprintln!("quiesce: operation {id} is {state}, not prepared");
                }
                Status::Failed.exit_code()
            }
        })
    })
}

fn init_logging(cfg: &config::LogConfig, verbosity: u8) {
    if let Err(e) = crate::logging::init(cfg, verbosity) {
        eprintln!("quiesce: logging: {e}");
    }
}

fn history(
    config_path: Option<PathBuf>,
    json: bool,
    limit: Option<usize>,
    since: Option<std::time::Duration>,
) -> i32 {
    let Some(cfg) = load_strict(config_path) else {
        return 1;
    };
    let catalog = match crate::catalog::Catalog::open_read_only(&cfg.paths.catalog) {
        Ok(Some(c)) => c,
        Ok(None) => {
            if json {
                println!("[]");
            } else {
                println!(
                    "no runs recorded yet ({})",
                    crate::quote::quote_path(&cfg.paths.catalog)
                );
            }
            return 0;
        }
        Err(e) => {
            print_problems(&[e.problem()]);
            return 1;
        }
    };
    // A duration reaching before the epoch means "everything" (never an overflow).
    let since = since.map(|d| {
        std::time::SystemTime::now()
            .checked_sub(d)
            .unwrap_or(std::time::UNIX_EPOCH)
    });
    match catalog.history(limit, since) {
        Ok(runs) => {
            if json {
                println!("{}", crate::catalog::render_history_json(&runs));
            } else {
                print!("{}", crate::catalog::render_history_table(&runs));
            }
            0
        }
        Err(e) => {
            print_problems(&[e.problem()]);
            1
        }
    }
}

fn snapshots(config_path: Option<PathBuf>, json: bool) -> i32 {
    let Some(cfg) = load_strict(config_path) else {
        return 1;
    };
    let provider = crate::snapshot::from_config(&cfg.snapshot);
    let catalog = crate::catalog::Catalog::open_read_only(&cfg.paths.catalog)
        .ok()
        .flatten();
    let mut list = if provider.can_list() {
        match provider.list() {
            Ok(l) => l,
            Err(e) => {
                print_problems(&[e.to_problem()]);
                return 1;
            }
        }
    } else {
        match catalog
            .as_ref()
            .map(|c| recorded_snapshots(c, provider.name()))
        {
            Some(Ok(l)) => l,
            Some(Err(e)) => {
                print_problems(&[e.problem()]);
                return 1;
            }
            None => Vec::new(),
        }
    };
    if let Some(catalog) = &catalog {
        // What the provider saw, the catalog completes (a listed row already has it).
        for s in list.iter_mut().filter(|s| !s.from_catalog) {
            s.consistency = catalog
                .consistency_of_snapshot(&s.provider, &s.id)
                .ok()
                .flatten();
        }
    }
    for s in &mut list {
        s.verification = Some(crate::verify::verification_text(
            catalog.as_ref(),
            &s.provider,
            &s.id,
        ));
    }
    if json {
        print_json(&list);
    } else if list.is_empty() {
        println!("no snapshots (provider {})", provider.name());
    } else {
        if !provider.can_list() {
            println!(
                "as recorded in the catalog: the {} provider cannot see its snapshots, which \
                 may have been deleted since",
                provider.name()
            );
        }
        println!(
            "{:<26} {:<12} {:<8} {:<14} ID",
            "CREATED", "CONSISTENCY", "PROVIDER", "VERIFICATION"
        );
        for s in &list {
            let created = s
                .created_unix
                .map(|t| {
                    pipeline::rfc3339(
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(t as u64),
                    )
                })
                .unwrap_or_else(|| "-".into());
            let cons = s.consistency.map(|c| c.as_str()).unwrap_or("unknown");
            let verification = s.verification.as_deref().unwrap_or("not verified");
            println!(
                "{created:<26} {cons:<12} {:<8} {verification:<14} {}",
                s.provider, s.id
            );
        }
    }
    0
}

/// The snapshots of `provider` that the catalog recorded, as `quiesce snapshots` lists them.
fn recorded_snapshots(
    catalog: &crate::catalog::Catalog,
    provider: &str,
) -> Result<Vec<crate::snapshot::SnapshotInfo>, crate::catalog::CatalogError> {
    Ok(catalog
        .recorded_snapshots(provider)?
        .into_iter()
        .map(|r| crate::snapshot::SnapshotInfo {
            provider: provider.to_string(),
            id: r.id,
            location: None,
            created_unix: Some(r.started_unix),
            operation_id: Some(r.operation_id),
            consistency: r.consistency,
            verification: None,
            from_catalog: true,
        })
        .collect())
}

fn verify(config_path: Option<PathBuf>, snapshot: Option<String>, json: bool, verbose: u8) -> i32 {
    let cfg = match config::load(config_path.as_deref()) {
        Ok(cfg) => cfg,
        Err(errs) => {
            print_problems(&errs.0);
            return 1;
        }
    };
    init_logging(&cfg.log, verbose);
    let which = match snapshot {
        Some(id) => crate::verify::Which::Id(id),
        None => crate::verify::Which::Latest,
    };
    match crate::verify::run(&cfg, which) {
        Ok(report) => {
            if json {
                print_json(&report);
            } else {
                print!("{}", report.human());
            }
            if report.verified {
                0
            } else {
                1
            }
        }
        Err(e) => {
            if json {
                print_json(&serde_json::json!({ "error": e.to_string() }));
            } else {
                eprintln!("quiesce: verify: {e}");
            }
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FreezeConfig;

    #[test]
    fn freeze_lists_while_freezing_is_disabled_are_warned_about_in_words() {
        let fc = |enabled: bool, include: &[&str], exclude: &[&str]| FreezeConfig {
            enabled,
            include: include.iter().map(PathBuf::from).collect(),
            exclude: exclude.iter().map(PathBuf::from).collect(),
            ..FreezeConfig::default()
        };
        // (config, expected warnings, each as the words it must contain)
        let table: [(FreezeConfig, &[&[&str]]); 6] = [
            (fc(true, &[], &[]), &[]),
            (fc(true, &["/srv"], &["/boot"]), &[]),
            (fc(false, &[], &[]), &[]),
            (
                fc(false, &["/srv", "/var/lib/pg"], &[]),
                &[&[
                    "freeze.include",
                    "/srv, /var/lib/pg",
                    "freezing is disabled",
                    "enabled = true",
                ]],
            ),
            (
                fc(false, &[], &["/boot"]),
                &[&["freeze.exclude", "/boot", "no effect"]],
            ),
            (
                fc(false, &["/srv"], &["/boot"]),
                &[&["freeze.include", "/srv"], &["freeze.exclude", "/boot"]],
            ),
        ];
        for (cfg, expected) in table {
            let got = freeze_warnings(&cfg);
            assert_eq!(got.len(), expected.len(), "{cfg:?}: {got:?}");
            for (w, words) in got.iter().zip(expected) {
                assert!(w.code.is_none(), "a warning carries no code: {w:?}");
                for word in *words {
                    assert!(w.message.contains(word), "{word:?} not in {:?}", w.message);
                }
            }
        }
    }
}
