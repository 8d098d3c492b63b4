//! How long the btrfs provider's `take()` costs, next to `btrfs subvolume snapshot -r` alone,
//! on the same subvolume of a loop btrfs this bench creates (and removes).
//!
//! Run (as root; needs losetup, mkfs.btrfs, btrfs-progs):
//!
//!     cargo bench --bench btrfs
//!     QUIESCE_BENCH_N=50 cargo bench --bench btrfs     # more samples
//!
//! Two states are measured, interleaved so drift hits both methods alike:
//! - clean: nothing unflushed in the subvolume;
//! - dirty: 1 MiB appended (not fsync'ed) before every snapshot, which the snapshot flushes.
//!
//! Then, if the `quiesce` binary can run a whole `quiesce snapshot` with provider btrfs,
//! freezing disabled and no hooks, that end-to-end time is measured too (the pipeline's own
//! overhead: config, lock, catalog, report).

#[path = "../tests/it/support/mod.rs"]
mod support;

use quiesce::config::BtrfsConfig;
use quiesce::snapshot::btrfs::BtrfsProvider;
use quiesce::snapshot::{Provider, SnapshotContext};
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::{sh, LoopFs, Scratch};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Stats {
    median: f64,
    min: f64,
    p90: f64,
    max: f64,
}

fn stats(samples: &[Duration]) -> Stats {
    let mut v: Vec<f64> = samples.iter().map(|d| ms(*d)).collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Stats {
        median,
        min: v[0],
        p90: v[(n * 9 / 10).min(n - 1)],
        max: v[n - 1],
    }
}

fn line(label: &str, s: &Stats) {
    println!(
        "  {label:<38} median {:7.2} ms   min {:7.2}   p90 {:7.2}   max {:7.2}",
        s.median, s.min, s.p90, s.max
    );
}

/// Append 1 MiB without fsync, so the next snapshot has data to flush.
fn dirty(file: &Path) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .unwrap();
    f.write_all(&vec![b'x'; 1 << 20]).unwrap();
}

fn main() {
    let n: usize = std::env::var("QUIESCE_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let fs = LoopFs::new("btrfs", 1024);
    let data = fs.path("data");
    sh(
        "btrfs",
        &["-q", "subvolume", "create", data.to_str().unwrap()],
    );
    for i in 0..2000 {
        std::fs::write(
            data.join(format!("f{i:04}")),
            format!("file {i}\n").repeat(20),
        )
        .unwrap();
    }
    std::fs::write(data.join("big"), vec![7u8; 32 << 20]).unwrap();
    let snaps = fs.path("snaps");
    std::fs::create_dir(&snaps).unwrap();
    sh("sync", &[]);

    let mut provider = BtrfsProvider::new(BtrfsConfig {
        subvolumes: vec![data.clone()],
        directory: snaps.clone(),
        keep_last: None,
        max_age: None,
    });
    let mut cli_no = 0;
    let mut cli = |fs_dirty: bool| {
        if fs_dirty {
            dirty(&data.join("log"));
        }
        cli_no += 1;
        let dest = snaps.join(format!("cli-{cli_no}"));
        let t = Instant::now();
        let st = Command::new("btrfs")
            .args(["-q", "subvolume", "snapshot", "-r"])
            .arg(&data)
            .arg(&dest)
            .status()
            .unwrap();
        let d = t.elapsed();
        assert!(st.success());
        d
    };
    let mut op_no = 0;
    let mut take = |fs_dirty: bool| {
        if fs_dirty {
            dirty(&data.join("log"));
        }
        op_no += 1;
        let op = format!("20261126T213000Z-{op_no:08x}");
        let ctx = SnapshotContext {
            operation_id: &op,
            frozen: &[],
            timeout: Duration::from_secs(120),
        };
        let t = Instant::now();
        let refs = provider.take(&ctx).unwrap();
        let d = t.elapsed();
        assert_eq!(refs.len(), 1);
        d
    };

    println!(
        "btrfs snapshot of one subvolume (2000 small files + 32 MiB), loop btrfs, {n} samples each"
    );
    // Warm-up, not measured.
    take(false);
    cli(false);
    for fs_dirty in [false, true] {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for i in 0..n {
            // Alternate which goes first.
            if i % 2 == 0 {
                a.push(take(fs_dirty));
                b.push(cli(fs_dirty));
            } else {
                b.push(cli(fs_dirty));
                a.push(take(fs_dirty));
            }
        }
        let (sa, sb) = (stats(&a), stats(&b));
        println!(
            "{}:",
            if fs_dirty {
                "dirty (1 MiB unflushed before each)"
            } else {
                "clean"
            }
        );
        line("BtrfsProvider::take (ioctl)", &sa);
        line("btrfs subvolume snapshot -r (process)", &sb);
        println!(
            "  difference of medians: take - cli = {:+.2} ms ({:.2}x)",
            sa.median - sb.median,
            sa.median / sb.median
        );
    }

    pipeline(&fs, &data, n);
}

/// Time `quiesce snapshot --config X --json` end to end, if the binary can run it.
fn pipeline(fs: &LoopFs, data: &Path, n: usize) {
    let scratch = Scratch::new("bench-btrfs-pipeline");
    let snaps = fs.path("pipeline-snaps");
    std::fs::create_dir(&snaps).unwrap();
    let cfg = scratch.file(
        "quiesce.toml",
        &format!(
            "[paths]\nstate_dir = {:?}\ncatalog = {:?}\n\n[freeze]\nenabled = false\n\n\
             [snapshot]\nprovider = \"btrfs\"\nsubvolumes = [{:?}]\ndirectory = {:?}\n",
            scratch.join("state").display().to_string(),
            scratch.join("catalog.db").display().to_string(),
            data.display().to_string(),
            snaps.display().to_string(),
        ),
        0o600,
    );
    std::fs::create_dir(scratch.join("state")).unwrap();
    let run = || {
        let t = Instant::now();
        let out = Command::new(support::quiesce_bin())
            .env("RUST_BACKTRACE", "0")
            .args(["snapshot", "--json", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        (t.elapsed(), out)
    };
    let (_, first) = run();
    let code = first.status.code();
    if !matches!(code, Some(0) | Some(3)) {
        let err = String::from_utf8_lossy(&first.stderr);
        let why: Vec<&str> = err
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(2)
            .collect();
        println!(
            "quiesce snapshot (provider btrfs, no freeze, no hooks): skipped, exit {code:?}: {}",
            why.join(" | ")
        );
        return;
    }
    let mut samples = Vec::new();
    for _ in 0..n {
        let (d, out) = run();
        assert!(matches!(out.status.code(), Some(0) | Some(3)), "{out:?}");
        samples.push(d);
    }
    let made = std::fs::read_dir(&snaps).unwrap().count();
    println!("quiesce snapshot --config X (provider btrfs, freeze disabled, no hooks), {n} runs:");
    line("whole process, end to end", &stats(&samples));
    let report: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap_or_default();
    println!(
        "  first run: status {}, consistency {}, snapshot_ms {}",
        report["status"], report["consistency"], report["timings"]["snapshot_ms"]
    );
    println!("  snapshots in directory afterwards: {made}");
}
