//! The backend beyond one machine: PostgreSQL, shared by any number of
//! issuer processes (`issuer serve --database postgres://...`).
//!
//! Every method is written once, async, on a pool of connections
//! ([`pool`]); the blocking methods of the storage traits [`wait`] on it.
//! Whatever decides between buyers is decided by the database in one
//! transaction, never by a process's memory, so processes need not know
//! of each other.
//!
//! [`wait`]: crate::storage::wait

mod catalogue;
mod changes;
mod gather;
mod holds;
mod inventory;
pub mod moving;
mod notify;
mod orders;
mod outbox;
mod pool;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_postgres::Row;

use super::rows::Cells;
use super::{Result, StorageError, wait};
pub(crate) use pool::Conn;

/// Schema migrations, applied in order, each once; `schema_migrations`
/// says which ran.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_schema.sql"),
    include_str!("migrations/0002_feed_sequenced.sql"),
    include_str!("migrations/0003_places_in_place.sql"),
    include_str!("migrations/0004_shop_keys.sql"),
    include_str!("migrations/0005_lighter_sales.sql"),
    include_str!("migrations/0006_found_by_index.sql"),
    include_str!("migrations/0007_numbers_indexed_once_given.sql"),
];

/// The advisory lock processes starting at once take turns on to migrate.
const MIGRATION_LOCK: i64 = 0x6973_7375_6572; // "issuer"

/// How often a transaction in another's way is run again.
const TRIES: usize = 3;

/// Connections each process keeps at most.
/// (`ISSUER_DATABASE_CONNECTIONS` sets it, 2 to 256: a database server
/// of many cores may take more from each process.)
const POOL_SIZE: usize = 16;

/// The connections each process keeps at most.
fn pool_size() -> usize {
    std::env::var("ISSUER_DATABASE_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        // Two at least: one may be held by `exclusively` while its caller
        // works through another.
        .filter(|n| (2..=256).contains(n))
        .unwrap_or(POOL_SIZE)
}

/// The PostgreSQL backend. Cloning it is cheap (one pool, shared).
#[derive(Clone)]
pub struct PgStorage(Arc<Inner>);

impl std::ops::Deref for PgStorage {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

pub struct Inner {
    pool: pool::Pool,
    /// Where work that must outlive its caller runs (a release, a payment).
    runtime: tokio::runtime::Handle,
    /// Seated categories' rows, by category.
    rows: std::sync::Mutex<std::collections::HashMap<u64, Arc<Vec<usize>>>>,
    /// When the fan-out last numbered changes.
    sequenced_at: std::sync::Mutex<Option<std::time::Instant>>,
    /// When this process's holds last told of lapsed holds, by event
    /// (unix ms).
    announced: std::sync::Mutex<std::collections::HashMap<u64, u64>>,
    /// Seated categories' free seats, as this process last saw them.
    free: std::sync::Mutex<std::collections::HashMap<u64, inventory::FreeSeats>>,
    /// Events with their categories, as this process's holds last read
    /// them (`inventory::hold_in`: a hold goes by its copy and reads them
    /// again with its first statement).
    catalogue: std::sync::Mutex<std::collections::HashMap<u64, inventory::EventCopy>>,
    /// Holds asked for, made in batches by event (`holds`).
    holds: holds::Holds,
    /// Releases asked for, made in batches (`inventory`).
    releases: inventory::Releases,
    /// Turns of the releases made alone, waiting for a locked hold.
    waiting_releases: tokio::sync::Semaphore,
    /// When old live-feed changes were last cleared (unix ms).
    pruned_at: std::sync::atomic::AtomicU64,
    /// Wakes the task telling other processes of changes (`notify`).
    told: std::sync::OnceLock<Arc<tokio::sync::Notify>>,
    /// The data directory, whose `keys/` sign tickets (keys never go into
    /// the database).
    dir: PathBuf,
    /// The runtime driving the connections, when none was running where
    /// the storage was opened (the command line, tests).
    _runtime: Option<Runtime>,
}

/// A runtime of the storage's own, stopped without waiting when dropped
/// (it may be dropped on an async task's thread).
struct Runtime(Option<tokio::runtime::Runtime>);

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl From<tokio_postgres::Error> for StorageError {
    fn from(e: tokio_postgres::Error) -> StorageError {
        // The server's own message says what went wrong; the rest is the
        // connection's, lost or closed: the server is away.
        match e.as_db_error() {
            Some(db) if passing(db.code()) => {
                StorageError::Unavailable(format!("{}: {}", db.code().code(), db.message()))
            }
            // Text the database cannot store (a NUL): the request's fault.
            Some(db) if matches!(db.code().code(), "22021" | "22P05") => nul_refused(),
            Some(db) => StorageError::Backend(format!("{}: {}", db.code().code(), db.message())),
            None if e.is_closed()
                || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>()) =>
            {
                StorageError::Unavailable(e.to_string())
            }
            None => StorageError::Backend(e.to_string()),
        }
    }
}

/// Text holding a character the database cannot store (a NUL): the
/// request's fault.
pub(super) fn nul_refused() -> StorageError {
    StorageError::Invalid("the text holds a character that cannot be stored (NUL)".into())
}

/// Whether a server's error is of the moment, not of the request: the
/// server shutting down or short of connections, or transactions in each
/// other's way (`40001`, `40P01`, tried again first by [`PgStorage::transaction`]).
fn passing(code: &tokio_postgres::error::SqlState) -> bool {
    let code = code.code();
    // 55P03: a lock not had in time; 57014: a statement cancelled by
    // its time limit; 25006: a server become read-only (a failover).
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57P")
        || matches!(code, "40001" | "40P01" | "55P03" | "57014" | "25006")
}

/// Whether a transaction failed only for being in another's way, and
/// is worth running again at once.
fn in_the_way(e: &StorageError) -> bool {
    matches!(e, StorageError::Unavailable(m) if m.starts_with("40001:") || m.starts_with("40P01:"))
}

/// The connection settings of `url` (a `postgres://` URL or
/// `host=... dbname=...`).
pub fn config(url: &str) -> std::result::Result<tokio_postgres::Config, crate::Error> {
    url.parse()
        .map_err(|e| crate::Error::Invalid(format!("the database address: {e}")))
}

impl PgStorage {
    /// Connects to the database at `url` and brings its schema up to date;
    /// `dir` is the data directory, whose keys sign tickets. Connections
    /// run on the runtime this is called on.
    pub async fn open(url: &str, dir: &Path) -> std::result::Result<PgStorage, crate::Error> {
        Self::open_with(config(url)?, dir).await
    }

    /// [`PgStorage::open`] with settings made already (a password read
    /// from a file, say).
    pub async fn open_with(
        config: tokio_postgres::Config,
        dir: &Path,
    ) -> std::result::Result<PgStorage, crate::Error> {
        let storage = Self::new(config, dir, tokio::runtime::Handle::current(), None);
        storage.migrate().await.map_err(migration_failed)?;
        Ok(storage)
    }

    /// [`PgStorage::open`] for a caller with no runtime (the command line,
    /// tests): the storage runs one of its own.
    pub fn open_blocking(url: &str, dir: &Path) -> std::result::Result<PgStorage, crate::Error> {
        Self::open_blocking_with(config(url)?, dir)
    }

    /// [`PgStorage::open_blocking`] with settings made already.
    pub fn open_blocking_with(
        config: tokio_postgres::Config,
        dir: &Path,
    ) -> std::result::Result<PgStorage, crate::Error> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("postgres")
            .enable_all()
            .build()
            .map_err(|e| crate::Error::Invalid(format!("starting the database's runtime: {e}")))?;
        let handle = rt.handle().clone();
        let storage = Self::new(config, dir, handle.clone(), Some(Runtime(Some(rt))));
        handle
            .block_on(storage.migrate())
            .map_err(migration_failed)?;
        Ok(storage)
    }

    fn new(
        config: tokio_postgres::Config,
        dir: &Path,
        handle: tokio::runtime::Handle,
        runtime: Option<Runtime>,
    ) -> PgStorage {
        PgStorage(Arc::new(Inner {
            pool: pool::Pool::new(config, handle.clone(), pool_size()),
            runtime: handle,
            rows: std::sync::Mutex::default(),
            free: std::sync::Mutex::default(),
            catalogue: std::sync::Mutex::default(),
            holds: holds::gathered(),
            releases: inventory::releases(),
            waiting_releases: tokio::sync::Semaphore::new(inventory::WAITING_RELEASES),
            announced: std::sync::Mutex::default(),
            sequenced_at: std::sync::Mutex::default(),
            pruned_at: std::sync::atomic::AtomicU64::new(0),
            told: std::sync::OnceLock::new(),
            dir: dir.to_owned(),
            _runtime: runtime,
        }))
    }

    /// The plan of each statement the pool's idle connections keep
    /// prepared and run by one plan: (statement, plan as `EXPLAIN (FORMAT
    /// JSON)` shows it). Blocks.
    pub fn kept_plans(&self) -> Result<Vec<(String, String)>> {
        wait(self.pool.kept_plans())
    }

    /// Runs `f` while holding the database-wide lock `name`: one process
    /// at a time (setting up a new shop, say). Blocks; not for async code.
    pub fn exclusively<T>(&self, name: &str, f: impl FnOnce() -> T) -> Result<T> {
        let lock = i64::from_be_bytes(*b"issuer\0\0")
            ^ name.len() as i64
            ^ name
                .bytes()
                .fold(0i64, |h, b| h.wrapping_mul(31).wrapping_add(i64::from(b)));
        // Held by a transaction: a caller that fails half-way leaves no
        // lock behind (a connection dropped mid-transaction is closed).
        let mut c = wait(self.pool.get())?;
        wait(c.begin())?;
        // Its caller may take its time (a new shop's places), idle here.
        wait(c.batch(
            "SET LOCAL lock_timeout = 0; SET LOCAL idle_in_transaction_session_timeout = 0",
        ))?;
        wait(c.execute("SELECT pg_advisory_xact_lock($1)", &[&lock]))?;
        let out = f();
        wait(c.end(Ok(())))?;
        Ok(out)
    }

    /// Applies the migrations not yet applied, one process at a time.
    async fn migrate(&self) -> Result<()> {
        let mut c = self.pool.get().await?;
        c.begin().await?;
        let done = async {
            // Migrations may take their time (a big shop's tables).
            c.batch("SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0")
                .await?;
            // Even the table of versions is made under the lock: two
            // `CREATE TABLE IF NOT EXISTS` at once may both try.
            c.client()
                .await?
                .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await?;
            c.client()
                .await?
                .batch_execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (
                         version    INTEGER PRIMARY KEY,
                         applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
                     )",
                )
                .await?;
            let applied: i32 = c
                .client()
                .await?
                .query_one(
                    "SELECT coalesce(max(version), 0) FROM schema_migrations",
                    &[],
                )
                .await?
                .get(0);
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied.max(0) as usize) {
                c.client().await?.batch_execute(sql).await?;
                c.client()
                    .await?
                    .execute(
                        "INSERT INTO schema_migrations (version) VALUES ($1)",
                        &[&(i as i32 + 1)],
                    )
                    .await?;
            }
            Ok::<_, StorageError>(())
        }
        .await;
        c.end(done).await
    }

    /// A connection from the pool.
    pub(crate) async fn conn(&self) -> Result<Conn> {
        self.pool.get().await
    }

    /// Runs `f` as one transaction: committed if it returns `Ok`, rolled
    /// back if not.
    /// A transaction that a deadlock or a serialization failure broke is
    /// run again, a few times.
    pub(crate) async fn transaction<T>(
        &self,
        f: impl AsyncFnOnce(&mut Conn) -> Result<T> + Clone,
    ) -> Result<T> {
        self.run(true, f).await
    }

    /// Runs `f`, whose one statement that writes is a transaction of its
    /// own (no BEGIN, no COMMIT: one round trip); run again, a few times,
    /// if a deadlock or a serialization failure broke it.
    pub(crate) async fn alone<T>(
        &self,
        f: impl AsyncFnOnce(&mut Conn) -> Result<T> + Clone,
    ) -> Result<T> {
        self.run(false, f).await
    }

    /// [`PgStorage::transaction`] if `begin`, else [`PgStorage::alone`].
    async fn run<T>(
        &self,
        begin: bool,
        f: impl AsyncFnOnce(&mut Conn) -> Result<T> + Clone,
    ) -> Result<T> {
        let mut tries = 0;
        loop {
            let mut c = self.pool.get().await?;
            if begin {
                c.begin().await?;
            }
            let out = f.clone()(&mut c).await;
            let freed = std::mem::take(&mut c.freed);
            let chosen = std::mem::take(&mut c.chosen);
            let out = if begin { c.end(out).await } else { out };
            // Seats chosen by a transaction that failed are free again to
            // this process's buyers (taken meanwhile, they cost a try).
            match out {
                Ok(v) => {
                    self.mark_free(&freed);
                    return Ok(v);
                }
                Err(e) if in_the_way(&e) && tries < TRIES => {
                    self.mark_free(&chosen);
                    tries += 1;
                }
                out => {
                    self.mark_free(&chosen);
                    return out;
                }
            }
        }
    }

    /// What the shop's processes hold in their data directories, as
    /// recorded: the order links' key's fingerprint, and the signing keys'
    /// ids. Blocks.
    pub fn shop_keys(&self) -> Result<(Option<String>, Vec<String>)> {
        wait(async {
            let mut c = self.conn().await?;
            let rows = c
                .query(
                    "SELECT kind, fingerprint FROM shop_keys ORDER BY fingerprint",
                    &[],
                )
                .await?;
            let of = |kind: &str| {
                rows.iter()
                    .filter(|r| r.get::<_, &str>(0) == kind)
                    .map(|r| r.get::<_, String>(1))
                    .collect::<Vec<_>>()
            };
            Ok((of("order-links").into_iter().next(), of("signing")))
        })
    }

    /// Records the keys of this process's data directory (see
    /// [`PgStorage::shop_keys`]). Blocks.
    pub fn record_keys(&self, links: &str, signing: &str) -> Result<()> {
        wait(self.transaction(async |c| {
            c.execute(
                "INSERT INTO shop_keys (kind, fingerprint)
                 VALUES ('order-links', $1), ('signing', $2) ON CONFLICT DO NOTHING",
                &[&links, &signing],
            )
            .await?;
            Ok(())
        }))
    }

    /// The data directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

fn migration_failed(e: StorageError) -> crate::Error {
    crate::Error::Invalid(format!("bringing the database's schema up to date: {e}"))
}

/// Runs `sql` (any statements) on the database at `url`, from a caller
/// with no runtime: for tests and setup scripts.
#[doc(hidden)]
pub fn admin(url: &str, sql: &str) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StorageError::Backend(e.to_string()))?;
    rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        let driver = tokio::spawn(connection);
        let out = client.batch_execute(sql).await;
        drop(client);
        let _ = driver.await;
        Ok(out?)
    })
}

/// SQL integers are signed: ids and times beyond are never stored.
pub(crate) fn key(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Cells for Row {
    fn int(&self, i: usize) -> Result<i64> {
        Ok(self.try_get(i)?)
    }

    fn opt_int(&self, i: usize) -> Result<Option<i64>> {
        Ok(self.try_get(i)?)
    }

    fn text(&self, i: usize) -> Result<String> {
        Ok(self.try_get(i)?)
    }
}

/// A row read `.1` columns on: the columns of one table after another's.
pub(super) struct Shifted<'a>(pub &'a Row, pub usize);

impl Cells for Shifted<'_> {
    fn int(&self, i: usize) -> Result<i64> {
        Ok(self.0.try_get(i + self.1)?)
    }

    fn opt_int(&self, i: usize) -> Result<Option<i64>> {
        Ok(self.0.try_get(i + self.1)?)
    }

    fn text(&self, i: usize) -> Result<String> {
        Ok(self.0.try_get(i + self.1)?)
    }
}
