//! The `btrfs` provider: read-only subvolume snapshots through the kernel ioctl, with
//! retention.
//!
//! # What a run makes
//! One read-only snapshot per configured subvolume, created with
//! `BTRFS_IOC_SNAP_CREATE_V2` + `BTRFS_SUBVOL_RDONLY` (no `btrfs-progs` at run time) in the
//! configured directory, named `<subvolume base name>@<UTC YYYYMMDDTHHMMSSZ>@<operation id>`
//! (see [`parse_name`]). All snapshots of one run carry the same time: the time `take`
//! started. The run is recovered from the operation id.
//!
//! **Snapshot id** ([`SnapshotRef::id`], [`SnapshotInfo::id`]): the snapshot's *name*. It
//! is unique within the snapshot directory, short and readable in reports; the full path is
//! `directory/id`, given as [`SnapshotInfo::location`] and by [`BtrfsProvider::snapshot_path`].
//!
//! # Consistency across several subvolumes
//! Each snapshot is atomic for its subvolume: it is the subvolume as of one btrfs transaction
//! commit, so on its own it is at least crash-consistent. Several subvolumes are snapshotted
//! one after another (milliseconds apart), so together they are **not** one point in time.
//! They are application-consistent as a set only when the application was quiesced by the
//! pre hooks for the whole `take` (the pipeline's consistency level says whether it was);
//! without hooks, each snapshot is crash-consistent on its own and the set may mix moments.
//! Freezing does not help here: the snapshotted btrfs must not be frozen (a snapshot of a
//! frozen btrfs blocks until thaw), which is why [`Provider::must_not_freeze`] lists the
//! subvolumes and the directory, and `take` refuses to start if that btrfs is in the frozen
//! set it is given.
//!
//! # What is checked before anything is made
//! The directory and every subvolume must exist, be on btrfs (statfs magic
//! `BTRFS_SUPER_MAGIC`), every subvolume must be a subvolume root (inode 256), all must be
//! on the same btrfs (filesystem UUID), and the names must be distinct (two subvolumes with
//! the same base name cannot share a directory). [`Provider::check`] runs these checks for
//! `quiesce check` and reports every problem. If creating the n-th snapshot fails, the ones
//! this run already made are removed again, so a failed `take` leaves nothing behind.
//!
//! # Retention
//! [`Provider::prune`] applies `keep_last` / `max_age` per run (see
//! [`super::retention`]), never removing a snapshot of the current run, and deletes with
//! `BTRFS_IOC_SNAP_DESTROY` on the snapshot directory. Entries of the directory that do not
//! parse as our names, or are not subvolumes, are ignored by [`Provider::list`] and never
//! removed.

mod ioctl;
mod name;

pub use name::ParsedName;

use super::error::errno_text;
use super::retention::{self, Policy};
use super::{Provider, SnapshotContext, SnapshotError, SnapshotInfo};
use crate::config::BtrfsConfig;
use crate::freeze::plan::Target;
use crate::report::SnapshotRef;
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{Mode, OFlags};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Inode number of every btrfs subvolume root (`BTRFS_FIRST_FREE_OBJECTID`).
const SUBVOLUME_ROOT_INO: u64 = linux_raw_sys::btrfs::BTRFS_FIRST_FREE_OBJECTID as u64;

/// Parse a snapshot name made by this provider; `None` for foreign names.
pub fn parse_name(name: &str) -> Option<ParsedName> {
    name::parse(name)
}

/// Takes, lists and prunes read-only btrfs snapshots of the configured subvolumes.
pub struct BtrfsProvider {
    cfg: BtrfsConfig,
}

/// A subvolume opened and checked, with the name its snapshot will get.
struct Source {
    path: PathBuf,
    fd: OwnedFd,
    name: String,
}

/// Everything `take` needs, opened and checked before the first snapshot is made.
struct Prepared {
    dir: OwnedFd,
    sources: Vec<Source>,
}

/// A snapshot found in the directory.
struct Found {
    name: String,
    parsed: ParsedName,
}

impl BtrfsProvider {
    pub fn new(cfg: BtrfsConfig) -> Self {
        BtrfsProvider { cfg }
    }

    pub fn config(&self) -> &BtrfsConfig {
        &self.cfg
    }

    /// Where the snapshot with this id lives.
    pub fn snapshot_path(&self, id: &str) -> PathBuf {
        self.cfg.directory.join(id)
    }

    /// [`Provider::take`] with the run's time given (tests inject it; `take` uses now).
    pub fn take_at(
        &mut self,
        ctx: &SnapshotContext<'_>,
        now: SystemTime,
    ) -> Result<Vec<SnapshotRef>, SnapshotError> {
        let started = Instant::now();
        let time = name::format_time(now).ok_or(SnapshotError::ClockOutOfRange)?;
        let prep = self.prepare(ctx.operation_id, &time, ctx.frozen)?;
        let mut made: Vec<String> = Vec::with_capacity(prep.sources.len());
        for src in &prep.sources {
            if !made.is_empty() && started.elapsed() > ctx.timeout {
                let err = SnapshotError::TookTooLong {
                    timeout: ctx.timeout,
                    next: src.path.clone(),
                };
                return Err(abandon(&prep.dir, &made, err));
            }
            // Nothing is logged in here: this runs inside the freeze window.
            if let Err(e) = ioctl::snapshot_readonly(src.fd.as_fd(), prep.dir.as_fd(), &src.name) {
                let err = SnapshotError::Create {
                    subvolume: src.path.clone(),
                    snapshot: self.cfg.directory.join(&src.name),
                    errno: e,
                };
                return Err(abandon(&prep.dir, &made, err));
            }
            made.push(src.name.clone());
        }
        Ok(made
            .into_iter()
            .map(|id| SnapshotRef {
                provider: "btrfs".into(),
                id,
            })
            .collect())
    }

    /// [`Provider::prune`] at a given time (tests inject it; `prune` uses now).
    pub fn prune_at(
        &self,
        now: SystemTime,
        just_made: &[SnapshotRef],
    ) -> Result<Vec<String>, SnapshotError> {
        let policy = Policy {
            keep_last: self.cfg.keep_last,
            max_age: self.cfg.max_age,
        };
        if !policy.is_active() {
            return Ok(Vec::new());
        }
        let items: Vec<retention::Item> = self
            .scan()?
            .into_iter()
            .map(|f| retention::Item {
                id: f.name,
                operation_id: f.parsed.operation_id,
                created_unix: f.parsed.created_unix,
            })
            .collect();
        let protected: Vec<&str> = just_made
            .iter()
            .filter(|r| r.provider == "btrfs")
            .map(|r| r.id.as_str())
            .collect();
        let removals = retention::select(&items, &policy, unix_secs(now), &protected);
        if removals.is_empty() {
            return Ok(Vec::new());
        }
        let dir = open_dir(&self.cfg.directory, "snapshot directory")?;
        let mut removed = Vec::new();
        let mut failures = Vec::new();
        for r in removals {
            match ioctl::destroy(dir.as_fd(), &r.id) {
                Ok(()) => {
                    tracing::info!(
                        snapshot = %r.id,
                        keep_last = r.reasons.keep_last,
                        max_age = r.reasons.max_age,
                        "btrfs snapshot removed by retention"
                    );
                    removed.push(r.id);
                }
                Err(e) => failures.push(format!("{}: {}", r.id, errno_text(e))),
            }
        }
        if failures.is_empty() {
            Ok(removed)
        } else {
            Err(SnapshotError::Retention {
                directory: self.cfg.directory.clone(),
                failures,
                removed,
            })
        }
    }

    /// Open and check everything, compute the names; make nothing. Stops at the first
    /// problem (the run fails anyway); [`Provider::check`] reports them all.
    fn prepare(
        &self,
        operation_id: &str,
        time: &str,
        frozen: &[Target],
    ) -> Result<Prepared, SnapshotError> {
        let names = self.names(operation_id, time)?;
        let (dir, dir_fsid) = self.open_directory()?;
        refuse_if_frozen(dir_fsid, &self.cfg.directory, frozen)?;
        let mut sources = Vec::with_capacity(names.len());
        for (path, name) in self.cfg.subvolumes.iter().zip(names) {
            let fd = self.open_subvolume(path, Some(dir_fsid))?;
            sources.push(Source {
                path: path.clone(),
                fd,
                name,
            });
        }
        Ok(Prepared { dir, sources })
    }

    /// The snapshot names of one run, in subvolume order; fails if there are no subvolumes,
    /// one is listed twice, or two would get the same name.
    fn names(&self, operation_id: &str, time: &str) -> Result<Vec<String>, SnapshotError> {
        let subvolumes = &self.cfg.subvolumes;
        if subvolumes.is_empty() {
            return Err(SnapshotError::NoSubvolumes);
        }
        let mut names: Vec<String> = Vec::with_capacity(subvolumes.len());
        for (i, path) in subvolumes.iter().enumerate() {
            if subvolumes[..i].contains(path) {
                return Err(SnapshotError::ListedTwice { path: path.clone() });
            }
            let name = name::compose(&label(path), time, operation_id).map_err(|reason| {
                SnapshotError::Unnameable {
                    path: path.clone(),
                    reason,
                }
            })?;
            if let Some(j) = names.iter().position(|n| *n == name) {
                return Err(SnapshotError::SameName {
                    first: subvolumes[j].clone(),
                    second: path.clone(),
                    name,
                    directory: self.cfg.directory.clone(),
                });
            }
            names.push(name);
        }
        Ok(names)
    }

    /// Open the snapshot directory and check it is on btrfs; returns it and its fs UUID.
    fn open_directory(&self) -> Result<(OwnedFd, [u8; 16]), SnapshotError> {
        let path = &self.cfg.directory;
        let dir = open_dir(path, "snapshot directory")?;
        require_btrfs(&dir, path, "snapshot directory")?;
        let fsid = fsid_of(&dir, path)?;
        Ok((dir, fsid))
    }

    /// Open a subvolume and check it is a subvolume root on the directory's btrfs (when the
    /// directory's fs UUID is known).
    fn open_subvolume(
        &self,
        path: &Path,
        dir_fsid: Option<[u8; 16]>,
    ) -> Result<OwnedFd, SnapshotError> {
        let fd = open_dir(path, "subvolume")?;
        require_btrfs(&fd, path, "subvolume")?;
        require_subvolume_root(&fd, path)?;
        let Some(dir_fsid) = dir_fsid else {
            return Ok(fd);
        };
        if fsid_of(&fd, path)? != dir_fsid {
            return Err(SnapshotError::OtherFilesystem {
                subvolume: path.to_path_buf(),
                directory: self.cfg.directory.clone(),
            });
        }
        Ok(fd)
    }

    /// Our snapshots in the directory: parseable names that are subvolume roots.
    fn scan(&self) -> Result<Vec<Found>, SnapshotError> {
        let dir = &self.cfg.directory;
        let unreadable = |source| SnapshotError::ReadDirectory {
            directory: dir.clone(),
            source,
        };
        let entries = std::fs::read_dir(dir).map_err(unreadable)?;
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(unreadable)?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Some(parsed) = name::parse(&name) else {
                continue;
            };
            // DirEntry::metadata does not follow symlinks: a symlink is never ours.
            let is_subvolume = entry
                .metadata()
                .is_ok_and(|m| m.is_dir() && m.ino() == SUBVOLUME_ROOT_INO);
            if is_subvolume {
                found.push(Found { name, parsed });
            }
        }
        found.sort_by(|a, b| {
            (a.parsed.created_unix, &a.parsed.operation_id, &a.name).cmp(&(
                b.parsed.created_unix,
                &b.parsed.operation_id,
                &b.name,
            ))
        });
        Ok(found)
    }
}

impl Provider for BtrfsProvider {
    fn name(&self) -> &'static str {
        "btrfs"
    }

    fn must_not_freeze(&self) -> Vec<PathBuf> {
        let mut v = self.cfg.subvolumes.clone();
        v.push(self.cfg.directory.clone());
        v
    }

    /// Every problem `take` would stop at (paths, btrfs, subvolume roots, one filesystem,
    /// distinct names), without making anything.
    fn check(&self) -> Vec<SnapshotError> {
        let mut problems = Vec::new();
        let time = name::format_time(SystemTime::now()).unwrap_or_default();
        if let Err(e) = self.names("check", &time) {
            problems.push(e);
        }
        let dir_fsid = match self.open_directory() {
            Ok((_, fsid)) => Some(fsid),
            Err(e) => {
                problems.push(e);
                None
            }
        };
        for path in &self.cfg.subvolumes {
            if let Err(e) = self.open_subvolume(path, dir_fsid) {
                problems.push(e);
            }
        }
        problems
    }

    fn take(&mut self, ctx: &SnapshotContext<'_>) -> Result<Vec<SnapshotRef>, SnapshotError> {
        self.take_at(ctx, SystemTime::now())
    }

    /// Oldest first. `consistency` is left `None`: the catalog knows it.
    fn list(&self) -> Result<Vec<SnapshotInfo>, SnapshotError> {
        Ok(self
            .scan()?
            .into_iter()
            .map(|f| SnapshotInfo {
                provider: "btrfs".into(),
                location: Some(self.snapshot_path(&f.name)),
                id: f.name,
                created_unix: Some(f.parsed.created_unix),
                operation_id: Some(f.parsed.operation_id),
                consistency: None,
                verification: None,
                from_catalog: false,
            })
            .collect())
    }

    fn can_list(&self) -> bool {
        true
    }

    fn prune(&self, just_made: &[SnapshotRef]) -> Result<Vec<String>, SnapshotError> {
        self.prune_at(SystemTime::now(), just_made)
    }
}

/// Make `dest_dir/name`, a writable snapshot of the subvolume (or snapshot) at `source`.
pub fn create_writable_snapshot(source: &Path, dest_dir: &Path, name: &str) -> Result<(), String> {
    let src = open_dir(source, "snapshot").map_err(|e| e.to_string())?;
    let dir = open_dir(dest_dir, "directory").map_err(|e| e.to_string())?;
    ioctl::snapshot_writable(src.as_fd(), dir.as_fd(), name).map_err(|errno| {
        SnapshotError::Create {
            subvolume: source.to_path_buf(),
            snapshot: dest_dir.join(name),
            errno,
        }
        .to_string()
    })
}

/// Delete the subvolume `dir/name` (`BTRFS_IOC_SNAP_DESTROY`).
pub fn delete_subvolume(dir: &Path, name: &str) -> Result<(), String> {
    let fd = open_dir(dir, "directory").map_err(|e| e.to_string())?;
    ioctl::destroy(fd.as_fd(), name).map_err(|e| {
        format!(
            "cannot delete subvolume {}: {}",
            dir.join(name).display(),
            errno_text(e)
        )
    })
}

/// The label of a subvolume in snapshot names: its base name (`root` for `/`).
pub fn label(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "root".into())
}

/// Seconds since the epoch, negative before it.
fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// Open a directory for ioctls (read-only is enough for snapshot create and destroy).
fn open_dir(path: &Path, what: &'static str) -> Result<OwnedFd, SnapshotError> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    rustix::fs::open(path, flags, Mode::empty()).map_err(|errno| SnapshotError::Open {
        what,
        path: path.to_path_buf(),
        errno,
    })
}

/// A name for a statfs magic, for error messages.
fn fs_name(magic: u32) -> String {
    use linux_raw_sys::general as g;
    match magic {
        g::EXT4_SUPER_MAGIC => "ext2/3/4".into(),
        g::XFS_SUPER_MAGIC => "xfs".into(),
        g::TMPFS_MAGIC => "tmpfs".into(),
        g::OVERLAYFS_SUPER_MAGIC => "overlayfs".into(),
        g::NFS_SUPER_MAGIC => "nfs".into(),
        g::SQUASHFS_MAGIC => "squashfs".into(),
        other => format!("filesystem magic {other:#x}"),
    }
}

/// Fail unless `fd` is on btrfs (statfs magic `BTRFS_SUPER_MAGIC`).
fn require_btrfs(fd: &OwnedFd, path: &Path, what: &'static str) -> Result<(), SnapshotError> {
    let st = rustix::fs::fstatfs(fd).map_err(|errno| SnapshotError::Statfs {
        what,
        path: path.to_path_buf(),
        errno,
    })?;
    // f_type's width differs between architectures; the magic is 32 bits.
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as u32;
    if magic == linux_raw_sys::general::BTRFS_SUPER_MAGIC {
        Ok(())
    } else {
        Err(SnapshotError::NotBtrfs {
            what,
            path: path.to_path_buf(),
            found: fs_name(magic),
        })
    }
}

/// Fail unless `fd` is a subvolume root (inode 256 on btrfs).
fn require_subvolume_root(fd: &OwnedFd, path: &Path) -> Result<(), SnapshotError> {
    let st = rustix::fs::fstat(fd).map_err(|errno| SnapshotError::Stat {
        path: path.to_path_buf(),
        errno,
    })?;
    #[allow(clippy::unnecessary_cast)]
    let ino = st.st_ino as u64;
    if ino == SUBVOLUME_ROOT_INO {
        Ok(())
    } else {
        Err(SnapshotError::NotSubvolume {
            path: path.to_path_buf(),
            inode: ino,
            root: SUBVOLUME_ROOT_INO,
        })
    }
}

/// The btrfs filesystem UUID of `fd`.
fn fsid_of(fd: &OwnedFd, path: &Path) -> Result<[u8; 16], SnapshotError> {
    ioctl::fsid(fd.as_fd()).map_err(|errno| SnapshotError::FilesystemId {
        path: path.to_path_buf(),
        errno,
    })
}

/// Fail if the btrfs with `fsid` is in the frozen set: a snapshot of it would block
/// (uninterruptibly) until the thaw, i.e. until the freeze guard's deadline.
fn refuse_if_frozen(fsid: [u8; 16], dir: &Path, frozen: &[Target]) -> Result<(), SnapshotError> {
    for t in frozen.iter().filter(|t| t.fstype == "btrfs") {
        // Opening and FS_INFO never write, so they are harmless on a frozen filesystem.
        let same = open_dir(&t.mount_point, "frozen mount")
            .ok()
            .and_then(|fd| ioctl::fsid(fd.as_fd()).ok())
            .is_some_and(|f| f == fsid);
        if same {
            return Err(SnapshotError::DirectoryFrozen {
                directory: dir.to_path_buf(),
                mount_point: t.mount_point.clone(),
            });
        }
    }
    Ok(())
}

/// After a failed `take`: remove the snapshots this run already made, so a failed run leaves
/// nothing behind, and say so in the error.
fn abandon(dir: &OwnedFd, made: &[String], err: SnapshotError) -> SnapshotError {
    if made.is_empty() {
        return err;
    }
    let left = made
        .iter()
        .filter_map(|name| {
            let e = ioctl::destroy(dir.as_fd(), name).err()?;
            Some(format!("{name} ({})", errno_text(e)))
        })
        .collect();
    SnapshotError::Abandoned {
        cause: Box::new(err),
        made: made.len(),
        left,
    }
}
