//! The public keys a scanner trusts, and which events each vouches for.
//!
//! The JSON form is `{"keys": [{"key_id", "public_key", "event_ids"}]}`. A
//! [`Keyset`] is only built from entries that pass every check, so holding one
//! means each key id matches its key.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::code::KeyId;

/// One trusted issuer key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeysetEntry {
    pub key_id: KeyId,
    pub public_key: VerifyingKey,
    /// The only events this key may sign tickets for.
    pub event_ids: BTreeSet<u64>,
}

/// A validated set of issuer keys, looked up by key id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Keyset {
    entries: BTreeMap<KeyId, KeysetEntry>,
}

/// Why a keyset was refused. The whole keyset is refused, never part of it:
/// a scanner provisioned with half a keyset would refuse good tickets.
#[derive(Debug, thiserror::Error)]
pub enum KeysetError {
    #[error("keyset is not JSON of the form {{\"keys\": [...]}}: {0}")]
    Json(#[from] serde_json::Error),
    #[error("keyset entry {index}: key_id {key_id:?} is not 8 lower-case hex digits")]
    BadKeyId { index: usize, key_id: String },
    #[error(
        "keyset entry {key_id}: public_key is not a valid Ed25519 public key ({reason}); re-export the keyset from the issuer"
    )]
    BadPublicKey { key_id: String, reason: String },
    #[error(
        "keyset entry {key_id} does not match its public key (whose key_id is {actual}); re-export the keyset from the issuer"
    )]
    Mismatch { key_id: String, actual: KeyId },
    #[error("keyset lists key {key_id} twice")]
    Duplicate { key_id: KeyId },
}

#[derive(Serialize, Deserialize)]
struct KeysetDoc {
    keys: Vec<EntryDoc>,
}

#[derive(Serialize, Deserialize)]
struct EntryDoc {
    key_id: String,
    public_key: String,
    event_ids: Vec<u64>,
}

impl Keyset {
    pub fn new() -> Keyset {
        Keyset::default()
    }

    /// Adds `public_key` for `event_ids` (merged with any events it already
    /// has) and returns its key id.
    pub fn insert(
        &mut self,
        public_key: VerifyingKey,
        event_ids: impl IntoIterator<Item = u64>,
    ) -> KeyId {
        let key_id = KeyId::of(&public_key);
        self.entries
            .entry(key_id)
            .or_insert_with(|| KeysetEntry {
                key_id,
                public_key,
                event_ids: BTreeSet::new(),
            })
            .event_ids
            .extend(event_ids);
        key_id
    }

    /// Parses and validates the JSON form.
    pub fn from_json(text: &str) -> Result<Keyset, KeysetError> {
        let doc: KeysetDoc = serde_json::from_str(text)?;
        let mut keyset = Keyset::new();
        for (index, entry) in doc.keys.into_iter().enumerate() {
            let key_id: KeyId = entry.key_id.parse().map_err(|_| KeysetError::BadKeyId {
                index,
                key_id: entry.key_id.clone(),
            })?;
            let bad_key = |reason: &str| KeysetError::BadPublicKey {
                key_id: entry.key_id.clone(),
                reason: reason.to_owned(),
            };
            let raw = URL_SAFE_NO_PAD
                .decode(&entry.public_key)
                .map_err(|e| bad_key(&format!("not unpadded base64url: {e}")))?;
            let raw: [u8; 32] = raw
                .try_into()
                .map_err(|raw: Vec<u8>| bad_key(&format!("{} bytes, not 32", raw.len())))?;
            let public_key =
                VerifyingKey::from_bytes(&raw).map_err(|_| bad_key("not a curve point"))?;
            if public_key.is_weak() {
                return Err(bad_key("a small-order point"));
            }
            let actual = KeyId::of(&public_key);
            if actual != key_id {
                return Err(KeysetError::Mismatch {
                    key_id: entry.key_id,
                    actual,
                });
            }
            if keyset.entries.contains_key(&key_id) {
                return Err(KeysetError::Duplicate { key_id });
            }
            keyset.insert(public_key, entry.event_ids);
        }
        Ok(keyset)
    }

    /// The JSON form, pretty-printed, entries in key-id order.
    pub fn to_json(&self) -> String {
        let doc = KeysetDoc {
            keys: self
                .entries
                .values()
                .map(|e| EntryDoc {
                    key_id: e.key_id.to_string(),
                    public_key: URL_SAFE_NO_PAD.encode(e.public_key.as_bytes()),
                    event_ids: e.event_ids.iter().copied().collect(),
                })
                .collect(),
        };
        // Serialising plain strings and numbers cannot fail.
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    }

    pub fn get(&self, key_id: &KeyId) -> Option<&KeysetEntry> {
        self.entries.get(key_id)
    }

    pub fn entries(&self) -> impl Iterator<Item = &KeysetEntry> {
        self.entries.values()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
