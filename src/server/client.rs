//! A client of `quiesce serve` over its unix socket: [`Client`] gives typed calls
//! (`quiesce prepare | snapshot | release | status` use it); [`call`] is the raw request.

use super::http;
use crate::api::{Caller, FreezeScope, OpStatus, PrepareAnswer};
use crate::codes::Problem;
use crate::report::{Report, SnapshotRef};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a call did not get a typed answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("send: {0}")]
    Send(#[source] std::io::Error),
    #[error("receive: {0}")]
    Receive(#[source] std::io::Error),
    #[error("the server's answer is not HTTP: {0}")]
    Http(#[source] http::HttpError),
    #[error("the server's answer (HTTP {status}) cannot be read: {source}")]
    Decode {
        status: u16,
        #[source]
        source: serde_json::Error,
    },
    /// The server refused the request; `problems` say why.
    #[error("refused (HTTP {status}): {}", problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    Refused { status: u16, problems: Vec<Problem> },
}

impl ClientError {
    /// The body to print for this error: the server's problems, or this error as one.
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            ClientError::Refused { problems, .. } => problems.clone(),
            other => vec![Problem::new(
                crate::codes::ErrorCode::StateError,
                other.to_string(),
            )],
        }
    }
}

/// Send one request and return (HTTP status, raw body).
fn exchange(
    socket: &Path,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), ClientError> {
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout)).ok();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: quiesce\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(ClientError::Send)?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).map_err(ClientError::Receive)?;
    http::parse_response(&buf).map_err(ClientError::Http)
}

/// Send one request and return (HTTP status, JSON body; null when the body is not JSON).
pub fn call(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<(u16, serde_json::Value), ClientError> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let (status, body) = exchange(socket, method, path, &body, timeout)?;
    let value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    Ok((status, value))
}

/// Typed calls to one server.
#[derive(Debug, Clone)]
pub struct Client {
    pub socket: PathBuf,
    /// How long to wait for each answer.
    pub timeout: Duration,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client {
            socket: socket.into(),
            timeout: Duration::from_secs(3600),
        }
    }

    fn typed<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: &str,
        ok: &[u16],
    ) -> Result<T, ClientError> {
        let (status, raw) = exchange(&self.socket, method, path, body, self.timeout)?;
        if ok.contains(&status) {
            return serde_json::from_slice(&raw)
                .map_err(|source| ClientError::Decode { status, source });
        }
        #[derive(serde::Deserialize)]
        struct Errors {
            errors: Vec<Problem>,
        }
        let problems = serde_json::from_slice::<Errors>(&raw)
            .map(|e| e.errors)
            .map_err(|source| ClientError::Decode { status, source })?;
        Err(ClientError::Refused { status, problems })
    }

    /// Pre hooks and freeze. A prepare that failed inside the server (HTTP 500) still
    /// answers with its state `failed` and the errors.
    pub fn prepare(
        &self,
        id: &str,
        deadline: Option<Duration>,
        scope: &FreezeScope,
        caller: &Caller,
    ) -> Result<PrepareAnswer, ClientError> {
        let mut body = serde_json::json!({ "scope": scope, "caller": caller });
        if let Some(d) = deadline {
            body["deadline"] = humantime::format_duration(d).to_string().into();
        }
        self.typed(
            "POST",
            &format!("/v1/operations/{id}/prepare"),
            &body.to_string(),
            &[200, 500],
        )
    }

    /// Have the server's provider take the snapshot inside the prepared operation.
    pub fn snapshot(&self, id: &str) -> Result<Vec<SnapshotRef>, ClientError> {
        #[derive(serde::Deserialize)]
        struct Answer {
            snapshots: Vec<SnapshotRef>,
        }
        let a: Answer = self.typed("POST", &format!("/v1/operations/{id}/snapshot"), "", &[200])?;
        Ok(a.snapshots)
    }

    /// Thaw and post hooks: the final report.
    pub fn release(&self, id: &str) -> Result<Report, ClientError> {
        self.typed("POST", &format!("/v1/operations/{id}/release"), "", &[200])
    }

    /// Where the operation is.
    pub fn status(&self, id: &str) -> Result<OpStatus, ClientError> {
        self.typed("GET", &format!("/v1/operations/{id}"), "", &[200])
    }
}
