#![doc = include_str!("../README.md")]
#![deny(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![doc(test(attr(deny(warnings))))]
#![cfg_attr(docsrs, feature(doc_cfg))]
// Under `--cfg astra_loom` only the runtime is built, for its models.
#![cfg_attr(astra_loom, allow(dead_code, unused_imports))]

#[cfg(not(astra_loom))]
mod activation;
#[cfg(not(astra_loom))]
mod body;
#[cfg(not(astra_loom))]
mod conn;
#[cfg(all(feature = "http2", not(astra_loom)))]
mod detect;
#[cfg(not(astra_loom))]
mod error;
#[cfg(not(astra_loom))]
mod listener;
#[cfg(not(astra_loom))]
mod net;
mod runtime;
#[cfg(not(astra_loom))]
mod server;
#[cfg(not(astra_loom))]
mod service;
#[cfg(not(astra_loom))]
mod shutdown;
#[cfg(not(astra_loom))]
mod stats;
#[cfg(all(any(feature = "tls", feature = "websocket"), not(astra_loom)))]
mod sync_io;
#[cfg(not(astra_loom))]
pub mod test;
#[cfg(not(astra_loom))]
mod timeouts;
#[cfg(all(feature = "tls", not(astra_loom)))]
mod tls;
#[cfg(all(feature = "websocket", not(astra_loom)))]
mod trim;
#[cfg(not(astra_loom))]
mod upgrade;
#[cfg(all(feature = "websocket", not(astra_loom)))]
#[cfg_attr(docsrs, doc(cfg(feature = "websocket")))]
pub mod websocket;

#[cfg(not(astra_loom))]
pub use activation::ActivatedSockets;
#[cfg(not(astra_loom))]
pub use body::{Body, BodyReader, Request, Response, ResponseBuilder};
#[cfg(not(astra_loom))]
pub use error::{Timeout, TimeoutError};
/// The rustls this crate is built with, for [`TlsConfig`]'s `From<ServerConfig>`
/// and the types [`TlsInfo`] returns.
#[cfg(all(feature = "tls", not(astra_loom)))]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub use rustls;
#[cfg(not(astra_loom))]
pub use server::Server;
#[cfg(not(astra_loom))]
pub use service::{ConnectionInfo, PeerCredentials, Service};
#[cfg(not(astra_loom))]
pub use shutdown::ServerHandle;
#[cfg(not(astra_loom))]
pub use stats::{CloseReason, Stats};
#[cfg(all(feature = "tls", not(astra_loom)))]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub use tls::{TlsConfig, TlsInfo};
#[cfg(not(astra_loom))]
pub use upgrade::{Upgrade, Upgraded};
