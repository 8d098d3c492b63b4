//! Snapshot names: `<label>@<UTC YYYYMMDDTHHMMSSZ>@<operation id>`.
//!
//! Why this shape: the name is the only metadata a btrfs snapshot carries that survives
//! every tool (`ls`, `btrfs subvolume list`, send/receive), so the run's time and operation
//! id are put in it; for one subvolume, names sort by time; a run is recovered from the
//! operation id. The label is the subvolume's base name, for humans.
//!
//! Parsing is from the right, so a label may itself contain `@`. The operation id is
//! percent-encoded when it has characters outside `[A-Za-z0-9._-]` (ids from a caller in
//! host-driven mode may contain anything), so it never contains `@` or `/`. The parser is
//! tolerant: any non-empty operation id is accepted, not only the agent's
//! `YYYYMMDDTHHMMSSZ-xxxxxxxx` shape.

use std::time::{SystemTime, UNIX_EPOCH};

/// Longest file name btrfs accepts (NAME_MAX).
pub const NAME_MAX: usize = 255;

/// Length of the time field, `YYYYMMDDTHHMMSSZ`.
const TIME_LEN: usize = 16;

/// What a snapshot name says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedName {
    /// The subvolume's base name (possibly truncated).
    pub label: String,
    /// Seconds since the epoch (second precision, UTC).
    pub created_unix: i64,
    /// The operation id of the run that made it (decoded).
    pub operation_id: String,
}

/// `YYYYMMDDTHHMMSSZ` for `t` (UTC); `None` before 1970 or after 9999.
/// The same stamp operation ids start with ([`crate::time::compact_utc`]).
pub fn format_time(t: SystemTime) -> Option<String> {
    crate::time::compact_utc(t)
}

/// Seconds since the epoch for a `YYYYMMDDTHHMMSSZ` field, if it is one.
pub fn parse_time(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let shape_ok = b.len() == TIME_LEN
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit);
    if !shape_ok {
        return None;
    }
    let rfc = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13],
        &s[13..15]
    );
    let t = humantime::parse_rfc3339(&rfc).ok()?;
    i64::try_from(t.duration_since(UNIX_EPOCH).ok()?.as_secs()).ok()
}

/// Percent-encode every byte outside `[A-Za-z0-9._-]`.
pub fn encode_operation_id(op: &str) -> String {
    let mut out = String::with_capacity(op.len());
    for b in op.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Undo [`encode_operation_id`]; a field that is not valid encoding is taken as it is.
pub fn decode_operation_id(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            match (
                b.get(i + 1).and_then(|c| hex(*c)),
                b.get(i + 2).and_then(|c| hex(*c)),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => return s.to_string(),
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
}

/// The snapshot name for a subvolume labelled `label`, stamped `time`, made by operation
/// `operation_id`. The label is shortened (on a character boundary) if the name would pass
/// [`NAME_MAX`]; `Err` says why no valid name exists.
pub fn compose(label: &str, time: &str, operation_id: &str) -> Result<String, String> {
    if operation_id.is_empty() {
        return Err("the operation id is empty".into());
    }
    let op = encode_operation_id(operation_id);
    let fixed = time.len() + op.len() + 2;
    if fixed + 1 > NAME_MAX {
        return Err(format!(
            "the operation id {operation_id:?} is too long for a snapshot name ({NAME_MAX} bytes at most)"
        ));
    }
    let mut label: &str = if label.is_empty() { "root" } else { label };
    while label.len() + fixed > NAME_MAX {
        let mut cut = label.len() - 1;
        while !label.is_char_boundary(cut) {
            cut -= 1;
        }
        label = &label[..cut];
    }
    Ok(format!("{label}@{time}@{op}"))
}

/// Parse a name made by [`compose`]; `None` for anything else (foreign entries).
pub fn parse(name: &str) -> Option<ParsedName> {
    let (rest, op) = name.rsplit_once('@')?;
    let (label, time) = rest.rsplit_once('@')?;
    if label.is_empty() || op.is_empty() {
        return None;
    }
    Some(ParsedName {
        label: label.to_string(),
        created_unix: parse_time(time)?,
        operation_id: decode_operation_id(op),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const T: i64 = 1_795_728_600; // 2026-11-26T21:30:00Z

    fn at(secs: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    }

    #[test]
    fn time_round_trips() {
        let s = format_time(at(T)).unwrap();
        assert_eq!(s, "20261126T213000Z");
        assert_eq!(parse_time(&s), Some(T));
        assert_eq!(format_time(at(0)).unwrap(), "19700101T000000Z");
        assert_eq!(parse_time("19700101T000000Z"), Some(0));
        // Sub-second parts are dropped, not rounded.
        let s = format_time(at(T) + Duration::from_millis(999)).unwrap();
        assert_eq!(parse_time(&s), Some(T));
    }

    #[test]
    fn bad_times_are_rejected() {
        for bad in [
            "",
            "20261126T213000",
            "20261126 213000Z",
            "2026112aT213000Z",
            "20261326T213000Z",
            "20261126T253000Z",
            "2026-11-26T21:30:00Z",
            "20261126T213000Z0",
        ] {
            assert_eq!(parse_time(bad), None, "{bad:?}");
        }
        assert_eq!(format_time(UNIX_EPOCH - Duration::from_secs(1)), None);
    }

    #[test]
    fn names_round_trip() {
        let n = compose("data", "20261126T213000Z", "20261126T213000Z-1a2b3c4d").unwrap();
        assert_eq!(n, "data@20261126T213000Z@20261126T213000Z-1a2b3c4d");
        let p = parse(&n).unwrap();
        assert_eq!(p.label, "data");
        assert_eq!(p.created_unix, T);
        assert_eq!(p.operation_id, "20261126T213000Z-1a2b3c4d");
    }

    #[test]
    fn odd_operation_ids_are_encoded_and_recovered() {
        for op in ["a@b", "x/y", "50%", "caller id: ünïcode", "@", "%41"] {
            let n = compose("db", "20261126T213000Z", op).unwrap();
            assert!(!n.contains('/'), "{n}");
            assert_eq!(n.matches('@').count(), 2, "{n}");
            assert_eq!(parse(&n).unwrap().operation_id, op, "{n}");
        }
    }

    #[test]
    fn labels_may_contain_at() {
        let n = compose("we@ird", "20261126T213000Z", "op").unwrap();
        let p = parse(&n).unwrap();
        assert_eq!(p.label, "we@ird");
        assert_eq!(p.operation_id, "op");
    }

    #[test]
    fn parser_is_tolerant_of_hand_made_operation_ids() {
        let p = parse("home@20261126T213000Z@manual").unwrap();
        assert_eq!(p.operation_id, "manual");
        // Invalid percent-encoding is kept as written.
        assert_eq!(
            parse("h@20261126T213000Z@50%zz").unwrap().operation_id,
            "50%zz"
        );
        // Encoded bytes that are not UTF-8 too.
        assert_eq!(parse("h@20261126T213000Z@%FF").unwrap().operation_id, "%FF");
    }

    #[test]
    fn foreign_names_are_ignored() {
        for foreign in [
            "data",
            ".snapshots",
            "data@20261126T213000Z",
            "data@20261126T213000Z@",
            "@20261126T213000Z@op",
            "data@2026-11-26@op",
            "data@latest@op",
            "data-20261126T213000Z-op",
        ] {
            assert_eq!(parse(foreign), None, "{foreign:?}");
        }
    }

    #[test]
    fn empty_label_is_root() {
        let n = compose("", "20261126T213000Z", "op").unwrap();
        assert!(n.starts_with("root@"));
    }

    #[test]
    fn long_labels_are_shortened_to_fit() {
        let label = "é".repeat(200); // 400 bytes
        let n = compose(&label, "20261126T213000Z", "20261126T213000Z-1a2b3c4d").unwrap();
        assert!(n.len() <= NAME_MAX, "{}", n.len());
        assert!(n.len() >= NAME_MAX - 1);
        let p = parse(&n).unwrap();
        assert!(label.starts_with(&p.label));
        assert_eq!(p.operation_id, "20261126T213000Z-1a2b3c4d");
    }

    #[test]
    fn too_long_or_empty_operation_ids_are_errors() {
        assert!(compose("d", "20261126T213000Z", "").is_err());
        let long = "x".repeat(NAME_MAX);
        let e = compose("d", "20261126T213000Z", &long).unwrap_err();
        assert!(e.contains("too long"), "{e}");
    }

    #[test]
    fn names_of_one_subvolume_sort_by_time() {
        let a = compose("d", &format_time(at(T)).unwrap(), "z").unwrap();
        let b = compose("d", &format_time(at(T + 1)).unwrap(), "a").unwrap();
        let c = compose("d", &format_time(at(T + 86_400 * 40)).unwrap(), "m").unwrap();
        let mut v = vec![c.clone(), a.clone(), b.clone()];
        v.sort();
        assert_eq!(v, [a, b, c]);
    }
}
