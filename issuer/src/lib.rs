//! The issuer: the organizer's side of the system.
//!
//! - [`Store`] is the data directory: `issuer.db` (SQLite) and `keys/`.
//! - [`events`] holds the events tickets are sold for.
//! - [`keys`] makes, lists and retires Ed25519 signing keys, and exports the
//!   keyset scanners are provisioned with. Only this crate ever reads a secret key.
//! - [`issue`] signs batches of tickets and writes their QR pictures, using
//!   [`qr`] to draw them.
//! - [`time`] reads and writes the times the command line takes.
//! - [`domain`] is the booking domain, pure: seating plans, best available
//!   seats, prices, order states.
//! - [`storage`] keeps the shop behind traits; [`http`] serves the booking
//!   API on it; [`payments`] charges and pays back; [`mail`] delivers the
//!   messages the storage queues for buyers.

pub mod demo;
pub mod domain;
pub mod events;
pub mod http;
pub mod issue;
pub mod keys;
pub mod mail;
pub mod payments;
pub mod qr;
pub mod shop;
pub mod storage;
pub mod store;
pub mod time;

use std::path::{Path, PathBuf};

pub use store::Store;

/// Everything that can go wrong in the issuer, worded for the organizer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("event {0} is not known: add it with `issuer events add` or `issuer events import`")]
    UnknownEvent(u64),
    #[error("no active signing key: create one with `issuer keys generate`")]
    NoActiveKey,
    #[error("no signing key {0}: `issuer keys list` shows the keys")]
    UnknownKey(String),
    #[error(
        "key {0} is retired and signs no new tickets: use an active key, or `issuer keys generate`"
    )]
    KeyRetired(String),
    #[error("{0}")]
    Invalid(String),
    #[error("seat {seat:?} of event {event_id} is already issued (batch {batch_id})")]
    SeatTaken {
        event_id: u64,
        seat: String,
        batch_id: i64,
    },
    #[error(transparent)]
    Encode(#[from] shared::EncodeError),
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_owned(),
            source,
        }
    }
}
