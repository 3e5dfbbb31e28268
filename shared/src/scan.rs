//! What a gate records: one [`ScanRecord`] per scan attempt, stamped with a
//! hybrid logical clock ([`Hlc`]), and the rules that turn a ticket's scans
//! into its admission state ([`TicketState`]).
//!
//! Every device writes only its own records, numbered by a per-device
//! monotonic index, so `(device_id, idx)` names a record everywhere.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::code::TicketId;
use crate::hex;
use crate::verify::ResultCode;

/// A scanner's identity: 16 random bytes chosen when it is provisioned.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(pub [u8; 16]);

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0))
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({self})")
    }
}

impl FromStr for DeviceId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        hex::decode::<16>(s)
            .map(DeviceId)
            .ok_or_else(|| format!("device id {s:?} is not 32 hex digits"))
    }
}

/// Which way the holder is going through the gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Entry,
    Exit,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Entry => "entry",
            Direction::Exit => "exit",
        }
    }
}

impl FromStr for Direction {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "entry" => Ok(Direction::Entry),
            "exit" => Ok(Direction::Exit),
            _ => Err(format!("direction {s:?} is neither entry nor exit")),
        }
    }
}

/// A hybrid logical clock stamp: wall-clock milliseconds in the high 48 bits,
/// a counter in the low 16. Stamps only grow on a device, even if its wall
/// clock steps back, and they order scans across devices close to real time.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Hlc(pub u64);

impl Hlc {
    /// The stamp for a new local event after `last` (the greatest stamp this
    /// device has seen, its own or merged), at wall-clock `wall_ms`.
    pub fn next(last: Hlc, wall_ms: u64) -> Hlc {
        let physical = wall_ms.min((1 << 48) - 1) << 16;
        Hlc(physical.max(last.0.saturating_add(1)))
    }

    /// The wall-clock milliseconds part.
    pub fn millis(self) -> u64 {
        self.0 >> 16
    }
}

/// One scan attempt, as recorded and as exchanged between replicas. Totally
/// ordered (field by field) so that replicas resolve any conflict alike.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ScanRecord {
    pub device_id: DeviceId,
    /// 1, 2, 3, ... per device, without gaps: what a peer lacks is a range.
    pub idx: u64,
    /// The ticket, when its signature was good; `None` for unreadable or forged codes.
    pub ticket: Option<(u64, TicketId)>,
    pub multi_entry: bool,
    /// The ticket's category and seat, for people reading the log (0 and
    /// empty when the ticket is unknown).
    pub category_id: u16,
    pub seat: String,
    pub direction: Direction,
    pub result: ResultCode,
    /// Why it was refused; empty for `ok`.
    pub reason: String,
    /// The device's wall clock, unix milliseconds; shown to people.
    pub wall_ms: u64,
    /// Orders scans across devices.
    pub hlc: Hlc,
    pub gate: String,
    pub device_name: String,
}

impl ScanRecord {
    /// The order in which scans of one ticket are taken to have happened,
    /// the same on every replica: clock stamp, then device, then index.
    pub fn order_key(&self) -> (Hlc, DeviceId, u64) {
        (self.hlc, self.device_id, self.idx)
    }
}

/// What a ticket's admitted movements say about it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TicketState<'a> {
    /// The first admission (least stamp), if any.
    pub first_entry: Option<&'a ScanRecord>,
    /// Whether the last admitted movement was an entry.
    pub inside: bool,
}

impl<'a> TicketState<'a> {
    /// Folds a ticket's scans (any order, any result; only `ok` ones count).
    pub fn of(scans: impl IntoIterator<Item = &'a ScanRecord>) -> TicketState<'a> {
        let mut ok: Vec<&ScanRecord> = scans
            .into_iter()
            .filter(|s| s.result == ResultCode::Ok)
            .collect();
        ok.sort_by_key(|s| s.order_key());
        TicketState {
            first_entry: ok.iter().copied().find(|s| s.direction == Direction::Entry),
            inside: ok.last().is_some_and(|s| s.direction == Direction::Entry),
        }
    }

    /// Whether a new entry must be refused as `already_redeemed`: a
    /// single-entry ticket is admitted once, ever; a multi-entry ticket not
    /// while it is inside.
    pub fn refuses_entry(&self, multi_entry: bool) -> bool {
        if multi_entry {
            self.inside
        } else {
            self.first_entry.is_some()
        }
    }
}

hex::serde_as_hex!(DeviceId);

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(idx: u64, hlc: u64, direction: Direction, result: ResultCode) -> ScanRecord {
        ScanRecord {
            device_id: DeviceId([idx as u8; 16]),
            idx,
            ticket: Some((1, TicketId([9; 16]))),
            multi_entry: true,
            category_id: 1,
            seat: String::new(),
            direction,
            result,
            reason: String::new(),
            wall_ms: hlc,
            hlc: Hlc(hlc),
            gate: "North".into(),
            device_name: "t1".into(),
        }
    }

    #[test]
    fn clock_never_goes_back() {
        let a = Hlc::next(Hlc(0), 1_000);
        assert_eq!(a.millis(), 1_000);
        let b = Hlc::next(a, 900);
        assert!(b > a);
        assert_eq!(
            b.millis(),
            1_000,
            "a clock stepping back keeps the old time, counts up"
        );
        assert!(Hlc::next(b, 2_000).millis() == 2_000);
    }

    #[test]
    fn ticket_state_follows_admitted_movements_in_stamp_order() {
        use Direction::*;
        use ResultCode::*;
        let scans = [
            scan(3, 30, Exit, Ok),
            scan(1, 10, Entry, Ok),
            scan(2, 20, Entry, AlreadyRedeemed),
        ];
        let state = TicketState::of(&scans);
        assert_eq!(state.first_entry.map(|s| s.idx), Some(1));
        assert!(!state.inside);
        assert!(state.refuses_entry(false), "single entry: once, ever");
        assert!(
            !state.refuses_entry(true),
            "multi entry: back in after an exit"
        );
        let inside = TicketState::of(&scans[1..]);
        assert!(inside.inside && inside.refuses_entry(true));
        assert!(!TicketState::of(&[]).refuses_entry(false));
    }
}
