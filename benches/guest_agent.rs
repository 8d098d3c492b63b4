//! `guest-fsfreeze-freeze-list` + `guest-fsfreeze-thaw` through `quiesce guest-agent` against
//! Debian's real qemu-ga 7.2, in the same run, on the same filesystems.
//!
//! Run: `cargo bench --bench guest_agent` (root; qemu-ga installed by
//! scripts/install-deps.sh; 4 loop ext4 of 1.5 GiB, 500 MB unflushed on each per
//! measurement, about 2.2 GB of disk, removed at the end). `QUIESCE_BENCH_REPS` sets the
//! repetitions (default 3).
//!
//! Both agents get the same two commands over their unix socket, as a host would send them.
//! The frozen window is measured the same way for both, from outside: a thread per
//! filesystem changes a file's modification time every millisecond (a metadata change
//! dirties no page, so it is not throttled by the writeback of the 500 MB, but it blocks on
//! a frozen filesystem); the window is from the start of the first change that blocked
//! (> 5 ms) to the end of the last one. quiesce's own `frozen_ms` (first FIFREEZE to last FITHAW, from its
//! catalog) is printed beside it. Total is from sending the freeze to the thaw's answer.
//! The frozen window proper (first FIFREEZE to last FITHAW) is taken the same way for both
//! agents too, from `strace -f -ttt -T -e trace=ioctl` attached to the agent process.
//!
//! Safety: qemu-ga only gets `guest-fsfreeze-freeze-list` with these loop mounts; its thaw
//! thaws every frozen filesystem on the machine (run the bench alone).
#[path = "../tests/it/support/mod.rs"]
mod support;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{LoopFs, Scratch};

const FILESYSTEMS: usize = 4;
const FS_MB: u64 = 1536;
const DIRTY_MB: usize = 500;
const BLOCKED: Duration = Duration::from_millis(5);

/// An agent's name and its frozen windows, writer stalls and totals (ms).
type Row = (&'static str, Vec<f64>, Vec<f64>, Vec<f64>);

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(sock: &Path) {
    let t = Instant::now();
    while UnixStream::connect(sock).is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "agent did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn main() {
    let reps: usize = std::env::var("QUIESCE_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    println!("command: cargo bench --bench guest_agent   (QUIESCE_BENCH_REPS={reps})");
    if Command::new("qemu-ga").arg("--version").output().is_err() {
        eprintln!("qemu-ga is not installed (scripts/install-deps.sh); skipping");
        return;
    }
    let dir = Scratch::new("bench-qga");
    let fss: Vec<LoopFs> = (0..FILESYSTEMS)
        .map(|_| LoopFs::new("ext4", FS_MB))
        .collect();
    let mounts: Vec<PathBuf> = fss.iter().map(|f| f.mount_point.clone()).collect();

    // qemu-ga
    let qga_sock = dir.join("qga.sock");
    std::fs::create_dir_all(dir.join("qga-state")).unwrap();
    let qga = Proc(
        Command::new("qemu-ga")
            .args(["-m", "unix-listen", "-p"])
            .arg(&qga_sock)
            .arg("-t")
            .arg(dir.join("qga-state"))
            .arg("-l")
            .arg(dir.join("qga.log"))
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // quiesce (its plan names a path that is not mounted: only freeze-list freezes)
    let cfg = dir.file(
        "quiesce.toml",
        &format!(
            "[paths]\nstate_dir = {:?}\ncatalog = {:?}\n[freeze]\ninclude = [{:?}]\ntimeout = \"60s\"\n",
            dir.join("state").display().to_string(),
            dir.join("catalog.db").display().to_string(),
            dir.join("unused").display().to_string(),
        ),
        0o600,
    );
    let q_sock = dir.join("quiesce.sock");
    let quiesce = Proc(
        Command::new(support::quiesce_bin())
            .arg("guest-agent")
            .arg("--config")
            .arg(&cfg)
            .args(["-m", "unix-listen", "-p"])
            .arg(&q_sock)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(&qga_sock);
    wait_for(&q_sock);

    support::dirty_all(&mounts, DIRTY_MB);
    support::settle();
    let mut rows: Vec<Row> = vec![
        ("quiesce", vec![], vec![], vec![]),
        ("qemu-ga", vec![], vec![], vec![]),
    ];
    let mut own_ms = Vec::new();
    let agents = [(&q_sock, quiesce.0.id()), (&qga_sock, qga.0.id())];
    let trace = dir.join("strace.log");
    for rep in 0..reps {
        for (i, (sock, pid)) in agents.iter().enumerate() {
            support::dirty_all(&mounts, DIRTY_MB);
            let (window, stall, total) = measure(sock, *pid, &trace, &mounts);
            println!(
                "rep {rep} {:<8}: frozen window {:>6} ms   writers blocked {:>6} ms   freeze-list + thaw total {:>6} ms",
                rows[i].0,
                window.as_millis(),
                stall.as_millis(),
                total.as_millis()
            );
            rows[i].1.push(window.as_millis() as f64);
            rows[i].2.push(stall.as_millis() as f64);
            rows[i].3.push(total.as_millis() as f64);
            support::settle();
        }
    }
    let out = Command::new(support::quiesce_bin())
        .args(["history", "--json", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    if let Ok(Value::Array(runs)) = serde_json::from_slice::<Value>(&out.stdout) {
        own_ms = runs
            .iter()
            .filter_map(|r| r["frozen_ms"].as_f64())
            .collect();
    }
    println!();
    println!("{FILESYSTEMS} x ext4 ({FS_MB} MiB loop), {DIRTY_MB} MB unflushed each, {reps} repetitions, medians:");
    let (qw, gw) = (
        support::median(&mut rows[0].1),
        support::median(&mut rows[1].1),
    );
    let (qs, gs) = (
        support::median(&mut rows[0].2),
        support::median(&mut rows[1].2),
    );
    let (qt, gt) = (
        support::median(&mut rows[0].3),
        support::median(&mut rows[1].3),
    );
    println!(
        "  frozen window (first FIFREEZE -> last FITHAW, strace): quiesce {qw:.0} ms (its report: frozen_ms {:.0})  vs  qemu-ga {gw:.0} ms  -> {:.1}x shorter",
        support::median(&mut own_ms),
        gw / qw.max(1.0)
    );
    println!(
        "  writers blocked (first to last stalled mtime change > 5 ms): quiesce {qs:.0} ms  vs  qemu-ga {gs:.0} ms  -> {:.1}x shorter",
        gs / qs.max(1.0)
    );
    println!("  freeze-list + thaw, as the host waits: quiesce {qt:.0} ms  vs  qemu-ga {gt:.0} ms");
    for f in &fss {
        let _ = std::fs::remove_file(f.path("dirty.bin"));
        let _ = std::fs::remove_file(f.path("wprobe"));
    }
}

fn call(conn: &mut UnixStream, reader: &mut BufReader<UnixStream>, req: &Value) -> Value {
    conn.write_all(format!("{req}\n").as_bytes()).unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

/// Freeze-list + thaw through the agent at `sock` (process `pid`): (frozen window from its
/// own FIFREEZE/FITHAW calls, longest stall seen by writers, total).
fn measure(
    sock: &Path,
    pid: u32,
    trace: &Path,
    mounts: &[PathBuf],
) -> (Duration, Duration, Duration) {
    let _ = std::fs::remove_file(trace);
    let mut strace = Proc(
        Command::new("strace")
            .args(["-f", "-qq", "-ttt", "-T", "-e", "trace=ioctl", "-o"])
            .arg(trace)
            .args(["-p", &pid.to_string()])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("strace (scripts/install-deps.sh)"),
    );
    std::thread::sleep(Duration::from_millis(500)); // attached to every thread
    let mut conn = UnixStream::connect(sock).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    // Without `mountpoints` (or with `{}` arguments) qemu-ga freezes every filesystem,
    // `/` included: only ever a non-empty list of this run's own loop mounts.
    assert!(
        !mounts.is_empty()
            && mounts
                .iter()
                .all(|m| m.is_absolute() && m.as_path() != Path::new("/"))
    );
    let probes = Probes::start(mounts);
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    let r = call(
        &mut conn,
        &mut reader,
        &json!({"execute": "guest-fsfreeze-freeze-list", "arguments": {"mountpoints": mounts}}),
    );
    assert_eq!(r["return"], json!(FILESYSTEMS), "{r}");
    let r = call(
        &mut conn,
        &mut reader,
        &json!({"execute": "guest-fsfreeze-thaw"}),
    );
    let total = t.elapsed();
    assert!(
        r["return"].as_u64().unwrap_or(0) >= FILESYSTEMS as u64,
        "{r}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let stall = probes.stop();
    let _ = Command::new("kill")
        .args(["-INT", &strace.0.id().to_string()])
        .status();
    let _ = strace.0.wait();
    (
        ioctl_window(&std::fs::read_to_string(trace).unwrap_or_default()),
        stall,
        total,
    )
}

/// From an `strace -f -ttt -T -e trace=ioctl` log: the start of the first FIFREEZE to the end
/// of the last FITHAW (a call may be split in "unfinished" / "resumed" lines).
fn ioctl_window(log: &str) -> Duration {
    let mut first_freeze: Option<f64> = None;
    let mut last_thaw: Option<f64> = None;
    let mut pending_thaw = std::collections::HashMap::new();
    for line in log.lines() {
        let mut f = line.split_whitespace();
        let (Some(pid), Some(ts)) = (f.next(), f.next().and_then(|t| t.parse::<f64>().ok())) else {
            continue;
        };
        let took = line
            .rsplit('<')
            .next()
            .and_then(|t| t.trim_end_matches('>').parse::<f64>().ok());
        if line.contains("FIFREEZE") && !line.contains("resumed") {
            first_freeze = Some(first_freeze.map_or(ts, |f| f.min(ts)));
        }
        if line.contains("FITHAW") {
            if line.contains("unfinished") {
                pending_thaw.insert(pid.to_string(), ());
            } else if let Some(t) = took {
                last_thaw = Some(last_thaw.map_or(ts + t, |l| l.max(ts + t)));
            }
        } else if line.contains("resumed") && pending_thaw.remove(pid).is_some() {
            last_thaw = Some(last_thaw.map_or(ts, |l| l.max(ts)));
        }
    }
    match (first_freeze, last_thaw) {
        (Some(a), Some(b)) if b > a => Duration::from_secs_f64(b - a),
        _ => Duration::ZERO,
    }
}

/// One thread per filesystem changing a file's mtime; each blocked change's (start, end) is kept.
struct Probes {
    stop: Arc<AtomicBool>,
    blocked: Arc<Mutex<Vec<(Instant, Instant)>>>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

impl Probes {
    fn start(mounts: &[PathBuf]) -> Probes {
        let stop = Arc::new(AtomicBool::new(false));
        let blocked = Arc::new(Mutex::new(Vec::new()));
        let handles = mounts
            .iter()
            .map(|m| {
                let (stop, blocked, path) = (stop.clone(), blocked.clone(), m.join("wprobe"));
                std::thread::spawn(move || {
                    let f = std::fs::File::create(path).unwrap();
                    let mut n = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        let t = Instant::now();
                        n += 1;
                        f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(n))
                            .unwrap();
                        let end = Instant::now();
                        if end - t > BLOCKED {
                            blocked.lock().unwrap().push((t, end));
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                })
            })
            .collect();
        Probes {
            stop,
            blocked,
            handles,
        }
    }

    fn stop(self) -> Duration {
        self.stop.store(true, Ordering::SeqCst);
        for h in self.handles {
            h.join().unwrap();
        }
        let b = self.blocked.lock().unwrap();
        match (b.iter().map(|x| x.0).min(), b.iter().map(|x| x.1).max()) {
            (Some(first), Some(last)) => last - first,
            _ => Duration::ZERO,
        }
    }
}
