//! What is left, and places let go, on PostgreSQL (holds are made in
//! `holds`): a process's picture of free seats, releases made in batches
//! ([`gather`]), an event's seat states, the live feed's numbering.
//!
//! [`gather`]: super::gather

use std::collections::HashMap;
use std::sync::Arc;

use super::catalogue::{event_and_categories, venue_of};
use super::changes::{self, Feed};
use super::gather::{self, Gather, Waiting};
use super::holds::Asked;
use super::{Conn, PgStorage, key};
use crate::domain::catalogue::{Category, Event, EventStatus, Places};
use crate::domain::hold::{HeldPlace, Hold, HoldRequest, HoldState};
use crate::storage::holding;
use crate::storage::rows::Moved;
use crate::storage::{
    Availability, CategoryAvailability, Client, Inventory, Pending, PlaceChange, PlaceState,
    Result, StorageError, wait,
};

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

/// Place `n` (from 1) in a picture of a category's seats, if there.
pub(super) fn seat(picture: &mut [bool], n: i64) -> Option<&mut bool> {
    usize::try_from(n - 1).ok().and_then(|i| picture.get_mut(i))
}

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

/// Releases asked for at once, made together (one queue for every event).
pub(super) type Releases = Gather<(), ([u8; 32], u64), Hold>;

/// Batches of releases a process makes at once, and releases in one.
const RELEASES_AT_ONCE: usize = 2;
const RELEASES_MOST: usize = 128;

/// Releases a process makes alone at once, waiting for a hold another
/// transaction has locked (each with a connection).
pub(super) const WAITING_RELEASES: usize = 2;

pub(super) fn releases() -> Releases {
    Gather::new(RELEASES_AT_ONCE, RELEASES_MOST)
}

/// Lets holds' places go: one statement, its own transaction, lets the
/// holds of `$1` active at `$2` go (at that time), with their places,
/// tells the feed (one change an event), and reads those holds back with
/// their places, then the places untied (rows with no hold).
///
/// Active: not let go, its time not passed (`holding::hold_state`; a hold
/// asked for a moment before the batch's time, whose time passed
/// meanwhile, is looked at again alone). The holds are locked in order,
/// then the places tied to them in order, as a payment does. In a batch, a
/// hold another transaction has locked, or one of whose tied places it has
/// (a payment of it being settled), is passed over (`SKIP LOCKED`: no other
/// release of the batch waits with it), and let go alone, waiting. Each
/// change is written as `Feed::write` writes it (its columns as
/// `rows::moved_columns` makes them), under its event's shared lock (in
/// the order of the events' ids), held to the commit at the statement's
/// end. Every part is joined by keys or by one grouping, so that a batch
/// costs in proportion to its holds.
macro_rules! release {
    ($wait:literal, $whole:literal) => {
        concat!(
            "WITH l AS MATERIALIZED (
            SELECT token_hash FROM holds
            WHERE token_hash = ANY($1) AND released_at IS NULL AND expires_at > $2
            ORDER BY token_hash FOR UPDATE ",
            $wait,
            "),
      tied AS MATERIALIZED (
            SELECT p.category_id, p.n, i.hold
            FROM l JOIN hold_items i ON i.hold = l.token_hash
                   JOIN places p ON p.category_id = i.category_id AND p.n = i.n
            WHERE p.hold IS NOT DISTINCT FROM i.hold AND p.order_id IS NULL
            ORDER BY p.category_id, p.n FOR UPDATE OF p ",
            $wait,
            "),
      whole AS MATERIALIZED (",
            $whole,
            "),
      r AS (UPDATE holds h SET released_at = $2 FROM whole
            WHERE h.token_hash = ANY($1) AND h.token_hash = whole.hold
            RETURNING h.token_hash, h.event_id, h.expires_at, h.currency, h.total),
      p AS (UPDATE places pl SET hold = NULL, held_until = 0 FROM tied
            WHERE pl.category_id = tied.category_id AND pl.n = tied.n
              AND tied.hold = ANY(ARRAY(SELECT token_hash FROM r))
            RETURNING pl.event_id, pl.category_id, pl.n, pl.seat_key),
      ch AS (INSERT INTO place_changes (event_id, at, kind, seats, places)
             SELECT e.event_id, $2, 'released',
                    (SELECT coalesce(json_agg(seat_key ORDER BY category_id, n), '[]')
                     FROM p WHERE p.event_id = e.event_id AND seat_key IS NOT NULL)::text,
                    (SELECT json_agg(json_build_array(category_id, k) ORDER BY category_id)
                     FROM (SELECT category_id, count(*) AS k FROM p
                           WHERE p.event_id = e.event_id GROUP BY category_id) g)::text
             FROM (SELECT DISTINCT event_id FROM p ORDER BY event_id) e,
                  LATERAL (SELECT pg_advisory_xact_lock_shared(
                               $3, (e.event_id & 2147483647)::int)) l)
 (SELECT r.token_hash, r.event_id, r.expires_at, r.currency, r.total,
         i.category_id, i.seat_key, i.price, NULL::bigint
  FROM r LEFT JOIN hold_items i ON i.hold = r.token_hash
  ORDER BY r.token_hash, i.category_id, i.n)
 UNION ALL
 SELECT NULL, NULL, NULL, NULL, NULL, p.category_id, NULL, NULL, p.n FROM p"
        )
    };
}

/// Holds `$1` as they are, with their places.
const HOLDS_AS_THEY_ARE: &str = "SELECT h.token_hash, h.event_id, h.expires_at, h.currency,
            h.total, i.category_id, i.seat_key, i.price, h.released_at
     FROM holds h LEFT JOIN hold_items i ON i.hold = h.token_hash AND i.hold = ANY($1)
     WHERE h.token_hash = ANY($1) ORDER BY h.token_hash, i.category_id, i.n";

/// Holds read by [`release!`] or [`HOLDS_AS_THEY_ARE`], by token hash:
/// each with its state (released, by [`release!`]), and its `released_at`
/// (as read).
fn holds_from(
    c: &mut Conn,
    rows: &[tokio_postgres::Row],
    released: bool,
) -> HashMap<Vec<u8>, (Hold, Option<i64>)> {
    let mut holds: HashMap<Vec<u8>, (Hold, Option<i64>)> = HashMap::new();
    for r in rows {
        let Some(hash) = r.get::<_, Option<Vec<u8>>>(0) else {
            // A place untied ([`release!`]'s last rows).
            if let (Some(category), Some(n)) =
                (r.get::<_, Option<i64>>(5), r.get::<_, Option<i64>>(8))
            {
                c.freed.push((category as u64, n));
            }
            continue;
        };
        let (hold, _) = holds.entry(hash).or_insert_with(|| {
            (
                Hold {
                    event_id: r.get::<_, i64>(1) as u64,
                    expires_at: r.get::<_, i64>(2) as u64,
                    state: HoldState::Released,
                    places: Vec::new(),
                    total: r.get::<_, i64>(4) as u64,
                    currency: r.get(3),
                },
                if released { None } else { r.get(8) },
            )
        });
        let Some(category) = r.get::<_, Option<i64>>(5) else {
            continue;
        };
        hold.places.push(HeldPlace {
            category_id: category as u64,
            seat: r.get(6),
            price: r.get::<_, i64>(7) as u64,
        });
    }
    holds
}

/// A release of a batch: made, refused, or to be made alone (its hold
/// was locked by another transaction, and is waited for).
enum Release {
    Done(Result<Hold>),
    Alone,
}

/// Lets the holds of `batch` (token hash, time) go, by one statement: each
/// hold as it is then (one no longer active is read as it is, all of them
/// by one statement). `wait`: for holds locked by another transaction,
/// else passed over (to be made alone).
async fn releases_in(c: &mut Conn, batch: &[([u8; 32], u64)], wait: bool) -> Result<Vec<Release>> {
    let mut out: Vec<Option<Release>> = batch.iter().map(|_| None).collect();
    let mut left: Vec<usize> = (0..batch.len()).collect();
    // Holds active at their own time but not at the batch's (the latest)
    // are let go at once by a batch of their own, whose time is earlier.
    while !left.is_empty() {
        let part: Vec<([u8; 32], u64)> = left.iter().map(|&i| batch[i]).collect();
        let mut later = Vec::new();
        for (i, got) in left.into_iter().zip(release_once(c, &part, wait).await?) {
            match got {
                Once::Later => later.push(i),
                Once::Done(done) => out[i] = Some(done),
            }
        }
        left = later;
    }
    Ok(out
        .into_iter()
        .map(|r| r.unwrap_or(Release::Alone))
        .collect())
}

/// What one statement of [`releases_in`] came to for a release.
enum Once {
    Done(Release),
    /// Its hold was active at its time, not at the batch's.
    Later,
}

/// [`releases_in`], by one statement at the latest time of `batch`.
async fn release_once(c: &mut Conn, batch: &[([u8; 32], u64)], wait: bool) -> Result<Vec<Once>> {
    let mut hashes: Vec<&[u8]> = batch.iter().map(|(h, _)| &h[..]).collect();
    hashes.sort();
    hashes.dedup();
    let at = batch.iter().map(|(_, at)| *at).max().unwrap_or(0);
    // Passing over what is locked, a hold is let go only if every place
    // tied to it (as this statement first saw them) was locked by it.
    let sql = match wait {
        true => release!("", "SELECT token_hash AS hold FROM l"),
        false => release!(
            "SKIP LOCKED",
            "SELECT x.hold FROM (
                 SELECT token_hash AS hold, 0 AS wanted, 0 AS got FROM l
                 UNION ALL
                 SELECT i.hold, 1, 0
                 FROM l JOIN hold_items i ON i.hold = l.token_hash
                        JOIN places p ON p.category_id = i.category_id AND p.n = i.n
                 WHERE p.hold IS NOT DISTINCT FROM i.hold AND p.order_id IS NULL
                 UNION ALL
                 SELECT hold, 0, 1 FROM tied) x
             GROUP BY x.hold HAVING sum(x.wanted) = sum(x.got)"
        ),
    };
    let rows = c
        .query(sql, &[&hashes, &key(at), &changes::FEED_LOCK])
        .await?;
    let released = holds_from(c, &rows, true);
    let others: Vec<&[u8]> = hashes
        .iter()
        .filter(|h| !released.contains_key(**h))
        .copied()
        .collect();
    let as_they_are = match others.is_empty() {
        true => HashMap::new(),
        false => {
            let rows = c.query(HOLDS_AS_THEY_ARE, &[&others]).await?;
            holds_from(c, &rows, false)
        }
    };
    Ok(batch
        .iter()
        .map(|(hash, own)| match released.get(&hash[..]) {
            Some((hold, _)) => Once::Done(Release::Done(Ok(hold.clone()))),
            None => match as_they_are.get(&hash[..]) {
                None => Once::Done(Release::Done(Err(StorageError::NotFound("hold".into())))),
                Some((hold, released_at)) => {
                    let state =
                        holding::hold_state(released_at.is_some(), key(hold.expires_at), *own);
                    match state {
                        // Passed over for the batch's time, not its own.
                        HoldState::Active if !wait && hold.expires_at <= at => Once::Later,
                        // Locked by another when passed over.
                        HoldState::Active if !wait => Once::Done(Release::Alone),
                        state => Once::Done(Release::Done(Ok(Hold {
                            state,
                            ..hold.clone()
                        }))),
                    }
                }
            },
        })
        .collect())
}

impl PgStorage {
    /// Lets `batch`'s holds go and answers each, until no release is left
    /// waiting; a hold locked by another transaction is waited for by a
    /// task of its own.
    async fn run_releases(&self, mut batch: Vec<Waiting<([u8; 32], u64), Hold>>) {
        let guard = gather::Running::new(&self.releases, ());
        loop {
            let asked: Vec<([u8; 32], u64)> = batch.iter().map(|w| w.asked).collect();
            let out: Vec<Release> = match self
                .alone(async |c| releases_in(c, &asked, false).await)
                .await
            {
                Ok(out) => out,
                // One release's fault must not be the others': each alone.
                Err(e) if asked.len() > 1 && gather::not_of_all(&e) => {
                    tracing::warn!(error = %e, releases = asked.len(), "a batch of releases failed; made one by one");
                    asked.iter().map(|_| Release::Alone).collect()
                }
                Err(e) => asked
                    .iter()
                    .map(|_| Release::Done(Err(e.clone())))
                    .collect(),
            };
            for (w, out) in batch.into_iter().zip(out) {
                match out {
                    Release::Done(out) => w.answer(out),
                    Release::Alone => {
                        let me = self.clone();
                        self.runtime.spawn(async move {
                            // A few at a time: each may wait for a lock
                            // with a connection of the pool.
                            let _turn = me.waiting_releases.acquire().await;
                            let one = [w.asked];
                            let out = me
                                .alone(async |c| releases_in(c, &one, true).await)
                                .await
                                .and_then(|mut o| match o.pop() {
                                    Some(Release::Done(out)) => out,
                                    _ => Err(StorageError::Backend(
                                        "a release made alone was passed over".into(),
                                    )),
                                });
                            w.answer(out);
                        });
                    }
                }
            }
            match self.releases.next(&(), Vec::new()) {
                Some(next) => batch = next,
                None => return guard.done(),
            }
        }
    }
}

impl PgStorage {
    /// The seat rows of a seated category ([`holding::seat_rows`]), kept
    /// once worked out.
    pub(super) async fn rows_of(
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

    /// This process's copy of event `id` with its categories, if any.
    pub(super) fn copy_of(&self, id: u64) -> Option<EventCopy> {
        self.catalogue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// Keeps `read` as this process's copy of event `id`, or forgets it.
    pub(super) fn keep_copy(&self, id: u64, read: Option<&(Event, Vec<Category>)>) {
        let mut copies = self.catalogue.lock().unwrap_or_else(|p| p.into_inner());
        match read {
            Some(read) => copies.insert(id, Arc::new(read.clone())),
            None => copies.remove(&id),
        };
    }

    /// The free seats of category `id` (of `capacity`) as this process
    /// last read them, read again if older than [`FREE_SEATS_FOR`], if
    /// `again` and not read since [`FREE_SEATS_AGAIN`], or if `anew`; and
    /// whether the picture was one kept a while (read before the last
    /// [`FREE_SEATS_AGAIN`]).
    pub(super) async fn free_seats(
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
                if let Some(f) = seat(&mut free, *n) {
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
            if let Some(f) = seat(&mut free, n) {
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
            if let Some(f) = seat(&mut shown, *n) {
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
    pub(super) fn announce_due(&self, event_id: u64, now_ms: u64) -> bool {
        let mut last = self.announced.lock().unwrap_or_else(|p| p.into_inner());
        match last.get(&event_id) {
            // Requests a while in flight carry times before the last
            // telling: told recently all the same (the time kept only moves
            // on).
            Some(at) if now_ms < at.saturating_add(ANNOUNCE_EVERY_MS) => false,
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
            if let Some(seat) = free.get_mut(id).and_then(|f| seat(&mut f.free, *n)) {
                *seat = true;
            }
            if let Some(f) = free.get_mut(id) {
                f.chosen.remove(n);
            }
        }
    }

    /// Marks seats `ns` of category `id` taken in this process's picture,
    /// chosen by transaction `c`.
    pub(super) fn mark_taken(&self, c: &mut Conn, id: u64, ns: std::ops::RangeInclusive<i64>) {
        c.chosen.extend(ns.clone().map(|n| (id, n)));
        if let Some(f) = self
            .free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&id)
        {
            let now = std::time::Instant::now();
            for n in ns {
                if let Some(seat) = seat(&mut f.free, n) {
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
            // By category, along each one's key. Held: tied to a hold, as
            // the feed tells (a hold whose time passed is held until its
            // expiry is told, if another transaction kept it from being
            // told above, or it lapsed since).
            let counts: HashMap<i64, (i64, i64, i64)> = c
                .query(
                    "SELECT category_id, count(*), count(order_id),
                            count(*) FILTER (WHERE order_id IS NULL AND held_until > 0)
                     FROM places WHERE category_id = ANY($1) GROUP BY category_id",
                    &[&ids],
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
                                 WHEN held_until > 0 THEN 1 ELSE 0 END
                     FROM places WHERE category_id = ANY($1) AND seat_key IS NOT NULL
                     ORDER BY category_id, n",
                    &[&seated],
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

impl Inventory for PgStorage {
    fn hold_pending(
        &self,
        request: HoldRequest,
        token_hash: [u8; 32],
        now_ms: u64,
        ttl_ms: u64,
        client: Option<Client>,
    ) -> Pending<Hold> {
        self.hold_gathered(Asked {
            request,
            token_hash,
            now_ms,
            until: now_ms.saturating_add(ttl_ms),
            client,
            tries: 0,
        })
    }

    fn hold_of(&self, token_hash: &[u8; 32], now_ms: u64) -> Result<Hold> {
        wait(async {
            let mut c = self.conn().await?;
            hold_of(&mut c, token_hash, now_ms, false).await
        })
    }

    fn release_pending(&self, token_hash: [u8; 32], now_ms: u64) -> Pending<Hold> {
        // Made to its end even if its caller goes: asked for now, by a
        // task of its own.
        let (answered, batch) = self.releases.push(&(), (token_hash, now_ms));
        if let Some(batch) = batch {
            let me = self.clone();
            self.runtime
                .spawn(async move { me.run_releases(batch).await });
        }
        Box::pin(async move { gather::lost(answered.await) })
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
