//! The live feed's changes on PostgreSQL.
//!
//! Each event's changes are numbered 1, 2, ... with no gap, and a watcher
//! told the event's state with number `n` must then be told exactly the
//! changes after `n`. Numbering in the transaction that moves places
//! would have every buyer of an event wait for the previous one's commit
//! (its flush to disk included). So changes are written unnumbered, as a
//! transaction's last statement, and a sequencer ([`sequence`]) numbers
//! those committed afterwards, in the order of their ids, waiting for no
//! writer. Writers take a *shared* lock on the event until their commit
//! ([`Feed::write`]); a reader of an event's state takes it *exclusively*,
//! which waits only for the commits in flight, so that the state it reads
//! is exactly that of the changes committed, numbered or soon to be.
//!
//! Across events (the fan-out to watchers), numbered changes carry a
//! position `pos` given by one sequencer at a time (`feed_pos`), in the
//! order of its commits: a cursor of positions misses none.

use std::collections::BTreeMap;

use super::{Conn, Shifted, key};
use crate::storage::rows::{CHANGE_COLUMNS, Moved, change_from, moved_columns};
use crate::storage::{ChangeKind, PlaceChange, Result};

/// Changes a transaction makes, written together at its end.
#[derive(Default)]
pub(super) struct Feed {
    changes: Vec<(u64, ChangeKind, Moved)>,
}

impl Feed {
    /// Notes that `moved` places of `event_id` changed by `kind` (nothing
    /// moved, nothing noted).
    pub fn push(&mut self, event_id: u64, kind: ChangeKind, moved: Moved) {
        if !moved.is_empty() {
            self.changes.push((event_id, kind, moved));
        }
    }

    /// Writes the changes noted, unnumbered, each event's under the
    /// event's shared lock (held until the commit, so that a reader of the
    /// event's state waits for it): the last statement of the
    /// transaction, sent with its COMMIT, so that a reader waiting behind
    /// it waits for little more than that. Events in order of their ids.
    pub fn write(self, c: &mut Conn, now_ms: u64) -> Result<()> {
        let mut by_event: BTreeMap<u64, Vec<(ChangeKind, Moved)>> = BTreeMap::new();
        for (event, kind, moved) in self.changes {
            by_event.entry(event).or_default().push((kind, moved));
        }
        for (event, changes) in by_event {
            let mut kinds = Vec::with_capacity(changes.len());
            let mut seats = Vec::with_capacity(changes.len());
            let mut places = Vec::with_capacity(changes.len());
            for (kind, moved) in &changes {
                let (s, p) = moved_columns(moved)?;
                kinds.push(kind.as_str());
                seats.push(s);
                places.push(p);
            }
            // The lock first (a CTE the insert reads is run before it).
            c.defer(
                "WITH l AS MATERIALIZED (SELECT pg_advisory_xact_lock_shared($6, $7))
                 INSERT INTO place_changes (event_id, at, kind, seats, places)
                 SELECT $1, $2, u.kind, u.seats, u.places
                 FROM l, unnest($3::text[], $4::text[], $5::text[])
                      WITH ORDINALITY AS u(kind, seats, places, i)
                 ORDER BY u.i",
                vec![
                    Box::new(key(event)),
                    Box::new(key(now_ms)),
                    Box::new(kinds),
                    Box::new(seats),
                    Box::new(places),
                    Box::new(FEED_LOCK),
                    Box::new(lock_of(event)),
                ],
            );
        }
        Ok(())
    }
}

/// The class of the events' feed locks (`pg_advisory_xact_lock(class, id)`).
pub(super) const FEED_LOCK: i32 = 0x6665_6564; // "feed"

/// The lock of the sequencer: one at a time, across processes.
const SEQUENCER_LOCK: i64 = 0x7365_7175_656e_6365; // "sequence"

/// An event's feed lock (ids beyond 2^31 share locks: more waiting, never
/// less safety).
fn lock_of(event: u64) -> i32 {
    (event & 0x7fff_ffff) as i32
}

/// Takes event `event_id`'s feed lock exclusively, until the end of the
/// transaction: the transactions writing its changes have committed, and
/// the next wait.
pub(super) async fn lock_event(c: &mut Conn, event_id: u64) -> Result<()> {
    c.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&FEED_LOCK, &lock_of(event_id)],
    )
    .await?;
    Ok(())
}

/// The number of event `event_id`'s last change committed, numbered or
/// not: with its lock held exclusively, what the state then read includes.
pub(super) async fn last_seq(c: &mut Conn, event_id: u64) -> Result<u64> {
    let n: i64 = c
        .query_one(
            "SELECT coalesce((SELECT seq FROM feed_seq WHERE event_id = $1), 0)
                  + (SELECT count(*) FROM place_changes WHERE event_id = $1 AND seq IS NULL)",
            &[&key(event_id)],
        )
        .await?
        .get(0);
    Ok(n as u64)
}

/// Most changes numbered in one statement.
pub(super) const SEQUENCE_BATCH: i64 = 10_000;

/// Numbers the changes written unnumbered and committed, in the order of
/// their ids, at most [`SEQUENCE_BATCH`], in a transaction of its own
/// `c`, unless another sequencer is at work (its numbers will do).
/// Returns how many it numbered.
///
/// It waits for no writer: changes still in flight are numbered by a
/// later pass. That keeps the order of each place's moves, since a move
/// of a place commits only after the move before it did, and its change
/// has the larger id. And it keeps the state read by availability true:
/// that reader holds the event's lock exclusively, so that every change
/// it counts as unnumbered has committed, and every change committed later
/// has a larger id, and is numbered after them.
pub(super) async fn sequence(c: &mut Conn) -> Result<usize> {
    let mine: bool = c
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&SEQUENCER_LOCK])
        .await?
        .get(0);
    if !mine {
        return Ok(0);
    }
    // The first unnumbered by id ([`SEQUENCE_BATCH`]); `r`: the place of
    // each among its event's, `g` among all. Planned for how many wait:
    // joined to the changes by their index, or by reading them all.
    c.plan_each_run();
    let n = c
        .execute(
            "WITH n AS (SELECT id, event_id,
                               row_number() OVER (PARTITION BY event_id ORDER BY id) AS r,
                               row_number() OVER (ORDER BY id) AS g
                        FROM (SELECT id, event_id FROM place_changes WHERE seq IS NULL
                              ORDER BY id LIMIT $1) u),
                  k AS (SELECT event_id, max(r) AS k FROM n GROUP BY event_id),
                  s AS (INSERT INTO feed_seq (event_id, seq) SELECT event_id, k FROM k
                        ON CONFLICT (event_id) DO UPDATE SET seq = feed_seq.seq + EXCLUDED.seq
                        RETURNING event_id, seq),
                  t AS (SELECT count(*) AS t FROM n),
                  p AS (UPDATE feed_pos SET pos = pos + (SELECT t FROM t)
                        WHERE (SELECT t FROM t) > 0 RETURNING pos)
             UPDATE place_changes c SET seq = s.seq - k.k + n.r, pos = p.pos - t.t + n.g
             FROM n JOIN k USING (event_id) JOIN s USING (event_id), t, p
             WHERE c.id = n.id",
            &[&SEQUENCE_BATCH],
        )
        .await?;
    Ok(n as usize)
}

/// Most expired holds told of in one statement.
const ANNOUNCE_BATCH: i64 = 1000;

/// Tells `feed` of the expiry of holds (of `event_id`, or of every event)
/// whose time has passed by `now_ms` and that were not let go: their
/// unsold places still tied to them are untied. A hold locked by another
/// transaction (another telling, a release), or one of whose places is (a
/// late payment of it being settled), is passed over, for a later look:
/// no buyer waits for it, and its
/// places, their time passed but not untied, are not free to take till
/// then. A transaction about to take places tells first, so a place is
/// never taken again before its expiry is told.
pub(super) async fn announce(
    c: &mut Conn,
    event_id: Option<u64>,
    now_ms: u64,
    feed: &mut Feed,
) -> Result<usize> {
    let mut told = 0;
    loop {
        let holds = c
            .query(
                "SELECT token_hash, event_id FROM holds
                 WHERE NOT announced AND released_at IS NULL AND expires_at <= $1
                   AND ($2::bigint IS NULL OR event_id = $2)
                 ORDER BY expires_at, token_hash LIMIT $3
                 FOR UPDATE SKIP LOCKED",
                &[&key(now_ms), &event_id.map(key), &ANNOUNCE_BATCH],
            )
            .await?;
        if holds.is_empty() {
            return Ok(told);
        }
        let hashes: Vec<Vec<u8>> = holds.iter().map(|r| r.get(0)).collect();
        // Their tied places, locked in order; a hold one of whose places
        // another transaction has locked (a late payment of it being
        // settled) is left for a later look.
        let passed: std::collections::HashSet<Vec<u8>> = c
            .query(
                "WITH tied AS MATERIALIZED (
                     SELECT i.hold, p.category_id, p.n
                     FROM hold_items i JOIN places p ON p.category_id = i.category_id AND p.n = i.n
                     WHERE i.hold = ANY($1) AND p.hold = i.hold AND p.order_id IS NULL
                       AND p.held_until <= $2),
                      locked AS MATERIALIZED (
                     SELECT p.category_id, p.n
                     FROM tied JOIN places p ON p.category_id = tied.category_id AND p.n = tied.n
                     ORDER BY p.category_id, p.n FOR UPDATE OF p SKIP LOCKED)
                 SELECT DISTINCT tied.hold FROM tied
                 LEFT JOIN locked ON locked.category_id = tied.category_id AND locked.n = tied.n
                 WHERE locked.n IS NULL",
                &[&hashes, &key(now_ms)],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let holds: Vec<_> = holds
            .into_iter()
            .filter(|r| !passed.contains(&r.get::<_, Vec<u8>>(0)))
            .collect();
        let selected = hashes.len();
        let hashes: Vec<Vec<u8>> = holds.iter().map(|r| r.get(0)).collect();
        if hashes.is_empty() {
            return Ok(told);
        }
        c.execute(
            "UPDATE holds SET announced = true WHERE token_hash = ANY($1)",
            &[&hashes],
        )
        .await?;
        let untied = c
            .query(
                // The hold is returned from its item: RETURNING gives the
                // place's new values.
                "UPDATE places p SET hold = NULL, held_until = 0
                 FROM hold_items h
                 WHERE h.hold = ANY($1) AND p.category_id = h.category_id AND p.n = h.n
                   AND p.hold = h.hold AND p.order_id IS NULL AND p.held_until <= $2
                 RETURNING h.hold, p.category_id, p.seat_key, p.n",
                &[&hashes, &key(now_ms)],
            )
            .await?;
        let mut by_hold: BTreeMap<Vec<u8>, Moved> = BTreeMap::new();
        for r in &untied {
            by_hold
                .entry(r.get(0))
                .or_default()
                .push((r.get::<_, i64>(1) as u64, r.get(2)));
            c.freed.push((r.get::<_, i64>(1) as u64, r.get(3)));
        }
        // One change a hold, in the order they expired.
        for r in &holds {
            let hash: Vec<u8> = r.get(0);
            if let Some(moved) = by_hold.remove(&hash) {
                feed.push(r.get::<_, i64>(1) as u64, ChangeKind::Expired, moved);
            }
        }
        told += holds.len();
        if (selected as i64) < ANNOUNCE_BATCH {
            return Ok(told);
        }
    }
}

/// Whether a hold (of `event_id`, or of any event) has passed its time by
/// `now_ms` untold: read first, so that a look with nothing to tell writes
/// nothing.
pub(super) async fn expiry_due(c: &mut Conn, event_id: Option<u64>, now_ms: u64) -> Result<bool> {
    Ok(c.query_one(
        "SELECT EXISTS (SELECT 1 FROM holds
         WHERE NOT announced AND released_at IS NULL AND expires_at <= $1
           AND ($2::bigint IS NULL OR event_id = $2))",
        &[&key(now_ms), &event_id.map(key)],
    )
    .await?
    .get(0))
}

/// An event's changes numbered after `after`, at most `limit`, in order.
pub(super) async fn changes_of(
    c: &mut Conn,
    event_id: u64,
    after: u64,
    limit: usize,
) -> Result<Vec<PlaceChange>> {
    c.query(
        &format!(
            "SELECT {CHANGE_COLUMNS} FROM place_changes
             WHERE event_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        ),
        &[&key(event_id), &key(after), &(limit.min(10_000) as i64)],
    )
    .await?
    .iter()
    .map(|r| Ok(change_from(r)?.1))
    .collect()
}

/// Every event's numbered changes after position `cursor`, at most
/// `limit`, in order, and the cursor after them.
pub(super) async fn changes_after(
    c: &mut Conn,
    cursor: u64,
    limit: usize,
) -> Result<(u64, Vec<PlaceChange>)> {
    let rows = c
        .query(
            &format!(
                "SELECT pos, {CHANGE_COLUMNS} FROM place_changes
                 WHERE pos > $1 ORDER BY pos LIMIT $2"
            ),
            &[&key(cursor), &(limit.clamp(1, 10_000) as i64)],
        )
        .await?;
    let mut next = cursor;
    let mut found = Vec::with_capacity(rows.len());
    for r in &rows {
        next = r.get::<_, i64>(0) as u64;
        found.push(change_from(&Shifted(r, 1))?.1);
    }
    Ok((next, found))
}

/// The cursor of the changes to come: the last position given.
pub(super) async fn newest(c: &mut Conn) -> Result<u64> {
    let pos: i64 = c.query_one("SELECT pos FROM feed_pos", &[]).await?.get(0);
    Ok(pos as u64)
}

/// How often old changes are cleared.
pub(super) const PRUNE_EVERY_MS: u64 = 60_000;

/// How long changes are kept for watchers catching up.
pub(super) const KEEP_CHANGES_MS: u64 = 24 * 3600 * 1000;

/// Clears changes older than [`KEEP_CHANGES_MS`] (a watcher that far behind
/// gets a snapshot); numbering goes on from `feed_seq`.
pub(super) async fn prune(c: &mut Conn, now_ms: u64) -> Result<()> {
    // The oldest by their index once there are many.
    c.plan_each_run();
    c.execute(
        "DELETE FROM place_changes WHERE id IN (
             SELECT id FROM place_changes ORDER BY id LIMIT 10000)
           AND at < $1 AND seq IS NOT NULL",
        &[&key(now_ms.saturating_sub(KEEP_CHANGES_MS))],
    )
    .await?;
    Ok(())
}
