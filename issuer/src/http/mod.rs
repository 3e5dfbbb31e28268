//! The JSON API under `/api/v1`: one [`AppState`], one error shape
//! ([`error::ApiError`]), authentication as extractors ([`auth`]), a router
//! per resource. Handlers parse and check what comes in, then call the
//! storage from tokio's blocking pool.

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

use axum::Router;

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
    pub signer: Option<Arc<shared::code::Signer>>,
    /// How fast one address may hold and order; `None`: as fast as it likes.
    pub buyer_rate: Option<Arc<limit::RateLimit>>,
    /// Most places one address may hold of an event at once.
    pub max_held: Option<u32>,
    /// Throttles the log of refused webhooks.
    pub webhook_log: Arc<OncePerSecond>,
    /// Hands places' changes to live watchers ([`live`]).
    pub live: Arc<live::Live>,
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
            live: Default::default(),
        }
    }

    /// Says that places changed: live watchers hear of it at once.
    pub fn changed(&self) {
        self.live.changed();
    }

    /// Runs `f` on the storage, on a thread of the blocking pool.
    pub async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Storage) -> Result<T, crate::storage::StorageError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let storage = self.storage.clone();
        tokio::task::spawn_blocking(move || f(&*storage))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(ApiError::from)
    }
}

/// Every route of the API.
pub fn app(state: AppState) -> Router {
    Router::new()
        .nest(
            "/api/v1",
            catalogue::router()
                .merge(holds::router())
                .merge(orders::router())
                .merge(live::router())
                .merge(feed::router()),
        )
        .fallback(|| async { ApiError::not_found("no such path") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this path does not take that method",
            )
        })
        .with_state(state)
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
