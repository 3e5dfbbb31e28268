//! The gate station: reads ticket codes and decides, offline, whether to admit.
//!
//! - [`decode`] finds QR codes in pictures (luma buffers or image files): its
//!   own binarizer and finder-pattern detector first, rqrr for error
//!   correction, and rqrr's own detector as the last fallback.
//! - [`report`] turns a verification outcome into the line a person or a
//!   program reads (`--json`).
//! - [`gate`] is the device's state: [`gate::Gate`] provisions the local
//!   SQLite store, applies revocations and redemption, and appends every scan
//!   to the redemption log durably before answering.
//! - [`station`] serves the gate tablet's page, live over server-sent events.
//! - [`sync`] pushes this device's records to gate-sync and pulls what the
//!   other gates saw.
//!
//! The decision itself is [`shared::Verifier`]: a scanner holds a keyset and
//! never a signing key, and needs no network to decide.

#[cfg(feature = "camera")]
pub mod camera;
pub mod decode;
pub mod frames;
pub mod gate;
pub mod report;
pub mod station;
pub mod sync;

pub use gate_sync::unix_now_ms;

/// Reads and validates a keyset file: its text, as written, and the keyset.
/// A refusal names the file, says why once, and what to do.
pub fn read_keyset(path: &std::path::Path) -> anyhow::Result<(String, shared::Keyset)> {
    use anyhow::Context;
    use shared::KeysetError;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading keyset {}", path.display()))?;
    match shared::Keyset::from_json(&text) {
        Ok(keyset) => Ok((text, keyset)),
        Err(e) => {
            // Some reasons say what to do already ("re-export the keyset").
            let hint = match e {
                KeysetError::Json(_)
                | KeysetError::BadKeyId { .. }
                | KeysetError::Duplicate { .. } => {
                    "; give the file `issuer keys export-keyset --event ID --out FILE` writes"
                }
                _ => "",
            };
            // The reason holds its cause's words already: no source chain.
            anyhow::bail!("keyset {} refused: {e}{hint}", path.display())
        }
    }
}

/// Reads and validates a keyset file.
pub fn load_keyset(path: &std::path::Path) -> anyhow::Result<shared::Keyset> {
    read_keyset(path).map(|(_, keyset)| keyset)
}
