//! One connection's life: pick the protocol, let hyper serve it, and close it
//! when a timeout fires or the server shuts down.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::server::conn::http1;

#[cfg(feature = "http2")]
use crate::io::rewind::Rewind;
use crate::io::stream::Stream;
use crate::runtime::timer::{Sleep, Timer};
use crate::runtime::Pool;
#[cfg(feature = "http2")]
use crate::server::service::Http2Service;
use crate::server::service::{ConnectionInfo, HyperService, SharedService};
use crate::server::shutdown::{ConnectionGuard, Signal};
use crate::server::socket::Conn;
use crate::server::stats::{CloseReason, Open, OpenGuard};
use crate::server::timeouts::{self, Activity, Timeouts};

/// Which protocols a connection may speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// HTTP/1, and HTTP/2 with prior knowledge when the `http2` feature is on,
    /// told apart by the first bytes the client sends.
    Auto,
    Http1Only,
    #[cfg(feature = "http2")]
    Http2Only,
}

/// What every connection of one server is served with.
pub(crate) struct Protocols {
    pub(crate) mode: Mode,
    pub(crate) http1: http1::Builder,
    #[cfg(feature = "http2")]
    pub(crate) http2: hyper::server::conn::http2::Builder<crate::runtime::Executor>,
    pub(crate) timeouts: Timeouts,
    pub(crate) timer: Timer,
    pub(crate) upgrades: Arc<crate::server::upgrade::UpgradeContext>,
    pub(crate) access_log: bool,
}

/// Sets up a connection just accepted (its socket options, what the
/// handler will be told about it, its registration) and spawns its task.
pub(crate) fn start(
    stream: Stream,
    peer: Option<SocketAddr>,
    pool: &Pool,
    protocols: &Arc<Protocols>,
    service: &Arc<dyn SharedService>,
    signal: &Arc<Signal>,
    #[cfg(feature = "tls")] tls: Option<Arc<rustls::ServerConfig>>,
) {
    let info = match &stream {
        Stream::Tcp(tcp) => {
            if let Err(err) = tcp.set_nodelay(true) {
                log::debug!("could not set TCP_NODELAY for {}: {err}", Peer(peer));
            }
            ConnectionInfo {
                peer_addr: peer,
                // getsockname(2): the listener's address may be a wildcard.
                local_addr: match tcp.local_addr() {
                    Ok(addr) => Some(addr),
                    Err(err) => {
                        log::debug!("no local address for {}: {err}", Peer(peer));
                        None
                    }
                },
                ..ConnectionInfo::default()
            }
        }
        Stream::Unix(unix) => ConnectionInfo {
            unix: true,
            peer_credentials: match crate::io::credentials::peer_credentials(unix) {
                Ok(credentials) => Some(credentials),
                Err(err) => {
                    log::debug!("no credentials for a Unix socket client: {err}");
                    None
                }
            },
            ..ConnectionInfo::default()
        },
    };
    let conn = match Conn::register(stream, pool, signal) {
        Ok(conn) => conn,
        Err(err) => {
            log::error!(
                "could not register the connection from {}: {err}",
                Peer(peer)
            );
            return;
        }
    };
    let service = HyperService {
        service: service.clone(),
        info,
        pool: pool.clone(),
        activity: conn.activity().clone(),
        body_read_timeout: protocols.timeouts.body_read,
        upgrades: protocols.upgrades.clone(),
        access_log: protocols.access_log,
    };
    let guard = signal.connection();
    #[cfg(feature = "tls")]
    if let Some(config) = tls {
        pool.spawn(serve_tls(conn, protocols.clone(), service, guard, config));
        return;
    }
    pool.spawn(serve(conn, protocols.clone(), service, guard));
}

impl Watch {
    /// Watches a connection just accepted, counted as open (HTTP/1 until
    /// it turns out otherwise).
    fn new(conn: &Conn, protocols: &Arc<Protocols>, guard: ConnectionGuard) -> Watch {
        let open = guard.signal().metrics.open(Open::Http1);
        Watch {
            protocols: protocols.clone(),
            activity: conn.activity().clone(),
            guard,
            sleep: None,
            armed: 0,
            shutdown_sent: false,
            keep_alive_only: false,
            open,
        }
    }
}

/// Serves one accepted plaintext connection until it closes.
///
/// TLS connections have their own task (`serve_tls`), not a branch in this
/// one: with the TLS path inside, this future was 9.3 KB instead of 4 KB
/// and its poll touched 12 KB of stack on every worker, for plaintext
/// connections too (S2: 21.0 against 17.3 MB resident).
pub(crate) async fn serve(
    conn: Conn,
    protocols: Arc<Protocols>,
    service: HyperService,
    guard: ConnectionGuard,
) {
    let peer = Peer(service.info.peer_addr);
    let mut watch = Watch::new(&conn, &protocols, guard);
    let result = match protocols.mode {
        Mode::Http1Only => watch.run(serve_http1(&protocols, conn, service)).await,
        #[cfg(feature = "http2")]
        Mode::Http2Only => serve_http2(&mut watch, &protocols, conn, service).await,
        #[cfg(not(feature = "http2"))]
        Mode::Auto => watch.run(serve_http1(&protocols, conn, service)).await,
        #[cfg(feature = "http2")]
        Mode::Auto => match watch.run(Prelude(Box::pin(detect_http2(conn)))).await {
            Ended::Done(Ok((true, conn))) => {
                serve_http2(&mut watch, &protocols, conn, service).await
            }
            Ended::Done(Ok((false, conn))) => {
                watch.run(serve_http1(&protocols, conn, service)).await
            }
            Ended::Done(Err(err)) => {
                // Nothing was asked: a client that just closes is done.
                let reason = if err.kind() == std::io::ErrorKind::UnexpectedEof {
                    CloseReason::Done
                } else {
                    CloseReason::ClientGone
                };
                watch.open.metrics().closed(reason);
                log::debug!("connection from {peer} closed before its first request: {err}");
                return;
            }
            Ended::Closed(reason) => {
                watch.open.metrics().closed(reason);
                log::debug!("closed the connection from {peer}: {reason}");
                return;
            }
        },
    };
    watch.end(peer, result);
}

/// Whether a connection's error means the client went away (mid-request, a
/// reset), not that it broke the protocol.
fn client_went_away(err: &hyper::Error) -> bool {
    if err.is_incomplete_message() || err.is_canceled() || err.is_closed() {
        return true;
    }
    matches!(
        crate::body::io_error_kinds(err).next(),
        Some(
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionAborted
        )
    )
}

/// Names a client in log lines; formatted only when a line is written.
#[derive(Clone, Copy)]
pub(crate) struct Peer(pub(crate) Option<std::net::SocketAddr>);

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("a Unix socket client"),
        }
    }
}

/// The TLS handshake (under the header-read timeout, like a request head),
/// then the protocol ALPN chose: HTTP/2 for `h2`, HTTP/1.1 otherwise.
#[cfg(feature = "tls")]
pub(crate) async fn serve_tls(
    conn: Conn,
    protocols: Arc<Protocols>,
    mut service: HyperService,
    guard: ConnectionGuard,
    config: Arc<rustls::ServerConfig>,
) {
    let peer = Peer(service.info.peer_addr);
    let mut watch = Watch::new(&conn, &protocols, guard);
    let accept = crate::tls::TlsStream::accept(conn, config);
    let stream = match watch.run(Prelude(Box::pin(accept))).await {
        Ended::Done(Ok(stream)) => stream,
        Ended::Done(Err(err)) => {
            watch.open.metrics().closed(CloseReason::TlsHandshake);
            log::debug!("TLS handshake with {peer} failed: {err}");
            return;
        }
        Ended::Closed(reason) => {
            watch.open.metrics().closed(reason);
            log::debug!("closed the connection from {peer} during its TLS handshake: {reason}");
            return;
        }
    };
    service.info.tls = Some(Arc::new(stream.info()));
    let h2 = stream.is_h2();
    let result = match (h2, protocols.mode) {
        #[cfg(feature = "http2")]
        (true, Mode::Auto | Mode::Http2Only) | (false, Mode::Http2Only) => {
            serve_http2(&mut watch, &protocols, stream, service).await
        }
        (false, _) => watch.run(serve_http1(&protocols, stream, service)).await,
        #[allow(unreachable_patterns)]
        (true, _) => {
            log::warn!(
                "closed the connection from {peer}: ALPN chose h2, which this server does not \
                 serve (the TLS configuration offers it, but HTTP/2 is off)"
            );
            watch.open.metrics().closed(CloseReason::Error);
            return;
        }
    };
    watch.end(peer, result);
}

#[cfg(feature = "http2")]
async fn serve_http2<I>(
    watch: &mut Watch,
    protocols: &Protocols,
    io: I,
    service: HyperService,
) -> Ended<Result<(), hyper::Error>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    watch.keep_alive_only = true;
    watch.activity.on_http2();
    watch.open.switch(Open::Http2);
    watch
        .run(boxed_http2(protocols, io, Http2Service(service)))
        .await
}

/// hyper's HTTP/2 connection, boxed by a function of its own: see
/// `serve_http1`.
#[cfg(feature = "http2")]
#[inline(never)]
fn boxed_http2<I>(
    protocols: &Protocols,
    io: I,
    service: Http2Service,
) -> Pin<Box<hyper::server::conn::http2::Connection<I, Http2Service, crate::runtime::Executor>>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    Box::pin(protocols.http2.serve_connection(io, service))
}

/// hyper's HTTP/1 connection, built and boxed here, never inline in the
/// connection task: built in place, it made the task's poll frame 4.4 KB
/// (1.1 KB boxed), which every poll reserves below hyper's, and worker stacks
/// under S2 touched 24 KB each instead of 20 KB (hyper with `spawn_blocking`:
/// 8 KB; the deepest path is hyper's header parse).
#[inline(never)]
fn serve_http1<I>(
    protocols: &Protocols,
    io: I,
    service: HyperService,
) -> Pin<Box<http1::UpgradeableConnection<I, HyperService>>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    Box::pin(
        protocols
            .http1
            .serve_connection(io, service)
            .with_upgrades(),
    )
}

/// A connection future that can be asked to wind down.
trait Graceful: Future {
    /// Asks the connection to finish what is in flight and close. Returns false
    /// if it should be dropped at once instead (nothing in flight to finish).
    fn graceful_shutdown(self: Pin<&mut Self>) -> bool;
}

impl<I> Graceful for http1::UpgradeableConnection<I, HyperService>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    fn graceful_shutdown(self: Pin<&mut Self>) -> bool {
        http1::UpgradeableConnection::graceful_shutdown(self);
        true
    }
}

#[cfg(feature = "http2")]
impl<I> Graceful
    for hyper::server::conn::http2::Connection<I, Http2Service, crate::runtime::Executor>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    fn graceful_shutdown(self: Pin<&mut Self>) -> bool {
        hyper::server::conn::http2::Connection::graceful_shutdown(self);
        true
    }
}

impl<F: Graceful + ?Sized> Graceful for Pin<Box<F>> {
    fn graceful_shutdown(self: Pin<&mut Self>) -> bool {
        self.get_mut().as_mut().graceful_shutdown()
    }
}

/// What runs before the first request (protocol detection, the TLS
/// handshake): nothing is in flight yet, so shutdown closes at once.
#[cfg(any(feature = "http2", feature = "tls"))]
struct Prelude<F>(Pin<Box<F>>);

#[cfg(any(feature = "http2", feature = "tls"))]
impl<F: Future> Future for Prelude<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.0.as_mut().poll(cx)
    }
}

#[cfg(any(feature = "http2", feature = "tls"))]
impl<F: Future> Graceful for Prelude<F> {
    fn graceful_shutdown(self: Pin<&mut Self>) -> bool {
        false
    }
}

/// How a watched future ended.
enum Ended<T> {
    Done(T),
    /// We closed it: a timeout or the shutdown.
    Closed(CloseReason),
}

/// Runs a connection's futures under its deadlines and the shutdown signal.
struct Watch {
    protocols: Arc<Protocols>,
    activity: Arc<Activity>,
    guard: ConnectionGuard,
    /// Armed at the current deadline, or earlier (it is re-armed when it fires).
    sleep: Option<Sleep>,
    /// `sleep`'s deadline, in `timeouts::now`'s nanoseconds.
    armed: u64,
    shutdown_sent: bool,
    keep_alive_only: bool,
    /// Counts the connection as open, by protocol, in the server's stats.
    open: OpenGuard,
}

impl Watch {
    /// Counts how the connection ended and logs it.
    fn end(&self, peer: Peer, result: Ended<Result<(), hyper::Error>>) {
        if matches!(result, Ended::Done(Ok(()))) && self.activity.handed_over() {
            // Not closed: an upgraded stream has it, and counts its close.
            log::debug!("the connection from {peer} was upgraded");
            return;
        }
        let reason = match &result {
            // An idle connection that hyper closed for the graceful shutdown.
            Ended::Done(Ok(())) if self.shutdown_sent => CloseReason::Shutdown,
            // hyper ends a connection whose client left mid-request quietly.
            Ended::Done(Ok(())) if self.activity.client_gone() => CloseReason::ClientGone,
            Ended::Done(Ok(())) => CloseReason::Done,
            Ended::Done(Err(err)) if client_went_away(err) => CloseReason::ClientGone,
            Ended::Done(Err(_)) => CloseReason::Error,
            Ended::Closed(reason) => *reason,
        };
        self.open.metrics().closed(reason);
        match result {
            Ended::Done(Ok(())) => {}
            // Clients that go away mid-request are routine; not worth a warning.
            Ended::Done(Err(err)) => {
                log::debug!("connection from {peer} ended ({reason}): {err}")
            }
            Ended::Closed(reason) => log::debug!("closed the connection from {peer}: {reason}"),
        }
    }

    async fn run<F: Graceful>(&mut self, future: F) -> Ended<F::Output> {
        let mut future = std::pin::pin!(future);
        std::future::poll_fn(|cx| self.poll_watched(future.as_mut(), cx)).await
    }

    fn poll_watched<F: Graceful>(
        &mut self,
        mut future: Pin<&mut F>,
        cx: &mut Context<'_>,
    ) -> Poll<Ended<F::Output>> {
        self.guard.watch(cx.waker());
        let signal = self.guard.signal();
        if signal.is_forced() {
            return Poll::Ready(Ended::Closed(CloseReason::ShutdownTimeout));
        }
        if signal.is_requested() && !self.shutdown_sent {
            self.shutdown_sent = true;
            if !future.as_mut().graceful_shutdown() {
                return Poll::Ready(Ended::Closed(CloseReason::Shutdown));
            }
        }
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Ended::Done(output));
        }
        // Pending: arm the timer for the deadline that now applies.
        loop {
            let Some((deadline, phase)) = self
                .activity
                .deadline(&self.protocols.timeouts, self.keep_alive_only)
            else {
                return Poll::Pending;
            };
            match &mut self.sleep {
                // The armed timer fires first (or at the deadline): it decides,
                // and the common poll reads no clock.
                Some(_) if self.armed <= deadline => {}
                _ if timeouts::now() >= deadline => {
                    return Poll::Ready(Ended::Closed(phase.reason()));
                }
                Some(sleep) => {
                    sleep.reset(timeouts::instant_at(deadline));
                    self.armed = deadline;
                }
                None => {
                    let at = timeouts::instant_at(deadline);
                    self.sleep = Some(self.protocols.timer.sleep_until(at));
                    self.armed = deadline;
                }
            }
            let sleep = self.sleep.as_mut().expect("armed above");
            if Pin::new(sleep).poll(cx).is_pending() {
                return Poll::Pending;
            }
            // Fired: the next turn closes the connection if this deadline has
            // passed, or arms a timer for it (it fired for an earlier one).
            self.sleep = None;
        }
    }
}

/// The first bytes of every HTTP/2 prior-knowledge connection.
#[cfg(feature = "http2")]
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads until the bytes seen so far either match the HTTP/2 preface in full or
/// stop matching it, then hands back the connection with those bytes put back.
#[cfg(feature = "http2")]
async fn detect_http2(mut conn: Conn) -> std::io::Result<(bool, Rewind<Conn>)> {
    use hyper::rt::Read as _;

    let mut seen = [0u8; PREFACE.len()];
    let mut len = 0;
    while len < PREFACE.len() && seen[..len] == PREFACE[..len] {
        let n = std::future::poll_fn(|cx| {
            let mut buf = hyper::rt::ReadBuf::new(&mut seen[len..]);
            match Pin::new(&mut conn).poll_read(cx, buf.unfilled()) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(buf.filled().len())),
                Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        len += n;
    }
    let is_http2 = seen[..len] == *PREFACE;
    let prefix = bytes::Bytes::copy_from_slice(&seen[..len]);
    Ok((is_http2, Rewind::new(prefix, conn)))
}
