//! HTTP/1 basics over real sockets: framing of each kind of body, HTTP/1.0,
//! HEAD, pipelining, the peer address, and fresh connections that send their
//! request at once.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use astra::test::TestServer;
use astra::{Body, ConnectionInfo, Request, Response, ResponseBuilder};
use common::{RawConn, RawResponse};

fn start(
    service: impl Fn(Request, ConnectionInfo) -> Response + Send + Sync + 'static,
) -> TestServer {
    common::start(common::server(), service)
}

fn get_raw(addr: SocketAddr, path: &str) -> RawResponse {
    common::raw_request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes(),
    )
}

#[test]
fn body_new_sends_exact_content_length_not_chunked() {
    let server = start(|_, _| Response::new(Body::new("Hello, World!")));
    let addr = server.addr();
    let response = get_raw(addr, "/");
    assert_eq!(response.status, 200, "{}", response.head);
    assert_eq!(
        response.header("content-length"),
        Some("13"),
        "{}",
        response.head
    );
    assert!(!response.is_chunked(), "{}", response.head);
    assert_eq!(response.body_str(), "Hello, World!");

    // And through a real client.
    assert_eq!(common::get(addr, "/"), (200, "Hello, World!".to_string()));
}

#[test]
fn body_empty_sends_content_length_zero() {
    let server = start(|_, _| Response::new(Body::empty()));
    let addr = server.addr();
    let mut conn = RawConn::open(addr);
    conn.send(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n");
    let response = conn.read_response().unwrap();
    assert_eq!(response.status, 200, "{}", response.head);
    assert_eq!(
        response.header("content-length"),
        Some("0"),
        "{}",
        response.head
    );
    assert!(!response.is_chunked(), "{}", response.head);
    // Nothing follows the head: no stray chunk terminator.
    assert!(conn.is_quiet_for(Duration::from_millis(200)));
}

#[test]
fn wrap_reader_with_user_content_length_is_not_chunked() {
    let server = start(|_, _| {
        ResponseBuilder::new()
            .header("content-length", "100000")
            .body(Body::wrap_reader(common::Generated::new(100_000)))
            .unwrap()
    });
    let addr = server.addr();
    let mut conn = RawConn::open(addr);
    for _ in 0..2 {
        conn.send(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n");
        let response = conn.read_response().unwrap();
        assert_eq!(response.status, 200, "{}", response.head);
        assert_eq!(
            response.header("content-length"),
            Some("100000"),
            "{}",
            response.head
        );
        assert!(!response.is_chunked(), "{}", response.head);
        assert_eq!(response.body.len(), 100_000);
        common::assert_whole_pattern(&response.body);
    }
}

#[test]
fn wrap_reader_without_length_is_chunked_in_http11() {
    let server = start(|_, _| Response::new(Body::wrap_reader(common::Generated::new(100_000))));
    let addr = server.addr();
    let mut conn = RawConn::open(addr);
    for _ in 0..2 {
        conn.send(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n");
        let response = conn.read_response().unwrap();
        assert_eq!(response.status, 200, "{}", response.head);
        assert!(response.is_chunked(), "{}", response.head);
        assert_eq!(response.header("content-length"), None, "{}", response.head);
        assert_eq!(response.body.len(), 100_000);
        common::assert_whole_pattern(&response.body);
    }
}

#[test]
fn wrap_reader_to_http10_client_is_close_delimited() {
    let server = start(|_, _| Response::new(Body::wrap_reader(common::Generated::new(50_000))));
    let addr = server.addr();
    let mut conn = RawConn::open(addr);
    conn.send(b"GET / HTTP/1.0\r\n\r\n");
    let (_, status, head, headers) = conn.read_head().unwrap();
    assert_eq!(status, 200, "{head}");
    assert!(
        !headers.iter().any(|(n, _)| n == "transfer-encoding"),
        "an HTTP/1.0 client cannot take chunked: {head}"
    );
    let body = conn
        .read_to_close()
        .expect("the server closes to end the body");
    assert_eq!(body.len(), 50_000);
}

#[test]
fn http10_keep_alive_request_works() {
    let server =
        start(|request, _| Response::new(Body::new(format!("path={}", request.uri().path()))));
    let addr = server.addr();
    let mut conn = RawConn::open(addr);
    for i in 0..3 {
        conn.send(format!("GET /{i} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").as_bytes());
        let response = conn.read_response().unwrap_or_else(|err| {
            panic!("request {i} on the kept-alive HTTP/1.0 connection: {err}")
        });
        assert_eq!(response.status, 200, "{}", response.head);
        assert_eq!(response.body_str(), format!("path=/{i}"));
        assert!(
            response
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("keep-alive")),
            "HTTP/1.0 keep-alive must be confirmed: {}",
            response.head
        );
    }
}

#[test]
fn http10_without_keep_alive_is_closed_after_response() {
    let server = start(|_, _| Response::new(Body::new("one")));
    let addr = server.addr();
    let mut conn = RawConn::open(addr);
    conn.send(b"GET / HTTP/1.0\r\n\r\n");
    let response = conn.read_response().unwrap();
    assert_eq!(response.body_str(), "one");
    assert_eq!(
        conn.read_to_close().unwrap(),
        b"",
        "server must close the connection"
    );
}

#[test]
fn head_gets_headers_only() {
    let server = start(|_, _| Response::new(Body::new("Hello, World!")));
    let addr = server.addr();
    let mut conn = RawConn::open(addr);
    conn.send(b"HEAD / HTTP/1.1\r\nHost: test\r\n\r\n");
    let response = conn.read_response_to(true).unwrap();
    assert_eq!(response.status, 200, "{}", response.head);
    assert!(
        conn.is_quiet_for(Duration::from_millis(300)),
        "no body bytes may follow a HEAD response"
    );
    // The connection is still in sync: the next response starts cleanly.
    conn.send(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n");
    let response = conn.read_response().unwrap();
    assert_eq!(response.body_str(), "Hello, World!");
}

#[test]
fn head_does_not_need_to_read_wrap_reader() {
    // An endless reader: a server that tried to send (or drain) it for HEAD
    // would never finish the response.
    let read_called = Arc::new(AtomicBool::new(false));
    let flag = read_called.clone();
    let server = start(move |request, _| {
        if request.method() == "HEAD" {
            let flag = flag.clone();
            let endless = std::io::repeat(b'x').take(u64::MAX);
            let reader = Inspect {
                inner: endless,
                flag,
            };
            Response::new(Body::wrap_reader(reader))
        } else {
            Response::new(Body::new("after head"))
        }
    });
    let addr = server.addr();
    let mut conn = RawConn::open(addr);
    let start = Instant::now();
    conn.send(b"HEAD / HTTP/1.1\r\nHost: test\r\n\r\n");
    let response = conn.read_response_to(true).unwrap();
    assert_eq!(response.status, 200, "{}", response.head);
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(
        conn.is_quiet_for(Duration::from_millis(300)),
        "HEAD response had body bytes"
    );
    conn.send(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n");
    let response = conn.read_response().expect("connection usable after HEAD");
    assert_eq!(response.body_str(), "after head");
    eprintln!(
        "wrap_reader of the HEAD response was read: {}",
        read_called.load(Ordering::SeqCst)
    );

    struct Inspect<R> {
        inner: R,
        flag: Arc<AtomicBool>,
    }
    impl<R: Read> Read for Inspect<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.flag.store(true, Ordering::SeqCst);
            self.inner.read(buf)
        }
    }
}

#[test]
fn pipelined_requests_answered_in_order() {
    let server = start(|request, _| {
        let path = request.uri().path().to_string();
        // The first request is the slowest: answers must still come in order.
        let delay = match path.as_str() {
            "/1" => 300,
            "/2" => 100,
            _ => 0,
        };
        std::thread::sleep(Duration::from_millis(delay));
        Response::new(Body::new(path))
    });
    let addr = server.addr();
    let mut conn = RawConn::open(addr);
    let mut requests = Vec::new();
    for i in 1..=4 {
        requests.extend_from_slice(format!("GET /{i} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
    }
    // A POST with a body in the middle of the pipeline, too.
    requests.extend_from_slice(b"POST /5 HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\nhello");
    requests.extend_from_slice(b"GET /6 HTTP/1.1\r\nHost: test\r\n\r\n");
    conn.send(&requests);
    for i in 1..=6 {
        let response = conn
            .read_response()
            .unwrap_or_else(|err| panic!("pipelined response {i}: {err}"));
        assert_eq!(response.status, 200, "{}", response.head);
        assert_eq!(response.body_str(), format!("/{i}"));
    }
}

#[test]
fn peer_addr_matches_client_local_addr() {
    let server = start(|_, info| {
        Response::new(Body::new(
            info.peer_addr()
                .map_or_else(|| "none".to_string(), |a| a.to_string()),
        ))
    });
    let addr = server.addr();
    for _ in 0..3 {
        let mut conn = RawConn::open(addr);
        let local = conn.stream().local_addr().unwrap();
        conn.send(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n");
        let response = conn.read_response().unwrap();
        assert_eq!(response.body_str(), local.to_string());
    }
}

#[test]
fn post_body_echoed_through_ureq() {
    let server = start(|mut request, _| {
        let mut body = Vec::new();
        request.body_mut().reader().read_to_end(&mut body).unwrap();
        Response::new(Body::new(body))
    });
    let addr = server.addr();
    let mut response = common::agent()
        .post(&common::url(addr, "/echo"))
        .send(&b"some request body"[..])
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.body_mut().read_to_string().unwrap(),
        "some request body"
    );
}

/// Regression: a connection whose request is already in the socket when it is
/// registered with the reactor produces no new readiness event; the first read
/// must be attempted anyway, or the connection waits forever.
#[test]
fn lost_first_event_500_sequential_connections_all_answered() {
    let server = start(|_, _| Response::new(Body::new("ok")));
    let addr = server.addr();
    let per_request = Duration::from_secs(2);
    let started = Instant::now();
    for i in 0..500 {
        let mut stream = common::connect_with_timeout(addr, per_request);
        let t = Instant::now();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut conn = RawConn::new(stream);
        let response = conn.read_response().unwrap_or_else(|err| {
            panic!("connection {i} not answered within {per_request:?}: {err}")
        });
        assert_eq!(response.body_str(), "ok");
        assert!(
            t.elapsed() < per_request,
            "connection {i} took {:?}",
            t.elapsed()
        );
    }
    eprintln!("500 sequential connections in {:?}", started.elapsed());
}

/// Same, without `Connection: close`: the client closes each kept-alive
/// connection itself right after its response.
#[test]
fn lost_first_event_500_sequential_keep_alive_connections() {
    let server = start(|_, _| Response::new(Body::new("ok")));
    let addr = server.addr();
    for i in 0..500 {
        let mut conn = RawConn::new(common::connect_with_timeout(addr, Duration::from_secs(2)));
        conn.send(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n");
        let response = conn
            .read_response()
            .unwrap_or_else(|err| panic!("connection {i} not answered: {err}"));
        assert_eq!(response.body_str(), "ok");
    }
}

#[test]
fn two_hundred_pipelined_requests_in_one_write_answered_in_order() {
    let server = start(|request, _| Response::new(Body::new(request.uri().path().to_string())));
    let addr = server.addr();
    let mut conn = RawConn::open(addr);
    let mut requests = Vec::new();
    for i in 0..200 {
        requests.extend_from_slice(format!("GET /{i} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
    }
    // Written from another thread: the server may answer before reading it all.
    let mut writer = conn.stream().try_clone().unwrap();
    let sender = std::thread::spawn(move || writer.write_all(&requests).unwrap());
    for i in 0..200 {
        let response = conn
            .read_response()
            .unwrap_or_else(|err| panic!("pipelined response {i}: {err}"));
        assert_eq!(response.body_str(), format!("/{i}"));
    }
    common::join_within(sender, Duration::from_secs(10), "pipelined writes");
}
