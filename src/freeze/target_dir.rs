//! Opening a planned target again, and checking it is still the planned filesystem.
use rustix::fd::OwnedFd;
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use std::path::{Path, PathBuf};

/// statfs magic of btrfs.
const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;

/// Why a planned mount point cannot be used for the freeze ioctls.
#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum TargetDirError {
    #[error("cannot open {}: {errno}", .mount_point.display())]
    Open {
        mount_point: PathBuf,
        #[source]
        errno: Errno,
    },
    #[error("cannot statfs {}: {errno}", .mount_point.display())]
    Statfs {
        mount_point: PathBuf,
        #[source]
        errno: Errno,
    },
    #[error("cannot stat {}: {errno}", .mount_point.display())]
    Stat {
        mount_point: PathBuf,
        #[source]
        errno: Errno,
    },
    #[error(
        "{} no longer holds the planned btrfs (something else is mounted there)",
        .mount_point.display()
    )]
    NotThePlannedBtrfs { mount_point: PathBuf },
    #[error(
        "{} no longer holds the planned filesystem {}:{} (found {}:{})",
        .mount_point.display(), .planned.0, .planned.1, .found.0, .found.1
    )]
    NotThePlannedFilesystem {
        mount_point: PathBuf,
        planned: (u32, u32),
        found: (u32, u32),
    },
}

/// Open a mount point for the freeze ioctls and check that it still holds the planned
/// filesystem (a mount may have been stacked on top since planning). btrfs reports a
/// per-subvolume `st_dev`, so for it the filesystem type is checked instead.
pub(crate) fn open_target_dir(
    mount_point: &Path,
    major: u32,
    minor: u32,
    fstype: &str,
) -> Result<OwnedFd, TargetDirError> {
    let at = || mount_point.to_path_buf();
    let fd = rustix::fs::open(
        mount_point,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| TargetDirError::Open {
        mount_point: at(),
        errno,
    })?;
    if fstype == "btrfs" {
        let sfs = rustix::fs::fstatfs(&fd).map_err(|errno| TargetDirError::Statfs {
            mount_point: at(),
            errno,
        })?;
        // f_type's width differs between architectures.
        #[allow(clippy::unnecessary_cast)]
        if sfs.f_type as i64 != BTRFS_SUPER_MAGIC {
            return Err(TargetDirError::NotThePlannedBtrfs { mount_point: at() });
        }
    } else if fstype != "bcachefs" {
        let st = rustix::fs::fstat(&fd).map_err(|errno| TargetDirError::Stat {
            mount_point: at(),
            errno,
        })?;
        let found = (rustix::fs::major(st.st_dev), rustix::fs::minor(st.st_dev));
        if found != (major, minor) {
            return Err(TargetDirError::NotThePlannedFilesystem {
                mount_point: at(),
                planned: (major, minor),
                found,
            });
        }
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_is_its_own_variant() {
        let e = open_target_dir(Path::new("/nonexistent/quiesce"), 0, 0, "ext4").unwrap_err();
        assert_eq!(
            e,
            TargetDirError::Open {
                mount_point: "/nonexistent/quiesce".into(),
                errno: Errno::NOENT
            }
        );
        // `/` is not a btrfs here unless it is; either way the answer is typed.
        let root = rustix::fs::stat("/").unwrap();
        let (ma, mi) = (
            rustix::fs::major(root.st_dev),
            rustix::fs::minor(root.st_dev),
        );
        let e = open_target_dir(Path::new("/"), ma, mi.wrapping_add(1), "ext4").unwrap_err();
        assert_eq!(
            e,
            TargetDirError::NotThePlannedFilesystem {
                mount_point: "/".into(),
                planned: (ma, mi.wrapping_add(1)),
                found: (ma, mi),
            }
        );
        assert!(e
            .to_string()
            .contains("no longer holds the planned filesystem"));
        let proc_is_not_btrfs = open_target_dir(Path::new("/proc"), 0, 0, "btrfs").unwrap_err();
        assert_eq!(
            proc_is_not_btrfs,
            TargetDirError::NotThePlannedBtrfs {
                mount_point: "/proc".into()
            }
        );
        assert!(open_target_dir(Path::new("/"), ma, mi, "ext4").is_ok());
    }
}
