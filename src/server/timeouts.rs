//! Per-connection deadlines: header read, keep-alive idle, and send.
//!
//! hyper's own HTTP/1 header-read timer starts whenever it waits for a request
//! head, so it doubles as the keep-alive timeout and cannot have a value of its
//! own. We track what the connection is doing instead ([`Activity`], updated by
//! the socket and by each request) and derive the one deadline that applies.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Timeout;
use crate::server::stats::CloseReason;

/// The connection timeouts of one server; `None` turns one off.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    pub(crate) header_read: Option<Duration>,
    pub(crate) keep_alive: Option<Duration>,
    pub(crate) send: Option<Duration>,
    /// Enforced by the handler's body reads, not by the connection.
    pub(crate) body_read: Option<Duration>,
}

/// The connection deadlines (header read, keep-alive, send) by the names
/// users see; the close reason each one gives.
impl Timeout {
    pub(crate) fn reason(self) -> CloseReason {
        match self {
            Timeout::HeaderRead => CloseReason::HeaderReadTimeout,
            Timeout::KeepAlive => CloseReason::KeepAliveTimeout,
            Timeout::Send => CloseReason::SendTimeout,
            Timeout::Shutdown => CloseReason::ShutdownTimeout,
            // Not connection deadlines: they fail a read, not the connection.
            Timeout::BodyRead | Timeout::UpgradedRead | Timeout::WebSocketIdle => {
                CloseReason::Error
            }
        }
    }
}

/// Nanoseconds on the monotonic clock, never zero: the stamps of [`Activity`]
/// and the deadlines it gives. Read with `clock_gettime` itself: the
/// connection takes a stamp per request, and `Instant::elapsed` costs twice
/// the instructions (a checked `Timespec` subtraction, then a `Duration`).
pub(crate) fn now() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable `timespec`; CLOCK_MONOTONIC exists on
    // every platform this crate builds on, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64).max(1)
}

/// The `Instant` of a time given by [`now`], for the timer.
pub(crate) fn instant_at(at: u64) -> Instant {
    let (instant, now) = (Instant::now(), now());
    match at.checked_sub(now) {
        Some(ahead) => instant + Duration::from_nanos(ahead),
        None => instant - Duration::from_nanos(now - at),
    }
}

/// `at` plus `timeout`, in [`now`]'s nanoseconds.
fn after(at: u64, timeout: Duration) -> u64 {
    at.saturating_add(timeout.as_nanos().try_into().unwrap_or(u64::MAX))
}

/// `head_started` when bytes of a head arrived but their time is not taken
/// yet: the next [`Activity::deadline`] takes it, in the same poll of the
/// connection (its reads happen only inside that poll), and a head that is
/// parsed within the poll that read it (nearly every one) costs no clock read.
const HEAD_BEGUN: u64 = u64::MAX;

/// What a connection has been doing. Times are [`now`]'s, zero for "not set".
#[derive(Debug)]
pub(crate) struct Activity {
    start: u64,
    /// Requests whose response has not been fully handed to hyper.
    in_flight: AtomicUsize,
    /// Requests seen so far.
    requests: AtomicU64,
    /// When the last request finished (the connection became idle).
    idle_since: AtomicU64,
    /// When the first byte of the next request head arrived.
    head_started: AtomicU64,
    /// Since when writes have been blocked.
    write_blocked: AtomicU64,
    /// The server's counters (requests in flight).
    metrics: Arc<crate::server::stats::Metrics>,
    /// The client closed or reset the connection with a request unfinished.
    client_gone: std::sync::atomic::AtomicBool,
    /// The connection speaks HTTP/2: bytes between requests are frames of
    /// the connection (settings, pings, a GOAWAY), not a request head begun.
    http2: std::sync::atomic::AtomicBool,
    /// An upgrade took the connection over: its stream counts the close.
    handed_over: std::sync::atomic::AtomicBool,
}

impl Activity {
    pub(crate) fn new(metrics: Arc<crate::server::stats::Metrics>) -> Arc<Activity> {
        Arc::new(Activity {
            start: now(),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            write_blocked: AtomicU64::new(0),
            metrics,
            client_gone: std::sync::atomic::AtomicBool::new(false),
            http2: std::sync::atomic::AtomicBool::new(false),
            handed_over: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Bytes arrived from the client.
    pub(crate) fn on_read(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_started.load(Ordering::Relaxed) == 0
        {
            self.head_started.store(HEAD_BEGUN, Ordering::Relaxed);
        }
    }

    /// The connection turned out to speak HTTP/2.
    #[cfg_attr(not(feature = "http2"), allow(dead_code))]
    pub(crate) fn on_http2(&self) {
        self.http2.store(true, Ordering::Relaxed);
    }

    /// Whether an upgrade took the connection over (see [`InFlight::upgraded`]).
    pub(crate) fn handed_over(&self) -> bool {
        self.handed_over.load(Ordering::Relaxed)
    }

    /// The client closed its side: it went away if a request was unfinished
    /// (in flight, or its head only begun). An HTTP/2 client that sent a
    /// GOAWAY and then closed was polite, not gone.
    pub(crate) fn on_eof(&self) {
        let head_begun =
            self.head_started.load(Ordering::Relaxed) != 0 && !self.http2.load(Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) > 0 || head_begun {
            self.client_gone.store(true, Ordering::Relaxed);
        }
    }

    /// A write failed: the client reset or closed the connection.
    pub(crate) fn on_write_failed(&self) {
        self.client_gone.store(true, Ordering::Relaxed);
    }

    /// Whether the client went away with a request unfinished.
    pub(crate) fn client_gone(&self) -> bool {
        self.client_gone.load(Ordering::Relaxed)
    }

    /// A write could not proceed: the client's receive window is full.
    pub(crate) fn on_write_blocked(&self) {
        if self.write_blocked.load(Ordering::Relaxed) == 0 {
            self.write_blocked.store(now(), Ordering::Relaxed);
        }
    }

    /// A write made progress.
    pub(crate) fn on_write(&self) {
        if self.write_blocked.load(Ordering::Relaxed) != 0 {
            self.write_blocked.store(0, Ordering::Relaxed);
        }
    }

    /// A request head was parsed; returns the guard that marks its end.
    pub(crate) fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(0, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// The deadline that applies now, if any (in [`now`]'s nanoseconds), and
    /// the timeout it belongs to. `keep_alive_only`: HTTP/2, where request
    /// heads are frames hyper reads on its own and an idle connection is timed
    /// by the keep-alive timeout alone. Called by the connection's task after
    /// each poll that leaves it waiting.
    pub(crate) fn deadline(
        &self,
        timeouts: &Timeouts,
        keep_alive_only: bool,
    ) -> Option<(u64, Timeout)> {
        let mut earliest: Option<(u64, Timeout)> = None;
        let mut consider = |at: u64, phase: Timeout| {
            if earliest.is_none_or(|(e, _)| at < e) {
                earliest = Some((at, phase));
            }
        };
        let write_blocked = self.write_blocked.load(Ordering::Relaxed);
        if let (Some(send), true) = (timeouts.send, write_blocked != 0) {
            consider(after(write_blocked, send), Timeout::Send);
        }
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            let mut head_started = self.head_started.load(Ordering::Relaxed);
            if head_started == HEAD_BEGUN && !keep_alive_only {
                // The bytes came in this poll (see `HEAD_BEGUN`). Not a plain
                // store: an HTTP/2 stream's end, on another task, may have
                // cleared it meanwhile.
                let stamp = now();
                head_started = match self.head_started.compare_exchange(
                    HEAD_BEGUN,
                    stamp,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => stamp,
                    Err(current) => current,
                };
            }
            let first_request = self.requests.load(Ordering::Relaxed) == 0;
            if first_request && !keep_alive_only {
                if let Some(header_read) = timeouts.header_read {
                    consider(after(self.start, header_read), Timeout::HeaderRead);
                }
            } else if head_started != 0 && !keep_alive_only {
                if let Some(header_read) = timeouts.header_read {
                    consider(after(head_started, header_read), Timeout::HeaderRead);
                }
            } else if let Some(keep_alive) = timeouts.keep_alive {
                let idle_since = self.idle_since.load(Ordering::Relaxed);
                let since = if idle_since == 0 {
                    self.start
                } else {
                    idle_since
                };
                consider(after(since, keep_alive), Timeout::KeepAlive);
            }
        }
        earliest
    }
}

/// Marks one request as in flight until dropped: when its response body has
/// been handed to hyper in full, or the request was abandoned.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Activity>);

impl InFlight {
    /// The response starts an upgrade: on HTTP/1 the upgraded stream takes
    /// the connection over once the response is sent (an HTTP/2 CONNECT
    /// takes one stream only).
    pub(crate) fn upgraded(&self) {
        if !self.0.http2.load(Ordering::Relaxed) {
            self.0.handed_over.store(true, Ordering::Relaxed);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        activity.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
        if activity.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            activity.idle_since.store(now(), Ordering::Relaxed);
            activity.head_started.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUTS: Timeouts = Timeouts {
        header_read: Some(Duration::from_secs(30)),
        keep_alive: Some(Duration::from_secs(75)),
        send: Some(Duration::from_secs(60)),
        body_read: None,
    };

    #[test]
    fn a_new_connection_has_the_header_read_deadline() {
        let activity = Activity::new(Arc::default());
        let (_, phase) = activity.deadline(&TIMEOUTS, false).unwrap();
        assert_eq!(phase, Timeout::HeaderRead);
    }

    #[test]
    fn no_deadline_while_a_request_is_in_flight() {
        let activity = Activity::new(Arc::default());
        let guard = activity.request_started();
        assert!(activity.deadline(&TIMEOUTS, false).is_none());
        drop(guard);
        let (_, phase) = activity.deadline(&TIMEOUTS, false).unwrap();
        assert_eq!(phase, Timeout::KeepAlive);
        activity.on_read();
        let (_, phase) = activity.deadline(&TIMEOUTS, false).unwrap();
        assert_eq!(phase, Timeout::HeaderRead);
    }

    #[test]
    fn a_blocked_write_brings_the_send_deadline() {
        let activity = Activity::new(Arc::default());
        let _guard = activity.request_started();
        activity.on_write_blocked();
        let (_, phase) = activity.deadline(&TIMEOUTS, false).unwrap();
        assert_eq!(phase, Timeout::Send);
        activity.on_write();
        assert!(activity.deadline(&TIMEOUTS, false).is_none());
    }

    #[test]
    fn http2_connections_use_the_keep_alive_timeout_when_idle() {
        let activity = Activity::new(Arc::default());
        let (_, phase) = activity.deadline(&TIMEOUTS, true).unwrap();
        assert_eq!(phase, Timeout::KeepAlive);
    }
}
