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

use super::retention::{self, Policy};
use super::{Provider, SnapshotContext, SnapshotError, SnapshotInfo};
use crate::codes::ErrorCode;
use crate::config::BtrfsConfig;
use crate::freeze::plan::Target;
use crate::report::SnapshotRef;
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
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
        let time = name::format_time(now).ok_or_else(|| {
            SnapshotError::failed("the clock is outside 1970..9999; cannot name a snapshot")
        })?;
        let prep = self.prepare(ctx.operation_id, &time, ctx.frozen)?;
        let mut made: Vec<String> = Vec::with_capacity(prep.sources.len());
        for src in &prep.sources {
            if !made.is_empty() && started.elapsed() > ctx.timeout {
                let err = SnapshotError {
                    code: ErrorCode::SnapshotTimeout,
                    message: format!(
                        "btrfs snapshots took longer than {:?}; {} not snapshotted",
                        ctx.timeout,
                        src.path.display()
                    ),
                };
                return Err(abandon(&prep.dir, &made, err));
            }
            // Nothing is logged in here: this runs inside the freeze window.
            if let Err(e) = ioctl::snapshot_readonly(src.fd.as_fd(), prep.dir.as_fd(), &src.name) {
                let err = SnapshotError::failed(create_error(
                    e,
                    &src.path,
                    &self.cfg.directory,
                    &src.name,
                ));
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
            Err(SnapshotError::failed(format!(
                "retention could not remove {} snapshot(s) in {} ({}); removed {:?}",
                failures.len(),
                self.cfg.directory.display(),
                failures.join("; "),
                removed
            )))
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
            return Err(SnapshotError::failed(
                "btrfs provider: no subvolumes configured",
            ));
        }
        let mut names: Vec<String> = Vec::with_capacity(subvolumes.len());
        for (i, path) in subvolumes.iter().enumerate() {
            if subvolumes[..i].contains(path) {
                return Err(SnapshotError::failed(format!(
                    "subvolume {} is listed twice",
                    path.display()
                )));
            }
            let name = name::compose(&label(path), time, operation_id).map_err(|e| {
                SnapshotError::failed(format!(
                    "cannot name the snapshot of {}: {e}",
                    path.display()
                ))
            })?;
            if let Some(j) = names.iter().position(|n| *n == name) {
                return Err(SnapshotError::failed(format!(
                    "subvolumes {} and {} would get the same snapshot name {name} in {} (same \
                     base name); use a separate directory for one of them",
                    subvolumes[j].display(),
                    path.display(),
                    self.cfg.directory.display()
                )));
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
            return Err(SnapshotError::failed(format!(
                "subvolume {} is on another btrfs than the snapshot directory {}; a btrfs \
                 snapshot can only be created on the filesystem of its subvolume",
                path.display(),
                self.cfg.directory.display()
            )));
        }
        Ok(fd)
    }

    /// Our snapshots in the directory: parseable names that are subvolume roots.
    fn scan(&self) -> Result<Vec<Found>, SnapshotError> {
        let dir = &self.cfg.directory;
        let entries = std::fs::read_dir(dir).map_err(|e| {
            SnapshotError::failed(format!(
                "cannot read snapshot directory {}: {e}",
                dir.display()
            ))
        })?;
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| {
                SnapshotError::failed(format!(
                    "cannot read snapshot directory {}: {e}",
                    dir.display()
                ))
            })?;
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
            })
            .collect())
    }

    fn prune(&self, just_made: &[SnapshotRef]) -> Result<Vec<String>, SnapshotError> {
        self.prune_at(SystemTime::now(), just_made)
    }
}

/// Make `dest_dir/name`, a writable snapshot of the subvolume (or snapshot) at `source`.
pub fn create_writable_snapshot(source: &Path, dest_dir: &Path, name: &str) -> Result<(), String> {
    let src = open_dir(source, "snapshot").map_err(|e| e.message)?;
    let dir = open_dir(dest_dir, "directory").map_err(|e| e.message)?;
    ioctl::snapshot_writable(src.as_fd(), dir.as_fd(), name)
        .map_err(|e| create_error(e, source, dest_dir, name))
}

/// Delete the subvolume `dir/name` (`BTRFS_IOC_SNAP_DESTROY`).
pub fn delete_subvolume(dir: &Path, name: &str) -> Result<(), String> {
    let fd = open_dir(dir, "directory").map_err(|e| e.message)?;
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

/// An errno as text, e.g. "Read-only file system (os error 30)".
fn errno_text(e: Errno) -> String {
    std::io::Error::from(e).to_string()
}

/// Open a directory for ioctls (read-only is enough for snapshot create and destroy).
fn open_dir(path: &Path, what: &str) -> Result<OwnedFd, SnapshotError> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    rustix::fs::open(path, flags, Mode::empty()).map_err(|e| {
        let why = match e {
            Errno::NOENT => "does not exist".to_string(),
            Errno::NOTDIR => "is not a directory".to_string(),
            other => format!("cannot be opened: {}", errno_text(other)),
        };
        SnapshotError::failed(format!("{what} {} {why}", path.display()))
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
fn require_btrfs(fd: &OwnedFd, path: &Path, what: &str) -> Result<(), SnapshotError> {
    let st = rustix::fs::fstatfs(fd).map_err(|e| {
        SnapshotError::failed(format!(
            "cannot statfs {what} {}: {}",
            path.display(),
            errno_text(e)
        ))
    })?;
    // f_type's width differs between architectures; the magic is 32 bits.
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as u32;
    if magic == linux_raw_sys::general::BTRFS_SUPER_MAGIC {
        Ok(())
    } else {
        Err(SnapshotError::failed(format!(
            "{what} {} is not on btrfs (it is on {}); the btrfs provider needs btrfs subvolumes \
             and a snapshot directory on the same btrfs",
            path.display(),
            fs_name(magic)
        )))
    }
}

/// Fail unless `fd` is a subvolume root (inode 256 on btrfs).
fn require_subvolume_root(fd: &OwnedFd, path: &Path) -> Result<(), SnapshotError> {
    let st = rustix::fs::fstat(fd).map_err(|e| {
        SnapshotError::failed(format!(
            "cannot stat subvolume {}: {}",
            path.display(),
            errno_text(e)
        ))
    })?;
    #[allow(clippy::unnecessary_cast)]
    let ino = st.st_ino as u64;
    if ino == SUBVOLUME_ROOT_INO {
        Ok(())
    } else {
        Err(SnapshotError::failed(format!(
            "{} is not a btrfs subvolume (inode {ino}, a subvolume root is inode \
             {SUBVOLUME_ROOT_INO}); only whole subvolumes can be snapshotted: make it one with \
             `btrfs subvolume create`, or configure the subvolume that contains it",
            path.display()
        )))
    }
}

/// The btrfs filesystem UUID of `fd`.
fn fsid_of(fd: &OwnedFd, path: &Path) -> Result<[u8; 16], SnapshotError> {
    ioctl::fsid(fd.as_fd()).map_err(|e| {
        SnapshotError::failed(format!(
            "cannot read the btrfs filesystem id of {}: {}",
            path.display(),
            errno_text(e)
        ))
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
            return Err(SnapshotError::failed(format!(
                "the btrfs holding {} is frozen (mounted at {}); a snapshot of a frozen btrfs \
                 blocks until it is thawed, so none was attempted: exclude it from freezing",
                dir.display(),
                t.mount_point.display()
            )));
        }
    }
    Ok(())
}

/// Explain a failed snapshot ioctl.
fn create_error(e: Errno, src: &Path, dir: &Path, name: &str) -> String {
    let why = match e {
        Errno::EXIST => format!("{} already exists", dir.join(name).display()),
        Errno::PERM | Errno::ACCESS => {
            "permission denied (creating btrfs snapshots needs root or write access to the \
             directory)"
                .into()
        }
        Errno::ROFS => format!("{} is on a read-only mount", dir.display()),
        Errno::XDEV => "the subvolume and the directory are on different btrfs filesystems".into(),
        Errno::NOSPC => "the btrfs is out of space".into(),
        other => errno_text(other),
    };
    format!(
        "btrfs snapshot of {} as {} failed: {why}",
        src.display(),
        dir.join(name).display()
    )
}

/// After a failed `take`: remove the snapshots this run already made, so a failed run leaves
/// nothing behind, and say so in the error.
fn abandon(dir: &OwnedFd, made: &[String], mut err: SnapshotError) -> SnapshotError {
    if made.is_empty() {
        return err;
    }
    let mut left = Vec::new();
    for name in made {
        if let Err(e) = ioctl::destroy(dir.as_fd(), name) {
            left.push(format!("{name} ({})", errno_text(e)));
        }
    }
    if left.is_empty() {
        err.message.push_str(&format!(
            "; removed the {} snapshot(s) this run had made",
            made.len()
        ));
    } else {
        err.message.push_str(&format!(
            "; could not remove the snapshot(s) this run had made: {}",
            left.join(", ")
        ));
    }
    err
}
