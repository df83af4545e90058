//! Request bodies reach handlers without deadlocks: large Content-Length bodies,
//! slow chunked bodies, `Expect: 100-continue`, invalid bodies; each also with
//! `max_workers(1)`, where the only worker is the handler waiting for its body.

mod common;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use astra::test::TestServer;
use astra::{Body, Request, Response, ResponseBuilder, Server};
use common::RawConn;

/// What the counting handler answers: `len=N sum=S` over the body it read, or
/// 400 with the error.
fn count_via_iter(mut request: Request) -> Response {
    let mut len = 0u64;
    let mut sum = 0u64;
    for chunk in request.body_mut() {
        match chunk {
            Ok(bytes) => {
                len += bytes.len() as u64;
                sum = bytes.iter().fold(sum, |s, &b| s.wrapping_add(b as u64));
            }
            Err(err) => return bad_body(err),
        }
    }
    Response::new(Body::new(format!("len={len} sum={sum}")))
}

fn count_via_reader(mut request: Request) -> Response {
    let mut body = Vec::new();
    if let Err(err) = request.body_mut().reader().read_to_end(&mut body) {
        return bad_body(err);
    }
    let sum = body.iter().fold(0u64, |s, &b| s.wrapping_add(b as u64));
    Response::new(Body::new(format!("len={} sum={sum}", body.len())))
}

fn bad_body(err: std::io::Error) -> Response {
    ResponseBuilder::new()
        .status(400)
        .body(Body::new(format!("body error: {err}")))
        .unwrap()
}

fn expected(body: &[u8]) -> String {
    let sum = body.iter().fold(0u64, |s, &b| s.wrapping_add(b as u64));
    format!("len={} sum={sum}", body.len())
}

fn start_counter(server: Server) -> TestServer {
    common::start(server, |request: Request, _| {
        if request.uri().path() == "/reader" {
            count_via_reader(request)
        } else {
            count_via_iter(request)
        }
    })
}

fn pattern_body(len: usize) -> Vec<u8> {
    let mut body = vec![0; len];
    common::Generated::new(len as u64)
        .read_exact(&mut body)
        .unwrap();
    body
}

// --- Content-Length bodies larger than socket buffers -------------------------

fn large_content_length_body(server: Server) {
    let server = start_counter(server);
    let addr = server.addr();
    let body = pattern_body(16 << 20);
    let want = expected(&body);
    for path in ["/iter", "/reader"] {
        let start = Instant::now();
        let mut response = common::agent()
            .post(&common::url(addr, path))
            .send(&body[..])
            .unwrap_or_else(|err| panic!("POST {path} of 16 MiB failed: {err}"));
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.body_mut().read_to_string().unwrap(),
            want,
            "{path}"
        );
        eprintln!("16 MiB upload to {path}: {:?}", start.elapsed());
    }
}

#[test]
fn content_length_body_16mib_reaches_handler() {
    large_content_length_body(common::server());
}

#[test]
fn content_length_body_16mib_reaches_handler_with_one_worker() {
    large_content_length_body(common::server().max_workers(1));
}

/// Several large uploads at once, more than there are workers.
#[test]
fn concurrent_large_uploads_with_two_workers() {
    let server = start_counter(common::server().max_workers(2));
    let addr = server.addr();
    let body = Arc::new(pattern_body(4 << 20));
    let want = expected(&body);
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let body = body.clone();
            thread::spawn(move || {
                let mut response = common::agent()
                    .post(&common::url(addr, "/reader"))
                    .send(&body[..])
                    .unwrap();
                response.body_mut().read_to_string().unwrap()
            })
        })
        .collect();
    for client in clients {
        let got = common::join_within(client, Duration::from_secs(20), "upload");
        assert_eq!(got, want);
    }
}

// --- Chunked bodies sent slowly in pieces ------------------------------------

fn slow_chunked_body(server: Server) {
    let server = start_counter(server);
    let addr = server.addr();
    let mut conn = RawConn::open(addr);
    conn.send(b"POST /iter HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n");
    let mut sent = Vec::new();
    for i in 0..200usize {
        let data: Vec<u8> = (0..(i * 37) % 3000 + 1).map(|k| (k + i) as u8).collect();
        let mut chunk = format!("{:x}\r\n", data.len()).into_bytes();
        chunk.extend_from_slice(&data);
        chunk.extend_from_slice(b"\r\n");
        sent.extend_from_slice(&data);
        // Split each chunk across writes, sometimes inside the size line.
        let cut = (i * 7) % chunk.len();
        conn.send(&chunk[..cut]);
        if i % 10 == 0 {
            // The workload: a slow client, whose pieces arrive apart.
            thread::sleep(Duration::from_millis(5));
        }
        conn.send(&chunk[cut..]);
    }
    conn.send(b"0\r");
    // The last chunk's line, too, comes in two pieces.
    thread::sleep(Duration::from_millis(20));
    conn.send(b"\n\r\n");
    let response = conn.read_response().unwrap();
    assert_eq!(response.status, 200, "{}", response.head);
    assert_eq!(response.body_str(), expected(&sent));

    // The connection is still usable: a second chunked request on it.
    conn.send(b"POST /reader HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
    let response = conn.read_response().unwrap();
    assert_eq!(response.body_str(), expected(b"hello"));
}

#[test]
fn chunked_body_many_slow_pieces_reaches_handler() {
    slow_chunked_body(common::server());
}

#[test]
fn chunked_body_many_slow_pieces_reaches_handler_with_one_worker() {
    slow_chunked_body(common::server().max_workers(1));
}

/// Large chunked upload through a real client (ureq streams a reader chunked).
#[test]
fn chunked_body_16mib_from_ureq_with_one_worker() {
    let server = start_counter(common::server().max_workers(1));
    let addr = server.addr();
    let body = pattern_body(16 << 20);
    let want = expected(&body);
    let mut reader = &body[..];
    let mut response = common::agent()
        .post(&common::url(addr, "/reader"))
        .send(ureq::SendBody::from_reader(&mut reader))
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.body_mut().read_to_string().unwrap(), want);
}

// --- Expect: 100-continue ----------------------------------------------------

fn expect_continue(server: Server) {
    let server = start_counter(server);
    let addr = server.addr();
    let mut conn = RawConn::open(addr);
    let body = pattern_body(300_000);
    conn.send(
        format!(
            "POST /reader HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    let (version, status, head, _) = conn
        .read_head()
        .expect("the server must answer `Expect: 100-continue` before the body is sent");
    assert_eq!((version.as_str(), status), ("HTTP/1.1", 100), "{head}");
    conn.send(&body);
    let response = conn.read_response().unwrap();
    assert_eq!(response.status, 200, "{}", response.head);
    assert_eq!(response.body_str(), expected(&body));
}

#[test]
fn expect_100_continue_then_body() {
    expect_continue(common::server());
}

#[test]
fn expect_100_continue_then_body_with_one_worker() {
    expect_continue(common::server().max_workers(1));
}

// --- Invalid chunked bodies ---------------------------------------------------

/// Sends an invalid chunked body; the handler must see an error (or the
/// connection be closed) and its worker must be free again afterwards.
fn invalid_chunked_body(workers: usize) {
    let reading = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let handled = Arc::new(AtomicUsize::new(0));
    let (r, e, h) = (reading.clone(), errors.clone(), handled.clone());
    let server = common::start(
        common::server().max_workers(workers),
        move |mut request: Request, _| {
            if request.uri().path() == "/ping" {
                return Response::new(Body::new("pong"));
            }
            r.fetch_add(1, Ordering::SeqCst);
            let mut sink = Vec::new();
            let result = request.body_mut().reader().read_to_end(&mut sink);
            h.fetch_add(1, Ordering::SeqCst);
            match result {
                Ok(n) => Response::new(Body::new(format!("read {n} bytes without error"))),
                Err(err) => {
                    e.fetch_add(1, Ordering::SeqCst);
                    bad_body(err)
                }
            }
        },
    );
    let addr = server.addr();
    let bodies: [&[u8]; 3] = [
        b"5\r\nhello\r\nzz\r\nbad\r\n0\r\n\r\n",    // not a hex size
        b"3\r\nabcdef\r\n0\r\n\r\n",                // chunk longer than its size
        b"fffffffffffffffffffff\r\nx\r\n0\r\n\r\n", // size overflows
    ];
    for (i, bad) in bodies.iter().enumerate() {
        let mut conn = RawConn::open(addr);
        conn.send(b"POST /upload HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n");
        // The bad body comes while the handler waits for it.
        common::wait_until(Duration::from_secs(10), "the handler starts", || {
            reading.load(Ordering::SeqCst) > i
        });
        conn.send(bad);
        // Either a 400 (from the handler or hyper) or a closed connection.
        match conn.read_response() {
            Ok(response) => assert!(
                response.status >= 400,
                "invalid chunked body {i} was accepted: {} {}",
                response.head,
                response.body_str()
            ),
            Err(err) => assert!(
                err.kind() != std::io::ErrorKind::WouldBlock
                    && err.kind() != std::io::ErrorKind::TimedOut,
                "invalid chunked body {i}: no answer and no close: {err}"
            ),
        }
        // The handler saw the error rather than a clean end of body.
        common::wait_until(Duration::from_secs(5), "the handler returns", || {
            handled.load(Ordering::SeqCst) > i
        });
        assert_eq!(handled.load(Ordering::SeqCst), i + 1);
        assert_eq!(
            errors.load(Ordering::SeqCst),
            i + 1,
            "handler {i} read no error"
        );
        // The worker is free again.
        let start = Instant::now();
        assert_eq!(common::get(addr, "/ping"), (200, "pong".to_string()));
        assert!(start.elapsed() < Duration::from_secs(2));
    }
}

#[test]
fn invalid_chunked_body_errors_in_handler_and_frees_worker() {
    invalid_chunked_body(4);
}

#[test]
fn invalid_chunked_body_errors_in_handler_and_frees_worker_with_one_worker() {
    invalid_chunked_body(1);
}

/// A client that sends half its Content-Length body and disconnects: the
/// handler gets an error, not a hang, and the only worker is free again.
#[test]
fn client_gone_mid_body_errors_in_handler_with_one_worker() {
    let reading = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let (r, e) = (reading.clone(), errors.clone());
    let server = common::start(
        common::server().max_workers(1),
        move |mut request: Request, _| {
            if request.uri().path() == "/ping" {
                return Response::new(Body::new("pong"));
            }
            r.fetch_add(1, Ordering::SeqCst);
            let mut sink = Vec::new();
            if request.body_mut().reader().read_to_end(&mut sink).is_err() {
                e.fetch_add(1, Ordering::SeqCst);
            }
            Response::new(Body::empty())
        },
    );
    let addr = server.addr();
    let mut stream = common::connect(addr);
    stream
        .write_all(b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 1000000\r\n\r\n")
        .unwrap();
    stream.write_all(&[b'a'; 100_000]).unwrap();
    // Gone while the handler reads.
    common::wait_until(Duration::from_secs(10), "the handler starts", || {
        reading.load(Ordering::SeqCst) == 1
    });
    drop(stream);
    common::wait_until(Duration::from_secs(5), "the handler's read fails", || {
        errors.load(Ordering::SeqCst) > 0
    });
    assert_eq!(
        errors.load(Ordering::SeqCst),
        1,
        "the handler never saw the body end early"
    );
    assert_eq!(common::get(addr, "/ping"), (200, "pong".to_string()));
}

/// A handler that ignores a large request body must not pin its worker or
/// wedge the connection.
#[test]
fn unread_request_body_does_not_pin_the_only_worker() {
    let server = common::start(common::server().max_workers(1), |_, _| {
        Response::new(Body::new("ignored your body"))
    });
    let addr = server.addr();
    let mut conn = RawConn::open(addr);
    conn.send(b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 8388608\r\n\r\n");
    // Send the body on the side; the server may stop reading it at any time.
    let mut writer = conn.stream().try_clone().unwrap();
    let sender = thread::spawn(move || {
        let chunk = vec![b'b'; 64 * 1024];
        for _ in 0..128 {
            if writer.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let response = conn.read_response().unwrap();
    assert_eq!(response.body_str(), "ignored your body");
    drop(conn);
    common::join_within(sender, Duration::from_secs(20), "body sender");
    let start = Instant::now();
    assert_eq!(common::get(addr, "/").1, "ignored your body");
    assert!(start.elapsed() < Duration::from_secs(2));
}

/// A response reader that blocks (waiting for another request, as a pub/sub
/// stream would) must not stop request bodies from flowing to other handlers,
/// even at `max_workers(1)`.
///
/// Set-up: connection A streams a `wrap_reader` response to a client that does
/// not read, so A's task waits for the socket to drain. Connection B's handler
/// then runs on the only worker and waits for its (chunked) body. Client A now
/// reads a little: A's task is woken while no worker is free. The reader of A,
/// once B's handler has started, blocks until B's handler has read its whole
/// body. B's body must still arrive: whatever thread runs A's task must not be
/// the only one left to drive the connections.
#[test]
fn reserve_thread_blocked_in_wrap_reader_stalls_request_bodies() {
    use std::sync::atomic::AtomicBool;
    use std::sync::{Condvar, Mutex};

    struct Shared {
        /// Bytes A's reader has produced.
        produced: AtomicU64,
        b_started: AtomicBool,
        /// Bytes of its body B's handler has read.
        b_read: AtomicUsize,
        gate: Mutex<bool>,
        opened: Condvar,
        /// The thread that ran A's reader while it blocked.
        blocked_on: Mutex<Option<String>>,
    }
    let shared = Arc::new(Shared {
        produced: AtomicU64::new(0),
        b_started: AtomicBool::new(false),
        b_read: AtomicUsize::new(0),
        gate: Mutex::new(false),
        opened: Condvar::new(),
        blocked_on: Mutex::new(None),
    });

    struct GateReader {
        shared: Arc<Shared>,
    }
    impl Read for GateReader {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.shared.b_started.load(Ordering::SeqCst) {
                // Wait (at most 10 s) for B's handler to have read its body.
                let me = thread::current().name().unwrap_or("?").to_string();
                *self.shared.blocked_on.lock().unwrap() = Some(me);
                let gate = self.shared.gate.lock().unwrap();
                let _ = self
                    .shared
                    .opened
                    .wait_timeout_while(gate, Duration::from_secs(10), |open| !*open)
                    .unwrap();
                return Ok(0);
            }
            if self.shared.produced.load(Ordering::SeqCst) >= 256 << 20 {
                return Ok(0);
            }
            buf.fill(b'a');
            self.shared
                .produced
                .fetch_add(buf.len() as u64, Ordering::SeqCst);
            Ok(buf.len())
        }
    }

    let s = shared.clone();
    let server = common::start(
        common::server().max_workers(1),
        move |mut request: Request, _| {
            if request.uri().path() == "/stream" {
                return Response::new(Body::wrap_reader(GateReader { shared: s.clone() }));
            }
            s.b_started.store(true, Ordering::SeqCst);
            let mut body = Vec::new();
            let mut reader = request.body_mut().reader();
            let result = loop {
                let mut buf = [0; 64];
                match reader.read(&mut buf) {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        body.extend_from_slice(&buf[..n]);
                        s.b_read.fetch_add(n, Ordering::SeqCst);
                    }
                    Err(err) => break Err(err),
                }
            };
            *s.gate.lock().unwrap() = true;
            s.opened.notify_all();
            match result {
                Ok(_) => Response::new(Body::new(body)),
                Err(err) => bad_body(err),
            }
        },
    );
    let addr = server.addr();

    // A: a streamed response nobody reads yet; the server fills the socket,
    // and A's task waits for it to drain.
    let mut a = common::connect(addr);
    a.write_all(b"GET /stream HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    common::wait_until_stalled(server.handle(), &shared.produced);

    // B: a handler waiting for the rest of its body on the only worker.
    let mut b = RawConn::open(addr);
    b.send(
        b"POST /upload HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    );
    common::wait_until(Duration::from_secs(5), "B's handler reads hello", || {
        shared.b_read.load(Ordering::SeqCst) == 5
    });

    // A drains a little: its task is woken while the only worker is busy,
    // and waits in the queue.
    let mut drained = vec![0; 1 << 20];
    a.read_exact(&mut drained).unwrap();
    common::wait_for_stats(server.handle(), "A's task queued", |s| s.queued > 0);

    // The rest of B's body, and B's answer.
    let start = Instant::now();
    b.send(b"6\r\n world\r\n0\r\n\r\n");
    let response = b.read_response().unwrap();
    let took = start.elapsed();
    assert_eq!(response.body_str(), "hello world");
    assert!(
        took < Duration::from_secs(3),
        "B's body took {took:?} to reach its handler: A's response reader blocked on thread {:?}, \
         and no other thread drove the connections meanwhile",
        shared.blocked_on.lock().unwrap()
    );
}

/// A handler that answers without reading a body the client has not sent yet
/// (`Expect: 100-continue`): the final response comes without `100 Continue`,
/// so the client can skip sending the body.
#[test]
fn expect_100_continue_skipped_when_handler_does_not_read_body() {
    let server = common::start(common::server().max_workers(1), |_: Request, _| {
        ResponseBuilder::new()
            .status(413)
            .body(Body::new("too large"))
            .unwrap()
    });
    let addr = server.addr();
    let mut conn = RawConn::open(addr);
    conn.send(
        b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 1000000000\r\nExpect: 100-continue\r\n\r\n",
    );
    let response = conn.read_response().unwrap();
    assert_eq!(response.status, 413, "{}", response.head);
    assert_eq!(response.body_str(), "too large");
    // The only worker is free.
    assert_eq!(
        common::raw_request(addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").status,
        413
    );
}

/// Regression (fixed in 8820577): handlers ran outside a blocking section, so
/// when a handler took a chunk of its body and so signalled hyper that it
/// wanted more, the connection task waiting for that signal was woken into the
/// handler thread's own LIFO slot; the handler then parked waiting for the next
/// chunk that only that stranded task could deliver. Any body of more than one
/// read never arrived.
#[test]
fn handler_lifo_slot_strands_connection_task_body_never_arrives() {
    let server = start_counter(common::server());
    let addr = server.addr();
    let body = pattern_body(1 << 20);
    let mut conn = RawConn::open(addr);
    conn.send(
        format!(
            "POST /reader HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    // The body comes once the handler waits for it.
    common::wait_for_stats(server.handle(), "the handler runs", |s| {
        s.handlers_running == 1
    });
    let start = Instant::now();
    conn.send(&body);
    let response = conn.read_response().unwrap();
    assert_eq!(response.body_str(), expected(&body));
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
}

// --- Readers and iteration mixed on one body ------------------------------------

const MIXED_LEN: usize = 1 << 20;

/// Regression: a `BodyReader` kept the rest of the chunk it had taken and
/// dropped it with itself, so a second reader, or iterating the body, went on
/// after a gap. The handler reads 10 bytes through one reader, 7 through
/// another, iterates the rest and echoes it all; `writes` (the body, framed as
/// `head` says) must come back as the pattern, byte for byte.
fn dropped_body_reader_loses_rest_of_its_chunk(head: &str, writes: Vec<Vec<u8>>) {
    let server = common::start(common::server(), |request: Request, _| {
        common::echo_read_mixed(request)
    });
    let addr = server.addr();
    let mut conn = RawConn::open(addr);
    conn.send(head.as_bytes());
    for write in writes {
        conn.send(&write);
    }
    let response = conn.read_response().unwrap();
    assert_eq!(response.status, 200, "{}", response.body_str());
    assert_eq!(response.body.len(), MIXED_LEN);
    common::assert_whole_pattern(&response.body);
}

/// `data` as chunked framing: chunks of `sizes` bytes in turn (the last one
/// cut to fit), one write each, then the last chunk.
fn chunked_writes(data: &[u8], sizes: impl Fn(usize) -> usize) -> Vec<Vec<u8>> {
    let mut writes = Vec::new();
    let mut sent = 0;
    while sent < data.len() {
        let len = sizes(writes.len()).min(data.len() - sent);
        let mut chunk = format!("{len:x}\r\n").into_bytes();
        chunk.extend_from_slice(&data[sent..sent + len]);
        chunk.extend_from_slice(b"\r\n");
        writes.push(chunk);
        sent += len;
    }
    writes.push(b"0\r\n\r\n".to_vec());
    writes
}

const CHUNKED_HEAD: &str = "POST / HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n";

#[test]
fn dropped_body_reader_loses_rest_of_its_chunk_content_length() {
    let head = format!("POST / HTTP/1.1\r\nHost: test\r\nContent-Length: {MIXED_LEN}\r\n\r\n");
    dropped_body_reader_loses_rest_of_its_chunk(&head, vec![pattern_body(MIXED_LEN)]);
}

#[test]
fn dropped_body_reader_loses_rest_of_its_chunk_one_big_chunk() {
    let writes = chunked_writes(&pattern_body(MIXED_LEN), |_| MIXED_LEN);
    dropped_body_reader_loses_rest_of_its_chunk(CHUNKED_HEAD, writes);
}

#[test]
fn dropped_body_reader_loses_rest_of_its_chunk_many_small_chunks() {
    // Chunks of 1 to 1,500 bytes.
    let writes = chunked_writes(&pattern_body(MIXED_LEN), |i| (i * 37) % 1500 + 1);
    dropped_body_reader_loses_rest_of_its_chunk(CHUNKED_HEAD, writes);
}

/// The one worker waits (joins) while a thread of the handler's own reads the
/// body: no worker is free to run the connection that feeds it, so the
/// reading thread must run it itself.
#[test]
fn body_read_on_a_users_own_thread_with_every_worker_busy() {
    let server = common::server().max_workers(1);
    let server = common::start(server, |mut request: Request, _info| {
        let body = std::mem::take(request.body_mut());
        let reader = thread::spawn(move || {
            let mut body = body;
            let mut data = Vec::new();
            body.reader().read_to_end(&mut data).map(|_| data)
        });
        match reader.join().expect("reader thread") {
            Ok(data) => Response::new(Body::new(expected(&data))),
            Err(err) => Response::new(Body::new(format!("error: {err}"))),
        }
    });
    let addr = server.addr();
    let body = pattern_body(3 << 20);
    let want = expected(&body);
    let got = common::within(Duration::from_secs(20), "upload", move || {
        let mut response = common::agent()
            .post(&common::url(addr, "/"))
            .send(&body[..])
            .unwrap();
        response.body_mut().read_to_string().unwrap()
    });
    assert_eq!(got, want);
}
