//! The btrfs ioctls the provider needs, one small function each.
//!
//! Why ioctls and not `btrfs-progs`: the snapshot is taken while other filesystems are
//! frozen, so it must be quick and must not depend on a program (or its libraries) being
//! present, trusted and loadable from a filesystem that may be frozen right now.
//!
//! The argument structs are built in safe code (zero-filled, the name copied in); the only
//! `unsafe` is the ioctl call itself, whose contract is that the opcode matches the struct.

use linux_raw_sys::btrfs::{
    btrfs_ioctl_fs_info_args, btrfs_ioctl_vol_args, btrfs_ioctl_vol_args_v2,
    btrfs_ioctl_vol_args_v2__bindgen_ty_1, btrfs_ioctl_vol_args_v2__bindgen_ty_2,
    BTRFS_SUBVOL_RDONLY,
};
use linux_raw_sys::ioctl::{BTRFS_IOC_FS_INFO, BTRFS_IOC_SNAP_CREATE_V2, BTRFS_IOC_SNAP_DESTROY};
use rustix::fd::{AsRawFd, BorrowedFd};
use rustix::io::Errno;
use rustix::ioctl::{ioctl, Opcode, Setter, Updater};

/// Copy `name` into a kernel name buffer, NUL-terminated. Rejects names the kernel would
/// reject anyway (empty, with `/` or NUL, too long) so the error is ours and clear.
fn fill_name(dst: &mut [core::ffi::c_char], name: &str) -> Result<(), Errno> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.contains(&b'/') || bytes.contains(&0) {
        return Err(Errno::INVAL);
    }
    if bytes.len() >= dst.len() {
        return Err(Errno::NAMETOOLONG);
    }
    for (d, b) in dst.iter_mut().zip(bytes) {
        *d = *b as core::ffi::c_char;
    }
    dst[bytes.len()] = 0;
    Ok(())
}

/// Create a read-only snapshot of the subvolume open as `source`, named `name`, inside the
/// directory open as `dest_dir` (`BTRFS_IOC_SNAP_CREATE_V2` with `BTRFS_SUBVOL_RDONLY`).
/// The kernel makes it atomically: it is the subvolume as of one transaction commit.
pub fn snapshot_readonly(
    source: BorrowedFd<'_>,
    dest_dir: BorrowedFd<'_>,
    name: &str,
) -> Result<(), Errno> {
    snapshot(source, dest_dir, name, true)
}

/// A writable snapshot (the same ioctl without `BTRFS_SUBVOL_RDONLY`): the disposable view
/// `quiesce verify` starts a throwaway server on, sharing every extent with the snapshot.
pub fn snapshot_writable(
    source: BorrowedFd<'_>,
    dest_dir: BorrowedFd<'_>,
    name: &str,
) -> Result<(), Errno> {
    snapshot(source, dest_dir, name, false)
}

fn snapshot(
    source: BorrowedFd<'_>,
    dest_dir: BorrowedFd<'_>,
    name: &str,
    readonly: bool,
) -> Result<(), Errno> {
    let mut name_buf = [0; 4040];
    fill_name(&mut name_buf, name)?;
    let args = btrfs_ioctl_vol_args_v2 {
        fd: i64::from(source.as_raw_fd()),
        transid: 0,
        flags: if readonly {
            u64::from(BTRFS_SUBVOL_RDONLY)
        } else {
            0
        },
        __bindgen_anon_1: btrfs_ioctl_vol_args_v2__bindgen_ty_1 { unused: [0; 4] },
        __bindgen_anon_2: btrfs_ioctl_vol_args_v2__bindgen_ty_2 { name: name_buf },
    };
    // SAFETY: BTRFS_IOC_SNAP_CREATE_V2 is `_IOW(0x94, 23, struct btrfs_ioctl_vol_args_v2)`:
    // the kernel only reads a `btrfs_ioctl_vol_args_v2`, which is exactly `Input`; `fd` is a
    // descriptor borrowed for the duration of the call; no qgroup_inherit pointer is passed
    // (size 0, flags without BTRFS_SUBVOL_QGROUP_INHERIT).
    unsafe {
        ioctl(
            dest_dir,
            Setter::<{ BTRFS_IOC_SNAP_CREATE_V2 as Opcode }, btrfs_ioctl_vol_args_v2>::new(args),
        )
    }
}

/// Delete the subvolume (snapshot) `name` directly inside the directory open as `parent`
/// (`BTRFS_IOC_SNAP_DESTROY`). The v1 ioctl is used on purpose: it exists on every kernel
/// with btrfs (v2 needs 5.7, later than some enterprise kernels that ship btrfs) and, by
/// name, does the same thing.
pub fn destroy(parent: BorrowedFd<'_>, name: &str) -> Result<(), Errno> {
    let mut args = btrfs_ioctl_vol_args {
        fd: 0,
        name: [0; 4088],
    };
    fill_name(&mut args.name, name)?;
    // SAFETY: BTRFS_IOC_SNAP_DESTROY is `_IOW(0x94, 15, struct btrfs_ioctl_vol_args)`: the
    // kernel only reads a `btrfs_ioctl_vol_args`, which is exactly `Input`.
    unsafe {
        ioctl(
            parent,
            Setter::<{ BTRFS_IOC_SNAP_DESTROY as Opcode }, btrfs_ioctl_vol_args>::new(args),
        )
    }
}

/// The filesystem UUID of the btrfs holding `fd` (`BTRFS_IOC_FS_INFO`, unprivileged).
/// Needed because `st_dev` and `statfs.f_fsid` differ per subvolume on btrfs, so they
/// cannot tell whether two paths are on the same btrfs.
pub fn fsid(fd: BorrowedFd<'_>) -> Result<[u8; 16], Errno> {
    let mut args = btrfs_ioctl_fs_info_args {
        max_id: 0,
        num_devices: 0,
        fsid: [0; 16],
        nodesize: 0,
        sectorsize: 0,
        clone_alignment: 0,
        csum_type: 0,
        csum_size: 0,
        flags: 0,
        generation: 0,
        metadata_uuid: [0; 16],
        reserved: [0; 944],
    };
    // SAFETY: BTRFS_IOC_FS_INFO is `_IOR(0x94, 31, struct btrfs_ioctl_fs_info_args)`: the
    // kernel reads `flags` (0: no optional fields) and writes back a whole
    // `btrfs_ioctl_fs_info_args`, which is exactly `Value` and lives for the call.
    unsafe {
        ioctl(
            fd,
            Updater::<{ BTRFS_IOC_FS_INFO as Opcode }, btrfs_ioctl_fs_info_args>::new(&mut args),
        )?;
    }
    Ok(args.fsid)
}
