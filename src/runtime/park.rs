//! Putting a thread to sleep until something wakes it, and blocking on a
//! future from any thread.
//!
//! One [`Parker`] serves every way a thread of ours waits: an idle worker
//! waiting for work, a handler waiting for its request body, a user's own
//! thread blocked on a future. Wake-ups are never lost: an `unpark` before
//! the `park` makes the `park` return at once. A thread that waits by polling
//! the reactor (see [`Parker::start_polling`]) is woken out of that poll.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use super::pool::{self, Pool};
use super::sync::{self, Arc, Condvar, Mutex};

/// Wakes one waiting thread; see the module docs.
pub(crate) struct Parker {
    state: Mutex<ParkState>,
    condvar: Condvar,
}

#[derive(Default)]
struct ParkState {
    /// Unparked, and not yet seen by the thread.
    notified: bool,
    /// The thread waits in `park` (an unpark must signal the condvar).
    waiting: bool,
    /// The thread waits in this pool's reactor instead (an unpark must
    /// interrupt the poll).
    polling: Option<Pool>,
    /// Under loom: the wait in `park` has a deadline, which the model clock
    /// may pass (see [`model`]).
    #[cfg(astra_loom)]
    timed: bool,
}

impl Parker {
    pub(crate) fn new() -> Arc<Parker> {
        let parker = Arc::new(Parker {
            state: Mutex::new(ParkState::default()),
            condvar: Condvar::new(),
        });
        #[cfg(astra_loom)]
        model::register(&parker);
        parker
    }

    /// Waits until unparked or until `deadline` (`None`: no limit). Returns
    /// whether it was unparked, and consumes that.
    pub(crate) fn park(&self, deadline: Option<Instant>) -> bool {
        #[cfg(astra_loom)]
        if deadline.is_some() {
            model::timed_park_begins();
        }
        let mut state = sync::lock(&self.state);
        loop {
            if state.notified {
                state.notified = false;
                return true;
            }
            let timeout = match deadline {
                None => None,
                Some(deadline) => match deadline.checked_duration_since(sync::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return false,
                },
            };
            state.waiting = true;
            #[cfg(astra_loom)]
            {
                state.timed = timeout.is_some();
            }
            state = sync::wait(&self.condvar, state, timeout);
            state.waiting = false;
        }
    }

    /// Consumes an unpark that already happened, without waiting.
    pub(crate) fn take(&self) -> bool {
        std::mem::take(&mut sync::lock(&self.state).notified)
    }

    /// Wakes the thread, or makes its next `park` return at once.
    pub(crate) fn unpark(&self) {
        let mut state = sync::lock(&self.state);
        if state.notified {
            return;
        }
        state.notified = true;
        if let Some(pool) = &state.polling {
            pool.reactor().wake_driver();
        } else if state.waiting {
            drop(state);
            self.condvar.notify_one();
        }
    }

    /// Announces that this thread is about to wait in `pool`'s reactor, so an
    /// unpark interrupts that wait. Returns false (and announces nothing) if
    /// an unpark is already pending: the thread should not wait at all.
    pub(crate) fn start_polling(&self, pool: &Pool) -> bool {
        let mut state = sync::lock(&self.state);
        if state.notified {
            return false;
        }
        state.polling = Some(pool.clone());
        true
    }

    /// Ends what [`Parker::start_polling`] started.
    pub(crate) fn stop_polling(&self) {
        sync::lock(&self.state).polling = None;
    }
}

impl Wake for Parker {
    fn wake(self: Arc<Self>) {
        self.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.unpark();
    }
}

/// Under loom, what the model clock needs from parkers: loom's waits have no
/// timeout, so a thread parked until a deadline would sleep on past it.
/// Every parker is listed here, and [`model::clock_moved`] wakes those
/// waiting with a deadline, which then read the clock again.
#[cfg(astra_loom)]
pub(crate) mod model {
    use std::sync::Weak;

    use super::{sync, Arc, Condvar, Mutex, Parker};

    #[derive(Default)]
    struct Parkers {
        /// Every parker made in this run of a model.
        all: Vec<Weak<Parker>>,
        /// Parks with a deadline begun.
        timed_parks: usize,
    }

    loom::lazy_static! {
        static ref PARKERS: Mutex<Parkers> = Mutex::new(Parkers::default());
        static ref TIMED_CHANGED: Condvar = Condvar::new();
    }

    pub(super) fn register(parker: &Arc<Parker>) {
        sync::lock(&PARKERS).all.push(Arc::downgrade(parker));
    }

    /// Counts a park with a deadline, before `park` reads the clock: a
    /// model that sees the count and then moves the clock moves it past a
    /// deadline already set.
    pub(super) fn timed_park_begins() {
        sync::lock(&PARKERS).timed_parks += 1;
        TIMED_CHANGED.notify_all();
    }

    /// The model clock has moved: wakes every parker waiting with a
    /// deadline. Each is woken under its own lock after the clock moved,
    /// so a thread that read the old time is already waiting by then, and
    /// one that reads it later sees the new time.
    pub(crate) fn clock_moved() {
        let parkers: Vec<Arc<Parker>> = {
            let mut parkers = sync::lock(&PARKERS);
            parkers.all.retain(|parker| parker.strong_count() > 0);
            parkers.all.iter().filter_map(Weak::upgrade).collect()
        };
        for parker in parkers {
            let state = sync::lock(&parker.state);
            if state.waiting && state.timed {
                drop(state);
                parker.condvar.notify_all();
            }
        }
    }

    /// Waits until `n` parks with a deadline have begun in this run.
    #[cfg(test)]
    pub(crate) fn wait_for_timed_parks(n: usize) {
        let mut parkers = sync::lock(&PARKERS);
        while parkers.timed_parks < n {
            parkers = sync::wait(&TIMED_CHANGED, parkers, None);
        }
    }
}

/// Polls `future` on the current thread until it completes, waiting between
/// polls. The future's wake-ups come from other threads, or from the work this
/// thread does meanwhile: on a pool worker (a handler reading its body), or on
/// any thread given the `pool` the future depends on, the wait runs that
/// pool's tasks and polls its reactor when no worker is free to, so a body
/// always arrives, even with every worker inside a handler.
#[cfg(test)]
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    match block_on_timeout(future, None, None) {
        Some(output) => output,
        None => unreachable!("no timeout was given"),
    }
}

/// [`block_on`] that gives up (`None`) once `timeout` passes without the
/// future completing. `None` as `timeout` waits for ever.
pub(crate) fn block_on_timeout<F: Future>(
    future: F,
    timeout: Option<Duration>,
    pool: Option<&Pool>,
) -> Option<F::Output> {
    let deadline = timeout.map(|t| sync::now() + t);
    let mut future = pin!(future);
    let parker = Parker::new();
    let waker = Waker::from(parker.clone());
    let mut cx = Context::from_waker(&waker);
    // Dropped on every way out, a panic in a poll included.
    let mut waiter = pool::Waiter::new(parker, pool);
    loop {
        // Tasks this poll wakes (the connection feeding a body) run here, at
        // once, instead of waking another thread and sleeping until it has.
        if let Poll::Ready(output) = pool::poll_and_help(|| future.as_mut().poll(&mut cx)) {
            return Some(output);
        }
        if !waiter.wait(deadline) {
            return None;
        }
    }
}

#[cfg(all(test, not(astra_loom)))]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::thread;
    use std::time::Duration;

    /// A future that completes once another thread has set its value.
    struct Handoff {
        state: Arc<Mutex<(Option<u32>, Option<Waker>)>>,
    }

    impl Future for Handoff {
        type Output = u32;
        fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
            let mut state = self.state.lock().unwrap();
            match state.0 {
                Some(v) => Poll::Ready(v),
                None => {
                    state.1 = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        }
    }

    #[test]
    fn block_on_wakes_from_another_thread() {
        let state = Arc::new(Mutex::new((None, None::<Waker>)));
        let setter = state.clone();
        let handle = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            let waker = {
                let mut s = setter.lock().unwrap();
                s.0 = Some(7);
                s.1.take()
            };
            waker.unwrap().wake();
        });
        assert_eq!(block_on(Handoff { state }), 7);
        handle.join().unwrap();
    }

    #[test]
    fn block_on_ready_future_returns_at_once() {
        assert_eq!(block_on(async { 3 }), 3);
    }

    #[test]
    fn block_on_timeout_gives_up_at_the_deadline() {
        let state = Arc::new(Mutex::new((None, None::<Waker>)));
        let started = std::time::Instant::now();
        let result = block_on_timeout(Handoff { state }, Some(Duration::from_millis(50)), None);
        assert_eq!(result, None);
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn unpark_before_park_is_not_lost() {
        let parker = Parker::new();
        parker.unpark();
        assert!(parker.park(Some(Instant::now() + Duration::from_secs(5))));
        // Consumed: the next park waits for its deadline.
        let started = Instant::now();
        assert!(!parker.park(Some(started + Duration::from_millis(20))));
        assert!(started.elapsed() >= Duration::from_millis(20));
    }
}
