//! The worker pool: runs connection tasks and handler jobs, and drives the reactor.
//!
//! Threads and their roles:
//! - **Workers** (at most `max_workers`) run whatever is queued: connection tasks
//!   (short, never block, except for a bodiless HTTP/1 request's handler, which
//!   runs inside its connection's poll: see `may_run_handler_here`) and handler
//!   jobs (user code, may block). A worker with nothing to run becomes the poller
//!   if nobody is, and parks otherwise. A job spawned by a task goes to the
//!   worker's LIFO slot, so the same thread runs the handler right after the
//!   task yields: no request needs a hand-off in the common case.
//! - **The reserve thread** never runs user code. It ticks every millisecond
//!   while handlers run (and sleeps otherwise). When every worker is inside a
//!   handler and a queued task has waited `STUCK_DELAY`, the handlers block: it
//!   polls the reactor and runs connection tasks itself until a worker is free,
//!   so request bodies keep flowing to the handlers that wait for them (no
//!   deadlock even at `max_workers`); when a queued job has waited
//!   `SPAWN_DELAY`, it adds workers. Handlers that return quickly never see it,
//!   so a busy server pays no hand-offs for it.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use super::reactor::Reactor;
use super::task::Task;

/// A unit of blocking work: a handler call and the delivery of its response.
pub(crate) type Job = Box<dyn FnOnce() + Send + 'static>;

/// How often the reserve thread looks for a stalled reactor while handlers run.
const RESERVE_TICK: Duration = Duration::from_millis(1);
/// How many runs in a row may come from a worker's LIFO slot before the shared
/// queue gets a turn: the slot saves a hand-off, but must not starve others.
const LIFO_BUDGET: u32 = 8;

/// How long a task may wait, with every worker inside a handler, before the
/// reserve thread runs it (and keeps running tasks and polling until a worker
/// is free again).
const STUCK_DELAY: Duration = Duration::from_millis(1);
/// How long a job may wait, with every worker inside a handler, before the
/// reserve adds workers. Longer: on a busy machine a worker inside a short
/// handler can be preempted for a millisecond, and a thread is dearer than a
/// hand-off.
const SPAWN_DELAY: Duration = Duration::from_millis(10);
/// Quiet ticks (no handler running) before the reserve thread stops ticking.
const RESERVE_LINGER_TICKS: u32 = 100;

/// Pool settings.
#[derive(Clone, Debug)]
pub(crate) struct PoolConfig {
    pub(crate) max_workers: usize,
    pub(crate) keep_alive: Duration,
}

/// A handle to the pool; cheap to clone.
#[derive(Clone)]
pub(crate) struct Pool(Arc<Shared>);

struct Shared {
    reactor: Reactor,
    config: PoolConfig,
    state: Mutex<State>,
    /// Parked workers wait here.
    worker_cv: Condvar,
    /// The reserve thread waits here.
    reserve_cv: Condvar,
    /// Workers currently inside user code (`blocking_section`).
    in_blocking: AtomicUsize,
    /// Set while the reserve thread sleeps without ticking.
    reserve_parked: AtomicBool,
    /// Set while the reserve thread waits in `poll` because every worker is
    /// inside user code; cleared (and the poll interrupted) when that changes.
    reserve_polling: AtomicBool,
}

struct State {
    /// Queued work, each with when it was queued: the reserve thread steps in
    /// for work that has waited too long.
    tasks: VecDeque<(Instant, Arc<Task>)>,
    jobs: VecDeque<(Instant, Job)>,
    /// Live worker threads.
    workers: usize,
    /// Parked workers not yet notified.
    parked: usize,
    /// Notifications sent to parked workers and not yet consumed.
    wakeups: usize,
    /// A worker is (about to be) blocked in `poll` and must be woken for new work.
    polling: bool,
    shutdown: bool,
}

enum Runnable {
    Task(Arc<Task>),
    Job(Job),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Worker,
    Reserve,
}

/// What a pool thread knows about itself.
struct Context {
    shared: Arc<Shared>,
    role: Role,
    /// Inside user code: new work must go to the shared queues, not to this
    /// thread, which may block for a long time.
    blocking: Cell<bool>,
    lifo: RefCell<Option<Runnable>>,
    /// While this worker dispatches reactor events: the tasks they woke,
    /// queued together afterwards with at most one wake-up.
    batch: RefCell<Option<Vec<Runnable>>>,
    /// Set while a task is being polled.
    in_task: Cell<bool>,
}

thread_local! {
    static CONTEXT: OnceCell<Context> = const { OnceCell::new() };
}

impl Pool {
    /// Starts the pool: one worker (which becomes the poller) and the reserve thread.
    pub(crate) fn start(reactor: Reactor, config: PoolConfig) -> std::io::Result<Pool> {
        let shared = Arc::new(Shared {
            reactor,
            config,
            state: Mutex::new(State {
                tasks: VecDeque::new(),
                jobs: VecDeque::new(),
                workers: 1,
                parked: 0,
                wakeups: 0,
                polling: false,
                shutdown: false,
            }),
            worker_cv: Condvar::new(),
            reserve_cv: Condvar::new(),
            in_blocking: AtomicUsize::new(0),
            reserve_parked: AtomicBool::new(false),
            reserve_polling: AtomicBool::new(false),
        });
        let reserve = shared.clone();
        thread::Builder::new()
            .name("astra-reserve".into())
            .spawn(move || reserve_main(reserve))?;
        let worker = shared.clone();
        thread::Builder::new()
            .name("astra-worker".into())
            .spawn(move || worker_main(worker))?;
        Ok(Pool(shared))
    }

    pub(crate) fn reactor(&self) -> &Reactor {
        &self.0.reactor
    }

    /// Spawns a future as a task.
    pub(crate) fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.push_task(Task::new(future, self.clone()));
    }

    /// Queues a woken task: in this worker's LIFO slot when called from a worker
    /// that is not inside user code, otherwise on the shared queue.
    pub(crate) fn push_task(&self, task: Arc<Task>) {
        self.push_local_or_global(Runnable::Task(task), false);
    }

    /// Queues a task behind all other queued work.
    pub(crate) fn push_task_fair(&self, task: Arc<Task>) {
        self.push_global(Runnable::Task(task));
    }

    /// Queues a handler job, preferring the current worker's LIFO slot.
    pub(crate) fn spawn_handler(&self, job: Job) {
        self.push_local_or_global(Runnable::Job(job), true);
    }

    /// Stops the pool's threads once they have nothing left to do.
    pub(crate) fn shutdown(&self) {
        let mut state = self.0.lock();
        state.shutdown = true;
        drop(state);
        self.0.worker_cv.notify_all();
        self.0.reserve_cv.notify_all();
        self.0.reactor.wake_driver();
    }

    /// Queues work in the current worker's LIFO slot (run next) when it can
    /// take it, otherwise on the shared queue. A task woken by another task
    /// goes to the shared queue, behind what is already there: HTTP/2 streams
    /// then all finish before their connection task runs again and writes their
    /// responses in one go (one `writev` for a whole batch, not one each).
    fn push_local_or_global(&self, runnable: Runnable, always_lifo: bool) {
        let displaced = CONTEXT.with(|cell| match cell.get() {
            Some(cx) if cx.role == Role::Worker && Arc::ptr_eq(&cx.shared, &self.0) => {
                // Captured by a reactor turn or by a handler about to wait
                // (`poll_and_help`), even inside user code.
                if let Some(batch) = cx.batch.borrow_mut().as_mut() {
                    batch.push(runnable);
                    return None;
                }
                if cx.blocking.get() || (cx.in_task.get() && !always_lifo) {
                    return Some(runnable);
                }
                cx.lifo.borrow_mut().replace(runnable)
            }
            _ => Some(runnable),
        });
        if let Some(runnable) = displaced {
            self.push_global(runnable);
        }
    }

    /// Queues what one reactor turn woke: the first in this worker's LIFO slot,
    /// the rest on the shared queue under one lock, and one other thread told.
    fn push_batch(&self, batch: Vec<Runnable>) {
        let mut batch = batch.into_iter();
        let Some(first) = batch.next() else {
            return;
        };
        self.push_local_or_global(first, false);
        let shared = &self.0;
        let mut state = shared.lock();
        let mut any = None;
        for runnable in batch {
            let is_task = state.enqueue(runnable);
            any = Some(any.unwrap_or(false) || is_task);
        }
        if let Some(is_task) = any {
            shared.find_runner(&mut state, is_task);
        }
    }

    fn push_global(&self, runnable: Runnable) {
        let shared = &self.0;
        let mut state = shared.lock();
        let is_task = state.enqueue(runnable);
        shared.find_runner(&mut state, is_task);
    }
}

impl State {
    /// Appends to the matching queue, stamped with the time; returns whether it
    /// was a task.
    fn enqueue(&mut self, runnable: Runnable) -> bool {
        match runnable {
            Runnable::Task(task) => self.tasks.push_back((Instant::now(), task)),
            Runnable::Job(job) => {
                self.jobs.push_back((Instant::now(), job));
                return false;
            }
        }
        true
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Workers that are not inside user code.
    fn available(&self, state: &State) -> usize {
        state
            .workers
            .saturating_sub(self.in_blocking.load(Ordering::SeqCst))
    }

    /// Makes sure some thread will pick up newly queued work, cheapest way first:
    /// a parked worker, the worker blocked in `poll`, a worker that is busy but
    /// will come back; with every worker inside a handler, the reserve thread
    /// (tasks only, see `reserve_main`).
    fn find_runner(&self, state: &mut State, is_task: bool) {
        if self.unpark_one(state) {
            return;
        }
        if state.polling {
            state.polling = false;
            self.reactor.wake_driver();
            return;
        }
        if self.available(state) > 0 {
            // A worker is running a task and returns to the queue afterwards.
            return;
        }
        if is_task {
            // If the reserve already polls for stuck workers, it runs the task;
            // otherwise its next tick notices if the handlers block (most return
            // sooner than a wake-up would take).
            self.interrupt_reserve_poll();
        }
        // A job waits for a worker to return; if none has within `SPAWN_DELAY`,
        // the reserve adds workers. Most handlers return sooner than a thread
        // starts, so the pool grows only for handlers that really block.
    }

    /// Wakes one parked worker, if any; returns whether one was.
    fn unpark_one(&self, state: &mut State) -> bool {
        if state.parked == 0 {
            return false;
        }
        state.parked -= 1;
        state.wakeups += 1;
        self.worker_cv.notify_one();
        true
    }

    /// Makes the reserve thread return from `poll` if it is blocked there.
    fn interrupt_reserve_poll(&self) {
        if self.reserve_polling.swap(false, Ordering::SeqCst) {
            self.reactor.wake_driver();
        }
    }

    fn spawn_worker(self: &Arc<Self>, state: &mut State) {
        state.workers += 1;
        let shared = self.clone();
        let spawned = thread::Builder::new()
            .name("astra-worker".into())
            .spawn(move || worker_main(shared));
        if let Err(err) = spawned {
            state.workers -= 1;
            log::error!("could not start a worker thread: {err}");
        }
    }

    /// Takes queued work: a task or a job, whichever `prefer_jobs` says first;
    /// tasks only for the reserve thread (`jobs_too` false).
    fn pop(&self, state: &mut State, jobs_too: bool, prefer_jobs: bool) -> Option<Runnable> {
        let job_first = jobs_too && prefer_jobs;
        let runnable = if job_first && !state.jobs.is_empty() {
            Runnable::Job(state.jobs.pop_front()?.1)
        } else if let Some((_, task)) = state.tasks.pop_front() {
            Runnable::Task(task)
        } else if jobs_too && !state.jobs.is_empty() {
            Runnable::Job(state.jobs.pop_front()?.1)
        } else {
            return None;
        };
        Some(runnable)
    }
}

fn run(runnable: Runnable) {
    match runnable {
        Runnable::Task(task) => {
            set_in_task(true);
            task.run();
            set_in_task(false);
        }
        Runnable::Job(job) => {
            if catch_unwind(AssertUnwindSafe(job)).is_err() {
                log::error!("a handler job panicked outside the handler");
            }
        }
    }
}

fn enter(shared: &Arc<Shared>, role: Role) {
    CONTEXT.with(|cell| {
        let _ = cell.set(Context {
            shared: shared.clone(),
            role,
            blocking: Cell::new(false),
            lifo: RefCell::new(None),
            batch: RefCell::new(None),
            in_task: Cell::new(false),
        });
    });
}

/// Starts (`Some`) or ends (`None`) collecting woken work; returns what was
/// collected.
fn set_batch(batch: Option<Vec<Runnable>>) -> Option<Vec<Runnable>> {
    CONTEXT.with(|cell| {
        let cx = cell.get()?;
        std::mem::replace(&mut *cx.batch.borrow_mut(), batch)
    })
}

fn set_in_task(value: bool) {
    CONTEXT.with(|cell| {
        if let Some(cx) = cell.get() {
            cx.in_task.set(value);
        }
    });
}

fn take_lifo() -> Option<Runnable> {
    CONTEXT.with(|cell| cell.get().and_then(|cx| cx.lifo.borrow_mut().take()))
}

fn worker_main(shared: Arc<Shared>) {
    enter(&shared, Role::Worker);
    // Alternate between the two queues so neither starves the other.
    let mut prefer_jobs = false;
    let mut lifo_streak = 0;
    loop {
        if let Some(runnable) = take_lifo() {
            if lifo_streak < LIFO_BUDGET {
                lifo_streak += 1;
                run(runnable);
                continue;
            }
            // Let queued work in before this chain goes on.
            Pool(shared.clone()).push_global(runnable);
        }
        lifo_streak = 0;
        let mut state = shared.lock();
        prefer_jobs = !prefer_jobs;
        if let Some(runnable) = shared.pop(&mut state, true, prefer_jobs) {
            drop(state);
            run(runnable);
            continue;
        }
        if state.shutdown {
            state.workers -= 1;
            return;
        }
        if let Some(mut driver) = shared.reactor.try_driver() {
            state.polling = true;
            drop(state);
            set_batch(Some(Vec::new()));
            shared.reactor.turn(&mut driver, None, || {
                shared.lock().polling = false;
            });
            drop(driver);
            if let Some(batch) = set_batch(None) {
                Pool(shared.clone()).push_batch(batch);
            }
            continue;
        }
        state.parked += 1;
        let (mut state, timeout) = shared
            .worker_cv
            .wait_timeout(state, shared.config.keep_alive)
            .unwrap_or_else(|e| e.into_inner());
        if state.wakeups > 0 {
            state.wakeups -= 1;
            // Woken for queued work: if more is queued than this worker takes,
            // pass the wake-up on (one at a time, not a thundering herd).
            if state.tasks.len() + state.jobs.len() > 1 {
                shared.unpark_one(&mut state);
            }
            continue;
        }
        state.parked -= 1;
        // An idle worker leaves, but one always stays to poll the reactor.
        if timeout.timed_out()
            && state.workers > 1
            && state.tasks.is_empty()
            && state.jobs.is_empty()
        {
            state.workers -= 1;
            return;
        }
    }
}

fn reserve_main(shared: Arc<Shared>) {
    enter(&shared, Role::Reserve);
    let mut quiet_ticks = 0;
    let mut last_epoch = shared.reactor.epoch();
    // Running tasks and polling for workers stuck in handlers.
    let mut engaged = false;
    let mut state = shared.lock();
    loop {
        if state.shutdown {
            return;
        }
        // Step in when every worker is inside a handler and queued work has
        // waited: a task `STUCK_DELAY` (run tasks and poll until a worker is
        // free again), a job `SPAWN_DELAY` (add workers). Handlers that return
        // sooner are left alone: stepping in for them would only add
        // hand-offs and threads competing for the CPU.
        let saturated = shared.available(&state) == 0;
        let waited = |since: Option<&Instant>, delay| since.is_some_and(|t| t.elapsed() >= delay);
        if !saturated {
            engaged = false;
        } else if waited(state.tasks.front().map(|(t, _)| t), STUCK_DELAY) {
            engaged = true;
        }
        // Run the tasks the stuck workers cannot (request bodies they wait for).
        if engaged {
            if let Some(runnable) = shared.pop(&mut state, false, false) {
                drop(state);
                run(runnable);
                state = shared.lock();
                continue;
            }
        }
        // Grow the pool for jobs queued behind workers stuck in handlers.
        let room = shared.config.max_workers.saturating_sub(state.workers);
        if saturated
            && room > 0
            && !state.shutdown
            && waited(state.jobs.front().map(|(t, _)| t), SPAWN_DELAY)
        {
            for _ in 0..room.min(state.jobs.len()) {
                shared.spawn_worker(&mut state);
            }
            continue;
        }
        let saturated = engaged;
        let handlers_running = shared.in_blocking.load(Ordering::SeqCst) > 0;
        if handlers_running {
            quiet_ticks = 0;
        } else {
            quiet_ticks += 1;
        }
        // Poll the reactor while no worker can, or when nobody has for a whole
        // tick while handlers run (a worker that left polling to run a long
        // handler while the others are parked).
        let epoch = shared.reactor.epoch();
        let nobody_polled = epoch == last_epoch;
        last_epoch = epoch;
        if saturated || (handlers_running && nobody_polled) {
            if let Some(mut driver) = shared.reactor.try_driver() {
                // While saturated, wait for events until a worker comes free
                // (`interrupt_reserve_poll`); otherwise look once and hand back.
                let timeout = if saturated {
                    shared.reserve_polling.store(true, Ordering::SeqCst);
                    // Re-check after publishing: a worker leaving user code
                    // either sees the flag or is seen here.
                    (shared.available(&state) == 0).then_some(RESERVE_TICK)
                } else {
                    None
                };
                drop(state);
                shared
                    .reactor
                    .turn(&mut driver, Some(timeout.unwrap_or(Duration::ZERO)), || {
                        shared.reserve_polling.store(false, Ordering::SeqCst);
                    });
                state = shared.lock();
                drop(driver);
                // Hand polling back to a worker if one is parked.
                if shared.available(&state) > 0 {
                    shared.unpark_one(&mut state);
                }
                last_epoch = shared.reactor.epoch();
                if saturated {
                    continue;
                }
                // A look on behalf of a worker that left polling: the next one
                // is a tick away, not at once (that would spin on this core).
            }
        }
        if quiet_ticks > RESERVE_LINGER_TICKS {
            shared.reserve_parked.store(true, Ordering::SeqCst);
            // Re-check after publishing the flag: a worker entering user code
            // either sees the flag and notifies, or is seen here.
            if shared.in_blocking.load(Ordering::SeqCst) == 0 && state.tasks.is_empty() {
                state = shared
                    .reserve_cv
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner());
            }
            shared.reserve_parked.store(false, Ordering::SeqCst);
            quiet_ticks = 0;
        } else {
            state = shared
                .reserve_cv
                .wait_timeout(state, RESERVE_TICK)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Runs `poll` (a handler polling its request body) with the tasks it wakes
/// captured, then runs those tasks right here.
///
/// The task a waiting handler wakes is the connection that feeds its body;
/// running it on this thread, instead of queueing it for another thread and
/// sleeping until that one answers, saves two cross-thread wake-ups per chunk.
/// Tasks never block, so the handler waits no longer for it. Captured jobs
/// (handlers) are queued as usual: user code must not nest.
pub(crate) fn poll_and_help<T>(poll: impl FnOnce() -> T) -> T {
    let Some(previous) = CONTEXT.with(|cell| {
        let cx = cell.get().filter(|cx| cx.role == Role::Worker)?;
        Some(cx.batch.borrow_mut().replace(Vec::new()))
    }) else {
        return poll();
    };
    let output = poll();
    let woken = set_batch(previous).unwrap_or_default();
    for runnable in woken {
        match runnable {
            Runnable::Task(_) => run(runnable),
            Runnable::Job(_) => CONTEXT.with(|cell| {
                if let Some(cx) = cell.get() {
                    Pool(cx.shared.clone()).push_global(runnable);
                }
            }),
        }
    }
    output
}

/// Whether the calling thread may run a handler (user code) right here: a
/// worker, not already inside user code (a handler running its connection's
/// task while it waits for its body). Never the reserve thread.
pub(crate) fn may_run_handler_here() -> bool {
    CONTEXT.with(|cell| {
        cell.get()
            .is_some_and(|cx| cx.role == Role::Worker && !cx.blocking.get())
    })
}

/// Whether the calling thread is a pool's reserve thread, which must never run
/// user code.
pub(crate) fn on_reserve_thread() -> bool {
    CONTEXT.with(|cell| cell.get().is_some_and(|cx| cx.role == Role::Reserve))
}

/// Queues a job from the reserve thread, for a worker to run.
///
/// # Panics
///
/// Panics if called elsewhere (see [`on_reserve_thread`]).
pub(crate) fn spawn_job_from_reserve(job: Job) {
    let shared = CONTEXT.with(|cell| {
        let cx = cell.get().filter(|cx| cx.role == Role::Reserve);
        cx.expect("called on the reserve thread").shared.clone()
    });
    Pool(shared).push_global(Runnable::Job(job));
}

/// Runs `f`, which may block for a long time (user code), telling the pool that
/// the current worker is unavailable meanwhile. Outside a worker, just runs `f`.
pub(crate) fn blocking_section<R>(f: impl FnOnce() -> R) -> R {
    let shared = CONTEXT.with(|cell| match cell.get() {
        Some(cx) if cx.role == Role::Worker && !cx.blocking.get() => {
            cx.blocking.set(true);
            Some(cx.shared.clone())
        }
        _ => None,
    });
    let Some(shared) = shared else {
        return f();
    };
    shared.in_blocking.fetch_add(1, Ordering::SeqCst);
    if shared.reserve_parked.load(Ordering::SeqCst) {
        // The reserve must tick while handlers run, to notice if they block.
        let _state = shared.lock();
        shared.reserve_cv.notify_one();
    }
    struct Exit(Arc<Shared>);
    impl Drop for Exit {
        fn drop(&mut self) {
            self.0.in_blocking.fetch_sub(1, Ordering::SeqCst);
            // This worker is free again: it, not the reserve, should poll.
            self.0.interrupt_reserve_poll();
            CONTEXT.with(|cell| {
                if let Some(cx) = cell.get() {
                    cx.blocking.set(false);
                }
            });
        }
    }
    let _exit = Exit(shared);
    f()
}
