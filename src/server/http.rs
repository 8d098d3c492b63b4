//! Just enough HTTP/1.1 for a local control API: one request per connection, bounded sizes,
//! `Connection: close`. Parsing is done by `httparse`; this file only frames it.

use std::io::{Read, Write};

/// Largest accepted request head and body.
pub const MAX_HEAD: usize = 16 * 1024;
pub const MAX_BODY: usize = 64 * 1024;

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    #[error("request head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("request body larger than {MAX_BODY} bytes")]
    BodyTooLarge,
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("connection closed before the request was complete")]
    Truncated,
}

/// Parse a complete request from bytes (head and, per Content-Length, body).
/// Returns `Ok(None)` when more bytes are needed.
pub fn parse(buf: &[u8]) -> Result<Option<(Request, usize)>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > MAX_HEAD {
                Err(HttpError::HeadTooLarge)
            } else {
                Ok(None)
            }
        }
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    if head_len > MAX_HEAD {
        return Err(HttpError::HeadTooLarge);
    }
    let mut out_headers = Vec::new();
    let mut content_length = 0usize;
    let mut seen_length = false;
    for h in req.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        let value = String::from_utf8_lossy(h.value).trim().to_string();
        if name == "content-length" {
            if seen_length {
                // Two lengths: which one a proxy in front used is anybody's guess (request
                // smuggling); refuse rather than pick.
                return Err(HttpError::Malformed("more than one Content-Length".into()));
            }
            seen_length = true;
            content_length = value
                .parse()
                .map_err(|_| HttpError::Malformed("bad Content-Length".into()))?;
        }
        if name == "transfer-encoding" {
            return Err(HttpError::Malformed(
                "Transfer-Encoding is not supported".into(),
            ));
        }
        out_headers.push((name, value));
    }
    if content_length > MAX_BODY {
        return Err(HttpError::BodyTooLarge);
    }
    if buf.len() < head_len + content_length {
        return Ok(None);
    }
    Ok(Some((
        Request {
            method: req.method.unwrap_or("").to_string(),
            path: req.path.unwrap_or("").to_string(),
            headers: out_headers,
            body: buf[head_len..head_len + content_length].to_vec(),
        },
        head_len + content_length,
    )))
}

/// Read one request from a stream.
pub fn read_request(stream: &mut impl Read) -> Result<Request, HttpError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((req, _)) = parse(&buf)? {
            return Ok(req);
        }
        let n = stream.read(&mut chunk).map_err(|_| HttpError::Truncated)?;
        if n == 0 {
            return Err(HttpError::Truncated);
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_HEAD + MAX_BODY {
            return Err(HttpError::BodyTooLarge);
        }
    }
}

/// A response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        Response {
            status,
            content_type: "application/json",
            body: serde_json::to_vec_pretty(value).unwrap_or_default(),
        }
    }
    pub fn text(status: u16, content_type: &'static str, body: String) -> Response {
        Response {
            status,
            content_type,
            body: body.into_bytes(),
        }
    }
    pub fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            409 => "Conflict",
            413 => "Payload Too Large",
            _ => "Internal Server Error",
        };
        write!(
            w,
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len()
        )?;
        w.write_all(&self.body)?;
        w.flush()
    }
}

/// Parse a response (used by the client): status and body.
pub fn parse_response(buf: &[u8]) -> Result<(u16, Vec<u8>), HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => Ok((resp.code.unwrap_or(0), buf[n..].to_vec())),
        Ok(httparse::Status::Partial) => Err(HttpError::Truncated),
        Err(e) => Err(HttpError::Malformed(e.to_string())),
    }
}

/// Compare two secrets in time that does not depend on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_request_with_body() {
        let raw =
            b"POST /v1/operations/a/prepare HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n{}\r\n";
        let (req, n) = parse(raw).unwrap().unwrap();
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/v1/operations/a/prepare");
        assert_eq!(req.body, b"{}\r\n");
        assert_eq!(n, raw.len());
        assert_eq!(req.header("host"), Some("x"));
    }

    #[test]
    fn partial_and_hostile_requests() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n").unwrap(), None);
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"),
            Err(HttpError::BodyTooLarge)
        ));
        assert!(matches!(
            parse(b"\x00\x01garbage\r\n\r\n"),
            Err(HttpError::Malformed(_))
        ));
        let big = vec![b'a'; MAX_HEAD + 10];
        assert!(matches!(
            parse(&big),
            Err(HttpError::Malformed(_)) | Err(HttpError::HeadTooLarge)
        ));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(HttpError::Malformed(_))
        ));
    }

    #[test]
    fn a_second_content_length_is_refused() {
        for raw in [
            &b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}"[..],
            &b"POST / HTTP/1.1\r\nContent-Length: 0\r\ncontent-length: 2\r\n\r\n{}"[..],
        ] {
            assert!(
                matches!(parse(raw), Err(HttpError::Malformed(m)) if m.contains("Content-Length")),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
