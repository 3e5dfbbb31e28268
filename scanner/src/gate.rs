//! The gate's state: a local SQLite file holding the device's identity, its
//! keyset, the revocation list and the redemption log.
//!
//! [`Gate::check`] is the whole decision: verify offline, apply revocations,
//! look at the ticket's earlier scans, and append the attempt to the log. An
//! `ok` is committed durably (WAL, `synchronous=FULL`) before `check` returns,
//! so a gate that shows green has already remembered it.

use std::collections::BTreeMap;
use std::path::Path;

use rand_core::{OsRng, RngCore};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use shared::device::{DeviceSigner, Held};
use shared::{
    DeviceId, DeviceKey, DeviceSig, Direction, Hlc, Keyset, RecordHash, Refusal, ResultCode,
    ScanRecord, TicketId, TicketSig, TicketState, Verifier, VersionVector,
};

use crate::report::Outcome;

/// Marks a SQLite file as a scanner database ("VT1S").
const APPLICATION_ID: i32 = 0x5654_3153;
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_device_scans.sql"),
    include_str!("../migrations/0002_sync.sql"),
    include_str!("../migrations/0003_device_token.sql"),
    include_str!("../migrations/0004_resolve_conflicts.sql"),
    include_str!("../migrations/0005_signed_records.sql"),
    include_str!("../migrations/0006_pin.sql"),
];

/// Why the gate could not do what was asked. Refusing a ticket is not an
/// error: that is an [`Outcome`].
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("{path}: {reason}")]
    Database { path: String, reason: String },
    #[error("{0} is not provisioned: run `scanner --db {0} init --keyset FILE --device-name NAME`")]
    NotProvisioned(String),
    #[error("keyset refused: {0}")]
    Keyset(#[from] shared::KeysetError),
    #[error("revocation list line {line}: {reason}; the previous list is kept")]
    Revocations { line: usize, reason: String },
    #[error("scan log: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("{0}")]
    Provision(String),
    #[error("records refused: {0}")]
    Refused(String),
}

/// Longest gate or device name, in bytes: a label on a screen, and what
/// gate-sync accepts in a record.
pub const MAX_NAME: usize = 128;

/// Who this scanner is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    pub id: DeviceId,
    pub name: String,
    pub gate: String,
    /// Whether the id is its key's, so that what it signs is accepted
    /// (false for a device provisioned before records were signed).
    pub signs: bool,
}

/// What `init` sets; re-running it updates everything but the device id.
#[derive(Clone, Debug)]
pub struct Provision {
    pub keyset_json: String,
    pub device_name: String,
    pub gate: String,
    pub events: Vec<u64>,
    pub skew_secs: u32,
}

/// The answer to one scan, and what was recorded.
#[derive(Clone, Debug)]
pub struct Checked {
    pub outcome: Outcome,
    pub record: ScanRecord,
    /// For `already_redeemed`: the ticket's first admission, on any device.
    pub first_admission: Option<ScanRecord>,
}

/// Where a device syncs and how it went.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SyncStatus {
    pub server: Option<String>,
    /// Own records the server is known to hold, up to this index.
    pub pushed_idx: u64,
    /// Own records not yet pushed.
    pub pending: u64,
    pub last_sync_ms: Option<u64>,
    pub last_error: Option<String>,
}

/// Counts for the gate's staff.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub scans: u64,
    pub by_result: BTreeMap<String, u64>,
    /// Admitted entries (`ok` scans going in).
    pub admitted: u64,
    /// Tickets whose last admitted movement was an entry.
    pub inside: u64,
    pub last_scan: Option<ScanRecord>,
    /// Devices that wrote two versions of an index, and how many indexes.
    pub flagged: BTreeMap<String, u64>,
}

/// An open scanner database.
pub struct Gate {
    conn: Connection,
    path: String,
    device: Device,
    verifier: Verifier,
    signer: DeviceSigner,
    /// The device row's version when `verifier` was built: another process
    /// (a sync bringing a new keyset, a re-`init`) bumps it.
    provisioned_at: i64,
}

fn open_conn(path: &Path, create: bool) -> Result<Connection, GateError> {
    let shown = path.display().to_string();
    let db_err = |e: rusqlite::Error| GateError::Database {
        path: shown.clone(),
        reason: match &e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::NotADatabase => {
                "not a scanner database (the file is not SQLite, or is damaged)".into()
            }
            _ => e.to_string(),
        },
    };
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
        // The file holds the device's token: its owner's alone. (SQLite
        // gives its journal files the database file's mode.)
        gate_sync::private_file(path).map_err(|e| GateError::Database {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
    } else if path.exists() {
        // Made by an older scanner: tighten it (best effort: not ours, say).
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
    let mut conn = Connection::open_with_flags(path, flags).map_err(|e| match e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::CannotOpen => {
            GateError::NotProvisioned(shown.clone())
        }
        e => db_err(e),
    })?;
    let setup = |conn: &mut Connection| -> rusqlite::Result<(i32, usize, i64)> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let app: i32 = conn.pragma_query_value(None, "application_id", |r| r.get(0))?;
        let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))?;
        Ok((app, version, tables))
    };
    let (app, version, tables) = setup(&mut conn).map_err(&db_err)?;
    if app != APPLICATION_ID && tables > 0 {
        return Err(GateError::Database {
            path: shown,
            reason:
                "this SQLite file belongs to another program, not a scanner: choose another --db"
                    .into(),
        });
    }
    if version > MIGRATIONS.len() {
        return Err(GateError::Database {
            path: shown,
            reason: format!("written by a newer scanner (schema {version}); upgrade this one"),
        });
    }
    let migrate = |conn: &mut Connection| -> rusqlite::Result<()> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "application_id", APPLICATION_ID)?;
            tx.pragma_update(None, "user_version", i + 1)?;
            tx.commit()?;
        }
        Ok(())
    };
    migrate(&mut conn).map_err(db_err)?;
    Ok(conn)
}

/// A new device signing seed, in hex.
fn new_seed() -> String {
    let mut seed = [0u8; 32];
    OsRng.fill_bytes(&mut seed);
    shared::hex::encode(&seed)
}

/// The signer of a seed in hex (a damaged seed signs nothing anyone accepts).
fn signer_of(seed: &str) -> DeviceSigner {
    DeviceSigner::from_seed(&shared::hex::decode::<32>(seed).unwrap_or_default())
}

fn provisioned_at(conn: &Connection) -> Result<i64, GateError> {
    Ok(conn
        .query_row("SELECT provisioned_at FROM device", [], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

fn load_device(
    conn: &Connection,
    path: &str,
) -> Result<(Device, Verifier, DeviceSigner), GateError> {
    let row = conn
        .query_row(
            "SELECT device_id, name, gate, keyset_json, skew_secs, device_seed FROM device WHERE singleton = 1",
            [],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get::<_, String>(3)?,
                    r.get(4)?,
                    r.get::<_, Option<String>>(5)?,
                ))
            },
        )
        .optional()?;
    let Some((id, name, gate, keyset_json, skew_secs, seed)) = row else {
        return Err(GateError::NotProvisioned(path.to_owned()));
    };
    let id = id.parse().map_err(|reason| GateError::Database {
        path: path.to_owned(),
        reason,
    })?;
    let mut stmt = conn.prepare("SELECT event_id FROM admitted_events")?;
    let events = stmt
        .query_map([], |r| r.get::<_, i64>(0))?
        .map(|r| r.map(|e| e as u64))
        .collect::<Result<Vec<_>, _>>()?;
    let verifier = Verifier::new(Keyset::from_json(&keyset_json)?)
        .with_skew(skew_secs)
        .only_events(events);
    let signer = signer_of(seed.as_deref().unwrap_or_default());
    Ok((
        Device {
            id,
            name,
            gate,
            signs: signer.id() == id,
        },
        verifier,
        signer,
    ))
}

impl Gate {
    /// Provisions the database at `path` (creating it), or re-provisions it:
    /// the device id stays, everything else is replaced. The keyset is
    /// validated first; a refused keyset changes nothing.
    pub fn init(path: &Path, p: &Provision, now_ms: u64) -> Result<Gate, GateError> {
        Keyset::from_json(&p.keyset_json)?;
        for (what, name) in [("device name", &p.device_name), ("gate name", &p.gate)] {
            if name.len() > MAX_NAME {
                return Err(GateError::Provision(format!(
                    "the {what} is {} bytes; at most {MAX_NAME}",
                    name.len()
                )));
            }
        }
        let mut conn = open_conn(path, true)?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let existing: Option<(String, Option<String>)> = tx
            .query_row("SELECT device_id, device_seed FROM device", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        // The device keeps its key and id. A device made before records were
        // signed gets a key now, and the id of that key if it wrote nothing.
        let (id, seed) = match existing {
            Some((id, Some(seed))) => (id, seed),
            Some((id, None)) => {
                let seed = new_seed();
                let wrote: bool = tx
                    .prepare("SELECT 1 FROM scans WHERE device_id = ?1 LIMIT 1")?
                    .exists([&id])?;
                match wrote {
                    true => (id, seed),
                    false => (signer_of(&seed).id().to_string(), seed),
                }
            }
            None => {
                let seed = new_seed();
                (signer_of(&seed).id().to_string(), seed)
            }
        };
        tx.execute(
            "INSERT INTO device (singleton, device_id, name, gate, keyset_json, skew_secs, provisioned_at, device_seed)
             VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(singleton) DO UPDATE SET device_id = excluded.device_id, name = excluded.name,
               gate = excluded.gate, keyset_json = excluded.keyset_json, skew_secs = excluded.skew_secs,
               provisioned_at = max(excluded.provisioned_at, device.provisioned_at + 1),
               device_seed = excluded.device_seed",
            params![id, p.device_name, p.gate, p.keyset_json, p.skew_secs, now_ms as i64, seed],
        )?;
        tx.execute("DELETE FROM admitted_events", [])?;
        for e in &p.events {
            tx.execute(
                "INSERT OR IGNORE INTO admitted_events (event_id) VALUES (?1)",
                [*e as i64],
            )?;
        }
        tx.commit()?;
        Gate::from_conn(conn, path)
    }

    /// Opens a provisioned database.
    pub fn open(path: &Path) -> Result<Gate, GateError> {
        Gate::from_conn(open_conn(path, false)?, path)
    }

    fn from_conn(conn: Connection, path: &Path) -> Result<Gate, GateError> {
        let path = path.display().to_string();
        let provisioned_at = provisioned_at(&conn)?;
        let (device, verifier, signer) = load_device(&conn, &path)?;
        Ok(Gate {
            conn,
            path,
            device,
            verifier,
            signer,
            provisioned_at,
        })
    }

    /// Rebuilds the verifier if another process changed the provisioning.
    fn refresh(&mut self) -> Result<(), GateError> {
        let current = provisioned_at(&self.conn)?;
        if current != self.provisioned_at {
            let (device, verifier, signer) = load_device(&self.conn, &self.path)?;
            self.device = device;
            self.verifier = verifier;
            self.signer = signer;
            self.provisioned_at = current;
        }
        Ok(())
    }

    /// Replaces the keyset (from a sync), keeping everything else; returns
    /// whether it changed. A keyset that fails validation changes nothing.
    pub fn update_keyset(&mut self, json: &str, now_ms: u64) -> Result<bool, GateError> {
        Keyset::from_json(json)?;
        let changed = self.conn.execute(
            "UPDATE device SET keyset_json = ?1, provisioned_at = max(?2, provisioned_at + 1)
             WHERE keyset_json <> ?1",
            params![json, now_ms as i64],
        )?;
        self.refresh()?;
        Ok(changed > 0)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Replaces the revocation list with `text`: one ticket a line, as
    /// `EVENT_ID TICKET_ID` or a bare `TICKET_ID` (any event); blank lines and
    /// `#` comments skipped. A bad line refuses the whole file.
    pub fn import_revocations(&mut self, text: &str) -> Result<usize, GateError> {
        let entries = shared::revocations::parse(text).map_err(|e| GateError::Revocations {
            line: e.line,
            reason: e.reason,
        })?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("DELETE FROM revocations", [])?;
        {
            let mut insert =
                tx.prepare("INSERT INTO revocations (event_id, ticket_id) VALUES (?1, ?2)")?;
            for r in &entries {
                insert.execute(params![
                    r.event_id.map(|e| e as i64),
                    r.ticket_id.to_string()
                ])?;
            }
        }
        tx.commit()?;
        Ok(entries.len())
    }

    fn is_revoked(&self, event_id: u64, ticket_id: TicketId) -> Result<bool, GateError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT 1 FROM revocations WHERE ticket_id = ?2 AND (event_id IS NULL OR event_id = ?1) LIMIT 1",
            )?
            .exists(params![event_id as i64, ticket_id.to_string()])?)
    }

    /// Decides on one code at wall-clock `now_ms` (unix milliseconds) and
    /// appends the attempt to the log, durably, before returning.
    pub fn check(
        &mut self,
        code: &str,
        direction: Direction,
        now_ms: u64,
    ) -> Result<Checked, GateError> {
        self.refresh()?;
        let mut outcome = self.verifier.verify(code, now_ms / 1000);
        if let Ok(t) = &outcome
            && self.is_revoked(t.fields().event_id, t.fields().ticket_id)?
        {
            let reason = "revoked: refunded, cancelled or reissued";
            outcome = Err(Refusal::of_ticket(ResultCode::Revoked, reason, t.clone()));
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut first_admission = None;
        if let Ok(t) = &outcome
            && direction == Direction::Entry
        {
            let f = t.fields();
            // Another gate's admission counts only with proof that the
            // ticket was there: the issuer's signature of this very code,
            // which no one who never saw the code can know.
            let (own, presented) = (self.device.id, t.signature());
            let scans: Vec<ScanRecord> = scans_of(&tx, f.event_id, f.ticket_id)?
                .into_iter()
                .filter(|s| s.device_id == own || s.proof == Some(presented))
                .collect();
            let state = TicketState::of(&scans);
            if state.refuses_entry(f.multi_entry) {
                let first = state.first_entry.cloned();
                let reason = match &first {
                    Some(s) if !f.multi_entry => format!(
                        "already admitted at gate {:?} by {:?} at {}",
                        s.gate,
                        s.device_name,
                        format_ms(s.wall_ms)
                    ),
                    _ => "already inside: no exit recorded since its last entry".to_owned(),
                };
                outcome = Err(Refusal::of_ticket(
                    ResultCode::AlreadyRedeemed,
                    reason,
                    t.clone(),
                ));
                first_admission = first;
            }
        }
        // The clock follows the greatest stamp seen, its own or another
        // gate's, but never one far ahead of this device's own clock: one
        // broken or hostile clock must not drag every gate's stamps along.
        let last_hlc: i64 = tx.query_row(
            "SELECT coalesce(max(hlc), 0) FROM scans WHERE device_id = ?1 OR hlc <= ?2",
            params![
                self.device.id.to_string(),
                Hlc::adoptable_until(now_ms).0.min(i64::MAX as u64) as i64
            ],
            |r| r.get(0),
        )?;
        let previous = last_own(&tx, self.device.id)?;
        let ticket = match &outcome {
            Ok(t) => Some(t),
            Err(r) => r.ticket.as_ref(),
        };
        let mut record = ScanRecord {
            device_id: self.device.id,
            idx: previous.as_ref().map_or(1, |p| p.idx + 1),
            ticket: ticket.map(|t| (t.fields().event_id, t.fields().ticket_id)),
            multi_entry: ticket.is_some_and(|t| t.fields().multi_entry),
            category_id: ticket.map_or(0, |t| t.fields().category_id),
            seat: ticket.map(|t| t.fields().seat.clone()).unwrap_or_default(),
            direction,
            result: crate::report::result_code(&outcome),
            reason: outcome
                .as_ref()
                .err()
                .map(|r| r.reason.clone())
                .unwrap_or_default(),
            wall_ms: now_ms,
            hlc: Hlc::next(Hlc(last_hlc as u64), now_ms),
            gate: self.device.gate.clone(),
            device_name: self.device.name.clone(),
            proof: ticket.map(|t| t.signature()),
            prev: RecordHash::FIRST,
            device_key: None,
            sig: DeviceSig::NONE,
        };
        if self.device.signs {
            self.signer.seal(&mut record, previous.as_ref());
        }
        insert_scan(&tx, &record)?;
        tx.commit()?;
        Ok(Checked {
            outcome,
            record,
            first_admission,
        })
    }

    /// Every record in the log, in (device, index) order.
    pub fn log(&self) -> Result<Vec<ScanRecord>, GateError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {SCAN_COLUMNS} FROM scans ORDER BY device_id, idx"
        ))?;
        let rows = stmt.query_map([], row_to_scan)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Where this device syncs and how it went.
    pub fn sync_status(&self) -> Result<SyncStatus, GateError> {
        let (server, pushed, last_sync_ms, last_error): (
            Option<String>,
            i64,
            Option<i64>,
            Option<String>,
        ) = self.conn.query_row(
            "SELECT server, pushed_idx, last_sync_ms, last_error FROM sync_state",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
        let own: i64 = self.conn.query_row(
            "SELECT coalesce(max(idx), 0) FROM scans WHERE device_id = ?1",
            [self.device.id.to_string()],
            |r| r.get(0),
        )?;
        Ok(SyncStatus {
            server,
            pushed_idx: pushed as u64,
            pending: own.saturating_sub(pushed) as u64,
            last_sync_ms: last_sync_ms.map(|t| t as u64),
            last_error,
        })
    }

    /// Remembers the sync server, the token it gave this device, and the
    /// fingerprint of its certificate (for https).
    pub fn set_enrollment(
        &mut self,
        server: &str,
        device_token: &str,
        pin: Option<&str>,
    ) -> Result<(), GateError> {
        self.conn.execute(
            "UPDATE sync_state SET server = ?1, device_token = ?2, pin = ?3, last_error = NULL",
            params![server, device_token, pin],
        )?;
        Ok(())
    }

    /// The fingerprint of the sync node's certificate, once enrolled over https.
    pub fn pin(&self) -> Result<Option<String>, GateError> {
        Ok(self
            .conn
            .query_row("SELECT pin FROM sync_state", [], |r| r.get(0))?)
    }

    /// The token this device syncs with, once enrolled.
    pub fn device_token(&self) -> Result<Option<String>, GateError> {
        Ok(self
            .conn
            .query_row("SELECT device_token FROM sync_state", [], |r| r.get(0))?)
    }

    /// Records the outcome of a sync attempt.
    pub fn note_sync(&mut self, now_ms: u64, error: Option<&str>) -> Result<(), GateError> {
        match error {
            None => self.conn.execute(
                "UPDATE sync_state SET last_sync_ms = ?1, last_error = NULL",
                [now_ms as i64],
            )?,
            Some(e) => self
                .conn
                .execute("UPDATE sync_state SET last_error = ?1", [e])?,
        };
        Ok(())
    }

    /// This device's own records not yet pushed, oldest first, at most `limit`.
    pub fn unpushed(&self, limit: usize) -> Result<Vec<ScanRecord>, GateError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {SCAN_COLUMNS} FROM scans WHERE device_id = ?1
               AND idx > (SELECT pushed_idx FROM sync_state) ORDER BY idx LIMIT ?2"
        ))?;
        let rows = stmt.query_map(
            params![self.device.id.to_string(), limit as i64],
            row_to_scan,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Notes that the server holds this device's records up to `idx`.
    pub fn mark_pushed(&mut self, idx: u64) -> Result<(), GateError> {
        self.conn.execute(
            "UPDATE sync_state SET pushed_idx = max(pushed_idx, ?1)",
            [idx as i64],
        )?;
        Ok(())
    }

    /// Pushes again from after `idx`: the node holds this device's records
    /// only up to there (it lost the rest, or was replaced).
    pub fn rewind_pushed(&mut self, idx: u64) -> Result<(), GateError> {
        self.conn
            .execute("UPDATE sync_state SET pushed_idx = ?1", [idx as i64])?;
        Ok(())
    }

    /// For each device, the highest index held with none missing below it.
    pub fn version_vector(&self) -> Result<VersionVector, GateError> {
        let parse = |id: String| -> Result<DeviceId, GateError> {
            id.parse().map_err(|reason| GateError::Database {
                path: self.path.clone(),
                reason,
            })
        };
        // A device whose record count equals its highest index has no gap:
        // only devices with gaps need their indexes walked.
        let mut per_device = self
            .conn
            .prepare("SELECT device_id, count(*), max(idx) FROM scans GROUP BY device_id")?;
        let mut walk = self
            .conn
            .prepare_cached("SELECT idx FROM scans WHERE device_id = ?1 ORDER BY idx")?;
        let mut vv = std::collections::BTreeMap::new();
        let mut rows = per_device.query([])?;
        while let Some(row) = rows.next()? {
            let id: String = row.get(0)?;
            let (count, max): (i64, i64) = (row.get(1)?, row.get(2)?);
            let held = if count == max {
                max as u64
            } else {
                let mut held = 0u64;
                let mut idxs = walk.query([&id])?;
                while let Some(r) = idxs.next()? {
                    if r.get::<_, i64>(0)? as u64 != held + 1 {
                        break;
                    }
                    held += 1;
                }
                held
            };
            vv.insert(parse(id)?, held);
        }
        Ok(VersionVector(vv))
    }

    /// Adds records other devices made (from a sync), in one transaction,
    /// after the protocol's checks and their devices' signatures; returns
    /// how many were new. A record is taken only next to one held (no
    /// gaps). Of two versions of another device's record, the one every
    /// replica keeps stays ([`shared::merge::supersedes`]) and the other is
    /// kept as proof against that device; this device's own records are
    /// never changed. `conflicts` are such pairs, as a node hands them out;
    /// those above what this gate holds wait for a later sync.
    pub fn merge_remote(
        &mut self,
        records: &[ScanRecord],
        conflicts: &[ScanRecord],
    ) -> Result<usize, GateError> {
        shared::protocol::check_records(records)
            .and_then(|()| shared::protocol::check_records(conflicts))
            .map_err(GateError::Refused)?;
        let own = self.device.id;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // A device that broke its own chain loses what follows the break;
        // every other device's records are taken.
        let (records, refused) = shared::device::authentic(records, &GateHeld(&tx));
        for u in &refused {
            tracing::warn!(error = %u, "records refused: not signed by their device");
        }
        let mut added = 0;
        let mut sorted: Vec<&ScanRecord> = records.iter().collect();
        sorted.sort_by_key(|r| (r.device_id, r.idx));
        for r in sorted {
            if scan_at(&tx, r.device_id, r.idx)?.is_none()
                && r.idx > 1
                && scan_at(&tx, r.device_id, r.idx - 1)?.is_none()
            {
                return Err(GateError::Refused(format!(
                    "record {}/{} would leave a gap in the log",
                    r.device_id, r.idx
                )));
            }
            added += take(&tx, r, own)?;
        }
        // Pairs of versions: each is checked on its own against what is held.
        let mut pairs: Vec<&ScanRecord> = conflicts
            .iter()
            .filter(|r| scan_at(&tx, r.device_id, r.idx).is_ok_and(|held| held.is_some()))
            .collect();
        pairs.sort_by_key(|r| (r.device_id, r.idx));
        for r in pairs {
            shared::device::authenticate_all(std::slice::from_ref(r), &GateHeld(&tx))
                .map_err(|e| GateError::Refused(e.to_string()))?;
            take(&tx, r, own)?;
        }
        tx.commit()?;
        Ok(added)
    }

    /// Devices that wrote two versions of an index (faulty or hostile), and
    /// how many indexes.
    pub fn flagged(&self) -> Result<BTreeMap<String, u64>, GateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT device_id, count(*) FROM conflicts GROUP BY device_id")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The key this device signs with.
    pub fn signer(&self) -> &DeviceSigner {
        &self.signer
    }

    /// The greatest stamp held up to `until` (0 when none).
    pub fn newest_stamp_until(&self, until: Hlc) -> Result<Hlc, GateError> {
        let hlc: i64 = self.conn.query_row(
            "SELECT coalesce(max(hlc), 0) FROM scans WHERE hlc <= ?1",
            [until.0.min(i64::MAX as u64) as i64],
            |r| r.get(0),
        )?;
        Ok(Hlc(hlc as u64))
    }

    /// Records stamped after `after`, oldest first, at most `limit`: what a
    /// display tailing the log has not shown yet, whoever made them.
    pub fn log_after(&self, after: Hlc, limit: usize) -> Result<Vec<ScanRecord>, GateError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {SCAN_COLUMNS} FROM scans WHERE hlc > ?1 ORDER BY hlc LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![after.0 as i64, limit as i64], row_to_scan)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn stats(&self) -> Result<Stats, GateError> {
        let mut stats = Stats::default();
        let mut stmt = self
            .conn
            .prepare("SELECT result, count(*) FROM scans GROUP BY result")?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
            let (result, n) = row?;
            stats.scans += n as u64;
            stats.by_result.insert(result, n as u64);
        }
        stats.admitted = self.conn.query_row(
            "SELECT count(*) FROM scans WHERE result = 'ok' AND direction = 'entry'",
            [],
            |r| r.get::<_, i64>(0),
        )? as u64;
        // SQLite takes the bare `direction` from the row holding max(hlc).
        stats.inside = self.conn.query_row(
            "SELECT count(*) FROM (SELECT direction, max(hlc) FROM scans
               WHERE result = 'ok' AND ticket_id IS NOT NULL GROUP BY event_id, ticket_id)
             WHERE direction = 'entry'",
            [],
            |r| r.get::<_, i64>(0),
        )? as u64;
        stats.flagged = self.flagged()?;
        stats.last_scan = self
            .conn
            .query_row(
                &format!("SELECT {SCAN_COLUMNS} FROM scans ORDER BY hlc DESC LIMIT 1"),
                [],
                row_to_scan,
            )
            .optional()?;
        Ok(stats)
    }
}

const SCAN_COLUMNS: &str = "device_id, idx, event_id, ticket_id, multi_entry, direction, result, reason, \
                            wall_ms, hlc, gate, device_name, category_id, seat, proof, prev, device_key, sig";

fn scans_of(
    conn: &Connection,
    event_id: u64,
    ticket_id: TicketId,
) -> Result<Vec<ScanRecord>, GateError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {SCAN_COLUMNS} FROM scans WHERE event_id = ?1 AND ticket_id = ?2"
    ))?;
    let rows = stmt.query_map(params![event_id as i64, ticket_id.to_string()], row_to_scan)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Takes one authenticated record of another device: new, or a second
/// version of one held. Returns 1 if it was new.
fn take(tx: &Connection, r: &ScanRecord, own: DeviceId) -> Result<usize, GateError> {
    let Some(held) = scan_at(tx, r.device_id, r.idx)? else {
        return insert_scan(tx, r);
    };
    if held == *r {
        return Ok(0);
    }
    let loser = if r.device_id != own && shared::merge::supersedes(r, &held) {
        replace_scan(tx, r)?;
        held
    } else {
        r.clone()
    };
    let proof = conflict_at(tx, r.device_id, r.idx)?;
    if proof.is_none_or(|p| p != loser && shared::merge::supersedes(&loser, &p)) {
        let mut body = Vec::new();
        loser.write_json(&mut body);
        tx.prepare_cached(
            "INSERT INTO conflicts (device_id, idx, body) VALUES (?1, ?2, ?3)
             ON CONFLICT(device_id, idx) DO UPDATE SET body = excluded.body",
        )?
        .execute(params![
            r.device_id.to_string(),
            r.idx as i64,
            String::from_utf8_lossy(&body)
        ])?;
    }
    Ok(0)
}

/// The version of (device, index) kept as proof, if it was written twice.
fn conflict_at(
    conn: &Connection,
    device: DeviceId,
    idx: u64,
) -> Result<Option<ScanRecord>, GateError> {
    let body: Option<String> = conn
        .prepare_cached("SELECT body FROM conflicts WHERE device_id = ?1 AND idx = ?2")?
        .query_row(params![device.to_string(), idx as i64], |r| r.get(0))
        .optional()?;
    body.map(|b| serde_json::from_str(&b))
        .transpose()
        .map_err(|e| GateError::Refused(format!("a stored proof is damaged: {e}")))
}

/// What the gate holds, for checking other devices' signatures.
struct GateHeld<'a>(&'a Connection);

impl Held for GateHeld<'_> {
    fn hashes(&self, device: &DeviceId, idx: u64) -> Vec<RecordHash> {
        let kept = scan_at(self.0, *device, idx).ok().flatten();
        let proof = conflict_at(self.0, *device, idx).ok().flatten();
        kept.iter()
            .chain(proof.iter())
            .map(shared::device::record_hash)
            .collect()
    }

    fn key(&self, device: &DeviceId) -> Option<DeviceKey> {
        scan_at(self.0, *device, 1).ok().flatten()?.device_key
    }
}

/// The record held under (device, index), if any.
fn scan_at(conn: &Connection, device: DeviceId, idx: u64) -> Result<Option<ScanRecord>, GateError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {SCAN_COLUMNS} FROM scans WHERE device_id = ?1 AND idx = ?2"
        ))?
        .query_row(params![device.to_string(), idx as i64], row_to_scan)
        .optional()?)
}

/// Replaces another device's record by the version every replica keeps.
fn replace_scan(conn: &Connection, s: &ScanRecord) -> Result<(), GateError> {
    conn.prepare_cached(
        "UPDATE scans SET event_id = ?3, ticket_id = ?4, multi_entry = ?5, direction = ?6, result = ?7,
           reason = ?8, wall_ms = ?9, hlc = ?10, gate = ?11, device_name = ?12, category_id = ?13, seat = ?14,
           proof = ?15, prev = ?16, device_key = ?17, sig = ?18
         WHERE device_id = ?1 AND idx = ?2",
    )?
    .execute(rusqlite::params_from_iter(scan_params(s)))?;
    Ok(())
}

fn scan_params(s: &ScanRecord) -> [Box<dyn rusqlite::ToSql + '_>; 18] {
    [
        Box::new(s.device_id.to_string()),
        Box::new(s.idx as i64),
        Box::new(s.ticket.map(|(e, _)| e as i64)),
        Box::new(s.ticket.map(|(_, t)| t.to_string())),
        Box::new(s.multi_entry),
        Box::new(s.direction.as_str()),
        Box::new(s.result.as_str()),
        Box::new(&s.reason),
        Box::new(s.wall_ms as i64),
        Box::new(s.hlc.0 as i64),
        Box::new(&s.gate),
        Box::new(&s.device_name),
        Box::new(s.category_id),
        Box::new(&s.seat),
        Box::new(s.proof.map(|p| p.to_string())),
        Box::new(s.prev.to_string()),
        Box::new(s.device_key.map(|k| k.to_string())),
        Box::new(s.sig.to_string()),
    ]
}

/// Appends a record unless its (device, index) is held; returns 1 if added.
fn insert_scan(conn: &Connection, s: &ScanRecord) -> Result<usize, GateError> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO scans (device_id, idx, event_id, ticket_id, multi_entry, direction, result,
                                      reason, wall_ms, hlc, gate, device_name, category_id, seat,
                                      proof, prev, device_key, sig)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
    )?
    .execute(rusqlite::params_from_iter(scan_params(s)))
    .map_err(GateError::from)
}

fn row_to_scan(r: &rusqlite::Row<'_>) -> rusqlite::Result<ScanRecord> {
    let bad = |i: usize, what: String| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, what.into())
    };
    let device_id: String = r.get(0)?;
    let event_id: Option<i64> = r.get(2)?;
    let ticket_id: Option<String> = r.get(3)?;
    let ticket = match (event_id, ticket_id) {
        (Some(e), Some(t)) => Some((e as u64, t.parse().map_err(|m| bad(3, m))?)),
        _ => None,
    };
    Ok(ScanRecord {
        device_id: device_id.parse().map_err(|m| bad(0, m))?,
        idx: r.get::<_, i64>(1)? as u64,
        ticket,
        multi_entry: r.get(4)?,
        direction: r.get::<_, String>(5)?.parse().map_err(|m| bad(5, m))?,
        result: r.get::<_, String>(6)?.parse().map_err(|m| bad(6, m))?,
        reason: r.get(7)?,
        wall_ms: r.get::<_, i64>(8)? as u64,
        hlc: Hlc(r.get::<_, i64>(9)? as u64),
        gate: r.get(10)?,
        device_name: r.get(11)?,
        category_id: r.get(12)?,
        seat: r.get(13)?,
        proof: r
            .get::<_, Option<String>>(14)?
            .map(|p| p.parse::<TicketSig>())
            .transpose()
            .map_err(|m| bad(14, m))?,
        // Empty in records written before devices signed them.
        prev: match r.get::<_, String>(15)?.as_str() {
            "" => RecordHash::FIRST,
            text => text.parse().map_err(|m| bad(15, m))?,
        },
        device_key: r
            .get::<_, Option<String>>(16)?
            .map(|k| k.parse::<DeviceKey>())
            .transpose()
            .map_err(|m| bad(16, m))?,
        sig: match r.get::<_, String>(17)?.as_str() {
            "" => DeviceSig::NONE,
            text => text.parse().map_err(|m| bad(17, m))?,
        },
    })
}

/// This device's last record, if it wrote any.
fn last_own(conn: &Connection, device: DeviceId) -> Result<Option<ScanRecord>, GateError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {SCAN_COLUMNS} FROM scans WHERE device_id = ?1 ORDER BY idx DESC LIMIT 1"
        ))?
        .query_row([device.to_string()], row_to_scan)
        .optional()?)
}

pub use shared::time::format_ms;
