//! The worker pool: runs connection tasks and user code, and drives the reactor.
//!
//! Every thread here is a worker; there is no reactor thread and no timer
//! thread. A worker runs what is queued (connection tasks, which never block,
//! and jobs, which run user code), and with nothing queued it polls the reactor
//! if nobody does, or parks. A job spawned by a task goes to the worker's LIFO
//! slot, so the same thread runs it right after the task yields. While work is
//! queued, a worker also polls the reactor without waiting every few tasks;
//! what that wakes takes turns with the queue instead of waiting behind it.
//!
//! Liveness rests on one rule, applied at the moment things change and never
//! on a clock: **while any worker is inside user code, some other thread can
//! take the I/O role.** A worker counts as inside user code from
//! [`user_section`]'s start to its end (a handler, a response-body read);
//! entering it while no other worker is free and awake hands the role on at
//! once: to a parked worker, else to a new one (started outside the lock), else,
//! at `max_workers`, to a handler that is waiting for its request body, which
//! runs connection tasks and polls the reactor while it waits (see
//! [`wait_for_wake`]). So the pool grows only because handlers are inside user
//! code, up to `max_workers`; a server with nothing ready has one worker asleep
//! in `epoll_wait` and nothing else awake. Queued work wakes a parked worker
//! only while fewer free workers than CPUs are awake: more would only take
//! turns on the same CPUs. While more than one free worker is runnable (a
//! handler returned while others covered for it, say), each yields its CPU
//! every few runs, unless the others are standing aside in yields of their
//! own: whatever else waits for that CPU gets it after a few runs, not after
//! a kernel time slice.
//!
//! All locks and atomics come from `super::sync`, so the protocol runs under
//! loom (`--cfg astra_loom`); the models are in `super::models`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::{Duration, Instant};

use super::park::Parker;
use super::reactor::{Driver, Reactor};
use super::sync::{
    self, thread, Arc, AtomicBool, AtomicUsize, Condvar, Mutex, MutexGuard, Ordering,
};
use super::task::Task;

/// A unit of work that runs user code (a handler call, a body read).
pub(crate) type Job = Box<dyn FnOnce() + Send + 'static>;

/// How many runs in a row may come from a worker's LIFO slot before the shared
/// queue gets a turn: the slot saves a hand-off, but must not starve others.
const LIFO_BUDGET: u32 = 8;

/// How often (in passes of its loop) a worker checks whether another free
/// worker is runnable, and if so yields its CPU (see `worker_main`). A check
/// on every pass cost 19 % of pinned hello throughput in switches; every 16th
/// costs nothing measurable and keeps turns to about 0.2 ms of hello
/// requests, far below the kernel's 4 ms tick.
const YIELD_CHECK_EVERY: u32 = 16;

/// While tasks are queued, a worker polls the reactor (without waiting) after
/// every this many tasks it takes from the queue, and the tasks those events
/// wake join the fresh queue (`State::fresh`). Without this, events wait
/// behind the whole backlog until the queue runs dry.
#[cfg(not(astra_loom))]
const POLL_EVERY: u32 = 16;
/// Under loom, at every task, so that the models go through it.
#[cfg(astra_loom)]
const POLL_EVERY: u32 = 1;

/// At most this many tasks wait in the fresh queue; the rest of what a
/// poll between tasks wakes joins the back of the main queue. In interleaved
/// pinned hello runs at 1,000 connections 32 did better than 128 (80 against
/// 69 thousand req/s, medians of 4): the fewer connections served out of
/// turn, the more of what they touch is likely still in this core's cache.
const FRESH_CAP: usize = 32;

/// Turns the fresh queue gets for each of the main queue's. Interleaved
/// pinned hello runs at 1,000 connections: 74.6 against 68.1 thousand req/s
/// for 2 over 1 (medians of 6, 2 ahead in 5 of the 6 rounds; hyper_tokio
/// 74.5), p99 47-52 against 32-43 ms (hyper_tokio's 150).
const FRESH_TURNS: u8 = 2;

/// Pool settings.
#[derive(Clone, Debug)]
pub(crate) struct PoolConfig {
    pub(crate) max_workers: usize,
    /// How long a parked worker waits for work before it exits; `None`: for
    /// ever. One worker always stays.
    pub(crate) keep_alive: Option<Duration>,
}

/// A handle to the pool; cheap to clone.
#[derive(Clone)]
pub(crate) struct Pool(Arc<Shared>);

/// A weak handle to the pool, for `ServerHandle::stats`.
#[cfg(not(astra_loom))]
pub(crate) struct PoolRef(std::sync::Weak<Shared>);

#[cfg(not(astra_loom))]
impl PoolRef {
    /// The pool, while it exists.
    pub(crate) fn upgrade(&self) -> Option<Pool> {
        self.0.upgrade().map(Pool)
    }

    /// Live workers, threads inside user code, and queued work; `None` once
    /// the pool is gone.
    pub(crate) fn gauges(&self) -> Option<(usize, usize, usize)> {
        let shared = self.0.upgrade()?;
        let queued = {
            let state = shared.lock();
            state.tasks.len() + state.fresh.len() + state.jobs.len()
        };
        Some((
            shared.workers.load(Ordering::Relaxed),
            shared.in_user.load(Ordering::Relaxed),
            queued,
        ))
    }
}

struct Shared {
    reactor: Reactor,
    config: PoolConfig,
    /// CPUs this process may run on. Queued work wakes a parked worker only
    /// while fewer free workers than that are awake: more would only take
    /// turns on the same CPUs, at the price of a wake-up and a sleep each.
    cpus: usize,
    state: Mutex<State>,
    /// Signalled whenever a worker exits (`Pool::shutdown` waits on it).
    exited: Condvar,
    /// Workers inside user code. Changed without the lock, so that entering
    /// and leaving user code usually costs two atomic operations.
    in_user: AtomicUsize,
    /// Copies of `State::workers` and `State::idle.len()`, written under the
    /// lock, read without it by `enter_user`'s fast path.
    workers: AtomicUsize,
    idle: AtomicUsize,
    /// A free worker is blocked in the reactor's poll (`Polling::Worker`
    /// until the poll returns): awake by the pool's count, but not runnable.
    worker_in_poll: AtomicBool,
    /// Free workers inside their yield (`worker_main`): runnable but holding
    /// nothing, so no other worker needs to yield for them.
    standing_aside: AtomicUsize,
}

struct State {
    tasks: VecDeque<Arc<Task>>,
    /// Tasks woken by events that came in while the queue was being worked
    /// through (`POLL_EVERY`). They take turns with `tasks`: a connection
    /// whose next request has just arrived is served while its socket and
    /// buffers are still in this core's cache (the last response went out
    /// moments ago), and the queue behind still moves at least every third
    /// turn (`FRESH_TURNS`), so nothing waits more than about three times as
    /// long as first-come order would make it.
    fresh: VecDeque<Arc<Task>>,
    /// Where the turns stand: `fresh` has the next one while this is below
    /// `FRESH_TURNS`, then `tasks`.
    turn: u8,
    jobs: VecDeque<Job>,
    /// Live workers, counting those being started.
    workers: usize,
    /// Parked workers, the most recently parked last (woken first: its cache
    /// is warm).
    idle: Vec<Arc<Parker>>,
    /// Parked threads that wait for a future inside user code (or outside the
    /// pool) and can poll the reactor (and, pool workers, run tasks) for the
    /// pool when no worker can.
    helpers: Vec<Arc<Parker>>,
    polling: Polling,
    shutdown: bool,
}

/// Who is (about to be) blocked in the reactor's poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Polling {
    No,
    /// A free worker: new work wakes it out of the poll.
    Worker,
    /// A thread waiting inside user code or outside the pool (`wait_for_wake`).
    Helper,
    /// Whoever polls has been told to come back, and is on its way.
    Interrupted,
}

impl State {
    fn new() -> State {
        State {
            tasks: VecDeque::new(),
            fresh: VecDeque::new(),
            turn: 0,
            jobs: VecDeque::new(),
            workers: 0,
            idle: Vec::new(),
            helpers: Vec::new(),
            polling: Polling::No,
            shutdown: false,
        }
    }

    fn queued(&self) -> bool {
        !self.tasks.is_empty() || !self.fresh.is_empty() || !self.jobs.is_empty()
    }
}

enum Runnable {
    Task(Arc<Task>),
    Job(Job),
}

/// What a pool worker knows about itself.
struct Context {
    shared: Arc<Shared>,
    /// Inside user code: work must not be queued behind this thread (it may
    /// block for a long time), and user code must not nest.
    in_user: Cell<bool>,
    lifo: RefCell<Option<Runnable>>,
    /// While this thread dispatches reactor events or polls a body: the work
    /// that woke, queued together afterwards (or run here).
    batch: RefCell<Option<Vec<Runnable>>>,
    /// Set while a task is being polled.
    in_task: Cell<bool>,
}

#[cfg(not(astra_loom))]
thread_local! {
    static CONTEXT: std::cell::OnceCell<Context> = const { std::cell::OnceCell::new() };
}
#[cfg(astra_loom)]
loom::thread_local! {
    static CONTEXT: std::cell::OnceCell<Context> = std::cell::OnceCell::new();
}

/// Runs `f` with this thread's worker context, if it is a worker.
fn with_context<R>(f: impl FnOnce(Option<&Context>) -> R) -> R {
    CONTEXT.with(|cell| f(cell.get()))
}

impl Pool {
    /// Creates the pool. No thread starts until there is work: the first
    /// queued task starts a worker.
    pub(crate) fn new(reactor: Reactor, config: PoolConfig) -> Pool {
        Pool(Arc::new(Shared {
            reactor,
            config,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            state: Mutex::new(State::new()),
            exited: Condvar::new(),
            in_user: AtomicUsize::new(0),
            workers: AtomicUsize::new(0),
            idle: AtomicUsize::new(0),
            worker_in_poll: AtomicBool::new(false),
            standing_aside: AtomicUsize::new(0),
        }))
    }

    pub(crate) fn reactor(&self) -> &Reactor {
        &self.0.reactor
    }

    /// A handle that does not keep the pool alive, for its counts.
    #[cfg(not(astra_loom))]
    pub(crate) fn downgrade(&self) -> PoolRef {
        PoolRef(std::sync::Arc::downgrade(&self.0))
    }

    /// Spawns a future as a task.
    pub(crate) fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.push_task(Task::new(future, self.clone()));
    }

    /// Queues a woken task: in this worker's LIFO slot when called from a worker
    /// that is not inside user code nor polling a task, otherwise on the shared
    /// queue.
    pub(crate) fn push_task(&self, task: Arc<Task>) {
        self.push_local_or_global(Runnable::Task(task), false);
    }

    /// Queues a task behind all other queued work.
    pub(crate) fn push_task_fair(&self, task: Arc<Task>) {
        self.push_global(Runnable::Task(task));
    }

    /// Runs user code `f` and resolves to its result, or to the panic it
    /// raised. This is the one way user code runs in the pool.
    ///
    /// Where it runs is the pool's choice. With `may_inline` (nothing needs
    /// the calling task while `f` runs), on a worker not already inside user
    /// code, it runs right here and the future is ready at once: no queue, no
    /// second poll. Otherwise it is a job, in this worker's LIFO slot if it
    /// can take one (run as soon as the calling task yields), else on the
    /// shared queue. Either way the thread that runs `f` is inside user code
    /// meanwhile (see the module docs).
    pub(crate) fn call_user<T, F>(&self, may_inline: bool, f: F) -> UserCall<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        if may_inline && self.runs_inline() {
            return UserCall::Ready(Some(call_inline(f)));
        }
        let slot: Arc<Mutex<CallSlot<T>>> = Arc::new(Mutex::new(CallSlot::default()));
        let job_slot = slot.clone();
        let job = Box::new(move || {
            let output = user_section(|| catch_unwind(AssertUnwindSafe(f)));
            let waker = {
                let mut slot = sync::lock(&job_slot);
                slot.output = Some(output);
                slot.waker.take()
            };
            if let Some(waker) = waker {
                waker.wake();
            }
        });
        self.push_local_or_global(Runnable::Job(job), true);
        UserCall::Queued(slot)
    }

    /// Whether `call_user(true, ..)` would run its code inline: on one of this
    /// pool's workers, outside user code.
    pub(crate) fn runs_inline(&self) -> bool {
        with_context(|cx| {
            cx.is_some_and(|cx| Arc::ptr_eq(&cx.shared, &self.0) && !cx.in_user.get())
        })
    }

    /// Blocks the calling thread, which is not a pool worker, until `future`
    /// completes. While no worker can, the thread runs the pool's tasks and
    /// polls the reactor itself, so the future's I/O makes progress even in a
    /// pool with no worker at all; otherwise it sleeps until the future's
    /// waker fires. Nothing wakes it periodically.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn block_on<F: Future>(&self, future: F) -> F::Output {
        match super::park::block_on_timeout(future, None, Some(self)) {
            Some(output) => output,
            None => unreachable!("no timeout was given"),
        }
    }

    /// Makes sure some thread polls the reactor soon: a timer was set while
    /// nobody was blocked in it. Cheap when a free worker is awake (it polls
    /// once it runs out of tasks).
    pub(crate) fn ensure_poller(&self) {
        let shared = &self.0;
        let mut state = shared.lock();
        if state.polling != Polling::No || shared.free_awake(&state) > 0 {
            return;
        }
        let start = shared.find_runner(&mut state, true);
        shared.unlock_then_start(state, start);
    }

    /// Stops the pool's threads once they have nothing left to do, and waits
    /// up to `wait` for them to exit. Returns how many are still running (in
    /// user code that has not returned).
    pub(crate) fn shutdown(&self, wait: Duration) -> usize {
        let shared = &self.0;
        let mut state = shared.lock();
        state.shutdown = true;
        for parker in state.idle.drain(..) {
            parker.unpark();
        }
        shared.publish(&state);
        shared.reactor.wake_driver();
        let deadline = Instant::now() + wait;
        while state.workers > 0 {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            state = sync::wait(&shared.exited, state, Some(left));
        }
        state.workers
    }

    /// Queues work in the current worker's LIFO slot (run next) when it can
    /// take it, otherwise on the shared queue. A task woken by another task
    /// goes to the shared queue, behind what is already there: HTTP/2 streams
    /// then all finish before their connection task runs again and writes their
    /// responses in one go (one `writev` for a whole batch, not one each).
    fn push_local_or_global(&self, runnable: Runnable, always_lifo: bool) {
        let displaced = with_context(|cx| match cx {
            Some(cx) if Arc::ptr_eq(&cx.shared, &self.0) => {
                // Captured by a reactor turn or by a handler about to wait
                // (`poll_and_help`), even inside user code.
                if let Some(batch) = cx.batch.borrow_mut().as_mut() {
                    batch.push(runnable);
                    return None;
                }
                if cx.in_user.get() || (cx.in_task.get() && !always_lifo) {
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
        self.push_all(batch, false);
    }

    /// Queues what a poll between tasks woke (`POLL_EVERY`): tasks on the
    /// fresh queue while it has room.
    fn push_fresh(&self, batch: Vec<Runnable>) {
        if batch.is_empty() {
            return;
        }
        self.push_all(batch.into_iter(), true);
    }

    /// Queues `batch` under one lock and tells one other thread.
    fn push_all(&self, batch: impl Iterator<Item = Runnable>, fresh: bool) {
        let shared = &self.0;
        let mut state = shared.lock();
        let mut any = None;
        for runnable in batch {
            let is_task = state.enqueue(runnable, fresh);
            any = Some(any.unwrap_or(false) || is_task);
        }
        let start = any.is_some_and(|is_task| shared.find_runner(&mut state, is_task));
        shared.unlock_then_start(state, start);
    }

    fn push_global(&self, runnable: Runnable) {
        let shared = &self.0;
        let mut state = shared.lock();
        let is_task = state.enqueue(runnable, false);
        let start = shared.find_runner(&mut state, is_task);
        shared.unlock_then_start(state, start);
    }

    #[cfg(test)]
    fn snapshot(&self) -> (usize, usize, usize) {
        let state = self.0.lock();
        let in_user = self.0.in_user.load(Ordering::SeqCst);
        (state.workers, in_user, state.idle.len())
    }
}

impl State {
    /// Appends to the matching queue (a task to `fresh` if asked and there
    /// is room); returns whether it was a task.
    fn enqueue(&mut self, runnable: Runnable, fresh: bool) -> bool {
        match runnable {
            Runnable::Task(task) => {
                if fresh && self.fresh.len() < FRESH_CAP {
                    self.fresh.push_back(task);
                } else {
                    self.tasks.push_back(task);
                }
                true
            }
            Runnable::Job(job) => {
                self.jobs.push_back(job);
                false
            }
        }
    }

    /// Takes queued work: a task or a job, whichever `prefer_jobs` says first.
    fn pop(&mut self, prefer_jobs: bool) -> Option<Runnable> {
        if prefer_jobs {
            if let Some(job) = self.jobs.pop_front() {
                return Some(Runnable::Job(job));
            }
        }
        if let Some(task) = self.pop_task() {
            return Some(Runnable::Task(task));
        }
        self.jobs.pop_front().map(Runnable::Job)
    }

    /// Takes a task, from `fresh` and `tasks` in turn while both hold some.
    fn pop_task(&mut self) -> Option<Arc<Task>> {
        let fresh_turn = self.turn < FRESH_TURNS;
        self.turn = (self.turn + 1) % (FRESH_TURNS + 1);
        let (first, second) = if fresh_turn {
            (&mut self.fresh, &mut self.tasks)
        } else {
            (&mut self.tasks, &mut self.fresh)
        };
        first.pop_front().or_else(|| second.pop_front())
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        sync::lock(&self.state)
    }

    /// Workers that are neither inside user code nor parked: running tasks,
    /// polling, or just woken.
    fn free_awake(&self, state: &State) -> usize {
        // A worker inside user code is live and not parked, so this does not
        // underflow; `in_user` may move meanwhile, within those bounds.
        state
            .workers
            .saturating_sub(state.idle.len() + self.in_user.load(Ordering::SeqCst))
    }

    /// Copies the counts `enter_user` reads without the lock; called under
    /// it after each change.
    fn publish(&self, state: &State) {
        self.workers.store(state.workers, Ordering::SeqCst);
        self.idle.store(state.idle.len(), Ordering::SeqCst);
    }

    fn pop_idle(&self, state: &mut State) -> Option<Arc<Parker>> {
        let parker = state.idle.pop()?;
        self.publish(state);
        Some(parker)
    }

    /// Work was just queued: makes sure some thread will run it, cheapest way
    /// first. Returns true if the caller must start a worker (after unlocking).
    fn find_runner(&self, state: &mut State, is_task: bool) -> bool {
        if self.free_awake(state) < self.cpus {
            if let Some(parker) = self.pop_idle(state) {
                parker.unpark();
                return false;
            }
        }
        if state.polling == Polling::Worker {
            state.polling = Polling::Interrupted;
            self.reactor.wake_driver();
            return false;
        }
        if self.free_awake(state) > 0 {
            // A worker is running a task and returns to the queue afterwards.
            return false;
        }
        self.grow(state, is_task)
    }

    /// The current worker has just entered user code (or a helper goes back
    /// to it): if no other worker is free and awake, the I/O role and the
    /// queued work pass on at once. Returns true if the caller must start a
    /// worker (after unlocking).
    fn hand_off(&self, state: &mut State) -> bool {
        if self.free_awake(state) > 0 || state.shutdown {
            return false;
        }
        if let Some(parker) = self.pop_idle(state) {
            parker.unpark();
            return false;
        }
        if state.polling != Polling::No && !state.queued() {
            // A helper polls, and there is nothing else to do.
            return false;
        }
        self.grow(state, true)
    }

    /// No worker is free and awake: count in a new one (the caller starts it)
    /// or, at `max_workers`, wake a helper for a task.
    fn grow(&self, state: &mut State, is_task: bool) -> bool {
        if state.workers < self.config.max_workers {
            state.workers += 1;
            self.publish(state);
            return true;
        }
        if is_task {
            if state.polling == Polling::Helper {
                state.polling = Polling::Interrupted;
                self.reactor.wake_driver();
            } else if let Some(parker) = state.helpers.pop() {
                parker.unpark();
            }
        }
        false
    }

    /// Releases the lock, then starts the worker `grow` counted in, if it
    /// did: threads are started outside the lock.
    fn unlock_then_start(self: &Arc<Self>, state: MutexGuard<'_, State>, start: bool) {
        drop(state);
        if start {
            self.start_worker();
        }
    }

    /// `hand_off` under the lock, starting a worker if it asks for one.
    fn hand_off_now(self: &Arc<Self>) {
        let mut state = self.lock();
        let start = self.hand_off(&mut state);
        self.unlock_then_start(state, start);
    }

    /// Starts a worker already counted in `workers` (by `grow`).
    fn start_worker(self: &Arc<Self>) {
        let shared = self.clone();
        let spawned = thread::Builder::new()
            .name("astra-worker".into())
            .spawn(move || worker_main(shared));
        if let Err(err) = spawned {
            log::error!("could not start a worker thread: {err}");
            let mut state = self.lock();
            state.workers -= 1;
            self.publish(&state);
            self.exited.notify_all();
        }
    }

    /// Counts the current worker into user code, handing its roles on.
    fn enter_user(self: &Arc<Self>) {
        let in_user = self.in_user.fetch_add(1, Ordering::SeqCst) + 1;
        // Fast path: another worker is free and awake. It cannot park
        // without leaving a poller behind (a worker parks only while another
        // thread polls), and of two workers entering at once the second to
        // count itself sees the first's count too: they cannot both take the
        // other for the free one.
        let workers = self.workers.load(Ordering::SeqCst);
        let idle = self.idle.load(Ordering::SeqCst);
        if workers > in_user + idle {
            return;
        }
        self.hand_off_now();
    }

    fn exit_user(&self) {
        self.in_user.fetch_sub(1, Ordering::SeqCst);
    }

    /// Whether the caller (a free worker) should yield its CPU: another free
    /// worker can run and is not itself standing aside. From the counts kept
    /// without the lock: a moment's view, used only to decide on a yield.
    fn others_waiting(&self) -> bool {
        let runnable = free_runnable(
            self.workers.load(Ordering::Relaxed),
            self.idle.load(Ordering::Relaxed),
            self.in_user.load(Ordering::Relaxed),
            self.worker_in_poll.load(Ordering::Relaxed),
        );
        should_yield(runnable, self.standing_aside.load(Ordering::Relaxed))
    }

    /// One step of waiting for `parker` to be unparked (or `deadline`), for a
    /// thread that waits inside user code (a worker) or outside the pool. If
    /// no worker is free to do it, the thread does the pool's work meanwhile:
    /// runs one queued task (tasks never block), or polls the reactor until
    /// its own wake-up or an event. Otherwise it parks, listed as a helper
    /// that `grow` can wake. Returns false once `deadline` has passed; true
    /// means "poll your future again".
    ///
    /// `holds_role` says whether the thread's last step was a turn of the
    /// reactor: it may be the only thread that would poll, so it must hand
    /// that role on whenever it stops waiting, however it stops (its
    /// future ready, its deadline, a panic). [`Waiter`]'s drop does that.
    fn wait_once(
        self: &Arc<Self>,
        parker: &Arc<Parker>,
        deadline: Option<Instant>,
        holds_role: &mut bool,
    ) -> bool {
        if deadline.is_some_and(|d| sync::now() >= d) {
            // One last poll if a wake-up came in at the very end.
            return parker.take();
        }
        let mut state = self.lock();
        let nobody_else = self.free_awake(&state) == 0;
        if nobody_else {
            if let Some(task) = state.pop_task() {
                drop(state);
                run_for_pool(self, Runnable::Task(task));
                return true;
            }
        }
        if nobody_else && state.polling == Polling::No {
            if let Some(mut driver) = self.reactor.try_driver() {
                let pool = Pool(self.clone());
                if !parker.start_polling(&pool) {
                    return true;
                }
                state.polling = Polling::Helper;
                drop(state);
                *holds_role = true;
                let timeout = deadline.map(|d| d.saturating_duration_since(sync::now()));
                let mut role = PollerRole::helper(self, parker);
                let woken = turn_collecting(&self.reactor, &mut driver, timeout, || role.release());
                drop(driver);
                for runnable in woken {
                    run_for_pool(self, runnable);
                }
                return true;
            }
        }
        state.helpers.push(parker.clone());
        drop(state);
        // Whoever polls now, it is not this thread.
        *holds_role = false;
        let woken = parker.park(deadline);
        let mut state = self.lock();
        if let Some(at) = state.helpers.iter().position(|p| Arc::ptr_eq(p, parker)) {
            state.helpers.swap_remove(at);
        }
        drop(state);
        // Woken by the future's waker or by the pool (a helper wanted): the
        // caller polls its future again and, if it is still pending, comes
        // back here, where the pool's work is looked at before any sleep.
        woken || deadline.is_none_or(|d| sync::now() < d)
    }
}

/// Who holds the reactor's poll, as `State::polling` records it: released
/// by the turn right after its poll returns, or, if a panic comes first, by
/// the drop, so that the record can never outlive the poll and keep every
/// other thread from polling.
struct PollerRole<'a> {
    shared: &'a Shared,
    /// The helper's parker, whose unpark interrupts the poll meanwhile;
    /// `None` for a free worker.
    helper: Option<&'a Parker>,
    released: bool,
}

impl<'a> PollerRole<'a> {
    fn worker(shared: &'a Shared) -> PollerRole<'a> {
        PollerRole {
            shared,
            helper: None,
            released: false,
        }
    }

    fn helper(shared: &'a Shared, parker: &'a Parker) -> PollerRole<'a> {
        PollerRole {
            shared,
            helper: Some(parker),
            released: false,
        }
    }

    fn release(&mut self) {
        if std::mem::replace(&mut self.released, true) {
            return;
        }
        match self.helper {
            Some(parker) => parker.stop_polling(),
            None => self.shared.worker_in_poll.store(false, Ordering::Relaxed),
        }
        self.shared.lock().polling = Polling::No;
    }
}

impl Drop for PollerRole<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

/// A thread's wait for its future's wake-ups (see `park::block_on_timeout`):
/// the steps of [`Shared::wait_once`] when it helps a pool, a plain park
/// otherwise. Dropping it, however the wait ends, hands the reactor on if
/// this thread was the last to poll it: a thread that goes back to user
/// code (or out of the pool) must not take the I/O role with it.
pub(crate) struct Waiter {
    parker: Arc<Parker>,
    helping: Option<Arc<Shared>>,
    holds_role: bool,
}

impl Waiter {
    /// A worker inside user code helps its pool while it waits, and so does
    /// any other thread that names the `pool` it waits on; a thread that
    /// names none just parks.
    pub(crate) fn new(parker: Arc<Parker>, pool: Option<&Pool>) -> Waiter {
        let helping =
            with_context(|cx| cx.filter(|cx| cx.in_user.get()).map(|cx| cx.shared.clone()))
                .or_else(|| pool.map(|pool| pool.0.clone()));
        Waiter {
            parker,
            helping,
            holds_role: false,
        }
    }

    /// Waits until the parker is unparked or `deadline` passes (then returns
    /// false).
    pub(crate) fn wait(&mut self, deadline: Option<Instant>) -> bool {
        match &self.helping {
            Some(shared) => shared.wait_once(&self.parker, deadline, &mut self.holds_role),
            None => self.parker.park(deadline),
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if let (true, Some(shared)) = (self.holds_role, &self.helping) {
            shared.hand_off_now();
        }
    }
}

/// Free workers that can run now: live ones less those parked, inside user
/// code, or blocked in the reactor's poll. The counts are read one by one
/// without the lock, so this saturates instead of underflowing.
fn free_runnable(workers: usize, idle: usize, in_user: usize, worker_in_poll: bool) -> usize {
    workers.saturating_sub(idle + in_user + usize::from(worker_in_poll))
}

/// Whether one of `runnable` free workers (the caller among them) should
/// yield, `standing_aside` of them being inside their own yield. Those hold
/// nothing (a worker yields only between runs, its LIFO slot empty), so
/// giving them the CPU helps nobody: on one CPU, two free workers used to
/// hand it back and forth every few runs (0.07 switches per pinned hello
/// request against 0.017 with this rule). A worker the kernel preempted
/// mid-run is not standing aside, and gets the CPU back within a turn.
fn should_yield(runnable: usize, standing_aside: usize) -> bool {
    runnable > 1 + standing_aside
}

/// What `Pool::call_user` resolves to: the user code's result, or its panic.
pub(crate) enum UserCall<T> {
    /// Ran inline; `None` once taken.
    Ready(Option<std::thread::Result<T>>),
    /// Runs as a job and leaves its result here.
    Queued(Arc<Mutex<CallSlot<T>>>),
}

pub(crate) struct CallSlot<T> {
    output: Option<std::thread::Result<T>>,
    waker: Option<Waker>,
}

impl<T> Default for CallSlot<T> {
    fn default() -> Self {
        CallSlot {
            output: None,
            waker: None,
        }
    }
}

impl<T> Future for UserCall<T> {
    type Output = std::thread::Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        // Neither variant is structurally pinned.
        let this = Pin::into_inner(self);
        match this {
            UserCall::Ready(output) => match output.take() {
                Some(output) => Poll::Ready(output),
                None => Poll::Pending,
            },
            UserCall::Queued(slot) => {
                let mut slot = sync::lock(slot);
                if let Some(output) = slot.output.take() {
                    return Poll::Ready(output);
                }
                match &mut slot.waker {
                    Some(waker) if waker.will_wake(cx.waker()) => {}
                    waker => *waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        }
    }
}

impl<T> Unpin for UserCall<T> {}

/// Runs a task or a job. Neither lets a panic out: a task catches its
/// future's, a job its user code's (`call_user`); what is caught here came
/// from around them (a `log` backend that panics while a panic is being
/// reported, say), and must not end the thread the pool counts on.
fn run(runnable: Runnable) {
    let escaped = match runnable {
        Runnable::Task(task) => {
            set_in_task(true);
            let outcome = catch_unwind(AssertUnwindSafe(|| task.run()));
            set_in_task(false);
            outcome.is_err()
        }
        Runnable::Job(job) => catch_unwind(AssertUnwindSafe(job)).is_err(),
    };
    if escaped {
        // Reporting it may panic again, for the same reason.
        let _ = catch_unwind(|| log::error!("a panic escaped a task or a job"));
    }
}

/// What a thread that waits (`Shared::wait_once`) does with work it took
/// for the pool: runs a task, which never blocks, and queues a job, since
/// the thread is inside user code or outside the pool and user code neither
/// nests nor leaves the pool's workers. While a thread outside the pool
/// runs the task, user code the task starts goes to the pool too (see
/// [`call_user_here`]).
fn run_for_pool(shared: &Arc<Shared>, runnable: Runnable) {
    match runnable {
        Runnable::Task(_) => {
            let _helping = HelpingMark::set(shared);
            run(runnable);
        }
        Runnable::Job(_) => Pool(shared.clone()).push_global(runnable),
    }
}

#[cfg(not(astra_loom))]
thread_local! {
    /// On a thread outside the pool, while it runs one of the pool's tasks:
    /// that pool.
    static HELPING: RefCell<Option<Arc<Shared>>> = const { RefCell::new(None) };
}
#[cfg(astra_loom)]
loom::thread_local! {
    static HELPING: RefCell<Option<Arc<Shared>>> = RefCell::new(None);
}

/// Marks the current thread, if it is not a worker, as running `shared`'s
/// task until dropped (on unwind too).
struct HelpingMark(bool);

impl HelpingMark {
    fn set(shared: &Arc<Shared>) -> HelpingMark {
        if with_context(|cx| cx.is_some()) {
            return HelpingMark(false);
        }
        HELPING.with(|helping| *helping.borrow_mut() = Some(shared.clone()));
        HelpingMark(true)
    }
}

impl Drop for HelpingMark {
    fn drop(&mut self) {
        if self.0 {
            HELPING.with(|helping| helping.borrow_mut().take());
        }
    }
}

fn enter(shared: &Arc<Shared>) {
    with_context(|cx| debug_assert!(cx.is_none(), "a thread serves one pool"));
    CONTEXT.with(|cell| {
        let _ = cell.set(Context {
            shared: shared.clone(),
            in_user: Cell::new(false),
            lifo: RefCell::new(None),
            batch: RefCell::new(None),
            in_task: Cell::new(false),
        });
    });
}

/// One reactor turn (see `Reactor::turn`) with the work it wakes collected
/// on this thread instead of queued one by one; returns that work.
fn turn_collecting(
    reactor: &Reactor,
    driver: &mut Driver,
    timeout: Option<Duration>,
    after_poll: impl FnOnce(),
) -> Vec<Runnable> {
    collecting(|| reactor.turn(driver, timeout, after_poll)).1
}

/// Runs `f` with the work it wakes collected on this thread (a worker's
/// `Context::batch`) instead of queued one by one; returns `f`'s output and
/// that work. A capture already under way is put back afterwards. If `f`
/// panics, the capture ends all the same and what it took is queued: a task
/// marked scheduled must reach a queue, or no later wake-up runs it again.
/// Off the pool, `f` just runs and wakes queue their work as usual.
fn collecting<R>(f: impl FnOnce() -> R) -> (R, Vec<Runnable>) {
    let Some((shared, outer)) = with_context(|cx| {
        let cx = cx?;
        let outer = cx.batch.borrow_mut().replace(Vec::new());
        Some((cx.shared.clone(), outer))
    }) else {
        return (f(), Vec::new());
    };
    let mut capture = Capture {
        shared,
        outer: Some(outer),
    };
    let output = f();
    (output, capture.end())
}

/// A capture of woken work under way; see [`collecting`].
struct Capture {
    shared: Arc<Shared>,
    /// The capture it replaced; `None` once ended.
    outer: Option<Option<Vec<Runnable>>>,
}

impl Capture {
    fn end(&mut self) -> Vec<Runnable> {
        let Some(outer) = self.outer.take() else {
            return Vec::new();
        };
        with_context(|cx| {
            cx.and_then(|cx| std::mem::replace(&mut *cx.batch.borrow_mut(), outer))
                .unwrap_or_default()
        })
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        // Only when `f` unwound: otherwise `end` ran.
        let woken = self.end();
        if !woken.is_empty() {
            Pool(self.shared.clone()).push_all(woken.into_iter(), false);
        }
    }
}

fn set_in_task(value: bool) {
    with_context(|cx| {
        if let Some(cx) = cx {
            cx.in_task.set(value);
        }
    });
}

fn take_lifo() -> Option<Runnable> {
    with_context(|cx| cx.and_then(|cx| cx.lifo.borrow_mut().take()))
}

fn lifo_is_empty() -> bool {
    with_context(|cx| cx.is_none_or(|cx| cx.lifo.borrow().is_none()))
}

fn worker_main(shared: Arc<Shared>) {
    let parker = Parker::new();
    enter(&shared);
    let _unwinding = WorkerUnwind {
        shared: &shared,
        parker: &parker,
    };
    // Alternate between the two queues so neither starves the other.
    let mut prefer_jobs = false;
    let mut lifo_streak = 0;
    // Passes since the last yield check; a check that falls due while the
    // LIFO slot holds work waits for the first pass without.
    let mut passes_unchecked: u32 = 0;
    // Tasks taken from the queue since this worker last polled the reactor.
    let mut taken_since_poll: u32 = 0;
    loop {
        passes_unchecked = passes_unchecked.saturating_add(1);
        if passes_unchecked >= YIELD_CHECK_EVERY && lifo_is_empty() {
            passes_unchecked = 0;
            if shared.others_waiting() {
                // Another free worker can carry on, so this CPU can go to
                // whatever waits for it: a client, a handler back from its
                // sleep, another of our workers. Without this they wait for
                // the kernel's time slice (up to a 4 ms tick), and what a
                // descheduled worker holds (events it took, a task it polls)
                // waits as long: that was the tail of fast requests beside
                // blocked handlers. With nothing else runnable here a yield
                // returns at once; it is never a wake-up.
                shared.standing_aside.fetch_add(1, Ordering::Relaxed);
                thread::yield_now();
                shared.standing_aside.fetch_sub(1, Ordering::Relaxed);
            }
        }
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
        if let Some(runnable) = state.pop(prefer_jobs) {
            taken_since_poll += 1;
            let poll_now =
                taken_since_poll >= POLL_EVERY && state.queued() && state.polling == Polling::No;
            let driver = if poll_now {
                taken_since_poll = 0;
                shared.reactor.try_driver()
            } else {
                None
            };
            drop(state);
            if let Some(mut driver) = driver {
                // Never waits, and returns to this loop: nobody counts on
                // this worker being in the poll, as after a blocking one.
                let woken =
                    turn_collecting(&shared.reactor, &mut driver, Some(Duration::ZERO), || {});
                drop(driver);
                Pool(shared.clone()).push_fresh(woken);
            }
            run(runnable);
            continue;
        }
        if state.shutdown {
            state.workers -= 1;
            shared.publish(&state);
            shared.exited.notify_all();
            return;
        }
        if state.polling == Polling::No {
            if let Some(mut driver) = shared.reactor.try_driver() {
                state.polling = Polling::Worker;
                shared.worker_in_poll.store(true, Ordering::Relaxed);
                drop(state);
                taken_since_poll = 0;
                let mut role = PollerRole::worker(&shared);
                let woken = turn_collecting(&shared.reactor, &mut driver, None, || role.release());
                drop(driver);
                Pool(shared.clone()).push_batch(woken);
                continue;
            }
        }
        state.idle.push(parker.clone());
        shared.publish(&state);
        drop(state);
        let deadline = shared.config.keep_alive.map(|k| Instant::now() + k);
        if parker.park(deadline) {
            continue;
        }
        let mut state = shared.lock();
        let Some(at) = state.idle.iter().position(|p| Arc::ptr_eq(p, &parker)) else {
            // Woken (taken off the list) just as the wait timed out.
            parker.take();
            continue;
        };
        state.idle.remove(at);
        shared.publish(&state);
        // An idle worker leaves, but one always stays to poll the reactor.
        if state.workers > 1 && !state.queued() && !state.shutdown {
            state.workers -= 1;
            shared.publish(&state);
            shared.exited.notify_all();
            return;
        }
    }
}

/// Counts a worker out if a panic ends its thread: tasks and jobs catch
/// their own (see [`run`]), so this is for the pool's own code, a reactor
/// turn say. The pool must not go on counting a thread that is gone, nor
/// lose the I/O role with it: another worker takes over, as at any hand-off.
struct WorkerUnwind<'a> {
    shared: &'a Arc<Shared>,
    parker: &'a Arc<Parker>,
}

impl Drop for WorkerUnwind<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let shared = self.shared;
        let mut state = shared.lock();
        if let Some(at) = state.idle.iter().position(|p| Arc::ptr_eq(p, self.parker)) {
            state.idle.remove(at);
        }
        state.workers -= 1;
        shared.publish(&state);
        shared.exited.notify_all();
        let start = shared.hand_off(&mut state);
        shared.unlock_then_start(state, start);
    }
}

/// Runs `poll` (a handler polling its request body) with the tasks it wakes
/// captured, then runs those tasks right here.
///
/// The task a waiting handler wakes is the connection that feeds its body;
/// running it on this thread, instead of queueing it for another thread and
/// sleeping until that one answers, saves two cross-thread wake-ups per chunk.
/// Tasks never block, so the handler waits no longer for it. Captured jobs
/// (user code) are queued as usual: user code must not nest.
pub(crate) fn poll_and_help<T>(poll: impl FnOnce() -> T) -> T {
    let (output, woken) = collecting(poll);
    if !woken.is_empty() {
        let shared = with_context(|cx| cx.map(|cx| cx.shared.clone()))
            .expect("only a worker collects what it wakes");
        for runnable in woken {
            run_for_pool(&shared, runnable);
        }
    }
    output
}

/// [`Pool::call_user`] on the current worker's pool, inlining allowed; on a
/// thread outside the pool that runs one of its tasks, queued for a worker;
/// on a user's own thread polling a body of its own, `f` just runs here.
pub(crate) fn call_user_here<T, F>(f: F) -> UserCall<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    if let Some(pool) = with_context(|cx| cx.map(|cx| Pool(cx.shared.clone()))) {
        return pool.call_user(true, f);
    }
    // A thread outside the pool that runs one of its tasks while it waits:
    // the task's user code is the pool's to run, on a worker.
    if let Some(shared) = HELPING.with(|helping| helping.borrow().clone()) {
        return Pool(shared).call_user(false, f);
    }
    UserCall::Ready(Some(catch_unwind(AssertUnwindSafe(f))))
}

/// Runs user code on this thread, as `call_user` does where
/// [`Pool::runs_inline`] holds, catching its panic. A caller with large
/// arguments passes a closure over references to them: what the closure
/// captures is copied on its way into `catch_unwind`.
pub(crate) fn call_inline<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    user_section(|| catch_unwind(AssertUnwindSafe(f)))
}

/// Runs `f`, user code that may block for a long time, counting the current
/// worker as inside user code meanwhile (see the module docs). Outside a
/// worker, or nested, just runs `f`.
pub(crate) fn user_section<R>(f: impl FnOnce() -> R) -> R {
    let shared = with_context(|cx| match cx {
        Some(cx) if !cx.in_user.get() => {
            cx.in_user.set(true);
            Some(cx.shared.clone())
        }
        _ => None,
    });
    let Some(shared) = shared else {
        return f();
    };
    shared.enter_user();
    struct Exit(Arc<Shared>);
    impl Drop for Exit {
        fn drop(&mut self) {
            self.0.exit_user();
            with_context(|cx| {
                if let Some(cx) = cx {
                    cx.in_user.set(false);
                }
            });
        }
    }
    let _exit = Exit(shared);
    f()
}

#[cfg(all(test, not(astra_loom)))]
mod tests {
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
        let (mut ours, mut theirs) = mio::net::UnixStream::pair().unwrap();
        let (token, io) = pool.reactor().register(&mut ours).unwrap();
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
        pool.reactor().deregister(&mut ours, token);

        // Another socket's event still runs its task.
        let (mut ours, mut theirs) = mio::net::UnixStream::pair().unwrap();
        let (token, io) = pool.reactor().register(&mut ours).unwrap();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (waiting_tx, waiting_rx) = mpsc::channel();
        pool.spawn(async move {
            let mut told = false;
            std::future::poll_fn(|cx| loop {
                match io.poll_ready(cx, READABLE) {
                    Poll::Pending => {
                        if !told {
                            told = true;
                            waiting_tx.send(()).unwrap();
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(tick) => match std::io::Read::read(&mut ours, &mut [0; 1]) {
                        Ok(_) => return Poll::Ready(()),
                        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                            io.clear(READABLE, tick);
                        }
                        Err(err) => panic!("read failed: {err}"),
                    },
                }
            })
            .await;
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
        let task = || Task::new(async {}, pool.clone());
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
        let expected: Vec<&Arc<Task>> = vec![
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
        use super::super::reactor::READABLE;
        use std::io::{Read, Write};

        const BACKLOG: usize = 200;
        const EVENT: usize = usize::MAX;
        let pool = pool(1);
        let (mut ours, mut theirs) = mio::net::UnixStream::pair().unwrap();
        let (token, io) = pool.reactor().register(&mut ours).unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));

        // A task waiting for a byte on `ours`.
        let (waiting_tx, waiting_rx) = mpsc::channel();
        let task_pool = pool.clone();
        let task_order = order.clone();
        pool.spawn(async move {
            let mut told = false;
            std::future::poll_fn(|cx| loop {
                match io.poll_ready(cx, READABLE) {
                    Poll::Pending => {
                        if !told {
                            told = true;
                            waiting_tx.send(()).unwrap();
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(tick) => match ours.read(&mut [0; 1]) {
                        Ok(_) => return Poll::Ready(()),
                        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                            io.clear(READABLE, tick);
                        }
                        Err(err) => panic!("read failed: {err}"),
                    },
                }
            })
            .await;
            task_pool.reactor().deregister(&mut ours, token);
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
}
