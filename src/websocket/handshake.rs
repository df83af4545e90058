//! The opening handshake: [`WebSocketUpgrade`] checks a request, holds the
//! socket's options, and answers with the response that accepts it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Method, StatusCode, Version};
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::WebSocket;

use super::socket::Socket;
use super::Handler;
use crate::body::{Body, Request, Response};
use crate::server::upgrade::{header_has_token, Continuation, Io, Upgrade, UpgradeParts, Upgraded};

/// The default limit on an incoming message, and on a frame.
const DEFAULT_MAX_MESSAGE: usize = 16 << 20;
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_MAX_QUEUED: usize = 64;
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
pub(super) struct Settings {
    max_message: usize,
    max_frame: usize,
    pub(super) idle_timeout: Option<Duration>,
    pub(super) ping_interval: Option<Duration>,
    pub(super) max_queued: usize,
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
    ///
    /// [`Timeout::WebSocketIdle`]: crate::Timeout::WebSocketIdle
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
    /// See the [module docs](crate::websocket) for an example.
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
