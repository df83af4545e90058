//! Bodies stream with bounded memory: a 1 GiB upload to a handler that counts
//! it, and a 1 GiB `wrap_reader` response to a client that is slow at first.
//! The test process's resident memory (it holds the server) must grow by less
//! than 64 MiB.
//!
//! Each runs in a child process of its own, so other tests' buffers do not
//! count against it.
//!
//! Idle memory after bursts of large WebSocket echoes stays where the first
//! burst left it (within 16 MiB): the server runs in a child process, the
//! clients in this one.

mod common;

use std::io::{Read, Write};
use std::thread;
use std::time::{Duration, Instant};

use astra::{Body, Request, Response, ResponseBuilder};
use common::RawConn;

const GIB: u64 = 1 << 30;
/// How much the process may grow while streaming a gigabyte.
const GROWTH_LIMIT_KIB: u64 = 64 * 1024;

fn report(what: &str, rss_before: u64, hwm_before: u64) {
    let (rss, hwm) = (common::rss_kib(), common::hwm_kib());
    eprintln!(
        "{what}: VmRSS {rss_before} -> {rss} KiB, VmHWM {hwm_before} -> {hwm} KiB (growth {} KiB)",
        hwm.saturating_sub(rss_before)
    );
    assert!(
        hwm.saturating_sub(rss_before) < GROWTH_LIMIT_KIB,
        "{what}: peak resident memory grew by {} KiB (limit {GROWTH_LIMIT_KIB} KiB): bodies are buffered",
        hwm.saturating_sub(rss_before)
    );
}

#[test]
fn upload_1gib_streams_with_bounded_memory() {
    const TEST: &str = "upload_1gib_streams_with_bounded_memory";
    if !common::is_child(TEST) {
        common::run_in_child(TEST, Duration::from_secs(120));
        return;
    }
    let server = common::start(
        common::server().max_workers(4),
        |mut request: Request, _| {
            let mut len = 0u64;
            for chunk in request.body_mut() {
                match chunk {
                    Ok(data) => len += data.len() as u64,
                    Err(err) => {
                        return ResponseBuilder::new()
                            .status(400)
                            .body(Body::new(err.to_string()))
                            .unwrap()
                    }
                }
            }
            Response::new(Body::new(format!("len={len}")))
        },
    );
    let addr = server.addr();
    // Warm up: threads, buffers.
    assert_eq!(common::get(addr, "/").1, "len=0");
    let (rss_before, hwm_before) = (common::rss_kib(), common::hwm_kib());

    let start = Instant::now();
    let mut conn = RawConn::open(addr);
    conn.send(format!("POST / HTTP/1.1\r\nHost: test\r\nContent-Length: {GIB}\r\n\r\n").as_bytes());
    let block = vec![b'u'; 1 << 20];
    let mut writer = conn.stream().try_clone().unwrap();
    for _ in 0..(GIB >> 20) {
        writer.write_all(&block).expect("uploading");
    }
    let response = conn.read_response().unwrap();
    assert_eq!(response.body_str(), format!("len={GIB}"));
    eprintln!("1 GiB upload took {:?}", start.elapsed());
    report("1 GiB upload", rss_before, hwm_before);
}

#[test]
fn download_1gib_to_slow_client_streams_with_bounded_memory() {
    const TEST: &str = "download_1gib_to_slow_client_streams_with_bounded_memory";
    if !common::is_child(TEST) {
        common::run_in_child(TEST, Duration::from_secs(120));
        return;
    }
    let server = common::start(common::server(), |request: Request, _| {
        if request.uri().path() == "/warm" {
            return Response::new(Body::new("warm"));
        }
        // Chunked: no length known, the reader is the only source of truth.
        Response::new(Body::wrap_reader(common::Generated::new(GIB)))
    });
    let addr = server.addr();
    assert_eq!(common::get(addr, "/warm").1, "warm");
    let (rss_before, hwm_before) = (common::rss_kib(), common::hwm_kib());

    let start = Instant::now();
    let mut conn = RawConn::open(addr);
    conn.send(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n");
    let (_, status, head, headers) = conn.read_head().unwrap();
    assert_eq!(status, 200, "{head}");
    assert!(
        headers
            .iter()
            .any(|(n, v)| n == "transfer-encoding" && v == "chunked"),
        "{head}"
    );

    // Decode the chunked body by hand without keeping it: slow for a while
    // (the server must stop reading its reader), then as fast as we can.
    let slow_until = Instant::now() + Duration::from_secs(2);
    let mut got = 0u64;
    let mut buf = vec![0; 256 * 1024];
    loop {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut conn.reader, &mut line).unwrap();
        let size = u64::from_str_radix(line.trim(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size line {line:?} after {got} bytes"));
        if size == 0 {
            break;
        }
        let mut left = size;
        while left > 0 {
            let slow = Instant::now() < slow_until;
            let want = left.min(if slow { 4096 } else { buf.len() as u64 }) as usize;
            conn.reader.read_exact(&mut buf[..want]).unwrap();
            common::check_pattern(got, &buf[..want]);
            got += want as u64;
            left -= want as u64;
            if slow {
                thread::sleep(Duration::from_millis(2));
            }
        }
        let mut crlf = [0; 2];
        conn.reader.read_exact(&mut crlf).unwrap();
        assert_eq!(&crlf, b"\r\n");
    }
    let mut end = String::new();
    std::io::BufRead::read_line(&mut conn.reader, &mut end).unwrap();
    assert_eq!(end, "\r\n");
    assert_eq!(got, GIB, "bytes received");
    eprintln!("1 GiB download took {:?}", start.elapsed());
    report("1 GiB download to a slow client", rss_before, hwm_before);
}

/// Where the WebSocket echo test's child writes its address.
#[cfg(feature = "websocket")]
const WS_ADDR_FILE_ENV: &str = "ASTRA_TEST_ADDR_FILE";

/// The WebSocket echo test's child: serves echoes, and `/idle` answers
/// "<upgraded connections> <VmRSS KiB>".
#[cfg(feature = "websocket")]
fn websocket_echo_child() {
    use astra::websocket::{Message, Sender, WebSocketUpgrade};

    let addr_file = std::env::var(WS_ADDR_FILE_ENV).expect("address file");
    let server = common::server();
    let handle = server.handle();
    std::fs::write(&addr_file, server.local_addr().unwrap().to_string()).unwrap();
    server
        .serve(move |mut request: Request, _| {
            if request.uri().path() == "/idle" {
                let stats = handle.stats();
                let idle = format!("{} {}", stats.upgraded_connections, common::rss_kib());
                return Response::new(Body::new(idle));
            }
            match WebSocketUpgrade::from_request(&mut request) {
                Ok(ws) => ws.serve(|sender: &Sender, message: Message| {
                    let _ = sender.send(message);
                }),
                Err(refusal) => refusal,
            }
        })
        .expect("serve returned");
}

/// Idle memory used to step up after each burst of WebSocket echoes of up
/// to 256 KiB (a soak: 4 MiB at start, 57 MiB idle after the first round, 98
/// after the second, 0.5 MiB of it in use): glibc kept the free pages of
/// the large frame buffers each socket had grown. Three rounds of 256
/// clients echoing 16 messages of 1 B to 256 KiB; the server's idle memory
/// is read once every socket has ended.
#[cfg(feature = "websocket")]
#[test]
fn idle_memory_does_not_step_up_after_bursts_of_large_websocket_echoes() {
    const TEST: &str = "idle_memory_does_not_step_up_after_bursts_of_large_websocket_echoes";
    const CLIENTS: u64 = 256;
    const MESSAGES: u64 = 16;
    const MAX_MESSAGE: u64 = 256 * 1024;
    /// How much idle memory may grow from the first round to the last.
    const STEP_LIMIT_KIB: u64 = 16 * 1024;
    if common::is_child(TEST) {
        websocket_echo_child();
        return;
    }
    let dir = common::TempDir::new("ws-memory");
    let addr_file = dir.join("addr");
    let mut child =
        common::spawn_child(TEST, &[(WS_ADDR_FILE_ENV, addr_file.display().to_string())]);
    let mut addr = None;
    common::wait_until(Duration::from_secs(30), "the child server starts", || {
        assert!(child.is_running(), "the child server exited early");
        addr = std::fs::read_to_string(&addr_file)
            .ok()
            .and_then(|text| text.trim().parse::<std::net::SocketAddr>().ok());
        addr.is_some()
    });
    let addr = addr.unwrap();
    // Idle: no WebSocket left open; the child's resident memory then.
    let idle_rss = || {
        let mut rss = 0;
        common::wait_until(Duration::from_secs(10), "every WebSocket ends", || {
            let (status, body) = common::get(addr, "/idle");
            assert_eq!(status, 200);
            let (open, kib) = body.split_once(' ').unwrap();
            rss = kib.parse().unwrap();
            open == "0"
        });
        rss
    };
    let round = |round: u64| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|client| {
                thread::spawn(move || {
                    use tungstenite::Message;
                    let request = tungstenite::client::IntoClientRequest::into_client_request(
                        format!("ws://{addr}/"),
                    )
                    .unwrap();
                    let (mut ws, _) = tungstenite::client(request, common::connect(addr)).unwrap();
                    // Sizes from a small LCG: the same in every run.
                    let mut state = round * 1_000_003 + client * 7919 + 1;
                    for _ in 0..MESSAGES {
                        state = state
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let len = 1 + (state >> 33) % MAX_MESSAGE;
                        let message = vec![(state >> 24) as u8; len as usize];
                        ws.send(Message::binary(message.clone())).unwrap();
                        match ws.read().unwrap() {
                            Message::Binary(echo) => assert!(echo == message, "a wrong echo"),
                            other => panic!("not an echo: {other:?}"),
                        }
                    }
                    ws.close(None).unwrap();
                    while ws.read().is_ok() {}
                })
            })
            .collect();
        for client in clients {
            common::join_within(client, Duration::from_secs(120), "a client");
        }
        idle_rss()
    };

    let start = idle_rss();
    let rounds: Vec<u64> = (0..3).map(round).collect();
    eprintln!(
        "idle VmRSS of the server: {start} KiB at start, then {rounds:?} KiB after each round"
    );
    let step = rounds.iter().max().unwrap().saturating_sub(rounds[0]);
    assert!(
        step <= STEP_LIMIT_KIB,
        "idle memory stepped up by {step} KiB after the first round (limit {STEP_LIMIT_KIB} KiB): \
         {start} KiB at start, {rounds:?} KiB after each round"
    );
    drop(child);
}
