//! Devices sign what they write, so that no node, peer or impostor can
//! forge or alter a gate's records.
//!
//! A device's id is the first 16 bytes of the SHA-256 of its Ed25519 public
//! key ([`device_id_of`]); its first record carries the key. Every record
//! names the SHA-256 of the device's record before it (`prev`) and is signed
//! ([`ScanRecord::signed_bytes`]). A receiver checks a run of a device's
//! records that link to each other and to what it holds by hashing them and
//! verifying the last one's signature: one signature per device per batch,
//! not one per record ([`authenticate`]). A record that links to nothing
//! held (a second version of an index: a faulty or hostile device) has its
//! own signature checked.
//!
//! The seed comes from the caller: this crate does no IO.

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::scan::{DeviceId, DeviceKey, DeviceSig, RecordHash, ScanRecord};

/// The device id that belongs to `key`.
pub fn device_id_of(key: &DeviceKey) -> DeviceId {
    let digest = Sha256::digest(key.0);
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    DeviceId(id)
}

/// A record's SHA-256: what the device's next record names as `prev`.
pub fn record_hash(r: &ScanRecord) -> RecordHash {
    let mut json = Vec::with_capacity(700);
    r.write_json(&mut json);
    RecordHash(Sha256::digest(&json).into())
}

/// What a device signs to enroll with `token` as `device`.
fn enrollment_message(token: &str, device: DeviceId) -> Vec<u8> {
    format!("VT1-enroll\n{device}\n{token}").into_bytes()
}

/// A device's signing key.
pub struct DeviceSigner {
    key: SigningKey,
}

impl DeviceSigner {
    pub fn from_seed(seed: &[u8; 32]) -> DeviceSigner {
        DeviceSigner {
            key: SigningKey::from_bytes(seed),
        }
    }

    pub fn public_key(&self) -> DeviceKey {
        DeviceKey(self.key.verifying_key().to_bytes())
    }

    pub fn id(&self) -> DeviceId {
        device_id_of(&self.public_key())
    }

    /// Chains `record` to `previous` (this device's record before it; `None`
    /// for its first) and signs it.
    pub fn seal(&self, record: &mut ScanRecord, previous: Option<&ScanRecord>) {
        record.device_id = self.id();
        record.prev = previous.map_or(RecordHash::FIRST, record_hash);
        record.device_key = previous.is_none().then(|| self.public_key());
        record.sig = DeviceSig(self.key.sign(&record.signed_bytes()).to_bytes());
    }

    /// Signs `record` on its own, not chained to the record before it (its
    /// `prev` is left as it is): a receiver then checks its signature alone.
    /// For tests and tools; a gate uses [`DeviceSigner::seal`].
    pub fn sign(&self, record: &mut ScanRecord) {
        record.device_id = self.id();
        record.device_key = (record.idx == 1).then(|| self.public_key());
        record.sig = DeviceSig(self.key.sign(&record.signed_bytes()).to_bytes());
    }

    /// Proves, at enrollment, that the device holds the key of its id.
    pub fn sign_enrollment(&self, token: &str) -> DeviceSig {
        DeviceSig(
            self.key
                .sign(&enrollment_message(token, self.id()))
                .to_bytes(),
        )
    }
}

/// Checks an enrollment: the id is the key's, and the key signed the request.
pub fn verify_enrollment(
    key: &DeviceKey,
    device: DeviceId,
    token: &str,
    sig: &DeviceSig,
) -> Result<(), String> {
    if device_id_of(key) != device {
        return Err(format!(
            "device id {device} is not the one of its key: provision the device again"
        ));
    }
    verifying_key(key)?
        .verify_strict(
            &enrollment_message(token, device),
            &Signature::from_bytes(&sig.0),
        )
        .map_err(|_| "the enrollment's signature does not verify under the device's key".into())
}

fn verifying_key(key: &DeviceKey) -> Result<VerifyingKey, String> {
    let vk = VerifyingKey::from_bytes(&key.0).map_err(|_| "the device key is not a key")?;
    if vk.is_weak() {
        return Err("the device key is a weak key".into());
    }
    Ok(vk)
}

fn signature_holds(vk: &VerifyingKey, r: &ScanRecord) -> bool {
    vk.verify_strict(&r.signed_bytes(), &Signature::from_bytes(&r.sig.0))
        .is_ok()
}

/// What a receiver already holds, for [`authenticate`].
pub trait Held {
    /// The hashes of the versions held under (device, index): one, or two
    /// for an index its device wrote twice.
    fn hashes(&self, device: &DeviceId, idx: u64) -> Vec<RecordHash>;
    /// The device's key, from its first record, when held.
    fn key(&self, device: &DeviceId) -> Option<DeviceKey>;
}

/// Why a device's records were refused: from `idx` on (those before it
/// hold).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("record {device}/{idx}: {reason}")]
pub struct Unauthentic {
    pub device: DeviceId,
    pub idx: u64,
    pub reason: String,
}

/// Checks that every record of `records` was written and signed by its
/// device. Returns, per device, whether its records hold; the records of
/// a device that fails are to be refused whole (the others may be taken).
pub fn authenticate(
    records: &[ScanRecord],
    held: &impl Held,
) -> Vec<(DeviceId, Result<(), Unauthentic>)> {
    let mut sorted: Vec<&ScanRecord> = records.iter().collect();
    sorted.sort_by_key(|r| (r.device_id, r.idx));
    let mut out = Vec::new();
    for run in sorted.chunk_by(|a, b| a.device_id == b.device_id) {
        out.push((run[0].device_id, authenticate_device(run, held)));
    }
    out
}

/// The records of `records` that hold, and why the others were refused:
/// a device's records are taken up to the first that fails.
pub fn authentic(records: &[ScanRecord], held: &impl Held) -> (Vec<ScanRecord>, Vec<Unauthentic>) {
    let refused: Vec<Unauthentic> = authenticate(records, held)
        .into_iter()
        .filter_map(|(_, result)| result.err())
        .collect();
    let kept = records
        .iter()
        .filter(|r| {
            !refused
                .iter()
                .any(|u| u.device == r.device_id && r.idx >= u.idx)
        })
        .cloned()
        .collect();
    (kept, refused)
}

/// [`authenticate`], refusing everything if any device's records fail.
pub fn authenticate_all(records: &[ScanRecord], held: &impl Held) -> Result<(), Unauthentic> {
    authenticate(records, held)
        .into_iter()
        .try_for_each(|(_, result)| result)
}

/// One device's records, sorted by index.
fn authenticate_device(records: &[&ScanRecord], held: &impl Held) -> Result<(), Unauthentic> {
    let device = records[0].device_id;
    let refuse = |r: &ScanRecord, reason: &str| Unauthentic {
        device,
        idx: r.idx,
        reason: reason.to_owned(),
    };
    // The key: from the first record, held or in this batch.
    let first = records.iter().find(|r| r.idx == 1);
    let key = match first {
        Some(r) => {
            let key = r
                .device_key
                .ok_or_else(|| refuse(r, "a device's first record carries its key"))?;
            if device_id_of(&key) != device {
                return Err(refuse(r, "the device id is not the one of its key"));
            }
            if held.key(&device).is_some_and(|k| k != key) {
                return Err(refuse(r, "a second key for one device"));
            }
            key
        }
        None => held
            .key(&device)
            .ok_or_else(|| refuse(records[0], "the device's first record is not held"))?,
    };
    let vk = verifying_key(&key).map_err(|e| refuse(records[0], &e))?;
    if let Some(r) = records
        .iter()
        .find(|r| r.idx != 1 && r.device_key.is_some())
    {
        return Err(refuse(r, "only a device's first record carries its key"));
    }
    // Runs of records that each name the one before; a run that starts
    // from something held needs only its last signature checked.
    let mut start = 0;
    while start < records.len() {
        let mut end = start + 1;
        while end < records.len()
            && records[end].idx == records[end - 1].idx + 1
            && records[end].prev == record_hash(records[end - 1])
        {
            end += 1;
        }
        let run = &records[start..end];
        let head = run[0];
        let anchored = match head.idx {
            1 => head.prev == RecordHash::FIRST,
            i => held.hashes(&device, i - 1).contains(&head.prev),
        };
        if anchored {
            let last = run[run.len() - 1];
            if !signature_holds(&vk, last) {
                // Only the device itself breaks a signature in its chain:
                // what a signature still vouches for holds, the rest not.
                let good = run.iter().rposition(|r| signature_holds(&vk, r));
                let bad = run[good.map_or(0, |g| g + 1)];
                return Err(refuse(
                    bad,
                    "its signature does not verify under the device's key",
                ));
            }
        } else if let Some(bad) = run.iter().find(|r| !signature_holds(&vk, r)) {
            return Err(refuse(
                bad,
                "it does not follow the device's record before it, and its own signature does not verify",
            ));
        }
        start = end;
    }
    Ok(())
}
