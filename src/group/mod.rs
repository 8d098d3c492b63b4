//! Consistency groups: one application-consistent cut across many machines, coordinated
//! through etcd (see `docs/groups.md`).
//!
//! Members are ordinary `quiesce serve` processes whose configuration has a `[group]`
//! section ([`member`]); `quiesce group snapshot` ([`coordinator`]) writes an operation,
//! waits for every member to be frozen, runs the snapshot step, and tells everyone to
//! release. Every member releases by itself at the operation's absolute deadline, whatever
//! happens to the coordinator, etcd or the network.
//!
//! Keys, all under `/quiesce/groups/{group}/`:
//! - `members/{member}`: one per live member, under the member's kept-alive lease.
//! - `specs/{op}`: the operation (coordinator, absolute deadline), under the coordinator's
//!   lease: when the coordinator dies, the key disappears and members release.
//! - `specs/{op}/snapshot`: written by the coordinator when every member is ready and at
//!   least one member's provider takes snapshots: those members take theirs now.
//! - `specs/{op}/release`: written by the coordinator once the snapshot step is over
//!   (`release`) or abandoned (`abort`).
//!
//!   The coordinator's decisions sit beside the spec so that the one watch each member keeps
//!   on `specs/` from its start carries them: a watch opened per operation costs a new
//!   stream and a read at every member just when the barrier is reached.
//! - `ops/{op}/ready/{member}`: the member's prepare answer (frozen, prepared or failed)
//!   and whether its own provider takes a snapshot ([`ReadyAnswer`]).
//! - `ops/{op}/snapshot/{member}`: the snapshots a member's provider took, or why it could
//!   not ([`MemberSnapshot`]).
//! - `ops/{op}/done/{member}`: the member's final report.
//! - `reports/{op}`: the group report (no lease: it is the history).
//! - `catalogs/{op}/{member}`: the member recorded the group report in its catalog (no
//!   lease).

pub mod cli;
pub mod coordinator;
pub mod etcd;
pub mod member;

use crate::codes::Problem;
use crate::report::{Consistency, SnapshotRef, Status};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use crate::config::group::{valid_name, GroupConfig, RawGroup};

impl GroupConfig {
    /// A client for this group's etcd, authenticated when a user is configured.
    pub fn client(&self) -> Result<etcd::Etcd, String> {
        let mut c = etcd::Etcd::new(&self.endpoints, Duration::from_secs(2));
        if self.tls.ca_file.is_some() {
            c = c.with_tls(&self.tls)?;
        }
        match (&self.user, &self.password_file) {
            (Some(user), Some(file)) => {
                let mut text = String::new();
                std::io::Read::read_to_string(
                    &mut crate::trust::open_config(file)
                        .map_err(|e| format!("group.password_file: {e}"))?,
                    &mut text,
                )
                .map_err(|e| format!("group.password_file: {e}"))?;
                let c = c.with_credentials(user.clone(), text.trim().to_string());
                c.authenticate()?;
                Ok(c)
            }
            _ => Ok(c),
        }
    }
}

/// Members start releasing this long (1 s) before the deadline, so that they are thawed (post hooks
/// aside) by it; the coordinator stops waiting and kills the snapshot step at the same time.
pub const RELEASE_MARGIN_MS: u64 = 1000;

/// When members start releasing by themselves, and the snapshot step is cut off.
pub fn release_at_ms(deadline_ms: u64) -> u64 {
    deadline_ms.saturating_sub(RELEASE_MARGIN_MS)
}

/// Key prefix of a group.
pub fn group_prefix(group: &str) -> String {
    format!("/quiesce/groups/{group}/")
}

/// Key prefix of one operation.
pub fn op_prefix(group: &str, op: &str) -> String {
    format!("{}ops/{op}/", group_prefix(group))
}

/// Key of the operation's spec.
pub fn spec_key(group: &str, op: &str) -> String {
    format!("{}specs/{op}", group_prefix(group))
}

/// Key of one of the coordinator's decisions about an operation (`snapshot`, `release`).
pub fn decision_key(group: &str, op: &str, decision: &str) -> String {
    format!("{}/{decision}", spec_key(group, op))
}

/// Key of the group report of one operation.
pub fn report_key(group: &str, op: &str) -> String {
    format!("{}reports/{op}", group_prefix(group))
}

/// Key saying that `member` recorded the group report of `op` in its catalog.
pub fn catalog_key(group: &str, op: &str, member: &str) -> String {
    format!("{}catalogs/{op}/{member}", group_prefix(group))
}

/// By when the coordinator has written the group report, if it is alive: it waits for the
/// members' final reports until the deadline plus one lease (a member's time to notice),
/// then writes. Members waiting to record the report give up a little later.
pub fn report_written_by_ms(spec: &OpSpec, lease_ttl: Duration) -> u64 {
    spec.deadline_ms + 2 * lease_ttl.as_millis() as u64 + 5000
}

/// Milliseconds since the epoch (the shared clock of deadlines).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The operation as the coordinator writes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OpSpec {
    pub group: String,
    pub operation_id: String,
    pub coordinator: String,
    /// Absolute deadline, milliseconds since the epoch: every member has released by then.
    pub deadline_ms: u64,
    /// The members expected (those whose membership key existed when it was written).
    pub members: Vec<String>,
    /// The coordinator's lease: members attach their keys to it, so that everything but the
    /// group report goes away with the coordinator.
    pub lease: i64,
}

/// A member's answer to the operation, under `ops/{op}/ready/{member}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReadyAnswer {
    /// `frozen`, `prepared` or `failed`.
    pub state: String,
    /// Mount points frozen.
    #[serde(default)]
    pub frozen: Vec<String>,
    /// Why the prepare failed, or what went wrong on the way.
    #[serde(default)]
    pub errors: Vec<Problem>,
    /// This member's own provider takes a snapshot in the snapshot step.
    #[serde(default)]
    pub takes_snapshot: bool,
}

/// What a member's own provider did in the snapshot step, under
/// `ops/{op}/snapshot/{member}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemberSnapshot {
    /// The snapshots taken (the provider's ids).
    #[serde(default)]
    pub snapshots: Vec<SnapshotRef>,
    /// Why the provider took none, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What became of one member in a group operation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemberOutcome {
    pub member: String,
    /// `frozen`, `prepared`, `failed`, or `missing` (never reported ready).
    pub ready: String,
    /// What the member's own provider did while every member was frozen (None: its
    /// provider takes no snapshots, or the step never ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<MemberSnapshot>,
    /// The member's final report (status, consistency, errors ...), if it reported one.
    pub report: Option<serde_json::Value>,
}

/// The status and consistency of a member's report (`None` when it has none).
fn member_result(m: &MemberOutcome) -> Option<(Status, Consistency)> {
    let r = m.report.as_ref()?;
    let status = serde_json::from_value(r["status"].clone()).ok()?;
    let consistency = serde_json::from_value(r["consistency"].clone()).ok()?;
    Some((status, consistency))
}

/// The group's outcome: the weakest member's. A member without a report, that was not
/// ready, or whose own snapshot failed, fails the group; `barrier_held` is false when the
/// snapshot step did not run with every member ready.
pub fn group_outcome(members: &[MemberOutcome], barrier_held: bool) -> (Status, Consistency) {
    if members.is_empty() || !barrier_held {
        return (Status::Failed, Consistency::None);
    }
    let mut status = Status::Succeeded;
    let mut consistency = Consistency::Application;
    for m in members {
        match member_result(m) {
            Some((s, c))
                if m.ready != "failed"
                    && m.ready != "missing"
                    && m.snapshot.as_ref().is_none_or(|s| s.error.is_none()) =>
            {
                consistency = consistency.min(c);
                status = match (status, s) {
                    (Status::Failed, _) | (_, Status::Failed) => Status::Failed,
                    (Status::Degraded, _) | (_, Status::Degraded) => Status::Degraded,
                    _ => Status::Succeeded,
                };
            }
            _ => return (Status::Failed, Consistency::None),
        }
    }
    (status, consistency)
}

/// The group report, stored under `reports/{op}` and printed by `quiesce group snapshot`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GroupReport {
    pub group: String,
    pub operation_id: String,
    pub coordinator: String,
    pub status: Status,
    pub consistency: Consistency,
    /// Why the group did not succeed, in words (naming members).
    pub errors: Vec<String>,
    pub members: Vec<MemberOutcome>,
    /// From "operation written" to every member ready, and to every member released.
    pub all_ready_ms: Option<u64>,
    pub all_released_ms: Option<u64>,
    /// From "operation written" to the release (or abort) written: the members' own
    /// timings (`members[].report.group_timing`) tell from there what was theirs.
    #[serde(default)]
    pub release_written_ms: Option<u64>,
    pub started_at_ms: u64,
    pub deadline_ms: u64,
    /// Members whose catalog holds this report (filled in when read back from etcd, and by
    /// the coordinator after the members said so).
    #[serde(default)]
    pub catalogs: Vec<String>,
}

impl GroupReport {
    /// This report as `member`'s catalog records it.
    pub fn catalog_row(
        &self,
        member: &str,
    ) -> Result<crate::catalog::GroupRunRow, crate::catalog::CatalogError> {
        Ok(crate::catalog::GroupRunRow {
            group: self.group.clone(),
            operation_id: self.operation_id.clone(),
            member: member.to_string(),
            coordinator: self.coordinator.clone(),
            status: self.status,
            consistency: self.consistency,
            started_unix: (self.started_at_ms / 1000) as i64,
            report_json: serde_json::to_string(self)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(ready: &str, report: Option<(&str, &str)>) -> MemberOutcome {
        MemberOutcome {
            member: "m".into(),
            ready: ready.into(),
            snapshot: None,
            report: report.map(|(s, c)| json!({ "status": s, "consistency": c })),
        }
    }

    /// A member whose own provider took a snapshot (`error` None) or failed.
    fn snap(mut o: MemberOutcome, error: Option<&str>) -> MemberOutcome {
        o.snapshot = Some(MemberSnapshot {
            snapshots: Vec::new(),
            error: error.map(String::from),
        });
        o
    }

    #[test]
    fn outcome_is_the_weakest_member() {
        use Consistency::*;
        use Status::*;
        let app = Some(("succeeded", "application"));
        let fs = Some(("degraded", "file-system"));
        let cases: Vec<(Vec<MemberOutcome>, bool, (Status, Consistency))> = vec![
            (
                vec![m("frozen", app), m("frozen", app)],
                true,
                (Succeeded, Application),
            ),
            (
                vec![m("frozen", app), m("frozen", fs)],
                true,
                (Degraded, FileSystem),
            ),
            (
                vec![m("frozen", app), m("prepared", app)],
                true,
                (Succeeded, Application),
            ),
            (
                vec![m("frozen", app), m("missing", Option::None)],
                true,
                (Failed, None),
            ),
            (
                vec![m("frozen", app), m("frozen", Option::None)],
                true,
                (Failed, None),
            ),
            (
                vec![m("frozen", app), m("failed", Some(("failed", "none")))],
                true,
                (Failed, None),
            ),
            (
                vec![m("frozen", app), m("frozen", Some(("failed", "crash")))],
                true,
                (Failed, Crash),
            ),
            (
                vec![snap(m("frozen", app), Option::None), m("frozen", app)],
                true,
                (Succeeded, Application),
            ),
            // A member whose own snapshot failed fails the group, even if its report
            // were to say otherwise.
            (
                vec![snap(m("frozen", app), Some("disk full")), m("frozen", app)],
                true,
                (Failed, None),
            ),
            (vec![m("frozen", app)], false, (Failed, None)),
            (vec![], true, (Failed, None)),
        ];
        for (members, barrier, want) in cases {
            assert_eq!(
                group_outcome(&members, barrier),
                want,
                "{members:?} {barrier}"
            );
        }
    }
}
