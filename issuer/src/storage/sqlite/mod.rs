//! The embedded backend: the data directory's `issuer.db` (SQLite, WAL).
//!
//! Statements are kept compiled (`prepare_cached`), and their plans do not
//! hang on the values bound (the query planner stability guarantee): so a
//! query on the column of a partial index says the index's condition
//! outright (`hold = ?1 AND hold IS NOT NULL`), or the index is not used.

mod board;
mod catalogue;
mod changes;
mod inventory;
mod orders;
mod outbox;
mod writer;

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, Row};

use super::rows::{Cells, VENUE_COLUMNS, venue_from};
pub(super) use super::rows::{EVENT_COLUMNS, event_from};
use super::{OrganizerId, Result, StorageError, Venue};
use crate::domain::catalogue::{Category, Event};

/// Connections kept for reads beside the writer.
const READERS: usize = 3;

/// How long a category found short of places has holds checked before
/// the writer.
const SCARCE_FOR: std::time::Duration = std::time::Duration::from_secs(5);

/// Connections kept for quick reads from async tasks.
const QUICK: usize = 2;

/// Which reader a read waits for when all are busy.
static READ_TURN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub use super::MAX_LIST;

/// The embedded backend. Cloning it is cheap (one database, shared): a
/// change handed to the writer takes a clone along.
#[derive(Clone)]
pub struct SqliteStorage(std::sync::Arc<Inner>);

impl std::ops::Deref for SqliteStorage {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

pub struct Inner {
    /// The thread that makes every change ([`writer`]), with the writer
    /// connection.
    writer: writer::Writer,
    /// Connections for reads alone: in WAL mode they read beside the
    /// writer, each what was committed when its read began.
    readers: Vec<Mutex<Connection>>,
    /// Two more, for quick reads alone ([`SqliteStorage::quick_read`]).
    quick: Vec<Mutex<Connection>>,
    /// The data directory, whose `keys/` sign tickets.
    dir: std::path::PathBuf,
    /// Seated categories' rows, by category ([`SqliteStorage::rows_of`]).
    rows: Mutex<std::collections::HashMap<u64, std::sync::Arc<Vec<usize>>>>,
    /// When old live-feed changes were last cleared (unix ms).
    pruned_at: std::sync::atomic::AtomicU64,
    /// Events and their categories as holds read them
    /// ([`SqliteStorage::shelved`]).
    shelf: Mutex<Shelf>,
    /// Categories a hold lately found short of places, and when
    /// ([`SqliteStorage::scarce`]).
    scarce: Mutex<std::collections::HashMap<u64, std::time::Instant>>,
}

/// An event with its categories, by id.
pub(super) type Shelved = std::sync::Arc<(Event, std::collections::BTreeMap<u64, Category>)>;

#[derive(Default)]
struct Shelf {
    /// The writer connection's `PRAGMA data_version` they were read at.
    version: i64,
    events: std::collections::HashMap<u64, Shelved>,
}

/// Most events kept on the shelf.
const SHELF: usize = 256;

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

/// A change refused before it reached the writer.
pub(super) fn refused<T: Send + 'static>(why: StorageError) -> crate::storage::Pending<T> {
    Box::pin(std::future::ready(Err(why)))
}

/// SQLite integers are signed: ids and times beyond are never stored.
pub(super) fn key(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl SqliteStorage {
    /// Opens (creating) the data directory's database.
    pub fn open(dir: &Path) -> std::result::Result<SqliteStorage, crate::Error> {
        let writer = writer::Writer::new(crate::store::open_db(dir)?, crate::store::open_db(dir)?)?;
        Ok(SqliteStorage(std::sync::Arc::new(Inner {
            writer,
            readers: (0..READERS)
                .map(|_| crate::store::open_db(dir).map(Mutex::new))
                .collect::<std::result::Result<_, _>>()?,
            quick: (0..QUICK)
                .map(|_| crate::store::open_db(dir).map(Mutex::new))
                .collect::<std::result::Result<_, _>>()?,
            dir: dir.to_owned(),
            rows: Mutex::default(),
            pruned_at: std::sync::atomic::AtomicU64::new(0),
            shelf: Mutex::default(),
            scarce: Mutex::default(),
        })))
    }

    /// The writer connection between batches: for the rare writes that
    /// run their own transaction (the catalogue's).
    pub(super) fn conn(&self) -> MutexGuard<'_, Connection> {
        let conn = self.writer.conn();
        // What it writes may be an event or its categories.
        self.shelf
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .events
            .clear();
        conn
    }

    /// The event `id`, if there is one, with its categories, as the
    /// writer's transaction `tx` sees them: kept from one hold to the next
    /// while the catalogue does not change. Every catalogue write clears
    /// them ([`SqliteStorage::conn`]), and so does a write by any other
    /// connection (another process's: `PRAGMA data_version` tells). Only
    /// the writer calls it.
    pub(super) fn shelved(&self, tx: &Connection, id: u64) -> Result<Option<Shelved>> {
        let version: i64 = tx
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |r| r.get(0))?;
        let mut shelf = self.shelf.lock().unwrap_or_else(|p| p.into_inner());
        if shelf.version != version {
            shelf.events.clear();
            shelf.version = version;
        }
        if let Some(found) = shelf.events.get(&id) {
            return Ok(Some(found.clone()));
        }
        let Some((event, _)) = Self::event_row(tx, id)? else {
            return Ok(None);
        };
        let categories = catalogue::categories_of(tx, id)?
            .into_iter()
            .map(|c| (c.id, c))
            .collect();
        let found: Shelved = std::sync::Arc::new((event, categories));
        if shelf.events.len() >= SHELF {
            shelf.events.clear();
        }
        shelf.events.insert(id, found.clone());
        Ok(Some(found))
    }

    fn boards(&self) -> MutexGuard<'_, board::Boards> {
        self.writer.boards()
    }

    /// Makes `f` one all-or-nothing change, and returns once it is on disk
    /// ([`writer`]: changes made at the same moment share a commit).
    pub(super) fn write<T: Send>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send,
    ) -> Result<T> {
        self.writer.write(f)
    }

    /// Hands `f` to the writer as one all-or-nothing change, with this
    /// storage: what it returns resolves once the change is on disk.
    pub(super) fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce(&SqliteStorage, &Connection) -> Result<T> + Send + 'static,
    ) -> crate::storage::Pending<T> {
        let me = self.clone();
        Box::pin(self.writer.submit(move |tx| f(&me, tx), false))
    }

    /// [`SqliteStorage::submit`], for a change not worth making once its
    /// caller has gone (a hold or an order no one can be told of).
    pub(super) fn submit_unless_gone<T: Send + 'static>(
        &self,
        f: impl FnOnce(&SqliteStorage, &Connection) -> Result<T> + Send + 'static,
    ) -> crate::storage::Pending<T> {
        let me = self.clone();
        Box::pin(self.writer.submit(move |tx| f(&me, tx), true))
    }

    /// Notes that a hold found category `id` short of places.
    pub(super) fn short_of(&self, id: u64) {
        let mut scarce = self.scarce.lock().unwrap_or_else(|p| p.into_inner());
        if scarce.len() >= SHELF {
            scarce.clear();
        }
        scarce.insert(id, std::time::Instant::now());
    }

    /// Whether a hold found one of `categories` short of places within the
    /// last few seconds: only then is a hold checked against what is free
    /// before it goes to the writer.
    pub(super) fn scarce(&self, mut categories: impl Iterator<Item = u64>) -> bool {
        let scarce = self.scarce.lock().unwrap_or_else(|p| p.into_inner());
        !scarce.is_empty()
            && categories.any(|c| scarce.get(&c).is_some_and(|at| at.elapsed() < SCARCE_FOR))
    }

    /// A connection for reads of a few rows by index, made on an async
    /// task's thread, if one is free now: such a thread never waits for
    /// one. What is read so is only a shortcut, never needed: without it
    /// the writer decides.
    pub(super) fn quick_read(&self) -> Option<MutexGuard<'_, Connection>> {
        self.quick.iter().find_map(|c| match c.try_lock() {
            Ok(guard) => Some(guard),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        })
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
        conn.prepare_cached(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = ?1"))?
            .query_row([key(id)], |r| Ok(event_from(r)))
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
    conn.prepare_cached(&format!("SELECT {VENUE_COLUMNS} FROM venues WHERE id = ?1"))?
        .query_row([key(id)], |r| Ok(venue_from(r)))
        .optional()?
        .transpose()
}

impl Cells for Row<'_> {
    fn int(&self, i: usize) -> Result<i64> {
        Ok(self.get(i)?)
    }

    fn opt_int(&self, i: usize) -> Result<Option<i64>> {
        Ok(self.get(i)?)
    }

    fn text(&self, i: usize) -> Result<String> {
        Ok(self.get(i)?)
    }
}

#[cfg(test)]
mod group_commit {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn store() -> (tempfile::TempDir, Arc<SqliteStorage>) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStorage::open(dir.path()).unwrap();
        s.conn()
            .execute_batch(
                "CREATE TABLE t(x INTEGER);
                 CREATE TABLE p(id INTEGER PRIMARY KEY);
                 CREATE TABLE c(x INTEGER REFERENCES p(id) DEFERRABLE INITIALLY DEFERRED);",
            )
            .unwrap();
        (dir, Arc::new(s))
    }

    fn rows(s: &SqliteStorage) -> Option<String> {
        s.read()
            .prepare_cached("SELECT group_concat(x) FROM (SELECT x FROM t ORDER BY x)")
            .unwrap()
            .query_row([], |r| r.get(0))
            .unwrap()
    }

    fn count(s: &SqliteStorage, table: &str) -> usize {
        s.read()
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap() as usize
    }

    #[test]
    fn a_change_that_panics_is_undone_alone() {
        let (_d, s) = store();
        let s2 = s.clone();
        let panicked = std::thread::spawn(move || {
            s2.write(|c| -> Result<()> {
                c.prepare_cached("INSERT INTO t VALUES (1)")?.execute([])?;
                panic!("a bug mid-change")
            })
        })
        .join();
        assert!(panicked.is_err());
        s.write(|c| {
            c.prepare_cached("INSERT INTO t VALUES (2)")?.execute([])?;
            Ok(())
        })
        .unwrap();
        assert_eq!(rows(&s).as_deref(), Some("2"));
        // Behind a change that takes a while, one that panics: the first
        // is still committed, the second not.
        let sa = s.clone();
        let first = std::thread::spawn(move || {
            sa.write(|c| {
                c.prepare_cached("INSERT INTO t VALUES (10)")?.execute([])?;
                std::thread::sleep(std::time::Duration::from_millis(200));
                Ok(())
            })
            .is_ok()
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        let sb = s.clone();
        let second = std::thread::spawn(move || {
            sb.write(|c| -> Result<()> {
                c.prepare_cached("INSERT INTO t VALUES (20)")?.execute([])?;
                panic!("a bug mid-change")
            })
        });
        assert!(second.join().is_err());
        assert!(first.join().unwrap());
        assert_eq!(rows(&s).as_deref(), Some("2,10"));
    }

    #[test]
    fn an_awaited_change_that_panics_is_a_failure_undone_alone() {
        let (_d, s) = store();
        let sa = s.clone();
        let first = std::thread::spawn(move || {
            sa.write(|c| {
                c.prepare_cached("INSERT INTO t VALUES (10)")?.execute([])?;
                std::thread::sleep(std::time::Duration::from_millis(200));
                Ok(())
            })
            .is_ok()
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        // Queued behind the first, in the same batch.
        let panics = s.submit(|_, c| -> Result<()> {
            c.prepare_cached("INSERT INTO t VALUES (20)")?.execute([])?;
            panic!("a bug mid-change")
        });
        let after = s.submit(|_, c| {
            c.prepare_cached("INSERT INTO t VALUES (30)")?.execute([])?;
            Ok(7)
        });
        assert!(matches!(
            crate::storage::wait(panics),
            Err(StorageError::Backend(_))
        ));
        assert_eq!(crate::storage::wait(after).unwrap(), 7);
        assert!(first.join().unwrap());
        assert_eq!(rows(&s).as_deref(), Some("10,30"));
    }

    #[test]
    fn the_last_handle_may_go_with_a_change_on_the_writers_thread() {
        let (d, s) = store();
        let s = Arc::into_inner(s).unwrap();
        let pending = s.submit(|_, c| {
            std::thread::sleep(std::time::Duration::from_millis(100));
            c.prepare_cached("INSERT INTO t VALUES (1)")?.execute([])?;
            Ok(())
        });
        // The change holds the only handle left when it is made.
        drop(s);
        crate::storage::wait(pending).unwrap();
        // The writer let its connection go: the database opens again and
        // has the change.
        std::thread::sleep(std::time::Duration::from_millis(100));
        let again = SqliteStorage::open(d.path()).unwrap();
        assert_eq!(rows(&again).as_deref(), Some("1"));
    }

    #[test]
    fn no_change_is_told_done_unless_its_commit_was() {
        let (_d, s) = store();
        let (ok_bad, ok_good) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let writers: Vec<_> = (0..16)
            .map(|i| {
                let (s, ok_bad, ok_good) = (s.clone(), ok_bad.clone(), ok_good.clone());
                std::thread::spawn(move || {
                    for k in 0..150 {
                        // Half the changes break a deferred foreign key: their
                        // batch's commit fails, and all of it with it.
                        let bad = (i + k) % 2 == 0;
                        let sql = if bad {
                            "INSERT INTO c VALUES (999)"
                        } else {
                            "INSERT INTO t VALUES (1)"
                        };
                        // Half the callers block, half await.
                        let made = if i % 2 == 0 {
                            s.write(|c| Ok(c.execute(sql, [])?))
                        } else {
                            crate::storage::wait(s.submit(move |_, c| Ok(c.execute(sql, [])?)))
                        };
                        if made.is_ok() {
                            if bad { &ok_bad } else { &ok_good }.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        assert_eq!(ok_bad.load(Ordering::SeqCst), 0);
        assert_eq!(count(&s, "c"), 0);
        assert_eq!(ok_good.load(Ordering::SeqCst), count(&s, "t"));
    }
}
