//! The runtime under the server: a reactor polled by whichever thread is free,
//! and the pool that runs connection tasks and user code.

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
