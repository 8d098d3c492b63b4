//! Why quiesce exists: the `command` provider copies the image of a frozen ext4 under a
//! continuous write load, and every copy is clean without journal recovery; the same copy
//! taken without quiesce needs recovery.

use crate::support;

use quiesce::report::{Consistency, Status};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::{LoopFs, Scratch};

/// A shell loop writing and fsync'ing files on the filesystem; killed on drop.
struct Writer(Child);

impl Writer {
    fn start(dir: &Path) -> Writer {
        let child = Command::new("bash")
            .arg("-c")
            .arg(
                "i=0; while :; do \
                   dd if=/dev/urandom of=\"$1/f$((i % 40))\" bs=64k count=8 conv=fsync status=none; \
                   echo \"$i\" >> \"$1/log\"; i=$((i+1)); \
                 done",
            )
            .arg("writer")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        Writer(child)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // The whole group: a `dd` left running would keep the filesystem busy.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

/// e2fsck's verdict on an image copy: (clean, needs journal recovery).
fn fsck(image: &Path) -> (bool, bool) {
    let header = support::sh("dumpe2fs", &["-h", image.to_str().unwrap()]);
    let needs_recovery = header
        .lines()
        .any(|l| l.starts_with("Filesystem features:") && l.contains("needs_recovery"));
    let out = Command::new("e2fsck")
        .args(["-fn", image.to_str().unwrap()])
        .output()
        .unwrap();
    (out.status.success(), needs_recovery)
}

#[test]
fn frozen_copies_are_clean_twenty_times_and_unfrozen_ones_are_not() {
    support::require_root!();
    let dir = Scratch::new("image-copy");
    let fs = LoopFs::new("ext4", 256);
    let copies = dir.join("copies");
    std::fs::create_dir_all(&copies).unwrap();
    let copy = dir.script(
        "copy-image.sh",
        &format!(
            "#!/bin/sh\nset -e\nout={}/\"$QUIESCE_OPERATION_ID\".img\n\
             cp --reflink=auto --sparse=always {} \"$out\"\necho \"$out\"\n",
            copies.display(),
            fs.image.display()
        ),
    );
    let config = dir.file(
        "quiesce.toml",
        &format!(
            "[paths]\nstate_dir = {:?}\ncatalog = {:?}\n[freeze]\ninclude = [{:?}]\ntimeout = \"30s\"\n\
             [snapshot]\nprovider = \"command\"\ncommand = [{:?}]\ntimeout = \"60s\"\n",
            dir.join("state").display().to_string(),
            dir.join("catalog.db").display().to_string(),
            fs.mount_point.display().to_string(),
            copy.display().to_string()
        ),
        0o600,
    );
    let _writer = Writer::start(&fs.mount_point);
    std::thread::sleep(Duration::from_millis(300));

    let written = || {
        std::fs::read_to_string(fs.path("log"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    let before = written();
    let mut clean = 0;
    for round in 0..20 {
        let run = support::quiesce(&["snapshot", "--json"])
            .config(&config)
            .run();
        let report = run.report();
        assert_eq!(
            report.status,
            Status::Succeeded,
            "round {round}: {}",
            run.describe()
        );
        assert_eq!(report.consistency, Consistency::FileSystem);
        let image = report.snapshots[0].id.clone();
        let (ok, needs_recovery) = fsck(Path::new(&image));
        assert!(ok, "round {round}: e2fsck -fn failed on {image}");
        assert!(
            !needs_recovery,
            "round {round}: frozen copy needs journal recovery"
        );
        clean += 1;
        std::fs::remove_file(&image).unwrap();
    }
    assert_eq!(clean, 20);
    assert!(
        written() > before + 20,
        "the write load kept going across the snapshots"
    );

    // The same copy without quiesce, under the same load: the journal still holds
    // transactions the copy did not see applied.
    let raw = dir.join("unfrozen.img");
    let mut needed = 0;
    for _ in 0..3 {
        support::sh(
            "cp",
            &[
                "--sparse=always",
                fs.image.to_str().unwrap(),
                raw.to_str().unwrap(),
            ],
        );
        let (_, needs_recovery) = fsck(&raw);
        if needs_recovery {
            needed += 1;
        }
    }
    assert!(
        needed > 0,
        "an unfrozen copy under writes was expected to need journal recovery"
    );
    println!("frozen copies clean: {clean}/20; unfrozen copies needing recovery: {needed}/3");
    assert!(support::writable_within(
        &fs.mount_point,
        Duration::from_secs(2)
    ));
}
