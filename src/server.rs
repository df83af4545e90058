//! The `Server` builder, its options, and the accept loop.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::server::conn::http1;

use crate::conn::{self, Mode, Protocols};
use crate::net::TcpConn;
use crate::runtime::pool::PoolConfig;
use crate::runtime::reactor::Reactor;
use crate::runtime::Pool;
use crate::service::{ByClone, ByRef, ConnectionInfo, HyperService, Service, SharedService};

/// The smallest `http1_max_buf_size` hyper accepts.
const MIN_HTTP1_BUF_SIZE: usize = 8192;
/// First pause after an accept error that a retry will not fix at once.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// Longest pause between accept retries while the error persists.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// An HTTP server: bind it, set options, then [`serve`](Server::serve) a handler.
///
/// ```no_run
/// use astra::{Body, Response, Server};
///
/// Server::bind("127.0.0.1:3000")
///     .max_workers(64)
///     .serve(|_request, _info| Response::new(Body::new("Hello, World!")))
///     .expect("serve failed");
/// ```
///
/// Each connection is a task that holds no thread while it waits for the
/// client; each request runs your handler on a worker thread, so handlers may
/// block freely.
pub struct Server {
    listener: TcpListener,
    config: Config,
}

#[derive(Clone, Debug)]
struct Config {
    max_workers: usize,
    worker_keep_alive: Duration,
    http1_keep_alive: bool,
    http1_half_close: bool,
    http1_max_buf_size: Option<usize>,
    http1_pipeline_flush: bool,
    http1_writev: Option<bool>,
    http1_title_case_headers: bool,
    http1_preserve_header_case: bool,
    mode: Mode,
    #[cfg(feature = "http2")]
    http2: Http2Config,
}

#[cfg(feature = "http2")]
#[derive(Clone, Debug, Default)]
struct Http2Config {
    initial_stream_window_size: Option<u32>,
    initial_connection_window_size: Option<u32>,
    adaptive_window: bool,
    max_frame_size: Option<u32>,
    /// `None`: hyper's default; `Some(None)`: no limit.
    max_concurrent_streams: Option<Option<u32>>,
    max_send_buf_size: Option<usize>,
    max_header_list_size: Option<u32>,
    enable_connect_protocol: bool,
}

impl Default for Config {
    fn default() -> Config {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Config {
            max_workers: cores * 15,
            worker_keep_alive: Duration::from_secs(6),
            http1_keep_alive: true,
            http1_half_close: false,
            http1_max_buf_size: None,
            http1_pipeline_flush: false,
            http1_writev: None,
            http1_title_case_headers: false,
            http1_preserve_header_case: false,
            mode: Mode::Auto,
            #[cfg(feature = "http2")]
            http2: Http2Config::default(),
        }
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.listener.local_addr().ok())
            .field("config", &self.config)
            .finish()
    }
}

impl Server {
    /// Binds a server to `addr`.
    ///
    /// ```no_run
    /// use astra::Server;
    ///
    /// let server = Server::bind("localhost:3000");
    /// println!("listening on {}", server.local_addr().unwrap());
    /// ```
    ///
    /// # Panics
    ///
    /// Panics if the address cannot be bound (in use, no permission, does not
    /// resolve). Use [`Server::try_bind`] to handle that error instead.
    pub fn bind(addr: impl ToSocketAddrs) -> Server {
        match Server::try_bind(addr) {
            Ok(server) => server,
            Err(err) => panic!("astra: failed to bind the server's address: {err}"),
        }
    }

    /// Binds a server to `addr`, returning the error if that fails.
    ///
    /// ```
    /// use astra::Server;
    ///
    /// let server = Server::try_bind("127.0.0.1:0")?;
    /// println!("listening on {}", server.local_addr()?);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// - the address does not resolve;
    /// - the operating system refuses to bind it (in use, no permission).
    pub fn try_bind(addr: impl ToSocketAddrs) -> io::Result<Server> {
        Ok(Server::from_listener(TcpListener::bind(addr)?))
    }

    /// Serves on a listener that is already bound (socket activation, a port
    /// chosen elsewhere, `SO_REUSEPORT` set-ups).
    ///
    /// ```
    /// use astra::Server;
    /// use std::net::TcpListener;
    ///
    /// let listener = TcpListener::bind("127.0.0.1:0")?;
    /// let addr = listener.local_addr()?;
    /// let server = Server::from_listener(listener);
    /// assert_eq!(server.local_addr()?, addr);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn from_listener(listener: TcpListener) -> Server {
        Server {
            listener,
            config: Config::default(),
        }
    }

    /// The address the server is bound to; useful after binding port 0.
    ///
    /// # Errors
    ///
    /// Whatever `getsockname(2)` reports for the listening socket.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves requests with `service`, blocking the calling thread.
    ///
    /// The service is shared by reference between worker threads, so it must be
    /// `Sync`; see [`Server::serve_clone`] for services that are only `Clone`.
    ///
    /// ```no_run
    /// use astra::{Body, ConnectionInfo, Request, Response, Server};
    ///
    /// fn hello(_request: Request, _info: ConnectionInfo) -> Response {
    ///     Response::new(Body::new("Hello, World!"))
    /// }
    ///
    /// Server::bind("localhost:3000").serve(hello).expect("serve failed");
    /// ```
    ///
    /// # Errors
    ///
    /// Only a failure to start: the event loop or the first threads cannot be
    /// created. Once serving, errors (a failed accept, a broken connection, a
    /// panicking handler) are logged and never end `serve`.
    pub fn serve<S>(self, service: S) -> io::Result<()>
    where
        S: Service + Sync,
    {
        self.serve_shared(Arc::new(ByRef(service)))
    }

    /// Serves requests with a service that is `Clone` but not `Sync`: each
    /// request is handled by its own clone.
    ///
    /// ```no_run
    /// use astra::{Body, Response, Server};
    /// use std::cell::Cell;
    ///
    /// #[derive(Clone)]
    /// struct PerRequest {
    ///     scratch: Cell<u64>, // not Sync
    /// }
    ///
    /// impl astra::Service for PerRequest {
    ///     fn call(&self, _request: astra::Request, _info: astra::ConnectionInfo) -> Response {
    ///         self.scratch.set(self.scratch.get() + 1);
    ///         Response::new(Body::new(self.scratch.get().to_string()))
    ///     }
    /// }
    ///
    /// Server::bind("localhost:3000")
    ///     .serve_clone(PerRequest { scratch: Cell::new(0) })
    ///     .expect("serve failed");
    /// ```
    ///
    /// # Errors
    ///
    /// As for [`Server::serve`].
    pub fn serve_clone<S>(self, service: S) -> io::Result<()>
    where
        S: Service + Clone,
    {
        self.serve_shared(Arc::new(ByClone(Mutex::new(service))))
    }

    fn serve_shared(self, service: Arc<dyn SharedService>) -> io::Result<()> {
        let pool = Pool::start(
            Reactor::new()?,
            PoolConfig {
                max_workers: self.config.max_workers,
                keep_alive: self.config.worker_keep_alive,
            },
        )?;
        let protocols = Arc::new(self.config.protocols(&pool));
        self.listener.set_nonblocking(true)?;
        let mut listener = mio::net::TcpListener::from_std(self.listener);
        let mut poll = mio::Poll::new()?;
        poll.registry()
            .register(&mut listener, mio::Token(0), mio::Interest::READABLE)?;
        let mut events = mio::Events::with_capacity(8);
        let mut backoff = ACCEPT_BACKOFF_MIN;
        loop {
            // Accept until the backlog is empty: the listener is edge-triggered.
            match listener.accept() {
                Ok((stream, peer)) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    start_connection(stream, peer, &pool, &protocols, &service);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(err) = poll.poll(&mut events, None) {
                        if err.kind() != io::ErrorKind::Interrupted {
                            log::error!("waiting for new connections failed: {err}");
                            std::thread::sleep(backoff);
                        }
                    }
                }
                Err(err) if is_connection_error(&err) => {
                    // That one connection failed; the next may be fine.
                    log::debug!("accepting a connection failed: {err}");
                }
                Err(err) => {
                    // Out of descriptors or memory: retrying at once would spin.
                    log::error!("accepting connections failed: {err}; retrying in {backoff:?}");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                }
            }
        }
    }

    /// The most worker threads that run handlers at once. When all are busy, new
    /// requests wait in a queue until one is free. Idle connections never hold a
    /// worker, so this bounds concurrent *handlers*, not connections.
    ///
    /// Default is 15 times the number of CPUs.
    ///
    /// # Panics
    ///
    /// Panics if `val` is 0.
    pub fn max_workers(mut self, val: usize) -> Self {
        assert!(val > 0, "astra: max_workers must be at least 1");
        self.config.max_workers = val;
        self
    }

    /// How long an idle worker thread waits for work before it exits. One
    /// worker always stays.
    ///
    /// Default is 6 seconds.
    pub fn worker_keep_alive(mut self, val: Duration) -> Self {
        self.config.worker_keep_alive = val;
        self
    }

    /// Whether HTTP/1 connections are kept alive between requests. When off,
    /// each connection is closed after its first response.
    ///
    /// Default is `true`.
    pub fn http1_keep_alive(mut self, val: bool) -> Self {
        self.config.http1_keep_alive = val;
        self
    }

    /// Whether to keep answering an HTTP/1 client that has shut down its
    /// writing side (half-closed). When off, the connection is closed as soon as
    /// the client's end of stream is read.
    ///
    /// Default is `false`.
    pub fn http1_half_close(mut self, val: bool) -> Self {
        self.config.http1_half_close = val;
        self
    }

    /// The largest buffer used for one HTTP/1 connection's reads and writes. A
    /// request head that does not fit is refused with `431 Request Header Fields
    /// Too Large`.
    ///
    /// Default is hyper's, about 400 KiB.
    ///
    /// # Panics
    ///
    /// Panics if `val` is smaller than 8192.
    pub fn http1_max_buf_size(mut self, val: usize) -> Self {
        assert!(
            val >= MIN_HTTP1_BUF_SIZE,
            "astra: http1_max_buf_size must be at least {MIN_HTTP1_BUF_SIZE}"
        );
        self.config.http1_max_buf_size = Some(val);
        self
    }

    /// Whether to hold back responses to pipelined HTTP/1 requests and flush
    /// them together.
    ///
    /// Default is `false`.
    pub fn http1_pipeline_flush(mut self, val: bool) -> Self {
        self.config.http1_pipeline_flush = val;
        self
    }

    /// Whether HTTP/1 writes use vectored I/O (`writev`) instead of copying
    /// headers and body into one buffer.
    ///
    /// Default is automatic: hyper picks by what the socket supports (vectored
    /// here).
    pub fn http1_writev(mut self, enabled: bool) -> Self {
        self.config.http1_writev = Some(enabled);
        self
    }

    /// Whether HTTP/1 response header names are written in Title-Case
    /// (`Content-Type`) instead of lower case.
    ///
    /// Default is `false`.
    pub fn http1_title_case_headers(mut self, val: bool) -> Self {
        self.config.http1_title_case_headers = val;
        self
    }

    /// Whether the case of HTTP/1 header names is kept as the handler wrote it.
    ///
    /// Default is `false`.
    pub fn http1_preserve_header_case(mut self, val: bool) -> Self {
        self.config.http1_preserve_header_case = val;
        self
    }

    /// Serves HTTP/1 only: with the `http2` feature, a client that opens with
    /// the HTTP/2 preface is refused.
    ///
    /// Default is off: both protocols, told apart per connection.
    pub fn http1_only(mut self) -> Self {
        self.config.mode = Mode::Http1Only;
        self
    }

    /// Serves HTTP/2 (prior knowledge) only: HTTP/1 requests are refused.
    ///
    /// Default is off: both protocols, told apart per connection.
    #[cfg(feature = "http2")]
    pub fn http2_only(mut self) -> Self {
        self.config.mode = Mode::Http2Only;
        self
    }

    /// The HTTP/2 `SETTINGS_INITIAL_WINDOW_SIZE`: how many bytes of one stream's
    /// body the client may send before the handler has read them.
    ///
    /// Default is 1 MiB (hyper's); `None` keeps it.
    #[cfg(feature = "http2")]
    pub fn http2_initial_stream_window_size(mut self, sz: impl Into<Option<u32>>) -> Self {
        self.config.http2.initial_stream_window_size = sz.into();
        self
    }

    /// The HTTP/2 connection-level flow-control window.
    ///
    /// Default is 1 MiB (hyper's); `None` keeps it.
    #[cfg(feature = "http2")]
    pub fn http2_initial_connection_window_size(mut self, sz: impl Into<Option<u32>>) -> Self {
        self.config.http2.initial_connection_window_size = sz.into();
        self
    }

    /// Whether HTTP/2 flow-control windows adapt to the measured bandwidth-delay
    /// product, overriding the two window sizes.
    ///
    /// Default is `false`.
    #[cfg(feature = "http2")]
    pub fn http2_adaptive_window(mut self, enabled: bool) -> Self {
        self.config.http2.adaptive_window = enabled;
        self
    }

    /// The largest HTTP/2 frame payload the server accepts.
    ///
    /// Default is 16 KiB (hyper's); `None` keeps it.
    #[cfg(feature = "http2")]
    pub fn http2_max_frame_size(mut self, sz: impl Into<Option<u32>>) -> Self {
        self.config.http2.max_frame_size = sz.into();
        self
    }

    /// The most concurrent streams one HTTP/2 client may open.
    ///
    /// Default is 200 (hyper's); `None` removes the limit.
    #[cfg(feature = "http2")]
    pub fn http2_max_concurrent_streams(mut self, max: impl Into<Option<u32>>) -> Self {
        self.config.http2.max_concurrent_streams = Some(max.into());
        self
    }

    /// How many bytes each HTTP/2 stream may buffer for sending.
    ///
    /// Default is 400 KiB (hyper's).
    #[cfg(feature = "http2")]
    pub fn http2_max_send_buf_size(mut self, max: usize) -> Self {
        self.config.http2.max_send_buf_size = Some(max);
        self
    }

    /// The largest header list (decoded) an HTTP/2 client may send.
    ///
    /// Default is 16 KiB (hyper's).
    #[cfg(feature = "http2")]
    pub fn http2_max_header_list_size(mut self, max: u32) -> Self {
        self.config.http2.max_header_list_size = Some(max);
        self
    }

    /// Enables the extended CONNECT protocol (RFC 8441), used for WebSockets
    /// over HTTP/2.
    ///
    /// Default is off.
    #[cfg(feature = "http2")]
    pub fn http2_enable_connect_protocol(mut self) -> Self {
        self.config.http2.enable_connect_protocol = true;
        self
    }
}

impl Config {
    fn protocols(&self, #[allow(unused_variables)] pool: &Pool) -> Protocols {
        let mut http1 = http1::Builder::new();
        http1
            .keep_alive(self.http1_keep_alive)
            .half_close(self.http1_half_close)
            .pipeline_flush(self.http1_pipeline_flush)
            .title_case_headers(self.http1_title_case_headers)
            .preserve_header_case(self.http1_preserve_header_case);
        if let Some(size) = self.http1_max_buf_size {
            http1.max_buf_size(size);
        }
        if let Some(writev) = self.http1_writev {
            http1.writev(writev);
        }
        #[cfg(feature = "http2")]
        let http2 = {
            let c = &self.http2;
            let mut http2 =
                hyper::server::conn::http2::Builder::new(crate::runtime::Executor(pool.clone()));
            http2
                .initial_stream_window_size(c.initial_stream_window_size)
                .initial_connection_window_size(c.initial_connection_window_size)
                .max_frame_size(c.max_frame_size);
            if let Some(max) = c.max_concurrent_streams {
                http2.max_concurrent_streams(max);
            }
            if c.adaptive_window {
                http2.adaptive_window(true);
            }
            if let Some(size) = c.max_send_buf_size {
                http2.max_send_buf_size(size);
            }
            if let Some(size) = c.max_header_list_size {
                http2.max_header_list_size(size);
            }
            if c.enable_connect_protocol {
                http2.enable_connect_protocol();
            }
            http2
        };
        Protocols {
            mode: self.mode,
            http1,
            #[cfg(feature = "http2")]
            http2,
        }
    }
}

fn start_connection(
    stream: mio::net::TcpStream,
    peer: SocketAddr,
    pool: &Pool,
    protocols: &Arc<Protocols>,
    service: &Arc<dyn SharedService>,
) {
    if let Err(err) = stream.set_nodelay(true) {
        log::debug!("could not set TCP_NODELAY for {peer}: {err}");
    }
    let conn = match TcpConn::register(stream, pool) {
        Ok(conn) => conn,
        Err(err) => {
            log::error!("could not register the connection from {peer}: {err}");
            return;
        }
    };
    let service = HyperService {
        service: service.clone(),
        info: ConnectionInfo {
            peer_addr: Some(peer),
        },
        pool: pool.clone(),
    };
    let protocols = protocols.clone();
    pool.spawn(async move { conn::serve(conn, &protocols, service).await });
}

/// Errors that concern only the connection being accepted.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::PermissionDenied
    ) || matches!(err.raw_os_error(), Some(libc::EPROTO) | Some(libc::EPERM))
}
