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
    let mut text = String::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| Problem::new(code, format!("cannot read: {e}")).at(loc.clone()))?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(Problem::new(
            code,
            format!("larger than {MAX_CONFIG_BYTES} bytes; not a configuration file"),
        )
        .at(loc));
    }
    // A UTF-8 byte-order mark (Windows editors write one) is not part of the content.
    if let Some(rest) = text.strip_prefix('\u{feff}') {
        text = rest.to_string();
    }
    Ok(text)
}

/// Longest timeout or deadline a configuration may set (a week). Longer ones are refused by
/// the loaders instead of overflowing time arithmetic at run time.
pub const MAX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// Azure's own cap on a plugin's `timeoutInSeconds`; above it quiesce warns.
pub const AZURE_TIMEOUT_CAP_SECS: u64 = 1800;
