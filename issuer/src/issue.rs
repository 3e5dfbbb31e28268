//! Bulk issuance: sign a batch of tickets for one event and write, per ticket,
//! a QR picture, plus `tickets.csv` (ticket_id, seat, category, code).
//!
//! Order matters for safety. Tickets are signed, then recorded in the database
//! in one transaction (a seat already sold refuses the whole batch, nothing
//! written), and only then are the files written. A signed ticket the
//! database does not know of could never be revoked, so there is none: if
//! writing fails, the batch stays recorded and `export` writes it again.

use std::collections::HashMap;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use rand_core::{OsRng, RngCore};
use rusqlite::{ErrorCode, params};
use shared::code::{MAX_SEAT_LEN, Signer};
use shared::{KeyId, TicketFields, TicketId};

use crate::{Error, Store, events, keys, qr};

/// Seconds before an event's start that its tickets become valid by default
/// (doors open before the show).
pub const DEFAULT_DOORS_BEFORE_SECS: u32 = 3 * 3600;
/// Largest batch one command signs.
pub const MAX_BATCH: usize = 1_000_000;
/// Pixels a QR module, by default.
pub const DEFAULT_SCALE: usize = 8;

/// What to issue.
#[derive(Clone, Debug)]
pub struct Request {
    pub event_id: u64,
    pub category_id: u16,
    /// How many; with `seats` it may be left out, and must match if given.
    pub count: Option<usize>,
    /// One ticket a seat label; `None` for general admission.
    pub seats: Option<Vec<String>>,
    /// Defaults to the event's start less [`DEFAULT_DOORS_BEFORE_SECS`].
    pub valid_from: Option<u32>,
    /// Defaults to the event's end.
    pub valid_until: Option<u32>,
    pub multi_entry: bool,
    pub out: PathBuf,
    pub svg: bool,
    pub scale: usize,
    /// Signing key; the newest active key when `None`.
    pub key_id: Option<String>,
}

/// What a batch came to.
#[derive(Clone, Debug)]
pub struct Summary {
    pub batch_id: i64,
    pub event_id: u64,
    pub key_id: KeyId,
    pub count: usize,
    pub out: PathBuf,
}

/// One issued ticket as the output files show it.
#[derive(Clone, Debug)]
pub struct TicketRow {
    pub ticket_id: TicketId,
    pub seat: String,
    pub category_id: u16,
    pub code: String,
}

/// Reads a seat file: one label a line; blank lines and lines starting with
/// `#` are skipped. A label too long for a ticket, with control characters,
/// or listed twice is refused with its line number.
/// Signs and records a paid order's tickets, once: one a place, signed by
/// `signer` as `issuer tickets issue` signs them. What the API and the
/// mail worker both call, whichever comes first.
pub fn sign_order(
    db: &dyn crate::storage::Storage,
    signer: &shared::code::Signer,
    code: &str,
    now_ms: u64,
) -> Result<(), crate::storage::StorageError> {
    let Some(fields) = db.tickets_to_sign(code)? else {
        return Ok(());
    };
    let signed = sign_fields(signer, fields)?;
    db.record_tickets(code, &signer.key_id().to_string(), &signed, now_ms)
}

/// Tickets' fields with their signed codes.
pub fn sign_fields(
    signer: &shared::code::Signer,
    fields: Vec<TicketFields>,
) -> Result<Vec<(TicketFields, String)>, crate::storage::StorageError> {
    fields
        .into_iter()
        .map(|f| {
            let ticket = signer.encode(&f).map_err(|e| {
                crate::storage::StorageError::Backend(format!("signing a ticket: {e}"))
            })?;
            Ok((f, ticket))
        })
        .collect()
}

pub fn parse_seats(text: &str) -> Result<Vec<String>, Error> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut seats = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let seat = line.trim();
        if seat.is_empty() || seat.starts_with('#') {
            continue;
        }
        if seat.len() > MAX_SEAT_LEN {
            return Err(Error::Invalid(format!(
                "seat file line {n}: {seat:?} is {} bytes; a seat label holds at most {MAX_SEAT_LEN}",
                seat.len()
            )));
        }
        if seat.chars().any(char::is_control) {
            return Err(Error::Invalid(format!(
                "seat file line {n}: {seat:?} has control characters"
            )));
        }
        if let Some(first) = seen.insert(seat, n) {
            return Err(Error::Invalid(format!(
                "seat file line {n}: {seat:?} repeats line {first}"
            )));
        }
        seats.push(seat.to_owned());
    }
    if seats.is_empty() {
        return Err(Error::Invalid("seat file lists no seats".into()));
    }
    Ok(seats)
}

/// Signs, records and writes a batch. `progress` is called with the number of
/// tickets just written, from any thread.
pub fn issue(
    store: &mut Store,
    req: &Request,
    now: u64,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Summary, Error> {
    let event = events::get(store, req.event_id)?;
    let valid_from = req
        .valid_from
        .unwrap_or(event.starts_at.saturating_sub(DEFAULT_DOORS_BEFORE_SECS));
    let valid_until = req.valid_until.unwrap_or(event.ends_at);
    if valid_until < valid_from {
        return Err(Error::Invalid(format!(
            "valid-until ({}) is before valid-from ({})",
            crate::time::format(valid_until.into()),
            crate::time::format(valid_from.into())
        )));
    }
    let count = match (&req.seats, req.count) {
        (Some(seats), Some(n)) if n != seats.len() => {
            return Err(Error::Invalid(format!(
                "--count {n} does not match the seat file's {} seats",
                seats.len()
            )));
        }
        (Some(seats), _) => seats.len(),
        (None, Some(n)) => n,
        (None, None) => {
            return Err(Error::Invalid(
                "give --count, or --seat-file with one seat a line".into(),
            ));
        }
    };
    if count == 0 || count > MAX_BATCH {
        return Err(Error::Invalid(format!(
            "--count must be from 1 to {MAX_BATCH}"
        )));
    }
    let signer = keys::signer(store, req.key_id.as_deref())?;
    prepare_out_dir(&req.out)?;

    let fields: Vec<TicketFields> = (0..count)
        .map(|i| {
            let mut id = [0u8; 16];
            OsRng.fill_bytes(&mut id);
            TicketFields {
                event_id: req.event_id,
                ticket_id: TicketId(id),
                category_id: req.category_id,
                multi_entry: req.multi_entry,
                valid_from,
                valid_until,
                seat: req.seats.as_ref().map(|s| s[i].clone()).unwrap_or_default(),
            }
        })
        .collect();
    let rows = sign_all(&signer, &fields)?;
    let batch_id = record(store, req, &signer, &fields, &rows, now)?;
    write_files(&req.out, &rows, req.svg, req.scale, progress).map_err(|e| {
        Error::Invalid(format!(
            "batch {batch_id} is recorded but its files are incomplete ({e}); write them again with `issuer tickets export --batch {batch_id} --out DIR`"
        ))
    })?;
    store.conn.execute(
        "UPDATE batches SET state = 'written' WHERE id = ?1",
        [batch_id],
    )?;
    Ok(Summary {
        batch_id,
        event_id: req.event_id,
        key_id: signer.key_id(),
        count,
        out: req.out.clone(),
    })
}

/// Writes a recorded batch's files again, into `out`.
pub fn export(
    store: &Store,
    batch_id: i64,
    out: &Path,
    svg: bool,
    scale: usize,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<usize, Error> {
    let mut stmt = store.conn.prepare(
        "SELECT ticket_id, coalesce(seat, ''), category_id, code FROM tickets WHERE batch_id = ?1 ORDER BY seat, ticket_id",
    )?;
    let rows = stmt
        .query_map([batch_id], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .map(|r| {
            let (id, seat, category_id, code) = r?;
            let id: [u8; 16] = id
                .try_into()
                .map_err(|_| Error::Invalid(format!("batch {batch_id} has a damaged ticket id")))?;
            Ok(TicketRow {
                ticket_id: TicketId(id),
                seat,
                category_id,
                code,
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    if rows.is_empty() {
        return Err(Error::Invalid(format!("batch {batch_id} does not exist")));
    }
    prepare_out_dir(out)?;
    write_files(out, &rows, svg, scale, progress)?;
    store.conn.execute(
        "UPDATE batches SET state = 'written' WHERE id = ?1",
        [batch_id],
    )?;
    Ok(rows.len())
}

fn prepare_out_dir(out: &Path) -> Result<(), Error> {
    fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    if out.join("tickets.csv").exists() {
        return Err(Error::Invalid(format!(
            "{} already holds a batch (tickets.csv): choose a new --out directory",
            out.display()
        )));
    }
    Ok(())
}

fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Signs every ticket, spread over the cores.
fn sign_all(signer: &Signer, fields: &[TicketFields]) -> Result<Vec<TicketRow>, Error> {
    let chunk = fields.len().div_ceil(workers()).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = fields
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|f| {
                            Ok(TicketRow {
                                ticket_id: f.ticket_id,
                                seat: f.seat.clone(),
                                category_id: f.category_id,
                                code: signer.encode(f)?,
                            })
                        })
                        .collect::<Result<Vec<_>, Error>>()
                })
            })
            .collect();
        let mut rows = Vec::with_capacity(fields.len());
        for h in handles {
            let part = h
                .join()
                .map_err(|_| Error::Invalid("a signing thread failed".into()))??;
            rows.extend(part);
        }
        Ok(rows)
    })
}

/// Records one signed ticket: its fields and its code, in its batch.
pub(crate) const INSERT_TICKET: &str =
    "INSERT INTO tickets (event_id, ticket_id, batch_id, category_id, seat, multi_entry,
                          valid_from, valid_until, key_id, code)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";

/// Runs [`INSERT_TICKET`] for ticket `f`, signed by `key_id` as `code`.
pub(crate) fn insert_ticket(
    insert: &mut rusqlite::Statement<'_>,
    batch_id: i64,
    key_id: &str,
    f: &TicketFields,
    code: &str,
) -> rusqlite::Result<usize> {
    let seat = (!f.seat.is_empty()).then_some(f.seat.as_str());
    insert.execute(params![
        i64::try_from(f.event_id).unwrap_or(i64::MAX),
        f.ticket_id.0.as_slice(),
        batch_id,
        f.category_id,
        seat,
        f.multi_entry,
        f.valid_from,
        f.valid_until,
        key_id,
        code,
    ])
}

/// Records the batch and its tickets in one transaction.
fn record(
    store: &mut Store,
    req: &Request,
    signer: &Signer,
    fields: &[TicketFields],
    rows: &[TicketRow],
    now: u64,
) -> Result<i64, Error> {
    let key_id = signer.key_id().to_string();
    let tx = store.conn.transaction()?;
    tx.execute(
        "INSERT INTO batches (event_id, category_id, key_id, count, out_dir, created_at, state)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'recorded')",
        params![
            req.event_id as i64,
            req.category_id,
            key_id,
            rows.len() as i64,
            req.out.display().to_string(),
            now as i64
        ],
    )?;
    let batch_id = tx.last_insert_rowid();
    {
        let mut insert = tx.prepare(INSERT_TICKET)?;
        for (f, row) in fields.iter().zip(rows) {
            let seat = (!f.seat.is_empty()).then_some(f.seat.as_str());
            let inserted = insert_ticket(&mut insert, batch_id, &key_id, f, &row.code);
            match inserted {
                Ok(_) => {}
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == ErrorCode::ConstraintViolation && seat.is_some() =>
                {
                    let batch_id = tx.query_row(
                        "SELECT batch_id FROM tickets WHERE event_id = ?1 AND seat = ?2 AND seat IS NOT NULL AND void = 0",
                        params![f.event_id as i64, seat],
                        |r| r.get(0),
                    )?;
                    return Err(Error::SeatTaken {
                        event_id: f.event_id,
                        seat: f.seat.clone(),
                        batch_id,
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    tx.commit()?;
    Ok(batch_id)
}

/// Writes `<ticket_id>.png` (and `.svg`) for every row, spread over the cores,
/// then `tickets.csv`.
fn write_files(
    out: &Path,
    rows: &[TicketRow],
    svg: bool,
    scale: usize,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<(), Error> {
    const CHUNK: usize = 32;
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let failure: Mutex<Option<Error>> = Mutex::new(None);
    let write_one = |row: &TicketRow| -> Result<(), Error> {
        let code = qr::encode(&row.code)?;
        let path = out.join(format!("{}.png", row.ticket_id));
        fs::write(&path, qr::png(&code, scale)?).map_err(|e| Error::io(&path, e))?;
        if svg {
            let path = out.join(format!("{}.svg", row.ticket_id));
            fs::write(&path, qr::svg(&code)).map_err(|e| Error::io(&path, e))?;
        }
        Ok(())
    };
    // Creating a file costs about a millisecond on a virtual disk, and the
    // threads mostly wait for it: more writers than cores keep the cores busy.
    let writers = (workers() * 4).max(8);
    std::thread::scope(|s| {
        for _ in 0..writers {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let start = next.fetch_add(CHUNK, Ordering::Relaxed);
                    if start >= rows.len() {
                        break;
                    }
                    let part = &rows[start..(start + CHUNK).min(rows.len())];
                    for row in part {
                        if let Err(e) = write_one(row) {
                            stop.store(true, Ordering::Relaxed);
                            failure
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert(e);
                            return;
                        }
                    }
                    progress(part.len());
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let path = out.join("tickets.csv");
    let write_csv = || -> std::io::Result<()> {
        crate::store::private_file(&path)?;
        let mut csv = BufWriter::new(fs::File::create(&path)?);
        writeln!(csv, "ticket_id,seat,category,code")?;
        for row in rows {
            writeln!(
                csv,
                "{},{},{},{}",
                row.ticket_id,
                csv_field(&row.seat),
                row.category_id,
                row.code
            )?;
        }
        csv.into_inner().map_err(|e| e.into_error())?.sync_all()
    };
    write_csv().map_err(|e| Error::io(&path, e))
}

/// Quotes a CSV field when it needs it (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seat_files_are_read_with_line_numbers_in_errors() {
        assert_eq!(
            parse_seats("# hall\nA-1\n\n  A-2 \n").unwrap(),
            vec!["A-1", "A-2"]
        );
        let err = parse_seats("A-1\nA-2\nA-1\n").unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("line 1"), "{err}");
        let err = parse_seats(&format!("A-1\n{}\n", "x".repeat(33)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2") && err.contains("33 bytes"), "{err}");
        assert!(parse_seats("\n# nothing\n").is_err());
    }

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("A-1"), "A-1");
        assert_eq!(csv_field("Box \"3\", left"), "\"Box \"\"3\"\", left\"");
    }
}
