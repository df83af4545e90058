//! A panic costs one response: a panicking handler gets a 500, a thousand of
//! them lose no worker, and a panicking `wrap_reader` aborts only its own
//! response.

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use astra::test::TestServer;
use astra::{Body, Request, Response, ResponseBuilder, Server};
use common::RawConn;

/// Produces `before` bytes, then panics. A megabyte is more than hyper buffers,
/// so the response head is on the wire before the panic.
struct PanickingReader {
    before: usize,
}

impl Read for PanickingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.before == 0 {
            panic!("INTENTIONAL panic inside a response body reader");
        }
        let n = buf.len().min(self.before);
        buf[..n].fill(b'r');
        self.before -= n;
        Ok(n)
    }
}

/// `/panic` panics, `/sleep/MS` sleeps, `/reader-panic` streams then panics
/// (chunked), `/reader-panic-length` the same with a Content-Length.
fn start(server: Server) -> TestServer {
    common::quiet_intentional_panics();
    common::start(server, |request: Request, _| {
        let path = request.uri().path();
        if path == "/panic" {
            panic!("INTENTIONAL panic in a handler");
        }
        if path == "/panic-string" {
            std::panic::panic_any(String::from("INTENTIONAL panic with a String payload"));
        }
        if path == "/reader-panic" {
            return Response::new(Body::wrap_reader(PanickingReader { before: 1 << 20 }));
        }
        if path == "/reader-panic-length" {
            return ResponseBuilder::new()
                .header("content-length", "4194304")
                .body(Body::wrap_reader(PanickingReader { before: 1 << 20 }))
                .unwrap();
        }
        if let Some(ms) = path.strip_prefix("/sleep/") {
            thread::sleep(Duration::from_millis(ms.parse().unwrap()));
        }
        Response::new(Body::new("fine"))
    })
}

#[test]
fn panicking_handler_gets_500() {
    let server = start(common::server());
    let addr = server.addr();
    for path in ["/panic", "/panic-string"] {
        let mut conn = RawConn::open(addr);
        conn.send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
        let response = conn.read_response().unwrap();
        assert_eq!(response.status, 500, "{}", response.head);
        // The connection survives the panic.
        conn.send(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n");
        let response = conn
            .read_response()
            .expect("connection still usable after a panic");
        assert_eq!(response.body_str(), "fine");
    }
}

#[test]
fn thousand_panics_lose_no_worker() {
    let server = start(common::server().max_workers(4));
    let addr = server.addr();
    // The same check before any panic, so a failure below is the panics' doing.
    let took = four_sleepers(addr);
    assert!(
        took < Duration::from_millis(900),
        "four 500 ms handlers with max_workers(4) took {took:?} before any panic"
    );
    let clients: Vec<_> = (0..4)
        .map(|_| {
            thread::spawn(move || {
                let agent = common::agent();
                for _ in 0..250 {
                    let response = agent.get(&common::url(addr, "/panic")).call().unwrap();
                    assert_eq!(response.status(), 500);
                }
            })
        })
        .collect();
    for client in clients {
        common::join_within(client, Duration::from_secs(60), "1,000 panics");
    }

    // Full concurrency is still there: four 500 ms handlers at once.
    let took = four_sleepers(addr);
    assert!(
        took < Duration::from_millis(900),
        "four 500 ms handlers with max_workers(4) took {took:?} after 1,000 panics: a worker was lost"
    );
}

/// Runs four 500 ms handlers at once and returns how long they took.
fn four_sleepers(addr: SocketAddr) -> Duration {
    let start = Instant::now();
    let sleepers: Vec<_> = (0..4)
        .map(|_| thread::spawn(move || common::get(addr, "/sleep/500")))
        .collect();
    for sleeper in sleepers {
        let (status, _) = common::join_within(sleeper, Duration::from_secs(10), "sleeper");
        assert_eq!(status, 200);
    }
    start.elapsed()
}

#[test]
fn panicking_wrap_reader_aborts_only_that_response() {
    let server = start(common::server().max_workers(1));
    let addr = server.addr();
    for round in 0..5 {
        // Chunked: the body must not end with the last chunk; the connection closes.
        let mut conn = RawConn::open(addr);
        conn.send(b"GET /reader-panic HTTP/1.1\r\nHost: test\r\n\r\n");
        let (_, status, head, headers) = conn.read_head().unwrap();
        assert_eq!(status, 200, "{head}");
        assert!(headers
            .iter()
            .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked")));
        let err = conn
            .read_chunked()
            .expect_err("a panicking reader must not produce a complete chunked body");
        assert!(
            !matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "round {round}: the connection was left open after the reader panicked: {err}"
        );

        // With a Content-Length: fewer bytes, then the connection closes.
        let mut conn = RawConn::open(addr);
        conn.send(b"GET /reader-panic-length HTTP/1.1\r\nHost: test\r\n\r\n");
        let (_, status, head, _) = conn.read_head().unwrap();
        assert_eq!(status, 200, "{head}");
        let rest = conn
            .read_to_close()
            .expect("the connection must be closed after the reader panicked");
        assert_eq!(rest.len(), 1 << 20, "round {round}");

        // The server, and its only worker, carry on.
        let start = Instant::now();
        assert_eq!(common::get(addr, "/"), (200, "fine".to_string()));
        assert!(start.elapsed() < Duration::from_secs(2));
    }
}

#[test]
fn panicking_wrap_reader_does_not_disturb_other_connections() {
    let server = start(common::server().max_workers(2));
    let addr = server.addr();
    let mut keep = RawConn::open(addr);
    keep.send(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n");
    assert_eq!(keep.read_response().unwrap().body_str(), "fine");
    for _ in 0..20 {
        let mut conn = RawConn::open(addr);
        conn.send(b"GET /reader-panic HTTP/1.1\r\nHost: test\r\n\r\n");
        let _ = conn.read_head().unwrap();
        assert!(conn.read_chunked().is_err());
    }
    // The kept-alive connection opened before is still served.
    keep.send(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n");
    assert_eq!(keep.read_response().unwrap().body_str(), "fine");
}

/// A reader that fails with an I/O error (not a panic) aborts its response the
/// same way.
#[test]
fn failing_wrap_reader_aborts_only_that_response() {
    struct Failing(usize);
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("the source broke"));
            }
            let n = buf.len().min(self.0);
            buf[..n].fill(b'f');
            self.0 -= n;
            Ok(n)
        }
    }
    let server = common::start(common::server().max_workers(1), |request: Request, _| {
        if request.uri().path() == "/fail" {
            Response::new(Body::wrap_reader(Failing(1 << 20)))
        } else {
            Response::new(Body::new("fine"))
        }
    });
    let addr = server.addr();
    for _ in 0..3 {
        let mut conn = RawConn::open(addr);
        conn.send(b"GET /fail HTTP/1.1\r\nHost: test\r\n\r\n");
        let (_, status, head, _) = conn.read_head().unwrap();
        assert_eq!(status, 200, "{head}");
        let err = conn
            .read_chunked()
            .expect_err("a failing reader must not produce a complete chunked body");
        assert!(
            !matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the connection was left open after the reader failed: {err}"
        );
        assert_eq!(common::get(addr, "/"), (200, "fine".to_string()));
    }
}
