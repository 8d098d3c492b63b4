//! The member side, inside `quiesce serve`: keep the membership key alive, watch the group's
//! operations, prepare (pre hooks + freeze), report ready, take this member's own provider
//! snapshot when the coordinator asks (every member frozen), and release when told, when
//! the coordinator disappears, or at the deadline, whichever comes first. Then record the
//! group report in this member's catalog.
//!
//! The member drives the operation registry ([`Api`]) directly, the same one the HTTP API
//! drives (one operation at a time, the freeze guard armed at the operation's deadline), so
//! a member that loses etcd altogether is still thawed by its guard on time.

use super::etcd::watch::Mirror;
use super::etcd::Etcd;
use super::{now_ms, op_prefix, GroupConfig, GroupReport, MemberSnapshot, OpSpec, ReadyAnswer};
use crate::api::{Api, ApiError, Caller, FreezeScope, OpState, PrepareAnswer, PrepareRequest};
use crate::codes::Problem;
use crate::config::ProviderConfig;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Start the member in the background (for the life of the process).
pub fn start(cfg: GroupConfig, api: Arc<Api>) {
    std::thread::spawn(move || run(cfg, api));
}

/// Keep the membership key under a live lease; re-register when the lease is lost.
fn keep_membership(cfg: &GroupConfig, etcd: &Etcd, lease: &Mutex<i64>) {
    let key = format!("{}members/{}", super::group_prefix(&cfg.name), cfg.member);
    let mut current = *lease.lock().unwrap_or_else(|e| e.into_inner());
    let alive = current != 0 && etcd.keep_alive(current).unwrap_or(false);
    if !alive {
        current = match etcd.grant(cfg.lease_ttl) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "group: cannot reach etcd to register");
                return;
            }
        };
        let value = json!({ "member": cfg.member, "pid": std::process::id() }).to_string();
        match etcd.put(&key, &value, current) {
            Ok(()) => tracing::info!(group = %cfg.name, member = %cfg.member, "group: joined"),
            Err(e) => tracing::warn!(error = %e, "group: cannot register"),
        }
        *lease.lock().unwrap_or_else(|e| e.into_inner()) = current;
    }
}

fn run(cfg: GroupConfig, api: Arc<Api>) {
    let etcd = loop {
        match cfg.client() {
            Ok(c) => break Arc::new(c),
            Err(e) => {
                tracing::warn!(error = %e, "group: cannot reach etcd; retrying");
                std::thread::sleep(cfg.lease_ttl);
            }
        }
    };
    let lease = Arc::new(Mutex::new(0i64));
    {
        let (cfg, etcd, lease) = (cfg.clone(), Arc::clone(&etcd), Arc::clone(&lease));
        std::thread::spawn(move || loop {
            keep_membership(&cfg, &etcd, &lease);
            std::thread::sleep(cfg.lease_ttl / 3);
        });
    }
    // Operations and the coordinator's decisions appear under `specs/`: one watch, kept
    // for the life of the member, wakes every thread that waits on them.
    let specs = format!("{}specs/", super::group_prefix(&cfg.name));
    let board = Board::start(Mirror::prefixes(
        &etcd,
        std::slice::from_ref(&specs),
        cfg.poll,
    ));
    let mut handled: HashSet<String> = HashSet::new();
    let mut version = 0;
    loop {
        let seen = board.wait_past(version, Instant::now() + Duration::from_secs(60));
        version = seen.version;
        if seen.known {
            let ops: Vec<(String, String)> = seen
                .kvs
                .into_iter()
                .filter(|(k, _)| is_spec(&specs, k))
                .collect();
            run_new_operations(&cfg, &etcd, &board, &api, ops, &mut handled);
        } else {
            tracing::debug!("group: etcd unreachable");
        }
    }
}

/// Is `key` (under `specs`) an operation's spec, rather than one of its decisions?
fn is_spec(specs: &str, key: &str) -> bool {
    key.strip_prefix(specs)
        .is_some_and(|op| !op.is_empty() && !op.contains('/'))
}

/// What the member's watch on `specs/` holds now.
#[derive(Debug, Clone, Default, PartialEq)]
struct Seen {
    /// Key to value.
    kvs: BTreeMap<String, String>,
    /// Read from etcd at least once: an absent key is really absent.
    known: bool,
    /// Bumped at each change.
    version: u64,
    /// When the watch stream read the last change (ms since the epoch; None: a plain read).
    read_at_ms: Option<u64>,
}

/// The member's copy of `specs/`, kept by one watch thread for the life of the member and
/// shared by the threads that wait on it (the operations loop, and each operation's
/// listener). A waiter never blocks past its own time limit, whatever etcd does.
struct Board {
    seen: Mutex<Seen>,
    changed: Condvar,
}

impl Board {
    fn start(mut mirror: Mirror) -> Arc<Board> {
        let board = Arc::new(Board {
            seen: Mutex::new(Seen::default()),
            changed: Condvar::new(),
        });
        let keeper = Arc::clone(&board);
        std::thread::spawn(move || loop {
            keeper.publish(&mirror);
            mirror.wait(Instant::now() + Duration::from_secs(60));
        });
        board
    }

    fn publish(&self, mirror: &Mirror) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let kvs = mirror
            .kvs()
            .iter()
            .map(|(k, kv)| (k.clone(), kv.value.clone()))
            .collect();
        if seen.version > 0 && seen.kvs == kvs && seen.known == mirror.is_known() {
            return;
        }
        seen.kvs = kvs;
        seen.known = mirror.is_known();
        seen.read_at_ms = mirror.changed_read_at_ms();
        seen.version += 1;
        self.changed.notify_all();
    }

    /// The keys once they are newer than `version`, or as they are at `until`.
    fn wait_past(&self, version: u64, until: Instant) -> Seen {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        while seen.version <= version {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            seen = self
                .changed
                .wait_timeout(seen, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        seen.clone()
    }
}

/// Run the operations among `specs` not handled yet (one at a time, in key order).
fn run_new_operations(
    cfg: &GroupConfig,
    etcd: &Arc<Etcd>,
    board: &Arc<Board>,
    api: &Arc<Api>,
    specs: Vec<(String, String)>,
    handled: &mut HashSet<String>,
) {
    let live: HashSet<&String> = specs.iter().map(|(k, _)| k).collect();
    handled.retain(|k| live.contains(k));
    for (key, value) in &specs {
        if !handled.insert(key.clone()) {
            continue;
        }
        match serde_json::from_str::<OpSpec>(value) {
            Ok(spec) if acts_on(cfg, &spec) => run_operation(cfg, etcd, board, api, &spec),
            Ok(spec) => tracing::warn!(
                group = %spec.group, operation_id = %spec.operation_id,
                "group: ignoring an operation not meant for this member"
            ),
            Err(e) => tracing::warn!(key = %key, error = %e, "group: unreadable operation"),
        }
    }
}

/// A member acts only on its own group's operations that name it and are not past due.
pub fn acts_on(cfg: &GroupConfig, spec: &OpSpec) -> bool {
    spec.group == cfg.name
        && spec.members.iter().any(|m| m == &cfg.member)
        && super::valid_name(&spec.operation_id)
        && spec.deadline_ms > now_ms()
}

/// Why a member released when the snapshot step completed for the whole group.
const RELEASED: &str = "released by the coordinator";

/// What the member hears from the coordinator while it is prepared.
#[derive(Debug, PartialEq)]
enum Heard {
    /// Every member is ready: take this member's own provider snapshot now.
    Snapshot,
    /// Release, and why.
    Release(&'static str),
}

/// What the member hears about operation `op` of `group` from `seen` (None: nothing new).
fn heard(seen: &Seen, group: &str, op: &str, wants_snapshot: bool) -> Option<Heard> {
    match seen
        .kvs
        .get(&super::decision_key(group, op, "release"))
        .map(String::as_str)
    {
        Some("release") => return Some(Heard::Release(RELEASED)),
        Some(_) => return Some(Heard::Release("the coordinator aborted the operation")),
        None => {}
    }
    if wants_snapshot
        && seen
            .kvs
            .contains_key(&super::decision_key(group, op, "snapshot"))
    {
        return Some(Heard::Snapshot);
    }
    if seen.known && !seen.kvs.contains_key(&super::spec_key(group, op)) {
        return Some(Heard::Release(
            "the coordinator disappeared (its lease expired)",
        ));
    }
    None
}

/// Does this member's configured provider take snapshots (rather than someone else)?
fn takes_snapshots(api: &Api) -> bool {
    !matches!(api.config().snapshot.provider, ProviderConfig::None)
}

/// The ready answer for etcd, from what the registry answered.
fn ready_answer(prepared: &Result<PrepareAnswer, ApiError>, provider: bool) -> ReadyAnswer {
    match prepared {
        Ok(a) => ReadyAnswer {
            state: a.state.as_str().to_string(),
            frozen: a.frozen.clone(),
            errors: a.errors.clone(),
            takes_snapshot: provider && a.state != OpState::Failed,
        },
        Err(e) => ReadyAnswer {
            state: OpState::Failed.as_str().to_string(),
            frozen: Vec::new(),
            errors: e.problems(),
            takes_snapshot: false,
        },
    }
}

/// This member's final report as a JSON value: the registry's, or, when the operation
/// never existed here (another operation was in progress), a failure saying why.
/// `abandoned`: no snapshot of this member can be counted on (the group's snapshot step
/// did not complete and its own provider took none), so the report must not claim one.
fn final_report(
    api: &Arc<Api>,
    id: &str,
    prepared: &Result<PrepareAnswer, ApiError>,
    abandoned: Option<&str>,
) -> Value {
    let ended = match abandoned {
        None => api.release(id),
        Some(why) => api.abandon(
            id,
            &format!("the group's snapshot step did not complete ({why}); no snapshot"),
        ),
    };
    match ended {
        Ok(report) => serde_json::to_value(&report).unwrap_or(Value::Null),
        Err(e) => {
            let mut errors: Vec<Problem> = match prepared {
                Err(pe) => pe.problems(),
                Ok(_) => Vec::new(),
            };
            errors.extend(e.problems());
            json!({ "operation_id": id, "status": "failed", "consistency": "none",
                    "errors": errors })
        }
    }
}

fn run_operation(
    cfg: &GroupConfig,
    etcd: &Arc<Etcd>,
    board: &Arc<Board>,
    api: &Arc<Api>,
    spec: &OpSpec,
) {
    let id = &spec.operation_id;
    let prefix = op_prefix(&cfg.name, id);
    let left = spec.deadline_ms.saturating_sub(now_ms());
    tracing::info!(operation_id = %id, deadline_ms = left, "group: preparing");
    let heard_spec_at_ms = now_ms();
    let prepared = api.prepare(PrepareRequest {
        id: id.clone(),
        deadline: Some(Duration::from_millis(left)),
        // The pre hooks take time: the guard counts from the freeze, the group's deadline
        // does not move.
        thaw_by: Some(std::time::UNIX_EPOCH + Duration::from_millis(spec.deadline_ms)),
        scope: FreezeScope::Plan,
        caller: Caller::Group {
            group: spec.group.clone(),
            coordinator: spec.coordinator.clone(),
        },
    });
    let prepared_at_ms = now_ms();
    let ready = ready_answer(&prepared, takes_snapshots(api));
    let _ = etcd.put(
        &format!("{prefix}ready/{}", cfg.member),
        &serde_json::to_string(&ready).unwrap_or_default(),
        spec.lease,
    );
    let ready_written_at_ms = now_ms();
    let heard = if ready.state == OpState::Failed.as_str() {
        Outcome {
            why: "this member failed to prepare",
            own_snapshot_taken: false,
            heard_release_at_ms: now_ms(),
            release_read_at_ms: None,
        }
    } else {
        await_release(cfg, etcd, board, api, spec, ready.takes_snapshot)
    };
    let why = heard.why;
    tracing::info!(operation_id = %id, reason = why, "group: releasing");
    // A member whose own provider took its snapshot keeps it (a snapshot of this machine
    // alone, whatever became of the group); any other member that was not released by the
    // coordinator after the whole snapshot step has no snapshot to speak of.
    let abandoned = (why != RELEASED && !heard.own_snapshot_taken).then_some(why);
    let mut report = final_report(api, id, &prepared, abandoned);
    report["group_release_reason"] = json!(why);
    report["group_timing"] = json!(MemberTiming {
        heard_spec_at_ms,
        prepared_at_ms,
        heard_release_at_ms: heard.heard_release_at_ms,
        released_at_ms: now_ms(),
        ready_written_at_ms,
        release_read_at_ms: heard.release_read_at_ms,
    });
    let _ = etcd.put(
        &format!("{prefix}done/{}", cfg.member),
        &report.to_string(),
        spec.lease,
    );
    record_group_report_later(cfg, etcd, board, api, spec);
}

/// How a prepared member's wait for the coordinator ended.
struct Outcome {
    /// Why it releases.
    why: &'static str,
    /// Its own provider took its snapshot (when the coordinator asked).
    own_snapshot_taken: bool,
    heard_release_at_ms: u64,
    /// When the watch stream read the release (None: a plain read found it, or none came).
    release_read_at_ms: Option<u64>,
}

/// A prepared member waits for the coordinator: takes its own snapshot when asked (and says
/// what it took under `ops/OP/snapshot/MEMBER`), until the release, the coordinator's
/// disappearance, or the release time. The member's watch on `specs/` is open since its
/// start: nothing to set up now, and a decision already written is in the copy. Waiting on
/// the copy never blocks past the release time, whatever etcd or the network does.
fn await_release(
    cfg: &GroupConfig,
    etcd: &Etcd,
    board: &Board,
    api: &Arc<Api>,
    spec: &OpSpec,
    mut wants_snapshot: bool,
) -> Outcome {
    let id = &spec.operation_id;
    let release_at = super::release_at_ms(spec.deadline_ms);
    let mut out = Outcome {
        why: "the deadline passed",
        own_snapshot_taken: false,
        heard_release_at_ms: 0,
        release_read_at_ms: None,
    };
    let mut version = 0;
    loop {
        let until = Instant::now() + Duration::from_millis(release_at.saturating_sub(now_ms()));
        let seen = board.wait_past(version, until);
        version = seen.version;
        match heard(&seen, &cfg.name, id, wants_snapshot) {
            Some(Heard::Snapshot) => {
                // `heard` puts a release first, so none was there yet; one written while
                // the snapshot is taken wakes the next wait at once.
                wants_snapshot = false;
                let taken = take_snapshot(api, id);
                out.own_snapshot_taken = taken.error.is_none();
                let _ = etcd.put(
                    &format!("{}snapshot/{}", op_prefix(&cfg.name, id), cfg.member),
                    &serde_json::to_string(&taken).unwrap_or_default(),
                    spec.lease,
                );
            }
            Some(Heard::Release(why)) => {
                out.why = why;
                out.release_read_at_ms = seen.read_at_ms;
                break;
            }
            None if now_ms() >= release_at => break,
            None => {}
        }
    }
    out.heard_release_at_ms = now_ms();
    out
}

/// When this member did its own work in an operation (milliseconds since the epoch), in its
/// `done/` report: what the coordinator's latencies spent in the members themselves
/// (prepare: `heard_spec`..`prepared`, release: `heard_release`..`released`) rather than
/// in coordination. `heard_release_at_ms` is also when the member heard the release (or
/// stopped waiting for it).
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct MemberTiming {
    pub heard_spec_at_ms: u64,
    pub prepared_at_ms: u64,
    pub heard_release_at_ms: u64,
    pub released_at_ms: u64,
    /// Its ready answer written to etcd.
    #[serde(default)]
    pub ready_written_at_ms: u64,
    /// When its watch stream read the release (None: a plain read of etcd found it, or it
    /// was not heard).
    #[serde(default)]
    pub release_read_at_ms: Option<u64>,
}

/// This member's own provider takes its snapshot inside the prepared operation.
fn take_snapshot(api: &Arc<Api>, id: &str) -> MemberSnapshot {
    tracing::info!(operation_id = %id, "group: taking this member's snapshot");
    match api.snapshot(id) {
        Ok(snapshots) => MemberSnapshot {
            snapshots,
            error: None,
        },
        Err(e) => MemberSnapshot {
            snapshots: Vec::new(),
            error: Some(e.to_string()),
        },
    }
}

/// Once the coordinator has written the group report, record it in this member's catalog
/// and say so under `catalogs/OP/MEMBER`. On another thread: the next operation does not
/// wait for it. Gives up when no report came by the time the coordinator stops waiting.
fn record_group_report_later(
    cfg: &GroupConfig,
    etcd: &Arc<Etcd>,
    board: &Arc<Board>,
    api: &Arc<Api>,
    spec: &OpSpec,
) {
    let (cfg, etcd, api, spec) = (cfg.clone(), Arc::clone(etcd), Arc::clone(api), spec.clone());
    let board = Arc::clone(board);
    std::thread::spawn(move || {
        let Some(text) = group_report_text(&cfg, &etcd, &board, &spec) else {
            tracing::warn!(operation_id = %spec.operation_id, "group: no group report came");
            return;
        };
        let report = match serde_json::from_str::<GroupReport>(&text) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "group: unreadable group report");
                return;
            }
        };
        let recorded = crate::catalog::Catalog::open(&api.config().paths.catalog)
            .and_then(|mut c| c.record_group(&report.catalog_row(&cfg.member)?));
        match recorded {
            Ok(()) => {
                let ack = super::catalog_key(&cfg.name, &spec.operation_id, &cfg.member);
                if let Err(e) = etcd.put(&ack, &now_ms().to_string(), 0) {
                    tracing::warn!(error = %e, "group: cannot say the report is recorded");
                }
            }
            Err(e) => tracing::error!(error = %e, "group: cannot record the group report"),
        }
    });
}

/// The group report of `spec`'s operation, as stored, or None when none came in time.
///
/// The coordinator writes the report, then revokes its lease, which takes the spec out of
/// `specs/`: the member's own watch shows that, and one read fetches the report. Only when
/// the report is not there then (the coordinator died, or its lease ran out before it
/// wrote) does the member watch the report's key until the coordinator would have given
/// up. A watch per member per operation, opened while the other members still release,
/// is load on etcd just when the group is measured.
fn group_report_text(
    cfg: &GroupConfig,
    etcd: &Arc<Etcd>,
    board: &Board,
    spec: &OpSpec,
) -> Option<String> {
    let key = super::report_key(&cfg.name, &spec.operation_id);
    let spec_key = super::spec_key(&cfg.name, &spec.operation_id);
    let give_up = super::report_written_by_ms(spec, cfg.lease_ttl);
    let until = || Instant::now() + Duration::from_millis(give_up.saturating_sub(now_ms()));
    let mut version = 0;
    loop {
        let seen = board.wait_past(version, until());
        version = seen.version;
        if (seen.known && !seen.kvs.contains_key(&spec_key)) || now_ms() >= give_up {
            break;
        }
    }
    if let Ok(Some(text)) = etcd.get(&key) {
        return Some(text);
    }
    let mut keys = Mirror::keys(etcd, std::slice::from_ref(&key), cfg.poll);
    loop {
        if let Some(text) = keys.get(&key) {
            return Some(text.to_string());
        }
        if now_ms() >= give_up {
            return None;
        }
        keys.wait(until());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codes::ErrorCode;

    fn answer(state: OpState) -> PrepareAnswer {
        PrepareAnswer {
            id: "op".into(),
            state,
            frozen: vec!["/data".into()],
            errors: Vec::new(),
            deadline_s: 10.0,
            deadline_capped: false,
        }
    }

    /// What a member tells the coordinator, from what its registry answered: only a member
    /// that is ready and has a provider takes a snapshot; a refusal is a failure with its
    /// code.
    #[test]
    fn ready_answer_follows_the_registry() {
        let cases: Vec<(Result<PrepareAnswer, ApiError>, bool, &str, bool)> = vec![
            (Ok(answer(OpState::Frozen)), true, "frozen", true),
            (Ok(answer(OpState::Frozen)), false, "frozen", false),
            (Ok(answer(OpState::Prepared)), true, "prepared", true),
            (Ok(answer(OpState::Failed)), true, "failed", false),
            (
                Err(ApiError::InProgress {
                    active: "host-op".into(),
                }),
                true,
                "failed",
                false,
            ),
        ];
        for (prepared, provider, state, takes) in cases {
            let r = ready_answer(&prepared, provider);
            assert_eq!(
                (r.state.as_str(), r.takes_snapshot),
                (state, takes),
                "{r:?}"
            );
        }
        let refused = ready_answer(
            &Err(ApiError::InProgress {
                active: "host-op".into(),
            }),
            true,
        );
        assert_eq!(refused.errors[0].code, ErrorCode::OperationInProgress);
        assert!(refused.errors[0].message.contains("host-op"));
    }

    /// The operations loop takes only the specs under `specs/`, not the coordinator's
    /// decisions beside them.
    #[test]
    fn specs_are_told_from_decisions() {
        let specs = "/quiesce/groups/g/specs/";
        assert_eq!(super::super::spec_key("g", "op"), format!("{specs}op"));
        for (key, want) in [
            (format!("{specs}op"), true),
            (super::super::decision_key("g", "op", "release"), false),
            (super::super::decision_key("g", "op", "snapshot"), false),
            (specs.to_string(), false),
            ("/quiesce/groups/g/ops/op/ready/m".to_string(), false),
        ] {
            assert_eq!(is_spec(specs, &key), want, "{key}");
        }
    }

    /// What a prepared member hears, from the keys under `specs/`: the release (or abort)
    /// first, the snapshot request only when it wants one, the coordinator gone when its
    /// spec is; nothing before etcd was read, or about another operation.
    #[test]
    fn heard_from_the_decisions_beside_the_spec() {
        let spec = super::super::spec_key("g", "op");
        let release = super::super::decision_key("g", "op", "release");
        let snapshot = super::super::decision_key("g", "op", "snapshot");
        let other = super::super::decision_key("g", "other", "release");
        let seen = |keys: &[(&String, &str)], known: bool| Seen {
            kvs: keys
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            known,
            ..Seen::default()
        };
        let aborted = Some(Heard::Release("the coordinator aborted the operation"));
        let gone = Some(Heard::Release(
            "the coordinator disappeared (its lease expired)",
        ));
        let cases = [
            (seen(&[(&spec, "{}")], true), true, None),
            (
                seen(&[(&spec, "{}"), (&other, "release")], true),
                true,
                None,
            ),
            (
                seen(&[(&spec, "{}"), (&snapshot, "take")], true),
                true,
                Some(Heard::Snapshot),
            ),
            (
                seen(&[(&spec, "{}"), (&snapshot, "take")], true),
                false,
                None,
            ),
            (
                seen(
                    &[(&spec, "{}"), (&snapshot, "take"), (&release, "release")],
                    true,
                ),
                true,
                Some(Heard::Release(RELEASED)),
            ),
            (
                seen(&[(&spec, "{}"), (&release, "abort")], true),
                false,
                aborted,
            ),
            (seen(&[], true), false, gone),
            (seen(&[], false), false, None),
        ];
        for (seen, wants, want) in cases {
            assert_eq!(heard(&seen, "g", "op", wants), want, "{seen:?} {wants}");
        }
    }

    /// A waiter on the board wakes at a change, and never waits past its own limit.
    #[test]
    fn the_board_wakes_waiters_and_keeps_their_time_limit() {
        let board = Arc::new(Board {
            seen: Mutex::new(Seen::default()),
            changed: Condvar::new(),
        });
        let t = Instant::now();
        let seen = board.wait_past(0, Instant::now() + Duration::from_millis(50));
        assert_eq!(seen.version, 0);
        assert!(t.elapsed() >= Duration::from_millis(50));
        let waiter = {
            let board = Arc::clone(&board);
            std::thread::spawn(move || board.wait_past(0, Instant::now() + Duration::from_secs(20)))
        };
        std::thread::sleep(Duration::from_millis(20));
        {
            let mut s = board.seen.lock().unwrap();
            s.kvs.insert("k".into(), "v".into());
            s.version = 1;
            board.changed.notify_all();
        }
        let seen = waiter.join().unwrap();
        assert_eq!(
            (seen.version, seen.kvs.get("k").map(String::as_str)),
            (1, Some("v"))
        );
        assert!(t.elapsed() < Duration::from_secs(10));
    }
}
