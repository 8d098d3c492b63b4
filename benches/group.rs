//! Group barrier latency with a real 3-node etcd cluster on loopback and N members as real
//! `quiesce serve` processes (freezing disabled: simulated machines, no hooks).
//!
//! Run: `cargo bench --bench group` (as root; `QUIESCE_BENCH_GROUP_SIZES=3,10` and
//! `QUIESCE_BENCH_GROUP_OPS=5` to shorten). For each size it prints the median and the
//! worst, over the operations, of "operation written" -> "all ready" and -> "all released",
//! beside the baseline: one member's prepare + release straight through its socket, with no
//! group (the time the members themselves need, so the difference is coordination), and
//! beside the figures measured before watches (members polled etcd every 20 ms with one
//! connection per call). One operation per size runs first and is not counted: each new
//! member creates its catalog then, which a deployed member does once.
//!
//! It then splits "all released" with the members' own timings, and prints the coordination
//! overhead against the 100 ms target, and the CPU time one operation costs the members,
//! the etcd nodes and the coordinator (from `/proc`): with every process on this machine's
//! cores, that is how much of the latency is simply waiting for a core.

#[path = "../tests/it/support/mod.rs"]
mod support;
use support::etcd;

use quiesce::server::client::call;
use std::process::Command;
use std::time::{Duration, Instant};
use support::{quiesce_bin, Scratch, ServeProcess};

struct SimMember {
    server: ServeProcess,
    socket: std::path::PathBuf,
    _dir: Scratch,
}

fn start(name: &str, endpoints: &[String]) -> SimMember {
    let dir = Scratch::new(&format!("bench-member-{name}"));
    let socket = dir.join("q.sock");
    let eps: Vec<String> = endpoints.iter().map(|e| format!("{e:?}")).collect();
    let text = format!(
        "[paths]\nstate_dir = {:?}\ncatalog = {:?}\n[freeze]\nenabled = false\n\
         [server]\nsocket = {:?}\n[group]\nname = \"bench\"\nmember = \"{name}\"\n\
         endpoints = [{}]\n",
        dir.join("state").display().to_string(),
        dir.join("catalog.db").display().to_string(),
        socket.display().to_string(),
        eps.join(", "),
    );
    let config = dir.file("quiesce.toml", &text, 0o600);
    SimMember {
        server: ServeProcess::start(&config, &socket),
        socket,
        _dir: dir,
    }
}

/// Medians measured before watches and kept-alive connections (members polled every 20 ms,
/// one HTTP/1.0 connection per call), same bench, same machine: (members, ready, released).
const BEFORE_WATCH: [(usize, u64, u64); 3] = [(3, 83, 247), (10, 225, 411), (50, 522, 999)];

/// CPU time of a process from its `/proc/PID/stat`, in milliseconds: its own (user +
/// system), or with `children`, that of its children it has waited for.
fn cpu_ms(stat: &str, children: bool) -> u64 {
    let text = std::fs::read_to_string(stat).unwrap_or_default();
    // After the command name's closing parenthesis the fields count from 3 (state):
    // utime 14, stime 15, cutime 16, cstime 17.
    let fields: Vec<u64> = text
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .map(|f| f.parse().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default();
    let ticks = |i: usize| fields.get(i - 3).copied().unwrap_or(0);
    let first = if children { 16 } else { 14 };
    (ticks(first) + ticks(first + 1)) * 1000 / clock_ticks()
}

fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(100)
}

/// The CPU time so far of (the members, the etcd nodes, the coordinators), in milliseconds.
fn cpu_split(members: &[SimMember], cluster: &etcd::EtcdCluster) -> [u64; 3] {
    let of = |pid: u32| cpu_ms(&format!("/proc/{pid}/stat"), false);
    let members = members.iter().map(|m| of(m.server.child.id())).sum();
    let nodes = cluster.nodes.iter().flatten().map(|c| of(c.id())).sum();
    [members, nodes, cpu_ms("/proc/self/stat", true)]
}

/// Coordination overhead the issue sets a target for, at 50 members.
const TARGET_MS: u64 = 100;

fn median_max(mut v: Vec<u64>) -> (u64, u64) {
    v.sort();
    (v[v.len() / 2], *v.last().unwrap())
}

fn main() {
    let sizes: Vec<usize> = std::env::var("QUIESCE_BENCH_GROUP_SIZES")
        .unwrap_or_else(|_| "3,10,50".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let ops: usize = std::env::var("QUIESCE_BENCH_GROUP_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let cluster = etcd::EtcdCluster::start(3);
    let etcd_client = quiesce::group::etcd::Etcd::new(&cluster.endpoints, Duration::from_secs(2));
    println!(
        "group barrier, {ops} operations per size, 3-node etcd, members woken by watch streams"
    );
    println!(
        "{:>7} {:>13} {:>10} {:>16} {:>13} {:>9} {:>19} {:>21}",
        "members",
        "ready median",
        "ready max",
        "released median",
        "released max",
        "baseline",
        "released-baseline",
        "before: ready/released"
    );
    let mut members: Vec<SimMember> = Vec::new();
    let (mut split_rows, mut cpu_rows, mut verdict) = (Vec::new(), Vec::new(), None);
    let mut idle_rows = Vec::new();
    let idle_before = cpu_split(&[], &cluster);
    std::thread::sleep(Duration::from_secs(3));
    let idle_after = cpu_split(&[], &cluster);
    idle_rows.push(format!(
        "{:>7} {:>11} ms {:>10} ms",
        0,
        0,
        (idle_after[1] - idle_before[1]) / 3
    ));
    for &n in &sizes {
        while members.len() < n {
            members.push(start(&format!("sim{}", members.len()), &cluster.endpoints));
        }
        let start_wait = Instant::now();
        while quiesce::group::coordinator::members(&etcd_client, "bench").map_or(0, |m| m.len())
            != n
        {
            assert!(
                start_wait.elapsed() < Duration::from_secs(60),
                "members did not join"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // What an idle group costs (keep-alives, the members' periodic re-reads).
        let idle_before = cpu_split(&members, &cluster);
        std::thread::sleep(Duration::from_secs(3));
        let idle_after = cpu_split(&members, &cluster);
        idle_rows.push(format!(
            "{n:>7} {:>11} ms {:>10} ms",
            (idle_after[0] - idle_before[0]) / 3,
            (idle_after[1] - idle_before[1]) / 3
        ));
        // Baseline: one member alone, straight through its socket.
        let mut base = Vec::new();
        for i in 0..ops {
            let id = format!("base-{n}-{i}");
            let t = Instant::now();
            let s = &members[0].socket;
            call(
                s,
                "POST",
                &format!("/v1/operations/{id}/prepare"),
                None,
                Duration::from_secs(10),
            )
            .unwrap();
            call(
                s,
                "POST",
                &format!("/v1/operations/{id}/release"),
                None,
                Duration::from_secs(10),
            )
            .unwrap();
            base.push(t.elapsed().as_millis() as u64);
        }
        let (mut ready, mut released) = (Vec::new(), Vec::new());
        let (mut own_release, mut fan_out, mut rest) = (Vec::new(), Vec::new(), Vec::new());
        group_snapshot(&format!("warm-{n}"), &cluster.endpoints);
        let cpu_before = cpu_split(&members, &cluster);
        for i in 0..ops {
            let r = group_snapshot(&format!("op-{n}-{i}"), &cluster.endpoints);
            ready.push(r["all_ready_ms"].as_u64().unwrap());
            released.push(r["all_released_ms"].as_u64().unwrap());
            let (own, heard) = release_split(&r);
            println!("  {}", release_path(&r));
            rest.push(released.last().unwrap().saturating_sub(own));
            own_release.push(own);
            fan_out.push(heard);
        }
        let cpu_after = cpu_split(&members, &cluster);
        let per_op: Vec<u64> = (0..3)
            .map(|k| (cpu_after[k] - cpu_before[k]) / ops as u64)
            .collect();
        cpu_rows.push(format!(
            "{n:>7} {:>11} ms {:>10} ms {:>14} ms {:>10} ms",
            per_op[0],
            per_op[1],
            per_op[2],
            per_op.iter().sum::<u64>() / cores() as u64
        ));
        let (rm, rx) = median_max(ready);
        let (lm, lx) = median_max(released);
        let (bm, _) = median_max(base);
        let (om, ox) = median_max(own_release);
        let (fm, fx) = median_max(fan_out);
        // Per operation: its "all released" minus its slowest member's own release work.
        let (rest_m, rest_x) = median_max(rest.clone());
        let before = BEFORE_WATCH
            .iter()
            .find(|(size, _, _)| *size == n)
            .map_or("-".to_string(), |(_, r, l)| format!("{r} / {l} ms"));
        println!(
            "{n:>7} {:>10} ms {:>7} ms {:>13} ms {:>10} ms {:>6} ms {:>16} ms {:>21}",
            rm,
            rx,
            lm,
            lx,
            bm,
            lm.saturating_sub(bm),
            before
        );
        if n == 50 {
            let over = rest.iter().filter(|&&ms| ms >= TARGET_MS).count();
            verdict = Some(format!(
                "coordination overhead at 50 members (all released minus the slowest member's \
                 own release work): median {rest_m} ms, max {rest_x} ms; target under \
                 {TARGET_MS} ms: {} ({over} of {ops} operations at or over it)",
                if over == 0 {
                    "met in every operation"
                } else if rest_m < TARGET_MS {
                    "met by the median, not in every operation"
                } else {
                    "not met"
                }
            ));
        }
        split_rows.push(format!(
            "{n:>7} {:>13} ms {:>12} ms {:>18} ms {:>14} ms",
            format!("{lm} / {lx}"),
            format!("{om} / {ox}"),
            format!("{rest_m} / {rest_x}"),
            format!("{fm} / {fx}"),
        ));
    }
    println!(
        "\nwhere \"released\" goes (median / max over the operations): the slowest member's own \
         release work\n(heard the release -> its registry released: hooks, thaw, catalog), the \
         rest (coordination),\nand \"release written\" -> the last member heard it (watch fan-out)"
    );
    println!(
        "{:>7} {:>16} {:>15} {:>21} {:>17}",
        "members", "all released", "slowest own", "rest (coordination)", "release fan-out"
    );
    for row in split_rows {
        println!("{row}");
    }
    println!(
        "\nCPU time per operation (whole cycle: coordinator start to every catalog recording), \
         and that total spread over this machine's {} cores",
        cores()
    );
    println!(
        "{:>7} {:>14} {:>13} {:>17} {:>13}",
        "members", "all members", "etcd nodes", "coordinator", "per core"
    );
    for row in cpu_rows {
        println!("{row}");
    }
    println!("\nCPU time per second of an idle group (no operation)");
    println!(
        "{:>7} {:>14} {:>13}",
        "members", "all members", "etcd nodes"
    );
    for row in idle_rows {
        println!("{row}");
    }
    if let Some(v) = verdict {
        println!("\n{v}");
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Run one group operation through the real `quiesce group snapshot`; its report.
fn group_snapshot(id: &str, endpoints: &[String]) -> serde_json::Value {
    let out = Command::new(quiesce_bin())
        .args(["group", "snapshot", "bench", "--json", "--deadline", "30s"])
        .args(["--id", id, "--endpoints", &endpoints.join(",")])
        .output()
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("no report: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(r["status"], "succeeded", "{r:#}");
    r
}

/// From one group report: the slowest member's own release work (from hearing the release
/// to its registry's release done, as the member timed it), and the time from the release
/// written to the last member hearing it. Same machine: the clocks are the same.
fn release_split(r: &serde_json::Value) -> (u64, u64) {
    let written = r["started_at_ms"].as_u64().unwrap() + r["release_written_ms"].as_u64().unwrap();
    let (mut own, mut last_heard) = (0, written);
    for m in r["members"].as_array().unwrap() {
        let t = &m["report"]["group_timing"];
        let heard = t["heard_release_at_ms"].as_u64().unwrap();
        own = own.max(t["released_at_ms"].as_u64().unwrap().saturating_sub(heard));
        last_heard = last_heard.max(heard);
    }
    (own, last_heard - written)
}

/// One operation's release path, from the members' timings (ms after the release was
/// written; "last" is the latest member): when the last stream read the release, how many heard it from a plain read instead, and when the last
/// member's main thread heard it (the hand-off from the stream thread); then the members'
/// own release work summed (on a shared machine they run at once) and when the last one and
/// the coordinator were done.
fn release_path(r: &serde_json::Value) -> String {
    let written = r["started_at_ms"].as_u64().unwrap() + r["release_written_ms"].as_u64().unwrap();
    let after = |t: u64| t as i64 - written as i64;
    let (mut read_last, mut by_read) = (i64::MIN, 0);
    let (mut heard_last, mut handoff_max) = (i64::MIN, 0);
    let (mut own_sum, mut released_last) = (0, i64::MIN);
    for m in r["members"].as_array().unwrap() {
        let t = &m["report"]["group_timing"];
        let ms = |k: &str| t[k].as_u64().unwrap_or(0);
        heard_last = heard_last.max(after(ms("heard_release_at_ms")));
        released_last = released_last.max(after(ms("released_at_ms")));
        own_sum += ms("released_at_ms").saturating_sub(ms("heard_release_at_ms"));
        match t["release_read_at_ms"].as_u64() {
            Some(read) => {
                read_last = read_last.max(after(read));
                handoff_max = handoff_max.max(ms("heard_release_at_ms").saturating_sub(read));
            }
            None => by_read += 1,
        }
    }
    format!(
        "{}: stream read the release: last {read_last} ms \
         ({by_read} heard it by a plain read); heard: last {heard_last} ms (hand-off up to \
         {handoff_max} ms); own release work: {own_sum} ms summed over the members, the last \
         done at {released_last} ms; all released (the coordinator saw every report) at {} ms",
        r["operation_id"].as_str().unwrap_or("?"),
        r["all_released_ms"].as_u64().unwrap_or(0) as i64
            - r["release_written_ms"].as_u64().unwrap_or(0) as i64
    )
}
