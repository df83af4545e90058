//! WebSocket behaviour (feature `websocket`): handshake refusals, subprotocols,
//! ordering and backpressure with a slow handler, senders on other threads,
//! pings and the idle timeout, the close codes, graceful shutdown, blocking
//! mode, and WebSocket over HTTP/2 (RFC 8441). The client is tungstenite's
//! over a real socket; raw frames where the client would refuse to send them.

#![cfg(feature = "websocket")]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use astra::test::TestServer;
use astra::websocket::{CloseCode, CloseFrame, Handler, Message, Sender, WebSocketUpgrade};
use astra::{ConnectionInfo, Request, Server};
use common::*;

type Client = tungstenite::WebSocket<TcpStream>;

fn open(addr: SocketAddr) -> Client {
    open_with(addr, &[])
}

fn open_with(addr: SocketAddr, protocols: &[&str]) -> Client {
    let stream = connect(addr);
    let mut request =
        tungstenite::client::IntoClientRequest::into_client_request(format!("ws://{addr}/"))
            .unwrap();
    if !protocols.is_empty() {
        request.headers_mut().insert(
            "sec-websocket-protocol",
            protocols.join(", ").parse().unwrap(),
        );
    }
    let (client, _) = tungstenite::client(request, stream).expect("the WebSocket handshake");
    client
}

/// Reads until a close frame arrives; returns its code and reason.
fn read_close(client: &mut Client) -> (CloseCode, String) {
    loop {
        match client.read() {
            Ok(Message::Close(Some(frame))) => return (frame.code, frame.reason.to_string()),
            Ok(Message::Close(None)) => panic!("a close frame without a code"),
            Ok(_) => continue,
            Err(err) => panic!("no close frame: {err}"),
        }
    }
}

fn echo_server(server: Server) -> TestServer {
    start(
        server,
        |mut request: Request, _info: ConnectionInfo| match WebSocketUpgrade::from_request(
            &mut request,
        ) {
            Ok(ws) => ws.serve(|sender: &Sender, message: Message| {
                let _ = sender.send(message);
            }),
            Err(refusal) => refusal,
        },
    )
}

fn handshake(addr: SocketAddr, method: &str, extra: &str) -> RawResponse {
    let request = format!("{method} / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{extra}\r\n");
    raw_request(addr, request.as_bytes())
}

#[test]
fn a_request_that_is_no_websocket_handshake_gets_a_reason() {
    let server = echo_server(server());
    let addr = server.addr();
    let plain = handshake(addr, "GET", "");
    assert_eq!(plain.status, 426);
    assert_eq!(plain.header("upgrade"), Some("websocket"));
    const UPGRADE: &str = "upgrade: websocket\r\nconnection: upgrade\r\n";
    let key = "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let old = handshake(
        addr,
        "GET",
        &format!("{UPGRADE}sec-websocket-version: 8\r\n{key}"),
    );
    assert_eq!(old.status, 426);
    assert_eq!(old.header("sec-websocket-version"), Some("13"));
    let post = handshake(
        addr,
        "POST",
        &format!("{UPGRADE}sec-websocket-version: 13\r\n{key}"),
    );
    assert_eq!(post.status, 405);
    let no_key = handshake(
        addr,
        "GET",
        &format!("{UPGRADE}sec-websocket-version: 13\r\n"),
    );
    assert_eq!(no_key.status, 400);
    assert!(no_key.body_str().contains("Sec-WebSocket-Key"));
    let bad_key = handshake(
        addr,
        "GET",
        &format!("{UPGRADE}sec-websocket-version: 13\r\nsec-websocket-key: short\r\n"),
    );
    assert_eq!(bad_key.status, 400);
}

#[test]
fn the_accept_key_is_the_rfc_one() {
    let server = echo_server(server());
    let addr = server.addr();
    let mut conn = RawConn::open(addr);
    conn.send(
        b"GET / HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
          sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    let (_, status, _, headers) = conn.read_head().unwrap();
    assert_eq!(status, 101);
    // RFC 6455, section 1.3's example.
    assert!(headers.contains(&(
        "sec-websocket-accept".into(),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into()
    )));
}

#[test]
fn the_first_server_protocol_the_client_offers_is_selected() {
    let server = start(server(), |mut request: Request, _info: ConnectionInfo| {
        match WebSocketUpgrade::from_request(&mut request) {
            Ok(ws) => {
                let ws = ws.protocols(["chat", "superchat"]);
                let chosen = ws.selected_protocol().unwrap_or("-").to_owned();
                ws.serve(move |sender: &Sender, _message: Message| {
                    let _ = sender.send(chosen.clone());
                })
            }
            Err(refusal) => refusal,
        }
    });
    let addr = server.addr();
    let mut client = open_with(addr, &["superchat", "chat"]);
    client.send(Message::text("which?")).unwrap();
    assert_eq!(client.read().unwrap(), Message::text("chat"));
    // None of ours offered: none selected (the client then decides).
    let mut conn = RawConn::open(addr);
    conn.send(
        b"GET / HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
          sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          sec-websocket-protocol: mqtt\r\n\r\n",
    );
    let (_, status, _, headers) = conn.read_head().unwrap();
    assert_eq!(status, 101);
    assert!(!headers
        .iter()
        .any(|(name, _)| name == "sec-websocket-protocol"));
}

#[test]
fn a_refused_origin_gets_403() {
    let server = start(server(), |mut request: Request, _info: ConnectionInfo| {
        match WebSocketUpgrade::from_request(&mut request) {
            Ok(ws) => ws
                .allow_origin(|origin| matches!(origin, None | Some("http://good.test")))
                .serve(|_: &Sender, _: Message| {}),
            Err(refusal) => refusal,
        }
    });
    let addr = server.addr();
    let extra = "upgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-version: 13\r\n\
                 sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let evil = handshake(addr, "GET", &format!("{extra}origin: http://evil.test\r\n"));
    assert_eq!(evil.status, 403);
    let mut conn = RawConn::open(addr);
    conn.send(
        format!("GET / HTTP/1.1\r\nhost: x\r\n{extra}origin: http://good.test\r\n\r\n").as_bytes(),
    );
    assert_eq!(conn.read_head().unwrap().1, 101);
}

#[test]
fn text_and_binary_are_echoed_as_they_came() {
    let server = echo_server(server());
    let addr = server.addr();
    let mut client = open(addr);
    client.send(Message::text("héllo")).unwrap();
    assert_eq!(client.read().unwrap(), Message::text("héllo"));
    client.send(Message::binary(vec![0u8, 255, 1])).unwrap();
    assert_eq!(client.read().unwrap(), Message::binary(vec![0u8, 255, 1]));
    let big: Vec<u8> = (0..(3 << 20)).map(|i| (i % 251) as u8).collect();
    client.send(Message::binary(big.clone())).unwrap();
    assert_eq!(client.read().unwrap(), Message::binary(big));
    client.close(None).unwrap();
    loop {
        match client.read() {
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(err) => panic!("the close handshake failed: {err}"),
        }
    }
}

#[test]
fn a_slow_handler_loses_nothing_and_keeps_the_order() {
    let server = start(server(), |mut request: Request, _info: ConnectionInfo| {
        match WebSocketUpgrade::from_request(&mut request) {
            Ok(ws) => ws
                .max_queued_messages(4)
                .serve(|sender: &Sender, message: Message| {
                    // Slower than the client sends.
                    thread::sleep(Duration::from_millis(2));
                    let _ = sender.send(message);
                }),
            Err(refusal) => refusal,
        }
    });
    let addr = server.addr();
    let mut client = open(addr);
    // The client sends far ahead of the handler: the server stops reading
    // when four wait, and TCP holds the rest.
    let count = 300;
    for i in 0..count {
        client.write(Message::text(format!("m{i}"))).unwrap();
    }
    client.flush().unwrap();
    for i in 0..count {
        assert_eq!(client.read().unwrap(), Message::text(format!("m{i}")));
    }
}

/// A handler that hands each socket's sender to the test and records closes.
struct Registry {
    senders: Mutex<mpsc::Sender<Sender>>,
    closes: Mutex<mpsc::Sender<Option<CloseFrame>>>,
}

impl Handler for Registry {
    fn on_open(&self, sender: &Sender) {
        let _ = self.senders.lock().unwrap().send(sender.clone());
    }

    fn on_message(&self, _sender: &Sender, _message: Message) {}

    fn on_close(&self, sender: &Sender, frame: Option<CloseFrame>) {
        assert!(sender.is_closed());
        let _ = self.closes.lock().unwrap().send(frame);
    }
}

fn registry_server(
    server: Server,
) -> (
    TestServer,
    mpsc::Receiver<Sender>,
    mpsc::Receiver<Option<CloseFrame>>,
) {
    let (senders_tx, senders) = mpsc::channel();
    let (closes_tx, closes) = mpsc::channel();
    let registry = Arc::new(Registry {
        senders: Mutex::new(senders_tx),
        closes: Mutex::new(closes_tx),
    });
    let server = start(
        server,
        move |mut request: Request, _info: ConnectionInfo| match WebSocketUpgrade::from_request(
            &mut request,
        ) {
            Ok(ws) => ws.serve(SharedHandler(registry.clone())),
            Err(refusal) => refusal,
        },
    );
    (server, senders, closes)
}

struct SharedHandler(Arc<Registry>);

impl Handler for SharedHandler {
    fn on_open(&self, sender: &Sender) {
        self.0.on_open(sender)
    }
    fn on_message(&self, sender: &Sender, message: Message) {
        self.0.on_message(sender, message)
    }
    fn on_close(&self, sender: &Sender, frame: Option<CloseFrame>) {
        self.0.on_close(sender, frame)
    }
}

#[test]
fn any_thread_can_send_and_the_handler_hears_the_close() {
    let (server, senders, closes) = registry_server(server());
    let addr = server.addr();
    // One at a time: `on_open` may run after the client's handshake is
    // done, so two opened at once could hand their senders over either way.
    let mut first = open(addr);
    let a = senders.recv_timeout(Duration::from_secs(10)).unwrap();
    let mut second = open(addr);
    let b = senders.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_ne!(a.id(), b.id());
    // Broadcast from this thread, and from another.
    for sender in [&a, &b] {
        sender.send("to everyone").unwrap();
    }
    let c = b.clone();
    thread::spawn(move || c.send(Message::binary(vec![7u8])).unwrap())
        .join()
        .unwrap();
    assert_eq!(first.read().unwrap(), Message::text("to everyone"));
    assert_eq!(second.read().unwrap(), Message::text("to everyone"));
    assert_eq!(second.read().unwrap(), Message::binary(vec![7u8]));
    // The client closes: the handler gets its frame, and senders refuse.
    first
        .close(Some(CloseFrame {
            code: CloseCode::Library(4000),
            reason: "bye".into(),
        }))
        .unwrap();
    let frame = closes
        .recv_timeout(Duration::from_secs(10))
        .unwrap()
        .unwrap();
    assert_eq!(frame.code, CloseCode::Library(4000));
    assert_eq!(frame.reason.as_str(), "bye");
    assert_eq!(a.send("late"), Err(astra::websocket::SendError::Closed));
    // The server closes from a sender.
    b.close(CloseCode::Policy, "enough");
    assert_eq!(
        read_close(&mut second),
        (CloseCode::Policy, "enough".into())
    );
}

#[test]
fn a_silent_client_gets_a_ping_then_the_idle_timeout() {
    let server = start(server(), |mut request: Request, _info: ConnectionInfo| {
        match WebSocketUpgrade::from_request(&mut request) {
            Ok(ws) => ws
                .ping_interval(Some(Duration::from_millis(200)))
                .idle_timeout(Some(Duration::from_millis(600)))
                .serve(|_: &Sender, _: Message| {}),
            Err(refusal) => refusal,
        }
    });
    let addr = server.addr();
    // A raw client that never answers: a client that reads answers pings,
    // and a pong is traffic, so it would never be idle.
    let started = Instant::now();
    let mut raw = raw_websocket(addr);
    let (opcode, _) = read_frame(&mut raw);
    assert_eq!(opcode, 0x9, "a ping first");
    let pinged = started.elapsed();
    assert!(pinged >= Duration::from_millis(150), "{pinged:?}");
    let (opcode, payload) = read_frame(&mut raw);
    assert_eq!(opcode, 0x8, "then a close");
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1000);
    assert_eq!(&payload[2..], b"idle timeout");
    let closed = started.elapsed();
    assert!(closed >= Duration::from_millis(550), "{closed:?}");
    assert!(closed < Duration::from_secs(5), "{closed:?}");
}

/// Reads one server frame: its opcode and payload.
fn read_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    stream
        .read_exact(&mut head)
        .expect("a frame from the server");
    assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
    let len = match head[1] & 0x7f {
        126 => {
            let mut ext = [0u8; 2];
            stream.read_exact(&mut ext).unwrap();
            u16::from_be_bytes(ext) as usize
        }
        127 => {
            let mut ext = [0u8; 8];
            stream.read_exact(&mut ext).unwrap();
            u64::from_be_bytes(ext) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).unwrap();
    (head[0] & 0x0f, payload)
}

#[test]
fn invalid_utf8_closes_with_1007_and_a_too_big_message_with_1009() {
    let server = start(server(), |mut request: Request, _info: ConnectionInfo| {
        match WebSocketUpgrade::from_request(&mut request) {
            Ok(ws) => ws
                .max_message_size(1024)
                .serve(|sender: &Sender, message: Message| {
                    let _ = sender.send(message);
                }),
            Err(refusal) => refusal,
        }
    });
    let addr = server.addr();
    // Invalid UTF-8 in a text frame, which tungstenite's client would not send.
    let mut raw = raw_websocket(addr);
    raw.write_all(&masked_frame(0x81, &[0xff, 0xfe, 0x41]))
        .unwrap();
    assert_eq!(read_close_code(&mut raw), 1007);

    let mut client = open(addr);
    client.send(Message::binary(vec![0u8; 2048])).unwrap();
    assert_eq!(read_close(&mut client).0, CloseCode::Size);
}

/// Opens a WebSocket by hand; returns the socket after the 101.
fn raw_websocket(addr: SocketAddr) -> TcpStream {
    let mut conn = RawConn::open(addr);
    conn.send(
        b"GET / HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
          sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    assert_eq!(conn.read_head().unwrap().1, 101);
    assert!(conn.reader.buffer().is_empty());
    conn.reader.into_inner()
}

/// A client frame: `first` is FIN/RSV/opcode, the payload masked.
fn masked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![first, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Reads server frames until a close frame; returns its code.
fn read_close_code(stream: &mut TcpStream) -> u16 {
    loop {
        let (opcode, payload) = read_frame(stream);
        if opcode == 0x8 {
            assert!(payload.len() >= 2, "a close frame without a code");
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}

#[test]
fn a_handler_panic_closes_with_1011_and_the_server_goes_on() {
    let server = start(server(), |mut request: Request, _info: ConnectionInfo| {
        match WebSocketUpgrade::from_request(&mut request) {
            Ok(ws) => ws.serve(|sender: &Sender, message: Message| {
                if message == Message::text("panic") {
                    panic!("asked to");
                }
                let _ = sender.send(message);
            }),
            Err(refusal) => refusal,
        }
    });
    let addr = server.addr();
    let mut client = open(addr);
    client.send(Message::text("panic")).unwrap();
    assert_eq!(read_close(&mut client).0, CloseCode::Error);
    let mut other = open(addr);
    other.send(Message::text("still here")).unwrap();
    assert_eq!(other.read().unwrap(), Message::text("still here"));
}

#[test]
fn graceful_shutdown_closes_with_1001_and_serve_returns() {
    let server = server().shutdown_timeout(Duration::from_secs(10));
    let handle = server.handle();
    let addr = server.local_addr().unwrap();
    let serving = thread::spawn(move || {
        server.serve(|mut request: Request, _info: ConnectionInfo| {
            match WebSocketUpgrade::from_request(&mut request) {
                Ok(ws) => ws.serve(|sender: &Sender, message: Message| {
                    let _ = sender.send(message);
                }),
                Err(refusal) => refusal,
            }
        })
    });
    let mut clients: Vec<Client> = (0..3).map(|_| open(addr)).collect();
    for client in &mut clients {
        client.send(Message::text("up?")).unwrap();
        assert_eq!(client.read().unwrap(), Message::text("up?"));
    }
    let started = Instant::now();
    handle.shutdown();
    for client in &mut clients {
        assert_eq!(
            read_close(client),
            (CloseCode::Away, "server shutting down".into())
        );
        // tungstenite's client answers the close; the server then closes.
        loop {
            match client.read() {
                Ok(_) => continue,
                Err(tungstenite::Error::ConnectionClosed) => break,
                Err(err) => panic!("{err}"),
            }
        }
    }
    join_within(serving, Duration::from_secs(10), "serve").unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn blocking_mode_echoes_on_a_thread_of_its_own() {
    let server = start(server(), |mut request: Request, _info: ConnectionInfo| {
        match WebSocketUpgrade::from_request(&mut request) {
            Ok(ws) => ws.blocking(|mut socket| {
                while let Ok(message) = socket.read() {
                    if (message.is_text() || message.is_binary()) && socket.send(message).is_err() {
                        break;
                    }
                }
            }),
            Err(refusal) => refusal,
        }
    });
    let addr = server.addr();
    let mut client = open(addr);
    for i in 0..10 {
        client.send(Message::text(format!("b{i}"))).unwrap();
        assert_eq!(client.read().unwrap(), Message::text(format!("b{i}")));
    }
}

#[cfg(feature = "http2")]
#[test]
fn websocket_over_http2_extended_connect() {
    let server = echo_server(server().http2_enable_connect_protocol());
    let addr = server.addr();
    let frame = masked_frame(0x81, b"over h2");
    let reply = h2_extended_connect(
        addr,
        "websocket",
        &[("sec-websocket-version", "13")],
        &frame,
        |got| got.len() >= 2 + 7,
    );
    // An unmasked text frame with the same payload.
    assert_eq!(reply[0], 0x81);
    assert_eq!(reply[1], 7);
    assert_eq!(&reply[2..], b"over h2");
}

#[test]
fn messages_queued_before_a_shutdown_arrive_before_its_1001() {
    let server = server().shutdown_timeout(Duration::from_secs(10));
    let (server, senders, _closes) = registry_server(server);
    let addr = server.addr();
    let mut client = open(addr);
    let sender = senders.recv_timeout(Duration::from_secs(10)).unwrap();
    // More than the sockets' buffers hold while the client does not read:
    // most of it is still queued when the shutdown starts.
    let message = |i: usize| format!("q{i}:{}", "x".repeat(64 * 1024));
    for i in 0..150 {
        sender.send(message(i)).unwrap();
    }
    server.handle().shutdown();
    for i in 0..150 {
        assert_eq!(client.read().unwrap(), Message::text(message(i)));
    }
    assert_eq!(
        read_close(&mut client),
        (CloseCode::Away, "server shutting down".into())
    );
}
