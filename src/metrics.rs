//! Metrics in the Prometheus text exposition format (version 0.0.4): the last run's
//! outcome, per-hook figures of the last run, and totals over the catalog.
//!
//! The same text is written to a node_exporter textfile-collector file after each run
//! ([`write_textfile`]) and served on `/metrics` by `quiesce serve`. Families:
//!
//! | name | type | labels |
//! |---|---|---|
//! | `quiesce_last_run_status` | gauge, 1 for the last run's status, 0 for the others | `status` |
//! | `quiesce_last_run_consistency` | gauge, 1 for the level reached, 0 for the others | `consistency` |
//! | `quiesce_last_run_consistency_level` | gauge: 0 none, 1 crash, 2 file-system, 3 application | |
//! | `quiesce_last_run_target_consistency_level` | gauge, same scale: what the configuration aims at | |
//! | `quiesce_last_run_frozen_seconds` | gauge, first freeze to last thaw (0: nothing frozen) | |
//! | `quiesce_last_run_duration_seconds` | gauge, whole run | |
//! | `quiesce_last_run_timestamp_seconds` | gauge, when the last run finished (epoch seconds) | |
//! | `quiesce_last_run_recorded` | gauge, 1 if the last run is in the catalog, 0 if the catalog could not be opened or written | |
//! | `quiesce_last_run_hook_duration_seconds` | gauge | `hook`, `phase` |
//! | `quiesce_last_run_hook_failed` | gauge, 1 if the script failed | `hook`, `phase` |
//! | `quiesce_last_run_hook_attempts` | gauge | `hook`, `phase` |
//! | `quiesce_runs_total` | counter, recorded runs | `status` |
//! | `quiesce_errors_total` | counter, recorded errors (not warnings) | `code` |
//!
//! The `quiesce_last_run_*` families are absent until a run exists. When the catalog cannot
//! be opened, the run's own families are still written (with `quiesce_last_run_recorded 0`)
//! and the totals, which only the catalog knows, are left out. Alert on
//! `quiesce_last_run_consistency_level < quiesce_last_run_target_consistency_level` or on
//! `time() - quiesce_last_run_timestamp_seconds` growing.

use crate::report::{Consistency, Report, Status};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Counts over every recorded run, for the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    /// Runs per status (`succeeded`, `degraded`, `failed`); absent statuses are zero.
    pub runs_by_status: BTreeMap<String, u64>,
    /// Errors (not warnings) per code, over all runs.
    pub errors_by_code: BTreeMap<String, u64>,
}

/// One hook script of the last run, as the metrics show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookMetric {
    pub hook: String,
    /// `pre` or `post`.
    pub phase: String,
    pub duration_ms: u64,
    pub failed: bool,
    pub attempts: u32,
}

/// What the metrics need of the last run. Built from a [`Report`] in the process that ran
/// it, or from the catalog (`Catalog::last_run`) in another process
/// (`quiesce serve` showing the last timer-driven `quiesce snapshot`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastRun {
    pub status: Status,
    pub consistency: Consistency,
    pub target_consistency: Consistency,
    pub frozen_ms: Option<u64>,
    pub total_ms: u64,
    /// When it finished, seconds since the epoch (None if the report's time is unreadable).
    pub finished_unix: Option<i64>,
    pub hooks: Vec<HookMetric>,
    /// False when the run could not be recorded in the catalog.
    pub recorded: bool,
}

impl LastRun {
    pub fn from_report(r: &Report) -> LastRun {
        LastRun {
            status: r.status,
            consistency: r.consistency,
            target_consistency: r.target_consistency,
            frozen_ms: r.frozen_ms,
            total_ms: r.timings.total_ms,
            finished_unix: humantime::parse_rfc3339_weak(&r.finished_at)
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs() as i64),
            hooks: r
                .hooks
                .iter()
                .map(|h| HookMetric {
                    hook: h.hook.clone(),
                    phase: h.phase.as_str().to_string(),
                    duration_ms: h.duration_ms,
                    failed: !h.succeeded(),
                    attempts: h.attempts.len() as u32,
                })
                .collect(),
            recorded: true,
        }
    }
}

/// The metrics text for the last run (if any) and the catalog totals.
pub fn render(last: Option<&Report>, totals: &Totals) -> String {
    render_last_run(last.map(LastRun::from_report).as_ref(), totals)
}

/// The metrics text of a run the catalog could not record: the run's own families with
/// `quiesce_last_run_recorded 0`, and the totals only if the catalog could still be read
/// (`None`: they are left out rather than shown as zero).
pub fn render_unrecorded(report: &Report, totals: Option<&Totals>) -> String {
    let mut last = LastRun::from_report(report);
    last.recorded = false;
    render_parts(Some(&last), totals)
}

/// [`render`] from a [`LastRun`] (e.g. read back from the catalog).
pub fn render_last_run(last: Option<&LastRun>, totals: &Totals) -> String {
    render_parts(last, Some(totals))
}

fn render_parts(last: Option<&LastRun>, totals: Option<&Totals>) -> String {
    let mut out = String::new();
    if let Some(l) = last {
        last_run_families(&mut out, l);
        hook_families(&mut out, &l.hooks);
    }
    if let Some(totals) = totals {
        totals_families(&mut out, totals);
    }
    out
}

/// Status, consistency, frozen time and duration of the last run.
fn last_run_families(out: &mut String, l: &LastRun) {
    family(
        out,
        "quiesce_last_run_status",
        "gauge",
        "Status of the last run: 1 for the status it ended with, 0 for the others.",
    );
    for s in [Status::Succeeded, Status::Degraded, Status::Failed] {
        sample(
            out,
            "quiesce_last_run_status",
            &[("status", s.as_str())],
            &bool_value(l.status == s),
        );
    }
    family(
        out,
        "quiesce_last_run_consistency",
        "gauge",
        "Consistency reached by the last run: 1 for the level reached, 0 for the others.",
    );
    for c in ALL_CONSISTENCIES {
        sample(
            out,
            "quiesce_last_run_consistency",
            &[("consistency", c.as_str())],
            &bool_value(l.consistency == c),
        );
    }
    single(
        out,
        "quiesce_last_run_consistency_level",
        "Consistency reached by the last run: 0 none, 1 crash, 2 file-system, 3 application.",
        &level(l.consistency).to_string(),
    );
    single(
        out,
        "quiesce_last_run_target_consistency_level",
        "Consistency a fully successful run of the configuration reaches (same scale).",
        &level(l.target_consistency).to_string(),
    );
    single(
        out,
        "quiesce_last_run_frozen_seconds",
        "Time from the first freeze to the last thaw in the last run (0: nothing frozen).",
        &seconds(l.frozen_ms.unwrap_or(0)),
    );
    single(
        out,
        "quiesce_last_run_duration_seconds",
        "Duration of the whole last run.",
        &seconds(l.total_ms),
    );
    if let Some(t) = l.finished_unix {
        single(
            out,
            "quiesce_last_run_timestamp_seconds",
            "When the last run finished, in seconds since the epoch.",
            &t.to_string(),
        );
    }
    single(
        out,
        "quiesce_last_run_recorded",
        "1 if the last run is recorded in the catalog, 0 if the catalog could not be opened or written.",
        &bool_value(l.recorded),
    );
}

/// The per-hook series of the last run.
fn hook_families(out: &mut String, last_hooks: &[HookMetric]) {
    // One series per (hook, phase); a pair seen twice is merged (durations and
    // attempts added, failed if either failed) so no series is duplicated.
    let mut hooks: BTreeMap<(&str, &str), HookMetric> = BTreeMap::new();
    for h in last_hooks {
        hooks
            .entry((h.hook.as_str(), h.phase.as_str()))
            .and_modify(|m| {
                m.duration_ms += h.duration_ms;
                m.attempts += h.attempts;
                m.failed |= h.failed;
            })
            .or_insert_with(|| h.clone());
    }
    type PerHook = (&'static str, &'static str, fn(&HookMetric) -> String);
    let per_hook: [PerHook; 3] = [
        (
            "quiesce_last_run_hook_duration_seconds",
            "Time one hook script took in the last run, all attempts included.",
            |m| seconds(m.duration_ms),
        ),
        (
            "quiesce_last_run_hook_failed",
            "1 if the hook script failed in the last run, else 0.",
            |m| bool_value(m.failed),
        ),
        (
            "quiesce_last_run_hook_attempts",
            "Attempts the hook script needed in the last run.",
            |m| m.attempts.to_string(),
        ),
    ];
    for (name, help, value) in per_hook {
        if hooks.is_empty() {
            continue;
        }
        family(out, name, "gauge", help);
        for ((hook, phase), m) in &hooks {
            sample(out, name, &[("hook", hook), ("phase", phase)], &value(m));
        }
    }
}

/// The catalog's totals: runs by status, errors by code.
fn totals_families(out: &mut String, totals: &Totals) {
    family(
        out,
        "quiesce_runs_total",
        "counter",
        "Runs recorded in the catalog, by status.",
    );
    for s in [Status::Succeeded, Status::Degraded, Status::Failed] {
        let n = totals.runs_by_status.get(s.as_str()).copied().unwrap_or(0);
        sample(
            out,
            "quiesce_runs_total",
            &[("status", s.as_str())],
            &n.to_string(),
        );
    }
    family(
        out,
        "quiesce_errors_total",
        "counter",
        "Errors recorded in the catalog, by code.",
    );
    for (code, n) in &totals.errors_by_code {
        sample(
            out,
            "quiesce_errors_total",
            &[("code", code)],
            &n.to_string(),
        );
    }
}

const ALL_CONSISTENCIES: [Consistency; 4] = [
    Consistency::None,
    Consistency::Crash,
    Consistency::FileSystem,
    Consistency::Application,
];

fn level(c: Consistency) -> u8 {
    match c {
        Consistency::None => 0,
        Consistency::Crash => 1,
        Consistency::FileSystem => 2,
        Consistency::Application => 3,
    }
}

fn bool_value(b: bool) -> String {
    if b { "1" } else { "0" }.to_string()
}

/// Milliseconds as decimal seconds ("1.234", "0", "0.05"); never exponent notation.
fn seconds(ms: u64) -> String {
    let (s, frac) = (ms / 1000, ms % 1000);
    if frac == 0 {
        s.to_string()
    } else {
        format!("{s}.{frac:03}").trim_end_matches('0').to_string()
    }
}

/// The verification gauges: when the newest application-consistent snapshot that verified
/// was taken (seconds since the epoch) and how long ago that is at `now_unix` (the number an
/// operator alerts on). Nothing but the help lines when no such snapshot exists.
pub fn render_verified(last_verified_unix: Option<i64>, now_unix: i64) -> String {
    let mut out = String::new();
    let stamp = "quiesce_last_verified_application_snapshot_timestamp_seconds";
    let age = "quiesce_seconds_since_last_verified_application_snapshot";
    family(
        &mut out,
        stamp,
        "gauge",
        "When the newest application-consistent snapshot that verified was taken.",
    );
    family(
        &mut out,
        age,
        "gauge",
        "Age of the newest application-consistent snapshot that verified.",
    );
    if let Some(t) = last_verified_unix {
        sample(&mut out, stamp, &[], &t.to_string());
        sample(&mut out, age, &[], &(now_unix - t).max(0).to_string());
    }
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn single(out: &mut String, name: &str, help: &str, value: &str) {
    family(out, name, "gauge", help);
    sample(out, name, &[], value);
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: &str) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape_label(v));
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(value);
    out.push('\n');
}

/// Label values escape backslash, double quote and line feed.
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// HELP text escapes backslash and line feed.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Writing the textfile failed.
#[derive(Debug, thiserror::Error)]
#[error("metrics file {}: {source}", path.display())]
pub struct MetricsError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Write `text` to `path` atomically ([`crate::files::write_atomic`]) for node_exporter's
/// textfile collector: the temporary file's name does not end in `.prom`, so the collector
/// ignores it; mode 0644 (node_exporter runs unprivileged). A scrape never sees a
/// half-written file. Call after the thaw (it writes to the directory's filesystem).
pub fn write_textfile(path: &Path, text: &str) -> Result<(), MetricsError> {
    crate::files::write_atomic(path, text.as_bytes(), 0o644).map_err(|source| MetricsError {
        path: path.to_path_buf(),
        source,
    })
}
