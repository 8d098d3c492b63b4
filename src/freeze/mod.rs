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

use crate::codes::{ErrorCode, Problem};
use plan::Target;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
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
}

/// The guard thawed before the agent asked it to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardFired {
    pub reason: GuardReason,
    /// CLOCK_MONOTONIC nanoseconds when the guard began thawing.
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
    guard: Mutex<guard::GuardHandle>,
    state_dir: PathBuf,
    first_freeze_ns: u64,
    finished: bool,
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

/// Open a mount point for the freeze ioctls and check that it still holds the planned
/// filesystem (a mount may have been stacked on top since planning). btrfs reports a
/// per-subvolume `st_dev`, so for it the filesystem type is checked instead.
pub(crate) fn open_target_dir(
    mount_point: &Path,
    major: u32,
    minor: u32,
    fstype: &str,
) -> Result<OwnedFd, String> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        mount_point,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("cannot open {}: {e}", mount_point.display()))?;
    if fstype == "btrfs" {
        const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;
        let sfs = rustix::fs::fstatfs(&fd)
            .map_err(|e| format!("cannot statfs {}: {e}", mount_point.display()))?;
        if sfs.f_type as i64 != BTRFS_SUPER_MAGIC {
            return Err(format!(
                "{} no longer holds the planned btrfs (something else is mounted there)",
                mount_point.display()
            ));
        }
    } else if fstype != "bcachefs" {
        let st = rustix::fs::fstat(&fd)
            .map_err(|e| format!("cannot stat {}: {e}", mount_point.display()))?;
        let (ma, mi) = (rustix::fs::major(st.st_dev), rustix::fs::minor(st.st_dev));
        if (ma, mi) != (major, minor) {
            return Err(format!(
                "{} no longer holds the planned filesystem {major}:{minor} (found {ma}:{mi})",
                mount_point.display()
            ));
        }
    }
    Ok(fd)
}

fn ns_to_ms(ns: u64) -> u64 {
    (ns + 500_000) / 1_000_000
}

/// Arm the guard, then syncfs + FIFREEZE each target of `plan` in dependency order
/// (independent filesystems in parallel). On any failure, what was frozen is thawed before
/// returning the problems (FreezeFailed, FilesystemAlreadyFrozen, FreezeNotSupported,
/// FreezePermissionDenied).
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
    let n = plan.targets.len();
    if n == 0 {
        return Err(vec![Problem::new(
            ErrorCode::InvalidFreezePlan,
            "nothing to freeze: no filesystem was selected",
        )]);
    }
    let mut layer_of = vec![usize::MAX; n];
    for (l, layer) in plan.layers.iter().enumerate() {
        for &i in layer {
            if i >= n || layer_of[i] != usize::MAX {
                return Err(vec![Problem::new(
                    ErrorCode::InvalidFreezePlan,
                    format!("freeze plan layers are inconsistent (target {i})"),
                )]);
            }
            layer_of[i] = l;
        }
    }
    if layer_of.contains(&usize::MAX) {
        return Err(vec![Problem::new(
            ErrorCode::InvalidFreezePlan,
            "freeze plan layers do not cover every target",
        )]);
    }
    if termination_requested() {
        return Err(vec![interrupted()]);
    }

    // Our own descriptors (the guard inherits them).
    let mut fds = Vec::with_capacity(n);
    let mut problems = Vec::new();
    for t in &plan.targets {
        match open_target_dir(&t.mount_point, t.major, t.minor, &t.fstype) {
            Ok(fd) => fds.push(fd),
            Err(e) => problems.push(Problem::new(ErrorCode::FreezeFailed, e)),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }

    // The guard, ready before anything is frozen.
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
    let mut guard =
        guard::GuardHandle::spawn(&borrowed, &layer_of, lock.file.as_fd(), opts.timeout).map_err(
            |e| {
                vec![Problem::new(
                    ErrorCode::FreezeFailed,
                    format!("cannot start the freeze guard: {e}"),
                )]
            },
        )?;
    guard
        .wait_ready(GUARD_READY_WITHIN)
        .map_err(|e| vec![Problem::new(ErrorCode::FreezeFailed, e)])?;

    // The state file, before the first freeze.
    let state = state::StateFile::new(&opts.operation_id, Some(guard.pid()), &freeze_order(plan));
    if let Err(p) = state.write(&opts.state_dir) {
        guard.disarm_and_reap(GUARD_EXIT_WITHIN);
        return Err(vec![p]);
    }
    crate::logging::hold();

    let fail = |guard: &mut guard::GuardHandle,
                fds: &[OwnedFd],
                frozen: &[bool],
                mut problems: Vec<Problem>| {
        // Thaw what we froze, in reverse layer order.
        for layer in plan.layers.iter().rev() {
            for &i in layer.iter().rev() {
                if frozen[i] {
                    if let Err(e) = ioctl::thaw(&fds[i]) {
                        problems.push(ioctl::thaw_problem(&plan.targets[i].mount_point, e));
                    }
                }
            }
        }
        let thaw_failed = problems.iter().any(|p| p.code == ErrorCode::ThawFailed);
        if thaw_failed {
            // Let the guard try with its own descriptors before it goes.
            let _ = guard.request_thaw();
            std::thread::sleep(Duration::from_millis(300));
        }
        guard.disarm_and_reap(GUARD_EXIT_WITHIN);
        crate::logging::release();
        if !thaw_failed {
            if let Err(p) = state::remove(&opts.state_dir) {
                problems.push(p);
            }
        }
        problems
    };

    // Flush while everything still runs: the frozen window then only covers the last
    // moment's writes.
    let pre_sync: Vec<Option<Problem>> = std::thread::scope(|s| {
        let handles: Vec<_> = fds
            .iter()
            .zip(&plan.targets)
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
            .map(|h| h.join().unwrap_or(None))
            .collect()
    });
    let problems: Vec<Problem> = pre_sync.into_iter().flatten().collect();
    let none_frozen = vec![false; n];
    if !problems.is_empty() {
        return Err(fail(&mut guard, &fds, &none_frozen, problems));
    }
    if termination_requested() {
        return Err(fail(&mut guard, &fds, &none_frozen, vec![interrupted()]));
    }

    let armed_at = monotonic_ns();
    if let Err(e) = guard.arm(armed_at) {
        let p = Problem::new(
            ErrorCode::FreezeFailed,
            format!("the freeze guard is gone ({e}); not freezing"),
        );
        return Err(fail(&mut guard, &fds, &none_frozen, vec![p]));
    }

    let mut frozen = vec![false; n];
    let mut first_freeze_ns: Option<u64> = None;
    let mut problems = Vec::new();
    for layer in &plan.layers {
        let status = guard.poll();
        if let Some(f) = status.fired {
            problems.push(guard_fired_problem(f));
            break;
        }
        if termination_requested() {
            problems.push(interrupted());
            break;
        }
        let g = &guard;
        let results: Vec<(usize, Result<u64, Problem>)> = std::thread::scope(|s| {
            let handles: Vec<_> = layer
                .iter()
                .map(|&i| {
                    let fd = &fds[i];
                    let mp = &plan.targets[i].mount_point;
                    s.spawn(move || {
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
                            Ok(()) => Ok(t0),
                            Err(e) => {
                                let _ = g.unmark(i);
                                Err(ioctl::freeze_problem(mp, e))
                            }
                        }
                    })
                })
                .collect();
            layer
                .iter()
                .zip(handles)
                .map(|(&i, h)| {
                    (
                        i,
                        h.join().unwrap_or_else(|_| {
                            Err(Problem::new(
                                ErrorCode::FreezeFailed,
                                "freezing thread panicked",
                            ))
                        }),
                    )
                })
                .collect()
        });
        for (i, r) in results {
            match r {
                Ok(t0) => {
                    frozen[i] = true;
                    first_freeze_ns = Some(first_freeze_ns.map_or(t0, |f| f.min(t0)));
                }
                Err(p) => problems.push(p),
            }
        }
        if !problems.is_empty() {
            break;
        }
    }
    if problems.is_empty() {
        if let Some(f) = guard.poll().fired {
            problems.push(guard_fired_problem(f));
        }
    }
    if !problems.is_empty() {
        return Err(fail(&mut guard, &fds, &frozen, problems));
    }

    Ok(Frozen {
        targets: plan.targets.clone(),
        layers: plan.layers.clone(),
        fds,
        frozen,
        guard: Mutex::new(guard),
        state_dir: opts.state_dir.clone(),
        first_freeze_ns: first_freeze_ns.unwrap_or(armed_at),
        finished: false,
    })
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
    let why = match f.reason {
        GuardReason::Deadline => "its deadline passed",
        GuardReason::Signal => "it was told to by a signal",
        GuardReason::AgentDied => "the agent died",
    };
    Problem::new(
        ErrorCode::FreezeGuardFired,
        format!("the freeze guard thawed everything while freezing: {why}"),
    )
}

impl Frozen {
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
        self.first_freeze_ns
    }

    /// The guard's process id.
    pub fn guard_pid(&self) -> u32 {
        self.guard.lock().unwrap_or_else(|e| e.into_inner()).pid()
    }

    /// Thaw everything in reverse dependency order, disarm the guard, report.
    pub fn thaw(mut self) -> ThawOutcome {
        self.finish()
    }

    fn finish(&mut self) -> ThawOutcome {
        self.finished = true;
        let mut problems = Vec::new();
        let mut thaw_ns = 0u64;
        let mut last_thaw: Option<u64> = None;
        for layer in self.layers.iter().rev() {
            for &i in layer.iter().rev() {
                if !self.frozen[i] {
                    continue;
                }
                let t0 = monotonic_ns();
                let r = ioctl::thaw(&self.fds[i]);
                let t1 = monotonic_ns();
                thaw_ns += t1 - t0;
                match r {
                    Ok(ioctl::Thawed::Thawed) => last_thaw = Some(t1),
                    // Somebody thawed it already (the guard, if it fired).
                    Ok(ioctl::Thawed::WasNotFrozen) => {}
                    Err(e) => problems.push(ioctl::thaw_problem(&self.targets[i].mount_point, e)),
                }
            }
        }
        let guard = self.guard.get_mut().unwrap_or_else(|e| e.into_inner());
        if !problems.is_empty() {
            // Let the guard try too, with its own descriptors.
            let _ = guard.request_thaw();
            std::thread::sleep(Duration::from_millis(300));
        }
        let status = guard.disarm_and_reap(GUARD_EXIT_WITHIN);
        crate::logging::release();
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
            frozen_ms: ns_to_ms(end.saturating_sub(self.first_freeze_ns)),
            thaw_ms: ns_to_ms(thaw_ns),
            guard_fired: status.fired,
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
