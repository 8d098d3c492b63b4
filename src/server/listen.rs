//! Sockets: one server per socket, connection slots, reading a request in time, and the
//! accept loop of `quiesce serve`.

use super::http::{self, Request};
use super::{problem_json, Server};
use crate::codes::ErrorCode;
use crate::config::Config;
use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most connections served at once per caller: per uid on the unix socket (root, each
/// allowed uid, and all refused callers together each have their own), and for the TCP
/// listener as a whole. A connection beyond that is closed at once, unanswered. Each
/// connection costs a thread: without a bound, idle connections would exhaust threads, and
/// with one bound for everybody, one user could lock root out.
pub const MAX_CONNECTIONS: usize = 32;

/// Time a caller has to send its whole request: one deadline for all reads, so a caller
/// trickling a byte at a time is cut off too (a per-read timeout would let it stay forever).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Time a caller has to take the response.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// After an error answer, how long unread input is drained so that the caller can read the
/// answer instead of getting a reset (bounded in time and bytes).
const DRAIN_TIME: Duration = Duration::from_secs(2);
const DRAIN_BYTES: usize = 4 * 1024 * 1024;

/// Who a connection's slot is counted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Pool {
    /// A unix-socket caller allowed by its uid.
    Uid(u32),
    /// Unix-socket callers that will be refused (all together).
    Refused,
    /// The TCP listener (callers are only known after the token check).
    Tcp,
}

/// Connection slots, counted per [`Pool`].
#[derive(Default)]
struct Slots(Mutex<HashMap<Pool, usize>>);

/// One slot, given back on drop.
struct Slot {
    slots: Arc<Slots>,
    pool: Pool,
}

impl Slots {
    fn take(self: &Arc<Self>, pool: Pool) -> Option<Slot> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(pool).or_insert(0);
        if *n >= MAX_CONNECTIONS {
            return None;
        }
        *n += 1;
        Some(Slot {
            slots: Arc::clone(self),
            pool,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self.slots.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.pool) {
            *n = n.saturating_sub(1);
        }
    }
}

/// A connected socket (unix or TCP) with settable timeouts.
trait Socket: Read + std::io::Write {
    fn set_timeouts(&self, read: Duration, write: Duration) -> std::io::Result<()>;
    fn shutdown_write(&self);
}

impl Socket for UnixStream {
    fn set_timeouts(&self, read: Duration, write: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(read))?;
        self.set_write_timeout(Some(write))
    }
    fn shutdown_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

impl Socket for std::net::TcpStream {
    fn set_timeouts(&self, read: Duration, write: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(read))?;
        self.set_write_timeout(Some(write))
    }
    fn shutdown_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

/// Reads from a socket that all end by one deadline.
struct ByDeadline<'a, S: Socket> {
    socket: &'a mut S,
    deadline: Instant,
}

impl<S: Socket> Read for ByDeadline<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        self.socket.set_timeouts(left, RESPONSE_TIMEOUT)?;
        self.socket.read(buf)
    }
}

/// Read one request within [`REQUEST_TIMEOUT`].
fn read_request_in_time<S: Socket>(socket: &mut S) -> Result<Request, http::HttpError> {
    http::read_request(&mut ByDeadline {
        socket,
        deadline: Instant::now() + REQUEST_TIMEOUT,
    })
}

/// Answer `resp`; when input may be left unread (a refused request), stop writing and read
/// the rest away for a bounded time, so the caller gets the answer rather than a reset.
fn answer<S: Socket>(stream: &mut S, resp: &http::Response, drain: bool) {
    let _ = resp.write_to(stream);
    if !drain {
        return;
    }
    stream.shutdown_write();
    let mut sink = ByDeadline {
        socket: stream,
        deadline: Instant::now() + DRAIN_TIME,
    };
    let _ = std::io::copy(
        &mut (&mut sink).take(DRAIN_BYTES as u64),
        &mut std::io::sink(),
    );
}

fn serve_connection<S: Socket>(server: &Arc<Server>, mut stream: S, authed: bool) {
    let (resp, drain) = match read_request_in_time(&mut stream) {
        Err(http::HttpError::Truncated) => return,
        Err(e) => {
            let status = match e {
                http::HttpError::BodyTooLarge | http::HttpError::HeadTooLarge => 413,
                _ => 400,
            };
            (
                problem_json(status, ErrorCode::InvalidRequest, e.to_string()),
                true,
            )
        }
        Ok(req) if authed || server.bearer_ok(&req) => (server.handle(&req), false),
        Ok(_) => (
            problem_json(
                401,
                ErrorCode::Unauthorized,
                "missing or wrong bearer token",
            ),
            false,
        ),
    };
    answer(&mut stream, &resp, drain);
}

/// The uid of a unix-socket peer (None: unknown).
fn peer_uid(stream: &UnixStream) -> Option<u32> {
    rustix::net::sockopt::socket_peercred(stream.as_fd())
        .ok()
        .map(|c| c.uid.as_raw())
}

/// Hand one unix-socket connection to a thread, within its caller's slots. The peer's
/// credentials are checked first, so refused callers never take an allowed caller's slot.
fn accept_unix(server: &Arc<Server>, slots: &Arc<Slots>, stream: UnixStream) {
    let uid = peer_uid(&stream);
    let allowed = uid.is_some_and(|u| server.uid_allowed(u));
    let pool = match uid {
        Some(u) if allowed => Pool::Uid(u),
        _ => Pool::Refused,
    };
    let Some(slot) = slots.take(pool) else {
        return;
    };
    let server = Arc::clone(server);
    std::thread::spawn(move || {
        let _slot = slot;
        let mut stream = stream;
        stream.set_nonblocking(false).ok();
        stream.set_timeouts(REQUEST_TIMEOUT, RESPONSE_TIMEOUT).ok();
        if allowed {
            serve_connection(&server, stream, true);
        } else {
            // Read the (bounded) request first so the caller gets the answer rather than
            // a reset connection.
            let _ = read_request_in_time(&mut stream);
            let resp = problem_json(403, ErrorCode::Unauthorized, "caller not allowed");
            answer(&mut stream, &resp, true);
        }
    });
}

fn accept_tcp(server: &Arc<Server>, slots: &Arc<Slots>, stream: std::net::TcpStream) {
    let Some(slot) = slots.take(Pool::Tcp) else {
        return;
    };
    let server = Arc::clone(server);
    std::thread::spawn(move || {
        let _slot = slot;
        stream.set_nonblocking(false).ok();
        stream.set_timeouts(REQUEST_TIMEOUT, RESPONSE_TIMEOUT).ok();
        serve_connection(&server, stream, false);
    });
}

/// The socket of a running server: its lock (one server per socket) and the identity of
/// the socket file it created (so that it only ever removes its own).
struct Bound {
    listener: UnixListener,
    path: PathBuf,
    /// (device, inode) of the socket file this server bound.
    identity: (u64, u64),
    _lock: OwnedFd,
}

impl Drop for Bound {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| (m.dev(), m.ino()) == self.identity);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// `SOCKET.lock` beside the socket, locked for the server's life: a second server for the
/// same socket is refused instead of taking the socket over.
fn lock_socket(path: &Path) -> Result<OwnedFd, String> {
    use rustix::fs::{flock, open, FlockOperation, Mode, OFlags};
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let fd = open(
        Path::new(&name),
        OFlags::CREATE | OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| format!("cannot open {}: {e}", Path::new(&name).display()))?;
    flock(&fd, FlockOperation::NonBlockingLockExclusive).map_err(|_| {
        format!(
            "another quiesce serve is already listening on {} (one server per socket)",
            path.display()
        )
    })?;
    Ok(fd)
}

/// Replace whatever is at `path` with a unix socket that only root can use (mode 0600 from
/// the first instant: the umask is tight while it is created).
pub fn bind_private(path: &Path) -> Result<UnixListener, String> {
    let _ = std::fs::remove_file(path);
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let listener = UnixListener::bind(path);
    rustix::process::umask(old);
    let listener = listener.map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    Ok(listener)
}

/// Bind the socket at `path`, whose lock is held.
fn bind(path: &Path, lock: OwnedFd) -> Result<Bound, String> {
    // We hold the lock: a socket file left here is a dead server's.
    let listener = bind_private(path)?;
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
    Ok(Bound {
        listener,
        path: path.to_path_buf(),
        identity: (meta.dev(), meta.ino()),
        _lock: lock,
    })
}

/// Run `quiesce serve` until SIGTERM/SIGINT. Returns the exit code.
pub fn serve(cfg: Config) -> i32 {
    let socket_path = cfg.server.socket.clone();
    let tcp = cfg.server.tcp_listen.clone();
    let group = cfg.group.clone();
    let server = match Server::new(cfg) {
        Ok(s) => s,
        Err(p) => {
            eprintln!("quiesce: {p}");
            return 1;
        }
    };
    if let Some(dir) = socket_path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    // One server per socket; then, before answering anybody, thaw what a crashed run left
    // frozen.
    let bound = match lock_socket(&socket_path).and_then(|lock| {
        if let Err(p) = server.api().recover_at_start() {
            eprintln!("quiesce: {p}");
        }
        bind(&socket_path, lock)
    }) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("quiesce: {}: {e}", ErrorCode::StateError);
            return 1;
        }
    };
    if let Some(group) = group {
        crate::group::member::start(group, Arc::clone(server.api()));
    }
    let tcp_listener = match tcp.as_deref().map(std::net::TcpListener::bind) {
        None => None,
        Some(Ok(l)) => Some(l),
        Some(Err(e)) => {
            eprintln!(
                "quiesce: cannot listen on TCP {}: {e}",
                tcp.unwrap_or_default()
            );
            return 1;
        }
    };
    bound.listener.set_nonblocking(true).ok();
    if let Some(t) = &tcp_listener {
        t.set_nonblocking(true).ok();
    }
    tracing::info!(socket = %socket_path.display(), tcp = ?tcp, "quiesce serve listening");
    eprintln!("quiesce serve: listening on {}", socket_path.display());
    let slots = Arc::new(Slots::default());
    while !crate::termination::requested() {
        let mut fds = vec![rustix::event::PollFd::new(
            &bound.listener,
            rustix::event::PollFlags::IN,
        )];
        if let Some(t) = &tcp_listener {
            fds.push(rustix::event::PollFd::new(t, rustix::event::PollFlags::IN));
        }
        let timeout = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 200_000_000,
        };
        let _ = rustix::event::poll(&mut fds, Some(&timeout));
        while let Ok((stream, _)) = bound.listener.accept() {
            accept_unix(&server, &slots, stream);
        }
        if let Some(t) = &tcp_listener {
            while let Ok((stream, _)) = t.accept() {
                accept_tcp(&server, &slots, stream);
            }
        }
    }
    tracing::info!("quiesce serve: shutting down");
    server.api().shutdown();
    drop(bound);
    0
}
