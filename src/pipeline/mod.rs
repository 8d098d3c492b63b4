//! The run pipeline: pre hooks -> syncfs + freeze -> snapshot -> thaw -> post hooks, and the
//! rules that turn what happened into a status, error codes and a consistency level
//! (README "Consistency rules"; the decision itself is [`judge`]).
//!
//! [`Operation`] holds one run's state so that the same steps serve `quiesce snapshot`
//! ([`run_snapshot`], all steps in one go) and the host-driven mode (`prepare` = pre hooks +
//! freeze, `release` = thaw + post hooks, the platform taking the snapshot in between).
//!
//! Rules, where the README's "Consistency rules" leave room:
//! - A pre hook failure with `continue_on_failure = true` lowers the target to file-system
//!   (or crash, without freezing); the remaining pre hooks still run.
//! - A pre hook failure with `continue_on_failure = false` stops the pre phase. If the freeze
//!   plan holds a single volume, a crash-consistent snapshot is taken regardless, without
//!   freezing (Azure's single-disk rule); otherwise no snapshot is taken and the run fails.
//! - A freeze failure does not stop the snapshot: it is taken crash-consistent (degraded).
//! - A post hook failure never lowers the consistency: with `continue_on_failure = true` the
//!   run is degraded, otherwise it fails.
//! - Post hooks run in reverse order for every hook whose pre was started, even if it failed.

pub mod arithmetic;
pub mod judge;
pub mod opid;

use crate::codes::{ErrorCode, Problem, Warning};
use crate::config::{Config, FreezeConfig, HookConfig};
use crate::freeze::{self, lock::OpLock, plan::Plan, FreezeOptions, Frozen};
use crate::hooks::{self, hold::Held, Limits, Phase, RunContext, ScriptResult};
use crate::report::{Caller, Consistency, Report, SnapshotRef, Status, Timings};
use crate::snapshot::{self, Provider, SnapshotContext};
use judge::{Facts, PreOutcome};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Grace between SIGTERM and SIGKILL for hook process groups.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// Options of one `quiesce snapshot` run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Use this operation id instead of a generated one.
    pub operation_id: Option<String>,
}

/// Run the whole flow once and return its report (the catalog and metrics are written by
/// [`finish`]).
pub fn run_snapshot(cfg: &Config, opts: &RunOptions) -> Report {
    match begin_snapshot(cfg, opts) {
        Ok(op) => run_begun(op),
        Err(report) => *report,
    }
}

/// The first step of [`run_snapshot`]: take the locks, recover, plan. Nothing is written to
/// the catalog or the log file before this returns, so a caller can keep a run refused by
/// the lock (see [`refused_by_lock`]) away from files on a filesystem another run froze.
pub fn begin_snapshot(cfg: &Config, opts: &RunOptions) -> Result<Operation, Box<Report>> {
    let op_id = opts.operation_id.clone().unwrap_or_else(opid::generate);
    Operation::begin(Arc::new(cfg.clone()), op_id, &FreezeScope::Plan)
}

/// Was this run refused because another operation holds the lock? Such a run must not touch
/// its catalog, metrics or log file: they may live on a filesystem the other run holds
/// frozen, and writing there would wait until that run thaws.
pub fn refused_by_lock(report: &Report) -> bool {
    report
        .errors
        .iter()
        .any(|e| e.code == ErrorCode::OperationInProgress)
}

/// The rest of [`run_snapshot`] once [`begin_snapshot`] succeeded.
pub fn run_begun(mut op: Operation) -> Report {
    op.pre_hooks();
    op.freeze();
    op.snapshot();
    op.thaw();
    op.post_hooks();
    op.into_report()
}

/// What an operation freezes.
///
/// In JSON: `"plan"`, `"sync-only"`, `"nothing"` or `{"mounts": ["/srv", ...]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FreezeScope {
    /// The configured freeze plan (`freeze.enabled` decides whether anything is frozen).
    #[default]
    Plan,
    /// Exactly these mount points (whatever `freeze.enabled` says); one that is not a
    /// mount point, cannot be frozen, is excluded by `freeze.exclude` or is where the
    /// snapshot provider writes is refused. An empty list freezes nothing.
    Mounts(Vec<PathBuf>),
    /// syncfs the configured plan's filesystems and freeze nothing (the caller freezes).
    SyncOnly,
    /// Hooks only: no syncfs, no freeze.
    Nothing,
}

impl FreezeScope {
    /// Does this scope freeze filesystems itself (given the configuration)?
    fn freezes(&self, cfg: &Config) -> bool {
        match self {
            FreezeScope::Plan => cfg.freeze.enabled,
            FreezeScope::Mounts(m) => !m.is_empty(),
            FreezeScope::SyncOnly | FreezeScope::Nothing => false,
        }
    }
}

/// The plan an operation of `scope` works on (None: nothing to sync or freeze).
fn plan_for(
    cfg: &Config,
    scope: &FreezeScope,
    never_freeze: &[PathBuf],
) -> Result<Option<Plan>, Vec<Problem>> {
    match scope {
        FreezeScope::Plan if cfg.freeze.enabled => {
            freeze::plan::plan_system(&cfg.freeze, never_freeze).map(Some)
        }
        FreezeScope::Plan | FreezeScope::Nothing => Ok(None),
        FreezeScope::SyncOnly => freeze::plan::plan_system(&cfg.freeze, never_freeze).map(Some),
        FreezeScope::Mounts(mounts) if mounts.is_empty() => Ok(None),
        FreezeScope::Mounts(mounts) => plan_mounts(&cfg.freeze, mounts, never_freeze).map(Some),
    }
}

/// A plan that freezes exactly `mounts`, or the reasons why it cannot.
fn plan_mounts(
    freeze_cfg: &FreezeConfig,
    mounts: &[PathBuf],
    never_freeze: &[PathBuf],
) -> Result<Plan, Vec<Problem>> {
    let cfg = FreezeConfig {
        enabled: true,
        include: mounts.to_vec(),
        ..freeze_cfg.clone()
    };
    let reword = |p: Problem| Problem {
        message: p.message.replacen("freeze.include ", "requested mount ", 1),
        ..p
    };
    let plan = freeze::plan::plan_system(&cfg, never_freeze)
        .map_err(|ps| ps.into_iter().map(reword).collect::<Vec<_>>())?;
    let missing: Vec<Problem> = mounts
        .iter()
        .map(|m| freeze::plan::normalize(m))
        .filter(|m| {
            !plan
                .targets
                .iter()
                .any(|t| t.mount_point == *m || t.also_mounted_at.contains(m))
        })
        .map(|m| {
            Problem::new(
                ErrorCode::InvalidFreezePlan,
                format!(
                    "requested mount {}: excluded by freeze.exclude; not frozen",
                    m.display()
                ),
            )
        })
        .collect();
    if missing.is_empty() {
        Ok(plan)
    } else {
        Err(missing)
    }
}

/// What the pre phase decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Snapshot with freezing (if enabled).
    Normal,
    /// Snapshot without freezing: crash-consistent regardless (single-volume rule).
    CrashOnly,
    /// No snapshot: the job fails.
    Abort,
}

/// One run in progress.
pub struct Operation {
    cfg: Arc<Config>,
    pub operation_id: String,
    /// Who asked for it (recorded in the report).
    pub caller: Caller,
    scope: FreezeScope,
    /// Guard deadline for the freeze (the config's `freeze.timeout` unless overridden, e.g. by
    /// a host-driven prepare's deadline).
    pub freeze_timeout: Duration,
    /// The platform takes the snapshot between prepare and release (`quiesce serve`).
    pub host_driven: bool,
    started: Instant,
    started_at: SystemTime,
    lock: OpLock,
    plan: Option<Plan>,
    provider: Box<dyn Provider>,
    errors: Vec<Problem>,
    /// Warnings from the recovery at start (recorded in the report and the catalog).
    recovered: Vec<Problem>,
    hook_results: Vec<ScriptResult>,
    /// Indexes of hooks whose pre was started, in start order.
    started_hooks: Vec<usize>,
    held: Vec<(usize, Held)>,
    /// What each pre script left running, kept until the hook's post script has run.
    kept: Vec<(usize, crate::process::KeptGroup)>,
    /// Held hooks released at the freeze deadline while the provider was still running.
    released_at_deadline: Vec<usize>,
    all_pre_ok: bool,
    hold_lost: bool,
    mode: Mode,
    frozen: Option<Frozen>,
    freeze_ok: bool,
    snapshot_taken: bool,
    /// The provider was run (so a repeated request does not run it again).
    provider_ran: bool,
    snapshot_error: Option<Problem>,
    snapshot_end_ns: Option<u64>,
    guard_broke_consistency: bool,
    snapshots: Vec<SnapshotRef>,
    frozen_mounts: Vec<String>,
    frozen_ms: Option<u64>,
    post_failed_fatal: bool,
    serious: bool,
    timings: Timings,
}

/// The warning that records a recovery: filesystems a crashed run had left frozen were
/// thawed before this run started (`RecoveredFrozenFilesystems`).
pub fn recovered_problem(thawed: &[String]) -> Problem {
    Problem::new(
        ErrorCode::RecoveredFrozenFilesystems,
        format!(
            "thawed {} left frozen by a crashed run before starting",
            thawed.join(", ")
        ),
    )
}

impl Operation {
    /// Record in this run's report that a front end's start thawed `thawed` (left frozen by
    /// a crashed run) before this operation.
    pub fn note_recovered(&mut self, thawed: &[String]) {
        if !thawed.is_empty() {
            self.recovered.push(recovered_problem(thawed));
        }
    }
}

/// What every start does under the operation lock: thaw what a crashed run left frozen
/// (first: nothing else may wait on a frozen filesystem), then undo the views and throwaway
/// servers of a verification killed before it cleaned up (the lock says it is gone).
/// Returns the mount points thawed. The one place for this: runs, the API's start and
/// `quiesce recover` all call it.
pub fn recover_leftovers(state_dir: &Path) -> Result<Vec<String>, Problem> {
    let thawed = freeze::state::recover(state_dir);
    crate::verify::leftovers::clean(state_dir);
    let thawed = thawed?;
    if !thawed.is_empty() {
        tracing::warn!(
            ?thawed,
            "recovered filesystems left frozen by a crashed run"
        );
    }
    Ok(thawed)
}

/// [`recover_leftovers`] at a run's start: the warning to report when something was thawed;
/// a failed recovery is added to `errors`.
fn recover_at_start(state_dir: &Path, errors: &mut Vec<Problem>) -> Vec<Problem> {
    match recover_leftovers(state_dir) {
        Ok(thawed) if !thawed.is_empty() => vec![recovered_problem(&thawed)],
        Ok(_) => Vec::new(),
        Err(p) => {
            errors.push(p);
            Vec::new()
        }
    }
}

/// Take the per-filesystem lock of every target of `plan`, naming this run as the holder.
fn lock_planned(
    lock: &mut OpLock,
    plan: &freeze::plan::Plan,
    cfg: &Config,
    operation_id: &str,
) -> Result<(), Problem> {
    let devices: Vec<(u32, u32)> = plan.targets.iter().map(|t| (t.major, t.minor)).collect();
    let holder = format!(
        "quiesce pid {}, operation {operation_id}, state dir {}",
        std::process::id(),
        cfg.paths.state_dir.display()
    );
    lock.lock_filesystems(Path::new(freeze::lock::FS_LOCK_DIR), &devices, &holder)
}

impl Operation {
    /// Take the operation lock, recover what a crash left frozen, build the provider and the
    /// plan for `scope`. On failure the returned report says why (nothing was run).
    pub fn begin(
        cfg: Arc<Config>,
        operation_id: String,
        scope: &FreezeScope,
    ) -> Result<Operation, Box<Report>> {
        let started = Instant::now();
        let started_at = SystemTime::now();
        let fail = |errors: Vec<Problem>| {
            Box::new(bare_report(
                &cfg,
                &operation_id,
                started,
                started_at,
                errors,
                snapshot::from_config(&cfg.snapshot).takes_snapshots(),
            ))
        };
        let mut lock = OpLock::acquire(&cfg.paths.state_dir).map_err(|p| fail(vec![p]))?;
        let mut errors = cfg.skipped.clone();
        let recovered = recover_at_start(&cfg.paths.state_dir, &mut errors);
        let provider = snapshot::from_config(&cfg.snapshot);
        let plan = match plan_for(&cfg, scope, &provider.must_not_freeze()) {
            Ok(plan) => plan,
            Err(mut problems) => {
                errors.append(&mut problems);
                return Err(fail(errors));
            }
        };
        if let Some(plan) = plan.as_ref().filter(|_| scope.freezes(&cfg)) {
            lock_planned(&mut lock, plan, &cfg, &operation_id).map_err(|p| fail(vec![p]))?;
        }
        Ok(Operation {
            freeze_timeout: cfg.freeze.timeout,
            cfg,
            operation_id,
            caller: Caller::Cli,
            scope: scope.clone(),
            host_driven: false,
            started,
            started_at,
            lock,
            plan,
            provider,
            errors,
            recovered,
            hook_results: Vec::new(),
            started_hooks: Vec::new(),
            held: Vec::new(),
            kept: Vec::new(),
            released_at_deadline: Vec::new(),
            all_pre_ok: true,
            hold_lost: false,
            mode: Mode::Normal,
            frozen: None,
            freeze_ok: false,
            snapshot_taken: false,
            provider_ran: false,
            snapshot_error: None,
            snapshot_end_ns: None,
            guard_broke_consistency: false,
            snapshots: Vec::new(),
            frozen_mounts: Vec::new(),
            frozen_ms: None,
            post_failed_fatal: false,
            serious: false,
            timings: Timings::default(),
        })
    }

    fn interrupted(&mut self) -> bool {
        if crate::termination::requested() {
            self.interrupt(
                "interrupted by SIGTERM/SIGINT; thawed, post hooks run, no new snapshot",
            );
            return true;
        }
        false
    }

    /// Stop here: no snapshot will be taken; thaw and post hooks still run. `why` becomes
    /// the `Interrupted` error (recorded once).
    pub fn interrupt(&mut self, why: &str) {
        if !self.errors.iter().any(|e| e.code == ErrorCode::Interrupted) {
            self.errors.push(Problem::new(ErrorCode::Interrupted, why));
        }
        self.mode = Mode::Abort;
    }

    fn ctx(&self, hook: &HookConfig, phase: Phase) -> RunContext {
        // Saturating: a configured timeout may be absurdly large, and this must never panic.
        let deadline = SystemTime::now()
            .checked_add(hook.timeout)
            .unwrap_or_else(SystemTime::now);
        RunContext {
            operation_id: self.operation_id.clone(),
            hook: hook.name.clone(),
            phase,
            deadline_unix: deadline
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }

    fn single_volume(&self) -> bool {
        self.plan.as_ref().is_some_and(|p| p.targets.len() == 1)
    }

    /// Run the pre hooks in order (hold-mode hooks are started and left holding). Every
    /// hook's pre and post scripts are checked first: a hook with an unusable script runs
    /// neither (its failure follows `continue_on_failure`, with the script's code).
    pub fn pre_hooks(&mut self) {
        let t = Instant::now();
        // A skipped Azure plugin counts as a failed pre script with continueBackupOnFailure.
        if !self.cfg.skipped.is_empty() {
            self.all_pre_ok = false;
        }
        let cfg = Arc::clone(&self.cfg);
        let refused: Vec<_> = cfg.hooks.iter().map(hooks::validate).collect();
        for (i, hook) in cfg.hooks.iter().enumerate() {
            if self.interrupted() {
                break;
            }
            let failure = match &refused[i] {
                Some((phase, code, message)) => {
                    let ctx = self.ctx(hook, *phase);
                    let spec = if *phase == Phase::Pre {
                        &hook.pre
                    } else {
                        &hook.post
                    };
                    let mut r = ScriptResult::empty(spec.as_ref().expect("checked script"), &ctx);
                    r.error = Some(*code);
                    r.message = message.clone();
                    Some(r)
                }
                None => self.run_pre(i, hook),
            };
            if let Some(result) = failure {
                self.all_pre_ok = false;
                let code = result.error.unwrap_or(ErrorCode::PreScriptExecutionFailed);
                self.errors
                    .push(Problem::new(code, result.message.clone()).with_hook(hook.name.clone()));
                self.hook_results.push(result);
                if !hook.continue_on_failure {
                    self.mode = if self.single_volume() && self.takes_snapshots() {
                        Mode::CrashOnly
                    } else {
                        Mode::Abort
                    };
                    break;
                }
            }
        }
        self.timings.pre_ms = Some(ms(t.elapsed()));
    }

    /// Run one checked hook's pre script (a post-only hook just joins the post phase);
    /// returns its result when it failed.
    fn run_pre(&mut self, i: usize, hook: &HookConfig) -> Option<ScriptResult> {
        self.started_hooks.push(i);
        let spec = hook.pre.as_ref()?;
        let limits = Limits {
            timeout: hook.timeout,
            retries: hook.pre_retries,
            kill_grace: KILL_GRACE,
        };
        let ctx = self.ctx(hook, Phase::Pre);
        if hook.hold {
            return match hooks::hold::start_held(spec, &ctx, limits) {
                Ok(held) => {
                    self.hook_results.push(held.pre_result().clone());
                    self.held.push((i, held));
                    None
                }
                Err(result) => Some(result),
            };
        }
        let (result, kept) = hooks::run_pre_keeping(spec, &ctx, limits);
        if let Some(k) = kept {
            self.kept.push((i, k));
        }
        if result.succeeded() {
            self.hook_results.push(result);
            None
        } else {
            Some(result)
        }
    }

    /// syncfs + freeze the plan (when enabled and the pre phase allows it); with the
    /// sync-only scope, syncfs alone.
    pub fn freeze(&mut self) {
        if self.interrupted() || self.mode != Mode::Normal {
            return;
        }
        let Some(plan) = &self.plan else { return };
        if plan.targets.is_empty() {
            return;
        }
        let t = Instant::now();
        if self.scope == FreezeScope::SyncOnly {
            let problems = sync_targets(plan);
            self.errors.extend(problems);
            self.timings.freeze_ms = Some(ms(t.elapsed()));
            return;
        }
        let opts = FreezeOptions {
            operation_id: self.operation_id.clone(),
            timeout: self.freeze_timeout,
            state_dir: self.cfg.paths.state_dir.clone(),
        };
        match freeze::freeze(plan, &self.lock, &opts) {
            Ok(frozen) => {
                self.frozen_mounts = frozen
                    .mount_points()
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect();
                self.frozen = Some(frozen);
                self.freeze_ok = true;
            }
            Err(mut problems) => self.errors.append(&mut problems),
        }
        self.timings.freeze_ms = Some(ms(t.elapsed()));
    }

    /// Take the snapshot through the provider, then check that every hold and the freeze
    /// were still in place when it completed.
    pub fn snapshot(&mut self) {
        if self.provider_ran
            || self.interrupted()
            || self.mode == Mode::Abort
            || !self.provider.takes_snapshots()
        {
            return;
        }
        self.provider_ran = true;
        let t = Instant::now();
        let frozen_targets: Vec<_> = match (&self.frozen, &self.plan) {
            (Some(_), Some(plan)) => plan.targets.clone(),
            _ => Vec::new(),
        };
        let ctx = SnapshotContext {
            operation_id: &self.operation_id,
            frozen: &frozen_targets,
            timeout: self.cfg.snapshot.timeout,
        };
        // A hold never outlives the freeze: if the provider is still running at the guard's
        // deadline, the held hooks are released then (the snapshot may still complete, at a
        // consistency the report will not overstate).
        let hold_deadline = self.time_left_frozen().filter(|_| !self.held.is_empty());
        let (provider, held) = (&mut self.provider, &self.held);
        let (taken, released) = std::thread::scope(|s| {
            let (done, finished) = std::sync::mpsc::channel::<()>();
            let watcher = hold_deadline.map(|left| {
                s.spawn(move || {
                    let mut released = Vec::new();
                    if finished.recv_timeout(left)
                        == Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                    {
                        tracing::warn!(
                            "freeze deadline reached during the snapshot: releasing held hooks"
                        );
                        for (i, h) in held {
                            // A hook that already died lost its hold; it is not "released".
                            if h.lost().is_none() && h.release_trigger().pull() {
                                released.push(*i);
                            }
                        }
                    }
                    released
                })
            });
            let taken = provider.take(&ctx);
            drop(done);
            let released = watcher
                .map(|w| w.join().unwrap_or_default())
                .unwrap_or_default();
            (taken, released)
        });
        self.released_at_deadline = released;
        match taken {
            Ok(refs) => {
                self.snapshots = refs;
                self.snapshot_taken = true;
            }
            Err(e) => {
                let problem = e.to_problem();
                self.snapshot_error = Some(problem.clone());
                self.errors.push(problem);
            }
        }
        self.snapshot_end_ns = Some(freeze::monotonic_ns());
        self.timings.snapshot_ms = Some(ms(t.elapsed()));
        self.check_holds();
    }

    /// What is left of the freeze guard's deadline (None when nothing is frozen).
    fn time_left_frozen(&self) -> Option<Duration> {
        let frozen = self.frozen.as_ref()?;
        let since_freeze =
            Duration::from_nanos(freeze::monotonic_ns().saturating_sub(frozen.first_freeze_ns()));
        Some(self.freeze_timeout.saturating_sub(since_freeze))
    }

    /// What the provider made, or why it failed (None: the provider has not run).
    pub fn snapshot_result(&self) -> Option<Result<&[SnapshotRef], &Problem>> {
        if !self.provider_ran {
            return None;
        }
        Some(match &self.snapshot_error {
            Some(p) => Err(p),
            None => Ok(&self.snapshots),
        })
    }

    /// Does the configured provider take snapshots (rather than the caller)?
    pub fn provider_takes_snapshots(&self) -> bool {
        self.provider.takes_snapshots()
    }

    /// Mark the moment the platform's snapshot completed (host-driven mode), then check holds.
    /// Does nothing when the provider already took the snapshot inside this operation.
    pub fn snapshot_completed_externally(&mut self) {
        if self.provider_ran {
            return;
        }
        if self.mode != Mode::Abort {
            self.snapshot_taken = true;
        }
        self.snapshot_end_ns = Some(freeze::monotonic_ns());
        self.check_holds();
    }

    fn check_holds(&mut self) {
        for (i, held) in &self.held {
            if self.released_at_deadline.contains(i) {
                // Released at the freeze deadline: the guard's report says what that cost.
                continue;
            }
            if let Some(reason) = held.lost() {
                self.hold_lost = true;
                self.errors.push(
                    Problem::new(
                        ErrorCode::HoldLost,
                        format!(
                            "the held hook lost its hold before the snapshot completed: {reason}"
                        ),
                    )
                    .with_hook(self.cfg.hooks[*i].name.clone()),
                );
            }
        }
    }

    /// Thaw (the guard is disarmed) and note whether the guard had to thaw first.
    pub fn thaw(&mut self) {
        let Some(frozen) = self.frozen.take() else {
            return;
        };
        let outcome = frozen.thaw();
        self.timings.thaw_ms = Some(outcome.thaw_ms);
        self.frozen_ms = Some(outcome.frozen_ms);
        if !outcome.problems.is_empty() {
            self.serious = true;
        }
        self.errors.extend(outcome.problems);
        if let Some(lost) = outcome.guard_lost {
            // Without its guard the agent thawed at once: the freeze held only until then.
            let before_end = self
                .snapshot_end_ns
                .is_none_or(|end| lost.at_monotonic_ns < end);
            self.guard_broke_consistency |= before_end;
            self.errors.push(Problem::new(
                ErrorCode::FreezeGuardLost,
                format!("{}; quiesce thawed by itself", lost.why.describe()),
            ));
        }
        if let Some(fired) = outcome.guard_fired {
            let before_end = self
                .snapshot_end_ns
                .is_none_or(|end| fired.at_monotonic_ns < end);
            if before_end {
                self.guard_broke_consistency = true;
                self.errors.push(Problem::new(
                    ErrorCode::FreezeGuardFired,
                    format!(
                        "the freeze guard thawed ({:?}) before the snapshot completed; the \
                         snapshot is not file-system consistent",
                        fired.reason
                    ),
                ));
            }
        }
    }

    /// Release held hooks, then run post hooks in reverse order of the pre hooks started.
    pub fn post_hooks(&mut self) {
        let t = Instant::now();
        let started: Vec<usize> = self.started_hooks.iter().rev().copied().collect();
        let cfg = Arc::clone(&self.cfg);
        for i in started {
            let hook = &cfg.hooks[i];
            let limits = Limits {
                timeout: hook.timeout,
                retries: hook.post_retries,
                kill_grace: KILL_GRACE,
            };
            let ctx = self.ctx(hook, Phase::Post);
            let mut result = if let Some(pos) = self.held.iter().position(|(h, _)| *h == i) {
                let (_, held) = self.held.remove(pos);
                held.release(&ctx, limits)
            } else if let Some(spec) = &hook.post {
                hooks::run_script(spec, &ctx, limits)
            } else {
                self.end_leftovers(i, None);
                continue;
            };
            self.end_leftovers(i, Some(&mut result));
            if let Some(code) = result.error {
                if !hook.continue_on_failure {
                    self.post_failed_fatal = true;
                }
                self.errors
                    .push(Problem::new(code, result.message.clone()).with_hook(hook.name.clone()));
            }
            self.hook_results.push(result);
        }
        self.timings.post_ms = Some(ms(t.elapsed()));
    }

    /// Terminate what hook `i`'s pre script left running (its post script, if any, ran).
    fn end_leftovers(&mut self, i: usize, post: Option<&mut ScriptResult>) {
        if let Some(pos) = self.kept.iter().position(|(h, _)| *h == i) {
            let (_, kept) = self.kept.remove(pos);
            hooks::end_leftovers(kept, KILL_GRACE, post);
        }
    }

    /// Mount points frozen by this operation (empty when nothing is frozen). The guard may
    /// have thawed them at its deadline since.
    pub fn frozen_mounts(&self) -> &[String] {
        if self.frozen.is_some() {
            &self.frozen_mounts
        } else {
            &[]
        }
    }

    /// Errors recorded so far.
    pub fn errors(&self) -> &[Problem] {
        &self.errors
    }

    /// True when the pre phase decided that no snapshot may be taken.
    pub fn aborted(&self) -> bool {
        self.mode == Mode::Abort
    }

    fn takes_snapshots(&self) -> bool {
        self.host_driven || self.provider.takes_snapshots()
    }

    /// What this run did, for [`judge::judge`].
    fn facts(&self) -> Facts {
        Facts {
            takes_snapshots: self.takes_snapshots(),
            has_pre_hooks: self.cfg.hooks.iter().any(|h| h.pre.is_some())
                || !self.cfg.skipped.is_empty(),
            meant_to_freeze: self.scope.freezes(&self.cfg),
            plan_has_targets: self.plan.as_ref().is_some_and(|p| !p.targets.is_empty()),
            pre: match self.mode {
                Mode::Abort => PreOutcome::Aborted,
                Mode::CrashOnly => PreOutcome::FailedCrashOnly,
                Mode::Normal if !self.all_pre_ok => PreOutcome::FailedContinued,
                Mode::Normal => PreOutcome::AllOk,
            },
            hold_lost: self.hold_lost,
            froze: self.freeze_ok,
            guard_fired_before_snapshot: self.guard_broke_consistency,
            snapshot_taken: self.snapshot_taken,
            serious: self.serious,
            post_failed_fatal: self.post_failed_fatal,
            any_error: !self.errors.is_empty(),
        }
    }

    /// Build the report. Retention is applied after a successful snapshot.
    pub fn into_report(mut self) -> Report {
        if self.frozen.is_some() {
            // Never leave anything frozen, whatever the caller forgot.
            self.thaw();
        }
        if self.snapshot_taken && !self.snapshots.is_empty() {
            if let Err(e) = self.provider.prune(&self.snapshots) {
                self.errors
                    .push(Problem::new(e.code(), format!("retention: {e}")));
            }
        }
        let (status, consistency, target) = judge::judge(&self.facts());
        self.timings.total_ms = ms(self.started.elapsed());
        let mut warnings = self.cfg.warnings.clone();
        warnings.extend(self.recovered.drain(..).map(Warning::from));
        if let Some(plan) = self
            .plan
            .as_ref()
            .filter(|_| self.scope == FreezeScope::Plan)
        {
            if plan.targets.is_empty() {
                warnings.push(
                    Problem::new(
                        ErrorCode::InvalidFreezePlan,
                        "freezing is enabled but no filesystem is eligible; nothing was frozen",
                    )
                    .into(),
                );
            }
        }
        Report {
            operation_id: self.operation_id,
            caller: self.caller,
            started_at: rfc3339(self.started_at),
            finished_at: rfc3339(SystemTime::now()),
            status,
            consistency,
            target_consistency: target,
            errors: self.errors,
            warnings,
            snapshots: self.snapshots,
            timings: self.timings,
            frozen_ms: self.frozen_ms,
            frozen: self.frozen_mounts,
            hooks: self.hook_results,
            verification: None,
        }
    }
}

/// What a fully successful run of `cfg` reaches.
pub fn target_consistency(cfg: &Config, takes_snapshots: bool) -> Consistency {
    target_for(cfg, cfg.freeze.enabled, takes_snapshots)
}

/// What a fully successful run reaches when it does (or does not) freeze.
fn target_for(cfg: &Config, freezes: bool, takes_snapshots: bool) -> Consistency {
    if !takes_snapshots {
        Consistency::None
    } else if cfg.hooks.iter().any(|h| h.pre.is_some()) || !cfg.skipped.is_empty() {
        Consistency::Application
    } else if freezes {
        Consistency::FileSystem
    } else {
        Consistency::Crash
    }
}

/// A report for a run that stopped before running anything.
pub fn bare_report(
    cfg: &Config,
    operation_id: &str,
    started: Instant,
    started_at: SystemTime,
    errors: Vec<Problem>,
    takes_snapshots: bool,
) -> Report {
    Report {
        operation_id: operation_id.to_string(),
        caller: Caller::Cli,
        started_at: rfc3339(started_at),
        finished_at: rfc3339(SystemTime::now()),
        status: Status::Failed,
        consistency: Consistency::None,
        target_consistency: target_consistency(cfg, takes_snapshots),
        errors,
        warnings: cfg.warnings.clone(),
        snapshots: Vec::new(),
        timings: Timings {
            total_ms: ms(started.elapsed()),
            ..Timings::default()
        },
        frozen_ms: None,
        frozen: Vec::new(),
        hooks: Vec::new(),
        verification: None,
    }
}

/// syncfs every target of `plan`; what failed.
fn sync_targets(plan: &Plan) -> Vec<Problem> {
    let mut problems = Vec::new();
    for t in &plan.targets {
        let result = std::fs::File::open(&t.mount_point)
            .map_err(|e| e.to_string())
            .and_then(|f| freeze::ioctl::syncfs(&f).map_err(|e| e.to_string()));
        if let Err(e) = result {
            problems.push(Problem::new(
                ErrorCode::FreezeFailed,
                format!("syncfs {}: {e}", t.mount_point.display()),
            ));
        }
    }
    problems
}

use crate::time::ms;
pub use crate::time::rfc3339;

/// After a run (never while frozen): record it in the catalog and write the metrics file.
/// Failures here become `CatalogError` warnings, not failures: the snapshot exists whatever
/// the catalog says. A run the catalog could not record still writes its metrics, with
/// `quiesce_last_run_recorded 0`, so the failure is seen.
pub fn finish(cfg: &Config, report: &mut Report, kind: crate::catalog::RunKind) {
    use crate::catalog::Catalog;
    let recorded = match Catalog::open(&cfg.paths.catalog) {
        Ok(mut catalog) => match catalog.record(report, kind) {
            Ok(()) => {
                apply_retention(cfg, &mut catalog, report);
                Ok(catalog)
            }
            Err(e) => Err((e, Some(catalog))),
        },
        Err(e) => Err((e, None)),
    };
    if let Err((e, _)) = &recorded {
        tracing::error!(error = %e, "cannot record the run in the catalog");
        report.warnings.push(e.problem().into());
    }
    let Some(path) = &cfg.paths.metrics_file else {
        return;
    };
    let text = match recorded {
        Ok(catalog) => catalog
            .totals()
            .map(|totals| {
                let mut text = crate::metrics::render(Some(report), &totals);
                text.push_str(&catalog.verified_metrics_text());
                text
            })
            .map_err(|e| e.to_string()),
        Err((_, catalog)) => {
            // The totals, if the catalog can still be read; else they are left out.
            let totals = match catalog {
                Some(c) => c.totals().ok(),
                None => Catalog::open_read_only(&cfg.paths.catalog)
                    .ok()
                    .flatten()
                    .and_then(|c| c.totals().ok()),
            };
            Ok(crate::metrics::render_unrecorded(report, totals.as_ref()))
        }
    };
    let result = text
        .and_then(|text| crate::metrics::write_textfile(path, &text).map_err(|e| e.to_string()));
    if let Err(e) = result {
        tracing::error!(error = %e, "cannot write the metrics file");
        report
            .warnings
            .push(Problem::new(ErrorCode::CatalogError, format!("metrics file: {e}")).into());
    }
}

/// After a run was recorded: delete what `[catalog]` no longer keeps. A failure is a
/// warning on the run (it was recorded; the catalog only keeps more than it should).
fn apply_retention(cfg: &Config, catalog: &mut crate::catalog::Catalog, report: &mut Report) {
    let keep = cfg.catalog;
    if let Err(e) = catalog.apply_retention(keep.keep_runs, keep.keep_days, SystemTime::now()) {
        tracing::error!(error = %e, "catalog retention failed");
        let mut warning: Warning = e.problem().into();
        warning.message = format!("catalog retention: {}", warning.message);
        report.warnings.push(warning);
    }
}

/// The Prometheus text for `/metrics`: the last run and the totals, read from the catalog
/// (so runs made by other processes, e.g. a timer, show too).
pub fn metrics_text(cfg: &Config) -> String {
    use crate::catalog::Catalog;
    match Catalog::open_read_only(&cfg.paths.catalog) {
        Ok(Some(c)) => c.metrics_text(),
        _ => crate::metrics::render_last_run(None, &Default::default()),
    }
}
