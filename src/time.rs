//! Time helpers shared by every module: milliseconds for reports, RFC 3339 and the compact
//! UTC stamp used in operation ids and snapshot names.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Whole milliseconds, saturating at `u64::MAX` (never wraps).
pub fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

/// RFC 3339 UTC with second precision.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Whole seconds since the epoch (0 before it).
pub fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs().min(i64::MAX as u64) as i64)
}

/// `YYYYMMDDTHHMMSSZ` for `t` (UTC, whole seconds): sortable and safe in file names.
/// `None` before 1970 or from the year 10000 on (not four digits any more).
pub fn compact_utc(t: SystemTime) -> Option<String> {
    let secs = t.duration_since(UNIX_EPOCH).ok()?.as_secs();
    if secs >= 253_402_300_800 {
        return None;
    }
    let rfc = rfc3339(UNIX_EPOCH + Duration::from_secs(secs));
    Some(rfc.chars().filter(|c| *c != '-' && *c != ':').collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ms_saturates() {
        assert_eq!(ms(Duration::from_micros(1_999)), 1);
        assert_eq!(ms(Duration::MAX), u64::MAX);
    }

    #[test]
    fn stamps() {
        let t = UNIX_EPOCH + Duration::from_secs(1_764_547_200);
        assert_eq!(rfc3339(t), "2025-12-01T00:00:00Z");
        assert_eq!(compact_utc(t).as_deref(), Some("20251201T000000Z"));
        assert_eq!(compact_utc(UNIX_EPOCH - Duration::from_secs(1)), None);
    }
}
