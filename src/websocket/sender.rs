//! [`Sender`]: the bounded queue any thread sends a socket's messages
//! through, and the [`SendError`] a send can fail with.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::Waker;
use std::time::{Duration, Instant};

use super::{CloseCode, CloseFrame, Message};
use crate::error::Timeout;

/// Messages a socket's senders may queue before `send` waits.
const MAX_OUTGOING: usize = 1024;

/// Sends messages to one socket, from any thread; cheap to clone.
#[derive(Clone)]
pub struct Sender {
    pub(super) shared: Arc<Shared>,
}

impl fmt::Debug for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("id", &self.shared.id)
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// Why a message could not be sent.
///
/// More causes may be added; match with a `_` arm.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The socket is closed or closing.
    Closed,
    /// The outgoing queue stayed full (a client that does not read) for the
    /// server's `send_timeout`: the timeout [`Timeout::Send`], as
    /// [`SendError::timeout`] says.
    TimedOut,
    /// `try_send` found the outgoing queue full.
    Full,
}

impl SendError {
    /// The timeout that failed the send, by the name stats, logs and I/O
    /// errors give it: [`Timeout::Send`] for [`SendError::TimedOut`].
    pub fn timeout(&self) -> Option<Timeout> {
        match self {
            SendError::TimedOut => Some(Timeout::Send),
            _ => None,
        }
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Closed => f.write_str("the WebSocket is closed"),
            SendError::TimedOut => write!(
                f,
                "{}: the WebSocket's client has not read its messages",
                Timeout::Send
            ),
            SendError::Full => f.write_str("the WebSocket's outgoing queue is full"),
        }
    }
}

impl std::error::Error for SendError {}

pub(super) struct Shared {
    id: u64,
    state: Mutex<Outbox>,
    /// Signalled when the queue shrinks or the socket closes.
    pub(super) space: Condvar,
    send_timeout: Option<Duration>,
}

#[derive(Default)]
pub(super) struct Outbox {
    pub(super) queue: VecDeque<Message>,
    pub(super) close: Option<CloseFrame>,
    pub(super) closed: bool,
    /// The socket's task, woken when there is something to send.
    pub(super) waker: Option<Waker>,
}

impl Outbox {
    /// Closing or closed: senders are refused.
    fn refuses_sends(&self) -> bool {
        self.closed || self.close.is_some()
    }
}

/// Wakes the socket's task for what was just queued, after unlocking.
fn wake_socket(mut state: MutexGuard<'_, Outbox>) {
    let waker = state.waker.take();
    drop(state);
    if let Some(waker) = waker {
        waker.wake();
    }
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Outbox> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Sender {
    pub(super) fn new(send_timeout: Option<Duration>) -> Sender {
        Sender {
            shared: Arc::new(Shared {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                state: Mutex::new(Outbox::default()),
                space: Condvar::new(),
                send_timeout,
            }),
        }
    }

    /// A number no other socket of this process has: a key for registries.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// Queues `message` for the socket. While 1,024
    /// messages wait to be sent, it waits for room, up to the server's
    /// `send_timeout`.
    ///
    /// # Errors
    ///
    /// [`SendError::Closed`] once the socket is closing or closed,
    /// [`SendError::TimedOut`] if no room came in time.
    pub fn send(&self, message: impl Into<Message>) -> Result<(), SendError> {
        let deadline = self.shared.send_timeout.map(|t| Instant::now() + t);
        let mut state = self.shared.lock();
        loop {
            if state.refuses_sends() {
                return Err(SendError::Closed);
            }
            if state.queue.len() < MAX_OUTGOING {
                break;
            }
            state = match deadline {
                None => self
                    .shared
                    .space
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                        return Err(SendError::TimedOut);
                    };
                    self.shared
                        .space
                        .wait_timeout(state, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
        state.queue.push_back(message.into());
        wake_socket(state);
        Ok(())
    }

    /// Like [`send`](Sender::send), without waiting.
    ///
    /// # Errors
    ///
    /// [`SendError::Closed`], or [`SendError::Full`] when the queue is full.
    pub fn try_send(&self, message: impl Into<Message>) -> Result<(), SendError> {
        let mut state = self.shared.lock();
        if state.refuses_sends() {
            return Err(SendError::Closed);
        }
        if state.queue.len() >= MAX_OUTGOING {
            return Err(SendError::Full);
        }
        state.queue.push_back(message.into());
        wake_socket(state);
        Ok(())
    }

    /// Closes the socket with `code` and `reason`, after the messages
    /// already queued. Later sends fail with [`SendError::Closed`].
    pub fn close(&self, code: CloseCode, reason: &str) {
        let mut state = self.shared.lock();
        if state.refuses_sends() {
            return;
        }
        state.close = Some(CloseFrame {
            code,
            reason: reason.to_owned().into(),
        });
        self.shared.space.notify_all();
        wake_socket(state);
    }

    /// Whether the socket is closing or closed.
    pub fn is_closed(&self) -> bool {
        let state = self.shared.lock();
        state.refuses_sends()
    }
}

#[cfg(test)]
mod send_error_tests {
    use super::*;

    #[test]
    fn a_send_timeout_is_named_as_everywhere_else() {
        assert_eq!(SendError::TimedOut.timeout(), Some(Timeout::Send));
        assert_eq!(SendError::Closed.timeout(), None);
        assert!(SendError::TimedOut
            .to_string()
            .starts_with("send timeout: "));
    }
}
