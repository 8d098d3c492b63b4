//! mountinfo decoding (`quiesce::freeze::mountinfo::parse_bytes`, and `parse` on UTF-8).
//!
//! Oracle: never panics; an error is a `ParseError` naming a line that exists and is not
//! blank; a success has one mount per non-blank line, each with a mount point and a
//! filesystem type, and re-escaping a decoded mount point the kernel's way and decoding it
//! again gives the same path back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quiesce::freeze::mountinfo::{escape, parse, parse_bytes, unescape};
use std::os::unix::ffi::OsStrExt;

fuzz_target!(|data: &[u8]| {
    let lines: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
    let result = parse_bytes(data);
    if let Ok(text) = std::str::from_utf8(data) {
        assert_eq!(parse(text), result, "parse and parse_bytes disagree");
    }
    match result {
        Err(e) => {
            assert!(e.line >= 1 && e.line <= lines.len(), "{e}");
            assert!(!lines[e.line - 1].trim_ascii().is_empty(), "{e}");
            assert!(!e.message.is_empty());
            assert!(e
                .to_string()
                .starts_with(&format!("mountinfo line {}: ", e.line)));
        }
        Ok(mounts) => {
            let non_blank = lines.iter().filter(|l| !l.trim_ascii().is_empty()).count();
            assert_eq!(mounts.len(), non_blank);
            for m in &mounts {
                assert!(!m.fstype.is_empty());
                assert!(!m.mount_point.as_os_str().is_empty());
                assert!(!m.root.as_os_str().is_empty());
                let again = unescape(&escape(&m.mount_point));
                assert_eq!(again, m.mount_point.as_os_str().as_bytes());
            }
        }
    }
});
