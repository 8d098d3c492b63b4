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
