//! Request and response bodies: [`Body`] and its two faces, the blocking
//! `Iterator` for handlers and the `http_body::Body` hyper polls. The
//! `io::Read` view and reader-fed bodies are in `reader`, the mapping of
//! hyper's errors to `io::ErrorKind`s in `error`.

use std::fmt;
use std::io::{self, Read};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};

use crate::error::{Timeout, TimeoutError};
use crate::runtime::park;
use crate::runtime::pool::Pool;

mod error;
mod reader;

use error::body_error;
pub(crate) use error::io_error_kinds;
pub use reader::BodyReader;
use reader::{read_chunk, ReaderState};

/// An HTTP request from a client, with a streaming [`Body`].
pub type Request = http::Request<Body>;

/// An HTTP response to a client, with a [`Body`].
pub type Response = http::Response<Body>;

/// A builder for [`Response`]s.
///
/// ```
/// use astra::{Body, ResponseBuilder};
///
/// let response = ResponseBuilder::new()
///     .status(404)
///     .header("Content-Type", "text/plain")
///     .body(Body::new("not found"))
///     .unwrap();
/// assert_eq!(response.status(), 404);
/// ```
pub type ResponseBuilder = http::response::Builder;

/// The body of a request or a response.
///
/// A body is a stream of [`Bytes`] chunks. A handler reads a request body by
/// iterating over it, which blocks the handler (never the server) until the next
/// chunk has arrived, or through [`Body::reader`], which implements [`io::Read`].
/// Nothing is buffered behind your back: a body of any size streams with bounded
/// memory.
///
/// ```
/// use astra::{Body, ConnectionInfo, Request, Response};
///
/// fn count_bytes(mut request: Request, _info: ConnectionInfo) -> Response {
///     let mut total = 0;
///     for chunk in request.body_mut() {
///         match chunk {
///             Ok(bytes) => total += bytes.len(),
///             Err(err) => return Response::new(Body::new(format!("bad body: {err}"))),
///         }
///     }
///     Response::new(Body::new(format!("{total} bytes")))
/// }
/// # let response = count_bytes(Request::new(Body::new("four")), ConnectionInfo::default());
/// # assert_eq!(response.into_body().next().unwrap().unwrap(), "4 bytes");
/// ```
///
/// Response bodies are built with [`Body::new`] (bytes known up front, sent with a
/// `Content-Length`), [`Body::empty`], or [`Body::wrap_reader`] (streamed from any
/// [`io::Read`], sent chunked unless you set a `Content-Length` header yourself).
///
/// # Errors
///
/// Reading a request body (iterating, or through [`Body::reader`]) fails with
/// an `io::Error` whose kind says why, so a handler can tell the cases apart
/// without parsing messages; hyper's own error, where there is one, is its
/// [`source`](std::error::Error::source):
///
/// - `TimedOut`: no data came for
///   [`Server::body_read_timeout`](crate::Server::body_read_timeout). Its
///   inner error is a [`TimeoutError`] naming [`Timeout::BodyRead`]: ask with
///   [`Timeout::of`].
/// - `UnexpectedEof`: the client went away before the end of the body (the
///   connection closed short of its `Content-Length` or last chunk).
/// - `InvalidData`: the body is malformed (bad chunked encoding).
/// - `ConnectionReset`: over HTTP/2, the client reset the stream, or the
///   connection failed.
pub struct Body {
    kind: Kind,
    /// What a [`BodyReader`] took from `kind` but has not handed out yet: the
    /// next bytes of the body, before anything still in `kind`. An `Option`
    /// so that the bodies that never have any (nearly all) drop no `Bytes`.
    leftover: Option<Bytes>,
}

enum Kind {
    /// Bytes known up front; `None` once they have been handed out.
    Full(Option<Bytes>),
    /// A request body arriving from the connection, and how long a read may
    /// wait for the next chunk.
    Incoming(hyper::body::Incoming, Option<Duration>, Pool),
    /// A response streamed from a blocking reader.
    Reader(ReaderState),
}

impl Body {
    /// Creates a body from bytes or a string.
    ///
    /// The body's length is known, so a response with this body carries an exact
    /// `Content-Length`.
    ///
    /// ```
    /// use astra::Body;
    ///
    /// let mut body = Body::new("Hello, World!");
    /// assert_eq!(body.next().unwrap().unwrap(), "Hello, World!");
    ///
    /// let mut body = Body::new(vec![0u8; 1024]);
    /// assert_eq!(body.next().unwrap().unwrap().len(), 1024);
    /// ```
    pub fn new(data: impl Into<Bytes>) -> Body {
        let bytes = data.into();
        Body {
            kind: Kind::Full(if bytes.is_empty() { None } else { Some(bytes) }),
            leftover: None,
        }
    }

    /// Creates an empty body (`Content-Length: 0` in a response).
    ///
    /// ```
    /// use astra::Body;
    ///
    /// let mut body = Body::empty();
    /// assert!(body.next().is_none());
    /// ```
    pub fn empty() -> Body {
        Body {
            kind: Kind::Full(None),
            leftover: None,
        }
    }

    /// Creates a body that streams what `reader` produces, until it returns `Ok(0)`.
    ///
    /// The reader is read in chunks as the client accepts data, so memory stays
    /// bounded however much it produces. Its length is unknown: HTTP/1.1 responses
    /// are sent chunked, unless the response has a `Content-Length` header, which
    /// is then trusted (the reader must produce exactly that many bytes).
    ///
    /// A read error, or a panic inside the reader, aborts the response: the
    /// connection is closed (HTTP/1) or the stream reset (HTTP/2), so the client can
    /// tell the body is incomplete.
    ///
    /// ```
    /// use astra::{Body, Request, Response};
    /// use std::fs::File;
    ///
    /// fn download(_request: Request) -> Response {
    ///     match File::open("video.mp4") {
    ///         Ok(file) => Response::new(Body::wrap_reader(file)),
    ///         Err(_) => Response::new(Body::new("no video today")),
    ///     }
    /// }
    /// # let _ = download(Request::new(Body::empty()));
    /// ```
    pub fn wrap_reader<R>(reader: R) -> Body
    where
        R: Read + Send + 'static,
    {
        Body {
            kind: Kind::Reader(ReaderState::Idle(Box::new(reader))),
            leftover: None,
        }
    }

    /// Returns an [`io::Read`] view of this body.
    ///
    /// The reader keeps no bytes of its own: what it has not yet read stays in
    /// the body, so readers and iteration may be mixed and nothing is lost.
    ///
    /// ```
    /// use astra::{Body, Request};
    /// use std::io::Read;
    ///
    /// fn read_all(request: &mut Request) -> std::io::Result<String> {
    ///     let mut text = String::new();
    ///     request.body_mut().reader().read_to_string(&mut text)?;
    ///     Ok(text)
    /// }
    /// # let mut request = Request::new(Body::new("hi"));
    /// # assert_eq!(read_all(&mut request).unwrap(), "hi");
    /// ```
    pub fn reader(&mut self) -> BodyReader<'_> {
        BodyReader { body: self }
    }

    /// A request body fed by a connection task of `pool`, which a read that
    /// must wait helps if no worker can (see `park::block_on_timeout`).
    pub(crate) fn incoming(
        incoming: hyper::body::Incoming,
        timeout: Option<Duration>,
        pool: Pool,
    ) -> Body {
        Body {
            kind: Kind::Incoming(incoming, timeout, pool),
            leftover: None,
        }
    }
}

impl<T> From<T> for Body
where
    Bytes: From<T>,
{
    fn from(data: T) -> Body {
        Body::new(Bytes::from(data))
    }
}

impl Body {
    /// The bytes a [`BodyReader`] left unread, if any.
    fn take_leftover(&mut self) -> Option<Bytes> {
        self.leftover.take().filter(|rest| !rest.is_empty())
    }
}

impl Default for Body {
    fn default() -> Body {
        Body::empty()
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Full(bytes) => {
                let len = self.leftover.as_ref().map_or(0, Bytes::len)
                    + bytes.as_ref().map_or(0, Bytes::len);
                if len > 0 {
                    return f.debug_tuple("Body").field(&len).finish();
                }
                "empty"
            }
            Kind::Incoming(..) => "incoming",
            Kind::Reader(_) => "reader",
        };
        f.debug_tuple("Body").field(&kind).finish()
    }
}

/// Blocks the calling thread until the next chunk of the body is available.
///
/// Trailers are skipped. Yields `None` at the end of the body, and an error if the
/// client sent an invalid body, went away, or sent nothing for the server's
/// [`body_read_timeout`](crate::Server::body_read_timeout) (an error of kind
/// [`io::ErrorKind::TimedOut`] whose inner error is a [`TimeoutError`]).
impl Iterator for Body {
    type Item = io::Result<Bytes>;

    fn next(&mut self) -> Option<io::Result<Bytes>> {
        if let Some(rest) = self.take_leftover() {
            return Some(Ok(rest));
        }
        match &mut self.kind {
            Kind::Full(bytes) => bytes.take().map(Ok),
            Kind::Reader(ReaderState::Idle(reader)) => read_chunk(reader.as_mut()).transpose(),
            Kind::Reader(ReaderState::Reading(_)) => Some(Err(io::Error::other(
                "the body was being sent when it was iterated",
            ))),
            Kind::Reader(ReaderState::Failed) => {
                Some(Err(io::Error::other("response body reader panicked")))
            }
            Kind::Incoming(incoming, timeout, pool) => loop {
                let next = std::future::poll_fn(|cx| Pin::new(&mut *incoming).poll_frame(cx));
                let Some(frame) = park::block_on_timeout(next, *timeout, Some(pool)) else {
                    // Only a timeout that is set runs out.
                    let waited = timeout.unwrap_or_default();
                    let what = "no data from the client";
                    return Some(Err(
                        TimeoutError::new(Timeout::BodyRead, waited, what).into_io()
                    ));
                };
                match frame {
                    None => return None,
                    Some(Err(err)) => return Some(Err(body_error(err))),
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) if data.is_empty() => continue,
                        Ok(data) => return Some(Ok(data)),
                        Err(_trailers) => continue,
                    },
                }
            },
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if let Some(rest) = self.take_leftover() {
            return Poll::Ready(Some(Ok(Frame::data(rest))));
        }
        match &mut self.kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Incoming(incoming, ..) => {
                Pin::new(incoming).poll_frame(cx).map_err(io::Error::other)
            }
            Kind::Reader(state) => state
                .poll_chunk(cx)
                .map(|chunk| chunk.map(|c| c.map(Frame::data)).transpose()),
        }
    }

    fn is_end_stream(&self) -> bool {
        if self.leftover.as_ref().is_some_and(|rest| !rest.is_empty()) {
            return false;
        }
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Incoming(incoming, ..) => incoming.is_end_stream(),
            Kind::Reader(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        let leftover = self.leftover.as_ref().map_or(0, Bytes::len) as u64;
        let mut hint = match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Incoming(incoming, ..) => incoming.size_hint(),
            Kind::Reader(_) => SizeHint::default(),
        };
        if leftover > 0 {
            // Upper first: `set_lower` panics above the current upper bound.
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper.saturating_add(leftover));
            }
            hint.set_lower(hint.lower().saturating_add(leftover));
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads 10 bytes through one reader, 7 through a second, then iterates
    /// the rest: what a handler of a request body may do.
    fn read_mixed(body: &mut Body) -> Vec<u8> {
        let mut all = vec![0; 10];
        body.reader().read_exact(&mut all).unwrap();
        let mut next = [0; 7];
        body.reader().read_exact(&mut next).unwrap();
        all.extend_from_slice(&next);
        for chunk in body {
            all.extend_from_slice(&chunk.unwrap());
        }
        all
    }

    /// `Body` is also an `Iterator`, with a `size_hint` of its own.
    fn hint(body: &Body) -> SizeHint {
        http_body::Body::size_hint(body)
    }

    fn data() -> Vec<u8> {
        (0..1000u32).map(|i| (i % 251) as u8).collect()
    }

    /// Regression: `BodyReader` kept the rest of the chunk it had taken, and
    /// dropped it with itself; a second reader or the iterator went on after it.
    #[test]
    fn dropped_body_reader_loses_rest_of_its_chunk() {
        let mut body = Body::new(data());
        assert_eq!(read_mixed(&mut body), data());
        let mut body = Body::wrap_reader(io::Cursor::new(data()));
        assert_eq!(read_mixed(&mut body), data());
    }

    #[test]
    fn leftover_counts_in_size_hint_and_end_of_stream() {
        let mut body = Body::new(data());
        let mut head = [0; 10];
        body.reader().read_exact(&mut head).unwrap();
        assert_eq!(hint(&body).exact(), Some(990));
        assert!(!body.is_end_stream());
        assert_eq!(format!("{body:?}"), "Body(990)");
        let frame = park::block_on(std::future::poll_fn(|cx| {
            Pin::new(&mut body).poll_frame(cx)
        }));
        let rest = frame.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&rest[..], &data()[10..]);
        assert_eq!(hint(&body).exact(), Some(0));
        assert!(body.is_end_stream());
        assert!(body.next().is_none());

        let mut body = Body::wrap_reader(io::Cursor::new(data()));
        body.reader().read_exact(&mut head).unwrap();
        assert_eq!(hint(&body).lower(), 990);
        assert_eq!(hint(&body).upper(), None);
        assert!(!body.is_end_stream());
    }
}
