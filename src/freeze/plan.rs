//! Which filesystems to freeze, and in what order.
//!
//! The planner works on decoded mountinfo only (no system access), so every rule can be
//! tested on mountinfo text; [`plan_system`] adds what must be read from the running
//! system (the mount table, canonical paths, loop devices' backing files).
//!
//! Rules:
//! - one target per superblock (`major:minor`): bind mounts and btrfs subvolume mounts of
//!   the same filesystem are frozen once, through the shortest mount point (or the one
//!   named in `include`); the others are listed in [`Target::also_mounted_at`];
//! - by default only local block filesystems of a type known to support `FIFREEZE` are
//!   frozen; pseudo, network, FUSE, read-only, image (squashfs, ...) and unknown types are
//!   skipped, each with its reason;
//! - `include` (when not empty) names exactly the mount points to freeze, and naming one
//!   that cannot be frozen is an error; `exclude` removes mount points;
//! - the filesystems holding the `never_freeze` paths (where the snapshot provider
//!   writes) are never frozen;
//! - a filesystem on a loop device whose image lives on another selected filesystem is
//!   frozen in an earlier layer (and thawed later): freezing the image's filesystem first
//!   would deadlock the inner freeze's writeback.
use super::mountinfo::{self, Mount};
use crate::codes::{ErrorCode, Problem};
use crate::config::FreezeConfig;
use crate::quote::quote_path;
use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

/// One superblock to freeze.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Target {
    /// The mount point used to open the filesystem.
    #[serde(serialize_with = "mountinfo::serialize_path")]
    pub mount_point: PathBuf,
    /// Other mount points of the same superblock (bind mounts, btrfs subvolumes).
    #[serde(serialize_with = "mountinfo::serialize_paths")]
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
    #[serde(serialize_with = "mountinfo::serialize_path")]
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
    pub device: String,
    pub freeze: bool,
    pub reason: String,
}

/// The freeze plan.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Plan {
    pub targets: Vec<Target>,
    /// Freeze order: every index of `targets` once; layer 0 first, layers frozen one after
    /// another, members of a layer in parallel. Thaw is the reverse.
    pub layers: Vec<Vec<usize>>,
    pub decisions: Vec<MountDecision>,
}

/// What kind of filesystem a type name denotes, as far as freezing goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsClass {
    /// A local block filesystem known to implement freezing.
    Freezable,
    /// Kernel or memory-backed: nothing on a disk to make consistent.
    Pseudo,
    /// Lives on a server: freeze it there.
    Network,
    /// Userspace filesystem: the kernel cannot freeze it.
    Fuse,
    /// Read-only image formats: nothing to flush, no freeze support.
    ReadOnlyImage,
    /// Shared-disk cluster filesystem: a freeze stops every node.
    Cluster,
    /// Not on any list: not frozen unless we know it supports freezing.
    Unknown,
}

/// Local block filesystems whose kernel drivers implement `freeze_fs`/`freeze_super`.
pub const FREEZABLE_TYPES: &[&str] = &[
    "ext2", "ext3", "ext4", "ext4dev", "xfs", "btrfs", "f2fs", "jfs", "reiserfs", "nilfs2",
    "bcachefs",
];
/// Kernel and memory-backed filesystems.
pub const PSEUDO_TYPES: &[&str] = &[
    "proc",
    "sysfs",
    "tmpfs",
    "devtmpfs",
    "devpts",
    "ramfs",
    "cgroup",
    "cgroup2",
    "overlay",
    "overlayfs",
    "aufs",
    "securityfs",
    "debugfs",
    "tracefs",
    "pstore",
    "bpf",
    "mqueue",
    "hugetlbfs",
    "configfs",
    "fusectl",
    "binfmt_misc",
    "autofs",
    "efivarfs",
    "nsfs",
    "rpc_pipefs",
    "selinuxfs",
    "smackfs",
    "nfsd",
    "sockfs",
    "pipefs",
    "anon_inodefs",
    "rootfs",
    "zonefs",
    "vboxsf",
    "shiftfs",
    "xenfs",
    "ipathfs",
    "usbfs",
    "functionfs",
    "cpuset",
    "dax",
    "secretmem",
    "resctrl",
    "ubifs_pseudo",
];
/// Network and host-shared filesystems.
pub const NETWORK_TYPES: &[&str] = &[
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "ceph",
    "9p",
    "afs",
    "coda",
    "ncpfs",
    "lustre",
    "orangefs",
    "pvfs2",
    "gpfs",
    "beegfs",
    "virtiofs",
    "glusterfs",
    "davfs",
    "sshfs",
];
/// Read-only image formats.
pub const READ_ONLY_IMAGE_TYPES: &[&str] = &[
    "squashfs", "iso9660", "udf", "erofs", "cramfs", "romfs", "efs", "qnx4",
];
/// Shared-disk cluster filesystems.
pub const CLUSTER_TYPES: &[&str] = &["gfs2", "ocfs2"];

/// Classify a filesystem type name as mountinfo spells it.
pub fn classify(fstype: &str) -> FsClass {
    let base = fstype.split('.').next().unwrap_or(fstype);
    if fstype == "fuse" || fstype == "fuseblk" || base == "fuse" || base == "fuseblk" {
        return FsClass::Fuse;
    }
    if FREEZABLE_TYPES.contains(&fstype) {
        FsClass::Freezable
    } else if PSEUDO_TYPES.contains(&fstype) {
        FsClass::Pseudo
    } else if NETWORK_TYPES.contains(&fstype) || NETWORK_TYPES.contains(&base) {
        FsClass::Network
    } else if READ_ONLY_IMAGE_TYPES.contains(&fstype) {
        FsClass::ReadOnlyImage
    } else if CLUSTER_TYPES.contains(&fstype) {
        FsClass::Cluster
    } else {
        FsClass::Unknown
    }
}

fn class_reason(class: FsClass, fstype: &str) -> Option<String> {
    Some(match class {
        FsClass::Freezable => return None,
        FsClass::Pseudo => format!("pseudo filesystem ({fstype}): nothing on a disk to freeze"),
        FsClass::Network => {
            format!("network filesystem ({fstype}): not frozen here (quiesce its server)")
        }
        FsClass::Fuse => format!("FUSE filesystem ({fstype}): the kernel cannot freeze it"),
        FsClass::ReadOnlyImage => {
            format!("read-only image filesystem ({fstype}): nothing to flush, no freeze support")
        }
        FsClass::Cluster => {
            format!("cluster filesystem ({fstype}): a freeze would stop every node; not supported")
        }
        FsClass::Unknown => format!(
            "unknown filesystem type ({fstype}): not on the list of types known to support freezing"
        ),
    })
}

/// Why a superblock cannot be frozen; shown in words by `quiesce mounts` and in plan errors.
#[derive(Debug, Clone, PartialEq)]
enum Ineligible {
    /// Its type cannot (or must not) be frozen.
    Class { class: FsClass, fstype: String },
    /// `ro` in the super options.
    ReadOnlySuper,
    /// Every mount of it is hidden under another mount (at `by`).
    Hidden { by: PathBuf },
    /// Every visible mount of it is `ro`.
    ReadOnlyMounts,
    /// The snapshot provider writes to `path` on it.
    ProviderWrites { path: PathBuf },
}

impl std::fmt::Display for Ineligible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ineligible::Class { class, fstype } => {
                f.write_str(&class_reason(*class, fstype).unwrap_or_default())
            }
            Ineligible::ReadOnlySuper => {
                f.write_str("read-only filesystem (ro in the super options): nothing can change")
            }
            Ineligible::Hidden { by } => write!(
                f,
                "hidden under another mount at {}: not reachable",
                quote_path(by)
            ),
            Ineligible::ReadOnlyMounts => {
                f.write_str("read-only mount (ro): nothing can change through it")
            }
            Ineligible::ProviderWrites { path } => write!(
                f,
                "snapshot provider writes here ({}): never frozen",
                quote_path(path)
            ),
        }
    }
}

/// Normalize a path lexically: make `.` and `..` disappear, drop trailing slashes.
/// (No filesystem access: the planner works on mountinfo text.)
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                let at_top =
                    out.as_os_str().is_empty() || out == Path::new("/") || out.ends_with("..");
                if !at_top {
                    out.pop();
                } else if !p.is_absolute() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(if p.is_absolute() { "/" } else { "." });
    }
    out
}

/// The mount tree, with which mounts can actually be reached by path.
struct MountTable<'a> {
    mounts: &'a [Mount],
    /// `visible[i]`: mount i is not hidden under a later mount.
    visible: Vec<bool>,
    /// For hidden mounts: the mount point of a mount hiding it.
    hidden_by: Vec<Option<PathBuf>>,
}

impl<'a> MountTable<'a> {
    fn new(mounts: &'a [Mount]) -> MountTable<'a> {
        let by_id: HashMap<u32, usize> = mounts
            .iter()
            .enumerate()
            .map(|(i, m)| (m.mount_id, i))
            .collect();
        let mut by_path: HashMap<&Path, Vec<usize>> = HashMap::new();
        for (i, m) in mounts.iter().enumerate() {
            by_path.entry(m.mount_point.as_path()).or_default().push(i);
        }
        // Ancestors of each mount along parent ids (bounded, in case of a cycle).
        let ancestors: Vec<HashSet<usize>> = (0..mounts.len())
            .map(|i| {
                let mut set = HashSet::new();
                let mut cur = i;
                for _ in 0..mounts.len() {
                    match by_id.get(&mounts[cur].parent_id) {
                        Some(&p) if p != i && set.insert(p) => cur = p,
                        _ => break,
                    }
                }
                set
            })
            .collect();
        let mut visible = vec![true; mounts.len()];
        let mut hidden_by = vec![None; mounts.len()];
        for (i, m) in mounts.iter().enumerate() {
            // Every prefix of the mount point, including itself.
            let mut prefix = Some(m.mount_point.as_path());
            'prefixes: while let Some(p) = prefix {
                if let Some(others) = by_path.get(p) {
                    for &j in others {
                        if j == i || ancestors[i].contains(&j) {
                            continue;
                        }
                        // Same mount point: the one on top wins (a mount stacked on i has
                        // i among its ancestors; of unrelated ones, the later). A mount on
                        // a parent directory that is not our ancestor was mounted over the
                        // path leading to us.
                        let hides =
                            p != m.mount_point.as_path() || ancestors[j].contains(&i) || j > i;
                        if hides {
                            visible[i] = false;
                            hidden_by[i] = Some(mounts[j].mount_point.clone());
                            break 'prefixes;
                        }
                    }
                }
                prefix = p.parent();
            }
        }
        MountTable {
            mounts,
            visible,
            hidden_by,
        }
    }

    /// The visible mount whose mount point is the longest prefix of `path` (lexical).
    fn containing(&self, path: &Path) -> Option<usize> {
        let path = normalize(path);
        let mut best: Option<usize> = None;
        for (i, m) in self.mounts.iter().enumerate() {
            if !self.visible[i] || !path.starts_with(&m.mount_point) {
                continue;
            }
            let better = match best {
                None => true,
                Some(b) => {
                    m.mount_point.as_os_str().len() >= self.mounts[b].mount_point.as_os_str().len()
                }
            };
            if better {
                best = Some(i);
            }
        }
        best
    }
}

/// One superblock and its mounts.
struct Group {
    major: u32,
    minor: u32,
    /// Indices into the mounts, in mountinfo order.
    members: Vec<usize>,
    /// Why it cannot be frozen, if it cannot.
    ineligible: Option<Ineligible>,
    excluded: Option<PathBuf>,
    /// Selected for freezing, with its chosen mount (index into mounts).
    primary: Option<usize>,
}

/// Fewest path components first; ties keep mountinfo order (min_by_key keeps the first).
fn depth_key(p: &Path) -> usize {
    p.components().count()
}

/// The mounts grouped by superblock, in order of first appearance.
struct Groups {
    list: Vec<Group>,
    of_dev: HashMap<(u32, u32), usize>,
    /// `of_mount[i]`: the group of mount i.
    of_mount: Vec<usize>,
}

impl Groups {
    fn new(mounts: &[Mount]) -> Groups {
        let mut list: Vec<Group> = Vec::new();
        let mut of_dev: HashMap<(u32, u32), usize> = HashMap::new();
        let mut of_mount = vec![0usize; mounts.len()];
        for (i, m) in mounts.iter().enumerate() {
            let g = *of_dev.entry((m.major, m.minor)).or_insert_with(|| {
                list.push(Group {
                    major: m.major,
                    minor: m.minor,
                    members: Vec::new(),
                    ineligible: None,
                    excluded: None,
                    primary: None,
                });
                list.len() - 1
            });
            list[g].members.push(i);
            of_mount[i] = g;
        }
        Groups {
            list,
            of_dev,
            of_mount,
        }
    }

    /// Why each superblock cannot be frozen, if it cannot (`never_freeze`: the paths the
    /// snapshot provider writes to).
    fn mark_ineligible(&mut self, table: &MountTable<'_>, never_freeze: &[PathBuf]) {
        let mut provider_paths: HashMap<usize, PathBuf> = HashMap::new();
        for p in never_freeze {
            if let Some(i) = table.containing(p) {
                provider_paths
                    .entry(self.of_mount[i])
                    .or_insert_with(|| p.clone());
            }
        }
        for (g, group) in self.list.iter_mut().enumerate() {
            group.ineligible = ineligibility(group, table).or_else(|| {
                provider_paths
                    .get(&g)
                    .map(|p| Ineligible::ProviderWrites { path: p.clone() })
            });
        }
    }

    /// Exclusions (by any mount point of the superblock).
    fn mark_excluded(&mut self, mounts: &[Mount], cfg: &FreezeConfig) {
        let exclude: Vec<PathBuf> = cfg.exclude.iter().map(|p| normalize(p)).collect();
        for group in self.list.iter_mut() {
            for &i in &group.members {
                if let Some(x) = exclude.iter().find(|x| **x == mounts[i].mount_point) {
                    group.excluded = Some(x.clone());
                    break;
                }
            }
        }
    }

    /// Without `freeze.include`: every eligible, not excluded superblock, through its
    /// shallowest visible mount.
    fn select_all(&mut self, table: &MountTable<'_>) {
        for group in self.list.iter_mut() {
            if group.ineligible.is_none() && group.excluded.is_none() {
                group.primary = group
                    .members
                    .iter()
                    .copied()
                    .filter(|&i| table.visible[i])
                    .min_by_key(|&i| depth_key(&table.mounts[i].mount_point));
            }
        }
    }

    /// With `freeze.include`: exactly those mount points; the problems with any of them.
    fn select_included(&mut self, table: &MountTable<'_>, include: &[PathBuf]) -> Vec<Problem> {
        let mounts = table.mounts;
        let mut problems = Vec::new();
        for inc in include {
            let p = normalize(inc);
            let at: Vec<usize> = (0..mounts.len())
                .filter(|&i| mounts[i].mount_point == p)
                .collect();
            let Some(&i) = at.iter().find(|&&i| table.visible[i]) else {
                problems.push(Problem::new(
                    ErrorCode::InvalidFreezePlan,
                    not_a_visible_mount(table, &p, at.first().copied()),
                ));
                continue;
            };
            let group = &mut self.list[self.of_mount[i]];
            if let Some(why) = &group.ineligible {
                problems.push(Problem::new(
                    ErrorCode::InvalidFreezePlan,
                    format!("freeze.include {}: cannot be frozen: {why}", quote_path(&p)),
                ));
                continue;
            }
            if group.excluded.is_some() {
                continue;
            }
            if group.primary.is_none() {
                group.primary = Some(i);
            }
        }
        problems
    }

    /// The targets, in mountinfo order of their chosen mount, and the target of each
    /// selected group.
    fn targets(&self, mounts: &[Mount]) -> (Vec<Target>, HashMap<usize, usize>) {
        let groups = &self.list;
        let mut selected: Vec<usize> = (0..groups.len())
            .filter(|&g| groups[g].primary.is_some())
            .collect();
        selected.sort_by_key(|&g| groups[g].primary);
        let mut target_of_group: HashMap<usize, usize> = HashMap::new();
        let mut targets = Vec::new();
        for &g in &selected {
            let group = &groups[g];
            let primary = group.primary.unwrap_or(group.members[0]);
            let pm = &mounts[primary];
            let mut also: Vec<PathBuf> = Vec::new();
            for &i in &group.members {
                let mp = &mounts[i].mount_point;
                if *mp != pm.mount_point && !also.contains(mp) {
                    also.push(mp.clone());
                }
            }
            target_of_group.insert(g, targets.len());
            targets.push(Target {
                mount_point: pm.mount_point.clone(),
                also_mounted_at: also,
                major: group.major,
                minor: group.minor,
                fstype: pm.fstype.clone(),
                source: pm.source.clone(),
            });
        }
        (targets, target_of_group)
    }
}

/// Why a superblock cannot be frozen whatever the configuration says, if it cannot.
fn ineligibility(group: &Group, table: &MountTable<'_>) -> Option<Ineligible> {
    let mounts = table.mounts;
    let first = &mounts[group.members[0]];
    let visible: Vec<usize> = group
        .members
        .iter()
        .copied()
        .filter(|&i| table.visible[i])
        .collect();
    let class = classify(&first.fstype);
    if class != FsClass::Freezable {
        Some(Ineligible::Class {
            class,
            fstype: first.fstype.clone(),
        })
    } else if group
        .members
        .iter()
        .any(|&i| mounts[i].super_options.iter().any(|o| o == "ro"))
    {
        Some(Ineligible::ReadOnlySuper)
    } else if visible.is_empty() {
        let by = table.hidden_by[group.members[0]]
            .clone()
            .unwrap_or_default();
        Some(Ineligible::Hidden { by })
    } else if visible
        .iter()
        .all(|&i| mounts[i].mount_options.iter().any(|o| o == "ro"))
    {
        Some(Ineligible::ReadOnlyMounts)
    } else {
        None
    }
}

/// Why the included path `p` cannot be selected (`hidden`: a hidden mount at `p`).
fn not_a_visible_mount(table: &MountTable<'_>, p: &Path, hidden: Option<usize>) -> String {
    if let Some(h) = hidden {
        format!(
            "freeze.include {}: hidden under another mount at {}",
            quote_path(p),
            quote_path(&table.hidden_by[h].clone().unwrap_or_default())
        )
    } else if let Some(c) = table.containing(p) {
        format!(
            "freeze.include {}: not a mount point (it is on the filesystem mounted at {})",
            quote_path(p),
            quote_path(&table.mounts[c].mount_point)
        )
    } else {
        format!("freeze.include {}: not a mount point", quote_path(p))
    }
}

/// The freeze order: a target whose loop image lives on another target goes before it.
struct Layering {
    /// `layer[t]`: the layer of target t.
    layer: Vec<usize>,
    /// (inner, outer): inner's loop image lives on outer.
    edges: Vec<(usize, usize)>,
    count: usize,
}

fn layering(
    targets: &[Target],
    groups: &Groups,
    target_of_group: &HashMap<usize, usize>,
    backing_of: &dyn Fn(u32, u32) -> Option<(u32, u32)>,
) -> Result<Layering, Problem> {
    let n = targets.len();
    let mut edges: Vec<(usize, usize)> = Vec::new();
    for (t, target) in targets.iter().enumerate() {
        let outer = backing_of(target.major, target.minor)
            .and_then(|dev| groups.of_dev.get(&dev))
            .and_then(|g| target_of_group.get(g));
        if let Some(&o) = outer {
            if o != t {
                edges.push((t, o));
            }
        }
    }
    let mut layer = vec![0usize; n];
    let mut settled = false;
    for _ in 0..=n {
        let mut changed = false;
        for &(inner, outer) in &edges {
            if layer[outer] < layer[inner] + 1 {
                layer[outer] = layer[inner] + 1;
                changed = true;
            }
        }
        if !changed {
            settled = true;
            break;
        }
    }
    if !settled {
        return Err(Problem::new(
            ErrorCode::InvalidFreezePlan,
            "loop devices back each other in a cycle; no safe freeze order exists",
        ));
    }
    let count = layer.iter().copied().max().map_or(0, |m| m + 1);
    Ok(Layering {
        layer,
        edges,
        count,
    })
}

impl Layering {
    fn layers(&self) -> Vec<Vec<usize>> {
        let n = self.layer.len();
        (0..self.count)
            .map(|l| (0..n).filter(|&t| self.layer[t] == l).collect())
            .collect()
    }
}

/// Why mount `i` is (or is not) frozen.
fn decide(
    i: usize,
    table: &MountTable<'_>,
    groups: &Groups,
    targets: &[Target],
    target_of_group: &HashMap<usize, usize>,
    order: &Layering,
) -> MountDecision {
    let m = &table.mounts[i];
    let g = groups.of_mount[i];
    let group = &groups.list[g];
    let (freeze, reason) = if let Some(&t) = target_of_group.get(&g) {
        let target = &targets[t];
        if target.mount_point != m.mount_point {
            (
                true,
                format!(
                    "same filesystem as {}: frozen once, through {}",
                    quote_path(&target.mount_point),
                    quote_path(&target.mount_point)
                ),
            )
        } else {
            let mut r = format!("local {} filesystem", m.fstype);
            if order.count > 1 {
                r.push_str(&format!(
                    "; layer {} of {}",
                    order.layer[t] + 1,
                    order.count
                ));
            }
            for &(inner, outer) in &order.edges {
                if inner == t {
                    r.push_str(&format!(
                        "; loop image on {}: frozen before it, thawed after",
                        quote_path(&targets[outer].mount_point)
                    ));
                }
            }
            (true, r)
        }
    } else if let Some(why) = &group.ineligible {
        let hidden = !table.visible[i] && !matches!(why, Ineligible::Hidden { .. });
        let mut r = why.to_string();
        if hidden {
            r.push_str("; this mount is hidden under another mount");
        }
        (false, r)
    } else if let Some(x) = &group.excluded {
        (
            false,
            format!("excluded by freeze.exclude ({})", quote_path(x)),
        )
    } else {
        (false, "not listed in freeze.include".to_string())
    };
    MountDecision {
        mount_point: m.mount_point.clone(),
        fstype: m.fstype.clone(),
        source: m.source.clone(),
        device: m.device(),
        freeze,
        reason,
    }
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
    let table = MountTable::new(mounts);
    let mut groups = Groups::new(mounts);
    groups.mark_ineligible(&table, never_freeze);
    groups.mark_excluded(mounts, cfg);
    if cfg.include.is_empty() {
        groups.select_all(&table);
    } else {
        let problems = groups.select_included(&table, &cfg.include);
        if !problems.is_empty() {
            return Err(problems);
        }
    }
    let (targets, target_of_group) = groups.targets(mounts);
    let order = layering(&targets, &groups, &target_of_group, backing_of).map_err(|p| vec![p])?;
    let decisions = (0..mounts.len())
        .map(|i| decide(i, &table, &groups, &targets, &target_of_group, &order))
        .collect();
    Ok(Plan {
        targets,
        layers: order.layers(),
        decisions,
    })
}

/// Resolve a path that may not exist yet: canonicalize its nearest existing ancestor and
/// append the rest, so the planner can find the mount it will live on.
pub fn canonical_or_nearest(p: &Path) -> PathBuf {
    let p = normalize(p);
    let mut rest: Vec<std::ffi::OsString> = Vec::new();
    let mut cur = p.as_path();
    loop {
        if let Ok(c) = std::fs::canonicalize(cur) {
            let mut out = c;
            for r in rest.iter().rev() {
                out.push(r);
            }
            return out;
        }
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                cur = parent;
            }
            _ => return p,
        }
    }
}

/// The `major:minor` of the filesystem holding the backing file of loop device
/// `major:minor`, read from `/sys/dev/block/MAJ:MIN/loop/backing_file`.
pub fn loop_backing_device(mounts: &[Mount], major: u32, minor: u32) -> Option<(u32, u32)> {
    let sys = format!("/sys/dev/block/{major}:{minor}/loop/backing_file");
    let text = std::fs::read(sys).ok()?;
    let mut bytes = text;
    while bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    if bytes.ends_with(b" (deleted)") {
        return None;
    }
    use std::os::unix::ffi::OsStringExt;
    let path = PathBuf::from(std::ffi::OsString::from_vec(bytes));
    let path = std::fs::canonicalize(&path).unwrap_or(path);
    let table = MountTable::new(mounts);
    let i = table.containing(&path)?;
    Some((mounts[i].major, mounts[i].minor))
}

/// Plan from `/proc/self/mountinfo` and `/sys/dev/block`.
pub fn plan_system(cfg: &FreezeConfig, never_freeze: &[PathBuf]) -> Result<Plan, Vec<Problem>> {
    let mounts = mountinfo::read_self().map_err(|e| {
        vec![Problem::new(
            ErrorCode::InvalidFreezePlan,
            format!("cannot list mounted filesystems: {e}"),
        )]
    })?;
    let never: Vec<PathBuf> = never_freeze
        .iter()
        .map(|p| canonical_or_nearest(p))
        .collect();
    let backing = |major: u32, minor: u32| loop_backing_device(&mounts, major, minor);
    plan(&mounts, cfg, &never, &backing)
}

/// The table printed by `quiesce mounts`: one line per mount with its mount point, type,
/// device, FREEZE or skip, and the reason.
pub fn render_table(plan: &Plan) -> String {
    let rows: Vec<[String; 5]> = plan
        .decisions
        .iter()
        .map(|d| {
            [
                mountinfo::escape(&d.mount_point),
                d.fstype.clone(),
                format!("{} ({})", escape_text(&d.source), d.device),
                if d.freeze { "FREEZE" } else { "skip" }.to_string(),
                d.reason.clone(),
            ]
        })
        .collect();
    let header = [
        "MOUNT POINT".to_string(),
        "TYPE".to_string(),
        "DEVICE".to_string(),
        "ACTION".to_string(),
        "REASON".to_string(),
    ];
    let mut width = [0usize; 4];
    for r in std::iter::once(&header).chain(rows.iter()) {
        for (w, c) in width.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(&header).chain(rows.iter()) {
        for (k, c) in r.iter().enumerate() {
            if k < 4 {
                out.push_str(c);
                out.push_str(&" ".repeat(width[k] - c.chars().count() + 2));
            } else {
                out.push_str(c);
            }
        }
        while out.ends_with(' ') {
            out.pop();
        }
        out.push('\n');
    }
    let layers = plan.layers.len();
    out.push_str(&format!(
        "{} filesystem(s) to freeze{}\n",
        plan.targets.len(),
        if layers > 1 {
            format!(" in {layers} layers (loop images' filesystems last)")
        } else {
            String::new()
        }
    ));
    out
}

fn escape_text(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() || c == ' ' {
                format!("\\{:03o}", c as u32 & 0xff)
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
