//! The bridge from hyper's poll-based `Read`/`Write` to the `std::io` traits
//! that sans-IO protocol libraries (rustls, tungstenite) drive: `Pending`
//! becomes `WouldBlock`, and the caller's waker is woken when the operation
//! can go on.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

/// An `io::Read`/`io::Write` view of a hyper connection for one poll:
/// `Pending` becomes `WouldBlock`, as rustls and tungstenite expect
/// of a non-blocking socket.
pub(crate) struct SyncIo<'a, 'b, T> {
    pub(crate) io: &'a mut T,
    pub(crate) cx: &'a mut Context<'b>,
}

impl<T: hyper::rt::Read + Unpin> Read for SyncIo<'_, '_, T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut read = hyper::rt::ReadBuf::new(buf);
        match Pin::new(&mut *self.io).poll_read(self.cx, read.unfilled()) {
            Poll::Ready(Ok(())) => Ok(read.filled().len()),
            Poll::Ready(Err(err)) => Err(err),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl<T: hyper::rt::Write + Unpin> Write for SyncIo<'_, '_, T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        pending_to_would_block(Pin::new(&mut *self.io).poll_write(self.cx, buf))
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        pending_to_would_block(Pin::new(&mut *self.io).poll_write_vectored(self.cx, bufs))
    }

    fn flush(&mut self) -> io::Result<()> {
        pending_to_would_block(Pin::new(&mut *self.io).poll_flush(self.cx))
    }
}

fn pending_to_would_block<T>(poll: Poll<io::Result<T>>) -> io::Result<T> {
    match poll {
        Poll::Ready(result) => result,
        Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
    }
}
