//! Deciding what a request asks for, from the request alone (no side effects).

use super::http::Request;
use crate::api::{Caller, FreezeScope};
use crate::codes::ErrorCode;
use crate::pipeline::opid;
use std::time::Duration;

/// The longest deadline a request may name.
pub const MAX_DEADLINE: Duration = Duration::from_secs(3600);

/// What a request asks for, decided from the request alone.
///
/// Routing is kept apart from [`super::Server::handle`] so that it can be fuzzed without
/// any side effect (`fuzz/fuzz_targets/server_request.rs`): deciding a route runs no hook,
/// takes no lock and freezes nothing; only `handle` acts on the route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    /// `GET /healthz`
    Health,
    /// `GET /metrics`
    Metrics,
    /// `POST /v1/operations/{id}/prepare`: the id is valid ([`opid::is_valid`]); the
    /// deadline is the body's (1 ms ..= 1 h) or the configured default (the registry caps
    /// it at `freeze.timeout`); the scope is the body's (default: the configured plan) and
    /// the caller the body's (default: `http`).
    Prepare {
        id: &'a str,
        deadline: Duration,
        scope: FreezeScope,
        caller: Caller,
    },
    /// `POST /v1/operations/{id}/snapshot`
    Snapshot { id: &'a str },
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
            let body = parse_prepare_body(&req.body, default_deadline)
                .map_err(|m| Refusal::new(400, m))?;
            Ok(Route::Prepare {
                id,
                deadline: body.0,
                scope: body.1,
                caller: body.2,
            })
        }
        ("POST", ["v1", "operations", id, "snapshot"]) => Ok(Route::Snapshot { id }),
        ("POST", ["v1", "operations", id, "release"]) => Ok(Route::Release { id }),
        ("GET", ["v1", "operations", id]) => Ok(Route::Status { id }),
        (_, ["v1", "operations", ..]) | (_, ["healthz"]) | (_, ["metrics"]) => {
            Err(Refusal::new(405, "method not allowed"))
        }
        _ => Err(Refusal::new(404, "no such endpoint")),
    }
}

/// `{"deadline": "30s", "scope": "plan", "caller": "http"}` (every field optional) or an
/// empty body.
fn parse_prepare_body(
    body: &[u8],
    default: Duration,
) -> Result<(Duration, FreezeScope, Caller), String> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok((default, FreezeScope::Plan, Caller::Http));
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        deadline: Option<String>,
        scope: Option<FreezeScope>,
        caller: Option<Caller>,
    }
    let b: Body = serde_json::from_slice(body).map_err(|e| format!("invalid body: {e}"))?;
    let deadline = match b.deadline {
        None => default,
        Some(s) => {
            let d = humantime::parse_duration(&s).map_err(|e| format!("invalid deadline: {e}"))?;
            if d.is_zero() || d > MAX_DEADLINE {
                return Err("deadline must be between 1ms and 1h".into());
            }
            d
        }
    };
    Ok((
        deadline,
        b.scope.unwrap_or_default(),
        b.caller.unwrap_or(Caller::Http),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(path: &str, body: &str) -> Request {
        Request {
            method: "POST".into(),
            path: path.into(),
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn prepare_bodies() {
        let d = Duration::from_secs(20);
        let r = post("/v1/operations/a/prepare", "");
        assert_eq!(
            route(&r, d).unwrap(),
            Route::Prepare {
                id: "a",
                deadline: d,
                scope: FreezeScope::Plan,
                caller: Caller::Http
            }
        );
        let r = post(
            "/v1/operations/a/prepare",
            r#"{"deadline":"5s","scope":{"mounts":["/srv"]},"caller":{"platform":"azure"}}"#,
        );
        assert_eq!(
            route(&r, d).unwrap(),
            Route::Prepare {
                id: "a",
                deadline: Duration::from_secs(5),
                scope: FreezeScope::Mounts(vec!["/srv".into()]),
                caller: Caller::Platform("azure".into())
            }
        );
        for (scope, want) in [
            ("\"sync-only\"", FreezeScope::SyncOnly),
            ("\"nothing\"", FreezeScope::Nothing),
            ("\"plan\"", FreezeScope::Plan),
        ] {
            let r = post(
                "/v1/operations/a/prepare",
                &format!(r#"{{"scope":{scope}}}"#),
            );
            assert!(
                matches!(route(&r, d), Ok(Route::Prepare { scope, .. }) if scope == want),
                "{scope}"
            );
        }
        for bad in [
            r#"{"scope":"everything"}"#,
            r#"{"caller":"nobody"}"#,
            r#"{"deadline":"2h"}"#,
            r#"{"other":1}"#,
        ] {
            let r = post("/v1/operations/a/prepare", bad);
            assert_eq!(route(&r, d).unwrap_err().status, 400, "{bad}");
        }
        let r = post("/v1/operations/a/snapshot", "");
        assert_eq!(route(&r, d).unwrap(), Route::Snapshot { id: "a" });
    }
}
