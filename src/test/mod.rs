//! Testing services: call one without a socket ([`TestRequest`]), or start a
//! real server on `127.0.0.1:0` that stops when dropped ([`TestServer`]).
//! A handler that switches protocols (an [`Upgrade`](crate::Upgrade), a
//! WebSocket) gets an in-memory connection whose other end the test drives
//! ([`TestResponse::into_upgraded`], and with feature `websocket`
//! `TestResponse::into_websocket`).
//!
//! ```
//! use astra::test::TestRequest;
//! use astra::{Body, ConnectionInfo, Request, Response};
//!
//! fn hello(request: Request, info: ConnectionInfo) -> Response {
//!     let who = info.peer_addr().map_or("stranger".into(), |a| a.ip().to_string());
//!     let host = request.headers()["host"].to_str().unwrap().to_owned();
//!     Response::new(Body::new(format!("hello {who} on {host}")))
//! }
//!
//! let response = TestRequest::get("/").peer_addr("10.0.0.7:4000".parse()?).call(&hello);
//! assert_eq!(response.status(), 200);
//! assert_eq!(response.text()?, "hello 10.0.0.7 on localhost");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod pipe;
mod request;
mod server;

pub use pipe::TestStream;
pub use request::{TestRequest, TestResponse};
pub use server::TestServer;
