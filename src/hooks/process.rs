//! Process machinery shared by the hook runner, hold mode and the `command` snapshot provider:
//! spawn in a fresh process group with a clean environment, drain stdout/stderr continuously
//! into bounded tails, wait with a deadline, kill the whole tree, reap.
//!
//! One poll loop watches both output pipes and a pidfd of the child, so output never backs up
//! (a script writing gigabytes neither blocks nor grows memory: only the last
//! [`OUTPUT_TAIL_BYTES`](super::OUTPUT_TAIL_BYTES) of each stream are kept) and the exit is
//! seen the moment it happens.
//!
//! **Process groups.** Every [`Process`] is the leader of its own process group; signals for
//! "the tree" go to the whole group. Group signals are sent only while the leader is unreaped
//! (an unreaped leader, even a zombie, keeps the group id from being reused) or while
//! leftovers of the reaped leader still keep the id allocated (see [`Process::finish`]), so a
//! group signal never reaches an unrelated process.
//!
//! **Leftovers after a normal exit** (see [`Process::finish`]): when the leader exits, any
//! member of its process group still alive (a background `cmd &` the script forgot) is
//! terminated: SIGTERM, then SIGKILL after the grace period, verified by pid. Nothing a hook
//! started survives it, and a post script never runs beside leftovers of its pre script.
//! Output those leftovers write before dying still lands in the tails. A process that left
//! the group on purpose (`setsid`, i.e. a real daemon) is not ours to kill (so a script that
//! starts a daemon must return only once it has detached, as `pg_ctl -w start` or
//! `systemctl start` do; a plain `cmd &` is a leftover); if such a daemon holds the
//! output pipes, quiesce reads what is there for [`LINGER`] and then closes its read ends
//! (the daemon gets `EPIPE`/`SIGPIPE` on its next write) instead of waiting for an EOF that
//! may never come.
//!
//! Survival of a process in uninterruptible sleep (a writer to a frozen filesystem) cannot be
//! prevented by any signal; quiesce waits [`KILL_WAIT`] for it, reports its pid, and hands
//! the leader to a reaper thread so no zombie is left once it can die.

use super::cgroup::Cgroup;
use super::output::Tail;
use super::{AttemptEnd, OUTPUT_TAIL_BYTES};
use crate::trust::TrustedFile;
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, Signal, WaitId, WaitIdOptions, WaitIdStatus};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The only `PATH` children get.
pub const SAFE_PATH: &str = crate::trust::HOOK_PATH;

/// How long output pipes are still read after the process group is gone, when something
/// outside the group (a daemon that called `setsid`) keeps them open.
pub const LINGER: Duration = Duration::from_millis(50);

/// How long to wait for SIGKILLed processes to disappear before reporting them as unkillable.
pub const KILL_WAIT: Duration = Duration::from_secs(2);

const READ_CHUNK: usize = 64 * 1024;

/// `start + d`, saturating far in the future instead of panicking on overflow (a configured
/// timeout may be absurdly large).
pub fn deadline_after(start: Instant, d: Duration) -> Instant {
    start
        .checked_add(d)
        .unwrap_or_else(|| start + Duration::from_secs(100 * 365 * 24 * 3600))
}
/// Longest line the line watcher keeps; longer lines cannot be the watched line.
const MAX_WATCHED_LINE: usize = 256;

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

/// Outcome of [`Process::wait_for_line`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineWait {
    /// The watched line was printed; the process is running.
    Seen,
    /// The process exited first (not reaped yet; call [`Process::finish`]).
    Exited(AttemptEnd),
    /// The deadline passed; nothing was done to the process.
    Deadline,
}

/// What [`Process::finish`] found and did.
#[derive(Debug, Default)]
pub struct Leftovers {
    /// Group members still alive after the leader exited, which were terminated.
    pub terminated: Vec<i32>,
    /// Members that did not die even after SIGKILL and [`KILL_WAIT`] (uninterruptible).
    pub unkillable: Vec<i32>,
    /// Something outside the group still held an output pipe after [`LINGER`]; quiesce
    /// closed its ends.
    pub pipes_abandoned: bool,
    /// Group members left running on purpose ([`Process::keep_leftovers`]): a pre script's
    /// background session that must live until the hook's post script has run.
    pub kept: Option<KeptGroup>,
}

/// Leftovers of a finished script, kept running until [`KeptGroup::end`] (or drop): the
/// process group id and a thread draining (and discarding) whatever they still write to
/// the script's output pipes, so they never block on a full pipe nor die of `SIGPIPE`.
#[derive(Debug)]
pub struct KeptGroup {
    pgid: Pid,
    cgroup: Option<Arc<Cgroup>>,
    /// Pids alive when the script exited.
    pub pids: Vec<i32>,
    drain: Option<std::thread::JoinHandle<()>>,
}

impl KeptGroup {
    /// Terminate what is left of the group: SIGTERM, up to `grace`, SIGKILL, up to
    /// [`KILL_WAIT`]. Signals go to the group only while a live member still pins its id.
    /// Returns the pids that were still alive (and were terminated).
    pub fn end(mut self, grace: Duration) -> Vec<i32> {
        self.end_now(grace)
    }

    fn end_now(&mut self, grace: Duration) -> Vec<i32> {
        let pgid = self.pgid.as_raw_nonzero().get();
        let cg = self.cgroup.clone();
        let members = move || tree_members(pgid, cg.as_deref(), None);
        let alive = members();
        for (sig, wait) in [(Signal::TERM, grace), (Signal::KILL, KILL_WAIT)] {
            if members().is_empty() {
                break;
            }
            if !live_group_members(pgid).is_empty() {
                let _ = rustix::process::kill_process_group(self.pgid, sig);
            }
            if let Some(cg) = &self.cgroup {
                cg.signal(sig);
            }
            let until = deadline_after(Instant::now(), wait);
            while !members().is_empty() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if let Some(t) = self.drain.take() {
            if members().is_empty() {
                let _ = t.join();
            }
        }
        alive
    }
}

impl Drop for KeptGroup {
    fn drop(&mut self) {
        if self.drain.is_some() {
            self.end_now(Duration::from_millis(100));
        }
    }
}

/// Read and discard `fds` until every one reached EOF (the last writer is gone).
fn drain_to_eof(fds: Vec<OwnedFd>) {
    let mut open: Vec<OwnedFd> = fds;
    let mut buf = vec![0u8; READ_CHUNK];
    while !open.is_empty() {
        let mut pfds: Vec<PollFd<'_>> =
            open.iter().map(|f| PollFd::new(f, PollFlags::IN)).collect();
        if rustix::event::poll(&mut pfds, None).is_err() {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let ready: Vec<bool> = pfds.iter().map(|p| !p.revents().is_empty()).collect();
        drop(pfds);
        let mut i = 0;
        open.retain(|fd| {
            let r = ready[i];
            i += 1;
            !r || !matches!(rustix::io::read(fd, &mut buf[..]), Ok(0) | Err(Errno::BADF))
        });
    }
}

/// A running (or exited, not yet reaped) child in its own process group.
#[derive(Debug)]
pub struct Process {
    pid: Pid,
    pidfd: OwnedFd,
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    stdout_tail: Tail,
    stderr_tail: Tail,
    capture: Vec<u8>,
    capture_limit: usize,
    capture_overflow: bool,
    watch: Option<Vec<u8>>,
    /// Waits end early once SIGTERM/SIGINT was received (see [`Launch::interruptible`]).
    interruptible: bool,
    line: Vec<u8>,
    line_overlong: bool,
    line_seen: bool,
    exit: Option<AttemptEnd>,
    reaped: bool,
    /// Leave leftovers of a normal exit running (see [`Process::keep_leftovers`]).
    keep: bool,
    /// What [`Process::run`] kept running (take it with [`Process::take_kept`]).
    kept: Option<KeptGroup>,
    /// Set while leftovers of an exited, reaped leader are being terminated: their presence
    /// keeps the group id allocated, so group signals stay safe (see `finish`).
    group_outlives_leader: bool,
    /// The group was already sent SIGKILL and waited for: a leader that survived that is
    /// in uninterruptible sleep, and a second round would only wait again.
    killed: bool,
    started: Instant,
    buf: Vec<u8>,
    /// The tree's own cgroup, when cgroup2 is usable.
    cgroup: Option<Arc<Cgroup>>,
    /// Without a cgroup: descendants seen by parent chain when the tree was signalled,
    /// remembered because they lose that chain once their parent dies.
    tracked: std::cell::RefCell<Vec<i32>>,
}

impl Process {
    /// True when this process may be cut short and quiesce was asked to terminate.
    fn interrupted(&self) -> bool {
        self.interruptible && crate::freeze::termination_requested()
    }

    /// How long one poll may sleep: interruptible waits wake at least every 100 ms, so a
    /// signal that lands just before `poll` is still noticed promptly.
    fn poll_budget(&self, left: Duration) -> Duration {
        if self.interruptible {
            left.min(Duration::from_millis(100))
        } else {
            left
        }
    }

    /// After a normal exit, leave what is left of the group running and hand it over in
    /// [`Leftovers::kept`] instead of terminating it. A timed-out or killed script's tree is
    /// still terminated.
    pub fn keep_leftovers(&mut self) {
        self.keep = true;
    }

    /// The leftovers [`Process::run`] kept running, if any.
    pub fn take_kept(&mut self) -> Option<KeptGroup> {
        self.kept.take()
    }

    /// Pid of the leader, which is also the process group id.
    pub fn pid(&self) -> i32 {
        self.pid.as_raw_nonzero().get()
    }

    /// When the process was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn stdout_tail(&self) -> &Tail {
        &self.stdout_tail
    }

    pub fn stderr_tail(&self) -> &Tail {
        &self.stderr_tail
    }

    /// The first bytes of stdout kept by [`Launch::capture_stdout`], and whether more came.
    pub fn captured_stdout(&self) -> (&[u8], bool) {
        (&self.capture, self.capture_overflow)
    }

    /// The leader's exit, if already seen by the poll loop.
    pub fn exit(&self) -> Option<&AttemptEnd> {
        self.exit.as_ref()
    }

    /// Take the write end of stdin (hold mode keeps it outside the process object).
    pub fn take_stdin(&mut self) -> Option<OwnedFd> {
        self.stdin.take()
    }

    /// Close stdin: the child reads EOF.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// A duplicate of the pidfd, for non-blocking exit checks from elsewhere ([`exit_of`]).
    pub fn pidfd_dup(&self) -> std::io::Result<OwnedFd> {
        Ok(rustix::io::fcntl_dupfd_cloexec(&self.pidfd, 3)?)
    }

    /// Send `sig` to the whole process group. Does nothing once the leader is reaped (the
    /// group id could then belong to someone else).
    pub fn signal_group(&self, sig: Signal) {
        // Without a cgroup, note the leader's descendants first: once the group signal kills
        // their parent they lose the parent chain that finds them (a `setsid` daemon).
        if self.cgroup.is_none() && !self.reaped {
            let mut tracked = self.tracked.borrow_mut();
            for pid in descendants(self.pid()) {
                if !tracked.contains(&pid) {
                    tracked.push(pid);
                }
            }
        }
        if !self.reaped || self.group_outlives_leader {
            match rustix::process::kill_process_group(self.pid, sig) {
                Ok(()) | Err(Errno::SRCH) => {}
                Err(e) => {
                    tracing::warn!(pgid = self.pid(), error = %e, "kill of process group failed")
                }
            }
        }
        // Members that left the group (setsid): by cgroup, else those tracked above.
        match &self.cgroup {
            Some(cg) => cg.signal(sig),
            None => {
                let mut tracked = self.tracked.borrow_mut();
                tracked.retain(|p| stat_state_pgrp(*p).is_some_and(|(st, _)| st != 'Z'));
                for pid in tracked.iter() {
                    if let Some(pid) = Pid::from_raw(*pid) {
                        let _ = rustix::process::kill_process(pid, sig);
                    }
                }
            }
        }
    }

    /// Live members of the tree: the process group, the cgroup (or, without one, the
    /// leader's descendants by parent chain while it is unreaped).
    fn members(&self) -> Vec<i32> {
        let anchor = (!self.reaped).then(|| self.pid());
        let mut pids = tree_members(self.pid(), self.cgroup.as_deref(), anchor);
        for p in self.tracked.borrow().iter() {
            if !pids.contains(p) && stat_state_pgrp(*p).is_some_and(|(st, _)| st != 'Z') {
                pids.push(*p);
            }
        }
        pids
    }

    /// Drain output until the leader exits or `deadline` passes. Returns its exit (the
    /// process is not reaped: call [`finish`](Self::finish)) or `None` at the deadline.
    pub fn wait_exit(&mut self, deadline: Instant) -> Option<AttemptEnd> {
        loop {
            if let Some(e) = &self.exit {
                return Some(e.clone());
            }
            let now = Instant::now();
            if now >= deadline || self.interrupted() {
                return None;
            }
            self.poll_once(Some(self.poll_budget(deadline - now)), None);
        }
    }

    /// Drain output until the line given to [`Launch::watch_line`] appears on stdout, the
    /// leader exits, or `deadline` passes.
    pub fn wait_for_line(&mut self, deadline: Instant) -> LineWait {
        loop {
            if self.line_seen {
                return LineWait::Seen;
            }
            if let Some(e) = &self.exit {
                return LineWait::Exited(e.clone());
            }
            let now = Instant::now();
            if now >= deadline || self.interrupted() {
                return LineWait::Deadline;
            }
            self.poll_once(Some(self.poll_budget(deadline - now)), None);
        }
    }

    /// Drain output (and notice the exit) until `wake` becomes readable or hangs up. Used by
    /// the hold-mode drain thread; quiesce wakes it by closing the write end.
    pub fn drain_until(&mut self, wake: BorrowedFd<'_>) {
        loop {
            if self.poll_once(None, Some(wake)) {
                return;
            }
        }
    }

    /// Run to completion: wait until `deadline`, and if the process is still running then,
    /// terminate the tree ([`terminate`](Self::terminate)) and report [`AttemptEnd::TimedOut`].
    /// Always finishes (leftovers killed, leader reaped).
    pub fn run(&mut self, deadline: Instant, kill_grace: Duration) -> AttemptEnd {
        let end = match self.wait_exit(deadline) {
            Some(end) => end,
            None => {
                self.terminate(kill_grace);
                AttemptEnd::TimedOut
            }
        };
        let left = self.finish(kill_grace);
        self.kept = left.kept;
        if !left.terminated.is_empty() || left.pipes_abandoned {
            tracing::warn!(
                pid = self.pid(),
                terminated = ?left.terminated,
                unkillable = ?left.unkillable,
                pipes_abandoned = left.pipes_abandoned,
                "process left work behind after its exit; cleaned up"
            );
        }
        end
    }

    /// SIGTERM to the group, up to `grace` for the whole group to be gone (output keeps
    /// draining), then SIGKILL to the group and up to [`KILL_WAIT`] for it to disappear.
    /// Returns the leader's exit if it came, and whether SIGKILL was needed. Does not reap.
    pub fn terminate(&mut self, grace: Duration) -> (Option<AttemptEnd>, bool) {
        if self.reaped && !self.group_outlives_leader {
            return (self.exit.clone(), false);
        }
        self.signal_group(Signal::TERM);
        if self.wait_group_gone(deadline_after(Instant::now(), grace)) {
            return (self.exit.clone(), false);
        }
        self.signal_group(Signal::KILL);
        self.wait_group_gone(Instant::now() + KILL_WAIT);
        self.killed = true;
        (self.exit.clone(), true)
    }

    /// Drain output until the leader has exited and no live member of the group is left, or
    /// `until` passes. Returns true when the group is gone.
    fn wait_group_gone(&mut self, until: Instant) -> bool {
        loop {
            if self.exit.is_some() && self.members().is_empty() {
                return true;
            }
            let now = Instant::now();
            if now >= until {
                return false;
            }
            // While the leader lives its pidfd wakes us; after that, members are polled.
            let step = if self.exit.is_some() {
                Duration::from_millis(5).min(until - now)
            } else {
                until - now
            };
            self.poll_once(Some(step), None);
        }
    }

    /// After the leader exited (or gave up being killed): terminate what is left of its group
    /// (SIGTERM, `grace`, SIGKILL, verified by pid), read the pipes until EOF or [`LINGER`],
    /// close them and reap the leader. Idempotent.
    pub fn finish(&mut self, grace: Duration) -> Leftovers {
        let mut left = Leftovers::default();
        if self.reaped {
            return left;
        }
        if self.exit.is_none() && !self.killed {
            // Misuse: take the tree down first (once; a leader that survived SIGKILL and
            // KILL_WAIT is stuck in the kernel, e.g. writing to a frozen filesystem, and
            // waiting again would only keep the freeze longer).
            self.terminate(grace);
        }
        // Whatever is already in the pipes.
        self.poll_once(Some(Duration::ZERO), None);
        let pgid = self.pid();
        if self.exit.is_some() {
            self.reap();
            // Leftovers, cheaply: after the reap the group id stays allocated exactly as long
            // as some member of the group is left, so `kill(-pgid, 0)` failing with ESRCH
            // proves the group empty (the common case, one system call). If it succeeds, the
            // id is still pinned by our own leftovers (it cannot have been freed and handed
            // to a new group leader in between without the pid space wrapping around), and
            // `/proc` tells the live ones from zombies.
            let pinned = rustix::process::test_kill_process_group(self.pid).is_ok();
            match pinned || self.cgroup.is_some() {
                false => {}
                true => {
                    let strays = self.members();
                    let normal = matches!(self.exit, Some(AttemptEnd::Exited { .. }));
                    if !strays.is_empty() && self.keep && normal {
                        let fds: Vec<OwnedFd> = [self.stdout.take(), self.stderr.take()]
                            .into_iter()
                            .flatten()
                            .collect();
                        let drain = std::thread::Builder::new()
                            .name(format!("kept-{pgid}"))
                            .spawn(move || drain_to_eof(fds))
                            .ok();
                        left.kept = Some(KeptGroup {
                            pgid: self.pid,
                            cgroup: self.cgroup.clone(),
                            pids: strays,
                            drain,
                        });
                    } else if !strays.is_empty() {
                        left.terminated = strays;
                        self.group_outlives_leader = true;
                        self.terminate(grace);
                        left.unkillable = self.members();
                        self.group_outlives_leader = false;
                    }
                }
            }
        } else {
            left.unkillable = self.members();
        }
        let end = Instant::now() + LINGER;
        while self.stdout.is_some() || self.stderr.is_some() {
            let now = Instant::now();
            if now >= end {
                left.pipes_abandoned = true;
                break;
            }
            self.poll_once(Some(end - now), None);
        }
        self.stdout = None;
        self.stderr = None;
        self.stdin = None;
        // A leader that never died is handed to a reaper thread.
        self.reap();
        if !left.unkillable.is_empty() {
            tracing::error!(pgid, pids = ?left.unkillable, "processes survived SIGKILL (uninterruptible sleep)");
        }
        left
    }

    /// Reap the leader: at once if it exited, else in a background thread (it may sit in
    /// uninterruptible sleep; blocking here would stall the agent).
    fn reap(&mut self) {
        if self.reaped {
            return;
        }
        self.reaped = true;
        if self.exit.is_none() {
            if let Ok(Some(st)) = rustix::process::waitid(
                WaitId::PidFd(self.pidfd.as_fd()),
                WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
            ) {
                self.exit = Some(end_of(&st));
                return;
            }
            let Ok(fd) = self.pidfd_dup() else { return };
            let pid = self.pid();
            tracing::warn!(pid, "leader not dead yet; reaping it in the background");
            let _ = std::thread::Builder::new()
                .name(format!("reap-{pid}"))
                .spawn(move || {
                    let _ =
                        rustix::process::waitid(WaitId::PidFd(fd.as_fd()), WaitIdOptions::EXITED);
                });
            return;
        }
        while let Err(Errno::INTR) =
            rustix::process::waitid(WaitId::PidFd(self.pidfd.as_fd()), WaitIdOptions::EXITED)
        {
        }
    }

    /// One round: poll the open pipes, the pidfd (until the exit is seen) and `wake`; read
    /// everything available. Returns true when `wake` fired.
    fn poll_once(&mut self, timeout: Option<Duration>, wake: Option<BorrowedFd<'_>>) -> bool {
        let woken;
        let (out_ready, err_ready, pid_ready) = {
            let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(4);
            let mut slots = [usize::MAX; 4];
            if let Some(fd) = &self.stdout {
                slots[0] = fds.len();
                fds.push(PollFd::new(fd, PollFlags::IN));
            }
            if let Some(fd) = &self.stderr {
                slots[1] = fds.len();
                fds.push(PollFd::new(fd, PollFlags::IN));
            }
            if self.exit.is_none() && !self.reaped {
                slots[2] = fds.len();
                fds.push(PollFd::new(&self.pidfd, PollFlags::IN));
            }
            if let Some(w) = &wake {
                slots[3] = fds.len();
                fds.push(PollFd::from_borrowed_fd(*w, PollFlags::IN));
            }
            let ts = timeout.map(|d| Timespec {
                tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
                tv_nsec: d.subsec_nanos() as _,
            });
            match rustix::event::poll(&mut fds, ts.as_ref()) {
                Ok(_) => {}
                Err(Errno::INTR) => return false,
                Err(e) => {
                    tracing::error!(error = %e, "poll failed");
                    std::thread::sleep(Duration::from_millis(10));
                    return false;
                }
            }
            let ready = |slot: usize| slot != usize::MAX && !fds[slot].revents().is_empty();
            woken = ready(slots[3]);
            (ready(slots[0]), ready(slots[1]), ready(slots[2]))
        };
        if out_ready {
            self.read_stream(true);
        }
        if err_ready {
            self.read_stream(false);
        }
        if pid_ready {
            if let Ok(Some(st)) = rustix::process::waitid(
                WaitId::PidFd(self.pidfd.as_fd()),
                WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT,
            ) {
                self.exit = Some(end_of(&st));
            }
        }
        woken
    }

    /// Read what is available on one pipe (bounded rounds, so one busy stream cannot starve
    /// the other or the exit check); EOF closes our end.
    fn read_stream(&mut self, stdout: bool) {
        for _ in 0..16 {
            let fd = if stdout { &self.stdout } else { &self.stderr };
            let Some(fd) = fd else { return };
            match rustix::io::read(fd, &mut self.buf[..]) {
                Ok(0) => {
                    if stdout {
                        self.stdout = None;
                    } else {
                        self.stderr = None;
                    }
                    return;
                }
                Ok(n) => {
                    if stdout {
                        let data = &self.buf[..n];
                        self.stdout_tail.push(data);
                        if self.capture_limit > 0 {
                            let room = self.capture_limit.saturating_sub(self.capture.len());
                            self.capture.extend_from_slice(&data[..room.min(n)]);
                            if n > room {
                                self.capture_overflow = true;
                            }
                        }
                        if self.watch.is_some() && !self.line_seen {
                            self.scan_lines(n);
                        }
                    } else {
                        self.stderr_tail.push(&self.buf[..n]);
                    }
                }
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => return,
                Err(e) => {
                    tracing::warn!(error = %e, stdout, "read from child pipe failed; closing it");
                    if stdout {
                        self.stdout = None;
                    } else {
                        self.stderr = None;
                    }
                    return;
                }
            }
        }
    }

    fn scan_lines(&mut self, n: usize) {
        let Some(want) = &self.watch else { return };
        for &b in &self.buf[..n] {
            if b == b'\n' {
                let mut line = &self.line[..];
                if line.last() == Some(&b'\r') {
                    line = &line[..line.len() - 1];
                }
                if !self.line_overlong && line == &want[..] {
                    self.line_seen = true;
                    return;
                }
                self.line.clear();
                self.line_overlong = false;
            } else if self.line.len() < MAX_WATCHED_LINE {
                self.line.push(b);
            } else {
                self.line_overlong = true;
            }
        }
    }
}

impl Drop for Process {
    /// A process object dropped without [`Process::finish`] (a caller bailed out or panicked)
    /// still takes its whole group down: SIGKILL, then reap (in the background if needed).
    fn drop(&mut self) {
        if !self.reaped {
            self.signal_group(Signal::KILL);
            let end = Instant::now() + Duration::from_millis(100);
            while self.exit.is_none() && Instant::now() < end {
                self.poll_once(Some(Duration::from_millis(10)), None);
            }
            self.reap();
        }
    }
}

/// Non-blocking: how the process behind `pidfd` ended, or `None` while it runs. Does not
/// reap. A pidfd whose process was already reaped reports `SpawnFailed` with the error.
pub fn exit_of(pidfd: BorrowedFd<'_>) -> Option<AttemptEnd> {
    match rustix::process::waitid(
        WaitId::PidFd(pidfd),
        WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT,
    ) {
        Ok(Some(st)) => Some(end_of(&st)),
        Ok(None) => None,
        Err(e) => Some(AttemptEnd::SpawnFailed {
            error: format!("no longer waitable: {e}"),
        }),
    }
}

fn end_of(st: &WaitIdStatus) -> AttemptEnd {
    if let Some(code) = st.exit_status() {
        AttemptEnd::Exited { code }
    } else if let Some(signal) = st.terminating_signal() {
        AttemptEnd::Signaled { signal }
    } else {
        AttemptEnd::Exited { code: -1 }
    }
}

/// Live members of a tree: process group `pgid`, plus the cgroup's members, plus (without a
/// cgroup) the descendants of `anchor` by parent chain.
fn tree_members(pgid: i32, cgroup: Option<&Cgroup>, anchor: Option<i32>) -> Vec<i32> {
    let mut pids = live_group_members(pgid);
    let more = match (cgroup, anchor) {
        (Some(cg), _) => cg.pids(),
        (None, Some(a)) => descendants(a),
        (None, None) => Vec::new(),
    };
    for p in more {
        if !pids.contains(&p) && stat_state_pgrp(p).is_some_and(|(st, _)| st != 'Z' && st != 'X') {
            pids.push(p);
        }
    }
    pids
}

/// Live descendants of `root` (not itself), following `/proc/PID/stat` parent pids.
pub fn descendants(root: i32) -> Vec<i32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = stat_ppid(pid) {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out.remove(0);
    out
}

fn stat_ppid(pid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// Pids of the live (not zombie) members of process group `pgid`, from `/proc`.
pub fn live_group_members(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Some((state, pg)) = stat_state_pgrp(pid) {
            if pg == pgid && state != 'Z' && state != 'X' {
                out.push(pid);
            }
        }
    }
    out
}

/// State letter and process group of `pid` from `/proc/PID/stat`; `None` when it is gone.
pub fn stat_state_pgrp(pid: i32) -> Option<(char, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ppid pgrp ..." where comm may contain anything: split after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let mut it = rest.split_ascii_whitespace();
    let state = it.next()?.chars().next()?;
    let _ppid = it.next()?;
    let pgrp = it.next()?.parse().ok()?;
    Some((state, pgrp))
}
