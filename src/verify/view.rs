//! The disposable views a verification runs on, one per snapshot of the run:
//!
//! - **btrfs**: a writable snapshot of each read-only snapshot, beside it in the snapshot
//!   directory.
//! - **command provider with `snapshot.verify_command`**: the user's command gets the snapshot
//!   id (as its last argument and in `QUIESCE_SNAPSHOT_ID`) and prints where the view is, as
//!   its last line: a directory (a view it mounted itself; `snapshot.verify_teardown`
//!   removes it), or an image file or block device (attached as below). `ORIGINAL=PATH`
//!   also says which live mount point the view stands for.
//! - **command provider without it, when the snapshot id is an image file** (a provider
//!   that copies a loop image): the image itself.
//!
//! An image is attached to a read-only loop device (a block device is used as it is), its
//! filesystem checked ([`fsck_command`]), and, when a verifier needs files, mounted
//! read-only without journal replay (`noload`, `norecovery`, `rescue=nologreplay`), so the
//! snapshot never changes. Such a view is read-only: the database verifiers, which must run
//! crash recovery, need a writable view (btrfs, or a `verify_command` that mounts one).
//!
//! Every mount, loop device and teardown is recorded in the [`Leftovers`] as it is made.

use super::leftovers::{self, Leftovers};
use super::{check, Check, VerifyError, Which};
use crate::config::{BtrfsConfig, Config, ProviderConfig};
use crate::snapshot::btrfs::{self as btrfs_provider, BtrfsProvider};
use crate::snapshot::Provider;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A view: the original location of a snapshotted volume and where its copy is seen.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub original: PathBuf,
    /// Where the view's files are (empty when it was not mounted: no verifier needs files).
    pub path: PathBuf,
    /// The device under an image view (what the filesystem check reads).
    pub device: Option<String>,
    /// Its filesystem type, as `blkid` probes it.
    pub fstype: Option<String>,
    /// May a verifier write to it (crash recovery of a database)?
    pub writable: bool,
}

/// The views of one run's snapshots, and the checks already made while making them
/// (a view that could not be made, a filesystem check).
pub struct Views {
    pub provider: String,
    pub snapshots: Vec<String>,
    pub views: Vec<View>,
    pub checks: Vec<Check>,
}

/// Make the views of the run `which` names. `needs_files`: mount image views (a verifier
/// reads files); without it an image view is only checked.
pub fn make(
    cfg: &Config,
    which: &Which,
    verify_id: &str,
    needs_files: bool,
    record: &mut Leftovers,
) -> Result<Views, VerifyError> {
    match &cfg.snapshot.provider {
        ProviderConfig::Btrfs(b) => btrfs_views(b, which, verify_id, record),
        ProviderConfig::Command { .. } => command_views(cfg, which, verify_id, needs_files, record),
        ProviderConfig::None => Err(VerifyError(
            "there is nothing to verify: no snapshot provider is configured \
             (snapshot.provider = \"none\")"
                .into(),
        )),
    }
}

fn btrfs_views(
    bcfg: &BtrfsConfig,
    which: &Which,
    verify_id: &str,
    record: &mut Leftovers,
) -> Result<Views, VerifyError> {
    let set = btrfs_set(bcfg, which)?;
    let mut out = Views {
        provider: "btrfs".into(),
        snapshots: set.iter().map(|(id, _)| id.clone()).collect(),
        views: Vec::new(),
        checks: Vec::new(),
    };
    for (i, (id, original)) in set.iter().enumerate() {
        let name = format!(".quiesce-verify-{verify_id}-{i}");
        let path = bcfg.directory.join(&name);
        record.add_subvolume(&path);
        let t = Instant::now();
        match btrfs_provider::create_writable_snapshot(
            &bcfg.directory.join(id),
            &bcfg.directory,
            &name,
        ) {
            Ok(()) => out.views.push(View {
                original: original.clone(),
                path,
                writable: true,
                ..View::default()
            }),
            Err(e) => out.checks.push(check("view", false, e, t)),
        }
    }
    Ok(out)
}

/// The snapshots of one btrfs run: (snapshot id, original subvolume path), for `which`.
fn btrfs_set(cfg: &BtrfsConfig, which: &Which) -> Result<Vec<(String, PathBuf)>, VerifyError> {
    let provider = BtrfsProvider::new(cfg.clone());
    let list = provider.list().map_err(|e| VerifyError(e.to_string()))?;
    let chosen = match which {
        Which::Latest => list.last(),
        Which::Id(id) => list.iter().find(|s| &s.id == id),
    }
    .ok_or_else(|| {
        VerifyError(match which {
            Which::Latest => format!("no snapshot in {}", cfg.directory.display()),
            Which::Id(id) => format!("no snapshot {id:?} in {}", cfg.directory.display()),
        })
    })?;
    let op = chosen.operation_id.clone();
    let mut set = Vec::new();
    for s in list.iter().filter(|s| s.operation_id == op) {
        let label = btrfs_provider::parse_name(&s.id)
            .map(|n| n.label)
            .unwrap_or_default();
        let original = cfg
            .subvolumes
            .iter()
            .find(|p| btrfs_provider::label(p) == label)
            .cloned()
            .ok_or_else(|| {
                VerifyError(format!(
                    "snapshot {} belongs to no configured subvolume (label {label:?})",
                    s.id
                ))
            })?;
        set.push((s.id.clone(), original));
    }
    Ok(set)
}

/// The snapshots of one command-provider run, from the catalog: (id, the live mount point
/// it stands for when known). The run's frozen mount points pair with its snapshots in order
/// when there are as many of each. An id the catalog does not know is verified alone.
fn command_set(cfg: &Config, which: &Which) -> Result<Vec<(String, PathBuf)>, VerifyError> {
    let catalog = crate::catalog::Catalog::open_read_only(&cfg.paths.catalog)
        .map_err(|e| VerifyError(e.to_string()))?;
    let wanted = match which {
        Which::Id(id) => Some(id.as_str()),
        Which::Latest => None,
    };
    let report = catalog.as_ref().and_then(|c| {
        let op = c.run_of_snapshot("command", wanted).ok().flatten()?;
        let json = c.report_json(&op).ok().flatten()?;
        serde_json::from_str::<crate::report::Report>(&json).ok()
    });
    let Some(report) = report else {
        return match which {
            Which::Id(id) => Ok(vec![(id.clone(), PathBuf::new())]),
            Which::Latest => Err(VerifyError(format!(
                "no snapshot of the command provider is recorded in {}",
                cfg.paths.catalog.display()
            ))),
        };
    };
    let ids: Vec<String> = report
        .snapshots
        .iter()
        .filter(|s| s.provider == "command")
        .map(|s| s.id.clone())
        .collect();
    let paired = report.frozen.len() == ids.len();
    Ok(ids
        .into_iter()
        .enumerate()
        .map(|(i, id)| {
            let original = if paired {
                PathBuf::from(&report.frozen[i])
            } else {
                PathBuf::new()
            };
            (id, original)
        })
        .collect())
}

fn command_views(
    cfg: &Config,
    which: &Which,
    verify_id: &str,
    needs_files: bool,
    record: &mut Leftovers,
) -> Result<Views, VerifyError> {
    let set = command_set(cfg, which)?;
    let mut out = Views {
        provider: "command".into(),
        snapshots: set.iter().map(|(id, _)| id.clone()).collect(),
        views: Vec::new(),
        checks: Vec::new(),
    };
    let deadline = Instant::now() + cfg.verify.timeout;
    for (i, (id, original)) in set.iter().enumerate() {
        let t = Instant::now();
        let printed = match &cfg.snapshot.verify_command {
            Some(argv) => user_view(cfg, argv, id, verify_id, deadline, record),
            None if Path::new(id).is_absolute() => Ok(id.clone()),
            None => Err(format!(
                "snapshot {id:?} is not an image file: the command provider needs \
                 `snapshot.verify_command` to make a view of it"
            )),
        };
        let (original, target) = match printed.map(|line| split_printed(&line, original)) {
            Ok(v) => v,
            Err(e) => {
                out.checks.push(check("view", false, e, t));
                continue;
            }
        };
        match std::fs::metadata(&target) {
            Ok(md) if md.is_dir() => {
                let writable = rustix::fs::statvfs(&target)
                    .is_ok_and(|s| !s.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY));
                out.views.push(View {
                    original,
                    path: target,
                    writable,
                    ..View::default()
                });
            }
            Ok(md) if md.is_file() || md.file_type().is_block_device() => {
                let name = format!("quiesce-verify-{verify_id}-{i}");
                match image_view(&target, &name, needs_files, record, &mut out.checks) {
                    Ok(mut v) => {
                        v.original = original;
                        out.views.push(v);
                    }
                    Err(e) => out.checks.push(check("view", false, e, t)),
                }
            }
            Ok(_) => out.checks.push(check(
                "view",
                false,
                format!(
                    "{} is neither a directory nor an image file",
                    target.display()
                ),
                t,
            )),
            Err(e) => out.checks.push(check(
                "view",
                false,
                format!("{}: {e}", target.display()),
                t,
            )),
        }
    }
    Ok(out)
}

/// `ORIGINAL=PATH` or `PATH` as the view command printed it: (original, path).
pub fn split_printed(line: &str, default_original: &Path) -> (PathBuf, PathBuf) {
    let line = line.trim();
    match line.split_once('=') {
        Some((orig, path)) if orig.starts_with('/') && path.starts_with('/') => {
            (PathBuf::from(orig), PathBuf::from(path))
        }
        _ => (default_original.to_path_buf(), PathBuf::from(line)),
    }
}

/// Run the user's view command for snapshot `id`; its last non-empty stdout line. Its
/// teardown is recorded before it runs (a killed verification still tears the view down).
fn user_view(
    cfg: &Config,
    argv: &[String],
    id: &str,
    verify_id: &str,
    deadline: Instant,
    record: &mut Leftovers,
) -> Result<String, String> {
    use crate::process::Launch;
    let mut env = vec![
        ("QUIESCE_SNAPSHOT_ID".to_string(), id.to_string()),
        ("QUIESCE_VERIFY_ID".to_string(), verify_id.to_string()),
    ];
    if let Some(td) = &cfg.snapshot.verify_teardown {
        record.add_teardown(td, env.clone());
    }
    let mut full = argv.to_vec();
    full.push(id.to_string());
    let mut launch = Launch::argv(&full).capture_stdout(64 * 1024);
    for (k, v) in &env {
        launch = launch.env(k, v);
    }
    let shown = argv.join(" ");
    let mut p = launch
        .spawn()
        .map_err(|e| format!("cannot start `{shown}`: {e}"))?;
    let end = p.run(deadline, std::time::Duration::from_secs(2));
    let (stdout, _) = p.captured_stdout();
    let stdout = String::from_utf8_lossy(stdout).into_owned();
    if !matches!(end, crate::process::AttemptEnd::Exited { code: 0 }) {
        return Err(format!(
            "`{shown}` {}: {}",
            crate::process::describe_end(&end),
            p.stderr_tail().to_string_lossy().trim()
        ));
    }
    let line = stdout
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .ok_or_else(|| format!("`{shown}` printed no view path"))?
        .to_string();
    if cfg.snapshot.verify_teardown.is_some() {
        let (_, path) = split_printed(&line, Path::new(""));
        env.push((
            "QUIESCE_VERIFY_VIEW".into(),
            path.to_string_lossy().into_owned(),
        ));
        record.set_last_teardown_env(env);
    }
    Ok(line)
}

/// The read-only filesystem check for a filesystem type: (check name, program, arguments
/// before the device). `None`: no check is known for it.
pub fn fsck_command(fstype: &str) -> Option<(&'static str, &'static str, &'static [&'static str])> {
    match fstype {
        "ext2" | "ext3" | "ext4" => Some(("e2fsck", "e2fsck", &["-f", "-n"])),
        "xfs" => Some(("xfs_repair", "xfs_repair", &["-n"])),
        "btrfs" => Some(("btrfs check", "btrfs", &["check", "--readonly"])),
        _ => None,
    }
}

/// Options that mount a filesystem read-only without replaying its journal (the device is
/// read-only; a copy of a mounted XFS carries the original's UUID).
pub fn read_only_mount_options(fstype: &str) -> &'static str {
    match fstype {
        "ext3" | "ext4" => "ro,noload",
        "xfs" => "ro,norecovery,nouuid",
        "btrfs" => "ro,rescue=nologreplay",
        _ => "ro",
    }
}

/// Attach `image` read-only (a block device is used as it is), check its filesystem
/// (pushed onto `checks`) and mount it read-only under the temporary directory when
/// `needs_files`.
fn image_view(
    image: &Path,
    name: &str,
    needs_files: bool,
    record: &mut Leftovers,
    checks: &mut Vec<Check>,
) -> Result<View, String> {
    let is_block = std::fs::metadata(image).is_ok_and(|m| m.file_type().is_block_device());
    let device = if is_block {
        image.to_string_lossy().into_owned()
    } else {
        let out = std::process::Command::new("losetup")
            .args(["--read-only", "--find", "--show"])
            .arg(image)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("cannot run losetup: {e}"))?;
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || dev.is_empty() {
            return Err(format!(
                "cannot attach {} to a loop device: {}",
                image.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        record.add_loop(&dev, image);
        dev
    };
    let fstype = probe_fstype(&device);
    let t = Instant::now();
    let deadline = Instant::now() + std::time::Duration::from_secs(3600);
    match fstype.as_deref().map(|f| (f, fsck_command(f))) {
        Some((_, Some((check_name, program, args)))) => {
            checks.push(run_fsck(check_name, program, args, &device, deadline, t));
        }
        Some((f, None)) => tracing::info!(fstype = f, "no filesystem check is known for it"),
        None => checks.push(check(
            "filesystem",
            false,
            format!("no filesystem found on {} ({})", device, image.display()),
            t,
        )),
    }
    let mut view = View {
        device: Some(device.clone()),
        fstype: fstype.clone(),
        writable: false,
        ..View::default()
    };
    if needs_files && fstype.is_some() {
        let mp = std::env::temp_dir().join(name);
        record.add_dir(&mp);
        std::fs::create_dir(&mp).map_err(|e| format!("{}: {e}", mp.display()))?;
        record.add_mount(&mp, &device);
        let opts = read_only_mount_options(fstype.as_deref().unwrap_or(""));
        leftovers::quiet(
            "mount",
            &[
                "-o".as_ref(),
                opts.as_ref(),
                device.as_ref(),
                mp.as_os_str(),
            ],
        )
        .map_err(|e| format!("cannot mount {device} read-only: {e}"))?;
        view.path = mp;
    }
    Ok(view)
}

/// The filesystem type on `device`, probed from its contents.
fn probe_fstype(device: &str) -> Option<String> {
    let out = std::process::Command::new("blkid")
        .args(["-p", "-o", "value", "-s", "TYPE", device])
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    let t = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!t.is_empty()).then_some(t)
}

fn run_fsck(
    name: &str,
    program: &str,
    args: &[&str],
    device: &str,
    deadline: Instant,
    t: Instant,
) -> Check {
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .arg(device)
        .env_clear()
        .env("PATH", super::server::PATH)
        .env("LC_ALL", "C");
    let shown = format!("{program} {} {device}", args.join(" "));
    match super::server::run_client(cmd, deadline) {
        Ok((ok, out, err)) => match fsck_verdict(program, ok, &out, &err) {
            Ok(note) => check(name, true, format!("{shown}: clean{note}"), t),
            Err(problems) => check(
                name,
                false,
                format!("{shown} found problems: {problems}"),
                t,
            ),
        },
        Err(e) => check(name, false, format!("cannot run {shown}: {e}"), t),
    }
}

/// Whether a check's run means a clean filesystem: `Ok(note)` or `Err(what is wrong)`.
///
/// `xfs_repair -n` exits 1 on the copy of a frozen XFS although nothing is wrong: freezing
/// writes all metadata in place but leaves the log unclean, and with lazy superblock
/// counters (the default) the free-block and inode counts on disk are stale until a mount
/// recomputes them. With the log left unreplayed, those counter lines alone are not damage.
pub fn fsck_verdict(program: &str, exit_ok: bool, out: &str, err: &str) -> Result<String, String> {
    if exit_ok {
        return Ok(String::new());
    }
    if program == "xfs_repair" {
        let text = format!("{out}\n{err}");
        let log_ignored = text.contains("valuable metadata changes in a log");
        let counters = ["sb_fdblocks ", "sb_icount ", "sb_ifree "];
        let alert = ["ALERT: ", "ignored because", "which may be resolved"];
        let other = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .filter(|l| {
                !["- ", "Phase ", "No modify", "(exit status"]
                    .iter()
                    .any(|p| l.starts_with(p))
            })
            .filter(|l| {
                !counters.iter().any(|c| l.starts_with(c)) && !alert.iter().any(|a| l.contains(a))
            })
            .count();
        if log_ignored && other == 0 {
            return Ok(
                " (only the superblock's lazy free counters differ, as on any copy of a \
                 frozen XFS whose log is not replayed)"
                    .into(),
            );
        }
    }
    Err(fsck_summary(out, err))
}

/// The lines of a check's output that say what is wrong (not its progress lines), up to 3.
pub fn fsck_summary(out: &str, err: &str) -> String {
    let progress = [
        "Pass ",
        "Phase ",
        "e2fsck ",
        "        - ",
        "Opening filesystem",
        "Checking filesystem",
        "[",
        "No modify flag set",
        "Warning: no quota",
        "ALERT: The filesystem has valuable",
        "ignored because the -n option",
        "which may be resolved by first",
    ];
    let lines: Vec<&str> = out
        .lines()
        .chain(err.lines())
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty() && !progress.iter().any(|p| l.starts_with(p)))
        .take(3)
        .collect();
    if lines.is_empty() {
        err.trim().to_string()
    } else {
        lines.join(" / ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_filesystem_gets_its_read_only_check_and_mount_options() {
        let table: &[(&str, Option<&str>, &str)] = &[
            ("ext4", Some("e2fsck -f -n"), "ro,noload"),
            ("ext3", Some("e2fsck -f -n"), "ro,noload"),
            ("ext2", Some("e2fsck -f -n"), "ro"),
            ("xfs", Some("xfs_repair -n"), "ro,norecovery,nouuid"),
            (
                "btrfs",
                Some("btrfs check --readonly"),
                "ro,rescue=nologreplay",
            ),
            ("vfat", None, "ro"),
        ];
        for (fstype, cmd, opts) in table {
            let got = fsck_command(fstype).map(|(_, p, a)| format!("{p} {}", a.join(" ")));
            assert_eq!(got.as_deref(), *cmd, "{fstype}");
            assert_eq!(read_only_mount_options(fstype), *opts, "{fstype}");
        }
    }

    #[test]
    fn the_view_command_may_name_the_original() {
        let table: &[(&str, &str, &str)] = &[
            ("/mnt/view", "", "/mnt/view"),
            ("/srv/db=/mnt/view", "/srv/db", "/mnt/view"),
            ("  /srv/db=/mnt/v=1  ", "/srv/db", "/mnt/v=1"),
            ("db=/mnt/view", "", "db=/mnt/view"),
            ("/snaps/img-1", "", "/snaps/img-1"),
        ];
        for (line, orig, path) in table {
            let (o, p) = split_printed(line, Path::new(""));
            assert_eq!((o, p), (PathBuf::from(orig), PathBuf::from(path)), "{line}");
        }
    }

    #[test]
    fn xfs_counter_lines_of_an_unreplayed_log_alone_are_not_damage() {
        let head =
            "Phase 1 - find and verify superblock...\nPhase 2 - using internal log\n        \
                    - zero log...\nALERT: The filesystem has valuable metadata changes in a log \
                    which is being\nignored because the -n option was used.  Expect spurious \
                    inconsistencies\nwhich may be resolved by first mounting the filesystem to \
                    replay the log.\n        - scan filesystem freespace and inode maps...\n";
        let counters = format!(
            "{head}sb_fdblocks 59958, counted 60383\nsb_ifree 61, counted 60\n\
                                No modify flag set, skipping phase 5\n"
        );
        let damaged = format!(
            "{counters}imap claims a free inode 132 is in use, would correct \
                               imap and clear inode\n"
        );
        let no_log = "sb_fdblocks 59958, counted 60383\n";
        let table: &[(&str, bool, &str, bool)] = &[
            ("xfs_repair", true, "", true),
            ("xfs_repair", false, &counters, true),
            (
                "xfs_repair",
                false,
                &format!("{counters} (exit status: 1)"),
                true,
            ),
            ("xfs_repair", false, &damaged, false),
            ("xfs_repair", false, no_log, false),
            ("e2fsck", false, &counters, false),
        ];
        for (program, exit_ok, out, clean) in table {
            let got = fsck_verdict(program, *exit_ok, out, "");
            assert_eq!(got.is_ok(), *clean, "{program} {exit_ok} {out}: {got:?}");
        }
        let why = fsck_verdict("xfs_repair", false, &damaged, "").unwrap_err();
        assert!(why.starts_with("sb_fdblocks"), "{why}");
        assert!(why.contains("imap claims a free inode 132"), "{why}");
    }

    #[test]
    fn fsck_summary_keeps_the_problem_lines() {
        let out = "Pass 1: Checking inodes, blocks, and sizes\nPass 2: Checking directory \
                   structure\nEntry 'keep' in / (2) has deleted/unused inode 12.  Clear? no\n\
                   \nPass 3: Checking directory connectivity\n";
        assert_eq!(
            fsck_summary(out, ""),
            "Entry 'keep' in / (2) has deleted/unused inode 12.  Clear? no"
        );
        assert_eq!(fsck_summary("", "cannot open\n"), "cannot open");
    }
}
