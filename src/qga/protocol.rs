//! The QEMU guest-agent wire protocol, without any I/O: splitting the byte stream into
//! messages, decoding a request, checking a command's arguments, and writing answers.
//!
//! The host writes JSON objects (usually one per line); every answer is one JSON object on
//! one line: `{"return": VALUE}` or `{"error": {"class": CLASS, "desc": TEXT}}`, with the
//! request's `"id"` copied when it had one. A `0xFF` byte is never valid JSON: the host sends
//! it to make the agent drop a half-received message, and the agent prefixes its answer to
//! `guest-sync-delimited` with `0xFF` so the host can drop stale answers before it.
//! The error texts follow qemu-ga's where a host could match on them.

use serde_json::{Map, Value};

/// Longest message accepted; a longer one is dropped with an error (qemu-ga caps tokens too).
pub const MAX_MESSAGE: usize = 1 << 20;

/// Deepest nesting accepted in a message.
pub const MAX_DEPTH: usize = 64;

/// The resynchronisation byte.
pub const SYNC_BYTE: u8 = 0xFF;

/// One unit the [`Splitter`] found in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The bytes of one complete top-level JSON value.
    Message(Vec<u8>),
    /// Bytes that can never be JSON (a `0xFF`, an oversized or too deep message): whatever was
    /// pending is dropped, and the host gets one error.
    Garbage(String),
}

/// Splits a byte stream into top-level JSON values, across reads and several per read.
#[derive(Debug, Default)]
pub struct Splitter {
    buf: Vec<u8>,
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// Skipping the rest of an oversized or too deep message, up to its end at depth 0.
    skipping: bool,
}

impl Splitter {
    pub fn new() -> Splitter {
        Splitter::default()
    }

    fn reset(&mut self) {
        self.buf.clear();
        self.depth = 0;
        self.in_string = false;
        self.escaped = false;
    }

    /// Feed bytes; returns the frames completed by them, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Frame> {
        let mut out = Vec::new();
        for &b in bytes {
            if b == SYNC_BYTE {
                let was_skipping = std::mem::take(&mut self.skipping);
                self.reset();
                if !was_skipping {
                    out.push(Frame::Garbage("JSON parse error, stray '\\xFF'".into()));
                }
                continue;
            }
            if self.skipping {
                self.track(b);
                if self.depth == 0 && !self.in_string {
                    self.skipping = false;
                    self.reset();
                }
                continue;
            }
            if self.buf.is_empty() && self.depth == 0 && b.is_ascii_whitespace() {
                continue;
            }
            self.buf.push(b);
            self.track(b);
            let scalar_end = self.depth == 0
                && !self.in_string
                && !matches!(self.buf[0], b'{' | b'[' | b'"')
                && b.is_ascii_whitespace();
            let nested_end = self.depth == 0
                && !self.in_string
                && matches!(self.buf[0], b'{' | b'[' | b'"')
                && matches!(b, b'}' | b']' | b'"');
            if nested_end || scalar_end {
                let msg = std::mem::take(&mut self.buf);
                self.reset();
                out.push(Frame::Message(msg));
            } else if self.buf.len() > MAX_MESSAGE || self.depth > MAX_DEPTH {
                let why = if self.depth > MAX_DEPTH {
                    "JSON parse error, nesting too deep"
                } else {
                    "JSON parse error, message too large"
                };
                out.push(Frame::Garbage(why.into()));
                let (depth, in_string, escaped) = (self.depth, self.in_string, self.escaped);
                self.reset();
                self.depth = depth;
                self.in_string = in_string;
                self.escaped = escaped;
                self.skipping = true;
            }
        }
        out
    }

    /// Update string/depth tracking for one byte (already known not to be `0xFF`).
    fn track(&mut self, b: u8) {
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
            }
            return;
        }
        match b {
            b'"' => self.in_string = true,
            b'{' | b'[' => self.depth += 1,
            b'}' | b']' => self.depth = self.depth.saturating_sub(1),
            _ => {}
        }
    }
}

/// QMP error classes qemu-ga answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    GenericError,
    CommandNotFound,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::GenericError => "GenericError",
            ErrorClass::CommandNotFound => "CommandNotFound",
        }
    }
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QgaError {
    pub class: ErrorClass,
    pub desc: String,
}

impl QgaError {
    pub fn generic(desc: impl Into<String>) -> QgaError {
        QgaError {
            class: ErrorClass::GenericError,
            desc: desc.into(),
        }
    }
    pub fn not_found(command: &str) -> QgaError {
        QgaError {
            class: ErrorClass::CommandNotFound,
            desc: format!("The command {command} has not been found"),
        }
    }
    /// A command refused while the filesystems are frozen (qemu-ga disables it).
    pub fn disabled_while_frozen(command: &str) -> QgaError {
        QgaError {
            class: ErrorClass::CommandNotFound,
            desc: format!("Command {command} has been disabled: the agent is in frozen state"),
        }
    }
}

/// A decoded request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub execute: String,
    pub arguments: Map<String, Value>,
    /// Copied into the answer when present.
    pub id: Option<Value>,
}

/// Decode one message into a request. On error, the `id` (when one could be read) is still
/// given back so the answer can carry it.
pub fn decode(msg: &[u8]) -> Result<Request, (QgaError, Option<Value>)> {
    let value: Value = serde_json::from_slice(msg).map_err(|e| {
        (
            QgaError::generic(format!("JSON parse error, {}", plain_json_error(&e))),
            None,
        )
    })?;
    let Value::Object(mut obj) = value else {
        return Err((QgaError::generic("QMP input must be a JSON object"), None));
    };
    let id = obj.remove("id");
    let fail = |desc: String| Err((QgaError::generic(desc), id.clone()));
    if let Some(key) = obj
        .keys()
        .find(|k| !matches!(k.as_str(), "execute" | "arguments"))
    {
        return fail(format!("QMP input member '{key}' is unexpected"));
    }
    let execute = match obj.remove("execute") {
        None => return fail("QMP input lacks member 'execute'".into()),
        Some(Value::String(s)) => s,
        Some(_) => return fail("QMP input member 'execute' must be a string".into()),
    };
    let arguments = match obj.remove("arguments") {
        None => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return fail("QMP input member 'arguments' must be an object".into()),
    };
    Ok(Request {
        execute,
        arguments,
        id,
    })
}

/// serde_json's message without its " at line 1 column 5" tail (the host sent one line).
fn plain_json_error(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// The commands quiesce answers itself; everything else is forwarded or `CommandNotFound`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Sync { id: i64, delimited: bool },
    Ping,
    Info,
    FreezeStatus,
    Freeze,
    FreezeList { mountpoints: Option<Vec<String>> },
    Thaw,
}

/// Names of the commands of [`Command`], as `guest-info` lists them.
pub const OWN_COMMANDS: &[&str] = &[
    "guest-sync",
    "guest-sync-delimited",
    "guest-ping",
    "guest-info",
    "guest-fsfreeze-status",
    "guest-fsfreeze-freeze",
    "guest-fsfreeze-freeze-list",
    "guest-fsfreeze-thaw",
];

/// Commands still allowed while frozen (qemu-ga disables every other one, since answering
/// them could mean writing to a frozen filesystem).
pub const ALLOWED_WHILE_FROZEN: &[&str] = &[
    "guest-sync",
    "guest-sync-delimited",
    "guest-ping",
    "guest-info",
    "guest-fsfreeze-status",
    "guest-fsfreeze-thaw",
];

/// Is `name` one of quiesce's own commands (never forwarded)?
pub fn is_own(name: &str) -> bool {
    OWN_COMMANDS.contains(&name)
}

/// Check the arguments of one of quiesce's own commands. `Ok(None)`: not one of them.
pub fn command(req: &Request) -> Result<Option<Command>, QgaError> {
    let args = &req.arguments;
    let only = |allowed: &[&str]| -> Result<(), QgaError> {
        match args.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(QgaError::generic(format!("Parameter '{k}' is unexpected"))),
            None => Ok(()),
        }
    };
    let cmd = match req.execute.as_str() {
        name @ ("guest-sync" | "guest-sync-delimited") => {
            only(&["id"])?;
            let id = match args.get("id") {
                None => return Err(QgaError::generic("Parameter 'id' is missing")),
                Some(v) => v.as_i64().ok_or_else(|| {
                    QgaError::generic("Invalid parameter type for 'id', expected: integer")
                })?,
            };
            Command::Sync {
                id,
                delimited: name == "guest-sync-delimited",
            }
        }
        "guest-ping" => {
            only(&[])?;
            Command::Ping
        }
        "guest-info" => {
            only(&[])?;
            Command::Info
        }
        "guest-fsfreeze-status" => {
            only(&[])?;
            Command::FreezeStatus
        }
        "guest-fsfreeze-freeze" => {
            only(&[])?;
            Command::Freeze
        }
        "guest-fsfreeze-freeze-list" => {
            only(&["mountpoints"])?;
            let wrong =
                || QgaError::generic("Invalid parameter type for 'mountpoints', expected: array");
            let mountpoints = match args.get("mountpoints") {
                None | Some(Value::Null) => None,
                Some(Value::Array(items)) => Some(
                    items
                        .iter()
                        .map(|v| {
                            v.as_str().map(str::to_string).ok_or_else(|| {
                                QgaError::generic(
                                    "Invalid parameter type for 'mountpoints[]', expected: string",
                                )
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                ),
                Some(_) => return Err(wrong()),
            };
            Command::FreezeList { mountpoints }
        }
        "guest-fsfreeze-thaw" => {
            only(&[])?;
            Command::Thaw
        }
        _ => return Ok(None),
    };
    Ok(Some(cmd))
}

/// `{"return": VALUE}` (with the id), one line.
pub fn answer_return(value: &Value, id: Option<&Value>) -> Vec<u8> {
    let mut s = format!("{{\"return\": {value}");
    if let Some(id) = id {
        s.push_str(&format!(", \"id\": {id}"));
    }
    s.push_str("}\n");
    s.into_bytes()
}

/// `{"error": {"class": .., "desc": ..}}` (with the id), one line.
pub fn answer_error(err: &QgaError, id: Option<&Value>) -> Vec<u8> {
    let mut s = format!(
        "{{\"error\": {{\"class\": {}, \"desc\": {}}}",
        Value::from(err.class.as_str()),
        Value::from(err.desc.as_str())
    );
    if let Some(id) = id {
        s.push_str(&format!(", \"id\": {id}"));
    }
    s.push_str("}\n");
    s.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msgs(chunks: &[&[u8]]) -> Vec<Frame> {
        let mut s = Splitter::new();
        chunks.iter().flat_map(|c| s.push(c)).collect()
    }

    fn m(s: &str) -> Frame {
        Frame::Message(s.as_bytes().to_vec())
    }

    #[test]
    fn splitter_table() {
        let stray = Frame::Garbage("JSON parse error, stray '\\xFF'".into());
        let cases: Vec<(Vec<&[u8]>, Vec<Frame>)> = vec![
            (
                vec![b"{\"execute\":\"guest-ping\"}\n"],
                vec![m("{\"execute\":\"guest-ping\"}")],
            ),
            (
                vec![b"{\"execute\":", b"\"guest-ping\"}"],
                vec![m("{\"execute\":\"guest-ping\"}")],
            ),
            (vec![b"{}{}"], vec![m("{}"), m("{}")]),
            (vec![b"  \r\n\n"], vec![]),
            (vec![b"{\"a\":\"}\\\"{\"}"], vec![m("{\"a\":\"}\\\"{\"}")]),
            (vec![b"\xff{}"], vec![stray.clone(), m("{}")]),
            (vec![b"{\"exec\xff{}"], vec![stray.clone(), m("{}")]),
            (vec![b"[1,[2]]"], vec![m("[1,[2]]")]),
            (vec![b"\"s\""], vec![m("\"s\"")]),
            (vec![b"123 "], vec![m("123 ")]),
            (vec![b"{\"a\":1"], vec![]),
        ];
        for (input, want) in cases {
            assert_eq!(msgs(&input), want, "input {input:?}");
        }
    }

    #[test]
    fn splitter_bounds_depth_and_size() {
        let deep = "[".repeat(MAX_DEPTH + 5) + &"]".repeat(MAX_DEPTH + 5) + "{}";
        let got = msgs(&[deep.as_bytes()]);
        assert_eq!(
            got,
            vec![
                Frame::Garbage("JSON parse error, nesting too deep".into()),
                m("{}")
            ]
        );
        let big = format!("{{\"a\":\"{}\"}}{{}}", "x".repeat(MAX_MESSAGE + 10));
        let got = msgs(&[big.as_bytes()]);
        assert_eq!(
            got,
            vec![
                Frame::Garbage("JSON parse error, message too large".into()),
                m("{}")
            ]
        );
    }

    #[test]
    fn decode_table() {
        type Want = Result<(&'static str, Value, Option<Value>), (&'static str, Option<Value>)>;
        let cases: Vec<(&str, Want)> = vec![
            (
                r#"{"execute":"guest-ping"}"#,
                Ok(("guest-ping", json!({}), None)),
            ),
            (
                r#"{"execute":"guest-ping","id":7}"#,
                Ok(("guest-ping", json!({}), Some(json!(7)))),
            ),
            (
                r#"{"execute":"guest-sync","arguments":{"id":3}}"#,
                Ok(("guest-sync", json!({"id":3}), None)),
            ),
            (r#"[1,2]"#, Err(("QMP input must be a JSON object", None))),
            (r#""s""#, Err(("QMP input must be a JSON object", None))),
            (
                r#"{"exec":"x"}"#,
                Err(("QMP input member 'exec' is unexpected", None)),
            ),
            (
                r#"{"id":1}"#,
                Err(("QMP input lacks member 'execute'", Some(json!(1)))),
            ),
            (
                r#"{"execute":5}"#,
                Err(("QMP input member 'execute' must be a string", None)),
            ),
            (
                r#"{"execute":"x","arguments":[]}"#,
                Err(("QMP input member 'arguments' must be an object", None)),
            ),
        ];
        for (input, want) in cases {
            let got = decode(input.as_bytes());
            match (got, want) {
                (Ok(r), Ok((exe, args, id))) => {
                    assert_eq!(r.execute, exe, "{input}");
                    assert_eq!(Value::Object(r.arguments), args, "{input}");
                    assert_eq!(r.id, id, "{input}");
                }
                (Err((e, id)), Err((desc, want_id))) => {
                    assert_eq!(e.class, ErrorClass::GenericError, "{input}");
                    assert_eq!(e.desc, desc, "{input}");
                    assert_eq!(id, want_id, "{input}");
                }
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
        let (e, _) = decode(b"{bad json}").unwrap_err();
        assert!(e.desc.starts_with("JSON parse error, "), "{}", e.desc);
        assert!(!e.desc.contains("line"), "{}", e.desc);
    }

    #[test]
    fn command_table() {
        let req = |execute: &str, args: Value| Request {
            execute: execute.into(),
            arguments: args.as_object().unwrap().clone(),
            id: None,
        };
        let cases: Vec<(Request, Result<Option<Command>, &str>)> = vec![
            (
                req("guest-sync", json!({"id": 5})),
                Ok(Some(Command::Sync {
                    id: 5,
                    delimited: false,
                })),
            ),
            (
                req("guest-sync", json!({"id": -5})),
                Ok(Some(Command::Sync {
                    id: -5,
                    delimited: false,
                })),
            ),
            (
                req("guest-sync-delimited", json!({"id": 9})),
                Ok(Some(Command::Sync {
                    id: 9,
                    delimited: true,
                })),
            ),
            (
                req("guest-sync", json!({})),
                Err("Parameter 'id' is missing"),
            ),
            (
                req("guest-sync", json!({"id": 1.5})),
                Err("Invalid parameter type for 'id', expected: integer"),
            ),
            (
                req("guest-sync", json!({"id": 18446744073709551615u64})),
                Err("Invalid parameter type for 'id', expected: integer"),
            ),
            (
                req("guest-sync", json!({"id": 1, "zz": 2})),
                Err("Parameter 'zz' is unexpected"),
            ),
            (req("guest-ping", json!({})), Ok(Some(Command::Ping))),
            (
                req("guest-ping", json!({"x": 1})),
                Err("Parameter 'x' is unexpected"),
            ),
            (req("guest-info", json!({})), Ok(Some(Command::Info))),
            (
                req("guest-fsfreeze-status", json!({})),
                Ok(Some(Command::FreezeStatus)),
            ),
            (
                req("guest-fsfreeze-freeze", json!({})),
                Ok(Some(Command::Freeze)),
            ),
            (
                req("guest-fsfreeze-freeze-list", json!({})),
                Ok(Some(Command::FreezeList { mountpoints: None })),
            ),
            (
                req(
                    "guest-fsfreeze-freeze-list",
                    json!({"mountpoints": ["/a", "/b"]}),
                ),
                Ok(Some(Command::FreezeList {
                    mountpoints: Some(vec!["/a".into(), "/b".into()]),
                })),
            ),
            (
                req("guest-fsfreeze-freeze-list", json!({"mountpoints": "x"})),
                Err("Invalid parameter type for 'mountpoints', expected: array"),
            ),
            (
                req("guest-fsfreeze-freeze-list", json!({"mountpoints": [1]})),
                Err("Invalid parameter type for 'mountpoints[]', expected: string"),
            ),
            (
                req("guest-fsfreeze-thaw", json!({})),
                Ok(Some(Command::Thaw)),
            ),
            (req("guest-exec", json!({"path": "/bin/true"})), Ok(None)),
        ];
        for (r, want) in cases {
            let got = command(&r).map_err(|e| e.desc);
            assert_eq!(got, want.map_err(str::to_string), "{}", r.execute);
        }
    }

    #[test]
    fn answers_are_one_line_with_the_id() {
        assert_eq!(answer_return(&json!({}), None), b"{\"return\": {}}\n");
        assert_eq!(
            answer_return(&json!(7), Some(&json!("a"))),
            b"{\"return\": 7, \"id\": \"a\"}\n"
        );
        let e = answer_error(&QgaError::not_found("nope"), Some(&json!(1)));
        let v: Value = serde_json::from_slice(&e).unwrap();
        assert_eq!(
            v,
            json!({"error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}, "id": 1})
        );
        let e = answer_error(&QgaError::generic("a \"quoted\"\nline"), None);
        assert_eq!(e.iter().filter(|&&b| b == b'\n').count(), 1);
    }
}
