//! Stream sockets (TCP and Unix) registered with the reactor, read and
//! written without blocking: the I/O under a server's connection (and a
//! client's, next).

use std::io::{self, IoSlice, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use hyper::rt::ReadBufCursor;

use crate::runtime::reactor::{Closable, ScheduledIo, READABLE, WRITABLE};
use crate::runtime::Pool;

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

/// A stream socket registered with a pool's reactor for its whole life (one
/// registration, ended on drop), in a group that a forced close reaches
/// ([`Reactor::close_group`](crate::runtime::reactor::Reactor::close_group)).
pub(crate) struct Registered {
    /// Shared with the reactor's registration, so that a forced close can
    /// end the connection while this owner holds it.
    stream: Arc<Stream>,
    io: Arc<ScheduledIo>,
    token: usize,
    pool: Pool,
}

impl Registered {
    pub(crate) fn register(stream: Stream, pool: &Pool, group: u64) -> io::Result<Registered> {
        let stream = Arc::new(stream);
        let (token, io) = pool.reactor().register_closable(&stream, group)?;
        Ok(Registered {
            stream,
            io,
            token,
            pool: pool.clone(),
        })
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

    /// Reads into `buf`'s unfilled part once the socket is readable; the
    /// number of bytes read, 0 at the end of the stream.
    pub(crate) fn poll_read(
        &self,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<usize>> {
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
        Poll::Ready(Ok(n))
    }

    /// Writes `buf` once the socket is writable.
    pub(crate) fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_io(cx, WRITABLE, || self.stream.write(buf))
    }

    /// Writes `bufs` in one call once the socket is writable.
    pub(crate) fn poll_write_vectored(
        &self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_io(cx, WRITABLE, || self.stream.write_vectored(bufs))
    }

    /// Ends our side of the stream (the peer reads its end).
    pub(crate) fn shutdown_write(&self) -> io::Result<()> {
        match self.stream.shutdown(Shutdown::Write) {
            Err(err) if err.kind() != io::ErrorKind::NotConnected => Err(err),
            _ => Ok(()),
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.pool.reactor().deregister_fd(&*self.stream, self.token);
    }
}

impl Closable for Stream {
    fn shut_down(&self) {
        // The owner sees the end at its next read or write.
        let _ = self.shutdown(Shutdown::Both);
    }
}
