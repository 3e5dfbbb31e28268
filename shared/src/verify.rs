//! The spec's verification order, from text to a [`VerifiedTicket`] or a
//! [`Refusal`] carrying exactly one [`ResultCode`].
//!
//! This covers the checks that need nothing but the keyset and a clock
//! (`invalid` through `expired`). `revoked` and `already_redeemed` depend on a
//! device's state, so the scanner applies them to the [`VerifiedTicket`] it gets
//! here and reports them with [`Refusal::of_ticket`].

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use ed25519_dalek::Signature;
use serde::{Deserialize, Serialize};

use crate::code::{self, KeyId, TicketFields, UnverifiedTicket};
use crate::keyset::Keyset;

/// How far a device's clock may be off before validity windows bite.
pub const DEFAULT_SKEW_SECS: u32 = 300;

/// The one answer a verifier gives, in the spec's order of precedence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultCode {
    Invalid,
    UnknownKey,
    WrongEvent,
    NotYetValid,
    Expired,
    Revoked,
    AlreadyRedeemed,
    Ok,
}

impl ResultCode {
    pub const ALL: [ResultCode; 8] = [
        ResultCode::Invalid,
        ResultCode::UnknownKey,
        ResultCode::WrongEvent,
        ResultCode::NotYetValid,
        ResultCode::Expired,
        ResultCode::Revoked,
        ResultCode::AlreadyRedeemed,
        ResultCode::Ok,
    ];

    /// The spec's name, as written in JSON output and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ResultCode::Invalid => "invalid",
            ResultCode::UnknownKey => "unknown_key",
            ResultCode::WrongEvent => "wrong_event",
            ResultCode::NotYetValid => "not_yet_valid",
            ResultCode::Expired => "expired",
            ResultCode::Revoked => "revoked",
            ResultCode::AlreadyRedeemed => "already_redeemed",
            ResultCode::Ok => "ok",
        }
    }
}

impl fmt::Display for ResultCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ResultCode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ResultCode::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown result code {s:?}"))
    }
}

/// A ticket whose signature verified under a key of the keyset. Only
/// [`Verifier`] makes one; its fields can be trusted as the issuer wrote them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedTicket {
    key_id: KeyId,
    fields: TicketFields,
    signature: [u8; 64],
}

impl VerifiedTicket {
    /// The issuer's signature: what a gate records as proof the code was
    /// presented there ([`crate::ScanRecord::proof`]).
    pub fn signature(&self) -> crate::TicketSig {
        crate::TicketSig(self.signature)
    }

    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    pub fn fields(&self) -> &TicketFields {
        &self.fields
    }
}

/// Why a code was not admitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub result: ResultCode,
    /// A sentence for the gate staff and the logs.
    pub reason: String,
    /// The ticket, when its signature was good: a genuine ticket for the wrong
    /// night is worth showing; a forged one is not.
    pub ticket: Option<VerifiedTicket>,
}

impl Refusal {
    fn invalid(reason: impl Into<String>) -> Refusal {
        Refusal {
            result: ResultCode::Invalid,
            reason: reason.into(),
            ticket: None,
        }
    }

    /// A refusal of a genuine ticket, for checks made after verification
    /// (revocation, redemption).
    pub fn of_ticket(
        result: ResultCode,
        reason: impl Into<String>,
        ticket: VerifiedTicket,
    ) -> Refusal {
        Refusal {
            result,
            reason: reason.into(),
            ticket: Some(ticket),
        }
    }
}

/// Checks codes against a keyset, a clock skew and optionally a set of events.
#[derive(Clone, Debug)]
pub struct Verifier {
    keyset: Keyset,
    skew_secs: u32,
    /// Events this device admits; `None` admits every event its keys cover.
    events: Option<BTreeSet<u64>>,
}

impl Verifier {
    pub fn new(keyset: Keyset) -> Verifier {
        Verifier {
            keyset,
            skew_secs: DEFAULT_SKEW_SECS,
            events: None,
        }
    }

    /// Sets how many seconds a ticket's validity window is stretched at each end.
    pub fn with_skew(mut self, skew_secs: u32) -> Verifier {
        self.skew_secs = skew_secs;
        self
    }

    /// Admits only these events; an empty list means no restriction.
    pub fn only_events(mut self, events: impl IntoIterator<Item = u64>) -> Verifier {
        let events: BTreeSet<u64> = events.into_iter().collect();
        self.events = (!events.is_empty()).then_some(events);
        self
    }

    pub fn keyset(&self) -> &Keyset {
        &self.keyset
    }

    pub fn skew_secs(&self) -> u32 {
        self.skew_secs
    }

    /// Verifies a code's text at unix time `now`.
    // A refusal carries the genuine ticket (with its signature) to show at
    // the gate; boxing it would cost an allocation on every refusal.
    #[allow(clippy::result_large_err)]
    pub fn verify(&self, text: &str, now: u64) -> Result<VerifiedTicket, Refusal> {
        let ticket = code::parse(text).map_err(|e| Refusal::invalid(e.to_string()))?;
        self.verify_parsed(ticket, now)
    }

    /// Verifies an already parsed code at unix time `now`.
    #[allow(clippy::result_large_err)]
    pub fn verify_parsed(
        &self,
        ticket: UnverifiedTicket,
        now: u64,
    ) -> Result<VerifiedTicket, Refusal> {
        let Some(entry) = self.keyset.get(&ticket.key_id) else {
            return Err(Refusal {
                result: ResultCode::UnknownKey,
                reason: format!(
                    "signed by key {}, which this device does not hold",
                    ticket.key_id
                ),
                ticket: None,
            });
        };
        let signature = Signature::from_bytes(&ticket.signature);
        if entry
            .public_key
            .verify_strict(&ticket.signed_message, &signature)
            .is_err()
        {
            return Err(Refusal::invalid(format!(
                "signature does not verify under key {}",
                ticket.key_id
            )));
        }
        let verified = VerifiedTicket {
            key_id: ticket.key_id,
            fields: ticket.fields,
            signature: ticket.signature,
        };
        let f = &verified.fields;
        if !entry.event_ids.contains(&f.event_id) {
            let reason = format!(
                "key {} does not vouch for event {}",
                verified.key_id, f.event_id
            );
            return Err(Refusal::of_ticket(ResultCode::WrongEvent, reason, verified));
        }
        if let Some(events) = &self.events
            && !events.contains(&f.event_id)
        {
            let reason = format!(
                "ticket is for event {}, not one this gate admits",
                f.event_id
            );
            return Err(Refusal::of_ticket(ResultCode::WrongEvent, reason, verified));
        }
        let (now, skew) = (i128::from(now), i128::from(self.skew_secs));
        if now < i128::from(f.valid_from) - skew {
            let reason = format!(
                "not valid yet: from {}, and this gate's clock says {}",
                crate::time::format_secs(u64::from(f.valid_from)),
                crate::time::format_secs(now.max(0) as u64)
            );
            return Err(Refusal::of_ticket(
                ResultCode::NotYetValid,
                reason,
                verified,
            ));
        }
        if now > i128::from(f.valid_until) + skew {
            let reason = format!(
                "expired: valid until {}, and this gate's clock says {}",
                crate::time::format_secs(u64::from(f.valid_until)),
                crate::time::format_secs(now.max(0) as u64)
            );
            return Err(Refusal::of_ticket(ResultCode::Expired, reason, verified));
        }
        Ok(verified)
    }
}
