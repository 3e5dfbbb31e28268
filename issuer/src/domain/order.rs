//! An order's states, and the only moves between them.
//!
//! ```text
//! pending --paid--> paid --refunded--> refunded
//!    |  \--failed--> failed
//!    \--cancelled--> cancelled
//! ```
//!
//! A provider may tell of one payment more than once (webhooks are retried)
//! and late (after the hold expired): the same news again changes nothing,
//! and a payment that lands on an order that can no longer be sold is
//! settled by [`settle_payment`], never dropped.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::hold::HeldPlace;
use super::{Invalid, invalid};

/// An order as the buyer and organizer see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Order {
    pub code: String,
    pub event_id: u64,
    pub email: String,
    pub name: String,
    /// Minor units.
    pub amount: u64,
    pub currency: String,
    pub state: OrderState,
    pub places: Vec<HeldPlace>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_intent: Option<String>,
    /// Why a payment was refused, or why it was paid back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Unix milliseconds.
    pub created_at: u64,
    pub updated_at: u64,
}

/// Who buys: checked before an order is made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Buyer {
    pub email: String,
    pub name: String,
}

impl Buyer {
    pub fn check(&self) -> Result<(), Invalid> {
        super::text("the buyer's name", &self.name, 200)?;
        let e = &self.email;
        let well_formed = e.len() <= 254
            && e.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty()
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
            })
            && !e
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == ',' || c == '<' || c == '>')
            // What the mail is sent to must be an address a mail server
            // takes: checked as the mailer will read it.
            && e.parse::<lettre::Address>().is_ok();
        if !well_formed {
            return Err(invalid(format!("{e:?} is not an e-mail address")));
        }
        Ok(())
    }
}

/// An order's code: 10 letters and digits without look-alikes, from 8
/// random bytes (enough that two orders never share one).
pub fn order_code(random: [u8; 8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut n = u64::from_le_bytes(random);
    (0..10)
        .map(|_| {
            let c = ALPHABET[(n % 32) as usize] as char;
            n /= 32;
            c
        })
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderState {
    /// Places held, payment under way.
    Pending,
    /// Paid: its tickets are issued.
    Paid,
    /// The payment was refused; nothing was charged.
    Failed,
    /// Given up before any payment: its places are free again.
    Cancelled,
    /// Paid, then paid back: its tickets are revoked.
    Refunded,
}

/// What happened to an order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderEvent {
    PaymentSucceeded,
    PaymentFailed,
    Cancel,
    Refund,
    /// A payment succeeded for places no longer to be had
    /// ([`Settlement::Refund`]): the money goes straight back.
    PaidTooLate,
}

impl OrderState {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderState::Pending => "pending",
            OrderState::Paid => "paid",
            OrderState::Failed => "failed",
            OrderState::Cancelled => "cancelled",
            OrderState::Refunded => "refunded",
        }
    }

    /// The state after `event`: the same state for news already applied
    /// (a retried webhook), an error for a move that cannot happen.
    pub fn next(self, event: OrderEvent) -> Result<OrderState, Invalid> {
        use OrderEvent as E;
        use OrderState as S;
        match (self, event) {
            (S::Pending, E::PaymentSucceeded) => Ok(S::Paid),
            (S::Pending, E::PaymentFailed) => Ok(S::Failed),
            (S::Pending, E::Cancel) => Ok(S::Cancelled),
            (S::Paid, E::Refund) | (S::Pending | S::Failed | S::Cancelled, E::PaidTooLate) => {
                Ok(S::Refunded)
            }
            (S::Paid, E::PaymentSucceeded)
            | (S::Failed, E::PaymentFailed)
            | (S::Cancelled, E::Cancel)
            | (S::Refunded, E::Refund | E::PaidTooLate) => Ok(self),
            (S::Paid, E::Cancel) => Err(invalid(
                "the order is paid: it is cancelled by refunding it",
            )),
            (S::Pending | S::Failed | S::Cancelled, E::Refund) => Err(invalid(format!(
                "the order is {}: nothing was paid to refund",
                self.as_str()
            ))),
            (s, e) => Err(invalid(format!(
                "the order is {}: {e:?} does not apply",
                s.as_str()
            ))),
        }
    }
}

/// What to do with a payment that succeeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// The hold still stands: the order is paid.
    Keep,
    /// The hold expired but its places are still free: hold them again and
    /// the order is paid.
    HoldAgain,
    /// The places are gone (or the order was given up): pay the money
    /// back, and tell the buyer.
    Refund,
}

/// How a successful payment on an order in `state` is settled, given
/// whether its hold still stands and whether its places are free.
pub fn settle_payment(state: OrderState, hold_active: bool, places_free: bool) -> Settlement {
    match state {
        OrderState::Pending if hold_active => Settlement::Keep,
        OrderState::Pending if places_free => Settlement::HoldAgain,
        // Already paid: news of the same payment again.
        OrderState::Paid => Settlement::Keep,
        // Failed or cancelled orders, and refunded ones, keep no money.
        _ => Settlement::Refund,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use OrderEvent as E;
    use OrderState as S;

    const STATES: [S; 5] = [S::Pending, S::Paid, S::Failed, S::Cancelled, S::Refunded];
    const EVENTS: [E; 5] = [
        E::PaymentSucceeded,
        E::PaymentFailed,
        E::Cancel,
        E::Refund,
        E::PaidTooLate,
    ];

    #[test]
    fn an_order_is_paid_then_refunded_and_news_repeated_changes_nothing() {
        let paid = S::Pending.next(E::PaymentSucceeded).unwrap();
        assert_eq!(paid, S::Paid);
        assert_eq!(paid.next(E::PaymentSucceeded), Ok(S::Paid));
        let refunded = paid.next(E::Refund).unwrap();
        assert_eq!(refunded.next(E::Refund), Ok(S::Refunded));
    }

    #[test]
    fn only_a_pending_order_leaves_for_another_state_but_refund() {
        for s in STATES {
            for e in EVENTS {
                if let Ok(to) = s.next(e)
                    && to != s
                {
                    assert!(
                        s == S::Pending
                            || (s == S::Paid && e == E::Refund)
                            || (to == S::Refunded && e == E::PaidTooLate),
                        "{s:?} --{e:?}--> {to:?}"
                    );
                }
            }
        }
        // No way back from a final state, but money that came in anyway
        // going back.
        for s in [S::Failed, S::Cancelled, S::Refunded] {
            for e in EVENTS {
                let to = s.next(e);
                assert!(
                    to.is_err() || to == Ok(s) || to == Ok(S::Refunded),
                    "{s:?} {e:?}"
                );
            }
        }
        assert!(S::Paid.next(E::Cancel).unwrap_err().0.contains("refunding"));
        assert!(S::Pending.next(E::Refund).is_err());
    }

    #[test]
    fn buyers_give_a_name_and_an_address_mail_can_reach() {
        let b = |email: &str, name: &str| {
            Buyer {
                email: email.into(),
                name: name.into(),
            }
            .check()
        };
        assert!(b("ana@example.org", "Ana").is_ok());
        for bad in [
            "ana",
            "ana@",
            "@example.org",
            "ana@example",
            "a na@example.org",
            "a@b.c\nBcc: x@y.z",
            "a@.org",
        ] {
            assert!(b(bad, "Ana").is_err(), "{bad:?}");
        }
        assert!(b("ana@example.org", " ").is_err());
    }

    #[test]
    fn order_codes_are_ten_unambiguous_characters() {
        let code = order_code([0xFF; 8]);
        assert_eq!(code.len(), 10);
        assert!(
            code.chars()
                .all(|c| c.is_ascii_alphanumeric() && !"01IO".contains(c))
        );
        assert_ne!(order_code([1; 8]), order_code([2; 8]));
    }

    #[test]
    fn a_late_payment_is_kept_held_again_or_refunded_never_dropped() {
        assert_eq!(settle_payment(S::Pending, true, false), Settlement::Keep);
        assert_eq!(
            settle_payment(S::Pending, false, true),
            Settlement::HoldAgain
        );
        assert_eq!(settle_payment(S::Pending, false, false), Settlement::Refund);
        assert_eq!(settle_payment(S::Paid, false, false), Settlement::Keep);
        for s in [S::Failed, S::Cancelled, S::Refunded] {
            assert_eq!(settle_payment(s, true, true), Settlement::Refund, "{s:?}");
        }
    }
}
