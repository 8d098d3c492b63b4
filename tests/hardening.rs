//! Hardening regressions found while fuzzing and writing the threat model (SECURITY.md):
//! inputs the kernel or an operator can really produce that once broke quiesce.
mod support;

use quiesce::codes::ErrorCode;
use quiesce::config::{azure, native};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Stdio};
use support::{quiesce_bin, Scratch};

/// Run `script` (sh) in a private mount namespace: mounts made there are invisible to the
/// rest of the machine (other tests running at the same time never see them) and vanish
/// with the namespace.
fn in_private_mount_namespace(script: &str, args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("unshare")
}

/// The kernel writes bytes that are not UTF-8 raw in mountinfo (it escapes only space, tab,
/// newline and backslash). quiesce read the table with `read_to_string`, so one such mount
/// anywhere made every plan fail; and `quiesce mounts --json` panicked serializing it.
#[test]
fn a_mount_point_that_is_not_utf8_is_listed_not_fatal() {
    let d = Scratch::new("latin1-mount");
    let mnt = d.path.join(std::ffi::OsStr::from_bytes(b"caf\xe9 x"));
    std::fs::create_dir(&mnt).unwrap();
    let config = d.file(
        "quiesce.toml",
        &format!(
            "[paths]\nstate_dir = \"{0}/state\"\ncatalog = \"{0}/catalog.db\"\n",
            d.path.display()
        ),
        0o600,
    );
    let out = in_private_mount_namespace(
        "mount -t tmpfs quiesce-test \"$1\" || exit 90
         \"$2\" mounts --config \"$3\" > \"$4/table\" || exit 91
         \"$2\" mounts --config \"$3\" --json > \"$4/json\" || exit 92",
        &[
            mnt.as_os_str(),
            quiesce_bin().as_os_str(),
            config.as_os_str(),
            d.path.as_os_str(),
        ],
    );
    assert!(
        out.status.success(),
        "{:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let escaped = format!("{}/caf\\351\\040x", d.path.display());
    let table = std::fs::read_to_string(d.join("table")).unwrap();
    assert!(table.contains(&escaped), "{table}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("json")).unwrap()).unwrap();
    let listed = json
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mount_point"] == escaped.as_str())
        .unwrap_or_else(|| panic!("{escaped} not in {json}"));
    assert_eq!(listed["fstype"], "tmpfs");
    assert_eq!(listed["freeze"], false);
}

/// A trusted configuration can still name something huge to read (a log file, an image):
/// configuration files are read up to `MAX_CONFIG_BYTES` and refused beyond, with the
/// file's own code.
#[test]
fn oversized_configuration_files_are_refused_not_read_into_memory() {
    let d = Scratch::new("big-config");
    let max = native::MAX_CONFIG_BYTES as usize;
    let comment_line = format!("#{}\n", "x".repeat(1022));
    let at_limit = comment_line.repeat(max / 1024);
    assert_eq!(at_limit.len(), max);
    let ok = d.file("ok.toml", &at_limit, 0o600);
    let cfg = native::load(&ok).expect("a file of exactly the limit is read");
    assert!(cfg.hooks.is_empty());

    let big = d.file("big.toml", &format!("{at_limit}\n"), 0o600);
    let e = native::load(&big).unwrap_err();
    assert_eq!(e.0[0].code, ErrorCode::IncorrectConfigFile);
    assert!(e.0[0].message.contains("larger than"), "{}", e.0[0].message);

    let json = d.file("big.json", &format!("{at_limit}\n"), 0o600);
    let e = azure::load_plugin_json(&json).unwrap_err();
    assert_eq!(e[0].code, ErrorCode::IncorrectJsonConfigFile);
    assert!(e[0].message.contains("larger than"), "{}", e[0].message);

    // Imported through `azure_plugins`: the problem names the plugin file.
    let importer = d.file(
        "import.toml",
        &format!("azure_plugins = [\"{}\"]\n", json.display()),
        0o600,
    );
    let e = native::load(&importer).unwrap_err();
    assert_eq!(e.0[0].code, ErrorCode::IncorrectJsonConfigFile);
    assert_eq!(e.0[0].location.as_ref().unwrap().file, json);
}

/// An INI plugin host declaring an absurd number of plugins is refused at once (found by
/// fuzzing: it used to loop for minutes), through the real file loader.
#[test]
fn absurd_plugin_count_in_a_real_plugin_host_file() {
    let d = Scratch::new("host-count");
    let host = d.file(
        "VMSnapshotPluginHost.conf",
        "[pre_post]\ntimeoutInSeconds = 30\nnumberOfPlugins = 999999992\n\
         pluginConfigPath0 = /etc/azure/VMSnapshotScriptPluginConfig.json\n",
        0o600,
    );
    let t = std::time::Instant::now();
    let e = azure::load_plugin_host(&host).unwrap_err();
    assert!(t.elapsed() < std::time::Duration::from_secs(2));
    assert_eq!(e.0.len(), 1, "{e}");
    assert_eq!(e.0[0].code, ErrorCode::IncorrectPluginhostFile);
    assert_eq!(e.0[0].location.as_ref().unwrap().line, Some(3));
    assert!(Path::new(&e.0[0].location.as_ref().unwrap().file) == host);
}
