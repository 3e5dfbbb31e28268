//! The live feed's changes on PostgreSQL.
//!
//! Each event's changes are numbered 1, 2, ... in the order they commit:
//! a transaction takes its numbers from the event's row of `feed_seq` as
//! its last statement, so the row's lock, held until the commit, orders the
//! event's changes and is held as briefly as can be. A transaction's
//! changes are gathered as it goes ([`Feed`]) and written then.
//!
//! Across events (the fan-out to watchers), changes are read by the
//! transaction that wrote them: `xid` is its id, and rows of transactions
//! older than every one still running (`pg_snapshot_xmin`) can no longer be
//! joined by others, so a cursor of transaction ids misses none, whatever
//! the order in which concurrent transactions commit.

use std::collections::BTreeMap;

use super::{Conn, key};
use crate::storage::rows::{CHANGE_COLUMNS, Moved, change_from, moved_columns};
use crate::storage::{ChangeKind, PlaceChange, Result, StorageError};

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

    /// Writes the changes noted, each event's under its next numbers: the
    /// last statement of the transaction, so that the event's numbering is
    /// held only until the commit that follows. Events in order of their
    /// ids, so two transactions never wait for each other's events.
    pub async fn write(self, c: &mut Conn, now_ms: u64) -> Result<()> {
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
            c.execute(
                "WITH s AS (
                     INSERT INTO feed_seq (event_id, seq) VALUES ($1, $2)
                     ON CONFLICT (event_id) DO UPDATE SET seq = feed_seq.seq + $2
                     RETURNING seq)
                 INSERT INTO place_changes (event_id, seq, at, kind, seats, places)
                 SELECT $1, s.seq - $2 + u.i, $3, u.kind, u.seats, u.places
                 FROM s, unnest($4::text[], $5::text[], $6::text[])
                      WITH ORDINALITY AS u(kind, seats, places, i)",
                &[
                    &key(event),
                    &(changes.len() as i64),
                    &key(now_ms),
                    &kinds,
                    &seats,
                    &places,
                ],
            )
            .await?;
        }
        Ok(())
    }
}

/// Most expired holds told of in one statement.
const ANNOUNCE_BATCH: i64 = 1000;

/// Tells `feed` of the expiry of holds (of `event_id`, or of every event)
/// whose time has passed by `now_ms` and that were not let go: their
/// unsold places still tied to them are untied. The holds are locked in
/// order, so that two transactions telling of the same holds take turns
/// rather than wait for each other; a transaction about to take places
/// tells first, so a place is never taken again before its expiry is told.
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
                 FOR UPDATE",
                &[&key(now_ms), &event_id.map(key), &ANNOUNCE_BATCH],
            )
            .await?;
        if holds.is_empty() {
            return Ok(told);
        }
        let hashes: Vec<Vec<u8>> = holds.iter().map(|r| r.get(0)).collect();
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
                 RETURNING h.hold, p.category_id, p.seat_key",
                &[&hashes, &key(now_ms)],
            )
            .await?;
        let mut by_hold: BTreeMap<Vec<u8>, Moved> = BTreeMap::new();
        for r in &untied {
            by_hold
                .entry(r.get(0))
                .or_default()
                .push((r.get::<_, i64>(1) as u64, r.get(2)));
        }
        // One change a hold, in the order they expired.
        for r in &holds {
            let hash: Vec<u8> = r.get(0);
            if let Some(moved) = by_hold.remove(&hash) {
                feed.push(r.get::<_, i64>(1) as u64, ChangeKind::Expired, moved);
            }
        }
        told += holds.len();
        if (holds.len() as i64) < ANNOUNCE_BATCH {
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

/// A transaction id as PostgreSQL prints it.
fn xid(text: &str) -> Result<u64> {
    text.parse()
        .map_err(|_| StorageError::Backend(format!("transaction id {text:?}")))
}

/// Every event's changes written by transactions from `cursor` (a
/// transaction id) on that no transaction still running can precede, at
/// most about `limit` (a transaction's changes are never split), and the
/// cursor after them.
pub(super) async fn changes_after(
    c: &mut Conn,
    cursor: u64,
    limit: usize,
) -> Result<(u64, Vec<PlaceChange>)> {
    let limit = limit.clamp(1, 10_000) as i64;
    let columns: Vec<String> = CHANGE_COLUMNS
        .split(", ")
        .map(|col| format!("c.{col}"))
        .collect();
    let rows = c
        .query(
            &format!(
                "SELECT h.horizon::text, c.xid::text, {}
                 FROM (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS horizon) h
                 LEFT JOIN LATERAL (
                     SELECT * FROM place_changes c
                     WHERE c.xid >= $1::text::xid8 AND c.xid < h.horizon
                     ORDER BY c.xid, c.id LIMIT $2) c ON true",
                columns.join(", ")
            ),
            &[&cursor.to_string(), &(limit + 1)],
        )
        .await?;
    let Some(first) = rows.first() else {
        return Ok((cursor, Vec::new()));
    };
    let horizon = xid(first.get(0))?;
    let mut found: Vec<(u64, PlaceChange)> = Vec::with_capacity(rows.len());
    for r in &rows {
        let Some(x) = r.get::<_, Option<&str>>(1) else {
            continue;
        };
        found.push((xid(x)?, change_from(&Shifted(r))?.1));
    }
    if (found.len() as i64) <= limit {
        return Ok((
            horizon.max(cursor),
            found.into_iter().map(|(_, c)| c).collect(),
        ));
    }
    // More than asked: up to the last transaction told whole.
    let last = found[limit as usize].0;
    found.retain(|(x, _)| *x < last);
    if !found.is_empty() {
        return Ok((last, found.into_iter().map(|(_, c)| c).collect()));
    }
    // One transaction wrote more than `limit`: all of it.
    let whole = c
        .query(
            &format!(
                "SELECT {CHANGE_COLUMNS} FROM place_changes
                 WHERE xid = $1::text::xid8 ORDER BY id"
            ),
            &[&last.to_string()],
        )
        .await?
        .iter()
        .map(|r| Ok(change_from(r)?.1))
        .collect::<Result<Vec<_>>>()?;
    Ok((last + 1, whole))
}

/// The cursor of the changes to come: the oldest transaction still running.
pub(super) async fn newest(c: &mut Conn) -> Result<u64> {
    let row = c
        .query_one("SELECT pg_snapshot_xmin(pg_current_snapshot())::text", &[])
        .await?;
    xid(row.get(0))
}

/// A row read two columns on: the change's columns after the horizon and
/// the transaction id.
struct Shifted<'a>(&'a tokio_postgres::Row);

impl crate::storage::rows::Cells for Shifted<'_> {
    fn int(&self, i: usize) -> Result<i64> {
        Ok(self.0.try_get(i + 2)?)
    }

    fn opt_int(&self, i: usize) -> Result<Option<i64>> {
        Ok(self.0.try_get(i + 2)?)
    }

    fn text(&self, i: usize) -> Result<String> {
        Ok(self.0.try_get(i + 2)?)
    }
}

/// How often old changes are cleared.
pub(super) const PRUNE_EVERY_MS: u64 = 60_000;

/// How long changes are kept for watchers catching up.
pub(super) const KEEP_CHANGES_MS: u64 = 24 * 3600 * 1000;

/// Clears changes older than [`KEEP_CHANGES_MS`] (a watcher that far behind
/// gets a snapshot); numbering goes on from `feed_seq`.
pub(super) async fn prune(c: &mut Conn, now_ms: u64) -> Result<()> {
    c.execute(
        "DELETE FROM place_changes WHERE id IN (
             SELECT id FROM place_changes WHERE at < $1 ORDER BY id LIMIT 10000)",
        &[&key(now_ms.saturating_sub(KEEP_CHANGES_MS))],
    )
    .await?;
    Ok(())
}
