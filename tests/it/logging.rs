//! Logging: nothing reaches a sink while held, everything arrives in order after release,
//! JSON lines parse, the hold buffer is bounded and says what it dropped, journald gets
//! well-formed native-protocol datagrams.
//!
//! The global logger can be installed once per process, so each scenario runs in a child
//! process (this test binary re-executed on the ignored `subprocess_entry`); the parent
//! process itself never installs a logger, which is what `hold_release_without_init`
//! relies on.

use crate::support;

use quiesce::config::LogFormat;
use quiesce::logging::{self, LogOptions};
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::Scratch;

const SCENARIO_ENV: &str = "QUIESCE_TEST_LOG_SCENARIO";
const DIR_ENV: &str = "QUIESCE_TEST_LOG_DIR";
const BIG_LINES: usize = 2600;

/// In a child process: the hold is process-wide, and in-process freezes of other tests in
/// this binary hold and release it too.
#[test]
fn hold_release_without_init() {
    let s = Scratch::new("log-hold");
    run_child("hold", &s.path);
}

fn child_hold() {
    assert!(!logging::is_held());
    logging::hold();
    logging::hold();
    tracing::info!("no logger installed: goes nowhere, must not panic");
    logging::release();
    assert!(
        logging::is_held(),
        "nested: still held after the first release"
    );
    logging::release();
    assert!(!logging::is_held());
    logging::release(); // unbalanced: ignored
    assert!(!logging::is_held());
}

#[test]
fn journal_datagram_encoding() {
    let d = logging::journal_datagram(3, Some("quiesce::freeze"), b"thaw failed");
    assert_eq!(
        d,
        b"PRIORITY=3\nSYSLOG_IDENTIFIER=quiesce\nQUIESCE_TARGET=quiesce::freeze\nMESSAGE=thaw failed\n"
    );
    let d = logging::journal_datagram(6, None, b"two\nlines");
    let mut want = b"PRIORITY=6\nSYSLOG_IDENTIFIER=quiesce\nMESSAGE\n".to_vec();
    want.extend_from_slice(&9u64.to_le_bytes());
    want.extend_from_slice(b"two\nlines\n");
    assert_eq!(d, want);
    assert_eq!(decode_journal(&d)["MESSAGE"], "two\nlines");
    assert_eq!(logging::priority(tracing::Level::WARN), 4);
    assert_eq!(logging::priority(tracing::Level::TRACE), 7);
}

/// Text to stderr, a file and journald; held lines appear only after release, in order.
#[test]
fn held_lines_appear_after_release_in_order() {
    let s = Scratch::new("log-text");
    run_child("text", &s.path);
    let file = s.join("log/quiesce.log");
    let lines = read_lines(&file);
    let expected = expected_text_order();
    assert_in_order(&lines, &expected, "log file");
    assert_in_order(&read_lines(&s.join("stderr.txt")), &expected, "stderr");
    assert!(!lines.iter().any(|l| l.contains("not shown at info")));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&s.join("log")), 0o700);
}

/// JSON lines to a file: every line parses and carries level, message and fields.
#[test]
fn json_lines_parse() {
    let s = Scratch::new("log-json");
    run_child("json", &s.path);
    let lines = read_lines(&s.join("quiesce.jsonl"));
    assert_eq!(lines.len(), 22, "{lines:#?}");
    let parsed: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {e}: {l}")))
        .collect();
    assert_eq!(parsed[0]["message"], "before hold");
    for (i, v) in parsed[1..21].iter().enumerate() {
        assert_eq!(v["message"], format!("held {i}"));
        assert_eq!(v["n"], i);
        assert_eq!(v["mount"], "/srv/da\"ta");
        assert_eq!(v["level"], "INFO");
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    }
    assert_eq!(parsed[21]["message"], "after release");
    assert_eq!(parsed[21]["level"], "WARN");
}

/// More than the hold limit: the buffer keeps a contiguous prefix, drops the rest, and
/// says how many after release.
#[test]
fn hold_buffer_is_bounded_and_reports_drops() {
    let s = Scratch::new("log-overflow");
    run_child("overflow", &s.path);
    let lines = read_lines(&s.join("big.log"));
    let kept: Vec<&String> = lines.iter().filter(|l| l.contains("big line")).collect();
    let kept_bytes: usize = kept.iter().map(|l| l.len() + 1).sum();
    assert!(
        kept.len() > 1000 && kept.len() < BIG_LINES,
        "kept {}",
        kept.len()
    );
    assert!(kept_bytes <= logging::HOLD_LIMIT_BYTES);
    assert!(
        kept_bytes > logging::HOLD_LIMIT_BYTES - 8192,
        "the buffer was used up"
    );
    for (i, l) in kept.iter().enumerate() {
        assert!(
            l.contains(&format!("big line {i:05} ")),
            "gap at {i}: {l:.80}"
        );
    }
    let dropped = BIG_LINES - kept.len();
    let notice = lines
        .iter()
        .position(|l| l.contains("were dropped while filesystems were frozen"))
        .expect("drop notice");
    assert!(
        lines[notice].contains(&format!("{dropped} log lines")),
        "{}",
        lines[notice]
    );
    assert!(lines[notice].contains("WARN"));
    let last_kept = lines.iter().rposition(|l| l.contains("big line")).unwrap();
    let after = lines
        .iter()
        .position(|l| l.contains("after release"))
        .unwrap();
    assert!(last_kept < notice && notice < after);
    eprintln!(
        "kept {} lines ({kept_bytes} bytes), dropped {dropped}",
        kept.len()
    );
}

/// A journald that stopped reading costs one send timeout, not one per line, and the
/// other sinks still get every line.
#[test]
fn stalled_journald_does_not_stall_logging() {
    let s = Scratch::new("log-stalled");
    run_child("stalled", &s.path);
    let lines = read_lines(&s.join("stalled.log"));
    assert_eq!(lines.iter().filter(|l| l.contains("line ")).count(), 200);
    let took: f64 = std::fs::read_to_string(s.join("elapsed"))
        .unwrap()
        .parse()
        .unwrap();
    eprintln!("200 lines with a stalled journald took {took:.2} s");
    assert!((0.9..3.0).contains(&took), "took {took} s");
}

// ---- the child side ----

/// Not a test by itself: the body of the scenarios above, run in a child process.
#[test]
#[ignore]
fn subprocess_entry() {
    let (Ok(scenario), Ok(dir)) = (std::env::var(SCENARIO_ENV), std::env::var(DIR_ENV)) else {
        return;
    };
    let dir = PathBuf::from(dir);
    match scenario.as_str() {
        "hold" => child_hold(),
        "text" => child_text(&dir),
        "json" => child_json(&dir),
        "overflow" => child_overflow(&dir),
        "stalled" => child_stalled(&dir),
        other => panic!("unknown scenario {other}"),
    }
}

fn expected_text_order() -> Vec<String> {
    let mut v = vec!["line before hold".to_string()];
    v.extend((0..50).map(|i| format!("held line {i} ")));
    v.push("multi".to_string());
    v.push("line message".to_string());
    v.push("line after release".to_string());
    v
}

fn child_text(dir: &Path) {
    let file = dir.join("log/quiesce.log");
    let sock = dir.join("journal.sock");
    // A reader thread like journald's: the kernel queues only max_dgram_qlen (10 here)
    // datagrams, and the release of the buffer sends 52 at once.
    let journal = collect(UnixDatagram::bind(&sock).unwrap());
    let opts = LogOptions {
        format: LogFormat::Text,
        stderr: true,
        file: Some(file.clone()),
        journal_socket: Some(sock.clone()),
        filter: "info".to_string(),
    };
    logging::init_with(opts.clone()).unwrap();
    logging::init_with(opts).unwrap(); // second call: no-op
    let stderr_file = dir.join("stderr.txt");

    tracing::info!("line before hold");
    let before = wait_for(&journal, 1);
    assert_eq!(before[0]["MESSAGE"], "line before hold");
    assert_eq!(before[0]["PRIORITY"], "6");
    assert_eq!(before[0]["SYSLOG_IDENTIFIER"], "quiesce");
    let file_len = std::fs::metadata(&file).unwrap().len();
    let stderr_len = std::fs::metadata(&stderr_file).unwrap().len();
    assert!(file_len > 0 && stderr_len > 0);

    logging::hold();
    for i in 0..50 {
        tracing::info!(n = i, "held line {i} ");
    }
    tracing::warn!("multi\nline message");
    tracing::debug!("not shown at info");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        std::fs::metadata(&file).unwrap().len(),
        file_len,
        "file written while held"
    );
    assert_eq!(
        std::fs::metadata(&stderr_file).unwrap().len(),
        stderr_len,
        "stderr written while held"
    );
    assert_eq!(
        journal.lock().unwrap().len(),
        1,
        "journald datagram sent while held"
    );

    logging::release();
    tracing::info!("line after release");
    let lines = read_lines(&file);
    assert_in_order(&lines, &expected_text_order(), "log file (child)");
    let j = wait_for(&journal, 53);
    assert_eq!(
        j.len(),
        53,
        "every line reached journald, none lost to the queue limit"
    );
    for (i, d) in j[1..51].iter().enumerate() {
        assert_eq!(d["MESSAGE"], format!("held line {i}  n={i}"));
        assert_eq!(d["QUIESCE_TARGET"], module_path!());
    }
    assert_eq!(j[51]["MESSAGE"], "multi\nline message");
    assert_eq!(j[51]["PRIORITY"], "4");
    assert_eq!(j[52]["MESSAGE"], "line after release");
}

fn child_json(dir: &Path) {
    let file = dir.join("quiesce.jsonl");
    logging::init_with(LogOptions {
        format: LogFormat::Json,
        stderr: false,
        file: Some(file.clone()),
        journal_socket: None,
        filter: "info".to_string(),
    })
    .unwrap();
    tracing::info!("before hold");
    assert_eq!(read_lines(&file).len(), 1);
    logging::hold();
    for i in 0..20 {
        tracing::info!(n = i, mount = "/srv/da\"ta", "held {i}");
    }
    assert_eq!(read_lines(&file).len(), 1, "written while held");
    logging::release();
    tracing::warn!("after release");
    assert_eq!(read_lines(&file).len(), 22);
}

fn child_overflow(dir: &Path) {
    let file = dir.join("big.log");
    logging::init_with(LogOptions {
        format: LogFormat::Text,
        stderr: false,
        file: Some(file.clone()),
        journal_socket: None,
        filter: "info".to_string(),
    })
    .unwrap();
    let filler = "x".repeat(4000);
    logging::hold();
    for i in 0..BIG_LINES {
        tracing::info!("big line {i:05} {filler}");
    }
    assert_eq!(
        std::fs::metadata(&file).unwrap().len(),
        0,
        "written while held"
    );
    logging::release();
    tracing::info!("after release");
}

fn child_stalled(dir: &Path) {
    let file = dir.join("stalled.log");
    let sock = dir.join("journal.sock");
    let _never_read = UnixDatagram::bind(&sock).unwrap();
    logging::init_with(LogOptions {
        format: LogFormat::Text,
        stderr: false,
        file: Some(file),
        journal_socket: Some(sock),
        filter: "info".to_string(),
    })
    .unwrap();
    let start = Instant::now();
    for i in 0..200 {
        tracing::info!("line {i}");
    }
    let took = start.elapsed().as_secs_f64();
    std::fs::write(dir.join("elapsed"), took.to_string()).unwrap();
}

// ---- helpers ----

fn run_child(scenario: &str, dir: &Path) {
    let stderr = std::fs::File::create(dir.join("stderr.txt")).unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "logging::subprocess_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(SCENARIO_ENV, scenario)
        .env(DIR_ENV, dir)
        .env_remove("QUIESCE_LOG")
        .stdin(Stdio::null())
        .stderr(stderr)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child {scenario} failed: {stdout}\n--- stderr ---\n{}",
        std::fs::read_to_string(dir.join("stderr.txt")).unwrap_or_default()
    );
}

fn read_lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Each expected fragment is found on a line after the previous one's line.
fn assert_in_order(lines: &[String], expected: &[String], what: &str) {
    let mut from = 0;
    for e in expected {
        match lines[from..].iter().position(|l| l.contains(e.as_str())) {
            Some(p) => from += p + 1,
            None => panic!(
                "{what}: {e:?} missing or out of order in:\n{}",
                lines.join("\n")
            ),
        }
    }
}

type Datagrams = Arc<Mutex<Vec<HashMap<String, String>>>>;

/// Receive and decode datagrams on a thread, as journald would.
fn collect(rx: UnixDatagram) -> Datagrams {
    let got: Datagrams = Arc::default();
    let sink = got.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        while let Ok(n) = rx.recv(&mut buf) {
            sink.lock().unwrap().push(decode_journal(&buf[..n]));
        }
    });
    got
}

/// Wait (up to 10 s) until `n` datagrams arrived; returns what arrived.
fn wait_for(got: &Datagrams, n: usize) -> Vec<HashMap<String, String>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.lock().unwrap().len() < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    got.lock().unwrap().clone()
}

/// Decode a journald native-protocol datagram (both field forms).
fn decode_journal(mut d: &[u8]) -> HashMap<String, String> {
    let mut fields = HashMap::new();
    while !d.is_empty() {
        let nl = d
            .iter()
            .position(|&b| b == b'\n')
            .expect("field ends with a newline");
        let line = &d[..nl];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            fields.insert(
                String::from_utf8(line[..eq].to_vec()).unwrap(),
                String::from_utf8(line[eq + 1..].to_vec()).unwrap(),
            );
            d = &d[nl + 1..];
        } else {
            let name = String::from_utf8(line.to_vec()).unwrap();
            let len = u64::from_le_bytes(d[nl + 1..nl + 9].try_into().unwrap()) as usize;
            let value = &d[nl + 9..nl + 9 + len];
            assert_eq!(d[nl + 9 + len], b'\n');
            fields.insert(name, String::from_utf8(value.to_vec()).unwrap());
            d = &d[nl + 10 + len..];
        }
    }
    fields
}
