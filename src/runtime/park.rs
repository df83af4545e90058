//! Blocking on one future from a plain thread (a handler reading its body).

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use super::pool;

/// Wakes the thread that is blocked in [`block_on`].
struct ThreadWaker {
    thread: Thread,
    /// Set by `wake`, consumed by the blocked thread; guards against spurious
    /// unparks being mistaken for progress, and wake-ups lost between the poll and
    /// the park (an unpark before park makes the park return at once).
    woken: AtomicBool,
}

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.woken.swap(true, Ordering::Release) {
            self.thread.unpark();
        }
    }
}

/// Polls `future` on the current thread until it completes, parking the thread
/// while it is pending. The future's wake-ups come from other threads (the pool
/// polling the connection that feeds a request body).
///
/// While parked, the pool counts this thread as busy, so other workers keep the
/// connection moving; see [`super::pool::blocking_section`].
#[cfg(test)]
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    match block_on_timeout(future, None) {
        Some(output) => output,
        None => unreachable!("no timeout was given"),
    }
}

/// [`block_on`] that gives up (`None`) once `timeout` passes without the
/// future completing. `None` as `timeout` waits for ever.
pub(crate) fn block_on_timeout<F: Future>(
    future: F,
    timeout: Option<Duration>,
) -> Option<F::Output> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut future = pin!(future);
    let waker_state = Arc::new(ThreadWaker {
        thread: thread::current(),
        woken: AtomicBool::new(false),
    });
    let waker = Waker::from(waker_state.clone());
    let mut cx = Context::from_waker(&waker);
    // Fast path: often the data is already there, or the connection task this
    // poll wakes can fetch it at once on this thread.
    if let Poll::Ready(output) = pool::poll_and_help(|| future.as_mut().poll(&mut cx)) {
        return Some(output);
    }
    pool::blocking_section(|| loop {
        while !waker_state.woken.swap(false, Ordering::Acquire) {
            match deadline {
                None => thread::park(),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return None;
                    }
                    thread::park_timeout(deadline - now);
                }
            }
        }
        if let Poll::Ready(output) = pool::poll_and_help(|| future.as_mut().poll(&mut cx)) {
            return Some(output);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    /// A future that completes once another thread has set its value.
    struct Handoff {
        state: Arc<Mutex<(Option<u32>, Option<Waker>)>>,
    }

    impl Future for Handoff {
        type Output = u32;
        fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
            let mut state = self.state.lock().unwrap();
            match state.0 {
                Some(v) => Poll::Ready(v),
                None => {
                    state.1 = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        }
    }

    #[test]
    fn block_on_wakes_from_another_thread() {
        let state = Arc::new(Mutex::new((None, None::<Waker>)));
        let setter = state.clone();
        let handle = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            let waker = {
                let mut s = setter.lock().unwrap();
                s.0 = Some(7);
                s.1.take()
            };
            waker.unwrap().wake();
        });
        assert_eq!(block_on(Handoff { state }), 7);
        handle.join().unwrap();
    }

    #[test]
    fn block_on_ready_future_returns_at_once() {
        assert_eq!(block_on(async { 3 }), 3);
    }

    #[test]
    fn block_on_timeout_gives_up_at_the_deadline() {
        let state = Arc::new(Mutex::new((None, None::<Waker>)));
        let started = std::time::Instant::now();
        let result = block_on_timeout(Handoff { state }, Some(Duration::from_millis(50)));
        assert_eq!(result, None);
        assert!(started.elapsed() >= Duration::from_millis(50));
    }
}
