//! Sockets registered with the reactor (TCP and Unix streams, listeners),
//! who is at the other end of a Unix socket, the rewind that puts back the
//! bytes read to choose a protocol, and the blocking view that sans-IO
//! libraries (rustls, tungstenite) drive.

pub(crate) mod credentials;
pub(crate) mod listener;
#[cfg(feature = "http2")]
pub(crate) mod rewind;
pub(crate) mod stream;
#[cfg(any(feature = "tls", feature = "websocket"))]
pub(crate) mod sync_io;
