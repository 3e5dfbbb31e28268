//! Stored rows back into the domain's types, for every backend: each
//! backend says how to read a cell ([`Cells`]); what the columns mean is
//! said once, here.

use std::collections::BTreeMap;

use super::{CategoryCount, ChangeKind, OrganizerId, PlaceChange, Result, StorageError, Venue};
use crate::domain::catalogue::{
    Category, Event, EventStatus, Genre, NewCategory, NewEvent, NewVenue,
};

/// The columns an event is read from, in [`event_from`]'s order.
pub const EVENT_COLUMNS: &str = "id, name, description, performers, genre, venue_id, starts_at, \
     ends_at, status, city, organizer_id, buyers_cancel_until";

/// The columns a category is read from, in [`category_from`]'s order.
pub const CATEGORY_COLUMNS: &str =
    "id, event_id, name, pricing, places, sale_starts, sale_ends, per_order";

/// The columns a venue is read from, in [`venue_from`]'s order.
pub const VENUE_COLUMNS: &str = "id, organizer_id, name, city, address, plan";

/// One row of a result, as a backend reads its cells.
pub trait Cells {
    fn int(&self, i: usize) -> Result<i64>;
    fn opt_int(&self, i: usize) -> Result<Option<i64>>;
    fn text(&self, i: usize) -> Result<String>;
}

/// An id or a time: never negative as stored.
fn unsigned(n: i64) -> u64 {
    n.max(0) as u64
}

/// An event row (in [`EVENT_COLUMNS`]' order) and its organizer.
pub fn event_from(r: &impl Cells) -> Result<(Event, Option<OrganizerId>)> {
    let genre = r.text(4)?;
    let status = r.text(8)?;
    let event = Event {
        id: unsigned(r.int(0)?),
        info: NewEvent {
            name: r.text(1)?,
            description: r.text(2)?,
            performers: serde_json::from_str(&r.text(3)?)?,
            genre: Genre::parse(&genre).unwrap_or(Genre::Other),
            venue_id: unsigned(r.opt_int(5)?.unwrap_or(0)),
            starts_at: unsigned(r.int(6)?),
            ends_at: unsigned(r.int(7)?),
            buyers_cancel_until: r.opt_int(11)?.map(unsigned),
        },
        status: EventStatus::parse(&status)
            .ok_or_else(|| StorageError::Backend(format!("event status {status:?}")))?,
        city: r.text(9)?,
    };
    Ok((event, r.opt_int(10)?.map(unsigned)))
}

/// A category row, in [`CATEGORY_COLUMNS`]' order.
pub fn category_from(r: &impl Cells) -> Result<Category> {
    Ok(Category {
        id: unsigned(r.int(0)?),
        event_id: unsigned(r.int(1)?),
        info: NewCategory {
            name: r.text(2)?,
            pricing: serde_json::from_str(&r.text(3)?)?,
            places: serde_json::from_str(&r.text(4)?)?,
            sale_starts: unsigned(r.int(5)?),
            sale_ends: unsigned(r.int(6)?),
            per_order: u32::try_from(r.int(7)?)
                .map_err(|_| StorageError::Backend("a category's per-order limit".into()))?,
        },
    })
}

/// A venue row, in [`VENUE_COLUMNS`]' order.
pub fn venue_from(r: &impl Cells) -> Result<Venue> {
    Ok(Venue {
        id: unsigned(r.int(0)?),
        organizer_id: unsigned(r.int(1)?),
        info: NewVenue {
            name: r.text(2)?,
            city: r.text(3)?,
            address: r.text(4)?,
            plan: serde_json::from_str(&r.text(5)?)?,
        },
    })
}

/// The columns a change of the live feed is read from, in
/// [`change_from`]'s order.
pub const CHANGE_COLUMNS: &str = "id, event_id, seq, at, kind, seats, places";

/// A change row, in [`CHANGE_COLUMNS`]' order, with its row's id.
pub fn change_from(r: &impl Cells) -> Result<(u64, PlaceChange)> {
    let kind = r.text(4)?;
    let places: Vec<(u64, u64)> = serde_json::from_str(&r.text(6)?)?;
    Ok((
        unsigned(r.int(0)?),
        PlaceChange {
            event_id: unsigned(r.int(1)?),
            seq: unsigned(r.int(2)?),
            at: unsigned(r.int(3)?),
            kind: ChangeKind::parse(&kind)
                .ok_or_else(|| StorageError::Backend(format!("change kind {kind:?}")))?,
            seats: serde_json::from_str(&r.text(5)?)?,
            places: places
                .into_iter()
                .map(|(category_id, count)| CategoryCount { category_id, count })
                .collect(),
        },
    ))
}

/// Places that moved, as (category, seat key).
pub type Moved = Vec<(u64, Option<String>)>;

/// How a change's places are stored: the seats' keys (JSON), and how many
/// places of each category moved (JSON, `[[category, count], ...]`).
pub fn moved_columns(moved: &[(u64, Option<String>)]) -> Result<(String, String)> {
    let seats: Vec<&str> = moved.iter().filter_map(|(_, s)| s.as_deref()).collect();
    let mut places: BTreeMap<u64, u64> = BTreeMap::new();
    for (c, _) in moved {
        *places.entry(*c).or_default() += 1;
    }
    let places: Vec<(u64, u64)> = places.into_iter().collect();
    Ok((
        serde_json::to_string(&seats)?,
        serde_json::to_string(&places)?,
    ))
}

/// An order's state as stored.
pub fn order_state(s: &str) -> Result<crate::domain::order::OrderState> {
    use crate::domain::order::OrderState;
    Ok(match s {
        "pending" => OrderState::Pending,
        "paid" => OrderState::Paid,
        "failed" => OrderState::Failed,
        "cancelled" => OrderState::Cancelled,
        "refunded" => OrderState::Refunded,
        other => return Err(StorageError::Backend(format!("order state {other:?}"))),
    })
}

/// How an order in state `state` is paid back: the move it makes, and the
/// message the buyer is sent (a payment that landed after the order ended,
/// unless it was cancelled, is told as a late one).
pub fn refund_of(
    state: crate::domain::order::OrderState,
) -> (crate::domain::order::OrderEvent, super::MailKind) {
    use crate::domain::order::{OrderEvent, OrderState};
    match state {
        OrderState::Paid | OrderState::Refunded => (OrderEvent::Refund, super::MailKind::Refund),
        OrderState::Cancelled => (OrderEvent::PaidTooLate, super::MailKind::Refund),
        _ => (OrderEvent::PaidTooLate, super::MailKind::LateRefund),
    }
}

/// A paid order's tickets, to be signed: one a place (`(category number,
/// seat)`, in order) of event `event_id` (from `starts_at` to `ends_at`,
/// unix seconds), valid from the doors' opening to the end, each with a
/// fresh random id.
pub fn tickets_of(
    event_id: u64,
    (starts_at, ends_at): (i64, i64),
    places: impl IntoIterator<Item = (i64, Option<String>)>,
) -> Result<Vec<shared::TicketFields>> {
    use rand_core::{OsRng, RngCore};
    let valid_from = u32::try_from(starts_at)
        .unwrap_or(u32::MAX)
        .saturating_sub(crate::issue::DEFAULT_DOORS_BEFORE_SECS);
    let valid_until = u32::try_from(ends_at).unwrap_or(u32::MAX);
    places
        .into_iter()
        .map(|(number, seat)| {
            let mut ticket_id = [0u8; 16];
            OsRng.fill_bytes(&mut ticket_id);
            Ok(shared::TicketFields {
                event_id,
                ticket_id: shared::TicketId(ticket_id),
                category_id: u16::try_from(number).map_err(|_| {
                    StorageError::Conflict(
                        "the event has more categories than a ticket can number".into(),
                    )
                })?,
                multi_entry: false,
                valid_from,
                valid_until,
                seat: seat.unwrap_or_default(),
            })
        })
        .collect()
}
