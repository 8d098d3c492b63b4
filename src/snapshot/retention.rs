//! Retention: which existing snapshots to remove. Pure logic, no I/O, so every rule is unit
//! tested exactly; the btrfs provider feeds it the snapshots it finds and deletes what it
//! returns.
//!
//! The rules work on *runs*, not on single snapshots: one run (one operation id) may have
//! snapshotted several subvolumes, and those snapshots belong together (restoring half a
//! run is rarely what anybody wants). So a run is kept or removed as a whole:
//!
//! - `keep_last = N`: the N newest runs are kept, older runs are removed.
//! - `max_age = D`: runs older than `now - D` are removed (a run exactly `D` old is kept).
//! - Both may be set: a run is removed if *either* rule removes it.
//! - Neither set: nothing is removed.
//! - A protected run (the run that just made snapshots) is never removed, whatever its
//!   time; if the clock went backwards it may therefore be kept in addition to the N newest.
//!
//! A run's time is the newest creation time among its snapshots (normally they are all the
//! same: the provider stamps one run with one time). Runs with equal times are ordered by
//! operation id, so the outcome never depends on directory order.

use std::collections::BTreeMap;
use std::time::Duration;

/// The retention settings (from `[snapshot] keep_last`, `max_age`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    pub keep_last: Option<u32>,
    pub max_age: Option<Duration>,
}

impl Policy {
    /// Whether any rule is set (without one, pruning is a no-op).
    pub fn is_active(&self) -> bool {
        self.keep_last.is_some() || self.max_age.is_some()
    }
}

/// One existing snapshot, as far as retention cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub id: String,
    pub operation_id: String,
    /// Seconds since the epoch.
    pub created_unix: i64,
}

/// Why a snapshot is to be removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reasons {
    /// Its run is not among the `keep_last` newest.
    pub keep_last: bool,
    /// Its run is older than `max_age`.
    pub max_age: bool,
}

/// A snapshot to remove and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    pub id: String,
    pub operation_id: String,
    pub reasons: Reasons,
}

/// One run: its operation id, its time and its snapshots.
struct Run<'a> {
    operation_id: &'a str,
    time: i64,
    ids: Vec<&'a str>,
    protected: bool,
}

/// Group items into runs; a run is protected if any of its snapshots is in `protected_ids`.
fn group<'a>(items: &'a [Item], protected_ids: &[&str]) -> Vec<Run<'a>> {
    let mut runs: BTreeMap<&str, Run<'a>> = BTreeMap::new();
    for item in items {
        let run = runs.entry(&item.operation_id).or_insert_with(|| Run {
            operation_id: &item.operation_id,
            time: item.created_unix,
            ids: Vec::new(),
            protected: false,
        });
        run.time = run.time.max(item.created_unix);
        run.ids.push(&item.id);
        run.protected |= protected_ids.contains(&item.id.as_str());
    }
    runs.into_values().collect()
}

/// The snapshots to remove under `policy` at time `now_unix`, oldest run first. Never
/// returns a snapshot whose run contains one of `protected_ids` (the snapshots the current
/// run just made).
pub fn select(
    items: &[Item],
    policy: &Policy,
    now_unix: i64,
    protected_ids: &[&str],
) -> Vec<Removal> {
    let mut runs = group(items, protected_ids);
    // Newest first: rank 0 is the newest run.
    runs.sort_by(|a, b| (b.time, b.operation_id).cmp(&(a.time, a.operation_id)));
    let cutoff = policy
        .max_age
        .map(|age| now_unix.saturating_sub(i64::try_from(age.as_secs()).unwrap_or(i64::MAX)));
    let mut removals = Vec::new();
    for (rank, run) in runs.iter().enumerate().rev() {
        let reasons = Reasons {
            keep_last: policy.keep_last.is_some_and(|n| rank >= n as usize),
            max_age: cutoff.is_some_and(|c| run.time < c),
        };
        if run.protected || !(reasons.keep_last || reasons.max_age) {
            continue;
        }
        let mut ids = run.ids.clone();
        ids.sort_unstable();
        removals.extend(ids.into_iter().map(|id| Removal {
            id: id.to_string(),
            operation_id: run.operation_id.to_string(),
            reasons,
        }));
    }
    removals
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    const NOW: i64 = 1_800_000_000;

    fn item(id: &str, op: &str, t: i64) -> Item {
        Item {
            id: id.into(),
            operation_id: op.into(),
            created_unix: t,
        }
    }

    /// Runs r0 (newest) .. r4 (oldest), one day apart, two subvolumes each.
    fn five_runs() -> Vec<Item> {
        let mut v = Vec::new();
        for i in 0..5 {
            let op = format!("r{i}");
            v.push(item(&format!("a@{op}"), &op, NOW - i * DAY));
            v.push(item(&format!("b@{op}"), &op, NOW - i * DAY));
        }
        v
    }

    fn ids(r: &[Removal]) -> Vec<&str> {
        r.iter().map(|r| r.id.as_str()).collect()
    }

    fn policy(keep_last: Option<u32>, max_age_days: Option<u64>) -> Policy {
        Policy {
            keep_last,
            max_age: max_age_days.map(|d| Duration::from_secs(d * DAY as u64)),
        }
    }

    #[test]
    fn no_rule_removes_nothing() {
        assert!(select(&five_runs(), &Policy::default(), NOW, &[]).is_empty());
        assert!(!Policy::default().is_active());
    }

    #[test]
    fn keep_last_keeps_the_n_newest_runs_whole() {
        let r = select(&five_runs(), &policy(Some(2), None), NOW, &[]);
        assert_eq!(ids(&r), ["a@r4", "b@r4", "a@r3", "b@r3", "a@r2", "b@r2"]);
        assert!(r.iter().all(|r| r.reasons.keep_last && !r.reasons.max_age));
    }

    #[test]
    fn keep_last_larger_than_runs_removes_nothing() {
        assert!(select(&five_runs(), &policy(Some(5), None), NOW, &[]).is_empty());
        assert!(select(&five_runs(), &policy(Some(99), None), NOW, &[]).is_empty());
    }

    #[test]
    fn keep_last_zero_keeps_only_the_protected_run() {
        let r = select(&five_runs(), &policy(Some(0), None), NOW, &["a@r0"]);
        assert_eq!(r.len(), 8);
        assert!(!ids(&r).iter().any(|id| id.ends_with("@r0")));
    }

    #[test]
    fn max_age_removes_strictly_older_runs() {
        // Cutoff NOW - 2 days: r2 is exactly 2 days old (kept), r3 and r4 are older.
        let r = select(&five_runs(), &policy(None, Some(2)), NOW, &[]);
        assert_eq!(ids(&r), ["a@r4", "b@r4", "a@r3", "b@r3"]);
        assert!(r.iter().all(|r| r.reasons.max_age && !r.reasons.keep_last));
    }

    #[test]
    fn max_age_one_second_past_the_cutoff() {
        let items = vec![item("x", "old", NOW - 100), item("y", "edge", NOW - 99)];
        let p = Policy {
            keep_last: None,
            max_age: Some(Duration::from_secs(99)),
        };
        assert_eq!(ids(&select(&items, &p, NOW, &[])), ["x"]);
    }

    #[test]
    fn sub_second_max_age_compares_exactly() {
        // Ages are whole seconds: 1 s is not older than 1.5 s, 2 s is.
        let items = vec![item("x", "o", NOW - 2), item("y", "p", NOW - 1)];
        let p = Policy {
            keep_last: None,
            max_age: Some(Duration::from_millis(1500)),
        };
        assert_eq!(ids(&select(&items, &p, NOW, &[])), ["x"]);
    }

    #[test]
    fn both_rules_remove_the_union() {
        // keep_last 4 would remove r4 only; max_age 1 day would remove r2..r4.
        let r = select(&five_runs(), &policy(Some(4), Some(1)), NOW, &[]);
        assert_eq!(ids(&r), ["a@r4", "b@r4", "a@r3", "b@r3", "a@r2", "b@r2"]);
        let r4 = &r[0].reasons;
        assert!(r4.keep_last && r4.max_age);
        let r2 = &r[4].reasons;
        assert!(!r2.keep_last && r2.max_age);
        // keep_last 1 is stricter than max_age 3 days.
        let r = select(&five_runs(), &policy(Some(1), Some(3)), NOW, &[]);
        assert_eq!(r.len(), 8);
        assert!(r.iter().all(|r| r.reasons.keep_last));
        assert_eq!(r.iter().filter(|r| r.reasons.max_age).count(), 2);
    }

    #[test]
    fn protected_run_survives_every_rule() {
        // The current run is stamped in the past (clock went backwards) and is the oldest.
        let mut items = five_runs();
        items.push(item("a@cur", "cur", NOW - 30 * DAY));
        items.push(item("b@cur", "cur", NOW - 30 * DAY));
        let r = select(&items, &policy(Some(1), Some(1)), NOW, &["a@cur"]);
        // Both snapshots of the current run stay, even though only one was named.
        assert!(!ids(&r).iter().any(|id| id.ends_with("@cur")));
        // The newest other run is still kept by keep_last 1.
        assert!(!ids(&r).iter().any(|id| id.ends_with("@r0")));
        assert_eq!(r.len(), 8);
    }

    #[test]
    fn protected_run_counts_as_one_of_the_newest() {
        let mut items = five_runs();
        items.push(item("a@cur", "cur", NOW + 10));
        let r = select(&items, &policy(Some(2), None), NOW, &["a@cur"]);
        // cur and r0 kept; r1..r4 removed.
        assert_eq!(r.len(), 8);
        assert!(!ids(&r)
            .iter()
            .any(|id| id.ends_with("@r0") || id.ends_with("@cur")));
    }

    #[test]
    fn run_time_is_its_newest_snapshot() {
        // Run "split" has one snapshot 3 days old and one 1 day old: it is 1 day old.
        let items = vec![
            item("a@split", "split", NOW - 3 * DAY),
            item("b@split", "split", NOW - DAY),
            item("a@old", "old", NOW - 2 * DAY),
        ];
        let r = select(&items, &policy(None, Some(2)), NOW, &[]);
        assert!(r.is_empty(), "{r:?}");
        let r = select(&items, &policy(Some(1), None), NOW, &[]);
        assert_eq!(ids(&r), ["a@old"]);
    }

    #[test]
    fn equal_times_are_ordered_by_operation_id() {
        let items = vec![
            item("x", "op-b", NOW),
            item("y", "op-a", NOW),
            item("z", "op-c", NOW),
        ];
        let r = select(&items, &policy(Some(1), None), NOW, &[]);
        assert_eq!(ids(&r), ["y", "x"]);
        // Same result whatever the input order.
        let mut rev = items.clone();
        rev.reverse();
        assert_eq!(select(&rev, &policy(Some(1), None), NOW, &[]), r);
    }

    #[test]
    fn future_runs_are_not_aged_out() {
        let items = vec![item("x", "future", NOW + 10 * DAY)];
        assert!(select(&items, &policy(None, Some(1)), NOW, &[]).is_empty());
    }

    #[test]
    fn huge_max_age_does_not_overflow() {
        let items = vec![item("x", "o", 0)];
        let p = Policy {
            keep_last: None,
            max_age: Some(Duration::from_secs(u64::MAX)),
        };
        assert!(select(&items, &p, NOW, &[]).is_empty());
    }

    #[test]
    fn empty_input() {
        assert!(select(&[], &policy(Some(0), Some(0)), NOW, &["x"]).is_empty());
    }

    #[test]
    fn protected_ids_not_present_change_nothing() {
        let a = select(&five_runs(), &policy(Some(2), None), NOW, &[]);
        let b = select(&five_runs(), &policy(Some(2), None), NOW, &["nope"]);
        assert_eq!(a, b);
    }
}
