//! `astra::test`: services called without a socket, and a test server that
//! stops when dropped; and the integration tests' own fixture around it.

mod common;

use std::io::{self, Read};
use std::net::TcpStream;
use std::time::Duration;

use astra::test::{TestRequest, TestServer};
use astra::{Body, ConnectionInfo, Request, Response, Server};

fn describe(mut request: Request, info: ConnectionInfo) -> Response {
    let mut body = String::new();
    let read = request.body_mut().reader().read_to_string(&mut body);
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .map_or("-".to_owned(), |v| v.to_str().unwrap().to_owned())
    };
    Response::new(Body::new(format!(
        "{} {} {:?} host={} length={} chunked={} peer={:?} body={body:?} read_ok={}",
        request.method(),
        request.uri(),
        request.version(),
        header("host"),
        header("content-length"),
        header("transfer-encoding"),
        info.peer_addr(),
        read.is_ok(),
    )))
}

#[test]
fn a_request_is_filled_in_as_a_connection_would() {
    let text = TestRequest::get("/a?b=1").call(&describe).text().unwrap();
    assert_eq!(
        text,
        "GET /a?b=1 HTTP/1.1 host=localhost length=- chunked=- peer=None body=\"\" read_ok=true"
    );
    let text = TestRequest::post("/up")
        .header("host", "example.com")
        .body("twelve bytes")
        .peer_addr("192.0.2.1:5000".parse().unwrap())
        .call(&describe)
        .text()
        .unwrap();
    assert_eq!(
        text,
        "POST /up HTTP/1.1 host=example.com length=12 chunked=- peer=Some(192.0.2.1:5000) \
         body=\"twelve bytes\" read_ok=true"
    );
}

#[test]
fn a_streamed_body_reaches_the_handler_in_full() {
    let data: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let expected = String::from_utf8(data.clone()).unwrap();
    let text = TestRequest::post("/stream")
        .body_reader(io::Cursor::new(data))
        .call(&describe)
        .text()
        .unwrap();
    assert!(text.contains("chunked=chunked"), "{}", &text[..100]);
    assert!(text.contains(&format!("body={expected:?}")));
}

#[test]
fn a_wrap_reader_response_is_readable_and_a_panic_is_a_500() {
    let service = |request: Request, _info: ConnectionInfo| {
        if request.uri().path() == "/panic" {
            panic!("on purpose");
        }
        Response::new(Body::wrap_reader(io::Cursor::new(vec![7u8; 100_000])))
    };
    let response = TestRequest::get("/").call(&service);
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().unwrap(), vec![7u8; 100_000]);
    let response = TestRequest::get("/panic").call(&service);
    assert_eq!(response.status(), 500);
}

#[test]
fn a_test_server_stops_when_dropped() {
    let server = TestServer::start(
        Server::bind("127.0.0.1:0"),
        |_r: Request, _i: ConnectionInfo| Response::new(Body::new("up")),
    );
    let addr = server.addr();
    assert_eq!(server.url("/x"), format!("http://{addr}/x"));
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5));
    assert!(stream.is_ok());
    drop(stream);
    drop(server); // returns once serve has returned
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).is_err(),
        "the listener is closed"
    );
}

/// `common::start`'s guard fails the test whose server could not start, which
/// `TestServer` alone would not tell: here `serve` finds no descriptor left
/// for its poller. In a child process, since the descriptor limit is the
/// whole process's.
#[test]
fn the_fixture_fails_a_test_whose_server_could_not_start() {
    const TEST: &str = "the_fixture_fails_a_test_whose_server_could_not_start";
    if !common::is_child(TEST) {
        common::run_in_child(TEST, Duration::from_secs(30));
        return;
    }
    let server = common::server();
    let soft = common::raise_nofile(0);
    common::set_nofile_soft(0);
    let started = common::start(server, |_r: Request, _i: ConnectionInfo| {
        Response::new(Body::empty())
    });
    common::wait_until(Duration::from_secs(10), "serve fails", || {
        started.ended_on_its_own()
    });
    common::set_nofile_soft(soft);
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(started)));
    let panic = dropped.expect_err("dropping the guard fails the test");
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .expect("a message");
    assert!(
        message.contains("serve returned before the test stopped it"),
        "{message}"
    );
}
