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

    /// How far ahead of this device's own clock another device's stamp may
    /// be and still move this device's clock: one hour. A stamp from further
    /// ahead (a broken or hostile clock) is not adopted, or every later scan
    /// on every gate that saw it would carry the same stamp and lose its order.
    pub const MAX_ADOPT_AHEAD_MS: u64 = 3_600_000;

    /// The greatest stamp another device's record may have and still be
    /// adopted by a device whose wall clock reads `wall_ms`.
    pub fn adoptable_until(wall_ms: u64) -> Hlc {
        let ms = wall_ms
            .saturating_add(Self::MAX_ADOPT_AHEAD_MS)
            .min((1 << 48) - 1);
        Hlc((ms << 16) | 0xffff)
    }
}

/// Deserializes an `Option` that must be written out, as `null` if empty.
fn present<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d)
}

/// One scan attempt, as recorded and as exchanged between replicas. Totally
/// ordered (field by field) so that replicas resolve any conflict alike.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ScanRecord {
    pub device_id: DeviceId,
    /// 1, 2, 3, ... per device, without gaps: what a peer lacks is a range.
    pub idx: u64,
    /// The ticket, when its signature was good; `None` (JSON `null`, never
    /// left out) for unreadable or forged codes.
    #[serde(deserialize_with = "present")]
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
    /// The issuer's signature of the ticket's code as presented, when it
    /// was good: proof that the ticket was at this gate (no one who never
    /// saw the code can know it), so that no device can use up a ticket it
    /// never saw. `None` (JSON `null`) exactly when `ticket` is.
    #[serde(deserialize_with = "present")]
    pub proof: Option<TicketSig>,
    /// SHA-256 of this device's previous record ([`RecordHash::FIRST`] for
    /// the first): a device's records form a chain, so one signature
    /// vouches for every record before it.
    pub prev: RecordHash,
    /// The device's public key, on its first record only (left out of the
    /// JSON on the others). The device id is the start of its SHA-256, so
    /// every replica can check who wrote what.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_key: Option<DeviceKey>,
    /// The device's Ed25519 signature over everything above
    /// ([`crate::device`]).
    pub sig: DeviceSig,
}

/// A record's SHA-256 ([`crate::device::record_hash`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RecordHash(pub [u8; 32]);

impl RecordHash {
    /// What a device's first record names as its previous one.
    pub const FIRST: RecordHash = RecordHash([0; 32]);
}

/// A device's Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceKey(pub [u8; 32]);

/// A device's Ed25519 signature, in JSON as unpadded base64url.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceSig(pub [u8; 64]);

impl DeviceSig {
    /// A signature of zeros: a record not signed yet.
    pub const NONE: DeviceSig = DeviceSig([0; 64]);
}

macro_rules! hex_newtype {
    ($ty:ident, $what:literal) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(&self.0))
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($ty))
            }
        }

        impl FromStr for $ty {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                hex::decode::<32>(s)
                    .map($ty)
                    .ok_or_else(|| format!("{} {s:?} is not 64 hex digits", $what))
            }
        }

        hex::serde_as_hex!($ty);
    };
}

hex_newtype!(RecordHash, "record hash");
hex_newtype!(DeviceKey, "device key");

/// The issuer's Ed25519 signature of a ticket code (its last 64 bytes),
/// in JSON as unpadded base64url.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TicketSig(pub [u8; 64]);

macro_rules! sig_newtype {
    ($ty:ident) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut buf = [0u8; 86];
                f.write_str(base64_64(&self.0, &mut buf))
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($ty))
            }
        }

        impl FromStr for $ty {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                use base64::Engine;
                let mut out = [0u8; 64];
                match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode_slice(s, &mut out) {
                    Ok(64) if s.len() == 86 => Ok($ty(out)),
                    _ => Err(format!(
                        "signature {s:?} is not 64 bytes of unpadded base64url"
                    )),
                }
            }
        }

        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut buf = [0u8; 86];
                s.serialize_str(base64_64(&self.0, &mut buf))
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

sig_newtype!(DeviceSig);
sig_newtype!(TicketSig);

/// 64 bytes as unpadded base64url (86 characters), written into `buf`.
fn base64_64<'a>(bytes: &[u8; 64], buf: &'a mut [u8; 86]) -> &'a str {
    use base64::Engine;
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode_slice(bytes, buf)
        .unwrap_or(0);
    // Only base64 characters were written.
    std::str::from_utf8(&buf[..n]).unwrap_or_default()
}

impl ScanRecord {
    /// The order in which scans of one ticket are taken to have happened,
    /// the same on every replica: clock stamp, then device, then index.
    pub fn order_key(&self) -> (Hlc, DeviceId, u64) {
        (self.hlc, self.device_id, self.idx)
    }
}

impl ScanRecord {
    /// Appends the record's JSON to `out` (UTF-8): the same document serde
    /// writes, by hand, for pull answers of thousands of records. About
    /// twice as fast as serde's, which checks every key for escapes.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        self.write_fields(out);
        out.extend_from_slice(b",\"sig\":\"");
        let mut sig = [0u8; 86];
        out.extend_from_slice(base64_64(&self.sig.0, &mut sig).as_bytes());
        out.extend_from_slice(b"\"}");
    }

    /// What the device signs: a domain tag, then the record's JSON without
    /// `sig` ([`ScanRecord::write_json`] up to it, closed).
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(600);
        out.extend_from_slice(b"VT1-scan-record\n");
        self.write_fields(&mut out);
        out.push(b'}');
        out
    }

    /// Every field but `sig`, as JSON, without the closing brace.
    fn write_fields(&self, out: &mut Vec<u8>) {
        out.reserve(640);
        out.extend_from_slice(b"{\"device_id\":\"");
        push_hex(out, &self.device_id.0);
        out.extend_from_slice(b"\",\"idx\":");
        push_u64(out, self.idx);
        out.extend_from_slice(b",\"ticket\":");
        match &self.ticket {
            Some((event, ticket)) => {
                out.push(b'[');
                push_u64(out, *event);
                out.extend_from_slice(b",\"");
                push_hex(out, &ticket.0);
                out.extend_from_slice(b"\"]");
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"multi_entry\":");
        out.extend_from_slice(if self.multi_entry { b"true" } else { b"false" });
        out.extend_from_slice(b",\"category_id\":");
        push_u64(out, u64::from(self.category_id));
        out.extend_from_slice(b",\"seat\":");
        push_json_str(out, &self.seat);
        out.extend_from_slice(b",\"direction\":\"");
        out.extend_from_slice(self.direction.as_str().as_bytes());
        out.extend_from_slice(b"\",\"result\":\"");
        out.extend_from_slice(self.result.as_str().as_bytes());
        out.extend_from_slice(b"\",\"reason\":");
        push_json_str(out, &self.reason);
        out.extend_from_slice(b",\"wall_ms\":");
        push_u64(out, self.wall_ms);
        out.extend_from_slice(b",\"hlc\":");
        push_u64(out, self.hlc.0);
        out.extend_from_slice(b",\"gate\":");
        push_json_str(out, &self.gate);
        out.extend_from_slice(b",\"device_name\":");
        push_json_str(out, &self.device_name);
        out.extend_from_slice(b",\"proof\":");
        match &self.proof {
            Some(proof) => {
                let mut buf = [0u8; 86];
                out.push(b'"');
                out.extend_from_slice(base64_64(&proof.0, &mut buf).as_bytes());
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"prev\":\"");
        push_hex32(out, &self.prev.0);
        out.push(b'"');
        if let Some(key) = &self.device_key {
            out.extend_from_slice(b",\"device_key\":\"");
            push_hex32(out, &key.0);
            out.push(b'"');
        }
    }
}

/// 32 bytes in lower-case hex.
fn push_hex32(out: &mut Vec<u8>, bytes: &[u8; 32]) {
    let mut buf = [0u8; 64];
    out.extend_from_slice(hex::encode_into(bytes, &mut buf).as_bytes());
}

/// `n` in decimal.
fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// `bytes` in lower-case hex.
fn push_hex(out: &mut Vec<u8>, bytes: &[u8; 16]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; 32];
    for (pair, b) in text.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
    out.extend_from_slice(&text);
}

/// `text` as a JSON string literal, escaped as serde_json escapes it.
fn push_json_str(out: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    if !text.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
        return;
    }
    for &b in text.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            0..0x20 => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
            // Bytes of multi-byte characters are copied as they are.
            b => out.push(b),
        }
    }
    out.push(b'"');
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
            proof: None,
            prev: RecordHash::FIRST,
            device_key: None,
            sig: DeviceSig::NONE,
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
