//! An accepted connection's socket as hyper reads and writes it, telling the
//! connection's timeouts what it does (see `timeouts::Activity`).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use hyper::rt::ReadBufCursor;

use crate::io::stream::{Registered, Stream};
use crate::runtime::Pool;

use super::shutdown::Signal;
use super::timeouts::Activity;

/// An accepted connection: its registered socket and what it has been doing.
pub(crate) struct Conn {
    socket: Registered,
    activity: Arc<Activity>,
}

impl Conn {
    /// Registers `stream` with `pool`'s reactor, in `signal`'s server's group.
    pub(crate) fn register(stream: Stream, pool: &Pool, signal: &Arc<Signal>) -> io::Result<Conn> {
        Ok(Conn {
            socket: Registered::register(stream, pool, signal.group())?,
            activity: Activity::new(signal.metrics.clone()),
        })
    }

    /// What this connection has been doing, for its timeouts.
    pub(crate) fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    /// Tells the send timeout whether the client is taking our bytes.
    fn note_write(&self, result: &Poll<io::Result<usize>>) {
        match result {
            Poll::Pending => self.activity.on_write_blocked(),
            Poll::Ready(Err(_)) => self.activity.on_write_failed(),
            Poll::Ready(Ok(_)) => self.activity.on_write(),
        }
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let n = ready!(self.socket.poll_read(cx, buf))?;
        if n > 0 {
            self.activity.on_read();
        } else {
            self.activity.on_eof();
        }
        Poll::Ready(Ok(()))
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = self.socket.poll_write(cx, buf);
        self.note_write(&result);
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = self.socket.poll_write_vectored(cx, bufs);
        self.note_write(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Writes go straight to the socket; there is nothing buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.socket.shutdown_write())
    }
}
