//! TLS (feature `tls`): certificates, the handshake and the encrypted stream.
//!
//! rustls is sans-IO: it turns bytes into bytes. [`TlsStream`] feeds it from
//! a connection's socket through hyper's `Read`/`Write` traits, so the
//! handshake and every record run inside the connection's task, woken by the
//! reactor like any other read or write: no thread waits on a slow client.
//! Nothing here loops on rustls's "wants read/write" alone (the shape of
//! RUSTSEC-2024-0336): every loop either makes progress on the socket or
//! returns `Pending` or an error.
//!
//! `config` holds [`TlsConfig`] (certificates, provider, ALPN, the slot a
//! reload replaces), `stream` the [`TlsStream`], `info` [`TlsInfo`].

mod config;
mod info;
mod stream;

pub use config::TlsConfig;
pub(crate) use config::{default_alpn, TlsSlot};
pub use info::TlsInfo;
pub(crate) use stream::TlsStream;
