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

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use crate::body::{Body, Request, Response};
use crate::server::service::{ConnectionInfo, Service};
use crate::server::shutdown::ServerHandle;
use crate::server::upgrade::InMemoryUpgrade;
use crate::server::Server;

/// A request to call a [`Service`] with, on the calling thread, filled in as
/// a real connection would: HTTP/1.1, a `Host` header (`localhost` unless
/// set), a `Content-Length` for a body of known size, `Transfer-Encoding:
/// chunked` for a streamed one, and a [`ConnectionInfo`] (no peer address
/// and no TLS unless set).
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
        self.info.peer_addr = Some(addr);
        self
    }

    /// Makes the request arrive over TLS: the handler sees `info` in
    /// [`ConnectionInfo::tls`] (build it with [`TlsInfo::new`](crate::TlsInfo::new)).
    #[cfg(feature = "tls")]
    pub fn tls(mut self, info: crate::tls::TlsInfo) -> TestRequest {
        self.info.tls = Some(Arc::new(info));
        self
    }

    /// A WebSocket handshake for `uri`, as a browser sends it: a `GET` with
    /// `Upgrade: websocket`, `Connection: upgrade`, `Sec-WebSocket-Version:
    /// 13` and a `Sec-WebSocket-Key`. Add `Origin` or
    /// `Sec-WebSocket-Protocol` with [`header`](TestRequest::header); drive
    /// the socket with [`TestResponse::into_websocket`].
    #[cfg(feature = "websocket")]
    pub fn websocket(uri: impl Into<String>) -> TestRequest {
        TestRequest::get(uri)
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", WEBSOCKET_KEY)
    }

    /// The request as the handler would get it, and its connection info
    /// (without the in-memory connection that [`call`](TestRequest::call)
    /// lets a handler upgrade to).
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
    ///
    /// The request can be upgraded: a handler that answers it with
    /// [`Upgrade::respond`](crate::Upgrade::respond) (or a
    /// `WebSocketUpgrade`, feature `websocket`) gets an
    /// in-memory connection, and its continuation starts on a thread of its
    /// own (or, for a WebSocket, on a runtime of this process's tests) as
    /// soon as `call` returns, with a server's default timeouts. The test
    /// holds the other end: [`TestResponse::into_upgraded`].
    ///
    /// # Panics
    ///
    /// If the URI is not valid, or, for a handler that upgrades, if the
    /// runtime for upgraded connections cannot start (no descriptor left for
    /// its poller).
    pub fn call<S: Service>(self, service: &S) -> TestResponse {
        let (mut request, info) = self.into_parts();
        let (method, uri) = (request.method().clone(), request.uri().clone());
        #[cfg(feature = "websocket")]
        let websocket_key = request
            .headers()
            .get(header::SEC_WEBSOCKET_KEY)
            .map(|key| key.as_bytes().to_vec());
        let (client, server) = duplex();
        let server: crate::server::upgrade::Io = Box::new(server);
        request
            .extensions_mut()
            .insert(InMemoryUpgrade(Arc::new(Mutex::new(Some(server)))));
        let mut response = match catch_unwind(AssertUnwindSafe(|| service.call(request, info))) {
            Ok(response) => response,
            Err(panic) => crate::server::service::panic_response(&*panic, &method, &uri),
        };
        // Only a handler that upgrades needs the runtime: start it then.
        let upgraded = crate::server::upgrade::has_continuation(&response) && {
            let upgrades = crate::server::in_memory_upgrades()
                .unwrap_or_else(|err| panic!("TestRequest: cannot start upgrades: {err}"));
            upgrades.prepare(&mut response)
        };
        TestResponse {
            response,
            upgraded: upgraded.then_some(client),
            #[cfg(feature = "websocket")]
            websocket_key,
        }
    }
}

/// The `Sec-WebSocket-Key` of [`TestRequest::websocket`] (RFC 6455's sample).
#[cfg(feature = "websocket")]
const WEBSOCKET_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A handler's response, from [`TestRequest::call`].
#[derive(Debug)]
pub struct TestResponse {
    response: Response,
    /// The client's end of the connection, if the handler upgraded it.
    upgraded: Option<TestStream>,
    #[cfg(feature = "websocket")]
    websocket_key: Option<Vec<u8>>,
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

    /// The client's end of the connection the handler switched protocols
    /// on (with [`Upgrade::respond`](crate::Upgrade::respond)): what the test
    /// writes, the continuation reads, and the other way round.
    ///
    /// ```
    /// use astra::test::TestRequest;
    /// use astra::{Body, ConnectionInfo, Request, Response, ResponseBuilder, Upgrade};
    /// use std::io::{Read, Write};
    ///
    /// // Answers `Upgrade: shout` and sends back what it reads, upper-cased.
    /// fn shout(mut request: Request, _info: ConnectionInfo) -> Response {
    ///     let Some(upgrade) = Upgrade::from_request(&mut request) else {
    ///         return ResponseBuilder::new().status(426).body(Body::empty()).unwrap();
    ///     };
    ///     let switching = ResponseBuilder::new()
    ///         .status(101)
    ///         .header("connection", "upgrade")
    ///         .header("upgrade", "shout")
    ///         .body(Body::empty())
    ///         .unwrap();
    ///     upgrade.respond(switching, |mut stream| {
    ///         let mut buf = [0; 1024];
    ///         while let Ok(n @ 1..) = stream.read(&mut buf) {
    ///             let _ = stream.write_all(&buf[..n].to_ascii_uppercase());
    ///         }
    ///     })
    /// }
    ///
    /// let response = TestRequest::get("/")
    ///     .header("connection", "upgrade")
    ///     .header("upgrade", "shout")
    ///     .call(&shout);
    /// assert_eq!(response.status(), 101);
    /// let mut stream = response.into_upgraded()?;
    /// stream.write_all(b"hello")?;
    /// let mut reply = [0; 5];
    /// stream.read_exact(&mut reply)?;
    /// assert_eq!(&reply, b"HELLO");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// `InvalidInput` if the handler did not switch protocols (its status
    /// and body are in the message).
    pub fn into_upgraded(mut self) -> io::Result<TestStream> {
        match self.upgraded.take() {
            Some(stream) => Ok(stream),
            None => Err(self.not_upgraded()),
        }
    }

    /// The client's end of the WebSocket the handler accepted, for a
    /// request made with [`TestRequest::websocket`]: send and read messages
    /// with [`tungstenite`]'s client.
    ///
    /// ```
    /// use astra::test::TestRequest;
    /// use astra::websocket::{Message, Sender, WebSocketUpgrade};
    /// use astra::{ConnectionInfo, Request, Response};
    ///
    /// fn echo(mut request: Request, _info: ConnectionInfo) -> Response {
    ///     match WebSocketUpgrade::from_request(&mut request) {
    ///         Ok(upgrade) => upgrade.serve(|sender: &Sender, message: Message| {
    ///             let _ = sender.send(message);
    ///         }),
    ///         Err(refusal) => refusal,
    ///     }
    /// }
    ///
    /// let mut socket = TestRequest::websocket("/chat").call(&echo).into_websocket()?;
    /// socket.send(Message::text("hi")).unwrap();
    /// assert_eq!(socket.read().unwrap(), Message::text("hi"));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// `InvalidInput` if the handler refused the handshake (its status and
    /// body are in the message), `InvalidData` if its
    /// `Sec-WebSocket-Accept` does not answer the request's key.
    #[cfg(feature = "websocket")]
    pub fn into_websocket(mut self) -> io::Result<tungstenite::WebSocket<TestStream>> {
        let Some(stream) = self.upgraded.take() else {
            return Err(self.not_upgraded());
        };
        if let Some(key) = &self.websocket_key {
            let expected = tungstenite::handshake::derive_accept_key(key);
            let accept = self.headers().get(header::SEC_WEBSOCKET_ACCEPT);
            if accept.map(HeaderValue::as_bytes) != Some(expected.as_bytes()) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "Sec-WebSocket-Accept is {accept:?}, not {expected:?} for the request's key"
                    ),
                ));
            }
        }
        Ok(tungstenite::WebSocket::from_raw_socket(
            stream,
            tungstenite::protocol::Role::Client,
            None,
        ))
    }

    fn not_upgraded(self) -> io::Error {
        let status = self.status();
        let body = self
            .text()
            .unwrap_or_else(|err| format!("(unreadable: {err})"));
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the handler did not switch protocols: it answered {status} {body:?}"),
        )
    }
}

/// How long a [`TestStream`] read or write waits, unless changed: long for a
/// handler, short enough that a test fails instead of hanging.
const TEST_STREAM_TIMEOUT: Duration = Duration::from_secs(10);

/// How many bytes may wait in each direction of an in-memory connection
/// before the writer waits (as a socket buffer would make it).
const PIPE_CAPACITY: usize = 256 * 1024;

/// The test's end of an in-memory connection that a handler upgraded, from
/// [`TestResponse::into_upgraded`]: blocking `Read + Write`.
///
/// Reads and writes wait at most 10 seconds by default, then fail with
/// `ErrorKind::TimedOut`, so a test fails instead of hanging. A read returns
/// 0 once the server's end has shut down or been dropped (the continuation
/// returned); a write to it fails with `BrokenPipe`. Dropping this end is
/// the client going away (with every [`try_clone`](TestStream::try_clone)):
/// the server's reads see the end of the stream.
pub struct TestStream {
    pipes: Arc<ClientPipes>,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
}

/// The test's end, shared by a stream's clones: closed when the last goes.
struct ClientPipes {
    /// What the test writes and the server reads.
    to_server: Arc<Pipe>,
    /// What the server writes and the test reads.
    from_server: Arc<Pipe>,
}

impl Drop for ClientPipes {
    fn drop(&mut self) {
        // As `ServerEnd`'s: the server's writes fail before it reads the end.
        self.from_server.close_reading();
        self.to_server.close_writing();
    }
}

impl fmt::Debug for TestStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestStream")
            .field("read_timeout", &self.read_timeout)
            .field("write_timeout", &self.write_timeout)
            .finish_non_exhaustive()
    }
}

impl TestStream {
    /// How long a read waits for the server; `None`: for ever.
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.read_timeout = timeout;
    }

    /// How long a write waits for the server to take bytes; `None`: for
    /// ever.
    pub fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        self.write_timeout = timeout;
    }

    /// Ends what the test sends (as `shutdown(Write)` on a socket): the
    /// server reads the end of the stream, and can still write.
    pub fn shutdown_write(&self) {
        self.pipes.to_server.close_writing();
    }

    /// Another handle to the same end, as [`TcpStream::try_clone`]
    /// (`std::net`): one thread can read while another writes. The
    /// connection closes when the last handle is dropped. Never fails; the
    /// `Result` keeps code written for sockets unchanged.
    ///
    /// [`TcpStream::try_clone`]: std::net::TcpStream::try_clone
    pub fn try_clone(&self) -> io::Result<TestStream> {
        Ok(TestStream {
            pipes: self.pipes.clone(),
            read_timeout: self.read_timeout,
            write_timeout: self.write_timeout,
        })
    }
}

impl Read for TestStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let deadline = self
            .read_timeout
            .and_then(|t| Instant::now().checked_add(t));
        let pipe = &self.pipes.from_server;
        let mut state = pipe.lock();
        while state.bytes.is_empty() && !state.write_closed {
            state = pipe.wait(state, deadline, "read", self.read_timeout)?;
        }
        let n = state.take_into(buf);
        let waker = state.waker.take();
        drop(state);
        wake(waker);
        Ok(n)
    }
}

impl Write for TestStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let deadline = self
            .write_timeout
            .and_then(|t| Instant::now().checked_add(t));
        let pipe = &self.pipes.to_server;
        let mut state = pipe.lock();
        loop {
            if state.read_closed {
                return Err(server_gone());
            }
            if state.bytes.len() < PIPE_CAPACITY {
                break;
            }
            state = pipe.wait(state, deadline, "write", self.write_timeout)?;
        }
        let n = state.put(buf);
        let waker = state.waker.take();
        drop(state);
        wake(waker);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The server's end, as hyper's I/O traits: a task waits on it with wakers.
struct ServerEnd {
    /// What the server reads.
    incoming: Arc<Pipe>,
    /// What the server writes.
    outgoing: Arc<Pipe>,
}

impl hyper::rt::Read for ServerEnd {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let mut state = self.incoming.lock();
        if state.bytes.is_empty() {
            if !state.write_closed {
                state.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            return Poll::Ready(Ok(()));
        }
        let (front, _) = state.bytes.as_slices();
        let n = front.len().min(buf.remaining());
        buf.put_slice(&front[..n]);
        state.bytes.drain(..n);
        drop(state);
        self.incoming.changed.notify_all();
        Poll::Ready(Ok(()))
    }
}

impl hyper::rt::Write for ServerEnd {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut state = self.outgoing.lock();
        if state.read_closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the test's end of the connection is gone",
            )));
        }
        if state.bytes.len() >= PIPE_CAPACITY {
            state.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = state.put(buf);
        drop(state);
        self.outgoing.changed.notify_all();
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.outgoing.close_writing();
        Poll::Ready(Ok(()))
    }
}

impl Drop for ServerEnd {
    fn drop(&mut self) {
        // Reading side first: once the test sees the end of the stream, its
        // writes must already fail.
        self.incoming.close_reading();
        self.outgoing.close_writing();
    }
}

/// An in-memory connection: the test's end and the server's.
fn duplex() -> (TestStream, ServerEnd) {
    let to_server = Arc::new(Pipe::default());
    let from_server = Arc::new(Pipe::default());
    let server = ServerEnd {
        incoming: to_server.clone(),
        outgoing: from_server.clone(),
    };
    let client = TestStream {
        pipes: Arc::new(ClientPipes {
            to_server,
            from_server,
        }),
        read_timeout: Some(TEST_STREAM_TIMEOUT),
        write_timeout: Some(TEST_STREAM_TIMEOUT),
    };
    (client, server)
}

/// One direction of an in-memory connection. The test's end waits on the
/// condition variable, the server's end with a waker.
#[derive(Default)]
struct Pipe {
    state: Mutex<PipeState>,
    changed: Condvar,
}

#[derive(Default)]
struct PipeState {
    bytes: VecDeque<u8>,
    /// The writer is done: reads end once `bytes` is empty.
    write_closed: bool,
    /// The reader is gone: writes fail.
    read_closed: bool,
    /// The server's task waiting on this pipe (to read, or for room).
    waker: Option<Waker>,
}

impl PipeState {
    fn take_into(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.bytes.len());
        for (to, from) in buf.iter_mut().zip(self.bytes.drain(..n)) {
            *to = from;
        }
        n
    }

    fn put(&mut self, buf: &[u8]) -> usize {
        let n = buf
            .len()
            .min(PIPE_CAPACITY - self.bytes.len().min(PIPE_CAPACITY));
        self.bytes.extend(&buf[..n]);
        n
    }
}

impl Pipe {
    fn lock(&self) -> MutexGuard<'_, PipeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for the other end to change the pipe, until `deadline`.
    fn wait<'a>(
        &self,
        state: MutexGuard<'a, PipeState>,
        deadline: Option<Instant>,
        what: &str,
        timeout: Option<Duration>,
    ) -> io::Result<MutexGuard<'a, PipeState>> {
        let Some(deadline) = deadline else {
            return Ok(self.changed.wait(state).unwrap_or_else(|e| e.into_inner()));
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "TestStream: {what} timed out after {:?}",
                    timeout.unwrap_or_default()
                ),
            ));
        }
        let (state, _) = self
            .changed
            .wait_timeout(state, left)
            .unwrap_or_else(|e| e.into_inner());
        Ok(state)
    }

    fn close_writing(&self) {
        let waker = {
            let mut state = self.lock();
            state.write_closed = true;
            state.waker.take()
        };
        self.changed.notify_all();
        wake(waker);
    }

    fn close_reading(&self) {
        let waker = {
            let mut state = self.lock();
            state.read_closed = true;
            state.bytes.clear();
            state.waker.take()
        };
        self.changed.notify_all();
        wake(waker);
    }
}

/// Wakes outside the pipe's lock: the woken task may run at once.
fn wake(waker: Option<Waker>) {
    if let Some(waker) = waker {
        waker.wake();
    }
}

fn server_gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the server's end of the connection is gone",
    )
}

/// A real server on `127.0.0.1:0`, serving on a thread of its own, shut down
/// gracefully (and waited for) when dropped: for tests that want real
/// sockets and clients. If `serve` failed, or panicked, the drop panics with
/// that (unless the test is already panicking), so the test fails.
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
            // serve returns within its shutdown timeout; its error or its
            // panic is the test's to see, unless the test is already failing.
            let outcome = thread.join();
            if std::thread::panicking() {
                return;
            }
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(err)) => panic!("TestServer: serve failed: {err}"),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    }
}
