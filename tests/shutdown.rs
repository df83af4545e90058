//! Graceful shutdown: in-flight requests finish, idle connections close, new
//! ones are refused, and `serve` returns within the drain.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use astra::{Body, Response, Server, ServerHandle, Service};
use common::*;

/// Serves on a thread; returns the address, a handle, and the serve thread.
fn start_stoppable<S: Service + Sync>(
    server: Server,
    service: S,
) -> (SocketAddr, ServerHandle, JoinHandle<std::io::Result<()>>) {
    let addr = server.local_addr().unwrap();
    let handle = server.handle();
    let thread = thread::spawn(move || server.serve(service));
    (addr, handle, thread)
}

const BODY_LEN: usize = 100 * 1024;

#[test]
fn in_flight_requests_finish_and_new_connections_are_refused() {
    const IN_FLIGHT: usize = 200;
    raise_nofile(4096);
    let started = Arc::new(AtomicUsize::new(0));
    let counter = started.clone();
    let server = server()
        .max_workers(IN_FLIGHT)
        .shutdown_timeout(Duration::from_secs(20));
    let (addr, handle, serving) = start_stoppable(server, move |_req, _info| {
        counter.fetch_add(1, Ordering::SeqCst);
        // Still running when the shutdown starts.
        thread::sleep(Duration::from_millis(800));
        Response::new(Body::new(vec![b'x'; BODY_LEN]))
    });
    let clients: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            thread::spawn(move || {
                let mut stream = connect_with_timeout(addr, Duration::from_secs(20));
                stream
                    .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    .unwrap();
                let mut conn = RawConn::new(stream);
                conn.read_response()
            })
        })
        .collect();
    wait_until(Duration::from_secs(10), "every handler starts", || {
        started.load(Ordering::SeqCst) == IN_FLIGHT
    });
    let shutdown_at = Instant::now();
    handle.shutdown();
    let result = join_within(serving, Duration::from_secs(15), "serve after shutdown");
    result.expect("serve returns Ok after a graceful shutdown");
    assert!(shutdown_at.elapsed() < Duration::from_secs(5));
    for client in clients {
        let response = join_within(client, Duration::from_secs(10), "client")
            .expect("an in-flight request gets its whole response");
        assert_eq!(response.status, 200);
        assert_eq!(response.body.len(), BODY_LEN, "the body is written in full");
    }
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
        "new connections are refused after shutdown"
    );
}

#[test]
fn idle_keep_alive_connections_close_at_once() {
    let (addr, handle, serving) =
        start_stoppable(server(), |_req, _info| Response::new(Body::new("hi")));
    let mut conn = RawConn::open(addr);
    conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(conn.read_response().unwrap().status, 200);
    let started = Instant::now();
    handle.shutdown();
    let rest = conn.read_to_close().expect("the idle connection is closed");
    assert!(rest.is_empty());
    assert!(started.elapsed() < Duration::from_secs(2));
    join_within(serving, Duration::from_secs(5), "serve").unwrap();
}

#[test]
fn shutdown_timeout_bounds_the_drain() {
    let server = server().shutdown_timeout(Duration::from_millis(500));
    let (addr, handle, serving) = start_stoppable(server, |_req, _info| {
        // Longer than the drain may last.
        thread::sleep(Duration::from_secs(5));
        Response::new(Body::new("too late"))
    });
    let mut stream = connect_with_timeout(addr, Duration::from_secs(10));
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    wait_for_stats(&handle, "the handler runs", |s| s.handlers_running == 1);
    let started = Instant::now();
    handle.shutdown();
    join_within(serving, Duration::from_secs(4), "serve").unwrap();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(450),
        "returned early: {elapsed:?}"
    );
    // The unfinished request's connection was closed without a response, by
    // the shutdown timeout, not when the handler eventually returned.
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    assert!(reply.is_empty(), "no response was due: {reply:?}");
    let closed_after = started.elapsed();
    assert!(
        closed_after < Duration::from_secs(4),
        "the connection stayed open until the handler returned ({closed_after:?})"
    );
}

/// `serve` used to return while handlers still ran on detached threads. Now,
/// after the drain runs out, it waits (up to a second) for the handlers whose
/// connections it closed: a handler that returns within that grace has
/// returned when `serve` does.
#[test]
fn serve_returned_while_handlers_still_ran_on_detached_threads() {
    let (started_tx, started) = std::sync::mpsc::channel();
    let finished = Arc::new(AtomicUsize::new(0));
    let done = finished.clone();
    let server = server().shutdown_timeout(Duration::from_millis(100));
    let (addr, handle, serving) = start_stoppable(server, move |_req, _info| {
        started_tx.send(()).unwrap();
        // Past the drain, within the grace after it.
        thread::sleep(Duration::from_millis(600));
        done.fetch_add(1, Ordering::SeqCst);
        Response::new(Body::new("late"))
    });
    let mut stream = connect_with_timeout(addr, Duration::from_secs(10));
    stream
        // With a body, so the handler runs apart from its connection, which
        // the shutdown timeout then closes under it.
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        .unwrap();
    started
        .recv_timeout(Duration::from_secs(5))
        .expect("the handler started");
    handle.shutdown();
    join_within(serving, Duration::from_secs(5), "serve").unwrap();
    assert_eq!(
        finished.load(Ordering::SeqCst),
        1,
        "the handler had returned when serve did"
    );
}

/// `shutdown_timeout` used to take a plain `Duration`; `None` now means no
/// limit: the drain waits for a handler slower than any default would matter
/// here, and its client gets the whole response.
#[test]
fn shutdown_timeout_none_waits_for_a_slow_handler() {
    let (started_tx, started) = std::sync::mpsc::channel();
    let server = server().shutdown_timeout(None);
    let (addr, handle, serving) = start_stoppable(server, move |_req, _info| {
        started_tx.send(()).unwrap();
        // Slower than the test would wait for nothing.
        thread::sleep(Duration::from_millis(1500));
        Response::new(Body::new(vec![b'x'; BODY_LEN]))
    });
    let mut conn = RawConn::new(connect_with_timeout(addr, Duration::from_secs(10)));
    conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    started
        .recv_timeout(Duration::from_secs(5))
        .expect("the handler started");
    handle.shutdown();
    let response = conn
        .read_response()
        .expect("the in-flight request is answered");
    assert_eq!(response.status, 200);
    assert_eq!(response.body.len(), BODY_LEN, "the body is written in full");
    join_within(serving, Duration::from_secs(10), "serve").unwrap();
}

#[test]
fn shutdown_twice_before_and_after_serve_is_harmless() {
    let server = server();
    let handle = server.handle();
    handle.shutdown();
    handle.shutdown();
    // Requested before serve: serve returns at once.
    within(Duration::from_secs(5), "serve", move || {
        server.serve(|_req, _info| Response::new(Body::empty()))
    })
    .unwrap();
    handle.shutdown();

    let (_, handle, serving) =
        start_stoppable(common::server(), |_req, _info| Response::new(Body::empty()));
    handle.clone().shutdown();
    join_within(serving, Duration::from_secs(5), "serve").unwrap();
    handle.shutdown();
}

#[cfg(feature = "http2")]
#[test]
fn http2_connection_gets_goaway_and_finishes_its_stream() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};

    let (addr, handle, serving) = start_stoppable(server(), |_req, _info| {
        // Still running when the shutdown starts.
        thread::sleep(Duration::from_millis(500));
        Response::new(Body::new("finished"))
    });
    let runtime = common::tokio_runtime();
    let body = runtime.block_on(async move {
        let (mut sender, connection) = common::h2_connect(addr).await;
        let request = http::Request::get(format!("http://{addr}/"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = tokio::spawn(sender.send_request(request));
        // The stream's handler runs (polled without blocking the runtime,
        // which sends the request).
        let deadline = Instant::now() + Duration::from_secs(10);
        while handle.stats().handlers_running == 0 {
            assert!(Instant::now() < deadline, "the stream's handler never ran");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        handle.shutdown();
        let response = tokio::time::timeout(Duration::from_secs(5), response)
            .await
            .expect("the in-flight stream completes")
            .unwrap()
            .expect("the stream is answered, not refused");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        // After GOAWAY and the last stream, the server closes the connection.
        tokio::time::timeout(Duration::from_secs(5), connection)
            .await
            .expect("the connection ends after GOAWAY")
            .unwrap()
            .ok();
        body
    });
    assert_eq!(&body[..], b"finished");
    join_within(serving, Duration::from_secs(5), "serve").unwrap();
}

/// The last response on a keep-alive connection during a graceful shutdown
/// says `Connection: close`, since the server closes the connection after
/// it. A request without a body used to get no such header (its handler ran
/// inside the connection's poll, which the shutdown could not reach until
/// the response was written) while one with a body did.
#[test]
fn last_response_at_shutdown_says_connection_close_with_or_without_a_body() {
    let (started_tx, started) = std::sync::mpsc::channel();
    // Opened by the test once the shutdown has started.
    let gate = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let handler_gate = gate.clone();
    let server = server().max_workers(4);
    let (addr, handle, serving) = start_stoppable(server, move |req: astra::Request, _info| {
        if req.uri().path() == "/slow" {
            started_tx.send(()).unwrap();
            let (open, opened) = &*handler_gate;
            // Bounded, to fail rather than hang if the test never opens it.
            let _ = opened
                .wait_timeout_while(open.lock().unwrap(), Duration::from_secs(10), |o| !*o)
                .unwrap();
        }
        Response::new(Body::new("hi"))
    });
    let requests: [&str; 2] = [
        "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    ];
    let mut conns: Vec<_> = requests
        .iter()
        .map(|request| {
            let mut conn = RawConn::new(connect_with_timeout(addr, Duration::from_secs(10)));
            // A first exchange: the connection is kept alive.
            conn.send(request.replace("{path}", "/").as_bytes());
            let first = conn.read_response().unwrap();
            assert_eq!(first.header("connection"), None, "{}", first.head);
            // The second is in flight when the shutdown starts.
            conn.send(request.replace("{path}", "/slow").as_bytes());
            started
                .recv_timeout(Duration::from_secs(5))
                .expect("the handler started");
            conn
        })
        .collect();
    handle.shutdown();
    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
    for (conn, request) in conns.iter_mut().zip(requests) {
        let what = request.split(' ').next().unwrap();
        let last = conn
            .read_response()
            .expect("the in-flight request is answered");
        assert_eq!(last.body_str(), "hi");
        assert_eq!(
            last.header("connection"),
            Some("close"),
            "the last response to a {what} has no `Connection: close`:\n{}",
            last.head
        );
        let rest = conn.read_to_close().expect("the connection is closed");
        assert!(rest.is_empty());
    }
    join_within(serving, Duration::from_secs(5), "serve").unwrap();
}

/// A blocking upgrade whose thread neither reads nor writes (it sleeps)
/// never polls its socket: the shutdown timeout still ends the connection
/// for the client at once, through the socket the reactor holds, while the
/// thread still owns it.
#[test]
fn a_blocked_upgrade_that_never_polls_is_closed_at_the_shutdown_timeout() {
    let (entered_tx, entered) = std::sync::mpsc::channel();
    let entered_tx = std::sync::Mutex::new(entered_tx);
    let server = server().shutdown_timeout(Duration::from_millis(300));
    let (addr, handle, serving) = start_stoppable(server, move |mut request, _info| {
        let upgrade = astra::Upgrade::from_request(&mut request).expect("an upgrade");
        let entered_tx = entered_tx.lock().unwrap().clone();
        upgrade.respond(switching("idle"), move |stream| {
            let _ = entered_tx.send(());
            thread::sleep(Duration::from_secs(3));
            drop(stream);
        })
    });
    let mut conn = RawConn::open(addr);
    conn.send(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: idle\r\n\r\n");
    assert_eq!(conn.read_head().unwrap().1, 101);
    entered.recv_timeout(Duration::from_secs(10)).unwrap();
    let started = Instant::now();
    handle.shutdown();
    let rest = conn.read_to_close().expect("closed by the server");
    assert!(rest.is_empty(), "{rest:?}");
    let closed_after = started.elapsed();
    assert!(
        closed_after >= Duration::from_millis(250) && closed_after < Duration::from_secs(2),
        "closed after {closed_after:?}, not at the shutdown timeout"
    );
    join_within(serving, Duration::from_secs(10), "serve").unwrap();
}
