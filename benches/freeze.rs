//! The frozen window of quiesce's freeze()/thaw() against a sequential `fsfreeze` baseline.
//!
//! Run: `cargo bench --bench freeze` (root; creates 4 loop ext4 filesystems of 1.5 GiB,
//! writes 500 MB to each per measurement; about 2.2 GB of real disk, removed at the end).
//! `QUIESCE_BENCH_REPS` sets the repetitions (default 3).
//!
//! For each repetition and each method, 500 MB of unflushed writes are put on each
//! filesystem, then:
//! - quiesce: `freeze()` (guard, syncfs in parallel outside the window, per-target syncfs +
//!   FIFREEZE in parallel) and at once `thaw()` (a no-op snapshot); the window is
//!   `ThawOutcome::frozen_ms` (first FIFREEZE -> last FITHAW);
//! - baseline: `fsfreeze -f` on each filesystem one after the other, then `fsfreeze -u` on
//!   each (util-linux); the window is from the first `-f` to the end of the last `-u`.
//!
//! Meanwhile a probe thread writes + fsyncs a small file on the first filesystem every
//! 1 ms; its longest single write+fsync is the write stall an application would see.
//! This prints figures; it is not a timed test.
//!
//! Measured on the 2-core build VM (5 repetitions, medians): frozen window 48 ms vs
//! 1318 ms (27x shorter); longest write stall 339 ms vs 1299 ms (3.8x). quiesce's stall
//! comes from the probe's fsync queuing behind the pre-freeze syncfs (outside the window).
#[path = "../tests/it/support/mod.rs"]
mod support;

use quiesce::config::FreezeConfig;
use quiesce::freeze::{self, lock::OpLock, plan, FreezeOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{LoopFs, Scratch};

const FILESYSTEMS: usize = 4;
const FS_MB: u64 = 1536;
const DIRTY_MB: usize = 500;

fn main() {
    freeze::run_if_requested();
    let reps: usize = std::env::var("QUIESCE_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    println!("command: cargo bench --bench freeze   (QUIESCE_BENCH_REPS={reps})");
    let base = support::scratch_base();
    std::fs::create_dir_all(&base).unwrap();
    let avail = support::sh("df", &["--output=avail", "-B1M", base.to_str().unwrap()]);
    let avail_mb: u64 = avail
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    let need_mb = (FILESYSTEMS * (DIRTY_MB + 100)) as u64 + 1024;
    println!(
        "disk: {avail_mb} MB free under {}, need ~{need_mb} MB",
        base.display()
    );
    if avail_mb < need_mb {
        eprintln!("not enough disk space; skipping the benchmark");
        return;
    }

    let fss: Vec<LoopFs> = (0..FILESYSTEMS)
        .map(|_| LoopFs::new("ext4", FS_MB))
        .collect();
    let st = Scratch::new("bench-state");
    let mounts: Vec<PathBuf> = fss.iter().map(|f| f.mount_point.clone()).collect();
    let cfg = FreezeConfig {
        include: mounts.clone(),
        ..FreezeConfig::default()
    };
    let p = plan::plan_system(&cfg, &[]).expect("plan");
    assert_eq!(p.targets.len(), FILESYSTEMS);

    // Warm-up (not measured): allocate the files' blocks in the images once, so every
    // measurement overwrites the same blocks.
    support::dirty_all(&mounts, DIRTY_MB);
    support::settle();

    let mut q_window = Vec::new();
    let mut q_stall = Vec::new();
    let mut q_total = Vec::new();
    let mut b_window = Vec::new();
    let mut b_stall = Vec::new();
    for rep in 0..reps {
        // quiesce
        support::dirty_all(&mounts, DIRTY_MB);
        let probe = Probe::start(&mounts[0]);
        let lock = OpLock::acquire(&st.path).unwrap();
        let opts = FreezeOptions {
            operation_id: format!("bench-{rep}"),
            timeout: Duration::from_secs(60),
            state_dir: st.path.clone(),
        };
        let t = Instant::now();
        let frozen = freeze::freeze(&p, &lock, &opts).expect("freeze");
        let out = frozen.thaw();
        let total = t.elapsed();
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        assert!(out.guard_fired.is_none());
        let stall = probe.stop();
        drop(lock);
        println!(
            "rep {rep} quiesce : frozen window {:>6} ms   freeze()+thaw() total {:>6} ms   longest write stall {:>6} ms",
            out.frozen_ms,
            total.as_millis(),
            stall.as_millis()
        );
        q_window.push(out.frozen_ms as f64);
        q_total.push(total.as_millis() as f64);
        q_stall.push(stall.as_millis() as f64);
        support::settle();

        // baseline
        support::dirty_all(&mounts, DIRTY_MB);
        let probe = Probe::start(&mounts[0]);
        let t = Instant::now();
        for m in &mounts {
            support::sh("fsfreeze", &["-f", m.to_str().unwrap()]);
        }
        for m in &mounts {
            support::sh("fsfreeze", &["-u", m.to_str().unwrap()]);
        }
        let window = t.elapsed();
        let stall = probe.stop();
        println!(
            "rep {rep} baseline: frozen window {:>6} ms                                   longest write stall {:>6} ms",
            window.as_millis(),
            stall.as_millis()
        );
        b_window.push(window.as_millis() as f64);
        b_stall.push(stall.as_millis() as f64);
        support::settle();
    }
    let (qw, bw) = (
        support::median(&mut q_window),
        support::median(&mut b_window),
    );
    let (qs, bs) = (support::median(&mut q_stall), support::median(&mut b_stall));
    println!();
    println!("{FILESYSTEMS} x ext4 ({FS_MB} MiB loop), {DIRTY_MB} MB unflushed writes each, {reps} repetitions, medians:");
    println!(
        "  frozen window : quiesce {qw:.0} ms (freeze()+thaw() {:.0} ms)  vs  sequential fsfreeze {bw:.0} ms  -> {:.1}x shorter",
        support::median(&mut q_total),
        bw / qw.max(1.0)
    );
    println!(
        "  write stall   : quiesce {qs:.0} ms  vs  sequential fsfreeze {bs:.0} ms  -> {:.1}x shorter",
        bs / qs.max(1.0)
    );
    for f in &fss {
        let _ = std::fs::remove_file(f.path("dirty.bin"));
        let _ = std::fs::remove_file(f.path("probe"));
    }
}

/// Writes + fsyncs a small file every 1 ms; remembers the longest single write+fsync.
struct Probe {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Duration>,
}

impl Probe {
    fn start(dir: &Path) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let path = dir.join("probe");
        let handle = std::thread::spawn(move || {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(false)
                .open(&path)
                .unwrap();
            let mut worst = Duration::ZERO;
            let buf = [0x42u8; 512];
            let mut n: u64 = 0;
            while !s.load(Ordering::Relaxed) {
                let t = Instant::now();
                use std::os::unix::fs::FileExt;
                f.write_all_at(&buf, (n % 64) * 512).unwrap();
                f.sync_data().unwrap();
                worst = worst.max(t.elapsed());
                n += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            worst
        });
        // Let it reach its steady state before the measurement starts.
        std::thread::sleep(Duration::from_millis(100));
        Probe { stop, handle }
    }

    fn stop(self) -> Duration {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}
