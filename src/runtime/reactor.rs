//! The mio event loop: turns socket readiness into task wake-ups.
//!
//! There is no reactor thread of its own. Whichever pool thread has nothing to run
//! takes the [`Driver`] (the `Poll` behind a mutex) and waits for events itself, so
//! a request can be read, handled and answered on one thread with no hand-off.

use std::io;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use mio::event::Source;
use mio::{Events, Interest, Registry, Token};

use super::sync::{self, Arc, Mutex, MutexGuard};
use super::timer::Timers;

/// The token of the waker that interrupts a blocked `poll`.
const WAKE_TOKEN: Token = Token(usize::MAX);

pub(crate) const READABLE: u8 = 0b0001;
pub(crate) const WRITABLE: u8 = 0b0010;
/// The peer closed its side (or the socket failed): sticky, never cleared, so
/// a short read that cleared READABLE cannot hide the end of the stream.
const READ_CLOSED: u8 = 0b0100;
const WRITE_CLOSED: u8 = 0b1000;

/// The sticky bit that also makes `direction` ready.
fn closed_bit(direction: u8) -> u8 {
    if direction == READABLE {
        READ_CLOSED
    } else {
        WRITE_CLOSED
    }
}

/// Readiness and wakers of one registered socket.
pub(crate) struct ScheduledIo {
    state: Mutex<IoState>,
}

struct IoState {
    /// READABLE | WRITABLE bits believed true. Starts with both set, so the first
    /// read is attempted without waiting for an event: a request that arrived
    /// before the socket was registered is never lost.
    readiness: u8,
    /// Bumped by every event, so a `WouldBlock` only clears readiness that no
    /// event has refreshed since the attempt began.
    tick: u64,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

impl ScheduledIo {
    /// Ready when `direction` is believed ready; otherwise stores the waker.
    /// Returns the tick to hand back to [`ScheduledIo::clear`].
    pub(crate) fn poll_ready(&self, cx: &mut Context<'_>, direction: u8) -> Poll<u64> {
        let mut state = self.lock();
        if state.readiness & (direction | closed_bit(direction)) != 0 {
            return Poll::Ready(state.tick);
        }
        let slot = if direction == READABLE {
            &mut state.reader
        } else {
            &mut state.writer
        };
        match slot {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Forgets `direction`'s readiness after a `WouldBlock`, unless an event came
    /// in after `tick` was read.
    pub(crate) fn clear(&self, direction: u8, tick: u64) {
        let mut state = self.lock();
        if state.tick == tick {
            state.readiness &= !direction;
        }
    }

    fn set(&self, readiness: u8, wakers: &mut Vec<Waker>) {
        let mut state = self.lock();
        state.readiness |= readiness;
        state.tick += 1;
        if readiness & (READABLE | READ_CLOSED) != 0 {
            wakers.extend(state.reader.take());
        }
        if readiness & (WRITABLE | WRITE_CLOSED) != 0 {
            wakers.extend(state.writer.take());
        }
    }

    fn lock(&self) -> MutexGuard<'_, IoState> {
        sync::lock(&self.state)
    }
}

/// The sockets registered with the reactor, by token.
#[derive(Default)]
struct Slab {
    entries: Vec<Option<Arc<ScheduledIo>>>,
    free: Vec<usize>,
}

pub(crate) struct Reactor {
    driver: Mutex<Driver>,
    registry: Registry,
    waker: mio::Waker,
    sources: Mutex<Slab>,
    timers: Timers,
}

/// The right to wait for events: whoever holds it is the poller.
pub(crate) struct Driver {
    poll: mio::Poll,
    events: Events,
    wakers: Vec<Waker>,
}

impl Reactor {
    pub(crate) fn new() -> io::Result<Reactor> {
        let poll = mio::Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let waker = mio::Waker::new(poll.registry(), WAKE_TOKEN)?;
        Ok(Reactor {
            driver: Mutex::new(Driver {
                poll,
                events: Events::with_capacity(1024),
                wakers: Vec::new(),
            }),
            registry,
            waker,
            sources: Mutex::new(Slab::default()),
            timers: Timers::default(),
        })
    }

    /// Takes the driver if nobody holds it.
    pub(crate) fn try_driver(&self) -> Option<MutexGuard<'_, Driver>> {
        sync::try_lock(&self.driver)
    }

    pub(crate) fn timers(&self) -> &Timers {
        &self.timers
    }

    /// Interrupts a driver blocked in `poll`.
    pub(crate) fn wake_driver(&self) {
        if let Err(err) = self.waker.wake() {
            log::warn!("could not wake the reactor: {err}");
        }
    }

    /// Registers `source` for both directions; its readiness starts as "ready"
    /// (see [`IoState::readiness`]).
    pub(crate) fn register(
        &self,
        source: &mut impl Source,
    ) -> io::Result<(usize, Arc<ScheduledIo>)> {
        let io = Arc::new(ScheduledIo {
            state: Mutex::new(IoState {
                readiness: READABLE | WRITABLE,
                tick: 0,
                reader: None,
                writer: None,
            }),
        });
        // Routable before registered: an event that arrives between the two steps
        // finds its entry.
        let token = {
            let mut slab = self.lock_sources();
            match slab.free.pop() {
                Some(index) => {
                    slab.entries[index] = Some(io.clone());
                    index
                }
                None => {
                    slab.entries.push(Some(io.clone()));
                    slab.entries.len() - 1
                }
            }
        };
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(err) = self.registry.register(source, Token(token), interest) {
            self.release(token);
            return Err(err);
        }
        Ok((token, io))
    }

    pub(crate) fn deregister(&self, source: &mut impl Source, token: usize) {
        if let Err(err) = self.registry.deregister(source) {
            log::debug!("deregistering a socket failed: {err}");
        }
        self.release(token);
    }

    fn release(&self, token: usize) {
        let mut slab = self.lock_sources();
        if let Some(entry) = slab.entries.get_mut(token) {
            if entry.take().is_some() {
                slab.free.push(token);
            }
        }
    }

    fn lock_sources(&self) -> MutexGuard<'_, Slab> {
        sync::lock(&self.sources)
    }

    /// Waits up to `timeout` (or the next timer's deadline, if sooner) for events,
    /// then wakes the tasks they concern and those whose timers expired.
    /// `after_poll` runs between the wait and the wake-ups. Returns how many
    /// tasks were woken.
    pub(crate) fn turn(
        &self,
        driver: &mut Driver,
        timeout: Option<Duration>,
        after_poll: impl FnOnce(),
    ) -> usize {
        let Driver {
            poll,
            events,
            wakers,
        } = driver;
        let timeout = self.timers.before_poll(timeout);
        let polled = poll.poll(events, timeout);
        after_poll();
        self.timers.after_poll(wakers);
        if let Err(err) = polled {
            if err.kind() != io::ErrorKind::Interrupted {
                log::error!("polling for socket events failed: {err}");
                // Do not spin on a persistent error.
                std::thread::sleep(Duration::from_millis(10));
            }
        } else {
            let slab = self.lock_sources();
            for event in events.iter() {
                if event.token() == WAKE_TOKEN {
                    continue;
                }
                let Some(Some(io)) = slab.entries.get(event.token().0) else {
                    continue;
                };
                let mut readiness = 0;
                if event.is_readable() {
                    readiness |= READABLE;
                }
                if event.is_writable() {
                    readiness |= WRITABLE;
                }
                if event.is_read_closed() || event.is_error() {
                    readiness |= READ_CLOSED;
                }
                if event.is_write_closed() || event.is_error() {
                    readiness |= WRITE_CLOSED;
                }
                io.set(readiness, wakers);
            }
        }
        let woken = wakers.len();
        for waker in wakers.drain(..) {
            waker.wake();
        }
        woken
    }
}
