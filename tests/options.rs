//! Server options reach hyper: keep-alive, half-close, the buffer limits, the
//! protocol modes, title-case headers, pipeline flushing, vectored writes and
//! the HTTP/2 settings, windows, send buffer and keep-alive PINGs, each
//! checked on the wire (vectored writes in the server's system calls).

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use astra::test::TestServer;
use astra::{Body, Request, Response, ResponseBuilder, Server};
use common::RawConn;

fn start(server: Server) -> TestServer {
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

/// Sends `GET /first` and `GET /hold` pipelined in one write to a server with
/// `http1_pipeline_flush(flush)`, and reads the answers: the bytes there
/// while `/hold`'s handler runs, then those of the first read after it is
/// let go.
fn pipelined_first_and_held(flush: bool) -> (Vec<u8>, Vec<u8>) {
    let (holding_tx, holding) = mpsc::channel::<()>();
    let (release, released) = mpsc::channel::<()>();
    let channels = Mutex::new((holding_tx, released));
    let server = common::start(
        common::server().http1_pipeline_flush(flush),
        move |request: Request, _| {
            if request.uri().path() == "/hold" {
                let channels = channels.lock().unwrap();
                let _ = channels.0.send(());
                let _ = channels.1.recv_timeout(Duration::from_secs(10));
            }
            Response::new(Body::new(request.uri().path().to_string()))
        },
    );
    let mut conn = RawConn::open(server.addr());
    conn.send(b"GET /first HTTP/1.1\r\nHost: test\r\n\r\nGET /hold HTTP/1.1\r\nHost: test\r\n\r\n");
    // `/first` has been answered (its handler returned) and `/hold`'s runs.
    holding
        .recv_timeout(Duration::from_secs(10))
        .expect("/hold's handler runs");
    let mut early = Vec::new();
    if !conn.is_quiet_for(Duration::from_millis(50)) {
        let first = conn.read_response().expect("the answer to /first");
        early = first.head.into_bytes();
        early.extend_from_slice(&first.body);
    }
    release.send(()).unwrap();
    let mut buf = vec![0; 64 * 1024];
    let n = conn.reader.read(&mut buf).expect("the rest");
    buf.truncate(n);
    (early, buf)
}

/// With `http1_pipeline_flush`, hyper does not flush an answer while more
/// pipelined requests wait in its read buffer: the answer to `/first` waits
/// for `/hold`'s, and both come in one write (so one read). Without it,
/// `/first`'s answer is sent at once, while `/hold`'s handler still runs.
#[test]
fn http1_pipeline_flush_holds_answers_to_send_them_together() {
    let (early, rest) = pipelined_first_and_held(false);
    let early = String::from_utf8_lossy(&early);
    assert!(
        early.starts_with("HTTP/1.1 200") && early.ends_with("/first"),
        "without pipeline_flush /first is answered at once: {early:?}"
    );
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.ends_with("/hold") && rest.matches("HTTP/1.1").count() == 1,
        "{rest:?}"
    );

    let (early, together) = pipelined_first_and_held(true);
    assert!(
        early.is_empty(),
        "with pipeline_flush /first was answered before /hold: {:?}",
        String::from_utf8_lossy(&early)
    );
    let together = String::from_utf8_lossy(&together);
    assert_eq!(
        together.matches("HTTP/1.1 200 OK\r\n").count(),
        2,
        "{together:?}"
    );
    assert!(
        together.contains("\r\n\r\n/firstHTTP/1.1 200") && together.ends_with("\r\n\r\n/hold"),
        "both answers in order, in one read: {together:?}"
    );
}

/// How the answer to one request for a 64 KiB `Body::new` body is written
/// with `http1_writev(mode)` (`None`: the default): as one `writev` of the
/// head and the body, or as one flat buffer holding both, as strace sees the
/// server's system calls. `None` if strace cannot run here.
fn response_write(mode: Option<bool>) -> Option<String> {
    const TEST: &str = "http1_writev_chooses_a_vectored_or_a_flat_write";
    let usable = Command::new("strace")
        .args(["-f", "-o", "/dev/null", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !usable {
        return None;
    }
    let dir = common::TempDir::new("writev");
    let log = dir.join("strace.log");
    let exe = std::env::current_exe().unwrap();
    let mut command = Command::new("strace");
    command
        .args([
            "-f",
            "-qq",
            "-s",
            "24",
            "-e",
            "trace=write,writev,sendto,sendmsg",
            "-o",
        ])
        .arg(&log)
        .arg(exe)
        .args([TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(common::CHILD_ENV, TEST)
        .env(WRITEV_ENV, format!("{mode:?}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = common::ChildGuard {
        child: Some(command.spawn().expect("run strace")),
    };
    let output = child.wait_within(Duration::from_secs(60));
    assert!(
        output.success,
        "the child under strace failed\n--- stdout\n{}\n--- stderr\n{}",
        output.stdout, output.stderr
    );
    let log = std::fs::read_to_string(&log).unwrap();
    let writes: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("\"HTTP/1.1 200 OK"))
        .collect();
    assert!(!writes.is_empty(), "no response write in the trace:\n{log}");
    Some(writes[0].to_string())
}

const WRITEV_ENV: &str = "ASTRA_TEST_WRITEV";
const WRITEV_BODY: usize = 64 * 1024;

/// `http1_writev` changes nothing a client can see: the same bytes arrive,
/// in segments the kernel cuts alike. It changes the server's system
/// calls: with writev hyper queues the head and the body and hands both to
/// one `writev`; without, it copies the body behind the head and writes
/// that one buffer. So the test runs a server (in a child of its own) under
/// strace and looks at the call that sends the response; where strace is
/// missing or cannot trace, it says so and passes.
#[test]
fn http1_writev_chooses_a_vectored_or_a_flat_write() {
    if common::is_child("http1_writev_chooses_a_vectored_or_a_flat_write") {
        let mode = std::env::var(WRITEV_ENV).unwrap();
        let server = match mode.as_str() {
            "Some(true)" => common::server().http1_writev(true),
            "Some(false)" => common::server().http1_writev(false),
            _ => common::server(),
        };
        let server = common::start(server, |_: Request, _| {
            Response::new(Body::new(vec![b'w'; WRITEV_BODY]))
        });
        let response = common::raw_request(server.addr(), GET);
        assert_eq!(response.body, vec![b'w'; WRITEV_BODY]);
        return;
    }
    let Some(vectored) = response_write(Some(true)) else {
        // .ci/run installs strace: CI must not skip this silently.
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "CI=true and strace cannot run here (.ci/run should have installed it)"
        );
        eprintln!("note: skipped: strace cannot run here (apt-get install strace)");
        return;
    };
    // writev(fd, [{iov_base="HTTP/1.1 200 OK\r\n..."..., iov_len=..}, {iov_base="www"..., iov_len=65536}], 2)
    let is_vectored = |line: &str| {
        line.contains("writev(")
            && line.contains("[{iov_base=\"HTTP/1.1 200 OK")
            && line.contains(&format!("iov_len={WRITEV_BODY}}}], 2)"))
    };
    // sendto(fd, "HTTP/1.1 200 OK\r\n"..., 65619, MSG_NOSIGNAL, NULL, 0), or write(..)
    let is_flat = |line: &str| {
        (line.contains("sendto(") || line.contains("write("))
            && line
                .split(", ")
                .nth(2)
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|len| len > WRITEV_BODY)
    };
    assert!(
        is_vectored(&vectored),
        "http1_writev(true) wrote {vectored}"
    );
    let flat = response_write(Some(false)).unwrap();
    assert!(is_flat(&flat), "http1_writev(false) wrote {flat}");
    let default = response_write(None).unwrap();
    assert!(
        is_vectored(&default),
        "by default, on a TCP socket: {default}"
    );
}

/// Starts a server whose handler answers with the largest body chunk it saw
/// and the body's total length.
fn start_chunk_meter(server: Server) -> TestServer {
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

/// The HTTP/2 options, each seen in what the server sends a client that
/// speaks raw frames: its SETTINGS frame, its WINDOW_UPDATE for the
/// connection, its PINGs, or how much of a response it buffers for a client
/// that reads nothing.
#[cfg(feature = "http2")]
mod http2_wire {
    use super::*;
    use std::io;
    use std::net::TcpStream;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    const DATA: u8 = 0x0;
    const HEADERS: u8 = 0x1;
    const SETTINGS: u8 = 0x4;
    const PING: u8 = 0x6;
    const WINDOW_UPDATE: u8 = 0x8;
    /// The ACK flag of SETTINGS and PING.
    const ACK: u8 = 0x1;
    const END_STREAM: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;

    const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    const INITIAL_WINDOW_SIZE: u16 = 0x4;
    const MAX_FRAME_SIZE: u16 = 0x5;
    const MAX_HEADER_LIST_SIZE: u16 = 0x6;

    /// The flow-control window every connection and stream starts with.
    const SPEC_WINDOW: u32 = 65_535;
    const MAX_WINDOW: u32 = (1 << 31) - 1;

    /// A request for `/` on stream 1, as HPACK: `:method` (GET or POST from
    /// the static table), `:scheme http`, `:path /`, `:authority x`.
    fn request_headers(method_post: bool) -> Vec<u8> {
        vec![
            if method_post { 0x83 } else { 0x82 },
            0x86,
            0x84,
            0x41,
            1,
            b'x',
        ]
    }

    #[derive(Debug)]
    struct Frame {
        kind: u8,
        flags: u8,
        stream: u32,
        payload: Vec<u8>,
    }

    impl Frame {
        fn is(&self, kind: u8, flags: u8) -> bool {
            self.kind == kind && self.flags & flags == flags
        }

        fn settings(&self) -> Vec<(u16, u32)> {
            assert_eq!(self.kind, SETTINGS);
            self.payload
                .chunks_exact(6)
                .map(|s| {
                    let id = u16::from_be_bytes([s[0], s[1]]);
                    (id, u32::from_be_bytes([s[2], s[3], s[4], s[5]]))
                })
                .collect()
        }

        fn u32_payload(&self) -> u32 {
            let p = &self.payload;
            u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff
        }
    }

    /// An HTTP/2 connection driven frame by frame.
    struct H2 {
        stream: TcpStream,
    }

    impl H2 {
        /// Connects, sends the preface with `settings`, and reads the server's
        /// SETTINGS, its first frame, which it acknowledges; returns them.
        fn open(addr: SocketAddr, settings: &[(u16, u32)]) -> (H2, Vec<(u16, u32)>) {
            let mut h2 = H2 {
                stream: common::connect(addr),
            };
            h2.stream
                .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                .unwrap();
            let mut payload = Vec::new();
            for (id, value) in settings {
                payload.extend_from_slice(&id.to_be_bytes());
                payload.extend_from_slice(&value.to_be_bytes());
            }
            h2.send(SETTINGS, 0, 0, &payload);
            let first = h2.read().expect("the server's SETTINGS");
            assert!(first.is(SETTINGS, 0) && first.flags & ACK == 0, "{first:?}");
            h2.send(SETTINGS, ACK, 0, &[]);
            (h2, first.settings())
        }

        fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
            let len = payload.len() as u32;
            let mut frame = len.to_be_bytes()[1..].to_vec();
            frame.extend_from_slice(&[kind, flags]);
            frame.extend_from_slice(&stream.to_be_bytes());
            frame.extend_from_slice(payload);
            self.stream.write_all(&frame).unwrap();
        }

        /// The next frame; `Err` at the end of the connection or a timeout.
        fn read(&mut self) -> io::Result<Frame> {
            let mut head = [0; 9];
            self.stream.read_exact(&mut head)?;
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0; len];
            self.stream.read_exact(&mut payload)?;
            Ok(Frame {
                kind: head[3],
                flags: head[4],
                stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
                payload,
            })
        }

        /// Reads frames until (and with) the one that ends stream 1.
        fn read_response(&mut self) -> Vec<Frame> {
            let mut frames = Vec::new();
            loop {
                let frame = self.read().expect("the response");
                let last = frame.stream == 1
                    && (frame.kind == DATA || frame.kind == HEADERS)
                    && frame.flags & END_STREAM != 0;
                frames.push(frame);
                if last {
                    return frames;
                }
            }
        }

        /// Sends a PING and reads frames until its ACK; returns those before.
        fn round_trip(&mut self) -> Vec<Frame> {
            let mine = *b"roundtr1";
            self.send(PING, 0, 0, &mine);
            let mut frames = Vec::new();
            loop {
                let frame = self.read().expect("the PING's ACK");
                if frame.is(PING, ACK) && frame.payload == mine {
                    return frames;
                }
                frames.push(frame);
            }
        }
    }

    fn setting(settings: &[(u16, u32)], id: u16) -> Option<u32> {
        settings.iter().find(|(i, _)| *i == id).map(|(_, v)| *v)
    }

    /// The SETTINGS a server sends first.
    fn announced(server: Server) -> Vec<(u16, u32)> {
        let server = start(server);
        // Closed before the server: a client that answers no PING would
        // hold up its graceful shutdown.
        let (_h2, settings) = H2::open(server.addr(), &[]);
        settings
    }

    #[test]
    fn http2_initial_stream_window_size_is_announced() {
        let default = announced(common::server());
        assert_eq!(setting(&default, INITIAL_WINDOW_SIZE), Some(256 * 1024));
        let set = announced(common::server().http2_initial_stream_window_size(100_000));
        assert_eq!(setting(&set, INITIAL_WINDOW_SIZE), Some(100_000), "{set:?}");
    }

    #[test]
    fn http2_max_frame_size_is_announced() {
        let default = announced(common::server());
        assert_eq!(setting(&default, MAX_FRAME_SIZE), Some(16_384));
        let set = announced(common::server().http2_max_frame_size(32_768));
        assert_eq!(setting(&set, MAX_FRAME_SIZE), Some(32_768), "{set:?}");
    }

    #[test]
    fn http2_max_concurrent_streams_is_announced_and_none_announces_no_limit() {
        let default = announced(common::server());
        assert_eq!(setting(&default, MAX_CONCURRENT_STREAMS), Some(200));
        let set = announced(common::server().http2_max_concurrent_streams(7));
        assert_eq!(setting(&set, MAX_CONCURRENT_STREAMS), Some(7), "{set:?}");
        let none = announced(common::server().http2_max_concurrent_streams(None));
        assert_eq!(setting(&none, MAX_CONCURRENT_STREAMS), None, "{none:?}");
    }

    #[test]
    fn http2_max_header_list_size_is_announced() {
        let default = announced(common::server());
        assert_eq!(setting(&default, MAX_HEADER_LIST_SIZE), Some(16 * 1024));
        let set = announced(common::server().http2_max_header_list_size(9_000));
        assert_eq!(setting(&set, MAX_HEADER_LIST_SIZE), Some(9_000), "{set:?}");
    }

    /// A server whose handler reads the request body and answers with its
    /// length.
    fn start_reading(server: Server) -> TestServer {
        common::start(server, |mut request: Request, _| {
            let mut body = Vec::new();
            let _ = request.body_mut().reader().read_to_end(&mut body);
            Response::new(Body::new(body.len().to_string()))
        })
    }

    /// The connection window starts at 65,535 bytes for everyone; the
    /// server raises it to its own with a WINDOW_UPDATE on stream 0 once a
    /// request comes.
    fn connection_window_granted(server: Server) -> u32 {
        let server = start_reading(server);
        let (mut h2, _) = H2::open(server.addr(), &[]);
        h2.send(HEADERS, END_HEADERS, 1, &request_headers(true));
        h2.send(DATA, END_STREAM, 1, b"0123456789");
        let frames = h2.read_response();
        let update = frames
            .iter()
            .find(|f| f.kind == WINDOW_UPDATE && f.stream == 0)
            .unwrap_or_else(|| panic!("no WINDOW_UPDATE for the connection in {frames:?}"));
        SPEC_WINDOW + update.u32_payload()
    }

    #[test]
    fn http2_initial_connection_window_size_is_granted_in_a_window_update() {
        // Default: the stream window times the stream limit, at most 16 MiB.
        assert_eq!(connection_window_granted(common::server()), 16 << 20);
        let set = common::server().http2_initial_connection_window_size(1_000_000);
        assert_eq!(connection_window_granted(set), 1_000_000);
    }

    /// The windows and the frame size have no "off": `None` keeps the
    /// default (a 2 GiB window per stream is nothing to fall into by
    /// accident), as in astra 0.4.
    #[test]
    fn http2_none_windows_and_frame_size_keep_the_defaults() {
        let none = announced(
            common::server()
                .http2_initial_stream_window_size(None)
                .http2_max_frame_size(None),
        );
        let default = announced(common::server());
        for id in [INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE] {
            assert_eq!(setting(&none, id), setting(&default, id), "{none:?}");
        }
        assert_eq!(setting(&none, INITIAL_WINDOW_SIZE), Some(256 * 1024));
        assert_eq!(
            connection_window_granted(common::server().http2_initial_connection_window_size(None)),
            connection_window_granted(common::server())
        );
    }

    /// Uploads 60,000 bytes (within the spec's windows) and returns the
    /// server's SETTINGS, the frames it sent up to the answer and one round
    /// trip more, and those of two round trips after its PINGs are answered
    /// (only then): the first pong is seen on the connection's next poll,
    /// which sends what follows from it before it takes the second PING.
    fn upload_and_answer_pings(server: Server) -> (Vec<(u16, u32)>, Vec<Frame>, Vec<Frame>) {
        let server = start_reading(server);
        let (mut h2, settings) = H2::open(server.addr(), &[]);
        h2.send(HEADERS, END_HEADERS, 1, &request_headers(true));
        for i in 0..4 {
            let flags = if i == 3 { END_STREAM } else { 0 };
            h2.send(DATA, flags, 1, &[b'a'; 15_000]);
        }
        let mut before = h2.read_response();
        before.extend(h2.round_trip());
        // Every byte was read by the handler; now answer the server's PINGs.
        for ping in before
            .iter()
            .filter(|f| f.kind == PING && f.flags & ACK == 0)
        {
            h2.send(PING, ACK, 0, &ping.payload);
        }
        let mut after = h2.round_trip();
        after.extend(h2.round_trip());
        (settings, before, after)
    }

    /// With an adaptive window the windows start at the spec's 65,535 bytes,
    /// whatever sizes were set, and the server measures the bandwidth-delay
    /// product with PINGs as data arrives; when a PING's answer shows the
    /// window was mostly used, it announces a larger one in a new SETTINGS.
    /// Without it: the set size, no PING, no new SETTINGS.
    #[test]
    fn http2_adaptive_window_starts_small_pings_and_grows() {
        let sized = || common::server().http2_initial_stream_window_size(1 << 20);
        let (settings, before, after) =
            upload_and_answer_pings(sized().http2_adaptive_window(true));
        assert_eq!(setting(&settings, INITIAL_WINDOW_SIZE), Some(SPEC_WINDOW));
        assert!(
            before.iter().any(|f| f.kind == PING && f.flags & ACK == 0),
            "no bandwidth PING while the upload arrived: {before:?}"
        );
        let grown = after
            .iter()
            .filter(|f| f.is(SETTINGS, 0) && f.flags & ACK == 0)
            .find_map(|f| setting(&f.settings(), INITIAL_WINDOW_SIZE))
            .unwrap_or_else(|| panic!("no larger window announced: {after:?}"));
        assert!(grown > SPEC_WINDOW, "announced {grown}");

        let (settings, before, after) = upload_and_answer_pings(sized());
        assert_eq!(setting(&settings, INITIAL_WINDOW_SIZE), Some(1 << 20));
        let sent = before.iter().chain(&after);
        assert!(
            !sent
                .clone()
                .any(|f| f.kind == PING || f.kind == SETTINGS && f.flags & ACK == 0),
            "PINGs or new SETTINGS without an adaptive window: {:?}",
            sent.collect::<Vec<_>>()
        );
    }

    /// A `wrap_reader` that counts what it produced.
    struct Counted(Arc<AtomicU64>);

    impl Read for Counted {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            buf.fill(b'c');
            self.0.fetch_add(buf.len() as u64, Ordering::SeqCst);
            Ok(buf.len())
        }
    }

    /// How much of an endless response the server takes from its reader for
    /// a client that opens every window and reads nothing: the sockets'
    /// buffers, plus what the stream may buffer for sending.
    fn taken_for_a_client_that_reads_nothing(server: Server) -> u64 {
        let produced = Arc::new(AtomicU64::new(0));
        let counter = produced.clone();
        let server = common::start(server, move |_: Request, _| {
            Response::new(Body::wrap_reader(Counted(counter.clone())))
        });
        let (mut h2, _) = H2::open(server.addr(), &[(INITIAL_WINDOW_SIZE, MAX_WINDOW)]);
        h2.send(
            WINDOW_UPDATE,
            0,
            0,
            &(MAX_WINDOW - SPEC_WINDOW).to_be_bytes(),
        );
        h2.send(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &request_headers(false),
        );
        common::wait_until_stalled(server.handle(), &produced);
        produced.load(Ordering::SeqCst)
    }

    #[test]
    fn http2_max_send_buf_size_bounds_what_a_stream_buffers() {
        let small = taken_for_a_client_that_reads_nothing(
            common::server().http2_max_send_buf_size(16 * 1024),
        );
        let large = taken_for_a_client_that_reads_nothing(
            common::server().http2_max_send_buf_size(8 << 20),
        );
        eprintln!(
            "taken from the reader: {small} bytes with a 16 KiB send buffer, {large} with 8 MiB"
        );
        // The sockets hold the same either way (give or take 1 MiB here).
        assert!(
            large >= small + (7 << 20),
            "an 8 MiB send buffer took {large} bytes, a 16 KiB one {small}"
        );
    }

    /// PINGs come once the connection has been quiet for the interval (since
    /// it opened, or since the last PING's answer); answered, they keep it
    /// open past the timeout; unanswered, the server closes it no sooner
    /// than the timeout after the PING.
    #[test]
    fn http2_keep_alive_pings_after_the_interval_and_closes_when_unanswered() {
        let interval = Duration::from_millis(100);
        let timeout = Duration::from_millis(300);
        let server = start(
            common::server()
                .http2_keep_alive_interval(interval)
                .http2_keep_alive_timeout(timeout),
        );
        let opened = Instant::now();
        let (mut h2, _) = H2::open(server.addr(), &[]);
        let mut quiet_since = opened;
        let mut answered = 0;
        // Answer PINGs for twice the timeout and the interval.
        let last_ping = loop {
            let frame = h2
                .read()
                .expect("the connection stays open while PINGs are answered");
            if !frame.is(PING, 0) || frame.flags & ACK != 0 {
                continue;
            }
            let quiet = quiet_since.elapsed();
            assert!(quiet >= interval, "a PING after only {quiet:?} of quiet");
            if opened.elapsed() >= 2 * (timeout + interval) {
                break Instant::now();
            }
            // Taken before the answer leaves: the server's quiet starts when
            // it reads it, never sooner.
            quiet_since = Instant::now();
            h2.send(PING, ACK, 0, &frame.payload);
            answered += 1;
        };
        assert!(answered >= 3, "{answered} PINGs in {:?}", opened.elapsed());
        // This one goes unanswered.
        let rest = common::read_until_closed(&mut h2.stream).expect("closed, not left open");
        let closed = last_ping.elapsed();
        // The PING left the server no sooner than `interval` after it read
        // the last answer, so the timeout ran from then at the earliest. Its
        // arrival here is later by the delivery time, which under load made
        // a close right on time look early (298.9 ms of 300).
        let since_sendable = quiet_since.elapsed() - interval;
        assert!(
            since_sendable >= timeout,
            "closed {since_sendable:?} after the unanswered PING could have left"
        );
        assert!(
            closed < Duration::from_secs(3),
            "closed {closed:?} after it"
        );
        // A GOAWAY says why (NO_ERROR), if the close did not cut it.
        assert!(rest.is_empty() || rest[3] == 0x7, "{rest:?}");
    }
}
