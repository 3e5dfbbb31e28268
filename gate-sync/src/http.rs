//! The HTTP API (JSON). Every error has the shape `{"error": "..."}`; the
//! status comes from the error's kind; internal details go to the log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use shared::protocol::{
    self, DeviceAuth, EnrollRequest, ErrorBody, MergeRequest, PullRequest, PushRequest,
};
use shared::{DeviceId, RecordKey, ScanRecord, VersionVector};

use crate::net::PeerAddr;
use crate::store::{Pieces, Store, StoreError};

/// How long a client may take to send a request body it was allowed to send.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

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
    /// Device tokens checked against the store lately, by SHA-256: a sync's
    /// requests are authenticated without a blocking task each. Kept for
    /// [`AUTH_FOR`]; a revocation made by another process (the command
    /// line) takes effect within that time, one from a peer at once.
    auth_cache: Arc<Mutex<TokenCache>>,
    /// How many refusals were logged this second, and how many not.
    refusals: Arc<Mutex<RefusalBudget>>,
}

/// Most refusals logged in full in one second; the others are counted, and
/// the count is logged before the next line. Anyone can send requests the
/// node refuses, thousands a second: each with its own line, they would
/// fill the disk.
pub const LOGGED_REFUSALS_PER_SEC: u32 = 20;

#[derive(Default)]
struct RefusalBudget {
    /// When the current second began.
    since: Option<std::time::Instant>,
    logged: u32,
    not_logged: u64,
}

/// Token digest -> (device, when it was checked).
type TokenCache = HashMap<[u8; 32], (DeviceId, Instant)>;

/// How long a device token checked against the store is taken as good.
pub const AUTH_FOR: Duration = Duration::from_secs(5);

impl AppState {
    pub fn new(store: Store) -> AppState {
        AppState {
            store: Arc::new(RwLock::new(store)),
            peer_token: None,
            queue: Default::default(),
            committing: Default::default(),
            organizer_token: None,
            auth_cache: Default::default(),
            refusals: Default::default(),
        }
    }

    /// Whether a refusal may be logged now, and how many were not since
    /// the last one logged.
    fn refusal_budget(&self) -> (bool, u64) {
        let mut budget = locked(&self.refusals);
        let now = std::time::Instant::now();
        if budget
            .since
            .is_none_or(|t| now - t >= std::time::Duration::from_secs(1))
        {
            budget.since = Some(now);
            budget.logged = 0;
        }
        if budget.logged < LOGGED_REFUSALS_PER_SEC {
            budget.logged += 1;
            (true, std::mem::take(&mut budget.not_logged))
        } else {
            budget.not_logged += 1;
            (false, 0)
        }
    }

    /// The device a token belongs to, before any body is read.
    async fn device(&self, token: String) -> Result<DeviceId, ApiError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some((device, at)) = locked(&self.auth_cache).get(&key)
            && at.elapsed() < AUTH_FOR
        {
            return Ok(*device);
        }
        let device = self
            .with_store_read(move |store| Ok(store.authenticate(&token)?))
            .await?;
        let mut cache = locked(&self.auth_cache);
        if cache.len() >= 10_000 {
            cache.clear();
        }
        cache.insert(key, (device, Instant::now()));
        Ok(device)
    }

    /// Refuses a device from now on (its records stay), at once for this
    /// node's requests too.
    pub fn revoke(&self, device: &str, now_ms: u64) -> Result<(), StoreError> {
        self.read(|store| store.revoke(device, now_ms))?;
        self.forget_tokens();
        Ok(())
    }

    /// Forgets every token checked: enrolled devices changed (a peer's list).
    pub fn forget_tokens(&self) {
        locked(&self.auth_cache).clear();
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
    /// A push above a gap: where the device should push from.
    Gap {
        message: String,
        held: u64,
    },
    Internal(String),
}

/// Why a request was refused, kept on the response for the refusal log.
#[derive(Clone, Debug)]
struct Refused(String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            ApiError::Status(s, m) => (
                s,
                ErrorBody {
                    error: m,
                    held: None,
                },
            ),
            ApiError::Gap { message, held } => (
                StatusCode::CONFLICT,
                ErrorBody {
                    error: message,
                    held: Some(held),
                },
            ),
            ApiError::Internal(m) => {
                tracing::error!(error = %m, "request failed");
                let error = "internal error; nothing was applied".to_owned();
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorBody { error, held: None },
                )
            }
        };
        let reason = Refused(body.error.clone());
        let mut response = (status, axum::Json(body)).into_response();
        response.extensions_mut().insert(reason);
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Unauthenticated | StoreError::Revoked(_) => {
                ApiError::Status(StatusCode::UNAUTHORIZED, e.to_string())
            }
            StoreError::NoDevice(_) => ApiError::Status(StatusCode::NOT_FOUND, e.to_string()),
            StoreError::AlreadyEnrolled(_)
            | StoreError::Conflict { .. }
            | StoreError::TokenHashHeld { .. } => {
                ApiError::Status(StatusCode::CONFLICT, e.to_string())
            }
            StoreError::Unauthentic(_) => ApiError::Status(StatusCode::BAD_REQUEST, e.to_string()),
            StoreError::Gap { held, .. } => ApiError::Gap {
                message: e.to_string(),
                held,
            },
            e => ApiError::Internal(e.to_string()),
        }
    }
}

/// Logs every refusal (4xx) with who asked and why, so an organizer sees
/// an attack happening: wrong tokens, foreign device ids, oversized bodies;
/// beyond [`LOGGED_REFUSALS_PER_SEC`], how many.
async fn log_refusals(
    State(s): State<AppState>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    request: Request,
    next: Next,
) -> Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let response = next.run(request).await;
    let status = response.status();
    if status.is_client_error() {
        let (log, not_logged) = s.refusal_budget();
        if !log {
            return response;
        }
        if not_logged > 0 {
            tracing::warn!(
                not_logged,
                "requests refused and not logged: more than {LOGGED_REFUSALS_PER_SEC} a second"
            );
        }
        let reason = response
            .extensions()
            .get::<Refused>()
            .map_or("", |r| r.0.as_str());
        tracing::warn!(%peer, %method, path = %truncated(&path, 200), status = status.as_u16(),
            reason = %truncated(reason, 300), "request refused");
    }
    response
}

/// At most `max` bytes of `text` (on a character boundary), for log lines.
fn truncated(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
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

/// Reads a JSON body of at most `limit` bytes, within [`BODY_TIMEOUT`].
/// Handlers call it only once the caller is authenticated, so no stranger
/// makes the node hold a body in memory.
async fn json_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(ApiError::Status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the body as `Content-Type: application/json`".into(),
        ));
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        ApiError::Status(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over {limit} bytes"),
        )
    };
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    // Room for what it declared, up to a push of a thousand records: a
    // client trickling a body in cannot make the node hold much for it.
    let room = declared
        .map_or(64 << 10, |n| n as usize)
        .min(limit)
        .min(1 << 20);
    match tokio::time::timeout(BODY_TIMEOUT, bounded(body, limit, room)).await {
        Err(_) => Err(ApiError::Status(
            StatusCode::REQUEST_TIMEOUT,
            "the body took too long to arrive".into(),
        )),
        Ok(Err(e)) => Err(bad_request(format!("reading the body: {e}"))),
        Ok(Ok(None)) => Err(too_large()),
        Ok(Ok(Some(bytes))) => Ok(bytes),
    }
}

/// The whole of `body`, read into `room` bytes made at once, or `None` as
/// soon as it passes `limit` bytes (the length limit is known by what it
/// is, not by an error's words).
async fn bounded(mut body: Body, limit: usize, room: usize) -> Result<Option<Bytes>, axum::Error> {
    use axum::body::HttpBody;
    let mut out = Vec::with_capacity(room);
    while let Some(frame) =
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
    {
        if let Ok(data) = frame?.into_data() {
            if out.len() + data.len() > limit {
                return Ok(None);
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(Some(Bytes::from(out)))
}

/// Parses a JSON message, refusing it with what was expected.
fn parse<T: serde::de::DeserializeOwned>(raw: &[u8], expected: &str) -> Result<T, ApiError> {
    serde_json::from_slice(raw).map_err(|e| bad_request(format!("expected {expected}: {e}")))
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
    /// [`AppState::with_store_read`] for reads that touch no file (a
    /// pull's page): at once on this thread, sparing a thread switch each
    /// way, when no commit holds the store and `short` says the read is
    /// short; otherwise on a thread of the blocking pool, so that a long
    /// page never holds up the connections this thread serves.
    async fn with_store_read_now<T: Send + 'static>(
        &self,
        short: impl FnOnce(&Store) -> bool,
        f: impl FnOnce(&Store) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        if let Ok(store) = self.store.try_read()
            && short(&store)
        {
            return f(&store);
        }
        self.with_store_read(f).await
    }

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

use shared::protocol::{
    DUPLICATES, ENROLL, KEYSET, MERGE, OPENAPI_DOC, PULL, PUSH, REVOCATIONS, STATS,
};

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
        // Every refusal in the one error shape, and logged: a path or
        // method the API has not too.
        .fallback(|| async {
            ApiError::Status(
                StatusCode::NOT_FOUND,
                "no such path: the API is described at /openapi.json".into(),
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::Status(
                StatusCode::METHOD_NOT_ALLOWED,
                "this path takes another method (see `Allow`, and /openapi.json)".into(),
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            log_refusals,
        ))
        .with_state(state)
}

/// Records as every receiver checks them: refused whole if any is malformed.
fn checked(records: &[ScanRecord]) -> Result<(), ApiError> {
    protocol::check_records(records).map_err(bad_request)
}

/// A device pushes its own records. The batch is applied whole or not at all;
/// sending it again changes nothing.
async fn push(
    State(s): State<AppState>,
    Path(device): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<axum::Json<Value>, ApiError> {
    let caller = s.device(bearer(&headers)?).await?;
    let device: DeviceId = device.parse().map_err(bad_request)?;
    if caller != device {
        return Err(ApiError::Status(
            StatusCode::FORBIDDEN,
            format!("this token belongs to device {caller}, not {device}"),
        ));
    }
    let raw = json_body(&headers, body, protocol::MAX_PUSH_BODY).await?;
    let PushRequest { records } = parse(&raw, "{\"records\": [scan records of this device]}")?;
    checked(&records)?;
    if let Some(r) = records.iter().find(|r| r.device_id != device) {
        return Err(ApiError::Status(
            StatusCode::FORBIDDEN,
            format!(
                "record {}/{} belongs to another device; a device pushes only its own records",
                r.device_id, r.idx
            ),
        ));
    }
    // Signed by the device, no gap. A device never writes an index twice:
    // a second version is kept as proof against it, and answered 409.
    let job = Arc::new(PushJob {
        records,
        device,
        done: Mutex::new(None),
    });
    let check = job.clone();
    let second_version = s
        .with_store_read(move |store| Ok(store.check_push(&check.records)?))
        .await?;
    let state = s.clone();
    let (stored, vv) = tokio::task::spawn_blocking(move || state.commit(&job))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    if let Some(idx) = second_version {
        return Err(StoreError::Conflict { device, idx }.into());
    }
    Ok(axum::Json(
        json!({ "stored": stored, "version_vector": vv }),
    ))
}

/// A push waiting to be committed, and then what came of it.
struct PushJob {
    records: Vec<ScanRecord>,
    device: DeviceId,
    done: Mutex<Option<Result<(usize, VersionVector), StoreError>>>,
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
            return done.map_err(ApiError::from);
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
                    let alone = add(std::slice::from_ref(j)).map(|(stored, vv)| (stored[0], vv));
                    *locked(&j.done) = Some(alone);
                }
            }
            Err(e) => {
                let message = e.to_string();
                let mut e = Some(e);
                for j in &group {
                    let failed = e
                        .take()
                        .unwrap_or_else(|| StoreError::Failed(message.clone()));
                    *locked(&j.done) = Some(Err(failed));
                }
            }
        }
        locked(&job.done)
            .take()
            .unwrap_or_else(|| Err(StoreError::Failed("the push was not committed".into())))
            .map_err(ApiError::from)
    }
}

/// Another gate-sync node sends records of any device (anti-entropy).
async fn merge(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Body,
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
    let raw = json_body(&headers, body, protocol::MAX_MERGE_BODY).await?;
    let MergeRequest {
        records,
        devices,
        conflicts,
    } = parse(
        &raw,
        "{\"records\": [scan records], \"devices\": [enrolled devices], \"conflicts\": [scan records]}",
    )?;
    checked(&records)?;
    checked(&conflicts)?;
    protocol::check_devices(&devices).map_err(bad_request)?;
    let now = crate::unix_now_ms();
    let state = s.clone();
    s.with_store(move |store| {
        // Devices first: if the records fail, what was applied is only the
        // device list, which merging again leaves as it is.
        store.merge_device_auth(&devices)?;
        state.forget_tokens();
        let stored = store.add_authentic(&records, &conflicts, now)?;
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

/// A device trades a one-time enrollment token for its own device token.
/// The body is small and bounded: anyone may send it.
async fn enroll(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<axum::Json<Value>, ApiError> {
    let raw = json_body(&headers, body, protocol::MAX_ENROLL_BODY).await?;
    let req: EnrollRequest = parse(
        &raw,
        "{\"token\": \"<enrollment token>\", \"device_id\": \"<32 hex digits>\"}",
    )?;
    shared::device::verify_enrollment(&req.device_key, req.device_id, &req.token, &req.sig)
        .map_err(bad_request)?;
    let now = crate::unix_now_ms();
    s.with_store(move |store| {
        let device_token = store.enroll(&req.token, req.device_id, now)?;
        Ok(axum::Json(json!({ "device_token": device_token })))
    })
    .await
}

pub use shared::protocol::PULL_PAGE;

/// Records the caller lacks, given its version vector, a page at a time:
/// `next` is the key to send as `after` for the rest, `null` on the last page.
async fn pull(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let token = bearer(&headers)?;
    let is_peer = s.peer_token().is_some_and(|p| same_secret(p, &token));
    let device = match is_peer {
        true => None,
        false => Some(s.device(token).await?),
    };
    let raw = json_body(&headers, body, protocol::MAX_PULL_BODY).await?;
    let req: PullRequest = parse(
        &raw,
        "{\"version_vector\": {device: index}, \"after\"?: {\"device_id\", \"idx\"}, \"limit\"?: n}",
    )?;
    let limit = req.limit.unwrap_or(PULL_PAGE).clamp(1, PULL_PAGE);
    // Only a peer node learns of forks from digests; a device gets the
    // indexes written twice.
    let digests = match is_peer {
        true => req.digests,
        false => Default::default(),
    };
    let now = crate::unix_now_ms();
    let theirs = Arc::new(req.version_vector);
    let vv = theirs.clone();
    let answer = move |store: &Store| {
        if let Some(device) = device {
            store.note_pull(device, now);
        }
        // Every version a replica needs to see a faulty device goes in
        // the pages, beside the records of the same indexes: an answer
        // stays a page however many versions a device wrote.
        // {"records":[...],"conflicts":[...],"version_vector":...,"next":...}
        let page = store.page_after(br#"{"records":"#, &vv, &digests, req.after, limit);
        // A peer node also learns the enrolled devices, with the first
        // page, so a device can sync with any node of the venue.
        let devices = match is_peer && req.after.is_none() {
            true => Some(store.device_auth()?),
            false => None,
        };
        let tail = serde_json::to_vec(&PullTail {
            next: page.next,
            devices,
        })
        .map_err(|e| ApiError::Internal(e.to_string()))?;
        let mut body = page.records;
        if page.conflicts.len() > 2 {
            body.extend_from_slice(br#","conflicts":"#);
            body.extend_from_slice(&page.conflicts);
        }
        body.extend_from_slice(br#","version_vector":"#);
        body.push(store.version_vector_json());
        body.extend_from_slice(b",");
        body.extend_from_slice(&tail[1..]);
        Ok(body)
    };
    // A peer's first page reads the database; a gate's reads memory only,
    // and is made at once if it holds a few seconds of every gate's scans.
    let body = match is_peer {
        true => s.with_store_read(answer).await?,
        false => {
            // An index written twice sends pages down the long way, which
            // walks every such index.
            let short = |store: &Store| {
                !store.log().has_conflicts()
                    && store.log().lacking(&theirs, SHORT_PULL) < SHORT_PULL
            };
            s.with_store_read_now(short, answer).await?
        }
    };
    let body = Body::new(InPieces::from(body));
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// A pull lacking fewer records than this is answered on the thread that
/// read it: slices of the newest records, or records written out again
/// (a millisecond or two at most).
const SHORT_PULL: u64 = 2000;

/// A body sent piece by piece, with its length known: the pieces shared
/// with the store go out without being copied into one buffer.
struct InPieces {
    pieces: std::collections::VecDeque<Bytes>,
    left: u64,
}

impl From<Pieces> for InPieces {
    fn from(pieces: Pieces) -> InPieces {
        InPieces {
            left: pieces.len() as u64,
            pieces: pieces.into_pieces().into(),
        }
    }
}

impl http_body::Body for InPieces {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let piece = self.pieces.pop_front();
        if let Some(p) = &piece {
            self.left -= p.len() as u64;
        }
        std::task::Poll::Ready(piece.map(|p| Ok(http_body::Frame::data(p))))
    }

    fn is_end_stream(&self) -> bool {
        self.pieces.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}

/// The rest of a pull answer, after its records.
#[derive(Serialize)]
struct PullTail {
    next: Option<RecordKey>,
    #[serde(skip_serializing_if = "Option::is_none")]
    devices: Option<Vec<DeviceAuth>>,
}

/// `event_id=N` from a query string, if given.
/// Names and values are percent-decoded, as any client may encode them:
/// `event%5Fid=1` was ignored (every event counted) and `event_id=%31`
/// refused.
fn event_filter(query: Option<String>) -> Result<Option<u64>, ApiError> {
    let Some(query) = query else { return Ok(None) };
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decoded(name) == "event_id" {
            let v = percent_decoded(value);
            return v
                .parse()
                .map(Some)
                .map_err(|_| bad_request(format!("event_id {v:?} is not a number")));
        }
    }
    Ok(None)
}

/// `text` with its `%XX` escapes decoded (and `+` as a space), lossily.
fn percent_decoded(text: &str) -> String {
    let hex = |b: Option<&u8>| b.and_then(|b| char::from(*b).to_digit(16));
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

use shared::time::format_ms as time;

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
        let flagged: Vec<Value> = store
            .log()
            .flagged()
            .into_iter()
            .map(|(device, indexes)| json!({ "device_id": device.to_string(), "indexes_written_twice": indexes }))
            .collect();
        Ok(axum::Json(json!({
            "flagged_devices": flagged,
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
