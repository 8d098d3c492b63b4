//! Which filesystems to freeze, and in what order.
use super::mountinfo::Mount;
use crate::codes::Problem;
use crate::config::FreezeConfig;
use std::path::{Path, PathBuf};

/// One superblock to freeze.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Target {
    /// The mount point used to open the filesystem.
    pub mount_point: PathBuf,
    /// Other mount points of the same superblock (bind mounts, btrfs subvolumes).
    pub also_mounted_at: Vec<PathBuf>,
    /// `major:minor` from mountinfo.
    pub major: u32,
    pub minor: u32,
    pub fstype: String,
    pub source: String,
}

/// What was decided for one mount (shown by `quiesce mounts`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct MountDecision {
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
    pub device: String,
    pub freeze: bool,
    pub reason: String,
}

/// The freeze plan.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub targets: Vec<Target>,
    /// Freeze order: every index of `targets` once; layer 0 first, layers frozen one after
    /// another, members of a layer in parallel. Thaw is the reverse.
    pub layers: Vec<Vec<usize>>,
    pub decisions: Vec<MountDecision>,
}

/// Plan from the given mounts. `never_freeze` are paths whose filesystems must stay thawed
/// (the snapshot provider's). `backing_of(major, minor)` gives, for a loop device, the
/// `major:minor` of the filesystem holding its backing file.
pub fn plan(
    mounts: &[Mount],
    cfg: &FreezeConfig,
    never_freeze: &[PathBuf],
    backing_of: &dyn Fn(u32, u32) -> Option<(u32, u32)>,
) -> Result<Plan, Vec<Problem>> {
    let _ = (mounts, cfg, never_freeze, backing_of);
    todo!()
}

/// Plan from `/proc/self/mountinfo` and `/sys/dev/block`.
pub fn plan_system(cfg: &FreezeConfig, never_freeze: &[PathBuf]) -> Result<Plan, Vec<Problem>> {
    let _ = (cfg, never_freeze, Path::new("/"));
    todo!()
}

/// The table shown by `quiesce mounts`.
pub fn render_table(plan: &Plan) -> String {
    let _ = plan;
    todo!()
}
