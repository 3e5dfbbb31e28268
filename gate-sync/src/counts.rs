//! The dashboard's counts, kept up to date as records arrive instead of
//! walked from the whole log on every poll: admitted entries per gate and
//! device, who is inside now (a ticket whose last admitted movement is an
//! entry), and entries per minute, per event.
//!
//! The counts depend only on the set of records, not on the order they
//! arrive in: "last movement" is the greatest [`ScanRecord::order_key`], as
//! everywhere else.

use std::collections::{BTreeMap, HashMap};

use shared::{DeviceId, Direction, Hlc, ResultCode, ScanRecord, TicketId};

/// A gate as the dashboard shows it: the gate's name and the device.
pub type GateKey = (String, DeviceId);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GateCounts {
    pub admitted: u64,
    pub inside: u64,
}

/// A ticket's last admitted movement.
struct Last {
    order: (Hlc, DeviceId, u64),
    entry: bool,
    /// Index into [`EventCounts::gates`].
    gate: usize,
}

#[derive(Default)]
struct EventCounts {
    gates: Vec<(GateKey, GateCounts)>,
    /// Per device, its gate names (nearly always one) and their index in `gates`.
    gate_index: HashMap<DeviceId, Vec<(String, usize)>>,
    per_minute: BTreeMap<u64, u64>,
    last: HashMap<TicketId, Last>,
}

impl EventCounts {
    /// The index of the record's gate, found without allocating.
    fn gate(&mut self, r: &ScanRecord) -> usize {
        let names = self.gate_index.entry(r.device_id).or_default();
        if let Some((_, i)) = names.iter().find(|(name, _)| *name == r.gate) {
            return *i;
        }
        let i = self.gates.len();
        names.push((r.gate.clone(), i));
        self.gates
            .push(((r.gate.clone(), r.device_id), GateCounts::default()));
        i
    }
}

/// The counts of every event.
#[derive(Default)]
pub struct Counts {
    events: HashMap<u64, EventCounts>,
}

impl Counts {
    /// Counts one record new to the log. Only admitted scans of known
    /// tickets count.
    pub fn add(&mut self, r: &ScanRecord) {
        let Some((event, ticket)) = r.ticket else {
            return;
        };
        if r.result != ResultCode::Ok {
            return;
        }
        let counts = self.events.entry(event).or_default();
        let gate = counts.gate(r);
        let entry = r.direction == Direction::Entry;
        if entry {
            counts.gates[gate].1.admitted += 1;
            *counts.per_minute.entry(r.wall_ms / 60_000).or_default() += 1;
        }
        let now = Last {
            order: r.order_key(),
            entry,
            gate,
        };
        match counts.last.get_mut(&ticket) {
            Some(last) if last.order >= now.order => return,
            Some(last) => {
                if last.entry {
                    counts.gates[last.gate].1.inside -= 1;
                }
                *last = now;
            }
            None => {
                counts.last.insert(ticket, now);
            }
        }
        if entry {
            counts.gates[gate].1.inside += 1;
        }
    }

    /// Admitted and inside per gate, for one event or all, by gate and device.
    pub fn per_gate(&self, event: Option<u64>) -> BTreeMap<GateKey, GateCounts> {
        let mut out: BTreeMap<GateKey, GateCounts> = BTreeMap::new();
        for (_, counts) in self.events(event) {
            for (key, c) in &counts.gates {
                let sum = out.entry(key.clone()).or_default();
                sum.admitted += c.admitted;
                sum.inside += c.inside;
            }
        }
        out
    }

    /// Admitted entries per minute (unix minutes), for one event or all.
    pub fn per_minute(&self, event: Option<u64>) -> BTreeMap<u64, u64> {
        let mut out: BTreeMap<u64, u64> = BTreeMap::new();
        for (_, counts) in self.events(event) {
            for (minute, n) in &counts.per_minute {
                *out.entry(*minute).or_default() += n;
            }
        }
        out
    }

    fn events(&self, event: Option<u64>) -> impl Iterator<Item = (&u64, &EventCounts)> {
        self.events
            .iter()
            .filter(move |(e, _)| event.is_none_or(|want| want == **e))
    }
}

impl<'a> FromIterator<&'a ScanRecord> for Counts {
    fn from_iter<I: IntoIterator<Item = &'a ScanRecord>>(records: I) -> Counts {
        let mut counts = Counts::default();
        for r in records {
            counts.add(r);
        }
        counts
    }
}
