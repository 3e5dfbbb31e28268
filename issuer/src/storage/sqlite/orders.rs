//! Orders on SQLite: made from a hold, settled by payments, in
//! IMMEDIATE transactions so that a payment and an expiry, or two
//! webhooks, never both decide.

use rusqlite::{Connection, OptionalExtension, params};

use super::changes::{announce_expired_in, moved, record};
use super::inventory::{hold_of, untie};
use super::outbox::enqueue;
use super::{SqliteStorage, key, refused};
use crate::domain::hold::HoldState;
use crate::domain::order::{Order, OrderEvent, OrderState, Settlement, settle_payment};
use crate::storage::{
    CategoryFigures, ChangeKind, Created, DayFigures, Figures, IssuedTicket, MailKind, NewOrder,
    Orders, OrganizerId, Pending, Result, Revocation, Settled, Signed, StorageError,
};
use rand_core::{OsRng, RngCore};
use shared::{TicketFields, TicketId};

const ORDER_COLUMNS: &str = "id, code, hold, event_id, email, name, amount, currency, state, \
     payment_intent, note, created_at, updated_at";

/// An order row with its hold's places: (row id, hold, order).
fn order_where(
    conn: &Connection,
    clause: &str,
    arg: &dyn rusqlite::ToSql,
) -> Result<Option<(i64, [u8; 32], Order)>> {
    let row = conn
        .prepare_cached(&format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE {clause}"
        ))?
        .query_row([arg], |r| {
            let hold: Vec<u8> = r.get(2)?;
            let state: String = r.get(8)?;
            Ok((
                r.get::<_, i64>(0)?,
                hold,
                state,
                Order {
                    code: r.get(1)?,
                    event_id: r.get::<_, i64>(3)? as u64,
                    email: r.get(4)?,
                    name: r.get(5)?,
                    amount: r.get::<_, i64>(6)? as u64,
                    currency: r.get(7)?,
                    state: OrderState::Pending,
                    places: Vec::new(),
                    payment_intent: r.get(9)?,
                    note: r.get(10)?,
                    created_at: r.get::<_, i64>(11)? as u64,
                    updated_at: r.get::<_, i64>(12)? as u64,
                },
            ))
        })
        .optional()?;
    let Some((id, hold, state, mut order)) = row else {
        return Ok(None);
    };
    let hold: [u8; 32] = hold
        .try_into()
        .map_err(|_| StorageError::Backend("an order's hold is not 32 bytes".into()))?;
    order.state = crate::storage::rows::order_state(&state)?;
    // The hold's places, as at any time (only prices and keys are read).
    order.places = hold_of(conn, &hold, 0)?.places;
    Ok(Some((id, hold, order)))
}

/// The status of an event that is not on sale, or `None` if it is.
fn off_sale(conn: &Connection, event_id: u64) -> Result<Option<String>> {
    let status: String = conn
        .prepare_cached("SELECT status FROM events WHERE id = ?1")?
        .query_row([key(event_id)], |r| r.get(0))?;
    Ok((status != "on_sale").then_some(status))
}

pub(super) fn by_code(conn: &Connection, code: &str) -> Result<(i64, [u8; 32], Order)> {
    order_where(conn, "code = ?1", &code)?
        .ok_or_else(|| StorageError::NotFound(format!("order {code}")))
}

/// Moves an order on by `event`, with a note, if the move may happen.
fn advance(
    conn: &Connection,
    code: &str,
    event: OrderEvent,
    note: Option<&str>,
    now_ms: u64,
) -> Result<Order> {
    let (_, _, order) = by_code(conn, code)?;
    let to = order.state.next(event)?;
    if to != order.state {
        conn.prepare_cached("UPDATE orders SET state = ?2, note = coalesce(?3, note), updated_at = ?4 WHERE code = ?1")?.execute(
            params![code, to.as_str(), note, key(now_ms)],
        )?;
    }
    Ok(by_code(conn, code)?.2)
}

/// The tickets an order's batch holds.
pub(super) fn tickets_of_batch(conn: &Connection, batch: i64) -> Result<Vec<IssuedTicket>> {
    Ok(conn
        .prepare_cached(
            "SELECT ticket_id, seat, category_id, code FROM tickets WHERE batch_id = ?1 AND void = 0
             ORDER BY seat, ticket_id",
        )?
        .query_map([batch], |r| {
            let id: Vec<u8> = r.get(0)?;
            Ok(IssuedTicket {
                ticket_id: id.iter().map(|b| format!("{b:02x}")).collect(),
                seat: r.get(1)?,
                category: r.get(2)?,
                code: r.get(3)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?)
}

/// Settles a payment that succeeded ([`crate::domain::order::settle_payment`]).
/// Notes the payment `intent` of an order and settles it as succeeded.
fn pay_in(tx: &Connection, code: &str, intent: &str, now_ms: u64) -> Result<Settled> {
    tx.prepare_cached("UPDATE orders SET payment_intent = ?2, updated_at = ?3 WHERE code = ?1")?
        .execute(params![code, intent, key(now_ms)])?;
    settle_in(tx, code, now_ms)
}

fn settle_in(tx: &Connection, code: &str, now_ms: u64) -> Result<Settled> {
    let (id, hold_hash, order) = by_code(tx, code)?;
    if matches!(order.state, OrderState::Paid | OrderState::Refunded) {
        return Ok(Settled::Already(order));
    }
    // Places of holds whose time passed are told free before they are
    // sold, so the live feed's moves add up.
    announce_expired_in(tx, Some(order.event_id), now_ms)?;
    let hold = hold_of(tx, &hold_hash, now_ms)?;
    let items: Vec<(i64, i64)> = tx
        .prepare_cached("SELECT category_id, n FROM hold_items WHERE hold = ?1")?
        .query_map([&hold_hash[..]], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    // Free for this order: unsold, and held by no one else now.
    let mut free = true;
    for (c, n) in &items {
        free &= tx
            .prepare_cached(
                "SELECT order_id IS NULL AND (hold = ?3 OR held_until <= ?4)
                 FROM places WHERE category_id = ?1 AND n = ?2",
            )?
            .query_row(params![c, n, &hold_hash[..], key(now_ms)], |r| {
                r.get::<_, bool>(0)
            })?;
    }
    // A payment for an event no longer on sale (cancelled meanwhile)
    // goes back.
    let on_sale = off_sale(tx, order.event_id)?.is_none();
    let settled = match settle_payment(order.state, hold.state == HoldState::Active, free) {
        Settlement::Keep | Settlement::HoldAgain if free && on_sale => {
            // Places still tied to the hold go from held to sold; the
            // others (its time passed) are held again, then sold.
            let (mut again, mut sold) = (Vec::new(), Vec::new());
            for (c, n) in &items {
                let (seat, mine): (Option<String>, bool) = tx.prepare_cached("UPDATE places SET order_id = ?3, hold = ?4 WHERE category_id = ?1 AND n = ?2
                         RETURNING seat_key, held_until > 0")?.query_row(
                    params![c, n, id, &hold_hash[..]],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                if !mine {
                    again.push((*c as u64, seat.clone()));
                }
                sold.push((*c as u64, seat));
            }
            record(tx, order.event_id, now_ms, ChangeKind::Held, &again)?;
            record(tx, order.event_id, now_ms, ChangeKind::Sold, &sold)?;
            let order = advance(tx, code, OrderEvent::PaymentSucceeded, None, now_ms)?;
            enqueue(tx, code, MailKind::Tickets, now_ms)?;
            Settled::Paid(order)
        }
        _ => Settled::MustRefund(order),
    };
    Ok(settled)
}

impl Orders for SqliteStorage {
    fn create_order_pending(&self, new: NewOrder, now_ms: u64) -> Pending<Created> {
        if let Err(e) = new.buyer.check() {
            return refused(e.into());
        }
        self.submit_unless_gone(move |_, tx| create_order_in(tx, &new, now_ms))
    }

    fn order(&self, code: &str, secret_hash: &[u8; 32]) -> Result<Order> {
        let conn = self.read();
        let secret: Option<Vec<u8>> = conn
            .prepare_cached("SELECT secret_hash FROM orders WHERE code = ?1")?
            .query_row([code], |r| r.get(0))
            .optional()?;
        match secret {
            Some(s) if s == secret_hash => Ok(by_code(&conn, code)?.2),
            _ => Err(StorageError::NotFound(format!("order {code}"))),
        }
    }

    fn order_by_intent(&self, intent: &str) -> Result<Order> {
        Ok(order_where(&self.read(), "payment_intent = ?1", &intent)?
            .ok_or_else(|| StorageError::NotFound(format!("the order paid by {intent}")))?
            .2)
    }

    fn set_intent(&self, code: &str, intent: &str, now_ms: u64) -> Result<Order> {
        self.write(|tx| {
            tx.prepare_cached(
                "UPDATE orders SET payment_intent = ?2, updated_at = ?3 WHERE code = ?1",
            )?
            .execute(params![code, intent, key(now_ms)])?;
            Ok(by_code(tx, code)?.2)
        })
    }

    fn settle_paid(&self, code: &str, now_ms: u64) -> Result<Settled> {
        self.write(|tx| settle_in(tx, code, now_ms))
    }

    fn mark_failed(&self, code: &str, why: &str, now_ms: u64) -> Result<Order> {
        self.write(|tx| {
            let (_, _, order) = by_code(tx, code)?;
            // News of a failure after the order ended changes nothing.
            let order = match order.state {
                OrderState::Pending => {
                    advance(tx, code, OrderEvent::PaymentFailed, Some(why), now_ms)?
                }
                _ => order,
            };
            Ok(order)
        })
    }

    fn mark_refunded(&self, code: &str, refund: &str, why: &str, now_ms: u64) -> Result<Order> {
        self.write(|tx| {
            let (id, _, order) = by_code(tx, code)?;
            let (event, mail) = crate::storage::rows::refund_of(order.state);
            let order = advance(tx, code, event, Some(why), now_ms)?;
            enqueue(tx, code, mail, now_ms)?;
            tx.prepare_cached("UPDATE orders SET refund = ?2 WHERE code = ?1")?
                .execute(params![code, refund])?;
            // Its tickets, if it had any, are good no more.
            tx.prepare_cached(
                "INSERT OR IGNORE INTO revocations (event_id, ticket_id, revoked_at, reason)
             SELECT t.event_id, t.ticket_id, ?2, ?3 FROM tickets t
             JOIN orders o ON o.batch_id = t.batch_id WHERE o.id = ?1",
            )?
            .execute(params![
                id,
                key(now_ms),
                format!("order {code} paid back: {why}")
            ])?;
            tx.prepare_cached(
                "UPDATE tickets SET void = 1
             WHERE batch_id = (SELECT batch_id FROM orders WHERE id = ?1)",
            )?
            .execute([id])?;
            // Places paid back are for sale again.
            let places = moved(
                tx,
                "UPDATE places SET order_id = NULL, hold = NULL, held_until = 0
             WHERE order_id = ?1 AND order_id IS NOT NULL
             RETURNING category_id, seat_key",
                [id],
            )?;
            record(tx, order.event_id, now_ms, ChangeKind::Refunded, &places)?;
            Ok(order)
        })
    }

    fn tickets_to_sign(&self, code: &str) -> Result<Option<Vec<TicketFields>>> {
        ticket_fields(&self.read(), code, true)
    }

    fn tickets_to_sign_ahead(&self, code: &str) -> Result<Option<Vec<TicketFields>>> {
        ticket_fields(&self.read(), code, false)
    }

    fn pay_pending(
        &self,
        code: String,
        intent: String,
        now_ms: u64,
        signed: Option<Signed>,
    ) -> Pending<Settled> {
        // The payment noted, settled and its tickets recorded: one commit.
        self.submit(move |_, tx| {
            let settled = pay_in(tx, &code, &intent, now_ms)?;
            if let (Settled::Paid(_), Some(signed)) = (&settled, signed) {
                // Tickets that cannot be recorded leave the payment be:
                // they are signed afresh when asked for.
                tx.execute_batch("SAVEPOINT tickets")?;
                match record_tickets_in(tx, &code, &signed.key_id, &signed.tickets, now_ms) {
                    Ok(()) => tx.execute_batch("RELEASE tickets")?,
                    Err(e) => {
                        tracing::warn!(order = code, error = %e, "tickets signed ahead not recorded");
                        tx.execute_batch("ROLLBACK TO tickets; RELEASE tickets")?;
                    }
                }
            }
            Ok(settled)
        })
    }

    fn record_tickets(
        &self,
        code: &str,
        key_id: &str,
        tickets: &[(TicketFields, String)],
        now_ms: u64,
    ) -> Result<()> {
        self.write(|tx| record_tickets_in(tx, code, key_id, tickets, now_ms))
    }

    fn order_tickets(&self, code: &str, secret_hash: &[u8; 32]) -> Result<Vec<IssuedTicket>> {
        let conn = self.read();
        let batch: Option<Option<i64>> = conn
            .prepare_cached("SELECT batch_id FROM orders WHERE code = ?1 AND secret_hash = ?2")?
            .query_row(params![code, &secret_hash[..]], |r| r.get(0))
            .optional()?;
        let Some(batch) = batch else {
            return Err(StorageError::NotFound(format!("order {code}")));
        };
        match batch {
            Some(batch) => tickets_of_batch(&conn, batch),
            None => Ok(Vec::new()),
        }
    }

    fn ticket_code(&self, ticket_id: &str, secret_hash: &[u8; 32]) -> Result<String> {
        let not_found = || StorageError::NotFound(format!("ticket {ticket_id}"));
        let id: [u8; 16] = shared::hex::decode(ticket_id).ok_or_else(not_found)?;
        self.read()
            .prepare_cached(
                "SELECT t.code FROM tickets t JOIN orders o ON o.batch_id = t.batch_id
                 WHERE t.ticket_id = ?1 AND o.secret_hash = ?2 AND t.void = 0",
            )?
            .query_row(params![&id[..], &secret_hash[..]], |r| r.get(0))
            .optional()?
            .ok_or_else(not_found)
    }

    fn organizer_order(&self, by: OrganizerId, code: &str) -> Result<Order> {
        let conn = self.read();
        let (_, _, order) = by_code(&conn, code)?;
        let owner: Option<i64> = conn
            .prepare_cached("SELECT organizer_id FROM events WHERE id = ?1")?
            .query_row([key(order.event_id)], |r| r.get(0))?;
        match owner {
            Some(o) if o as u64 == by => Ok(order),
            _ => Err(StorageError::NotFound(format!("order {code}"))),
        }
    }

    fn claim_unsettled(
        &self,
        before_ms: u64,
        since_ms: u64,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<(Order, Option<String>)>> {
        self.write(|tx| {
            let codes: Vec<(String, Option<String>)> = tx
                .prepare_cached(
                    "UPDATE orders SET updated_at = ?4 WHERE id IN (
                         SELECT id FROM orders
                         WHERE state = 'pending' AND updated_at <= ?1 AND created_at > ?2
                         ORDER BY updated_at LIMIT ?3)
                     RETURNING code, payment_method",
                )?
                .query_map(
                    params![
                        key(before_ms),
                        key(since_ms),
                        limit.min(1000) as i64,
                        key(now_ms)
                    ],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?
                .collect::<rusqlite::Result<_>>()?;
            codes
                .into_iter()
                .map(|(code, method)| Ok((by_code(tx, &code)?.2, method)))
                .collect()
        })
    }

    fn order_by_code(&self, code: &str) -> Result<(Order, Option<String>)> {
        let conn = self.read();
        let order = by_code(&conn, code)?.2;
        let method = conn
            .prepare_cached("SELECT payment_method FROM orders WHERE code = ?1")?
            .query_row([code], |r| r.get(0))?;
        Ok((order, method))
    }

    fn ticket_to_reissue(
        &self,
        by: OrganizerId,
        code: &str,
        ticket_id: &str,
    ) -> Result<TicketFields> {
        let not_found = || StorageError::NotFound(format!("ticket {ticket_id} of order {code}"));
        let old: [u8; 16] = shared::hex::decode(ticket_id).ok_or_else(not_found)?;
        let order = self.organizer_order(by, code)?;
        if order.state != OrderState::Paid {
            return Err(StorageError::Conflict(format!(
                "the order is {}: its tickets are not to be issued again",
                order.state.as_str()
            )));
        }
        let conn = self.read();
        let row: Option<(i64, u16, Option<String>, bool, i64, i64)> = conn
            .prepare_cached("SELECT t.event_id, t.category_id, t.seat, t.multi_entry, t.valid_from, t.valid_until
                 FROM tickets t JOIN orders o ON o.batch_id = t.batch_id
                 WHERE o.code = ?1 AND t.ticket_id = ?2 AND t.void = 0")?.query_row(
                params![code, &old[..]],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
            )
            .optional()?;
        let (event_id, category_id, seat, multi_entry, valid_from, valid_until) =
            row.ok_or_else(not_found)?;
        let mut fresh = [0u8; 16];
        OsRng.fill_bytes(&mut fresh);
        Ok(TicketFields {
            event_id: event_id as u64,
            ticket_id: TicketId(fresh),
            category_id,
            multi_entry,
            valid_from: valid_from as u32,
            valid_until: valid_until as u32,
            seat: seat.unwrap_or_default(),
        })
    }

    fn reissue_ticket(
        &self,
        by: OrganizerId,
        code: &str,
        old: &str,
        key_id: &str,
        new: &(TicketFields, String),
        now_ms: u64,
    ) -> Result<IssuedTicket> {
        let not_found = || StorageError::NotFound(format!("ticket {old} of order {code}"));
        let old_id: [u8; 16] = shared::hex::decode(old).ok_or_else(not_found)?;
        // Checked again inside the change: the order is still paid, and
        // the old ticket still its own and good.
        self.organizer_order(by, code)?;
        self.write(|tx| {
            let (_, _, order) = by_code(tx, code)?;
            if order.state != OrderState::Paid {
                return Err(StorageError::Conflict(format!(
                    "the order is {}: its tickets are not to be issued again",
                    order.state.as_str()
                )));
            }
            let batch: i64 = tx
                .prepare_cached(
                    "SELECT t.batch_id FROM tickets t JOIN orders o ON o.batch_id = t.batch_id
                     WHERE o.code = ?1 AND t.ticket_id = ?2 AND t.void = 0",
                )?
                .query_row(params![code, &old_id[..]], |r| r.get(0))
                .optional()?
                .ok_or_else(not_found)?;
            tx.prepare_cached(
                "UPDATE tickets SET void = 1 WHERE event_id = ?1 AND ticket_id = ?2",
            )?
            .execute(params![key(order.event_id), &old_id[..]])?;
            tx.prepare_cached(
                "INSERT OR IGNORE INTO revocations (event_id, ticket_id, revoked_at, reason)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                key(order.event_id),
                &old_id[..],
                key(now_ms),
                format!("reissued (order {code})")
            ])?;
            let (fields, signed) = new;
            let mut insert = tx.prepare_cached(crate::issue::INSERT_TICKET)?;
            crate::issue::insert_ticket(&mut insert, batch, key_id, fields, signed)?;
            Ok(IssuedTicket {
                ticket_id: shared::hex::encode(&fields.ticket_id.0),
                seat: (!fields.seat.is_empty()).then(|| fields.seat.clone()),
                category: fields.category_id,
                code: signed.clone(),
            })
        })
    }

    fn cancel_pending(&self, code: &str, now_ms: u64) -> Result<Order> {
        self.write(|tx| {
            let (_, hold, before) = by_code(tx, code)?;
            let order = advance(
                tx,
                code,
                OrderEvent::Cancel,
                Some("cancelled before payment"),
                now_ms,
            )?;
            // Its hold goes too: the places are free at once, and the hold can
            // be ordered no more.
            tx.prepare_cached(
                "UPDATE holds SET released_at = ?2 WHERE token_hash = ?1 AND released_at IS NULL",
            )?
            .execute(params![&hold[..], key(now_ms)])?;
            let places = untie(tx, &hold)?;
            record(tx, before.event_id, now_ms, ChangeKind::Released, &places)?;
            Ok(order)
        })
    }

    fn revocations(
        &self,
        by: OrganizerId,
        events: &[u64],
        since: u64,
        limit: usize,
    ) -> Result<Vec<Revocation>> {
        let conn = self.read();
        let mut out = Vec::new();
        for &event in events {
            let owner: Option<Option<i64>> = conn
                .prepare_cached("SELECT organizer_id FROM events WHERE id = ?1")?
                .query_row([key(event)], |r| r.get(0))
                .optional()?;
            if owner.flatten().map(|o| o as u64) != Some(by) {
                return Err(StorageError::NotFound(format!("event {event}")));
            }
        }
        let mut stmt = conn.prepare_cached(
            "SELECT seq, event_id, ticket_id, revoked_at, reason FROM revocations
             WHERE event_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )?;
        for &event in events {
            let rows = stmt.query_map(params![key(event), key(since), limit as i64], |r| {
                let id: Vec<u8> = r.get(2)?;
                Ok(Revocation {
                    seq: r.get::<_, i64>(0)? as u64,
                    event_id: r.get::<_, i64>(1)? as u64,
                    ticket_id: id.iter().map(|b| format!("{b:02x}")).collect(),
                    revoked_at: r.get::<_, i64>(3)? as u64,
                    reason: r.get(4)?,
                })
            })?;
            for row in rows {
                out.push(row?);
            }
        }
        out.sort_by_key(|r| r.seq);
        out.truncate(limit);
        Ok(out)
    }

    fn figures(&self, by: OrganizerId, event_id: u64, now_ms: u64) -> Result<Figures> {
        let conn = self.read();
        SqliteStorage::own_event(&conn, by, event_id)?;
        let mut orders = std::collections::BTreeMap::new();
        let mut stmt = conn.prepare_cached(
            "SELECT state, count(*) FROM orders WHERE event_id = ?1 GROUP BY state",
        )?;
        for row in stmt.query_map([key(event_id)], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })? {
            let (state, n) = row?;
            orders.insert(state, n);
        }
        let (revenue, currency): (i64, Option<String>) = conn
            .prepare_cached(
                "SELECT coalesce(sum(amount), 0), max(currency) FROM orders
             WHERE event_id = ?1 AND state = 'paid'",
            )?
            .query_row([key(event_id)], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let active_holds: i64 = conn.prepare_cached("SELECT count(*) FROM holds h WHERE event_id = ?1 AND released_at IS NULL AND expires_at > ?2
             AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.hold = h.token_hash AND o.state = 'paid')")?.query_row(
            params![key(event_id), key(now_ms)],
            |r| r.get(0),
        )?;
        let mut categories = Vec::new();
        let mut stmt = conn.prepare_cached(
            "SELECT c.id, c.name, c.currency,
                    (SELECT count(*) FROM places p WHERE p.category_id = c.id),
                    (SELECT count(*) FROM places p WHERE p.category_id = c.id AND p.order_id IS NOT NULL),
                    (SELECT count(*) FROM places p WHERE p.category_id = c.id AND p.order_id IS NULL
                        AND p.held_until > ?2),
                    (SELECT coalesce(sum(i.price), 0) FROM hold_items i JOIN orders o ON o.hold = i.hold
                        WHERE i.category_id = c.id AND o.state = 'paid')
             FROM categories c WHERE c.event_id = ?1 ORDER BY c.id",
        )?;
        let mut fallback_currency = None;
        for row in stmt.query_map(params![key(event_id), key(now_ms)], |r| {
            Ok((
                CategoryFigures {
                    category_id: r.get::<_, i64>(0)? as u64,
                    name: r.get(1)?,
                    capacity: r.get::<_, i64>(3)? as u64,
                    sold: r.get::<_, i64>(4)? as u64,
                    held: r.get::<_, i64>(5)? as u64,
                    revenue: r.get::<_, i64>(6)? as u64,
                },
                r.get::<_, String>(2)?,
            ))
        })? {
            let (c, currency) = row?;
            fallback_currency.get_or_insert(currency);
            categories.push(c);
        }
        let mut by_day = Vec::new();
        let mut stmt = conn.prepare_cached(
            "SELECT date(o.updated_at / 1000, 'unixepoch') AS day, count(i.n), coalesce(sum(i.price), 0)
             FROM orders o JOIN hold_items i ON i.hold = o.hold
             WHERE o.event_id = ?1 AND o.state = 'paid' GROUP BY day ORDER BY day",
        )?;
        for row in stmt.query_map([key(event_id)], |r| {
            Ok(DayFigures {
                day: r.get(0)?,
                places: r.get::<_, i64>(1)? as u64,
                revenue: r.get::<_, i64>(2)? as u64,
            })
        })? {
            by_day.push(row?);
        }
        Ok(Figures {
            event_id,
            currency: currency.or(fallback_currency).unwrap_or_default(),
            revenue: revenue as u64,
            orders,
            active_holds: active_holds as u64,
            categories,
            by_day,
        })
    }
}

/// What an order's tickets say, if they are still to be signed (and, if
/// `paid_only`, the order is paid): one a place, each with a fresh random id.
fn ticket_fields(
    conn: &Connection,
    code: &str,
    paid_only: bool,
) -> Result<Option<Vec<TicketFields>>> {
    let (id, hold, order) = by_code(conn, code)?;
    let batch: Option<i64> = conn
        .prepare_cached("SELECT batch_id FROM orders WHERE id = ?1")?
        .query_row([id], |r| r.get(0))?;
    if (paid_only && order.state != OrderState::Paid) || batch.is_some() {
        return Ok(None);
    }

    let (starts, ends): (i64, i64) = conn
        .prepare_cached("SELECT starts_at, ends_at FROM events WHERE id = ?1")?
        .query_row([key(order.event_id)], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let places: Vec<(i64, Option<String>)> = conn
        .prepare_cached(
            "SELECT c.number, i.seat_key FROM hold_items i JOIN categories c ON c.id = i.category_id
             WHERE i.hold = ?1 ORDER BY i.category_id, i.n",
        )?
        .query_map([&hold[..]], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Some(crate::storage::rows::tickets_of(
        order.event_id,
        (starts, ends),
        places,
    )?))
}

/// Records a paid order's signed tickets, once.
fn record_tickets_in(
    tx: &Connection,
    code: &str,
    key_id: &str,
    tickets: &[(TicketFields, String)],
    now_ms: u64,
) -> Result<()> {
    let (id, _, order) = by_code(tx, code)?;
    let batch: Option<i64> = tx
        .prepare_cached("SELECT batch_id FROM orders WHERE id = ?1")?
        .query_row([id], |r| r.get(0))?;
    if batch.is_some() {
        return Ok(());
    }
    if order.state != OrderState::Paid {
        return Err(StorageError::Conflict(format!(
            "order {code} is {}: it has no tickets",
            order.state.as_str()
        )));
    }
    tx.prepare_cached(
        "INSERT INTO batches (event_id, category_id, key_id, count, out_dir, created_at, state)
             VALUES (?1, 0, ?2, ?3, ?4, ?5, 'recorded')",
    )?
    .execute(params![
        key(order.event_id),
        key_id,
        tickets.len() as i64,
        format!("order {code}"),
        key(now_ms / 1000)
    ])?;
    let batch = tx.last_insert_rowid();
    {
        let mut insert = tx.prepare_cached(crate::issue::INSERT_TICKET)?;
        for (f, signed) in tickets {
            crate::issue::insert_ticket(&mut insert, batch, key_id, f, signed)?;
        }
    }
    tx.prepare_cached("UPDATE orders SET batch_id = ?2 WHERE id = ?1")?
        .execute(params![id, batch])?;
    Ok(())
}

/// Makes a pending order, in the writer's transaction `tx`.
fn create_order_in(tx: &Connection, new: &NewOrder, now_ms: u64) -> Result<Created> {
    if let Some((k, request)) = &new.idempotency {
        let before: Option<(String, Vec<u8>)> = tx
            .prepare_cached("SELECT code, request_hash FROM orders WHERE idempotency_key = ?1")?
            .query_row([k], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if let Some((code, hash)) = before {
            if hash != request {
                return Err(StorageError::Conflict(
                    "this Idempotency-Key was used for another request".into(),
                ));
            }
            return Ok(Created::Again(by_code(tx, &code)?.2));
        }
    }
    let hold = hold_of(tx, &new.hold_hash, now_ms)?;
    match hold.state {
        HoldState::Active => {}
        HoldState::Expired => {
            return Err(StorageError::Conflict(
                "the hold expired: its places may be taken; hold them again".into(),
            ));
        }
        HoldState::Released => {
            return Err(StorageError::Conflict("the hold was let go".into()));
        }
    }
    if let Some(status) = off_sale(tx, hold.event_id)? {
        return Err(StorageError::Conflict(format!(
            "event {} is {status}: nothing of it can be ordered",
            hold.event_id
        )));
    }
    let live: Option<String> = tx
        .prepare_cached("SELECT code FROM orders WHERE hold = ?1 AND state IN ('pending', 'paid')")?
        .query_row([&new.hold_hash[..]], |r| r.get(0))
        .optional()?;
    if let Some(code) = live {
        return Err(StorageError::Conflict(format!(
            "the hold is ordered already (order {code})"
        )));
    }
    tx.prepare_cached(
        "INSERT INTO orders (code, secret_hash, hold, event_id, email, name, amount, currency,
                             state, idempotency_key, request_hash, created_at, updated_at,
                             payment_method)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending', ?9, ?10, ?11, ?11, ?12)",
    )?
    .execute(params![
        new.code,
        &new.secret_hash[..],
        &new.hold_hash[..],
        key(hold.event_id),
        new.buyer.email,
        new.buyer.name,
        key(hold.total),
        hold.currency,
        new.idempotency.as_ref().map(|(k, _)| k),
        new.idempotency.as_ref().map(|(_, h)| &h[..]),
        key(now_ms),
        new.payment_method
    ])?;
    let order = by_code(tx, &new.code)?.2;
    Ok(Created::New(order))
}
