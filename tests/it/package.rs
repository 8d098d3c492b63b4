//! The release artefacts on a clean system: `scripts/release.sh` builds them; the Debian
//! package is installed into a fresh Debian root made by `mmdebstrap` (cached as a tarball
//! under /var/cache/quiesce-tests) and checked there by chroot, running the commands of
//! README's Install section verbatim; the static binary runs in a root without any libc;
//! an upgrade from the previous release keeps the catalog.
//!
//! Every chroot gets /proc mounted by a guard that unmounts it on drop (also on panic),
//! before its scratch directory is removed.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use support::{LoopFs, Scratch, ServeProcess, WriteProbe};

/// The previous release: packaged from this commit for the upgrade test.
const PREVIOUS_RELEASE: &str = "c758554";
const CACHE: &str = "/var/cache/quiesce-tests";

fn top() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Run a command; panic with its output unless it succeeds. Returns stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// `sh -c SCRIPT` inside `root` (chroot), in directory `/root`.
fn in_root(root: &Path, script: &str) -> String {
    run(Command::new("chroot")
        .arg(root)
        .args(["/bin/sh", "-c", &format!("cd /root && {script}")])
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LANG", "C.UTF-8")
        .env_remove("QUIESCE_LOG"))
}

/// /proc mounted inside a root, unmounted on drop.
struct ProcMount(PathBuf);

impl ProcMount {
    fn new(root: &Path) -> ProcMount {
        let p = root.join("proc");
        std::fs::create_dir_all(&p).unwrap();
        run(Command::new("mount").args(["-t", "proc", "proc"]).arg(&p));
        ProcMount(p)
    }
}

impl Drop for ProcMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

struct Artefacts {
    deb: PathBuf,
    static_bin: PathBuf,
    old_deb: PathBuf,
}

/// Build the previous release (once; cached by commit) and then this one with
/// `scripts/release.sh`. The old build shares this checkout's target directory so only the
/// quiesce crate itself is compiled again; it runs first, since both uplift their binary to
/// the same path.
fn artefacts() -> &'static Artefacts {
    static A: OnceLock<Artefacts> = OnceLock::new();
    A.get_or_init(|| {
        let cache = PathBuf::from(CACHE).join(format!("pkg-{PREVIOUS_RELEASE}"));
        let old_bin = cache.join("quiesce");
        if !old_bin.exists() {
            let src = cache.join("src");
            let _ = std::fs::remove_dir_all(&src);
            std::fs::create_dir_all(&src).unwrap();
            run(Command::new("sh").current_dir(top()).arg("-c").arg(format!(
                "git archive {PREVIOUS_RELEASE} | tar -x -C {}",
                src.display()
            )));
            let target = "x86_64-unknown-linux-gnu";
            run(Command::new("cargo")
                .current_dir(&src)
                .args(["build", "--release", "--target", target, "--target-dir"])
                .arg(top().join("target"))
                .env("RUSTFLAGS", "-C target-feature=+crt-static"));
            std::fs::copy(
                top().join(format!("target/{target}/release/quiesce")),
                &old_bin,
            )
            .unwrap();
        }
        let old_deb = cache.join("deb");
        let _ = std::fs::remove_dir_all(&old_deb);
        let out = run(Command::new(top().join("packaging/build-deb.sh"))
            .arg(&old_bin)
            .arg(&old_deb));
        let old_deb = PathBuf::from(out.trim());

        run(Command::new(top().join("scripts/release.sh")).current_dir(top()));
        let dist = top().join("dist");
        let find = |pred: &dyn Fn(&str) -> bool| {
            std::fs::read_dir(&dist)
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| pred(&p.file_name().unwrap().to_string_lossy()))
                .unwrap_or_else(|| panic!("not in dist/"))
        };
        Artefacts {
            deb: find(&|n| n.ends_with("_amd64.deb")),
            static_bin: find(&|n| n.ends_with("-x86_64-linux-static")),
            old_deb,
        }
    })
}

/// A root directory in its own scratch directory, with /proc mounted. Fields drop in
/// order: /proc is unmounted before the scratch directory is removed.
struct Root {
    _proc: ProcMount,
    _scratch: Scratch,
    path: PathBuf,
}

impl Root {
    /// An empty root, or (with `debian`) a clean Debian root, holding `files` under /root
    /// (or at / for an empty root).
    fn new(tag: &str, debian: bool, files: &[&Path]) -> Root {
        let scratch = Scratch::new(tag);
        let path = scratch.join("root");
        std::fs::create_dir_all(&path).unwrap();
        if debian {
            debian_root(&path);
        }
        let into = if debian {
            path.join("root")
        } else {
            path.clone()
        };
        for f in files {
            std::fs::copy(f, into.join(f.file_name().unwrap())).unwrap();
        }
        Root {
            _proc: ProcMount::new(&path),
            _scratch: scratch,
            path,
        }
    }
}

/// Packages of the clean root besides minbase: systemd (for `systemd-analyze verify`),
/// man-db, bash-completion, and qemu-guest-agent (the guest-agent units run its qemu-ga).
const ROOT_PACKAGES: &str = "systemd,man-db,bash-completion,qemu-guest-agent";

/// A clean Debian 12 root (minbase + [`ROOT_PACKAGES`]) extracted into `dir`. The tarball
/// is made once by mmdebstrap and cached under a name that lists the packages.
fn debian_root(dir: &Path) {
    let tarball = PathBuf::from(CACHE).join(format!(
        "debian-bookworm-{}.tar",
        ROOT_PACKAGES.replace(',', "-")
    ));
    static MADE: OnceLock<()> = OnceLock::new();
    MADE.get_or_init(|| {
        if !tarball.exists() {
            std::fs::create_dir_all(CACHE).unwrap();
            // mmdebstrap picks the format from the extension: keep ".tar" last.
            let tmp = tarball.with_extension("partial.tar");
            run(Command::new("mmdebstrap")
                .args([
                    "--variant=minbase",
                    &format!("--include={ROOT_PACKAGES}"),
                    "bookworm",
                ])
                .arg(&tmp)
                .arg("http://deb.debian.org/debian"));
            std::fs::rename(&tmp, &tarball).unwrap();
        }
    });
    run(Command::new("tar")
        .arg("-xf")
        .arg(&tarball)
        .arg("-C")
        .arg(dir));
}

/// The commands of README's block that starts after `marker`: the indented lines up to the
/// first blank line.
fn readme_commands(marker: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(top().join("README.md")).unwrap();
    let start = readme
        .find(marker)
        .unwrap_or_else(|| panic!("README has no {marker}"));
    readme[start + marker.len()..]
        .lines()
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| l.starts_with("    "))
        .map(|l| l.trim().to_string())
        .collect()
}

/// Every file and directory in the root, for a before/after comparison. Left out: caches,
/// logs, and the state of the tools the test itself runs (apt's lists, which
/// `apt-get install ./file.deb` creates; systemd-analyze's /run/systemd).
fn tree(root: &Path) -> Vec<String> {
    let out = in_root(
        root,
        "find / -xdev \\( -path /proc -o -path /root -o -path /tmp -o -path /var/cache \
         -o -path /var/log -o -path /var/lib/apt/lists -o -path /run/systemd \\) -prune \
         -o -print | sort",
    );
    out.lines().map(str::to_string).collect()
}

#[test]
fn deb_installs_checks_and_purges_cleanly_in_a_fresh_debian() {
    support::require_root!("chroot, mmdebstrap and dpkg");
    let a = artefacts();
    // lintian-clean: no error or warning (the overrides in the package say why each is one).
    let lint = Command::new("lintian")
        .args(["--fail-on", "error,warning"])
        .arg(&a.deb)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&lint.stdout);
    assert!(lint.status.success(), "lintian:\n{said}");
    assert!(
        !said
            .lines()
            .any(|l| l.starts_with("E:") || l.starts_with("W:")),
        "{said}"
    );
    let r = Root::new("pkg-deb", true, &[]);
    let root = &r.path;
    let before = tree(root);
    std::fs::copy(&a.deb, root.join("root").join(a.deb.file_name().unwrap())).unwrap();

    // README's Install steps, verbatim.
    let cmds = readme_commands("<!-- tested: deb install -->");
    assert!(cmds.len() >= 3, "{cmds:?}");
    let mut outputs = Vec::new();
    for c in &cmds {
        outputs.push(in_root(root, c));
    }
    let all = outputs.join("\n");
    assert!(all.contains("quiesce 0.2.0 (commit "), "{all}");
    assert!(all.contains("check passed"), "{all}");

    // The shipped config: root-only conffile, freezes nothing.
    let st = in_root(root, "stat -c '%a %U' /etc/quiesce/quiesce.toml");
    assert_eq!(st.trim(), "600 root");
    let check = in_root(root, "quiesce check --json");
    let v: serde_json::Value = serde_json::from_str(&check).unwrap();
    assert_eq!(v["ok"], true, "{check}");
    assert_eq!(v["freeze"], serde_json::json!([]), "{check}");
    // The admin names a filesystem but forgets `enabled = true`: check says so in words.
    in_root(
        root,
        "sed -i 's|^include = \\[\\]|include = [\"/srv\"]|' /etc/quiesce/quiesce.toml",
    );
    let warned = in_root(root, "quiesce check");
    assert!(
        warned.contains("warning freeze.include names /srv but freezing is disabled"),
        "{warned}"
    );
    assert!(warned.contains("check passed"), "{warned}");
    in_root(
        root,
        "sed -i 's|^include = \\[\"/srv\"\\]|include = []|' /etc/quiesce/quiesce.toml",
    );
    let again = in_root(root, "quiesce check");
    assert!(!again.contains("warning"), "{again}");

    // Man pages for the command and each subcommand render.
    let page = in_root(root, "MANWIDTH=80 man quiesce 2>&1");
    assert!(page.contains("Application-consistent snapshots"), "{page}");
    let sub = in_root(root, "man quiesce-snapshot 2>&1");
    assert!(sub.contains("--dry-run"), "{sub}");

    // bash completion loads and completes subcommands.
    let comp = in_root(
        root,
        "bash -c '. /usr/share/bash-completion/bash_completion; \
         _completion_loader quiesce; complete -p quiesce; \
         COMP_WORDS=(quiesce sn); COMP_CWORD=1; COMP_LINE=\"quiesce sn\"; COMP_POINT=10; \
         _quiesce quiesce sn quiesce; echo \"${COMPREPLY[@]}\"'",
    );
    assert!(comp.contains("-F _quiesce quiesce"), "{comp}");
    assert!(
        comp.contains("snapshot") && comp.contains("snapshots"),
        "{comp}"
    );
    for f in [
        "/usr/share/zsh/vendor-completions/_quiesce",
        "/usr/share/fish/vendor_completions.d/quiesce.fish",
        "/usr/share/quiesce/quiesce-alerts.yml",
        "/usr/share/quiesce/quiesce-dashboard.json",
        "/usr/lib/tmpfiles.d/quiesce.conf",
        "/usr/share/man/man1/quiesce-check.1.gz",
    ] {
        in_root(root, &format!("test -s {f}"));
    }

    // Every unit the package ships passes systemd-analyze verify; none is enabled.
    let units = in_root(root, "dpkg -L quiesce | grep '^/lib/systemd/system/.'");
    let units: Vec<&str> = units.lines().collect();
    assert!(units.len() >= 3, "{units:?}");
    for u in &units {
        let name = Path::new(u).file_name().unwrap().to_string_lossy();
        in_root(
            root,
            &format!("SYSTEMD_LOG_LEVEL=notice systemd-analyze verify {u} 2>&1"),
        );
        let enabled = Command::new("chroot")
            .arg(root)
            .args(["systemctl", "is-enabled", &name])
            .output()
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&enabled.stdout).starts_with("enabled"),
            "{name} enabled by the package"
        );
    }
    let lint = in_root(root, "dpkg -s quiesce");
    assert!(lint.contains("Status: install ok installed"), "{lint}");

    // remove keeps config and catalog; purge removes everything the package made.
    in_root(root, "quiesce snapshot --json >/dev/null || true");
    in_root(root, "test -s /var/lib/quiesce/catalog.db");
    in_root(root, "dpkg --remove quiesce");
    in_root(
        root,
        "test -f /etc/quiesce/quiesce.toml && test -f /var/lib/quiesce/catalog.db",
    );
    in_root(root, "dpkg --purge quiesce");
    in_root(root, "rm -f /root/*.deb");
    let after = tree(root);
    let left: Vec<_> = after.iter().filter(|p| !before.contains(p)).collect();
    assert!(left.is_empty(), "left behind after purge: {left:?}");

    // README's static-binary steps, verbatim, in the same clean root.
    let dist = top().join("dist");
    for e in std::fs::read_dir(&dist).unwrap() {
        let p = e.unwrap().path();
        let n = p.file_name().unwrap().to_string_lossy().into_owned();
        if n == "SHA256SUMS" || n.ends_with(".tar.gz") {
            std::fs::copy(&p, root.join("root").join(&n)).unwrap();
        }
    }
    for c in readme_commands("<!-- tested: static install -->") {
        in_root(root, &c);
    }
    let v = in_root(root, "/usr/local/bin/quiesce --version");
    assert!(v.starts_with("quiesce 0.2.0 (commit "), "{v}");
}

#[test]
fn static_binary_runs_in_a_root_without_libc() {
    support::require_root!("chroot, mmdebstrap and dpkg");
    let a = artefacts();
    let r = Root::new("pkg-static", false, &[&a.static_bin]);
    let root = &r.path;
    let bin = format!("/{}", a.static_bin.file_name().unwrap().to_string_lossy());
    let names: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "only the binary and /proc: {names:?}");
    let v = run(Command::new("chroot").arg(root).args([&bin, "--version"]));
    assert!(v.starts_with("quiesce 0.2.0 (commit "), "{v}");
    // It reads the mount table and plans without any file of its own.
    let m = run(Command::new("chroot")
        .arg(root)
        .args([&bin, "mounts", "--json"]));
    assert!(m.contains("\"mount_point\""), "{m}");

    // SHA256SUMS covers it.
    run(Command::new("sha256sum")
        .args(["-c", "SHA256SUMS"])
        .current_dir(top().join("dist")));
}

#[test]
fn upgrade_from_the_previous_release_keeps_config_and_history() {
    support::require_root!("chroot, mmdebstrap and dpkg");
    let a = artefacts();
    let r = Root::new("pkg-upgrade", true, &[&a.old_deb, &a.deb]);
    let root = &r.path;
    let old = a
        .old_deb
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    in_root(root, &format!("dpkg -i ./{old}"));
    let v = in_root(root, "quiesce --version");
    assert_eq!(
        v.trim(),
        "quiesce 0.1.0",
        "the previous release prints no commit"
    );
    // The admin's edit of the conffile must survive the upgrade.
    in_root(
        root,
        "sed -i 's/^timeout = \"60s\"/timeout = \"45s\"/' /etc/quiesce/quiesce.toml",
    );
    for _ in 0..2 {
        in_root(root, "quiesce snapshot >/dev/null || true");
    }
    let before = in_root(root, "quiesce history --json");
    let before: serde_json::Value = serde_json::from_str(&before).unwrap();
    assert_eq!(before.as_array().unwrap().len(), 2, "{before}");

    // README's upgrade steps, verbatim, with only the new package in the directory.
    in_root(root, &format!("rm ./{old}"));
    let cmds = readme_commands("<!-- tested: deb upgrade -->");
    assert!(cmds.len() >= 2, "{cmds:?}");
    let outputs: Vec<String> = cmds.iter().map(|c| in_root(root, c)).collect();
    assert!(
        outputs.join("\n").contains("quiesce 0.2.0 (commit "),
        "{outputs:?}"
    );
    let v = in_root(root, "quiesce --version");
    assert!(v.starts_with("quiesce 0.2.0 (commit "), "{v}");
    let after = in_root(root, "quiesce history --json");
    let after: serde_json::Value = serde_json::from_str(&after).unwrap();
    let ids = |v: &serde_json::Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| r["operation_id"].to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&after), ids(&before), "{after}");
    in_root(
        root,
        "grep -q '^timeout = \"45s\"' /etc/quiesce/quiesce.toml",
    );
    in_root(root, "quiesce check");
    in_root(root, "dpkg --purge quiesce");
}

/// `quiesce serve` of the installed package, started inside `root` with the shipped
/// configuration; stopped (SIGTERM, which thaws) on drop.
fn serve_in_root(root: &Path) -> ServeProcess {
    let socket = root.join("run/quiesce/quiesce.sock");
    let child = Command::new("chroot")
        .arg(root)
        .args([
            "/usr/bin/quiesce",
            "serve",
            "--config",
            "/etc/quiesce/quiesce.toml",
        ])
        .env_remove("QUIESCE_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let serve = ServeProcess {
        child,
        socket: socket.clone(),
    };
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "serve did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    serve
}

/// dpkg -i of the new package while the running agent holds an operation frozen: the
/// preinst waits (bounded) and refuses, the old version stays installed and working; when
/// the operation is released during the wait, the upgrade proceeds.
#[test]
fn upgrade_waits_for_a_frozen_operation_and_refuses_while_it_lasts() {
    support::require_root!("chroot, mmdebstrap and dpkg");
    let a = artefacts();
    let r = Root::new("pkg-upgrade-busy", true, &[&a.old_deb, &a.deb]);
    let root = &r.path;
    let name = |p: &Path| p.file_name().unwrap().to_string_lossy().into_owned();
    let (old, new) = (name(&a.old_deb), name(&a.deb));
    in_root(root, &format!("dpkg -i ./{old}"));
    // This test's own loop filesystem, mounted inside the root; the only one frozen.
    let data = LoopFs::create(
        "ext4",
        32,
        &root.join("root/data.img"),
        &root.join("mnt/data"),
    );
    in_root(
        root,
        "printf '[freeze]\\nenabled = true\\ninclude = [\"/mnt/data\"]\\ntimeout = \"300s\"\\n\
         [snapshot]\\nprovider = \"none\"\\n' > /etc/quiesce/quiesce.toml",
    );
    let _serve = serve_in_root(root);
    in_root(root, "quiesce prepare --id before-upgrade --deadline 300s");
    let mut probe = WriteProbe::start(&data.mount_point);
    assert_eq!(
        probe.finished_within(Duration::from_millis(500)),
        None,
        "not frozen"
    );

    // Refused: the preinst waits 3 s, then says why and what to do.
    let out = Command::new("chroot")
        .arg(root)
        .args(["/bin/sh", "-c", &format!("cd /root && dpkg -i ./{new}")])
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("QUIESCE_UPGRADE_WAIT", "3")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    for words in [
        "waiting up to 3s",
        "the upgrade is refused",
        "OperationInProgress",
        "operation before-upgrade",
        "stays and keeps working",
    ] {
        assert!(text.contains(words), "{words:?} not in:\n{text}");
    }
    let status = in_root(root, "dpkg -s quiesce");
    assert!(status.contains("Status: install ok installed"), "{status}");
    assert!(status.contains("Version: 0.1.0-1"), "{status}");
    assert_eq!(in_root(root, "quiesce --version").trim(), "quiesce 0.1.0");
    assert_eq!(
        probe.finished_within(Duration::ZERO),
        None,
        "thawed by the refusal"
    );

    // Waits: released during the wait, the upgrade goes on.
    let mut dpkg = Command::new("chroot")
        .arg(root)
        .args(["/bin/sh", "-c", &format!("cd /root && dpkg -i ./{new}")])
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("QUIESCE_UPGRADE_WAIT", "120")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(dpkg.try_wait().unwrap().is_none(), "dpkg did not wait");
    assert_eq!(
        probe.finished_within(Duration::ZERO),
        None,
        "thawed while waiting"
    );
    let released = in_root(root, "quiesce release --id before-upgrade");
    assert!(released.contains("succeeded"), "{released}");
    assert_eq!(probe.finished_within(Duration::from_secs(5)), Some(true));
    let out = dpkg.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("waiting up to 120s"), "{text}");
    let v = in_root(root, "quiesce --version");
    assert!(v.starts_with("quiesce 0.2.0 (commit "), "{v}");
    let history = in_root(root, "quiesce history --json");
    assert!(history.contains("before-upgrade"), "{history}");
}

/// Boots the Debian root into systemd: switch to the root on the first virtio disk.
const SYSTEMD_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for round in 1 2 3; do for m in /modules/*.ko; do insmod "$m" 2>/dev/null; done; done
mkdir -p /newroot
mount -t ext4 -o rw /dev/vda /newroot || { echo UPGRADE-NO-ROOT; poweroff -f; }
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /lib/systemd/systemd
"#;

/// Run by systemd in the guest (a oneshot unit after multi-user.target): the same upgrade
/// under a frozen operation as in the chroot, with quiesce-serve.service really running
/// under systemd. Every finding is an `R key value` line on the console.
const UPGRADE_SCRIPT: &str = r#"#!/bin/sh
cd /root
r() { echo "R $*" > /dev/ttyS0; }
pid() { systemctl show -p MainPID --value quiesce-serve.service; }
mkdir -p /mnt/data && mount /dev/vdb /mnt/data
dpkg -i ./old.deb > /root/dpkg-old.log 2>&1; r old-install-rc $?
printf '[freeze]\nenabled = true\ninclude = ["/mnt/data"]\ntimeout = "300s"\n[snapshot]\nprovider = "none"\n' > /etc/quiesce/quiesce.toml
systemctl start quiesce-serve.service; r serve-start-rc $?
for i in 1 2 3 4 5 6 7 8 9 10; do [ -S /run/quiesce/quiesce.sock ] && break; sleep 1; done
before=$(pid); r serve-pid-before "$before"
quiesce prepare --id in-guest --deadline 300s > /root/prepare.log 2>&1; r prepare-rc $?
cat /root/prepare.log > /dev/ttyS0
(echo x > /mnt/data/probe) &
sleep 3; if [ -e /mnt/data/probe ]; then r write-while-prepared done; else r write-while-prepared blocked; fi
QUIESCE_UPGRADE_WAIT=3 dpkg -i ./new.deb > /root/dpkg-refused.log 2>&1; r refused-rc $?
r refused-says "$(grep -c 'the upgrade is refused' /root/dpkg-refused.log)"
cat /root/dpkg-refused.log > /dev/ttyS0
journalctl -u quiesce-serve.service --no-pager | tail -n 15 > /dev/ttyS0
r version-after-refusal "$(quiesce --version)"
r serve-pid-after-refusal "$(pid)"
quiesce release --id in-guest > /dev/null 2>&1; r release-rc $?
sleep 1; r written-after-release "$(cat /mnt/data/probe)"
dpkg -i ./new.deb > /root/dpkg-new.log 2>&1; r upgrade-rc $?
for i in 1 2 3 4 5 6 7 8 9 10; do [ -S /run/quiesce/quiesce.sock ] && break; sleep 1; done
after=$(pid); r serve-pid-after-upgrade "$after"
r serve-active "$(systemctl is-active quiesce-serve.service)"
r serve-exe "$(readlink /proc/$after/exe)"
r version "$(quiesce --version)"
r history-has-it "$(quiesce history --json | grep -c in-guest)"
tail -n 5 /root/dpkg-new.log > /dev/ttyS0
r DONE
systemctl poweroff --force
"#;

/// The console's `R key value` lines.
fn findings(console: &str) -> std::collections::BTreeMap<String, String> {
    console
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("R "))
        .map(|l| match l.split_once(' ') {
            Some((k, v)) => (k.to_string(), v.trim().to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect()
}

/// The Debian root, booted under QEMU with systemd as PID 1: with quiesce-serve.service
/// running and holding a frozen operation on the guest's second virtio disk, the upgrade
/// is refused and the service keeps running; after the release the upgrade restarts the
/// service onto the new binary (a new main PID whose executable is the installed file, not
/// the deleted old one).
#[test]
fn under_systemd_the_upgrade_restarts_serve_but_never_while_frozen() {
    support::require_root!("chroot, mmdebstrap and dpkg");
    use crate::qemu_guest::{kernel, module_dir, need, Guest, CACHE, MODULES};
    let a = artefacts();
    let qemu = need(&Path::new(CACHE).join("root/usr/bin/qemu-system-x86_64"));
    let s = Scratch::new("pkg-systemd");
    // The root filesystem image, made from the clean Debian root without mounting it.
    let tree = s.join("root");
    std::fs::create_dir_all(&tree).unwrap();
    debian_root(&tree);
    std::fs::copy(&a.old_deb, tree.join("root/old.deb")).unwrap();
    std::fs::copy(&a.deb, tree.join("root/new.deb")).unwrap();
    let write = |p: &Path, text: &str, mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    write(&tree.join("root/upgrade-test.sh"), UPGRADE_SCRIPT, 0o755);
    write(
        &tree.join("etc/systemd/system/upgrade-test.service"),
        "[Unit]\nAfter=multi-user.target\n[Service]\nType=oneshot\n\
         ExecStart=/root/upgrade-test.sh\nStandardOutput=journal+console\n\
         StandardError=journal+console\n[Install]\nWantedBy=multi-user.target\n",
        0o644,
    );
    let wants = tree.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink(
        "/etc/systemd/system/upgrade-test.service",
        wants.join("upgrade-test.service"),
    )
    .unwrap();
    // man-db's trigger takes minutes under TCG and proves nothing here.
    let _ = std::fs::remove_file(tree.join("var/lib/man-db/auto-update"));
    let rootimg = s.join("root.img");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&tree)
        .arg(&rootimg)
        .arg("1536M"));
    std::fs::remove_dir_all(&tree).unwrap();
    let dataimg = s.join("data.img");
    std::fs::File::create(&dataimg)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&dataimg));

    // The initramfs: busybox and the virtio/ext4 modules, then systemd from the root.
    let init = s.join("initramfs");
    for d in ["bin", "modules", "proc", "sys", "dev"] {
        std::fs::create_dir_all(init.join(d)).unwrap();
    }
    std::fs::copy(need(Path::new("/bin/busybox")), init.join("bin/busybox")).unwrap();
    for (i, m) in MODULES.iter().enumerate() {
        std::fs::copy(
            need(&module_dir().join(m)),
            init.join(format!("modules/{i:02}.ko")),
        )
        .unwrap();
    }
    write(&init.join("init"), SYSTEMD_INIT, 0o755);
    let initrd = s.join("initrd.gz");
    run(Command::new("sh")
        .arg("-c")
        .arg("cd \"$1\" && find . | cpio -o -H newc -R 0:0 --quiet | gzip -1 > \"$2\"")
        .arg("mk")
        .arg(&init)
        .arg(&initrd));

    let console = s.join("console.log");
    let started = Instant::now();
    let child = Command::new(&qemu)
        .args(["-L"])
        .arg(Path::new(CACHE).join("root/usr/share/qemu"))
        .args(["-L", "/usr/share/seabios", "-L", "/usr/lib/ipxe/qemu"])
        .args(["-accel", "tcg", "-cpu", "max", "-m", "1024"])
        .args(["-display", "none", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(kernel())
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", rootimg.display()))
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", dataimg.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut guest = Guest(child);
    let text = || std::fs::read_to_string(&console).unwrap_or_default();
    loop {
        if guest.0.try_wait().unwrap().is_some() || text().contains("R DONE") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "the guest did not finish:\n{}",
            text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let console_text = text();
    eprintln!(
        "systemd guest: upgrade scenario done in {:?}",
        started.elapsed()
    );
    let f = findings(&console_text);
    let get = |k: &str| {
        f.get(k)
            .unwrap_or_else(|| panic!("no {k} in the guest's findings {f:?}:\n{console_text}"))
            .as_str()
    };
    // Every assertion below shows the findings; the guest's console explains them.
    eprintln!(
        "{}",
        console_text
            .lines()
            .filter(|l| !l.starts_with('['))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(get("old-install-rc"), "0", "{f:?}");
    assert_eq!(get("serve-start-rc"), "0", "{f:?}");
    assert_eq!(get("prepare-rc"), "0", "{f:?}");
    // The write did not complete while the operation held /mnt/data frozen.
    assert_eq!(get("write-while-prepared"), "blocked", "{f:?}");
    let before = get("serve-pid-before");
    assert!(before.parse::<u32>().unwrap() > 0, "{f:?}");
    assert_ne!(get("refused-rc"), "0", "{f:?}");
    assert_eq!(get("refused-says"), "1", "{f:?}");
    assert_eq!(get("version-after-refusal"), "quiesce 0.1.0", "{f:?}");
    assert_eq!(
        get("serve-pid-after-refusal"),
        before,
        "restarted while frozen"
    );
    assert_eq!(get("release-rc"), "0", "{f:?}");
    assert_eq!(get("written-after-release"), "x", "{f:?}");
    assert_eq!(get("upgrade-rc"), "0", "{f:?}");
    let after = get("serve-pid-after-upgrade");
    assert!(after.parse::<u32>().unwrap() > 0, "{f:?}");
    assert_ne!(after, before, "not restarted by the upgrade: {f:?}");
    assert_eq!(get("serve-active"), "active", "{f:?}");
    assert_eq!(get("serve-exe"), "/usr/bin/quiesce", "{f:?}");
    assert!(
        get("version").starts_with("quiesce 0.2.0 (commit "),
        "{f:?}"
    );
    assert_eq!(get("history-has-it"), "1", "{f:?}");
}
