//! A worker thread's loop: its LIFO slot, the shared queues, polls of the
//! reactor between tasks and when idle, yields to other free workers, and
//! its exit (idle, shutdown, or a panic it did not catch).

use super::*;

/// How many runs in a row may come from a worker's LIFO slot before the shared
/// queue gets a turn: the slot saves a hand-off, but must not starve others.
pub(super) const LIFO_BUDGET: u32 = 8;

/// How often (in passes of its loop) a worker checks whether another free
/// worker is runnable, and if so yields its CPU (see `worker_main`). A check
/// on every pass cost 19 % of pinned hello throughput in switches; every 16th
/// costs nothing measurable and keeps turns to about 0.2 ms of hello
/// requests, far below the kernel's 4 ms tick.
pub(super) const YIELD_CHECK_EVERY: u32 = 16;

/// While tasks are queued, a worker polls the reactor (without waiting) after
/// every this many tasks it takes from the queue, and the tasks those events
/// wake join the fresh queue (`State::fresh`). Without this, events wait
/// behind the whole backlog until the queue runs dry.
#[cfg(not(astra_loom))]
pub(super) const POLL_EVERY: u32 = 16;

/// Under loom, at every task, so that the models go through it.
#[cfg(astra_loom)]
pub(super) const POLL_EVERY: u32 = 1;

/// Free workers that can run now: live ones less those parked, inside user
/// code, or blocked in the reactor's poll. The counts are read one by one
/// without the lock, so this saturates instead of underflowing.
pub(super) fn free_runnable(
    workers: usize,
    idle: usize,
    in_user: usize,
    worker_in_poll: bool,
) -> usize {
    workers.saturating_sub(idle + in_user + usize::from(worker_in_poll))
}

/// Whether one of `runnable` free workers (the caller among them) should
/// yield, `standing_aside` of them being inside their own yield. Those hold
/// nothing (a worker yields only between runs, its LIFO slot empty), so
/// giving them the CPU helps nobody: on one CPU, two free workers used to
/// hand it back and forth every few runs (0.07 switches per pinned hello
/// request against 0.017 with this rule). A worker the kernel preempted
/// mid-run is not standing aside, and gets the CPU back within a turn.
pub(super) fn should_yield(runnable: usize, standing_aside: usize) -> bool {
    runnable > 1 + standing_aside
}

/// Runs a task or a job. Neither lets a panic out: a task catches its
/// future's, a job its user code's (`call_user`); what is caught here came
/// from around them (a `log` backend that panics while a panic is being
/// reported, say), and must not end the thread the pool counts on.
/// `cx` is this thread's context, if it is a worker.
pub(super) fn run(cx: Option<&Context>, runnable: Runnable) {
    let escaped = match runnable {
        Runnable::Task(task) => {
            if let Some(cx) = cx {
                cx.in_task.set(true);
            }
            let outcome = catch_unwind(AssertUnwindSafe(|| task.run()));
            if let Some(cx) = cx {
                cx.in_task.set(false);
            }
            outcome.is_err()
        }
        Runnable::Job(job) => catch_unwind(AssertUnwindSafe(|| job.run())).is_err(),
    };
    if escaped {
        // Reporting it may panic again, for the same reason.
        let _ = catch_unwind(|| log::error!("a panic escaped a task or a job"));
    }
}

pub(super) fn enter(shared: &Arc<Shared>) {
    with_context(|cx| debug_assert!(cx.is_none(), "a thread serves one pool"));
    CONTEXT.with(|cell| {
        let _ = cell.set(Context {
            shared: shared.clone(),
            in_user: Cell::new(false),
            lifo: RefCell::new(None),
            batch: RefCell::new(None),
            spare: RefCell::new(Vec::new()),
            in_task: Cell::new(false),
        });
    });
}

pub(super) fn worker_main(shared: Arc<Shared>) {
    let parker = Parker::new();
    enter(&shared);
    let _unwinding = WorkerUnwind {
        shared: &shared,
        parker: &parker,
    };
    // The loop runs inside one look-up of the context it reads every pass.
    CONTEXT.with(|cell| {
        let cx = cell.get().expect("entered just above");
        worker_loop(&shared, &parker, cx);
    });
}

fn worker_loop(shared: &Arc<Shared>, parker: &Arc<Parker>, cx: &Context) {
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
        if passes_unchecked >= YIELD_CHECK_EVERY && cx.lifo.borrow().is_none() {
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
        // Taken out first: the task it runs may fill the slot again.
        let next = cx.lifo.borrow_mut().take();
        if let Some(runnable) = next {
            if lifo_streak < LIFO_BUDGET {
                lifo_streak += 1;
                run(Some(cx), runnable);
                continue;
            }
            // Let queued work in before this chain goes on.
            Pool(shared.clone()).push(runnable, Place::Back);
        }
        lifo_streak = 0;
        let mut state = shared.lock();
        prefer_jobs = !prefer_jobs;
        if let Some(runnable) = state.pop(prefer_jobs) {
            taken_since_poll += 1;
            let poll_now =
                taken_since_poll >= POLL_EVERY && state.queued() && shared.polling() == Polling::No;
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
                Pool(shared.clone()).push_all(woken, Place::Fresh);
            }
            run(Some(cx), runnable);
            continue;
        }
        if state.shutdown {
            state.workers -= 1;
            shared.publish(&state);
            shared.exited.notify_all();
            return;
        }
        if shared.polling() == Polling::No {
            if let Some(mut driver) = shared.reactor.try_driver() {
                shared.set_polling(&mut state, Polling::Worker);
                drop(state);
                taken_since_poll = 0;
                let mut role = PollerRole::worker(shared);
                let woken = turn_collecting(&shared.reactor, &mut driver, None, || role.release());
                drop(driver);
                Pool(shared.clone()).push_all(woken, Place::Next { from_a_task: false });
                continue;
            }
        }
        state.idle.push(parker.clone());
        shared.publish(&state);
        drop(state);
        let deadline = shared.config.keep_alive.map(|k| sync::now() + k);
        if parker.park(deadline) {
            continue;
        }
        let mut state = shared.lock();
        let Some(at) = state.idle.iter().position(|p| Arc::ptr_eq(p, parker)) else {
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
pub(super) struct WorkerUnwind<'a> {
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

/// For the models: waits until at most `live` workers are left.
#[cfg(all(test, astra_loom))]
impl Pool {
    pub(crate) fn wait_for_workers(&self, live: usize) -> usize {
        let mut state = self.0.lock();
        while state.workers > live {
            state = sync::wait(&self.0.exited, state, None);
        }
        state.workers
    }
}
