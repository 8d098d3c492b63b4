//! The three syscalls the engine is built on: `syncfs`, `FIFREEZE`, `FITHAW`.
//!
//! Each acts on the whole filesystem (superblock) holding the open descriptor, whichever
//! directory or file of it the descriptor names.
//!
//! Why `syncfs` comes first: `FIFREEZE` itself writes back every dirty page before it
//! reports the filesystem frozen, and writers are already blocked while it does. With
//! hundreds of megabytes of dirty data that flush takes a second or more, all of it
//! inside the frozen window. Calling `syncfs` just before, while the application still
//! runs, does that flush outside the window, so `FIFREEZE` only has the last few
//! milliseconds of writes left and the window stays short.
use crate::codes::{ErrorCode, Problem};
use rustix::fd::AsFd;
use rustix::io::Errno;
use rustix::ioctl::{opcode, Ioctl, IoctlOutput, Opcode};
use std::path::Path;

/// `_IOWR('X', 119, int)`.
pub const FIFREEZE: Opcode = opcode::read_write::<rustix::ffi::c_int>(b'X', 119);
/// `_IOWR('X', 120, int)`.
pub const FITHAW: Opcode = opcode::read_write::<rustix::ffi::c_int>(b'X', 120);

// The numbers must match the kernel's headers (nix's `ioctl_write_int!` gets them wrong).
const _: () = assert!(FIFREEZE as u64 == linux_raw_sys::ioctl::FIFREEZE as u64);
const _: () = assert!(FITHAW as u64 == linux_raw_sys::ioctl::FITHAW as u64);

/// An ioctl whose argument the kernel ignores (`FIFREEZE`/`FITHAW` take none in practice;
/// the kernel never reads or writes through the argument).
struct NoPointer<const OPCODE: Opcode>;

// SAFETY: the opcode is one of FIFREEZE/FITHAW, which the kernel handles in
// `do_vfs_ioctl` without dereferencing the argument; we pass a null pointer and read no
// output, so no memory is shared with the kernel.
unsafe impl<const OPCODE: Opcode> Ioctl for NoPointer<OPCODE> {
    type Output = ();
    const IS_MUTATING: bool = false;
    fn opcode(&self) -> Opcode {
        OPCODE
    }
    fn as_ptr(&mut self) -> *mut core::ffi::c_void {
        core::ptr::null_mut()
    }
    unsafe fn output_from_ptr(_: IoctlOutput, _: *mut core::ffi::c_void) -> rustix::io::Result<()> {
        Ok(())
    }
}

/// Freeze the filesystem holding `fd`. Blocks while the kernel writes back what is dirty
/// (call [`syncfs`] first). May block uninterruptibly.
pub fn fifreeze<Fd: AsFd>(fd: Fd) -> Result<(), Errno> {
    // SAFETY: FIFREEZE takes no argument the kernel reads or writes (see `NoPointer`);
    // `fd` is a valid open descriptor borrowed for the call.
    unsafe { rustix::ioctl::ioctl(fd, NoPointer::<FIFREEZE>) }
}

/// Thaw the filesystem holding `fd`. `EINVAL` means it was not frozen.
pub fn fithaw<Fd: AsFd>(fd: Fd) -> Result<(), Errno> {
    // SAFETY: as for `fifreeze`: no memory is passed to the kernel.
    unsafe { rustix::ioctl::ioctl(fd, NoPointer::<FITHAW>) }
}

/// Flush the filesystem holding `fd` to disk.
///
/// Called right before every `FIFREEZE`: the freeze would write back all dirty data
/// itself, but with writers already blocked, so a large flush would happen inside the
/// frozen window. Flushing first, while the applications still run, keeps the window
/// down to the last moment's writes (measured here: seconds down to tens of ms).
pub fn syncfs<Fd: AsFd>(fd: Fd) -> Result<(), Errno> {
    rustix::fs::syncfs(fd)
}

/// The result of thawing one filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Thawed {
    /// It was frozen and is thawed now.
    Thawed,
    /// It was not frozen (`EINVAL`): somebody else thawed it, or it was never frozen.
    WasNotFrozen,
}

/// Thaw, treating `EINVAL` (not frozen) as a normal outcome.
pub fn thaw<Fd: AsFd>(fd: Fd) -> Result<Thawed, Errno> {
    match fithaw(fd) {
        Ok(()) => Ok(Thawed::Thawed),
        Err(Errno::INVAL) => Ok(Thawed::WasNotFrozen),
        Err(e) => Err(e),
    }
}

/// The error code for a failed `FIFREEZE`.
pub fn freeze_error_code(e: Errno) -> ErrorCode {
    match e {
        Errno::BUSY => ErrorCode::FilesystemAlreadyFrozen,
        Errno::OPNOTSUPP => ErrorCode::FreezeNotSupported,
        Errno::PERM | Errno::ACCESS => ErrorCode::FreezePermissionDenied,
        _ => ErrorCode::FreezeFailed,
    }
}

/// A Problem describing a failed `FIFREEZE` of `mount_point`.
pub fn freeze_problem(mount_point: &Path, e: Errno) -> Problem {
    let code = freeze_error_code(e);
    let why = match code {
        ErrorCode::FilesystemAlreadyFrozen => {
            "it is already frozen by someone else (EBUSY); quiesce leaves it as it is"
        }
        ErrorCode::FreezeNotSupported => "the filesystem does not support freezing (EOPNOTSUPP)",
        ErrorCode::FreezePermissionDenied => "permission denied (quiesce must run as root)",
        _ => "FIFREEZE failed",
    };
    Problem::new(
        code,
        format!("cannot freeze {}: {why}: {e}", mount_point.display()),
    )
}

/// A Problem describing a failed `FITHAW` of `mount_point`.
pub fn thaw_problem(mount_point: &Path, e: Errno) -> Problem {
    Problem::new(
        ErrorCode::ThawFailed,
        format!(
            "cannot thaw {}: {e}; it may still be frozen (run `quiesce recover` or `fsfreeze -u`)",
            mount_point.display()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcodes_match_the_kernel() {
        assert_eq!(FIFREEZE as u64, 0xC004_5877);
        assert_eq!(FITHAW as u64, 0xC004_5878);
    }

    #[test]
    fn error_mapping() {
        assert_eq!(
            freeze_error_code(Errno::BUSY),
            ErrorCode::FilesystemAlreadyFrozen
        );
        assert_eq!(
            freeze_error_code(Errno::OPNOTSUPP),
            ErrorCode::FreezeNotSupported
        );
        assert_eq!(
            freeze_error_code(Errno::PERM),
            ErrorCode::FreezePermissionDenied
        );
        assert_eq!(freeze_error_code(Errno::IO), ErrorCode::FreezeFailed);
        let p = freeze_problem(Path::new("/data"), Errno::BUSY);
        assert!(p.message.contains("/data"));
    }

    #[test]
    fn thaw_of_a_filesystem_that_is_not_frozen_is_not_an_error() {
        if crate::skipped_unless_root(
            "thaw_of_a_filesystem_that_is_not_frozen_is_not_an_error",
            "FITHAW needs CAP_SYS_ADMIN",
        ) {
            return;
        }
        // /proc cannot be frozen; FITHAW on it reports EINVAL (not frozen) or EOPNOTSUPP.
        let f = std::fs::File::open("/proc").unwrap();
        match thaw(&f) {
            Ok(Thawed::WasNotFrozen) | Err(Errno::OPNOTSUPP) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}
