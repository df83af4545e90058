//! Hand-offs: who runs queued work and who polls the reactor, at the
//! moment things change (work queued, a worker entering user code, a
//! thread that waited leaving), and how a waiting thread helps meanwhile.

use super::*;

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        sync::lock(&self.state)
    }

    /// Who polls the reactor; see `Shared::polling`.
    pub(super) fn polling(&self) -> Polling {
        Polling::from_u8(self.polling.load(Ordering::SeqCst))
    }

    /// Records who polls; only under the state's lock (`_locked`), so that
    /// every decision taken under it sees the same value.
    pub(super) fn set_polling(&self, _locked: &mut State, polling: Polling) {
        self.polling.store(polling as u8, Ordering::SeqCst);
    }

    /// Workers that are neither inside user code nor parked: running tasks,
    /// polling, or just woken.
    pub(super) fn free_awake(&self, state: &State) -> usize {
        // A worker inside user code is live and not parked, so this does not
        // underflow; `in_user` may move meanwhile, within those bounds.
        state
            .workers
            .saturating_sub(state.idle.len() + self.in_user.load(Ordering::SeqCst))
    }

    /// Copies the counts `enter_user` reads without the lock; called under
    /// it after each change.
    pub(super) fn publish(&self, state: &State) {
        self.workers.store(state.workers, Ordering::SeqCst);
        self.idle.store(state.idle.len(), Ordering::SeqCst);
    }

    pub(super) fn pop_idle(&self, state: &mut State) -> Option<Arc<Parker>> {
        let parker = state.idle.pop()?;
        self.publish(state);
        Some(parker)
    }

    /// Work was just queued: makes sure some thread will run it, cheapest way
    /// first. Returns true if the caller must start a worker (after unlocking).
    pub(super) fn find_runner(&self, state: &mut State, is_task: bool) -> bool {
        if self.free_awake(state) < self.cpus {
            if let Some(parker) = self.pop_idle(state) {
                parker.unpark();
                return false;
            }
        }
        if self.polling() == Polling::Worker {
            self.set_polling(state, Polling::WorkerInterrupted);
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
    pub(super) fn hand_off(&self, state: &mut State) -> bool {
        if self.free_awake(state) > 0 || state.shutdown {
            return false;
        }
        if let Some(parker) = self.pop_idle(state) {
            parker.unpark();
            return false;
        }
        if self.polling() != Polling::No && !state.queued() {
            // A helper polls, and there is nothing else to do.
            return false;
        }
        self.grow(state, true)
    }

    /// No worker is free and awake: count in a new one (the caller starts it)
    /// or, at `max_workers`, wake a helper for a task.
    pub(super) fn grow(&self, state: &mut State, is_task: bool) -> bool {
        let limit = self.config.max_workers + self.apart.load(Ordering::SeqCst);
        if state.workers < limit {
            state.workers += 1;
            self.publish(state);
            return true;
        }
        if is_task {
            if self.polling() == Polling::Helper {
                self.set_polling(state, Polling::HelperInterrupted);
                self.reactor.wake_driver();
            } else if let Some(parker) = state.helpers.pop() {
                parker.unpark();
            }
        }
        false
    }

    /// Releases the lock, then starts the worker `grow` counted in, if it
    /// did: threads are started outside the lock.
    pub(super) fn unlock_then_start(self: &Arc<Self>, state: MutexGuard<'_, State>, start: bool) {
        drop(state);
        if start {
            self.start_worker();
        }
    }

    /// `hand_off` under the lock, starting a worker if it asks for one.
    pub(super) fn hand_off_now(self: &Arc<Self>) {
        let mut state = self.lock();
        let start = self.hand_off(&mut state);
        self.unlock_then_start(state, start);
    }

    /// Starts a worker already counted in `workers` (by `grow`).
    pub(super) fn start_worker(self: &Arc<Self>) {
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
    pub(super) fn enter_user(self: &Arc<Self>) {
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

    pub(super) fn exit_user(&self) {
        self.in_user.fetch_sub(1, Ordering::SeqCst);
    }

    /// Whether the caller (a free worker) should yield its CPU: another free
    /// worker can run and is not itself standing aside. From the counts kept
    /// without the lock: a moment's view, used only to decide on a yield.
    pub(super) fn others_waiting(&self) -> bool {
        let runnable = free_runnable(
            self.workers.load(Ordering::Relaxed),
            self.idle.load(Ordering::Relaxed),
            self.in_user.load(Ordering::Relaxed),
            self.polling().is_worker(),
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
    pub(super) fn wait_once(
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
        if nobody_else && self.polling() == Polling::No {
            if let Some(mut driver) = self.reactor.try_driver() {
                let pool = Pool(self.clone());
                if !parker.start_polling(&pool) {
                    return true;
                }
                self.set_polling(&mut state, Polling::Helper);
                drop(state);
                *holds_role = true;
                let timeout = deadline.map(|d| d.saturating_duration_since(sync::now()));
                let mut role = PollerRole::helper(self, parker);
                let mut woken =
                    turn_collecting(&self.reactor, &mut driver, timeout, || role.release());
                drop(driver);
                for runnable in woken.drain(..) {
                    run_for_pool(self, runnable);
                }
                keep_spare(woken);
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

/// Who holds the reactor's poll, as `Shared::polling` records it: released
/// by the turn right after its poll returns, or, if a panic comes first, by
/// the drop, so that the record can never outlive the poll and keep every
/// other thread from polling.
pub(super) struct PollerRole<'a> {
    shared: &'a Shared,
    /// The helper's parker, whose unpark interrupts the poll meanwhile;
    /// `None` for a free worker.
    helper: Option<&'a Parker>,
    released: bool,
}

impl<'a> PollerRole<'a> {
    pub(super) fn worker(shared: &'a Shared) -> PollerRole<'a> {
        PollerRole {
            shared,
            helper: None,
            released: false,
        }
    }

    pub(super) fn helper(shared: &'a Shared, parker: &'a Parker) -> PollerRole<'a> {
        PollerRole {
            shared,
            helper: Some(parker),
            released: false,
        }
    }

    pub(super) fn release(&mut self) {
        if std::mem::replace(&mut self.released, true) {
            return;
        }
        if let Some(parker) = self.helper {
            parker.stop_polling();
        }
        let mut state = self.shared.lock();
        self.shared.set_polling(&mut state, Polling::No);
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

/// What a thread that waits (`Shared::wait_once`) does with work it took
/// for the pool: runs a task, which never blocks, and queues a job, since
/// the thread is inside user code or outside the pool and user code neither
/// nests nor leaves the pool's workers. While a thread outside the pool
/// runs the task, user code the task starts goes to the pool too (see
/// [`call_user_here`]).
pub(super) fn run_for_pool(shared: &Arc<Shared>, runnable: Runnable) {
    match runnable {
        // One look-up of the thread's context: a worker runs the task as
        // it is; a thread outside the pool is marked while it does.
        Runnable::Task(_) => with_context(|cx| {
            let _helping = cx.is_none().then(|| HelpingMark::set(shared));
            run(cx, runnable);
        }),
        Runnable::Job(_) => Pool(shared.clone()).push(runnable, Place::Back),
    }
}

#[cfg(not(astra_loom))]
thread_local! {
    /// On a thread outside the pool, while it runs one of the pool's tasks:
    /// that pool.
    pub(super) static HELPING: RefCell<Option<Arc<Shared>>> = const { RefCell::new(None) };
}

#[cfg(astra_loom)]
loom::thread_local! {
    pub(super) static HELPING: RefCell<Option<Arc<Shared>>> = RefCell::new(None);
}

/// Marks the current thread, which is not a worker, as running `shared`'s
/// task until dropped (on unwind too).
pub(super) struct HelpingMark;

impl HelpingMark {
    pub(super) fn set(shared: &Arc<Shared>) -> HelpingMark {
        HELPING.with(|helping| *helping.borrow_mut() = Some(shared.clone()));
        HelpingMark
    }
}

impl Drop for HelpingMark {
    fn drop(&mut self) {
        HELPING.with(|helping| helping.borrow_mut().take());
    }
}

/// One reactor turn (see `Reactor::turn`) with the work it wakes collected
/// on this thread instead of queued one by one; returns that work.
pub(super) fn turn_collecting(
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
pub(super) fn collecting<R>(f: impl FnOnce() -> R) -> (R, Vec<Runnable>) {
    let Some((shared, outer)) = with_context(|cx| {
        let cx = cx?;
        let fresh = std::mem::take(&mut *cx.spare.borrow_mut());
        let outer = cx.batch.borrow_mut().replace(fresh);
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
pub(super) struct Capture {
    shared: Arc<Shared>,
    /// The capture it replaced; `None` once ended.
    outer: Option<Option<Vec<Runnable>>>,
}

impl Capture {
    pub(super) fn end(&mut self) -> Vec<Runnable> {
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
            Pool(self.shared.clone()).push_all(woken, Place::Back);
        }
    }
}
