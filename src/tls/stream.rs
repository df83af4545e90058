//! [`TlsStream`]: a rustls session over a connection, as hyper's `Read` and
//! `Write`, with the handshake (and the answer to plain HTTP) in front.

use std::io::{self, BufRead, Read, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use hyper::rt::ReadBufCursor;
use rustls::{ServerConfig, ServerConnection};

use super::TlsInfo;
use crate::io::sync_io::SyncIo;

/// The answer to a plain-HTTP request on a TLS port, as Go's server gives it.
const PLAIN_HTTP_RESPONSE: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\n\
connection: close\r\ncontent-length: 51\r\n\r\nThis port speaks HTTPS: the request was plain HTTP\n";

/// A TLS session over a connection, as hyper's `Read` and `Write`.
pub(crate) struct TlsStream<T> {
    io: T,
    session: ServerConnection,
    /// The client's close_notify or the socket's end was seen: reads end.
    read_closed: bool,
    close_notify_sent: bool,
    /// The bytes `first_flight` fed rustls have been processed.
    first_flight_processed: bool,
}

impl<T> TlsStream<T>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin,
{
    /// Runs the server side of the handshake over `io`.
    pub(crate) async fn accept(io: T, config: Arc<ServerConfig>) -> io::Result<TlsStream<T>> {
        let session = ServerConnection::new(config).map_err(io::Error::other)?;
        let mut stream = TlsStream {
            io,
            session,
            read_closed: false,
            close_notify_sent: false,
            first_flight_processed: false,
        };
        stream.first_flight().await?;
        std::future::poll_fn(|cx| stream.poll_handshake(cx)).await?;
        Ok(stream)
    }

    /// Reads the client's first bytes: a plain-HTTP request gets a 400 that
    /// says why (instead of a TLS alert its client cannot read), anything
    /// else goes to rustls.
    async fn first_flight(&mut self) -> io::Result<()> {
        let mut head = [0u8; 1024];
        let n = std::future::poll_fn(|cx| {
            let mut io = SyncIo {
                io: &mut self.io,
                cx,
            };
            match io.read(&mut head) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
                result => Poll::Ready(result),
            }
        })
        .await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the client closed the connection before its TLS handshake",
            ));
        }
        // A TLS record starts with its content type (22: handshake); an
        // HTTP request with a method in capital letters.
        if head[0].is_ascii_uppercase() {
            let mut sent = 0;
            std::future::poll_fn(|cx| {
                while sent < PLAIN_HTTP_RESPONSE.len() {
                    match ready!(Pin::new(&mut self.io).poll_write(cx, &PLAIN_HTTP_RESPONSE[sent..]))
                    {
                        Ok(0) => return Poll::Ready(()),
                        Ok(n) => sent += n,
                        Err(_) => return Poll::Ready(()),
                    }
                }
                let _ = ready!(Pin::new(&mut self.io).poll_shutdown(cx));
                Poll::Ready(())
            })
            .await;
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a plain-HTTP request on the TLS port (answered 400)",
            ));
        }
        let mut rest = &head[..n];
        while !rest.is_empty() {
            self.session.read_tls(&mut rest)?;
        }
        Ok(())
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.first_flight_processed {
            self.first_flight_processed = true;
            self.process(cx)?;
        }
        loop {
            // Send what rustls has for the client first: it may be waiting
            // for our flight before it sends more.
            ready!(self.poll_flush_tls(cx))?;
            if !self.session.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if self.read_closed {
                // The client closed (close_notify or end of stream) before the
                // handshake finished: no more bytes will come to finish it.
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the client closed the connection during the TLS handshake",
                )));
            }
            if !ready!(self.poll_read_tls(cx))? {
                continue;
            }
        }
    }

    /// Decrypts what was read; an error sends rustls's alert (best effort)
    /// and ends the session.
    fn process(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.session.process_new_packets() {
            Ok(state) => {
                if state.peer_has_closed() {
                    self.read_closed = true;
                }
                Ok(())
            }
            Err(err) => {
                // rustls queued an alert that says why; if the socket cannot
                // take it now, the connection closes without it.
                let _ = self.poll_flush_tls(cx);
                Err(io::Error::new(io::ErrorKind::InvalidData, err))
            }
        }
    }

    /// Reads one batch of TLS records from the socket and decrypts it.
    /// Ready(true): the socket reached its end.
    fn poll_read_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let mut io = SyncIo {
            io: &mut self.io,
            cx,
        };
        match self.session.read_tls(&mut io) {
            Ok(0) => {
                self.read_closed = true;
                Poll::Ready(Ok(true))
            }
            Ok(_) => {
                self.process(cx)?;
                Poll::Ready(Ok(false))
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
            Err(err) => Poll::Ready(Err(err)),
        }
    }

    /// Writes every TLS record rustls holds to the socket.
    fn poll_flush_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.session.wants_write() {
            let mut io = SyncIo {
                io: &mut self.io,
                cx,
            };
            match self.session.write_tls(&mut io) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// What a handler may know of this session.
    pub(crate) fn info(&self) -> TlsInfo {
        TlsInfo::of(&self.session)
    }

    /// Whether ALPN chose HTTP/2.
    pub(crate) fn is_h2(&self) -> bool {
        self.session.alpn_protocol() == Some(b"h2")
    }
}

impl<T> hyper::rt::Read for TlsStream<T>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = Pin::into_inner(self);
        loop {
            match this.session.reader().fill_buf() {
                Ok(plain) if !plain.is_empty() => {
                    let n = plain.len().min(buf.remaining());
                    buf.put_slice(&plain[..n]);
                    this.session.reader().consume(n);
                    return Poll::Ready(Ok(()));
                }
                // Nothing decrypted, and the client said it is done: end of stream.
                Ok(_) => return Poll::Ready(Ok(())),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                // The socket ended without close_notify: rustls reports a
                // truncation; hyper decides whether a message was cut short.
                Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => {
                    return Poll::Ready(Ok(()));
                }
                Err(err) => return Poll::Ready(Err(err)),
            }
            if this.read_closed {
                return Poll::Ready(Ok(()));
            }
            // Answers rustls owes the client (a key update, an alert) go out
            // while we wait for more; a blocked write is retried later.
            if let Poll::Ready(Err(err)) = this.poll_flush_tls(cx) {
                return Poll::Ready(Err(err));
            }
            ready!(this.poll_read_tls(cx))?;
        }
    }
}

impl<T> hyper::rt::Write for TlsStream<T>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = Pin::into_inner(self);
        // Records rustls already holds go first: its buffer stays bounded
        // by what the socket takes.
        ready!(this.poll_flush_tls(cx))?;
        let n = this.session.writer().write_vectored(bufs)?;
        // Start sending at once; what does not fit now goes with the next
        // write or flush (the bytes are accepted either way).
        if let Poll::Ready(Err(err)) = this.poll_flush_tls(cx) {
            return Poll::Ready(Err(err));
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = Pin::into_inner(self);
        ready!(this.poll_flush_tls(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = Pin::into_inner(self);
        if !this.close_notify_sent {
            this.session.send_close_notify();
            this.close_notify_sent = true;
        }
        ready!(this.poll_flush_tls(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}
