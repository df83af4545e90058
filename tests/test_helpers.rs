//! `astra::test`: services called without a socket, and a test server that
//! stops when dropped (and fails the test if its `serve` failed).

mod common;

use std::io::{self, Read, Write};
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

/// `Upgrade: echo`: the continuation sends back what it reads until the end
/// of the stream, then says how many bytes it saw and returns.
fn echo_upgrade(mut request: Request, _info: ConnectionInfo) -> Response {
    let Some(upgrade) = astra::Upgrade::from_request(&mut request) else {
        return astra::ResponseBuilder::new()
            .status(426)
            .body(Body::new("ask for upgrade: echo"))
            .unwrap();
    };
    upgrade.respond(common::switching("echo"), |mut stream| {
        let mut buf = [0; 8192];
        let mut total = 0usize;
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    total += n;
                    if stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
        let _ = stream.write_all(format!("[{total} bytes]").as_bytes());
    })
}

fn upgrade_request() -> TestRequest {
    TestRequest::get("/")
        .header("connection", "upgrade")
        .header("upgrade", "echo")
}

#[test]
fn an_upgraded_stream_is_driven_through_memory_both_ways() {
    let response = upgrade_request().call(&echo_upgrade);
    assert_eq!(response.status(), 101);
    assert_eq!(response.headers()["upgrade"], "echo");
    let mut stream = response.into_upgraded().unwrap();
    // More than the in-memory buffer holds each way, so both ends wait for
    // room: 1 MiB of a pattern, read back while it is written.
    let sent: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    let mut copy = stream.try_clone().unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        copy.read_to_end(&mut got).map(|_| got)
    });
    stream.write_all(&sent).unwrap();
    stream.shutdown_write();
    let got = reader.join().unwrap().unwrap();
    assert!(
        got.len() >= sent.len(),
        "only {} bytes came back",
        got.len()
    );
    let (echoed, trailer) = got.split_at(sent.len());
    assert!(
        echoed == sent.as_slice(),
        "the echo differs from what was sent"
    );
    assert_eq!(trailer, format!("[{} bytes]", sent.len()).as_bytes());
}

#[test]
fn the_test_sees_the_end_when_the_continuation_returns_and_vice_versa() {
    // The continuation returns at the end of the input: the test reads its
    // last words, then the end of the stream.
    let mut stream = upgrade_request()
        .call(&echo_upgrade)
        .into_upgraded()
        .unwrap();
    stream.write_all(b"abc").unwrap();
    stream.shutdown_write();
    let mut all = String::new();
    stream.read_to_string(&mut all).unwrap();
    assert_eq!(all, "abc[3 bytes]");
    // The end of the stream is the continuation's shutdown (a half-close,
    // as on a socket); once its end is dropped right after, writing fails
    // instead of piling up.
    let mut last = Ok(());
    common::wait_until(Duration::from_secs(10), "a write fails", || {
        last = stream.write_all(b"more");
        last.is_err()
    });
    assert_eq!(last.unwrap_err().kind(), io::ErrorKind::BrokenPipe);

    // The test going away is the client going away: the continuation's
    // read sees the end of the stream and it returns (counted in its words,
    // which nobody reads any more; what matters is that it ends, which the
    // next test's bound on blocking upgrades would show if it did not).
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let handler = move |mut request: Request, _info: ConnectionInfo| {
        let upgrade = astra::Upgrade::from_request(&mut request).unwrap();
        let done = done_tx.clone();
        upgrade.respond(common::switching("echo"), move |mut stream| {
            let mut buf = [0; 16];
            let read = stream.read(&mut buf);
            done.send(read.map_err(|e| e.kind())).unwrap();
        })
    };
    let stream = upgrade_request().call(&handler).into_upgraded().unwrap();
    drop(stream);
    let read = done_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(read, Ok(0));
}

#[test]
fn a_stream_read_waits_at_most_its_timeout() {
    let handler = |mut request: Request, _info: ConnectionInfo| {
        let upgrade = astra::Upgrade::from_request(&mut request).unwrap();
        // Silent until the client goes.
        upgrade.respond(common::switching("echo"), |mut stream| {
            let _ = stream.read(&mut [0; 1]);
        })
    };
    let mut stream = upgrade_request().call(&handler).into_upgraded().unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(100)));
    let started = std::time::Instant::now();
    let err = stream.read(&mut [0; 1]).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert!(started.elapsed() >= Duration::from_millis(100));
}

#[test]
fn a_response_that_does_not_switch_has_no_stream() {
    // No Upgrade header: the handler refuses with 426.
    let err = TestRequest::get("/")
        .call(&echo_upgrade)
        .into_upgraded()
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    let message = err.to_string();
    assert!(message.contains("426"), "{message}");
    assert!(message.contains("ask for upgrade: echo"), "{message}");

    // A handler that takes the upgrade but answers 200 never switches.
    let handler = |mut request: Request, _info: ConnectionInfo| {
        let upgrade = astra::Upgrade::from_request(&mut request).unwrap();
        upgrade.respond(Response::new(Body::new("no")), |_stream| {
            panic!("a continuation ran after a 200")
        })
    };
    let err = upgrade_request()
        .call(&handler)
        .into_upgraded()
        .unwrap_err();
    assert!(err.to_string().contains("200 OK"), "{err}");
}

#[cfg(feature = "tls")]
#[test]
fn tls_facts_reach_the_handler() {
    use astra::rustls::pki_types::CertificateDer;
    use astra::rustls::{CipherSuite, ProtocolVersion};
    use astra::TlsInfo;

    let handler = |_request: Request, info: ConnectionInfo| {
        let text = match info.tls() {
            None => "plain".to_owned(),
            Some(tls) => format!(
                "{:?} {:?} {:?} {:?} {:?}",
                tls.server_name(),
                tls.alpn_protocol(),
                tls.protocol_version(),
                tls.cipher_suite(),
                tls.peer_certificates().map(|chain| chain.len()),
            ),
        };
        Response::new(Body::new(text))
    };
    assert_eq!(
        TestRequest::get("/").call(&handler).text().unwrap(),
        "plain"
    );
    let text = TestRequest::get("/")
        .tls(TlsInfo::new())
        .call(&handler)
        .text()
        .unwrap();
    assert_eq!(
        text,
        "None None Some(TLSv1_3) Some(TLS13_AES_128_GCM_SHA256) None"
    );
    let tls = TlsInfo::new()
        .with_server_name("api.example.com")
        .with_alpn_protocol(&b"h2"[..])
        .with_protocol_version(ProtocolVersion::TLSv1_2)
        .with_cipher_suite(CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)
        .with_peer_certificates(vec![CertificateDer::from(vec![1, 2, 3])]);
    let text = TestRequest::get("/")
        .peer_addr("10.1.2.3:443".parse().unwrap())
        .tls(tls)
        .call(&handler)
        .text()
        .unwrap();
    assert_eq!(
        text,
        "Some(\"api.example.com\") Some([104, 50]) Some(TLSv1_2) \
         Some(TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256) Some(1)"
    );
}

#[cfg(feature = "websocket")]
mod websocket {
    use super::*;
    use astra::websocket::{CloseCode, CloseFrame, Handler, Message, Sender, WebSocketUpgrade};
    use std::sync::mpsc;
    use std::sync::Mutex;

    /// Echoes every message and reports what it saw to the test.
    struct Echo(Mutex<mpsc::Sender<String>>);

    impl Handler for Echo {
        fn on_open(&self, sender: &Sender) {
            let _ = sender.send(Message::text("welcome"));
        }
        fn on_message(&self, sender: &Sender, message: Message) {
            let _ = sender.send(message);
        }
        fn on_close(&self, _sender: &Sender, frame: Option<CloseFrame>) {
            let code = frame.map(|f| u16::from(f.code));
            let _ = self.0.lock().unwrap().send(format!("closed {code:?}"));
        }
    }

    #[test]
    fn a_websocket_is_driven_through_memory() {
        let (seen_tx, seen_rx) = mpsc::channel();
        let seen_tx = Mutex::new(seen_tx);
        let handler = move |mut request: Request, _info: ConnectionInfo| {
            match WebSocketUpgrade::from_request(&mut request) {
                Ok(upgrade) => {
                    let tx = seen_tx.lock().unwrap().clone();
                    upgrade.protocols(["chat"]).serve(Echo(Mutex::new(tx)))
                }
                Err(refusal) => refusal,
            }
        };
        let response = TestRequest::websocket("/ws")
            .header("sec-websocket-protocol", "chat")
            .call(&handler);
        assert_eq!(response.status(), 101);
        assert_eq!(response.headers()["sec-websocket-protocol"], "chat");
        let mut socket = response.into_websocket().unwrap();
        assert_eq!(socket.read().unwrap(), Message::text("welcome"));
        socket.send(Message::text("hello")).unwrap();
        assert_eq!(socket.read().unwrap(), Message::text("hello"));
        let big: Vec<u8> = (0..600_000u32).map(|i| (i % 256) as u8).collect();
        socket.send(Message::binary(big.clone())).unwrap();
        assert_eq!(socket.read().unwrap(), Message::binary(big));
        socket
            .close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            }))
            .unwrap();
        // The server answers the close, then the stream ends.
        loop {
            match socket.read() {
                Ok(Message::Close(frame)) => {
                    assert_eq!(frame.map(|f| f.code), Some(CloseCode::Normal));
                }
                Ok(other) => panic!("unexpected {other:?}"),
                Err(astra::websocket::tungstenite::Error::ConnectionClosed) => break,
                Err(err) => panic!("{err}"),
            }
        }
        let closed = seen_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(closed, "closed Some(1000)");
    }

    #[test]
    fn a_blocking_websocket_is_driven_through_memory() {
        let handler =
            |mut request: Request, _info: ConnectionInfo| match WebSocketUpgrade::from_request(
                &mut request,
            ) {
                Ok(upgrade) => upgrade.blocking(|mut socket| {
                    while let Ok(message) = socket.read() {
                        if let Message::Text(text) = message {
                            let upper = text.to_uppercase();
                            if socket.send(Message::text(upper)).is_err() {
                                break;
                            }
                        }
                    }
                }),
                Err(refusal) => refusal,
            };
        let mut socket = TestRequest::websocket("/")
            .call(&handler)
            .into_websocket()
            .unwrap();
        socket.send(Message::text("quiet")).unwrap();
        assert_eq!(socket.read().unwrap(), Message::text("QUIET"));
    }

    #[test]
    fn a_refused_handshake_says_why() {
        let handler =
            |mut request: Request, _info: ConnectionInfo| match WebSocketUpgrade::from_request(
                &mut request,
            ) {
                Ok(upgrade) => upgrade
                    .allow_origin(|origin| origin == Some("https://good.example"))
                    .serve(|_: &Sender, _: Message| {}),
                Err(refusal) => refusal,
            };
        let err = TestRequest::websocket("/")
            .header("origin", "https://evil.example")
            .call(&handler)
            .into_websocket()
            .unwrap_err();
        assert!(err.to_string().contains("403"), "{err}");
        let err = TestRequest::get("/")
            .call(&handler)
            .into_websocket()
            .unwrap_err();
        assert!(err.to_string().contains("426"), "{err}");
        let accepted = TestRequest::websocket("/")
            .header("origin", "https://good.example")
            .call(&handler);
        assert_eq!(accepted.status(), 101);
        accepted.into_websocket().unwrap();
    }
}

/// A `TestServer` whose `serve` failed fails the test when dropped, with
/// serve's error: here `serve` finds no descriptor left for its poller. In a
/// child process, since the descriptor limit is the whole process's.
#[test]
fn a_test_server_whose_serve_failed_fails_the_test_when_dropped() {
    const TEST: &str = "a_test_server_whose_serve_failed_fails_the_test_when_dropped";
    if !common::is_child(TEST) {
        common::run_in_child(TEST, Duration::from_secs(30));
        return;
    }
    /// Tells when `serve` has let go of its service: it has returned.
    struct OnDrop(std::sync::mpsc::Sender<()>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            let _ = self.0.send(());
        }
    }
    let (dropped_tx, serve_ended) = std::sync::mpsc::channel();
    let on_drop = OnDrop(dropped_tx);
    let bound = Server::bind("127.0.0.1:0");
    let soft = common::raise_nofile(0);
    common::set_nofile_soft(0);
    let server = TestServer::start(bound, move |_r: Request, _i: ConnectionInfo| {
        let _ = &on_drop;
        Response::new(Body::empty())
    });
    // Dropped before the test asks for a shutdown, which would make a serve
    // that had not started yet return Ok at once.
    let ended = serve_ended.recv_timeout(Duration::from_secs(10));
    common::set_nofile_soft(soft);
    ended.expect("serve returned on its own");
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(server)));
    let panic = dropped.expect_err("dropping the TestServer fails the test");
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .expect("a message");
    assert!(message.contains("serve failed"), "{message}");
    assert!(message.contains("Too many open files"), "{message}");
}
