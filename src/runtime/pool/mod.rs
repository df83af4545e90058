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
//! `user_section`'s start to its end (a handler, a response-body read);
//! entering it while no other worker is free and awake hands the role on at
//! once: to a parked worker, else to a new one (started outside the lock), else,
//! at `max_workers`, to a handler that is waiting for its request body, which
//! runs connection tasks and polls the reactor while it waits (see
//! [`Waiter`]). So the pool grows only because handlers are inside user
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
use super::sync::{self, thread, Arc, AtomicU8, AtomicUsize, Condvar, Mutex, MutexGuard, Ordering};
use super::task::{Task, TaskRef};

mod handoff;
mod queue;
#[cfg(all(test, not(astra_loom)))]
mod tests;
mod user;
mod worker;

pub(crate) use handoff::Waiter;
use handoff::*;
use user::CallJob;
pub(crate) use user::{call_user_here, poll_and_help, QueuedCall, UserCall};
use worker::*;

/// A unit of work that runs user code (a handler call, a body read): a
/// queued call, which leaves its output in the same allocation.
pub(crate) type Job = Arc<dyn RunJob>;

/// What a worker does with a [`Job`].
pub(crate) trait RunJob: Send + Sync {
    /// Runs the user code and leaves its output for the caller; once (a
    /// second call does nothing).
    fn run(&self);
}

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

    /// Live workers, threads inside user code but for those that run apart
    /// (`call_user_apart`), and queued work; `None` once the pool is gone.
    pub(crate) fn gauges(&self) -> Option<(usize, usize, usize)> {
        let shared = self.0.upgrade()?;
        let queued = {
            let state = shared.lock();
            state.tasks.len() + state.fresh.len() + state.jobs.len()
        };
        // Blocking upgrades' continuations run apart, for as long as their
        // connections last: not handlers.
        let in_user = shared.in_user.load(Ordering::Relaxed);
        let apart = shared.apart.load(Ordering::Relaxed);
        Some((
            shared.workers.load(Ordering::Relaxed),
            in_user.saturating_sub(apart),
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
    /// Who is (about to be) blocked in the reactor's poll, a [`Polling`]:
    /// written under the state's lock, so read under it for decisions, and
    /// read without it where a moment's view will do (`others_waiting`).
    polling: AtomicU8,
    /// Free workers inside their yield (`worker_main`): runnable but holding
    /// nothing, so no other worker needs to yield for them.
    standing_aside: AtomicUsize,
    /// Calls of [`Pool::call_user_apart`] queued or running: the pool may
    /// have this many workers beyond `max_workers`.
    apart: AtomicUsize,
}

struct State {
    tasks: VecDeque<TaskRef>,
    /// Tasks woken by events that came in while the queue was being worked
    /// through (`POLL_EVERY`). They take turns with `tasks`: a connection
    /// whose next request has just arrived is served while its socket and
    /// buffers are still in this core's cache (the last response went out
    /// moments ago), and the queue behind still moves at least every third
    /// turn (`FRESH_TURNS`), so nothing waits more than about three times as
    /// long as first-come order would make it.
    fresh: VecDeque<TaskRef>,
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
    shutdown: bool,
}

/// Who is (about to be) blocked in the reactor's poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Polling {
    No,
    /// A free worker: new work wakes it out of the poll.
    Worker,
    /// A thread waiting inside user code or outside the pool (`Waiter`).
    Helper,
    /// The worker that polls has been told to come back, and is on its way.
    WorkerInterrupted,
    /// Likewise the helper that polls.
    HelperInterrupted,
}

impl Polling {
    fn from_u8(value: u8) -> Polling {
        match value {
            1 => Polling::Worker,
            2 => Polling::Helper,
            3 => Polling::WorkerInterrupted,
            4 => Polling::HelperInterrupted,
            _ => Polling::No,
        }
    }

    /// A free worker blocked in the poll (until it returns, interrupted or
    /// not): awake by the pool's count, but not runnable.
    fn is_worker(self) -> bool {
        matches!(self, Polling::Worker | Polling::WorkerInterrupted)
    }
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
            shutdown: false,
        }
    }

    fn queued(&self) -> bool {
        !self.tasks.is_empty() || !self.fresh.is_empty() || !self.jobs.is_empty()
    }
}

/// Work for the pool's threads.
pub(crate) enum Runnable {
    /// A connection task (or an HTTP/2 stream's): polled, never blocks.
    Task(TaskRef),
    /// User code: runs on a worker, counted as inside user code.
    Job(Job),
}

/// Where [`Pool::push`] queues work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// The current worker's LIFO slot, run as soon as what it runs now
    /// yields: on a worker of this pool outside user code, and, while it
    /// polls a task, only with `from_a_task` (a job the task starts: its
    /// handler). Elsewhere, the back of the shared queue. A task woken by
    /// another task goes behind what is queued: HTTP/2 streams then all
    /// finish before their connection's task runs again and writes their
    /// responses in one go (one `writev` for a batch, not one each).
    Next { from_a_task: bool },
    /// The back of the shared queue, behind all queued work.
    Back,
    /// The fresh queue while it has room (see `State::fresh`), else the back.
    Fresh,
}

/// The most a worker keeps of an emptied capture vector for the next one.
const MAX_SPARE: usize = 1024;

/// Keeps `batch`, emptied, as this worker's vector for its next capture
/// (`Context::spare`), if it has more room than the one kept now.
pub(super) fn keep_spare(mut batch: Vec<Runnable>) {
    if batch.capacity() == 0 || batch.capacity() > MAX_SPARE {
        return;
    }
    batch.clear();
    with_context(|cx| {
        if let Some(cx) = cx {
            let mut spare = cx.spare.borrow_mut();
            if spare.capacity() < batch.capacity() {
                *spare = batch;
            }
        }
    });
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
    /// An empty vector with room, for the next capture: a reactor turn
    /// wakes tens of tasks, and a fresh vector grew three or four times
    /// for them on every turn.
    spare: RefCell<Vec<Runnable>>,
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
            polling: AtomicU8::new(Polling::No as u8),
            standing_aside: AtomicUsize::new(0),
            apart: AtomicUsize::new(0),
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
        let task: TaskRef = Task::new(future, self.clone());
        self.push(Runnable::Task(task), Place::Next { from_a_task: false });
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
        let f = if may_inline {
            match self.try_inline(f) {
                Ok(output) => return UserCall::Ready(Some(output)),
                Err(f) => f,
            }
        } else {
            f
        };
        UserCall::Queued(self.queue_call(f))
    }

    /// [`Pool::call_user`] without inlining, typed as what it always is: a
    /// job, whose future holds only a pointer to the job's output.
    pub(crate) fn queue_call<T, F>(&self, f: F) -> QueuedCall<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        self.queue_user(f, Place::Next { from_a_task: true })
    }

    /// [`Pool::call_user`] for user code that may run as long as a
    /// connection lasts (a blocking upgrade's continuation): always a job,
    /// and counted apart from `max_workers`, the pool growing by one worker
    /// for each such call under way, so that they never take the workers
    /// ordinary requests need. Their own bound is the caller's
    /// (`Server::max_blocking_upgrades`).
    pub(crate) fn call_user_apart<T, F>(&self, f: F) -> UserCall<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        struct Apart(Arc<Shared>);
        impl Drop for Apart {
            fn drop(&mut self) {
                self.0.apart.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.0.apart.fetch_add(1, Ordering::SeqCst);
        let apart = Apart(self.0.clone());
        UserCall::Queued(self.queue_user(
            move || {
                let _apart = apart;
                f()
            },
            Place::Back,
        ))
    }

    /// Queues user code `f` as a job at `place`; see [`Pool::call_user`].
    fn queue_user<T, F>(&self, f: F, place: Place) -> QueuedCall<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let call = Arc::new(CallJob::new(f));
        self.push(Runnable::Job(call.clone()), place);
        QueuedCall(call)
    }

    /// Runs user code `f` right here, as `call_user(true, ..)` does, catching
    /// its panic, if this thread is one of this pool's workers outside user
    /// code; otherwise hands `f` back unrun. A caller with large arguments
    /// passes a closure over references to them: what the closure captures
    /// is copied on its way into `catch_unwind`.
    #[inline(always)]
    pub(crate) fn try_inline<T, F>(&self, f: F) -> Result<std::thread::Result<T>, F>
    where
        F: FnOnce() -> T,
    {
        // One look-up of the thread's context, for the check and the section.
        CONTEXT.with(|cell| match cell.get() {
            Some(cx) if Arc::ptr_eq(&cx.shared, &self.0) && !cx.in_user.get() => {
                Ok(cx.user_section(|| catch_unwind(AssertUnwindSafe(f))))
            }
            _ => Err(f),
        })
    }

    /// Blocks the calling thread, which is not a pool worker, until `future`
    /// completes. While no worker can, the thread runs the pool's tasks and
    /// polls the reactor itself, so the future's I/O makes progress even in a
    /// pool with no worker at all; otherwise it sleeps until the future's
    /// waker fires. Nothing wakes it periodically.
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
        if shared.polling() != Polling::No || shared.free_awake(&state) > 0 {
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

    /// Queues `runnable` at `place`: the one way work is queued, with
    /// [`Pool::push_all`] for a batch. Captured instead while this worker
    /// collects what it wakes (a reactor turn, a handler about to wait; see
    /// `collecting`), even inside user code.
    pub(crate) fn push(&self, runnable: Runnable, place: Place) {
        let runnable = match place {
            Place::Next { from_a_task } => match self.try_next(runnable, from_a_task) {
                Some(runnable) => runnable,
                None => return,
            },
            Place::Back | Place::Fresh => runnable,
        };
        let shared = &self.0;
        let mut state = shared.lock();
        let is_task = state.enqueue(runnable, place == Place::Fresh);
        let start = shared.find_runner(&mut state, is_task);
        shared.unlock_then_start(state, start);
    }

    /// Queues `batch` under one lock, and tells one other thread: at
    /// `Place::Next`, the first in this worker's LIFO slot and the rest at
    /// the back (what one reactor turn woke).
    pub(crate) fn push_all(&self, mut batch: Vec<Runnable>, place: Place) {
        if batch.is_empty() {
            return;
        }
        let mut drained = batch.drain(..);
        let first = match place {
            Place::Next { from_a_task } => drained
                .next()
                .and_then(|first| self.try_next(first, from_a_task)),
            Place::Back | Place::Fresh => None,
        };
        let shared = &self.0;
        let mut state = shared.lock();
        let mut any = None;
        for runnable in first.into_iter().chain(drained) {
            let is_task = state.enqueue(runnable, place == Place::Fresh);
            any = Some(any.unwrap_or(false) || is_task);
        }
        let start = any.is_some_and(|is_task| shared.find_runner(&mut state, is_task));
        shared.unlock_then_start(state, start);
        keep_spare(batch);
    }

    /// Puts `runnable` in this worker's LIFO slot or capture if it can take
    /// it (see `Place::Next`); otherwise, or for what it displaced from the
    /// slot, returns what must be queued.
    fn try_next(&self, runnable: Runnable, from_a_task: bool) -> Option<Runnable> {
        with_context(|cx| match cx {
            Some(cx) if Arc::ptr_eq(&cx.shared, &self.0) => {
                if let Some(batch) = cx.batch.borrow_mut().as_mut() {
                    batch.push(runnable);
                    return None;
                }
                if cx.in_user.get() || (cx.in_task.get() && !from_a_task) {
                    return Some(runnable);
                }
                cx.lifo.borrow_mut().replace(runnable)
            }
            _ => Some(runnable),
        })
    }

    #[cfg(test)]
    fn snapshot(&self) -> (usize, usize, usize) {
        let state = self.0.lock();
        let in_user = self.0.in_user.load(Ordering::SeqCst);
        (state.workers, in_user, state.idle.len())
    }
}
