//! The report of one run: what was reached, what went wrong, how long each phase took.

use crate::codes::Problem;
use crate::hooks::ScriptResult;
use serde::{Deserialize, Serialize};

/// Overall outcome; maps to the exit code (README "The flow", exit codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Reached the configured consistency, no error: exit 0.
    Succeeded,
    /// A snapshot exists, but at a lower consistency or with a post-hook error: exit 3.
    Degraded,
    /// No usable outcome: exit 1.
    Failed,
}

impl Status {
    pub fn exit_code(self) -> i32 {
        match self {
            Status::Succeeded => 0,
            Status::Degraded => 3,
            Status::Failed => 1,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Succeeded => "succeeded",
            Status::Degraded => "degraded",
            Status::Failed => "failed",
        }
    }
}

/// The consistency level that held at the moment of the snapshot (README "Consistency rules").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Consistency {
    None,
    Crash,
    FileSystem,
    Application,
}

impl Consistency {
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::None => "none",
            Consistency::Crash => "crash",
            Consistency::FileSystem => "file-system",
            Consistency::Application => "application",
        }
    }
    pub fn parse(s: &str) -> Option<Consistency> {
        Some(match s {
            "none" => Consistency::None,
            "crash" => Consistency::Crash,
            "file-system" => Consistency::FileSystem,
            "application" => Consistency::Application,
            _ => return None,
        })
    }
}

/// A snapshot that a provider made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRef {
    pub provider: String,
    pub id: String,
}

/// Milliseconds spent in each phase (absent when the phase did not run).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub freeze_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thaw_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub post_ms: Option<u64>,
    pub total_ms: u64,
}

/// Who asked for an operation; recorded in the report and the catalog.
///
/// In JSON: `"cli"`, `"http"`, `"guest-agent"`, `{"platform": "NAME"}`,
/// `{"group": {"group": "NAME", "coordinator": "HOST"}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Caller {
    /// `quiesce snapshot` (command line or timer).
    #[default]
    Cli,
    /// A host through `quiesce serve`'s HTTP API.
    Http,
    /// A hypervisor through the QEMU guest-agent protocol.
    GuestAgent,
    /// A platform bridge (its name).
    Platform(String),
    /// A multi-machine group, driven by its coordinator.
    Group { group: String, coordinator: String },
}

impl Caller {
    /// One line for the catalog and logs: `cli`, `http`, `guest-agent`, `platform:NAME`,
    /// `group:NAME@COORDINATOR`.
    pub fn label(&self) -> String {
        match self {
            Caller::Cli => "cli".into(),
            Caller::Http => "http".into(),
            Caller::GuestAgent => "guest-agent".into(),
            Caller::Platform(name) => format!("platform:{name}"),
            Caller::Group { group, coordinator } => format!("group:{group}@{coordinator}"),
        }
    }
}

/// One run, as printed by `quiesce snapshot --json` and stored in the catalog.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub operation_id: String,
    /// Who asked for the run (absent in reports written before callers were recorded).
    #[serde(default)]
    pub caller: Caller,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub finished_at: String,
    pub status: Status,
    pub consistency: Consistency,
    /// What a fully successful run of this configuration reaches.
    pub target_consistency: Consistency,
    pub errors: Vec<Problem>,
    pub warnings: Vec<crate::codes::Warning>,
    pub snapshots: Vec<SnapshotRef>,
    pub timings: Timings,
    /// From the first FIFREEZE to the last FITHAW; absent when nothing was frozen.
    pub frozen_ms: Option<u64>,
    /// Mount points that were frozen.
    pub frozen: Vec<String>,
    pub hooks: Vec<ScriptResult>,
    /// The verification of this run's snapshots, when `[verify] after_snapshot` ran it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
}

impl Report {
    /// A short human summary (the output without `--json`).
    pub fn human(&self) -> String {
        let mut s = format!(
            "quiesce {}: {} (consistency {}, target {})\n",
            self.operation_id,
            self.status.as_str(),
            self.consistency.as_str(),
            self.target_consistency.as_str()
        );
        for snap in &self.snapshots {
            s.push_str(&format!("  snapshot {}: {}\n", snap.provider, snap.id));
        }
        if let Some(ms) = self.frozen_ms {
            s.push_str(&format!("  frozen {} ms: {}\n", ms, self.frozen.join(", ")));
        }
        for e in &self.errors {
            s.push_str(&format!("  error {e}\n"));
        }
        for w in &self.warnings {
            s.push_str(&format!("  warning {w}\n"));
        }
        s
    }
}

/// One check of a verification and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyCheck {
    pub name: String,
    pub ok: bool,
    pub message: String,
    pub duration_ms: u64,
}

/// The result of one `quiesce verify`: printed with `verify --json`, stored in the catalog,
/// and part of the snapshot report when `[verify] after_snapshot` verified the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    pub verify_id: String,
    pub provider: String,
    /// Every snapshot of the verified run.
    pub snapshots: Vec<String>,
    pub started_at: String,
    pub finished_at: String,
    pub total_ms: u64,
    /// `true` only when every check passed.
    pub verified: bool,
    /// `verified` or `verification failed: CHECK: WHY`.
    pub status: String,
    pub checks: Vec<VerifyCheck>,
}

impl Verification {
    pub fn human(&self) -> String {
        let mut s = format!(
            "verify {} ({} {}): {}\n",
            self.verify_id,
            self.provider,
            self.snapshots.join(", "),
            self.status
        );
        for c in &self.checks {
            s.push_str(&format!(
                "  {} {} ({} ms): {}\n",
                if c.ok { "ok  " } else { "FAIL" },
                c.name,
                c.duration_ms,
                c.message
            ));
        }
        s
    }
}
