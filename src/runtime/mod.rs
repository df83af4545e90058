//! The runtime under the server: a reactor polled by whichever pool thread is
//! free, and the pool that runs connection tasks and handler jobs.

pub(crate) mod park;
pub(crate) mod pool;
pub(crate) mod reactor;
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
