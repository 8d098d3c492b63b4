//! A real QEMU guest (TCG) runs `quiesce guest-agent` on its virtio-serial port, with an
//! ext4 data disk under a write load and a pre hook. The test is the host, as libvirt is:
//! it speaks QGA on the chardev socket (sync-delimited handshake, freeze, status), takes the
//! disk snapshot through QEMU's own QMP (`blockdev-snapshot-sync`) while the guest is
//! frozen, then thaws. Every frozen snapshot must be `e2fsck -fn` clean with no journal
//! recovery; the control snapshots taken without a freeze are not. Then the host "crashes"
//! (closes the socket without thawing) and the guest thaws itself at the deadline.
//!
//! The guest runs the static release binary (`scripts/release.sh static-binary`, glibc
//! `+crt-static`): the initramfs holds no C library at all. Before the guest agent starts,
//! the guest prints `quiesce --version` and runs a real `quiesce snapshot` whose include
//! list names only its own virtio disk's mount, `/data`; the snapshot command proves the
//! disk is frozen while it runs (a write to it does not complete until the thaw).
//!
//! One guest boot for the whole module. QEMU and the kernel come from
//! scripts/install-deps.sh (unpacked into /var/cache/quiesce-tests/qemu); without them the
//! test fails and says so.

use crate::support;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{sh, Scratch};

pub(crate) const CACHE: &str = "/var/cache/quiesce-tests/qemu";
pub(crate) const MODULES: &[&str] = &[
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci.ko",
    "drivers/char/virtio_console.ko",
    "drivers/block/virtio_blk.ko",
    "lib/crc16.ko",
    "fs/mbcache.ko",
    "fs/jbd2/jbd2.ko",
    "crypto/crc32c_generic.ko",
    "fs/ext4/ext4.ko",
];

/// The QEMU process, killed and reaped on drop.
pub(crate) struct Guest(pub(crate) Child);

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for round in 1 2 3; do for m in /modules/*.ko; do insmod "$m" 2>/dev/null; done; done
mkdir -p /data /run/quiesce
mount -t ext4 /dev/vda /data || echo GUEST-NO-DATA
(i=0; while true; do dd if=/dev/urandom of=/data/load$((i % 8)) bs=64k count=8 conv=fsync 2>/dev/null; i=$((i + 1)); done) &
(while true; do echo x >> /data/append; done) &
echo "GUEST-VERSION $(/bin/quiesce --version)"
/bin/quiesce snapshot --json --config /etc/quiesce/static.toml > /run/static-report.json 2> /run/static-stderr
echo "GUEST-SNAPSHOT-RC $?"
echo "GUEST-SNAPSHOT-REPORT $(tr -d '\n' < /run/static-report.json)"
echo "GUEST-PROBE $(cat /run/probe-verdict)"
for i in 1 2 3 4 5 6 7 8 9 10; do [ -e /data/frozen-probe ] && break; sleep 1; done
[ -e /data/frozen-probe ] && echo GUEST-PROBE-WRITTEN-AFTER-THAW
tail -n 5 /run/static-stderr
echo GUEST-READY
/bin/quiesce guest-agent --config /etc/quiesce/quiesce.toml --max-freeze 4s
echo GUEST-AGENT-EXITED
poweroff -f
"#;

const CONFIG: &str = r#"[paths]
state_dir = "/run/quiesce"
catalog = "/run/quiesce/catalog.db"
[freeze]
include = ["/data"]
timeout = "60s"
[[hook]]
name = "marker"
pre = ["/etc/quiesce/pre"]
timeout = "10s"
"#;

/// `quiesce snapshot` in the guest: freeze only the virtio disk's mount.
const STATIC_CONFIG: &str = r#"[paths]
state_dir = "/run/quiesce"
catalog = "/run/quiesce/snapshot-catalog.db"
[freeze]
enabled = true
include = ["/data"]
timeout = "30s"
[snapshot]
provider = "command"
command = ["/etc/quiesce/probe"]
timeout = "20s"
"#;

/// The snapshot command, run while /data is frozen: a write to /data started now must not
/// have completed 2 s later (it completes after the thaw).
const PROBE: &str = "#!/bin/sh
(echo probe > /data/frozen-probe) &
sleep 2
if [ -e /data/frozen-probe ]; then echo WRITTEN-WHILE-FROZEN; else echo BLOCKED-WHILE-FROZEN; fi > /run/probe-verdict
";

const PRE_HOOK: &str = "#!/bin/sh\ndate > /data/hook-marker\nsync\n";

pub(crate) fn need(path: &Path) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: run scripts/install-deps.sh (QEMU and the kernel for the guest test)",
        path.display()
    );
    path.to_path_buf()
}

/// The cached kernel image.
pub(crate) fn kernel() -> PathBuf {
    std::fs::read_dir(need(&Path::new(CACHE).join("root/boot")))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("vmlinuz-")
        })
        .expect("a vmlinuz in the cache")
}

/// The `kernel/` directory of the cached kernel's modules ([`MODULES`] are under it).
pub(crate) fn module_dir() -> PathBuf {
    let kver = std::fs::read_dir(need(&Path::new(CACHE).join("root/lib/modules")))
        .unwrap()
        .flatten()
        .next()
        .expect("a kernel in the cache")
        .file_name();
    Path::new(CACHE)
        .join("root/lib/modules")
        .join(&kver)
        .join("kernel")
}

/// The static release binary (built by `scripts/release.sh static-binary`, stripped).
fn static_quiesce() -> PathBuf {
    let out = Command::new(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/release.sh"))
        .arg("static-binary")
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/release.sh static-binary failed"
    );
    let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let file = sh("file", &["-b", bin.to_str().unwrap()]);
    assert!(file.contains("static"), "not a static binary: {file}");
    bin
}

/// Build the initramfs: busybox, the modules, the static quiesce, configs and hooks (no
/// C library).
fn initramfs(dir: &Scratch) -> PathBuf {
    let root = dir.join("initramfs");
    let moddir = module_dir();
    for d in ["bin", "modules", "etc/quiesce", "proc", "sys", "dev"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(need(Path::new("/bin/busybox")), root.join("bin/busybox")).unwrap();
    for (i, m) in MODULES.iter().enumerate() {
        std::fs::copy(
            need(&moddir.join(m)),
            root.join(format!("modules/{i:02}.ko")),
        )
        .unwrap();
    }
    // quiesce, stripped (debug info would make the image large and the boot slow).
    sh(
        "strip",
        &[
            "-o",
            root.join("bin/quiesce").to_str().unwrap(),
            static_quiesce().to_str().unwrap(),
        ],
    );
    let write = |rel: &str, text: &str, mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        let p = root.join(rel);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    write("init", INIT, 0o755);
    write("etc/quiesce/quiesce.toml", CONFIG, 0o600);
    write("etc/quiesce/pre", PRE_HOOK, 0o700);
    write("etc/quiesce/static.toml", STATIC_CONFIG, 0o600);
    write("etc/quiesce/probe", PROBE, 0o700);
    // Nothing but the static binary needs a C library.
    assert!(!root.join("lib64").exists() && !root.join("lib").exists());
    let out = dir.join("initrd.gz");
    let status = Command::new("sh")
        .arg("-c")
        .arg("cd \"$1\" && find . | cpio -o -H newc -R 0:0 --quiet | gzip -1 > \"$2\"")
        .arg("mk")
        .arg(&root)
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "cpio");
    out
}

/// A line-oriented JSON connection (QMP or QGA).
struct Json {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Json {
    fn connect(path: &Path) -> Json {
        let start = Instant::now();
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(
                        start.elapsed() < Duration::from_secs(30),
                        "{}: {e}",
                        path.display()
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Json { stream, reader }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Next JSON object, skipping QMP events and anything before a 0xFF when `after_ff`.
    fn read(&mut self, after_ff: bool) -> Value {
        if after_ff {
            let mut b = [0u8; 1];
            loop {
                self.reader.read_exact(&mut b).expect("the 0xFF delimiter");
                if b[0] == 0xFF {
                    break;
                }
            }
        }
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).expect("an answer");
            assert!(n > 0, "connection closed");
            let v: Value = match serde_json::from_str(line.trim()) {
                Ok(v) => v,
                Err(_) => continue,
            };
            if v.get("event").is_some() {
                continue;
            }
            return v;
        }
    }

    fn call(&mut self, req: Value) -> Value {
        self.send(format!("{req}\n").as_bytes());
        self.read(false)
    }
}

/// libvirt's handshake: 0xFF, guest-sync-delimited with a random id, drop everything up to
/// the 0xFF of the answer, check the id.
fn qga_handshake(qga: &mut Json, id: i64) {
    qga.send(&[0xFF]);
    qga.send(
        format!(
            "{}\n",
            json!({"execute": "guest-sync-delimited", "arguments": {"id": id}})
        )
        .as_bytes(),
    );
    let answer = qga.read(true);
    assert_eq!(answer["return"], json!(id), "{answer}");
}

/// `e2fsck -fn` of a raw image: (clean without journal recovery, output).
fn fsck(image: &Path) -> (bool, String) {
    let out = Command::new("e2fsck")
        .args(["-fn"])
        .arg(image)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let clean = out.status.code() == Some(0) && !text.contains("journal");
    (clean, text)
}

/// The stable image below the active overlay, as a raw file.
fn materialize(layer: &Path, dir: &Scratch, name: &str) -> PathBuf {
    let raw = dir.join(name);
    sh(
        "qemu-img",
        &[
            "convert",
            "-U",
            "-O",
            "raw",
            layer.to_str().unwrap(),
            raw.to_str().unwrap(),
        ],
    );
    raw
}

/// What the guest printed about its own `quiesce --version` and `quiesce snapshot` run (the
/// static binary, freezing only /data).
fn static_binary_snapshotted_its_own_disk(console: &str) {
    let line = |tag: &str| -> &str {
        console
            .lines()
            .find_map(|l| l.strip_prefix(tag))
            .unwrap_or_else(|| panic!("no {tag} line in the guest console:\n{console}"))
            .trim()
    };
    let version = line("GUEST-VERSION ");
    assert!(version.starts_with("quiesce 0."), "{version}");
    assert!(version.contains("(commit "), "{version}");
    assert_eq!(line("GUEST-SNAPSHOT-RC "), "0", "{console}");
    let report: Value = serde_json::from_str(line("GUEST-SNAPSHOT-REPORT "))
        .unwrap_or_else(|e| panic!("{e}: {console}"));
    assert_eq!(report["status"], "succeeded", "{report:#}");
    assert_eq!(report["consistency"], "file-system", "{report:#}");
    assert_eq!(report["frozen"], json!(["/data"]), "{report:#}");
    assert!(report["frozen_ms"].as_u64().unwrap() >= 2000, "{report:#}");
    eprintln!(
        "in the guest: {version}; snapshot {} froze /data for {} ms, whole run {} ms",
        report["status"], report["frozen_ms"], report["timings"]["total_ms"]
    );
    // While the snapshot command ran, a write to /data did not complete; after the thaw it did.
    assert_eq!(line("GUEST-PROBE "), "BLOCKED-WHILE-FROZEN", "{console}");
    assert!(
        console.contains("GUEST-PROBE-WRITTEN-AFTER-THAW"),
        "{console}"
    );
}

#[test]
fn a_real_guest_is_frozen_and_snapshotted_through_qga_and_qmp() {
    support::require_root!("the guest's disk is built on a loop device");
    let qemu = need(&Path::new(CACHE).join("root/usr/bin/qemu-system-x86_64"));
    let kernel = kernel();
    let dir = Scratch::new("qemu-guest");
    let initrd = initramfs(&dir);
    let disk = dir.join("data.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    sh("mkfs.ext4", &["-q", "-F", disk.to_str().unwrap()]);
    let qga_sock = dir.join("qga.sock");
    let qmp_sock = dir.join("qmp.sock");
    let console = dir.join("console.log");
    let child = Command::new(&qemu)
        .args(["-L"])
        .arg(Path::new(CACHE).join("root/usr/share/qemu"))
        .args(["-L", "/usr/share/seabios", "-L", "/usr/lib/ipxe/qemu"])
        .args([
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-m",
            "512",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=none,id=disk0",
            disk.display()
        ))
        .args(["-device", "virtio-blk-pci,drive=disk0"])
        .args(["-device", "virtio-serial"])
        .arg("-chardev")
        .arg(format!(
            "socket,path={},server=on,wait=off,id=qga0",
            qga_sock.display()
        ))
        .args([
            "-device",
            "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
        ])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp_sock.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guest = Guest(child);
    let console_text = || std::fs::read_to_string(&console).unwrap_or_default();

    let mut qmp = Json::connect(&qmp_sock);
    let greeting = qmp.read(false);
    assert!(greeting.get("QMP").is_some(), "{greeting}");
    assert!(qmp
        .call(json!({"execute": "qmp_capabilities"}))
        .get("return")
        .is_some());

    // Wait for the guest agent (the first round trip also waits for the boot).
    let start = Instant::now();
    while !console_text().contains("GUEST-READY") {
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "the guest did not boot:\n{}",
            console_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !console_text().contains("GUEST-NO-DATA"),
        "{}",
        console_text()
    );
    eprintln!("guest booted in {:?}", start.elapsed());
    static_binary_snapshotted_its_own_disk(&console_text());
    let mut qga = Json::connect(&qga_sock);
    qga_handshake(&mut qga, 4242);
    std::thread::sleep(Duration::from_secs(2)); // let the write load get going

    let mut layer = 0;
    let mut snapshot = |qmp: &mut Json| -> PathBuf {
        // After this, the image below the new overlay no longer changes: it is the snapshot.
        layer += 1;
        let below = if layer == 1 {
            disk.clone()
        } else {
            dir.path.join(format!("layer{}.qcow2", layer - 1))
        };
        let overlay = dir.path.join(format!("layer{layer}.qcow2"));
        let r = qmp.call(json!({"execute": "blockdev-snapshot-sync", "arguments": {
            "device": "disk0", "snapshot-file": overlay, "format": "qcow2"}}));
        assert!(r.get("return").is_some(), "{r}");
        below
    };

    let mut frozen_results = Vec::new();
    let mut control_results = Vec::new();
    for round in 0..2 {
        // With the freeze, the way libvirt's snapshot-create --quiesce does it.
        qga_handshake(&mut qga, 100 + round);
        let r = qga.call(json!({"execute": "guest-fsfreeze-freeze"}));
        assert_eq!(r["return"], json!(1), "{r}\n{}", console_text());
        let s = qga.call(json!({"execute": "guest-fsfreeze-status"}));
        assert_eq!(s["return"], json!("frozen"));
        let image = snapshot(&mut qmp);
        let r = qga.call(json!({"execute": "guest-fsfreeze-thaw"}));
        assert_eq!(r["return"], json!(1), "{r}");
        let s = qga.call(json!({"execute": "guest-fsfreeze-status"}));
        assert_eq!(s["return"], json!("thawed"));
        let raw = if image == disk {
            disk.clone()
        } else {
            materialize(&image, &dir, &format!("frozen{round}.raw"))
        };
        frozen_results.push(fsck(&raw));
        // The pre hook ran before the freeze: its marker is in the snapshot.
        let marker = Command::new("debugfs")
            .args(["-R", "cat /hook-marker"])
            .arg(&raw)
            .output()
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&marker.stdout).trim().is_empty(),
            "hook marker missing from the frozen snapshot; freeze answer {r}; guest console:\n{}",
            console_text()
        );

        // Control: the same snapshot without a freeze, under the same load.
        std::thread::sleep(Duration::from_millis(700));
        let image = snapshot(&mut qmp);
        std::thread::sleep(Duration::from_millis(300));
        control_results.push(fsck(&materialize(
            &image,
            &dir,
            &format!("control{round}.raw"),
        )));
    }
    for (what, results) in [("frozen", &frozen_results), ("control", &control_results)] {
        for (clean, text) in results {
            let first = text
                .lines()
                .find(|l| l.contains("journal") || l.contains("clean"));
            eprintln!("{what}: clean={clean} {}", first.unwrap_or(""));
        }
    }
    for (i, (clean, text)) in frozen_results.iter().enumerate() {
        assert!(clean, "frozen snapshot {i} is not clean:\n{text}");
    }
    assert!(
        control_results.iter().any(|(clean, _)| !clean),
        "every control snapshot was clean; the load did not show the difference: {control_results:?}"
    );

    // The host "crashes" between freeze and thaw: the guest thaws itself at --max-freeze (4s).
    let r = qga.call(json!({"execute": "guest-fsfreeze-freeze"}));
    assert_eq!(r["return"], json!(1), "{r}");
    drop(qga);
    let crashed_at = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let mut qga = Json::connect(&qga_sock);
    qga_handshake(&mut qga, 7);
    let s = qga.call(json!({"execute": "guest-fsfreeze-status"}));
    assert_eq!(s["return"], json!("frozen"), "still inside the deadline");
    loop {
        let s = qga.call(json!({"execute": "guest-fsfreeze-status"}));
        if s["return"] == json!("thawed") {
            break;
        }
        assert!(
            crashed_at.elapsed() < Duration::from_secs(15),
            "the guest stayed frozen:\n{}",
            console_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let waited = crashed_at.elapsed();
    assert!(
        waited >= Duration::from_secs(3),
        "thawed too early: {waited:?}"
    );
    let _ = qmp.call(json!({"execute": "quit"}));
}
