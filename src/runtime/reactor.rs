//! The mio event loop: turns socket readiness into task wake-ups.
//!
//! There is no reactor thread of its own. Whichever pool thread has nothing to run
//! takes the [`Driver`] (the `Poll` behind a mutex) and waits for events itself, so
//! a request can be read, handled and answered on one thread with no hand-off.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Weak;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Registry, Token};

use super::sync::{self, Arc, AtomicU64, Mutex, MutexGuard, Ordering};
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
    /// READABLE | WRITABLE | *_CLOSED bits believed true (the low byte), and a
    /// tick bumped by every event (the rest), in one word so that the common
    /// poll, which finds the socket ready, takes no lock. Starts with both
    /// directions ready, so the first read is attempted without waiting for an
    /// event: a request that arrived before the socket was registered is never
    /// lost. The tick lets a `WouldBlock` clear only readiness that no event
    /// has refreshed since the attempt began.
    readiness: AtomicU64,
    wakers: Mutex<IoWakers>,
}

#[derive(Default)]
struct IoWakers {
    reader: Option<Waker>,
    writer: Option<Waker>,
}

/// Where the tick starts in `ScheduledIo::readiness`.
const TICK_SHIFT: u32 = 8;
const BITS: u64 = (1 << TICK_SHIFT) - 1;

impl ScheduledIo {
    fn new() -> ScheduledIo {
        ScheduledIo {
            readiness: AtomicU64::new(u64::from(READABLE | WRITABLE)),
            wakers: Mutex::new(IoWakers::default()),
        }
    }

    /// Ready when `direction` is believed ready; otherwise stores the waker.
    /// Returns the tick to hand back to [`ScheduledIo::clear`].
    pub(crate) fn poll_ready(&self, cx: &mut Context<'_>, direction: u8) -> Poll<u64> {
        let wanted = u64::from(direction | closed_bit(direction));
        let word = self.readiness.load(Ordering::Acquire);
        if word & wanted != 0 {
            return Poll::Ready(word >> TICK_SHIFT);
        }
        let mut wakers = sync::lock(&self.wakers);
        let slot = if direction == READABLE {
            &mut wakers.reader
        } else {
            &mut wakers.writer
        };
        match slot {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        // `set` updates the word before it takes the wakers' lock: an event
        // that came in since the load above is either seen here or finds the
        // waker just stored.
        let word = self.readiness.load(Ordering::Acquire);
        if word & wanted != 0 {
            return Poll::Ready(word >> TICK_SHIFT);
        }
        Poll::Pending
    }

    /// Forgets `direction`'s readiness after a `WouldBlock`, unless an event came
    /// in after `tick` was read.
    pub(crate) fn clear(&self, direction: u8, tick: u64) {
        let mut word = self.readiness.load(Ordering::Acquire);
        while word >> TICK_SHIFT == tick {
            let cleared = word & !u64::from(direction);
            match self.readiness.compare_exchange_weak(
                word,
                cleared,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(actual) => word = actual,
            }
        }
    }

    fn set(&self, readiness: u8, wakers: &mut Vec<Waker>) {
        let mut word = self.readiness.load(Ordering::Acquire);
        loop {
            let tick = (word >> TICK_SHIFT).wrapping_add(1);
            let next = (tick << TICK_SHIFT) | (word & BITS) | u64::from(readiness);
            match self.readiness.compare_exchange_weak(
                word,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => word = actual,
            }
        }
        let mut io_wakers = sync::lock(&self.wakers);
        if readiness & (READABLE | READ_CLOSED) != 0 {
            wakers.extend(io_wakers.reader.take());
        }
        if readiness & (WRITABLE | WRITE_CLOSED) != 0 {
            wakers.extend(io_wakers.writer.take());
        }
    }
}

/// The sockets registered with the reactor, by token.
///
/// A token is a slot's index and the slot's generation, bumped each time the
/// slot is freed: an event that `poll` returned for a socket closed since
/// (its slot already reused by a new connection) no longer matches, instead
/// of setting the new socket's sticky closed bits.
#[derive(Default)]
struct Slab {
    entries: Vec<Entry>,
    free: Vec<usize>,
}

struct Entry {
    generation: usize,
    io: Option<Arc<ScheduledIo>>,
    /// For a socket that a group's forced close must reach: the group, and
    /// the socket itself, shared with its owner (see [`Reactor::close_group`]).
    closable: Option<(u64, Weak<dyn Closable>)>,
}

/// A registered socket that can be shut down from another thread, while its
/// owner still holds it: the connection ends for the peer at once, and the
/// owner's next read or write fails.
pub(crate) trait Closable: Send + Sync {
    fn shut_down(&self);
}

/// Bits of a token that hold the slot's index; the generation has the rest.
const INDEX_BITS: u32 = if usize::BITS >= 64 { 32 } else { 24 };
const INDEX_MASK: usize = (1 << INDEX_BITS) - 1;

impl Slab {
    fn token(&self, index: usize) -> usize {
        let generation = self.entries[index].generation & (usize::MAX >> INDEX_BITS);
        // Never the waker's token: no slot index is all ones.
        (generation << INDEX_BITS) | index
    }

    /// The entry `token` names, if it is still that registration.
    fn get(&self, token: usize) -> Option<&Arc<ScheduledIo>> {
        let index = token & INDEX_MASK;
        let entry = self.entries.get(index)?;
        if self.token(index) != token {
            return None;
        }
        entry.io.as_ref()
    }
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

    /// Registers `socket` by its descriptor for both directions; its
    /// readiness starts as "ready" (see [`ScheduledIo::readiness`]). End it
    /// with [`Reactor::deregister_fd`] while the socket is still open.
    pub(crate) fn register_fd(
        &self,
        socket: &impl AsRawFd,
    ) -> io::Result<(usize, Arc<ScheduledIo>)> {
        self.register_entry(socket.as_raw_fd(), None)
    }

    /// Registers `socket` as [`Reactor::register_fd`] does, and as one of
    /// `group`'s, which [`Reactor::close_group`] shuts down.
    pub(crate) fn register_closable<S>(
        &self,
        socket: &Arc<S>,
        group: u64,
    ) -> io::Result<(usize, Arc<ScheduledIo>)>
    where
        S: Closable + AsRawFd + 'static,
    {
        let weak: Weak<dyn Closable> = Arc::downgrade(socket) as Weak<dyn Closable>;
        self.register_entry(socket.as_raw_fd(), Some((group, weak)))
    }

    /// Takes a slot for `fd` (with what a forced close reaches, if
    /// anything), then registers it with the poller.
    fn register_entry(
        &self,
        fd: RawFd,
        closable: Option<(u64, Weak<dyn Closable>)>,
    ) -> io::Result<(usize, Arc<ScheduledIo>)> {
        let io = Arc::new(ScheduledIo::new());
        // Routable before registered: an event that arrives between the two steps
        // finds its entry.
        let token = {
            let mut slab = self.lock_sources();
            let index = match slab.free.pop() {
                Some(index) => {
                    let entry = &mut slab.entries[index];
                    entry.io = Some(io.clone());
                    entry.closable = closable;
                    index
                }
                None => {
                    if slab.entries.len() >= INDEX_MASK {
                        return Err(io::Error::other("too many sockets registered"));
                    }
                    slab.entries.push(Entry {
                        generation: 0,
                        io: Some(io.clone()),
                        closable,
                    });
                    slab.entries.len() - 1
                }
            };
            slab.token(index)
        };
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(err) = self
            .registry
            .register(&mut SourceFd(&fd), Token(token), interest)
        {
            self.release(token);
            return Err(err);
        }
        Ok((token, io))
    }

    /// Ends a registration by descriptor ([`Reactor::register_fd`],
    /// [`Reactor::register_closable`]); call it while the socket is still open.
    pub(crate) fn deregister_fd(&self, socket: &impl AsRawFd, token: usize) {
        let fd = socket.as_raw_fd();
        if let Err(err) = self.registry.deregister(&mut SourceFd(&fd)) {
            log::debug!("deregistering a socket failed: {err}");
        }
        self.release(token);
    }

    /// Shuts down every socket of `group` still registered: the forced end
    /// of a graceful shutdown. Each is reached through its registration, the
    /// socket shared with its owner, never through a descriptor number that
    /// a closed socket may have handed on.
    pub(crate) fn close_group(&self, group: u64) {
        let sockets: Vec<Arc<dyn Closable>> = self
            .lock_sources()
            .entries
            .iter()
            .filter_map(|entry| match &entry.closable {
                Some((of, socket)) if *of == group => socket.upgrade(),
                _ => None,
            })
            .collect();
        for socket in sockets {
            socket.shut_down();
        }
    }

    fn release(&self, token: usize) {
        let mut slab = self.lock_sources();
        if slab.get(token).is_none() {
            return;
        }
        let index = token & INDEX_MASK;
        let entry = &mut slab.entries[index];
        entry.io = None;
        entry.closable = None;
        entry.generation = entry.generation.wrapping_add(1);
        slab.free.push(index);
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
                let Some(io) = slab.get(event.token().0) else {
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

#[cfg(all(test, not(astra_loom)))]
mod tests {
    use super::*;

    /// An event that `poll` returned for a socket closed since must not reach
    /// the socket registered next in its slot: it would set the new socket's
    /// sticky closed bits, and its reads would spin on EAGAIN for ever (seen
    /// as an upgrade request never answered in `many_upgrades_open_and_close`).
    #[test]
    fn a_reused_slot_does_not_take_events_meant_for_its_last_socket() {
        let reactor = Reactor::new().unwrap();
        let (first, _peer) = mio::net::UnixStream::pair().unwrap();
        let (old_token, _) = reactor.register_fd(&first).unwrap();
        reactor.deregister_fd(&first, old_token);
        let (second, _peer2) = mio::net::UnixStream::pair().unwrap();
        let (new_token, new_io) = reactor.register_fd(&second).unwrap();
        let slab = reactor.lock_sources();
        assert_eq!(
            old_token & INDEX_MASK,
            new_token & INDEX_MASK,
            "the slot is reused"
        );
        assert_ne!(old_token, new_token);
        assert!(slab.get(old_token).is_none(), "a stale token finds nothing");
        assert!(Arc::ptr_eq(slab.get(new_token).unwrap(), &new_io));
        drop(slab);
        // Releasing with the stale token leaves the new registration alone.
        reactor.release(old_token);
        assert!(reactor.lock_sources().get(new_token).is_some());
        assert_ne!(new_token, WAKE_TOKEN.0);
    }
}
