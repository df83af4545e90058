//! Server options reach hyper: keep-alive, half-close, the buffer limit, the
//! protocol modes and title-case headers, each checked on the wire.

mod common;

use std::io::Write;
use std::net::{Shutdown, SocketAddr};
use std::thread;
use std::time::{Duration, Instant};

use astra::{Body, Request, Response, ResponseBuilder, Server};
use common::RawConn;

fn start(server: Server) -> common::Started {
    common::start(server, |request: Request, _| {
        if let Some(ms) = request.uri().path().strip_prefix("/sleep/") {
            thread::sleep(Duration::from_millis(ms.parse().unwrap()));
        }
        ResponseBuilder::new()
            .header("x-custom-thing", "1")
            .body(Body::new("hello"))
            .unwrap()
    })
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n";

/// `worker_keep_alive` used to take a plain `Duration`; with `None` the
/// workers the pool grows to never leave, and it serves as before.
#[test]
fn worker_keep_alive_none_keeps_serving() {
    let server = start(common::server().max_workers(4).worker_keep_alive(None));
    let addr = server.addr();
    let sleepers: Vec<_> = (0..4)
        .map(|_| thread::spawn(move || common::get(addr, "/sleep/200")))
        .collect();
    for sleeper in sleepers {
        let response = common::join_within(sleeper, Duration::from_secs(10), "sleeper");
        assert_eq!(response, (200, "hello".to_string()));
    }
    assert_eq!(common::get(addr, "/"), (200, "hello".to_string()));
}

#[test]
fn http1_keep_alive_on_by_default_keeps_connection_open() {
    let server = start(common::server());
    let addr = server.addr();
    let mut conn = RawConn::open(addr);
    for _ in 0..3 {
        conn.send(GET);
        let response = conn.read_response().unwrap();
        assert_eq!(response.body_str(), "hello");
        assert_ne!(
            response.header("connection"),
            Some("close"),
            "{}",
            response.head
        );
    }
    assert!(
        conn.is_quiet_for(Duration::from_millis(300)),
        "kept-alive connection closed"
    );
}

#[test]
fn http1_keep_alive_false_sends_connection_close_and_closes() {
    let server = start(common::server().http1_keep_alive(false));
    let addr = server.addr();
    let mut conn = RawConn::open(addr);
    conn.send(GET);
    let response = conn.read_response().unwrap();
    assert_eq!(response.body_str(), "hello");
    assert!(
        response
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close")),
        "no `connection: close` with http1_keep_alive(false): {}",
        response.head
    );
    let rest = conn
        .read_to_close()
        .expect("the server must close the connection after one response");
    assert!(rest.is_empty());
}

/// The client shuts down its writing side right after its request, while the
/// handler is still busy.
fn half_closed_request(addr: SocketAddr) -> Vec<u8> {
    let mut stream = common::connect(addr);
    stream
        .write_all(b"GET /sleep/300 HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    common::read_until_closed(&mut stream).expect("the server must close the connection in the end")
}

#[test]
fn http1_half_close_true_still_answers_after_client_shuts_down_write() {
    let server = start(common::server().http1_half_close(true));
    let addr = server.addr();
    let reply = half_closed_request(addr);
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("HTTP/1.1 200"), "got {text:?}");
    assert!(text.ends_with("hello"), "got {text:?}");
}

#[test]
fn http1_half_close_false_closes_on_client_eof() {
    let server = start(common::server().http1_half_close(false));
    let addr = server.addr();
    let start = Instant::now();
    let reply = half_closed_request(addr);
    // The end of stream ends the connection: the 300 ms handler's response is
    // never written, and the connection is closed by the time it returns.
    assert!(
        reply.is_empty(),
        "with http1_half_close(false) a half-closed connection still got {:?}",
        String::from_utf8_lossy(&reply)
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "closed after {:?}",
        start.elapsed()
    );
}

#[test]
fn http1_max_buf_size_refuses_larger_request_head() {
    let server = start(common::server().http1_max_buf_size(8192));
    let addr = server.addr();
    // A head well within the limit is served.
    let small = format!(
        "GET / HTTP/1.1\r\nHost: test\r\nX-Fill: {}\r\n\r\n",
        "a".repeat(2000)
    );
    assert_eq!(common::raw_request(addr, small.as_bytes()).status, 200);

    let big = format!(
        "GET / HTTP/1.1\r\nHost: test\r\nX-Fill: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let mut stream = common::connect(addr);
    // The server may stop reading (and reset) before all of it is written.
    let _ = stream.write_all(big.as_bytes());
    let reply = common::read_until_closed(&mut stream)
        .expect("the server must answer or close a connection whose head is too large");
    let text = String::from_utf8_lossy(&reply);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431"),
        "a 20 KB head with http1_max_buf_size(8192) got {text:?}"
    );

    // Without the option, the same head is fine.
    let server = start(common::server());
    let addr = server.addr();
    assert_eq!(common::raw_request(addr, big.as_bytes()).status, 200);
}

#[test]
fn http1_title_case_headers_writes_title_case() {
    let server = start(common::server().http1_title_case_headers(true));
    let addr = server.addr();
    let response = common::raw_request(addr, GET);
    assert!(
        response.head.contains("\r\nContent-Length: 5\r\n"),
        "{}",
        response.head
    );
    assert!(
        response.head.contains("\r\nX-Custom-Thing: 1\r\n"),
        "{}",
        response.head
    );

    let server = start(common::server());
    let addr = server.addr();
    let response = common::raw_request(addr, GET);
    assert!(
        response.head.contains("\r\ncontent-length: 5\r\n"),
        "{}",
        response.head
    );
    assert!(
        response.head.contains("\r\nx-custom-thing: 1\r\n"),
        "{}",
        response.head
    );
}

#[test]
fn from_listener_serves_on_that_listener() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::from_listener(listener);
    assert_eq!(server.local_addr().unwrap(), addr);
    let served = start(server);
    assert_eq!(served.addr(), addr);
    assert_eq!(common::get(addr, "/"), (200, "hello".to_string()));
}

#[test]
fn try_bind_reports_an_address_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = Server::try_bind(taken.local_addr().unwrap()).expect_err("the port is taken");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
}

#[test]
fn serve_clone_gives_each_request_a_clone() {
    use std::cell::Cell;
    #[derive(Clone)]
    struct PerRequest {
        count: Cell<u32>,
    }
    impl astra::Service for PerRequest {
        fn call(&self, _: Request, _: astra::ConnectionInfo) -> Response {
            self.count.set(self.count.get() + 1);
            Response::new(Body::new(self.count.get().to_string()))
        }
    }
    // `TestServer` takes a `Sync` service: serve_clone gets a thread of its own.
    let server = common::server();
    let addr = server.local_addr().unwrap();
    let handle = server.handle();
    let serving = thread::spawn(move || {
        server.serve_clone(PerRequest {
            count: Cell::new(0),
        })
    });
    for _ in 0..3 {
        assert_eq!(common::get(addr, "/"), (200, "1".to_string()));
    }
    handle.shutdown();
    common::join_within(serving, Duration::from_secs(10), "serve_clone")
        .expect("serve_clone returns Ok after a graceful shutdown");
}

#[cfg(feature = "http2")]
mod http2_modes {
    use super::*;

    /// The client preface and an empty SETTINGS frame.
    const H2_PREFACE: &[u8] =
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

    /// True if `reply` starts with an HTTP/2 SETTINGS frame (what an h2 server
    /// sends first).
    fn is_h2_settings(reply: &[u8]) -> bool {
        reply.len() >= 9 && reply[3] == 0x04 && reply[5..9] == [0, 0, 0, 0]
    }

    #[test]
    fn default_mode_serves_h2_prior_knowledge() {
        let server = start(common::server());
        let addr = server.addr();
        let mut stream = common::connect(addr);
        stream.write_all(H2_PREFACE).unwrap();
        let mut buf = [0; 64];
        let n = std::io::Read::read(&mut stream, &mut buf).unwrap();
        assert!(is_h2_settings(&buf[..n]), "got {:?}", &buf[..n]);
    }

    #[test]
    fn http1_only_does_not_serve_h2_preface() {
        let server = start(common::server().http1_only());
        let addr = server.addr();
        let mut stream = common::connect(addr);
        let _ = stream.write_all(H2_PREFACE);
        let reply = common::read_until_closed(&mut stream)
            .expect("the server must refuse and close an h2 preface with http1_only()");
        assert!(
            !is_h2_settings(&reply),
            "http1_only() served HTTP/2: {reply:?}"
        );
        let text = String::from_utf8_lossy(&reply);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 4") || text.starts_with("HTTP/1.1 5"),
            "got {text:?}"
        );
        // HTTP/1 still works.
        assert_eq!(common::get(addr, "/"), (200, "hello".to_string()));
    }

    #[test]
    fn http2_only_refuses_http1_request() {
        let server = start(common::server().http2_only());
        let addr = server.addr();
        let mut stream = common::connect(addr);
        let _ = stream.write_all(GET);
        let reply = common::read_until_closed(&mut stream)
            .expect("the server must close an HTTP/1.1 connection with http2_only()");
        let text = String::from_utf8_lossy(&reply);
        assert!(
            !text.contains("HTTP/1.1 200") && !text.contains("hello"),
            "http2_only() answered HTTP/1.1: {text:?}"
        );

        // An h2 prior-knowledge client is served.
        let mut stream = common::connect(addr);
        stream.write_all(H2_PREFACE).unwrap();
        let mut buf = [0; 64];
        let n = std::io::Read::read(&mut stream, &mut buf).unwrap();
        assert!(is_h2_settings(&buf[..n]), "got {:?}", &buf[..n]);
    }
}

#[test]
fn http1_pipeline_flush_answers_pipelined_requests_in_order() {
    let server = common::start(
        common::server().http1_pipeline_flush(true),
        |request: Request, _| Response::new(Body::new(request.uri().path().to_string())),
    );
    let addr = server.addr();
    let mut conn = RawConn::open(addr);
    let mut requests = Vec::new();
    for i in 0..20 {
        requests.extend_from_slice(format!("GET /{i} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
    }
    conn.send(&requests);
    for i in 0..20 {
        assert_eq!(conn.read_response().unwrap().body_str(), format!("/{i}"));
    }
}

#[test]
fn http1_writev_false_still_sends_correct_responses() {
    let server = common::start(common::server().http1_writev(false), |_: Request, _| {
        Response::new(Body::wrap_reader(common::Generated::new(3_000_000)))
    });
    let addr = server.addr();
    let mut conn = RawConn::open(addr);
    for _ in 0..2 {
        conn.send(GET);
        let response = conn.read_response().unwrap();
        assert_eq!(response.body.len(), 3_000_000);
        common::assert_whole_pattern(&response.body);
    }
}

/// Starts a server whose handler answers with the largest body chunk it saw
/// and the body's total length.
fn start_chunk_meter(server: Server) -> common::Started {
    common::start(server, |mut request: Request, _| {
        let (mut largest, mut total) = (0, 0);
        for chunk in request.body_mut() {
            let chunk = chunk.unwrap();
            largest = largest.max(chunk.len());
            total += chunk.len();
        }
        Response::new(Body::new(format!("{largest} {total}")))
    })
}

fn largest_chunk_of_upload(addr: SocketAddr, size: usize) -> usize {
    let (status, text) = common::within(Duration::from_secs(20), "an upload", move || {
        let response = common::agent()
            .post(&common::url(addr, "/"))
            .send(&vec![b'x'; size][..])
            .unwrap();
        let status = response.status().as_u16();
        (status, response.into_body().read_to_string().unwrap())
    });
    assert_eq!(status, 200);
    let (largest, total) = text.split_once(' ').unwrap();
    assert_eq!(
        total.parse::<usize>().unwrap(),
        size,
        "the whole body arrives"
    );
    largest.parse().unwrap()
}

/// hyper reads into whatever room its buffer has, which can be somewhat more
/// than the size it grows the buffer to (24 KiB chunks were seen with a 16 KiB
/// limit), so the bounds here are generous; hyper's own default (about
/// 400 KiB) gives 408 KiB chunks in this test.
#[test]
fn http1_max_buf_size_bounds_body_chunks() {
    // Default: 64 KiB.
    let server = start_chunk_meter(common::server());
    let addr = server.addr();
    let largest = largest_chunk_of_upload(addr, 4 << 20);
    assert!(largest <= 128 * 1024, "a {largest}-byte chunk by default");

    let server = start_chunk_meter(common::server().http1_max_buf_size(16 * 1024));
    let addr = server.addr();
    let largest = largest_chunk_of_upload(addr, 1 << 20);
    assert!(
        largest <= 64 * 1024,
        "a {largest}-byte chunk with a 16 KiB buffer"
    );
}
