//! The blocking side of a body: [`BodyReader`], the `io::Read` view of a
//! request body, and the state of a response body streamed from a reader.

use std::fmt;
use std::future::Future;
use std::io::{self, Read};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};

use super::Body;
use crate::runtime::pool::{self, UserCall};

/// How many bytes [`Body::wrap_reader`] asks its reader for at a time.
const READ_CHUNK: usize = 16 * 1024;

type BoxReader = Box<dyn Read + Send>;

/// A reader body being sent.
pub(super) enum ReaderState {
    Idle(BoxReader),
    /// Reading the next chunk: user code, run by the pool where it sees fit
    /// (`Pool::call_user`); the reader comes back with the chunk.
    Reading(UserCall<(BoxReader, io::Result<Option<Bytes>>)>),
    /// The reader panicked and is gone.
    Failed,
}

impl ReaderState {
    /// Reads the next chunk.
    pub(super) fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        loop {
            match self {
                ReaderState::Idle(_) => {
                    let ReaderState::Idle(mut reader) =
                        std::mem::replace(self, ReaderState::Failed)
                    else {
                        unreachable!("matched above")
                    };
                    *self = ReaderState::Reading(pool::call_user_here(move || {
                        let chunk = read_chunk(reader.as_mut());
                        (reader, chunk)
                    }));
                }
                ReaderState::Reading(call) => {
                    return match ready!(Pin::new(call).poll(cx)) {
                        Ok((reader, chunk)) => {
                            *self = ReaderState::Idle(reader);
                            Poll::Ready(chunk)
                        }
                        Err(_panic) => {
                            log::error!("a response body reader panicked; aborting the response");
                            *self = ReaderState::Failed;
                            Poll::Ready(Err(io::Error::other("response body reader panicked")))
                        }
                    };
                }
                ReaderState::Failed => {
                    return Poll::Ready(Err(io::Error::other("response body reader panicked")))
                }
            }
        }
    }
}

/// Reads one chunk from `reader`, `None` at its end.
pub(super) fn read_chunk(reader: &mut (dyn Read + Send)) -> io::Result<Option<Bytes>> {
    let mut buf = vec![0; READ_CHUNK];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(None),
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(Bytes::from(buf)));
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        }
    }
}

/// An [`io::Read`] view of a [`Body`], made by [`Body::reader`].
///
/// Reads block until data has arrived. Reaching the end of the body reads `Ok(0)`;
/// a failed read's `io::ErrorKind` says why (see "Errors" on [`Body`]).
///
/// The part of a chunk a read did not take stays in the [`Body`], so dropping
/// the reader loses nothing: another reader, or iterating the body, goes on
/// from the next unread byte.
///
/// ```
/// use astra::Body;
/// use std::io::Read;
///
/// let mut body = Body::new("name: rest of the body");
/// let mut name = [0; 5];
/// body.reader().read_exact(&mut name)?; // one chunk taken, five bytes read
/// assert_eq!(&name, b"name:");
/// assert_eq!(body.next().unwrap()?, " rest of the body");
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct BodyReader<'body> {
    pub(super) body: &'body mut Body,
}

impl Read for BodyReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let leftover = loop {
            if self
                .body
                .leftover
                .as_ref()
                .is_some_and(|rest| !rest.is_empty())
            {
                break self.body.leftover.as_mut().expect("checked just above");
            }
            match self.body.next() {
                Some(chunk) => self.body.leftover = Some(chunk?),
                None => return Ok(0),
            }
        };
        let n = buf.len().min(leftover.len());
        buf[..n].copy_from_slice(&leftover[..n]);
        leftover.advance(n);
        Ok(n)
    }
}

impl fmt::Debug for BodyReader<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodyReader")
            .field("body", &self.body)
            .finish()
    }
}
