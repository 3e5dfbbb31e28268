//! Holds and what is left, on PostgreSQL.
//!
//! Places are taken by conditional updates of rows locked `SKIP LOCKED`: a
//! buyer never waits for another's places, so a hot quota is no queue, and
//! a place being taken by one transaction is simply not free to the
//! others. What the database decides stands whatever process asked.

use std::collections::{BTreeMap, HashMap};

use rand_core::RngCore;
use std::sync::Arc;

use super::catalogue::{
    EVENT_AND_CATEGORIES, event_and_categories, event_and_categories_from, venue_of,
};
use super::changes::{self, Feed};
use super::{Conn, PgStorage, key};
use crate::domain::catalogue::{Category, Event, EventStatus, Places};
use crate::domain::hold::{HeldPlace, Hold, HoldItem, HoldRequest, HoldState};
use crate::storage::holding::{self, Categories, Taken};
use crate::storage::rows::Moved;
use crate::storage::{
    Availability, CategoryAvailability, ChangeKind, Client, Inventory, Pending, PlaceChange,
    PlaceState, Result, StorageError, wait,
};

/// How often best seats are chosen again when seats chosen were being
/// taken by another buyer at that moment.
const BEST_TRIES: usize = 8;

/// How long a process's picture of a category's free seats is used
/// (seats let go meanwhile are not seen; seats taken elsewhere cost a try).
const FREE_SEATS_FOR: std::time::Duration = std::time::Duration::from_millis(200);

/// How soon the picture is read again after seats chosen from it were
/// found taken.
const FREE_SEATS_AGAIN: std::time::Duration = std::time::Duration::from_millis(20);

/// How long seats this process chose stay out of its picture, however
/// often it is read again: a transaction taking them has not committed
/// yet, and a picture read meanwhile shows them free.
const CHOSEN_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// How often the fan-out numbers changes at most.
const SEQUENCE_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

/// How often a process's holds of one event tell of lapsed holds first.
const ANNOUNCE_EVERY_MS: u64 = 250;

/// An event with its categories, as a process last read them.
pub(super) type EventCopy = Arc<(Event, Vec<Category>)>;

/// A process's picture of a seated category's free seats.
pub(super) struct FreeSeats {
    /// By place number less one.
    free: Vec<bool>,
    read_at: std::time::Instant,
    /// Seats chosen by this process's buyers lately, by number, and when:
    /// not free to the others for [`CHOSEN_FOR`] or until let go.
    chosen: HashMap<i64, std::time::Instant>,
}

/// A hold as it stands at `now_ms`, with its places, read at once; `lock`
/// locks its row until the end of the transaction (for a change to it).
pub(super) async fn hold_of(
    c: &mut Conn,
    token_hash: &[u8; 32],
    now_ms: u64,
    lock: bool,
) -> Result<Hold> {
    const READ: &str = "SELECT h.event_id, h.expires_at, h.released_at, h.currency, h.total,
                               i.category_id, i.seat_key, i.price
                        FROM holds h LEFT JOIN hold_items i ON i.hold = h.token_hash
                        WHERE h.token_hash = $1 ORDER BY i.category_id, i.n";
    const LOCK: &str = "SELECT h.event_id, h.expires_at, h.released_at, h.currency, h.total,
                               i.category_id, i.seat_key, i.price
                        FROM holds h LEFT JOIN hold_items i ON i.hold = h.token_hash
                        WHERE h.token_hash = $1 ORDER BY i.category_id, i.n FOR UPDATE OF h";
    let rows = c
        .query(if lock { LOCK } else { READ }, &[&&token_hash[..]])
        .await?;
    let Some(row) = rows.first() else {
        return Err(StorageError::NotFound("hold".into()));
    };
    let (event_id, expires_at, released_at): (i64, i64, Option<i64>) =
        (row.get(0), row.get(1), row.get(2));
    let places = rows
        .iter()
        .filter_map(|r| {
            Some(HeldPlace {
                category_id: r.get::<_, Option<i64>>(5)? as u64,
                seat: r.get(6),
                price: r.get::<_, Option<i64>>(7)? as u64,
            })
        })
        .collect();
    let state = holding::hold_state(released_at.is_some(), expires_at, now_ms);
    Ok(Hold {
        event_id: event_id as u64,
        expires_at: expires_at as u64,
        state,
        places,
        total: row.get::<_, i64>(4) as u64,
        currency: row.get(3),
    })
}

/// A hold's places, in order.
pub(super) async fn held_places(c: &mut Conn, token_hash: &[u8; 32]) -> Result<Vec<HeldPlace>> {
    Ok(c.query(
        "SELECT category_id, seat_key, price FROM hold_items WHERE hold = $1
             ORDER BY category_id, n",
        &[&&token_hash[..]],
    )
    .await?
    .iter()
    .map(|r| HeldPlace {
        category_id: r.get::<_, i64>(0) as u64,
        seat: r.get(1),
        price: r.get::<_, i64>(2) as u64,
    })
    .collect())
}

/// The places a statement with `RETURNING category_id, seat_key, n`
/// let go (noted for the process's picture of free seats).
pub(super) async fn moved(
    c: &mut Conn,
    sql: &str,
    args: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Moved> {
    let rows = c.query(sql, args).await?;
    let mut moved = Vec::with_capacity(rows.len());
    for r in &rows {
        let category = r.get::<_, i64>(0) as u64;
        c.freed.push((category, r.get(2)));
        moved.push((category, r.get(1)));
    }
    Ok(moved)
}

/// Unties the unsold places still tied to a hold (released or cancelled).
///
/// A hold's places are found from its items, never by the place's
/// `hold`: the planner, told that no place is held (as when the places
/// were made), would read every place to find them. `IS NOT DISTINCT
/// FROM` compares without telling it so.
pub(super) async fn untie(c: &mut Conn, token_hash: &[u8; 32]) -> Result<Moved> {
    moved(
        c,
        "UPDATE places p SET hold = NULL, held_until = 0
         FROM hold_items i
         WHERE i.hold = $1 AND p.category_id = i.category_id AND p.n = i.n
           AND p.hold IS NOT DISTINCT FROM i.hold AND p.order_id IS NULL
         RETURNING p.category_id, p.seat_key, p.n",
        &[&&token_hash[..]],
    )
    .await
}

/// Lets a hold's places go: one statement, its own transaction, lets an
/// active hold go with its places, tells the feed, and reads the hold
/// back; a hold no longer active is read as it is.
async fn release_in(c: &mut Conn, token_hash: &[u8; 32], now_ms: u64) -> Result<Hold> {
    // Active: not let go, its time not passed (`holding::hold_state`); the
    // update waits for a change to the hold in flight, and looks again.
    // The change is written as `Feed::write` writes it (its columns as
    // `rows::moved_columns` makes them), under the event's shared lock
    // taken before its id is, and held to the commit at the statement's
    // end.
    let rows = c
        .query(
            "WITH r AS (UPDATE holds SET released_at = $2
                        WHERE token_hash = $1 AND released_at IS NULL AND expires_at > $2
                        RETURNING event_id, expires_at, currency, total),
                  p AS (UPDATE places pl SET hold = NULL, held_until = 0
                        FROM hold_items i
                        WHERE i.hold = $1 AND pl.category_id = i.category_id AND pl.n = i.n
                          AND pl.hold IS NOT DISTINCT FROM i.hold AND pl.order_id IS NULL
                          AND EXISTS (SELECT 1 FROM r)
                        RETURNING pl.category_id, pl.n, pl.seat_key),
                  ch AS (INSERT INTO place_changes (event_id, at, kind, seats, places)
                         SELECT r.event_id, $2, 'released',
                                (SELECT coalesce(json_agg(seat_key ORDER BY category_id, n), '[]')
                                 FROM p WHERE seat_key IS NOT NULL)::text,
                                (SELECT json_agg(json_build_array(category_id, k)
                                                 ORDER BY category_id)
                                 FROM (SELECT category_id, count(*) AS k FROM p
                                       GROUP BY category_id) g)::text
                         FROM r, LATERAL (SELECT pg_advisory_xact_lock_shared(
                                              $3, (r.event_id & 2147483647)::int)) l
                         WHERE EXISTS (SELECT 1 FROM p))
             SELECT r.event_id, r.expires_at, r.currency, r.total,
                    i.category_id, i.seat_key, i.price, i.n, p.n IS NOT NULL
             FROM r LEFT JOIN hold_items i ON i.hold = $1
                    LEFT JOIN p ON p.category_id = i.category_id AND p.n = i.n
             ORDER BY i.category_id, i.n",
            &[&&token_hash[..], &key(now_ms), &changes::FEED_LOCK],
        )
        .await?;
    let Some(first) = rows.first() else {
        return hold_of(c, token_hash, now_ms, false).await;
    };
    let mut places = Vec::new();
    for r in &rows {
        let Some(category) = r.get::<_, Option<i64>>(4) else {
            continue;
        };
        if r.get::<_, bool>(8) {
            c.freed.push((category as u64, r.get(7)));
        }
        places.push(HeldPlace {
            category_id: category as u64,
            seat: r.get(5),
            price: r.get::<_, i64>(6) as u64,
        });
    }
    Ok(Hold {
        event_id: first.get::<_, i64>(0) as u64,
        expires_at: first.get::<_, i64>(1) as u64,
        state: HoldState::Released,
        places,
        total: first.get::<_, i64>(3) as u64,
        currency: first.get(2),
    })
}

/// Takes what a statement of [`take`]'s shape chose: `(category, n,
/// seat)` of each place taken.
async fn take(
    c: &mut Conn,
    choose: &str,
    args: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<Taken>> {
    Ok(c.query(choose, args)
        .await?
        .iter()
        .map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, i64>(1), r.get(2)))
        .collect())
}

/// Takes places for hold `$1` until `$2`, of those the inner select
/// chooses: free, and not being taken by anyone else.
///
/// Free is unsold and tied to no hold: the expiry of holds whose time
/// passed is told (and their places untied) first by the same
/// transaction. A place whose hold lapsed but was committed too late to be
/// told of is not taken, so the feed never shows a place held twice.
///
/// The places chosen are then updated by their keys, `$key` among those
/// the choice gives (`$scope` and `$key` of the place's own key, `n` of a
/// category or `seat_key` of an event): however many the plan expects the
/// choice to make, it never looks for them among all the places. (Not by
/// `ctid`: the row locked may be a version newer than the statement can
/// see, and the update would pass it by. By its key alone the update
/// finds the version it sees, whatever it was then, and follows it to the
/// one locked, which is free.)
macro_rules! taking {
    ($scope:literal, $key:literal, $choose:literal) => {
        concat!(
            "UPDATE places SET hold = $1, held_until = $2
             WHERE ",
            $scope,
            " AND ",
            $key,
            " = ANY(ARRAY(
                 SELECT ",
            $key,
            " FROM places
                 WHERE order_id IS NULL AND held_until = 0 AND ",
            $choose,
            " FOR UPDATE SKIP LOCKED))
             RETURNING category_id, n, seat_key"
        )
    };
}

impl PgStorage {
    /// The seat rows of a seated category ([`holding::seat_rows`]), kept
    /// once worked out.
    async fn rows_of(
        &self,
        c: &mut Conn,
        cat: &Category,
        venue_id: u64,
    ) -> Result<Arc<Vec<usize>>> {
        let cached = self
            .rows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&cat.id)
            .cloned();
        if let Some(rows) = cached {
            return Ok(rows);
        }
        let venue = venue_of(c, venue_id)
            .await?
            .ok_or_else(|| StorageError::NotFound("the event's venue".into()))?;
        let rows = Arc::new(holding::seat_rows(cat, &venue));
        self.rows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cat.id, rows.clone());
        Ok(rows)
    }

    /// Makes the hold `request`, in transaction `c`.
    ///
    /// The event and its categories are those of this process's copy if
    /// it has one, read again with the hold's first statement, in the same
    /// round trip: a hold made by a copy that was not the truth any more is
    /// undone and made again.
    async fn hold_in(
        &self,
        c: &mut Conn,
        request: &HoldRequest,
        token_hash: &[u8; 32],
        now_ms: u64,
        until: u64,
        client: Option<&Client>,
    ) -> Result<Hold> {
        let id = request.event_id;
        let copy = self.copy_of(id);
        // Places of holds whose time passed are told free before they are
        // taken again, so the live feed's moves add up.
        // At most once every few moments a process: a lapsed hold's places
        // not yet untied are not free to take (never taken twice), and are
        // untied by the next look. A hold that tells reads the event first.
        let tell = copy.is_some() && self.announce_due(id, now_ms);
        let by_copy = copy.filter(|_| !tell);
        let read = match &by_copy {
            Some(copy) => {
                c.read_ahead(&EVENT_AND_CATEGORIES, vec![Box::new(key(id))]);
                Some((copy.0.clone(), copy.1.clone()))
            }
            None => {
                let read = event_and_categories(c, id).await?;
                self.keep_copy(id, read.as_ref());
                read
            }
        };
        let tell = tell || (by_copy.is_none() && read.is_some() && self.announce_due(id, now_ms));
        let out = self
            .hold_by(c, request, (token_hash, now_ms, until), client, read, tell)
            .await;
        if let Some(copy) = by_copy {
            let rows = c.read_back().await?.unwrap_or_default();
            let read = event_and_categories_from(&rows)?;
            self.keep_copy(id, read.as_ref());
            if read.as_ref() != Some(&*copy) {
                // 40001: the transaction is run again, by what was read.
                return Err(StorageError::Unavailable(
                    "40001: the event changed while places were being held".into(),
                ));
            }
        }
        out
    }

    /// This process's copy of event `id` with its categories, if any.
    fn copy_of(&self, id: u64) -> Option<EventCopy> {
        self.catalogue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// Keeps `read` as this process's copy of event `id`, or forgets it.
    fn keep_copy(&self, id: u64, read: Option<&(Event, Vec<Category>)>) {
        let mut copies = self.catalogue.lock().unwrap_or_else(|p| p.into_inner());
        match read {
            Some(read) => copies.insert(id, Arc::new(read.clone())),
            None => copies.remove(&id),
        };
    }

    /// Makes the hold `request` (its token's hash, the time, until when),
    /// in transaction `c`, of the event `read` with its categories; `tell`:
    /// tells of lapsed holds first.
    async fn hold_by(
        &self,
        c: &mut Conn,
        request: &HoldRequest,
        (token_hash, now_ms, until): (&[u8; 32], u64, u64),
        client: Option<&Client>,
        read: Option<(Event, Vec<Category>)>,
        tell: bool,
    ) -> Result<Hold> {
        let (event, categories) = match read {
            Some((e, categories)) => (Some(e), categories),
            None => (None, Vec::new()),
        };
        let event = holding::check_event(event.as_ref(), request.event_id)?.clone();
        let categories: Categories = categories.into_iter().map(|cat| (cat.id, cat)).collect();
        let mut feed = Feed::default();
        if tell {
            changes::announce(c, Some(event.id), now_ms, &mut feed).await?;
        }
        holding::check_quantities(request, &categories)?;
        let (hash, until_k, now_k) = (&token_hash[..], key(until), key(now_ms));
        let mut taken: Vec<Taken> = Vec::new();
        for item in &request.items {
            match item {
                HoldItem::Seats { seats } => {
                    let got = take(
                        c,
                        taking!(
                            "event_id = $3 AND seat_key IS NOT NULL",
                            "seat_key",
                            "event_id = $3 AND seat_key = ANY($4) AND seat_key IS NOT NULL"
                        ),
                        &[&hash, &until_k, &key(event.id), seats],
                    )
                    .await?;
                    let by_seat: HashMap<&str, &Taken> = got
                        .iter()
                        .filter_map(|t| t.2.as_deref().map(|s| (s, t)))
                        .collect();
                    for seat in seats {
                        match by_seat.get(seat.as_str()) {
                            Some(t) => taken.push((*t).clone()),
                            None => return Err(not_taken(c, event.id, seat).await),
                        }
                    }
                }
                HoldItem::Quantity {
                    category_id,
                    quantity,
                } => {
                    let cat = holding::category(&categories, *category_id)?;
                    // From a place chosen at random on, then from the
                    // first: buyers at once look at different places, and
                    // none walks past every place held before it.
                    let capacity = match &cat.info.places {
                        Places::Quota { places, .. } => i64::from(*places),
                        Places::Seats { .. } => self
                            .rows_of(c, cat, event.info.venue_id)
                            .await?
                            .iter()
                            .sum::<usize>() as i64,
                    };
                    let start = 1 + (rand_core::OsRng.next_u64() % capacity.max(1) as u64) as i64;
                    let mut got = take(
                        c,
                        taking!(
                            "category_id = $3",
                            "n",
                            "category_id = $3 AND n >= $5 ORDER BY n LIMIT $4"
                        ),
                        &[&hash, &until_k, &key(cat.id), &i64::from(*quantity), &start],
                    )
                    .await?;
                    if got.len() < *quantity as usize {
                        let more = take(
                            c,
                            taking!(
                                "category_id = $3",
                                "n",
                                "category_id = $3 AND n < $5 ORDER BY n LIMIT $4"
                            ),
                            &[
                                &hash,
                                &until_k,
                                &key(cat.id),
                                &(i64::from(*quantity) - got.len() as i64),
                                &start,
                            ],
                        )
                        .await?;
                        got.extend(more);
                    }
                    if got.len() < *quantity as usize {
                        return Err(StorageError::Conflict(format!(
                            "{} has {} places left, not {quantity}",
                            cat.info.name,
                            got.len()
                        )));
                    }
                    got.sort_by_key(|t| t.1);
                    taken.extend(got);
                }
                HoldItem::Best {
                    category_id,
                    quantity,
                } => {
                    let cat = holding::category(&categories, *category_id)?;
                    if !matches!(cat.info.places, Places::Seats { .. }) {
                        return Err(StorageError::Invalid(format!(
                            "{} is standing: ask for a quantity, not the best seats",
                            cat.info.name
                        )));
                    }
                    let rows = self.rows_of(c, cat, event.info.venue_id).await?;
                    let got = self
                        .best_in(c, cat, &rows, &taken, *quantity, (hash, until_k))
                        .await?;
                    taken.extend(got);
                }
            }
        }
        // What the client holds of the event already, paid places aside.
        if let Some(Client { address, most }) = client {
            // One hold of an address at a time counts what it holds (else
            // holds at once would each count without the others).
            c.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 0))",
                &[&event.id.to_string(), address],
            )
            .await?;
            let held: i64 = c
                .query_one(
                    "SELECT coalesce(sum((SELECT count(*) FROM hold_items i
                                          WHERE i.hold = h.token_hash)), 0)::bigint
                     FROM holds h
                     WHERE h.event_id = $1 AND h.client = $2 AND h.client IS NOT NULL
                       AND h.released_at IS NULL AND h.expires_at > $3
                       AND (SELECT o.state FROM orders o
                            WHERE o.hold = h.token_hash AND o.state IN ('pending', 'paid'))
                           IS DISTINCT FROM 'paid'",
                    &[&key(event.id), address, &now_k],
                )
                .await?
                .get(0);
            if held as u64 + taken.len() as u64 > u64::from(*most) {
                return Err(StorageError::Conflict(format!(
                    "this address holds {held} places of the event already; at most {most} at once"
                )));
            }
        }
        let mut sold = BTreeMap::new();
        for id in holding::counted(&categories, &taken) {
            let r = c
                .query_one(
                    "SELECT count(*), count(order_id) FROM places WHERE category_id = $1",
                    &[&key(id)],
                )
                .await?;
            sold.insert(id, (r.get::<_, i64>(0) as u64, r.get::<_, i64>(1) as u64));
        }
        let (hold, places) = holding::priced(event.id, &categories, &taken, &sold, now_ms, until)?;
        let categories_taken: Vec<i64> = taken.iter().map(|t| key(t.0)).collect();
        let ns: Vec<i64> = taken.iter().map(|t| t.1).collect();
        let seats: Vec<Option<String>> = taken.iter().map(|t| t.2.clone()).collect();
        let prices: Vec<i64> = places.iter().map(|p| key(p.price)).collect();
        // Nothing is read back: sent with the COMMIT.
        c.defer(
            "WITH h AS (
                 INSERT INTO holds (token_hash, event_id, created_at, expires_at, currency,
                                    total, client)
                 VALUES ($1, $6, $7, $8, $9, $10, $11) RETURNING token_hash)
             INSERT INTO hold_items (hold, category_id, n, seat_key, price)
             SELECT h.token_hash, u.c, u.n, u.s, u.p
             FROM h, unnest($2::bigint[], $3::bigint[], $4::text[], $5::bigint[]) AS u(c, n, s, p)",
            vec![
                Box::new(hash.to_vec()),
                Box::new(categories_taken),
                Box::new(ns),
                Box::new(seats),
                Box::new(prices),
                Box::new(key(event.id)),
                Box::new(now_k),
                Box::new(until_k),
                Box::new(hold.currency.clone()),
                Box::new(key(hold.total)),
                Box::new(client.map(|c| c.address.clone())),
            ],
        );
        feed.push(
            event.id,
            ChangeKind::Held,
            taken.into_iter().map(|(c, _, seat)| (c, seat)).collect(),
        );
        feed.write(c, now_ms)?;
        Ok(hold)
    }

    /// Takes the best `quantity` seats side by side of `cat` for the hold
    /// (`hash`, until, now), beside those it `taken` already. Seats chosen
    /// that another buyer is taking at that moment are passed over, and the
    /// choice made again.
    async fn best_in(
        &self,
        c: &mut Conn,
        cat: &Category,
        rows: &[usize],
        taken: &[Taken],
        quantity: u32,
        (hash, until_k): (&[u8], i64),
    ) -> Result<Vec<Taken>> {
        let capacity: usize = rows.iter().sum();
        for tries in 0..BEST_TRIES {
            // Chosen from this process's picture of the free seats, and
            // marked taken in it at once, so that buyers here at the same
            // moment choose apart; taken by a conditional update all the
            // same, so a stale picture costs a try, never a seat.
            let (free, kept) = self
                .free_seats(c, cat.id, capacity, tries > 0, false)
                .await?;
            let first = match holding::best_seats(cat, rows, free, taken, quantity) {
                Ok(i) => i,
                // None to be had in a picture kept a while: the database
                // has the last word (a picture just read stands: a
                // stampede on a sold-out category is not a read each).
                Err(_) if kept => {
                    let (free, _) = self.free_seats(c, cat.id, capacity, true, true).await?;
                    holding::best_seats(cat, rows, free, taken, quantity)?
                }
                Err(e) => return Err(e),
            } as i64
                + 1;
            let last = first + i64::from(quantity) - 1;
            self.mark_taken(c, cat.id, first..=last);
            let mut got = take(
                c,
                taking!(
                    "category_id = $3",
                    "n",
                    "category_id = $3 AND n BETWEEN $4 AND $5"
                ),
                &[&hash, &until_k, &key(cat.id), &first, &last],
            )
            .await?;
            if got.len() == quantity as usize {
                got.sort_by_key(|t| t.1);
                return Ok(got);
            }
            // Some were being taken by another: those got are put back
            // (their rows stay locked to this transaction, a moment).
            if !got.is_empty() {
                let ns: Vec<i64> = got.iter().map(|t| t.1).collect();
                c.execute(
                    "UPDATE places SET hold = NULL, held_until = 0
                     WHERE category_id = $1 AND n = ANY($2) AND hold = $3",
                    &[&key(cat.id), &ns, &hash],
                )
                .await?;
            }
        }
        Err(StorageError::Conflict("a seat was taken meanwhile".into()))
    }

    /// The free seats of category `id` (of `capacity`) as this process
    /// last read them, read again if older than [`FREE_SEATS_FOR`], if
    /// `again` and not read since [`FREE_SEATS_AGAIN`], or if `anew`; and
    /// whether the picture was one kept a while (read before the last
    /// [`FREE_SEATS_AGAIN`]).
    async fn free_seats(
        &self,
        c: &mut Conn,
        id: u64,
        capacity: usize,
        again: bool,
        anew: bool,
    ) -> Result<(Vec<bool>, bool)> {
        let fresh = |f: &FreeSeats| {
            let age = f.read_at.elapsed();
            age < FREE_SEATS_FOR && !(again && age >= FREE_SEATS_AGAIN)
        };
        let kept = self
            .free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .filter(|f| !anew && fresh(f))
            .map(|f| (f.free.clone(), f.read_at.elapsed() >= FREE_SEATS_AGAIN));
        if let Some((mut free, a_while)) = kept {
            // What this transaction let go (lapsed holds) is free to it.
            for (_, n) in c.freed.iter().filter(|(cat, _)| *cat == id) {
                if let Some(f) = usize::try_from(n - 1).ok().and_then(|i| free.get_mut(i)) {
                    *f = true;
                }
            }
            return Ok((free, a_while));
        }
        // One array: thousands of rows would cost more to send and read.
        let read_at = std::time::Instant::now();
        let numbers: Vec<i64> = c
            .query_one(
                "SELECT coalesce(array_agg(n), '{}') FROM places
                 WHERE category_id = $1 AND order_id IS NULL AND held_until = 0",
                &[&key(id)],
            )
            .await?
            .get(0);
        let mut free = vec![false; capacity];
        for n in numbers {
            if let Some(f) = usize::try_from(n - 1).ok().and_then(|i| free.get_mut(i)) {
                *f = true;
            }
        }
        // Seats chosen here and being taken are shown free by the read,
        // their transactions not yet committed: without them, buyers here
        // would choose them again and collide (unless the database is to
        // have the last word).
        let mut pictures = self.free.lock().unwrap_or_else(|p| p.into_inner());
        let mut chosen = pictures.remove(&id).map(|f| f.chosen).unwrap_or_default();
        chosen.retain(|_, at| at.elapsed() < CHOSEN_FOR);
        let mut shown = free.clone();
        for n in chosen.keys() {
            if let Some(f) = usize::try_from(n - 1).ok().and_then(|i| shown.get_mut(i)) {
                *f = false;
            }
        }
        pictures.insert(
            id,
            FreeSeats {
                free: shown.clone(),
                read_at,
                chosen,
            },
        );
        Ok((if anew { free } else { shown }, false))
    }

    /// Whether a hold on `event_id` at `now_ms` should tell of lapsed
    /// holds first: not if one of this process did in the last
    /// [`ANNOUNCE_EVERY_MS`].
    fn announce_due(&self, event_id: u64, now_ms: u64) -> bool {
        let mut last = self.announced.lock().unwrap_or_else(|p| p.into_inner());
        match last.get(&event_id) {
            // Requests a while in flight carry times a little before the
            // last telling: told recently all the same.
            Some(at) if now_ms.abs_diff(*at) < ANNOUNCE_EVERY_MS => false,
            _ => {
                last.insert(event_id, now_ms);
                true
            }
        }
    }

    /// Marks places let go by a commit free in this process's picture.
    pub(super) fn mark_free(&self, places: &[(u64, i64)]) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        for (id, n) in places {
            if let Some(seat) = free
                .get_mut(id)
                .and_then(|f| usize::try_from(n - 1).ok().and_then(|i| f.free.get_mut(i)))
            {
                *seat = true;
            }
            if let Some(f) = free.get_mut(id) {
                f.chosen.remove(n);
            }
        }
    }

    /// Marks seats `ns` of category `id` taken in this process's picture,
    /// chosen by transaction `c`.
    fn mark_taken(&self, c: &mut Conn, id: u64, ns: std::ops::RangeInclusive<i64>) {
        c.chosen.extend(ns.clone().map(|n| (id, n)));
        if let Some(f) = self
            .free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&id)
        {
            let now = std::time::Instant::now();
            for n in ns {
                if let Some(seat) = usize::try_from(n - 1).ok().and_then(|i| f.free.get_mut(i)) {
                    *seat = false;
                }
                f.chosen.insert(n, now);
            }
        }
    }

    async fn availability_(&self, event_id: u64, now_ms: u64) -> Result<Availability> {
        // What is shown is what the feed has told: holds past their time
        // are told expired first.
        let due = {
            let mut c = self.conn().await?;
            changes::expiry_due(&mut c, Some(event_id), now_ms).await?
        };
        if due {
            self.transaction(async |c| {
                let mut feed = Feed::default();
                changes::announce(c, Some(event_id), now_ms, &mut feed).await?;
                feed.write(c, now_ms)
            })
            .await?;
        }
        // The counts, the seats and the number of the last change all of
        // one moment: with the event's feed lock held, no change to its
        // places commits meanwhile (see `changes`).
        let mut c = self.conn().await?;
        c.begin().await?;
        // Counted as the event's size calls for: a small event's places
        // by their index, a big one's from end to end.
        c.plan_each_run();
        let read = async {
            let all = match event_and_categories(&mut c, event_id).await? {
                Some((e, all)) if e.status != EventStatus::Draft => all,
                _ => return Err(StorageError::NotFound(format!("event {event_id}"))),
            };
            let ids: Vec<i64> = all.iter().map(|cat| key(cat.id)).collect();
            let seated: Vec<i64> = all
                .iter()
                .filter(|cat| matches!(cat.info.places, Places::Seats { .. }))
                .map(|cat| key(cat.id))
                .collect();
            changes::lock_event(&mut c, event_id).await?;
            let seq = changes::last_seq(&mut c, event_id).await?;
            // By category, along each one's key.
            let counts: HashMap<i64, (i64, i64, i64)> = c
                .query(
                    "SELECT category_id, count(*), count(order_id),
                            count(*) FILTER (WHERE order_id IS NULL AND held_until > $2)
                     FROM places WHERE category_id = ANY($1) GROUP BY category_id",
                    &[&ids, &key(now_ms)],
                )
                .await?
                .iter()
                .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
                .collect();
            let now_s = now_ms / 1000;
            let categories = all
                .into_iter()
                .map(|cat| {
                    let (capacity, sold, held) =
                        counts.get(&key(cat.id)).copied().unwrap_or_default();
                    CategoryAvailability::of(cat, capacity as u64, sold as u64, held as u64, now_s)
                })
                .collect();
            let seats = c
                .query(
                    "SELECT seat_key, category_id,
                            CASE WHEN order_id IS NOT NULL THEN 2
                                 WHEN held_until > $2 THEN 1 ELSE 0 END
                     FROM places WHERE category_id = ANY($1) AND seat_key IS NOT NULL
                     ORDER BY category_id, n",
                    &[&seated, &key(now_ms)],
                )
                .await?
                .iter()
                .map(|r| {
                    let state = match r.get::<_, i32>(2) {
                        2 => PlaceState::Sold,
                        1 => PlaceState::Held,
                        _ => PlaceState::Available,
                    };
                    (r.get(0), r.get::<_, i64>(1) as u64, state)
                })
                .collect();
            Ok(Availability {
                event_id,
                seq,
                categories,
                seats,
            })
        }
        .await;
        c.end(read).await
    }

    /// Numbers the changes written unnumbered ([`changes::sequence`]).
    async fn sequence(&self) -> Result<()> {
        loop {
            let n = self
                .transaction(async |c| changes::sequence(c).await)
                .await?;
            if (n as i64) < changes::SEQUENCE_BATCH {
                return Ok(());
            }
        }
    }

    async fn announce_all(&self, now_ms: u64) -> Result<usize> {
        use std::sync::atomic::Ordering::Relaxed;
        let due = {
            let mut c = self.conn().await?;
            changes::expiry_due(&mut c, None, now_ms).await?
        };
        // Old changes are cleared once a minute.
        let last = self.pruned_at.load(Relaxed);
        if now_ms.saturating_sub(last) >= changes::PRUNE_EVERY_MS
            && self
                .pruned_at
                .compare_exchange(last, now_ms, Relaxed, Relaxed)
                .is_ok()
        {
            self.transaction(async |c| changes::prune(c, now_ms).await)
                .await?;
        }
        if !due {
            return Ok(0);
        }
        self.transaction(async |c| {
            let mut feed = Feed::default();
            let n = changes::announce(c, None, now_ms, &mut feed).await?;
            feed.write(c, now_ms)?;
            Ok(n)
        })
        .await
    }
}

/// Why `seat` of `event_id` was not taken: no such seat, or taken.
async fn not_taken(c: &mut Conn, event_id: u64, seat: &str) -> StorageError {
    let exists = c
        .query_opt(
            "SELECT 1 FROM places WHERE event_id = $1 AND seat_key = $2 AND seat_key IS NOT NULL",
            &[&key(event_id), &seat],
        )
        .await;
    match exists {
        Ok(Some(_)) => StorageError::Conflict(format!("seat {seat} is taken")),
        Ok(None) => StorageError::Invalid(format!("the event sells no seat {seat:?}")),
        Err(e) => e,
    }
}

impl Inventory for PgStorage {
    fn hold_pending(
        &self,
        request: HoldRequest,
        token_hash: [u8; 32],
        now_ms: u64,
        ttl_ms: u64,
        client: Option<Client>,
    ) -> Pending<Hold> {
        let me = self.clone();
        Box::pin(async move {
            request.check()?;
            let until = now_ms.saturating_add(ttl_ms);
            me.transaction(async |c| {
                me.hold_in(c, &request, &token_hash, now_ms, until, client.as_ref())
                    .await
            })
            .await
        })
    }

    fn hold_of(&self, token_hash: &[u8; 32], now_ms: u64) -> Result<Hold> {
        wait(async {
            let mut c = self.conn().await?;
            hold_of(&mut c, token_hash, now_ms, false).await
        })
    }

    fn release_pending(&self, token_hash: [u8; 32], now_ms: u64) -> Pending<Hold> {
        // Made to its end even if its caller goes: a task of its own.
        let me = self.clone();
        let runtime = self.runtime.clone();
        let release = runtime.spawn(async move {
            me.alone(async |c| release_in(c, &token_hash, now_ms).await)
                .await
        });
        Box::pin(async move {
            release
                .await
                .map_err(|e| StorageError::Backend(e.to_string()))?
        })
    }

    fn availability(&self, event_id: u64, now_ms: u64) -> Result<Availability> {
        wait(self.availability_(event_id, now_ms))
    }

    fn changes(&self, event_id: u64, after: u64, limit: usize) -> Result<Vec<PlaceChange>> {
        wait(async {
            self.sequence().await?;
            let mut c = self.conn().await?;
            changes::changes_of(&mut c, event_id, after, limit).await
        })
    }

    fn changes_after(&self, cursor: u64, limit: usize) -> Result<(u64, Vec<PlaceChange>)> {
        wait(async {
            // Numbering waits for the commits in flight and holds the next
            // back a moment: not more often than every few milliseconds.
            let due = {
                let mut at = self.sequenced_at.lock().unwrap_or_else(|p| p.into_inner());
                let due = at.is_none_or(|t| t.elapsed() >= SEQUENCE_EVERY);
                if due {
                    *at = Some(std::time::Instant::now());
                }
                due
            };
            if due {
                self.sequence().await?;
            }
            let mut c = self.conn().await?;
            changes::changes_after(&mut c, cursor, limit).await
        })
    }

    fn change_cursor(&self) -> Result<u64> {
        wait(async {
            self.sequence().await?;
            let mut c = self.conn().await?;
            changes::newest(&mut c).await
        })
    }

    fn announce_expired(&self, now_ms: u64) -> Result<usize> {
        wait(self.announce_all(now_ms))
    }

    fn tell_others(&self) {
        self.tell();
    }

    fn wake_on_others(&self, wake: Arc<tokio::sync::Notify>) {
        self.listen(wake);
    }
}
