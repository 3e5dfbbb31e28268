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

use super::{Invalid, invalid};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
            (S::Paid, E::Refund) => Ok(S::Refunded),
            (S::Paid, E::PaymentSucceeded)
            | (S::Failed, E::PaymentFailed)
            | (S::Cancelled, E::Cancel)
            | (S::Refunded, E::Refund) => Ok(self),
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
    const EVENTS: [E; 4] = [E::PaymentSucceeded, E::PaymentFailed, E::Cancel, E::Refund];

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
                        s == S::Pending || (s == S::Paid && e == E::Refund),
                        "{s:?} --{e:?}--> {to:?}"
                    );
                }
            }
        }
        // No way back from a final state.
        for s in [S::Failed, S::Cancelled, S::Refunded] {
            for e in EVENTS {
                assert!(s.next(e).is_err() || s.next(e) == Ok(s));
            }
        }
        assert!(S::Paid.next(E::Cancel).unwrap_err().0.contains("refunding"));
        assert!(S::Pending.next(E::Refund).is_err());
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
