//! Connection timeouts: header read (silent and byte-by-byte clients), keep-alive
//! idle, send (a client that stops reading), and HTTP/2 PING.
//!
//! Each uses short durations and asserts the lower bound (never early) and a
//! generous upper bound.

mod common;

use std::io::{self, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use astra::test::TestServer;
use astra::{Body, CloseReason, Response};
use common::*;

fn hello(_request: astra::Request, _info: astra::ConnectionInfo) -> Response {
    Response::new(Body::new("hello"))
}

/// Reads until the peer closes; returns the bytes and how long it took since
/// `started`. Fails the test if the socket's read timeout passes first.
fn read_until_close(stream: &mut TcpStream, started: Instant) -> (Vec<u8>, Duration) {
    match read_until_closed(stream) {
        Ok(received) => (received, started.elapsed()),
        Err(err) => panic!("connection still open after {:?}: {err}", started.elapsed()),
    }
}

fn short_header_timeout(timeout: Duration) -> TestServer {
    start(server().http1_header_read_timeout(timeout), hello)
}

#[test]
fn silent_connection_is_closed_after_header_read_timeout() {
    let server = short_header_timeout(Duration::from_millis(300));
    let addr = server.addr();
    let mut stream = connect_with_timeout(addr, Duration::from_secs(5));
    let started = Instant::now();
    let (received, elapsed) = read_until_close(&mut stream, started);
    assert!(received.is_empty(), "nothing should be sent: {received:?}");
    assert!(
        elapsed >= Duration::from_millis(300),
        "closed early: {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(3), "closed late: {elapsed:?}");
}

#[cfg(feature = "http2")]
#[test]
fn partial_http2_preface_is_closed_after_header_read_timeout() {
    // hyper-util's auto builder runs no timer while it reads the preface; ours must.
    let server = short_header_timeout(Duration::from_millis(300));
    let addr = server.addr();
    let mut stream = connect_with_timeout(addr, Duration::from_secs(5));
    stream.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
    let started = Instant::now();
    let (_, elapsed) = read_until_close(&mut stream, started);
    assert!(elapsed < Duration::from_secs(3), "closed late: {elapsed:?}");
}

#[test]
fn byte_by_byte_head_is_closed_after_header_read_timeout() {
    let server = short_header_timeout(Duration::from_millis(500));
    let addr = server.addr();
    let stream = connect_with_timeout(addr, Duration::from_secs(5));
    let started = Instant::now();
    let mut writer = stream.try_clone().unwrap();
    let dribble = thread::spawn(move || {
        // A never-ending head, one byte every 50 ms.
        let head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        for byte in head.iter().cycle().take(200) {
            if writer.write_all(&[*byte]).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
    });
    let mut stream = stream;
    let (received, elapsed) = read_until_close(&mut stream, started);
    assert!(
        !String::from_utf8_lossy(&received).contains("200 OK"),
        "an incomplete head must not be answered"
    );
    assert!(
        elapsed >= Duration::from_millis(500),
        "closed early: {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(3), "closed late: {elapsed:?}");
    join_within(dribble, Duration::from_secs(15), "dribbling client");
}

#[test]
fn a_slow_but_timely_head_is_answered() {
    let server = short_header_timeout(Duration::from_millis(800));
    let addr = server.addr();
    let mut conn = RawConn::open(addr);
    // The workload: a head in pieces, 400 ms in all, within the timeout.
    conn.send(b"GET / HTTP/1.1\r\n");
    thread::sleep(Duration::from_millis(200));
    conn.send(b"Host: x\r\n");
    thread::sleep(Duration::from_millis(200));
    conn.send(b"\r\n");
    let response = conn.read_response().expect("a response");
    assert_eq!(response.status, 200);
    assert_eq!(response.body_str(), "hello");
}

#[test]
fn header_read_timeout_does_not_cut_slow_handlers() {
    let server = server().http1_header_read_timeout(Duration::from_millis(200));
    let server = start(server, |_req, _info| {
        // Longer than the header read timeout.
        thread::sleep(Duration::from_millis(700));
        Response::new(Body::new("slow"))
    });
    let addr = server.addr();
    let response = raw_request(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(response.status, 200);
    assert_eq!(response.body_str(), "slow");
}

#[test]
fn idle_keep_alive_connection_is_closed_after_keep_alive_timeout() {
    let server = server()
        .http1_header_read_timeout(Duration::from_secs(10))
        .http1_keep_alive_timeout(Duration::from_millis(400));
    let server = start(server, hello);
    let addr = server.addr();
    let mut conn = RawConn::open(addr);
    // Requests spaced closer than the timeout keep the connection open.
    for _ in 0..3 {
        conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(conn.read_response().expect("a response").status, 200);
        thread::sleep(Duration::from_millis(200));
    }
    conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(conn.read_response().expect("a response").status, 200);
    let started = Instant::now();
    let closed = conn
        .read_to_close()
        .expect("the server closes the idle connection");
    let elapsed = started.elapsed();
    assert!(closed.is_empty());
    assert!(
        elapsed >= Duration::from_millis(350),
        "closed early: {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(3), "closed late: {elapsed:?}");
}

#[test]
fn keep_alive_timeout_off_keeps_idle_connections() {
    let server = server()
        .http1_header_read_timeout(Duration::from_millis(200))
        .http1_keep_alive_timeout(None);
    let server = start(server, hello);
    let addr = server.addr();
    let mut conn = RawConn::open(addr);
    conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(conn.read_response().unwrap().status, 200);
    // Idle for longer than the header-read timeout: that one must not apply.
    assert!(conn.is_quiet_for(Duration::from_millis(800)));
    conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(conn.read_response().unwrap().status, 200);
}

/// A body of `len` bytes produced on demand.
struct Zeros(usize);

impl Read for Zeros {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.0);
        buf[..n].fill(0);
        self.0 -= n;
        Ok(n)
    }
}

/// [`Zeros`] that counts what it produced.
struct CountedZeros {
    zeros: Zeros,
    produced: Arc<AtomicU64>,
}

impl Read for CountedZeros {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.zeros.read(buf)?;
        self.produced.fetch_add(n as u64, Ordering::SeqCst);
        Ok(n)
    }
}

#[test]
fn stalled_reader_is_disconnected_after_send_timeout_without_holding_a_worker() {
    const BIG: usize = 256 * 1024 * 1024;
    let produced = Arc::new(AtomicU64::new(0));
    let counter = produced.clone();
    let server = server().max_workers(1).send_timeout(Duration::from_secs(1));
    let server = start(server, move |request: astra::Request, _info| {
        if request.uri().path() == "/big" {
            Response::new(Body::wrap_reader(CountedZeros {
                zeros: Zeros(BIG),
                produced: counter.clone(),
            }))
        } else {
            Response::new(Body::new("small"))
        }
    });
    let addr = server.addr();
    let mut stalled = connect_with_timeout(addr, Duration::from_secs(10));
    stalled
        .write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // Never read: the socket buffers fill, then writes block.
    wait_until_stalled(server.handle(), &produced);
    // The only worker is free: the blocked response holds no thread.
    let started = Instant::now();
    let response = raw_request(
        addr,
        b"GET /small HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(response.body_str(), "small");
    assert!(started.elapsed() < Duration::from_secs(2));
    let stats = server.handle().stats();
    assert_eq!(
        stats.closed_for(CloseReason::SendTimeout),
        0,
        "answered only once the send timeout had closed the stalled response: {stats:?}"
    );
    wait_for_stats(server.handle(), "the send timeout fires", |s| {
        s.closed_for(CloseReason::SendTimeout) == 1
    });
    let (received, _) = read_until_close(&mut stalled, Instant::now());
    assert!(
        received.len() < BIG,
        "the stalled response should have been cut off, got {} bytes",
        received.len()
    );
}

/// A reader that pauses before each read until `until`: a client slower
/// than the server, but never silent for long.
struct Paced<R> {
    inner: R,
    pause: Duration,
    until: Instant,
}

impl<R: Read> Read for Paced<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if Instant::now() < self.until {
            thread::sleep(self.pause);
        }
        self.inner.read(buf)
    }
}

#[test]
fn slow_but_steady_reader_gets_the_whole_response() {
    const LEN: u64 = 8 * 1024 * 1024;
    let server = server().send_timeout(Duration::from_millis(500));
    let server = start(server, |_req, _info| {
        Response::new(Body::wrap_reader(Generated::new(LEN)))
    });
    let addr = server.addr();
    let mut conn = RawConn::open(addr);
    conn.send(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let (_, status, head, headers) = conn.read_head().unwrap();
    assert_eq!(status, 200, "{head}");
    assert!(
        headers.contains(&("transfer-encoding".into(), "chunked".into())),
        "{head}"
    );
    // For 2 s, reads of at most 512 KiB with pauses shorter than the send
    // timeout; then as fast as it comes.
    let mut paced = BufReader::with_capacity(
        512 * 1024,
        Paced {
            inner: &mut conn.reader,
            pause: Duration::from_millis(100),
            until: Instant::now() + Duration::from_secs(2),
        },
    );
    let body = decode_chunked(&mut paced).expect("the whole chunked body");
    assert_eq!(body.len() as u64, LEN, "bytes received");
    assert_whole_pattern(&body);
    assert!(paced.buffer().is_empty(), "nothing after the last chunk");
    drop(paced);
    assert_eq!(conn.read_to_close().unwrap(), b"", "then the close");
}

#[cfg(feature = "http2")]
mod http2_ping {
    use super::*;

    /// Opens an HTTP/2 connection that never answers PINGs, and returns how
    /// long until the server closed it (or `None` if it stayed open `limit`).
    fn unresponsive_http2_client(addr: std::net::SocketAddr, limit: Duration) -> Option<Duration> {
        let mut stream = connect_with_timeout(addr, limit);
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .unwrap();
        // An empty SETTINGS frame: length 0, type 4, flags 0, stream 0.
        stream.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return Some(started.elapsed()),
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::ConnectionReset => {
                    return Some(started.elapsed())
                }
                Err(_) => return None,
            }
        }
    }

    #[test]
    fn unanswered_pings_close_the_connection() {
        let server = server()
            .http2_keep_alive_interval(Duration::from_millis(200))
            .http2_keep_alive_timeout(Duration::from_millis(300));
        let server = start(server, hello);
        let addr = server.addr();
        let closed = unresponsive_http2_client(addr, Duration::from_secs(5))
            .expect("the server should close a peer that ignores PINGs");
        assert!(closed < Duration::from_secs(3), "closed late: {closed:?}");
    }

    /// `http2_keep_alive_timeout` used to take a plain `Duration`; `None`
    /// waits for the PING's answer for ever, so the same silent peer that
    /// `unanswered_pings_close_the_connection` closes stays connected.
    #[test]
    fn ping_timeout_none_keeps_a_silent_peer_open() {
        let server = server()
            .http2_keep_alive_interval(Duration::from_millis(200))
            .http2_keep_alive_timeout(None);
        let server = start(server, hello);
        let addr = server.addr();
        assert_eq!(
            unresponsive_http2_client(addr, Duration::from_millis(1500)),
            None,
            "with no PING timeout the unanswering peer must stay connected"
        );
    }

    #[test]
    fn without_pings_the_same_connection_stays_open() {
        let server = start(server(), hello);
        let addr = server.addr();
        assert_eq!(
            unresponsive_http2_client(addr, Duration::from_millis(1500)),
            None,
            "with default settings the idle connection must stay open"
        );
    }
}

#[test]
fn slowloris_connections_are_reaped_while_real_clients_are_served() {
    const SLOW: usize = 1000;
    let limit = raise_nofile(4 * SLOW as u64 + 512);
    let slow = SLOW.min((limit as usize).saturating_sub(512) / 2);
    assert!(slow >= 200, "cannot open enough descriptors: limit {limit}");
    let server = server().http1_header_read_timeout(Duration::from_secs(1));
    let server = start(server, hello);
    let addr = server.addr();
    let started = Instant::now();
    let mut attackers = Vec::with_capacity(slow);
    for _ in 0..slow {
        let mut stream = connect_with_timeout(addr, Duration::from_secs(5));
        stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
        attackers.push(stream);
    }
    // Keep dribbling header lines while probing with real requests.
    let mut answered = 0;
    let mut probes = 0;
    while started.elapsed() < Duration::from_millis(2500) {
        for stream in &mut attackers {
            let _ = stream.write_all(b"X-a: b\r\n");
        }
        probes += 1;
        let mut probe = connect_with_timeout(addr, Duration::from_secs(2));
        if probe
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .is_ok()
        {
            let mut reply = Vec::new();
            if probe.read_to_end(&mut reply).is_ok() && reply.starts_with(b"HTTP/1.1 200") {
                answered += 1;
            }
        }
        // The attack's pace: a header line per connection every 100 ms.
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        answered, probes,
        "every probe must be answered during the attack"
    );
    // Every slow connection runs out of time and is closed; the last ones were
    // accepted late (the listen backlog overflows), so allow them a while.
    let mut open: Vec<TcpStream> = attackers;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !open.is_empty() && Instant::now() < deadline {
        open.retain_mut(|stream| {
            stream
                .set_read_timeout(Some(Duration::from_millis(20)))
                .unwrap();
            let mut buf = [0u8; 256];
            match stream.read(&mut buf) {
                Ok(0) => false,
                Err(err) if err.kind() == io::ErrorKind::ConnectionReset => false,
                _ => true,
            }
        });
    }
    let reaped = slow - open.len();
    assert_eq!(reaped, slow, "all slow connections should be closed");
}

#[test]
fn a_stalled_request_body_times_out_and_frees_the_worker() {
    let server = server()
        .max_workers(1)
        .body_read_timeout(Duration::from_millis(400));
    let server = start(server, |mut request: astra::Request, _info| {
        let mut body = Vec::new();
        match request.body_mut().reader().read_to_end(&mut body) {
            Ok(n) => Response::new(Body::new(format!("read {n}"))),
            Err(err) if err.kind() == io::ErrorKind::TimedOut => astra::ResponseBuilder::new()
                .status(408)
                .body(Body::new("body read timeout"))
                .unwrap(),
            Err(err) => Response::new(Body::new(format!("error {err}"))),
        }
    });
    let addr = server.addr();
    let mut conn = RawConn::open(addr);
    // Promise 100 bytes, send 10, then stall.
    conn.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789");
    let started = Instant::now();
    let response = conn
        .read_response()
        .expect("the handler answers after the timeout");
    let elapsed = started.elapsed();
    assert_eq!(response.status, 408);
    assert!(
        elapsed >= Duration::from_millis(400),
        "timed out early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "timed out late: {elapsed:?}"
    );
    // The only worker is free again.
    let response = raw_request(
        addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    );
    assert_eq!(response.body_str(), "read 3");
}

/// Regression: the error a handler got when its body read timed out said
/// `no data from the client for Some(300ms)`, the `Option` printed whole.
#[test]
fn body_read_timeout_message_printed_the_option() {
    let server = server().body_read_timeout(Duration::from_millis(300));
    let server = start(server, |mut request: astra::Request, _info| {
        let mut body = Vec::new();
        match request.body_mut().reader().read_to_end(&mut body) {
            Ok(n) => Response::new(Body::new(format!("read {n}"))),
            Err(err) => Response::new(Body::new(format!("{:?}: {err}", err.kind()))),
        }
    });
    let addr = server.addr();
    let response = raw_request(
        addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789",
    );
    let message = response.body_str();
    assert!(message.starts_with("TimedOut: "), "{message}");
    assert!(message.contains(" 300ms"), "{message}");
    assert!(!message.contains("Some("), "{message}");
}

#[test]
fn a_slow_but_steady_request_body_is_read_whole() {
    let server = server().body_read_timeout(Duration::from_millis(500));
    let server = start(server, |mut request: astra::Request, _info| {
        let mut body = Vec::new();
        match request.body_mut().reader().read_to_end(&mut body) {
            Ok(n) => Response::new(Body::new(format!("read {n}"))),
            Err(err) => Response::new(Body::new(format!("error {err}"))),
        }
    });
    let addr = server.addr();
    let mut conn = RawConn::open(addr);
    conn.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n");
    // Slower overall than the timeout, but never silent for that long.
    for byte in b"0123456789" {
        thread::sleep(Duration::from_millis(150));
        conn.send(&[*byte]);
    }
    assert_eq!(conn.read_response().unwrap().body_str(), "read 10");
}

/// A body read's timeout error names the timeout that fired, as its inner
/// error, and by the same name the close reasons use.
#[test]
fn a_body_read_timeout_error_says_which_timeout_fired() {
    let server = server().body_read_timeout(Duration::from_millis(300));
    let server = start(server, |mut request: astra::Request, _info| {
        let mut body = Vec::new();
        let err = request
            .body_mut()
            .reader()
            .read_to_end(&mut body)
            .unwrap_err();
        let inner = astra::TimeoutError::from_io(&err).map(|e| (e.timeout(), e.duration()));
        Response::new(Body::new(format!(
            "{:?} {:?} {:?} {}",
            err.kind(),
            astra::Timeout::of(&err),
            inner,
            astra::Timeout::BodyRead,
        )))
    });
    let response = raw_request(
        server.addr(),
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789",
    );
    assert_eq!(
        response.body_str(),
        "TimedOut Some(BodyRead) Some((BodyRead, 300ms)) body read timeout"
    );
}

/// The close reasons that are timeouts print as their `Timeout` does.
#[test]
fn close_reasons_and_timeouts_share_their_names() {
    use astra::Timeout;
    for (reason, timeout) in [
        (CloseReason::HeaderReadTimeout, Timeout::HeaderRead),
        (CloseReason::KeepAliveTimeout, Timeout::KeepAlive),
        (CloseReason::SendTimeout, Timeout::Send),
        (CloseReason::ShutdownTimeout, Timeout::Shutdown),
    ] {
        assert_eq!(reason.timeout(), Some(timeout));
        assert_eq!(reason.to_string(), timeout.to_string());
    }
    assert_eq!(CloseReason::Done.timeout(), None);
    assert_eq!(
        CloseReason::HeaderReadTimeout.to_string(),
        "header read timeout"
    );
}
