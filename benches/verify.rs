//! Time to verify a ~1 GB PostgreSQL snapshot on btrfs with `quiesce verify` (writable
//! view, throwaway server with crash recovery, `pg_amcheck --all`, teardown), printed side
//! by side with the baseline: `pg_amcheck --all` alone on the live server (the check
//! without the view and the server start).
//!
//! Run (as root): `cargo bench --bench verify` (QUIESCE_BENCH_SCALE=N for pgbench scale,
//! default 68, about 1 GB).
#[path = "../tests/it/support/mod.rs"]
mod support;
use support::db;

use db::*;
use std::path::Path;
use std::process::Command;
use std::time::Instant;
use support::{sh, LoopFs, Scratch};

fn p(x: &Path) -> &str {
    x.to_str().unwrap()
}

fn main() {
    assert!(rustix::process::geteuid().is_root(), "run as root");
    let scale: u32 = std::env::var("QUIESCE_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(68);
    let pg = User::get("postgres");
    let open = OpenDir::new("bench-verify");
    let private = Scratch::new("bench-verify-priv");
    let vol = LoopFs::create(
        "btrfs",
        6144,
        &private.join("btrfs.img"),
        &open.path().join("vol"),
    );
    std::fs::set_permissions(
        &vol.mount_point,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let pgvol = vol.path("pg");
    sh("btrfs", &["-q", "subvolume", "create", p(&pgvol)]);
    let snaps = vol.path("snaps");
    std::fs::create_dir(&snaps).unwrap();
    let data = pgvol.join("data");
    pg_initdb(&pg, &data, None);
    let server = Postgres::start(
        &pg,
        &data,
        &open.path().join("sock"),
        &open.path().join("pg.log"),
    )
    .unwrap();
    let t = Instant::now();
    server.pgbench_init(scale);
    server.psql("postgres", "CHECKPOINT");
    let size = sh("du", &["-sm", p(&data)]);
    eprintln!(
        "pgbench -i -s {scale}: {:.1} s, data directory {} MB",
        t.elapsed().as_secs_f64(),
        size.split_whitespace().next().unwrap_or("?")
    );
    let config = private.file(
        "quiesce.toml",
        &format!(
            "[paths]\nstate_dir = {}\ncatalog = {}\n\n[freeze]\nenabled = false\n\n\
             [snapshot]\nprovider = \"btrfs\"\nsubvolumes = {}\ndirectory = {}\n\n\
             [verify]\ntimeout = \"30m\"\n\n[verify.postgres]\ndata = {}\n",
            toml_str(p(&private.join("state"))),
            toml_str(p(&private.join("catalog.db"))),
            toml_list(&[p(&pgvol)]),
            toml_str(p(&snaps)),
            toml_str(p(&data)),
        ),
        0o600,
    );
    let quiesce = |args: &[&str]| {
        let out = Command::new(support::quiesce_bin())
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (ok, out) = quiesce(&["snapshot", "--json"]);
    assert!(ok, "{out}");
    let mut verify = Vec::new();
    let mut baseline = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let (ok, out) = quiesce(&["verify", "--latest", "--json"]);
        verify.push(t.elapsed().as_secs_f64());
        assert!(ok, "{out}");
        let t = Instant::now();
        let (ok, out, err) = run(Command::new(pg_bin("pg_amcheck"))
            .arg("-h")
            .arg(&server.sock)
            .args(["-p", "5432", "-U", "postgres", "--all", "--install-missing"]));
        baseline.push(t.elapsed().as_secs_f64());
        assert!(ok, "{out}{err}");
    }
    verify.sort_by(f64::total_cmp);
    baseline.sort_by(f64::total_cmp);
    println!(
        "verify a {} MB PostgreSQL snapshot on btrfs: median {:.2} s (min {:.2}, max {:.2}); \
         baseline pg_amcheck --all on the live server: median {:.2} s; overhead of the view \
         and the throwaway server: {:.2} s",
        size.split_whitespace().next().unwrap_or("?"),
        verify[1],
        verify[0],
        verify[2],
        baseline[1],
        verify[1] - baseline[1]
    );
}
