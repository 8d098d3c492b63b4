//! The freeze engine (SPEC section 5): mount discovery and planning, syncfs + FIFREEZE in
//! dependency order, and a guard process that guarantees the thaw.
//!
//! Entry points used by the pipeline and the server:
//! - [`plan::plan_system`] builds the plan from `/proc/self/mountinfo` and the config;
//! - [`lock::OpLock::acquire`] takes the one-operation-at-a-time lock under the state dir;
//! - [`freeze`] arms the guard, then syncfs + FIFREEZE every target, returning [`Frozen`];
//! - [`Frozen::thaw`] thaws, disarms the guard and says whether the guard fired first;
//! - [`state::recover`] thaws whatever a crashed run left frozen.

pub mod guard;
pub mod ioctl;
pub mod lock;
pub mod mountinfo;
pub mod plan;
pub mod state;

use crate::codes::Problem;
use std::path::PathBuf;
use std::time::Duration;

/// How to freeze.
#[derive(Debug, Clone)]
pub struct FreezeOptions {
    pub operation_id: String,
    /// Guard deadline, counted from when the guard is armed (just before the first freeze).
    pub timeout: Duration,
    /// Where the state file lives (for `quiesce recover`).
    pub state_dir: PathBuf,
}

/// Why the guard thawed on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardReason {
    Deadline,
    Signal,
    AgentDied,
}

/// The guard thawed before the agent asked it to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardFired {
    pub reason: GuardReason,
    /// CLOCK_MONOTONIC nanoseconds when the guard began thawing.
    pub at_monotonic_ns: u64,
}

/// The result of thawing.
#[derive(Debug, Clone)]
pub struct ThawOutcome {
    /// From the first FIFREEZE to the last FITHAW (by whoever thawed).
    pub frozen_ms: u64,
    /// Time spent in FITHAW calls by the agent.
    pub thaw_ms: u64,
    pub guard_fired: Option<GuardFired>,
    /// ThawFailed problems, if any.
    pub problems: Vec<Problem>,
}

/// A set of frozen filesystems with an armed guard. Dropping it without calling
/// [`Frozen::thaw`] still thaws (through the guard).
pub struct Frozen {
    _private: (),
}

/// Read CLOCK_MONOTONIC in nanoseconds (comparable across processes).
pub fn monotonic_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Arm the guard, then syncfs + FIFREEZE each target of `plan` in dependency order
/// (independent filesystems in parallel). On any failure, what was frozen is thawed before
/// returning the problems (FreezeFailed, FilesystemAlreadyFrozen, FreezeNotSupported,
/// FreezePermissionDenied).
pub fn freeze(
    plan: &plan::Plan,
    lock: &lock::OpLock,
    opts: &FreezeOptions,
) -> Result<Frozen, Vec<Problem>> {
    let _ = (plan, lock, opts);
    todo!("freeze::freeze")
}

impl Frozen {
    /// Has the guard already thawed (deadline, signal)? Non-blocking.
    pub fn guard_fired(&self) -> Option<GuardFired> {
        todo!()
    }
    /// Mount points frozen, in freeze order.
    pub fn mount_points(&self) -> Vec<PathBuf> {
        todo!()
    }
    /// Thaw everything in reverse dependency order, disarm the guard, report.
    pub fn thaw(self) -> ThawOutcome {
        todo!()
    }
}
