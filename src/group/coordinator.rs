//! The coordinator: `quiesce group snapshot NAME`, from any member or an admin machine.
//!
//! operation written -> every member ready (frozen) -> snapshot step (each member's own
//! provider, and the group-level command, at the same time) -> release written -> every
//! member's final report -> group report -> members record it in their catalogs. The
//! coordinator holds a lease while it works; if it dies, the lease expires, the operation's
//! keys go, and every member releases.

use super::etcd::watch::Mirror;
use super::etcd::{Etcd, Kv};
use super::{catalog_key, decision_key, group_outcome, group_prefix, now_ms, op_prefix};
use super::{report_key, spec_key};
use super::{GroupConfig, GroupReport, MemberOutcome, MemberSnapshot, OpSpec, ReadyAnswer};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What `quiesce group snapshot` was asked.
#[derive(Debug, Clone)]
pub struct SnapshotOptions {
    pub operation_id: String,
    /// From now: every member has released by then.
    pub deadline: Duration,
    /// The group-level snapshot step, run once while every member is frozen.
    pub command: Vec<String>,
}

/// Members currently in the group (live membership keys), sorted.
pub fn members(etcd: &Etcd, group: &str) -> Result<Vec<String>, String> {
    let prefix = format!("{}members/", group_prefix(group));
    Ok(etcd
        .range_prefix(&prefix)?
        .into_iter()
        .map(|kv| kv.key[prefix.len()..].to_string())
        .collect())
}

/// The values under `prefix`, by the key's last part (the member).
fn by_member(etcd: &Etcd, prefix: &str) -> BTreeMap<String, Value> {
    let kvs = etcd.range_prefix(prefix).unwrap_or_default();
    kvs.iter()
        .filter_map(|kv| {
            let member = kv.key.strip_prefix(prefix)?;
            Some((member.to_string(), parse_value(&kv.value)))
        })
        .collect()
}

/// Run the group-level snapshot step, killed at the deadline.
fn run_command(cmd: &[String], spec: &OpSpec) -> Result<(), String> {
    let mut child = Command::new(&cmd[0])
        .args(&cmd[1..])
        .env("QUIESCE_GROUP", &spec.group)
        .env("QUIESCE_OPERATION_ID", &spec.operation_id)
        .env("QUIESCE_MEMBERS", spec.members.join(" "))
        .spawn()
        .map_err(|e| format!("the snapshot command {:?} could not start: {e}", cmd[0]))?;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return if status.success() {
                Ok(())
            } else {
                Err(format!("the snapshot command failed ({status})"))
            };
        }
        if now_ms() >= super::release_at_ms(spec.deadline_ms) {
            let _ = child.kill();
            let _ = child.wait();
            return Err("the snapshot command outlived the deadline and was killed".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The coordinator's lease, kept alive on a thread until [`LeaseKeeper::stop`].
struct LeaseKeeper {
    lease: i64,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl LeaseKeeper {
    fn start(cfg: &GroupConfig, etcd: &Etcd) -> Result<LeaseKeeper, String> {
        let lease = etcd.grant(cfg.lease_ttl)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, ttl) = (Arc::clone(&stop), cfg.lease_ttl);
        let etcd = cfg
            .client()
            .unwrap_or_else(|_| Etcd::new(&cfg.endpoints, Duration::from_secs(1)));
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                let _ = etcd.keep_alive(lease);
                let until = Instant::now() + ttl / 3;
                while Instant::now() < until && !flag.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        });
        Ok(LeaseKeeper {
            lease,
            stop,
            thread,
        })
    }

    /// Stop keeping the lease alive and revoke it (the operation's keys go with it).
    fn stop(self, etcd: &Etcd) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.thread.join();
        let _ = etcd.revoke(self.lease);
    }
}

/// Wait until `enough` says so about the values under `prefix` (by member), or `until_ms`
/// passes; `keys` wakes this at each change (a watch, re-read when the stream is lost).
/// Each value is parsed once, when it first appears or changes: with 50 members the
/// final reports are many kilobytes each and the watch wakes this once per member.
fn wait_for<T>(
    keys: &mut Mirror,
    prefix: &str,
    until_ms: u64,
    mut enough: impl FnMut(&BTreeMap<String, Value>) -> Option<T>,
) -> (BTreeMap<String, Value>, Option<T>) {
    let (mut seen, mut revisions) = (BTreeMap::new(), BTreeMap::new());
    loop {
        let under: BTreeMap<&str, &Kv> = keys
            .kvs()
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, kv)| (&k[prefix.len()..], kv))
            .collect();
        seen.retain(|member: &String, _| under.contains_key(member.as_str()));
        for (member, kv) in under {
            if revisions.insert(member.to_string(), kv.mod_revision) != Some(kv.mod_revision) {
                seen.insert(member.to_string(), parse_value(&kv.value));
            }
        }
        revisions.retain(|member, _| seen.contains_key(member));
        if let Some(t) = enough(&seen) {
            return (seen, Some(t));
        }
        let now = now_ms();
        if now >= until_ms {
            return (seen, None);
        }
        keys.wait(Instant::now() + Duration::from_millis(until_ms - now));
    }
}

/// A member's value as JSON (an unreadable one is null).
fn parse_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

/// The ready answers as written by members (an unreadable one counts as failed).
fn ready_answers(raw: &BTreeMap<String, Value>) -> BTreeMap<String, ReadyAnswer> {
    raw.iter()
        .map(|(k, v)| {
            let a = ReadyAnswer::deserialize(v).unwrap_or(ReadyAnswer {
                state: "failed".into(),
                frozen: Vec::new(),
                errors: Vec::new(),
                takes_snapshot: false,
            });
            (k.clone(), a)
        })
        .collect()
}

/// The snapshot step, with every member ready: the members whose own provider takes
/// snapshots take theirs, while the group-level command (if any) runs; both are over, or
/// cut off, by the release time. Returns the members' snapshots and whether the step held
/// (the command succeeded and every member that was asked answered); errors name members.
fn snapshot_step(
    ops: &mut Mirror,
    etcd: &Etcd,
    spec: &OpSpec,
    command: &[String],
    ready: &BTreeMap<String, ReadyAnswer>,
    errors: &mut Vec<String>,
) -> (BTreeMap<String, MemberSnapshot>, bool) {
    let prefix = op_prefix(&spec.group, &spec.operation_id);
    let takers: Vec<&String> = ready
        .iter()
        .filter(|(_, a)| a.takes_snapshot)
        .map(|(n, _)| n)
        .collect();
    let mut held = true;
    if !takers.is_empty() {
        let key = decision_key(&spec.group, &spec.operation_id, "snapshot");
        if let Err(e) = etcd.put(&key, "take", spec.lease) {
            errors.push(format!(
                "could not ask the members for their snapshots: {e}"
            ));
            held = false;
        }
    }
    let (raw, command_result) = std::thread::scope(|s| {
        let cmd = (!command.is_empty()).then(|| s.spawn(|| run_command(command, spec)));
        let (raw, _) = wait_for(
            ops,
            &format!("{prefix}snapshot/"),
            super::release_at_ms(spec.deadline_ms),
            |seen| takers.iter().all(|n| seen.contains_key(*n)).then_some(()),
        );
        let result = cmd.map(|h| {
            h.join()
                .unwrap_or_else(|_| Err("the snapshot command could not be waited for".into()))
        });
        (raw, result)
    });
    if let Some(Err(e)) = command_result {
        errors.push(e);
        held = false;
    }
    let mut snapshots = BTreeMap::new();
    for n in takers {
        match raw
            .get(n)
            .map(|v| serde_json::from_value::<MemberSnapshot>(v.clone()))
        {
            Some(Ok(snap)) => {
                if let Some(e) = &snap.error {
                    errors.push(format!("member {n}'s own snapshot failed: {e}"));
                }
                snapshots.insert(n.clone(), snap);
            }
            Some(Err(_)) | None => {
                errors.push(format!(
                    "member {n} did not report its own snapshot before the deadline"
                ));
                held = false;
            }
        }
    }
    (snapshots, held)
}

/// Run one group operation; the report is stored in etcd and returned.
pub fn snapshot(
    cfg: &GroupConfig,
    etcd: &Arc<Etcd>,
    opts: &SnapshotOptions,
) -> Result<GroupReport, String> {
    let group = &cfg.name;
    let names = members(etcd, group)?;
    if names.is_empty() {
        return Err(format!("group {group} has no live member"));
    }
    let keeper = LeaseKeeper::start(cfg, etcd)?;
    let id = &opts.operation_id;
    // Every answer of the members comes under the operation's prefix: one watch wakes the
    // coordinator at each (opened before the operation is written, so nothing is missed).
    let prefix = op_prefix(group, id);
    let mut ops = Mirror::prefixes(etcd, std::slice::from_ref(&prefix), cfg.poll);
    let started = Instant::now();
    let started_at_ms = now_ms();
    let spec = OpSpec {
        group: group.clone(),
        operation_id: id.clone(),
        coordinator: format!("{}-{}", cfg.member, std::process::id()),
        deadline_ms: started_at_ms + opts.deadline.as_millis() as u64,
        members: names.clone(),
        lease: keeper.lease,
    };
    let spec_json = serde_json::to_string(&spec).map_err(|e| e.to_string())?;
    if !etcd.create(&spec_key(group, id), &spec_json, spec.lease)? {
        keeper.stop(etcd);
        return Err(format!("operation {id} already exists in group {group}"));
    }
    let mut errors = Vec::new();

    let (ready, all_ready_ms) = barrier(&mut ops, &spec, started);
    let (snapshots, mut barrier_held) = match all_ready_ms {
        Some(_) => snapshot_step(&mut ops, etcd, &spec, &opts.command, &ready, &mut errors),
        None => (BTreeMap::new(), false),
    };
    let decision = if barrier_held { "release" } else { "abort" };
    // Counted from when the write is sent: etcd's commit is part of the fan-out.
    let writing_ms = started.elapsed().as_millis() as u64;
    let release_key = decision_key(group, id, "release");
    let release_written_ms = match etcd.put(&release_key, decision, spec.lease) {
        Ok(()) => Some(writing_ms),
        Err(e) => {
            errors.push(format!("could not write the release: {e}"));
            barrier_held = false;
            None
        }
    };

    // Wait for every member to report its release; never past the deadline (plus the
    // time a member needs to notice it).
    let wait_until = spec.deadline_ms + cfg.lease_ttl.as_millis() as u64;
    let (done, all_released_ms) = wait_all(&mut ops, &spec, "done", wait_until, started);
    let members = outcomes(&names, &ready, snapshots, done, &mut errors);
    let (status, consistency) = group_outcome(&members, barrier_held);
    let mut report = GroupReport {
        group: group.clone(),
        operation_id: id.clone(),
        coordinator: spec.coordinator.clone(),
        status,
        consistency,
        errors,
        members,
        all_ready_ms,
        all_released_ms,
        release_written_ms,
        started_at_ms,
        deadline_ms: spec.deadline_ms,
        catalogs: Vec::new(),
    };
    let stored = etcd.put(
        &report_key(group, id),
        &serde_json::to_string(&report).map_err(|e| e.to_string())?,
        0,
    );
    keeper.stop(etcd);
    stored?;
    report.catalogs = wait_for_catalogs(cfg, etcd, &report);
    Ok(report)
}

/// The barrier: every member ready (the time since `started`), or one failed, or the
/// release time passed (None). The ready answers seen.
fn barrier(
    ops: &mut Mirror,
    spec: &OpSpec,
    started: Instant,
) -> (BTreeMap<String, ReadyAnswer>, Option<u64>) {
    let prefix = op_prefix(&spec.group, &spec.operation_id);
    let release_at = super::release_at_ms(spec.deadline_ms);
    let (raw, all_ready_ms) = wait_for(ops, &format!("{prefix}ready/"), release_at, |seen| {
        let ready = ready_answers(seen);
        if ready.values().any(|a| a.state == "failed") {
            return Some(None);
        }
        spec.members
            .iter()
            .all(|n| ready.contains_key(n))
            .then(|| Some(started.elapsed().as_millis() as u64))
    });
    (ready_answers(&raw), all_ready_ms.flatten())
}

/// Wait until every member has a key under `ops/OP/{what}/` (the time since `started`), or
/// `until_ms`; the values seen.
fn wait_all(
    ops: &mut Mirror,
    spec: &OpSpec,
    what: &str,
    until_ms: u64,
    started: Instant,
) -> (BTreeMap<String, Value>, Option<u64>) {
    let prefix = format!("{}{what}/", op_prefix(&spec.group, &spec.operation_id));
    wait_for(ops, &prefix, until_ms, |seen| {
        spec.members
            .iter()
            .all(|n| seen.contains_key(n))
            .then(|| started.elapsed().as_millis() as u64)
    })
}

/// Each member's outcome, in member order; errors name the members that failed.
fn outcomes(
    names: &[String],
    ready: &BTreeMap<String, ReadyAnswer>,
    mut snapshots: BTreeMap<String, MemberSnapshot>,
    mut done: BTreeMap<String, Value>,
    errors: &mut Vec<String>,
) -> Vec<MemberOutcome> {
    let mut out = Vec::new();
    for n in names {
        let ready_state = ready.get(n).map_or("missing", |a| a.state.as_str());
        match ready_state {
            "missing" => errors.push(format!(
                "member {n} never reported ready (dead or unreachable)"
            )),
            "failed" => errors.push(format!("member {n} failed to prepare")),
            _ => {}
        }
        let report = done.remove(n);
        if report.is_none() {
            errors.push(format!("member {n} did not report its release"));
        }
        out.push(MemberOutcome {
            member: n.clone(),
            ready: ready_state.to_string(),
            snapshot: snapshots.remove(n),
            report,
        });
    }
    out
}

/// The members whose catalog holds the report of `op` (they say so under `catalogs/`).
fn catalogs(etcd: &Etcd, group: &str, op: &str) -> Vec<String> {
    let prefix = catalog_key(group, op, "");
    by_member(etcd, &prefix).into_keys().collect()
}

/// Wait (at most one lease time-to-live) until every member that reported its release has
/// recorded the group report in its catalog; the members that did.
fn wait_for_catalogs(cfg: &GroupConfig, etcd: &Arc<Etcd>, report: &GroupReport) -> Vec<String> {
    let expected: Vec<&String> = report
        .members
        .iter()
        .filter(|m| m.report.is_some())
        .map(|m| &m.member)
        .collect();
    let until = now_ms() + cfg.lease_ttl.as_millis() as u64;
    let prefix = catalog_key(&report.group, &report.operation_id, "");
    let mut keys = Mirror::prefixes(etcd, std::slice::from_ref(&prefix), cfg.poll);
    let (seen, _) = wait_for(&mut keys, &prefix, until, |seen| {
        expected.iter().all(|n| seen.contains_key(*n)).then_some(())
    });
    seen.into_keys().collect()
}

/// Past group reports, newest first.
pub fn history(etcd: &Etcd, group: &str) -> Result<Vec<GroupReport>, String> {
    let prefix = format!("{}reports/", group_prefix(group));
    let mut reports: Vec<GroupReport> = etcd
        .range_prefix(&prefix)?
        .into_iter()
        .filter_map(|kv| serde_json::from_str(&kv.value).ok())
        .collect();
    reports.sort_by_key(|r| std::cmp::Reverse(r.started_at_ms));
    for r in &mut reports {
        r.catalogs = catalogs(etcd, group, &r.operation_id);
    }
    Ok(reports)
}
