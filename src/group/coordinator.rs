//! The coordinator: `quiesce group snapshot NAME`, from any member or an admin machine.
//!
//! operation written -> every member ready (frozen) -> snapshot step -> release written ->
//! every member's final report -> group report. The coordinator holds a lease while it
//! works; if it dies, the lease expires, the operation's keys go, and every member releases.

use super::etcd::Etcd;
use super::{group_outcome, group_prefix, now_ms, op_prefix, GroupConfig, GroupReport};
use super::{MemberOutcome, OpSpec};
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
    etcd.range_prefix(prefix)
        .unwrap_or_default()
        .into_iter()
        .map(|kv| {
            let v = serde_json::from_str(&kv.value).unwrap_or(Value::Null);
            (kv.key[prefix.len()..].to_string(), v)
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

/// Run one group operation; the report is stored in etcd and returned.
pub fn snapshot(
    cfg: &GroupConfig,
    etcd: &Etcd,
    opts: &SnapshotOptions,
) -> Result<GroupReport, String> {
    let group = &cfg.name;
    let names = members(etcd, group)?;
    if names.is_empty() {
        return Err(format!("group {group} has no live member"));
    }
    let lease = etcd.grant(cfg.lease_ttl)?;
    let stop = Arc::new(AtomicBool::new(false));
    let keeper = {
        let (stop, ttl) = (Arc::clone(&stop), cfg.lease_ttl);
        let etcd = cfg
            .client()
            .unwrap_or_else(|_| Etcd::new(&cfg.endpoints, Duration::from_secs(1)));
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let _ = etcd.keep_alive(lease);
                let until = Instant::now() + ttl / 3;
                while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        })
    };
    let id = &opts.operation_id;
    let started = Instant::now();
    let started_at_ms = now_ms();
    let spec = OpSpec {
        group: group.clone(),
        operation_id: id.clone(),
        coordinator: format!("{}-{}", cfg.member, std::process::id()),
        deadline_ms: started_at_ms + opts.deadline.as_millis() as u64,
        members: names.clone(),
        lease,
    };
    let spec_key = format!("{}specs/{id}", group_prefix(group));
    let prefix = op_prefix(group, id);
    let spec_json = serde_json::to_string(&spec).map_err(|e| e.to_string())?;
    if !etcd.create(&spec_key, &spec_json, lease)? {
        stop.store(true, Ordering::SeqCst);
        return Err(format!("operation {id} already exists in group {group}"));
    }
    let mut errors = Vec::new();

    // Barrier: every member ready, or one failed, or the deadline.
    let ready_prefix = format!("{prefix}ready/");
    let mut ready;
    let all_ready_ms = loop {
        ready = by_member(etcd, &ready_prefix);
        let failed = ready.values().any(|a| a["state"] == "failed");
        if failed {
            break None;
        }
        if names.iter().all(|n| ready.contains_key(n)) {
            break Some(started.elapsed().as_millis() as u64);
        }
        if now_ms() >= super::release_at_ms(spec.deadline_ms) {
            break None;
        }
        std::thread::sleep(cfg.poll);
    };
    let mut barrier_held = all_ready_ms.is_some();
    if barrier_held && !opts.command.is_empty() {
        if let Err(e) = run_command(&opts.command, &spec) {
            errors.push(e);
            barrier_held = false;
        }
    }
    let decision = if barrier_held { "release" } else { "abort" };
    if let Err(e) = etcd.put(&format!("{prefix}release"), decision, lease) {
        errors.push(format!("could not write the release: {e}"));
    }

    // Wait for every member that got ready to report its release; never past the deadline
    // (plus the time a member needs to notice it).
    let done_prefix = format!("{prefix}done/");
    let wait_until = spec.deadline_ms + cfg.lease_ttl.as_millis() as u64;
    let mut done;
    let all_released_ms = loop {
        done = by_member(etcd, &done_prefix);
        if names.iter().all(|n| done.contains_key(n)) {
            break Some(started.elapsed().as_millis() as u64);
        }
        if now_ms() >= wait_until {
            break None;
        }
        std::thread::sleep(cfg.poll);
    };
    let mut outcomes = Vec::new();
    for n in &names {
        let ready_state = match ready.get(n) {
            Some(a) => a["state"].as_str().unwrap_or("failed").to_string(),
            None => "missing".to_string(),
        };
        match ready_state.as_str() {
            "missing" => errors.push(format!(
                "member {n} never reported ready (dead or unreachable)"
            )),
            "failed" => errors.push(format!("member {n} failed to prepare")),
            _ => {}
        }
        let report = done.get(n).cloned();
        if report.is_none() {
            errors.push(format!("member {n} did not report its release"));
        }
        outcomes.push(MemberOutcome {
            member: n.clone(),
            ready: ready_state,
            report,
        });
    }
    let (status, consistency) = group_outcome(&outcomes, barrier_held);
    let report = GroupReport {
        group: group.clone(),
        operation_id: id.clone(),
        coordinator: spec.coordinator.clone(),
        status,
        consistency,
        errors,
        members: outcomes,
        all_ready_ms,
        all_released_ms,
        started_at_ms,
        deadline_ms: spec.deadline_ms,
    };
    let stored = etcd.put(
        &format!("{}reports/{id}", group_prefix(group)),
        &serde_json::to_string(&report).map_err(|e| e.to_string())?,
        0,
    );
    stop.store(true, Ordering::SeqCst);
    let _ = keeper.join();
    let _ = etcd.revoke(lease);
    stored?;
    Ok(report)
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
    Ok(reports)
}
