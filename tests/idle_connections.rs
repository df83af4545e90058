//! An idle keep-alive connection holds no thread: thousands of them, with
//! `max_workers(30)`, and a new client is still answered at once while the
//! process's thread count stays within the worker bound.
//!
//! Runs in a child process of its own, so the thread count is the server's and
//! the raised descriptor limit stays there.

mod common;

use std::time::{Duration, Instant};

use astra::{Body, Response};
use common::RawConn;

const TEST: &str = "idle_keep_alive_connections_hold_no_thread";
const WANTED: usize = 5_000;
const MAX_WORKERS: u64 = 30;

#[test]
fn idle_keep_alive_connections_hold_no_thread() {
    if !common::is_child(TEST) {
        common::run_in_child(TEST, Duration::from_secs(120));
        return;
    }

    // Each connection costs two descriptors here (client and server side).
    let limit = common::raise_nofile((WANTED as u64) * 2 + 200);
    let conns = WANTED.min((limit.saturating_sub(200) / 2) as usize);
    if conns < WANTED {
        eprintln!(
            "NOTE: RLIMIT_NOFILE could only be raised to {limit}: testing {conns} idle connections instead of {WANTED}"
        );
    }
    assert!(
        conns >= 500,
        "too few descriptors ({limit}) for a meaningful test"
    );

    let baseline = common::threads();
    let server = common::start(
        common::server().max_workers(MAX_WORKERS as usize),
        |_, _| Response::new(Body::new("ok")),
    );
    let addr = server.addr();

    // Open the connections in batches (the listen backlog is finite): connect
    // and send a request on each, then read each response.
    let start = Instant::now();
    let mut idle: Vec<RawConn> = Vec::with_capacity(conns);
    while idle.len() < conns {
        let batch = (conns - idle.len()).min(100);
        let mut fresh: Vec<RawConn> = (0..batch)
            .map(|_| {
                let mut conn = RawConn::open(addr);
                conn.send(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n");
                conn
            })
            .collect();
        for conn in &mut fresh {
            let response = conn
                .read_response()
                .unwrap_or_else(|err| panic!("connection {} got no response: {err}", idle.len()));
            assert_eq!(response.body_str(), "ok");
        }
        idle.append(&mut fresh);
    }
    eprintln!(
        "{conns} kept-alive connections opened in {:?}",
        start.elapsed()
    );
    common::wait_for_stats(server.handle(), "every connection idle", |s| {
        s.http1_connections == conns && s.requests_in_flight == 0 && s.handlers_running == 0
    });

    // A new client is answered quickly.
    let t = Instant::now();
    let (status, body) = common::get(addr, "/");
    let took = t.elapsed();
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert!(
        took < Duration::from_secs(2),
        "a new client waited {took:?} behind {conns} idle connections"
    );

    let now = common::threads();
    eprintln!("threads: {baseline} before the server, {now} with {conns} idle connections");
    assert!(
        now <= baseline + MAX_WORKERS + 3,
        "{now} threads with {conns} idle connections (baseline {baseline}, max_workers {MAX_WORKERS})"
    );

    // The idle connections were kept, not closed: a sample of them still works.
    for (i, conn) in idle.iter_mut().enumerate().step_by(conns / 50) {
        conn.send(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n");
        let response = conn
            .read_response()
            .unwrap_or_else(|err| panic!("idle connection {i} no longer served: {err}"));
        assert_eq!(response.body_str(), "ok");
    }
}

/// Connections stuck half-way through their request head (slow clients) hold
/// no worker either: with `max_workers(1)`, two hundred of them do not delay a
/// normal request.
#[test]
fn partial_request_heads_hold_no_worker() {
    let server = common::start(common::server().max_workers(1), |_, _| {
        Response::new(Body::new("ok"))
    });
    let addr = server.addr();
    let mut stalled = Vec::new();
    for i in 0..200 {
        let mut conn = RawConn::open(addr);
        // Different stopping points, including before the first line ends.
        let head = b"GET / HTTP/1.1\r\nHost: test\r\nX-Slow: yes\r\n";
        conn.send(&head[..1 + i % (head.len() - 1)]);
        stalled.push(conn);
    }
    #[cfg(feature = "http2")]
    for _ in 0..50 {
        // HTTP/2 prior-knowledge connections that stop after the preface.
        let mut conn = RawConn::open(addr);
        conn.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        stalled.push(conn);
    }
    // Every one is accepted and waits for the rest of its request.
    common::wait_for_stats(server.handle(), "all stalled connections open", |s| {
        s.http1_connections + s.http2_connections == stalled.len()
    });
    for _ in 0..5 {
        let t = Instant::now();
        assert_eq!(common::get(addr, "/"), (200, "ok".to_string()));
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "took {:?}",
            t.elapsed()
        );
    }
    // The stalled clients can still finish their requests.
    for conn in stalled.iter_mut().take(200).step_by(20) {
        conn.send(b"\r\n\r\n");
    }
}
