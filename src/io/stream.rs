//! Sockets registered with the reactor, as hyper's `Read` and `Write`.

use std::io::{self, IoSlice, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use hyper::rt::ReadBufCursor;

use crate::runtime::reactor::{Closable, ScheduledIo, READABLE, WRITABLE};
use crate::runtime::Pool;
use crate::server::shutdown::Signal;
use crate::server::timeouts::Activity;

/// An accepted stream socket, TCP or Unix: both are read, written and shut
/// down the same way, so the rest of the crate sees one kind of connection.
pub(crate) enum Stream {
    Tcp(mio::net::TcpStream),
    Unix(mio::net::UnixStream),
}

impl Stream {
    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(stream) => (&*stream).write(buf),
            Stream::Unix(stream) => (&*stream).write(buf),
        }
    }

    fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(stream) => (&*stream).write_vectored(bufs),
            Stream::Unix(stream) => (&*stream).write_vectored(bufs),
        }
    }

    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Stream::Tcp(stream) => stream.shutdown(how),
            Stream::Unix(stream) => stream.shutdown(how),
        }
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(stream) => stream.as_raw_fd(),
            Stream::Unix(stream) => stream.as_raw_fd(),
        }
    }
}

impl mio::event::Source for Stream {
    fn register(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        match self {
            Stream::Tcp(stream) => stream.register(registry, token, interests),
            Stream::Unix(stream) => stream.register(registry, token, interests),
        }
    }

    fn reregister(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        match self {
            Stream::Tcp(stream) => stream.reregister(registry, token, interests),
            Stream::Unix(stream) => stream.reregister(registry, token, interests),
        }
    }

    fn deregister(&mut self, registry: &mio::Registry) -> io::Result<()> {
        match self {
            Stream::Tcp(stream) => stream.deregister(registry),
            Stream::Unix(stream) => stream.deregister(registry),
        }
    }
}

/// An accepted connection, registered with the pool's reactor for its whole
/// life (one registration, deregistered on drop).
pub(crate) struct Conn {
    /// Shared with the reactor's registration, so that a forced shutdown
    /// can end the connection while this owner holds it.
    stream: Arc<Stream>,
    io: Arc<ScheduledIo>,
    token: usize,
    pool: Pool,
    activity: Arc<Activity>,
}

impl Conn {
    pub(crate) fn register(stream: Stream, pool: &Pool, signal: &Arc<Signal>) -> io::Result<Conn> {
        let stream = Arc::new(stream);
        let (token, io) = pool.reactor().register_closable(&stream, signal.group())?;
        Ok(Conn {
            stream,
            io,
            token,
            pool: pool.clone(),
            activity: Activity::new(signal.metrics.clone()),
        })
    }

    /// What this connection has been doing, for its timeouts.
    pub(crate) fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    /// Runs a non-blocking operation once `direction` is ready, retrying after a
    /// `WouldBlock` that consumed the readiness.
    fn poll_io<T>(
        &self,
        cx: &mut Context<'_>,
        direction: u8,
        mut op: impl FnMut() -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        loop {
            let tick = ready!(self.io.poll_ready(cx, direction));
            match op() {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    self.io.clear(direction, tick);
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                result => return Poll::Ready(result),
            }
        }
    }
}

impl Conn {
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
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let fd = self.stream.as_raw_fd();
        // SAFETY: `as_mut` hands out the cursor's unfilled, possibly uninitialised
        // tail; we only pass its pointer and length to recv(2), which writes at
        // most `len` bytes and never reads them, and we never read it ourselves.
        let unfilled = unsafe { buf.as_mut() };
        let n = loop {
            let tick = ready!(self.io.poll_ready(cx, READABLE));
            // SAFETY: the pointer and length describe `unfilled`, a live, writable
            // region exclusively borrowed for this call.
            let n = unsafe {
                libc::recv(
                    fd,
                    unfilled.as_mut_ptr().cast::<libc::c_void>(),
                    unfilled.len(),
                    0,
                )
            };
            if n >= 0 {
                let n = n as usize;
                if n > 0 && n < unfilled.len() {
                    // A short read drained the socket (edge-triggered readiness
                    // returns with the next event): skip the EAGAIN round trip.
                    self.io.clear(READABLE, tick);
                }
                break n;
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::WouldBlock => self.io.clear(READABLE, tick),
                io::ErrorKind::Interrupted => {}
                _ => return Poll::Ready(Err(err)),
            }
        };
        // SAFETY: recv(2) reported `n` bytes written at the start of `unfilled`,
        // so exactly those bytes are now initialised (n <= unfilled.len()).
        unsafe { buf.advance(n) };
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
        let result = self.poll_io(cx, WRITABLE, || self.stream.write(buf));
        self.note_write(&result);
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = self.poll_io(cx, WRITABLE, || self.stream.write_vectored(bufs));
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
        match self.stream.shutdown(Shutdown::Write) {
            Err(err) if err.kind() != io::ErrorKind::NotConnected => Poll::Ready(Err(err)),
            _ => Poll::Ready(Ok(())),
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.pool
            .reactor()
            .deregister_closable(&*self.stream, self.token);
    }
}

impl Closable for Stream {
    fn shut_down(&self) {
        // The owner sees the end at its next read or write.
        let _ = self.shutdown(Shutdown::Both);
    }
}
