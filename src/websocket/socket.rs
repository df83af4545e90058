//! A messages-mode socket as its connection's task: reads frames on the
//! reactor, runs the [`Handler`](super::Handler) on a worker per message,
//! writes what the [`Sender`] queued, and keeps the idle, ping and close
//! deadlines.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use hyper::rt::{Read as _, Write as _};
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Error as WsError, WebSocket};

use super::handshake::Settings;
use super::sender::Sender;
use super::{trim, CloseCode, CloseFrame, Handler, Message};
use crate::error::Timeout;
use crate::io::sync_io::SyncIo;
use crate::runtime::pool::UserCall;
use crate::runtime::timer::{Sleep, Timer};
use crate::server::upgrade::{Io, UpgradeParts};

/// How long a socket we closed waits for the client's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// hyper's upgraded connection as the non-blocking `Read + Write` tungstenite
/// expects: `Pending` is `WouldBlock`, and the task is woken when it can go
/// on.
struct Bridge {
    io: Io,
    waker: Waker,
}

impl Read for Bridge {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut cx = Context::from_waker(&self.waker);
        SyncIo {
            io: &mut self.io,
            cx: &mut cx,
        }
        .read(buf)
    }
}

impl Write for Bridge {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut cx = Context::from_waker(&self.waker);
        SyncIo {
            io: &mut self.io,
            cx: &mut cx,
        }
        .write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut cx = Context::from_waker(&self.waker);
        SyncIo {
            io: &mut self.io,
            cx: &mut cx,
        }
        .flush()
    }
}

/// Where a socket is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Open,
    /// We sent a close frame; waiting for the client's, until the deadline.
    Closing(Instant),
    /// The connection failed (protocol error, limits): our close frame goes
    /// out, then the socket closes without reading frames any more.
    Failing(Instant),
    /// Nothing more to read or write.
    Done,
}

/// A messages-mode socket: the connection's task.
pub(super) struct Socket {
    ws: WebSocket<Bridge>,
    parts: UpgradeParts,
    settings: Settings,
    handler: Arc<dyn Handler>,
    sender: Sender,
    inbox: VecDeque<Message>,
    running: Option<UserCall<()>>,
    opened: bool,
    close_reported: bool,
    peer_close: Option<CloseFrame>,
    phase: Phase,
    /// The last message tungstenite took has been flushed to the socket.
    flushed: bool,
    shutdown_sent: bool,
    /// A protocol error or limit was hit: the close code and reason to send
    /// once what came before is answered, and the latest moment to send it.
    failure: Option<(CloseCode, String, Instant)>,
    /// A failing socket has shut down its sending side.
    write_shut: bool,
    last_heard: Instant,
    last_ping: Option<Instant>,
    sleep: Option<Sleep>,
    /// The largest messages read and written: about what tungstenite's
    /// buffers grew to, freed with the socket (see `crate::trim`).
    largest: (usize, usize),
}

impl Socket {
    pub(super) fn new(
        io: Io,
        parts: UpgradeParts,
        config: WebSocketConfig,
        settings: Settings,
        handler: Arc<dyn Handler>,
    ) -> Socket {
        let bridge = Bridge {
            io,
            waker: Waker::noop().clone(),
        };
        let sender = Sender::new(parts.context.write_timeout);
        Socket {
            ws: WebSocket::from_raw_socket(bridge, Role::Server, Some(config)),
            parts,
            settings,
            handler,
            sender,
            inbox: VecDeque::new(),
            running: None,
            opened: false,
            close_reported: false,
            peer_close: None,
            phase: Phase::Open,
            flushed: true,
            shutdown_sent: false,
            failure: None,
            write_shut: false,
            last_heard: Instant::now(),
            last_ping: None,
            sleep: None,
            largest: (0, 0),
        }
    }

    /// Sends our close frame (once) and starts waiting for the client's.
    fn close(&mut self, code: CloseCode, reason: &str) {
        if self.phase != Phase::Open {
            return;
        }
        self.mark_closed();
        let frame = CloseFrame {
            code,
            reason: reason.to_owned().into(),
        };
        match self.ws.close(Some(frame)) {
            Ok(()) => {}
            Err(WsError::Io(err)) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => {
                self.phase = Phase::Done;
                return;
            }
        }
        self.flushed = false;
        self.phase = Phase::Closing(Instant::now() + CLOSE_GRACE);
    }

    /// Fails the connection: a close frame with `code`, then no more frames
    /// are read (RFC 6455, 7.1.7).
    ///
    /// Reading stops at once; the close waits (up to [`CLOSE_GRACE`]) until
    /// the messages received before the error have been handled and what
    /// the handler sent for them is on the wire.
    fn fail(&mut self, code: CloseCode, why: &str) {
        log::debug!("closing a WebSocket: {why}");
        self.parts.ended(crate::server::stats::CloseReason::Error);
        if self.failure.is_none() {
            self.failure = Some((code, why.to_owned(), Instant::now() + CLOSE_GRACE));
        }
    }

    /// Sends the close frame of a failure once nothing before it is pending.
    fn finish_failure(&mut self) -> bool {
        let Some((_, _, deadline)) = &self.failure else {
            return false;
        };
        let settled = self.running.is_none()
            && self.inbox.is_empty()
            && self.flushed
            && self.sender.shared.lock().queue.is_empty();
        if !settled && Instant::now() < *deadline {
            return false;
        }
        let (code, why, _) = self.failure.take().expect("checked above");
        let open = self.phase == Phase::Open;
        self.close(code, &why);
        if open || matches!(self.phase, Phase::Closing(_)) {
            self.phase = Phase::Failing(Instant::now() + CLOSE_GRACE);
        }
        true
    }

    /// Senders can send no more; those waiting give up.
    fn mark_closed(&self) {
        let mut state = self.sender.shared.lock();
        state.closed = true;
        state.queue.clear();
        drop(state);
        self.sender.shared.space.notify_all();
    }

    /// Runs a handler callback on a worker.
    fn call(&mut self, f: impl FnOnce(&dyn Handler, &Sender) + Send + 'static) {
        let handler = self.handler.clone();
        let sender = self.sender.clone();
        self.running = Some(
            self.parts
                .context
                .pool
                .call_user(false, move || f(&*handler, &sender)),
        );
    }

    /// One round of work; returns whether anything happened.
    fn step(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        if let Some(call) = &mut self.running {
            if let Poll::Ready(result) = Pin::new(call).poll(cx) {
                self.running = None;
                progress = true;
                if result.is_err() {
                    log::error!("a WebSocket handler panicked; closing the socket with 1011");
                    self.inbox.clear();
                    self.fail(CloseCode::Error, "handler panicked");
                }
            }
        }
        if self.running.is_none() {
            if !self.opened {
                self.opened = true;
                self.call(|handler, sender| handler.on_open(sender));
                progress = true;
            } else if let Some(message) = self.inbox.pop_front() {
                self.call(move |handler, sender| handler.on_message(sender, message));
                progress = true;
            } else if self.phase == Phase::Done && !self.close_reported {
                self.close_reported = true;
                let frame = self.peer_close.take();
                self.call(move |handler, sender| handler.on_close(sender, frame));
                progress = true;
            }
        }
        progress |= self.write_queued(cx);
        progress |= self.read_frames();
        progress |= self.finish_failure();
        progress
    }

    /// Moves queued messages to tungstenite, one at a time once the previous
    /// one is on the wire (so at most one message waits inside it).
    fn write_queued(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        loop {
            if matches!(self.phase, Phase::Done | Phase::Failing(_)) && self.flushed {
                return progress;
            }
            if !self.flushed {
                match self.ws.flush() {
                    Ok(()) => self.flushed = true,
                    Err(WsError::Io(err)) if err.kind() == io::ErrorKind::WouldBlock => {
                        return progress;
                    }
                    Err(WsError::ConnectionClosed) | Err(WsError::AlreadyClosed) => {
                        self.flushed = true;
                        self.phase = Phase::Done;
                        return true;
                    }
                    Err(err) => {
                        log::debug!("writing to a WebSocket failed: {err}");
                        self.parts
                            .ended(crate::server::stats::CloseReason::ClientGone);
                        self.flushed = true;
                        self.phase = Phase::Done;
                        return true;
                    }
                }
            }
            if self.phase != Phase::Open {
                return progress;
            }
            let mut state = self.sender.shared.lock();
            let next = state.queue.pop_front();
            let close = if next.is_none() {
                state.close.take()
            } else {
                None
            };
            if next.is_none() && close.is_none() {
                state.waker = Some(cx.waker().clone());
                return progress;
            }
            drop(state);
            self.sender.shared.space.notify_one();
            progress = true;
            if let Some(frame) = close {
                self.close(frame.code, &frame.reason);
                continue;
            }
            let message = next.expect("checked above");
            self.largest.1 = self.largest.1.max(message.len());
            match self.ws.write(message) {
                Ok(()) => {}
                Err(WsError::Io(err)) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(WsError::ConnectionClosed) | Err(WsError::AlreadyClosed) => {
                    self.phase = Phase::Done;
                }
                Err(err) => {
                    log::debug!("writing to a WebSocket failed: {err}");
                    self.parts
                        .ended(crate::server::stats::CloseReason::ClientGone);
                    self.phase = Phase::Done;
                }
            }
            self.flushed = false;
        }
    }

    /// Reads frames while the inbox has room.
    fn read_frames(&mut self) -> bool {
        let mut progress = false;
        loop {
            match self.phase {
                Phase::Done => return progress,
                Phase::Failing(_) => return self.drain() || progress,
                Phase::Open | Phase::Closing(_) => {}
            }
            if self.inbox.len() >= self.settings.max_queued || self.failure.is_some() {
                return progress;
            }
            match self.ws.read() {
                Ok(message) => {
                    progress = true;
                    self.last_heard = Instant::now();
                    self.last_ping = None;
                    match message {
                        Message::Text(_) | Message::Binary(_) => {
                            self.largest.0 = self.largest.0.max(message.len());
                            self.inbox.push_back(message);
                        }
                        Message::Close(frame) => {
                            // tungstenite queued our reply; it goes with the
                            // next flush, and the following read ends.
                            self.peer_close = frame;
                            self.mark_closed();
                            self.flushed = false;
                            if self.phase == Phase::Open {
                                self.phase = Phase::Closing(Instant::now() + CLOSE_GRACE);
                            }
                        }
                        Message::Ping(_) | Message::Pong(_) => self.flushed = false,
                        Message::Frame(_) => {}
                    }
                }
                Err(WsError::Io(err)) if err.kind() == io::ErrorKind::WouldBlock => {
                    return progress;
                }
                Err(WsError::ConnectionClosed) | Err(WsError::AlreadyClosed) => {
                    self.mark_closed();
                    self.phase = Phase::Done;
                    return true;
                }
                Err(WsError::Capacity(err)) => {
                    self.fail(CloseCode::Size, &format!("{err}"));
                    return true;
                }
                Err(WsError::Utf8(_)) => {
                    self.fail(CloseCode::Invalid, "invalid UTF-8 in a text message");
                    return true;
                }
                Err(WsError::Protocol(
                    tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                )) => {
                    self.parts
                        .ended(crate::server::stats::CloseReason::ClientGone);
                    self.mark_closed();
                    self.phase = Phase::Done;
                    return true;
                }
                Err(WsError::Protocol(err)) => {
                    self.fail(CloseCode::Protocol, &format!("{err}"));
                    return true;
                }
                Err(err) => {
                    log::debug!("reading a WebSocket failed: {err}");
                    self.parts
                        .ended(crate::server::stats::CloseReason::ClientGone);
                    self.mark_closed();
                    self.phase = Phase::Done;
                    return true;
                }
            }
        }
    }

    /// A failed connection: once our close frame is out, ends our side and
    /// reads and drops what the client still sends until it closes, so the
    /// close frame is not lost to a reset.
    fn drain(&mut self) -> bool {
        if !self.flushed {
            return false;
        }
        let bridge = self.ws.get_mut();
        let waker = bridge.waker.clone();
        let mut cx = Context::from_waker(&waker);
        if !self.write_shut {
            self.write_shut = true;
            let _ = Pin::new(&mut bridge.io).poll_shutdown(&mut cx);
        }
        let mut scratch = [0u8; 4096];
        loop {
            let mut read = hyper::rt::ReadBuf::new(&mut scratch);
            match Pin::new(&mut bridge.io).poll_read(&mut cx, read.unfilled()) {
                Poll::Ready(Ok(())) if !read.filled().is_empty() => {}
                Poll::Ready(_) => {
                    self.phase = Phase::Done;
                    return true;
                }
                Poll::Pending => return false,
            }
        }
    }

    /// The next moment a timer must look at this socket.
    fn next_deadline(&self) -> Option<Instant> {
        if let Some((_, _, deadline)) = &self.failure {
            return Some(*deadline);
        }
        match self.phase {
            Phase::Closing(at) | Phase::Failing(at) => Some(at),
            Phase::Done => None,
            Phase::Open => {
                let idle = self.settings.idle_timeout.map(|t| self.last_heard + t);
                let ping = match (self.settings.ping_interval, self.last_ping) {
                    (Some(interval), None) => Some(self.last_heard + interval),
                    _ => None,
                };
                [idle, ping].into_iter().flatten().min()
            }
        }
    }

    /// Acts on the timers that are due.
    fn on_time(&mut self, now: Instant) {
        if self.failure.is_some() {
            // `finish_failure` closes at its deadline; no pings meanwhile.
            return;
        }
        match self.phase {
            Phase::Closing(at) | Phase::Failing(at) if now >= at => {
                // Our close frame got no answer in time.
                self.parts
                    .ended(crate::server::stats::CloseReason::ClientGone);
                self.mark_closed();
                self.phase = Phase::Done;
            }
            Phase::Open => {
                if let Some(idle) = self.settings.idle_timeout {
                    if now >= self.last_heard + idle {
                        self.parts
                            .ended(crate::server::stats::CloseReason::KeepAliveTimeout);
                        log::debug!("closing a WebSocket: {}", Timeout::WebSocketIdle);
                        // The close frame's reason stays the short wire text.
                        self.close(CloseCode::Normal, "idle timeout");
                        return;
                    }
                }
                if let (Some(interval), None) = (self.settings.ping_interval, self.last_ping) {
                    if now >= self.last_heard + interval {
                        self.last_ping = Some(now);
                        match self.ws.write(Message::Ping(Default::default())) {
                            Ok(()) => {}
                            Err(WsError::Io(err)) if err.kind() == io::ErrorKind::WouldBlock => {}
                            Err(_) => {
                                self.parts
                                    .ended(crate::server::stats::CloseReason::ClientGone);
                                self.phase = Phase::Done;
                            }
                        }
                        self.flushed = false;
                    }
                }
            }
            _ => {}
        }
    }
}

impl Future for Socket {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if !this.ws.get_ref().waker.will_wake(cx.waker()) {
            this.ws.get_mut().waker = cx.waker().clone();
        }
        this.parts.guard.watch(cx.waker());
        let signal = this.parts.guard.signal();
        if signal.is_forced() {
            this.mark_closed();
            return Poll::Ready(());
        }
        if signal.is_requested() && !this.shutdown_sent {
            this.shutdown_sent = true;
            this.parts
                .ended(crate::server::stats::CloseReason::Shutdown);
            // After what is already queued, like a sender's close.
            this.sender.close(CloseCode::Away, "server shutting down");
        }
        loop {
            while this.step(cx) {}
            let Some(deadline) = this.next_deadline() else {
                break;
            };
            let now = Instant::now();
            if now >= deadline {
                this.on_time(now);
                continue;
            }
            let pool = &this.parts.context.pool;
            let sleep = this
                .sleep
                .get_or_insert_with(|| Timer(pool.clone()).sleep_until(deadline));
            if sleep.deadline() != deadline {
                sleep.reset(deadline);
            }
            match Pin::new(sleep).poll(cx) {
                Poll::Pending => break,
                Poll::Ready(()) => {
                    this.sleep = None;
                    this.on_time(Instant::now());
                }
            }
        }
        if this.phase == Phase::Done && this.running.is_none() && this.close_reported {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.mark_closed();
        trim::released(self.largest.0 + self.largest.1);
    }
}
