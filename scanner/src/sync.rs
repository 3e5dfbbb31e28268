//! Syncing with gate-sync: push this device's new records, pull what the
//! other gates saw. A scan never waits for this: the gate decides alone, and
//! sync only adds what others admitted to the log it decides from.

use serde::Serialize;
use serde::de::DeserializeOwned;
use shared::protocol::{
    self, ENROLL, EnrollRequest, Enrolled, ErrorBody, KEYSET, PULL, PUSH_BATCH, PullPage,
    PullRequest, PushRequest, REVOCATIONS, Stored,
};

use crate::gate::{Gate, GateError};

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
    Refused {
        status: u16,
        message: String,
        /// For a push above a gap: where the node wants the device to push from.
        held: Option<u64>,
    },
    #[error("{0}")]
    BadServer(String),
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
            SyncError::NoServer | SyncError::NotEnrolled | SyncError::BadServer(_) => true,
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

/// The client for `server`, pinned to the certificate fingerprint the
/// enrollment token carried.
fn agent(pin: Option<&str>) -> ureq::Agent {
    gate_sync::tls::agent(pin, std::time::Duration::from_secs(20))
}

fn post<T: DeserializeOwned>(
    agent: &ureq::Agent,
    url: &str,
    token: Option<&str>,
    body: &impl Serialize,
) -> Result<T, SyncError> {
    let mut req = agent.post(url);
    if let Some(token) = token {
        req = req.header("authorization", &format!("Bearer {token}"));
    }
    answer(req.send_json(body))
}

/// A node's answer: the message when it is 200, its refusal otherwise.
fn answer<T: DeserializeOwned>(
    resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<T, SyncError> {
    let mut resp = resp.map_err(|e| SyncError::Unreachable(e.to_string()))?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(protocol::MAX_ANSWER)
        .read_to_vec()
        .map_err(|e| SyncError::Garbled(e.to_string()))?;
    if status == 200 {
        return serde_json::from_slice(&body).map_err(|e| SyncError::Garbled(e.to_string()));
    }
    let refusal: Option<ErrorBody> = serde_json::from_slice(&body).ok();
    Err(SyncError::Refused {
        status,
        message: refusal
            .as_ref()
            .map_or("no reason given".to_owned(), |r| r.error.clone()),
        held: refusal.and_then(|r| r.held),
    })
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
    let agent = agent(gate.pin()?.as_deref());
    let node = Node {
        agent: &agent,
        server,
        token,
    };
    let mut report = SyncReport::default();
    report.pushed += push_all(gate, &node)?;
    // Page after page with the same version vector, each page merged as it comes.
    let vv = gate.version_vector()?;
    let mut after = None;
    let held_here = loop {
        let request = PullRequest {
            version_vector: vv.clone(),
            after,
            limit: None,
            digests: Default::default(),
        };
        let pulled: PullPage = post(&agent, &format!("{server}{PULL}"), token, &request)?;
        // Two versions of an index come in the page of that index, with
        // its record when this device lacks it.
        report.pulled += gate.merge_remote(&pulled.records, &pulled.conflicts)?;
        match pulled.next {
            Some(next) if after.is_none_or(|a| next > a) => after = Some(next),
            Some(_) => {
                return Err(SyncError::Garbled(
                    "the server's next page does not move forward".into(),
                ));
            }
            None => break pulled.version_vector.get(&gate.device().id),
        }
    };
    // The node holds fewer of this device's records than were pushed (it
    // was restored from a backup, or replaced): push them again.
    if held_here < gate.sync_status()?.pushed_idx {
        gate.rewind_pushed(held_here)?;
        report.pushed += push_all(gate, &node)?;
    }
    if let Some(list) = get_distributed(&agent, &format!("{server}{REVOCATIONS}"), token)? {
        report.revocations = Some(gate.import_revocations(&list)?);
    }
    if let Some(keyset) = get_distributed(&agent, &format!("{server}{KEYSET}"), token)? {
        report.keyset_updated = gate.update_keyset(&keyset, crate::unix_now_ms())?;
    }
    Ok(report)
}

/// Where a sync goes.
struct Node<'a> {
    agent: &'a ureq::Agent,
    server: &'a str,
    token: Option<&'a str>,
}

/// Pushes every record not yet pushed, a batch at a time; returns how many.
fn push_all(gate: &mut Gate, node: &Node<'_>) -> Result<usize, SyncError> {
    let url = format!("{}{}", node.server, protocol::push_path(gate.device().id));
    let mut pushed = 0;
    let mut rewound = false;
    loop {
        let records = gate.unpushed(PUSH_BATCH)?;
        let Some(last) = records.last().map(|r| r.idx) else {
            return Ok(pushed);
        };
        let n = records.len();
        match post::<Stored>(node.agent, &url, node.token, &PushRequest { records }) {
            Ok(_) => {
                gate.mark_pushed(last)?;
                pushed += n;
            }
            // The node lacks records this device took as pushed: push
            // again from where it holds.
            Err(SyncError::Refused {
                status: 409,
                held: Some(held),
                ..
            }) if !rewound && held < gate.sync_status()?.pushed_idx => {
                gate.rewind_pushed(held)?;
                rewound = true;
            }
            Err(e) => return Err(e),
        }
    }
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
    match answer::<protocol::Distributed>(req.call()) {
        Ok(d) => Ok(Some(d.body)),
        Err(SyncError::Refused { status: 404, .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Enrolls this device with gate-sync using a one-time token from the
/// organizer, and remembers the server and the device token it answers with.
pub fn enroll(gate: &mut Gate, server: &str, token: &str) -> Result<(), SyncError> {
    let server = server_url(server)?;
    let code = gate_sync::tls::EnrollmentCode::parse(token).map_err(SyncError::BadServer)?;
    if server.starts_with("https://") && code.fingerprint.is_none() {
        return Err(SyncError::BadServer(
            "this token carries no certificate fingerprint to pin: use the whole token \
             `gate-sync devices enroll` printed (TOKEN.FINGERPRINT)"
                .into(),
        ));
    }
    let token = code.token.as_str();
    if !gate.device().signs {
        return Err(SyncError::BadServer(
            "this device was provisioned before devices signed their records: \
             provision it again on a new database (scanner --db NEW.db init ...)"
                .into(),
        ));
    }
    let token = token.trim();
    let request = EnrollRequest {
        token: token.to_owned(),
        device_id: gate.device().id,
        device_key: gate.signer().public_key(),
        sig: gate.signer().sign_enrollment(token),
    };
    let pin = code.fingerprint.as_deref();
    let answer: Enrolled = post(&agent(pin), &format!("{server}{ENROLL}"), None, &request)?;
    gate.set_enrollment(&server, &answer.device_token, pin)?;
    Ok(())
}

/// The node's base URL as given, checked: `https://HOST:PORT` (plain
/// `http://` only to this machine), no path.
pub fn server_url(server: &str) -> Result<String, SyncError> {
    let server = server.trim().trim_end_matches('/');
    let Some(rest) = server
        .strip_prefix("https://")
        .or_else(|| server.strip_prefix("http://"))
    else {
        let hint = match server.split_once("://") {
            Some((scheme, _)) => format!("{scheme}:// is not supported here"),
            None => format!("write it as https://{server}"),
        };
        return Err(SyncError::BadServer(format!(
            "--server {server:?} is not a gate-sync address: {hint} (e.g. https://10.0.0.2:8090)"
        )));
    };
    if rest.is_empty() || rest.contains(['/', '?', '#', ' ']) {
        return Err(SyncError::BadServer(format!(
            "--server {server:?}: give the node as https://HOST:PORT, with no path"
        )));
    }
    if server.starts_with("http://") && !gate_sync::tls::plain_allowed(server) {
        return Err(SyncError::BadServer(format!(
            "--server {server:?}: use https:// (plain http is only for a node on this machine)"
        )));
    }
    Ok(server.to_owned())
}
