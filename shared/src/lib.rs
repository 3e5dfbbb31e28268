//! The core every program shares: the VT1 ticket code and how it is verified.
//!
//! - [`code`] holds the byte layout: [`TicketFields`] is what a ticket says,
//!   [`encode`] signs it into the `VT1:` text, and [`parse`] turns text back into
//!   an [`UnverifiedTicket`] without trusting it.
//! - [`keyset`] holds the public keys a scanner is provisioned with: a
//!   [`Keyset`] is only ever built from entries whose `key_id` matches the key.
//! - [`verify`] applies the spec's checks in order. A [`Verifier`] is the only
//!   thing that makes a [`VerifiedTicket`], so code that holds one knows the
//!   signature was good under a trusted key.
//! - [`scan`] holds what gates record: a [`ScanRecord`] per attempt, stamped
//!   with a hybrid logical clock ([`Hlc`]), and [`TicketState`], the rule that
//!   turns a ticket's scans into "admitted before" and "inside now".
//! - [`merge`] holds the merged log of every gate as a CRDT: [`ScanLog`], a
//!   grow-only set keyed by (device, index), its [`VersionVector`], and the
//!   [`Duplicate`]s every replica derives alike.
//! - [`device`]: devices sign their records, chained by hash, so no node or
//!   impostor can forge or alter a gate's admissions.
//! - [`protocol`] is the sync protocol between gates, nodes and peers: its
//!   paths, messages, limits and the checks every receiver applies.
//! - [`time`] shows unix milliseconds as RFC 3339, whatever a clock says.
//!
//! This crate does no IO: callers read files, clocks and databases and pass the
//! results in (the current time is always a parameter).

pub mod code;
pub mod device;
pub mod hex;
pub mod keyset;
pub mod merge;
pub mod protocol;
pub mod revocations;
pub mod scan;
pub mod time;
pub mod verify;

pub use code::{
    EncodeError, KeyId, ParseError, TicketFields, TicketId, UnverifiedTicket, encode, parse,
};
pub use keyset::{Keyset, KeysetEntry, KeysetError};
pub use merge::{Duplicate, RecordKey, ScanLog, VersionVector};
pub use scan::{
    DeviceId, DeviceKey, DeviceSig, Direction, Hlc, RecordHash, ScanRecord, TicketSig, TicketState,
};
pub use verify::{DEFAULT_SKEW_SECS, Refusal, ResultCode, VerifiedTicket, Verifier};
