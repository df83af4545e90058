//! loom models of the runtime's hand-offs: every interleaving of the threads
//! in each scenario (up to loom's preemption bound) must end with the work
//! done and every thread gone, or loom reports the deadlock or the failed
//! assertion. Run them with `scripts/loom.sh` (or
//! `RUSTFLAGS="--cfg astra_loom" cargo test --release --lib models`).
//!
//! The reactor is `reactor_model.rs`: the same interface, with events a model
//! injects and a clock it moves (`Reactor::advance_clock`: turns fire the
//! timers it passes, parks with a deadline it passes wake). What is checked
//! is the pool's protocol around it.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use super::park;
use super::pool::{Pool, PoolConfig};
use super::reactor::Reactor;
use super::sync::{self, thread, Arc, Condvar, Mutex};
use super::timer::{Sleep, Timer};

/// A flag one thread sets and others wait for.
struct Latch {
    set: Mutex<bool>,
    condvar: Condvar,
}

impl Latch {
    fn new() -> Arc<Latch> {
        Arc::new(Latch {
            set: Mutex::new(false),
            condvar: Condvar::new(),
        })
    }

    fn set(&self) {
        *sync::lock(&self.set) = true;
        self.condvar.notify_all();
    }

    fn wait(&self) {
        let mut set = sync::lock(&self.set);
        while !*set {
            set = sync::wait(&self.condvar, set, None);
        }
    }
}

/// A waker that counts its wake-ups.
#[derive(Default)]
struct CountingWaker(Mutex<usize>);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        *sync::lock(&self.0) += 1;
    }
}

impl CountingWaker {
    fn count(&self) -> usize {
        *sync::lock(&self.0)
    }
}

fn pool(max_workers: usize) -> Pool {
    pool_with(PoolConfig {
        max_workers,
        keep_alive: None,
    })
}

fn pool_with(config: PoolConfig) -> Pool {
    Pool::new(Reactor::new().expect("the model reactor"), config)
}

/// `sleep`, which sets `waiting` once its deadline is with the timers.
fn sleep_then_set(mut sleep: Sleep, waiting: Arc<Latch>) -> impl Future<Output = ()> {
    poll_fn(move |cx| {
        let poll = Pin::new(&mut sleep).poll(cx);
        if poll.is_pending() {
            waiting.set();
        }
        poll
    })
}

/// Explores `f` with loom's default bounds (`LOOM_MAX_PREEMPTIONS` etc. from
/// the environment).
fn model(f: impl Fn() + Sync + Send + 'static) {
    loom::model(f);
}

/// [`model`] with at most `preemptions` preemptions, for a model whose
/// schedules the default bound makes too many to explore in CI's time, and
/// whose bug needs fewer.
fn model_with_preemptions(preemptions: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(preemptions);
    builder.check(f);
}

/// A bound that never runs out: models must end by their events.
const FOREVER: Duration = Duration::from_secs(3600);

/// Ends a model: no worker may be left behind.
fn shut_down(pool: &Pool) {
    assert_eq!(pool.shutdown(FOREVER), 0, "every worker exits");
}

/// A request body fed by a connection task: the task waits for its
/// socket's event (a model injects it with [`Feed::deliver`]), then hands the
/// body, 7, to whoever reads it ([`Feed::read`]).
#[derive(Clone)]
struct Feed {
    /// The body, and the reader's waker.
    body: Arc<Mutex<(Option<u32>, Option<Waker>)>>,
    /// The feeding task's waker, stored while it waits for its event.
    event_waker: Arc<Mutex<Option<Waker>>>,
    /// Set once the feeding task waits for its event.
    waiting: Arc<Latch>,
}

impl Feed {
    /// Spawns the feeding task.
    fn spawn(pool: &Pool) -> Feed {
        let feed = Feed {
            body: Arc::default(),
            event_waker: Arc::default(),
            waiting: Latch::new(),
        };
        let task_feed = feed.clone();
        let mut polled = false;
        pool.spawn(poll_fn(move |cx| {
            if !polled {
                polled = true;
                *sync::lock(&task_feed.event_waker) = Some(cx.waker().clone());
                task_feed.waiting.set();
                return Poll::Pending;
            }
            let waker = {
                let mut body = sync::lock(&task_feed.body);
                body.0 = Some(7);
                body.1.take()
            };
            if let Some(waker) = waker {
                waker.wake();
            }
            Poll::Ready(())
        }));
        feed
    }

    /// The feeding task's event, through the reactor, once it waits for it.
    fn deliver(&self, pool: &Pool) {
        self.waiting.wait();
        let waker = sync::lock(&self.event_waker).take().expect("stored");
        pool.reactor().inject(waker);
    }

    /// Reading the body, as a handler's `BodyReader` does.
    fn read(&self) -> impl Future<Output = u32> + '_ {
        poll_fn(|cx| {
            let mut body = sync::lock(&self.body);
            match body.0 {
                Some(v) => Poll::Ready(v),
                None => {
                    body.1 = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
    }
}

#[test]
fn a_task_woken_while_its_worker_enters_user_code_runs_again() {
    model(|| {
        let pool = pool(2);
        let waker_slot: Arc<Mutex<Option<Waker>>> = Arc::default();
        let stored = Latch::new();
        let done = Latch::new();
        let polls = Arc::new(Mutex::new(0));
        {
            let (pool2, waker_slot, stored, done) = (
                pool.clone(),
                waker_slot.clone(),
                stored.clone(),
                done.clone(),
            );
            pool.spawn(poll_fn(move |cx| {
                let n = {
                    let mut polls = sync::lock(&polls);
                    *polls += 1;
                    *polls
                };
                if n > 1 {
                    done.set();
                    return Poll::Ready(());
                }
                *sync::lock(&waker_slot) = Some(cx.waker().clone());
                stored.set();
                // The wake-up below may land anywhere in here, while this
                // worker enters and leaves user code.
                let mut call = pool2.call_user(true, || ());
                assert!(Pin::new(&mut call).poll(cx).is_ready(), "ran inline");
                Poll::Pending
            }));
        }
        stored.wait();
        let waker = sync::lock(&waker_slot).take().expect("stored");
        waker.wake();
        done.wait();
        shut_down(&pool);
    });
}

#[test]
fn the_last_free_worker_entering_user_code_with_work_queued_hands_it_on() {
    model(|| {
        let pool = pool(2);
        let release = Latch::new();
        let second_done = Latch::new();
        {
            let (pool2, release) = (pool.clone(), release.clone());
            pool.spawn(async move {
                let call = pool2.call_user(true, move || release.wait());
                call.await.expect("no panic");
            });
        }
        {
            let second_done = second_done.clone();
            pool.spawn(async move { second_done.set() });
        }
        // Whichever runs first, the second task finishes while the first is
        // still inside user code.
        second_done.wait();
        release.set();
        shut_down(&pool);
    });
}

#[test]
fn shutdown_racing_a_new_connection_leaves_no_thread_behind() {
    model(|| {
        let pool = pool(1);
        let spawner = {
            let pool = pool.clone();
            thread::spawn(move || pool.spawn(async {}))
        };
        let left = pool.shutdown(FOREVER);
        spawner.join().expect("spawner");
        assert_eq!(left, 0);
        // A worker started for the late task sees the shutdown and exits.
        shut_down(&pool);
    });
}

#[test]
fn a_timer_firing_while_its_waker_is_replaced_wakes_the_new_waker() {
    model(|| {
        let pool = pool(0);
        let timer = Timer(pool.clone());
        let mut sleep = timer.sleep_until(sync::now() + Duration::from_secs(3600));
        let first = Arc::new(CountingWaker::default());
        let second = Arc::new(CountingWaker::default());
        let waker = Waker::from(first.clone());
        let registered = Pin::new(&mut sleep).poll(&mut Context::from_waker(&waker));
        assert!(registered.is_pending());
        let firer = {
            let pool = pool.clone();
            thread::spawn(move || {
                let mut wakers = Vec::new();
                pool.reactor().timers().fire_all(&mut wakers);
                for waker in wakers {
                    waker.wake();
                }
            })
        };
        let waker = Waker::from(second.clone());
        let ready = Pin::new(&mut sleep)
            .poll(&mut Context::from_waker(&waker))
            .is_ready();
        firer.join().expect("firer");
        assert!(
            ready || second.count() == 1,
            "the fire is seen by the poll or wakes the waker it stored"
        );
    });
}

#[test]
fn a_plain_thread_blocked_on_a_future_drives_the_reactor_with_no_worker() {
    model(|| {
        let pool = pool(0);
        let slot: Arc<Mutex<(bool, Option<Waker>)>> = Arc::default();
        let setter = {
            let slot = slot.clone();
            thread::spawn(move || {
                let waker = {
                    let mut slot = sync::lock(&slot);
                    slot.0 = true;
                    slot.1.take()
                };
                if let Some(waker) = waker {
                    waker.wake();
                }
            })
        };
        pool.block_on(poll_fn(|cx| {
            let mut slot = sync::lock(&slot);
            if slot.0 {
                return Poll::Ready(());
            }
            slot.1 = Some(cx.waker().clone());
            Poll::Pending
        }));
        setter.join().expect("setter");
    });
}

#[test]
fn a_handler_waiting_for_its_body_at_max_workers_runs_the_task_that_feeds_it() {
    model(|| {
        let pool = pool(1);
        let feed = Feed::spawn(&pool);
        let done = Latch::new();
        {
            let (pool2, feed, done) = (pool.clone(), feed.clone(), done.clone());
            pool.spawn(async move {
                let read = pool2.call_user(false, move || park::block_on(feed.read()));
                assert_eq!(read.await.expect("no panic"), 7);
                done.set();
            });
        }
        feed.deliver(&pool);
        done.wait();
        shut_down(&pool);
    });
}

#[test]
fn an_event_racing_a_poll_between_tasks_is_delivered() {
    model(|| {
        let pool = pool(2);
        // A task waiting for a socket event; its waker goes here.
        let event_waker: Arc<Mutex<Option<Waker>>> = Arc::default();
        let waiting = Latch::new();
        let done = Arc::new(Mutex::new(0));
        let all_done = Latch::new();
        let finish = {
            let (done, all_done) = (done.clone(), all_done.clone());
            move || {
                let mut done = sync::lock(&done);
                *done += 1;
                if *done == 3 {
                    all_done.set();
                }
            }
        };
        {
            let (event_waker, waiting, finish) =
                (event_waker.clone(), waiting.clone(), finish.clone());
            let mut polled = false;
            pool.spawn(poll_fn(move |cx| {
                if polled {
                    finish();
                    return Poll::Ready(());
                }
                polled = true;
                *sync::lock(&event_waker) = Some(cx.waker().clone());
                waiting.set();
                Poll::Pending
            }));
        }
        waiting.wait();
        // Two queued tasks: whoever takes the first polls the reactor
        // without waiting (`POLL_EVERY` is 1 under loom) while the event
        // comes in, and perhaps while the other worker parks.
        for _ in 0..2 {
            let finish = finish.clone();
            pool.spawn(async move { finish() });
        }
        let waker = sync::lock(&event_waker).take().expect("stored");
        pool.reactor().inject(waker);
        all_done.wait();
        shut_down(&pool);
    });
}

#[test]
fn a_helper_whose_deadline_passes_in_the_poll_hands_the_reactor_on() {
    // 2 is enough to find the hand-off that 5aa2a6a missed (it deadlocks at
    // once); 3 takes minutes.
    model_with_preemptions(2, || {
        let pool = pool(2);
        // C: a connection task that feeds B's body once its event comes in.
        let feed = Feed::spawn(&pool);
        feed.waiting.wait();
        // A: a handler whose body never comes; its read gives up at its
        // deadline, and it goes on with blocking work until `release_a`.
        let a_waiting = Latch::new();
        let release_a = Latch::new();
        {
            let (pool2, a_waiting, release_a) =
                (pool.clone(), a_waiting.clone(), release_a.clone());
            pool.spawn(async move {
                let read = pool2.call_user(false, move || {
                    let never = poll_fn(|_| {
                        // The deadline is set by now.
                        a_waiting.set();
                        Poll::<()>::Pending
                    });
                    let timed_out =
                        park::block_on_timeout(never, Some(Duration::from_secs(1)), None).is_none();
                    release_a.wait();
                    timed_out
                });
                assert!(read.await.expect("no panic"), "A's read timed out");
            });
        }
        // B: a handler waiting for the body C feeds. It starts waiting once A
        // is the thread that polls, with its deadline: the case where A's
        // deadline must hand the poll on.
        let b_done = Latch::new();
        {
            let (pool2, pool3, feed, b_done) =
                (pool.clone(), pool.clone(), feed.clone(), b_done.clone());
            pool.spawn(async move {
                let read = pool2.call_user(false, move || {
                    pool3.reactor().wait_for_timed_turn();
                    park::block_on_timeout(feed.read(), Some(Duration::from_secs(3600)), None)
                });
                assert_eq!(read.await.expect("no panic"), Some(7));
                b_done.set();
            });
        }
        a_waiting.wait();
        pool.reactor().wait_for_timed_turn();
        // A's deadline passes in its poll of the reactor; then B's body
        // arrives. Both workers are inside user code, and A stays there:
        // only B can take the event.
        pool.reactor().advance_clock(Duration::from_secs(1));
        feed.deliver(&pool);
        b_done.wait();
        release_a.set();
        shut_down(&pool);
    });
}

#[test]
fn a_task_queued_at_max_workers_interrupts_the_helper_that_polls() {
    model(|| {
        let pool = pool(1);
        // The only worker waits inside user code for a value that only a
        // task queued later delivers.
        let value: Arc<Mutex<(Option<u32>, Option<Waker>)>> = Arc::default();
        let waiting = Latch::new();
        let done = Latch::new();
        {
            let (pool2, value, waiting, done) =
                (pool.clone(), value.clone(), waiting.clone(), done.clone());
            pool.spawn(async move {
                let read = pool2.call_user(false, move || {
                    park::block_on(poll_fn(|cx| {
                        let mut value = sync::lock(&value);
                        match value.0 {
                            Some(v) => Poll::Ready(v),
                            None => {
                                value.1 = Some(cx.waker().clone());
                                waiting.set();
                                Poll::Pending
                            }
                        }
                    }))
                });
                assert_eq!(read.await.expect("no panic"), 5);
                done.set();
            });
        }
        waiting.wait();
        // `grow` finds no room for a worker and interrupts the helper.
        {
            let value = value.clone();
            pool.spawn(async move {
                let waker = {
                    let mut value = sync::lock(&value);
                    value.0 = Some(5);
                    value.1.take()
                };
                if let Some(waker) = waker {
                    waker.wake();
                }
            });
        }
        done.wait();
        shut_down(&pool);
    });
}

#[test]
fn a_timer_fires_through_whoever_polls() {
    model(|| {
        let pool = pool(1);
        let timer = Timer(pool.clone());
        let second = Duration::from_secs(1);
        // A plain thread sleeps on a pool with no worker yet: nobody polls,
        // so its timer asks for a poller (`ensure_poller` starts a worker).
        let waiting = Latch::new();
        let clock = {
            let (pool, waiting) = (pool.clone(), waiting.clone());
            thread::spawn(move || {
                waiting.wait();
                pool.reactor().advance_clock(second);
            })
        };
        park::block_on(sleep_then_set(
            timer.sleep_until(sync::now() + second),
            waiting,
        ));
        clock.join().expect("clock");
        // A task sleeps on the worker, which then polls until the deadline
        // and fires it.
        let waiting = Latch::new();
        let done = Latch::new();
        {
            let sleep = timer.sleep_until(sync::now() + second);
            let (waiting, done) = (waiting.clone(), done.clone());
            pool.spawn(async move {
                sleep_then_set(sleep, waiting).await;
                done.set();
            });
        }
        waiting.wait();
        pool.reactor().advance_clock(second);
        done.wait();
        shut_down(&pool);
    });
}

#[test]
fn an_idle_worker_exits_after_keep_alive_and_one_stays() {
    let keep_alive = Duration::from_secs(10);
    let config = move |max_workers| PoolConfig {
        max_workers,
        keep_alive: Some(keep_alive),
    };
    // Two idle workers: the one parked exits once its keep-alive passes,
    // the one polling stays and runs what comes.
    model(move || {
        let pool = pool_with(config(2));
        // A handler inside user code: a second worker starts meanwhile.
        let inside = Latch::new();
        let release = Latch::new();
        let done = Latch::new();
        {
            let (pool2, inside, release, done) =
                (pool.clone(), inside.clone(), release.clone(), done.clone());
            pool.spawn(async move {
                let call = pool2.call_user(false, move || {
                    inside.set();
                    release.wait();
                });
                call.await.expect("no panic");
                done.set();
            });
        }
        inside.wait();
        release.set();
        done.wait();
        // Both are free now: one polls, the other parks until its
        // keep-alive runs out, which the clock then passes.
        park::model::wait_for_timed_parks(1);
        pool.reactor().advance_clock(keep_alive);
        assert_eq!(pool.wait_for_workers(1), 1, "one worker stays");
        let ran = Latch::new();
        {
            let ran = ran.clone();
            pool.spawn(async move { ran.set() });
        }
        ran.wait();
        shut_down(&pool);
    });
    // The last worker, parked while a thread outside the pool polls, stays
    // when its keep-alive passes.
    model(move || {
        let pool = pool_with(config(1));
        let inside = Latch::new();
        let release = Latch::new();
        {
            let (pool2, inside, release) = (pool.clone(), inside.clone(), release.clone());
            pool.spawn(async move {
                let call = pool2.call_user(true, move || {
                    inside.set();
                    release.wait();
                });
                call.await.expect("no panic");
            });
        }
        inside.wait();
        // This thread polls the reactor while it waits for `done` (the only
        // worker is inside user code); `other` drives the rest.
        let done: Arc<Mutex<(bool, Option<Waker>)>> = Arc::default();
        let other = {
            let (pool, done) = (pool.clone(), done.clone());
            thread::spawn(move || {
                pool.reactor().wait_for_poller();
                // The worker comes back to nothing and parks.
                release.set();
                park::model::wait_for_timed_parks(1);
                pool.reactor().advance_clock(keep_alive);
                // It parks again instead of leaving.
                park::model::wait_for_timed_parks(2);
                let waker = {
                    let mut done = sync::lock(&done);
                    done.0 = true;
                    done.1.take()
                };
                if let Some(waker) = waker {
                    waker.wake();
                }
            })
        };
        pool.block_on(poll_fn(|cx| {
            let mut done = sync::lock(&done);
            if done.0 {
                return Poll::Ready(());
            }
            done.1 = Some(cx.waker().clone());
            Poll::Pending
        }));
        other.join().expect("other");
        shut_down(&pool);
    });
}
