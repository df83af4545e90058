#![doc = include_str!("../README.md")]
#![deny(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![doc(test(attr(deny(warnings))))]
#![cfg_attr(docsrs, feature(doc_cfg))]
// Under `--cfg astra_loom` only the runtime is built, for its models.
#![cfg_attr(astra_loom, allow(dead_code, unused_imports))]

#[cfg(not(astra_loom))]
mod body;
#[cfg(not(astra_loom))]
mod error;
#[cfg(not(astra_loom))]
mod io;
mod runtime;
#[cfg(not(astra_loom))]
mod server;
#[cfg(not(astra_loom))]
pub mod test;
#[cfg(all(feature = "tls", not(astra_loom)))]
mod tls;
#[cfg(all(feature = "websocket", not(astra_loom)))]
#[cfg_attr(docsrs, doc(cfg(feature = "websocket")))]
pub mod websocket;

#[cfg(not(astra_loom))]
pub use body::{Body, BodyReader, Request, Response, ResponseBuilder};
#[cfg(not(astra_loom))]
pub use error::{Timeout, TimeoutError};
#[cfg(not(astra_loom))]
pub use io::credentials::PeerCredentials;
/// The rustls this crate is built with, for [`TlsConfig`]'s `From<ServerConfig>`
/// and the types [`TlsInfo`] returns.
#[cfg(all(feature = "tls", not(astra_loom)))]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub use rustls;
#[cfg(not(astra_loom))]
pub use server::activation::ActivatedSockets;
#[cfg(not(astra_loom))]
pub use server::service::{ConnectionInfo, Service};
#[cfg(not(astra_loom))]
pub use server::shutdown::ServerHandle;
#[cfg(not(astra_loom))]
pub use server::stats::{CloseReason, Stats};
#[cfg(not(astra_loom))]
pub use server::upgrade::{Upgrade, Upgraded};
#[cfg(not(astra_loom))]
pub use server::Server;
#[cfg(all(feature = "tls", not(astra_loom)))]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub use tls::{TlsConfig, TlsInfo};
