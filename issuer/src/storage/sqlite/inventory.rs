//! Holds and what is left, on SQLite. A hold is one IMMEDIATE transaction:
//! SQLite lets one writer in at a time, so two buyers can never both take
//! a place; each place is taken by a conditional update that succeeds only
//! while the place is neither sold nor held.

use std::collections::BTreeMap;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};

use super::catalogue::categories_of;
use super::changes::{Moved, announce_expired_in, expiry_due, last_seq, moved, record};
use super::{SqliteStorage, key, refused, venue_of};
use crate::domain::catalogue::{Category, EventStatus, Places};
use crate::domain::hold::{HeldPlace, Hold, HoldItem, HoldRequest, HoldState};
use crate::storage::holding::{self, Taken};
use crate::storage::{
    Availability, CategoryAvailability, ChangeKind, Client, Inventory, Pending, PlaceChange,
    PlaceState, Result, StorageError,
};

/// Takes place `n` of `category` for the hold, if it is free at `now`:
/// its seat key (`None` for a standing place), or `None` if it was not free.
fn take(
    conn: &Connection,
    hold: &[u8; 32],
    until: u64,
    now: u64,
    category: u64,
    n: i64,
) -> Result<Option<Option<String>>> {
    Ok(conn
        .prepare_cached(
            "UPDATE places SET hold = ?1, held_until = ?2
             WHERE category_id = ?3 AND n = ?4 AND order_id IS NULL AND held_until <= ?5
             RETURNING seat_key",
        )?
        .query_row(
            params![&hold[..], key(until), key(category), n, key(now)],
            |r| r.get(0),
        )
        .optional()?)
}

impl SqliteStorage {
    /// The seat rows of a seated category ([`holding::seat_rows`]), kept
    /// once worked out.
    fn rows_of(&self, conn: &Connection, c: &Category, venue_id: u64) -> Result<Arc<Vec<usize>>> {
        let cached = self
            .rows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&c.id)
            .cloned();
        if let Some(rows) = cached {
            return Ok(rows);
        }
        let venue = venue_of(conn, venue_id)?
            .ok_or_else(|| StorageError::NotFound("the event's venue".into()))?;
        let rows = Arc::new(holding::seat_rows(c, &venue));
        self.rows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(c.id, rows.clone());
        Ok(rows)
    }
}

impl Inventory for SqliteStorage {
    fn hold_pending(
        &self,
        request: HoldRequest,
        token_hash: [u8; 32],
        now_ms: u64,
        ttl_ms: u64,
        client: Option<Client>,
    ) -> Pending<Hold> {
        if let Err(e) = request.check() {
            return refused(e.into());
        }
        // A category too nearly sold out for what is asked is refused from
        // a read, without waiting for the writer: after a sell-out, buyers
        // asking again and again cost the writer nothing. Only categories
        // found short lately are read so.
        let asked = request.items.iter().filter_map(|i| match i {
            HoldItem::Quantity { category_id, .. } | HoldItem::Best { category_id, .. } => {
                Some(*category_id)
            }
            HoldItem::Seats { .. } => None,
        });
        if self.scarce(asked)
            && let Some(conn) = self.quick_read()
        {
            match sold_out(&conn, &request, now_ms) {
                Ok(None) => {}
                Ok(Some(refusal)) | Err(refusal) => return refused(refusal),
            }
        }
        let until = now_ms.saturating_add(ttl_ms);
        self.submit_unless_gone(move |me, tx| {
            me.hold_in(tx, &request, &token_hash, now_ms, until, client.as_ref())
        })
    }

    fn hold_of(&self, token_hash: &[u8; 32], now_ms: u64) -> Result<Hold> {
        hold_of(&self.read(), token_hash, now_ms)
    }

    fn release_pending(&self, token_hash: [u8; 32], now_ms: u64) -> Pending<Hold> {
        self.submit(move |_, tx| release_in(tx, &token_hash, now_ms))
    }

    fn availability(&self, event_id: u64, now_ms: u64) -> Result<Availability> {
        // What is shown is what the feed has told: holds past their time
        // are told expired first.
        if expiry_due(&self.read(), Some(event_id), now_ms)? {
            self.write(|tx| announce_expired_in(tx, Some(event_id), now_ms))?;
        }
        // One read transaction: the counts, the seats and the number of
        // the last change all of one moment.
        let mut guard = self.read();
        let conn = guard.transaction()?;
        match SqliteStorage::event_row(&conn, event_id)? {
            Some((e, _)) if e.status != EventStatus::Draft => {}
            _ => return Err(StorageError::NotFound(format!("event {event_id}"))),
        }
        let seq = last_seq(&conn, event_id)?;
        let now_s = now_ms / 1000;
        let mut categories = Vec::new();
        let mut seats = Vec::new();
        // One pass over each category's places, in its order: its counts
        // and its seats' states.
        let mut stmt = conn.prepare_cached(
            "SELECT seat_key,
                    CASE WHEN order_id IS NOT NULL THEN 2 WHEN held_until > ?2 THEN 1 ELSE 0 END
             FROM places WHERE category_id = ?1 ORDER BY n",
        )?;
        for c in categories_of(&conn, event_id)? {
            let (mut capacity, mut sold, mut held) = (0u64, 0u64, 0u64);
            let mut rows = stmt.query(params![key(c.id), key(now_ms)])?;
            while let Some(r) = rows.next()? {
                let state = match r.get::<_, i64>(1)? {
                    2 => PlaceState::Sold,
                    1 => PlaceState::Held,
                    _ => PlaceState::Available,
                };
                capacity += 1;
                match state {
                    PlaceState::Sold => sold += 1,
                    PlaceState::Held => held += 1,
                    PlaceState::Available => {}
                }
                if let Some(seat) = r.get::<_, Option<String>>(0)? {
                    seats.push((seat, c.id, state));
                }
            }
            categories.push(CategoryAvailability::of(c, capacity, sold, held, now_s));
        }
        drop(stmt);
        conn.commit()?;
        Ok(Availability {
            event_id,
            seq,
            categories,
            seats,
        })
    }

    fn changes(&self, event_id: u64, after: u64, limit: usize) -> Result<Vec<PlaceChange>> {
        self.changes_of(event_id, after, limit)
    }

    fn changes_after(&self, cursor: u64, limit: usize) -> Result<(u64, Vec<PlaceChange>)> {
        self.all_changes_after(cursor, limit)
    }

    fn change_cursor(&self) -> Result<u64> {
        self.newest_change()
    }

    fn announce_expired(&self, now_ms: u64) -> Result<usize> {
        self.announce_all(now_ms)
    }
}

/// Why `request` cannot be met, if one of its quantities (or best seats)
/// asks more places of an on-sale event's category than are free now.
/// Only that is decided here; everything else is left to the hold itself.
fn sold_out(conn: &Connection, request: &HoldRequest, now_ms: u64) -> Result<Option<StorageError>> {
    for item in &request.items {
        let (HoldItem::Quantity {
            category_id,
            quantity,
        }
        | HoldItem::Best {
            category_id,
            quantity,
        }) = item
        else {
            continue;
        };
        let found: Option<(String, i64)> = conn
            .prepare_cached(
                "SELECT c.name,
                        (SELECT count(*) FROM (SELECT 1 FROM places p
                          WHERE p.category_id = c.id AND p.order_id IS NULL AND p.held_until <= ?3
                          LIMIT ?4))
                 FROM categories c JOIN events e ON e.id = c.event_id
                 WHERE c.id = ?1 AND c.event_id = ?2 AND e.status = 'on_sale' AND c.per_order >= ?4",
            )?
            .query_row(
                params![key(*category_id), key(request.event_id), key(now_ms), quantity],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((name, free)) = found
            && free < i64::from(*quantity)
        {
            return Ok(Some(StorageError::Conflict(format!(
                "{name} has {free} places left, not {quantity}"
            ))));
        }
    }
    Ok(None)
}

/// A hold as it stands at `now_ms`.
pub(super) fn hold_of(conn: &Connection, token_hash: &[u8; 32], now_ms: u64) -> Result<Hold> {
    let row: Option<(i64, i64, Option<i64>, String, i64)> = conn
        .prepare_cached("SELECT event_id, expires_at, released_at, currency, total FROM holds WHERE token_hash = ?1")?.query_row(
            [&token_hash[..]],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()?;
    let Some((event_id, expires_at, released_at, currency, total)) = row else {
        return Err(StorageError::NotFound("hold".into()));
    };
    let places = conn
        .prepare_cached(
            "SELECT category_id, seat_key, price FROM hold_items WHERE hold = ?1 ORDER BY category_id, n",
        )?
        .query_map([&token_hash[..]], |r| {
            Ok(HeldPlace {
                category_id: r.get::<_, i64>(0)? as u64,
                seat: r.get(1)?,
                price: r.get::<_, i64>(2)? as u64,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let state = crate::storage::holding::hold_state(released_at.is_some(), expires_at, now_ms);
    Ok(Hold {
        event_id: event_id as u64,
        expires_at: expires_at as u64,
        state,
        places,
        total: total as u64,
        currency,
    })
}

/// Lets a hold's places go, in the writer's transaction `tx`.
fn release_in(tx: &Connection, token_hash: &[u8; 32], now_ms: u64) -> Result<Hold> {
    let hold = hold_of(tx, token_hash, now_ms)?;
    if hold.state == HoldState::Active {
        tx.prepare_cached("UPDATE holds SET released_at = ?2 WHERE token_hash = ?1")?
            .execute(params![&token_hash[..], key(now_ms)])?;
        let places = untie(tx, token_hash)?;
        record(tx, hold.event_id, now_ms, ChangeKind::Released, &places)?;
        return Ok(Hold {
            state: HoldState::Released,
            ..hold
        });
    }
    Ok(hold)
}

impl SqliteStorage {
    /// Makes the hold `request`, in the writer's transaction `tx`.
    fn hold_in(
        &self,
        tx: &Connection,
        request: &HoldRequest,
        token_hash: &[u8; 32],
        now_ms: u64,
        until: u64,
        client: Option<&Client>,
    ) -> Result<Hold> {
        let shelved = self.shelved(tx, request.event_id)?;
        let event = holding::check_event(shelved.as_deref().map(|(e, _)| e), request.event_id)?;
        let categories = shelved
            .as_deref()
            .map(|(_, c)| c)
            .ok_or_else(|| StorageError::NotFound(format!("event {}", request.event_id)))?;
        // Places of holds whose time passed are told free before they are
        // taken again, so the live feed's moves add up.
        announce_expired_in(tx, Some(event.id), now_ms)?;
        holding::check_quantities(request, categories)?;
        let mut taken: Vec<Taken> = Vec::new();
        for item in &request.items {
            match item {
                HoldItem::Seats { seats } => {
                    for seat in seats {
                        let place: Option<(i64, i64)> = tx
                            .prepare_cached(
                                "SELECT category_id, n FROM places
                                 WHERE event_id = ?1 AND seat_key = ?2 AND seat_key IS NOT NULL",
                            )?
                            .query_row(params![key(event.id), seat], |r| Ok((r.get(0)?, r.get(1)?)))
                            .optional()?;
                        let Some((c, n)) = place else {
                            return Err(StorageError::Invalid(format!(
                                "the event sells no seat {seat:?}"
                            )));
                        };
                        if take(tx, token_hash, until, now_ms, c as u64, n)?.is_none() {
                            return Err(StorageError::Conflict(format!("seat {seat} is taken")));
                        }
                        taken.push((c as u64, n, Some(seat.clone())));
                    }
                }
                HoldItem::Quantity {
                    category_id,
                    quantity,
                } => {
                    let c = holding::category(categories, *category_id)?;
                    let free: Vec<i64> = tx
                        .prepare_cached(
                            "SELECT n FROM places
                             WHERE category_id = ?1 AND order_id IS NULL AND held_until <= ?2
                             ORDER BY held_until, n LIMIT ?3",
                        )?
                        .query_map(params![key(c.id), key(now_ms), quantity], |r| r.get(0))?
                        .collect::<rusqlite::Result<_>>()?;
                    if free.len() < *quantity as usize {
                        self.short_of(c.id);
                        return Err(StorageError::Conflict(format!(
                            "{} has {} places left, not {quantity}",
                            c.info.name,
                            free.len()
                        )));
                    }
                    for n in free {
                        let Some(seat) = take(tx, token_hash, until, now_ms, c.id, n)? else {
                            return Err(StorageError::Conflict(
                                "a place was taken meanwhile".into(),
                            ));
                        };
                        taken.push((c.id, n, seat));
                    }
                }
                HoldItem::Best {
                    category_id,
                    quantity,
                } => {
                    let c = holding::category(categories, *category_id)?;
                    if !matches!(c.info.places, Places::Seats { .. }) {
                        return Err(StorageError::Invalid(format!(
                            "{} is standing: ask for a quantity, not the best seats",
                            c.info.name
                        )));
                    }
                    // The category's rows, front to back, section by
                    // section, as runs of its place numbers.
                    let rows = self.rows_of(tx, c, event.info.venue_id)?;
                    let capacity: usize = rows.iter().sum();
                    // The free seats, from the board (the expired holds
                    // were announced above).
                    let first = {
                        let mut boards = self.boards();
                        let free = boards.free(tx, event.id, c.id, now_ms)?.to_vec();
                        if free.len() != capacity {
                            boards.forget(event.id);
                            return Err(StorageError::Backend(format!(
                                "{} has {} seats, its rows {capacity}",
                                c.info.name,
                                free.len()
                            )));
                        }
                        holding::best_seats(c, &rows, free, &taken, *quantity)
                            .inspect_err(|_| self.short_of(c.id))?
                    };
                    for i in first..first + *quantity as usize {
                        let n = i as i64 + 1;
                        let Some(seat) = take(tx, token_hash, until, now_ms, c.id, n)? else {
                            // The board was wrong: built again next time.
                            self.boards().forget(event.id);
                            return Err(StorageError::Conflict(
                                "a seat was taken meanwhile".into(),
                            ));
                        };
                        taken.push((c.id, n, seat));
                    }
                }
            }
        }
        // What the client holds of the event already, paid places aside.
        if let Some(Client { address, most }) = client {
            let held: i64 = tx
                .prepare_cached(
                    "SELECT count(*) FROM hold_items i JOIN holds h ON h.token_hash = i.hold
                     WHERE h.event_id = ?1 AND h.client = ?2 AND h.client IS NOT NULL
                       AND h.released_at IS NULL AND h.expires_at > ?3
                       AND NOT EXISTS (SELECT 1 FROM orders o
                                       WHERE o.hold = h.token_hash AND o.state = 'paid')",
                )?
                .query_row(params![key(event.id), address, key(now_ms)], |r| r.get(0))?;
            if held as u64 + taken.len() as u64 > u64::from(*most) {
                return Err(StorageError::Conflict(format!(
                    "this address holds {held} places of the event already; at most {most} at once"
                )));
            }
        }
        // Counting what is sold costs a pass over a category: only demand
        // tiers need it.
        let mut sold = BTreeMap::new();
        for id in holding::counted(categories, &taken) {
            let (capacity, n): (i64, i64) = tx
                .prepare_cached(
                    "SELECT count(*), count(order_id) FROM places WHERE category_id = ?1",
                )?
                .query_row([key(id)], |r| Ok((r.get(0)?, r.get(1)?)))?;
            sold.insert(id, (capacity as u64, n as u64));
        }
        let (hold, places) = holding::priced(event.id, categories, &taken, &sold, now_ms, until)?;
        tx.prepare_cached(
            "INSERT INTO holds (token_hash, event_id, created_at, expires_at, currency, total, client)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            &token_hash[..],
            key(event.id),
            key(now_ms),
            key(until),
            hold.currency,
            key(hold.total),
            client.map(|c| c.address.as_str())
        ])?;
        {
            let mut item = tx.prepare_cached(
                "INSERT INTO hold_items (hold, category_id, n, seat_key, price) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for ((c, n, seat), place) in taken.iter().zip(&places) {
                item.execute(params![&token_hash[..], key(*c), n, seat, key(place.price)])?;
            }
        }
        let moved: Vec<(u64, Option<String>)> =
            taken.into_iter().map(|(c, _, seat)| (c, seat)).collect();
        record(tx, event.id, now_ms, ChangeKind::Held, &moved)?;
        Ok(hold)
    }
}

/// Unties a hold's unsold places from it (they are free at once): the
/// places that moved.
pub(super) fn untie(tx: &Connection, token_hash: &[u8; 32]) -> Result<Moved> {
    moved(
        tx,
        "UPDATE places SET hold = NULL, held_until = 0
         WHERE (category_id, n) IN (SELECT category_id, n FROM hold_items WHERE hold = ?1)
           AND hold = ?1 AND order_id IS NULL
         RETURNING category_id, seat_key",
        [&token_hash[..]],
    )
}
