//! gate-sync: merges the scan logs of every gate and flags tickets admitted
//! twice.
//!
//! - [`store::Store`] keeps the grow-only set of records in SQLite and in
//!   memory as a [`shared::ScanLog`], the CRDT every replica agrees on.
//! - [`http`] serves the API: devices push their own records and pull what
//!   they lack by version vector; duplicates and stats are derived views.
//! - [`net`] guards connections: idle and lifetime limits, and at most so
//!   many per address, so silent sockets cannot starve real gates.
//! - [`peers`] runs anti-entropy with other nodes: pull what we lack by
//!   version vector, send what they lack. Convergence comes from the CRDT
//!   alone; there is no leader and no consensus.
//!

pub mod counts;
pub mod http;
pub mod issuer;
pub mod net;
pub mod peers;
pub mod store;
pub mod tls;

use std::future::Future;

pub use http::AppState;

/// Serves gate-sync on `listener` until `shutdown` completes.
pub async fn run(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    run_guarded(net::Guarded::new(listener), state, shutdown).await
}

/// [`run`] on a listener with limits of its own.
pub async fn run_guarded(
    listener: net::Guarded,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    net::serve(listener, http::app(state), shutdown).await
}

/// Serves `state` on `addr` (port 0 picks one) from a thread of its own, for
/// embedding a node in another program, a test or a benchmark; returns the
/// address it listens on. The node runs until the process ends.
pub fn serve_in_background(state: AppState, addr: &str) -> std::io::Result<std::net::SocketAddr> {
    serve_in_background_idle(state, addr, net::IDLE)
}

/// [`serve_in_background`] over TLS with `cert`.
pub fn serve_in_background_tls(
    state: AppState,
    addr: &str,
    cert: &tls::NodeCert,
) -> std::io::Result<std::net::SocketAddr> {
    let config = cert.server_config().map_err(std::io::Error::other)?;
    background(state, addr, move |l| net::Guarded::new(l).with_tls(config))
}

/// [`serve_in_background`], closing connections idle for `idle`.
pub fn serve_in_background_idle(
    state: AppState,
    addr: &str,
    idle: std::time::Duration,
) -> std::io::Result<std::net::SocketAddr> {
    background(state, addr, move |l| net::Guarded::with_idle(l, idle))
}

fn background(
    state: AppState,
    addr: &str,
    guard: impl FnOnce(tokio::net::TcpListener) -> net::Guarded + Send + 'static,
) -> std::io::Result<std::net::SocketAddr> {
    let runtime = runtime()?;
    let listener = runtime.block_on(listen(addr))?;
    let local = listener.local_addr()?;
    std::thread::spawn(move || {
        runtime.block_on(async move {
            if let Err(e) = run_guarded(guard(listener), state, std::future::pending()).await {
                tracing::error!(error = %e, "gate-sync stopped");
            }
        });
    });
    Ok(local)
}

/// Listens on `addr` with a backlog of 1024. The usual 128 (the standard
/// library's, and tokio's) drops the connects of a venue's gates syncing at
/// once beyond the 128th, and each of those waits a second for its retry.
pub async fn listen(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    let mut last = None;
    for addr in tokio::net::lookup_host(addr).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(addr) {
            Ok(()) => return socket.listen(1024),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to listen on")
    }))
}

/// The node's runtime: two workers for the two cores of a venue box, and
/// four threads for the store's work. Requests beyond those wait their turn,
/// first come first served, instead of each taking a thread of its own: 200
/// gates pulling at once would otherwise start 200 threads that all contend
/// for two cores. (With 8 threads, 2 benchmark runs of 9 had a pull p99
/// over 50 ms; with 4, 1 of 10, and the typical p99 was steadier.)
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    keep_freed_memory();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .enable_all()
        .build()
}

/// Keeps memory freed by the allocator for the next request instead of
/// handing it back to the system at once. A pull answer or a push body is
/// half a megabyte; with glibc's defaults each came from a fresh mapping
/// that the kernel zeroed page by page and took back when freed, which was
/// a third of the node's time under 200 pulls at once. The memory kept is
/// at most what the node held at its busiest.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is sound to call
    // at any time, from any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
}

/// Creates `path` readable by its owner only, or makes it so if it exists
/// (SQLite gives its journal files the database file's mode).
///
/// A file that exists is never opened here, only its mode set: a SQLite
/// database's locks belong to the process, and closing any descriptor of
/// the file would drop those of the connections this process has open
/// (another program's connection would then think itself the last, and
/// delete the write-ahead log under them).
pub fn private_file(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let private = || std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    match std::fs::symlink_metadata(path) {
        Ok(_) => private(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let made = std::fs::OpenOptions::new()
                .create_new(true)
                .append(true)
                .mode(0o600)
                .open(path);
            match made {
                Ok(_) => Ok(()),
                // Made meanwhile by another process: its mode is set.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => private(),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// The wall clock, in unix milliseconds.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
