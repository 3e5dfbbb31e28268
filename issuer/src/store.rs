//! The issuer's data directory: `issuer.db` (SQLite, WAL) and `keys/`.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use crate::Error;

/// Schema migrations, applied in order; `PRAGMA user_version` counts how many ran.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_keys_events_tickets.sql"),
    include_str!("../migrations/0002_catalogue.sql"),
    include_str!("../migrations/0003_search.sql"),
    include_str!("../migrations/0004_inventory.sql"),
    include_str!("../migrations/0005_orders.sql"),
    include_str!("../migrations/0006_order_tickets.sql"),
    include_str!("../migrations/0007_revocations.sql"),
    include_str!("../migrations/0008_hold_clients.sql"),
    include_str!("../migrations/0009_place_changes.sql"),
    include_str!("../migrations/0010_outbox.sql"),
    include_str!("../migrations/0011_void_tickets.sql"),
    include_str!("../migrations/0012_free_places.sql"),
    include_str!("../migrations/0013_payment_method.sql"),
    include_str!("../migrations/0014_buyer_cancellation.sql"),
    include_str!("../migrations/0015_places_by_hold_items.sql"),
    include_str!("../migrations/0016_orders_by_batch_and_event.sql"),
];

/// An opened data directory.
pub struct Store {
    pub(crate) conn: Connection,
    dir: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the data directory and brings its schema up to date.
    /// The directory and the database (which holds every ticket's code) are
    /// readable by their owner only.
    pub fn open(dir: &Path) -> Result<Store, Error> {
        Ok(Store {
            conn: open_db(dir)?,
            dir: dir.to_owned(),
        })
    }

    /// Opens a data directory that must exist already: what commands that
    /// only read use, so a mistyped `--data` is an error, not a new shop.
    pub fn open_existing(dir: &Path) -> Result<Store, Error> {
        if !dir.join("issuer.db").exists() {
            return Err(Error::Invalid(format!(
                "{} is not an issuer data directory (no issuer.db): check --data, or create one \
                 with `issuer --data {} events add ...` or `keys generate`",
                dir.display(),
                dir.display()
            )));
        }
        Store::open(dir)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.dir.join("keys")
    }
}

/// Opens (creating if needed) the data directory's database, private to its
/// owner, with its schema brought up to date.
pub(crate) fn open_db(dir: &Path) -> Result<Connection, Error> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(dir, e))?;
    // Processes opening one directory at once (several `serve` on one
    // PostgreSQL database, a command beside a server) set it up in turn:
    // SQLite may refuse at once, not wait, a connection that finds another
    // making the file WAL.
    let lock_path = dir.join("issuer.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|e| Error::io(&lock_path, e))?;
    lock.lock().map_err(|e| Error::io(&lock_path, e))?;
    let path = dir.join("issuer.db");
    private_file(&path).map_err(|e| Error::io(&path, e))?;
    let setup = || -> rusqlite::Result<Connection> {
        let conn = Connection::open(&path)?;
        // First: another process opening the directory at once may hold
        // the file a moment (making it WAL, migrating).
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        // Pages kept in memory: up to 32 MiB a connection (an event's
        // places and holds are read again and again).
        conn.pragma_update(None, "cache_size", -32768)?;
        // Temporary files in memory: above all the journal each savepoint
        // keeps of the pages its change touches (the writer opens one a
        // change), which would otherwise be written to a file page by page.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        // Statements are compiled once per connection and kept: the hot
        // paths use some forty.
        conn.set_prepared_statement_cache_capacity(256);
        // A statement's plan never hangs on the values bound to it (else
        // SQLite compiles it again for each new value of a LIMIT or of a
        // column a partial index is on, three times a hold).
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        )?;
        Ok(conn)
    };
    let mut conn = setup().map_err(|e| match e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::NotADatabase => {
            Error::Invalid(format!(
                "{} is not an issuer database (the file is not SQLite, or is damaged): \
                 check --data, or restore the file from a backup",
                path.display()
            ))
        }
        e => Error::Db(e),
    })?;
    migrate(&mut conn, &path)?;
    drop(lock);
    Ok(conn)
}

/// Applies the migrations not yet applied, each in a transaction that
/// reads the schema's version once it has the database to itself: processes
/// opening one data directory at once take turns, and each migration runs
/// once.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), Error> {
    loop {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let applied: usize = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if applied > MIGRATIONS.len() {
            return Err(Error::Invalid(format!(
                "{} was written by a newer issuer (schema {applied}, this one knows {}); upgrade the issuer",
                path.display(),
                MIGRATIONS.len()
            )));
        }
        let Some(sql) = MIGRATIONS.get(applied) else {
            return Ok(());
        };
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", applied + 1)?;
        tx.commit()?;
    }
}

/// A 32-byte secret kept in `path` (its owner's only), made at random the
/// first time.
pub fn secret_key_file(path: &Path) -> std::io::Result<[u8; 32]> {
    use rand_core::{OsRng, RngCore};
    match std::fs::read(path) {
        Ok(bytes) => bytes.try_into().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is not a 32-byte key", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            OsRng.fill_bytes(&mut key);
            write_private(path, &key)?;
            Ok(key)
        }
        Err(e) => Err(e),
    }
}

/// Writes `bytes` to a new file at `path`, readable by its owner only
/// from the start.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Creates `path` readable by its owner only, or makes it so if it exists,
/// never opening a file that exists ([`gate_sync::private_file`]).
pub(crate) fn private_file(path: &Path) -> std::io::Result<()> {
    gate_sync::private_file(path)
}
