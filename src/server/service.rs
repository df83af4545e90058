//! The `Service` trait users implement, and its adapter to hyper.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use http::{Method, StatusCode, Uri};

use super::access_log::AccessRecord;
use crate::body::{Body, Request, Response};
use crate::io::credentials::PeerCredentials;
use crate::runtime::pool::{Pool, QueuedCall};
use crate::server::timeouts::{Activity, InFlight};
use crate::server::upgrade::UpgradeContext;

/// Information about the connection a request arrived on.
#[derive(Clone, Debug, Default)]
pub struct ConnectionInfo {
    pub(crate) peer_addr: Option<SocketAddr>,
    pub(crate) local_addr: Option<SocketAddr>,
    /// The connection came over a Unix domain socket.
    pub(crate) unix: bool,
    pub(crate) peer_credentials: Option<PeerCredentials>,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<Arc<crate::tls::TlsInfo>>,
}

impl ConnectionInfo {
    /// The address of the client, if the socket could tell it: `None` on a
    /// Unix domain socket (see [`ConnectionInfo::is_unix_socket`]).
    ///
    /// ```
    /// use astra::{Body, ConnectionInfo, Request, Response};
    ///
    /// fn who(_request: Request, info: ConnectionInfo) -> Response {
    ///     match info.peer_addr() {
    ///         Some(addr) => Response::new(Body::new(format!("hello, {addr}"))),
    ///         None => Response::new(Body::new("hello, stranger")),
    ///     }
    /// }
    /// # let _ = who(Request::new(Body::empty()), ConnectionInfo::default());
    /// ```
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer_addr
    }

    /// The server's own address on this connection: the local address of the
    /// accepted socket (with a server bound to `0.0.0.0`, the one address the
    /// client reached, such as `127.0.0.1:3000`). `None` on a Unix domain
    /// socket, which has no IP address (its path is
    /// [`Server::local_unix_path`](crate::Server::local_unix_path)), and in
    /// [`ConnectionInfo::new`] and [`crate::test`] requests.
    ///
    /// ```
    /// use astra::{Body, ConnectionInfo, Request, Response};
    ///
    /// fn which_port(_request: Request, info: ConnectionInfo) -> Response {
    ///     match info.local_addr() {
    ///         Some(addr) => Response::new(Body::new(format!("you reached port {}", addr.port()))),
    ///         None => Response::new(Body::new("you came over a Unix socket")),
    ///     }
    /// }
    /// # let _ = which_port(Request::new(Body::empty()), ConnectionInfo::default());
    /// ```
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Information for a connection from `peer_addr`, for calling a service
    /// in tests (see [`crate::test`]); everything else is as on a plain TCP
    /// connection.
    ///
    /// ```
    /// use astra::ConnectionInfo;
    ///
    /// let info = ConnectionInfo::new(Some("127.0.0.1:9000".parse().unwrap()));
    /// assert_eq!(info.peer_addr().unwrap().port(), 9000);
    /// ```
    pub fn new(peer_addr: Option<SocketAddr>) -> ConnectionInfo {
        ConnectionInfo {
            peer_addr,
            ..ConnectionInfo::default()
        }
    }

    /// Whether the connection came over a Unix domain socket (a server bound
    /// with [`Server::bind_unix`](crate::Server::bind_unix), say) rather than
    /// TCP.
    ///
    /// ```
    /// use astra::{Body, ConnectionInfo, Request, Response};
    ///
    /// fn local_only(_request: Request, info: ConnectionInfo) -> Response {
    ///     if info.is_unix_socket() {
    ///         Response::new(Body::new("hello, neighbour"))
    ///     } else {
    ///         Response::new(Body::new("hello over the network"))
    ///     }
    /// }
    /// # let _ = local_only(Request::new(Body::empty()), ConnectionInfo::default());
    /// ```
    pub fn is_unix_socket(&self) -> bool {
        self.unix
    }

    /// Who the client of a Unix domain socket is: its process, user and group,
    /// as the kernel recorded them when it connected (`SO_PEERCRED`).
    ///
    /// `None` over TCP, and where the kernel cannot tell (`SO_PEERCRED` exists
    /// on Linux and Android only).
    ///
    /// ```
    /// use astra::{Body, ConnectionInfo, Request, Response, ResponseBuilder};
    ///
    /// fn only_root(_request: Request, info: ConnectionInfo) -> Response {
    ///     match info.peer_credentials() {
    ///         Some(peer) if peer.uid() == 0 => Response::new(Body::new("hello, root")),
    ///         _ => ResponseBuilder::new().status(403).body(Body::empty()).unwrap(),
    ///     }
    /// }
    /// # let _ = only_root(Request::new(Body::empty()), ConnectionInfo::default());
    /// ```
    pub fn peer_credentials(&self) -> Option<PeerCredentials> {
        self.peer_credentials
    }

    /// The connection's TLS session (server name, ALPN protocol, version,
    /// client certificates), or `None` on a plain-HTTP connection.
    ///
    /// ```
    /// use astra::{Body, ConnectionInfo, Request, Response};
    ///
    /// fn whoami(_request: Request, info: ConnectionInfo) -> Response {
    ///     let name = info.tls().and_then(|tls| tls.server_name()).unwrap_or("(none)");
    ///     Response::new(Body::new(format!("you asked for {name}")))
    /// }
    /// # let _ = whoami(Request::new(Body::empty()), ConnectionInfo::default());
    /// ```
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls(&self) -> Option<&crate::tls::TlsInfo> {
        self.tls.as_deref()
    }
}

/// A blocking HTTP handler: turns a request into a response.
///
/// Implemented for every `Fn(Request, ConnectionInfo) -> Response` closure that is
/// `Send + 'static`, and for `Arc<S>` of any `Sync` service. Each call runs on a
/// worker thread of its own, so it may block: sleep, read files, query a database.
/// A panic inside `call` is caught: the client gets `500 Internal Server Error`
/// and the server keeps going.
///
/// ```
/// use astra::{Body, ConnectionInfo, Request, Response, Service};
/// use std::sync::atomic::{AtomicUsize, Ordering};
///
/// struct Counter {
///     hits: AtomicUsize,
/// }
///
/// impl Service for Counter {
///     fn call(&self, _request: Request, _info: ConnectionInfo) -> Response {
///         let n = self.hits.fetch_add(1, Ordering::Relaxed) + 1;
///         Response::new(Body::new(format!("hit number {n}")))
///     }
/// }
/// # let counter = Counter { hits: AtomicUsize::new(0) };
/// # let _ = counter.call(Request::new(Body::empty()), ConnectionInfo::default());
/// ```
pub trait Service: Send + 'static {
    /// Handles one request.
    fn call(&self, request: Request, info: ConnectionInfo) -> Response;
}

impl<F> Service for F
where
    F: Fn(Request, ConnectionInfo) -> Response + Send + 'static,
{
    fn call(&self, request: Request, info: ConnectionInfo) -> Response {
        self(request, info)
    }
}

impl<S> Service for Arc<S>
where
    S: Service + Sync,
{
    fn call(&self, request: Request, info: ConnectionInfo) -> Response {
        (**self).call(request, info)
    }
}

/// How a connection reaches the user's service from any worker thread.
pub(crate) trait SharedService: Send + Sync + 'static {
    fn call_shared(&self, request: Request, info: ConnectionInfo) -> Response;
}

/// A `Sync` service, shared by reference (`Server::serve`).
pub(crate) struct ByRef<S>(pub(crate) S);

impl<S: Service + Sync> SharedService for ByRef<S> {
    fn call_shared(&self, request: Request, info: ConnectionInfo) -> Response {
        self.0.call(request, info)
    }
}

/// A `Clone` service that need not be `Sync`: each request gets its own clone
/// (`Server::serve_clone`), taken under a lock that is held only for the clone.
pub(crate) struct ByClone<S>(pub(crate) Mutex<S>);

impl<S: Service + Clone> SharedService for ByClone<S> {
    fn call_shared(&self, request: Request, info: ConnectionInfo) -> Response {
        let service = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        service.call(request, info)
    }
}

/// The service hyper sees for one connection: each request's handler is user
/// code run by the pool (`Pool::call_user`), and hyper waits for its response
/// without holding a thread.
#[derive(Clone)]
pub(crate) struct HyperService {
    pub(crate) service: Arc<dyn SharedService>,
    pub(crate) info: ConnectionInfo,
    pub(crate) pool: Pool,
    pub(crate) activity: Arc<Activity>,
    /// How long a handler's body read waits for the next chunk.
    pub(crate) body_read_timeout: Option<std::time::Duration>,
    pub(crate) upgrades: Arc<UpgradeContext>,
    /// `Server::access_log`: one log line per request.
    pub(crate) access_log: bool,
}

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for HyperService {
    type Response = http::Response<ResponseBody>;
    type Error = std::convert::Infallible;
    type Future = PendingResponse;

    fn call(&self, request: http::Request<hyper::body::Incoming>) -> PendingResponse {
        let (in_flight, method, uri, access) = self.start_request(&request);
        let mut request = Some(request);
        if may_run_inline(request.as_ref().expect("not taken yet")) {
            // The response is finished here, and hyper polls a future that
            // is ready at once: no allocation for it, and no state kept for
            // a second poll.
            let inline = self.pool.try_inline(|| {
                let request = self.user_request(request.take().expect("called once"));
                self.service.call_shared(request, self.info.clone())
            });
            if let Ok(mut outcome) = inline {
                if let Ok(response) = &mut outcome {
                    self.close_if_shutting_down(response);
                }
                let response = finish(outcome, &method, &uri, in_flight, access, &self.upgrades);
                return PendingResponse::Ready(Some(response));
            }
            // Not on a worker free to run it: queued below.
        }
        let request = request.take().expect("the handler has not run");
        self.queue(request, method, uri, in_flight, access)
    }
}

/// The service hyper sees for an HTTP/2 connection: the handler runs when
/// its stream's response future is first polled ([`StreamResponse`]), not
/// as a job. A type of its own, so that HTTP/1's `PendingResponse` (inlined
/// into hyper's HTTP/1 dispatcher) stays as small as it is.
#[cfg(feature = "http2")]
#[derive(Clone)]
pub(crate) struct Http2Service(pub(crate) HyperService);

#[cfg(feature = "http2")]
impl hyper::service::Service<http::Request<hyper::body::Incoming>> for Http2Service {
    type Response = http::Response<ResponseBody>;
    type Error = std::convert::Infallible;
    type Future = StreamResponse;

    fn call(&self, request: http::Request<hyper::body::Incoming>) -> StreamResponse {
        let service = &self.0;
        let (in_flight, method, uri, access) = service.start_request(&request);
        StreamResponse::Start(Some(Deferred {
            service: service.clone(),
            request,
            method,
            uri,
            in_flight,
            access,
        }))
    }
}

impl HyperService {
    /// What every request starts with, over either protocol: it counts as in
    /// flight; its method and URI are kept to name it if its handler panics;
    /// with `Server::access_log`, its record is begun.
    #[inline(always)]
    fn start_request(
        &self,
        request: &http::Request<hyper::body::Incoming>,
    ) -> (InFlight, Method, Uri, Option<Box<AccessRecord>>) {
        let in_flight = self.activity.request_started();
        let method = request.method().clone();
        let uri = request.uri().clone();
        let access = self.access_log.then(|| {
            Box::new(AccessRecord {
                peer: self.info.peer_addr,
                method: method.clone(),
                uri: uri.clone(),
                version: request.version(),
                started: std::time::Instant::now(),
                status: StatusCode::OK,
                bytes: 0,
            })
        });
        (in_flight, method, uri, access)
    }

    /// The handler as a job of the pool, for a request whose handler cannot
    /// run where its future is polled.
    fn queue(
        &self,
        request: http::Request<hyper::body::Incoming>,
        method: Method,
        uri: Uri,
        in_flight: InFlight,
        access: Option<Box<AccessRecord>>,
    ) -> PendingResponse {
        let request = self.user_request(request);
        let service = self.service.clone();
        let info = self.info.clone();
        let call = self
            .pool
            .queue_call(move || service.call_shared(request, info));
        PendingResponse::Queued(Queued {
            call,
            request: (method, uri),
            in_flight: Some(in_flight),
            upgrades: self.upgrades.clone(),
            access,
        })
    }

    /// The request as the handler sees it. Inlined, as are `finish` and
    /// `Pool::try_inline`: each call boundary a request or response crossed
    /// by value was a `memcpy` (callgrind: 60 to 100 instructions a request).
    #[inline(always)]
    fn user_request(&self, request: http::Request<hyper::body::Incoming>) -> Request {
        request.map(|incoming| Body::incoming(incoming, self.body_read_timeout, self.pool.clone()))
    }

    /// Marks the response to a request whose handler ran inline as the
    /// connection's last if a graceful shutdown started meanwhile. The
    /// connection task could not hear of the shutdown while the handler ran
    /// in its poll, so hyper would write the response as keep-alive and then
    /// close the idle connection; a queued handler's connection is told by
    /// `conn::Watch` and hyper adds the header itself.
    fn close_if_shutting_down(&self, response: &mut Response) {
        if self.upgrades.signal.is_requested()
            && !crate::server::upgrade::has_continuation(response)
        {
            response.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
    }
}

/// Whether a request's handler may run inside its connection's poll (if the
/// pool so chooses, see `Pool::call_user`): an HTTP/1 request with no body.
/// Nothing then needs the connection task while the handler runs (no body to
/// feed it; HTTP/1 serves one request at a time), and the request costs one
/// poll of its connection instead of two plus a job.
///
/// Never for HTTP/2: hyper calls the service from the connection's task, so a
/// blocking handler there would stall every other stream of the connection.
/// HTTP/2 handlers run in their stream's own task instead (`StreamResponse`).
fn may_run_inline(request: &http::Request<hyper::body::Incoming>) -> bool {
    request.version() < http::Version::HTTP_2 && http_body::Body::is_end_stream(request.body())
}

/// The response a panicking handler gets: a 500, and a log line naming the
/// request.
pub(crate) fn panic_response(
    panic: &(dyn std::any::Any + Send),
    method: &Method,
    uri: &Uri,
) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string panic payload");
    // A `log` backend may panic too (an `eprintln!` to a closed stderr):
    // the client still gets its 500.
    let _ = std::panic::catch_unwind(|| {
        log::error!("handler panicked on {method} {uri}: {message}; answering 500");
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response
}

/// The response hyper sends for a handler's outcome: a panic becomes a 500,
/// an upgrade is set up, and the body carries the request's in-flight count
/// and access record until hyper has sent it.
#[inline(always)]
fn finish(
    outcome: std::thread::Result<Response>,
    method: &Method,
    uri: &Uri,
    in_flight: InFlight,
    mut access: Option<Box<AccessRecord>>,
    upgrades: &Arc<UpgradeContext>,
) -> http::Response<ResponseBody> {
    let mut response = match outcome {
        Ok(response) => response,
        Err(panic) => panic_response(&*panic, method, uri),
    };
    // Only an upgrade's response carries extensions of ours.
    if !response.extensions().is_empty() && upgrades.prepare(&mut response) {
        in_flight.upgraded();
    }
    if let Some(access) = &mut access {
        access.status = response.status();
    }
    response.map(|body| ResponseBody {
        body,
        _in_flight: in_flight,
        access,
    })
}

/// Resolves to the response hyper sends.
pub(crate) enum PendingResponse {
    /// The handler ran inline (`HyperService::call`); `None` once taken.
    Ready(Option<http::Response<ResponseBody>>),
    /// The handler runs as a job of the pool. Not boxed: `Ready` is the
    /// larger variant, so this one costs no room.
    Queued(Queued),
}

// `Queued` must fit in `Ready`'s room, or every connection's future grows
// (hyper moves it on every request); see `PendingResponse`.
const _: () =
    assert!(std::mem::size_of::<Queued>() <= std::mem::size_of::<http::Response<ResponseBody>>());

/// A queued handler's state, until its response is ready.
pub(crate) struct Queued {
    call: QueuedCall<Response>,
    /// The request's method and URI, to name it if the handler panics.
    request: (Method, Uri),
    /// Moves into the response body; dropped with this future if the request
    /// is abandoned (the client reset the stream).
    in_flight: Option<InFlight>,
    /// Starts the upgrade a response asks for.
    upgrades: Arc<UpgradeContext>,
    /// With `Server::access_log`: moves into the response body.
    access: Option<Box<AccessRecord>>,
}

impl Future for PendingResponse {
    type Output = Result<http::Response<ResponseBody>, std::convert::Infallible>;

    // Inlined into hyper's dispatcher, which moves the response on at once
    // (callgrind: 20 to 70 instructions a request fewer).
    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Neither variant is structurally pinned.
        match Pin::into_inner(self) {
            PendingResponse::Ready(response) => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => Poll::Pending,
            },
            PendingResponse::Queued(queued) => {
                let outcome = ready!(Pin::new(&mut queued.call).poll(cx));
                let Some(in_flight) = queued.in_flight.take() else {
                    return Poll::Pending;
                };
                let (method, uri) = &queued.request;
                let access = queued.access.take();
                Poll::Ready(Ok(finish(
                    outcome,
                    method,
                    uri,
                    in_flight,
                    access,
                    &queued.upgrades,
                )))
            }
        }
    }
}

/// An HTTP/2 stream's response: its handler starts at the first poll.
///
/// hyper polls each stream's response future in a task of the stream's own,
/// not in the connection's, so a handler that blocks there holds up no other
/// stream, as with a job; and it costs no job, no queueing and no second
/// wake-up of the stream's task.
// Not boxed on purpose: the future lives in its stream's task, one
// allocation already, and a box would be a second one per request.
#[allow(clippy::large_enum_variant)]
#[cfg(feature = "http2")]
pub(crate) enum StreamResponse {
    /// Not polled yet; `None` once started.
    Start(Option<Deferred>),
    /// Started: ready, or queued as a job where this thread could not run it.
    Started(PendingResponse),
}

/// A stream's request whose handler has not run yet.
#[cfg(feature = "http2")]
pub(crate) struct Deferred {
    service: HyperService,
    request: http::Request<hyper::body::Incoming>,
    method: Method,
    uri: Uri,
    in_flight: InFlight,
    access: Option<Box<AccessRecord>>,
}

#[cfg(feature = "http2")]
impl Deferred {
    /// Runs the handler on this thread if it is a free worker (see
    /// `Pool::try_inline`), else queues it as a job.
    fn start(self) -> PendingResponse {
        let Deferred {
            service,
            request,
            method,
            uri,
            in_flight,
            access,
        } = self;
        let mut request = Some(request);
        let inline = service.pool.try_inline(|| {
            let request = service.user_request(request.take().expect("called once"));
            service.service.call_shared(request, service.info.clone())
        });
        match inline {
            Ok(outcome) => PendingResponse::Ready(Some(finish(
                outcome,
                &method,
                &uri,
                in_flight,
                access,
                &service.upgrades,
            ))),
            Err(_) => {
                let request = request.take().expect("the handler has not run");
                service.queue(request, method, uri, in_flight, access)
            }
        }
    }
}

#[cfg(feature = "http2")]
impl Future for StreamResponse {
    type Output = Result<http::Response<ResponseBody>, std::convert::Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // No variant is structurally pinned.
        let this = Pin::into_inner(self);
        if let StreamResponse::Start(deferred) = this {
            let deferred = deferred.take().expect("started once");
            *this = StreamResponse::Started(deferred.start());
        }
        match this {
            StreamResponse::Started(pending) => Pin::new(pending).poll(cx),
            StreamResponse::Start(_) => unreachable!("started above"),
        }
    }
}

/// A response body that keeps its request counted as in flight until hyper has
/// taken all of it (or dropped it), so no idle timeout runs meanwhile.
pub(crate) struct ResponseBody {
    body: Body,
    // Declared before `access`: the request stops counting as in flight
    // before its log line is written.
    _in_flight: InFlight,
    access: Option<Box<AccessRecord>>,
}

impl http_body::Body for ResponseBody {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>> {
        let this = &mut *self;
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if let (Some(access), Poll::Ready(Some(Ok(frame)))) = (&mut this.access, &frame) {
            if let Some(data) = frame.data_ref() {
                access.bytes += data.len() as u64;
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::Body::size_hint(&self.body)
    }
}
