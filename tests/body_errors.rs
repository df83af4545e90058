//! What a handler's body read reports, by `io::ErrorKind`: a timeout, a
//! client gone mid-body, a malformed chunked body, and an HTTP/2 stream
//! reset, each with hyper's error as the source where hyper has one.

mod common;

use std::io::{self, Read};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

use astra::test::TestServer;
use astra::{Body, ConnectionInfo, Request, Response, Server};
use common::*;

/// A server whose handler reads its whole body and reports how it ended.
fn reporting(server: Server) -> (TestServer, mpsc::Receiver<io::Result<usize>>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let server = start(
        server,
        move |mut request: Request, _info: ConnectionInfo| {
            let mut body = Vec::new();
            let result = request.body_mut().reader().read_to_end(&mut body);
            let _ = tx.lock().unwrap().send(result);
            Response::new(Body::empty())
        },
    );
    (server, rx)
}

fn kind_of(rx: &mpsc::Receiver<io::Result<usize>>) -> io::Error {
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the handler reports")
        .expect_err("the read fails")
}

#[test]
fn a_client_gone_mid_body_is_unexpected_eof() {
    let (server, rx) = reporting(server());
    let addr = server.addr();
    let mut conn = RawConn::open(addr);
    conn.send(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nonly ten b");
    conn.stream().shutdown(std::net::Shutdown::Both).unwrap();
    let err = kind_of(&rx);
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    assert!(
        std::error::Error::source(&err).is_some(),
        "hyper's error is the source"
    );
}

#[test]
fn a_malformed_chunked_body_is_invalid_data() {
    let (server, rx) = reporting(server());
    let addr = server.addr();
    let mut conn = RawConn::open(addr);
    conn.send(
        b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    );
    let err = kind_of(&rx);
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
}

#[test]
fn a_body_that_stops_coming_times_out() {
    let (server, rx) = reporting(server().body_read_timeout(Duration::from_millis(200)));
    let addr = server.addr();
    let mut conn = RawConn::open(addr);
    conn.send(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nsome");
    let err = kind_of(&rx);
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    drop(conn);
}

/// A request body that sends one chunk and then fails, which makes hyper's
/// client reset the stream.
#[cfg(feature = "http2")]
struct PartThenFail(u8);

#[cfg(feature = "http2")]
impl http_body::Body for PartThenFail {
    type Data = bytes::Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, io::Error>>> {
        self.0 += 1;
        std::task::Poll::Ready(Some(match self.0 {
            1 => Ok(http_body::Frame::data(bytes::Bytes::from_static(b"part"))),
            _ => Err(io::Error::other("the client gives up")),
        }))
    }
}

#[cfg(feature = "http2")]
#[test]
fn an_http2_stream_reset_mid_body_is_connection_reset() {
    let (server, rx) = reporting(server());
    let addr = server.addr();
    // Kept to the end: dropping it would close the connection too early.
    let runtime = tokio_runtime();
    runtime.block_on(async move {
        let (mut sender, _connection) = h2_connect(addr).await;
        let request = http::Request::post(format!("http://{addr}/"))
            .body(PartThenFail(0))
            .unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request)).await;
    });
    let err = kind_of(&rx);
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err:?}");
}
