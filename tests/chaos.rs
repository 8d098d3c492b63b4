//! The chaos suite: kill and stop the real `quiesce snapshot` and its guard inside the
//! frozen window, several trials per scenario, and check that every filesystem is writable
//! again within its deadline. Prints a table (scenario, trials, left frozen, deadlines
//! missed, time to writable) and exits non-zero if anything was left frozen or late.
//!
//! Scenarios: kill -9 of the agent, of the guard, of both (then `quiesce recover`); SIGSTOP
//! of the agent, of the guard; stacked filesystems (an ext4 on a loop image living on
//! another frozen loop filesystem) with both killed, then `recover`; two instances with
//! different state dirs on the same filesystem.
//!
//! Every trial cleans up on every path: [`Trial`] continues and kills what it started, and
//! thaws its filesystems, on drop; [`LoopFs`] thaws, unmounts and detaches on drop.
#[path = "it/support/mod.rs"]
mod support;

use quiesce::freeze::state;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{LoopFs, Scratch, WriteProbe};

/// The configured `freeze.timeout` (the guard's deadline).
const FREEZE_TIMEOUT: Duration = Duration::from_millis(1500);
/// The snapshot command holds the freeze longer than that.
const PROVIDER_SLEEP: &str = "2.5";
/// A kill must be noticed well before the guard's own deadline.
const KILL_DEADLINE: Duration = Duration::from_secs(1);
/// After a kill of both: `recover` must have made everything writable.
const RECOVER_DEADLINE: Duration = Duration::from_secs(5);
/// A stopped agent or guard: the deadline still holds (plus slack).
const STOP_DEADLINE: Duration = Duration::from_millis(2500);
/// A run refused by the lock answers at once.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(2);
/// How long we wait for a late thaw before calling it "left frozen" and thawing by hand.
const GRACE: Duration = Duration::from_secs(5);
const TRIALS: usize = 3;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        println!("chaos: test");
        return;
    }
    let filter = args.iter().skip(1).find(|a| !a.starts_with('-'));
    if filter.is_some_and(|f| !"chaos".contains(f.as_str())) {
        return;
    }
    support::require_root!();
    // Guards whose agent was killed are re-parented to us: they stay zombies (their pid is
    // not reused) until `reap_orphans`, so signalling them by pid is safe.
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).unwrap();
    let started = Instant::now();
    let scenarios: [(&str, Scenario); 7] = [
        ("kill -9 agent", kill_agent),
        ("kill -9 guard", kill_guard),
        ("kill -9 both, recover", kill_both),
        ("SIGSTOP agent", stop_agent),
        ("SIGSTOP guard", stop_guard),
        ("stacked, kill -9 both, recover", stacked),
        ("two instances, same fs", two_instances),
    ];
    let mut rows = Vec::new();
    for (name, scenario) in scenarios {
        let mut row = Row::default();
        for _ in 0..TRIALS {
            let outcome = scenario();
            row.add(outcome);
            reap_orphans();
        }
        rows.push((name, row));
    }
    drain_orphans();
    println!();
    println!(
        "{:<32} {:>6} {:>11} {:>9} {:>22} {:>9}",
        "scenario", "trials", "left frozen", "late", "time to writable (max)", "deadline"
    );
    let mut bad = 0;
    for (name, r) in &rows {
        println!(
            "{:<32} {:>6} {:>11} {:>9} {:>22} {:>9}",
            name,
            r.trials,
            r.left_frozen,
            r.late,
            format!("{} ms", r.max.as_millis()),
            format!("{} ms", r.deadline.as_millis())
        );
        for e in &r.errors {
            println!("    {e}");
        }
        bad += r.left_frozen + r.late + r.errors.len();
    }
    println!("(two instances: the time is the refused run's answer)");
    println!("total {:.1} s", started.elapsed().as_secs_f64());
    if bad > 0 {
        eprintln!("chaos: {bad} failures");
        std::process::exit(1);
    }
    println!("test chaos ... ok");
}

type Scenario = fn() -> Outcome;

/// One trial's result.
struct Outcome {
    /// Time until every filesystem was writable again (None: never, thawed by hand).
    writable_after: Option<Duration>,
    deadline: Duration,
    /// Anything else that went wrong (a report that lies, a refused run that is not).
    errors: Vec<String>,
}

#[derive(Default)]
struct Row {
    trials: usize,
    left_frozen: usize,
    late: usize,
    max: Duration,
    deadline: Duration,
    errors: Vec<String>,
}

impl Row {
    fn add(&mut self, o: Outcome) {
        self.trials += 1;
        self.deadline = o.deadline;
        match o.writable_after {
            None => self.left_frozen += 1,
            Some(t) => {
                self.max = self.max.max(t);
                if t > o.deadline {
                    self.late += 1;
                }
            }
        }
        self.errors.extend(o.errors);
    }
}

fn reap_orphans() {
    while let Ok(Some(_)) = rustix::process::wait(rustix::process::WaitOptions::NOHANG) {}
}

/// Wait (bounded) for the orphaned snapshot commands to end, reaping them.
fn drain_orphans() {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(4) {
        match rustix::process::wait(rustix::process::WaitOptions::NOHANG) {
            Ok(Some(_)) => {}
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => break,
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// A `quiesce snapshot` freezing `mounts` around a sleeping snapshot command, with its own
/// state dir. On drop: continue and kill the agent and its guard, thaw the mounts.
struct Trial {
    agent: Child,
    guard_pid: Option<u32>,
    state_dir: PathBuf,
    config: PathBuf,
    mounts: Vec<PathBuf>,
    _st: Scratch,
}

fn config(st: &Scratch, mounts: &[PathBuf], sleep: &str) -> (PathBuf, PathBuf) {
    let state_dir = st.join("state");
    let include: Vec<String> = mounts.iter().map(|m| format!("{m:?}")).collect();
    let config = st.file(
        "quiesce.toml",
        &format!(
            "[paths]\nstate_dir = {state_dir:?}\ncatalog = {:?}\n\n[freeze]\ninclude = [{}]\n\
             timeout = \"{}ms\"\n\n[snapshot]\nprovider = \"command\"\n\
             command = [\"/bin/sleep\", \"{sleep}\"]\ntimeout = \"30s\"\n",
            st.join("catalog.db"),
            include.join(", "),
            FREEZE_TIMEOUT.as_millis()
        ),
        0o600,
    );
    (config, state_dir)
}

fn snapshot_cmd(config: &Path) -> Command {
    let mut c = Command::new(support::quiesce_bin());
    c.args(["snapshot", "--json", "--config", config.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    c
}

impl Trial {
    /// Start a run and wait until it has frozen (its state file names it and writes to
    /// every mount block).
    fn frozen(mounts: &[PathBuf]) -> Result<Trial, String> {
        let st = Scratch::new("chaos");
        let (config, state_dir) = config(&st, mounts, PROVIDER_SLEEP);
        let agent = snapshot_cmd(&config).spawn().map_err(|e| e.to_string())?;
        let mut trial = Trial {
            guard_pid: None,
            agent,
            state_dir,
            config,
            mounts: mounts.to_vec(),
            _st: st,
        };
        let pid = trial.agent.id();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            match state::StateFile::read(&trial.state_dir) {
                Ok(Some(s)) if s.agent_pid == pid => {
                    trial.guard_pid = s.guard_pid;
                    // Every mount (the last one is frozen last); a write through a loop
                    // on a loop is slow, so a probe must block for a while to count.
                    let mut probes: Vec<_> = mounts.iter().map(|m| WriteProbe::start(m)).collect();
                    std::thread::sleep(Duration::from_millis(100));
                    if probes
                        .iter_mut()
                        .all(|p| p.finished_within(Duration::ZERO).is_none())
                    {
                        return Ok(trial);
                    }
                }
                _ => std::thread::sleep(Duration::from_millis(2)),
            }
        }
        Err("the run never froze".into())
    }

    fn guard(&self) -> u32 {
        self.guard_pid.expect("the state file names the guard")
    }

    fn recover(&self) -> Result<(), String> {
        let out = Command::new(support::quiesce_bin())
            .args(["recover", "--config", self.config.to_str().unwrap()])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "recover failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Wait for the agent's report (bounded; killed if it does not end).
    fn report(&mut self, within: Duration) -> Option<serde_json::Value> {
        let t = Instant::now();
        while t.elapsed() < within {
            if let Ok(Some(_)) = self.agent.try_wait() {
                let mut s = String::new();
                use std::io::Read;
                self.agent.stdout.take()?.read_to_string(&mut s).ok()?;
                return serde_json::from_str(&s).ok();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Trial {
    fn drop(&mut self) {
        for pid in [Some(self.agent.id()), self.guard_pid]
            .into_iter()
            .flatten()
        {
            signal(pid, "CONT");
        }
        let _ = self.agent.kill();
        let _ = self.agent.wait();
        if let Some(g) = self.guard_pid {
            signal(g, "KILL");
        }
        for m in self.mounts.iter().rev() {
            support::thaw(m);
        }
    }
}

/// Time from `since` until every mount is writable; None after `deadline` + [`GRACE`]
/// (the mounts are then thawed by hand, innermost last, so nothing stays frozen).
fn writable_after(mounts: &[PathBuf], since: Instant, deadline: Duration) -> Option<Duration> {
    let mut probes: Vec<WriteProbe> = mounts.iter().map(|m| WriteProbe::start(m)).collect();
    let mut ok = true;
    for p in &mut probes {
        let left = (deadline + GRACE).saturating_sub(since.elapsed());
        if p.finished_within(left) != Some(true) {
            ok = false;
            break;
        }
    }
    if ok {
        return Some(since.elapsed());
    }
    // Outer (image holder) first, as the thaw order requires.
    for m in mounts.iter().rev() {
        support::thaw(m);
    }
    None
}

fn outcome(writable_after: Option<Duration>, deadline: Duration, errors: Vec<String>) -> Outcome {
    Outcome {
        writable_after,
        deadline,
        errors,
    }
}

fn setup_failed(e: String, deadline: Duration) -> Outcome {
    outcome(Some(Duration::ZERO), deadline, vec![e])
}

/// The report must never claim a consistency the freeze did not deliver.
fn check_not_succeeded(report: Option<serde_json::Value>, errors: &mut Vec<String>) {
    match report {
        Some(r) if r["status"] == "succeeded" && r["consistency"] == "file-system" => {
            errors.push(format!("report claims a full freeze: {r}"))
        }
        Some(_) => {}
        None => errors.push("no report from the agent".into()),
    }
}

/// Whose process a single-signal scenario hits.
#[derive(Clone, Copy)]
enum Who {
    Agent,
    Guard,
}

/// Send `sig` to the agent or its guard inside the frozen window; every mount must be
/// writable within `deadline`. When the guard was hit, the agent's report must not claim a
/// freeze it did not keep.
fn signal_in_window(who: Who, sig: &str, deadline: Duration) -> Outcome {
    let fs = LoopFs::new("ext4", 32);
    let mounts = vec![fs.mount_point.clone()];
    let mut trial = match Trial::frozen(&mounts) {
        Ok(t) => t,
        Err(e) => return setup_failed(e, deadline),
    };
    let pid = match who {
        Who::Agent => trial.agent.id(),
        Who::Guard => trial.guard(),
    };
    let t = Instant::now();
    signal(pid, sig);
    let w = writable_after(&mounts, t, deadline);
    let mut errors = vec![];
    if let Who::Guard = who {
        check_not_succeeded(trial.report(Duration::from_secs(5)), &mut errors);
    }
    drop(trial);
    outcome(w, deadline, errors)
}

fn kill_agent() -> Outcome {
    signal_in_window(Who::Agent, "KILL", KILL_DEADLINE)
}

fn kill_guard() -> Outcome {
    signal_in_window(Who::Guard, "KILL", KILL_DEADLINE)
}

fn stop_agent() -> Outcome {
    signal_in_window(Who::Agent, "STOP", STOP_DEADLINE)
}

fn stop_guard() -> Outcome {
    signal_in_window(Who::Guard, "STOP", STOP_DEADLINE)
}

/// Stop both first (neither can thaw then), kill both, run `quiesce recover`.
fn kill_all_then_recover(trial: &Trial, mounts: &[PathBuf]) -> (Option<Duration>, Vec<String>) {
    let (agent, guard) = (trial.agent.id(), trial.guard());
    // The agent first: it watches its guard and would thaw at once if that stopped first.
    signal(agent, "STOP");
    signal(guard, "STOP");
    let t = Instant::now();
    signal(agent, "KILL");
    signal(guard, "KILL");
    let mut errors = vec![];
    // Still frozen: nobody was left to thaw.
    let mut p = WriteProbe::start(&mounts[0]);
    if p.finished_within(Duration::from_millis(100)).is_some() {
        errors.push("writable before recover: the kill was not of both".into());
    }
    if let Err(e) = trial.recover() {
        errors.push(e);
    }
    (writable_after(mounts, t, RECOVER_DEADLINE), errors)
}

fn kill_both() -> Outcome {
    let fs = LoopFs::new("ext4", 32);
    let mounts = vec![fs.mount_point.clone()];
    let trial = match Trial::frozen(&mounts) {
        Ok(t) => t,
        Err(e) => return setup_failed(e, RECOVER_DEADLINE),
    };
    let (w, errors) = kill_all_then_recover(&trial, &mounts);
    drop(trial);
    outcome(w, RECOVER_DEADLINE, errors)
}

fn stacked() -> Outcome {
    let outer = LoopFs::new("ext4", 96);
    let st = Scratch::new("chaos-inner");
    let inner = LoopFs::create("ext4", 32, &outer.path("inner.img"), &st.join("inner-mnt"));
    // Inner first: the plan freezes it before the filesystem holding its image.
    let mounts = vec![inner.mount_point.clone(), outer.mount_point.clone()];
    let trial = match Trial::frozen(&mounts) {
        Ok(t) => t,
        Err(e) => return setup_failed(e, RECOVER_DEADLINE),
    };
    let (w, errors) = kill_all_then_recover(&trial, &mounts);
    drop(trial);
    drop(inner);
    outcome(w, RECOVER_DEADLINE, errors)
}

/// A second instance (its own state dir) on the frozen filesystem is refused at once,
/// naming the holder; the first one finishes and thaws.
fn two_instances() -> Outcome {
    let fs = LoopFs::new("ext4", 32);
    let mounts = vec![fs.mount_point.clone()];
    let mut trial = match Trial::frozen(&mounts) {
        Ok(t) => t,
        Err(e) => return setup_failed(e, REFUSAL_DEADLINE),
    };
    let st = Scratch::new("chaos-second");
    let (config, _) = config(&st, &mounts, "0");
    let t = Instant::now();
    let mut errors = vec![];
    let mut second = snapshot_cmd(&config).spawn().unwrap();
    let mut answered = None;
    while t.elapsed() < REFUSAL_DEADLINE + GRACE {
        if let Ok(Some(_)) = second.try_wait() {
            answered = Some(t.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if answered.is_none() {
        let _ = second.kill();
    }
    let out = second.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let holder = format!("quiesce pid {}", trial.agent.id());
    if !(text.contains("OperationInProgress") && text.contains(&holder)) {
        errors.push(format!(
            "the second run was not refused naming {holder}: {text}"
        ));
    }
    match trial.report(Duration::from_secs(10)) {
        Some(r) if r["status"].is_string() => {}
        other => errors.push(format!("the first run did not report: {other:?}")),
    }
    if writable_after(&mounts, Instant::now(), KILL_DEADLINE).is_none() {
        errors.push("left frozen after the first run ended".into());
    }
    drop(trial);
    outcome(answered, REFUSAL_DEADLINE, errors)
}
