//! Snapshot providers behind one trait.

pub mod btrfs;
pub mod command;
mod error;
pub mod retention;

use crate::config::{ProviderConfig, SnapshotConfig};
use crate::freeze::plan::Target;
use crate::report::{Consistency, SnapshotRef};
pub use error::SnapshotError;
use std::path::PathBuf;
use std::time::Duration;

/// What a provider is told when asked for a snapshot.
#[derive(Debug)]
pub struct SnapshotContext<'a> {
    pub operation_id: &'a str,
    /// The filesystems frozen right now (empty when freezing is off or failed).
    pub frozen: &'a [Target],
    pub timeout: Duration,
}

/// A snapshot that exists, as listed by `quiesce snapshots`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SnapshotInfo {
    pub provider: String,
    pub id: String,
    /// Where it lives (btrfs: the snapshot's path).
    pub location: Option<PathBuf>,
    /// Seconds since the epoch.
    pub created_unix: Option<i64>,
    pub operation_id: Option<String>,
    /// Filled in from the catalog when known.
    pub consistency: Option<Consistency>,
    /// `verified`, `verification failed: …` or `not verified`, from the catalog.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification: Option<String>,
    /// Listed from what the catalog recorded, not seen by the provider: the snapshot may
    /// have been deleted since, outside quiesce.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_catalog: bool,
}

/// One way of taking snapshots.
pub trait Provider: Send {
    /// `"command"`, `"btrfs"`, `"none"`.
    fn name(&self) -> &'static str;

    /// Paths whose filesystems this provider writes to while the set is frozen. The freeze
    /// planner never freezes them (a btrfs snapshot of a frozen btrfs blocks forever).
    fn must_not_freeze(&self) -> Vec<PathBuf>;

    /// Whether this provider takes a snapshot at all (`none` does not).
    fn takes_snapshots(&self) -> bool {
        true
    }

    /// Every problem that would make `take` fail, found without making anything (paths,
    /// kinds of filesystem, ...). For `quiesce check`, the dry run. Empty: nothing found.
    fn check(&self) -> Vec<SnapshotError> {
        Vec::new()
    }

    /// Take the snapshot; called while the freeze holds.
    fn take(&mut self, ctx: &SnapshotContext<'_>) -> Result<Vec<SnapshotRef>, SnapshotError>;

    /// The snapshots this provider can see (empty for providers that cannot list).
    fn list(&self) -> Result<Vec<SnapshotInfo>, SnapshotError> {
        Ok(Vec::new())
    }

    /// Whether [`Provider::list`] sees the snapshots themselves. The `command` provider
    /// cannot: its snapshots are wherever its command put them (a cloud, an image file), so
    /// `quiesce snapshots` lists what the catalog recorded of it instead.
    fn can_list(&self) -> bool {
        false
    }

    /// Apply retention after a successful run; never removes `just_made`. Returns removed ids.
    fn prune(&self, just_made: &[SnapshotRef]) -> Result<Vec<String>, SnapshotError> {
        let _ = just_made;
        Ok(Vec::new())
    }
}

/// The `none` provider: the platform takes the snapshot (host-driven), or nobody does.
pub struct NoneProvider;

impl Provider for NoneProvider {
    fn name(&self) -> &'static str {
        "none"
    }
    fn must_not_freeze(&self) -> Vec<PathBuf> {
        Vec::new()
    }
    fn takes_snapshots(&self) -> bool {
        false
    }
    fn take(&mut self, _ctx: &SnapshotContext<'_>) -> Result<Vec<SnapshotRef>, SnapshotError> {
        Ok(Vec::new())
    }
}

/// Build the configured provider.
pub fn from_config(cfg: &SnapshotConfig) -> Box<dyn Provider> {
    match &cfg.provider {
        ProviderConfig::None => Box::new(NoneProvider),
        ProviderConfig::Command { argv } => Box::new(command::CommandProvider::new(argv.clone())),
        ProviderConfig::Btrfs(b) => Box::new(btrfs::BtrfsProvider::new(b.clone())),
    }
}
