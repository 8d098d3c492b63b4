//! `quiesce history` output: a table for people, JSON for programs.

use super::RunSummary;
use std::time::{Duration, UNIX_EPOCH};

/// A readable table, newest run first as given: start time (UTC, seconds), operation id,
/// kind, the consistency group's outcome (only when some run was part of a group
/// operation), status, consistency (with the target when it was not reached), frozen
/// milliseconds, the verification of the run's snapshots, and the error codes (repeats
/// counted as `code x2`).
pub fn render_history_table(runs: &[RunSummary]) -> String {
    if runs.is_empty() {
        return "no runs recorded\n".to_string();
    }
    let with_group = runs.iter().any(|r| r.group.is_some());
    let mut header = vec!["STARTED (UTC)", "OPERATION", "KIND"];
    if with_group {
        header.push("GROUP");
    }
    header.extend([
        "STATUS",
        "CONSISTENCY",
        "FROZEN MS",
        "VERIFICATION",
        "ERRORS",
    ]);
    let rows: Vec<Vec<String>> = runs.iter().map(|r| row(r, with_group)).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    // Numbers (frozen milliseconds) right-aligned.
    let number = header.len() - 3;
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            let w = *w;
            if i == cells.len() - 1 {
                l.push_str(cell);
            } else if i == number {
                l.push_str(&format!("{cell:>w$}  "));
            } else {
                l.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&header);
    for r in &rows {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        line(&cells);
    }
    out
}

fn row(r: &RunSummary, with_group: bool) -> Vec<String> {
    let started = if r.started_unix >= 0 {
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(r.started_unix as u64))
            .to_string()
    } else {
        r.started_at.clone()
    };
    let kind = r.kind.as_str().to_string();
    let consistency = if r.consistency < r.target_consistency {
        format!(
            "{} (target {})",
            r.consistency.as_str(),
            r.target_consistency.as_str()
        )
    } else {
        r.consistency.as_str().to_string()
    };
    let frozen = r
        .frozen_ms
        .map(|ms| ms.to_string())
        .unwrap_or_else(|| "-".to_string());
    let mut cells = vec![started, r.operation_id.clone(), kind];
    if with_group {
        cells.push(r.group.as_ref().map_or("-".to_string(), |g| {
            format!(
                "{}: {} ({})",
                g.group,
                g.status.as_str(),
                g.consistency.as_str()
            )
        }));
    }
    cells.extend([
        r.status.as_str().to_string(),
        consistency,
        frozen,
        r.verification.clone().unwrap_or_else(|| "-".to_string()),
        error_list(&r.error_codes),
    ]);
    cells
}

/// Codes in first-seen order, repeats counted.
fn error_list(codes: &[String]) -> String {
    if codes.is_empty() {
        return "-".to_string();
    }
    let mut seen: Vec<(&str, usize)> = Vec::new();
    for c in codes {
        match seen.iter_mut().find(|(s, _)| *s == c.as_str()) {
            Some((_, n)) => *n += 1,
            None => seen.push((c, 1)),
        }
    }
    seen.iter()
        .map(|(c, n)| {
            if *n > 1 {
                format!("{c} x{n}")
            } else {
                c.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A JSON array of the runs (pretty-printed, newline-terminated), for `history --json`.
pub fn render_history_json(runs: &[RunSummary]) -> String {
    let mut s = serde_json::to_string_pretty(runs).expect("RunSummary serializes");
    s.push('\n');
    s
}
