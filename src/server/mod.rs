//! Host-driven mode over HTTP: `quiesce serve`, a thin adapter over [`crate::api`].
//!
//! A hypervisor or backup service calls *prepare* (pre hooks + freeze; answers once frozen),
//! takes its snapshot (or asks quiesce's provider to, with *snapshot*), then calls *release*
//! (thaw + post hooks; answers with the final report). The rules (one operation at a time,
//! idempotency per id, the deadline) are the registry's; this module only speaks HTTP.
//!
//! The server is synchronous: a poll loop accepts connections and a thread per connection
//! answers it.
//!
//! API (HTTP/1.1, JSON; unix socket mode 0600, callers checked by peer credentials; optional
//! TCP listener that requires `Authorization: Bearer <token>`):
//! - `POST /v1/operations/{id}/prepare` body (every field optional)
//!   `{"deadline": "30s", "scope": "plan" | "sync-only" | "nothing" | {"mounts": [..]},
//!   "caller": "http" | ...}`
//! - `POST /v1/operations/{id}/snapshot` (the configured provider takes the snapshot)
//! - `POST /v1/operations/{id}/release`
//! - `GET  /v1/operations/{id}`
//! - `GET  /healthz`, `GET /metrics`

pub mod client;
pub mod http;
mod route;

pub use route::{route, Refusal, Route, MAX_DEADLINE};

use crate::api::{Api, ApiError, OpState, PrepareAnswer, PrepareRequest};
use crate::codes::{ErrorCode, Problem};
use crate::config::Config;
use crate::pipeline;
use http::{Request, Response};
use serde_json::json;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most connections served at once, per listener (the unix socket and the TCP one each have
/// their own); a connection beyond that is closed at once, unanswered.
/// Each connection costs a thread, and a TCP listener is reachable by every local user
/// before the token is checked: without a bound, idle connections would exhaust threads.
pub const MAX_CONNECTIONS: usize = 32;

/// Time a caller has to send its whole request: one deadline for all reads, so a caller
/// trickling a byte at a time is cut off too (a per-read timeout would let it stay forever).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Time a caller has to take the response.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// One of the [`MAX_CONNECTIONS`] slots, given back on drop.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(count: &Arc<AtomicUsize>) -> Option<Slot> {
        if count.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            count.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Slot(Arc::clone(count)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A connected socket (unix or TCP) with settable timeouts.
trait Socket: Read + std::io::Write {
    fn set_timeouts(&self, read: Duration, write: Duration) -> std::io::Result<()>;
}

impl Socket for UnixStream {
    fn set_timeouts(&self, read: Duration, write: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(read))?;
        self.set_write_timeout(Some(write))
    }
}

impl Socket for std::net::TcpStream {
    fn set_timeouts(&self, read: Duration, write: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(read))?;
        self.set_write_timeout(Some(write))
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

/// The HTTP front end: the bearer token and the registry it adapts to.
pub struct Server {
    api: Arc<Api>,
    token: Option<Vec<u8>>,
}

fn problem_json(status: u16, code: ErrorCode, message: impl Into<String>) -> Response {
    Response::json(status, &json!({ "errors": [Problem::new(code, message)] }))
}

fn to_json<T: serde::Serialize>(status: u16, value: &T) -> Response {
    Response::json(
        status,
        &serde_json::to_value(value).unwrap_or(serde_json::Value::Null),
    )
}

/// The HTTP status of a refusal.
fn http_status(e: &ApiError) -> u16 {
    match e {
        ApiError::InProgress { .. } | ApiError::ShuttingDown | ApiError::NotPrepared { .. } => 409,
        ApiError::UnknownOperation(_) => 404,
        ApiError::InvalidRequest(_) | ApiError::NoProvider => 400,
        ApiError::Failed(_) | ApiError::Snapshot(_) => 500,
    }
}

fn refusal(e: &ApiError) -> Response {
    Response::json(http_status(e), &json!({ "errors": e.problems() }))
}

/// The root-only token file's content (at least 16 characters).
fn read_token(path: &std::path::Path) -> Result<Vec<u8>, Problem> {
    let mut text = String::new();
    crate::trust::open_config(path)
        .map_err(|e| Problem::new(ErrorCode::IncorrectConfigFile, e.to_string()))?
        .read_to_string(&mut text)
        .map_err(|e| Problem::new(ErrorCode::IncorrectConfigFile, e.to_string()))?;
    let t = text.trim().as_bytes().to_vec();
    if t.len() < 16 {
        return Err(Problem::new(
            ErrorCode::IncorrectConfigFile,
            "the server token must be at least 16 characters",
        ));
    }
    Ok(t)
}

impl Server {
    /// A server for `cfg`.
    pub fn new(cfg: Config) -> Result<Arc<Server>, Problem> {
        let token = match &cfg.server.token_file {
            Some(path) => Some(read_token(path)?),
            None => None,
        };
        Ok(Arc::new(Server {
            api: Api::new(cfg)?,
            token,
        }))
    }

    /// The registry this server adapts.
    pub fn api(&self) -> &Arc<Api> {
        &self.api
    }

    /// Answer one request (already authenticated). Which endpoint it is, and whether it is
    /// well formed, is decided first by [`route`], which has no side effects.
    pub fn handle(self: &Arc<Self>, req: &Request) -> Response {
        let cfg = self.api.config();
        match route(req, cfg.server.default_deadline) {
            Err(r) => problem_json(r.status, r.code, r.message),
            Ok(Route::Health) => Response::json(200, &json!({ "status": "ok" })),
            Ok(Route::Metrics) => Response::text(
                200,
                "text/plain; version=0.0.4",
                pipeline::metrics_text(cfg),
            ),
            Ok(Route::Prepare {
                id,
                deadline,
                scope,
                caller,
            }) => {
                let req = PrepareRequest {
                    id: id.to_string(),
                    deadline: Some(deadline),
                    scope,
                    caller,
                };
                match self.api.prepare(req) {
                    Ok(answer) => to_json(200, &answer),
                    Err(ApiError::Failed(report)) => to_json(
                        500,
                        &PrepareAnswer {
                            id: id.to_string(),
                            state: OpState::Failed,
                            frozen: Vec::new(),
                            errors: report.errors.clone(),
                            deadline_s: deadline.as_secs_f64(),
                            deadline_capped: false,
                        },
                    ),
                    Err(e) => refusal(&e),
                }
            }
            Ok(Route::Snapshot { id }) => match self.api.snapshot(id) {
                Ok(snapshots) => {
                    Response::json(200, &json!({ "operation_id": id, "snapshots": snapshots }))
                }
                Err(e) => refusal(&e),
            },
            Ok(Route::Release { id }) => match self.api.release(id) {
                Ok(report) => to_json(200, &report),
                Err(e) => refusal(&e),
            },
            Ok(Route::Status { id }) => match self.api.status(id) {
                Ok(status) => to_json(200, &status),
                Err(e) => refusal(&e),
            },
        }
    }

    /// Finish the active operation (thaw, post hooks) before the server exits.
    fn shutdown(&self) {
        self.api.shutdown();
    }

    /// Is this unix-socket peer allowed?
    fn unix_peer_allowed(&self, stream: &UnixStream) -> bool {
        match rustix::net::sockopt::socket_peercred(stream.as_fd()) {
            Ok(cred) => {
                let uid = cred.uid.as_raw();
                uid == 0 || self.api.config().server.allowed_uids.contains(&uid)
            }
            Err(_) => false,
        }
    }

    fn bearer_ok(&self, req: &Request) -> bool {
        let Some(token) = &self.token else {
            return false;
        };
        req.header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| http::constant_time_eq(given.trim().as_bytes(), token))
    }
}

fn serve_connection<S: Socket>(server: &Arc<Server>, mut stream: S, authed: bool) {
    let resp = match read_request_in_time(&mut stream) {
        Err(http::HttpError::Truncated) => return,
        Err(e) => problem_json(
            if matches!(
                e,
                http::HttpError::BodyTooLarge | http::HttpError::HeadTooLarge
            ) {
                413
            } else {
                400
            },
            ErrorCode::InvalidRequest,
            e.to_string(),
        ),
        Ok(req) => {
            if authed || server.bearer_ok(&req) {
                server.handle(&req)
            } else {
                problem_json(
                    401,
                    ErrorCode::Unauthorized,
                    "missing or wrong bearer token",
                )
            }
        }
    };
    let _ = resp.write_to(&mut stream);
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
    if let Some(group) = group {
        crate::group::member::start(group, Arc::clone(&server));
    }
    if let Some(dir) = socket_path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::remove_file(&socket_path);
    // Create the socket with no access for anybody but root from the first instant.
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let listener = UnixListener::bind(&socket_path);
    rustix::process::umask(old);
    let listener = match listener {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "quiesce: {}: cannot listen on {}: {e}",
                ErrorCode::StateError,
                socket_path.display()
            );
            return 1;
        }
    };
    let _ = std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o600));
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
    listener.set_nonblocking(true).ok();
    if let Some(t) = &tcp_listener {
        t.set_nonblocking(true).ok();
    }
    tracing::info!(socket = %socket_path.display(), tcp = ?tcp, "quiesce serve listening");
    eprintln!("quiesce serve: listening on {}", socket_path.display());
    let unix_connections = Arc::new(AtomicUsize::new(0));
    let tcp_connections = Arc::new(AtomicUsize::new(0));
    loop {
        if crate::freeze::guard::termination_requested() {
            break;
        }
        let mut fds = vec![rustix::event::PollFd::new(
            &listener,
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
        while let Ok((stream, _)) = listener.accept() {
            // Over the limit: closed unanswered (only root and allowed uids can connect).
            let Some(slot) = Slot::take(&unix_connections) else {
                continue;
            };
            let server = Arc::clone(&server);
            std::thread::spawn(move || {
                let _slot = slot;
                stream.set_nonblocking(false).ok();
                stream.set_timeouts(REQUEST_TIMEOUT, RESPONSE_TIMEOUT).ok();
                let allowed = server.unix_peer_allowed(&stream);
                if allowed {
                    serve_connection(&server, stream, true);
                } else {
                    // Read the (bounded) request first so the caller gets the answer rather
                    // than a reset connection.
                    let mut s = stream;
                    let _ = read_request_in_time(&mut s);
                    let _ = problem_json(403, ErrorCode::Unauthorized, "caller not allowed")
                        .write_to(&mut s);
                }
            });
        }
        if let Some(t) = &tcp_listener {
            while let Ok((stream, _)) = t.accept() {
                // TCP callers have their own limit, so that a flood of unauthenticated
                // connections cannot lock root out of the unix socket.
                let Some(slot) = Slot::take(&tcp_connections) else {
                    continue;
                };
                let server = Arc::clone(&server);
                std::thread::spawn(move || {
                    let _slot = slot;
                    stream.set_nonblocking(false).ok();
                    stream.set_timeouts(REQUEST_TIMEOUT, RESPONSE_TIMEOUT).ok();
                    serve_connection(&server, stream, false);
                });
            }
        }
    }
    tracing::info!("quiesce serve: shutting down");
    server.shutdown();
    let _ = std::fs::remove_file(&socket_path);
    0
}
