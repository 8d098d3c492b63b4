//! The freeze engine: mount discovery and planning, syncfs + FIFREEZE in
//! dependency order, and a guard process that guarantees the thaw.
//!
//! Entry points used by the pipeline and the server:
//! - [`plan::plan_system`] builds the plan from `/proc/self/mountinfo` and the config;
//! - [`lock::OpLock::acquire`] takes the one-operation-at-a-time lock under the state dir;
//! - [`freeze`] arms the guard, then syncfs + FIFREEZE every target, returning [`Frozen`];
//! - [`Frozen::thaw`] thaws, disarms the guard and says whether the guard fired first;
//! - [`state::recover`] thaws whatever a crashed run left frozen.
//!
//! What the binary must wire up (see [`guard`]): `main` calls [`run_if_requested`] before
//! anything else (the guard is this binary re-executed with `__guard`); the CLI calls
//! [`install_signal_handlers`] at start and checks [`termination_requested`]; every
//! operation takes the lock, then calls [`state::recover`], then plans and freezes.

pub mod guard;
pub mod ioctl;
pub mod lock;
pub mod mountinfo;
pub mod plan;
pub mod state;
mod target_dir;
mod watch;

pub(crate) use target_dir::open_target_dir;

use crate::codes::{ErrorCode, Problem};
use plan::Target;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use guard::{install_signal_handlers, run_if_requested, termination_requested};

/// How to freeze.
#[derive(Debug, Clone)]
pub struct FreezeOptions {
    pub operation_id: String,
    /// Guard deadline, counted from when the guard is armed (just before the first freeze).
    pub timeout: Duration,
    /// Where the state file lives (for `quiesce recover`).
    pub state_dir: PathBuf,
}

/// Why the guard thawed on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardReason {
    Deadline,
    Signal,
    AgentDied,
    /// The agent sent a record the guard does not understand.
    BadMessage,
}

/// The guard thawed before the agent asked it to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardFired {
    pub reason: GuardReason,
    /// CLOCK_MONOTONIC nanoseconds when the guard began thawing.
    pub at_monotonic_ns: u64,
}

/// Why the agent had to thaw without its guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LostWhy {
    /// The guard process died without firing (e.g. SIGKILL).
    Died,
    /// The guard did not answer (SIGSTOP, stuck): it was killed.
    Unresponsive,
}

/// The agent found its guard gone or unresponsive while frozen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardLost {
    pub why: LostWhy,
    /// CLOCK_MONOTONIC nanoseconds when the agent noticed.
    pub at_monotonic_ns: u64,
}

/// The result of thawing.
#[derive(Debug, Clone)]
pub struct ThawOutcome {
    /// From the first FIFREEZE to the last FITHAW (by whoever thawed).
    pub frozen_ms: u64,
    /// Time spent in FITHAW calls by the agent.
    pub thaw_ms: u64,
    pub guard_fired: Option<GuardFired>,
    /// The guard was gone (killed) or did not answer (stopped) while frozen: the agent
    /// thawed by itself.
    pub guard_lost: Option<GuardLost>,
    /// ThawFailed problems, if any.
    pub problems: Vec<Problem>,
}

/// A set of frozen filesystems with an armed guard. Dropping it without calling
/// [`Frozen::thaw`] still thaws.
pub struct Frozen {
    targets: Vec<Target>,
    layers: Vec<Vec<usize>>,
    fds: Vec<OwnedFd>,
    /// Which targets the agent froze (FIFREEZE succeeded).
    frozen: Vec<bool>,
    guard: Arc<Mutex<guard::GuardHandle>>,
    /// The agent's own watch on the guard while frozen (see [`watch`]).
    watch: Option<watch::Watch>,
    timeout: Duration,
    state_dir: PathBuf,
    first_freeze_ns: Option<u64>,
    armed_at: u64,
    _log_hold: Option<LogHold>,
    finished: bool,
}

/// Logs stay in memory while held (nothing is written to a possibly frozen filesystem);
/// dropping the hold writes them.
struct LogHold;

impl LogHold {
    fn new() -> LogHold {
        crate::logging::hold();
        LogHold
    }
}

impl Drop for LogHold {
    fn drop(&mut self) {
        crate::logging::release();
    }
}

/// Read CLOCK_MONOTONIC in nanoseconds (comparable across processes).
pub fn monotonic_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// How long the guard may take to start.
const GUARD_READY_WITHIN: Duration = Duration::from_secs(5);
/// How long to wait for a disarmed guard to exit.
const GUARD_EXIT_WITHIN: Duration = Duration::from_secs(3);
/// How long the guard may take to answer the agent's request to stand down.
const GUARD_YIELD_WITHIN: Duration = Duration::from_millis(500);

fn ns_to_ms(ns: u64) -> u64 {
    (ns + 500_000) / 1_000_000
}

/// Arm the guard, then syncfs + FIFREEZE each target of `plan` in dependency order
/// (independent filesystems in parallel). On any failure, what was frozen is thawed (through
/// [`Frozen::finish`], the one rollback path) before returning the problems (FreezeFailed,
/// FilesystemAlreadyFrozen, FreezeNotSupported, FreezePermissionDenied, FreezeGuardFired).
///
/// In order: open every target; start the guard and wait until it is ready; write the
/// state file (before anything is frozen, so `recover` knows); hold the logs in memory;
/// `syncfs` every target in parallel while the applications still run; arm the guard's
/// deadline; then per layer, in parallel per target: tell the guard, `syncfs` again (only
/// the last moment's writes are left), `FIFREEZE`. Nothing here writes to a file once
/// the first freeze has started.
pub fn freeze(
    plan: &plan::Plan,
    lock: &lock::OpLock,
    opts: &FreezeOptions,
) -> Result<Frozen, Vec<Problem>> {
    let layer_of = check_layers(plan)?;
    if termination_requested() {
        return Err(vec![interrupted()]);
    }
    let fds = open_targets(plan)?;
    let guard = start_guard(plan, &fds, &layer_of, lock, opts)?;
    let mut frozen = Frozen {
        targets: plan.targets.clone(),
        layers: plan.layers.clone(),
        frozen: vec![false; fds.len()],
        fds,
        guard: Arc::new(Mutex::new(guard)),
        watch: None,
        timeout: opts.timeout,
        state_dir: opts.state_dir.clone(),
        first_freeze_ns: None,
        armed_at: 0,
        _log_hold: Some(LogHold::new()),
        finished: false,
    };
    let result = frozen
        .presync()
        .and_then(|()| frozen.arm())
        .and_then(|()| frozen.freeze_layers());
    match result {
        Ok(()) => {
            frozen.start_watch();
            Ok(frozen)
        }
        Err(mut problems) => {
            problems.extend(frozen.finish().problems);
            Err(problems)
        }
    }
}

/// The layer of every target; an error if the layers do not cover each target once.
fn check_layers(plan: &plan::Plan) -> Result<Vec<usize>, Vec<Problem>> {
    let n = plan.targets.len();
    let invalid = |m: String| vec![Problem::new(ErrorCode::InvalidFreezePlan, m)];
    if n == 0 {
        return Err(invalid(
            "nothing to freeze: no filesystem was selected".into(),
        ));
    }
    let mut layer_of = vec![usize::MAX; n];
    for (l, layer) in plan.layers.iter().enumerate() {
        for &i in layer {
            if i >= n || layer_of[i] != usize::MAX {
                return Err(invalid(format!(
                    "freeze plan layers are inconsistent (target {i})"
                )));
            }
            layer_of[i] = l;
        }
    }
    if layer_of.contains(&usize::MAX) {
        return Err(invalid(
            "freeze plan layers do not cover every target".into(),
        ));
    }
    Ok(layer_of)
}

/// Our own descriptors of every target (the guard inherits them).
fn open_targets(plan: &plan::Plan) -> Result<Vec<OwnedFd>, Vec<Problem>> {
    let mut fds = Vec::with_capacity(plan.targets.len());
    let mut problems = Vec::new();
    for t in &plan.targets {
        match open_target_dir(&t.mount_point, t.major, t.minor, &t.fstype) {
            Ok(fd) => fds.push(fd),
            Err(e) => problems.push(Problem::new(ErrorCode::FreezeFailed, e.to_string())),
        }
    }
    if problems.is_empty() {
        Ok(fds)
    } else {
        Err(problems)
    }
}

/// Start the guard, wait until it is ready, then write the state file (before the first
/// freeze, listing the targets in freeze order).
fn start_guard(
    plan: &plan::Plan,
    fds: &[OwnedFd],
    layer_of: &[usize],
    lock: &lock::OpLock,
    opts: &FreezeOptions,
) -> Result<guard::GuardHandle, Vec<Problem>> {
    let failed = |m: String| vec![Problem::new(ErrorCode::FreezeFailed, m)];
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
    let fs_locks: Vec<BorrowedFd<'_>> = lock.filesystems.iter().map(|f| f.as_fd()).collect();
    let mut guard = guard::GuardHandle::spawn(
        &borrowed,
        layer_of,
        lock.file.as_fd(),
        &fs_locks,
        opts.timeout,
    )
    .map_err(|e| failed(format!("cannot start the freeze guard: {e}")))?;
    guard.wait_ready(GUARD_READY_WITHIN).map_err(failed)?;
    let state = state::StateFile::new(&opts.operation_id, Some(guard.pid()), &freeze_order(plan));
    if let Err(p) = state.write(&opts.state_dir) {
        guard.disarm_and_reap(GUARD_EXIT_WITHIN);
        return Err(vec![p]);
    }
    Ok(guard)
}

/// The plan's targets in the order they are frozen (layer by layer). `recover` thaws in
/// the reverse of this order, exactly like the normal thaw: the filesystem holding a loop
/// image is thawed before the filesystem inside the image.
pub fn freeze_order(plan: &plan::Plan) -> Vec<Target> {
    plan.layers
        .iter()
        .flatten()
        .filter_map(|&i| plan.targets.get(i).cloned())
        .collect()
}

fn interrupted() -> Problem {
    Problem::new(
        ErrorCode::Interrupted,
        "interrupted by a signal before the freeze completed; nothing is left frozen",
    )
}

fn guard_fired_problem(f: GuardFired) -> Problem {
    if f.reason == GuardReason::Signal && termination_requested() {
        return interrupted();
    }
    Problem::new(
        ErrorCode::FreezeGuardFired,
        format!(
            "the freeze guard thawed everything while freezing: {}",
            f.reason.describe()
        ),
    )
}

impl GuardReason {
    /// Why the guard fired, in words.
    pub fn describe(self) -> &'static str {
        match self {
            GuardReason::Deadline => "its deadline passed",
            GuardReason::Signal => "it was told to by a signal",
            GuardReason::AgentDied => "the agent died",
            GuardReason::BadMessage => "the agent sent a message it does not understand",
        }
    }
}

impl LostWhy {
    /// What happened to the guard, in words.
    pub fn describe(self) -> &'static str {
        match self {
            LostWhy::Died => "the freeze guard died while filesystems were frozen",
            LostWhy::Unresponsive => "the freeze guard did not answer (stopped?) and was killed",
        }
    }
}

/// One target's freeze: tell the guard, syncfs again, FIFREEZE, tell the guard how it went.
/// Returns when FIFREEZE started.
fn freeze_one(g: &guard::GuardHandle, i: usize, fd: &OwnedFd, mp: &Path) -> Result<u64, Problem> {
    if let Err(e) = g.mark(i) {
        return Err(Problem::new(
            ErrorCode::FreezeFailed,
            format!(
                "the freeze guard is gone ({e}); not freezing {}",
                mp.display()
            ),
        ));
    }
    // Errors here would be seen again by FIFREEZE's own sync.
    let _ = ioctl::syncfs(fd);
    let t0 = monotonic_ns();
    match ioctl::fifreeze(fd) {
        Ok(()) => {
            let _ = g.frozen(i);
            Ok(t0)
        }
        Err(e) => {
            let _ = g.unmark(i);
            Err(ioctl::freeze_problem(mp, e))
        }
    }
}

impl Frozen {
    /// Flush while everything still runs: the frozen window then only covers the last
    /// moment's writes.
    fn presync(&self) -> Result<(), Vec<Problem>> {
        let problems: Vec<Problem> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .fds
                .iter()
                .zip(&self.targets)
                .map(|(fd, t)| {
                    s.spawn(move || {
                        ioctl::syncfs(fd).err().map(|e| {
                            Problem::new(
                                ErrorCode::FreezeFailed,
                                format!(
                                    "syncfs of {} failed: {e}; not freezing",
                                    t.mount_point.display()
                                ),
                            )
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .filter_map(|h| h.join().unwrap_or(None))
                .collect()
        });
        if !problems.is_empty() {
            return Err(problems);
        }
        if termination_requested() {
            return Err(vec![interrupted()]);
        }
        Ok(())
    }

    /// Start the guard's deadline.
    fn arm(&mut self) -> Result<(), Vec<Problem>> {
        self.armed_at = monotonic_ns();
        let arc = self.guard.clone();
        let guard = arc.lock().unwrap_or_else(|e| e.into_inner());
        guard.arm(self.armed_at).map_err(|e| {
            vec![Problem::new(
                ErrorCode::FreezeFailed,
                format!("the freeze guard is gone ({e}); not freezing"),
            )]
        })
    }

    /// FIFREEZE layer by layer, the members of a layer in parallel.
    fn freeze_layers(&mut self) -> Result<(), Vec<Problem>> {
        let layers = self.layers.clone();
        for layer in &layers {
            if let Some(f) = self.guard_fired() {
                return Err(vec![guard_fired_problem(f)]);
            }
            if termination_requested() {
                return Err(vec![interrupted()]);
            }
            let problems = self.freeze_layer(layer);
            if !problems.is_empty() {
                return Err(problems);
            }
        }
        match self.guard_fired() {
            Some(f) => Err(vec![guard_fired_problem(f)]),
            None => Ok(()),
        }
    }

    fn freeze_layer(&mut self, layer: &[usize]) -> Vec<Problem> {
        let arc = self.guard.clone();
        let g = arc.lock().unwrap_or_else(|e| e.into_inner());
        let g = &*g;
        let (fds, targets) = (&self.fds, &self.targets);
        let results: Vec<(usize, Result<u64, Problem>)> = std::thread::scope(|s| {
            let handles: Vec<_> = layer
                .iter()
                .map(|&i| s.spawn(move || freeze_one(g, i, &fds[i], &targets[i].mount_point)))
                .collect();
            layer
                .iter()
                .zip(handles)
                .map(|(&i, h)| {
                    let r = h.join().unwrap_or_else(|_| {
                        Err(Problem::new(
                            ErrorCode::FreezeFailed,
                            "freezing thread panicked",
                        ))
                    });
                    (i, r)
                })
                .collect()
        });
        let mut problems = Vec::new();
        for (i, r) in results {
            match r {
                Ok(t0) => {
                    self.frozen[i] = true;
                    self.first_freeze_ns = Some(self.first_freeze_ns.map_or(t0, |f| f.min(t0)));
                }
                Err(p) => problems.push(p),
            }
        }
        problems
    }

    /// Has the guard already thawed (deadline, signal)? Non-blocking.
    pub fn guard_fired(&self) -> Option<GuardFired> {
        self.guard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .poll()
            .fired
    }

    /// Mount points frozen, in freeze order.
    pub fn mount_points(&self) -> Vec<PathBuf> {
        self.layers
            .iter()
            .flatten()
            .filter(|&&i| self.frozen[i])
            .map(|&i| self.targets[i].mount_point.clone())
            .collect()
    }

    /// The targets frozen, in plan order.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// CLOCK_MONOTONIC nanoseconds when the first FIFREEZE started.
    pub fn first_freeze_ns(&self) -> u64 {
        self.first_freeze_ns.unwrap_or(self.armed_at)
    }

    /// The guard's process id.
    pub fn guard_pid(&self) -> u32 {
        self.guard.lock().unwrap_or_else(|e| e.into_inner()).pid()
    }

    /// Thaw everything in reverse dependency order, disarm the guard, report.
    pub fn thaw(mut self) -> ThawOutcome {
        self.finish()
    }

    /// What the agent froze, in thaw order (the reverse of the freeze order).
    fn thaw_list(&self) -> Vec<(OwnedFd, PathBuf)> {
        let mut list = Vec::new();
        for layer in self.layers.iter().rev() {
            for &i in layer.iter().rev() {
                if self.frozen[i] {
                    if let Ok(fd) = rustix::io::fcntl_dupfd_cloexec(&self.fds[i], 3) {
                        list.push((fd, self.targets[i].mount_point.clone()));
                    }
                }
            }
        }
        list
    }

    /// Start the agent's own watch on the guard (pidfd and deadline).
    fn start_watch(&mut self) {
        let deadline = self
            .armed_at
            .saturating_add(u64::try_from(self.timeout.as_nanos()).unwrap_or(u64::MAX));
        self.watch = watch::Watch::start(self.guard.clone(), self.thaw_list(), deadline);
    }

    /// Thaw what the agent froze, reverse layer order; (thaw problems, ns in FITHAW, end).
    fn thaw_ours(&self) -> (Vec<Problem>, u64, Option<u64>) {
        let t = watch::thaw_all(&self.thaw_list());
        (t.problems, t.thaw_ns, t.last_thaw)
    }

    /// The one way out, for a success and for every failure: agree with the guard on who
    /// thaws (the agent, unless the guard already fired: then nothing is thawed twice),
    /// thaw, disarm and reap the guard, release the logs, remove the state file.
    fn finish(&mut self) -> ThawOutcome {
        self.finished = true;
        // The watch thawed already if it found the guard gone or stopped.
        let watched = self.watch.take().and_then(watch::Watch::stop);
        let arc = self.guard.clone();
        let mut guard = arc.lock().unwrap_or_else(|e| e.into_inner());
        let (guard_lost, agent_thaws) = match watched {
            Some((lost, _)) => (Some(lost), false),
            None => {
                let answer = guard.yield_thaw(GUARD_YIELD_WITHIN);
                let why = match answer {
                    guard::YieldAnswer::Gone => Some(LostWhy::Died),
                    guard::YieldAnswer::Killed => Some(LostWhy::Unresponsive),
                    _ => None,
                };
                let lost = why.map(|why| GuardLost {
                    why,
                    at_monotonic_ns: monotonic_ns(),
                });
                (lost, answer != guard::YieldAnswer::Fired)
            }
        };
        let (mut problems, thaw_ns, mut last_thaw) = if agent_thaws {
            self.thaw_ours()
        } else {
            (Vec::new(), 0, None)
        };
        if let Some((_, thawed)) = watched {
            problems.extend(thawed.problems);
            last_thaw = thawed.last_thaw;
        }
        let status = guard.disarm_and_reap(GUARD_EXIT_WITHIN);
        drop(guard);
        self._log_hold = None;
        if problems.is_empty() {
            if let Err(p) = state::remove(&self.state_dir) {
                problems.push(p);
            }
        }
        let end = match (last_thaw, status.done_ns) {
            (Some(a), Some(b)) => a.max(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => status
                .fired
                .map_or_else(monotonic_ns, |f| f.at_monotonic_ns),
        };
        ThawOutcome {
            frozen_ms: ns_to_ms(end.saturating_sub(self.first_freeze_ns())),
            thaw_ms: ns_to_ms(thaw_ns),
            guard_fired: status.fired,
            guard_lost,
            problems,
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.finish();
        }
    }
}

// The server keeps a Frozen between its prepare and release requests, across threads.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Frozen>();
};
