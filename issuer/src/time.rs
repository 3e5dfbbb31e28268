//! Times on the command line: `now`, a duration from now (`+2h`, `-30m`),
//! unix seconds, or RFC 3339 (`2030-03-17T19:00:00Z`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::Error;

/// Reads a time as unix seconds: `now`; `+` or `-` and a duration from now
/// (`+2h`, `-30m`, `+1d 2h`, `+90min`); unix seconds; or RFC 3339 in UTC
/// (`Z`). `now` is the clock, in unix seconds. VT1 stores times as
/// u32, so before 1970 or later than 2106 is refused.
pub fn parse(text: &str, now: u64) -> Result<u32, Error> {
    let text = text.trim();
    let not_a_time = || {
        Error::Invalid(format!(
            "{text:?} is not a time: give `now`, a time from now such as +2h or -30m, \
             unix seconds, or RFC 3339 such as 2030-03-17T19:00:00Z"
        ))
    };
    let secs = if text == "now" {
        Some(now)
    } else if let Some(rest) = text.strip_prefix('+') {
        let d = humantime::parse_duration(rest.trim()).map_err(|_| not_a_time())?;
        now.checked_add(d.as_secs())
    } else if let Some(rest) = text.strip_prefix('-') {
        let d = humantime::parse_duration(rest.trim()).map_err(|_| not_a_time())?;
        Some(now.checked_sub(d.as_secs()).ok_or_else(|| {
            Error::Invalid(format!(
                "{text:?} is before 1970, beyond what a ticket can hold"
            ))
        })?)
    } else if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        Some(text.parse::<u64>().map_err(|_| not_a_time())?)
    } else {
        let t = humantime::parse_rfc3339_weak(text).map_err(|_| not_a_time())?;
        Some(
            t.duration_since(UNIX_EPOCH)
                .map_err(|_| not_a_time())?
                .as_secs(),
        )
    };
    secs.and_then(|s| u32::try_from(s).ok()).ok_or_else(|| {
        Error::Invalid(format!(
            "{text:?} is after 2106, beyond what a ticket can hold"
        ))
    })
}

/// RFC 3339 in UTC, to the second.
pub fn format(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

/// The wall clock, in unix seconds.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    const NOW: u64 = 1_900_000_000;

    /// `text` read at `NOW` is `expected` (unix seconds), or an error.
    fn check(text: &str, expected: Option<u32>) {
        assert_eq!(super::parse(text, NOW).ok(), expected, "{text:?}");
    }

    #[test]
    fn reads_unix_and_rfc3339() {
        check("1900000000", Some(1_900_000_000));
        check("2030-03-17T17:46:40Z", Some(1_900_000_000));
        check("tomorrow", None);
        check("", None);
        check("99999999999", None);
        assert_eq!(super::format(1_900_000_000), "2030-03-17T17:46:40Z");
    }

    #[test]
    fn reads_now_and_durations_from_now() {
        check("now", Some(1_900_000_000));
        check(" now ", Some(1_900_000_000));
        check("+2h", Some(1_900_007_200));
        check("+90min", Some(1_900_005_400));
        check("+1h30m", Some(1_900_005_400));
        check("+1d 2h", Some(1_900_093_600));
        check("-30m", Some(1_899_998_200));
        check("+0s", Some(1_900_000_000));
        check("+", None);
        check("+2 hours later", None);
        check("now+2h", None);
        check("-100years", None);
        check("+100years", None);
    }
}
