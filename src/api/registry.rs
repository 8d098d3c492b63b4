//! The registry's state machine: one active operation, the finished ones remembered.

use super::{ApiError, OpState, OpStatus, PrepareAnswer, PrepareRequest};
use crate::codes::{ErrorCode, Problem};
use crate::config::Config;
use crate::pipeline::{self, opid, Operation};
use crate::report::{Report, SnapshotRef};
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

/// Finished operations remembered for idempotent repeats and status.
pub const REMEMBERED: usize = 256;

/// Grace after the deadline before the watchdog finishes an unreleased operation (the
/// guard has thawed at the deadline itself).
const WATCHDOG_GRACE: Duration = Duration::from_millis(500);

enum Phase {
    /// prepare is running (pre hooks, freeze).
    Preparing,
    /// Prepared, waiting for snapshot or release.
    Prepared {
        op: Box<Operation>,
        answer: PrepareAnswer,
        /// When the guard thaws at the latest (its deadline counts from the freeze).
        thaws_at: Instant,
    },
    /// The provider is taking the snapshot (`releasing == false`), or thaw and post hooks
    /// run (`releasing == true`); the operation is out of the registry meanwhile.
    Busy {
        answer: PrepareAnswer,
        releasing: bool,
        thaws_at: Instant,
    },
}

impl Phase {
    /// The prepare answer as it stands now (None while preparing): state and what is still
    /// frozen.
    fn answer_now(&self) -> Option<PrepareAnswer> {
        let (answer, state, frozen, thaws_at) = match self {
            Phase::Preparing => return None,
            Phase::Prepared {
                answer,
                op,
                thaws_at,
            } => (answer, answer.state, op.frozen_mounts(), *thaws_at),
            Phase::Busy {
                answer,
                releasing,
                thaws_at,
            } => {
                let state = if *releasing {
                    OpState::Releasing
                } else {
                    answer.state
                };
                (answer, state, &answer.frozen[..], *thaws_at)
            }
        };
        // Never claim a freeze that may be over: the guard thaws at its deadline.
        let frozen = if Instant::now() >= thaws_at {
            Vec::new()
        } else {
            frozen.to_vec()
        };
        Some(PrepareAnswer {
            state,
            frozen,
            ..answer.clone()
        })
    }
}

struct Active {
    id: String,
    phase: Phase,
}

struct Done {
    id: String,
    state: OpState,
    answer: PrepareAnswer,
    report: Report,
}

impl Done {
    /// What a repeated prepare of a finished operation answers: its final state, nothing
    /// frozen.
    fn final_answer(&self) -> PrepareAnswer {
        PrepareAnswer {
            state: self.state,
            frozen: Vec::new(),
            ..self.answer.clone()
        }
    }
}

#[derive(Default)]
struct State {
    active: Option<Active>,
    /// Oldest first.
    done: VecDeque<Done>,
    shutting_down: bool,
}

impl State {
    fn done(&self, id: &str) -> Option<&Done> {
        self.done.iter().find(|d| d.id == id)
    }
}

/// How an operation ended (what [`Api::finalize`] is asked to do).
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// The caller released it: the snapshot was taken in between.
    Released,
    /// The deadline passed without a release.
    Expired,
    /// The process is shutting down.
    Shutdown,
    /// The caller gave up: no snapshot was taken (why, in words).
    Abandoned(String),
}

/// How long the guard may hold a freeze that starts at `now`: `own` (the request's
/// deadline, counted from the freeze), cut to what is left until `thaw_by`. None: `thaw_by`
/// is not after `now`, so nothing may be frozen.
fn guard_limit(own: Duration, thaw_by: Option<SystemTime>, now: SystemTime) -> Option<Duration> {
    let Some(thaw_by) = thaw_by else {
        return Some(own);
    };
    match thaw_by.duration_since(now) {
        Ok(left) if !left.is_zero() => Some(own.min(left)),
        _ => None,
    }
}

/// The operation registry (one per process, shared as `Arc<Api>`).
pub struct Api {
    cfg: Arc<Config>,
    state: Mutex<State>,
    changed: Condvar,
    /// What [`Api::recover_at_start`] thawed, recorded in the next operation's report.
    recovered: Mutex<Vec<String>>,
}

impl Api {
    /// A registry for `cfg`.
    pub fn new(cfg: Config) -> Result<Arc<Api>, Problem> {
        Ok(Arc::new(Api {
            cfg: Arc::new(cfg),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            recovered: Mutex::new(Vec::new()),
        }))
    }

    /// Thaw what a crashed run (of this or another process with the same state dir) left
    /// frozen; call once when a front end starts. Returns the mount points thawed.
    pub fn recover_at_start(&self) -> Result<Vec<String>, Problem> {
        let state_dir = &self.cfg.paths.state_dir;
        let _lock = crate::freeze::lock::OpLock::acquire(state_dir)?;
        let thawed = pipeline::recover_leftovers(state_dir)?;
        if !thawed.is_empty() {
            eprintln!(
                "quiesce: recovered at start: thawed {} (left frozen by a crashed run)",
                thawed.join(", ")
            );
            self.recovered
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(thawed.iter().cloned());
        }
        Ok(thawed)
    }

    /// The configuration every operation runs with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed.wait(st).unwrap_or_else(|e| e.into_inner())
    }

    /// The deadline in force for a request: the requested one (or the default), capped at
    /// `freeze.timeout`; and whether it was capped.
    pub fn effective_deadline(&self, requested: Option<Duration>) -> (Duration, bool) {
        let wanted = requested.unwrap_or(self.cfg.server.default_deadline);
        if wanted > self.cfg.freeze.timeout {
            (self.cfg.freeze.timeout, true)
        } else {
            (wanted, false)
        }
    }

    /// Run the pre hooks and the freeze of `req.scope`; answers once prepared (or failed).
    pub fn prepare(self: &Arc<Self>, req: PrepareRequest) -> Result<PrepareAnswer, ApiError> {
        if !opid::is_valid(&req.id) {
            return Err(ApiError::InvalidRequest(format!(
                "invalid operation id {:?}: use 1 to 128 letters, digits, '-', '_' or '.'",
                req.id
            )));
        }
        let (deadline, capped) = self.effective_deadline(req.deadline);
        if let Some(answer) = self.claim(&req.id)? {
            return Ok(answer);
        }
        let id = req.id.clone();
        let mut op = match Operation::begin(Arc::clone(&self.cfg), id.clone(), &req.scope) {
            Ok(op) => op,
            Err(report) => return Err(self.begin_failed(&id, deadline, capped, report)),
        };
        let recovered =
            std::mem::take(&mut *self.recovered.lock().unwrap_or_else(|e| e.into_inner()));
        op.note_recovered(&recovered);
        op.host_driven = true;
        op.freeze_timeout = deadline;
        op.caller = req.caller;
        op.pre_hooks();
        // The guard's limit counts from the freeze; an absolute `thaw_by` cuts it.
        let deadline = match guard_limit(deadline, req.thaw_by, SystemTime::now()) {
            Some(limit) => limit,
            None => {
                op.interrupt(
                    "the pre hooks ended after the shared deadline; nothing frozen, post hooks run",
                );
                Duration::ZERO
            }
        };
        op.freeze_timeout = deadline;
        let thaws_at = Instant::now() + deadline;
        op.freeze();
        let state = if op.aborted() {
            OpState::Failed
        } else if op.frozen_mounts().is_empty() {
            OpState::Prepared
        } else {
            OpState::Frozen
        };
        let answer = PrepareAnswer {
            id: id.clone(),
            state,
            frozen: op.frozen_mounts().to_vec(),
            errors: op.errors().to_vec(),
            deadline_s: deadline.as_secs_f64(),
            deadline_capped: capped,
        };
        let shutting_down = {
            let mut st = self.lock();
            if let Some(a) = st.active.as_mut().filter(|a| a.id == id) {
                a.phase = Phase::Prepared {
                    op: Box::new(op),
                    answer: answer.clone(),
                    thaws_at,
                };
            }
            st.shutting_down
        };
        self.changed.notify_all();
        if state == OpState::Failed {
            // Nothing to wait for: finish now (post hooks of started pre hooks run).
            self.finalize(&id, End::Shutdown);
            return Ok(answer);
        }
        if shutting_down {
            self.finalize(&id, End::Shutdown);
            return Err(ApiError::ShuttingDown);
        }
        let me = Arc::clone(self);
        std::thread::spawn(move || me.watchdog(&id, deadline));
        Ok(answer)
    }

    /// Make `id` the active operation, or say what a repeat answers (Some), or refuse.
    fn claim(&self, id: &str) -> Result<Option<PrepareAnswer>, ApiError> {
        let mut st = self.lock();
        loop {
            if st.shutting_down {
                return Err(ApiError::ShuttingDown);
            }
            if let Some(done) = st.done(id) {
                return Ok(Some(done.final_answer()));
            }
            match &st.active {
                Some(a) if a.id == id => match a.phase.answer_now() {
                    Some(answer) => return Ok(Some(answer)),
                    None => st = self.wait(st),
                },
                Some(a) => {
                    return Err(ApiError::InProgress {
                        active: a.id.clone(),
                    })
                }
                None => break,
            }
        }
        st.active = Some(Active {
            id: id.to_string(),
            phase: Phase::Preparing,
        });
        Ok(None)
    }

    /// The operation could not even begin (lock held elsewhere, no valid plan): give the
    /// id back. A lock held by another process is not remembered for the id (a retry once
    /// that one is done runs); anything else is.
    fn begin_failed(
        &self,
        id: &str,
        deadline: Duration,
        capped: bool,
        report: Box<Report>,
    ) -> ApiError {
        if let Some(p) = report
            .errors
            .iter()
            .find(|e| e.code == ErrorCode::OperationInProgress)
        {
            let mut st = self.lock();
            if st.active.as_ref().is_some_and(|a| a.id == id) {
                st.active = None;
            }
            drop(st);
            self.changed.notify_all();
            return ApiError::InProgress {
                active: format!("of another quiesce process ({})", p.message),
            };
        }
        let answer = PrepareAnswer {
            id: id.to_string(),
            state: OpState::Failed,
            frozen: Vec::new(),
            errors: report.errors.clone(),
            deadline_s: deadline.as_secs_f64(),
            deadline_capped: capped,
        };
        self.remember(id, OpState::Failed, answer, (*report).clone());
        ApiError::Failed(report)
    }

    /// After the deadline, finish an operation nobody released. Exits as soon as the
    /// operation is released (woken through `changed`), so no thread lingers per operation.
    fn watchdog(self: Arc<Self>, id: &str, deadline: Duration) {
        let due_at = Instant::now() + deadline + WATCHDOG_GRACE;
        let mut st = self.lock();
        loop {
            let (prepared, releasing) = match &st.active {
                Some(a) if a.id == id => match a.phase {
                    Phase::Prepared { .. } => (true, false),
                    Phase::Busy { releasing, .. } => (false, releasing),
                    Phase::Preparing => (false, false),
                },
                _ => return,
            };
            if releasing {
                return;
            }
            let now = Instant::now();
            if prepared && now >= due_at {
                break;
            }
            st = if now >= due_at {
                self.wait(st)
            } else {
                self.changed
                    .wait_timeout(st, due_at - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            };
        }
        drop(st);
        tracing::warn!(
            operation_id = id,
            "release never came; finishing at the deadline"
        );
        self.finalize(id, End::Expired);
    }

    /// Take the prepared operation `id` out of the registry (phase becomes busy).
    fn take_prepared(
        &self,
        st: &mut State,
        id: &str,
        releasing: bool,
    ) -> Option<(Box<Operation>, PrepareAnswer, Instant)> {
        let a = st.active.as_mut().filter(|a| a.id == id)?;
        if !matches!(a.phase, Phase::Prepared { .. }) {
            return None;
        }
        let (answer, thaws_at) = match &a.phase {
            Phase::Prepared {
                answer, thaws_at, ..
            } => (answer.clone(), *thaws_at),
            _ => return None,
        };
        let busy = Phase::Busy {
            answer,
            releasing,
            thaws_at,
        };
        match std::mem::replace(&mut a.phase, busy) {
            Phase::Prepared {
                op,
                answer,
                thaws_at,
            } => Some((op, answer, thaws_at)),
            _ => None,
        }
    }

    /// Thaw, run post hooks, record and remember the report.
    fn finalize(&self, id: &str, end: End) -> Option<Report> {
        let (op, answer, _) = {
            let mut st = self.lock();
            self.take_prepared(&mut st, id, true)?
        };
        let mut op = *op;
        let state = match end {
            End::Released if !op.aborted() => {
                op.snapshot_completed_externally();
                OpState::Released
            }
            End::Released => OpState::Failed,
            End::Expired => OpState::Expired,
            End::Shutdown => {
                if !op.aborted() {
                    op.interrupt("quiesce is shutting down; thawed, post hooks run");
                }
                OpState::Failed
            }
            End::Abandoned(why) => {
                if !op.aborted() {
                    op.interrupt(&why);
                }
                OpState::Failed
            }
        };
        op.thaw();
        op.post_hooks();
        let mut report = op.into_report();
        pipeline::finish(&self.cfg, &mut report, crate::catalog::RunKind::Served);
        self.remember(id, state, answer, report.clone());
        Some(report)
    }

    fn remember(&self, id: &str, state: OpState, answer: PrepareAnswer, report: Report) {
        let mut st = self.lock();
        if st.active.as_ref().is_some_and(|a| a.id == id) {
            st.active = None;
        }
        st.done.push_back(Done {
            id: id.to_string(),
            state,
            answer,
            report,
        });
        while st.done.len() > REMEMBERED {
            st.done.pop_front();
        }
        drop(st);
        self.changed.notify_all();
    }

    /// Have the configured provider take the snapshot inside prepared operation `id`
    /// (once: a repeat answers the same snapshots).
    pub fn snapshot(self: &Arc<Self>, id: &str) -> Result<Vec<SnapshotRef>, ApiError> {
        let (mut op, answer, thaws_at) = {
            let mut st = self.lock();
            loop {
                if let Some(done) = st.done(id) {
                    return Err(ApiError::NotPrepared {
                        id: id.to_string(),
                        state: done.state,
                    });
                }
                match &st.active {
                    Some(a) if a.id == id => {}
                    _ => return Err(ApiError::UnknownOperation(id.to_string())),
                }
                if let Some(taken) = self.take_prepared(&mut st, id, false) {
                    break taken;
                }
                st = self.wait(st);
            }
        };
        let result = if !op.provider_takes_snapshots() {
            Err(ApiError::NoProvider)
        } else if op.aborted() {
            Err(ApiError::NotPrepared {
                id: id.to_string(),
                state: OpState::Failed,
            })
        } else {
            op.snapshot();
            match op.snapshot_result() {
                Some(Ok(refs)) => Ok(refs.to_vec()),
                Some(Err(p)) => Err(ApiError::Snapshot(p.clone())),
                None => Err(ApiError::NotPrepared {
                    id: id.to_string(),
                    state: answer.state,
                }),
            }
        };
        {
            let mut st = self.lock();
            if let Some(a) = st.active.as_mut().filter(|a| a.id == id) {
                a.phase = Phase::Prepared {
                    op,
                    answer,
                    thaws_at,
                };
            }
        }
        self.changed.notify_all();
        result
    }

    /// Thaw and run the post hooks of `id`; the final report (a repeat answers the same).
    pub fn release(self: &Arc<Self>, id: &str) -> Result<Report, ApiError> {
        self.end_by_caller(id, End::Released)
    }

    /// Give up on `id` without a snapshot (the caller's snapshot step never happened or
    /// did not complete): thaw, post hooks, and a failed report whose `Interrupted` error
    /// says `why`. A repeat (or a release after it) answers the same report.
    pub fn abandon(self: &Arc<Self>, id: &str, why: &str) -> Result<Report, ApiError> {
        self.end_by_caller(id, End::Abandoned(why.to_string()))
    }

    fn end_by_caller(self: &Arc<Self>, id: &str, end: End) -> Result<Report, ApiError> {
        loop {
            let mut st = self.lock();
            if let Some(done) = st.done(id) {
                return Ok(done.report.clone());
            }
            match &st.active {
                Some(a) if a.id == id => match a.phase {
                    Phase::Prepared { .. } => {
                        drop(st);
                        if let Some(report) = self.finalize(id, end.clone()) {
                            return Ok(report);
                        }
                    }
                    Phase::Preparing | Phase::Busy { .. } => {
                        st = self.wait(st);
                        drop(st);
                    }
                },
                _ => return Err(ApiError::UnknownOperation(id.to_string())),
            }
        }
    }

    /// Where operation `id` is.
    pub fn status(&self, id: &str) -> Result<OpStatus, ApiError> {
        let st = self.lock();
        if let Some(done) = st.done(id) {
            return Ok(OpStatus {
                id: id.to_string(),
                state: done.state,
                frozen: Vec::new(),
                report: Some(done.report.clone()),
            });
        }
        match &st.active {
            Some(a) if a.id == id => Ok(active_status(a)),
            _ => Err(ApiError::UnknownOperation(id.to_string())),
        }
    }

    /// The one operation in flight, if any.
    pub fn active(&self) -> Option<OpStatus> {
        self.lock().active.as_ref().map(active_status)
    }

    /// Refuse new operations and finish the active one: pre hooks stop (when the process
    /// was signalled), thaw, post hooks run, the run is recorded. Returns once nothing is
    /// active.
    pub fn shutdown(&self) {
        let mut st = self.lock();
        st.shutting_down = true;
        loop {
            let id = match &st.active {
                None => return,
                Some(a) => match a.phase {
                    Phase::Prepared { .. } => a.id.clone(),
                    Phase::Preparing | Phase::Busy { .. } => {
                        st = self.wait(st);
                        continue;
                    }
                },
            };
            drop(st);
            self.finalize(&id, End::Shutdown);
            st = self.lock();
        }
    }
}

fn active_status(a: &Active) -> OpStatus {
    let (state, frozen) = match a.phase.answer_now() {
        None => (OpState::Preparing, Vec::new()),
        Some(answer) => (answer.state, answer.frozen),
    };
    OpStatus {
        id: a.id.clone(),
        state,
        frozen,
        report: None,
    }
}

#[cfg(test)]
mod tests {
    use super::guard_limit;
    use std::time::{Duration, SystemTime};

    #[test]
    fn the_guard_thaws_at_the_earlier_of_its_own_limit_and_the_absolute_deadline() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        let cases = [
            // (own limit, thaw_by relative to now in ms (None: no absolute deadline), limit)
            (s(10), None, Some(s(10))),
            (s(10), Some(4_000), Some(s(4))),
            (s(3), Some(4_000), Some(s(3))),
            (s(4), Some(4_000), Some(s(4))),
            // The pre hooks took 70 ms of a 4 s group window: 3.93 s left, not 4 s.
            (s(4), Some(3_930), Some(ms(3_930))),
            (s(10), Some(1), Some(ms(1))),
            (s(10), Some(0), None),
            (s(10), Some(-5_000), None),
        ];
        for (own, rel, want) in cases {
            let thaw_by = rel.map(|r: i64| {
                if r >= 0 {
                    now + ms(r as u64)
                } else {
                    now - ms(r.unsigned_abs())
                }
            });
            assert_eq!(guard_limit(own, thaw_by, now), want, "{own:?} {rel:?}");
        }
    }
}
