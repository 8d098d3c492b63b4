//! Reading configuration files: the trust-checked, size-bounded read shared by the native
//! and Azure loaders, and positions in their text for messages.

use crate::codes::{ErrorCode, Location, Problem};
use std::io::Read;
use std::path::Path;

/// `offset` clamped to the text and moved back to a character boundary, so that slicing at
/// a position reported by a parser can never panic.
pub(crate) fn char_boundary(text: &str, offset: usize) -> usize {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// 1-based line and column of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = char_boundary(text, offset);
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

/// Largest configuration file read (native TOML, plugin host INI, plugin JSON). A trusted
/// path can still name something huge (`azure_plugins = ["/proc/kcore"]`, a log file): it is
/// refused instead of read into memory.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Read a configuration file after the trust check (at most [`MAX_CONFIG_BYTES`]), mapping
/// failures to `code`.
pub(crate) fn read_trusted(path: &Path, code: ErrorCode) -> Result<String, Problem> {
    read_with(path, code, crate::trust::open_config)
}

/// [`read_trusted`] for a file group/others may read (never write): the plugin host INI,
/// which Azure installs with mode 0644.
pub(crate) fn read_public(path: &Path, code: ErrorCode) -> Result<String, Problem> {
    read_with(path, code, crate::trust::open_public_config)
}

fn read_with(
    path: &Path,
    code: ErrorCode,
    open: fn(&Path) -> Result<std::fs::File, crate::trust::TrustError>,
) -> Result<String, Problem> {
    let loc = Location {
        file: path.to_path_buf(),
        line: None,
        column: None,
    };
    let file =
        open(path).map_err(|e| Problem::new(code, format!("refused: {e}")).at(loc.clone()))?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Problem::new(code, format!("cannot read: {e}")).at(loc.clone()))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(Problem::new(
            code,
            format!("larger than {MAX_CONFIG_BYTES} bytes; not a configuration file"),
        )
        .at(loc));
    }
    let mut text = decode(&bytes).map_err(|m| Problem::new(code, m).at(loc))?;
    // A UTF-8 byte-order mark (Windows editors write one) is not part of the content.
    if let Some(rest) = text.strip_prefix('\u{feff}') {
        text = rest.to_string();
    }
    Ok(text)
}

/// The text of a configuration file, which must be UTF-8; otherwise a message that says
/// which encoding the file seems to be in and what to do. UTF-16 is recognised by its
/// byte-order mark or, without one, by the zero bytes every other byte of mostly-ASCII text
/// carries (such text is valid UTF-8, so it must be caught before decoding); any other
/// invalid UTF-8 is most likely Latin-1 (or Windows-1252).
pub(crate) fn decode(bytes: &[u8]) -> Result<String, String> {
    let utf16 = |order: &str| format!("the file looks like UTF-16 ({order}); save it as UTF-8");
    if bytes.starts_with(&[0xff, 0xfe]) {
        return Err(utf16("little-endian, with a byte-order mark"));
    }
    if bytes.starts_with(&[0xfe, 0xff]) {
        return Err(utf16("big-endian, with a byte-order mark"));
    }
    let zeros = |start: usize| {
        bytes
            .iter()
            .skip(start)
            .step_by(2)
            .filter(|b| **b == 0)
            .count()
    };
    let pairs = bytes.len() / 2;
    if pairs > 0 {
        if zeros(1) * 2 > pairs && zeros(0) * 2 <= pairs {
            return Err(utf16("little-endian"));
        }
        if zeros(0) * 2 > pairs && zeros(1) * 2 <= pairs {
            return Err(utf16("big-endian"));
        }
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => Ok(text.to_string()),
        Err(e) => {
            let (line, column) = line_col(
                std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or(""),
                e.valid_up_to(),
            );
            Err(format!(
                "not UTF-8 (line {line}, column {column}); the file looks like Latin-1 or \
                 Windows-1252: save it as UTF-8"
            ))
        }
    }
}

/// Longest timeout or deadline a configuration may set (a week). Longer ones are refused by
/// the loaders instead of overflowing time arithmetic at run time.
pub const MAX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// Azure's own cap on a plugin's `timeoutInSeconds`; above it quiesce warns.
pub const AZURE_TIMEOUT_CAP_SECS: u64 = 1800;

#[cfg(test)]
mod tests {
    use super::decode;

    fn utf16(text: &str, le: bool, bom: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let units = bom.then_some(0xfeff).into_iter().chain(text.encode_utf16());
        for u in units {
            out.extend(if le { u.to_le_bytes() } else { u.to_be_bytes() });
        }
        out
    }

    #[test]
    fn encodings_other_than_utf8_get_a_hint() {
        let text = "[pre_post]\nnumberOfPlugins = 1\n";
        for (bytes, want) in [
            (
                utf16(text, true, true),
                "UTF-16 (little-endian, with a byte-order mark)",
            ),
            (
                utf16(text, false, true),
                "UTF-16 (big-endian, with a byte-order mark)",
            ),
            (utf16(text, true, false), "UTF-16 (little-endian)"),
            (utf16(text, false, false), "UTF-16 (big-endian)"),
            (b"# caf\xe9\nx = 1\n".to_vec(), "Latin-1"),
        ] {
            let e = decode(&bytes).unwrap_err();
            assert!(e.contains(want), "{e}");
            assert!(e.contains("save it as UTF-8"), "{e}");
        }
        assert!(decode(b"# caf\xe9\n")
            .unwrap_err()
            .contains("line 1, column 6"));
        assert_eq!(decode("caf\u{e9}\n".as_bytes()).unwrap(), "caf\u{e9}\n");
        assert_eq!(decode(b"").unwrap(), "");
        assert_eq!(decode(b"a").unwrap(), "a");
    }
}

/// A deserializer's message in the user's words: serde's "invalid type: integer `1`,
/// expected u32" becomes "must be a whole number from 0 to 4294967295, found the number 1";
/// Rust type names (`u32`, `struct RawPlugin`) and serde's terms (sequence, map, field)
/// never reach the user. `object` names a key-value group in the file's own language
/// ("a table" for TOML, "a JSON object" for JSON). Messages it does not know pass unchanged.
pub(crate) fn in_words(msg: &str, object: &str) -> String {
    let typed = msg
        .strip_prefix("invalid type: ")
        .or_else(|| msg.strip_prefix("invalid value: "));
    if let Some((found, expected)) = typed.and_then(|r| r.split_once(", expected ")) {
        return format!(
            "must be {}, found {}",
            expected_words(expected, object),
            found_words(found, object)
        );
    }
    if let Some((_, expected)) = msg
        .strip_prefix("invalid length ")
        .and_then(|r| r.split_once(", expected "))
    {
        return format!("must be {}", expected_words(expected, object));
    }
    if let Some(key) = msg.strip_prefix("missing field ") {
        return format!("the required key {key} is missing");
    }
    if let Some(key) = msg.strip_prefix("duplicate field ") {
        return format!("the key {key} is given twice");
    }
    if msg.starts_with("EOF while parsing") {
        return "the file ends too early (something is not closed)".to_string();
    }
    msg.to_string()
}

fn expected_words(expected: &str, object: &str) -> String {
    let whole = |max: u64| format!("a whole number from 0 to {max}");
    match expected {
        "u8" => whole(u8::MAX.into()),
        "u16" => whole(u16::MAX.into()),
        "u32" => whole(u32::MAX.into()),
        "u64" | "usize" => "a whole number".to_string(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number".to_string(),
        "f32" | "f64" => "a number".to_string(),
        "a boolean" => "true or false".to_string(),
        "a sequence" => "a list".to_string(),
        "path string" => "a path (a string)".to_string(),
        "a map" | "map" => object.to_string(),
        e if e.starts_with("struct ") => object.to_string(),
        other => other.to_string(),
    }
}

fn found_words(found: &str, object: &str) -> String {
    let quoted = |prefix: &str| {
        found
            .strip_prefix(prefix)
            .map(|v| v.trim_matches('`').to_string())
    };
    if let Some(n) = quoted("integer ").or_else(|| quoted("floating point ")) {
        return format!("the number {n}");
    }
    if let Some(b) = quoted("boolean ") {
        return b;
    }
    if let Some(s) = found.strip_prefix("string ") {
        return format!("the string {s}");
    }
    match found {
        "map" => object.to_string(),
        "sequence" => "a list".to_string(),
        "unit" => "nothing".to_string(),
        other => other.to_string(),
    }
}

/// Words of Rust and serde that must never reach the user (for tests of the loaders).
#[cfg(test)]
pub(crate) const NOT_USERS_WORDS: &[&str] = &[
    "invalid type",
    "invalid value",
    "invalid length",
    "expected u",
    "expected i",
    "struct",
    "Raw",
    "sequence",
    "map",
    "field",
    "EOF",
    "`?`",
];

#[cfg(test)]
mod words_tests {
    use super::in_words;

    #[test]
    fn serde_messages_in_the_users_words() {
        for (msg, want) in [
            (
                "invalid value: integer `-1`, expected u32",
                "must be a whole number from 0 to 4294967295, found the number -1",
            ),
            (
                "invalid type: string \"2\", expected u32",
                "must be a whole number from 0 to 4294967295, found the string \"2\"",
            ),
            (
                "invalid type: integer `1`, expected struct RawFreeze",
                "must be a table, found the number 1",
            ),
            (
                "invalid type: map, expected a sequence",
                "must be a list, found a table",
            ),
            (
                "invalid type: string \"/a\", expected a sequence",
                "must be a list, found the string \"/a\"",
            ),
            (
                "invalid type: integer `5`, expected path string",
                "must be a path (a string), found the number 5",
            ),
            (
                "invalid type: floating point `1.5`, expected u32",
                "must be a whole number from 0 to 4294967295, found the number 1.5",
            ),
            (
                "invalid type: string \"yes\", expected a boolean",
                "must be true or false, found the string \"yes\"",
            ),
            ("missing field `name`", "the required key `name` is missing"),
            ("duplicate field `x`", "the key `x` is given twice"),
        ] {
            assert_eq!(in_words(msg, "a table"), want);
        }
        assert_eq!(
            in_words(
                "invalid length 0, expected struct RawPlugin with 11 elements",
                "a JSON object"
            ),
            "must be a JSON object"
        );
    }
}
