//! The dashboard's counts, kept up to date as records arrive instead of
//! walked from the whole log on every poll: admitted entries per gate and
//! device, who is inside now (a ticket whose last admitted movement is an
//! entry), and entries per minute, per event. Also an index of every scan by
//! ticket, in merged order, and the tickets admitted twice or more: the
//! duplicates are looked for among those, not in the whole log.
//!
//! The counts depend only on the set of records, not on the order they
//! arrive in: "last movement" is the greatest [`ScanRecord::order_key`], as
//! everywhere else.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use shared::merge::TicketKey;
use shared::{DeviceId, Direction, Hlc, ResultCode, ScanLog, ScanRecord, TicketId};

/// A gate as the dashboard shows it: the gate's name and the device.
pub type GateKey = (String, DeviceId);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GateCounts {
    pub admitted: u64,
    pub inside: u64,
}

/// A scan in the index: its ticket, then its merged order.
type ScanKey = (u64, TicketId, Hlc, DeviceId, u64);

#[derive(Default)]
struct EventCounts {
    gates: Vec<(GateKey, GateCounts)>,
    /// Per device, its gate names (nearly always one) and their index in `gates`.
    gate_index: HashMap<DeviceId, Vec<(String, usize)>>,
    per_minute: BTreeMap<u64, u64>,
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

/// What the counts need of a ticket's admitted scans, kept as they are
/// counted: a ticket scanned a thousand times is not walked again at each
/// new scan (a device writing many scans of one ticket made every push,
/// and a node's start, quadratic).
#[derive(Clone, Copy)]
struct Admitted {
    /// The last admitted scan in merged order: its order, whether it was an
    /// entry, and its gate (the index in its event's `gates`).
    last: ((Hlc, DeviceId, u64), bool, usize),
    /// Whether an admitted scan was an entry.
    entered: bool,
}

/// The counts of every event.
#[derive(Default)]
pub struct Counts {
    events: HashMap<u64, EventCounts>,
    /// Every scan of a known ticket, by ticket and merged order.
    by_ticket: BTreeSet<ScanKey>,
    /// Tickets with two admitted entries or more.
    admitted_twice: BTreeSet<TicketKey>,
    /// Per ticket admitted at least once, its admitted scans in short. A
    /// B-tree: a hash map of a million tickets doubled its memory as it grew.
    admitted: BTreeMap<TicketKey, Admitted>,
}

impl Counts {
    /// Builds the counts of every record in `log`.
    pub fn of(log: &ScanLog) -> Counts {
        let mut counts = Counts::default();
        for r in log.records() {
            counts.add(r);
        }
        counts
    }

    /// Counts one record new to the counts (of its key, the version the
    /// log keeps).
    pub fn add(&mut self, r: &ScanRecord) {
        let Some((event, ticket)) = r.ticket else {
            return;
        };
        let key = (event, ticket, r.hlc, r.device_id, r.idx);
        if r.result == ResultCode::Ok {
            // The ticket's last admitted scan so far, and whether it was
            // ever admitted in.
            let before = self.admitted.get(&(event, ticket)).copied();
            let counts = self.events.entry(event).or_default();
            let gate = counts.gate(r);
            let entry = r.direction == Direction::Entry;
            if entry {
                counts.gates[gate].1.admitted += 1;
                *counts.per_minute.entry(r.wall_ms / 60_000).or_default() += 1;
                if before.is_some_and(|b| b.entered) {
                    self.admitted_twice.insert((event, ticket));
                }
            }
            let order = r.order_key();
            let last = match before {
                Some(b) if b.last.0 > order => b.last,
                _ => {
                    if let Some((_, true, was)) = before.map(|b| b.last) {
                        counts.gates[was].1.inside -= 1;
                    }
                    if entry {
                        counts.gates[gate].1.inside += 1;
                    }
                    (order, entry, gate)
                }
            };
            let entered = entry || before.is_some_and(|b| b.entered);
            self.admitted
                .insert((event, ticket), Admitted { last, entered });
        }
        self.by_ticket.insert(key);
    }

    /// The index keys of a ticket's scans, in merged order.
    fn scans_of(&self, (event, ticket): TicketKey) -> impl DoubleEndedIterator<Item = &ScanKey> {
        let low = (event, ticket, Hlc(0), DeviceId([0; 16]), 0);
        let high = (event, ticket, Hlc(u64::MAX), DeviceId([0xff; 16]), u64::MAX);
        self.by_ticket.range(low..=high)
    }

    /// Tickets admitted at least twice (only those can be duplicates), for
    /// one event or all, in ticket order, each with every scan of it in
    /// merged order.
    pub fn admitted_twice<'a>(
        &'a self,
        event: Option<u64>,
        log: &'a ScanLog,
    ) -> impl Iterator<Item = (TicketKey, Vec<&'a ScanRecord>)> + 'a {
        self.admitted_twice
            .iter()
            .filter(move |(e, _)| event.is_none_or(|want| want == *e))
            .map(move |&ticket| {
                let scans = self
                    .scans_of(ticket)
                    .filter_map(|k| log.get(&k.3, k.4))
                    .collect();
                (ticket, scans)
            })
    }

    /// Admitted and inside per gate, for one event or all, by gate and device.
    pub fn per_gate(&self, event: Option<u64>) -> BTreeMap<GateKey, GateCounts> {
        let mut out: BTreeMap<GateKey, GateCounts> = BTreeMap::new();
        for counts in self.events(event) {
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
        for counts in self.events(event) {
            for (minute, n) in &counts.per_minute {
                *out.entry(*minute).or_default() += n;
            }
        }
        out
    }

    fn events(&self, event: Option<u64>) -> impl Iterator<Item = &EventCounts> {
        self.events
            .iter()
            .filter(move |(e, _)| event.is_none_or(|want| want == **e))
            .map(|(_, counts)| counts)
    }
}
