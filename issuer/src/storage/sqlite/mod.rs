//! The embedded backend: the data directory's `issuer.db` (SQLite, WAL).

mod catalogue;
mod changes;
mod inventory;
mod orders;
mod outbox;

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, Row};

use super::{OrganizerId, Result, StorageError, Venue};
use crate::domain::catalogue::{
    Category, Event, EventStatus, Genre, NewCategory, NewEvent, NewVenue, Places,
};
use crate::domain::pricing::Pricing;

/// Most events one listing returns.
pub const MAX_LIST: usize = 200;

pub struct SqliteStorage {
    conn: Mutex<Connection>,
    /// The data directory, whose `keys/` sign tickets.
    dir: std::path::PathBuf,
}

impl From<rusqlite::Error> for StorageError {
    fn from(e: rusqlite::Error) -> StorageError {
        StorageError::Backend(e.to_string())
    }
}

impl From<serde_json::Error> for StorageError {
    fn from(e: serde_json::Error) -> StorageError {
        StorageError::Backend(format!("stored JSON: {e}"))
    }
}

/// SQLite integers are signed: ids and times beyond are never stored.
pub(super) fn key(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(super) const EVENT_COLUMNS: &str = "id, name, description, performers, genre, venue_id, starts_at, \
     ends_at, status, city, organizer_id";

impl SqliteStorage {
    /// Opens (creating) the data directory's database.
    pub fn open(dir: &Path) -> std::result::Result<SqliteStorage, crate::Error> {
        Ok(SqliteStorage {
            conn: Mutex::new(crate::store::open_db(dir)?),
            dir: dir.to_owned(),
        })
    }

    pub(super) fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The event with its organizer, whoever may see it.
    pub(super) fn event_row(
        conn: &Connection,
        id: u64,
    ) -> Result<Option<(Event, Option<OrganizerId>)>> {
        conn.query_row(
            &format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = ?1"),
            [key(id)],
            |r| Ok(event_of(r)),
        )
        .optional()?
        .transpose()
    }

    /// An event of organizer `by`'s, or not found.
    pub(super) fn own_event(conn: &Connection, by: OrganizerId, id: u64) -> Result<Event> {
        match Self::event_row(conn, id)? {
            Some((event, Some(owner))) if owner == by => Ok(event),
            _ => Err(StorageError::NotFound(format!("event {id}"))),
        }
    }
}

/// A venue of organizer `by`'s, or not found.
pub(super) fn own_venue(conn: &Connection, by: OrganizerId, id: u64) -> Result<Venue> {
    match venue_of(conn, id)? {
        Some(v) if v.organizer_id == by => Ok(v),
        _ => Err(StorageError::NotFound(format!("venue {id}"))),
    }
}

pub(super) fn venue_of(conn: &Connection, id: u64) -> Result<Option<Venue>> {
    let row = conn
        .query_row(
            "SELECT id, organizer_id, name, city, address, plan FROM venues WHERE id = ?1",
            [key(id)],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                ))
            },
        )
        .optional()?;
    let Some((id, organizer_id, name, city, address, plan)) = row else {
        return Ok(None);
    };
    Ok(Some(Venue {
        id: id as u64,
        organizer_id: organizer_id as u64,
        info: NewVenue {
            name,
            city,
            address,
            plan: serde_json::from_str(&plan)?,
        },
    }))
}

/// An event row (in [`EVENT_COLUMNS`]' order) and its organizer.
pub(super) fn event_of(r: &Row<'_>) -> Result<(Event, Option<OrganizerId>)> {
    let genre: String = r.get(4)?;
    let status: String = r.get(8)?;
    let performers: String = r.get(3)?;
    let event = Event {
        id: r.get::<_, i64>(0)? as u64,
        info: NewEvent {
            name: r.get(1)?,
            description: r.get(2)?,
            performers: serde_json::from_str(&performers)?,
            genre: Genre::parse(&genre).unwrap_or(Genre::Other),
            venue_id: r.get::<_, Option<i64>>(5)?.unwrap_or(0) as u64,
            starts_at: r.get::<_, i64>(6)? as u64,
            ends_at: r.get::<_, i64>(7)? as u64,
        },
        status: EventStatus::parse(&status)
            .ok_or_else(|| StorageError::Backend(format!("event status {status:?}")))?,
        city: r.get(9)?,
    };
    Ok((event, r.get::<_, Option<i64>>(10)?.map(|o| o as u64)))
}

pub(super) fn category_of(r: &Row<'_>) -> Result<Category> {
    let name: String = r.get(2)?;
    let pricing: String = r.get(3)?;
    let places: String = r.get(4)?;
    Ok(Category {
        id: r.get::<_, i64>(0)? as u64,
        event_id: r.get::<_, i64>(1)? as u64,
        info: NewCategory {
            name,
            pricing: serde_json::from_str::<Pricing>(&pricing)?,
            places: serde_json::from_str::<Places>(&places)?,
            sale_starts: r.get::<_, i64>(5)? as u64,
            sale_ends: r.get::<_, i64>(6)? as u64,
            per_order: r.get(7)?,
        },
    })
}
