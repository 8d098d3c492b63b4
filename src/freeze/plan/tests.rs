//! Planner tests on mountinfo text (never on this machine's mounts).
use super::*;
use crate::freeze::mountinfo::parse;

/// A typical server: root ext4, /boot, /home on a btrfs subvolume, /data xfs with a bind
/// mount, pseudo filesystems, NFS, FUSE, a read-only mount, a squashfs snap.
const SERVER: &str = r"22 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw,errors=remount-ro
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
24 22 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw
25 22 0:5 / /dev rw,nosuid,relatime shared:3 - devtmpfs udev rw,size=4003512k,nr_inodes=1000878,mode=755
26 25 0:23 / /dev/pts rw,nosuid,noexec,relatime shared:4 - devpts devpts rw,gid=5,mode=620,ptmxmode=000
27 22 0:24 / /run rw,nosuid,nodev,noexec,relatime shared:5 - tmpfs tmpfs rw,size=804852k,mode=755
28 24 0:25 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw
29 22 8:1 / /boot rw,relatime shared:30 - ext2 /dev/sda1 rw
30 22 0:40 /@home /home rw,relatime shared:31 - btrfs /dev/sdb1 rw,space_cache=v2,subvolid=257,subvol=/@home
31 22 0:40 /@srv /srv rw,relatime shared:32 - btrfs /dev/sdb1 rw,space_cache=v2,subvolid=258,subvol=/@srv
32 22 253:0 / /data rw,noatime shared:33 - xfs /dev/mapper/vg-data rw,attr2,inode64
33 22 253:0 /pg /var/lib/postgresql rw,noatime shared:33 - xfs /dev/mapper/vg-data rw,attr2,inode64
34 22 0:50 / /mnt/nfs rw,relatime shared:40 - nfs4 server:/export rw,vers=4.2
35 22 0:51 / /mnt/sshfs rw,nosuid,nodev,relatime shared:41 - fuse.sshfs user@host:/ rw,user_id=0,group_id=0
36 22 8:17 / /mnt/archive ro,relatime shared:42 - ext4 /dev/sdb2 ro
37 22 7:0 / /snap/core/123 ro,nodev,relatime shared:43 - squashfs /dev/loop0 ro
38 22 0:52 / /mnt/cifs rw,relatime shared:44 - cifs //srv/share rw
39 22 0:53 / /mnt/weird rw,relatime shared:45 - zfs tank/weird rw
40 22 8:33 / /mnt/ro-bind-only ro,relatime shared:46 - ext4 /dev/sdc1 rw
41 27 0:54 / /run/user/1000 rw,nosuid,nodev,relatime shared:47 - tmpfs tmpfs rw
42 22 0:55 / /mnt/over rw,relatime shared:48 - overlay overlay rw,lowerdir=/a,upperdir=/b,workdir=/c
";

fn mounts(text: &str) -> Vec<Mount> {
    parse(text).unwrap()
}

fn cfg(include: &[&str], exclude: &[&str]) -> FreezeConfig {
    FreezeConfig {
        include: include.iter().map(PathBuf::from).collect(),
        exclude: exclude.iter().map(PathBuf::from).collect(),
        ..FreezeConfig::default()
    }
}

fn no_loops(_: u32, _: u32) -> Option<(u32, u32)> {
    None
}

fn decision<'a>(p: &'a Plan, mp: &str) -> &'a MountDecision {
    p.decisions
        .iter()
        .find(|d| d.mount_point == Path::new(mp))
        .unwrap_or_else(|| panic!("no decision for {mp}"))
}

fn target_points(p: &Plan) -> Vec<String> {
    p.targets
        .iter()
        .map(|t| t.mount_point.display().to_string())
        .collect()
}

#[test]
fn default_selection_on_a_server() {
    let ms = mounts(SERVER);
    let p = plan(&ms, &cfg(&[], &[]), &[], &no_loops).unwrap();
    assert_eq!(target_points(&p), vec!["/", "/boot", "/home", "/data"]);
    assert_eq!(p.layers, vec![vec![0, 1, 2, 3]]);
    assert_eq!(p.decisions.len(), ms.len());

    let want_skip = [
        ("/proc", "pseudo filesystem (proc)"),
        ("/sys", "pseudo"),
        ("/dev", "pseudo filesystem (devtmpfs)"),
        ("/dev/pts", "pseudo"),
        ("/run", "pseudo filesystem (tmpfs)"),
        ("/sys/fs/cgroup", "pseudo filesystem (cgroup2)"),
        ("/mnt/nfs", "network filesystem (nfs4)"),
        ("/mnt/cifs", "network filesystem (cifs)"),
        ("/mnt/sshfs", "FUSE filesystem (fuse.sshfs)"),
        ("/mnt/archive", "read-only"),
        ("/snap/core/123", "read-only image filesystem (squashfs)"),
        ("/mnt/weird", "unknown filesystem type (zfs)"),
        ("/mnt/ro-bind-only", "read-only mount"),
        ("/mnt/over", "pseudo filesystem (overlay)"),
    ];
    for (mp, why) in want_skip {
        let d = decision(&p, mp);
        assert!(!d.freeze, "{mp} should be skipped");
        assert!(d.reason.contains(why), "{mp}: {:?} lacks {why:?}", d.reason);
    }
    for mp in ["/", "/boot", "/home", "/data"] {
        let d = decision(&p, mp);
        assert!(d.freeze, "{mp}");
        assert!(d.reason.starts_with("local "), "{}", d.reason);
    }
}

#[test]
fn bind_mounts_and_subvolumes_are_deduplicated() {
    let ms = mounts(SERVER);
    let p = plan(&ms, &cfg(&[], &[]), &[], &no_loops).unwrap();
    let data = p
        .targets
        .iter()
        .find(|t| t.mount_point == Path::new("/data"))
        .unwrap();
    assert_eq!(
        data.also_mounted_at,
        vec![PathBuf::from("/var/lib/postgresql")]
    );
    assert_eq!((data.major, data.minor), (253, 0));
    assert_eq!(data.fstype, "xfs");
    assert_eq!(data.source, "/dev/mapper/vg-data");
    // btrfs: /home and /srv are one filesystem; /home comes first at equal depth.
    let home = p.targets.iter().find(|t| t.fstype == "btrfs").unwrap();
    assert_eq!(home.mount_point, Path::new("/home"));
    assert_eq!(home.also_mounted_at, vec![PathBuf::from("/srv")]);
    let d = decision(&p, "/var/lib/postgresql");
    assert!(d.freeze);
    assert!(
        d.reason.contains("same filesystem as /data"),
        "{}",
        d.reason
    );
    assert_eq!(d.device, "253:0");
}

#[test]
fn shortest_mount_point_is_preferred() {
    let ms = mounts(
        "1 0 8:1 / / rw - ext4 /dev/sda1 rw
2 1 8:2 /x /srv/deep/bind rw - xfs /dev/sdb rw
3 1 8:2 / /srv rw - xfs /dev/sdb rw
",
    );
    let p = plan(&ms, &cfg(&[], &[]), &[], &no_loops).unwrap();
    assert_eq!(target_points(&p), vec!["/", "/srv"]);
    assert_eq!(
        p.targets[1].also_mounted_at,
        vec![PathBuf::from("/srv/deep/bind")]
    );
}

#[test]
fn read_only_bind_of_a_writable_filesystem_is_frozen_with_it() {
    let ms = mounts(
        "1 0 8:1 / / rw - ext4 /dev/sda1 rw
2 1 8:1 /etc /mnt/etc-ro ro,relatime - ext4 /dev/sda1 rw
",
    );
    let p = plan(&ms, &cfg(&[], &[]), &[], &no_loops).unwrap();
    assert_eq!(target_points(&p), vec!["/"]);
    assert!(decision(&p, "/mnt/etc-ro").freeze);
}

#[test]
fn include_selects_exactly_those() {
    let ms = mounts(SERVER);
    let p = plan(&ms, &cfg(&["/data", "/boot/"], &[]), &[], &no_loops).unwrap();
    assert_eq!(target_points(&p), vec!["/boot", "/data"]);
    let d = decision(&p, "/");
    assert!(!d.freeze);
    assert_eq!(d.reason, "not listed in freeze.include");
    assert!(!decision(&p, "/home").freeze);
}

#[test]
fn include_of_a_bind_mount_freezes_through_it() {
    let ms = mounts(SERVER);
    let p = plan(&ms, &cfg(&["/var/lib/postgresql"], &[]), &[], &no_loops).unwrap();
    assert_eq!(target_points(&p), vec!["/var/lib/postgresql"]);
    assert_eq!(p.targets[0].also_mounted_at, vec![PathBuf::from("/data")]);
    // Both paths of the same filesystem included: still one target.
    let p = plan(
        &ms,
        &cfg(&["/data", "/var/lib/postgresql"], &[]),
        &[],
        &no_loops,
    )
    .unwrap();
    assert_eq!(target_points(&p), vec!["/data"]);
}

#[test]
fn include_errors_name_the_mount_point() {
    let ms = mounts(SERVER);
    let errs = plan(
        &ms,
        &cfg(
            &[
                "/data/sub",
                "/nonexistent",
                "/proc",
                "/mnt/archive",
                "/mnt/nfs",
                "/mnt/sshfs",
                "/snap/core/123",
                "/data",
            ],
            &[],
        ),
        &[],
        &no_loops,
    )
    .unwrap_err();
    assert!(errs.iter().all(|e| e.code == ErrorCode::InvalidFreezePlan));
    let msgs: Vec<&str> = errs.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(msgs.len(), 7, "{msgs:#?}");
    assert!(
        msgs[0].contains("/data/sub: not a mount point (it is on the filesystem mounted at /data)"),
        "{}",
        msgs[0]
    );
    assert!(
        msgs[1].contains("/nonexistent: not a mount point"),
        "{}",
        msgs[1]
    );
    assert!(
        msgs[2].contains("/proc: cannot be frozen: pseudo"),
        "{}",
        msgs[2]
    );
    assert!(
        msgs[3].contains("/mnt/archive: cannot be frozen: read-only"),
        "{}",
        msgs[3]
    );
    assert!(msgs[4].contains("network"), "{}", msgs[4]);
    assert!(msgs[5].contains("FUSE"), "{}", msgs[5]);
    assert!(msgs[6].contains("squashfs"), "{}", msgs[6]);
}

#[test]
fn exclude_removes_the_whole_filesystem() {
    let ms = mounts(SERVER);
    // Excluding the bind mount excludes its filesystem (freezing /data would freeze it).
    let p = plan(
        &ms,
        &cfg(&[], &["/var/lib/postgresql", "/boot", "/not-mounted"]),
        &[],
        &no_loops,
    )
    .unwrap();
    assert_eq!(target_points(&p), vec!["/", "/home"]);
    let d = decision(&p, "/data");
    assert!(!d.freeze);
    assert!(
        d.reason
            .contains("excluded by freeze.exclude (/var/lib/postgresql)"),
        "{}",
        d.reason
    );
    // Exclude wins over include.
    let p = plan(&ms, &cfg(&["/data", "/boot"], &["/data"]), &[], &no_loops).unwrap();
    assert_eq!(target_points(&p), vec!["/boot"]);
}

#[test]
fn never_freeze_skips_the_filesystem_of_the_path() {
    let ms = mounts(SERVER);
    // The btrfs provider writes snapshots under /srv/.snapshots: /srv is a subvolume of
    // the btrfs also mounted at /home, so that whole filesystem stays thawed.
    let p = plan(
        &ms,
        &cfg(&[], &[]),
        &[PathBuf::from("/srv/.snapshots/not-yet-created")],
        &no_loops,
    )
    .unwrap();
    assert_eq!(target_points(&p), vec!["/", "/boot", "/data"]);
    let d = decision(&p, "/home");
    assert!(!d.freeze);
    assert!(
        d.reason
            .contains("snapshot provider writes here (/srv/.snapshots/not-yet-created)"),
        "{}",
        d.reason
    );
    // A path on the root filesystem (longest prefix is /) keeps only / thawed, not /data2.
    let p = plan(&ms, &cfg(&[], &[]), &[PathBuf::from("/data2/x")], &no_loops).unwrap();
    assert_eq!(target_points(&p), vec!["/boot", "/home", "/data"]);
    // Included and never_freeze: an error.
    let errs = plan(
        &ms,
        &cfg(&["/home"], &[]),
        &[PathBuf::from("/srv/x")],
        &no_loops,
    )
    .unwrap_err();
    assert!(
        errs[0].message.contains("snapshot provider writes here"),
        "{}",
        errs[0].message
    );
}

#[test]
fn loop_image_on_another_target_is_frozen_first() {
    // /outer (7:1) holds the image of /outer/inner-mnt? No: /mnt/inner (7:2) whose image
    // lives on /outer; and /mnt/deepest (7:3) whose image lives on /mnt/inner.
    let ms = mounts(
        "1 0 8:1 / / rw - ext4 /dev/sda1 rw
2 1 7:1 / /outer rw - xfs /dev/loop1 rw
3 1 7:2 / /mnt/inner rw - ext4 /dev/loop2 rw
4 1 7:3 / /mnt/deepest rw - btrfs /dev/loop3 rw
5 1 7:4 / /mnt/other rw - ext4 /dev/loop4 rw
",
    );
    let backing = |maj: u32, min: u32| match (maj, min) {
        (7, 1) => Some((8, 1)), // image on /
        (7, 2) => Some((7, 1)), // image on /outer
        (7, 3) => Some((7, 2)), // image on /mnt/inner
        (7, 4) => Some((9, 9)), // image on something not mounted
        _ => None,
    };
    let p = plan(
        &ms,
        &cfg(&["/outer", "/mnt/inner", "/mnt/deepest", "/mnt/other"], &[]),
        &[],
        &backing,
    )
    .unwrap();
    assert_eq!(
        target_points(&p),
        vec!["/outer", "/mnt/inner", "/mnt/deepest", "/mnt/other"]
    );
    assert_eq!(p.layers, vec![vec![2, 3], vec![1], vec![0]]);
    let d = decision(&p, "/mnt/inner");
    assert!(d.reason.contains("layer 2 of 3"), "{}", d.reason);
    assert!(
        d.reason.contains("loop image on /outer: frozen before it"),
        "{}",
        d.reason
    );
    // Default selection includes / too, which holds /outer's image.
    let p = plan(&ms, &cfg(&[], &[]), &[], &backing).unwrap();
    assert_eq!(p.layers.len(), 4);
    assert_eq!(p.layers[3], vec![0]);
    // Only the inner one selected: no ordering constraint.
    let p = plan(&ms, &cfg(&["/mnt/inner"], &[]), &[], &backing).unwrap();
    assert_eq!(p.layers, vec![vec![0]]);
    let table = render_table(&p);
    assert!(table.contains("1 filesystem(s) to freeze"), "{table}");
}

#[test]
fn loop_cycle_is_an_error() {
    let ms = mounts(
        "2 1 7:1 / /a rw - ext4 /dev/loop1 rw
3 1 7:2 / /b rw - ext4 /dev/loop2 rw
",
    );
    let backing = |_: u32, min: u32| Some((7, if min == 1 { 2 } else { 1 }));
    let errs = plan(&ms, &cfg(&[], &[]), &[], &backing).unwrap_err();
    assert!(errs[0].message.contains("cycle"));
}

#[test]
fn hidden_mounts_are_not_used() {
    // 3 is mounted at /mnt/a/b, then 4 is mounted over /mnt/a (hiding 3); 5 is stacked
    // on 2 at the same mount point /mnt/x (hiding 2).
    let ms = mounts(
        "1 0 8:1 / / rw - ext4 /dev/sda1 rw
2 1 7:1 / /mnt/x rw - ext4 /dev/loop1 rw
3 1 7:2 / /mnt/a/b rw - ext4 /dev/loop2 rw
4 1 7:3 / /mnt/a rw - xfs /dev/loop3 rw
5 2 7:4 / /mnt/x rw - ext4 /dev/loop4 rw
",
    );
    let p = plan(&ms, &cfg(&[], &[]), &[], &no_loops).unwrap();
    assert_eq!(target_points(&p), vec!["/", "/mnt/a", "/mnt/x"]);
    assert_eq!((p.targets[2].major, p.targets[2].minor), (7, 4));
    let d = decision(&p, "/mnt/a/b");
    assert!(!d.freeze);
    assert!(
        d.reason.contains("hidden under another mount at /mnt/a"),
        "{}",
        d.reason
    );
    let errs = plan(&ms, &cfg(&["/mnt/a/b"], &[]), &[], &no_loops).unwrap_err();
    assert!(errs[0].message.contains("hidden"), "{}", errs[0].message);
}

#[test]
fn nested_mounts_are_independent_targets() {
    let ms = mounts(
        "1 0 8:1 / / rw - ext4 /dev/sda1 rw
2 1 7:1 / /mnt/parent rw - ext4 /dev/loop1 rw
3 2 7:2 / /mnt/parent/child rw - xfs /dev/loop2 rw
",
    );
    let p = plan(
        &ms,
        &cfg(&["/mnt/parent", "/mnt/parent/child"], &[]),
        &[],
        &no_loops,
    )
    .unwrap();
    assert_eq!(target_points(&p), vec!["/mnt/parent", "/mnt/parent/child"]);
    assert_eq!(p.layers, vec![vec![0, 1]]);
}

#[test]
fn this_machine_style_container_mountinfo() {
    // Stacked devpts/shm mounts as seen in containers: the top one is the visible one.
    let ms = mounts(
        "24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw
25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw
26 24 0:24 / /dev/pts rw,relatime - devpts devpts rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
29 26 0:26 / /dev/pts rw,relatime - devpts devpts rw
",
    );
    let p = plan(&ms, &cfg(&[], &[]), &[], &no_loops).unwrap();
    assert_eq!(target_points(&p), vec!["/"]);
}

#[test]
fn render_table_lists_every_mount_with_action_and_reason() {
    let ms = mounts(SERVER);
    let p = plan(&ms, &cfg(&[], &[]), &[], &no_loops).unwrap();
    let t = render_table(&p);
    let lines: Vec<&str> = t.lines().collect();
    assert!(lines[0].starts_with("MOUNT POINT"), "{t}");
    assert!(lines[0].contains("ACTION") && lines[0].contains("REASON"));
    assert_eq!(lines.len(), ms.len() + 2, "{t}");
    let data = lines.iter().find(|l| l.starts_with("/data ")).unwrap();
    assert!(
        data.contains("xfs") && data.contains("FREEZE") && data.contains("253:0"),
        "{data}"
    );
    let proc_ = lines.iter().find(|l| l.starts_with("/proc ")).unwrap();
    assert!(
        proc_.contains("skip") && proc_.contains("pseudo"),
        "{proc_}"
    );
    assert!(t.ends_with("4 filesystem(s) to freeze\n"), "{t}");
}

#[test]
fn render_table_escapes_odd_mount_points() {
    let ms = mounts("1 0 7:1 / /mnt/a\\040b\\012c rw - ext4 /dev/loop1 rw\n");
    let p = plan(&ms, &cfg(&[], &[]), &[], &no_loops).unwrap();
    assert_eq!(p.targets[0].mount_point, Path::new("/mnt/a b\nc"));
    let t = render_table(&p);
    assert!(t.contains("/mnt/a\\040b\\012c"), "{t}");
    assert_eq!(t.lines().count(), 3);
}

#[test]
fn plan_serializes_to_json() {
    let ms = mounts(SERVER);
    let p = plan(&ms, &cfg(&[], &[]), &[], &no_loops).unwrap();
    let v: serde_json::Value = serde_json::to_value(&p).unwrap();
    assert_eq!(v["targets"][3]["mount_point"], "/data");
    assert_eq!(v["targets"][3]["also_mounted_at"][0], "/var/lib/postgresql");
    assert_eq!(v["layers"][0][0], 0);
    assert_eq!(v["decisions"][1]["freeze"], false);
    assert_eq!(v["decisions"][1]["device"], "0:21");
}

#[test]
fn nothing_eligible_is_an_empty_plan_not_an_error() {
    let ms = mounts("1 0 0:1 / / rw - tmpfs tmpfs rw\n");
    let p = plan(&ms, &cfg(&[], &[]), &[], &no_loops).unwrap();
    assert!(p.targets.is_empty());
    assert!(p.layers.is_empty());
    assert_eq!(p.decisions.len(), 1);
}

#[test]
fn classify_types() {
    assert_eq!(classify("ext4"), FsClass::Freezable);
    assert_eq!(classify("fuse"), FsClass::Fuse);
    assert_eq!(classify("fuseblk"), FsClass::Fuse);
    assert_eq!(classify("fuse.glusterfs"), FsClass::Fuse);
    assert_eq!(classify("nfs"), FsClass::Network);
    assert_eq!(classify("smb3"), FsClass::Network);
    assert_eq!(classify("ceph"), FsClass::Network);
    assert_eq!(classify("9p"), FsClass::Network);
    assert_eq!(classify("squashfs"), FsClass::ReadOnlyImage);
    assert_eq!(classify("gfs2"), FsClass::Cluster);
    assert_eq!(classify("vfat"), FsClass::Unknown);
}

#[test]
fn normalize_is_lexical() {
    assert_eq!(normalize(Path::new("/data/")), Path::new("/data"));
    assert_eq!(normalize(Path::new("/data/./x/../y")), Path::new("/data/y"));
    assert_eq!(normalize(Path::new("/..")), Path::new("/"));
    assert_eq!(normalize(Path::new("/")), Path::new("/"));
}

#[test]
fn a_hidden_mount_says_so_once() {
    // 3 (tmpfs) and 4 (ext4) sit under /mnt/a, then 5 is mounted over /mnt/a, hiding both.
    let ms = mounts(
        "1 0 8:1 / / rw - ext4 /dev/sda1 rw
3 1 0:30 / /mnt/a/t rw - tmpfs tmpfs rw
4 1 7:2 / /mnt/a/b rw - ext4 /dev/loop2 rw
5 1 7:3 / /mnt/a rw - xfs /dev/loop3 rw
",
    );
    let p = plan(&ms, &cfg(&[], &[]), &[], &no_loops).unwrap();
    // Ineligible for its type, and hidden: the type first, then that it is hidden.
    assert_eq!(
        decision(&p, "/mnt/a/t").reason,
        "pseudo filesystem (tmpfs): nothing on a disk to freeze; this mount is hidden under \
         another mount"
    );
    // Ineligible because it is hidden: said once.
    assert_eq!(
        decision(&p, "/mnt/a/b").reason,
        "hidden under another mount at /mnt/a: not reachable"
    );
}
