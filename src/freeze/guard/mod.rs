//! The freeze guard: a separate process that guarantees the thaw.
//!
//! A frozen filesystem stays frozen until somebody thaws it; the kernel never does. If
//! quiesce hung, crashed or was killed while filesystems were frozen, every writer on them
//! would hang. So before the first `FIFREEZE`, quiesce starts a guard: the same binary
//! re-executed (`/proc/self/exe __guard ...`), which
//!
//! - holds its own descriptors of every target (inherited: `FD_CLOEXEC` is cleared only
//!   in the child, between fork and exec), so it can thaw without opening any path;
//! - inherits the operation lock, so no new operation (or `recover`) can start while it
//!   may still thaw;
//! - locks its memory (`mlockall`), starts its own session (no terminal signals), writes
//!   to no file, and sets up everything before it reports ready;
//! - thaws every filesystem whose freeze the agent started (reverse layer order, one
//!   worker thread per filesystem so that one blocked `FITHAW` cannot hold up the others):
//!   * at the deadline (counted from [`GuardHandle::arm`], just before the first freeze),
//!   * when the agent asks (control pipe; the agent's SIGTERM/SIGINT handler does this),
//!   * when the agent dies, even by SIGKILL: the agent holds the only write end of the
//!     control pipe, so its death is an instant EOF. (`PR_SET_PDEATHSIG` is not used: it
//!     fires when the parent *thread* exits, not the process);
//!   * on its own SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 or SIGUSR2.
//!
//!   It never depends on the freezing thread returning: `FIFREEZE` can block.
//!   A guard that fired thaws each filesystem once, and never again: what is frozen later
//!   is somebody else's freeze. The one exception is a `FIFREEZE` that was still in flight
//!   when it fired: when the agent reports it complete ([`protocol::Command::Frozen`]), or
//!   dies before saying, that one is thawed once more.
//! - reports on a second pipe that it is ready, and whether, when and why it fired.
//!
//! Before the agent thaws by itself it asks the guard to yield ([`protocol::Command::Yield`]):
//! the guard answers that it will not fire any more, or that it already fired (then the
//! agent thaws nothing: a second thaw could undo a freeze somebody made since). After its
//! thaw the agent disarms the guard, which exits without touching anything.
//!
//! Wiring: `main` must call [`run_if_requested`] first thing; the CLI must call
//! [`install_signal_handlers`] at start and poll [`termination_requested`].
use super::ioctl;
use super::{monotonic_ns, GuardFired, GuardReason};
pub use protocol::DecodeError;
use rustix::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use rustix::io::{Errno, FdFlags};
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{mpsc, Arc, Mutex, Once};
use std::time::{Duration, Instant};

/// `argv[1]` that turns the quiesce binary into a guard.
pub const GUARD_ARG: &str = "__guard";

pub mod protocol;
use protocol::{Command, Report, REC};

/// Write a whole record to a (possibly non-blocking) pipe, waiting for room if needed.
fn write_record(fd: BorrowedFd<'_>, rec: &[u8; REC]) -> Result<(), Errno> {
    loop {
        match rustix::io::write(fd, rec) {
            Ok(n) if n == REC => return Ok(()),
            Ok(_) => return Err(Errno::IO), // cannot happen for a pipe write < PIPE_BUF
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => {
                let mut pfd = [rustix::event::PollFd::new(
                    &fd,
                    rustix::event::PollFlags::OUT,
                )];
                let _ = rustix::event::poll(&mut pfd, Some(&timespec(Duration::from_millis(50))));
            }
            Err(e) => return Err(e),
        }
    }
}

fn timespec(d: Duration) -> rustix::time::Timespec {
    rustix::time::Timespec {
        tv_sec: d.as_secs() as i64,
        tv_nsec: d.subsec_nanos() as _,
    }
}

// ---- which program is the guard ----

static PROGRAM: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Use another executable as the guard (it must call [`run_if_requested`] first thing).
/// By default the running executable (`/proc/self/exe`) is used, which is right for the
/// quiesce binary; tests and benchmarks whose own `main` cannot dispatch set this.
pub fn set_program(path: PathBuf) {
    *PROGRAM.lock().unwrap_or_else(|e| e.into_inner()) = Some(path);
}

fn program() -> PathBuf {
    PROGRAM
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_else(|| PathBuf::from("/proc/self/exe"))
}

// ---- agent-side signal handling ----

/// A descriptor number reserved for the process lifetime: `/dev/null` normally, a
/// duplicate of the armed guard's control pipe while a guard is armed. The signal handler
/// writes a thaw request to it; because the number is never closed (only atomically
/// replaced with `dup3`), the handler can never write to an unrelated file.
static SIGNAL_SLOT: AtomicI32 = AtomicI32::new(-1);
static DEV_NULL: AtomicI32 = AtomicI32::new(-1);
static INSTALL: Once = Once::new();

/// Install SIGTERM/SIGINT/SIGQUIT handlers for the agent. Call once at start (the CLI and
/// the server do). On the first such signal: the armed guard (if any) is told to thaw at
/// once, and [`termination_requested`] becomes true so the pipeline can stop; a second
/// signal exits the process immediately (the guard then sees the agent die and thaws).
/// After this call those signals no longer terminate the process by themselves: the
/// caller must poll [`termination_requested`].
pub fn install_signal_handlers() -> std::io::Result<()> {
    let mut result = Ok(());
    INSTALL.call_once(|| {
        result = (|| {
            let slot = rustix::fs::open(
                "/dev/null",
                rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )?;
            let null = rustix::fs::open(
                "/dev/null",
                rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )?;
            DEV_NULL.store(null.into_raw_fd(), Ordering::SeqCst);
            SIGNAL_SLOT.store(slot.into_raw_fd(), Ordering::SeqCst);
            let seen = Arc::new(AtomicBool::new(false));
            use signal_hook::consts::{SIGINT, SIGQUIT, SIGTERM};
            for (sig, status) in [(SIGTERM, 143), (SIGINT, 130), (SIGQUIT, 131)] {
                // Second signal: exit at once (registered first, so it sees the flag as
                // it was before this delivery).
                signal_hook::flag::register_conditional_shutdown(sig, status, seen.clone())?;
                let seen = seen.clone();
                // SAFETY: the action only stores to atomics and calls write(2) on a
                // descriptor number that stays open for the life of the process
                // (SIGNAL_SLOT is never closed, only replaced atomically with dup3), all
                // async-signal-safe; it allocates nothing and takes no lock.
                unsafe {
                    signal_hook::low_level::register(sig, move || {
                        seen.store(true, Ordering::SeqCst);
                        crate::termination::note();
                        let fd = SIGNAL_SLOT.load(Ordering::SeqCst);
                        if fd >= 0 {
                            // SAFETY: see above; the slot is open for the process lifetime.
                            let b = BorrowedFd::borrow_raw(fd);
                            let _ = rustix::io::write(b, &protocol::THAW_RECORD);
                        }
                    })?;
                }
            }
            Ok(())
        })();
    });
    result
}

/// Has SIGTERM/SIGINT/SIGQUIT been received since [`install_signal_handlers`]?
pub fn termination_requested() -> bool {
    crate::termination::requested()
}

/// Point the signal slot at `fd` (the armed guard's control pipe) or back at /dev/null.
fn set_signal_slot(fd: Option<BorrowedFd<'_>>) {
    let slot = SIGNAL_SLOT.load(Ordering::SeqCst);
    if slot < 0 {
        return;
    }
    let null = DEV_NULL.load(Ordering::SeqCst);
    // SAFETY: SLOT and DEV_NULL were opened by install_signal_handlers and are never
    // closed; ManuallyDrop keeps these temporary owners from closing them.
    let mut slot_owned = std::mem::ManuallyDrop::new(unsafe { OwnedFd::from_raw_fd(slot) });
    let src = match fd {
        Some(f) => f,
        // SAFETY: DEV_NULL stays open for the process lifetime (see above).
        None => unsafe { BorrowedFd::borrow_raw(null) },
    };
    let _ = rustix::io::dup3(src, &mut slot_owned, rustix::io::DupFlags::CLOEXEC);
}

// ---- agent side: the handle on a running guard ----

/// What the agent knows about its guard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuardStatus {
    pub ready: bool,
    pub fired: Option<GuardFired>,
    /// When the guard's last thaw round that thawed something ended (CLOCK_MONOTONIC ns).
    pub done_ns: Option<u64>,
    /// The guard has closed its report pipe (exited).
    pub exited: bool,
    /// The guard answered a [`Command::Yield`]: it will not thaw on its own.
    pub yielded: bool,
    /// Records that could not be decoded (a mismatched guard binary).
    pub bad_records: u32,
}

/// What the guard answered when the agent asked to thaw by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum YieldAnswer {
    /// The guard will not fire: the agent thaws.
    Yielded,
    /// The guard had already fired: the agent must not thaw again.
    Fired,
    /// The guard is gone without having fired (killed).
    Gone,
    /// No answer in time (stopped, or stuck): the guard was killed; the agent thaws.
    Killed,
}

/// The agent's handle on a running guard.
pub struct GuardHandle {
    child: Option<std::process::Child>,
    pid: u32,
    /// Readable once the guard has exited; also used to kill it without a pid race.
    pidfd: Option<OwnedFd>,
    control: OwnedFd,
    report: OwnedFd,
    buf: Vec<u8>,
    status: GuardStatus,
}

impl GuardHandle {
    /// Start a guard holding `targets` (with each one's layer) and the lock descriptor.
    /// `fs_locks` (the per-filesystem locks) are inherited without being named: the guard
    /// keeps them open, hence locked, until it exits.
    /// It is not armed (no deadline) until [`GuardHandle::arm`].
    pub fn spawn(
        targets: &[BorrowedFd<'_>],
        layer_of: &[usize],
        lock: BorrowedFd<'_>,
        fs_locks: &[BorrowedFd<'_>],
        timeout: Duration,
    ) -> std::io::Result<GuardHandle> {
        use rustix::pipe::{pipe_with, PipeFlags};
        use std::os::unix::process::CommandExt;
        let (ctl_r, ctl_w) = pipe_with(PipeFlags::CLOEXEC)?;
        let (rep_r, rep_w) = pipe_with(PipeFlags::CLOEXEC)?;
        rustix::fs::fcntl_setfl(&ctl_w, rustix::fs::OFlags::NONBLOCK)?;
        rustix::fs::fcntl_setfl(&rep_r, rustix::fs::OFlags::NONBLOCK)?;

        let mut inherit: Vec<RawFd> = vec![ctl_r.as_raw_fd(), rep_w.as_raw_fd(), lock.as_raw_fd()];
        inherit.extend(targets.iter().map(|f| f.as_raw_fd()));
        inherit.extend(fs_locks.iter().map(|f| f.as_raw_fd()));
        let target_arg: Vec<String> = targets
            .iter()
            .zip(layer_of)
            .map(|(f, l)| format!("{}@{l}", f.as_raw_fd()))
            .collect();

        let mut cmd = std::process::Command::new(program());
        cmd.arg0("quiesce-guard")
            .arg(GUARD_ARG)
            .arg(format!(
                "timeout_ns={}",
                timeout.as_nanos().min(u64::MAX as u128)
            ))
            .arg(format!("control={}", ctl_r.as_raw_fd()))
            .arg(format!("report={}", rep_w.as_raw_fd()))
            .arg(format!("lock={}", lock.as_raw_fd()))
            .arg(format!("targets={}", target_arg.join(",")))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .current_dir("/")
            .env_clear();
        // SAFETY: the closure runs in the child between fork and exec; it only makes
        // raw syscalls (fcntl, setsid) through rustix, which are async-signal-safe, and
        // allocates nothing (`inherit` was built before the fork).
        unsafe {
            cmd.pre_exec(move || {
                for &fd in &inherit {
                    // SAFETY: these descriptors are open in the parent at fork time (the
                    // parent holds them across spawn), hence open in the child.
                    let b = BorrowedFd::borrow_raw(fd);
                    rustix::io::fcntl_setfd(b, FdFlags::empty())?;
                }
                // Own session: terminal signals (Ctrl-C, hangup) do not reach the guard.
                rustix::process::setsid()?;
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        drop(ctl_r);
        drop(rep_w);
        // The child is not reaped before this handle says so: the pid cannot be reused.
        let pidfd = rustix::process::Pid::from_raw(child.id() as i32).and_then(|pid| {
            rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
        });
        Ok(GuardHandle {
            pidfd,
            pid: child.id(),
            child: Some(child),
            control: ctl_w,
            report: rep_r,
            buf: Vec::new(),
            status: GuardStatus::default(),
        })
    }

    /// The guard's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Wait until the guard reports ready (signal handlers, workers and mlockall in
    /// place). On failure the guard is killed and reaped.
    pub fn wait_ready(&mut self, within: Duration) -> Result<(), String> {
        let start = Instant::now();
        while !self.status.ready {
            if self.status.exited {
                self.kill_and_reap();
                return Err(format!(
                    "the freeze guard ({} {GUARD_ARG}) exited before it was ready (does that \
                     program's main call quiesce::freeze::run_if_requested() first?)",
                    program().display()
                ));
            }
            let left = within.saturating_sub(start.elapsed());
            if left.is_zero() {
                self.kill_and_reap();
                return Err(format!(
                    "the freeze guard was not ready within {} ms",
                    within.as_millis()
                ));
            }
            self.wait_report(left.min(Duration::from_millis(100)));
        }
        // Route the agent's SIGTERM/SIGINT handler to this guard from now on.
        set_signal_slot(Some(self.control.as_fd()));
        Ok(())
    }

    fn send(&self, c: Command) -> Result<(), Errno> {
        write_record(self.control.as_fd(), &c.encode())
    }

    /// Start the deadline: the guard thaws at `start_ns + timeout`.
    pub fn arm(&self, start_ns: u64) -> Result<(), Errno> {
        self.send(Command::Arm { start_ns })
    }

    /// Target `idx` is about to be frozen: the guard will thaw it when it fires.
    pub fn mark(&self, idx: usize) -> Result<(), Errno> {
        self.send(Command::Mark { target: idx as u32 })
    }

    /// The freeze of target `idx` failed (e.g. EBUSY: somebody else's freeze): the guard
    /// must leave it alone.
    pub fn unmark(&self, idx: usize) -> Result<(), Errno> {
        self.send(Command::Unmark { target: idx as u32 })
    }

    /// The freeze of target `idx` completed.
    pub fn frozen(&self, idx: usize) -> Result<(), Errno> {
        self.send(Command::Frozen { target: idx as u32 })
    }

    /// A duplicate of the guard's pidfd (readable once it has exited).
    pub fn pidfd_dup(&self) -> Option<OwnedFd> {
        self.pidfd
            .as_ref()
            .and_then(|fd| rustix::io::fcntl_dupfd_cloexec(fd, 3).ok())
    }

    /// Has the guard process exited (its pidfd is readable)? Falls back to the report
    /// pipe's EOF when no pidfd could be opened.
    pub fn has_exited(&mut self) -> bool {
        self.take_records();
        match &self.pidfd {
            Some(fd) => {
                let mut pfd = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
                matches!(rustix::event::poll(&mut pfd, Some(&timespec(Duration::ZERO))), Ok(n) if n > 0)
            }
            None => self.status.exited,
        }
    }

    /// The agent is about to thaw by itself: ask the guard to stand down, and wait up to
    /// `within` for its answer. A guard that does not answer (SIGSTOPped, stuck) is killed
    /// and waited for, so that it can never thaw behind the agent's back later.
    pub fn yield_thaw(&mut self, within: Duration) -> YieldAnswer {
        let sent = self.send(Command::Yield).is_ok();
        let start = Instant::now();
        loop {
            self.take_records();
            if self.status.fired.is_some() {
                return YieldAnswer::Fired;
            }
            if self.status.yielded {
                return YieldAnswer::Yielded;
            }
            if !sent || self.status.exited || self.has_exited() {
                return YieldAnswer::Gone;
            }
            if start.elapsed() >= within {
                break;
            }
            self.wait_report(
                within
                    .saturating_sub(start.elapsed())
                    .min(Duration::from_millis(20)),
            );
        }
        self.kill_and_wait(Duration::from_secs(2));
        if self.status.fired.is_some() {
            YieldAnswer::Fired
        } else {
            YieldAnswer::Killed
        }
    }

    /// SIGKILL the guard (through its pidfd: never another process) and wait up to
    /// `within` for it to be gone; then read what it reported before dying.
    pub fn kill_and_wait(&mut self, within: Duration) {
        if let Some(fd) = &self.pidfd {
            let _ = rustix::process::pidfd_send_signal(fd, rustix::process::Signal::KILL);
        } else if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
        }
        let start = Instant::now();
        while !self.has_exited() && start.elapsed() < within {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.take_records();
    }

    fn take_records(&mut self) {
        let mut chunk = [0u8; REC * 16];
        loop {
            match rustix::io::read(&self.report, &mut chunk) {
                Ok(0) => {
                    self.status.exited = true;
                    break;
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(Errno::INTR) => continue,
                Err(_) => break, // EAGAIN: nothing more now
            }
        }
        let whole = self.buf.len() / REC * REC;
        let recs: Vec<u8> = self.buf.drain(..whole).collect();
        for r in recs.chunks_exact(REC) {
            let mut rec = [0u8; REC];
            rec.copy_from_slice(r);
            match Report::decode(&rec) {
                Ok(Report::Ready) => self.status.ready = true,
                Ok(Report::Fired { reason, at_ns }) => {
                    if self.status.fired.is_none() {
                        self.status.fired = Some(GuardFired {
                            reason,
                            at_monotonic_ns: at_ns,
                        });
                    }
                }
                Ok(Report::Done { at_ns }) => {
                    self.status.done_ns = Some(self.status.done_ns.map_or(at_ns, |d| d.max(at_ns)))
                }
                Ok(Report::Yielded) => self.status.yielded = true,
                Err(_) => self.status.bad_records += 1,
            }
        }
    }

    fn wait_report(&mut self, within: Duration) {
        let mut pfd = [rustix::event::PollFd::new(
            &self.report,
            rustix::event::PollFlags::IN,
        )];
        let _ = rustix::event::poll(&mut pfd, Some(&timespec(within)));
        self.take_records();
    }

    /// What the guard has reported so far. Never blocks.
    pub fn poll(&mut self) -> GuardStatus {
        self.take_records();
        self.status
    }

    /// Tell the guard to exit without thawing (the agent has thawed), then wait for it
    /// to exit (up to `within`) and reap it. Returns everything it reported.
    pub fn disarm_and_reap(&mut self, within: Duration) -> GuardStatus {
        set_signal_slot(None);
        let _ = self.send(Command::Disarm);
        let start = Instant::now();
        while !self.status.exited && start.elapsed() < within {
            self.wait_report(
                within
                    .saturating_sub(start.elapsed())
                    .min(Duration::from_millis(100)),
            );
        }
        self.take_records();
        self.reap();
        self.status
    }

    fn reap(&mut self) {
        if let Some(mut child) = self.child.take() {
            match child.try_wait() {
                Ok(Some(_)) => {}
                _ if self.status.exited => {
                    let _ = child.wait();
                }
                _ => {
                    // Still running (stuck in the kernel?): reap it in the background so
                    // that no zombie is left and nothing here blocks.
                    let _ = std::thread::Builder::new()
                        .name("guard-reaper".into())
                        .spawn(move || {
                            let _ = child.wait();
                        });
                }
            }
        }
    }

    fn kill_and_reap(&mut self) {
        set_signal_slot(None);
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
        }
        self.status.exited = true;
        self.reap();
    }
}

impl Drop for GuardHandle {
    fn drop(&mut self) {
        // Dropping the handle closes the control pipe: a guard still running sees EOF and
        // thaws what it was told about. Reap it if it is gone.
        set_signal_slot(None);
        if let Some(mut child) = self.child.take() {
            if !matches!(child.try_wait(), Ok(Some(_))) {
                let _ = std::thread::Builder::new()
                    .name("guard-reaper".into())
                    .spawn(move || {
                        let _ = child.wait();
                    });
            }
        }
    }
}

// ---- the guard process ----

/// If `argv[1]` is [`GUARD_ARG`], run the guard and never return; otherwise return at
/// once. `main` must call this before anything else.
pub fn run_if_requested() {
    let mut args = std::env::args_os();
    let _argv0 = args.next();
    if args.next().as_deref() == Some(OsStr::new(GUARD_ARG)) {
        guard_main(args.collect())
    }
}

/// The guard's main function (arguments after `__guard`). Exits the process.
pub fn guard_main(args: Vec<OsString>) -> ! {
    let code = match GuardProcess::from_args(&args) {
        Ok(g) => g.run(),
        Err(_) => 2,
    };
    std::process::exit(code)
}

struct Worker {
    request: mpsc::Sender<()>,
    busy: bool,
}

struct GuardProcess {
    control: OwnedFd,
    report: OwnedFd,
    _lock: OwnedFd,
    layer_of: Vec<usize>,
    marked: Vec<bool>,
    /// Marked, and the agent has not yet said that the freeze completed or failed.
    inflight: Vec<bool>,
    workers: Vec<Worker>,
    results: mpsc::Receiver<ThawResult>,
    timeout_ns: u64,
    deadline: Option<u64>,
    fired: Option<GuardReason>,
    /// The agent thaws by itself: never fire on the deadline or a signal any more.
    yielded: bool,
    signals: OwnedFd,
}

/// What the guard's loop does next.
enum Next {
    Continue,
    Exit,
}

fn parse_fd(s: &str) -> Result<OwnedFd, String> {
    let fd: RawFd = s.parse().map_err(|_| format!("bad fd {s:?}"))?;
    if fd < 0 {
        return Err(format!("bad fd {fd}"));
    }
    // SAFETY: the agent passed this descriptor to us by clearing its FD_CLOEXEC; check it
    // is open before taking ownership (fcntl F_GETFD fails with EBADF otherwise).
    let b = unsafe { BorrowedFd::borrow_raw(fd) };
    rustix::io::fcntl_getfd(b).map_err(|e| format!("fd {fd}: {e}"))?;
    // SAFETY: the descriptor is open and nothing else in this process owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    rustix::io::fcntl_setfd(&owned, FdFlags::CLOEXEC).map_err(|e| e.to_string())?;
    Ok(owned)
}

/// The guard's command line: `timeout_ns=N control=FD report=FD lock=FD targets=FD@L,...`.
struct GuardArgs {
    timeout_ns: u64,
    control: OwnedFd,
    report: OwnedFd,
    lock: OwnedFd,
    /// Each target's descriptor and its freeze layer.
    targets: Vec<(OwnedFd, usize)>,
}

impl GuardArgs {
    fn parse(args: &[OsString]) -> Result<GuardArgs, String> {
        let mut timeout_ns = None;
        let (mut control, mut report, mut lock) = (None, None, None);
        let mut targets: Vec<(OwnedFd, usize)> = Vec::new();
        for a in args {
            let a = a.to_str().ok_or("non-UTF-8 argument")?;
            let (k, v) = a.split_once('=').ok_or("argument without =")?;
            match k {
                "timeout_ns" => timeout_ns = Some(v.parse::<u64>().map_err(|e| e.to_string())?),
                "control" => control = Some(parse_fd(v)?),
                "report" => report = Some(parse_fd(v)?),
                "lock" => lock = Some(parse_fd(v)?),
                "targets" => {
                    for t in v.split(',').filter(|t| !t.is_empty()) {
                        let (fd, layer) = t.split_once('@').ok_or("target without @")?;
                        let layer = layer.parse::<usize>().map_err(|e| e.to_string())?;
                        targets.push((parse_fd(fd)?, layer));
                    }
                }
                _ => return Err(format!("unknown argument {k}")),
            }
        }
        let (Some(timeout_ns), Some(control), Some(report), Some(lock)) =
            (timeout_ns, control, report, lock)
        else {
            return Err("missing argument".into());
        };
        Ok(GuardArgs {
            timeout_ns,
            control,
            report,
            lock,
            targets,
        })
    }
}

/// Signals arrive on a self-pipe, polled with the control pipe. SIGPIPE must not kill the
/// guard when the agent is gone and it reports to nobody; job-control stops are ignored.
fn signal_pipe() -> Result<OwnedFd, String> {
    let (sig_r, sig_w) = rustix::pipe::pipe_with(
        rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
    )
    .map_err(|e| e.to_string())?;
    use signal_hook::consts::*;
    for sig in [SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2] {
        let w = rustix::io::fcntl_dupfd_cloexec(&sig_w, 0).map_err(|e| e.to_string())?;
        signal_hook::low_level::pipe::register(sig, w).map_err(|e| e.to_string())?;
    }
    drop(sig_w);
    let ignored = Arc::new(AtomicBool::new(false));
    for sig in [SIGPIPE, SIGTSTP, SIGTTIN, SIGTTOU] {
        signal_hook::flag::register(sig, ignored.clone()).map_err(|e| e.to_string())?;
    }
    Ok(sig_r)
}

/// Thaw results: (target, monotonic end, whether it was frozen).
type ThawResult = (usize, u64, bool);

/// One worker thread per target, created before anything is frozen, so that firing
/// allocates nothing and a FITHAW blocked on one filesystem does not delay the others.
fn spawn_thaw_workers(
    targets: Vec<OwnedFd>,
) -> Result<(Vec<Worker>, mpsc::Receiver<ThawResult>), String> {
    let (res_tx, results) = mpsc::channel::<ThawResult>();
    let mut workers = Vec::new();
    for (idx, fd) in targets.into_iter().enumerate() {
        let (tx, rx) = mpsc::channel::<()>();
        let res_tx = res_tx.clone();
        std::thread::Builder::new()
            .name(format!("thaw-{idx}"))
            .stack_size(64 * 1024)
            .spawn(move || {
                while rx.recv().is_ok() {
                    let r = ioctl::thaw(&fd);
                    let end = monotonic_ns();
                    let _ = res_tx.send((idx, end, matches!(r, Ok(ioctl::Thawed::Thawed))));
                }
            })
            .map_err(|e| e.to_string())?;
        workers.push(Worker {
            request: tx,
            busy: false,
        });
    }
    Ok((workers, results))
}

impl GuardProcess {
    fn from_args(args: &[OsString]) -> Result<GuardProcess, String> {
        let args = GuardArgs::parse(args)?;
        let signals = signal_pipe()?;
        let layer_of: Vec<usize> = args.targets.iter().map(|(_, l)| *l).collect();
        let fds = args.targets.into_iter().map(|(fd, _)| fd).collect();
        let (workers, results) = spawn_thaw_workers(fds)?;
        // The OOM killer must not pick the process that holds the thaw (best effort; a
        // write to procfs, before anything is frozen).
        let _ = std::fs::write("/proc/self/oom_score_adj", b"-1000");
        // Keep our pages in memory: no page-in stall while the system is under pressure.
        let _ = rustix::mm::mlockall(
            rustix::mm::MlockAllFlags::CURRENT | rustix::mm::MlockAllFlags::FUTURE,
        );
        let n = workers.len();
        Ok(GuardProcess {
            control: args.control,
            report: args.report,
            _lock: args.lock,
            layer_of,
            marked: vec![false; n],
            inflight: vec![false; n],
            workers,
            results,
            timeout_ns: args.timeout_ns,
            deadline: None,
            fired: None,
            yielded: false,
            signals,
        })
    }

    fn report(&self, r: Report) {
        // The agent may be gone (EPIPE, SIGPIPE is ignored); never block on it for long.
        let _ = write_record(self.report.as_fd(), &r.encode());
    }

    /// Collect finished thaws; returns the latest end time among those that thawed.
    fn collect(&mut self, wait: Option<Duration>) -> Option<u64> {
        let mut last = None;
        let mut first = true;
        loop {
            let r = match (first, wait) {
                (true, Some(d)) => self.results.recv_timeout(d).ok(),
                _ => self.results.try_recv().ok(),
            };
            first = false;
            let Some((idx, end, thawed)) = r else { break };
            self.workers[idx].busy = false;
            if thawed {
                last = Some(last.map_or(end, |l: u64| l.max(end)));
            }
        }
        last
    }

    /// Thaw every target `which` selects, highest layer first (the reverse of the freeze
    /// order), the members of a layer in parallel, waiting at most 250 ms per layer before
    /// going on. Returns when the last thaw that thawed something ended.
    fn thaw_selected(&mut self, which: &[bool]) -> Option<u64> {
        let mut last: Option<u64> = None;
        let n = self.workers.len();
        let layers = self.layer_of.iter().copied().max().map_or(0, |m| m + 1);
        for layer in (0..layers).rev() {
            for (idx, &selected) in which.iter().enumerate().take(n) {
                if selected
                    && self.layer_of[idx] == layer
                    && !self.workers[idx].busy
                    && self.workers[idx].request.send(()).is_ok()
                {
                    self.workers[idx].busy = true;
                }
            }
            let until = Instant::now() + Duration::from_millis(250);
            loop {
                let busy = (0..n).any(|i| self.layer_of[i] == layer && self.workers[i].busy);
                let now = Instant::now();
                if !busy || now >= until {
                    break;
                }
                if let Some(end) = self.collect(Some(until - now)) {
                    last = Some(last.map_or(end, |l| l.max(end)));
                }
            }
        }
        if let Some(end) = self.collect(None) {
            last = Some(last.map_or(end, |l| l.max(end)));
        }
        last
    }

    /// Thaw the selected targets and report when that ended (if it thawed anything).
    fn thaw_and_report(&mut self, which: &[bool]) {
        if let Some(end) = self.thaw_selected(which) {
            self.report(Report::Done { at_ns: end });
        }
    }

    /// Fire once: report, thaw every marked target once. Never again afterwards.
    fn fire(&mut self, reason: GuardReason) {
        if self.fired.is_some() || self.yielded {
            return;
        }
        let at = monotonic_ns();
        self.fired = Some(reason);
        self.report(Report::Fired { reason, at_ns: at });
        let marked = self.marked.clone();
        let end = self.thaw_selected(&marked).unwrap_or(at);
        self.report(Report::Done { at_ns: end });
    }

    fn any_marked(&self) -> bool {
        self.marked.iter().any(|m| *m)
    }

    /// The agent is gone (its last copy of the control pipe's write end closed).
    fn agent_gone(&mut self) {
        if self.fired.is_some() {
            // Freezes still in flight when we fired completed before the agent died.
            let inflight = self.inflight.clone();
            self.thaw_and_report(&inflight);
        } else if self.yielded {
            // The agent died while thawing: finish its thaw.
            let marked = self.marked.clone();
            self.thaw_and_report(&marked);
        } else if self.any_marked() {
            self.fire(GuardReason::AgentDied);
        }
    }

    fn command(&mut self, c: Command) -> Next {
        let valid = |t: u32, n: usize| (t as usize) < n;
        let n = self.marked.len();
        match c {
            Command::Arm { start_ns } if self.deadline.is_none() => {
                self.deadline = Some(start_ns.saturating_add(self.timeout_ns));
            }
            Command::Mark { target } if valid(target, n) => {
                self.marked[target as usize] = true;
                self.inflight[target as usize] = true;
            }
            Command::Unmark { target } if valid(target, n) => {
                self.marked[target as usize] = false;
                self.inflight[target as usize] = false;
            }
            Command::Frozen { target } if valid(target, n) => {
                let t = target as usize;
                let was_inflight = std::mem::replace(&mut self.inflight[t], false);
                if self.fired.is_some() && was_inflight {
                    // This freeze completed after we had thawed: it is ours, thaw it once.
                    let mut one = vec![false; n];
                    one[t] = true;
                    self.thaw_and_report(&one);
                }
            }
            Command::Thaw => self.fire(GuardReason::Signal),
            Command::Yield if self.fired.is_none() => {
                self.yielded = true;
                self.report(Report::Yielded);
            }
            Command::Disarm => return Next::Exit,
            _ => {}
        }
        Next::Continue
    }

    /// Wait for the control pipe or a signal until `timeout`; (control ready, signal seen).
    fn wait(&self, timeout: Option<Duration>) -> (bool, bool) {
        use rustix::event::{PollFd, PollFlags};
        let mut pfds = [
            PollFd::new(&self.control, PollFlags::IN),
            PollFd::new(&self.signals, PollFlags::IN),
        ];
        let ts = timeout.map(timespec);
        match rustix::event::poll(&mut pfds, ts.as_ref()) {
            Ok(_) => (!pfds[0].revents().is_empty(), !pfds[1].revents().is_empty()),
            Err(_) => (false, false), // EINTR: loop
        }
    }

    /// Read what the agent sent; `Exit` on EOF or disarm.
    fn read_control(&mut self, buf: &mut Vec<u8>) -> Next {
        let mut chunk = [0u8; REC * 16];
        match rustix::io::read(&self.control, &mut chunk) {
            Ok(0) => {
                self.agent_gone();
                return Next::Exit;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => {}
        }
        let whole = buf.len() / REC * REC;
        let recs: Vec<u8> = buf.drain(..whole).collect();
        for r in recs.chunks_exact(REC) {
            let mut rec = [0u8; REC];
            rec.copy_from_slice(r);
            let next = match Command::decode(&rec) {
                Ok(c) => self.command(c),
                Err(_) => {
                    // A record we do not understand: the agent is not the program we
                    // were built with. Thaw rather than guess.
                    self.fire(GuardReason::BadMessage);
                    Next::Continue
                }
            };
            if let Next::Exit = next {
                return Next::Exit;
            }
        }
        Next::Continue
    }

    fn run(mut self) -> i32 {
        self.report(Report::Ready);
        let mut buf: Vec<u8> = Vec::with_capacity(REC * 64);
        loop {
            let now = monotonic_ns();
            let live = self.fired.is_none() && !self.yielded;
            if let Some(d) = self.deadline.filter(|_| live) {
                if now >= d {
                    self.fire(GuardReason::Deadline);
                    continue;
                }
            }
            let timeout = self
                .deadline
                .filter(|_| live)
                .map(|d| Duration::from_nanos(d.saturating_sub(now)));
            let (ctl_ready, sig_ready) = self.wait(timeout);
            if sig_ready {
                let mut drain = [0u8; 64];
                while matches!(rustix::io::read(&self.signals, &mut drain), Ok(n) if n > 0) {}
                self.fire(GuardReason::Signal);
            }
            if ctl_ready {
                if let Next::Exit = self.read_control(&mut buf) {
                    return 0;
                }
            }
        }
    }
}
