//! The sync protocol between gates (`scanner`), merge nodes (`gate-sync`)
//! and peer nodes: its paths, messages, limits and validation, in one place
//! that every side uses. This is an API boundary (see `ARCHITECTURE.md`):
//! a change that an older gate or node cannot read is a new path (`/v2/`),
//! never an edit of these messages.
//!
//! Every message is JSON. Errors have the shape [`ErrorBody`]. A device
//! authenticates with `Authorization: Bearer <device token>`; a peer node
//! with the venue's peer token.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::merge::{RecordKey, VersionVector};
use crate::scan::{DeviceId, DeviceKey, DeviceSig, RecordHash, ScanRecord};
use crate::verify::ResultCode;

/// The OpenAPI document of the node's API.
pub const OPENAPI_DOC: &str = "/openapi.json";
/// A device pushes its own records (`{device_id}` is its id in hex).
pub const PUSH: &str = "/v1/devices/{device_id}/records";
/// A device or a peer node asks for the records it lacks.
pub const PULL: &str = "/v1/pull";
/// A peer node sends the records (and devices) another node lacks.
pub const MERGE: &str = "/v1/merge";
/// A device trades a one-time enrollment token for its device token.
pub const ENROLL: &str = "/v1/enroll";
/// The keyset devices are to verify with.
pub const KEYSET: &str = "/v1/keyset";
/// The revocation list devices are to apply.
pub const REVOCATIONS: &str = "/v1/revocations";
/// Organizers: tickets admitted twice.
pub const DUPLICATES: &str = "/v1/duplicates";
/// Organizers: counts per gate and per minute, devices.
pub const STATS: &str = "/v1/stats";

/// The path a device pushes its records to.
pub fn push_path(device: DeviceId) -> String {
    format!("/v1/devices/{device}/records")
}

/// Most records a pull answer holds; the caller asks again for the rest.
pub const PULL_PAGE: usize = 5000;
/// A pull page stops growing at this many bytes, whatever its record count.
pub const PAGE_BYTES: usize = 4 << 20;
/// Most records a device sends in one push.
pub const PUSH_BATCH: usize = 1000;
/// Largest push body a node reads (a full batch of the longest records fits).
pub const MAX_PUSH_BODY: usize = 4 << 20;
/// Largest merge body: a full page and the enrolled devices.
pub const MAX_MERGE_BODY: usize = 16 << 20;
/// Largest pull request: a version vector of thousands of devices.
pub const MAX_PULL_BODY: usize = 1 << 20;
/// Largest enrollment request.
pub const MAX_ENROLL_BODY: usize = 4 << 10;
/// Largest answer a client reads from a node.
pub const MAX_ANSWER: u64 = 16 << 20;

/// Longest seat label in a record, in bytes.
pub const MAX_SEAT: usize = 64;
/// Longest refusal reason in a record, in bytes.
pub const MAX_REASON: usize = 2048;
/// Longest gate or device name in a record, in bytes.
pub const MAX_LABEL: usize = 256;

/// What a device pushes: records of its own device only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushRequest {
    pub records: Vec<ScanRecord>,
}

/// What a node answers to a push or a merge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    /// Records that were new to the node.
    pub stored: usize,
    pub version_vector: VersionVector,
}

/// What a replica sends to learn what it lacks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    pub version_vector: VersionVector,
    /// The previous page's `next`, to go on from; absent or null at first.
    #[serde(default)]
    pub after: Option<RecordKey>,
    /// At most this many records (1 to [`PULL_PAGE`]).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Peer nodes only, with every page: each device's digest
    /// ([`crate::ScanLog::digest`]), so that a node holding other versions
    /// of the same indexes (a forked device) sends them as `conflicts`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub digests: BTreeMap<DeviceId, RecordHash>,
}

/// One page of a pull answer. Nodes write it by hand for speed; this is
/// what it must read as.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullPage {
    pub records: Vec<ScanRecord>,
    pub version_vector: VersionVector,
    /// Send as `after`, with the same version vector, for the next page;
    /// `None` on the last page.
    pub next: Option<RecordKey>,
    /// Only to peer nodes, on the first page: every enrolled device.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceAuth>,
    /// For the indexes of this page (after `after`, up to `next`): both
    /// versions of every index a device wrote twice, so every replica keeps
    /// the same one and flags the device (the version kept is left out when
    /// it is in `records`); to a peer, every version of a device whose log
    /// forked from its own. A page stays a page however many versions a
    /// device wrote. (Nodes before this sent them all on the first page.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<ScanRecord>,
}

/// What a peer node sends another: records of any device, and the devices
/// it knows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MergeRequest {
    pub records: Vec<ScanRecord>,
    #[serde(default)]
    pub devices: Vec<DeviceAuth>,
    /// Both versions of every index a device wrote twice.
    #[serde(default)]
    pub conflicts: Vec<ScanRecord>,
}

/// A device's enrollment: the one-time token and its own id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub token: String,
    pub device_id: DeviceId,
    /// The device's public key; the id is the start of its SHA-256.
    pub device_key: DeviceKey,
    /// The device's signature of the request ([`crate::device`]), so only
    /// the holder of the key enrolls its id.
    pub sig: DeviceSig,
}

/// The token a device sends with every later request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrolled {
    pub device_token: String,
}

/// A keyset or revocation list as a node hands it out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Distributed {
    pub body: String,
    pub updated_at_ms: u64,
}

/// Every refusal: what went wrong and what to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    /// For a push above a gap: the device's highest index the node holds
    /// with none missing below it, where the device should push from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<u64>,
}

/// What a node knows of an enrolled device, as peer nodes exchange it so
/// that a device enrolled at one node can sync with any of them. Merged as
/// a CRDT: the latest enrollment wins (ties broken by the token hash), and a
/// revocation wins over everything, at its earliest time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceAuth {
    pub device_id: DeviceId,
    pub name: String,
    /// SHA-256 of the device token, hex; never the token.
    pub token_hash: String,
    pub enrolled_at_ms: u64,
    pub revoked_at_ms: Option<u64>,
}

/// Checks one record as every receiver must before taking it: an index a
/// database can hold, labels of bounded length, clocks RFC 3339 can show,
/// and a ticket on every admission.
pub fn check_record(r: &ScanRecord) -> Result<(), String> {
    let at = format!("record {}/{}", r.device_id, r.idx);
    if r.idx == 0 || r.idx > i64::MAX as u64 {
        return Err(format!("{at}: indexes go from 1 to {}", i64::MAX));
    }
    if r.seat.len() > MAX_SEAT
        || r.reason.len() > MAX_REASON
        || r.gate.len() > MAX_LABEL
        || r.device_name.len() > MAX_LABEL
    {
        return Err(format!(
            "{at}: too long; at most seat {MAX_SEAT}, reason {MAX_REASON}, gate and device_name {MAX_LABEL} bytes"
        ));
    }
    if r.wall_ms > crate::time::MAX_MS || r.hlc.millis() > crate::time::MAX_MS {
        return Err(format!(
            "{at}: its clock is beyond the year 9999 (wall_ms {}, hlc {}); fix the device's clock",
            r.wall_ms, r.hlc.0
        ));
    }
    if r.hlc.0 > i64::MAX as u64 {
        return Err(format!("{at}: hlc goes up to {}", i64::MAX));
    }
    if r.result == ResultCode::Ok && r.ticket.is_none() {
        return Err(format!("{at}: an admission names its ticket"));
    }
    // The proof (the issuer's signature of the code presented) goes with
    // a ticket, and only with one.
    match (&r.ticket, &r.proof) {
        (Some(_), None) => {
            return Err(format!(
                "{at}: a record naming a ticket carries the signature of its code as proof"
            ));
        }
        (None, Some(_)) => return Err(format!("{at}: a proof without a ticket")),
        _ => {}
    }
    Ok(())
}

/// Checks every record of a batch; the first bad one refuses the batch.
pub fn check_records(records: &[ScanRecord]) -> Result<(), String> {
    records.iter().try_for_each(check_record)
}

/// Checks a device list from a peer node.
pub fn check_devices(devices: &[DeviceAuth]) -> Result<(), String> {
    let mut hashes = std::collections::BTreeMap::new();
    for d in devices {
        // Lower case only: a node compares the hash of a presented token
        // with the text it holds.
        let lower = crate::hex::decode::<32>(&d.token_hash).map(|h| crate::hex::encode(&h));
        if lower.as_deref() != Some(d.token_hash.as_str()) {
            return Err(format!(
                "device {}: token_hash is not a SHA-256 in lower-case hex",
                d.device_id
            ));
        }
        // A token authenticates one device.
        if let Some(other) = hashes.insert(&d.token_hash, d.device_id)
            && other != d.device_id
        {
            return Err(format!(
                "devices {other} and {} have the same token_hash",
                d.device_id
            ));
        }
        if d.name.len() > MAX_LABEL {
            return Err(format!(
                "device {}: name longer than {MAX_LABEL} bytes",
                d.device_id
            ));
        }
        // A database holds signed 64-bit integers: a greater time would
        // come back negative, and order before every other.
        if d.enrolled_at_ms > i64::MAX as u64 || d.revoked_at_ms.unwrap_or(0) > i64::MAX as u64 {
            return Err(format!(
                "device {}: enrolled_at_ms and revoked_at_ms go up to {}",
                d.device_id,
                i64::MAX
            ));
        }
    }
    Ok(())
}
