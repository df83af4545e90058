//! Deadlines kept in order and fired by whichever thread polls the reactor.
//!
//! No thread per timer and no busy polling: the poller's `poll` timeout is the
//! earliest deadline, and a new deadline earlier than the one the poller sleeps
//! towards interrupts it. Entries live in a `BTreeMap` keyed by deadline, so a
//! timer dropped before it fires (the common case: a request head arrived in
//! time) is removed at once and thousands of pending deadlines stay cheap.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::pool::Pool;
use super::sync::{self, Arc, AtomicBool, AtomicU64, Mutex, MutexGuard, Ordering};

type Key = (Instant, u64);

#[derive(Default)]
pub(crate) struct Timers {
    state: Mutex<TimersState>,
    next_id: AtomicU64,
}

#[derive(Default)]
struct TimersState {
    entries: BTreeMap<Key, Arc<Entry>>,
    /// `Some(d)` while a thread is blocked in `poll` until `d` (`None` inside:
    /// with no timeout). A new deadline before it must interrupt the poll.
    poller_deadline: Option<Option<Instant>>,
}

#[derive(Default)]
struct Entry {
    fired: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Timers {
    fn lock(&self) -> MutexGuard<'_, TimersState> {
        sync::lock(&self.state)
    }

    /// Called by the poller before it blocks: how long it may wait, given that
    /// it would otherwise wait `timeout`. Records the deadline it will wake at.
    pub(crate) fn before_poll(&self, timeout: Option<Duration>) -> Option<Duration> {
        let now = Instant::now();
        let mut state = self.lock();
        let next = state.entries.keys().next().map(|(deadline, _)| *deadline);
        let wake_at = match (next, timeout.map(|t| now + t)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        state.poller_deadline = Some(wake_at);
        wake_at.map(|at| at.saturating_duration_since(now))
    }

    /// Called by the poller after `poll` returns: wakes every expired timer.
    pub(crate) fn after_poll(&self, wakers: &mut Vec<Waker>) {
        self.fire_due(Instant::now(), wakers);
    }

    /// Fires every timer due at `now`.
    fn fire_due(&self, now: Instant, wakers: &mut Vec<Waker>) {
        let mut state = self.lock();
        state.poller_deadline = None;
        while let Some(entry) = state.entries.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let entry = entry.remove();
            entry.fired.store(true, Ordering::Release);
            let waker = sync::lock(&entry.waker).take();
            wakers.extend(waker);
        }
    }

    /// Inserts a deadline; returns whether the poller must be interrupted to
    /// honour it.
    fn insert(&self, key: Key, entry: Arc<Entry>) -> bool {
        let mut state = self.lock();
        state.entries.insert(key, entry);
        match state.poller_deadline {
            Some(Some(wake_at)) => key.0 < wake_at,
            Some(None) => true,
            None => false,
        }
    }

    fn remove(&self, key: &Key) {
        self.lock().entries.remove(key);
    }

    /// Fires every timer, due or not (loom has no clock).
    #[cfg(astra_loom)]
    pub(crate) fn fire_all(&self, wakers: &mut Vec<Waker>) {
        self.fire_due(Instant::now() + Duration::from_secs(1 << 30), wakers);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

/// The pool's timer, as hyper sees it.
#[derive(Clone)]
pub(crate) struct Timer(pub(crate) Pool);

impl Timer {
    pub(crate) fn sleep_until(&self, deadline: Instant) -> Sleep {
        Sleep {
            deadline,
            key: None,
            entry: Arc::new(Entry::default()),
            pool: self.0.clone(),
        }
    }
}

impl hyper::rt::Timer for Timer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(self.sleep_until(Instant::now() + duration))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Timer::sleep_until(self, deadline))
    }
}

/// A future that completes at its deadline.
pub(crate) struct Sleep {
    deadline: Instant,
    /// Set once registered with the timers.
    key: Option<Key>,
    entry: Arc<Entry>,
    pool: Pool,
}

impl Sleep {
    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Moves the deadline, re-registering only if already registered.
    pub(crate) fn reset(&mut self, deadline: Instant) {
        self.unregister();
        self.entry = Arc::new(Entry::default());
        self.deadline = deadline;
    }

    fn unregister(&mut self) {
        if let Some(key) = self.key.take() {
            self.pool.reactor().timers().remove(&key);
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // Once registered, only the timers decide (no clock read per poll: a
        // connection polls its deadline on every wake-up).
        let expired = self.entry.fired.load(Ordering::Acquire)
            || (self.key.is_none() && Instant::now() >= self.deadline);
        if expired {
            self.unregister();
            return Poll::Ready(());
        }
        {
            let mut waker = sync::lock(&self.entry.waker);
            match &mut *waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
        }
        if self.key.is_none() {
            let this = &mut *self;
            let timers = this.pool.reactor().timers();
            let key = (
                this.deadline,
                timers.next_id.fetch_add(1, Ordering::Relaxed),
            );
            this.key = Some(key);
            if timers.insert(key, this.entry.clone()) {
                this.pool.reactor().wake_driver();
            }
        }
        Poll::Pending
    }
}

impl hyper::rt::Sleep for Sleep {}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.unregister();
    }
}

#[cfg(all(test, not(astra_loom)))]
mod tests {
    use super::*;

    #[test]
    fn dropped_timers_leave_no_entry() {
        let timers = Timers::default();
        let entry = Arc::new(Entry::default());
        let key = (Instant::now() + Duration::from_secs(30), 1);
        timers.insert(key, entry);
        assert_eq!(timers.len(), 1);
        timers.remove(&key);
        assert_eq!(timers.len(), 0);
    }

    #[test]
    fn poll_timeout_is_the_earliest_deadline() {
        let timers = Timers::default();
        let soon = Instant::now() + Duration::from_millis(50);
        timers.insert((soon, 1), Arc::new(Entry::default()));
        timers.insert(
            (soon + Duration::from_secs(9), 2),
            Arc::new(Entry::default()),
        );
        let timeout = timers.before_poll(None).expect("a deadline is pending");
        assert!(timeout <= Duration::from_millis(50));
        let shorter = timers.before_poll(Some(Duration::from_millis(1))).unwrap();
        assert!(shorter <= Duration::from_millis(1));
    }

    #[test]
    fn expired_timers_fire_in_order_and_wake() {
        let timers = Timers::default();
        let past = Instant::now() - Duration::from_millis(1);
        let fired = Arc::new(Entry::default());
        let pending = Arc::new(Entry::default());
        timers.insert((past, 1), fired.clone());
        timers.insert((past + Duration::from_secs(60), 2), pending.clone());
        let mut wakers = Vec::new();
        timers.after_poll(&mut wakers);
        assert!(fired.fired.load(Ordering::Acquire));
        assert!(!pending.fired.load(Ordering::Acquire));
        assert_eq!(timers.len(), 1);
    }

    #[test]
    fn an_earlier_deadline_interrupts_the_poller() {
        let timers = Timers::default();
        timers.before_poll(Some(Duration::from_secs(10)));
        let early = (Instant::now() + Duration::from_millis(5), 1);
        assert!(timers.insert(early, Arc::new(Entry::default())));
        let late = (Instant::now() + Duration::from_secs(60), 2);
        assert!(!timers.insert(late, Arc::new(Entry::default())));
    }
}
