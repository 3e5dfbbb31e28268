//! The node's SQLite store (WAL, `synchronous=FULL`): the grow-only set of
//! records, kept in memory too as a [`ScanLog`] for the derived views.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use rand_core::{OsRng, RngCore};
use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};
pub use shared::protocol::DeviceAuth;
use shared::{DeviceId, Duplicate, RecordHash, RecordKey, ScanLog, ScanRecord, VersionVector};

use crate::counts::Counts;

const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_records.sql"),
    include_str!("../migrations/0002_devices_auth.sql"),
    include_str!("../migrations/0003_distribution.sql"),
    include_str!("../migrations/0004_conflicts.sql"),
    include_str!("../migrations/0005_tls.sql"),
    include_str!("../migrations/0006_records_by_arrival.sql"),
];

pub use shared::protocol::PAGE_BYTES;

/// Marks a SQLite file as a gate-sync database ("VT1G").
const APPLICATION_ID: i32 = 0x5654_3147;

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("unknown or used enrollment token, or unknown device token")]
    Unauthenticated,
    #[error("device {0} is revoked")]
    Revoked(String),
    #[error("no device {0}")]
    NoDevice(String),
    #[error(transparent)]
    Keyset(#[from] shared::KeysetError),
    #[error(transparent)]
    Revocations(#[from] shared::revocations::RevocationError),
    #[error(
        "device {0} is already enrolled; an enrollment token enrolls a new device only \
         (to replace a device, revoke it and provision a new database)"
    )]
    AlreadyEnrolled(String),
    #[error(
        "record {device}/{idx} is already held with other content; a device never writes \
         an index twice (was this device's database restored from an old copy? provision a new one)"
    )]
    Conflict { device: DeviceId, idx: u64 },
    #[error(
        "record {device}/{idx} would leave a gap: the node holds this device's records up to \
         {held} with none missing; send from {next}",
        next = held + 1
    )]
    Gap {
        device: DeviceId,
        idx: u64,
        held: u64,
    },
    #[error("{0}")]
    Failed(String),
    #[error(
        "{0} belongs to another program (a scanner's or the issuer's database?), not gate-sync: \
         give this node's database with --db"
    )]
    Foreign(String),
    #[error(
        "device {device}: its token_hash is the one of device {other}; a token authenticates one device"
    )]
    TokenHashHeld { device: String, other: String },
    #[error("not signed by its device: {0}")]
    Unauthentic(String),
    #[error("stored record {device}/{idx} is damaged: {reason}")]
    Damaged {
        device: String,
        idx: i64,
        reason: String,
    },
}

/// A device allowed to sync (or no longer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnrolledDevice {
    pub device_id: String,
    pub name: String,
    pub enrolled_at_ms: u64,
    pub revoked_at_ms: Option<u64>,
}

/// The two greatest versions of one key seen: the one kept and the proof
/// of a second ([`ScanLog::insert`]'s rule, worked out before writing).
struct Versions<'a> {
    kept: Option<Cow<'a, ScanRecord>>,
    proof: Option<Cow<'a, ScanRecord>>,
}

impl<'a> Versions<'a> {
    /// Adds a version; returns whether anything changed.
    fn add(&mut self, r: &'a ScanRecord) -> bool {
        use shared::merge::supersedes;
        match self.kept.as_deref() {
            None => self.kept = Some(Cow::Borrowed(r)),
            Some(kept) if kept == r => return false,
            Some(kept) if supersedes(r, kept) => {
                self.proof = self.kept.replace(Cow::Borrowed(r));
            }
            Some(_) => match self.proof.as_deref() {
                Some(p) if p == r || supersedes(p, r) => return false,
                _ => self.proof = Some(Cow::Borrowed(r)),
            },
        }
        true
    }
}

/// One page of what a replica lacks ([`Store::page`]), as JSON arrays.
pub struct Page {
    /// The records above the replica's version vector.
    pub records: Pieces,
    /// Other versions the replica needs to see: both versions of an index
    /// written twice, every version of a device whose log forked.
    pub conflicts: Vec<u8>,
    /// How many records `records` holds.
    pub n: usize,
    /// How many indexes the page covers.
    pub indexes: usize,
    /// The key to ask after for the next page; `None` on the last.
    pub next: Option<RecordKey>,
}

impl Page {
    /// Whether the page holds nothing: nothing is lacking after its start.
    pub fn is_empty(&self) -> bool {
        self.indexes == 0
    }
}

/// A version vector holding nothing: every record is above it.
static NOTHING: VersionVector = VersionVector(BTreeMap::new());

pub struct Store {
    /// Behind its own lock so that readers of the store (pulls) can run
    /// side by side and still authenticate.
    conn: Mutex<Connection>,
    log: ScanLog,
    /// The dashboard's counts, kept as records arrive.
    counts: Counts,
    /// When each device last pulled, not yet written: a pull is a read, and
    /// an fsync per pull would serialize every gate's sync on the disk. It is
    /// written with the device's next push; `devices()` shows both. (A gate
    /// that only pulls loses its last pull time if the node restarts.)
    pulled: Mutex<BTreeMap<DeviceId, u64>>,
    /// The JSON of each device's newest records, as written to disk: what
    /// most pulls ask for (the last seconds of every gate), copied out
    /// instead of written again. At most [`RECENT`] a device.
    recent: BTreeMap<DeviceId, Recent>,
    /// The log's version vector as JSON, as every pull answer ends, until
    /// the log changes.
    vv_json: Mutex<Option<Bytes>>,
}

/// How many of each device's newest records keep their JSON at hand, at
/// least (up to twice as many are: about 30 to 65 KB a device).
pub const RECENT: usize = 64;

/// A device's newest records' JSON as written to disk, each with the comma
/// before it, as they go in a page: the records from the first run's
/// `first` on, without a gap. Runs are shared with the answers that send
/// them, not copied into each.
#[derive(Default)]
struct Recent {
    runs: VecDeque<Run>,
}

/// Records of one device, one after another: `,{...},{...}`.
struct Run {
    first: u64,
    json: Bytes,
    /// Where each record (its comma) starts in `json`.
    starts: Vec<u32>,
}

impl Run {
    /// The index after the run's last.
    fn next(&self) -> u64 {
        self.first + self.starts.len() as u64
    }

    /// Where the run's `i`th record ends.
    fn end(&self, i: usize) -> usize {
        self.starts
            .get(i + 1)
            .map_or(self.json.len(), |&s| s as usize)
    }
}

/// A run shorter than this is joined to the next one, so that a gate
/// pushing one record at a time leaves few runs: each record is copied
/// at most this many times.
const SHORT_RUN: usize = RECENT / 4;

impl Recent {
    /// Appends to `out` the JSON of records `from` to `to`, each after a
    /// comma, as slices of the runs; false (and nothing appended) unless
    /// all are at hand.
    fn slices(&self, from: u64, to: u64, out: &mut Pieces) -> bool {
        let (Some(first), Some(last)) = (self.runs.front(), self.runs.back()) else {
            return false;
        };
        if from < first.first || to >= last.next() || from > to {
            return false;
        }
        for run in self
            .runs
            .iter()
            .filter(|r| r.next() > from && r.first <= to)
        {
            // Within the run: from..=to is inside first..next.
            let a = (from.max(run.first) - run.first) as usize;
            let b = (to.min(run.next() - 1) - run.first) as usize;
            out.push(run.json.slice(run.starts[a] as usize..run.end(b)));
        }
        true
    }

    /// The JSON of record `idx`, without its comma, if at hand.
    fn get(&self, idx: u64) -> Option<&[u8]> {
        let run = self
            .runs
            .iter()
            .find(|r| r.first <= idx && idx < r.next())?;
        let i = (idx - run.first) as usize;
        run.json.get(run.starts[i] as usize + 1..run.end(i))
    }

    /// Keeps the JSON of records `first` and on (`json`, each record after
    /// a comma, starting at `starts`) when `first` is the next index;
    /// anything else (a second version, an index out of turn) starts afresh.
    fn put(&mut self, first: u64, json: &[u8], starts: &[usize]) {
        if starts.is_empty() {
            return;
        }
        // Of a long run, only the newest records are kept: what is kept
        // then starts `skip` records later, after a gap in what is at hand.
        let skip = starts.len().saturating_sub(2 * RECENT);
        if self
            .runs
            .back()
            .is_none_or(|r| r.next() != first + skip as u64)
        {
            self.runs.clear();
        }
        let (from, starts) = (starts[skip], &starts[skip..]);
        let mut run = Run {
            first: first + skip as u64,
            json: Bytes::new(),
            starts: Vec::with_capacity(starts.len()),
        };
        let mut buf = Vec::new();
        if self.runs.back().is_some_and(|r| r.starts.len() < SHORT_RUN)
            && let Some(short) = self.runs.pop_back()
        {
            run.first = short.first;
            buf.reserve(short.json.len() + json.len() - from);
            buf.extend_from_slice(&short.json);
            run.starts.extend_from_slice(&short.starts);
        }
        let base = buf.len();
        run.starts
            .extend(starts.iter().map(|s| (s - from + base) as u32));
        buf.extend_from_slice(&json[from..]);
        run.json = Bytes::from(buf);
        self.runs.push_back(run);
        // The oldest runs go while at least RECENT records remain.
        let mut held: usize = self.runs.iter().map(|r| r.starts.len()).sum();
        while let Some(oldest) = self.runs.front().map(|r| r.starts.len())
            && held - oldest >= RECENT
        {
            held -= oldest;
            self.runs.pop_front();
        }
    }
}

/// An answer in pieces: slices of the runs kept for pulls, shared and not
/// copied, between bytes written for this answer alone.
#[derive(Default)]
pub struct Pieces {
    done: Vec<Bytes>,
    done_len: usize,
    open: Vec<u8>,
}

impl Pieces {
    /// Bytes written after the pieces so far.
    pub fn write(&mut self) -> &mut Vec<u8> {
        &mut self.open
    }

    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.open.extend_from_slice(bytes);
    }

    /// A shared piece, after what was written.
    pub fn push(&mut self, piece: Bytes) {
        self.close();
        self.done_len += piece.len();
        self.done.push(piece);
    }

    fn close(&mut self) {
        if !self.open.is_empty() {
            let open = Bytes::from(std::mem::take(&mut self.open));
            self.done_len += open.len();
            self.done.push(open);
        }
    }

    pub fn len(&self) -> usize {
        self.done_len + self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every piece, in order.
    pub fn into_pieces(mut self) -> Vec<Bytes> {
        self.close();
        self.done
    }

    /// The answer in one piece.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        for piece in &self.done {
            out.extend_from_slice(piece);
        }
        out.extend_from_slice(&self.open);
        out
    }
}

impl Store {
    /// Opens (creating) the store and loads every record.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        // It holds the node's TLS key: its owner's alone.
        crate::private_file(path)
            .map_err(|e| StoreError::Failed(format!("{}: {e}", path.display())))?;
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // A SQLite file of another program (a scanner's, the issuer's) is
        // refused, not given our tables. Nodes made before the mark have a
        // `records` table and no mark: they are ours.
        let app: i32 = conn.pragma_query_value(None, "application_id", |r| r.get(0))?;
        let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))?;
        let ours_unmarked: bool = conn
            .prepare("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'records'")?
            .exists([])?;
        if app != APPLICATION_ID && tables > 0 && !(app == 0 && ours_unmarked) {
            return Err(StoreError::Foreign(path.display().to_string()));
        }
        let applied: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if applied > MIGRATIONS.len() {
            return Err(StoreError::Failed(format!(
                "{} was written by a newer gate-sync (schema {applied}); upgrade this one",
                path.display()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i + 1)?;
            tx.commit()?;
        }
        conn.pragma_update(None, "application_id", APPLICATION_ID)?;
        let mut log = ScanLog::new();
        // Second versions after the kept ones: the log ends the same.
        for sql in [
            "SELECT device_id, idx, body FROM records",
            "SELECT device_id, idx, body FROM conflicts",
        ] {
            let mut stmt = conn.prepare(sql)?;
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
        Ok(Store {
            conn: Mutex::new(conn),
            counts: Counts::of(&log),
            log,
            pulled: Default::default(),
            recent: BTreeMap::new(),
            vv_json: Mutex::new(None),
        })
    }

    /// Moves what commits write ahead into the database file from a thread
    /// of its own, so that a push's commit never waits for it (it took a
    /// fifth of the committing thread's time at 100,000 records a second).
    /// Commits still checkpoint by themselves if the log outgrows 64 MiB:
    /// should this thread stop, nothing grows without bound.
    pub fn checkpoint_in_background(&self) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.pragma_update(None, "wal_autocheckpoint", 16384)?;
        let path = conn
            .path()
            .filter(|p| !p.is_empty())
            .map(std::path::PathBuf::from)
            .ok_or_else(|| StoreError::Failed("an in-memory database has no checkpoints".into()))?;
        let own = Connection::open(&path)?;
        own.busy_timeout(std::time::Duration::from_secs(5))?;
        own.pragma_update(None, "synchronous", "FULL")?;
        std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                    // PASSIVE: copies what no reader needs, never waits for
                    // a writer nor makes one wait.
                    if let Err(e) = own.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                        tracing::warn!(error = %e, "background checkpoint stopped; commits checkpoint instead");
                        return;
                    }
                }
            })
            .map_err(|e| StoreError::Failed(format!("starting the checkpoint thread: {e}")))?;
        Ok(())
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn conn_mut(&mut self) -> &mut Connection {
        self.conn.get_mut().unwrap_or_else(|p| p.into_inner())
    }

    pub fn log(&self) -> &ScanLog {
        &self.log
    }

    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Tickets admitted while already inside, optionally for one event: the
    /// same as [`ScanLog::duplicates`], looked for only among tickets
    /// admitted at least twice.
    pub fn duplicates(&self, event: Option<u64>) -> Vec<Duplicate> {
        self.counts
            .admitted_twice(event, &self.log)
            .filter_map(|(ticket, scans)| shared::merge::duplicate_of(ticket, scans))
            .collect()
    }

    /// Adds a batch in one transaction; records already held change nothing
    /// (of two different records for one key, every replica keeps the one
    /// [`shared::merge::supersedes`] picks). Returns how
    /// many records were new or changed.
    pub fn add(&mut self, records: &[ScanRecord], now_ms: u64) -> Result<usize, StoreError> {
        Ok(self.add_group(&[(records, None)], now_ms)?[0])
    }

    /// Adds several batches in one transaction, and notes that each batch's
    /// device (if given) synced: group commit, one disk flush for pushes
    /// that arrived together. All are written or none. Returns, per batch,
    /// how many of its records were new or changed, as if the batches had
    /// been added one after another.
    pub fn add_group(
        &mut self,
        batches: &[(&[ScanRecord], Option<DeviceId>)],
        now_ms: u64,
    ) -> Result<Vec<usize>, StoreError> {
        // No record may land above a gap: what a replica lacks then stays
        // one range per device, and nothing is sent again on every pull.
        let all: Vec<&ScanRecord> = batches.iter().flat_map(|(b, _)| b.iter()).collect();
        if let Some((r, held)) = self.log.above_gap(all.iter().copied()) {
            return Err(StoreError::Gap {
                device: r.device_id,
                idx: r.idx,
                held,
            });
        }
        // What gates push: each record new, its key once. They are taken
        // as they are, without working out versions.
        let fresh_only = self.all_new(&all);
        // What the CRDT takes: per key, the version kept and the proof of
        // a second version, as they end after every record is added. Only
        // what changed is written, so disk and memory agree.
        let mut ends: BTreeMap<(DeviceId, u64), Versions<'_>> = BTreeMap::new();
        let mut stored = Vec::with_capacity(batches.len());
        if fresh_only {
            stored.extend(batches.iter().map(|(b, _)| b.len()));
        }
        for (records, _) in batches.iter().filter(|_| !fresh_only) {
            let mut changed = std::collections::BTreeSet::new();
            for r in records.iter() {
                let key = (r.device_id, r.idx);
                let versions = ends.entry(key).or_insert_with(|| Versions {
                    kept: self.log.get(&r.device_id, r.idx).cloned().map(Cow::Owned),
                    proof: self
                        .log
                        .runner_up(&r.device_id, r.idx)
                        .cloned()
                        .map(Cow::Owned),
                });
                if versions.add(r) {
                    changed.insert(key);
                }
            }
            stored.push(changed.len());
        }
        ends.retain(|(device, idx), v| {
            v.kept.as_deref() != self.log.get(device, *idx)
                || v.proof.as_deref() != self.log.runner_up(device, *idx)
        });
        // The rows to write: (version kept, proof of a second version) by
        // key, each device's one after another.
        type Row<'r> = (Option<&'r ScanRecord>, Option<&'r ScanRecord>);
        let rows: Vec<Row<'_>> = match fresh_only {
            true => all.iter().map(|r| (Some(*r), None)).collect(),
            false => ends
                .values()
                .map(|v| (v.kept.as_deref(), v.proof.as_deref()))
                .collect(),
        };
        // The JSON written, kept for pulls once the commit holds.
        let mut fresh: Vec<(DeviceId, u64, usize)> = Vec::new();
        let mut written: Vec<u8> = Vec::new();
        let tx = self
            .conn
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .transaction()?;
        {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO records (device_id, idx, body, received_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(device_id, idx) DO UPDATE SET body = excluded.body
                 WHERE excluded.body <> records.body",
            )?;
            let mut proof = tx.prepare_cached(
                "INSERT INTO conflicts (device_id, idx, body) VALUES (?1, ?2, ?3)
                 ON CONFLICT(device_id, idx) DO UPDATE SET body = excluded.body",
            )?;
            // Rows come a device at a time: its hex id is worked out once
            // per run.
            let mut device = (None, String::new());
            let mut body = Vec::with_capacity(512);
            fresh.reserve(rows.len());
            // Typical records take about 520 bytes.
            written.reserve(rows.len() * 560);
            for (kept, p) in &rows {
                let Some((id, idx)) = kept.or(*p).map(|r| (r.device_id, r.idx)) else {
                    continue;
                };
                if device.0 != Some(id) {
                    device = (Some(id), id.to_string());
                }
                if let Some(kept) = kept {
                    body.clear();
                    kept.write_json(&mut body);
                    // write_json writes UTF-8 only.
                    let text = std::str::from_utf8(&body).unwrap_or_default();
                    upsert.execute(params![device.1, idx as i64, text, now_ms as i64])?;
                    // As it goes in a page: after a comma.
                    fresh.push((id, idx, written.len()));
                    written.push(b',');
                    written.extend_from_slice(&body);
                }
                if let Some(p) = p
                    && self.log.runner_up(&id, idx) != Some(p)
                {
                    body.clear();
                    p.write_json(&mut body);
                    let text = std::str::from_utf8(&body).unwrap_or_default();
                    proof.execute(params![device.1, idx as i64, text])?;
                }
            }
            let mut touch = tx.prepare_cached(
                "INSERT INTO devices (device_id, last_sync) VALUES (?1, ?2)
                 ON CONFLICT(device_id) DO UPDATE SET last_sync = max(last_sync, excluded.last_sync)",
            )?;
            for device in batches.iter().filter_map(|(_, d)| *d) {
                touch.execute(params![device.to_string(), now_ms as i64])?;
            }
        }
        tx.commit()?;
        // By runs of one device's indexes, one after another.
        let mut runs = fresh.as_slice();
        while let Some(&(device, first, at)) = runs.first() {
            let n = runs
                .iter()
                .enumerate()
                .take_while(|(i, (d, idx, _))| *d == device && *idx == first + *i as u64)
                .count();
            let end = runs.get(n).map_or(written.len(), |r| r.2);
            let starts: Vec<usize> = runs[..n].iter().map(|r| r.2 - at).collect();
            self.recent
                .entry(device)
                .or_default()
                .put(first, &written[at..end], &starts);
            runs = &runs[n..];
        }
        let pulled = self.pulled.get_mut().unwrap_or_else(|p| p.into_inner());
        for device in batches.iter().filter_map(|(_, d)| *d) {
            pulled.remove(&device);
        }
        // A faulty device may send two records for one key; the one kept then
        // replaces one already counted, and everything is counted again.
        // (Counting the rest one by one would read the replaced record in
        // place of the one it replaced.)
        drop(rows);
        if fresh_only {
            for r in all {
                self.counts.add(r);
                self.log.insert(r.clone());
            }
        }
        let replaced = ends.iter().any(|((device, idx), v)| {
            self.log
                .get(device, *idx)
                .is_some_and(|held| Some(held) != v.kept.as_deref())
        });
        for v in ends.into_values() {
            if let Some(kept) = v.kept {
                if !replaced && self.log.get(&kept.device_id, kept.idx).is_none() {
                    self.counts.add(&kept);
                }
                self.log.insert(kept.into_owned());
            }
            if let Some(proof) = v.proof {
                self.log.insert(proof.into_owned());
            }
        }
        if replaced {
            self.counts = Counts::of(&self.log);
        }
        *self.vv_json.get_mut().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(stored)
    }

    /// Whether every record is of a key held nowhere, in the log or twice
    /// among them (each device's in increasing order, as gates push them).
    fn all_new(&self, records: &[&ScanRecord]) -> bool {
        let mut last: BTreeMap<DeviceId, u64> = BTreeMap::new();
        records.iter().all(|r| {
            let above = last.get(&r.device_id).is_none_or(|l| r.idx > *l);
            last.insert(r.device_id, r.idx);
            above
                && self.log.get(&r.device_id, r.idx).is_none()
                && self.log.runner_up(&r.device_id, r.idx).is_none()
        })
    }

    /// What a device's push must satisfy beyond the protocol's checks:
    /// signed by the device, and no gap. Returns the least index of which
    /// the push holds a second version, of a record held or of another in
    /// the same push: proof of a faulty device, kept and answered as a
    /// conflict.
    pub fn check_push(&self, records: &[ScanRecord]) -> Result<Option<u64>, StoreError> {
        if let Some((r, held)) = self.log.above_gap(records.iter()) {
            return Err(StoreError::Gap {
                device: r.device_id,
                idx: r.idx,
                held,
            });
        }
        shared::device::authenticate_all(records, &self.log)
            .map_err(|e| StoreError::Unauthentic(e.to_string()))?;
        let mut first: BTreeMap<(DeviceId, u64), &ScanRecord> = BTreeMap::new();
        let mut twice = None;
        for r in records {
            let other = self
                .log
                .get(&r.device_id, r.idx)
                .or_else(|| first.get(&(r.device_id, r.idx)).copied());
            if other.is_some_and(|other| other != r) {
                twice = Some(twice.map_or(r.idx, |t: u64| t.min(r.idx)));
            }
            first.entry((r.device_id, r.idx)).or_insert(r);
        }
        Ok(twice)
    }

    /// Adds records from a peer node, and second versions of indexes it
    /// holds: only what their devices signed. A device whose chain breaks
    /// loses what follows the break (logged); every other device's records
    /// are taken. Returns how many records were new or changed.
    pub fn add_authentic(
        &mut self,
        records: &[ScanRecord],
        conflicts: &[ScanRecord],
        now_ms: u64,
    ) -> Result<usize, StoreError> {
        let (records, refused) = shared::device::authentic(records, &self.log);
        let mut stored = self.add(&records, now_ms)?;
        let held: Vec<ScanRecord> = conflicts
            .iter()
            .filter(|r| self.log.get(&r.device_id, r.idx).is_some())
            .cloned()
            .collect();
        let (pairs, refused_pairs) = shared::device::authentic(&held, &self.log);
        stored += self.add(&pairs, now_ms)?;
        for u in refused.iter().chain(&refused_pairs) {
            tracing::warn!(error = %u, "records refused: not signed by their device");
        }
        Ok(stored)
    }

    /// One page of what a replica at `theirs` lacks, in key order after
    /// `after`: the records above its version vector, and, for the indexes
    /// of the page, both versions of every index written twice and every
    /// version of a device whose log forked from the replica's (`digests`
    /// differ at the same version vector: [`ScanLog::diverging`]). At most
    /// `limit` indexes and about [`PAGE_BYTES`], however many versions a
    /// faulty or hostile device wrote: the rest follow on the next pages.
    /// Written straight from the log, with no copy of the records.
    pub fn page(
        &self,
        theirs: &VersionVector,
        digests: &BTreeMap<DeviceId, RecordHash>,
        after: Option<RecordKey>,
        limit: usize,
    ) -> Page {
        self.page_after(b"", theirs, digests, after, limit)
    }

    /// [`Store::page`] with `prefix` written before its records' array,
    /// so that an answer's start is not copied again behind it.
    pub fn page_after(
        &self,
        prefix: &[u8],
        theirs: &VersionVector,
        digests: &BTreeMap<DeviceId, RecordHash>,
        after: Option<RecordKey>,
        limit: usize,
    ) -> Page {
        let past = |k: &RecordKey| after.is_none_or(|a| *k > a);
        let mut missing = self.log.missing_after(theirs, after).peekable();
        // Indexes written twice, by their proofs (the log offers no range
        // over them: a page after the first skips those before it).
        let mut twice = self
            .log
            .conflicts()
            .filter(|r| {
                self.log
                    .runner_up(&r.device_id, r.idx)
                    .is_some_and(|p| std::ptr::eq(p, *r))
            })
            .map(RecordKey::of)
            .skip_while(|k| !past(k))
            .peekable();
        let forked: Vec<DeviceId> = digests
            .iter()
            .filter(|(device, digest)| {
                theirs.get(device) == self.log.version_vector_of(device)
                    && self.log.digest(device) != **digest
            })
            .map(|(device, _)| *device)
            .collect();
        let mut forked = forked
            .into_iter()
            .flat_map(|device| {
                let from = match after {
                    Some(k) if k.device_id == device => Some(k),
                    Some(k) if k.device_id > device => None,
                    _ => Some(RecordKey {
                        device_id: device,
                        idx: 0,
                    }),
                };
                from.into_iter().flat_map(move |from| {
                    self.log
                        .missing_after(&NOTHING, Some(from))
                        .take_while(move |r| r.device_id == device)
                })
            })
            .map(RecordKey::of)
            .peekable();
        // What gates ask nearly always: records, and no device that wrote
        // an index twice nor forked. Each device's newest ones go out as
        // they were kept, not copied.
        if twice.peek().is_none() && forked.peek().is_none() {
            let mut records = Pieces::default();
            records.extend_from_slice(prefix);
            records.extend_from_slice(b"[");
            let (n, next) = self.plain_page(&mut records, theirs, after, limit);
            records.extend_from_slice(b"]");
            return Page {
                records,
                conflicts: b"[]".to_vec(),
                n,
                indexes: n,
                next,
            };
        }
        // Room for a full page of typical records (about 520 bytes each),
        // so a long answer is not copied as it grows.
        let mut records = Vec::with_capacity(
            prefix.len()
                + if missing.peek().is_some() {
                    (limit.min(5000) * 560).min(PAGE_BYTES + 4096)
                } else {
                    2
                },
        );
        records.extend_from_slice(prefix);
        records.push(b'[');
        let start = records.len();
        let mut conflicts = vec![b'['];
        let append = |out: &mut Vec<u8>, r: &ScanRecord| {
            if out.last() != Some(&b'[') {
                out.push(b',');
            }
            r.write_json(out);
        };
        let (mut n, mut indexes, mut last, mut next) = (0, 0, None, None);
        // The device of the record before, and its JSON at hand.
        let mut cached: (Option<DeviceId>, Option<&Recent>) = (None, None);
        loop {
            let key = [
                missing.peek().map(|r| RecordKey::of(r)),
                twice.peek().copied(),
                forked.peek().copied(),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(key) = key else { break };
            if indexes >= limit || records.len() + conflicts.len() >= PAGE_BYTES {
                // Full: this index starts the next page.
                next = last;
                break;
            }
            let sent = missing.next_if(|r| RecordKey::of(r) == key);
            if let Some(r) = sent {
                // The newest records' JSON is at hand: copied, not written.
                if cached.0 != Some(r.device_id) {
                    cached = (Some(r.device_id), self.recent.get(&r.device_id));
                }
                match cached.1.and_then(|c| c.get(r.idx)) {
                    Some(json) if records.len() > start => {
                        records.push(b',');
                        records.extend_from_slice(json);
                    }
                    Some(json) => records.extend_from_slice(json),
                    None => append(&mut records, r),
                }
                n += 1;
            }
            let forked = forked.next_if_eq(&key).is_some();
            let twice = twice.next_if_eq(&key).is_some();
            if (forked || twice)
                && sent.is_none()
                && let Some(kept) = self.log.get(&key.device_id, key.idx)
            {
                append(&mut conflicts, kept);
            }
            if let Some(proof) = self
                .log
                .runner_up(&key.device_id, key.idx)
                .filter(|_| twice)
            {
                append(&mut conflicts, proof);
            }
            indexes += 1;
            last = Some(key);
        }
        records.push(b']');
        conflicts.push(b']');
        let mut pieces = Pieces::default();
        *pieces.write() = records;
        Page {
            records: pieces,
            conflicts,
            n,
            indexes,
            next,
        }
    }

    /// [`Store::page_after`]'s records when no index was written twice and
    /// no device forked: appended to `out` (after its `[`); returns how
    /// many records (each its own index) and the key of the next page.
    fn plain_page(
        &self,
        out: &mut Pieces,
        theirs: &VersionVector,
        after: Option<RecordKey>,
        limit: usize,
    ) -> (usize, Option<RecordKey>) {
        let start = out.len();
        let (mut n, mut last) = (0, None);
        // Every record goes after a comma, but the page's first.
        let comma = |out: &mut Pieces| {
            if out.len() > start {
                out.extend_from_slice(b",");
            }
        };
        for (device, held) in self.log.devices_from(after.map(|k| k.device_id)) {
            let mut from = theirs.get(device).saturating_add(1);
            if let Some(k) = after.filter(|k| k.device_id == *device) {
                from = from.max(k.idx.saturating_add(1));
            }
            if from > held {
                continue;
            }
            if n >= limit || out.len() >= PAGE_BYTES {
                return (n, last);
            }
            // Whole, if the page has room: the log holds every index of
            // what the window holds.
            let to = held.min(from.saturating_add((limit - n - 1) as u64));
            let recent = self.recent.get(device);
            let mut runs = Pieces::default();
            if recent.is_some_and(|c| c.slices(from, to, &mut runs))
                && out.len() + runs.len() < PAGE_BYTES
            {
                let mut runs = runs.into_pieces().into_iter();
                if out.len() == start
                    && let Some(first) = runs.next()
                {
                    // The page's first record: without its comma.
                    out.push(first.slice(1..));
                }
                runs.for_each(|run| out.push(run));
                n += (to - from + 1) as usize;
                last = Some(RecordKey {
                    device_id: *device,
                    idx: to,
                });
                if to < held {
                    return (n, last);
                }
                continue;
            }
            for r in self.log.range(device, from..=held) {
                if n >= limit || out.len() >= PAGE_BYTES {
                    return (n, last);
                }
                comma(out);
                match recent.and_then(|c| c.get(r.idx)) {
                    Some(json) => out.extend_from_slice(json),
                    None => r.write_json(out.write()),
                }
                n += 1;
                last = Some(RecordKey::of(r));
            }
        }
        (n, None)
    }

    /// The log's version vector, as JSON.
    pub fn version_vector_json(&self) -> Bytes {
        let mut cached = self.vv_json.lock().unwrap_or_else(|p| p.into_inner());
        cached
            .get_or_insert_with(|| {
                // A map of strings to numbers always serializes.
                serde_json::to_vec(&self.log.version_vector())
                    .unwrap_or_default()
                    .into()
            })
            .clone()
    }

    /// Notes that a device pulled; kept in memory until the next write.
    pub fn note_pull(&self, device: DeviceId, now_ms: u64) {
        self.pulled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(device, now_ms);
    }

    /// Devices and when each last synced (unix ms): what is written, and
    /// the pulls not written yet.
    pub fn devices(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut last: BTreeMap<String, u64> = self
            .pulled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(device, at)| (device.to_string(), *at))
            .collect();
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT device_id, last_sync FROM devices")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })?;
        for row in rows {
            let (device, at) = row?;
            let held = last.entry(device).or_insert(at);
            *held = (*held).max(at);
        }
        Ok(last.into_iter().collect())
    }

    /// Stores the keyset devices are to use, after validating it whole.
    pub fn set_keyset(&self, json: &str, now_ms: u64) -> Result<(), StoreError> {
        shared::Keyset::from_json(json)?;
        self.set_distribution("keyset", json, now_ms)
    }

    /// Stores the revocation list devices are to apply, after validating it whole.
    pub fn set_revocations(&self, text: &str, now_ms: u64) -> Result<usize, StoreError> {
        let n = shared::revocations::parse(text)?.len();
        self.set_distribution("revocations", text, now_ms)?;
        Ok(n)
    }

    fn set_distribution(&self, name: &str, body: &str, now_ms: u64) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO distribution (name, body, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(name) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
            params![name, body, now_ms as i64],
        )?;
        Ok(())
    }

    /// The keyset or revocation list to hand out, with when it was set.
    pub fn distribution(&self, name: &str) -> Result<Option<(String, u64)>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT body, updated_at FROM distribution WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)),
            )
            .optional()?)
    }

    /// The node's TLS certificate, made and kept on first use.
    pub fn node_cert(&self) -> Result<crate::tls::NodeCert, StoreError> {
        let conn = self.conn();
        let held: Option<(Vec<u8>, Vec<u8>)> = conn
            .query_row("SELECT cert_der, key_der FROM tls", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        if let Some((cert_der, key_der)) = held {
            return Ok(crate::tls::NodeCert { cert_der, key_der });
        }
        let cert = crate::tls::NodeCert::generate().map_err(StoreError::Failed)?;
        conn.execute(
            "INSERT INTO tls (singleton, cert_der, key_der) VALUES (1, ?1, ?2)
             ON CONFLICT(singleton) DO NOTHING",
            params![cert.cert_der, cert.key_der],
        )?;
        drop(conn);
        // Another process may have made one first: the stored one counts.
        self.node_cert()
    }

    /// Makes a one-time enrollment token for a device called `name`; only its
    /// hash is stored, so the token is shown once.
    pub fn create_enrollment(&self, name: &str, now_ms: u64) -> Result<String, StoreError> {
        let token = new_token();
        self.conn().execute(
            "INSERT INTO enrollments (token_hash, name, created_at) VALUES (?1, ?2, ?3)",
            params![hash(&token), name, now_ms as i64],
        )?;
        Ok(token)
    }

    /// Uses an enrollment token for `device`, a device this node has never
    /// known (here or from a peer); returns the device's own token for every
    /// later request. A token never takes over an enrolled device: its id
    /// is in every record it wrote, so anyone could name it.
    pub fn enroll(
        &mut self,
        enrollment: &str,
        device: DeviceId,
        now_ms: u64,
    ) -> Result<String, StoreError> {
        let tx = self.conn_mut().transaction()?;
        let name: Option<String> = tx
            .query_row(
                "SELECT name FROM enrollments WHERE token_hash = ?1 AND device_id IS NULL",
                [hash(enrollment)],
                |r| r.get(0),
            )
            .optional()?;
        let name = name.ok_or(StoreError::Unauthenticated)?;
        let known: Option<Option<i64>> = tx
            .query_row(
                "SELECT revoked_at FROM device_auth WHERE device_id = ?1",
                [device.to_string()],
                |r| r.get(0),
            )
            .optional()?;
        match known {
            Some(Some(_)) => return Err(StoreError::Revoked(device.to_string())),
            Some(None) => return Err(StoreError::AlreadyEnrolled(device.to_string())),
            None => {}
        }
        let token = new_token();
        tx.execute(
            "UPDATE enrollments SET device_id = ?2 WHERE token_hash = ?1",
            params![hash(enrollment), device.to_string()],
        )?;
        tx.execute(
            "INSERT INTO device_auth (device_id, name, token_hash, enrolled_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(device_id) DO UPDATE SET name = excluded.name, token_hash = excluded.token_hash,
               enrolled_at = max(device_auth.enrolled_at + 1, excluded.enrolled_at)",
            params![device.to_string(), name, hash(&token), now_ms as i64],
        )?;
        tx.commit()?;
        Ok(token)
    }

    /// The device a token belongs to, if it is known and not revoked.
    pub fn authenticate(&self, token: &str) -> Result<DeviceId, StoreError> {
        let hashed = hash(token);
        let row: Option<(String, Option<i64>)> = self
            .conn()
            .prepare_cached("SELECT device_id, revoked_at FROM device_auth WHERE token_hash = ?1")?
            .query_row([hashed], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        match row {
            None => Err(StoreError::Unauthenticated),
            Some((device, Some(_))) => Err(StoreError::Revoked(device)),
            Some((device, None)) => device.parse().map_err(|_| StoreError::Unauthenticated),
        }
    }

    /// Refuses a device from now on; its records stay.
    pub fn revoke(&self, device: &str, now_ms: u64) -> Result<(), StoreError> {
        let n = self.conn().execute(
            "UPDATE device_auth SET revoked_at = coalesce(revoked_at, ?2) WHERE device_id = ?1",
            params![device, now_ms as i64],
        )?;
        if n == 0 {
            return Err(StoreError::NoDevice(device.to_owned()));
        }
        Ok(())
    }

    /// Every enrolled device's authentication, to hand to peer nodes.
    pub fn device_auth(&self) -> Result<Vec<DeviceAuth>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT device_id, name, token_hash, enrolled_at, revoked_at FROM device_auth
             ORDER BY device_id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, Option<i64>>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, name, token_hash, enrolled_at, revoked_at) = row?;
            out.push(DeviceAuth {
                device_id: id.parse().map_err(|reason| StoreError::Damaged {
                    device: id.clone(),
                    idx: 0,
                    reason,
                })?,
                name,
                token_hash,
                enrolled_at_ms: enrolled_at as u64,
                revoked_at_ms: revoked_at.map(|t| t as u64),
            });
        }
        Ok(out)
    }

    /// Takes what a peer node knows of enrolled devices, in one transaction:
    /// the later enrollment of a device wins, and a revocation always stays.
    /// Merging the same list again changes nothing. A list naming a token
    /// hash that another device holds is refused whole: a token
    /// authenticates one device (and the database holds each hash once).
    pub fn merge_device_auth(&mut self, devices: &[DeviceAuth]) -> Result<(), StoreError> {
        let tx = self.conn_mut().transaction()?;
        {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO device_auth (device_id, name, token_hash, enrolled_at, revoked_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(device_id) DO UPDATE SET
                   name = CASE WHEN (excluded.enrolled_at, excluded.token_hash) > (enrolled_at, token_hash)
                               THEN excluded.name ELSE name END,
                   token_hash = CASE WHEN (excluded.enrolled_at, excluded.token_hash) > (enrolled_at, token_hash)
                               THEN excluded.token_hash ELSE token_hash END,
                   enrolled_at = max(enrolled_at, excluded.enrolled_at),
                   revoked_at = CASE WHEN revoked_at IS NULL THEN excluded.revoked_at
                                     WHEN excluded.revoked_at IS NULL THEN revoked_at
                                     ELSE min(revoked_at, excluded.revoked_at) END",
            )?;
            let mut holder =
                tx.prepare_cached("SELECT device_id FROM device_auth WHERE token_hash = ?1")?;
            for d in devices {
                let id = d.device_id.to_string();
                let held: Option<String> =
                    holder.query_row([&d.token_hash], |r| r.get(0)).optional()?;
                if let Some(other) = held.filter(|other| *other != id) {
                    return Err(StoreError::TokenHashHeld { device: id, other });
                }
                upsert.execute(params![
                    id,
                    d.name,
                    d.token_hash,
                    d.enrolled_at_ms as i64,
                    d.revoked_at_ms.map(|t| t as i64),
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Enrolled devices, oldest first.
    pub fn enrolled(&self) -> Result<Vec<EnrolledDevice>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT device_id, name, enrolled_at, revoked_at FROM device_auth ORDER BY enrolled_at",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(EnrolledDevice {
                device_id: r.get(0)?,
                name: r.get(1)?,
                enrolled_at_ms: r.get::<_, i64>(2)? as u64,
                revoked_at_ms: r.get::<_, Option<i64>>(3)?.map(|t| t as u64),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// `gs_` and 32 random bytes in base64url. The prefix tells what the token
/// is for, and keeps it from starting with `-`, which a command line would
/// take for an option.
fn new_token() -> String {
    let mut raw = [0u8; 32];
    OsRng.fill_bytes(&mut raw);
    format!("gs_{}", URL_SAFE_NO_PAD.encode(raw))
}

/// Tokens are stored hashed: a copy of the database lets no one in.
fn hash(token: &str) -> String {
    shared::hex::encode(&Sha256::digest(token.as_bytes()))
}
