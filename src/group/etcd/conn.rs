//! One connection to one etcd endpoint: TCP or TLS (rustls), HTTP/1.1 with keep-alive, and
//! the response framing the gateway uses (`Content-Length` for unary calls, chunked for
//! streams). Errors are phrased for the person who configured the endpoints.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

pub use crate::config::group::TlsFiles;

/// The rustls client configuration for `files` (ring as the crypto provider).
pub fn tls_config(files: &TlsFiles) -> Result<Arc<rustls::ClientConfig>, String> {
    let ca = files.ca_file.as_ref().ok_or(
        "an https:// etcd endpoint needs `group.ca_file` (the CA that signed etcd's certificate)",
    )?;
    let pem = std::fs::read(ca).map_err(|e| format!("`group.ca_file` {}: {e}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("`group.ca_file` {}: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("`group.ca_file` {}: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "`group.ca_file` {}: no PEM certificate in it",
            ca.display()
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match (&files.cert_file, &files.key_file) {
        (Some(cert), Some(key)) => {
            let pem = std::fs::read(cert)
                .map_err(|e| format!("`group.cert_file` {}: {e}", cert.display()))?;
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("`group.cert_file` {}: {e}", cert.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "`group.cert_file` {}: no PEM certificate in it",
                    cert.display()
                ));
            }
            // The key is a secret: root-owned and private, like the configuration itself.
            let mut text = Vec::new();
            crate::trust::open_config(key)
                .map_err(|e| e.to_string())
                .and_then(|mut f| f.read_to_end(&mut text).map_err(|e| e.to_string()))
                .map_err(|e| format!("`group.key_file` {}: {e}", key.display()))?;
            let key_der = PrivateKeyDer::from_pem_slice(&text).map_err(|_| {
                format!(
                    "`group.key_file` {}: no private key in it (PEM, PKCS#8, RSA or EC)",
                    key.display()
                )
            })?;
            builder.with_client_auth_cert(certs, key_der).map_err(|e| {
                format!("`group.cert_file` and `group.key_file` do not go together: {e}")
            })?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("`group.cert_file` and `group.key_file` go together".into()),
    };
    Ok(Arc::new(config))
}

/// One endpoint as configured: `host:port`, `http://host:port` or `https://host:port`.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `host:port`, as shown in errors and sent as `Host`.
    pub addr: String,
    pub tls: bool,
}

impl Endpoint {
    pub fn parse(s: &str) -> Endpoint {
        let s = s.trim().trim_end_matches('/');
        match s.strip_prefix("https://") {
            Some(rest) => Endpoint {
                addr: rest.to_string(),
                tls: true,
            },
            None => Endpoint {
                addr: s.trim_start_matches("http://").to_string(),
                tls: false,
            },
        }
    }

    /// The host part, without port and IPv6 brackets (the name the certificate must carry).
    fn host(&self) -> &str {
        let host = match self.addr.rsplit_once(':') {
            Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
            _ => &self.addr,
        };
        host.trim_start_matches('[').trim_end_matches(']')
    }
}

/// A TCP or TLS stream.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// An open connection to one endpoint.
pub struct Conn {
    pub io: BufReader<Stream>,
    /// The endpoint's index in the client's list.
    pub endpoint: usize,
    /// The same socket, to shut it down from another thread (ends a blocked watch read).
    pub socket: TcpStream,
}

/// What a TLS or socket error means, in words.
pub fn io_words(ep: &Endpoint, e: &io::Error, has_client_cert: bool) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as T};
    let addr = &ep.addr;
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<T>()) else {
        return match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                format!("{addr}: no answer in time")
            }
            io::ErrorKind::UnexpectedEof if ep.tls => {
                format!("{addr}: the connection closed during TLS (is it an https:// endpoint?)")
            }
            _ => format!("{addr}: {e}"),
        };
    };
    match tls {
        T::InvalidCertificate(C::UnknownIssuer) => format!(
            "{addr}: etcd's certificate is not signed by the CA in `group.ca_file`"
        ),
        T::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => format!(
            "{addr}: etcd's certificate is not valid for the name {:?}",
            ep.host()
        ),
        T::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            format!("{addr}: etcd's certificate has expired")
        }
        T::AlertReceived(A::CertificateRequired) | T::AlertReceived(A::BadCertificate)
            if !has_client_cert =>
        {
            format!(
                "{addr}: etcd requires a client certificate: set `group.cert_file` and `group.key_file`"
            )
        }
        T::AlertReceived(A::BadCertificate | A::UnknownCA | A::CertificateUnknown) => format!(
            "{addr}: etcd refused this client's certificate (`group.cert_file` is not signed by a CA etcd trusts, or has expired)"
        ),
        T::InvalidMessage(_) => {
            format!("{addr}: the answer is not TLS (is it an http:// endpoint?)")
        }
        other => format!("{addr}: TLS: {other}"),
    }
}

/// Open a connection (and finish the TLS handshake) to `ep`.
pub fn connect(
    ep: &Endpoint,
    index: usize,
    tls: Option<&Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Result<Conn, String> {
    let addr = ep
        .addr
        .to_socket_addrs()
        .map_err(|e| format!("{}: {e}", ep.addr))?
        .next()
        .ok_or_else(|| format!("{}: no address", ep.addr))?;
    let tcp =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{}: {e}", ep.addr))?;
    tcp.set_nodelay(true).ok();
    tcp.set_read_timeout(Some(timeout)).ok();
    tcp.set_write_timeout(Some(timeout)).ok();
    let socket = tcp.try_clone().map_err(|e| format!("{}: {e}", ep.addr))?;
    let stream = if ep.tls {
        let config = tls.ok_or_else(|| {
            format!(
                "{}: an https:// endpoint needs `group.ca_file` (the CA that signed etcd's certificate)",
                ep.addr
            )
        })?;
        let name = ServerName::try_from(ep.host().to_string())
            .map_err(|_| format!("{}: {:?} is not a host name", ep.addr, ep.host()))?;
        let conn = rustls::ClientConnection::new(Arc::clone(config), name)
            .map_err(|e| format!("{}: TLS: {e}", ep.addr))?;
        let mut s = rustls::StreamOwned::new(conn, tcp);
        while s.conn.is_handshaking() {
            s.conn
                .complete_io(&mut s.sock)
                .map_err(|e| io_words(ep, &e, config.client_auth_cert_resolver.has_certs()))?;
        }
        Stream::Tls(Box::new(s))
    } else {
        Stream::Plain(tcp)
    };
    Ok(Conn {
        io: BufReader::new(stream),
        endpoint: index,
        socket,
    })
}

/// The head of an HTTP answer.
#[derive(Debug)]
pub struct Head {
    pub status: u16,
    pub chunked: bool,
    pub length: Option<usize>,
    /// The server will close the connection after this answer.
    pub close: bool,
}

/// Write one POST request (HTTP/1.1, keep-alive).
pub fn send(
    conn: &mut Conn,
    host: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> io::Result<()> {
    let auth = token.map_or(String::new(), |t| format!("Authorization: {t}\r\n"));
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         {auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let s = conn.io.get_mut();
    s.write_all(req.as_bytes())?;
    s.flush()
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Read one line (without CRLF), at most 8 KiB.
fn line(r: &mut impl BufRead) -> io::Result<String> {
    let mut buf = Vec::new();
    r.take(8192).read_until(b'\n', &mut buf)?;
    if buf.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the connection closed mid-answer",
        ));
    }
    while matches!(buf.last(), Some(b'\n' | b'\r')) {
        buf.pop();
    }
    String::from_utf8(buf).map_err(|_| bad("not an HTTP answer"))
}

/// Read the status line and headers.
pub fn read_head(r: &mut impl BufRead) -> io::Result<Head> {
    let status_line = line(r)?;
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or("");
    let status = parts
        .next()
        .and_then(|c| c.parse().ok())
        .filter(|_| version.starts_with("HTTP/1."))
        .ok_or_else(|| bad("not an HTTP answer"))?;
    let mut head = Head {
        status,
        chunked: false,
        length: None,
        close: version == "HTTP/1.0",
    };
    for _ in 0..100 {
        let l = line(r)?;
        if l.is_empty() {
            return Ok(head);
        }
        let Some((name, value)) = l.split_once(':') else {
            continue;
        };
        let value = value.trim().to_ascii_lowercase();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => head.length = value.parse().ok(),
            "transfer-encoding" => head.chunked = value.contains("chunked"),
            "connection" => head.close = value.contains("close"),
            _ => {}
        }
    }
    Err(bad("too many headers"))
}

/// The next chunk of a chunked body; `None` after the last one.
pub fn read_chunk(r: &mut impl BufRead) -> io::Result<Option<Vec<u8>>> {
    let size_line = line(r)?;
    let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
        .map_err(|_| bad("bad chunk size"))?;
    if size > 64 << 20 {
        return Err(bad("chunk too large"));
    }
    if size == 0 {
        while !line(r)?.is_empty() {}
        return Ok(None);
    }
    let mut data = vec![0; size];
    r.read_exact(&mut data)?;
    line(r)?;
    Ok(Some(data))
}

/// The first JSON value in `bytes` (a stream's first message), or null.
pub fn first_json(bytes: &[u8]) -> Option<serde_json::Value> {
    serde_json::Deserializer::from_slice(bytes)
        .into_iter::<serde_json::Value>()
        .next()
        .and_then(Result::ok)
}

/// The first JSON value of a body or, when it is not JSON (etcd answers some refusals in
/// plain text), its text as a JSON string (at most 300 characters), so the words reach the
/// error message.
fn json_or_text(bytes: &[u8]) -> serde_json::Value {
    first_json(bytes).unwrap_or_else(|| {
        let text = String::from_utf8_lossy(bytes);
        serde_json::Value::String(text.trim().chars().take(300).collect())
    })
}

/// Read a unary answer's body. Returns the first JSON value (see [`json_or_text`]), and
/// whether the connection can carry another request. A chunked body (a streaming call such
/// as lease keep-alive) is read up to its first message; the connection is then not reused.
pub fn read_body(r: &mut impl BufRead, head: &Head) -> io::Result<(serde_json::Value, bool)> {
    if head.chunked {
        let mut buf = Vec::new();
        while let Some(chunk) = read_chunk(r)? {
            buf.extend_from_slice(&chunk);
            if let Some(v) = first_json(&buf) {
                return Ok((v, false));
            }
        }
        return Ok((json_or_text(&buf), false));
    }
    match head.length {
        Some(n) if n <= 64 << 20 => {
            let mut buf = vec![0; n];
            r.read_exact(&mut buf)?;
            Ok((json_or_text(&buf), !head.close))
        }
        Some(_) => Err(bad("answer too large")),
        None => {
            let mut buf = Vec::new();
            r.take(64 << 20).read_to_end(&mut buf)?;
            Ok((json_or_text(&buf), false))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_and_chunks() {
        let text = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                     Transfer-Encoding: chunked\r\n\r\n\
                     7\r\n{\"a\":1}\r\n3;x=y\r\n{\"b\r\n4\r\n\":2}\r\n0\r\n\r\n";
        let mut r = &text[..];
        let head = read_head(&mut r).unwrap();
        assert_eq!((head.status, head.chunked, head.close), (200, true, false));
        assert_eq!(read_chunk(&mut r).unwrap().unwrap(), b"{\"a\":1}");
        assert_eq!(read_chunk(&mut r).unwrap().unwrap(), b"{\"b");
        assert_eq!(read_chunk(&mut r).unwrap().unwrap(), b"\":2}");
        assert_eq!(read_chunk(&mut r).unwrap(), None);

        let mut r =
            &b"HTTP/1.1 400 Bad\r\ncontent-length: 7\r\nConnection: close\r\n\r\n{\"e\":1}"[..];
        let head = read_head(&mut r).unwrap();
        assert_eq!((head.status, head.length, head.close), (400, Some(7), true));
        let (v, reuse) = read_body(&mut r, &head).unwrap();
        assert_eq!((v["e"].as_i64(), reuse), (Some(1), false));

        // A refusal in plain text keeps its words (as a JSON string).
        let mut r = &b"HTTP/1.1 400 Bad\r\ncontent-length: 11\r\n\r\nno, because"[..];
        let head = read_head(&mut r).unwrap();
        let (v, _) = read_body(&mut r, &head).unwrap();
        assert_eq!(v.as_str(), Some("no, because"));

        for broken in [&b"garbage\r\n\r\n"[..], b"HTTP/1.1 200 OK\r\nX: y", b""] {
            assert!(read_head(&mut &broken[..]).is_err(), "{broken:?}");
        }
        assert!(read_chunk(&mut &b"zz\r\n"[..]).is_err());
        assert!(read_chunk(&mut &b"5\r\nab"[..]).is_err());
    }

    #[test]
    fn endpoints() {
        for (text, addr, host, tls) in [
            ("127.0.0.1:2379", "127.0.0.1:2379", "127.0.0.1", false),
            ("http://etcd-1:2379/", "etcd-1:2379", "etcd-1", false),
            ("https://etcd-1:2379", "etcd-1:2379", "etcd-1", true),
            ("https://[::1]:2379", "[::1]:2379", "::1", true),
        ] {
            let ep = Endpoint::parse(text);
            assert_eq!((ep.addr.as_str(), ep.host(), ep.tls), (addr, host, tls));
        }
    }
}
