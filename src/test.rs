//! Testing services: call one without a socket ([`TestRequest`]), or start a
//! real server on `127.0.0.1:0` that stops when dropped ([`TestServer`]).
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

use std::fmt;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::thread::JoinHandle;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use crate::body::{Body, Request, Response};
use crate::service::{ConnectionInfo, Service};
use crate::{Server, ServerHandle};

/// A request to call a [`Service`] with, on the calling thread, filled in as
/// a real connection would: HTTP/1.1, a `Host` header (`localhost` unless
/// set), a `Content-Length` for a body of known size, `Transfer-Encoding:
/// chunked` for a streamed one, and a [`ConnectionInfo`] (no peer address
/// unless set).
pub struct TestRequest {
    method: Method,
    uri: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: TestBody,
    info: ConnectionInfo,
}

enum TestBody {
    Empty,
    Full(Bytes),
    Reader(Box<dyn Read + Send>),
}

impl fmt::Debug for TestRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestRequest")
            .field("method", &self.method)
            .field("uri", &self.uri)
            .field("headers", &self.headers)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl TestRequest {
    /// A request with `method` for `uri` (a path, or an absolute URI).
    pub fn new(method: Method, uri: impl Into<String>) -> TestRequest {
        TestRequest {
            method,
            uri: uri.into(),
            headers: Vec::new(),
            body: TestBody::Empty,
            info: ConnectionInfo::default(),
        }
    }

    /// A `GET` for `uri`.
    pub fn get(uri: impl Into<String>) -> TestRequest {
        TestRequest::new(Method::GET, uri)
    }

    /// A `POST` for `uri`.
    pub fn post(uri: impl Into<String>) -> TestRequest {
        TestRequest::new(Method::POST, uri)
    }

    /// Adds a header.
    ///
    /// # Panics
    ///
    /// If the name or the value is not valid in HTTP.
    pub fn header(mut self, name: &str, value: &str) -> TestRequest {
        let name = HeaderName::try_from(name)
            .unwrap_or_else(|err| panic!("TestRequest::header: bad name {name:?}: {err}"));
        let value = HeaderValue::try_from(value)
            .unwrap_or_else(|err| panic!("TestRequest::header: bad value {value:?}: {err}"));
        self.headers.push((name, value));
        self
    }

    /// A body of known size, sent with its `Content-Length`.
    pub fn body(mut self, body: impl Into<Bytes>) -> TestRequest {
        self.body = TestBody::Full(body.into());
        self
    }

    /// A streamed body, read by the handler as it goes (sent chunked).
    pub fn body_reader(mut self, reader: impl Read + Send + 'static) -> TestRequest {
        self.body = TestBody::Reader(Box::new(reader));
        self
    }

    /// The client's address the handler sees in
    /// [`ConnectionInfo::peer_addr`].
    pub fn peer_addr(mut self, addr: SocketAddr) -> TestRequest {
        self.info = ConnectionInfo::new(Some(addr));
        self
    }

    /// The request as the handler would get it, and its connection info.
    ///
    /// # Panics
    ///
    /// If the URI is not valid.
    pub fn into_parts(self) -> (Request, ConnectionInfo) {
        let mut headers = HeaderMap::new();
        for (name, value) in self.headers {
            headers.append(name, value);
        }
        if !headers.contains_key(header::HOST) {
            headers.insert(header::HOST, HeaderValue::from_static("localhost"));
        }
        let body = match self.body {
            TestBody::Empty => Body::empty(),
            TestBody::Full(bytes) => {
                headers
                    .entry(header::CONTENT_LENGTH)
                    .or_insert_with(|| HeaderValue::from(bytes.len()));
                Body::new(bytes)
            }
            TestBody::Reader(reader) => {
                if !headers.contains_key(header::CONTENT_LENGTH) {
                    headers.insert(
                        header::TRANSFER_ENCODING,
                        HeaderValue::from_static("chunked"),
                    );
                }
                Body::wrap_reader(reader)
            }
        };
        let mut request = http::Request::builder()
            .method(self.method)
            .uri(self.uri.as_str())
            .version(http::Version::HTTP_11)
            .body(body)
            .unwrap_or_else(|err| panic!("TestRequest: bad URI {:?}: {err}", self.uri));
        *request.headers_mut() = headers;
        (request, self.info)
    }

    /// Calls `service` with this request on the calling thread. A panic in
    /// the handler becomes the `500 Internal Server Error` the server would
    /// send.
    pub fn call<S: Service>(self, service: &S) -> TestResponse {
        let (request, info) = self.into_parts();
        let (method, uri) = (request.method().clone(), request.uri().clone());
        let response = match catch_unwind(AssertUnwindSafe(|| service.call(request, info))) {
            Ok(response) => response,
            Err(panic) => crate::service::panic_response(&*panic, &method, &uri),
        };
        TestResponse { response }
    }
}

/// A handler's response, from [`TestRequest::call`].
#[derive(Debug)]
pub struct TestResponse {
    response: Response,
}

impl TestResponse {
    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.response.status()
    }

    /// The headers.
    pub fn headers(&self) -> &HeaderMap {
        self.response.headers()
    }

    /// The whole body (a `wrap_reader` body is read to its end).
    ///
    /// # Errors
    ///
    /// What the body's reader returned.
    pub fn bytes(self) -> io::Result<Vec<u8>> {
        let mut body = self.response.into_body();
        let mut all = Vec::new();
        body.reader().read_to_end(&mut all)?;
        Ok(all)
    }

    /// The whole body as UTF-8 text.
    ///
    /// # Errors
    ///
    /// What the body's reader returned, or `InvalidData` if it is not UTF-8.
    pub fn text(self) -> io::Result<String> {
        String::from_utf8(self.bytes()?)
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))
    }

    /// The response itself.
    pub fn into_inner(self) -> Response {
        self.response
    }
}

/// A real server on `127.0.0.1:0`, serving on a thread of its own, shut down
/// gracefully (and waited for) when dropped: for tests that want real
/// sockets and clients.
///
/// ```
/// use astra::test::TestServer;
/// use astra::{Body, Response, Server};
/// use std::io::{Read, Write};
///
/// let server = TestServer::start(Server::bind("127.0.0.1:0"), |_request, _info| {
///     Response::new(Body::new("real"))
/// });
/// let mut stream = std::net::TcpStream::connect(server.addr())?;
/// stream.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")?;
/// let mut reply = String::new();
/// stream.read_to_string(&mut reply)?;
/// assert!(reply.ends_with("real"));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct TestServer {
    addr: SocketAddr,
    handle: ServerHandle,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl TestServer {
    /// Starts serving `service` with `server` (bound to a TCP address; use
    /// `127.0.0.1:0` for a free port).
    ///
    /// # Panics
    ///
    /// If the server has no TCP address (a Unix socket server).
    pub fn start<S: Service + Sync>(server: Server, service: S) -> TestServer {
        let addr = server
            .local_addr()
            .expect("TestServer needs a server bound to a TCP address");
        let handle = server.handle();
        let thread = std::thread::Builder::new()
            .name("astra-test-server".into())
            .spawn(move || server.serve(service))
            .expect("start the test server's thread");
        TestServer {
            addr,
            handle,
            thread: Some(thread),
        }
    }

    /// Where the server listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A handle to the server (stats, shutdown).
    pub fn handle(&self) -> &ServerHandle {
        &self.handle
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.handle.shutdown();
        if let Some(thread) = self.thread.take() {
            // serve returns within its shutdown timeout; a panic in it is
            // the test's to see, unless the test is already failing.
            if let Err(panic) = thread.join() {
                if !std::thread::panicking() {
                    std::panic::resume_unwind(panic);
                }
            }
        }
    }
}
