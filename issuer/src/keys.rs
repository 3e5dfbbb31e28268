//! Signing keys: the only place a secret key is created or read.
//!
//! Each key's 32-byte seed is in `keys/<key_id>.key`, created with mode 0600
//! and never printed; the database holds its public half and whether it is
//! retired. A retired key signs nothing new but stays in exported keysets for
//! the events it signed tickets for, until those tickets can no longer be valid.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::OsRng;
use rusqlite::params;
use shared::code::Signer;
use shared::{KeyId, Keyset};

use crate::{Error, Store, events};

/// What the issuer knows of a key, without its secret.
#[derive(Clone, Debug)]
pub struct KeyInfo {
    pub key_id: KeyId,
    pub public_key: VerifyingKey,
    pub created_at: u64,
    pub retired_at: Option<u64>,
    /// Tickets this key has signed, over all events.
    pub tickets: u64,
}

fn seed_path(store: &Store, key_id: KeyId) -> PathBuf {
    store.keys_dir().join(format!("{key_id}.key"))
}

/// Makes a new signing key, stores its seed (mode 0600) and records it as active.
pub fn generate(store: &Store, now: u64) -> Result<KeyInfo, Error> {
    let key = SigningKey::generate(&mut OsRng);
    let public_key = key.verifying_key();
    let key_id = KeyId::of(&public_key);
    let dir = store.keys_dir();
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| Error::io(&dir, e))?;
    let path = seed_path(store, key_id);
    let write = || -> std::io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        file.write_all(key.as_bytes())?;
        file.sync_all()
    };
    write().map_err(|e| Error::io(&path, e))?;
    let inserted = store.conn.execute(
        "INSERT INTO signing_keys (key_id, public_key, created_at) VALUES (?1, ?2, ?3)",
        params![
            key_id.to_string(),
            public_key.as_bytes().as_slice(),
            now as i64
        ],
    );
    if let Err(e) = inserted {
        // Leave no secret behind that the database does not know of.
        let _ = fs::remove_file(&path);
        return Err(e.into());
    }
    Ok(KeyInfo {
        key_id,
        public_key,
        created_at: now,
        retired_at: None,
        tickets: 0,
    })
}

/// Every key, oldest first.
pub fn list(store: &Store) -> Result<Vec<KeyInfo>, Error> {
    let mut stmt = store.conn.prepare(
        "SELECT k.key_id, k.public_key, k.created_at, k.retired_at,
                (SELECT count(*) FROM tickets t WHERE t.key_id = k.key_id)
         FROM signing_keys k ORDER BY k.created_at, k.key_id",
    )?;
    let rows = stmt.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, Vec<u8>>(1)?,
            row.get::<_, i64>(2)?,
            row.get::<_, Option<i64>>(3)?,
            row.get::<_, i64>(4)?,
        ))
    })?;
    let mut keys = Vec::new();
    for row in rows {
        let (key_id, public, created_at, retired_at, tickets) = row?;
        let corrupt = || Error::Invalid(format!("key {key_id} is damaged in the database"));
        let public: [u8; 32] = public.try_into().map_err(|_| corrupt())?;
        keys.push(KeyInfo {
            key_id: key_id.parse().map_err(|_| corrupt())?,
            public_key: VerifyingKey::from_bytes(&public).map_err(|_| corrupt())?,
            created_at: created_at as u64,
            retired_at: retired_at.map(|t| t as u64),
            tickets: tickets as u64,
        });
    }
    Ok(keys)
}

fn find(store: &Store, key_id: &str) -> Result<KeyInfo, Error> {
    list(store)?
        .into_iter()
        .find(|k| k.key_id.to_string() == key_id.to_ascii_lowercase())
        .ok_or_else(|| Error::UnknownKey(key_id.to_owned()))
}

/// Stops a key from signing new tickets. Retiring a retired key changes nothing.
pub fn retire(store: &Store, key_id: &str, now: u64) -> Result<KeyInfo, Error> {
    let key = find(store, key_id)?;
    store.conn.execute(
        "UPDATE signing_keys SET retired_at = ?2 WHERE key_id = ?1 AND retired_at IS NULL",
        params![key.key_id.to_string(), now as i64],
    )?;
    find(store, key_id)
}

/// The signer for `key_id`, or the newest active key when none is named.
pub fn signer(store: &Store, key_id: Option<&str>) -> Result<Signer, Error> {
    let key = match key_id {
        Some(id) => find(store, id)?,
        None => list(store)?
            .into_iter()
            .rev()
            .find(|k| k.retired_at.is_none())
            .ok_or(Error::NoActiveKey)?,
    };
    if key.retired_at.is_some() {
        return Err(Error::KeyRetired(key.key_id.to_string()));
    }
    let path = seed_path(store, key.key_id);
    let raw = fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let seed: [u8; 32] = raw
        .try_into()
        .map_err(|_| Error::Invalid(format!("{} is not a 32-byte key seed", path.display())))?;
    let signer = Signer::new(SigningKey::from_bytes(&seed));
    if signer.key_id() != key.key_id {
        return Err(Error::Invalid(format!(
            "{} holds key {}, not {}: the key files were moved or damaged",
            path.display(),
            signer.key_id(),
            key.key_id
        )));
    }
    Ok(signer)
}

/// The keyset scanners at `event_ids` need at unix time `now`: every active
/// key, and every retired key that signed tickets for one of these events that
/// may still be valid (event not over, ticket not expired beyond the skew).
pub fn export_keyset(store: &Store, event_ids: &[u64], now: u64) -> Result<Keyset, Error> {
    let events = event_ids
        .iter()
        .map(|&id| event_keys(store, id))
        .collect::<Result<Vec<_>, _>>()?;
    keyset_of(&list(store)?, &events, now)
}

/// What the keyset of event `event_id` of the data directory's database
/// needs to know of it.
pub fn event_keys(store: &Store, event_id: u64) -> Result<EventKeys, Error> {
    let event = events::get(store, event_id)?;
    let signed = store
        .conn
        .prepare_cached(
            "SELECT key_id, max(valid_until) FROM tickets WHERE event_id = ?1 GROUP BY key_id",
        )?
        .query_map([event_id as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(EventKeys {
        event_id,
        ends_at: i64::from(event.ends_at),
        signed,
    })
}

/// What the keyset of an event needs to know of it, from whichever
/// database holds the shop.
#[derive(Clone, Debug, Default)]
pub struct EventKeys {
    pub event_id: u64,
    /// When it ends (unix seconds).
    pub ends_at: i64,
    /// The latest `valid_until` of its tickets, by the key that signed them.
    pub signed: std::collections::HashMap<String, i64>,
}

/// The keyset scanners of `events` need at unix time `now` ([`export_keyset`]),
/// from the data directory's `keys` and what the shop knows of `events`.
pub fn keyset_of(keys: &[KeyInfo], events: &[EventKeys], now: u64) -> Result<Keyset, Error> {
    if events.is_empty() {
        return Err(Error::Invalid(
            "name at least one event (--event ID)".into(),
        ));
    }
    let mut keyset = Keyset::new();
    for event in events {
        for key in keys {
            let covers = match key.retired_at {
                None => true,
                Some(_) => event
                    .signed
                    .get(&key.key_id.to_string())
                    .is_some_and(|until| {
                        let last =
                            (*until).max(event.ends_at) + i64::from(shared::DEFAULT_SKEW_SECS);
                        now as i64 <= last
                    }),
            };
            if covers {
                keyset.insert(key.public_key, [event.event_id]);
            }
        }
    }
    if keyset.is_empty() {
        return Err(Error::NoActiveKey);
    }
    Ok(keyset)
}

/// The data directory's active signing key, for a server that runs for
/// weeks: looked up again every few seconds, so a key made or retired with
/// `issuer keys` while it runs is used, or no longer used, within seconds.
pub struct ActiveSigner {
    dir: PathBuf,
    current: std::sync::RwLock<(std::time::Instant, Option<std::sync::Arc<Signer>>)>,
}

impl ActiveSigner {
    /// How long a lookup holds.
    const FOR: std::time::Duration = std::time::Duration::from_secs(5);

    pub fn new(dir: &Path, first: Signer) -> ActiveSigner {
        ActiveSigner {
            dir: dir.to_owned(),
            current: std::sync::RwLock::new((
                std::time::Instant::now(),
                Some(std::sync::Arc::new(first)),
            )),
        }
    }

    /// The key to sign with now (blocking: it may read the data directory).
    pub fn get(&self) -> Result<std::sync::Arc<Signer>, Error> {
        {
            let current = self.current.read().unwrap_or_else(|p| p.into_inner());
            if current.0.elapsed() < Self::FOR
                && let Some(signer) = &current.1
            {
                return Ok(signer.clone());
            }
        }
        let store = Store::open_existing(&self.dir)?;
        let found = signer(&store, None);
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        current.0 = std::time::Instant::now();
        match found {
            Ok(fresh) => {
                let same = current
                    .1
                    .as_ref()
                    .filter(|s| s.key_id() == fresh.key_id())
                    .cloned();
                let signer = match same {
                    Some(signer) => signer,
                    None => {
                        tracing::info!(key = %fresh.key_id(), "signing tickets with key");
                        std::sync::Arc::new(fresh)
                    }
                };
                current.1 = Some(signer.clone());
                Ok(signer)
            }
            Err(e) => {
                current.1 = None;
                Err(e)
            }
        }
    }
}
