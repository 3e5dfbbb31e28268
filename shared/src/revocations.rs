//! The revocation list's text form, shared by the issuer's export, gate-sync
//! and scanners: one revoked ticket a line, as `EVENT_ID TICKET_ID` or a bare
//! `TICKET_ID` (any event); blank lines and `#` comments are skipped.

use crate::code::TicketId;

/// One revoked ticket; `event_id` is `None` for "in any event".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Revoked {
    pub event_id: Option<u64>,
    pub ticket_id: TicketId,
}

/// A line that is not a revocation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("revocation list line {line}: {reason}")]
pub struct RevocationError {
    pub line: usize,
    pub reason: String,
}

/// Reads a whole list; the first bad line refuses it all.
pub fn parse(text: &str) -> Result<Vec<Revoked>, RevocationError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason: String| RevocationError {
            line: i + 1,
            reason,
        };
        let fields: Vec<&str> = line
            .split([' ', '\t', ','])
            .filter(|f| !f.is_empty())
            .collect();
        let (event_id, ticket) = match fields.as_slice() {
            [ticket] => (None, *ticket),
            [event, ticket] => {
                let event: u64 = event
                    .parse()
                    .map_err(|_| bad(format!("{event:?} is not an event id")))?;
                (Some(event), *ticket)
            }
            _ => return Err(bad("expected `EVENT_ID TICKET_ID` or `TICKET_ID`".into())),
        };
        out.push(Revoked {
            event_id,
            ticket_id: ticket.parse().map_err(bad)?,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_forms_and_names_the_bad_line() {
        let id = "0000000000000000000000000000004d";
        let list = parse(&format!("# refunds\n\n1001 {id}\n{id}\n7,{id}\n")).unwrap();
        assert_eq!(list.len(), 3);
        assert_eq!(list[0].event_id, Some(1001));
        assert_eq!(list[1].event_id, None);
        assert_eq!(list[2].event_id, Some(7));
        let err = parse(&format!("{id}\nx {id}\n")).unwrap_err();
        assert_eq!(err.line, 2);
        assert!(parse("1 2 3").is_err());
        assert!(parse("not-an-id").is_err());
    }
}
