//! Events tickets are sold for.

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::{Error, Store};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: u64,
    pub name: String,
    /// Unix seconds.
    pub starts_at: u32,
    /// Unix seconds; keys retired before this still vouch for the event's tickets until then.
    pub ends_at: u32,
}

impl Event {
    fn check(&self) -> Result<(), Error> {
        if self.name.trim().is_empty() {
            return Err(Error::Invalid(format!(
                "event {} has an empty name",
                self.id
            )));
        }
        if self.ends_at < self.starts_at {
            return Err(Error::Invalid(format!(
                "event {} ends before it starts",
                self.id
            )));
        }
        // SQLite integers are signed 64-bit.
        if i64::try_from(self.id).is_err() {
            return Err(Error::Invalid(format!(
                "event id {} is too large (at most {})",
                self.id,
                i64::MAX
            )));
        }
        Ok(())
    }
}

/// Adds an event, or updates the one with the same id.
pub fn upsert(store: &Store, event: &Event) -> Result<(), Error> {
    event.check()?;
    write(&store.conn, event)
}

fn write(conn: &rusqlite::Connection, e: &Event) -> Result<(), Error> {
    conn.execute(
        "INSERT INTO events (id, name, starts_at, ends_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(id) DO UPDATE SET name = excluded.name, starts_at = excluded.starts_at, ends_at = excluded.ends_at",
        params![e.id as i64, e.name, e.starts_at, e.ends_at],
    )?;
    Ok(())
}

/// Adds or updates every event of a JSON list `[{id, name, starts_at, ends_at}]`,
/// all or none.
pub fn import(store: &mut Store, json: &str) -> Result<usize, Error> {
    let events: Vec<Event> = serde_json::from_str(json).map_err(|e| {
        Error::Invalid(format!(
            "events file is not a JSON list of {{id, name, starts_at, ends_at}}: {e}"
        ))
    })?;
    for e in &events {
        e.check()?;
    }
    let tx = store.conn.transaction()?;
    for e in &events {
        write(&tx, e)?;
    }
    tx.commit()?;
    Ok(events.len())
}

pub fn get(store: &Store, id: u64) -> Result<Event, Error> {
    let Ok(key) = i64::try_from(id) else {
        return Err(Error::UnknownEvent(id));
    };
    store
        .conn
        .query_row(
            "SELECT id, name, starts_at, ends_at FROM events WHERE id = ?1",
            [key],
            row_to_event,
        )
        .optional()?
        .ok_or(Error::UnknownEvent(id))
}

pub fn list(store: &Store) -> Result<Vec<Event>, Error> {
    let mut stmt = store
        .conn
        .prepare("SELECT id, name, starts_at, ends_at FROM events ORDER BY starts_at, id")?;
    let rows = stmt.query_map([], row_to_event)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn row_to_event(row: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
    Ok(Event {
        id: row.get::<_, i64>(0)? as u64,
        name: row.get(1)?,
        starts_at: row.get(2)?,
        ends_at: row.get(3)?,
    })
}
