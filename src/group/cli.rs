//! `quiesce group snapshot | history | members`.

use super::{coordinator, GroupConfig, RawGroup};
use crate::codes::{ErrorCode, Problem, EXIT_USAGE};
use clap::Subcommand;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// Take one consistent cut across every live member of group NAME.
    Snapshot {
        name: String,
        /// Every member has released by this deadline, whatever happens ("30s").
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        deadline: Duration,
        /// Operation id (default: generated).
        #[arg(long)]
        id: Option<String>,
        /// etcd endpoints (host:port, comma separated); default: `group.endpoints`.
        #[arg(long, value_delimiter = ',')]
        endpoints: Vec<String>,
        #[arg(long)]
        json: bool,
        /// Group-level snapshot command, run once while every member is frozen.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Past group operations of NAME, newest first.
    History {
        name: String,
        #[arg(long, value_delimiter = ',')]
        endpoints: Vec<String>,
        #[arg(long)]
        json: bool,
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
    /// The live members of NAME.
    Members {
        name: String,
        #[arg(long, value_delimiter = ',')]
        endpoints: Vec<String>,
        #[arg(long)]
        json: bool,
    },
}

/// Why a group command failed; each is said and exits its own way.
#[derive(Debug)]
enum Failure {
    /// The command line is wrong (a name quiesce refuses, no endpoint to use): exit 2.
    Usage(String),
    /// The configuration does not load: its problems, with their codes.
    Config(Vec<Problem>),
    /// etcd cannot be reached or refuses, or the operation cannot start:
    /// `GroupCoordinationFailed`.
    Coordination(String),
}

impl From<String> for Failure {
    fn from(e: String) -> Failure {
        Failure::Coordination(e)
    }
}

impl Failure {
    /// Say it on stderr; the exit code.
    fn report(self) -> i32 {
        match self {
            Failure::Usage(m) => {
                eprintln!("quiesce: {m}");
                EXIT_USAGE
            }
            Failure::Config(problems) => {
                for p in problems {
                    eprintln!("quiesce: {p}");
                }
                1
            }
            Failure::Coordination(m) => {
                let p = Problem::new(ErrorCode::GroupCoordinationFailed, m);
                eprintln!("quiesce: {p}");
                1
            }
        }
    }
}

/// A name (group or operation) that quiesce refuses, in words.
fn check_name(what: &str, name: &str) -> Result<(), Failure> {
    if super::valid_name(name) {
        return Ok(());
    }
    Err(Failure::Usage(format!(
        "{what} {name:?} may hold only letters, digits, '-', '_' and '.'"
    )))
}

/// The group settings for NAME: the configuration's `[group]` (its etcd and auth), with
/// `--endpoints` for a machine that is not a member.
fn settings(
    config: Option<PathBuf>,
    name: &str,
    endpoints: &[String],
) -> Result<GroupConfig, Failure> {
    // An explicit configuration that does not load is an error (its `[group]` may hold the
    // TLS or auth settings); the default one may be absent on an admin box.
    let from_file = match crate::config::load(config.as_deref()) {
        Ok(c) => c.group,
        Err(e) if config.is_some() => return Err(Failure::Config(e.0)),
        Err(_) => None,
    };
    let mut g = match from_file {
        Some(g) => g,
        None => RawGroup::default()
            .into_config_for(name, endpoints)
            .map_err(Failure::Usage)?,
    };
    g.name = name.to_string();
    if !endpoints.is_empty() {
        g.endpoints = endpoints.to_vec();
    }
    check_name("group name", name)?;
    Ok(g)
}

fn json_out<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Run a `quiesce group` command; the process exit code.
pub fn run(config: Option<PathBuf>, cmd: GroupCommand) -> i32 {
    let result = match cmd {
        GroupCommand::Snapshot {
            name,
            deadline,
            id,
            endpoints,
            json,
            command,
        } => (|| -> Result<i32, Failure> {
            let cfg = settings(config, &name, &endpoints)?;
            let etcd = std::sync::Arc::new(cfg.client()?);
            let operation_id = id.unwrap_or_else(crate::pipeline::opid::generate);
            check_name("operation id", &operation_id)?;
            let opts = coordinator::SnapshotOptions {
                operation_id,
                deadline,
                command,
            };
            let report = coordinator::snapshot(&cfg, &etcd, &opts)?;
            if json {
                json_out(&report);
            } else {
                print!("{}", human(&report));
            }
            Ok(report.status.exit_code())
        })(),
        GroupCommand::History {
            name,
            endpoints,
            json,
            limit,
        } => (|| -> Result<i32, Failure> {
            let cfg = settings(config, &name, &endpoints)?;
            let mut reports = coordinator::history(&cfg.client()?, &name)?;
            reports.truncate(limit.unwrap_or(usize::MAX));
            if json {
                json_out(&reports);
            } else {
                for r in &reports {
                    print!("{}", human(r));
                }
            }
            Ok(0)
        })(),
        GroupCommand::Members {
            name,
            endpoints,
            json,
        } => (|| -> Result<i32, Failure> {
            let cfg = settings(config, &name, &endpoints)?;
            let names = coordinator::members(&cfg.client()?, &name)?;
            if json {
                json_out(&names);
            } else {
                for n in names {
                    println!("{n}");
                }
            }
            Ok(0)
        })(),
    };
    result.unwrap_or_else(Failure::report)
}

/// One group report in lines.
pub fn human(r: &super::GroupReport) -> String {
    let mut s = format!(
        "group {} operation {}: {} ({}), ready in {}, released in {}\n",
        r.group,
        r.operation_id,
        r.status.as_str(),
        r.consistency.as_str(),
        r.all_ready_ms.map_or("-".into(), |m| format!("{m} ms")),
        r.all_released_ms.map_or("-".into(), |m| format!("{m} ms")),
    );
    for m in &r.members {
        let (status, consistency) = m.report.as_ref().map_or(("-", "-"), |rep| {
            (
                rep["status"].as_str().unwrap_or("-"),
                rep["consistency"].as_str().unwrap_or("-"),
            )
        });
        s += &format!("  {}: {} -> {status} ({consistency})", m.member, m.ready);
        if let Some(snap) = &m.snapshot {
            let ids: Vec<&str> = snap.snapshots.iter().map(|x| x.id.as_str()).collect();
            match &snap.error {
                Some(e) => s += &format!(", own snapshot failed: {e}"),
                None => s += &format!(", own snapshot {}", ids.join(" ")),
            }
        }
        s += "\n";
    }
    for e in &r.errors {
        s += &format!("  error: {e}\n");
    }
    s += &format!(
        "  in the catalogs of: {}\n",
        if r.catalogs.is_empty() {
            "no member yet".to_string()
        } else {
            r.catalogs.join(", ")
        }
    );
    s
}
