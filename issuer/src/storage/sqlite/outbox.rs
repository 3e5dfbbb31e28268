//! Messages owed to buyers, on SQLite: queued in the transaction that gives
//! cause to them, taken by a worker under a lease.

use rusqlite::{Connection, OptionalExtension, params};

use super::orders::{by_code, tickets_of_batch};
use super::{SqliteStorage, key};
use crate::storage::{IssuedTicket, Mail, MailKind, Outbox, Result, StorageError};

/// Queues a message about order `code`, once (a second time changes
/// nothing).
pub(super) fn enqueue(conn: &Connection, code: &str, kind: MailKind, now_ms: u64) -> Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO outbox (order_code, kind, created_at, next_try_at)
         VALUES (?1, ?2, ?3, ?3)",
    )?
    .execute(params![code, kind.as_str(), key(now_ms)])?;
    Ok(())
}

impl Outbox for SqliteStorage {
    fn claim_mail(&self, now_ms: u64, lease_ms: u64, limit: usize) -> Result<Vec<Mail>> {
        self.write(|tx| {
            let due: Vec<(i64, String, String, u32)> = tx
                .prepare_cached(
                    "SELECT id, order_code, kind, attempts FROM outbox
                 WHERE sent_at IS NULL AND failed_at IS NULL AND next_try_at <= ?1
                 ORDER BY next_try_at, id LIMIT ?2",
                )?
                .query_map(params![key(now_ms), limit.min(1000) as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?
                .collect::<rusqlite::Result<_>>()?;
            let mut mail = Vec::with_capacity(due.len());
            for (id, code, kind, attempts) in due {
                tx.prepare_cached(
                    "UPDATE outbox SET next_try_at = ?2, attempts = attempts + 1 WHERE id = ?1",
                )?
                .execute(params![id, key(now_ms.saturating_add(lease_ms))])?;
                let kind = MailKind::parse(&kind)
                    .ok_or_else(|| StorageError::Backend(format!("message kind {kind:?}")))?;
                let (_, _, order) = by_code(tx, &code)?;
                mail.push(Mail {
                    id: id as u64,
                    kind,
                    order,
                    attempts,
                });
            }
            Ok(mail)
        })
    }

    fn mail_sent(&self, id: u64, now_ms: u64) -> Result<()> {
        self.write(|tx| {
            tx.prepare_cached("UPDATE outbox SET sent_at = ?2, last_error = NULL WHERE id = ?1")?
                .execute(params![key(id), key(now_ms)])
                .map_err(Into::into)
        })?;
        Ok(())
    }

    fn mail_failed(&self, id: u64, error: &str, now_ms: u64, retry_at: Option<u64>) -> Result<()> {
        let error: String = error.chars().take(500).collect();
        self.write(|tx| {
            tx.prepare_cached(
                "UPDATE outbox SET last_error = ?2,
                 next_try_at = coalesce(?3, next_try_at),
                 failed_at = CASE WHEN ?3 IS NULL THEN ?4 END
             WHERE id = ?1",
            )?
            .execute(params![key(id), error, retry_at.map(key), key(now_ms)])
            .map_err(Into::into)
        })?;
        Ok(())
    }

    fn tickets_of_order(&self, code: &str) -> Result<Vec<IssuedTicket>> {
        let conn = self.read();
        let batch: Option<Option<i64>> = conn
            .prepare_cached("SELECT batch_id FROM orders WHERE code = ?1")?
            .query_row([code], |r| r.get(0))
            .optional()?;
        match batch {
            None => Err(StorageError::NotFound(format!("order {code}"))),
            Some(None) => Ok(Vec::new()),
            Some(Some(batch)) => tickets_of_batch(&conn, batch),
        }
    }
}
