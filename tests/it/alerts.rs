//! The shipped Prometheus alert rules (`packaging/monitoring/quiesce-alerts.yml`) pass
//! `promtool check rules`, and `promtool test rules` shows each alert firing (and not
//! firing) on the metrics files that real `quiesce snapshot` runs wrote: a good run, a run
//! whose pre hook failed, a run frozen for 11 s on a loop filesystem, a run whose
//! freeze guard fired, a run whose catalog was on a filesystem that had gone read-only, and
//! a run whose snapshot `[verify]` proved restorable right after it was taken.
//! Each run's samples become one `instance` of the test, held constant; only the
//! timestamps are moved, all by the same amount, so that the run's is the test clock's
//! origin (promtool starts at epoch 0).

use crate::support;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::{LoopFs, Scratch};

fn rules() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("packaging/monitoring/quiesce-alerts.yml")
}

/// Run `quiesce snapshot` once with this configuration body (paths added) and return the
/// metrics file it wrote.
fn run_and_read_metrics(s: &Scratch, name: &str, body: &str) -> String {
    run_with_catalog(s, name, &s.join(name).join("catalog.db"), body)
}

/// [`run_and_read_metrics`] with the catalog at `catalog`.
fn run_with_catalog(s: &Scratch, name: &str, catalog: &Path, body: &str) -> String {
    let dir = s.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let metrics = dir.join("quiesce.prom");
    let cfg = s.file(
        &format!("{name}.toml"),
        &format!(
            "[paths]\nstate_dir = \"{d}/state\"\ncatalog = \"{c}\"\n\
             metrics_file = \"{m}\"\n{body}",
            d = dir.display(),
            c = catalog.display(),
            m = metrics.display()
        ),
        0o600,
    );
    let out = Command::new(support::quiesce_bin())
        .args(["snapshot", "--json", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    std::fs::read_to_string(&metrics)
        .unwrap_or_else(|e| panic!("{name}: no metrics file ({e}); report:\n{report}"))
}

/// `name{labels} value` samples of a Prometheus text file, as promtool input series with an
/// `instance` label, constant over 60 h (past every evaluation time of the test).
fn input_series(out: &mut String, instance: &str, text: &str) {
    let stamp = |line: &str| -> Option<f64> {
        let (series, value) = line.rsplit_once(' ')?;
        let name = series.split('{').next()?;
        name.ends_with("_timestamp_seconds")
            .then(|| value.parse().unwrap())
    };
    let run_at = text
        .lines()
        .filter(|l| l.starts_with("quiesce_last_run_timestamp_seconds"))
        .find_map(stamp)
        .unwrap_or(0.0);
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let series = match series.split_once('{') {
            Some((name, rest)) => format!("{name}{{instance=\"{instance}\",{rest}"),
            None => format!("{series}{{instance=\"{instance}\"}}"),
        };
        let value = match stamp(line) {
            Some(at) => (at - run_at).to_string(),
            None => value.to_string(),
        };
        let _ = writeln!(
            out,
            "      - series: '{series}'\n        values: '{value}+0x3600'"
        );
    }
}

fn expect(out: &mut String, at: &str, alert: &str, instances: &[&str], severity: &str) {
    let _ = writeln!(
        out,
        "    - eval_time: {at}\n      alertname: {alert}\n      exp_alerts:"
    );
    if instances.is_empty() {
        out.push_str("        []\n");
    }
    for i in instances {
        let _ = writeln!(
            out,
            "        - exp_labels: {{instance: {i}, severity: {severity}}}"
        );
        let annotations = annotations(alert, i);
        let _ = writeln!(out, "          exp_annotations:");
        for (k, v) in annotations {
            let _ = writeln!(out, "            {k}: {v:?}");
        }
    }
}

/// The annotations of `alert` for `instance`, read from the rules file and rendered (the
/// rules use no template but `$labels.instance`).
fn annotations(alert: &str, instance: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(rules()).unwrap();
    let start = text.find(&format!("alert: {alert}\n")).unwrap();
    let block = &text[start..];
    let ann = &block[block.find("annotations:").unwrap()..];
    ann.lines()
        .skip(1)
        .take_while(|l| {
            l.trim_start().starts_with("summary:") || l.trim_start().starts_with("description:")
        })
        .map(|l| {
            let (k, v) = l.trim().split_once(": ").unwrap();
            let v = v
                .trim_matches('"')
                .replace("{{ $labels.instance }}", instance);
            (k.to_string(), v)
        })
        .collect()
}

#[test]
fn alert_rules_fire_on_the_metrics_of_real_runs() {
    support::require_root!("real runs on loop filesystems");
    let check = Command::new("promtool")
        .args(["check", "rules"])
        .arg(rules())
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );

    let s = Scratch::new("alerts");
    let pre_ok = s.script("pre-ok", "#!/bin/sh\nexit 0\n");
    let pre_bad = s.script("pre-bad", "#!/bin/sh\necho broken >&2\nexit 1\n");
    let hook = |pre: &Path| {
        format!(
            "[[hook]]\nname = \"app\"\npre = [\"{}\"]\ncontinue_on_failure = true\n",
            pre.display()
        )
    };
    let no_freeze = "[freeze]\nenabled = false\n[snapshot]\nprovider = \"command\"\n\
                     command = [\"/bin/true\"]\n";
    let good = run_and_read_metrics(&s, "good", &format!("{no_freeze}{}", hook(&pre_ok)));
    let bad = run_and_read_metrics(&s, "bad", &format!("{no_freeze}{}", hook(&pre_bad)));
    // Real freezes of this test's own loop filesystem only.
    let fs = LoopFs::new("ext4", 32);
    let frozen = |timeout: &str, sleep: &str| {
        format!(
            "[freeze]\nenabled = true\ninclude = [\"{}\"]\ntimeout = \"{timeout}\"\n\
             [snapshot]\nprovider = \"command\"\ncommand = [\"/bin/sleep\", \"{sleep}\"]\n\
             timeout = \"60s\"\n{}",
            fs.mount_point.display(),
            hook(&pre_ok)
        )
    };
    let slow = run_and_read_metrics(&s, "slow", &frozen("30s", "11"));
    let guard = run_and_read_metrics(&s, "guard", &frozen("1s", "3"));
    assert!(
        guard.contains("quiesce_errors_total{code=\"FreezeGuardFired\"} 1"),
        "{guard}"
    );
    // A catalog whose filesystem went read-only after a first recorded run (as ext4 does
    // with errors=remount-ro): the second run is not recorded, and its metrics say so.
    let ro = LoopFs::new("ext4", 32);
    let catalog = ro.path("catalog.db");
    let body = format!("{no_freeze}{}", hook(&pre_ok));
    let first = run_with_catalog(&s, "unwritable", &catalog, &body);
    assert!(first.contains("quiesce_last_run_recorded 1"), "{first}");
    support::sh(
        "mount",
        &["-o", "remount,ro", ro.mount_point.to_str().unwrap()],
    );
    let unwritable = run_with_catalog(&s, "unwritable", &catalog, &body);
    assert!(
        unwritable.contains("quiesce_last_run_recorded 0"),
        "{unwritable}"
    );
    assert!(good.contains("quiesce_last_run_recorded 1"), "{good}");
    // A snapshot (a directory the provider names) verified by a user verifier right after
    // it was taken: the metrics file carries the verified gauges, the others do not.
    let view = s.join("verified-snapshot");
    std::fs::create_dir_all(&view).unwrap();
    std::fs::write(view.join("data"), "kept\n").unwrap();
    let verifier = s.script(
        "verifier",
        "#!/bin/sh\nset -e\ntest \"$(cat \"$QUIESCE_VERIFY_VIEW/data\")\" = kept\n",
    );
    let verified = run_and_read_metrics(
        &s,
        "verified",
        &format!(
            "[freeze]\nenabled = false\n[snapshot]\nprovider = \"command\"\n\
             command = [\"/bin/echo\", \"{}\"]\n{}\
             [verify]\nafter_snapshot = true\ntimeout = \"30s\"\nhooks = [[\"{}\"]]\n",
            view.display(),
            hook(&pre_ok),
            verifier.display()
        ),
    );
    let age = "quiesce_seconds_since_last_verified_application_snapshot";
    assert!(verified.contains(&format!("\n{age} ")), "{verified}");
    assert!(!good.contains(&format!("\n{age} ")), "{good}");

    let mut t = format!(
        "rule_files:\n  - {}\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n",
        rules().display()
    );
    for (instance, text) in [
        ("good", &good),
        ("bad", &bad),
        ("slow", &slow),
        ("guard", &guard),
        ("unwritable", &unwritable),
        ("verified", &verified),
    ] {
        input_series(&mut t, instance, text);
    }
    t.push_str("    alert_rule_test:\n");
    // Within the interval: only the runs short of application consistency.
    expect(
        &mut t,
        "2h",
        "QuiesceNoConsistentSnapshot",
        &["bad", "guard"],
        "critical",
    );
    // 28 h without a new run: every instance.
    expect(
        &mut t,
        "28h",
        "QuiesceNoConsistentSnapshot",
        &["bad", "good", "guard", "slow", "unwritable", "verified"],
        "critical",
    );
    expect(
        &mut t,
        "5m",
        "QuiesceRunDegradedOrFailed",
        &["bad", "guard"],
        "warning",
    );
    expect(&mut t, "5m", "QuiesceFrozenTooLong", &["slow"], "warning");
    // The code appeared within the last day; a day later, unchanged, it is quiet again.
    expect(
        &mut t,
        "5m",
        "QuiesceFreezeGuardFired",
        &["guard"],
        "critical",
    );
    expect(&mut t, "25h", "QuiesceFreezeGuardFired", &[], "critical");
    expect(
        &mut t,
        "5m",
        "QuiesceCatalogNotWritable",
        &["unwritable"],
        "warning",
    );
    // The verified snapshot ages: quiet for two nightly intervals, then (after `for: 1h`)
    // firing; instances that never verified a snapshot stay quiet.
    expect(&mut t, "2h", "QuiesceNoVerifiedSnapshot", &[], "warning");
    expect(&mut t, "52h", "QuiesceNoVerifiedSnapshot", &[], "warning");
    expect(
        &mut t,
        "54h",
        "QuiesceNoVerifiedSnapshot",
        &["verified"],
        "warning",
    );
    let file = s.file("alerts-test.yml", &t, 0o600);
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool test rules failed:\n{}\n{}\n--- test ---\n{t}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
