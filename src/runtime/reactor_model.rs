//! A stand-in for the mio reactor under loom (`--cfg astra_loom`): the same
//! interface to the pool, with "events" that a model injects by hand. loom
//! cannot run `epoll_wait`; what the models check is the hand-off protocol
//! around it (who polls, who is woken out of a poll), not the kernel.

use std::io;
use std::task::Waker;
use std::time::Duration;

use super::sync::{self, Condvar, Mutex, MutexGuard};
use super::timer::Timers;

pub(crate) struct Reactor {
    driver: Mutex<Driver>,
    pending: Mutex<Pending>,
    condvar: Condvar,
    timers: Timers,
}

/// The right to wait for events: whoever holds it is the poller.
pub(crate) struct Driver;

#[derive(Default)]
struct Pending {
    /// `wake_driver` was called and no poll has returned since.
    woken: bool,
    /// Injected events: the wakers they concern.
    events: Vec<Waker>,
    /// Threads waiting in `turn`.
    polling: usize,
    /// A model waits in [`Reactor::wait_for_poller`] (a turn must tell it).
    watched: bool,
    /// Turns begun so far that end at a deadline on the model clock.
    timed_turns: usize,
}

impl Reactor {
    pub(crate) fn new() -> io::Result<Reactor> {
        Ok(Reactor {
            driver: Mutex::new(Driver),
            pending: Mutex::new(Pending::default()),
            condvar: Condvar::new(),
            timers: Timers::default(),
        })
    }

    pub(crate) fn try_driver(&self) -> Option<MutexGuard<'_, Driver>> {
        sync::try_lock(&self.driver)
    }

    pub(crate) fn timers(&self) -> &Timers {
        &self.timers
    }

    pub(crate) fn wake_driver(&self) {
        sync::lock(&self.pending).woken = true;
        self.condvar.notify_all();
    }

    /// An event for `waker`'s task, as a socket becoming ready would be.
    pub(crate) fn inject(&self, waker: Waker) {
        sync::lock(&self.pending).events.push(waker);
        self.condvar.notify_all();
    }

    /// Waits until a thread waits in `turn`.
    #[cfg(test)]
    pub(crate) fn wait_for_poller(&self) {
        let mut pending = sync::lock(&self.pending);
        pending.watched = true;
        while pending.polling == 0 {
            pending = sync::wait(&self.condvar, pending, None);
        }
        pending.watched = false;
    }

    /// Waits until some thread has begun a turn that ends at a deadline: a
    /// model's way to know that a thread with a deadline took the poll.
    #[cfg(test)]
    pub(crate) fn wait_for_timed_turn(&self) {
        let mut pending = sync::lock(&self.pending);
        while pending.timed_turns == 0 {
            pending = sync::wait(&self.condvar, pending, None);
        }
    }

    /// Moves the model clock (`sync::now`) on by `by`, ending the turns
    /// and the parks whose deadline that passes.
    pub(crate) fn advance_clock(&self, by: Duration) {
        {
            let _pending = sync::lock(&self.pending);
            sync::advance_clock(by);
            self.condvar.notify_all();
        }
        // Not under `pending`: a parker's lock comes first (`unpark` wakes
        // the driver under it).
        super::park::model::clock_moved();
    }

    /// Waits for `wake_driver`, an injected event, or `timeout` (or the next
    /// timer's deadline, if sooner) on the model clock
    /// ([`Reactor::advance_clock`]), then wakes what the events concern and
    /// the timers that expired, as the real turn does.
    pub(crate) fn turn(
        &self,
        _driver: &mut Driver,
        timeout: Option<Duration>,
        after_poll: impl FnOnce(),
    ) -> usize {
        // Read before `before_poll` reads it: if the clock moves in between,
        // this turn ends early (as a real poll may), never late.
        let start = sync::now();
        let until = self.timers.before_poll(timeout).map(|t| start + t);
        let mut pending = sync::lock(&self.pending);
        pending.polling += 1;
        let timed = until.is_some_and(|until| until > start);
        if timed {
            pending.timed_turns += 1;
        }
        if pending.watched || timed {
            self.condvar.notify_all();
        }
        while !pending.woken
            && pending.events.is_empty()
            && until.is_none_or(|until| sync::now() < until)
        {
            pending = sync::wait(&self.condvar, pending, None);
        }
        pending.polling -= 1;
        pending.woken = false;
        let events = std::mem::take(&mut pending.events);
        drop(pending);
        after_poll();
        // Timers first, then events, in the real turn's order.
        let mut wakers = Vec::new();
        self.timers.after_poll(&mut wakers);
        wakers.extend(events);
        let woken = wakers.len();
        for waker in wakers {
            waker.wake();
        }
        woken
    }
}
