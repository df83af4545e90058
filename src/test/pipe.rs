//! The in-memory connection a [`TestRequest`](super::TestRequest) hands an
//! upgrading handler: [`TestStream`], the test's blocking end, and the
//! server's end, which hyper and the runtime poll.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How long a [`TestStream`] read or write waits, unless changed: long for a
/// handler, short enough that a test fails instead of hanging.
const TEST_STREAM_TIMEOUT: Duration = Duration::from_secs(10);

/// How many bytes may wait in each direction of an in-memory connection
/// before the writer waits (as a socket buffer would make it).
const PIPE_CAPACITY: usize = 256 * 1024;

/// The test's end of an in-memory connection that a handler upgraded, from
/// [`TestResponse::into_upgraded`]: blocking `Read + Write`.
///
/// Reads and writes wait at most 10 seconds by default, then fail with
/// `ErrorKind::TimedOut`, so a test fails instead of hanging. A read returns
/// 0 once the server's end has shut down or been dropped (the continuation
/// returned); a write to it fails with `BrokenPipe`. Dropping this end is
/// the client going away (with every [`try_clone`](TestStream::try_clone)):
/// the server's reads see the end of the stream.
///
/// [`TestResponse::into_upgraded`]: super::TestResponse::into_upgraded
pub struct TestStream {
    pipes: Arc<ClientPipes>,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
}

/// The test's end, shared by a stream's clones: closed when the last goes.
struct ClientPipes {
    /// What the test writes and the server reads.
    to_server: Arc<Pipe>,
    /// What the server writes and the test reads.
    from_server: Arc<Pipe>,
}

impl Drop for ClientPipes {
    fn drop(&mut self) {
        // As `ServerEnd`'s: the server's writes fail before it reads the end.
        self.from_server.close_reading();
        self.to_server.close_writing();
    }
}

impl fmt::Debug for TestStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestStream")
            .field("read_timeout", &self.read_timeout)
            .field("write_timeout", &self.write_timeout)
            .finish_non_exhaustive()
    }
}

impl TestStream {
    /// How long a read waits for the server; `None`: for ever.
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.read_timeout = timeout;
    }

    /// How long a write waits for the server to take bytes; `None`: for
    /// ever.
    pub fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        self.write_timeout = timeout;
    }

    /// Ends what the test sends (as `shutdown(Write)` on a socket): the
    /// server reads the end of the stream, and can still write.
    pub fn shutdown_write(&self) {
        self.pipes.to_server.close_writing();
    }

    /// Another handle to the same end, as [`TcpStream::try_clone`]
    /// (`std::net`): one thread can read while another writes. The
    /// connection closes when the last handle is dropped. Never fails; the
    /// `Result` keeps code written for sockets unchanged.
    ///
    /// [`TcpStream::try_clone`]: std::net::TcpStream::try_clone
    pub fn try_clone(&self) -> io::Result<TestStream> {
        Ok(TestStream {
            pipes: self.pipes.clone(),
            read_timeout: self.read_timeout,
            write_timeout: self.write_timeout,
        })
    }
}

impl Read for TestStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let deadline = self
            .read_timeout
            .and_then(|t| Instant::now().checked_add(t));
        let pipe = &self.pipes.from_server;
        let mut state = pipe.lock();
        while state.bytes.is_empty() && !state.write_closed {
            state = pipe.wait(state, deadline, "read", self.read_timeout)?;
        }
        let n = state.take_into(buf);
        let waker = state.waker.take();
        drop(state);
        wake(waker);
        Ok(n)
    }
}

impl Write for TestStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let deadline = self
            .write_timeout
            .and_then(|t| Instant::now().checked_add(t));
        let pipe = &self.pipes.to_server;
        let mut state = pipe.lock();
        loop {
            if state.read_closed {
                return Err(server_gone());
            }
            if state.bytes.len() < PIPE_CAPACITY {
                break;
            }
            state = pipe.wait(state, deadline, "write", self.write_timeout)?;
        }
        let n = state.put(buf);
        let waker = state.waker.take();
        drop(state);
        wake(waker);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The server's end, as hyper's I/O traits: a task waits on it with wakers.
pub(super) struct ServerEnd {
    /// What the server reads.
    incoming: Arc<Pipe>,
    /// What the server writes.
    outgoing: Arc<Pipe>,
}

impl hyper::rt::Read for ServerEnd {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let mut state = self.incoming.lock();
        if state.bytes.is_empty() {
            if !state.write_closed {
                state.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            return Poll::Ready(Ok(()));
        }
        let (front, _) = state.bytes.as_slices();
        let n = front.len().min(buf.remaining());
        buf.put_slice(&front[..n]);
        state.bytes.drain(..n);
        drop(state);
        self.incoming.changed.notify_all();
        Poll::Ready(Ok(()))
    }
}

impl hyper::rt::Write for ServerEnd {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut state = self.outgoing.lock();
        if state.read_closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the test's end of the connection is gone",
            )));
        }
        if state.bytes.len() >= PIPE_CAPACITY {
            state.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = state.put(buf);
        drop(state);
        self.outgoing.changed.notify_all();
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.outgoing.close_writing();
        Poll::Ready(Ok(()))
    }
}

impl Drop for ServerEnd {
    fn drop(&mut self) {
        // Reading side first: once the test sees the end of the stream, its
        // writes must already fail.
        self.incoming.close_reading();
        self.outgoing.close_writing();
    }
}

/// An in-memory connection: the test's end and the server's.
pub(super) fn duplex() -> (TestStream, ServerEnd) {
    let to_server = Arc::new(Pipe::default());
    let from_server = Arc::new(Pipe::default());
    let server = ServerEnd {
        incoming: to_server.clone(),
        outgoing: from_server.clone(),
    };
    let client = TestStream {
        pipes: Arc::new(ClientPipes {
            to_server,
            from_server,
        }),
        read_timeout: Some(TEST_STREAM_TIMEOUT),
        write_timeout: Some(TEST_STREAM_TIMEOUT),
    };
    (client, server)
}

/// One direction of an in-memory connection. The test's end waits on the
/// condition variable, the server's end with a waker.
#[derive(Default)]
struct Pipe {
    state: Mutex<PipeState>,
    changed: Condvar,
}

#[derive(Default)]
struct PipeState {
    bytes: VecDeque<u8>,
    /// The writer is done: reads end once `bytes` is empty.
    write_closed: bool,
    /// The reader is gone: writes fail.
    read_closed: bool,
    /// The server's task waiting on this pipe (to read, or for room).
    waker: Option<Waker>,
}

impl PipeState {
    fn take_into(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.bytes.len());
        for (to, from) in buf.iter_mut().zip(self.bytes.drain(..n)) {
            *to = from;
        }
        n
    }

    fn put(&mut self, buf: &[u8]) -> usize {
        let n = buf
            .len()
            .min(PIPE_CAPACITY - self.bytes.len().min(PIPE_CAPACITY));
        self.bytes.extend(&buf[..n]);
        n
    }
}

impl Pipe {
    fn lock(&self) -> MutexGuard<'_, PipeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for the other end to change the pipe, until `deadline`.
    fn wait<'a>(
        &self,
        state: MutexGuard<'a, PipeState>,
        deadline: Option<Instant>,
        what: &str,
        timeout: Option<Duration>,
    ) -> io::Result<MutexGuard<'a, PipeState>> {
        let Some(deadline) = deadline else {
            return Ok(self.changed.wait(state).unwrap_or_else(|e| e.into_inner()));
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "TestStream: {what} timed out after {:?}",
                    timeout.unwrap_or_default()
                ),
            ));
        }
        let (state, _) = self
            .changed
            .wait_timeout(state, left)
            .unwrap_or_else(|e| e.into_inner());
        Ok(state)
    }

    fn close_writing(&self) {
        let waker = {
            let mut state = self.lock();
            state.write_closed = true;
            state.waker.take()
        };
        self.changed.notify_all();
        wake(waker);
    }

    fn close_reading(&self) {
        let waker = {
            let mut state = self.lock();
            state.read_closed = true;
            state.bytes.clear();
            state.waker.take()
        };
        self.changed.notify_all();
        wake(waker);
    }
}

/// Wakes outside the pipe's lock: the woken task may run at once.
fn wake(waker: Option<Waker>) {
    if let Some(waker) = waker {
        waker.wake();
    }
}

fn server_gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the server's end of the connection is gone",
    )
}
