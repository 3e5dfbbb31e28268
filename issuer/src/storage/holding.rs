//! What every backend decides the same way when it makes a hold: the
//! checks before places are looked for, the choice of best seats from the
//! free ones, and the checks and prices once they are taken. The backends
//! only find and take the places.

use std::collections::BTreeMap;

use super::{Result, StorageError, Venue};
use crate::domain::catalogue::{Category, Event, EventStatus, Places};
use crate::domain::hold::{HeldPlace, Hold, HoldItem, HoldRequest, HoldState};
use crate::domain::seats::best_block;

/// A place taken by a hold being made: (category, n, seat key).
pub type Taken = (u64, i64, Option<String>);

/// The event's categories, by id.
pub type Categories = BTreeMap<u64, Category>;

pub fn category(categories: &Categories, id: u64) -> Result<&Category> {
    categories
        .get(&id)
        .ok_or_else(|| StorageError::Invalid(format!("the event has no category {id}")))
}

/// Whether anything of `event` (found, drafts aside) can be held now.
pub fn check_event(event: Option<&Event>, event_id: u64) -> Result<&Event> {
    let event = match event {
        Some(e) if e.status != EventStatus::Draft => e,
        _ => return Err(StorageError::NotFound(format!("event {event_id}"))),
    };
    if event.status != EventStatus::OnSale {
        return Err(StorageError::Conflict(format!(
            "event {} is {}: nothing of it can be held",
            event.id,
            event.status.as_str()
        )));
    }
    Ok(event)
}

/// Quantities beyond an order's limit are refused before anything is
/// looked for (seats asked by key are counted once found).
pub fn check_quantities(request: &HoldRequest, categories: &Categories) -> Result<()> {
    for item in &request.items {
        if let HoldItem::Quantity {
            category_id,
            quantity,
        }
        | HoldItem::Best {
            category_id,
            quantity,
        } = item
        {
            let c = category(categories, *category_id)?;
            if *quantity > c.info.per_order {
                return Err(StorageError::Invalid(format!(
                    "{} sells at most {} places an order",
                    c.info.name, c.info.per_order
                )));
            }
        }
    }
    Ok(())
}

/// The first place (index from 0, in the category's order) of the best
/// `quantity` seats side by side, of a category whose rows have `rows`
/// seats each (front to back), where `free` says which seats are free.
/// Seats `taken` by this hold already (by an item before) are not free.
pub fn best_seats(
    c: &Category,
    rows: &[usize],
    mut free: Vec<bool>,
    taken: &[Taken],
    quantity: u32,
) -> Result<usize> {
    for (_, n, _) in taken.iter().filter(|t| t.0 == c.id) {
        if let Some(f) = usize::try_from(n - 1).ok().and_then(|i| free.get_mut(i)) {
            *f = false;
        }
    }
    let mut views: Vec<&[bool]> = Vec::with_capacity(rows.len());
    let mut starts = Vec::with_capacity(rows.len());
    let mut at = 0;
    for len in rows {
        let Some(row) = free.get(at..at + len) else {
            break;
        };
        views.push(row);
        starts.push(at);
        at += len;
    }
    let Some(block) = best_block(&views, quantity as usize) else {
        return Err(StorageError::Conflict(format!(
            "{} has no {quantity} seats side by side left",
            c.info.name
        )));
    };
    Ok(starts[block.row] + block.first)
}

/// The categories whose price hangs on how much of them is sold (demand
/// tiers) among those `taken` places are of: only those need counting.
pub fn counted(categories: &Categories, taken: &[Taken]) -> Vec<u64> {
    categories
        .iter()
        .filter(|(id, c)| {
            !c.info.pricing.demand_tiers.is_empty() && taken.iter().any(|t| t.0 == **id)
        })
        .map(|(id, _)| *id)
        .collect()
}

/// Checks what was `taken` (each category on sale now, within its limit)
/// and prices it at `now_ms`; `sold` has (capacity, sold) of the
/// categories [`counted`] named. Returns the hold as its reader sees it,
/// and its places in the order taken.
pub fn priced(
    event_id: u64,
    categories: &Categories,
    taken: &[Taken],
    sold: &BTreeMap<u64, (u64, u64)>,
    now_ms: u64,
    until: u64,
) -> Result<(Hold, Vec<HeldPlace>)> {
    let now_s = now_ms / 1000;
    let mut prices: BTreeMap<u64, u64> = BTreeMap::new();
    for (id, c) in categories {
        let count = taken.iter().filter(|t| t.0 == *id).count();
        if count == 0 {
            continue;
        }
        if now_s < c.info.sale_starts || now_s >= c.info.sale_ends {
            return Err(StorageError::Conflict(format!(
                "{} is not on sale now",
                c.info.name
            )));
        }
        if count > c.info.per_order as usize {
            return Err(StorageError::Invalid(format!(
                "{} sells at most {} places an order",
                c.info.name, c.info.per_order
            )));
        }
        let (capacity, sold) = sold.get(id).copied().unwrap_or_default();
        prices.insert(*id, c.info.pricing.price_at(now_s, sold, capacity));
    }
    let currency = categories
        .values()
        .next()
        .map(|c| c.info.pricing.currency.clone())
        .unwrap_or_default();
    let places: Vec<HeldPlace> = taken
        .iter()
        .map(|(c, _, seat)| HeldPlace {
            category_id: *c,
            seat: seat.clone(),
            price: prices.get(c).copied().unwrap_or_default(),
        })
        .collect();
    let total = places.iter().map(|p| p.price).sum();
    // The hold as its reader sees it: places by category and number.
    let mut order: Vec<(u64, i64, HeldPlace)> = taken
        .iter()
        .zip(places.iter().cloned())
        .map(|((c, n, _), place)| (*c, *n, place))
        .collect();
    order.sort_by_key(|(c, n, _)| (*c, *n));
    let hold = Hold {
        event_id,
        expires_at: until,
        state: if until <= now_ms {
            HoldState::Expired
        } else {
            HoldState::Active
        },
        places: order.into_iter().map(|(_, _, place)| place).collect(),
        total,
        currency,
    };
    Ok((hold, places))
}

/// The seat rows of a seated category at its `venue`, front to back,
/// section by section, as their lengths: place n of the category is the
/// n-th seat in that order. (A category's seats never change, nor a
/// venue's plan once it has categories: worth keeping once worked out.)
pub fn seat_rows(c: &Category, venue: &Venue) -> Vec<usize> {
    let Places::Seats { sections } = &c.info.places else {
        return Vec::new();
    };
    venue
        .info
        .plan
        .sections
        .iter()
        .filter(|s| sections.contains(&s.id))
        .flat_map(|s| s.rows.iter().map(|r| r.seats.len()))
        .collect()
}

/// A hold's state at `now_ms`, from its row: let go (`released`), past its
/// time, or active.
pub fn hold_state(released: bool, expires_at: i64, now_ms: u64) -> HoldState {
    if released {
        HoldState::Released
    } else if u64::try_from(expires_at).unwrap_or(0) <= now_ms {
        HoldState::Expired
    } else {
        HoldState::Active
    }
}
