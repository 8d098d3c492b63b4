//! Trust checks for configuration files and hook scripts.
//!
//! A file is trusted when it is a regular file owned by root with no group/other permission
//! bits and no set-uid/set-gid bit, and every directory above it is owned by root and not
//! writable by group or others. The checks are made on the opened descriptor, and scripts are
//! executed from that same descriptor, so swapping the file after the check runs nothing else.
//!
//! Symlink rule: the last component must not be a symlink (refused). Symlinks in the parent
//! directories are resolved once, and then every directory of the resolved path is walked
//! with `O_NOFOLLOW` and checked; a path that changes under the walk is refused.
//!
//! How the walk is done, precisely:
//! 1. The path must be absolute (a relative path depends on the agent's cwd: refused).
//! 2. The parent directory is canonicalized once (`realpath`); a missing parent is
//!    [`TrustError::NotFound`].
//! 3. Starting from `/`, every component of the canonical parent is opened with
//!    `openat(dir, name, O_PATH|O_DIRECTORY|O_NOFOLLOW|O_CLOEXEC)` relative to the previous
//!    one, and `fstat`ed: owner uid 0, no group/other write bit. A sticky world-writable
//!    directory such as `/tmp` is refused too: anyone may create files there, so a name in it
//!    proves nothing. A component that became a symlink or a non-directory since step 2 makes
//!    the open fail, and the path is refused as changed under the check.
//! 4. The file is opened with `openat(parent, name, O_RDONLY|O_NOFOLLOW|O_NONBLOCK|O_CLOEXEC)`
//!    (a symlink fails with `ELOOP` and is refused; `O_NONBLOCK` keeps a FIFO from blocking the
//!    open) and checked with `fstat` on that descriptor: regular file, uid 0, `mode & 0o077 ==
//!    0`, neither set-uid nor set-gid.
//!
//! Missing files and non-regular files are [`TrustError::NotFound`] (Azure's `*-ScriptNotFound`);
//! everything else is [`TrustError::Insecure`] with every problem found, joined by `"; "`.
//! When the file is missing that wins over insecure parents: nothing would run either way and
//! the missing file is the first thing to fix.

use crate::quote::quote_path;
use rustix::fs::{FileType, Mode, OFlags, Stat};
use rustix::io::Errno;
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

/// Why a file was not trusted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TrustError {
    /// Missing, or not a regular file.
    #[error("{}: {reason}", quote_path(path))]
    NotFound { path: PathBuf, reason: String },
    /// Present but unsafe (owner, mode, parent directories, symlink).
    #[error("{}: {reason}", quote_path(path))]
    Insecure { path: PathBuf, reason: String },
}

impl TrustError {
    /// The human reason, without the path.
    pub fn reason(&self) -> &str {
        match self {
            TrustError::NotFound { reason, .. } | TrustError::Insecure { reason, .. } => reason,
        }
    }
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
    /// The checked interpreter of a `#!` script (`None` for ELF binaries and scripts
    /// without `#!`, which run under `/bin/sh`).
    pub interpreter: Option<Interpreter>,
}

/// A `#!` line's interpreter, resolved and trust-checked like the script itself (root-owned,
/// not writable by group/others, in safe directories). `#!/usr/bin/env NAME` is resolved on
/// the hooks' `PATH` ([`HOOK_PATH`]) and `NAME` is run directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interpreter {
    /// The canonical path executed.
    pub program: PathBuf,
    /// The interpreter as the `#!` line names it (for `env`, as found on [`HOOK_PATH`]):
    /// its `argv[0]`, as the kernel passes it. Multi-call binaries such as busybox choose
    /// what to be from this name (`/bin/sh` -> `sh`), so the canonical path would not do.
    pub name: PathBuf,
    /// The optional single argument of the `#!` line (the kernel passes it as one word).
    pub arg: Option<String>,
}

/// The only `PATH` hooks get, and where `#!/usr/bin/env NAME` is looked up. Every directory
/// in it is root's on a sane system; the trust check proves it for each interpreter found.
pub const HOOK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Longest `#!` line read (the kernel's limit is 256 bytes since Linux 5.1).
const MAX_SHEBANG: usize = 256;

/// Read and check the interpreter of a `#!` script.
fn interpreter_of(path: &Path, fd: &OwnedFd) -> Result<Option<Interpreter>, TrustError> {
    let mut head = [0u8; MAX_SHEBANG];
    let n = pread_full(fd, &mut head)
        .map_err(|e| insecure(path, format!("cannot read the file: {e}")))?;
    let Some(line) = head[..n].strip_prefix(b"#!") else {
        return Ok(None);
    };
    let line = line.split(|b| *b == b'\n').next().unwrap_or(line);
    let line = String::from_utf8_lossy(line);
    let line = line.trim();
    let (prog, arg) = match line.split_once([' ', '\t']) {
        Some((p, a)) => (p, Some(a.trim().to_string()).filter(|a| !a.is_empty())),
        None => (line, None),
    };
    if prog.is_empty() {
        return Err(not_found(path, "its `#!` line names no interpreter"));
    }
    let (prog, arg) = if Path::new(prog).file_name() == Some(OsStr::new("env")) {
        let Some(name) = arg.filter(|a| !a.contains(char::is_whitespace) && !a.starts_with('-'))
        else {
            return Err(insecure(
                path,
                format!("`#!{line}`: only `#!/usr/bin/env NAME` (one name) is supported"),
            ));
        };
        let found = HOOK_PATH
            .split(':')
            .map(|d| Path::new(d).join(&name))
            .find(|p| p.exists())
            .ok_or_else(|| {
                not_found(
                    path,
                    format!("its interpreter `{name}` (from `#!{line}`) is not on {HOOK_PATH}"),
                )
            })?;
        (found, None)
    } else {
        (PathBuf::from(prog), arg)
    };
    check_interpreter(path, &prog).map(|program| {
        Some(Interpreter {
            program,
            name: prog,
            arg,
        })
    })
}

/// Resolve `prog` (symlinks included: `/bin/sh` is usually one) and check the file it names
/// as an executable root may run: owned by root, not writable by group/others, in safe
/// directories, executable. Returns the canonical path.
pub fn check_interpreter(script: &Path, prog: &Path) -> Result<PathBuf, TrustError> {
    let shown = quote_path(prog);
    let real = std::fs::canonicalize(prog).map_err(|e| {
        not_found(
            script,
            format!("its interpreter {shown} does not exist or cannot be resolved ({e})"),
        )
    })?;
    let fd = open_checked(&real, Access::WorldReadable).map_err(|e| {
        insecure(
            script,
            format!("its interpreter {shown} is not trusted: {}", e.reason()),
        )
    })?;
    let st = rustix::fs::fstat(&fd).map_err(|e| insecure(script, format!("fstat: {e}")))?;
    if st.st_mode & 0o100 == 0 {
        return Err(insecure(
            script,
            format!("its interpreter {shown} is not executable"),
        ));
    }
    Ok(real)
}

/// Open `path` and check it as a hook script.
pub fn open_script(path: &Path) -> Result<TrustedFile, TrustError> {
    let fd = open_checked(path, Access::Private)?;
    let mut magic = [0u8; 4];
    let n = pread_full(&fd, &mut magic).map_err(|e| TrustError::Insecure {
        path: path.to_path_buf(),
        reason: format!("cannot read the file: {e}"),
    })?;
    let magic = &magic[..n];
    let interpreter = interpreter_of(path, &fd)?;
    Ok(TrustedFile {
        path: path.to_path_buf(),
        shebang: magic.starts_with(b"#!"),
        elf: magic == b"\x7fELF",
        interpreter,
        fd,
    })
}

/// Open `path` and check it as a configuration file (same rules as scripts, but the mode
/// must not include group/other bits; the owner execute bit is irrelevant).
pub fn open_config(path: &Path) -> Result<std::fs::File, TrustError> {
    open_config_with(path, Access::Private)
}

/// Like [`open_config`], but group/other may read the file (never write it). Azure installs
/// its plugin host INI with mode 0644; it names files, not secrets.
pub fn open_public_config(path: &Path) -> Result<std::fs::File, TrustError> {
    open_config_with(path, Access::WorldReadable)
}

fn open_config_with(path: &Path, access: Access) -> Result<std::fs::File, TrustError> {
    let fd = open_checked(path, access)?;
    // O_NONBLOCK only mattered for the open itself (a FIFO); drop it for ordinary reads.
    let _ = rustix::fs::fcntl_setfl(&fd, OFlags::empty());
    Ok(std::fs::File::from(fd))
}

/// Which permission bits group and others may have on a trusted file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// None at all (scripts, plugin JSON, native TOML).
    Private,
    /// Read and execute, never write.
    WorldReadable,
}

/// Read up to `buf.len()` bytes from offset 0 without moving the file offset.
fn pread_full(fd: &OwnedFd, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match rustix::io::pread(fd, &mut buf[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(got)
}

fn not_found(path: &Path, reason: impl Into<String>) -> TrustError {
    TrustError::NotFound {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn insecure(path: &Path, reason: impl Into<String>) -> TrustError {
    TrustError::Insecure {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The whole check; returns the descriptor of the file the checks were made on.
fn open_checked(path: &Path, access: Access) -> Result<OwnedFd, TrustError> {
    if !path.is_absolute() {
        return Err(insecure(
            path,
            "not an absolute path (refused: it would depend on the working directory)",
        ));
    }
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(not_found(path, "not a regular file"));
    };
    let canonical = match std::fs::canonicalize(parent) {
        Ok(p) => p,
        Err(e) => {
            return Err(match Errno::from_io_error(&e) {
                Some(Errno::NOENT) | Some(Errno::NOTDIR) => not_found(
                    path,
                    format!("directory {} does not exist", quote_path(parent)),
                ),
                _ => insecure(
                    path,
                    format!("cannot resolve directory {}: {e}", quote_path(parent)),
                ),
            })
        }
    };

    let mut problems = Vec::new();
    let dir = walk_parents(path, &canonical, &mut problems)?;

    let fd = match rustix::fs::openat(
        &dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Err(not_found(path, "no such file")),
        Err(Errno::LOOP) => {
            problems.push(
                "is a symbolic link (refused for the last component; configure the real path)"
                    .to_string(),
            );
            return Err(insecure(path, problems.join("; ")));
        }
        Err(Errno::NXIO) | Err(Errno::OPNOTSUPP) => {
            return Err(not_found(path, "not a regular file (socket or device)"))
        }
        Err(e) => {
            problems.push(format!("cannot open: {e}"));
            return Err(insecure(path, problems.join("; ")));
        }
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| insecure(path, format!("fstat failed: {e}")))?;
    let ft = FileType::from_raw_mode(st.st_mode);
    if ft != FileType::RegularFile {
        return Err(not_found(
            path,
            format!("not a regular file (it is a {})", file_type_name(ft)),
        ));
    }
    check_file(&st, access, &mut problems);
    if problems.is_empty() {
        Ok(fd)
    } else {
        Err(insecure(path, problems.join("; ")))
    }
}

/// Walk `/` and every component of `canonical` with `O_NOFOLLOW`, checking each directory;
/// returns the descriptor of the last one (the file's parent).
fn walk_parents(
    path: &Path,
    canonical: &Path,
    problems: &mut Vec<String>,
) -> Result<OwnedFd, TrustError> {
    let dir_flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut dir = rustix::fs::openat(rustix::fs::CWD, "/", dir_flags, Mode::empty())
        .map_err(|e| insecure(path, format!("cannot open /: {e}")))?;
    let mut shown = PathBuf::from("/");
    check_dir(&dir, &shown, path, problems)?;
    for comp in canonical.components() {
        let name: &OsStr = match comp {
            Component::RootDir => continue,
            Component::Normal(n) => n,
            // canonicalize never yields these; treat them as a changed path.
            _ => {
                return Err(insecure(
                    path,
                    format!("unexpected component in {}", quote_path(canonical)),
                ))
            }
        };
        shown.push(name);
        dir = match rustix::fs::openat(&dir, name, dir_flags, Mode::empty()) {
            Ok(d) => d,
            Err(Errno::NOENT) => {
                return Err(not_found(
                    path,
                    format!("directory {} does not exist", quote_path(&shown)),
                ))
            }
            Err(Errno::LOOP) | Err(Errno::NOTDIR) => {
                return Err(insecure(
                    path,
                    format!(
                        "directory {} changed during the check (now a symlink or not a directory)",
                        quote_path(&shown)
                    ),
                ))
            }
            Err(e) => {
                return Err(insecure(
                    path,
                    format!("cannot open directory {}: {e}", quote_path(&shown)),
                ))
            }
        };
        check_dir(&dir, &shown, path, problems)?;
    }
    Ok(dir)
}

fn check_dir(
    dir: &OwnedFd,
    shown: &Path,
    path: &Path,
    problems: &mut Vec<String>,
) -> Result<(), TrustError> {
    let st = rustix::fs::fstat(dir.as_fd()).map_err(|e| {
        insecure(
            path,
            format!("fstat of directory {} failed: {e}", quote_path(shown)),
        )
    })?;
    let mode = st.st_mode & 0o7777;
    if st.st_uid != 0 {
        problems.push(format!(
            "directory {} is owned by uid {}, not root",
            quote_path(shown),
            st.st_uid
        ));
    }
    if mode & 0o022 != 0 {
        let sticky = if mode & 0o1000 != 0 {
            " (sticky, but anyone may still create names in it)"
        } else {
            ""
        };
        problems.push(format!(
            "directory {} is writable by group/others (mode {:04o}){sticky}",
            quote_path(shown),
            mode
        ));
    }
    Ok(())
}

fn check_file(st: &Stat, access: Access, problems: &mut Vec<String>) {
    let mode = st.st_mode & 0o7777;
    if st.st_uid != 0 {
        problems.push(format!("owned by uid {}, not root", st.st_uid));
    }
    if access == Access::WorldReadable {
        if mode & 0o022 != 0 {
            problems.push(format!(
                "mode {mode:04o} lets group/others write it (must be 0644 or stricter)"
            ));
        }
    } else if mode & 0o077 != 0 {
        problems.push(format!(
            "mode {mode:04o} gives access to group/others (must be 0700/0600 or stricter)"
        ));
    }
    if mode & 0o4000 != 0 {
        problems.push(format!("set-uid bit is set (mode {mode:04o})"));
    }
    if mode & 0o2000 != 0 {
        problems.push(format!("set-gid bit is set (mode {mode:04o})"));
    }
}

fn file_type_name(ft: FileType) -> &'static str {
    match ft {
        FileType::Directory => "directory",
        FileType::Fifo => "FIFO",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Symlink => "symbolic link",
        FileType::RegularFile => "regular file",
        _ => "special file",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::sync::atomic::{AtomicU32, Ordering};

    static N: AtomicU32 = AtomicU32::new(0);

    /// A root-owned 0700 directory under /var/lib/quiesce-tests (root-owned, 0755 parents,
    /// wherever the checkout is; the integration tests' scratch base).
    struct Dir(PathBuf);
    impl Dir {
        fn new() -> Dir {
            let base = Path::new("/var/lib/quiesce-tests");
            std::fs::create_dir_all(base).unwrap();
            std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o755)).unwrap();
            let p = base.join(format!(
                "trust-unit-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir(&p).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
            Dir(p)
        }
        fn file(&self, name: &str, body: &str, mode: u32) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, body).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn insecure_reason(r: Result<TrustedFile, TrustError>) -> String {
        match r {
            Err(TrustError::Insecure { reason, .. }) => reason,
            other => panic!("expected Insecure, got {other:?}"),
        }
    }

    #[test]
    fn accepts_root_0700_script_and_detects_magic() {
        if crate::skipped_unless_root(
            "accepts_root_0700_script_and_detects_magic",
            "root-owned files under /var/lib/quiesce-tests",
        ) {
            return;
        }
        let d = Dir::new();
        let t = open_script(&d.file("a", "#!/bin/sh\nexit 0\n", 0o700)).unwrap();
        assert!(t.shebang && !t.elf);
        let t = open_script(&d.file("b", "exit 0\n", 0o700)).unwrap();
        assert!(!t.shebang && !t.elf);
        let t = open_script(&d.file("c", "", 0o700)).unwrap();
        assert!(!t.shebang && !t.elf);
        let elf = std::fs::read("/bin/true").unwrap();
        let p = d.0.join("elf");
        std::fs::write(&p, elf).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
        let t = open_script(&p).unwrap();
        assert!(t.elf && !t.shebang);
        // The descriptor is close-on-exec.
        let fl = rustix::io::fcntl_getfd(&t.fd).unwrap();
        assert!(fl.contains(rustix::io::FdFlags::CLOEXEC));
    }

    #[test]
    fn config_0600_accepted_and_readable() {
        if crate::skipped_unless_root(
            "config_0600_accepted_and_readable",
            "root-owned files under /var/lib/quiesce-tests",
        ) {
            return;
        }
        let d = Dir::new();
        let p = d.file("c.toml", "x = 1\n", 0o600);
        let mut f = open_config(&p).unwrap();
        let mut s = String::new();
        std::io::Read::read_to_string(&mut f, &mut s).unwrap();
        assert_eq!(s, "x = 1\n");
        let e = open_config(&d.file("g.toml", "", 0o640)).unwrap_err();
        assert!(matches!(e, TrustError::Insecure { .. }), "{e:?}");
    }

    #[test]
    fn missing_and_non_regular_are_not_found() {
        if crate::skipped_unless_root(
            "missing_and_non_regular_are_not_found",
            "root-owned files under /var/lib/quiesce-tests",
        ) {
            return;
        }
        let d = Dir::new();
        let e = open_script(&d.0.join("nope")).unwrap_err();
        assert!(matches!(e, TrustError::NotFound { .. }), "{e:?}");
        let e = open_script(&d.0.join("nodir/x")).unwrap_err();
        assert!(matches!(e, TrustError::NotFound { .. }), "{e:?}");
        std::fs::create_dir(d.0.join("sub")).unwrap();
        let e = open_script(&d.0.join("sub")).unwrap_err();
        assert!(
            matches!(&e, TrustError::NotFound { reason, .. } if reason.contains("directory")),
            "{e:?}"
        );
        // A FIFO is refused without blocking the open.
        let fifo = d.0.join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let e = open_script(&fifo).unwrap_err();
        assert!(
            matches!(&e, TrustError::NotFound { reason, .. } if reason.contains("FIFO")),
            "{e:?}"
        );
        assert!(matches!(
            open_script(Path::new("/")).unwrap_err(),
            TrustError::NotFound { .. }
        ));
    }

    #[test]
    fn relative_path_refused() {
        let r = insecure_reason(open_script(Path::new("relative/script")));
        assert!(r.contains("absolute"), "{r}");
    }

    #[test]
    fn group_or_other_bits_refused() {
        if crate::skipped_unless_root(
            "group_or_other_bits_refused",
            "root-owned files under /var/lib/quiesce-tests",
        ) {
            return;
        }
        let d = Dir::new();
        for mode in [0o740, 0o710, 0o704, 0o701, 0o750, 0o777] {
            let r = insecure_reason(open_script(&d.file(&format!("m{mode:o}"), "", mode)));
            assert!(r.contains("group/others"), "{mode:o}: {r}");
        }
    }

    #[test]
    fn setuid_and_setgid_refused() {
        if crate::skipped_unless_root(
            "setuid_and_setgid_refused",
            "root-owned files under /var/lib/quiesce-tests",
        ) {
            return;
        }
        let d = Dir::new();
        let r = insecure_reason(open_script(&d.file("su", "", 0o4700)));
        assert!(r.contains("set-uid"), "{r}");
        let r = insecure_reason(open_script(&d.file("sg", "", 0o2700)));
        assert!(r.contains("set-gid"), "{r}");
    }

    #[test]
    fn non_root_owner_refused() {
        if crate::skipped_unless_root(
            "non_root_owner_refused",
            "root-owned files under /var/lib/quiesce-tests",
        ) {
            return;
        }
        let d = Dir::new();
        let p = d.file("owned", "", 0o700);
        rustix::fs::chown(&p, Some(rustix::process::Uid::from_raw(1000)), None).unwrap();
        let r = insecure_reason(open_script(&p));
        assert!(r.contains("uid 1000"), "{r}");
    }

    #[test]
    fn unsafe_parent_directories_refused() {
        if crate::skipped_unless_root(
            "unsafe_parent_directories_refused",
            "root-owned files under /var/lib/quiesce-tests",
        ) {
            return;
        }
        let d = Dir::new();
        let p = d.file("s", "", 0o700);
        for mode in [0o770, 0o702, 0o1777] {
            std::fs::set_permissions(&d.0, std::fs::Permissions::from_mode(mode)).unwrap();
            let r = insecure_reason(open_script(&p));
            assert!(r.contains("writable by group/others"), "{mode:o}: {r}");
        }
        std::fs::set_permissions(&d.0, std::fs::Permissions::from_mode(0o755)).unwrap();
        rustix::fs::chown(&d.0, Some(rustix::process::Uid::from_raw(1000)), None).unwrap();
        let r = insecure_reason(open_script(&p));
        assert!(r.contains("owned by uid 1000"), "{r}");
        rustix::fs::chown(&d.0, Some(rustix::process::Uid::ROOT), None).unwrap();
        assert!(open_script(&p).is_ok());
    }

    #[test]
    fn sticky_tmp_refused() {
        let p = std::env::temp_dir().join(format!("quiesce-trust-{}", std::process::id()));
        std::fs::write(&p, "").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
        let r = open_script(&p);
        let _ = std::fs::remove_file(&p);
        let r = insecure_reason(r);
        assert!(r.contains("sticky"), "{r}");
    }

    #[test]
    fn symlink_last_component_refused_parent_symlink_resolved() {
        if crate::skipped_unless_root(
            "symlink_last_component_refused_parent_symlink_resolved",
            "root-owned files under /var/lib/quiesce-tests",
        ) {
            return;
        }
        let d = Dir::new();
        let real = d.file("real", "#!/bin/sh\n", 0o700);
        let link = d.0.join("link");
        symlink(&real, &link).unwrap();
        let r = insecure_reason(open_script(&link));
        assert!(r.contains("symbolic link"), "{r}");

        // A symlinked parent directory is resolved once and the real directories checked.
        std::fs::create_dir(d.0.join("realdir")).unwrap();
        std::fs::set_permissions(d.0.join("realdir"), std::fs::Permissions::from_mode(0o700))
            .unwrap();
        let s = d.file("realdir/s", "#!/bin/sh\n", 0o700);
        symlink(d.0.join("realdir"), d.0.join("dirlink")).unwrap();
        let t = open_script(&d.0.join("dirlink/s")).unwrap();
        assert_eq!(t.path, d.0.join("dirlink/s"));
        let a = rustix::fs::fstat(&t.fd).unwrap();
        let b = rustix::fs::stat(&s).unwrap();
        assert_eq!((a.st_dev, a.st_ino), (b.st_dev, b.st_ino));

        // ... and the resolved directories must pass too: the link target is checked, not
        // the link's own directory.
        std::fs::set_permissions(d.0.join("realdir"), std::fs::Permissions::from_mode(0o777))
            .unwrap();
        let r = insecure_reason(open_script(&d.0.join("dirlink/s")));
        assert!(r.contains("realdir is writable"), "{r}");
    }
}
