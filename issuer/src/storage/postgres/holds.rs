//! Holds on PostgreSQL, made in batches ([`gather`]): the holds of one
//! event asked for while others are being made go together, in one
//! transaction.
//!
//! Places are taken by conditional updates of rows locked `SKIP LOCKED`: a
//! buyer never waits for another's places, so a hot quota is no queue, and
//! a place being taken by one transaction is simply not free to the
//! others. What the database decides stands whatever process asked.
//!
//! A batch takes, item by item (the first item of every hold, then the
//! second...), with one statement for the seats asked by key, one for
//! each seated category's best seats (chosen in this process's picture of
//! free seats) and one for each quota (so many places from a random place
//! on, given out to the holds in turn), all sent at once. Every hold is
//! then checked and priced on its own: a hold refused puts its places back
//! in the same transaction, so no one else ever sees them taken, and the
//! others are made. The holds made are written by one statement, with one
//! change of the live feed, and committed together.
//!
//! [`gather`]: super::gather

use std::collections::{BTreeMap, HashMap};

use rand_core::RngCore;

use super::catalogue::{EVENT_AND_CATEGORIES, event_and_categories, event_and_categories_from};
use super::changes::{self, Feed};
use super::gather::{self, Gather, Waiting};
use super::inventory::seat;
use super::pool::Arg;
use super::{Conn, PgStorage, key};
use crate::domain::catalogue::{Category, Event, Places};
use crate::domain::hold::{Hold, HoldItem, HoldRequest};
use crate::storage::holding::{self, Categories, Taken};
use crate::storage::{ChangeKind, Client, Pending, Result, StorageError};

/// Batches of one event's holds a process makes at once.
const AT_ONCE: usize = 2;

/// Holds in one batch, at most.
const MOST: usize = 64;

/// How often a hold is made again whose seats were being taken by another
/// buyer at that moment (or asked for by another hold of its batch).
const TRIES: u32 = 8;

/// A hold asked for.
pub(super) struct Asked {
    pub request: HoldRequest,
    pub token_hash: [u8; 32],
    pub now_ms: u64,
    pub until: u64,
    pub client: Option<Client>,
    /// How often it was given back to be made again.
    pub tries: u32,
}

/// The holds asked for, by event.
pub(super) type Holds = Gather<u64, Asked, Hold>;

pub(super) fn gathered() -> Holds {
    Gather::new(AT_ONCE, MOST)
}

/// What became of a hold of a batch.
enum Outcome {
    Made(Hold),
    Refused(StorageError),
    /// To be made again, by a later batch.
    Again,
}

/// `Again`, or `refused` once the hold was made again often enough.
fn again_or(asked: &Asked, refused: StorageError) -> Outcome {
    if asked.tries + 1 < TRIES {
        Outcome::Again
    } else {
        Outcome::Refused(refused)
    }
}

/// A hold being made in a batch: the places it took so far, and its
/// outcome once known (refused or made again: nothing more is taken).
#[derive(Default)]
struct Work {
    taken: Vec<Taken>,
    done: Option<Outcome>,
    /// The best seats chosen for it this round, by category.
    choosing: Vec<(u64, Vec<i64>)>,
    /// Refused for want of places: of a category, or a seat.
    scarce: Option<Scarce>,
}

/// What a hold refused for want of places lacked: should another hold of
/// its batch put such places back, it is made again, by a later batch.
enum Scarce {
    Category(u64),
    Seat(String),
}

impl Work {
    /// The best seats of category `id` chosen for it this round.
    fn chosen_best(&mut self, id: u64) -> Option<Vec<i64>> {
        let at = self.choosing.iter().position(|(cat, _)| *cat == id)?;
        Some(self.choosing.swap_remove(at).1)
    }
}

/// A hold made, as it is written.
struct Made<'a> {
    asked: &'a Asked,
    taken: Vec<Taken>,
    prices: Vec<i64>,
    currency: String,
    total: u64,
}

/// The arguments of [`WRITE_HOLDS`] writing `made`, of event `event`.
fn written(event: u64, made: &[Made]) -> Vec<Arg> {
    let (mut hashes, mut created, mut expires) = (Vec::new(), Vec::new(), Vec::new());
    let (mut currencies, mut totals, mut clients) = (Vec::new(), Vec::new(), Vec::new());
    let (mut holds, mut cats, mut ns) = (Vec::new(), Vec::new(), Vec::new());
    let (mut seats, mut prices) = (Vec::new(), Vec::new());
    for m in made {
        let hash = m.asked.token_hash.to_vec();
        for ((cat, n, seat), price) in m.taken.iter().zip(&m.prices) {
            holds.push(hash.clone());
            cats.push(key(*cat));
            ns.push(*n);
            seats.push(seat.clone());
            prices.push(*price);
        }
        hashes.push(hash);
        created.push(key(m.asked.now_ms));
        expires.push(key(m.asked.until));
        currencies.push(m.currency.clone());
        totals.push(key(m.total));
        clients.push(m.asked.client.as_ref().map(|c| c.address.clone()));
    }
    vec![
        Box::new(key(event)),
        Box::new(hashes),
        Box::new(created),
        Box::new(expires),
        Box::new(currencies),
        Box::new(totals),
        Box::new(clients),
        Box::new(holds),
        Box::new(cats),
        Box::new(ns),
        Box::new(seats),
        Box::new(prices),
    ]
}

/// Takes the seats of an event asked for by key (`$2`): for the hold
/// `$3[i]` until `$4[i]` of the `i`-th. Returns those taken. (The seats
/// are found by their keys, then each given its hold by a join: its cost
/// grows with the seats, not with their square.)
const TAKE_SEATS: &str = "UPDATE places p SET hold = w.h, held_until = w.t
     FROM unnest($2::text[], $3::bytea[], $4::bigint[]) AS w(k, h, t)
     WHERE p.event_id = $1 AND p.seat_key IS NOT NULL AND p.seat_key = w.k
       AND p.seat_key = ANY(ARRAY(
           SELECT seat_key FROM places
           WHERE order_id IS NULL AND held_until = 0
             AND event_id = $1 AND seat_key = ANY($2) AND seat_key IS NOT NULL
           FOR UPDATE SKIP LOCKED))
     RETURNING p.category_id, p.n, p.seat_key";

/// Takes places `$2` of category `$1`: for the hold `$3[i]` until `$4[i]`
/// of the `i`-th. Returns those taken.
const TAKE_PLACES: &str = "UPDATE places p SET hold = w.h, held_until = w.t
     FROM unnest($2::bigint[], $3::bytea[], $4::bigint[]) AS w(n, h, t)
     WHERE p.category_id = $1 AND p.n = w.n AND p.n = ANY(ARRAY(
         SELECT n FROM places
         WHERE order_id IS NULL AND held_until = 0 AND category_id = $1 AND n = ANY($2)
         FOR UPDATE SKIP LOCKED))
     RETURNING p.n, p.seat_key";

/// Takes so many places of a quota (category `$1`) for several holds in
/// turn: the places `$7` (found free before, and locked), then up to `$3`
/// more free ones from place `$2` on (or, the second time round, before
/// it), in order. The holds want the places of ranks up to `$6[i]` (each
/// after the last's): those whose last rank is found get them, for hold
/// `$4[r]` until `$5[r]` by rank `r`. Returns, first, every place found
/// (those given out first), then the rank, number and seat of each given
/// out.
macro_rules! take_quota {
    ($from:literal) => {
        concat!(
            "WITH f AS MATERIALIZED (
                 SELECT $7::bigint[] || ARRAY(
                     SELECT n FROM places
                     WHERE order_id IS NULL AND held_until = 0 AND category_id = $1
                       AND ",
            $from,
            "    ORDER BY n LIMIT $3 FOR UPDATE SKIP LOCKED) AS ns),
                 g AS MATERIALIZED (
                     SELECT ns[1:(SELECT max(e) FROM unnest($6::bigint[]) AS e
                                  WHERE e <= cardinality(ns))] AS used
                     FROM f),
                 w AS MATERIALIZED (
                     SELECT x.n, x.r, y.h, y.t
                     FROM g, unnest(g.used) WITH ORDINALITY AS x(n, r)
                          JOIN unnest($4::bytea[], $5::bigint[]) WITH ORDINALITY AS y(h, t, r)
                          USING (r)),
                 u AS (UPDATE places p SET hold = w.h, held_until = w.t
                       FROM w
                       WHERE p.category_id = $1 AND p.n = w.n
                         AND p.n = ANY((SELECT used FROM g)::bigint[])
                       RETURNING w.r, p.n, p.seat_key)
             SELECT (SELECT ns FROM f), NULL::bigint, NULL::bigint, NULL::text
             UNION ALL SELECT NULL, r, n, seat_key FROM u"
        )
    };
}

/// Takes one address's holds in turn, each address's in order: the
/// count that follows sees what the one before committed.
const LOCK_CLIENTS: &str = "SELECT 1 FROM (SELECT a FROM unnest($2::text[]) AS a ORDER BY a) s,
         LATERAL (SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || s.a, 0))) l";

/// What each address (`$2`) holds of event `$1` at `$3`, paid places aside.
const HELD_BY_CLIENTS: &str = "SELECT a, (
         SELECT coalesce(sum((SELECT count(*) FROM hold_items i
                              WHERE i.hold = h.token_hash)), 0)::bigint
         FROM holds h
         WHERE h.event_id = $1 AND h.client = a AND h.client IS NOT NULL
           AND h.released_at IS NULL AND h.expires_at > $3
           AND (SELECT o.state FROM orders o
                WHERE o.hold = h.token_hash AND o.state IN ('pending', 'paid'))
               IS DISTINCT FROM 'paid')
     FROM unnest($2::text[]) AS a";

/// The capacity and the places sold of categories `$1`.
const SOLD: &str = "SELECT category_id, count(*), count(order_id) FROM places
     WHERE category_id = ANY($1) GROUP BY category_id";

/// Which seats of an event (`$2`) there are.
const SEATS_THERE: &str = "SELECT seat_key FROM places
     WHERE event_id = $1 AND seat_key = ANY($2) AND seat_key IS NOT NULL";

/// Puts places back (taken by holds of the batch that were not made).
const PUT_BACK: &str = "UPDATE places p SET hold = NULL, held_until = 0
     FROM unnest($1::bigint[], $2::bigint[]) AS u(c, n)
     WHERE p.category_id = u.c AND p.n = u.n";

/// Writes the holds made and their places.
const WRITE_HOLDS: &str = "WITH h AS (
         INSERT INTO holds (token_hash, event_id, created_at, expires_at, currency, total, client)
         SELECT u.h, $1, u.c, u.e, u.cur, u.t, u.cl
         FROM unnest($2::bytea[], $3::bigint[], $4::bigint[], $5::text[], $6::bigint[],
                     $7::text[]) AS u(h, c, e, cur, t, cl))
     INSERT INTO hold_items (hold, category_id, n, seat_key, price)
     SELECT u.h, u.c, u.n, u.s, u.p
     FROM unnest($8::bytea[], $9::bigint[], $10::bigint[], $11::text[], $12::bigint[])
          AS u(h, c, n, s, p)";

/// What the rounds of a batch share: its holds, their event and its
/// categories.
#[derive(Clone, Copy)]
struct Making<'a> {
    batch: &'a [&'a Asked],
    event: &'a Event,
    categories: &'a Categories,
}

/// What a statement of a round takes or reads.
enum Reading {
    Seats,
    Best(u64),
    Quota(Quota),
    Sold,
}

/// The holds sharing a quota's places in one statement: in the order the
/// places go to them (fewest places first, so that as many holds as can be
/// are made), with how many each wants.
struct Quota {
    category: u64,
    start: i64,
    holds: Vec<(usize, u32)>,
}

impl Quota {
    /// The statement taking the places of `self.holds`, `found` (locked
    /// free places) first, more from `from_start` (else before it).
    fn statement(
        &self,
        batch: &[&Asked],
        found: &[i64],
        from_start: bool,
    ) -> (&'static str, Vec<Arg>) {
        let mut hashes = Vec::new();
        let mut untils = Vec::new();
        let mut ends = Vec::new();
        for (i, q) in &self.holds {
            for _ in 0..*q {
                hashes.push(batch[*i].token_hash.to_vec());
                untils.push(key(batch[*i].until));
            }
            ends.push(hashes.len() as i64);
        }
        let more = (hashes.len() - found.len().min(hashes.len())) as i64;
        let sql = if from_start {
            take_quota!("n >= $2")
        } else {
            take_quota!("n < $2")
        };
        (
            sql,
            vec![
                Box::new(key(self.category)),
                Box::new(self.start),
                Box::new(more),
                Box::new(hashes),
                Box::new(untils),
                Box::new(ends),
                Box::new(found.to_vec()),
            ],
        )
    }

    /// Gives the places a statement of [`Quota::statement`] took to its
    /// holds; returns the holds given none, and the free places found
    /// but not given out (still locked by this transaction).
    fn given(
        &self,
        rows: &[tokio_postgres::Row],
        work: &mut [Work],
    ) -> (Vec<(usize, u32)>, Vec<i64>) {
        let found: Vec<i64> = rows
            .iter()
            .find_map(|r| r.get::<_, Option<Vec<i64>>>(0))
            .unwrap_or_default();
        let mut by_rank: Vec<(i64, i64, Option<String>)> = rows
            .iter()
            .filter_map(|r| {
                Some((
                    r.get::<_, Option<i64>>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                    r.get(3),
                ))
            })
            .collect();
        by_rank.sort_by_key(|t| t.0);
        let mut places = by_rank.into_iter();
        let (mut end, mut given) = (0, 0);
        let mut short = Vec::new();
        for (i, q) in &self.holds {
            end += *q as usize;
            // Those whose places were all found got them, in turn.
            if end > found.len() {
                short.push((*i, *q));
                continue;
            }
            let mut mine: Vec<Taken> = places
                .by_ref()
                .take(*q as usize)
                .map(|(_, n, seat)| (self.category, n, seat))
                .collect();
            given = end;
            mine.sort_by_key(|t| t.1);
            if mine.len() < *q as usize {
                // Never expected (the places were locked by this
                // transaction): refused, what it got put back.
                work[*i].done = Some(Outcome::Refused(StorageError::Conflict(
                    "a place was taken meanwhile".into(),
                )));
            }
            work[*i].taken.extend(mine);
        }
        let left = found.get(given..).unwrap_or_default().to_vec();
        (short, left)
    }
}

/// Refuses, before anything is taken, the holds of addresses that would
/// hold more places of the event than they may (paid places aside): what
/// each holds already is counted under a lock of the address, held to the
/// commit, so that its holds at once (in other batches, in other
/// processes) count each other. A hold that fits only if another of its
/// address in the batch is not made is made again by a later batch.
async fn within_limits(
    c: &mut Conn,
    batch: &[&Asked],
    event: &Event,
    work: &mut [Work],
    now_ms: u64,
) -> Result<()> {
    let mut addresses: Vec<String> = batch
        .iter()
        .zip(work.iter())
        .filter(|(_, w)| w.done.is_none())
        .filter_map(|(a, _)| a.client.as_ref().map(|c| c.address.clone()))
        .collect();
    if addresses.is_empty() {
        return Ok(());
    }
    addresses.sort();
    addresses.dedup();
    let counted = c
        .query_all(&[
            (
                LOCK_CLIENTS,
                vec![Box::new(event.id.to_string()), Box::new(addresses.clone())],
            ),
            (
                HELD_BY_CLIENTS,
                vec![
                    Box::new(key(event.id)),
                    Box::new(addresses),
                    Box::new(key(now_ms)),
                ],
            ),
        ])
        .await?;
    let held: HashMap<String, u64> = counted
        .get(1)
        .into_iter()
        .flatten()
        .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
        .collect();
    let mut reserved: HashMap<&str, u64> = HashMap::new();
    for ((a, w), asking) in batch
        .iter()
        .zip(work.iter_mut())
        .zip(batch.iter().map(|a| places_asked(&a.request)))
    {
        let Some(Client { address, most }) = &a.client else {
            continue;
        };
        if w.done.is_some() {
            continue;
        }
        let held = held.get(address).copied().unwrap_or(0);
        let refused = || {
            StorageError::Conflict(format!(
                "this address holds {held} places of the event already; at most {most} at once"
            ))
        };
        let mine = reserved.entry(address).or_default();
        if held + asking > u64::from(*most) {
            w.done = Some(Outcome::Refused(refused()));
        } else if held + *mine + asking > u64::from(*most) {
            w.done = Some(again_or(a, refused()));
        } else {
            *mine += asking;
        }
    }
    Ok(())
}

/// How many places a hold asks for.
fn places_asked(request: &HoldRequest) -> u64 {
    request
        .items
        .iter()
        .map(|item| match item {
            HoldItem::Seats { seats } => seats.len() as u64,
            HoldItem::Quantity { quantity, .. } | HoldItem::Best { quantity, .. } => {
                u64::from(*quantity)
            }
        })
        .sum()
}

impl PgStorage {
    /// Makes the hold asked for, with others asked for meanwhile.
    pub(super) fn hold_gathered(&self, asked: Asked) -> Pending<Hold> {
        let me = self.clone();
        Box::pin(async move {
            asked.request.check()?;
            let event = asked.request.event_id;
            let (answered, batch) = me.holds.push(&event, asked);
            if let Some(batch) = batch {
                let runner = me.clone();
                me.runtime
                    .spawn(async move { runner.run_holds(event, batch).await });
            }
            gather::lost(answered.await)
        })
    }

    /// Makes batches of event `event`'s holds, `batch` first, until none
    /// is left waiting.
    async fn run_holds(&self, event: u64, mut batch: Vec<Waiting<Asked, Hold>>) {
        let guard = gather::Running::new(&self.holds, event);
        loop {
            // No one awaits these (buyers who hung up): not made.
            batch.retain(|w| !w.abandoned());
            let again = match batch.is_empty() {
                true => Vec::new(),
                false => self.hold_batch(batch).await,
            };
            match self.holds.next(&event, again) {
                Some(next) => batch = next,
                None => return guard.done(),
            }
        }
    }

    /// Makes a batch of holds and answers each; returns those to be made
    /// again.
    async fn hold_batch(&self, batch: Vec<Waiting<Asked, Hold>>) -> Vec<Waiting<Asked, Hold>> {
        let asked: Vec<&Asked> = batch.iter().map(|w| &w.asked).collect();
        let outcomes: Vec<Result<Outcome>> = match self.outcomes(&asked).await {
            Ok(made) => made.into_iter().map(Ok).collect(),
            // Whatever failed the batch (a statement the database refused),
            // one hold's fault must not be the others': each alone.
            Err(e) if asked.len() > 1 && gather::not_of_all(&e) => {
                tracing::warn!(error = %e, holds = asked.len(), "a batch of holds failed; made one by one");
                let mut each = Vec::with_capacity(asked.len());
                for a in &asked {
                    each.push(self.outcomes(&[a]).await.map(|mut o| o.remove(0)));
                }
                each
            }
            Err(e) => asked.iter().map(|_| Err(e.clone())).collect(),
        };
        let mut again = Vec::new();
        for (mut w, outcome) in batch.into_iter().zip(outcomes) {
            match outcome {
                Ok(Outcome::Made(hold)) => w.answer(Ok(hold)),
                Ok(Outcome::Refused(e)) | Err(e) => w.answer(Err(e)),
                Ok(Outcome::Again) => {
                    w.asked.tries += 1;
                    again.push(w);
                }
            }
        }
        again
    }

    /// The outcome of each hold of `batch`, made in one transaction.
    async fn outcomes(&self, batch: &[&Asked]) -> Result<Vec<Outcome>> {
        self.transaction(async |c| self.holds_in(c, batch).await)
            .await
    }

    /// Makes the holds of `batch` (of one event), in transaction `c`.
    ///
    /// The event and its categories are those of this process's copy if
    /// it has one, read again with the batch's first statement, in the same
    /// round trip: holds made by a copy that was not the truth any more are
    /// undone and made again.
    async fn holds_in(&self, c: &mut Conn, batch: &[&Asked]) -> Result<Vec<Outcome>> {
        let Some(first) = batch.first() else {
            return Ok(Vec::new());
        };
        let id = first.request.event_id;
        let now_ms = batch.iter().map(|a| a.now_ms).max().unwrap_or(first.now_ms);
        let copy = self.copy_of(id);
        // Places of holds whose time passed are told free before they are
        // taken again, so the live feed's moves add up.
        // At most once every few moments a process: a lapsed hold's places
        // not yet untied are not free to take (never taken twice), and are
        // untied by the next look. A batch that tells reads the event first.
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
        let out = self.holds_by(c, batch, read, tell, now_ms).await;
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

    /// Makes the holds of `batch`, in transaction `c`, of the event `read`
    /// with its categories; `tell`: tells of lapsed holds first.
    async fn holds_by(
        &self,
        c: &mut Conn,
        batch: &[&Asked],
        read: Option<(Event, Vec<Category>)>,
        tell: bool,
        now_ms: u64,
    ) -> Result<Vec<Outcome>> {
        let (event, categories) = match read {
            Some((e, categories)) => (Some(e), categories),
            None => (None, Vec::new()),
        };
        let event = match holding::check_event(event.as_ref(), batch[0].request.event_id) {
            Ok(e) => e.clone(),
            Err(e) => return Ok(batch.iter().map(|_| Outcome::Refused(e.clone())).collect()),
        };
        let categories: Categories = categories.into_iter().map(|cat| (cat.id, cat)).collect();
        let mut feed = Feed::default();
        if tell {
            changes::announce(c, Some(event.id), now_ms, &mut feed).await?;
        }
        let mut work: Vec<Work> = batch
            .iter()
            .map(|a| Work {
                taken: Vec::new(),
                choosing: Vec::new(),
                scarce: None,
                done: holding::check_quantities(&a.request, &categories)
                    .err()
                    .map(Outcome::Refused),
            })
            .collect();
        within_limits(c, batch, &event, &mut work, now_ms).await?;
        let mut sold: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        let rounds = batch
            .iter()
            .map(|a| a.request.items.len())
            .max()
            .unwrap_or(0);
        for round in 0..rounds {
            let making = Making {
                batch,
                event: &event,
                categories: &categories,
            };
            self.take_round(c, making, &mut work, round, &mut sold)
                .await?;
        }
        // Each hold checked and priced on its own, in the order asked.
        let mut outcomes = Vec::with_capacity(batch.len());
        // Places put back, and by which hold.
        let mut put_back: Vec<(usize, Taken)> = Vec::new();
        let mut made = Vec::new();
        let mut scarce = Vec::with_capacity(batch.len());
        for (i, (a, w)) in batch.iter().zip(work).enumerate() {
            scarce.push(w.scarce);
            let outcome = match w.done {
                Some(done) => done,
                None => {
                    match holding::priced(event.id, &categories, &w.taken, &sold, a.now_ms, a.until)
                    {
                        Ok((hold, places)) => {
                            made.push(Made {
                                asked: a,
                                taken: w.taken.clone(),
                                prices: places.iter().map(|p| key(p.price)).collect(),
                                currency: hold.currency.clone(),
                                total: hold.total,
                            });
                            Outcome::Made(hold)
                        }
                        Err(e) => Outcome::Refused(e),
                    }
                }
            };
            if !matches!(outcome, Outcome::Made(_)) {
                put_back.extend(w.taken.iter().map(|t| (i, t.clone())));
            }
            outcomes.push(outcome);
        }
        // Places another hold of the batch put back may be what a hold was
        // refused for lack of: it is made again, by a later batch. (Not
        // for places it put back itself: it lacked them all the same.)
        for (i, ((a, outcome), lacked)) in batch
            .iter()
            .zip(outcomes.iter_mut())
            .zip(scarce)
            .enumerate()
        {
            let again = put_back.iter().any(|(j, (cat, _, seat))| {
                *j != i
                    && match &lacked {
                        Some(Scarce::Category(id)) => cat == id,
                        Some(Scarce::Seat(key)) => seat.as_deref() == Some(key.as_str()),
                        None => false,
                    }
            });
            if let (true, Outcome::Refused(e)) = (again, &outcome) {
                *outcome = again_or(a, e.clone());
            }
        }
        let put_back: Vec<Taken> = put_back.into_iter().map(|(_, t)| t).collect();
        // Nothing is read back: sent with the COMMIT.
        if !put_back.is_empty() {
            let (cats, ns): (Vec<i64>, Vec<i64>) =
                put_back.iter().map(|(cat, n, _)| (key(*cat), *n)).unzip();
            c.defer(PUT_BACK, vec![Box::new(cats), Box::new(ns)]);
            // Free again, to this process's buyers too, once committed.
            c.freed
                .extend(put_back.into_iter().map(|(cat, n, _)| (cat, n)));
        }
        if !made.is_empty() {
            c.defer(WRITE_HOLDS, written(event.id, &made));
            feed.push(
                event.id,
                ChangeKind::Held,
                made.iter()
                    .flat_map(|m| m.taken.iter().map(|(cat, _, seat)| (*cat, seat.clone())))
                    .collect(),
            );
        }
        feed.write(c, now_ms)?;
        Ok(outcomes)
    }

    /// Takes the `round`-th item of every hold of the batch still being
    /// made (all sent at once); on the first round, also counts the places
    /// sold of categories priced by demand (`sold`).
    async fn take_round(
        &self,
        c: &mut Conn,
        making: Making<'_>,
        work: &mut [Work],
        round: usize,
        sold: &mut BTreeMap<u64, (u64, u64)>,
    ) -> Result<()> {
        let Making {
            batch,
            event,
            categories,
        } = making;
        let mut statements: Vec<(&'static str, Vec<Arg>)> = Vec::new();
        let mut readings = Vec::new();
        // Seats by key: each to the first hold asking for it.
        let mut asked_seats: HashMap<&str, usize> = HashMap::new();
        let (mut keys, mut hashes, mut untils) = (Vec::new(), Vec::new(), Vec::new());
        // Best seats and quotas, by category, holds in the order asked.
        let mut best: BTreeMap<u64, Vec<(usize, u32)>> = BTreeMap::new();
        let mut quotas: BTreeMap<u64, Vec<(usize, u32)>> = BTreeMap::new();
        for (i, a) in batch.iter().enumerate() {
            if work[i].done.is_some() {
                continue;
            }
            match a.request.items.get(round) {
                None => {}
                Some(HoldItem::Seats { seats }) => {
                    if let Some(seat) = seats.iter().find(|s| asked_seats.contains_key(s.as_str()))
                    {
                        work[i].done = Some(again_or(
                            a,
                            StorageError::Conflict(format!("seat {seat} is taken")),
                        ));
                        continue;
                    }
                    if seats.iter().any(|s| s.contains('\0')) {
                        // Refused here, not by the database, which would
                        // fail the whole batch.
                        work[i].done = Some(Outcome::Refused(super::nul_refused()));
                        continue;
                    }
                    for seat in seats {
                        asked_seats.insert(seat, i);
                        keys.push(seat.clone());
                        hashes.push(a.token_hash.to_vec());
                        untils.push(key(a.until));
                    }
                }
                Some(HoldItem::Quantity {
                    category_id,
                    quantity,
                }) => quotas.entry(*category_id).or_default().push((i, *quantity)),
                Some(HoldItem::Best {
                    category_id,
                    quantity,
                }) => match holding::category(categories, *category_id) {
                    Ok(cat) if matches!(cat.info.places, Places::Seats { .. }) => {
                        best.entry(*category_id).or_default().push((i, *quantity))
                    }
                    Ok(cat) => {
                        work[i].done = Some(Outcome::Refused(StorageError::Invalid(format!(
                            "{} is standing: ask for a quantity, not the best seats",
                            cat.info.name
                        ))))
                    }
                    Err(e) => work[i].done = Some(Outcome::Refused(e)),
                },
            }
        }
        if !keys.is_empty() {
            statements.push((
                TAKE_SEATS,
                vec![
                    Box::new(key(event.id)),
                    Box::new(keys),
                    Box::new(hashes),
                    Box::new(untils),
                ],
            ));
            readings.push(Reading::Seats);
        }
        for (id, holds) in &best {
            let Some((ns, hashes, untils)) = self.choose_best(c, making, work, *id, holds).await?
            else {
                continue;
            };
            statements.push((
                TAKE_PLACES,
                vec![
                    Box::new(key(*id)),
                    Box::new(ns),
                    Box::new(hashes),
                    Box::new(untils),
                ],
            ));
            readings.push(Reading::Best(*id));
        }
        for (id, mut holds) in quotas {
            let Ok(cat) = holding::category(categories, id) else {
                continue;
            };
            // From a place chosen at random on, then from the first:
            // batches at once look at different places, and none walks past
            // every place held before it.
            let capacity = match &cat.info.places {
                Places::Quota { places, .. } => i64::from(*places),
                Places::Seats { .. } => self
                    .rows_of(c, cat, event.info.venue_id)
                    .await?
                    .iter()
                    .sum::<usize>() as i64,
            };
            let start = 1 + (rand_core::OsRng.next_u64() % capacity.max(1) as u64) as i64;
            holds.sort_by_key(|(i, q)| (*q, *i));
            let quota = Quota {
                category: id,
                start,
                holds,
            };
            statements.push(quota.statement(batch, &[], true));
            readings.push(Reading::Quota(quota));
        }
        if round == 0 {
            // Prices that hang on how much is sold, counted once a batch.
            let demand: Vec<i64> = categories
                .values()
                .filter(|cat| !cat.info.pricing.demand_tiers.is_empty())
                .map(|cat| key(cat.id))
                .collect();
            if !demand.is_empty() {
                statements.push((SOLD, vec![Box::new(demand)]));
                readings.push(Reading::Sold);
            }
        }
        if statements.is_empty() {
            return Ok(());
        }
        let results = c.query_all(&statements).await?;
        let mut short_quotas = Vec::new();
        let mut missing: Vec<(usize, String)> = Vec::new();
        for (reading, rows) in readings.into_iter().zip(results) {
            match reading {
                Reading::Seats => {
                    let got: HashMap<String, Taken> = rows
                        .iter()
                        .filter_map(|r| {
                            let seat: Option<String> = r.get(2);
                            Some((seat.clone()?, (r.get::<_, i64>(0) as u64, r.get(1), seat)))
                        })
                        .collect();
                    for (i, a) in batch.iter().enumerate() {
                        let Some(HoldItem::Seats { seats }) = a.request.items.get(round) else {
                            continue;
                        };
                        if work[i].done.is_some() {
                            continue;
                        }
                        // Taken by this hold (the seats asked of it are
                        // its own in the batch), or not taken at all.
                        let mine: Vec<Taken> =
                            seats.iter().filter_map(|s| got.get(s).cloned()).collect();
                        let first_missing = seats.iter().find(|s| !got.contains_key(s.as_str()));
                        work[i].taken.extend(mine);
                        if let Some(seat) = first_missing {
                            missing.push((i, seat.clone()));
                        }
                    }
                }
                Reading::Best(id) => {
                    let got: HashMap<i64, Option<String>> = rows
                        .iter()
                        .map(|r| (r.get::<_, i64>(0), r.get(1)))
                        .collect();
                    for (i, _) in &best[&id] {
                        let Some(chosen) = work[*i].chosen_best(id) else {
                            continue;
                        };
                        let mine: Vec<Taken> = chosen
                            .iter()
                            .filter_map(|n| got.get(n).map(|s| (id, *n, s.clone())))
                            .collect();
                        let all = mine.len() == chosen.len();
                        work[*i].taken.extend(mine);
                        if !all {
                            // Some were being taken by another: made again,
                            // chosen anew (what it got is put back).
                            work[*i].done = Some(again_or(
                                batch[*i],
                                StorageError::Conflict("a seat was taken meanwhile".into()),
                            ));
                        }
                    }
                }
                Reading::Quota(quota) => {
                    let (short, left) = quota.given(&rows, work);
                    if !short.is_empty() {
                        short_quotas.push((quota, short, left));
                    }
                }
                Reading::Sold => {
                    for r in &rows {
                        sold.insert(
                            r.get::<_, i64>(0) as u64,
                            (r.get::<_, i64>(1) as u64, r.get::<_, i64>(2) as u64),
                        );
                    }
                }
            }
        }
        // Quotas short from their random place on: from the first, the
        // places found but not given out first.
        let mut second = Vec::new();
        let mut seconds = Vec::new();
        for (quota, short, left) in short_quotas {
            let again = Quota {
                category: quota.category,
                start: quota.start,
                holds: short,
            };
            second.push(again.statement(batch, &left, false));
            seconds.push(again);
        }
        // Seats not taken: taken, or no seat of the event?
        if !missing.is_empty() {
            let keys: Vec<String> = missing.iter().map(|(_, s)| s.clone()).collect();
            second.push((SEATS_THERE, vec![Box::new(key(event.id)), Box::new(keys)]));
        }
        if second.is_empty() {
            return Ok(());
        }
        let mut results = c.query_all(&second).await?.into_iter();
        for quota in seconds {
            let rows = results.next().unwrap_or_default();
            let (short, left) = quota.given(&rows, work);
            let name = &categories
                .get(&quota.category)
                .map(|c| c.info.name.clone())
                .unwrap_or_default();
            for (i, q) in short {
                work[i].scarce = Some(Scarce::Category(quota.category));
                work[i].done = Some(Outcome::Refused(StorageError::Conflict(format!(
                    "{name} has {} places left, not {q}",
                    left.len()
                ))));
            }
        }
        if !missing.is_empty() {
            let there: std::collections::HashSet<String> = results
                .next()
                .unwrap_or_default()
                .iter()
                .map(|r| r.get(0))
                .collect();
            for (i, seat) in missing {
                if there.contains(&seat) {
                    work[i].scarce = Some(Scarce::Seat(seat.clone()));
                }
                work[i].done = Some(Outcome::Refused(if there.contains(&seat) {
                    StorageError::Conflict(format!("seat {seat} is taken"))
                } else {
                    StorageError::Invalid(format!("the event sells no seat {seat:?}"))
                }));
            }
        }
        Ok(())
    }

    /// Chooses the best seats of seated category `id` for `holds` (in
    /// order, each its quantity) from this process's picture of free
    /// seats, marked taken in it at once, so that buyers here at the same
    /// moment choose apart; they are taken by a conditional update all the
    /// same, so a stale picture costs a try, never a seat. Returns the
    /// seats chosen, with the hold and until when of each, for
    /// [`TAKE_PLACES`] (none if no hold could choose).
    #[allow(clippy::type_complexity)]
    async fn choose_best(
        &self,
        c: &mut Conn,
        making: Making<'_>,
        work: &mut [Work],
        id: u64,
        holds: &[(usize, u32)],
    ) -> Result<Option<(Vec<i64>, Vec<Vec<u8>>, Vec<i64>)>> {
        let Making {
            batch,
            event,
            categories,
        } = making;
        let cat = holding::category(categories, id)?;
        let rows = self.rows_of(c, cat, event.info.venue_id).await?;
        let capacity: usize = rows.iter().sum();
        // Made again: its seats were taken elsewhere; a picture read
        // before is read again.
        let again = holds.iter().any(|(i, _)| batch[*i].tries > 0);
        let (mut free, kept) = self.free_seats(c, id, capacity, again, false).await?;
        let mut read_anew = false;
        let (mut ns, mut hashes, mut untils) = (Vec::new(), Vec::new(), Vec::new());
        for (i, q) in holds {
            let mut first = holding::best_seats(cat, &rows, free.clone(), &work[*i].taken, *q);
            if first.is_err() && kept && !read_anew {
                // None to be had in a picture kept a while: the database
                // has the last word (a picture just read stands: a
                // stampede on a sold-out category is not a read each).
                read_anew = true;
                free = self.free_seats(c, id, capacity, true, true).await?.0;
                for n in &ns {
                    if let Some(f) = seat(&mut free, *n) {
                        *f = false;
                    }
                }
                first = holding::best_seats(cat, &rows, free.clone(), &work[*i].taken, *q);
            }
            let first = match first {
                Ok(first) => first as i64 + 1,
                Err(e) => {
                    work[*i].scarce = Some(Scarce::Category(id));
                    work[*i].done = Some(Outcome::Refused(e));
                    continue;
                }
            };
            let last = first + i64::from(*q) - 1;
            self.mark_taken(c, id, first..=last);
            for n in first..=last {
                if let Some(f) = seat(&mut free, n) {
                    *f = false;
                }
                ns.push(n);
                hashes.push(batch[*i].token_hash.to_vec());
                untils.push(key(batch[*i].until));
            }
            work[*i].choosing.push((id, (first..=last).collect()));
        }
        Ok((!ns.is_empty()).then_some((ns, hashes, untils)))
    }
}
