//! Soak: many consecutive runs through the whole pipeline (`quiesce::pipeline::run_snapshot`
//! then `pipeline::finish`), with hooks that misbehave on purpose, then proof that nothing
//! accumulated: descriptors, threads, memory, processes, loop devices, mounts, frozen
//! filesystems, and a catalog row for every run.
//!
//! Run (root; creates two 64 MiB loop ext4 filesystems under /var/lib/quiesce-tests, removed at the end):
//!
//!     cargo bench --bench soak
//!     QUIESCE_SOAK_RUNS=200 QUIESCE_SOAK_SEED=7 cargo bench --bench soak
//!
//! Every run freezes both loop filesystems (named explicitly in `freeze.include`, nothing
//! else) and takes a snapshot with a `command` provider. Three hooks run around it: `app-a`
//! (pre + post, one retry), `app-b` (pre + post, no retry) and `db-hold` (hold mode). Before
//! each run the harness draws, from a seeded PRNG, what every script will do and writes it to
//! a control file the script reads, so each run's behaviour is chosen (and known) by the
//! harness:
//!
//! - normal scripts: `ok`, `fail` (exit 3), `timeout` (sleeps past the 400 ms timeout),
//!   `stubborn` (ignores SIGTERM: killed by SIGKILL after the 2 s grace), `flood` (4 MB on
//!   stdout, 1 MB on stderr), `leak` (leaves a `sleep` behind in its group), `flaky` (fails
//!   its first attempt only);
//! - the held hook: `ok`, `early` (exits right after READY: the hold is lost), `never` (no
//!   READY before its timeout), `fail` (exits before READY), `flood` (4 MB while held),
//!   `postfail` (exit 4 at release);
//! - the snapshot command: `ok` (prints an id), `fail` (exit 1), `slow` (outlives the 1 s
//!   freeze timeout, so the guard thaws first).
//!
//! From those choices the harness predicts each report's error codes, consistency and
//! status, and checks every report against the prediction (and its catalog row against the
//! report). Afterwards it prints and asserts the before/after table. Figures and the
//! command that produced them: docs/soak.md.
#[path = "../tests/it/support/mod.rs"]
mod support;

use quiesce::catalog::{Catalog, RunKind};
use quiesce::codes::ErrorCode;
use quiesce::config::{Config, HookConfig, ProviderConfig, ScriptSpec};
use quiesce::pipeline::{self, RunOptions};
use quiesce::report::{Consistency, Report, Status};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::{LoopFs, Scratch};

const HOOK_TIMEOUT: Duration = Duration::from_millis(400);
const FREEZE_TIMEOUT: Duration = Duration::from_secs(1);
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(3);

/// splitmix64: small, seeded, good enough to pick behaviours.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Pick from (weight, value) pairs; weights are per mille.
    fn pick<T: Copy>(&mut self, table: &[(u64, T)]) -> T {
        let total: u64 = table.iter().map(|(w, _)| w).sum();
        let mut r = self.next() % total;
        for (w, v) in table {
            if r < *w {
                return *v;
            }
            r -= w;
        }
        table[table.len() - 1].1
    }
}

const STEP_MODES: &[(u64, &str)] = &[
    (700, "ok"),
    (70, "fail"),
    (60, "timeout"),
    (8, "stubborn"),
    (60, "flood"),
    (60, "leak"),
    (42, "flaky"),
];
const HOLD_MODES: &[(u64, &str)] = &[
    (700, "ok"),
    (70, "early"),
    (60, "never"),
    (60, "fail"),
    (60, "flood"),
    (50, "postfail"),
];
const SNAP_MODES: &[(u64, &str)] = &[(965, "ok"), (25, "fail"), (10, "slow")];

const STEP: &str = r#"#!/bin/sh
# Soak hook: does what the harness wrote in the control file "$1".
mode=$(cat "$1")
case "$mode" in
  ok) exit 0 ;;
  fail) echo "failing on purpose" >&2; exit 3 ;;
  timeout) sleep 5; exit 0 ;;
  stubborn) trap '' TERM; sleep 5; exit 0 ;;
  flood) head -c 1000000 /dev/zero >&2; head -c 4000000 /dev/zero | tr '\0' 'x'; exit 0 ;;
  leak) sleep 30 & exit 0 ;;
  flaky) [ "$QUIESCE_ATTEMPT" = 1 ] && exit 1; exit 0 ;;
  *) echo "unknown mode $mode" >&2; exit 99 ;;
esac
"#;

const HOLD: &str = r#"#!/bin/sh
# Soak held hook: READY, hold until stdin closes, as chosen in the control file "$1".
mode=$(cat "$1")
case "$mode" in
  ok) echo READY; cat >/dev/null; exit 0 ;;
  early) echo READY; exit 0 ;;
  never) sleep 5; exit 0 ;;
  fail) echo "cannot quiesce" >&2; exit 2 ;;
  flood) echo READY; head -c 4000000 /dev/zero; cat >/dev/null; exit 0 ;;
  postfail) echo READY; cat >/dev/null; exit 4 ;;
  *) echo "unknown mode $mode" >&2; exit 99 ;;
esac
"#;

const SNAP: &str = r#"#!/bin/sh
# Soak snapshot command: prints one id, or fails / dawdles as chosen in "$1".
mode=$(cat "$1")
case "$mode" in
  ok) echo "soak-snap-$QUIESCE_OPERATION_ID-$QUIESCE_FROZEN_COUNT" ;;
  fail) echo "provider refused" >&2; exit 1 ;;
  slow) sleep 1.5; echo "soak-snap-late-$QUIESCE_OPERATION_ID" ;;
esac
"#;

/// What the harness chose for one run.
#[derive(Debug, Clone)]
struct Plan {
    a_pre: &'static str,
    a_post: &'static str,
    b_pre: &'static str,
    b_post: &'static str,
    hold: &'static str,
    snap: &'static str,
}

impl Plan {
    fn draw(rng: &mut Rng) -> Plan {
        Plan {
            a_pre: rng.pick(STEP_MODES),
            a_post: rng.pick(STEP_MODES),
            b_pre: rng.pick(STEP_MODES),
            b_post: rng.pick(STEP_MODES),
            hold: rng.pick(HOLD_MODES),
            snap: rng.pick(SNAP_MODES),
        }
    }

    /// Error codes (with hook) the report must carry, the consistency and the status.
    fn predict(&self) -> (BTreeSet<(String, Option<String>)>, Consistency, Status) {
        let mut codes = BTreeSet::new();
        let mut add = |code: ErrorCode, hook: Option<&str>| {
            codes.insert((code.as_str().to_string(), hook.map(str::to_string)));
        };
        let step = |mode: &str, retries: u32| -> Option<bool> {
            // Some(true) = timeout, Some(false) = failed, None = success
            match mode {
                "fail" => Some(false),
                "timeout" | "stubborn" => Some(true),
                "flaky" if retries == 0 => Some(false),
                _ => None,
            }
        };
        let mut pre_ok = true;
        for (hook, pre, post, retries) in [
            ("app-a", self.a_pre, self.a_post, 1),
            ("app-b", self.b_pre, self.b_post, 0),
        ] {
            match step(pre, retries) {
                Some(true) => add(ErrorCode::PreScriptTimeout, Some(hook)),
                Some(false) => add(ErrorCode::PreScriptExecutionFailed, Some(hook)),
                None => {}
            }
            pre_ok &= step(pre, retries).is_none();
            match step(post, retries) {
                Some(true) => add(ErrorCode::PostScriptTimeout, Some(hook)),
                Some(false) => add(ErrorCode::PostScriptExecutionFailed, Some(hook)),
                None => {}
            }
        }
        match self.hold {
            "early" => {
                add(ErrorCode::HoldLost, Some("db-hold"));
                pre_ok = false;
            }
            "never" => {
                add(ErrorCode::PreScriptTimeout, Some("db-hold"));
                pre_ok = false;
            }
            "fail" => {
                add(ErrorCode::PreScriptExecutionFailed, Some("db-hold"));
                pre_ok = false;
            }
            "postfail" => add(ErrorCode::PostScriptExecutionFailed, Some("db-hold")),
            _ => {}
        }
        // Holds are checked when the provider returns, whether it succeeded or not, so a
        // lost hold is reported even when the snapshot failed.
        let consistency = match self.snap {
            "fail" => {
                add(ErrorCode::SnapshotFailed, None);
                Consistency::None
            }
            "slow" => {
                add(ErrorCode::FreezeGuardFired, None);
                Consistency::Crash
            }
            _ if pre_ok => Consistency::Application,
            _ => Consistency::FileSystem,
        };
        let status = if consistency == Consistency::None {
            Status::Failed
        } else if codes.is_empty() {
            Status::Succeeded
        } else {
            Status::Degraded
        };
        (codes, consistency, status)
    }
}

// ---- measurements ----

fn count_dir(p: &str) -> usize {
    std::fs::read_dir(p).map(|d| d.count()).unwrap_or(0)
}

fn vm_rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Our children (any thread's), zombies included.
fn children() -> Vec<i32> {
    let mut out = Vec::new();
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let c = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        out.extend(c.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
    }
    out
}

/// Processes anywhere on the machine that came from this soak: their environment carries
/// one of our operation ids (hooks and the snapshot command get `QUIESCE_OPERATION_ID`, and
/// whatever they start inherits it), or their command line names our scratch directory.
fn soak_processes(op_prefix: &str, scratch: &Path) -> Vec<(i32, String)> {
    let needle = format!("QUIESCE_OPERATION_ID={op_prefix}");
    let dir = scratch.to_string_lossy().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        let env = std::fs::read(e.path().join("environ")).unwrap_or_default();
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let in_env = env
            .split(|b| *b == 0)
            .any(|v| v.starts_with(needle.as_bytes()));
        if in_env || cmd.contains(&dir) {
            out.push((pid, cmd));
        }
    }
    out
}

/// `pgrep -f PATTERN` pids (none is not an error).
fn pgrep(pattern: &str) -> Vec<i32> {
    let out = std::process::Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|p| *p != std::process::id() as i32)
        .collect()
}

fn losetup_lines() -> Vec<String> {
    support::sh("losetup", &["-a"])
        .lines()
        .map(str::to_string)
        .collect()
}

fn mountinfo_lines() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[derive(Debug, Clone)]
struct Snapshot {
    fds: usize,
    threads: usize,
    rss_kib: u64,
    children: usize,
    soak_procs: usize,
    pgrep_hooks: usize,
    loops_total: usize,
    loops_ours: usize,
    mounts_total: usize,
    mounts_ours: usize,
    writable: bool,
    state_file: bool,
}

struct World<'a> {
    scratch: &'a Path,
    images: Vec<PathBuf>,
    mounts: Vec<PathBuf>,
    op_prefix: String,
    state_dir: PathBuf,
}

impl World<'_> {
    fn measure(&self) -> Snapshot {
        let loops = losetup_lines();
        let mounts = mountinfo_lines();
        let ours = |l: &String, paths: &[PathBuf]| {
            paths
                .iter()
                .any(|p| l.contains(p.to_string_lossy().as_ref()))
        };
        Snapshot {
            fds: count_dir("/proc/self/fd"),
            threads: count_dir("/proc/self/task"),
            rss_kib: vm_rss_kib(),
            children: children().len(),
            soak_procs: soak_processes(&self.op_prefix, self.scratch).len(),
            pgrep_hooks: pgrep(&format!("{}/ctl", self.scratch.display())).len(),
            loops_total: loops.len(),
            loops_ours: loops.iter().filter(|l| ours(l, &self.images)).count(),
            mounts_total: mounts.len(),
            mounts_ours: mounts.iter().filter(|l| ours(l, &self.mounts)).count(),
            writable: self
                .mounts
                .iter()
                .all(|m| support::writable_within(m, Duration::from_secs(3))),
            state_file: quiesce::freeze::state::path(&self.state_dir).exists(),
        }
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    quiesce::freeze::run_if_requested();
    quiesce::freeze::guard::set_program(support::quiesce_bin());
    let runs: usize = std::env::var("QUIESCE_SOAK_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let seed: u64 = std::env::var("QUIESCE_SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20261125);
    println!("command: QUIESCE_SOAK_RUNS={runs} QUIESCE_SOAK_SEED={seed} cargo bench --bench soak");

    let fs_a = LoopFs::new("ext4", 64);
    let fs_b = LoopFs::new("ext4", 64);
    let d = Scratch::new("soak");
    std::fs::create_dir_all(d.join("ctl")).unwrap();
    let step = d.script("hooks/step", STEP);
    let hold = d.script("hooks/hold", HOLD);
    let snap = d.script("hooks/snap", SNAP);
    let ctl = |name: &str| d.join(&format!("ctl/{name}"));
    let spec = |script: &Path, ctl_name: &str| ScriptSpec {
        path: script.to_path_buf(),
        args: vec![ctl(ctl_name).to_string_lossy().into_owned()],
    };
    let hook = |name: &str, pre: ScriptSpec, post: Option<ScriptSpec>, retries, hold| HookConfig {
        name: name.to_string(),
        pre: Some(pre),
        post,
        timeout: HOOK_TIMEOUT,
        pre_retries: retries,
        post_retries: retries,
        continue_on_failure: true,
        hold,
        origin: d.join("quiesce.toml"),
    };

    let mut cfg = Config::defaults(&d.join("quiesce.toml"));
    cfg.paths.state_dir = d.join("state");
    cfg.paths.catalog = d.join("catalog.db");
    cfg.freeze.enabled = true;
    cfg.freeze.timeout = FREEZE_TIMEOUT;
    cfg.freeze.include = vec![fs_a.mount_point.clone(), fs_b.mount_point.clone()];
    cfg.snapshot.provider = ProviderConfig::Command {
        argv: vec![
            snap.to_string_lossy().into_owned(),
            ctl("snap").to_string_lossy().into_owned(),
        ],
    };
    cfg.snapshot.timeout = SNAPSHOT_TIMEOUT;
    cfg.hooks = vec![
        hook(
            "app-a",
            spec(&step, "a.pre"),
            Some(spec(&step, "a.post")),
            1,
            false,
        ),
        hook(
            "app-b",
            spec(&step, "b.pre"),
            Some(spec(&step, "b.post")),
            0,
            false,
        ),
        hook("db-hold", spec(&hold, "hold"), None, 0, true),
    ];

    let world = World {
        scratch: &d.path,
        images: vec![fs_a.image.clone(), fs_b.image.clone()],
        mounts: vec![fs_a.mount_point.clone(), fs_b.mount_point.clone()],
        op_prefix: format!("soak-{}-", std::process::id()),
        state_dir: cfg.paths.state_dir.clone(),
    };

    let before = world.measure();
    let mut rss_samples = vec![(0usize, before.rss_kib)];
    let mut rng = Rng(seed);
    let mut durations = Vec::with_capacity(runs);
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut code_counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut mode_counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut expected_rows: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut mismatches = Vec::new();
    let payload = vec![b'q'; 64 * 1024];
    let started = Instant::now();
    for n in 1..=runs {
        let plan = Plan::draw(&mut rng);
        for (name, mode) in [
            ("a.pre", plan.a_pre),
            ("a.post", plan.a_post),
            ("b.pre", plan.b_pre),
            ("b.post", plan.b_post),
            ("hold", plan.hold),
            ("snap", plan.snap),
        ] {
            std::fs::write(ctl(name), mode).unwrap();
            *mode_counts.entry(format!("{name}={mode}")).or_default() += 1;
        }
        // Some unflushed application data for syncfs + freeze to deal with.
        for fs in [&fs_a, &fs_b] {
            std::fs::write(fs.path(&format!("data-{}", n % 8)), &payload).unwrap();
        }
        let id = format!("{}{n:05}", world.op_prefix);
        let t = Instant::now();
        let mut report = pipeline::run_snapshot(
            &cfg,
            &RunOptions {
                operation_id: Some(id.clone()),
            },
        );
        pipeline::finish(&cfg, &mut report, RunKind::Snapshot);
        durations.push(t.elapsed().as_secs_f64() * 1000.0);

        check_report(n, &plan, &report, &mut mismatches);
        *outcomes
            .entry(format!(
                "{} / {}",
                status_str(report.status),
                report.consistency.as_str()
            ))
            .or_default() += 1;
        for e in &report.errors {
            *code_counts.entry(e.code.as_str().to_string()).or_default() += 1;
        }
        expected_rows.insert(
            id,
            report
                .errors
                .iter()
                .map(|e| e.code.as_str().to_string())
                .collect(),
        );
        if n % 100 == 0 || n == runs {
            let s = world.measure();
            println!(
                "run {n:5}: {:6.1} s  rss {:6} KiB  fds {:3}  threads {:2}  children {}  soak processes {}  frozen: {}",
                started.elapsed().as_secs_f64(),
                s.rss_kib,
                s.fds,
                s.threads,
                s.children,
                s.soak_procs,
                if s.writable { "no" } else { "YES" }
            );
            rss_samples.push((n, s.rss_kib));
            assert!(
                s.writable,
                "a loop filesystem is still frozen after run {n}"
            );
        }
    }
    let elapsed = started.elapsed();
    let after = world.measure();

    // Catalog: one row per run, with the report's error codes.
    let catalog = Catalog::open(&cfg.paths.catalog).unwrap();
    let rows = catalog.history(None, None).unwrap();
    let mut row_mismatch = 0;
    for r in &rows {
        match expected_rows.get(&r.operation_id) {
            Some(codes) if *codes == r.error_codes => {}
            _ => row_mismatch += 1,
        }
    }

    let mut d_sorted = durations.clone();
    d_sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!();
    println!(
        "{runs} runs in {:.1} s (seed {seed}); per run: median {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        elapsed.as_secs_f64(),
        pct(&d_sorted, 0.5),
        pct(&d_sorted, 0.9),
        pct(&d_sorted, 0.99),
        d_sorted[d_sorted.len() - 1]
    );
    println!("\nbehaviours drawn:");
    for (k, v) in mode_counts.iter().filter(|(_, v)| **v > 0) {
        println!("  {k:<16} {v}");
    }
    println!("\noutcomes (status / consistency):");
    for (k, v) in &outcomes {
        println!("  {k:<28} {v}");
    }
    println!("\nerror codes reported:");
    for (k, v) in &code_counts {
        println!("  {k:<34} {v}");
    }
    let rss_first = rss_samples.get(1).map_or(before.rss_kib, |s| s.1);
    let rss_growth = after.rss_kib as i64 - rss_first as i64;
    println!(
        "\nVmRSS samples (KiB): {}",
        rss_samples
            .iter()
            .map(|(n, r)| format!("{n}:{r}"))
            .collect::<Vec<_>>()
            .join("  ")
    );
    println!("\n| measure | before | after | check |");
    println!("|---|---|---|---|");
    let row = |name: &str, b: String, a: String, ok: bool| {
        println!(
            "| {name} | {b} | {a} | {} |",
            if ok { "ok" } else { "FAIL" }
        );
        ok
    };
    let mut ok = true;
    ok &= row(
        "open fds (/proc/self/fd)",
        before.fds.to_string(),
        after.fds.to_string(),
        after.fds == before.fds,
    );
    ok &= row(
        "threads (/proc/self/task)",
        before.threads.to_string(),
        after.threads.to_string(),
        after.threads == before.threads,
    );
    ok &= row(
        "VmRSS KiB (growth after run 100)",
        before.rss_kib.to_string(),
        format!("{} ({:+})", after.rss_kib, rss_growth),
        rss_growth < 4096,
    );
    ok &= row(
        "child processes (incl. zombies)",
        before.children.to_string(),
        after.children.to_string(),
        after.children == 0,
    );
    ok &= row(
        "soak processes (op-id env / cmdline)",
        before.soak_procs.to_string(),
        after.soak_procs.to_string(),
        after.soak_procs == 0,
    );
    ok &= row(
        "pgrep -f <scratch>/ctl (hook scripts)",
        before.pgrep_hooks.to_string(),
        after.pgrep_hooks.to_string(),
        after.pgrep_hooks == 0,
    );
    ok &= row(
        "loop devices, ours (losetup -a)",
        before.loops_ours.to_string(),
        after.loops_ours.to_string(),
        after.loops_ours == before.loops_ours && before.loops_ours == 2,
    );
    row(
        "loop devices, machine (other builders too)",
        before.loops_total.to_string(),
        after.loops_total.to_string(),
        true,
    );
    ok &= row(
        "mounts, ours (/proc/self/mountinfo)",
        before.mounts_ours.to_string(),
        after.mounts_ours.to_string(),
        after.mounts_ours == before.mounts_ours && before.mounts_ours == 2,
    );
    row(
        "mountinfo lines, machine (other builders too)",
        before.mounts_total.to_string(),
        after.mounts_total.to_string(),
        true,
    );
    ok &= row(
        "frozen (write probe on both filesystems)",
        if before.writable { "no" } else { "YES" }.into(),
        if after.writable { "no" } else { "YES" }.into(),
        after.writable,
    );
    ok &= row(
        "guard state file left",
        before.state_file.to_string(),
        after.state_file.to_string(),
        !after.state_file,
    );
    ok &= row(
        "catalog rows (history)",
        "0".into(),
        format!("{} (codes differ: {row_mismatch})", rows.len()),
        rows.len() == runs && row_mismatch == 0,
    );
    ok &= row(
        "reports matching the harness's prediction",
        "-".into(),
        format!("{}/{runs}", runs - mismatches.len()),
        mismatches.is_empty(),
    );
    for m in mismatches.iter().take(20) {
        println!("  mismatch: {m}");
    }

    drop(catalog);
    drop(fs_a);
    drop(fs_b);
    let loops_left = losetup_lines()
        .iter()
        .filter(|l| {
            world
                .images
                .iter()
                .any(|p| l.contains(p.to_string_lossy().as_ref()))
        })
        .count();
    let mounts_left = mountinfo_lines()
        .iter()
        .filter(|l| {
            world
                .mounts
                .iter()
                .any(|p| l.contains(p.to_string_lossy().as_ref()))
        })
        .count();
    ok &= row(
        "after cleanup: our loop devices / mounts",
        "-".into(),
        format!("{loops_left} / {mounts_left}"),
        loops_left == 0 && mounts_left == 0,
    );
    drop(d);
    assert!(ok, "soak FAILED: see the table above");
    println!("\nsoak passed");
}

fn status_str(s: Status) -> &'static str {
    match s {
        Status::Succeeded => "succeeded",
        Status::Degraded => "degraded",
        Status::Failed => "failed",
    }
}

fn check_report(n: usize, plan: &Plan, report: &Report, mismatches: &mut Vec<String>) {
    let (want, consistency, status) = plan.predict();
    let got: BTreeSet<(String, Option<String>)> = report
        .errors
        .iter()
        .map(|e| (e.code.as_str().to_string(), e.hook.clone()))
        .collect();
    let mut why = Vec::new();
    if got != want {
        why.push(format!("codes {got:?} != predicted {want:?}"));
    }
    if report.consistency != consistency {
        why.push(format!(
            "consistency {} != {}",
            report.consistency.as_str(),
            consistency.as_str()
        ));
    }
    if report.status != status {
        why.push(format!(
            "status {} != {}",
            status_str(report.status),
            status_str(status)
        ));
    }
    if report.frozen.len() != 2 || report.frozen_ms.is_none() {
        why.push(format!(
            "frozen {:?} / frozen_ms {:?}",
            report.frozen, report.frozen_ms
        ));
    }
    for h in &report.hooks {
        if h.stdout_tail.len() > quiesce::hooks::OUTPUT_TAIL_BYTES + 8
            || h.stderr_tail.len() > quiesce::hooks::OUTPUT_TAIL_BYTES + 8
        {
            why.push(format!("{} {:?}: tail not bounded", h.hook, h.phase));
        }
    }
    if plan.snap == "ok" && report.snapshots.len() != 1 {
        why.push(format!("snapshots {:?}", report.snapshots));
    }
    if !why.is_empty() {
        mismatches.push(format!("run {n} {plan:?}: {}", why.join("; ")));
    }
}
