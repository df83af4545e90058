//! A WebSocket echo server: every text and binary message comes back as it
//! came, on `ws://127.0.0.1:3000/` (or the address given as first argument).
//! An idle socket holds no thread.
//!
//! ```sh
//! cargo run --release --features websocket --example websocket
//! python3 -m websockets ws://127.0.0.1:3000/   # then type lines
//! ```

use astra::websocket::{Message, Sender, WebSocketUpgrade};
use astra::{ConnectionInfo, Request, Response, Server};

fn echo(mut request: Request, _info: ConnectionInfo) -> Response {
    match WebSocketUpgrade::from_request(&mut request) {
        Ok(ws) => ws.serve(|sender: &Sender, message: Message| {
            // Closed sockets refuse; nothing to do about it here.
            let _ = sender.send(message);
        }),
        // Not a WebSocket handshake: the 400 or 426 that says why.
        Err(refusal) => refusal,
    }
}

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".into());
    let server = Server::bind(&addr);
    // WebSocket over HTTP/2 too (RFC 8441), when HTTP/2 is built in.
    #[cfg(feature = "http2")]
    let server = server.http2_enable_connect_protocol();
    println!(
        "echoing WebSocket messages on ws://{}/",
        server.local_addr().expect("bound address")
    );
    server.serve(echo).expect("serve failed");
}
