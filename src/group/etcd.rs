//! A small synchronous etcd v3 client over etcd's JSON gateway (`/v3/...`).
//!
//! Why not the gRPC client: it needs an async runtime and protobuf code generation, for a
//! handful of unary calls that the gateway answers as JSON over plain HTTP. Each call is one
//! short HTTP/1.0 request (the server closes the connection, so no chunked bodies); a call
//! that fails on one endpoint is retried on the next, so a stopped etcd node is skipped.
//! Keys and values are base64 in the gateway's JSON, as in the gRPC messages.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::Duration;

/// One key-value pair read from etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: String,
    pub mod_revision: i64,
}

/// A client for a list of endpoints (`host:port` or `http://host:port`).
pub struct Etcd {
    endpoints: Vec<String>,
    timeout: Duration,
    /// Auth token from `/v3/auth/authenticate`, when a user is configured.
    token: Mutex<Option<String>>,
    credentials: Option<(String, String)>,
    /// Index of the endpoint that answered last (tried first next time).
    preferred: Mutex<usize>,
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

impl Etcd {
    pub fn new(endpoints: &[String], timeout: Duration) -> Etcd {
        Etcd {
            endpoints: endpoints
                .iter()
                .map(|e| {
                    e.trim_start_matches("http://")
                        .trim_end_matches('/')
                        .to_string()
                })
                .collect(),
            timeout,
            token: Mutex::new(None),
            credentials: None,
            preferred: Mutex::new(0),
        }
    }

    /// Authenticate as `user` (etcd's auth); the token is renewed when etcd refuses it.
    pub fn with_credentials(mut self, user: String, password: String) -> Etcd {
        self.credentials = Some((user, password));
        self
    }

    fn post_once(&self, endpoint: &str, path: &str, body: &str) -> Result<(u16, Value), String> {
        let addr = endpoint
            .to_socket_addrs()
            .map_err(|e| format!("{endpoint}: {e}"))?
            .next()
            .ok_or_else(|| format!("{endpoint}: no address"))?;
        let mut s = TcpStream::connect_timeout(&addr, self.timeout)
            .map_err(|e| format!("{endpoint}: {e}"))?;
        s.set_read_timeout(Some(self.timeout)).ok();
        s.set_write_timeout(Some(self.timeout)).ok();
        let auth = match self.token.lock().unwrap().as_ref() {
            Some(t) if path != "/v3/auth/authenticate" => format!("Authorization: {t}\r\n"),
            _ => String::new(),
        };
        write!(
            s,
            "POST {path} HTTP/1.0\r\nHost: {endpoint}\r\nContent-Type: application/json\r\n\
             {auth}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .map_err(|e| format!("{endpoint}: {e}"))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)
            .map_err(|e| format!("{endpoint}: {e}"))?;
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("{endpoint}: truncated answer"))?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("{endpoint}: not an HTTP answer"))?;
        // A streaming call (lease keep-alive) answers with one JSON object per message.
        let value = serde_json::Deserializer::from_str(body)
            .into_iter::<Value>()
            .next()
            .and_then(Result::ok)
            .unwrap_or(Value::Null);
        Ok((status, value))
    }

    /// POST a JSON body to the first endpoint that answers; errors name every endpoint.
    pub fn call(&self, path: &str, body: &Value) -> Result<Value, String> {
        let body = body.to_string();
        let n = self.endpoints.len();
        let start = *self.preferred.lock().unwrap();
        let mut errors = Vec::new();
        for i in 0..n {
            let idx = (start + i) % n;
            let ep = &self.endpoints[idx];
            match self.post_once(ep, path, &body) {
                Ok((200, v)) => {
                    *self.preferred.lock().unwrap() = idx;
                    return Ok(v);
                }
                Ok((status, v)) => {
                    let msg = v["error"]
                        .as_str()
                        .or(v["message"].as_str())
                        .unwrap_or("")
                        .to_string();
                    if msg.contains("token") && self.credentials.is_some() {
                        self.authenticate()?;
                        return self.call_no_reauth(path, &body);
                    }
                    // An answer from etcd itself is final (not a dead node).
                    return Err(format!("etcd {ep}: HTTP {status}: {msg}"));
                }
                Err(e) => errors.push(e),
            }
        }
        Err(format!("no etcd endpoint answered ({})", errors.join("; ")))
    }

    fn call_no_reauth(&self, path: &str, body: &str) -> Result<Value, String> {
        for ep in &self.endpoints {
            if let Ok((200, v)) = self.post_once(ep, path, body) {
                return Ok(v);
            }
        }
        Err("etcd refused the renewed token".into())
    }

    /// Get a token for the configured user.
    pub fn authenticate(&self) -> Result<(), String> {
        let Some((user, password)) = &self.credentials else {
            return Ok(());
        };
        *self.token.lock().unwrap() = None;
        let v = self.call(
            "/v3/auth/authenticate",
            &json!({ "name": user, "password": password }),
        )?;
        let token = v["token"]
            .as_str()
            .ok_or("etcd refused the user name or password")?;
        *self.token.lock().unwrap() = Some(token.to_string());
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
        let v = self.call(
            "/v3/kv/range",
            &json!({ "key": b64(prefix), "range_end": B64.encode(prefix_end(prefix)) }),
        )?;
        Ok(v["kvs"]
            .as_array()
            .map(|kvs| {
                kvs.iter()
                    .map(|kv| Kv {
                        key: unb64(&kv["key"]),
                        value: unb64(&kv["value"]),
                        mod_revision: kv["mod_revision"]
                            .as_str()
                            .and_then(|r| r.parse().ok())
                            .unwrap_or(0),
                    })
                    .collect()
            })
            .unwrap_or_default())
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
