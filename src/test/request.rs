//! [`TestRequest`]: a request built as a connection would deliver it, called
//! on the test's thread, and the [`TestResponse`] it gives.

use std::fmt;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use super::pipe::{duplex, TestStream};
use crate::body::{Body, Request, Response};
use crate::server::service::{ConnectionInfo, Service};
use crate::server::upgrade::InMemoryUpgrade;

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
            let upgrades = crate::server::upgrade::in_memory_upgrades()
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
