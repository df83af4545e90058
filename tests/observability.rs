//! `ServerHandle::stats` and the access log: open connections by protocol,
//! requests in flight, handlers running, close reasons, and one log line per
//! request. Waits poll the counters with a deadline (`common::wait_for_stats`).

mod common;

use std::io::Write;
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

use astra::test::TestServer;
use astra::{Body, CloseReason, ConnectionInfo, Request, Response, Server};
use common::*;

/// A server whose `/hold` handler waits for the test to let it go.
fn holding(server: Server) -> (TestServer, mpsc::Sender<()>) {
    let (release, released) = mpsc::channel::<()>();
    let released = Mutex::new(released);
    let server = start(
        server,
        move |mut request: Request, _info: ConnectionInfo| {
            if request.method() == "POST" {
                let mut body = Vec::new();
                let _ = std::io::Read::read_to_end(&mut request.body_mut().reader(), &mut body);
            }
            if request.uri().path() == "/hold" {
                let _ = released
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(10));
            }
            Response::new(Body::new("done"))
        },
    );
    (server, release)
}

#[test]
fn stats_count_connections_requests_and_handlers() {
    let (server, release) = holding(server());
    let (addr, handle) = (server.addr(), server.handle());
    let before = handle.stats();
    assert_eq!(before.http1_connections, 0);
    assert_eq!(before.requests_in_flight, 0);

    let mut idle = RawConn::open(addr);
    idle.send(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n");
    assert_eq!(idle.read_response().unwrap().status, 200);
    let mut held = RawConn::open(addr);
    held.send(b"GET /hold HTTP/1.1\r\nhost: x\r\n\r\n");
    let stats = wait_for_stats(handle, "a held request", |s| {
        s.requests_in_flight == 1 && s.handlers_running == 1
    });
    assert_eq!(stats.http1_connections, 2);
    assert!(stats.workers >= 1, "{stats:?}");

    release.send(()).unwrap();
    assert_eq!(held.read_response().unwrap().status, 200);
    wait_for_stats(handle, "nothing in flight", |s| {
        s.requests_in_flight == 0 && s.handlers_running == 0
    });
    drop(idle);
    drop(held);
    let stats = wait_for_stats(handle, "both closed", |s| s.http1_connections == 0);
    assert_eq!(stats.closed_for(CloseReason::Done), 2, "{stats:?}");
}

#[test]
fn close_reasons_are_counted() {
    let server = server()
        .http1_header_read_timeout(Duration::from_millis(200))
        .http1_keep_alive_timeout(Duration::from_millis(200));
    let (server, _release) = holding(server);
    let (addr, handle) = (server.addr(), server.handle());

    // Nothing sent: the header read timeout.
    let _silent = connect(addr);
    // One request, then idle: the keep-alive timeout.
    let mut idle = RawConn::open(addr);
    idle.send(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n");
    assert_eq!(idle.read_response().unwrap().status, 200);
    // A malformed request: a protocol error.
    let mut bad = connect(addr);
    bad.write_all(b"GET / HTTP/1.1\r\nbad header line\r\n\r\n")
        .unwrap();
    // Half a request body, then gone.
    let mut gone = RawConn::open(addr);
    gone.send(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nabc");

    wait_for_stats(handle, "the timeouts", |s| {
        s.closed_for(CloseReason::HeaderReadTimeout) >= 1
            && s.closed_for(CloseReason::KeepAliveTimeout) >= 1
            && s.closed_for(CloseReason::Error) >= 1
    });
    drop(gone);
    let stats = wait_for_stats(handle, "the client gone", |s| {
        s.closed_for(CloseReason::ClientGone) >= 1
    });
    assert_eq!(stats.closed_for(CloseReason::SendTimeout), 0);
}

#[test]
fn shutdown_closes_are_counted_and_stats_outlive_serve() {
    let server = server();
    let handle = server.handle();
    let addr = server.local_addr().unwrap();
    let serving = std::thread::spawn(move || {
        server.serve(|_request: Request, _info: ConnectionInfo| Response::new(Body::empty()))
    });
    let mut idle = RawConn::open(addr);
    idle.send(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n");
    assert_eq!(idle.read_response().unwrap().status, 200);
    wait_for_stats(&handle, "one open", |s| s.http1_connections == 1);
    handle.shutdown();
    join_within(serving, Duration::from_secs(10), "serve").unwrap();
    let stats = handle.stats();
    assert_eq!(stats.closed_for(CloseReason::Shutdown), 1, "{stats:?}");
    assert_eq!(stats.http1_connections, 0);
}

#[cfg(feature = "http2")]
#[test]
fn http2_and_upgraded_connections_have_their_own_counts() {
    let server = start(server(), |mut request: Request, _info: ConnectionInfo| {
        match astra::Upgrade::from_request(&mut request) {
            Some(upgrade) => upgrade.respond(switching("x"), |mut stream| {
                let mut buf = [0; 1];
                let _ = std::io::Read::read(&mut stream, &mut buf);
            }),
            None => Response::new(Body::empty()),
        }
    });
    let (addr, handle) = (server.addr(), server.handle());
    let mut h2 = connect(addr);
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    wait_for_stats(handle, "an HTTP/2 connection", |s| s.http2_connections == 1);
    let mut upgraded = RawConn::open(addr);
    upgraded.send(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: x\r\n\r\n");
    assert_eq!(upgraded.read_head().unwrap().1, 101);
    let stats = wait_for_stats(handle, "an upgraded connection", |s| {
        s.upgraded_connections == 1 && s.http1_connections == 0
    });
    assert_eq!(stats.http2_connections, 1);
    upgraded.send(b"!");
    drop(upgraded);
    drop(h2);
    wait_for_stats(handle, "both gone", |s| {
        s.upgraded_connections == 0 && s.http2_connections == 0
    });
}

/// Collects the access log lines of this test binary.
struct Capture;

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

impl log::Log for Capture {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.target() == "astra::access"
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            LINES.lock().unwrap().push(record.args().to_string());
        }
    }

    fn flush(&self) {}
}

static CAPTURE: Capture = Capture;

#[test]
fn the_access_log_has_a_line_per_request() {
    let _ = log::set_logger(&CAPTURE);
    log::set_max_level(log::LevelFilter::Info);
    let server = start(
        server().access_log(true),
        |request: Request, _info: ConnectionInfo| {
            if request.uri().path() == "/missing" {
                return astra::ResponseBuilder::new()
                    .status(404)
                    .body(Body::new("nope"))
                    .unwrap();
            }
            Response::new(Body::new("twelve bytes"))
        },
    );
    let addr = server.addr();
    let mut conn = RawConn::open(addr);
    conn.send(b"GET /a?b=c HTTP/1.1\r\nhost: x\r\n\r\n");
    assert_eq!(conn.read_response().unwrap().status, 200);
    conn.send(b"GET /missing HTTP/1.1\r\nhost: x\r\n\r\n");
    assert_eq!(conn.read_response().unwrap().status, 404);
    let port = conn.stream().local_addr().unwrap().port();
    let mine = || -> Vec<String> {
        LINES
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with(&format!("127.0.0.1:{port} ")))
            .cloned()
            .collect()
    };
    wait_until(Duration::from_secs(10), "two access log lines", || {
        mine().len() >= 2
    });
    let mine = mine();
    assert_eq!(mine.len(), 2, "{mine:?}");
    assert!(
        mine[0].contains("\"GET /a?b=c HTTP/1.1\" 200 12 "),
        "{}",
        mine[0]
    );
    assert!(mine[0].ends_with("ms"), "{}", mine[0]);
    assert!(
        mine[1].contains("\"GET /missing HTTP/1.1\" 404 4 "),
        "{}",
        mine[1]
    );
}

#[test]
fn no_access_log_unless_asked() {
    let _ = log::set_logger(&CAPTURE);
    log::set_max_level(log::LevelFilter::Info);
    let server = start(server(), |_request: Request, _info: ConnectionInfo| {
        Response::new(Body::new("quiet"))
    });
    let addr = server.addr();
    let mut conn = RawConn::open(addr);
    conn.send(b"GET /quiet HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    let port = conn.stream().local_addr().unwrap().port();
    // The server closes once the response is done: a line would be out.
    let all = read_until_closed(conn.reader.get_mut()).unwrap();
    assert!(String::from_utf8_lossy(&all).contains("quiet") || !conn.reader.buffer().is_empty());
    let lines = LINES.lock().unwrap();
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with(&format!("127.0.0.1:{port} "))),
        "{lines:?}"
    );
}

/// Serves one GET over raw HTTP/2 frames (prior knowledge), then closes the
/// way a polite client does: a GOAWAY (if `goaway`), then FIN. Returns once
/// the server has closed its side.
#[cfg(feature = "http2")]
fn http2_request_then_close(addr: std::net::SocketAddr, goaway: bool) {
    use std::io::Read;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut frame = len.to_be_bytes()[1..].to_vec();
        frame.extend([kind, flags]);
        frame.extend(stream.to_be_bytes());
        frame.extend(payload);
        frame
    }
    const DATA: u8 = 0;
    const HEADERS: u8 = 1;
    const SETTINGS: u8 = 4;
    const GOAWAY: u8 = 7;
    const END_STREAM: u8 = 1;
    const END_HEADERS: u8 = 4;
    const ACK: u8 = 1;

    let mut stream = connect(addr);
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    // GET / with :authority x (HPACK: three indexed fields and a literal).
    let get = [0x82, 0x86, 0x84, 0x41, 0x01, b'x'];
    hello.extend(frame(HEADERS, END_STREAM | END_HEADERS, 1, &get));
    stream.write_all(&hello).unwrap();
    // Read frames until the response's last one, acknowledging settings.
    loop {
        let mut head = [0u8; 9];
        stream
            .read_exact(&mut head)
            .expect("a frame from the server");
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0; len];
        stream.read_exact(&mut payload).unwrap();
        if kind == SETTINGS && flags & ACK == 0 {
            stream.write_all(&frame(SETTINGS, ACK, 0, &[])).unwrap();
        }
        if id == 1 && matches!(kind, HEADERS | DATA) && flags & END_STREAM != 0 {
            break;
        }
    }
    if goaway {
        // No server stream processed, no error.
        stream.write_all(&frame(GOAWAY, 0, 0, &[0; 8])).unwrap();
    }
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    read_until_closed(&mut stream).expect("the server closes its side");
}

/// A client that ends an HTTP/2 connection politely, with a GOAWAY and then
/// FIN, used to be counted `ClientGone`, while the same close without the
/// GOAWAY was `Done`. Both are normal ends.
#[cfg(feature = "http2")]
#[test]
fn http2_close_with_goaway_then_fin_is_done() {
    let server = start(server(), |_request: Request, _info: ConnectionInfo| {
        Response::new(Body::new("hi"))
    });
    let (addr, handle) = (server.addr(), server.handle());
    for (goaway, closed) in [(false, 1), (true, 2)] {
        http2_request_then_close(addr, goaway);
        let stats = wait_for_stats(handle, "the connection counted as closed", |s| {
            s.http2_connections == 0 && s.closed.iter().map(|(_, n)| n).sum::<u64>() == closed
        });
        assert_eq!(
            stats.closed_for(CloseReason::Done),
            closed,
            "goaway: {goaway}; {:?}",
            stats.closed
        );
    }
}

/// Closes `stream` with a reset (RST) instead of FIN: a client that
/// vanishes.
fn reset(stream: std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an open socket we own, with a pointer to a local
    // `linger` and its size.
    let set = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
    drop(stream);
}

fn closed_total(stats: &astra::Stats) -> u64 {
    stats.closed.iter().map(|(_, n)| n).sum()
}

/// An upgraded connection used to be counted as closed (`Done`) when its 101
/// was sent: it is open until its stream ends, and then counted by how it
/// ended.
#[test]
fn an_upgraded_stream_is_counted_closed_when_it_ends_and_by_how() {
    let server = start(server(), |mut request: Request, _info: ConnectionInfo| {
        match astra::Upgrade::from_request(&mut request) {
            Some(upgrade) => upgrade.respond(switching("x"), |mut stream| {
                let mut buf = [0; 64];
                while let Ok(1..) = std::io::Read::read(&mut stream, &mut buf) {}
            }),
            None => Response::new(Body::empty()),
        }
    });
    let (addr, handle) = (server.addr(), server.handle());
    let upgrade = || {
        let mut conn = RawConn::open(addr);
        conn.send(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: x\r\n\r\n");
        assert_eq!(conn.read_head().unwrap().1, 101);
        conn.reader.into_inner()
    };

    // A client that vanishes: open until then, and not `Done`.
    let vanishing = upgrade();
    let stats = wait_for_stats(handle, "an upgraded connection", |s| {
        s.upgraded_connections == 1 && s.http1_connections == 0
    });
    assert_eq!(
        closed_total(&stats),
        0,
        "open, yet closed: {:?}",
        stats.closed
    );
    reset(vanishing);
    let stats = wait_for_stats(handle, "the reset counted", |s| {
        s.upgraded_connections == 0 && closed_total(s) == 1
    });
    assert_eq!(
        stats.closed_for(CloseReason::ClientGone),
        1,
        "{:?}",
        stats.closed
    );

    // A client that closes its side: the stream ends normally.
    let mut polite = upgrade();
    polite.write_all(b"bye").unwrap();
    polite.shutdown(std::net::Shutdown::Write).unwrap();
    read_until_closed(&mut polite).unwrap();
    let stats = wait_for_stats(handle, "the close counted", |s| {
        s.upgraded_connections == 0 && closed_total(s) == 2
    });
    assert_eq!(stats.closed_for(CloseReason::Done), 1, "{:?}", stats.closed);
}

/// A WebSocket used to be counted as closed (`Done`) when its 101 was sent,
/// so clients that vanished were `Done` too: it is open until it ends, and
/// then counted by how it ended.
#[cfg(feature = "websocket")]
#[test]
fn a_websocket_is_counted_closed_when_it_ends_and_by_how() {
    use astra::websocket::{Message, Sender, WebSocketUpgrade};

    let server = start(server(), |mut request: Request, _info: ConnectionInfo| {
        match WebSocketUpgrade::from_request(&mut request) {
            Ok(ws) => ws.serve(|sender: &Sender, message: Message| {
                let _ = sender.send(message);
            }),
            Err(refusal) => refusal,
        }
    });
    let (addr, handle) = (server.addr(), server.handle());
    let open = || {
        let request =
            tungstenite::client::IntoClientRequest::into_client_request(format!("ws://{addr}/"))
                .unwrap();
        let (mut client, _) = tungstenite::client(request, connect(addr)).unwrap();
        client.send(Message::text("hello")).unwrap();
        assert_eq!(client.read().unwrap(), Message::text("hello"));
        client
    };
    let ended = |what: &str, closed: u64| {
        wait_for_stats(handle, what, |s| {
            s.upgraded_connections == 0 && closed_total(s) == closed
        })
    };

    // Reset: open until then, and gone.
    let client = open();
    let stats = wait_for_stats(handle, "an open WebSocket", |s| {
        s.upgraded_connections == 1 && s.http1_connections == 0
    });
    assert_eq!(
        closed_total(&stats),
        0,
        "open, yet closed: {:?}",
        stats.closed
    );
    reset(client.into_inner());
    let stats = ended("the reset counted", 1);
    assert_eq!(
        stats.closed_for(CloseReason::ClientGone),
        1,
        "a reset: {:?}",
        stats.closed
    );

    // FIN without a close frame: gone too.
    let client = open();
    client
        .get_ref()
        .shutdown(std::net::Shutdown::Write)
        .unwrap();
    let stats = ended("the vanished client counted", 2);
    assert_eq!(
        stats.closed_for(CloseReason::ClientGone),
        2,
        "no close frame: {:?}",
        stats.closed
    );

    // The close handshake: done.
    let mut client = open();
    client.close(None).unwrap();
    loop {
        match client.read() {
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(err) => panic!("the close handshake failed: {err}"),
        }
    }
    let stats = ended("the close handshake counted", 3);
    assert_eq!(
        stats.closed_for(CloseReason::Done),
        1,
        "a close handshake: {:?}",
        stats.closed
    );
}
