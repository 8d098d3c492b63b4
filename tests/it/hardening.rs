//! Hardening regressions found while fuzzing and writing the threat model (SECURITY.md):
//! inputs the kernel or an operator can really produce that once broke quiesce.
use crate::support;

use quiesce::codes::ErrorCode;
use quiesce::config::{azure, native};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
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
    support::require_root!("a mount of its own");
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
    support::require_root!("the trust checks accept only root-owned scripts and configs");
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

    // Imported through `azure_plugins`: the plugin is skipped (the snapshot still happens)
    // and the problem names the plugin file.
    let importer = d.file(
        "import.toml",
        &format!("azure_plugins = [\"{}\"]\n", json.display()),
        0o600,
    );
    let cfg = native::load(&importer).expect("a broken plugin is skipped, not fatal");
    assert!(cfg.hooks.is_empty());
    assert_eq!(cfg.skipped.len(), 1, "{:?}", cfg.skipped);
    assert_eq!(cfg.skipped[0].code, ErrorCode::IncorrectJsonConfigFile);
    assert!(cfg.skipped[0].message.contains("larger than"));
    assert_eq!(cfg.skipped[0].location.as_ref().unwrap().file, json);
}

/// An INI plugin host declaring an absurd number of plugins is refused at once (found by
/// fuzzing: it used to loop for minutes), through the real file loader.
#[test]
fn absurd_plugin_count_in_a_real_plugin_host_file() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let d = Scratch::new("host-count");
    let host = d.file(
        "VMSnapshotPluginHost.conf",
        "[pre_post]\ntimeoutInSeconds = 30\nnumberOfPlugins = 999999992\n\
         pluginConfigPath0 = /etc/azure/VMSnapshotScriptPluginConfig.json\n",
        0o600,
    );
    let t = std::time::Instant::now();
    let e = azure::load_plugin_host(&host).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(e.0.len(), 1, "{e}");
    assert_eq!(e.0[0].code, ErrorCode::IncorrectPluginhostFile);
    assert_eq!(e.0[0].location.as_ref().unwrap().line, Some(3));
    assert!(Path::new(&e.0[0].location.as_ref().unwrap().file) == host);
}

// ---- the control API against hostile callers ----

/// A `quiesce serve` configuration that can freeze nothing (freezing disabled, no hooks).
fn serve_config(d: &Scratch, server_extra: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let socket = d.join("api.sock");
    let config = d.file(
        "quiesce.toml",
        &format!(
            "[paths]\nstate_dir = {:?}\ncatalog = {:?}\n[freeze]\nenabled = false\n\
             [server]\nsocket = {:?}\n{server_extra}",
            d.join("state").display().to_string(),
            d.join("catalog.db").display().to_string(),
            socket.display().to_string(),
        ),
        0o600,
    );
    (config, socket)
}

/// One raw request over TCP; the status code (0 when the connection closed unanswered).
fn tcp_request(port: u16, head: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(head.as_bytes());
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    quiesce::server::http::parse_response(&buf).map_or(0, |(code, _)| code)
}

fn get_healthz(token: Option<&str>) -> String {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{auth}\r\n")
}

/// A TCP caller (any local user can reach a loopback port) gets nothing without the exact
/// token, cannot send an oversized request, and cannot exhaust the server: idle connections
/// beyond `MAX_CONNECTIONS` are closed at once, and root's unix socket keeps answering.
#[test]
fn tcp_callers_need_the_token_and_cannot_exhaust_the_server() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    use quiesce::server::MAX_CONNECTIONS;
    use std::io::{Read, Write};
    let d = Scratch::new("serve-tcp");
    let token = "s3cret-token-0123456789abcdef";
    let token_file = d.file("token", &format!("{token}\n"), 0o600);
    let port = support::free_port();
    let (config, socket) = serve_config(
        &d,
        &format!(
            "tcp_listen = \"127.0.0.1:{port}\"\ntoken_file = {:?}\n",
            token_file.display().to_string()
        ),
    );
    let _srv = support::ServeProcess::start(&config, &socket);

    assert_eq!(tcp_request(port, &get_healthz(None)), 401);
    assert_eq!(
        tcp_request(port, &get_healthz(Some("s3cret-token-0123456789abcdeF"))),
        401
    );
    assert_eq!(tcp_request(port, &get_healthz(Some(&token[1..]))), 401);
    assert_eq!(tcp_request(port, &get_healthz(Some(token))), 200);
    let huge = format!(
        "POST /v1/operations/x/prepare HTTP/1.1\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: 100000000\r\n\r\n"
    );
    assert_eq!(tcp_request(port, &huge), 413);

    // Hold every TCP slot with connections that send nothing.
    let idle: Vec<std::net::TcpStream> = (0..MAX_CONNECTIONS)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    // One more is closed at once, unanswered (not left waiting).
    let t = std::time::Instant::now();
    let mut extra = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = extra.write_all(get_healthz(Some(token)).as_bytes());
    let mut buf = Vec::new();
    let r = extra.read_to_end(&mut buf);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "an over-limit connection was left open: {r:?}"
    );
    assert!(buf.is_empty(), "{}", String::from_utf8_lossy(&buf));
    // Root's unix socket has its own limit and still answers.
    let (code, v) =
        quiesce::server::client::call(&socket, "GET", "/healthz", None, Duration::from_secs(5))
            .unwrap();
    assert_eq!((code, v["status"].as_str()), (200, Some("ok")));
    // Once the idle callers go, TCP answers again.
    drop(idle);
    let t = std::time::Instant::now();
    while tcp_request(port, &get_healthz(Some(token))) != 200 {
        assert!(t.elapsed() < Duration::from_secs(5), "TCP did not recover");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A caller that trickles its request a byte at a time is cut off at `REQUEST_TIMEOUT`
/// (a per-read timeout alone would keep its thread for as long as it keeps trickling).
#[test]
fn a_caller_trickling_its_request_is_cut_off() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    use std::io::Write;
    let d = Scratch::new("serve-trickle");
    let (config, socket) = serve_config(&d, "");
    let _srv = support::ServeProcess::start(&config, &socket);
    let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    let start = std::time::Instant::now();
    let head = b"GET /healthz HTTP/1.1\r\nX-Pad: ";
    let mut i = 0;
    let cut = loop {
        let byte = head.get(i).copied().unwrap_or(b'a');
        i += 1;
        if s.write_all(&[byte]).is_err() {
            break start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "still connected after {i} bytes"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let limit = quiesce::server::REQUEST_TIMEOUT;
    assert!(
        cut >= limit && cut < limit + Duration::from_secs(3),
        "{cut:?}"
    );
}

/// The token file is trusted like the configuration: readable by others, it is refused and
/// the server does not start.
#[test]
fn an_unsafe_token_file_stops_the_server() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let d = Scratch::new("serve-token-mode");
    let token_file = d.file("token", "s3cret-token-0123456789abcdef\n", 0o644);
    let (config, _socket) = serve_config(
        &d,
        &format!(
            "tcp_listen = \"127.0.0.1:{}\"\ntoken_file = {:?}\n",
            support::free_port(),
            token_file.display().to_string()
        ),
    );
    let out = Command::new(quiesce_bin())
        .args(["serve", "--config", config.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("IncorrectConfigFile"), "{err}");
}

// ---- a local user who is not root ----

fn as_nobody(args: &[&str]) -> std::process::Output {
    support::as_nobody(quiesce_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// A user who is not root can neither use root's configuration (unreadable, and its
/// directory closed) nor bring their own (not owned by root): nothing runs, nothing is
/// frozen, and the refusal carries the configuration's code.
#[test]
fn a_non_root_user_can_neither_use_roots_config_nor_bring_their_own() {
    support::require_root!();
    use std::os::unix::fs::PermissionsExt;
    let fs = support::LoopFs::new("ext4", 64);
    let d = Scratch::new("nonroot");
    let marker = d.join("hook-ran");
    let hook = d.script("pre", &format!("#!/bin/sh\ntouch {}\n", marker.display()));
    let body = format!(
        "[paths]\nstate_dir = {:?}\ncatalog = {:?}\n[freeze]\ninclude = [{:?}]\n\
         [[hook]]\nname = \"h\"\npre = [{:?}]\n",
        d.join("state").display().to_string(),
        d.join("catalog.db").display().to_string(),
        fs.mount_point.display().to_string(),
        hook.display().to_string(),
    );
    let roots = d.file("quiesce.toml", &body, 0o600);

    // Their own copy, in a directory of theirs (under /tmp: the only place they can write).
    let own_dir = std::env::temp_dir().join(format!("quiesce-nobody-{}", std::process::id()));
    std::fs::create_dir_all(&own_dir).unwrap();
    let own = own_dir.join("quiesce.toml");
    std::fs::write(&own, &body).unwrap();
    std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o600)).unwrap();
    support::sh("chown", &["-R", "65534:65534", own_dir.to_str().unwrap()]);

    for config in [&roots, &own] {
        let out = as_nobody(&["snapshot", "--json", "--config", config.to_str().unwrap()]);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(1), "{}: {all}", config.display());
        assert!(all.contains("IncorrectConfigFile"), "{all}");
        assert!(!marker.exists(), "the hook ran for a non-root user");
        assert!(support::writable_within(
            &fs.mount_point,
            Duration::from_secs(2)
        ));
    }
    let _ = std::fs::remove_dir_all(&own_dir);
}

// ---- hostile hook output ----

/// A failing hook's output is logged escaped: a newline in it cannot forge a log line, and a
/// terminal escape sequence never reaches the operator's terminal raw.
#[test]
fn hook_output_cannot_forge_log_lines() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let d = Scratch::new("forge");
    let hook = d.script(
        "pre",
        "#!/bin/sh\nprintf 'oops\\nFORGED-LINE quiesce: all good\\n\\033[2J' >&2\nexit 1\n",
    );
    let config = d.file(
        "quiesce.toml",
        &format!(
            "[paths]\nstate_dir = {:?}\ncatalog = {:?}\n[freeze]\nenabled = false\n\
             [[hook]]\nname = \"h\"\npre = [{:?}]\n",
            d.join("state").display().to_string(),
            d.join("catalog.db").display().to_string(),
            hook.display().to_string(),
        ),
        0o600,
    );
    let out = Command::new(quiesce_bin())
        .args(["snapshot", "--config", config.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hook attempt failed"), "{err}");
    assert!(err.contains("FORGED-LINE"), "the output is logged: {err}");
    for line in err.lines() {
        assert!(!line.starts_with("FORGED-LINE"), "forged log line: {err}");
    }
    assert!(
        !err.contains('\u{1b}'),
        "raw escape sequence in the log: {err:?}"
    );
    // The summary on stdout quotes the last stderr line: escaped as well.
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("Pre-ScriptExecutionFailed"), "{summary}");
    assert!(summary.contains("\\u{1b}[2J"), "{summary}");
    assert!(
        !summary.contains('\u{1b}'),
        "raw escape sequence: {summary:?}"
    );
}

// ---- a writable configuration directory ----

/// Whoever can write to a directory above the configuration can replace it: a
/// configuration below a group/other-writable directory, or one owned by another user, is
/// refused with the file's own code (native, plugin host, plugin JSON), and so is a
/// configuration reached through a symlink as last component.
#[test]
fn config_below_a_writable_or_foreign_directory_is_refused() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    use std::os::unix::fs::PermissionsExt;
    let d = Scratch::new("config-dir");
    let body = "[freeze]\nenabled = false\n";
    assert!(native::load(&d.file("ok/quiesce.toml", body, 0o600)).is_ok());

    let writable = d.file("writable/quiesce.toml", body, 0o600);
    std::fs::set_permissions(d.join("writable"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let foreign = d.file("foreign/quiesce.toml", body, 0o600);
    std::os::unix::fs::chown(d.join("foreign"), Some(65534), Some(65534)).unwrap();
    let link = d.join("ok/link.toml");
    std::os::unix::fs::symlink(d.join("ok/quiesce.toml"), &link).unwrap();

    for path in [&writable, &foreign, &link] {
        let e = native::load(path).unwrap_err();
        assert_eq!(e.0[0].code, ErrorCode::IncorrectConfigFile, "{e}");
        assert!(e.0[0].message.starts_with("refused"), "{e}");
        let e = azure::load_plugin_host(path).unwrap_err();
        assert_eq!(e.0[0].code, ErrorCode::IncorrectPluginhostFile, "{e}");
        let e = azure::load_plugin_json(path).unwrap_err();
        assert_eq!(e[0].code, ErrorCode::IncorrectJsonConfigFile, "{e:?}");
    }
}
