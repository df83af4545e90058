//! Where user code enters the pool: a handler's call, a response body's
//! read, a body polled by a waiting handler; counted as inside user code
//! while it runs.

use super::*;

/// What `Pool::call_user` resolves to: the user code's result, or its panic.
pub(crate) enum UserCall<T> {
    /// Ran inline; `None` once taken.
    Ready(Option<std::thread::Result<T>>),
    /// Runs as a job, which leaves its result in its own allocation.
    Queued(QueuedCall<T>),
}

/// A call queued as a job: resolves to its output once a worker has run it.
pub(crate) struct QueuedCall<T>(pub(super) Arc<dyn CallOutput<T>>);

impl<T> Future for QueuedCall<T> {
    type Output = std::thread::Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        match self.0.poll_output(cx.waker()) {
            Some(output) => Poll::Ready(output),
            None => Poll::Pending,
        }
    }
}

/// Where a queued call leaves its output for the caller's future.
pub(crate) trait CallOutput<T>: Send + Sync {
    /// The output once the user code has run; until then `None`, and
    /// `waker` is woken when it has.
    fn poll_output(&self, waker: &Waker) -> Option<std::thread::Result<T>>;
}

/// A queued call: the user code, then its output. One allocation, shared
/// by the job in the queue and the caller's [`UserCall`].
pub(super) struct CallJob<T, F> {
    state: Mutex<CallState<T, F>>,
}

struct CallState<T, F> {
    /// The user code, until a worker takes it.
    f: Option<F>,
    output: Option<std::thread::Result<T>>,
    waker: Option<Waker>,
}

impl<T, F> CallJob<T, F> {
    pub(super) fn new(f: F) -> CallJob<T, F> {
        CallJob {
            state: Mutex::new(CallState {
                f: Some(f),
                output: None,
                waker: None,
            }),
        }
    }
}

impl<T, F> RunJob for CallJob<T, F>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    fn run(&self) {
        let Some(f) = sync::lock(&self.state).f.take() else {
            return;
        };
        let output = user_section(|| catch_unwind(AssertUnwindSafe(f)));
        let waker = {
            let mut state = sync::lock(&self.state);
            state.output = Some(output);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T, F> CallOutput<T> for CallJob<T, F>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    fn poll_output(&self, waker: &Waker) -> Option<std::thread::Result<T>> {
        let mut state = sync::lock(&self.state);
        if let Some(output) = state.output.take() {
            return Some(output);
        }
        match &mut state.waker {
            Some(old) if old.will_wake(waker) => {}
            old => *old = Some(waker.clone()),
        }
        None
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
            UserCall::Queued(call) => Pin::new(call).poll(cx),
        }
    }
}

impl<T> Unpin for UserCall<T> {}

/// Runs `poll` (a handler polling its request body) with the tasks it wakes
/// captured, then runs those tasks right here.
///
/// The task a waiting handler wakes is the connection that feeds its body;
/// running it on this thread, instead of queueing it for another thread and
/// sleeping until that one answers, saves two cross-thread wake-ups per chunk.
/// Tasks never block, so the handler waits no longer for it. Captured jobs
/// (user code) are queued as usual: user code must not nest.
pub(crate) fn poll_and_help<T>(poll: impl FnOnce() -> T) -> T {
    let (output, mut woken) = collecting(poll);
    if !woken.is_empty() {
        let shared = with_context(|cx| cx.map(|cx| cx.shared.clone()))
            .expect("only a worker collects what it wakes");
        for runnable in woken.drain(..) {
            run_for_pool(&shared, runnable);
        }
    }
    keep_spare(woken);
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

/// Runs `f`, user code that may block for a long time, counting the current
/// worker as inside user code meanwhile (see the module docs). Outside a
/// worker, or nested, just runs `f`.
pub(crate) fn user_section<R>(f: impl FnOnce() -> R) -> R {
    // One look-up of the thread's context for the whole section: `f` runs
    // inside `with`, which nested look-ups (user code queueing work) allow.
    CONTEXT.with(|cell| match cell.get() {
        Some(cx) if !cx.in_user.get() => cx.user_section(f),
        _ => f(),
    })
}

impl Context {
    /// [`user_section`] on this worker, which is not inside user code.
    pub(super) fn user_section<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Exit<'a>(&'a Context);
        impl Drop for Exit<'_> {
            fn drop(&mut self) {
                self.0.shared.exit_user();
                self.0.in_user.set(false);
            }
        }
        self.in_user.set(true);
        self.shared.enter_user();
        let _exit = Exit(self);
        f()
    }
}
