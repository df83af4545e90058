//! What the server is doing, for operators: [`ServerHandle::stats`] and the
//! reasons connections close.
//!
//! [`ServerHandle::stats`]: crate::ServerHandle::stats

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::error::Timeout;

/// Why the server closed a connection, or saw it end. Named in the debug log
/// line of every connection that ends, and counted in [`Stats::closed`]; a
/// timeout is named as its [`Timeout`] is (see [`CloseReason::timeout`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// It ended normally: the client closed it, or a `Connection: close`
    /// exchange finished. For an upgraded connection: the stream ended
    /// without an error (a WebSocket: with its close handshake).
    Done,
    /// No complete request head (or TLS handshake) in
    /// `http1_header_read_timeout`.
    HeaderReadTimeout,
    /// Idle between requests for `http1_keep_alive_timeout` (a WebSocket:
    /// silent for its `idle_timeout`).
    KeepAliveTimeout,
    /// The client took no bytes of a response for `send_timeout`.
    SendTimeout,
    /// Closed by a graceful shutdown (idle, or done with what was in flight).
    Shutdown,
    /// Still open when the shutdown timeout ran out.
    ShutdownTimeout,
    /// The client went away mid-request, or reset the connection (a
    /// WebSocket: left without the close handshake).
    ClientGone,
    /// The client broke the protocol (a malformed request, a head too large)
    /// or the connection failed otherwise.
    Error,
    /// The TLS handshake failed.
    TlsHandshake,
}

impl CloseReason {
    const ALL: [CloseReason; 9] = [
        CloseReason::Done,
        CloseReason::HeaderReadTimeout,
        CloseReason::KeepAliveTimeout,
        CloseReason::SendTimeout,
        CloseReason::Shutdown,
        CloseReason::ShutdownTimeout,
        CloseReason::ClientGone,
        CloseReason::Error,
        CloseReason::TlsHandshake,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// The timeout that closed the connection, for the reasons that are one.
    pub fn timeout(self) -> Option<Timeout> {
        match self {
            CloseReason::HeaderReadTimeout => Some(Timeout::HeaderRead),
            CloseReason::KeepAliveTimeout => Some(Timeout::KeepAlive),
            CloseReason::SendTimeout => Some(Timeout::Send),
            CloseReason::ShutdownTimeout => Some(Timeout::Shutdown),
            _ => None,
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A timeout by its one name (see `Timeout`).
        if let Some(timeout) = self.timeout() {
            return timeout.fmt(f);
        }
        f.write_str(match self {
            CloseReason::Done => "done",
            CloseReason::Shutdown => "server shutting down",
            CloseReason::ClientGone => "client gone",
            CloseReason::Error => "protocol or connection error",
            CloseReason::TlsHandshake => "TLS handshake failed",
            timeout => unreachable!("{timeout:?} is a timeout, named above"),
        })
    }
}

/// A snapshot of a server, from [`ServerHandle::stats`](crate::ServerHandle::stats).
///
/// Counts are read one after another without a lock, so a snapshot taken
/// under load may be off by the requests that moved meanwhile.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Open HTTP/1 connections (including those whose protocol is not yet
    /// known, or that are still in their TLS handshake).
    pub http1_connections: usize,
    /// Open HTTP/2 connections.
    pub http2_connections: usize,
    /// Upgraded connections: blocking streams and WebSockets, until their
    /// stream ends (an HTTP/1 connection is counted as closed then, not
    /// when its `101` is sent).
    pub upgraded_connections: usize,
    /// Requests received whose response has not been fully handed over.
    pub requests_in_flight: usize,
    /// Threads inside user code: handlers, body readers.
    pub handlers_running: usize,
    /// Live worker threads.
    pub workers: usize,
    /// Work waiting for a worker: connection tasks and handler calls.
    pub queued: usize,
    /// Connections closed since `serve` started, by reason.
    pub closed: Vec<(CloseReason, u64)>,
}

impl Stats {
    /// Connections closed for `reason` since `serve` started.
    pub fn closed_for(&self, reason: CloseReason) -> u64 {
        self.closed
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }
}

/// The counters behind [`Stats`], shared by the server's connections.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    http1: AtomicUsize,
    http2: AtomicUsize,
    upgraded: AtomicUsize,
    pub(crate) in_flight: AtomicUsize,
    closed: [AtomicU64; CloseReason::ALL.len()],
}

/// Which count an open connection is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Open {
    Http1,
    #[cfg_attr(not(feature = "http2"), allow(dead_code))]
    Http2,
    Upgraded,
}

impl Metrics {
    fn gauge(&self, open: Open) -> &AtomicUsize {
        match open {
            Open::Http1 => &self.http1,
            Open::Http2 => &self.http2,
            Open::Upgraded => &self.upgraded,
        }
    }

    /// Counts a connection as open in `open` until the guard is dropped.
    pub(crate) fn open(self: &std::sync::Arc<Self>, open: Open) -> OpenGuard {
        self.gauge(open).fetch_add(1, Ordering::Relaxed);
        OpenGuard {
            metrics: self.clone(),
            open,
        }
    }

    pub(crate) fn closed(&self, reason: CloseReason) {
        self.closed[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            http1_connections: self.http1.load(Ordering::Relaxed),
            http2_connections: self.http2.load(Ordering::Relaxed),
            upgraded_connections: self.upgraded.load(Ordering::Relaxed),
            requests_in_flight: self.in_flight.load(Ordering::Relaxed),
            closed: CloseReason::ALL
                .iter()
                .map(|r| (*r, self.closed[r.index()].load(Ordering::Relaxed)))
                .collect(),
            ..Stats::default()
        }
    }
}

/// Keeps a connection counted as open.
pub(crate) struct OpenGuard {
    metrics: std::sync::Arc<Metrics>,
    open: Open,
}

impl OpenGuard {
    /// Moves the connection to another count (HTTP/1 to HTTP/2 once known).
    #[cfg_attr(not(feature = "http2"), allow(dead_code))]
    pub(crate) fn switch(&mut self, open: Open) {
        if open != self.open {
            self.metrics.gauge(open).fetch_add(1, Ordering::Relaxed);
            self.metrics
                .gauge(self.open)
                .fetch_sub(1, Ordering::Relaxed);
            self.open = open;
        }
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.metrics
            .gauge(self.open)
            .fetch_sub(1, Ordering::Relaxed);
    }
}
