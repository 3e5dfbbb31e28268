//! The live feed's changes on SQLite: written in the transaction that
//! moves the places, so the feed never tells of a change that did not
//! happen, nor misses one that did.

use rusqlite::{Connection, OptionalExtension, params};

use super::{SqliteStorage, key};
use crate::storage::rows::{CHANGE_COLUMNS, change_from, moved_columns};
use crate::storage::{ChangeKind, PlaceChange, Result};

pub(super) use crate::storage::rows::Moved;

/// Records that `moved` places of `event_id` changed by `kind`, under the
/// event's next number. Nothing moved, nothing recorded.
pub(super) fn record(
    conn: &Connection,
    event_id: u64,
    now_ms: u64,
    kind: ChangeKind,
    moved: &[(u64, Option<String>)],
) -> Result<()> {
    if moved.is_empty() {
        return Ok(());
    }
    let (seats, places) = moved_columns(moved)?;
    conn.prepare_cached(
        "INSERT INTO place_changes (event_id, seq, at, kind, seats, places)
         VALUES (?1, (SELECT coalesce(max(seq), 0) + 1 FROM place_changes WHERE event_id = ?1),
                 ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        key(event_id),
        key(now_ms),
        kind.as_str(),
        seats,
        places
    ])?;
    Ok(())
}

/// The places a statement with `RETURNING category_id, seat_key` moved.
pub(super) fn moved(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<Moved> {
    Ok(conn
        .prepare_cached(sql)?
        .query_map(params, |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?)
}

/// Tells of the expiry of holds (of `event_id`, or of every event) whose
/// time has passed by `now_ms` and that were not let go: their unsold
/// places still tied to them are untied and recorded as expired.
pub(super) fn announce_expired_in(
    conn: &Connection,
    event_id: Option<u64>,
    now_ms: u64,
) -> Result<usize> {
    // Every one of them, a thousand at a time: a place left untold would
    // be taken without its expiry said, and watchers' counts would drift.
    let mut told = 0;
    loop {
        let n = announce_some(conn, event_id, now_ms)?;
        told += n;
        if n < ANNOUNCE_BATCH {
            return Ok(told);
        }
    }
}

const ANNOUNCE_BATCH: usize = 1000;

fn announce_some(conn: &Connection, event_id: Option<u64>, now_ms: u64) -> Result<usize> {
    let holds: Vec<(Vec<u8>, i64)> = conn
        .prepare_cached(
            "SELECT token_hash, event_id FROM holds
             WHERE announced = 0 AND released_at IS NULL AND expires_at <= ?1
               AND (?2 IS NULL OR event_id = ?2)
             ORDER BY expires_at LIMIT ?3",
        )?
        .query_map(
            params![key(now_ms), event_id.map(key), ANNOUNCE_BATCH as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?
        .collect::<rusqlite::Result<_>>()?;
    for (hold, event) in &holds {
        let places = moved(
            conn,
            "UPDATE places SET hold = NULL, held_until = 0
             WHERE (category_id, n) IN (SELECT category_id, n FROM hold_items WHERE hold = ?1)
               AND hold = ?1 AND order_id IS NULL AND held_until <= ?2
             RETURNING category_id, seat_key",
            params![hold, key(now_ms)],
        )?;
        record(conn, *event as u64, now_ms, ChangeKind::Expired, &places)?;
        conn.prepare_cached("UPDATE holds SET announced = 1 WHERE token_hash = ?1")?
            .execute([hold])?;
    }
    Ok(holds.len())
}

/// Whether a hold (of `event_id`, or of any event) has passed its time by
/// `now_ms` untold: read first, so that a look with nothing to tell writes
/// nothing.
pub(super) fn expiry_due(conn: &Connection, event_id: Option<u64>, now_ms: u64) -> Result<bool> {
    Ok(conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM holds
             WHERE announced = 0 AND released_at IS NULL AND expires_at <= ?1
               AND (?2 IS NULL OR event_id = ?2))",
        )?
        .query_row(params![key(now_ms), event_id.map(key)], |r| r.get(0))?)
}

/// The newest change number of an event.
pub(super) fn last_seq(conn: &Connection, event_id: u64) -> Result<u64> {
    Ok(conn
        .prepare_cached("SELECT coalesce(max(seq), 0) FROM place_changes WHERE event_id = ?1")?
        .query_row([key(event_id)], |r| r.get::<_, i64>(0))? as u64)
}

/// How long changes are kept for watchers catching up.
const KEEP_CHANGES_MS: u64 = 24 * 3600 * 1000;

/// How often old changes are cleared.
const PRUNE_EVERY_MS: u64 = 60_000;

fn query_changes(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<(u64, PlaceChange)>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params, |r| Ok(change_from(r)))?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row??);
    }
    Ok(out)
}

impl SqliteStorage {
    pub(super) fn changes_of(
        &self,
        event_id: u64,
        after: u64,
        limit: usize,
    ) -> Result<Vec<PlaceChange>> {
        let conn = self.read();
        let rows = query_changes(
            &conn,
            &format!(
                "SELECT {CHANGE_COLUMNS} FROM place_changes
                 WHERE event_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
            ),
            params![key(event_id), key(after), limit.min(10_000) as i64],
        )?;
        Ok(rows.into_iter().map(|(_, c)| c).collect())
    }

    pub(super) fn all_changes_after(
        &self,
        cursor: u64,
        limit: usize,
    ) -> Result<(u64, Vec<PlaceChange>)> {
        let conn = self.read();
        let rows = query_changes(
            &conn,
            &format!(
                "SELECT {CHANGE_COLUMNS} FROM place_changes WHERE id > ?1 ORDER BY id LIMIT ?2"
            ),
            params![key(cursor), limit.min(10_000) as i64],
        )?;
        let next = rows.last().map_or(cursor, |(id, _)| *id);
        Ok((next, rows.into_iter().map(|(_, c)| c).collect()))
    }

    pub(super) fn newest_change(&self) -> Result<u64> {
        let conn = self.read();
        Ok(conn
            .prepare_cached("SELECT max(id) FROM place_changes")?
            .query_row([], |r| r.get::<_, Option<i64>>(0))
            .optional()?
            .flatten()
            .unwrap_or(0) as u64)
    }

    pub(super) fn announce_all(&self, now_ms: u64) -> Result<usize> {
        use std::sync::atomic::Ordering::Relaxed;
        // Most seconds there is nothing to tell: no write for that.
        let due = expiry_due(&self.read(), None, now_ms)?;
        // Old changes are cleared once a minute, whatever else happens.
        let last = self.pruned_at.load(Relaxed);
        let prune = now_ms.saturating_sub(last) >= PRUNE_EVERY_MS
            && self
                .pruned_at
                .compare_exchange(last, now_ms, Relaxed, Relaxed)
                .is_ok();
        if !due && !prune {
            return Ok(0);
        }
        self.write(|tx| {
            let n = if due {
                announce_expired_in(tx, None, now_ms)?
            } else {
                0
            };
            if prune {
                // Changes older than a day go (a watcher that far behind
                // gets a snapshot), but each event keeps its newest, so its
                // numbers never start again. Only the oldest rows are read
                // (ids grow with time: those before the first one young
                // enough to stay), never the whole table.
                tx.prepare_cached(
                    "DELETE FROM place_changes WHERE id IN (
                         SELECT c.id FROM place_changes c
                         WHERE c.id < coalesce(
                                 (SELECT id FROM place_changes WHERE at >= ?1 ORDER BY id LIMIT 1),
                                 (SELECT max(id) + 1 FROM place_changes))
                           AND c.at < ?1
                           AND c.seq < (SELECT max(seq) FROM place_changes p
                                        WHERE p.event_id = c.event_id)
                         ORDER BY c.id LIMIT 10000)",
                )?
                .execute([key(now_ms.saturating_sub(KEEP_CHANGES_MS))])?;
            }
            Ok(n)
        })
    }
}
