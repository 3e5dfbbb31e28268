//! Moving an embedded shop up to PostgreSQL (`issuer migrate`): every
//! table of the shop copied as it stands, ids kept, in one transaction
//! that is committed only if every table's count, the money paid and the
//! places sold come out the same on both sides. Signing keys are not
//! copied: they stay in the data directory.

use std::path::Path;

use rusqlite::OpenFlags;
use tokio_postgres::types::ToSql;

use super::{Conn, PgStorage};
use crate::storage::{Result, StorageError, wait};

/// How a column is read from SQLite and written to PostgreSQL.
#[derive(Clone, Copy)]
enum Kind {
    Int,
    Text,
    Blob,
    /// 0 or 1 in SQLite.
    Bool,
}

use Kind::{Blob, Bool, Int, Text};

/// A table, its columns, and the identity column whose sequence goes on
/// after the ids copied.
struct Table {
    name: &'static str,
    columns: &'static [(&'static str, Kind)],
    identity: Option<&'static str>,
}

/// The shop's tables, each after those it refers to.
const TABLES: &[Table] = &[
    Table {
        name: "organizers",
        columns: &[("id", Int), ("name", Text), ("created_at", Int)],
        identity: Some("id"),
    },
    Table {
        name: "organizer_tokens",
        columns: &[
            ("token_hash", Blob),
            ("organizer_id", Int),
            ("created_at", Int),
            ("revoked_at", Int),
        ],
        identity: None,
    },
    Table {
        name: "venues",
        columns: &[
            ("id", Int),
            ("organizer_id", Int),
            ("name", Text),
            ("city", Text),
            ("address", Text),
            ("plan", Text),
        ],
        identity: Some("id"),
    },
    Table {
        name: "events",
        columns: &[
            ("id", Int),
            ("name", Text),
            ("starts_at", Int),
            ("ends_at", Int),
            ("organizer_id", Int),
            ("venue_id", Int),
            ("description", Text),
            ("performers", Text),
            ("genre", Text),
            ("city", Text),
            ("status", Text),
            ("buyers_cancel_until", Int),
        ],
        identity: Some("id"),
    },
    Table {
        name: "categories",
        columns: &[
            ("id", Int),
            ("event_id", Int),
            ("name", Text),
            ("price", Int),
            ("currency", Text),
            ("pricing", Text),
            ("places", Text),
            ("sale_starts", Int),
            ("sale_ends", Int),
            ("per_order", Int),
            ("number", Int),
        ],
        identity: Some("id"),
    },
    Table {
        name: "holds",
        columns: &[
            ("token_hash", Blob),
            ("event_id", Int),
            ("created_at", Int),
            ("expires_at", Int),
            ("released_at", Int),
            ("currency", Text),
            ("total", Int),
            ("client", Text),
            ("announced", Bool),
        ],
        identity: None,
    },
    Table {
        name: "places",
        columns: &[
            ("event_id", Int),
            ("category_id", Int),
            ("n", Int),
            ("seat_key", Text),
            ("hold", Blob),
            ("held_until", Int),
            ("order_id", Int),
        ],
        identity: None,
    },
    Table {
        name: "hold_items",
        columns: &[
            ("hold", Blob),
            ("category_id", Int),
            ("n", Int),
            ("seat_key", Text),
            ("price", Int),
        ],
        identity: None,
    },
    Table {
        name: "batches",
        columns: &[
            ("id", Int),
            ("event_id", Int),
            ("category_id", Int),
            ("key_id", Text),
            ("count", Int),
            ("out_dir", Text),
            ("created_at", Int),
            ("state", Text),
        ],
        identity: Some("id"),
    },
    Table {
        name: "tickets",
        columns: &[
            ("event_id", Int),
            ("ticket_id", Blob),
            ("batch_id", Int),
            ("category_id", Int),
            ("seat", Text),
            ("multi_entry", Bool),
            ("valid_from", Int),
            ("valid_until", Int),
            ("key_id", Text),
            ("code", Text),
            ("void", Bool),
        ],
        identity: None,
    },
    Table {
        name: "orders",
        columns: &[
            ("id", Int),
            ("code", Text),
            ("secret_hash", Blob),
            ("hold", Blob),
            ("event_id", Int),
            ("email", Text),
            ("name", Text),
            ("amount", Int),
            ("currency", Text),
            ("state", Text),
            ("payment_intent", Text),
            ("payment_method", Text),
            ("refund", Text),
            ("note", Text),
            ("idempotency_key", Text),
            ("request_hash", Blob),
            ("batch_id", Int),
            ("created_at", Int),
            ("updated_at", Int),
        ],
        identity: Some("id"),
    },
    Table {
        name: "revocations",
        columns: &[
            ("seq", Int),
            ("event_id", Int),
            ("ticket_id", Blob),
            ("revoked_at", Int),
            ("reason", Text),
        ],
        identity: Some("seq"),
    },
    Table {
        name: "place_changes",
        columns: &[
            ("id", Int),
            ("event_id", Int),
            ("seq", Int),
            ("at", Int),
            ("kind", Text),
            ("seats", Text),
            ("places", Text),
        ],
        identity: Some("id"),
    },
    Table {
        name: "outbox",
        columns: &[
            ("id", Int),
            ("order_code", Text),
            ("kind", Text),
            ("created_at", Int),
            ("next_try_at", Int),
            ("attempts", Int),
            ("sent_at", Int),
            ("failed_at", Int),
            ("last_error", Text),
        ],
        identity: Some("id"),
    },
];

/// One cell, as PostgreSQL takes it.
type Cell = Box<dyn ToSql + Sync + Send>;

/// Rows written by one statement (PostgreSQL takes at most 65,535
/// parameters).
const CHUNK: usize = 1000;

/// What a move copied: rows by table, and the figures checked on both
/// sides.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub tables: Vec<(&'static str, u64)>,
    pub paid_orders: u64,
    pub paid_amount: i64,
    pub sold_places: u64,
}

/// The figures [`Report`] checks, as read on the embedded side.
const FIGURES: &str = "SELECT (SELECT count(*) FROM orders WHERE state = 'paid'),
        (SELECT CAST(coalesce(sum(amount), 0) AS BIGINT) FROM orders WHERE state = 'paid'),
        (SELECT count(*) FROM places WHERE order_id IS NOT NULL)";

fn sqlite(e: rusqlite::Error) -> StorageError {
    StorageError::Backend(format!("reading the embedded shop: {e}"))
}

/// Reads every table of the embedded shop in `dir`, in one snapshot.
fn read(dir: &Path) -> Result<(Vec<Vec<Vec<Cell>>>, Report)> {
    let path = dir.join("issuer.db");
    if !path.exists() {
        return Err(StorageError::NotFound(format!(
            "an embedded shop in {} (no issuer.db)",
            dir.display()
        )));
    }
    // Brought up to date first, as the issuer would, then read only.
    crate::Store::open_existing(dir).map_err(|e| StorageError::Backend(e.to_string()))?;
    let mut conn = rusqlite::Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(sqlite)?;
    let tx = conn.transaction().map_err(sqlite)?;
    let mut all = Vec::with_capacity(TABLES.len());
    let mut report = Report::default();
    for t in TABLES {
        let names: Vec<&str> = t.columns.iter().map(|c| c.0).collect();
        let mut stmt = tx
            .prepare(&format!("SELECT {} FROM {}", names.join(", "), t.name))
            .map_err(sqlite)?;
        let rows = stmt
            .query_map([], |r| {
                t.columns
                    .iter()
                    .enumerate()
                    .map(|(i, (_, kind))| {
                        Ok(match kind {
                            Int => Box::new(r.get::<_, Option<i64>>(i)?) as Cell,
                            Text => Box::new(r.get::<_, Option<String>>(i)?),
                            Blob => Box::new(r.get::<_, Option<Vec<u8>>>(i)?),
                            Bool => Box::new(r.get::<_, Option<i64>>(i)?.map(|v| v != 0)),
                        })
                    })
                    .collect::<rusqlite::Result<Vec<Cell>>>()
            })
            .map_err(sqlite)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(sqlite)?;
        report.tables.push((t.name, rows.len() as u64));
        all.push(rows);
    }
    let (paid, amount, sold): (i64, i64, i64) = tx
        .query_row(FIGURES, [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map_err(sqlite)?;
    report.paid_orders = paid as u64;
    report.paid_amount = amount;
    report.sold_places = sold as u64;
    Ok((all, report))
}

/// Writes `rows` into table `t`, a chunk a statement.
async fn write(c: &mut Conn, t: &Table, rows: &[Vec<Cell>]) -> Result<()> {
    let names: Vec<&str> = t.columns.iter().map(|c| c.0).collect();
    let width = t.columns.len();
    for chunk in rows.chunks(CHUNK) {
        let values: Vec<String> = (0..chunk.len())
            .map(|r| {
                let cells: Vec<String> =
                    (1..=width).map(|i| format!("${}", r * width + i)).collect();
                format!("({})", cells.join(", "))
            })
            .collect();
        let sql = format!(
            "INSERT INTO {} ({}) VALUES {}",
            t.name,
            names.join(", "),
            values.join(", ")
        );
        let args: Vec<&(dyn ToSql + Sync)> = chunk
            .iter()
            .flatten()
            .map(|cell| &**cell as &(dyn ToSql + Sync))
            .collect();
        c.client().await?.execute(&sql, &args).await?;
    }
    Ok(())
}

impl PgStorage {
    /// Copies the embedded shop of data directory `from` into this
    /// database, which must hold no shop yet. Nothing is kept unless every
    /// count matches.
    pub fn move_up(&self, from: &Path) -> Result<Report> {
        let (tables, expected) = read(from)?;
        wait(self.transaction(async |c| {
            c.batch("SET LOCAL statement_timeout = 0").await?;
            let before: i64 = c
                .query_one(
                    "SELECT (SELECT count(*) FROM organizers) + (SELECT count(*) FROM events)",
                    &[],
                )
                .await?
                .get(0);
            if before > 0 {
                return Err(StorageError::Conflict(
                    "the database holds a shop already: move up into an empty one".into(),
                ));
            }
            let mut got = Report::default();
            for (t, rows) in TABLES.iter().zip(&tables) {
                write(c, t, rows).await?;
                let n: i64 = c
                    .client()
                    .await?
                    .query_one(&format!("SELECT count(*) FROM {}", t.name), &[])
                    .await?
                    .get(0);
                got.tables.push((t.name, n as u64));
                if let Some(id) = t.identity {
                    c.client()
                        .await?
                        .execute(
                            &format!(
                                "SELECT setval(pg_get_serial_sequence('{0}', '{id}'),
                                               coalesce(max({id}), 0) + 1, false) FROM {0}",
                                t.name
                            ),
                            &[],
                        )
                        .await?;
                }
            }
            // Each event's changes go on from its last number; its words
            // are indexed for search.
            c.batch(
                "INSERT INTO feed_seq (event_id, seq)
                     SELECT event_id, max(seq) FROM place_changes GROUP BY event_id;
                 UPDATE place_changes SET pos = id;
                 UPDATE feed_pos SET pos = (SELECT coalesce(max(pos), 0) FROM place_changes);",
            )
            .await?;
            c.execute(super::catalogue::INDEX_EVENTS, &[]).await?;
            let figures = c.client().await?.query_one(FIGURES, &[]).await?;
            got.paid_orders = figures.get::<_, i64>(0) as u64;
            got.paid_amount = figures.get(1);
            got.sold_places = figures.get::<_, i64>(2) as u64;
            if got != expected {
                return Err(StorageError::Backend(format!(
                    "the copy does not match the shop, nothing was kept: \
                     copied {got:?}, the shop has {expected:?}"
                )));
            }
            Ok(got)
        }))
    }
}
