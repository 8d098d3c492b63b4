//! Which recorded runs retention deletes: a pure decision on (id, start time) pairs, so the
//! rule is tested by a table and the catalog only carries it out.

/// One recorded run, as retention sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAge {
    pub id: i64,
    pub started_unix: i64,
}

/// The ids of the runs to delete. `runs` are newest first (the order `history` shows).
/// A run goes when it is not among the newest `keep_runs`, or when it started more than
/// `keep_days` days before `now_unix`. The newest run is always kept: it is the run just
/// recorded, whatever the clock says about it.
pub fn select(runs: &[RunAge], keep_runs: u64, keep_days: u64, now_unix: i64) -> Vec<i64> {
    let max_age = i64::try_from(keep_days.saturating_mul(86_400)).unwrap_or(i64::MAX);
    let cutoff = now_unix.saturating_sub(max_age);
    let keep_runs = usize::try_from(keep_runs).unwrap_or(usize::MAX).max(1);
    runs.iter()
        .enumerate()
        .skip(1)
        .filter(|(i, r)| *i >= keep_runs || r.started_unix < cutoff)
        .map(|(_, r)| r.id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    const NOW: i64 = 1_800_000_000;

    /// Runs newest first, one per `ages` entry (age in days), ids counting down.
    fn runs(ages: &[i64]) -> Vec<RunAge> {
        ages.iter()
            .enumerate()
            .map(|(i, a)| RunAge {
                id: 100 - i as i64,
                started_unix: NOW - a * DAY,
            })
            .collect()
    }

    #[test]
    fn retention_table() {
        // (ages of the runs in days, newest first; keep_runs; keep_days; ids deleted)
        let table: &[(&[i64], u64, u64, &[i64])] = &[
            // Nothing recorded, nothing to do.
            (&[], 10, 400, &[]),
            // Within both limits: everything stays.
            (&[0, 1, 2], 10, 400, &[]),
            // Count: only the newest keep_runs stay.
            (&[0, 1, 2, 3, 4], 3, 400, &[97, 96]),
            (&[0, 1, 2], 3, 400, &[]),
            (&[0, 1, 2], 1, 400, &[99, 98]),
            // Age: runs started before now - keep_days go, whatever the count.
            (&[0, 5, 31, 400], 10, 30, &[98, 97]),
            // Exactly keep_days old is not older than the cutoff.
            (&[0, 30], 10, 30, &[]),
            // Both rules: a run goes when either says so.
            (&[0, 1, 50, 2], 3, 30, &[98, 97]),
            // The newest run is always kept, even if the clock makes it look old.
            (&[500, 600], 10, 30, &[99]),
            // keep_runs = 0 (refused by the configuration) still keeps the newest.
            (&[0, 1], 0, 400, &[99]),
            // Huge limits never overflow.
            (&[0, 1], u64::MAX, u64::MAX, &[]),
        ];
        for (ages, keep_runs, keep_days, want) in table {
            assert_eq!(
                select(&runs(ages), *keep_runs, *keep_days, NOW),
                want.to_vec(),
                "ages {ages:?}, keep_runs {keep_runs}, keep_days {keep_days}"
            );
        }
    }
}
