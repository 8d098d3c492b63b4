//! The real `quiesce` binary, run with arguments and read back typed:
//!
//! ```ignore
//! let run = support::quiesce(&["snapshot", "--json"]).config(&cfg).run();
//! let report = run.report(); // quiesce::report::Report, or a panic that shows the output
//! assert_eq!(report.consistency, Consistency::Application, "{}", run.describe());
//! ```
//!
//! stdin is /dev/null. Assertions read fields of [`Report`] instead of JSON by string key.
use quiesce::codes::ErrorCode;
use quiesce::report::Report;
use std::ffi::OsStr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// `quiesce ARGS` to be run; see the module documentation.
pub struct Quiesce {
    cmd: Command,
}

/// Start building `quiesce ARGS`.
pub fn quiesce(args: &[&str]) -> Quiesce {
    let mut cmd = Command::new(super::quiesce_bin());
    cmd.args(args).stdin(Stdio::null());
    Quiesce { cmd }
}

impl Quiesce {
    /// Append `--config PATH`.
    pub fn config(mut self, path: &Path) -> Quiesce {
        self.cmd.arg("--config").arg(path);
        self
    }

    /// Append more arguments.
    pub fn args<S: AsRef<OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Quiesce {
        self.cmd.args(args);
        self
    }

    /// Set an environment variable of the run.
    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Quiesce {
        self.cmd.env(key, value);
        self
    }

    /// Run it to the end.
    pub fn run(self) -> Run {
        self.spawn().wait()
    }

    /// Start it, stdout and stderr captured; [`Running::wait`] gives the [`Run`].
    pub fn spawn(mut self) -> Running {
        let spawned_at = SystemTime::now();
        let started = Instant::now();
        let child = self
            .cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("run {:?}: {e}", self.cmd));
        Running {
            child,
            spawned_at,
            started,
        }
    }
}

/// A started run of the binary.
pub struct Running {
    pub child: Child,
    spawned_at: SystemTime,
    started: Instant,
}

impl Running {
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Wait for it to end.
    pub fn wait(self) -> Run {
        let out = self.child.wait_with_output().expect("wait for quiesce");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            spawned_at: self.spawned_at,
            elapsed: self.started.elapsed(),
        }
    }
}

/// One finished run of the binary.
#[derive(Debug, Clone)]
pub struct Run {
    /// The exit code (-1 when killed by a signal).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// When it was spawned, and how long it took.
    pub spawned_at: SystemTime,
    pub elapsed: Duration,
}

impl Run {
    /// The JSON report on stdout (`--json`), typed. Panics, showing the output, if there is
    /// none.
    pub fn report(&self) -> Report {
        self.try_report()
            .unwrap_or_else(|e| panic!("quiesce printed no JSON report ({e})\n{}", self.describe()))
    }

    /// The JSON report on stdout, if stdout is one.
    pub fn try_report(&self) -> Result<Report, serde_json::Error> {
        serde_json::from_str(self.stdout.trim())
    }

    /// The report's error codes, in order.
    pub fn error_codes(&self) -> Vec<ErrorCode> {
        codes(&self.report())
    }

    /// Everything worth seeing when an assertion fails.
    pub fn describe(&self) -> String {
        format!(
            "exit {}\nstdout: {}\nstderr: {}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// The error codes of a report, in order.
pub fn codes(report: &Report) -> Vec<ErrorCode> {
    report.errors.iter().map(|e| e.code).collect()
}

/// The names of a report's error codes, as they are printed (`Pre-ScriptTimeout`).
pub fn code_names(report: &Report) -> Vec<String> {
    report
        .errors
        .iter()
        .map(|e| e.code.as_str().to_string())
        .collect()
}
