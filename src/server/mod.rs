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
pub mod listen;
mod route;

pub use listen::{serve, MAX_CONNECTIONS, REQUEST_TIMEOUT};
pub use route::{route, Refusal, Route, MAX_DEADLINE};

use crate::api::{Api, ApiError, OpState, PrepareAnswer, PrepareRequest};
use crate::codes::{ErrorCode, Problem};
use crate::config::Config;
use crate::pipeline;
use http::{Request, Response};
use serde_json::json;
use std::io::Read;
use std::sync::Arc;

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
                    thaw_by: None,
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

    /// May this uid use the unix socket? (root and `server.allowed_uids`)
    fn uid_allowed(&self, uid: u32) -> bool {
        uid == 0 || self.api.config().server.allowed_uids.contains(&uid)
    }

    fn bearer_ok(&self, req: &Request) -> bool {
        let Some(token) = &self.token else {
            return false;
        };
        req.header("authorization")
            .and_then(bearer_token)
            .is_some_and(|given| http::constant_time_eq(given.as_bytes(), token))
    }
}

/// The token of an `Authorization: Bearer TOKEN` header (the scheme is case-insensitive).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_auth_scheme_is_case_insensitive() {
        for v in ["Bearer abc", "bearer abc", "BEARER  abc ", " beArer abc"] {
            assert_eq!(bearer_token(v), Some("abc"), "{v}");
        }
        for v in ["Basic abc", "Bearer", "Bearer ", "Bearerabc", ""] {
            assert_eq!(bearer_token(v), None, "{v}");
        }
    }
}
