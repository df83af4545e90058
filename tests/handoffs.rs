//! The runtime's hand-offs, through the public API: a thread that waits by
//! polling the reactor hands that role on whenever it leaves, and only pool
//! workers run user code. Each test here failed before its fix.

mod common;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use astra::{Body, Request, Response, ResponseBuilder, Upgrade};
use common::RawConn;

/// Both workers wait for their request bodies; one of them (A) polls the
/// reactor for the pool while the other (B) sleeps. A's read times out and A
/// goes on with blocking work: the poller role must pass to B at that moment,
/// or B's bytes, sent right after, lie unread until B's own deadline.
#[test]
fn a_poller_whose_read_times_out_hands_the_reactor_to_another_waiter() {
    const READ_TIMEOUT: Duration = Duration::from_secs(2);
    let (events_tx, events) = mpsc::channel::<(&'static str, Instant)>();
    let (result_tx, results) = mpsc::channel::<(String, std::io::Result<String>)>();
    let events_tx = Mutex::new(events_tx);
    let result_tx = Mutex::new(result_tx);
    let server = common::server()
        .max_workers(2)
        .body_read_timeout(READ_TIMEOUT)
        .shutdown_timeout(Duration::from_secs(1));
    let server = common::start(server, move |mut request: Request, _| {
        let name = request.uri().path().trim_start_matches('/').to_string();
        let mut first = [0; 5];
        let mut reader = request.body_mut().reader();
        reader.read_exact(&mut first).unwrap();
        let waiting = if name == "a" { "a waits" } else { "b waits" };
        events_tx
            .lock()
            .unwrap()
            .send((waiting, Instant::now()))
            .unwrap();
        if name == "b" {
            // Long enough for A, unparked by B's arrival, to be the one that
            // polls the reactor by the time B waits.
            thread::sleep(Duration::from_millis(200));
        }
        let mut rest = String::new();
        let outcome = reader.read_to_string(&mut rest).map(|_| rest);
        let failed = outcome.is_err();
        result_tx.lock().unwrap().send((name, outcome)).unwrap();
        if failed {
            // Long blocking work after the timeout, holding this worker.
            thread::sleep(READ_TIMEOUT * 2);
        }
        Response::new(Body::new("done"))
    });
    let addr = server.addr();
    let head =
        |name: &str| format!("POST /{name} HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345");

    let mut a = RawConn::open(addr);
    a.send(head("a").as_bytes());
    let (event, a_started) = events.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(event, "a waits");
    // B starts waiting half a timeout after A, so that its own deadline is
    // well after A's.
    thread::sleep(READ_TIMEOUT / 2);
    let mut b = RawConn::open(addr);
    b.send(head("b").as_bytes());
    let (event, _) = events.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(event, "b waits");

    let (name, outcome) = results.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(name, "a", "A's read ends first");
    let err = outcome.expect_err("A's client sent no more");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    assert!(a_started.elapsed() >= READ_TIMEOUT);

    // A is now in its blocking work; B's last bytes arrive.
    let sent = Instant::now();
    b.send(b"67890");
    let (name, outcome) = results.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(name, "b");
    let got = outcome.unwrap_or_else(|err| {
        panic!(
            "B's read failed ({err}) {:?} after its bytes were sent",
            sent.elapsed()
        )
    });
    assert_eq!(got, "67890");
    assert!(
        sent.elapsed() < READ_TIMEOUT / 4,
        "B's bytes were read {:?} after they were sent",
        sent.elapsed()
    );
    let response = b.read_response().unwrap();
    assert_eq!(response.body_str(), "done");
    drop(a);
}

/// With one worker for requests, busy in a handler, an upgraded stream's
/// continuation (user code, on a worker counted apart) waits on its socket
/// and drives the pool's connection tasks meanwhile. The response body
/// reader of an ordinary request (user code too) must be queued for a
/// worker, never run inside that wait: there it would hold the upgraded
/// stream's echo up while it reads. (Before upgrades ran on the pool, their
/// continuation had a thread outside it; the unit test
/// `user_code_of_a_task_run_off_the_pool_runs_on_a_worker` covers threads
/// outside the pool.)
#[test]
fn a_thread_outside_the_pool_never_runs_a_response_body_reader() {
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: u64 = 256;
    let reader_threads = Arc::new(Mutex::new(Vec::<String>::new()));
    let produced = Arc::new(AtomicU64::new(0));
    let (busy_tx, busy) = mpsc::channel::<()>();
    let busy_tx = Mutex::new(busy_tx);
    let (release_tx, release) = mpsc::channel::<()>();
    let release = Mutex::new(release);
    let (threads, counter) = (reader_threads.clone(), produced.clone());
    let server = common::server()
        .max_workers(1)
        .shutdown_timeout(Duration::from_secs(1));
    let server = common::start(server, move |mut request: Request, _| {
        match request.uri().path() {
            "/upgrade" => {
                let upgrade = Upgrade::from_request(&mut request).expect("an upgrade request");
                upgrade.respond(common::switching("echo"), |mut stream| {
                    let mut buf = [0; 64];
                    loop {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if stream.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                })
            }
            "/busy" => {
                busy_tx.lock().unwrap().send(()).unwrap();
                let _ = release
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(10));
                Response::new(Body::new("free again"))
            }
            _ => {
                let reader = ThreadNoting {
                    threads: threads.clone(),
                    produced: counter.clone(),
                    left: CHUNK as u64 * CHUNKS,
                    chunk: CHUNK,
                };
                ResponseBuilder::new()
                    .header("content-length", (CHUNK as u64 * CHUNKS).to_string())
                    .body(Body::wrap_reader(reader))
                    .unwrap()
            }
        }
    });
    let addr = server.addr();

    // The upgraded stream, its thread waiting for bytes.
    let mut upgraded = RawConn::open(addr);
    upgraded
        .send(b"GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n");
    let (_, status, _, _) = upgraded.read_head().unwrap();
    assert_eq!(status, 101);
    let mut stream = upgraded.stream().try_clone().unwrap();
    let mut echo = [0; 4];
    let mut ping = |stream: &mut std::net::TcpStream| {
        stream.write_all(b"ping").unwrap();
        stream.read_exact(&mut echo).unwrap();
        assert_eq!(&echo, b"ping");
    };
    // Its thread is in its read loop.
    ping(&mut stream);

    // A large reader response to a client that does not read yet: it stalls
    // with the socket full.
    let mut plain = RawConn::open(addr);
    plain.send(b"GET /reader HTTP/1.1\r\nHost: x\r\n\r\n");
    common::wait_until_stalled(server.handle(), &produced);

    // The only worker is taken by a handler; then the client reads.
    let mut busy_conn = RawConn::open(addr);
    busy_conn.send(b"GET /busy HTTP/1.1\r\nHost: x\r\n\r\n");
    busy.recv_timeout(Duration::from_secs(10)).unwrap();
    let fetch = thread::spawn(move || plain.read_response().unwrap().body.len());
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut echoes = 0;
    while echoes < 200 && started.elapsed() < Duration::from_secs(2) {
        let sent = Instant::now();
        ping(&mut stream);
        slowest = slowest.max(sent.elapsed());
        echoes += 1;
    }
    release_tx.send(()).unwrap();
    let len = common::join_within(fetch, Duration::from_secs(10), "the reader response");
    assert_eq!(len, CHUNK * CHUNKS as usize);
    assert_eq!(busy_conn.read_response().unwrap().body_str(), "free again");

    let threads = reader_threads.lock().unwrap();
    let elsewhere: Vec<_> = threads
        .iter()
        .filter(|name| *name != "astra-worker")
        .collect();
    assert!(
        elsewhere.is_empty(),
        "{} of {} reads ran off the pool: {elsewhere:?} (slowest echo {slowest:?})",
        elsewhere.len(),
        threads.len()
    );
    drop(upgraded);
}

/// Yields `left` bytes, at most `chunk` a read, noting the thread of each read and
/// counting them in `produced`.
struct ThreadNoting {
    threads: Arc<Mutex<Vec<String>>>,
    produced: Arc<AtomicU64>,
    left: u64,
    chunk: usize,
}

impl Read for ThreadNoting {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let name = thread::current().name().unwrap_or("unnamed").to_string();
        self.threads.lock().unwrap().push(name);
        let n = buf.len().min(self.chunk).min(self.left as usize);
        if n == 0 {
            return Ok(0);
        }
        buf[..n].fill(b'x');
        self.left -= n as u64;
        self.produced.fetch_add(1, Ordering::SeqCst);
        Ok(n)
    }
}

/// A blocking upgrade's continuation holds a worker for as long as its
/// connection lasts, counted apart from `max_workers`: with one worker for
/// requests and two upgraded streams open, requests are still answered.
#[test]
fn blocking_upgrades_never_take_the_workers_requests_need() {
    let server = common::server()
        .max_workers(1)
        .shutdown_timeout(Duration::from_secs(1));
    let server = common::start(server, |mut request: Request, _| {
        if let Some(upgrade) = Upgrade::from_request(&mut request) {
            return upgrade.respond(common::switching("echo"), |mut stream| {
                let mut buf = [0; 64];
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    if stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
        Response::new(Body::new("plain"))
    });
    let addr = server.addr();
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut conn = RawConn::open(addr);
        conn.send(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n");
        assert_eq!(conn.read_head().unwrap().1, 101);
        let mut stream = conn.stream().try_clone().unwrap();
        stream.write_all(b"ping").unwrap();
        let mut echo = [0; 4];
        stream.read_exact(&mut echo).unwrap();
        assert_eq!(&echo, b"ping");
        streams.push(conn);
    }
    for _ in 0..3 {
        assert_eq!(common::get(addr, "/"), (200, "plain".to_string()));
    }
    let stats = server.handle().stats();
    assert_eq!(stats.handlers_running, 0, "{stats:?}");
    assert!(
        stats.workers >= 3,
        "one per stream and one for requests: {stats:?}"
    );
    drop(streams);
}
