//! The `Server` builder, its options, and the accept loop.

pub(crate) mod accept;
mod access_log;
pub(crate) mod activation;
pub(crate) mod connection;
mod options;
pub(crate) mod service;
pub(crate) mod shutdown;
pub(crate) mod socket;
pub(crate) mod stats;
pub(crate) mod timeouts;
pub(crate) mod upgrade;

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::server::conn::http1;

use crate::io::listener::Listener;
use crate::runtime::pool::PoolConfig;
use crate::runtime::reactor::Reactor;
use crate::runtime::timer::Timer;
use crate::runtime::Pool;
use crate::server::service::{ByClone, ByRef, Service, SharedService};
use crate::server::shutdown::{ServerHandle, Signal};
use crate::server::timeouts::Timeouts;
use crate::server::upgrade::UpgradeContext;
use connection::{Mode, Protocols};
use options::Config;

/// How long connections closed by the shutdown timeout get to go away.
const FORCED_CLOSE_GRACE: Duration = Duration::from_secs(1);

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
///
/// Every option that takes an `Option` reads `None` the same way: off, no
/// limit. A timeout set to `None` never fires (waits for ever); a limit set
/// to `None` is removed. The HTTP/2 sizes a peer must be told (the two
/// flow-control windows and the frame size) have no "off": they are plain
/// numbers, and each setter's doc says what `None` does there (keeps the
/// default, as in astra 0.4: a client-chosen 2 GiB buffer per stream is no
/// default to fall into by accident).
pub struct Server {
    listener: Listener,
    config: Config,
    signal: Arc<Signal>,
    /// The TLS configuration for new connections, shared with every handle.
    #[cfg(feature = "tls")]
    tls: Arc<crate::tls::TlsSlot>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("listener", &self.listener)
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

    /// Binds a server to a Unix domain socket at `path`.
    ///
    /// ```no_run
    /// use astra::{Body, Response, Server};
    ///
    /// // curl --unix-socket /run/myapp/http.sock http://localhost/
    /// Server::bind_unix("/run/myapp/http.sock")
    ///     .serve(|_request, _info| Response::new(Body::new("Hello over a Unix socket")))
    ///     .expect("serve failed");
    /// ```
    ///
    /// See [`Server::try_bind_unix`] for what happens to a file already at
    /// `path`, and to the socket file when `serve` returns.
    ///
    /// # Panics
    ///
    /// Panics if the socket cannot be bound; the message names the path and
    /// the cause. Use [`Server::try_bind_unix`] to handle that error instead.
    pub fn bind_unix(path: impl AsRef<Path>) -> Server {
        match Server::try_bind_unix(path) {
            Ok(server) => server,
            Err(err) => panic!("astra: failed to bind the server's Unix socket: {err}"),
        }
    }

    /// Binds a server to a Unix domain socket at `path`, returning the error if
    /// that fails.
    ///
    /// A socket file already at `path` that no process listens on (left by a
    /// server that crashed) is removed and replaced. Anything else at `path`
    /// is left untouched and makes the bind fail: a socket some process still
    /// listens on, or a file that is not a socket.
    ///
    /// The socket file is removed when the listener closes: when `serve`
    /// returns (after a graceful shutdown, say), or when the `Server` is
    /// dropped unserved. It is removed only if `path` still names the file
    /// this server created, never one that another server has bound there
    /// since. Permissions are the process's umask; set the directory's, or
    /// the file's after binding, to limit who may connect.
    ///
    /// ```
    /// use astra::Server;
    ///
    /// let path = std::env::temp_dir().join(format!("astra-doc-{}.sock", std::process::id()));
    /// let server = Server::try_bind_unix(&path)?;
    /// assert_eq!(server.local_unix_path().as_deref(), Some(path.as_path()));
    /// drop(server); // never served: the socket file goes with it
    /// assert!(!path.exists());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// Each error message names the path.
    ///
    /// - `AddrInUse`: another server listens on `path`, or `path` exists and
    ///   is not a socket;
    /// - the operating system refuses to bind (no such directory, no
    ///   permission, a path longer than about 107 bytes).
    pub fn try_bind_unix(path: impl AsRef<Path>) -> io::Result<Server> {
        Ok(Server::with_listener(Listener::bind_unix(path.as_ref())?))
    }

    /// Serves on a Unix domain socket listener that is already bound (an
    /// abstract-namespace address, a socket whose permissions you set first).
    ///
    /// astra does not remove the socket file of a listener it did not bind;
    /// that is left to you.
    ///
    /// ```
    /// use astra::Server;
    /// use std::os::unix::net::UnixListener;
    ///
    /// let path = std::env::temp_dir().join(format!("astra-doc-from-{}.sock", std::process::id()));
    /// let listener = UnixListener::bind(&path)?;
    /// let server = Server::from_unix_listener(listener);
    /// assert_eq!(server.local_unix_path(), Some(path.clone()));
    /// drop(server);
    /// std::fs::remove_file(&path)?; // ours to remove
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn from_unix_listener(listener: UnixListener) -> Server {
        Server::with_listener(Listener::Unix {
            listener,
            file: None,
        })
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
        Server::with_listener(Listener::Tcp(listener))
    }

    fn with_listener(listener: Listener) -> Server {
        Server {
            listener,
            config: Config::default(),
            signal: Arc::default(),
            #[cfg(feature = "tls")]
            tls: Arc::default(),
        }
    }

    /// The address the server is bound to; useful after binding port 0.
    ///
    /// # Errors
    ///
    /// - the server listens on a Unix socket (`Unsupported`; see
    ///   [`Server::local_unix_path`]);
    /// - whatever `getsockname(2)` reports for the listening socket.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The path of the Unix socket the server listens on.
    ///
    /// `None` for a TCP server, and for a Unix socket that has no path (an
    /// abstract-namespace or unnamed one, or one `getsockname(2)` cannot
    /// describe). The path is as it was bound: a relative one stays relative.
    ///
    /// ```
    /// use astra::Server;
    ///
    /// assert_eq!(Server::bind("127.0.0.1:0").local_unix_path(), None);
    /// ```
    pub fn local_unix_path(&self) -> Option<PathBuf> {
        self.listener.local_unix_path()
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
        let signal = self.signal.clone();
        if signal.is_requested() {
            return Ok(());
        }
        let pool = Pool::new(
            Reactor::new()?,
            PoolConfig {
                max_workers: self.config.max_workers,
                keep_alive: self.config.worker_keep_alive,
            },
        );
        let _ = signal.pool.set(pool.downgrade());
        let protocols = Arc::new(self.config.protocols(&pool, &signal));
        #[cfg(feature = "tls")]
        self.tls.start(match self.config.mode {
            Mode::Http1Only => crate::tls::default_alpn(false),
            #[cfg(feature = "http2")]
            Mode::Http2Only => vec![b"h2"],
            Mode::Auto => crate::tls::default_alpn(true),
        });
        let listening = accept::Listening::register(self.listener.into_accepting()?, &pool)?;
        let max_connections = self.config.max_connections;
        pool.block_on(accept::accept_until_shutdown(
            &listening,
            &signal,
            &pool,
            || max_connections.unwrap_or_else(options::descriptor_budget),
            |stream, peer| {
                connection::start(
                    stream,
                    peer,
                    &pool,
                    &protocols,
                    &service,
                    &signal,
                    #[cfg(feature = "tls")]
                    self.tls.current(),
                )
            },
        ));
        // Refuse new connections from here on (and remove the Unix socket file
        // `bind_unix` made), then drain the live ones.
        drop(listening);
        let timeout = self.config.shutdown_timeout;
        // No deadline (no timeout, or one past the clock's range): wait for ever.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        if !pool.block_on(accept::until_closed(&signal, &pool, deadline)) {
            log::warn!(
                "shutdown timeout: closing {} connections still open after {:?}",
                signal.live(),
                timeout.unwrap_or_default()
            );
            signal.force();
            let deadline = Instant::now() + FORCED_CLOSE_GRACE;
            pool.block_on(accept::until_closed(&signal, &pool, Some(deadline)));
        }
        // Connections are closed; let the workers finish what they run. Only
        // handlers that outlived the drain (their connections were closed
        // under them) can still be running after this.
        let left = pool.shutdown(FORCED_CLOSE_GRACE);
        if left > 0 {
            log::warn!("{left} handlers still running as serve returns; they finish on their own");
        }
        log::info!("server shut down");
        Ok(())
    }

    /// A handle that shuts the server down gracefully from another thread; see
    /// [`ServerHandle::shutdown`].
    ///
    /// ```
    /// use astra::{Body, Response, Server};
    ///
    /// let server = Server::bind("127.0.0.1:0");
    /// let handle = server.handle();
    /// handle.shutdown(); // before serve: serve returns at once
    /// server.serve(|_req, _info| Response::new(Body::empty())).unwrap();
    /// ```
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            signal: self.signal.clone(),
            #[cfg(feature = "tls")]
            tls: self.tls.clone(),
        }
    }
}
