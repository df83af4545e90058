//! Graceful shutdown: the handle users hold, and the signal connections watch.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::Waker;

/// Stops a running [`Server`](crate::Server) gracefully, from any thread.
///
/// Get one with [`Server::handle`](crate::Server::handle) before calling
/// `serve`. [`shutdown`](ServerHandle::shutdown) stops accepting connections,
/// lets every request in flight finish and its response be written, closes idle
/// keep-alive connections at once and sends HTTP/2 clients a GOAWAY; `serve`
/// then returns `Ok(())`. The drain is bounded by
/// [`Server::shutdown_timeout`](crate::Server::shutdown_timeout).
///
/// ```no_run
/// use astra::{Body, Response, Server};
/// use std::time::Duration;
///
/// let server = Server::bind("127.0.0.1:3000");
/// let handle = server.handle();
/// std::thread::spawn(move || {
///     std::thread::sleep(Duration::from_secs(60));
///     handle.shutdown();
/// });
/// server
///     .serve(|_request, _info| Response::new(Body::new("Hello, World!")))
///     .expect("serve failed");
/// // Every request that was in flight has been answered.
/// ```
#[derive(Clone)]
pub struct ServerHandle {
    pub(crate) signal: Arc<Signal>,
    #[cfg(feature = "tls")]
    pub(crate) tls: Arc<crate::tls::TlsSlot>,
}

impl ServerHandle {
    /// Starts the graceful shutdown and returns at once; `serve` returns when
    /// the drain is over.
    ///
    /// Calling it again, before `serve` started, or after `serve` returned, is
    /// harmless. Called before `serve`, it makes `serve` return at once.
    pub fn shutdown(&self) {
        self.signal.request();
    }

    /// What the server is doing: open connections by protocol, requests in
    /// flight, handlers running, workers, queued work, and connections
    /// closed by reason since `serve` started. Cheap enough to call often
    /// (a few atomic loads and one short lock); the counters behind it are
    /// always kept.
    ///
    /// ```
    /// use astra::{CloseReason, Server};
    ///
    /// let server = Server::bind("127.0.0.1:0");
    /// let stats = server.handle().stats();
    /// assert_eq!(stats.http1_connections, 0);
    /// assert_eq!(stats.closed_for(CloseReason::HeaderReadTimeout), 0);
    /// ```
    pub fn stats(&self) -> super::stats::Stats {
        let mut stats = self.signal.metrics.snapshot();
        if let Some((workers, handlers, queued)) = self.signal.pool.get().and_then(|p| p.gauges()) {
            stats.workers = workers;
            stats.handlers_running = handlers;
            stats.queued = queued;
        }
        stats
    }

    /// Replaces the TLS certificates (or configuration) of a server made with
    /// [`Server::tls`](crate::Server::tls): connections accepted from now on
    /// use `tls`, connections already open keep theirs. Nothing is dropped, so
    /// a renewed certificate can be rolled out under load.
    ///
    /// ```no_run
    /// use astra::{Body, Response, Server, TlsConfig};
    ///
    /// let server = Server::bind("0.0.0.0:8443").tls(TlsConfig::from_pem_files("cert.pem", "key.pem")?);
    /// let handle = server.handle();
    /// std::thread::spawn(move || loop {
    ///     std::thread::sleep(std::time::Duration::from_secs(24 * 60 * 60));
    ///     match TlsConfig::from_pem_files("cert.pem", "key.pem") {
    ///         Ok(tls) => handle.reload_tls(tls).expect("the server has TLS"),
    ///         Err(err) => eprintln!("keeping the old certificate: {err}"),
    ///     }
    /// });
    /// server.serve(|_request, _info| Response::new(Body::new("hello")))?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// `InvalidInput` if the server serves plain HTTP: TLS cannot be switched
    /// on by a reload.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn reload_tls(&self, tls: crate::tls::TlsConfig) -> std::io::Result<()> {
        if !self.tls.is_set() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "reload_tls: this server serves plain HTTP (Server::tls was not called)",
            ));
        }
        self.tls.set(tls);
        Ok(())
    }
}

impl fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerHandle")
            .field("shutdown_requested", &self.signal.is_requested())
            .field("live_connections", &self.signal.live())
            .finish()
    }
}

/// A group of sockets in the reactor's registry: one per server.
struct Group(u64);

impl Default for Group {
    fn default() -> Group {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Group(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// Shared by the accept loop, every connection and every handle.
#[derive(Default)]
pub(crate) struct Signal {
    requested: AtomicBool,
    /// The drain ran out of time: connections close now, mid-request or not.
    forced: AtomicBool,
    /// Wakes the accept loop (set once `serve` has started).
    /// The accept loop's (or the drain's) waker.
    accept_waker: Mutex<Option<Waker>>,
    /// Set while the accept loop waits for a connection to close.
    accept_waiting: AtomicBool,
    live: AtomicUsize,
    next_id: AtomicU64,
    /// The task waker of every live connection, to wake them all at shutdown.
    connections: Mutex<HashMap<u64, Waker>>,
    /// This server's connections in the reactor's registry, where a forced
    /// close finds their sockets (see `force`).
    group: Group,
    /// What `ServerHandle::stats` reports.
    pub(crate) metrics: Arc<crate::server::stats::Metrics>,
    /// The pool's counts, once `serve` has started.
    pub(crate) pool: OnceLock<crate::runtime::pool::PoolRef>,
}

impl Signal {
    pub(crate) fn request(&self) {
        if !self.requested.swap(true, Ordering::SeqCst) {
            log::info!("graceful shutdown requested");
            self.wake_accept_loop();
            self.wake_connections();
        }
    }

    pub(crate) fn force(&self) {
        self.forced.store(true, Ordering::SeqCst);
        self.wake_connections();
        // Shut down the sockets of connections whose owners do not poll
        // them (a blocking upgrade's thread, say): through the reactor's
        // registrations, which share each socket with its owner.
        if let Some(pool) = self.pool.get().and_then(|pool| pool.upgrade()) {
            pool.reactor().close_group(self.group.0);
        }
    }

    /// The group this server's connections are registered in with the
    /// reactor ([`Reactor::close_group`](crate::runtime::reactor::Reactor::close_group)).
    pub(crate) fn group(&self) -> u64 {
        self.group.0
    }

    pub(crate) fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    pub(crate) fn is_forced(&self) -> bool {
        self.forced.load(Ordering::SeqCst)
    }

    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// Makes `waker` the one a shutdown request, or a connection closing
    /// while the loop waits for one, wakes.
    pub(crate) fn watch_accept(&self, waker: &Waker) {
        let mut slot = self.accept_waker.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *slot {
            Some(current) if current.will_wake(waker) => {}
            slot => *slot = Some(waker.clone()),
        }
    }

    pub(crate) fn set_accept_waiting(&self, waiting: bool) {
        self.accept_waiting.store(waiting, Ordering::SeqCst);
    }

    fn wake_accept_loop(&self) {
        let waker = self
            .accept_waker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn wake_connections(&self) {
        let wakers: Vec<Waker> = self.lock().values().cloned().collect();
        for waker in wakers {
            waker.wake();
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Waker>> {
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a new connection; the guard uncounts it.
    pub(crate) fn connection(self: &Arc<Self>) -> ConnectionGuard {
        self.live.fetch_add(1, Ordering::SeqCst);
        ConnectionGuard {
            signal: self.clone(),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            waker: None,
        }
    }
}

/// One live connection, as the shutdown signal knows it.
pub(crate) struct ConnectionGuard {
    signal: Arc<Signal>,
    id: u64,
    waker: Option<Waker>,
}

impl ConnectionGuard {
    pub(crate) fn signal(&self) -> &Signal {
        &self.signal
    }

    /// Records the waker that shutdown must wake (cheap when unchanged).
    pub(crate) fn watch(&mut self, waker: &Waker) {
        if self.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            return;
        }
        self.waker = Some(waker.clone());
        self.signal.lock().insert(self.id, waker.clone());
        // A shutdown that started before the waker was known must still be seen:
        // the caller checks the flags after this call.
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if self.waker.is_some() {
            self.signal.lock().remove(&self.id);
        }
        self.signal.live.fetch_sub(1, Ordering::SeqCst);
        if self.signal.is_requested() || self.signal.accept_waiting.load(Ordering::SeqCst) {
            self.signal.wake_accept_loop();
        }
    }
}
