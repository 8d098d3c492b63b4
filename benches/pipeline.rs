//! Hook overhead through the whole pipeline (no freezing): a no-op pre+post pair per hook.
//!
//! Run: `cargo bench --bench pipeline` (as root: hooks must pass the trust checks).
//! Prints the median and p90 per hook (pre+post pair) next to the floor of spawning
//! `/bin/true` directly, and Azure's figure (its runner polls every 3 s).

#[path = "../tests/it/support/mod.rs"]
mod support;

use quiesce::config::{Config, HookConfig, ScriptSpec};
use quiesce::pipeline::{run_snapshot, RunOptions};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let scratch = support::Scratch::new("bench-pipeline");
    let dir = scratch.path.clone();
    let script = dir.join("noop");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700)).unwrap();

    let hooks_per_run = 4;
    let runs = 100;
    let mut cfg = Config::defaults(&dir.join("quiesce.toml"));
    cfg.paths.state_dir = dir.join("state");
    cfg.paths.catalog = dir.join("catalog.db");
    cfg.freeze.enabled = false;
    for i in 0..hooks_per_run {
        cfg.hooks.push(HookConfig {
            name: format!("noop{i}"),
            pre: Some(ScriptSpec {
                path: script.clone(),
                args: vec![],
            }),
            post: Some(ScriptSpec {
                path: script.clone(),
                args: vec![],
            }),
            timeout: Duration::from_secs(10),
            pre_retries: 0,
            post_retries: 0,
            continue_on_failure: true,
            hold: false,
            origin: dir.clone(),
        });
    }
    // Warm up.
    for _ in 0..5 {
        let r = run_snapshot(&cfg, &RunOptions::default());
        assert!(r.errors.is_empty(), "{:?}", r.errors);
    }
    let mut per_hook = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let r = run_snapshot(&cfg, &RunOptions::default());
        let el = t.elapsed().as_secs_f64() * 1000.0;
        assert!(r.errors.is_empty());
        per_hook.push(el / hooks_per_run as f64);
    }
    let mut floor = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        std::process::Command::new(&script).status().unwrap();
        std::process::Command::new(&script).status().unwrap();
        floor.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    println!("hook overhead through the pipeline (freeze off, provider none), {runs} runs x {hooks_per_run} hooks");
    println!(
        "  quiesce, per hook (pre+post):   median {:.2} ms   p90 {:.2} ms",
        pct(&mut per_hook.clone(), 0.5),
        pct(&mut per_hook, 0.9)
    );
    println!(
        "  floor, two bare spawns:         median {:.2} ms   p90 {:.2} ms",
        pct(&mut floor.clone(), 0.5),
        pct(&mut floor, 0.9)
    );
    println!("  Azure's runner: polls every 3000 ms, so >= 3000 ms per script it waits on");
    println!("  target: < 5 ms per hook");
}
