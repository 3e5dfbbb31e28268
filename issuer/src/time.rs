//! Times on the command line: unix seconds or RFC 3339 (`2030-03-17T19:00:00Z`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::Error;

/// Reads unix seconds or an RFC 3339 time (UTC, or with an offset) as unix
/// seconds; VT1 stores times as u32, so later than 2106 is refused.
pub fn parse(text: &str) -> Result<u32, Error> {
    let text = text.trim();
    let secs = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse::<u64>().ok()
    } else {
        humantime::parse_rfc3339_weak(text)
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
    };
    let secs = secs.ok_or_else(|| {
        Error::Invalid(format!(
            "{text:?} is not a time: give unix seconds or RFC 3339 such as 2030-03-17T19:00:00Z"
        ))
    })?;
    u32::try_from(secs).map_err(|_| {
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
    #[test]
    fn reads_unix_and_rfc3339() {
        assert_eq!(super::parse("1900000000").unwrap(), 1_900_000_000);
        assert_eq!(super::parse("2030-03-17T17:46:40Z").unwrap(), 1_900_000_000);
        assert!(super::parse("tomorrow").is_err());
        assert!(super::parse("99999999999").is_err());
        assert_eq!(super::format(1_900_000_000), "2030-03-17T17:46:40Z");
    }
}
