//! Unit tests of the pool: hand-offs, queues and panics, on real threads.
use super::queue::{FRESH_CAP, FRESH_TURNS};
use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

fn pool(max_workers: usize) -> Pool {
    Pool::new(
        Reactor::new().unwrap(),
        PoolConfig {
            max_workers,
            keep_alive: Some(Duration::from_secs(5)),
        },
    )
}

/// Waits (bounded) until `cond` holds on the pool's counters.
fn wait_until(pool: &Pool, what: &str, cond: impl Fn((usize, usize, usize)) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let snapshot = pool.snapshot();
        if cond(snapshot) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: stuck at {snapshot:?}");
        std::thread::yield_now();
    }
}

/// A panic in a future polled by a handler that waits (here: a body
/// read) must not leave the worker capturing wake-ups: what the poll
/// woke before it panicked runs, and so does what wakes later.
/// Reads one byte from `socket`, registered as `io`, waiting for the reactor
/// to say it is readable; says on `waiting` when it first waits.
async fn read_one_byte(
    io: &super::super::reactor::ScheduledIo,
    socket: &mut mio::net::UnixStream,
    waiting: mpsc::Sender<()>,
) {
    use super::super::reactor::READABLE;
    use std::io::Read;

    let mut told = false;
    std::future::poll_fn(|cx| loop {
        match io.poll_ready(cx, READABLE) {
            Poll::Pending => {
                if !told {
                    told = true;
                    waiting.send(()).unwrap();
                }
                return Poll::Pending;
            }
            Poll::Ready(tick) => match socket.read(&mut [0; 1]) {
                Ok(_) => return Poll::Ready(()),
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    io.clear(READABLE, tick);
                }
                Err(err) => panic!("read failed: {err}"),
            },
        }
    })
    .await
}

#[test]
fn a_task_woken_by_a_poll_that_panics_still_runs() {
    let pool = pool(2);
    let waker_slot: Arc<std::sync::Mutex<Option<Waker>>> = Arc::default();
    let (polled_tx, polled_rx) = mpsc::channel();
    let (ran_tx, ran_rx) = mpsc::channel();
    {
        let waker_slot = waker_slot.clone();
        let mut polls = 0;
        pool.spawn(std::future::poll_fn(move |cx| {
            polls += 1;
            ran_tx.send(polls).unwrap();
            if polls == 3 {
                return Poll::Ready(());
            }
            *waker_slot.lock().unwrap() = Some(cx.waker().clone());
            polled_tx.send(()).unwrap();
            Poll::Pending
        }));
    }
    assert_eq!(ran_rx.recv_timeout(Duration::from_secs(10)).unwrap(), 1);
    polled_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let (pool2, slot) = (pool.clone(), waker_slot.clone());
    pool.spawn(async move {
        let outcome = pool2
            .call_user(false, move || {
                let waker = slot.lock().unwrap().take().unwrap();
                super::super::park::block_on(std::future::poll_fn(|_| -> Poll<()> {
                    waker.wake_by_ref();
                    panic!("INTENTIONAL panic in a polled future");
                }))
            })
            .await;
        assert!(outcome.is_err(), "the panic reaches the caller");
    });
    assert_eq!(
        ran_rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        2,
        "the task woken before the panic ran"
    );
    polled_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    // A later wake-up, from a thread of its own, runs it again.
    waker_slot.lock().unwrap().take().unwrap().wake();
    assert_eq!(ran_rx.recv_timeout(Duration::from_secs(10)).unwrap(), 3);
    assert_eq!(pool.shutdown(Duration::from_secs(10)), 0);
}

/// A thread outside the pool that runs a pool task while it waits (an
/// upgraded stream's, a user's own) must leave the user code that task
/// starts to a worker, even with every worker busy.
#[test]
fn user_code_of_a_task_run_off_the_pool_runs_on_a_worker() {
    let pool = pool(1);
    // The only worker is inside user code until released.
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (busy_tx, busy_rx) = mpsc::channel();
    let pool2 = pool.clone();
    pool.spawn(async move {
        pool2
            .call_user(false, move || {
                busy_tx.send(()).unwrap();
                release_rx.recv_timeout(Duration::from_secs(10)).unwrap();
            })
            .await
            .unwrap();
    });
    busy_rx.recv_timeout(Duration::from_secs(10)).unwrap();

    // A task whose user code notes its thread; this thread will run the
    // task while it waits for the note.
    type Slot = (Option<String>, Option<Waker>);
    let slot: Arc<std::sync::Mutex<Slot>> = Arc::default();
    let slot2 = slot.clone();
    pool.spawn(async move {
        let name = call_user_here(|| std::thread::current().name().map(str::to_string))
            .await
            .unwrap()
            .unwrap_or_default();
        let waker = {
            let mut slot = slot2.lock().unwrap();
            slot.0 = Some(name);
            slot.1.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    });
    // Releases the worker once the user code is queued for it (or has
    // run somewhere already).
    let gauges = pool.downgrade();
    let noted = slot.clone();
    let releaser = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        while gauges.gauges().unwrap().2 == 0 && noted.lock().unwrap().0.is_none() {
            assert!(Instant::now() < deadline, "nothing was queued");
            std::thread::sleep(Duration::from_millis(1));
        }
        release_tx.send(()).unwrap();
    });
    let name = pool.block_on(std::future::poll_fn(|cx| {
        let mut slot = slot.lock().unwrap();
        match slot.0.clone() {
            Some(name) => Poll::Ready(name),
            None => {
                slot.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }));
    releaser.join().unwrap();
    assert_eq!(name, "astra-worker");
    assert_eq!(pool.shutdown(Duration::from_secs(10)), 0);
}

/// A waker that says so, then panics, when an event wakes it.
struct PanickingWaker(std::sync::Mutex<mpsc::Sender<()>>);

impl std::task::Wake for PanickingWaker {
    fn wake(self: Arc<Self>) {
        let _ = self.0.lock().unwrap().send(());
        panic!("INTENTIONAL panic in a waker");
    }
}

/// A panic in the pool's own code (here: a waker called by a reactor
/// turn) ends that worker, which the pool then counts out (`shutdown`
/// finds every counted worker gone), and leaves the reactor to be polled
/// by the next worker: later events still run their tasks.
#[test]
fn a_worker_ended_by_a_panic_is_counted_out_and_the_reactor_still_polled() {
    use super::super::reactor::READABLE;
    use std::io::Write;

    let pool = pool(2);
    // A task so that a worker starts and polls the reactor.
    let (tx, rx) = mpsc::channel();
    pool.spawn(async move { tx.send(()).unwrap() });
    rx.recv_timeout(Duration::from_secs(10)).unwrap();

    // A socket whose readiness wakes a panicking waker.
    let (ours, mut theirs) = mio::net::UnixStream::pair().unwrap();
    let (token, io) = pool.reactor().register_fd(&ours).unwrap();
    let (panicked_tx, panicked_rx) = mpsc::channel();
    let waker = Waker::from(Arc::new(PanickingWaker(std::sync::Mutex::new(panicked_tx))));
    let mut cx = TaskContext::from_waker(&waker);
    // Starts ready (see `ScheduledIo`): clear, then wait.
    if let Poll::Ready(tick) = io.poll_ready(&mut cx, READABLE) {
        io.clear(READABLE, tick);
    }
    assert!(io.poll_ready(&mut cx, READABLE).is_pending());
    theirs.write_all(b"x").unwrap();
    panicked_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    pool.reactor().deregister_fd(&ours, token);

    // Another socket's event still runs its task.
    let (mut ours, mut theirs) = mio::net::UnixStream::pair().unwrap();
    let (token, io) = pool.reactor().register_fd(&ours).unwrap();
    let (ready_tx, ready_rx) = mpsc::channel();
    let (waiting_tx, waiting_rx) = mpsc::channel();
    pool.spawn(async move {
        read_one_byte(&io, &mut ours, waiting_tx).await;
        ready_tx.send(()).unwrap();
    });
    waiting_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    theirs.write_all(b"y").unwrap();
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the event after the panic is delivered");
    let _ = token;
    assert_eq!(
        pool.shutdown(Duration::from_secs(10)),
        0,
        "no worker is counted that is not there to exit"
    );
}

#[test]
fn free_runnable_leaves_out_parked_in_user_code_and_polling_workers() {
    // 5 workers: 1 parked, 1 in user code, 3 free and runnable.
    assert_eq!(free_runnable(5, 1, 1, false), 3);
    // One free worker blocked in the poll is not runnable.
    assert_eq!(free_runnable(5, 1, 1, true), 2);
    // Counts read while they move never underflow.
    assert_eq!(free_runnable(2, 1, 2, true), 0);
}

#[test]
fn a_worker_yields_only_for_one_that_is_not_standing_aside() {
    // Alone: nobody to yield to.
    assert!(!should_yield(1, 0));
    // Another free worker runs (or was preempted mid-run): yield.
    assert!(should_yield(2, 0));
    // The other one is inside its own yield, holding nothing: carry on.
    assert!(!should_yield(2, 1));
    // Of three, one stands aside and one may hold work: yield.
    assert!(should_yield(3, 1));
}

#[test]
fn no_thread_until_there_is_work() {
    let pool = pool(4);
    assert_eq!(pool.snapshot(), (0, 0, 0));
    let (tx, rx) = mpsc::channel();
    pool.spawn(async move { tx.send(()).unwrap() });
    rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(pool.snapshot().0, 1);
    assert_eq!(pool.shutdown(Duration::from_secs(10)), 0);
}

#[test]
fn entering_user_code_hands_the_pool_on() {
    // Three tasks each block in user code until released: each entry
    // leaves no free worker behind, so each starts the next worker.
    let pool = pool(8);
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = Arc::new(std::sync::Mutex::new(release_rx));
    let entered = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        let pool2 = pool.clone();
        let release_rx = release_rx.clone();
        let entered = entered.clone();
        pool.spawn(async move {
            let call = pool2.call_user(true, move || {
                entered.fetch_add(1, Ordering::SeqCst);
                release_rx.lock().unwrap().recv().unwrap();
            });
            call.await.unwrap();
        });
    }
    wait_until(&pool, "three in user code", |(_, in_user, _)| {
        in_user == 3 && entered.load(Ordering::SeqCst) == 3
    });
    // And one more free worker: the I/O role was handed on.
    let (workers, in_user, _) = pool.snapshot();
    assert_eq!(workers, 4, "one worker per blocked handler plus one");
    assert_eq!(in_user, 3);
    for _ in 0..3 {
        release_tx.send(()).unwrap();
    }
    wait_until(&pool, "all out of user code", |(_, in_user, _)| {
        in_user == 0
    });
    assert_eq!(pool.shutdown(Duration::from_secs(10)), 0);
}

#[test]
fn the_pool_stops_growing_at_max_workers_and_queues_the_rest() {
    let pool = pool(2);
    let (done_tx, done_rx) = mpsc::channel();
    let gate = Arc::new(std::sync::Barrier::new(3));
    for i in 0..4 {
        let pool2 = pool.clone();
        let done_tx = done_tx.clone();
        let gate = gate.clone();
        pool.spawn(async move {
            let out = pool2
                .call_user(false, move || {
                    if i < 2 {
                        gate.wait();
                    }
                    i
                })
                .await
                .unwrap();
            done_tx.send(out).unwrap();
        });
    }
    wait_until(&pool, "both workers in user code", |(w, u, _)| {
        w == 2 && u == 2
    });
    assert!(done_rx.try_recv().is_err(), "nothing finished yet");
    gate.wait();
    let mut got: Vec<_> = (0..4)
        .map(|_| done_rx.recv_timeout(Duration::from_secs(10)).unwrap())
        .collect();
    got.sort();
    assert_eq!(got, [0, 1, 2, 3]);
    assert_eq!(pool.snapshot().0, 2, "never more than max_workers");
    assert_eq!(pool.shutdown(Duration::from_secs(10)), 0);
}

#[test]
fn a_panic_in_user_code_is_returned_and_the_worker_lives() {
    let pool = pool(1);
    let (tx, rx) = mpsc::channel();
    for _ in 0..20 {
        let pool2 = pool.clone();
        let tx = tx.clone();
        pool.spawn(async move {
            let result = pool2.call_user(true, || panic!("user code panics")).await;
            tx.send(result.is_err()).unwrap();
        });
    }
    for _ in 0..20 {
        assert!(rx.recv_timeout(Duration::from_secs(10)).unwrap());
    }
    assert_eq!(pool.snapshot(), (1, 0, pool.snapshot().2));
    assert_eq!(pool.shutdown(Duration::from_secs(10)), 0);
}

#[test]
fn idle_workers_exit_after_keep_alive_but_one_stays() {
    let pool = Pool::new(
        Reactor::new().unwrap(),
        PoolConfig {
            max_workers: 8,
            keep_alive: Some(Duration::from_millis(50)),
        },
    );
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = Arc::new(std::sync::Mutex::new(release_rx));
    for _ in 0..3 {
        let pool2 = pool.clone();
        let release_rx = release_rx.clone();
        pool.spawn(async move {
            pool2
                .call_user(true, move || release_rx.lock().unwrap().recv().unwrap())
                .await
                .unwrap();
        });
    }
    wait_until(&pool, "three blocked", |(_, u, _)| u == 3);
    for _ in 0..3 {
        release_tx.send(()).unwrap();
    }
    wait_until(&pool, "back to one worker", |(w, _, _)| w == 1);
    assert_eq!(pool.shutdown(Duration::from_secs(10)), 0);
}

#[test]
fn shutdown_reports_workers_still_in_user_code() {
    let pool = pool(2);
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let pool2 = pool.clone();
    pool.spawn(async move {
        pool2
            .call_user(true, move || release_rx.recv().unwrap())
            .await
            .unwrap();
    });
    wait_until(&pool, "in user code", |(_, u, _)| u == 1);
    assert_eq!(pool.shutdown(Duration::from_millis(50)), 1);
    release_tx.send(()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.snapshot().0 > 0 {
        assert!(Instant::now() < deadline, "workers did not exit");
        std::thread::yield_now();
    }
}

#[test]
fn a_plain_thread_drives_the_reactor_without_any_worker() {
    // max_workers 0: no worker can ever start, so only the caller's own
    // polling can fire the timer.
    let pool = pool(0);
    let timer = super::super::timer::Timer(pool.clone());
    let started = Instant::now();
    pool.block_on(timer.sleep_until(started + Duration::from_millis(30)));
    assert!(started.elapsed() >= Duration::from_millis(30));
    assert_eq!(pool.snapshot().0, 0, "no worker was started");
}

#[test]
fn fresh_tasks_take_turns_with_the_queue_and_overflow_behind_it() {
    let pool = pool(1);
    let task = || -> TaskRef { Task::new(async {}, pool.clone()) };
    let queued: Vec<_> = (0..3).map(|_| task()).collect();
    let fresh: Vec<_> = (0..FRESH_CAP + 1).map(|_| task()).collect();
    let mut state = State::new();
    for t in &queued {
        assert!(state.enqueue(Runnable::Task(t.clone()), false));
    }
    for t in &fresh {
        assert!(state.enqueue(Runnable::Task(t.clone()), true));
    }
    assert_eq!(state.fresh.len(), FRESH_CAP, "the fresh queue is capped");
    let mut order = Vec::new();
    while let Some(t) = state.pop_task() {
        order.push(t);
    }
    // While both queues hold tasks: two fresh, one queued, and again.
    assert_eq!(FRESH_TURNS, 2, "the order below assumes two turns");
    let expected: Vec<&TaskRef> = vec![
        &fresh[0],
        &fresh[1],
        &queued[0],
        &fresh[2],
        &fresh[3],
        &queued[1],
        &fresh[4],
        &fresh[5],
        &queued[2],
        &fresh[6],
        &fresh[7],
        // The one over the cap joined the back of the main queue: its
        // turn comes right after the three queued before it.
        &fresh[FRESH_CAP],
        &fresh[8],
        &fresh[9],
    ];
    for (at, want) in expected.into_iter().enumerate() {
        assert!(Arc::ptr_eq(&order[at], want), "turn {at}");
    }
    assert_eq!(order.len(), FRESH_CAP + 4);
}

/// An event that comes in while a worker works through a long queue is
/// served after a few tasks, not after the whole queue.
#[test]
fn an_event_during_a_backlog_is_served_before_the_backlog_ends() {
    use std::io::Write;

    const BACKLOG: usize = 200;
    const EVENT: usize = usize::MAX;
    let pool = pool(1);
    let (mut ours, mut theirs) = mio::net::UnixStream::pair().unwrap();
    let (token, io) = pool.reactor().register_fd(&ours).unwrap();
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));

    // A task waiting for a byte on `ours`.
    let (waiting_tx, waiting_rx) = mpsc::channel();
    let task_pool = pool.clone();
    let task_order = order.clone();
    pool.spawn(async move {
        read_one_byte(&io, &mut ours, waiting_tx).await;
        task_pool.reactor().deregister_fd(&ours, token);
        task_order.lock().unwrap().push(EVENT);
    });
    waiting_rx.recv_timeout(Duration::from_secs(10)).unwrap();

    // Hold the only worker in a task while the backlog queues up and the
    // byte arrives.
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    pool.spawn(async move {
        started_tx.send(()).unwrap();
        let _ = release_rx.recv_timeout(Duration::from_secs(10));
    });
    started_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    for i in 0..BACKLOG {
        let order = order.clone();
        pool.spawn(async move { order.lock().unwrap().push(i) });
    }
    theirs.write_all(b"x").unwrap();
    release_tx.send(()).unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    while order.lock().unwrap().len() < BACKLOG + 1 {
        assert!(Instant::now() < deadline, "the tasks did not all run");
        std::thread::yield_now();
    }
    let order = order.lock().unwrap();
    let at = order.iter().position(|&i| i == EVENT).unwrap();
    assert!(
        at < BACKLOG / 4,
        "the event's task ran at {at} of {}",
        order.len()
    );
}

/// A spawned future is polled where it was first pinned, and dropped there:
/// it lives inside its task's allocation (`Task<F>`), never moved out.
#[test]
fn a_task_future_stays_where_it_was_pinned_until_dropped() {
    use std::marker::PhantomPinned;
    use std::sync::Mutex as StdMutex;

    /// Records its address at every poll and at its drop; pending on its
    /// first poll (waking itself), ready on the second.
    struct Pinned {
        seen: Arc<StdMutex<Vec<usize>>>,
        polls: u32,
        _pin: PhantomPinned,
    }
    impl Future for Pinned {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
            // SAFETY: only a counter is changed; nothing is moved out.
            let this = unsafe { self.get_unchecked_mut() };
            this.seen
                .lock()
                .unwrap()
                .push(this as *const Pinned as usize);
            this.polls += 1;
            if this.polls == 1 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(())
        }
    }
    impl Drop for Pinned {
        fn drop(&mut self) {
            self.seen
                .lock()
                .unwrap()
                .push(self as *const Pinned as usize);
        }
    }

    let pool = pool(1);
    let seen = Arc::new(StdMutex::new(Vec::new()));
    pool.spawn(Pinned {
        seen: seen.clone(),
        polls: 0,
        _pin: PhantomPinned,
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().len() < 3 {
        assert!(Instant::now() < deadline, "the task did not finish");
        std::thread::yield_now();
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "two polls and a drop: {seen:?}");
    assert!(
        seen.iter().all(|&at| at == seen[0]),
        "the future moved: {seen:?}"
    );
}

/// A finished future whose drop panics is dropped once: the task's slot is
/// left empty, so dropping the task does not drop it again, and the pool
/// goes on running tasks.
#[test]
fn a_task_future_whose_drop_panics_is_dropped_once() {
    struct PanicsOnDrop(Arc<AtomicUsize>);
    impl Future for PanicsOnDrop {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<()> {
            Poll::Ready(())
        }
    }
    impl Drop for PanicsOnDrop {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
            panic!("a drop that panics");
        }
    }

    let pool = pool(1);
    let drops = Arc::new(AtomicUsize::new(0));
    let task: TaskRef = Task::new(PanicsOnDrop(drops.clone()), pool.clone());
    task.clone().run();
    assert_eq!(drops.load(Ordering::SeqCst), 1, "dropped when it finished");
    drop(task);
    assert_eq!(drops.load(Ordering::SeqCst), 1, "not dropped again");
    let (sent, received) = mpsc::channel();
    pool.spawn(async move { sent.send(()).unwrap() });
    received
        .recv_timeout(Duration::from_secs(10))
        .expect("the pool still runs tasks");
}
