//! A small synchronous etcd v3 client over etcd's JSON gateway (`/v3/...`).
//!
//! Why not the gRPC client: it needs an async runtime and protobuf code generation, for a
//! handful of calls that the gateway answers as JSON over HTTP. Connections are HTTP/1.1
//! and kept open between calls (a pool per client), over TLS when the endpoint is
//! `https://` ([`conn`]); a call that cannot reach one endpoint is retried on the next, so a
//! stopped etcd node is skipped. Watches ([`watch`]) are the gateway's chunked JSON stream.
//! Keys and values are base64 in the gateway's JSON, as in the gRPC messages.

pub mod conn;
pub mod watch;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
pub use conn::TlsFiles;
use conn::{Conn, Endpoint};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One key-value pair read from etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: String,
    pub mod_revision: i64,
}

/// Idle connections kept per client.
const POOL: usize = 8;

/// How long a call keeps trying while etcd answers 503 (no leader, or the leader changed):
/// an election takes about one election timeout (1 s by default).
const LEADERLESS: Duration = Duration::from_secs(3);

/// A client for a list of endpoints (`host:port`, `http://host:port`, `https://host:port`).
pub struct Etcd {
    endpoints: Vec<Endpoint>,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
    /// Auth token from `/v3/auth/authenticate`, when a user is configured.
    token: Mutex<Option<String>>,
    credentials: Option<(String, String)>,
    /// Index of the endpoint that answered last (tried first next time).
    preferred: Mutex<usize>,
    /// Idle keep-alive connections.
    pool: Mutex<Vec<Conn>>,
}

fn b64(s: &str) -> String {
    B64.encode(s.as_bytes())
}

fn unb64(v: &Value) -> String {
    v.as_str()
        .and_then(|s| B64.decode(s).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn num(v: &Value) -> i64 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .or(v.as_i64())
        .unwrap_or(0)
}

fn kv_of(kv: &Value) -> Kv {
    Kv {
        key: unb64(&kv["key"]),
        value: unb64(&kv["value"]),
        mod_revision: num(&kv["mod_revision"]),
    }
}

/// The key just after every key starting with `prefix` (etcd's `range_end` for a prefix).
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// An answer that says "try again": the cluster is electing a leader or is overloaded.
fn transient(status: u16, msg: &str) -> bool {
    status == 503
        || [
            "leader changed",
            "no leader",
            "request timed out",
            "too many requests",
        ]
        .iter()
        .any(|m| msg.contains(m))
}

/// etcd's error message in an answer, if any.
fn error_text(v: &Value) -> String {
    v["error"]
        .as_str()
        .or(v["message"].as_str())
        .or(v["error"]["message"].as_str())
        .or(v.as_str())
        .unwrap_or("")
        .to_string()
}

impl Etcd {
    pub fn new(endpoints: &[String], timeout: Duration) -> Etcd {
        Etcd {
            endpoints: endpoints.iter().map(|e| Endpoint::parse(e)).collect(),
            tls: None,
            timeout,
            token: Mutex::new(None),
            credentials: None,
            preferred: Mutex::new(0),
            pool: Mutex::new(Vec::new()),
        }
    }

    /// Use TLS (CA, and client certificate when given) for the `https://` endpoints.
    pub fn with_tls(mut self, files: &TlsFiles) -> Result<Etcd, String> {
        self.tls = Some(conn::tls_config(files)?);
        Ok(self)
    }

    /// Authenticate as `user` (etcd's auth); the token is renewed when etcd refuses it.
    pub fn with_credentials(mut self, user: String, password: String) -> Etcd {
        self.credentials = Some((user, password));
        self
    }

    fn has_client_cert(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|c| c.client_auth_cert_resolver.has_certs())
    }

    /// A pooled connection to endpoint `idx`, else a new one.
    fn connection(&self, idx: usize) -> Result<(Conn, bool), String> {
        let pooled = {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            pool.iter()
                .position(|c| c.endpoint == idx)
                .map(|i| pool.swap_remove(i))
        };
        match pooled {
            Some(c) => Ok((c, true)),
            None => Ok((
                conn::connect(&self.endpoints[idx], idx, self.tls.as_ref(), self.timeout)?,
                false,
            )),
        }
    }

    fn token_for(&self, path: &str) -> Option<String> {
        if path == "/v3/auth/authenticate" {
            return None;
        }
        self.token.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// One request on one connection; the connection goes back to the pool when it can
    /// carry another.
    fn exchange(&self, mut c: Conn, path: &str, body: &str) -> std::io::Result<(u16, Value)> {
        let ep = &self.endpoints[c.endpoint];
        conn::send(
            &mut c,
            &ep.addr,
            path,
            self.token_for(path).as_deref(),
            body,
        )?;
        let head = conn::read_head(&mut c.io)?;
        let (value, reusable) = conn::read_body(&mut c.io, &head)?;
        if reusable {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < POOL {
                pool.push(c);
            }
        }
        Ok((head.status, value))
    }

    /// POST to endpoint `idx`: on a kept-alive connection, or (when that one turns out to
    /// be closed by the server) on a new one.
    fn post_once(&self, idx: usize, path: &str, body: &str) -> Result<(u16, Value), String> {
        let (c, reused) = self.connection(idx)?;
        match self.exchange(c, path, body) {
            Ok(answer) => Ok(answer),
            Err(_) if reused => {
                let c = conn::connect(&self.endpoints[idx], idx, self.tls.as_ref(), self.timeout)?;
                self.exchange(c, path, body)
                    .map_err(|e| conn::io_words(&self.endpoints[idx], &e, self.has_client_cert()))
            }
            Err(e) => Err(conn::io_words(
                &self.endpoints[idx],
                &e,
                self.has_client_cert(),
            )),
        }
    }

    /// POST a body to the first endpoint that answers: (endpoint index, status, answer).
    fn post_any(&self, path: &str, body: &str) -> Result<(usize, u16, Value), String> {
        let n = self.endpoints.len();
        let start = *self.preferred.lock().unwrap_or_else(|e| e.into_inner());
        let mut errors = Vec::new();
        for i in 0..n {
            let idx = (start + i) % n;
            match self.post_once(idx, path, body) {
                Ok((status, v)) => {
                    *self.preferred.lock().unwrap_or_else(|e| e.into_inner()) = idx;
                    return Ok((idx, status, v));
                }
                Err(e) => errors.push(e),
            }
        }
        Err(format!("could not reach etcd ({})", errors.join("; ")))
    }

    /// What a refusal by etcd means, in words.
    fn refusal(&self, idx: usize, status: u16, msg: &str) -> String {
        let ep = &self.endpoints[idx].addr;
        let user = self.credentials.as_ref().map(|(u, _)| u.as_str());
        if msg.contains("permission denied") {
            return format!(
                "etcd {ep} refused: permission denied (etcd user {:?} has no role granting this group's keys)",
                user.unwrap_or("")
            );
        }
        if msg.contains("user name is empty") || msg.contains("invalid auth token") {
            return format!(
                "etcd {ep} refused: it has authentication on; set `group.user` and `group.password_file`"
            );
        }
        if msg.contains("CommonName of client sending a request against gateway") {
            return format!(
                "etcd {ep} refused: with authentication on, etcd's HTTP gateway refuses every \
                 request that shows a client certificate. Use etcd users over TLS without client \
                 certificates (`group.ca_file`, `group.user`, `group.password_file`; etcd without \
                 --client-cert-auth), or client certificates with etcd authentication off"
            );
        }
        if msg.contains("authentication failed") {
            return format!(
                "etcd {ep} refused user {:?}: wrong user name or password",
                user.unwrap_or("")
            );
        }
        format!("etcd {ep}: HTTP {status}: {msg}")
    }

    /// POST a JSON body; errors name every endpoint tried, or what etcd refused. While the
    /// cluster elects a leader (a node stopped), etcd answers 503 "leader changed" or "no
    /// leader": such answers are retried on the next endpoint for up to twice the timeout
    /// (at least [`LEADERLESS`]).
    pub fn call(&self, path: &str, body: &Value) -> Result<Value, String> {
        let body = body.to_string();
        let give_up = Instant::now() + LEADERLESS.max(2 * self.timeout);
        let (idx, status, v) = loop {
            let (idx, status, v) = self.post_any(path, &body)?;
            if status == 200 {
                return Ok(v);
            }
            if !transient(status, &error_text(&v)) || Instant::now() >= give_up {
                break (idx, status, v);
            }
            *self.preferred.lock().unwrap_or_else(|e| e.into_inner()) =
                (idx + 1) % self.endpoints.len();
            std::thread::sleep(Duration::from_millis(50));
        };
        let msg = error_text(&v);
        if msg.contains("token") && self.credentials.is_some() && path != "/v3/auth/authenticate" {
            self.authenticate()?;
            let (idx, status, v) = self.post_any(path, &body)?;
            if status == 200 {
                return Ok(v);
            }
            return Err(self.refusal(idx, status, &error_text(&v)));
        }
        // An answer from etcd itself is final (not a dead node).
        Err(self.refusal(idx, status, &msg))
    }

    /// Get a token for the configured user.
    pub fn authenticate(&self) -> Result<(), String> {
        let Some((user, password)) = &self.credentials else {
            return Ok(());
        };
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let v = self.call(
            "/v3/auth/authenticate",
            &json!({ "name": user, "password": password }),
        )?;
        let token = v["token"]
            .as_str()
            .ok_or_else(|| format!("etcd refused user {user:?}: wrong user name or password"))?;
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = Some(token.to_string());
        Ok(())
    }

    /// Put `key` = `value`, attached to `lease` (0 = none).
    pub fn put(&self, key: &str, value: &str, lease: i64) -> Result<(), String> {
        let mut body = json!({ "key": b64(key), "value": b64(value) });
        if lease != 0 {
            body["lease"] = json!(lease.to_string());
        }
        self.call("/v3/kv/put", &body).map(|_| ())
    }

    /// Put `key` only if it does not exist yet; true when this call created it.
    pub fn create(&self, key: &str, value: &str, lease: i64) -> Result<bool, String> {
        let mut put = json!({ "key": b64(key), "value": b64(value) });
        if lease != 0 {
            put["lease"] = json!(lease.to_string());
        }
        let v = self.call(
            "/v3/kv/txn",
            &json!({
                "compare": [{ "key": b64(key), "target": "CREATE", "result": "EQUAL",
                              "create_revision": "0" }],
                "success": [{ "request_put": put }],
            }),
        )?;
        Ok(v["succeeded"].as_bool().unwrap_or(false))
    }

    /// Every key under `prefix`, in key order.
    pub fn range_prefix(&self, prefix: &str) -> Result<Vec<Kv>, String> {
        self.range_prefix_at(prefix).map(|(kvs, _)| kvs)
    }

    /// Every key under `prefix`, and the store's revision they were read at.
    pub fn range_prefix_at(&self, prefix: &str) -> Result<(Vec<Kv>, i64), String> {
        self.range_at(prefix, &prefix_end(prefix))
    }

    /// Keys from `key` to `range_end` (exclusive; empty: `key` alone), and the store's
    /// revision they were read at.
    pub fn range_at(&self, key: &str, range_end: &[u8]) -> Result<(Vec<Kv>, i64), String> {
        let mut body = json!({ "key": b64(key) });
        if !range_end.is_empty() {
            body["range_end"] = json!(B64.encode(range_end));
        }
        let v = self.call("/v3/kv/range", &body)?;
        let kvs = v["kvs"]
            .as_array()
            .map(|kvs| kvs.iter().map(kv_of).collect())
            .unwrap_or_default();
        Ok((kvs, num(&v["header"]["revision"])))
    }

    /// One key's value, if it exists.
    pub fn get(&self, key: &str) -> Result<Option<String>, String> {
        let v = self.call("/v3/kv/range", &json!({ "key": b64(key) }))?;
        Ok(v["kvs"]
            .as_array()
            .and_then(|kvs| kvs.first())
            .map(|kv| unb64(&kv["value"])))
    }

    /// A lease of `ttl` seconds; its id.
    pub fn grant(&self, ttl: Duration) -> Result<i64, String> {
        let v = self.call(
            "/v3/lease/grant",
            &json!({ "TTL": ttl.as_secs().max(1).to_string() }),
        )?;
        v["ID"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| "etcd granted no lease".into())
    }

    /// Renew a lease once; false when it no longer exists.
    pub fn keep_alive(&self, lease: i64) -> Result<bool, String> {
        let v = self.call("/v3/lease/keepalive", &json!({ "ID": lease.to_string() }))?;
        let ttl = v["result"]["TTL"]
            .as_str()
            .and_then(|s| s.parse::<i64>().ok())
            .unwrap_or(0);
        Ok(ttl > 0)
    }

    /// Revoke a lease (its keys go with it).
    pub fn revoke(&self, lease: i64) -> Result<(), String> {
        self.call("/v3/lease/revoke", &json!({ "ID": lease.to_string() }))
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_worth_retrying() {
        for (status, msg, want) in [
            (503, "etcdserver: leader changed", true),
            (503, "connection closed", true),
            (500, "etcdserver: no leader", true),
            (500, "etcdserver: request timed out", true),
            (400, "etcdserver: permission denied", false),
            (
                400,
                "etcdserver: authentication failed, invalid user ID or password",
                false,
            ),
            (404, "Not Found", false),
        ] {
            assert_eq!(transient(status, msg), want, "{status} {msg}");
        }
    }

    #[test]
    fn prefix_ends() {
        for (prefix, end) in [
            ("a/", b"a0".to_vec()),
            ("ab", b"ac".to_vec()),
            ("a\u{7f}", vec![b'a', 0x80]),
            ("", vec![0]),
        ] {
            assert_eq!(prefix_end(prefix), end, "{prefix:?}");
        }
    }
}
