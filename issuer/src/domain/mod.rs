//! The booking domain, pure: no IO, no clock, no database. Storage and HTTP
//! call into it; everything here is unit-tested without either.
//!
//! - [`venue`]: a venue's seating plan (sections, rows, seats with labels and
//!   positions) and its general-admission areas, checked whole.
//! - [`seats`]: the best N adjacent seats of a row, never leaving a lone
//!   seat between taken ones when another choice exists.
//! - [`pricing`]: a category's price at hold time (early-bird time tiers,
//!   demand tiers by share sold).
//! - [`order`]: an order's states and the only moves between them.
//! - [`hold`]: what a buyer asks to hold, and a hold: places at fixed
//!   prices until a time.
//! - [`catalogue`]: venues, events and ticket categories as organizers
//!   create them, checked before they are stored.

pub mod catalogue;
pub mod hold;
pub mod order;
pub mod pricing;
pub mod seats;
pub mod venue;

/// Why the domain refused something, worded for the organizer or buyer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

pub(crate) fn invalid(message: impl Into<String>) -> Invalid {
    Invalid(message.into())
}

/// A name or line shown to people: present, at most `max` bytes, no
/// control characters. (The OpenAPI document says the same of such fields
/// with a pattern: no C0 or C1 control, and something besides whitespace.)
pub(crate) fn text(what: &str, s: &str, max: usize) -> Result<(), Invalid> {
    if s.trim().is_empty() {
        return Err(invalid(format!("{what} is empty")));
    }
    if s.len() > max {
        return Err(invalid(format!("{what} is longer than {max} bytes")));
    }
    if s.chars().any(char::is_control) {
        return Err(invalid(format!("{what} has control characters")));
    }
    // Marks that reorder text as it is shown: a name that reads one way
    // and is another (on a ticket, in a mail, in an organizer's list).
    if s.chars()
        .any(|c| matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'))
    {
        return Err(invalid(format!(
            "{what} has marks that reorder how it is shown"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn shown_text_is_refused_empty_too_long_with_controls_or_reordering_marks() {
        assert!(super::text("a name", "Théâtre des Célestins", 200).is_ok());
        assert!(super::text("a name", "  ", 200).is_err());
        assert!(super::text("a name", "abc", 2).is_err());
        assert!(super::text("a name", "Ana\r\nBcc: x@example.org", 200).is_err());
        assert!(super::text("a name", "invoice\u{202E}fdp.exe", 200).is_err());
        assert!(super::text("a name", "a\u{2067}b", 200).is_err());
    }
}
