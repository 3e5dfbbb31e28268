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

/// Connections kept for reads beside the writer.
const READERS: usize = 3;

/// Which reader a read waits for when all are busy.
static READ_TURN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Most events one listing returns.
pub const MAX_LIST: usize = 200;

pub struct SqliteStorage {
    /// The one connection that writes (SQLite lets one writer in at a
    /// time), and reads that must see what it has not committed yet.
    conn: Mutex<Connection>,
    /// Connections for reads alone: in WAL mode they read beside the
    /// writer, each what was committed when its read began.
    readers: Vec<Mutex<Connection>>,
    /// The data directory, whose `keys/` sign tickets.
    dir: std::path::PathBuf,
    /// Seated categories' rows, by category ([`SqliteStorage::rows_of`]).
    rows: Mutex<std::collections::HashMap<u64, std::sync::Arc<Vec<usize>>>>,
    /// Group commit ([`SqliteStorage::write`]).
    group: Mutex<Group>,
    committed: std::sync::Condvar,
    /// Writers waiting for the writer connection.
    queued: std::sync::atomic::AtomicUsize,
}

/// The writer connection's open batch of changes, if any.
#[derive(Default)]
struct Group {
    /// A batch is open (`BEGIN IMMEDIATE` ran and no `COMMIT` yet).
    open: bool,
    /// The number of the open (or last) batch.
    batch: u64,
    /// The last batch committed, or given up.
    done: u64,
    /// Why the last batch given up was given up.
    failed: Option<(u64, String)>,
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
     ends_at, status, city, organizer_id, buyers_cancel_until";

impl SqliteStorage {
    /// Opens (creating) the data directory's database.
    pub fn open(dir: &Path) -> std::result::Result<SqliteStorage, crate::Error> {
        Ok(SqliteStorage {
            conn: Mutex::new(crate::store::open_db(dir)?),
            readers: (0..READERS)
                .map(|_| crate::store::open_db(dir).map(Mutex::new))
                .collect::<std::result::Result<_, _>>()?,
            dir: dir.to_owned(),
            rows: Mutex::default(),
            group: Mutex::default(),
            committed: std::sync::Condvar::new(),
            queued: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// The writer connection, with no batch open: for the rare writes that
    /// run their own transaction (the catalogue's).
    pub(super) fn conn(&self) -> MutexGuard<'_, Connection> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        self.commit_open(&conn);
        conn
    }

    fn group(&self) -> MutexGuard<'_, Group> {
        self.group.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Commits the open batch, if any, and tells its writers.
    fn commit_open(&self, conn: &Connection) {
        let g = self.group();
        if !g.open {
            return;
        }
        let batch = g.batch;
        drop(g);
        let committed = conn.execute_batch("COMMIT");
        let mut g = self.group();
        g.open = false;
        g.done = batch;
        if let Err(e) = committed {
            // Whatever the batch did is undone: every writer of it is told.
            let _ = conn.execute_batch("ROLLBACK");
            g.failed = Some((batch, e.to_string()));
        }
        drop(g);
        self.committed.notify_all();
    }

    /// Runs `f` as one all-or-nothing change, and returns once it is on
    /// disk. Changes made at the same moment share a commit (group commit):
    /// each runs in its own savepoint of one transaction, and the writer
    /// that finds no one waiting behind it commits them all, one wait for
    /// the disk for the lot. A change that fails is undone alone.
    pub(super) fn write<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        use std::sync::atomic::Ordering::SeqCst;
        self.queued.fetch_add(1, SeqCst);
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        self.queued.fetch_sub(1, SeqCst);
        let batch = {
            let mut g = self.group();
            if !g.open {
                if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
                    return Err(e.into());
                }
                g.open = true;
                g.batch += 1;
            }
            g.batch
        };
        conn.execute_batch("SAVEPOINT change")?;
        let out = f(&conn);
        let closed = match &out {
            Ok(_) => conn.execute_batch("RELEASE change"),
            Err(_) => conn.execute_batch("ROLLBACK TO change; RELEASE change"),
        };
        if let Err(e) = closed {
            // The batch is in an unknown state: it is given up whole.
            let _ = conn.execute_batch("ROLLBACK");
            let mut g = self.group();
            g.open = false;
            g.done = batch;
            g.failed = Some((batch, e.to_string()));
            drop(g);
            self.committed.notify_all();
            return Err(e.into());
        }
        if self.queued.load(SeqCst) == 0 {
            self.commit_open(&conn);
            drop(conn);
        } else {
            // The next writer carries the batch on, and one of them
            // commits it.
            drop(conn);
            let mut g = self.group();
            while g.done < batch {
                let (next, timeout) = self
                    .committed
                    .wait_timeout(g, std::time::Duration::from_secs(2))
                    .unwrap_or_else(|p| p.into_inner());
                g = next;
                if timeout.timed_out() && g.done < batch {
                    // No one came to commit (a writer stopped): do it.
                    drop(g);
                    drop(self.conn());
                    g = self.group();
                }
            }
        }
        let out = out?;
        match &self.group().failed {
            Some((b, why)) if *b == batch => Err(StorageError::Backend(format!("commit: {why}"))),
            _ => Ok(out),
        }
    }

    /// A connection to read with: a free reader if there is one, else the
    /// next in turn once it comes free.
    pub(super) fn read(&self) -> MutexGuard<'_, Connection> {
        for reader in &self.readers {
            match reader.try_lock() {
                Ok(guard) => return guard,
                Err(std::sync::TryLockError::Poisoned(p)) => return p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
        }
        let i = READ_TURN.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.readers.len();
        self.readers[i].lock().unwrap_or_else(|p| p.into_inner())
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
            buyers_cancel_until: r.get::<_, Option<i64>>(11)?.map(|t| t as u64),
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
