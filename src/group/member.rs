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
use super::etcd::{Etcd, Kv};
use super::{now_ms, op_prefix, GroupConfig, GroupReport, MemberSnapshot, OpSpec, ReadyAnswer};
use crate::api::{Api, ApiError, Caller, FreezeScope, OpState, PrepareAnswer, PrepareRequest};
use crate::codes::Problem;
use crate::config::ProviderConfig;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
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
    // Operations appear under `specs/`: a watch wakes the member as one is written.
    let specs = format!("{}specs/", super::group_prefix(&cfg.name));
    let mut ops = Mirror::prefixes(&etcd, &[specs], cfg.poll);
    let mut handled: HashSet<String> = HashSet::new();
    loop {
        if ops.is_known() {
            let kvs: Vec<Kv> = ops.kvs().values().cloned().collect();
            run_new_operations(&cfg, &etcd, &api, kvs, &mut handled);
        } else {
            tracing::debug!("group: etcd unreachable");
        }
        ops.wait(Instant::now() + Duration::from_secs(60));
    }
}

/// Run the operations among `specs` not handled yet (one at a time, in key order).
fn run_new_operations(
    cfg: &GroupConfig,
    etcd: &Arc<Etcd>,
    api: &Arc<Api>,
    specs: Vec<Kv>,
    handled: &mut HashSet<String>,
) {
    let live: HashSet<&String> = specs.iter().map(|kv| &kv.key).collect();
    handled.retain(|k| live.contains(k));
    for kv in &specs {
        if !handled.insert(kv.key.clone()) {
            continue;
        }
        match serde_json::from_str::<OpSpec>(&kv.value) {
            Ok(spec) if acts_on(cfg, &spec) => run_operation(cfg, etcd, api, &spec),
            Ok(spec) => tracing::warn!(
                group = %spec.group, operation_id = %spec.operation_id,
                "group: ignoring an operation not meant for this member"
            ),
            Err(e) => tracing::warn!(key = %kv.key, error = %e, "group: unreadable operation"),
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

/// The keys a prepared member listens to: the coordinator's `release` and `snapshot`, and
/// the operation's spec (gone when the coordinator's lease expires).
fn listen_keys(prefix: &str, spec_key: &str) -> [String; 3] {
    [
        format!("{prefix}release"),
        format!("{prefix}snapshot"),
        spec_key.to_string(),
    ]
}

/// The same keys as watched ranges: `release` and `snapshot` as one range (under
/// `ops/OP/`, nothing sorts between them: `done/`, `ready/` come before, `snapshot/` after
/// its end), and the spec. Two watch streams per member and operation instead of three.
fn listen_ranges(prefix: &str, spec_key: &str) -> Vec<(String, Vec<u8>)> {
    let [release, snapshot, spec] = listen_keys(prefix, spec_key);
    let mut end = snapshot.into_bytes();
    end.push(0);
    vec![(release, end), (spec, Vec::new())]
}

/// What the keys say now (None: nothing new, or etcd not read yet).
fn heard(keys: &Mirror, prefix: &str, spec_key: &str, wants_snapshot: bool) -> Option<Heard> {
    let [release, snapshot, _] = listen_keys(prefix, spec_key);
    match keys.get(&release) {
        Some("release") => return Some(Heard::Release(RELEASED)),
        Some(_) => return Some(Heard::Release("the coordinator aborted the operation")),
        None => {}
    }
    if wants_snapshot && keys.get(&snapshot).is_some() {
        return Some(Heard::Snapshot);
    }
    if keys.is_known() && keys.get(spec_key).is_none() {
        return Some(Heard::Release(
            "the coordinator disappeared (its lease expired)",
        ));
    }
    None
}

/// Listen on another thread (so that an etcd call hanging on a lost network can never
/// hold the release past the deadline): at most one `Snapshot`, then one `Release`. The
/// watch on `keys` wakes it at the change; while the stream is lost it re-reads every poll.
fn listen(
    mut keys: Mirror,
    prefix: String,
    spec_key: String,
    mut wants_snapshot: bool,
    release_at: u64,
    tx: Sender<(Heard, Option<u64>)>,
) {
    std::thread::spawn(move || loop {
        match heard(&keys, &prefix, &spec_key, wants_snapshot) {
            Some(Heard::Snapshot) => {
                wants_snapshot = false;
                if tx
                    .send((Heard::Snapshot, keys.changed_read_at_ms()))
                    .is_err()
                {
                    return;
                }
                continue;
            }
            Some(heard) => {
                let _ = tx.send((heard, keys.changed_read_at_ms()));
                return;
            }
            None => {}
        }
        let now = now_ms();
        if now >= release_at {
            return;
        }
        keys.wait(Instant::now() + Duration::from_millis(release_at - now));
    });
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

fn run_operation(cfg: &GroupConfig, etcd: &Arc<Etcd>, api: &Arc<Api>, spec: &OpSpec) {
    let id = &spec.operation_id;
    let prefix = op_prefix(&cfg.name, id);
    let spec_key = format!("{}specs/{id}", super::group_prefix(&cfg.name));
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
    let mut own_snapshot_taken = false;
    let mut heard_release_at_ms = now_ms();
    let (mut listening_at_ms, mut release_read_at_ms) = (0, None);
    let why = if ready.state == OpState::Failed.as_str() {
        "this member failed to prepare"
    } else {
        let release_at = super::release_at_ms(spec.deadline_ms);
        let (tx, rx) = channel();
        // Watched from after the ready answer: the coordinator writes nothing before every
        // member is ready, and the copy starts from a read, so nothing is missed.
        let keys = Mirror::ranges(etcd, listen_ranges(&prefix, &spec_key), cfg.poll);
        listening_at_ms = now_ms();
        listen(
            keys,
            prefix.clone(),
            spec_key,
            ready.takes_snapshot,
            release_at,
            tx,
        );
        loop {
            let left = Duration::from_millis(release_at.saturating_sub(now_ms()));
            match rx.recv_timeout(left) {
                Ok((Heard::Snapshot, _)) => {
                    let taken = take_snapshot(api, id);
                    own_snapshot_taken = taken.error.is_none();
                    let _ = etcd.put(
                        &format!("{prefix}snapshot/{}", cfg.member),
                        &serde_json::to_string(&taken).unwrap_or_default(),
                        spec.lease,
                    );
                }
                Ok((Heard::Release(why), read_at)) => {
                    heard_release_at_ms = now_ms();
                    release_read_at_ms = read_at;
                    break why;
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    break "the deadline passed"
                }
            }
        }
    };
    tracing::info!(operation_id = %id, reason = why, "group: releasing");
    // A member whose own provider took its snapshot keeps it (a snapshot of this machine
    // alone, whatever became of the group); any other member that was not released by the
    // coordinator after the whole snapshot step has no snapshot to speak of.
    let abandoned = (why != RELEASED && !own_snapshot_taken).then_some(why);
    let mut report = final_report(api, id, &prepared, abandoned);
    report["group_release_reason"] = json!(why);
    report["group_timing"] = json!(MemberTiming {
        heard_spec_at_ms,
        prepared_at_ms,
        heard_release_at_ms,
        released_at_ms: now_ms(),
        ready_written_at_ms,
        listening_at_ms,
        release_read_at_ms,
    });
    let _ = etcd.put(
        &format!("{prefix}done/{}", cfg.member),
        &report.to_string(),
        spec.lease,
    );
    record_group_report_later(cfg, etcd, api, spec);
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
    /// Its watch on the coordinator's keys open (0: never opened, it failed to prepare).
    #[serde(default)]
    pub listening_at_ms: u64,
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
fn record_group_report_later(cfg: &GroupConfig, etcd: &Arc<Etcd>, api: &Arc<Api>, spec: &OpSpec) {
    let (cfg, etcd, api, spec) = (cfg.clone(), Arc::clone(etcd), Arc::clone(api), spec.clone());
    std::thread::spawn(move || {
        let key = super::report_key(&cfg.name, &spec.operation_id);
        let give_up = super::report_written_by_ms(&spec, cfg.lease_ttl);
        let mut keys = Mirror::keys(&etcd, std::slice::from_ref(&key), cfg.poll);
        let report = loop {
            if let Some(text) = keys.get(&key) {
                match serde_json::from_str::<GroupReport>(text) {
                    Ok(r) => break r,
                    Err(e) => {
                        tracing::warn!(error = %e, "group: unreadable group report");
                        return;
                    }
                }
            }
            let now = now_ms();
            if now >= give_up {
                tracing::warn!(operation_id = %spec.operation_id, "group: no group report came");
                return;
            }
            keys.wait(Instant::now() + Duration::from_millis(give_up - now));
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

    #[test]
    fn the_release_range_holds_release_and_snapshot_only() {
        let prefix = op_prefix("g", "op");
        let ranges = listen_ranges(&prefix, "/quiesce/groups/g/specs/op");
        let (start, end) = (&ranges[0].0, &ranges[0].1);
        let inside = |k: &str| k.as_bytes() >= start.as_bytes() && k.as_bytes() < &end[..];
        for (key, want) in [
            ("release", true),
            ("snapshot", true),
            ("done/m", false),
            ("ready/m", false),
            ("ready/zzz", false),
            ("snapshot/m", false),
        ] {
            assert_eq!(inside(&format!("{prefix}{key}")), want, "{key}");
        }
        assert_eq!(
            ranges[1],
            ("/quiesce/groups/g/specs/op".to_string(), Vec::new())
        );
    }
}
