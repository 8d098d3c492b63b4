//! Consistency groups with a real 3-node etcd cluster on loopback and members as separate
//! `quiesce serve` processes, each with its own state directory, loop filesystem, catalog
//! and (in the proof of the cut) its own snapshot provider.

use crate::support;
use crate::support::etcd;

use etcd::EtcdCluster;
use quiesce::server::client::call;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{quiesce_bin, LoopFs, Scratch, ServeProcess};

/// One member: its own scratch (state, catalog, socket, config), filesystem and server.
struct Member {
    name: String,
    server: Option<ServeProcess>,
    fs: LoopFs,
    _dir: Scratch,
    socket: PathBuf,
    config: PathBuf,
    catalog: PathBuf,
}

/// The control directory shared by the writer and every member's hooks (not frozen). The
/// pre hook takes 400 ms more while `ctl/slow-pre-NAME` exists.
fn hooks(ctl: &Scratch, name: &str) -> String {
    let ctl_dir = ctl.path.display().to_string();
    let pre = ctl.script(
        &format!("pre-{name}"),
        &format!(
            "#!/bin/sh\nif [ -e {ctl_dir}/slow-pre-{name} ]; then sleep 0.4; fi\n\
             touch {ctl_dir}/flag-{name}\n\
             while [ ! -e {ctl_dir}/ack ]; do sleep 0.002; done\n"
        ),
    );
    let post = ctl.script(
        &format!("post-{name}"),
        &format!("#!/bin/sh\nrm -f {ctl_dir}/flag-{name}\n"),
    );
    format!(
        "[[hook]]\nname = \"pause-writer\"\npre = [{:?}]\npost = [{:?}]\ntimeout = \"10s\"\n",
        pre.display().to_string(),
        post.display().to_string()
    )
}

fn start_member(name: &str, endpoints: &[String], extra: &str) -> Member {
    start_member_in(None, name, endpoints, &|_| extra.to_string())
}

/// This member's own snapshot provider: the `command` provider copying the member's own
/// filesystem image (while it is frozen) into `snaps`, and printing the copy's path as the
/// snapshot id. It fails, saying why, while `ctl/fail-NAME` exists, and hangs (past the
/// group deadline, until its own timeout) while `ctl/slow-NAME` exists.
fn own_provider(ctl: &Scratch, snaps: &Scratch, name: &str, fs: &LoopFs) -> String {
    let script = ctl.script(
        &format!("snapshot-{name}"),
        &format!(
            "#!/bin/sh\nset -e\n\
             if [ -e {ctl}/fail-{name} ]; then echo 'disk full on {name}' >&2; exit 1; fi\n\
             if [ -e {ctl}/slow-{name} ]; then touch {ctl}/stuck-{name}; sleep 30; fi\n\
             out={snaps}/\"$QUIESCE_OPERATION_ID\"-{name}.img\n\
             cp --sparse=always {img} \"$out\"\necho \"$out\"\n",
            ctl = ctl.path.display(),
            snaps = snaps.path.display(),
            img = fs.image.display(),
        ),
    );
    format!(
        "[snapshot]\nprovider = \"command\"\ncommand = [{:?}]\ntimeout = \"6s\"\n",
        script.display().to_string()
    )
}

/// Start a member, inside network namespace `netns` if given (a machine of its own);
/// `extra` is more configuration, given the member's filesystem.
fn start_member_in(
    netns: Option<&str>,
    name: &str,
    endpoints: &[String],
    extra: &dyn Fn(&LoopFs) -> String,
) -> Member {
    let dir = Scratch::new(&format!("member-{name}"));
    let fs = LoopFs::new("ext4", 16);
    let extra = extra(&fs);
    let socket = dir.join("quiesce.sock");
    let catalog = dir.join("catalog.db");
    let eps: Vec<String> = endpoints.iter().map(|e| format!("{e:?}")).collect();
    let text = format!(
        "[paths]\nstate_dir = {:?}\ncatalog = {:?}\n[freeze]\ninclude = [{:?}]\ntimeout = \"60s\"\n\
         [server]\nsocket = {:?}\n[group]\nname = \"grp\"\nmember = \"{name}\"\n\
         endpoints = [{}]\nlease_ttl = \"2s\"\npoll = \"10ms\"\n{extra}",
        dir.join("state").display().to_string(),
        catalog.display().to_string(),
        fs.mount_point.display().to_string(),
        socket.display().to_string(),
        eps.join(", "),
    );
    let config = dir.file("quiesce.toml", &text, 0o600);
    let server = match netns {
        None => ServeProcess::start(&config, &socket),
        Some(ns) => {
            let child = Command::new("ip")
                .args(["netns", "exec", ns])
                .arg(quiesce_bin())
                .args(["serve", "--config", config.to_str().unwrap()])
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let start = Instant::now();
            while std::os::unix::net::UnixStream::connect(&socket).is_err() {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "member did not start"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            ServeProcess {
                child,
                socket: socket.clone(),
            }
        }
    };
    Member {
        name: name.into(),
        server: Some(server),
        fs,
        _dir: dir,
        socket,
        config,
        catalog,
    }
}

/// Wait until etcd lists `n` members of "grp".
fn wait_members(endpoints: &[String], n: usize) {
    let etcd = quiesce::group::etcd::Etcd::new(endpoints, Duration::from_secs(2));
    let start = Instant::now();
    while quiesce::group::coordinator::members(&etcd, "grp").map_or(0, |m| m.len()) != n {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "members did not join"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn coordinator(endpoints: &[String], id: &str, deadline: &str, command: &[&str]) -> Command {
    let mut c = Command::new(quiesce_bin());
    c.args([
        "group",
        "snapshot",
        "grp",
        "--endpoints",
        &endpoints.join(","),
        "--deadline",
        deadline,
        "--id",
        id,
        "--json",
        "--",
    ])
    .args(command);
    c
}

fn group_snapshot(endpoints: &[String], id: &str, deadline: &str, command: &[&str]) -> Value {
    let out = coordinator(endpoints, id, deadline, command)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "no report: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The balance stored in a copied image, read without mounting it.
fn balance_in_image(image: &Path) -> i64 {
    let out = Command::new("debugfs")
        .args(["-R", "cat /balance", image.to_str().unwrap()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| {
            panic!(
                "no balance in {}: {}",
                image.display(),
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

fn write_balance(fs: &LoopFs, v: i64) {
    use std::io::Write;
    let mut f = std::fs::File::create(fs.path("balance")).unwrap();
    write!(f, "{v}").unwrap();
    f.sync_all().unwrap();
}

/// The distributed writer: moves amounts between the members' filesystems (debit on one,
/// fsync, credit on another, fsync), pausing between transfers while any member's hook
/// asks it to (flag files), and saying so (the `ack` file).
fn writer(
    mounts: Vec<PathBuf>,
    ctl: PathBuf,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let read = |m: &PathBuf| -> i64 {
            std::fs::read_to_string(m.join("balance"))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        let write = |m: &PathBuf, v: i64| {
            use std::io::Write;
            let mut f = std::fs::File::create(m.join("balance")).unwrap();
            write!(f, "{v}").unwrap();
            f.sync_all().unwrap();
        };
        let flagged = || {
            std::fs::read_dir(&ctl).unwrap().any(|e| {
                e.unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("flag-")
            })
        };
        let ack = ctl.join("ack");
        let mut transfers = 0u64;
        let mut n = 0usize;
        while !stop.load(Ordering::SeqCst) {
            if flagged() {
                let _ = std::fs::write(&ack, "");
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            let _ = std::fs::remove_file(&ack);
            if flagged() {
                continue;
            }
            n += 1;
            let (a, b) = (n % mounts.len(), (n + 1) % mounts.len());
            let amount = (n % 7 + 1) as i64;
            write(&mounts[a], read(&mounts[a]) - amount);
            write(&mounts[b], read(&mounts[b]) + amount);
            transfers += 1;
        }
        transfers
    })
}

const TOTAL: i64 = 3000;

/// The snapshot a member's own provider took in a group operation (its image copy).
/// Every member's own timing (in its `done/` report) lies inside the coordinator's: it heard
/// the operation after it was written, prepared before all were ready, heard the release
/// no earlier than it was written, and finished before all were released (1 ms of slack:
/// the coordinator counts in milliseconds since its start, the members by the clock).
fn assert_member_timings_fit(report: &Value) {
    let at = |k: &str| report["started_at_ms"].as_u64().unwrap() + report[k].as_u64().unwrap();
    let (ready, written, released) = (
        at("all_ready_ms"),
        at("release_written_ms"),
        at("all_released_ms"),
    );
    for m in report["members"].as_array().unwrap() {
        let t = &m["report"]["group_timing"];
        let ms = |k: &str| {
            t[k].as_u64()
                .unwrap_or_else(|| panic!("no {k}: {report:#}"))
        };
        assert!(ms("heard_spec_at_ms") + 1 >= report["started_at_ms"].as_u64().unwrap());
        assert!(ms("heard_spec_at_ms") <= ms("prepared_at_ms"), "{t}");
        assert!(ms("prepared_at_ms") <= ready + 1, "{t} vs ready at {ready}");
        assert!(
            ms("heard_release_at_ms") + 1 >= written,
            "{t} vs written at {written}"
        );
        assert!(ms("heard_release_at_ms") <= ms("released_at_ms"), "{t}");
        assert!(
            ms("released_at_ms") <= released + 1,
            "{t} vs all at {released}"
        );
    }
}

fn own_snapshot(report: &Value, member: &str) -> PathBuf {
    let m = report["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["member"] == member)
        .unwrap_or_else(|| panic!("{member} in {report:#}"));
    let id = m["snapshot"]["snapshots"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{member} took no snapshot: {report:#}"));
    // The member's own report lists the same snapshot.
    assert_eq!(m["report"]["snapshots"][0]["id"], id, "{report:#}");
    PathBuf::from(id)
}

/// One snapshot per member through its own `quiesce serve` (prepare, the provider's
/// snapshot, release), one member after the other: no group, no barrier.
fn control_snapshot(m: &Member, id: &str) -> PathBuf {
    let post = |path: String| {
        let (st, body) = call(
            &m.socket,
            "POST",
            &path,
            Some(&serde_json::json!({ "deadline": "20s" })),
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(st, 200, "{path}: {body:#}");
        body
    };
    post(format!("/v1/operations/{id}/prepare"));
    let taken = post(format!("/v1/operations/{id}/snapshot"));
    post(format!("/v1/operations/{id}/release"));
    PathBuf::from(taken["snapshots"][0]["id"].as_str().unwrap())
}

#[test]
fn group_cut_keeps_the_total_and_the_control_breaks_it() {
    support::require_root!("members freeze loop filesystems and read root-owned key files");
    let cluster = EtcdCluster::start(3);
    let ctl = Scratch::new("group-ctl");
    let snaps = Scratch::new("group-snaps");
    let names = ["m0", "m1", "m2"];
    // Every member pauses the writer in its pre hook and snapshots its own filesystem with
    // its own provider.
    let members: Vec<Member> = names
        .iter()
        .map(|n| {
            start_member_in(None, n, &cluster.endpoints, &|fs| {
                hooks(&ctl, n) + &own_provider(&ctl, &snaps, n, fs)
            })
        })
        .collect();
    for m in &members {
        write_balance(&m.fs, TOTAL / 3);
    }
    wait_members(&cluster.endpoints, 3);
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(
        members.iter().map(|m| m.fs.mount_point.clone()).collect(),
        ctl.path.clone(),
        Arc::clone(&stop),
    );
    std::thread::sleep(Duration::from_millis(200));

    let mut intact = 0;
    let mut ready_ms = Vec::new();
    for n in 0..20 {
        let id = format!("cut-{n}");
        // No group-level command: the snapshot step is every member's own provider.
        let report = group_snapshot(&cluster.endpoints, &id, "20s", &[]);
        assert_eq!(report["status"], "succeeded", "{report:#}");
        assert_eq!(report["consistency"], "application", "{report:#}");
        for m in report["members"].as_array().unwrap() {
            assert_eq!(m["ready"], "frozen", "{report:#}");
            assert_eq!(m["report"]["consistency"], "application", "{report:#}");
        }
        assert_eq!(report["catalogs"], serde_json::json!(names), "{report:#}");
        ready_ms.push(report["all_ready_ms"].as_u64().unwrap());
        assert_member_timings_fit(&report);
        let images: Vec<PathBuf> = names.iter().map(|n| own_snapshot(&report, n)).collect();
        let total: i64 = images.iter().map(|i| balance_in_image(i)).sum();
        if total == TOTAL {
            intact += 1;
        }
        for i in images {
            std::fs::remove_file(i).unwrap();
        }
        std::thread::sleep(Duration::from_millis(30));
    }

    // Control: the same members and providers, each snapshotted on its own, one after the
    // other.
    let mut broken = 0;
    for n in 0..20 {
        let mut total = 0;
        for (i, m) in members.iter().enumerate() {
            let img = control_snapshot(m, &format!("ctl-{n}-{i}"));
            total += balance_in_image(&img);
            std::fs::remove_file(&img).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        if total != TOTAL {
            broken += 1;
        }
    }

    // A member whose own provider fails: the group fails and its report names the member;
    // the others still took theirs.
    std::fs::write(ctl.join("fail-m1"), "").unwrap();
    let report = group_snapshot(&cluster.endpoints, "cut-fail", "20s", &[]);
    std::fs::remove_file(ctl.join("fail-m1")).unwrap();
    assert_eq!(report["status"], "failed", "{report:#}");
    let errors = report["errors"].to_string();
    assert!(
        errors.contains("member m1's own snapshot failed"),
        "{errors}"
    );
    assert!(errors.contains("disk full on m1"), "{errors}");
    assert!(!errors.contains("m0") && !errors.contains("m2"), "{errors}");
    for n in ["m0", "m2"] {
        std::fs::remove_file(own_snapshot(&report, n)).unwrap();
    }
    // The writer keeps running (the members' pre hooks wait for it to pause).
    stuck_provider_is_cut_off_by_the_deadline(&cluster.endpoints, &members, &ctl);
    stop.store(true, Ordering::SeqCst);
    let transfers = w.join().unwrap();

    let live: i64 = members
        .iter()
        .map(|m| {
            std::fs::read_to_string(m.fs.path("balance"))
                .unwrap()
                .trim()
                .parse::<i64>()
                .unwrap()
        })
        .sum();
    ready_ms.sort();
    eprintln!(
        "group cut (own providers): {intact}/20 intact; control: {broken}/20 broken; \
         {transfers} transfers; all ready median {} ms",
        ready_ms[10]
    );
    assert_eq!(live, TOTAL);
    assert_eq!(intact, 20, "every group snapshot keeps the total");
    assert!(
        broken > 0,
        "per-member snapshots without the barrier break the total"
    );
    assert_catalogs_hold_the_group_reports(&cluster.endpoints, &members);
    drop(members);
}

/// A member whose own provider hangs: the coordinator stops waiting at the release time and
/// aborts, the others are released, the stuck member's filesystem is thawed by its guard at
/// the group's deadline (not at its own freeze start plus the time that was left, which
/// would be late by its pre hooks' 400 ms), and the group report names it.
fn stuck_provider_is_cut_off_by_the_deadline(
    endpoints: &[String],
    members: &[Member],
    ctl: &Scratch,
) {
    std::fs::write(ctl.join("slow-m2"), "").unwrap();
    std::fs::write(ctl.join("slow-pre-m2"), "").unwrap();
    let started = Instant::now();
    let mut coord = coordinator(endpoints, "cut-stuck", "4s", &[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    while !ctl.join("stuck-m2").exists() {
        if started.elapsed() > Duration::from_secs(4) || coord.try_wait().unwrap().is_some() {
            let _ = coord.kill();
            let out = coord.wait_with_output().unwrap();
            panic!(
                "m2's provider never ran: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::fs::remove_file(ctl.join("slow-m2")).unwrap();
    std::fs::remove_file(ctl.join("slow-pre-m2")).unwrap();
    assert!(
        frozen_now(&members[2].fs),
        "m2 frozen while its provider runs"
    );
    let etcd = quiesce::group::etcd::Etcd::new(endpoints, Duration::from_secs(2));
    let spec: quiesce::group::OpSpec = serde_json::from_str(
        &etcd
            .get("/quiesce/groups/grp/specs/cut-stuck")
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    let mut probe = support::WriteProbe::start(&members[2].fs.mount_point);
    assert!(
        probe.finished_within(Duration::from_secs(8)).is_some(),
        "m2 never thawed"
    );
    let late_ms = quiesce::group::now_ms() as i64 - spec.deadline_ms as i64;
    eprintln!("stuck provider: m2 writable {late_ms} ms after the deadline (negative: before)");
    // The guard thaws at the group's absolute deadline; what is left is the guard's own
    // thaw and the probe's 5 ms polling (24-64 ms measured here, the more on a busy
    // machine). Without the absolute deadline m2 is late by its pre hooks' 400 ms at least.
    assert!(
        late_ms < 250,
        "m2 thawed by the deadline: {late_ms} ms after it"
    );
    for m in &members[..2] {
        assert!(
            thawed_within(&m.fs, Duration::from_secs(1)),
            "{} released",
            m.name
        );
    }
    let out = coord.wait_with_output().unwrap();
    let took = started.elapsed();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["status"], "failed", "{report:#}");
    let errors = report["errors"].to_string();
    assert!(
        errors.contains("member m2 did not report its own snapshot before the deadline"),
        "{errors}"
    );
    assert!(took < Duration::from_secs(4 + 3 + 3 + 1), "{took:?}");
    let _ = std::fs::remove_file(ctl.join("stuck-m2"));
    for n in ["m0", "m1"] {
        std::fs::remove_file(own_snapshot(&report, n)).unwrap();
    }
}

/// Every member's catalog holds the group reports; `quiesce history` on a member shows its
/// run with the group's outcome, and `quiesce group history` (from etcd) says whose
/// catalogs hold each report.
fn assert_catalogs_hold_the_group_reports(endpoints: &[String], members: &[Member]) {
    for (i, m) in members.iter().enumerate() {
        let catalog = quiesce::catalog::Catalog::open_read_only(&m.catalog)
            .unwrap()
            .unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        // The failed operation's report is recorded once the coordinator wrote it.
        while catalog
            .group_report_json("grp", "cut-fail")
            .unwrap()
            .is_none()
        {
            assert!(Instant::now() < until, "{}: no cut-fail report", m.name);
            std::thread::sleep(Duration::from_millis(50));
        }
        for (op, status) in [("cut-19", "succeeded"), ("cut-fail", "failed")] {
            let text = catalog.group_report_json("grp", op).unwrap().unwrap();
            let held: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(held["operation_id"], op, "{}", m.name);
            assert_eq!(held["status"], status, "{}: {held:#}", m.name);
            assert_eq!(held["members"].as_array().unwrap().len(), 3);
        }
        let out = Command::new(quiesce_bin())
            .args(["--config", m.config.to_str().unwrap(), "history", "--json"])
            .output()
            .unwrap();
        let runs: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{}: {}", m.name, String::from_utf8_lossy(&out.stderr)));
        let run = |id: &str| {
            runs.as_array()
                .unwrap()
                .iter()
                .find(|r| r["operation_id"] == id)
                .unwrap_or_else(|| panic!("{}: no run {id}: {runs:#}", m.name))
                .clone()
        };
        let cut = run("cut-19");
        assert_eq!(cut["group"]["group"], "grp", "{cut:#}");
        assert_eq!(cut["group"]["status"], "succeeded", "{cut:#}");
        assert!(cut["caller"].as_str().unwrap().starts_with("group:grp@"));
        assert_eq!(run("cut-fail")["group"]["status"], "failed");
        // A run outside any group has no group.
        let alone = run(&format!("ctl-0-{i}"));
        assert!(alone.get("group").is_none(), "{alone:#}");
        let table = Command::new(quiesce_bin())
            .args(["--config", m.config.to_str().unwrap(), "history"])
            .output()
            .unwrap();
        let table = String::from_utf8_lossy(&table.stdout);
        assert!(table.lines().next().unwrap().contains("GROUP"), "{table}");
        assert!(
            table
                .lines()
                .any(|l| l.contains("cut-19") && l.contains("grp: succeeded (application)")),
            "{table}"
        );
    }
    let out = Command::new(quiesce_bin())
        .args([
            "group",
            "history",
            "grp",
            "--endpoints",
            &endpoints.join(","),
            "--limit",
            "3",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("operation cut-stuck: failed"), "{text}");
    assert!(text.contains("operation cut-fail: failed"), "{text}");
    assert!(
        text.contains("operation cut-19: succeeded (application)"),
        "{text}"
    );
    assert!(text.contains("in the catalogs of: m0, m1, m2"), "{text}");
    let history = quiesce::group::coordinator::history(
        &quiesce::group::etcd::Etcd::new(endpoints, Duration::from_secs(2)),
        "grp",
    )
    .unwrap();
    assert_eq!(history.len(), 22);
    assert!(history.iter().all(|r| r.catalogs == ["m0", "m1", "m2"]));
}

/// Is the filesystem writable within `limit` (probing without thawing it)?
fn thawed_within(fs: &LoopFs, limit: Duration) -> bool {
    support::WriteProbe::start(&fs.mount_point)
        .finished_within(limit)
        .is_some()
}

fn frozen_now(fs: &LoopFs) -> bool {
    support::WriteProbe::start(&fs.mount_point)
        .finished_within(Duration::from_millis(200))
        .is_none()
}

#[test]
fn coordinator_killed_while_frozen_every_member_thaws_by_the_deadline() {
    support::require_root!("members freeze loop filesystems and read root-owned key files");
    let cluster = EtcdCluster::start(3);
    let members: Vec<Member> = ["k0", "k1", "k2"]
        .iter()
        .map(|n| start_member(n, &cluster.endpoints, ""))
        .collect();
    wait_members(&cluster.endpoints, 3);
    let ctl = Scratch::new("group-kill");
    let marker = ctl.join("all-frozen");
    let pidfile = ctl.join("step.pid");
    let step = ctl.script(
        "step",
        &format!(
            "#!/bin/sh\necho $$ > {}\ntouch {}\nexec sleep 30\n",
            pidfile.display(),
            marker.display()
        ),
    );
    let started = Instant::now();
    let mut coord = coordinator(
        &cluster.endpoints,
        "killed",
        "10s",
        &[step.to_str().unwrap()],
    )
    .stdout(std::process::Stdio::null())
    .spawn()
    .unwrap();
    while !marker.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never all frozen"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    for m in &members {
        assert!(
            frozen_now(&m.fs),
            "{} frozen during the snapshot step",
            m.name
        );
    }
    coord.kill().unwrap();
    coord.wait().unwrap();
    if let Ok(pid) = std::fs::read_to_string(&pidfile) {
        let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
    }
    // The coordinator's lease (2 s here is the members' setting; the coordinator uses the
    // default 3 s) expires well before the 10 s deadline: members release on their own.
    for m in &members {
        let left = Duration::from_secs(11).saturating_sub(started.elapsed());
        assert!(
            thawed_within(&m.fs, left),
            "{} thawed by the deadline",
            m.name
        );
    }
    let thawed_after = started.elapsed();
    eprintln!("coordinator killed: every member thawed {thawed_after:?} after the start");
    assert!(thawed_after < Duration::from_secs(10));
    // Each member finished the operation on its own (thaw first, then post hooks).
    for m in &members {
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let (_, status) = call(
                &m.socket,
                "GET",
                "/v1/operations/killed",
                None,
                Duration::from_secs(5),
            )
            .unwrap();
            if status["report"].is_object() {
                // Nobody took a snapshot: the member's own report must not claim one.
                let report = &status["report"];
                assert_eq!(report["status"], "failed", "{}: {report:#}", m.name);
                assert_eq!(report["consistency"], "none", "{}: {report:#}", m.name);
                let errors = report["errors"].to_string();
                assert!(
                    errors.contains("Interrupted")
                        && errors.contains("the coordinator disappeared"),
                    "{}: {errors}",
                    m.name
                );
                break;
            }
            assert!(
                Instant::now() < until,
                "{} never finished: {status:#}",
                m.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Which node of the cluster is the raft leader (by its index in `endpoints`).
fn leader(endpoints: &[String]) -> usize {
    let status = |ep: &String| {
        quiesce::group::etcd::Etcd::new(std::slice::from_ref(ep), Duration::from_secs(2))
            .call("/v3/maintenance/status", &serde_json::json!({}))
            .unwrap()
    };
    let leader = status(&endpoints[0])["leader"]
        .as_str()
        .unwrap()
        .to_string();
    endpoints
        .iter()
        .position(|ep| status(ep)["header"]["member_id"] == leader.as_str())
        .expect("a leader among the nodes")
}

#[test]
fn dead_member_fails_the_group_by_name_and_one_etcd_node_down_still_completes() {
    support::require_root!("members freeze loop filesystems and read root-owned key files");
    let mut cluster = EtcdCluster::start(3);
    let mut members: Vec<Member> = ["d0", "d1", "d2"]
        .iter()
        .map(|n| start_member(n, &cluster.endpoints, ""))
        .collect();
    wait_members(&cluster.endpoints, 3);

    // One of three etcd nodes stopped, the leader: the operation, started at once, still
    // completes (the calls made during the election are answered 503 and tried again).
    cluster.stop(leader(&cluster.endpoints));
    let report = group_snapshot(&cluster.endpoints, "one-node-down", "15s", &["true"]);
    assert_eq!(report["status"], "succeeded", "{report:#}");

    // A member busy with a host's own operation refuses the group's (one operation at a
    // time): the group fails at once, naming it and why; the others are released.
    let (st, _) = call(
        &members[0].socket,
        "POST",
        "/v1/operations/host-op/prepare",
        Some(&serde_json::json!({ "deadline": "20s" })),
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(st, 200);
    let started = Instant::now();
    let report = group_snapshot(&cluster.endpoints, "member-busy", "15s", &["true"]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "no wait for the deadline"
    );
    assert_eq!(report["status"], "failed", "{report:#}");
    assert!(
        report["errors"]
            .to_string()
            .contains("member d0 failed to prepare"),
        "{report:#}"
    );
    let busy = &report["members"][0];
    assert_eq!(busy["ready"], "failed", "{report:#}");
    assert_eq!(
        busy["report"]["errors"][0]["code"], "OperationInProgress",
        "{report:#}"
    );
    assert!(
        busy["report"]["errors"].to_string().contains("host-op"),
        "{report:#}"
    );
    for m in &members[1..] {
        assert!(
            thawed_within(&m.fs, Duration::from_secs(1)),
            "{} released",
            m.name
        );
    }
    call(
        &members[0].socket,
        "POST",
        "/v1/operations/host-op/release",
        None,
        Duration::from_secs(30),
    )
    .unwrap();

    // A member killed -9: the others are released, the group is failed and names it.
    let mut dead = members[1].server.take().unwrap();
    dead.child.kill().unwrap();
    dead.child.wait().unwrap();
    let started = Instant::now();
    let report = group_snapshot(&cluster.endpoints, "member-dead", "5s", &["true"]);
    let took = started.elapsed();
    assert_eq!(report["status"], "failed", "{report:#}");
    let errors = report["errors"].to_string();
    assert!(
        errors.contains("member d1 never reported ready"),
        "{errors}"
    );
    assert!(
        took < Duration::from_secs(5 + 3 + 2),
        "never waited past the deadline: {took:?}"
    );
    for (i, m) in members.iter().enumerate() {
        if i == 1 {
            continue;
        }
        assert!(
            thawed_within(&m.fs, Duration::from_secs(1)),
            "{} released",
            m.name
        );
        let mine = report["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["member"] == m.name.as_str())
            .unwrap();
        assert_eq!(mine["ready"], "frozen", "{report:#}");
        // The coordinator aborts at the release time, when the members also release by
        // themselves: either is heard first.
        let reason = mine["report"]["group_release_reason"].as_str().unwrap();
        assert!(
            [
                "the coordinator aborted the operation",
                "the deadline passed"
            ]
            .contains(&reason),
            "{report:#}"
        );
        // Aborted before any snapshot: the member's own report claims none.
        assert_eq!(mine["report"]["consistency"], "none", "{report:#}");
        // Recorded as driven by the group, with the coordinator's name.
        assert!(
            mine["report"]["caller"].to_string().contains("grp"),
            "{report:#}"
        );
    }
    members.clear();
}

/// A network namespace of our own (deleted on drop) and the processes relaying its
/// loopback to the etcd cluster (killed by pid on drop).
struct NetNs {
    name: String,
    relays: Vec<std::process::Child>,
}

impl NetNs {
    /// A namespace whose loopback ports of `endpoints` reach the real etcd nodes: inside,
    /// `socat` listens on the same loopback port and relays to a unix socket that a relay
    /// outside connects to the node. The namespace's only link is its loopback.
    fn new(endpoints: &[String], dir: &Scratch) -> NetNs {
        let name = format!("qgroup-{}", std::process::id());
        // One left by an earlier run of this pid, if any (none is the usual case: quiet).
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        support::sh("ip", &["netns", "add", &name]);
        let mut ns = NetNs {
            name: name.clone(),
            relays: Vec::new(),
        };
        support::sh(
            "ip",
            &["netns", "exec", &name, "ip", "link", "set", "lo", "up"],
        );
        for (i, ep) in endpoints.iter().enumerate() {
            let sock = dir.join(&format!("etcd-{i}.sock"));
            let port = ep.rsplit(':').next().unwrap();
            ns.relays.push(
                Command::new("socat")
                    .arg(format!("UNIX-LISTEN:{},fork", sock.display()))
                    .arg(format!("TCP:{ep}"))
                    .spawn()
                    .unwrap(),
            );
            while !sock.exists() {
                std::thread::sleep(Duration::from_millis(5));
            }
            ns.relays.push(
                Command::new("ip")
                    .args(["netns", "exec", &name, "socat"])
                    .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr"))
                    .arg(format!("UNIX-CONNECT:{}", sock.display()))
                    .spawn()
                    .unwrap(),
            );
        }
        ns
    }

    /// Take the namespace's link down: the machine loses etcd.
    fn link_down(&self) {
        support::sh(
            "ip",
            &[
                "netns", "exec", &self.name, "ip", "link", "set", "lo", "down",
            ],
        );
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        for r in &mut self.relays {
            let _ = r.kill();
            let _ = r.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[test]
fn member_losing_its_etcd_link_releases_by_the_deadline() {
    support::require_root!("members freeze loop filesystems and read root-owned key files");
    let cluster = EtcdCluster::start(3);
    let dir = Scratch::new("group-netns");
    let netns = NetNs::new(&cluster.endpoints, &dir);
    let members = [
        start_member("l0", &cluster.endpoints, ""),
        start_member("l1", &cluster.endpoints, ""),
        start_member_in(Some(&netns.name), "l2", &cluster.endpoints, &|_| {
            String::new()
        }),
    ];
    wait_members(&cluster.endpoints, 3);
    let marker = dir.join("all-frozen");
    let step = dir.script(
        "step",
        &format!("#!/bin/sh\ntouch {}\nsleep 1\n", marker.display()),
    );
    let started = Instant::now();
    let coord = coordinator(
        &cluster.endpoints,
        "link-lost",
        "6s",
        &[step.to_str().unwrap()],
    )
    .stdout(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    while !marker.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "never all frozen"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let etcd = quiesce::group::etcd::Etcd::new(&cluster.endpoints, Duration::from_secs(2));
    let spec: quiesce::group::OpSpec = serde_json::from_str(
        &etcd
            .get("/quiesce/groups/grp/specs/link-lost")
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    netns.link_down();
    assert!(
        frozen_now(&members[2].fs),
        "l2 still frozen after losing etcd"
    );
    // The others are released by the coordinator; l2 by itself at the deadline.
    for m in &members[..2] {
        assert!(
            thawed_within(&m.fs, Duration::from_secs(3)),
            "{} released",
            m.name
        );
    }
    // One write+fsync probe, blocked while l2 is frozen, finishes when it is thawed.
    let mut probe = support::WriteProbe::start(&members[2].fs.mount_point);
    assert!(
        probe.finished_within(Duration::from_secs(15)).is_some(),
        "l2 never thawed"
    );
    let thawed_at = quiesce::group::now_ms();
    let late_ms = thawed_at as i64 - spec.deadline_ms as i64;
    eprintln!("link lost: l2 writable again {late_ms} ms after the deadline (negative: before)");
    assert!(
        late_ms <= 0,
        "l2 thawed by the deadline: {late_ms} ms after it"
    );
    let out = coord.wait_with_output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["status"], "failed", "{report:#}");
    assert!(
        report["errors"]
            .to_string()
            .contains("member l2 did not report its release"),
        "{report:#}"
    );
}

/// `quiesce --config CONFIG group ...`: the settings (TLS, auth) come from the file.
fn group_cli(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(quiesce_bin())
        .arg("--config")
        .arg(config)
        .arg("group")
        .args(args)
        .output()
        .unwrap()
}

fn report_of(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "no report: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A configuration with only a `[group]` section (a coordinator on an admin box).
fn admin_config(dir: &Scratch, name: &str, endpoints: &[String], extra: &str) -> PathBuf {
    let eps: Vec<String> = endpoints.iter().map(|e| format!("{e:?}")).collect();
    dir.file(
        name,
        &format!(
            "[group]\nname = \"grp\"\nmember = \"admin\"\nendpoints = [{}]\n{extra}",
            eps.join(", ")
        ),
        0o600,
    )
}

/// A TCP relay to `target` on a loopback port of its own, counting the connections it
/// accepts (its threads end with the test process).
fn counting_relay(target: &str) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use std::net::{Shutdown, TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (count, target) = (Arc::clone(&accepted), target.to_string());
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            let Ok(up) = TcpStream::connect(&target) else {
                continue;
            };
            let (mut c_in, mut up_out) = (client.try_clone().unwrap(), up.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c_in, &mut up_out);
                let _ = up_out.shutdown(Shutdown::Write);
            });
            let (mut up_in, mut c_out) = (up, client);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut up_in, &mut c_out);
                let _ = c_out.shutdown(Shutdown::Write);
            });
        }
    });
    (addr, accepted)
}

#[test]
fn etcd_calls_share_one_kept_alive_connection() {
    support::require_root!("members freeze loop filesystems and read root-owned key files");
    let cluster = EtcdCluster::start(1);
    let (relay, accepted) = counting_relay(&cluster.endpoints[0]);
    let etcd = quiesce::group::etcd::Etcd::new(&[relay], Duration::from_secs(2));
    let started = Instant::now();
    for i in 0..20 {
        let key = format!("/kept-alive/{i}");
        etcd.put(&key, "v", 0).unwrap();
        assert_eq!(etcd.get(&key).unwrap().as_deref(), Some("v"));
    }
    eprintln!("40 calls in {:?}", started.elapsed());
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "40 calls on one kept-alive connection"
    );
}

/// A copy opened while others keep writing (as members' ready answers do) hears the next
/// change at once: a watch opened from the revision of an earlier read would be caught up
/// only by etcd's background sync, every 100 ms.
#[test]
fn a_watch_opened_while_others_write_wakes_at_once() {
    use quiesce::group::etcd::{watch::Mirror, Etcd};
    let cluster = EtcdCluster::start(3);
    let etcd = Arc::new(Etcd::new(&cluster.endpoints, Duration::from_secs(2)));
    let stop = Arc::new(AtomicBool::new(false));
    let busy = {
        let (eps, stop) = (cluster.endpoints.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let other = Etcd::new(&eps, Duration::from_secs(2));
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                other.put("/busy/k", &i.to_string(), 0).unwrap();
                i += 1;
            }
        })
    };
    let writer = Etcd::new(&cluster.endpoints, Duration::from_secs(2));
    let mut slow = Vec::new();
    for i in 0..10 {
        let key = format!("/fresh/{i}");
        let mut m = Mirror::keys(&etcd, std::slice::from_ref(&key), Duration::from_secs(5));
        let t = Instant::now();
        writer.put(&key, "v", 0).unwrap();
        assert!(m.wait(t + Duration::from_secs(3)), "no wake for {key}");
        assert_eq!(m.get(&key), Some("v"));
        if t.elapsed() >= Duration::from_millis(40) {
            slow.push(t.elapsed());
        }
    }
    stop.store(true, Ordering::SeqCst);
    busy.join().unwrap();
    assert!(slow.len() <= 2, "woken late, after etcd's sync: {slow:?}");
}

#[test]
fn a_watch_wakes_at_once_and_survives_a_stopped_etcd_node() {
    support::require_root!("members freeze loop filesystems and read root-owned key files");
    use quiesce::group::etcd::{watch::Mirror, Etcd};
    let mut cluster = EtcdCluster::start(3);
    let etcd = Arc::new(Etcd::new(&cluster.endpoints, Duration::from_secs(2)));
    let writer = Etcd::new(&cluster.endpoints[1..], Duration::from_secs(2));
    writer.put("/w/before", "0", 0).unwrap();
    // A long poll: a wake within it can only come from the watch stream.
    let mut m = Mirror::prefixes(&etcd, &["/w/".to_string()], Duration::from_secs(5));
    assert_eq!(m.get("/w/before"), Some("0"));
    let until = Instant::now() + Duration::from_secs(5);
    while !m.is_live() {
        assert!(Instant::now() < until, "the watch never opened");
        m.wait(Instant::now() + Duration::from_millis(20));
    }
    let mut waits = Vec::new();
    for i in 0..5 {
        let t = Instant::now();
        writer.put(&format!("/w/k{i}"), &i.to_string(), 0).unwrap();
        assert!(m.wait(t + Duration::from_secs(3)), "no wake for k{i}");
        waits.push(t.elapsed());
        assert_eq!(m.get(&format!("/w/k{i}")), Some(i.to_string().as_str()));
    }
    eprintln!("watch wake after a put: {waits:?}");
    assert!(
        waits.iter().all(|w| *w < Duration::from_millis(500)),
        "woken by the stream, not a re-read: {waits:?}"
    );
    // A delete is seen too.
    writer
        .call(
            "/v3/kv/deleterange",
            &serde_json::json!({"key": "L3cvazA="}),
        )
        .unwrap();
    assert!(m.wait(Instant::now() + Duration::from_secs(3)));
    assert_eq!(m.get("/w/k0"), None);

    // The leader stops (the node the stream is on, when it is node 0): calls made during
    // the election still succeed, the stream reopens on another node, and nothing written
    // meanwhile is missed.
    let leader = cluster
        .endpoints
        .iter()
        .position(|ep| {
            let status = Etcd::new(std::slice::from_ref(ep), Duration::from_secs(2))
                .call("/v3/maintenance/status", &serde_json::json!({}))
                .unwrap();
            status["leader"] == status["header"]["member_id"]
        })
        .unwrap();
    cluster.stop(leader);
    let others: Vec<String> = (0..3)
        .filter(|i| *i != leader)
        .map(|i| cluster.endpoints[i].clone())
        .collect();
    let writer = Etcd::new(&others, Duration::from_secs(2));
    writer.put("/w/after-stop", "1", 0).unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while m.get("/w/after-stop") != Some("1") {
        assert!(
            Instant::now() < until,
            "the change after the node stopped was missed"
        );
        m.wait(until);
    }
    let until = Instant::now() + Duration::from_secs(10);
    while !m.is_live() {
        assert!(
            Instant::now() < until,
            "the watch never reopened on another node"
        );
        m.wait(Instant::now() + Duration::from_millis(50));
    }
    let t = Instant::now();
    writer.put("/w/k9", "9", 0).unwrap();
    assert!(m.wait(t + Duration::from_secs(3)));
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "reopened stream wakes: {:?}",
        t.elapsed()
    );
    assert_eq!(m.get("/w/k9"), Some("9"));
}

#[test]
fn over_tls_a_member_joins_and_a_group_snapshot_completes_and_bad_certs_are_refused_in_words() {
    support::require_root!("members freeze loop filesystems and read root-owned key files");
    let dir = Scratch::new("group-tls");
    let certs = etcd::Certs::make(&dir.path);
    let cluster = EtcdCluster::start_with(1, Some(&certs));
    assert!(cluster.endpoints[0].starts_with("https://"));
    let tls = format!(
        "ca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\n",
        certs.ca.display().to_string(),
        certs.client_cert.display().to_string(),
        certs.client_key.display().to_string()
    );
    let member = start_member("t0", &cluster.endpoints, &tls);
    let good = admin_config(&dir, "good.toml", &cluster.endpoints, &tls);
    wait_until_joined(&good, "t0");
    let report = group_snapshot_of_grp(&good, "tls-1");
    assert_eq!(report["status"], "succeeded", "{report:#}");
    assert_eq!(report["members"][0]["ready"], "frozen", "{report:#}");
    assert!(thawed_within(&member.fs, Duration::from_secs(1)));

    let cases = [
        (
            "wrong-ca.toml",
            format!(
                "ca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\n",
                certs.other_ca.display().to_string(),
                certs.client_cert.display().to_string(),
                certs.client_key.display().to_string()
            ),
            "etcd's certificate is not signed by the CA in `group.ca_file`",
        ),
        (
            "no-cert.toml",
            format!("ca_file = {:?}\n", certs.ca.display().to_string()),
            "etcd requires a client certificate: set `group.cert_file` and `group.key_file`",
        ),
        (
            "plain.toml",
            String::new(),
            "has https:// endpoints: set `group.ca_file`",
        ),
    ];
    for (name, extra, words) in cases {
        let config = admin_config(&dir, name, &cluster.endpoints, &extra);
        let out = group_cli(&config, &["snapshot", "grp", "--id", name, "--json"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: {stderr}");
        assert!(stderr.contains(words), "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // Watch streams work over TLS too (the member above may have fallen back to reading).
    let tls_client = quiesce::group::etcd::Etcd::new(&cluster.endpoints, Duration::from_secs(2))
        .with_tls(&certs.client_files())
        .unwrap();
    let mut m = quiesce::group::etcd::watch::Mirror::prefixes(
        &Arc::new(tls_client),
        &["/quiesce/groups/grp/".to_string()],
        Duration::from_secs(5),
    );
    let until = Instant::now() + Duration::from_secs(5);
    while !m.is_live() {
        assert!(Instant::now() < until, "no watch stream over TLS");
        m.wait(Instant::now() + Duration::from_millis(20));
    }
    // The plain-HTTP client against the TLS port is refused too, in words.
    let plain = quiesce::group::etcd::Etcd::new(
        &[cluster.endpoints[0].replace("https://", "")],
        Duration::from_secs(2),
    );
    let e = plain.get("/x").unwrap_err();
    assert!(
        e.contains("could not reach etcd") || e.contains("HTTP 400"),
        "{e}"
    );
}

/// `etcdctl` as etcd's root user.
fn etcdctl(endpoint: &str, user: Option<&str>, args: &[&str]) -> String {
    let login: Vec<&str> = user.map(|u| vec!["--user", u]).unwrap_or_default();
    etcdctl_with(endpoint, &login, args)
}

/// `etcdctl` with `flags` (a user, TLS files) before `args`.
fn etcdctl_with(endpoint: &str, flags: &[&str], args: &[&str]) -> String {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(endpoint)
        .args(["--dial-timeout=5s", "--command-timeout=10s"])
        .args(flags)
        .args(args)
        .output()
        .expect("etcdctl (apt-get install etcd-client)");
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// etcd's `root` (password `rootpw`) and the group user `quiesce` (password `s3cret`) whose
/// role reads and writes `/quiesce/groups/grp/` only; `flags` for etcdctl (TLS files).
/// Authentication is not turned on.
fn add_group_users(endpoint: &str, flags: &[&str]) {
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "quiesce-grp"],
        &[
            "role",
            "grant-permission",
            "quiesce-grp",
            "--prefix=true",
            "readwrite",
            "/quiesce/groups/grp/",
        ],
        &["user", "add", "quiesce:s3cret"],
        &["user", "grant-role", "quiesce", "quiesce-grp"],
    ] {
        etcdctl_with(endpoint, flags, args);
    }
}

/// Wait (up to 20 s) until `quiesce group members grp` with `config` lists `member`.
fn wait_until_joined(config: &Path, member: &str) {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let out = group_cli(config, &["members", "grp"]);
        if String::from_utf8_lossy(&out.stdout).contains(member) {
            return;
        }
        assert!(Instant::now() < until, "{member} never joined: {out:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `quiesce group snapshot grp --id ID --deadline 15s -- true` with `config`: its report.
fn group_snapshot_of_grp(config: &Path, id: &str) -> Value {
    report_of(&group_cli(
        config,
        &[
            "snapshot",
            "grp",
            "--id",
            id,
            "--deadline",
            "15s",
            "--json",
            "--",
            "true",
        ],
    ))
}

#[test]
fn with_etcd_auth_the_group_user_works_only_in_its_own_group() {
    support::require_root!("members freeze loop filesystems and read root-owned key files");
    let cluster = EtcdCluster::start(1);
    let ep = &cluster.endpoints[0];
    let root = Some("root:rootpw");
    add_group_users(ep, &[]);
    etcdctl(ep, None, &["put", "/quiesce/groups/other/secret", "x"]);
    etcdctl(ep, None, &["auth", "enable"]);

    let dir = Scratch::new("group-auth");
    let good_pw = dir.file("pw", "s3cret\n", 0o600);
    let bad_pw = dir.file("bad-pw", "guess\n", 0o600);
    let auth = |pw: &Path| {
        format!(
            "user = \"quiesce\"\npassword_file = {:?}\n",
            pw.display().to_string()
        )
    };
    let member = start_member("a0", &cluster.endpoints, &auth(&good_pw));
    let good = admin_config(&dir, "good.toml", &cluster.endpoints, &auth(&good_pw));
    wait_until_joined(&good, "a0");
    // The right password: a group snapshot completes.
    let report = group_snapshot_of_grp(&good, "auth-1");
    assert_eq!(report["status"], "succeeded", "{report:#}");

    // A wrong password, and no credentials at all: refused in words.
    for (name, extra, words) in [
        (
            "bad.toml",
            auth(&bad_pw),
            "refused user \"quiesce\": wrong user name or password",
        ),
        (
            "none.toml",
            String::new(),
            "it has authentication on; set `group.user` and `group.password_file`",
        ),
    ] {
        let config = admin_config(&dir, name, &cluster.endpoints, &extra);
        let out = group_cli(&config, &["members", "grp"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: {stderr}");
        assert!(stderr.contains(words), "{name}: {stderr}");
    }

    // The group user can neither read nor write another group's keys ...
    let user = quiesce::group::etcd::Etcd::new(&cluster.endpoints, Duration::from_secs(2))
        .with_credentials("quiesce".into(), "s3cret".into());
    user.authenticate().unwrap();
    for e in [
        user.range_prefix("/quiesce/groups/other/").unwrap_err(),
        user.put("/quiesce/groups/other/secret", "y", 0)
            .unwrap_err(),
    ] {
        assert!(
            e.contains("permission denied") && e.contains("\"quiesce\""),
            "{e}"
        );
    }
    // A watch: live on its own group's keys with its token; on another group's, refused
    // (never live, nothing read).
    let user = Arc::new(user);
    let watch = |prefix: &str| {
        quiesce::group::etcd::watch::Mirror::prefixes(
            &user,
            &[prefix.to_string()],
            Duration::from_secs(5),
        )
    };
    let (mut own, mut other) = (
        watch("/quiesce/groups/grp/"),
        watch("/quiesce/groups/other/"),
    );
    let until = Instant::now() + Duration::from_secs(5);
    while !own.is_live() {
        assert!(
            Instant::now() < until,
            "no watch stream with the group user's token"
        );
        own.wait(Instant::now() + Duration::from_millis(20));
    }
    other.wait(Instant::now() + Duration::from_secs(1));
    assert!(!other.is_live() && !other.is_known() && other.kvs().is_empty());
    let out = group_cli(&good, &["snapshot", "other", "--id", "x", "--json"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("permission denied"),
        "{out:?}"
    );
    assert_eq!(
        etcdctl(
            ep,
            root,
            &["get", "--print-value-only", "/quiesce/groups/other/secret"]
        )
        .trim(),
        "x"
    );
    // ... and the member does not act on an operation that is not its group's, even when it
    // is written under its group's prefix (by someone with more rights).
    let foreign = serde_json::json!({
        "group": "other", "operation_id": "foreign", "coordinator": "intruder",
        "deadline_ms": quiesce::group::now_ms() + 20_000, "members": ["a0"], "lease": 0,
    });
    etcdctl(
        ep,
        root,
        &[
            "put",
            "/quiesce/groups/grp/specs/foreign",
            &foreign.to_string(),
        ],
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !frozen_now(&member.fs),
        "a0 froze for another group's operation"
    );
    let keys = etcdctl(
        ep,
        root,
        &[
            "get",
            "--prefix",
            "--keys-only",
            "/quiesce/groups/grp/ops/foreign/",
        ],
    );
    assert!(
        keys.trim().is_empty(),
        "a0 answered another group's operation: {keys}"
    );
}

/// A TCP relay to `target` that can be cut: [`CutRelay::cut`] ends every connection through
/// it and refuses new ones until [`CutRelay::restore`] (a network that drops and comes back,
/// without touching etcd).
struct CutRelay {
    addr: String,
    blocked: Arc<AtomicBool>,
    open: Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl CutRelay {
    fn start(target: &str) -> CutRelay {
        use std::net::{Shutdown, TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let blocked = Arc::new(AtomicBool::new(false));
        let open = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (flag, conns, target) = (Arc::clone(&blocked), Arc::clone(&open), target.to_string());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if flag.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(up) = TcpStream::connect(&target) else {
                    continue;
                };
                {
                    let mut conns = conns.lock().unwrap();
                    conns.push(client.try_clone().unwrap());
                    conns.push(up.try_clone().unwrap());
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), up.try_clone().unwrap()),
                    (up, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Write);
                    });
                }
            }
        });
        CutRelay {
            addr,
            blocked,
            open,
        }
    }

    fn cut(&self) {
        self.blocked.store(true, Ordering::SeqCst);
        for c in self.open.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.blocked.store(false, Ordering::SeqCst);
    }
}

/// A watch lost while etcd compacted past the last revision it saw cannot be resumed from
/// there (etcd cancels it): the copy reopens it from now, fills the gap by reading, and
/// hears the next change from the stream again.
#[test]
fn a_watch_lost_across_a_compaction_reopens_and_misses_nothing() {
    use quiesce::group::etcd::{watch::Mirror, Etcd};
    let cluster = EtcdCluster::start(1);
    let relay = CutRelay::start(&cluster.endpoints[0]);
    let etcd = Arc::new(Etcd::new(
        std::slice::from_ref(&relay.addr),
        Duration::from_secs(1),
    ));
    let writer = Etcd::new(&cluster.endpoints, Duration::from_secs(2));
    writer.put("/c/a", "1", 0).unwrap();
    let mut m = Mirror::prefixes(&etcd, &["/c/".to_string()], Duration::from_millis(200));
    let live = |m: &mut Mirror, what: &str| {
        let until = Instant::now() + Duration::from_secs(10);
        while !m.is_live() {
            assert!(Instant::now() < until, "{what}");
            m.wait(Instant::now() + Duration::from_millis(20));
        }
    };
    live(&mut m, "the watch never opened");
    writer.put("/c/b", "1", 0).unwrap();
    assert!(m.wait(Instant::now() + Duration::from_secs(3)));
    assert_eq!(m.get("/c/b"), Some("1"));

    // The network drops; meanwhile keys change and etcd compacts past them.
    relay.cut();
    let until = Instant::now() + Duration::from_secs(5);
    while m.is_live() {
        assert!(Instant::now() < until, "the cut was not noticed");
        m.wait(Instant::now() + Duration::from_millis(20));
    }
    writer.put("/c/b", "2", 0).unwrap();
    writer
        .call(
            "/v3/kv/deleterange",
            &serde_json::json!({"key": "L2MvYQ=="}),
        )
        .unwrap();
    for i in 0..20 {
        writer.put("/other", &i.to_string(), 0).unwrap();
    }
    let head = writer
        .call("/v3/kv/range", &serde_json::json!({"key": "L290aGVy"}))
        .unwrap();
    let revision = head["header"]["revision"].as_str().unwrap().to_string();
    writer
        .call(
            "/v3/kv/compaction",
            &serde_json::json!({"revision": revision, "physical": true}),
        )
        .unwrap();

    // Back: the stream cannot resume from its last revision (compacted), so it starts from
    // now, and the copy holds what changed during the cut.
    relay.restore();
    live(&mut m, "the watch never reopened after the compaction");
    let until = Instant::now() + Duration::from_secs(5);
    while (m.get("/c/b"), m.get("/c/a")) != (Some("2"), None) {
        assert!(
            Instant::now() < until,
            "the changes made during the cut were missed: b={:?} a={:?}",
            m.get("/c/b"),
            m.get("/c/a")
        );
        m.wait(Instant::now() + Duration::from_millis(50));
    }
    // The next changes come by the stream (once it is live, a re-read is 5 s away). Any
    // reopening after etcd's refusal is over by now.
    // (Waiting on the copy for a while takes in what the stream thread said meanwhile.)
    while m.wait(Instant::now() + Duration::from_millis(300)) {}
    live(&mut m, "the watch did not stay open");
    for i in 0..3 {
        let t = Instant::now();
        writer.put("/c/c", &i.to_string(), 0).unwrap();
        while m.get("/c/c") != Some(i.to_string().as_str()) {
            assert!(
                t.elapsed() < Duration::from_secs(3),
                "no wake for a change after the compaction"
            );
            m.wait(t + Duration::from_secs(3));
        }
        eprintln!("wake {i} after the compaction: {:?}", t.elapsed());
        assert!(
            m.changed_read_at_ms().is_some() && t.elapsed() < Duration::from_secs(1),
            "heard by a re-read, not the reopened stream ({:?})",
            t.elapsed()
        );
    }
}

/// etcd's users over TLS: with etcd asking for no client certificate, the member and the
/// coordinator check etcd's certificate and log in with the group user's password, and an
/// operation completes; a wrong password is refused in words. Client certificates and etcd
/// users cannot be combined through etcd's HTTP gateway (it refuses every request with a
/// certificate once authentication is on): that is said in words too.
#[test]
fn over_tls_with_etcd_auth_a_group_snapshot_completes() {
    support::require_root!("members freeze loop filesystems and read root-owned key files");
    let dir = Scratch::new("group-tls-auth");
    let certs = etcd::Certs::make(&dir.path);
    let cluster = EtcdCluster::start_tls_server_only(1, &certs);
    let ep = &cluster.endpoints[0];
    let files = [&certs.ca, &certs.client_cert, &certs.client_key].map(|p| p.display().to_string());
    let tls = ["--cacert", files[0].as_str()];
    add_group_users(ep, &tls);
    etcdctl_with(ep, &tls, &["auth", "enable"]);

    let good_pw = dir.file("pw", "s3cret\n", 0o600);
    let bad_pw = dir.file("bad-pw", "guess\n", 0o600);
    let settings = |pw: &Path, client_cert: bool| {
        let mut text = format!(
            "ca_file = {:?}\nuser = \"quiesce\"\npassword_file = {:?}\n",
            files[0],
            pw.display().to_string()
        );
        if client_cert {
            text += &format!("cert_file = {:?}\nkey_file = {:?}\n", files[1], files[2]);
        }
        text
    };
    let member = start_member("ta0", &cluster.endpoints, &settings(&good_pw, false));
    let good = admin_config(
        &dir,
        "good.toml",
        &cluster.endpoints,
        &settings(&good_pw, false),
    );
    wait_until_joined(&good, "ta0");
    let report = group_snapshot_of_grp(&good, "tls-auth-1");
    assert_eq!(report["status"], "succeeded", "{report:#}");
    assert_eq!(report["members"][0]["ready"], "frozen", "{report:#}");
    assert!(thawed_within(&member.fs, Duration::from_secs(1)));
    assert_eq!(report["catalogs"], serde_json::json!(["ta0"]), "{report:#}");

    for (name, extra, words) in [
        (
            "bad.toml",
            settings(&bad_pw, false),
            "refused user \"quiesce\": wrong user name or password",
        ),
        (
            "cert-and-user-mtls.toml",
            settings(&good_pw, true),
            "with authentication on, etcd's HTTP gateway refuses every request that shows a \
             client certificate",
        ),
    ] {
        // Client certificates matter only where etcd asks for them: a second etcd that does
        // (`--client-cert-auth`), with authentication on as well.
        let mtls;
        let endpoints = if name.contains("mtls") {
            mtls = EtcdCluster::start_with(1, Some(&certs));
            let ep = &mtls.endpoints[0];
            let flags = [
                "--cacert", &files[0], "--cert", &files[1], "--key", &files[2],
            ];
            etcdctl_with(ep, &flags, &["user", "add", "root:rootpw"]);
            etcdctl_with(ep, &flags, &["user", "grant-role", "root", "root"]);
            etcdctl_with(ep, &flags, &["user", "add", "quiesce:s3cret"]);
            etcdctl_with(ep, &flags, &["auth", "enable"]);
            &mtls.endpoints
        } else {
            &cluster.endpoints
        };
        let config = admin_config(&dir, name, endpoints, &extra);
        let out = group_cli(&config, &["members", "grp"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: {stderr}");
        assert!(stderr.contains(words), "{name}: {stderr}");
    }
}

/// `quiesce group` failures are said with their code: a name quiesce refuses is an invalid
/// invocation (exit 2), an etcd that cannot be reached is `GroupCoordinationFailed` (exit 1),
/// a configuration that does not load is `IncorrectConfigFile`.
#[test]
fn group_command_failures_carry_their_code_and_exit_code() {
    let port = support::free_port();
    let nowhere = format!("127.0.0.1:{port}");
    let run = |args: &[&str]| {
        let out = Command::new(quiesce_bin())
            .args(["--config", "/nonexistent/quiesce.toml", "group"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = run(&["members", "grp"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.starts_with("quiesce: IncorrectConfigFile: "),
        "{stderr}"
    );

    let without_config = |args: &[&str]| {
        let out = Command::new(quiesce_bin())
            .arg("group")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = without_config(&["members", "a/b", "--endpoints", &nowhere]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("\"a/b\" may hold only"), "{stderr}");
    let (code, stderr) = without_config(&["members", "grp", "--endpoints", &nowhere]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.starts_with("quiesce: GroupCoordinationFailed: could not reach etcd"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
