//! The JSON API under `/api/v1`: one [`AppState`], one error shape
//! ([`error::ApiError`]), authentication as extractors ([`auth`]), a router
//! per resource. Handlers parse and check what comes in, then call the
//! storage: the buying path's changes are awaited (no thread waits on
//! them), the rest run on tokio's blocking pool.
//!
//! The OpenAPI document (`GET /api/v1/openapi.json`) is generated from the
//! code: each handler carries its `#[utoipa::path]` (path, parameters,
//! body, every answer), each type its `ToSchema`, and the routers are
//! built with `utoipa_axum`'s `routes!`, which takes a route's path and
//! methods from that annotation: a route cannot be served undocumented.

pub mod auth;
pub mod body;
pub mod catalogue;
pub mod error;
pub mod feed;
pub mod holds;
pub mod limit;
pub mod live;
pub mod orders;

use std::future::Future;
use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::{Extension, Router};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::payments::Provider;
use crate::storage::Storage;
pub use error::ApiError;

/// What every handler shares; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub storage: Arc<dyn Storage>,
    /// How long a hold keeps its places.
    pub hold_ttl_ms: u64,
    pub payments: Arc<dyn Provider>,
    /// The secret webhooks are signed with; `None`: no webhooks taken.
    pub webhook_secret: Option<String>,
    /// Makes each order's link secret ([`orders::link_secret`]).
    pub link_key: [u8; 32],
    /// Signs paid orders' tickets: the data directory's active key.
    pub signer: Option<Arc<crate::keys::ActiveSigner>>,
    /// How fast one address may hold and order; `None`: as fast as it likes.
    pub buyer_rate: Option<Arc<limit::RateLimit>>,
    /// Most places one address may hold of an event at once.
    pub max_held: Option<u32>,
    /// Throttles the log of refused webhooks.
    pub webhook_log: Arc<OncePerSecond>,
    /// Event pages as everyone sees them, drawn once a second at most.
    pub pages: Arc<PageCache>,
    /// Storage calls under way at once ([`AppState::db`]).
    pub db_turns: Arc<tokio::sync::Semaphore>,
    /// Calls to the payment provider under way at once: each holds a
    /// thread while it waits for the provider.
    pub payment_turns: Arc<tokio::sync::Semaphore>,
    /// Hands places' changes to live watchers ([`live`]).
    pub live: Arc<live::Live>,
}

/// A number written as 1 to 19 decimal digits and nothing else (no sign,
/// no space): how ids and cursors are written in queries. 19 digits hold
/// every id, which SQLite keeps as a signed 64-bit integer.
pub(crate) fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Rendered pages by event, kept for a second; forgotten at once when this
/// process changes the event (another process's change shows within the
/// second).
#[derive(Default)]
pub struct PageCache(
    std::sync::Mutex<std::collections::HashMap<u64, (std::time::Instant, axum::body::Bytes)>>,
);

impl PageCache {
    const FOR: std::time::Duration = std::time::Duration::from_secs(1);
    const MOST: usize = 10_000;

    pub fn get(&self, id: u64) -> Option<axum::body::Bytes> {
        let pages = self.0.lock().unwrap_or_else(|p| p.into_inner());
        pages
            .get(&id)
            .filter(|(at, _)| at.elapsed() < Self::FOR)
            .map(|(_, body)| body.clone())
    }

    pub fn put(&self, id: u64, body: axum::body::Bytes) {
        let mut pages = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if pages.len() >= Self::MOST {
            pages.retain(|_, (at, _)| at.elapsed() < Self::FOR);
        }
        if pages.len() < Self::MOST {
            pages.insert(id, (std::time::Instant::now(), body));
        }
    }

    pub fn forget(&self, id: u64) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }
}

/// Lets something happen at most once a second (a log line under a flood).
#[derive(Default)]
pub struct OncePerSecond(std::sync::Mutex<Option<std::time::Instant>>);

impl OncePerSecond {
    pub fn allow(&self) -> bool {
        let mut last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < std::time::Duration::from_secs(1)) {
            return false;
        }
        *last = Some(now);
        true
    }
}

/// Storage calls under way at once.
const DB_TURNS: usize = 64;
/// Payment provider calls under way at once.
const PAYMENT_TURNS: usize = 128;

/// How long a hold keeps its places, unless told otherwise: 10 minutes.
pub const HOLD_TTL_MS: u64 = 10 * 60 * 1000;

impl AppState {
    pub fn new(
        storage: Arc<dyn Storage>,
        payments: Arc<dyn Provider>,
        webhook_secret: Option<String>,
        link_key: [u8; 32],
    ) -> AppState {
        AppState {
            storage,
            hold_ttl_ms: HOLD_TTL_MS,
            payments,
            webhook_secret,
            link_key,
            signer: None,
            buyer_rate: None,
            max_held: None,
            webhook_log: Default::default(),
            pages: Default::default(),
            db_turns: Arc::new(tokio::sync::Semaphore::new(DB_TURNS)),
            payment_turns: Arc::new(tokio::sync::Semaphore::new(PAYMENT_TURNS)),
            live: Default::default(),
        }
    }

    /// Says that places changed: live watchers hear of it at once, those
    /// of other processes on the same database too.
    pub fn changed(&self) {
        self.live.changed();
        self.storage.tell_others();
    }

    /// Runs `f` on the storage, on a thread of the blocking pool.
    pub async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Storage) -> Result<T, crate::storage::StorageError> + Send + 'static,
    ) -> Result<T, ApiError> {
        // A few threads at a time: a crowd waits here, cheaply, rather
        // than as blocking threads queued on the database.
        let _turn = self
            .db_turns
            .acquire()
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let storage = self.storage.clone();
        tokio::task::spawn_blocking(move || f(&*storage))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(ApiError::from)
    }
}

/// What the document says beyond the handlers' own annotations: where the
/// API is, its tags, how an organizer authenticates, the error shape.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "issuer booking API",
        description = "Venues, events and ticket categories; holds, orders and payment; \
                       the keyset and revoked tickets gates need. Every refusal is \
                       `{\"error\": {\"code\", \"message\"}}`."
    ),
    servers((url = "/api/v1", description = "This server")),
    modifiers(&OrganizerToken),
    tags(
        (name = "catalogue", description = "Venues, events and ticket categories: organizers make them, everyone browses them"),
        (name = "holds", description = "Places held for a while, and what an event has left"),
        (name = "orders", description = "Orders, payment, guest links, ticket pictures"),
        (name = "feed", description = "What an organizer's gates need, and its sales"),
        (name = "live", description = "Places' changes as they happen (WebSocket)"),
        (name = "meta", description = "This document"),
    ),
    components(
        // The live feed's messages: no operation's body, named in its text.
        schemas(error::ErrorBody, crate::storage::PlaceChange),
        responses(
            error::Unauthorized,
            error::NotJson,
            error::TooLarge,
            error::RateLimited,
            error::Internal
        )
    )
)]
struct ApiDoc;

/// The security scheme `organizer`: an organizer's API token as a bearer
/// token (`issuer organizers add` makes one).
struct OrganizerToken;

impl utoipa::Modify for OrganizerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "organizer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An organizer's API token: `Authorization: Bearer org_...`",
                    ))
                    .build(),
            ),
        );
    }
}

/// Every route of the API (paths relative to `/api/v1`) with its
/// document.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(openapi_json))
        .merge(catalogue::router())
        .merge(holds::router())
        .merge(orders::router())
        .merge(live::router())
        .merge(feed::router())
}

/// The OpenAPI document as served: serialized once, when the app is built.
#[derive(Clone)]
struct Document(axum::body::Bytes);

/// This OpenAPI document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", body = Object))
)]
async fn openapi_json(Extension(Document(json)): Extension<Document>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], json)
}

/// The document as served. utoipa 5 writes a link's fields as they are
/// named in Rust (`operation_id`); OpenAPI names them `operationId`,
/// `operationRef` and `requestBody`, and tools ignore a link without them.
fn document_json(document: &utoipa::openapi::OpenApi) -> Vec<u8> {
    use serde_json::Value;
    // Built from types and annotations only: it cannot fail to serialize.
    let mut json = serde_json::to_value(document).unwrap_or_default();
    let links = json
        .get_mut("paths")
        .and_then(Value::as_object_mut)
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut())
        .filter_map(|operation| operation.get_mut("responses")?.as_object_mut())
        .flat_map(|responses| responses.values_mut())
        .filter_map(|response| response.get_mut("links")?.as_object_mut())
        .flat_map(|links| links.values_mut())
        .filter_map(Value::as_object_mut);
    for link in links {
        for (rust, openapi) in [
            ("operation_id", "operationId"),
            ("operation_ref", "operationRef"),
            ("request_body", "requestBody"),
        ] {
            if let Some(v) = link.remove(rust) {
                link.insert(openapi.into(), v);
            }
        }
    }
    serde_json::to_vec(&json).unwrap_or_default()
}

/// Every route of the API, and its OpenAPI document at
/// `/api/v1/openapi.json`.
pub fn app(state: AppState) -> Router {
    let (api, document) = routes().split_for_parts();
    let json = document_json(&document);
    Router::new()
        .nest(
            "/api/v1",
            api.layer(Extension(Document(axum::body::Bytes::from(json)))),
        )
        .fallback(|| async { ApiError::not_found("no such path") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this path does not take that method",
            )
        })
        .layer(axum::middleware::map_response(in_error_shape))
        .with_state(state)
}

/// Puts a refusal made outside the handlers (an extractor's: a path that
/// is not UTF-8, say) in the one error shape, keeping its status, headers
/// and words.
async fn in_error_shape(response: axum::response::Response) -> axum::response::Response {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse as _;
    let status = response.status();
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    if json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let words = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let mut shaped = ApiError::new(status, code, words).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            shaped.headers_mut().insert(name.clone(), value.clone());
        }
    }
    shaped
}

/// Serves the API on `listener` until `shutdown` completes, with the
/// limits of gate-sync's guarded listener: connections idle for `idle`
/// closed (a request's headers must come within 10 s however slowly they
/// trickle), connections open for 10 minutes closed (a live watcher
/// reconnects), at most `limits.per_address` from one address and
/// `limits.total` in all. The live feed's fan-out runs beside it.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let guarded = gate_sync::net::Guarded::with_idle(listener, limits.idle)
        .with_per_addr(limits.per_address)
        .with_max_conns(limits.total);
    let fan_out = tokio::spawn(state.live.clone().run(state.storage.clone()));
    let served = gate_sync::net::serve(guarded, app(state), shutdown).await;
    fan_out.abort();
    served
}

/// What the listener allows.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// A connection that moves no byte for this long is closed.
    pub idle: std::time::Duration,
    /// Most connections open at once from one address.
    pub per_address: usize,
    /// Most connections open at once.
    pub total: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            idle: gate_sync::net::IDLE,
            per_address: gate_sync::net::PER_ADDR,
            total: 10_000,
        }
    }
}
