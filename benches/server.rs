//! Host-driven round trip: prepare + release with no hooks on one small ext4 loop
//! filesystem, through the real socket of a real `quiesce serve`.
//!
//! Run: `cargo bench --bench server` (as root). Prints median and p99 over 1,000 operations
//! and the server's resident memory before and after.

#[path = "../tests/it/support/mod.rs"]
mod support;

use quiesce::server::client::call;
use std::time::{Duration, Instant};
use support::{LoopFs, Scratch, ServeProcess};

fn rss_kib(pid: i32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let n: usize = std::env::var("QUIESCE_BENCH_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let dir = Scratch::new("bench-serve");
    let fs = LoopFs::new("ext4", 64);
    let socket = dir.join("q.sock");
    let config = dir.file(
        "quiesce.toml",
        &format!(
            "[paths]\nstate_dir = {:?}\ncatalog = {:?}\n[freeze]\ninclude = [{:?}]\n[server]\nsocket = {:?}\n",
            dir.join("state").display().to_string(),
            dir.join("c.db").display().to_string(),
            fs.mount_point.display().to_string(),
            socket.display().to_string()
        ),
        0o600,
    );
    let srv = ServeProcess::start(&config, &socket);
    let t = Duration::from_secs(60);
    let rss_start = rss_kib(srv.pid(), "VmRSS");
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("bench-{i}");
        let start = Instant::now();
        let (c1, a) = call(
            &socket,
            "POST",
            &format!("/v1/operations/{id}/prepare"),
            None,
            t,
        )
        .unwrap();
        let (c2, r) = call(
            &socket,
            "POST",
            &format!("/v1/operations/{id}/release"),
            None,
            t,
        )
        .unwrap();
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        assert_eq!((c1, c2), (200, 200), "{a} {r}");
        assert_eq!(r["status"], "succeeded", "{r:#}");
    }
    let rss_end = rss_kib(srv.pid(), "VmRSS");
    let hwm = rss_kib(srv.pid(), "VmHWM");
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let q = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    println!("prepare+release round trip, no hooks, one 64 MiB ext4 loop fs, {n} operations");
    println!(
        "  median {:.2} ms   p99 {:.2} ms   max {:.2} ms",
        q(0.5),
        q(0.99),
        q(1.0)
    );
    println!(
        "  server RSS: {rss_start} KiB after start, {rss_end} KiB after {n} ops, peak {hwm} KiB"
    );
}
