//! The HTTP API (JSON). Every error has the shape `{"error": "..."}`; the
//! status comes from the error's kind; internal details go to the log.

use std::sync::{Arc, Mutex, RwLock};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use shared::{DeviceId, RecordKey, ScanRecord, VersionVector};

use crate::store::{DeviceAuth, Store, StoreError};

/// Largest request body accepted.
pub const MAX_BODY: usize = 16 << 20;

/// The organizer's live dashboard: counts, entries per minute, duplicates, devices.
pub const DASHBOARD: &str = include_str!("dashboard.html");

/// The OpenAPI document, kept beside the routes; a test checks they agree.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Shared by every request and by the peer loop; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Pulls and other reads share it; pushes and merges take it alone.
    store: Arc<RwLock<Store>>,
    /// The secret other nodes present to `/v1/merge`; `None` takes no peers.
    peer_token: Option<Arc<str>>,
    /// Pushes waiting for the next group commit, and the lock its leader holds.
    queue: Arc<Mutex<Vec<Arc<PushJob>>>>,
    committing: Arc<Mutex<()>>,
    /// The SHA-256 of the secret organizers present to read duplicates and
    /// stats; `None` leaves them open to anyone who can reach the node.
    organizer_token: Option<Arc<[u8]>>,
}

impl AppState {
    pub fn new(store: Store) -> AppState {
        AppState {
            store: Arc::new(RwLock::new(store)),
            peer_token: None,
            queue: Default::default(),
            committing: Default::default(),
            organizer_token: None,
        }
    }

    /// Shows duplicates and stats (and so the dashboard) only to callers
    /// presenting `token`.
    pub fn with_organizer_token(mut self, token: Option<String>) -> AppState {
        self.organizer_token = token.map(|t| Arc::from(&Sha256::digest(t.trim().as_bytes())[..]));
        self
    }

    /// Refuses a caller without the organizer token, when the node has one.
    /// Digests are compared, so the time taken tells nothing of the token.
    fn require_organizer(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(expected) = &self.organizer_token else {
            return Ok(());
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| Sha256::digest(t.trim().as_bytes()));
        match given {
            Some(d) if d[..] == expected[..] => Ok(()),
            Some(_) => Err(ApiError::Status(
                StatusCode::UNAUTHORIZED,
                "wrong organizer token".into(),
            )),
            None => Err(ApiError::Status(
                StatusCode::UNAUTHORIZED,
                "this node shows duplicates and stats to organizers only: send `Authorization: Bearer <organizer token>`".into(),
            )),
        }
    }

    /// Accepts records from peer nodes presenting `token`, and presents it to them.
    pub fn with_peer_token(mut self, token: Option<String>) -> AppState {
        self.peer_token = token.map(Arc::from);
        self
    }

    pub fn peer_token(&self) -> Option<&str> {
        self.peer_token.as_deref()
    }

    /// Runs `f` on the store, alone (briefly: never across network IO).
    pub fn lock<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        f(&mut self.store.write().unwrap_or_else(|p| p.into_inner()))
    }

    /// Runs `f` on the store beside other readers.
    pub fn read<T>(&self, f: impl FnOnce(&Store) -> T) -> T {
        f(&self.store.read().unwrap_or_else(|p| p.into_inner()))
    }
}

#[derive(Debug)]
pub enum ApiError {
    Status(StatusCode, String),
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::Status(s, m) => (s, m),
            ApiError::Internal(m) => {
                tracing::error!(error = %m, "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error; nothing was applied".to_owned(),
                )
            }
        };
        (status, axum::Json(json!({ "error": message }))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Unauthenticated | StoreError::Revoked(_) => {
                ApiError::Status(StatusCode::UNAUTHORIZED, e.to_string())
            }
            StoreError::NoDevice(_) => ApiError::Status(StatusCode::NOT_FOUND, e.to_string()),
            e => ApiError::Internal(e.to_string()),
        }
    }
}

/// Whether two secrets are equal, compared as SHA-256 digests so that the
/// time taken says nothing of where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    Sha256::digest(a.as_bytes()) == Sha256::digest(b.as_bytes())
}

/// The bearer token of a request.
fn bearer(headers: &HeaderMap) -> Result<String, ApiError> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned())
        .ok_or_else(|| {
            ApiError::Status(
                StatusCode::UNAUTHORIZED,
                "missing `Authorization: Bearer <device token>`: enroll the device first".into(),
            )
        })
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::Status(StatusCode::BAD_REQUEST, message.into())
}

/// The body, with a too-large or unreadable one answered in the API's error shape.
fn body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|r| ApiError::Status(r.status(), r.body_text()))
}

impl AppState {
    async fn with_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let state = self.clone();
        tokio::task::spawn_blocking(move || state.lock(f))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
    }

    /// [`AppState::with_store`] for reads, which run side by side.
    async fn with_store_read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let state = self.clone();
        tokio::task::spawn_blocking(move || state.read(f))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
    }
}

pub const OPENAPI_DOC: &str = "/openapi.json";
pub const PUSH: &str = "/v1/devices/{device_id}/records";
pub const PULL: &str = "/v1/pull";
pub const DUPLICATES: &str = "/v1/duplicates";
pub const STATS: &str = "/v1/stats";
pub const MERGE: &str = "/v1/merge";
pub const ENROLL: &str = "/v1/enroll";
pub const KEYSET: &str = "/v1/keyset";
pub const REVOCATIONS: &str = "/v1/revocations";

/// Every route, as (method, path): what the OpenAPI document must list.
pub const ROUTES: [(&str, &str); 9] = [
    ("get", KEYSET),
    ("get", REVOCATIONS),
    ("get", OPENAPI_DOC),
    ("post", ENROLL),
    ("post", PUSH),
    ("post", PULL),
    ("post", MERGE),
    ("get", DUPLICATES),
    ("get", STATS),
];

pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/", get(|| async { axum::response::Html(DASHBOARD) }))
        .route(
            OPENAPI_DOC,
            get(|| async { ([("content-type", "application/json")], OPENAPI) }),
        )
        .route(ENROLL, post(enroll))
        .route(KEYSET, get(keyset))
        .route(REVOCATIONS, get(revocations))
        .route(PUSH, post(push))
        .route(PULL, post(pull))
        .route(MERGE, post(merge))
        .route(DUPLICATES, get(duplicates))
        .route(STATS, get(stats))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// A push or merge body. Only peer nodes send `devices`.
#[derive(Deserialize)]
struct Batch {
    records: Vec<ScanRecord>,
    #[serde(default)]
    devices: Vec<DeviceAuth>,
}

/// A push or merge body, refused whole if any part is malformed.
fn parse_batch(raw: Result<Bytes, BytesRejection>) -> Result<Batch, ApiError> {
    let batch: Batch = serde_json::from_slice(&body(raw)?)
        .map_err(|e| bad_request(format!("expected {{\"records\": [scan records]}}: {e}")))?;
    if let Some(r) = batch.records.iter().find(|r| r.idx == 0) {
        return Err(bad_request(format!(
            "record {}/0: indexes start at 1",
            r.device_id
        )));
    }
    if let Some(r) = batch.records.iter().find(|r| r.idx > i64::MAX as u64) {
        return Err(bad_request(format!(
            "record {}/{}: indexes go up to {}",
            r.device_id,
            r.idx,
            i64::MAX
        )));
    }
    // Text fields are labels, not documents: bounded, so that any page of
    // a pull stays small enough for every client.
    if let Some(r) = batch.records.iter().find(|r| {
        r.seat.len() > 64
            || r.reason.len() > 2048
            || r.gate.len() > 256
            || r.device_name.len() > 256
    }) {
        return Err(bad_request(format!(
            "record {}/{}: too long; at most seat 64, reason 2048, gate and device_name 256 bytes",
            r.device_id, r.idx
        )));
    }
    if let Some(d) = batch
        .devices
        .iter()
        .find(|d| shared::hex::decode::<32>(&d.token_hash).is_none())
    {
        return Err(bad_request(format!(
            "device {}: token_hash is not a SHA-256 in hex",
            d.device_id
        )));
    }
    Ok(batch)
}

/// A device pushes its own records. The batch is applied whole or not at all;
/// sending it again changes nothing.
async fn push(
    State(s): State<AppState>,
    Path(device): Path<String>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    let device: DeviceId = device.parse().map_err(bad_request)?;
    let token = bearer(&headers)?;
    let caller = s
        .with_store_read(move |store| Ok(store.authenticate(&token)?))
        .await?;
    if caller != device {
        return Err(ApiError::Status(
            StatusCode::FORBIDDEN,
            format!("this token belongs to device {caller}, not {device}"),
        ));
    }
    let Batch { records, devices } = parse_batch(raw)?;
    if !devices.is_empty() {
        return Err(ApiError::Status(
            StatusCode::FORBIDDEN,
            "a device pushes only its own records; enrolled devices come from the organizer".into(),
        ));
    }
    if let Some(r) = records.iter().find(|r| r.device_id != device) {
        return Err(ApiError::Status(
            StatusCode::FORBIDDEN,
            format!(
                "record {}/{} belongs to another device; a device pushes only its own records",
                r.device_id, r.idx
            ),
        ));
    }
    let job = Arc::new(PushJob {
        records,
        device,
        done: Mutex::new(None),
    });
    let state = s.clone();
    let (stored, vv) = tokio::task::spawn_blocking(move || state.commit(&job))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok(axum::Json(
        json!({ "stored": stored, "version_vector": vv }),
    ))
}

/// A push waiting to be committed, and then what came of it.
struct PushJob {
    records: Vec<ScanRecord>,
    device: DeviceId,
    done: Mutex<Option<Result<(usize, VersionVector), String>>>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AppState {
    /// Commits `job`, with every push that queued while the previous commit
    /// was flushing to disk: group commit. The first to get the commit lock
    /// writes the whole queue in one transaction and hands each push its
    /// answer; a push whose answer is ready when it gets the lock is done.
    fn commit(&self, job: &Arc<PushJob>) -> Result<(usize, VersionVector), ApiError> {
        locked(&self.queue).push(job.clone());
        let _leader = locked(&self.committing);
        if let Some(done) = locked(&job.done).take() {
            return done.map_err(ApiError::Internal);
        }
        let group = std::mem::take(&mut *locked(&self.queue));
        let now = crate::unix_now_ms();
        let add = |jobs: &[Arc<PushJob>]| {
            self.lock(|store| {
                let batches: Vec<(&[ScanRecord], Option<DeviceId>)> = jobs
                    .iter()
                    .map(|j| (&j.records[..], Some(j.device)))
                    .collect();
                let stored = store.add_group(&batches, now)?;
                Ok::<_, StoreError>((stored, store.log().version_vector()))
            })
        };
        match add(&group) {
            Ok((stored, vv)) => {
                for (j, n) in group.iter().zip(stored) {
                    *locked(&j.done) = Some(Ok((n, vv.clone())));
                }
            }
            // Nothing of the group was written. One bad push must not fail
            // the others: each is tried again alone.
            Err(_) if group.len() > 1 => {
                for j in &group {
                    let alone = add(std::slice::from_ref(j))
                        .map(|(stored, vv)| (stored[0], vv))
                        .map_err(|e| e.to_string());
                    *locked(&j.done) = Some(alone);
                }
            }
            Err(e) => {
                for j in &group {
                    *locked(&j.done) = Some(Err(e.to_string()));
                }
            }
        }
        locked(&job.done)
            .take()
            .unwrap_or_else(|| Err("the push was not committed".into()))
            .map_err(ApiError::Internal)
    }
}

/// Another gate-sync node sends records of any device (anti-entropy).
async fn merge(
    State(s): State<AppState>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    let token = bearer(&headers)?;
    match s.peer_token() {
        None => {
            return Err(ApiError::Status(
                StatusCode::FORBIDDEN,
                "this node takes no peers: start it with --peer-token".into(),
            ));
        }
        Some(p) if !same_secret(p, &token) => {
            return Err(ApiError::Status(
                StatusCode::UNAUTHORIZED,
                "wrong peer token".into(),
            ));
        }
        Some(_) => {}
    }
    let Batch { records, devices } = parse_batch(raw)?;
    let now = crate::unix_now_ms();
    s.with_store(move |store| {
        // Devices first: if the records fail, what was applied is only the
        // device list, which merging again leaves as it is.
        store.merge_device_auth(&devices)?;
        let stored = store.add(&records, now)?;
        Ok(axum::Json(
            json!({ "stored": stored, "version_vector": store.log().version_vector() }),
        ))
    })
    .await
}

/// The keyset or revocation list, for an enrolled device.
async fn distributed(
    s: AppState,
    headers: HeaderMap,
    name: &'static str,
) -> Result<axum::Json<Value>, ApiError> {
    let token = bearer(&headers)?;
    s.with_store_read(move |store| {
        store.authenticate(&token)?;
        let (body, at) = store.distribution(name)?.ok_or_else(|| {
            ApiError::Status(
                StatusCode::NOT_FOUND,
                format!("no {name} imported on this node yet"),
            )
        })?;
        Ok(axum::Json(json!({ "body": body, "updated_at_ms": at })))
    })
    .await
}

async fn keyset(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<axum::Json<Value>, ApiError> {
    distributed(s, headers, "keyset").await
}

async fn revocations(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<axum::Json<Value>, ApiError> {
    distributed(s, headers, "revocations").await
}

#[derive(Deserialize)]
struct EnrollRequest {
    token: String,
    device_id: DeviceId,
}

/// A device trades a one-time enrollment token for its own device token.
async fn enroll(
    State(s): State<AppState>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    let req: EnrollRequest = serde_json::from_slice(&body(raw)?).map_err(|e| {
        bad_request(format!(
            "expected {{\"token\": \"...\", \"device_id\": \"...\"}}: {e}"
        ))
    })?;
    let now = crate::unix_now_ms();
    s.with_store(move |store| {
        let device_token = store.enroll(&req.token, req.device_id, now)?;
        Ok(axum::Json(json!({ "device_token": device_token })))
    })
    .await
}

/// Most records in one pull answer; the caller asks again for the rest.
pub const PULL_PAGE: usize = 5000;

#[derive(Deserialize)]
struct PullRequest {
    version_vector: VersionVector,
    /// The `next` of the previous page, to go on from.
    #[serde(default)]
    after: Option<RecordKey>,
    /// At most this many records (up to [`PULL_PAGE`]).
    #[serde(default)]
    limit: Option<usize>,
}

/// Records the caller lacks, given its version vector, a page at a time:
/// `next` is the key to send as `after` for the rest, `null` on the last page.
async fn pull(
    State(s): State<AppState>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let token = bearer(&headers)?;
    let is_peer = s.peer_token().is_some_and(|p| same_secret(p, &token));
    let req: PullRequest = serde_json::from_slice(&body(raw)?).map_err(|e| {
        bad_request(format!(
            "expected {{\"version_vector\": {{device: index}}, \"after\"?: {{\"device_id\", \"idx\"}}, \"limit\"?: n}}: {e}"
        ))
    })?;
    let limit = req.limit.unwrap_or(PULL_PAGE).clamp(1, PULL_PAGE);
    let now = crate::unix_now_ms();
    let body = s
        .with_store_read(move |store| {
            if !is_peer {
                let device = store.authenticate(&token)?;
                store.note_pull(device, now);
            }
            let (records, _, next) = store.missing_json(&req.version_vector, req.after, limit);
            let vv = store.log().version_vector();
            // A peer node also learns the enrolled devices, with the first
            // page, so a device can sync with any node of the venue.
            let devices = match is_peer && req.after.is_none() {
                true => Some(store.device_auth()?),
                false => None,
            };
            let tail = serde_json::to_vec(&PullTail {
                version_vector: &vv,
                next,
                devices,
            })
            .map_err(|e| ApiError::Internal(e.to_string()))?;
            // {"records":[...],"version_vector":...,"next":...}
            let mut body = Vec::with_capacity(records.len() + tail.len() + 12);
            body.extend_from_slice(br#"{"records":"#);
            body.extend_from_slice(&records);
            body.push(b',');
            body.extend_from_slice(&tail[1..]);
            Ok(body)
        })
        .await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// The rest of a pull answer, after its records.
#[derive(Serialize)]
struct PullTail<'a> {
    version_vector: &'a VersionVector,
    next: Option<RecordKey>,
    #[serde(skip_serializing_if = "Option::is_none")]
    devices: Option<Vec<DeviceAuth>>,
}

/// `event_id=N` from a query string, if given.
fn event_filter(query: Option<String>) -> Result<Option<u64>, ApiError> {
    let Some(query) = query else { return Ok(None) };
    for pair in query.split('&') {
        if let Some(v) = pair.strip_prefix("event_id=") {
            return v
                .parse()
                .map(Some)
                .map_err(|_| bad_request(format!("event_id {v:?} is not a number")));
        }
    }
    Ok(None)
}

/// Unix milliseconds as RFC 3339 UTC, to the second.
fn time(ms: u64) -> String {
    // RFC 3339 ends with the year 9999; a device's clock may say anything.
    let ms = ms.min(253_402_300_799_000);
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn scan_json(r: &ScanRecord) -> Value {
    json!({
        "device_id": r.device_id.to_string(),
        "device_name": r.device_name,
        "gate": r.gate,
        "idx": r.idx,
        "at": time(r.wall_ms),
        "at_ms": r.wall_ms,
        "direction": r.direction.as_str(),
        "result": r.result.as_str(),
    })
}

async fn duplicates(
    State(s): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<axum::Json<Value>, ApiError> {
    s.require_organizer(&headers)?;
    let event = event_filter(query)?;
    s.with_store_read(move |store| {
        let list: Vec<Value> = store
            .duplicates(event)
            .iter()
            .map(|d| {
                json!({
                    "event_id": d.event_id,
                    "ticket_id": d.ticket_id.to_string(),
                    "extra_admissions": d.extra_admissions,
                    "scans": d.scans.iter().map(scan_json).collect::<Vec<_>>(),
                })
            })
            .collect();
        Ok(axum::Json(json!({ "duplicates": list })))
    })
    .await
}

async fn stats(
    State(s): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<axum::Json<Value>, ApiError> {
    s.require_organizer(&headers)?;
    let event = event_filter(query)?;
    // The counts are kept as records arrive: a poll reads them, beside
    // pulls, and never walks the log.
    s.with_store_read(move |store| {
        let devices: Vec<Value> = store
            .devices()?
            .into_iter()
            .map(|(id, at)| json!({ "device_id": id, "last_sync": time(at), "last_sync_ms": at }))
            .collect();
        let per_gate = store.counts().per_gate(event);
        let gates: Vec<Value> = per_gate
            .iter()
            .map(|((gate, device), c)| {
                json!({ "gate": gate, "device_id": device.to_string(),
                        "admitted": c.admitted, "inside": c.inside })
            })
            .collect();
        let minutes: Vec<Value> = store
            .counts()
            .per_minute(event)
            .iter()
            .map(|(m, n)| json!({ "minute": time(m * 60_000), "entries": n }))
            .collect();
        Ok(axum::Json(json!({
            "admitted": per_gate.values().map(|c| c.admitted).sum::<u64>(),
            "inside": per_gate.values().map(|c| c.inside).sum::<u64>(),
            "per_gate": gates,
            "entries_per_minute": minutes,
            "devices": devices,
            "records": store.log().len(),
        })))
    })
    .await
}
