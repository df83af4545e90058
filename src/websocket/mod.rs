//! WebSocket (feature `websocket`): RFC 6455 over HTTP/1.1, and RFC 8441 over
//! HTTP/2, with [tungstenite](https://docs.rs/tungstenite)'s framing.
//!
//! Two ways to serve a socket, both from a plain blocking handler:
//!
//! - **Messages** ([`WebSocketUpgrade::serve`]): the connection's task reads
//!   and writes frames on the reactor, and your [`Handler`] runs on a worker
//!   only when a whole message has arrived. An idle WebSocket holds no
//!   thread, so tens of thousands can stay open; a [`Sender`] sends to the
//!   socket from any thread (broadcast, chat).
//! - **A blocking socket** ([`WebSocketUpgrade::blocking`]): tungstenite's
//!   `WebSocket` over the blocking [`Upgraded`] stream, on a thread of its
//!   own for the socket's life, for simple cases.
//!
//! ```no_run
//! use astra::websocket::{Message, Sender, WebSocketUpgrade};
//! use astra::{ConnectionInfo, Request, Response, Server};
//!
//! fn echo(mut request: Request, _info: ConnectionInfo) -> Response {
//!     match WebSocketUpgrade::from_request(&mut request) {
//!         Ok(ws) => ws.serve(|sender: &Sender, message: Message| {
//!             let _ = sender.send(message);
//!         }),
//!         // Not a WebSocket handshake: the 400 or 426 that says why.
//!         Err(refusal) => refusal,
//!     }
//! }
//!
//! Server::bind("127.0.0.1:3000").serve(echo).expect("serve failed");
//! ```
//!
//! The server answers pings, sends one after [`ping_interval`] of silence,
//! closes a socket that stays silent for [`idle_timeout`], and closes with the
//! code RFC 6455 asks for: 1001 on graceful shutdown, 1007 on invalid UTF-8,
//! 1009 on a message or frame over the limits, 1002 on a protocol error.
//!
//! [`ping_interval`]: WebSocketUpgrade::ping_interval
//! [`idle_timeout`]: WebSocketUpgrade::idle_timeout

mod trim;

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use http::{header, HeaderValue, Method, StatusCode, Version};
use hyper::rt::{Read as _, Write as _};

use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Error as WsError, WebSocket};

use crate::body::{Body, Request, Response};
use crate::error::Timeout;
use crate::io::sync_io::SyncIo;
use crate::runtime::pool::UserCall;
use crate::runtime::timer::{Sleep, Timer};
use crate::server::upgrade::{header_has_token, Continuation, Io, Upgrade, UpgradeParts, Upgraded};

pub use tungstenite;
pub use tungstenite::protocol::frame::coding::CloseCode;
pub use tungstenite::protocol::CloseFrame;
pub use tungstenite::Message;

/// The default limit on an incoming message, and on a frame.
const DEFAULT_MAX_MESSAGE: usize = 16 << 20;
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_MAX_QUEUED: usize = 64;
/// Messages a socket's senders may queue before `send` waits.
const MAX_OUTGOING: usize = 1024;
/// How long a socket we closed waits for the client's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Read buffer per socket: small, so idle sockets stay cheap; frames larger
/// than it are read in several steps.
const READ_BUFFER: usize = 4096;

/// A WebSocket handshake, checked and ready to accept; from
/// [`WebSocketUpgrade::from_request`].
pub struct WebSocketUpgrade {
    upgrade: Upgrade,
    /// `Sec-WebSocket-Key` (HTTP/1.1); `None` over HTTP/2.
    key: Option<HeaderValue>,
    offered: Vec<String>,
    selected: Option<String>,
    origin: Option<String>,
    origin_allowed: bool,
    settings: Settings,
}

#[derive(Clone, Copy, Debug)]
struct Settings {
    max_message: usize,
    max_frame: usize,
    idle_timeout: Option<Duration>,
    ping_interval: Option<Duration>,
    max_queued: usize,
}

impl fmt::Debug for WebSocketUpgrade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocketUpgrade")
            .field("offered_protocols", &self.offered)
            .field("selected_protocol", &self.selected)
            .field("origin", &self.origin)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn refuse(status: StatusCode, why: &str) -> Response {
    let mut response = Response::new(Body::new(format!("{why}\n")));
    *response.status_mut() = status;
    response
}

/// A `Sec-WebSocket-Key` is 16 random bytes in base64: 24 characters.
fn is_valid_key(key: &HeaderValue) -> bool {
    let key = key.as_bytes();
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

impl WebSocketUpgrade {
    /// Checks that `request` opens a WebSocket and takes its upgrade:
    /// over HTTP/1.1 a `GET` with `Upgrade: websocket`, `Connection:
    /// upgrade`, `Sec-WebSocket-Version: 13` and a `Sec-WebSocket-Key`; over
    /// HTTP/2 an extended `CONNECT` with `:protocol websocket` (RFC 8441; the
    /// server needs
    /// `Server::http2_enable_connect_protocol`, feature `http2`).
    ///
    /// # Errors
    ///
    /// The response to send instead, whose body says what is wrong:
    /// `426 Upgrade Required` (with `Upgrade: websocket`) for a request that
    /// is no WebSocket handshake at all, `426` with `Sec-WebSocket-Version:
    /// 13` for another version, `405` for a method other than `GET`, `400`
    /// for a missing or malformed key.
    #[allow(clippy::result_large_err)]
    pub fn from_request(request: &mut Request) -> Result<WebSocketUpgrade, Response> {
        let h2 = request.version() == Version::HTTP_2;
        if h2 {
            let websocket = request.method() == Method::CONNECT && is_websocket_protocol(request);
            if !websocket {
                return Err(upgrade_required());
            }
        } else {
            if !header_has_token(request, header::UPGRADE, "websocket")
                || !header_has_token(request, header::CONNECTION, "upgrade")
            {
                return Err(upgrade_required());
            }
            if request.method() != Method::GET {
                let mut refusal = refuse(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "a WebSocket handshake must be a GET request",
                );
                refusal
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET"));
                return Err(refusal);
            }
        }
        let version = request.headers().get(header::SEC_WEBSOCKET_VERSION);
        if version.map(HeaderValue::as_bytes) != Some(b"13") {
            let mut refusal = refuse(
                StatusCode::UPGRADE_REQUIRED,
                "this server speaks WebSocket version 13 (Sec-WebSocket-Version: 13)",
            );
            refusal.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
            return Err(refusal);
        }
        let key = if h2 {
            None
        } else {
            match request.headers().get(header::SEC_WEBSOCKET_KEY) {
                Some(key) if is_valid_key(key) => Some(key.clone()),
                Some(_) => {
                    return Err(refuse(
                        StatusCode::BAD_REQUEST,
                        "Sec-WebSocket-Key must be 16 bytes in base64",
                    ))
                }
                None => {
                    return Err(refuse(
                        StatusCode::BAD_REQUEST,
                        "a WebSocket handshake needs a Sec-WebSocket-Key",
                    ))
                }
            }
        };
        let offered = request
            .headers()
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(|protocol| protocol.trim().to_owned())
            .filter(|protocol| !protocol.is_empty())
            .collect();
        let origin = request
            .headers()
            .get(header::ORIGIN)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let Some(upgrade) = Upgrade::from_request(request) else {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "this request cannot be upgraded (its upgrade was already taken)",
            ));
        };
        Ok(WebSocketUpgrade {
            upgrade,
            key,
            offered,
            selected: None,
            origin,
            origin_allowed: true,
            settings: Settings {
                max_message: DEFAULT_MAX_MESSAGE,
                max_frame: DEFAULT_MAX_MESSAGE,
                idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
                ping_interval: Some(DEFAULT_PING_INTERVAL),
                max_queued: DEFAULT_MAX_QUEUED,
            },
        })
    }

    /// The subprotocols this server speaks, most preferred first: the first
    /// of them that the client offered (`Sec-WebSocket-Protocol`) is
    /// selected. If it offered none of them, none is selected, and the
    /// client decides whether to go on.
    pub fn protocols<I, S>(mut self, protocols: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.selected = protocols
            .into_iter()
            .find(|ours| self.offered.iter().any(|theirs| theirs == ours.as_ref()))
            .map(|p| p.as_ref().to_owned());
        self
    }

    /// The subprotocol [`protocols`](WebSocketUpgrade::protocols) selected.
    pub fn selected_protocol(&self) -> Option<&str> {
        self.selected.as_deref()
    }

    /// The subprotocols the client offered.
    pub fn offered_protocols(&self) -> &[String] {
        &self.offered
    }

    /// The handshake's `Origin` header: browsers send the page's origin,
    /// which a server should check against cross-site WebSocket hijacking.
    pub fn origin(&self) -> Option<&str> {
        self.origin.as_deref()
    }

    /// Checks the `Origin` with `allow` (given `None` when the client sent
    /// none, as non-browser clients do); if it returns false the handshake
    /// is refused with `403 Forbidden`.
    ///
    /// ```
    /// # use astra::websocket::WebSocketUpgrade;
    /// # fn check(ws: WebSocketUpgrade) -> WebSocketUpgrade {
    /// ws.allow_origin(|origin| matches!(origin, None | Some("https://example.com")))
    /// # }
    /// # let _ = check;
    /// ```
    pub fn allow_origin(mut self, allow: impl FnOnce(Option<&str>) -> bool) -> Self {
        self.origin_allowed = allow(self.origin.as_deref());
        self
    }

    /// The largest message the client may send, in bytes; a bigger one
    /// closes the socket with 1009.
    ///
    /// Default is 16 MiB.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.settings.max_message = bytes;
        self
    }

    /// The largest frame the client may send, in bytes; a bigger one closes
    /// the socket with 1009.
    ///
    /// Default is 16 MiB.
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.settings.max_frame = bytes;
        self
    }

    /// How long the socket may stay silent (no message, ping or pong from the
    /// client) before the server closes it (code 1000, "idle timeout"; the
    /// log names it [`Timeout::WebSocketIdle`]). As for every timeout of
    /// `Server`'s, `None` turns it off: the socket stays open for ever.
    /// Messages mode only.
    ///
    /// Default is 60 seconds.
    pub fn idle_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.settings.idle_timeout = timeout.into();
        self
    }

    /// After this long without hearing from the client, the server sends a
    /// ping, which a live client answers (so a live but quiet client is not
    /// idle). `None` turns it off: no pings. Messages mode only.
    ///
    /// Default is 30 seconds.
    pub fn ping_interval(mut self, interval: impl Into<Option<Duration>>) -> Self {
        self.settings.ping_interval = interval.into();
        self
    }

    /// How many received messages may wait for the handler. When that many
    /// wait, the server stops reading the socket, so a fast client is slowed
    /// by TCP flow control: nothing is dropped. 0 counts as 1 (the message
    /// being read has to go somewhere). Messages mode only.
    ///
    /// Default is 64.
    pub fn max_queued_messages(mut self, messages: usize) -> Self {
        self.settings.max_queued = messages.max(1);
        self
    }

    fn config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(0)
            .max_message_size(Some(self.settings.max_message))
            .max_frame_size(Some(self.settings.max_frame))
    }

    /// The response that accepts the handshake and the socket's settings,
    /// or the 403 of a refused origin.
    #[allow(clippy::result_large_err)]
    fn accept(&self) -> Result<(Response, WebSocketConfig), Response> {
        if !self.origin_allowed {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "this origin may not open a WebSocket",
            ));
        }
        Ok((self.accepting(), self.config()))
    }

    /// The response that accepts the handshake.
    fn accepting(&self) -> Response {
        let mut response = Response::new(Body::empty());
        // Over HTTP/2 the default 200 accepts the extended CONNECT (RFC 8441).
        if let Some(key) = &self.key {
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let headers = response.headers_mut();
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
            headers.insert(
                header::SEC_WEBSOCKET_ACCEPT,
                HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
            );
        }
        if let Some(protocol) = &self.selected {
            if let Ok(value) = HeaderValue::from_str(protocol) {
                response
                    .headers_mut()
                    .insert(header::SEC_WEBSOCKET_PROTOCOL, value);
            }
        }
        response
    }

    /// Accepts the handshake in messages mode: returns the response to send
    /// (`101 Switching Protocols`, or `200` over HTTP/2); once it is sent, the
    /// connection's task runs the socket and calls `handler` on a worker for
    /// each whole message, one at a time and in order.
    ///
    /// See the [module docs](self) for an example.
    pub fn serve<H: Handler>(self, handler: H) -> Response {
        let (response, config) = match self.accept() {
            Ok(accepted) => accepted,
            Err(refusal) => return refusal,
        };
        let settings = self.settings;
        let handler: Arc<dyn Handler> = Arc::new(handler);
        let task = move |io: Io, parts: UpgradeParts| -> crate::server::upgrade::BoxFuture {
            Box::pin(Socket::new(io, parts, config, settings, handler))
        };
        self.upgrade
            .respond_with(response, Continuation::Task(Box::new(task)))
    }

    /// Accepts the handshake and, once the response is sent, runs `then` with
    /// a blocking tungstenite `WebSocket` on a thread of its own (counted
    /// against [`max_blocking_upgrades`](crate::Server::max_blocking_upgrades)).
    /// Reads and writes follow [`Upgraded`]'s timeouts; the idle timeout,
    /// pings and queue bound of messages mode do not apply.
    ///
    /// ```no_run
    /// use astra::websocket::WebSocketUpgrade;
    /// use astra::{ConnectionInfo, Request, Response};
    ///
    /// fn echo(mut request: Request, _info: ConnectionInfo) -> Response {
    ///     let ws = match WebSocketUpgrade::from_request(&mut request) {
    ///         Ok(ws) => ws,
    ///         Err(refusal) => return refusal,
    ///     };
    ///     ws.blocking(|mut socket| {
    ///         while let Ok(message) = socket.read() {
    ///             if (message.is_text() || message.is_binary()) && socket.send(message).is_err() {
    ///                 break;
    ///             }
    ///         }
    ///     })
    /// }
    /// # let _ = echo;
    /// ```
    pub fn blocking<F>(self, then: F) -> Response
    where
        F: FnOnce(WebSocket<Upgraded>) + Send + 'static,
    {
        let (response, config) = match self.accept() {
            Ok(accepted) => accepted,
            Err(refusal) => return refusal,
        };
        self.upgrade.respond(response, move |stream| {
            then(WebSocket::from_raw_socket(
                stream,
                Role::Server,
                Some(config),
            ));
        })
    }
}

fn upgrade_required() -> Response {
    let mut refusal = refuse(
        StatusCode::UPGRADE_REQUIRED,
        "this resource is a WebSocket: connect with a WebSocket client",
    );
    refusal
        .headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    refusal
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    refusal
}

#[cfg(feature = "http2")]
fn is_websocket_protocol(request: &Request) -> bool {
    request
        .extensions()
        .get::<hyper::ext::Protocol>()
        .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

#[cfg(not(feature = "http2"))]
fn is_websocket_protocol(_request: &Request) -> bool {
    false
}

/// What a messages-mode socket calls: on a worker, one call at a time per
/// socket, in order. Implemented for `Fn(&Sender, Message)` closures, which
/// get `on_message` only.
pub trait Handler: Send + Sync + 'static {
    /// The socket is open; called before any message.
    fn on_open(&self, sender: &Sender) {
        let _ = sender;
    }

    /// A whole message arrived: text or binary (pings are answered for you).
    fn on_message(&self, sender: &Sender, message: Message);

    /// The socket closed: `frame` is the client's close frame, if it sent
    /// one. `sender` no longer sends. Called once, after every message.
    fn on_close(&self, sender: &Sender, frame: Option<CloseFrame>) {
        let _ = (sender, frame);
    }
}

impl<F> Handler for F
where
    F: Fn(&Sender, Message) + Send + Sync + 'static,
{
    fn on_message(&self, sender: &Sender, message: Message) {
        self(sender, message)
    }
}

/// Sends messages to one socket, from any thread; cheap to clone.
#[derive(Clone)]
pub struct Sender {
    shared: Arc<Shared>,
}

impl fmt::Debug for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("id", &self.shared.id)
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// Why a message could not be sent.
///
/// More causes may be added; match with a `_` arm.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The socket is closed or closing.
    Closed,
    /// The outgoing queue stayed full (a client that does not read) for the
    /// server's `send_timeout`: the timeout [`Timeout::Send`], as
    /// [`SendError::timeout`] says.
    TimedOut,
    /// `try_send` found the outgoing queue full.
    Full,
}

impl SendError {
    /// The timeout that failed the send, by the name stats, logs and I/O
    /// errors give it: [`Timeout::Send`] for [`SendError::TimedOut`].
    pub fn timeout(&self) -> Option<Timeout> {
        match self {
            SendError::TimedOut => Some(Timeout::Send),
            _ => None,
        }
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Closed => f.write_str("the WebSocket is closed"),
            SendError::TimedOut => write!(
                f,
                "{}: the WebSocket's client has not read its messages",
                Timeout::Send
            ),
            SendError::Full => f.write_str("the WebSocket's outgoing queue is full"),
        }
    }
}

impl std::error::Error for SendError {}

struct Shared {
    id: u64,
    state: Mutex<Outbox>,
    /// Signalled when the queue shrinks or the socket closes.
    space: Condvar,
    send_timeout: Option<Duration>,
}

#[derive(Default)]
struct Outbox {
    queue: VecDeque<Message>,
    close: Option<CloseFrame>,
    closed: bool,
    /// The socket's task, woken when there is something to send.
    waker: Option<Waker>,
}

impl Outbox {
    /// Closing or closed: senders are refused.
    fn refuses_sends(&self) -> bool {
        self.closed || self.close.is_some()
    }
}

/// Wakes the socket's task for what was just queued, after unlocking.
fn wake_socket(mut state: MutexGuard<'_, Outbox>) {
    let waker = state.waker.take();
    drop(state);
    if let Some(waker) = waker {
        waker.wake();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Outbox> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Sender {
    fn new(send_timeout: Option<Duration>) -> Sender {
        Sender {
            shared: Arc::new(Shared {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                state: Mutex::new(Outbox::default()),
                space: Condvar::new(),
                send_timeout,
            }),
        }
    }

    /// A number no other socket of this process has: a key for registries.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// Queues `message` for the socket. While 1,024
    /// messages wait to be sent, it waits for room, up to the server's
    /// `send_timeout`.
    ///
    /// # Errors
    ///
    /// [`SendError::Closed`] once the socket is closing or closed,
    /// [`SendError::TimedOut`] if no room came in time.
    pub fn send(&self, message: impl Into<Message>) -> Result<(), SendError> {
        let deadline = self.shared.send_timeout.map(|t| Instant::now() + t);
        let mut state = self.shared.lock();
        loop {
            if state.refuses_sends() {
                return Err(SendError::Closed);
            }
            if state.queue.len() < MAX_OUTGOING {
                break;
            }
            state = match deadline {
                None => self
                    .shared
                    .space
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                        return Err(SendError::TimedOut);
                    };
                    self.shared
                        .space
                        .wait_timeout(state, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
        state.queue.push_back(message.into());
        wake_socket(state);
        Ok(())
    }

    /// Like [`send`](Sender::send), without waiting.
    ///
    /// # Errors
    ///
    /// [`SendError::Closed`], or [`SendError::Full`] when the queue is full.
    pub fn try_send(&self, message: impl Into<Message>) -> Result<(), SendError> {
        let mut state = self.shared.lock();
        if state.refuses_sends() {
            return Err(SendError::Closed);
        }
        if state.queue.len() >= MAX_OUTGOING {
            return Err(SendError::Full);
        }
        state.queue.push_back(message.into());
        wake_socket(state);
        Ok(())
    }

    /// Closes the socket with `code` and `reason`, after the messages
    /// already queued. Later sends fail with [`SendError::Closed`].
    pub fn close(&self, code: CloseCode, reason: &str) {
        let mut state = self.shared.lock();
        if state.refuses_sends() {
            return;
        }
        state.close = Some(CloseFrame {
            code,
            reason: reason.to_owned().into(),
        });
        self.shared.space.notify_all();
        wake_socket(state);
    }

    /// Whether the socket is closing or closed.
    pub fn is_closed(&self) -> bool {
        let state = self.shared.lock();
        state.refuses_sends()
    }
}

/// hyper's upgraded connection as the non-blocking `Read + Write` tungstenite
/// expects: `Pending` is `WouldBlock`, and the task is woken when it can go
/// on.
struct Bridge {
    io: Io,
    waker: Waker,
}

impl Read for Bridge {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut cx = Context::from_waker(&self.waker);
        SyncIo {
            io: &mut self.io,
            cx: &mut cx,
        }
        .read(buf)
    }
}

impl Write for Bridge {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut cx = Context::from_waker(&self.waker);
        SyncIo {
            io: &mut self.io,
            cx: &mut cx,
        }
        .write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut cx = Context::from_waker(&self.waker);
        SyncIo {
            io: &mut self.io,
            cx: &mut cx,
        }
        .flush()
    }
}

/// Where a socket is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Open,
    /// We sent a close frame; waiting for the client's, until the deadline.
    Closing(Instant),
    /// The connection failed (protocol error, limits): our close frame goes
    /// out, then the socket closes without reading frames any more.
    Failing(Instant),
    /// Nothing more to read or write.
    Done,
}

/// A messages-mode socket: the connection's task.
struct Socket {
    ws: WebSocket<Bridge>,
    parts: UpgradeParts,
    settings: Settings,
    handler: Arc<dyn Handler>,
    sender: Sender,
    inbox: VecDeque<Message>,
    running: Option<UserCall<()>>,
    opened: bool,
    close_reported: bool,
    peer_close: Option<CloseFrame>,
    phase: Phase,
    /// The last message tungstenite took has been flushed to the socket.
    flushed: bool,
    shutdown_sent: bool,
    /// A protocol error or limit was hit: the close code and reason to send
    /// once what came before is answered, and the latest moment to send it.
    failure: Option<(CloseCode, String, Instant)>,
    /// A failing socket has shut down its sending side.
    write_shut: bool,
    last_heard: Instant,
    last_ping: Option<Instant>,
    sleep: Option<Sleep>,
    /// The largest messages read and written: about what tungstenite's
    /// buffers grew to, freed with the socket (see `crate::trim`).
    largest: (usize, usize),
}

impl Socket {
    fn new(
        io: Io,
        parts: UpgradeParts,
        config: WebSocketConfig,
        settings: Settings,
        handler: Arc<dyn Handler>,
    ) -> Socket {
        let bridge = Bridge {
            io,
            waker: Waker::noop().clone(),
        };
        let sender = Sender::new(parts.context.write_timeout);
        Socket {
            ws: WebSocket::from_raw_socket(bridge, Role::Server, Some(config)),
            parts,
            settings,
            handler,
            sender,
            inbox: VecDeque::new(),
            running: None,
            opened: false,
            close_reported: false,
            peer_close: None,
            phase: Phase::Open,
            flushed: true,
            shutdown_sent: false,
            failure: None,
            write_shut: false,
            last_heard: Instant::now(),
            last_ping: None,
            sleep: None,
            largest: (0, 0),
        }
    }

    /// Sends our close frame (once) and starts waiting for the client's.
    fn close(&mut self, code: CloseCode, reason: &str) {
        if self.phase != Phase::Open {
            return;
        }
        self.mark_closed();
        let frame = CloseFrame {
            code,
            reason: reason.to_owned().into(),
        };
        match self.ws.close(Some(frame)) {
            Ok(()) => {}
            Err(WsError::Io(err)) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => {
                self.phase = Phase::Done;
                return;
            }
        }
        self.flushed = false;
        self.phase = Phase::Closing(Instant::now() + CLOSE_GRACE);
    }

    /// Fails the connection: a close frame with `code`, then no more frames
    /// are read (RFC 6455, 7.1.7).
    ///
    /// Reading stops at once; the close waits (up to [`CLOSE_GRACE`]) until
    /// the messages received before the error have been handled and what
    /// the handler sent for them is on the wire.
    fn fail(&mut self, code: CloseCode, why: &str) {
        log::debug!("closing a WebSocket: {why}");
        self.parts.ended(crate::server::stats::CloseReason::Error);
        if self.failure.is_none() {
            self.failure = Some((code, why.to_owned(), Instant::now() + CLOSE_GRACE));
        }
    }

    /// Sends the close frame of a failure once nothing before it is pending.
    fn finish_failure(&mut self) -> bool {
        let Some((_, _, deadline)) = &self.failure else {
            return false;
        };
        let settled = self.running.is_none()
            && self.inbox.is_empty()
            && self.flushed
            && self.sender.shared.lock().queue.is_empty();
        if !settled && Instant::now() < *deadline {
            return false;
        }
        let (code, why, _) = self.failure.take().expect("checked above");
        let open = self.phase == Phase::Open;
        self.close(code, &why);
        if open || matches!(self.phase, Phase::Closing(_)) {
            self.phase = Phase::Failing(Instant::now() + CLOSE_GRACE);
        }
        true
    }

    /// Senders can send no more; those waiting give up.
    fn mark_closed(&self) {
        let mut state = self.sender.shared.lock();
        state.closed = true;
        state.queue.clear();
        drop(state);
        self.sender.shared.space.notify_all();
    }

    /// Runs a handler callback on a worker.
    fn call(&mut self, f: impl FnOnce(&dyn Handler, &Sender) + Send + 'static) {
        let handler = self.handler.clone();
        let sender = self.sender.clone();
        self.running = Some(
            self.parts
                .context
                .pool
                .call_user(false, move || f(&*handler, &sender)),
        );
    }

    /// One round of work; returns whether anything happened.
    fn step(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        if let Some(call) = &mut self.running {
            if let Poll::Ready(result) = Pin::new(call).poll(cx) {
                self.running = None;
                progress = true;
                if result.is_err() {
                    log::error!("a WebSocket handler panicked; closing the socket with 1011");
                    self.inbox.clear();
                    self.fail(CloseCode::Error, "handler panicked");
                }
            }
        }
        if self.running.is_none() {
            if !self.opened {
                self.opened = true;
                self.call(|handler, sender| handler.on_open(sender));
                progress = true;
            } else if let Some(message) = self.inbox.pop_front() {
                self.call(move |handler, sender| handler.on_message(sender, message));
                progress = true;
            } else if self.phase == Phase::Done && !self.close_reported {
                self.close_reported = true;
                let frame = self.peer_close.take();
                self.call(move |handler, sender| handler.on_close(sender, frame));
                progress = true;
            }
        }
        progress |= self.write_queued(cx);
        progress |= self.read_frames();
        progress |= self.finish_failure();
        progress
    }

    /// Moves queued messages to tungstenite, one at a time once the previous
    /// one is on the wire (so at most one message waits inside it).
    fn write_queued(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        loop {
            if matches!(self.phase, Phase::Done | Phase::Failing(_)) && self.flushed {
                return progress;
            }
            if !self.flushed {
                match self.ws.flush() {
                    Ok(()) => self.flushed = true,
                    Err(WsError::Io(err)) if err.kind() == io::ErrorKind::WouldBlock => {
                        return progress;
                    }
                    Err(WsError::ConnectionClosed) | Err(WsError::AlreadyClosed) => {
                        self.flushed = true;
                        self.phase = Phase::Done;
                        return true;
                    }
                    Err(err) => {
                        log::debug!("writing to a WebSocket failed: {err}");
                        self.parts
                            .ended(crate::server::stats::CloseReason::ClientGone);
                        self.flushed = true;
                        self.phase = Phase::Done;
                        return true;
                    }
                }
            }
            if self.phase != Phase::Open {
                return progress;
            }
            let mut state = self.sender.shared.lock();
            let next = state.queue.pop_front();
            let close = if next.is_none() {
                state.close.take()
            } else {
                None
            };
            if next.is_none() && close.is_none() {
                state.waker = Some(cx.waker().clone());
                return progress;
            }
            drop(state);
            self.sender.shared.space.notify_one();
            progress = true;
            if let Some(frame) = close {
                self.close(frame.code, &frame.reason);
                continue;
            }
            let message = next.expect("checked above");
            self.largest.1 = self.largest.1.max(message.len());
            match self.ws.write(message) {
                Ok(()) => {}
                Err(WsError::Io(err)) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(WsError::ConnectionClosed) | Err(WsError::AlreadyClosed) => {
                    self.phase = Phase::Done;
                }
                Err(err) => {
                    log::debug!("writing to a WebSocket failed: {err}");
                    self.parts
                        .ended(crate::server::stats::CloseReason::ClientGone);
                    self.phase = Phase::Done;
                }
            }
            self.flushed = false;
        }
    }

    /// Reads frames while the inbox has room.
    fn read_frames(&mut self) -> bool {
        let mut progress = false;
        loop {
            match self.phase {
                Phase::Done => return progress,
                Phase::Failing(_) => return self.drain() || progress,
                Phase::Open | Phase::Closing(_) => {}
            }
            if self.inbox.len() >= self.settings.max_queued || self.failure.is_some() {
                return progress;
            }
            match self.ws.read() {
                Ok(message) => {
                    progress = true;
                    self.last_heard = Instant::now();
                    self.last_ping = None;
                    match message {
                        Message::Text(_) | Message::Binary(_) => {
                            self.largest.0 = self.largest.0.max(message.len());
                            self.inbox.push_back(message);
                        }
                        Message::Close(frame) => {
                            // tungstenite queued our reply; it goes with the
                            // next flush, and the following read ends.
                            self.peer_close = frame;
                            self.mark_closed();
                            self.flushed = false;
                            if self.phase == Phase::Open {
                                self.phase = Phase::Closing(Instant::now() + CLOSE_GRACE);
                            }
                        }
                        Message::Ping(_) | Message::Pong(_) => self.flushed = false,
                        Message::Frame(_) => {}
                    }
                }
                Err(WsError::Io(err)) if err.kind() == io::ErrorKind::WouldBlock => {
                    return progress;
                }
                Err(WsError::ConnectionClosed) | Err(WsError::AlreadyClosed) => {
                    self.mark_closed();
                    self.phase = Phase::Done;
                    return true;
                }
                Err(WsError::Capacity(err)) => {
                    self.fail(CloseCode::Size, &format!("{err}"));
                    return true;
                }
                Err(WsError::Utf8(_)) => {
                    self.fail(CloseCode::Invalid, "invalid UTF-8 in a text message");
                    return true;
                }
                Err(WsError::Protocol(
                    tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                )) => {
                    self.parts
                        .ended(crate::server::stats::CloseReason::ClientGone);
                    self.mark_closed();
                    self.phase = Phase::Done;
                    return true;
                }
                Err(WsError::Protocol(err)) => {
                    self.fail(CloseCode::Protocol, &format!("{err}"));
                    return true;
                }
                Err(err) => {
                    log::debug!("reading a WebSocket failed: {err}");
                    self.parts
                        .ended(crate::server::stats::CloseReason::ClientGone);
                    self.mark_closed();
                    self.phase = Phase::Done;
                    return true;
                }
            }
        }
    }

    /// A failed connection: once our close frame is out, ends our side and
    /// reads and drops what the client still sends until it closes, so the
    /// close frame is not lost to a reset.
    fn drain(&mut self) -> bool {
        if !self.flushed {
            return false;
        }
        let bridge = self.ws.get_mut();
        let waker = bridge.waker.clone();
        let mut cx = Context::from_waker(&waker);
        if !self.write_shut {
            self.write_shut = true;
            let _ = Pin::new(&mut bridge.io).poll_shutdown(&mut cx);
        }
        let mut scratch = [0u8; 4096];
        loop {
            let mut read = hyper::rt::ReadBuf::new(&mut scratch);
            match Pin::new(&mut bridge.io).poll_read(&mut cx, read.unfilled()) {
                Poll::Ready(Ok(())) if !read.filled().is_empty() => {}
                Poll::Ready(_) => {
                    self.phase = Phase::Done;
                    return true;
                }
                Poll::Pending => return false,
            }
        }
    }

    /// The next moment a timer must look at this socket.
    fn next_deadline(&self) -> Option<Instant> {
        if let Some((_, _, deadline)) = &self.failure {
            return Some(*deadline);
        }
        match self.phase {
            Phase::Closing(at) | Phase::Failing(at) => Some(at),
            Phase::Done => None,
            Phase::Open => {
                let idle = self.settings.idle_timeout.map(|t| self.last_heard + t);
                let ping = match (self.settings.ping_interval, self.last_ping) {
                    (Some(interval), None) => Some(self.last_heard + interval),
                    _ => None,
                };
                [idle, ping].into_iter().flatten().min()
            }
        }
    }

    /// Acts on the timers that are due.
    fn on_time(&mut self, now: Instant) {
        if self.failure.is_some() {
            // `finish_failure` closes at its deadline; no pings meanwhile.
            return;
        }
        match self.phase {
            Phase::Closing(at) | Phase::Failing(at) if now >= at => {
                // Our close frame got no answer in time.
                self.parts
                    .ended(crate::server::stats::CloseReason::ClientGone);
                self.mark_closed();
                self.phase = Phase::Done;
            }
            Phase::Open => {
                if let Some(idle) = self.settings.idle_timeout {
                    if now >= self.last_heard + idle {
                        self.parts
                            .ended(crate::server::stats::CloseReason::KeepAliveTimeout);
                        log::debug!("closing a WebSocket: {}", Timeout::WebSocketIdle);
                        // The close frame's reason stays the short wire text.
                        self.close(CloseCode::Normal, "idle timeout");
                        return;
                    }
                }
                if let (Some(interval), None) = (self.settings.ping_interval, self.last_ping) {
                    if now >= self.last_heard + interval {
                        self.last_ping = Some(now);
                        match self.ws.write(Message::Ping(Default::default())) {
                            Ok(()) => {}
                            Err(WsError::Io(err)) if err.kind() == io::ErrorKind::WouldBlock => {}
                            Err(_) => {
                                self.parts
                                    .ended(crate::server::stats::CloseReason::ClientGone);
                                self.phase = Phase::Done;
                            }
                        }
                        self.flushed = false;
                    }
                }
            }
            _ => {}
        }
    }
}

impl Future for Socket {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if !this.ws.get_ref().waker.will_wake(cx.waker()) {
            this.ws.get_mut().waker = cx.waker().clone();
        }
        this.parts.guard.watch(cx.waker());
        let signal = this.parts.guard.signal();
        if signal.is_forced() {
            this.mark_closed();
            return Poll::Ready(());
        }
        if signal.is_requested() && !this.shutdown_sent {
            this.shutdown_sent = true;
            this.parts
                .ended(crate::server::stats::CloseReason::Shutdown);
            // After what is already queued, like a sender's close.
            this.sender.close(CloseCode::Away, "server shutting down");
        }
        loop {
            while this.step(cx) {}
            let Some(deadline) = this.next_deadline() else {
                break;
            };
            let now = Instant::now();
            if now >= deadline {
                this.on_time(now);
                continue;
            }
            let pool = &this.parts.context.pool;
            let sleep = this
                .sleep
                .get_or_insert_with(|| Timer(pool.clone()).sleep_until(deadline));
            if sleep.deadline() != deadline {
                sleep.reset(deadline);
            }
            match Pin::new(sleep).poll(cx) {
                Poll::Pending => break,
                Poll::Ready(()) => {
                    this.sleep = None;
                    this.on_time(Instant::now());
                }
            }
        }
        if this.phase == Phase::Done && this.running.is_none() && this.close_reported {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.mark_closed();
        trim::released(self.largest.0 + self.largest.1);
    }
}

#[cfg(test)]
mod send_error_tests {
    use super::*;

    #[test]
    fn a_send_timeout_is_named_as_everywhere_else() {
        assert_eq!(SendError::TimedOut.timeout(), Some(Timeout::Send));
        assert_eq!(SendError::Closed.timeout(), None);
        assert!(SendError::TimedOut
            .to_string()
            .starts_with("send timeout: "));
    }
}
