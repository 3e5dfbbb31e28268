//! The merged scan log as a state-based CRDT, and what every replica derives
//! from it.
//!
//! [`ScanLog`] is a grow-only set of [`ScanRecord`]s keyed by
//! `(device_id, idx)`: merging is set union, so it is commutative,
//! associative and idempotent, and replicas that have seen the same records
//! hold the same state whatever the order they saw them in. Each device
//! writes only its own keys, so a key never holds two different records; if a
//! faulty device ever sends two, every replica keeps the same one
//! ([`supersedes`]: an admission first, then the greater record), which keeps
//! the merge a join. A second version can never erase an admission.
//!
//! [`VersionVector`] is what two replicas exchange to know what the other
//! lacks: for each device, the highest index held with no gap below it.
//!
//! Derived identically on every replica: [`ScanLog::first_admission`] and
//! [`ScanLog::duplicates`], tickets admitted while already inside.
//!
//! Why not the `crdts` crate: its `GSet` would keep both records of a
//! conflicting key, and its `VClock` holds the highest counter seen, not the
//! highest contiguous one, which is what tells a peer which records to send.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::code::TicketId;
use crate::scan::{DeviceId, Direction, RecordHash, ScanRecord};

/// Folds a record into its device's digest. A record's signature stands for
/// its content (two versions with one valid signature would be a forgery),
/// so its two halves are folded in, with no hashing on the ingest path.
fn fold(digest: &mut RecordHash, r: &ScanRecord) {
    let (a, b) = r.sig.0.split_at(32);
    for ((d, x), y) in digest.0.iter_mut().zip(a).zip(b) {
        *d ^= x ^ y;
    }
}
use crate::verify::ResultCode;

/// A ticket's identity: (event id, ticket id).
pub type TicketKey = (u64, TicketId);

/// For each device, the highest index held with every index below it held too.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionVector(pub BTreeMap<DeviceId, u64>);

impl VersionVector {
    pub fn get(&self, device: &DeviceId) -> u64 {
        self.0.get(device).copied().unwrap_or(0)
    }
}

/// Names one record everywhere: a device and its index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RecordKey {
    pub device_id: DeviceId,
    pub idx: u64,
}

impl RecordKey {
    pub fn of(record: &ScanRecord) -> RecordKey {
        RecordKey {
            device_id: record.device_id,
            idx: record.idx,
        }
    }
}

/// The grow-only set of every scan record a replica holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanLog {
    /// Per device, its records by index: a peer's missing records are one
    /// short range per device.
    records: BTreeMap<DeviceId, DeviceRecords>,
    len: usize,
    /// The version vector, kept up to date on insert (it depends only on
    /// `records`, so equal logs have equal caches).
    contiguous: BTreeMap<DeviceId, u64>,
    /// Each device's greatest index held (a cache, like `contiguous`).
    highest: BTreeMap<DeviceId, u64>,
    /// For an index its device wrote twice (a faulty or hostile device):
    /// the version not kept, the greatest such. With the kept one, it is
    /// the proof against the device; every replica ends with the same pair.
    runner_up: BTreeMap<RecordKey, ScanRecord>,
    /// Per device, the XOR of the signatures of the versions kept (each
    /// folded to 32 bytes): two replicas
    /// with the same version vector but different digests hold different
    /// versions of some index (a device forked its log while partitioned),
    /// which a version vector alone never shows.
    digests: BTreeMap<DeviceId, RecordHash>,
}

/// One device's records by index. Those from 1 on with none missing are
/// kept one after another, in chunks (a node refuses gaps, so that is every
/// record of a node): about half the memory of a tree, whose nodes stay
/// half full when keys only grow. Records above a gap are in a tree until
/// the gap fills.
#[derive(Clone, Debug, Default)]
struct DeviceRecords {
    /// Records 1 to `dense`, [`CHUNK`] a chunk.
    chunks: Vec<Vec<ScanRecord>>,
    dense: u64,
    /// Records above the first index missing.
    above: BTreeMap<u64, ScanRecord>,
}

/// Records a chunk: 376 KiB of records. A device's first chunk grows as it
/// fills, so that a device of a few records takes little.
const CHUNK: usize = 1024;

impl DeviceRecords {
    /// Where index `idx` is among the chunks, if it is there.
    fn at(&self, idx: u64) -> Option<(usize, usize)> {
        let i = usize::try_from(idx.checked_sub(1)?).ok()?;
        (idx <= self.dense).then_some((i / CHUNK, i % CHUNK))
    }

    fn get(&self, idx: u64) -> Option<&ScanRecord> {
        match self.at(idx) {
            Some((c, i)) => self.chunks.get(c)?.get(i),
            None => self.above.get(&idx),
        }
    }

    fn get_mut(&mut self, idx: u64) -> Option<&mut ScanRecord> {
        match self.at(idx) {
            Some((c, i)) => self.chunks.get_mut(c)?.get_mut(i),
            None => self.above.get_mut(&idx),
        }
    }

    /// Adds the record of an index not held.
    fn insert_new(&mut self, record: ScanRecord) {
        if record.idx != self.dense + 1 {
            self.above.insert(record.idx, record);
            return;
        }
        self.push(record);
        // Records above the gap just filled join the run.
        while let Some(next) = self.above.remove(&(self.dense + 1)) {
            self.push(next);
        }
    }

    fn push(&mut self, record: ScanRecord) {
        if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
            let room = if self.chunks.is_empty() { 0 } else { CHUNK };
            self.chunks.push(Vec::with_capacity(room));
        }
        if let Some(chunk) = self.chunks.last_mut() {
            chunk.push(record);
            self.dense += 1;
        }
    }

    /// The records with an index from `from` to `to`, in order.
    fn range(&self, from: u64, to: u64) -> impl Iterator<Item = &ScanRecord> + '_ {
        let (lo, hi) = (from.max(1), to.min(self.dense));
        let run = (lo <= hi)
            .then(|| {
                let (a, b) = ((lo - 1) as usize, hi as usize);
                (a / CHUNK..=(b - 1) / CHUNK).flat_map(move |c| {
                    let start = c * CHUNK;
                    let chunk = &self.chunks[c];
                    chunk[a.max(start) - start..b.min(start + CHUNK) - start].iter()
                })
            })
            .into_iter()
            .flatten();
        let above = (to > self.dense)
            .then(|| {
                self.above
                    .range(from.max(self.dense + 1)..=to)
                    .map(|(_, r)| r)
            })
            .into_iter()
            .flatten();
        run.chain(above)
    }

    fn values(&self) -> impl Iterator<Item = &ScanRecord> + '_ {
        self.chunks.iter().flatten().chain(self.above.values())
    }
}

/// Equal when they hold the same records (a record holds its index).
impl PartialEq for DeviceRecords {
    fn eq(&self, other: &DeviceRecords) -> bool {
        self.dense == other.dense && self.values().eq(other.values())
    }
}

impl Eq for DeviceRecords {}

/// A ticket admitted while already inside: the same single-entry ticket (or
/// its screenshot) let in at two gates while they were offline, or a
/// multi-entry ticket entering twice without an exit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Duplicate {
    pub event_id: u64,
    pub ticket_id: TicketId,
    /// Admitted entries beyond the first without an exit between them.
    pub extra_admissions: usize,
    /// Every scan of the ticket, admitted or refused, in merged order.
    pub scans: Vec<ScanRecord>,
}

impl ScanLog {
    pub fn new() -> ScanLog {
        ScanLog::default()
    }

    /// Adds one record; returns whether the log changed. Of two versions
    /// of one index, the one [`supersedes`] picks is kept and the other is
    /// held as proof against the device (the greatest such, if more).
    pub fn insert(&mut self, record: ScanRecord) -> bool {
        let (device, idx) = (record.device_id, record.idx);
        let key = RecordKey {
            device_id: device,
            idx,
        };
        let held = self.records.entry(device).or_default();
        // The versions kept are the two greatest seen: the one kept, and
        // the proof.
        let loser = match held.get_mut(idx) {
            None => {
                fold(self.digests.entry(device).or_default(), &record);
                held.insert_new(record);
                self.len += 1;
                let highest = self.highest.entry(device).or_insert(0);
                *highest = (*highest).max(idx);
                // The run from 1 on is the contiguous part.
                self.contiguous.insert(device, held.dense);
                return true;
            }
            Some(kept) if *kept == record => return false,
            Some(kept) if supersedes(&record, kept) => {
                // The old kept version is greater than any old proof.
                let digest = self.digests.entry(device).or_default();
                fold(digest, kept);
                fold(digest, &record);
                let old = std::mem::replace(kept, record);
                self.runner_up.insert(key, old);
                return true;
            }
            Some(_) => record,
        };
        match self.runner_up.get(&key) {
            Some(proof) if *proof == loser || supersedes(proof, &loser) => false,
            _ => {
                self.runner_up.insert(key, loser);
                true
            }
        }
    }

    /// The digest of the versions kept of `device`'s records.
    pub fn digest(&self, device: &DeviceId) -> RecordHash {
        self.digests.get(device).copied().unwrap_or_default()
    }

    /// Every device's digest, for a peer to compare ([`ScanLog::diverging`]).
    pub fn digests(&self) -> BTreeMap<DeviceId, RecordHash> {
        self.digests.clone()
    }

    /// What a replica with version vector `theirs` and `digests` needs to
    /// see a fork: for each device where both hold the same indexes but
    /// not the same versions, every version held here.
    pub fn diverging<'a>(
        &'a self,
        theirs: &'a VersionVector,
        digests: &'a BTreeMap<DeviceId, RecordHash>,
    ) -> impl Iterator<Item = &'a ScanRecord> + 'a {
        digests
            .iter()
            .filter(move |(device, digest)| {
                theirs.get(device) == self.version_vector_of(device)
                    && self.digest(device) != **digest
            })
            .filter_map(move |(device, _)| self.records.get(device))
            .flat_map(DeviceRecords::values)
            .chain(
                self.runner_up
                    .iter()
                    .filter(move |(k, _)| {
                        digests
                            .get(&k.device_id)
                            .is_some_and(|d| *d != self.digest(&k.device_id))
                    })
                    .map(|(_, r)| r),
            )
    }

    /// Whether any device wrote two versions of an index.
    pub fn has_conflicts(&self) -> bool {
        !self.runner_up.is_empty()
    }

    /// Devices that wrote two versions of an index, and how many indexes.
    pub fn flagged(&self) -> BTreeMap<DeviceId, usize> {
        let mut out = BTreeMap::new();
        for key in self.runner_up.keys() {
            *out.entry(key.device_id).or_insert(0) += 1;
        }
        out
    }

    /// Both versions of every index its device wrote twice: what a replica
    /// sends so that every other ends with the same records and flags.
    pub fn conflicts(&self) -> impl Iterator<Item = &ScanRecord> {
        self.runner_up
            .iter()
            .flat_map(|(key, proof)| self.get(&key.device_id, key.idx).into_iter().chain([proof]))
    }

    /// The version of (device, index) held as proof, if it was written twice.
    pub fn runner_up(&self, device: &DeviceId, idx: u64) -> Option<&ScanRecord> {
        self.runner_up.get(&RecordKey {
            device_id: *device,
            idx,
        })
    }

    /// The record held under (device, index), if any.
    pub fn get(&self, device: &DeviceId, idx: u64) -> Option<&ScanRecord> {
        self.records.get(device).and_then(|held| held.get(idx))
    }

    /// The first of `records` that would land above a gap in its device's
    /// log (with the others added), and the index held below the gap: a
    /// record is taken only next to one held, or where one is held already.
    pub fn above_gap<'a>(
        &self,
        records: impl IntoIterator<Item = &'a ScanRecord>,
    ) -> Option<(&'a ScanRecord, u64)> {
        let mut sorted: Vec<&ScanRecord> = records.into_iter().collect();
        sorted.sort_by_key(|r| (r.device_id, r.idx));
        let mut held = (None, 0u64);
        for r in sorted {
            if held.0 != Some(r.device_id) {
                held = (Some(r.device_id), self.version_vector_of(&r.device_id));
            }
            if r.idx == held.1 + 1 {
                held.1 = r.idx;
                // Records held above the old gap now join the run.
                while self.get(&r.device_id, held.1 + 1).is_some() {
                    held.1 += 1;
                }
            } else if r.idx > held.1 && self.get(&r.device_id, r.idx).is_none() {
                return Some((r, held.1));
            }
        }
        None
    }

    /// The device's highest index held with none missing below it.
    pub fn version_vector_of(&self, device: &DeviceId) -> u64 {
        self.contiguous.get(device).copied().unwrap_or(0)
    }

    /// Adds every record of `other`, and its proofs.
    pub fn merge(&mut self, other: &ScanLog) {
        for r in other.records().chain(other.runner_up.values()) {
            self.insert(r.clone());
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every record, by device and index.
    pub fn records(&self) -> impl Iterator<Item = &ScanRecord> {
        self.records.values().flat_map(DeviceRecords::values)
    }

    pub fn version_vector(&self) -> VersionVector {
        VersionVector(self.contiguous.clone())
    }

    /// The records a replica at `theirs` may lack: every record above its
    /// contiguous index for that device. Some may be held already, above a
    /// gap; sending them again is harmless.
    pub fn missing_for(&self, theirs: &VersionVector) -> Vec<ScanRecord> {
        self.missing_after(theirs, None).cloned().collect()
    }

    /// [`ScanLog::missing_for`] in key order, starting after `after`: what
    /// pages a long answer. A page ends at a key, and the next page starts
    /// after it with the same version vector, so paging always ends, even
    /// when records above a gap do not move the version vector.
    pub fn missing_after<'a>(
        &'a self,
        theirs: &'a VersionVector,
        after: Option<RecordKey>,
    ) -> impl Iterator<Item = &'a ScanRecord> + 'a {
        let devices = match after {
            Some(k) => self.records.range(k.device_id..),
            None => self.records.range(..),
        };
        devices.flat_map(move |(device, held)| {
            let mut from = theirs.get(device).saturating_add(1);
            if let Some(k) = after.filter(|k| k.device_id == *device) {
                from = from.max(k.idx.saturating_add(1));
            }
            held.range(from, u64::MAX)
        })
    }

    /// How many records a replica at `theirs` may lack, counted up to
    /// `enough` (the greatest index held of each device above its own).
    pub fn lacking(&self, theirs: &VersionVector, enough: u64) -> u64 {
        let mut n: u64 = 0;
        for (device, highest) in &self.highest {
            n = n.saturating_add(highest.saturating_sub(theirs.get(device)));
            if n >= enough {
                break;
            }
        }
        n
    }

    /// Each device holding records, from `from` on in id order, with the
    /// greatest index it holds.
    pub fn devices_from(
        &self,
        from: Option<DeviceId>,
    ) -> impl Iterator<Item = (&DeviceId, u64)> + '_ {
        let devices = match from {
            Some(d) => self.highest.range(d..),
            None => self.highest.range(..),
        };
        devices.map(|(d, highest)| (d, *highest))
    }

    /// `device`'s records held with an index in `indexes`, in order.
    pub fn range(
        &self,
        device: &DeviceId,
        indexes: std::ops::RangeInclusive<u64>,
    ) -> impl Iterator<Item = &ScanRecord> + '_ {
        self.records
            .get(device)
            .into_iter()
            .flat_map(move |held| held.range(*indexes.start(), *indexes.end()))
    }

    /// Every ticket's scans, in merged order (stamp, device, index).
    fn by_ticket(&self) -> BTreeMap<TicketKey, Vec<&ScanRecord>> {
        let mut map: BTreeMap<TicketKey, Vec<&ScanRecord>> = BTreeMap::new();
        for r in self.records() {
            if let Some(key) = r.ticket {
                map.entry(key).or_default().push(r);
            }
        }
        for scans in map.values_mut() {
            scans.sort_by_key(|r| r.order_key());
        }
        map
    }

    /// The ticket's first admission: least stamp, then device, then index.
    pub fn first_admission(&self, ticket: TicketKey) -> Option<&ScanRecord> {
        self.records()
            .filter(|r| {
                r.ticket == Some(ticket)
                    && r.result == ResultCode::Ok
                    && r.direction == Direction::Entry
            })
            .min_by_key(|r| r.order_key())
    }

    /// Tickets admitted while already inside, optionally for one event.
    pub fn duplicates(&self, event_id: Option<u64>) -> Vec<Duplicate> {
        self.by_ticket()
            .into_iter()
            .filter(|((event, _), _)| event_id.is_none_or(|e| e == *event))
            .filter_map(|(ticket, scans)| duplicate_of(ticket, scans))
            .collect()
    }
}

/// Whether `new` replaces `old`, a different record for the same key (a
/// faulty or hostile device wrote both): every replica keeps the same one.
/// An admitted entry ranks first, so a second version can never erase an
/// admission and let a ticket in again; then a refusal; an admitted exit
/// last, so a doubtful exit never lets a holder back in. Equal ranks keep
/// the greater record.
pub fn supersedes(new: &ScanRecord, old: &ScanRecord) -> bool {
    fn rank(r: &ScanRecord) -> u8 {
        match (r.result, r.direction) {
            (ResultCode::Ok, Direction::Entry) => 2,
            (ResultCode::Ok, Direction::Exit) => 0,
            _ => 1,
        }
    }
    (rank(new), new) > (rank(old), old)
}

/// The duplicate that a ticket's scans make, if they make one: an entry
/// admitted while the ticket was already inside. `scans` are every scan of
/// the ticket, in merged order ([`ScanRecord::order_key`]).
pub fn duplicate_of(ticket: TicketKey, scans: Vec<&ScanRecord>) -> Option<Duplicate> {
    let mut inside = false;
    let mut extra = 0;
    for r in scans.iter().filter(|r| r.result == ResultCode::Ok) {
        match r.direction {
            Direction::Entry if inside => extra += 1,
            Direction::Entry => inside = true,
            Direction::Exit => inside = false,
        }
    }
    (extra > 0).then(|| Duplicate {
        event_id: ticket.0,
        ticket_id: ticket.1,
        extra_admissions: extra,
        scans: scans.into_iter().cloned().collect(),
    })
}

impl crate::device::Held for ScanLog {
    fn hashes(&self, device: &DeviceId, idx: u64) -> Vec<crate::scan::RecordHash> {
        self.get(device, idx)
            .into_iter()
            .chain(self.runner_up(device, idx))
            .map(crate::device::record_hash)
            .collect()
    }

    fn key(&self, device: &DeviceId) -> Option<crate::scan::DeviceKey> {
        self.get(device, 1).and_then(|r| r.device_key)
    }
}

impl FromIterator<ScanRecord> for ScanLog {
    fn from_iter<I: IntoIterator<Item = ScanRecord>>(iter: I) -> ScanLog {
        let mut log = ScanLog::new();
        for r in iter {
            log.insert(r);
        }
        log
    }
}
