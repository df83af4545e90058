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

/// A task as the pool queues it: any spawned future, behind one pointer.
pub(crate) type TaskRef = Arc<dyn AnyTask>;

/// What the pool does with a task, whatever future it holds.
pub(crate) trait AnyTask: Send + Sync {
    /// Polls the future once. Called only by the pool, for a scheduled task.
    fn run(self: Arc<Self>);
}

/// A spawned future and its scheduling state, in one allocation: the
/// future sits in the task itself, not in a box of its own (one malloc and
/// free per HTTP/2 stream fewer).
pub(crate) struct Task<F> {
    state: AtomicU8,
    pool: Pool,
    /// Pinned here: the task's allocation never moves, and the future is
    /// dropped in place (`drop_in_slot`), never moved out.
    future: Mutex<Option<F>>,
}

impl<F> Task<F>
where
    F: Future<Output = ()> + Send + 'static,
{
    pub(crate) fn new(future: F, pool: Pool) -> Arc<Task<F>> {
        Arc::new(Task {
            state: AtomicU8::new(SCHEDULED),
            pool,
            future: Mutex::new(Some(future)),
        })
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
                        Runnable::Task(self.clone() as TaskRef),
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

impl<F> AnyTask for Task<F>
where
    F: Future<Output = ()> + Send + 'static,
{
    fn run(self: Arc<Self>) {
        self.state.store(RUNNING, Ordering::Release);
        let waker = Waker::from(self.clone());
        let mut cx = Context::from_waker(&waker);
        let mut slot = sync::lock(&self.future);
        let Some(future) = slot.as_mut() else {
            return;
        };
        // SAFETY: the future lives in this task's allocation, behind an
        // `Arc` that never moves it, and leaves it only by being dropped in
        // place (`drop_in_slot`), so it stays where it is from this first
        // pin until its drop, as `Pin` requires.
        let future = unsafe { Pin::new_unchecked(future) };
        // A panic inside hyper or a body must cost this connection only.
        let outcome = catch_unwind(AssertUnwindSafe(|| future.poll(&mut cx)));
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
                    self.pool
                        .push(Runnable::Task(self.clone() as TaskRef), Place::Back);
                }
            }
            Ok(Poll::Ready(())) => {
                self.state.store(COMPLETE, Ordering::Release);
                // A finished future may still own user code: an HTTP/2
                // stream's task keeps its response body until dropped.
                drop_guarded(&mut slot);
            }
            Err(_) => {
                self.state.store(COMPLETE, Ordering::Release);
                drop_guarded(&mut slot);
                drop(slot);
                // Last: a `log` backend may panic too (the pool catches it).
                log::error!("a connection task panicked; closed that connection");
            }
        }
    }
}

/// Drops a task's future where it lies. A panic there (in the `Drop` of a
/// response body's reader, say) must not unwind out of the worker, which
/// the pool would go on counting.
fn drop_guarded<F>(slot: &mut Option<F>) {
    if catch_unwind(AssertUnwindSafe(|| drop_in_slot(slot))).is_err() {
        log::error!("dropping a connection task panicked");
    }
}

/// Drops the value in `slot` in place (it may be pinned there) and leaves
/// the slot empty, also when the drop panics: a value whose drop unwound
/// counts as dropped, and must not be dropped again with the task.
fn drop_in_slot<F>(slot: &mut Option<F>) {
    struct Emptied<'a, F>(&'a mut Option<F>);
    impl<F> Drop for Emptied<'_, F> {
        fn drop(&mut self) {
            // SAFETY: the slot's value has just been dropped in place (or its
            // drop unwound, which ends it all the same), so its bytes are
            // dead: writing `None` over them without dropping them is what
            // makes the slot valid again.
            unsafe { std::ptr::write(&mut *self.0, None) };
        }
    }
    let emptied = Emptied(slot);
    // SAFETY: the slot holds a valid `Option<F>`, dropped once here; until
    // `Emptied` writes `None` (on return or unwind) nothing reads it.
    unsafe { std::ptr::drop_in_place(&mut *emptied.0) };
}

impl<F> Wake for Task<F>
where
    F: Future<Output = ()> + Send + 'static,
{
    fn wake(self: Arc<Self>) {
        self.schedule();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.schedule();
    }
}
