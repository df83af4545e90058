//! The server's options: their defaults, the setters on [`Server`], and the
//! hyper builders and timeouts they turn into (`Config::protocols`).

use super::*;

/// The default cap on worker threads, tokio's for its blocking pool: handlers
/// block, so threads, not cores, bound how many requests are served at once
/// (256 handlers sleeping 10 ms need 256 threads to serve 25,600 req/s). Threads
/// start only as handlers block and exit when idle.
pub(super) const DEFAULT_MAX_WORKERS: usize = 512;
/// The default cap on upgraded connections served as blocking streams
/// ([`crate::Upgrade::respond`]): each holds a thread of its own, outside
/// `max_workers`.
pub(super) const DEFAULT_MAX_BLOCKING_UPGRADES: usize = 256;
/// The smallest `http1_max_buf_size` hyper accepts.
pub(super) const MIN_HTTP1_BUF_SIZE: usize = 8192;
/// The default cap on a request head: nginx and Apache allow a few tens of KiB.
pub(super) const DEFAULT_MAX_HEADER_SIZE: usize = 64 * 1024;
/// The default cap on an HTTP/1 connection's buffer. hyper's own (about 400 KiB)
/// costs fresh pages on every large request: hyper starts a new buffer while
/// the handler still holds the previous body chunk, and at that size the
/// allocator returns freed buffers to the kernel. 64 KiB is reused instead and
/// still lets one `recv` move 64 KiB (bench S5: 1 MiB uploads 1.5x faster).
pub(super) const DEFAULT_HTTP1_BUF_SIZE: usize = 64 * 1024;
/// HTTP/2 defaults; see `Server::http2_initial_connection_window_size`.
#[cfg(feature = "http2")]
pub(super) const DEFAULT_H2_STREAM_WINDOW: u32 = 256 * 1024;
#[cfg(feature = "http2")]
pub(super) const DEFAULT_H2_MAX_STREAMS: usize = 200;
/// Cap on the default connection window: unread request bodies held for one
/// connection stay under this.
#[cfg(feature = "http2")]
pub(super) const MAX_DEFAULT_H2_CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// "No limit", where hyper takes only a `Duration`: about 136
/// years, long enough never to run out, short enough that adding it to an
/// `Instant` cannot overflow.
#[cfg(feature = "http2")]
pub(super) const NO_LIMIT: Duration = Duration::from_secs(u32::MAX as u64);

#[derive(Clone, Debug)]
pub(super) struct Config {
    pub(super) max_workers: usize,
    pub(super) worker_keep_alive: Option<Duration>,
    pub(super) http1_keep_alive: bool,
    pub(super) http1_half_close: bool,
    pub(super) http1_max_buf_size: Option<usize>,
    pub(super) http1_max_header_size: usize,
    pub(super) http1_pipeline_flush: bool,
    pub(super) http1_writev: Option<bool>,
    pub(super) http1_title_case_headers: bool,
    pub(super) http1_preserve_header_case: bool,
    pub(super) mode: Mode,
    pub(super) timeouts: Timeouts,
    pub(super) shutdown_timeout: Option<Duration>,
    pub(super) max_connections: Option<usize>,
    pub(super) max_blocking_upgrades: usize,
    pub(super) access_log: bool,
    #[cfg(feature = "http2")]
    pub(super) http2: Http2Config,
}

#[cfg(feature = "http2")]
#[derive(Clone, Debug, Default)]
pub(super) struct Http2Config {
    initial_stream_window_size: Option<u32>,
    initial_connection_window_size: Option<u32>,
    adaptive_window: bool,
    max_frame_size: Option<u32>,
    /// `None`: hyper's default; `Some(None)`: no limit.
    max_concurrent_streams: Option<Option<u32>>,
    max_send_buf_size: Option<usize>,
    max_header_list_size: Option<u32>,
    enable_connect_protocol: bool,
    keep_alive_interval: Option<Duration>,
    /// `None`: hyper's default; `Some(None)`: no limit.
    keep_alive_timeout: Option<Option<Duration>>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_workers: DEFAULT_MAX_WORKERS,
            worker_keep_alive: Some(Duration::from_secs(6)),
            http1_keep_alive: true,
            http1_half_close: false,
            http1_max_buf_size: None,
            http1_max_header_size: DEFAULT_MAX_HEADER_SIZE,
            http1_pipeline_flush: false,
            http1_writev: None,
            http1_title_case_headers: false,
            http1_preserve_header_case: false,
            mode: Mode::Auto,
            timeouts: Timeouts {
                header_read: Some(Duration::from_secs(30)),
                keep_alive: Some(Duration::from_secs(75)),
                send: Some(Duration::from_secs(60)),
                body_read: Some(Duration::from_secs(60)),
            },
            shutdown_timeout: Some(Duration::from_secs(30)),
            max_connections: None,
            max_blocking_upgrades: DEFAULT_MAX_BLOCKING_UPGRADES,
            access_log: false,
            #[cfg(feature = "http2")]
            http2: Http2Config::default(),
        }
    }
}

impl Server {
    /// How long a graceful shutdown waits for requests in flight to finish.
    /// Connections still open then are closed, mid-request or not, and `serve`
    /// waits up to one more second for their handlers to return; a handler
    /// that has not returned by then goes on running on its worker thread after
    /// `serve` returns, until it does (nothing else runs: no connection is
    /// served, no handler starts). `None` turns it off: `serve` waits for ever,
    /// returning once every request in flight has been answered, however long
    /// its handler takes.
    ///
    /// Default is 30 seconds.
    pub fn shutdown_timeout(mut self, val: impl Into<Option<Duration>>) -> Self {
        self.config.shutdown_timeout = val.into();
        self
    }

    /// The most connections served at once. At the limit the server stops
    /// accepting: new clients wait in the kernel's listen backlog (they are not
    /// accepted and dropped) and are accepted as connections close.
    ///
    /// Default is three quarters of the process's file-descriptor limit
    /// (`RLIMIT_NOFILE`, read again whenever the limit is reached), so that a
    /// flood of connections leaves descriptors for what handlers open: files,
    /// database connections. Raise the descriptor limit (`ulimit -n`) to serve
    /// more connections.
    ///
    /// # Panics
    ///
    /// Panics if `val` is 0.
    pub fn max_connections(mut self, val: usize) -> Self {
        assert!(val > 0, "astra: max_connections must be at least 1");
        self.config.max_connections = Some(val);
        self
    }

    /// The most upgraded connections served as blocking streams at once
    /// ([`Upgrade::respond`](crate::Upgrade::respond)). Each holds a worker
    /// thread of its own for its whole life, counted apart from
    /// `max_workers` (the pool grows by one for each), so upgrades never take
    /// the workers ordinary requests need. Past the bound, an upgrade is
    /// answered `503 Service Unavailable` with `Retry-After: 1` and its
    /// continuation never runs. 0 allows none: every blocking upgrade is
    /// answered 503 (it is not "no limit"). Connections served by a task
    /// instead (the `websocket` feature's message handlers) hold no thread
    /// and do not count here, whatever this says.
    ///
    /// Default is 256.
    pub fn max_blocking_upgrades(mut self, val: usize) -> Self {
        self.config.max_blocking_upgrades = val;
        self
    }

    /// Logs one line per request through `log`, at `info` level with the
    /// target `astra::access` (filter on it): the client, the request line,
    /// the status, the response body bytes and the time from the request head
    /// to the last byte handed over, e.g.
    /// `127.0.0.1:51234 "GET /index.html HTTP/1.1" 200 5120 0.412ms`. Off by
    /// default; the line is written when the response is done (or abandoned,
    /// with the bytes sent so far).
    ///
    /// ```no_run
    /// use astra::{Body, Response, Server};
    ///
    /// Server::bind("127.0.0.1:3000")
    ///     .access_log(true)
    ///     .serve(|_request, _info| Response::new(Body::new("logged")))
    ///     .expect("serve failed");
    /// ```
    pub fn access_log(mut self, enabled: bool) -> Self {
        self.config.access_log = enabled;
        self
    }

    /// How long a client may take to send a complete request head, counted from
    /// when the connection opens (first request) or from the head's first byte
    /// (later requests). A client that sends nothing, or its head byte by byte
    /// (Slowloris), is disconnected when it runs out. Also bounds how long a new
    /// connection may stay silent before the protocol (HTTP/1 or HTTP/2) is known.
    /// The connection then closes with [`CloseReason::HeaderReadTimeout`](crate::CloseReason::HeaderReadTimeout)
    /// (the [`Timeout::HeaderRead`](crate::Timeout::HeaderRead)). `None` turns it off.
    ///
    /// Default is 30 seconds.
    pub fn http1_header_read_timeout(mut self, val: impl Into<Option<Duration>>) -> Self {
        self.config.timeouts.header_read = val.into();
        self
    }

    /// How long a keep-alive connection may stay idle between requests before
    /// it is closed (HTTP/1 between requests; HTTP/2 with no stream open).
    /// It closes with [`CloseReason::KeepAliveTimeout`](crate::CloseReason::KeepAliveTimeout) (the
    /// [`Timeout::KeepAlive`](crate::Timeout::KeepAlive)). `None` turns it off: idle connections stay
    /// open until the client closes them (they hold no thread, only a
    /// descriptor and a few KiB).
    ///
    /// Default is 75 seconds (nginx's `keepalive_timeout`).
    pub fn http1_keep_alive_timeout(mut self, val: impl Into<Option<Duration>>) -> Self {
        self.config.timeouts.keep_alive = val.into();
        self
    }

    /// How long a handler reading its request body waits for the next chunk.
    /// When the client sends nothing for that long, the read fails with an
    /// error of kind [`std::io::ErrorKind::TimedOut`] that names
    /// [`Timeout::BodyRead`](crate::Timeout::BodyRead) ([`Timeout::of`](crate::Timeout::of)), so a client that trickles its
    /// body (or stops sending it) cannot hold a worker for ever. Also the
    /// read timeout an [`Upgraded`](crate::Upgraded) stream starts with.
    /// `None` turns it off: reads wait as long as the client takes.
    ///
    /// Default is 60 seconds (nginx's `client_body_timeout`).
    pub fn body_read_timeout(mut self, val: impl Into<Option<Duration>>) -> Self {
        self.config.timeouts.body_read = val.into();
        self
    }

    /// How long a write may stay blocked because the client does not read its
    /// response (slow-read attacks, dead peers). The connection is then closed
    /// with [`CloseReason::SendTimeout`](crate::CloseReason::SendTimeout) (the [`Timeout::Send`](crate::Timeout::Send)). A blocked
    /// write never holds a worker thread. Also the write timeout an
    /// [`Upgraded`](crate::Upgraded) stream starts with, and how long a
    /// WebSocket `Sender` waits for room. `None` turns it off.
    ///
    /// Default is 60 seconds (nginx's `send_timeout`).
    pub fn send_timeout(mut self, val: impl Into<Option<Duration>>) -> Self {
        self.config.timeouts.send = val.into();
        self
    }

    /// The most worker threads that run handlers at once. When all are busy, new
    /// requests wait in a queue until one is free. Idle connections never hold a
    /// worker, so this bounds concurrent *handlers*, not connections.
    ///
    /// Threads are started only when a handler blocks with no other worker free,
    /// and exit after [`Server::worker_keep_alive`] without work, so a server
    /// whose handlers return quickly runs a handful of threads whatever this
    /// says. The bound matters when handlers block: with handlers that sleep or
    /// wait on a database for 10 ms, each thread serves at most 100 requests a
    /// second.
    ///
    /// Default is 512, as tokio's blocking pool (astra 0.4 had 15 per CPU, which
    /// capped 10 ms handlers at 3,000 requests a second on 2 CPUs).
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
    /// worker always stays. `None` turns it off: idle workers stay for ever,
    /// and the pool never shrinks from the most threads it has needed (at
    /// most `max_workers`).
    ///
    /// Default is 6 seconds.
    pub fn worker_keep_alive(mut self, val: impl Into<Option<Duration>>) -> Self {
        self.config.worker_keep_alive = val.into();
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
    /// writing side (half-closed). When off, such a connection is closed without
    /// a response: at once, or, for a request without a body (whose handler
    /// runs on the thread serving the connection), when the handler returns.
    ///
    /// Default is `false`.
    pub fn http1_half_close(mut self, val: bool) -> Self {
        self.config.http1_half_close = val;
        self
    }

    /// The size hyper's buffer for one HTTP/1 connection's reads and writes
    /// grows to: it sets how much one read takes in, so request body chunks are
    /// of about this size or smaller. A request head that does not fit is
    /// refused with `431 Request Header Fields Too Large` (see also
    /// [`Server::http1_max_header_size`]).
    ///
    /// Default is 64 KiB, or `http1_max_header_size` if that is larger. (hyper
    /// alone uses about 400 KiB; buffers that large are slower here, as each
    /// large request allocates fresh memory for one.)
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

    /// The largest HTTP/1 request head (request line and headers, and also
    /// chunked trailers) a client may send. A larger one is refused with
    /// `431 Request Header Fields Too Large` and the connection is closed.
    ///
    /// Default is 64 KiB, in line with nginx and Apache. A head can never be
    /// larger than `http1_max_buf_size`, which grows to this size unless set.
    pub fn http1_max_header_size(mut self, val: usize) -> Self {
        self.config.http1_max_header_size = val;
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
    /// body the client may send before the handler has read them. A window
    /// has no "off": `None` keeps the default.
    ///
    /// Default is 256 KiB.
    #[cfg(feature = "http2")]
    pub fn http2_initial_stream_window_size(mut self, sz: impl Into<Option<u32>>) -> Self {
        self.config.http2.initial_stream_window_size = sz.into();
        self
    }

    /// The HTTP/2 connection-level flow-control window: how many bytes of all
    /// of one connection's request bodies the client may send before handlers
    /// have read them. A window has no "off": `None` keeps the default.
    ///
    /// Default is the stream window times the concurrent-stream limit, at most
    /// 16 MiB (64 streams' worth by default), so that data sent for streams
    /// whose handlers still wait for a worker does not use up the window a
    /// running handler needs to read its own body. (With hyper's equal-sized
    /// windows, two uploads on one connection with one free worker deadlock.)
    /// Past that, a starved read ends with `body_read_timeout`, which frees the
    /// worker.
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

    /// The largest HTTP/2 frame payload the server accepts. `None` keeps the
    /// default.
    ///
    /// Default is 16 KiB (hyper's).
    #[cfg(feature = "http2")]
    pub fn http2_max_frame_size(mut self, sz: impl Into<Option<u32>>) -> Self {
        self.config.http2.max_frame_size = sz.into();
        self
    }

    /// The most concurrent streams one HTTP/2 client may open. `None` means
    /// no limit (then set `http2_initial_connection_window_size` yourself).
    ///
    /// Default is 200 (hyper's).
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

    /// How often to send HTTP/2 PING frames to check that an idle client is
    /// still there; see [`Server::http2_keep_alive_timeout`]. `None` turns it
    /// off: no PINGs.
    ///
    /// Default is `None` (hyper's): idle HTTP/2 connections are still closed by
    /// [`Server::http1_keep_alive_timeout`].
    #[cfg(feature = "http2")]
    pub fn http2_keep_alive_interval(mut self, interval: impl Into<Option<Duration>>) -> Self {
        self.config.http2.keep_alive_interval = interval.into();
        self
    }

    /// How long to wait for the answer to a keep-alive PING before closing the
    /// connection. Only used when [`Server::http2_keep_alive_interval`] is set.
    /// `None` turns it off and waits for ever: the PINGs still go out (which keeps NATs and
    /// proxies from dropping a quiet connection), but a client that does not
    /// answer them is not closed for it.
    ///
    /// Default is 20 seconds (hyper's).
    #[cfg(feature = "http2")]
    pub fn http2_keep_alive_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.config.http2.keep_alive_timeout = Some(timeout.into());
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

    /// Serves HTTPS: every connection starts with a TLS handshake, run in the
    /// connection's task like its reads and writes (a slow or silent client
    /// holds no thread; the handshake counts against
    /// [`http1_header_read_timeout`](Server::http1_header_read_timeout)).
    /// ALPN chooses the protocol: HTTP/2 for `h2` (with the `http2`
    /// feature), HTTP/1.1 otherwise; [`http1_only`](Server::http1_only) and
    /// `http2_only` narrow what is offered. A plain-HTTP request on this port
    /// gets a `400` saying so, and the connection closes.
    ///
    /// ```no_run
    /// use astra::{Body, ConnectionInfo, Request, Response, Server, TlsConfig};
    ///
    /// Server::bind("0.0.0.0:8443")
    ///     .tls(TlsConfig::from_pem_files("cert.pem", "key.pem")?)
    ///     .serve(|_request: Request, info: ConnectionInfo| {
    ///         let tls = info.tls().expect("every connection is TLS");
    ///         Response::new(Body::new(format!("{:?}", tls.protocol_version())))
    ///     })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// Certificates can be replaced while serving, with
    /// [`ServerHandle::reload_tls`].
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls(self, tls: crate::tls::TlsConfig) -> Self {
        self.tls.set(tls);
        self
    }
}

impl Config {
    pub(super) fn protocols(&self, pool: &Pool, signal: &Arc<Signal>) -> Protocols {
        let mut http1 = http1::Builder::new();
        http1
            .keep_alive(self.http1_keep_alive)
            .half_close(self.http1_half_close)
            .pipeline_flush(self.http1_pipeline_flush)
            .title_case_headers(self.http1_title_case_headers)
            .preserve_header_case(self.http1_preserve_header_case)
            .max_header_size(self.http1_max_header_size);
        http1.max_buf_size(
            self.http1_max_buf_size
                .unwrap_or(DEFAULT_HTTP1_BUF_SIZE.max(self.http1_max_header_size)),
        );
        if let Some(writev) = self.http1_writev {
            http1.writev(writev);
        }
        #[cfg(feature = "http2")]
        let http2 = {
            let c = &self.http2;
            let mut http2 =
                hyper::server::conn::http2::Builder::new(crate::runtime::Executor(pool.clone()));
            let streams = c
                .max_concurrent_streams
                .unwrap_or(Some(DEFAULT_H2_MAX_STREAMS as u32));
            let stream_window = c
                .initial_stream_window_size
                .unwrap_or(DEFAULT_H2_STREAM_WINDOW);
            let connection_window = c.initial_connection_window_size.unwrap_or_else(|| {
                let streams = streams.unwrap_or(DEFAULT_H2_MAX_STREAMS as u32);
                stream_window
                    .saturating_mul(streams)
                    .min(MAX_DEFAULT_H2_CONNECTION_WINDOW)
            });
            http2
                .initial_stream_window_size(stream_window)
                .initial_connection_window_size(connection_window)
                .max_frame_size(c.max_frame_size)
                .max_concurrent_streams(streams);
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
                .timer(Timer(pool.clone()))
                .keep_alive_interval(c.keep_alive_interval);
            if let Some(timeout) = c.keep_alive_timeout {
                // hyper has no "off": a limit that never runs out.
                http2.keep_alive_timeout(timeout.unwrap_or(NO_LIMIT));
            }
            http2
        };
        Protocols {
            mode: self.mode,
            http1,
            #[cfg(feature = "http2")]
            http2,
            timeouts: self.timeouts,
            timer: Timer(pool.clone()),
            access_log: self.access_log,
            upgrades: Arc::new(UpgradeContext::new(
                pool.clone(),
                signal.clone(),
                self.timeouts.body_read,
                self.timeouts.send,
                self.max_blocking_upgrades,
            )),
        }
    }
}

/// The default connection limit: three quarters of the descriptor limit.
pub(super) fn descriptor_budget() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through a pointer to a live local.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    if !ok || limit.rlim_cur == libc::RLIM_INFINITY {
        return usize::MAX;
    }
    usize::try_from(limit.rlim_cur / 4 * 3)
        .unwrap_or(usize::MAX)
        .max(1)
}
