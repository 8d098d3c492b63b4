//! The consistency promise as one pure decision: what happened ([`Facts`]) in, status and
//! consistency out. The rules are the README's "Consistency rules"; the table below tests
//! every one of them.

use crate::report::{Consistency, Status};

/// What the pre phase decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreOutcome {
    /// Every pre hook succeeded (or there were none).
    AllOk,
    /// A pre hook failed with `continue_on_failure = true`: the rest ran.
    FailedContinued,
    /// A pre hook failed with `continue_on_failure = false` and the plan holds a single
    /// volume: a crash-consistent snapshot is taken without freezing.
    FailedCrashOnly,
    /// A pre hook failed with `continue_on_failure = false` (several volumes), or the run
    /// was interrupted: no snapshot.
    Aborted,
}

/// What one run did, as far as its outcome goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// A snapshot is taken at all (a provider, or the host in host-driven mode).
    pub takes_snapshots: bool,
    /// Some hook has a pre script.
    pub has_pre_hooks: bool,
    /// The run is meant to freeze (enabled, or the requested scope freezes).
    pub meant_to_freeze: bool,
    /// ... and the plan had something to freeze.
    pub plan_has_targets: bool,
    pub pre: PreOutcome,
    /// A held hook lost its hold before the snapshot completed.
    pub hold_lost: bool,
    /// Every target was frozen.
    pub froze: bool,
    /// The guard thawed before the snapshot completed.
    pub guard_fired_before_snapshot: bool,
    /// The snapshot completed.
    pub snapshot_taken: bool,
    /// Something that must never happen did (a thaw failed).
    pub serious: bool,
    /// A post hook with `continue_on_failure = false` failed.
    pub post_failed_fatal: bool,
    /// Any error was recorded.
    pub any_error: bool,
}

/// What a fully successful run reaches.
pub fn target(f: &Facts) -> Consistency {
    if !f.takes_snapshots {
        Consistency::None
    } else if f.has_pre_hooks {
        Consistency::Application
    } else if f.meant_to_freeze {
        Consistency::FileSystem
    } else {
        Consistency::Crash
    }
}

/// The consistency that held at the moment of the snapshot.
pub fn reached(f: &Facts) -> Consistency {
    if !f.snapshot_taken {
        return Consistency::None;
    }
    let froze = f.froze && !f.guard_fired_before_snapshot;
    let hooks_ok = f.pre == PreOutcome::AllOk && !f.hold_lost;
    let freezing = f.meant_to_freeze && f.plan_has_targets;
    if hooks_ok && f.has_pre_hooks && (froze || !freezing) {
        Consistency::Application
    } else if froze {
        Consistency::FileSystem
    } else {
        Consistency::Crash
    }
}

/// Status and consistency of a run (and the target it was measured against).
pub fn judge(f: &Facts) -> (Status, Consistency, Consistency) {
    let consistency = reached(f);
    let target = target(f);
    let status = if f.serious
        || f.post_failed_fatal
        || (consistency == Consistency::None && target != Consistency::None)
        || (f.pre == PreOutcome::Aborted && target != Consistency::None)
    {
        Status::Failed
    } else if consistency < target || f.any_error {
        Status::Degraded
    } else {
        Status::Succeeded
    };
    (status, consistency, target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Consistency::*;
    use Status::*;

    /// Hooks, freezing, everything worked.
    fn clean() -> Facts {
        Facts {
            takes_snapshots: true,
            has_pre_hooks: true,
            meant_to_freeze: true,
            plan_has_targets: true,
            pre: PreOutcome::AllOk,
            hold_lost: false,
            froze: true,
            guard_fired_before_snapshot: false,
            snapshot_taken: true,
            serious: false,
            post_failed_fatal: false,
            any_error: false,
        }
    }

    #[test]
    fn every_consistency_rule() {
        let pre_failed = |pre| Facts {
            pre,
            any_error: true,
            ..clean()
        };
        #[rustfmt::skip]
        let table: Vec<(&str, Facts, Status, Consistency)> = vec![
            ("application: hooks ok, frozen, snapshot inside the window",
                clean(), Succeeded, Application),
            ("application without freezing when freezing is disabled",
                Facts { meant_to_freeze: false, froze: false, ..clean() }, Succeeded, Application),
            ("application when freezing is on but nothing was eligible",
                Facts { plan_has_targets: false, froze: false, ..clean() }, Succeeded, Application),
            ("hooks ok but the freeze failed: crash",
                Facts { froze: false, any_error: true, ..clean() }, Degraded, Crash),
            ("file-system: a pre hook failed (continue), the freeze held",
                pre_failed(PreOutcome::FailedContinued), Degraded, FileSystem),
            ("crash: a pre hook failed (continue), no freezing",
                Facts { meant_to_freeze: false, froze: false, ..pre_failed(PreOutcome::FailedContinued) },
                Degraded, Crash),
            ("a pre hook failed (stop), single volume: crash without freezing",
                Facts { froze: false, ..pre_failed(PreOutcome::FailedCrashOnly) }, Degraded, Crash),
            ("a pre hook failed (stop), several volumes: no snapshot, failed",
                Facts { froze: false, snapshot_taken: false, ..pre_failed(PreOutcome::Aborted) },
                Failed, None),
            ("file-system: a held hook lost its hold, the freeze held",
                Facts { hold_lost: true, any_error: true, ..clean() }, Degraded, FileSystem),
            ("post hook failure (continue) never lowers the consistency: degraded",
                Facts { any_error: true, ..clean() }, Degraded, Application),
            ("post hook failure (stop) never lowers the consistency: failed",
                Facts { post_failed_fatal: true, any_error: true, ..clean() }, Failed, Application),
            ("the guard thawed before the snapshot completed: never file-system",
                Facts { guard_fired_before_snapshot: true, any_error: true, ..clean() },
                Degraded, Crash),
            ("the guard fired, no hooks: crash, not file-system",
                Facts { has_pre_hooks: false, guard_fired_before_snapshot: true, any_error: true,
                    ..clean() }, Degraded, Crash),
            ("none: the provider failed",
                Facts { snapshot_taken: false, any_error: true, ..clean() }, Failed, None),
            ("file-system target: no hooks, frozen",
                Facts { has_pre_hooks: false, ..clean() }, Succeeded, FileSystem),
            ("crash target: no hooks, no freezing",
                Facts { has_pre_hooks: false, meant_to_freeze: false, froze: false, ..clean() },
                Succeeded, Crash),
            ("no snapshot provider: nothing promised, nothing failed",
                Facts { takes_snapshots: false, snapshot_taken: false, ..clean() }, Succeeded, None),
            ("a failed thaw fails the run",
                Facts { serious: true, any_error: true, ..clean() }, Failed, Application),
            ("interrupted: no snapshot, failed",
                Facts { snapshot_taken: false, froze: false, ..pre_failed(PreOutcome::Aborted) },
                Failed, None),
        ];
        for (rule, facts, status, consistency) in table {
            let (s, c, _) = judge(&facts);
            assert_eq!((s, c), (status, consistency), "{rule}");
        }
    }

    #[test]
    fn targets() {
        assert_eq!(target(&clean()), Application);
        let no_hooks = Facts {
            has_pre_hooks: false,
            ..clean()
        };
        assert_eq!(target(&no_hooks), FileSystem);
        assert_eq!(
            target(&Facts {
                meant_to_freeze: false,
                ..no_hooks
            }),
            Crash
        );
        assert_eq!(
            target(&Facts {
                takes_snapshots: false,
                ..clean()
            }),
            None
        );
    }
}
