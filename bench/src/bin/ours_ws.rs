//! The library under test as a WebSocket echo server (features `http2` and
//! `websocket`), messages mode, default settings: every text and binary
//! message on `/` comes back as it came, the way examples/websocket.rs does
//! it. A request that is not a WebSocket handshake gets astra's refusal (426).

use astra::websocket::{Message, Sender, WebSocketUpgrade};
use astra::{ConnectionInfo, Request, Response, Server};

fn echo(mut request: Request, _info: ConnectionInfo) -> Response {
    match WebSocketUpgrade::from_request(&mut request) {
        Ok(ws) => ws.serve(|sender: &Sender, message: Message| {
            // Only text and binary reach the handler; a closed socket refuses,
            // and there is nothing to do about that here.
            let _ = sender.send(message);
        }),
        Err(refusal) => refusal,
    }
}

fn main() {
    let addr = astra_bench::listen_addr();
    // As in examples/websocket.rs; the load is HTTP/1.1, so this only keeps
    // the server what a user of both features would run.
    let server = Server::bind(addr.as_str()).http2_enable_connect_protocol();
    if let Err(err) = server.serve(echo) {
        eprintln!("ours_ws: serve failed: {err}");
        std::process::exit(1);
    }
}
