//! The operation registry every front end drives: `quiesce serve`'s HTTP API today, the
//! guest-agent protocol, platform bridges and the group coordinator beside it.
//!
//! An operation is prepared (pre hooks, then the freeze its [`FreezeScope`] asks for),
//! optionally has the configured provider take its snapshot ([`Api::snapshot`]), and is
//! released (thaw, post hooks, the final [`Report`], recorded in the catalog). The rules:
//! - One operation at a time: a prepare while another id is active is refused with
//!   [`ApiError::InProgress`] (and that refusal is not remembered for the id: a retry once
//!   the other operation is done runs).
//! - Idempotent per id: a repeated prepare answers the same [`PrepareAnswer`] (or, once
//!   the operation is finished, its final state, never "frozen"); a repeated release answers
//!   the same report. The last [`REMEMBERED`] finished operations are remembered.
//! - The deadline: the freeze guard thaws at the prepare's deadline (capped at
//!   `freeze.timeout`, and the answer says so) whatever happens to this process; a
//!   watchdog then finishes an operation nobody released ([`OpState::Expired`]).
//! - [`Api::abandon`] ends a prepared operation like a release, but as failed with an
//!   `Interrupted` error: for a caller whose snapshot step never completed.
//! - [`Api::shutdown`] finishes the active operation the way `quiesce snapshot` does on
//!   SIGTERM: pre hooks stop, thaw, post hooks run, the run is recorded.
//!
//! Nothing here knows about HTTP: errors are [`ApiError`] values with a public code
//! ([`ApiError::code`]); each front end maps them to its own protocol.

mod registry;

pub use crate::pipeline::FreezeScope;
pub use crate::report::Caller;
pub use registry::{Api, REMEMBERED};

use crate::codes::{ErrorCode, Problem};
use crate::report::Report;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::{Duration, SystemTime};

/// Ask for one operation to be prepared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrepareRequest {
    /// Operation id (letters, digits, `-`, `_`, `.`); the same id makes a repeat idempotent.
    pub id: String,
    /// From now until the guard thaws; None: `server.default_deadline`. Capped at
    /// `freeze.timeout` (the answer's `deadline_capped` says so).
    pub deadline: Option<Duration>,
    /// An absolute time (wall clock) by which the guard thaws at the latest, whatever
    /// `deadline` says: for a caller whose deadline is shared with other machines (a group
    /// member). The guard thaws at min(freeze start + deadline, `thaw_by`); a prepare whose
    /// pre hooks end after `thaw_by` freezes nothing and fails. None: `deadline` alone.
    pub thaw_by: Option<SystemTime>,
    pub scope: FreezeScope,
    /// Recorded in the report and the catalog.
    pub caller: Caller,
}

impl PrepareRequest {
    /// A request for `id` with the default deadline, the configured plan, from `caller`.
    pub fn new(id: impl Into<String>, caller: Caller) -> PrepareRequest {
        PrepareRequest {
            id: id.into(),
            deadline: None,
            thaw_by: None,
            scope: FreezeScope::Plan,
            caller,
        }
    }
}

/// Where an operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpState {
    /// Pre hooks and freeze are running.
    Preparing,
    /// Prepared with filesystems frozen (`frozen` lists what is still frozen: empty once
    /// the guard thawed at the deadline).
    Frozen,
    /// Prepared, nothing frozen (a scope that freezes nothing, or nothing to freeze).
    Prepared,
    /// Thaw and post hooks are running.
    Releasing,
    /// Finished: released by the caller.
    Released,
    /// Finished: the prepare failed, or the operation was stopped (shutdown).
    Failed,
    /// Finished: nobody released it by its deadline.
    Expired,
}

impl OpState {
    pub fn as_str(self) -> &'static str {
        match self {
            OpState::Preparing => "preparing",
            OpState::Frozen => "frozen",
            OpState::Prepared => "prepared",
            OpState::Releasing => "releasing",
            OpState::Released => "released",
            OpState::Failed => "failed",
            OpState::Expired => "expired",
        }
    }

    /// True once the operation is over (the report is final).
    pub fn is_finished(self) -> bool {
        matches!(self, OpState::Released | OpState::Failed | OpState::Expired)
    }
}

impl fmt::Display for OpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer to a prepare.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrepareAnswer {
    #[serde(rename = "operation_id")]
    pub id: String,
    pub state: OpState,
    /// Mount points frozen now (empty once the operation is finished).
    pub frozen: Vec<String>,
    pub errors: Vec<Problem>,
    /// The deadline in force, in seconds from the prepare.
    #[serde(rename = "deadline_seconds")]
    pub deadline_s: f64,
    /// The requested deadline was longer than `freeze.timeout` and was cut to it.
    #[serde(default)]
    pub deadline_capped: bool,
}

/// Where an operation is, and its report once finished.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpStatus {
    #[serde(rename = "operation_id")]
    pub id: String,
    pub state: OpState,
    pub frozen: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<Report>,
}

/// Why a request was refused. [`ApiError::code`] is the public code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("operation {active} is in progress")]
    InProgress { active: String },
    #[error("quiesce is shutting down")]
    ShuttingDown,
    #[error("no operation {0}")]
    UnknownOperation(String),
    #[error("operation {id} is {state}, not prepared")]
    NotPrepared { id: String, state: OpState },
    #[error("the operation failed: {}", first_error(.0))]
    Failed(Box<Report>),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("the configured snapshot provider takes no snapshots (provider \"none\")")]
    NoProvider,
    #[error("{0}")]
    Snapshot(Problem),
}

fn first_error(report: &Report) -> String {
    report
        .errors
        .first()
        .map(|p| p.to_string())
        .unwrap_or_else(|| report.status.as_str().to_string())
}

impl ApiError {
    /// The public code of this refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::InProgress { .. } => ErrorCode::OperationInProgress,
            ApiError::ShuttingDown => ErrorCode::Interrupted,
            ApiError::UnknownOperation(_) => ErrorCode::UnknownOperation,
            ApiError::NotPrepared { .. } | ApiError::InvalidRequest(_) => ErrorCode::InvalidRequest,
            ApiError::Failed(report) => report
                .errors
                .first()
                .map(|p| p.code)
                .unwrap_or(ErrorCode::StateError),
            ApiError::NoProvider => ErrorCode::SnapshotFailed,
            ApiError::Snapshot(p) => p.code,
        }
    }

    /// The refusal as reportable problems (a failed operation's own errors).
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            ApiError::Failed(report) if !report.errors.is_empty() => report.errors.clone(),
            ApiError::Snapshot(p) => vec![p.clone()],
            other => vec![Problem::new(other.code(), other.to_string())],
        }
    }
}
