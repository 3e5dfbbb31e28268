//! Live availability: `GET /events/{id}/live` is a WebSocket that tells a
//! watcher the event's places (a snapshot), then every change of them
//! (held, released, expired, sold, refunded), each with the event's next
//! change number. A watcher that reconnects with `?since=N` (the last number
//! it saw) is sent what came after N, or a new snapshot when that is no
//! longer kept: it never misses a change.
//!
//! Changes are written by the storage in the transaction that makes them;
//! one task per process ([`Live::run`]) reads them in order and hands each
//! to the event's watchers, serialized once. It looks when this process
//! changed something, and four times a second for other processes' changes.
//! Once a second it has the storage tell of holds whose time passed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse as _, Response};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, broadcast};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::holds::now_ms;
use super::{ApiError, AppState};
use crate::storage::{Availability, PlaceChange, Storage, StorageError};

/// Most changes a reconnecting watcher is sent to catch up; further
/// behind, it gets a snapshot.
const CATCH_UP: usize = 1000;
/// Changes kept for a slow watcher before it must catch up from storage.
const BUFFERED: usize = 512;
/// A watcher that takes longer than this to take a message is let go.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of one message a watcher may send (it has nothing to say).
const MAX_INCOMING: usize = 1024;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(live))
}

/// What a watcher is sent, as JSON text.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Told<'a> {
    Snapshot(&'a Availability),
    Change(&'a PlaceChange),
}

/// A change as sent: its number and its JSON.
struct Sent {
    seq: u64,
    text: Utf8Bytes,
}

fn text(told: &Told<'_>) -> Utf8Bytes {
    // Plain structs of strings and numbers: serializing cannot fail.
    Utf8Bytes::from(serde_json::to_string(told).unwrap_or_default())
}

/// The changes fanned out to this process's watchers.
pub struct Live {
    events: Mutex<HashMap<u64, broadcast::Sender<Arc<Sent>>>>,
    /// Woken by changes made here, and by other processes' word of theirs.
    poke: Arc<Notify>,
    /// How often a watcher is pinged (within the connection's idle limit).
    ping_every: Duration,
}

impl Default for Live {
    fn default() -> Live {
        Live::pinging_every(Duration::from_secs(10))
    }
}

impl Live {
    /// Pinging watchers this often, so that a quiet one stays connected.
    pub fn pinging_every(ping_every: Duration) -> Live {
        Live {
            events: Mutex::default(),
            poke: Arc::new(Notify::new()),
            ping_every: ping_every.max(Duration::from_millis(100)),
        }
    }

    /// Says that places changed here: the fan-out looks at once.
    pub fn changed(&self) {
        self.poke.notify_one();
    }

    fn subscribe(&self, event_id: u64) -> broadcast::Receiver<Arc<Sent>> {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        events
            .entry(event_id)
            .or_insert_with(|| broadcast::channel(BUFFERED).0)
            .subscribe()
    }

    fn publish(&self, change: &PlaceChange) {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let Some(sender) = events.get(&change.event_id) else {
            return;
        };
        if sender.receiver_count() == 0 {
            events.remove(&change.event_id);
            return;
        }
        let _ = sender.send(Arc::new(Sent {
            seq: change.seq,
            text: text(&Told::Change(change)),
        }));
    }

    /// Fans changes out until the process ends; should the fan-out fail
    /// (a panic), it starts again a second later, and watchers catch up by
    /// their numbers.
    pub async fn run(self: Arc<Self>, storage: Arc<dyn Storage>) {
        storage.wake_on_others(self.poke.clone());
        loop {
            let fan_out = tokio::spawn(self.clone().fan_out(storage.clone()));
            if let Err(e) = fan_out.await {
                tracing::error!(error = %e, "live feed: the fan-out stopped; starting it again");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn fan_out(self: Arc<Self>, storage: Arc<dyn Storage>) {
        let mut cursor = loop {
            let s = storage.clone();
            match tokio::task::spawn_blocking(move || s.change_cursor()).await {
                Ok(Ok(c)) => break c,
                Ok(Err(e)) => tracing::warn!(error = %e, "live feed: reading the newest change"),
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        let mut announced = tokio::time::Instant::now();
        let warn = super::OncePerSecond::default();
        loop {
            tokio::select! {
                () = self.poke.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            if announced.elapsed() >= Duration::from_secs(1) {
                announced = tokio::time::Instant::now();
                let s = storage.clone();
                if let Ok(Err(e)) =
                    tokio::task::spawn_blocking(move || s.announce_expired(now_ms())).await
                    && warn.allow()
                {
                    tracing::warn!(error = %e, "live feed: telling of expired holds");
                }
            }
            loop {
                let s = storage.clone();
                let got = tokio::task::spawn_blocking(move || s.changes_after(cursor, CATCH_UP))
                    .await
                    .map_err(|e| StorageError::Backend(e.to_string()))
                    .and_then(|r| r);
                match got {
                    Ok((next, changes)) => {
                        cursor = next;
                        for change in &changes {
                            self.publish(change);
                        }
                        if changes.len() < CATCH_UP {
                            break;
                        }
                    }
                    Err(e) => {
                        if warn.allow() {
                            tracing::warn!(error = %e, "live feed: reading changes");
                        }
                        break;
                    }
                }
            }
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct LiveQuery {
    /// The number of the last change the watcher saw: what came after it
    /// is sent, or a snapshot when that is no longer kept.
    #[param(format = "uint64", maximum = 18_446_744_073_709_551_615_u64)]
    since: Option<u64>,
}

/// An event's places as they change (WebSocket).
///
/// A snapshot, then every change as it happens. Each message is JSON text:
/// `{"type": "snapshot"}` with the fields of `Availability`, or
/// `{"type": "change"}` with those of `PlaceChange`.
#[utoipa::path(
    get,
    path = "/events/{id}/live",
    tag = "live",
    params(("id" = u64, Path, description = "The event's id"), LiveQuery),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol: the messages follow"),
        (status = 400, description = "`since` is not a number", body = ErrorBody),
        (status = 404, description = "No such event (drafts are not shown)", body = ErrorBody),
        (status = 426, description = "Not a WebSocket upgrade request", body = ErrorBody),
        (status = 500, response = super::error::Internal),
    )
)]
async fn live(
    State(s): State<AppState>,
    Path(raw): Path<String>,
    query: Result<Query<LiveQuery>, axum::extract::rejection::QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let id = super::catalogue::id(&raw, "event")?;
    let Query(query) = query.map_err(|_| {
        ApiError::bad_request("since is the number of the last change seen (0 or more)")
    })?;
    // The event must be one a buyer may see (drafts are not).
    s.db(move |db| db.event(id, None)).await?;
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(e) => {
            // 426 says which protocol to upgrade to (RFC 9110).
            let mut refused = ApiError::new(
                axum::http::StatusCode::UPGRADE_REQUIRED,
                "websocket_required",
                format!("this is a WebSocket: {e}"),
            )
            .into_response();
            let headers = refused.headers_mut();
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            return Ok(refused);
        }
    };
    // Small buffers: a watcher mostly waits, and there may be thousands.
    Ok(upgrade
        .read_buffer_size(4 << 10)
        .write_buffer_size(0)
        .max_message_size(MAX_INCOMING)
        .max_frame_size(MAX_INCOMING)
        .on_upgrade(move |socket| watch(s, id, query.since, socket)))
}

/// What brings a watcher up to date from the storage: the changes after
/// `since` if they are all kept, else a snapshot; and the number of the
/// last change they include.
async fn catch_up(
    s: &AppState,
    id: u64,
    since: Option<u64>,
) -> Result<(u64, Vec<Utf8Bytes>), ApiError> {
    // `since=0` (nothing seen) is a snapshot: a watcher starts from one.
    if let Some(n) = since.filter(|n| *n > 0) {
        // From the change the watcher saw itself, so that a number this
        // event never reached (another shop's, say) is caught.
        let changes = s.db(move |db| db.changes(id, n - 1, CATCH_UP + 1)).await?;
        let seen = changes.first().is_some_and(|first| first.seq == n);
        if seen && changes.len() <= CATCH_UP {
            let last = changes.last().map_or(n, |c| c.seq);
            let texts = changes[1..]
                .iter()
                .map(|c| text(&Told::Change(c)))
                .collect();
            return Ok((last, texts));
        }
    }
    let snapshot = s.db(move |db| db.availability(id, now_ms())).await?;
    Ok((snapshot.seq, vec![text(&Told::Snapshot(&snapshot))]))
}

async fn send(socket: &mut WebSocket, message: Message) -> bool {
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, socket.send(message)).await,
        Ok(Ok(()))
    )
}

async fn send_all(socket: &mut WebSocket, texts: Vec<Utf8Bytes>) -> bool {
    for t in texts {
        if !send(socket, Message::Text(t)).await {
            return false;
        }
    }
    true
}

async fn watch(s: AppState, id: u64, since: Option<u64>, mut socket: WebSocket) {
    let live = s.live.clone();
    // Subscribed before catching up: whatever is made meanwhile comes
    // through the channel, and what the catch-up had is skipped there.
    let mut changes = live.subscribe(id);
    let mut last = match catch_up(&s, id, since).await {
        Ok((last, texts)) => {
            if !send_all(&mut socket, texts).await {
                return;
            }
            last
        }
        Err(_) => {
            send(&mut socket, Message::Close(None)).await;
            return;
        }
    };
    let mut ping = tokio::time::interval(live.ping_every);
    ping.tick().await;
    // A watcher answers pings (browsers do by themselves); one that has
    // said nothing for two of them is gone, or is keeping a connection it
    // does not read: let go either way.
    let mut heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            got = changes.recv() => {
                let texts = match got {
                    Ok(sent) if sent.seq <= last => continue,
                    Ok(sent) if sent.seq == last + 1 => {
                        last = sent.seq;
                        vec![sent.text.clone()]
                    }
                    // A gap (changes made elsewhere, or this watcher fell
                    // behind the channel): from the storage.
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        match catch_up(&s, id, Some(last)).await {
                            Ok((now_last, texts)) => {
                                last = now_last;
                                texts
                            }
                            Err(_) => break,
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                if !send_all(&mut socket, texts).await {
                    break;
                }
            }
            incoming = socket.recv() => match incoming {
                // Pings are answered by the socket itself; the watcher has
                // nothing else to say but pongs.
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => heard = tokio::time::Instant::now(),
            },
            _ = ping.tick() => {
                if heard.elapsed() > live.ping_every * 2 + Duration::from_secs(1) {
                    break;
                }
                if !send(&mut socket, Message::Ping(Default::default())).await {
                    break;
                }
            }
        }
    }
}
