//! Messages owed to buyers, on PostgreSQL: queued in the transaction that
//! gives cause to them, and taken by one worker at a time whatever the
//! process: a claim skips messages another is claiming (`SKIP LOCKED`) and
//! leases those it takes.

use super::orders::{by_code, tickets_of_batch};
use super::{Conn, PgStorage, key};
use crate::storage::{IssuedTicket, Mail, MailKind, Outbox, Result, StorageError, wait};

/// Queues a message about order `code`, once (a second time changes
/// nothing).
pub(super) fn enqueue(c: &mut Conn, code: &str, kind: MailKind, now_ms: u64) {
    c.defer(
        "INSERT INTO outbox (order_code, kind, created_at, next_try_at)
         VALUES ($1, $2, $3, $3) ON CONFLICT (order_code, kind) DO NOTHING",
        vec![
            Box::new(code.to_owned()),
            Box::new(kind.as_str()),
            Box::new(key(now_ms)),
        ],
    );
}

impl Outbox for PgStorage {
    fn claim_mail(&self, now_ms: u64, lease_ms: u64, limit: usize) -> Result<Vec<Mail>> {
        wait(self.transaction(async |c| {
            let due = c
                .query(
                    "UPDATE outbox SET next_try_at = $2, attempts = attempts + 1
                     WHERE id = ANY(ARRAY(
                         SELECT id FROM outbox
                         WHERE sent_at IS NULL AND failed_at IS NULL AND next_try_at <= $1
                         ORDER BY next_try_at, id LIMIT $3 FOR UPDATE SKIP LOCKED))
                     RETURNING id, order_code, kind, attempts - 1",
                    &[
                        &key(now_ms),
                        &key(now_ms.saturating_add(lease_ms)),
                        &(limit.min(1000) as i64),
                    ],
                )
                .await?;
            let mut mail = Vec::with_capacity(due.len());
            for r in due {
                let kind: &str = r.get(2);
                let kind = MailKind::parse(kind)
                    .ok_or_else(|| StorageError::Backend(format!("message kind {kind:?}")))?;
                let (_, _, order) = by_code(c, r.get(1), false).await?;
                mail.push(Mail {
                    id: r.get::<_, i64>(0) as u64,
                    kind,
                    order,
                    attempts: u32::try_from(r.get::<_, i64>(3)).unwrap_or(u32::MAX),
                });
            }
            mail.sort_by_key(|m| m.id);
            Ok(mail)
        }))
    }

    fn mail_sent(&self, id: u64, now_ms: u64) -> Result<()> {
        wait(async {
            let mut c = self.conn().await?;
            c.execute(
                "UPDATE outbox SET sent_at = $2, last_error = NULL WHERE id = $1",
                &[&key(id), &key(now_ms)],
            )
            .await?;
            Ok(())
        })
    }

    fn mail_failed(&self, id: u64, error: &str, now_ms: u64, retry_at: Option<u64>) -> Result<()> {
        let error: String = error.chars().take(500).collect();
        wait(async {
            let mut c = self.conn().await?;
            c.execute(
                "UPDATE outbox SET last_error = $2,
                     next_try_at = coalesce($3, next_try_at),
                     failed_at = CASE WHEN $3::bigint IS NULL THEN $4::bigint END
                 WHERE id = $1",
                &[&key(id), &error, &retry_at.map(key), &key(now_ms)],
            )
            .await?;
            Ok(())
        })
    }

    fn tickets_of_order(&self, code: &str) -> Result<Vec<IssuedTicket>> {
        wait(async {
            let mut c = self.conn().await?;
            let batch = c
                .query_opt("SELECT batch_id FROM orders WHERE code = $1", &[&code])
                .await?
                .ok_or_else(|| StorageError::NotFound(format!("order {code}")))?;
            match batch.get::<_, Option<i64>>(0) {
                Some(batch) => tickets_of_batch(&mut c, batch).await,
                None => Ok(Vec::new()),
            }
        })
    }
}
