//! Protocol upgrades: HTTP/1.1 `Upgrade` and HTTP/2 extended CONNECT, handed
//! to the handler as a blocking stream once the response is on the wire.
//!
//! The handler cannot use the stream before it has returned its response: it
//! gives [`Upgrade::respond`] a continuation, and the server runs it after
//! hyper has written the `101` (or, for CONNECT, the `2xx`) and handed the
//! connection over. A handler that waited on the stream itself could never
//! see it: its own response would still be unsent.

use std::fmt;
use std::future::Future;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{header, Method, StatusCode, Version};
use hyper::rt::{Read as _, Write as _};

use crate::body::{Body, Request, Response};
use crate::error::{Timeout, TimeoutError};
use crate::runtime::park::block_on_timeout;
use crate::runtime::Pool;
use crate::server::shutdown::{ConnectionGuard, Signal};
use crate::server::stats::CloseReason;

/// A request's pending protocol switch, taken out of the request with
/// [`Upgrade::from_request`].
///
/// ```
/// use astra::{Body, ConnectionInfo, Request, Response, ResponseBuilder, Upgrade};
/// use std::io::{Read, Write};
///
/// // A line-echo protocol behind `Upgrade: echo`.
/// fn handler(mut request: Request, _info: ConnectionInfo) -> Response {
///     let Some(upgrade) = Upgrade::from_request(&mut request) else {
///         return ResponseBuilder::new().status(426).body(Body::new("upgrade: echo")).unwrap();
///     };
///     let switching = ResponseBuilder::new()
///         .status(101)
///         .header("connection", "upgrade")
///         .header("upgrade", "echo")
///         .body(Body::empty())
///         .unwrap();
///     // Runs on a thread of its own once the 101 has been sent.
///     upgrade.respond(switching, |mut stream| {
///         let mut buf = [0; 4096];
///         while let Ok(n @ 1..) = stream.read(&mut buf) {
///             if stream.write_all(&buf[..n]).is_err() {
///                 break;
///             }
///         }
///     })
/// }
/// # let _ = handler;
/// ```
pub struct Upgrade {
    source: Source,
    connect: bool,
    /// An HTTP/1 upgrade: the connection becomes the stream (an HTTP/2
    /// CONNECT upgrades one stream of its connection).
    takes_connection: bool,
}

/// Where the upgraded connection comes from.
enum Source {
    /// hyper hands it over once the response is written.
    Hyper(hyper::upgrade::OnUpgrade),
    /// An in-memory connection made by [`crate::test::TestRequest`].
    InMemory(Io),
}

/// A request extension with the in-memory connection a
/// [`crate::test::TestRequest`] can be upgraded to (extensions must be
/// `Clone + Sync`; `Upgrade::from_request` takes it out once).
#[derive(Clone)]
pub(crate) struct InMemoryUpgrade(pub(crate) Arc<Mutex<Option<Io>>>);

impl fmt::Debug for Upgrade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upgrade")
            .field("connect", &self.connect)
            .finish_non_exhaustive()
    }
}

impl Upgrade {
    /// Takes the upgrade out of `request`, if it asks for one: an HTTP/1.1
    /// request with an `Upgrade` header and `upgrade` among its `Connection`
    /// options, or a `CONNECT` (HTTP/2 extended CONNECT, RFC 8441, needs
    /// `Server::http2_enable_connect_protocol`, feature `http2`).
    /// `None` for any other request, and for one whose upgrade was already
    /// taken.
    pub fn from_request(request: &mut Request) -> Option<Upgrade> {
        let connect = request.method() == Method::CONNECT;
        if !connect && !asks_for_upgrade(request) {
            return None;
        }
        let hyper = request
            .extensions()
            .get::<hyper::upgrade::OnUpgrade>()
            .is_some();
        let takes_connection = hyper && request.version() < Version::HTTP_2;
        let source = if hyper {
            Source::Hyper(hyper::upgrade::on(request))
        } else {
            let InMemoryUpgrade(io) = request.extensions().get::<InMemoryUpgrade>()?;
            let io = io.lock().unwrap_or_else(|e| e.into_inner()).take()?;
            Source::InMemory(io)
        };
        Some(Upgrade {
            source,
            connect,
            takes_connection,
        })
    }

    /// Answers with `response` and, once it is sent, runs `then` with the
    /// connection as a blocking stream, on a thread of its own.
    ///
    /// `response` must switch protocols: `101 Switching Protocols` for an
    /// HTTP/1.1 upgrade, a `2xx` for `CONNECT`. Any other status is sent as
    /// it is and `then` never runs (a handler may still refuse that way).
    ///
    /// Each stream holds its thread until `then` returns, so at most
    /// [`Server::max_blocking_upgrades`](crate::Server::max_blocking_upgrades)
    /// run at once; past that the client gets `503 Service Unavailable`
    /// instead of `response`, and ordinary requests are never starved of
    /// workers by upgraded connections.
    pub fn respond<F>(self, response: Response, then: F) -> Response
    where
        F: FnOnce(Upgraded) + Send + 'static,
    {
        self.respond_with(response, Continuation::Blocking(Box::new(then)))
    }

    /// Attaches what runs after the upgrade to the response.
    pub(crate) fn respond_with(self, mut response: Response, then: Continuation) -> Response {
        let switches = if self.connect {
            response.status().is_success()
        } else {
            response.status() == StatusCode::SWITCHING_PROTOCOLS
        };
        if switches {
            response
                .extensions_mut()
                .insert(Hook(Arc::new(Mutex::new(Some(Pending {
                    source: self.source,
                    then,
                    takes_connection: self.takes_connection,
                })))));
        }
        response
    }
}

/// Whether an HTTP/1.1 request asks to switch protocols.
fn asks_for_upgrade(request: &Request) -> bool {
    request.version() == Version::HTTP_11
        && request.headers().contains_key(header::UPGRADE)
        && header_has_token(request, header::CONNECTION, "upgrade")
}

/// Whether a comma-separated header (`Connection`, `Upgrade`) lists `token`,
/// ignoring ASCII case.
pub(crate) fn header_has_token(request: &Request, name: header::HeaderName, token: &str) -> bool {
    request
        .headers()
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|option| option.trim().eq_ignore_ascii_case(token))
}

/// What runs on the upgraded connection.
pub(crate) enum Continuation {
    /// User code with a blocking stream, on a thread of its own.
    Blocking(Box<dyn FnOnce(Upgraded) + Send>),
    /// A connection task of ours (WebSocket), on the pool.
    #[cfg_attr(not(feature = "websocket"), allow(dead_code))]
    Task(Box<dyn FnOnce(Io, UpgradeParts) -> BoxFuture + Send>),
}

pub(crate) type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The upgraded connection's bytes: hyper's hand-over (with what the client
/// sent after its request head), or a test's in-memory connection.
pub(crate) type Io = Box<dyn UpgradedIo>;

/// What an upgraded connection is made of.
pub(crate) trait UpgradedIo: hyper::rt::Read + hyper::rt::Write + Send + Unpin {}

impl<T: hyper::rt::Read + hyper::rt::Write + Send + Unpin> UpgradedIo for T {}

/// What an upgraded connection keeps of its server.
pub(crate) struct UpgradeParts {
    /// Keeps the connection counted as live (graceful shutdown waits for it)
    /// and wakes it when shutdown starts.
    pub(crate) guard: ConnectionGuard,
    pub(crate) context: Arc<UpgradeContext>,
    /// Counts the connection as upgraded in the server's stats.
    _open: crate::server::stats::OpenGuard,
    /// Whether the stream's end is a connection's end, counted in the
    /// server's stats by its reason when these parts are dropped (the
    /// HTTP/1 connection handed over is not counted as closed then).
    counts_close: bool,
    reason: Option<CloseReason>,
}

impl UpgradeParts {
    /// Records why the upgraded connection is ending; `Done` if nothing is.
    /// The first cause wins, except that once the shutdown timeout has run
    /// out it is the cause of any end, and of a graceful shutdown's close
    /// that did not finish.
    pub(crate) fn ended(&mut self, reason: CloseReason) {
        let forced = self.guard.signal().is_forced();
        match self.reason {
            None => {}
            Some(CloseReason::Shutdown) if forced => {}
            Some(_) => return,
        }
        self.reason = Some(if forced {
            CloseReason::ShutdownTimeout
        } else {
            reason
        });
    }
}

impl Drop for UpgradeParts {
    fn drop(&mut self) {
        if !self.counts_close {
            return;
        }
        if self.guard.signal().is_forced() {
            self.ended(CloseReason::ShutdownTimeout);
        }
        let reason = self.reason.unwrap_or(CloseReason::Done);
        self.guard.signal().metrics.closed(reason);
        log::debug!("an upgraded connection ended: {reason}");
    }
}

struct Pending {
    source: Source,
    then: Continuation,
    takes_connection: bool,
}

/// Whether a handler attached a continuation to `response` with
/// [`Upgrade::respond`].
pub(crate) fn has_continuation(response: &Response) -> bool {
    response.extensions().get::<Hook>().is_some()
}

/// A response extension carrying the continuation to the server
/// (extensions must be `Clone + Sync`; the server takes it out once).
#[derive(Clone)]
struct Hook(Arc<Mutex<Option<Pending>>>);

/// The server's side of upgrades: its timeouts and the bound on blocking
/// streams.
pub(crate) struct UpgradeContext {
    pub(crate) pool: Pool,
    pub(crate) signal: Arc<Signal>,
    pub(crate) read_timeout: Option<Duration>,
    pub(crate) write_timeout: Option<Duration>,
    pub(crate) max_blocking: usize,
    blocking: AtomicUsize,
}

impl UpgradeContext {
    pub(crate) fn new(
        pool: Pool,
        signal: Arc<Signal>,
        read_timeout: Option<Duration>,
        write_timeout: Option<Duration>,
        max_blocking: usize,
    ) -> UpgradeContext {
        UpgradeContext {
            pool,
            signal,
            read_timeout,
            write_timeout,
            max_blocking,
            blocking: AtomicUsize::new(0),
        }
    }

    /// Called with every response before hyper sends it: starts the upgrade
    /// a handler asked for, or refuses it with a 503 at the bound. Whether an
    /// upgrade was started.
    pub(crate) fn prepare(self: &Arc<Self>, response: &mut Response) -> bool {
        let Some(Hook(pending)) = response.extensions_mut().remove::<Hook>() else {
            return false;
        };
        let taken = pending.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(Pending {
            source,
            then,
            takes_connection,
        }) = taken
        else {
            return false;
        };
        let slot = match &then {
            Continuation::Blocking(_) => match self.reserve_blocking() {
                Some(slot) => Some(slot),
                None => {
                    log::warn!(
                        "refused an upgrade: {} blocking upgraded streams already run \
                         (Server::max_blocking_upgrades)",
                        self.max_blocking
                    );
                    *response = too_many_upgrades();
                    return false;
                }
            },
            Continuation::Task(_) => None,
        };
        let parts = UpgradeParts {
            guard: self.signal.connection(),
            context: self.clone(),
            _open: self
                .signal
                .metrics
                .open(crate::server::stats::Open::Upgraded),
            counts_close: takes_connection,
            reason: None,
        };
        let pool = self.pool.clone();
        self.pool.spawn(async move {
            let mut parts = parts;
            let io = match source {
                Source::Hyper(on_upgrade) => match on_upgrade.await {
                    Ok(io) => Box::new(io) as Io,
                    Err(err) => {
                        // The connection ended before the hand-over, and
                        // counted its close itself.
                        parts.counts_close = false;
                        log::debug!("the upgrade did not happen: {err}");
                        return;
                    }
                },
                Source::InMemory(io) => io,
            };
            match then {
                Continuation::Blocking(then) => {
                    let slot = slot.expect("reserved above");
                    let stream = Upgraded::new(io, parts);
                    // On a worker of its own, counted apart from
                    // `max_workers` (one of `max_blocking_upgrades`).
                    let call = pool.call_user_apart(move || {
                        let _slot = slot;
                        then(stream);
                    });
                    if call.await.is_err() {
                        log::error!("an upgraded stream's continuation panicked");
                    }
                }
                Continuation::Task(task) => task(io, parts).await,
            }
        });
        true
    }

    fn reserve_blocking(self: &Arc<Self>) -> Option<BlockingSlot> {
        let mut now = self.blocking.load(Ordering::Relaxed);
        loop {
            if now >= self.max_blocking {
                return None;
            }
            match self.blocking.compare_exchange_weak(
                now,
                now + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(BlockingSlot(self.clone())),
                Err(actual) => now = actual,
            }
        }
    }
}

/// One of `max_blocking_upgrades`, held by the thread of a blocking stream.
struct BlockingSlot(Arc<UpgradeContext>);

impl Drop for BlockingSlot {
    fn drop(&mut self) {
        self.0.blocking.fetch_sub(1, Ordering::AcqRel);
    }
}

fn too_many_upgrades() -> Response {
    let mut response = Response::new(Body::new(
        "too many upgraded connections; try again later\n",
    ));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    response
}

/// An upgraded connection as a blocking `Read + Write`, given to the
/// continuation of [`Upgrade::respond`].
///
/// Reads wait at most the server's
/// [`body_read_timeout`](crate::Server::body_read_timeout) and writes its
/// [`send_timeout`](crate::Server::send_timeout) (change them with
/// [`set_read_timeout`](Upgraded::set_read_timeout) and
/// [`set_write_timeout`](Upgraded::set_write_timeout)); either fails with
/// `ErrorKind::TimedOut`, whose inner [`TimeoutError`] names
/// [`Timeout::UpgradedRead`] or [`Timeout::Send`]. The stream counts as an
/// open connection: a graceful shutdown waits for it up to
/// `shutdown_timeout`, and meanwhile a read that
/// would wait fails with `ErrorKind::ConnectionAborted` so the continuation
/// can say goodbye and return; past the timeout the connection is closed.
/// Dropping the stream closes the connection.
pub struct Upgraded {
    io: Io,
    parts: UpgradeParts,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
}

impl fmt::Debug for Upgraded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upgraded")
            .field("read_timeout", &self.read_timeout)
            .field("write_timeout", &self.write_timeout)
            .finish_non_exhaustive()
    }
}

impl Upgraded {
    fn new(io: Io, parts: UpgradeParts) -> Upgraded {
        Upgraded {
            read_timeout: parts.context.read_timeout,
            write_timeout: parts.context.write_timeout,
            io,
            parts,
        }
    }

    /// How long a read waits for data; `None`: for ever.
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.read_timeout = timeout;
    }

    /// How long a write waits for the client to take bytes; `None`: for ever.
    pub fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        self.write_timeout = timeout;
    }

    /// Whether the server has begun a graceful shutdown.
    pub fn is_shutting_down(&self) -> bool {
        self.parts.guard.signal().is_requested()
    }

    /// Runs one poll-based operation to completion on this thread.
    fn wait<T>(
        &mut self,
        timeout: Option<Duration>,
        what: Timeout,
        mut op: impl FnMut(Pin<&mut Io>, &mut Context<'_>, &mut ConnectionGuard) -> Poll<io::Result<T>>,
    ) -> io::Result<T> {
        let Upgraded { io, parts, .. } = self;
        let pool = &parts.context.pool;
        let guard = &mut parts.guard;
        let future = std::future::poll_fn(|cx| op(Pin::new(&mut *io), cx, guard));
        let result = match block_on_timeout(future, timeout, Some(pool)) {
            Some(result) => result,
            None => {
                let waited_for = match what {
                    Timeout::UpgradedRead => "no data from the client",
                    _ => "the client took none of our bytes",
                };
                let after = timeout.unwrap_or_default();
                Err(TimeoutError::new(what, after, waited_for).into_io())
            }
        };
        if let Err(err) = &result {
            let reason = match err.kind() {
                // The continuation may well read again.
                io::ErrorKind::TimedOut if what == Timeout::UpgradedRead => None,
                io::ErrorKind::TimedOut => Some(CloseReason::SendTimeout),
                io::ErrorKind::ConnectionAborted if parts.guard.signal().is_requested() => {
                    Some(CloseReason::Shutdown)
                }
                io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof => Some(CloseReason::ClientGone),
                _ => Some(CloseReason::Error),
            };
            if let Some(reason) = reason {
                parts.ended(reason);
            }
        }
        result
    }
}

impl Read for Upgraded {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let timeout = self.read_timeout;
        self.wait(timeout, Timeout::UpgradedRead, |io, cx, guard| {
            let mut read = hyper::rt::ReadBuf::new(buf);
            match io.poll_read(cx, read.unfilled()) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(read.filled().len())),
                Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
                Poll::Pending => {
                    guard.watch(cx.waker());
                    if guard.signal().is_requested() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            "the server is shutting down",
                        )));
                    }
                    Poll::Pending
                }
            }
        })
    }
}

impl Write for Upgraded {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let timeout = self.write_timeout;
        self.wait(timeout, Timeout::Send, |io, cx, _| io.poll_write(cx, buf))
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let timeout = self.write_timeout;
        self.wait(timeout, Timeout::Send, |io, cx, _| {
            io.poll_write_vectored(cx, bufs)
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        let timeout = self.write_timeout;
        self.wait(timeout, Timeout::Send, |io, cx, _| io.poll_flush(cx))
    }
}

impl Drop for Upgraded {
    fn drop(&mut self) {
        // Ends the stream cleanly where that takes no waiting (an HTTP/2
        // stream's END_STREAM); a TCP connection closes with its socket.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let _ = Pin::new(&mut self.io).poll_shutdown(&mut cx);
    }
}

/// The upgrade context of in-process tests ([`crate::test`]): a pool of its
/// own (its first worker starts with the first upgrade and one stays for the
/// process) with a server's default timeouts and bounds, made once.
pub(crate) fn in_memory_upgrades() -> io::Result<Arc<UpgradeContext>> {
    static CONTEXT: std::sync::OnceLock<Arc<UpgradeContext>> = std::sync::OnceLock::new();
    if let Some(context) = CONTEXT.get() {
        return Ok(context.clone());
    }
    let config = super::options::Config::default();
    let pool = Pool::new(
        crate::runtime::reactor::Reactor::new()?,
        crate::runtime::pool::PoolConfig {
            max_workers: config.max_workers,
            keep_alive: config.worker_keep_alive,
        },
    );
    let context = Arc::new(UpgradeContext::new(
        pool,
        Arc::new(Signal::default()),
        config.timeouts.body_read,
        config.timeouts.send,
        config.max_blocking_upgrades,
    ));
    // Two threads racing here each made one; the loser's is dropped unused.
    Ok(CONTEXT.get_or_init(|| context).clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: Version, connection: &str, upgrade: Option<&str>) -> Request {
        let mut builder = http::Request::builder()
            .version(version)
            .header(header::CONNECTION, connection);
        if let Some(upgrade) = upgrade {
            builder = builder.header(header::UPGRADE, upgrade);
        }
        builder.body(Body::empty()).unwrap()
    }

    #[test]
    fn an_upgrade_needs_the_header_and_the_connection_option() {
        assert!(asks_for_upgrade(&request(
            Version::HTTP_11,
            "Upgrade",
            Some("ws")
        )));
        assert!(asks_for_upgrade(&request(
            Version::HTTP_11,
            "keep-alive, upgrade",
            Some("ws")
        )));
        assert!(!asks_for_upgrade(&request(
            Version::HTTP_11,
            "keep-alive",
            Some("ws")
        )));
        assert!(!asks_for_upgrade(&request(
            Version::HTTP_11,
            "upgrade",
            None
        )));
        assert!(!asks_for_upgrade(&request(
            Version::HTTP_10,
            "upgrade",
            Some("ws")
        )));
    }

    #[test]
    fn a_request_without_hypers_upgrade_extension_has_no_upgrade() {
        let mut request = request(Version::HTTP_11, "upgrade", Some("ws"));
        assert!(Upgrade::from_request(&mut request).is_none());
    }
}
