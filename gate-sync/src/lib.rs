//! gate-sync: merges the scan logs of every gate and flags tickets admitted
//! twice.
//!
//! - [`store::Store`] keeps the grow-only set of records in SQLite and in
//!   memory as a [`shared::ScanLog`], the CRDT every replica agrees on.
//! - [`http`] serves the API: devices push their own records and pull what
//!   they lack by version vector; duplicates and stats are derived views.
//!
//! Not built yet (see the issue): device enrollment and authentication,
//! peer-to-peer anti-entropy between nodes, keyset and revocation
//! distribution, the dashboard page, and the scanner's sync loop.

pub mod http;
pub mod store;

use std::future::Future;

/// Serves gate-sync on `listener` until `shutdown` completes.
pub async fn run(
    listener: tokio::net::TcpListener,
    store: store::Store,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, http::app(store))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The wall clock, in unix milliseconds.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
