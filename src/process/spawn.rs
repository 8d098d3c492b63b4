//! Starting a child: [`Launch`] says what to execute and how, [`Launch::spawn`] starts it
//! in its own process group (and cgroup) with a clean environment.
use super::capture::{Tail, READ_CHUNK};
use super::cgroup::Cgroup;
use super::{Process, OUTPUT_TAIL_BYTES, SAFE_PATH};
use crate::trust::TrustedFile;
use rustix::process::{Pid, PidfdFlags, Signal};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;

/// What the child's stdin is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdinMode {
    /// `/dev/null` (every ordinary script and command).
    Null,
    /// A pipe whose write end quiesce keeps (hold mode); EOF on it means "release".
    Pipe,
}

/// What to execute and how. Built with [`Launch::trusted`] (a hook script, executed from the
/// descriptor that passed the trust check) or [`Launch::argv`] (a plain command).
#[derive(Debug)]
pub struct Launch {
    program: PathBuf,
    argv0: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    stdin: StdinMode,
    capture_stdout: usize,
    watch_line: Option<Vec<u8>>,
    interruptible: bool,
    /// Put the tree in its own cgroup when cgroup2 is usable (see [`super::cgroup`]).
    use_cgroup: bool,
}

impl Launch {
    /// Execute a trusted script by its checked path, so that `$0` is the real path and
    /// scripts can source files next to themselves.
    ///
    /// - ELF binary: `execve(path, [path, args..])`.
    /// - `#!` script: its checked interpreter ([`crate::trust::Interpreter`]) with the
    ///   `#!` line's argument, then the path and the arguments, as the kernel would start it,
    ///   but without needing the execute bit (Azure runs every script as `sh <path>`).
    /// - Anything else: `/bin/sh path args..`, as Azure runs such scripts.
    ///
    /// Why running by path is safe: the trust check proved every directory on the path
    /// root-owned and not writable by group/others, so only root can replace the file
    /// between the check and the exec (see SECURITY.md).
    pub fn trusted(file: &TrustedFile, args: &[String]) -> std::io::Result<Launch> {
        let path = file.path.clone().into_os_string();
        let mut launch = if file.elf {
            Launch::new(file.path.clone(), path, Vec::new())
        } else if let Some(interp) = &file.interpreter {
            let mut argv: Vec<OsString> = interp.arg.iter().map(OsString::from).collect();
            argv.push(path);
            Launch::new(
                interp.program.clone(),
                interp.name.clone().into_os_string(),
                argv,
            )
        } else {
            Launch::new(
                PathBuf::from("/bin/sh"),
                OsString::from("/bin/sh"),
                vec![path],
            )
        };
        launch.args.extend(args.iter().map(OsString::from));
        launch = launch.env("QUIESCE_SCRIPT", &file.path);
        Ok(launch)
    }

    /// Execute `argv[0]` with `argv[1..]`, no shell. A name without `/` is looked up in
    /// [`SAFE_PATH`]. The environment starts empty apart from `PATH`.
    pub fn argv(argv: &[String]) -> Launch {
        let program = argv.first().cloned().unwrap_or_default();
        Launch::new(
            PathBuf::from(&program),
            OsString::from(&program),
            argv.iter().skip(1).map(OsString::from).collect(),
        )
    }

    fn new(program: PathBuf, argv0: OsString, args: Vec<OsString>) -> Launch {
        Launch {
            program,
            argv0,
            args,
            env: vec![("PATH".into(), SAFE_PATH.into())],
            stdin: StdinMode::Null,
            capture_stdout: 0,
            watch_line: None,
            interruptible: false,
            use_cgroup: true,
        }
    }

    /// Add (or replace) an environment variable.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Launch {
        let key = key.as_ref().to_os_string();
        self.env.retain(|(k, _)| *k != key);
        self.env.push((key, value.as_ref().to_os_string()));
        self
    }

    pub fn stdin(mut self, mode: StdinMode) -> Launch {
        self.stdin = mode;
        self
    }

    /// Also keep the first `limit` bytes of stdout in full (the command provider parses them);
    /// more is counted as overflow, never buffered.
    pub fn capture_stdout(mut self, limit: usize) -> Launch {
        self.capture_stdout = limit;
        self
    }

    /// Watch stdout for a line exactly equal to `line` (a trailing `\r` is ignored); see
    /// [`Process::wait_for_line`].
    pub fn watch_line(mut self, line: &str) -> Launch {
        self.watch_line = Some(line.as_bytes().to_vec());
        self
    }

    /// Let SIGTERM/SIGINT to quiesce cut the waits short, as if the deadline had passed (the
    /// group is then terminated as on a timeout). Used for pre scripts and the snapshot
    /// command: once quiesce is told to stop, nothing new should be waited for. Post scripts
    /// are not interruptible: they resume the applications.
    pub fn interruptible(mut self) -> Launch {
        self.interruptible = true;
        self
    }

    /// Track the tree by process group and `/proc` parent chains only, never a cgroup (the
    /// fallback where cgroup2 is not usable; tests use it to keep that path proven).
    pub fn without_cgroup(mut self) -> Launch {
        self.use_cgroup = false;
        self
    }

    /// The environment the child will get, in order.
    pub fn environment(&self) -> &[(OsString, OsString)] {
        &self.env
    }

    /// Start the process: its own process group, cwd `/`, the environment above, stdout and
    /// stderr piped to quiesce.
    pub fn spawn(&self) -> std::io::Result<Process> {
        let mut cmd = std::process::Command::new(&self.program);
        cmd.arg0(&self.argv0)
            .args(&self.args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir("/")
            .stdin(match self.stdin {
                StdinMode::Null => Stdio::null(),
                StdinMode::Pipe => Stdio::piped(),
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let cgroup = self.use_cgroup.then(Cgroup::create).flatten().map(Arc::new);
        if let Some(cg) = &cgroup {
            let raw = cg.procs_fd().as_raw_fd();
            // SAFETY: the closure runs in the forked child before exec and makes one write
            // system call on a descriptor the parent keeps open across `spawn` (async-signal
            // -safe, no allocation). Writing "0" moves the writer into the cgroup.
            unsafe {
                cmd.pre_exec(move || {
                    let fd = BorrowedFd::borrow_raw(raw);
                    rustix::io::write(fd, b"0")?;
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn()?;
        let pid = Pid::from_raw(child.id() as i32).expect("child pid is positive");
        let pidfd = match rustix::process::pidfd_open(pid, PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(e) => {
                let _ = rustix::process::kill_process_group(pid, Signal::KILL);
                let _ = child.wait();
                return Err(e.into());
            }
        };
        let stdin = child.stdin.take().map(OwnedFd::from);
        let stdout = child.stdout.take().map(OwnedFd::from);
        let stderr = child.stderr.take().map(OwnedFd::from);
        for fd in [&stdout, &stderr].into_iter().flatten() {
            rustix::io::ioctl_fionbio(fd, true)?;
        }
        // `child` is dropped without waiting: the pidfd is used from here on.
        Ok(Process {
            pid,
            pidfd,
            stdin,
            stdout,
            stderr,
            stdout_tail: Tail::new(OUTPUT_TAIL_BYTES),
            stderr_tail: Tail::new(OUTPUT_TAIL_BYTES),
            capture: Vec::new(),
            capture_limit: self.capture_stdout,
            capture_overflow: false,
            watch: self.watch_line.clone(),
            interruptible: self.interruptible,
            line: Vec::new(),
            line_overlong: false,
            line_seen: false,
            exit: None,
            reaped: false,
            keep: false,
            kept: None,
            group_outlives_leader: false,
            killed: false,
            started: Instant::now(),
            buf: vec![0u8; READ_CHUNK],
            cgroup,
            tracked: Default::default(),
        })
    }
}
