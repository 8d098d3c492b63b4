//! The one quoting function for child output (and paths) shown to operators: every module
//! that prints text it did not write (hook output, file names) goes through it.

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

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            super::quote("ok\nFAKE level=INFO\r\u{1b}[2J\tend é"),
            "ok\\nFAKE level=INFO\\r\\u{1b}[2J\\tend é"
        );
    }
}
