//! The command line (SPEC section 9). `main` only calls [`main`] here.

use crate::codes::Problem;
use crate::config::{self, Config};
use crate::hooks::Phase;
use crate::pipeline::{self, RunOptions};
use crate::report::{Report, Status};
use clap::{Parser, Subcommand};
use serde::Serialize;
use std::path::PathBuf;

/// Exit code for an invalid invocation (SPEC section 8).
pub const EXIT_USAGE: i32 = 2;

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
        /// Check everything (config, script trust, freeze plan) and run nothing.
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
    /// Host side: the state of an operation.
    Status {
        #[arg(long)]
        id: String,
        #[arg(long)]
        socket: Option<PathBuf>,
    },
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
        Command::Snapshot { dry_run: false, .. } | Command::Serve
    ) {
        let _ = crate::freeze::install_signal_handlers();
    }
    match cli.command {
        Command::Snapshot { json, dry_run } => {
            if dry_run {
                return check(cli.config, json);
            }
            let cfg = match config::load(cli.config.as_deref()) {
                Ok(cfg) => cfg,
                Err(errs) => {
                    init_logging(&config::LogConfig::default(), cli.verbose);
                    let report = config_failure_report(&errs.0);
                    tracing::error!(errors = %errs, "configuration refused; nothing was run");
                    emit(&report, json);
                    return report.status.exit_code();
                }
            };
            init_logging(&cfg.log, cli.verbose);
            let mut report = pipeline::run_snapshot(&cfg, &RunOptions::default());
            pipeline::finish(&cfg, &mut report, crate::catalog::RunKind::Snapshot);
            emit(&report, json);
            report.status.exit_code()
        }
        Command::Check { json } => check(cli.config, json),
        Command::Mounts { json } => mounts(cli.config, json),
        Command::Recover { json } => recover(cli.config, json),
        Command::Serve => {
            let cfg = match config::load(cli.config.as_deref()) {
                Ok(cfg) => cfg,
                Err(errs) => {
                    print_problems(&errs.0);
                    return 1;
                }
            };
            init_logging(&cfg.log, cli.verbose);
            crate::server::serve(cfg)
        }
        Command::Prepare {
            id,
            deadline,
            socket,
        } => {
            let body = deadline.map(|d| serde_json::json!({ "deadline": d }));
            client(
                cli.config,
                socket,
                "POST",
                &format!("/v1/operations/{id}/prepare"),
                body,
            )
        }
        Command::Release { id, socket } => client(
            cli.config,
            socket,
            "POST",
            &format!("/v1/operations/{id}/release"),
            None,
        ),
        Command::Status { id, socket } => client(
            cli.config,
            socket,
            "GET",
            &format!("/v1/operations/{id}"),
            None,
        ),
        Command::History { json, limit, since } => history(cli.config, json, limit, since),
        Command::Snapshots { json } => snapshots(cli.config, json),
        Command::Generate { what, dir } => crate::generate::run(what, &dir),
    }
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
    warnings: Vec<Problem>,
    freeze: Vec<String>,
}

/// Everything `check` finds wrong with the configuration, the scripts and the freeze plan.
pub fn check_config(cfg: &Config) -> (Vec<Problem>, Vec<String>) {
    let mut problems = Vec::new();
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
            .into_iter()
            .map(|e| Problem::new(e.code, e.message)),
    );
    let mut freeze = Vec::new();
    if cfg.freeze.enabled {
        match crate::freeze::plan::plan_system(&cfg.freeze, &provider.must_not_freeze()) {
            Ok(plan) => {
                freeze = plan
                    .targets
                    .iter()
                    .map(|t| t.mount_point.display().to_string())
                    .collect()
            }
            Err(mut p) => problems.append(&mut p),
        }
    }
    (problems, freeze)
}

fn check(config_path: Option<PathBuf>, json: bool) -> i32 {
    let located = config::locate(config_path.as_deref());
    let (problems, warnings, freeze) = match config::load(config_path.as_deref()) {
        Ok(cfg) => {
            let (problems, freeze) = check_config(&cfg);
            (problems, cfg.warnings.clone(), freeze)
        }
        Err(errs) => (errs.0, Vec::new(), Vec::new()),
    };
    let out = CheckOutput {
        ok: problems.is_empty(),
        config: located,
        problems,
        warnings,
        freeze,
    };
    if json {
        print_json(&out);
    } else {
        if let Some(c) = &out.config {
            println!("config: {}", c.display());
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

fn load_or_defaults(config_path: Option<PathBuf>) -> Config {
    match config::load(config_path.as_deref()) {
        Ok(cfg) => cfg,
        Err(errs) => {
            if config_path.is_some() {
                print_problems(&errs.0);
            }
            Config::defaults(std::path::Path::new(""))
        }
    }
}

fn mounts(config_path: Option<PathBuf>, json: bool) -> i32 {
    let cfg = load_or_defaults(config_path);
    let provider = crate::snapshot::from_config(&cfg.snapshot);
    match crate::freeze::plan::plan_system(&cfg.freeze, &provider.must_not_freeze()) {
        Ok(plan) => {
            if json {
                print_json(&plan.decisions);
            } else {
                print!("{}", crate::freeze::plan::render_table(&plan));
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
    let cfg = load_or_defaults(config_path);
    let result = crate::freeze::lock::OpLock::acquire(&cfg.paths.state_dir)
        .and_then(|_lock| crate::freeze::state::recover(&cfg.paths.state_dir));
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

fn client(
    config_path: Option<PathBuf>,
    socket: Option<PathBuf>,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> i32 {
    let socket = socket.unwrap_or_else(|| load_or_defaults(config_path).server.socket);
    match crate::server::client::call(
        &socket,
        method,
        path,
        body.as_ref(),
        std::time::Duration::from_secs(3600),
    ) {
        Ok((status, value)) => {
            print_json(&value);
            let report_status = value["status"].as_str();
            match (status, report_status) {
                (200, Some("degraded")) => Status::Degraded.exit_code(),
                (200, Some("failed")) => 1,
                (200, _) if value["state"] == "failed" => 1,
                (200, _) => 0,
                _ => 1,
            }
        }
        Err(e) => {
            eprintln!("quiesce: {e}");
            1
        }
    }
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
    let cfg = load_or_defaults(config_path);
    let catalog = match crate::catalog::Catalog::open_read_only(&cfg.paths.catalog) {
        Ok(Some(c)) => c,
        Ok(None) => {
            if json {
                println!("[]");
            } else {
                println!("no runs recorded yet ({})", cfg.paths.catalog.display());
            }
            return 0;
        }
        Err(e) => {
            print_problems(&[e.problem()]);
            return 1;
        }
    };
    let since = since.map(|d| std::time::SystemTime::now() - d);
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
    let cfg = load_or_defaults(config_path);
    let provider = crate::snapshot::from_config(&cfg.snapshot);
    let mut list = match provider.list() {
        Ok(l) => l,
        Err(e) => {
            print_problems(&[Problem::new(e.code, e.message)]);
            return 1;
        }
    };
    if let Ok(Some(catalog)) = crate::catalog::Catalog::open_read_only(&cfg.paths.catalog) {
        for s in &mut list {
            s.consistency = catalog
                .consistency_of_snapshot(&s.provider, &s.id)
                .ok()
                .flatten();
        }
    }
    if json {
        print_json(&list);
    } else if list.is_empty() {
        println!("no snapshots (provider {})", provider.name());
    } else {
        println!(
            "{:<26} {:<12} {:<8} ID",
            "CREATED", "CONSISTENCY", "PROVIDER"
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
            println!("{created:<26} {cons:<12} {:<8} {}", s.provider, s.id);
        }
    }
    0
}
