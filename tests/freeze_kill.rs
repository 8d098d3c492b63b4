//! Killing the agent inside the frozen window must never leave a filesystem frozen.
//!
//! This test binary (harness = false) plays three roles: the test driver; an agent
//! (`__agent`), which freezes a loop filesystem with the real engine and holds it; and,
//! through `run_if_requested`, that agent's guard (`/proc/self/exe __guard`, exactly as the
//! quiesce binary does it). The driver kills the agent at random moments, 50 times with
//! SIGKILL and 50 times with SIGTERM, and checks each time that the filesystem is writable
//! again within the guard timeout + 1 s (thawing by hand if not, so it never wedges).
#[path = "it/support/mod.rs"]
mod support;

use quiesce::config::FreezeConfig;
use quiesce::freeze::{self, lock::OpLock, plan, state, FreezeOptions};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{writable_within, LoopFs, Scratch};

const GUARD_TIMEOUT: Duration = Duration::from_secs(5);
const ROUNDS: usize = 50;

fn main() {
    freeze::run_if_requested();
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("__agent") {
        agent(Path::new(&args[2]), Path::new(&args[3]), &args[4]);
    }
    let tests: [(&str, fn()); 2] = [
        (
            "kill_agent_inside_the_frozen_window",
            kill_agent_inside_the_frozen_window,
        ),
        (
            "kill_quiesce_snapshot_inside_the_frozen_window",
            kill_quiesce_snapshot_inside_the_frozen_window,
        ),
    ];
    // `cargo test -- --list` and name filters.
    if args.iter().any(|a| a == "--list") {
        for (name, _) in tests {
            println!("{name}: test");
        }
        return;
    }
    let filter = args.iter().skip(1).find(|a| !a.starts_with('-'));
    support::require_root!();
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).unwrap();
    for (name, f) in tests {
        if filter.is_some_and(|flt| !name.contains(flt.as_str())) {
            continue;
        }
        f();
        println!("test {name} ... ok");
    }
}

/// The agent: lock, recover (as every start of quiesce does), plan, freeze, hold the
/// freeze for 3 s while watching for SIGTERM, thaw.
fn agent(mnt: &Path, state_dir: &Path, op: &str) -> ! {
    freeze::install_signal_handlers().unwrap();
    let start = Instant::now();
    let lock = loop {
        match OpLock::acquire(state_dir) {
            Ok(l) => break l,
            // The previous run's guard may still be exiting (it holds the lock).
            Err(_) if start.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Err(e) => {
                println!("LOCK {e}");
                std::process::exit(10)
            }
        }
    };
    let recovered = state::recover(state_dir).unwrap();
    println!("RECOVERED {}", recovered.len());
    let cfg = FreezeConfig {
        include: vec![mnt.to_path_buf()],
        ..FreezeConfig::default()
    };
    let p = plan::plan_system(&cfg, &[]).unwrap();
    let opts = FreezeOptions {
        operation_id: op.to_string(),
        timeout: GUARD_TIMEOUT,
        state_dir: state_dir.to_path_buf(),
    };
    let frozen = match freeze::freeze(&p, &lock, &opts) {
        Ok(f) => f,
        Err(e) => {
            println!("FAILED {:?}", e.iter().map(|p| p.code).collect::<Vec<_>>());
            std::process::exit(11)
        }
    };
    println!("FROZEN");
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until && !freeze::termination_requested() {
        std::thread::sleep(Duration::from_millis(1));
    }
    let out = frozen.thaw();
    println!(
        "THAWED frozen_ms={} fired={:?}",
        out.frozen_ms,
        out.guard_fired.map(|g| g.reason)
    );
    std::process::exit(if freeze::termination_requested() {
        143
    } else {
        0
    })
}

/// xorshift64*: enough randomness for delays, no dependency.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

struct Round {
    /// Time from the kill until a write+fsync went through.
    thawed_after: Duration,
    ok: bool,
    agent_said: Vec<String>,
}

fn one_round(
    mnt: &Path,
    state_dir: &Path,
    signal: &str,
    after_frozen: bool,
    delay: Duration,
    i: usize,
) -> Round {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(&exe)
        .arg("__agent")
        .arg(mnt)
        .arg(state_dir)
        .arg(format!("kill-{signal}-{i}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut said = Vec::new();
    if after_frozen {
        // Kill inside the frozen window: after the agent reported FROZEN.
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(l) => {
                    let frozen = l == "FROZEN";
                    said.push(l);
                    if frozen {
                        break;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(_) => break,
            }
        }
    } else {
        // Kill around the start of the window: once the state file exists (written just
        // before the first FIFREEZE), after a random few ms (before, during or after it).
        let t = Instant::now();
        while !state::path(state_dir).exists() && t.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    std::thread::sleep(delay);
    let pid = child.id().to_string();
    let killed_at = Instant::now();
    support::sh("kill", &[&format!("-{signal}"), &pid]);
    let _ = child.wait();
    // Wait for a write+fsync to go through; writable_within thaws by hand (and says
    // false) if it does not within the guard timeout + 1 s.
    let ok = writable_within(mnt, GUARD_TIMEOUT + Duration::from_secs(1));
    let thawed_after = killed_at.elapsed();
    reader.join().unwrap();
    said.extend(rx.try_iter());
    reap_orphans();
    Round {
        thawed_after,
        ok,
        agent_said: said,
    }
}

/// Guards (and snapshot commands) whose agent was killed are re-parented to us (child
/// subreaper): reap them.
fn reap_orphans() {
    while let Ok(Some(_)) = rustix::process::wait(rustix::process::WaitOptions::NOHANG) {}
}

fn kill_agent_inside_the_frozen_window() {
    let fs = LoopFs::new("ext4", 64);
    let st = Scratch::new("kill-state");
    let state_dir: PathBuf = st.join("run");
    let seed = freeze::monotonic_ns() | 1;
    println!("seed {seed}");
    let mut rng = Rng(seed);
    let mut report = Vec::new();
    for signal in ["KILL", "TERM"] {
        let mut failures = 0;
        let mut worst = Duration::ZERO;
        let mut fired_signal = 0;
        let mut rounds_after_frozen = 0;
        for i in 0..ROUNDS {
            let after_frozen = i % 2 == 0;
            let delay = Duration::from_micros(if after_frozen {
                rng.below(30_000)
            } else {
                rng.below(60_000)
            });
            let r = one_round(&fs.mount_point, &state_dir, signal, after_frozen, delay, i);
            if !r.ok {
                failures += 1;
                eprintln!(
                    "round {i} ({signal}, after_frozen={after_frozen}, delay={delay:?}): still frozen; agent said {:?}",
                    r.agent_said
                );
            }
            worst = worst.max(r.thawed_after);
            if after_frozen {
                rounds_after_frozen += 1;
                assert!(
                    r.agent_said.iter().any(|l| l == "FROZEN"),
                    "agent never froze: {:?}",
                    r.agent_said
                );
            }
            if r.agent_said
                .iter()
                .any(|l| l.contains("fired=Some(Signal)"))
            {
                fired_signal += 1;
            }
        }
        println!(
            "SIG{signal}: {ROUNDS} rounds ({rounds_after_frozen} killed inside the window), \
             {failures} left frozen, slowest thaw after the kill {worst:?}, \
             guard fired on the agent's signal in {fired_signal}"
        );
        report.push((signal, failures, worst, fired_signal, rounds_after_frozen));
    }
    // What SIGKILL left behind is recovered by the next start; nothing is frozen now.
    let lock = OpLock::acquire(&state_dir);
    let t = Instant::now();
    let lock = match lock {
        Ok(l) => l,
        Err(_) => loop {
            std::thread::sleep(Duration::from_millis(10));
            if let Ok(l) = OpLock::acquire(&state_dir) {
                break l;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "lock still held");
        },
    };
    let leftover = state::recover(&state_dir).unwrap();
    assert!(leftover.is_empty(), "recover had to thaw {leftover:?}");
    drop(lock);
    for (signal, failures, worst, fired_signal, after) in report {
        assert_eq!(
            failures, 0,
            "SIG{signal}: {failures} rounds left the filesystem frozen"
        );
        // Not the deadline: the guard thawed because the agent died or asked.
        assert!(
            worst < Duration::from_secs(2),
            "SIG{signal}: a thaw took {worst:?} after the kill"
        );
        if signal == "TERM" {
            assert!(
                fired_signal >= after,
                "SIGTERM inside the window: the guard should fire on the agent's request \
                 ({fired_signal} of {after})"
            );
        }
    }
    reap_orphans();
}

/// Wait until the lock under `state_dir` is free (the previous run's guard has exited).
fn wait_lock_free(state_dir: &Path) {
    let t = Instant::now();
    loop {
        match OpLock::acquire(state_dir) {
            Ok(_) => return,
            Err(e) => {
                assert!(
                    t.elapsed() < Duration::from_secs(15),
                    "lock still held: {e}"
                );
                reap_orphans();
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

/// The real binary: `quiesce snapshot --config X` with a native config freezing one loop
/// filesystem around a 3 s snapshot command, killed (SIGKILL, then SIGTERM) at a random
/// moment inside the frozen window, 50 times each.
fn kill_quiesce_snapshot_inside_the_frozen_window() {
    const TIMEOUT_S: u64 = 10;
    let fs = LoopFs::new("ext4", 64);
    let st = Scratch::new("kill-bin");
    let state_dir = st.join("run");
    let config = st.file(
        "quiesce.toml",
        &format!(
            "[paths]\nstate_dir = {:?}\ncatalog = {:?}\n\n[freeze]\ninclude = [{:?}]\n\
             timeout = \"{TIMEOUT_S}s\"\n\n[snapshot]\nprovider = \"command\"\n\
             command = [\"/bin/sleep\", \"3\"]\ntimeout = \"30s\"\n",
            state_dir,
            st.join("c.db"),
            fs.mount_point
        ),
        0o600,
    );
    // One undisturbed run first: the configuration works and freezes.
    let out = Command::new(support::quiesce_bin())
        .args(["snapshot", "--json", "--config", config.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "report: {e}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(report["status"], "succeeded", "{report:#}");
    assert_eq!(report["consistency"], "file-system", "{report:#}");
    assert!(report["frozen_ms"].as_u64().unwrap() >= 2900, "{report:#}");

    let seed = freeze::monotonic_ns() | 1;
    println!("seed {seed}");
    let mut rng = Rng(seed);
    let mut results = Vec::new();
    for signal in ["KILL", "TERM"] {
        let mut failures = 0;
        let mut worst = Duration::ZERO;
        for i in 0..ROUNDS {
            wait_lock_free(&state_dir);
            let mut child = Command::new(support::quiesce_bin())
                .args(["snapshot", "--json", "--config", config.to_str().unwrap()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let pid = child.id();
            // Inside the window: this run's state file exists (written just before the
            // first FIFREEZE) and a write probe blocks.
            let t = Instant::now();
            let mut probes = Vec::new();
            let mut in_window = false;
            while t.elapsed() < Duration::from_secs(15) {
                let ours =
                    matches!(state::StateFile::read(&state_dir), Ok(Some(s)) if s.agent_pid == pid);
                if ours {
                    let mut p = support::WriteProbe::start(&fs.mount_point);
                    if p.finished_within(Duration::from_millis(15)).is_none() {
                        probes.push(p);
                        in_window = true;
                        break;
                    }
                } else {
                    std::thread::sleep(Duration::from_micros(500));
                }
            }
            assert!(in_window, "round {i}: quiesce never froze");
            std::thread::sleep(Duration::from_micros(rng.below(500_000)));
            let killed_at = Instant::now();
            support::sh("kill", &[&format!("-{signal}"), &pid.to_string()]);
            let _ = child.wait();
            let ok = writable_within(&fs.mount_point, Duration::from_secs(TIMEOUT_S + 1));
            worst = worst.max(killed_at.elapsed());
            if !ok {
                failures += 1;
                eprintln!("round {i} (SIG{signal}): still frozen after the guard timeout + 1 s");
            }
            drop(probes);
            reap_orphans();
        }
        println!(
            "quiesce snapshot, SIG{signal}: {ROUNDS} kills inside the frozen window, {failures} \
             left frozen, slowest thaw after the kill {worst:?}"
        );
        results.push((signal, failures, worst));
    }
    wait_lock_free(&state_dir);
    let lock = OpLock::acquire(&state_dir).unwrap();
    let leftover = state::recover(&state_dir).unwrap();
    assert!(leftover.is_empty(), "recover had to thaw {leftover:?}");
    drop(lock);
    // Let the orphaned snapshot commands (sleep 3) finish and reap them.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        match rustix::process::wait(rustix::process::WaitOptions::NOHANG) {
            Ok(Some(_)) => {}
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => break, // ECHILD: none left
        }
    }
    for (signal, failures, worst) in results {
        assert_eq!(
            failures, 0,
            "SIG{signal}: {failures} rounds left the filesystem frozen"
        );
        assert!(
            worst < Duration::from_secs(2),
            "SIG{signal}: a thaw took {worst:?}"
        );
    }
}
