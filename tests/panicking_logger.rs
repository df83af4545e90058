//! A `log` backend that panics (as one that writes to a closed stderr with
//! `eprintln!` does) must not cost the server a worker: every thread the
//! pool counts is alive, and a fast request is not held up behind a slow one.
//! Its own test binary: the logger is global to the process.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use astra::{Body, Request, Response};

struct PanickingLogger;

impl log::Log for PanickingLogger {
    /// What the pool's workers report: the accept loop's thread, which is
    /// the caller's own, is not what this test is about.
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.target().starts_with("astra")
            && std::thread::current().name() == Some("astra-worker")
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            panic!("INTENTIONAL panic in a log backend: {}", record.args());
        }
    }

    fn flush(&self) {}
}

static LOGGER: PanickingLogger = PanickingLogger;

/// Threads of this process named as the pool names its workers.
fn live_workers() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter(|task| {
            let comm = task.as_ref().unwrap().path().join("comm");
            std::fs::read_to_string(comm).is_ok_and(|name| name.trim() == "astra-worker")
        })
        .count()
}

#[test]
fn a_panicking_log_backend_costs_no_worker() {
    common::quiet_intentional_panics();
    log::set_logger(&LOGGER).unwrap();
    log::set_max_level(log::LevelFilter::Trace);
    let server = common::server()
        .max_workers(2)
        .shutdown_timeout(Duration::from_secs(1));
    let server = common::start(server, |request: Request, _| {
        let path = request.uri().path();
        if path == "/panic" {
            panic!("INTENTIONAL panic in a handler");
        }
        if path == "/sleep" {
            thread::sleep(Duration::from_secs(2));
        }
        Response::new(Body::new("fine"))
    });
    let addr = server.addr();

    // Each panicking handler is reported at error level, each closed
    // connection at debug level, and every report panics in the backend.
    for _ in 0..4 {
        let response = common::raw_request(
            addr,
            b"GET /panic HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(response.status, 500);
    }
    // A malformed request ends its connection with an error, reported at
    // debug level: the report panics inside the connection's task, and the
    // task's own report of that panic panics again.
    for _ in 0..4 {
        let mut conn = common::RawConn::open(addr);
        conn.send(b"NOT HTTP AT ALL\r\n\r\n");
        let _ = conn.read_to_close();
    }
    common::wait_until(
        Duration::from_secs(10),
        "the pool counts its live workers",
        || server.handle().stats().workers == live_workers(),
    );

    // A slow handler holds one worker; a fast request still gets a prompt
    // answer from another.
    let slow = thread::spawn(move || common::get(addr, "/sleep"));
    common::wait_for_stats(server.handle(), "the slow handler runs", |stats| {
        stats.handlers_running == 1
    });
    let started = Instant::now();
    let (status, body) = common::get(addr, "/hello");
    assert_eq!((status, body.as_str()), (200, "fine"));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "/hello took {:?} beside a sleeping handler",
        started.elapsed()
    );
    assert_eq!(
        common::join_within(slow, Duration::from_secs(10), "/sleep").0,
        200
    );
    assert_eq!(server.handle().stats().workers, live_workers());
}
