//! Connections from a network that may be hostile. Every connection is
//! closed when it has moved no byte for [`IDLE`] (a silent socket, a
//! half-sent request, an idle keep-alive) and at the latest after
//! [`LIFETIME`]; one address holds at most [`PER_ADDR`] connections, and the
//! node at most [`MAX_CONNS`], well under the usual limit of 1,024 open
//! files. Connections past a limit are closed at once, with a log line.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

/// A connection that moves no byte for this long is closed.
pub const IDLE: Duration = Duration::from_secs(20);
/// A request's headers must arrive within this, however slowly they trickle.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// No connection lives longer than this; a client simply reconnects.
pub const LIFETIME: Duration = Duration::from_secs(600);
/// Most connections open at once from one address, by default
/// (`gate-sync serve --conns-per-address`).
pub const PER_ADDR: usize = 64;
/// Most connections open at once.
pub const MAX_CONNS: usize = 900;

type Open = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// A TCP listener that applies the limits above, and TLS when given a
/// configuration.
pub struct Guarded {
    inner: TcpListener,
    open: Open,
    idle: Duration,
    header_timeout: Duration,
    per_addr: usize,
    max_conns: usize,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// When a refusal was last logged: one line per second at most.
    last_warned: Option<Instant>,
}

impl Guarded {
    pub fn new(inner: TcpListener) -> Guarded {
        Guarded::with_idle(inner, IDLE)
    }

    /// With another idle limit (tests); the headers' deadline is then at
    /// most four times it.
    pub fn with_idle(inner: TcpListener, idle: Duration) -> Guarded {
        Guarded {
            inner,
            open: Default::default(),
            idle,
            header_timeout: HEADER_TIMEOUT.min(idle.saturating_mul(4)),
            per_addr: PER_ADDR,
            max_conns: MAX_CONNS,
            tls: None,
            last_warned: None,
        }
    }

    /// Takes at most `n` connections from one address (gates behind one
    /// NAT share an address).
    pub fn with_per_addr(mut self, n: usize) -> Guarded {
        self.per_addr = n.max(1);
        self
    }

    /// Takes at most `n` connections at once (a server whose clients stay
    /// connected, such as the issuer's live availability, needs more).
    pub fn with_max_conns(mut self, n: usize) -> Guarded {
        self.max_conns = n.max(1);
        self
    }

    /// Serves TLS with `config` on every connection.
    pub fn with_tls(mut self, config: std::sync::Arc<rustls::ServerConfig>) -> Guarded {
        self.tls = Some(tokio_rustls::TlsAcceptor::from(config));
        self
    }

    /// How long a request's headers may take to arrive.
    pub fn header_timeout(&self) -> Duration {
        self.header_timeout
    }

    /// Takes a place for a connection from `ip`, unless a limit is reached.
    fn admit(&self, ip: IpAddr) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = open.values().sum();
        let mine = open.entry(ip).or_insert(0);
        if total >= self.max_conns || *mine >= self.per_addr {
            return None;
        }
        *mine += 1;
        Some(Slot {
            open: self.open.clone(),
            ip,
        })
    }
}

/// A connection's place; given back when the connection closes.
struct Slot {
    open: Open,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

impl Listener for Guarded {
    type Io = Timed;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Timed, SocketAddr) {
        loop {
            let (stream, addr) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before
                    // it was taken: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(slot) = self.admit(addr.ip()) else {
                let now = Instant::now();
                if self
                    .last_warned
                    .is_none_or(|t| now - t >= Duration::from_secs(1))
                {
                    self.last_warned = Some(now);
                    tracing::warn!(peer = %addr, per_addr = self.per_addr, max = self.max_conns,
                        "connection refused: too many open connections");
                }
                continue;
            };
            let _ = stream.set_nodelay(true);
            // The handshake runs on the connection's own task, at its
            // first read: a slow client never holds up the others.
            let conn = match &self.tls {
                Some(acceptor) => Conn::Handshake(Box::new(acceptor.accept(stream))),
                None => Conn::Plain(stream),
            };
            return (Timed::new(conn, self.idle, slot), addr);
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// The client's address, for handlers and the refusal log.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

/// A connection, plain or TLS (its handshake done on first use).
pub enum Conn {
    Plain(TcpStream),
    Handshake(Box<tokio_rustls::Accept<TcpStream>>),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Failed,
}

impl Conn {
    /// Finishes the handshake, if one is under way.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if let Conn::Handshake(accept) = self {
            match std::pin::Pin::new(accept.as_mut()).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(tls)) => *self = Conn::Tls(Box::new(tls)),
                Poll::Ready(Err(e)) => {
                    *self = Conn::Failed;
                    return Poll::Ready(Err(e));
                }
            }
        }
        match self {
            Conn::Failed => Poll::Ready(Err(std::io::Error::other("TLS handshake failed"))),
            _ => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_ready(cx))?;
        match this {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            _ => Poll::Ready(Err(std::io::Error::other("no connection"))),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_ready(cx))?;
        match this {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            _ => Poll::Ready(Err(std::io::Error::other("no connection"))),
        }
    }

    /// Vectored, so that hyper writes a response's head and body without
    /// first copying the body into a buffer of its own.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_ready(cx))?;
        match this {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            _ => Poll::Ready(Err(std::io::Error::other("no connection"))),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            _ => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            _ => Poll::Ready(Ok(())),
        }
    }
}

/// A connection that fails with `TimedOut` once it has moved no byte for
/// its idle limit, or has lived its lifetime.
pub struct Timed {
    inner: Conn,
    idle: Duration,
    idle_timer: Pin<Box<Sleep>>,
    /// When a byte last moved; the timer is moved there only when the
    /// connection waits, not on every read and write.
    last_progress: Instant,
    end: Pin<Box<Sleep>>,
    _slot: Slot,
}

impl Timed {
    fn new(inner: Conn, idle: Duration, slot: Slot) -> Timed {
        Timed {
            inner,
            idle,
            idle_timer: Box::pin(tokio::time::sleep(idle)),
            last_progress: Instant::now(),
            end: Box::pin(tokio::time::sleep(LIFETIME)),
            _slot: slot,
        }
    }

    fn progressed(&mut self) {
        self.last_progress = Instant::now();
    }

    /// Whether a limit has passed (registering for the wake-up when not).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = self.last_progress + self.idle;
        if self.idle_timer.deadline() != deadline {
            self.idle_timer.as_mut().reset(deadline);
        }
        self.idle_timer.as_mut().poll(cx).is_ready() || self.end.as_mut().poll(cx).is_ready()
    }
}

impl Timed {
    /// What a write came to: progress moves the idle limit, and a write
    /// that waits past a limit fails.
    fn wrote(
        &mut self,
        written: Poll<std::io::Result<usize>>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<usize>> {
        match written {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.progressed();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            other => other,
        }
    }
}

fn timed_out() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "connection idle or too old")
}

impl AsyncRead for Timed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.progressed();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for Timed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(written, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(written, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(timed_out())),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Serves `app` on `listener`, with its limits, until `shutdown` completes:
/// each connection is served by hyper with a deadline for a request's
/// headers (a client sending them a byte at a time keeps no connection for
/// long), and the app is told who the client is (`ConnectInfo` of a
/// [`PeerAddr`] and of a `SocketAddr`). Any axum service may be served
/// this way; the issuer's is.
pub async fn serve(
    mut listener: Guarded,
    app: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let header_timeout = listener.header_timeout();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (io, addr) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => return Ok(()),
        };
        let app = app
            .clone()
            .layer(axum::Extension(axum::extract::ConnectInfo(PeerAddr(addr))))
            .layer(axum::Extension(axum::extract::ConnectInfo(addr)));
        let service = hyper_util::service::TowerToHyperService::new(app);
        tokio::spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout);
            let _ = http
                .serve_connection(hyper_util::rt::TokioIo::new(io), service)
                .with_upgrades()
                .await;
        });
    }
}
