//! Orders on PostgreSQL: made from a hold, settled by payments.
//!
//! Every change to an order locks its row first (`FOR UPDATE`), so that a
//! payment and a cancellation, or two webhooks reaching two processes,
//! take turns and the second sees what the first did. A payment then
//! locks its places, in order, before it decides whether they are free.

use std::collections::BTreeMap;

use rand_core::{OsRng, RngCore};
use shared::{TicketFields, TicketId};

use super::catalogue::own_event;
use super::changes::Feed;
use super::inventory::{hold_of, untie};
use super::outbox::enqueue;
use super::{Conn, PgStorage, key};
use crate::domain::hold::HoldState;
use crate::domain::order::{Order, OrderEvent, OrderState, Settlement, settle_payment};
use crate::storage::{
    CategoryFigures, ChangeKind, Created, DayFigures, Figures, IssuedTicket, MailKind, NewOrder,
    Orders, OrganizerId, Pending, Result, Revocation, Settled, Signed, StorageError, wait,
};

/// The statement reading an order row where `$where` (whose `$1` is text).
macro_rules! order_select {
    ($where:literal) => {
        concat!(
            "SELECT id, code, hold, event_id, email, name, amount, currency, state, \
             payment_intent, note, created_at, updated_at FROM orders WHERE ",
            $where
        )
    };
}

/// An order row with its hold's places, read by `sql` (an
/// [`order_select`]): (row id, hold, order).
async fn order_where(c: &mut Conn, sql: &str, arg: &str) -> Result<Option<(i64, [u8; 32], Order)>> {
    let Some((id, hold, mut order)) = order_row(c, sql, arg).await? else {
        return Ok(None);
    };
    // The hold's places, as at any time (only prices and keys are read).
    order.places = super::inventory::held_places(c, &hold).await?;
    Ok(Some((id, hold, order)))
}

/// An order row read by `sql` (an [`order_select`]), its places left
/// empty: (row id, hold, order).
async fn order_row(c: &mut Conn, sql: &str, arg: &str) -> Result<Option<(i64, [u8; 32], Order)>> {
    let Some(r) = c.query_opt(sql, &[&arg]).await? else {
        return Ok(None);
    };
    let hold: Vec<u8> = r.get(2);
    let hold: [u8; 32] = hold
        .try_into()
        .map_err(|_| StorageError::Backend("an order's hold is not 32 bytes".into()))?;
    let order = Order {
        code: r.get(1),
        event_id: r.get::<_, i64>(3) as u64,
        email: r.get(4),
        name: r.get(5),
        amount: r.get::<_, i64>(6) as u64,
        currency: r.get(7),
        state: crate::storage::rows::order_state(r.get(8))?,
        places: Vec::new(),
        payment_intent: r.get(9),
        note: r.get(10),
        created_at: r.get::<_, i64>(11) as u64,
        updated_at: r.get::<_, i64>(12) as u64,
    };
    Ok(Some((r.get(0), hold, order)))
}

/// The order of `code`; `lock` locks it for a change.
pub(super) async fn by_code(
    c: &mut Conn,
    code: &str,
    lock: bool,
) -> Result<(i64, [u8; 32], Order)> {
    let sql = if lock {
        order_select!("code = $1 FOR UPDATE")
    } else {
        order_select!("code = $1")
    };
    order_where(c, sql, code)
        .await?
        .ok_or_else(|| StorageError::NotFound(format!("order {code}")))
}

/// Moves `order` (locked) on by `event`, with a note, if the move may
/// happen (written with the COMMIT).
fn advance(
    c: &mut Conn,
    order: Order,
    event: OrderEvent,
    note: Option<&str>,
    now_ms: u64,
) -> Result<Order> {
    let to = order.state.next(event)?;
    if to == order.state {
        return Ok(order);
    }
    c.defer(
        "UPDATE orders SET state = $2, note = coalesce($3, note), updated_at = $4 WHERE code = $1",
        vec![
            Box::new(order.code.clone()),
            Box::new(to.as_str()),
            Box::new(note.map(str::to_owned)),
            Box::new(key(now_ms)),
        ],
    );
    Ok(Order {
        state: to,
        note: note.map(str::to_owned).or(order.note),
        updated_at: now_ms,
        ..order
    })
}

/// The tickets of batch `batch` still good.
pub(super) async fn tickets_of_batch(c: &mut Conn, batch: i64) -> Result<Vec<IssuedTicket>> {
    Ok(c.query(
        "SELECT ticket_id, seat, category_id, code FROM tickets
             WHERE batch_id = $1 AND NOT void ORDER BY seat, ticket_id",
        &[&batch],
    )
    .await?
    .iter()
    .map(ticket_from)
    .collect())
}

/// A ticket read as (id, seat, category, code).
fn ticket_from(r: &tokio_postgres::Row) -> IssuedTicket {
    IssuedTicket {
        ticket_id: shared::hex::encode(r.get::<_, &[u8]>(0)),
        seat: r.get(1),
        category: r.get::<_, i64>(2) as u16,
        code: r.get(3),
    }
}

/// Settles the payment of order `code` as succeeded
/// ([`crate::domain::order::settle_payment`]), noting its `intent` if
/// given.
async fn settle_in(c: &mut Conn, code: &str, intent: Option<&str>, now_ms: u64) -> Result<Settled> {
    let (id, hold_hash, mut order) = order_row(c, order_select!("code = $1 FOR UPDATE"), code)
        .await?
        .ok_or_else(|| StorageError::NotFound(format!("order {code}")))?;
    // A payment for an event no longer on sale (cancelled meanwhile)
    // goes back; a cancellation waits for the payments being settled, and
    // they for it: the event's row shared, read with the hold.
    c.read_ahead(
        "SELECT status FROM events WHERE id = $1 FOR SHARE",
        vec![Box::new(key(order.event_id))],
    );
    let hold = hold_of(c, &hold_hash, now_ms, false).await?;
    order.places = hold.places.clone();
    // What is written is sent with the COMMIT: nothing below reads it.
    if let Some(intent) = intent {
        c.defer(
            "UPDATE orders SET payment_intent = $2, updated_at = $3 WHERE id = $1",
            vec![
                Box::new(id),
                Box::new(intent.to_owned()),
                Box::new(key(now_ms)),
            ],
        );
        order.payment_intent = Some(intent.to_owned());
        order.updated_at = now_ms;
    }
    if matches!(order.state, OrderState::Paid | OrderState::Refunded) {
        return Ok(Settled::Already(order));
    }
    // (Lapsed holds are not told of first: places still tied to this
    // order's lapsed hold go from held to sold, those of other lapsed holds
    // are not free to it, and the feed adds up either way.)
    let mut feed = Feed::default();
    // The hold's places, locked in order: free for this order if unsold
    // and tied to no other hold (those of holds whose time passed were
    // untied just now; one committed too late for that counts as held).
    // Each looked up by its key, in order (`OFFSET 0` keeps the planner
    // from reading every place instead, whatever it guesses of the hold).
    let places = c
        .query(
            "SELECT p.category_id, p.n, p.seat_key,
                    p.order_id IS NULL AND (p.hold = $1 OR p.held_until = 0),
                    p.hold = $1 AND p.held_until > 0
             FROM (SELECT category_id, n FROM hold_items WHERE hold = $1
                   ORDER BY category_id, n OFFSET 0) i
             CROSS JOIN LATERAL (SELECT * FROM places p
                                 WHERE p.category_id = i.category_id AND p.n = i.n
                                 OFFSET 0 FOR UPDATE) p",
            &[&&hold_hash[..]],
        )
        .await?;
    let free = places.iter().all(|r| r.get::<_, bool>(3));
    let status: Option<String> = c
        .read_back()
        .await?
        .and_then(|rows| rows.first().map(|r| r.get(0)));
    let on_sale = status.as_deref() == Some("on_sale");
    let settled = match settle_payment(order.state, hold.state == HoldState::Active, free) {
        Settlement::Keep | Settlement::HoldAgain if free && on_sale => {
            // Places still tied to the hold go from held to sold; the
            // others (its time passed) are held again, then sold.
            let categories: Vec<i64> = places.iter().map(|r| r.get(0)).collect();
            let ns: Vec<i64> = places.iter().map(|r| r.get(1)).collect();
            c.defer(
                "UPDATE places p SET order_id = $2, hold = $1
                 FROM unnest($3::bigint[], $4::bigint[]) AS u(c, n)
                 WHERE p.category_id = u.c AND p.n = u.n",
                vec![
                    Box::new(hold_hash.to_vec()),
                    Box::new(id),
                    Box::new(categories),
                    Box::new(ns),
                ],
            );
            let (mut again, mut sold) = (Vec::new(), Vec::new());
            for r in &places {
                let place = (r.get::<_, i64>(0) as u64, r.get::<_, Option<String>>(2));
                if !r.get::<_, bool>(4) {
                    again.push(place.clone());
                }
                sold.push(place);
            }
            feed.push(order.event_id, ChangeKind::Held, again);
            feed.push(order.event_id, ChangeKind::Sold, sold);
            let order = advance(c, order, OrderEvent::PaymentSucceeded, None, now_ms)?;
            enqueue(c, code, MailKind::Tickets, now_ms);
            Settled::Paid(order)
        }
        _ => Settled::MustRefund(order),
    };
    feed.write(c, now_ms)?;
    Ok(settled)
}

/// What an order's tickets say, if they are still to be signed (and, if
/// `paid_only`, the order is paid): one a place, each with a fresh random id.
async fn ticket_fields(
    c: &mut Conn,
    code: &str,
    paid_only: bool,
) -> Result<Option<Vec<TicketFields>>> {
    // The order, its event's times and its places, at once.
    let rows = c
        .query(
            "SELECT o.event_id, o.state, o.batch_id, e.starts_at, e.ends_at, c.number, i.seat_key
             FROM orders o JOIN events e ON e.id = o.event_id
             LEFT JOIN hold_items i ON i.hold = o.hold
             LEFT JOIN categories c ON c.id = i.category_id
             WHERE o.code = $1 ORDER BY i.category_id, i.n",
            &[&code],
        )
        .await?;
    let Some(first) = rows.first() else {
        return Err(StorageError::NotFound(format!("order {code}")));
    };
    let state = crate::storage::rows::order_state(first.get(1))?;
    let batch: Option<i64> = first.get(2);
    if (paid_only && state != OrderState::Paid) || batch.is_some() {
        return Ok(None);
    }
    Ok(Some(crate::storage::rows::tickets_of(
        first.get::<_, i64>(0) as u64,
        (first.get(3), first.get(4)),
        rows.iter()
            .filter_map(|r| Some((r.get::<_, Option<i64>>(5)?, r.get(6)))),
    )?))
}

/// The columns of `tickets`, as arrays: event, id, category, seat,
/// multi-entry, valid from, valid until, code.
type TicketColumns = (
    Vec<i64>,
    Vec<Vec<u8>>,
    Vec<i64>,
    Vec<Option<String>>,
    Vec<bool>,
    Vec<i64>,
    Vec<i64>,
    Vec<String>,
);

fn ticket_columns(tickets: &[(TicketFields, String)]) -> TicketColumns {
    let mut t = TicketColumns::default();
    for (f, code) in tickets {
        t.0.push(key(f.event_id));
        t.1.push(f.ticket_id.0.to_vec());
        t.2.push(i64::from(f.category_id));
        t.3.push((!f.seat.is_empty()).then(|| f.seat.clone()));
        t.4.push(f.multi_entry);
        t.5.push(i64::from(f.valid_from));
        t.6.push(i64::from(f.valid_until));
        t.7.push(code.clone());
    }
    t
}

/// Inserts `tickets` signed by `key_id` into batch `$1`, as the rest of a
/// statement whose `$2` is the key's id (the arrays `$3`..`$10`).
macro_rules! insert_tickets {
    ($batch:literal) => {
        concat!(
            "INSERT INTO tickets (event_id, ticket_id, batch_id, category_id, seat, multi_entry,
                                  valid_from, valid_until, key_id, code)
             SELECT u.e, u.t, ",
            $batch,
            ", u.c, u.s, u.m, u.f, u.v, $2, u.code
             FROM unnest($3::bigint[], $4::bytea[], $5::bigint[], $6::text[], $7::bool[],
                         $8::bigint[], $9::bigint[], $10::text[]) AS u(e, t, c, s, m, f, v, code)"
        )
    };
}

/// Records `tickets` signed by `key_id` in batch `batch`.
async fn insert_tickets(
    c: &mut Conn,
    batch: i64,
    key_id: &str,
    tickets: &[(TicketFields, String)],
) -> Result<()> {
    let t = ticket_columns(tickets);
    c.execute(
        insert_tickets!("$1"),
        &[
            &batch, &key_id, &t.0, &t.1, &t.2, &t.3, &t.4, &t.5, &t.6, &t.7,
        ],
    )
    .await?;
    Ok(())
}

/// Records the signed `tickets` of order `code` (of event `event_id`) in
/// a batch of their own, and the batch in the order: one statement.
async fn record_batch(
    c: &mut Conn,
    (code, event_id): (&str, u64),
    key_id: &str,
    tickets: &[(TicketFields, String)],
    now_ms: u64,
) -> Result<()> {
    let t = ticket_columns(tickets);
    c.execute(
        concat!(
            "WITH b AS (INSERT INTO batches (event_id, category_id, key_id, count, out_dir,
                                             created_at, state)
                        VALUES ($11, 0, $2, $12, $13, $14, 'recorded') RETURNING id),
                  t AS (",
            insert_tickets!("(SELECT id FROM b)"),
            ")
             UPDATE orders SET batch_id = b.id FROM b WHERE orders.code = $1"
        ),
        &[
            &code,
            &key_id,
            &t.0,
            &t.1,
            &t.2,
            &t.3,
            &t.4,
            &t.5,
            &t.6,
            &t.7,
            &key(event_id),
            &(tickets.len() as i64),
            &format!("order {code}"),
            &key(now_ms / 1000),
        ],
    )
    .await?;
    Ok(())
}

/// Records a paid order's signed tickets, once.
async fn record_tickets_in(
    c: &mut Conn,
    code: &str,
    key_id: &str,
    tickets: &[(TicketFields, String)],
    now_ms: u64,
) -> Result<()> {
    let (id, _, order) = order_row(c, order_select!("code = $1 FOR UPDATE"), code)
        .await?
        .ok_or_else(|| StorageError::NotFound(format!("order {code}")))?;
    let batch: Option<i64> = c
        .query_one("SELECT batch_id FROM orders WHERE id = $1", &[&id])
        .await?
        .get(0);
    if batch.is_some() {
        return Ok(());
    }
    if order.state != OrderState::Paid {
        return Err(StorageError::Conflict(format!(
            "order {code} is {}: it has no tickets",
            order.state.as_str()
        )));
    }
    record_batch(c, (code, order.event_id), key_id, tickets, now_ms).await
}

/// The order made before under the idempotency key of `new`, if any: the
/// same request is answered it, another refused.
async fn made_before(c: &mut Conn, new: &NewOrder) -> Result<Option<Created>> {
    let Some((k, request)) = &new.idempotency else {
        return Ok(None);
    };
    let Some(before) = c
        .query_opt(
            "SELECT code, request_hash FROM orders WHERE idempotency_key = $1",
            &[k],
        )
        .await?
    else {
        return Ok(None);
    };
    if before.get::<_, &[u8]>(1) != &request[..] {
        return Err(StorageError::Conflict(
            "this Idempotency-Key was used for another request".into(),
        ));
    }
    Ok(Some(Created::Again(
        by_code(c, before.get(0), false).await?.2,
    )))
}

/// Makes a pending order, in transaction `c`. Orders of one hold take
/// turns on its row; two requests under one idempotency key are told
/// apart by its unique index, whichever process each reached.
async fn create_order_in(c: &mut Conn, new: &NewOrder, now_ms: u64) -> Result<Created> {
    if let Some(again) = made_before(c, new).await? {
        return Ok(again);
    }
    let hold = hold_of(c, &new.hold_hash, now_ms, true).await?;
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
    // Whether the event is on sale, and the order of the hold if any, at
    // once.
    let r = c
        .query_one(
            "SELECT (SELECT status FROM events WHERE id = $1),
                    (SELECT code FROM orders WHERE hold = $2 AND state IN ('pending', 'paid'))",
            &[&key(hold.event_id), &&new.hold_hash[..]],
        )
        .await?;
    let status: Option<String> = r.get(0);
    if let Some(status) = status.filter(|s| s != "on_sale") {
        return Err(StorageError::Conflict(format!(
            "event {} is {status}: nothing of it can be ordered",
            hold.event_id
        )));
    }
    if let Some(live) = r.get::<_, Option<String>>(1) {
        // A request under the same key, committed while this one waited
        // for the hold, is seen now (each statement sees what was
        // committed): its order is the answer.
        if let Some(again) = made_before(c, new).await? {
            return Ok(again);
        }
        return Err(StorageError::Conflict(format!(
            "the hold is ordered already (order {live})"
        )));
    }
    let inserted = c
        .query_opt(
            "INSERT INTO orders (code, secret_hash, hold, event_id, email, name, amount, currency,
                                 state, idempotency_key, request_hash, created_at, updated_at,
                                 payment_method)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9, $10, $11, $11, $12)
             ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
            &[
                &new.code,
                &&new.secret_hash[..],
                &&new.hold_hash[..],
                &key(hold.event_id),
                &new.buyer.email,
                &new.buyer.name,
                &key(hold.total),
                &hold.currency,
                &new.idempotency.as_ref().map(|(k, _)| k.as_str()),
                &new.idempotency.as_ref().map(|(_, h)| &h[..]),
                &key(now_ms),
                &new.payment_method,
            ],
        )
        .await?;
    if inserted.is_none() {
        // The same key, for another hold, committed meanwhile.
        return made_before(c, new).await?.ok_or_else(|| {
            StorageError::Conflict("this Idempotency-Key is in use by another request".into())
        });
    }
    // The order as inserted, not read back.
    Ok(Created::New(Order {
        code: new.code.clone(),
        event_id: hold.event_id,
        email: new.buyer.email.clone(),
        name: new.buyer.name.clone(),
        amount: hold.total,
        currency: hold.currency,
        state: OrderState::Pending,
        places: hold.places,
        payment_intent: None,
        note: None,
        created_at: now_ms,
        updated_at: now_ms,
    }))
}

impl PgStorage {
    async fn claim_unsettled_(
        &self,
        before_ms: u64,
        since_ms: u64,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<(Order, Option<String>)>> {
        self.transaction(async |c| {
            let claimed = c
                .query(
                    "UPDATE orders SET updated_at = $4 WHERE id = ANY(ARRAY(
                         SELECT id FROM orders
                         WHERE state = 'pending' AND updated_at <= $1 AND created_at > $2
                         ORDER BY updated_at LIMIT $3 FOR UPDATE SKIP LOCKED))
                     RETURNING code, payment_method",
                    &[
                        &key(before_ms),
                        &key(since_ms),
                        &(limit.min(1000) as i64),
                        &key(now_ms),
                    ],
                )
                .await?;
            let mut out = Vec::with_capacity(claimed.len());
            for r in claimed {
                out.push((by_code(c, r.get(0), false).await?.2, r.get(1)));
            }
            Ok(out)
        })
        .await
    }

    async fn mark_refunded_(
        &self,
        code: &str,
        refund: &str,
        why: &str,
        now_ms: u64,
    ) -> Result<Order> {
        self.transaction(async |c| {
            let (id, _, order) = by_code(c, code, true).await?;
            let (event, mail) = crate::storage::rows::refund_of(order.state);
            let event_id = order.event_id;
            let order = advance(c, order, event, Some(why), now_ms)?;
            enqueue(c, code, mail, now_ms);
            c.execute(
                "UPDATE orders SET refund = $2 WHERE id = $1",
                &[&id, &refund],
            )
            .await?;
            // Its tickets, if it had any, are good no more.
            c.execute(
                "INSERT INTO revocations (event_id, ticket_id, revoked_at, reason)
                 SELECT t.event_id, t.ticket_id, $2, $3 FROM tickets t
                 JOIN orders o ON o.batch_id = t.batch_id WHERE o.id = $1
                 ORDER BY t.ticket_id
                 ON CONFLICT DO NOTHING",
                &[&id, &key(now_ms), &format!("order {code} paid back: {why}")],
            )
            .await?;
            c.execute(
                "UPDATE tickets SET void = true
                 WHERE batch_id = (SELECT batch_id FROM orders WHERE id = $1)",
                &[&id],
            )
            .await?;
            // Places paid back are for sale again.
            let places = super::inventory::moved(
                c,
                "UPDATE places SET order_id = NULL, hold = NULL, held_until = 0
                 WHERE order_id = $1 RETURNING category_id, seat_key, n",
                &[&id],
            )
            .await?;
            let mut feed = Feed::default();
            feed.push(event_id, ChangeKind::Refunded, places);
            feed.write(c, now_ms)?;
            Ok(order)
        })
        .await
    }

    async fn organizer_order_(&self, by: OrganizerId, code: &str) -> Result<Order> {
        let mut c = self.conn().await?;
        let (_, _, order) = by_code(&mut c, code, false).await?;
        match own_event(&mut c, by, order.event_id).await {
            Ok(_) => Ok(order),
            Err(StorageError::NotFound(_)) => Err(StorageError::NotFound(format!("order {code}"))),
            Err(e) => Err(e),
        }
    }

    async fn ticket_to_reissue_(
        &self,
        by: OrganizerId,
        code: &str,
        ticket_id: &str,
    ) -> Result<TicketFields> {
        let not_found = || StorageError::NotFound(format!("ticket {ticket_id} of order {code}"));
        let old: [u8; 16] = shared::hex::decode(ticket_id).ok_or_else(not_found)?;
        let order = self.organizer_order_(by, code).await?;
        if order.state != OrderState::Paid {
            return Err(not_to_reissue(&order));
        }
        let mut c = self.conn().await?;
        let r = c
            .query_opt(
                "SELECT t.event_id, t.category_id, t.seat, t.multi_entry, t.valid_from,
                        t.valid_until
                 FROM tickets t JOIN orders o ON o.batch_id = t.batch_id
                 WHERE o.code = $1 AND t.ticket_id = $2 AND NOT t.void",
                &[&code, &&old[..]],
            )
            .await?
            .ok_or_else(not_found)?;
        let mut fresh = [0u8; 16];
        OsRng.fill_bytes(&mut fresh);
        Ok(TicketFields {
            event_id: r.get::<_, i64>(0) as u64,
            ticket_id: TicketId(fresh),
            category_id: r.get::<_, i64>(1) as u16,
            multi_entry: r.get(3),
            valid_from: r.get::<_, i64>(4) as u32,
            valid_until: r.get::<_, i64>(5) as u32,
            seat: r.get::<_, Option<String>>(2).unwrap_or_default(),
        })
    }

    async fn reissue_ticket_(
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
        self.organizer_order_(by, code).await?;
        // Checked again inside the change: the order is still paid, and
        // the old ticket still its own and good.
        self.transaction(async |c| {
            let (_, _, order) = by_code(c, code, true).await?;
            if order.state != OrderState::Paid {
                return Err(not_to_reissue(&order));
            }
            let batch: i64 = c
                .query_opt(
                    "SELECT t.batch_id FROM tickets t JOIN orders o ON o.batch_id = t.batch_id
                     WHERE o.code = $1 AND t.ticket_id = $2 AND NOT t.void",
                    &[&code, &&old_id[..]],
                )
                .await?
                .ok_or_else(not_found)?
                .get(0);
            c.execute(
                "UPDATE tickets SET void = true WHERE event_id = $1 AND ticket_id = $2",
                &[&key(order.event_id), &&old_id[..]],
            )
            .await?;
            c.execute(
                "INSERT INTO revocations (event_id, ticket_id, revoked_at, reason)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[
                    &key(order.event_id),
                    &&old_id[..],
                    &key(now_ms),
                    &format!("reissued (order {code})"),
                ],
            )
            .await?;
            insert_tickets(c, batch, key_id, std::slice::from_ref(new)).await?;
            let (fields, signed) = new;
            Ok(IssuedTicket {
                ticket_id: shared::hex::encode(&fields.ticket_id.0),
                seat: (!fields.seat.is_empty()).then(|| fields.seat.clone()),
                category: fields.category_id,
                code: signed.clone(),
            })
        })
        .await
    }

    async fn revocations_(
        &self,
        by: OrganizerId,
        events: &[u64],
        since: u64,
        limit: usize,
    ) -> Result<Vec<Revocation>> {
        let mut c = self.conn().await?;
        for &event in events {
            own_event(&mut c, by, event).await?;
        }
        let ids: Vec<i64> = events.iter().map(|e| key(*e)).collect();
        Ok(c.query(
            "SELECT seq, event_id, ticket_id, revoked_at, reason FROM revocations
                 WHERE event_id = ANY($1) AND seq > $2 ORDER BY seq LIMIT $3",
            &[&ids, &key(since), &(limit.min(100_000) as i64)],
        )
        .await?
        .iter()
        .map(|r| Revocation {
            seq: r.get::<_, i64>(0) as u64,
            event_id: r.get::<_, i64>(1) as u64,
            ticket_id: shared::hex::encode(r.get::<_, &[u8]>(2)),
            revoked_at: r.get::<_, i64>(3) as u64,
            reason: r.get(4),
        })
        .collect())
    }

    async fn figures_(&self, by: OrganizerId, event_id: u64, now_ms: u64) -> Result<Figures> {
        let mut c = self.conn().await?;
        c.begin_read().await?;
        // Counted as the event's size calls for.
        c.plan_each_run();
        let read = async {
            own_event(&mut c, by, event_id).await?;
            let e = key(event_id);
            let mut orders = BTreeMap::new();
            for r in c
                .query(
                    "SELECT state, count(*) FROM orders WHERE event_id = $1 GROUP BY state",
                    &[&e],
                )
                .await?
            {
                orders.insert(r.get::<_, String>(0), r.get::<_, i64>(1) as u64);
            }
            let paid = c
                .query_one(
                    "SELECT coalesce(sum(amount), 0)::bigint, max(currency) FROM orders
                     WHERE event_id = $1 AND state = 'paid'",
                    &[&e],
                )
                .await?;
            let active_holds: i64 = c
                .query_one(
                    "SELECT count(*) FROM holds h
                     WHERE event_id = $1 AND released_at IS NULL AND expires_at > $2
                       AND NOT EXISTS (SELECT 1 FROM orders o
                                       WHERE o.hold = h.token_hash AND o.state = 'paid')",
                    &[&e, &key(now_ms)],
                )
                .await?
                .get(0);
            let mut categories = Vec::new();
            let mut fallback_currency = None;
            for r in c
                .query(
                    "SELECT c.id, c.name, c.currency,
                        (SELECT count(*) FROM places p WHERE p.category_id = c.id),
                        (SELECT count(*) FROM places p
                         WHERE p.category_id = c.id AND p.order_id IS NOT NULL),
                        (SELECT count(*) FROM places p WHERE p.category_id = c.id
                            AND p.order_id IS NULL AND p.held_until > $2),
                        (SELECT coalesce(sum(i.price), 0)::bigint
                         FROM hold_items i JOIN orders o ON o.hold = i.hold
                         WHERE i.category_id = c.id AND o.state = 'paid')
                     FROM categories c WHERE c.event_id = $1 ORDER BY c.id",
                    &[&e, &key(now_ms)],
                )
                .await?
            {
                fallback_currency.get_or_insert(r.get::<_, String>(2));
                categories.push(CategoryFigures {
                    category_id: r.get::<_, i64>(0) as u64,
                    name: r.get(1),
                    capacity: r.get::<_, i64>(3) as u64,
                    sold: r.get::<_, i64>(4) as u64,
                    held: r.get::<_, i64>(5) as u64,
                    revenue: r.get::<_, i64>(6) as u64,
                });
            }
            let by_day = c
                .query(
                    "SELECT to_char(to_timestamp(o.updated_at / 1000) AT TIME ZONE 'UTC',
                                    'YYYY-MM-DD') AS day,
                            count(i.n), coalesce(sum(i.price), 0)::bigint
                     FROM orders o JOIN hold_items i ON i.hold = o.hold
                     WHERE o.event_id = $1 AND o.state = 'paid' GROUP BY day ORDER BY day",
                    &[&e],
                )
                .await?
                .iter()
                .map(|r| DayFigures {
                    day: r.get(0),
                    places: r.get::<_, i64>(1) as u64,
                    revenue: r.get::<_, i64>(2) as u64,
                })
                .collect();
            Ok(Figures {
                event_id,
                currency: paid
                    .get::<_, Option<String>>(1)
                    .or(fallback_currency)
                    .unwrap_or_default(),
                revenue: paid.get::<_, i64>(0) as u64,
                orders,
                active_holds: active_holds as u64,
                categories,
                by_day,
            })
        }
        .await;
        c.end(read).await
    }
}

fn not_to_reissue(order: &Order) -> StorageError {
    StorageError::Conflict(format!(
        "the order is {}: its tickets are not to be issued again",
        order.state.as_str()
    ))
}

impl Orders for PgStorage {
    fn create_order_pending(&self, new: NewOrder, now_ms: u64) -> Pending<Created> {
        let me = self.clone();
        Box::pin(async move {
            new.buyer.check()?;
            me.transaction(async |c| create_order_in(c, &new, now_ms).await)
                .await
        })
    }

    fn order(&self, code: &str, secret_hash: &[u8; 32]) -> Result<Order> {
        wait(async {
            let mut c = self.conn().await?;
            let secret = c
                .query_opt("SELECT secret_hash FROM orders WHERE code = $1", &[&code])
                .await?;
            match secret {
                Some(s) if s.get::<_, &[u8]>(0) == &secret_hash[..] => {
                    Ok(by_code(&mut c, code, false).await?.2)
                }
                _ => Err(StorageError::NotFound(format!("order {code}"))),
            }
        })
    }

    fn order_by_intent(&self, intent: &str) -> Result<Order> {
        wait(async {
            let mut c = self.conn().await?;
            Ok(
                order_where(&mut c, order_select!("payment_intent = $1"), intent)
                    .await?
                    .ok_or_else(|| StorageError::NotFound(format!("the order paid by {intent}")))?
                    .2,
            )
        })
    }

    fn set_intent(&self, code: &str, intent: &str, now_ms: u64) -> Result<Order> {
        wait(self.transaction(async |c| {
            c.execute(
                "UPDATE orders SET payment_intent = $2, updated_at = $3 WHERE code = $1",
                &[&code, &intent, &key(now_ms)],
            )
            .await?;
            Ok(by_code(c, code, false).await?.2)
        }))
    }

    fn settle_paid(&self, code: &str, now_ms: u64) -> Result<Settled> {
        wait(self.transaction(async |c| settle_in(c, code, None, now_ms).await))
    }

    fn pay_pending(
        &self,
        code: String,
        intent: String,
        now_ms: u64,
        signed: Option<Signed>,
    ) -> Pending<Settled> {
        // The payment noted, settled and its tickets recorded: one commit,
        // made to its end even if its caller goes.
        let me = self.clone();
        let paid = self.runtime.spawn(async move {
            me.transaction(async |c| {
                let settled = settle_in(c, &code, Some(&intent), now_ms).await?;
                if let (Settled::Paid(order), Some(signed)) = (&settled, &signed) {
                    // Tickets that cannot be recorded leave the payment
                    // be: they are signed afresh when asked for. The order
                    // was pending until now: it has none yet.
                    c.ahead("SAVEPOINT tickets");
                    let at = (code.as_str(), order.event_id);
                    match record_batch(c, at, &signed.key_id, &signed.tickets, now_ms).await {
                        Ok(()) => c.defer("RELEASE SAVEPOINT tickets", Vec::new()),
                        Err(e) => {
                            tracing::warn!(order = code, error = %e, "tickets signed ahead not recorded");
                            c.batch("ROLLBACK TO SAVEPOINT tickets; RELEASE SAVEPOINT tickets")
                                .await?;
                        }
                    }
                }
                Ok(settled)
            })
            .await
        });
        Box::pin(async move {
            paid.await
                .map_err(|e| StorageError::Backend(e.to_string()))?
        })
    }

    fn mark_failed(&self, code: &str, why: &str, now_ms: u64) -> Result<Order> {
        wait(self.transaction(async |c| {
            let (_, _, order) = by_code(c, code, true).await?;
            // News of a failure after the order ended changes nothing.
            match order.state {
                OrderState::Pending => {
                    advance(c, order, OrderEvent::PaymentFailed, Some(why), now_ms)
                }
                _ => Ok(order),
            }
        }))
    }

    fn mark_refunded(&self, code: &str, refund: &str, why: &str, now_ms: u64) -> Result<Order> {
        wait(self.mark_refunded_(code, refund, why, now_ms))
    }

    fn tickets_to_sign(&self, code: &str) -> Result<Option<Vec<TicketFields>>> {
        wait(async {
            let mut c = self.conn().await?;
            ticket_fields(&mut c, code, true).await
        })
    }

    fn tickets_to_sign_ahead(&self, code: &str) -> Result<Option<Vec<TicketFields>>> {
        wait(async {
            let mut c = self.conn().await?;
            ticket_fields(&mut c, code, false).await
        })
    }

    fn record_tickets(
        &self,
        code: &str,
        key_id: &str,
        tickets: &[(TicketFields, String)],
        now_ms: u64,
    ) -> Result<()> {
        wait(self.transaction(async |c| record_tickets_in(c, code, key_id, tickets, now_ms).await))
    }

    fn order_tickets(&self, code: &str, secret_hash: &[u8; 32]) -> Result<Vec<IssuedTicket>> {
        wait(async {
            let mut c = self.conn().await?;
            // The order and its tickets still good, at once: no ticket, one
            // row of nulls.
            let rows = c
                .query(
                    "SELECT t.ticket_id, t.seat, t.category_id, t.code
                     FROM orders o LEFT JOIN tickets t ON t.batch_id = o.batch_id AND NOT t.void
                     WHERE o.code = $1 AND o.secret_hash = $2
                     ORDER BY t.seat, t.ticket_id",
                    &[&code, &&secret_hash[..]],
                )
                .await?;
            if rows.is_empty() {
                return Err(StorageError::NotFound(format!("order {code}")));
            }
            Ok(rows
                .iter()
                .filter(|r| r.get::<_, Option<&[u8]>>(0).is_some())
                .map(ticket_from)
                .collect())
        })
    }

    fn ticket_code(&self, ticket_id: &str, secret_hash: &[u8; 32]) -> Result<String> {
        let not_found = || StorageError::NotFound(format!("ticket {ticket_id}"));
        let id: [u8; 16] = shared::hex::decode(ticket_id).ok_or_else(not_found)?;
        wait(async {
            let mut c = self.conn().await?;
            Ok(c.query_opt(
                "SELECT t.code FROM tickets t JOIN orders o ON o.batch_id = t.batch_id
                 WHERE t.ticket_id = $1 AND o.secret_hash = $2 AND NOT t.void",
                &[&&id[..], &&secret_hash[..]],
            )
            .await?
            .ok_or_else(not_found)?
            .get(0))
        })
    }

    fn organizer_order(&self, by: OrganizerId, code: &str) -> Result<Order> {
        wait(self.organizer_order_(by, code))
    }

    fn claim_unsettled(
        &self,
        before_ms: u64,
        since_ms: u64,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<(Order, Option<String>)>> {
        wait(self.claim_unsettled_(before_ms, since_ms, now_ms, limit))
    }

    fn order_by_code(&self, code: &str) -> Result<(Order, Option<String>)> {
        wait(async {
            let mut c = self.conn().await?;
            let order = by_code(&mut c, code, false).await?.2;
            let method = c
                .query_one(
                    "SELECT payment_method FROM orders WHERE code = $1",
                    &[&code],
                )
                .await?
                .get(0);
            Ok((order, method))
        })
    }

    fn ticket_to_reissue(
        &self,
        by: OrganizerId,
        code: &str,
        ticket_id: &str,
    ) -> Result<TicketFields> {
        wait(self.ticket_to_reissue_(by, code, ticket_id))
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
        wait(self.reissue_ticket_(by, code, old, key_id, new, now_ms))
    }

    fn cancel_pending(&self, code: &str, now_ms: u64) -> Result<Order> {
        wait(self.transaction(async |c| {
            let (_, hold, before) = by_code(c, code, true).await?;
            let event_id = before.event_id;
            let order = advance(
                c,
                before,
                OrderEvent::Cancel,
                Some("cancelled before payment"),
                now_ms,
            )?;
            // Its hold goes too: the places are free at once, and the hold
            // can be ordered no more.
            c.execute(
                "UPDATE holds SET released_at = $2 WHERE token_hash = $1 AND released_at IS NULL",
                &[&&hold[..], &key(now_ms)],
            )
            .await?;
            let places = untie(c, &hold).await?;
            let mut feed = Feed::default();
            feed.push(event_id, ChangeKind::Released, places);
            feed.write(c, now_ms)?;
            Ok(order)
        }))
    }

    fn figures(&self, by: OrganizerId, event_id: u64, now_ms: u64) -> Result<Figures> {
        wait(self.figures_(by, event_id, now_ms))
    }

    fn revocations(
        &self,
        by: OrganizerId,
        events: &[u64],
        since: u64,
        limit: usize,
    ) -> Result<Vec<Revocation>> {
        wait(self.revocations_(by, events, since, limit))
    }
}
