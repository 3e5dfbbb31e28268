//! gate-sync: merges the scan logs of every gate and flags tickets admitted
//! twice.
//!
//! - [`store::Store`] keeps the grow-only set of records in SQLite and in
//!   memory as a [`shared::ScanLog`], the CRDT every replica agrees on.
//! - [`http`] serves the API: devices push their own records and pull what
//!   they lack by version vector; duplicates and stats are derived views.
//! - [`peers`] runs anti-entropy with other nodes: pull what we lack by
//!   version vector, send what they lack. Convergence comes from the CRDT
//!   alone; there is no leader and no consensus.
//!

pub mod http;
pub mod peers;
pub mod store;

use std::future::Future;

pub use http::AppState;

/// Serves gate-sync on `listener` until `shutdown` completes.
pub async fn run(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, http::app(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serves `state` on `addr` (port 0 picks one) from a thread of its own, for
/// embedding a node in another program, a test or a benchmark; returns the
/// address it listens on. The node runs until the process ends.
pub fn serve_in_background(state: AppState, addr: &str) -> std::io::Result<std::net::SocketAddr> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Tokio listens with a backlog of 1024, as `serve` does; the standard
    // library's 128 would drop the connects of a venue's gates syncing at
    // once, and each would wait a second for its retry.
    let listener = runtime.block_on(tokio::net::TcpListener::bind(addr))?;
    let local = listener.local_addr()?;
    std::thread::spawn(move || {
        runtime.block_on(async move {
            if let Err(e) = run(listener, state, std::future::pending()).await {
                tracing::error!(error = %e, "gate-sync stopped");
            }
        });
    });
    Ok(local)
}

/// The wall clock, in unix milliseconds.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
