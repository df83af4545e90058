//! A spawned future (a connection, or an HTTP/2 stream) and its waker.
//!
//! A task is polled by whichever worker picks it up; between polls it sits in no
//! queue and holds no thread: only its waker, stored with the socket or channel it
//! waits on, can put it back on the run queue.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll, Wake, Waker};

use super::pool::{Place, Pool, Runnable};
use super::sync::{self, Arc, AtomicU8, Mutex, Ordering};

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Not queued, not running: waiting for a wake-up.
const IDLE: u8 = 0;
/// In a run queue (or a worker's LIFO slot).
const SCHEDULED: u8 = 1;
/// Being polled.
const RUNNING: u8 = 2;
/// Being polled, and woken meanwhile: poll it again afterwards.
const NOTIFIED: u8 = 3;
/// Finished; wake-ups are ignored.
const COMPLETE: u8 = 4;

pub(crate) struct Task {
    state: AtomicU8,
    future: Mutex<Option<BoxFuture>>,
    pool: Pool,
}

impl Task {
    pub(crate) fn new<F>(future: F, pool: Pool) -> Arc<Task>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        Arc::new(Task {
            state: AtomicU8::new(SCHEDULED),
            future: Mutex::new(Some(Box::pin(future))),
            pool,
        })
    }

    /// Polls the future once. Called only by the pool, for a scheduled task.
    pub(crate) fn run(self: Arc<Self>) {
        self.state.store(RUNNING, Ordering::Release);
        let waker = Waker::from(self.clone());
        let mut cx = Context::from_waker(&waker);
        let mut slot = sync::lock(&self.future);
        let Some(future) = slot.as_mut() else {
            return;
        };
        // A panic inside hyper or a body must cost this connection only.
        let outcome = catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(&mut cx)));
        match outcome {
            Ok(Poll::Pending) => {
                drop(slot);
                if self
                    .state
                    .compare_exchange(RUNNING, IDLE, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    // Woken while running: queue it again, behind other work, so a
                    // task that keeps waking itself cannot starve the rest.
                    self.state.store(SCHEDULED, Ordering::Release);
                    self.pool.push(Runnable::Task(self.clone()), Place::Back);
                }
            }
            Ok(Poll::Ready(())) => {
                self.state.store(COMPLETE, Ordering::Release);
                let future = slot.take();
                drop(slot);
                // A finished future may still own user code: an HTTP/2
                // stream's task keeps its response body until dropped.
                drop_guarded(future);
            }
            Err(_) => {
                self.state.store(COMPLETE, Ordering::Release);
                let future = slot.take();
                drop(slot);
                drop_guarded(future);
                // Last: a `log` backend may panic too (the pool catches it).
                log::error!("a connection task panicked; closed that connection");
            }
        }
    }

    fn schedule(self: &Arc<Self>) {
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            let next = match state {
                IDLE => SCHEDULED,
                RUNNING => NOTIFIED,
                _ => return,
            };
            match self
                .state
                .compare_exchange_weak(state, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) if next == SCHEDULED => {
                    self.pool.push(
                        Runnable::Task(self.clone()),
                        Place::Next { from_a_task: false },
                    );
                    return;
                }
                Ok(_) => return,
                Err(actual) => state = actual,
            }
        }
    }
}

/// Drops a task's future. A panic there (in the `Drop` of a response body's
/// reader, say) must not unwind out of the worker, which the pool would go on
/// counting.
fn drop_guarded(future: Option<BoxFuture>) {
    if catch_unwind(AssertUnwindSafe(move || drop(future))).is_err() {
        log::error!("dropping a connection task panicked");
    }
}

impl Wake for Task {
    fn wake(self: Arc<Self>) {
        self.schedule();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.schedule();
    }
}
