//! The member side, inside `quiesce serve`: keep the membership key alive, watch the group's
//! operations, prepare (pre hooks + freeze), report ready, and release when told, when the
//! coordinator disappears, or at the deadline, whichever comes first.
//!
//! The member drives the same server state as the HTTP API (one operation at a time, the
//! freeze guard armed at the operation's deadline), so a member that loses etcd altogether
//! is still thawed by its guard on time.

use super::etcd::Etcd;
use super::{now_ms, op_prefix, GroupConfig, OpSpec};
use crate::server::http::Request;
use crate::server::Server;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Call the server as the HTTP API would.
fn call(server: &Arc<Server>, method: &str, path: String, body: Value) -> Value {
    let resp = server.handle(&Request {
        method: method.into(),
        path,
        headers: Vec::new(),
        body: body.to_string().into_bytes(),
    });
    serde_json::from_slice(&resp.body).unwrap_or(Value::Null)
}

/// Start the member in the background (for the life of the process).
pub fn start(cfg: GroupConfig, server: Arc<Server>) {
    std::thread::spawn(move || run(cfg, server));
}

/// Keep the membership key under a live lease; re-register when the lease is lost.
fn keep_membership(cfg: &GroupConfig, etcd: &Etcd, lease: &Mutex<i64>) {
    let key = format!("{}members/{}", super::group_prefix(&cfg.name), cfg.member);
    let mut current = *lease.lock().unwrap();
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
        *lease.lock().unwrap() = current;
    }
}

fn run(cfg: GroupConfig, server: Arc<Server>) {
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
    let specs = format!("{}specs/", super::group_prefix(&cfg.name));
    let mut handled: HashSet<String> = HashSet::new();
    loop {
        match etcd.range_prefix(&specs) {
            Ok(kvs) => {
                let live: HashSet<String> = kvs.iter().map(|kv| kv.key.clone()).collect();
                handled.retain(|k| live.contains(k));
                for kv in kvs {
                    if handled.contains(&kv.key) {
                        continue;
                    }
                    handled.insert(kv.key.clone());
                    match serde_json::from_str::<OpSpec>(&kv.value) {
                        Ok(spec) if acts_on(&cfg, &spec) => {
                            run_operation(&cfg, &etcd, &server, &spec)
                        }
                        Ok(spec) => tracing::warn!(
                            group = %spec.group, operation_id = %spec.operation_id,
                            "group: ignoring an operation not meant for this member"
                        ),
                        Err(e) => {
                            tracing::warn!(key = %kv.key, error = %e, "group: unreadable operation")
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "group: etcd unreachable"),
        }
        std::thread::sleep(cfg.poll);
    }
}

/// A member acts only on its own group's operations that name it and are not past due.
pub fn acts_on(cfg: &GroupConfig, spec: &OpSpec) -> bool {
    spec.group == cfg.name
        && spec.members.iter().any(|m| m == &cfg.member)
        && super::valid_name(&spec.operation_id)
        && spec.deadline_ms > now_ms()
}

/// The operation's key prefix, from its spec key (`.../specs/OP` -> `.../ops/OP/`).
fn prefix_of(spec_key: &str) -> String {
    let (group, op) = spec_key.rsplit_once("specs/").unwrap_or((spec_key, ""));
    format!("{group}ops/{op}/")
}

/// Why a member released.
fn release_reason(etcd: &Etcd, prefix: &str, spec_key: &str) -> Option<&'static str> {
    match etcd.get(&format!("{prefix}release")) {
        Ok(Some(_)) => return Some("released by the coordinator"),
        Ok(None) => {}
        Err(_) => return None, // etcd unreachable: keep trying until the deadline
    }
    match etcd.get(spec_key) {
        Ok(None) => Some("the coordinator disappeared (its lease expired)"),
        _ => None,
    }
}

fn run_operation(cfg: &GroupConfig, etcd: &Arc<Etcd>, server: &Arc<Server>, spec: &OpSpec) {
    let id = &spec.operation_id;
    let prefix = op_prefix(&cfg.name, id);
    let spec_key = format!("{}specs/{id}", super::group_prefix(&cfg.name));
    let left = spec.deadline_ms.saturating_sub(now_ms());
    tracing::info!(operation_id = %id, deadline_ms = left, "group: preparing");
    let answer = call(
        server,
        "POST",
        format!("/v1/operations/{id}/prepare"),
        json!({
            "deadline": format!("{left}ms"),
            "caller": crate::report::Caller::Group {
                group: spec.group.clone(),
                coordinator: spec.coordinator.clone(),
            },
        }),
    );
    let ready = answer["state"].as_str().unwrap_or("failed").to_string();
    let _ = etcd.put(
        &format!("{prefix}ready/{}", cfg.member),
        &answer.to_string(),
        spec.lease,
    );
    let why = if ready == "failed" {
        "this member failed to prepare"
    } else {
        // etcd is watched from another thread so that a call hanging on a lost network can
        // never hold the release past the deadline.
        let (tx, rx) = std::sync::mpsc::channel();
        let release_at = super::release_at_ms(spec.deadline_ms);
        let (etcd, poll) = (Arc::clone(etcd), cfg.poll);
        std::thread::spawn(move || {
            while now_ms() < release_at {
                if let Some(why) = release_reason(&etcd, &prefix_of(&spec_key), &spec_key) {
                    let _ = tx.send(why);
                    return;
                }
                std::thread::sleep(poll);
            }
        });
        let left = Duration::from_millis(release_at.saturating_sub(now_ms()));
        rx.recv_timeout(left).unwrap_or("the deadline passed")
    };
    tracing::info!(operation_id = %id, reason = why, "group: releasing");
    let mut report = call(
        server,
        "POST",
        format!("/v1/operations/{id}/release"),
        json!({}),
    );
    report["group_release_reason"] = json!(why);
    let _ = etcd.put(
        &format!("{prefix}done/{}", cfg.member),
        &report.to_string(),
        spec.lease,
    );
}
