//! Connection limits and serving on a listener bound elsewhere.

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use astra::{Body, Response, Server};
use common::*;

#[test]
fn at_max_connections_new_clients_wait_until_one_closes() {
    let server = start(server().max_connections(2), |_req, _info| {
        Response::new(Body::new("ok"))
    });
    let addr = server.addr();
    let mut first = RawConn::open(addr);
    let mut second = RawConn::open(addr);
    for conn in [&mut first, &mut second] {
        conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(conn.read_response().unwrap().status, 200);
    }
    // The kernel completes the handshake (backlog), but the server does not
    // accept, so nothing is answered yet; the client is not dropped either.
    let mut third = RawConn::open(addr);
    third.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(third.is_quiet_for(Duration::from_millis(500)));
    drop(first);
    let started = Instant::now();
    let response = third.read_response().expect("answered once a slot frees");
    assert_eq!(response.status, 200);
    assert!(started.elapsed() < Duration::from_secs(2));
    // The second connection still works.
    second.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(second.read_response().unwrap().status, 200);
}

#[test]
fn serves_on_an_existing_listener() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::from_listener(listener);
    assert_eq!(server.local_addr().unwrap(), addr);
    let _server = start(server, |_req, _info| {
        Response::new(Body::new("from a listener"))
    });
    assert_eq!(get(addr, "/"), (200, "from a listener".to_string()));
}

fn request_with_header_of(len: usize) -> Vec<u8> {
    let mut request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', len));
    request.extend_from_slice(b"\r\n\r\n");
    request
}

#[test]
fn request_heads_over_64_kib_are_refused_by_default() {
    let server = start(server(), |_req, _info| Response::new(Body::new("ok")));
    let addr = server.addr();
    let response = raw_request(addr, &request_with_header_of(60 * 1024));
    assert_eq!(response.status, 200);
    let response = raw_request(addr, &request_with_header_of(70 * 1024));
    assert_eq!(response.status, 431);
}

#[test]
fn http1_max_header_size_is_tunable() {
    let server = server().http1_max_header_size(200 * 1024);
    let server = start(server, |_req, _info| Response::new(Body::new("ok")));
    let addr = server.addr();
    let response = raw_request(addr, &request_with_header_of(150 * 1024));
    assert_eq!(response.status, 200);
}
