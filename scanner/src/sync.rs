//! Syncing with gate-sync: push this device's new records, pull what the
//! other gates saw. A scan never waits for this: the gate decides alone, and
//! sync only adds what others admitted to the log it decides from.

use serde::Deserialize;
use serde_json::json;
use shared::{RecordKey, ScanRecord, VersionVector};

use crate::gate::{Gate, GateError};

/// Records a push sends at most.
const BATCH: usize = 1000;

/// Why a sync failed, and whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("no sync server: enroll this device with `scanner enroll --server URL --token TOKEN`")]
    NoServer,
    #[error("this device is not enrolled: `scanner enroll --server URL --token TOKEN`")]
    NotEnrolled,
    #[error("sync server unreachable: {0}")]
    Unreachable(String),
    #[error("sync server refused ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("sync server answered something unreadable: {0}")]
    Garbled(String),
    #[error(transparent)]
    Gate(#[from] GateError),
}

impl SyncError {
    /// Whether retrying the same request cannot help (a refusal for a reason
    /// other than load), so a loop should stop and tell someone.
    pub fn is_permanent(&self) -> bool {
        match self {
            SyncError::NoServer | SyncError::NotEnrolled => true,
            SyncError::Refused { status, .. } => !matches!(status, 408 | 429 | 500..),
            SyncError::Unreachable(_) | SyncError::Garbled(_) | SyncError::Gate(_) => false,
        }
    }
}

/// What one sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub pushed: usize,
    pub pulled: usize,
    /// Revoked tickets now listed, when the node hands out a list.
    pub revocations: Option<usize>,
    /// Whether the node's keyset replaced this device's.
    pub keyset_updated: bool,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(20)))
        .build()
        .into()
}

fn post(
    agent: &ureq::Agent,
    url: &str,
    token: Option<&str>,
    body: &serde_json::Value,
) -> Result<serde_json::Value, SyncError> {
    let mut req = agent.post(url);
    if let Some(token) = token {
        req = req.header("authorization", &format!("Bearer {token}"));
    }
    match answer(req.send_json(body))? {
        (200, value) => Ok(value),
        (status, value) => Err(refused(status, &value)),
    }
}

/// The status and JSON body of a node's answer.
fn answer(
    resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<(u16, serde_json::Value), SyncError> {
    let mut resp = resp.map_err(|e| SyncError::Unreachable(e.to_string()))?;
    let value = resp
        .body_mut()
        .read_json()
        .map_err(|e| SyncError::Garbled(e.to_string()))?;
    Ok((resp.status().as_u16(), value))
}

/// A node's refusal, with the reason it gave.
fn refused(status: u16, value: &serde_json::Value) -> SyncError {
    let message = value["error"]
        .as_str()
        .unwrap_or("no reason given")
        .to_owned();
    SyncError::Refused { status, message }
}

/// Pushes every unpushed record, then pulls what this device lacks.
pub fn sync_once(gate: &mut Gate, now_ms: u64) -> Result<SyncReport, SyncError> {
    let result = sync_inner(gate);
    gate.note_sync(
        now_ms,
        result.as_ref().err().map(|e| e.to_string()).as_deref(),
    )?;
    result
}

fn sync_inner(gate: &mut Gate) -> Result<SyncReport, SyncError> {
    let server = gate.sync_status()?.server.ok_or(SyncError::NoServer)?;
    let server = server.trim_end_matches('/');
    let token = gate.device_token()?.ok_or(SyncError::NotEnrolled)?;
    let token = Some(token.as_str());
    let agent = agent();
    let device = gate.device().id;
    let mut report = SyncReport::default();
    loop {
        let batch = gate.unpushed(BATCH)?;
        let Some(last) = batch.last().map(|r| r.idx) else {
            break;
        };
        post(
            &agent,
            &format!("{server}/v1/devices/{device}/records"),
            token,
            &json!({ "records": batch }),
        )?;
        gate.mark_pushed(last)?;
        report.pushed += batch.len();
    }
    #[derive(Deserialize)]
    struct Pulled {
        records: Vec<ScanRecord>,
        next: Option<RecordKey>,
    }
    // Page after page with the same version vector, each page merged as it comes.
    let vv: VersionVector = gate.version_vector()?;
    let mut after = None;
    loop {
        let answer = post(
            &agent,
            &format!("{server}/v1/pull"),
            token,
            &json!({ "version_vector": vv, "after": after }),
        )?;
        let pulled: Pulled =
            serde_json::from_value(answer).map_err(|e| SyncError::Garbled(e.to_string()))?;
        report.pulled += gate.merge_remote(&pulled.records)?;
        match pulled.next {
            Some(next) if after.is_none_or(|a| next > a) => after = Some(next),
            Some(_) => {
                return Err(SyncError::Garbled(
                    "the server's next page does not move forward".into(),
                ));
            }
            None => break,
        }
    }
    if let Some(list) = get_distributed(&agent, &format!("{server}/v1/revocations"), token)? {
        report.revocations = Some(gate.import_revocations(&list)?);
    }
    if let Some(keyset) = get_distributed(&agent, &format!("{server}/v1/keyset"), token)? {
        report.keyset_updated = gate.update_keyset(&keyset, crate::unix_now_ms())?;
    }
    Ok(report)
}

/// The body of a keyset or revocation list the node hands out; `None` when
/// it has none (404).
fn get_distributed(
    agent: &ureq::Agent,
    url: &str,
    token: Option<&str>,
) -> Result<Option<String>, SyncError> {
    let mut req = agent.get(url);
    if let Some(token) = token {
        req = req.header("authorization", &format!("Bearer {token}"));
    }
    match answer(req.call())? {
        (200, value) => Ok(value["body"].as_str().map(str::to_owned)),
        (404, _) => Ok(None),
        (status, value) => Err(refused(status, &value)),
    }
}

/// Enrolls this device with gate-sync using a one-time token from the
/// organizer, and remembers the server and the device token it answers with.
pub fn enroll(gate: &mut Gate, server: &str, token: &str) -> Result<(), SyncError> {
    let server = server.trim_end_matches('/');
    let answer = post(
        &agent(),
        &format!("{server}/v1/enroll"),
        None,
        &json!({ "token": token, "device_id": gate.device().id }),
    )?;
    let device_token = answer["device_token"]
        .as_str()
        .ok_or_else(|| SyncError::Garbled("no device_token in the answer".into()))?;
    gate.set_enrollment(server, device_token)?;
    Ok(())
}
