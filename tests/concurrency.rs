//! Handlers block freely: a sleeping handler does not hold up others, handlers
//! up to `max_workers` run in parallel, extra requests queue rather than being
//! dropped, and idle workers exit after `worker_keep_alive`.
//!
//! The tests measure wall-clock time, so they run one at a time (a lock), and
//! the thread-counting one runs alone in a child process.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use astra::test::TestServer;
use astra::{Body, Request, Response, Server};

/// Serialises the timing tests of this file.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// `/sleep/MS` sleeps that long; anything else answers at once. Tracks how many
/// handlers run at the same time.
struct Sleeper {
    running: AtomicUsize,
    peak: AtomicUsize,
}

impl Sleeper {
    fn start(server: Server) -> (TestServer, Arc<Sleeper>) {
        let sleeper = Arc::new(Sleeper {
            running: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        });
        let s = sleeper.clone();
        let server = common::start(server, move |request: Request, _| {
            let now = s.running.fetch_add(1, Ordering::SeqCst) + 1;
            s.peak.fetch_max(now, Ordering::SeqCst);
            let path = request.uri().path().to_string();
            if let Some(ms) = path.strip_prefix("/sleep/") {
                thread::sleep(Duration::from_millis(ms.parse().unwrap()));
            }
            s.running.fetch_sub(1, Ordering::SeqCst);
            Response::new(Body::new(path))
        });
        (server, sleeper)
    }

    /// Waits until `n` handlers are running.
    fn wait_running(&self, n: usize) {
        common::wait_until(
            Duration::from_secs(10),
            &format!("{n} handlers running"),
            || self.running.load(Ordering::SeqCst) == n,
        );
    }
}

/// Sends `n` GETs for `path` at once, each on its own connection, and returns
/// how long until all were answered.
fn concurrent_gets(addr: SocketAddr, path: &str, n: usize, limit: Duration) -> Duration {
    let start = Instant::now();
    let clients: Vec<_> = (0..n)
        .map(|_| {
            let path = path.to_string();
            thread::spawn(move || common::get(addr, &path))
        })
        .collect();
    for client in clients {
        let (status, body) = common::join_within(client, limit, "concurrent request");
        assert_eq!((status, body.as_str()), (200, path));
    }
    start.elapsed()
}

#[test]
fn sleeping_handler_does_not_block_other_requests() {
    let _serial = serial();
    let (server, sleeper) = Sleeper::start(common::server().max_workers(4));
    let addr = server.addr();
    let slow = thread::spawn(move || common::get(addr, "/sleep/2000"));
    sleeper.wait_running(1);
    for _ in 0..5 {
        let start = Instant::now();
        assert_eq!(common::get(addr, "/fast").0, 200);
        let took = start.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "a fast request waited {took:?} behind a sleeping handler"
        );
    }
    assert_eq!(
        common::join_within(slow, Duration::from_secs(10), "slow request").0,
        200
    );
}

/// A sleeping handler on the *same* keep-alive connection's neighbour: the
/// other connection is served while the worker that read the first request
/// sleeps in its handler.
#[test]
fn sleeping_handler_with_one_spare_worker_does_not_block_other_requests() {
    let _serial = serial();
    let (server, sleeper) = Sleeper::start(common::server().max_workers(2));
    let addr = server.addr();
    let slow = thread::spawn(move || common::get(addr, "/sleep/1500"));
    sleeper.wait_running(1);
    let start = Instant::now();
    assert_eq!(common::get(addr, "/fast").0, 200);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(
        common::join_within(slow, Duration::from_secs(10), "slow request").0,
        200
    );
}

#[test]
fn max_workers_sleeping_handlers_run_in_parallel() {
    let _serial = serial();
    let (server, sleeper) = Sleeper::start(common::server().max_workers(4));
    let addr = server.addr();
    let took = concurrent_gets(addr, "/sleep/500", 4, Duration::from_secs(10));
    // In series this takes 2 s; in parallel about 0.5 s.
    assert!(
        took < Duration::from_millis(1000),
        "4 handlers sleeping 500 ms with max_workers(4) took {took:?}: not run in parallel (peak {})",
        sleeper.peak.load(Ordering::SeqCst)
    );
    assert_eq!(sleeper.peak.load(Ordering::SeqCst), 4);
}

#[test]
fn requests_beyond_max_workers_wait_and_are_all_answered() {
    let _serial = serial();
    let (server, sleeper) = Sleeper::start(common::server().max_workers(2));
    let addr = server.addr();
    let took = concurrent_gets(addr, "/sleep/200", 10, Duration::from_secs(20));
    let peak = sleeper.peak.load(Ordering::SeqCst);
    assert!(peak <= 2, "{peak} handlers ran at once with max_workers(2)");
    // Ten 200 ms handlers, two at a time: at least five rounds.
    assert!(took >= Duration::from_millis(950), "took only {took:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn many_queued_requests_with_one_worker_all_answered() {
    let _serial = serial();
    let (server, sleeper) = Sleeper::start(common::server().max_workers(1));
    let addr = server.addr();
    let took = concurrent_gets(addr, "/sleep/20", 40, Duration::from_secs(20));
    assert_eq!(sleeper.peak.load(Ordering::SeqCst), 1);
    assert!(took >= Duration::from_millis(790), "took only {took:?}");
}

#[test]
fn idle_workers_exit_after_worker_keep_alive() {
    const TEST: &str = "idle_workers_exit_after_worker_keep_alive";
    if !common::is_child(TEST) {
        let _serial = serial();
        common::run_in_child(TEST, Duration::from_secs(60));
        return;
    }
    // Child: alone in this process, so its thread count is the server's.
    let before = common::threads();
    let (server, sleeper) = Sleeper::start(
        common::server()
            .max_workers(8)
            .worker_keep_alive(Duration::from_millis(200)),
    );
    let addr = server.addr();
    assert_eq!(common::get(addr, "/fast").0, 200);
    // Idle, the server is its serve thread and one worker waiting for events:
    // any other worker the first request started leaves after the keep-alive.
    let baseline = before + 2;
    common::wait_until(
        Duration::from_secs(3),
        "the idle server settles to its serve thread and one worker",
        || common::threads() == baseline,
    );

    // Eight sleeping handlers need eight workers; count the threads while
    // they run.
    let watch = {
        let sleeper = sleeper.clone();
        thread::spawn(move || {
            sleeper.wait_running(8);
            common::threads()
        })
    };
    concurrent_gets(addr, "/sleep/600", 8, Duration::from_secs(10));
    let busy = common::join_within(watch, Duration::from_secs(15), "watcher");
    // The watcher and 8 client threads were alive too.
    eprintln!("threads: baseline {baseline}, with 8 busy handlers {busy} (incl. 9 test threads)");
    assert!(
        busy >= baseline + 7 + 9,
        "workers were not started: {busy} threads vs baseline {baseline}"
    );

    // After the burst the extra workers leave within about the keep-alive.
    common::wait_until(
        Duration::from_secs(3),
        &format!("idle workers exit after worker_keep_alive(200ms), back to {baseline} threads"),
        || common::threads() <= baseline,
    );
    // And the server still answers, starting workers again as needed.
    assert!(
        concurrent_gets(addr, "/sleep/300", 4, Duration::from_secs(10))
            < Duration::from_millis(800)
    );
}
