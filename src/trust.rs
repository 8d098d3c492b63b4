//! Trust checks for configuration files and hook scripts (SPEC section 4).
//!
//! A file is trusted when it is a regular file owned by root with no group/other permission
//! bits and no set-uid/set-gid bit, and every directory above it is owned by root and not
//! writable by group or others. The checks are made on the opened descriptor, and scripts are
//! executed from that same descriptor, so swapping the file after the check runs nothing else.
//!
//! Symlink rule: the last component must not be a symlink (refused). Symlinks in the parent
//! directories are resolved once, and then every directory of the resolved path is walked
//! with `O_NOFOLLOW` and checked; a path that changes under the walk is refused.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// Why a file was not trusted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TrustError {
    /// Missing, or not a regular file.
    #[error("{path}: {reason}")]
    NotFound { path: PathBuf, reason: String },
    /// Present but unsafe (owner, mode, parent directories, symlink).
    #[error("{path}: {reason}")]
    Insecure { path: PathBuf, reason: String },
}

/// A script that passed the trust check, held open.
#[derive(Debug)]
pub struct TrustedFile {
    /// The path as configured.
    pub path: PathBuf,
    /// The descriptor the checks were made on (O_RDONLY, close-on-exec).
    pub fd: OwnedFd,
    /// True when the file starts with `#!`; false means it runs under `/bin/sh` (as in Azure)
    /// unless it is an ELF binary (`elf` is true).
    pub shebang: bool,
    pub elf: bool,
}

/// Open `path` and check it as a hook script.
pub fn open_script(path: &Path) -> Result<TrustedFile, TrustError> {
    let _ = path;
    todo!("trust::open_script")
}

/// Open `path` and check it as a configuration file (same rules as scripts, but the mode
/// must not include group/other bits; the owner execute bit is irrelevant).
pub fn open_config(path: &Path) -> Result<std::fs::File, TrustError> {
    let _ = path;
    todo!("trust::open_config")
}
