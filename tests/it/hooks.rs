//! The hook runner and hold mode with real processes: retries, timeouts that take the whole
//! tree down, bounded output, the environment, leftovers, and held hooks.

use crate::support;

use quiesce::codes::ErrorCode;
use quiesce::config::ScriptSpec;
use quiesce::hooks::hold::start_held;
use quiesce::hooks::{run_script, AttemptEnd, Limits, Phase, RunContext, OUTPUT_TAIL_BYTES};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::Scratch;

fn ctx(phase: Phase) -> RunContext {
    RunContext {
        operation_id: "op-test-1".into(),
        hook: "testhook".into(),
        phase,
        deadline_unix: 0,
    }
}

fn limits(timeout_ms: u64, retries: u32, grace_ms: u64) -> Limits {
    Limits {
        timeout: Duration::from_millis(timeout_ms),
        retries,
        kill_grace: Duration::from_millis(grace_ms),
    }
}

fn spec(path: &Path, args: &[&str]) -> ScriptSpec {
    ScriptSpec {
        path: path.to_path_buf(),
        args: args.iter().map(|s| s.to_string()).collect(),
    }
}

fn read_pid(p: &Path) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(s) = std::fs::read_to_string(p) {
            if let Ok(pid) = s.trim().parse() {
                return pid;
            }
        }
        assert!(Instant::now() < deadline, "{} never written", p.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// True while `pid` is a live (not zombie) process that is still the one we started
/// (same process group), so a reused pid does not count.
fn alive(pid: i32, pgid: i32) -> bool {
    match quiesce::process::stat_state_pgrp(pid) {
        Some((state, pg)) => pg == pgid && state != 'Z' && state != 'X',
        None => false,
    }
}

fn vm_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn retry_really_reruns_the_script() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let d = Scratch::new("hooks-retry");
    let count = d.join("count");
    let s = d.script(
        "pre",
        "#!/bin/sh\n\
         n=$(cat \"$1\" 2>/dev/null || echo 0); n=$((n+1)); echo $n > \"$1\"\n\
         echo \"attempt $QUIESCE_ATTEMPT run $n\"\n\
         if [ $n -lt 2 ]; then echo 'not yet' >&2; exit 1; fi\n\
         exit 0\n",
    );
    let r = run_script(
        &spec(&s, &[count.to_str().unwrap()]),
        &ctx(Phase::Pre),
        limits(10_000, 3, 500),
    );
    assert!(r.succeeded(), "{r:?}");
    assert_eq!(std::fs::read_to_string(&count).unwrap().trim(), "2");
    assert_eq!(r.attempts.len(), 2);
    assert_eq!(r.attempts[0].end, AttemptEnd::Exited { code: 1 });
    assert_eq!(r.attempts[1].end, AttemptEnd::Exited { code: 0 });
    assert_eq!(r.attempts[1].number, 2);
    assert!(r.stdout_tail.contains("attempt 2 run 2"), "{r:?}");
    assert!(r.message.contains("attempt 2 of 4"), "{}", r.message);
}

#[test]
fn failure_after_all_attempts_has_the_failed_code() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let d = Scratch::new("hooks-fail");
    let count = d.join("count");
    let s = d.script(
        "post",
        "#!/bin/sh\nn=$(cat \"$1\" 2>/dev/null || echo 0); echo $((n+1)) > \"$1\"\n\
         echo 'database said no' >&2\nexit 3\n",
    );
    let r = run_script(
        &spec(&s, &[count.to_str().unwrap()]),
        &ctx(Phase::Post),
        limits(10_000, 2, 500),
    );
    assert_eq!(r.error, Some(ErrorCode::PostScriptExecutionFailed));
    assert_eq!(std::fs::read_to_string(&count).unwrap().trim(), "3");
    assert_eq!(r.attempts.len(), 3);
    assert!(r
        .attempts
        .iter()
        .all(|a| a.end == AttemptEnd::Exited { code: 3 }));
    assert!(r.message.contains("exited with code 3"), "{}", r.message);
    assert!(r.message.contains("database said no"), "{}", r.message);
    assert_eq!(r.stderr_tail, "database said no\n");
}

#[test]
fn timeout_kills_child_and_grandchild_even_if_they_ignore_sigterm() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let d = Scratch::new("hooks-timeout");
    // child ignores SIGTERM and waits; grandchild does not ignore it.
    d.script(
        "child.sh",
        "trap '' TERM\necho $$ > \"$1/child\"\n/bin/sh \"$1/grandchild.sh\" \"$1\" &\nwait\nsleep 1000\n",
    );
    d.script(
        "grandchild.sh",
        "echo $$ > \"$1/grandchild\"\nexec sleep 1000\n",
    );
    let s = d.script(
        "pre",
        "#!/bin/sh\necho $$ > \"$1/leader\"\n/bin/sh \"$1/child.sh\" \"$1\" &\necho started\nsleep 1000\n",
    );
    let dir = d.path.to_str().unwrap();
    let started = Instant::now();
    let r = run_script(&spec(&s, &[dir]), &ctx(Phase::Pre), limits(1000, 5, 300));
    let took = started.elapsed();
    assert_eq!(r.error, Some(ErrorCode::PreScriptTimeout), "{r:?}");
    assert_eq!(r.attempts.len(), 1, "no retry after a timeout");
    assert_eq!(r.attempts[0].end, AttemptEnd::TimedOut);
    assert!(r.stdout_tail.contains("started"));
    assert!(took < Duration::from_secs(4), "took {took:?}");
    let leader = read_pid(&d.join("leader"));
    let child = read_pid(&d.join("child"));
    let grandchild = read_pid(&d.join("grandchild"));
    for pid in [leader, child, grandchild] {
        assert!(!alive(pid, leader), "pid {pid} survived the timeout");
    }
}

#[test]
fn timeout_covers_all_retries() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let d = Scratch::new("hooks-timeout-retries");
    let count = d.join("count");
    let s = d.script(
        "pre",
        "#!/bin/sh\nn=$(cat \"$1\" 2>/dev/null || echo 0); echo $((n+1)) > \"$1\"\nsleep 0.4\nexit 1\n",
    );
    let started = Instant::now();
    let r = run_script(
        &spec(&s, &[count.to_str().unwrap()]),
        &ctx(Phase::Pre),
        limits(1000, 100, 200),
    );
    let took = started.elapsed();
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    let runs: usize = std::fs::read_to_string(&count)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!((2..=3).contains(&runs), "{runs} runs");
    assert_eq!(r.attempts.len(), runs);
    // Either the last attempt was cut by the deadline, or it failed right at it.
    assert!(
        r.error == Some(ErrorCode::PreScriptTimeout)
            || r.error == Some(ErrorCode::PreScriptExecutionFailed),
        "{r:?}"
    );
}

#[test]
fn gigabyte_of_output_does_not_block_or_grow_memory() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let d = Scratch::new("hooks-gib");
    let s = d.script(
        "pre",
        "#!/bin/sh\nhead -c 1073741824 /dev/zero\nhead -c 10000000 /dev/zero >&2\necho done-out\necho done-err >&2\n",
    );
    let hwm_before = vm_kib("VmHWM:");
    let started = Instant::now();
    let r = run_script(&spec(&s, &[]), &ctx(Phase::Pre), limits(120_000, 0, 500));
    let took = started.elapsed();
    let hwm_after = vm_kib("VmHWM:");
    let rss_after = vm_kib("VmRSS:");
    eprintln!(
        "1 GiB drained in {took:?}; VmHWM {hwm_before} -> {hwm_after} KiB, VmRSS {rss_after} KiB"
    );
    assert!(r.succeeded(), "{:?}", r.message);
    assert!(
        hwm_after.saturating_sub(hwm_before) < 64 * 1024,
        "peak RSS grew by {} KiB",
        hwm_after - hwm_before
    );
    assert_eq!(r.stdout_tail.len(), OUTPUT_TAIL_BYTES);
    assert!(r.stdout_tail.ends_with("done-out\n"));
    assert!(r.stderr_tail.ends_with("done-err\n"));
    assert_eq!(r.stderr_tail.len(), OUTPUT_TAIL_BYTES);
}

#[test]
fn script_without_shebang_runs_under_bin_sh() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let d = Scratch::new("hooks-sh");
    let s = d.script(
        "pre",
        "echo \"exe=$(readlink /proc/$$/exe)\"\necho \"zero=$0\"\necho \"args=$#:$1:$2\"\n",
    );
    let r = run_script(
        &spec(&s, &["one two", "$(touch /x)"]),
        &ctx(Phase::Pre),
        limits(5000, 0, 500),
    );
    assert!(r.succeeded(), "{r:?}");
    let sh = std::fs::canonicalize("/bin/sh").unwrap();
    assert!(
        r.stdout_tail.contains(&format!("exe={}\n", sh.display())),
        "{}",
        r.stdout_tail
    );
    // `$0` is the script's real path (scripts source files next to themselves).
    assert!(
        r.stdout_tail.contains(&format!("zero={}\n", s.display())),
        "{}",
        r.stdout_tail
    );
    assert!(
        r.stdout_tail.contains("args=2:one two:$(touch /x)"),
        "{}",
        r.stdout_tail
    );
}

#[test]
fn environment_cwd_stdin_and_process_group() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let d = Scratch::new("hooks-env");
    let s = d.script(
        "post",
        "#!/bin/sh\n\
         env | sort > \"$1/env\"\n\
         pwd > \"$1/cwd\"\n\
         readlink /proc/$$/fd/0 > \"$1/stdin\"\n\
         awk '{print $5}' /proc/$$/stat > \"$1/pgrp\"\n\
         echo $$ > \"$1/pid\"\n\
         printf '%s|' \"$@\" > \"$1/args\"\n",
    );
    let dir = d.path.to_str().unwrap().to_string();
    let c = RunContext {
        operation_id: "op-42".into(),
        hook: "pg".into(),
        phase: Phase::Post,
        deadline_unix: 1_900_000_000,
    };
    let r = run_script(
        &spec(&s, &[&dir, "a b", "*", ";echo no"]),
        &c,
        limits(5000, 0, 500),
    );
    assert!(r.succeeded(), "{r:?}");
    let env = std::fs::read_to_string(d.join("env")).unwrap();
    let mut vars: Vec<(String, String)> = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        // Set by the shell itself, not inherited.
        .filter(|(k, _)| !["PWD", "SHLVL", "_", "OLDPWD"].contains(&k.as_str()))
        .collect();
    vars.sort();
    let lang = std::env::var("LANG")
        .ok()
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| "C.UTF-8".into());
    let expect = vec![
        ("HOME", "/root".to_string()),
        ("LANG", lang),
        ("LOGNAME", "root".to_string()),
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        ),
        ("QUIESCE_ATTEMPT", "1".to_string()),
        ("QUIESCE_DEADLINE", "1900000000".to_string()),
        ("QUIESCE_HOOK", "pg".to_string()),
        ("QUIESCE_OPERATION_ID", "op-42".to_string()),
        ("QUIESCE_PHASE", "post".to_string()),
        ("QUIESCE_SCRIPT", s.display().to_string()),
        ("SHELL", root_shell()),
        ("USER", "root".to_string()),
    ];
    let expect: Vec<(String, String)> = expect
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    assert_eq!(vars, expect, "full env:\n{env}");
    assert_eq!(std::fs::read_to_string(d.join("cwd")).unwrap(), "/\n");
    assert_eq!(
        std::fs::read_to_string(d.join("stdin")).unwrap(),
        "/dev/null\n"
    );
    let pid = std::fs::read_to_string(d.join("pid")).unwrap();
    let pgrp = std::fs::read_to_string(d.join("pgrp")).unwrap();
    assert_eq!(pid, pgrp, "the script leads its own process group");
    assert_ne!(
        pgrp.trim().parse::<i32>().unwrap(),
        rustix::process::getpgrp().as_raw_nonzero().get()
    );
    assert_eq!(
        std::fs::read_to_string(d.join("args")).unwrap(),
        format!("{dir}|a b|*|;echo no|")
    );
}

#[test]
fn background_leftovers_are_terminated_and_never_block_the_runner() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let d = Scratch::new("hooks-leftover");
    // A forgotten background job that keeps stdout open and ignores SIGTERM.
    let s = d.script(
        "pre",
        "#!/bin/sh\n(trap '' TERM; echo $$ >/dev/null; exec sleep 1000) &\necho $! > \"$1/bg\"\necho main-done\nexit 0\n",
    );
    let started = Instant::now();
    let r = run_script(
        &spec(&s, &[d.path.to_str().unwrap()]),
        &ctx(Phase::Pre),
        limits(30_000, 0, 300),
    );
    let took = started.elapsed();
    assert!(r.succeeded(), "{r:?}");
    assert!(r.stdout_tail.contains("main-done"));
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let bg = read_pid(&d.join("bg"));
    // Its process group is the script's, i.e. the pgid it had: gone now.
    assert!(
        quiesce::process::stat_state_pgrp(bg)
            .map(|(st, _)| st == 'Z' || st == 'X')
            .unwrap_or(true),
        "background job {bg} survived"
    );
}

#[test]
fn daemon_that_left_the_group_does_not_hang_the_runner() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let d = Scratch::new("hooks-daemon");
    // setsid: a real daemon, outside the group, holding stdout open for 3 s. (A job still in
    // the group when the script exits is a leftover and is terminated: a start script must
    // return only once its daemon has detached, as daemons' own start commands do.)
    let s = d.script(
        "pre",
        "#!/bin/sh\nsetsid sh -c 'echo $$ > \"$1/daemon\"; exec sleep 3' sh \"$1\" &\n\
         # like a daemon's start script, return once it has detached\n\
         while [ ! -s \"$1/daemon\" ]; do sleep 0.01; done\necho hi\nexit 0\n",
    );
    let started = Instant::now();
    let r = run_script(
        &spec(&s, &[d.path.to_str().unwrap()]),
        &ctx(Phase::Pre),
        limits(30_000, 0, 300),
    );
    let took = started.elapsed();
    let daemon = read_pid(&d.join("daemon"));
    // Clean up the daemon this test started (it is not ours to kill in production).
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(daemon).unwrap(),
        rustix::process::Signal::KILL,
    );
    assert!(r.succeeded(), "{r:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[test]
fn missing_script_is_not_found_for_each_phase() {
    let d = Scratch::new("hooks-missing");
    let r = run_script(
        &spec(&d.join("nope"), &[]),
        &ctx(Phase::Pre),
        limits(1000, 3, 100),
    );
    assert_eq!(r.error, Some(ErrorCode::PreScriptNotFound));
    assert!(r.attempts.is_empty());
    let r = run_script(
        &spec(&d.join("nope"), &[]),
        &ctx(Phase::Post),
        limits(1000, 3, 100),
    );
    assert_eq!(r.error, Some(ErrorCode::PostScriptNotFound));
    assert!(r.message.contains("no such file"), "{}", r.message);
}

fn root_shell() -> String {
    std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("root:"))
        .and_then(|l| l.rsplit(':').next())
        .unwrap()
        .to_string()
}

#[test]
fn shebang_to_missing_interpreter_fails_cleanly() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    // Refused before any attempt, with a message naming the interpreter.
    let d = Scratch::new("hooks-badinterp");
    let s = d.script("pre", "#!/nonexistent/interpreter\n");
    let r = run_script(&spec(&s, &[]), &ctx(Phase::Pre), limits(5000, 1, 100));
    assert_eq!(r.error, Some(ErrorCode::PreScriptNotFound));
    assert!(r.attempts.is_empty());
    assert!(
        r.message.contains("/nonexistent/interpreter"),
        "{}",
        r.message
    );
}

#[test]
fn interpreter_of_another_user_is_refused() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    // A root 0700 script whose interpreter another user can replace runs that user's code.
    let d = Scratch::new("hooks-foreign-interp");
    let interp = d.file("fake-sh", "#!/bin/sh\nexec /bin/sh \"$@\"\n", 0o755);
    std::os::unix::fs::chown(&interp, Some(65534), None).unwrap();
    let s = d.script("pre", &format!("#!{}\necho ran\n", interp.display()));
    let r = run_script(&spec(&s, &[]), &ctx(Phase::Pre), limits(5000, 0, 100));
    assert_eq!(r.error, Some(ErrorCode::InsufficientPermissionForPreScript));
    assert!(r.message.contains("interpreter"), "{}", r.message);
    assert!(r.attempts.is_empty());
}

#[test]
fn mode_600_script_runs_and_env_shebang_resolves_on_the_hook_path() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let d = Scratch::new("hooks-600");
    let s = d.file("pre", "#!/bin/sh\necho \"plain $0\"\n", 0o600);
    let r = run_script(&spec(&s, &[]), &ctx(Phase::Pre), limits(5000, 0, 100));
    assert!(r.succeeded(), "{r:?}");
    assert!(r.stdout_tail.contains(&format!("plain {}", s.display())));
    let s = d.file("env", "#!/usr/bin/env sh\necho \"env $HOME\"\n", 0o600);
    let r = run_script(&spec(&s, &[]), &ctx(Phase::Pre), limits(5000, 0, 100));
    assert!(r.succeeded(), "{r:?}");
    assert!(r.stdout_tail.contains("env /root"), "{}", r.stdout_tail);
}

/// A `#!` interpreter that is a symlink to a multi-call binary (busybox's `/bin/sh` on
/// Alpine, initramfs and QEMU guests) gets the name from the `#!` line as its `argv[0]`, as
/// the kernel would pass it: busybox picks its applet from that name.
#[test]
fn shebang_symlink_to_a_multi_call_binary_gets_its_name_as_argv0() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "busybox is missing: run scripts/install-deps.sh"
    );
    let d = Scratch::new("hooks-busybox");
    std::os::unix::fs::symlink(busybox, d.join("sh")).unwrap();
    let body = format!("#!{}\necho \"applet ran $0\"\n", d.join("sh").display());
    let s = d.file("pre", &body, 0o700);
    let r = run_script(&spec(&s, &[]), &ctx(Phase::Pre), limits(5000, 0, 100));
    assert!(r.succeeded(), "{r:?}");
    assert!(
        r.stdout_tail
            .contains(&format!("applet ran {}", s.display())),
        "{}",
        r.stdout_tail
    );
}

// ---------------------------------------------------------------- hold mode

fn hold_script(d: &Scratch, body: &str) -> PathBuf {
    d.script("held", &format!("#!/bin/sh\necho $$ > \"$1/pid\"\n{body}"))
}

#[test]
fn hold_ready_then_release_on_stdin_eof() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let d = Scratch::new("hold-ok");
    let s = hold_script(
        &d,
        "echo quiescing\necho READY\ncat >/dev/null\necho released > \"$1/released\"\nexit 0\n",
    );
    let held = start_held(
        &spec(&s, &[d.path.to_str().unwrap()]),
        &ctx(Phase::Pre),
        limits(5000, 0, 2000),
    )
    .expect("held");
    assert!(held.pre_result().succeeded());
    assert!(held.pre_result().stdout_tail.contains("quiescing"));
    let pid = held.pid();
    assert_eq!(read_pid(&d.join("pid")), pid);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(held.lost(), None, "still holding");
    assert!(!d.join("released").exists(), "must hold until release");
    let started = Instant::now();
    let r = held.release(&ctx(Phase::Post), limits(5000, 0, 2000));
    assert!(r.succeeded(), "{r:?}");
    assert_eq!(r.phase, Phase::Post);
    assert!(r.message.contains("after stdin EOF"), "{}", r.message);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "EOF release is immediate"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("released")).unwrap(),
        "released\n"
    );
    assert!(!alive(pid, pid));
}

#[test]
fn hold_without_ready_times_out_and_is_killed() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let d = Scratch::new("hold-noready");
    let s = hold_script(&d, "echo thinking\nsleep 1000\n");
    let started = Instant::now();
    let r = start_held(
        &spec(&s, &[d.path.to_str().unwrap()]),
        &ctx(Phase::Pre),
        limits(700, 3, 200),
    )
    .expect_err("no READY");
    assert_eq!(r.error, Some(ErrorCode::PreScriptTimeout), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(r.attempts.len(), 1);
    assert!(r.stdout_tail.contains("thinking"));
    let pid = read_pid(&d.join("pid"));
    assert!(!alive(pid, pid), "held hook {pid} survived");
}

#[test]
fn hold_exit_before_ready_fails() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let d = Scratch::new("hold-exit");
    // "READYX" and "READY " are not the READY line.
    let s = hold_script(&d, "echo READYX\necho 'READY '\necho oops >&2\nexit 4\n");
    let r = start_held(
        &spec(&s, &[d.path.to_str().unwrap()]),
        &ctx(Phase::Pre),
        limits(5000, 1, 200),
    )
    .expect_err("exited");
    assert_eq!(r.error, Some(ErrorCode::PreScriptExecutionFailed), "{r:?}");
    assert_eq!(r.attempts.len(), 2, "retried");
    assert!(r.message.contains("exited with code 4"), "{}", r.message);
    assert!(r.message.contains("oops"), "{}", r.message);
}

#[test]
fn held_hook_killed_is_lost() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let d = Scratch::new("hold-lost");
    let s = hold_script(&d, "echo READY\ncat >/dev/null\nexit 0\n");
    let held = start_held(
        &spec(&s, &[d.path.to_str().unwrap()]),
        &ctx(Phase::Pre),
        limits(5000, 0, 500),
    )
    .expect("held");
    assert_eq!(held.lost(), None);
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(held.pid()).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let reason = loop {
        if let Some(r) = held.lost() {
            break r;
        }
        assert!(Instant::now() < deadline, "lost() never noticed the kill");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(reason.contains("signal 9"), "{reason}");
    let r = held.release(&ctx(Phase::Post), limits(5000, 0, 500));
    assert_eq!(r.error, Some(ErrorCode::PostScriptExecutionFailed), "{r:?}");
    assert!(r.message.contains("hold was lost"), "{}", r.message);
}

#[test]
fn hold_released_by_sigterm_when_stdin_is_ignored() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let d = Scratch::new("hold-term");
    let s = hold_script(
        &d,
        "trap 'echo got-term; exit 0' TERM\nexec </dev/null\necho READY\nwhile :; do sleep 0.05; done\n",
    );
    let held = start_held(
        &spec(&s, &[d.path.to_str().unwrap()]),
        &ctx(Phase::Pre),
        limits(5000, 0, 300),
    )
    .expect("held");
    let r = held.release(&ctx(Phase::Post), limits(5000, 0, 300));
    assert!(r.succeeded(), "{r:?}");
    assert!(r.message.contains("after SIGTERM"), "{}", r.message);
    assert!(r.stdout_tail.contains("got-term"));
}

#[test]
fn hold_ignoring_everything_is_killed_at_the_post_timeout() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let d = Scratch::new("hold-stubborn");
    let s = hold_script(
        &d,
        "trap '' TERM\nexec </dev/null\necho READY\nwhile :; do sleep 0.05; done\n",
    );
    let held = start_held(
        &spec(&s, &[d.path.to_str().unwrap()]),
        &ctx(Phase::Pre),
        limits(5000, 0, 300),
    )
    .expect("held");
    let pid = held.pid();
    let started = Instant::now();
    // timeout shorter than two graces: the deadline cuts the release short.
    let r = held.release(&ctx(Phase::Post), limits(400, 0, 300));
    assert_eq!(r.error, Some(ErrorCode::PostScriptTimeout), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(!alive(pid, pid));
}

/// Not a test on its own: the body of `hold_releases_when_the_agent_dies`, run in a child
/// process that starts a held hook and then dies by SIGKILL without releasing it.
#[test]
#[ignore]
fn hold_agent_helper() {
    let Ok(dir) = std::env::var("QUIESCE_TEST_HOLD_DIR") else {
        return;
    };
    let s = PathBuf::from(&dir).join("held");
    let held =
        start_held(&spec(&s, &[&dir]), &ctx(Phase::Pre), limits(5000, 0, 500)).expect("held");
    assert_eq!(held.lost(), None);
    std::fs::write(PathBuf::from(&dir).join("agent-ready"), "1").unwrap();
    rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL)
        .unwrap();
}

#[test]
fn hold_releases_when_the_agent_dies() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let d = Scratch::new("hold-agent-dies");
    // Writes its marker on stdin EOF; never writes to stdout after READY (its reader is gone).
    hold_script(
        &d,
        "echo READY\ncat >/dev/null\necho released-by-eof > \"$1/released\"\nexit 0\n",
    );
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "hooks::hold_agent_helper",
            "--nocapture",
        ])
        .env("QUIESCE_TEST_HOLD_DIR", &d.path)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "the agent died by SIGKILL");
    assert!(
        d.join("agent-ready").exists(),
        "the agent held the hook first"
    );
    // The shell creates the file before `echo` writes to it: wait for the words, not the
    // file.
    let released = d.join("released");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(&released).unwrap_or_default() != "released-by-eof\n" {
        assert!(
            Instant::now() < deadline,
            "held hook never saw EOF: {:?}",
            std::fs::read_to_string(&released)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = read_pid(&d.join("pid"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid, pid) {
        assert!(Instant::now() < deadline, "held hook {pid} did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn absurd_timeouts_do_not_overflow() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let d = Scratch::new("hooks-huge");
    let s = d.script("pre", "#!/bin/sh\necho READY\nexit 0\n");
    let huge = Limits {
        timeout: Duration::MAX,
        retries: u32::MAX,
        kill_grace: Duration::MAX,
    };
    let r = run_script(&spec(&s, &[]), &ctx(Phase::Pre), huge);
    assert!(r.succeeded(), "{r:?}");
    assert_eq!(r.attempts.len(), 1);
    let held = start_held(&spec(&s, &[]), &ctx(Phase::Pre), huge).expect("READY");
    // It exits right after READY: the hold is lost, and release reports its exit status.
    let r = held.release(&ctx(Phase::Post), huge);
    assert!(r.succeeded(), "{r:?}");
}

// ---------------------------------------------------------------- the whole tree

/// A timed-out script whose grandchild called `setsid` (it left the process group) and
/// ignores SIGTERM: the grandchild dies too. With cgroup2 (the tree's own cgroup,
/// `cgroup.kill`) and with the fallback (process group + `/proc` parent chains).
#[test]
fn setsid_grandchild_ignoring_sigterm_dies_with_the_timed_out_tree() {
    use quiesce::process::Launch;
    use std::time::Instant;
    for with_cgroup in [true, false] {
        let d = Scratch::new("hooks-setsid");
        let pidfile = d.join("daemon.pid");
        let s = d.script(
            "pre",
            &format!(
                "#!/bin/sh\nsetsid sh -c 'trap \"\" TERM; echo $$ > {}; exec sleep 1000' &\nsleep 1000\n",
                pidfile.display()
            ),
        );
        let mut launch = Launch::argv(&["/bin/sh".to_string(), s.display().to_string()]);
        if !with_cgroup {
            launch = launch.without_cgroup();
        }
        let mut p = launch.spawn().unwrap();
        // Not just "exists": the shell creates the file before it writes the number.
        let pid = read_pid(&pidfile);
        let sid = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        assert!(
            sid.contains(&format!(" {pid} {pid} ")),
            "it left the group: {sid}"
        );
        let end = p.run(
            Instant::now() + Duration::from_millis(300),
            Duration::from_millis(200),
        );
        assert_eq!(end, AttemptEnd::TimedOut);
        let gone = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true)
        };
        let t = Instant::now();
        while !gone() && t.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            gone(),
            "setsid'd grandchild {pid} survived (cgroup: {with_cgroup})"
        );
    }
}

/// Failing fast again and again until the time runs out is a failure with the last exit
/// status, not a timeout: no attempt was cut.
#[test]
fn failing_until_time_runs_out_is_execution_failed_not_timeout() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let d = Scratch::new("hooks-fail-until");
    let s = d.script("pre", "#!/bin/sh\nsleep 0.05\nexit 4\n");
    let r = run_script(&spec(&s, &[]), &ctx(Phase::Pre), limits(1000, 1000, 100));
    assert_eq!(r.error, Some(ErrorCode::PreScriptExecutionFailed), "{r:?}");
    assert!(r.attempts.len() > 3, "{}", r.attempts.len());
    assert_eq!(
        r.attempts.last().unwrap().end,
        AttemptEnd::Exited { code: 4 }
    );
    assert!(r.message.contains("exited with code 4"), "{}", r.message);
}
