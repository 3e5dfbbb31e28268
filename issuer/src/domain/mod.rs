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
