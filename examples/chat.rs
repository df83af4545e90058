//! A chat room over WebSocket: every text message a client sends goes to
//! every client connected, the sender included, in the same order for all.
//!
//! Run it with `cargo run --features websocket --example chat`, then open
//! <http://127.0.0.1:3000/> in two browser tabs and type in one of them.
//! Another address: `cargo run --features websocket --example chat -- 127.0.0.1:8080`.
//!
//! `GET /` serves the page (`examples/chat.html`, compiled in: plain
//! JavaScript, nothing loaded from elsewhere), which connects to `/ws`.
//! `tests/browser_chat.rs` runs this same room in headless Chromium.

use astra::websocket::{
    CloseCode, CloseFrame, Handler, Message, SendError, Sender, WebSocketUpgrade,
};
use astra::{Body, ConnectionInfo, Request, Response, ResponseBuilder, Server, Service};
use http::{header, Method, StatusCode};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// The page served at `/`.
const PAGE: &str = include_str!("chat.html");

/// The chat room: the HTTP service for `/` and `/ws`, and the WebSocket
/// handler of every client, who all share one registry.
#[derive(Clone, Default)]
pub struct ChatRoom {
    /// Everyone connected, by [`Sender::id`]: added in `on_open`, removed in
    /// `on_close`.
    clients: Arc<Mutex<HashMap<u64, Sender>>>,
}

impl ChatRoom {
    /// An empty room.
    pub fn new() -> ChatRoom {
        ChatRoom::default()
    }

    /// How many clients are connected.
    pub fn connected(&self) -> usize {
        self.clients().len()
    }

    fn clients(&self) -> MutexGuard<'_, HashMap<u64, Sender>> {
        // Nothing panics while holding the lock; a poisoned map is still whole.
        self.clients.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `/ws`: upgrades to a WebSocket that joins the room.
    fn join(&self, mut request: Request) -> Response {
        // Only pages served from this very host may connect (a browser always
        // sends `Origin`; other clients may leave it out), so a page elsewhere
        // cannot chat in the name of whoever opens it.
        let expected = request
            .headers()
            .get(header::HOST)
            .and_then(|host| host.to_str().ok())
            .map(|host| format!("http://{host}"));
        match WebSocketUpgrade::from_request(&mut request) {
            Ok(upgrade) => upgrade
                .allow_origin(move |origin: Option<&str>| {
                    origin.is_none_or(|origin| Some(origin) == expected.as_deref())
                })
                .max_message_size(64 << 10)
                .serve(self.clone()),
            // Not a WebSocket handshake: the refusal says what is wrong.
            Err(refusal) => refusal,
        }
    }
}

/// An empty response with `code`.
fn status(code: StatusCode) -> Response {
    ResponseBuilder::new()
        .status(code)
        .body(Body::empty())
        .expect("a status makes a valid response")
}

impl Service for ChatRoom {
    fn call(&self, request: Request, _info: ConnectionInfo) -> Response {
        match (request.method(), request.uri().path()) {
            (&Method::GET, "/") => ResponseBuilder::new()
                .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
                .body(Body::new(PAGE))
                .expect("a header and a body make a valid response"),
            (_, "/ws") => self.join(request),
            (_, "/") => status(StatusCode::METHOD_NOT_ALLOWED),
            _ => status(StatusCode::NOT_FOUND),
        }
    }
}

impl Handler for ChatRoom {
    fn on_open(&self, sender: &Sender) {
        let mut clients = self.clients();
        clients.insert(sender.id(), sender.clone());
        println!("client {} joined, {} connected", sender.id(), clients.len());
    }

    fn on_message(&self, _sender: &Sender, message: Message) {
        // A chat of text: binary messages are ignored.
        if !message.is_text() {
            return;
        }
        // `try_send` only queues, so holding the lock while sending to all is
        // cheap, and it gives every client the messages in the same order.
        // A client 1024 messages behind does not keep up: it is closed rather
        // than let it stall the room. One closing already is about to leave.
        for client in self.clients().values() {
            if client.try_send(message.clone()) == Err(SendError::Full) {
                client.close(CloseCode::Policy, "not keeping up");
            }
        }
    }

    fn on_close(&self, sender: &Sender, _frame: Option<CloseFrame>) {
        let mut clients = self.clients();
        clients.remove(&sender.id());
        println!("client {} left, {} connected", sender.id(), clients.len());
    }
}

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".into());
    let server = Server::bind(&addr);
    println!(
        "chat on http://{}/",
        server.local_addr().expect("bound address")
    );
    server.serve(ChatRoom::new()).expect("serve failed");
}
