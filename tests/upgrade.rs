//! Protocol upgrades served as blocking streams: bytes pipelined after the
//! head, a client that goes away, the bound on blocking streams, timeouts,
//! graceful shutdown, and HTTP/2 extended CONNECT.

mod common;

use std::io::{self, BufRead, Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use astra::test::TestServer;
use astra::{Body, ConnectionInfo, Request, ResponseBuilder, Server, Upgrade, Upgraded};
use common::*;

/// Echoes every line, upper-cased, until the client closes; then reports.
fn echo_lines(stream: Upgraded, done: mpsc::Sender<io::Result<usize>>) {
    let mut lines = 0;
    let mut reader = io::BufReader::new(stream);
    let result = loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => break Ok(lines),
            Ok(_) => {
                lines += 1;
                let stream = reader.get_mut();
                if let Err(err) = stream.write_all(line.to_uppercase().as_bytes()) {
                    break Err(err);
                }
            }
            Err(err) => break Err(err),
        }
    };
    let _ = done.send(result);
}

/// A server whose `/echo` upgrades to the line-echo protocol; every
/// continuation reports how it ended on the returned channel.
fn echo_server(server: Server) -> (TestServer, mpsc::Receiver<io::Result<usize>>) {
    let (done_tx, done_rx) = mpsc::channel();
    let done_tx = std::sync::Mutex::new(done_tx);
    let server = start(
        server,
        move |mut request: Request, _info: ConnectionInfo| {
            let Some(upgrade) = Upgrade::from_request(&mut request) else {
                return ResponseBuilder::new()
                    .status(426)
                    .body(Body::new("upgrade needed"))
                    .unwrap();
            };
            let done = done_tx.lock().unwrap().clone();
            upgrade.respond(switching("echo"), move |stream| echo_lines(stream, done))
        },
    );
    (server, done_rx)
}

const UPGRADE_REQUEST: &[u8] =
    b"GET /echo HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n";

#[test]
fn bytes_pipelined_after_the_head_reach_the_upgraded_stream() {
    let (server, done) = echo_server(server());
    let addr = server.addr();
    let mut conn = RawConn::open(addr);
    let mut request = UPGRADE_REQUEST.to_vec();
    request.extend_from_slice(b"first line\nsecond line\n");
    conn.send(&request);
    let (_, status, _, headers) = conn.read_head().unwrap();
    assert_eq!(status, 101);
    assert!(headers.contains(&("upgrade".into(), "echo".into())));
    let mut line = String::new();
    conn.reader.read_line(&mut line).unwrap();
    assert_eq!(line, "FIRST LINE\n");
    line.clear();
    conn.reader.read_line(&mut line).unwrap();
    assert_eq!(line, "SECOND LINE\n");
    conn.send(b"third\n");
    line.clear();
    conn.reader.read_line(&mut line).unwrap();
    assert_eq!(line, "THIRD\n");
    conn.stream().shutdown(std::net::Shutdown::Write).unwrap();
    let ended = done.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(ended.unwrap(), 3);
}

#[test]
fn a_plain_request_to_an_upgrade_handler_is_not_upgraded() {
    let (server, _done) = echo_server(server());
    let addr = server.addr();
    let response = raw_request(
        addr,
        b"GET /echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    assert_eq!(response.status, 426);
}

#[test]
fn a_refusal_status_is_sent_as_it_is_and_the_continuation_never_runs() {
    let ran = Arc::new(AtomicUsize::new(0));
    let ran2 = ran.clone();
    let server = start(
        server(),
        move |mut request: Request, _info: ConnectionInfo| {
            let upgrade = Upgrade::from_request(&mut request).expect("an upgrade request");
            let ran = ran2.clone();
            let refusal = ResponseBuilder::new()
                .status(403)
                .body(Body::new("no"))
                .unwrap();
            upgrade.respond(refusal, move |_stream| {
                ran.fetch_add(1, Ordering::SeqCst);
            })
        },
    );
    let addr = server.addr();
    let mut conn = RawConn::open(addr);
    conn.send(UPGRADE_REQUEST);
    let response = conn.read_response().unwrap();
    assert_eq!(response.status, 403);
    assert_eq!(response.body, b"no");
    // The connection goes on as HTTP/1.1.
    conn.send(UPGRADE_REQUEST);
    assert_eq!(conn.read_response().unwrap().status, 403);
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}

#[test]
fn a_client_that_disconnects_frees_its_thread_and_the_bound_holds() {
    let (server, done) = echo_server(server().max_blocking_upgrades(1));
    let addr = server.addr();
    let mut first = RawConn::open(addr);
    first.send(UPGRADE_REQUEST);
    assert_eq!(first.read_head().unwrap().1, 101);
    // Make sure the first stream's continuation is running.
    first.send(b"ping\n");
    let mut line = String::new();
    first.reader.read_line(&mut line).unwrap();
    assert_eq!(line, "PING\n");

    // The bound is one: a second upgrade is refused while the first runs.
    let mut second = RawConn::open(addr);
    second.send(UPGRADE_REQUEST);
    let refused = second.read_response().unwrap();
    assert_eq!(refused.status, 503);
    assert_eq!(refused.header("retry-after"), Some("1"));

    // The first client vanishes mid-stream: its continuation ends, and its
    // place is free again.
    drop(first);
    let ended = done.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(ended.is_ok(), "{ended:?}");
    // The slot is released just after the continuation reports.
    wait_until(Duration::from_secs(10), "the slot is released", || {
        let mut again = RawConn::open(addr);
        again.send(UPGRADE_REQUEST);
        again.read_head().unwrap().1 == 101
    });
}

#[test]
fn a_read_that_waits_too_long_times_out() {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let server = server().body_read_timeout(Duration::from_millis(300));
    let server = start(
        server,
        move |mut request: Request, _info: ConnectionInfo| {
            let upgrade = Upgrade::from_request(&mut request).unwrap();
            let tx = tx.lock().unwrap().clone();
            upgrade.respond(switching("echo"), move |mut stream| {
                let started = Instant::now();
                let mut buf = [0; 16];
                let result = stream.read(&mut buf).map_err(|e| e.kind());
                let _ = tx.send((result, started.elapsed()));
            })
        },
    );
    let addr = server.addr();
    let mut conn = RawConn::open(addr);
    conn.send(UPGRADE_REQUEST);
    assert_eq!(conn.read_head().unwrap().1, 101);
    let (result, waited) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(result, Err(io::ErrorKind::TimedOut));
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
}

#[test]
fn graceful_shutdown_tells_a_waiting_read_and_waits_for_the_stream() {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let server = server().shutdown_timeout(Duration::from_secs(10));
    let handle = server.handle();
    let addr = server.local_addr().unwrap();
    let serving = thread::spawn(move || {
        server.serve(move |mut request: Request, _info: ConnectionInfo| {
            let upgrade = Upgrade::from_request(&mut request).unwrap();
            let tx = tx.lock().unwrap().clone();
            upgrade.respond(switching("echo"), move |mut stream| {
                let _ = tx.send("running");
                let mut buf = [0; 16];
                let kind = stream.read(&mut buf).map_err(|e| e.kind());
                assert_eq!(kind, Err(io::ErrorKind::ConnectionAborted));
                assert!(stream.is_shutting_down());
                // Writes still work: say goodbye.
                stream.write_all(b"bye\n").unwrap();
                let _ = tx.send("said goodbye");
            })
        })
    });
    let mut conn = RawConn::open(addr);
    conn.send(UPGRADE_REQUEST);
    assert_eq!(conn.read_head().unwrap().1, 101);
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), "running");
    let started = Instant::now();
    handle.shutdown();
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        "said goodbye"
    );
    let mut line = String::new();
    conn.reader.read_line(&mut line).unwrap();
    assert_eq!(line, "bye\n");
    join_within(serving, Duration::from_secs(10), "serve").unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_stream_that_outlives_the_shutdown_timeout_is_closed() {
    let server = server().shutdown_timeout(Duration::from_millis(300));
    let handle = server.handle();
    let addr = server.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let serving = thread::spawn(move || {
        server.serve(move |mut request: Request, _info: ConnectionInfo| {
            let upgrade = Upgrade::from_request(&mut request).unwrap();
            let tx = tx.lock().unwrap().clone();
            upgrade.respond(switching("echo"), move |mut stream| {
                let _ = tx.send(());
                // Ignores the shutdown and keeps reading.
                let mut buf = [0; 16];
                while !matches!(stream.read(&mut buf), Ok(0)) {
                    if !stream.is_shutting_down() {
                        break;
                    }
                }
            })
        })
    });
    let mut conn = RawConn::open(addr);
    conn.send(UPGRADE_REQUEST);
    assert_eq!(conn.read_head().unwrap().1, 101);
    rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let started = Instant::now();
    handle.shutdown();
    // The server closes the socket at the shutdown timeout.
    let rest = read_until_closed(conn.reader.get_mut()).unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    join_within(serving, Duration::from_secs(10), "serve").unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn many_upgrades_open_and_close() {
    let (server, done) = echo_server(server());
    let addr = server.addr();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            thread::spawn(move || {
                for i in 0..50 {
                    let mut conn = RawConn::open(addr);
                    conn.send(UPGRADE_REQUEST);
                    assert_eq!(conn.read_head().unwrap().1, 101);
                    conn.send(format!("n{i}\n").as_bytes());
                    let mut line = String::new();
                    conn.reader.read_line(&mut line).unwrap();
                    assert_eq!(line, format!("N{i}\n"));
                }
            })
        })
        .collect();
    for client in clients {
        join_within(client, Duration::from_secs(60), "a client");
    }
    for _ in 0..400 {
        done.recv_timeout(Duration::from_secs(10))
            .unwrap()
            .expect("every stream ended cleanly");
    }
}

#[cfg(feature = "http2")]
#[test]
fn http2_extended_connect_gives_a_blocking_stream() {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let server = server().http2_enable_connect_protocol();
    let server = start(
        server,
        move |mut request: Request, _info: ConnectionInfo| {
            let protocol = request
                .extensions()
                .get::<hyper::ext::Protocol>()
                .map(|p| p.as_str().to_owned());
            let upgrade = Upgrade::from_request(&mut request).expect("CONNECT upgrades");
            let tx = tx.lock().unwrap().clone();
            let ok = ResponseBuilder::new()
                .status(200)
                .body(Body::empty())
                .unwrap();
            upgrade.respond(ok, move |stream| {
                let _ = tx.send(protocol);
                let (done, _) = mpsc::channel();
                echo_lines(stream, done);
            })
        },
    );
    let addr = server.addr();
    let echoed = h2_extended_connect(addr, "echo", &[], b"over h2\n", |got| got.ends_with(b"\n"));
    assert_eq!(echoed, b"OVER H2\n");
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).unwrap().as_deref(),
        Some("echo")
    );
}

/// An upgraded stream's read timeout names itself in the error.
#[test]
fn an_upgraded_read_timeout_error_says_which_timeout_fired() {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let server = start(
        server(),
        move |mut request: Request, _info: ConnectionInfo| {
            let upgrade = Upgrade::from_request(&mut request).unwrap();
            let tx = tx.lock().unwrap().clone();
            upgrade.respond(switching("echo"), move |mut stream| {
                stream.set_read_timeout(Some(Duration::from_millis(200)));
                let err = stream.read(&mut [0; 16]).unwrap_err();
                let _ = tx.send((err.kind(), astra::Timeout::of(&err)));
            })
        },
    );
    let mut conn = RawConn::open(server.addr());
    conn.send(UPGRADE_REQUEST);
    assert_eq!(conn.read_head().unwrap().1, 101);
    let got = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(
        got,
        (io::ErrorKind::TimedOut, Some(astra::Timeout::UpgradedRead))
    );
}

/// `max_blocking_upgrades(0)` allows no blocking upgrade: each is answered
/// 503 and its continuation never runs; ordinary requests are served.
#[test]
fn max_blocking_upgrades_zero_refuses_every_blocking_upgrade() {
    let ran = Arc::new(AtomicUsize::new(0));
    let counted = ran.clone();
    let server = start(
        server().max_blocking_upgrades(0),
        move |mut request: Request, _info: ConnectionInfo| {
            let Some(upgrade) = Upgrade::from_request(&mut request) else {
                return astra::Response::new(Body::new("plain"));
            };
            let counted = counted.clone();
            upgrade.respond(switching("echo"), move |_stream| {
                counted.fetch_add(1, Ordering::SeqCst);
            })
        },
    );
    let addr = server.addr();
    for _ in 0..2 {
        let mut conn = RawConn::open(addr);
        conn.send(UPGRADE_REQUEST);
        let refused = conn.read_response().unwrap();
        assert_eq!(refused.status, 503);
        assert_eq!(refused.header("retry-after"), Some("1"));
    }
    assert_eq!(get(addr, "/"), (200, "plain".to_string()));
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}
