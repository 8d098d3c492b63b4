//! Operation ids: `YYYYMMDDTHHMMSSZ-xxxxxxxx` (UTC time, 32 random bits), sortable by time
//! and safe in file names.

use std::time::SystemTime;

/// A new operation id.
pub fn generate() -> String {
    let mut rnd = [0u8; 4];
    // getrandom only fails before the pool is initialised at early boot; fall back to the pid.
    if rustix::rand::getrandom(&mut rnd, rustix::rand::GetRandomFlags::empty()).is_err() {
        rnd = std::process::id().to_le_bytes();
    }
    let compact = compact_utc(SystemTime::now()).unwrap_or_default();
    format!(
        "{compact}-{:02x}{:02x}{:02x}{:02x}",
        rnd[0], rnd[1], rnd[2], rnd[3]
    )
}

pub use crate::time::compact_utc;

/// Is `s` a plausible operation id (used to validate ids given by API callers)?
pub fn is_valid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !s.starts_with('.')
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_valid_and_distinct() {
        let a = super::generate();
        let b = super::generate();
        assert_ne!(a, b);
        assert!(super::is_valid(&a), "{a}");
        assert_eq!(a.len(), "20261125T213000Z-1a2b3c4d".len(), "{a}");
        assert!(!super::is_valid("../x"));
    }
}
