//! The node's SQLite store (WAL, `synchronous=FULL`): the grow-only set of
//! records, kept in memory too as a [`ScanLog`] for the derived views.

use std::path::Path;

use rusqlite::{Connection, params};
use shared::{DeviceId, ScanLog, ScanRecord};

const MIGRATIONS: &[&str] = &[include_str!("../migrations/0001_records.sql")];

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("stored record {device}/{idx} is damaged: {reason}")]
    Damaged {
        device: String,
        idx: i64,
        reason: String,
    },
}

pub struct Store {
    conn: Connection,
    log: ScanLog,
}

impl Store {
    /// Opens (creating) the store and loads every record.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let applied: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i + 1)?;
            tx.commit()?;
        }
        let mut log = ScanLog::new();
        {
            let mut stmt = conn.prepare("SELECT device_id, idx, body FROM records")?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let (device, idx, body): (String, i64, String) =
                    (row.get(0)?, row.get(1)?, row.get(2)?);
                let record: ScanRecord =
                    serde_json::from_str(&body).map_err(|e| StoreError::Damaged {
                        device,
                        idx,
                        reason: e.to_string(),
                    })?;
                log.insert(record);
            }
        }
        Ok(Store { conn, log })
    }

    pub fn log(&self) -> &ScanLog {
        &self.log
    }

    /// Adds a batch in one transaction; records already held change nothing
    /// (a conflicting record keeps the lesser, as the CRDT says). Returns how
    /// many records were new or changed.
    pub fn add(&mut self, records: &[ScanRecord], now_ms: u64) -> Result<usize, StoreError> {
        let tx = self.conn.transaction()?;
        let mut staged = ScanLog::new();
        let mut changed = Vec::new();
        {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO records (device_id, idx, body, received_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(device_id, idx) DO UPDATE SET body = excluded.body
                 WHERE excluded.body <> records.body",
            )?;
            for r in records {
                // Only what the CRDT takes is written, so disk and memory agree.
                if !self.log.would_change(r) || !staged.insert(r.clone()) {
                    continue;
                }
                let body = serde_json::to_string(r).unwrap_or_default();
                upsert.execute(params![
                    r.device_id.to_string(),
                    r.idx as i64,
                    body,
                    now_ms as i64
                ])?;
                changed.push(r.clone());
            }
        }
        tx.commit()?;
        for r in &changed {
            self.log.insert(r.clone());
        }
        Ok(changed.len())
    }

    /// Notes that a device synced.
    pub fn touch(&self, device: DeviceId, now_ms: u64) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO devices (device_id, last_sync) VALUES (?1, ?2)
             ON CONFLICT(device_id) DO UPDATE SET last_sync = excluded.last_sync",
            params![device.to_string(), now_ms as i64],
        )?;
        Ok(())
    }

    /// Devices and when each last synced (unix ms).
    pub fn devices(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT device_id, last_sync FROM devices ORDER BY device_id")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
