//! The issuer's data directory: `issuer.db` (SQLite, WAL) and `keys/`.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use crate::Error;

/// Schema migrations, applied in order; `PRAGMA user_version` counts how many ran.
const MIGRATIONS: &[&str] = &[include_str!("../migrations/0001_keys_events_tickets.sql")];

/// An opened data directory.
pub struct Store {
    pub(crate) conn: Connection,
    dir: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the data directory and brings its schema up to date.
    pub fn open(dir: &Path) -> Result<Store, Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join("issuer.db");
        let mut conn = Connection::open(&path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn, &path)?;
        Ok(Store {
            conn,
            dir: dir.to_owned(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.dir.join("keys")
    }
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), Error> {
    let applied: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if applied > MIGRATIONS.len() {
        return Err(Error::Invalid(format!(
            "{} was written by a newer issuer (schema {applied}, this one knows {}); upgrade the issuer",
            path.display(),
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    Ok(())
}
