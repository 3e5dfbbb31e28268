//! The station page: what gate staff look at on the tablet. The result of a
//! scan made at this device, huge and coloured, with seat and category, for
//! [`RESULT_SHOWN_FOR`], then "Ready" again for the next holder; a manual
//! entry field (which is also where a keyboard-wedge scanner types); counts;
//! and the sync state in plain words.
//!
//! The page follows the redemption log, not the inputs: a task tails the log
//! and pushes every new record to the browsers over server-sent events, so a
//! scan shows whether it came from the page, the wedge on standard input, the
//! camera, or another `scanner check` process on the same database (the same
//! device). Records other gates made, which a sync brings, change the counts
//! and never the result on screen.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use shared::{DeviceId, Direction, Hlc, ScanRecord};
use tokio::sync::{Notify, broadcast};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

use crate::gate::{Gate, GateError, SyncStatus, format_ms};
use crate::report;

const PAGE: &str = include_str!("station.html");

/// How long a scan's result stays on screen before the page shows "Ready"
/// again, so the next holder is never shown the previous one's green.
pub const RESULT_SHOWN_FOR: Duration = Duration::from_secs(5);

/// Shared by every request; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    gate: Arc<Mutex<Gate>>,
    updates: broadcast::Sender<String>,
    /// Wakes the log tail at once after a scan made here.
    scanned: Arc<Notify>,
    /// How long a result stays on screen ([`RESULT_SHOWN_FOR`] unless set).
    shown_for: Duration,
    /// The newest scan made at this device and when the tail saw it: what a
    /// page opened (or reconnected) within `shown_for` of it shows.
    latest_here: Arc<Mutex<Option<(ScanRecord, Instant)>>>,
    /// Whether the background sync's last failure was one a retry cannot
    /// mend (the node refuses this device): the database keeps only words.
    sync_refused: Arc<AtomicBool>,
}

/// The station's one error type: the status comes from the variant; details
/// of internal failures go to the log, not to the page.
#[derive(Debug)]
enum ApiError {
    BadRequest(String),
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::Internal(m) => {
                tracing::error!(error = %m, "station request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the scan could not be recorded; nothing was admitted".to_owned(),
                )
            }
        };
        (status, axum::Json(json!({ "error": message }))).into_response()
    }
}

impl From<GateError> for ApiError {
    fn from(e: GateError) -> ApiError {
        ApiError::Internal(e.to_string())
    }
}

impl AppState {
    pub fn new(gate: Gate) -> AppState {
        AppState {
            gate: Arc::new(Mutex::new(gate)),
            updates: broadcast::channel(256).0,
            scanned: Arc::new(Notify::new()),
            shown_for: RESULT_SHOWN_FOR,
            latest_here: Arc::new(Mutex::new(None)),
            sync_refused: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Keeps each result on screen for `d` instead of [`RESULT_SHOWN_FOR`].
    pub fn with_result_shown_for(mut self, d: Duration) -> AppState {
        self.shown_for = d;
        self
    }

    /// The scan made here that is still on screen, with the time it has left.
    fn current(&self) -> Option<(ScanRecord, Duration)> {
        let latest = self.latest_here.lock().unwrap_or_else(|p| p.into_inner());
        let (record, seen) = latest.as_ref()?;
        let left = self.shown_for.checked_sub(seen.elapsed())?;
        Some((record.clone(), left))
    }

    /// Runs `f` on the gate off the async threads (SQLite commits block).
    async fn with_gate<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Gate) -> Result<T, GateError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let gate = self.gate.clone();
        tokio::task::spawn_blocking(move || {
            let mut gate = gate.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut gate)
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(ApiError::from)
    }

    /// Checks a code from any input and wakes the display.
    pub fn check_blocking(
        &self,
        code: &str,
        direction: Direction,
        now_ms: u64,
    ) -> Result<Value, GateError> {
        let mut gate = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        let checked = gate.check(code, direction, now_ms)?;
        drop(gate);
        self.scanned.notify_one();
        Ok(Value::Object(report::checked_json(&checked)))
    }
}

/// What the page shows of one record. `at` is RFC 3339 UTC and `at_ms` unix
/// milliseconds, for programs; the page shows the tablet's clock time.
pub fn scan_view(r: &ScanRecord) -> Value {
    json!({
        "result": r.result.as_str(),
        "reason": r.reason,
        "direction": r.direction.as_str(),
        "event_id": r.ticket.map(|(e, _)| e),
        "ticket_id": r.ticket.map(|(_, t)| t.to_string()),
        "category_id": r.ticket.map(|_| r.category_id),
        "seat": r.seat,
        "multi_entry": r.multi_entry,
        "gate": r.gate,
        "device_name": r.device_name,
        "device_id": r.device_id.to_string(),
        "idx": r.idx,
        "at": format_ms(r.wall_ms),
        "at_ms": r.wall_ms,
    })
}

/// Everything the page draws but a scan: device, counts, the result still on
/// screen (`current`: a scan made here, and for how long yet), sync state.
/// `last` is the newest record of any gate, for programs.
fn state_json(gate: &Gate, s: &AppState) -> Result<Value, GateError> {
    let stats = gate.stats()?;
    let d = gate.device();
    let current = s.current().map(
        |(record, left)| json!({ "scan": scan_view(&record), "ms_left": left.as_millis() as u64 }),
    );
    let refused = s.sync_refused.load(Ordering::Relaxed);
    Ok(json!({
        "device": { "id": d.id.to_string(), "name": d.name, "gate": d.gate },
        "stats": { "scans": stats.scans, "admitted": stats.admitted, "inside": stats.inside,
                   "by_result": stats.by_result },
        "last": stats.last_scan.as_ref().map(scan_view),
        "current": current,
        "result_shown_ms": s.shown_for.as_millis() as u64,
        "sync": sync_view(&gate.sync_status()?, refused, crate::unix_now_ms()),
    }))
}

/// A sync that succeeded this recently counts as online.
const ONLINE_WITHIN_MS: u64 = 30_000;

/// The sync state: `status` for the page to word (`online`, `offline`: the
/// node cannot be reached or answer now and a retry will do; `refused`: the
/// node refuses this device, someone must act, as the background sync last
/// found; `not_enrolled`; `not_synced_yet`; `stale`: no sync for a while, no
/// error), and the precise data for programs.
fn sync_view(s: &SyncStatus, refused: bool, now_ms: u64) -> Value {
    let age_ms = s.last_sync_ms.map(|t| now_ms.saturating_sub(t));
    let status = match (&s.server, &s.last_error, age_ms) {
        (None, _, _) => "not_enrolled",
        (Some(_), Some(_), _) if refused => "refused",
        (Some(_), Some(_), _) => "offline",
        (Some(_), None, None) => "not_synced_yet",
        (Some(_), None, Some(age)) if age <= ONLINE_WITHIN_MS => "online",
        (Some(_), None, Some(_)) => "stale",
    };
    json!({
        "status": status,
        "online": status == "online",
        "last_sync": s.last_sync_ms.map(format_ms),
        "last_sync_ms": s.last_sync_ms,
        "last_sync_age_ms": age_ms,
        "pending": s.pending,
        "error": s.last_error,
    })
}

/// Syncs in the background every `every`, with its own connection to the
/// database so a slow or absent server never holds up a scan. Failures back
/// off (doubling, at most a minute); a server set later is picked up.
pub fn spawn_sync_loop(db: std::path::PathBuf, every: Duration, scanned: Option<AppState>) {
    std::thread::spawn(move || {
        let mut wait = every;
        loop {
            std::thread::sleep(wait);
            let mut gate = match Gate::open(&db) {
                Ok(g) => g,
                Err(e) => {
                    tracing::error!(error = %e, "sync loop cannot open the database");
                    wait = (wait * 2).min(Duration::from_secs(60));
                    continue;
                }
            };
            if gate.sync_status().is_ok_and(|s| s.server.is_none()) {
                wait = every;
                continue;
            }
            let refused = match crate::sync::sync_once(&mut gate, crate::unix_now_ms()) {
                Ok(report) => {
                    if report.pushed + report.pulled > 0 {
                        tracing::info!(pushed = report.pushed, pulled = report.pulled, "synced");
                    }
                    wait = every;
                    false
                }
                Err(e) => {
                    tracing::warn!(error = %e, permanent = e.is_permanent(), "sync failed; retrying");
                    wait = (wait * 2).min(Duration::from_secs(60));
                    e.is_permanent()
                }
            };
            if let Some(state) = &scanned {
                state.sync_refused.store(refused, Ordering::Relaxed);
                state.scanned.notify_one();
            }
        }
    });
}

pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/state", get(get_state))
        .route("/api/check", post(post_check))
        .route("/api/events", get(events))
        .with_state(state)
}

async fn page() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-store")], Html(PAGE))
}

async fn get_state(State(s): State<AppState>) -> Result<axum::Json<Value>, ApiError> {
    let state = s.clone();
    Ok(axum::Json(
        s.with_gate(move |g| state_json(g, &state)).await?,
    ))
}

/// `{"code": "...", "direction": "entry"|"exit"}`. The body is read as bytes
/// and parsed here so a malformed request gets the same error shape.
async fn post_check(State(s): State<AppState>, body: Bytes) -> Result<axum::Json<Value>, ApiError> {
    #[derive(serde::Deserialize)]
    struct CheckRequest {
        code: String,
        #[serde(default)]
        direction: Option<Direction>,
    }
    let req: CheckRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "expected {{\"code\": \"...\", \"direction\": \"entry\"|\"exit\"}}: {e}"
        ))
    })?;
    let direction = req.direction.unwrap_or(Direction::Entry);
    let state = s.clone();
    let now_ms = crate::unix_now_ms();
    let answer =
        tokio::task::spawn_blocking(move || state.check_blocking(&req.code, direction, now_ms))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok(axum::Json(answer))
}

async fn events(
    State(s): State<AppState>,
) -> Sse<impl tokio_stream::Stream<Item = Result<Event, Infallible>>> {
    let stream = BroadcastStream::new(s.updates.subscribe())
        // A browser too slow to keep up skips to the newest; it is a display.
        .filter_map(|msg| msg.ok())
        .map(|data| Ok(Event::default().event("scan").data(data)));
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
}

/// How far the tail has read the log, in stamp order. The cursor never
/// passes what this device's clock can reach ([`Hlc::adoptable_until`], less
/// a minute for another process's clock): every scan made here later is
/// stamped above that, but may be stamped below another gate's record from
/// a clock far ahead, which would otherwise hide it from the page. Records
/// above the cursor already sent are remembered until the cursor passes them.
struct Cursor {
    at: Hlc,
    sent: HashMap<(DeviceId, u64), Hlc>,
}

impl Cursor {
    fn reach(now_ms: u64) -> Hlc {
        Hlc::adoptable_until(now_ms.saturating_sub(60_000))
    }

    /// A cursor past every record held: `within` gives the greatest stamp
    /// held up to a stamp, and `ahead` reads the records after a stamp. It
    /// starts at the newest record within reach, not at the reach itself:
    /// scans made here later may be stamped below the reach.
    fn start(
        now_ms: u64,
        within: impl FnOnce(Hlc) -> Hlc,
        ahead: impl FnOnce(Hlc) -> Vec<ScanRecord>,
    ) -> Cursor {
        let at = within(Cursor::reach(now_ms));
        let sent = ahead(at);
        Cursor {
            at,
            sent: sent.iter().map(|r| ((r.device_id, r.idx), r.hlc)).collect(),
        }
    }

    /// Of `records`, read after `self.at` in stamp order, those not sent yet;
    /// moves the cursor over those within reach.
    fn take(&mut self, records: Vec<ScanRecord>, now_ms: u64) -> Vec<ScanRecord> {
        let reach = Cursor::reach(now_ms);
        let mut fresh = Vec::new();
        for r in records {
            let key = (r.device_id, r.idx);
            let new = !self.sent.contains_key(&key);
            if r.hlc <= reach {
                self.at = self.at.max(r.hlc);
            } else if new {
                self.sent.insert(key, r.hlc);
            }
            if new {
                fresh.push(r);
            }
        }
        let at = self.at;
        self.sent.retain(|_, hlc| *hlc > at);
        fresh
    }
}

/// Tails the log and broadcasts every new record with fresh counts; the
/// newest made at this device becomes the result on screen.
async fn tail_log(state: AppState) {
    let start = state
        .with_gate(|g| {
            let cursor = Cursor::start(
                crate::unix_now_ms(),
                |reach| g.newest_stamp_until(reach).unwrap_or(reach),
                |after| g.log_after(after, 10_000).unwrap_or_default(),
            );
            Ok((g.device().id, cursor))
        })
        .await;
    let Ok((here, cursor)) = start else {
        tracing::error!("the station cannot read its database; the page will not follow scans");
        return;
    };
    let cursor = Arc::new(Mutex::new(cursor));
    loop {
        // Woken by a scan or a sync here; the timer catches other processes.
        let woken = tokio::select! {
            _ = state.scanned.notified() => true,
            _ = tokio::time::sleep(Duration::from_millis(250)) => false,
        };
        let (view, cursor) = (state.clone(), cursor.clone());
        let batch = state
            .with_gate(move |g| {
                let mut cursor = cursor.lock().unwrap_or_else(|p| p.into_inner());
                let read = g.log_after(cursor.at, 100)?;
                let records = cursor.take(read, crate::unix_now_ms());
                if let Some(r) = records.iter().rev().find(|r| r.device_id == here) {
                    let mut latest = view.latest_here.lock().unwrap_or_else(|p| p.into_inner());
                    *latest = Some((r.clone(), Instant::now()));
                }
                let snapshot = if records.is_empty() && !woken {
                    None
                } else {
                    Some(state_json(g, &view)?)
                };
                Ok((records, snapshot))
            })
            .await;
        let Ok((records, Some(snapshot))) = batch else {
            continue;
        };
        if records.is_empty() {
            // Counts or sync state changed without a new scan (a sync pulled records).
            let _ = state.updates.send(json!({ "state": snapshot }).to_string());
        }
        for r in &records {
            let msg = json!({ "scan": scan_view(r), "state": snapshot });
            // No browser listening is fine.
            let _ = state.updates.send(msg.to_string());
        }
    }
}

/// Serves the station on `listener` until `shutdown` completes.
pub async fn run(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let tail = tokio::spawn(tail_log(state.clone()));
    let served = axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await;
    tail.abort();
    served
}
