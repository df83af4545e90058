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
//! [`Upgraded`]: crate::Upgraded

// The rooms: `handshake` checks and accepts the upgrade (WebSocketUpgrade and
// its options), `sender` is the queue other threads send through, `socket`
// runs a messages-mode socket as its connection's task, `trim` gives big
// freed buffers back to the OS.

mod handshake;
mod sender;
mod socket;
mod trim;

pub use handshake::WebSocketUpgrade;
pub use sender::{SendError, Sender};
pub use tungstenite;
pub use tungstenite::protocol::frame::coding::CloseCode;
pub use tungstenite::protocol::CloseFrame;
pub use tungstenite::Message;

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
