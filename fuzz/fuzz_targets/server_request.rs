//! The control API's request handling: `quiesce::server::http::parse` and
//! `http::read_request` on the raw bytes of a connection, then the side-effect-free router
//! `quiesce::server::route`, then `Server::handle` for the routes that only read
//! (`/healthz`, `/metrics`, operation status).
//!
//! SAFETY of the harness: prepare and release are never handed to `Server::handle` (they
//! are only routed), and the server is built from a configuration with freezing disabled,
//! no hooks, no snapshot provider and its state/catalog in a directory that does not
//! exist, so no fuzz input can run a hook or freeze anything.
//!
//! Oracle: never panics; a parsed request respects the size bounds; a refused route is
//! `InvalidRequest` with 400, 404 or 405; a prepare route has a valid operation id and a
//! deadline of 1 ms ..= 1 h; the read-only routes answer 200 (health, metrics) or, for an
//! operation nobody started, 404 `UnknownOperation`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quiesce::codes::ErrorCode;
use quiesce::config::{Config, ProviderConfig};
use quiesce::pipeline::opid;
use quiesce::server::http::{self, HttpError, MAX_BODY, MAX_HEAD};
use quiesce::server::{route, Route, Server};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

fn server() -> &'static Arc<Server> {
    static SERVER: OnceLock<Arc<Server>> = OnceLock::new();
    SERVER.get_or_init(|| {
        let gone = Path::new("/nonexistent/quiesce-fuzz");
        let mut cfg = Config::defaults(&gone.join("quiesce.toml"));
        cfg.freeze.enabled = false;
        cfg.hooks.clear();
        cfg.snapshot.provider = ProviderConfig::None;
        cfg.paths.state_dir = gone.join("state");
        cfg.paths.catalog = gone.join("catalog.db");
        cfg.server.token_file = None;
        cfg.server.default_deadline = DEFAULT_DEADLINE;
        Server::new(cfg).expect("server")
    })
}

fuzz_target!(|data: &[u8]| {
    let parsed = http::parse(data);
    let req = match parsed {
        Err(e) => {
            assert!(matches!(
                e,
                HttpError::HeadTooLarge | HttpError::BodyTooLarge | HttpError::Malformed(_)
            ));
            assert!(!e.to_string().is_empty());
            assert!(http::read_request(&mut &data[..]).is_err());
            return;
        }
        Ok(None) => {
            assert!(data.len() < MAX_HEAD + MAX_BODY);
            assert_eq!(
                http::read_request(&mut &data[..]),
                Err(HttpError::Truncated)
            );
            return;
        }
        Ok(Some((req, used))) => {
            assert!(used <= data.len());
            assert!(req.body.len() <= MAX_BODY);
            assert!(req
                .headers
                .iter()
                .all(|(n, _)| !n.bytes().any(|b| b.is_ascii_uppercase())));
            assert_eq!(http::read_request(&mut &data[..]).as_ref(), Ok(&req));
            req
        }
    };
    match route(&req, DEFAULT_DEADLINE) {
        Err(r) => {
            assert_eq!(r.code, ErrorCode::InvalidRequest);
            assert!(matches!(r.status, 400 | 404 | 405), "{r:?}");
        }
        Ok(Route::Prepare { id, deadline, .. }) => {
            assert!(opid::is_valid(id));
            assert!(!deadline.is_zero() && deadline <= Duration::from_secs(3600));
        }
        // Routed only: handing these to the server could start an operation.
        Ok(Route::Release { .. }) | Ok(Route::Snapshot { .. }) => {}
        Ok(Route::Health) | Ok(Route::Metrics) => {
            assert_eq!(server().handle(&req).status, 200);
        }
        Ok(Route::Status { .. }) => {
            let resp = server().handle(&req);
            assert_eq!(resp.status, 404);
            let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
            assert_eq!(v["errors"][0]["code"], "UnknownOperation");
        }
    }
});
