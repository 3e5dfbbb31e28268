//! Times shown to people, the one helper every program uses. The clock is
//! never read here: callers pass unix milliseconds.

use std::time::{Duration, UNIX_EPOCH};

/// The last millisecond RFC 3339 can write: 9999-12-31T23:59:59.999Z. A
/// device's clock may say anything; records beyond this are refused on the
/// wire ([`crate::protocol`]), and anything shown is clamped to it.
pub const MAX_MS: u64 = 253_402_300_799_999;

/// Unix milliseconds as RFC 3339 UTC, to the second (`2030-03-17T17:46:40Z`).
/// Never fails: times past [`MAX_MS`] show as [`MAX_MS`].
pub fn format_ms(ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.min(MAX_MS));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Unix seconds as [`format_ms`] shows them.
pub fn format_secs(secs: u64) -> String {
    format_ms(secs.saturating_mul(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times_in_utc() {
        assert_eq!(format_ms(1_900_000_000_000), "2030-03-17T17:46:40Z");
        assert_eq!(format_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_ms(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(format_secs(1_900_000_000), "2030-03-17T17:46:40Z");
    }

    #[test]
    fn a_clock_beyond_the_year_9999_is_shown_as_its_end_not_a_crash() {
        assert_eq!(format_ms(MAX_MS), "9999-12-31T23:59:59Z");
        assert_eq!(format_ms(MAX_MS + 1), "9999-12-31T23:59:59Z");
        assert_eq!(format_ms(u64::MAX), "9999-12-31T23:59:59Z");
        assert_eq!(format_secs(u64::MAX), "9999-12-31T23:59:59Z");
    }
}
