//! Prometheus text output: accepted by the real parser and linter (`promtool check
//! metrics`), with the right values; label escaping; atomic textfile writes.

use crate::support;
use crate::support::reports;

use quiesce::catalog::{Catalog, RunKind, Totals};
use quiesce::metrics::{self, LastRun};
use reports::at;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use support::Scratch;

const T0: u64 = 1_740_787_200;
const PROMTOOL: &str = "/usr/bin/promtool";

/// Run `promtool check metrics` on the text; panic with its findings unless it is clean.
fn promtool_check(text: &str) {
    let mut child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && findings.trim().is_empty(),
        "promtool check metrics rejected the output (rc {:?}):\n{findings}\n--- text ---\n{text}",
        out.status.code()
    );
}

/// Samples keyed by `name{labels}` exactly as written; panics on a duplicate series.
fn samples(text: &str) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let v: f64 = value.parse().unwrap();
        assert!(
            m.insert(series.to_string(), v).is_none(),
            "duplicate series {series}"
        );
    }
    m
}

fn catalog_with_runs(s: &Scratch) -> Catalog {
    let mut c = Catalog::open(&s.join("catalog.db")).unwrap();
    c.record(&reports::succeeded("op-1", at(T0)), RunKind::Snapshot)
        .unwrap();
    c.record(&reports::degraded("op-2", at(T0 + 60)), RunKind::Snapshot)
        .unwrap();
    c.record(&reports::failed("op-3", at(T0 + 120)), RunKind::Served)
        .unwrap();
    c.record(&reports::degraded("op-4", at(T0 + 180)), RunKind::Snapshot)
        .unwrap();
    c
}

#[test]
fn metrics_pass_promtool_and_carry_the_right_values() {
    let s = Scratch::new("metrics-values");
    let c = catalog_with_runs(&s);
    let last = reports::degraded("op-4", at(T0 + 180));
    let text = metrics::render(Some(&last), &c.totals().unwrap());
    print!("{text}");
    promtool_check(&text);

    let m = samples(&text);
    let v = |k: &str| *m.get(k).unwrap_or_else(|| panic!("missing {k}"));
    assert_eq!(v(r#"quiesce_last_run_status{status="degraded"}"#), 1.0);
    assert_eq!(v(r#"quiesce_last_run_status{status="succeeded"}"#), 0.0);
    assert_eq!(v(r#"quiesce_last_run_status{status="failed"}"#), 0.0);
    assert_eq!(
        v(r#"quiesce_last_run_consistency{consistency="file-system"}"#),
        1.0
    );
    for other in ["none", "crash", "application"] {
        assert_eq!(
            v(&format!(
                "quiesce_last_run_consistency{{consistency=\"{other}\"}}"
            )),
            0.0
        );
    }
    assert_eq!(v("quiesce_last_run_consistency_level"), 2.0);
    assert_eq!(v("quiesce_last_run_target_consistency_level"), 3.0);
    assert_eq!(v("quiesce_last_run_frozen_seconds"), 1.149);
    assert_eq!(v("quiesce_last_run_duration_seconds"), 31.2);
    // started T0+180, 31.2 s long: finished at T0+211.2, whole seconds.
    assert_eq!(v("quiesce_last_run_timestamp_seconds"), (T0 + 211) as f64);
    assert_eq!(
        v(r#"quiesce_last_run_hook_duration_seconds{hook="mysql",phase="pre"}"#),
        30.0
    );
    assert_eq!(
        v(r#"quiesce_last_run_hook_failed{hook="mysql",phase="pre"}"#),
        1.0
    );
    assert_eq!(
        v(r#"quiesce_last_run_hook_failed{hook="mysql",phase="post"}"#),
        0.0
    );
    assert_eq!(
        v(r#"quiesce_last_run_hook_attempts{hook="mysql",phase="pre"}"#),
        2.0
    );
    assert_eq!(v(r#"quiesce_runs_total{status="succeeded"}"#), 1.0);
    assert_eq!(v(r#"quiesce_runs_total{status="degraded"}"#), 2.0);
    assert_eq!(v(r#"quiesce_runs_total{status="failed"}"#), 1.0);
    assert_eq!(v(r#"quiesce_errors_total{code="Pre-ScriptTimeout"}"#), 2.0);
    assert_eq!(v(r#"quiesce_errors_total{code="SnapshotFailed"}"#), 1.0);
    assert_eq!(
        v(r#"quiesce_errors_total{code="Post-ScriptExecutionFailed"}"#),
        1.0
    );
    assert_eq!(
        m.keys()
            .filter(|k| k.starts_with("quiesce_errors_total"))
            .count(),
        3,
        "warnings are not errors"
    );
    // Counters are typed as counters.
    assert!(text.contains("# TYPE quiesce_errors_total counter\n"));
    assert!(text.contains("# TYPE quiesce_runs_total counter\n"));

    // What `quiesce serve` renders from the catalog for a run another process made is
    // the same text the running process rendered from its report.
    let from_catalog =
        metrics::render_last_run(c.last_run().unwrap().as_ref(), &c.totals().unwrap());
    assert_eq!(from_catalog, text);
    assert_eq!(c.last_run().unwrap().unwrap(), LastRun::from_report(&last));
}

#[test]
fn before_any_run_only_the_totals_are_exposed() {
    let s = Scratch::new("metrics-empty");
    let c = Catalog::open(&s.join("catalog.db")).unwrap();
    let text = metrics::render(None, &c.totals().unwrap());
    promtool_check(&text);
    assert!(!text.contains("quiesce_last_run"));
    let m = samples(&text);
    assert_eq!(m.len(), 3, "{text}");
    assert!(m.values().all(|v| *v == 0.0));
    assert!(c.last_run().unwrap().is_none());
}

#[test]
fn label_values_are_escaped() {
    let mut r = reports::failed("op-esc", at(T0));
    r.hooks[0].hook = "db \"main\"\\shard\nnext".to_string();
    r.hooks[1].hook = r.hooks[0].hook.clone();
    let mut totals = Totals::default();
    totals
        .errors_by_code
        .insert("Weird\"Code\\x".to_string(), 5);
    let text = metrics::render(Some(&r), &totals);
    promtool_check(&text);
    assert!(text.contains(
        r#"quiesce_last_run_hook_failed{hook="db \"main\"\\shard\nnext",phase="post"} 1"#
    ));
    assert!(text.contains(r#"quiesce_errors_total{code="Weird\"Code\\x"} 5"#));
    assert_eq!(metrics::escape_label("a\\b\"c\nd"), r#"a\\b\"c\nd"#);
    // Never a raw newline inside a sample line: every line is a comment or a sample.
    for line in text.lines() {
        assert!(
            line.starts_with("# ") || line.starts_with("quiesce_"),
            "{line:?}"
        );
    }
}

#[test]
fn a_hook_seen_twice_is_one_series() {
    let mut r = reports::succeeded("op-dup", at(T0));
    let again = r.hooks[0].clone();
    r.hooks.push(again);
    let text = metrics::render(Some(&r), &Totals::default());
    promtool_check(&text);
    let m = samples(&text); // panics on duplicates
    assert_eq!(
        m[r#"quiesce_last_run_hook_duration_seconds{hook="postgres",phase="pre"}"#],
        2.36
    );
    assert_eq!(
        m[r#"quiesce_last_run_hook_attempts{hook="postgres",phase="pre"}"#],
        2.0
    );
}

#[test]
fn a_run_the_catalog_could_not_record_says_so_and_shows_no_made_up_totals() {
    let r = reports::succeeded("op-unrecorded", at(T0));
    let text = metrics::render_unrecorded(&r, None);
    promtool_check(&text);
    let m = samples(&text);
    assert_eq!(m["quiesce_last_run_recorded"], 0.0, "{text}");
    assert_eq!(m["quiesce_last_run_consistency_level"], 3.0, "{text}");
    assert!(!text.contains("quiesce_runs_total"), "{text}");
    // The totals the catalog could still be read for are kept.
    let mut totals = Totals::default();
    totals.runs_by_status.insert("succeeded".to_string(), 4);
    let text = metrics::render_unrecorded(&r, Some(&totals));
    promtool_check(&text);
    let m = samples(&text);
    assert_eq!(
        m[r#"quiesce_runs_total{status="succeeded"}"#], 4.0,
        "{text}"
    );
    // A recorded run says 1.
    let m = samples(&metrics::render(Some(&r), &totals));
    assert_eq!(m["quiesce_last_run_recorded"], 1.0);
}

#[test]
fn textfile_is_replaced_atomically() {
    let s = Scratch::new("metrics-textfile");
    let dir = s.join("textfile");
    std::fs::create_dir(&dir).unwrap();
    let path = dir.join("quiesce.prom");

    // Two large, different texts written alternately while a reader keeps reading: the
    // reader sees one or the other, never a mix or a truncated file.
    let a = format!("# HELP a A.\n# TYPE a gauge\n{}", "a 1\n".repeat(200_000));
    let b = format!("# HELP b B.\n# TYPE b gauge\n{}", "b 2\n".repeat(150_000));
    metrics::write_textfile(&path, &a).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (path, a, b, stop) = (path.clone(), a.clone(), b.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut reads = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let got = std::fs::read_to_string(&path).unwrap();
                assert!(got == a || got == b, "torn read of {} bytes", got.len());
                reads += 1;
            }
            reads
        })
    };
    for i in 0..40 {
        metrics::write_textfile(&path, if i % 2 == 0 { &b } else { &a }).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let reads = reader.join().unwrap();
    assert!(reads > 0);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), a);

    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "node_exporter (unprivileged) must read it");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["quiesce.prom"], "no temporary file left behind");

    // A directory that does not exist is an error naming the file.
    let err = metrics::write_textfile(&s.join("missing/quiesce.prom"), "x 1\n").unwrap_err();
    assert!(err.to_string().contains("missing/quiesce.prom"), "{err}");
}
