//! A bounded tail buffer for script output: keeps the last N bytes, counts the rest; and the
//! one quoting function for child output shown to operators.

/// Child output (a hook's tails, the snapshot command's stderr) as it may appear in a log
/// line or a message: every control character escaped (`\n`, `\r`, `\u{1b}`, ...), so output
/// can neither start a forged log line nor drive the operator's terminal.
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A path as it may appear in a message, a log line or `quiesce check` output: [`quote`]d,
/// so a file name with a newline or an escape sequence is shown escaped (`\n`, `\u{1b}`).
pub fn quote_path(path: &std::path::Path) -> String {
    quote(&path.to_string_lossy())
}

/// Keeps the last `cap` bytes written to it.
#[derive(Debug, Clone)]
pub struct Tail {
    cap: usize,
    buf: std::collections::VecDeque<u8>,
    total: u64,
}

impl Tail {
    pub fn new(cap: usize) -> Self {
        Tail {
            cap,
            buf: std::collections::VecDeque::with_capacity(cap.min(4096)),
            total: 0,
        }
    }
    pub fn push(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        let data = if data.len() > self.cap {
            &data[data.len() - self.cap..]
        } else {
            data
        };
        let overflow = (self.buf.len() + data.len()).saturating_sub(self.cap);
        self.buf.drain(..overflow);
        self.buf.extend(data);
    }
    /// Total bytes ever pushed.
    pub fn total(&self) -> u64 {
        self.total
    }
    /// The kept bytes, lossily decoded.
    pub fn to_string_lossy(&self) -> String {
        let (a, b) = self.buf.as_slices();
        let mut v = Vec::with_capacity(a.len() + b.len());
        v.extend_from_slice(a);
        v.extend_from_slice(b);
        String::from_utf8_lossy(&v).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn keeps_only_the_tail() {
        let mut t = Tail::new(4);
        t.push(b"ab");
        t.push(b"cdef");
        assert_eq!(t.to_string_lossy(), "cdef");
        t.push(b"0123456789");
        assert_eq!(t.to_string_lossy(), "6789");
        assert_eq!(t.total(), 16);
    }
}

#[cfg(test)]
mod quote_tests {
    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            super::quote("ok\nFAKE level=INFO\r\u{1b}[2J\tend é"),
            "ok\\nFAKE level=INFO\\r\\u{1b}[2J\\tend é"
        );
    }
}
