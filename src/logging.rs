//! Logging: human-readable or JSON lines to stderr (and optionally a file), journald when its
//! socket exists. While anything is frozen, every line is buffered in memory and written
//! after the thaw, so quiesce never writes to a frozen filesystem.
//!
//! How it fits together:
//! - [`init`] installs a `tracing` subscriber with one `fmt` layer per sink (stderr, file,
//!   journald). Their writers do not write: they *stage* the formatted bytes of the current
//!   event in a thread-local. A last layer (run after all the others, `Layered` calls inner
//!   layers first) commits the staged parts of the event as one unit to the shared output.
//! - The shared output writes the unit at once, or, while held ([`hold`]), appends it to an
//!   in-memory buffer bounded by [`HOLD_LIMIT_BYTES`]. Once full, further events are
//!   dropped (the buffer keeps a contiguous, ordered prefix) and counted; [`release`] writes
//!   the buffer in order, then logs one warning saying how many lines were dropped.
//! - While held nothing is written anywhere, stderr included: stderr may be a pipe read by
//!   a journald that is itself stalled on a frozen `/var/log`.
//! - journald gets the native protocol over a unix datagram socket (MESSAGE, PRIORITY,
//!   SYSLOG_IDENTIFIER=quiesce, QUIESCE_TARGET), with the length-prefixed encoding for
//!   values containing a newline. A send waits at most one second for room in journald's
//!   queue; after a timeout journald counts as stalled for ten seconds (lines counted and
//!   reported when it accepts lines again), so a stuck journald cannot stall the agent. When stderr is itself connected to the journal
//!   (`JOURNAL_STREAM` names stderr, as under systemd) stderr is not used, so lines are not
//!   logged twice.
//!
//! [`hold`] and [`release`] work whether or not [`init`] was called (they then only count),
//! and nest: each `hold` needs its `release`, the buffer is written at the last one.

use crate::config::{LogConfig, LogFormat};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::{EnvFilter, Layer};

/// The most bytes of formatted log lines kept in memory while held (all sinks together).
pub const HOLD_LIMIT_BYTES: usize = 8 * 1024 * 1024;

/// Where journald listens for the native protocol.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Environment variable overriding the level filter (`EnvFilter` syntax, e.g.
/// `quiesce=debug`); without it the level comes from the verbosity.
pub const FILTER_ENV: &str = "QUIESCE_LOG";

/// Largest MESSAGE sent to journald in one datagram; longer messages are cut (the
/// socket's datagram limit is ~200 KiB by default, and memfd passing is not worth it).
const JOURNAL_MAX_MESSAGE: usize = 48 * 1024;

/// How long one datagram may wait for room in journald's queue (the kernel queues only
/// `net.unix.max_dgram_qlen` datagrams: 10 by default, 512 with systemd's sysctl), so a
/// burst such as the release of the hold buffer is paced by journald instead of lost.
const JOURNAL_SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// After a timed-out send, how long journald is considered stalled (lines counted, not sent).
const JOURNAL_STALL_BACKOFF: Duration = Duration::from_secs(10);

/// Logging could not be set up as configured.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The log file could not be opened; the other sinks were installed anyway.
    #[error("log file {}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid log filter {filter:?}: {message}")]
    Filter { filter: String, message: String },
    /// Some other `tracing` subscriber is already the global default.
    #[error("another logger is already installed")]
    AlreadySet,
}

/// Everything [`init_with`] needs; [`LogOptions::from_config`] gives the defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct LogOptions {
    pub format: LogFormat,
    /// Write to stderr.
    pub stderr: bool,
    /// Append to this file (created 0600, its directory 0700 if missing).
    pub file: Option<PathBuf>,
    /// Send to journald at this datagram socket.
    pub journal_socket: Option<PathBuf>,
    /// `EnvFilter` directives.
    pub filter: String,
}

impl LogOptions {
    /// The production choice: the configured format and file; journald when its socket
    /// exists; stderr unless it is connected to the journal already; level `info`, `debug`
    /// (`-v`) or `trace` (`-vv`), unless `QUIESCE_LOG` says otherwise.
    pub fn from_config(cfg: &LogConfig, verbosity: u8) -> LogOptions {
        let journal = Path::new(JOURNAL_SOCKET);
        let filter = std::env::var(FILTER_ENV)
            .ok()
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| {
                match verbosity {
                    0 => "info",
                    1 => "debug",
                    _ => "trace",
                }
                .to_string()
            });
        LogOptions {
            format: cfg.format,
            stderr: !stderr_is_journal(),
            file: cfg.file.clone(),
            journal_socket: journal.exists().then(|| journal.to_path_buf()),
            filter,
        }
    }
}

/// Whether stderr is the journal stream systemd connected us to (`JOURNAL_STREAM` is
/// `DEVICE:INODE` of that stream).
fn stderr_is_journal() -> bool {
    let Ok(v) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(st) = rustix::fs::fstat(std::io::stderr()) else {
        return false;
    };
    v == format!("{}:{}", st.st_dev, st.st_ino)
}

static INITIALIZED: AtomicBool = AtomicBool::new(false);

/// Set up logging from the configuration (see [`LogOptions::from_config`]). Call once from
/// `main`, after the configuration is loaded; later calls do nothing and return `Ok` (the
/// first configuration stays). If only the log file fails, the other sinks are installed
/// and the file error is returned, so the caller can log it.
pub fn init(cfg: &LogConfig, verbosity: u8) -> Result<(), LogError> {
    init_with(LogOptions::from_config(cfg, verbosity))
}

/// [`init`] with explicit sinks (tests point journald at their own socket).
pub fn init_with(opts: LogOptions) -> Result<(), LogError> {
    if INITIALIZED.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    let filter = match EnvFilter::try_new(&opts.filter) {
        Ok(f) => f,
        Err(e) => {
            INITIALIZED.store(false, Ordering::SeqCst);
            return Err(LogError::Filter {
                filter: opts.filter.clone(),
                message: e.to_string(),
            });
        }
    };

    let mut file_error = None;
    let file = opts
        .file
        .as_deref()
        .and_then(|path| match open_log_file(path) {
            Ok(f) => Some(f),
            Err(source) => {
                file_error = Some(LogError::File {
                    path: path.to_path_buf(),
                    source,
                });
                None
            }
        });
    let journal = opts
        .journal_socket
        .as_deref()
        .and_then(|p| Journal::new(p).ok());

    let layers = layers(opts.format, opts.stderr, file.is_some(), journal.is_some());
    {
        let mut out = output();
        out.stderr = opts.stderr;
        out.file = file;
        out.journal = journal;
    }
    let subscriber = tracing_subscriber::registry()
        .with(layers)
        .with(filter)
        .with(CommitLayer);
    if tracing::subscriber::set_global_default(subscriber).is_err() {
        return Err(LogError::AlreadySet);
    }
    match file_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

type Boxed = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;

/// One formatting layer per sink in use: stderr and the file in `format`, the journal as
/// bare messages (it has its own time and priority).
fn layers(format: LogFormat, stderr: bool, file: bool, journal: bool) -> Vec<Boxed> {
    let mut layers: Vec<Boxed> = Vec::new();
    let text_or_json = |sink: Sink, ansi: bool| -> Boxed {
        let base = tracing_subscriber::fmt::layer().with_writer(StageWriter(sink));
        match format {
            LogFormat::Text => base.with_ansi(ansi).boxed(),
            LogFormat::Json => base
                .json()
                .flatten_event(true)
                .with_span_list(false)
                .boxed(),
        }
    };
    if stderr {
        use std::io::IsTerminal;
        layers.push(text_or_json(Sink::Stderr, io::stderr().is_terminal()));
    }
    if file {
        layers.push(text_or_json(Sink::File, false));
    }
    if journal {
        layers.push(
            tracing_subscriber::fmt::layer()
                .with_writer(StageWriter(Sink::Journal))
                .without_time()
                .with_level(false)
                .with_target(false)
                .with_ansi(false)
                .boxed(),
        );
    }
    layers
}

fn open_log_file(path: &Path) -> io::Result<File> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)?;
        }
    }
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

/// Start buffering (called just before the first freeze).
pub fn hold() {
    output().holds += 1;
}

/// Stop buffering and write what was buffered (called after the last thaw). With nested
/// holds, only the last release writes. A release without a hold does nothing.
pub fn release() {
    let dropped = {
        let mut out = output();
        if out.holds == 0 {
            return;
        }
        out.holds -= 1;
        if out.holds > 0 {
            return;
        }
        let buffered = std::mem::take(&mut out.buffer);
        out.buffered_bytes = 0;
        for entry in buffered {
            out.write(&entry);
        }
        let dropped = (out.dropped_lines, out.dropped_bytes);
        out.dropped_lines = 0;
        out.dropped_bytes = 0;
        dropped
    };
    if dropped.0 > 0 {
        tracing::warn!(
            dropped_lines = dropped.0,
            dropped_bytes = dropped.1,
            "{} log lines ({} bytes) were dropped while filesystems were frozen: the \
             in-memory log buffer ({} bytes) was full",
            dropped.0,
            dropped.1,
            HOLD_LIMIT_BYTES
        );
    }
}

/// Whether logs are being held right now.
pub fn is_held() -> bool {
    output().holds > 0
}

/// The journald native-protocol datagram for one message: `PRIORITY`,
/// `SYSLOG_IDENTIFIER=quiesce`, `QUIESCE_TARGET` (when given) and `MESSAGE`. A value
/// containing a newline uses the binary form (`NAME\n`, 64-bit little-endian length,
/// value, `\n`), so multi-line messages stay one entry.
pub fn journal_datagram(priority: u8, target: Option<&str>, message: &[u8]) -> Vec<u8> {
    let mut d = Vec::with_capacity(message.len() + 96);
    let mut field = |name: &str, value: &[u8]| {
        if value.contains(&b'\n') {
            d.extend_from_slice(name.as_bytes());
            d.push(b'\n');
            d.extend_from_slice(&(value.len() as u64).to_le_bytes());
            d.extend_from_slice(value);
            d.push(b'\n');
        } else {
            d.extend_from_slice(name.as_bytes());
            d.push(b'=');
            d.extend_from_slice(value);
            d.push(b'\n');
        }
    };
    field("PRIORITY", priority.to_string().as_bytes());
    field("SYSLOG_IDENTIFIER", b"quiesce");
    if let Some(t) = target {
        field("QUIESCE_TARGET", t.as_bytes());
    }
    field("MESSAGE", message);
    d
}

/// syslog priority of a level (journald's PRIORITY).
pub fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

// ---- internals ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    Stderr,
    File,
    Journal,
}

/// One sink's formatted bytes of one event.
struct Part {
    sink: Sink,
    level: Level,
    /// Only for the journal (a field of its own there).
    target: Option<String>,
    bytes: Vec<u8>,
}

/// All sinks' parts of one event: buffered, written or dropped together.
struct Entry {
    parts: Vec<Part>,
}

impl Entry {
    fn size(&self) -> usize {
        self.parts.iter().map(|p| p.bytes.len()).sum()
    }
}

struct Journal {
    socket: UnixDatagram,
    path: PathBuf,
    /// After a send timed out, lines are not offered to journald until then.
    stalled_until: Option<Instant>,
    /// Lines journald did not take; reported with the next line that goes through.
    unsent: u64,
}

impl Journal {
    fn new(path: &Path) -> io::Result<Journal> {
        let socket = UnixDatagram::unbound()?;
        socket.set_write_timeout(Some(JOURNAL_SEND_TIMEOUT))?;
        Ok(Journal {
            socket,
            path: path.to_path_buf(),
            stalled_until: None,
            unsent: 0,
        })
    }

    fn send(&mut self, level: Level, target: Option<&str>, bytes: &[u8]) {
        if let Some(until) = self.stalled_until {
            if Instant::now() < until {
                self.unsent += 1;
                return;
            }
            self.stalled_until = None;
        }
        if self.unsent > 0 {
            let note = format!(
                "{} log lines were not sent to journald (it did not accept them within {:?})",
                self.unsent, JOURNAL_SEND_TIMEOUT
            );
            let datagram = journal_datagram(priority(Level::WARN), None, note.as_bytes());
            if !self.try_send(&datagram) {
                self.unsent += 1;
                return;
            }
            self.unsent = 0;
        }
        let mut message = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        if message.len() > JOURNAL_MAX_MESSAGE {
            message = &message[..JOURNAL_MAX_MESSAGE];
        }
        let datagram = journal_datagram(priority(level), target, message);
        if !self.try_send(&datagram) {
            self.unsent += 1;
        }
    }

    /// One datagram; a full queue is waited on for at most `JOURNAL_SEND_TIMEOUT`, after
    /// which journald counts as stalled for `JOURNAL_STALL_BACKOFF` (the agent must not
    /// crawl at one timeout per line behind a stuck journald).
    fn try_send(&mut self, datagram: &[u8]) -> bool {
        match self.socket.send_to(datagram, &self.path) {
            Ok(_) => true,
            Err(e) => {
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) {
                    self.stalled_until = Some(Instant::now() + JOURNAL_STALL_BACKOFF);
                }
                false
            }
        }
    }
}

struct Output {
    holds: u32,
    buffer: VecDeque<Entry>,
    buffered_bytes: usize,
    dropped_lines: u64,
    dropped_bytes: u64,
    stderr: bool,
    file: Option<File>,
    journal: Option<Journal>,
}

static OUTPUT: Mutex<Output> = Mutex::new(Output {
    holds: 0,
    buffer: VecDeque::new(),
    buffered_bytes: 0,
    dropped_lines: 0,
    dropped_bytes: 0,
    stderr: false,
    file: None,
    journal: None,
});

fn output() -> MutexGuard<'static, Output> {
    // A panic while logging must not disable hold/release for the rest of the run.
    OUTPUT.lock().unwrap_or_else(|p| p.into_inner())
}

impl Output {
    fn accept(&mut self, entry: Entry) {
        if self.holds == 0 {
            self.write(&entry);
            return;
        }
        let size = entry.size();
        if self.dropped_lines > 0 || self.buffered_bytes + size > HOLD_LIMIT_BYTES {
            self.dropped_lines += 1;
            self.dropped_bytes += size as u64;
            return;
        }
        self.buffered_bytes += size;
        self.buffer.push_back(entry);
    }

    /// Write errors are ignored: there is nowhere left to report them.
    fn write(&mut self, entry: &Entry) {
        for part in &entry.parts {
            match part.sink {
                Sink::Stderr => {
                    if self.stderr {
                        let _ = io::stderr().lock().write_all(&part.bytes);
                    }
                }
                Sink::File => {
                    if let Some(f) = self.file.as_mut() {
                        let _ = f.write_all(&part.bytes);
                    }
                }
                Sink::Journal => {
                    if let Some(j) = self.journal.as_mut() {
                        j.send(part.level, part.target.as_deref(), &part.bytes);
                    }
                }
            }
        }
    }
}

thread_local! {
    /// The parts of the event being formatted on this thread.
    static STAGED: RefCell<Vec<Part>> = const { RefCell::new(Vec::new()) };
}

/// A `MakeWriter` whose writers stage bytes for [`CommitLayer`] instead of writing.
struct StageWriter(Sink);

struct StagedLine {
    sink: Sink,
    level: Level,
    target: Option<String>,
    bytes: Vec<u8>,
}

impl Write for StagedLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for StagedLine {
    fn drop(&mut self) {
        if self.bytes.is_empty() {
            return;
        }
        let part = Part {
            sink: self.sink,
            level: self.level,
            target: self.target.take(),
            bytes: std::mem::take(&mut self.bytes),
        };
        let _ = STAGED.try_with(|s| s.borrow_mut().push(part));
    }
}

impl<'a> MakeWriter<'a> for StageWriter {
    type Writer = StagedLine;

    fn make_writer(&'a self) -> StagedLine {
        StagedLine {
            sink: self.0,
            level: Level::INFO,
            target: None,
            bytes: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> StagedLine {
        StagedLine {
            sink: self.0,
            level: *meta.level(),
            target: (self.0 == Sink::Journal).then(|| meta.target().to_string()),
            bytes: Vec::new(),
        }
    }
}

/// The last layer: hands the event's staged parts, as one entry, to the output.
struct CommitLayer;

impl<S: Subscriber> Layer<S> for CommitLayer {
    fn on_event(&self, _event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let parts = STAGED
            .try_with(|s| std::mem::take(&mut *s.borrow_mut()))
            .unwrap_or_default();
        if !parts.is_empty() {
            output().accept(Entry { parts });
        }
    }
}
