//! Wall time of one hook run (trust check, spawn in its own process group, drain, reap) for a
//! no-op script. Target: under 5 ms per hook.
//!
//! Run with: `cargo bench --bench hooks` (optionally `-- 500` for the number of runs).

#[path = "../tests/it/support/mod.rs"]
mod support;

use quiesce::config::ScriptSpec;
use quiesce::hooks::{run_script, Limits, Phase, RunContext};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn report(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name:<32} n={:<4} median {:>7.3} ms   p90 {:>7.3} ms   min {:>7.3} ms   max {:>7.3} ms",
        v.len(),
        ms(percentile(&v, 0.5)),
        ms(percentile(&v, 0.9)),
        ms(v[0]),
        ms(v[v.len() - 1]),
    );
}

fn main() {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200);
    let scratch = support::Scratch::new("bench-hooks");
    let dir = scratch.path.clone();
    let script = dir.join("noop");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700)).unwrap();

    let spec = ScriptSpec {
        path: script.clone(),
        args: vec![],
    };
    let ctx = RunContext {
        operation_id: "bench".into(),
        hook: "noop".into(),
        phase: Phase::Pre,
        deadline_unix: 0,
    };
    let limits = Limits {
        timeout: Duration::from_secs(10),
        retries: 0,
        kill_grace: Duration::from_secs(1),
    };

    for _ in 0..10 {
        assert!(run_script(&spec, &ctx, limits).succeeded());
    }
    // Interleaved, so load from other processes on the machine hits every variant alike.
    let tf = quiesce::trust::open_script(&script).unwrap();
    let (mut trust, mut whole, mut spawn, mut scan, mut baseline) =
        (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..runs {
        let t = Instant::now();
        quiesce::trust::open_script(&script).unwrap();
        trust.push(t.elapsed());

        let t = Instant::now();
        let r = run_script(&spec, &ctx, limits);
        whole.push(t.elapsed());
        assert!(r.succeeded(), "{r:?}");

        let t = Instant::now();
        let mut p = quiesce::process::Launch::trusted(&tf, &[])
            .unwrap()
            .spawn()
            .unwrap();
        p.wait_exit(Instant::now() + Duration::from_secs(5))
            .unwrap();
        spawn.push(t.elapsed());
        p.finish(Duration::from_secs(1));

        let t = Instant::now();
        std::hint::black_box(quiesce::process::live_group_members(1));
        scan.push(t.elapsed());

        // Baseline: the same script through std::process::Command, no pipes, no checks.
        let t = Instant::now();
        let st = std::process::Command::new(&script)
            .stdin(std::process::Stdio::null())
            .status()
            .unwrap();
        baseline.push(t.elapsed());
        assert!(st.success());
    }
    println!("cargo bench --bench hooks  ({runs} runs of `#!/bin/sh\\nexit 0`)");
    report("trust::open_script", trust);
    report("hooks::run_script (no-op)", whole);
    report("  of which spawn..exit", spawn);
    report("  /proc group scan (slow path)", scan);
    report("baseline std Command::status", baseline);
}
