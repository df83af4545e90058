//! The accept loop and the drain after it: futures on the runtime's reactor,
//! which the thread that called `serve` blocks on (`Pool::block_on`).
//!
//! There is no poller of their own: the listening socket is registered with
//! the reactor like any connection, and the shutdown signal wakes the loop
//! through a plain waker. While it waits, `serve`'s thread helps the pool as
//! any thread blocked on the runtime does (runs connection tasks and polls
//! the reactor when no worker is free to).

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use crate::io::listener::Accepting;
use crate::io::stream::Stream;
use crate::runtime::reactor::{ScheduledIo, READABLE};
use crate::runtime::timer::{Sleep, Timer};
use crate::runtime::Pool;

use super::shutdown::Signal;

/// The first pause after an accept error that is not the connection's own
/// (out of descriptors, out of memory); doubled at each error in a row.
pub(crate) const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// The longest pause.
pub(crate) const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The listening socket, registered with the pool's reactor until dropped.
pub(crate) struct Listening {
    /// Declared first: deregistered (in `drop`) before the socket closes.
    accepting: Accepting,
    io: Arc<ScheduledIo>,
    token: usize,
    pool: Pool,
}

impl Listening {
    pub(crate) fn register(accepting: Accepting, pool: &Pool) -> io::Result<Listening> {
        let (token, io) = pool.reactor().register_fd(&accepting)?;
        Ok(Listening {
            accepting,
            io,
            token,
            pool: pool.clone(),
        })
    }

    /// Accepts one connection once the listener is readable.
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Stream, Option<SocketAddr>)>> {
        loop {
            let tick = ready!(self.io.poll_ready(cx, READABLE));
            match self.accepting.accept() {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    // Edge-triggered: the next connection comes with an event.
                    self.io.clear(READABLE, tick);
                }
                result => return Poll::Ready(result),
            }
        }
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.pool
            .reactor()
            .deregister_fd(&self.accepting, self.token);
    }
}

/// What the accept loop is waiting for, beside the shutdown signal.
enum Waiting {
    /// The next connection.
    Accept,
    /// The end of a pause after an accept error.
    Backoff(Pin<Box<Sleep>>),
}

/// Accepts connections until a shutdown is requested, handing each to
/// `start`. At most `limit()` connections are open at once: past it, new
/// clients wait in the kernel's backlog until one closes. An error that
/// concerns one connection is skipped; any other (out of descriptors, say)
/// pauses the loop, 5 ms doubling up to 1 s, since retrying at once would spin.
pub(crate) async fn accept_until_shutdown(
    listening: &Listening,
    signal: &Signal,
    pool: &Pool,
    mut limit: impl FnMut() -> usize,
    mut start: impl FnMut(Stream, Option<SocketAddr>),
) {
    let mut waiting = Waiting::Accept;
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut max = limit();
    poll_fn(|cx| loop {
        signal.watch_accept(cx.waker());
        if signal.is_requested() {
            return Poll::Ready(());
        }
        if let Waiting::Backoff(sleep) = &mut waiting {
            ready!(sleep.as_mut().poll(cx));
            waiting = Waiting::Accept;
        }
        if signal.live() >= max {
            // The descriptor limit may have been raised since.
            max = limit();
            if signal.live() >= max {
                // A closing connection wakes this loop (`ConnectionGuard`).
                signal.set_accept_waiting(true);
                if signal.live() >= max {
                    return Poll::Pending;
                }
            }
            signal.set_accept_waiting(false);
        }
        match ready!(listening.poll_accept(cx)) {
            Ok((stream, peer)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                start(stream, peer);
            }
            Err(err) if is_connection_error(&err) => {
                // That one connection failed; the next may be fine.
                log::debug!("accepting a connection failed: {err}");
            }
            Err(err) => {
                log::error!("accepting connections failed: {err}; retrying in {backoff:?}");
                let sleep = Timer(pool.clone()).sleep_until(Instant::now() + backoff);
                waiting = Waiting::Backoff(Box::pin(sleep));
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    })
    .await
}

/// Waits until no connection is open, or until `deadline` (`None`: no
/// limit); returns whether none is.
pub(crate) async fn until_closed(signal: &Signal, pool: &Pool, deadline: Option<Instant>) -> bool {
    let mut sleep = deadline.map(|deadline| Box::pin(Timer(pool.clone()).sleep_until(deadline)));
    poll_fn(|cx| {
        signal.watch_accept(cx.waker());
        if signal.live() == 0 {
            return Poll::Ready(true);
        }
        if let Some(sleep) = &mut sleep {
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(signal.live() == 0);
            }
        }
        Poll::Pending
    })
    .await
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
