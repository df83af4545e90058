//! The runtime under the server: a reactor polled by whichever thread is free,
//! and the pool that runs connection tasks and user code.
//!
//! # Lock order
//!
//! A thread that holds more than one of the runtime's locks took them in
//! this order, and every change must keep it:
//!
//! 1. the reactor's driver (`Reactor::try_driver`: the right to poll);
//! 2. the pool's state (`pool::State`);
//! 3. a parker's state (`park::Parker`), and the leaf locks: a socket's
//!    wakers, a timer entry, a task's future, a user call's slot.
//!
//! The pool's state reaches the driver only through `try_driver`, which
//! never waits, so holding the state while trying for the driver cannot
//! deadlock against a poller that takes the state after its poll. Wakers are
//! called with no runtime lock held but the driver (a reactor turn) or none.
//!
//! # Unwinding
//!
//! Every flag, capture and count set around user code or a poll is put back
//! by a guard that also runs on unwind: `user_section`'s exit (inside user
//! code), `PollerRole` (who polls), `Capture` (work woken on this thread),
//! `Waiter` (the I/O role of a thread that waited), `HelpingMark` (a thread
//! outside the pool running a pool task) and `WorkerUnwind` (a worker's
//! count).

#[cfg(all(test, astra_loom))]
mod models;
pub(crate) mod park;
pub(crate) mod pool;
#[cfg(not(astra_loom))]
pub(crate) mod reactor;
#[cfg(astra_loom)]
#[path = "reactor_model.rs"]
pub(crate) mod reactor;
pub(crate) mod sync;
mod task;
pub(crate) mod timer;

pub(crate) use pool::Pool;

/// Lets hyper spawn futures (HTTP/2 streams) as pool tasks.
#[cfg(feature = "http2")]
#[derive(Clone)]
pub(crate) struct Executor(pub(crate) Pool);

#[cfg(feature = "http2")]
impl<F> hyper::rt::Executor<F> for Executor
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    fn execute(&self, future: F) {
        self.0.spawn(future);
    }
}
