//! Deadlines kept in order and fired by whichever thread polls the reactor.
//!
//! No thread per timer and no busy polling: the poller's `poll` timeout is the
//! earliest deadline, and a new deadline earlier than the one the poller sleeps
//! towards interrupts it. Entries live in a `BTreeMap` keyed by deadline, so a
//! timer dropped before it fires (the common case: a request head arrived in
//! time) is removed at once and thousands of pending deadlines stay cheap.
//!
//! The time is `sync::now()`: under loom, the models' clock, so that a
//! deadline passes where a model says and the model reactor fires it.

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
        let now = sync::now();
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
        self.fire_due(sync::now(), wakers);
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
    fn insert(&self, key: Key, entry: Arc<Entry>) -> Poller {
        let mut state = self.lock();
        state.entries.insert(key, entry);
        match state.poller_deadline {
            Some(Some(wake_at)) if key.0 >= wake_at => Poller::WakesInTime,
            Some(_) => Poller::MustBeInterrupted,
            None => Poller::Absent,
        }
    }

    fn remove(&self, key: &Key) {
        self.lock().entries.remove(key);
    }

    /// Fires every timer, due or not, whatever the model clock says.
    #[cfg(astra_loom)]
    pub(crate) fn fire_all(&self, wakers: &mut Vec<Waker>) {
        self.fire_due(sync::now() + Duration::from_secs(1 << 30), wakers);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

/// What a new deadline needs from the thread that polls the reactor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Poller {
    /// It sleeps until this deadline or sooner.
    WakesInTime,
    /// It sleeps past this deadline: interrupt it.
    MustBeInterrupted,
    /// Nobody is blocked in the reactor right now.
    Absent,
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
            stored: None,
            pool: self.0.clone(),
        }
    }
}

impl hyper::rt::Timer for Timer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(self.sleep_until(sync::now() + duration))
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
    /// The waker last stored in `entry` (which keeps it until the timer fires).
    stored: Option<Waker>,
    pool: Pool,
}

impl Sleep {
    /// When it fires (the WebSocket idle and ping timers compare it).
    #[cfg(feature = "websocket")]
    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Moves the deadline, re-registering only if already registered.
    pub(crate) fn reset(&mut self, deadline: Instant) {
        self.unregister();
        self.entry = Arc::new(Entry::default());
        self.stored = None;
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
        // The waker first, `fired` second: `after_poll` sets `fired` before it
        // takes the waker, so a timer firing meanwhile is either seen below or
        // finds this waker. (Checked first, a timer firing between the check
        // and the store took the previous waker, or none, and this one was
        // never woken.)
        //
        // The entry's lock is taken only for a new waker: a connection polls
        // its deadline with the same waker on every wake-up, and the entry is
        // memory no other part of the request touches.
        if !self
            .stored
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            let waker = cx.waker().clone();
            *sync::lock(&self.entry.waker) = Some(waker.clone());
            self.stored = Some(waker);
        }
        // Once registered, only the timers decide (no clock read per poll: a
        // connection polls its deadline on every wake-up).
        let expired = self.entry.fired.load(Ordering::Acquire)
            || (self.key.is_none() && sync::now() >= self.deadline);
        if expired {
            self.unregister();
            return Poll::Ready(());
        }
        if self.key.is_none() {
            let this = &mut *self;
            let timers = this.pool.reactor().timers();
            let key = (
                this.deadline,
                timers.next_id.fetch_add(1, Ordering::Relaxed),
            );
            this.key = Some(key);
            match timers.insert(key, this.entry.clone()) {
                Poller::WakesInTime => {}
                Poller::MustBeInterrupted => this.pool.reactor().wake_driver(),
                // Usually a worker busy with tasks, which polls when done; but
                // on an idle pool (a plain thread polling a sleep) someone
                // must be told to.
                Poller::Absent => this.pool.ensure_poller(),
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
    use crate::runtime::pool::PoolConfig;
    use crate::runtime::reactor::Reactor;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;
    use std::thread::Thread;

    /// Counts its wake-ups and unparks the thread that made it.
    struct CountingWaker {
        wakes: AtomicUsize,
        thread: Thread,
    }

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &Arc<Self>) {
            self.wakes.fetch_add(1, Ordering::SeqCst);
            self.thread.unpark();
        }
    }

    impl CountingWaker {
        fn wakes(&self) -> usize {
            self.wakes.load(Ordering::SeqCst)
        }

        /// On the thread that made it: waits up to `limit` for a wake-up.
        fn wait_for_wake(&self, limit: Duration) -> bool {
            let deadline = Instant::now() + limit;
            while self.wakes() == 0 {
                let now = Instant::now();
                if now >= deadline {
                    return false;
                }
                std::thread::park_timeout(deadline - now);
            }
            true
        }
    }

    fn counting_waker() -> (Arc<CountingWaker>, Waker) {
        let count = Arc::new(CountingWaker {
            wakes: AtomicUsize::new(0),
            thread: std::thread::current(),
        });
        (count.clone(), Waker::from(count))
    }

    /// A pool whose poller fires the timers of the sleeps made on it.
    fn test_pool() -> Pool {
        let config = PoolConfig {
            max_workers: 1,
            keep_alive: Some(Duration::from_secs(1)),
        };
        Pool::new(Reactor::new().unwrap(), config)
    }

    /// Waits until thread `tid` of this process sleeps in the kernel.
    fn wait_until_blocked(tid: libc::pid_t) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
            // The state follows the command name, which may contain spaces.
            let state = stat[stat.rfind(')').unwrap() + 2..].chars().next();
            if state == Some('S') {
                return;
            }
            assert!(Instant::now() < deadline, "thread {tid} never blocked");
            std::thread::yield_now();
        }
    }

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
        let now = Instant::now();
        // Inserted out of deadline order: 3, 1 and 2 ms ago, and one to come.
        let entries: Vec<_> = [3, 1, 2, 0]
            .into_iter()
            .enumerate()
            .map(|(id, ago)| {
                let (count, waker) = counting_waker();
                let entry = Arc::new(Entry::default());
                *entry.waker.lock().unwrap() = Some(waker.clone());
                let deadline = match ago {
                    0 => now + Duration::from_secs(60),
                    ago => now - Duration::from_millis(ago),
                };
                timers.insert((deadline, id as u64), entry.clone());
                (ago, entry, count, waker)
            })
            .collect();
        let mut wakers = Vec::new();
        timers.after_poll(&mut wakers);
        let order: Vec<u64> = wakers
            .iter()
            .map(|w| entries.iter().find(|e| e.3.will_wake(w)).unwrap().0)
            .collect();
        assert_eq!(order, [3, 2, 1], "fired out of deadline order");
        for waker in wakers {
            waker.wake();
        }
        for (ago, entry, count, _) in &entries {
            let fired = *ago > 0;
            assert_eq!(entry.fired.load(Ordering::Acquire), fired, "{ago} ms ago");
            assert_eq!(count.wakes(), usize::from(fired), "{ago} ms ago");
        }
        assert_eq!(timers.len(), 1);
    }

    #[test]
    fn sleep_polled_again_with_its_waker_is_still_woken() {
        // Polls after the first, with the same waker, skip the entry's lock;
        // the waker stored by the first must still be the one the timer wakes,
        // and a waker swapped back in after another must be stored again.
        let pool = test_pool();
        let mut sleep = Timer(pool.clone()).sleep_until(Instant::now() + Duration::from_millis(30));
        let (first, first_waker) = counting_waker();
        let (other, other_waker) = counting_waker();
        for waker in [
            &first_waker,
            &first_waker,
            &other_waker,
            &first_waker,
            &first_waker,
        ] {
            let poll = Pin::new(&mut sleep).poll(&mut Context::from_waker(waker));
            assert!(poll.is_pending(), "a 30 ms sleep completed at once");
        }
        assert!(
            first.wait_for_wake(Duration::from_secs(5)),
            "the waker polled last was not woken within 5 s"
        );
        assert_eq!(other.wakes(), 0, "the replaced waker was woken");
        let poll = Pin::new(&mut sleep).poll(&mut Context::from_waker(&first_waker));
        assert!(poll.is_ready(), "woken but still pending");
        pool.shutdown(Duration::from_secs(5));
    }

    #[test]
    fn sleep_is_woken_at_its_deadline_and_never_completes_before() {
        let pool = test_pool();
        for wait in [1, 20, 100] {
            let deadline = Instant::now() + Duration::from_millis(wait);
            let mut sleep = Timer(pool.clone()).sleep_until(deadline);
            // Polled again with another waker: that one is woken, not the first.
            let (first, first_waker) = counting_waker();
            let (second, second_waker) = counting_waker();
            let mut ready = false;
            for waker in [&first_waker, &second_waker] {
                ready = Pin::new(&mut sleep)
                    .poll(&mut Context::from_waker(waker))
                    .is_ready();
                if ready {
                    break;
                }
            }
            if !ready {
                assert!(
                    second.wait_for_wake(Duration::from_secs(5)),
                    "a {wait} ms sleep was not woken within 5 s"
                );
                let poll = Pin::new(&mut sleep).poll(&mut Context::from_waker(&second_waker));
                assert!(poll.is_ready(), "woken but still pending");
                assert_eq!(first.wakes(), 0, "the replaced waker was woken");
            }
            let now = Instant::now();
            assert!(
                now >= deadline,
                "a {wait} ms sleep completed {:?} early",
                deadline - now
            );
        }
        pool.shutdown(Duration::from_secs(5));
    }

    /// Regression: `Sleep::poll` read `fired` before it stored its waker, so a
    /// timer firing in between took the previous waker (or none) and the new
    /// one was never woken: the sleeping task missed its deadline for good.
    ///
    /// The fire is made to land in that very spot: the test holds the entry's
    /// waker lock, so the poll stops there (after the check, in the old order),
    /// and fires the entry, as `after_poll` does, once the polling thread is
    /// blocked on the lock.
    #[test]
    fn sleep_checking_fired_before_storing_its_waker_loses_the_wake_up() {
        let pool = test_pool();
        let mut sleep = Timer(pool.clone()).sleep_until(Instant::now() + Duration::from_secs(60));
        let (_, first_waker) = counting_waker();
        let poll = Pin::new(&mut sleep).poll(&mut Context::from_waker(&first_waker));
        assert!(poll.is_pending());
        let entry = sleep.entry.clone();
        let key = sleep.key.expect("registered by the first poll");
        let mut held = entry.waker.lock().unwrap();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let poller = std::thread::spawn(move || {
            let (second, second_waker) = counting_waker();
            // SAFETY: gettid(2) has no preconditions.
            tid_tx.send(unsafe { libc::gettid() }).unwrap();
            let poll = Pin::new(&mut sleep).poll(&mut Context::from_waker(&second_waker));
            poll.is_ready() || second.wait_for_wake(Duration::from_secs(2))
        });
        wait_until_blocked(tid_rx.recv().unwrap());
        // What `after_poll` does for an expired entry.
        pool.reactor().timers().remove(&key);
        entry.fired.store(true, Ordering::Release);
        let taken = held.take();
        drop(held);
        taken.expect("the first poll's waker").wake();
        assert!(
            poller.join().unwrap(),
            "the timer fired during the poll, which neither completed nor got woken"
        );
        pool.shutdown(Duration::from_secs(5));
    }

    /// Records when it was woken, and in which place among the wakers that
    /// share its `order`; unparks the thread that made it.
    struct StampingWaker {
        order: Arc<AtomicUsize>,
        woken: std::sync::Mutex<Option<(usize, Instant)>>,
        thread: Thread,
    }

    impl Wake for StampingWaker {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &Arc<Self>) {
            let stamp = (self.order.fetch_add(1, Ordering::SeqCst), Instant::now());
            self.woken.lock().unwrap().get_or_insert(stamp);
            self.thread.unpark();
        }
    }

    /// Sleeps of 20, 21, ... 60 ms, made at once through hyper's
    /// `Timer::sleep` and registered (first polled) in a shuffled order,
    /// the longest first: each waker is called no sooner than its sleep's
    /// duration after the sleep was made, and in the order of the deadlines,
    /// not of the registrations. A deadline every millisecond wakes the
    /// poller often, so a timer fired early on another's wake-up would be
    /// seen. (A sleep that a test thread held up under load finds already
    /// due when it registers it is done at once and not counted.)
    #[test]
    fn sleeps_wake_in_deadline_order_and_never_before_their_duration() {
        use hyper::rt::Timer as _;
        let pool = test_pool();
        let timer = Timer(pool.clone());
        let order = Arc::new(AtomicUsize::new(0));
        let made = Instant::now();
        let mut sleeps: Vec<_> = (20..=60)
            .map(|ms| {
                let duration = Duration::from_millis(ms);
                let stamp = Arc::new(StampingWaker {
                    order: order.clone(),
                    woken: std::sync::Mutex::new(None),
                    thread: std::thread::current(),
                });
                (duration, timer.sleep(duration), stamp)
            })
            .collect();
        // 40, 16, 33, 9, ...: every index once, the longest sleep first.
        let registration = (0..41).map(|i| (40 + 17 * i) % 41);
        let mut pending = Vec::new();
        for i in registration {
            let (_, sleep, stamp) = &mut sleeps[i];
            let waker = Waker::from(stamp.clone());
            if sleep
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
            {
                pending.push(i);
            }
        }
        assert_eq!(pending[0], 40, "the 60 ms sleep was done at once");
        let limit = made + Duration::from_secs(5);
        while order.load(Ordering::SeqCst) < pending.len() {
            let now = Instant::now();
            assert!(now < limit, "not every sleep was woken within 5 s");
            std::thread::park_timeout(limit - now);
        }
        pending.sort_unstable();
        let mut last_place = None;
        for i in pending {
            let (duration, sleep, stamp) = &mut sleeps[i];
            let (place, at) = stamp.woken.lock().unwrap().expect("woken");
            assert!(
                last_place < Some(place),
                "the {duration:?} sleep woken before a shorter one"
            );
            last_place = Some(place);
            let after = at - made;
            assert!(
                after >= *duration,
                "the {duration:?} sleep was woken after {after:?}"
            );
            let waker = Waker::from(stamp.clone());
            let poll = sleep.as_mut().poll(&mut Context::from_waker(&waker));
            assert!(poll.is_ready(), "the {duration:?} sleep woken but pending");
        }
        pool.shutdown(Duration::from_secs(5));
    }

    /// A sleep polled again with another waker wakes that one, once, and
    /// not the one it replaced.
    #[test]
    fn a_sleep_wakes_its_latest_waker_only() {
        let pool = test_pool();
        let deadline = Instant::now() + Duration::from_millis(50);
        let mut sleep = Timer(pool.clone()).sleep_until(deadline);
        let (old, old_waker) = counting_waker();
        let (new, new_waker) = counting_waker();
        for waker in [&old_waker, &new_waker] {
            let poll = Pin::new(&mut sleep).poll(&mut Context::from_waker(waker));
            assert!(poll.is_pending(), "a 50 ms sleep done at once");
        }
        assert!(
            new.wait_for_wake(Duration::from_secs(5)),
            "the latest waker was not woken within 5 s"
        );
        assert!(Instant::now() >= deadline, "woken before its deadline");
        let poll = Pin::new(&mut sleep).poll(&mut Context::from_waker(&new_waker));
        assert!(poll.is_ready(), "woken but still pending");
        assert_eq!(old.wakes(), 0, "the replaced waker was woken");
        assert_eq!(new.wakes(), 1, "the latest waker was woken more than once");
        pool.shutdown(Duration::from_secs(5));
    }

    #[test]
    fn an_earlier_deadline_interrupts_the_poller() {
        let timers = Timers::default();
        timers.before_poll(Some(Duration::from_secs(10)));
        let early = (Instant::now() + Duration::from_millis(5), 1);
        assert_eq!(
            timers.insert(early, Arc::new(Entry::default())),
            Poller::MustBeInterrupted
        );
        let late = (Instant::now() + Duration::from_secs(60), 2);
        assert_eq!(
            timers.insert(late, Arc::new(Entry::default())),
            Poller::WakesInTime
        );
    }
}
