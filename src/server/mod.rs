//! Host-driven mode (SPEC section 7): `quiesce serve` and its two-phase API.
//!
//! A hypervisor or backup service calls *prepare* (pre hooks + freeze; answers once frozen),
//! takes its snapshot, then calls *release* (thaw + post hooks; answers with the final
//! report). Both are idempotent per operation id; one operation at a time; the freeze guard
//! thaws at the prepare's deadline if release never comes, and a watchdog then finishes the
//! operation and reports it inconsistent.
//!
//! The server is synchronous: a poll loop accepts connections and a thread per connection
//! answers it. The freeze and its guard are the same code `quiesce snapshot` uses.
//!
//! API (HTTP/1.1, JSON; unix socket mode 0600, callers checked by peer credentials; optional
//! TCP listener that requires `Authorization: Bearer <token>`):
//! - `POST /v1/operations/{id}/prepare` body `{"deadline": "30s"}` (optional)
//! - `POST /v1/operations/{id}/release`
//! - `GET  /v1/operations/{id}`
//! - `GET  /healthz`, `GET /metrics`

pub mod client;
pub mod http;

use crate::codes::{ErrorCode, Problem};
use crate::config::Config;
use crate::pipeline::{self, opid, Operation};
use crate::report::Report;
use http::{Request, Response};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Finished operations remembered for idempotent repeats and status.
const REMEMBERED: usize = 256;

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

enum Phase {
    /// prepare is running (pre hooks, freeze).
    Preparing,
    /// Frozen (or at least prepared), waiting for release.
    Prepared {
        op: Box<Operation<'static>>,
        answer: Value,
    },
    /// release (or the watchdog) is running.
    Releasing { answer: Value },
}

struct Active {
    id: String,
    phase: Phase,
}

#[derive(Default)]
struct State {
    active: Option<Active>,
    /// (operation id, prepare answer, final report), oldest first.
    done: VecDeque<(String, Value, Report)>,
    shutting_down: bool,
}

/// The server's shared state.
pub struct Server {
    cfg: &'static Config,
    state: Mutex<State>,
    changed: Condvar,
    token: Option<Vec<u8>>,
}

fn problem_json(status: u16, code: ErrorCode, message: impl Into<String>) -> Response {
    Response::json(status, &json!({ "errors": [Problem::new(code, message)] }))
}

impl Server {
    /// A server for `cfg` (leaked: it lives as long as the process).
    pub fn new(cfg: Config) -> Result<Arc<Server>, Problem> {
        let cfg: &'static Config = Box::leak(Box::new(cfg));
        let token = match &cfg.server.token_file {
            Some(path) => {
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
                Some(t)
            }
            None => None,
        };
        Ok(Arc::new(Server {
            cfg,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            token,
        }))
    }

    /// Answer one request (already authenticated). Which endpoint it is, and whether it is
    /// well formed, is decided first by [`route`], which has no side effects.
    pub fn handle(self: &Arc<Self>, req: &Request) -> Response {
        match route(req, self.cfg.server.default_deadline) {
            Err(r) => problem_json(r.status, r.code, r.message),
            Ok(Route::Health) => Response::json(200, &json!({ "status": "ok" })),
            Ok(Route::Metrics) => Response::text(
                200,
                "text/plain; version=0.0.4",
                pipeline::metrics_text(self.cfg),
            ),
            Ok(Route::Prepare { id, deadline }) => self.prepare(id, deadline),
            Ok(Route::Release { id }) => self.release(id),
            Ok(Route::Status { id }) => self.status(id),
        }
    }

    fn prepare(self: &Arc<Self>, id: &str, deadline: Duration) -> Response {
        let mut st = self.state.lock().unwrap();
        loop {
            if st.shutting_down {
                return problem_json(409, ErrorCode::Interrupted, "the server is shutting down");
            }
            if let Some((_, answer, _)) = st.done.iter().find(|(d, _, _)| d == id) {
                return Response::json(200, answer);
            }
            match &st.active {
                Some(a) if a.id == id => match &a.phase {
                    Phase::Prepared { answer, .. } | Phase::Releasing { answer } => {
                        return Response::json(200, answer)
                    }
                    Phase::Preparing => st = self.changed.wait(st).unwrap(),
                },
                Some(a) => {
                    return problem_json(
                        409,
                        ErrorCode::OperationInProgress,
                        format!("operation {} is in progress", a.id),
                    )
                }
                None => break,
            }
        }
        st.active = Some(Active {
            id: id.to_string(),
            phase: Phase::Preparing,
        });
        drop(st);

        // Pre hooks and freeze run outside the lock; a same-id repeat waits on `changed`.
        let (answer, phase) = match Operation::begin(self.cfg, id.to_string()) {
            Err(report) => {
                let answer = prepare_answer(id, "failed", &[], &report.errors, None);
                let status = if report
                    .errors
                    .iter()
                    .any(|e| e.code == ErrorCode::OperationInProgress)
                {
                    409
                } else {
                    500
                };
                self.finish_done(id, answer.clone(), *report);
                return Response::json(status, &answer);
            }
            Ok(mut op) => {
                op.host_driven = true;
                op.freeze_timeout = deadline;
                op.pre_hooks();
                op.freeze();
                let state = if op.aborted() {
                    "failed"
                } else if op.frozen_mounts().is_empty() {
                    "prepared"
                } else {
                    "frozen"
                };
                let answer = prepare_answer(
                    id,
                    state,
                    op.frozen_mounts(),
                    op.errors(),
                    Some(deadline.as_secs_f64()),
                );
                (
                    answer.clone(),
                    Phase::Prepared {
                        op: Box::new(op),
                        answer,
                    },
                )
            }
        };
        let aborted = answer["state"] == "failed";
        {
            let mut st = self.state.lock().unwrap();
            if let Some(a) = st.active.as_mut() {
                a.phase = phase;
            }
        }
        self.changed.notify_all();
        if aborted {
            // Nothing to wait for: finish now (post hooks of started pre hooks run).
            self.finalize(id, false);
        } else {
            let me = Arc::clone(self);
            let id = id.to_string();
            std::thread::spawn(move || me.watchdog(&id, deadline));
        }
        Response::json(200, &answer)
    }

    /// After the deadline, finish an operation nobody released. Exits as soon as the
    /// operation is released (woken through `changed`), so no thread lingers per operation.
    fn watchdog(self: Arc<Self>, id: &str, deadline: Duration) {
        let due_at = Instant::now() + deadline + Duration::from_millis(500);
        let mut st = self.state.lock().unwrap();
        loop {
            let still_prepared = matches!(&st.active, Some(a) if a.id == id
                && matches!(a.phase, Phase::Prepared { .. }));
            if !still_prepared {
                return;
            }
            let now = Instant::now();
            if now >= due_at {
                break;
            }
            st = self.changed.wait_timeout(st, due_at - now).unwrap().0;
        }
        drop(st);
        tracing::warn!(
            operation_id = id,
            "release never came; finishing at the deadline"
        );
        self.finalize(id, false);
    }

    /// Thaw, run post hooks, store the report. `released` says the caller released in time.
    fn finalize(&self, id: &str, released: bool) -> Option<Report> {
        let (op, answer) = {
            let mut st = self.state.lock().unwrap();
            let a = st.active.as_mut()?;
            if a.id != id {
                return None;
            }
            let answer = match &a.phase {
                Phase::Prepared { answer, .. } => answer.clone(),
                _ => return None,
            };
            match std::mem::replace(
                &mut a.phase,
                Phase::Releasing {
                    answer: answer.clone(),
                },
            ) {
                Phase::Prepared { op, .. } => (op, answer),
                _ => unreachable!("checked above"),
            }
        };
        let mut op = *op;
        if released && !op.aborted() {
            op.snapshot_completed_externally();
        }
        op.thaw();
        op.post_hooks();
        let mut report = op.into_report();
        pipeline::finish(self.cfg, &mut report, crate::catalog::RunKind::Served);
        self.finish_done(id, answer, report.clone());
        Some(report)
    }

    fn finish_done(&self, id: &str, answer: Value, report: Report) {
        let mut st = self.state.lock().unwrap();
        if st.active.as_ref().is_some_and(|a| a.id == id) {
            st.active = None;
        }
        st.done.push_back((id.to_string(), answer, report));
        while st.done.len() > REMEMBERED {
            st.done.pop_front();
        }
        drop(st);
        self.changed.notify_all();
    }

    fn release(&self, id: &str) -> Response {
        loop {
            let mut st = self.state.lock().unwrap();
            if let Some((_, _, report)) = st.done.iter().find(|(d, _, _)| d == id) {
                return report_response(report);
            }
            match &st.active {
                Some(a) if a.id == id => match a.phase {
                    Phase::Prepared { .. } => {
                        drop(st);
                        if let Some(report) = self.finalize(id, true) {
                            return report_response(&report);
                        }
                    }
                    Phase::Preparing | Phase::Releasing { .. } => {
                        st = self.changed.wait(st).unwrap();
                        drop(st);
                    }
                },
                _ => {
                    return problem_json(
                        404,
                        ErrorCode::UnknownOperation,
                        format!("no operation {id}"),
                    )
                }
            }
        }
    }

    fn status(&self, id: &str) -> Response {
        let st = self.state.lock().unwrap();
        if let Some((_, _, report)) = st.done.iter().find(|(d, _, _)| d == id) {
            return Response::json(
                200,
                &json!({ "operation_id": id, "state": "finished", "report": report }),
            );
        }
        match &st.active {
            Some(a) if a.id == id => {
                let state = match &a.phase {
                    Phase::Preparing => "preparing",
                    Phase::Prepared { .. } => "prepared",
                    Phase::Releasing { .. } => "releasing",
                };
                let answer = match &a.phase {
                    Phase::Prepared { answer, .. } | Phase::Releasing { answer } => answer.clone(),
                    Phase::Preparing => Value::Null,
                };
                Response::json(
                    200,
                    &json!({ "operation_id": id, "state": state, "prepare": answer }),
                )
            }
            _ => problem_json(
                404,
                ErrorCode::UnknownOperation,
                format!("no operation {id}"),
            ),
        }
    }

    /// Finish the active operation (thaw, post hooks) before the server exits.
    fn shutdown(&self) {
        let id = {
            let mut st = self.state.lock().unwrap();
            st.shutting_down = true;
            st.active.as_ref().map(|a| a.id.clone())
        };
        if let Some(id) = id {
            let _ = self.finalize(&id, false);
        }
    }

    /// Is this unix-socket peer allowed?
    fn unix_peer_allowed(&self, stream: &UnixStream) -> bool {
        match rustix::net::sockopt::socket_peercred(stream.as_fd()) {
            Ok(cred) => {
                let uid = cred.uid.as_raw();
                uid == 0 || self.cfg.server.allowed_uids.contains(&uid)
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

/// What a request asks for, decided from the request alone.
///
/// Routing is kept apart from [`Server::handle`] so that it can be fuzzed without any side
/// effect (`fuzz/fuzz_targets/server_request.rs`): deciding a route runs no hook, takes no
/// lock and freezes nothing; only `handle` acts on the route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    /// `GET /healthz`
    Health,
    /// `GET /metrics`
    Metrics,
    /// `POST /v1/operations/{id}/prepare`: the id is valid ([`opid::is_valid`]) and the
    /// deadline is the body's (1 ms ..= 1 h) or the configured default.
    Prepare { id: &'a str, deadline: Duration },
    /// `POST /v1/operations/{id}/release`
    Release { id: &'a str },
    /// `GET /v1/operations/{id}`
    Status { id: &'a str },
}

/// A request [`route`] refuses: the HTTP status, the code (always `InvalidRequest`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    fn new(status: u16, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            code: ErrorCode::InvalidRequest,
            message: message.into(),
        }
    }
}

/// Decide what `req` asks for (no side effects; see [`Route`]). `default_deadline` is the
/// prepare deadline when the body names none.
pub fn route(req: &Request, default_deadline: Duration) -> Result<Route<'_>, Refusal> {
    let path = req.path.split('?').next().unwrap_or("");
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method.as_str(), parts.as_slice()) {
        ("GET", ["healthz"]) => Ok(Route::Health),
        ("GET", ["metrics"]) => Ok(Route::Metrics),
        ("POST", ["v1", "operations", id, "prepare"]) => {
            if !opid::is_valid(id) {
                return Err(Refusal::new(400, "invalid operation id"));
            }
            let deadline =
                parse_deadline(&req.body, default_deadline).map_err(|m| Refusal::new(400, m))?;
            Ok(Route::Prepare { id, deadline })
        }
        ("POST", ["v1", "operations", id, "release"]) => Ok(Route::Release { id }),
        ("GET", ["v1", "operations", id]) => Ok(Route::Status { id }),
        (_, ["v1", "operations", ..]) | (_, ["healthz"]) | (_, ["metrics"]) => {
            Err(Refusal::new(405, "method not allowed"))
        }
        _ => Err(Refusal::new(404, "no such endpoint")),
    }
}

fn report_response(report: &Report) -> Response {
    Response::json(200, &serde_json::to_value(report).unwrap_or(Value::Null))
}

fn prepare_answer(
    id: &str,
    state: &str,
    frozen: &[String],
    errors: &[Problem],
    deadline_s: Option<f64>,
) -> Value {
    json!({
        "operation_id": id,
        "state": state,
        "frozen": frozen,
        "errors": errors,
        "deadline_seconds": deadline_s,
    })
}

/// `{"deadline": "30s"}` or an empty body.
fn parse_deadline(body: &[u8], default: Duration) -> Result<Duration, String> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(default);
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        deadline: Option<String>,
    }
    let b: Body = serde_json::from_slice(body).map_err(|e| format!("invalid body: {e}"))?;
    match b.deadline {
        None => Ok(default),
        Some(s) => {
            let d = humantime::parse_duration(&s).map_err(|e| format!("invalid deadline: {e}"))?;
            if d.is_zero() || d > Duration::from_secs(3600) {
                return Err("deadline must be between 1ms and 1h".into());
            }
            Ok(d)
        }
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
