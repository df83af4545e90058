//! The runtime's synchronisation primitives, in one place, so the same code
//! runs on `std` and, under `--cfg astra_loom`, on [loom]'s model of them
//! (crossbeam's shim is the pattern). Nothing else in `runtime/` names
//! `std::sync` or `std::thread` directly.
//!
//! The helpers below also decide what poisoning means here: nothing. A panic
//! while a lock is held is caught further up (handlers, tasks), and the state
//! behind every lock stays consistent between statements, so a poisoned lock
//! is taken as it is.
//!
//! [loom]: https://docs.rs/loom

use std::time::{Duration, Instant};

// `Arc` stays std's under loom too: wakers are made from it (`Waker::from`),
// and reference counting is not what the models check.
pub(crate) use std::sync::Arc;

#[cfg(not(astra_loom))]
pub(crate) use std::sync::{
    atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering},
    Condvar, Mutex, MutexGuard,
};
#[cfg(not(astra_loom))]
pub(crate) use std::thread;

#[cfg(astra_loom)]
pub(crate) use loom::sync::{
    atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering},
    Condvar, Mutex, MutexGuard,
};
#[cfg(astra_loom)]
pub(crate) use loom::thread;

/// Locks `mutex`, whatever a panic elsewhere left behind.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes `mutex` if nobody holds it.
pub(crate) fn try_lock<T>(mutex: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match mutex.try_lock() {
        Ok(guard) => Some(guard),
        Err(std::sync::TryLockError::WouldBlock) => None,
        Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
    }
}

/// Waits on `condvar` for at most `timeout` (`None`: no limit). Spurious
/// wake-ups happen; callers re-check their condition.
///
/// loom has no clock: under it the wait has no limit. The waits for a
/// deadline on the model clock ([`now`]), `Parker::park`'s and the model
/// reactor's turn, are woken when that clock moves (see `park::model`).
pub(crate) fn wait<'a, T>(
    condvar: &Condvar,
    guard: MutexGuard<'a, T>,
    timeout: Option<Duration>,
) -> MutexGuard<'a, T> {
    #[cfg(not(astra_loom))]
    if let Some(timeout) = timeout {
        return condvar
            .wait_timeout(guard, timeout)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    #[cfg(astra_loom)]
    let _ = timeout;
    condvar.wait(guard).unwrap_or_else(|e| e.into_inner())
}

/// The time that waits with a deadline (`park::block_on_timeout`, a parker,
/// a helper's turn of the reactor) measure against.
#[cfg(not(astra_loom))]
pub(crate) fn now() -> Instant {
    Instant::now()
}

/// Under loom: a clock that moves only when a model says so
/// ([`advance_clock`]), so that a deadline passes at one point of the
/// schedule, the same in every run of it.
#[cfg(astra_loom)]
pub(crate) fn now() -> Instant {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *BASE.get_or_init(Instant::now) + Duration::from_nanos(MODEL_CLOCK.load(Ordering::SeqCst))
}

#[cfg(astra_loom)]
loom::lazy_static! {
    /// Nanoseconds the model clock has moved in this run of a model.
    static ref MODEL_CLOCK: AtomicU64 = AtomicU64::new(0);
}

/// Moves the model clock on by `by`. Models call `Reactor::advance_clock`,
/// which also wakes the threads waiting for a deadline.
#[cfg(astra_loom)]
pub(crate) fn advance_clock(by: Duration) {
    MODEL_CLOCK.fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
}
