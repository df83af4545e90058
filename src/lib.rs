#![doc = include_str!("../README.md")]
#![deny(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![doc(test(attr(deny(warnings))))]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod conn;
#[cfg(feature = "http2")]
mod detect;
mod net;
mod runtime;
mod server;
mod service;
mod shutdown;
mod timeouts;

pub use body::{Body, BodyReader, Request, Response, ResponseBuilder};
pub use server::Server;
pub use service::{ConnectionInfo, Service};
pub use shutdown::ServerHandle;
