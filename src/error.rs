//! The names of the server's timeouts, one each, wherever a user meets them:
//! the [`CloseReason`](crate::CloseReason) in stats and logs, the `io::Error`
//! a handler's body read or an [`Upgraded`](crate::Upgraded) stream returns,
//! and the WebSocket `SendError`.

use std::error::Error;
use std::fmt;
use std::io;
use std::time::Duration;

/// Which timeout fired. Its `Display` is the name the log lines and
/// [`CloseReason`](crate::CloseReason)'s `Display` use ("body read timeout").
///
/// New timeouts (a client's phases) may be added; match with a `_` arm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Timeout {
    /// No complete request head (or TLS handshake) in
    /// [`Server::http1_header_read_timeout`](crate::Server::http1_header_read_timeout).
    HeaderRead,
    /// A connection stayed idle between requests for
    /// [`Server::http1_keep_alive_timeout`](crate::Server::http1_keep_alive_timeout).
    KeepAlive,
    /// A handler's request-body read got no data for
    /// [`Server::body_read_timeout`](crate::Server::body_read_timeout).
    BodyRead,
    /// The client took none of our bytes for
    /// [`Server::send_timeout`](crate::Server::send_timeout) (or an upgraded
    /// stream's write timeout, or a WebSocket `Sender` waited that long for room).
    Send,
    /// A graceful shutdown ran out of
    /// [`Server::shutdown_timeout`](crate::Server::shutdown_timeout).
    Shutdown,
    /// A read of an [`Upgraded`](crate::Upgraded) stream got no data for its
    /// read timeout ([`Upgraded::set_read_timeout`](crate::Upgraded::set_read_timeout)).
    UpgradedRead,
    /// A WebSocket stayed silent for its idle timeout
    /// (`websocket::WebSocketUpgrade::idle_timeout`, feature `websocket`).
    WebSocketIdle,
}

impl Timeout {
    /// The timeout that `err` reports, if it is one of this crate's: a shortcut
    /// for `err.get_ref()` downcast to a [`TimeoutError`].
    ///
    /// ```
    /// use astra::{Body, ConnectionInfo, Request, Response, Timeout};
    /// use std::io::Read;
    ///
    /// fn upload(mut request: Request, _info: ConnectionInfo) -> Response {
    ///     let mut body = Vec::new();
    ///     match request.body_mut().reader().read_to_end(&mut body) {
    ///         Ok(n) => Response::new(Body::new(format!("got {n} bytes"))),
    ///         Err(err) if Timeout::of(&err) == Some(Timeout::BodyRead) => {
    ///             let mut response = Response::new(Body::new("too slow"));
    ///             *response.status_mut() = http::StatusCode::REQUEST_TIMEOUT;
    ///             response
    ///         }
    ///         Err(err) => Response::new(Body::new(format!("failed: {err}"))),
    ///     }
    /// }
    /// # let _ = upload;
    /// ```
    pub fn of(err: &io::Error) -> Option<Timeout> {
        TimeoutError::from_io(err).map(TimeoutError::timeout)
    }

    fn name(self) -> &'static str {
        match self {
            Timeout::HeaderRead => "header read timeout",
            Timeout::KeepAlive => "keep-alive timeout",
            Timeout::BodyRead => "body read timeout",
            Timeout::Send => "send timeout",
            Timeout::Shutdown => "shutdown timeout",
            Timeout::UpgradedRead => "upgraded read timeout",
            Timeout::WebSocketIdle => "WebSocket idle timeout",
        }
    }
}

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A timeout that failed an operation: the inner error of the `io::Error`
/// (of kind [`io::ErrorKind::TimedOut`]) a body read or an upgraded stream
/// returns. Find it with [`TimeoutError::from_io`] or [`Timeout::of`].
///
/// Its `Display` names the timeout and how long it waited; do not depend on
/// the rest of the wording.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeoutError {
    timeout: Timeout,
    after: Duration,
    what: &'static str,
}

impl TimeoutError {
    /// `timeout` fired after `after`; `what` says what got nothing in that
    /// time ("no data from the client").
    pub(crate) fn new(timeout: Timeout, after: Duration, what: &'static str) -> TimeoutError {
        TimeoutError {
            timeout,
            after,
            what,
        }
    }

    /// As an `io::Error` of kind `TimedOut`, with this as its inner error.
    pub(crate) fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, self)
    }

    /// The `TimeoutError` inside `err`, if it has one.
    pub fn from_io(err: &io::Error) -> Option<&TimeoutError> {
        err.get_ref()?.downcast_ref::<TimeoutError>()
    }

    /// Which timeout fired.
    pub fn timeout(&self) -> Timeout {
        self.timeout
    }

    /// How long it waited: the timeout's setting.
    pub fn duration(&self) -> Duration {
        self.after
    }
}

impl fmt::Display for TimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} for {:?}", self.timeout, self.what, self.after)
    }
}

impl Error for TimeoutError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_io_error_tells_its_timeout() {
        let err = TimeoutError::new(
            Timeout::BodyRead,
            Duration::from_millis(300),
            "no data from the client",
        )
        .into_io();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(Timeout::of(&err), Some(Timeout::BodyRead));
        assert_eq!(
            TimeoutError::from_io(&err).map(TimeoutError::duration),
            Some(Duration::from_millis(300))
        );
        assert_eq!(
            err.to_string(),
            "body read timeout: no data from the client for 300ms"
        );
        let other = io::Error::new(io::ErrorKind::TimedOut, "elsewhere");
        assert_eq!(Timeout::of(&other), None);
    }
}
