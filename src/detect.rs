//! Telling HTTP/2 prior-knowledge connections from HTTP/1 ones by their first bytes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::rt::Read as _;

use crate::net::Conn;

/// The first bytes of every HTTP/2 prior-knowledge connection.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads until the bytes seen so far either match the HTTP/2 preface in full or
/// stop matching it, then hands back the connection with those bytes put back.
pub(crate) async fn detect_http2(mut conn: Conn) -> io::Result<(bool, Rewind<Conn>)> {
    let mut seen = [0u8; PREFACE.len()];
    let mut len = 0;
    while len < PREFACE.len() && seen[..len] == PREFACE[..len] {
        let n = std::future::poll_fn(|cx| {
            let mut buf = hyper::rt::ReadBuf::new(&mut seen[len..]);
            match Pin::new(&mut conn).poll_read(cx, buf.unfilled()) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(buf.filled().len())),
                Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        len += n;
    }
    let is_http2 = seen[..len] == *PREFACE;
    let prefix = bytes::Bytes::copy_from_slice(&seen[..len]);
    Ok((is_http2, Rewind::new(prefix, conn)))
}

/// A connection whose first bytes, already read, are read again.
pub(crate) struct Rewind<T> {
    prefix: bytes::Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    pub(crate) fn new(prefix: bytes::Bytes, inner: T) -> Rewind<T> {
        Rewind { prefix, inner }
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            bytes::Buf::advance(&mut self.prefix, n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
